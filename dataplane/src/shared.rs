//! What the supervisor and the workers share: the published table, the run phase, and
//! per-worker counters.
//!
//! Workers only read [`Published`] (one relaxed load of `generation` per loop turn; the
//! table itself only when the generation moved) and only write their own
//! [`WorkerStats`], which sits on its own cache lines. The supervisor is the only writer
//! of [`Published`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use zgate_table::DecisionTable;
use zgate_tls::REJECT_LABELS;

use crate::postgres::REFUSAL_KINDS;
use crate::tls::ListenerTls;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Accepting and forwarding.
    Running = 0,
    /// SIGTERM/SIGINT seen: listeners closed, live flows run on.
    Draining = 1,
    /// Drain timeout passed: close every flow and exit.
    Stop = 2,
}

impl Phase {
    /// Lowercase, for the operator socket's `status`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Stop => "stopping",
        }
    }
}

/// Written by the supervisor, read by every worker.
pub struct Published {
    phase: AtomicU8,
    generation: AtomicU64,
    table: ArcSwapOption<DecisionTable>,
    tls_generation: AtomicU64,
    /// Per listener (by index): the TLS material new handshakes use.
    tls: Vec<ArcSwapOption<ListenerTls>>,
}

impl Published {
    /// A published block with `table` published (`None`: deny every flow) and each
    /// listener's TLS material (`None`: plain listener).
    pub fn new(table: Option<DecisionTable>, tls: Vec<Option<ListenerTls>>) -> Published {
        Published {
            phase: AtomicU8::new(Phase::Running as u8),
            generation: AtomicU64::new(1),
            table: ArcSwapOption::new(table.map(Arc::new)),
            tls_generation: AtomicU64::new(1),
            tls: tls
                .into_iter()
                .map(|t| ArcSwapOption::new(t.map(Arc::new)))
                .collect(),
        }
    }

    /// Bumped after every TLS material publication.
    pub fn tls_generation(&self) -> u64 {
        self.tls_generation.load(Ordering::Relaxed)
    }

    /// Listener `i`'s current TLS material (`None`: plain, or no such listener).
    pub fn listener_tls(&self, i: usize) -> Option<ListenerTls> {
        self.tls
            .get(i)
            .and_then(|t| t.load_full())
            .map(|t| (*t).clone())
    }

    /// Publish new TLS material for listener `i`. Handshakes that start after workers
    /// see it use it; sessions already running keep the configuration they began with.
    pub fn publish_tls(&self, i: usize, tls: ListenerTls) {
        if let Some(slot) = self.tls.get(i) {
            slot.store(Some(Arc::new(tls)));
            self.tls_generation.fetch_add(1, Ordering::Release);
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Stop,
        }
    }

    /// Move to `phase` (never backwards).
    pub fn advance(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }

    /// Bumped after every table publication.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The published table.
    pub fn table(&self) -> Option<Arc<DecisionTable>> {
        self.table.load_full()
    }

    /// Publish a new table. Workers pick it up at the top of their next loop turn; flows
    /// accepted after that are decided by it.
    pub fn publish(&self, table: DecisionTable) {
        self.table.store(Some(Arc::new(table)));
        // The swap above is itself synchronised; the generation only tells workers
        // that there is something new to load.
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// One worker's counters. Each worker writes only its own (plain stores of values it
/// keeps locally), the supervisor sums them. Aligned so two workers never share a line.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerStats {
    /// Connections accepted (allowed or not).
    pub accepted: AtomicU64,
    /// Connections closed at once because the table denied them.
    pub denied: AtomicU64,
    /// Connections closed at once because the listener was at `max_connections`.
    pub over_limit: AtomicU64,
    /// TLS connections closed at once because the listener had `max_handshakes` in
    /// progress.
    pub handshakes_over_limit: AtomicU64,
    /// TLS connections closed at once because their source had
    /// `max_handshakes_per_source` in progress.
    pub handshakes_over_source_limit: AtomicU64,
    /// TLS handshakes (and PostgreSQL preambles) in progress now.
    pub handshakes_in_progress: AtomicU64,
    /// Loop turns whose completion handling took at least the stall threshold.
    pub stalls: AtomicU64,
    /// Longest completion handling of one loop turn so far, µs.
    pub longest_turn_us: AtomicU64,
    /// Upstream connects that failed (refused, unreachable, timed out).
    pub upstream_connect_failures: AtomicU64,
    /// Of those, the ones that timed out.
    pub upstream_connect_timeouts: AtomicU64,
    /// Flows currently open (connecting or forwarding).
    pub active: AtomicU64,
    /// Bytes read from clients and sent upstream.
    pub bytes_client_to_upstream: AtomicU64,
    /// Bytes read from upstreams and sent to clients.
    pub bytes_upstream_to_client: AtomicU64,
    /// Flows closed by the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Flows closed by max_lifetime.
    pub lifetime_expiries: AtomicU64,
    /// Flows ended by a reset or socket error on either side (propagated as RST).
    pub resets: AtomicU64,
    /// Accept errors (e.g. out of file descriptors).
    pub accept_errors: AtomicU64,
    /// Re-arms of the accept or the wake-up read that could not be queued (a full
    /// submission queue, a busy ring) and were retried later.
    pub rearm_failures: AtomicU64,
    /// Live flows closed because a re-decision (new table, or expired constraints)
    /// no longer allows them.
    pub closed_by_policy: AtomicU64,
    /// Receives that found the buffer pool empty (`ENOBUFS`) and waited for a buffer.
    pub recv_starved: AtomicU64,
    /// Pipes opened for a bulk direction to splice through (one per busy spell).
    pub pipes_opened: AtomicU64,
    /// Pipes open now.
    pub pipes_open: AtomicU64,
    /// Bulk rounds that stayed on buffer receives for want of a pipe: the worker held
    /// its `[workers] splice_pipes` already, or the kernel refused one.
    pub pipes_refused: AtomicU64,
    /// Pool buffers held by flows now (data received and not yet fully sent).
    pub buffers_in_use: AtomicU64,
    /// TLS handshakes completed (before the decision).
    pub tls_handshakes: AtomicU64,
    /// Of those, the ones that resumed a session (no certificate verification ran).
    pub tls_resumed: AtomicU64,
    /// TLS flows aborted because a side ended its stream without close_notify (a bare
    /// FIN, possibly in the middle of a record): cut, never passed on as a clean end.
    pub tls_truncations: AtomicU64,
    /// TLS flows refused before the decision, per [`zgate_tls::RejectReason::index`].
    pub tls_failures: [AtomicU64; REJECT_LABELS],
    /// PostgreSQL clients refused before TLS, per [`crate::postgres::Refusal::index`].
    pub postgres_refused: [AtomicU64; REFUSAL_KINDS],
    /// Upstream TLS handshakes completed (`[listener.upstream_tls]`).
    pub upstream_tls_handshakes: AtomicU64,
    /// Upstream TLS sessions that failed, per [`zgate_tls::RejectReason::index`].
    pub upstream_tls_failures: [AtomicU64; REJECT_LABELS],
    /// Set once the worker's accepts are armed.
    pub ready: AtomicBool,
    /// Whether the worker is asleep in `io_uring_enter` now (stored around the wait).
    pub sleeping: AtomicBool,
    /// Table version the worker uses; 0 with no table.
    pub table_version: AtomicU64,
}

/// A plain snapshot of [`WorkerStats`] (or a sum of several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`WorkerStats::accepted`].
    pub accepted: u64,
    /// See [`WorkerStats::denied`].
    pub denied: u64,
    /// See [`WorkerStats::over_limit`].
    pub over_limit: u64,
    /// See [`WorkerStats::handshakes_over_limit`].
    pub handshakes_over_limit: u64,
    /// See [`WorkerStats::handshakes_over_source_limit`].
    pub handshakes_over_source_limit: u64,
    /// See [`WorkerStats::handshakes_in_progress`].
    pub handshakes_in_progress: u64,
    /// See [`WorkerStats::stalls`].
    pub stalls: u64,
    /// See [`WorkerStats::longest_turn_us`] (the maximum over workers when summed).
    pub longest_turn_us: u64,
    /// See [`WorkerStats::upstream_connect_failures`].
    pub upstream_connect_failures: u64,
    /// See [`WorkerStats::upstream_connect_timeouts`].
    pub upstream_connect_timeouts: u64,
    /// See [`WorkerStats::active`].
    pub active: u64,
    /// See [`WorkerStats::bytes_client_to_upstream`].
    pub bytes_client_to_upstream: u64,
    /// See [`WorkerStats::bytes_upstream_to_client`].
    pub bytes_upstream_to_client: u64,
    /// See [`WorkerStats::idle_timeouts`].
    pub idle_timeouts: u64,
    /// See [`WorkerStats::lifetime_expiries`].
    pub lifetime_expiries: u64,
    /// See [`WorkerStats::resets`].
    pub resets: u64,
    /// See [`WorkerStats::accept_errors`].
    pub accept_errors: u64,
    /// See [`WorkerStats::rearm_failures`].
    pub rearm_failures: u64,
    /// See [`WorkerStats::closed_by_policy`].
    pub closed_by_policy: u64,
    /// See [`WorkerStats::recv_starved`].
    pub recv_starved: u64,
    /// See [`WorkerStats::pipes_opened`].
    pub pipes_opened: u64,
    /// See [`WorkerStats::pipes_open`].
    pub pipes_open: u64,
    /// See [`WorkerStats::pipes_refused`].
    pub pipes_refused: u64,
    /// See [`WorkerStats::buffers_in_use`].
    pub buffers_in_use: u64,
    /// See [`WorkerStats::tls_handshakes`].
    pub tls_handshakes: u64,
    /// See [`WorkerStats::tls_resumed`].
    pub tls_resumed: u64,
    /// See [`WorkerStats::tls_truncations`].
    pub tls_truncations: u64,
    /// See [`WorkerStats::tls_failures`].
    pub tls_failures: [u64; REJECT_LABELS],
    /// See [`WorkerStats::postgres_refused`].
    pub postgres_refused: [u64; REFUSAL_KINDS],
    /// See [`WorkerStats::upstream_tls_handshakes`].
    pub upstream_tls_handshakes: u64,
    /// See [`WorkerStats::upstream_tls_failures`].
    pub upstream_tls_failures: [u64; REJECT_LABELS],
}

impl WorkerStats {
    /// Store `s` (called by the owning worker only).
    pub fn publish(&self, s: &StatsSnapshot) {
        let r = Ordering::Relaxed;
        self.accepted.store(s.accepted, r);
        self.denied.store(s.denied, r);
        self.over_limit.store(s.over_limit, r);
        self.handshakes_over_limit.store(s.handshakes_over_limit, r);
        self.handshakes_over_source_limit
            .store(s.handshakes_over_source_limit, r);
        self.handshakes_in_progress
            .store(s.handshakes_in_progress, r);
        self.stalls.store(s.stalls, r);
        self.longest_turn_us.store(s.longest_turn_us, r);
        self.upstream_connect_failures
            .store(s.upstream_connect_failures, r);
        self.upstream_connect_timeouts
            .store(s.upstream_connect_timeouts, r);
        self.active.store(s.active, r);
        self.bytes_client_to_upstream
            .store(s.bytes_client_to_upstream, r);
        self.bytes_upstream_to_client
            .store(s.bytes_upstream_to_client, r);
        self.idle_timeouts.store(s.idle_timeouts, r);
        self.lifetime_expiries.store(s.lifetime_expiries, r);
        self.resets.store(s.resets, r);
        self.accept_errors.store(s.accept_errors, r);
        self.rearm_failures.store(s.rearm_failures, r);
        self.closed_by_policy.store(s.closed_by_policy, r);
        self.recv_starved.store(s.recv_starved, r);
        self.pipes_opened.store(s.pipes_opened, r);
        self.pipes_open.store(s.pipes_open, r);
        self.pipes_refused.store(s.pipes_refused, r);
        self.buffers_in_use.store(s.buffers_in_use, r);
        self.tls_handshakes.store(s.tls_handshakes, r);
        self.tls_resumed.store(s.tls_resumed, r);
        self.tls_truncations.store(s.tls_truncations, r);
        for (a, v) in self.tls_failures.iter().zip(s.tls_failures) {
            a.store(v, r);
        }
        for (a, v) in self.postgres_refused.iter().zip(s.postgres_refused) {
            a.store(v, r);
        }
        self.upstream_tls_handshakes
            .store(s.upstream_tls_handshakes, r);
        for (a, v) in self
            .upstream_tls_failures
            .iter()
            .zip(s.upstream_tls_failures)
        {
            a.store(v, r);
        }
    }

    /// Read the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = Ordering::Relaxed;
        StatsSnapshot {
            accepted: self.accepted.load(r),
            denied: self.denied.load(r),
            over_limit: self.over_limit.load(r),
            handshakes_over_limit: self.handshakes_over_limit.load(r),
            handshakes_over_source_limit: self.handshakes_over_source_limit.load(r),
            handshakes_in_progress: self.handshakes_in_progress.load(r),
            stalls: self.stalls.load(r),
            longest_turn_us: self.longest_turn_us.load(r),
            upstream_connect_failures: self.upstream_connect_failures.load(r),
            upstream_connect_timeouts: self.upstream_connect_timeouts.load(r),
            active: self.active.load(r),
            bytes_client_to_upstream: self.bytes_client_to_upstream.load(r),
            bytes_upstream_to_client: self.bytes_upstream_to_client.load(r),
            idle_timeouts: self.idle_timeouts.load(r),
            lifetime_expiries: self.lifetime_expiries.load(r),
            resets: self.resets.load(r),
            accept_errors: self.accept_errors.load(r),
            rearm_failures: self.rearm_failures.load(r),
            closed_by_policy: self.closed_by_policy.load(r),
            recv_starved: self.recv_starved.load(r),
            pipes_opened: self.pipes_opened.load(r),
            pipes_open: self.pipes_open.load(r),
            pipes_refused: self.pipes_refused.load(r),
            buffers_in_use: self.buffers_in_use.load(r),
            tls_handshakes: self.tls_handshakes.load(r),
            tls_resumed: self.tls_resumed.load(r),
            tls_truncations: self.tls_truncations.load(r),
            tls_failures: std::array::from_fn(|i| {
                self.tls_failures.get(i).map_or(0, |a| a.load(r))
            }),
            postgres_refused: std::array::from_fn(|i| {
                self.postgres_refused.get(i).map_or(0, |a| a.load(r))
            }),
            upstream_tls_handshakes: self.upstream_tls_handshakes.load(r),
            upstream_tls_failures: std::array::from_fn(|i| {
                self.upstream_tls_failures.get(i).map_or(0, |a| a.load(r))
            }),
        }
    }
}

impl StatsSnapshot {
    /// Field-wise sum (saturating).
    pub fn add(&mut self, o: &StatsSnapshot) {
        self.accepted = self.accepted.saturating_add(o.accepted);
        self.denied = self.denied.saturating_add(o.denied);
        self.over_limit = self.over_limit.saturating_add(o.over_limit);
        self.handshakes_over_limit = self
            .handshakes_over_limit
            .saturating_add(o.handshakes_over_limit);
        self.handshakes_over_source_limit = self
            .handshakes_over_source_limit
            .saturating_add(o.handshakes_over_source_limit);
        self.handshakes_in_progress = self
            .handshakes_in_progress
            .saturating_add(o.handshakes_in_progress);
        self.stalls = self.stalls.saturating_add(o.stalls);
        self.longest_turn_us = self.longest_turn_us.max(o.longest_turn_us);
        self.upstream_connect_failures = self
            .upstream_connect_failures
            .saturating_add(o.upstream_connect_failures);
        self.upstream_connect_timeouts = self
            .upstream_connect_timeouts
            .saturating_add(o.upstream_connect_timeouts);
        self.active = self.active.saturating_add(o.active);
        self.bytes_client_to_upstream = self
            .bytes_client_to_upstream
            .saturating_add(o.bytes_client_to_upstream);
        self.bytes_upstream_to_client = self
            .bytes_upstream_to_client
            .saturating_add(o.bytes_upstream_to_client);
        self.idle_timeouts = self.idle_timeouts.saturating_add(o.idle_timeouts);
        self.lifetime_expiries = self.lifetime_expiries.saturating_add(o.lifetime_expiries);
        self.resets = self.resets.saturating_add(o.resets);
        self.accept_errors = self.accept_errors.saturating_add(o.accept_errors);
        self.rearm_failures = self.rearm_failures.saturating_add(o.rearm_failures);
        self.closed_by_policy = self.closed_by_policy.saturating_add(o.closed_by_policy);
        self.recv_starved = self.recv_starved.saturating_add(o.recv_starved);
        self.pipes_opened = self.pipes_opened.saturating_add(o.pipes_opened);
        self.pipes_open = self.pipes_open.saturating_add(o.pipes_open);
        self.pipes_refused = self.pipes_refused.saturating_add(o.pipes_refused);
        self.buffers_in_use = self.buffers_in_use.saturating_add(o.buffers_in_use);
        self.tls_handshakes = self.tls_handshakes.saturating_add(o.tls_handshakes);
        self.tls_resumed = self.tls_resumed.saturating_add(o.tls_resumed);
        self.tls_truncations = self.tls_truncations.saturating_add(o.tls_truncations);
        for (a, b) in self.tls_failures.iter_mut().zip(o.tls_failures) {
            *a = a.saturating_add(b);
        }
        for (a, b) in self.postgres_refused.iter_mut().zip(o.postgres_refused) {
            *a = a.saturating_add(b);
        }
        self.upstream_tls_handshakes = self
            .upstream_tls_handshakes
            .saturating_add(o.upstream_tls_handshakes);
        for (a, b) in self
            .upstream_tls_failures
            .iter_mut()
            .zip(o.upstream_tls_failures)
        {
            *a = a.saturating_add(b);
        }
    }
}
