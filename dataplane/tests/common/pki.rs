//! A dev PKI for the TLS tests (CA, server certificate for localhost/127.0.0.1, CRL,
//! client SVIDs) written to a temp dir, and a rustls client configuration that trusts it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use zgate_devpki::{Ca, ClientSpec, Leaf};
use zgate_policy::model::{Action, Principal, Rule, ServiceSelector};

use super::{table_bytes, Gateway, WAIT};

/// A workload the policies below allow.
pub const TRADING: &str = "spiffe://corp.example/ns/trading/sa/pricer";

/// A table with one rule, `allow-trading`: workloads under
/// `spiffe://corp.example/ns/trading` may use service `echo`.
pub fn trading_only() -> Vec<u8> {
    let id = zgate_policy::parse_spiffe_id("spiffe://corp.example/ns/trading").unwrap();
    let mut r = Rule::new(
        "allow-trading",
        Action::Allow,
        ServiceSelector::Named(vec!["echo".to_string()]),
    );
    r.principals = Some(vec![Principal::SpiffeUnder(id)]);
    table_bytes(vec![r], 1)
}

/// A rustls client stream.
pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A TLS client to `gw` (server name `localhost`) with `cfg`.
pub fn connect_tls(gw: &Gateway, cfg: Arc<ClientConfig>) -> Tls {
    let conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, gw.connect())
}

/// Echo `data` through `s` in 16 KiB steps (write a chunk, read it back).
pub fn echo_through(s: &mut Tls, data: &[u8]) {
    for chunk in data.chunks(16 * 1024) {
        s.write_all(chunk).unwrap();
        s.flush().unwrap();
        let mut got = vec![0u8; chunk.len()];
        s.read_exact(&mut got).unwrap();
        assert!(got == chunk, "payload corrupted");
    }
}

/// The client's view of a refused connection: the handshake or the first read fails,
/// or the stream ends without data.
pub fn refused(mut s: Tls) -> bool {
    if s.write_all(b"hello").and_then(|()| s.flush()).is_err() {
        return true;
    }
    let mut buf = [0u8; 16];
    !matches!(s.read(&mut buf), Ok(n) if n > 0)
}

#[allow(
    clippy::disallowed_methods,
    reason = "certificates are made for the real clock the gateway checks them against"
)]
pub fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// A dev PKI written to a temp dir: CA, server cert for 127.0.0.1/localhost, a CRL.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new(revoked: &[&Leaf]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("zgate test CA", now()).unwrap();
        let server = ca
            .server(&["localhost"], &["127.0.0.1".parse().unwrap()], now())
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &server.chain_pem).unwrap();
        std::fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
        let pki = Pki { dir, ca };
        pki.write_crl(revoked);
        pki
    }

    pub fn write_crl(&self, revoked: &[&Leaf]) {
        let crl = self.ca.crl(revoked, now()).unwrap();
        std::fs::write(self.path("crl.pem"), crl).unwrap();
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn client(&self, spec: &ClientSpec) -> Leaf {
        self.ca.client(spec, now()).unwrap()
    }

    /// Write `leaf` as `name.pem` / `name.key`; returns the two paths.
    pub fn write_leaf(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let (c, k) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, &leaf.chain_pem).unwrap();
        std::fs::write(&k, &leaf.key_pem).unwrap();
        (c, k)
    }

    /// The `[listener.tls]` table (client_auth required, with the CRL).
    pub fn listener_tls(&self, extra: &str) -> String {
        format!(
            "[listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\ncrl = [{:?}]\n\
             device_id_uri_prefix = \"urn:device:\"\nhandshake_timeout = \"1s\"\n{extra}\n",
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem"),
            self.path("crl.pem"),
        )
    }
}

pub fn client_config(pki: &Pki, leaf: Option<&Leaf>) -> Arc<ClientConfig> {
    client_config_for(pki, leaf, rustls::DEFAULT_VERSIONS)
}

/// [`client_config`] speaking only `versions`.
pub fn client_config_for(
    pki: &Pki,
    leaf: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match leaf {
        Some(l) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(l.chain_pem.as_bytes())
                .map(Result::unwrap)
                .collect();
            b.with_client_auth_cert(
                chain,
                PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap(),
            )
            .unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

/// Whether `gw` refuses a TLS client presenting `leaf` ([`refused`]).
pub fn refuses(gw: &Gateway, pki: &Pki, leaf: &Leaf) -> bool {
    refused(connect_tls(gw, client_config(pki, Some(leaf))))
}

/// Whether the gateway closed `s` (reset or end of stream), waiting for it (bounded).
pub fn closed(s: &mut Tls) -> bool {
    s.sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Whether `s` still echoes.
pub fn echoes(s: &mut Tls) -> bool {
    s.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if s.write_all(b"x").and_then(|()| s.flush()).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(1))
}
