//! The control process's state and every change to it, synchronous and IO-light
//! (files in the state directory), behind one lock held by the async front ends.
//!
//! Order of every accepted change: validate, write it durably (fact store, table
//! history), then push it to the dataplanes, then write its audit line. A change that
//! cannot be stored is refused and pushed nowhere: a dataplane never enforces a
//! version the control process could lose.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{broadcast, oneshot};
use zgate_proto::{
    Change, FactsDelta, FactsSnapshot, Hello, ImpactFlow, ImpactReport, Report, Shadow, TableUpdate,
};
use zgate_table::DecisionTable;

use crate::cli::hex;

use super::store::{
    self, Actor, FactStore, Facts, GrantRecord, HistoryFile, PostureRecord, Revocation, RiskRecord,
    StateFile, StoreError, SubjectRecord, TableEntry,
};

/// What the dataplanes are sent after they subscribed.
#[derive(Debug, Clone)]
pub enum Push {
    /// Enforce this table.
    Table(Arc<TableUpdate>),
    /// Apply this fact delta.
    Delta(Arc<FactsDelta>),
    /// Evaluate this shadow table (or stop).
    Shadow(Arc<Shadow>),
    /// List the flows the shadow table would close.
    Impact(u64),
    /// The whole fact set (after a resync with the shared store).
    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    Facts(Arc<FactsSnapshot>),
}

/// Pushes buffered per subscriber before a slow one is dropped (it reconnects and
/// gets a fresh snapshot).
const PUSH_BUFFER: usize = 4096;

/// Why an operation was refused. The HTTP status follows the variant.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request is malformed or names nothing valid.
    #[error("{0}")]
    Invalid(String),
    /// It names something that is not there.
    #[error("{0}")]
    NotFound(String),
    /// The state could not be written: nothing changed.
    #[error("not stored, nothing changed: {0}")]
    Store(#[from] StoreError),
}

/// The last policy compilation that failed, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyError {
    /// When (Unix seconds).
    pub at: i64,
    /// Every error, `file:line:col: message`.
    pub errors: Vec<String>,
}

/// A dataplane as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DataplaneInfo {
    /// Connection id.
    pub id: u64,
    /// The name it gave.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Its uid (peer credentials).
    pub uid: u32,
    /// Since when (Unix seconds).
    pub connected_at: i64,
    /// Its last report.
    pub report: ReportJson,
}

/// A dataplane's report, in JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReportJson {
    /// Table version enforced.
    pub table_version: u64,
    /// Fact-set version enforced.
    pub facts_version: u64,
    /// Shadow table version evaluated (0: none).
    pub shadow_version: u64,
    /// Flows open.
    pub flows: u64,
    /// Live flows closed by re-decisions since it started.
    pub closed_by_policy: u64,
    /// Shadow differences since the shadow table was set.
    pub shadow_differences: u64,
    /// The last thing it refused.
    pub last_error: Option<String>,
}

impl From<&Report> for ReportJson {
    fn from(r: &Report) -> ReportJson {
        ReportJson {
            table_version: r.table_version,
            facts_version: r.facts_version,
            shadow_version: r.shadow_version,
            flows: r.flows,
            closed_by_policy: r.closed_by_policy,
            shadow_differences: r.shadow_differences,
            last_error: r.last_error.clone(),
        }
    }
}

/// A candidate table evaluated in shadow.
#[derive(Debug, Clone)]
struct ShadowEntry {
    version: u64,
    bytes: Arc<Vec<u8>>,
    rules: usize,
    policy_sha256: String,
    by: Actor,
    at: i64,
}

/// An impact query waiting for the dataplanes' answers.
struct ImpactWait {
    waiting: Vec<u64>,
    answers: Vec<DataplaneImpact>,
    done: Option<oneshot::Sender<Vec<DataplaneImpact>>>,
}

/// One dataplane's answer to an impact query.
#[derive(Debug, Clone, Serialize)]
pub struct DataplaneImpact {
    /// Its name.
    pub dataplane: String,
    /// The shadow version it evaluated.
    pub shadow_version: u64,
    /// The flows it would close (first `ImpactReport::MAX_FLOWS`).
    pub flows: Vec<ImpactFlowJson>,
    /// How many in all.
    pub total: u64,
}

/// One flow in an impact answer.
#[derive(Debug, Clone, Serialize)]
pub struct ImpactFlowJson {
    /// Listener.
    pub listener: String,
    /// SPIFFE ID.
    pub principal: Option<String>,
    /// Client address.
    pub source: String,
    /// The shadow table's rule that would deny it.
    pub rule: String,
    /// Why.
    pub reason: String,
}

impl From<&ImpactFlow> for ImpactFlowJson {
    fn from(f: &ImpactFlow) -> ImpactFlowJson {
        ImpactFlowJson {
            listener: f.listener.clone(),
            principal: f.principal.clone(),
            source: f.source.clone(),
            rule: f.rule.clone(),
            reason: f.reason.clone(),
        }
    }
}

/// Settings the core needs.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The policy directory.
    pub policy_dir: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// Tables kept in the history.
    pub keep: usize,
}

/// The control process's state.
pub struct Core {
    cfg: CoreConfig,
    history: HistoryFile,
    tables: HashMap<u64, Arc<Vec<u8>>>,
    policy_error: Option<PolicyError>,
    store: Box<dyn FactStore>,
    facts: Facts,
    shadow: Option<ShadowEntry>,
    dataplanes: BTreeMap<u64, DataplaneInfo>,
    next_conn: u64,
    next_impact: u64,
    impacts: HashMap<u64, ImpactWait>,
    tx: broadcast::Sender<Push>,
    audit: Box<dyn Write + Send>,
    /// When the last fact change was accepted (stored, about to be pushed): Unix
    /// microseconds, returned to the caller so a benchmark can time from it.
    last_accepted_us: i64,
    /// With a shared store (a fleet): changes are written there, and applied from its
    /// watch; `None`: the local fact file.
    shared: Option<Arc<dyn super::shared::SharedStore>>,
    /// Writes for the shared store that an operation planned (the API layer sends them).
    outbox: Vec<super::shared::PendingWrite>,
    /// The fact version applied here, for callers waiting on their write.
    applied: tokio::sync::watch::Sender<u64>,
    /// When this host last knew it had every fact of the shared store.
    store_sync: StoreSync,
    /// The current outage of the shared store was logged (once per outage).
    store_outage_logged: bool,
    /// With a shared store: tables come from the fleet's elected compiler (set
    /// together with `shared`, so `Some` exactly when it is).
    fleet: Option<FleetPolicy>,
}

/// How tables reach this host in a fleet: whichever control process is elected
/// compiles its policy directory and publishes the table through the shared store;
/// every host (that one included) enforces what the store's manifest names.
struct FleetPolicy {
    /// This control process's name in the election and in manifests.
    me: String,
    /// Whether it is the elected compiler now.
    leader: bool,
    /// The last good compilation of the local policy directory.
    compiled: Option<LocalCompile>,
    /// Woken when a compilation finishes (the elected compiler publishes it).
    compiled_notify: Arc<tokio::sync::Notify>,
    /// The manifest of the table enforced here, once one came from the store.
    manifest: Option<super::shared::Manifest>,
}

/// A compiled local policy directory, not yet (or already) published.
struct LocalCompile {
    table: DecisionTable,
    git_commit: Option<String>,
}

/// How tables reach this host in a fleet, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetPolicyJson {
    /// This control process's name in the election.
    pub me: String,
    /// Whether it is the fleet's elected compiler.
    pub leader: bool,
    /// The manifest of the table enforced here, once one came from the store.
    pub manifest: Option<super::shared::Manifest>,
}

/// [`StoreSync`] as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSyncJson {
    /// Whether its last contact succeeded.
    pub reachable: bool,
    /// The store revision this host had every fact up to, at its last contact.
    pub revision: u64,
    /// How long ago that was (ms); `None`: never in step since start.
    pub age_ms: Option<i64>,
}

/// How a host stands with the shared store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreSync {
    /// Whether its last contact succeeded.
    pub reachable: bool,
    /// The store revision it had every fact up to, then.
    pub revision: u64,
    /// When (Unix microseconds); 0 or less: never.
    pub synced_at_us: i64,
}

/// What a dataplane is sent when it subscribes.
pub struct Subscription {
    /// Its connection id.
    pub id: u64,
    /// The enforced table, unless it already enforces that version.
    pub table: Option<TableUpdate>,
    /// The facts, unless it already enforces that version.
    pub facts: Option<FactsSnapshot>,
    /// The shadow table, if one is set.
    pub shadow: Option<Shadow>,
    /// Everything pushed after this subscription, in order.
    pub pushes: broadcast::Receiver<Push>,
}

/// Wall-clock Unix microseconds.
pub fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Wall-clock Unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A SPIFFE ID as the dataplane will accept it.
fn check_principal(p: &str) -> Result<(), OpError> {
    let ok = p
        .strip_prefix("spiffe://")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
        && p.len() <= 2048
        && !p.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(OpError::Invalid(format!(
            "`{p}` is not a SPIFFE ID (spiffe://trust-domain/path)"
        )))
    }
}

/// A device id or service name: 1 to 2048 bytes, no control characters.
fn check_name(what: &str, v: &str) -> Result<(), OpError> {
    if v.is_empty() || v.len() > 2048 || v.chars().any(char::is_control) {
        return Err(OpError::Invalid(format!(
            "{what} `{v}`: expected 1 to 2048 bytes without control characters"
        )));
    }
    Ok(())
}

impl Core {
    /// Load the state directory (history, tables, facts). A fact file, history or
    /// kept table that does not parse stops the process ([`StoreError::Corrupt`], with
    /// what starting without it would cost: lifted revocations, reused table versions);
    /// so does a kept table that cannot be read ([`StoreError::Io`]).
    pub fn open(
        cfg: CoreConfig,
        mut store: Box<dyn FactStore>,
        audit: Box<dyn Write + Send>,
    ) -> Result<Core, StoreError> {
        std::fs::create_dir_all(cfg.state_dir.join("tables")).map_err(|source| StoreError::Io {
            path: cfg.state_dir.clone(),
            source,
        })?;
        let history: HistoryFile =
            store::read_json(&cfg.state_dir.join("history.json"), StateFile::History)?
                .unwrap_or_default();
        let mut tables = HashMap::new();
        for e in &history.tables {
            let path = table_path(&cfg.state_dir, e.version);
            let bytes = std::fs::read(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            DecisionTable::decode(&bytes).map_err(|err| StoreError::Corrupt {
                path: path.clone(),
                why: err.to_string(),
                file: StateFile::Table,
            })?;
            tables.insert(e.version, Arc::new(bytes));
        }
        let facts = store.load()?.unwrap_or_default();
        let (tx, _) = broadcast::channel(PUSH_BUFFER);
        Ok(Core {
            cfg,
            history,
            tables,
            policy_error: None,
            store,
            facts,
            shadow: None,
            dataplanes: BTreeMap::new(),
            next_conn: 0,
            next_impact: 0,
            impacts: HashMap::new(),
            tx,
            audit,
            last_accepted_us: 0,
            shared: None,
            outbox: Vec::new(),
            applied: tokio::sync::watch::Sender::new(0),
            store_sync: StoreSync::default(),
            store_outage_logged: false,
            fleet: None,
        })
    }

    fn next_version(&mut self) -> u64 {
        let floor = self
            .history
            .tables
            .iter()
            .map(|t| t.version)
            .chain(self.shadow.as_ref().map(|s| s.version))
            .max()
            .unwrap_or(0);
        let v = self.history.next_version.max(floor + 1).max(1);
        self.history.next_version = v + 1;
        v
    }

    /// The enforced table's version.
    pub fn enforced(&self) -> Option<u64> {
        self.history.enforced
    }

    /// The fact-set version.
    pub fn facts_version(&self) -> u64 {
        self.facts.version
    }

    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    /// Keep facts in `store`, shared by the fleet, from now on.
    pub fn use_shared(&mut self, store: Arc<dyn super::shared::SharedStore>) {
        self.shared = Some(store);
    }

    /// The shared store, if any.
    pub fn shared_store(&self) -> Option<Arc<dyn super::shared::SharedStore>> {
        self.shared.clone()
    }

    /// The writes operations planned since the last call.
    pub fn take_outbox(&mut self) -> Vec<super::shared::PendingWrite> {
        std::mem::take(&mut self.outbox)
    }

    /// The fact version applied here, as it moves.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Shared-store writes were committed (the last at `committed_us`, when the store
    /// answered) and applied here: their audit lines, in order.
    pub fn audit_writes(&mut self, writes: &[super::shared::PendingWrite], committed_us: i64) {
        for w in writes {
            self.last_accepted_us = committed_us;
            let detail = w.detail.clone();
            self.audit(&w.who.clone(), &w.what.clone(), detail);
        }
    }

    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    /// Events from the shared store's watch, up to `revision`: apply them, push the
    /// delta to the dataplanes, then keep the result in the state directory (so a
    /// restart enforces it, and resumes the watch after it).
    pub fn apply_shared(&mut self, events: &[super::shared::StoreEvent], revision: u64) {
        // Already applied: a resumed watch replays from the revision kept.
        if revision <= self.facts.through {
            return;
        }
        let mut next = self.facts.clone();
        let (changes, problems) = super::shared::apply_events(&mut next, events);
        for p in problems {
            eprintln!("zgate-control: shared store: skipped {p}");
        }
        let from = self.facts.version;
        next.version = revision;
        next.through = revision;
        self.facts = next;
        self.push(Push::Delta(Arc::new(FactsDelta {
            from,
            to: revision,
            changes,
        })));
        self.applied.send_replace(revision);
        self.keep_shared();
    }

    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    /// The whole fact set read from the shared store at its `version` (start, or a
    /// resync after a compaction): replace ours and send it whole.
    pub fn replace_shared(&mut self, facts: Facts) {
        self.facts = facts;
        self.push(Push::Facts(Arc::new(FactsSnapshot {
            version: self.facts.version,
            changes: self.facts.changes(),
        })));
        self.applied.send_replace(self.facts.version);
        self.keep_shared();
    }

    /// Write the facts applied from the shared store to the state directory, after
    /// the dataplanes were sent them (the fsync is not on the enforcement path). A
    /// failure is logged: the store still has them, and a restart reads them again.
    fn keep_shared(&mut self) {
        if let Err(e) = self.store.save(&self.facts) {
            eprintln!("zgate-control: keeping the shared facts locally: {e}");
        }
    }

    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    /// The revision this host may resume the shared store's watch after: the one its
    /// facts hold every change up to, when they were read from `origin`; else none
    /// (read everything).
    pub fn resume_point(&self, origin: &str) -> Option<u64> {
        (self.facts.origin.as_deref() == Some(origin) && self.facts.through > 0)
            .then_some(self.facts.through)
    }

    /// How fresh the facts are, for the dataplanes: with a shared store, when this
    /// host was last in step with it (never: 0); with the state directory, now (this
    /// process is the store).
    pub fn freshness(&self) -> zgate_proto::Freshness {
        let now_ms = u64::try_from(now_unix_us() / 1000).unwrap_or(0);
        match &self.shared {
            Some(_) => zgate_proto::Freshness {
                store_revision: self.store_sync.revision,
                in_step_at_ms: u64::try_from(self.store_sync.synced_at_us / 1000).unwrap_or(0),
            },
            None => zgate_proto::Freshness {
                store_revision: self.facts.version,
                in_step_at_ms: now_ms,
            },
        }
    }

    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    /// The shared store answered: this host has every fact up to `revision` of it,
    /// as of now (a watch event or progress notice), or it did not answer (`None`).
    pub fn store_contact(&mut self, revision: Option<u64>) {
        let now = now_unix_us();
        match revision {
            Some(r) => {
                if !self.store_sync.reachable {
                    eprintln!("zgate-control: shared store reachable, in step at revision {r}");
                }
                self.store_outage_logged = false;
                self.store_sync = StoreSync {
                    reachable: true,
                    revision: r,
                    synced_at_us: now,
                };
            }
            None => {
                if !self.store_outage_logged {
                    eprintln!(
                        "zgate-control: shared store unreachable; the dataplanes keep enforcing facts version {} (fail static)",
                        self.facts.version
                    );
                }
                self.store_outage_logged = true;
                self.store_sync.reachable = false;
            }
        }
    }

    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    /// Take tables from the fleet's elected compiler from now on, as `me`. The
    /// returned notify wakes whenever the local policy directory compiled.
    pub fn use_fleet_policy(&mut self, me: String) -> Arc<tokio::sync::Notify> {
        let notify = Arc::new(tokio::sync::Notify::new());
        self.fleet = Some(FleetPolicy {
            me,
            leader: false,
            compiled: None,
            compiled_notify: Arc::clone(&notify),
            manifest: None,
        });
        notify
    }

    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    /// This control process won (or lost) the election for the fleet's compiler.
    pub fn set_fleet_leader(&mut self, leader: bool) {
        let Some(f) = &mut self.fleet else { return };
        if f.leader == leader {
            return;
        }
        f.leader = leader;
        let me = f.me.clone();
        eprintln!(
            "zgate-control: {} the fleet's policy compiler",
            if leader { "elected" } else { "no longer" }
        );
        let what = if leader {
            "compiler-elected"
        } else {
            "compiler-stepped-down"
        };
        self.audit(&me, what, serde_json::json!({}));
    }

    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    /// For the elected compiler: the table to publish when the local policy compiled
    /// to something other than what the fleet enforces (`current`), stamped with the
    /// next version; `None` when there is nothing new.
    pub fn fleet_candidate(
        &mut self,
        current: Option<&super::shared::Manifest>,
    ) -> Option<super::shared::FleetTable> {
        let c = self.fleet.as_ref()?.compiled.as_ref()?;
        let policy_sha256 = hex(c.table.policy_hash());
        if current.is_some_and(|m| m.policy_sha256 == policy_sha256) {
            return None;
        }
        let (table, git_commit) = (c.table.clone(), c.git_commit.clone());
        let floor = current.map_or(0, |m| m.version) + 1;
        self.history.next_version = self.history.next_version.max(floor);
        let version = self.next_version();
        Some(super::shared::FleetTable {
            rules: table.rule_count(),
            bytes: table.restamped(version).encode(),
            version,
            policy_sha256,
            git_commit,
        })
    }

    #[cfg_attr(
        not(feature = "etcd"),
        allow(dead_code, reason = "the shared store is the etcd feature's")
    )]
    /// The table the store's manifest `m` names, assembled from its chunks: verify it
    /// against the manifest and enforce it. Nothing to do when this host already
    /// enforces that version or a newer one.
    pub fn enforce_fleet_table(
        &mut self,
        bytes: &[u8],
        m: &super::shared::Manifest,
    ) -> Result<(), String> {
        if self.history.enforced.is_some_and(|v| v >= m.version) {
            return Ok(());
        }
        let sha = super::shared::sha256_hex(bytes);
        if sha != m.table_sha256 {
            return Err(format!(
                "table version {} hashes to {sha}, its manifest says {}",
                m.version, m.table_sha256
            ));
        }
        let table = DecisionTable::decode(bytes)
            .map_err(|e| format!("table version {} does not verify: {e}", m.version))?;
        if table.version() != m.version {
            return Err(format!(
                "the manifest says version {}, the table's header says {}",
                m.version,
                table.version()
            ));
        }
        let rules = table.rule_count();
        let v = self
            .enforce(
                table,
                format!("fleet (compiled by {})", m.compiled_by),
                m.git_commit.clone(),
                rules,
            )
            .map_err(|e| e.to_string())?;
        eprintln!(
            "zgate-control: table version {v} from the fleet ({rules} rule(s), compiled by {}), enforced",
            m.compiled_by
        );
        self.audit(
            "fleet",
            "policy-applied",
            serde_json::json!({
                "version": v,
                "table_sha256": m.table_sha256,
                "policy_sha256": m.policy_sha256,
                "compiled_by": m.compiled_by,
            }),
        );
        if let Some(f) = &mut self.fleet {
            f.manifest = Some(m.clone());
        }
        Ok(())
    }

    /// In a fleet, tables come from the elected compiler: an operation that would
    /// enforce one here alone is refused.
    fn refuse_in_fleet(&self, what: &str) -> Result<(), OpError> {
        if self.fleet.is_some() {
            return Err(OpError::Invalid(format!(
                "{what} is refused in a fleet (--store etcd): every host enforces the table the elected compiler publishes; change the policy directory (revert a commit to roll back) instead"
            )));
        }
        Ok(())
    }

    /// When the last fact change was accepted (Unix microseconds).
    pub fn last_accepted_us(&self) -> i64 {
        self.last_accepted_us
    }

    fn audit(&mut self, who: &str, what: &str, detail: serde_json::Value) {
        let line = serde_json::json!({
            "ts": rfc3339(now_unix()),
            "who": who,
            "what": what,
            "detail": detail,
            "table_version": self.history.enforced,
            "facts_version": self.facts.version,
            "shadow_version": self.shadow.as_ref().map(|s| s.version),
        });
        let mut text = line.to_string();
        text.push('\n');
        // The audit sink failing does not undo a stored change; the log says so.
        if let Err(e) = self
            .audit
            .write_all(text.as_bytes())
            .and_then(|()| self.audit.flush())
        {
            eprintln!("zgate-control: audit write failed: {e}");
        }
    }

    fn push(&self, p: Push) {
        // No subscriber is not an error: dataplanes get the state when they connect.
        let _none_connected = self.tx.send(p);
    }

    // ------------------------------------------------------------------ tables

    /// A compilation of the policy directory finished. A new policy (by content hash)
    /// becomes a new version, enforced at once; the same content changes nothing; a
    /// broken policy is refused, the enforced table stays, and `status` shows why.
    pub fn policy_compiled(
        &mut self,
        result: Result<DecisionTable, Vec<String>>,
        git_commit: Option<String>,
    ) -> Option<u64> {
        let table = match result {
            Ok(t) => t,
            Err(errors) => {
                eprintln!(
                    "zgate-control: policy `{}` refused, {} error(s); table version {} stays enforced:",
                    self.cfg.policy_dir.display(),
                    errors.len(),
                    self.history
                        .enforced
                        .map_or("none".to_string(), |v| v.to_string())
                );
                for e in &errors {
                    eprintln!("  {e}");
                }
                self.policy_error = Some(PolicyError {
                    at: now_unix(),
                    errors: errors.clone(),
                });
                self.audit(
                    "policy-watch",
                    "policy-refused",
                    serde_json::json!({ "errors": errors }),
                );
                return None;
            }
        };
        self.policy_error = None;
        let hash = hex(table.policy_hash());
        if let Some(f) = &mut self.fleet {
            // A fleet: only the elected compiler publishes, through the store.
            let rules = table.rule_count();
            eprintln!(
                "zgate-control: policy compiled: {rules} rule(s), policy sha256 {}; {}",
                hash.get(..12).unwrap_or(&hash),
                if f.leader {
                    "publishing it to the fleet"
                } else {
                    "the fleet's elected compiler publishes"
                }
            );
            f.compiled = Some(LocalCompile { table, git_commit });
            f.compiled_notify.notify_one();
            return None;
        }
        let current = self.history.enforced.and_then(|v| self.entry(v));
        if current.is_some_and(|e| e.policy_sha256 == hash && e.source == "policy") {
            return None;
        }
        let version = self.next_version();
        let rules = table.rule_count();
        let table = table.restamped(version);
        match self.enforce(table, "policy".into(), git_commit, rules) {
            Ok(v) => {
                eprintln!(
                    "zgate-control: policy compiled: table version {v}, {rules} rule(s), enforced"
                );
                self.audit(
                    "policy-watch",
                    "policy-published",
                    serde_json::json!({ "version": v, "policy_sha256": hash, "rules": rules }),
                );
                Some(v)
            }
            Err(e) => {
                eprintln!("zgate-control: policy compiled but not published: {e}");
                None
            }
        }
    }

    fn entry(&self, version: u64) -> Option<&TableEntry> {
        self.history.tables.iter().find(|t| t.version == version)
    }

    /// Store `table` as the enforced one, prune the history, push it.
    fn enforce(
        &mut self,
        table: DecisionTable,
        source: String,
        git_commit: Option<String>,
        rules: usize,
    ) -> Result<u64, OpError> {
        let version = table.version();
        let bytes = table.encode();
        store::write_atomically(&table_path(&self.cfg.state_dir, version), &bytes)?;
        let mut history = self.history.clone();
        history.tables.push(TableEntry {
            version,
            policy_sha256: hex(table.policy_hash()),
            at: now_unix(),
            git_commit,
            source,
            rules,
        });
        history.enforced = Some(version);
        // Keep the newest `keep`, and always the enforced one.
        let mut dropped = Vec::new();
        while history.tables.len() > self.cfg.keep.max(1) {
            let old = history.tables.remove(0);
            dropped.push(old.version);
        }
        store::write_json(&self.cfg.state_dir.join("history.json"), &history)?;
        self.history = history;
        for v in dropped {
            self.tables.remove(&v);
            let _already_gone = std::fs::remove_file(table_path(&self.cfg.state_dir, v));
        }
        let bytes = Arc::new(bytes);
        self.tables.insert(version, Arc::clone(&bytes));
        self.push(Push::Table(Arc::new(TableUpdate {
            version,
            table: bytes.to_vec(),
        })));
        Ok(version)
    }

    /// Re-publish a kept table (by default the one before the enforced one) under a
    /// new version: dataplanes never go back to an older version number.
    pub fn rollback(&mut self, to: Option<u64>, who: &str) -> Result<u64, OpError> {
        self.refuse_in_fleet("rollback")?;
        let target = match to {
            Some(v) => v,
            None => {
                let enforced = self.history.enforced.unwrap_or(0);
                self.history
                    .tables
                    .iter()
                    .rev()
                    .map(|t| t.version)
                    .find(|v| *v < enforced)
                    .ok_or_else(|| {
                        OpError::NotFound("no older table is kept to roll back to".into())
                    })?
            }
        };
        let bytes = self.tables.get(&target).cloned().ok_or_else(|| {
            OpError::NotFound(format!(
                "table version {target} is not kept (kept: {})",
                self.history
                    .tables
                    .iter()
                    .map(|t| t.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let table = DecisionTable::decode(&bytes)
            .map_err(|e| OpError::Invalid(format!("kept table {target} does not verify: {e}")))?;
        let git = self.entry(target).and_then(|e| e.git_commit.clone());
        let rules = table.rule_count();
        let version = self.next_version();
        let v = self.enforce(
            table.restamped(version),
            format!("rollback of {target}"),
            git,
            rules,
        )?;
        self.audit(
            who,
            "rollback",
            serde_json::json!({ "to": target, "version": v }),
        );
        Ok(v)
    }

    /// The tables kept, oldest first, and the enforced version.
    pub fn history(&self) -> (&[TableEntry], Option<u64>) {
        (&self.history.tables, self.history.enforced)
    }

    // ------------------------------------------------------------------ shadow

    /// Evaluate `bytes` (an encoded table) in shadow on every dataplane.
    pub fn set_shadow(&mut self, bytes: &[u8], who: &str) -> Result<u64, OpError> {
        let table = DecisionTable::decode(bytes)
            .map_err(|e| OpError::Invalid(format!("the candidate table does not verify: {e}")))?;
        let version = self.next_version();
        let rules = table.rule_count();
        let sha = hex(table.policy_hash());
        let table = table.restamped(version);
        let bytes = Arc::new(table.encode());
        // Kept in the history file's counter so a restart never reuses the version.
        store::write_json(&self.cfg.state_dir.join("history.json"), &self.history)?;
        self.shadow = Some(ShadowEntry {
            version,
            bytes: Arc::clone(&bytes),
            rules,
            policy_sha256: sha.clone(),
            by: who.to_string(),
            at: now_unix(),
        });
        self.push(Push::Shadow(Arc::new(Shadow {
            table: Some(TableUpdate {
                version,
                table: bytes.to_vec(),
            }),
        })));
        self.audit(
            who,
            "shadow-set",
            serde_json::json!({ "version": version, "rules": rules, "policy_sha256": sha }),
        );
        Ok(version)
    }

    /// Stop evaluating the shadow table.
    pub fn clear_shadow(&mut self, who: &str) -> Result<(), OpError> {
        let s = self
            .shadow
            .take()
            .ok_or_else(|| OpError::NotFound("no shadow table is set".into()))?;
        self.push(Push::Shadow(Arc::new(Shadow { table: None })));
        self.audit(
            who,
            "shadow-cleared",
            serde_json::json!({ "version": s.version }),
        );
        Ok(())
    }

    /// Enforce the shadow table (under its own version, newer than any enforced).
    pub fn promote(&mut self, who: &str) -> Result<u64, OpError> {
        self.refuse_in_fleet("promote")?;
        let s = self
            .shadow
            .clone()
            .ok_or_else(|| OpError::NotFound("no shadow table to promote".into()))?;
        let table = DecisionTable::decode(&s.bytes)
            .map_err(|e| OpError::Invalid(format!("the shadow table does not verify: {e}")))?;
        let v = self.enforce(table, "promoted shadow".into(), None, s.rules)?;
        self.shadow = None;
        self.push(Push::Shadow(Arc::new(Shadow { table: None })));
        self.audit(who, "promote", serde_json::json!({ "version": v }));
        Ok(v)
    }

    /// Start an impact query on every connected dataplane; the receiver gets their
    /// answers once all have answered (or is dropped if one goes away unanswered).
    pub fn start_impact(&mut self) -> Result<oneshot::Receiver<Vec<DataplaneImpact>>, OpError> {
        if self.shadow.is_none() {
            return Err(OpError::NotFound(
                "no shadow table is set (zgate-control apply --shadow DIR)".into(),
            ));
        }
        self.next_impact += 1;
        let id = self.next_impact;
        let (tx, rx) = oneshot::channel();
        let waiting: Vec<u64> = self.dataplanes.keys().copied().collect();
        let mut w = ImpactWait {
            waiting,
            answers: Vec::new(),
            done: Some(tx),
        };
        if w.waiting.is_empty() {
            if let Some(done) = w.done.take() {
                let _gone = done.send(Vec::new());
            }
            return Ok(rx);
        }
        self.impacts.insert(id, w);
        self.push(Push::Impact(id));
        Ok(rx)
    }

    /// A dataplane's impact answer.
    pub fn impact_answer(&mut self, conn: u64, r: ImpactReport) {
        let name = self
            .dataplanes
            .get(&conn)
            .map_or_else(|| format!("#{conn}"), |d| d.name.clone());
        let Some(w) = self.impacts.get_mut(&r.id) else {
            return;
        };
        if !w.waiting.contains(&conn) {
            return;
        }
        w.waiting.retain(|c| *c != conn);
        w.answers.push(DataplaneImpact {
            dataplane: name,
            shadow_version: r.shadow_version,
            flows: r.flows.iter().map(ImpactFlowJson::from).collect(),
            total: r.total,
        });
        if w.waiting.is_empty() {
            if let Some(mut w) = self.impacts.remove(&r.id) {
                if let Some(done) = w.done.take() {
                    let _asker_gone = done.send(std::mem::take(&mut w.answers));
                }
            }
        }
    }

    // ------------------------------------------------------------------ facts

    /// Store `next` (the current facts with `changes` made), then push the delta.
    fn commit(
        &mut self,
        mut next: Facts,
        changes: Vec<Change>,
        who: &str,
        what: &str,
        detail: serde_json::Value,
    ) -> Result<u64, OpError> {
        if self.shared.is_some() {
            // A fleet: the change goes to the shared store; its watch applies it here
            // and on every other host, in the store's order.
            self.outbox
                .push(super::shared::writes(&next, &changes, who, what, detail));
            return Ok(self.facts.version);
        }
        let from = self.facts.version;
        next.version = from + 1;
        self.store.save(&next)?;
        self.last_accepted_us = now_unix_us();
        self.facts = next;
        self.applied.send_replace(self.facts.version);
        self.push(Push::Delta(Arc::new(FactsDelta {
            from,
            to: self.facts.version,
            changes,
        })));
        self.audit(who, what, detail);
        Ok(self.facts.version)
    }

    /// Revoke a principal or a certificate.
    pub fn revoke(
        &mut self,
        subject: SubjectRecord,
        reason: Option<String>,
        until: Option<i64>,
        who: &str,
    ) -> Result<u64, OpError> {
        let wire = match &subject {
            SubjectRecord::Principal(p) => {
                check_principal(p)?;
                subject.to_subject()
            }
            SubjectRecord::Fingerprint(f) => Some(zgate_proto::Subject::Fingerprint(
                store::parse_fingerprint(f).ok_or_else(|| {
                    OpError::Invalid(format!("fingerprint `{f}`: expected 64 hex digits"))
                })?,
            )),
            SubjectRecord::Device(_) => {
                return Err(OpError::Invalid(
                    "a device is not revoked: report it compromised (posture set DEVICE compromised=true)".into(),
                ))
            }
        };
        let subject = normalize(subject);
        let wire = wire.ok_or_else(|| OpError::Invalid("unreadable subject".into()))?;
        if let Some(u) = until {
            if u <= now_unix() {
                return Err(OpError::Invalid("`until` is already past".into()));
            }
        }
        let mut next = self.facts.clone();
        next.revocations.retain(|r| r.subject != subject);
        next.revocations.push(Revocation {
            subject: subject.clone(),
            reason: reason.clone(),
            until,
            by: who.to_string(),
            at: now_unix(),
        });
        self.commit(
            next,
            vec![Change::Revoke(wire)],
            who,
            "revoke",
            serde_json::json!({ "subject": subject.to_string(), "reason": reason, "until": until }),
        )
    }

    /// Lift a revocation.
    pub fn unrevoke(&mut self, subject: SubjectRecord, who: &str) -> Result<u64, OpError> {
        let subject = normalize(subject);
        if !self.facts.revocations.iter().any(|r| r.subject == subject) {
            return Err(OpError::NotFound(format!("{subject} is not revoked")));
        }
        let wire = subject
            .to_subject()
            .ok_or_else(|| OpError::Invalid("unreadable subject".into()))?;
        let mut next = self.facts.clone();
        next.revocations.retain(|r| r.subject != subject);
        self.commit(
            next,
            vec![Change::Unrevoke(wire)],
            who,
            "unrevoke",
            serde_json::json!({ "subject": subject.to_string() }),
        )
    }

    /// Set a device's posture (fields not given keep their current value, or `false`
    /// and 0 for a device not seen before).
    pub fn set_posture(&mut self, update: PostureUpdate, who: &str) -> Result<u64, OpError> {
        check_name("device", &update.device)?;
        let old = self
            .facts
            .posture
            .iter()
            .find(|p| p.device == update.device)
            .cloned();
        let base = old.unwrap_or(PostureRecord {
            device: update.device.clone(),
            managed: false,
            compliant: false,
            edr_running: false,
            compromised: false,
            os_patch: 0,
            by: String::new(),
            at: 0,
        });
        let rec = PostureRecord {
            managed: update.managed.unwrap_or(base.managed),
            compliant: update.compliant.unwrap_or(base.compliant),
            edr_running: update.edr_running.unwrap_or(base.edr_running),
            compromised: update.compromised.unwrap_or(base.compromised),
            os_patch: update.os_patch.unwrap_or(base.os_patch),
            by: who.to_string(),
            at: now_unix(),
            device: update.device.clone(),
        };
        let mut next = self.facts.clone();
        next.posture.retain(|p| p.device != rec.device);
        next.posture.push(rec.clone());
        self.commit(
            next,
            vec![Change::SetPosture {
                device: rec.device.clone(),
                posture: rec.posture(),
            }],
            who,
            "posture-set",
            serde_json::json!({
                "device": rec.device, "managed": rec.managed, "compliant": rec.compliant,
                "edr_running": rec.edr_running, "compromised": rec.compromised, "os_patch": rec.os_patch,
            }),
        )
    }

    /// Forget a device's posture.
    pub fn clear_posture(&mut self, device: &str, who: &str) -> Result<u64, OpError> {
        if !self.facts.posture.iter().any(|p| p.device == device) {
            return Err(OpError::NotFound(format!(
                "no posture for device `{device}`"
            )));
        }
        let mut next = self.facts.clone();
        next.posture.retain(|p| p.device != device);
        self.commit(
            next,
            vec![Change::ClearPosture {
                device: device.to_string(),
            }],
            who,
            "posture-clear",
            serde_json::json!({ "device": device }),
        )
    }

    /// Set a risk score for a principal or a device.
    pub fn set_risk(
        &mut self,
        subject: SubjectRecord,
        score: u8,
        who: &str,
    ) -> Result<u64, OpError> {
        if score > 100 {
            return Err(OpError::Invalid(format!(
                "risk score {score}: expected 0 to 100"
            )));
        }
        let wire = risk_subject(&subject)?;
        let mut next = self.facts.clone();
        next.risk.retain(|r| r.subject != subject);
        next.risk.push(RiskRecord {
            subject: subject.clone(),
            score,
            by: who.to_string(),
            at: now_unix(),
        });
        self.commit(
            next,
            vec![Change::SetRisk {
                subject: wire,
                score,
            }],
            who,
            "risk-set",
            serde_json::json!({ "subject": subject.to_string(), "score": score }),
        )
    }

    /// Forget a risk score.
    pub fn clear_risk(&mut self, subject: SubjectRecord, who: &str) -> Result<u64, OpError> {
        let wire = risk_subject(&subject)?;
        if !self.facts.risk.iter().any(|r| r.subject == subject) {
            return Err(OpError::NotFound(format!("no risk score for {subject}")));
        }
        let mut next = self.facts.clone();
        next.risk.retain(|r| r.subject != subject);
        self.commit(
            next,
            vec![Change::ClearRisk { subject: wire }],
            who,
            "risk-clear",
            serde_json::json!({ "subject": subject.to_string() }),
        )
    }

    /// Grant `principal` access to `service` for `secs` seconds.
    pub fn grant(
        &mut self,
        service: &str,
        principal: &str,
        secs: u64,
        reason: &str,
        who: &str,
    ) -> Result<u64, OpError> {
        check_name("service", service)?;
        check_principal(principal)?;
        if reason.trim().is_empty() {
            return Err(OpError::Invalid(
                "a grant needs a reason (the ticket it answers)".into(),
            ));
        }
        if secs == 0 || secs > 30 * 86_400 {
            return Err(OpError::Invalid(
                "a grant lasts from 1 second to 30 days".into(),
            ));
        }
        let until = now_unix().saturating_add(i64::try_from(secs).unwrap_or(i64::MAX));
        let mut next = self.facts.clone();
        next.grants
            .retain(|g| !(g.service == service && g.principal == principal));
        next.grants.push(GrantRecord {
            service: service.to_string(),
            principal: principal.to_string(),
            until,
            reason: reason.to_string(),
            by: who.to_string(),
            at: now_unix(),
        });
        self.commit(
            next,
            vec![Change::Grant {
                service: service.to_string(),
                principal: principal.to_string(),
                until,
            }],
            who,
            "grant",
            serde_json::json!({ "service": service, "principal": principal, "until": until, "reason": reason }),
        )
    }

    /// End a grant now.
    pub fn ungrant(&mut self, service: &str, principal: &str, who: &str) -> Result<u64, OpError> {
        if !self
            .facts
            .grants
            .iter()
            .any(|g| g.service == service && g.principal == principal)
        {
            return Err(OpError::NotFound(format!(
                "no grant for {principal} on `{service}`"
            )));
        }
        let mut next = self.facts.clone();
        next.grants
            .retain(|g| !(g.service == service && g.principal == principal));
        self.commit(
            next,
            vec![Change::Ungrant {
                service: service.to_string(),
                principal: principal.to_string(),
            }],
            who,
            "ungrant",
            serde_json::json!({ "service": service, "principal": principal }),
        )
    }

    /// The facts (for listings).
    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Drop revocations and grants whose time has come (the dataplanes close grant
    /// flows on their own at the grant's end; this keeps the set small and lifts
    /// time-bounded revocations). The next instant something expires. With a shared
    /// store only the fleet's elected compiler does it, once for the fleet, in a write
    /// like any other (left in the outbox).
    pub fn expire(&mut self, now: i64) -> Option<i64> {
        if self.fleet.as_ref().is_some_and(|f| !f.leader) {
            return None;
        }
        let due = self
            .facts
            .revocations
            .iter()
            .any(|r| r.until.is_some_and(|u| u <= now))
            || self.facts.grants.iter().any(|g| g.until <= now);
        if !due {
            return self.next_expiry();
        }
        let mut changes = Vec::new();
        let mut next = self.facts.clone();
        next.revocations.retain(|r| {
            let keep = r.until.is_none_or(|u| u > now);
            if !keep {
                if let Some(s) = r.subject.to_subject() {
                    changes.push(Change::Unrevoke(s));
                }
            }
            keep
        });
        next.grants.retain(|g| {
            let keep = g.until > now;
            if !keep {
                changes.push(Change::Ungrant {
                    service: g.service.clone(),
                    principal: g.principal.clone(),
                });
            }
            keep
        });
        if !changes.is_empty() {
            let n = changes.len();
            if let Err(e) = self.commit(
                next,
                changes,
                "expiry",
                "expired",
                serde_json::json!({ "count": n }),
            ) {
                eprintln!("zgate-control: expiring facts: {e}");
            }
        }
        self.next_expiry()
    }

    fn next_expiry(&self) -> Option<i64> {
        self.facts
            .revocations
            .iter()
            .filter_map(|r| r.until)
            .chain(self.facts.grants.iter().map(|g| g.until))
            .min()
    }

    // ------------------------------------------------------------------ dataplanes

    /// A dataplane said hello: register it and hand it the state to send first, with
    /// a subscription to everything pushed after (taken under the same lock, so
    /// nothing is missed or sent twice).
    pub fn subscribe(&mut self, hello: &Hello, uid: u32) -> Subscription {
        self.next_conn += 1;
        let id = self.next_conn;
        self.dataplanes.insert(
            id,
            DataplaneInfo {
                id,
                name: hello.name.clone(),
                pid: hello.pid,
                uid,
                connected_at: now_unix(),
                report: ReportJson {
                    table_version: hello.table_version,
                    facts_version: hello.facts_version,
                    ..ReportJson::default()
                },
            },
        );
        let table = self.history.enforced.and_then(|v| {
            if hello.table_version == v {
                return None;
            }
            Some(TableUpdate {
                version: v,
                table: self.tables.get(&v)?.to_vec(),
            })
        });
        let facts =
            (hello.facts_version != self.facts.version || self.facts.version == 0).then(|| {
                FactsSnapshot {
                    version: self.facts.version,
                    changes: self.facts.changes(),
                }
            });
        let shadow = self.shadow.as_ref().map(|s| Shadow {
            table: Some(TableUpdate {
                version: s.version,
                table: s.bytes.to_vec(),
            }),
        });
        eprintln!(
            "zgate-control: dataplane `{}` (pid {}, uid {uid}) subscribed; it enforces table {} and facts {}",
            hello.name, hello.pid, hello.table_version, hello.facts_version
        );
        Subscription {
            id,
            table,
            facts,
            shadow,
            pushes: self.tx.subscribe(),
        }
    }

    /// A dataplane's report.
    pub fn report(&mut self, conn: u64, r: &Report) {
        if let Some(d) = self.dataplanes.get_mut(&conn) {
            if r.last_error.is_some() && r.last_error != d.report.last_error {
                eprintln!(
                    "zgate-control: dataplane `{}` reports: {}",
                    d.name,
                    r.last_error.as_deref().unwrap_or_default()
                );
            }
            d.report = ReportJson::from(r);
        }
    }

    /// A dataplane went away (or was dropped).
    pub fn unsubscribe(&mut self, conn: u64, why: &str) {
        if let Some(d) = self.dataplanes.remove(&conn) {
            eprintln!("zgate-control: dataplane `{}` gone: {why}", d.name);
        }
        // Impact queries stop waiting for it.
        let ids: Vec<u64> = self.impacts.keys().copied().collect();
        for id in ids {
            let finished = self.impacts.get_mut(&id).is_some_and(|w| {
                w.waiting.retain(|c| *c != conn);
                w.waiting.is_empty()
            });
            if finished {
                if let Some(mut w) = self.impacts.remove(&id) {
                    if let Some(done) = w.done.take() {
                        let _asker_gone = done.send(std::mem::take(&mut w.answers));
                    }
                }
            }
        }
    }

    /// Everything `status` shows.
    pub fn status(&self) -> StatusJson {
        StatusJson {
            policy_dir: self.cfg.policy_dir.display().to_string(),
            table_version: self.history.enforced,
            tables: self.history.tables.clone(),
            policy_error: self.policy_error.clone(),
            facts_version: self.facts.version,
            facts_store: self
                .shared
                .as_ref()
                .map_or_else(|| "file".to_string(), |s| s.describe()),
            fleet_policy: self.fleet.as_ref().map(|f| FleetPolicyJson {
                me: f.me.clone(),
                leader: f.leader,
                manifest: f.manifest.clone(),
            }),
            facts_store_sync: self.shared.as_ref().map(|_| {
                let s = self.store_sync;
                StoreSyncJson {
                    reachable: s.reachable,
                    revision: s.revision,
                    age_ms: (s.synced_at_us > 0)
                        .then(|| (now_unix_us() - s.synced_at_us).max(0) / 1000),
                }
            }),
            revocations: self.facts.revocations.len(),
            postures: self.facts.posture.len(),
            risk_scores: self.facts.risk.len(),
            grants: self.facts.grants.len(),
            shadow: self.shadow.as_ref().map(|s| ShadowJson {
                version: s.version,
                rules: s.rules,
                policy_sha256: s.policy_sha256.clone(),
                by: s.by.clone(),
                at: s.at,
            }),
            dataplanes: self.dataplanes.values().cloned().collect(),
        }
    }
}

/// A posture update: the fields given change, the others stay.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureUpdate {
    /// The device id.
    pub device: String,
    /// Enrolled in device management.
    pub managed: Option<bool>,
    /// Compliant with the baseline.
    pub compliant: Option<bool>,
    /// EDR agent running.
    pub edr_running: Option<bool>,
    /// Reported compromised.
    pub compromised: Option<bool>,
    /// OS patch level, `YYYYMMDD`.
    pub os_patch: Option<u32>,
}

/// `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusJson {
    /// The policy directory watched.
    pub policy_dir: String,
    /// The enforced table version.
    pub table_version: Option<u64>,
    /// The tables kept.
    pub tables: Vec<TableEntry>,
    /// The last refused policy, until a good one compiles.
    pub policy_error: Option<PolicyError>,
    /// The fact-set version.
    pub facts_version: u64,
    /// Where the facts live.
    pub facts_store: String,
    /// With a shared store: how this host stands with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts_store_sync: Option<StoreSyncJson>,
    /// With a shared store: where the enforced table came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_policy: Option<FleetPolicyJson>,
    /// Revocations in force.
    pub revocations: usize,
    /// Devices with a posture.
    pub postures: usize,
    /// Risk scores.
    pub risk_scores: usize,
    /// Grants in force.
    pub grants: usize,
    /// The shadow table, if one is set.
    pub shadow: Option<ShadowJson>,
    /// Connected dataplanes.
    pub dataplanes: Vec<DataplaneInfo>,
}

/// The shadow table in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowJson {
    /// Its version.
    pub version: u64,
    /// Rules.
    pub rules: usize,
    /// Policy hash.
    pub policy_sha256: String,
    /// Who set it.
    pub by: Actor,
    /// When.
    pub at: i64,
}

fn table_path(state_dir: &Path, version: u64) -> PathBuf {
    state_dir.join("tables").join(format!("{version}.zgt"))
}

/// Fingerprints kept lowercase without colons, so one certificate is one key.
fn normalize(s: SubjectRecord) -> SubjectRecord {
    match s {
        SubjectRecord::Fingerprint(f) => match store::parse_fingerprint(&f) {
            Some(b) => SubjectRecord::Fingerprint(hex(&b)),
            None => SubjectRecord::Fingerprint(f),
        },
        other => other,
    }
}

fn risk_subject(s: &SubjectRecord) -> Result<zgate_proto::Subject, OpError> {
    match s {
        SubjectRecord::Principal(p) => check_principal(p)?,
        SubjectRecord::Device(d) => check_name("device", d)?,
        SubjectRecord::Fingerprint(_) => {
            return Err(OpError::Invalid(
                "risk is scored per principal or device, not per certificate".into(),
            ))
        }
    }
    s.to_subject()
        .ok_or_else(|| OpError::Invalid("unreadable subject".into()))
}

/// RFC 3339 UTC, whole seconds.
pub fn rfc3339(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}
