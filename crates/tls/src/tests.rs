//! Whole handshakes in memory: a rustls client against [`TlsSession`], certificates
//! from the dev PKI. Every verifier rule is exercised through a real handshake here
//! (and rule by rule on DER in `svid::tests`).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use zgate_devpki::{Bad, Ca, ClientSpec, Leaf};

use super::*;

const ID: &str = "spiffe://corp.example/ns/trading/sa/pricer";

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

struct Pki {
    ca: Ca,
    server: Leaf,
}

fn pki() -> Pki {
    let ca = Ca::new("root", now()).unwrap();
    let server = ca
        .server(&["gw.example"], &["127.0.0.1".parse().unwrap()], now())
        .unwrap();
    Pki { ca, server }
}

fn server_tls(p: &Pki, mode: Option<ClientAuth>, crls: &[&[u8]]) -> ServerTls {
    let b = ServerTls::builder()
        .with_cert(p.server.chain_pem.as_bytes(), p.server.key_pem.as_bytes())
        .unwrap();
    let b = match mode {
        Some(m) => b
            .with_client_auth(m, p.ca.cert_pem().as_bytes(), crls)
            .unwrap(),
        None => b.without_client_auth(),
    };
    b.device_id_uri_prefix(Some("urn:device:".into()))
        .alpn(vec![b"redis".to_vec(), b"h2".to_vec()])
        .build()
        .unwrap()
}

/// The server builder most tests start from: `p`'s server certificate, client
/// certificates required against `p`'s CA, with `crls`.
fn required_auth(p: &Pki, crls: &[&[u8]]) -> ServerTlsBuilder<Ready> {
    ServerTls::builder()
        .with_cert(p.server.chain_pem.as_bytes(), p.server.key_pem.as_bytes())
        .unwrap()
        .with_client_auth(ClientAuth::Required, p.ca.cert_pem().as_bytes(), crls)
        .unwrap()
}

fn client_config(ca_pem: &str, leaf: Option<&Leaf>, tls12_only: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let b = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match leaf {
        Some(l) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(l.chain_pem.as_bytes())
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"redis".to_vec()];
    Arc::new(cfg)
}

/// Run the handshake in memory. `Ok(session)` once both sides are done; `Err` with the
/// server's reason when the server refused.
fn handshake(
    server: &ServerTls,
    cfg: Arc<ClientConfig>,
    sni: &str,
) -> (ClientConnection, Result<TlsSession, RejectReason>) {
    let mut client =
        ClientConnection::new(cfg, ServerName::try_from(sni.to_string()).unwrap()).unwrap();
    let mut s = server.accept().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut plain = vec![0u8; 64 * 1024];
    for _ in 0..20 {
        let mut out = Vec::new();
        client.write_tls(&mut out).unwrap();
        let mut fed = 0;
        while fed < out.len() {
            match s.read(&mut out[fed..], &mut plain) {
                Ok(o) if o.consumed == 0 => break,
                Ok(o) => fed += o.consumed,
                Err(r) => {
                    // The alert reaches the client.
                    let n = s.write_ciphertext(&mut buf);
                    let _ = client.read_tls(&mut &buf[..n]);
                    let _ = client.process_new_packets();
                    return (client, Err(r));
                }
            }
        }
        while s.wants_write() {
            let n = s.write_ciphertext(&mut buf);
            client.read_tls(&mut &buf[..n]).unwrap();
        }
        if client.process_new_packets().is_err() {
            break;
        }
        if s.is_established() && !client.is_handshaking() && !client.wants_write() {
            return (client, Ok(s));
        }
    }
    (client, Err(RejectReason::Other("no progress".into())))
}

/// Hand `wire` (records the session sealed) to the rustls client and read `n` bytes of
/// plaintext back from it.
fn client_reads(client: &mut ClientConnection, wire: &[u8], n: usize) -> Vec<u8> {
    client.read_tls(&mut &wire[..]).unwrap();
    client.process_new_packets().unwrap();
    let mut got = vec![0u8; n];
    client.reader().read_exact(&mut got).unwrap();
    got
}

/// Feed all of `wire` to `s`; the plaintext it produced.
fn read_all(s: &mut TlsSession, wire: &mut [u8]) -> Vec<u8> {
    let mut plain = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    let mut fed = 0;
    for _ in 0..1000 {
        let o = s.read(&mut wire[fed..], &mut plain).unwrap();
        got.extend_from_slice(&plain[..o.produced]);
        fed += o.consumed;
        if fed == wire.len() && !s.holds_input() {
            return got;
        }
    }
    panic!("read made no progress");
}

fn refused(p: &Pki, leaf: Option<&Leaf>, crls: &[&[u8]]) -> RejectReason {
    let server = server_tls(p, Some(ClientAuth::Required), crls);
    match handshake(
        &server,
        client_config(p.ca.cert_pem(), leaf, false),
        "gw.example",
    )
    .1
    {
        Ok(_) => panic!("handshake succeeded"),
        Err(r) => r,
    }
}

#[test]
fn good_svid_gets_identity_and_data_flows_both_ways() {
    let p = pki();
    let mut spec = ClientSpec::spiffe(ID);
    spec.extra_uris = vec!["urn:device:laptop-7".into()];
    spec.common_name = Some("pricer".into());
    let leaf = p.ca.client(&spec, now()).unwrap();
    let server = server_tls(&p, Some(ClientAuth::Required), &[]);
    let (mut client, s) = handshake(
        &server,
        client_config(p.ca.cert_pem(), Some(&leaf), false),
        "gw.example",
    );
    let mut s = s.unwrap();
    let id = s.identity().unwrap();
    assert_eq!(&*id.spiffe_id, ID);
    assert_eq!(id.device_id.as_deref(), Some("laptop-7"));
    assert_eq!(id.common_name.as_deref(), Some("pricer"));
    assert_eq!(s.sni(), Some("gw.example"));
    assert_eq!(s.alpn(), Some("redis"));

    // client -> server
    client.writer().write_all(b"PING\r\n").unwrap();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    let got = read_all(&mut s, &mut wire);
    assert_eq!(got, b"PING\r\n");
    // server -> client
    let mut buf = vec![0u8; 4096];
    let w = s.write(b"+PONG\r\n", &mut buf);
    assert_eq!(w.taken, 7);
    assert_eq!(
        client_reads(&mut client, &buf[..w.written], 7),
        b"+PONG\r\n"
    );
    // close_notify from the client is seen.
    client.send_close_notify();
    let mut wire = Vec::new();
    client.write_tls(&mut wire).unwrap();
    assert!(read_all(&mut s, &mut wire).is_empty());
    assert!(s.peer_closed());
}

#[test]
fn no_client_certificate_is_refused_when_required() {
    let p = pki();
    assert_eq!(refused(&p, None, &[]), RejectReason::NoClientCertificate);
}

#[test]
fn optional_client_auth_admits_anonymous_without_identity() {
    let p = pki();
    let server = server_tls(&p, Some(ClientAuth::Optional), &[]);
    let (_, s) = handshake(
        &server,
        client_config(p.ca.cert_pem(), None, false),
        "gw.example",
    );
    let s = s.unwrap();
    assert!(s.identity().is_none());
    // ... but a presented certificate is still checked.
    let bad = p.ca.client(&Bad::TwoUriSans.spec(ID), now()).unwrap();
    let (_, s) = handshake(
        &server,
        client_config(p.ca.cert_pem(), Some(&bad), false),
        "gw.example",
    );
    assert_eq!(s.unwrap_err().label(), "uri-san-count");
}

#[test]
fn every_bad_class_is_refused_with_its_reason() {
    let p = pki();
    for bad in Bad::ALL {
        let leaf = p.ca.client(&bad.spec(ID), now()).unwrap();
        let want = match bad {
            Bad::Expired => "expired",
            Bad::NotYetValid => "not-yet-valid",
            Bad::TwoUriSans | Bad::NoUriSan | Bad::SpiffeIdInCnOnly | Bad::SpiffeIdInDnsSanOnly => {
                "uri-san-count"
            }
            Bad::InvalidSpiffeId | Bad::NotSpiffeScheme => "bad-spiffe-id",
            // webpki refuses a CA leaf itself (CaUsedAsEndEntity), before our check.
            Bad::CaLeaf => "ca-as-leaf",
            Bad::KeyCertSignOnLeaf
            | Bad::CrlSignOnLeaf
            | Bad::NoDigitalSignature
            | Bad::NoKeyUsage => "wrong-key-usage",
        };
        let r = refused(&p, Some(&leaf), &[]);
        assert_eq!(r.label(), want, "{bad:?}: {r:?}");
    }
}

#[test]
fn untrusted_issuer_is_refused() {
    let p = pki();
    let other = Ca::new("other", now()).unwrap();
    let leaf = other.client(&ClientSpec::spiffe(ID), now()).unwrap();
    assert_eq!(refused(&p, Some(&leaf), &[]), RejectReason::UntrustedIssuer);
}

#[test]
fn revoked_certificate_is_refused_and_others_pass() {
    let p = pki();
    let revoked = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let fine = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let crl = p.ca.crl(&[&revoked], now()).unwrap();
    assert_eq!(
        refused(&p, Some(&revoked), &[crl.as_bytes()]),
        RejectReason::Revoked
    );
    let server = server_tls(&p, Some(ClientAuth::Required), &[crl.as_bytes()]);
    let (_, s) = handshake(
        &server,
        client_config(p.ca.cert_pem(), Some(&fine), false),
        "gw.example",
    );
    assert!(s.is_ok());
}

#[test]
fn intermediate_without_key_cert_sign_is_refused() {
    let p = pki();
    let int = p.ca.intermediate("int", now(), false).unwrap();
    let leaf = int.client(&ClientSpec::spiffe(ID), now()).unwrap();
    assert_eq!(refused(&p, Some(&leaf), &[]).label(), "issuer-cannot-sign");
    // The same chain through a proper intermediate passes.
    let int = p.ca.intermediate("int ok", now(), true).unwrap();
    let leaf = int.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let server = server_tls(&p, Some(ClientAuth::Required), &[]);
    let (_, s) = handshake(
        &server,
        client_config(p.ca.cert_pem(), Some(&leaf), false),
        "gw.example",
    );
    assert_eq!(&*s.unwrap().identity().unwrap().spiffe_id, ID);
}

#[test]
fn garbage_instead_of_a_client_hello_is_malformed() {
    let p = pki();
    let server = server_tls(&p, Some(ClientAuth::Required), &[]);
    let mut s = server.accept().unwrap();
    let mut plain = [0u8; 256];
    let r = s
        .read(
            &mut b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            &mut plain,
        )
        .unwrap_err();
    assert_eq!(r.label(), "malformed");
    // Failed sessions stay failed and take nothing more.
    assert_eq!(s.read(&mut b"more".to_vec(), &mut plain).unwrap_err(), r);
    assert_eq!(s.write(b"x", &mut plain).taken, 0);
}

#[test]
fn tls12_only_client_needs_min_version_12() {
    let p = pki();
    let leaf = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let server = server_tls(&p, Some(ClientAuth::Required), &[]);
    let (_, s) = handshake(
        &server,
        client_config(p.ca.cert_pem(), Some(&leaf), true),
        "gw.example",
    );
    assert_eq!(s.unwrap_err().label(), "no-common-parameters");
    let server = required_auth(&p, &[])
        .min_version(MinVersion::Tls12)
        .build()
        .unwrap();
    let (_, s) = handshake(
        &server,
        client_config(p.ca.cert_pem(), Some(&leaf), true),
        "gw.example",
    );
    assert_eq!(&*s.unwrap().identity().unwrap().spiffe_id, ID);
    // rustls clients always offer EMS, so a non-EMS hello cannot be produced here; the
    // setting itself is what refuses one (rustls server/tls12.rs).
    assert!(server.config.require_ems);
}

#[test]
fn sni_selects_the_certificate() {
    let p = pki();
    let other = p.ca.server(&["db.example"], &[], now()).unwrap();
    let leaf = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let server = required_auth(&p, &[])
        .add_sni_cert(other.chain_pem.as_bytes(), other.key_pem.as_bytes())
        .unwrap()
        .build()
        .unwrap();
    // The client checks the name: each SNI only works if the matching cert is served.
    for name in ["db.example", "gw.example"] {
        let (client, s) = handshake(
            &server,
            client_config(p.ca.cert_pem(), Some(&leaf), false),
            name,
        );
        assert_eq!(s.unwrap().sni(), Some(name));
        let served = client.peer_certificates().unwrap()[0].clone();
        let want = if name == "db.example" {
            &other
        } else {
            &p.server
        };
        assert_eq!(
            served.as_ref(),
            zgate_devpki::pem_to_der(&want.cert_pem)[0].as_slice()
        );
    }
}

#[test]
fn config_errors_are_typed() {
    let p = pki();
    let other = p.ca.server(&["x.example"], &[], now()).unwrap();
    assert!(matches!(
        ServerTls::builder().with_cert(b"", p.server.key_pem.as_bytes()),
        Err(TlsConfigError::NoCertificate { what: "cert" })
    ));
    assert!(matches!(
        ServerTls::builder().with_cert(p.server.chain_pem.as_bytes(), other.key_pem.as_bytes()),
        Err(TlsConfigError::Key { .. })
    ));
    assert!(matches!(
        ServerTls::builder().with_cert(p.server.chain_pem.as_bytes(), b"nope"),
        Err(TlsConfigError::Key { .. })
    ));
    // A leaf in the CA bundle may not sign: refused at load.
    let b = ServerTls::builder()
        .with_cert(p.server.chain_pem.as_bytes(), p.server.key_pem.as_bytes())
        .unwrap();
    match b.with_client_auth(ClientAuth::Required, other.cert_pem.as_bytes(), &[]) {
        Err(TlsConfigError::Certificate {
            what: "client_ca",
            reason,
        }) => {
            assert!(reason.contains("may not sign"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let b = ServerTls::builder()
        .with_cert(p.server.chain_pem.as_bytes(), p.server.key_pem.as_bytes())
        .unwrap();
    assert!(matches!(
        b.with_client_auth(ClientAuth::Required, p.ca.cert_pem().as_bytes(), &[b"junk"]),
        Err(TlsConfigError::Pem { what: "crl", .. })
    ));
}

#[test]
fn resumption_off_sends_no_tickets_and_on_resumes_with_identity() {
    let p = pki();
    let leaf = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let cfg = client_config(p.ca.cert_pem(), Some(&leaf), false);
    for on in [false, true] {
        let server = required_auth(&p, &[])
            .session_resumption(on)
            .build()
            .unwrap();
        let (mut c1, s1) = handshake(&server, Arc::clone(&cfg), "gw.example");
        let mut s1 = s1.unwrap();
        // Deliver the server's tickets (sent after the handshake) to the client.
        let mut buf = vec![0u8; 16 * 1024];
        while s1.wants_write() {
            let n = s1.write_ciphertext(&mut buf);
            c1.read_tls(&mut &buf[..n]).unwrap();
        }
        c1.process_new_packets().unwrap();
        let (_, s2) = handshake(&server, Arc::clone(&cfg), "gw.example");
        let s2 = s2.unwrap();
        assert_eq!(s2.is_resumed(), on);
        assert_eq!(&*s2.identity().unwrap().spiffe_id, ID);
    }
}

/// Hand the tickets the server sent after the handshake to the client.
fn deliver_tickets(s: &mut TlsSession, c: &mut ClientConnection) {
    let mut buf = vec![0u8; 16 * 1024];
    while s.wants_write() {
        let n = s.write_ciphertext(&mut buf);
        c.read_tls(&mut &buf[..n]).unwrap();
    }
    c.process_new_packets().unwrap();
}

fn resuming_server(p: &Pki, crls: &[&[u8]], max_age: std::time::Duration) -> ServerTls {
    required_auth(p, crls)
        .session_resumption(true)
        .session_resumption_max_age(max_age)
        .build()
        .unwrap()
}

#[test]
fn resumption_reuses_a_verification_only_until_max_age_even_through_new_tickets() {
    let p = pki();
    let leaf = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    // The client's ticket cache is shared by its connections: the newest ticket first.
    let cfg = client_config(p.ca.cert_pem(), Some(&leaf), false);
    let server = resuming_server(&p, &[], std::time::Duration::from_millis(1_500));
    let full_at = std::time::Instant::now();
    let (mut c1, s1) = handshake(&server, Arc::clone(&cfg), "gw.example");
    let mut s1 = s1.unwrap();
    assert!(!s1.is_resumed());
    deliver_tickets(&mut s1, &mut c1);

    std::thread::sleep(std::time::Duration::from_millis(600));
    let (mut c2, s2) = handshake(&server, Arc::clone(&cfg), "gw.example");
    let mut s2 = s2.unwrap();
    assert!(s2.is_resumed(), "within max_age the ticket resumes");
    assert_eq!(&*s2.identity().unwrap().spiffe_id, ID);
    // New tickets, issued 0.6 s after the full handshake.
    deliver_tickets(&mut s2, &mut c2);

    // 1.6 s after the full handshake, 1 s after the newest ticket: that ticket still
    // dates from the full handshake, so the client verifies its chain again.
    std::thread::sleep(std::time::Duration::from_millis(1_600).saturating_sub(full_at.elapsed()));
    let (_, s3) = handshake(&server, Arc::clone(&cfg), "gw.example");
    let s3 = s3.unwrap();
    assert!(!s3.is_resumed(), "past max_age: a full handshake");
    assert_eq!(&*s3.identity().unwrap().spiffe_id, ID);
}

#[test]
fn resumption_with_a_crl_stops_when_the_crl_is_past_its_next_update() {
    let p = pki();
    let leaf = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    // `crl()` sets nextUpdate a day after the instant it is given: 2 s from now.
    let next_update = now() + 2;
    let crl = p.ca.crl(&[], next_update - 86_400).unwrap();
    let server = resuming_server(&p, &[crl.as_bytes()], crate::DEFAULT_RESUMPTION_MAX_AGE);
    let cfg = client_config(p.ca.cert_pem(), Some(&leaf), false);
    let (mut c1, s1) = handshake(&server, Arc::clone(&cfg), "gw.example");
    let mut s1 = s1.unwrap();
    deliver_tickets(&mut s1, &mut c1);
    let (mut c2, s2) = handshake(&server, Arc::clone(&cfg), "gw.example");
    let mut s2 = s2.unwrap();
    assert!(s2.is_resumed(), "a current CRL does not stop resumption");
    deliver_tickets(&mut s2, &mut c2);

    while now() <= next_update {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The CRL no longer says whether the chain is revoked: a fresh client is refused
    // (fail closed), and so is the holder of a ticket, which no longer resumes.
    let fresh = client_config(p.ca.cert_pem(), Some(&leaf), false);
    let (_, s) = handshake(&server, fresh, "gw.example");
    assert_eq!(s.err(), Some(RejectReason::RevocationUnknown));
    let (_, s) = handshake(&server, cfg, "gw.example");
    assert_eq!(s.err(), Some(RejectReason::RevocationUnknown));
}

#[test]
fn a_rebuilt_configuration_does_not_resume_tickets_of_the_old_one() {
    // Every reload of certificate, CA bundle or CRL builds a new `ServerTls`.
    let p = pki();
    let leaf = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let cfg = client_config(p.ca.cert_pem(), Some(&leaf), false);
    let old = resuming_server(&p, &[], crate::DEFAULT_RESUMPTION_MAX_AGE);
    let (mut c1, s1) = handshake(&old, Arc::clone(&cfg), "gw.example");
    deliver_tickets(&mut s1.unwrap(), &mut c1);
    let new = resuming_server(&p, &[], crate::DEFAULT_RESUMPTION_MAX_AGE);
    let (_, s2) = handshake(&new, Arc::clone(&cfg), "gw.example");
    assert!(!s2.unwrap().is_resumed());
}

#[test]
fn the_identity_knows_when_its_chain_expires_through_an_intermediate() {
    let p = pki();
    // `intermediate` makes a CA valid for ten years from the instant it is given.
    let int_expires = now() + 100;
    let int =
        p.ca.intermediate("short-lived int", int_expires - 10 * 365 * 86_400, true)
            .unwrap();
    let leaf = int.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let server = server_tls(&p, Some(ClientAuth::Required), &[]);
    let identity = |l: &Leaf| {
        let cfg = client_config(p.ca.cert_pem(), Some(l), false);
        handshake(&server, cfg, "gw.example")
            .1
            .unwrap()
            .identity()
            .unwrap()
            .clone()
    };
    let id = identity(&leaf);
    assert_eq!(id.chain_not_after, int_expires);
    assert!(id.not_after > int_expires, "the leaf itself lasts a day");
    // Without an intermediate, the chain ends with the leaf.
    let id = identity(&p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap());
    assert_eq!(id.chain_not_after, id.not_after);
}

/// A client certificate resolver that presents `leaf` and records the CA names the
/// server's CertificateRequest carried.
#[derive(Debug)]
struct HintRecorder {
    key: Arc<rustls::sign::CertifiedKey>,
    seen: std::sync::Mutex<Option<Vec<Vec<u8>>>>,
}

impl rustls::client::ResolvesClientCert for HintRecorder {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        *self.seen.lock().unwrap() = Some(root_hint_subjects.iter().map(|h| h.to_vec()).collect());
        Some(Arc::clone(&self.key))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[test]
fn client_ca_names_are_advertised_unless_turned_off() {
    let p = pki();
    let leaf = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let chain: Vec<_> = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    for (advertise, tls12) in [(true, false), (false, false), (true, true), (false, true)] {
        let server = required_auth(&p, &[])
            .min_version(MinVersion::Tls12)
            .advertise_client_ca_names(advertise)
            .build()
            .unwrap();
        let recorder = Arc::new(HintRecorder {
            key: Arc::new(rustls::sign::CertifiedKey::new(
                chain.clone(),
                Arc::clone(&signer),
            )),
            seen: std::sync::Mutex::new(None),
        });
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(p.ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let version: &[&rustls::SupportedProtocolVersion] = if tls12 {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(version)
                .unwrap()
                .with_root_certificates(roots)
                .with_client_cert_resolver(recorder.clone());
        let (_, s) = handshake(&server, Arc::new(cfg), "gw.example");
        // Either way the client presents its SVID and gets in.
        assert_eq!(
            &*s.unwrap().identity().unwrap().spiffe_id,
            ID,
            "tls12={tls12}"
        );
        let names = recorder.seen.lock().unwrap().clone().unwrap();
        assert_eq!(names.len(), usize::from(advertise), "tls12={tls12}");
    }
}

/// `corp.example` trusts only the corp root, `partner.example` only the partner root.
fn per_domain_server(corp: &Pki, partner: &Ca) -> ServerTls {
    ServerTls::builder()
        .with_cert(
            corp.server.chain_pem.as_bytes(),
            corp.server.key_pem.as_bytes(),
        )
        .unwrap()
        .with_client_auth_per_trust_domain(
            ClientAuth::Required,
            &[
                ("corp.example", corp.ca.cert_pem().as_bytes()),
                ("partner.example", partner.cert_pem().as_bytes()),
            ],
            &[],
        )
        .unwrap()
        .build()
        .unwrap()
}

/// Review H1 (probe P1): with per-trust-domain bundles, the partner's CA cannot mint a
/// corp SPIFFE ID, while each CA still vouches for its own trust domain.
#[test]
fn a_partner_ca_cannot_issue_a_corp_spiffe_id() {
    let p = pki();
    let partner = Ca::new("partner.example root", now()).unwrap();
    let server = per_domain_server(&p, &partner);
    let cfg = |leaf: &Leaf| client_config(p.ca.cert_pem(), Some(leaf), false);

    let forged = partner.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let (_, s) = handshake(&server, cfg(&forged), "gw.example");
    assert_eq!(s.unwrap_err(), RejectReason::UntrustedIssuer);

    let own = partner
        .client(
            &ClientSpec::spiffe("spiffe://partner.example/billing"),
            now(),
        )
        .unwrap();
    let (_, s) = handshake(&server, cfg(&own), "gw.example");
    assert_eq!(
        &*s.unwrap().identity().unwrap().spiffe_id,
        "spiffe://partner.example/billing"
    );

    let corp = p.ca.client(&ClientSpec::spiffe(ID), now()).unwrap();
    let (_, s) = handshake(&server, cfg(&corp), "gw.example");
    assert_eq!(&*s.unwrap().identity().unwrap().spiffe_id, ID);

    // Nor can the corp CA issue a partner ID.
    let forged =
        p.ca.client(
            &ClientSpec::spiffe("spiffe://partner.example/billing"),
            now(),
        )
        .unwrap();
    let (_, s) = handshake(&server, cfg(&forged), "gw.example");
    assert_eq!(s.unwrap_err(), RejectReason::UntrustedIssuer);
}

#[test]
fn a_trust_domain_without_a_bundle_is_refused_before_path_validation() {
    let p = pki();
    let partner = Ca::new("partner.example root", now()).unwrap();
    let server = per_domain_server(&p, &partner);
    let leaf =
        p.ca.client(&ClientSpec::spiffe("spiffe://other.example/x"), now())
            .unwrap();
    let (_, s) = handshake(
        &server,
        client_config(p.ca.cert_pem(), Some(&leaf), false),
        "gw.example",
    );
    let r = s.unwrap_err();
    assert_eq!(r.label(), "unknown-trust-domain");
    assert_eq!(
        r,
        RejectReason::Svid(SvidError::UnknownTrustDomain {
            trust_domain: "other.example".into()
        })
    );
    // A leaf with no SPIFFE ID cannot pick a bundle at all.
    let leaf = p.ca.client(&Bad::NoUriSan.spec(ID), now()).unwrap();
    let (_, s) = handshake(
        &server,
        client_config(p.ca.cert_pem(), Some(&leaf), false),
        "gw.example",
    );
    assert_eq!(s.unwrap_err().label(), "uri-san-count");
}

#[test]
fn trust_domain_bundles_are_checked_at_load() {
    let p = pki();
    let ca = p.ca.cert_pem().as_bytes();
    let build = |bundles: &[(&str, &[u8])]| {
        ServerTls::builder()
            .with_cert(p.server.chain_pem.as_bytes(), p.server.key_pem.as_bytes())
            .unwrap()
            .with_client_auth_per_trust_domain(ClientAuth::Required, bundles, &[])
            .map(|_| ())
            .unwrap_err()
    };
    for bad in [
        "Corp.Example",
        "corp.example/ns",
        "",
        "spiffe://corp.example",
    ] {
        assert!(
            matches!(build(&[(bad, ca)]), TlsConfigError::TrustDomain { trust_domain, .. } if trust_domain == bad),
            "{bad:?} accepted"
        );
    }
    assert!(matches!(
        build(&[("corp.example", ca), ("corp.example", ca)]),
        TlsConfigError::TrustDomain {
            reason: "given twice",
            ..
        }
    ));
    assert!(matches!(build(&[]), TlsConfigError::TrustDomain { .. }));
    assert!(matches!(
        build(&[("corp.example", b"not pem")]),
        TlsConfigError::NoCertificate { .. }
    ));
}

#[path = "record_tests.rs"]
mod record_tests;
