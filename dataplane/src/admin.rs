//! The admin endpoint: `/healthz`, `/readyz`, `/metrics`. Runs on the supervisor
//! thread, never on a worker (STYLE I.22): formatting and socket writes stay off the
//! data path. Its clients never hold the supervisor up ([`crate::clients`]): sockets
//! are non-blocking, each request has two seconds in all, at most 64 are open at once.
//! One request per connection (`Connection: close`); GET only.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::clients::{Limits, Listening};
use zgate_telemetry::metrics::Exposition;

use crate::metrics::{Counters, M, P};
use crate::shared::StatsView;
use crate::sys::PollSet;
use zgate_telemetry::latency::Latencies;

/// What `/readyz` and `/metrics` report.
#[derive(Debug, Clone, Default)]
pub struct AdminView {
    /// Every worker's counters, per listener and per worker.
    pub stats: StatsView,
    /// Listener names, by index.
    pub listeners: Vec<String>,
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
    /// The control channel, with `[control]`.
    pub control: Option<crate::channel::ChannelView>,
    /// Latency histograms per listener since start, and over the last window; `None`
    /// with `[workers] latency = false` (or before the first second).
    pub latency: Option<(Vec<Latencies>, Vec<Latencies>)>,
}

impl AdminView {
    /// `/readyz`: whether to send traffic here, and why in words. With `[control]`, a
    /// gateway without a table denies everything and is not ready; one enforcing
    /// what it persisted while the control process is away is (fail static), and
    /// says so.
    fn readiness(&self) -> (bool, String) {
        let (ready, mut text) = self.readiness_core();
        if self.audit_dropped > 0 {
            // Still ready: the data path never waits for the audit writer. But say it.
            text = format!(
                "{}; audit: {} event(s) dropped (a worker's queue was full)\n",
                text.trim_end(),
                self.audit_dropped
            );
        }
        (ready, text)
    }

    fn readiness_core(&self) -> (bool, String) {
        if !self.accepting {
            return (false, "not ready: draining\n".into());
        }
        if self.workers_ready != self.workers {
            return (
                false,
                format!(
                    "not ready: {} of {} workers ready\n",
                    self.workers_ready, self.workers
                ),
            );
        }
        let Some(c) = &self.control else {
            return (true, "ready\n".into());
        };
        let Some(v) = self.table_version else {
            return (
                false,
                format!(
                    "not ready: no table, every flow is denied (fail closed); control process {}\n",
                    if c.connected {
                        "connected"
                    } else {
                        "unreachable"
                    }
                ),
            );
        };
        let source = match (c.connected, c.from_state_dir) {
            (true, false) => "from the control process".to_string(),
            (true, true) => "persisted, control process connected, update pending".to_string(),
            (false, true) => {
                "persisted in the state directory: the control process is unreachable (fail static)"
                    .to_string()
            }
            (false, false) => {
                "last received: the control process is unreachable (fail static)".to_string()
            }
        };
        // Stale facts do not make the gateway unready: it enforces what it has (fail
        // static), and an outage of the store must not take every gateway of a fleet
        // out of its load balancer at once. It says so, and `zgate_facts_stale` alarms.
        let ms = |v: u64| format!("{:.1} s", Duration::from_millis(v).as_secs_f64());
        let freshness = match c.facts_age_ms {
            None => "facts freshness unknown: no word from the control process yet".to_string(),
            Some(age) if c.stale() => format!(
                "facts STALE: last in step with their store {} ago at revision {} (alarm after {})",
                ms(age),
                c.store_revision,
                ms(c.stale_after_ms)
            ),
            Some(age) => format!(
                "facts in step with their store {} ago (revision {})",
                ms(age),
                c.store_revision
            ),
        };
        (
            true,
            format!(
                "ready: table version {v}, facts version {}, {source}; {freshness}\n",
                c.facts_version
            ),
        )
    }
}

/// Prometheus text exposition of `v`: the workers' families (`crate::metrics`, each
/// defined once there), then the supervisor's own.
pub fn metrics_text(v: &AdminView) -> String {
    let mut e = Exposition::default();
    let listeners: Vec<(&str, Counters)> = v
        .listeners
        .iter()
        .map(String::as_str)
        .zip(v.stats.listeners.iter().copied())
        .collect();
    e.workers(M::FAMILIES, M::OFFSETS, &listeners, &v.stats.workers);
    let one = |e: &mut Exposition, p: P, value: u64| e.single(p.family(), value);
    one(&mut e, P::Workers, u64::try_from(v.workers).unwrap_or(0));
    one(
        &mut e,
        P::WorkersSleeping,
        u64::try_from(v.workers_sleeping).unwrap_or(u64::MAX),
    );
    one(&mut e, P::TableLoaded, u64::from(v.table_version.is_some()));
    one(&mut e, P::TableVersion, v.table_version.unwrap_or(0));
    if let Some(c) = &v.control {
        one(&mut e, P::ControlConnected, u64::from(c.connected));
        one(&mut e, P::ControlConnects, c.connects);
        one(&mut e, P::ControlRefusals, c.refusals);
        one(&mut e, P::FactsVersion, c.facts_version);
        if let Some(age) = c.facts_age_ms {
            one(&mut e, P::FactsAge, age);
        }
        one(&mut e, P::FactsStale, u64::from(c.stale()));
        one(&mut e, P::FactsStoreRevision, c.store_revision);
        one(&mut e, P::ShadowTableVersion, c.shadow_version);
    }
    one(&mut e, P::TableReloads, v.table_reloads);
    one(&mut e, P::TableReloadFailures, v.table_reload_failures);
    one(&mut e, P::AuditEvents, v.audit.events);
    one(&mut e, P::AuditDropped, v.audit_dropped);
    one(&mut e, P::AuditWriteErrors, v.audit.write_errors);
    one(&mut e, P::TlsReloads, v.tls_reloads);
    one(&mut e, P::TlsReloadFailures, v.tls_reload_failures);
    let not_after: Vec<([(&str, &str); 1], u64)> = v
        .tls_not_after
        .iter()
        .map(|(name, t)| {
            (
                [("listener", name.as_str())],
                u64::try_from(*t).unwrap_or(0),
            )
        })
        .collect();
    e.process(
        P::TlsNotAfter.family(),
        not_after.iter().map(|(l, v)| (&l[..], *v)),
    );
    let mut out = e.finish();
    if let Some((all, _)) = &v.latency {
        let named: Vec<(&str, &Latencies)> = v
            .listeners
            .iter()
            .map(String::as_str)
            .zip(all.iter())
            .collect();
        zgate_telemetry::latency::prometheus(&mut out, &named);
    }
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
/// The admin listener and its clients.
pub struct AdminEndpoint(Listening<TcpListener>);

impl AdminEndpoint {
    /// Serve on `listener` (made non-blocking).
    pub fn new(listener: TcpListener) -> std::io::Result<AdminEndpoint> {
        listener.set_nonblocking(true)?;
        Ok(AdminEndpoint(Listening::new(listener, LIMITS, None)))
    }

    /// Add the listener (while it may admit more clients) and the clients to `set`.
    pub fn watch(&mut self, set: &mut PollSet) {
        self.0.watch(set);
    }

    /// The earliest client deadline, if any client is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.0.next_deadline()
    }

    /// One supervisor turn: accept what is pending (a few), read what clients sent, and
    /// answer each whole request head (`view` is asked only then).
    pub fn turn(&mut self, now: Instant, set: &PollSet, view: impl Fn() -> AdminView) {
        self.0
            .accept_ready(set, |clients, stream| clients.admit(stream, now));
        let complete = |input: &[u8]| {
            input
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4)
        };
        self.0
            .clients
            .turn(now, set, complete, |_, head| respond(head, &view));
    }
}

/// The response to the request `head` (its bytes up to the blank line, or as much as
/// arrived).
fn respond(head: &[u8], view: &impl Fn() -> AdminView) -> Vec<u8> {
    let head = String::from_utf8_lossy(head);
    let (status, body) = match request_path(&head) {
        Some("/healthz") => ("200 OK", "ok\n".to_string()),
        Some("/readyz") => match view().readiness() {
            (true, text) => ("200 OK", text),
            (false, text) => ("503 Service Unavailable", text),
        },
        Some("/metrics") => ("200 OK", metrics_text(&view())),
        Some("/latency") => {
            let v = view();
            match &v.latency {
                Some((all, win)) => ("200 OK", crate::latency::json(&v.listeners, all, win)),
                None => (
                    "404 Not Found",
                    "latency histograms are off ([workers] latency = false) or not taken yet\n"
                        .to_string(),
                ),
            }
        }
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

    /// Dropped audit events leave the gateway ready (the data path never waits for
    /// the writer) but `/readyz` says how many.
    #[test]
    fn readyz_says_when_audit_events_were_dropped() {
        let mut v = AdminView {
            workers: 1,
            workers_ready: 1,
            accepting: true,
            table_version: Some(3),
            ..AdminView::default()
        };
        let (ready, text) = v.readiness();
        assert!(ready, "{text}");
        assert!(!text.contains("audit"), "{text}");
        v.audit_dropped = 42;
        let (ready, text) = v.readiness();
        assert!(ready, "{text}");
        assert!(
            text.contains("audit: 42 event(s) dropped (a worker's queue was full)"),
            "{text}"
        );
        assert!(metrics_text(&v).contains("\nzgate_audit_events_dropped_total 42\n"));
    }

    #[test]
    fn metrics_carry_counters_per_listener_and_worker() {
        use crate::metrics::Count;
        let mut redis = Counters::default();
        redis.inc(M::Denied);
        redis.add_label(M::Bytes, crate::metrics::UPSTREAM_TO_CLIENT, 11);
        let mut own = Counters::default();
        own.inc(M::Stalls);
        let mut v = AdminView {
            workers: 2,
            workers_ready: 2,
            accepting: true,
            table_version: Some(7),
            listeners: vec!["redis".into()],
            ..AdminView::default()
        };
        v.stats.listeners = vec![redis];
        v.stats.workers = vec![(own, redis), (Counters::default(), Counters::default())];
        let t = metrics_text(&v);
        assert!(
            t.contains("\nzgate_connections_denied_total{listener=\"redis\",reason=\"denied-by-rule\"} 1\n"),
            "{t}"
        );
        assert!(t.contains("zgate_table_version 7\n"), "{t}");
        assert!(
            t.contains(
                "zgate_bytes_total{listener=\"redis\",direction=\"upstream_to_client\"} 11\n"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "zgate_worker_bytes_total{worker=\"0\",direction=\"upstream_to_client\"} 11\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("zgate_worker_stalls_total{worker=\"0\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("zgate_worker_stalls_total{worker=\"1\"} 0\n"),
            "{t}"
        );
        assert!(v.readiness().0);
        v.accepting = false;
        assert!(!v.readiness().0);
    }

    /// With `[control]`, readiness says where the table came from, and no table is
    /// not ready (every flow would be denied).
    #[test]
    fn readiness_with_a_control_process_says_what_is_enforced_and_from_where() {
        let mut v = AdminView {
            workers: 1,
            workers_ready: 1,
            accepting: true,
            control: Some(crate::channel::ChannelView::default()),
            ..AdminView::default()
        };
        let (ready, text) = v.readiness();
        assert!(
            !ready && text.contains("fail closed") && text.contains("unreachable"),
            "{text}"
        );
        v.table_version = Some(4);
        v.control = Some(crate::channel::ChannelView {
            from_state_dir: true,
            facts_version: 9,
            ..Default::default()
        });
        let (ready, text) = v.readiness();
        assert!(
            ready
                && text.contains("table version 4, facts version 9")
                && text.contains("fail static"),
            "{text}"
        );
        v.control = Some(crate::channel::ChannelView {
            connected: true,
            ..Default::default()
        });
        assert!(v.readiness().1.contains("from the control process"));
    }
}
