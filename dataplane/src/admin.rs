//! The admin endpoint: `/healthz`, `/readyz`, `/metrics`. Runs on the supervisor
//! thread, never on a worker (STYLE I.22): formatting and socket writes stay off the
//! data path. Its clients never hold the supervisor up ([`crate::clients`]): sockets
//! are non-blocking, each request has two seconds in all, at most 64 are open at once.
//! One request per connection (`Connection: close`); GET only.

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::clients::{Clients, Limits};
use crate::shared::StatsSnapshot;
use crate::sys::PollSet;

/// What `/readyz` and `/metrics` report.
#[derive(Debug, Clone, Default)]
pub struct AdminView {
    /// Summed worker counters.
    pub stats: StatsSnapshot,
    /// Workers asleep in `io_uring_enter` now.
    pub workers_sleeping: usize,
    /// Workers configured.
    pub workers: usize,
    /// Workers whose accepts are armed.
    pub workers_ready: usize,
    /// Whether the process is still accepting (not draining).
    pub accepting: bool,
    /// Version of the published table; `None` with no table (deny all).
    pub table_version: Option<u64>,
    /// Successful SIGHUP reloads.
    pub table_reloads: u64,
    /// Failed SIGHUP reloads (the old table stayed).
    pub table_reload_failures: u64,
    /// Audit events written, and sink failures.
    pub audit: crate::audit::AuditCounts,
    /// Audit events dropped because a worker's queue was full.
    pub audit_dropped: u64,
    /// TLS material reloads published (file change or SIGHUP).
    pub tls_reloads: u64,
    /// TLS material reloads refused (the old material stayed).
    pub tls_reload_failures: u64,
    /// Per TLS listener: its name and the earliest notAfter of the certificates it serves.
    pub tls_not_after: Vec<(String, i64)>,
}

impl AdminView {
    fn ready(&self) -> bool {
        self.accepting && self.workers_ready == self.workers
    }
}

/// One unlabelled sample with its HELP and TYPE lines.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// A labelled family: HELP and TYPE once, then one sample per `(label value, value)`.
/// `head` is (name, type, help).
fn family<'a, V: std::fmt::Display>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (value_of_label, value) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value_of_label}\"}} {value}");
    }
}

/// Prometheus text exposition of `v`.
pub fn metrics_text(v: &AdminView) -> String {
    let s = &v.stats;
    let mut out = String::with_capacity(2048);
    metric(
        &mut out,
        "zgate_connections_accepted_total",
        "counter",
        "Connections accepted, allowed or not.",
        s.accepted,
    );
    metric(
        &mut out,
        "zgate_connections_denied_total",
        "counter",
        "Connections closed at once because the table denied them.",
        s.denied,
    );
    metric(
        &mut out,
        "zgate_connections_over_limit_total",
        "counter",
        "Connections closed at once because the listener was full.",
        s.over_limit,
    );
    metric(
        &mut out,
        "zgate_tls_handshakes_over_limit_total",
        "counter",
        "TLS connections closed at once because the listener had max_handshakes in progress.",
        s.handshakes_over_limit,
    );
    metric(
        &mut out,
        "zgate_tls_handshakes_over_source_limit_total",
        "counter",
        "TLS connections closed at once because their source had max_handshakes_per_source in progress.",
        s.handshakes_over_source_limit,
    );
    metric(
        &mut out,
        "zgate_tls_handshakes_in_progress",
        "gauge",
        "TLS handshakes (and PostgreSQL preambles) in progress now.",
        s.handshakes_in_progress,
    );
    metric(
        &mut out,
        "zgate_upstream_connect_failures_total",
        "counter",
        "Upstream connects that failed or timed out.",
        s.upstream_connect_failures,
    );
    metric(
        &mut out,
        "zgate_upstream_connect_timeouts_total",
        "counter",
        "Upstream connects that timed out.",
        s.upstream_connect_timeouts,
    );
    metric(
        &mut out,
        "zgate_connections_active",
        "gauge",
        "Flows open now.",
        s.active,
    );
    metric(
        &mut out,
        "zgate_idle_timeouts_total",
        "counter",
        "Flows closed by the idle timeout.",
        s.idle_timeouts,
    );
    metric(
        &mut out,
        "zgate_lifetime_expiries_total",
        "counter",
        "Flows closed by max_lifetime.",
        s.lifetime_expiries,
    );
    metric(
        &mut out,
        "zgate_resets_total",
        "counter",
        "Flows ended by a reset or socket error, propagated as RST.",
        s.resets,
    );
    metric(
        &mut out,
        "zgate_accept_errors_total",
        "counter",
        "Accept errors.",
        s.accept_errors,
    );
    metric(
        &mut out,
        "zgate_worker_rearm_failures_total",
        "counter",
        "Re-arms of an accept or a worker's wake-up read that could not be queued (submission queue full, ring busy), retried on a later loop turn.",
        s.rearm_failures,
    );
    metric(
        &mut out,
        "zgate_flows_closed_by_policy_total",
        "counter",
        "Live flows closed because a re-decision (new table, expired constraints) denied them.",
        s.closed_by_policy,
    );
    metric(
        &mut out,
        "zgate_recv_buffer_starved_total",
        "counter",
        "Receives that found the provided buffer pool empty and waited for a buffer.",
        s.recv_starved,
    );
    metric(
        &mut out,
        "zgate_splice_pipes_opened_total",
        "counter",
        "Pipes opened for bulk directions to splice through (plain flows only).",
        s.pipes_opened,
    );
    metric(
        &mut out,
        "zgate_splice_pipes_open",
        "gauge",
        "Pipes open now for bulk directions to splice through.",
        s.pipes_open,
    );
    metric(
        &mut out,
        "zgate_splice_pipes_refused_total",
        "counter",
        "Bulk rounds kept on buffer receives for want of a pipe (splice_pipes reached, or the kernel refused one).",
        s.pipes_refused,
    );
    metric(
        &mut out,
        "zgate_buffers_in_use",
        "gauge",
        "Provided buffers held by flows now (data received, not yet fully sent).",
        s.buffers_in_use,
    );
    metric(
        &mut out,
        "zgate_table_loaded",
        "gauge",
        "1 when a decision table is published, 0 when every flow is denied.",
        u64::from(v.table_version.is_some()),
    );
    metric(
        &mut out,
        "zgate_table_version",
        "gauge",
        "Version of the published decision table (0 with none).",
        v.table_version.unwrap_or(0),
    );
    metric(
        &mut out,
        "zgate_table_reloads_total",
        "counter",
        "Successful table reloads.",
        v.table_reloads,
    );
    metric(
        &mut out,
        "zgate_table_reload_failures_total",
        "counter",
        "Table reloads refused (the old table stayed).",
        v.table_reload_failures,
    );
    metric(
        &mut out,
        "zgate_workers_sleeping",
        "gauge",
        "Workers asleep in io_uring_enter now (waiting for completions or their tick): an idle worker in interrupt or adaptive mode sleeps, a busy-polling one never does.",
        u64::try_from(v.workers_sleeping).unwrap_or(u64::MAX),
    );
    metric(
        &mut out,
        "zgate_worker_stalls_total",
        "counter",
        "Loop turns whose completion handling took 2 ms or more (every flow on that core waited).",
        s.stalls,
    );
    metric(
        &mut out,
        "zgate_worker_longest_turn_microseconds",
        "gauge",
        "Longest completion handling of one loop turn since start, over all workers.",
        s.longest_turn_us,
    );
    metric(
        &mut out,
        "zgate_audit_events_total",
        "counter",
        "Audit events written (or discarded with audit = off).",
        v.audit.events,
    );
    metric(
        &mut out,
        "zgate_audit_events_dropped_total",
        "counter",
        "Audit events dropped because a worker's queue was full (the data path never waits).",
        v.audit_dropped,
    );
    metric(
        &mut out,
        "zgate_audit_write_errors_total",
        "counter",
        "Audit events the sink failed to take.",
        v.audit.write_errors,
    );
    metric(
        &mut out,
        "zgate_tls_reloads_total",
        "counter",
        "TLS material reloads published (file change or SIGHUP).",
        v.tls_reloads,
    );
    metric(
        &mut out,
        "zgate_tls_reload_failures_total",
        "counter",
        "TLS material reloads refused (the old material stayed).",
        v.tls_reload_failures,
    );
    metric(
        &mut out,
        "zgate_workers",
        "gauge",
        "Workers configured.",
        u64::try_from(v.workers).unwrap_or(0),
    );
    family(
        &mut out,
        (
            "zgate_bytes_total",
            "counter",
            "Bytes forwarded, by direction.",
        ),
        "direction",
        [
            ("client_to_upstream", s.bytes_client_to_upstream),
            ("upstream_to_client", s.bytes_upstream_to_client),
        ],
    );
    metric(
        &mut out,
        "zgate_tls_handshakes_total",
        "counter",
        "TLS handshakes completed (before the decision).",
        s.tls_handshakes,
    );
    metric(
        &mut out,
        "zgate_tls_resumed_handshakes_total",
        "counter",
        "Of the TLS handshakes completed, those that resumed a session from a ticket (no certificate verification ran; see session_resumption_max_age).",
        s.tls_resumed,
    );
    metric(
        &mut out,
        "zgate_tls_truncations_total",
        "counter",
        "TLS flows aborted (RST both ways) because a side ended its stream without close_notify.",
        s.tls_truncations,
    );
    family(
        &mut out,
        (
            "zgate_tls_certificate_not_after_seconds",
            "gauge",
            "Earliest notAfter of the certificates a TLS listener serves.",
        ),
        "listener",
        v.tls_not_after.iter().map(|(name, t)| (name.as_str(), *t)),
    );
    let reasons = zgate_tls::RejectReason::labels();
    family(
        &mut out,
        (
            "zgate_tls_handshake_failures_total",
            "counter",
            "TLS flows refused before the decision, by reason.",
        ),
        "reason",
        reasons.iter().copied().zip(s.tls_failures),
    );
    metric(
        &mut out,
        "zgate_upstream_tls_handshakes_total",
        "counter",
        "TLS handshakes with upstreams completed ([listener.upstream_tls]).",
        s.upstream_tls_handshakes,
    );
    family(
        &mut out,
        (
            "zgate_upstream_tls_failures_total",
            "counter",
            "Upstream TLS sessions that failed, by reason.",
        ),
        "reason",
        reasons.iter().copied().zip(s.upstream_tls_failures),
    );
    family(
        &mut out,
        (
            "zgate_postgres_preamble_refused_total",
            "counter",
            "PostgreSQL clients refused before or at TLS, by reason.",
        ),
        "reason",
        crate::postgres::Refusal::ALL
            .iter()
            .map(|r| r.label())
            .zip(s.postgres_refused),
    );
    out
}

/// The path of an HTTP request head, if it is a `GET`.
fn request_path(head: &str) -> Option<&str> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Some(path),
        _ => None,
    }
}

/// How admin clients are served.
const LIMITS: Limits = Limits {
    max_open: 64,
    max_input: 4096,
    deadline: Duration::from_secs(2),
};
/// Connections accepted per supervisor turn.
const PER_TURN: usize = 16;

/// The admin listener and its clients.
pub struct AdminEndpoint {
    listener: TcpListener,
    clients: Clients<TcpStream>,
    polled: Option<usize>,
}

impl AdminEndpoint {
    /// Serve on `listener` (made non-blocking).
    pub fn new(listener: TcpListener) -> std::io::Result<AdminEndpoint> {
        listener.set_nonblocking(true)?;
        Ok(AdminEndpoint {
            listener,
            clients: Clients::new(LIMITS, None),
            polled: None,
        })
    }

    /// Add the listener (while it may admit more clients) and the clients to `set`.
    pub fn watch(&mut self, set: &mut PollSet) {
        self.polled = self
            .clients
            .has_room()
            .then(|| set.add(self.listener.as_raw_fd(), false));
        self.clients.watch(set);
    }

    /// The earliest client deadline, if any client is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.next_deadline()
    }

    /// One supervisor turn: accept what is pending (a few), read what clients sent, and
    /// answer each whole request head (`view` is asked only then).
    pub fn turn(&mut self, now: Instant, set: &PollSet, view: impl Fn() -> AdminView) {
        if self.polled.take().is_some_and(|i| set.ready(i)) {
            for _ in 0..PER_TURN {
                let Ok((stream, _)) = self.listener.accept() else {
                    break;
                };
                self.clients.admit(stream, now);
            }
        }
        let complete = |input: &[u8]| {
            input
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4)
        };
        self.clients
            .turn(now, set, complete, |_, head| respond(head, &view));
    }
}

/// The response to the request `head` (its bytes up to the blank line, or as much as
/// arrived).
fn respond(head: &[u8], view: &impl Fn() -> AdminView) -> Vec<u8> {
    let head = String::from_utf8_lossy(head);
    let (status, body) = match request_path(&head) {
        Some("/healthz") => ("200 OK", "ok\n".to_string()),
        Some("/readyz") if view().ready() => ("200 OK", "ready\n".to_string()),
        Some("/readyz") => ("503 Service Unavailable", "not ready\n".to_string()),
        Some("/metrics") => ("200 OK", metrics_text(&view())),
        Some(_) => ("404 Not Found", "not found\n".to_string()),
        None => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(request_path("GET /metrics HTTP/1.1\r\n"), Some("/metrics"));
        assert_eq!(request_path("POST /metrics HTTP/1.1\r\n"), None);
        assert_eq!(request_path(""), None);
    }

    #[test]
    fn metrics_carry_counters() {
        let mut v = AdminView {
            workers: 2,
            workers_ready: 2,
            accepting: true,
            table_version: Some(7),
            ..AdminView::default()
        };
        v.stats.denied = 3;
        v.stats.bytes_upstream_to_client = 11;
        let t = metrics_text(&v);
        assert!(t.contains("\nzgate_connections_denied_total 3\n"), "{t}");
        assert!(t.contains("zgate_table_version 7\n"), "{t}");
        assert!(
            t.contains("zgate_bytes_total{direction=\"upstream_to_client\"} 11\n"),
            "{t}"
        );
        assert!(v.ready());
        v.accepting = false;
        assert!(!v.ready());
    }
}
