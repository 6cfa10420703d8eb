//! One proxied flow: its sockets, its memory and its state machine.
//!
//! ```text
//!            accept + allow
//!                  │  push Connect ─link─ LinkTimeout          (lent = 2)
//!                  ▼
//!            ┌───────────┐ connect error / timeout ┌──────────┐
//!            │ Connecting├────────────────────────►│ Closing  │
//!            └─────┬─────┘                         │ cancel   │
//!                  │ connect ok: Recv on both      │ every op,│
//!                  ▼                               │ wait for │
//!   per direction d (0: client→upstream, 1: back)  │ lent==0  │
//!   ┌─────────┐ n>0  ┌──────────────┐              │ and no   │
//!   │ Reading ├─────►│ Writing a..b ├──┐ short     │ cancel   │
//!   └──▲──┬───┘      └──────┬───────┘◄─┘ send      │ in flight│
//!      │  │ 0 (FIN)         │ all sent             └────┬─────┘
//!      │  ▼                 │                           │ free slot:
//!      │ Done: shutdown(WR) │                           ▼ close fds
//!      └────────────────────┘                         (RST if reset)
//!   both Done → Closing (normal). Error/RST on either side → Closing (reset:
//!   SO_LINGER 0 on both). Idle or lifetime timer → Closing (normal).
//! ```
//!
//! Buffers: a recv names the worker's buffer group, not a buffer. The kernel picks a
//! pool buffer only when data arrives, so a flow holds a buffer only from its recv CQE
//! until the send of that data completes; an idle flow holds none. The buffer goes back
//! to the pool on the send's CQE, never before (STYLE E.13).
//!
//! Bounded memory: each direction holds at most one buffer (`BUF_SIZE`) and never
//! receives again until that buffer is fully sent, so a slow reader stalls its writer
//! through TCP flow control instead of growing memory. When the pool is empty a recv
//! completes with `ENOBUFS`; the direction is `Starved` and the worker re-arms it once
//! buffers come back.
//!
//! Bulk directions splice. A direction whose receive filled a whole buffer switches,
//! once that buffer is sent, to `IORING_OP_SPLICE`: source socket → a pipe of its own
//! (`PIPE_SIZE`) → destination socket, so its bytes never enter user space and each
//! round moves up to `PIPE_SIZE` instead of `BUF_SIZE`. One splice is in flight per
//! direction, and the next splice-in waits until the pipe is drained, so backpressure
//! is what it was (the pipe is the bounded buffer). A splice-in of 0 is FIN, an error is
//! a reset, as for recv. When a splice-in brings less than a buffer's worth the flow
//! has caught up: once that is sent the pipe is closed and the direction goes back to
//! provided-buffer receives, so only directions that carry volume hold a pipe (two
//! fds, no user-space memory) and an idle flow holds none.
//!
//! Policy: a flow keeps the facts it was decided on (listener, source address, start
//! time) and the instant its decision expires, so the worker can re-decide it when a
//! new table is published or the decision's constraints run out.

use std::cell::Cell;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use zgate_table::facts::UnixSeconds;

use crate::metrics::{Count, Counters, CLIENT_TO_UPSTREAM, M, UPSTREAM_TO_CLIENT};
use crate::sys::{self, BufId, ConnMem, Lent, Pipe, PushError, Ring, BULK_RECV, PIPE_SIZE};
use crate::worker::flow::Ended;
use crate::worker::token::{encode, Op};

/// One direction's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// A recv is in flight on the source side (holding no buffer).
    Reading,
    /// The pool was empty: no recv in flight; the worker re-arms it later.
    Starved,
    /// A send of bytes `start..end` of buffer `buf` is in flight on the destination side.
    Writing {
        /// The pool buffer holding the data.
        buf: BufId,
        /// First unsent byte.
        start: u32,
        /// End of received bytes.
        end: u32,
    },
    /// Waiting for the source socket to be readable before the next splice-in (a
    /// poll, which holds no thread: a blocking splice-in on a quiet source would hold
    /// an async worker thread until data came).
    SpliceWait,
    /// A splice from the source socket into this direction's pipe is in flight.
    SpliceIn,
    /// A splice of the pipe's `left` bytes to the destination is in flight; `batch` is
    /// what the splice-in that filled the pipe brought.
    SpliceOut {
        /// Bytes in the pipe not yet spliced out.
        left: u32,
        /// Bytes the last splice-in brought.
        batch: u32,
    },
    /// The source sent FIN; it was passed on as `shutdown(SHUT_WR)`.
    Done,
}

/// Where the flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Upstream connect in flight.
    Connecting,
    /// Forwarding.
    Open,
    /// Cancelling; the slot is freed when nothing is in flight.
    Closing,
}

/// How a flow ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// FIN both ways (already sent, or sent by close).
    Normal,
    /// RST both ways: SO_LINGER 0 before close.
    Reset,
}

/// A flow.
pub struct Conn {
    /// Its id (audit records).
    pub id: u64,
    /// Index of its listener in the worker.
    pub listener: usize,
    client: TcpStream,
    upstream: TcpStream,
    /// What the connect SQEs point at.
    mem: Lent<ConnMem>,
    /// Recv and send SQEs in flight (they point into pool buffers, not into `mem`).
    ops: u8,
    cancels: u8,
    /// Current state.
    pub state: State,
    dirs: [Dir; 2],
    /// Each direction's pipe while it splices (`None` otherwise).
    pipes: [Option<Spliced>; 2],
    /// When each direction's bytes in flight arrived (their dwell starts there).
    recv_at: [Instant; 2],
    /// Bytes received from each side (client, upstream).
    pub bytes: [u64; 2],
    /// Why it ends, once something said (`super::flow::Ended`).
    pub ended: Option<super::flow::Ended>,
    /// The side that finished its stream first (`ClientFin` or `UpstreamFin`): the
    /// cause when nothing else ended the flow.
    pub first_fin: Option<super::flow::Ended>,
    /// When it was accepted (loop clock).
    pub started: Instant,
    /// When bytes last moved (or the connect completed).
    pub last_active: Instant,
    /// The client's address: the fact it was decided on, kept for re-decisions.
    pub source: SocketAddr,
    /// Wall-clock second it was accepted (`Constraints::expires_at` counts from it).
    pub started_unix: UnixSeconds,
    /// When its decision stops holding (and what runs out); the worker re-decides it
    /// then.
    pub expiry: Option<super::decide::Expiry>,
}

/// What a completion handler needs from the worker.
pub struct Ctx<'a> {
    /// The worker's ring (and buffer pool).
    pub ring: &'a mut Ring,
    /// The worker's counters.
    pub stats: &'a mut Counters,
    /// Directions waiting for a buffer: (slot index, generation, direction).
    pub starved: &'a mut Vec<(u32, u32, usize)>,
    /// Whether bulk directions may splice (`[workers] splice`).
    pub splice: bool,
    /// Loop time.
    pub now: Instant,
    /// This flow's slot.
    pub index: u32,
    /// This flow's slot generation.
    pub gen: u32,
    /// The splice pipes this worker may still open.
    pub pipes: &'a PipeBudget,
    /// The worker's TLS output buffers (`worker::tls::OutPool`).
    pub out_pool: &'a mut crate::worker::tls::OutPool,
    /// Set by the flow when its upstream connect failed: the worker audits it.
    pub connect_failed: Option<ConnectFailure>,
    /// The listener's latency histograms (`None`: `[workers] latency = false`).
    pub latency: Option<&'a mut zgate_telemetry::latency::Latencies>,
}

impl Ctx<'_> {
    /// Record `start`..now (a precise clock read, not the loop's) for `m`.
    #[inline]
    pub fn record_precise(&mut self, m: zgate_telemetry::latency::Measure, start: Option<Instant>) {
        if let (Some(l), Some(t0)) = (self.latency.as_deref_mut(), start) {
            l.record(m, super::precise_ns_since(t0));
        }
    }

    /// Record `since`..now for `m`, when histograms are kept.
    #[inline]
    pub fn record(&mut self, m: zgate_telemetry::latency::Measure, since: Instant) {
        if let Some(l) = self.latency.as_deref_mut() {
            let ns = self.now.saturating_duration_since(since).as_nanos();
            l.record(m, u64::try_from(ns).unwrap_or(u64::MAX));
        }
    }
}

/// The instant to time a TLS open or seal (`m`) from, when histograms are kept
/// (`latency`: a [`Ctx`]'s) and this call is one of the sampled
/// ([`zgate_telemetry::latency::CRYPTO_SAMPLE`]). A function of the field, not of the
/// `Ctx`, so that it can be taken just before the call it times while the flow's
/// buffers are borrowed from the `Ctx`.
#[inline]
pub fn crypto_start(
    latency: Option<&mut zgate_telemetry::latency::Latencies>,
    m: zgate_telemetry::latency::Measure,
) -> Option<Instant> {
    latency?.sample_crypto(m).then(super::precise_now)
}

/// The dwell measure of direction `dir` (0: client to upstream).
pub fn dwell(dir: usize) -> zgate_telemetry::latency::Measure {
    if dir == 0 {
        zgate_telemetry::latency::Measure::DwellClientToUpstream
    } else {
        zgate_telemetry::latency::Measure::DwellUpstreamToClient
    }
}

/// Why an upstream connect failed, for the flow's audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The socket could not be made (out of descriptors, ...): its errno.
    Socket(Option<i32>),
    /// The connect SQE could not be queued.
    Queue,
    /// The connect failed: its errno.
    Connect(i32),
    /// `connect_timeout` passed.
    Timeout,
}

impl ConnectFailure {
    /// From a connect CQE's (negative) result.
    pub fn from_result(result: i32) -> ConnectFailure {
        if result == -libc::ECANCELED {
            ConnectFailure::Timeout
        } else {
            ConnectFailure::Connect(result.saturating_neg())
        }
    }

    /// The audit record's `reason`.
    pub fn label(self) -> &'static str {
        match self {
            ConnectFailure::Timeout => "connect-timeout",
            ConnectFailure::Connect(libc::ECONNREFUSED) => "connect-refused",
            ConnectFailure::Connect(libc::ENETUNREACH | libc::EHOSTUNREACH) => {
                "connect-unreachable"
            }
            ConnectFailure::Connect(_) => "connect-error",
            ConnectFailure::Socket(_) => "upstream-socket",
            ConnectFailure::Queue => "connect-not-queued",
        }
    }

    /// The kernel's words, when there are some (rendered by the supervisor).
    pub fn detail(self) -> Option<zgate_telemetry::Detail> {
        match self {
            ConnectFailure::Connect(e) | ConnectFailure::Socket(Some(e)) => {
                Some(Box::new(std::io::Error::from_raw_os_error(e)))
            }
            _ => None,
        }
    }
}

/// The splice pipes one worker may hold at once (`[workers] splice_pipes`), shared by
/// its flows. One thread uses it, hence `Rc`.
#[derive(Debug)]
pub struct PipeBudget {
    open: Rc<Cell<u32>>,
    max: u32,
    /// At most `max`; lowered to the pipes open when the kernel refused one (the
    /// user's pipe allowance is spent), so that flows do not ask again on every round
    /// until [`PipeBudget::retry`].
    cap: Cell<u32>,
}

impl PipeBudget {
    /// A budget of `max` pipes, none taken.
    pub fn new(max: u32) -> PipeBudget {
        PipeBudget {
            open: Rc::new(Cell::new(0)),
            max,
            cap: Cell::new(max),
        }
    }

    /// Pipes open now.
    pub fn open(&self) -> u32 {
        self.open.get()
    }

    /// A place for one more pipe, if fewer than the cap are open.
    fn take(&self) -> Option<PipeTicket> {
        let n = self.open.get();
        (n < self.cap.get()).then(|| {
            self.open.set(n + 1);
            PipeTicket(Rc::clone(&self.open))
        })
    }

    /// The kernel refused a pipe: ask for no more than are open now until `retry`.
    fn spent(&self) {
        self.cap.set(self.open.get());
    }

    /// Ask the kernel again (the worker calls this once a tick: pipes elsewhere in the
    /// process or under the same user may have closed).
    pub fn retry(&self) {
        self.cap.set(self.max);
    }
}

/// One pipe's place in its worker's [`PipeBudget`], given back when dropped.
#[derive(Debug)]
struct PipeTicket(Rc<Cell<u32>>);

impl Drop for PipeTicket {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A direction's pipe and its place in the budget: both go when it is dropped (on
/// catching up, at FIN, or with the flow).
struct Spliced {
    pipe: Pipe,
    _ticket: PipeTicket,
}

impl Ctx<'_> {
    /// This flow's `user_data` for `op`.
    pub fn ud(&self, op: Op) -> u64 {
        encode(op, self.index, self.gen)
    }
}

/// The facts a flow was admitted with.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    /// Its id (audit records).
    pub id: u64,
    /// Index of its listener in the worker.
    pub listener: usize,
    /// The client's address.
    pub source: SocketAddr,
    /// Wall-clock second of the accept.
    pub started_unix: UnixSeconds,
    /// What allowed it.
    pub permit: crate::worker::Permit,
}

impl Conn {
    /// Start a flow: queue the upstream connect. On error nothing is in flight and the
    /// sockets are returned to be dropped.
    pub fn connect(
        admitted: Admitted,
        client: TcpStream,
        upstream: TcpStream,
        cfg: &crate::config::ListenerConfig,
        ctx: &mut Ctx<'_>,
    ) -> Result<Conn, sys::PushError> {
        let mut mem = ConnMem::boxed(cfg.upstream, cfg.connect_timeout);
        let (c, t) = (ctx.ud(Op::Connect), ctx.ud(Op::ConnectTimeout));
        ctx.ring
            .connect_with_timeout(upstream.as_raw_fd(), &mut mem, c, t)?;
        Ok(Conn {
            id: admitted.id,
            listener: admitted.listener,
            client,
            upstream,
            mem,
            ops: 0,
            cancels: 0,
            state: State::Connecting,
            dirs: [Dir::Reading, Dir::Reading],
            pipes: [None, None],
            recv_at: [ctx.now; 2],
            bytes: [0; 2],
            ended: None,
            first_fin: None,
            started: ctx.now,
            last_active: ctx.now,
            source: admitted.source,
            started_unix: admitted.started_unix,
            expiry: admitted.permit.expiry(),
        })
    }

    /// Whether anything of ours is in flight on the ring.
    fn in_flight(&self) -> bool {
        self.mem.lent() > 0 || self.ops > 0 || self.cancels > 0
    }

    /// Whether the slot may be freed: closing, and no SQE of ours is in flight. (No pool
    /// buffer can be held then: a buffer is held only while its send is in flight, or
    /// between a CQE and the handler that gives it back.)
    pub fn finished(&self) -> bool {
        self.state == State::Closing && !self.in_flight()
    }

    /// Whether direction `dir` waits for a pool buffer.
    pub fn is_starved(&self, dir: usize) -> bool {
        self.dirs.get(dir) == Some(&Dir::Starved)
    }

    fn src_dst(&self, dir: usize) -> (&TcpStream, &TcpStream) {
        if dir == 0 {
            (&self.client, &self.upstream)
        } else {
            (&self.upstream, &self.client)
        }
    }

    fn set_dir(&mut self, dir: usize, d: Dir) {
        if let Some(slot) = self.dirs.get_mut(dir) {
            *slot = d;
        }
    }

    /// Count an SQE the flow queued (its CQE is now owed); one that could not be queued
    /// resets the flow.
    fn track(&mut self, pushed: Result<(), PushError>, ctx: &mut Ctx<'_>) {
        if pushed.is_ok() {
            self.ops += 1;
        } else {
            self.close(CloseKind::Reset, ctx);
        }
    }

    /// Arm a recv on `dir`'s source socket (also used by the worker for a starved one).
    pub fn recv(&mut self, dir: usize, ctx: &mut Ctx<'_>) {
        if self.state != State::Open {
            return;
        }
        let fd = self.src_dst(dir).0.as_raw_fd();
        let ud = ctx.ud(Op::Recv(dir));
        self.set_dir(dir, Dir::Reading);
        let pushed = ctx.ring.recv(fd, ud);
        self.track(pushed, ctx);
    }

    fn send(&mut self, dir: usize, buf: BufId, start: u32, end: u32, ctx: &mut Ctx<'_>) {
        let fd = self.src_dst(dir).1.as_raw_fd();
        let ud = ctx.ud(Op::Send(dir));
        self.set_dir(dir, Dir::Writing { buf, start, end });
        let (s, e) = (start as usize, end as usize);
        if ctx.ring.send(fd, buf, s, e, ud).is_ok() {
            self.ops += 1;
        } else {
            // Not queued: nothing points into the buffer, so it can go back now.
            self.give_back(buf, ctx);
            self.set_dir(dir, Dir::Done);
            self.close(CloseKind::Reset, ctx);
        }
    }

    fn give_back(&mut self, buf: BufId, ctx: &mut Ctx<'_>) {
        // An error means the buffer was not held by us: a bookkeeping bug. Leaving it
        // where it is (never reused) is the safe answer; debug builds stop here.
        let r = ctx.ring.pool.give_back(buf);
        debug_assert!(r.is_ok(), "{r:?}");
    }

    /// End the flow with resets both ways for `why`, counted as a reset.
    fn reset_for(&mut self, why: Ended, ctx: &mut Ctx<'_>) {
        ctx.stats.inc(M::Resets);
        self.ended.get_or_insert(why);
        self.close(CloseKind::Reset, ctx);
    }

    /// Begin closing: cancel everything in flight. The worker frees the slot once
    /// [`Conn::finished`] holds. Idempotent.
    pub fn close(&mut self, kind: CloseKind, ctx: &mut Ctx<'_>) {
        if self.state == State::Closing {
            return;
        }
        self.state = State::Closing;
        if kind == CloseKind::Reset {
            // Best effort: a socket the peer already reset may refuse; close still works.
            let _ = sys::set_linger_zero(self.client.as_raw_fd());
            let _ = sys::set_linger_zero(self.upstream.as_raw_fd());
            // The client is cut now (RST, and its pending ops complete at once); the
            // upstream gets its RST when the socket closes, once its ops are back.
            let _ = sys::abort_connection(self.client.as_raw_fd());
        }
        if !self.in_flight() {
            return;
        }
        // Receives in flight end (0) as soon as the sockets stop receiving, and that
        // sends nothing to the peers. Cancelling by descriptor instead walks every
        // request on the ring: O(flows) per close, milliseconds when a revocation or a
        // new table closes a hundred flows among thousands (docs/benchmarks.md).
        let reading = self
            .dirs
            .iter()
            .filter(|d| matches!(d, Dir::Reading))
            .count();
        let _ = self.client.shutdown(Shutdown::Read);
        let _ = self.upstream.shutdown(Shutdown::Read);
        if usize::from(self.ops) <= reading && self.mem.lent() == 0 {
            return;
        }
        // Something else is in flight (a send toward a full socket, a splice, the
        // connect): cancel by descriptor.
        let ud = ctx.ud(Op::Cancel);
        // A splice-in's SQE names the pipe, not the socket: cancel by the pipe too.
        let pipe_fds = self.pipes.iter().flatten().map(|s| s.pipe.write_fd());
        for fd in [self.client.as_raw_fd(), self.upstream.as_raw_fd()]
            .into_iter()
            .chain(pipe_fds)
        {
            if ctx.ring.cancel_fd(fd, ud).is_ok() {
                self.cancels += 1;
            } else {
                // No room to cancel: shutting the socket down completes its pending
                // recv (0) and send (EPIPE) just the same.
                let _ = self.client.shutdown(Shutdown::Both);
                let _ = self.upstream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Handle one completion for this flow. `buffer` is the pool buffer a recv CQE
    /// names, if any.
    pub fn complete(&mut self, op: Op, result: i32, buffer: Option<u16>, ctx: &mut Ctx<'_>) {
        match op {
            Op::Cancel => self.cancels = self.cancels.saturating_sub(1),
            Op::Connect | Op::ConnectTimeout => self.mem.returned(),
            Op::Recv(_) | Op::Send(_) | Op::SpliceWait(_) | Op::SpliceIn(_) | Op::SpliceOut(_) => {
                self.ops = self.ops.saturating_sub(1)
            }
            Op::Accept | Op::AcceptCancel | Op::Wake | Op::WakeCancel => {}
        }
        match op {
            Op::Connect => self.on_connect(result, ctx),
            Op::Recv(dir) => self.on_recv(dir, result, buffer, ctx),
            Op::Send(dir) => self.on_send(dir, result, ctx),
            Op::SpliceWait(dir) => self.on_splice_wait(dir, result, ctx),
            Op::SpliceIn(dir) => self.on_splice_in(dir, result, ctx),
            Op::SpliceOut(dir) => self.on_splice_out(dir, result, ctx),
            Op::ConnectTimeout => {}
            // Not connection ops; never routed here.
            Op::Accept | Op::AcceptCancel | Op::Wake | Op::WakeCancel | Op::Cancel => {}
        }
    }

    fn on_connect(&mut self, result: i32, ctx: &mut Ctx<'_>) {
        if self.state == State::Closing {
            return;
        }
        if result == 0 {
            self.state = State::Open;
            self.last_active = ctx.now;
            // A plain flow's connect starts at its accept.
            ctx.record(
                zgate_telemetry::latency::Measure::UpstreamConnect,
                self.started,
            );
            self.recv(0, ctx);
            self.recv(1, ctx);
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

    fn on_recv(&mut self, dir: usize, result: i32, buffer: Option<u16>, ctx: &mut Ctx<'_>) {
        // Whatever happens next, a buffer the kernel handed us is ours to account for.
        let buf = match buffer.map(|bid| ctx.ring.pool.take(bid)) {
            Some(Ok(b)) => Some(b),
            Some(Err(_)) => {
                // A buffer id we did not publish: trust nothing more on this flow.
                self.reset_for(Ended::GatewayError, ctx);
                return;
            }
            None => None,
        };
        let n = u32::try_from(result).ok();
        match (n, buf) {
            (Some(n), Some(buf)) if n > 0 && self.state != State::Closing => {
                self.last_active = ctx.now;
                if let Some(t) = self.recv_at.get_mut(dir) {
                    *t = ctx.now;
                }
                if let Some(b) = self.bytes.get_mut(dir) {
                    *b += u64::from(n);
                }
                if dir == 0 {
                    ctx.stats
                        .add_label(M::Bytes, CLIENT_TO_UPSTREAM, u64::from(n));
                } else {
                    ctx.stats
                        .add_label(M::Bytes, UPSTREAM_TO_CLIENT, u64::from(n));
                }
                self.send(dir, buf, 0, n, ctx);
                return;
            }
            _ => {
                if let Some(buf) = buf {
                    self.give_back(buf, ctx);
                }
            }
        }
        if self.state == State::Closing {
            return;
        }
        match n {
            Some(0) => {
                self.set_dir(dir, Dir::Done);
                self.first_fin.get_or_insert(Ended::fin(dir));
                // FIN in, FIN out: only this direction ends.
                let _ = self.src_dst(dir).1.shutdown(Shutdown::Write);
                if self.dirs == [Dir::Done, Dir::Done] {
                    self.close(CloseKind::Normal, ctx);
                }
            }
            _ if result == -libc::ENOBUFS => {
                // Pool empty: wait for a buffer to come back; the worker re-arms us.
                self.set_dir(dir, Dir::Starved);
                ctx.stats.inc(M::RecvStarved);
                let dir_index = dir;
                ctx.starved.push((ctx.index, ctx.gen, dir_index));
            }
            // The source of `dir` failed: direction 0 reads the client.
            _ => self.reset_for(Ended::reset(dir), ctx),
        }
    }

    fn on_send(&mut self, dir: usize, result: i32, ctx: &mut Ctx<'_>) {
        let Some(Dir::Writing { buf, start, end }) = self.dirs.get(dir).copied() else {
            return; // every send leaves its direction Writing until this CQE
        };
        // The send's CQE is in: nothing points into `buf` any more.
        let r = ctx.ring.send_done(buf);
        debug_assert!(r.is_ok(), "{r:?}");
        let sent = u32::try_from(result).ok().filter(|&n| n > 0);
        match sent {
            Some(n) if self.state != State::Closing => {
                self.last_active = ctx.now;
                let start = start.saturating_add(n);
                if start < end {
                    self.send(dir, buf, start, end, ctx);
                } else {
                    if let Some(&t) = self.recv_at.get(dir) {
                        ctx.record(dwell(dir), t);
                    }
                    self.give_back(buf, ctx);
                    if ctx.splice && end as usize >= BULK_RECV {
                        // A large receive: the source is sending in bulk.
                        self.splice_in(dir, ctx);
                    } else {
                        self.recv(dir, ctx);
                    }
                }
            }
            _ => {
                self.give_back(buf, ctx);
                self.set_dir(dir, Dir::Done);
                if self.state != State::Closing {
                    // The destination of `dir` refused the bytes.
                    self.reset_for(Ended::reset(dir ^ 1), ctx);
                }
            }
        }
    }

    /// Splice what the source has (up to the pipe's size) into `dir`'s pipe once it is
    /// readable, creating the pipe first if needed; without a pipe the direction stays
    /// on receives.
    fn splice_in(&mut self, dir: usize, ctx: &mut Ctx<'_>) {
        if self.state != State::Open {
            return;
        }
        let Some(slot) = self.pipes.get_mut(dir) else {
            return;
        };
        if slot.is_none() {
            let Some(ticket) = ctx.pipes.take() else {
                // The worker holds all the pipes it may: stay on receives.
                ctx.stats.inc(M::PipesRefused);
                self.recv(dir, ctx);
                return;
            };
            match Pipe::new(PIPE_SIZE) {
                Ok(pipe) => {
                    *slot = Some(Spliced {
                        pipe,
                        _ticket: ticket,
                    });
                    ctx.stats.inc(M::PipesOpened);
                }
                Err(_) => {
                    drop(ticket);
                    ctx.pipes.spent();
                    ctx.stats.inc(M::PipesRefused);
                    self.recv(dir, ctx);
                    return;
                }
            }
        }
        // io_uring hands every splice to an async worker thread, where a splice from a
        // socket with no data blocks until data comes: poll first, splice once readable
        // (it then takes what is there and returns).
        let src = self.src_dst(dir).0.as_raw_fd();
        let ud = ctx.ud(Op::SpliceWait(dir));
        self.set_dir(dir, Dir::SpliceWait);
        let pushed = ctx.ring.poll_readable(src, ud);
        self.track(pushed, ctx);
    }

    /// The source is readable (or has an end or an error to report): splice it in.
    fn on_splice_wait(&mut self, dir: usize, result: i32, ctx: &mut Ctx<'_>) {
        if self.state == State::Closing {
            return;
        }
        let pipe = self
            .pipes
            .get(dir)
            .and_then(Option::as_ref)
            .map(|s| &s.pipe);
        let (Some((pipe_w, len)), true) = (pipe.map(|p| (p.write_fd(), p.size)), result >= 0)
        else {
            // A failed poll of the source (not a cancel: we are not closing) or no
            // pipe: reset.
            let why = if pipe.is_some() {
                Ended::reset(dir)
            } else {
                Ended::GatewayError
            };
            self.reset_for(why, ctx);
            return;
        };
        let src = self.src_dst(dir).0.as_raw_fd();
        let ud = ctx.ud(Op::SpliceIn(dir));
        self.set_dir(dir, Dir::SpliceIn);
        let pushed = ctx.ring.splice(src, pipe_w, len, ud);
        self.track(pushed, ctx);
    }

    fn splice_out(&mut self, dir: usize, left: u32, batch: u32, ctx: &mut Ctx<'_>) {
        let Some(pipe_r) = self
            .pipes
            .get(dir)
            .and_then(Option::as_ref)
            .map(|s| s.pipe.read_fd())
        else {
            // Cannot happen (a splice-in filled it); the bytes in it are lost: reset.
            self.close(CloseKind::Reset, ctx);
            return;
        };
        let dst = self.src_dst(dir).1.as_raw_fd();
        let ud = ctx.ud(Op::SpliceOut(dir));
        self.set_dir(dir, Dir::SpliceOut { left, batch });
        let pushed = ctx.ring.splice(pipe_r, dst, left, ud);
        self.track(pushed, ctx);
    }

    /// Close `dir`'s pipe. Only called with no splice of `dir` in flight.
    fn drop_pipe(&mut self, dir: usize) {
        if let Some(slot) = self.pipes.get_mut(dir) {
            *slot = None;
        }
    }

    fn on_splice_in(&mut self, dir: usize, result: i32, ctx: &mut Ctx<'_>) {
        if self.state == State::Closing {
            return;
        }
        match u32::try_from(result) {
            Ok(0) => {
                // FIN; the pipe is empty (we splice in only into a drained pipe).
                self.first_fin.get_or_insert(Ended::fin(dir));
                self.drop_pipe(dir);
                self.set_dir(dir, Dir::Done);
                let _ = self.src_dst(dir).1.shutdown(Shutdown::Write);
                if self.dirs == [Dir::Done, Dir::Done] {
                    self.close(CloseKind::Normal, ctx);
                }
            }
            Ok(n) => {
                self.last_active = ctx.now;
                if dir == 0 {
                    ctx.stats
                        .add_label(M::Bytes, CLIENT_TO_UPSTREAM, u64::from(n));
                } else {
                    ctx.stats
                        .add_label(M::Bytes, UPSTREAM_TO_CLIENT, u64::from(n));
                }
                self.splice_out(dir, n, n, ctx);
            }
            Err(_) => self.reset_for(Ended::reset(dir), ctx),
        }
    }

    fn on_splice_out(&mut self, dir: usize, result: i32, ctx: &mut Ctx<'_>) {
        let Some(Dir::SpliceOut { left, batch }) = self.dirs.get(dir).copied() else {
            return;
        };
        if self.state == State::Closing {
            return;
        }
        match u32::try_from(result).ok().filter(|&n| n > 0) {
            Some(n) => {
                self.last_active = ctx.now;
                let left = left.saturating_sub(n);
                if left > 0 {
                    self.splice_out(dir, left, batch, ctx);
                } else if (batch as usize) < BULK_RECV {
                    // Caught up: the pipe is empty and nothing of ours names it.
                    self.drop_pipe(dir);
                    self.recv(dir, ctx);
                } else {
                    self.splice_in(dir, ctx);
                }
            }
            None => {
                self.set_dir(dir, Dir::Done);
                self.reset_for(Ended::reset(dir ^ 1), ctx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PipeBudget;

    /// Tickets count the pipes open; a refusal by the kernel caps the budget at what is
    /// open until `retry`; a dropped ticket gives its place back.
    #[test]
    fn pipe_budget_counts_tickets_and_learns_the_kernel_refusal_until_retry() {
        let b = PipeBudget::new(3);
        let t1 = b.take().unwrap();
        let t2 = b.take().unwrap();
        assert_eq!(b.open(), 2);
        b.spent();
        assert!(b.take().is_none(), "capped at the two open");
        drop(t1);
        assert_eq!(b.open(), 1);
        let t3 = b.take().unwrap();
        assert!(b.take().is_none());
        b.retry();
        let t4 = b.take().unwrap();
        assert_eq!(b.open(), 3);
        assert!(b.take().is_none(), "max is 3");
        drop((t2, t3, t4));
        assert_eq!(b.open(), 0);
    }
}
