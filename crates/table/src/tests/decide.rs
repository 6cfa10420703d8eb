//! Matching semantics, one matcher or rule of precedence per test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zgate_policy::model::{Action, PostureRequirement, Principal, Rule, ServiceSelector};

use super::*;
use crate::{DevicePosture, LiveFacts};

fn ident<'a>(f: FlowFacts<'a>, id: PeerIdentity<'a>) -> FlowFacts<'a> {
    FlowFacts {
        identity: Some(id),
        ..f
    }
}

#[test]
fn deny_beats_allow_whatever_the_order_and_names_the_lowest_deny() {
    let live = LiveFacts::default();
    // allow first, then two denies.
    let fx = Fixture::new(vec![allow("a0"), deny("d1"), deny("d2")]);
    assert_eq!(fx.decide(&flow(0), &live), denied(1));
    assert_eq!(fx.table.decided_by_name(DecidedBy::Rule(1)), "d1");
    // denies first.
    let fx = Fixture::new(vec![deny("d0"), allow("a1"), deny("d2")]);
    assert_eq!(fx.decide(&flow(0), &live), denied(0));
    // Lowest-index allow when no deny matches.
    let mut d = deny("d0");
    d.sources = Some(vec![cidr("192.0.2.0/24")]);
    let mut a1 = allow("a1");
    a1.max_session_secs = Some(60);
    let fx = Fixture::new(vec![d, a1, allow("a2")]);
    assert_eq!(
        fx.decide(&flow(0), &live),
        allowed(
            1,
            Constraints {
                max_session_secs: Some(60),
                ..Constraints::default()
            }
        )
    );
}

#[test]
fn deny_in_star_table_beats_allow_in_service_table_and_vice_versa() {
    let live = LiveFacts::default();
    let star_deny = Rule::new("star", Action::Deny, ServiceSelector::Any);
    let fx = Fixture::new(vec![allow("a0"), star_deny.clone()]);
    assert_eq!(fx.decide(&flow(0), &live), denied(1));
    let star_allow = Rule::new("star", Action::Allow, ServiceSelector::Any);
    let fx = Fixture::new(vec![star_allow, allow("a1"), deny("d2")]);
    assert_eq!(fx.decide(&flow(0), &live), denied(2));
    // Lowest allow across the two sub-tables.
    let star_allow = Rule::new("star", Action::Allow, ServiceSelector::Any);
    let fx = Fixture::new(vec![allow("a0"), star_allow.clone()]);
    assert_eq!(fx.decide(&flow(0), &live).decided_by, DecidedBy::Rule(0));
    let fx = Fixture::new(vec![star_allow, allow("a1")]);
    assert_eq!(fx.decide(&flow(0), &live).decided_by, DecidedBy::Rule(0));
}

#[test]
fn unknown_service_versus_no_rule_matched() {
    let live = LiveFacts::default();
    let mut a = allow("a");
    a.sources = Some(vec![cidr("192.0.2.0/24")]);
    let fx = Fixture::new(vec![a]);
    assert_eq!(
        fx.decide(&flow(0), &live),
        Decision::default_deny(Reason::NoRuleMatched)
    );
    let other = FlowFacts::plain("pg", v4(10, 1, 2, 3), 0);
    assert_eq!(
        fx.decide(&other, &live),
        Decision::default_deny(Reason::UnknownService)
    );
    assert_eq!(
        fx.table.decided_by_name(DecidedBy::DefaultDeny),
        "default-deny"
    );
    // A `*` rule makes every service known, even one no rule names.
    let mut star = Rule::new("star", Action::Allow, ServiceSelector::Any);
    star.sources = Some(vec![cidr("192.0.2.0/24")]);
    let fx = Fixture::new(vec![allow("a"), star]);
    assert_eq!(
        fx.decide(&other, &live),
        Decision::default_deny(Reason::NoRuleMatched)
    );
    let other_ok = FlowFacts::plain("pg", v4(192, 0, 2, 9), 0);
    assert_eq!(fx.decide(&other_ok, &live).decided_by, DecidedBy::Rule(1));
    assert_eq!(fx.table.service_names().collect::<Vec<_>>(), ["redis"]);
}

/// More services, ALPN names, DNS names and common names than the short-list search
/// takes (four), so the hashed form of every key index is exercised: each flow must
/// reach exactly its own service's rule, and near-miss names nothing.
#[test]
fn many_services_and_names_use_the_hashed_indexes() {
    let live = LiveFacts::default();
    let names: Vec<String> = (0..40).map(|i| format!("svc-{i}")).collect();
    let rules: Vec<Rule> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut r = Rule::new(format!("r{i}"), Action::Allow, named(&[name.as_str()]));
            r.alpn = Some(vec![format!("proto-{i}"), format!("p{}", i % 7)]);
            r.principals = Some(vec![
                Principal::DnsSan(format!("host{i}.corp.example")),
                Principal::CommonName(format!("user-{}", i * 3)),
            ]);
            r
        })
        .collect();
    let fx = Fixture::new(rules);
    for (i, name) in names.iter().enumerate() {
        let host = format!("host{i}.corp.example");
        let sans = [host.as_str()];
        let proto = format!("proto-{i}");
        let f = FlowFacts {
            alpn: Some(&proto),
            ..ident(
                FlowFacts::plain(name, v4(10, 1, 2, 3), 0),
                PeerIdentity {
                    dns_sans: &sans,
                    ..PeerIdentity::default()
                },
            )
        };
        assert_eq!(fx.decide(&f, &live).decided_by, DecidedBy::Rule(i as u32));
        let cn = format!("user-{}", i * 3);
        let by_cn = FlowFacts {
            alpn: Some(&proto),
            ..ident(
                FlowFacts::plain(name, v4(10, 1, 2, 3), 0),
                PeerIdentity {
                    common_name: Some(&cn),
                    ..PeerIdentity::default()
                },
            )
        };
        assert_eq!(
            fx.decide(&by_cn, &live).decided_by,
            DecidedBy::Rule(i as u32)
        );
        // Near misses: another service's name, a longer name, another ALPN id.
        let longer = format!("{name}0");
        for (svc, alpn) in [(longer.as_str(), proto.as_str()), (name, "proto-x")] {
            let miss = FlowFacts {
                alpn: Some(alpn),
                ..f
            };
            let miss = FlowFacts {
                service: svc,
                ..miss
            };
            assert!(!fx.decide(&miss, &live).is_allow(), "{svc} {alpn}");
        }
    }
}

#[test]
fn multi_service_rules_apply_to_each_named_service() {
    let live = LiveFacts::default();
    let r = Rule::new("both", Action::Allow, named(&["redis", "pg", "redis"]));
    let fx = Fixture::new(vec![deny("d-redis-only"), r]);
    assert_eq!(fx.decide(&flow(0), &live), denied(0));
    let pg = FlowFacts::plain("pg", v4(10, 1, 2, 3), 0);
    assert_eq!(fx.decide(&pg, &live).decided_by, DecidedBy::Rule(1));
}

#[test]
fn revocation_identity_first_then_certificate() {
    let fp = [9u8; 32];
    let id = PeerIdentity {
        spiffe_id: Some("spiffe://corp.example/a"),
        fingerprint: Some(&fp),
        ..PeerIdentity::default()
    };
    let fx = Fixture::new(vec![allow("a")]);
    let f = ident(flow(0), id);
    let mut live = LiveFacts::default();
    assert!(fx.decide(&f, &live).is_allow());
    live.revoked_fingerprints.insert(fp);
    let d = fx.decide(&f, &live);
    assert_eq!(
        (d.verdict, d.decided_by, d.reason),
        (
            Verdict::Deny,
            DecidedBy::RevokedCertificate,
            Reason::Revoked
        )
    );
    live.revoked_ids.insert("spiffe://corp.example/a".into());
    assert_eq!(fx.decide(&f, &live).decided_by, DecidedBy::RevokedIdentity);
    assert_eq!(
        fx.table.decided_by_name(DecidedBy::RevokedIdentity),
        "revoked-identity"
    );
    // Revocation applies even to services no rule names.
    let unknown = FlowFacts {
        service: "nope",
        ..f
    };
    assert_eq!(
        fx.decide(&unknown, &live).decided_by,
        DecidedBy::RevokedIdentity
    );
    // No identity, nothing to revoke.
    assert!(fx.decide(&flow(0), &live).is_allow());
}

#[test]
fn spiffe_exact_and_prefix() {
    let live = LiveFacts::default();
    let mut exact = allow("exact");
    exact.principals = Some(vec![Principal::SpiffeExact(sid("spiffe://td/ns/a"))]);
    let mut under = allow("under");
    under.principals = Some(vec![Principal::SpiffeUnder(sid("spiffe://td/ns/b"))]);
    let mut domain = allow("domain");
    domain.principals = Some(vec![Principal::SpiffeUnder(sid("spiffe://other"))]);
    let fx = Fixture::new(vec![exact, under, domain]);
    let cases = [
        ("spiffe://td/ns/a", Some(0)),
        ("spiffe://td/ns/a/x", None),
        ("spiffe://td/ns/b", None),
        ("spiffe://td/ns/b/x", Some(1)),
        ("spiffe://td/ns/b/x/y", Some(1)),
        ("spiffe://td/ns/bb/x", None),
        ("spiffe://td/ns/b/", Some(1)),
        ("spiffe://other", None),
        ("spiffe://other/w", Some(2)),
        ("spiffe://otherx/w", None),
        ("spiffe://td/ns", None),
        ("td/ns/b/x", None),
    ];
    for (id, want) in cases {
        let d = fx.decide(&with_id(flow(0), id), &live);
        assert_eq!(
            d.decided_by,
            want.map_or(DecidedBy::DefaultDeny, DecidedBy::Rule),
            "{id}"
        );
    }
    // No identity at all matches only "anyone".
    assert!(!fx.decide(&flow(0), &live).is_allow());
}

#[test]
fn dns_and_cn_scoped_to_a_trust_domain() {
    let live = LiveFacts::default();
    let mut dns = allow("dns-in-corp");
    dns.principals = Some(vec![Principal::DnsSanIn {
        trust_domain: "corp.example".into(),
        name: "db.corp".into(),
    }]);
    let mut cn = allow("alice-in-partner");
    cn.principals = Some(vec![
        Principal::CommonNameIn {
            trust_domain: "partner.example".into(),
            name: "alice".into(),
        },
        // The same name scoped to a second trust domain: both scopes are kept.
        Principal::CommonNameIn {
            trust_domain: "corp.example".into(),
            name: "alice".into(),
        },
    ]);
    let fx = Fixture::new(vec![dns, cn]);
    let sans = ["db.corp"];
    let with = |spiffe_id: Option<&'static str>, cn: Option<&'static str>| PeerIdentity {
        spiffe_id,
        dns_sans: &sans,
        common_name: cn,
        ..PeerIdentity::default()
    };
    let decided = |id| fx.decide(&ident(flow(0), id), &live).decided_by;
    assert_eq!(
        decided(with(Some("spiffe://corp.example/db"), None)),
        DecidedBy::Rule(0)
    );
    assert_eq!(
        decided(with(Some("spiffe://partner.example/db"), Some("alice"))),
        DecidedBy::Rule(1)
    );
    assert_eq!(
        decided(with(Some("spiffe://corp.example"), Some("alice"))),
        DecidedBy::Rule(0)
    );
    // Another trust domain, one that merely starts like it, and no SPIFFE ID at all.
    for id in [
        Some("spiffe://partner.example/db"),
        Some("spiffe://corp.examplex/db"),
        None,
    ] {
        assert!(!fx.decide(&ident(flow(0), with(id, None)), &live).is_allow());
    }
    assert!(!fx
        .decide(
            &ident(
                flow(0),
                with(Some("spiffe://other.example/x"), Some("alice"))
            ),
            &live
        )
        .is_allow());
}

#[test]
fn dns_cn_fingerprint_and_anyone() {
    let live = LiveFacts::default();
    let fp = [3u8; 32];
    let mut dns = allow("dns");
    dns.principals = Some(vec![Principal::DnsSan("db.corp".into())]);
    let mut cn = allow("cn");
    cn.principals = Some(vec![Principal::CommonName("alice".into())]);
    let mut fpr = allow("fp");
    fpr.principals = Some(vec![Principal::Fingerprint(fp)]);
    let mut anyone = allow("anyone");
    anyone.principals = Some(vec![Principal::CommonName("bob".into()), Principal::Any]);
    anyone.sources = Some(vec![cidr("192.0.2.0/24")]);
    let fx = Fixture::new(vec![dns, cn, fpr, anyone]);
    let sans = ["x.corp", "db.corp"];
    let by_dns = PeerIdentity {
        dns_sans: &sans,
        ..PeerIdentity::default()
    };
    assert_eq!(
        fx.decide(&ident(flow(0), by_dns), &live).decided_by,
        DecidedBy::Rule(0)
    );
    let by_cn = PeerIdentity {
        common_name: Some("alice"),
        ..PeerIdentity::default()
    };
    assert_eq!(
        fx.decide(&ident(flow(0), by_cn), &live).decided_by,
        DecidedBy::Rule(1)
    );
    let by_fp = PeerIdentity {
        fingerprint: Some(&fp),
        ..PeerIdentity::default()
    };
    assert_eq!(
        fx.decide(&ident(flow(0), by_fp), &live).decided_by,
        DecidedBy::Rule(2)
    );
    let nobody = PeerIdentity {
        common_name: Some("Alice"),
        ..PeerIdentity::default()
    };
    assert!(!fx.decide(&ident(flow(0), nobody), &live).is_allow());
    // `Any` among principals admits a flow without identity.
    let plain = FlowFacts::plain("redis", v4(192, 0, 2, 1), 0);
    assert_eq!(fx.decide(&plain, &live).decided_by, DecidedBy::Rule(3));
}

#[test]
fn many_matching_principals_overflow_path() {
    // More matching DNS SANs than the decision keeps on its stack.
    let names: Vec<String> = (0..40).map(|i| format!("h{i}.corp")).collect();
    let mut rules = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut r = if i == 37 { deny(n) } else { allow(n) };
        r.principals = Some(vec![Principal::DnsSan(n.clone())]);
        rules.push(r);
    }
    let fx = Fixture::new(rules);
    let sans: Vec<&str> = names.iter().map(String::as_str).collect();
    let id = PeerIdentity {
        dns_sans: &sans,
        ..PeerIdentity::default()
    };
    assert_eq!(
        fx.decide(&ident(flow(0), id), &LiveFacts::default()),
        denied(37)
    );
}

#[test]
fn sources_v4_v6_nested_and_mapped() {
    let live = LiveFacts::default();
    let mut narrow = deny("narrow");
    narrow.sources = Some(vec![cidr("10.1.2.0/24"), cidr("10.1.2.128/25")]);
    let mut wide = allow("wide");
    wide.sources = Some(vec![cidr("10.0.0.0/8"), cidr("2001:db8::/32")]);
    let mut all4 = allow("all4");
    all4.sources = Some(vec![cidr("0.0.0.0/0")]);
    let fx = Fixture::new(vec![narrow, wide, all4]);
    let at = |ip: IpAddr| FlowFacts::plain("redis", ip, 0);
    let rule = |ip| fx.decide(&at(ip), &live).decided_by;
    assert_eq!(rule(v4(10, 1, 2, 3)), DecidedBy::Rule(0));
    assert_eq!(rule(v4(10, 1, 2, 255)), DecidedBy::Rule(0));
    assert_eq!(rule(v4(10, 1, 3, 0)), DecidedBy::Rule(1));
    assert_eq!(rule(v4(10, 255, 255, 255)), DecidedBy::Rule(1));
    assert_eq!(rule(v4(11, 0, 0, 0)), DecidedBy::Rule(2));
    assert_eq!(rule(v4(255, 255, 255, 255)), DecidedBy::Rule(2));
    assert_eq!(rule(v4(0, 0, 0, 0)), DecidedBy::Rule(2));
    let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    assert_eq!(rule(IpAddr::V6(v6)), DecidedBy::Rule(1));
    assert_eq!(
        rule(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        DecidedBy::DefaultDeny
    );
    assert_eq!(
        rule(IpAddr::V6(Ipv6Addr::from(u128::MAX))),
        DecidedBy::DefaultDeny
    );
    // IPv4-mapped IPv6 is not converted to IPv4.
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
    assert_eq!(rule(mapped), DecidedBy::DefaultDeny);
}

#[test]
fn full_v6_range_and_host_routes() {
    let live = LiveFacts::default();
    let mut host = allow("host");
    host.sources = Some(vec![cidr("::/0"), cidr("255.255.255.255/32")]);
    let fx = Fixture::new(vec![host]);
    let at = |ip: IpAddr| FlowFacts::plain("redis", ip, 0);
    assert!(fx
        .decide(&at(IpAddr::V6(Ipv6Addr::from(u128::MAX))), &live)
        .is_allow());
    assert!(fx.decide(&at(v4(255, 255, 255, 255)), &live).is_allow());
    assert!(!fx.decide(&at(v4(255, 255, 255, 254)), &live).is_allow());
}

#[test]
fn sni_exact_and_one_label_wildcard() {
    let live = LiveFacts::default();
    let mut r = allow("a");
    r.sni = Some(vec![
        "db.corp.example".into(),
        "*.cache.corp.example".into(),
    ]);
    let fx = Fixture::new(vec![r]);
    let cases = [
        (Some("db.corp.example"), true),
        (Some("r1.cache.corp.example"), true),
        (Some("*.cache.corp.example"), true),
        (Some("a.b.cache.corp.example"), false),
        (Some(".cache.corp.example"), false),
        (Some("cache.corp.example"), false),
        (Some("r1xcache.corp.example"), false),
        (Some("x.db.corp.example"), false),
        (None, false),
    ];
    for (sni, want) in cases {
        let f = FlowFacts { sni, ..flow(0) };
        assert_eq!(fx.decide(&f, &live).is_allow(), want, "{sni:?}");
    }
}

#[test]
fn alpn_and_unconstrained_dimensions() {
    let live = LiveFacts::default();
    let mut r = allow("a");
    r.alpn = Some(vec!["h2".into()]);
    let fx = Fixture::new(vec![r, deny("d")]);
    let f = |alpn| FlowFacts { alpn, ..flow(0) };
    assert_eq!(fx.decide(&f(Some("h2")), &live), denied(1));
    let fx = Fixture::new(vec![{
        let mut r = allow("a");
        r.alpn = Some(vec!["h2".into()]);
        r
    }]);
    assert!(fx.decide(&f(Some("h2")), &live).is_allow());
    assert!(!fx.decide(&f(Some("http/1.1")), &live).is_allow());
    assert!(!fx.decide(&f(None), &live).is_allow());
}

/// 2026-03-07 (a Saturday) 10:05:30 in America/New_York (EST, UTC-5).
const SAT_NY_1005: i64 = 1_772_895_930;

#[test]
fn schedule_days_ranges_and_range_end() {
    let live = LiveFacts::default();
    let mut r = allow("a");
    r.schedule = Some(schedule(
        0b110_0000,
        &[(9 * 60, 10 * 60 + 5), (10 * 60 + 30, 11 * 60)],
        "America/New_York",
    ));
    let fx = Fixture::new(vec![r]);
    assert!(!fx.decide(&flow(SAT_NY_1005), &live).is_allow());
    let t = SAT_NY_1005 - 31; // 10:04:59
    assert_eq!(
        fx.decide(&flow(t), &live),
        allowed(
            0,
            Constraints {
                schedule_end: Some(t + 1),
                ..Constraints::default()
            }
        )
    );
    let t = SAT_NY_1005 + 24 * 60 + 30; // 10:30:00
    assert_eq!(
        fx.decide(&flow(t), &live).constraints.schedule_end,
        Some(t + 30 * 60)
    );
    // Friday, same wall time: wrong day.
    assert!(!fx.decide(&flow(t - 86_400), &live).is_allow());
}

#[test]
fn schedule_across_dst_change() {
    // 2026-03-08 02:00 EST New York springs forward to 03:00 EDT. 01:30 EST is
    // 06:30 UTC; the range 00:00-04:00 ends, with the offset in force at 01:30,
    // 2.5 hours later.
    let live = LiveFacts::default();
    let mut r = allow("a");
    r.schedule = Some(schedule(0b111_1111, &[(0, 4 * 60)], "America/New_York"));
    let fx = Fixture::new(vec![r]);
    let t = 1_772_951_400; // 2026-03-08T06:30:00Z
    assert_eq!(
        fx.decide(&flow(t), &live).constraints.schedule_end,
        Some(t + 150 * 60)
    );
    // An hour later it is 03:30 EDT: 30 minutes left.
    assert_eq!(
        fx.decide(&flow(t + 3600), &live).constraints.schedule_end,
        Some(t + 3600 + 30 * 60)
    );
    // 04:00 EDT: outside.
    assert!(!fx.decide(&flow(t + 5400), &live).is_allow());
}

#[test]
fn schedule_far_future_and_unrepresentable_instants() {
    let live = LiveFacts::default();
    let mut r = allow("a");
    r.schedule = Some(schedule(0b111_1111, &[(0, 12 * 60)], "Europe/London"));
    let fx = Fixture::new(vec![r]);
    for t in [
        i64::MIN,
        -377_705_023_202,
        -377_705_023_201,
        0,
        4_102_444_800 + 5 * 12_622_780_800 + 40_000,
        253_402_207_200,
        253_402_207_201,
        i64::MAX,
    ] {
        fx.decide(&flow(t), &live);
    }
}

#[test]
fn unknown_time_zone_is_a_compile_error() {
    let mut r = allow("a");
    r.schedule = Some(schedule(1, &[(0, 60)], "Nowhere/Special"));
    let err = DecisionTable::compile(&policy(vec![r]), 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "rule `a` uses unknown time zone `Nowhere/Special`"
    );
}

fn posture_live(p: DevicePosture) -> LiveFacts {
    let mut live = LiveFacts::default();
    live.posture.insert("dev1".into(), p);
    live
}

#[test]
fn posture_fails_closed() {
    let mut r = allow("a");
    r.posture = Some(PostureRequirement {
        managed: true,
        compliant: true,
        edr_running: true,
        min_os_patch: Some(20_261_001),
    });
    let fx = Fixture::new(vec![r]);
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
    assert!(fx.decide(&f, &posture_live(good)).is_allow());
    for bad in [
        DevicePosture {
            compromised: true,
            ..good
        },
        DevicePosture {
            managed: false,
            ..good
        },
        DevicePosture {
            compliant: false,
            ..good
        },
        DevicePosture {
            edr_running: false,
            ..good
        },
        DevicePosture {
            os_patch: 20_261_000,
            ..good
        },
    ] {
        assert!(!fx.decide(&f, &posture_live(bad)).is_allow(), "{bad:?}");
    }
    // No device id, or a device nobody reported.
    assert!(!fx.decide(&flow(0), &posture_live(good)).is_allow());
    let other = FlowFacts {
        device_id: Some("dev2"),
        ..flow(0)
    };
    assert!(!fx.decide(&other, &posture_live(good)).is_allow());
    // An empty requirement still needs a known, uncompromised device.
    let mut r = allow("a");
    r.posture = Some(PostureRequirement::default());
    let fx = Fixture::new(vec![r]);
    assert!(fx
        .decide(&f, &posture_live(DevicePosture::default()))
        .is_allow());
    assert!(!fx.decide(&f, &LiveFacts::default()).is_allow());
}

#[test]
fn failed_residual_falls_through_to_the_next_rule() {
    let mut d = deny("d-posture");
    d.posture = Some(PostureRequirement::default()); // only denies known devices
    let mut a = allow("a-risk");
    a.max_risk = Some(10);
    let fx = Fixture::new(vec![d, a, allow("a-last")]);
    let id = "spiffe://corp/x";
    let mut live = LiveFacts::default();
    assert_eq!(
        fx.decide(&with_id(flow(0), id), &live).decided_by,
        DecidedBy::Rule(1)
    );
    live.risk_by_id.insert(id.into(), 11);
    assert_eq!(
        fx.decide(&with_id(flow(0), id), &live).decided_by,
        DecidedBy::Rule(2)
    );
    live.posture.insert("dev".into(), DevicePosture::default());
    let f = FlowFacts {
        device_id: Some("dev"),
        ..with_id(flow(0), id)
    };
    assert_eq!(fx.decide(&f, &live), denied(0));
}

#[test]
fn risk_is_the_higher_of_identity_and_device() {
    let mut r = allow("a");
    r.max_risk = Some(40);
    let fx = Fixture::new(vec![r]);
    let id = "spiffe://corp/a";
    let f = FlowFacts {
        device_id: Some("dev1"),
        ..with_id(flow(0), id)
    };
    let mut live = LiveFacts::default();
    assert!(fx.decide(&f, &live).is_allow());
    live.risk_by_id.insert(id.into(), 40);
    assert!(fx.decide(&f, &live).is_allow());
    live.risk_by_device.insert("dev1".into(), 41);
    assert!(!fx.decide(&f, &live).is_allow());
    live.risk_by_device.insert("dev1".into(), 0);
    live.risk_by_id.insert(id.into(), 100);
    assert!(!fx.decide(&f, &live).is_allow());
}

#[test]
fn certificate_age() {
    let mut r = allow("a");
    r.max_cert_age_secs = Some(3600);
    let fx = Fixture::new(vec![r]);
    let live = LiveFacts::default();
    let aged = |a| FlowFacts {
        cert_age_secs: a,
        ..flow(0)
    };
    assert!(fx.decide(&aged(Some(3600)), &live).is_allow());
    assert!(!fx.decide(&aged(Some(3601)), &live).is_allow());
    assert!(!fx.decide(&aged(None), &live).is_allow());
}

#[test]
fn grants_and_expiry_boundary() {
    let mut r = allow("a");
    r.requires_grant = true;
    r.max_session_secs = Some(300);
    let fx = Fixture::new(vec![r]);
    let id = "spiffe://corp/oncall";
    let f = with_id(flow(1000), id);
    let mut live = LiveFacts::default();
    assert!(!fx.decide(&f, &live).is_allow());
    live.grants
        .entry("redis".into())
        .or_default()
        .insert(id.into(), 1000);
    assert!(!fx.decide(&f, &live).is_allow(), "end is exclusive");
    live.grants
        .entry("redis".into())
        .or_default()
        .insert(id.into(), 1001);
    assert_eq!(
        fx.decide(&f, &live),
        allowed(
            0,
            Constraints {
                grant_end: Some(1001),
                schedule_end: None,
                max_session_secs: Some(300)
            }
        )
    );
    // Grant on another service, or no SPIFFE ID: no.
    let other = FlowFacts { service: "pg", ..f };
    assert!(!fx.decide(&other, &live).is_allow());
    assert!(!fx.decide(&flow(1000), &live).is_allow());
}

#[test]
fn constraints_come_from_the_deciding_rule_only() {
    let id = "spiffe://corp/oncall";
    let mut a0 = allow("a0");
    a0.sources = Some(vec![cidr("192.0.2.0/24")]);
    a0.max_session_secs = Some(1);
    let mut a1 = allow("a1");
    a1.requires_grant = true;
    a1.schedule = Some(schedule(0b111_1111, &[(0, 1440)], "UTC"));
    let mut a2 = allow("a2");
    a2.max_session_secs = Some(7);
    let fx = Fixture::new(vec![a0, a1, a2]);
    let t = 86_400 * 3 + 100;
    let mut live = LiveFacts::default();
    live.grants
        .entry("redis".into())
        .or_default()
        .insert(id.into(), t + 5000);
    assert_eq!(
        fx.decide(&with_id(flow(t), id), &live),
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
fn wide_tables_span_chunks() {
    // 1,200 rules on one service: 19 bitset words, three chunks. Only the last rule
    // matches this source; a deny in the last chunk beats an allow in the first.
    let mut rules = Vec::new();
    for i in 0..1200u32 {
        let mut r = allow(&format!("r{i}"));
        r.sources = Some(vec![cidr(&format!("10.{}.{}.0/24", i / 256, i % 256))]);
        rules.push(r);
    }
    let mut last = deny("last");
    last.sources = Some(vec![cidr("10.0.0.0/8")]);
    rules.push(last);
    let fx = Fixture::new(rules);
    let live = LiveFacts::default();
    let at = |ip| FlowFacts::plain("redis", ip, 0);
    assert_eq!(fx.decide(&at(v4(10, 0, 5, 1)), &live), denied(1200));
    assert_eq!(fx.decide(&at(v4(10, 9, 9, 9)), &live), denied(1200));
    assert_eq!(
        fx.decide(&at(v4(11, 0, 0, 1)), &live).decided_by,
        DecidedBy::DefaultDeny
    );
    assert_eq!(fx.table.rule_count(), 1201);
    assert_eq!(fx.table.rule_id(1200), Some("last"));
    assert_eq!(fx.table.rule_id(1201), None);
}

#[test]
fn accessors() {
    let fx = Fixture::new(vec![allow("a")]);
    assert_eq!(fx.table.version(), 42);
    assert_eq!(fx.table.policy_hash(), &[7; 32]);
    assert_eq!(fx.decoded.version(), 42);
    assert_eq!(fx.decoded.policy_hash(), &[7; 32]);
    assert!(fx.table.heap_bytes() > 0);
    assert_eq!(fx.table.decided_by_name(DecidedBy::Rule(9)), "unknown-rule");
    assert_eq!(
        fx.table.decided_by_name(DecidedBy::RevokedCertificate),
        "revoked-certificate"
    );
}

/// Sub-tables of one and two bitset words take their own path in `decide`, wider ones
/// the general one: around the 64 / 128 rule edges, every decision (checked against
/// the reference and the decoded table by `Fixture`) must name the same rule, and
/// rules in the second and third words must decide some flows.
#[test]
fn sub_tables_around_the_word_edges_decide_like_the_reference() {
    let live = LiveFacts::default();
    for n in [63usize, 64, 65, 100, 127, 128, 129, 200] {
        let rules: Vec<Rule> = (0..n)
            .map(|i| {
                let mut r = if i % 7 == 3 {
                    deny(&format!("d{i}"))
                } else {
                    allow(&format!("a{i}"))
                };
                r.principals = Some(vec![if i % 5 == 0 {
                    Principal::SpiffeUnder(sid("spiffe://td/ns"))
                } else {
                    Principal::SpiffeExact(sid(&format!("spiffe://td/ns/w{}", i % 17)))
                }]);
                if i % 3 == 0 {
                    r.sources = Some(vec![cidr(&format!("10.{}.0.0/16", i % 4))]);
                }
                if i % 11 == 0 {
                    r.sni = Some(vec![format!("h{}.example", i % 2)]);
                }
                if i % 9 == 0 {
                    r.alpn = Some(vec!["h2".to_owned()]);
                }
                // Past 64 rules, the first word only matches sources far from the
                // flows below, so rules in the second and third words get their turn.
                if i < 64 && n > 64 {
                    r.sources = Some(vec![cidr("192.0.2.0/24")]);
                }
                r
            })
            .collect();
        let fx = Fixture::new(rules);
        let mut late = 0;
        for j in 0..60u8 {
            let id = format!("spiffe://td/ns/w{}", j % 19);
            let sni = format!("h{}.example", j % 3);
            let mut f = with_id(flow(0), &id);
            f.source = v4(10, j % 5, 1, 1);
            f.sni = (j % 2 == 0).then_some(sni.as_str());
            f.alpn = (j % 3 == 0).then_some("h2");
            if let DecidedBy::Rule(r) = fx.decide(&f, &live).decided_by {
                late += usize::from(r >= 64);
            }
        }
        if n > 64 {
            assert!(
                late > 0,
                "{n} rules: no decision by a rule past the first word"
            );
        }
    }
}

#[test]
fn eytzinger_ipv4_search_matches_a_sorted_search() {
    for n in 0..70u32 {
        // Ascending starts from 0, uneven gaps; rows distinct.
        let starts: Vec<u32> = (0..n).map(|i| i * 1000 + (i % 7) * 13).collect();
        let rows: Vec<u32> = (0..n).map(|i| 100 + i).collect();
        // Something before the span, so offsets are exercised.
        let (mut es, mut er) = (vec![9, 9], vec![9, 9]);
        let span = crate::eytzinger_v4(&starts, &rows, &mut es, &mut er).unwrap();
        let (es, er) = (&es[span.range()], &er[span.range()]);
        let probes = starts
            .iter()
            .flat_map(|&s| [s, s.wrapping_sub(1), s + 1])
            .chain([0, 1, u32::MAX, 123_456]);
        for a in probes {
            let want = starts
                .partition_point(|&s| s <= a)
                .checked_sub(1)
                .map(|i| rows[i]);
            assert_eq!(
                crate::decide::v4_row(es, er, a).copied(),
                want,
                "{n} ranges, address {a}"
            );
        }
    }
}
