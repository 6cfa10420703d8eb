//! The session driver: one TLS session (server side toward a client, or client side
//! toward an upstream), driven with byte slices.
//!
//! The caller owns the sockets and the buffers. It hands in received ciphertext with a
//! buffer for the plaintext ([`TlsSession::read`]; records are decrypted in place in
//! the input, so it is `&mut`), and plaintext to send with a buffer for the ciphertext
//! ([`TlsSession::write`], which first writes whatever the session queued itself:
//! handshake flights, alerts, close_notify, a KeyUpdate). Nothing here blocks, reads a
//! clock or does IO.
//!
//! Two engines, one after the other:
//! - the handshake runs in rustls' unbuffered API ([`rustls::server::UnbufferedServerConnection`]);
//!   its input collects in a small buffer that lives only as long as the handshake;
//! - once it completes (and everything rustls wanted to send is out), rustls hands over
//!   the traffic secrets and the session continues on zgate's own record layer
//!   ([`crate::record`]): no copy into or out of rustls, no receive buffer kept while idle.

use std::ops::DerefMut;
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, UnbufferedConnectionCommon, UnbufferedStatus,
};

use crate::config::{take_sni_seen, ServerTls};
use crate::error::RejectReason;
use crate::record::{Kernel, Opened, RecordLayer, Runs};
use crate::svid::{identity_of, PeerIdentityOwned};
use crate::tickets;

/// Most handshake input a session collects before it refuses the peer (a ClientHello
/// and a client certificate chain are a few KiB; this bounds a peer that sends junk
/// that looks like a handshake in progress).
const MAX_HANDSHAKE_INPUT: usize = 128 * 1024;

/// What [`TlsSession::write`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Plaintext bytes taken.
    pub taken: usize,
    /// Ciphertext bytes written to the output.
    pub written: usize,
}

enum Engine {
    Server(Box<UnbufferedServerConnection>),
    Client(Box<UnbufferedClientConnection>),
    Records(Box<RecordLayer>),
    /// Failed during the handshake; nothing more happens.
    Gone,
}

/// One TLS session.
pub struct TlsSession {
    engine: Engine,
    device_prefix: Option<Arc<str>>,
    identity: Option<PeerIdentityOwned>,
    sni: Option<Arc<str>>,
    alpn: Option<Box<str>>,
    resumed: bool,
    /// While a resumption is being negotiated: Unix ms of the full handshake that
    /// verified the chain (from the client's ticket), lent to the ticketer for each
    /// handshake step so that new tickets keep it (`tickets.rs`).
    resumed_from: Option<i64>,
    /// Ciphertext the session queued itself, sent before any record [`TlsSession::write`]
    /// seals: handshake flights, alerts, close_notify, a KeyUpdate.
    tx: Vec<u8>,
    tx_sent: usize,
    /// Handshake input rustls has not consumed; after the handshake, records that came
    /// with its last flight, opened by the record layer before new input.
    hs_in: Vec<u8>,
    /// Application data rustls itself decrypted at the end of the handshake.
    early: Vec<u8>,
    early_sent: usize,
    /// The peer sent close_notify before the handshake ended.
    closed_early: bool,
    close_notify_sent: bool,
    failed: Option<RejectReason>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("established", &self.is_established())
            .field("identity", &self.identity)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// A new session for one accepted connection.
    pub fn accept(&self) -> Result<TlsSession, RejectReason> {
        let conn = UnbufferedServerConnection::new(Arc::clone(&self.config))
            .map_err(|e| RejectReason::from_rustls(&e))?;
        Ok(TlsSession::new(
            Engine::Server(Box::new(conn)),
            self.device_prefix.clone(),
        ))
    }
}

/// One step of rustls' unbuffered state machine, for either side.
trait Step: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> {
    type Data;
    fn step<'c, 'i>(&'c mut self, input: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Step for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn step<'c, 'i>(&'c mut self, input: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(input)
    }
}

impl Step for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn step<'c, 'i>(&'c mut self, input: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(input)
    }
}

/// Where the handshake stopped.
enum Stop {
    /// It needs more input.
    NeedInput,
    /// It is complete and nothing waits to be sent: the record layer can take over.
    Done,
}

/// Where the record that starts at `hs_in[from..]` ends: its header's length, or all of
/// `hs_in` when that record is not complete yet (rustls cannot go past a record it
/// does not have whole, so showing it the incomplete one is harmless).
fn next_record_end(hs_in: &[u8], from: usize) -> usize {
    match hs_in.get(from..from + crate::record::HEADER) {
        Some(&[_, _, _, hi, lo]) => {
            let end = from + crate::record::HEADER + usize::from(u16::from_be_bytes([hi, lo]));
            end.min(hs_in.len())
        }
        _ => hs_in.len(),
    }
}

/// Drive rustls until it needs input or the handshake is complete. Output goes to
/// `tx`, application data rustls decrypted itself to `early`.
///
/// rustls is shown the input one record more at a time, only when it has used what
/// it was shown and asks for more: it never sees a record past the one that completes
/// the handshake (the peer's Finished ends its record, RFC 8446 §5.1). Otherwise, with
/// no ticket to send, rustls would go on and consume what follows the Finished in the
/// same input itself (a KeyUpdate it would answer into a queue nobody sends, a
/// close_notify whose effect the record layer would never learn). What follows stays
/// in `hs_in` for the record layer.
fn drive<C: Step>(
    conn: &mut C,
    hs_in: &mut Vec<u8>,
    tx: &mut Vec<u8>,
    early: &mut Vec<u8>,
    closed: &mut bool,
) -> Result<Stop, rustls::Error> {
    let mut shown = next_record_end(hs_in, 0);
    // Each turn either consumes input, shows one more record, produces output or
    // changes state: a few dozen cover any handshake, plus one per record shown. The
    // bound only guards against a state machine that spins.
    let turns = 256 + hs_in.len() / crate::record::HEADER;
    for _ in 0..turns {
        let handshaking = conn.is_handshaking();
        let unshown = shown < hs_in.len();
        let mut none: [u8; 0] = [];
        let input: &mut [u8] = if handshaking {
            hs_in.get_mut(..shown).unwrap_or_default()
        } else {
            &mut none
        };
        let UnbufferedStatus { discard, state } = conn.step(input);
        let mut show_more = false;
        let turn = match state {
            Err(e) => Err(e),
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                encode(tx, |out| enc.encode(out)).map(|()| None)
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                // Queued in `tx`, which the caller sends before anything else.
                t.done();
                Ok(None)
            }
            Ok(ConnectionState::BlockedHandshake) if unshown => {
                show_more = true;
                Ok(None)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Some(Stop::NeedInput)),
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                let mut res = Ok(None);
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) => early.extend_from_slice(rec.payload),
                        Err(e) => {
                            res = Err(e);
                            break;
                        }
                    }
                }
                res
            }
            Ok(ConnectionState::PeerClosed) => {
                *closed = true;
                Ok(None)
            }
            Ok(ConnectionState::WriteTraffic(_)) => Ok(Some(Stop::Done)),
            Ok(ConnectionState::Closed) => Ok(Some(Stop::Done)),
            // No 0-RTT is configured; anything else is a state this driver does not know.
            Ok(_) => Err(rustls::Error::General("unexpected handshake state".into())),
        };
        if handshaking {
            let used = discard.min(shown);
            hs_in.drain(..used);
            shown -= used;
        }
        if show_more {
            shown = next_record_end(hs_in, shown);
        }
        match turn? {
            Some(stop) => return Ok(stop),
            None => continue,
        }
    }
    Err(rustls::Error::General(
        "handshake state machine did not settle".into(),
    ))
}

/// [`drive`], and on failure [`collect_alert`]: one handshake step for either side.
fn advance<C: Step>(
    conn: &mut C,
    hs_in: &mut Vec<u8>,
    tx: &mut Vec<u8>,
    early: &mut Vec<u8>,
    closed: &mut bool,
) -> Result<Stop, rustls::Error> {
    let r = drive(conn, hs_in, tx, early, closed);
    if r.is_err() {
        collect_alert(conn, tx);
    }
    r
}

/// After rustls failed: collect the alert it queued. While rustls has records queued,
/// a step hands one out before it looks at any input, so the empty input is never
/// read (rustls may still hold ranges into the old one, and reading it again would
/// raise a second alert).
fn collect_alert<C: Step>(conn: &mut C, tx: &mut Vec<u8>) {
    for _ in 0..8 {
        if !conn.wants_write() {
            return;
        }
        let mut none: [u8; 0] = [];
        let UnbufferedStatus { state, .. } = conn.step(&mut none);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                if encode(tx, |out| enc.encode(out)).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Append one encoded chunk to `tx`, growing it to the size rustls asks for.
fn encode(
    tx: &mut Vec<u8>,
    mut enc: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), rustls::Error> {
    let at = tx.len();
    let mut room = 1024;
    for _ in 0..2 {
        tx.resize(at + room, 0);
        match enc(tx.get_mut(at..).unwrap_or_default()) {
            Ok(n) => {
                tx.truncate(at + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) => room = s.required_size,
            Err(e) => {
                tx.truncate(at);
                return Err(rustls::Error::General(e.to_string()));
            }
        }
    }
    tx.truncate(at);
    Err(rustls::Error::General(
        "handshake record did not fit".into(),
    ))
}

impl TlsSession {
    fn new(engine: Engine, device_prefix: Option<Arc<str>>) -> TlsSession {
        TlsSession {
            engine,
            device_prefix,
            identity: None,
            sni: None,
            alpn: None,
            resumed: false,
            resumed_from: None,
            tx: Vec::new(),
            tx_sent: 0,
            hs_in: Vec::new(),
            early: Vec::new(),
            early_sent: 0,
            closed_early: false,
            close_notify_sent: false,
            failed: None,
        }
    }

    /// A client-side session (upstream TLS): the peer's certificate is verified by
    /// rustls against the CA and name; no SPIFFE identity is derived from it.
    pub(crate) fn client(conn: UnbufferedClientConnection) -> Result<TlsSession, RejectReason> {
        let mut s = TlsSession::new(Engine::Client(Box::new(conn)), None);
        // The client speaks first: the ClientHello is queued now.
        s.handshake()?;
        Ok(s)
    }

    fn fail(&mut self, r: RejectReason) -> RejectReason {
        self.failed = Some(r.clone());
        r
    }

    /// Run the handshake as far as the input allows; at its end, take over the records.
    fn handshake(&mut self) -> Result<(), RejectReason> {
        let stop = match &mut self.engine {
            Engine::Server(c) => {
                let _stale = take_sni_seen();
                tickets::enter(self.resumed_from);
                let r = advance(
                    &mut **c,
                    &mut self.hs_in,
                    &mut self.tx,
                    &mut self.early,
                    &mut self.closed_early,
                );
                self.resumed_from = tickets::leave();
                // The SNI the certificate resolver saw while rustls read the ClientHello.
                if let Some(sni) = take_sni_seen() {
                    self.sni = sni.map(Arc::from);
                }
                r
            }
            Engine::Client(c) => advance(
                &mut **c,
                &mut self.hs_in,
                &mut self.tx,
                &mut self.early,
                &mut self.closed_early,
            ),
            Engine::Records(_) | Engine::Gone => return Ok(()),
        };
        match stop {
            Err(e) => {
                self.engine = Engine::Gone;
                Err(self.fail(RejectReason::from_rustls(&e)))
            }
            Ok(Stop::NeedInput) => Ok(()),
            Ok(Stop::Done) => self.established(),
        }
    }

    /// The handshake is complete: note what the decision needs, derive the identity,
    /// hand the records over to [`RecordLayer`].
    fn established(&mut self) -> Result<(), RejectReason> {
        let engine = std::mem::replace(&mut self.engine, Engine::Gone);
        let converted = match engine {
            Engine::Server(c) => {
                self.note(&c);
                // The verifier accepted this chain during this handshake (or during the
                // one a resumed session came from); derive the identity from the same leaf.
                let id = c.peer_certificates().and_then(|certs| {
                    let (leaf, intermediates) = certs.split_first()?;
                    Some(identity_of(
                        leaf.as_ref(),
                        intermediates.iter().map(AsRef::as_ref),
                        self.device_prefix.as_deref(),
                    ))
                });
                let converted = c
                    .dangerous_into_kernel_connection()
                    .map(|(s, k)| (s, Kernel::Server(k)));
                if let Some(id) = id {
                    match id {
                        Ok(id) => self.identity = Some(id),
                        Err(e) => {
                            // The handshake is over, so no alert can carry the reason:
                            // end the session cleanly rather than with a bare close
                            // (review L2).
                            if let Ok((s, k)) = converted {
                                if let Ok(mut records) = RecordLayer::new(s, k) {
                                    let _ = records.seal_alert(0, &mut self.tx);
                                    self.close_notify_sent = true;
                                }
                            }
                            return Err(self.fail(RejectReason::Svid(e)));
                        }
                    }
                }
                converted
            }
            Engine::Client(c) => {
                self.note(&c);
                c.dangerous_into_kernel_connection()
                    .map(|(s, k)| (s, Kernel::Client(k)))
            }
            other => {
                self.engine = other;
                return Ok(());
            }
        };
        let (secrets, kernel) = converted.map_err(|e| self.fail(RejectReason::from_rustls(&e)))?;
        let records = RecordLayer::new(secrets, kernel).map_err(|e| self.fail(e))?;
        self.engine = Engine::Records(Box::new(records));
        if self.hs_in.is_empty() {
            self.hs_in = Vec::new();
        }
        Ok(())
    }

    fn note<D>(&mut self, c: &UnbufferedConnectionCommon<D>) {
        self.alpn = c
            .alpn_protocol()
            .and_then(|p| std::str::from_utf8(p).ok())
            .map(Box::from);
        self.resumed = matches!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    }

    /// Feed received ciphertext (decrypted in place, hence `&mut`); plaintext goes to
    /// `plain`. Returns how much input was used and how much plaintext written. Input
    /// is used up except when `plain` has no room for the next record (send some, call
    /// again with the rest) or after a failure.
    ///
    /// Errors: the handshake or a record failed. The session then holds the alert to
    /// send (flush it with [`TlsSession::write_ciphertext`]) and accepts nothing more.
    pub fn read(&mut self, input: &mut [u8], plain: &mut [u8]) -> Result<Opened, RejectReason> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        let mut done = Opened::default();
        if !matches!(self.engine, Engine::Records(_)) {
            if self.hs_in.len() + input.len() > MAX_HANDSHAKE_INPUT {
                self.engine = Engine::Gone;
                return Err(self.fail(RejectReason::Malformed));
            }
            self.hs_in.extend_from_slice(input);
            done.consumed = input.len();
            self.handshake()?;
            if !matches!(self.engine, Engine::Records(_)) {
                return Ok(done);
            }
        }
        // Application data rustls decrypted at the end of the handshake.
        if self.early_sent < self.early.len() {
            let src = self.early.get(self.early_sent..).unwrap_or_default();
            let n = src.len().min(plain.len());
            if let (Some(d), Some(s)) = (plain.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            self.early_sent += n;
            done.produced += n;
            if self.early_sent < self.early.len() {
                return Ok(done);
            }
            self.early = Vec::new();
            self.early_sent = 0;
        }
        let Engine::Records(rec) = &mut self.engine else {
            return Ok(done);
        };
        // Records that arrived with the handshake's last flight, then the new input.
        if !self.hs_in.is_empty() {
            let out = plain.get_mut(done.produced..).unwrap_or_default();
            let r = rec.open(&mut self.hs_in, out, &mut self.tx);
            let r = match r {
                Ok(r) => r,
                Err(e) => return Err(self.fail_records(e)),
            };
            done.produced += r.produced;
            self.hs_in.drain(..r.consumed.min(self.hs_in.len()));
            if !self.hs_in.is_empty() {
                return Ok(done);
            }
            self.hs_in = Vec::new();
        }
        let Engine::Records(rec) = &mut self.engine else {
            return Ok(done);
        };
        if done.consumed < input.len() {
            let inp = input.get_mut(done.consumed..).unwrap_or_default();
            let out = plain.get_mut(done.produced..).unwrap_or_default();
            match rec.open(inp, out, &mut self.tx) {
                Ok(r) => {
                    done.consumed += r.consumed;
                    done.produced += r.produced;
                }
                Err(e) => return Err(self.fail_records(e)),
            }
        }
        Ok(done)
    }

    /// Whether [`TlsSession::read_in_place`] may be used for the next input: the
    /// session is established and holds nothing from earlier inputs to deliver first.
    pub fn can_read_in_place(&self) -> bool {
        self.is_established() && !self.holds_input() && !self.closed_early
    }

    /// Open the records of `region[data_start..]` where they lie, their plaintext
    /// described by `runs` (offsets into `region`); the whole input is used. The bytes
    /// before `data_start` are headroom (at least [`crate::MAX_RECORD`]): a record cut
    /// by the last input is completed there. Only when
    /// [`TlsSession::can_read_in_place`]; otherwise [`TlsSession::read`].
    pub fn read_in_place(
        &mut self,
        region: &mut [u8],
        data_start: usize,
        runs: &mut Runs,
    ) -> Result<(), RejectReason> {
        if let Some(f) = &self.failed {
            return Err(f.clone());
        }
        if !self.can_read_in_place() {
            return Err(RejectReason::Internal("read in place while input is held"));
        }
        let Engine::Records(rec) = &mut self.engine else {
            return Err(RejectReason::Internal("read in place before the handshake"));
        };
        match rec.open_in_place(region, data_start, runs, &mut self.tx) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail_records(e)),
        }
    }

    /// A record failed after the handshake: queue the alert (encrypted, as every record
    /// is now), fail.
    fn fail_records(&mut self, e: RejectReason) -> RejectReason {
        if let (Engine::Records(rec), Some(code)) = (&mut self.engine, e.alert().code()) {
            let _ = rec.seal_alert(code, &mut self.tx);
        }
        self.fail(e)
    }

    /// Write queued ciphertext, then seal `plaintext` into `out` (as much as fits).
    /// Nothing is sealed before the handshake completes, after close_notify, or after a
    /// failure; the queued ciphertext (an alert, close_notify) is still written.
    pub fn write(&mut self, plaintext: &[u8], out: &mut [u8]) -> Sealed {
        let mut done = Sealed::default();
        let queued = self.tx.get(self.tx_sent..).unwrap_or_default();
        let n = queued.len().min(out.len());
        if let (Some(d), Some(s)) = (out.get_mut(..n), queued.get(..n)) {
            d.copy_from_slice(s);
        }
        self.tx_sent += n;
        done.written = n;
        if self.tx_sent < self.tx.len() {
            return done;
        }
        // All out: drop the queue's memory, it is rarely needed again.
        self.tx = Vec::new();
        self.tx_sent = 0;
        if self.failed.is_some() || self.close_notify_sent {
            return done;
        }
        let Engine::Records(rec) = &mut self.engine else {
            return done;
        };
        // A KeyUpdate the peer asked for goes out now, data or not (once, however many
        // it asked for).
        let sealed = rec
            .seal_owed_update(out.get_mut(done.written..).unwrap_or_default())
            .and_then(|n| {
                done.written += n;
                if plaintext.is_empty() {
                    return Ok((0, 0));
                }
                rec.seal(plaintext, out.get_mut(done.written..).unwrap_or_default())
            });
        match sealed {
            Ok((taken, written)) => {
                done.taken = taken;
                done.written += written;
                if rec.tx_exhausted() {
                    // TLS 1.2 at its confidentiality limit: what was sealed goes out,
                    // then close_notify; the session seals nothing more.
                    self.close_notify();
                }
            }
            Err(e) => {
                let _ = self.fail_records(e);
            }
        }
        done
    }

    /// Move up to `out.len()` bytes of queued ciphertext (handshake, alerts,
    /// close_notify) into `out`; returns how many.
    pub fn write_ciphertext(&mut self, out: &mut [u8]) -> usize {
        self.write(&[], out).written
    }

    /// Whether the handshake has completed (and the identity, if any, is known).
    pub fn is_established(&self) -> bool {
        matches!(self.engine, Engine::Records(_)) && self.failed.is_none()
    }

    /// Whether the session holds received input it has not delivered as plaintext yet
    /// (it needed room in `plain`): call [`TlsSession::read`] again before reading more
    /// from the socket.
    pub fn holds_input(&self) -> bool {
        let Engine::Records(rec) = &self.engine else {
            return false;
        };
        self.failed.is_none()
            && (self.early_sent < self.early.len() || !self.hs_in.is_empty() || rec.holds_record())
    }

    /// Whether the peer sent close_notify and everything before it was delivered.
    pub fn peer_closed(&self) -> bool {
        let closed = match &self.engine {
            Engine::Records(r) => r.peer_closed() || self.closed_early,
            _ => self.closed_early,
        };
        closed && !self.holds_input()
    }

    /// Whether ciphertext (handshake messages, alerts, close_notify, a KeyUpdate owed
    /// to the peer) waits to be sent.
    pub fn wants_write(&self) -> bool {
        self.tx_sent < self.tx.len() || self.owes_update()
    }

    /// Whether a KeyUpdate the peer asked for is not sent yet: the dataplane stops
    /// reading a peer while this holds and its output cannot take the update, so a
    /// peer that asks and never reads gets nothing more out of the gateway.
    pub fn owes_update(&self) -> bool {
        matches!(&self.engine, Engine::Records(r) if r.owes_update())
            && self.failed.is_none()
            && !self.close_notify_sent
    }

    /// Whether close_notify is queued or sent: nothing more is sealed. True after
    /// [`TlsSession::close_notify`], and when the session ended itself (TLS 1.2 at its
    /// confidentiality limit).
    pub fn sent_close_notify(&self) -> bool {
        self.close_notify_sent
    }

    /// Whether the peer's close_notify has been read, whether or not everything before
    /// it has been delivered yet ([`TlsSession::peer_closed`] waits for that).
    pub fn close_notify_received(&self) -> bool {
        self.closed_early || matches!(&self.engine, Engine::Records(r) if r.peer_closed())
    }

    /// End the session with the fatal alert `alert` (flush it with
    /// [`TlsSession::write_ciphertext`]): the peer learns why in its own error (a
    /// denied client sees `access_denied`), and nothing more is sealed. Only an
    /// established session sends it; it is a no-op after close_notify or a failure.
    pub fn abort_with(&mut self, alert: crate::Alert) {
        if self.close_notify_sent || self.failed.is_some() {
            return;
        }
        if let (Engine::Records(rec), Some(code)) = (&mut self.engine, alert.code()) {
            if rec.seal_alert(code, &mut self.tx).is_ok() {
                self.close_notify_sent = true;
            }
        }
    }

    /// Queue close_notify (flush it with [`TlsSession::write_ciphertext`]). Only an
    /// established session sends it; nothing can be sealed after it.
    pub fn close_notify(&mut self) {
        if self.close_notify_sent {
            return;
        }
        if let Engine::Records(rec) = &mut self.engine {
            if rec.seal_alert(0, &mut self.tx).is_ok() {
                self.close_notify_sent = true;
            }
        }
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

    /// The SNI, shared (an audit record points at it instead of copying it).
    pub fn sni_shared(&self) -> Option<&Arc<str>> {
        self.sni.as_ref()
    }

    /// The negotiated ALPN protocol, if any and if UTF-8.
    pub fn alpn(&self) -> Option<&str> {
        self.alpn.as_deref()
    }

    /// Whether the session was resumed (no certificate verification ran this time).
    pub fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// Why the session failed, if it did.
    pub fn failure(&self) -> Option<&RejectReason> {
        self.failed.as_ref()
    }

    /// Test hook: the record layer (after the handshake).
    #[cfg(test)]
    pub(crate) fn records_mut(&mut self) -> Option<&mut RecordLayer> {
        match &mut self.engine {
            Engine::Records(r) => Some(r),
            _ => None,
        }
    }
}
