//! Write the seed corpus of the `decode_table` fuzz target: a few encoded tables.
//!
//! `cargo run -p zgate-table --example fuzz_corpus -- crates/table/fuzz/corpus/decode_table`

use std::net::IpAddr;

use zgate_policy::model::{
    Action, Cidr, MinuteRange, Policy, PostureRequirement, Principal, Rule, Schedule,
    ServiceSelector, SpiffeId, Weekdays,
};
use zgate_table::DecisionTable;

fn cidr(addr: &str, prefix_len: u8) -> Option<Cidr> {
    Some(Cidr {
        addr: addr.parse::<IpAddr>().ok()?,
        prefix_len,
    })
}

fn named(names: &[&str]) -> ServiceSelector {
    ServiceSelector::Named(names.iter().map(|s| (*s).to_owned()).collect())
}

fn policy(rules: Vec<Rule>) -> Policy {
    Policy {
        groups: Vec::new(),
        services: Vec::new(),
        rules,
        source_hash: [1; 32],
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: fuzz_corpus OUTPUT_DIR")?;
    std::fs::create_dir_all(&dir)?;

    let td = |segs: &[&str]| SpiffeId {
        trust_domain: "td".into(),
        segments: segs.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut a = Rule::new("a", Action::Allow, named(&["redis"]));
    a.principals = Some(vec![
        Principal::SpiffeExact(td(&["ns", "a", "b"])),
        Principal::SpiffeUnder(td(&["ns"])),
        Principal::DnsSan("db.corp".into()),
        Principal::CommonName("alice".into()),
        Principal::DnsSanIn {
            trust_domain: "td".into(),
            name: "db.corp".into(),
        },
        Principal::CommonNameIn {
            trust_domain: "other.td".into(),
            name: "alice".into(),
        },
        Principal::Fingerprint([5; 32]),
    ]);
    a.sources = [cidr("10.0.0.0", 8), cidr("2001:db8::", 32)]
        .into_iter()
        .collect();
    a.sni = Some(vec!["db.corp".into(), "*.cache.corp".into()]);
    a.alpn = Some(vec!["h2".into()]);
    a.schedule = Some(Schedule {
        days: Weekdays(0b001_1111),
        ranges: vec![MinuteRange {
            start_minute: 540,
            end_minute: 1020,
        }],
        time_zone: "UTC".into(),
    });
    a.posture = Some(PostureRequirement {
        managed: true,
        compliant: true,
        edr_running: false,
        min_os_patch: Some(20_260_101),
    });
    a.max_risk = Some(40);
    a.max_cert_age_secs = Some(3600);
    a.max_session_secs = Some(600);
    a.requires_grant = true;
    let mut d = Rule::new("d", Action::Deny, ServiceSelector::Any);
    d.sources = [cidr("192.0.2.0", 24)].into_iter().collect();
    let b = Rule::new("b", Action::Allow, named(&["pg", "redis"]));

    let mut wide = Vec::new();
    for i in 0..70u8 {
        let mut r = Rule::new(
            format!("w{i}"),
            if i % 7 == 0 {
                Action::Deny
            } else {
                Action::Allow
            },
            named(&["svc"]),
        );
        r.sources = [cidr(&format!("10.{i}.0.0"), 16)].into_iter().collect();
        wide.push(r);
    }

    for (name, rules) in [
        ("small", vec![a, d, b]),
        ("empty", Vec::new()),
        ("wide", wide),
    ] {
        let bytes = DecisionTable::compile(&policy(rules), 3)?.encode();
        std::fs::write(format!("{dir}/{name}"), bytes)?;
    }
    Ok(())
}
