//! Unit tests of the reference evaluator (`crate::reference`): every matcher and
//! every way a rule fails to match, as `explain` reports it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zgate_policy::model::{
    Action, Cidr, MinuteRange, Policy, PostureRequirement, Principal, Rule, Schedule,
    ServiceSelector, SpiffeId, Weekdays,
};

use crate::facts::{
    Constraints, DecidedBy, Decision, DevicePosture, FlowFacts, LiveFacts, PeerIdentity, Reason,
    Verdict,
};
use crate::reference::{evaluate, explain, Mismatch, PostureFailure};

const FP_A: [u8; 32] = [0xaa; 32];
const FP_B: [u8; 32] = [0xbb; 32];
/// 2026-03-07 (a Saturday) 10:05:30 in America/New_York (EST, UTC-5).
const SAT_NY_1005: i64 = 1_772_895_930;

fn policy(rules: Vec<Rule>) -> Policy {
    Policy {
        groups: Vec::new(),
        services: Vec::new(),
        rules,
        source_hash: [0; 32],
    }
}

fn named(s: &str) -> ServiceSelector {
    ServiceSelector::Named(vec![s.to_owned()])
}

fn allow(id: &str) -> Rule {
    Rule::new(id, Action::Allow, named("redis"))
}

fn deny(id: &str) -> Rule {
    Rule::new(id, Action::Deny, named("redis"))
}

fn sid(s: &str) -> SpiffeId {
    let rest = s.strip_prefix("spiffe://").unwrap();
    let mut parts = rest.split('/');
    SpiffeId {
        trust_domain: parts.next().unwrap().to_owned(),
        segments: parts.map(str::to_owned).collect(),
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn cidr(s: &str) -> Cidr {
    let (a, p) = s.split_once('/').unwrap();
    Cidr {
        addr: a.parse().unwrap(),
        prefix_len: p.parse().unwrap(),
    }
}

fn flow(now: i64) -> FlowFacts<'static> {
    FlowFacts::plain("redis", v4(10, 1, 2, 3), now)
}

fn with_id<'a>(f: FlowFacts<'a>, id: &'a str) -> FlowFacts<'a> {
    FlowFacts {
        identity: Some(PeerIdentity {
            spiffe_id: Some(id),
            ..PeerIdentity::default()
        }),
        ..f
    }
}

fn allowed(index: u32, constraints: Constraints) -> Decision {
    Decision {
        verdict: Verdict::Allow,
        decided_by: DecidedBy::Rule(index),
        reason: Reason::AllowedByRule,
        constraints,
    }
}

fn denied(index: u32) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        decided_by: DecidedBy::Rule(index),
        reason: Reason::DeniedByRule,
        constraints: Constraints::default(),
    }
}

/// The mismatch of the single rule of `p`.
fn mismatch(p: &Policy, f: &FlowFacts<'_>, live: &LiveFacts) -> Mismatch {
    let e = explain(p, f, live);
    assert_eq!(e.rules.len(), 1);
    e.rules[0].outcome.clone().unwrap_err()
}

fn at_ny(y: i16, mo: i8, d: i8, h: i8, mi: i8, s: i8) -> i64 {
    at(y, mo, d, h, mi, s, "America/New_York")
}

fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8, s: i8, tz: &str) -> i64 {
    jiff::civil::date(y, mo, d)
        .at(h, mi, s, 0)
        .in_tz(tz)
        .unwrap()
        .timestamp()
        .as_second()
}

#[test]
fn fixture_instant_is_what_it_claims() {
    assert_eq!(at_ny(2026, 3, 7, 10, 5, 30), SAT_NY_1005);
}

#[test]
fn unknown_service_versus_no_rule_matched() {
    let live = LiveFacts::default();
    let mut r = allow("a");
    r.sources = Some(vec![cidr("192.0.2.0/24")]);
    let p = policy(vec![r]);
    let other = FlowFacts::plain("postgres", v4(10, 1, 2, 3), 0);
    assert_eq!(
        evaluate(&p, &other, &live),
        Decision::default_deny(Reason::UnknownService)
    );
    assert!(explain(&p, &other, &live).rules.is_empty());
    assert_eq!(
        evaluate(&p, &flow(0), &live),
        Decision::default_deny(Reason::NoRuleMatched)
    );
    // A `*` rule makes every service known, even when it does not match.
    let mut any = Rule::new("any", Action::Deny, ServiceSelector::Any);
    any.sources = Some(vec![cidr("192.0.2.0/24")]);
    let p = policy(vec![any]);
    assert_eq!(
        evaluate(&p, &other, &live),
        Decision::default_deny(Reason::NoRuleMatched)
    );
}

#[test]
fn any_service_rule_applies_to_every_listener() {
    let p = policy(vec![Rule::new("all", Action::Allow, ServiceSelector::Any)]);
    let f = FlowFacts::plain("whatever", v4(1, 1, 1, 1), 0);
    assert_eq!(
        evaluate(&p, &f, &LiveFacts::default()),
        allowed(0, Constraints::default())
    );
}

#[test]
fn multi_service_rule_names_each_service() {
    let mut r = allow("a");
    r.services = ServiceSelector::Named(vec!["pg".into(), "redis".into()]);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    assert!(evaluate(&p, &flow(0), &live).is_allow());
    assert!(evaluate(&p, &FlowFacts::plain("pg", v4(1, 1, 1, 1), 0), &live).is_allow());
    assert_eq!(
        evaluate(&p, &FlowFacts::plain("kafka", v4(1, 1, 1, 1), 0), &live).reason,
        Reason::UnknownService
    );
}

#[test]
fn revoked_identity_beats_revoked_certificate_and_every_rule() {
    let p = policy(vec![allow("open")]);
    let mut live = LiveFacts::default();
    let id = "spiffe://corp.example/ns/a";
    let f = FlowFacts {
        identity: Some(PeerIdentity {
            spiffe_id: Some(id),
            fingerprint: Some(&FP_A),
            ..PeerIdentity::default()
        }),
        ..flow(0)
    };
    assert!(evaluate(&p, &f, &live).is_allow());
    live.revoked_fingerprints.insert(FP_A);
    let d = evaluate(&p, &f, &live);
    assert_eq!(d.decided_by, DecidedBy::RevokedCertificate);
    assert_eq!(d.reason, Reason::Revoked);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.constraints, Constraints::default());
    live.revoked_ids.insert(id.to_owned());
    assert_eq!(
        evaluate(&p, &f, &live).decided_by,
        DecidedBy::RevokedIdentity
    );
    // Revocation is checked before the service lookup.
    let unknown = FlowFacts {
        service: "nope",
        ..f
    };
    assert_eq!(
        evaluate(&p, &unknown, &live).decided_by,
        DecidedBy::RevokedIdentity
    );
    // A different fingerprint is not revoked.
    let mut live = LiveFacts::default();
    live.revoked_fingerprints.insert(FP_B);
    assert!(evaluate(&p, &f, &live).is_allow());
}

#[test]
fn deny_beats_earlier_allow_and_lowest_index_wins() {
    let live = LiveFacts::default();
    let mut a0 = allow("a0");
    a0.max_session_secs = Some(60);
    let mut a1 = allow("a1");
    a1.max_session_secs = Some(99);
    let p = policy(vec![a0.clone(), a1.clone(), deny("d2"), deny("d3")]);
    assert_eq!(evaluate(&p, &flow(0), &live), denied(2));
    let p = policy(vec![a0, a1]);
    assert_eq!(
        evaluate(&p, &flow(0), &live),
        allowed(
            0,
            Constraints {
                max_session_secs: Some(60),
                ..Constraints::default()
            }
        )
    );
}

#[test]
fn non_matching_deny_does_not_block() {
    let mut d = deny("d");
    d.sources = Some(vec![cidr("192.0.2.0/24")]);
    let p = policy(vec![d, allow("a")]);
    let e = explain(&p, &flow(0), &LiveFacts::default());
    assert_eq!(e.decision, allowed(1, Constraints::default()));
    assert_eq!(e.rules.len(), 2);
    assert_eq!(e.rules[0].index, 0);
    assert!(e.rules[0].outcome.is_err());
    assert_eq!(e.rules[1].outcome, Ok(()));
}

#[test]
fn principals_any_matches_anonymous_flows() {
    let mut r = allow("a");
    r.principals = Some(vec![Principal::CommonName("x".into()), Principal::Any]);
    let p = policy(vec![r]);
    assert!(evaluate(&p, &flow(0), &LiveFacts::default()).is_allow());
}

#[test]
fn named_principal_needs_an_identity() {
    let mut r = allow("a");
    r.principals = Some(vec![Principal::CommonName("x".into())]);
    let p = policy(vec![r]);
    let m = mismatch(&p, &flow(0), &LiveFacts::default());
    assert_eq!(m, Mismatch::Principal { presented: None });
    assert_eq!(
        m.to_string(),
        "the flow presents no identity and the rule names principals"
    );
}

#[test]
fn spiffe_exact() {
    let mut r = allow("a");
    r.principals = Some(vec![Principal::SpiffeExact(sid(
        "spiffe://corp.example/ns/a",
    ))]);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    assert!(evaluate(&p, &with_id(flow(0), "spiffe://corp.example/ns/a"), &live).is_allow());
    for other in [
        "spiffe://corp.example/ns/a/b",
        "spiffe://corp.example/ns",
        "spiffe://other.example/ns/a",
    ] {
        assert!(
            !evaluate(&p, &with_id(flow(0), other), &live).is_allow(),
            "{other}"
        );
    }
    let m = mismatch(&p, &with_id(flow(0), "spiffe://corp.example/ns/b"), &live);
    assert_eq!(
        m.to_string(),
        "peer spiffe://corp.example/ns/b is not among the rule's principals"
    );
}

#[test]
fn spiffe_under_is_strictly_below_whole_segments() {
    let mut r = allow("a");
    r.principals = Some(vec![Principal::SpiffeUnder(sid(
        "spiffe://corp.example/ns/trading",
    ))]);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    let yes = [
        "spiffe://corp.example/ns/trading/sa",
        "spiffe://corp.example/ns/trading/sa/desk1",
    ];
    let no = [
        "spiffe://corp.example/ns/trading",
        "spiffe://corp.example/ns/tradingx/sa",
        "spiffe://corp.example/ns",
        "spiffe://corp.example",
        "spiffe://corp.examplex/ns/trading/sa",
        "spiffe://other.example/ns/trading/sa",
        "spiffe://corp.example/ns/Trading/sa",
    ];
    for id in yes {
        assert!(
            evaluate(&p, &with_id(flow(0), id), &live).is_allow(),
            "{id}"
        );
    }
    for id in no {
        assert!(
            !evaluate(&p, &with_id(flow(0), id), &live).is_allow(),
            "{id}"
        );
    }
}

#[test]
fn spiffe_under_trust_domain_root() {
    let mut r = allow("a");
    r.principals = Some(vec![Principal::SpiffeUnder(sid("spiffe://corp.example"))]);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    assert!(evaluate(&p, &with_id(flow(0), "spiffe://corp.example/x"), &live).is_allow());
    assert!(!evaluate(&p, &with_id(flow(0), "spiffe://corp.example"), &live).is_allow());
}

#[test]
fn dns_cn_and_fingerprint_principals() {
    let mut r = allow("a");
    r.principals = Some(vec![
        Principal::DnsSan("db.corp.example".into()),
        Principal::CommonName("alice".into()),
        Principal::Fingerprint(FP_A),
    ]);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    let sans = ["x.corp.example", "db.corp.example"];
    let cases = [
        (
            PeerIdentity {
                dns_sans: &sans,
                ..PeerIdentity::default()
            },
            true,
        ),
        (
            PeerIdentity {
                dns_sans: &sans[..1],
                ..PeerIdentity::default()
            },
            false,
        ),
        (
            PeerIdentity {
                common_name: Some("alice"),
                ..PeerIdentity::default()
            },
            true,
        ),
        (
            PeerIdentity {
                common_name: Some("Alice"),
                ..PeerIdentity::default()
            },
            false,
        ),
        (
            PeerIdentity {
                fingerprint: Some(&FP_A),
                ..PeerIdentity::default()
            },
            true,
        ),
        (
            PeerIdentity {
                fingerprint: Some(&FP_B),
                ..PeerIdentity::default()
            },
            false,
        ),
        (PeerIdentity::default(), false),
    ];
    for (identity, expect) in cases {
        let f = FlowFacts {
            identity: Some(identity),
            ..flow(0)
        };
        assert_eq!(evaluate(&p, &f, &live).is_allow(), expect, "{identity:?}");
    }
    let f = FlowFacts {
        identity: Some(PeerIdentity {
            fingerprint: Some(&FP_B),
            ..PeerIdentity::default()
        }),
        ..flow(0)
    };
    assert_eq!(
        mismatch(&p, &f, &live).to_string(),
        format!(
            "peer sha256:{} is not among the rule's principals",
            "bb".repeat(32)
        )
    );
}

#[test]
fn sources_v4_v6_and_families() {
    let mut r = allow("a");
    r.sources = Some(vec![
        cidr("10.1.0.0/16"),
        cidr("2001:db8::/32"),
        cidr("192.0.2.9/32"),
    ]);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    let at_ip = |ip: IpAddr| FlowFacts {
        source: ip,
        ..flow(0)
    };
    assert!(evaluate(&p, &at_ip(v4(10, 1, 255, 255)), &live).is_allow());
    assert!(evaluate(&p, &at_ip(v4(192, 0, 2, 9)), &live).is_allow());
    assert!(!evaluate(&p, &at_ip(v4(192, 0, 2, 10)), &live).is_allow());
    assert!(!evaluate(&p, &at_ip(v4(10, 2, 0, 0)), &live).is_allow());
    let v6: IpAddr = "2001:db8:ffff::1".parse().unwrap();
    assert!(evaluate(&p, &at_ip(v6), &live).is_allow());
    // An IPv4-mapped IPv6 address is not converted.
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 0, 1).to_ipv6_mapped());
    assert!(!evaluate(&p, &at_ip(mapped), &live).is_allow());
    let m = mismatch(&p, &at_ip(v4(192, 0, 2, 10)), &live);
    assert_eq!(
        m.to_string(),
        "source 192.0.2.10 is not in the rule's networks"
    );
}

#[test]
fn zero_prefix_matches_its_family_only() {
    let mut r = allow("a");
    r.sources = Some(vec![cidr("0.0.0.0/0")]);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    assert!(evaluate(
        &p,
        &FlowFacts {
            source: v4(255, 255, 255, 255),
            ..flow(0)
        },
        &live
    )
    .is_allow());
    let f = FlowFacts {
        source: IpAddr::V6(Ipv6Addr::LOCALHOST),
        ..flow(0)
    };
    assert!(!evaluate(&p, &f, &live).is_allow());
}

#[test]
fn sni_exact_and_single_label_wildcard() {
    let mut r = allow("a");
    r.sni = Some(vec![
        "db.corp.example".into(),
        "*.cache.corp.example".into(),
    ]);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    let with_sni = |s: Option<&'static str>| FlowFacts { sni: s, ..flow(0) };
    let cases = [
        (Some("db.corp.example"), true),
        (Some("r1.cache.corp.example"), true),
        (Some("a.b.cache.corp.example"), false),
        (Some(".cache.corp.example"), false),
        (Some("cache.corp.example"), false),
        (Some("r1xcache.corp.example"), false),
        (Some("x.db.corp.example"), false),
        (None, false),
    ];
    for (sni, expect) in cases {
        assert_eq!(
            evaluate(&p, &with_sni(sni), &live).is_allow(),
            expect,
            "{sni:?}"
        );
    }
    assert_eq!(
        mismatch(&p, &with_sni(None), &live),
        Mismatch::Sni { got: None }
    );
    assert_eq!(
        mismatch(&p, &with_sni(Some("x.example")), &live).to_string(),
        "sni x.example is not among the rule's names"
    );
}

#[test]
fn alpn() {
    let mut r = allow("a");
    r.alpn = Some(vec!["h2".into(), "postgresql".into()]);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    let with = |a: Option<&'static str>| FlowFacts { alpn: a, ..flow(0) };
    assert!(evaluate(&p, &with(Some("h2")), &live).is_allow());
    assert!(!evaluate(&p, &with(Some("http/1.1")), &live).is_allow());
    assert!(!evaluate(&p, &with(None), &live).is_allow());
    assert_eq!(
        mismatch(&p, &with(Some("http/1.1")), &live).to_string(),
        "alpn http/1.1 is not among the rule's protocols"
    );
}

fn schedule(days: u8, ranges: &[(u16, u16)], tz: &str) -> Schedule {
    Schedule {
        days: Weekdays(days),
        ranges: ranges
            .iter()
            .map(|&(start_minute, end_minute)| MinuteRange {
                start_minute,
                end_minute,
            })
            .collect(),
        time_zone: tz.to_owned(),
    }
}

const WEEKEND: u8 = 0b110_0000;

#[test]
fn schedule_days_ranges_and_end() {
    let mut r = allow("a");
    r.schedule = Some(schedule(
        WEEKEND,
        &[(9 * 60, 10 * 60 + 5), (10 * 60 + 30, 11 * 60)],
        "America/New_York",
    ));
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    // Saturday 10:05:30 is just past the first range.
    let m = mismatch(&p, &flow(SAT_NY_1005), &live);
    assert_eq!(
        m.to_string(),
        "outside the schedule: sat 10:05 in America/New_York"
    );
    // 10:04:59 is in it, and the range ends one second later.
    let t = at_ny(2026, 3, 7, 10, 4, 59);
    assert_eq!(
        evaluate(&p, &flow(t), &live),
        allowed(
            0,
            Constraints {
                schedule_end: Some(t + 1),
                ..Constraints::default()
            }
        )
    );
    // Second range, start boundary inclusive.
    let t = at_ny(2026, 3, 7, 10, 30, 0);
    assert_eq!(
        evaluate(&p, &flow(t), &live).constraints.schedule_end,
        Some(t + 30 * 60)
    );
    // Same wall time on a Friday is outside the days.
    let t = at_ny(2026, 3, 6, 9, 30, 0);
    assert_eq!(
        mismatch(&p, &flow(t), &live).to_string(),
        "outside the schedule: fri 09:30 in America/New_York"
    );
}

#[test]
fn schedule_end_uses_offset_in_force_across_spring_forward() {
    // 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT. A range 00:00-04:00 seen
    // at 01:30 EST ends, by the offset in force at 01:30, 2.5 h later (05:00 EDT
    // real clock; the flow is re-decided then anyway).
    let mut r = allow("a");
    r.schedule = Some(schedule(0b111_1111, &[(0, 4 * 60)], "America/New_York"));
    let p = policy(vec![r]);
    let t = at_ny(2026, 3, 8, 1, 30, 0);
    let d = evaluate(&p, &flow(t), &LiveFacts::default());
    assert_eq!(d.constraints.schedule_end, Some(t + 150 * 60));
    // One hour of real time later it is 03:30 EDT, still inside.
    let d = evaluate(&p, &flow(t + 3600), &LiveFacts::default());
    assert_eq!(d.constraints.schedule_end, Some(t + 3600 + 30 * 60));
}

#[test]
fn schedule_whole_day_and_half_hour_zone() {
    let mut r = allow("a");
    r.schedule = Some(schedule(1 << 2, &[(0, 1440)], "Asia/Kolkata"));
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    // Wednesday 2026-03-04 00:00 IST = Tuesday 18:30 UTC.
    let start = at(2026, 3, 4, 0, 0, 0, "Asia/Kolkata");
    assert_eq!(start % 86_400, 18 * 3600 + 30 * 60);
    assert_eq!(
        evaluate(&p, &flow(start), &live).constraints.schedule_end,
        Some(start + 86_400)
    );
    assert_eq!(
        mismatch(&p, &flow(start - 1), &live).to_string(),
        "outside the schedule: tue 23:59 in Asia/Kolkata"
    );
    assert!(!evaluate(&p, &flow(start + 86_400), &live).is_allow());
}

#[test]
fn schedule_fails_closed_on_unrepresentable_instant() {
    let mut r = allow("a");
    r.schedule = Some(schedule(0b111_1111, &[(0, 1440)], "UTC"));
    let p = policy(vec![r]);
    let m = mismatch(&p, &flow(i64::MAX), &LiveFacts::default());
    assert!(matches!(m, Mismatch::ScheduleUndecidable { .. }), "{m:?}");
}

fn posture_live(p: DevicePosture) -> LiveFacts {
    let mut live = LiveFacts::default();
    live.posture.insert("dev1".into(), p);
    live
}

#[test]
fn posture_requirements() {
    let mut r = allow("a");
    r.posture = Some(PostureRequirement {
        managed: true,
        compliant: true,
        edr_running: true,
        min_os_patch: Some(20_261_001),
    });
    let p = policy(vec![r]);
    let good = DevicePosture {
        managed: true,
        compliant: true,
        edr_running: true,
        compromised: false,
        os_patch: 20_261_001,
    };
    let f = FlowFacts {
        device_id: Some("dev1"),
        ..flow(0)
    };
    assert!(evaluate(&p, &f, &posture_live(good)).is_allow());
    let cases = [
        (
            DevicePosture {
                compromised: true,
                ..good
            },
            PostureFailure::Compromised {
                device: "dev1".into(),
            },
        ),
        (
            DevicePosture {
                managed: false,
                ..good
            },
            PostureFailure::NotManaged,
        ),
        (
            DevicePosture {
                compliant: false,
                ..good
            },
            PostureFailure::NotCompliant,
        ),
        (
            DevicePosture {
                edr_running: false,
                ..good
            },
            PostureFailure::EdrNotRunning,
        ),
        (
            DevicePosture {
                os_patch: 20_261_000,
                ..good
            },
            PostureFailure::OsPatchTooOld {
                have: 20_261_000,
                need: 20_261_001,
            },
        ),
    ];
    for (posture, failure) in cases {
        assert_eq!(
            mismatch(&p, &f, &posture_live(posture)),
            Mismatch::Posture(failure)
        );
    }
    assert_eq!(
        mismatch(&p, &flow(0), &posture_live(good)),
        Mismatch::Posture(PostureFailure::NoDevice)
    );
    let unknown = FlowFacts {
        device_id: Some("dev2"),
        ..flow(0)
    };
    assert_eq!(
        mismatch(&p, &unknown, &posture_live(good)).to_string(),
        "no posture is known for device dev2"
    );
}

#[test]
fn empty_posture_requirement_still_needs_a_known_healthy_device() {
    let mut r = allow("a");
    r.posture = Some(PostureRequirement::default());
    let p = policy(vec![r]);
    let f = FlowFacts {
        device_id: Some("dev1"),
        ..flow(0)
    };
    assert!(evaluate(&p, &f, &posture_live(DevicePosture::default())).is_allow());
    let bad = DevicePosture {
        compromised: true,
        ..DevicePosture::default()
    };
    assert!(!evaluate(&p, &f, &posture_live(bad)).is_allow());
    assert!(!evaluate(&p, &f, &LiveFacts::default()).is_allow());
}

#[test]
fn risk_is_the_higher_of_identity_and_device() {
    let mut r = allow("a");
    r.max_risk = Some(40);
    let p = policy(vec![r]);
    let id = "spiffe://corp.example/a";
    let f = FlowFacts {
        device_id: Some("dev1"),
        ..with_id(flow(0), id)
    };
    let mut live = LiveFacts::default();
    assert!(
        evaluate(&p, &f, &live).is_allow(),
        "unknown risk counts as 0"
    );
    live.risk_by_id.insert(id.into(), 40);
    assert!(
        evaluate(&p, &f, &live).is_allow(),
        "the maximum itself is allowed"
    );
    live.risk_by_device.insert("dev1".into(), 70);
    let m = mismatch(&p, &f, &live);
    assert_eq!(m, Mismatch::Risk { score: 70, max: 40 });
    assert_eq!(m.to_string(), "risk score 70 is above the maximum 40");
    live.risk_by_device.insert("dev1".into(), 10);
    live.risk_by_id.insert(id.into(), 41);
    assert_eq!(
        mismatch(&p, &f, &live),
        Mismatch::Risk { score: 41, max: 40 }
    );
}

#[test]
fn certificate_age() {
    let mut r = allow("a");
    r.max_cert_age_secs = Some(3600);
    let p = policy(vec![r]);
    let live = LiveFacts::default();
    let aged = |a: Option<u64>| FlowFacts {
        cert_age_secs: a,
        ..flow(0)
    };
    assert!(evaluate(&p, &aged(Some(3600)), &live).is_allow());
    assert_eq!(
        mismatch(&p, &aged(Some(3601)), &live).to_string(),
        "certificate age 3601s is above the maximum 3600s"
    );
    assert_eq!(mismatch(&p, &aged(None), &live), Mismatch::NoCertificate);
}

#[test]
fn grants() {
    let mut r = allow("a");
    r.requires_grant = true;
    r.max_session_secs = Some(300);
    let p = policy(vec![r]);
    let id = "spiffe://corp.example/oncall";
    let f = with_id(flow(1000), id);
    let mut live = LiveFacts::default();
    assert_eq!(
        mismatch(&p, &f, &live).to_string(),
        "no grant for spiffe://corp.example/oncall on redis"
    );
    live.grants
        .entry("redis".into())
        .or_default()
        .insert(id.into(), 1000);
    assert_eq!(
        mismatch(&p, &f, &live),
        Mismatch::GrantExpired { end: 1000 }
    );
    live.grants
        .entry("redis".into())
        .or_default()
        .insert(id.into(), 1001);
    assert_eq!(
        evaluate(&p, &f, &live),
        allowed(
            0,
            Constraints {
                grant_end: Some(1001),
                schedule_end: None,
                max_session_secs: Some(300)
            }
        )
    );
    // A grant on another service does not count, nor does a flow without a SPIFFE ID.
    let other = FlowFacts { service: "pg", ..f };
    let mut r2 = Rule::new("b", Action::Allow, named("pg"));
    r2.requires_grant = true;
    let p2 = policy(vec![r2]);
    assert!(!evaluate(&p2, &other, &live).is_allow());
    assert_eq!(
        mismatch(&p, &flow(1000), &live),
        Mismatch::NoGrant {
            spiffe_id: None,
            service: "redis".into()
        }
    );
}

#[test]
fn constraints_come_from_the_deciding_rule_only() {
    let id = "spiffe://corp.example/oncall";
    let mut a0 = allow("a0");
    a0.sources = Some(vec![cidr("192.0.2.0/24")]);
    a0.max_session_secs = Some(1);
    let mut a1 = allow("a1");
    a1.requires_grant = true;
    a1.schedule = Some(schedule(0b111_1111, &[(0, 1440)], "UTC"));
    let mut a2 = allow("a2");
    a2.max_session_secs = Some(7);
    let p = policy(vec![a0, a1, a2]);
    let mut live = LiveFacts::default();
    let t = 86_400 * 3 + 100;
    live.grants
        .entry("redis".into())
        .or_default()
        .insert(id.into(), t + 5000);
    let d = evaluate(&p, &with_id(flow(t), id), &live);
    assert_eq!(
        d,
        allowed(
            1,
            Constraints {
                grant_end: Some(t + 5000),
                schedule_end: Some(86_400 * 4),
                max_session_secs: None
            }
        )
    );
}

#[test]
fn first_failing_condition_is_reported() {
    let mut r = allow("a");
    r.sources = Some(vec![cidr("192.0.2.0/24")]);
    r.alpn = Some(vec!["h2".into()]);
    r.max_cert_age_secs = Some(1);
    let p = policy(vec![r]);
    let m = mismatch(&p, &flow(0), &LiveFacts::default());
    assert_eq!(
        m,
        Mismatch::Source {
            ip: v4(10, 1, 2, 3)
        }
    );
}
