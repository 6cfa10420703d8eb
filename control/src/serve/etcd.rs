//! The fleet's shared fact store on etcd v3 (`--store etcd`): one key per fact under
//! `PREFIX/facts/`, written in a transaction (with a lease when the fact ends by itself:
//! etcd deletes it at its end, once, for the whole fleet), and applied on every host
//! from a watch of that prefix, in revision order, from the revision last applied. A
//! watch that falls behind a compaction resyncs from a full read; the revision is the
//! fact version the dataplanes enforce, so a gap cannot pass silently (a dataplane
//! refuses a delta that does not start from what it enforces).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

use super::shared::{apply_events, PendingWrite, SharedStore, StoreEvent};
use super::state::{now_unix, Core};
use super::store::Facts;

/// The store's settings.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix (e.g. `/zgate`).
    pub prefix: String,
}

/// A connected store.
pub struct EtcdStore {
    client: Client,
    facts: String,
    endpoints: Vec<String>,
}

impl EtcdStore {
    /// Connect (the client keeps reconnecting by itself afterwards).
    pub async fn connect(cfg: &EtcdConfig) -> Result<EtcdStore, String> {
        // HTTP/2 keep-alive finds a member that went silent (not only one that closed):
        // the watch then moves to another.
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(|e| format!("etcd {:?}: {e}", cfg.endpoints))?;
        Ok(EtcdStore {
            client,
            facts: format!("{}/facts/", cfg.prefix.trim_end_matches('/')),
            endpoints: cfg.endpoints.clone(),
        })
    }

    async fn write_inner(&self, w: PendingWrite) -> Result<u64, String> {
        let mut client = self.client.clone();
        let mut ops = Vec::new();
        for (key, value, until) in w.puts {
            let mut opts = PutOptions::new();
            if let Some(until) = until {
                let ttl = (until - now_unix()).max(1);
                let lease = client
                    .lease_grant(ttl, None)
                    .await
                    .map_err(|e| format!("lease: {e}"))?;
                opts = opts.with_lease(lease.id());
            }
            ops.push(TxnOp::put(
                format!("{}{key}", self.facts),
                value,
                Some(opts),
            ));
        }
        for key in w.deletes {
            ops.push(TxnOp::delete(format!("{}{key}", self.facts), None));
        }
        // Unconditional: the store orders concurrent writers, and every host applies
        // them in that order from its watch.
        let txn = Txn::new().and_then(ops);
        let resp = client.txn(txn).await.map_err(|e| e.to_string())?;
        let revision = resp.header().map_or(0, |h| h.revision());
        u64::try_from(revision).map_err(|_| format!("negative revision {revision}"))
    }
}

impl SharedStore for EtcdStore {
    fn write(
        &self,
        w: PendingWrite,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>> {
        Box::pin(async move {
            match tokio::time::timeout(WRITE_TIMEOUT, self.write_inner(w)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "etcd did not answer within {WRITE_TIMEOUT:?} (the change may still land: check before retrying)"
                )),
            }
        })
    }

    fn describe(&self) -> String {
        format!("etcd {} ({})", self.endpoints.join(","), self.facts)
    }
}

/// How often a connected watch asks etcd to confirm it is in step (a progress notice):
/// the age `status` shows, and the staleness a gateway reports, move in these steps.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Longest wait between tries while etcd cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest a write may take before the operator is told it did not answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which store a fact version counts in: the cluster's id and the prefix.
fn origin(cluster_id: u64, prefix: &str) -> String {
    format!("etcd cluster {cluster_id:016x} {prefix}")
}

/// Ask etcd which cluster it is (a read of nothing).
async fn cluster_id(client: &mut Client, prefix: &str) -> Result<u64, String> {
    let resp = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .map_err(|e| e.to_string())?;
    resp.header()
        .map(|h| h.cluster_id())
        .ok_or_else(|| "a response without a header".to_string())
}

/// Read every fact at one revision.
async fn read_all(client: &mut Client, prefix: &str, origin: &str) -> Result<Facts, String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let events: Vec<StoreEvent> = resp
        .kvs()
        .iter()
        .filter_map(|kv| {
            Some(StoreEvent {
                key: kv.key_str().ok()?.strip_prefix(prefix)?.to_string(),
                value: Some(kv.value().to_vec()),
            })
        })
        .collect();
    let mut facts = Facts::default();
    let (_, problems) = apply_events(&mut facts, &events);
    for p in problems {
        eprintln!("zgate-control: etcd: skipped {p}");
    }
    facts.version = u64::try_from(revision).map_err(|_| format!("revision {revision}"))?;
    facts.origin = Some(origin.to_string());
    Ok(facts)
}

fn with_core(core: &Mutex<Core>, f: impl FnOnce(&mut Core)) {
    if let Ok(mut c) = core.lock() {
        f(&mut c);
    }
}

/// Where to start watching: after this host's own facts when they came from this
/// store (a restart), else after a full read. `None`: etcd did not answer.
async fn starting_point(
    client: &mut Client,
    prefix: &str,
    core: &Mutex<Core>,
    may_resume: bool,
) -> Result<i64, String> {
    let origin = origin(cluster_id(client, prefix).await?, prefix);
    let resume = if may_resume {
        core.lock().ok().and_then(|c| c.resume_point(&origin))
    } else {
        None
    };
    if let Some(v) = resume {
        eprintln!("zgate-control: etcd: resuming after revision {v} (the facts kept here)");
        return i64::try_from(v).map_err(|_| format!("revision {v}"));
    }
    let facts = read_all(client, prefix, &origin).await?;
    let rev = facts.version;
    eprintln!(
        "zgate-control: etcd: {} fact(s) at revision {rev}",
        facts.changes().len()
    );
    with_core(core, |c| {
        c.replace_shared(facts);
        c.store_contact(Some(rev));
    });
    i64::try_from(rev).map_err(|_| format!("revision {rev}"))
}

/// Why a watch ended.
enum WatchEnd {
    /// etcd compacted past where it was to start: read everything again.
    Compacted(i64),
    /// The stream broke (a member went away, the network): resume from where it was.
    Broken(String),
}

/// Keep this host's facts in step with the store, for ever: a starting point (resume
/// or full read), then a watch from the revision after it; on a broken watch, resume
/// from the last applied revision; past a compaction, read everything again. While
/// watching, a progress notice every [`PROGRESS_EVERY`] says how fresh this host is.
pub async fn follow(store: Arc<EtcdStore>, core: Arc<Mutex<Core>>) {
    let prefix = store.facts.clone();
    let mut client = store.client.clone();
    let mut applied: Option<i64> = None;
    let mut may_resume = true;
    let mut backoff = Duration::from_millis(100);
    loop {
        let after = match applied {
            Some(rev) => rev,
            None => match starting_point(&mut client, &prefix, &core, may_resume).await {
                Ok(rev) => {
                    may_resume = false;
                    applied = Some(rev);
                    rev
                }
                Err(e) => {
                    with_core(&core, |c| c.store_contact(None));
                    eprintln!("zgate-control: etcd: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        match watch(&mut client, &prefix, &core, after, &mut applied).await {
            WatchEnd::Compacted(at) => {
                eprintln!(
                    "zgate-control: etcd compacted past revision {after} (at {at}): reading every fact again"
                );
                applied = None;
                backoff = Duration::from_millis(100);
            }
            WatchEnd::Broken(e) => {
                with_core(&core, |c| c.store_contact(None));
                eprintln!(
                    "zgate-control: etcd watch: {e}; resuming after revision {} in {backoff:?}",
                    applied.unwrap_or(after)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One watch of the facts from the revision after `after`, until it ends; `applied`
/// follows every revision applied.
async fn watch(
    client: &mut Client,
    prefix: &str,
    core: &Mutex<Core>,
    after: i64,
    applied: &mut Option<i64>,
) -> WatchEnd {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(after + 1)
        .with_progress_notify();
    let (mut watcher, mut stream) = match client.watch(prefix, Some(opts)).await {
        Ok(w) => w,
        Err(e) => return WatchEnd::Broken(e.to_string()),
    };
    // Not at once: a watch resuming from an old revision is first told of a
    // compaction, or catches up, before a progress notice can mean anything (etcd 3.4
    // answers one even for a watch still catching up).
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let resp = tokio::select! {
            m = stream.message() => match m {
                Ok(Some(resp)) => resp,
                Ok(None) => return WatchEnd::Broken("the stream ended".into()),
                Err(e) => return WatchEnd::Broken(e.to_string()),
            },
            _ = tick.tick() => {
                if let Err(e) = watcher.request_progress().await {
                    return WatchEnd::Broken(e.to_string());
                }
                continue;
            }
        };
        if resp.canceled() {
            return if resp.compact_revision() > 0 {
                WatchEnd::Compacted(resp.compact_revision())
            } else {
                WatchEnd::Broken(format!("cancelled: {}", resp.cancel_reason()))
            };
        }
        if resp.created() {
            continue;
        }
        let events: Vec<StoreEvent> = resp
            .events()
            .iter()
            .filter_map(|e| {
                let kv = e.kv()?;
                Some(StoreEvent {
                    key: kv.key_str().ok()?.strip_prefix(prefix)?.to_string(),
                    value: (e.event_type() == EventType::Put).then(|| kv.value().to_vec()),
                })
            })
            .collect();
        let last_event = resp
            .events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
            .max();
        match last_event {
            Some(rev) => {
                let r = u64::try_from(rev).unwrap_or(0);
                with_core(core, |c| {
                    c.apply_shared(&events, r);
                    c.store_contact(Some(r));
                });
                *applied = Some(rev);
            }
            None => {
                // A progress notice: every event up to the header's revision has
                // been delivered.
                let rev = resp.header().map_or(0, |h| h.revision());
                with_core(core, |c| c.store_contact(u64::try_from(rev).ok()));
            }
        }
    }
}
