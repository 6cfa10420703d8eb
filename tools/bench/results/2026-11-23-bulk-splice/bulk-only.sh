#!/usr/bin/env bash
# Bulk-only side-by-side: zgate before ($BASE_DIR), zgate after ($NEW_DIR), HAProxy.
# BASE_DIR holds zgate, zgate-control, zgate-loadgen; NEW_DIR holds zgate. Run from the
# repository root. One JSON line per measurement to $OUT.
set -euo pipefail
BASE_DIR=${BASE_DIR:-/tmp/base}; NEW_DIR=${NEW_DIR:-/tmp/new}
ROUNDS=${ROUNDS:-3}; BYTES=${BYTES:-2147483648}; GW_CORE=1; CLIENT_CORE=0; NICE=-19
W=$(mktemp -d); OUT=${OUT:-/tmp/bulk-results.jsonl}; : > "$OUT"
LG=$BASE_DIR/zgate-loadgen
pids=()
cleanup(){ for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_port(){ for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
nice -n $NICE $LG serve --listen 127.0.0.1:18001 --core $CLIENT_CORE --sink --max-runtime-s 3600 2>/dev/null & pids+=($!)
wait_port 18001
$BASE_DIR/zgate-control compile tools/bench/policy -o $W/bench.zgt >/dev/null
cat > $W/z.toml <<T
table = "bench.zgt"
admin = "127.0.0.1:18009"
drain_timeout = "1s"
[workers]
cores = [$GW_CORE]
poll = "interrupt"
[[listener]]
name = "bench-bulk"
listen = "127.0.0.1:18011"
upstream = "127.0.0.1:18001"
T
cat > $W/h.cfg <<T
global
    nbthread 1
    cpu-map 1/1 $GW_CORE
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
listen bulk
    bind 127.0.0.1:18011
    server sink 127.0.0.1:18001
T
for r in $(seq $ROUNDS); do
  for gw in zgate-base zgate-splice haproxy; do
    case $gw in
      zgate-base) nice -n $NICE taskset -c $GW_CORE $BASE_DIR/zgate run --config $W/z.toml 2>$W/$gw.log & ;;
      zgate-splice) nice -n $NICE taskset -c $GW_CORE $NEW_DIR/zgate run --config $W/z.toml 2>$W/$gw.log & ;;
      haproxy) nice -n $NICE taskset -c $GW_CORE haproxy -db -f $W/h.cfg >$W/$gw.log 2>&1 & ;;
    esac
    gp=$!; pids+=($gp); wait_port 18011; sleep 0.3
    line=$(nice -n $NICE $LG bulk --target 127.0.0.1:18011 --bytes $BYTES --duration-s 20 --core $CLIENT_CORE --cpu-pid $gp)
    echo "{\"gateway\":\"$gw\",\"round\":$r,\"loadavg\":\"$(cut -d' ' -f1 /proc/loadavg)\",\"result\":$line}" | tee -a "$OUT"
    kill $gp; wait $gp 2>/dev/null || true
  done
done
