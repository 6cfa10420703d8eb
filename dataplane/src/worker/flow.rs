//! A flow in a worker slot, plain or TLS, and what the worker asks of either kind
//! without caring which.

use std::time::Instant;

use super::conn::{CloseKind, Conn, Ctx, State};
use super::decide::Expiry;
use super::tls::TlsConn;
use super::token::Op;

/// Why a flow ended: the `cause` of its `close` audit record. The labels are the audit
/// schema's ([`zgate_telemetry::schema::CLOSE_CAUSES`]), in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Ended {
    /// Both sides finished (FIN each way, or close_notify for TLS); the client first.
    ClientFin,
    /// Both sides finished; the upstream first.
    UpstreamFin,
    /// The client reset the connection (or its socket failed): the upstream was reset.
    ClientReset,
    /// The upstream reset the connection (or its socket failed): the client was reset.
    UpstreamReset,
    /// `idle_timeout`.
    IdleTimeout,
    /// `max_lifetime`.
    MaxLifetime,
    /// A re-decision closed it (its `closed_by_policy` record says why).
    Policy,
    /// The drain timeout passed, or a second SIGTERM.
    Drain,
    /// The TLS (or upstream TLS) handshake took too long.
    HandshakeTimeout,
    /// The upstream could not be connected.
    ConnectFailed,
    /// A TLS error (a bad record, an alert).
    TlsError,
    /// A side ended its stream without close_notify: the other was reset.
    Truncated,
    /// The gateway itself could not go on (a buffer or pipe it could not account
    /// for): both sides were reset.
    GatewayError,
    /// A TLS 1.2 session reached its confidentiality limit: what it sealed went out,
    /// then close_notify, and the upstream was reset.
    ConfidentialityLimit,
    /// Closed cleanly with no side seen finishing first.
    Finished,
}

impl Ended {
    /// The label.
    pub fn label(self) -> &'static str {
        zgate_telemetry::schema::CLOSE_CAUSES
            .get(self as usize)
            .copied()
            .unwrap_or("?")
    }

    /// `side` (0 the client, 1 the upstream) finished first.
    pub fn fin(side: usize) -> Ended {
        if side == super::tls::CLIENT {
            Ended::ClientFin
        } else {
            Ended::UpstreamFin
        }
    }

    /// `side` (0 the client, 1 the upstream) reset the connection, or its socket
    /// failed.
    pub fn reset(side: usize) -> Ended {
        if side == super::tls::CLIENT {
            Ended::ClientReset
        } else {
            Ended::UpstreamReset
        }
    }
}

/// A flow in a slot: plain TCP, or TLS-terminated.
#[expect(
    clippy::large_enum_variant,
    reason = "plain flows are the small, common case and stay inline (no allocation per flow); TLS flows, ~4 KB, are boxed"
)]
pub enum Flow {
    /// Plain TCP ([`super::conn`]).
    Plain(Conn),
    /// TLS on the client side ([`super::tls`]).
    Tls(Box<TlsConn>),
}

impl Flow {
    pub(super) fn state(&self) -> State {
        match self {
            Flow::Plain(c) => c.state,
            Flow::Tls(t) => t.coarse_state(),
        }
    }

    /// Whether a re-decision applies: decided (or, for plain flows, being
    /// connected) and not closing. A TLS flow whose upstream connect is in flight was
    /// decided with the table of its `settle_tls`, which may be older than the current
    /// one: it is re-decided like a plain one (review M2), so a denying table closes
    /// it before `on_connect` could open it.
    pub(super) fn is_decided_and_live(&self) -> bool {
        match self {
            Flow::Plain(_) => matches!(self.state(), State::Open | State::Connecting),
            Flow::Tls(t) => t.state.is_decided_and_live(),
        }
    }

    pub(super) fn listener(&self) -> usize {
        match self {
            Flow::Plain(c) => c.listener,
            Flow::Tls(t) => t.listener,
        }
    }

    /// What its audit records name it by.
    pub(super) fn audit_ref(&self) -> super::decide::FlowRef {
        let (id, listener, source) = match self {
            Flow::Plain(c) => (c.id, c.listener, c.source),
            Flow::Tls(t) => (t.id, t.listener, t.source),
        };
        super::decide::FlowRef {
            id,
            listener,
            source,
        }
    }

    pub(super) fn tls_session(&self) -> Option<&zgate_tls::TlsSession> {
        match self {
            Flow::Plain(_) => None,
            Flow::Tls(t) => Some(t.session()),
        }
    }

    pub(super) fn started(&self) -> Instant {
        match self {
            Flow::Plain(c) => c.started,
            Flow::Tls(t) => t.started,
        }
    }

    pub(super) fn last_active(&self) -> Instant {
        match self {
            Flow::Plain(c) => c.last_active,
            Flow::Tls(t) => t.last_active,
        }
    }

    pub(super) fn started_unix(&self) -> i64 {
        match self {
            Flow::Plain(c) => c.started_unix,
            Flow::Tls(t) => t.started_unix,
        }
    }

    pub(super) fn expiry(&self) -> Option<Expiry> {
        match self {
            Flow::Plain(c) => c.expiry,
            Flow::Tls(t) => t.expiry,
        }
    }

    pub(super) fn expires_at(&self) -> Option<i64> {
        self.expiry().map(|e| e.at)
    }

    pub(super) fn set_expiry(&mut self, e: Option<Expiry>) {
        match self {
            Flow::Plain(c) => c.expiry = e,
            Flow::Tls(t) => t.expiry = e,
        }
    }

    pub(super) fn finished(&self) -> bool {
        match self {
            Flow::Plain(c) => c.finished(),
            Flow::Tls(t) => t.finished(),
        }
    }

    pub(super) fn is_starved(&self, dir: usize) -> bool {
        match self {
            Flow::Plain(c) => c.is_starved(dir),
            Flow::Tls(t) => t.is_starved(dir),
        }
    }

    pub(super) fn recv(&mut self, dir: usize, ctx: &mut Ctx<'_>) {
        match self {
            Flow::Plain(c) => c.recv(dir, ctx),
            Flow::Tls(t) => t.rearm(dir, ctx),
        }
    }

    pub(super) fn close(&mut self, kind: CloseKind, ctx: &mut Ctx<'_>) {
        match self {
            Flow::Plain(c) => c.close(kind, ctx),
            Flow::Tls(t) => t.close(kind, ctx),
        }
    }

    /// Close it for `why` (kept unless an earlier cause was).
    pub(super) fn close_for(&mut self, why: Ended, kind: CloseKind, ctx: &mut Ctx<'_>) {
        self.mark_ended(why);
        self.close(kind, ctx);
    }

    /// Say why it ends, unless something already did.
    pub(super) fn mark_ended(&mut self, why: Ended) {
        let e = match self {
            Flow::Plain(c) => &mut c.ended,
            Flow::Tls(t) => &mut t.ended,
        };
        e.get_or_insert(why);
    }

    /// Why it ended, bytes each way, whether it was admitted (allowed and connecting
    /// or forwarding): for its `close` record.
    pub(super) fn outcome(&self) -> (Ended, [u64; 2], bool) {
        match self {
            Flow::Plain(c) => (
                c.ended.or(c.first_fin).unwrap_or(Ended::Finished),
                c.bytes,
                true,
            ),
            Flow::Tls(t) => (
                t.ended.or(t.first_fin).unwrap_or(Ended::Finished),
                t.bytes,
                t.admitted(),
            ),
        }
    }

    pub(super) fn complete(&mut self, op: Op, result: i32, buffer: Option<u16>, ctx: &mut Ctx<'_>) {
        match self {
            Flow::Plain(c) => c.complete(op, result, buffer, ctx),
            Flow::Tls(t) => t.complete(op, result, buffer, ctx),
        }
    }

    /// For TLS flows with a client certificate: the validity window of its chain
    /// (the leaf's notBefore, the earliest notAfter of the chain). A resumed session
    /// skips verification, and a live flow may outlive its certificate or an
    /// intermediate above it, so every decision checks it.
    pub(super) fn chain_window(&self) -> Option<(i64, i64)> {
        let Flow::Tls(t) = self else { return None };
        t.session()
            .identity()
            .map(|id| (id.not_before, id.chain_not_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zgate_telemetry::schema::CLOSE_CAUSES;

    /// The causes are the audit schema's, one each, in order.
    #[test]
    fn every_close_cause_is_the_schemas() {
        assert_eq!(Ended::Finished as usize + 1, CLOSE_CAUSES.len());
        assert_eq!(Ended::fin(0).label(), "client-fin");
        assert_eq!(Ended::fin(1).label(), "upstream-fin");
        assert_eq!(Ended::reset(0).label(), "client-reset");
        assert_eq!(Ended::reset(1).label(), "upstream-reset");
        assert_eq!(Ended::GatewayError.label(), "gateway-error");
        assert_eq!(Ended::Truncated.label(), "truncated");
        assert_eq!(Ended::ConfidentialityLimit.label(), "confidentiality-limit");
    }
}
