//! The fleet's tables through etcd: one compiler at a time, elected (etcd's election
//! API on a lease this process keeps alive), compiles its policy directory on change
//! and publishes the table as content-addressed chunks (`PREFIX/policy/chunks/SHA256`,
//! values well under etcd's 1.5 MiB request limit), then the manifest that names them
//! (`PREFIX/policy/manifest`), written last in one transaction that holds only while
//! it is still the leader and no one else wrote a manifest meanwhile. Every host (the
//! compiler's too) watches the manifest, reads the chunks at the manifest's revision,
//! verifies each hash and the whole table's, and enforces it: a half-written table is
//! never seen, and an altered one is refused.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaderKey, Txn, TxnOp, WatchOptions,
};
use tokio::sync::Notify;

use super::etcd::{why, with_core, EtcdStore};
use super::shared::{sha256_hex, Manifest};
use super::state::{now_unix, Core};

/// The compiler's lease: another is elected this long after it dies.
const LEADER_TTL_S: i64 = 3;
/// Chunk size: a third of etcd's default request limit (1.5 MiB) per put.
const CHUNK: usize = 512 * 1024;
/// How often the compiler looks again without being woken (a failed publish retries).
const RECHECK: Duration = Duration::from_secs(2);
/// Longest wait between tries while etcd cannot be reached.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn keys(store: &EtcdStore) -> (String, String, String) {
    (
        format!("{}/policy/leader", store.root),
        format!("{}/policy/manifest", store.root),
        format!("{}/policy/chunks/", store.root),
    )
}

/// Stand for election for ever; while elected, publish every new compilation.
pub async fn lead(
    store: Arc<EtcdStore>,
    core: Arc<Mutex<Core>>,
    me: String,
    compiled: Arc<Notify>,
) {
    let (election, _, _) = keys(&store);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut client = store.client.clone();
        let lease = match client.lease_grant(LEADER_TTL_S, None).await {
            Ok(l) => l.id(),
            Err(e) => {
                eprintln!(
                    "zgate-control: etcd: no lease for the compiler election ({}); retrying in {backoff:?}",
                    why(e)
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let (lost_tx, mut lost) = tokio::sync::watch::channel(false);
        let keeper = tokio::spawn(keep_alive(client.clone(), lease, lost_tx));
        let won = tokio::select! {
            r = client.campaign(election.clone(), me.clone(), lease) => r,
            _ = lost.changed() => {
                keeper.abort();
                continue;
            }
        };
        let leader = match won {
            Ok(mut r) => r.take_leader(),
            Err(e) => {
                eprintln!("zgate-control: etcd: compiler election: {}", why(e));
                None
            }
        };
        let Some(leader) = leader else {
            keeper.abort();
            let _gone = client.lease_revoke(lease).await;
            tokio::time::sleep(backoff).await;
            continue;
        };
        with_core(&core, |c| c.set_fleet_leader(true));
        loop {
            match publish(&mut client, &store, &core, &leader, &me).await {
                Ok(Some(m)) => eprintln!(
                    "zgate-control: published table version {} to the fleet ({} rule(s), {} chunk(s), {} bytes)",
                    m.version,
                    m.rules,
                    m.chunks.len(),
                    m.size
                ),
                Ok(None) => {}
                Err(e) => eprintln!("zgate-control: publishing the table: {e}; retrying"),
            }
            tokio::select! {
                _ = compiled.notified() => {}
                _ = lost.changed() => break,
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
        with_core(&core, |c| c.set_fleet_leader(false));
        keeper.abort();
    }
}

/// Keep `lease` alive (every third of its TTL) until etcd says it is gone or cannot
/// be reached; then say so on `lost`.
async fn keep_alive(mut client: Client, lease: i64, lost: tokio::sync::watch::Sender<bool>) {
    if let Ok((mut keeper, mut acks)) = client.lease_keep_alive(lease).await {
        let every = Duration::from_millis(u64::try_from(LEADER_TTL_S * 1000 / 3).unwrap_or(1000));
        loop {
            tokio::time::sleep(every).await;
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(every, acks.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                _ => break,
            }
        }
    }
    let _nobody_waits = lost.send(true);
}

/// The manifest now, with its mod revision (0: none yet).
async fn current_manifest(
    client: &mut Client,
    key: &str,
) -> Result<(Option<Manifest>, i64), String> {
    let resp = client.get(key, None).await.map_err(why)?;
    match resp.kvs().first() {
        None => Ok((None, 0)),
        Some(kv) => {
            let m = serde_json::from_slice::<Manifest>(kv.value())
                .map_err(|e| format!("the manifest in etcd is not one: {e}"))?;
            Ok((Some(m), kv.mod_revision()))
        }
    }
}

/// Publish the local compilation if the fleet does not enforce it yet: the chunks,
/// then the manifest, only while still the leader and nobody wrote one meanwhile;
/// then drop the chunks no manifest names any more (a host still reading the old one
/// reads them at its revision).
async fn publish(
    client: &mut Client,
    store: &EtcdStore,
    core: &Mutex<Core>,
    leader: &LeaderKey,
    me: &str,
) -> Result<Option<Manifest>, String> {
    let (_, manifest_key, chunk_prefix) = keys(store);
    let (current, mod_rev) = current_manifest(client, &manifest_key).await?;
    let Some(table) = with_core(core, |c| c.fleet_candidate(current.as_ref())).flatten() else {
        return Ok(None);
    };
    let mut chunks = Vec::new();
    for part in table.bytes.chunks(CHUNK) {
        let sha = sha256_hex(part);
        client
            .put(format!("{chunk_prefix}{sha}"), part.to_vec(), None)
            .await
            .map_err(|e| format!("chunk {sha}: {}", why(e)))?;
        chunks.push(sha);
    }
    let m = Manifest {
        version: table.version,
        table_sha256: sha256_hex(&table.bytes),
        policy_sha256: table.policy_sha256,
        rules: table.rules,
        size: table.bytes.len(),
        chunks,
        compiled_by: me.to_string(),
        git_commit: table.git_commit,
        at: now_unix(),
    };
    let value = serde_json::to_vec(&m).map_err(|e| e.to_string())?;
    let txn = Txn::new()
        .when(vec![
            Compare::create_revision(leader.key(), CompareOp::Equal, leader.rev()),
            Compare::mod_revision(manifest_key.clone(), CompareOp::Equal, mod_rev),
        ])
        .and_then(vec![TxnOp::put(manifest_key, value, None)]);
    let resp = client.txn(txn).await.map_err(why)?;
    if !resp.succeeded() {
        return Err("no longer the leader, or another manifest was written meanwhile".into());
    }
    let old = client
        .get(
            chunk_prefix.clone(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .map_err(why)?;
    for kv in old.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        let named = key
            .strip_prefix(&chunk_prefix)
            .is_some_and(|sha| m.chunks.iter().any(|c| c == sha));
        if !named {
            let _retried_next_time = client.delete(key, None).await;
        }
    }
    Ok(Some(m))
}

/// Enforce every manifest the store gets, for ever: the one there now, then each one
/// its watch sees; after a broken watch or a compaction, read the current one again
/// (only the newest table matters).
pub async fn follow_tables(store: Arc<EtcdStore>, core: Arc<Mutex<Core>>) {
    let (_, manifest_key, chunk_prefix) = keys(&store);
    let mut client = store.client.clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let resp = match client.get(manifest_key.clone(), None).await {
            Ok(r) => r,
            Err(_) => {
                // The facts watch reports the outage; retry quietly.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let header_rev = resp.header().map_or(0, |h| h.revision());
        if let Some(kv) = resp.kvs().first() {
            if let Err(e) = apply(
                &mut client,
                &core,
                &chunk_prefix,
                kv.value(),
                kv.mod_revision(),
            )
            .await
            {
                eprintln!("zgate-control: etcd: {e}; the enforced table stays, trying again");
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
        }
        let opts = WatchOptions::new().with_start_revision(header_rev + 1);
        let Ok((_watcher, mut stream)) = client.watch(manifest_key.clone(), Some(opts)).await
        else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        'watching: while let Ok(Some(resp)) = stream.message().await {
            if resp.canceled() {
                break;
            }
            for e in resp.events() {
                let Some(kv) = e.kv().filter(|_| e.event_type() == EventType::Put) else {
                    continue;
                };
                let applied = apply(
                    &mut client,
                    &core,
                    &chunk_prefix,
                    kv.value(),
                    kv.mod_revision(),
                )
                .await;
                if let Err(e) = applied {
                    // Read the newest manifest again after a pause.
                    eprintln!("zgate-control: etcd: {e}; the enforced table stays, trying again");
                    break 'watching;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Fetch, verify and enforce the table a manifest names (read at the manifest's
/// revision, so a chunk dropped since is still there; chunks are named by their hash,
/// so the newest copy of one is as good when that revision is compacted).
async fn apply(
    client: &mut Client,
    core: &Mutex<Core>,
    chunk_prefix: &str,
    value: &[u8],
    rev: i64,
) -> Result<(), String> {
    let m = serde_json::from_slice::<Manifest>(value)
        .map_err(|e| format!("the policy manifest is not one ({e})"))?;
    if with_core(core, |c| c.enforced().is_some_and(|v| v >= m.version)).unwrap_or(true) {
        return Ok(());
    }
    // Bounds before anything is fetched: no table larger than a dataplane accepts on
    // its channel, and no more chunks than such a size needs.
    let max = usize::try_from(zgate_proto::MAX_PAYLOAD).unwrap_or(usize::MAX);
    if m.size > max || m.chunks.len() > m.size / CHUNK + 1 {
        return Err(format!(
            "the manifest of table version {} claims {} bytes in {} chunks (at most {max} bytes, {CHUNK} a chunk)",
            m.version,
            m.size,
            m.chunks.len()
        ));
    }
    let mut bytes = Vec::with_capacity(m.size);
    for sha in &m.chunks {
        let key = format!("{chunk_prefix}{sha}");
        let got = match client
            .get(key.clone(), Some(GetOptions::new().with_revision(rev)))
            .await
        {
            Ok(r) => r,
            Err(_) => client.get(key, None).await.map_err(why)?,
        };
        let chunk = got
            .kvs()
            .first()
            .map(|kv| kv.value())
            .ok_or_else(|| format!("chunk {sha} of table version {} is missing", m.version))?;
        if sha256_hex(chunk) != *sha {
            return Err(format!(
                "chunk {sha} of table version {} does not match its hash",
                m.version
            ));
        }
        if bytes.len() + chunk.len() > m.size {
            return Err(format!(
                "the chunks of table version {} are longer than its manifest's {} bytes",
                m.version, m.size
            ));
        }
        bytes.extend_from_slice(chunk);
    }
    if bytes.len() != m.size {
        return Err(format!(
            "the chunks of table version {} hold {} bytes, its manifest says {}",
            m.version,
            bytes.len(),
            m.size
        ));
    }
    with_core(core, |c| c.enforce_fleet_table(&bytes, &m)).unwrap_or(Ok(()))
}
