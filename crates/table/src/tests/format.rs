//! The binary format: round trip, every load error, and hostile bytes.

use proptest::prelude::*;
use zgate_policy::model::{Action, PostureRequirement, Principal, Rule, ServiceSelector};

use super::*;
use crate::format::{reseal, CHECKSUM_LEN, HEADER_LEN, MAGIC};
use crate::{LoadError, FORMAT_VERSION};

/// A small policy touching every kind of data the format carries.
pub(crate) fn sample_rules() -> Vec<Rule> {
    let mut a = allow("a-spiffe");
    a.principals = Some(vec![
        Principal::SpiffeExact(sid("spiffe://td/ns/a")),
        Principal::SpiffeUnder(sid("spiffe://td/ns")),
        Principal::DnsSan("db.corp".into()),
        Principal::CommonName("alice".into()),
        Principal::Fingerprint([5; 32]),
    ]);
    a.sources = Some(vec![cidr("10.0.0.0/8"), cidr("2001:db8::/32")]);
    a.sni = Some(vec!["db.corp".into(), "*.cache.corp".into()]);
    a.alpn = Some(vec!["h2".into()]);
    // UTC keeps the encoding small (a DST zone carries ~1,000 transitions), so the
    // byte-by-byte loops below stay quick; DST zones round-trip in the decide tests.
    a.schedule = Some(schedule(0b001_1111, &[(9 * 60, 17 * 60)], "UTC"));
    a.posture = Some(PostureRequirement {
        managed: true,
        compliant: false,
        edr_running: true,
        min_os_patch: Some(20_260_101),
    });
    a.max_risk = Some(50);
    a.max_cert_age_secs = Some(86_400);
    a.max_session_secs = Some(3_600);
    a.requires_grant = true;
    let mut d = Rule::new("d-star", Action::Deny, ServiceSelector::Any);
    d.sources = Some(vec![cidr("192.0.2.0/24")]);
    let b = Rule::new("b-pg", Action::Allow, named(&["pg", "redis"]));
    vec![a, d, b]
}

fn sample_bytes() -> Vec<u8> {
    let p = policy(sample_rules());
    DecisionTable::compile(&p, 9).unwrap().encode()
}

#[test]
fn round_trip_is_byte_identical_and_decides_the_same() {
    let bytes = sample_bytes();
    let decoded = DecisionTable::decode(&bytes).unwrap();
    assert_eq!(decoded.encode(), bytes);
    assert_eq!(decoded.version(), 9);
    assert_eq!(decoded.rule_count(), 3);
    assert_eq!(decoded.rule_id(1), Some("d-star"));
    assert_eq!(decoded.service_names().collect::<Vec<_>>(), ["redis", "pg"]);
    // The Fixture in every decide test also checks decoded == compiled decisions.
    let fx = Fixture::new(sample_rules());
    let fp = [5u8; 32];
    let id = PeerIdentity {
        spiffe_id: Some("spiffe://td/ns/x"),
        fingerprint: Some(&fp),
        ..PeerIdentity::default()
    };
    for ip in [
        v4(10, 0, 0, 1),
        v4(192, 0, 2, 1),
        "2001:db8::5".parse().unwrap(),
    ] {
        for service in ["redis", "pg", "other"] {
            let f = FlowFacts {
                identity: Some(id),
                sni: Some("x.cache.corp"),
                alpn: Some("h2"),
                ..FlowFacts::plain(service, ip, 1_780_000_000)
            };
            fx.decide(&f, &LiveFacts::default());
        }
    }
}

#[test]
fn empty_policy_round_trips() {
    let t = DecisionTable::compile(&policy(Vec::new()), 0).unwrap();
    let d = DecisionTable::decode(&t.encode()).unwrap();
    assert_eq!(
        d.decide(&flow(0), &LiveFacts::default()),
        Decision::default_deny(Reason::UnknownService)
    );
}

#[test]
fn every_proper_prefix_is_truncated() {
    let bytes = sample_bytes();
    for n in 0..bytes.len() {
        match DecisionTable::decode(&bytes[..n]) {
            Err(LoadError::Truncated { available, .. }) => assert_eq!(available, n as u64),
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut bytes = sample_bytes();
    bytes.push(0);
    assert_eq!(
        DecisionTable::decode(&bytes).unwrap_err(),
        LoadError::TrailingBytes { extra: 1 }
    );
}

#[test]
fn any_flipped_bit_after_the_header_fails_the_checksum() {
    let bytes = sample_bytes();
    for i in HEADER_LEN..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        assert_eq!(
            DecisionTable::decode(&b).unwrap_err(),
            LoadError::ChecksumMismatch,
            "byte {i}"
        );
    }
    // Header fields are covered too: the policy version, say.
    let mut b = bytes.clone();
    b[16] ^= 1;
    assert_eq!(
        DecisionTable::decode(&b).unwrap_err(),
        LoadError::ChecksumMismatch
    );
}

#[test]
fn wrong_magic_and_version() {
    let bytes = sample_bytes();
    let mut b = bytes.clone();
    b[0] = b'X';
    let mut found = MAGIC;
    found[0] = b'X';
    assert_eq!(
        DecisionTable::decode(&b).unwrap_err(),
        LoadError::BadMagic { found }
    );
    let mut b = bytes.clone();
    b[8..12].copy_from_slice(&7u32.to_le_bytes());
    let err = DecisionTable::decode(&b).unwrap_err();
    assert_eq!(
        err,
        LoadError::UnsupportedVersion {
            found: 7,
            supported: FORMAT_VERSION
        }
    );
    assert_eq!(
        err.to_string(),
        "table format version 7 is not supported (this build reads 1)"
    );
    let mut b = bytes;
    b[12] = 1;
    reseal(&mut b);
    assert_eq!(
        DecisionTable::decode(&b).unwrap_err(),
        LoadError::Corrupt {
            what: "unknown header flags"
        }
    );
}

#[test]
fn huge_body_length_is_truncated_not_allocated() {
    let mut b = sample_bytes();
    b[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        DecisionTable::decode(&b).unwrap_err(),
        LoadError::Truncated { .. }
    ));
}

#[test]
fn corrupt_body_with_valid_checksum_is_rejected() {
    let bytes = sample_bytes();
    // A huge rule count right at the start of the body.
    let mut b = bytes.clone();
    b[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut b);
    assert_eq!(
        DecisionTable::decode(&b).unwrap_err(),
        LoadError::Corrupt {
            what: "a count exceeds the bytes that follow it"
        }
    );
    // The `*` sub-table index (last four bytes of the body) pointing nowhere.
    let mut b = bytes.clone();
    let end = b.len() - CHECKSUM_LEN;
    b[end - 4..end].copy_from_slice(&5u32.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        DecisionTable::decode(&b).unwrap_err(),
        LoadError::Corrupt { .. }
    ));
    // Every single-byte change in the body either decodes to a table that decides
    // without panicking, or is a clean error.
    for i in HEADER_LEN..bytes.len() - CHECKSUM_LEN {
        for x in [0x01, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] ^= x;
            reseal(&mut b);
            if let Ok(t) = DecisionTable::decode(&b) {
                exercise(&t);
            }
        }
    }
}

/// Decide a few varied flows; only panics matter here.
pub(crate) fn exercise(t: &DecisionTable) {
    let fp = [5u8; 32];
    let sans = ["db.corp"];
    let id = PeerIdentity {
        spiffe_id: Some("spiffe://td/ns/a"),
        dns_sans: &sans,
        common_name: Some("alice"),
        fingerprint: Some(&fp),
    };
    let mut live = LiveFacts::default();
    live.posture
        .insert("dev".into(), crate::DevicePosture::default());
    live.grants
        .entry("redis".into())
        .or_default()
        .insert("spiffe://td/ns/a".into(), i64::MAX);
    for (service, ip, now) in [
        ("redis", v4(10, 0, 0, 1), 1_780_000_000),
        ("pg", "2001:db8::1".parse().unwrap(), i64::MAX),
        ("other", v4(192, 0, 2, 7), i64::MIN),
    ] {
        let f = FlowFacts {
            identity: Some(id),
            sni: Some("a.cache.corp"),
            alpn: Some("h2"),
            device_id: Some("dev"),
            cert_age_secs: Some(5),
            ..FlowFacts::plain(service, ip, now)
        };
        let d = t.decide(&f, &live);
        let _ = t.decided_by_name(d.decided_by);
        let _ = t.decide(&FlowFacts::plain(service, ip, now), &LiveFacts::default());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = DecisionTable::decode(&bytes);
        // Behind a valid header and checksum, so the body parser itself is reached.
        let mut framed = MAGIC.to_vec();
        framed.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        framed.extend_from_slice(&[0; 4 + 8 + 32]);
        framed.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        framed.extend_from_slice(&bytes);
        framed.extend_from_slice(&[0; CHECKSUM_LEN]);
        reseal(&mut framed);
        if let Ok(t) = DecisionTable::decode(&framed) {
            exercise(&t);
        }
    }

    #[test]
    fn decode_never_panics_on_mutated_tables(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
        seal in any::<bool>(),
    ) {
        let mut b = sample_bytes();
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        if do_cut {
            let n = cut.index(b.len());
            b.truncate(n);
        }
        if seal {
            reseal(&mut b);
        }
        if let Ok(t) = DecisionTable::decode(&b) {
            exercise(&t);
        }
    }
}
