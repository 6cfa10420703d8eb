//! Facts kept in a store several control processes share (a fleet, `--store etcd`):
//! each fact is one key, written by whichever control process accepted the change and
//! applied on every one of them (the writer included) from the store's ordered watch,
//! so every host applies the same changes in the same order. The store's revision is
//! the fact version the dataplanes enforce.
//!
//! This module is the store-neutral half: key names, the writes a change makes, and
//! reading events back into facts and deltas. `etcd.rs` talks to etcd.
#![cfg_attr(
    not(feature = "etcd"),
    allow(
        dead_code,
        reason = "the reading side serves the etcd store, a build feature"
    )
)]

use std::future::Future;
use std::pin::Pin;

use zgate_proto::Change;

use super::store::{Facts, GrantRecord, PostureRecord, Revocation, RiskRecord, SubjectRecord};

/// One fact change as the shared store is written: keys to put (with the instant the
/// fact ends by itself, for grants and time-bounded revocations: the elected compiler
/// deletes it then) and keys to delete, in one transaction; and what the audit line
/// will say once it is applied.
#[derive(Debug, Clone)]
pub struct PendingWrite {
    /// Keys (relative to the facts prefix), values, expiry.
    pub puts: Vec<(String, Vec<u8>, Option<i64>)>,
    /// Keys to delete.
    pub deletes: Vec<String>,
    /// Who asked.
    pub who: String,
    /// What.
    pub what: String,
    /// The detail for the audit line.
    pub detail: serde_json::Value,
}

/// A store shared by the fleet.
pub trait SharedStore: Send + Sync {
    /// Write `w` in one transaction; the store revision it made.
    fn write<'a>(
        &'a self,
        w: &'a PendingWrite,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + 'a>>;
    /// Where it is, for `status`.
    fn describe(&self) -> String;
}

/// Write `writes` in order, stopping at the first the store does not take: the highest
/// revision they made, and when the last was committed (Unix microseconds: the
/// instant the audit line gives as accepted).
pub async fn write_all(
    store: &dyn SharedStore,
    writes: &[PendingWrite],
) -> Result<(u64, i64), String> {
    let mut revision = 0;
    for w in writes {
        revision = revision.max(store.write(w).await?);
    }
    Ok((revision, super::state::now_unix_us()))
}

/// The fleet's enforced table as the shared store describes it: written last, in one
/// transaction, after every chunk it names, by the elected compiler only. A host
/// enforces a table only once its chunks hash to `chunks` and their concatenation
/// hashes to `table_sha256`, so a half-written or altered table is never enforced.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The table version (its header says the same).
    pub version: u64,
    /// SHA-256 of the encoded table, lowercase hex.
    pub table_sha256: String,
    /// SHA-256 of the policy source it was compiled from.
    pub policy_sha256: String,
    /// Rules in it.
    pub rules: usize,
    /// Its size in bytes.
    pub size: usize,
    /// SHA-256 of each chunk, in order (each chunk's key is its hash).
    pub chunks: Vec<String>,
    /// Which control process compiled it.
    pub compiled_by: String,
    /// The policy directory's git commit, when it is a work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// When (Unix seconds).
    pub at: i64,
}

/// A table the elected compiler is about to publish.
#[derive(Debug, Clone)]
pub struct FleetTable {
    /// The encoded table, stamped with `version`.
    pub bytes: Vec<u8>,
    /// Its version.
    pub version: u64,
    /// SHA-256 of its policy source.
    pub policy_sha256: String,
    /// Rules in it.
    pub rules: usize,
    /// The policy directory's git commit.
    pub git_commit: Option<String>,
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::cli::hex(&sha2::Sha256::digest(bytes))
}

/// A key component: every byte outside `[A-Za-z0-9._~:@-]` as `%XX`, so a SPIFFE ID
/// (with its slashes) stays one component.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._~:@-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes.get(i) {
            Some(b'%') => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            Some(b) => {
                out.push(*b);
                i += 1;
            }
            None => break,
        }
    }
    String::from_utf8(out).ok()
}

/// The key every write also puts (see [`KeyKind::Written`]).
pub const WRITTEN_KEY: &str = "written";

/// What a key is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `revoked/p/ID` or `revoked/f/HEX`.
    Revoked(SubjectRecord),
    /// `posture/DEVICE`.
    Posture(String),
    /// `risk/p/ID` or `risk/d/DEVICE`.
    Risk(SubjectRecord),
    /// `grant/SERVICE/ID`.
    Grant {
        /// The service.
        service: String,
        /// The SPIFFE ID.
        principal: String,
    },
    /// `written`: put by every write, with who wrote what. Its revision is the facts
    /// version, also for a write that only deletes, so a host that reads every fact
    /// agrees with one that watched each change.
    Written,
}

fn subject_key(s: &SubjectRecord) -> String {
    match s {
        SubjectRecord::Principal(p) => format!("p/{}", escape(p)),
        SubjectRecord::Fingerprint(f) => format!("f/{}", escape(f)),
        SubjectRecord::Device(d) => format!("d/{}", escape(d)),
    }
}

fn parse_subject(kind: &str, rest: &str) -> Option<SubjectRecord> {
    let v = unescape(rest)?;
    Some(match kind {
        "p" => SubjectRecord::Principal(v),
        "f" => SubjectRecord::Fingerprint(v),
        "d" => SubjectRecord::Device(v),
        _ => return None,
    })
}

/// The key (relative to the facts prefix) of `k`.
pub fn key(k: &KeyKind) -> String {
    match k {
        KeyKind::Revoked(s) => format!("revoked/{}", subject_key(s)),
        KeyKind::Posture(d) => format!("posture/{}", escape(d)),
        KeyKind::Risk(s) => format!("risk/{}", subject_key(s)),
        KeyKind::Grant { service, principal } => {
            format!("grant/{}/{}", escape(service), escape(principal))
        }
        KeyKind::Written => WRITTEN_KEY.to_string(),
    }
}

/// What a relative key is about; `None` for a key this build does not know.
pub fn parse_key(rel: &str) -> Option<KeyKind> {
    let mut parts = rel.split('/');
    match (parts.next()?, parts.next(), parts.next(), parts.next()) {
        ("revoked", Some(k), Some(v), None) => Some(KeyKind::Revoked(parse_subject(k, v)?)),
        ("posture", Some(d), None, None) => Some(KeyKind::Posture(unescape(d)?)),
        ("risk", Some(k), Some(v), None) => Some(KeyKind::Risk(parse_subject(k, v)?)),
        ("grant", Some(s), Some(p), None) => Some(KeyKind::Grant {
            service: unescape(s)?,
            principal: unescape(p)?,
        }),
        (WRITTEN_KEY, None, None, None) => Some(KeyKind::Written),
        _ => None,
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// The writes that take the store from the current facts to `next` by `changes`.
pub fn writes(
    next: &Facts,
    changes: &[Change],
    who: &str,
    what: &str,
    detail: serde_json::Value,
) -> PendingWrite {
    let mut w = PendingWrite {
        puts: Vec::new(),
        deletes: Vec::new(),
        who: who.to_string(),
        what: what.to_string(),
        detail,
    };
    let subject = |s: &zgate_proto::Subject| match s {
        zgate_proto::Subject::Principal(p) => SubjectRecord::Principal(p.clone()),
        zgate_proto::Subject::Device(d) => SubjectRecord::Device(d.clone()),
        zgate_proto::Subject::Fingerprint(f) => {
            SubjectRecord::Fingerprint(f.iter().map(|b| format!("{b:02x}")).collect())
        }
    };
    for c in changes {
        match c {
            Change::Revoke(s) => {
                let s = subject(s);
                if let Some(r) = next.revocations.iter().find(|r| r.subject == s) {
                    w.puts.push((key(&KeyKind::Revoked(s)), json(r), r.until));
                }
            }
            Change::Unrevoke(s) => w.deletes.push(key(&KeyKind::Revoked(subject(s)))),
            Change::SetPosture { device, .. } => {
                if let Some(p) = next.posture.iter().find(|p| &p.device == device) {
                    w.puts
                        .push((key(&KeyKind::Posture(device.clone())), json(p), None));
                }
            }
            Change::ClearPosture { device } => {
                w.deletes.push(key(&KeyKind::Posture(device.clone())))
            }
            Change::SetRisk { subject: s, .. } => {
                let s = subject(s);
                if let Some(r) = next.risk.iter().find(|r| r.subject == s) {
                    w.puts.push((key(&KeyKind::Risk(s)), json(r), None));
                }
            }
            Change::ClearRisk { subject: s } => w.deletes.push(key(&KeyKind::Risk(subject(s)))),
            Change::Grant {
                service,
                principal,
                until,
            } => {
                if let Some(g) = next
                    .grants
                    .iter()
                    .find(|g| &g.service == service && &g.principal == principal)
                {
                    w.puts.push((
                        key(&KeyKind::Grant {
                            service: service.clone(),
                            principal: principal.clone(),
                        }),
                        json(g),
                        Some(*until),
                    ));
                }
            }
            Change::Ungrant { service, principal } => w.deletes.push(key(&KeyKind::Grant {
                service: service.clone(),
                principal: principal.clone(),
            })),
        }
    }
    w
}

/// One event read back from the store: a key put (with its value) or deleted.
#[derive(Debug, Clone)]
pub struct StoreEvent {
    /// The key, relative to the facts prefix.
    pub key: String,
    /// The value written; `None` for a delete.
    pub value: Option<Vec<u8>>,
}

/// Apply `events` to `facts`; the changes a dataplane needs for them. Keys or values
/// this build cannot read are skipped and named in the returned list of problems.
pub fn apply_events(facts: &mut Facts, events: &[StoreEvent]) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut problems = Vec::new();
    for ev in events {
        let Some(kind) = parse_key(&ev.key) else {
            problems.push(format!("unknown key `{}`", ev.key));
            continue;
        };
        let bad = |problems: &mut Vec<String>, e: String| {
            problems.push(format!("`{}`: {e}", ev.key));
        };
        // A value must be about its key: the key is what deletes it later, and what
        // the dataplanes are told.
        let mismatch = || "the value is about another subject than its key".to_string();
        match (kind, &ev.value) {
            (KeyKind::Revoked(s), Some(v)) => match serde_json::from_slice::<Revocation>(v) {
                Ok(r) if r.subject != s => bad(&mut problems, mismatch()),
                Ok(r) => {
                    facts.revocations.retain(|x| x.subject != s);
                    if let Some(sub) = s.to_subject() {
                        changes.push(Change::Revoke(sub));
                    }
                    facts.revocations.push(r);
                }
                Err(e) => bad(&mut problems, e.to_string()),
            },
            (KeyKind::Revoked(s), None) => {
                facts.revocations.retain(|x| x.subject != s);
                if let Some(sub) = s.to_subject() {
                    changes.push(Change::Unrevoke(sub));
                }
            }
            (KeyKind::Posture(d), Some(v)) => match serde_json::from_slice::<PostureRecord>(v) {
                Ok(p) if p.device != d => bad(&mut problems, mismatch()),
                Ok(p) => {
                    facts.posture.retain(|x| x.device != d);
                    changes.push(Change::SetPosture {
                        device: d,
                        posture: p.posture(),
                    });
                    facts.posture.push(p);
                }
                Err(e) => bad(&mut problems, e.to_string()),
            },
            (KeyKind::Posture(d), None) => {
                facts.posture.retain(|x| x.device != d);
                changes.push(Change::ClearPosture { device: d });
            }
            (KeyKind::Risk(s), Some(v)) => match serde_json::from_slice::<RiskRecord>(v) {
                Ok(r) if r.subject != s => bad(&mut problems, mismatch()),
                Ok(r) => {
                    facts.risk.retain(|x| x.subject != s);
                    if let Some(sub) = s.to_subject() {
                        changes.push(Change::SetRisk {
                            subject: sub,
                            score: r.score,
                        });
                    }
                    facts.risk.push(r);
                }
                Err(e) => bad(&mut problems, e.to_string()),
            },
            (KeyKind::Risk(s), None) => {
                facts.risk.retain(|x| x.subject != s);
                if let Some(sub) = s.to_subject() {
                    changes.push(Change::ClearRisk { subject: sub });
                }
            }
            (KeyKind::Grant { service, principal }, Some(v)) => {
                match serde_json::from_slice::<GrantRecord>(v) {
                    Ok(g) if g.service != service || g.principal != principal => {
                        bad(&mut problems, mismatch())
                    }
                    Ok(g) => {
                        facts
                            .grants
                            .retain(|x| !(x.service == service && x.principal == principal));
                        changes.push(Change::Grant {
                            service,
                            principal,
                            until: g.until,
                        });
                        facts.grants.push(g);
                    }
                    Err(e) => bad(&mut problems, e.to_string()),
                }
            }
            (KeyKind::Grant { service, principal }, None) => {
                facts
                    .grants
                    .retain(|x| !(x.service == service && x.principal == principal));
                changes.push(Change::Ungrant { service, principal });
            }
            (KeyKind::Written, _) => {}
        }
    }
    (changes, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_whatever_the_names_hold() {
        for k in [
            KeyKind::Revoked(SubjectRecord::Principal(
                "spiffe://corp.example/ns/a b/%x".into(),
            )),
            KeyKind::Revoked(SubjectRecord::Fingerprint("ab".repeat(32))),
            KeyKind::Posture("laptop/7".into()),
            KeyKind::Risk(SubjectRecord::Device("d".into())),
            KeyKind::Written,
            KeyKind::Grant {
                service: "redis".into(),
                principal: "spiffe://corp.example/ops/bob".into(),
            },
        ] {
            let text = key(&k);
            assert_eq!(parse_key(&text), Some(k), "{text}");
        }
        assert_eq!(parse_key("revoked/x/y"), None);
        assert_eq!(parse_key("grant/a"), None);
        assert_eq!(parse_key("posture/%zz"), None);
    }

    fn sample() -> Facts {
        Facts {
            version: 0,
            origin: None,
            through: 0,
            revocations: vec![Revocation {
                subject: SubjectRecord::Principal("spiffe://corp.example/ns/x/sa/mallory".into()),
                reason: Some("INC-1".into()),
                until: Some(2_000_000_000),
                by: "uid 0".into(),
                at: 1,
            }],
            posture: vec![PostureRecord {
                device: "laptop-7".into(),
                managed: true,
                compliant: true,
                edr_running: false,
                compromised: false,
                os_patch: 3,
                by: "uid 0".into(),
                at: 1,
            }],
            risk: vec![RiskRecord {
                subject: SubjectRecord::Device("laptop-7".into()),
                score: 70,
                by: "uid 0".into(),
                at: 1,
            }],
            grants: vec![GrantRecord {
                service: "redis".into(),
                principal: "spiffe://corp.example/ns/ops/sa/bob".into(),
                until: 2_000_000_000,
                reason: "INC-2".into(),
                by: "uid 0".into(),
                at: 1,
            }],
        }
    }

    /// Every fact written as keys and read back (as a watch or a full read sees them)
    /// is the same fact, with the same changes for the dataplanes.
    #[test]
    fn facts_written_read_back_are_the_same_facts() {
        let facts = sample();
        let w = writes(
            &facts,
            &facts.changes(),
            "uid 0",
            "test",
            serde_json::json!({}),
        );
        assert_eq!(w.puts.len(), 4);
        let ends: Vec<Option<i64>> = w.puts.iter().map(|p| p.2).collect();
        assert_eq!(
            ends.iter().filter(|e| e.is_some()).count(),
            2,
            "grant and revocation end by themselves"
        );
        let events: Vec<StoreEvent> = w
            .puts
            .iter()
            .map(|(k, v, _)| StoreEvent {
                key: k.clone(),
                value: Some(v.clone()),
            })
            .collect();
        let mut back = Facts::default();
        let (changes, problems) = apply_events(&mut back, &events);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(back, facts);
        assert_eq!(changes, facts.changes());
        // Deleting every key empties the set again.
        let deletes: Vec<StoreEvent> = events
            .iter()
            .map(|e| StoreEvent {
                key: e.key.clone(),
                value: None,
            })
            .collect();
        let (changes, problems) = apply_events(&mut back, &deletes);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(changes.len(), 4);
        assert_eq!(back, Facts::default());
    }

    /// A value under another subject's key, a value that is not JSON, and a key this
    /// build does not know are skipped by name; nothing else is touched.
    #[test]
    fn values_that_do_not_match_their_key_are_refused() {
        let facts = sample();
        let w = writes(
            &facts,
            &facts.changes(),
            "uid 0",
            "test",
            serde_json::json!({}),
        );
        let revoked = w.puts.iter().find(|p| p.0.starts_with("revoked/")).unwrap();
        let events = vec![
            StoreEvent {
                key: "revoked/p/spiffe:%2F%2Fcorp.example%2Fsomeone-else".into(),
                value: Some(revoked.1.clone()),
            },
            StoreEvent {
                key: "posture/laptop-7".into(),
                value: Some(b"{not json".to_vec()),
            },
            StoreEvent {
                key: "quota/x".into(),
                value: Some(b"{}".to_vec()),
            },
        ];
        let mut back = Facts::default();
        let (changes, problems) = apply_events(&mut back, &events);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("another subject"), "{problems:?}");
        assert!(changes.is_empty());
        assert_eq!(back, Facts::default());
    }
}
