#!/usr/bin/env bash
# Two zgate builds against each other on the TLS data path, in interleaved pairs (A, B,
# A, B, ...), so that the shared machine's slow and fast phases fall on both alike.
# Each measurement starts a fresh gateway (one worker on GW_CORE, mTLS, TLS 1.3) in
# front of a zgate-bench sink or echo on CLIENT_CORE, and records the loadgen's JSON
# line (bulk: bytes per gateway CPU-second; pingpong: latency and CPU per request).
# Prints every pair, then the medians and the median of the per-pair ratios B/A.
#
# Usage: tools/bench-ab-tls.sh A_BIN_DIR B_BIN_DIR [OUT.jsonl]
# Knobs: MODE (bulk | pingpong), PAIRS (10), CONNS (pingpong connections, 50),
#   BULK_BYTES (2147483648), DURATION_S (pingpong, 4), GW_CORE (1), CLIENT_CORE (0),
#   A_WORKERS, B_WORKERS (lines added to each side's [workers], e.g. B_WORKERS="latency =
#   false" with A and B the same build: one setting against another).
# Each BIN_DIR holds zgate; zgate-bench, zgate-devpki and zgate-control come from B.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(cd "$1" && pwd)
B=$(cd "$2" && pwd)
OUT=${3:-/dev/null}
MODE=${MODE:-bulk}
PAIRS=${PAIRS:-10}
CONNS=${CONNS:-50}
BULK_BYTES=${BULK_BYTES:-2147483648}
DURATION_S=${DURATION_S:-4}
GW_CORE=${GW_CORE:-1}
CLIENT_CORE=${CLIENT_CORE:-0}
UP_PORT=17301 GW_PORT=17311 ADMIN_PORT=17309

work=$(mktemp -d /tmp/zgate-bench-ab.XXXXXX)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench-ab-tls: nothing listens on port $1 after 10 s" >&2
  return 1
}

"$B/zgate-devpki" --out "$work/pki" --client spiffe://zgate.test/client >/dev/null
"$B/zgate-control" compile tools/bench/policy-tls -o "$work/t.zgt" >/dev/null
# The benchmark policy names the listeners `tls` (echo) and `tls-bulk` (sink).
name=tls-bulk serve=(--sink)
[ "$MODE" = bulk ] || { name=tls; serve=(); }
for side in A B; do
extra=${A_WORKERS:-}
[ "$side" = B ] && extra=${B_WORKERS:-}
cat >"$work/zgate-$side.toml" <<EOF
table = "t.zgt"
admin = "127.0.0.1:$ADMIN_PORT"
[workers]
cores = [$GW_CORE]
$extra
[[listener]]
name = "$name"
listen = "127.0.0.1:$GW_PORT"
upstream = "127.0.0.1:$UP_PORT"
[listener.tls]
cert = "$work/pki/server.pem"
key = "$work/pki/server.key"
client_ca = "$work/pki/ca.pem"
trust_domain = "zgate.test"
EOF
done
"$B/zgate-bench" serve --listen "127.0.0.1:$UP_PORT" --core "$CLIENT_CORE" "${serve[@]}" \
  --max-runtime-s 7200 2>"$work/upstream.log" &
pids+=($!)
wait_port "$UP_PORT"

tls=(--tls --ca "$work/pki/ca.pem" --cert "$work/pki/client-0.pem" --key "$work/pki/client-0.key"
  --server-name localhost)
clk=$(getconf CLK_TCK)
: >"$work/results.jsonl"
for i in $(seq 1 "$PAIRS"); do
  for side in A B; do
    dir=$A; [ "$side" = B ] && dir=$B
    taskset -c "$GW_CORE" "$dir/zgate" run --config "$work/zgate-$side.toml" 2>>"$work/zgate-$side.log" &
    gw=$!
    pids+=("$gw")
    wait_port "$GW_PORT"
    if [ "$MODE" = bulk ]; then
      "$B/zgate-bench" bulk --target "127.0.0.1:$GW_PORT" --core "$CLIENT_CORE" \
        --bytes "$BULK_BYTES" --duration-s 30 --clk-tck "$clk" --cpu-pid "$gw" "${tls[@]}" \
        --label "$side/$i" >>"$work/results.jsonl"
    else
      "$B/zgate-bench" pingpong --target "127.0.0.1:$GW_PORT" --core "$CLIENT_CORE" \
        --connections "$CONNS" --size 64 --requests 100000000 --duration-s "$DURATION_S" \
        --warmup-s 0.5 --clk-tck "$clk" --cpu-pid "$gw" "${tls[@]}" \
        --label "$side/$i" >>"$work/results.jsonl"
    fi
    kill "$gw"; wait "$gw" 2>/dev/null || true
  done
done
cp "$work/results.jsonl" "$OUT" 2>/dev/null || true
python3 - "$work/results.jsonl" "$MODE" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if r.get("mode") == sys.argv[2]]
keys = {"bulk": ["bytes_per_gateway_cpu_s"],
        "pingpong": ["p50_us", "p99_us", "p999_us", "gateway_cpu_us_per_req"]}[sys.argv[2]]
by = {}
for r in rows:
    side, i = r["label"].split("/")
    by.setdefault(int(i), {})[side] = r
for k in keys:
    pairs = [(p["A"].get(k), p["B"].get(k)) for p in by.values() if "A" in p and "B" in p]
    pairs = [(a, b) for a, b in pairs if a and b]
    if not pairs:
        print(f"{k}: no data"); continue
    for n, (a, b) in enumerate(pairs, 1):
        print(f"{k} pair {n}: A {a:.4g}  B {b:.4g}  B/A {b / a:.3f}")
    print(f"{k}: median A {st.median(a for a, _ in pairs):.4g}, B {st.median(b for _, b in pairs):.4g}, "
          f"median B/A {st.median(b / a for a, b in pairs):.3f} ({len(pairs)} pairs)")
PY
