//! Differential test: the compiled [`DecisionTable`] against the reference evaluator.
//!
//! Random policies (1..60 rules) and random flows with live facts are drawn from one
//! small shared vocabulary (services, trust domains, path segments, DNS names, CIDRs
//! around a few base addresses, SNI names and wildcards, ALPN ids, devices, instants
//! near DST changes and range edges), so most conditions hit often and both outcomes
//! of each are exercised. For every flow the whole `Decision` of
//! `DecisionTable::decide` must equal `reference::evaluate`, before and after an
//! encode/decode round trip.
//!
//! Generated policies stay inside what the validated model promises: allow-only fields
//! (posture, risk, certificate age, session limit, grants) only on allow rules; schedule
//! ranges sorted, non-overlapping, non-empty; CIDR host bits zero; principals never
//! `Some(vec![])`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use zgate_policy::model::{
    Action, Cidr, MinuteRange, Policy, PostureRequirement, Principal, Rule, Schedule,
    ServiceSelector, SpiffeId, Weekdays,
};
use zgate_table::facts::{
    DecidedBy, Decision, DevicePosture, FlowFacts, LiveFacts, PeerIdentity, Reason, Verdict,
};
use zgate_table::reference;
use zgate_table::DecisionTable;

// ---------------------------------------------------------------- vocabulary

const SERVICES: &[&str] = &["redis", "pg", "kafka", "md"];
/// Flows also go to a service no rule may name.
const FLOW_SERVICES: &[&str] = &["redis", "pg", "kafka", "md", "unknown-svc"];

/// SPIFFE IDs flows present; rule principals are prefixes and neighbours of these.
const FLOW_IDS: &[&str] = &[
    "spiffe://corp.example/ns/trading/sa/desk1",
    "spiffe://corp.example/ns/trading/sa/desk2",
    "spiffe://corp.example/ns/trading",
    "spiffe://corp.example/ns/tradingx/sa",
    "spiffe://corp.example/ns/risk/sa/web",
    "spiffe://corp.example/ns",
    "spiffe://corp.example",
    "spiffe://partner.example/ns/trading/sa/desk1",
    "spiffe://partner.example/web",
    "spiffe://corp.examplex/ns/trading",
];
const TRUST_DOMAINS: &[&str] = &["corp.example", "partner.example", "corp.examplex"];
const SEGMENTS: &[&str] = &["ns", "trading", "risk", "sa", "desk1", "web", "tradingx"];
const DNS_NAMES: &[&str] = &[
    "db.corp.example",
    "cache.corp.example",
    "a.cache.corp.example",
    "x.example",
];
const COMMON_NAMES: &[&str] = &["alice", "bob", "svc"];
const FINGERPRINTS: &[[u8; 32]] = &[[0x11; 32], [0x22; 32], [0x33; 32]];
const RULE_SNI: &[&str] = &[
    "db.corp.example",
    "*.corp.example",
    "*.cache.corp.example",
    "x.example",
    "*.example",
];
const FLOW_SNI: &[&str] = &[
    "db.corp.example",
    "a.cache.corp.example",
    "a.b.cache.corp.example",
    "cache.corp.example",
    "x.example",
    "corp.example",
    ".corp.example",
    "*.corp.example",
    "example",
];
const ALPN: &[&str] = &["h2", "http/1.1", "postgresql", "redis"];
const ZONES: &[&str] = &["UTC", "America/New_York", "Europe/London", "Asia/Kolkata"];
const DEVICES: &[&str] = &["dev1", "dev2", "dev3"];
const PATCHES: &[u32] = &[20_250_101, 20_260_101, 20_261_001, 20_261_002];
const RISKS: &[u8] = &[0, 10, 40, 41, 70, 100];
const AGES: &[u64] = &[0, 59, 60, 61, 3600, 3601, 86_400];
const BASES_V4: &[u32] = &[
    0x0a00_0000, // 10.0.0.0
    0x0a01_0203, // 10.1.2.3
    0xc000_0209, // 192.0.2.9
    0xac10_0504, // 172.16.5.4
    0x0000_0000,
    0xffff_ffff,
];
const BASES_V6: &[u128] = &[
    0x2001_0db8_0000_0000_0000_0000_0000_0000,
    0x2001_0db8_0001_0000_0000_0000_0000_0005,
    0x0000_0000_0000_0000_0000_ffff_0a01_0203, // ::ffff:10.1.2.3
    0xfe80_0000_0000_0000_0000_0000_0000_0001,
    1,
];
/// Instants (UTC seconds) at or near interesting local times: DST changes in New York
/// and London in 2026, a Kolkata midnight, a week boundary, an ordinary Tuesday.
const INSTANTS: &[i64] = &[
    1_772_953_200, // 2026-03-08 07:00Z: New York springs forward (02:00 EST -> 03:00 EDT)
    1_793_512_800, // 2026-11-01 06:00Z: New York falls back (02:00 EDT -> 01:00 EST)
    1_774_746_000, // 2026-03-29 01:00Z: London springs forward
    1_792_890_000, // 2026-10-25 01:00Z: London falls back
    1_772_562_600, // 2026-03-03 18:30Z: Kolkata midnight, Tuesday -> Wednesday
    1_773_014_400, // 2026-03-09 00:00Z: Monday, week boundary in UTC
    1_772_541_296, // 2026-03-03 12:34:56Z: an ordinary Tuesday
];
/// Offsets added to an instant so that minute, hour and day edges all get crossed.
const NUDGES: &[i64] = &[
    0, 1, -1, 59, 60, -60, 61, 1799, 1800, 3599, 3600, -3600, -3601, 7200, 19_800, 86_399, 86_400,
    -86_400,
];

// ---------------------------------------------------------------- policy generation

fn spiffe(s: &str) -> SpiffeId {
    let rest = s.strip_prefix("spiffe://").unwrap_or(s);
    let mut parts = rest.split('/');
    SpiffeId {
        trust_domain: parts.next().unwrap_or_default().to_owned(),
        segments: parts.map(str::to_owned).collect(),
    }
}

/// A SPIFFE ID for a rule: a prefix of a flow ID (often), or random vocabulary.
fn rule_spiffe() -> impl Strategy<Value = SpiffeId> {
    prop_oneof![
        3 => (select(FLOW_IDS), 0usize..5).prop_map(|(id, keep)| {
            let mut s = spiffe(id);
            s.segments.truncate(keep);
            s
        }),
        1 => (select(TRUST_DOMAINS), prop::collection::vec(select(SEGMENTS), 0..4)).prop_map(
            |(td, segs)| SpiffeId {
                trust_domain: td.to_owned(),
                segments: segs.into_iter().map(str::to_owned).collect(),
            }
        ),
    ]
}

fn principal() -> impl Strategy<Value = Principal> {
    prop_oneof![
        1 => Just(Principal::Any),
        4 => rule_spiffe().prop_map(Principal::SpiffeExact),
        4 => rule_spiffe().prop_map(Principal::SpiffeUnder),
        2 => select(DNS_NAMES).prop_map(|n| Principal::DnsSan(n.to_owned())),
        2 => select(COMMON_NAMES).prop_map(|n| Principal::CommonName(n.to_owned())),
        2 => (select(TRUST_DOMAINS), select(DNS_NAMES)).prop_map(|(td, n)| Principal::DnsSanIn {
            trust_domain: td.to_owned(),
            name: n.to_owned(),
        }),
        2 => (select(TRUST_DOMAINS), select(COMMON_NAMES)).prop_map(|(td, n)| {
            Principal::CommonNameIn {
                trust_domain: td.to_owned(),
                name: n.to_owned(),
            }
        }),
        2 => select(FINGERPRINTS).prop_map(Principal::Fingerprint),
    ]
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        3 => (select(BASES_V4), 0u8..=32).prop_map(|(base, len)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Cidr { addr: IpAddr::V4(Ipv4Addr::from(base & mask)), prefix_len: len }
        }),
        2 => (select(BASES_V6), 0u8..=128).prop_map(|(base, len)| {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Cidr { addr: IpAddr::V6(Ipv6Addr::from(base & mask)), prefix_len: len }
        }),
        // Host routes and the whole family, explicitly.
        1 => select(BASES_V4).prop_map(|b| Cidr { addr: IpAddr::V4(Ipv4Addr::from(b)), prefix_len: 32 }),
        1 => select(BASES_V6).prop_map(|b| Cidr { addr: IpAddr::V6(Ipv6Addr::from(b)), prefix_len: 128 }),
        1 => prop_oneof![
            Just(Cidr { addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED), prefix_len: 0 }),
            Just(Cidr { addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED), prefix_len: 0 }),
        ],
    ]
}

/// Minutes where ranges start and end: DST hours, half hours, the day's edges.
const MINUTES: &[u16] = &[
    0, 1, 59, 60, 90, 119, 120, 121, 150, 180, 540, 1020, 1080, 1439, 1440,
];

fn schedule() -> impl Strategy<Value = Schedule> {
    let point = prop_oneof![3 => select(MINUTES), 1 => 0u16..=1440];
    (1u8..=127, prop::collection::vec(point, 2..7), select(ZONES)).prop_filter_map(
        "need at least one range",
        |(days, mut points, zone)| {
            points.sort_unstable();
            points.dedup();
            let ranges: Vec<MinuteRange> = points
                .chunks_exact(2)
                .filter_map(|pair| match pair {
                    [start_minute, end_minute] => Some(MinuteRange {
                        start_minute: *start_minute,
                        end_minute: *end_minute,
                    }),
                    _ => None,
                })
                .collect();
            (!ranges.is_empty()).then(|| Schedule {
                days: Weekdays(days),
                ranges,
                time_zone: zone.to_owned(),
            })
        },
    )
}

fn posture_req() -> impl Strategy<Value = PostureRequirement> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(select(PATCHES)),
    )
        .prop_map(
            |(managed, compliant, edr_running, min_os_patch)| PostureRequirement {
                managed,
                compliant,
                edr_running,
                min_os_patch,
            },
        )
}

fn services() -> impl Strategy<Value = ServiceSelector> {
    prop_oneof![
        1 => Just(ServiceSelector::Any),
        6 => prop::sample::subsequence(SERVICES, 1..=3)
            .prop_map(|s| ServiceSelector::Named(s.into_iter().map(str::to_owned).collect())),
    ]
}

/// `Some` with probability about 1/3.
fn sometimes<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.35, s)
}

fn strings(pool: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(pool, 1..=max)
        .prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

/// The generic part of a rule: what allow and deny rules share.
#[derive(Debug, Clone)]
struct Common {
    services: ServiceSelector,
    principals: Option<Vec<Principal>>,
    sources: Option<Vec<Cidr>>,
    sni: Option<Vec<String>>,
    alpn: Option<Vec<String>>,
    schedule: Option<Schedule>,
}

fn common() -> impl Strategy<Value = Common> {
    (
        services(),
        prop::option::weighted(0.5, prop::collection::vec(principal(), 1..4)),
        sometimes(prop::collection::vec(cidr(), 1..5)),
        sometimes(strings(RULE_SNI, 3)),
        prop::option::weighted(0.2, strings(ALPN, 2)),
        prop::option::weighted(0.25, schedule()),
    )
        .prop_map(|(services, mut principals, sources, sni, alpn, schedule)| {
            if let Some(p) = principals.as_mut() {
                p.sort();
                p.dedup();
            }
            Common {
                services,
                principals,
                sources,
                sni,
                alpn,
                schedule,
            }
        })
}

#[derive(Debug, Clone)]
struct AllowOnly {
    posture: Option<PostureRequirement>,
    max_risk: Option<u8>,
    max_cert_age_secs: Option<u64>,
    max_session_secs: Option<u64>,
    requires_grant: bool,
}

fn allow_only() -> impl Strategy<Value = AllowOnly> {
    (
        prop::option::weighted(0.2, posture_req()),
        prop::option::weighted(0.2, select(RISKS)),
        prop::option::weighted(0.2, select(&[60u64, 3600][..])),
        prop::option::weighted(0.3, select(&[60u64, 3600, 86_400][..])),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(posture, max_risk, max_cert_age_secs, max_session_secs, requires_grant)| AllowOnly {
                posture,
                max_risk,
                max_cert_age_secs,
                max_session_secs,
                requires_grant,
            },
        )
}

/// A rule; deny with probability `deny`.
fn rule(deny: f64) -> impl Strategy<Value = (bool, Common, AllowOnly)> {
    (prop::bool::weighted(deny), common(), allow_only())
}

fn build_policy(parts: Vec<(bool, Common, AllowOnly)>) -> Policy {
    let rules = parts
        .into_iter()
        .enumerate()
        .map(|(i, (is_deny, c, a))| {
            let action = if is_deny { Action::Deny } else { Action::Allow };
            let mut r = Rule::new(format!("r{i}"), action, c.services);
            r.principals = c.principals;
            r.sources = c.sources;
            r.sni = c.sni;
            r.alpn = c.alpn;
            r.schedule = c.schedule;
            if !is_deny {
                r.posture = a.posture;
                r.max_risk = a.max_risk;
                r.max_cert_age_secs = a.max_cert_age_secs;
                r.max_session_secs = a.max_session_secs;
                r.requires_grant = a.requires_grant;
            }
            r
        })
        .collect();
    Policy {
        groups: Vec::new(),
        services: Vec::new(),
        rules,
        source_hash: [7; 32],
    }
}

fn policy() -> impl Strategy<Value = Policy> {
    prop::collection::vec(rule(0.15), 1..60).prop_map(build_policy)
}

/// Policies large enough that a service's rules span several bitset words and chunks
/// (the table processes 512 rules at a time). Most rules are "dark": limited to a
/// network no generated flow comes from, so the first matching rule is often hundreds
/// of rules down and chunk edges get crossed. Denies are rare for the same reason.
fn large_policy() -> impl Strategy<Value = Policy> {
    let dark = Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)),
        prefix_len: 10,
    };
    prop::collection::vec((rule(0.05), prop::bool::weighted(0.97)), 500..1_400).prop_map(
        move |rules| {
            build_policy(
                rules
                    .into_iter()
                    .map(|((deny, mut c, a), is_dark)| {
                        if is_dark {
                            c.sources = Some(vec![dark]);
                        }
                        (deny, c, a)
                    })
                    .collect(),
            )
        },
    )
}

// ---------------------------------------------------------------- flow generation

/// An owned flow plus its live facts; [`FlowCase::facts`] lends a `FlowFacts`.
#[derive(Debug, Clone)]
struct FlowCase {
    service: &'static str,
    source: IpAddr,
    sni: Option<&'static str>,
    alpn: Option<&'static str>,
    identity: Option<Identity>,
    device_id: Option<&'static str>,
    cert_age_secs: Option<u64>,
    now: i64,
    live: LiveFacts,
}

#[derive(Debug, Clone)]
struct Identity {
    spiffe_id: Option<&'static str>,
    dns_sans: Vec<&'static str>,
    common_name: Option<&'static str>,
    fingerprint: Option<[u8; 32]>,
}

impl FlowCase {
    fn facts(&self) -> FlowFacts<'_> {
        FlowFacts {
            service: self.service,
            source: self.source,
            sni: self.sni,
            alpn: self.alpn,
            identity: self.identity.as_ref().map(|i| PeerIdentity {
                spiffe_id: i.spiffe_id,
                dns_sans: &i.dns_sans,
                common_name: i.common_name,
                fingerprint: i.fingerprint.as_ref(),
            }),
            device_id: self.device_id,
            cert_age_secs: self.cert_age_secs,
            now: self.now,
        }
    }
}

fn source() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => (select(BASES_V4), 0u32..=32, any::<u32>()).prop_map(|(b, bits, noise)| {
            let low = 1u32.checked_shl(bits).map_or(u32::MAX, |v| v.wrapping_sub(1));
            IpAddr::V4(Ipv4Addr::from(b ^ (noise & low)))
        }),
        2 => (select(BASES_V6), 0u32..=128, any::<u128>()).prop_map(|(b, bits, noise)| {
            let low = 1u128.checked_shl(bits).map_or(u128::MAX, |v| v.wrapping_sub(1));
            IpAddr::V6(Ipv6Addr::from(b ^ (noise & low)))
        }),
        1 => any::<IpAddr>(),
    ]
}

fn identity() -> impl Strategy<Value = Identity> {
    (
        prop::option::weighted(0.85, select(FLOW_IDS)),
        prop::sample::subsequence(DNS_NAMES, 0..=2),
        prop::option::weighted(0.5, select(COMMON_NAMES)),
        prop::option::weighted(0.6, select(FINGERPRINTS)),
    )
        .prop_map(|(spiffe_id, dns_sans, common_name, fingerprint)| Identity {
            spiffe_id,
            dns_sans,
            common_name,
            fingerprint,
        })
}

/// Local days whose midnights anchor range-edge instants: ordinary days and DST days.
const DAYS: &[(i16, i8, i8)] = &[
    (2026, 3, 3),
    (2026, 3, 8),
    (2026, 3, 29),
    (2026, 11, 1),
    (2026, 10, 25),
];

/// An instant a few seconds around a schedule edge minute, local midnight counted in
/// one of the zones (on a DST day the local minute is an hour off after the change,
/// which is more variety, not less).
fn near_range_edge() -> impl Strategy<Value = i64> {
    (
        select(ZONES),
        select(DAYS),
        select(MINUTES),
        select(&[-61i64, -1, 0, 1, 59][..]),
    )
        .prop_map(|(zone, (y, m, d), minute, nudge)| {
            let midnight = jiff::civil::date(y, m, d)
                .at(0, 0, 0, 0)
                .in_tz(zone)
                .map_or(1_772_953_200, |z| z.timestamp().as_second());
            midnight + i64::from(minute) * 60 + nudge
        })
}

fn now() -> impl Strategy<Value = i64> {
    prop_oneof![
        5 => (select(INSTANTS), select(NUDGES), -2i64..=2).prop_map(|(t, n, s)| t + n + s),
        4 => near_range_edge(),
        2 => 1_577_836_800i64..1_893_456_000, // 2020..2030
        // Instants no calendar can place: every schedule must fail closed.
        1 => prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-400_000_000_000i64)],
    ]
}

fn device_posture() -> impl Strategy<Value = DevicePosture> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.15),
        select(PATCHES),
    )
        .prop_map(
            |(managed, compliant, edr_running, compromised, os_patch)| DevicePosture {
                managed,
                compliant,
                edr_running,
                compromised,
                os_patch,
            },
        )
}

/// Live facts keyed by the same vocabulary; grant ends relative to `now`. Half the
/// time the flow's own (service, SPIFFE ID) gets a grant, so grant rules do match.
fn live(
    now: i64,
    service: &'static str,
    id: Option<&'static str>,
) -> impl Strategy<Value = LiveFacts> {
    let end =
        move || select(&[-10i64, -1, 0, 1, 3600][..]).prop_map(move |d| now.saturating_add(d));
    let own = prop::option::weighted(0.7, end())
        .prop_map(move |e| e.zip(id).map(|(e, id)| (service, id, e)));
    (
        prop::option::weighted(0.18, select(FLOW_IDS)),
        prop::option::weighted(0.15, select(FINGERPRINTS)),
        prop::collection::vec((select(DEVICES), device_posture()), 0..4),
        prop::collection::vec((select(FLOW_IDS), select(RISKS)), 0..4),
        prop::collection::vec((select(DEVICES), select(RISKS)), 0..3),
        prop::collection::vec((select(FLOW_SERVICES), select(FLOW_IDS), end()), 0..4),
        own,
        any::<u64>(),
    )
        .prop_map(
            |(revoked, revoked_fp, posture, risk_id, risk_dev, grants, own, version)| {
                // Revocations are rare so that rules decide most flows.
                let mut live = LiveFacts {
                    version,
                    ..LiveFacts::default()
                };
                live.revoked_ids.extend(revoked.map(str::to_owned));
                live.revoked_fingerprints.extend(revoked_fp);
                live.posture
                    .extend(posture.into_iter().map(|(d, p)| (d.to_owned(), p)));
                live.risk_by_id
                    .extend(risk_id.into_iter().map(|(i, r)| (i.to_owned(), r)));
                live.risk_by_device
                    .extend(risk_dev.into_iter().map(|(d, r)| (d.to_owned(), r)));
                for (svc, id, end) in grants.into_iter().chain(own) {
                    live.grants
                        .entry(svc.to_owned())
                        .or_default()
                        .insert(id.to_owned(), end);
                }
                live
            },
        )
}

fn flow() -> impl Strategy<Value = FlowCase> {
    let shape = (
        select(FLOW_SERVICES),
        source(),
        prop::option::weighted(0.6, select(FLOW_SNI)),
        prop::option::weighted(0.5, select(ALPN)),
        prop::option::weighted(0.85, identity()),
        prop::option::weighted(0.6, select(DEVICES)),
        prop::option::weighted(0.7, select(AGES)),
    );
    (shape, now()).prop_flat_map(|(shape, now)| {
        let id = shape.4.as_ref().and_then(|i| i.spiffe_id);
        live(now, shape.0, id).prop_map(move |live| {
            let (service, source, sni, alpn, identity, device_id, cert_age_secs) = shape.clone();
            FlowCase {
                service,
                source,
                sni,
                alpn,
                identity,
                device_id,
                cert_age_secs,
                now,
                live,
            }
        })
    })
}

// ---------------------------------------------------------------- the properties

/// 2,000 policies with 6 flows each by default; `PROPTEST_CASES` overrides.
fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000),
        max_shrink_iters: 5_000,
        max_shrink_time: 60_000,
        ..Config::default()
    }
}

/// Check one policy and its flows: compiled (fresh and round-tripped) equals reference.
fn check(policy: &Policy, flows: &[FlowCase]) -> Result<(), TestCaseError> {
    let table = DecisionTable::compile(policy, 42)
        .map_err(|e| TestCaseError::fail(format!("compile failed: {e:?}")))?;
    let bytes = table.encode();
    let loaded = DecisionTable::decode(&bytes)
        .map_err(|e| TestCaseError::fail(format!("decode failed: {e:?}")))?;
    prop_assert_eq!(table.rule_count(), policy.rules.len());
    prop_assert_eq!(loaded.encode(), bytes.clone(), "re-encoding is not stable");
    for case in flows {
        let facts = case.facts();
        let expected = reference::evaluate(policy, &facts, &case.live);
        prop_assert_eq!(
            table.decide(&facts, &case.live),
            expected,
            "compiled, flow {:?}",
            case
        );
        prop_assert_eq!(
            loaded.decide(&facts, &case.live),
            expected,
            "decoded, flow {:?}",
            case
        );
        if let DecidedBy::Rule(i) = expected.decided_by {
            let id = policy.rules.get(i as usize).map(|r| r.id.as_str());
            prop_assert_eq!(table.rule_id(i), id);
            prop_assert_eq!(loaded.rule_id(i), id);
        }
    }
    Ok(())
}

/// Things the reference itself must satisfy, whatever the table does.
fn reference_invariants(policy: &Policy, case: &FlowCase) -> Result<(), TestCaseError> {
    let facts = case.facts();
    let e = reference::explain(policy, &facts, &case.live);
    prop_assert_eq!(e.decision, reference::evaluate(policy, &facts, &case.live));
    prop_assert!(e
        .rules
        .windows(2)
        .all(|w| matches!(w, [a, b] if a.index < b.index)));
    if e.decision.verdict == Verdict::Deny {
        prop_assert_eq!(e.decision.constraints, Default::default());
    }
    match e.decision.decided_by {
        DecidedBy::Rule(i) => {
            let trace = e.rules.iter().find(|t| t.index == i);
            prop_assert!(trace.is_some_and(|t| t.outcome.is_ok()));
            let rule = policy.rules.get(i as usize);
            let action = if e.decision.is_allow() {
                Action::Allow
            } else {
                Action::Deny
            };
            prop_assert_eq!(rule.map(|r| r.action), Some(action));
            // A deny: no matching deny before it. An allow: no matching deny at all and
            // no matching allow before it.
            for t in e.rules.iter().filter(|t| t.outcome.is_ok()) {
                let is_deny =
                    policy.rules.get(t.index as usize).map(|r| r.action) == Some(Action::Deny);
                if action == Action::Deny {
                    prop_assert!(!is_deny || t.index >= i);
                } else {
                    prop_assert!(!is_deny && (t.index >= i));
                }
            }
            if let Some(end) = e.decision.constraints.schedule_end {
                prop_assert!(end > case.now && end <= case.now + 86_400);
            }
        }
        DecidedBy::DefaultDeny => {
            prop_assert!(e.rules.iter().all(|t| t.outcome.is_err()));
            prop_assert_eq!(
                e.decision.reason == Reason::UnknownService,
                e.rules.is_empty()
            );
        }
        DecidedBy::RevokedIdentity | DecidedBy::RevokedCertificate => {
            prop_assert_eq!(e.decision.reason, Reason::Revoked);
        }
    }
    Ok(())
}

#[test]
fn compiled_table_agrees_with_reference() {
    let mut runner = TestRunner::new(config());
    let strategy = (policy(), prop::collection::vec(flow(), 6));
    let result = runner.run(&strategy, |(policy, flows)| check(&policy, &flows));
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The analysis only warns when it is certain (`crates/policy/src/analyze.rs`): an allow
/// rule shadowed by a deny, or a rule duplicating an earlier one, must never be the rule
/// a decision names, whatever the flow and the live facts.
#[test]
fn shadow_and_duplicate_warnings_are_never_contradicted_by_the_reference() {
    let mut runner = TestRunner::new(config());
    let strategy = (policy(), prop::collection::vec(flow(), 12));
    let warned = std::cell::Cell::new(0usize);
    let named = std::cell::Cell::new(0usize);
    let result = runner.run(&strategy, |(policy, flows)| {
        let never: Vec<String> = zgate_policy::analyze(&policy)
            .into_iter()
            .filter_map(|w| match w.kind {
                zgate_policy::WarningKind::ShadowedByDeny { rule, .. }
                | zgate_policy::WarningKind::Duplicate { rule, .. } => Some(rule),
                _ => None,
            })
            .collect();
        warned.set(warned.get() + never.len());
        for case in &flows {
            let d = reference::evaluate(&policy, &case.facts(), &case.live);
            if let DecidedBy::Rule(i) = d.decided_by {
                let id = policy.rules.get(i as usize).map(|r| r.id.clone());
                named.set(named.get() + 1);
                prop_assert!(
                    id.as_ref().is_none_or(|id| !never.contains(id)),
                    "rule {:?} was warned never to take effect, yet decided {:?} for {:?}",
                    id,
                    d,
                    case
                );
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generators must produce such warnings often, or this test proves nothing.
    assert!(warned.get() > 100, "only {} warnings", warned.get());
    assert!(named.get() > 1_000, "only {} rule decisions", named.get());
}

#[test]
fn compiled_table_agrees_with_reference_on_large_policies() {
    let mut runner = TestRunner::new(Config {
        cases: 16,
        ..config()
    });
    let strategy = (large_policy(), prop::collection::vec(flow(), 48));
    let far = std::cell::Cell::new(0usize);
    let result = runner.run(&strategy, |(policy, flows)| {
        for case in &flows {
            let d = reference::evaluate(&policy, &case.facts(), &case.live);
            if matches!(d.decided_by, DecidedBy::Rule(i) if i >= 512) {
                far.set(far.get() + 1);
            }
        }
        check(&policy, &flows)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("decisions by rules past index 512: {}", far.get());
    // Rules past the first 512-rule chunk must decide often, or this test proves little.
    assert!(
        far.get() >= 20,
        "only {} decisions by rules past index 512",
        far.get()
    );
}

/// An identity matching more principal keys than the table keeps on the stack (dozens
/// of DNS SANs, each named by a rule) must still be decided like the reference does.
#[test]
fn identity_matching_many_principal_keys() {
    let names: Vec<String> = (0..80).map(|i| format!("h{i}.corp.example")).collect();
    let mut rules: Vec<Rule> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut r = Rule::new(
                format!("r{i}"),
                Action::Allow,
                ServiceSelector::Named(vec!["pg".into()]),
            );
            r.principals = Some(vec![Principal::DnsSan(n.clone())]);
            // Only the last rules can match the flow's source.
            r.sources = Some(vec![Cidr {
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, if i >= 70 { 0 } else { 128 })),
                prefix_len: 25,
            }]);
            r
        })
        .collect();
    let mut deny = Rule::new("d", Action::Deny, ServiceSelector::Named(vec!["pg".into()]));
    deny.principals = Some(vec![Principal::DnsSan("h75.corp.example".into())]);
    deny.sni = Some(vec!["x.example".into()]);
    rules.push(deny);
    let policy = build_policy(Vec::new());
    let policy = Policy { rules, ..policy };
    let table = DecisionTable::compile(&policy, 1).unwrap();
    let live = LiveFacts::default();
    let sans: Vec<&str> = names.iter().map(String::as_str).rev().collect();
    for (source, sni) in [(1u8, None), (200, None), (1, Some("x.example"))] {
        let flow = FlowFacts {
            identity: Some(PeerIdentity {
                dns_sans: &sans,
                ..PeerIdentity::default()
            }),
            sni,
            ..FlowFacts::plain("pg", IpAddr::V4(Ipv4Addr::new(10, 0, 0, source)), 0)
        };
        let expected = reference::evaluate(&policy, &flow, &live);
        assert_eq!(
            table.decide(&flow, &live),
            expected,
            "source .{source}, sni {sni:?}"
        );
    }
    // The three flows above: rule r70 allows, r0 allows, the deny decides.
    let flow = FlowFacts {
        identity: Some(PeerIdentity {
            dns_sans: &sans,
            ..PeerIdentity::default()
        }),
        ..FlowFacts::plain("pg", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 0)
    };
    assert_eq!(table.decide(&flow, &live).decided_by, DecidedBy::Rule(70));
}

#[test]
fn reference_is_self_consistent() {
    let mut runner = TestRunner::new(Config {
        cases: 500,
        ..config()
    });
    let strategy = (policy(), prop::collection::vec(flow(), 4));
    let result = runner.run(&strategy, |(policy, flows)| {
        flows
            .iter()
            .try_for_each(|f| reference_invariants(&policy, f))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The generators must actually reach every kind of decision, or the agreement above
/// proves little.
#[test]
fn generators_cover_every_outcome() {
    // A fixed seed: this test asserts counts, so it must not depend on luck.
    let mut runner = TestRunner::new(Config {
        rng_seed: RngSeed::Fixed(0x2a),
        ..Config::default()
    });
    let strategy = (policy(), prop::collection::vec(flow(), 6));
    let mut seen = std::collections::HashMap::new();
    let mut allow_with = [0usize; 3];
    for _ in 0..300 {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            panic!("strategy failed to generate");
        };
        let (policy, flows) = tree.current();
        for case in &flows {
            let d: Decision = reference::evaluate(&policy, &case.facts(), &case.live);
            *seen
                .entry((d.verdict, std::mem::discriminant(&d.decided_by), d.reason))
                .or_insert(0usize) += 1;
            allow_with[0] += usize::from(d.constraints.grant_end.is_some());
            allow_with[1] += usize::from(d.constraints.schedule_end.is_some());
            allow_with[2] += usize::from(d.constraints.max_session_secs.is_some());
        }
    }
    let rule = std::mem::discriminant(&DecidedBy::Rule(0));
    let dd = std::mem::discriminant(&DecidedBy::DefaultDeny);
    for want in [
        (Verdict::Allow, rule, Reason::AllowedByRule),
        (Verdict::Deny, rule, Reason::DeniedByRule),
        (Verdict::Deny, dd, Reason::NoRuleMatched),
        (Verdict::Deny, dd, Reason::UnknownService),
        (
            Verdict::Deny,
            std::mem::discriminant(&DecidedBy::RevokedIdentity),
            Reason::Revoked,
        ),
        (
            Verdict::Deny,
            std::mem::discriminant(&DecidedBy::RevokedCertificate),
            Reason::Revoked,
        ),
    ] {
        let n = seen.get(&want).copied().unwrap_or(0);
        eprintln!("{want:?}: {n}");
        // At least 1% of the 1,800 flows, so each outcome is compared often.
        assert!(n >= 18, "only {n} of {want:?}");
    }
    eprintln!("allows with grant/schedule/session limits: {allow_with:?}");
    assert!(
        allow_with.iter().all(|&n| n >= 18),
        "constraints too rare: {allow_with:?}"
    );
}

/// The fixed instants mean what their comments say, so the DST edges are really hit.
#[test]
fn fixture_instants_sit_on_the_edges_they_claim() {
    use jiff::tz::TimeZone;
    let offset = |zone: &str, t: i64| -> i32 {
        let tz = TimeZone::get(zone).unwrap();
        tz.to_offset(jiff::Timestamp::from_second(t).unwrap())
            .seconds()
    };
    let changes = [
        (INSTANTS[0], "America/New_York", -5 * 3600, -4 * 3600),
        (INSTANTS[1], "America/New_York", -4 * 3600, -5 * 3600),
        (INSTANTS[2], "Europe/London", 0, 3600),
        (INSTANTS[3], "Europe/London", 3600, 0),
    ];
    for (t, zone, before, after) in changes {
        assert_eq!(offset(zone, t - 1), before, "{zone} at {t}");
        assert_eq!(offset(zone, t), after, "{zone} at {t}");
    }
    let kolkata = jiff::Timestamp::from_second(INSTANTS[4])
        .unwrap()
        .to_zoned(TimeZone::get("Asia/Kolkata").unwrap());
    assert_eq!((kolkata.hour(), kolkata.minute()), (0, 0));
    assert_eq!(kolkata.weekday(), jiff::civil::Weekday::Wednesday);
    assert_eq!(INSTANTS[5] % 86_400, 0);
    assert_eq!(
        jiff::Timestamp::from_second(INSTANTS[5])
            .unwrap()
            .to_zoned(TimeZone::UTC)
            .weekday(),
        jiff::civil::Weekday::Monday
    );
}
