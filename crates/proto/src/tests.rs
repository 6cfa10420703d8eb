use zgate_table::facts::{DevicePosture, LiveFacts};

use super::*;

const ALICE: &str = "spiffe://corp.example/ns/md/sa/alice";

fn every_change() -> Vec<Change> {
    vec![
        Change::Revoke(Subject::Principal(ALICE.into())),
        Change::Revoke(Subject::Fingerprint([7; 32])),
        Change::Unrevoke(Subject::Principal(ALICE.into())),
        Change::SetPosture {
            device: "laptop-7".into(),
            posture: DevicePosture {
                managed: true,
                compliant: true,
                edr_running: false,
                compromised: false,
                os_patch: 20260901,
            },
        },
        Change::ClearPosture {
            device: "laptop-7".into(),
        },
        Change::SetRisk {
            subject: Subject::Device("laptop-7".into()),
            score: 80,
        },
        Change::ClearRisk {
            subject: Subject::Principal(ALICE.into()),
        },
        Change::Grant {
            service: "redis".into(),
            principal: ALICE.into(),
            until: 1_800_000_000,
        },
        Change::Ungrant {
            service: "redis".into(),
            principal: ALICE.into(),
        },
    ]
}

fn every_message() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            name: "gw-1".into(),
            pid: 42,
            table_version: 3,
            facts_version: 9,
        }),
        Message::Table(TableUpdate {
            version: 4,
            table: vec![1, 2, 3],
        }),
        Message::Facts(FactsSnapshot {
            version: 9,
            changes: every_change(),
        }),
        Message::Delta(FactsDelta {
            from: 9,
            to: 10,
            changes: every_change(),
        }),
        Message::Shadow(Shadow {
            table: Some(TableUpdate {
                version: 5,
                table: vec![9; 100],
            }),
        }),
        Message::Shadow(Shadow { table: None }),
        Message::ImpactQuery { id: 77 },
        Message::Impact(ImpactReport {
            id: 77,
            shadow_version: 5,
            flows: vec![ImpactFlow {
                listener: "redis".into(),
                principal: Some(ALICE.into()),
                source: "10.0.0.1:5555".into(),
                rule: "default-deny".into(),
                reason: "no-rule-matched".into(),
            }],
            total: 1,
        }),
        Message::Report(Report {
            table_version: 4,
            facts_version: 10,
            shadow_version: 5,
            flows: 1000,
            closed_by_policy: 100,
            shadow_differences: 3,
            last_error: Some("table 3 is older than 4".into()),
        }),
        Message::Refused {
            reason: "out of order".into(),
        },
        Message::Freshness(Freshness {
            store_revision: 48_211,
            in_step_at_ms: 1_796_000_000_123,
        }),
    ]
}

fn stream(messages: &[Message]) -> Vec<u8> {
    let mut enc = Encoder::new();
    let mut out = Vec::new();
    for m in messages {
        enc.encode(m, &mut out);
    }
    out
}

fn decode_all(side: Side, bytes: &[u8]) -> Result<Vec<Message>, FrameError> {
    let mut d = Decoder::new(side, MAX_PAYLOAD);
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(m) = d.next()? {
        out.push(m);
    }
    Ok(out)
}

#[test]
fn every_message_round_trips_whole_and_a_byte_at_a_time() {
    let all = every_message();
    let bytes = stream(&all);
    assert_eq!(decode_all(Side::Any, &bytes).unwrap(), all);
    let mut d = Decoder::new(Side::Any, MAX_PAYLOAD);
    let mut got = Vec::new();
    for b in &bytes {
        d.push(std::slice::from_ref(b));
        while let Some(m) = d.next().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, all);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn each_side_refuses_the_kinds_the_other_side_never_sends() {
    let hello = stream(&[every_message().remove(0)]);
    assert_eq!(
        decode_all(Side::Control, &hello),
        Err(FrameError::WrongDirection { kind: Kind::Hello })
    );
    let table = stream(&[Message::Table(TableUpdate {
        version: 1,
        table: vec![],
    })]);
    assert_eq!(
        decode_all(Side::Dataplane, &table),
        Err(FrameError::WrongDirection { kind: Kind::Table })
    );
}

#[test]
fn a_flipped_bit_anywhere_is_refused_and_the_decoder_stays_failed() {
    let all = every_message();
    let bytes = stream(&all);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        if let Some(b) = bad.get_mut(i) {
            *b ^= 0x10;
        }
        // Refused, or (a longer length) still waiting for bytes: never a message
        // that differs from what was sent.
        match decode_all(Side::Any, &bad) {
            Err(_) => {}
            Ok(got) => assert!(
                got.len() < all.len() && all.starts_with(&got),
                "flip at byte {i} went unnoticed"
            ),
        }
    }
    let mut d = Decoder::new(Side::Any, MAX_PAYLOAD);
    d.push(b"GET / HTTP/1.1\r\n");
    let e = d.next().unwrap_err();
    assert!(matches!(e, FrameError::BadMagic { .. }), "{e}");
    // Good bytes after a bad frame change nothing.
    d.push(&stream(&every_message()));
    assert_eq!(d.next().unwrap_err(), e);
}

#[test]
fn a_wrong_magic_is_refused_from_its_first_byte() {
    let mut d = Decoder::new(Side::Any, MAX_PAYLOAD);
    d.push(b"Z");
    assert_eq!(d.next(), Ok(None));
    d.push(b"X");
    assert!(matches!(d.next(), Err(FrameError::BadMagic { .. })));
}

#[test]
fn frames_out_of_order_are_refused() {
    let mut first = Encoder::new();
    let mut out = Vec::new();
    let m = Message::ImpactQuery { id: 1 };
    first.encode(&m, &mut out);
    // The same frame again (a replay) is number 1 again.
    Encoder::new().encode(&m, &mut out);
    let mut d = Decoder::new(Side::Control, MAX_PAYLOAD);
    d.push(&out);
    assert_eq!(d.next(), Ok(Some(m)));
    assert_eq!(
        d.next(),
        Err(FrameError::OutOfOrder {
            expected: 2,
            found: 1
        })
    );
}

#[test]
fn an_oversized_payload_is_refused_from_its_header() {
    let bytes = stream(&[Message::Table(TableUpdate {
        version: 1,
        table: vec![0; 1000],
    })]);
    let mut d = Decoder::new(Side::Control, 100);
    d.push(bytes.get(..HEADER_LEN).unwrap());
    assert!(matches!(
        d.next(),
        Err(FrameError::Oversized { max: 100, .. })
    ));
}

#[test]
fn payloads_that_lie_are_refused_with_the_field_named() {
    let cases: Vec<(Message, &str)> = vec![
        (
            Message::Delta(FactsDelta {
                from: 5,
                to: 5,
                changes: vec![],
            }),
            "`to`: not after `from`",
        ),
        (
            Message::Facts(FactsSnapshot {
                version: 1,
                changes: vec![Change::Revoke(Subject::Principal("alice".into()))],
            }),
            "not a SPIFFE ID",
        ),
        (
            Message::Facts(FactsSnapshot {
                version: 1,
                changes: vec![Change::Revoke(Subject::Device("d".into()))],
            }),
            "reported compromised",
        ),
        (
            Message::Facts(FactsSnapshot {
                version: 1,
                changes: vec![Change::SetRisk {
                    subject: Subject::Principal(ALICE.into()),
                    score: 101,
                }],
            }),
            "above 100",
        ),
        (
            Message::Facts(FactsSnapshot {
                version: 1,
                changes: vec![Change::SetRisk {
                    subject: Subject::Fingerprint([0; 32]),
                    score: 1,
                }],
            }),
            "not per certificate",
        ),
        (
            Message::Facts(FactsSnapshot {
                version: 1,
                changes: vec![Change::ClearPosture {
                    device: "a\nb".into(),
                }],
            }),
            "control characters",
        ),
        (
            Message::Table(TableUpdate {
                version: 0,
                table: vec![],
            }),
            "0 means no table",
        ),
    ];
    for (m, want) in cases {
        let e = decode_all(Side::Control, &stream(&[m])).unwrap_err();
        assert!(
            matches!(e, FrameError::Payload { .. }) && e.to_string().contains(want),
            "{e} (wanted {want})"
        );
    }
}

#[test]
fn a_hostile_count_is_refused_before_anything_is_reserved() {
    // A snapshot claiming 2^32-1 changes in a 12-byte payload.
    let mut payload = 9u64.to_le_bytes().to_vec();
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    let e = Message::decode_payload(Kind::Facts, &payload).unwrap_err();
    assert_eq!(e, DecodeError::Truncated { field: "changes" });
}

#[test]
fn a_standalone_frame_reads_back_and_refuses_anything_after_it() {
    let m = every_message().remove(2);
    let mut bytes = to_standalone(&m);
    assert_eq!(from_standalone(&bytes, MAX_PAYLOAD), Ok(m));
    bytes.push(0);
    assert_eq!(
        from_standalone(&bytes, MAX_PAYLOAD),
        Err(FrameError::TrailingBytes { extra: 1 })
    );
    assert!(matches!(
        from_standalone(bytes.get(..30).unwrap(), MAX_PAYLOAD),
        Err(FrameError::Truncated { .. })
    ));
}

#[test]
fn changes_apply_to_live_facts_and_a_snapshot_rebuilds_them() {
    let mut facts = LiveFacts::default();
    for c in every_change() {
        apply(&mut facts, &c);
    }
    assert!(!facts.revoked_ids.contains(ALICE));
    assert!(facts.revoked_fingerprints.contains(&[7; 32]));
    assert!(facts.posture.is_empty());
    assert_eq!(facts.risk_by_device.get("laptop-7"), Some(&80));
    assert!(facts.grants.is_empty());
    apply(
        &mut facts,
        &Change::Grant {
            service: "redis".into(),
            principal: ALICE.into(),
            until: 5,
        },
    );
    let snap = snapshot(&facts);
    let mut rebuilt = LiveFacts::default();
    for c in &snap {
        apply(&mut rebuilt, c);
    }
    assert_eq!(snapshot(&rebuilt), snap);
    assert_eq!(
        rebuilt.grants.get("redis").and_then(|g| g.get(ALICE)),
        Some(&5)
    );
}

#[test]
fn touched_names_the_keys_and_the_kind_of_fact() {
    let t = Touched::of(&every_change());
    assert!(t
        .principals
        .contains(&(ALICE.to_string(), Cause::Revocation)));
    assert!(t.principals.contains(&(ALICE.to_string(), Cause::Grant)));
    assert!(t.fingerprints.contains(&([7; 32], Cause::Revocation)));
    assert!(t
        .devices
        .contains(&("laptop-7".to_string(), Cause::Posture)));
    assert!(t.devices.contains(&("laptop-7".to_string(), Cause::Risk)));
}

mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bytes, pushed in any pieces: messages or one error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            cut in 0usize..512,
        ) {
            let mut d = Decoder::new(Side::Any, 4096);
            let (a, b) = bytes.split_at(cut.min(bytes.len()));
            d.push(a);
            let _ = d.next();
            d.push(b);
            while let Ok(Some(_)) = d.next() {}
        }

        /// A valid stream with a valid header prefix and garbage payload: refused.
        #[test]
        fn garbage_payloads_never_panic(kind in 1u8..10, payload in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Some(k) = Kind::from_byte(kind) {
                let _ = Message::decode_payload(k, &payload);
            }
        }
    }
}

/// Replays `fuzz/corpus/frames/` (written from [`every_message`] with
/// `ZGATE_WRITE_PROTO_CORPUS=1`): each seed is a whole stream after one byte, and the
/// payload of one message after its kind byte, as the fuzz target reads them.
#[test]
fn the_fuzz_corpus_decodes_or_explains() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frames");
    if std::env::var_os("ZGATE_WRITE_PROTO_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, m) in every_message().iter().enumerate() {
            let mut s = vec![2u8];
            s.extend(to_standalone(m));
            std::fs::write(dir.join(format!("stream-{i}")), s).unwrap();
            let mut p = vec![m.kind() as u8];
            m.encode_payload(&mut p);
            std::fs::write(dir.join(format!("payload-{i}")), p).unwrap();
        }
    }
    let mut decoded = 0;
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        seeds += 1;
        let Some((&first, rest)) = bytes.split_first() else {
            continue;
        };
        if decode_all(Side::Any, rest).is_ok_and(|m| !m.is_empty()) {
            decoded += 1;
        }
        if let Some(kind) = Kind::from_byte(first) {
            if Message::decode_payload(kind, rest).is_ok() {
                decoded += 1;
            }
        }
    }
    assert!(seeds >= 20, "only {seeds} seeds in {}", dir.display());
    assert!(decoded >= 20, "only {decoded} of {seeds} seeds decode");
}
