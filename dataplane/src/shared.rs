//! What the supervisor and the workers share: the published table, live facts and
//! shadow table, the run phase, and per-worker counters and answers.
//!
//! Workers only read [`Published`] (one Acquire load of `generation` per loop turn; the
//! table itself only when the generation moved) and only write their own
//! [`WorkerStats`], which sits on its own cache lines. The supervisor is the only writer
//! of [`Published`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use zgate_proto::{ImpactFlow, Touched};
use zgate_table::facts::LiveFacts;
use zgate_table::DecisionTable;

use crate::metrics::{Counters, SharedCounters, M};
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

/// Publications of live facts a worker can catch up with key by key; one that missed
/// more re-decides every flow.
const RECENT_FACTS: usize = 64;

/// A fact set as workers load it, with the keys recent publications touched.
#[derive(Debug, Default)]
pub struct FactsPublication {
    /// Bumped by every publication (0: the empty set at start).
    pub generation: u64,
    /// The facts `decide` reads.
    pub facts: Arc<LiveFacts>,
    /// Per recent publication, oldest first: its generation and the keys it touched
    /// (`None`: it replaced the whole set, so any flow may be affected).
    pub recent: VecDeque<(u64, Option<Arc<Touched>>)>,
}

/// Written by the supervisor, read by every worker.
pub struct Published {
    phase: AtomicU8,
    generation: AtomicU64,
    table: ArcSwapOption<DecisionTable>,
    tls_generation: AtomicU64,
    /// Per listener (by index): the TLS material new handshakes use.
    tls: Vec<ArcSwapOption<ListenerTls>>,
    facts_generation: AtomicU64,
    facts: ArcSwap<FactsPublication>,
    shadow_generation: AtomicU64,
    shadow: ArcSwapOption<DecisionTable>,
    /// The latest impact query (0: none yet); workers answer in [`WorkerStats::impact`].
    impact_request: AtomicU64,
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
            facts_generation: AtomicU64::new(0),
            facts: ArcSwap::from_pointee(FactsPublication::default()),
            shadow_generation: AtomicU64::new(0),
            shadow: ArcSwapOption::new(None),
            impact_request: AtomicU64::new(0),
        }
    }

    /// Bumped after every fact publication.
    pub fn facts_generation(&self) -> u64 {
        self.facts_generation.load(Ordering::Acquire)
    }

    /// The published facts.
    pub fn facts(&self) -> Arc<FactsPublication> {
        self.facts.load_full()
    }

    /// Publish a new fact set; `touched`: the keys of the flows the change can affect,
    /// or `None` when it replaced the whole set. Workers re-decide those flows at the
    /// top of their next loop turn.
    pub fn publish_facts(&self, facts: LiveFacts, touched: Option<Touched>) {
        let old = self.facts.load();
        let generation = old.generation + 1;
        let mut recent = old.recent.clone();
        if recent.len() == RECENT_FACTS {
            recent.pop_front();
        }
        recent.push_back((generation, touched.map(Arc::new)));
        self.facts.store(Arc::new(FactsPublication {
            generation,
            facts: Arc::new(facts),
            recent,
        }));
        self.facts_generation.store(generation, Ordering::Release);
    }

    /// Bumped after every shadow table publication (or withdrawal).
    pub fn shadow_generation(&self) -> u64 {
        self.shadow_generation.load(Ordering::Acquire)
    }

    /// The candidate table evaluated in shadow, if any.
    pub fn shadow(&self) -> Option<Arc<DecisionTable>> {
        self.shadow.load_full()
    }

    /// Evaluate `table` in shadow from now on (`None`: stop).
    pub fn publish_shadow(&self, table: Option<DecisionTable>) {
        self.shadow.store(table.map(Arc::new));
        self.shadow_generation.fetch_add(1, Ordering::Release);
    }

    /// The latest impact query's id.
    pub fn impact_request(&self) -> u64 {
        self.impact_request.load(Ordering::Acquire)
    }

    /// Ask every worker for the live flows the shadow table would close; they answer
    /// in [`WorkerStats::impact`] with this `id`.
    pub fn request_impact(&self, id: u64) {
        self.impact_request.store(id, Ordering::Release);
    }

    /// Bumped after every TLS material publication.
    pub fn tls_generation(&self) -> u64 {
        self.tls_generation.load(Ordering::Acquire)
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
        // Acquire, paired with the Release of `publish`: a worker that sees the new
        // generation also sees the table stored before it, on any CPU.
        self.generation.load(Ordering::Acquire)
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

/// What a worker publishes for the supervisor: its counters (one block per listener
/// and one of its own, `crate::metrics`), copied from its plain counters now and then,
/// and a few flags. Each worker writes only its own; the supervisor sums them.
/// Aligned so two workers never share a line.
#[repr(align(128))]
pub struct WorkerStats {
    /// Per listener, by index.
    pub listeners: Vec<SharedCounters>,
    /// The worker's own (worker-scope families).
    pub own: SharedCounters,
    /// Set once the worker's accepts are armed.
    pub ready: AtomicBool,
    /// Whether the worker is asleep in `io_uring_enter` now (stored around the wait).
    pub sleeping: AtomicBool,
    /// Table version the worker enforces (every live flow decided by it); 0 with no
    /// table.
    pub table_version: AtomicU64,
    /// Fact-set generation the worker enforces.
    pub facts_generation: AtomicU64,
    /// Shadow generation whose evaluation of every live flow is done.
    pub shadow_generation: AtomicU64,
    /// The worker's answer to the latest impact query it has answered.
    pub impact: ArcSwapOption<ImpactAnswer>,
    /// Its latency histograms per listener (a copy, handed over once a second).
    pub latency: ArcSwapOption<Vec<zgate_telemetry::latency::Latencies>>,
}

/// One worker's answer to an impact query.
#[derive(Debug, Clone)]
pub struct ImpactAnswer {
    /// The query ([`Published::request_impact`]).
    pub id: u64,
    /// The shadow table's version (0: none).
    pub shadow_version: u64,
    /// The live flows it would close (at most `ImpactReport::MAX_FLOWS`).
    pub flows: Vec<ImpactFlow>,
    /// How many in all.
    pub total: u64,
}

impl WorkerStats {
    /// Zeroed, for a worker with `listeners` listeners.
    pub fn new(listeners: usize) -> WorkerStats {
        WorkerStats {
            listeners: (0..listeners).map(|_| SharedCounters::default()).collect(),
            own: SharedCounters::default(),
            ready: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            table_version: AtomicU64::new(0),
            facts_generation: AtomicU64::new(0),
            shadow_generation: AtomicU64::new(0),
            impact: ArcSwapOption::new(None),
            latency: ArcSwapOption::new(None),
        }
    }

    /// Store the worker's counters (the owning worker only).
    pub fn publish<'a>(&self, listeners: impl Iterator<Item = &'a Counters>, own: &Counters) {
        for (shared, c) in self.listeners.iter().zip(listeners) {
            shared.publish(c);
        }
        self.own.publish(own);
    }
}

/// Every worker's counters, read at one moment and summed as `/metrics` and the
/// operator's `status` want them.
#[derive(Debug, Clone, Default)]
pub struct StatsView {
    /// Per listener, summed over workers.
    pub listeners: Vec<Counters>,
    /// Per worker: its own counters, and its listener counters summed over listeners.
    pub workers: Vec<(Counters, Counters)>,
    /// Everything summed (listener families over listeners and workers; worker
    /// families over workers).
    pub total: Counters,
}

impl StatsView {
    /// Read `workers`' published counters.
    pub fn read<'a>(workers: impl Iterator<Item = &'a WorkerStats>, listeners: usize) -> StatsView {
        let (f, o) = (M::FAMILIES, M::OFFSETS);
        let mut v = StatsView {
            listeners: vec![Counters::default(); listeners],
            ..StatsView::default()
        };
        for w in workers {
            let own = w.own.snapshot();
            let mut by_listener = Counters::default();
            for (sum, shared) in v.listeners.iter_mut().zip(&w.listeners) {
                let c = shared.snapshot();
                sum.merge(f, o, &c);
                by_listener.merge(f, o, &c);
            }
            v.total.merge(f, o, &own);
            v.total.merge(f, o, &by_listener);
            v.workers.push((own, by_listener));
        }
        v
    }
}
