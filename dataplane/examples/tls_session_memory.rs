//! Memory held by one idle, established server-side TLS session (`zgate_tls::TlsSession`,
//! i.e. rustls' `ServerConnection` plus zgate's identity), in memory, without sockets:
//! the TLS part of a gateway's memory per idle mTLS connection
//! (`docs/benchmarks.md`, "TLS", idle memory). Not a test: it prints numbers.
//!
//! ```text
//! cargo run --release -p zgate-dataplane --example tls_session_memory -- 5000
//! cargo run --release -p zgate-dataplane --example tls_session_memory -- 5000 handshake-only
//! ```
//!
//! For each of N sessions: a rustls client presents a dev-PKI SPIFFE certificate, the
//! handshake runs in memory against the gateway's own server config (mTLS, ECDSA
//! P-256, session tickets on, as `[listener.tls]` builds it), one byte goes each way as
//! application data (as in the socket benchmark's probe), then the client is dropped
//! and the server session kept. VmRSS before and after, divided by N, is what an idle
//! session holds: its heap plus the session struct itself (kept in a `Vec`, as the
//! dataplane keeps it inline in the flow's slab slot). With `handshake-only` the
//! sessions exchange no application data (one run per process: freed memory would be
//! reused by the next run).
#![expect(
    clippy::disallowed_methods,
    reason = "a measurement driver on its own process: it needs the wall clock for certificate validity"
)]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a measurement driver: failing loudly is the right answer"
)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use zgate_devpki::{Ca, ClientSpec};
use zgate_tls::{ClientAuth, ServerTls, TlsSession};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Moves every queued byte client -> server and server -> client until neither has
/// anything to send; returns the plaintext the server read. Panics on any TLS error.
fn shuttle(client: &mut ClientConnection, s: &mut TlsSession, buf: &mut [u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut plain = vec![0u8; zgate_tls::MAX_RECORD];
    for _ in 0..20 {
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        let mut fed = 0;
        while fed < out.len() || s.holds_input() {
            let r = s.read(&mut out[fed..], &mut plain).expect("server refused");
            got.extend_from_slice(&plain[..r.produced]);
            if r.consumed == 0 && r.produced == 0 {
                break;
            }
            fed += r.consumed;
        }
        let mut moved = !out.is_empty();
        while s.wants_write() {
            let n = s.write_ciphertext(buf);
            client.read_tls(&mut &buf[..n]).unwrap();
            moved = true;
        }
        client.process_new_packets().unwrap();
        if !moved && !client.wants_write() {
            return got;
        }
    }
    panic!("no quiescence after 20 turns");
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N"))
        .unwrap_or(5000);
    let with_data = std::env::args().nth(2).as_deref() != Some("handshake-only");
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let ca = Ca::new("zgate dev CA", now).unwrap();
    let server = ca
        .server(&["localhost"], &["127.0.0.1".parse().unwrap()], now)
        .unwrap();
    let leaf = ca
        .client(&ClientSpec::spiffe("spiffe://zgate.test/client"), now)
        .unwrap();
    let tls = ServerTls::builder()
        .with_cert(server.chain_pem.as_bytes(), server.key_pem.as_bytes())
        .unwrap()
        .with_client_auth(ClientAuth::Required, ca.cert_pem().as_bytes(), &[])
        .unwrap()
        .build()
        .unwrap();

    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let chain: Vec<_> = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                chain,
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
    cfg.resumption = rustls::client::Resumption::disabled();
    let cfg = Arc::new(cfg);
    let mut buf = vec![0u8; 64 * 1024];

    println!(
        "size_of::<TlsSession>() = {} bytes (inline in the flow's slab slot)",
        std::mem::size_of::<TlsSession>()
    );
    {
        // Warm the allocator and the lazily built parts of the config.
        let mut sessions: Vec<TlsSession> = Vec::with_capacity(n);
        let mut keep = Vec::new();
        for _ in 0..16 {
            let mut c =
                ClientConnection::new(Arc::clone(&cfg), ServerName::try_from("localhost").unwrap())
                    .unwrap();
            let mut s = tls.accept().unwrap();
            shuttle(&mut c, &mut s, &mut buf);
            keep.push(s);
        }
        let before = rss_kib();
        for _ in 0..n {
            let mut c =
                ClientConnection::new(Arc::clone(&cfg), ServerName::try_from("localhost").unwrap())
                    .unwrap();
            let mut s = tls.accept().unwrap();
            shuttle(&mut c, &mut s, &mut buf);
            assert!(s.is_established() && s.identity().is_some());
            if with_data {
                use std::io::{Read, Write};
                c.writer().write_all(b"i").unwrap();
                assert_eq!(shuttle(&mut c, &mut s, &mut buf), b"i");
                let w = s.write(b"i", &mut buf);
                assert_eq!(w.taken, 1);
                c.read_tls(&mut &buf[..w.written]).unwrap();
                shuttle(&mut c, &mut s, &mut buf);
                let mut back = [0u8; 1];
                c.reader().read_exact(&mut back).unwrap();
                assert_eq!(back, *b"i");
            }
            drop(c);
            sessions.push(s);
        }
        let after = rss_kib();
        let heap = (after.saturating_sub(before) * 1024) / u64::try_from(n).unwrap();
        println!(
            "{n} idle sessions ({}): RSS {before} -> {after} KiB: {heap} bytes per session \
             (heap + the {}-byte struct)",
            if with_data {
                "handshake + one byte each way"
            } else {
                "handshake only"
            },
            std::mem::size_of::<TlsSession>()
        );
        drop(sessions);
        drop(keep);
    }
}
