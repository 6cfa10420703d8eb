//! Table bytes from an untrusted peer: `decode` must never panic, and a table it
//! accepts must decide any flow without panicking.
//!
//! Each input is tried twice: as is (exercising the header, length and checksum
//! checks), and with its last 32 bytes replaced by the SHA-256 of the rest, so that
//! mutations reach the body parser and validator instead of dying at the checksum.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use zgate_table::{DecisionTable, DevicePosture, FlowFacts, LiveFacts, PeerIdentity};

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = DecisionTable::decode(data) {
        exercise(&t);
    }
    if data.len() >= 32 {
        let mut sealed = data.to_vec();
        let n = sealed.len() - 32;
        let digest = Sha256::digest(&sealed[..n]);
        sealed[n..].copy_from_slice(&digest);
        if let Ok(t) = DecisionTable::decode(&sealed) {
            exercise(&t);
            // What decodes re-encodes to the same bytes.
            assert_eq!(t.encode(), sealed);
        }
    }
});

fn exercise(t: &DecisionTable) {
    let fp = [5u8; 32];
    let sans = ["db.corp", "x.cache.corp"];
    let id = PeerIdentity {
        spiffe_id: Some("spiffe://td/ns/a/b"),
        dns_sans: &sans,
        common_name: Some("alice"),
        fingerprint: Some(&fp),
    };
    let mut live = LiveFacts::default();
    live.posture.insert("dev".into(), DevicePosture::default());
    live.risk_by_id.insert("spiffe://td/ns/a/b".into(), 10);
    for name in t.service_names().take(3).chain(["redis", "unknown"]) {
        live.grants
            .entry(name.to_owned())
            .or_default()
            .insert("spiffe://td/ns/a/b".into(), 2_000_000_000);
    }
    let services: Vec<String> = t
        .service_names()
        .take(3)
        .chain(["redis", "unknown"])
        .map(str::to_owned)
        .collect();
    for service in &services {
        for (ip, now) in [
            (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 1_780_000_000),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), i64::MAX),
            (IpAddr::V4(Ipv4Addr::BROADCAST), i64::MIN),
        ] {
            let f = FlowFacts {
                identity: Some(id),
                sni: Some("x.cache.corp"),
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
}
