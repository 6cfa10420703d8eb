//! Property tests: no input makes the parser panic, valid output keeps the model's
//! invariants, and printed values read back as themselves.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use zgate_policy::model::{Action, Cidr, Policy};
use zgate_policy::{
    parse_cidr, parse_duration, parse_fingerprint, parse_policy, parse_principal, parse_spiffe_id,
    SourceFile,
};

fn files(texts: &[String]) -> Vec<SourceFile> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| SourceFile {
            name: format!("{i:02}.toml"),
            text: t.clone(),
        })
        .collect()
}

/// Values a fuzzer-minded author would put in a rule: valid, nearly valid and wrong.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"allow\"".to_owned()),
        Just("\"deny\"".to_owned()),
        Just("[\"*\"]".to_owned()),
        Just("[]".to_owned()),
        Just("true".to_owned()),
        Just("101".to_owned()),
        Just("{ managed = true }".to_owned()),
        Just("{ days = [\"mon-fri\"], hours = [\"09:00-17:00\"], time_zone = \"UTC\" }".to_owned()),
        Just("{ days = [\"sun-mon\"], hours = [\"17:00-09:00\"], time_zone = \"X\" }".to_owned()),
        "\"[a-z0-9*:/._ -]{0,12}\"",
        "\\[(\"(spiffe://[a-z.]{1,6}(/[a-z*]{1,4}){0,3}|group:[a-c]|cn:[a-z]{1,3}|[0-9./]{1,12})\", ){0,4}\\]",
        "[0-9]{1,4}",
    ]
}

fn key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "id",
        "action",
        "services",
        "principals",
        "sources",
        "sni",
        "alpn",
        "schedule",
        "posture",
        "max_risk",
        "max_cert_age",
        "max_session",
        "requires_grant",
        "acknowledge_broad",
        "bogus",
    ])
}

/// A file of random `[[rule]]`/`[[group]]` tables with random keys and values.
fn policy_text() -> impl Strategy<Value = String> {
    let table = (
        prop::sample::select(vec!["[[rule]]", "[[group]]", "[[service]]"]),
        prop::collection::vec((key(), value()), 0..8),
        "[a-c]",
    )
        .prop_map(|(header, kvs, name)| {
            let mut t = format!("{header}\nname = \"{name}\"\nmembers = [\"group:{name}\"]\n");
            if header == "[[rule]]" {
                t = format!("{header}\n");
            }
            for (k, v) in kvs {
                t.push_str(&format!("{k} = {v}\n"));
            }
            t
        });
    prop::collection::vec(table, 0..6).prop_map(|ts| ts.concat())
}

/// The model invariants `model.rs` promises for every parsed policy.
fn assert_invariants(p: &Policy) {
    for r in &p.rules {
        assert!(r.principals.as_ref().is_none_or(|v| !v.is_empty()));
        assert!(r.sources.as_ref().is_none_or(|v| !v.is_empty()));
        assert!(r.sni.as_ref().is_none_or(|v| !v.is_empty()));
        assert!(r.alpn.as_ref().is_none_or(|v| !v.is_empty()));
        if let Some(s) = &r.schedule {
            assert!(s.days.0 != 0 && s.days.0 < 0x80);
            assert!(!s.ranges.is_empty());
            for (a, b) in s.ranges.iter().zip(s.ranges.iter().skip(1)) {
                assert!(a.end_minute <= b.start_minute);
            }
            for m in &s.ranges {
                assert!(m.start_minute < m.end_minute && m.end_minute <= 1440);
            }
        }
        if r.action == Action::Deny {
            assert!(r.posture.is_none() && r.max_risk.is_none());
            assert!(r.max_cert_age_secs.is_none() && r.max_session_secs.is_none());
            assert!(!r.requires_grant);
        }
        assert!(r.max_risk.is_none_or(|v| v <= 100));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parse_never_panics_on_arbitrary_text(a in ".{0,300}", b in "[\\[\\]a-z_=\"{}, \n*:/.0-9-]{0,300}") {
        let _ = parse_policy(&files(&[a, b]));
    }

    #[test]
    fn structured_policies_parse_or_fail_cleanly(a in policy_text(), b in policy_text()) {
        let given = files(&[a, b]);
        match parse_policy(&given) {
            Ok(c) => assert_invariants(&c.policy),
            Err(e) => {
                for err in e.errors() {
                    let line = err.to_string();
                    prop_assert!(!line.contains('\n'), "one line per error: {line:?}");
                    prop_assert!(err.origin.line >= 1 && err.origin.column >= 1);
                }
            }
        }
        // The order files are given in does not matter.
        let mut reversed = given.clone();
        reversed.reverse();
        prop_assert_eq!(parse_policy(&given), parse_policy(&reversed));
    }

    #[test]
    fn single_value_parsers_never_panic(s in ".{0,100}") {
        let _ = parse_spiffe_id(&s);
        let _ = parse_principal(&s);
        let _ = parse_cidr(&s);
        let _ = parse_duration(&s);
        let _ = parse_fingerprint(&s);
    }

    #[test]
    fn principal_display_reparses(s in prop_oneof![
        Just("*".to_owned()),
        "spiffe://[a-z0-9._-]{1,12}(/[A-Za-z0-9._-]{1,6}){0,4}(/\\*)?",
        "dns:[a-zA-Z0-9._-]{1,30}",
        "cn:.{1,20}",
        "sha256:[0-9a-fA-F]{64}",
        "sha256:([0-9a-fA-F]{2}:){31}[0-9a-fA-F]{2}",
        ".{0,40}",
    ]) {
        if let Ok(p) = parse_principal(&s) {
            prop_assert_eq!(parse_principal(&p.to_string()), Ok(p));
        }
    }

    #[test]
    fn cidr_display_reparses(v4 in any::<u32>(), v6 in any::<u128>(), l4 in 0u8..=32, l6 in 0u8..=128, s in "[0-9a-f:./]{1,45}") {
        for (addr, len) in [(IpAddr::V4(Ipv4Addr::from(v4)), l4), (IpAddr::V6(Ipv6Addr::from(v6)), l6)] {
            // Bare address: a host route.
            let host = parse_cidr(&addr.to_string());
            prop_assert_eq!(host.map(|c| c.prefix_len), Ok(if addr.is_ipv4() { 32 } else { 128 }));
            // Host bits set or not, the error or the value is consistent with Display.
            match parse_cidr(&format!("{addr}/{len}")) {
                Ok(c) => {
                    prop_assert_eq!(c.addr, addr);
                    prop_assert_eq!(parse_cidr(&c.to_string()), Ok(c));
                }
                Err(zgate_policy::CidrError::HostBitsSet { network }) => {
                    prop_assert!(network.contains(addr));
                    prop_assert_eq!(parse_cidr(&network.to_string()), Ok(network));
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        if let Ok(c) = parse_cidr(&s) {
            let back: Result<Cidr, _> = parse_cidr(&c.to_string());
            prop_assert_eq!(back, Ok(c));
        }
    }
}
