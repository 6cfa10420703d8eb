//! Live verification (DESIGN "Live"): what a worker does when the supervisor publishes
//! a new table, a new fact set or a shadow table, or asks for the impact of one.
//!
//! - A fact delta names keys (principals, fingerprints, devices): only the flows under
//!   those keys in the worker's [`FlowIndex`] are decided again, at once.
//! - A new table (or a whole new fact set) may affect any flow: every live flow is
//!   decided again, in slices of at most [`SLICE`] of loop time, one slice per turn,
//!   so no turn stalls however many flows there are. New flows use the new table at
//!   once.
//! - A shadow table is evaluated beside the enforced one: on new flows as they are
//!   decided, and on every live flow (in slices) when it arrives. Differences are
//!   counted and audited, never enforced. An impact query walks the live flows (in
//!   slices) and answers with those the shadow table would close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zgate_proto::{Cause, ImpactFlow, ImpactReport, Touched};
use zgate_table::facts::{Decision, FlowFacts};
use zgate_table::DecisionTable;
use zgate_telemetry::{AuditKind, RuleRef, Verdict};

use super::decide::{permit, FlowRef, Trigger};
use super::flow::Flow;
use super::index::Keys;
use super::Worker;
use crate::metrics::{Count, M};
use crate::shared::ImpactAnswer;

/// Most loop time one turn spends on re-decisions of a sweep.
const SLICE: Duration = Duration::from_micros(200);
/// Most loop time one turn spends on the flows a fact delta named (they are closed
/// there, a reset each: a revocation is worth a longer turn than a policy sweep, and
/// no turn takes more than the 500 µs the design allows a swap).
const TOUCHED_SLICE: Duration = Duration::from_micros(450);
/// Slots between two looks at the clock during a slice (a re-decision is well under
/// a microsecond).
const CLOCK_EVERY: usize = 8;

/// A pass over every slot, resumable across loop turns.
#[derive(Debug, Default)]
pub(super) struct Sweeps {
    /// Flows a fact delta named, to decide again first (slot, and the kind of fact).
    touched: std::collections::VecDeque<(u32, Cause)>,
    /// Deciding every live flow again with the enforced table and facts.
    enforce: Option<(usize, Trigger)>,
    /// When the enforcing pass under way started.
    enforce_since: Option<Instant>,
    /// Evaluating every live flow with the shadow table.
    shadow: Option<usize>,
    /// Answering an impact query: cursor, id, flows found, how many in all.
    impact: Option<(usize, u64, Vec<ImpactFlow>, u64)>,
}

impl Sweeps {
    /// Whether any pass is under way (the worker must not sleep).
    pub(super) fn active(&self) -> bool {
        !self.touched.is_empty()
            || self.enforce.is_some()
            || self.shadow.is_some()
            || self.impact.is_some()
    }
}

/// The monotonic clock, for slice budgets only.
#[expect(
    clippy::disallowed_methods,
    reason = "bounds a re-decision slice; read every CLOCK_EVERY slots, not per flow"
)]
fn monotonic() -> Instant {
    Instant::now()
}

impl Worker {
    /// Top of the loop: pick up whatever the supervisor published since the last turn,
    /// then run one slice of any sweep under way.
    pub(super) fn refresh_live(&mut self) {
        let g = self.published.generation();
        if g != self.table_gen {
            self.table_gen = g;
            self.table = self.published.table();
            // Live flows were decided by the old table: decide them again, in slices.
            self.start_enforce(Trigger::Table);
        }
        if self.published.facts_generation() != self.facts_gen {
            self.take_facts();
        }
        let sg = self.published.shadow_generation();
        if sg != self.shadow_gen {
            self.shadow_gen = sg;
            self.shadow = self.published.shadow();
            self.sweeps.shadow = self.shadow.is_some().then_some(0);
            // An impact query under way was about the old shadow table.
            if let Some((c, ..)) = self.sweeps.impact.as_mut() {
                *c = 0;
            }
        }
        let request = self.published.impact_request();
        if request != self.impact_answered && self.sweeps.impact.is_none() {
            self.impact_answered = request;
            self.sweeps.impact = Some((0, request, Vec::new(), 0));
        }
        if self.sweeps.active() {
            self.sweep_slice();
        }
    }

    /// Decide every live flow again, from the first slot (a pass under way restarts:
    /// what it decided was decided by what is now old).
    fn start_enforce(&mut self, trigger: Trigger) {
        self.sweeps.enforce = Some((0, trigger));
        self.sweeps.enforce_since = Some(monotonic());
    }

    /// Load the published facts and decide again the flows the publications since the
    /// last load touched (all of them, in slices, when one replaced the whole set or
    /// this worker fell too far behind).
    fn take_facts(&mut self) {
        let p = self.published.facts();
        let seen = self.facts_gen;
        self.live_facts = Arc::clone(&p.facts);
        self.facts_gen = p.generation;
        let caught_up = p.recent.front().is_some_and(|(g, _)| *g <= seen + 1);
        let mut whole = !caught_up;
        for (_, touched) in p.recent.iter().filter(|(g, _)| *g > seen) {
            match touched {
                None => whole = true,
                Some(t) if !whole => self.redecide_touched(t),
                Some(_) => {}
            }
        }
        if whole {
            self.start_enforce(Trigger::FactSet);
        } else {
            self.stats_out
                .facts_generation
                .store(self.facts_gen, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Queue the flows under the keys `t` names to be decided again, ahead of any
    /// other pass (they are the ones a revocation is about). They run in this turn's
    /// slice; a delta naming more flows than a slice holds goes on next turn, so a
    /// revocation of thousands of flows never stalls the core.
    fn redecide_touched(&mut self, t: &Touched) {
        let mut slots = std::mem::take(&mut self.touched_slots);
        let queue = |slots: &mut Vec<u32>, cause: Cause, q: &mut Sweeps| {
            q.touched.extend(slots.drain(..).map(|s| (s, cause)));
        };
        for (p, cause) in &t.principals {
            self.index.by_principal(p, &mut slots);
            queue(&mut slots, *cause, &mut self.sweeps);
        }
        for (f, cause) in &t.fingerprints {
            self.index.by_fingerprint(f, &mut slots);
            queue(&mut slots, *cause, &mut self.sweeps);
        }
        for (d, cause) in &t.devices {
            self.index.by_device(d, &mut slots);
            queue(&mut slots, *cause, &mut self.sweeps);
        }
        self.touched_slots = slots;
    }

    /// A stretch of loop time spent re-deciding: keep the longest.
    fn note_slice(&mut self, start: Instant) {
        let us = u64::try_from(monotonic().saturating_duration_since(start).as_micros())
            .unwrap_or(u64::MAX);
        if us > self.own.value(M::LongestSlice) {
            self.own.set_gauge(M::LongestSlice, us);
        }
    }

    /// One slice of each sweep under way.
    fn sweep_slice(&mut self) {
        let start = monotonic();
        let n = self.slots.len();
        let mut done = 0usize;
        // The flows a fact delta named first.
        while let Some((slot, cause)) = self.sweeps.touched.pop_front() {
            let i = slot as usize;
            self.redecide(i, Trigger::Fact(cause));
            if self.shadow.is_some() {
                self.shadow_live(i);
            }
            done += 1;
            if done % 8 == 0 && monotonic().saturating_duration_since(start) >= TOUCHED_SLICE {
                self.note_slice(start);
                return;
            }
        }
        loop {
            let e = self.sweeps.enforce.map(|(c, _)| c).unwrap_or(n);
            let s = self.sweeps.shadow.unwrap_or(n);
            let q = self.sweeps.impact.as_ref().map_or(n, |(c, ..)| *c);
            if e >= n && s >= n && q >= n {
                break;
            }
            if e < n {
                if let Some((c, trigger)) = self.sweeps.enforce.as_mut() {
                    *c += 1;
                    let trigger = *trigger;
                    self.redecide(e, trigger);
                }
            }
            if s < n {
                if let Some(c) = self.sweeps.shadow.as_mut() {
                    *c += 1;
                }
                self.shadow_live(s);
            }
            if q < n {
                if let Some((c, ..)) = self.sweeps.impact.as_mut() {
                    *c += 1;
                }
                self.impact_of(q);
            }
            done += 1;
            if done % CLOCK_EVERY == 0 && monotonic().saturating_duration_since(start) >= SLICE {
                break;
            }
        }
        let end = monotonic();
        let us =
            u64::try_from(end.saturating_duration_since(start).as_micros()).unwrap_or(u64::MAX);
        if us > self.own.value(M::LongestSlice) {
            self.own.set_gauge(M::LongestSlice, us);
        }
        let left = self.sweeps.enforce.map_or(0, |(c, _)| n.saturating_sub(c));
        self.own.set_gauge(M::RedecisionsPending, left as u64);
        self.finish_sweeps(n);
    }

    /// Passes that reached the last slot are done: say so.
    fn finish_sweeps(&mut self, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.sweeps.enforce.is_some_and(|(c, _)| c >= n) {
            self.sweeps.enforce = None;
            let v = self.table.as_ref().map_or(0, |t| t.version());
            self.stats_out.table_version.store(v, Relaxed);
            self.own.set_gauge(M::EnforcedTable, v);
            if let Some(since) = self.sweeps.enforce_since.take() {
                let took = monotonic().saturating_duration_since(since);
                self.own.set_gauge(
                    M::LastSweep,
                    u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                );
            }
            self.stats_out
                .facts_generation
                .store(self.facts_gen, Relaxed);
        }
        if self.sweeps.shadow.is_some_and(|c| c >= n) {
            self.sweeps.shadow = None;
            self.stats_out
                .shadow_generation
                .store(self.shadow_gen, Relaxed);
        }
        if self.sweeps.impact.as_ref().is_some_and(|(c, ..)| *c >= n) {
            if let Some((_, id, flows, total)) = self.sweeps.impact.take() {
                self.stats_out.impact.store(Some(Arc::new(ImpactAnswer {
                    id,
                    shadow_version: self.shadow.as_ref().map_or(0, |t| t.version()),
                    flows,
                    total,
                })));
            }
        }
    }

    /// The decision `table` makes for the flow in slot `i` with the current facts.
    pub(super) fn decide_with(&self, table: &DecisionTable, flow: &Flow) -> Decision {
        let (listener, source) = (flow.listener(), flow.audit_ref().source);
        let Some(l) = self.listeners.get(listener) else {
            return Decision::default_deny(zgate_table::facts::Reason::NoRuleMatched);
        };
        let Some(s) = flow.tls_session() else {
            return table.decide(
                &FlowFacts::plain(&l.config.name, source.ip(), self.unix_now),
                &self.live_facts,
            );
        };
        let id = s.identity();
        let refs = id.map(|i| i.dns_refs());
        let identity = match (id, refs.as_ref()) {
            (Some(i), Some(r)) => Some(i.lend(r)),
            _ => None,
        };
        table.decide(
            &FlowFacts {
                service: &l.config.name,
                source: source.ip(),
                sni: s.sni(),
                alpn: s.alpn(),
                identity,
                device_id: id.and_then(|i| i.device_id.as_deref()),
                cert_age_secs: id.map(|i| i.age_secs(self.unix_now)),
                now: self.unix_now,
            },
            &self.live_facts,
        )
    }

    /// Whether the flow in slot `i` is live and allowed (decided, not closing).
    fn is_live(&self, i: usize) -> Option<&Flow> {
        let flow = self.slots.get(i)?.conn.as_ref()?;
        flow.is_decided_and_live().then_some(flow)
    }

    /// The shadow table's verdict on the live flow in slot `i`: a flow it would close
    /// is counted and audited (once per shadow table, or again when facts touch it).
    pub(super) fn shadow_live(&mut self, i: usize) {
        let (Some(shadow), Some(flow)) = (self.shadow.clone(), self.is_live(i)) else {
            return;
        };
        let d = self.decide_with(&shadow, flow);
        let ok = permit(d, flow.started_unix(), self.unix_now, flow.chain_window()).is_ok();
        if !ok {
            let (r, listener) = (flow.audit_ref(), flow.listener());
            self.audit_shadow(r, &shadow, &d, false, flow.tls_session());
            self.count(listener, M::ShadowDifferences);
        }
    }

    /// A new flow was decided (`enforced`: allowed) and the shadow table decided it
    /// `shadow`: if that would have gone otherwise, audit it and say so (the caller
    /// counts it).
    pub(super) fn shadow_new(
        &self,
        flow: FlowRef,
        enforced: bool,
        shadow: Option<Decision>,
        chain: Option<(i64, i64)>,
        tls: Option<&zgate_tls::TlsSession>,
    ) -> bool {
        let (Some(table), Some(d)) = (self.shadow.as_deref(), shadow) else {
            return false;
        };
        let ok = permit(d, self.unix_now, self.unix_now, chain).is_ok();
        if ok != enforced {
            self.audit_shadow(flow, table, &d, ok, tls);
        }
        ok != enforced
    }

    fn audit_shadow(
        &self,
        flow: FlowRef,
        table: &DecisionTable,
        d: &Decision,
        allow: bool,
        tls: Option<&zgate_tls::TlsSession>,
    ) {
        self.audit.push_with(|| {
            let mut e = self.audit_event(AuditKind::Shadow, flow, d.reason.as_str());
            e.verdict = Some(if allow { Verdict::Allow } else { Verdict::Deny });
            e.rule = Some(RuleRef {
                table_version: table.version(),
                by: d.decided_by,
            });
            if let Some(s) = tls {
                e.spiffe_id = s.identity().map(|i| Arc::clone(&i.spiffe_id));
                e.sni = s.sni_shared().cloned();
            }
            e
        });
    }

    /// Impact query: if the shadow table would close the live flow in slot `i`, add it
    /// to the answer under way.
    fn impact_of(&mut self, i: usize) {
        let (Some(shadow), Some(flow)) = (self.shadow.clone(), self.is_live(i)) else {
            return;
        };
        let d = self.decide_with(&shadow, flow);
        if permit(d, flow.started_unix(), self.unix_now, flow.chain_window()).is_ok() {
            return;
        }
        let listener = self
            .listeners
            .get(flow.listener())
            .map_or_else(String::new, |l| l.config.name.clone());
        let entry = ImpactFlow {
            listener,
            principal: flow
                .tls_session()
                .and_then(|s| s.identity())
                .map(|id| id.spiffe_id.to_string())
                .filter(|p| !p.is_empty()),
            source: flow.audit_ref().source.to_string(),
            rule: shadow.decided_by_name(d.decided_by).to_string(),
            reason: d.reason.as_str().to_string(),
        };
        if let Some((_, _, flows, total)) = self.sweeps.impact.as_mut() {
            *total += 1;
            if flows.len() < ImpactReport::MAX_FLOWS {
                flows.push(entry);
            }
        }
    }

    /// Index a TLS flow that was just allowed under its identity's keys.
    pub(super) fn index_flow(&mut self, i: usize) {
        let Some(Flow::Tls(t)) = self.slots.get(i).and_then(|s| s.conn.as_ref()) else {
            return;
        };
        let Some(id) = t.session().identity() else {
            return;
        };
        let keys = Keys {
            principal: (!id.spiffe_id.is_empty()).then(|| Arc::clone(&id.spiffe_id)),
            fingerprint: Some(id.fingerprint),
            device: id.device_id.as_deref().map(Arc::from),
        };
        self.index
            .insert(u32::try_from(i).unwrap_or(u32::MAX), keys);
    }
}
