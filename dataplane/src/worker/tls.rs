//! One TLS-terminated flow: the client socket carries TLS, the upstream plaintext.
//!
//! ```text
//!  accept ──► [Preamble] (protocol = "postgres": SSLRequest → `S`, GSSENCRequest → `N`,
//!               │          direct TLS, or refused: see `crate::postgres`)
//!               ▼
//!             Handshaking ── recv client (own buffer) → session.feed → flush ciphertext
//!               │ failure: count reason, flush the alert ─► Flushing ─► Closing
//!               │ timeout (tick) ─────────────────────────────────────► Closing
//!               ▼ established
//!             Deciding: the worker builds FlowFacts (identity, SNI, ALPN, cert age)
//!               │ deny: access_denied alert ─► Flushing ─► Closing
//!               ▼ allow: push Connect ─link─ LinkTimeout
//!             Connecting ── error/timeout ──────────────────────────► Closing
//!               ▼ ok
//!             Open: client ciphertext → session → plaintext → upstream
//!                   upstream plaintext → session → ciphertext → client
//! ```
//!
//! Buffers: until the handshake is done, the client's bytes arrive in the flow's own
//! small buffer (`HANDSHAKE_RECV`, dropped afterwards), so that flows holding every
//! pool buffer cannot starve handshakes. After it, received bytes (either side) arrive
//! in a pool buffer from the worker's provided buffer ring. Client records are decrypted in place there and their
//! plaintext is sent to the upstream from that buffer with one `sendmsg` of its pieces
//! (`zgate_tls::TlsSession::read_in_place`, `sys::Ring::send_runs`); the buffer goes
//! back when the send is done. A record cut by the end of a receive is kept by the
//! session and, when the rest arrives, moved into the next buffer's headroom in front
//! of it ([`sys::HEADROOM`]). Upstream plaintext is sealed from the pool buffer straight
//! into the client output (`TlsSession::write`), and that pool buffer goes back as
//! soon as it is used up. Outputs are per
//! direction ([`OUT_SIZE`], heap, lent to the kernel during its send, back to the
//! worker's spare list when the direction goes quiet), so an idle flow holds no data
//! buffer. With upstream TLS, plaintext crosses between the two sessions through a
//! per-flow bridge.
//!
//! Backpressure: at most one send per socket is in flight; a side is not read again
//! while its received bytes wait (the output toward the other side is still sending),
//! so a slow reader stalls its writer through TCP.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use zgate_table::facts::UnixSeconds;
use zgate_telemetry::latency::Measure;
use zgate_telemetry::AuditKind;
use zgate_tls::{Alert, ClientTls, RejectReason, Runs, ServerTls, TlsSession, MAX_RECORD};

use crate::config::{ListenerConfig, POSTGRES_ALPN};
use crate::metrics::{Count, CLIENT_TO_UPSTREAM, M, UPSTREAM_TO_CLIENT};
use crate::postgres::{Preamble, PreambleReader, Refusal};
use crate::sys::{self, BufId, BufPool, ConnMem, Lent, SendVec, HEADROOM};
use crate::worker::conn::{crypto_start, CloseKind, ConnectFailure, Ctx, State};
use crate::worker::decide::FlowRef;
use crate::worker::flow::Ended;
use crate::worker::token::Op;
use crate::worker::Permit;

/// Where a TLS flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// `protocol = "postgres"`: reading the client's request for TLS.
    Preamble,
    /// The handshake is running.
    Handshaking,
    /// Handshake done; the worker must decide (no upstream yet).
    Deciding,
    /// Allowed; upstream connect in flight.
    Connecting,
    /// Forwarding.
    Open,
    /// Refused: sending the last ciphertext (alert or close_notify), then closing.
    Flushing,
    /// Cancelling; the slot is freed when nothing is in flight.
    Closing,
}

impl TlsState {
    /// Whether the flow has been decided and may still carry data (upstream connect in
    /// flight, or forwarding): a new table or an expired decision must decide it again.
    /// `Handshaking`/`Deciding` have no decision yet (`settle_tls` makes it with the
    /// current table); `Flushing`/`Closing` are already refused.
    pub fn is_decided_and_live(self) -> bool {
        matches!(self, TlsState::Connecting | TlsState::Open)
    }
}

/// Why a flow was refused before (or instead of) a decision, for the audit trail: the
/// worker takes it after each call into the flow and queues the event.
pub struct Refused {
    /// Which kind of refusal.
    pub kind: AuditKind,
    /// Its stable label (the metric's `reason`).
    pub reason: &'static str,
    /// More (the TLS library's words, the kernel's), rendered by the supervisor.
    pub detail: Option<zgate_telemetry::Detail>,
}

impl Refused {
    /// An upstream connect that failed (`upstream_connect_failed`).
    pub fn connect(why: ConnectFailure) -> Refused {
        Refused {
            kind: AuditKind::UpstreamConnectFailed,
            reason: why.label(),
            detail: why.detail(),
        }
    }

    /// A TLS refusal of kind `kind` for `r`.
    pub fn tls(kind: AuditKind, r: RejectReason) -> Refused {
        Refused {
            kind,
            reason: r.label(),
            detail: Some(Box::new(r)),
        }
    }
}

/// An output buffer: lent to the kernel while its send is in flight.
struct Out {
    mem: Lent<[u8]>,
    start: u32,
    end: u32,
    sending: bool,
}

/// Client plaintext opened in place in the pool buffer it arrived in, on its way to
/// the upstream (sent from there: no copy).
struct InPlace {
    buf: BufId,
    /// What is left to send, as offsets into the buffer's region (headroom first).
    runs: Runs,
    sending: bool,
    /// The send in flight points into the flow's `send_vec` too.
    vec_lent: bool,
}

/// Bytes received and not yet consumed: in a pool buffer, or (`buf: None`) in the
/// flow's own handshake buffer.
#[derive(Clone, Copy)]
struct In {
    buf: Option<BufId>,
    pos: u32,
    end: u32,
}

/// Size of a flow's handshake receive buffer. Handshake messages collect in the
/// session across receives, so this bounds one receive, not a message.
const HANDSHAKE_RECV: usize = 4 * 1024;

/// The PostgreSQL preamble read so far.
#[derive(Default)]
struct PgPreamble {
    reader: PreambleReader,
    /// The client started TLS directly (PostgreSQL 17): ALPN `postgresql` is required.
    direct: bool,
}

/// Size of a TLS output buffer: a ring buffer's worth of plaintext seals in one go
/// (encrypt direction: four full records and their overhead), and a ring buffer's
/// worth of records opens in one go (decrypt direction; a whole record, [`MAX_RECORD`],
/// always fits).
pub const OUT_SIZE: usize = crate::sys::BUF_SIZE + 8 * zgate_tls::MAX_OVERHEAD;

/// Client side (0) and upstream side (1): the `side` of a flow's sockets everywhere in
/// the worker (plain flows' direction 0 reads the client).
pub(super) const CLIENT: usize = 0;
pub(super) const UPSTREAM: usize = 1;

#[derive(Default)]
struct Side {
    recv: bool,
    /// The recv in flight reads into the flow's handshake buffer, not the pool.
    recv_own: bool,
    starved: bool,
    eof: bool,
    shut_wr: bool,
}

/// A TLS flow.
pub struct TlsConn {
    /// Its id (audit records).
    pub id: u64,
    /// Index of its listener in the worker.
    pub listener: usize,
    client: TcpStream,
    upstream: Option<TcpStream>,
    mem: Option<Lent<ConnMem>>,
    session: TlsSession,
    /// `[listener.upstream_tls]`: the session toward the upstream, made at connect.
    /// Boxed: a rustls session is ~1.4 KiB, which flows without upstream TLS (most)
    /// should not carry while idle.
    up: Option<Box<TlsSession>>,
    /// close_notify queued toward the upstream.
    up_close_notify_sent: bool,
    /// The upstream handshake was counted.
    up_established_counted: bool,
    /// Where it is.
    pub state: TlsState,
    sides: [Side; 2],
    /// Received, not yet fed: [client ciphertext, upstream plaintext].
    input: [Option<In>; 2],
    /// Output toward [upstream (plaintext), client (ciphertext)], indexed by the socket
    /// it is sent on: 0 = upstream, 1 = client (matches `Op::Send(dir)`).
    out: [Option<Out>; 2],
    /// Client plaintext toward the upstream, sent from its receive buffer (instead of
    /// `out[0]`, which carries it when it had to be copied).
    in_place: Option<InPlace>,
    /// When each direction's bytes now in the gateway arrived (their dwell starts).
    recv_at: [Option<Instant>; 2],
    /// When the upstream connect started (set only for an admitted flow).
    connect_at: Option<Instant>,
    /// Bytes received from each side (client, upstream), after the handshake.
    pub bytes: [u64; 2],
    /// Why it ends, once something said (`super::flow::Ended`).
    pub ended: Option<super::flow::Ended>,
    /// The side that finished its stream first (`ClientFin` or `UpstreamFin`): the
    /// cause when nothing else ended the flow.
    pub first_fin: Option<super::flow::Ended>,
    /// The `sendmsg` header `in_place` is sent with when it has several pieces, held
    /// while the flow is busy.
    send_vec: Option<Lent<SendVec>>,
    close_notify_sent: bool,
    /// With upstream TLS: plaintext between the two sessions.
    bridge: Option<Box<Bridge>>,
    /// `Some` on `protocol = "postgres"` listeners.
    pg: Option<Box<PgPreamble>>,
    /// Where the client's bytes are received until the handshake is done: the flow's
    /// own, so that flows holding every pool buffer (stalled behind slow upstreams)
    /// cannot starve new handshakes into their timeout. Dropped once it is done.
    hs_buf: Option<Lent<[u8]>>,
    /// Recv and send SQEs in flight.
    ops: u8,
    cancels: u8,
    /// It counts in its listener's handshakes in progress (the worker keeps the count).
    pub holds_handshake_slot: bool,
    /// A refusal not yet written to the audit trail (the worker takes it).
    pub refused: Option<Refused>,
    /// When it was accepted (loop clock).
    pub started: Instant,
    /// When bytes last moved.
    pub last_active: Instant,
    /// Client address.
    pub source: SocketAddr,
    /// Wall-clock second of the accept.
    pub started_unix: UnixSeconds,
    /// When its decision stops holding (and what runs out).
    pub expiry: Option<super::decide::Expiry>,
}

impl TlsConn {
    /// A new flow in `Handshaking` (`Preamble` when `postgres`), with the client recv
    /// armed.
    pub fn accept(
        flow: FlowRef,
        client: TcpStream,
        tls: &ServerTls,
        postgres: bool,
        ctx: &mut Ctx<'_>,
    ) -> Result<TlsConn, RejectReason> {
        let session = tls.accept()?;
        let mut c = TlsConn {
            id: flow.id,
            listener: flow.listener,
            client,
            upstream: None,
            mem: None,
            session,
            up: None,
            up_close_notify_sent: false,
            up_established_counted: false,
            state: if postgres {
                TlsState::Preamble
            } else {
                TlsState::Handshaking
            },
            sides: [Side::default(), Side::default()],
            input: [None, None],
            out: [None, None],
            in_place: None,
            recv_at: [None, None],
            connect_at: None,
            bytes: [0; 2],
            ended: None,
            first_fin: None,
            send_vec: None,
            close_notify_sent: false,
            bridge: None,
            pg: postgres.then(Box::default),
            hs_buf: None,
            ops: 0,
            cancels: 0,
            holds_handshake_slot: false,
            refused: None,
            started: ctx.now,
            last_active: ctx.now,
            source: flow.source,
            started_unix: 0,
            expiry: None,
        };
        c.pump(ctx);
        Ok(c)
    }

    /// Whether the client-side handshake (or the PostgreSQL preamble before it) is
    /// still running: the handshake timeout applies.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, TlsState::Preamble | TlsState::Handshaking)
    }

    /// Whether a handshake timeout may still apply: the client's handshake (or the
    /// PostgreSQL preamble) or the upstream's is not done yet. Conservative: the timer
    /// wheel checks such a flow at its handshake deadlines.
    pub fn awaits_handshake(&self) -> bool {
        self.state != TlsState::Open || self.up.as_deref().is_some_and(|u| !u.is_established())
    }

    /// Whether the upstream TLS handshake is still running (the handshake timeout
    /// applies to it too).
    pub fn is_upstream_handshaking(&self) -> bool {
        self.state == TlsState::Open && self.up.as_deref().is_some_and(|u| !u.is_established())
    }

    /// The session (identity, SNI, ALPN) for the decision.
    pub fn session(&self) -> &TlsSession {
        &self.session
    }

    /// The coarse state the worker's timers and re-decisions look at.
    pub fn coarse_state(&self) -> State {
        match self.state {
            TlsState::Preamble
            | TlsState::Handshaking
            | TlsState::Deciding
            | TlsState::Connecting => State::Connecting,
            TlsState::Open => State::Open,
            TlsState::Flushing | TlsState::Closing => State::Closing,
        }
    }

    fn in_flight(&self) -> bool {
        self.ops > 0
            || self.cancels > 0
            || self.mem.as_ref().is_some_and(|m| m.lent() > 0)
            || self.out.iter().flatten().any(|o| o.mem.lent() > 0)
    }

    /// Whether it was allowed and went on to connect its upstream.
    pub fn admitted(&self) -> bool {
        self.connect_at.is_some()
    }

    /// Whether the slot may be freed.
    pub fn finished(&self) -> bool {
        self.state == TlsState::Closing && !self.in_flight()
    }

    /// Whether side `dir`'s recv waits for a pool buffer.
    pub fn is_starved(&self, dir: usize) -> bool {
        self.sides.get(dir).is_some_and(|s| s.starved)
    }

    /// Re-arm a starved recv (the worker calls it once buffers are back).
    pub fn rearm(&mut self, dir: usize, ctx: &mut Ctx<'_>) {
        if let Some(s) = self.sides.get_mut(dir) {
            s.starved = false;
        }
        self.pump(ctx);
    }

    fn fd(&self, side: usize) -> Option<i32> {
        if side == CLIENT {
            Some(self.client.as_raw_fd())
        } else {
            self.upstream.as_ref().map(AsRawFd::as_raw_fd)
        }
    }

    /// The upstream TLS session failed (or could not start): count `reason`, abort the
    /// client (RST, no close_notify): the gateway never vouches for a stream its
    /// upstream did not end cleanly (`docs/tls.md`, "Truncation and aborts").
    pub fn upstream_fail(&mut self, reason: &RejectReason, ctx: &mut Ctx<'_>) {
        ctx.stats
            .add_label(M::UpstreamTlsFailures, reason.index(), 1);
        self.refused = Some(Refused::tls(AuditKind::UpstreamTlsFailed, reason.clone()));
        self.close(CloseKind::Reset, ctx);
    }

    /// The client's side failed (its handshake, or a record after it): count `reason`,
    /// abort the upstream if there is one (RST: what reached it may be cut short, and
    /// a FIN would pass the cut on as a clean end), send the client the session's
    /// alert, then close.
    pub fn fail(&mut self, reason: &RejectReason, ctx: &mut Ctx<'_>) {
        self.ended.get_or_insert(Ended::TlsError);
        ctx.stats.add_label(M::TlsFailures, reason.index(), 1);
        match reason {
            RejectReason::PeerAlert(a) => ctx.stats.add_label(M::TlsAlertsReceived, a.index(), 1),
            r if r.alert() != Alert::None => {
                ctx.stats.add_label(M::TlsAlertsSent, r.alert().index(), 1);
            }
            _ => {}
        }
        self.refused = Some(Refused::tls(AuditKind::TlsRefused, reason.clone()));
        self.abort_upstream();
        self.flush_then_close(ctx);
    }

    /// Make the upstream socket's close a reset (nothing more is sent to it).
    fn abort_upstream(&self) {
        if let Some(u) = &self.upstream {
            let _ = sys::set_linger_zero(u.as_raw_fd());
        }
    }

    /// Refused after the handshake (denied by policy: `access_denied`): the fatal
    /// `alert`, so the client's own error says what happened; flush, close. The
    /// reason itself stays in the audit trail.
    pub fn deny(&mut self, alert: Alert, ctx: &mut Ctx<'_>) {
        ctx.stats.add_label(M::TlsAlertsSent, alert.index(), 1);
        self.session.abort_with(alert);
        self.close_notify_sent = true;
        self.flush_then_close(ctx);
    }

    fn flush_then_close(&mut self, ctx: &mut Ctx<'_>) {
        if matches!(self.state, TlsState::Closing | TlsState::Flushing) {
            return;
        }
        self.state = TlsState::Flushing;
        for side in [CLIENT, UPSTREAM] {
            if let Some(i) = self.input.get_mut(side).and_then(Option::take) {
                release_input(i, ctx);
            }
        }
        self.drop_in_place(ctx);
        self.pump(ctx);
    }

    /// Allowed: connect the upstream (and, with `upstream_tls`, start a TLS session
    /// toward it once connected). On failure the flow closes.
    pub fn connect(
        &mut self,
        upstream: TcpStream,
        cfg: &ListenerConfig,
        upstream_tls: Option<&ClientTls>,
        permit: Permit,
        started_unix: UnixSeconds,
        ctx: &mut Ctx<'_>,
    ) {
        if let Some(tls) = upstream_tls {
            match tls.connect() {
                Ok(s) => {
                    self.up = Some(Box::new(s));
                    self.bridge = Some(Box::new(Bridge {
                        to_upstream: Plain::new(),
                        to_client: Plain::new(),
                    }));
                }
                Err(r) => {
                    self.upstream_fail(&r, ctx);
                    return;
                }
            }
        }
        self.expiry = permit.expiry();
        self.started_unix = started_unix;
        self.connect_at = Some(ctx.now);
        let mut mem = ConnMem::boxed(cfg.upstream, cfg.connect_timeout);
        let (c, t) = (ctx.ud(Op::Connect), ctx.ud(Op::ConnectTimeout));
        let pushed = ctx
            .ring
            .connect_with_timeout(upstream.as_raw_fd(), &mut mem, c, t);
        self.mem = Some(mem);
        self.upstream = Some(upstream);
        if pushed.is_ok() {
            self.state = TlsState::Connecting;
        } else {
            ctx.stats.inc(M::UpstreamConnectFailures);
            ctx.connect_failed = Some(ConnectFailure::Queue);
            self.close(CloseKind::Normal, ctx);
        }
    }

    /// End the flow with resets both ways for `why`, counted as a reset.
    fn reset_for(&mut self, why: Ended, ctx: &mut Ctx<'_>) {
        ctx.stats.inc(M::Resets);
        self.ended.get_or_insert(why);
        self.close(CloseKind::Reset, ctx);
    }

    /// Begin closing: cancel everything in flight. Idempotent.
    pub fn close(&mut self, kind: CloseKind, ctx: &mut Ctx<'_>) {
        if self.state == TlsState::Closing {
            return;
        }
        self.state = TlsState::Closing;
        for side in [CLIENT, UPSTREAM] {
            if let Some(i) = self.input.get_mut(side).and_then(Option::take) {
                release_input(i, ctx);
            }
        }
        self.drop_in_place(ctx);
        let fds = [self.fd(CLIENT), self.fd(UPSTREAM)];
        if kind == CloseKind::Reset {
            for fd in fds.iter().flatten() {
                let _ = sys::set_linger_zero(*fd);
            }
            // The client is cut now (RST, and its pending ops complete at once); the
            // upstream gets its RST when the socket closes, once its ops are back.
            let _ = sys::abort_connection(self.client.as_raw_fd());
        }
        if !self.in_flight() {
            return;
        }
        // As plain flows do (`Conn::close`): receives end when the sockets stop
        // receiving; only other ops in flight are cancelled, by descriptor.
        let reading = self.sides.iter().filter(|s| s.recv).count();
        let _ = self.client.shutdown(Shutdown::Read);
        if let Some(u) = &self.upstream {
            let _ = u.shutdown(Shutdown::Read);
        }
        let others = usize::from(self.ops) > reading
            || self.mem.as_ref().is_some_and(|m| m.lent() > 0)
            || self.out.iter().flatten().any(|o| o.mem.lent() > 0);
        if !others {
            return;
        }
        let ud = ctx.ud(Op::Cancel);
        for fd in fds.into_iter().flatten() {
            if ctx.ring.cancel_fd(fd, ud).is_ok() {
                self.cancels += 1;
            } else {
                let _ = self.client.shutdown(Shutdown::Both);
                if let Some(u) = &self.upstream {
                    let _ = u.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Handle one completion for this flow.
    pub fn complete(&mut self, op: Op, result: i32, buffer: Option<u16>, ctx: &mut Ctx<'_>) {
        match op {
            Op::Cancel => self.cancels = self.cancels.saturating_sub(1),
            Op::Connect | Op::ConnectTimeout => {
                if let Some(m) = self.mem.as_mut() {
                    m.returned();
                }
            }
            Op::Recv(_) | Op::Send(_) => self.ops = self.ops.saturating_sub(1),
            // TLS flows never splice (the bytes must pass through rustls).
            Op::SpliceWait(_) | Op::SpliceIn(_) | Op::SpliceOut(_) => {}
            Op::Accept | Op::AcceptCancel | Op::Wake | Op::WakeCancel => {}
        }
        match op {
            Op::Connect => self.on_connect(result, ctx),
            Op::Recv(side) => self.on_recv(side, result, buffer, ctx),
            Op::Send(to) => self.on_send(to, result, ctx),
            _ => {}
        }
    }

    fn on_connect(&mut self, result: i32, ctx: &mut Ctx<'_>) {
        if self.state != TlsState::Connecting {
            return;
        }
        if result == 0 {
            self.state = TlsState::Open;
            self.last_active = ctx.now;
            if let Some(t) = self.connect_at {
                ctx.record(zgate_telemetry::latency::Measure::UpstreamConnect, t);
            }
            self.pump(ctx);
        } else {
            ctx.stats.inc(M::UpstreamConnectFailures);
            if result == -libc::ECANCELED {
                ctx.stats.inc(M::UpstreamConnectTimeouts);
            }
            ctx.connect_failed = Some(ConnectFailure::from_result(result));
            self.ended.get_or_insert(Ended::ConnectFailed);
            self.close(CloseKind::Normal, ctx);
        }
    }

    fn on_recv(&mut self, side: usize, result: i32, buffer: Option<u16>, ctx: &mut Ctx<'_>) {
        let mut own = false;
        if let Some(s) = self.sides.get_mut(side) {
            s.recv = false;
            own = std::mem::take(&mut s.recv_own);
        }
        if own {
            if let Some(m) = self.hs_buf.as_mut() {
                m.returned();
            }
        }
        let buf = match buffer.map(|bid| ctx.ring.pool.take(bid)) {
            Some(Ok(b)) => Some(Some(b)),
            Some(Err(_)) => {
                self.reset_for(Ended::GatewayError, ctx);
                return;
            }
            // The flow's own handshake buffer, or nothing (an error, ENOBUFS).
            None => own.then_some(None),
        };
        let live = !matches!(self.state, TlsState::Closing | TlsState::Flushing);
        match (u32::try_from(result).ok(), buf) {
            (Some(n), Some(buf)) if n > 0 && live => {
                self.last_active = ctx.now;
                if let Some(t) = self.recv_at.get_mut(side) {
                    t.get_or_insert(ctx.now);
                }
                if let Some(b) = self.bytes.get_mut(side) {
                    *b += u64::from(n);
                }
                if side == CLIENT {
                    ctx.stats
                        .add_label(M::Bytes, CLIENT_TO_UPSTREAM, u64::from(n));
                } else {
                    ctx.stats
                        .add_label(M::Bytes, UPSTREAM_TO_CLIENT, u64::from(n));
                }
                if let Some(slot) = self.input.get_mut(side) {
                    *slot = Some(In {
                        buf,
                        pos: 0,
                        end: n,
                    });
                }
                self.pump(ctx);
                return;
            }
            (_, Some(Some(buf))) => give_back(buf, ctx),
            (_, Some(None) | None) => {}
        }
        if !live {
            self.pump(ctx);
            return;
        }
        if result == 0 {
            if let Some(s) = self.sides.get_mut(side) {
                s.eof = true;
            }
            self.first_fin.get_or_insert(Ended::fin(side));
            if matches!(self.state, TlsState::Handshaking | TlsState::Preamble) {
                self.fail(&RejectReason::PeerClosed, ctx);
                return;
            }
            self.pump(ctx);
        } else if result == -libc::ENOBUFS {
            if let Some(s) = self.sides.get_mut(side) {
                s.starved = true;
            }
            ctx.stats.inc(M::RecvStarved);
            ctx.starved.push((ctx.index, ctx.gen, side));
        } else if matches!(self.state, TlsState::Handshaking | TlsState::Preamble) {
            self.close(CloseKind::Reset, ctx);
        } else {
            self.reset_for(Ended::reset(side), ctx);
        }
    }

    fn on_send(&mut self, to: usize, result: i32, ctx: &mut Ctx<'_>) {
        if to == 0 && self.in_place.as_ref().is_some_and(|p| p.sending) {
            self.on_send_in_place(result, ctx);
            return;
        }
        let Some(o) = self.out.get_mut(to).and_then(Option::as_mut) else {
            return;
        };
        o.mem.returned();
        o.sending = false;
        match u32::try_from(result).ok().filter(|&n| n > 0) {
            Some(n) => {
                o.start = o.start.saturating_add(n).min(o.end);
                self.last_active = ctx.now;
                // A short send (the socket had room for part of it): send the rest now.
                // Nothing else would: `produce` refills an output only once it is empty.
                if o.start < o.end {
                    self.send_out(to, ctx);
                } else {
                    self.drained(to, ctx);
                }
                self.pump(ctx);
            }
            None => {
                o.start = o.end;
                if self.state == TlsState::Flushing {
                    self.close(CloseKind::Normal, ctx);
                } else if self.state != TlsState::Closing {
                    // `out[0]` is sent on the upstream socket.
                    self.reset_for(Ended::reset(to ^ 1), ctx);
                }
            }
        }
    }

    /// A send toward `dir`'s destination completed with nothing left to send: if
    /// nothing of that direction is waiting either (input consumed, output empty),
    /// its bytes are out and their dwell ends.
    fn drained(&mut self, dir: usize, ctx: &mut Ctx<'_>) {
        let input_left = self.input.get(dir).is_some_and(Option::is_some);
        let out_left = self
            .out
            .get(dir)
            .and_then(Option::as_ref)
            .is_some_and(|o| o.start < o.end);
        let in_place_left = dir == 0 && self.in_place.is_some();
        if input_left || out_left || in_place_left {
            return;
        }
        if let Some(t) = self.recv_at.get_mut(dir).and_then(Option::take) {
            ctx.record(super::conn::dwell(dir), t);
        }
    }

    /// The CQE of `in_place`'s send.
    fn on_send_in_place(&mut self, result: i32, ctx: &mut Ctx<'_>) {
        let Some(p) = self.in_place.as_mut() else {
            return;
        };
        p.sending = false;
        if std::mem::take(&mut p.vec_lent) {
            if let Some(m) = self.send_vec.as_mut() {
                m.returned();
            }
        }
        // Nothing points into the buffer any more.
        let r = ctx.ring.send_done(p.buf);
        debug_assert!(r.is_ok(), "{r:?}");
        let sent = usize::try_from(result).ok().filter(|&n| n > 0);
        match sent {
            Some(n) if !matches!(self.state, TlsState::Closing | TlsState::Flushing) => {
                self.last_active = ctx.now;
                p.runs.advance(n);
                if p.runs.total() == 0 {
                    self.drop_in_place(ctx);
                    self.drained(0, ctx);
                } else {
                    // A short send: the rest now (nothing else would send it).
                    self.send_in_place(ctx);
                }
                self.pump(ctx);
            }
            Some(_) => self.drop_in_place(ctx),
            None => {
                self.drop_in_place(ctx);
                if self.state == TlsState::Flushing {
                    self.close(CloseKind::Normal, ctx);
                } else if self.state != TlsState::Closing {
                    // Client plaintext goes to the upstream from its buffer.
                    self.reset_for(Ended::reset(UPSTREAM), ctx);
                }
            }
        }
    }

    /// Send what is left of `in_place`, unless a send of it is in flight.
    fn send_in_place(&mut self, ctx: &mut Ctx<'_>) {
        let Some(fd) = self.fd(UPSTREAM) else {
            return;
        };
        let ud = ctx.ud(Op::Send(0));
        let Some(p) = self.in_place.as_mut() else {
            return;
        };
        if p.sending || p.runs.total() == 0 {
            return;
        }
        let sent = ctx
            .ring
            .send_runs(fd, p.buf, p.runs.as_slice(), &mut self.send_vec, ud);
        if let Ok(vec_lent) = sent {
            p.sending = true;
            p.vec_lent = vec_lent;
            self.ops += 1;
        } else {
            // Not queued: nothing points into the buffer.
            self.drop_in_place(ctx);
            self.close(CloseKind::Reset, ctx);
        }
    }

    /// Give back the in-place buffer unless a send from it is in flight (its CQE will).
    fn drop_in_place(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(p) = self.in_place.take_if(|p| !p.sending) {
            give_back(p.buf, ctx);
        }
    }

    /// Step 1, once the session can open records where they arrived and the upstream
    /// took the last batch: open the client input's records in place and send their
    /// plaintext from that buffer. Returns whether anything moved.
    fn open_in_place(
        &mut self,
        i: In,
        buf: BufId,
        ctx: &mut Ctx<'_>,
    ) -> Result<bool, RejectReason> {
        if !self.out_free(0) {
            return Ok(false);
        }
        let region = ctx
            .ring
            .pool
            .region_mut(buf, i.end as usize)
            .map_err(|_| RejectReason::Internal("receive buffer not held by the flow"))?;
        let mut runs = Runs::default();
        let t0 = crypto_start(ctx.latency.as_deref_mut(), Measure::TlsOpen);
        self.session
            .read_in_place(region, HEADROOM + i.pos as usize, &mut runs)?;
        ctx.record_precise(Measure::TlsOpen, t0);
        self.input[CLIENT] = None;
        if runs.total() == 0 {
            give_back(buf, ctx);
        } else {
            self.in_place = Some(InPlace {
                buf,
                runs,
                sending: false,
                vec_lent: false,
            });
            self.send_in_place(ctx);
        }
        Ok(true)
    }

    /// Start a send of `out[to]`'s pending range, if any and none is in flight.
    fn send_out(&mut self, to: usize, ctx: &mut Ctx<'_>) -> bool {
        // Output 0 goes to the upstream, output 1 to the client.
        let fd = if to == 0 {
            self.fd(UPSTREAM)
        } else {
            self.fd(CLIENT)
        };
        let Some(fd) = fd else { return false };
        let ud = ctx.ud(Op::Send(to));
        let Some(o) = self.out.get_mut(to).and_then(Option::as_mut) else {
            return false;
        };
        if o.sending || o.start >= o.end {
            return false;
        }
        let (s, e) = (o.start as usize, o.end as usize);
        if ctx.ring.send_lent(fd, &mut o.mem, s, e, ud).is_ok() {
            o.sending = true;
            self.ops += 1;
            true
        } else {
            self.close(CloseKind::Reset, ctx);
            false
        }
    }

    /// Whether output `to` can take new bytes (no send in flight, all sent; toward the
    /// upstream, no in-place plaintext left either).
    fn out_free(&self, to: usize) -> bool {
        (to != 0 || self.in_place.is_none())
            && self
                .out
                .get(to)
                .is_none_or(|o| o.as_ref().is_none_or(|o| !o.sending && o.start >= o.end))
    }

    /// Fill output `to` with `fill` (which writes into an `OUT_SIZE` buffer and returns how
    /// many bytes it wrote) and send it.
    fn produce(
        &mut self,
        to: usize,
        ctx: &mut Ctx<'_>,
        fill: impl FnOnce(&mut TlsSession, Option<&mut TlsSession>, &mut [u8]) -> usize,
    ) -> bool {
        let Some(mem) = free_out(&mut self.out, to, ctx.out_pool) else {
            return false;
        };
        let n = fill(&mut self.session, self.up.as_deref_mut(), mem);
        if n == 0 {
            return false;
        }
        self.filled(to, n, ctx);
        true
    }

    /// Move bytes as far as they can go, then re-arm what should be armed.
    fn pump(&mut self, ctx: &mut Ctx<'_>) {
        for _ in 0..64 {
            if self.state == TlsState::Closing {
                return;
            }
            let mut progress = false;
            // 0. PostgreSQL: the request for TLS, answered before any TLS byte.
            if self.state == TlsState::Preamble {
                progress |= self.preamble(ctx);
                if matches!(self.state, TlsState::Closing | TlsState::Flushing) {
                    return;
                }
            }
            // 1. client ciphertext → session → plaintext toward the upstream.
            if matches!(self.state, TlsState::Handshaking | TlsState::Open) {
                match self.read_client(ctx) {
                    Ok(moved) => progress |= moved,
                    Err(r) => {
                        self.fail(&r, ctx);
                        return;
                    }
                }
            }
            if self.state == TlsState::Handshaking && self.session.is_established() {
                self.state = TlsState::Deciding;
                ctx.stats.inc(M::TlsHandshakes);
                ctx.stats
                    .add(M::TlsResumed, u64::from(self.session.is_resumed()));
                let direct = self.pg.as_ref().is_some_and(|p| p.direct);
                if direct && self.session.alpn() != Some(POSTGRES_ALPN) {
                    // PostgreSQL 17 direct TLS must negotiate ALPN `postgresql`.
                    self.refuse_preamble(Refusal::DirectTlsWithoutAlpn, ctx);
                    return;
                }
            }
            if self.state == TlsState::Open {
                // 2. upstream TLS: its handshake and the client's plaintext → upstream.
                progress |= self.write_upstream_tls(ctx);
                // 3. upstream bytes → (upstream TLS session →) plaintext for the client.
                match self.read_upstream_tls(ctx) {
                    Ok(moved) => progress |= moved,
                    Err(r) => {
                        self.upstream_fail(&r, ctx);
                        return;
                    }
                }
            }
            // 4. ciphertext → client: what the session queued (handshake, alerts,
            //    close_notify), then the upstream's plaintext sealed into records.
            progress |= self.write_client(ctx);
            if self.state == TlsState::Closing {
                return;
            }
            if !progress {
                break;
            }
        }
        self.ends(ctx);
        self.arm(ctx);
        self.release_idle_outputs(ctx);
    }

    /// Step 1: the client's ciphertext into the session. During the handshake it only
    /// drives the handshake; once open, records are decrypted in place in the ring
    /// buffer and their plaintext is sent to the upstream from there
    /// ([`TlsConn::open_in_place`]). It is copied into the upstream output (or, with
    /// upstream TLS, the bridge) only when upstream TLS re-encrypts it or the session
    /// still holds records from the handshake's last flight. Returns whether anything
    /// moved.
    fn read_client(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, RejectReason> {
        let input = self.input[CLIENT];
        let open = self.state == TlsState::Open;
        if input.is_none() && !(open && self.session.holds_input()) {
            return Ok(false);
        }
        if open && self.bridge.is_none() {
            let pooled = input.and_then(|i| Some((i, i.buf?)));
            if let Some((i, buf)) = pooled.filter(|_| self.session.can_read_in_place()) {
                return self.open_in_place(i, buf, ctx);
            }
            if self.in_place.is_some() {
                return Ok(false);
            }
        }
        let bytes = unread(&mut ctx.ring.pool, &mut self.hs_buf, input)?;
        let mut to_bridge = false;
        let plain: &mut [u8] = if !open {
            &mut []
        } else if let Some(b) = self.bridge.as_deref_mut() {
            to_bridge = true;
            b.to_upstream.space(ctx.out_pool)
        } else {
            match free_out(&mut self.out, 0, ctx.out_pool) {
                Some(buf) => buf,
                // The upstream has not taken the last batch yet.
                None => return Ok(false),
            }
        };
        let t0 = if open {
            crypto_start(ctx.latency.as_deref_mut(), Measure::TlsOpen)
        } else {
            None
        };
        let r = self.session.read(bytes, plain)?;
        ctx.record_precise(Measure::TlsOpen, t0);
        if let Some(i) = input {
            self.consumed(CLIENT, i, r.consumed, ctx);
        }
        if r.produced > 0 {
            if to_bridge {
                if let Some(b) = self.bridge.as_deref_mut() {
                    b.to_upstream.end += r.produced;
                }
            } else {
                self.filled(0, r.produced, ctx);
            }
        }
        Ok(r.consumed > 0 || r.produced > 0)
    }

    /// Step 2 (upstream TLS only): the upstream session's own records (handshake, a
    /// KeyUpdate, close_notify), then the bridged client plaintext sealed for it.
    fn write_upstream_tls(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let (Some(up), Some(b)) = (self.up.as_deref_mut(), self.bridge.as_deref_mut()) else {
            return false;
        };
        if !up.wants_write() && (b.to_upstream.is_empty() || !up.is_established()) {
            return false;
        }
        let Some(buf) = free_out(&mut self.out, 0, ctx.out_pool) else {
            return false;
        };
        let w = up.write(b.to_upstream.data(), buf);
        b.to_upstream.start += w.taken;
        let ended = up.sent_close_notify() && !self.up_close_notify_sent;
        self.filled(0, w.written, ctx);
        if ended {
            // The upstream session ended itself (TLS 1.2 at its confidentiality
            // limit): the client's bytes can go nowhere; cut both sides.
            self.up_close_notify_sent = true;
            ctx.stats.inc(M::Resets);
            self.close(CloseKind::Reset, ctx);
            return true;
        }
        w.taken > 0 || w.written > 0
    }

    /// Step 3 (upstream TLS only): the upstream's ciphertext through its session into
    /// the bridge.
    fn read_upstream_tls(&mut self, ctx: &mut Ctx<'_>) -> Result<bool, RejectReason> {
        let (Some(up), Some(b)) = (self.up.as_deref_mut(), self.bridge.as_deref_mut()) else {
            return Ok(false);
        };
        let input = self.input[UPSTREAM];
        if input.is_none() && !up.holds_input() {
            return Ok(false);
        }
        let bytes = unread(&mut ctx.ring.pool, &mut self.hs_buf, input)?;
        let r = up.read(bytes, b.to_client.space(ctx.out_pool));
        let established = up.is_established();
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                if let Some(i) = self.input[UPSTREAM].take() {
                    release_input(i, ctx);
                }
                return Err(e);
            }
        };
        b.to_client.end += r.produced;
        if let Some(i) = input {
            self.consumed(UPSTREAM, i, r.consumed, ctx);
        }
        if established && !self.up_established_counted {
            self.up_established_counted = true;
            ctx.stats.inc(M::UpstreamTlsHandshakes);
        }
        Ok(r.consumed > 0 || r.produced > 0)
    }

    /// Step 4: the session's queued ciphertext, then plaintext from the upstream (the
    /// ring buffer it arrived in, or the bridge) sealed straight into the client output.
    fn write_client(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let open = self.state == TlsState::Open;
        let plain_input = if open && self.bridge.is_none() {
            self.input[UPSTREAM]
        } else {
            None
        };
        let bridged = open
            && self
                .bridge
                .as_deref()
                .is_some_and(|b| !b.to_client.is_empty());
        if !self.session.wants_write() && plain_input.is_none() && !bridged {
            return false;
        }
        let Some(buf) = free_out(&mut self.out, 1, ctx.out_pool) else {
            return false;
        };
        let plaintext: &[u8] = if let Some(i) = plain_input {
            input_bytes(&ctx.ring.pool, &self.hs_buf, i).unwrap_or_default()
        } else if bridged {
            self.bridge
                .as_deref()
                .map(|b| b.to_client.data())
                .unwrap_or_default()
        } else {
            &[]
        };
        // Both need the session open: a seal of data, not of handshake messages.
        let t0 = if plain_input.is_some() || bridged {
            crypto_start(ctx.latency.as_deref_mut(), Measure::TlsSeal)
        } else {
            None
        };
        let w = self.session.write(plaintext, buf);
        ctx.record_precise(Measure::TlsSeal, t0);
        if let Some(i) = plain_input {
            self.consumed(UPSTREAM, i, w.taken, ctx);
        } else if let Some(b) = self.bridge.as_deref_mut() {
            b.to_client.start += w.taken;
        }
        self.filled(1, w.written, ctx);
        if self.session.sent_close_notify() && !self.close_notify_sent {
            // The session ended itself (TLS 1.2 at its confidentiality limit): what it
            // sealed goes out, then its close_notify; the upstream is cut (what it
            // sends next cannot reach the client) and the flow closes.
            self.ended.get_or_insert(Ended::ConfidentialityLimit);
            self.close_notify_sent = true;
            self.abort_upstream();
            self.flush_then_close(ctx);
            return true;
        }
        w.taken > 0 || w.written > 0
    }

    /// `n` bytes of input `side` were used: advance it, giving the buffer back once all
    /// of it is.
    fn consumed(&mut self, side: usize, i: In, n: usize, ctx: &mut Ctx<'_>) {
        let pos = i.pos.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        let rest = if pos >= i.end {
            release_input(i, ctx);
            None
        } else {
            Some(In { pos, ..i })
        };
        if let Some(slot) = self.input.get_mut(side) {
            *slot = rest;
        }
    }

    /// Output `to` was filled with `n` bytes from its start: send them.
    fn filled(&mut self, to: usize, n: usize, ctx: &mut Ctx<'_>) {
        if n == 0 {
            return;
        }
        if let Some(o) = self.out.get_mut(to).and_then(Option::as_mut) {
            o.start = 0;
            o.end = u32::try_from(n).unwrap_or(0);
        }
        self.send_out(to, ctx);
    }

    /// Read the PostgreSQL request for TLS from the client input and answer it. Returns
    /// whether anything moved.
    fn preamble(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let Some(i) = self.input.get(CLIENT).copied().flatten() else {
            return false;
        };
        // An answer (`N`) still being sent: wait for it before the next one.
        if !self.out_free(1) {
            return false;
        }
        let Some(pg) = self.pg.as_mut() else {
            return false;
        };
        let step = match input_bytes(&ctx.ring.pool, &self.hs_buf, i) {
            Ok(b) => pg.reader.push(b),
            Err(_) => {
                self.close(CloseKind::Reset, ctx);
                return false;
            }
        };
        let pos = i
            .pos
            .saturating_add(u32::try_from(step.consumed).unwrap_or(u32::MAX));
        if pos >= i.end {
            release_input(i, ctx);
            self.input[CLIENT] = None;
        } else {
            self.input[CLIENT] = Some(In { pos, ..i });
        }
        let answer = match step.verdict {
            Preamble::NeedMore => return true,
            Preamble::DirectTls => {
                // The ClientHello stays in the input for the session (step 1).
                pg.direct = true;
                self.state = TlsState::Handshaking;
                return true;
            }
            Preamble::Refused(r) => {
                self.refuse_preamble(r, ctx);
                return true;
            }
            Preamble::SslRequest => {
                self.state = TlsState::Handshaking;
                b'S'
            }
            Preamble::GssEncRequest => b'N',
        };
        self.produce(1, ctx, |_, _, out| match out.first_mut() {
            Some(b) => {
                *b = answer;
                1
            }
            None => 0,
        });
        true
    }

    /// Refuse a PostgreSQL client before (or instead of) TLS: count `r`, send its reply
    /// if it has one (plaintext), or once TLS is up the `no_application_protocol` alert
    /// (the one refusal made after the handshake: direct TLS without ALPN
    /// `postgresql`), then close.
    fn refuse_preamble(&mut self, r: Refusal, ctx: &mut Ctx<'_>) {
        ctx.stats.add_label(M::PostgresRefused, r.index(), 1);
        self.refused = Some(Refused {
            kind: AuditKind::PreambleRefused,
            reason: r.label(),
            detail: None,
        });
        if self.session.is_established() {
            self.deny(Alert::NoApplicationProtocol, ctx);
            return;
        }
        if let Some(reply) = r.reply() {
            self.produce(1, ctx, |_, _, out| match out.get_mut(..reply.len()) {
                Some(dst) => {
                    dst.copy_from_slice(reply);
                    reply.len()
                }
                None => 0,
            });
        }
        self.flush_then_close(ctx);
    }

    /// Half-closes and the end of a flow.
    fn ends(&mut self, ctx: &mut Ctx<'_>) {
        let client_quiet = !self.session.wants_write() && self.out_free(1);
        if self.state == TlsState::Flushing {
            if client_quiet {
                self.close(CloseKind::Normal, ctx);
            }
            return;
        }
        if self.state != TlsState::Open {
            return;
        }
        // Truncation (`docs/tls.md`): a TLS side that ended its TCP stream without
        // close_notify, everything it sent before read, was cut (possibly in the
        // middle of a record), not finished. Abort both ways; never pass its end on as
        // a clean one (a FIN, or close_notify that the gateway would vouch for).
        let client_cut = self.sides[CLIENT].eof
            && self.input[CLIENT].is_none()
            && !self.session.holds_input()
            && !self.session.close_notify_received();
        let upstream_cut = self.sides[UPSTREAM].eof
            && self.input[UPSTREAM].is_none()
            && self
                .up
                .as_deref()
                .is_some_and(|u| !u.holds_input() && !u.close_notify_received());
        if upstream_cut && self.up.as_deref().is_some_and(|u| !u.is_established()) {
            self.upstream_fail(&RejectReason::PeerClosed, ctx);
            return;
        }
        if client_cut || upstream_cut {
            ctx.stats.inc(M::TlsTruncations);
            self.ended.get_or_insert(Ended::Truncated);
            self.close(CloseKind::Reset, ctx);
            return;
        }
        // Client finished sending (close_notify) and everything reached the upstream:
        // pass the FIN on.
        let u = &self.sides[UPSTREAM];
        let client_done = self.session.peer_closed()
            && self.input[CLIENT].is_none()
            && !self.session.holds_input()
            && self
                .bridge
                .as_deref()
                .is_none_or(|b| b.to_upstream.is_empty());
        let shut_wr = u.shut_wr;
        if client_done && !shut_wr && self.out_free(0) {
            // With upstream TLS: close_notify to the upstream first, then the FIN.
            if let Some(up) = self.up.as_deref_mut() {
                if !self.up_close_notify_sent && up.is_established() {
                    up.close_notify();
                    self.up_close_notify_sent = true;
                    self.produce(0, ctx, |_, up, b| up.map_or(0, |u| u.write_ciphertext(b)));
                }
            }
            let up_quiet = self.up.as_deref().is_none_or(|u| !u.wants_write()) && self.out_free(0);
            if up_quiet {
                if let Some(up) = &self.upstream {
                    let _ = up.shutdown(Shutdown::Write);
                }
                self.sides[UPSTREAM].shut_wr = true;
            }
        }
        // Upstream finished (FIN, or close_notify with upstream TLS) and everything from
        // it reached the client's session: close_notify to the client, then FIN.
        let upstream_done = (self.sides[UPSTREAM].eof
            || self.up.as_deref().is_some_and(TlsSession::peer_closed))
            && self.input[UPSTREAM].is_none()
            && self.up.as_deref().is_none_or(|u| !u.holds_input())
            && self
                .bridge
                .as_deref()
                .is_none_or(|b| b.to_client.is_empty());
        if upstream_done && !self.close_notify_sent {
            self.session.close_notify();
            self.close_notify_sent = true;
            self.produce(1, ctx, |s, _, b| s.write_ciphertext(b));
        }
        let client_quiet = !self.session.wants_write() && self.out_free(1);
        if self.close_notify_sent && client_quiet && !self.sides[CLIENT].shut_wr {
            let _ = self.client.shutdown(Shutdown::Write);
            self.sides[CLIENT].shut_wr = true;
        }
        if self.sides[CLIENT].shut_wr && self.sides[UPSTREAM].shut_wr {
            self.close(CloseKind::Normal, ctx);
        }
    }

    /// Arm the receives that should be armed.
    fn arm(&mut self, ctx: &mut Ctx<'_>) {
        let client_ok = matches!(
            self.state,
            TlsState::Preamble | TlsState::Handshaking | TlsState::Open
        ) && self.input[CLIENT].is_none()
            && !self.session.holds_input()
            && !self.session.peer_closed()
            && !self.sides[CLIENT].eof
            // A KeyUpdate owed to the client and not yet sent (its output is busy):
            // read no more from it until the update is out (review 16.1).
            && !self.session.owes_update();
        if client_ok {
            self.recv(CLIENT, ctx);
        }
        let upstream_ok = self.state == TlsState::Open
            && self.input[UPSTREAM].is_none()
            && !self.session.wants_write()
            && self
                .up
                .as_ref()
                .is_none_or(|u| !u.holds_input() && !u.peer_closed() && !u.owes_update())
            && !self.sides[UPSTREAM].eof;
        if upstream_ok {
            self.recv(UPSTREAM, ctx);
        }
    }

    fn recv(&mut self, side: usize, ctx: &mut Ctx<'_>) {
        let Some(s) = self.sides.get(side) else {
            return;
        };
        if s.recv || s.starved {
            return;
        }
        let Some(fd) = self.fd(side) else { return };
        let ud = ctx.ud(Op::Recv(side));
        let own = side == CLIENT && self.is_handshaking();
        let pushed = if own {
            let mem = self
                .hs_buf
                .get_or_insert_with(|| Lent::new(vec![0u8; HANDSHAKE_RECV].into_boxed_slice()));
            ctx.ring.recv_into(fd, mem, ud)
        } else {
            ctx.ring.recv(fd, ud)
        };
        if pushed.is_ok() {
            self.ops += 1;
            if let Some(s) = self.sides.get_mut(side) {
                s.recv = true;
                s.recv_own = own;
            }
        } else {
            self.close(CloseKind::Reset, ctx);
        }
    }

    /// The flow is finished (nothing in flight): every output buffer back to the pool.
    pub fn return_buffers(&mut self, pool: &mut OutPool) {
        for o in &mut self.out {
            if let Some(out) = o.take() {
                pool.put(out.mem);
            }
        }
        if let Some(mut b) = self.bridge.take() {
            for p in [&mut b.to_upstream, &mut b.to_client] {
                if let Some(m) = p.mem.take() {
                    pool.put(m);
                }
            }
        }
    }

    /// Give back output buffers that hold nothing and are not lent: an idle flow keeps
    /// none, and the worker's spare list hands them to the next flow that sends, so a
    /// busy flow does not allocate and zero a buffer per record batch.
    fn release_idle_outputs(&mut self, ctx: &mut Ctx<'_>) {
        // The handshake buffer, once the handshake is over and nothing is in it.
        if !self.is_handshaking()
            && self.hs_buf.as_ref().is_some_and(|m| m.lent() == 0)
            && self.input[CLIENT].is_none_or(|i| i.buf.is_some())
        {
            self.hs_buf = None;
        }
        if self.in_place.is_none() {
            self.send_vec = None;
        }
        if let Some(b) = self.bridge.as_deref_mut() {
            b.to_upstream.release(ctx.out_pool);
            b.to_client.release(ctx.out_pool);
        }
        for o in &mut self.out {
            if o.as_ref()
                .is_some_and(|x| !x.sending && x.start >= x.end && x.mem.lent() == 0)
            {
                if let Some(out) = o.take() {
                    ctx.out_pool.put(out.mem);
                }
            }
        }
    }
}

/// Output `to`'s whole buffer when it has nothing left to send and is not lent to the
/// kernel (taken from the worker's spare list, or made, when the direction had none);
/// `None` while its last batch is still going out.
fn free_out<'o>(
    out: &'o mut [Option<Out>; 2],
    to: usize,
    spare: &mut OutPool,
) -> Option<&'o mut [u8]> {
    let slot = out.get_mut(to)?;
    if slot.as_ref().is_some_and(|o| o.sending || o.start < o.end) {
        return None;
    }
    let o = slot.get_or_insert_with(|| Out {
        mem: spare.take(),
        start: 0,
        end: 0,
        sending: false,
    });
    o.start = 0;
    o.end = 0;
    o.mem.get_mut()
}

/// A worker's TLS output buffers (`OUT_SIZE` each, ~66 KiB): flows take one per
/// direction that sends and give it back when the direction goes quiet or the flow
/// ends. The pool keeps as many buffers as the recent peak of those in use (at least
/// [`OUT_POOL_MIN`]), so a steady or bursty load reuses the same buffers instead of
/// allocating and zeroing one per batch (review 16.11: past 32 spares every batch was
/// a fresh buffer); the peak decays on the worker's tick, and spares above it are
/// freed, so memory follows the load down within seconds.
#[derive(Default)]
pub struct OutPool {
    spare: Vec<Lent<[u8]>>,
    in_use: usize,
    /// The most in use lately (decays on [`OutPool::decay`]).
    peak: usize,
    /// Buffers allocated so far (a test and `/metrics` can see the churn).
    pub allocated: u64,
}

/// The fewest spare TLS output buffers a worker keeps (about 2 MiB).
pub const OUT_POOL_MIN: usize = 32;

impl OutPool {
    /// A spare buffer, or a new one.
    fn take(&mut self) -> Lent<[u8]> {
        self.in_use += 1;
        self.peak = self.peak.max(self.in_use);
        self.spare.pop().unwrap_or_else(|| {
            self.allocated += 1;
            Lent::new(vec![0u8; OUT_SIZE].into_boxed_slice())
        })
    }

    /// A buffer back (kept while the pool holds fewer than its recent peak).
    fn put(&mut self, mem: Lent<[u8]>) {
        self.in_use = self.in_use.saturating_sub(1);
        if self.in_use + self.spare.len() < self.peak.max(OUT_POOL_MIN) {
            self.spare.push(mem);
        }
    }

    /// The worker's tick (every 100 ms): the peak decays by 1/32 toward what is in use
    /// now (halving in about 2 s of quiet), and spares above it are freed.
    pub fn decay(&mut self) {
        self.peak = self.in_use.max(self.peak - self.peak / 32);
        let keep = self.peak.max(OUT_POOL_MIN).saturating_sub(self.in_use);
        self.spare.truncate(keep);
    }

    /// Buffers flows hold now.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Spare buffers kept now.
    pub fn spares(&self) -> usize {
        self.spare.len()
    }
}

/// Plaintext between the two TLS sessions of a flow with upstream TLS. Its buffer is an
/// output buffer from the worker's spare list, held only while it has data (an idle
/// flow holds none).
struct Plain {
    mem: Option<Lent<[u8]>>,
    start: usize,
    end: usize,
}

impl Plain {
    fn new() -> Plain {
        Plain {
            mem: None,
            start: 0,
            end: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    fn data(&self) -> &[u8] {
        self.mem
            .as_ref()
            .and_then(|m| m.get())
            .and_then(|b| b.get(self.start..self.end))
            .unwrap_or_default()
    }

    /// Room after the data (taking a buffer when it has none); moves the data to the
    /// front first when less than a whole record would fit (a session reads only whole
    /// records).
    fn space(&mut self, spare: &mut OutPool) -> &mut [u8] {
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
        }
        let mem = self.mem.get_or_insert_with(|| spare.take());
        let Some(buf) = mem.get_mut() else {
            return &mut [];
        };
        if buf.len().saturating_sub(self.end) < MAX_RECORD && self.start > 0 {
            buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        buf.get_mut(self.end..).unwrap_or_default()
    }

    /// Give the buffer back to the spare list once it holds nothing.
    fn release(&mut self, spare: &mut OutPool) {
        if self.is_empty() {
            if let Some(m) = self.mem.take() {
                spare.put(m);
            }
        }
    }
}

/// The two directions of plaintext for a flow with upstream TLS.
struct Bridge {
    to_upstream: Plain,
    to_client: Plain,
}

/// The bytes of `input` not yet used, writable (records are decrypted in place): in
/// pool buffer `input.buf`, or in the flow's handshake buffer `own`; empty when there
/// is no input.
fn unread<'b>(
    pool: &'b mut BufPool,
    own: &'b mut Option<Lent<[u8]>>,
    input: Option<In>,
) -> Result<&'b mut [u8], RejectReason> {
    let Some(i) = input else {
        return Ok(Default::default());
    };
    let all = match i.buf {
        Some(buf) => pool.bytes_mut(buf, i.end as usize).ok(),
        None => own
            .as_mut()
            .and_then(Lent::get_mut)
            .and_then(|b| b.get_mut(..i.end as usize)),
    };
    Ok(all
        .ok_or(RejectReason::Internal(
            "receive buffer not held by the flow",
        ))?
        .get_mut(i.pos as usize..)
        .unwrap_or_default())
}

/// The bytes of `input` not yet used, read-only (see [`unread`]).
fn input_bytes<'b>(
    pool: &'b BufPool,
    own: &'b Option<Lent<[u8]>>,
    i: In,
) -> Result<&'b [u8], RejectReason> {
    let all = match i.buf {
        Some(buf) => pool.bytes(buf, i.end as usize).ok(),
        None => own
            .as_ref()
            .and_then(Lent::get)
            .and_then(|b| b.get(..i.end as usize)),
    };
    Ok(all
        .ok_or(RejectReason::Internal(
            "receive buffer not held by the flow",
        ))?
        .get(i.pos as usize..)
        .unwrap_or_default())
}

/// Input `i` is used up (or dropped): a pool buffer goes back; the handshake buffer
/// stays with the flow for its next receive.
fn release_input(i: In, ctx: &mut Ctx<'_>) {
    if let Some(buf) = i.buf {
        give_back(buf, ctx);
    }
}

fn give_back(buf: BufId, ctx: &mut Ctx<'_>) {
    let r = ctx.ring.pool.give_back(buf);
    debug_assert!(r.is_ok(), "{r:?}");
}

#[cfg(test)]
mod tests {
    use super::{OutPool, TlsState, OUT_POOL_MIN};

    /// Review 16.11: past 32 spares every TLS output buffer was freed on return and a
    /// fresh zeroed ~66 KiB one made for the next batch. Now as many spares are kept as
    /// buffers are in use: a steady load of 100 sending directions allocates 100
    /// buffers once, and spares go as the load falls.
    #[test]
    fn a_steady_load_reuses_its_output_buffers_and_spares_follow_the_load_down() {
        let mut pool = OutPool::default();
        for _round in 0..5 {
            let held: Vec<_> = (0..100).map(|_| pool.take()).collect();
            assert_eq!(pool.in_use(), 100);
            for m in held {
                pool.put(m);
            }
        }
        assert_eq!(
            pool.allocated, 100,
            "each round reused the last one's buffers"
        );
        assert_eq!((pool.in_use(), pool.spares()), (0, 100));
        // Quiet: the peak decays on the tick and the spares go, down to the minimum.
        for _ in 0..200 {
            pool.decay();
        }
        assert_eq!(pool.spares(), OUT_POOL_MIN);
        // Ten in use keep their buffers, whatever the decay.
        let held: Vec<_> = (0..10).map(|_| pool.take()).collect();
        pool.decay();
        assert_eq!(pool.in_use() + pool.spares(), OUT_POOL_MIN);
        for m in held {
            pool.put(m);
        }
        assert_eq!(pool.allocated, 100);
    }

    /// Review M2: a flow whose upstream connect is in flight is re-decided on a table
    /// swap (`Worker::redecide` asks this), flows without a decision are not.
    #[test]
    fn connecting_and_open_flows_are_redecided_undecided_and_closing_ones_are_not() {
        let redecided: Vec<TlsState> = [
            TlsState::Handshaking,
            TlsState::Deciding,
            TlsState::Connecting,
            TlsState::Open,
            TlsState::Flushing,
            TlsState::Closing,
        ]
        .into_iter()
        .filter(|s| s.is_decided_and_live())
        .collect();
        assert_eq!(redecided, [TlsState::Connecting, TlsState::Open]);
    }
}
