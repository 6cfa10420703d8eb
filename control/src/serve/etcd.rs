//! The fleet's shared fact store on etcd v3 (`--store etcd`): one key per fact under
//! `PREFIX/facts/`, written in a transaction (a fact that ends by itself is deleted at
//! its end by the fleet's elected compiler, in a transaction too), and applied on every host
//! from a watch of that prefix, in revision order, from the revision last applied. A
//! watch that falls behind a compaction resyncs from a full read. Every write also puts
//! `PREFIX/facts/written`, so the revision of the last write is the fact version the
//! dataplanes enforce, the same on a host that read every fact (a delete leaves no key
//! behind, the marker does) and on one that watched each change; a gap cannot pass
//! silently (a dataplane refuses a delta that does not start from
//! what it enforces).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, Txn, TxnOp,
    WatchOptions,
};

use super::shared::{apply_events, PendingWrite, SharedStore, StoreEvent, WRITTEN_KEY};
use super::state::{now_unix, Core};
use super::store::Facts;

/// The store's settings.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix (e.g. `/zgate`).
    pub prefix: String,
    /// TLS (and a client certificate) to the members.
    pub tls: Option<super::EtcdTls>,
}

/// An etcd client error with its causes (tonic says "transport error"; the cause says
/// which: a refused connection, a certificate etcd did not accept...).
pub(super) fn why(e: etcd_client::Error) -> String {
    let (mut out, mut cause): (String, Option<&dyn std::error::Error>) = match &e {
        etcd_client::Error::GRpcStatus(s) => (
            format!("{:?}: {}", s.code(), s.message()),
            std::error::Error::source(s),
        ),
        other => (other.to_string(), std::error::Error::source(other)),
    };
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The TLS settings for the client, from the files named.
fn tls_options(t: &super::EtcdTls) -> Result<TlsOptions, String> {
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("--etcd-{what} `{}`: {e}", p.display()))
    };
    let ca = read("ca", &t.ca)?;
    if !ca.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "--etcd-ca `{}`: no PEM certificate in it",
            t.ca.display()
        ));
    }
    let mut opts = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = &t.identity {
        let (c, k) = (read("cert", cert)?, read("key", key)?);
        if !k.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(format!(
                "--etcd-key `{}`: no PEM private key in it",
                key.display()
            ));
        }
        opts = opts.identity(Identity::from_pem(c, k));
    }
    Ok(opts)
}

/// A connected store.
pub struct EtcdStore {
    pub(super) client: Client,
    /// The key prefix, without a trailing slash.
    pub(super) root: String,
    facts: String,
    endpoints: Vec<String>,
}

impl EtcdStore {
    /// Connect (the client keeps reconnecting by itself afterwards).
    pub async fn connect(cfg: &EtcdConfig) -> Result<EtcdStore, String> {
        // HTTP/2 keep-alive finds a member that went silent (not only one that closed):
        // the watch then moves to another. Not more often than etcd's server allows
        // (`--grpc-keepalive-min-time`, 5 s by default), nor on a connection without
        // a stream: etcd answers either with GOAWAY (too many pings) and every call on
        // that connection fails.
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false);
        if let Some(t) = &cfg.tls {
            opts = opts.with_tls(tls_options(t)?);
        }
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(|e| format!("etcd {:?}: {}", cfg.endpoints, why(e)))?;
        Ok(EtcdStore {
            client,
            root: cfg.prefix.trim_end_matches('/').to_string(),
            facts: format!("{}/facts/", cfg.prefix.trim_end_matches('/')),
            endpoints: cfg.endpoints.clone(),
        })
    }

    /// One try at the transaction that makes `w`, marked with `nonce` in `written`.
    async fn write_once(&self, w: &PendingWrite, nonce: &str) -> Result<u64, WriteError> {
        let mut client = self.client.clone();
        let mut ops = Vec::new();
        // No lease for a fact that ends by itself: the elected compiler deletes it in
        // a write like this one, so its end moves the fact version like any change.
        for (key, value, _until) in &w.puts {
            ops.push(TxnOp::put(
                format!("{}{key}", self.facts),
                value.clone(),
                None,
            ));
        }
        for key in &w.deletes {
            ops.push(TxnOp::delete(format!("{}{key}", self.facts), None));
        }
        let written = serde_json::json!({
            "who": w.who, "what": w.what, "at": now_unix(), "nonce": nonce,
        });
        ops.push(TxnOp::put(
            format!("{}{WRITTEN_KEY}", self.facts),
            written.to_string(),
            None,
        ));
        // Unconditional: the store orders concurrent writers, and every host applies
        // them in that order from its watch.
        let txn = Txn::new().and_then(ops);
        let resp = client.txn(txn).await.map_err(WriteError::from)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        u64::try_from(revision)
            .map_err(|_| WriteError::Final(format!("negative revision {revision}")))
    }

    /// The revision of the write marked `nonce`, if it is the last one in the store.
    async fn landed(&self, nonce: &str) -> Option<u64> {
        let mut client = self.client.clone();
        let resp = tokio::time::timeout(
            WRITE_ATTEMPT,
            client.get(format!("{}{WRITTEN_KEY}", self.facts), None),
        )
        .await
        .ok()?
        .ok()?;
        let kv = resp.kvs().first()?;
        let v: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
        (v.get("nonce").and_then(|n| n.as_str()) == Some(nonce))
            .then(|| u64::try_from(kv.mod_revision()).ok())
            .flatten()
    }
}

/// Why one try at a write failed.
enum WriteError {
    /// The store may answer another try (no member reached, no leader yet).
    Retry(String),
    /// It will not (the request itself was refused).
    Final(String),
}

impl From<etcd_client::Error> for WriteError {
    fn from(e: etcd_client::Error) -> Self {
        use tonic::Code;
        match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                WriteError::Retry(why(e))
            }
            etcd_client::Error::GRpcStatus(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Unknown
                ) =>
            {
                WriteError::Retry(why(e))
            }
            _ => WriteError::Final(why(e)),
        }
    }
}

/// A mark no other write carries: this process, the time, a counter.
fn write_nonce() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{ns}-{n}", std::process::id())
}

impl SharedStore for EtcdStore {
    /// Write, trying again while the store cannot answer (a member just died, its
    /// proposals are lost until a new leader is elected) for up to [`WRITE_TIMEOUT`].
    /// Before another try, the marker says whether the last one landed after all. The
    /// writes are idempotent (puts of whole records, deletes), so one that lands twice
    /// changes nothing more.
    fn write<'a>(
        &'a self,
        w: &'a PendingWrite,
    ) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + 'a>> {
        Box::pin(async move {
            let nonce = write_nonce();
            let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
            let mut last = String::new();
            while tokio::time::Instant::now() < deadline {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(WRITE_ATTEMPT.min(left), self.write_once(w, &nonce))
                    .await
                {
                    Ok(Ok(rev)) => return Ok(rev),
                    Ok(Err(WriteError::Final(e))) => return Err(e),
                    Ok(Err(WriteError::Retry(e))) => last = e,
                    Err(_) => last = format!("no answer within {WRITE_ATTEMPT:?}"),
                }
                if let Some(rev) = self.landed(&nonce).await {
                    return Ok(rev);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(format!(
                "etcd did not answer within {WRITE_TIMEOUT:?} ({last}; the change may still land: check before retrying)"
            ))
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
/// Longest one try at a write may take: a proposal sent to a leader that just died is
/// lost, and etcd itself would answer only after its request timeout (5 s and more).
const WRITE_ATTEMPT: Duration = Duration::from_millis(1500);

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
        .map_err(why)?;
    resp.header()
        .map(|h| h.cluster_id())
        .ok_or_else(|| "a response without a header".to_string())
}

/// Read every fact at one revision: the facts, at the version of the last write, and
/// holding every change through that revision.
async fn read_all(client: &mut Client, prefix: &str, origin: &str) -> Result<Facts, String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(why)?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let last_write = resp
        .kvs()
        .iter()
        .map(|kv| kv.mod_revision())
        .max()
        .unwrap_or(0);
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
    facts.version = u64::try_from(last_write).map_err(|_| format!("revision {last_write}"))?;
    facts.through = u64::try_from(revision).map_err(|_| format!("revision {revision}"))?;
    facts.origin = Some(origin.to_string());
    Ok(facts)
}

/// `f` on the locked core; `None`: the lock is poisoned.
pub(super) fn with_core<T>(core: &Mutex<Core>, f: impl FnOnce(&mut Core) -> T) -> Option<T> {
    core.lock().ok().map(|mut c| f(&mut c))
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
    let rev = facts.through;
    eprintln!(
        "zgate-control: etcd: {} fact(s) at revision {rev} (facts version {})",
        facts.changes().len(),
        facts.version
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
        Err(e) => return WatchEnd::Broken(why(e)),
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
                Err(e) => return WatchEnd::Broken(why(e)),
            },
            _ = tick.tick() => {
                if let Err(e) = watcher.request_progress().await {
                    return WatchEnd::Broken(why(e));
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
