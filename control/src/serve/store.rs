//! What the control process keeps across restarts: the live facts (behind
//! [`FactStore`], so that a fleet can later keep them in etcd) and the history of
//! compiled tables. Every write is atomic (a temporary file, fsync, rename, fsync of
//! the directory): a crash leaves the old state or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zgate_proto::{Change, Subject};
use zgate_table::facts::DevicePosture;

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused.
    #[error("`{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is there but is not what this build wrote.
    #[error("`{path}` is corrupt: {why} ({})", .file.advice())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
        /// Which of the state files it is (what losing it would cost).
        file: StateFile,
    },
}

/// The files of the state directory that the control process refuses to start
/// without once they exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    /// `facts.json`: revocations, posture, risk scores, grants.
    Facts,
    /// `history.json`: the kept tables, the enforced one, the next version.
    History,
    /// `tables/N.zgt`: a kept table.
    Table,
}

impl StateFile {
    /// Why starting without it is refused, and what to do.
    pub fn advice(self) -> &'static str {
        match self {
            StateFile::Facts => {
                "refusing to start with facts that may have lost revocations; restore it \
                 from a backup, or move it away to start with none"
            }
            StateFile::History => {
                "refusing to start without the table history: new tables would be \
                 numbered from 1 again, below the version the gateways enforce, and they \
                 would refuse them; restore it from a backup"
            }
            StateFile::Table => {
                "refusing to start with a kept table that does not verify: it is what \
                 `rollback` and reconnecting gateways are sent; restore it from a backup"
            }
        }
    }
}

/// Who made a change: a uid on the operator socket, or a token name on the API.
pub type Actor = String;

/// A revocation as kept: the subject, and why, until when, by whom, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// `spiffe://…` or a 64-hex-digit certificate fingerprint.
    pub subject: SubjectRecord,
    /// The operator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it lifts by itself (Unix seconds); `None`: until `unrevoke`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Who.
    pub by: Actor,
    /// When (Unix seconds).
    pub at: i64,
}

/// A subject as kept in JSON.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectRecord {
    /// A SPIFFE ID.
    Principal(String),
    /// A certificate's SHA-256, lowercase hex.
    Fingerprint(String),
    /// A device id.
    Device(String),
}

impl SubjectRecord {
    /// The wire form. Fingerprints were checked when recorded.
    pub fn to_subject(&self) -> Option<Subject> {
        Some(match self {
            SubjectRecord::Principal(p) => Subject::Principal(p.clone()),
            SubjectRecord::Device(d) => Subject::Device(d.clone()),
            SubjectRecord::Fingerprint(f) => Subject::Fingerprint(parse_fingerprint(f)?),
        })
    }
}

impl std::fmt::Display for SubjectRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubjectRecord::Principal(p) => write!(f, "principal {p}"),
            SubjectRecord::Fingerprint(x) => write!(f, "fingerprint {x}"),
            SubjectRecord::Device(d) => write!(f, "device {d}"),
        }
    }
}

/// 64 hex digits (colons allowed, as `openssl x509 -fingerprint` prints them).
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A device's reported posture, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostureRecord {
    /// The device id.
    pub device: String,
    /// Enrolled in device management.
    pub managed: bool,
    /// Compliant with the baseline.
    pub compliant: bool,
    /// EDR agent running.
    pub edr_running: bool,
    /// Reported compromised: fails every posture requirement.
    pub compromised: bool,
    /// OS patch level, `YYYYMMDD` (0: unknown).
    pub os_patch: u32,
    /// Who.
    pub by: Actor,
    /// When.
    pub at: i64,
}

impl PostureRecord {
    /// The posture `decide` reads.
    pub fn posture(&self) -> DevicePosture {
        DevicePosture {
            managed: self.managed,
            compliant: self.compliant,
            edr_running: self.edr_running,
            compromised: self.compromised,
            os_patch: self.os_patch,
        }
    }
}

/// A risk score, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskRecord {
    /// A principal or a device.
    pub subject: SubjectRecord,
    /// 0 to 100.
    pub score: u8,
    /// Who.
    pub by: Actor,
    /// When.
    pub at: i64,
}

/// A just-in-time grant, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// The service (listener name).
    pub service: String,
    /// The SPIFFE ID.
    pub principal: String,
    /// End (Unix seconds, exclusive).
    pub until: i64,
    /// The ticket or justification.
    pub reason: String,
    /// Who.
    pub by: Actor,
    /// When.
    pub at: i64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The whole fact set with its version: what [`FactStore`] keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Bumped by every accepted change; never reused. With a shared store: the store's
    /// revision of the last write.
    pub version: u64,
    /// With a shared store: which one (cluster and prefix) the version counts in, so a
    /// restart resumes its watch only in the same store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// With a shared store: the revision this set holds every change up to (at or
    /// after `version`); a restart resumes its watch after it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub through: u64,
    /// Revocations.
    pub revocations: Vec<Revocation>,
    /// Posture by device.
    pub posture: Vec<PostureRecord>,
    /// Risk scores.
    pub risk: Vec<RiskRecord>,
    /// Grants.
    pub grants: Vec<GrantRecord>,
}

impl Facts {
    /// The changes that build this set from nothing (a snapshot for a dataplane).
    pub fn changes(&self) -> Vec<Change> {
        let mut out = Vec::new();
        out.extend(
            self.revocations
                .iter()
                .filter_map(|r| r.subject.to_subject())
                .map(Change::Revoke),
        );
        out.extend(self.posture.iter().map(|p| Change::SetPosture {
            device: p.device.clone(),
            posture: p.posture(),
        }));
        out.extend(self.risk.iter().filter_map(|r| {
            Some(Change::SetRisk {
                subject: r.subject.to_subject()?,
                score: r.score,
            })
        }));
        out.extend(self.grants.iter().map(|g| Change::Grant {
            service: g.service.clone(),
            principal: g.principal.clone(),
            until: g.until,
        }));
        out
    }
}

/// Where the facts live. A file today ([`FileStore`]); etcd for a fleet later.
pub trait FactStore: Send {
    /// The stored facts, `None` when there are none yet.
    fn load(&mut self) -> Result<Option<Facts>, StoreError>;
    /// Replace the stored facts; on error nothing was replaced.
    fn save(&mut self, facts: &Facts) -> Result<(), StoreError>;
}

/// Facts in one JSON file.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// `facts.json` in `dir`.
    pub fn new(dir: &Path) -> FileStore {
        FileStore {
            path: dir.join("facts.json"),
        }
    }
}

impl FactStore for FileStore {
    fn load(&mut self) -> Result<Option<Facts>, StoreError> {
        read_json(&self.path, StateFile::Facts)
    }

    fn save(&mut self, facts: &Facts) -> Result<(), StoreError> {
        write_json(&self.path, facts)
    }
}

/// Read a JSON file written by [`write_json`] (`file` says which, for the error);
/// `None` when it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    file: StateFile,
) -> Result<Option<T>, StoreError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
            file,
        })
}

/// Write `value` as JSON to `path`, atomically and durably.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_atomically(path, &bytes)
}

/// Write `bytes` to `path`: a temporary file beside it, fsync, rename, fsync of the
/// directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let err = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// One compiled table kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    /// Its version (unique, increasing).
    pub version: u64,
    /// SHA-256 of the policy source, lowercase hex.
    pub policy_sha256: String,
    /// When it was compiled or re-published (Unix seconds).
    pub at: i64,
    /// The policy directory's git commit, when it is a git work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Where it came from: `policy`, `rollback of N`, `promoted shadow`.
    pub source: String,
    /// Rules in it.
    pub rules: usize,
}

/// The table history as kept in `history.json`: the entries (newest last), the one
/// enforced, and the next version to hand out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryFile {
    /// The tables kept, oldest first.
    pub tables: Vec<TableEntry>,
    /// The version enforced now.
    pub enforced: Option<u64>,
    /// The next version (tables and shadow tables share the sequence).
    pub next_version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_survive_a_round_trip_and_a_corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStore::new(dir.path());
        assert_eq!(s.load().unwrap(), None);
        let facts = Facts {
            version: 7,
            revocations: vec![Revocation {
                subject: SubjectRecord::Principal("spiffe://corp.example/a".into()),
                reason: Some("stolen laptop".into()),
                until: None,
                by: "uid 0".into(),
                at: 1,
            }],
            ..Facts::default()
        };
        s.save(&facts).unwrap();
        assert_eq!(s.load().unwrap(), Some(facts));
        std::fs::write(dir.path().join("facts.json"), b"{\"version\": 7, \"revoc").unwrap();
        let e = s.load().unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
        assert!(e.to_string().contains("lost revocations"), "{e}");
    }

    #[test]
    fn a_corrupt_history_says_what_losing_it_would_cost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.json");
        std::fs::write(&path, b"{\"tables\": [").unwrap();
        let e = read_json::<HistoryFile>(&path, StateFile::History).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e,
                StoreError::Corrupt {
                    file: StateFile::History,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(text.contains("history.json` is corrupt"), "{text}");
        assert!(text.contains("numbered from 1 again"), "{text}");
        assert!(!text.contains("revocations"), "{text}");
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex), Some([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons), Some([0xab; 32]));
        assert_eq!(parse_fingerprint("ab"), None);
        assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);
    }
}
