//! The TLS client side of the load generator: a rustls (ring) client configuration
//! with a client certificate, and [`Link`], a connection that is either plain TCP or
//! TLS over a non-blocking socket, so every client mode runs the same loop over both.
//!
//! The client is an independent peer of the gateway under test: it uses rustls
//! directly, not zgate's own TLS wrapper (`crates/tls`, server side only), and it
//! verifies the server's certificate against `--ca` as a real client would.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore};

use crate::LoadError;

/// TLS options shared by the client modes.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Speak TLS to the target (TLS 1.3, rustls with ring), presenting --cert/--key.
    #[arg(long)]
    pub tls: bool,
    /// CA bundle (PEM) the server's certificate must chain to.
    #[arg(long, requires = "tls")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), presented on every handshake.
    #[arg(long, requires = "tls")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, requires = "tls")]
    pub key: Option<PathBuf>,
    /// Server name sent as SNI and checked against the server's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
}

/// A ready client configuration and the name to connect to.
#[derive(Debug, Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

/// What a finished handshake negotiated, for the report.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct Negotiated {
    /// `TLSv1_3` or `TLSv1_2`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// e.g. `X25519` (a resumed TLS 1.3 handshake still runs (EC)DHE with rustls).
    pub kx_group: String,
}

fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|e| LoadError::Tls {
        reason: format!("{}: {e}", path.display()),
    })
}

fn required<'a>(v: Option<&'a PathBuf>, arg: &'static str) -> Result<&'a PathBuf, LoadError> {
    v.ok_or(LoadError::Arg {
        arg,
        reason: "required with --tls",
    })
}

impl TlsArgs {
    /// The client, or `None` without `--tls`. `resume`: keep session tickets and offer
    /// them (TLS 1.3 resumption); otherwise every handshake is a full one.
    pub fn client(&self, resume: bool) -> Result<Option<Client>, LoadError> {
        if !self.tls {
            return Ok(None);
        }
        let ca_path = required(self.ca.as_ref(), "ca")?;
        let cert_path = required(self.cert.as_ref(), "cert")?;
        let key_path = required(self.key.as_ref(), "key")?;
        let tls_err = |path: &Path, what: &str, e: &dyn std::fmt::Display| LoadError::Tls {
            reason: format!("{}: {what}: {e}", path.display()),
        };

        let mut roots = RootCertStore::empty();
        let ca_pem = read_file(ca_path)?;
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| tls_err(ca_path, "not a PEM certificate", &e))?;
            roots
                .add(cert)
                .map_err(|e| tls_err(ca_path, "unusable CA certificate", &e))?;
        }
        if roots.is_empty() {
            return Err(LoadError::Tls {
                reason: format!("{}: no certificate in the file", ca_path.display()),
            });
        }
        let cert_pem = read_file(cert_path)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(cert_path, "not a PEM certificate chain", &e))?;
        if chain.is_empty() {
            return Err(LoadError::Tls {
                reason: format!("{}: no certificate in the file", cert_path.display()),
            });
        }
        let key_pem = read_file(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| tls_err(key_path, "not a PEM private key", &e))?;

        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| LoadError::Tls {
                    reason: format!("protocol versions: {e}"),
                })?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(key_path, "key does not fit the certificate", &e))?;
        config.resumption = if resume {
            // Enough tickets for every connection in flight to hold one.
            Resumption::in_memory_sessions(4096)
        } else {
            Resumption::disabled()
        };
        let name = ServerName::try_from(self.server_name.clone()).map_err(|e| LoadError::Tls {
            reason: format!("--server-name `{}`: {e}", self.server_name),
        })?;
        Ok(Some(Client {
            config: Arc::new(config),
            name,
        }))
    }
}

impl Client {
    /// A new client session (nothing sent yet).
    pub fn session(&self, index: usize) -> Result<ClientConnection, LoadError> {
        ClientConnection::new(Arc::clone(&self.config), self.name.clone()).map_err(|e| {
            LoadError::Handshake {
                index,
                reason: e.to_string(),
            }
        })
    }
}

/// A connection's byte stream: plain, or TLS over the same socket. `Read`/`Write` carry
/// plaintext; both return `WouldBlock` on a non-blocking socket like a plain stream.
pub enum Link<S> {
    /// No TLS.
    Plain(S),
    /// TLS client session over the socket (boxed: a session is ~1 KiB).
    Tls(Box<TlsLink<S>>),
}

/// A TLS client session and its socket.
pub struct TlsLink<S> {
    conn: ClientConnection,
    sock: S,
    /// The socket reported EOF.
    eof: bool,
}

impl<S: Read + Write> Link<S> {
    /// Wraps `sock`, with TLS when `session` is given.
    pub fn new(sock: S, session: Option<ClientConnection>) -> Link<S> {
        match session {
            None => Link::Plain(sock),
            Some(conn) => Link::Tls(Box::new(TlsLink {
                conn,
                sock,
                eof: false,
            })),
        }
    }

    /// The socket and the TLS session, apart (to move a session to another socket
    /// type, e.g. from a blocking std stream to a mio one after the handshake).
    pub fn into_parts(self) -> (S, Option<ClientConnection>) {
        match self {
            Link::Plain(s) => (s, None),
            Link::Tls(t) => (t.sock, Some(t.conn)),
        }
    }

    /// The socket.
    pub fn socket(&mut self) -> &mut S {
        match self {
            Link::Plain(s) => s,
            Link::Tls(t) => &mut t.sock,
        }
    }

    /// The TLS session, if any.
    pub fn tls(&self) -> Option<&ClientConnection> {
        match self {
            Link::Plain(_) => None,
            Link::Tls(t) => Some(&t.conn),
        }
    }

    /// Whether TLS bytes are queued that the socket did not take yet (wait for
    /// writability, then [`Link::flush_tls`]). Always false for plain links.
    pub fn wants_write(&self) -> bool {
        self.tls().is_some_and(|c| c.wants_write())
    }

    /// Writes queued TLS bytes until done or the socket would block.
    pub fn flush_tls(&mut self) -> io::Result<()> {
        let Link::Tls(t) = self else { return Ok(()) };
        t.flush_tls()
    }

    /// Moves the handshake on as far as the socket allows: sends what is queued, reads
    /// and processes what arrived. `Ok(true)` once the handshake is complete. The error
    /// of a failed handshake names the TLS reason (an alert from the gateway, a bad
    /// certificate, ...).
    pub fn drive_handshake(&mut self) -> io::Result<bool> {
        let Link::Tls(t) = self else { return Ok(true) };
        loop {
            t.flush_tls()?;
            if !t.conn.is_handshaking() {
                return Ok(true);
            }
            if t.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed during the TLS handshake",
                ));
            }
            match t.read_tls_once() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    t.flush_tls()?;
                    return Ok(!t.conn.is_handshaking());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends close_notify (TLS) as far as the socket takes it now.
    pub fn close_notify(&mut self) {
        if let Link::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush_tls();
        }
    }

    /// What the handshake negotiated (`None` for plain links or before it finished).
    pub fn negotiated(&self) -> Option<Negotiated> {
        let c = self.tls()?;
        Some(Negotiated {
            version: format!("{:?}", c.protocol_version()?),
            cipher_suite: format!("{:?}", c.negotiated_cipher_suite()?.suite()),
            kx_group: c
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default(),
        })
    }

    /// Whether the finished handshake was a resumption.
    pub fn resumed(&self) -> bool {
        self.tls()
            .and_then(|c| c.handshake_kind())
            .is_some_and(|k| k == HandshakeKind::Resumed)
    }
}

impl<S: Read + Write> TlsLink<S> {
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One read from the socket into rustls, then processes it. `WouldBlock` when the
    /// socket has nothing; EOF is remembered and reported as `Ok`.
    fn read_tls_once(&mut self) -> io::Result<()> {
        loop {
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, TlsFailure(e)))?;
        Ok(())
    }
}

/// A rustls error as the source of an `io::Error`, shown as `TLS: ...`.
#[derive(Debug)]
struct TlsFailure(rustls::Error);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS: {}", self.0)
    }
}

impl std::error::Error for TlsFailure {}

impl<S: Read + Write> Read for Link<S> {
    /// Plaintext. `Ok(0)`: the peer closed (close_notify, or a TCP EOF).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = match self {
            Link::Plain(s) => return s.read(buf),
            Link::Tls(t) => t,
        };
        loop {
            match t.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // TCP EOF without close_notify: the peer is gone all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if t.eof {
                return Ok(0);
            }
            t.read_tls_once()?;
            // Processing may have queued bytes to send (a key update, an alert).
            t.flush_tls()?;
        }
    }
}

impl<S: Read + Write> Write for Link<S> {
    /// Plaintext in; TLS sends as much as the socket takes and keeps the rest queued
    /// (see [`Link::wants_write`]). Never `WouldBlock` for TLS: rustls buffers it.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match self {
            Link::Plain(s) => return s.write(buf),
            Link::Tls(t) => t,
        };
        let n = t.conn.writer().write(buf)?;
        t.flush_tls()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Plain(s) => s.flush(),
            Link::Tls(t) => t.flush_tls(),
        }
    }
}

/// Completes the handshake on a blocking socket (bounded by the socket's timeouts).
pub fn handshake_blocking<S: Read + Write>(link: &mut Link<S>) -> io::Result<()> {
    // Each turn either makes progress or the socket's read timeout ends it with an error.
    for _ in 0..10_000 {
        if link.drive_handshake()? {
            return Ok(());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "TLS handshake did not finish after 10,000 socket reads",
    ))
}

/// Connection `index` to `addr`, blocking, every wait bounded by `stall` (the connect,
/// and each read and write through socket timeouts); with `tls` its handshake done.
pub fn connect_blocking(
    addr: std::net::SocketAddr,
    index: usize,
    tls: Option<&Client>,
    stall: std::time::Duration,
) -> Result<Link<std::net::TcpStream>, LoadError> {
    let s = std::net::TcpStream::connect_timeout(&addr, stall).map_err(|source| {
        LoadError::Connect {
            index,
            addr,
            source,
        }
    })?;
    let io_err = |op| move |source| LoadError::Io { index, op, source };
    s.set_read_timeout(Some(stall))
        .map_err(io_err("set_read_timeout"))?;
    s.set_write_timeout(Some(stall))
        .map_err(io_err("set_write_timeout"))?;
    let mut link = Link::new(s, tls.map(|t| t.session(index)).transpose()?);
    handshake_blocking(&mut link).map_err(|e| LoadError::Handshake {
        index,
        reason: e.to_string(),
    })?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> TlsArgs {
        TlsArgs {
            tls: true,
            ca: ca.map(PathBuf::from),
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
            server_name: "localhost".into(),
        }
    }

    #[test]
    fn without_tls_there_is_no_client() {
        let mut a = args(None, None, None);
        a.tls = false;
        assert!(a.client(false).unwrap().is_none());
    }

    #[test]
    fn a_missing_option_is_named() {
        let e = args(None, Some("c.pem"), Some("c.key"))
            .client(false)
            .unwrap_err();
        assert_eq!(e.to_string(), "--ca: required with --tls");
        let e = args(Some("ca.pem"), Some("c.pem"), None)
            .client(false)
            .unwrap_err();
        assert_eq!(e.to_string(), "--key: required with --tls");
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let e = args(Some("/nonexistent/ca.pem"), Some("c.pem"), Some("c.key"))
            .client(false)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("TLS client set-up: /nonexistent/ca.pem: "),
            "{msg}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("zgate-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let p = empty.to_str().unwrap();
        let msg = args(Some(p), Some(p), Some(p))
            .client(false)
            .unwrap_err()
            .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            msg.ends_with("empty.pem: no certificate in the file"),
            "{msg}"
        );
    }
}
