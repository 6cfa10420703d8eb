#!/usr/bin/env bash
# Side-by-side end-to-end benchmark of TCP gateways on this machine, in one run:
#   direct (client -> upstream, no gateway), zgate (interrupt and busy poll),
#   HAProxy (mode tcp, nbthread 1; plain and busy-polling) and nginx stream
#   (worker_processes 1); and `xcore`, a second echo/sink pinned to the gateway core
#   with no gateway: the price of crossing cores alone on this machine, a floor under
#   what any gateway on the other core can add.
# Every gateway runs pinned to GW_CORE; the load generator and the echo/sink upstream
# run pinned to CLIENT_CORE. Each gateway is measured with:
#   - ping-pong, 64-byte messages, 1 and 50 connections: p50/p99/p99.9, msgs/s and
#     gateway CPU time (utime+stime from /proc/PID/stat) per request;
#   - bulk, one direction (client -> sink): bytes/s and bytes per gateway CPU-second;
#   - with OPEN_RATES (e.g. "10000 40000"): open-loop ping-pong at each fixed rate over 50
#     connections, latency from each request's intended send time (coordinated omission
#     corrected), p50 to p99.99, with the .hgrm of each run in OUT_DIR/hgrm and, per
#     rate, a percentile-spectrum PNG of every gateway (OUT_DIR/open-RATE.png), and a
#     latency-vs-CPU chart of the 50-connection closed loop (OUT_DIR/latency-cpu.png).
# The results (one JSON line per measurement) and a markdown report with the added
# latency over direct and the ratios zgate/HAProxy and zgate/nginx go to OUT_DIR.
#
# Usage: tools/bench-proxy.sh [--short] [OUT_DIR] (default: target/bench-proxy/<UTC time>)
#   --short: the harness testing itself (tools/test runs it): debug binaries, one round
#   of one second per measurement, direct, zgate, HAProxy and nginx, one open-loop rate;
#   checks that every gateway produced its numbers, the report and the plots. Its
#   numbers mean nothing.
# Knobs (environment): ROUNDS (3), DURATION_S (8), REQUESTS (2000000), WARMUP_S (1),
#   BULK_BYTES (4294967296), BULK_DURATION_S (20), GW_CORE (1), CLIENT_CORE (0),
#   BIN_DIR (target/release; must hold zgate, zgate-control, zgate-bench),
#   GATEWAYS (default: "direct xcore zgate-interrupt zgate-busy haproxy haproxy-busy nginx";
#   also zgate-interrupt-nodefer, zgate-busy-nodefer: rings without DEFER_TASKRUN;
#   zgate-adaptive: poll = "adaptive" with spin = $SPIN, default 100us),
#   OPEN_RATES (""): open-loop rates in requests/s, see above; OPEN_DURATION_S (8),
#   QUIET_PCT (10), QUIET_WAIT_S (10): see "quiet" below,
#   NICE (-19 as root, else 0): niceness of everything the script starts, the same for
#   every gateway, so that other work on a shared machine disturbs the runs less.
# Needs: root or sudo for apt-get if haproxy/nginx are missing; python3 for the report.
# Build first: cargo build --release -p zgate-dataplane -p zgate-control -p zgate-bench
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
SHORT=0
if [ "${1:-}" = --short ]; then
  SHORT=1; shift
  ROUNDS=1 DURATION_S=1 REQUESTS=100000 WARMUP_S=0.2 BULK_BYTES=268435456 BULK_DURATION_S=2
  OPEN_RATES=${OPEN_RATES:-5000} OPEN_DURATION_S=1 QUIET_WAIT_S=0
  GATEWAYS=${GATEWAYS:-"direct zgate-interrupt haproxy nginx"}
  BIN_DIR=${BIN_DIR:-target/debug}
  set -- "${1:-$(mktemp -d -t zgate-bench-short.XXXXXX)}"
fi

ROUNDS=${ROUNDS:-3}
DURATION_S=${DURATION_S:-8}
REQUESTS=${REQUESTS:-2000000}
WARMUP_S=${WARMUP_S:-1}
BULK_BYTES=${BULK_BYTES:-4294967296}
BULK_DURATION_S=${BULK_DURATION_S:-20}
GW_CORE=${GW_CORE:-1}
CLIENT_CORE=${CLIENT_CORE:-0}
BIN_DIR=${BIN_DIR:-target/release}
GATEWAYS=${GATEWAYS:-"direct xcore zgate-interrupt zgate-busy haproxy haproxy-busy nginx"}
OPEN_RATES=${OPEN_RATES:-""}
OPEN_DURATION_S=${OPEN_DURATION_S:-8}
OUT_DIR=${1:-target/bench-proxy/$(date -u +%Y%m%dT%H%M%SZ)}
if [ "$(id -u)" -eq 0 ]; then NICE=${NICE:--19}; else NICE=${NICE:-0}; fi

for b in zgate zgate-control zgate-bench; do
  [ -x "$BIN_DIR/$b" ] || { echo "bench-proxy: $BIN_DIR/$b missing; build it first (see the header)" >&2; exit 2; }
done
BIN_DIR=$(cd "$BIN_DIR" && pwd)
loadgen="$BIN_DIR/zgate-bench"

# Peers, from Debian's packages.
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

BENCH=bench-proxy
# shellcheck source=tools/bench/lib.sh
source tools/bench/lib.sh  # the scripts cd to the repository root first

# Ports: the upstreams, then one pair (echo, sink) per gateway.
ECHO=17000 SINK=17001 ADMIN=17009
declare -A PP_PORT=([direct]=$ECHO [xcore]=17040 [zgate-interrupt]=17010 [zgate-busy]=17010 [zgate-interrupt-nodefer]=17010 [zgate-busy-nodefer]=17010 [zgate-adaptive]=17010 [haproxy]=17020 [haproxy-busy]=17020 [nginx]=17030)
declare -A BULK_PORT=([direct]=$SINK [xcore]=17041 [zgate-interrupt]=17011 [zgate-busy]=17011 [zgate-interrupt-nodefer]=17011 [zgate-busy-nodefer]=17011 [zgate-adaptive]=17011 [haproxy]=17021 [haproxy-busy]=17021 [nginx]=17031)


# The machine and the code, for the record.
{
  echo "date_utc=$(date -u +%FT%TZ)"
  echo "git_head=$(git rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "nproc=$(nproc)"
  echo "cpu_model=$(lscpu | sed -n 's/^Model name: *//p')"
  echo "kernel=$(uname -r)"
  echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "haproxy=$(haproxy -v | head -1)"
  echo "nginx=$(nginx -v 2>&1)"
  echo "gw_core=$GW_CORE client_core=$CLIENT_CORE nice=$NICE rounds=$ROUNDS duration_s=$DURATION_S requests=$REQUESTS warmup_s=$WARMUP_S bulk_bytes=$BULK_BYTES"
  echo "git_status_dataplane:"
  git status --short -- dataplane crates Cargo.toml 2>/dev/null | sed 's/^/  /'
} > "$OUT_DIR/machine.txt"
cat "$OUT_DIR/machine.txt"

# Upstreams on the client core.
nice -n "$NICE" "$loadgen" serve --listen "127.0.0.1:$ECHO" --core "$CLIENT_CORE" --max-runtime-s 7200 2>"$work/echo.log" &
pids+=($!)
nice -n "$NICE" "$loadgen" serve --listen "127.0.0.1:$SINK" --core "$CLIENT_CORE" --sink --max-runtime-s 7200 2>"$work/sink.log" &
pids+=($!)
upstream_pids=("${pids[@]}")
wait_port "$ECHO"; wait_port "$SINK"

# zgate's table and configs.
"$BIN_DIR/zgate-control" compile tools/bench/policy -o "$work/bench.zgt" >/dev/null
for variant in interrupt busy interrupt-nodefer busy-nodefer adaptive; do
  poll=${variant%-nodefer}
  defer=true; [ "$variant" = "$poll" ] || defer=false
  spin=""; [ "$poll" = adaptive ] && spin="spin = \"${SPIN:-100us}\""
  cat > "$work/zgate-$variant.toml" <<EOF
table = "bench.zgt"
admin = "127.0.0.1:$ADMIN"
drain_timeout = "1s"

[workers]
cores = [$GW_CORE]
poll = "$poll"
$spin
defer_taskrun = $defer

[[listener]]
name = "bench"
listen = "127.0.0.1:17010"
upstream = "127.0.0.1:$ECHO"

[[listener]]
name = "bench-bulk"
listen = "127.0.0.1:17011"
upstream = "127.0.0.1:$SINK"
EOF
done

# HAProxy: one thread on the gateway core; default 16 KiB buffers, no splice.
for busy in "" busy; do
  cat > "$work/haproxy${busy:+-$busy}.cfg" <<EOF
global
    nbthread 1
    cpu-map 1/1 $GW_CORE
    # The machine caps open files at 20,000 per process; two per proxied connection.
    maxconn 9000
    ${busy:+busy-polling}

defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s

listen pingpong
    bind 127.0.0.1:17020
    server echo 127.0.0.1:$ECHO

listen bulk
    bind 127.0.0.1:17021
    server sink 127.0.0.1:$SINK
EOF
done

# nginx stream: one worker on the gateway core (affinity mask with only that bit).
mask="1$(printf '0%.0s' $(seq 1 "$GW_CORE"))"
[ "$GW_CORE" -eq 0 ] && mask=1
mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_cpu_affinity $mask;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 9000; }
stream {
    server { listen 127.0.0.1:17030; proxy_pass 127.0.0.1:$ECHO; }
    server { listen 127.0.0.1:17031; proxy_pass 127.0.0.1:$SINK; }
}
EOF

gw_pid=""
xcore_sink=""
cpu_pids=()
start_gateway() {
  local gw=$1
  gw_pid=""; cpu_pids=()
  case $gw in
    direct) return 0 ;;
    xcore)
      # Echo and sink on the gateway core, one process each; both count as "gateway".
      nice -n "$NICE" "$loadgen" serve --listen 127.0.0.1:17041 --core "$GW_CORE" --sink \
        --max-runtime-s 3600 2>"$work/xcore-sink.log" &
      xcore_sink=$!
      pids+=("$xcore_sink")
      nice -n "$NICE" "$loadgen" serve --listen 127.0.0.1:17040 --core "$GW_CORE" \
        --max-runtime-s 3600 2>"$work/$gw.log" &
      ;;
    zgate-*)
      nice -n "$NICE" taskset -c "$GW_CORE" "$BIN_DIR/zgate" run --config "$work/$gw.toml" 2>"$work/$gw.log" &
      ;;
    haproxy|haproxy-busy)
      nice -n "$NICE" taskset -c "$GW_CORE" haproxy -db -f "$work/$gw.cfg" >"$work/$gw.log" 2>&1 &
      ;;
    nginx)
      nice -n "$NICE" taskset -c "$GW_CORE" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/logs/error.log" 2>"$work/$gw.log" &
      ;;
  esac
  gw_pid=$!
  pids+=("$gw_pid")
  wait_port "${PP_PORT[$gw]}"; wait_port "${BULK_PORT[$gw]}"
  cpu_pids=("$gw_pid")
  [ "$gw" = xcore ] && cpu_pids+=("$xcore_sink")
  if [ "$gw" = nginx ]; then
    # Count the worker(s) too: they do the proxying; the master is idle.
    for _ in $(seq 50); do
      kids=$(cat "/proc/$gw_pid/task/$gw_pid/children" 2>/dev/null || true)
      [ -n "$kids" ] && break; sleep 0.1
    done
    for k in $kids; do cpu_pids+=("$k"); done
  fi
}

stop_gateway() {
  [ -n "$gw_pid" ] || return 0
  local stopped=("$gw_pid") keep=() p
  [ -n "${xcore_sink:-}" ] && stopped+=("$xcore_sink")
  for p in "${stopped[@]}"; do stop_pid "$p"; done
  for p in "${pids[@]}"; do [[ " ${stopped[*]} " == *" $p "* ]] || keep+=("$p"); done
  pids=("${keep[@]}")
  gw_pid=""; xcore_sink=""
}

clk=$(getconf CLK_TCK)
# This machine may be shared. Around every measurement the script records how much CPU
# ran on the machine that was neither the gateway, the upstreams nor the load
# generator ("other", in % of one core, both cores summed), waits (bounded) for a quiet
# moment before measuring, and the report uses the quiet measurements.
QUIET_PCT=${QUIET_PCT:-10}
QUIET_WAIT_S=${QUIET_WAIT_S:-10}
measure() {  # measure GATEWAY ROUND
  local gw=$1 round=$2 cpu_args=() p conns
  for p in "${cpu_pids[@]}"; do cpu_args+=(--cpu-pid "$p"); done
  for conns in 1 50; do
    run_window "$gw/r$round" pingpong "$conns" -- \
      nice -n "$NICE" "$loadgen" pingpong --target "127.0.0.1:${PP_PORT[$gw]}" --core "$CLIENT_CORE" \
      --connections "$conns" --size 64 --requests "$REQUESTS" --duration-s "$DURATION_S" \
      --warmup-s "$WARMUP_S" --clk-tck "$clk" "${cpu_args[@]}" --label "$gw/r$round"
  done
  for rate in $OPEN_RATES; do
    mkdir -p "$OUT_DIR/hgrm"
    run_window "$gw/r$round" "open-$rate" 50 -- \
      nice -n "$NICE" "$loadgen" pingpong --target "127.0.0.1:${PP_PORT[$gw]}" --core "$CLIENT_CORE" \
      --connections 50 --size 64 --rate "$rate" --requests 1000000000 --duration-s "$OPEN_DURATION_S" \
      --warmup-s "$WARMUP_S" --clk-tck "$clk" "${cpu_args[@]}" --label "$gw/r$round" \
      --hgrm "$OUT_DIR/hgrm/$gw-$rate-r$round.hgrm"
  done
  run_window "$gw/r$round" bulk 1 -- \
    nice -n "$NICE" "$loadgen" bulk --target "127.0.0.1:${BULK_PORT[$gw]}" --core "$CLIENT_CORE" \
    --bytes "$BULK_BYTES" --duration-s "$BULK_DURATION_S" --clk-tck "$clk" "${cpu_args[@]}" \
    --label "$gw/r$round"
}

# Rounds go through every gateway in turn, so slow drift on the machine (other work,
# thermal) spreads over all of them instead of landing on one.
for round in $(seq 1 "$ROUNDS"); do
  for gw in $GATEWAYS; do
    echo "== round $round: $gw" >&2
    start_gateway "$gw"
    measure "$gw" "$round"
    stop_gateway
  done
done

cp "$work"/*.toml "$work"/*.cfg "$work/nginx/nginx.conf" "$OUT_DIR/" 2>/dev/null || true
python3 tools/bench/report.py "$results" "$OUT_DIR/machine.txt" > "$OUT_DIR/report.md"
# Pictures: per open-loop rate, every gateway's first round; the closed loop's p99
# against CPU per request (50 connections), one point per gateway and round.
for rate in $OPEN_RATES; do
  files=()
  for gw in $GATEWAYS; do
    f="$OUT_DIR/hgrm/$gw-$rate-r1.hgrm"
    [ -s "$f" ] && { cp "$f" "$work/$gw.hgrm"; files+=("$work/$gw.hgrm"); }
  done
  [ ${#files[@]} -gt 0 ] && "$loadgen" plot "${files[@]}" -o "$OUT_DIR/open-$rate.png" \
    --title "64-byte ping-pong, open loop at $rate req/s, 50 connections" || true
done
python3 - "$results" "$work/cpu.jsonl" <<'PY'
import json, sys
out = open(sys.argv[2], "w")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("mode") == "pingpong" and r.get("connections") == 50 and r.get("gateway_cpu_us_per_req"):
        r["label"] = r["label"].rpartition("/r")[0]
        out.write(json.dumps(r) + "\n")
PY
[ -s "$work/cpu.jsonl" ] && "$loadgen" plot --cpu "$work/cpu.jsonl" -o "$OUT_DIR/latency-cpu.png" \
  --title "closed-loop 64-byte ping-pong, 50 connections: p99 against gateway CPU" || true
if [ "$SHORT" = 1 ]; then
  # The harness checks itself: every gateway measured, no failed run, report and plots.
  python3 - "$results" "$GATEWAYS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bad = [r for r in rows if r.get("mode") == "error"]
if bad:
    sys.exit(f"bench-proxy --short: failed runs: {bad}")
for gw in sys.argv[2].split():
    for mode in ("pingpong", "bulk", "open-loop"):
        if not any(r.get("mode") == mode and r.get("label", "").startswith(gw + "/") for r in rows):
            sys.exit(f"bench-proxy --short: no {mode} result for {gw}")
PY
  grep -q "### Open loop" "$OUT_DIR/report.md" || { echo "bench-proxy --short: no open-loop table" >&2; exit 1; }
  for png in "$OUT_DIR"/open-*.png "$OUT_DIR/latency-cpu.png"; do
    [ -s "$png" ] || { echo "bench-proxy --short: $png missing" >&2; exit 1; }
  done
  echo "bench-proxy --short: OK (harness check; these numbers mean nothing)" >&2
  exit 0
fi
cat "$OUT_DIR/report.md"
echo "bench-proxy: results in $OUT_DIR" >&2
