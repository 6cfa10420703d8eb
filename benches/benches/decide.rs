//! Benchmarks of the decision table: `decide` at 10, 1,000 and 100,000 rules, the
//! reference evaluator at 1,000 rules as the peer, and compile, encode and decode of
//! large tables.
//!
//! Each decide benchmark cycles through 4,096 prepared flows (a mix of allowed, denied
//! and default-denied ones, spread over all services), so criterion's time is the cost
//! of one decision with realistic cache and branch behaviour, not one flow decided
//! over and over. A `table-warm` variant cycles through only 16 of those flows, so
//! table and flows stay in cache: the difference between the two is the cost of cache
//! misses. A `table-hot` variant cycles through 1,024 flows on only the first 8
//! services the table names, as on a gateway that fronts a handful of listeners
//! while the policy covers the whole organisation. The setup prints each table's heap
//! size and the decision mix.
//! See `benches/README.md` for what the numbers assume and how to run them.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_main, BenchmarkId, Criterion};
use zgate_benches::{bench_flows, live, policy, FlowSpec, BENCH_SEED, WARM_FLOWS};
use zgate_policy::model::Policy;
use zgate_table::facts::{DecidedBy, Decision, FlowFacts, LiveFacts, Verdict};
use zgate_table::{reference, DecisionTable};

const SEED: u64 = BENCH_SEED;
const SIZES: [usize; 3] = [10, 1_000, 100_000];

/// Stop the run with a message: a benchmark on a table that failed to build is
/// meaningless.
fn or_exit<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("benchmark setup failed: {what}: {e:?}");
            std::process::exit(1);
        }
    }
}

fn compile(policy: &Policy) -> DecisionTable {
    or_exit(DecisionTable::compile(policy, 1), "compile")
}

/// Time `decide` over the prepared flows, cycling; the result is per decision.
fn per_decision(
    b: &mut criterion::Bencher<'_>,
    facts: &[FlowFacts<'_>],
    mut decide: impl FnMut(&FlowFacts<'_>) -> Decision,
) {
    b.iter_custom(|iters| {
        let start = Instant::now();
        for flow in facts.iter().cycle().take(iters as usize) {
            black_box(decide(black_box(flow)));
        }
        start.elapsed()
    });
}

fn describe(n: usize, table: &DecisionTable, facts: &[FlowFacts<'_>], live: &LiveFacts) {
    let (mut allow, mut deny, mut default, mut revoked) = (0, 0, 0, 0);
    for f in facts {
        let d = table.decide(f, live);
        match (d.verdict, d.decided_by) {
            (Verdict::Allow, _) => allow += 1,
            (_, DecidedBy::DefaultDeny) => default += 1,
            (_, DecidedBy::Rule(_)) => deny += 1,
            _ => revoked += 1,
        }
    }
    let bytes = table.heap_bytes();
    println!(
        "table at {n} rules: {bytes} heap bytes ({:.1} MiB, {:.0} bytes/rule); \
         {} flows: {allow} allowed, {deny} denied by rule, {default} default-denied, \
         {revoked} revoked",
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / n as f64,
        facts.len(),
    );
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group.measurement_time(Duration::from_secs(5));
    for n in SIZES {
        let policy = policy(n, SEED);
        let table = compile(&policy);
        let live = live(&policy, SEED);
        let names: Vec<&str> = table.service_names().collect();
        let sets = bench_flows(&policy, &names);
        let sans: Vec<Vec<&str>> = sets.spread.iter().map(FlowSpec::san_refs).collect();
        let hot_sans: Vec<Vec<&str>> = sets.hot.iter().map(FlowSpec::san_refs).collect();
        let facts: Vec<FlowFacts<'_>> = sets
            .spread
            .iter()
            .zip(&sans)
            .map(|(spec, sans)| spec.facts(sans))
            .collect();
        describe(n, &table, &facts, &live);
        group.bench_with_input(BenchmarkId::new("table", n), &n, |b, _| {
            per_decision(b, &facts, |f| table.decide(f, &live));
        });
        // The same decisions with a working set that stays in L1/L2: the first 16
        // flows. The gap to the line above is what cache misses cost.
        let warm = facts.get(..WARM_FLOWS).unwrap_or(&facts);
        group.bench_with_input(BenchmarkId::new("table-warm", n), &n, |b, _| {
            per_decision(b, warm, |f| table.decide(f, &live));
        });
        // Many rules, flows only on the few services one gateway fronts (its
        // listeners): the realistic cold case.
        let hot: Vec<FlowFacts<'_>> = sets
            .hot
            .iter()
            .zip(&hot_sans)
            .map(|(spec, sans)| spec.facts(sans))
            .collect();
        describe(n, &table, &hot, &live);
        group.bench_with_input(BenchmarkId::new("table-hot", n), &n, |b, _| {
            per_decision(b, &hot, |f| table.decide(f, &live));
        });
        if n == 1_000 {
            group.bench_with_input(BenchmarkId::new("reference", n), &n, |b, _| {
                per_decision(b, &facts, |f| reference::evaluate(&policy, f, &live));
            });
        }
    }
    group.finish();
}

fn bench_build_and_load(c: &mut Criterion) {
    let mut group = c.benchmark_group("table");
    group.sample_size(10);
    for n in [1_000, 100_000] {
        let policy = policy(n, SEED);
        let table = compile(&policy);
        let bytes = table.encode();
        println!("encoded table at {n} rules: {} bytes", bytes.len());
        group.bench_with_input(BenchmarkId::new("compile", n), &policy, |b, p| {
            b.iter_with_large_drop(|| compile(black_box(p)));
        });
        group.bench_with_input(BenchmarkId::new("decode", n), &bytes, |b, bytes| {
            b.iter_with_large_drop(|| or_exit(DecisionTable::decode(black_box(bytes)), "decode"));
        });
        if n == 100_000 {
            group.bench_with_input(BenchmarkId::new("encode", n), &table, |b, t| {
                b.iter_with_large_drop(|| black_box(t).encode());
            });
        }
    }
    group.finish();
}

/// Private, so the undocumented `pub fn` that `criterion_group!` generates is not exported.
mod groups {
    use super::{bench_build_and_load, bench_decide};
    criterion::criterion_group!(benches, bench_decide, bench_build_and_load);
}

criterion_main!(groups::benches);
