#!/usr/bin/env bash
# Plain-TCP ping-pong, latency histograms on (A) vs off (B), interleaved pairs.
set -euo pipefail
R=target/release; w=$(mktemp -d); out=${1:-/dev/null}
mkdir -p $w/p; printf '[[rule]]\nid = "l"\naction = "allow"\nservices = ["echo"]\nsources = ["127.0.0.0/8"]\n' > $w/p/p.toml
$R/zgate-control compile $w/p -o $w/t.zgt >/dev/null
for s in A B; do x=""; [ $s = B ] && x="latency = false"
printf 'table = "t.zgt"\naudit = "off"\n[workers]\ncores = [1]\n%s\n[[listener]]\nname = "echo"\nlisten = "127.0.0.1:17411"\nupstream = "127.0.0.1:17401"\n' "$x" > $w/z-$s.toml; done
taskset -c 0 $R/zgate-bench serve --listen 127.0.0.1:17401 --max-runtime-s 600 & up=$!
sleep 0.3; : > $w/r.jsonl
for i in $(seq ${PAIRS:-8}); do for s in A B; do
  $R/zgate run --config $w/z-$s.toml 2>/dev/null & gw=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/17411) 2>/dev/null && break; sleep 0.05; done
  taskset -c 0 $R/zgate-bench pingpong --target 127.0.0.1:17411 --connections 50 --size 64 --requests 100000000 --duration-s 4 --warmup-s 0.5 --cpu-pid $gw --label $s/$i >> $w/r.jsonl
  kill $gw; wait $gw 2>/dev/null || true
done; done
kill $up; cp $w/r.jsonl "$out" 2>/dev/null || true
python3 - $w/r.jsonl <<'PY'
import json, statistics as st, sys
rows=[json.loads(l) for l in open(sys.argv[1])]
by={}
for r in rows:
    s,i=r["label"].split("/"); by.setdefault(i,{})[s]=r
for k in ["p50_us","p99_us","p999_us","gateway_cpu_us_per_req"]:
    p=[(v["A"][k],v["B"][k]) for v in by.values()]
    print(f"{k}: median A {st.median(a for a,_ in p):.4g}, B {st.median(b for _,b in p):.4g}, median B/A {st.median(b/a for a,b in p):.3f} ({len(p)} pairs)")
PY
rm -rf $w
