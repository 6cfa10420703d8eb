#!/usr/bin/env bash
# Side-by-side TLS benchmark on this machine, in one run: zgate (`[listener.tls]`,
# rustls + ring), HAProxy (`mode tcp`, `bind ... ssl crt ... ca-file ... verify
# required`, nbthread 1) and nginx stream (`ssl_verify_client on`, worker_processes 1),
# every one terminating mTLS with the same ECDSA P-256 certificates from zgate-devpki,
# TLS 1.3 only, in front of the same plain echo/sink upstreams.
#
# Per gateway and round (the gateways alternate within each round):
#   - handshake-full: fresh connections, `HS_CONCURRENCY` in flight, each a full mTLS
#     handshake (client certificate every time) plus a one-byte echo through the
#     gateway (proves policy allowed it), then close. Handshakes/s, gateway CPU per
#     handshake, handshakes per gateway CPU-second;
#   - handshake-resumed: the same with TLS 1.3 session tickets (`--resume`);
#   - ping-pong, 64 bytes, 1 and 50 established mTLS connections: p50/p99/p99.9 and the
#     added latency over `direct` (client -> echo, plain TCP, no gateway);
#   - bulk, one direction over one mTLS connection: bytes/s, bytes per gateway CPU-s.
# Then, once per gateway on a fresh process: memory per idle mTLS connection
# (RSS and PSS of the gateway before/after IDLE_CONNS established, idle connections).
#
# Every gateway is pinned to GW_CORE; load generator and upstreams to CLIENT_CORE.
# Output in OUT_DIR: machine.txt, results.jsonl, the configs, logs/, report.md.
#
# Usage: tools/bench-tls.sh [OUT_DIR]            (default: target/bench-tls/<UTC time>)
# Knobs (environment): ROUNDS (3), HS_DURATION_S (6), HS_CONCURRENCY (8), DURATION_S (6),
#   WARMUP_S (1), REQUESTS (2000000), BULK_BYTES (2147483648), BULK_DURATION_S (20),
#   IDLE_CONNS (5000), IDLE_GATEWAYS ("zgate haproxy nginx"),
#   GATEWAYS ("direct zgate haproxy nginx"; also zgate-busy, haproxy-busy and
#     zgate-adaptive (poll = "adaptive", spin = $SPIN, default 100us); any name
#     with the suffix +noermsb, e.g. zgate+noermsb, runs that gateway with
#     GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=4194304: glibc's memcpy without
#     `rep movsb` below 4 MiB, which is slow on some AMD CPUs for misaligned copies),
#   PARTS ("handshake pingpong bulk idle"), GW_CORE (1), CLIENT_CORE (0),
#   BIN_DIR (target/release: zgate, zgate-control, zgate-bench, zgate-devpki),
#   QUIET_PCT (10), QUIET_WAIT_S (5), NICE (-19 as root, else 0).
# Build first:
#   cargo build --release -p zgate-dataplane -p zgate-control -p zgate-bench -p zgate-devpki
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
HS_DURATION_S=${HS_DURATION_S:-6}
HS_CONCURRENCY=${HS_CONCURRENCY:-8}
DURATION_S=${DURATION_S:-6}
WARMUP_S=${WARMUP_S:-1}
REQUESTS=${REQUESTS:-2000000}
BULK_BYTES=${BULK_BYTES:-2147483648}
BULK_DURATION_S=${BULK_DURATION_S:-20}
IDLE_CONNS=${IDLE_CONNS:-5000}
IDLE_GATEWAYS=${IDLE_GATEWAYS:-"zgate haproxy nginx"}
GATEWAYS=${GATEWAYS:-"direct zgate haproxy nginx"}
PARTS=${PARTS:-"handshake pingpong bulk idle"}
GW_CORE=${GW_CORE:-1}
CLIENT_CORE=${CLIENT_CORE:-0}
BIN_DIR=${BIN_DIR:-target/release}
QUIET_PCT=${QUIET_PCT:-10}
QUIET_WAIT_S=${QUIET_WAIT_S:-5}
OUT_DIR=${1:-target/bench-tls/$(date -u +%Y%m%dT%H%M%SZ)}
if [ "$(id -u)" -eq 0 ]; then NICE=${NICE:--19}; else NICE=${NICE:-0}; fi
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

for b in zgate zgate-control zgate-bench zgate-devpki; do
  [ -x "$BIN_DIR/$b" ] || { echo "bench-tls: $BIN_DIR/$b missing; build it first (see the header)" >&2; exit 2; }
done
BIN_DIR=$(cd "$BIN_DIR" && pwd)
loadgen="$BIN_DIR/zgate-bench"
for c in haproxy nginx python3 taskset; do
  command -v "$c" >/dev/null || { echo "bench-tls: $c not found (tools/bench-proxy.sh installs haproxy and nginx)" >&2; exit 2; }
done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || { echo "bench-tls: nginx stream module missing (libnginx-mod-stream)" >&2; exit 2; }
if [ "$(ulimit -n)" -lt $((IDLE_CONNS * 2 + 256)) ]; then
  ulimit -n $((IDLE_CONNS * 2 + 256)) 2>/dev/null || { echo "bench-tls: open-file limit $(ulimit -n) too low for IDLE_CONNS=$IDLE_CONNS" >&2; exit 2; }
fi

BENCH=bench-tls
# shellcheck source=tools/bench/lib.sh
source tools/bench/lib.sh  # the scripts cd to the repository root first

ECHO=17100 SINK=17101 ADMIN=17109
declare -A PP_PORT=([direct]=$ECHO [zgate]=17110 [zgate-busy]=17110 [zgate-adaptive]=17110 [haproxy]=17120 [haproxy-busy]=17120 [nginx]=17130)
declare -A BULK_PORT=([direct]=$SINK [zgate]=17111 [zgate-busy]=17111 [zgate-adaptive]=17111 [haproxy]=17121 [haproxy-busy]=17121 [nginx]=17131)


# The PKI: CA, server certificate (localhost, 127.0.0.1), one SPIFFE client.
"$BIN_DIR/zgate-devpki" --out "$work/pki" --client spiffe://zgate.test/client >/dev/null
pki="$work/pki"
cat "$pki/server.pem" "$pki/server.key" > "$pki/haproxy.pem"
tls_args=(--tls --ca "$pki/ca.pem" --cert "$pki/client-0.pem" --key "$pki/client-0.key" --server-name localhost)

{
  echo "date_utc=$(date -u +%FT%TZ)"
  echo "git_head=$(git rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "nproc=$(nproc)"
  echo "cpu_model=$(lscpu | sed -n 's/^Model name: *//p')"
  echo "cpu_flags_aes=$(grep -o -w -m1 -e aes -e vaes -e vpclmulqdq -e avx2 -e avx512f /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "kernel=$(uname -r)"
  echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "haproxy=$(haproxy -v | head -1)"
  echo "haproxy_openssl=$(haproxy -vv | sed -n 's/^Running on OpenSSL version : *//p')"
  echo "nginx=$(nginx -v 2>&1)"
  echo "nginx_openssl=$(nginx -V 2>&1 | sed -n 's/^built with //p')"
  echo "openssl=$(openssl version)"
  echo "rustls=$(sed -n '/^name = "rustls"$/{n;s/version = //p}' Cargo.lock | tr -d '"')"
  echo "ring=$(sed -n '/^name = "ring"$/{n;s/version = //p}' Cargo.lock | tr -d '"')"
  echo "server_key=$(openssl pkey -in "$pki/server.key" -noout -text 2>/dev/null | sed -n '1p;/NIST CURVE/p' | tr '\n' ' ')"
  echo "client_key=$(openssl x509 -in "$pki/client-0.pem" -noout -text | sed -n 's/^ *Public Key Algorithm: //p;s/^ *NIST CURVE: //p' | tr '\n' ' ')"
  echo "gw_core=$GW_CORE client_core=$CLIENT_CORE nice=$NICE rounds=$ROUNDS hs_duration_s=$HS_DURATION_S hs_concurrency=$HS_CONCURRENCY duration_s=$DURATION_S warmup_s=$WARMUP_S bulk_bytes=$BULK_BYTES idle_conns=$IDLE_CONNS"
  echo "git_status:"
  git status --short -- dataplane crates tools/zgate-bench Cargo.toml 2>/dev/null | sed 's/^/  /'
} > "$OUT_DIR/machine.txt"
cat "$OUT_DIR/machine.txt"

nice -n "$NICE" "$loadgen" serve --listen "127.0.0.1:$ECHO" --core "$CLIENT_CORE" --max-runtime-s 7200 2>"$work/echo.log" &
pids+=($!)
nice -n "$NICE" "$loadgen" serve --listen "127.0.0.1:$SINK" --core "$CLIENT_CORE" --sink --max-runtime-s 7200 2>"$work/sink.log" &
pids+=($!)
upstream_pids=("${pids[@]}")
wait_port "$ECHO"; wait_port "$SINK"

# zgate: one worker on GW_CORE; mTLS listeners bound to the dev trust domain; default
# session_resumption (true: stateless TLS 1.3 tickets); no CRL.
"$BIN_DIR/zgate-control" compile tools/bench/policy-tls -o "$work/bench-tls.zgt" >/dev/null
for poll in interrupt busy adaptive; do
  name=zgate; [ "$poll" = interrupt ] || name=zgate-$poll
  spin=""; [ "$poll" = adaptive ] && spin="spin = \"${SPIN:-100us}\""
  tls_block="[listener.tls]
cert = \"$pki/server.pem\"
key = \"$pki/server.key\"
client_ca = \"$pki/ca.pem\"
trust_domain = \"zgate.test\"
session_resumption = true"
  cat > "$work/$name.toml" <<EOF
table = "bench-tls.zgt"
admin = "127.0.0.1:$ADMIN"
drain_timeout = "1s"

[workers]
cores = [$GW_CORE]
poll = "$poll"
$spin

[[listener]]
name = "tls"
listen = "127.0.0.1:17110"
upstream = "127.0.0.1:$ECHO"
idle_timeout = "1h"
max_connections = 9000
$tls_block

[[listener]]
name = "tls-bulk"
listen = "127.0.0.1:17111"
upstream = "127.0.0.1:$SINK"
$tls_block
EOF
done

# HAProxy: one thread on the gateway core, TLS 1.3 only, client certificate required.
# Default ticket handling (stateless TLS 1.3 tickets) and buffers (16 KiB).
for busy in "" busy; do
  cat > "$work/haproxy${busy:+-$busy}.cfg" <<EOF
global
    nbthread 1
    cpu-map 1/1 $GW_CORE
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ${busy:+busy-polling}

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

listen tls
    bind 127.0.0.1:17120 ssl crt $pki/haproxy.pem ca-file $pki/ca.pem verify required
    server echo 127.0.0.1:$ECHO

listen tls-bulk
    bind 127.0.0.1:17121 ssl crt $pki/haproxy.pem ca-file $pki/ca.pem verify required
    server sink 127.0.0.1:$SINK
EOF
done

# nginx stream: one worker on the gateway core; TLS 1.3, ssl_verify_client on. Session
# tickets on (nginx's default); no shared session cache (default `none`).
mask="1$(printf '0%.0s' $(seq 1 "$GW_CORE"))"
[ "$GW_CORE" -eq 0 ] && mask=1
mkdir -p "$work/nginx/logs"
ngx_tls="ssl_certificate $pki/server.pem; ssl_certificate_key $pki/server.key;
        ssl_client_certificate $pki/ca.pem; ssl_verify_client on; ssl_protocols TLSv1.3;"
cat > "$work/nginx/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
worker_cpu_affinity $mask;
worker_rlimit_nofile $((IDLE_CONNS * 2 + 1024));
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
# worker_connections counts both sides of a proxied flow: IDLE_CONNS x 2 plus spare.
events { worker_connections $((IDLE_CONNS * 2 + 512)); }
stream {
    server { listen 127.0.0.1:17130 ssl; $ngx_tls proxy_pass 127.0.0.1:$ECHO; proxy_timeout 1h; }
    server { listen 127.0.0.1:17131 ssl; $ngx_tls proxy_pass 127.0.0.1:$SINK; }
}
EOF

gw_pid=""
cpu_pids=()
NOERMSB=glibc.cpu.x86_rep_movsb_threshold=4194304
start_gateway() {
  local gw=${1%+noermsb} tun=""
  [ "$gw" = "$1" ] || tun=$NOERMSB
  gw_pid=""; cpu_pids=()
  case $gw in
    direct) return 0 ;;
    zgate|zgate-busy|zgate-adaptive)
      GLIBC_TUNABLES=$tun nice -n "$NICE" taskset -c "$GW_CORE" "$BIN_DIR/zgate" run --config "$work/$gw.toml" 2>>"$work/$gw.log" &
      ;;
    haproxy|haproxy-busy)
      GLIBC_TUNABLES=$tun nice -n "$NICE" taskset -c "$GW_CORE" haproxy -db -f "$work/$gw.cfg" >>"$work/$gw.log" 2>&1 &
      ;;
    nginx)
      GLIBC_TUNABLES=$tun nice -n "$NICE" taskset -c "$GW_CORE" nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/logs/error.log" 2>>"$work/$gw.log" &
      ;;
    *) echo "bench-tls: unknown gateway $gw" >&2; return 1 ;;
  esac
  gw_pid=$!
  pids+=("$gw_pid")
  wait_port "${PP_PORT[$gw]}"; wait_port "${BULK_PORT[$gw]}"
  cpu_pids=("$gw_pid")
  if [ "$gw" = nginx ]; then
    local kids=""
    for _ in $(seq 50); do
      kids=$(cat "/proc/$gw_pid/task/$gw_pid/children" 2>/dev/null || true)
      [ -n "$kids" ] && break; sleep 0.1
    done
    for k in $kids; do cpu_pids+=("$k"); done
  fi
}

stop_gateway() {
  [ -n "$gw_pid" ] || return 0
  local keep=() p
  stop_pid "$gw_pid"
  for p in "${pids[@]}"; do [ "$p" = "$gw_pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
  gw_pid=""
}

clk=$(getconf CLK_TCK)

measure() {  # measure GATEWAY ROUND
  local gw=${1%+noermsb} round=$2 cpu_args=() p conns tls=() label="$1/r$2"
  for p in "${cpu_pids[@]}"; do cpu_args+=(--cpu-pid "$p"); done
  [ "$gw" = direct ] || tls=("${tls_args[@]}")
  if has_part handshake && [ "$gw" != direct ]; then
    run_window "$label" handshake-full "$HS_CONCURRENCY" -- \
      nice -n "$NICE" "$loadgen" handshake --target "127.0.0.1:${PP_PORT[$gw]}" --core "$CLIENT_CORE" \
      --concurrency "$HS_CONCURRENCY" --duration-s "$HS_DURATION_S" --warmup-s "$WARMUP_S" \
      --clk-tck "$clk" "${cpu_args[@]}" "${tls[@]}" --label "$label"
    run_window "$label" handshake-resumed "$HS_CONCURRENCY" -- \
      nice -n "$NICE" "$loadgen" handshake --resume --target "127.0.0.1:${PP_PORT[$gw]}" --core "$CLIENT_CORE" \
      --concurrency "$HS_CONCURRENCY" --duration-s "$HS_DURATION_S" --warmup-s "$WARMUP_S" \
      --clk-tck "$clk" "${cpu_args[@]}" "${tls[@]}" --label "$label"
  fi
  if has_part pingpong; then
    for conns in 1 50; do
      run_window "$label" pingpong "$conns" -- \
        nice -n "$NICE" "$loadgen" pingpong --target "127.0.0.1:${PP_PORT[$gw]}" --core "$CLIENT_CORE" \
        --connections "$conns" --size 64 --requests "$REQUESTS" --duration-s "$DURATION_S" \
        --warmup-s "$WARMUP_S" --clk-tck "$clk" "${cpu_args[@]}" "${tls[@]}" --label "$label"
    done
  fi
  if has_part bulk; then
    run_window "$label" bulk 1 -- \
      nice -n "$NICE" "$loadgen" bulk --target "127.0.0.1:${BULK_PORT[$gw]}" --core "$CLIENT_CORE" \
      --bytes "$BULK_BYTES" --duration-s "$BULK_DURATION_S" --clk-tck "$clk" "${cpu_args[@]}" \
      "${tls[@]}" --label "$label"
  fi
}

mem_kib() {  # mem_kib FIELD PID...: sum of VmRSS (status) or Pss (smaps_rollup), KiB
  local field=$1 t=0 p v; shift
  for p in "$@"; do
    if [ "$field" = Pss ]; then v=$(awk '$1 == "Pss:" { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    else v=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0); fi
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

# Idle: a fresh gateway, 16 warm-up connections, then IDLE_CONNS established mTLS
# connections (each proven with a one-byte echo), held; memory read after 1 s.
measure_idle() {
  local gw=${1%+noermsb} hold=$((IDLE_CONNS / 250 + 30)) idle_pid rss0 pss0 rss1 pss1 line=""
  start_gateway "$1"
  "$loadgen" idle --target "127.0.0.1:${PP_PORT[$gw]}" --core "$CLIENT_CORE" --connections 16 \
    --hold-s 0.2 "${tls_args[@]}" --label "$gw/warmup" >/dev/null 2>>"$work/loadgen.log" || true
  sleep 1
  rss0=$(mem_kib VmRSS "${cpu_pids[@]}"); pss0=$(mem_kib Pss "${cpu_pids[@]}")
  "$loadgen" idle --target "127.0.0.1:${PP_PORT[$gw]}" --core "$CLIENT_CORE" --connections "$IDLE_CONNS" \
    --hold-s "$hold" --stall-s 10 "${tls_args[@]}" --label "$gw/idle" > "$work/idle.json" 2>>"$work/loadgen.log" &
  idle_pid=$!
  pids+=("$idle_pid")
  for _ in $(seq $((hold * 10))); do
    line=$(head -1 "$work/idle.json" 2>/dev/null || true)
    [ -n "$line" ] && break
    kill -0 "$idle_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$line" ]; then
    echo "bench-tls: idle $gw: the load generator did not open its connections: $(tail -1 "$work/loadgen.log")" >&2
    printf '{"mode":"error","label":"%s/idle","kind":"idle"}\n' "$gw" >> "$results"
  else
    sleep 1
    rss1=$(mem_kib VmRSS "${cpu_pids[@]}"); pss1=$(mem_kib Pss "${cpu_pids[@]}")
    echo "$line" | tee -a "$results"
    printf '{"mode":"idle-mem","label":"%s","connections":%d,"rss_before_kib":%d,"rss_after_kib":%d,"pss_before_kib":%d,"pss_after_kib":%d,"rss_bytes_per_conn":%d,"pss_bytes_per_conn":%d}\n' \
      "$1" "$IDLE_CONNS" "$rss0" "$rss1" "$pss0" "$pss1" $(( (rss1 - rss0) * 1024 / IDLE_CONNS )) $(( (pss1 - pss0) * 1024 / IDLE_CONNS )) \
      | tee -a "$results"
  fi
  stop_pid "$idle_pid"
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$idle_pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
  stop_gateway
}

for round in $(seq 1 "$ROUNDS"); do
  for gw in $GATEWAYS; do
    echo "== round $round: $gw" >&2
    start_gateway "$gw"
    measure "$gw" "$round"
    if [[ $gw == zgate* ]]; then
      # zgate's own count: handshakes completed and refused, flows denied.
      curl -s --max-time 2 "http://127.0.0.1:$ADMIN/metrics" 2>/dev/null \
        | grep -E '^zgate_(tls_handshake|connections_(accepted|denied))' > "$work/metrics-$gw-r$round.txt" || true
      cp "$work/metrics-$gw-r$round.txt" "$OUT_DIR/" 2>/dev/null || true
    fi
    stop_gateway
  done
done

if has_part idle; then
  for gw in $IDLE_GATEWAYS; do
    echo "== idle: $gw" >&2
    measure_idle "$gw"
  done
fi

cp "$work"/*.toml "$work"/*.cfg "$work/nginx/nginx.conf" "$OUT_DIR/" 2>/dev/null || true
python3 tools/bench/report-tls.py "$results" "$OUT_DIR/machine.txt" > "$OUT_DIR/report.md"
cat "$OUT_DIR/report.md"
echo "bench-tls: results in $OUT_DIR" >&2
