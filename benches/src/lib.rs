//! Deterministic generators of realistic policies and flows for zgate's benchmarks.
//!
//! A policy of `n` rules looks like one a mid-size organisation would write: about
//! `n / 50` services, teams whose workloads are `spiffe://corp.example/ns/<team>/sa/<svc>`,
//! rules naming exact IDs, whole-team wildcards and DNS SANs, mostly narrow IPv4 source
//! networks (/16 to /28) with some IPv6, office-hours schedules, device posture and risk
//! ceilings on a fraction of allow rules, deny rules for quarantined teams and bad
//! networks, and a few `*`-service deny rules. [`flows`] then draws flows aimed at rules
//! of that policy (so most reach the end of a rule's conditions), plus strangers that
//! match nothing: a mix of allowed, denied and default-denied decisions.
//!
//! Everything comes from a seeded xorshift generator: the same `(n, seed)` gives the
//! same policy on every machine, so runs compare. Nothing here reads a clock, a file or
//! the environment. This crate is for benchmarks only; its output is not a policy
//! anyone should deploy.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zgate_policy::model::{
    Action, Cidr, MinuteRange, Policy, PostureRequirement, Principal, Rule, Schedule,
    ServiceSelector, SpiffeId, Weekdays,
};
use zgate_table::facts::{DevicePosture, FlowFacts, LiveFacts, PeerIdentity, UnixSeconds};

/// The decision instant of every generated flow: Tuesday 2026-03-03 15:00:00 UTC, inside
/// office hours in New York, London and Kolkata alike.
pub const NOW: UnixSeconds = 1_772_550_000;

/// The trust domain of every generated workload.
pub const TRUST_DOMAIN: &str = "corp.example";

/// How many device ids the live facts know about.
const DEVICES: u64 = 200;

/// A small, fast, seeded pseudo-random generator (xorshift64*). Not for security.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (zero is mapped to a fixed non-zero state).
    pub fn new(seed: u64) -> XorShift {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `true` with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A value in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// One element of `items` (`None` when empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        let i = usize::try_from(self.below(items.len() as u64)).ok()?;
        items.get(i)
    }
}

/// Shape of a generated organisation, derived from the rule count.
#[derive(Debug, Clone, Copy)]
struct Shape {
    services: u64,
    teams: u64,
    /// Service accounts per team.
    accounts: u64,
}

impl Shape {
    fn for_rules(n: usize) -> Shape {
        let n = n as u64;
        Shape {
            services: (n / 50).max(1),
            teams: (n / 25).clamp(2, 4_000),
            accounts: 8,
        }
    }
}

fn service_name(i: u64) -> String {
    const KINDS: &[&str] = &["redis", "pg", "kafka", "md", "api", "grpc"];
    let kind = KINDS
        .get(usize::try_from(i % KINDS.len() as u64).unwrap_or(0))
        .copied()
        .unwrap_or("svc");
    format!("{kind}-{i}")
}

fn team_name(i: u64) -> String {
    format!("team{i}")
}

fn workload(team: u64, account: u64) -> SpiffeId {
    SpiffeId {
        trust_domain: TRUST_DOMAIN.to_owned(),
        segments: vec![
            "ns".to_owned(),
            team_name(team),
            "sa".to_owned(),
            format!("svc{account}"),
        ],
    }
}

fn team_wildcard(team: u64) -> SpiffeId {
    SpiffeId {
        trust_domain: TRUST_DOMAIN.to_owned(),
        segments: vec!["ns".to_owned(), team_name(team)],
    }
}

/// A source network: mostly IPv4 /16 to /28 inside 10.0.0.0/8, some IPv6 /48 to /64.
fn cidr(rng: &mut XorShift) -> Cidr {
    if rng.chance(12) {
        let len = rng.between(48, 64) as u8;
        let raw = 0x2001_0db8_u128 << 96 | u128::from(rng.next_u64()) << 32;
        let mask = u128::MAX << (128 - u32::from(len));
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::from(raw & mask)),
            prefix_len: len,
        }
    } else {
        // Prefix lengths weighted toward /24, as in a typical internal address plan.
        let len = match rng.below(10) {
            0 => 16,
            1 => rng.between(17, 20),
            2..=3 => rng.between(21, 23),
            4..=7 => 24,
            _ => rng.between(25, 28),
        } as u8;
        let raw = 0x0a00_0000_u32 | (rng.next_u64() as u32 & 0x00ff_ffff);
        let mask = u32::MAX << (32 - u32::from(len));
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::from(raw & mask)),
            prefix_len: len,
        }
    }
}

fn office_hours(rng: &mut XorShift) -> Schedule {
    const ZONES: &[&str] = &["America/New_York", "Europe/London", "Asia/Kolkata", "UTC"];
    let zone = rng.pick(ZONES).copied().unwrap_or("UTC");
    let (start, end) = if zone == "Asia/Kolkata" {
        (9 * 60, 21 * 60)
    } else {
        (7 * 60, 19 * 60)
    };
    Schedule {
        days: Weekdays(0b001_1111),
        ranges: vec![MinuteRange {
            start_minute: start,
            end_minute: end,
        }],
        time_zone: zone.to_owned(),
    }
}

fn principals(rng: &mut XorShift, shape: Shape) -> Vec<Principal> {
    let count = rng.between(1, 6);
    let mut out = Vec::new();
    for _ in 0..count {
        let team = rng.below(shape.teams);
        let p = match rng.below(10) {
            0..=3 => Principal::SpiffeExact(workload(team, rng.below(shape.accounts))),
            4..=7 => Principal::SpiffeUnder(team_wildcard(team)),
            8 => Principal::DnsSan(format!(
                "host{}.{}.corp.example",
                rng.below(50),
                team_name(team)
            )),
            _ => Principal::CommonName(format!("user{}", rng.below(1_000))),
        };
        out.push(p);
    }
    out.sort();
    out.dedup();
    out
}

/// A realistic policy of exactly `n` rules, reproducible from `seed`.
pub fn policy(n: usize, seed: u64) -> Policy {
    let shape = Shape::for_rules(n);
    let mut rng = XorShift::new(seed);
    // A few `*`-service deny rules spread through the policy: a quarantined team, a
    // blocked network. One per `stride` rules, in the middle of each stride.
    let stride = (n / (n / 2_000).clamp(1, 20)).max(1);
    let mut rules = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("rule-{i:06}");
        if i % stride == stride / 2 {
            let mut r = Rule::new(id, Action::Deny, ServiceSelector::Any);
            if rng.chance(50) {
                r.principals = Some(vec![Principal::SpiffeUnder(team_wildcard(
                    rng.below(shape.teams),
                ))]);
            } else {
                r.sources = Some(vec![cidr(&mut rng)]);
            }
            rules.push(r);
            continue;
        }
        let service_count = if rng.chance(85) { 1 } else { rng.between(2, 4) };
        let mut names: Vec<String> = (0..service_count)
            .map(|_| service_name(rng.below(shape.services)))
            .collect();
        names.sort();
        names.dedup();
        let action = if rng.chance(10) {
            Action::Deny
        } else {
            Action::Allow
        };
        let mut r = Rule::new(id, action, ServiceSelector::Named(names));
        if rng.chance(90) {
            r.principals = Some(principals(&mut rng, shape));
        }
        // A zero-trust policy names who or where: a rule without principals always
        // restricts sources.
        if r.principals.is_none() || rng.chance(60) {
            r.sources = Some((0..rng.between(1, 4)).map(|_| cidr(&mut rng)).collect());
        }
        if rng.chance(10) {
            r.sni = Some(vec![if rng.chance(50) {
                format!("*.svc{}.corp.example", rng.below(shape.services))
            } else {
                format!("db{}.corp.example", rng.below(shape.services))
            }]);
        }
        if rng.chance(8) {
            r.alpn = Some(vec!["h2".to_owned(), "postgresql".to_owned()]);
        }
        if rng.chance(5) {
            r.schedule = Some(office_hours(&mut rng));
        }
        if action == Action::Allow {
            if rng.chance(10) {
                r.posture = Some(PostureRequirement {
                    managed: true,
                    compliant: rng.chance(70),
                    edr_running: rng.chance(50),
                    min_os_patch: rng.chance(50).then_some(20_260_101),
                });
            }
            if rng.chance(10) {
                r.max_risk = Some(rng.between(30, 80) as u8);
            }
            if rng.chance(5) {
                r.max_cert_age_secs = Some(86_400 * rng.between(1, 90));
            }
            if rng.chance(20) {
                r.max_session_secs = Some(3_600 * rng.between(1, 12));
            }
            r.requires_grant = rng.chance(2);
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

/// One generated flow, owning its strings; [`FlowSpec::facts`] lends a [`FlowFacts`].
#[derive(Debug, Clone)]
pub struct FlowSpec {
    /// Listener name.
    pub service: String,
    /// Source address.
    pub source: IpAddr,
    /// SNI sent, if any.
    pub sni: Option<String>,
    /// ALPN negotiated, if any.
    pub alpn: Option<String>,
    /// SPIFFE ID presented, if any (`None` together with no DNS SANs and no common name
    /// means an anonymous flow).
    pub spiffe_id: Option<String>,
    /// DNS SANs presented.
    pub dns_sans: Vec<String>,
    /// Subject common name presented.
    pub common_name: Option<String>,
    /// Certificate fingerprint.
    pub fingerprint: [u8; 32],
    /// Device id.
    pub device_id: Option<String>,
    /// Certificate age.
    pub cert_age_secs: Option<u64>,
}

impl FlowSpec {
    /// The DNS SANs as borrowed strings, for [`FlowSpec::facts`].
    pub fn san_refs(&self) -> Vec<&str> {
        self.dns_sans.iter().map(String::as_str).collect()
    }

    /// Borrow this flow as decision input; `sans` is [`FlowSpec::san_refs`] of `self`.
    pub fn facts<'a>(&'a self, sans: &'a [&'a str]) -> FlowFacts<'a> {
        let anonymous =
            self.spiffe_id.is_none() && self.dns_sans.is_empty() && self.common_name.is_none();
        FlowFacts {
            service: &self.service,
            source: self.source,
            sni: self.sni.as_deref(),
            alpn: self.alpn.as_deref(),
            identity: (!anonymous).then_some(PeerIdentity {
                spiffe_id: self.spiffe_id.as_deref(),
                dns_sans: sans,
                common_name: self.common_name.as_deref(),
                fingerprint: Some(&self.fingerprint),
            }),
            device_id: self.device_id.as_deref(),
            cert_age_secs: self.cert_age_secs,
            now: NOW,
        }
    }
}

/// An address inside `cidr` with random host bits.
fn inside(rng: &mut XorShift, cidr: &Cidr) -> IpAddr {
    match cidr.addr {
        IpAddr::V4(net) => {
            let host = u32::MAX
                .checked_shr(u32::from(cidr.prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(
                u32::from(net) | (rng.next_u64() as u32 & host),
            ))
        }
        IpAddr::V6(net) => {
            let host = u128::MAX
                .checked_shr(u32::from(cidr.prefix_len))
                .unwrap_or(0);
            let bits = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
            IpAddr::V6(Ipv6Addr::from(u128::from(net) | (bits & host)))
        }
    }
}

/// A flow built to satisfy `rule` (it may still be denied by another rule).
fn aimed_at(rng: &mut XorShift, rule: &Rule, shape: Shape) -> FlowSpec {
    let service = match &rule.services {
        ServiceSelector::Named(names) => rng.pick(names).cloned(),
        ServiceSelector::Any => None,
    }
    .unwrap_or_else(|| service_name(rng.below(shape.services)));
    let mut flow = stranger(rng, shape);
    flow.service = service;
    flow.source = match rule.sources.as_deref().and_then(|s| rng.pick(s)) {
        Some(c) => inside(rng, c),
        None => flow.source,
    };
    if let Some(p) = rule.principals.as_deref().and_then(|p| rng.pick(p)) {
        match p {
            Principal::SpiffeExact(id) => flow.spiffe_id = Some(id.to_string()),
            Principal::SpiffeUnder(id) => {
                flow.spiffe_id = Some(format!("{id}/sa/svc{}", rng.below(shape.accounts)));
            }
            Principal::DnsSan(name) => flow.dns_sans = vec![name.clone()],
            Principal::CommonName(cn) => flow.common_name = Some(cn.clone()),
            Principal::DnsSanIn { trust_domain, name } => {
                flow.spiffe_id = Some(format!("spiffe://{trust_domain}/sa/svc"));
                flow.dns_sans = vec![name.clone()];
            }
            Principal::CommonNameIn { trust_domain, name } => {
                flow.spiffe_id = Some(format!("spiffe://{trust_domain}/sa/svc"));
                flow.common_name = Some(name.clone());
            }
            Principal::Fingerprint(fp) => flow.fingerprint = *fp,
            Principal::Any => {}
        }
    }
    if let Some(name) = rule.sni.as_deref().and_then(|s| rng.pick(s)) {
        flow.sni = Some(match name.strip_prefix("*.") {
            Some(suffix) => format!("api.{suffix}"),
            None => name.clone(),
        });
    }
    if let Some(alpn) = rule.alpn.as_deref().and_then(|a| rng.pick(a)) {
        flow.alpn = Some(alpn.clone());
    }
    flow
}

/// A flow from somewhere no rule names on purpose: an unknown workload from outside
/// the 10/8 plan. Usually default-denied.
fn stranger(rng: &mut XorShift, shape: Shape) -> FlowSpec {
    let team = rng.below(shape.teams) + shape.teams; // a team no rule names
    FlowSpec {
        service: service_name(rng.below(shape.services)),
        source: IpAddr::V4(Ipv4Addr::from(
            0xc633_6400_u32 | (rng.next_u64() as u32 & 0xff),
        )), // 198.51.100.0/24
        sni: None,
        alpn: Some("h2".to_owned()),
        spiffe_id: rng
            .chance(90)
            .then(|| workload(team, rng.below(shape.accounts)).to_string()),
        dns_sans: Vec::new(),
        common_name: None,
        fingerprint: {
            let mut fp = [0u8; 32];
            for chunk in fp.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
            }
            fp
        },
        device_id: rng
            .chance(80)
            .then(|| format!("dev-{}", rng.below(DEVICES))),
        cert_age_secs: Some(86_400 * rng.between(0, 30)),
    }
}

/// `count` flows for `policy`: about 70 % aimed at an allow rule, 15 % at a deny rule,
/// 15 % strangers. Reproducible from `seed`.
pub fn flows(policy: &Policy, count: usize, seed: u64) -> Vec<FlowSpec> {
    let shape = Shape::for_rules(policy.rules.len());
    let mut rng = XorShift::new(seed ^ 0x5eed_f10f);
    let allows: Vec<&Rule> = policy
        .rules
        .iter()
        .filter(|r| r.action == Action::Allow)
        .collect();
    let denies: Vec<&Rule> = policy
        .rules
        .iter()
        .filter(|r| r.action == Action::Deny)
        .collect();
    (0..count)
        .map(|_| {
            let roll = rng.below(100);
            let target = if roll < 70 {
                rng.pick(&allows).copied()
            } else if roll < 85 {
                rng.pick(&denies).copied()
            } else {
                None
            };
            match target {
                Some(rule) => aimed_at(&mut rng, rule, shape),
                None => stranger(&mut rng, shape),
            }
        })
        .collect()
}

/// The seed of every decide benchmark (and of `examples/decide_count.rs`).
pub const BENCH_SEED: u64 = 0x2a6a_7e00;
/// Flows in the `table` (spread) variant.
pub const SPREAD_FLOWS: usize = 4_096;
/// Flows in the warm-cache variant: the first of the spread ones.
pub const WARM_FLOWS: usize = 16;
/// Services a gateway fronts in the `table-hot` variant (the first the table names),
/// and its flows.
pub const HOT_SERVICES: usize = 8;
/// Flows in the `table-hot` variant.
pub const HOT_FLOWS: usize = 1_024;

/// The three flow sets of the decide benchmarks.
#[derive(Debug, Clone)]
pub struct BenchFlows {
    /// `SPREAD_FLOWS` flows over every service.
    pub spread: Vec<FlowSpec>,
    /// The first `WARM_FLOWS` of `spread`.
    pub warm: Vec<FlowSpec>,
    /// `HOT_FLOWS` flows on the first `HOT_SERVICES` of `service_names` only.
    pub hot: Vec<FlowSpec>,
}

/// The decide benchmarks' flows for `policy`, whose table names its services in the
/// order `service_names` (`DecisionTable::service_names`).
pub fn bench_flows(policy: &Policy, service_names: &[&str]) -> BenchFlows {
    let spread = flows(policy, SPREAD_FLOWS, BENCH_SEED);
    let warm = spread.iter().take(WARM_FLOWS).cloned().collect();
    let hot_names = service_names.get(..HOT_SERVICES).unwrap_or(service_names);
    // Drawn from a larger flow set, keeping those on one of the hot services.
    let draw = (SPREAD_FLOWS * policy.rules.len() / 25).clamp(SPREAD_FLOWS, 300_000);
    let hot = flows(policy, draw, BENCH_SEED ^ 0x407)
        .into_iter()
        .filter(|f| hot_names.contains(&f.service.as_str()))
        .take(HOT_FLOWS)
        .collect();
    BenchFlows { spread, warm, hot }
}

/// Live facts for generated flows: posture for every device (most healthy), risk for
/// some workloads, a few revocations and grants.
pub fn live(policy: &Policy, seed: u64) -> LiveFacts {
    let shape = Shape::for_rules(policy.rules.len());
    let mut rng = XorShift::new(seed ^ 0x11fe);
    let mut live = LiveFacts {
        version: 1,
        ..LiveFacts::default()
    };
    for d in 0..DEVICES {
        live.posture.insert(
            format!("dev-{d}"),
            DevicePosture {
                managed: rng.chance(95),
                compliant: rng.chance(90),
                edr_running: rng.chance(90),
                compromised: rng.chance(1),
                os_patch: if rng.chance(80) {
                    20_260_201
                } else {
                    20_251_101
                },
            },
        );
        if rng.chance(20) {
            live.risk_by_device
                .insert(format!("dev-{d}"), rng.below(101) as u8);
        }
    }
    for team in 0..shape.teams {
        for account in 0..shape.accounts {
            let id = workload(team, account).to_string();
            if rng.chance(10) {
                live.risk_by_id.insert(id.clone(), rng.below(101) as u8);
            }
            if rng.chance(1) {
                live.revoked_ids.insert(id.clone());
            }
            if rng.chance(2) {
                live.grants
                    .entry(service_name(rng.below(shape.services)))
                    .or_default()
                    .insert(id, NOW + 3_600);
            }
        }
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use zgate_table::facts::{DecidedBy, Reason};
    use zgate_table::reference;

    #[test]
    fn same_seed_same_policy_and_exact_size() {
        assert_eq!(policy(1, 7).rules.len(), 1);
        for n in [10, 1_000] {
            let a = policy(n, 7);
            assert_eq!(a.rules.len(), n);
            assert_eq!(a, policy(n, 7));
            assert_ne!(a, policy(n, 8));
        }
    }

    #[test]
    fn shape_is_realistic_at_1k() {
        let p = policy(1_000, 1);
        let any = p
            .rules
            .iter()
            .filter(|r| r.services == ServiceSelector::Any)
            .count();
        assert!((1..=20).contains(&any), "{any} `*` rules");
        assert!(
            any == p
                .rules
                .iter()
                .filter(|r| r.services == ServiceSelector::Any && r.action == Action::Deny)
                .count()
        );
        let denies = p.rules.iter().filter(|r| r.action == Action::Deny).count();
        assert!((50..200).contains(&denies), "{denies} deny rules");
        let v6 = p
            .rules
            .iter()
            .flat_map(|r| r.sources.iter().flatten())
            .filter(|c| c.addr.is_ipv6())
            .count();
        assert!(v6 > 10, "{v6} v6 networks");
        assert!(p.rules.iter().any(|r| r.schedule.is_some()));
        assert!(p.rules.iter().any(|r| r.posture.is_some()));
    }

    /// The flows must produce a real mix, or the benchmark measures one path only.
    #[test]
    fn flows_mix_allowed_denied_and_default_denied() {
        for n in [10, 1_000] {
            let p = policy(n, 3);
            let live = live(&p, 3);
            let specs = flows(&p, 500, 3);
            let (mut allow, mut deny, mut default) = (0, 0, 0);
            for spec in &specs {
                let sans = spec.san_refs();
                let d = reference::evaluate(&p, &spec.facts(&sans), &live);
                match (d.decided_by, d.reason) {
                    (DecidedBy::Rule(_), Reason::AllowedByRule) => allow += 1,
                    (DecidedBy::DefaultDeny, _) => default += 1,
                    _ => deny += 1,
                }
            }
            eprintln!("{n} rules: {allow} allowed, {deny} denied, {default} default-denied");
            assert!(allow >= 100, "{n} rules: only {allow} allowed");
            assert!(
                deny >= 25,
                "{n} rules: only {deny} denied by rule or revocation"
            );
            assert!(default >= 50, "{n} rules: only {default} default-denied");
        }
    }
}
