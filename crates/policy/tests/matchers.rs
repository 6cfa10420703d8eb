//! Every matcher syntax parses to the right model value; file merging, ordering and
//! the source hash.

#![expect(
    clippy::panic,
    clippy::expect_used,
    reason = "test helpers fail the test with the policy errors in the message"
)]

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use zgate_policy::model::{
    Action, Cidr, MinuteRange, Policy, PostureRequirement, Principal, Rule, Schedule,
    ServiceSelector, SpiffeId, Weekdays,
};
use zgate_policy::{parse_policy, SourceFile};

fn file(name: &str, text: &str) -> SourceFile {
    SourceFile {
        name: name.to_owned(),
        text: text.to_owned(),
    }
}

fn policy(files: &[SourceFile]) -> Policy {
    match parse_policy(files) {
        Ok(c) => c.policy,
        Err(e) => panic!("policy should be valid:\n{e}"),
    }
}

fn one_rule(body: &str) -> Rule {
    let text = format!("[[rule]]\nid = \"r\"\naction = \"allow\"\nservices = [\"svc\"]\n{body}");
    let mut p = policy(&[file("p.toml", &text)]);
    assert_eq!(p.rules.len(), 1);
    p.rules.remove(0)
}

fn id(td: &str, segs: &[&str]) -> SpiffeId {
    SpiffeId {
        trust_domain: td.to_owned(),
        segments: segs.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn cidr(addr: &str, prefix_len: u8) -> Cidr {
    Cidr {
        addr: addr.parse::<IpAddr>().expect("test address"),
        prefix_len,
    }
}

const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn fp_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&FP[i * 2..i * 2 + 2], 16).expect("hex");
    }
    out
}

#[test]
fn every_principal_form() {
    let r = one_rule(&format!(
        "principals = [\"spiffe://example.org/ns/ops/admin\", \"spiffe://example.org/ns/trading/*\", \
         \"spiffe://example.org/*\", \"spiffe://example.org\", \"dns:Desk7.Example.org\", \"cn:Alice Smith\", \
         \"sha256:{}\"]\n",
        FP.to_uppercase()
    ));
    assert_eq!(
        r.principals,
        Some(vec![
            Principal::SpiffeExact(id("example.org", &["ns", "ops", "admin"])),
            Principal::SpiffeUnder(id("example.org", &["ns", "trading"])),
            Principal::SpiffeUnder(id("example.org", &[])),
            Principal::SpiffeExact(id("example.org", &[])),
            Principal::DnsSan("desk7.example.org".to_owned()),
            Principal::CommonName("Alice Smith".to_owned()),
            Principal::Fingerprint(fp_bytes()),
        ])
    );
}

#[test]
fn anyone_is_kept_as_written() {
    assert_eq!(
        one_rule("principals = [\"*\"]\n").principals,
        Some(vec![Principal::Any])
    );
    assert_eq!(one_rule("").principals, None);
}

#[test]
fn groups_are_flattened_and_deduplicated() {
    let text = "\
[[group]]
name = \"ops\"
members = [\"cn:bob\", \"dns:ops.example.org\"]

[[group]]
name = \"trading-desk\"
members = [\"spiffe://example.org/ns/trading/*\", \"group:ops\", \"cn:alice\", \"cn:bob\"]

[[group]]
name = \"empty\"
members = []

[[rule]]
id = \"r\"
action = \"allow\"
services = [\"redis\"]
principals = [\"group:trading-desk\", \"cn:alice\", \"group:empty\", \"group:ops\"]
";
    let p = policy(&[file("p.toml", text)]);
    let desk = vec![
        Principal::SpiffeUnder(id("example.org", &["ns", "trading"])),
        Principal::CommonName("bob".into()),
        Principal::DnsSan("ops.example.org".into()),
        Principal::CommonName("alice".into()),
    ];
    assert_eq!(p.groups.len(), 3);
    assert_eq!(p.groups[0].name, "ops");
    assert_eq!(p.groups[1].name, "trading-desk");
    assert_eq!(p.groups[1].members, desk);
    assert_eq!((p.groups[1].origin.line, p.groups[1].origin.column), (5, 1));
    assert_eq!(p.groups[2].members, vec![]);
    assert_eq!(p.rules[0].principals, Some(desk));
}

#[test]
fn services_any_and_named() {
    assert_eq!(
        one_rule("").services,
        ServiceSelector::Named(vec!["svc".to_owned()])
    );
    let text = "[[rule]]\nid = \"r\"\naction = \"deny\"\nservices = [\"*\"]\n\
                [[rule]]\nid = \"s\"\naction = \"deny\"\nservices = [\"b\", \"a\", \"b\"]\n";
    let p = policy(&[file("p.toml", text)]);
    assert_eq!(p.rules[0].services, ServiceSelector::Any);
    assert_eq!(p.rules[0].action, Action::Deny);
    assert_eq!(
        p.rules[1].services,
        ServiceSelector::Named(vec!["b".into(), "a".into()])
    );
}

#[test]
fn sources_sni_alpn() {
    let r = one_rule(
        "sources = [\"10.20.0.0/16\", \"2001:db8:20::/48\", \"192.0.2.7\", \"10.20.0.0/16\"]\n\
         sni = [\"Redis.Trading.Example.org\", \"*.trading.example.org\"]\nalpn = [\"redis\", \"h2\"]\n",
    );
    assert_eq!(
        r.sources,
        Some(vec![
            cidr("10.20.0.0", 16),
            cidr("2001:db8:20::", 48),
            cidr("192.0.2.7", 32)
        ])
    );
    assert_eq!(
        r.sni,
        Some(vec![
            "redis.trading.example.org".to_owned(),
            "*.trading.example.org".to_owned()
        ])
    );
    assert_eq!(r.alpn, Some(vec!["redis".to_owned(), "h2".to_owned()]));
}

#[test]
fn schedule_is_sorted_and_days_unioned() {
    let r = one_rule(
        "schedule = { days = [\"mon-fri\", \"sun\"], hours = [\"13:00-18:00\", \"06:30-12:00\", \"18:00-24:00\"], time_zone = \"America/New_York\" }\n",
    );
    assert_eq!(
        r.schedule,
        Some(Schedule {
            days: Weekdays(0b101_1111),
            ranges: vec![
                MinuteRange {
                    start_minute: 390,
                    end_minute: 720
                },
                MinuteRange {
                    start_minute: 780,
                    end_minute: 1080
                },
                MinuteRange {
                    start_minute: 1080,
                    end_minute: 1440
                },
            ],
            time_zone: "America/New_York".to_owned(),
        })
    );
    let sub_table = one_rule(
        "[rule.schedule]\ndays = [\"sat\"]\nhours = [\"00:00-24:00\"]\ntime_zone = \"UTC\"\n",
    );
    assert_eq!(
        sub_table.schedule.map(|s| s.days),
        Some(Weekdays(0b010_0000))
    );
}

#[test]
fn allow_only_constraints() {
    let r = one_rule(
        "posture = { managed = true, compliant = true, edr_running = true, min_os_patch = \"2026-09-01\" }\n\
         max_risk = 40\nmax_cert_age = \"24h\"\nmax_session = \"1h30m\"\nrequires_grant = true\nacknowledge_broad = true\n",
    );
    assert_eq!(
        r.posture,
        Some(PostureRequirement {
            managed: true,
            compliant: true,
            edr_running: true,
            min_os_patch: Some(20_260_901),
        })
    );
    assert_eq!(r.max_risk, Some(40));
    assert_eq!(r.max_cert_age_secs, Some(86_400));
    assert_eq!(r.max_session_secs, Some(5_400));
    assert!(r.requires_grant);
    assert!(r.acknowledge_broad);
    // A bare TOML date means the same as the string form; max_risk bounds are inclusive.
    let r = one_rule("posture = { min_os_patch = 2026-10-01 }\nmax_risk = 0\n");
    assert_eq!(r.posture.and_then(|p| p.min_os_patch), Some(20_261_001));
    assert_eq!(r.max_risk, Some(0));
    assert_eq!(one_rule("max_risk = 100\n").max_risk, Some(100));
}

#[test]
fn unconstrained_rule_defaults() {
    let r = one_rule("");
    let mut expected = Rule::new(
        "r",
        Action::Allow,
        ServiceSelector::Named(vec!["svc".into()]),
    );
    expected.origin = r.origin.clone();
    assert_eq!(r, expected);
    assert_eq!(
        (r.origin.file.as_str(), r.origin.line, r.origin.column),
        ("p.toml", 1, 1)
    );
}

#[test]
fn rules_ordered_by_file_name_then_position_and_hash_is_order_free() {
    let a = file("10-base.toml", "[[rule]]\nid = \"a1\"\naction = \"deny\"\nservices = [\"*\"]\nsources = [\"192.0.2.0/24\"]\n[[rule]]\nid = \"a2\"\naction = \"allow\"\nservices = [\"x\"]\n");
    let b = file(
        "20-more.toml",
        "[[rule]]\nid = \"b1\"\naction = \"allow\"\nservices = [\"y\"]\n",
    );
    let c = file(
        "sub/05-first.toml",
        "[[service]]\nname = \"x\"\nsensitive = true\n",
    );
    let p1 = policy(&[b.clone(), c.clone(), a.clone()]);
    let p2 = policy(&[a.clone(), b.clone(), c.clone()]);
    assert_eq!(p1, p2);
    let ids: Vec<&str> = p1.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["a1", "a2", "b1"]);
    assert_eq!(p1.rules[1].origin.line, 6);
    assert_eq!(p1.services.len(), 1);
    assert!(p1.services[0].sensitive);

    let mut h = Sha256::new();
    for f in [&a, &b, &c] {
        h.update((f.name.len() as u64).to_le_bytes());
        h.update(f.name.as_bytes());
        h.update((f.text.len() as u64).to_le_bytes());
        h.update(f.text.as_bytes());
    }
    let expected: [u8; 32] = h.finalize().into();
    assert_eq!(p1.source_hash, expected);

    let changed = file("20-more.toml", &format!("{}\n", b.text));
    assert_ne!(policy(&[a, changed, c]).source_hash, expected);
}

#[test]
fn empty_policy_is_valid_and_empty() {
    let p = policy(&[]);
    assert!(p.rules.is_empty() && p.groups.is_empty() && p.services.is_empty());
    let p = policy(&[file("empty.toml", "# nothing yet\n")]);
    assert!(p.rules.is_empty());
}
