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

use crossbeam_queue::ArrayQueue;
use serde::Serialize;

/// Longest client-influenced text kept in an event (characters); longer is cut and
/// marked with `…`.
pub const MAX_FIELD_LEN: usize = 256;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// The decision table decided a new flow (allow or deny).
    Decision,
    /// A live flow was decided again (new table, expired constraints) and closed.
    ClosedByPolicy,
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
}

/// One audit record. Built on a worker, rendered on the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    /// Wall-clock time of the event (Unix seconds, the worker's loop clock).
    pub ts: i64,
    /// What happened.
    pub event: AuditKind,
    /// Worker index.
    pub worker: u16,
    /// Listener (service) name.
    pub listener: String,
    /// The client's address.
    pub source: SocketAddr,
    /// `allow` or `deny` for decisions; absent for refusals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'static str>,
    /// The rule that decided, or `default-deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// A stable label: the decision reason (`allowed-by-rule`, `no-rule-matched`...) or
    /// the refusal reason (`expired`, `bad-spiffe-id`, `plaintext-startup`...).
    pub reason: &'static str,
    /// The verified SPIFFE ID, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// The SNI the client sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The TLS session was resumed from a ticket: its chain was verified in an earlier
    /// full handshake (at most `session_resumption_max_age` ago). Absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// More about a refusal (the TLS library's words), bounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    /// Append the event as one JSON line (with its newline) to `out`.
    pub fn write_json_line(&self, out: &mut impl Write) -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, self).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    }
}

/// `text` cut to [`MAX_FIELD_LEN`] characters (JSON escaping happens when written).
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

    /// Queue `event`, or drop and count it when the queue is full.
    pub fn push(&self, event: AuditEvent) {
        if self.queue.push(event).is_err() {
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

    fn event() -> AuditEvent {
        AuditEvent {
            ts: 1_780_000_000,
            event: AuditKind::Decision,
            worker: 1,
            listener: "redis".into(),
            source: "10.0.0.1:5000".parse().unwrap(),
            verdict: Some("allow"),
            rule: Some("allow-trading".into()),
            reason: "allowed-by-rule",
            spiffe_id: Some("spiffe://corp.example/ns/trading/sa/pricer".into()),
            sni: None,
            resumed: false,
            detail: None,
        }
    }

    #[test]
    fn an_event_is_one_json_line_without_absent_fields() {
        let mut out = Vec::new();
        event().write_json_line(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"ts\":1780000000,\"event\":\"decision\",\"worker\":1,\"listener\":\"redis\",\
             \"source\":\"10.0.0.1:5000\",\"verdict\":\"allow\",\"rule\":\"allow-trading\",\
             \"reason\":\"allowed-by-rule\",\"spiffe_id\":\"spiffe://corp.example/ns/trading/sa/pricer\"}\n"
        );
        let mut resumed = event();
        resumed.resumed = true;
        let mut out = Vec::new();
        resumed.write_json_line(&mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with(
            "\"spiffe_id\":\"spiffe://corp.example/ns/trading/sa/pricer\",\"resumed\":true}\n"
        ));
    }

    /// A hostile value cannot end the line early or inject another record.
    #[test]
    fn client_text_is_escaped_and_bounded() {
        let mut e = event();
        e.detail = Some(bounded(&format!(
            "evil\n{{\"event\":\"decision\"}}\u{1b}[31m{}",
            "x".repeat(1000)
        )));
        let mut out = Vec::new();
        e.write_json_line(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with("…\"}\n"), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        let detail = parsed["detail"].as_str().unwrap();
        assert_eq!(detail.chars().count(), MAX_FIELD_LEN + 1);
        assert!(detail.starts_with("evil\n{\"event\""));
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let q = AuditQueue::new(2);
        for _ in 0..5 {
            q.push(event());
        }
        assert_eq!(q.dropped(), 3);
        assert!(q.pop().is_some());
        assert!(q.pop().is_some());
        assert!(q.pop().is_none());
    }
}
