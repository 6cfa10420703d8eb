//! Every counter and gauge of `/metrics`, defined once (review 16 seams; issue 17):
//! name, kind, scope, unit, help and labels here, and nowhere else. A worker counts
//! into one [`Counters`] per listener and one of its own ([`M`]); the supervisor sums
//! them per listener for `/metrics` (`listener` label), renders the worker families per
//! worker (`worker` label), and adds its own ([`P`]). `docs/metrics.md` is generated
//! from these lists (`zgate_telemetry::metrics::markdown_table`, checked by a test).

use zgate_telemetry::metrics;

zgate_telemetry::metric_families! {
    /// A worker's metric families.
    pub enum M;
    /// Connections accepted.
    Accepted => "zgate_connections_accepted_total", Counter, Listener,
        "Connections accepted, allowed or not.", per_worker: true;
    /// Closed at once: the table denied them.
    Denied => "zgate_connections_denied_total", Counter, Listener,
        "Connections closed at once because the table denied them (TLS ones after the handshake, with access_denied), by the reason their decision record gives.",
        by "reason" = crate::worker::decide::Refusal::DENIAL_LABELS;
    /// Closed at once: the listener was full.
    OverLimit => "zgate_connections_over_limit_total", Counter, Listener,
        "Connections closed at once because the listener was at max_connections.";
    /// Closed at once: max_handshakes in progress.
    HandshakesOverLimit => "zgate_tls_handshakes_over_limit_total", Counter, Listener,
        "TLS connections closed at once because the listener had max_handshakes in progress.";
    /// Closed at once: max_handshakes_per_source in progress.
    HandshakesOverSourceLimit => "zgate_tls_handshakes_over_source_limit_total", Counter, Listener,
        "TLS connections closed at once because their source had max_handshakes_per_source in progress.";
    /// Handshakes (and PostgreSQL preambles) in progress now.
    HandshakesInProgress => "zgate_tls_handshakes_in_progress", Gauge, Listener,
        "TLS handshakes (and PostgreSQL preambles) in progress now.";
    /// Upstream connects that failed.
    UpstreamConnectFailures => "zgate_upstream_connect_failures_total", Counter, Listener,
        "Upstream connects that failed (refused, unreachable, timed out, no socket).";
    /// Of those, the timeouts.
    UpstreamConnectTimeouts => "zgate_upstream_connect_timeouts_total", Counter, Listener,
        "Upstream connects that timed out (connect_timeout).";
    /// Flows open now.
    Active => "zgate_connections_active", Gauge, Listener,
        "Flows open now (connecting, in a handshake, or forwarding).", per_worker: true;
    /// Bytes received, by direction.
    Bytes => "zgate_bytes_total", Counter, Listener,
        "Bytes received from clients (client_to_upstream) and from upstreams (upstream_to_client).",
        by "direction" = ["client_to_upstream", "upstream_to_client"], per_worker: true;
    /// Closed by the idle timeout.
    IdleTimeouts => "zgate_idle_timeouts_total", Counter, Listener,
        "Flows closed by idle_timeout.";
    /// Closed by max_lifetime.
    LifetimeExpiries => "zgate_lifetime_expiries_total", Counter, Listener,
        "Flows closed by max_lifetime.";
    /// Ended by a reset or socket error, passed on as RST.
    Resets => "zgate_resets_total", Counter, Listener,
        "Flows ended by a reset or socket error on either side, passed on as RST.";
    /// Accept errors.
    AcceptErrors => "zgate_accept_errors_total", Counter, Listener,
        "Accepts that failed (out of descriptors: the connection waits in the listen queue and the accept is retried on the next tick).";
    /// Closed by a re-decision.
    ClosedByPolicy => "zgate_flows_closed_by_policy_total", Counter, Listener,
        "Live flows closed because a re-decision no longer allows them, by what closed them: a new table (policy-changed), a revocation, a posture or risk report, a grant that ended, a schedule window that ended, max_session, or an expired certificate.",
        by "reason" = crate::worker::CloseReason::LABELS;
    /// Decisions the shadow table would make otherwise.
    ShadowDifferences => "zgate_shadow_differences_total", Counter, Listener,
        "Decisions (of new flows, and of live flows when the shadow table or the facts changed) that the shadow table would have made otherwise than the enforced one.";
    /// Receives that found the pool empty.
    RecvStarved => "zgate_recv_buffer_starved_total", Counter, Listener,
        "Receives that found the provided buffer pool empty and waited for a buffer.";
    /// Pipes opened to splice through.
    PipesOpened => "zgate_splice_pipes_opened_total", Counter, Listener,
        "Pipes opened for bulk directions of plain flows to splice through (one per busy spell).";
    /// Bulk rounds kept on buffer receives for want of a pipe.
    PipesRefused => "zgate_splice_pipes_refused_total", Counter, Listener,
        "Bulk rounds kept on buffer receives for want of a pipe (splice_pipes reached, or the kernel refused one).";
    /// TLS handshakes completed.
    TlsHandshakes => "zgate_tls_handshakes_total", Counter, Listener,
        "TLS handshakes completed (before the decision).";
    /// Of those, resumed.
    TlsResumed => "zgate_tls_resumed_handshakes_total", Counter, Listener,
        "Of the TLS handshakes completed, those that resumed a session from a ticket (no certificate verification ran; see session_resumption_max_age).";
    /// Flows aborted for a bare FIN where close_notify was due.
    TlsTruncations => "zgate_tls_truncations_total", Counter, Listener,
        "TLS flows aborted (RST both ways) because a side ended its stream without close_notify.";
    /// TLS clients refused before the decision, by reason.
    TlsFailures => "zgate_tls_handshake_failures_total", Counter, Listener,
        "TLS flows refused before the decision (or ended by a bad record), by reason.",
        by "reason" = zgate_tls::RejectReason::LABELS;
    /// Fatal alerts sent to TLS clients, by alert.
    TlsAlertsSent => "zgate_tls_alerts_sent_total", Counter, Listener,
        "Fatal TLS alerts sent to clients (a refused handshake, a denied flow, a bad record), by alert.",
        by "alert" = zgate_tls::Alert::LABELS;
    /// Fatal alerts received from TLS clients, by alert.
    TlsAlertsReceived => "zgate_tls_alerts_received_total", Counter, Listener,
        "Fatal TLS alerts received from clients (e.g. unknown_ca: the client does not trust the gateway's certificate), by alert; `other` for alerts zgate does not name.",
        by "alert" = zgate_tls::Alert::LABELS;
    /// PostgreSQL clients refused before or at TLS, by reason.
    PostgresRefused => "zgate_postgres_preamble_refused_total", Counter, Listener,
        "PostgreSQL clients refused before or at TLS, by reason.",
        by "reason" = crate::postgres::REFUSAL_LABELS;
    /// Upstream TLS handshakes completed.
    UpstreamTlsHandshakes => "zgate_upstream_tls_handshakes_total", Counter, Listener,
        "TLS handshakes with upstreams completed ([listener.upstream_tls]).";
    /// Upstream TLS sessions that failed, by reason.
    UpstreamTlsFailures => "zgate_upstream_tls_failures_total", Counter, Listener,
        "Upstream TLS sessions that failed, by reason.",
        by "reason" = zgate_tls::RejectReason::LABELS;
    /// Loop turns that took 2 ms or more.
    Stalls => "zgate_worker_stalls_total", Counter, Worker,
        "Loop turns whose completion handling took 2 ms or more (every flow on that core waited).";
    /// The longest loop turn so far.
    LongestTurn => "zgate_worker_longest_turn_seconds", Max, Worker,
        "Longest completion handling of one loop turn since start.", stored: Micros;
    /// Pool buffers held by flows now.
    BuffersInUse => "zgate_buffers_in_use", Gauge, Worker,
        "Provided buffers held by flows now (data received, not yet fully sent).";
    /// Splice pipes open now.
    PipesOpen => "zgate_splice_pipes_open", Gauge, Worker,
        "Pipes open now for bulk directions to splice through.";
    /// The longest slice of a full re-decision.
    LongestSlice => "zgate_worker_longest_redecision_slice_seconds", Max, Worker,
        "Longest loop time spent re-deciding live flows in one turn: a slice of a new table's (or fact set's) pass over every flow, bounded at about 200 microseconds, or the flows a fact delta names, closes included.", stored: Micros;
    /// The longest loop turn while a re-decision ran.
    LongestSweepTurn => "zgate_worker_longest_redecision_turn_seconds", Max, Worker,
        "Longest loop turn (top to top: a re-decision slice, the completions, the submit) while live flows were being decided again: what the core's other flows waited at most meanwhile.", stored: Micros;
    /// How long the last full re-decision took.
    LastSweep => "zgate_worker_last_redecision_seconds", Gauge, Worker,
        "Time from a new table (or fact set) reaching the worker to every live flow decided by it, for the last one.", stored: Micros;
    /// The table version the worker enforces on every live flow.
    EnforcedTable => "zgate_worker_table_version", Gauge, Worker,
        "Table version the worker enforces: every live flow has been decided by it.";
    /// Flows waiting for a re-decision by a new table.
    RedecisionsPending => "zgate_redecisions_pending", Gauge, Worker,
        "Live flows not yet decided again by the newest table or fact set (a full re-decision runs in bounded slices across loop turns).";
    /// Re-arms that could not be queued.
    RearmFailures => "zgate_worker_rearm_failures_total", Counter, Worker,
        "Re-arms of an accept or of the worker's wake-up read that could not be queued (submission queue full, ring busy), retried on a later loop turn.";
}

zgate_telemetry::metric_families! {
    /// The supervisor's own metric families (rendered by `admin::metrics_text`).
    pub enum P;
    /// Workers configured.
    Workers => "zgate_workers", Gauge, Process, "Workers configured.";
    /// Workers asleep now.
    WorkersSleeping => "zgate_workers_sleeping", Gauge, Process,
        "Workers asleep in io_uring_enter now (waiting for completions or their tick): an idle worker in interrupt or adaptive mode sleeps, a busy-polling one never does.";
    /// A table is published.
    TableLoaded => "zgate_table_loaded", Gauge, Process,
        "1 when a decision table is published, 0 when every flow is denied.";
    /// The published table's version.
    TableVersion => "zgate_table_version", Gauge, Process,
        "Version of the published decision table (0 with none).";
    /// The control channel is up.
    ControlConnected => "zgate_control_connected", Gauge, Process,
        "1 while the control channel is up ([control]).";
    /// Connections made to the control process.
    ControlConnects => "zgate_control_connects_total", Counter, Process,
        "Connections made to the control process.";
    /// Channels closed for what they carried.
    ControlRefusals => "zgate_control_refusals_total", Counter, Process,
        "Control channels closed because of what was received (malformed, out of order, older than enforced); nothing enforced changed.";
    /// The fact set's version.
    FactsVersion => "zgate_facts_version", Gauge, Process,
        "Version of the live fact set enforced (revocations, posture, risk, grants).";
    /// How stale the facts are.
    FactsAge => "zgate_facts_age_seconds", Gauge, Process,
        "How long ago the control process was last in step with its fact store (a fleet's etcd, or its state directory): the staleness of the facts enforced.", stored: Millis;
    /// Facts past stale_after.
    FactsStale => "zgate_facts_stale", Gauge, Process,
        "1 when the facts are older than [control] stale_after (or of unknown age): the gateway still enforces them (fail static).";
    /// The fact store's revision.
    FactsStoreRevision => "zgate_facts_store_revision", Gauge, Process,
        "The fact store's revision the control process was last in step with.";
    /// The shadow table's version.
    ShadowTableVersion => "zgate_shadow_table_version", Gauge, Process,
        "Version of the table evaluated in shadow (0: none).";
    /// Table reloads taken.
    TableReloads => "zgate_table_reloads_total", Counter, Process,
        "Successful table reloads.";
    /// Table reloads refused.
    TableReloadFailures => "zgate_table_reload_failures_total", Counter, Process,
        "Table reloads refused (the old table stayed).";
    /// Audit events written.
    AuditEvents => "zgate_audit_events_total", Counter, Process,
        "Audit events written (or discarded with audit = off).";
    /// Audit events dropped.
    AuditDropped => "zgate_audit_events_dropped_total", Counter, Process,
        "Audit events dropped because a worker's queue was full (the data path never waits).";
    /// Audit write errors.
    AuditWriteErrors => "zgate_audit_write_errors_total", Counter, Process,
        "Audit events that could not be written (the sink failed).";
    /// TLS reloads published.
    TlsReloads => "zgate_tls_reloads_total", Counter, Process,
        "TLS material reloads published (a listener's files changed, or SIGHUP).";
    /// TLS reloads refused.
    TlsReloadFailures => "zgate_tls_reload_failures_total", Counter, Process,
        "TLS material reloads refused (the old material stayed).";
    /// Certificates' earliest notAfter.
    TlsNotAfter => "zgate_tls_certificate_not_after_seconds", Gauge, Listener,
        "Earliest notAfter of the certificates a TLS listener serves (Unix seconds).";
}

/// Every family `/metrics` can show but the latency histograms: the workers' and the
/// supervisor's.
pub fn all_families() -> impl Iterator<Item = &'static metrics::Family> {
    M::FAMILIES.iter().chain(P::FAMILIES)
}

/// One owner's counters (a listener's on one worker, or a worker's own).
pub type Counters = metrics::Counters<{ M::SLOTS }>;
/// Their published copy.
pub type SharedCounters = metrics::Shared<{ M::SLOTS }>;

/// Counting by family, for the worker code.
pub trait Count {
    /// One more.
    fn inc(&mut self, m: M);
    /// `n` more.
    fn add(&mut self, m: M, n: u64);
    /// `n` more for label value `label`.
    fn add_label(&mut self, m: M, label: usize, n: u64);
    /// A gauge's value now.
    fn set_gauge(&mut self, m: M, v: u64);
    /// The value (the first label's).
    fn value(&self, m: M) -> u64;
    /// The value summed over every label value.
    fn total(&self, m: M) -> u64;
}

impl Count for Counters {
    #[inline]
    fn inc(&mut self, m: M) {
        self.bump(M::OFFSETS, m as usize);
    }
    #[inline]
    fn add(&mut self, m: M, n: u64) {
        self.add_at(M::OFFSETS, m as usize, 0, n);
    }
    #[inline]
    fn add_label(&mut self, m: M, label: usize, n: u64) {
        self.add_at(M::OFFSETS, m as usize, label, n);
    }
    #[inline]
    fn set_gauge(&mut self, m: M, v: u64) {
        self.set(M::OFFSETS, m as usize, v);
    }
    fn value(&self, m: M) -> u64 {
        self.get(M::OFFSETS, m as usize, 0)
    }
    fn total(&self, m: M) -> u64 {
        let width = M::FAMILIES.get(m as usize).map_or(1, |f| f.width());
        (0..width)
            .map(|l| self.get(M::OFFSETS, m as usize, l))
            .sum()
    }
}

/// Direction labels of [`M::Bytes`].
pub const CLIENT_TO_UPSTREAM: usize = 0;
/// See [`CLIENT_TO_UPSTREAM`].
pub const UPSTREAM_TO_CLIENT: usize = 1;

#[cfg(test)]
mod tests {
    use super::*;

    /// Names, types and units as Prometheus wants them (what `promtool check metrics`
    /// lints), for both lists and the workers' per-worker copies.
    #[test]
    fn names_follow_the_prometheus_conventions() {
        let all: Vec<metrics::Family> = all_families().copied().collect();
        assert_eq!(metrics::naming_problems(&all), Vec::<String>::new());
        let mut names: Vec<String> = all.iter().map(|f| f.name.to_string()).collect();
        names.extend(
            all.iter()
                .filter(|f| f.per_worker)
                .map(metrics::Family::worker_name),
        );
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a name is declared twice");
    }

    /// `docs/metrics.md` lists every family from these lists: regenerate it with
    /// `ZGATE_WRITE_METRICS_DOC=1 cargo test -p zgate-dataplane metrics_doc`.
    #[test]
    fn metrics_doc_is_generated_from_the_one_list() {
        let all: Vec<metrics::Family> = all_families().copied().collect();
        let table = format!(
            "{}{}",
            metrics::markdown_table(&all),
            zgate_telemetry::latency::markdown_rows()
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let text = format!(
            "# zgate metrics (generated)\n\nGenerated from `dataplane/src/metrics.rs` by its test \
             `metrics_doc_is_generated_from_the_one_list`; do not edit by hand. Values kept \
             in micro- or milliseconds are rendered in seconds, as Prometheus wants base \
             units.\n\n{table}"
        );
        if std::env::var_os("ZGATE_WRITE_METRICS_DOC").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == text,
            "docs/metrics.md is out of date: ZGATE_WRITE_METRICS_DOC=1 cargo test -p zgate-dataplane metrics_doc"
        );
    }
}
