//! The audit line's schema, defined once: which fields every line carries, which each
//! event adds, their types and meanings. `docs/audit-schema.md` is generated from it
//! ([`markdown`], checked by a test), and [`validate`] checks a line against it (the
//! gateway's own lines are checked in its tests).

use std::fmt::Write as _;

use crate::{AuditKind, AUDIT_SCHEMA};

/// A JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A string.
    String,
    /// A non-negative integer.
    Integer,
    /// `true` or `false`.
    Boolean,
}

/// One field.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its key.
    pub name: &'static str,
    /// Its type.
    pub ty: Type,
    /// What it holds.
    pub meaning: &'static str,
}

/// The `cause` of a `close` record, by what ended the flow. The dataplane's close
/// causes are these, in this order.
pub const CLOSE_CAUSES: &[&str] = &[
    "client-fin",
    "upstream-fin",
    "client-reset",
    "upstream-reset",
    "idle-timeout",
    "max-lifetime",
    "policy",
    "drain-timeout",
    "handshake-timeout",
    "upstream-connect-failed",
    "tls-error",
    "truncated",
    "gateway-error",
    "confidentiality-limit",
    "finished",
];

/// The `cause` of a `closed_by_policy` record (and the `reason` label of
/// `zgate_flows_closed_by_policy_total`), in the dataplane's order.
pub const POLICY_CLOSE_CAUSES: &[&str] = &[
    "policy-changed",
    "revoked",
    "posture",
    "risk",
    "grant-ended",
    "schedule-ended",
    "max-session",
    "certificate-expired",
    "facts-changed",
];

/// Fields every line carries.
pub const COMMON: &[Field] = &[
    Field {
        name: "v",
        ty: Type::Integer,
        meaning: "the schema version",
    },
    Field {
        name: "ts",
        ty: Type::String,
        meaning: "RFC 3339 UTC with microseconds, the worker's loop clock",
    },
    Field {
        name: "flow",
        ty: Type::String,
        meaning: "16 hex digits, the same on every record of one flow",
    },
    Field {
        name: "event",
        ty: Type::String,
        meaning: "the event, below",
    },
    Field {
        name: "worker",
        ty: Type::Integer,
        meaning: "the worker's index",
    },
    Field {
        name: "listener",
        ty: Type::String,
        meaning: "the listener's name",
    },
    Field {
        name: "source",
        ty: Type::String,
        meaning: "the client's `ip:port`",
    },
    Field {
        name: "reason",
        ty: Type::String,
        meaning: "a stable label: the decision's reason, the refusal's, or the close's cause",
    },
];

/// Fields some events add.
pub const EXTRA: &[Field] = &[
    Field { name: "verdict", ty: Type::String, meaning: "`allow` or `deny`" },
    Field { name: "rule", ty: Type::String, meaning: "the rule that decided (its id, or `default-deny`, `revoked-identity`, `revoked-certificate`)" },
    Field { name: "spiffe_id", ty: Type::String, meaning: "the client's verified SPIFFE ID" },
    Field { name: "sni", ty: Type::String, meaning: "the SNI the client sent (at most 256 characters)" },
    Field { name: "resumed", ty: Type::Boolean, meaning: "`true` when the TLS session was resumed from a ticket (absent otherwise)" },
    Field { name: "cause", ty: Type::String, meaning: "what closed the flow" },
    Field { name: "bytes_client_to_upstream", ty: Type::Integer, meaning: "bytes received from the client" },
    Field { name: "bytes_upstream_to_client", ty: Type::Integer, meaning: "bytes received from the upstream" },
    Field { name: "duration_us", ty: Type::Integer, meaning: "how long the flow lived, microseconds" },
    Field { name: "detail", ty: Type::String, meaning: "the TLS library's or the kernel's words (at most 256 characters)" },
];

/// One event: when it is written, the fields it must and may add.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// Its `event` value.
    pub kind: AuditKind,
    /// When it is written.
    pub when: &'static str,
    /// Fields it always adds.
    pub required: &'static [&'static str],
    /// Fields it may add.
    pub optional: &'static [&'static str],
}

const TLS_PEER: &[&str] = &["spiffe_id", "sni", "resumed"];

/// Every event.
pub const EVENTS: &[Event] = &[
    Event {
        kind: AuditKind::Decision,
        when: "every new flow the table decides (plain: at accept; TLS: after the handshake)",
        required: &["verdict", "rule"],
        optional: TLS_PEER,
    },
    Event {
        kind: AuditKind::ClosedByPolicy,
        when: "a live flow a re-decision closed; `cause`: one of the policy close causes below",
        required: &["verdict", "rule", "cause"],
        optional: TLS_PEER,
    },
    Event {
        kind: AuditKind::Shadow,
        when: "the shadow table would have decided a flow otherwise (nothing enforced from it); `verdict` and `rule` are the shadow table's",
        required: &["verdict", "rule"],
        optional: &["spiffe_id", "sni"],
    },
    Event {
        kind: AuditKind::TlsRefused,
        when: "a TLS client refused before any decision",
        required: &[],
        optional: &["detail"],
    },
    Event {
        kind: AuditKind::PreambleRefused,
        when: "a `protocol = \"postgres\"` client refused before TLS",
        required: &[],
        optional: &["detail"],
    },
    Event {
        kind: AuditKind::UpstreamTlsFailed,
        when: "the TLS session toward the upstream failed",
        required: &[],
        optional: &["detail"],
    },
    Event {
        kind: AuditKind::UpstreamConnectFailed,
        when: "an allowed flow whose upstream could not be connected",
        required: &[],
        optional: &["detail"],
    },
    Event {
        kind: AuditKind::Close,
        when: "an admitted flow ended; `cause` (= `reason`): one of the close causes below",
        required: &["cause", "bytes_client_to_upstream", "bytes_upstream_to_client", "duration_us"],
        optional: &[],
    },
];

fn kind_name(k: AuditKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn field(name: &str) -> Option<&'static Field> {
    COMMON.iter().chain(EXTRA).find(|f| f.name == name)
}

fn type_ok(ty: Type, v: &serde_json::Value) -> bool {
    match ty {
        Type::String => v.is_string(),
        Type::Integer => v.is_u64(),
        Type::Boolean => v.is_boolean(),
    }
}

/// Check one audit line against the schema: every common field, the event's required
/// fields, nothing it does not know, each of the right type.
pub fn validate(line: &serde_json::Value) -> Result<(), String> {
    let obj = line.as_object().ok_or("not a JSON object")?;
    if obj.get("v").and_then(serde_json::Value::as_u64) != Some(u64::from(AUDIT_SCHEMA)) {
        return Err(format!("`v` is not {AUDIT_SCHEMA}"));
    }
    let event = obj
        .get("event")
        .and_then(serde_json::Value::as_str)
        .ok_or("no `event`")?;
    let spec = EVENTS
        .iter()
        .find(|e| kind_name(e.kind) == event)
        .ok_or_else(|| format!("unknown event `{event}`"))?;
    for f in COMMON {
        if !obj.contains_key(f.name) {
            return Err(format!("`{event}` lacks `{}`", f.name));
        }
    }
    for r in spec.required {
        if !obj.contains_key(*r) {
            return Err(format!("`{event}` lacks `{r}`"));
        }
    }
    for (k, v) in obj {
        let known = COMMON.iter().any(|f| f.name == k)
            || spec.required.contains(&k.as_str())
            || spec.optional.contains(&k.as_str());
        if !known {
            return Err(format!(
                "`{event}` has a field the schema does not give it: `{k}`"
            ));
        }
        let f = field(k).ok_or_else(|| format!("`{k}` is not in the schema"))?;
        if !type_ok(f.ty, v) {
            return Err(format!("`{k}` is not a {:?}: {v}", f.ty));
        }
    }
    let text = |k: &str| obj.get(k).and_then(serde_json::Value::as_str).unwrap_or("");
    if !is_timestamp(text("ts")) {
        return Err(format!(
            "`ts` is not RFC 3339 UTC with microseconds: {}",
            text("ts")
        ));
    }
    let flow = text("flow");
    if flow.len() != 16 || !flow.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`flow` is not 16 hex digits: {flow}"));
    }
    let causes = match spec.kind {
        AuditKind::Close => Some(CLOSE_CAUSES),
        AuditKind::ClosedByPolicy => Some(POLICY_CLOSE_CAUSES),
        _ => None,
    };
    if let Some(causes) = causes {
        let cause = text("cause");
        if !causes.contains(&cause) {
            return Err(format!("`{event}` has an unknown `cause`: {cause}"));
        }
        if spec.kind == AuditKind::Close && text("reason") != cause {
            return Err(format!(
                "`close`'s `reason` is not its `cause`: {}",
                text("reason")
            ));
        }
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, each part in its range.
fn is_timestamp(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u32>().ok())
    };
    let shape = b.len() == 27
        && [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ]
        .iter()
        .all(|(i, c)| b.get(*i) == Some(c));
    shape
        && digits(0..4).is_some()
        && digits(5..7).is_some_and(|m| (1..=12).contains(&m))
        && digits(8..10).is_some_and(|d| (1..=31).contains(&d))
        && digits(11..13).is_some_and(|h| h < 24)
        && digits(14..16).is_some_and(|m| m < 60)
        && digits(17..19).is_some_and(|s| s < 61)
        && digits(20..26).is_some()
}

/// The schema as markdown (`docs/audit-schema.md`).
pub fn markdown() -> String {
    let ty = |t: Type| match t {
        Type::String => "string",
        Type::Integer => "integer",
        Type::Boolean => "boolean",
    };
    let mut out = format!(
        "# zgate audit schema, version {AUDIT_SCHEMA} (generated)\n\nGenerated from `crates/telemetry/src/schema.rs` by its test `the_schema_doc_is_generated`; do not edit by hand. One JSON object per line; a field not listed for an event never appears on it, and an optional one is left out when it has no value.\n\n## Every line\n\n| field | type | meaning |\n| --- | --- | --- |\n"
    );
    for f in COMMON {
        let _ = writeln!(out, "| `{}` | {} | {} |", f.name, ty(f.ty), f.meaning);
    }
    out.push_str("\n## Events\n\n| `event` | when | adds | may add |\n| --- | --- | --- | --- |\n");
    for e in EVENTS {
        let list = |l: &[&str]| {
            l.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            kind_name(e.kind),
            e.when,
            list(e.required),
            list(e.optional)
        );
    }
    out.push_str("\n## Fields events add\n\n| field | type | meaning |\n| --- | --- | --- |\n");
    for f in EXTRA {
        let _ = writeln!(out, "| `{}` | {} | {} |", f.name, ty(f.ty), f.meaning);
    }
    let _ = write!(
        out,
        "\n## Close causes\n\n`close` records' `cause`: {}.\n\n`closed_by_policy` records' `cause`: {}.\n",
        CLOSE_CAUSES.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
        POLICY_CLOSE_CAUSES.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    );
    out.push_str("\n## Versions\n\n- 4: `close` causes name the side: `client-fin`, `upstream-fin`, `client-reset`, `upstream-reset` (for `finished` and `reset`), `gateway-error` and `confidentiality-limit`; `finished` stays for a clean close with no side seen first.\n- 3: the `close` event (duration, bytes each way, cause); `shadow`; `cause` on `closed_by_policy`.\n- 2: microsecond timestamps, flow ids.\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind the gateway can write has a schema entry.
    #[test]
    fn every_event_kind_is_in_the_schema() {
        for k in AuditKind::ALL {
            assert!(
                EVENTS.iter().any(|e| e.kind == *k),
                "{k:?} has no schema entry"
            );
        }
        for e in EVENTS {
            for f in e.required.iter().chain(e.optional) {
                assert!(field(f).is_some(), "{f} of {:?} is not defined", e.kind);
            }
        }
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let ok = serde_json::json!({"v": AUDIT_SCHEMA, "ts": "2026-12-07T09:19:58.402112Z",
            "flow": "00000000000000a1", "event": "close", "worker": 0, "listener": "l",
            "source": "s", "reason": "client-fin", "cause": "client-fin",
            "bytes_client_to_upstream": 1, "bytes_upstream_to_client": 2, "duration_us": 3});
        assert_eq!(validate(&ok), Ok(()));
        for (key, bad) in [
            ("ts", "2026-12-07T09:19:58Z"),
            ("ts", "2026-13-07T09:19:58.402112Z"),
            ("flow", "1"),
            ("flow", "000000000000000g"),
            ("cause", "finished-ish"),
            ("reason", "upstream-fin"),
        ] {
            let mut wrong = ok.clone();
            wrong[key] = bad.into();
            assert!(validate(&wrong).unwrap_err().contains(key), "{key} = {bad}");
        }
        let mut missing = ok.clone();
        missing.as_object_mut().unwrap().remove("duration_us");
        assert!(validate(&missing).unwrap_err().contains("duration_us"));
        let mut extra = ok.clone();
        extra["verdict"] = "allow".into();
        assert!(validate(&extra).unwrap_err().contains("verdict"));
        let mut typed = ok;
        typed["worker"] = "zero".into();
        assert!(validate(&typed).unwrap_err().contains("worker"));
    }

    /// `docs/audit-schema.md` is this schema: regenerate with
    /// `ZGATE_WRITE_AUDIT_DOC=1 cargo test -p zgate-telemetry the_schema_doc`.
    #[test]
    fn the_schema_doc_is_generated() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/audit-schema.md");
        let text = markdown();
        if std::env::var_os("ZGATE_WRITE_AUDIT_DOC").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        assert!(
            std::fs::read_to_string(path).unwrap_or_default() == text,
            "docs/audit-schema.md is out of date: ZGATE_WRITE_AUDIT_DOC=1 cargo test -p zgate-telemetry the_schema_doc"
        );
    }
}
