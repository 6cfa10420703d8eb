#!/bin/bash
# run.sh BIN_ZGATE LABEL : 9000 idle plain flows held 20 s; gateway CPU over the hold
set -e
Z=$1; L=$2

cat > /tmp/idlecpu/allow.toml <<'P'
[[rule]]
id = "allow-all"
action = "allow"
services = ["*"]
P
mkdir -p /tmp/idlecpu/pol && cp /work/main/tools/bench/policy/*.toml /tmp/idlecpu/pol/
/work/main/target/release/zgate-control compile /tmp/idlecpu/pol -o /tmp/idlecpu/t.zgt >/dev/null
cat > /tmp/idlecpu/z.toml <<C
table = "/tmp/idlecpu/t.zgt"
admin = "127.0.0.1:17309"
[workers]
cores = [1]
[[listener]]
name = "bench"
listen = "127.0.0.1:17310"
upstream = "127.0.0.1:17300"
idle_timeout = "1h"
max_connections = 20000
C
ulimit -n 20000
taskset -c 0 /work/main/target/release/zgate-loadgen serve --listen 127.0.0.1:17300 > /dev/null 2>&1 &
UP=$!
$Z run --config /tmp/idlecpu/z.toml > /tmp/idlecpu/z-$L.log 2>&1 &
ZP=$!
sleep 1
taskset -c 0 /work/main/target/release/zgate-loadgen idle --target 127.0.0.1:17310 --connections 9000 --hold-s 25 --cpu-pid $ZP --label $L > /tmp/idlecpu/idle-$L.json 2>/tmp/idlecpu/idle-$L.err &
LG=$!
# wait until connections are up, then measure 15 s of the hold
sleep 8
t0=$(awk '{print $14+$15}' /proc/$ZP/stat)
sleep 15
t1=$(awk '{print $14+$15}' /proc/$ZP/stat)
echo "$L: gateway CPU over 15 s of 9000 idle flows: $((t1-t0)) ticks ($(echo "scale=2; ($t1-$t0)/15" | bc) % of a core)"
wait $LG || true
kill $ZP $UP 2>/dev/null; wait 2>/dev/null || true
