//! Deciding flows: the decision table asked with a flow's facts, the one place where
//! "may this flow go on" is worked out ([`permit`]) for new flows and live ones decided
//! again alike, and their audit records.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use zgate_proto::Cause;
use zgate_table::facts::{DecidedBy, Decision, FlowFacts, Reason, UnixSeconds};
use zgate_telemetry::latency::Measure;
use zgate_telemetry::{AuditEvent, AuditKind, RuleRef, Verdict};
use zgate_tls::{Alert, RejectReason};

use super::conn::{CloseKind, ConnectFailure};
use super::flow::Flow;
use super::tls::{Refused, TlsState};
use super::Worker;
use crate::metrics::{Count, M};

/// What ends a permit first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// The just-in-time grant the decision relied on.
    Grant,
    /// The schedule window the decision was made in.
    Schedule,
    /// The rule's `max_session`.
    Session,
    /// The client certificate chain's earliest notAfter.
    Certificate,
}

/// When a permit stops holding, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// The instant (Unix seconds).
    pub at: UnixSeconds,
    /// What runs out then.
    pub by: Ends,
}

/// Proof that a flow may go on: the decision that allowed it and the instant that
/// stops holding (its grant, schedule or `max_session`, or its client certificate
/// chain, whichever ends first). Only [`permit`] makes one, and an upstream is only
/// ever connected with one (STYLE B.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    decision: Decision,
    expiry: Option<Expiry>,
}

impl Permit {
    /// When the flow must be decided again.
    pub fn expires_at(&self) -> Option<UnixSeconds> {
        self.expiry.map(|e| e.at)
    }

    /// When the flow must be decided again, and what runs out then.
    pub fn expiry(&self) -> Option<Expiry> {
        self.expiry
    }

    /// The decision that allowed it.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

/// Why a flow may not go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The table denied it.
    Denied,
    /// The table allowed it, but its grant, schedule window or `max_session` has
    /// already run out.
    ConstraintsExpired,
    /// Its client certificate, or one above it in its chain, has expired.
    CertificateExpired,
    /// Its client certificate is not valid yet.
    CertificateNotYetValid,
}

impl Refusal {
    /// Every `reason` a new flow is refused with ([`Refusal::label`]), the `reason`
    /// label of `zgate_connections_denied_total`; `other` for none of them.
    pub const DENIAL_LABELS: &'static [&'static str] = &[
        "denied-by-rule",
        "no-rule-matched",
        "unknown-service",
        "revoked",
        "constraints-expired",
        "certificate-expired",
        "certificate-not-yet-valid",
        "other",
    ];

    /// The position of this refusal's label in [`Refusal::DENIAL_LABELS`] (no string
    /// search: a flood of refused clients runs this for each).
    pub fn denial_index(self, decision: &Decision) -> usize {
        match self {
            Refusal::Denied => match decision.reason {
                Reason::DeniedByRule => 0,
                Reason::NoRuleMatched => 1,
                Reason::UnknownService => 2,
                Reason::Revoked => 3,
                Reason::AllowedByRule => 7,
            },
            Refusal::ConstraintsExpired => 4,
            Refusal::CertificateExpired => 5,
            Refusal::CertificateNotYetValid => 6,
        }
    }

    /// The audit record's `reason` for a flow refused with `decision`.
    pub fn label(self, decision: &Decision) -> &'static str {
        match self {
            Refusal::Denied => decision.reason.as_str(),
            Refusal::ConstraintsExpired => "constraints-expired",
            Refusal::CertificateExpired => "certificate-expired",
            Refusal::CertificateNotYetValid => "certificate-not-yet-valid",
        }
    }

    /// For a certificate refusal, the TLS reason a new flow is refused with.
    fn tls_reason(self) -> Option<RejectReason> {
        match self {
            Refusal::CertificateExpired => Some(RejectReason::Expired),
            Refusal::CertificateNotYetValid => Some(RejectReason::NotYetValid),
            Refusal::Denied | Refusal::ConstraintsExpired => None,
        }
    }
}

/// The one answer to "may this flow go on", for a new flow and for a live one decided
/// again alike: its client certificate chain (`chain`: notBefore and the earliest
/// notAfter, TLS flows only) is valid `now`, `decision` allows it, and the decision's
/// constraints, counted from the flow's `started` second, have not run out.
pub fn permit(
    decision: Decision,
    started: UnixSeconds,
    now: UnixSeconds,
    chain: Option<(i64, i64)>,
) -> Result<Permit, Refusal> {
    if let Some((not_before, not_after)) = chain {
        if now >= not_after {
            return Err(Refusal::CertificateExpired);
        }
        if now < not_before {
            return Err(Refusal::CertificateNotYetValid);
        }
    }
    if !decision.is_allow() {
        return Err(Refusal::Denied);
    }
    let c = decision.constraints;
    let session_end = c
        .max_session_secs
        .map(|s| started.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)));
    let expiry = [
        c.grant_end.map(|at| Expiry {
            at,
            by: Ends::Grant,
        }),
        c.schedule_end.map(|at| Expiry {
            at,
            by: Ends::Schedule,
        }),
        session_end.map(|at| Expiry {
            at,
            by: Ends::Session,
        }),
        chain.map(|(_, at)| Expiry {
            at,
            by: Ends::Certificate,
        }),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|e| e.at);
    if expiry.is_some_and(|e| now >= e.at) {
        return Err(Refusal::ConstraintsExpired);
    }
    Ok(Permit { decision, expiry })
}

/// What made a live flow be decided again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A new table.
    Table,
    /// A fact delta that names the flow (or a whole new fact set).
    Fact(Cause),
    /// Its permit's expiry came due.
    Timer,
    /// A whole new fact set (after a reconnection to the control process), which may
    /// touch any flow.
    FactSet,
}

/// Why a re-decision closed a live flow: the `cause` of its audit record and the
/// `reason` label of `zgate_flows_closed_by_policy_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum CloseReason {
    /// A new table no longer allows it.
    PolicyChanged,
    /// Its principal or certificate was revoked.
    Revoked,
    /// Its device's posture no longer meets the rule.
    Posture,
    /// Its risk score rose above the rule's `max_risk`.
    Risk,
    /// The just-in-time grant it relied on ended (or was withdrawn).
    GrantEnded,
    /// The schedule window it was allowed in ended.
    ScheduleEnded,
    /// It reached its rule's `max_session`.
    MaxSession,
    /// Its client certificate chain expired.
    CertificateExpired,
    /// A whole new fact set no longer allows it.
    FactsChanged,
}

impl CloseReason {
    /// Every label, by discriminant.
    pub const LABELS: &'static [&'static str] = zgate_telemetry::schema::POLICY_CLOSE_CAUSES;

    /// The label.
    pub fn label(self) -> &'static str {
        Self::LABELS.get(self as usize).copied().unwrap_or("?")
    }

    /// Why a flow decided again on `trigger` is closed: a revocation says so whatever
    /// triggered it; then a certificate out of its window; then the expiry of its
    /// previous permit (`old`) when that has come; then what triggered it.
    pub fn of(
        trigger: Trigger,
        decision: &Decision,
        refusal: Refusal,
        old: Option<Expiry>,
        now: UnixSeconds,
    ) -> CloseReason {
        if matches!(
            decision.decided_by,
            DecidedBy::RevokedIdentity | DecidedBy::RevokedCertificate
        ) {
            return CloseReason::Revoked;
        }
        if matches!(
            refusal,
            Refusal::CertificateExpired | Refusal::CertificateNotYetValid
        ) {
            return CloseReason::CertificateExpired;
        }
        if let Some(e) = old.filter(|e| now >= e.at) {
            return match e.by {
                Ends::Grant => CloseReason::GrantEnded,
                Ends::Schedule => CloseReason::ScheduleEnded,
                Ends::Session => CloseReason::MaxSession,
                Ends::Certificate => CloseReason::CertificateExpired,
            };
        }
        match trigger {
            Trigger::Table | Trigger::Timer => CloseReason::PolicyChanged,
            Trigger::Fact(Cause::Revocation) => CloseReason::Revoked,
            Trigger::Fact(Cause::Posture) => CloseReason::Posture,
            Trigger::Fact(Cause::Risk) => CloseReason::Risk,
            Trigger::Fact(Cause::Grant) => CloseReason::GrantEnded,
            Trigger::FactSet => CloseReason::FactsChanged,
        }
    }
}

impl Worker {
    /// Decide a plain flow by the current table.
    pub(super) fn decide(&self, listener: usize, source: IpAddr) -> Decision {
        let (Some(t), Some(l)) = (&self.table, self.listeners.get(listener)) else {
            return Decision::default_deny(Reason::NoRuleMatched);
        };
        t.decide(
            &FlowFacts::plain(&l.config.name, source, self.unix_now),
            &self.live_facts,
        )
    }

    /// Decide a flow by the current table, with every fact it was admitted with (for
    /// TLS flows: identity, device id, SNI, ALPN, certificate age).
    pub(super) fn decide_flow(&self, flow: &Flow) -> Decision {
        match &self.table {
            Some(t) => self.decide_with(t, flow),
            None => Decision::default_deny(Reason::NoRuleMatched),
        }
    }

    /// A TLS flow whose handshake just completed: decide it, then connect the upstream
    /// (allowed) or send the alert and close (refused). Nothing reaches an upstream
    /// before this point.
    pub(super) fn settle_tls(&mut self, i: usize) {
        let deciding = matches!(
            self.slots.get(i).and_then(|s| s.conn.as_ref()),
            Some(Flow::Tls(t)) if t.state == TlsState::Deciding
        );
        if deciding {
            self.decide_tls(i);
            // The decision's expiry and an upstream handshake bring deadlines forward.
            self.schedule(i);
        }
    }

    fn decide_tls(&mut self, i: usize) {
        let Some(Some(flow)) = self.slots.get(i).map(|s| s.conn.as_ref()) else {
            return;
        };
        let Flow::Tls(t) = flow else { return };
        let listener = t.listener;
        let handshake = if t.session().is_resumed() {
            Measure::HandshakeResumed
        } else {
            Measure::HandshakeFull
        };
        let handshake_ns = self.now.saturating_duration_since(t.started).as_nanos();
        let timed = self.sample_decision().then(super::precise_now);
        let Some(Some(flow)) = self.slots.get(i).map(|s| s.conn.as_ref()) else {
            return;
        };
        let decision = self.decide_flow(flow);
        let verdict = permit(decision, self.unix_now, self.unix_now, flow.chain_window());
        let decision_ns = timed.map(super::precise_ns_since);
        if let Some(l) = self
            .listeners
            .get_mut(listener)
            .and_then(|l| l.latency.as_deref_mut())
        {
            l.record(handshake, u64::try_from(handshake_ns).unwrap_or(u64::MAX));
            if let Some(ns) = decision_ns {
                l.record(Measure::Decision, ns);
            }
        }
        let Some(Some(flow)) = self.slots.get(i).map(|s| s.conn.as_ref()) else {
            return;
        };
        let Flow::Tls(t) = flow else { return };
        if let Some(reason) = verdict.err().and_then(Refusal::tls_reason) {
            // A resumed session whose chain has run out since: refused as a TLS
            // failure, before any decision counts.
            self.with_conn(i, |f, ctx| {
                if let Flow::Tls(t) = f {
                    t.fail(&reason, ctx);
                }
            });
            return;
        }
        self.audit_decision(
            AuditKind::Decision,
            flow.audit_ref(),
            &decision,
            verdict.map(|_| ()),
            Some(t.session()),
        );
        let shadow = self.shadow.as_ref().map(|s| self.decide_with(s, flow));
        if self.shadow_new(
            flow.audit_ref(),
            verdict.is_ok(),
            shadow,
            flow.chain_window(),
            Some(t.session()),
        ) {
            self.count(listener, M::ShadowDifferences);
        }
        let Some(cfg) = self.listeners.get(listener).map(|l| Arc::clone(&l.config)) else {
            return;
        };
        let permit = match verdict {
            Ok(p) => p,
            Err(r) => {
                self.count_denied(listener, r, &decision);
                self.with_conn(i, |f, ctx| {
                    if let Flow::Tls(t) = f {
                        t.deny(Alert::AccessDenied, ctx);
                    }
                });
                return;
            }
        };
        // Allowed: a fact delta naming its principal, certificate or device finds it.
        self.index_flow(i);
        let upstream = self.upstream_socket(&cfg.upstream);
        let upstream_tls = self
            .listeners
            .get(listener)
            .and_then(|l| l.tls.as_ref())
            .and_then(|t| t.upstream.clone());
        let now = self.unix_now;
        self.with_conn(i, |f, ctx| {
            let Flow::Tls(t) = f else { return };
            match upstream {
                Ok(u) => t.connect(u, &cfg, upstream_tls.as_ref(), permit, now, ctx),
                Err(e) => {
                    ctx.stats.inc(M::UpstreamConnectFailures);
                    ctx.connect_failed = Some(ConnectFailure::Socket(e.raw_os_error()));
                    t.close(CloseKind::Normal, ctx);
                }
            }
        });
    }

    /// Re-decide the flow in slot `i` (if any, and not already closing) with the facts
    /// it was admitted with, at the current time. Closes it (RST both ways: the flow is
    /// cut, not finished) when it may no longer go on; otherwise records when its new
    /// permit expires.
    pub(super) fn redecide(&mut self, i: usize, trigger: Trigger) {
        self.decide_again(i, trigger);
        // A new decision may expire sooner than the flow's next check.
        self.schedule(i);
    }

    fn decide_again(&mut self, i: usize, trigger: Trigger) {
        let Some(Some(conn)) = self.slots.get(i).map(|s| s.conn.as_ref()) else {
            return;
        };
        // Closing flows and TLS flows not yet decided are left alone.
        if !conn.is_decided_and_live() {
            return;
        }
        let decision = self.decide_flow(conn);
        let verdict = permit(
            decision,
            conn.started_unix(),
            self.unix_now,
            conn.chain_window(),
        );
        let refusal = match verdict {
            Ok(p) => {
                if let Some(Some(conn)) = self.slots.get_mut(i).map(|s| s.conn.as_mut()) {
                    conn.set_expiry(p.expiry());
                }
                return;
            }
            Err(r) => r,
        };
        let why = CloseReason::of(trigger, &decision, refusal, conn.expiry(), self.unix_now);
        let listener = conn.listener();
        self.audit_closed(conn, &decision, refusal, why);
        if let Some(c) = self.counters(listener) {
            c.add_label(M::ClosedByPolicy, why as usize, 1);
        }
        self.with_conn(i, |conn, ctx| {
            conn.close_for(super::flow::Ended::Policy, CloseKind::Reset, ctx);
        });
    }

    /// A new audit event about `flow`.
    pub(super) fn audit_event(
        &self,
        event: AuditKind,
        flow: FlowRef,
        reason: &'static str,
    ) -> AuditEvent {
        AuditEvent {
            ts_us: self.unix_now_us,
            flow: flow.id,
            event,
            worker: u16::try_from(self.id).unwrap_or(u16::MAX),
            listener: u16::try_from(flow.listener).unwrap_or(u16::MAX),
            source: flow.source,
            verdict: None,
            rule: None,
            reason,
            spiffe_id: None,
            sni: None,
            resumed: false,
            cause: None,
            bytes: None,
            duration_us: None,
            detail: None,
        }
    }

    /// Audit decision `d` for a flow and what was made of it: `Ok` the flow goes on,
    /// `Err` it does not and why (a deny, or an allow whose constraints or certificate
    /// have already run out, which says so). Nothing is built when the queue is full.
    pub(super) fn audit_decision(
        &self,
        event: AuditKind,
        flow: FlowRef,
        d: &Decision,
        verdict: Result<(), Refusal>,
        tls: Option<&zgate_tls::TlsSession>,
    ) {
        self.audit.push_with(|| {
            let reason = match verdict {
                Ok(()) => d.reason.as_str(),
                Err(r) => r.label(d),
            };
            let mut e = self.audit_event(event, flow, reason);
            e.verdict = Some(if verdict.is_ok() {
                Verdict::Allow
            } else {
                Verdict::Deny
            });
            e.rule = Some(RuleRef {
                table_version: self.table.as_ref().map_or(0, |t| t.version()),
                by: d.decided_by,
            });
            if let Some(s) = tls {
                e.spiffe_id = s.identity().map(|i| Arc::clone(&i.spiffe_id));
                e.sni = s.sni_shared().cloned();
                e.resumed = s.is_resumed();
            }
            e
        });
    }

    /// Audit a live flow closed by a re-decision: the decision, and what closed it.
    fn audit_closed(&self, conn: &Flow, d: &Decision, refusal: Refusal, why: CloseReason) {
        self.audit.push_with(|| {
            let mut e = self.audit_event(
                AuditKind::ClosedByPolicy,
                conn.audit_ref(),
                refusal.label(d),
            );
            e.verdict = Some(Verdict::Deny);
            e.rule = Some(RuleRef {
                table_version: self.table.as_ref().map_or(0, |t| t.version()),
                by: d.decided_by,
            });
            e.cause = Some(why.label());
            if let Some(s) = conn.tls_session() {
                e.spiffe_id = s.identity().map(|i| Arc::clone(&i.spiffe_id));
                e.sni = s.sni_shared().cloned();
                e.resumed = s.is_resumed();
            }
            e
        });
    }

    /// Audit a refusal that came before (or instead of) a decision.
    pub(super) fn audit_refusal(&self, flow: FlowRef, r: Refused) {
        self.audit.push_with(|| {
            let mut e = self.audit_event(r.kind, flow, r.reason);
            e.detail = r.detail;
            e
        });
    }
}

/// Which flow an audit record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRef {
    /// Its id (the same on all its records).
    pub id: u64,
    /// Its listener's index.
    pub listener: usize,
    /// The client's address.
    pub source: SocketAddr,
}

#[cfg(test)]
mod tests {
    use zgate_table::facts::{Constraints, DecidedBy, Verdict};

    use super::*;

    fn allow(constraints: Constraints) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            decided_by: DecidedBy::DefaultDeny,
            reason: Reason::AllowedByRule,
            constraints,
        }
    }

    fn none() -> Constraints {
        Decision::default_deny(Reason::NoRuleMatched).constraints
    }

    /// The denial metric's index of every refusal is its audit label's place in the
    /// list, so the counter and the audit record say the same reason.
    #[test]
    fn every_denial_index_names_its_audit_label() {
        let reasons = [
            Reason::AllowedByRule,
            Reason::DeniedByRule,
            Reason::NoRuleMatched,
            Reason::UnknownService,
            Reason::Revoked,
        ];
        for reason in reasons {
            let d = Decision::default_deny(reason);
            for r in [
                Refusal::Denied,
                Refusal::ConstraintsExpired,
                Refusal::CertificateExpired,
                Refusal::CertificateNotYetValid,
            ] {
                let label = Refusal::DENIAL_LABELS[r.denial_index(&d)];
                if reason == Reason::AllowedByRule && r == Refusal::Denied {
                    assert_eq!(label, "other");
                } else {
                    assert_eq!(label, r.label(&d), "{r:?} {reason:?}");
                }
            }
        }
    }

    /// Review 16.13: "allowed" was worked out by hand in three places, with different
    /// rules (a new TLS flow counted its constraints from the decision, a live one from
    /// its start; only re-decisions checked the chain's notBefore). One function now.
    #[test]
    fn a_permit_needs_an_allow_a_valid_chain_and_constraints_that_hold() {
        let now = 1_000;
        let p = permit(allow(none()), 900, now, None).unwrap();
        assert_eq!(p.expires_at(), None);
        assert_eq!(
            permit(
                Decision::default_deny(Reason::NoRuleMatched),
                900,
                now,
                None
            ),
            Err(Refusal::Denied)
        );
        let session = Constraints {
            max_session_secs: Some(50),
            ..none()
        };
        // Counted from the flow's start: 900 + 50 is past.
        assert_eq!(
            permit(allow(session), 900, now, None),
            Err(Refusal::ConstraintsExpired)
        );
        assert_eq!(
            permit(allow(session), 980, now, None).map(|p| p.expires_at()),
            Ok(Some(1_030))
        );
        // The chain's notAfter bounds the permit; outside its window, refused.
        assert_eq!(
            permit(allow(session), 980, now, Some((0, 1_010))).map(|p| p.expires_at()),
            Ok(Some(1_010))
        );
        assert_eq!(
            permit(allow(none()), 900, now, Some((0, 1_000))),
            Err(Refusal::CertificateExpired)
        );
        assert_eq!(
            permit(allow(none()), 900, now, Some((1_001, 2_000))),
            Err(Refusal::CertificateNotYetValid)
        );
        // The chain is checked even for a deny: the certificate is the first fault.
        assert_eq!(
            permit(
                Decision::default_deny(Reason::NoRuleMatched),
                900,
                now,
                Some((0, 10))
            ),
            Err(Refusal::CertificateExpired)
        );
    }
}
