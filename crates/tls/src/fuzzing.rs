//! The record layer under fuzzing (`cargo fuzz run records` in `dataplane/fuzz`; a unit
//! test replays its corpus). Each input runs one real handshake against a rustls client,
//! then drives the established session with what the input says.
//!
//! Input: byte 0 = flags (bit 0: flip one wire byte, bit 1: a plaintext buffer smaller
//! than a record, bit 2: TLS 1.2, bit 3: raw mode, bit 4: open records in place with
//! [`TlsSession::read_in_place`] whenever the session allows it, as the dataplane does),
//! byte 1 = seed for the cut points, the rest = payload.
//! - raw mode: the payload goes to the session as if it were records (garbage, mostly);
//! - otherwise the client sends the payload as records, the wire is cut into reads at
//!   seed-chosen places and, with bit 0, one byte is flipped. The session must deliver
//!   exactly the payload when nothing was flipped and never a byte that differs from
//!   it when something was; then the payload goes back through [`TlsSession::write`]
//!   into seed-sized outputs and the client must read it unchanged.
//!
//! Beyond "no panic": `read` never claims more input than given or more plaintext than
//! the buffer holds, `read_in_place` reports at most [`MAX_RUNS`] pieces, all inside
//! the region, and a failed session stays failed.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::config::{MinVersion, ServerTls};
use crate::record::{Runs, MAX_OVERHEAD, MAX_RECORD, MAX_RUNS};
use crate::session::TlsSession;

struct Setup {
    server: ServerTls,
    tls13: Arc<ClientConfig>,
    tls12: Arc<ClientConfig>,
}

fn setup() -> Result<Arc<Setup>, String> {
    thread_local! {
        static SETUP: std::cell::RefCell<Option<Arc<Setup>>> = const { std::cell::RefCell::new(None) };
    }
    if let Some(s) = SETUP.with(|s| s.borrow().clone()) {
        return Ok(s);
    }
    let now = 1_800_000_000;
    let ca = zgate_devpki::Ca::new("fuzz", now).map_err(|e| e.to_string())?;
    let leaf = ca
        .server(&["gw.example"], &[], now)
        .map_err(|e| e.to_string())?;
    let server = ServerTls::builder()
        .with_cert(leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes())
        .map_err(|e| e.to_string())?
        .without_client_auth()
        .min_version(MinVersion::Tls12)
        .session_resumption(false)
        .build()
        .map_err(|e| e.to_string())?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let client = |v: &'static rustls::SupportedProtocolVersion| {
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[v])
            .map(|b| {
                // The CA's certificate is valid from `now`, which may be in the future
                // of this clock; time is not what is under test here.
                let mut cfg = b
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
                cfg.dangerous()
                    .set_certificate_verifier(Arc::new(AnyServer));
                Arc::new(cfg)
            })
            .map_err(|e| e.to_string())
    };
    let s = Arc::new(Setup {
        server,
        tls13: client(&rustls::version::TLS13)?,
        tls12: client(&rustls::version::TLS12)?,
    });
    SETUP.with(|c| *c.borrow_mut() = Some(Arc::clone(&s)));
    Ok(s)
}

/// The fuzz client trusts any server certificate (the handshake is not under test).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn handshake(setup: &Setup, tls12: bool) -> Result<(ClientConnection, TlsSession), String> {
    let cfg = if tls12 { &setup.tls12 } else { &setup.tls13 };
    let name = ServerName::try_from("gw.example").map_err(|e| e.to_string())?;
    let mut client = ClientConnection::new(Arc::clone(cfg), name).map_err(|e| e.to_string())?;
    let mut s = setup.server.accept().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..20 {
        let mut wire = Vec::new();
        client.write_tls(&mut wire).map_err(|e| e.to_string())?;
        s.read(&mut wire, &mut []).map_err(|e| e.to_string())?;
        while s.wants_write() {
            let n = s.write_ciphertext(&mut buf);
            client
                .read_tls(&mut buf.get(..n).unwrap_or_default())
                .map_err(|e| e.to_string())?;
        }
        client.process_new_packets().map_err(|e| e.to_string())?;
        if s.is_established() && !client.is_handshaking() && !client.wants_write() {
            return Ok((client, s));
        }
    }
    Err("handshake did not finish".into())
}

/// One fuzz input; `Err` names a broken property (the fuzz target panics with it).
pub fn fuzz_records(data: &[u8]) -> Result<(), String> {
    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let (&seed, payload) = rest.split_first().unwrap_or((&0, &[]));
    let setup = setup()?;
    let (mut client, mut s) = handshake(&setup, flags & 4 != 0)?;
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |max: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        1 + usize::try_from(x % max.max(1) as u64).unwrap_or(0)
    };
    let plain_len = if flags & 2 != 0 {
        next(MAX_RECORD)
    } else {
        MAX_RECORD
    };
    let mut plain = vec![0u8; plain_len];
    let wire = if flags & 8 != 0 {
        payload.to_vec()
    } else {
        for chunk in payload.chunks(next(20_000)) {
            client
                .writer()
                .write_all(chunk)
                .map_err(|e| e.to_string())?;
        }
        // write_tls moves at most 64 records a call.
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).map_err(|e| e.to_string())?;
        }
        if flags & 1 != 0 && !wire.is_empty() {
            let at = next(wire.len()) - 1;
            if let Some(b) = wire.get_mut(at) {
                *b ^= 1 << (seed % 8);
            }
        }
        wire
    };
    // Deliver the wire in seed-sized reads.
    let mut got = Vec::new();
    let mut fed = 0;
    let mut failed = None;
    'outer: while fed < wire.len() {
        let end = (fed + next(40_000)).min(wire.len());
        let mut piece = wire.get(fed..end).unwrap_or_default().to_vec();
        let mut used = 0;
        for _ in 0..100 {
            let input = piece.get_mut(used..).unwrap_or_default();
            let given = input.len();
            if flags & 16 != 0 && s.can_read_in_place() {
                // Headroom of garbage, then the input.
                let mut region = vec![0x5a; MAX_RECORD];
                region.extend_from_slice(input);
                let mut runs = Runs::default();
                match s.read_in_place(&mut region, MAX_RECORD, &mut runs) {
                    Ok(()) => {
                        if runs.as_slice().len() > MAX_RUNS {
                            return Err("more runs than MAX_RUNS".into());
                        }
                        for &(at, n) in runs.as_slice() {
                            let piece = region
                                .get(at as usize..at as usize + n as usize)
                                .ok_or_else(|| format!("run {at}+{n} outside the region"))?;
                            got.extend_from_slice(piece);
                        }
                        break;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break 'outer;
                    }
                }
            }
            match s.read(input, &mut plain) {
                Ok(o) => {
                    if o.consumed > given || o.produced > plain.len() {
                        return Err(format!(
                            "read claims {o:?} of {given} in, {} out",
                            plain.len()
                        ));
                    }
                    got.extend_from_slice(plain.get(..o.produced).unwrap_or_default());
                    used += o.consumed;
                    if o.consumed == 0 && o.produced == 0 {
                        // Stuck only when the plaintext buffer is smaller than a record.
                        if plain_len == MAX_RECORD {
                            return Err("no progress with a record-sized buffer".into());
                        }
                        break 'outer;
                    }
                    if used >= piece.len() && !s.holds_input() {
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break 'outer;
                }
            }
        }
        fed = end;
    }
    if let Some(e) = failed {
        // Failed stays failed.
        if s.read(&mut [23, 3, 3, 0, 0], &mut plain).is_ok() {
            return Err(format!("a failed session ({e}) read again"));
        }
        if s.write(b"x", &mut plain).taken != 0 {
            return Err("a failed session sealed data".into());
        }
    }
    if flags & 8 != 0 {
        return Ok(());
    }
    if !payload.starts_with(&got) {
        return Err("delivered bytes differ from what was sent".into());
    }
    let clean = flags & 3 == 0;
    if clean && got.len() != payload.len() {
        return Err(format!(
            "delivered {} of {} bytes",
            got.len(),
            payload.len()
        ));
    }
    if !clean {
        return Ok(());
    }
    // And back: sealed into seed-sized outputs, read by the client.
    let mut out = vec![0u8; 40_000];
    let mut sent = 0;
    let mut back = Vec::new();
    for _ in 0..100_000 {
        if sent >= payload.len() {
            break;
        }
        let room = (next(20_000) + MAX_OVERHEAD).min(out.len());
        let w = s.write(
            payload.get(sent..).unwrap_or_default(),
            out.get_mut(..room).unwrap_or_default(),
        );
        sent += w.taken;
        let mut at = 0;
        while at < w.written {
            at += client
                .read_tls(&mut out.get(at..w.written).unwrap_or_default())
                .map_err(|e| e.to_string())?;
            client.process_new_packets().map_err(|e| e.to_string())?;
            let mut more = Vec::new();
            let _ = client.reader().read_to_end(&mut more);
            back.extend_from_slice(&more);
        }
    }
    if back != payload {
        return Err("the client read something else than was sealed".into());
    }
    Ok(())
}
