#!/bin/bash
# usage: measure.sh ZBIN BYTES  -> prints gateway cpu, ksoftirqd cpu (both cores), kworker cpu on core1, all-cpu idle delta
B=/work/main/target/release
cd /tmp/bulk
ticks(){ awk '{print $14+$15}' /proc/$1/stat; }
ks0=$(pgrep -x ksoftirqd/0); ks1=$(pgrep -x ksoftirqd/1)
nice -n -19 $B/zgate-loadgen serve --listen 127.0.0.1:17001 --core 0 --sink --max-runtime-s 300 2>/dev/null & S=$!
if [ "$1" = haproxy ]; then nice -n -19 taskset -c 1 haproxy -db -f h.cfg >/dev/null 2>&1 & Z=$!; else nice -n -19 taskset -c 1 $1 run --config z.toml 2>/tmp/bulk/z.log & Z=$!; fi
sleep 0.5
a0=$(ticks $ks0); a1=$(ticks $ks1); z0=$(ticks $Z); s0=$(ticks $S)
c0=$(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat)
out=$( /usr/bin/time -f "CLIENT %U %S" -o /tmp/bulk/ctime nice -n -19 $B/zgate-loadgen bulk --target 127.0.0.1:17011 --core 0 --bytes $2 --duration-s 20 --clk-tck 100 --cpu-pid $Z --label x 2>&1 | tail -1)
b0=$(ticks $ks0); b1=$(ticks $ks1); z1=$(ticks $Z); s1=$(ticks $S)
c1=$(awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat)
echo "$out" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('GB/s %.2f gw_cpu %.2f' % (d['bytes_per_s']/1e9, d['gateway_cpu_s']), end=' ')"
echo "zgate_ticks $((z1-z0)) sink_ticks $((s1-s0)) ksoftirqd0 $((b0-a0)) ksoftirqd1 $((b1-a1)) all_busy_ticks $((c1-c0))"
cat /tmp/bulk/ctime | tail -1; kill $Z $S; wait $Z $S 2>/dev/null
