//! Instruction counts for `DecisionTable::decide`, for `valgrind --tool=callgrind`.
//!
//! Builds the same table and flow sets as `benches/decide.rs` (seed, sizes, mixes),
//! then decides `COUNT` flows, cycling, inside one `#[inline(never)]` function, so
//! callgrind can count that function alone:
//!
//! ```sh
//! cargo build --profile bench -p zgate-benches --example decide_count
//! valgrind --tool=callgrind --toggle-collect='*decide_count*run*' \
//!     target/release/examples/decide_count 1000 hot 20000
//! ```
//!
//! Instructions per decision = the collected total / `COUNT` (the loop itself adds
//! about ten). Without valgrind it prints a rough wall-clock time per decision.

use std::hint::black_box;
use std::time::Instant;

use zgate_benches::{bench_flows, live, policy, BENCH_SEED};
use zgate_table::facts::{Decision, FlowFacts, LiveFacts};
use zgate_table::DecisionTable;

#[inline(never)]
fn run(table: &DecisionTable, live: &LiveFacts, flows: &[FlowFacts<'_>], count: usize) -> u64 {
    // Through a function pointer, as the dataplane and criterion call it: inlined
    // into this loop, `decide` would hoist the table's and the live facts' loads out
    // of it and count (and time) less than one real call.
    let decide: fn(&DecisionTable, &FlowFacts<'_>, &LiveFacts) -> Decision =
        black_box(DecisionTable::decide);
    let mut allowed = 0u64;
    for f in flows.iter().cycle().take(count) {
        let d = black_box(decide(table, black_box(f), live));
        allowed += u64::from(d.is_allow());
    }
    allowed
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let mix = args.get(1).map_or("warm", String::as_str);
    let count: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let policy = policy(n, BENCH_SEED);
    let table = match DecisionTable::compile(&policy, 1) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("compile failed: {e}");
            std::process::exit(1);
        }
    };
    let live = live(&policy, BENCH_SEED);
    let names: Vec<&str> = table.service_names().collect();
    let sets = bench_flows(&policy, &names);
    let specs = match mix {
        "spread" => &sets.spread,
        "hot" => &sets.hot,
        _ => &sets.warm,
    };
    let sans: Vec<Vec<&str>> = specs.iter().map(|s| s.san_refs()).collect();
    let facts: Vec<FlowFacts<'_>> = specs.iter().zip(&sans).map(|(s, a)| s.facts(a)).collect();
    let t0 = Instant::now();
    let allowed = run(&table, &live, &facts, count);
    let ns = t0.elapsed().as_nanos() as f64 / count.max(1) as f64;
    println!(
        "{n} rules, {mix} ({} flows): {count} decisions, {allowed} allowed, {ns:.1} ns each, \
         table {} heap bytes ({:.0} B/rule)",
        facts.len(),
        table.heap_bytes(),
        table.heap_bytes() as f64 / n as f64
    );
}
