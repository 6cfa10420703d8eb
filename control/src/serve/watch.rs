//! Watching the policy directory (inotify, through `notify`): every change is
//! compiled, after a short quiet period so that a `git checkout` touching many files
//! is one compilation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::state::Core;
use crate::load;

/// Quiet time after the last change before compiling.
const SETTLE: Duration = Duration::from_millis(200);

/// Why the directory cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch `{dir}`: {source}")]
pub struct WatchError {
    dir: PathBuf,
    source: notify::Error,
}

/// Compile the policy directory once, then again after every change, for ever. The
/// returned watcher must be kept alive.
pub fn start(dir: &Path, core: Arc<Mutex<Core>>) -> Result<notify::RecommendedWatcher, WatchError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Any change (or a watch error) is a reason to look again; reads are not (the
        // compilation's own reads would start the next one, for ever).
        if ev
            .as_ref()
            .is_ok_and(|e| matches!(e.kind, notify::EventKind::Access(_)))
        {
            return;
        }
        let _watching_ended = tx.send(()).map(|_| ev.is_ok());
    })
    .map_err(|source| WatchError {
        dir: dir.to_path_buf(),
        source,
    })?;
    watcher
        .watch(dir, RecursiveMode::Recursive)
        .map_err(|source| WatchError {
            dir: dir.to_path_buf(),
            source,
        })?;
    let dir = dir.to_path_buf();
    tokio::spawn(async move {
        compile_now(&dir, &core).await;
        while rx.recv().await.is_some() {
            // Let the burst settle: wait until SETTLE passes without an event.
            loop {
                match tokio::time::timeout(SETTLE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            compile_now(&dir, &core).await;
        }
    });
    Ok(watcher)
}

/// Compile (off the async threads) and hand the result to the core.
pub async fn compile_now(dir: &Path, core: &Arc<Mutex<Core>>) {
    let d = dir.to_path_buf();
    let result =
        tokio::task::spawn_blocking(move || (load::compile_quietly(&d), git_commit(&d))).await;
    let Ok((table, commit)) = result else {
        eprintln!("zgate-control: policy compilation panicked; the enforced table stays");
        return;
    };
    if let Ok(mut c) = core.lock() {
        c.policy_compiled(table, commit);
    }
}

/// The commit checked out in `dir`, when it is in a git work tree (and git is here).
fn git_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let commit = text.trim();
    (out.status.success() && !commit.is_empty()).then(|| commit.to_string())
}
