//! The audit writer: on the supervisor thread, drains every worker's
//! [`AuditQueue`] and writes each event as one JSON line to the configured sink
//! (`audit = "stderr" | "off" | PATH`). Workers never wait for it: a full queue drops
//! and counts (DESIGN "Interfaces": never blocking the data path).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zgate_telemetry::AuditQueue;

use crate::config::AuditSink;

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
    pub fn drain<'a>(&mut self, queues: impl Iterator<Item = &'a AuditQueue>, budget: usize) {
        let mut left = budget;
        let stderr = io::stderr();
        let mut err_lock = matches!(self.out, Out::Stderr).then(|| stderr.lock());
        for q in queues {
            while left > 0 {
                let Some(e) = q.pop() else { break };
                left -= 1;
                self.line.clear();
                let rendered = e.write_json_line(&mut self.line);
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
    use zgate_telemetry::{AuditEvent, AuditKind};

    fn event(n: i64) -> AuditEvent {
        AuditEvent {
            ts: n,
            event: AuditKind::Decision,
            worker: 0,
            listener: "redis".into(),
            source: "127.0.0.1:1".parse().unwrap(),
            verdict: Some("deny"),
            rule: Some("default-deny".into()),
            reason: "no-rule-matched",
            spiffe_id: None,
            sni: None,
            resumed: false,
            detail: None,
        }
    }

    #[test]
    fn events_are_appended_as_lines_and_survive_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut w = AuditWriter::new(&AuditSink::File(path.clone())).unwrap();
        let q = AuditQueue::new(8);
        q.push(event(1));
        q.push(event(2));
        w.drain([&q].into_iter(), 1);
        assert_eq!(w.counts().events, 1, "the budget bounds one drain");
        w.drain([&q].into_iter(), 100);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("{\"ts\":1,"), "{text}");
        // logrotate: move the file away, SIGHUP, the next line goes to a new file.
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        w.reopen().unwrap();
        q.push(event(3));
        w.drain([&q].into_iter(), 100);
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
