//! Quick performance probe: compile, encode, decode and decide on generated policies
//! of realistic shape. The criterion benches in `benches/` are the reference numbers;
//! this is for a fast look while working on the table.
//!
//! `cargo run --release -p zgate-table --example perf [RULES...]`
//!
//! Two flow mixes: `spread` draws the service uniformly from all of them (the table's
//! whole footprint is in play, so this mostly measures cache misses), `hot` draws from
//! 16 services (the table's hot part stays in cache, as on a gateway whose traffic is
//! dominated by a few services).

#![expect(
    clippy::indexing_slicing,
    reason = "a measuring tool over fixed-size arrays it built itself"
)]
#![expect(
    clippy::disallowed_methods,
    reason = "a measuring tool times the table from outside; the crate itself reads no clock"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use zgate_policy::model::{
    Action, Cidr, MinuteRange, Policy, Principal, Rule, Schedule, ServiceSelector, SpiffeId,
    Weekdays,
};
use zgate_table::{DecisionTable, FlowFacts, LiveFacts, PeerIdentity};

/// Deterministic xorshift, so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn spiffe(team: u64, app: u64) -> SpiffeId {
    SpiffeId {
        trust_domain: "corp.example".into(),
        segments: vec![
            "ns".into(),
            format!("team{team}"),
            "sa".into(),
            format!("app{app}"),
        ],
    }
}

/// ~N rules over ~N/50 services (capped at 2,000), groups of 5-20 SPIFFE IDs, team
/// prefix wildcards, 1-3 CIDRs per rule, some SNI/ALPN/schedules, and five `*` rules.
fn generate(n: usize, rng: &mut Rng) -> Policy {
    let services = (n / 50).clamp(10, 2000) as u64;
    let mut rules = Vec::with_capacity(n);
    for i in 0..n {
        let action = if rng.below(10) == 0 {
            Action::Deny
        } else {
            Action::Allow
        };
        let svc = if i % (n / 5).max(1) == 7 {
            ServiceSelector::Any
        } else {
            ServiceSelector::Named(vec![format!("svc{}", rng.below(services))])
        };
        let mut r = Rule::new(format!("rule-{i}"), action, svc);
        let team = rng.below(200);
        r.principals = match rng.below(10) {
            0 => None,
            1..=3 => Some(vec![Principal::SpiffeUnder(SpiffeId {
                trust_domain: "corp.example".into(),
                segments: vec!["ns".into(), format!("team{team}")],
            })]),
            _ => Some(
                (0..5 + rng.below(16))
                    .map(|_| Principal::SpiffeExact(spiffe(team, rng.below(50))))
                    .collect(),
            ),
        };
        if rng.below(4) != 0 {
            r.sources = Some(
                (0..1 + rng.below(3))
                    .map(|_| {
                        let len = [8u8, 16, 20, 24, 24, 28, 32][rng.below(7) as usize];
                        let raw = (10u32 << 24) | (rng.next() as u32 & 0x00ff_ffff);
                        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                        Cidr {
                            addr: IpAddr::V4(Ipv4Addr::from(raw & mask)),
                            prefix_len: len,
                        }
                    })
                    .collect(),
            );
        }
        if rng.below(10) == 0 {
            r.sni = Some(vec![format!("*.svc{}.corp.example", rng.below(services))]);
        }
        if rng.below(20) == 0 {
            r.alpn = Some(vec!["h2".into()]);
        }
        if action == Action::Allow && rng.below(50) == 0 {
            r.schedule = Some(Schedule {
                days: Weekdays(0b001_1111),
                ranges: vec![MinuteRange {
                    start_minute: 7 * 60,
                    end_minute: 19 * 60,
                }],
                time_zone: ["Europe/London", "America/New_York", "Asia/Tokyo"]
                    [rng.below(3) as usize]
                    .into(),
            });
        }
        if action == Action::Allow && rng.below(20) == 0 {
            r.max_session_secs = Some(3600);
        }
        rules.push(r);
    }
    Policy {
        groups: Vec::new(),
        services: Vec::new(),
        rules,
        source_hash: [0; 32],
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 100_000]
    } else {
        sizes
    };
    for n in sizes {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let policy = generate(n, &mut rng);
        let services = (n / 50).clamp(10, 2000) as u64;

        let t0 = Instant::now();
        let table = match DecisionTable::compile(&policy, 1) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("compile failed: {e}");
                return;
            }
        };
        let compile = t0.elapsed();
        let t0 = Instant::now();
        let bytes = table.encode();
        let encode = t0.elapsed();
        let t0 = Instant::now();
        let decoded = DecisionTable::decode(&bytes);
        let decode = t0.elapsed();
        if decoded.is_err() {
            eprintln!("decode failed: {decoded:?}");
            return;
        }

        for (mix, hot) in [("spread", services), ("hot", 16)] {
            // Flows: identities drawn from the same space as the rules.
            let ids: Vec<String> = (0..1024)
                .map(|_| spiffe(rng.below(200), rng.below(50)).to_string())
                .collect();
            let svcs: Vec<String> = (0..1024)
                .map(|_| format!("svc{}", rng.below(hot)))
                .collect();
            let srcs: Vec<IpAddr> = (0..1024)
                .map(|_| {
                    IpAddr::V4(Ipv4Addr::from(
                        (10u32 << 24) | (rng.next() as u32 & 0xff_ffff),
                    ))
                })
                .collect();
            let live = LiveFacts::default();
            let rounds: usize = std::env::var("PERF_ROUNDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(200);
            let mut samples = Vec::with_capacity(rounds);
            let mut allows = 0usize;
            for round in 0..rounds {
                let t0 = Instant::now();
                for k in 0..1024 {
                    let f = FlowFacts {
                        identity: Some(PeerIdentity {
                            spiffe_id: Some(&ids[k]),
                            ..PeerIdentity::default()
                        }),
                        ..FlowFacts::plain(&svcs[k], srcs[(k + round) % 1024], 1_780_000_000)
                    };
                    let d = table.decide(black_box(&f), &live);
                    allows += usize::from(d.is_allow());
                }
                samples.push(t0.elapsed().as_nanos() as f64 / 1024.0);
            }
            samples.sort_by(f64::total_cmp);
            println!(
                "rules {n:>7}  services {services:>5}  compile {:>7.1} ms  encode {:>5.1} ms  decode {:>6.1} ms  \
                 bytes {:>9}  heap {:>9}  {mix:>6}: decide min {:>5.1} ns  median {:>5.1} ns  allow {:.0}%",
                compile.as_secs_f64() * 1e3,
                encode.as_secs_f64() * 1e3,
                decode.as_secs_f64() * 1e3,
                bytes.len(),
                table.heap_bytes(),
                samples[0],
                samples[samples.len() / 2],
                allows as f64 * 100.0 / (rounds as f64 * 1024.0),
            );
        }
    }
}
