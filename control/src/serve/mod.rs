//! `zgate-control serve`: the control process (DESIGN "The two processes").
//!
//! - watches the policy directory, compiles every change, keeps the last N tables
//!   (`rollback`), and refuses a broken policy with its full report;
//! - keeps the live facts (revocations, posture, risk, just-in-time grants) in the state
//!   directory and applies each change as a small versioned delta;
//! - serves the dataplanes on the channel socket (`zgate-proto` frames), and the
//!   operators (CLI) on the operator socket and, optionally, SIEM/EDR systems on a
//!   loopback HTTP/JSON API with bearer tokens.
//!
//! It is never on the data path: if it stops, dataplanes keep enforcing what they
//! have (fail static).

mod api;
mod channel;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
mod etcd_policy;
pub mod shared;
pub mod state;
pub mod store;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};

use state::{Core, CoreConfig};
use store::FileStore;

/// `serve`'s settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The policy directory.
    pub policy_dir: PathBuf,
    /// The state directory (facts, table history, audit).
    pub state_dir: PathBuf,
    /// The operator socket (the CLI).
    pub socket: PathBuf,
    /// The dataplanes' channel socket.
    pub channel: PathBuf,
    /// Uids (beside root and our own) admitted on both sockets.
    pub admit: Vec<u32>,
    /// The HTTP/JSON API's loopback address, if on.
    pub api: Option<SocketAddr>,
    /// The API's token file (`NAME TOKEN` per line).
    pub api_tokens: Option<PathBuf>,
    /// Tables kept in the history.
    pub keep: usize,
    /// The audit file (default `STATE_DIR/audit.jsonl`).
    pub audit: Option<PathBuf>,
    /// Where the facts live.
    pub store: StoreChoice,
}

/// Where the facts live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// `STATE_DIR/facts.json`: one control process.
    File,
    /// etcd v3, shared by a fleet of control processes (feature `etcd`).
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
        /// Key prefix.
        prefix: String,
        /// TLS to the members (with `https://` endpoints).
        tls: Option<EtcdTls>,
    },
}

/// TLS to etcd: the CA that signed the members' certificates, and this control
/// process's own certificate and key (etcd's `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM CA bundle the members' certificates must chain to.
    pub ca: PathBuf,
    /// PEM certificate chain and PEM private key, when etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Why `serve` could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// The state directory could not be read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A socket could not be set up.
    #[error("{what} `{path}`: {source}")]
    Socket {
        /// Which.
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The policy directory cannot be watched.
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    /// The runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

impl ServeError {
    /// sysexits: 64 bad usage/config, 65 bad data (corrupt state), 71 OS error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) => 64,
            ServeError::Store(store::StoreError::Corrupt { .. }) => 65,
            _ => 71,
        }
    }
}

/// Who may use the sockets: root, the control process's own uid, and `--admit`.
#[derive(Debug)]
pub struct Admitted(Vec<u32>);

impl Admitted {
    fn new(extra: &[u32]) -> Admitted {
        let mut v = vec![0, effective_uid()];
        v.extend_from_slice(extra);
        Admitted(v)
    }

    /// Whether `uid` is admitted.
    pub fn uid(&self, uid: u32) -> bool {
        self.0.contains(&uid)
    }
}

fn effective_uid() -> u32 {
    // Read from /proc: no unsafe call needed for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|rest| rest.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// A user name or uid as `--admit` takes it, resolved through `/etc/passwd`.
pub fn resolve_user(text: &str) -> Option<u32> {
    if let Ok(uid) = text.parse() {
        return Some(uid);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == text).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// Run the control process until SIGTERM or SIGINT.
pub fn run(o: ServeOptions) -> Result<(), ServeError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?
        .block_on(serve(o))
}

async fn serve(mut o: ServeOptions) -> Result<(), ServeError> {
    if !o.policy_dir.is_dir() {
        return Err(ServeError::Config(format!(
            "--policy-dir `{}` is not a directory",
            o.policy_dir.display()
        )));
    }
    // Absolute, so that `status` and the log name it unambiguously.
    if let Ok(p) = o.policy_dir.canonicalize() {
        o.policy_dir = p;
    }
    let tokens = match (&o.api, &o.api_tokens) {
        (Some(addr), _) if !addr.ip().is_loopback() => {
            return Err(ServeError::Config(format!(
                "--api {addr}: the API binds to loopback only (127.0.0.0/8 or ::1); put a TLS proxy in front for anything else"
            )))
        }
        (Some(_), None) => {
            return Err(ServeError::Config(
                "--api needs --api-tokens FILE: every request is authenticated".into(),
            ))
        }
        (Some(_), Some(path)) => Some(load_tokens(path)?),
        (None, _) => None,
    };
    std::fs::create_dir_all(&o.state_dir).map_err(|source| ServeError::Socket {
        what: "state directory",
        path: o.state_dir.display().to_string(),
        source,
    })?;
    let audit_path = o
        .audit
        .clone()
        .unwrap_or_else(|| o.state_dir.join("audit.jsonl"));
    let audit = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&audit_path)
        .map_err(|source| ServeError::Socket {
            what: "audit file",
            path: audit_path.display().to_string(),
            source,
        })?;
    let core = Core::open(
        CoreConfig {
            policy_dir: o.policy_dir.clone(),
            state_dir: o.state_dir.clone(),
            keep: o.keep,
        },
        Box::new(FileStore::new(&o.state_dir)),
        Box::new(audit),
    )?;
    eprintln!(
        "zgate-control: state `{}`: table version {}, facts version {}",
        o.state_dir.display(),
        core.enforced().map_or("none".into(), |v| v.to_string()),
        core.facts_version()
    );
    let core = Arc::new(Mutex::new(core));
    match &o.store {
        StoreChoice::File => {}
        #[cfg(feature = "etcd")]
        StoreChoice::Etcd {
            endpoints,
            prefix,
            tls,
        } => {
            let store = etcd::EtcdStore::connect(&etcd::EtcdConfig {
                endpoints: endpoints.clone(),
                prefix: prefix.clone(),
                tls: tls.clone(),
            })
            .await
            .map_err(ServeError::Config)?;
            let store = Arc::new(store);
            eprintln!("zgate-control: facts in {}", shared::SharedStore::describe(&*store));
            // Named in the election and in the manifests it publishes.
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown-host".into());
            let me = format!("{host} pid {}", std::process::id());
            let compiled = match core.lock() {
                Ok(mut c) => {
                    c.use_shared(Arc::clone(&store) as Arc<dyn shared::SharedStore>);
                    c.use_fleet_policy(me.clone())
                }
                Err(_) => return Err(ServeError::Config("state lock poisoned".into())),
            };
            tokio::spawn(etcd::follow(Arc::clone(&store), Arc::clone(&core)));
            tokio::spawn(etcd_policy::follow_tables(Arc::clone(&store), Arc::clone(&core)));
            tokio::spawn(etcd_policy::lead(store, Arc::clone(&core), me, compiled));
        }
        #[cfg(not(feature = "etcd"))]
        StoreChoice::Etcd { .. } => {
            return Err(ServeError::Config(
                "--store etcd: this build has no etcd store (build zgate-control with `--features etcd`; it needs protoc, Debian's protobuf-compiler)".into(),
            ))
        }
    }
    let admitted = Arc::new(Admitted::new(&o.admit));

    let operator = bind_unix(&o.socket, "operator socket")?;
    let channel_listener = bind_unix(&o.channel, "channel socket")?;
    let _watcher = watch::start(&o.policy_dir, Arc::clone(&core))?;

    let app = api::routes(Arc::clone(&core)).layer(axum::middleware::from_fn_with_state(
        Arc::clone(&admitted),
        api::uds_auth,
    ));
    tokio::spawn(async move {
        let svc = app.into_make_service_with_connect_info::<api::UdsPeer>();
        if let Err(e) = axum::serve(operator, svc).await {
            eprintln!("zgate-control: operator socket stopped: {e}");
        }
    });
    if let (Some(addr), Some(tokens)) = (o.api, tokens) {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Socket {
                what: "API address",
                path: addr.to_string(),
                source,
            })?;
        let app = api::routes(Arc::clone(&core)).layer(axum::middleware::from_fn_with_state(
            Arc::new(tokens),
            api::token_auth,
        ));
        eprintln!("zgate-control: HTTP/JSON API on http://{addr} (bearer tokens)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, app).await {
                eprintln!("zgate-control: API stopped: {e}");
            }
        });
    }
    tokio::spawn(channel::serve(
        channel_listener,
        Arc::clone(&core),
        Arc::clone(&admitted),
    ));
    tokio::spawn(expire_loop(Arc::clone(&core)));
    eprintln!(
        "zgate-control: serving: policy `{}`, operators on `{}`, dataplanes on `{}`",
        o.policy_dir.display(),
        o.socket.display(),
        o.channel.display()
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Runtime)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("zgate-control: stopping; dataplanes keep enforcing what they have");
    let _gone = std::fs::remove_file(&o.socket);
    let _gone = std::fs::remove_file(&o.channel);
    Ok(())
}

/// Lift time-bounded revocations and drop ended grants when their time comes (within
/// a second: facts are kept in whole seconds, and a grant's flows are closed by the
/// dataplanes themselves at its end).
///
/// In a fleet the elected compiler does it, writing the deletes to the shared store
/// (every host applies them from its watch); the others wait for those writes.
async fn expire_loop(core: Arc<Mutex<Core>>) {
    loop {
        let (writes, store) = match core.lock() {
            Ok(mut c) => {
                c.expire(state::now_unix());
                (c.take_outbox(), c.shared_store())
            }
            Err(_) => return,
        };
        if let Some(store) = store.filter(|_| !writes.is_empty()) {
            match shared::write_all(&*store, &writes).await {
                Ok((_, committed_us)) => {
                    if let Ok(mut c) = core.lock() {
                        c.audit_writes(&writes, committed_us);
                    }
                }
                Err(e) => eprintln!("zgate-control: expiring facts in the shared store: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Bind a Unix socket at `path`: a stale socket left by a dead process is replaced,
/// one a live process answers on is not.
fn bind_unix(path: &Path, what: &'static str) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        what,
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process is serving on it",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let l = UnixListener::bind(path).map_err(err)?;
    // Group members may connect; peer credentials decide who is served.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(l)
}

/// `NAME TOKEN` per line (`#` comments); the file must not be readable by others.
fn load_tokens(path: &Path) -> Result<api::Tokens, ServeError> {
    let meta = std::fs::metadata(path).map_err(|source| ServeError::Socket {
        what: "API token file",
        path: path.display().to_string(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ServeError::Config(format!(
            "--api-tokens `{}` is readable by group or others (chmod 600 it)",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::Socket {
        what: "API token file",
        path: path.display().to_string(),
        source,
    })?;
    let mut tokens = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(token), None) if token.len() >= 32 => {
                tokens.insert(token.to_string(), name.to_string());
            }
            _ => {
                return Err(ServeError::Config(format!(
                    "{}:{}: expected `NAME TOKEN` with a token of at least 32 characters",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    if tokens.is_empty() {
        return Err(ServeError::Config(format!(
            "--api-tokens `{}` holds no token",
            path.display()
        )));
    }
    Ok(api::Tokens(tokens))
}
