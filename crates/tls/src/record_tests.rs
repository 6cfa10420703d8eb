//! The record layer against real rustls peers: every supported version and suite, every
//! way a record can be cut across reads, key updates both ways, and each refusal.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::crypto::ring::cipher_suite;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{
    ClientConfig, ClientConnection, ServerConfig, ServerConnection, SupportedCipherSuite,
};
use zgate_devpki::ClientSpec;

use super::*;

fn suite_client(p: &Pki, leaf: &Leaf, suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(p.ca.cert_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![suite];
    let version: &rustls::SupportedProtocolVersion = match suite {
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
    };
    let chain: Vec<_> = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(cfg)
}

fn tls12_server(p: &Pki) -> ServerTls {
    ServerTls::builder()
        .with_cert(p.server.chain_pem.as_bytes(), p.server.key_pem.as_bytes())
        .unwrap()
        .with_client_auth(ClientAuth::Required, p.ca.cert_pem().as_bytes(), &[])
        .unwrap()
        .min_version(MinVersion::Tls12)
        .build()
        .unwrap()
}

const SUITES: [SupportedCipherSuite; 6] = [
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

fn established(suite: SupportedCipherSuite) -> (ClientConnection, TlsSession) {
    let p = pki();
    let leaf = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let (client, s) = handshake(
        &tls12_server(&p),
        suite_client(&p, &leaf, suite),
        "gw.example",
    );
    let mut s = s.unwrap();
    assert_eq!(s.identity().unwrap().spiffe_id, ID);
    let mut client = client;
    flush_to_client(&mut s, &mut client);
    (client, s)
}

/// Everything `s` queued, to the client.
fn flush_to_client(s: &mut TlsSession, client: &mut ClientConnection) {
    let mut buf = vec![0u8; 64 * 1024];
    while s.wants_write() {
        let n = s.write_ciphertext(&mut buf);
        client.read_tls(&mut &buf[..n]).unwrap();
    }
    client.process_new_packets().unwrap();
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Deterministic cut sizes: 1 byte, a header and a bit, a record and a bit, ...
fn cuts(seed: u64) -> impl Iterator<Item = usize> {
    let mut x = seed;
    std::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 6 {
            0 => 1,
            1 => 5 + (x >> 8) as usize % 3,
            2 => 16 * 1024 + 22 + (x >> 8) as usize % 64,
            _ => 1 + (x >> 8) as usize % 40_000,
        }
    })
}

#[test]
fn every_suite_moves_bytes_exactly_both_ways_however_records_are_cut() {
    for suite in SUITES {
        let (mut client, mut s) = established(suite);
        // client -> gateway: 300 KiB in records of every size, cut at random places,
        // into a plaintext buffer just big enough for one record.
        let data = pattern(300 * 1024);
        let mut wire = Vec::new();
        for chunk in data.chunks(9_000).chain(std::iter::once(&data[..1])) {
            client.writer().write_all(chunk).unwrap();
            client.write_tls(&mut wire).unwrap();
        }
        let mut plain = vec![0u8; MAX_RECORD];
        let mut got = Vec::new();
        let mut fed = 0;
        let mut cut = cuts(u64::from(u16::from(suite.suite())) + 1);
        while fed < wire.len() || s.holds_input() {
            let end = (fed + cut.next().unwrap()).min(wire.len());
            let mut piece = wire[fed..end].to_vec();
            let mut used = 0;
            loop {
                let o = s.read(&mut piece[used..], &mut plain).unwrap();
                got.extend_from_slice(&plain[..o.produced]);
                used += o.consumed;
                if used == piece.len() && !s.holds_input() {
                    break;
                }
                assert!(o.consumed > 0 || o.produced > 0, "{suite:?}: stuck");
            }
            fed = end;
        }
        assert_eq!(got.len(), data.len() + 1, "{suite:?}");
        assert!(got[..data.len()] == data[..], "{suite:?}: bytes differ");

        // gateway -> client: sealed into small and large output buffers.
        let mut out = vec![0u8; 33 * 1024];
        let mut sent = 0;
        let mut sizes = cuts(7);
        let mut back = Vec::new();
        while sent < data.len() {
            let room = (sizes.next().unwrap() + MAX_OVERHEAD).min(out.len());
            let w = s.write(&data[sent..], &mut out[..room]);
            sent += w.taken;
            let mut at = 0;
            while at < w.written {
                at += client.read_tls(&mut &out[at..w.written]).unwrap();
                client
                    .process_new_packets()
                    .unwrap_or_else(|e| panic!("{suite:?}: {e}"));
                let mut got = Vec::new();
                let _ = client.reader().read_to_end(&mut got);
                back.extend_from_slice(&got);
            }
        }
        assert!(back == data, "{suite:?}: bytes differ on the way back");

        // close_notify both ways.
        s.close_notify();
        flush_to_client(&mut s, &mut client);
        let mut rest = Vec::new();
        assert_eq!(client.reader().read_to_end(&mut rest).unwrap(), 0);
        client.send_close_notify();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        assert!(read_all(&mut s, &mut wire).is_empty());
        assert!(s.peer_closed(), "{suite:?}");
    }
}

#[test]
fn a_key_update_from_the_client_is_followed_and_answered() {
    let (mut client, mut s) = established(cipher_suite::TLS13_AES_256_GCM_SHA384);
    for round in 0..3u8 {
        client.refresh_traffic_keys().unwrap();
        client.writer().write_all(&[round; 100]).unwrap();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        assert_eq!(read_all(&mut s, &mut wire), vec![round; 100]);
        // rustls asks for an update back: ours goes out before our next record.
        assert!(s.wants_write());
        let mut out = vec![0u8; 4096];
        let w = s.write(b"after the update", &mut out);
        assert_eq!(
            client_reads(&mut client, &out[..w.written], 16),
            b"after the update"
        );
    }
}

#[test]
fn a_peer_may_not_send_key_updates_forever() {
    let (mut client, mut s) = established(cipher_suite::TLS13_AES_256_GCM_SHA384);
    let mut plain = vec![0u8; MAX_RECORD];
    let mut out = vec![0u8; 4096];
    for n in 1..=40 {
        client.refresh_traffic_keys().unwrap();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        let r = s.read(&mut wire, &mut plain);
        // Keep the client in step with our answers.
        let w = s.write_ciphertext(&mut out);
        client.read_tls(&mut &out[..w]).unwrap();
        let _ = client.process_new_packets();
        if n <= 32 {
            r.unwrap();
        } else {
            assert_eq!(r.unwrap_err().alert(), Alert::UnexpectedMessage);
            return;
        }
    }
    panic!("33 KeyUpdates in a row were accepted");
}

#[test]
fn a_key_update_waits_for_an_output_with_room_for_it() {
    let (mut client, mut s) = established(cipher_suite::TLS13_AES_128_GCM_SHA256);
    s.records_mut().unwrap().set_tx_limit_in(0);
    // Room for one small record but not for a KeyUpdate before it: nothing is taken,
    // the session stays healthy, and a bigger output gets both.
    let mut small = vec![0u8; MAX_OVERHEAD + 8];
    let w = s.write(b"12345678", &mut small);
    assert_eq!(w, Sealed::default());
    assert!(s.failure().is_none());
    let mut out = vec![0u8; 4096];
    let w = s.write(b"12345678", &mut out);
    assert_eq!(w.taken, 8);
    assert_eq!(client_reads(&mut client, &out[..w.written], 8), b"12345678");
}

#[test]
fn the_gateway_updates_its_key_before_the_confidentiality_limit() {
    let (mut client, mut s) = established(cipher_suite::TLS13_AES_128_GCM_SHA256);
    s.records_mut().unwrap().set_tx_limit_in(3);
    let data = pattern(20 * 1000);
    let mut out = vec![0u8; 64 * 1024];
    let mut back = Vec::new();
    for chunk in data.chunks(1000) {
        // 1,000 bytes a record: many records, a key update every 3.
        let w = s.write(chunk, &mut out);
        assert_eq!(w.taken, chunk.len());
        back.extend(client_reads(&mut client, &out[..w.written], chunk.len()));
    }
    assert!(back == data);
}

#[test]
fn a_tls12_session_at_its_limit_stops_sealing() {
    let (_client, mut s) = established(cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
    s.records_mut().unwrap().set_tx_limit_in(1);
    let mut out = vec![0u8; 4096];
    let w = s.write(b"one", &mut out);
    assert_eq!(w.taken, 3);
    let w = s.write(b"two", &mut out);
    assert_eq!(w.taken, 0);
    assert!(s.failure().is_some());
}

/// Client app data whose bytes are changed on the wire by `tamper`.
fn tampered(
    suite: SupportedCipherSuite,
    tamper: impl Fn(&mut Vec<u8>),
) -> (ClientConnection, TlsSession, RejectReason) {
    let (mut client, mut s) = established(suite);
    client.writer().write_all(b"GET /secret").unwrap();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    tamper(&mut wire);
    let mut plain = vec![0u8; MAX_RECORD];
    let r = s.read(&mut wire, &mut plain).unwrap_err();
    // The alert (encrypted, as every record now) reaches the client.
    let mut out = vec![0u8; 4096];
    let n = s.write_ciphertext(&mut out);
    client.read_tls(&mut &out[..n]).unwrap();
    (client, s, r)
}

#[test]
fn a_changed_byte_is_refused_with_bad_record_mac() {
    for suite in [
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ] {
        let (mut client, mut s, r) = tampered(suite, |w| {
            let last = w.len() - 3;
            w[last] ^= 1;
        });
        assert_eq!(r.label(), "bad-record");
        assert_eq!(r.alert(), Alert::BadRecordMac);
        let e = client.process_new_packets().unwrap_err();
        assert_eq!(
            e,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac),
            "{suite:?}"
        );
        // Failed stays failed.
        let mut plain = [0u8; 64];
        assert_eq!(s.read(&mut [23, 3, 3, 0, 0], &mut plain).unwrap_err(), r);
    }
}

#[test]
fn records_that_break_the_framing_rules_are_refused() {
    let suite = cipher_suite::TLS13_AES_256_GCM_SHA384;
    // An unencrypted alert after the handshake.
    let (_, _, r) = tampered(suite, |w| {
        *w = vec![21, 3, 3, 0, 2, 2, 40];
    });
    assert_eq!(r.alert(), Alert::UnexpectedMessage);
    // Longer than TLS 1.3 allows (2^14 + 256).
    let (_, _, r) = tampered(suite, |w| {
        let n = (16 * 1024 + 257u16).to_be_bytes();
        *w = vec![23, 3, 3, n[0], n[1]];
    });
    assert_eq!(r.alert(), Alert::RecordOverflow);
    // Not TLS at all.
    let (_, _, r) = tampered(suite, |w| {
        w[1] = b'H';
    });
    assert_eq!(r.alert(), Alert::DecodeError);
    // A record too short to hold a tag.
    let (_, _, r) = tampered(suite, |w| {
        *w = vec![23, 3, 3, 0, 3, 1, 2, 3];
    });
    assert_eq!(r.alert(), Alert::DecodeError);
}

#[test]
fn data_after_close_notify_is_ignored() {
    let (mut client, mut s) = established(cipher_suite::TLS13_AES_256_GCM_SHA384);
    client.writer().write_all(b"last words").unwrap();
    client.send_close_notify();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    // Bytes after close_notify, even garbage, are swallowed.
    wire.extend_from_slice(b"\x17\x03\x03\x00\x20 not looked at");
    assert_eq!(read_all(&mut s, &mut wire), b"last words");
    assert!(s.peer_closed());
}

/// A rustls server (buffered API) for the upstream side.
fn upstream_server(p: &Pki) -> Arc<ServerConfig> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(p.server.chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(p.server.key_pem.as_bytes()).unwrap();
    let mut cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    cfg.send_tls13_tickets = 2;
    Arc::new(cfg)
}

/// Run the gateway's client session against `server` until both are done.
fn upstream_handshake(up: &mut TlsSession, server: &mut ServerConnection) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut plain = vec![0u8; 64 * 1024];
    for _ in 0..20 {
        while up.wants_write() {
            let n = up.write_ciphertext(&mut buf);
            server.read_tls(&mut &buf[..n]).unwrap();
        }
        server.process_new_packets().unwrap();
        let mut wire = Vec::new();
        server.write_tls(&mut wire).unwrap();
        let o = up.read(&mut wire, &mut plain).unwrap();
        assert_eq!(o.consumed, wire.len());
        if up.is_established() && !server.is_handshaking() && !up.wants_write() {
            return;
        }
    }
    panic!("upstream handshake did not finish");
}

#[test]
fn upstream_sessions_carry_data_take_tickets_and_resume() {
    let p = pki();
    let tls = ClientTls::new(&ClientTlsSpec {
        ca_pem: p.ca.cert_pem().as_bytes(),
        server_name: "gw.example",
        ..ClientTlsSpec::default()
    })
    .unwrap();
    let cfg = upstream_server(&p);
    for round in 0..2 {
        let mut server = ServerConnection::new(Arc::clone(&cfg)).unwrap();
        let mut up = tls.connect().unwrap();
        upstream_handshake(&mut up, &mut server);
        assert_eq!(up.is_resumed(), round == 1, "round {round}");
        // Tickets arrive after the handshake, then data: both through our record layer.
        server.writer().write_all(b"+OK ready\r\n").unwrap();
        let mut wire = Vec::new();
        server.write_tls(&mut wire).unwrap();
        assert_eq!(read_all(&mut up, &mut wire), b"+OK ready\r\n");
        let mut out = vec![0u8; 4096];
        let w = up.write(b"PING\r\n", &mut out);
        server.read_tls(&mut &out[..w.written]).unwrap();
        server.process_new_packets().unwrap();
        let mut got = [0u8; 6];
        server.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"PING\r\n");
    }
}

#[test]
fn the_fuzz_properties_hold_for_every_flag_combination_and_the_corpus() {
    let payload: Vec<u8> = pattern(40_000);
    for flags in 0u8..32 {
        for seed in [0u8, 1, 77, 255] {
            let mut input = vec![flags, seed];
            input.extend_from_slice(&payload[..(usize::from(seed) * 150).min(payload.len())]);
            crate::fuzzing::fuzz_records(&input)
                .unwrap_or_else(|e| panic!("flags {flags} seed {seed}: {e}"));
        }
    }
    // What `cargo fuzz run records` found interesting (dataplane/fuzz/corpus/records).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dataplane/fuzz/corpus/records");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        crate::fuzzing::fuzz_records(&data).unwrap();
        n += 1;
    }
    assert!(n > 0, "empty corpus in {}", dir.display());
}

/// Feed `wire` to `s` in pieces cut by `seed`, each after `HEADROOM` bytes of headroom,
/// opening the records in place; the plaintext the runs describe, and the most runs one
/// piece gave.
fn read_all_in_place(s: &mut TlsSession, wire: &[u8], seed: u64) -> (Vec<u8>, usize) {
    const HEADROOM: usize = MAX_RECORD;
    let mut got = Vec::new();
    let mut most = 0;
    let mut fed = 0;
    let mut cut = cuts(seed);
    let mut runs = Runs::default();
    while fed < wire.len() {
        assert!(s.can_read_in_place());
        let end = (fed + cut.next().unwrap()).min(wire.len());
        // Headroom holds garbage: nothing may read it before writing it.
        let mut region = vec![0xa5u8; HEADROOM];
        region.extend_from_slice(&wire[fed..end]);
        runs.clear();
        s.read_in_place(&mut region, HEADROOM, &mut runs).unwrap();
        for &(at, n) in runs.as_slice() {
            got.extend_from_slice(&region[at as usize..(at + n) as usize]);
        }
        most = most.max(runs.as_slice().len());
        fed = end;
    }
    (got, most)
}

#[test]
fn every_suite_opens_records_in_place_however_they_are_cut() {
    for suite in SUITES {
        let (mut client, mut s) = established(suite);
        // Records of every size: large ones stay where they are, small ones join the
        // piece before them, and a run list that fills up takes the rest by moving.
        let data = pattern(600 * 1024);
        let mut wire = Vec::new();
        let mut sizes = cuts(u64::from(u16::from(suite.suite())) + 3);
        let mut at = 0;
        while at < data.len() {
            let n = (sizes.next().unwrap() % 20_000).max(1).min(data.len() - at);
            client.writer().write_all(&data[at..at + n]).unwrap();
            client.write_tls(&mut wire).unwrap();
            at += n;
        }
        let (got, most) = read_all_in_place(&mut s, &wire, 11);
        assert!(got == data, "{suite:?}: bytes differ");
        assert!((1..=MAX_RUNS).contains(&most), "{suite:?}: {most} runs");
        // Then the copying path takes over where the in-place one left off.
        client.writer().write_all(b"after").unwrap();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        assert_eq!(read_all(&mut s, &mut wire), b"after");
    }
}

#[test]
fn full_records_in_one_receive_are_each_one_run_and_are_not_moved() {
    let (mut client, mut s) = established(cipher_suite::TLS13_AES_256_GCM_SHA384);
    let data = pattern(4 * MAX_PLAINTEXT);
    client.writer().write_all(&data).unwrap();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    let mut region = vec![0u8; MAX_RECORD];
    region.extend_from_slice(&wire);
    let mut runs = Runs::default();
    s.read_in_place(&mut region, MAX_RECORD, &mut runs).unwrap();
    // Four records: header, 2^14 bytes, content type, tag; each plaintext right after
    // its header.
    let step = (crate::record::HEADER + MAX_PLAINTEXT + 1 + 16) as u32;
    let start = (MAX_RECORD + crate::record::HEADER) as u32;
    let want: Vec<(u32, u32)> = (0..4)
        .map(|i| (start + i * step, MAX_PLAINTEXT as u32))
        .collect();
    assert_eq!(runs.as_slice(), want);
    assert_eq!(runs.total(), data.len());
}

#[test]
fn runs_advance_past_what_a_send_took() {
    let mut region = vec![0u8; 100_000];
    let mut runs = Runs::default();
    runs.add(&mut region, 10, 2000);
    runs.add(&mut region, 3000, 5000);
    runs.add(&mut region, 9000, 4000);
    runs.advance(1500);
    assert_eq!(runs.as_slice(), [(1510, 500), (3000, 5000), (9000, 4000)]);
    runs.advance(500);
    assert_eq!(runs.as_slice(), [(3000, 5000), (9000, 4000)]);
    runs.advance(5001);
    assert_eq!(runs.as_slice(), [(9001, 3999)]);
    runs.advance(3999);
    assert!(runs.as_slice().is_empty());
    assert_eq!(runs.total(), 0);
}

#[test]
fn in_place_a_changed_byte_is_refused_and_close_notify_ends_the_input() {
    let (mut client, mut s) = established(cipher_suite::TLS13_AES_128_GCM_SHA256);
    client.writer().write_all(&pattern(3000)).unwrap();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    wire[100] ^= 1;
    let mut region = vec![0u8; MAX_RECORD];
    region.extend_from_slice(&wire);
    let e = s
        .read_in_place(&mut region, MAX_RECORD, &mut Runs::default())
        .unwrap_err();
    assert_eq!(e.alert(), Alert::BadRecordMac);
    assert!(s.wants_write(), "the alert is queued");

    let (mut client, mut s) = established(cipher_suite::TLS13_AES_256_GCM_SHA384);
    client.writer().write_all(b"last words").unwrap();
    client.send_close_notify();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    wire.extend_from_slice(b"\x17\x03\x03\x00\x20 not looked at");
    let (got, _) = read_all_in_place(&mut s, &wire, 5);
    assert_eq!(got, b"last words");
    assert!(s.peer_closed());
}
