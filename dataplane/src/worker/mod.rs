//! A worker: one thread, pinned to one core, owning one io_uring, its own
//! `SO_REUSEPORT` listener per configured listener, its connection slab and buffers.
//!
//! The loop, once per turn:
//! 1. one relaxed load of the table generation; reload the `Arc` only if it moved, and
//!    then re-decide every live flow with the new table (closing those it denies);
//! 2. one load of the phase (running, draining, stop);
//! 3. every `TICK`: the flows whose timer-wheel entry came due (idle and lifetime
//!    timers, handshake timeouts, expired decision constraints: re-decide; see
//!    `timers.rs`), re-arming a listener after an accept error;
//! 4. submit queued SQEs and wait (interrupt mode: sleep in `io_uring_enter` until a
//!    completion or the next tick; busy mode: do not sleep; adaptive mode: do not
//!    sleep until `spin` has passed since the last completion, then as interrupt;
//!    busy and adaptive sleep too while a splice is running on the core);
//! 5. handle every completion; top the buffer ring up and re-arm receives that found
//!    it empty; publish counters (plain relaxed stores).
//!
//! The loop clock ([`Worker::clock`]) is the only place a worker reads the time.
//!
//! INVARIANT (STYLE E.13): a slot and its memory are freed only once every SQE that was
//! pushed for it has completed ([`conn::Conn::finished`]); the worker exits only once
//! nothing at all is in flight on its ring.

pub mod conn;
pub(crate) mod decide;
mod flow;
mod index;
mod live;
mod timers;
pub mod tls;
pub mod token;

use std::collections::HashMap;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zgate_table::facts::{FlowFacts, LiveFacts};
use zgate_table::DecisionTable;
use zgate_telemetry::latency::{Latencies, Measure};
use zgate_telemetry::{AuditKind, AuditQueue};
use zgate_tls::{RejectReason, ServerTls};

use crate::tls::ListenerTls;

use crate::config::{ListenerConfig, PollMode, Protocol};
use crate::metrics::{Count, Counters, M};
use crate::shared::{Phase, Published, WorkerStats};
use crate::sys::{self, Completion, Lent, Ring};
use conn::{Admitted, CloseKind, Conn, Ctx, PipeBudget, State};
pub use decide::{permit, CloseReason, Permit, Refusal};
use flow::Flow;
use timers::Wheel;
use tls::{Refused, TlsConn};
use token::{decode, encode, next_gen, Op};

/// How often timers are checked (and the longest an interrupt-mode worker sleeps).
const TICK: Duration = Duration::from_millis(100);
/// One-shot accepts after running out of descriptors, before multishot again.
const SINGLE_ACCEPTS_AFTER_PAUSE: u32 = 64;
/// A batch of completions that takes this long to handle is a stall: every flow on the
/// core waited that long (STYLE I.22). Full TLS handshakes take ~1 ms of CPU each, so a
/// batch of several of them counts.
const STALL: Duration = Duration::from_millis(2);
/// A splice in flight with none completed for this long is sleeping in its async
/// worker (toward a destination that does not read), not running: spinning resumes.
/// A running bulk transfer completes a splice round every few hundred microseconds.
const SPLICE_STALLED: Duration = Duration::from_millis(1);
/// Counters are published at most this often while a worker is busy.
const PUBLISH: Duration = Duration::from_millis(1);
/// Latency histograms are handed to the supervisor every this many ticks (1 s).
const LATENCY_EVERY_TICKS: u64 = 10;
/// Submission queue entries per ring.
const RING_ENTRIES: u32 = 1024;

/// Why a worker stopped before it was told to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The ring could not be created.
    #[error("worker {worker}: cannot create io_uring: {source}")]
    Ring {
        /// Worker index.
        worker: usize,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// Pinning to the configured core failed.
    #[error("worker {worker}: cannot pin to core {core}")]
    Pin {
        /// Worker index.
        worker: usize,
        /// The core.
        core: usize,
    },
    /// `io_uring_enter` failed.
    #[error("worker {worker}: io_uring_enter failed: {source}")]
    Submit {
        /// Worker index.
        worker: usize,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// An essential SQE (accept, wake) could not be queued.
    #[error("worker {worker}: {source}")]
    Push {
        /// Worker index.
        worker: usize,
        /// What failed.
        source: sys::PushError,
    },
}

/// A listener as handed to a worker.
pub struct WorkerListener {
    /// Its configuration.
    pub config: Arc<ListenerConfig>,
    /// The bound, listening socket (this worker's own).
    pub fd: OwnedFd,
    /// Most flows this worker may hold for it.
    pub limit: u32,
    /// Most of those that may be in a TLS handshake (or PostgreSQL preamble) at once.
    pub handshake_limit: u32,
    /// Most of those from one source (`u32::MAX`: no per-source limit).
    pub source_handshake_limit: u32,
}

/// Everything a worker starts with.
pub struct WorkerSetup {
    /// Worker index (for logs and errors).
    pub id: usize,
    /// Core to pin to.
    pub core: Option<usize>,
    /// Wait strategy.
    pub poll: PollMode,
    /// Provided buffers in its pool (a power of two).
    pub buffers: u16,
    /// Whether plain flows splice their bulk directions.
    pub splice: bool,
    /// Most splice pipes this worker holds at once.
    pub splice_pipes: u32,
    /// Whether to ask for `SINGLE_ISSUER | DEFER_TASKRUN`.
    pub defer_taskrun: bool,
    /// Whether to keep latency histograms (`[workers] latency`).
    pub latency: bool,
    /// Where its audit events go (the supervisor drains it).
    pub audit: Arc<AuditQueue>,
    /// Its listeners.
    pub listeners: Vec<WorkerListener>,
    /// Shared published block.
    pub published: Arc<Published>,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
    /// Read end of its wake eventfd.
    pub wake: OwnedFd,
}

struct Listener {
    config: Arc<ListenerConfig>,
    fd: Option<OwnedFd>,
    armed: bool,
    limit: u32,
    active: u32,
    handshake_limit: u32,
    /// Flows in a handshake now (they hold a handshake slot).
    handshaking: u32,
    source_handshake_limit: u32,
    /// Handshakes in progress by source (only with a per-source limit).
    handshaking_by_source: HashMap<SourceKey, u32>,
    tls: Option<ListenerTls>,
    /// This worker's counters for the listener.
    counters: Counters,
    /// Its latency histograms (`None`: not kept).
    latency: Option<Box<Latencies>>,
}

/// Which source a per-source handshake limit counts against: an IPv4 address, or the
/// /64 of an IPv6 one (a host usually holds a whole /64).
type SourceKey = u128;

fn source_key(ip: std::net::IpAddr) -> SourceKey {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => u128::from(v6) >> 64 << 64,
        },
    }
}

impl Listener {
    /// A TLS flow from `source` starts its handshake.
    fn handshake_started(&mut self, source: std::net::IpAddr) {
        self.handshaking += 1;
        if self.source_handshake_limit != u32::MAX {
            *self
                .handshaking_by_source
                .entry(source_key(source))
                .or_insert(0) += 1;
        }
    }

    /// A TLS flow from `source` finished its handshake (or closed during it).
    fn handshake_ended(&mut self, source: std::net::IpAddr) {
        self.handshaking = self.handshaking.saturating_sub(1);
        if self.source_handshake_limit != u32::MAX {
            let key = source_key(source);
            if let Some(n) = self.handshaking_by_source.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.handshaking_by_source.remove(&key);
                }
            }
        }
    }

    /// Whether `source` already has as many handshakes in progress as it may.
    fn source_at_limit(&self, source: std::net::IpAddr) -> bool {
        self.source_handshake_limit != u32::MAX
            && self
                .handshaking_by_source
                .get(&source_key(source))
                .is_some_and(|n| *n >= self.source_handshake_limit)
    }
}

struct Slot {
    gen: u32,
    conn: Option<Flow>,
    /// The tick of this flow's live timer entry (`timers::NOT_SCHEDULED`: none).
    check_tick: u64,
}

struct Worker {
    id: usize,
    poll: PollMode,
    ring: Ring,
    listeners: Vec<Listener>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    table: Option<Arc<DecisionTable>>,
    table_gen: u64,
    /// TLS material generation last loaded into `listeners[..].tls`.
    tls_gen: u64,
    /// TLS output buffers ([`Ctx::out_pool`]).
    out_pool: tls::OutPool,
    audit: Arc<AuditQueue>,
    /// The facts decisions read, and the publication generation they came from.
    live_facts: Arc<LiveFacts>,
    facts_gen: u64,
    /// Live TLS flows by principal, fingerprint and device.
    index: index::FlowIndex,
    /// Scratch for the slots a fact delta touches.
    touched_slots: Vec<u32>,
    /// The shadow table, if one is evaluated, and its publication generation.
    shadow: Option<Arc<DecisionTable>>,
    shadow_gen: u64,
    /// The last impact query taken up.
    impact_answered: u64,
    /// Re-decisions and evaluations running in slices across loop turns.
    sweeps: live::Sweeps,
    published: Arc<Published>,
    stats_out: Arc<WorkerStats>,
    /// The worker's own counters (worker-scope families); each listener has its own
    /// in [`Listener::counters`].
    own: Counters,
    /// When the counters were last published (loop clock).
    published_at: Instant,
    wake_fd: OwnedFd,
    wake_buf: Lent<u64>,
    wake_armed: bool,
    wake_cancelled: bool,
    /// Listener and wake ops in flight (accepts count while armed).
    aux_inflight: u32,
    phase: Phase,
    now: Instant,
    unix_now: i64,
    /// The same instant, in microseconds (audit timestamps).
    unix_now_us: i64,
    /// Flows started so far (their ids, [`Worker::next_flow_id`]).
    flows_started: u64,
    /// Directions whose recv found the pool empty: (slot, generation, direction).
    starved: Vec<(u32, u32, usize)>,
    /// Scratch for [`Worker::feed_starved`].
    starved_batch: Vec<(u32, u32, usize)>,
    /// Whether plain flows splice their bulk directions.
    splice: bool,
    /// The splice pipes its flows may hold ([`Ctx::pipes`]).
    pipes: PipeBudget,
    /// When a splice last completed (loop clock).
    last_splice_done: Instant,
    /// When each flow is next checked for its deadlines.
    wheel: Wheel,
    /// Scratch for the wheel's due entries.
    due: Vec<timers::Entry>,
    /// Ticks so far.
    ticks: u64,
    /// Out of descriptors (for an accept or an upstream socket): accept nothing until a
    /// tick finds two free, so new clients wait in the listen queue instead of being
    /// taken and refused one after another.
    accepts_paused: bool,
    /// After such a pause, accept one connection at a time for this many more: a
    /// multishot accept would take every waiting client's descriptor before any of
    /// them got its upstream socket.
    single_accepts_left: u32,
    /// Decisions so far (one in `DECISION_SAMPLE` is timed).
    decisions: u64,
}

/// Run a worker until the supervisor says stop and every flow is gone.
pub fn run(setup: WorkerSetup) -> Result<(), WorkerError> {
    start(setup)?.run_to_end()
}

/// A worker built from `setup`, pinned, its ring made; nothing armed yet.
fn start(setup: WorkerSetup) -> Result<Worker, WorkerError> {
    let id = setup.id;
    if let Some(core) = setup.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            return Err(WorkerError::Pin { worker: id, core });
        }
    }
    let ring = Ring::new(RING_ENTRIES, setup.buffers, setup.defer_taskrun)
        .map_err(|source| WorkerError::Ring { worker: id, source })?;
    if let Some(core) = setup.core {
        // Splices run on the ring's async workers: keep them on this worker's core.
        // Best effort: unpinned, they still work, only elsewhere.
        let _ = ring.pin_async_workers(core);
    }
    let now = loop_clock().0;
    let mut w = Worker {
        id,
        poll: setup.poll,
        ring,
        listeners: setup
            .listeners
            .into_iter()
            .map(|l| Listener {
                config: l.config,
                fd: Some(l.fd),
                armed: false,
                limit: l.limit,
                active: 0,
                handshake_limit: l.handshake_limit,
                handshaking: 0,
                source_handshake_limit: l.source_handshake_limit,
                handshaking_by_source: HashMap::new(),
                tls: None,
                counters: Counters::default(),
                latency: setup.latency.then(|| Box::new(Latencies::new())),
            })
            .collect(),
        slots: Vec::new(),
        free: Vec::new(),
        live: 0,
        table: None,
        table_gen: 0,
        tls_gen: 0,
        out_pool: tls::OutPool::default(),
        audit: setup.audit,
        live_facts: Arc::new(LiveFacts::default()),
        facts_gen: 0,
        index: index::FlowIndex::default(),
        touched_slots: Vec::new(),
        shadow: None,
        shadow_gen: 0,
        impact_answered: 0,
        sweeps: live::Sweeps::default(),
        published: setup.published,
        stats_out: setup.stats,
        own: Counters::default(),
        published_at: now,
        wake_fd: setup.wake,
        wake_buf: Lent::new(Box::new(0)),
        wake_armed: false,
        wake_cancelled: false,
        aux_inflight: 0,
        phase: Phase::Running,
        now,
        unix_now: 0,
        unix_now_us: 0,
        flows_started: 0,
        starved: Vec::new(),
        starved_batch: Vec::new(),
        splice: setup.splice,
        pipes: PipeBudget::new(setup.splice_pipes),
        last_splice_done: now,
        wheel: Wheel::new(now, TICK),
        due: Vec::new(),
        ticks: 0,
        accepts_paused: false,
        single_accepts_left: 0,
        decisions: 0,
    };
    w.clock();
    Ok(w)
}

/// The loop clock: the only place a worker reads the time (monotonic, and wall-clock
/// microseconds: seconds for decisions, microseconds for audit records).
#[expect(
    clippy::disallowed_methods,
    reason = "the worker's loop clock: read once per loop turn, nowhere else"
)]
fn loop_clock() -> (Instant, i64) {
    let unix_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    (Instant::now(), unix_us)
}

/// A clock read for the few measurements the loop clock is too coarse for (a sampled
/// decision takes well under a microsecond, a TLS open or seal a few).
#[expect(
    clippy::disallowed_methods,
    reason = "sampled timing: one in DECISION_SAMPLE decisions and one in CRYPTO_SAMPLE TLS opens and seals, two reads each"
)]
fn precise_now() -> Instant {
    Instant::now()
}

/// Nanoseconds from `t0` (a [`precise_now`]) to now.
fn precise_ns_since(t0: Instant) -> u64 {
    u64::try_from(precise_now().saturating_duration_since(t0).as_nanos()).unwrap_or(u64::MAX)
}

impl Worker {
    /// Run until the supervisor says stop (or a fatal error).
    fn run_to_end(mut self) -> Result<(), WorkerError> {
        let result = self.run_loop();
        if result.is_err() {
            // Ops may still be in flight: leak the whole worker (slots, buffer pool,
            // ring) rather than free memory under the kernel. The process is about to
            // exit.
            std::mem::forget(self);
        }
        result
    }

    /// Read the loop clock into `now`, `unix_now_us` and `unix_now`.
    fn clock(&mut self) {
        (self.now, self.unix_now_us) = loop_clock();
        self.unix_now = self.unix_now_us.div_euclid(1_000_000);
    }

    /// A new flow's id: the worker's index in the top 16 bits, a count below, so ids
    /// are unique in the process without any sharing between workers.
    fn next_flow_id(&mut self) -> u64 {
        self.flows_started += 1;
        (u64::try_from(self.id).unwrap_or(0xffff) << 48) | (self.flows_started & ((1 << 48) - 1))
    }

    fn push_err(&self, source: sys::PushError) -> WorkerError {
        WorkerError::Push {
            worker: self.id,
            source,
        }
    }

    fn arm_wake(&mut self) -> Result<(), WorkerError> {
        let ud = encode(Op::Wake, 0, 0);
        self.ring
            .read_u64(self.wake_fd.as_raw_fd(), &mut self.wake_buf, ud)
            .map_err(|e| self.push_err(e))?;
        self.wake_armed = true;
        self.aux_inflight += 1;
        Ok(())
    }

    /// Re-arm the wake-up read if it is not armed (and not being cancelled). A push that
    /// fails (the submission queue full, the ring busy) is counted and retried on the
    /// next loop turn: a transient error must not stop the worker (review 16.10).
    fn rearm_wake(&mut self) {
        if !self.wake_armed && !self.wake_cancelled && self.arm_wake().is_err() {
            self.own.inc(M::RearmFailures);
        }
    }

    /// One more of `m` for listener `index`.
    fn count(&mut self, index: usize, m: M) {
        if let Some(c) = self.counters(index) {
            c.inc(m);
        }
    }

    /// A new flow refused with `r` (of `decision`), by its reason.
    fn count_denied(
        &mut self,
        index: usize,
        r: decide::Refusal,
        decision: &zgate_table::facts::Decision,
    ) {
        if let Some(c) = self.counters(index) {
            c.add_label(M::Denied, r.denial_index(decision), 1);
        }
    }

    /// Listener `index`'s counters on this worker, if there is such a listener.
    fn counters(&mut self, index: usize) -> Option<&mut Counters> {
        self.listeners.get_mut(index).map(|l| &mut l.counters)
    }

    /// Copy the counters to the shared block the supervisor reads: at most once a
    /// millisecond while busy (`force`: now), so a worker doing tiny batches does not
    /// spend its time storing counters nobody reads that often.
    fn publish(&mut self, force: bool) {
        if !force && self.now.saturating_duration_since(self.published_at) < PUBLISH {
            return;
        }
        self.published_at = self.now;
        for l in &mut self.listeners {
            l.counters.set_gauge(M::Active, u64::from(l.active));
            l.counters
                .set_gauge(M::HandshakesInProgress, u64::from(l.handshaking));
        }
        self.own.set_gauge(
            M::BuffersInUse,
            u64::try_from(self.ring.pool.in_use()).unwrap_or(0),
        );
        self.own
            .set_gauge(M::PipesOpen, u64::from(self.pipes.open()));
        self.stats_out
            .publish(self.listeners.iter().map(|l| &l.counters), &self.own);
    }

    fn arm_accept(&mut self, index: usize) -> Result<(), WorkerError> {
        let Some(l) = self.listeners.get_mut(index) else {
            return Ok(());
        };
        let Some(fd) = l.fd.as_ref() else {
            return Ok(());
        };
        if l.armed || self.accepts_paused {
            return Ok(());
        }
        let ud = encode(Op::Accept, u32::try_from(index).unwrap_or(u32::MAX), 0);
        let multishot = self.single_accepts_left == 0;
        match self.ring.accept(fd.as_raw_fd(), ud, multishot) {
            Ok(()) => {
                self.single_accepts_left = self.single_accepts_left.saturating_sub(1);
                l.armed = true;
                self.aux_inflight += 1;
                Ok(())
            }
            Err(e) => Err(self.push_err(e)),
        }
    }

    fn run_loop(&mut self) -> Result<(), WorkerError> {
        self.arm_wake()?;
        for i in 0..self.listeners.len() {
            self.arm_accept(i)?;
        }
        self.refresh_tls();
        self.refresh_live();
        self.ring.submit().map_err(|source| WorkerError::Submit {
            worker: self.id,
            source,
        })?;
        self.stats_out
            .ready
            .store(true, std::sync::atomic::Ordering::Release);

        let mut cqes: Vec<Completion> = Vec::with_capacity(RING_ENTRIES as usize * 4);
        self.clock();
        let mut next_tick = self.now + TICK;
        // When the last batch of completions began to be handled: the next loop turn's
        // clock read times it (no extra clock read).
        let mut busy_since: Option<Instant> = None;
        // When the last batch of completions was handled: adaptive polling spins for
        // `spin` after it.
        let mut last_completion = self.now;
        // While a re-decision pass runs the worker does not sleep: each loop turn, from
        // top to top, is what the core's other flows wait (a slice, completions, submit).
        let mut sweeping_since: Option<Instant> = None;
        loop {
            self.clock();
            if let Some(top) = sweeping_since.take() {
                let us = u64::try_from(self.now.saturating_duration_since(top).as_micros())
                    .unwrap_or(u64::MAX);
                if us > self.own.value(M::LongestSweepTurn) {
                    self.own.set_gauge(M::LongestSweepTurn, us);
                }
            }
            if let Some(start) = busy_since.take() {
                // Spinning counts from the end of the handling, not its start: a batch
                // that took longer than `spin` must not put the worker to sleep.
                last_completion = self.now;
                let took = self.now.saturating_duration_since(start);
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                if us > self.own.value(M::LongestTurn) {
                    self.own.set_gauge(M::LongestTurn, us);
                }
                if took >= STALL {
                    self.own.inc(M::Stalls);
                }
            }
            self.rearm_wake();
            self.refresh_tls();
            let top = self.now;
            self.refresh_live();
            // Still under way after this turn's slice: the worker will not sleep, and
            // the turn is timed to the next top.
            if self.sweeps.active() {
                sweeping_since = Some(top);
            }
            let phase = self.published.phase();
            if phase != self.phase {
                self.enter_phase(phase);
            }
            if self.now >= next_tick {
                self.tick();
                next_tick = self.now + TICK;
            }
            if self.phase >= Phase::Draining && self.live == 0 && self.listeners_closed() {
                if self.aux_inflight == 0 {
                    break;
                }
                if self.wake_armed && !self.wake_cancelled {
                    let ud = encode(Op::WakeCancel, 0, 0);
                    if self.ring.cancel(encode(Op::Wake, 0, 0), ud).is_ok() {
                        self.wake_cancelled = true;
                        self.aux_inflight += 1;
                    }
                }
            }
            // Not while splices are running: the async worker carrying one out runs on
            // this core and would only wait for the spinning thread. One that has not
            // completed for `SPLICE_STALLED` is not running but sleeping (toward a
            // reader that does not read), and must not stop the spinning for every
            // other flow of the worker.
            let splices_running = self.ring.splicing()
                && self.now.saturating_duration_since(self.last_splice_done) < SPLICE_STALLED;
            // A sweep under way runs a slice per turn: no sleeping until it is done.
            let spinning = self.sweeps.active()
                || !splices_running
                    && match self.poll {
                        PollMode::Interrupt => false,
                        PollMode::Busy => true,
                        PollMode::Adaptive { spin } => {
                            self.now.saturating_duration_since(last_completion) < spin
                        }
                    };
            let waited = if spinning {
                self.ring.submit_if_needed()
            } else {
                // What a scrape reads of an idle worker is exact: it publishes before
                // it sleeps (a syscall's worth of wait dwarfs the stores).
                self.publish(true);
                // Said while it sleeps (`zgate_workers_sleeping`): a worker that never
                // does is spinning.
                self.stats_out.sleeping.store(true, Ordering::Relaxed);
                let r = self
                    .ring
                    .submit_and_wait(next_tick.saturating_duration_since(self.now));
                self.stats_out.sleeping.store(false, Ordering::Relaxed);
                r
            };
            waited.map_err(|source| WorkerError::Submit {
                worker: self.id,
                source,
            })?;
            self.ring.completions(&mut cqes);
            if cqes.is_empty() {
                if spinning {
                    std::hint::spin_loop();
                }
                continue;
            }
            self.clock();
            busy_since = Some(self.now);
            for c in cqes.drain(..) {
                self.complete(c);
            }
            self.feed_starved();
            self.publish(false);
        }
        self.publish(true);
        self.publish_latency();
        Ok(())
    }

    fn refresh_tls(&mut self) {
        let tg = self.published.tls_generation();
        if tg != self.tls_gen {
            // New handshakes use the new material; running sessions keep theirs.
            self.tls_gen = tg;
            for (i, l) in self.listeners.iter_mut().enumerate() {
                l.tls = self.published.listener_tls(i);
            }
        }
    }

    /// Publish spare buffers (more while receives are starved) and re-arm starved
    /// receives, at most one per published buffer: a re-armed recv that still finds the
    /// ring empty comes back here on its next `ENOBUFS`, so this never spins.
    fn feed_starved(&mut self) {
        let want = usize::from(sys::HOT_BUFFERS).saturating_add(self.starved.len());
        self.ring
            .pool
            .refill(u16::try_from(want).unwrap_or(u16::MAX));
        let n = self
            .starved
            .len()
            .min(usize::from(self.ring.pool.published()));
        if n == 0 {
            return;
        }
        // A scratch list, kept between turns: no allocation per turn.
        let mut batch = std::mem::take(&mut self.starved_batch);
        batch.extend(self.starved.drain(..n));
        for &(index, gen, dir) in &batch {
            let i = usize::try_from(index).unwrap_or(usize::MAX);
            if self.slots.get(i).is_some_and(|s| s.gen == gen) {
                self.with_conn(i, |conn, ctx| {
                    if conn.is_starved(dir) {
                        conn.recv(dir, ctx);
                    }
                });
                self.settle_tls(i);
            }
        }
        batch.clear();
        self.starved_batch = batch;
    }

    /// Hand a copy of every listener's histograms to the supervisor.
    fn publish_latency(&mut self) {
        if self.listeners.iter().all(|l| l.latency.is_none()) {
            return;
        }
        let copy: Vec<Latencies> = self
            .listeners
            .iter()
            .map(|l| l.latency.as_deref().cloned().unwrap_or_default())
            .collect();
        self.stats_out.latency.store(Some(Arc::new(copy)));
    }

    /// Whether this decision is one of the timed ones.
    fn sample_decision(&mut self) -> bool {
        self.decisions += 1;
        self.decisions % zgate_telemetry::latency::DECISION_SAMPLE == 0
            && self.listeners.iter().any(|l| l.latency.is_some())
    }

    /// Record a timed decision for listener `index`.
    fn record_decision(&mut self, index: usize, ns: u64) {
        if let Some(l) = self
            .listeners
            .get_mut(index)
            .and_then(|l| l.latency.as_deref_mut())
        {
            l.record(Measure::Decision, ns);
        }
    }

    fn listeners_closed(&self) -> bool {
        self.listeners.iter().all(|l| l.fd.is_none())
    }

    /// Cancel the armed accepts (their final CQE disarms them).
    fn cancel_accepts(&mut self) {
        for (i, l) in self.listeners.iter().enumerate() {
            if l.armed {
                let target = encode(Op::Accept, u32::try_from(i).unwrap_or(u32::MAX), 0);
                if self
                    .ring
                    .cancel(target, encode(Op::AcceptCancel, 0, 0))
                    .is_ok()
                {
                    self.aux_inflight += 1;
                }
            }
        }
    }

    /// An accept or an upstream socket failed with `errno`: when for want of
    /// descriptors, stop accepting until a tick finds two free.
    fn pause_accepts_if_out_of_fds(&mut self, errno: Option<i32>) {
        if matches!(errno, Some(libc::EMFILE | libc::ENFILE)) && !self.accepts_paused {
            self.accepts_paused = true;
            self.single_accepts_left = SINGLE_ACCEPTS_AFTER_PAUSE;
            self.cancel_accepts();
        }
    }

    /// A socket for a flow's upstream; out of descriptors, accepts pause too.
    fn upstream_socket(&mut self, addr: &std::net::SocketAddr) -> std::io::Result<TcpStream> {
        let s = sys::upstream_socket(addr);
        if let Err(e) = &s {
            self.pause_accepts_if_out_of_fds(e.raw_os_error());
        }
        s
    }

    /// Whether a flow's two descriptors (client and upstream) can be had now: two
    /// taken and given back at once.
    fn two_fds_free(&self) -> bool {
        let Some(fd) = self.listeners.iter().find_map(|l| l.fd.as_ref()) else {
            return false;
        };
        let (a, b) = (fd.try_clone(), fd.try_clone());
        a.is_ok() && b.is_ok()
    }

    fn enter_phase(&mut self, phase: Phase) {
        if self.phase == Phase::Running && phase >= Phase::Draining {
            // Stop accepting: cancel armed accepts (the listener closes on the final
            // CQE), close the others now.
            self.cancel_accepts();
            for l in &mut self.listeners {
                if !l.armed {
                    l.fd = None;
                }
            }
        }
        if phase == Phase::Stop {
            for i in 0..self.slots.len() {
                self.with_conn(i, |conn, ctx| {
                    conn.close_for(flow::Ended::Drain, CloseKind::Normal, ctx);
                });
            }
        }
        self.phase = phase;
    }

    fn tick(&mut self) {
        self.ticks += 1;
        if self.ticks % LATENCY_EVERY_TICKS == 0 {
            self.publish_latency();
        }
        self.pipes.retry();
        self.out_pool.decay();
        // An idle worker publishes on its tick (a busy one after its batches).
        self.publish(true);
        if self.accepts_paused && self.two_fds_free() {
            self.accepts_paused = false;
        }
        if self.phase == Phase::Running {
            for i in 0..self.listeners.len() {
                // A failed re-arm is retried next tick.
                let _ = self.arm_accept(i);
            }
        }
        let mut due = std::mem::take(&mut self.due);
        self.wheel.take_due(self.now, &mut due);
        for (index, gen, t) in due.drain(..) {
            let i = usize::try_from(index).unwrap_or(usize::MAX);
            let Some(slot) = self.slots.get_mut(i) else {
                continue;
            };
            // Live only while the slot holds the same flow and this is its entry.
            if slot.gen != gen || slot.check_tick != t {
                continue;
            }
            slot.check_tick = timers::NOT_SCHEDULED;
            self.check_deadlines(i);
            if self.slots.get(i).is_some_and(|s| s.gen == gen) {
                self.schedule(i);
            }
        }
        self.due = due;
    }

    /// Schedule the check of the flow in slot `i` for its earliest deadline, unless an
    /// entry at or before that tick is already live. Cheap: called after anything that
    /// may bring a deadline forward.
    fn schedule(&mut self, i: usize) {
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        let Some(conn) = slot.conn.as_ref() else {
            return;
        };
        if conn.state() == State::Closing {
            return;
        }
        let Some(l) = self.listeners.get(conn.listener()) else {
            return;
        };
        let cfg = &l.config;
        let mut at = conn.last_active() + cfg.idle_timeout;
        if let Some(m) = cfg.max_lifetime {
            at = at.min(conn.started() + m);
        }
        if let Some(e) = conn.expires_at() {
            let left = u64::try_from(e.saturating_sub(self.unix_now)).unwrap_or(0);
            at = at.min(self.now + Duration::from_secs(left));
        }
        if let (Flow::Tls(t), Some(tc)) = (conn, cfg.tls.as_ref()) {
            if t.awaits_handshake() {
                at = at
                    .min(t.started + tc.handshake_timeout)
                    .min(t.last_active + tc.handshake_timeout);
            }
        }
        let t = self.wheel.tick_for(at);
        if slot.check_tick <= t {
            return;
        }
        let gen = slot.gen;
        if let Some(slot) = self.slots.get_mut(i) {
            slot.check_tick = t;
        }
        self.wheel
            .insert(u32::try_from(i).unwrap_or(u32::MAX), gen, t);
    }

    /// The deadline checks of one flow (idle, lifetime, handshake, decision expiry):
    /// what every tick used to do for every flow.
    fn check_deadlines(&mut self, i: usize) {
        let now = self.now;
        let due = self
            .slots
            .get(i)
            .and_then(|s| s.conn.as_ref())
            .is_some_and(|c| {
                c.state() != State::Closing && c.expires_at().is_some_and(|e| self.unix_now >= e)
            });
        if due {
            // The decision's constraints ran out: decide again (it may still allow,
            // e.g. under a newer grant).
            self.redecide(i, decide::Trigger::Timer);
        }
        let mut expired = None;
        let mut handshake_timed_out = false;
        let mut upstream_handshake_timed_out = false;
        if let Some(Some(conn)) = self.slots.get(i).map(|s| s.conn.as_ref()) {
            if let Some(l) = self.listeners.get(conn.listener()) {
                let cfg = &l.config;
                if let (Flow::Tls(t), Some(tc)) = (conn, cfg.tls.as_ref()) {
                    handshake_timed_out = t.is_handshaking()
                        && now.saturating_duration_since(t.started) >= tc.handshake_timeout;
                    // The upstream handshake may take as long, counted from the
                    // last byte that moved.
                    upstream_handshake_timed_out = t.is_upstream_handshaking()
                        && now.saturating_duration_since(t.last_active) >= tc.handshake_timeout;
                }
                if handshake_timed_out || upstream_handshake_timed_out {
                } else if conn.state() == State::Open
                    && now.saturating_duration_since(conn.last_active()) >= cfg.idle_timeout
                {
                    expired = Some(true);
                } else if conn.state() != State::Closing
                    && cfg
                        .max_lifetime
                        .is_some_and(|m| now.saturating_duration_since(conn.started()) >= m)
                {
                    expired = Some(false);
                }
            }
        }
        let listener = self
            .slots
            .get(i)
            .and_then(|s| s.conn.as_ref())
            .map_or(usize::MAX, Flow::listener);
        match expired {
            Some(true) => {
                if let Some(c) = self.counters(listener) {
                    c.inc(M::IdleTimeouts);
                }
            }
            Some(false) => {
                if let Some(c) = self.counters(listener) {
                    c.inc(M::LifetimeExpiries);
                }
            }
            None if handshake_timed_out || upstream_handshake_timed_out => {
                let r = RejectReason::HandshakeTimeout;
                let (family, kind) = if handshake_timed_out {
                    (M::TlsFailures, AuditKind::TlsRefused)
                } else {
                    (M::UpstreamTlsFailures, AuditKind::UpstreamTlsFailed)
                };
                if let Some(c) = self.counters(listener) {
                    c.add_label(family, r.index(), 1);
                }
                self.with_conn(i, |conn, ctx| {
                    if let Flow::Tls(t) = conn {
                        t.refused = Some(Refused::tls(kind, r.clone()));
                    }
                    conn.close_for(flow::Ended::HandshakeTimeout, CloseKind::Normal, ctx);
                });
                return;
            }
            None => return,
        }
        let why = if expired == Some(true) {
            flow::Ended::IdleTimeout
        } else {
            flow::Ended::MaxLifetime
        };
        self.with_conn(i, |conn, ctx| conn.close_for(why, CloseKind::Normal, ctx));
    }

    /// Run `f` on the flow in slot `i` (if any), then free the slot if it is finished.
    fn with_conn(&mut self, i: usize, f: impl FnOnce(&mut Flow, &mut Ctx<'_>)) {
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let gen = slot.gen;
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        let Some(listener) = self.listeners.get_mut(conn.listener()) else {
            return;
        };
        let mut ctx = Ctx {
            ring: &mut self.ring,
            stats: &mut listener.counters,
            starved: &mut self.starved,
            splice: self.splice,
            pipes: &self.pipes,
            now: self.now,
            index: u32::try_from(i).unwrap_or(u32::MAX),
            gen,
            out_pool: &mut self.out_pool,
            connect_failed: None,
            latency: listener.latency.as_deref_mut(),
        };
        f(conn, &mut ctx);
        let flow = conn.audit_ref();
        let mut closed = None;
        let connect_failed = ctx.connect_failed.map(Refused::connect);
        let refused = match conn {
            Flow::Tls(t) => t.refused.take(),
            Flow::Plain(_) => None,
        };
        if let Flow::Tls(t) = conn {
            if t.holds_handshake_slot && !t.is_handshaking() {
                t.holds_handshake_slot = false;
                if let Some(l) = self.listeners.get_mut(t.listener) {
                    l.handshake_ended(t.source.ip());
                }
            }
        }
        if conn.finished() {
            let listener = conn.listener();
            let started = conn.started();
            let (ended, bytes, admitted) = conn.outcome();
            if admitted {
                closed = Some((ended, bytes, self.now.saturating_duration_since(started)));
            }
            if let Flow::Tls(t) = conn {
                t.return_buffers(&mut self.out_pool);
            }
            if let Some(l) = self
                .listeners
                .get_mut(listener)
                .and_then(|l| l.latency.as_deref_mut())
            {
                let ns = self.now.saturating_duration_since(started).as_nanos();
                l.record(Measure::FlowDuration, u64::try_from(ns).unwrap_or(u64::MAX));
            }
            // INVARIANT: finished() means nothing is in flight for this slot.
            slot.conn = None;
            self.index.remove(u32::try_from(i).unwrap_or(u32::MAX));
            slot.gen = next_gen(gen);
            self.free.push(u32::try_from(i).unwrap_or(u32::MAX));
            self.live = self.live.saturating_sub(1);
            if let Some(l) = self.listeners.get_mut(listener) {
                l.active = l.active.saturating_sub(1);
            }
        }
        for r in refused.into_iter().chain(connect_failed) {
            self.audit_refusal(flow, r);
        }
        if let Some((ended, bytes, lived)) = closed {
            self.audit.push_with(|| {
                let mut e = self.audit_event(AuditKind::Close, flow, ended.label());
                e.cause = Some(ended.label());
                e.bytes = Some(bytes);
                e.duration_us = Some(u64::try_from(lived.as_micros()).unwrap_or(u64::MAX));
                e
            });
        }
    }

    fn complete(&mut self, c: Completion) {
        let Some((op, index, gen)) = decode(c.user_data) else {
            return;
        };
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        if matches!(op, Op::SpliceIn(_) | Op::SpliceOut(_)) {
            self.ring.splice_done();
            self.last_splice_done = self.now;
        }
        match op {
            Op::Accept => self.on_accept(i, c),
            Op::AcceptCancel => self.aux_inflight = self.aux_inflight.saturating_sub(1),
            Op::WakeCancel => self.aux_inflight = self.aux_inflight.saturating_sub(1),
            Op::Wake => {
                self.wake_buf.returned();
                self.wake_armed = false;
                self.aux_inflight = self.aux_inflight.saturating_sub(1);
                self.rearm_wake();
            }
            Op::Connect
            | Op::ConnectTimeout
            | Op::Recv(_)
            | Op::Send(_)
            | Op::SpliceWait(_)
            | Op::SpliceIn(_)
            | Op::SpliceOut(_)
            | Op::Cancel => {
                if self.slots.get(i).is_some_and(|s| s.gen == gen) {
                    self.with_conn(i, |conn, ctx| conn.complete(op, c.result, c.buffer, ctx));
                    self.settle_tls(i);
                }
            }
        }
    }

    fn on_accept(&mut self, index: usize, c: Completion) {
        if !c.more {
            if let Some(l) = self.listeners.get_mut(index) {
                l.armed = false;
                self.aux_inflight = self.aux_inflight.saturating_sub(1);
                if self.phase >= Phase::Draining {
                    l.fd = None;
                }
            }
        }
        if c.result < 0 && c.result != -libc::ECANCELED {
            self.count(index, M::AcceptErrors);
            // Out of fds: accepts pause until a tick finds a flow's two free, and
            // `arm_accept` below does nothing meanwhile (no spinning).
            self.pause_accepts_if_out_of_fds(Some(-c.result));
        }
        // A re-arm that could not be queued is retried on the tick.
        if !c.more && self.phase < Phase::Draining && self.arm_accept(index).is_err() {
            self.own.inc(M::RearmFailures);
        }
        if c.result < 0 {
            return;
        }
        let Some(client) = c.into_accepted() else {
            return;
        };
        self.count(index, M::Accepted);
        if self.phase != Phase::Running {
            return; // dropping `client` closes it
        }
        let Some(l) = self.listeners.get(index) else {
            return;
        };
        if l.active >= l.limit {
            self.count(index, M::OverLimit);
            return;
        }
        let Ok(peer) = client.peer_addr() else {
            return; // already gone
        };
        if l.tls.is_some() && l.handshaking >= l.handshake_limit {
            self.count(index, M::HandshakesOverLimit);
            return;
        }
        if l.tls.is_some() && l.source_at_limit(peer.ip()) {
            self.count(index, M::HandshakesOverSourceLimit);
            return;
        }
        let tls = l.tls.clone();
        let flow = decide::FlowRef {
            id: self.next_flow_id(),
            listener: index,
            source: peer,
        };
        if let Some(tls) = tls {
            // TLS: decided once the handshake has produced the identity.
            self.start_tls_flow(flow, client, &tls.server);
            return;
        }
        let Some(l) = self.listeners.get(index) else {
            return;
        };
        let config = Arc::clone(&l.config);
        let timed = self.sample_decision().then(precise_now);
        let decision = self.decide(index, peer.ip());
        let verdict = permit(decision, self.unix_now, self.unix_now, None);
        if let Some(t0) = timed {
            self.record_decision(index, precise_ns_since(t0));
        }
        self.audit_decision(
            AuditKind::Decision,
            flow,
            &decision,
            verdict.map(|_| ()),
            None,
        );
        if let Some(s) = self.shadow.as_deref() {
            let facts = FlowFacts::plain(&config.name, peer.ip(), self.unix_now);
            let d = s.decide(&facts, &self.live_facts);
            if self.shadow_new(flow, verdict.is_ok(), Some(d), None, None) {
                self.count(index, M::ShadowDifferences);
            }
        }
        let permit = match verdict {
            Ok(p) => p,
            Err(r) => {
                self.count_denied(index, r, &decision);
                return;
            }
        };
        let admitted = Admitted {
            id: flow.id,
            listener: index,
            source: peer,
            started_unix: self.unix_now,
            permit,
        };
        self.start_flow(admitted, client, &config);
    }

    /// A free slot index (a new slot when none is free).
    fn alloc_slot(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        let i = u32::try_from(self.slots.len()).ok()?;
        self.slots.push(Slot {
            gen: 0,
            conn: None,
            check_tick: timers::NOT_SCHEDULED,
        });
        Some(i)
    }

    fn start_tls_flow(&mut self, flow: decide::FlowRef, client: TcpStream, tls: &ServerTls) {
        let (listener, source) = (flow.listener, flow.source);
        let postgres = self
            .listeners
            .get(listener)
            .is_some_and(|l| l.config.protocol == Protocol::Postgres);
        let Some(index) = self.alloc_slot() else {
            return;
        };
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let Some(l) = self.listeners.get_mut(listener) else {
            self.free.push(index);
            return;
        };
        let mut ctx = Ctx {
            ring: &mut self.ring,
            stats: &mut l.counters,
            starved: &mut self.starved,
            splice: self.splice,
            pipes: &self.pipes,
            now: self.now,
            index,
            gen: slot.gen,
            out_pool: &mut self.out_pool,
            connect_failed: None,
            latency: l.latency.as_deref_mut(),
        };
        match TlsConn::accept(flow, client, tls, postgres, &mut ctx) {
            Ok(mut conn) if !conn.finished() => {
                conn.holds_handshake_slot = conn.is_handshaking();
                if let Some(l) = self.listeners.get_mut(listener) {
                    l.active += 1;
                    if conn.holds_handshake_slot {
                        l.handshake_started(source.ip());
                    }
                }
                slot.conn = Some(Flow::Tls(Box::new(conn)));
                slot.check_tick = timers::NOT_SCHEDULED;
                self.live += 1;
                self.schedule(i);
            }
            Ok(mut conn) => {
                self.free.push(index);
                conn.return_buffers(&mut self.out_pool);
                if let Some(r) = conn.refused.take() {
                    self.audit_refusal(flow, r);
                }
            }
            Err(r) => {
                if let Some(c) = self.counters(listener) {
                    c.add_label(M::TlsFailures, r.index(), 1);
                }
                self.free.push(index);
                self.audit_refusal(flow, Refused::tls(AuditKind::TlsRefused, r));
            }
        }
    }

    fn start_flow(&mut self, admitted: Admitted, client: TcpStream, cfg: &ListenerConfig) {
        let listener = admitted.listener;
        let flow = decide::FlowRef {
            id: admitted.id,
            listener,
            source: admitted.source,
        };
        let upstream = match self.upstream_socket(&cfg.upstream) {
            Ok(u) => u,
            Err(e) => {
                self.count(listener, M::UpstreamConnectFailures);
                let why = conn::ConnectFailure::Socket(e.raw_os_error());
                self.audit_refusal(flow, Refused::connect(why));
                return;
            }
        };
        let Some(index) = self.alloc_slot() else {
            return;
        };
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        let Some(l) = self.listeners.get_mut(listener) else {
            self.free.push(index);
            return;
        };
        let mut ctx = Ctx {
            ring: &mut self.ring,
            stats: &mut l.counters,
            starved: &mut self.starved,
            splice: self.splice,
            pipes: &self.pipes,
            now: self.now,
            index,
            gen: slot.gen,
            out_pool: &mut self.out_pool,
            connect_failed: None,
            latency: l.latency.as_deref_mut(),
        };
        match Conn::connect(admitted, client, upstream, cfg, &mut ctx) {
            Ok(conn) => {
                slot.conn = Some(Flow::Plain(conn));
                slot.check_tick = timers::NOT_SCHEDULED;
                self.live += 1;
                if let Some(l) = self.listeners.get_mut(listener) {
                    l.active += 1;
                }
                self.schedule(i);
            }
            Err(_) => {
                // Nothing was queued; the sockets close here.
                if let Some(c) = self.counters(listener) {
                    c.inc(M::UpstreamConnectFailures);
                }
                self.free.push(index);
                let why = conn::ConnectFailure::Queue;
                self.audit_refusal(flow, Refused::connect(why));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// A worker's setup for these tests: one worker, interrupt mode, 64 buffers.
    fn test_setup(
        listeners: Vec<WorkerListener>,
        published: &Arc<Published>,
        stats: &Arc<WorkerStats>,
        wake: &std::os::fd::OwnedFd,
        latency: bool,
    ) -> WorkerSetup {
        WorkerSetup {
            id: 0,
            core: None,
            poll: PollMode::Interrupt,
            buffers: 64,
            splice: false,
            splice_pipes: 0,
            defer_taskrun: true,
            latency,
            audit: Arc::new(AuditQueue::new(16)),
            listeners,
            published: Arc::clone(published),
            stats: Arc::clone(stats),
            wake: wake.try_clone().unwrap(),
        }
    }

    /// Spin (bounded: 10 s) until `done`.
    #[expect(
        clippy::disallowed_methods,
        reason = "a test's deadline for a worker thread it waits on"
    )]
    fn wait(what: &str, done: &dyn Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::yield_now();
        }
    }

    /// Review 16.10: a wake-up read that could not be re-armed (a full submission
    /// queue) went up the stack as an error, the worker exited, and the supervisor
    /// stopped every worker. Now it is counted and retried on the next turn: the
    /// worker still answers the supervisor (here: drain) and exits cleanly.
    #[test]
    fn a_wake_up_read_that_cannot_be_re_armed_is_retried_not_fatal() {
        let published = Arc::new(Published::new(None, vec![]));
        let stats = Arc::new(WorkerStats::new(0));
        let wake = sys::eventfd().unwrap();
        let setup = test_setup(vec![], &published, &stats, &wake, true);
        let faults = Arc::new(AtomicU32::new(0));
        let f = Arc::clone(&faults);
        let worker = std::thread::spawn(move || {
            sys::push_faults::install(f);
            run(setup)
        });
        wait("the worker to start", &|| {
            stats.ready.load(Ordering::Acquire)
        });
        // The wake-up read completes; its re-arm fails once.
        faults.store(1, Ordering::SeqCst);
        sys::eventfd_wake(wake.as_raw_fd());
        wait("the failed re-arm", &|| {
            stats.own.snapshot().value(M::RearmFailures) == 1
        });
        // The worker retried: it still hears the supervisor.
        published.advance(Phase::Draining);
        sys::eventfd_wake(wake.as_raw_fd());
        assert!(worker.join().unwrap().is_ok());
        assert_eq!(faults.load(Ordering::SeqCst), 0);
    }

    /// Review 16.10, the accept's case: a single-shot accept (the mode after running
    /// out of descriptors) whose re-arm cannot be queued is counted and re-armed on the
    /// next tick, not fatal: the next client is accepted and the worker drains cleanly.
    #[test]
    fn an_accept_that_cannot_be_re_armed_is_retried_not_fatal() {
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = crate::config::Config::parse(&format!(
            "[workers]\ncount = 1\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nupstream='{}'\n",
            upstream.local_addr().unwrap()
        ))
        .unwrap();
        // The worker accepts on the socket it is given (the config's address is the
        // supervisor's to bind).
        let fd = sys::reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = std::net::TcpListener::from(fd.try_clone().unwrap())
            .local_addr()
            .unwrap();
        let published = Arc::new(Published::new(None, vec![None]));
        let stats = Arc::new(WorkerStats::new(1));
        let wake = sys::eventfd().unwrap();
        let listener = WorkerListener {
            config: Arc::new(config.listeners[0].clone()),
            fd,
            limit: 16,
            handshake_limit: u32::MAX,
            source_handshake_limit: u32::MAX,
        };
        let setup = test_setup(vec![listener], &published, &stats, &wake, false);
        let faults = Arc::new(AtomicU32::new(0));
        let f = Arc::clone(&faults);
        let worker = std::thread::spawn(move || {
            sys::push_faults::install(f);
            let mut w = start(setup)?;
            // One single-shot accept, as after a pause for descriptors.
            w.single_accepts_left = 1;
            w.run_to_end()
        });
        let accepted = || stats.listeners[0].snapshot().value(M::Accepted);
        wait("the worker to start", &|| {
            stats.ready.load(Ordering::Acquire)
        });
        // The single-shot accept completes; its re-arm fails once.
        faults.store(1, Ordering::SeqCst);
        let _first = std::net::TcpStream::connect(addr).unwrap();
        wait("the failed re-arm", &|| {
            stats.own.snapshot().value(M::RearmFailures) == 1
        });
        wait("the first accept", &|| accepted() == 1);
        // The tick re-armed it: the next client is accepted.
        let _second = std::net::TcpStream::connect(addr).unwrap();
        wait("the second accept", &|| accepted() == 2);
        published.advance(Phase::Draining);
        sys::eventfd_wake(wake.as_raw_fd());
        assert!(worker.join().unwrap().is_ok());
        assert_eq!(faults.load(Ordering::SeqCst), 0);
    }
}
