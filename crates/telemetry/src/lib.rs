//! zgate's audit trail (DESIGN "Interfaces": one JSON line per decision and per refusal,
//! never blocking the data path).
//!
//! - A worker builds an [`AuditEvent`] where it decides or refuses a flow and pushes it
//!   into its own bounded [`AuditQueue`]. A full queue drops the event and counts it
//!   (`dropped`): the data path never waits for the audit writer.
//! - The supervisor drains every worker's queue and writes each event as one JSON line
//!   ([`AuditEvent::write_json_line`]) to the configured sink.
//!
//! Text that comes from clients (SNI, certificate fields, error details that quote
//! them) is bounded to [`MAX_FIELD_LEN`] characters and JSON-escaped, so a hostile
//! certificate cannot forge lines or flood the log.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use serde::Serialize;
use zgate_table::facts::DecidedBy;

pub mod latency;
pub mod metrics;
pub mod schema;

/// Longest client-influenced text kept in an event (characters); longer is cut and
/// marked with `…`.
pub const MAX_FIELD_LEN: usize = 256;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// The decision table decided a new flow (allow or deny).
    Decision,
    /// A live flow was decided again (new table, new facts, expired constraints) and
    /// closed; `cause` says what made it decide again.
    ClosedByPolicy,
    /// The shadow table would have decided a flow otherwise than the enforced one
    /// (nothing was enforced from it); `rule` is the shadow table's.
    Shadow,
    /// A TLS client was refused before any decision (bad certificate, garbage,
    /// handshake timeout...).
    TlsRefused,
    /// A PostgreSQL client was refused before TLS (plaintext startup, stuffed bytes...).
    PreambleRefused,
    /// The TLS session toward the upstream failed.
    UpstreamTlsFailed,
    /// The upstream could not be connected (refused, unreachable, timed out): the
    /// allowed flow was closed before its first byte.
    UpstreamConnectFailed,
    /// An admitted flow ended: how long it lived, the bytes each way, and why.
    Close,
}

impl AuditKind {
    /// Every kind.
    pub const ALL: &'static [AuditKind] = &[
        AuditKind::Decision,
        AuditKind::ClosedByPolicy,
        AuditKind::Shadow,
        AuditKind::TlsRefused,
        AuditKind::PreambleRefused,
        AuditKind::UpstreamTlsFailed,
        AuditKind::UpstreamConnectFailed,
        AuditKind::Close,
    ];
}

/// Version of the audit line's schema (`docs/operations.md`, "Audit trail"); every
/// line carries it as `v`.
pub const AUDIT_SCHEMA: u32 = 4;

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The flow goes on.
    Allow,
    /// It does not.
    Deny,
}

/// The rule that decided, as a worker knows it: the version of the table it decided
/// with and what decided (the supervisor turns it into the rule's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef {
    /// The table's policy version.
    pub table_version: u64,
    /// What decided.
    pub by: DecidedBy,
}

/// More about a refusal, rendered only when the event is written (on the
/// supervisor), so a worker never formats text for an event that may be dropped.
pub type Detail = Box<dyn std::fmt::Display + Send>;

/// One audit record as a worker builds it: numbers, indices and shared strings, no
/// text formatted on the worker. The supervisor renders it
/// ([`AuditEvent::write_json_line`]), naming listeners and rules with [`Names`].
pub struct AuditEvent {
    /// Wall-clock time of the event: microseconds since the Unix epoch (the worker's
    /// loop clock, read once per batch of completions).
    pub ts_us: i64,
    /// The flow: the same id on its decision, any re-decision and its refusals.
    pub flow: u64,
    /// What happened.
    pub event: AuditKind,
    /// Worker index.
    pub worker: u16,
    /// Listener index (named by [`Names::listener`]).
    pub listener: u16,
    /// The client's address.
    pub source: SocketAddr,
    /// For decisions.
    pub verdict: Option<Verdict>,
    /// For decisions: the rule that decided.
    pub rule: Option<RuleRef>,
    /// A stable label: the decision reason (`allowed-by-rule`, `no-rule-matched`...) or
    /// the refusal reason (`expired`, `bad-spiffe-id`, `plaintext-startup`...).
    pub reason: &'static str,
    /// The verified SPIFFE ID, when there is one (shared with the flow's session).
    pub spiffe_id: Option<Arc<str>>,
    /// The SNI the client sent (shared with the flow's session).
    pub sni: Option<Arc<str>>,
    /// The TLS session was resumed from a ticket.
    pub resumed: bool,
    /// For `closed_by_policy`: what closed the flow (`policy-changed`, `revoked`,
    /// `posture`, `risk`, `grant-ended`, `schedule-ended`, `max-session`,
    /// `certificate-expired`).
    pub cause: Option<&'static str>,
    /// For `close`: bytes received from the client and from the upstream.
    pub bytes: Option<[u64; 2]>,
    /// For `close`: how long the flow lived, microseconds.
    pub duration_us: Option<u64>,
    /// More about a refusal (the TLS library's words, the kernel's), bounded when
    /// written.
    pub detail: Option<Detail>,
}

impl std::fmt::Debug for AuditEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditEvent")
            .field("ts_us", &self.ts_us)
            .field("flow", &self.flow)
            .field("event", &self.event)
            .field("listener", &self.listener)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// What the supervisor knows that an event only points at.
pub trait Names {
    /// Listener `index`'s name.
    fn listener(&self, index: u16) -> &str;
    /// The name of the rule `r` refers to (`default-deny` and the like for built-ins).
    fn rule(&self, r: RuleRef) -> std::borrow::Cow<'_, str>;
}

/// The line as written: borrowed from the event and the names.
#[derive(Serialize)]
struct Line<'a> {
    v: u32,
    ts: &'a str,
    flow: String,
    event: AuditKind,
    worker: u16,
    listener: &'a str,
    source: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<std::borrow::Cow<'a, str>>,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sni: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resumed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_client_to_upstream: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_upstream_to_client: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_us: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

impl AuditEvent {
    /// Append the event as one JSON line (with its newline) to `out`. Client-influenced
    /// text (SNI, detail) is bounded to [`MAX_FIELD_LEN`] and JSON-escaped.
    pub fn write_json_line(&self, names: &dyn Names, out: &mut impl Write) -> std::io::Result<()> {
        let ts = rfc3339_micros(self.ts_us);
        let line = Line {
            v: AUDIT_SCHEMA,
            ts: &ts,
            flow: format!("{:016x}", self.flow),
            event: self.event,
            worker: self.worker,
            listener: names.listener(self.listener),
            source: self.source,
            verdict: self.verdict,
            rule: self.rule.map(|r| names.rule(r)),
            reason: self.reason,
            spiffe_id: self.spiffe_id.as_deref(),
            sni: self.sni.as_deref().map(bounded),
            resumed: self.resumed,
            cause: self.cause,
            bytes_client_to_upstream: self.bytes.map(|b| b[0]),
            bytes_upstream_to_client: self.bytes.map(|b| b[1]),
            duration_us: self.duration_us,
            detail: self.detail.as_ref().map(|d| bounded(&d.to_string())),
        };
        serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    }
}

/// `text` cut to [`MAX_FIELD_LEN`] characters and marked with `…` (JSON escaping
/// happens when written).
pub fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_FIELD_LEN) {
        None => text.to_string(),
        Some((cut, _)) => {
            let mut s = text.get(..cut).unwrap_or_default().to_string();
            s.push('…');
            s
        }
    }
}

/// `us` microseconds after the Unix epoch as RFC 3339 UTC with microseconds:
/// `2026-12-07T09:19:57.123456Z` (whole seconds cannot order the events of one
/// millisecond).
pub fn rfc3339_micros(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One worker's outgoing events: bounded, lock-free, never blocks the pusher.
pub struct AuditQueue {
    queue: ArrayQueue<AuditEvent>,
    dropped: AtomicU64,
}

impl AuditQueue {
    /// A queue holding up to `capacity` events (at least 1).
    pub fn new(capacity: usize) -> AuditQueue {
        AuditQueue {
            queue: ArrayQueue::new(capacity.max(1)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queue the event `build` makes, or drop and count it when the queue is full,
    /// without building it (review 16.11: a worker built its text even for events it
    /// then dropped). Each queue has one pusher (its worker), so the check holds.
    pub fn push_with(&self, build: impl FnOnce() -> AuditEvent) {
        if self.queue.is_full() || self.queue.push(build()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Take the oldest queued event.
    pub fn pop(&self) -> Option<AuditEvent> {
        self.queue.pop()
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Names for Fixed {
        fn listener(&self, _: u16) -> &str {
            "redis"
        }
        fn rule(&self, r: RuleRef) -> std::borrow::Cow<'_, str> {
            match r.by {
                DecidedBy::Rule(i) => format!("rule-{i}@{}", r.table_version).into(),
                _ => "default-deny".into(),
            }
        }
    }

    fn event() -> AuditEvent {
        AuditEvent {
            ts_us: 1_780_000_000_123_456,
            flow: 0x0001_0000_0000_002a,
            event: AuditKind::Decision,
            worker: 1,
            listener: 0,
            source: "10.0.0.1:5000".parse().unwrap(),
            verdict: Some(Verdict::Allow),
            rule: Some(RuleRef {
                table_version: 7,
                by: DecidedBy::Rule(3),
            }),
            reason: "allowed-by-rule",
            spiffe_id: Some("spiffe://corp.example/ns/trading/sa/pricer".into()),
            sni: None,
            resumed: false,
            cause: None,
            bytes: None,
            duration_us: None,
            detail: None,
        }
    }

    #[test]
    fn an_event_is_one_json_line_without_absent_fields() {
        let mut out = Vec::new();
        event().write_json_line(&Fixed, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"v\":4,\"ts\":\"2026-05-28T20:26:40.123456Z\",\"flow\":\"000100000000002a\",\
             \"event\":\"decision\",\"worker\":1,\"listener\":\"redis\",\
             \"source\":\"10.0.0.1:5000\",\"verdict\":\"allow\",\"rule\":\"rule-3@7\",\
             \"reason\":\"allowed-by-rule\",\"spiffe_id\":\"spiffe://corp.example/ns/trading/sa/pricer\"}\n"
        );
        let mut resumed = event();
        resumed.resumed = true;
        let mut out = Vec::new();
        resumed.write_json_line(&Fixed, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with(
            "\"spiffe_id\":\"spiffe://corp.example/ns/trading/sa/pricer\",\"resumed\":true}\n"
        ));
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(
            rfc3339_micros(1_798_761_599_999_999),
            "2026-12-31T23:59:59.999999Z"
        );
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    /// A hostile value cannot end the line early or inject another record.
    #[test]
    fn client_text_is_escaped_and_bounded() {
        let mut e = event();
        let evil = format!(
            "evil\n{{\"event\":\"decision\"}}\u{1b}[31m{}",
            "x".repeat(1000)
        );
        e.detail = Some(Box::new(evil.clone()));
        e.sni = Some(evil.into());
        let mut out = Vec::new();
        e.write_json_line(&Fixed, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with("…\"}\n"), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        for field in ["detail", "sni"] {
            let v = parsed[field].as_str().unwrap();
            assert_eq!(v.chars().count(), MAX_FIELD_LEN + 1);
            assert!(v.starts_with("evil\n{\"event\""));
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_building_the_event() {
        let q = AuditQueue::new(2);
        let mut built = 0;
        for _ in 0..5 {
            q.push_with(|| {
                built += 1;
                event()
            });
        }
        assert_eq!(q.dropped(), 3);
        assert_eq!(built, 2, "the dropped events were never built");
        assert!(q.pop().is_some());
        assert!(q.pop().is_some());
        assert!(q.pop().is_none());
    }
}
