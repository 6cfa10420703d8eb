//! Deciding flows: the decision table asked with a flow's facts, the one place where
//! "may this flow go on" is worked out ([`permit`]) for new flows and live ones decided
//! again alike, and their audit records.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use zgate_table::facts::{Decision, FlowFacts, Reason, UnixSeconds};
use zgate_telemetry::{AuditEvent, AuditKind, RuleRef, Verdict};
use zgate_tls::{Alert, RejectReason};

use super::conn::{CloseKind, ConnectFailure, State};
use super::flow::Flow;
use super::tls::{Refused, TlsState};
use super::Worker;
use crate::metrics::{Count, M};
use crate::sys;

/// Proof that a flow may go on: the decision that allowed it and the instant that
/// stops holding (its grant, schedule or `max_session`, or its client certificate
/// chain, whichever ends first). Only [`permit`] makes one, and an upstream is only
/// ever connected with one (STYLE B.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    decision: Decision,
    expires_at: Option<UnixSeconds>,
}

impl Permit {
    /// When the flow must be decided again.
    pub fn expires_at(&self) -> Option<UnixSeconds> {
        self.expires_at
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
    let expires_at = match (
        decision.constraints.expires_at(started),
        chain.map(|(_, not_after)| not_after),
    ) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if expires_at.is_some_and(|e| now >= e) {
        return Err(Refusal::ConstraintsExpired);
    }
    Ok(Permit {
        decision,
        expires_at,
    })
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
        let tls = match flow {
            Flow::Plain(c) => return self.decide(c.listener, c.source.ip()),
            Flow::Tls(t) => t,
        };
        let (Some(table), Some(l)) = (&self.table, self.listeners.get(tls.listener)) else {
            return Decision::default_deny(Reason::NoRuleMatched);
        };
        let s = tls.session();
        let id = s.identity();
        let refs = id.map(|i| i.dns_refs());
        let identity = match (id, refs.as_ref()) {
            (Some(i), Some(r)) => Some(i.lend(r)),
            _ => None,
        };
        let facts = FlowFacts {
            service: &l.config.name,
            source: tls.source.ip(),
            sni: s.sni(),
            alpn: s.alpn(),
            identity,
            device_id: id.and_then(|i| i.device_id.as_deref()),
            cert_age_secs: id.map(|i| i.age_secs(self.unix_now)),
            now: self.unix_now,
        };
        table.decide(&facts, &self.live_facts)
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
        let decision = self.decide_flow(flow);
        let verdict = permit(decision, self.unix_now, self.unix_now, flow.chain_window());
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
        let Some(cfg) = self.listeners.get(listener).map(|l| Arc::clone(&l.config)) else {
            return;
        };
        let Ok(permit) = verdict else {
            self.count(listener, M::Denied);
            self.with_conn(i, |f, ctx| {
                if let Flow::Tls(t) = f {
                    t.deny(Alert::AccessDenied, ctx);
                }
            });
            return;
        };
        let upstream = sys::upstream_socket(&cfg.upstream);
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
    pub(super) fn redecide(&mut self, i: usize) {
        self.decide_again(i);
        // A new decision may expire sooner than the flow's next check.
        self.schedule(i);
    }

    fn decide_again(&mut self, i: usize) {
        let Some(Some(conn)) = self.slots.get(i).map(|s| s.conn.as_ref()) else {
            return;
        };
        // Closing flows and TLS flows not yet decided are left alone. A TLS flow whose
        // upstream connect is in flight was decided with the table of its `settle_tls`,
        // which may be older than this one: it is re-decided like a plain one (review
        // M2), so a denying table closes it before `on_connect` could open it.
        let live = match conn {
            Flow::Plain(_) => matches!(conn.state(), State::Open | State::Connecting),
            Flow::Tls(t) => t.state.is_decided_and_live(),
        };
        if !live {
            return;
        }
        let decision = self.decide_flow(conn);
        let verdict = permit(
            decision,
            conn.started_unix(),
            self.unix_now,
            conn.chain_window(),
        );
        if let Ok(p) = verdict {
            if let Some(Some(conn)) = self.slots.get_mut(i).map(|s| s.conn.as_mut()) {
                conn.set_expires_at(p.expires_at());
            }
            return;
        }
        let listener = conn.listener();
        self.audit_decision(
            AuditKind::ClosedByPolicy,
            conn.audit_ref(),
            &decision,
            verdict.map(|_| ()),
            conn.tls_session(),
        );
        self.count(listener, M::ClosedByPolicy);
        self.with_conn(i, |conn, ctx| conn.close(CloseKind::Reset, ctx));
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
