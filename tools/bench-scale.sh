#!/usr/bin/env bash
# Many-core scaling: zgate with 1 to N workers, each pinned to its own gateway core,
# beside HAProxy with as many threads on the same cores, with the load generators and
# the upstreams on other cores (nothing else on the gateway's cores). For each worker
# count W and gateway:
#   - requests/s: 64-byte closed-loop ping-pong, CLIENTS load processes x CONNS_PER_W x W
#     connections each (plain TCP); gateway CPU per request;
#   - handshakes/s (zgate): full mTLS handshakes, CLIENTS processes x 8 in flight;
#   - bulk: W one-way connections into a sink, bytes/s and bytes per gateway CPU-second;
# and, at W = 1, the one-connection added latency over direct (ping-pong, p50/p99).
# Results (one JSON line per measurement), machine.txt and report.md go to OUT_DIR.
#
# Cores: the first CLIENT_CORES of this process's cores run the load generators and the
# upstreams (each upstream with that many threads); the rest are gateway cores. With
# fewer than 4 cores it runs degraded, and says so: 1 client core, 1 gateway core, W = 1
# only (a 2-core machine cannot show scaling; the script is tested there in --short).
#
# Usage: tools/bench-scale.sh [--short] [OUT_DIR]   (default: target/bench-scale/<UTC>)
#   --short: tests itself (tools/test): debug binaries, 1 s per measurement, checks that
#   every measurement came out and the report was written. Not a benchmark.
# Knobs: WORKERS ("1 2 4 8 ..." up to the gateway cores), CLIENT_CORES (a quarter of the
#   cores, at least 1), CLIENTS (= CLIENT_CORES), CONNS_PER_W (16), DURATION_S (5),
#   WARMUP_S (1), BULK_DURATION_S (5), GATEWAYS ("zgate haproxy"), BIN_DIR
#   (target/release).
# Build first: cargo build --release -p zgate-dataplane -p zgate-control -p zgate-bench -p zgate-devpki
set -euo pipefail
cd "$(dirname "$0")/.."

short=""
if [ "${1:-}" = --short ]; then
  short=1; shift
  DURATION_S=1 WARMUP_S=0.2 BULK_DURATION_S=1 BIN_DIR=${BIN_DIR:-target/debug}
  set -- "$(mktemp -d -t zgate-bench-scale-short.XXXXXX)"
fi
DURATION_S=${DURATION_S:-5}
WARMUP_S=${WARMUP_S:-1}
BULK_DURATION_S=${BULK_DURATION_S:-5}
CONNS_PER_W=${CONNS_PER_W:-16}
GATEWAYS=${GATEWAYS:-"zgate haproxy"}
BIN_DIR=${BIN_DIR:-target/release}
OUT_DIR=${1:-target/bench-scale/$(date -u +%Y%m%dT%H%M%SZ)}

for b in zgate zgate-control zgate-bench zgate-devpki; do
  [ -x "$BIN_DIR/$b" ] || { echo "bench-scale: $BIN_DIR/$b missing; build it first (see the header)" >&2; exit 2; }
done
BIN_DIR=$(cd "$BIN_DIR" && pwd)
loadgen="$BIN_DIR/zgate-bench"
command -v haproxy > /dev/null || [[ " $GATEWAYS " != *" haproxy "* ]] ||
  { echo "bench-scale: haproxy missing (apt-get install haproxy)" >&2; exit 2; }

# Cores this process may use, in order.
mapfile -t cores < <(python3 -c 'import os; print("\n".join(map(str, sorted(os.sched_getaffinity(0)))))')
n=${#cores[@]}
degraded=""
if [ "$n" -lt 4 ]; then
  degraded="only $n cores: 1 client core, 1 gateway core, 1 worker; scaling needs 4 or more"
  CLIENT_CORES=1
fi
CLIENT_CORES=${CLIENT_CORES:-$(( n / 4 > 0 ? n / 4 : 1 ))}
client_cores=("${cores[@]:0:$CLIENT_CORES}")
gw_cores=("${cores[@]:$CLIENT_CORES}")
[ -n "$degraded" ] && gw_cores=("${gw_cores[0]}")
CLIENTS=${CLIENTS:-$CLIENT_CORES}
if [ -z "${WORKERS:-}" ]; then
  WORKERS=""; w=1
  while [ "$w" -le "${#gw_cores[@]}" ]; do WORKERS+="$w "; w=$((w * 2)); done
  last=$((w / 2)); [ "$last" -lt "${#gw_cores[@]}" ] && WORKERS+="${#gw_cores[@]}"
  WORKERS=${WORKERS% }
fi
client_list=$(IFS=,; echo "${client_cores[*]}")

BENCH=bench-scale
source tools/bench/lib.sh

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo) x $n"
  echo "kernel: $(uname -r)"
  echo "client cores: $client_list; gateway cores: ${gw_cores[*]}; workers: $WORKERS"
  echo "clients: $CLIENTS processes, $CONNS_PER_W connections per worker each"
  [ -n "$degraded" ] && echo "DEGRADED: $degraded"
} > "$OUT_DIR/machine.txt"
cat "$OUT_DIR/machine.txt" >&2

read -r ECHO SINK PLAIN BULK TLS ADMIN <<< "$(free_ports 6)"
taskset -c "$client_list" "$loadgen" serve --listen "127.0.0.1:$ECHO" --threads "$CLIENT_CORES" --max-runtime-s 7200 2> "$work/echo.log" &
pids+=($!)
taskset -c "$client_list" "$loadgen" serve --listen "127.0.0.1:$SINK" --sink --threads "$CLIENT_CORES" --max-runtime-s 7200 2> "$work/sink.log" &
pids+=($!)
wait_port "$ECHO"; wait_port "$SINK"
"$BIN_DIR/zgate-devpki" --out "$work/pki" --client spiffe://zgate.test/bench > /dev/null
cat > "$work/policy.toml" <<'EOF'
[[rule]]
id = "loopback"
action = "allow"
services = ["plain", "bulk"]
sources = ["127.0.0.0/8"]

[[rule]]
id = "bench-clients"
action = "allow"
services = ["tls"]
principals = ["spiffe://zgate.test/*"]
EOF
mkdir -p "$work/policy"; cp "$work/policy.toml" "$work/policy/"
"$BIN_DIR/zgate-control" compile "$work/policy" -o "$work/bench.zgt" > /dev/null

clk=$(getconf CLK_TCK)

gw_pid=""
start_gateway() {  # start_gateway GW W
  local gw=$1 w=$2 list
  list=$(IFS=,; echo "${gw_cores[*]:0:$w}")
  case $gw in
    zgate)
      cat > "$work/zgate.toml" <<EOF
table = "bench.zgt"
admin = "127.0.0.1:$ADMIN"
audit = "off"
drain_timeout = "1s"
[workers]
cores = [$list]
[[listener]]
name = "plain"
listen = "127.0.0.1:$PLAIN"
upstream = "127.0.0.1:$ECHO"
max_connections = 9000
[[listener]]
name = "bulk"
listen = "127.0.0.1:$BULK"
upstream = "127.0.0.1:$SINK"
[[listener]]
name = "tls"
listen = "127.0.0.1:$TLS"
upstream = "127.0.0.1:$ECHO"
[listener.tls]
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"
trust_domain = "zgate.test"
max_handshakes = 4096
EOF
      "$BIN_DIR/zgate" run --config "$work/zgate.toml" > "$work/zgate-$w.log" 2>&1 &
      gw_pid=$!;;
    haproxy)
      local maps="" i=1 c
      for c in "${gw_cores[@]:0:$w}"; do maps+="    cpu-map 1/$i $c"$'\n'; i=$((i + 1)); done
      cat > "$work/haproxy.cfg" <<EOF
global
    nbthread $w
$maps    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
listen plain
    bind 127.0.0.1:$PLAIN
    server echo 127.0.0.1:$ECHO
listen bulk
    bind 127.0.0.1:$BULK
    server sink 127.0.0.1:$SINK
EOF
      haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy-$w.log" 2>&1 &
      gw_pid=$!;;
  esac
  pids+=($gw_pid)
  wait_port "$PLAIN"
}
stop_gateway() { stop_pid "$gw_pid"; gw_pid=""; }

# clients N ARGS...: N load processes on the client cores at once; their JSON lines.
clients() {
  local k=$1; shift
  local ps=() i
  for i in $(seq 0 $((k - 1))); do
    taskset -c "${client_cores[$((i % CLIENT_CORES))]}" "$loadgen" "$@" --json > "$work/client-$i.json" 2> "$work/client-$i.err" &
    ps+=($!)
  done
  local ok=0
  for i in "${!ps[@]}"; do
    wait "${ps[$i]}" || { echo "bench-scale: client $i failed: $(tail -2 "$work/client-$i.err")" >&2; ok=1; }
  done
  [ "$ok" = 0 ] || exit 1
  cat "$work"/client-*.json; rm -f "$work"/client-*.json
}
# measure GW W KIND ARGS...: run the clients, sum them, one JSON line with gateway CPU.
measure() {
  local gw=$1 w=$2 kind=$3; shift 3
  local t0 t1 lines
  t0=$(pid_ticks "$gw_pid")
  lines=$(clients "$CLIENTS" "$@") || exit 1
  t1=$(pid_ticks "$gw_pid")
  python3 - "$results" "$gw" "$w" "$kind" "$(( t1 - t0 ))" "$clk" <<EOF
import json, sys
results, gw, w, kind, ticks, clk = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
runs = [json.loads(l) for l in """$lines""".splitlines() if l.strip()]
cpu_s = ticks / clk
line = {"mode": "scale", "gateway": gw, "workers": w, "kind": kind, "clients": len(runs), "gateway_cpu_s": cpu_s}
if kind == "pingpong":
    n = sum(r["requests"] for r in runs)
    line |= {"msgs_per_s": sum(r["msgs_per_s"] for r in runs), "requests": n,
             "p99_us_worst": max(r["p99_us"] for r in runs),
             "gateway_cpu_us_per_req": cpu_s * 1e6 / n if n else None}
elif kind == "handshake":
    n = sum(r["handshakes"] for r in runs)
    line |= {"handshakes_per_s": sum(r["handshakes_per_s"] for r in runs), "handshakes": n,
             "handshakes_per_gateway_cpu_s": n / cpu_s if cpu_s else None}
elif kind == "bulk":
    b = sum(r["bytes"] for r in runs)
    line |= {"bytes_per_s": sum(r["bytes_per_s"] for r in runs), "bytes": b,
             "bytes_per_gateway_cpu_s": b / cpu_s if cpu_s else None}
open(results, "a").write(json.dumps(line) + "\n")
print(json.dumps(line), file=sys.stderr)
EOF
}

# The one-connection added latency with nothing else on the gateway's cores.
taskset -c "${client_cores[0]}" "$loadgen" pingpong --target "127.0.0.1:$ECHO" --connections 1 \
  --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --json --label direct-1conn >> "$results"
for w in $WORKERS; do
  for gw in $GATEWAYS; do
    echo "bench-scale: $gw, $w worker(s)" >&2
    start_gateway "$gw" "$w"
    if [ "$w" = 1 ]; then
      taskset -c "${client_cores[0]}" "$loadgen" pingpong --target "127.0.0.1:$PLAIN" --connections 1 \
        --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --json --label "$gw-1conn" >> "$results"
    fi
    measure "$gw" "$w" pingpong pingpong --target "127.0.0.1:$PLAIN" \
      --connections $((CONNS_PER_W * w)) --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --requests 1000000000
    if [ "$gw" = zgate ]; then
      measure "$gw" "$w" handshake handshake --target "127.0.0.1:$TLS" --tls --ca "$work/pki/ca.pem" \
        --cert "$work/pki/client-0.pem" --key "$work/pki/client-0.key" --server-name localhost \
        --concurrency 8 --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --connections 1000000000
    fi
    measure "$gw" "$w" bulk bulk --target "127.0.0.1:$BULK" --connections "$w" \
      --bytes 1000000000000 --duration-s "$BULK_DURATION_S"
    stop_gateway
  done
done

python3 - "$results" "$OUT_DIR/report.md" "$OUT_DIR/machine.txt" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
machine = open(sys.argv[3]).read()
one = {l["label"]: l for l in lines if l.get("label", "").endswith("-1conn")}
scale = [l for l in lines if l.get("mode") == "scale"]
out = ["# Scaling over workers", "", "```", machine.strip(), "```", ""]
if "DEGRADED" in machine:
    out += ["**Degraded run**: this machine cannot show scaling (see above); the numbers "
            "are the 1-worker point only.", ""]
d = one.get("direct-1conn")
if d:
    out += ["## One connection, nothing else on the gateway's cores", "",
            "| gateway | added p50 | added p99 |", "| --- | ---: | ---: |"]
    for k, r in sorted(one.items()):
        if k == "direct-1conn":
            continue
        out.append(f"| {k[:-6]} | {r['p50_us'] - d['p50_us']:.1f} µs | {r['p99_us'] - d['p99_us']:.1f} µs |")
    out.append("")
def table(kind, title, key, unit, scale_by=1.0, extra=None):
    rows = [l for l in scale if l["kind"] == kind]
    if not rows:
        return []
    gws = sorted({l["gateway"] for l in rows})
    ws = sorted({l["workers"] for l in rows})
    t = [f"## {title}", "", "| workers | " + " | ".join(gws) + " |", "| ---: |" + " ---: |" * len(gws)]
    base = {g: next((l[key] for l in rows if l["gateway"] == g and l["workers"] == ws[0]), None) for g in gws}
    for w in ws:
        cells = []
        for g in gws:
            r = next((l for l in rows if l["gateway"] == g and l["workers"] == w), None)
            if r is None or r.get(key) is None:
                cells.append("-")
                continue
            v = r[key] / scale_by
            x = f" ({r[key] / base[g]:.2f}x)" if base[g] else ""
            cells.append(f"{v:,.1f} {unit}{x}")
        t.append(f"| {w} | " + " | ".join(cells) + " |")
    return t + [""]
out += table("pingpong", "Requests per second (64-byte ping-pong)", "msgs_per_s", "k/s", 1e3)
out += table("handshake", "Full mTLS handshakes per second", "handshakes_per_s", "/s")
out += table("bulk", "Bulk, one way", "bytes_per_s", "GB/s", 1e9)
open(sys.argv[2], "w").write("\n".join(out) + "\n")
EOF

if [ -n "$short" ]; then
  python3 - "$results" "$GATEWAYS" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
gws = sys.argv[2].split()
for g in gws:
    kinds = {l["kind"] for l in lines if l.get("mode") == "scale" and l["gateway"] == g}
    want = {"pingpong", "bulk"} | ({"handshake"} if g == "zgate" else set())
    assert kinds == want, (g, kinds)
assert any(l.get("label") == "direct-1conn" for l in lines)
print("bench-scale --short: every measurement came out", file=sys.stderr)
EOF
  test -s "$OUT_DIR/report.md"
  trap 'cleanup; rm -rf "$OUT_DIR"' EXIT
  exit 0
fi
echo "bench-scale: results in $OUT_DIR" >&2
