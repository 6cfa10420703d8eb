#!/usr/bin/env python3
"""Turns tools/bench-proxy.sh's results.jsonl into the markdown report.

Per gateway and connection count, every number is the median over rounds. Added
latency is computed per round against that round's direct run, then the median is
taken. Ratios are zgate over its peer: below 1 is better for latency and CPU, above 1
for throughput.

A measurement is "quiet" when the other work on the machine during it (CPU time of
processes that are neither the gateway, the upstreams nor the load generator, in % of
one core) was at most QUIET_PCT (environment, default 10; `inf`: every round counts, also from runs without that record). Summaries use the quiet
rounds; a row with none uses every round and is marked with a dagger. Added latency is
then the gateway's median minus direct's median over their quiet rounds.

Usage: report.py RESULTS.jsonl... [MACHINE.txt...]
(several results files pool their rounds: runs on the same machine and code)
"""
import os
import json
import statistics
import sys
from collections import defaultdict

PEERS = [
    # (zgate config, peer, what the goal compares)
    ("zgate-interrupt", "haproxy"),
    ("zgate-busy", "haproxy-busy"),
    ("zgate-interrupt", "nginx"),
    ("zgate-busy", "nginx"),
    # The ring set-up: DEFER_TASKRUN (default) against a plain ring.
    ("zgate-interrupt", "zgate-interrupt-nodefer"),
    ("zgate-busy", "zgate-busy-nodefer"),
    # Adaptive polling spins after traffic: against both kinds of peer.
    ("zgate-adaptive", "haproxy"),
    ("zgate-adaptive", "haproxy-busy"),
]
ORDER = [
    "direct", "xcore", "zgate-interrupt", "zgate-busy", "zgate-interrupt-nodefer",
    "zgate-busy-nodefer", "zgate-adaptive", "haproxy", "haproxy-busy", "nginx",
]


def load(paths):
    pp = defaultdict(dict)  # (gw, conns) -> round -> record
    ol = defaultdict(dict)  # (gw, rate) -> round -> record
    bulk = defaultdict(dict)  # gw -> round -> record
    core = defaultdict(dict)  # (gw, kind, conns) -> round -> other work, % of a core
    for n, path in enumerate(paths):
        with open(path) as f:
            lines = [json.loads(x) for x in f if x.strip().startswith("{")]
        for r in lines:
            gw, _, rnd = r["label"].rpartition("/r")
            rnd = int(rnd) + 1000 * n  # several files pool their rounds
            if r["mode"] == "pingpong":
                pp[(gw, r["connections"])][rnd] = r
            elif r["mode"] == "open-loop":
                ol[(gw, int(r["target_rate"]))][rnd] = r
            elif r["mode"] == "bulk":
                bulk[gw][rnd] = r
            elif r["mode"] == "window":
                key = (gw, r["kind"], r["connections"] if r["kind"] == "pingpong" else 0)
                core[key][rnd] = r["other_core_pct"]
    return pp, bulk, core, ol


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=1):
    if v is None:
        return "–"
    if abs(v) >= 1e6:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b <= 0 or a < 0:
        return None
    return a / b


def main():
    results = [a for a in sys.argv[1:] if a.endswith(".jsonl")]
    machine = [a for a in sys.argv[1:] if not a.endswith(".jsonl")]
    pp, bulk, core, ol = load(results)
    for m in machine:
        with open(m) as f:
            print("```")
            print(f.read().rstrip())
            print("```\n")
    gws = [g for g in ORDER if any(k[0] == g for k in pp)]
    quiet_pct = float(os.environ.get("QUIET_PCT", "10"))

    def quiet(gw, kind, conns, rounds):
        """The rounds measured on a quiet machine, or all of them (and False)."""
        other = core.get((gw, kind, conns), {})
        q = {k: r for k, r in rounds.items() if other.get(k, 1e9) <= quiet_pct}
        return (q, True) if q else (rounds, False)

    summary = {}  # (gw, conns) -> dict of medians
    for (gw, conns), all_rounds in pp.items():
        rounds, was_quiet = quiet(gw, "pingpong", conns, all_rounds)
        summary[(gw, conns)] = {
            **{q: med([r[q] for r in rounds.values()]) for q in ("p50_us", "p99_us", "p999_us", "max_us", "msgs_per_s")},
            "cpu_us": med([r["gateway_cpu_us_per_req"] for r in rounds.values()]),
            "rounds": len(rounds),
            "quiet": was_quiet,
            "best_added_p99_us": None,
        }
    for (gw, conns), s in summary.items():
        d = summary.get(("direct", conns))
        for q in ("p50_us", "p99_us", "p999_us"):
            s["added_" + q] = s[q] - d[q] if d and s[q] is not None and d[q] is not None else None
        # The least disturbed round: on a shared machine, interference only adds.
        direct = pp.get(("direct", conns), {})
        adds = [r["p99_us"] - direct[k]["p99_us"] for k, r in pp[(gw, conns)].items() if k in direct]
        s["best_added_p99_us"] = min(adds) if adds else None
    bsum = {}
    for gw, all_rounds in bulk.items():
        rounds, was_quiet = quiet(gw, "bulk", 0, all_rounds)
        bsum[gw] = {
            "bytes_per_s": med([r["bytes_per_s"] for r in rounds.values()]),
            "cpu_s": med([r["gateway_cpu_s"] for r in rounds.values()]),
            "bytes_per_cpu_s": med([r["bytes_per_gateway_cpu_s"] for r in rounds.values()]),
            "rounds": len(rounds),
            "quiet": was_quiet,
        }

    print(f"### Ping-pong, 64-byte messages (medians over quiet rounds, other work <= {quiet_pct:g} % of a core; µs)\n")
    print("| gateway | conns | rounds | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | msgs/s | gateway CPU µs/req |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for conns in (1, 50):
        for gw in gws:
            s = summary.get((gw, conns))
            if not s:
                continue
            print(
                f"| {gw} | {conns} | {s['rounds']}{'' if s['quiet'] else ' †'} | {fmt(s['p50_us'])} | {fmt(s['p99_us'])} | {fmt(s['p999_us'])} | "
                f"{fmt(s['added_p50_us'])} | {fmt(s['added_p99_us'])} | {fmt(s['added_p999_us'])} | "
                f"{fmt(s['msgs_per_s'], 0)} | {fmt(s['cpu_us'], 2)} |"
            )
    print("\n### Bulk, one direction client -> sink (medians over quiet rounds)\n")
    print("| gateway | rounds | GB/s | gateway CPU s | GB per gateway CPU-second |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for gw in ORDER:
        b = bsum.get(gw)
        if not b:
            continue
        gbs = b["bytes_per_s"] / 1e9 if b["bytes_per_s"] else None
        gbc = b["bytes_per_cpu_s"] / 1e9 if b["bytes_per_cpu_s"] else None
        print(f"| {gw} | {b['rounds']}{'' if b['quiet'] else ' †'} | {fmt(gbs, 2)} | {fmt(b['cpu_s'], 2)} | {fmt(gbc, 2)} |")

    rates = sorted({rate for _, rate in ol})
    if rates:
        print("\n### Open loop, 64-byte ping-pong at fixed rates, 50 connections (medians over rounds; µs, from each request's intended send time)\n")
        print("| gateway | rate /s | rounds | p50 | p99 | p99.9 | p99.99 | added p99 | added p99.99 | service p99 | client late | gateway CPU µs/req |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for rate in rates:
            d = ol.get(("direct", rate), {})
            dm = {q: med([r[q] for r in d.values()]) for q in ("p99_us", "p9999_us")}
            for gw in ORDER:
                rounds = ol.get((gw, rate))
                if not rounds:
                    continue
                m = {q: med([r.get(q) for r in rounds.values()]) for q in ("p50_us", "p99_us", "p999_us", "p9999_us", "service_p99_us", "gateway_cpu_us_per_req")}
                late = sum(r.get("client_late") or 0 for r in rounds.values())
                add = lambda q: m[q] - dm[q] if m[q] is not None and dm[q] is not None else None
                print(f"| {gw} | {rate:,} | {len(rounds)} | {fmt(m['p50_us'])} | {fmt(m['p99_us'])} | {fmt(m['p999_us'])} | {fmt(m['p9999_us'])} | "
                      f"{fmt(add('p99_us'))} | {fmt(add('p9999_us'))} | {fmt(m['service_p99_us'])} | {late} | {fmt(m['gateway_cpu_us_per_req'], 2)} |")

    pairs = [(z, p) for z, p in PEERS if (z, 1) in summary and (p, 1) in summary]
    print("\n### Ratios, zgate / peer\n")
    print("| measure | " + " | ".join(f"{z} / {p}" for z, p in pairs) + " |")
    print("| --- |" + " ---: |" * len(pairs))
    rows = []
    for conns in (1, 50):
        for key, name in (("added_p50_us", "added p50"), ("added_p99_us", "added p99"), ("added_p999_us", "added p99.9")):
            rows.append((f"{name}, {conns} conn", lambda z, p, c=conns, k=key: ratio(summary[(z, c)][k], summary[(p, c)][k])))
    for conns in (1, 50):
        rows.append((f"added p99, {conns} conn, best round", lambda z, p, c=conns: ratio(summary[(z, c)]["best_added_p99_us"], summary[(p, c)]["best_added_p99_us"])))
    for conns in (1, 50):
        rows.append((f"msgs/s, {conns} conn", lambda z, p, c=conns: ratio(summary[(z, c)]["msgs_per_s"], summary[(p, c)]["msgs_per_s"])))
    for conns in (1, 50):
        rows.append((f"CPU per request, {conns} conn", lambda z, p, c=conns: ratio(summary[(z, c)]["cpu_us"], summary[(p, c)]["cpu_us"])))
    rows.append(("bulk bytes/s", lambda z, p: ratio(bsum.get(z, {}).get("bytes_per_s"), bsum.get(p, {}).get("bytes_per_s"))))
    rows.append(("bulk bytes per CPU-second", lambda z, p: ratio(bsum.get(z, {}).get("bytes_per_cpu_s"), bsum.get(p, {}).get("bytes_per_cpu_s"))))
    for name, f in rows:
        cells = []
        for z, p in pairs:
            try:
                v = f(z, p)
            except KeyError:
                v = None
            cells.append(f"{v:.2f}x" if v is not None else "n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\n† no quiet round: the median of all rounds.")
    print("\n### Per round (spread)\n")
    print("| gateway | conns | added p99 per round (µs) | best round | msgs/s per round | other work, % of a core, per round |")
    print("| --- | ---: | --- | ---: | --- | --- |")
    for conns in (1, 50):
        for gw in gws:
            rounds = pp.get((gw, conns), {})
            direct = pp.get(("direct", conns), {})
            adds = [
                fmt(r["p99_us"] - direct[k]["p99_us"]) if k in direct else "–"
                for k, r in sorted(rounds.items())
            ]
            rates = [fmt(r["msgs_per_s"], 0) for _, r in sorted(rounds.items())]
            other = core.get((gw, "pingpong", conns), {})
            other = [fmt(other.get(k), 0) for k in sorted(rounds)]
            best = summary.get((gw, conns), {}).get("best_added_p99_us")
            print(f"| {gw} | {conns} | {', '.join(adds)} | {fmt(best)} | {', '.join(rates)} | {', '.join(other) or '–'} |")


if __name__ == "__main__":
    main()
