//! The audit writer: on the supervisor thread, drains every worker's
//! [`AuditQueue`] and writes each event as one JSON line to the configured sink
//! (`audit = "stderr" | "off" | PATH`). Workers never wait for it: a full queue drops
//! and counts (DESIGN "Interfaces": never blocking the data path).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use zgate_table::facts::DecidedBy;
use zgate_table::DecisionTable;
use zgate_telemetry::{AuditQueue, Names, RuleRef};

use crate::config::AuditSink;

/// Tables kept for naming rules: a worker may still be deciding with the last few.
const TABLES_KEPT: usize = 8;

/// What the supervisor names audit events by: its listeners, and the tables it
/// published lately (an event names its rule by table version and index).
pub struct AuditNames {
    listeners: Vec<String>,
    tables: VecDeque<Arc<DecisionTable>>,
}

impl AuditNames {
    /// Listener names, by index.
    pub fn new(listeners: Vec<String>) -> AuditNames {
        AuditNames {
            listeners,
            tables: VecDeque::new(),
        }
    }

    /// A table was published: its rules can now be named.
    pub fn published(&mut self, table: Option<Arc<DecisionTable>>) {
        if let Some(t) = table {
            if self.tables.len() == TABLES_KEPT {
                self.tables.pop_front();
            }
            self.tables.push_back(t);
        }
    }
}

impl Names for AuditNames {
    fn listener(&self, index: u16) -> &str {
        self.listeners
            .get(usize::from(index))
            .map_or("?", String::as_str)
    }

    fn rule(&self, r: RuleRef) -> Cow<'_, str> {
        match r.by {
            DecidedBy::Rule(i) => self
                .tables
                .iter()
                .rev()
                .find(|t| t.version() == r.table_version)
                .map_or_else(
                    || Cow::Owned(format!("rule #{i} of table version {}", r.table_version)),
                    |t| Cow::Borrowed(t.decided_by_name(r.by)),
                ),
            DecidedBy::DefaultDeny => "default-deny".into(),
            DecidedBy::RevokedIdentity => "revoked-identity".into(),
            DecidedBy::RevokedCertificate => "revoked-certificate".into(),
        }
    }
}

/// Where the lines go.
enum Out {
    Stderr,
    File(PathBuf, BufWriter<File>),
    Off,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditCounts {
    /// Events written (or, with `audit = "off"`, taken and discarded).
    pub events: u64,
    /// Events that could not be written (the sink failed).
    pub write_errors: u64,
}

/// Drains worker queues into the sink.
pub struct AuditWriter {
    out: Out,
    counts: AuditCounts,
    line: Vec<u8>,
}

fn open(path: &Path) -> io::Result<File> {
    // Audit records name identities: not world-readable.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl AuditWriter {
    /// Open the sink (a file is created if missing and appended to).
    pub fn new(sink: &AuditSink) -> io::Result<AuditWriter> {
        let out = match sink {
            AuditSink::Stderr => Out::Stderr,
            AuditSink::Off => Out::Off,
            AuditSink::File(p) => Out::File(p.clone(), BufWriter::new(open(p)?)),
        };
        Ok(AuditWriter {
            out,
            counts: AuditCounts::default(),
            line: Vec::with_capacity(512),
        })
    }

    /// Write every queued event of every queue, then flush. Bounded per call so a
    /// flood cannot keep the supervisor from its signals: at most `budget` events.
    pub fn drain<'a>(
        &mut self,
        queues: impl Iterator<Item = &'a AuditQueue>,
        budget: usize,
        names: &dyn Names,
    ) {
        let mut left = budget;
        let stderr = io::stderr();
        let mut err_lock = matches!(self.out, Out::Stderr).then(|| stderr.lock());
        for q in queues {
            while left > 0 {
                let Some(e) = q.pop() else { break };
                left -= 1;
                self.line.clear();
                let rendered = e.write_json_line(names, &mut self.line);
                let written = rendered.and_then(|()| match (&mut self.out, err_lock.as_mut()) {
                    (Out::Stderr, Some(l)) => l.write_all(&self.line),
                    (Out::File(_, f), _) => f.write_all(&self.line),
                    _ => Ok(()),
                });
                match written {
                    Ok(()) => self.counts.events += 1,
                    Err(_) => self.counts.write_errors += 1,
                }
            }
        }
        let flushed = match (&mut self.out, err_lock.as_mut()) {
            (Out::File(_, f), _) => f.flush(),
            (Out::Stderr, Some(l)) => l.flush(),
            _ => Ok(()),
        };
        if flushed.is_err() {
            self.counts.write_errors += 1;
        }
    }

    /// SIGHUP: reopen the file (after logrotate moved it). On failure the old handle
    /// stays and the error is returned for the log.
    pub fn reopen(&mut self) -> io::Result<()> {
        if let Out::File(path, w) = &mut self.out {
            let _ = w.flush();
            *w = BufWriter::new(open(path)?);
        }
        Ok(())
    }

    /// The counters.
    pub fn counts(&self) -> AuditCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zgate_telemetry::{AuditEvent, AuditKind, Verdict};

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            ts_us: n * 1_000_000,
            flow: 1,
            event: AuditKind::Decision,
            worker: 0,
            listener: 0,
            source: "127.0.0.1:1".parse().unwrap(),
            verdict: Some(Verdict::Deny),
            rule: Some(RuleRef {
                table_version: 1,
                by: DecidedBy::DefaultDeny,
            }),
            reason: "no-rule-matched",
            spiffe_id: None,
            sni: None,
            resumed: false,
            cause: None,
            bytes: None,
            duration_us: None,
            detail: None,
        }
    }

    #[test]
    fn events_are_appended_as_lines_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let names = AuditNames::new(vec!["redis".into()]);
        let mut w = AuditWriter::new(&AuditSink::File(path.clone())).unwrap();
        let q = AuditQueue::new(8);
        q.push_with(|| event(1));
        q.push_with(|| event(2));
        w.drain([&q].into_iter(), 1, &names);
        assert_eq!(w.counts().events, 1, "the budget bounds one drain");
        w.drain([&q].into_iter(), 100, &names);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.starts_with("{\"v\":4,\"ts\":\"1970-01-01T00:00:01.000000Z\","),
            "{text}"
        );
        assert!(text.contains("\"listener\":\"redis\""), "{text}");
        assert!(text.contains("\"rule\":\"default-deny\""), "{text}");
        // logrotate: move the file away, SIGHUP, the next line goes to a new file.
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        w.reopen().unwrap();
        q.push_with(|| event(3));
        w.drain([&q].into_iter(), 100, &names);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(
            w.counts(),
            AuditCounts {
                events: 3,
                write_errors: 0
            }
        );
    }
}
