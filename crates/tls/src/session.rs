//! The record driver: one TLS session (server side toward a client, or client side
//! toward an upstream), driven with byte slices.
//!
//! The caller owns the sockets and the buffers: it hands in ciphertext it received
//! ([`TlsSession::feed`]), takes out plaintext ([`TlsSession::take_plaintext`]), hands in
//! plaintext to send ([`TlsSession::encrypt`]) and takes out ciphertext to send
//! ([`TlsSession::write_ciphertext`]). Nothing here blocks, reads a clock or does IO.
//!
//! Built on rustls' buffered `ServerConnection` (`read_tls` / `process_new_packets` /
//! `write_tls`) over caller slices. Each direction costs one copy into or out of rustls'
//! own buffers; the 0.23 unbuffered API would avoid the ciphertext copy (decrypt in
//! place) and is the next step once measured (see `docs/tls.md`).

use std::io::{Read, Write};

use crate::config::ServerTls;
use crate::error::RejectReason;
use crate::svid::{identity_of, PeerIdentityOwned};

/// Most ciphertext rustls may queue for sending before [`TlsSession::encrypt`] takes no
/// more: bounds memory per flow and propagates backpressure to the upstream reader.
pub const SEND_BUFFER_LIMIT: usize = 32 * 1024;

/// Most plaintext [`TlsSession::forward_plaintext`] moves per call.
pub const FORWARD_BATCH: usize = 16 * 1024;

/// One TLS session.
pub struct TlsSession {
    conn: rustls::Connection,
    device_prefix: Option<std::sync::Arc<str>>,
    identity: Option<PeerIdentityOwned>,
    sni: Option<String>,
    established: bool,
    plaintext_pending: usize,
    peer_closed: bool,
    failed: Option<RejectReason>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("established", &self.established)
            .field("identity", &self.identity)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A new session for one accepted connection.
    pub fn accept(&self) -> Result<TlsSession, RejectReason> {
        let mut conn = rustls::ServerConnection::new(std::sync::Arc::clone(&self.config))
            .map_err(|e| RejectReason::from_rustls(&e))?;
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        Ok(TlsSession::new(
            rustls::Connection::Server(conn),
            self.device_prefix.clone(),
        ))
    }
}

impl TlsSession {
    fn new(conn: rustls::Connection, device_prefix: Option<std::sync::Arc<str>>) -> TlsSession {
        TlsSession {
            conn,
            device_prefix,
            identity: None,
            sni: None,
            established: false,
            plaintext_pending: 0,
            peer_closed: false,
            failed: None,
        }
    }

    /// A client-side session (upstream TLS): the peer's certificate is verified by
    /// rustls against the CA and name; no SPIFFE identity is derived from it.
    pub(crate) fn client(mut conn: rustls::ClientConnection) -> TlsSession {
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        TlsSession::new(rustls::Connection::Client(conn), None)
    }

    /// Feed received ciphertext; returns how many bytes were consumed. It stops early
    /// (consuming less) while decrypted plaintext waits to be taken, or once the peer
    /// sent close_notify: take the plaintext and feed the rest again.
    ///
    /// Errors: the handshake or a record failed. The session then holds the alert to
    /// send (flush it with [`TlsSession::write_ciphertext`]) and accepts nothing more.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, RejectReason> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        let mut used = 0;
        while self.plaintext_pending == 0 && !self.peer_closed {
            let Some(mut rest) = input.get(used..).filter(|r| !r.is_empty()) else {
                break;
            };
            // An error here means rustls' input buffer is full: stop and let the caller
            // drain plaintext first.
            let n = match self.conn.read_tls(&mut rest) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            used += n;
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => return Err(self.fail(RejectReason::from_rustls(&e))),
            };
            self.plaintext_pending = state.plaintext_bytes_to_read();
            self.peer_closed = state.peer_has_closed();
            if !self.established && !self.conn.is_handshaking() {
                self.on_established()?;
            }
        }
        Ok(used)
    }

    fn fail(&mut self, r: RejectReason) -> RejectReason {
        self.failed = Some(r.clone());
        r
    }

    fn on_established(&mut self) -> Result<(), RejectReason> {
        self.established = true;
        let rustls::Connection::Server(server) = &self.conn else {
            // Client side: rustls verified the upstream by CA and name; nothing to derive.
            return Ok(());
        };
        self.sni = server.server_name().map(str::to_ascii_lowercase);
        // The verifier accepted this chain during this handshake (or during the one a
        // resumed session came from); derive the identity from the same leaf.
        let leaf = self.conn.peer_certificates().and_then(|c| c.first());
        if let Some(leaf) = leaf {
            match identity_of(leaf.as_ref(), self.device_prefix.as_deref()) {
                Ok(id) => self.identity = Some(id),
                Err(e) => {
                    // The handshake is over, so no alert can carry the reason: end the
                    // session cleanly rather than with a bare close (review L2).
                    self.conn.send_close_notify();
                    return Err(self.fail(RejectReason::Svid(e)));
                }
            }
        }
        Ok(())
    }

    /// Whether the handshake has completed (and the identity, if any, is known).
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether decrypted plaintext waits to be taken.
    pub fn has_plaintext(&self) -> bool {
        self.plaintext_pending > 0
    }

    /// Move up to `out.len()` bytes of decrypted plaintext into `out`; returns how many.
    pub fn take_plaintext(&mut self, out: &mut [u8]) -> usize {
        if self.plaintext_pending == 0 || out.is_empty() {
            return 0;
        }
        match self.conn.reader().read(out) {
            Ok(n) => {
                self.plaintext_pending = self.plaintext_pending.saturating_sub(n);
                n
            }
            Err(_) => {
                self.plaintext_pending = 0;
                0
            }
        }
    }

    /// Whether the peer sent close_notify (and all plaintext before it was taken).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed && self.plaintext_pending == 0
    }

    /// Whether ciphertext (handshake messages, records, alerts) waits to be sent.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Move up to `out.len()` bytes of ciphertext to send into `out`; returns how many.
    pub fn write_ciphertext(&mut self, out: &mut [u8]) -> usize {
        let mut w: &mut [u8] = out;
        self.conn.write_tls(&mut w).unwrap_or(0)
    }

    /// Encrypt `plaintext` for the peer; returns how much was taken (less than all when
    /// [`SEND_BUFFER_LIMIT`] of ciphertext is already queued: send some first).
    /// Nothing is taken before the handshake completes or after a failure.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> usize {
        if !self.established || self.failed.is_some() {
            return 0;
        }
        self.conn.writer().write(plaintext).unwrap_or(0)
    }

    /// Move decrypted plaintext from this session into `to` for encryption: up to
    /// [`FORWARD_BATCH`] bytes, and only when `to` has no ciphertext left to send
    /// (backpressure: the caller flushes `to`, then calls again). Returns the bytes moved.
    pub fn forward_plaintext(&mut self, to: &mut TlsSession) -> usize {
        if to.conn.wants_write() || !to.established || to.failed.is_some() {
            return 0;
        }
        let mut moved = 0;
        let mut chunk = [0u8; 4096];
        while self.plaintext_pending > 0 && moved < FORWARD_BATCH {
            let n = self.take_plaintext(&mut chunk);
            let Some(bytes) = chunk.get(..n).filter(|b| !b.is_empty()) else {
                break;
            };
            // `to` started empty and takes at most FORWARD_BATCH (plus record overhead),
            // below SEND_BUFFER_LIMIT: the write takes every byte.
            let taken = to.conn.writer().write(bytes).unwrap_or(0);
            moved += taken;
            if taken < n {
                // Cannot happen by the bound above; fail closed rather than drop bytes.
                to.failed = Some(RejectReason::Other(
                    "plaintext could not be forwarded".into(),
                ));
                break;
            }
        }
        moved
    }

    /// Queue close_notify (flush it with [`TlsSession::write_ciphertext`]).
    pub fn close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// The verified peer identity, once established (`None` without a client
    /// certificate).
    pub fn identity(&self) -> Option<&PeerIdentityOwned> {
        self.identity.as_ref()
    }

    /// The SNI the client sent, lowercase.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The negotiated ALPN protocol, if any and if UTF-8.
    pub fn alpn(&self) -> Option<&str> {
        self.conn
            .alpn_protocol()
            .and_then(|p| std::str::from_utf8(p).ok())
    }

    /// Whether the session was resumed (no certificate verification ran this time).
    pub fn is_resumed(&self) -> bool {
        matches!(
            self.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        )
    }

    /// Why the session failed, if it did.
    pub fn failure(&self) -> Option<&RejectReason> {
        self.failed.as_ref()
    }
}
