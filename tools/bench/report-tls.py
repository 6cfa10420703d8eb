#!/usr/bin/env python3
"""Turns tools/bench-tls.sh's results.jsonl into the markdown report.

Every number is the median over rounds (min-max in the per-round tables). Added latency
is computed per round against that round's `direct` ping-pong (plain TCP, no gateway),
then the median is taken. Ratios are zgate over its peer: below 1 is better for CPU,
latency and memory, above 1 for rates and bytes per CPU-second. Each measurement's
"other" column is the CPU other processes used on the machine meanwhile, in % of one
core (the machine is shared): read the latency tails with it.

Usage: report-tls.py RESULTS.jsonl... [MACHINE.txt...]
(several results files pool their rounds: runs on the same machine and code)
"""
import json
import statistics
import sys
from collections import defaultdict

ORDER = ["direct", "zgate", "zgate-busy", "zgate-adaptive", "haproxy", "haproxy-busy", "nginx",
         "zgate+noermsb", "haproxy+noermsb", "nginx+noermsb"]
PEERS = [("zgate", "haproxy"), ("zgate", "nginx"), ("zgate-busy", "haproxy-busy"),
         ("zgate-adaptive", "haproxy"), ("zgate-adaptive", "haproxy-busy"),
         ("zgate+noermsb", "haproxy+noermsb"), ("zgate+noermsb", "haproxy")]


def load(paths):
    meas = defaultdict(dict)  # (gw, kind, conns) -> round -> record
    other = defaultdict(dict)  # (gw, kind, conns) -> round -> other work %
    idle = {}  # gw -> idle-mem record
    errors = []
    for n, path in enumerate(paths):
        with open(path) as f:
            lines = [json.loads(x) for x in f if x.strip().startswith("{")]
        for r in lines:
            mode = r["mode"]
            if mode == "idle-mem":
                idle[r["label"]] = r
                continue
            if mode == "error":
                errors.append(r)
                continue
            if mode == "idle":
                continue
            gw, _, rnd = r["label"].rpartition("/r")
            rnd = int(rnd) + 1000 * n
            if mode == "window":
                other[(gw, r["kind"], r["connections"] if r["kind"] == "pingpong" else 0)][rnd] = r["other_core_pct"]
                continue
            if mode == "handshake":
                kind = "handshake-resumed" if r["resume"] else "handshake-full"
                conns = 0
            elif mode == "pingpong":
                kind, conns = "pingpong", r["connections"]
            else:
                kind, conns = mode, 0
            meas[(gw, kind, conns)][rnd] = r
    return meas, other, idle, errors


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    if v is None:
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}x"


def span(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{fmt(min(values), digits)}–{fmt(max(values), digits)}"


def main():
    args = sys.argv[1:]
    results = [a for a in args if a.endswith(".jsonl")]
    machines = [a for a in args if not a.endswith(".jsonl")]
    meas, other, idle, errors = load(results)
    gws = [g for g in ORDER if any(k[0] == g for k in meas)] + sorted(
        {k[0] for k in meas} - set(ORDER))
    out = []
    p = out.append
    for m in machines:
        p("```text")
        with open(m) as f:
            p(f.read().rstrip())
        p("```")
        p("")

    def field(gw, kind, conns, name):
        return [r.get(name) for r in meas.get((gw, kind, conns), {}).values()]

    def mfield(gw, kind, conns, name):
        return med(field(gw, kind, conns, name))

    # Handshakes.
    p("## Handshakes (mTLS, fresh connection each, one-byte echo through the gateway)")
    p("")
    p("| gateway | kind | handshakes/s achieved | gateway CPU ms / handshake | handshakes per gateway CPU-s (one core) | resumed | other % |")
    p("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for gw in gws:
        for kind in ("handshake-full", "handshake-resumed"):
            recs = meas.get((gw, kind, 0))
            if not recs:
                continue
            hs = sum(r["handshakes"] for r in recs.values())
            res = sum(r["resumed"] for r in recs.values())
            p(f"| {gw} | {kind[10:]} | {fmt(mfield(gw, kind, 0, 'handshakes_per_s'))} | "
              f"{fmt(mfield(gw, kind, 0, 'gateway_cpu_ms_per_handshake'), 3)} | "
              f"{fmt(mfield(gw, kind, 0, 'handshakes_per_gateway_cpu_s'))} | "
              f"{100 * res / hs if hs else 0:.0f} % | {fmt(med(other[(gw, kind, 0)].values()))} |")
    p("")
    negotiated = {json.dumps(r.get("negotiated"), sort_keys=True)
                  for (g, k, c), recs in meas.items() if k.startswith("handshake") or k == "bulk"
                  for r in recs.values() if r.get("negotiated")}
    p("Negotiated: " + "; ".join(sorted(negotiated)))
    p("")

    # Ping-pong.
    p("## Ping-pong, 64 bytes, established mTLS connections")
    p("")
    p("| gateway | conns | p50 µs | p99 µs | p99.9 µs | added p50 | added p99 | added p99.9 | msgs/s | gateway CPU µs/req | other % |")
    p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    added = {}
    for conns in (1, 50):
        for gw in gws:
            recs = meas.get((gw, "pingpong", conns))
            if not recs:
                continue
            direct = meas.get(("direct", "pingpong", conns), {})
            adds = {}
            for q in ("p50_us", "p99_us", "p999_us"):
                per = [r[q] - direct[rnd][q] for rnd, r in recs.items() if rnd in direct]
                adds[q] = med(per) if gw != "direct" else None
            added[(gw, conns)] = adds
            p(f"| {gw} | {conns} | {fmt(mfield(gw, 'pingpong', conns, 'p50_us'))} | "
              f"{fmt(mfield(gw, 'pingpong', conns, 'p99_us'))} | {fmt(mfield(gw, 'pingpong', conns, 'p999_us'))} | "
              f"{fmt(adds['p50_us'])} | {fmt(adds['p99_us'])} | {fmt(adds['p999_us'])} | "
              f"{fmt(mfield(gw, 'pingpong', conns, 'msgs_per_s'))} | "
              f"{fmt(mfield(gw, 'pingpong', conns, 'gateway_cpu_us_per_req'))} | "
              f"{fmt(med(other[(gw, 'pingpong', conns)].values()))} |")
    p("")

    # Bulk.
    p("## Bulk, one direction (client -> sink) over one mTLS connection")
    p("")
    p("| gateway | GB/s | GB per gateway CPU-s | other % |")
    p("| --- | ---: | ---: | ---: |")
    for gw in gws:
        if not meas.get((gw, "bulk", 0)):
            continue
        gbs = mfield(gw, "bulk", 0, "bytes_per_s")
        gbc = mfield(gw, "bulk", 0, "bytes_per_gateway_cpu_s")
        p(f"| {gw} | {fmt(gbs / 1e9 if gbs else None, 2)} | {fmt(gbc / 1e9 if gbc else None, 2)} | "
          f"{fmt(med(other[(gw, 'bulk', 0)].values()))} |")
    p("")

    # Idle.
    if idle:
        p("## Memory per idle mTLS connection (fresh gateway; RSS/PSS delta ÷ N)")
        p("")
        p("| gateway | N | RSS before → after KiB | RSS bytes/conn | PSS bytes/conn |")
        p("| --- | ---: | --- | ---: | ---: |")
        for gw in [g for g in ORDER if g in idle] + sorted(set(idle) - set(ORDER)):
            r = idle[gw]
            p(f"| {gw} | {r['connections']:,} | {r['rss_before_kib']:,} → {r['rss_after_kib']:,} | "
              f"{r['rss_bytes_per_conn']:,} | {r['pss_bytes_per_conn']:,} |")
        p("")

    # Ratios.
    p("## zgate / peer (same run)")
    p("")
    pairs = [(a, b) for a, b in PEERS if any(k[0] == a for k in meas) and any(k[0] == b for k in meas)]
    if pairs:
        p("| measure | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
        p("| --- | " + " | ".join("---:" for _ in pairs) + " |")
        rows = [
            ("CPU per full handshake", lambda g: mfield(g, "handshake-full", 0, "gateway_cpu_ms_per_handshake")),
            ("CPU per resumed handshake", lambda g: mfield(g, "handshake-resumed", 0, "gateway_cpu_ms_per_handshake")),
            ("full handshakes/s achieved", lambda g: mfield(g, "handshake-full", 0, "handshakes_per_s")),
            ("resumed handshakes/s achieved", lambda g: mfield(g, "handshake-resumed", 0, "handshakes_per_s")),
            ("added p50, 1 conn", lambda g: added.get((g, 1), {}).get("p50_us")),
            ("added p99, 1 conn", lambda g: added.get((g, 1), {}).get("p99_us")),
            ("added p99.9, 1 conn", lambda g: added.get((g, 1), {}).get("p999_us")),
            ("added p50, 50 conns", lambda g: added.get((g, 50), {}).get("p50_us")),
            ("added p99, 50 conns", lambda g: added.get((g, 50), {}).get("p99_us")),
            ("added p99.9, 50 conns", lambda g: added.get((g, 50), {}).get("p999_us")),
            ("CPU per request, 50 conns", lambda g: mfield(g, "pingpong", 50, "gateway_cpu_us_per_req")),
            ("bulk bytes per CPU-s", lambda g: mfield(g, "bulk", 0, "bytes_per_gateway_cpu_s")),
            ("idle RSS bytes/conn", lambda g: idle.get(g, {}).get("rss_bytes_per_conn")),
        ]
        for name, f in rows:
            p(f"| {name} | " + " | ".join(ratio(f(a), f(b)) for a, b in pairs) + " |")
        p("")

    # Per round.
    p("## Per round (min–max over rounds)")
    p("")
    p("| gateway | CPU ms / full hs | CPU ms / resumed hs | added p99 µs, 1 conn | added p99 µs, 50 conns | bulk GB per CPU-s |")
    p("| --- | --- | --- | --- | --- | --- |")
    for gw in gws:
        if gw == "direct":
            continue
        a1, a50 = [], []
        for conns, acc in ((1, a1), (50, a50)):
            direct = meas.get(("direct", "pingpong", conns), {})
            for rnd, r in meas.get((gw, "pingpong", conns), {}).items():
                if rnd in direct:
                    acc.append(r["p99_us"] - direct[rnd]["p99_us"])
        bulk = [v / 1e9 for v in field(gw, "bulk", 0, "bytes_per_gateway_cpu_s") if v]
        p(f"| {gw} | {span(field(gw, 'handshake-full', 0, 'gateway_cpu_ms_per_handshake'), 3)} | "
          f"{span(field(gw, 'handshake-resumed', 0, 'gateway_cpu_ms_per_handshake'), 3)} | "
          f"{span(a1, 0)} | {span(a50, 0)} | {span(bulk, 2)} |")
    p("")
    if errors:
        p("Failed measurements: " + ", ".join(f"{e['label']} {e.get('kind', '')}" for e in errors))
        p("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
