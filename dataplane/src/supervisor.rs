//! The supervisor: the process's main thread once workers run.
//!
//! It binds every worker's listeners (and the operator socket) before any worker starts
//! (so a bind error stops the process before it serves anything), starts and pins the
//! workers, then waits on a signalfd, the admin socket and the operator socket.
//! SIGTERM/SIGINT or `drain`: drain (workers stop accepting, live flows run on up to
//! `drain_timeout`), then stop. SIGHUP or `reload`: reload the table file and the TLS
//! files; a table that does not verify is refused and the old one stays. It never
//! touches a flow: it only writes the [`Published`] block, wakes workers, and reads
//! counters.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zgate_table::DecisionTable;

use crate::admin::{AdminEndpoint, AdminView};
use crate::audit::{AuditNames, AuditWriter};
use crate::channel::Channel;
use crate::config::{Config, Host};
use crate::metrics::{Count, M};
use crate::operator::{json_string, Command, OperatorError, OperatorSocket};
use crate::shared::{Phase, Published, StatsView, WorkerStats};
use crate::sys::{self, PollSet};
use crate::tls::{ListenerTls, ReloadEvent, TlsWatch};
use crate::worker::{self, WorkerError, WorkerListener, WorkerSetup};
use zgate_telemetry::AuditQueue;

/// Why a table file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    /// The bytes are not a table this build can verify.
    #[error("does not verify: {0}")]
    Decode(zgate_table::LoadError),
}

/// Read and verify a table file.
pub fn load_table(path: &Path) -> Result<DecisionTable, TableError> {
    let bytes = std::fs::read(path).map_err(TableError::Read)?;
    DecisionTable::decode(&bytes).map_err(TableError::Decode)
}

/// Why a reload (SIGHUP, `reload`) published no new table: the current one stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config names no table file: every flow is still denied.
    #[error("no table is configured; every flow is still denied")]
    NoTable,
    /// The table file cannot be used.
    #[error("table `{path}` refused, the current one stays: {source}")]
    Table {
        /// The path.
        path: PathBuf,
        /// Why.
        source: TableError,
    },
}

/// What one reload did, for the log and for whoever asked (the operator socket).
struct Reloaded {
    /// The table published, or why none was; `None` when tables come from the
    /// control process (`[control]`), not from a file.
    table: Option<Result<u64, ReloadError>>,
    /// Per listener whose TLS material was refused: its name and every error.
    tls_refused: Vec<(String, Vec<String>)>,
}

/// Why `zgate run` stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configured table file cannot be used.
    #[error("table `{path}`: {source}")]
    Table {
        /// The path.
        path: PathBuf,
        /// Why.
        source: TableError,
    },
    /// A listener could not be bound.
    #[error("listener `{listener}`: cannot listen on {addr}: {source}")]
    Bind {
        /// Listener name.
        listener: String,
        /// Address.
        addr: std::net::SocketAddr,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The admin endpoint could not be bound.
    #[error("admin: cannot listen on {addr}: {source}")]
    Admin {
        /// Address.
        addr: std::net::SocketAddr,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// Signal, eventfd or thread set-up failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A worker failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
    /// A worker thread panicked.
    #[error("worker {0} panicked")]
    WorkerPanicked(usize),
    /// `[process]` names an account this machine does not have.
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    /// Privileges could not be dropped: the gateway does not serve with them.
    #[error(transparent)]
    Privileges(#[from] crate::process::DropError),
    /// The operator socket could not be set up.
    #[error(transparent)]
    Operator(#[from] OperatorError),
}

impl RunError {
    /// The process exit code for this error (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Table { .. } | RunError::Process(_) => 64, // EX_USAGE: bad config
            RunError::Worker(_) | RunError::WorkerPanicked(_) => 70, // EX_SOFTWARE
            // EX_USAGE: another gateway has the socket, or the path is not a socket.
            RunError::Operator(OperatorError::InUse { .. } | OperatorError::NotASocket { .. }) => {
                64
            }
            _ => 71, // EX_OSERR
        }
    }
}

/// Wall-clock Unix seconds (certificate validity checks on load and reload).
#[expect(
    clippy::disallowed_methods,
    reason = "the supervisor's own clock, off the data path"
)]
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Wall-clock Unix milliseconds (how old the control process's facts are).
#[expect(
    clippy::disallowed_methods,
    reason = "the supervisor's own clock, off the data path"
)]
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One line on stderr. The supervisor is the only thread that logs.
pub fn log(msg: std::fmt::Arguments<'_>) {
    eprintln!("zgate: {msg}");
}

struct Running {
    handle: Option<JoinHandle<Result<(), WorkerError>>>,
    stats: Arc<WorkerStats>,
    wake: OwnedFd,
    audit: Arc<AuditQueue>,
}

/// Events a worker may queue between two drains (the supervisor drains every 100 ms
/// at most): about 200k decisions per second per worker before any is dropped.
const AUDIT_QUEUE: usize = 1 << 15;
/// Most events written per supervisor turn, over all workers.
const AUDIT_BUDGET: usize = 1 << 16;

/// Run the gateway until it has drained after SIGTERM/SIGINT.
#[expect(
    clippy::disallowed_methods,
    reason = "the supervisor's own clock: drain deadlines, off the data path"
)]
pub fn run(
    config: &Config,
    host: &Host,
    tls: &[Option<ListenerTls>],
    base: &Path,
) -> Result<(), RunError> {
    for (l, t) in config.listeners.iter().zip(tls) {
        match t.as_ref().map(|t| t.server.client_auth()) {
            None => log(format_args!(
                "listener `{}`: plain TCP, no TLS (flows carry no identity)",
                l.name
            )),
            Some(None) => log(format_args!(
                "listener `{}`: TLS without client certificates (flows carry no identity)",
                l.name
            )),
            Some(Some(_)) => {}
        }
        // A single bundle not bound to a trust domain lets any CA in it vouch for any
        // SPIFFE ID (docs/tls.md, "Trust domains"): allowed, but said out loud.
        if let Some(s) = &l.tls {
            if s.client_ca_unbound() {
                log(format_args!(
                    "listener `{}`: warning: `client_ca` is not bound to a trust domain; every CA in it may issue any SPIFFE ID (set `trust_domain` or use `trust_domains`)",
                    l.name
                ));
            }
        }
    }
    let table = match &config.table {
        Some(path) => {
            let t = load_table(path).map_err(|source| RunError::Table {
                path: path.clone(),
                source,
            })?;
            log(format_args!(
                "table `{}` version {} loaded",
                path.display(),
                t.version()
            ));
            warn_unscoped_names(config, &t);
            Some(t)
        }
        None if config.control.is_some() => None,
        None => {
            log(format_args!("no table configured: every flow is denied"));
            None
        }
    };
    let run_as = crate::process::resolve(&config.process)?;
    // Before any thread exists, so every thread inherits the blocked mask.
    let sigfd = sys::signalfd().map_err(|source| RunError::Setup {
        what: "signalfd",
        source,
    })?;
    let cores = config.worker_cores(host);
    let nworkers = cores.len().max(1);

    // Bind everything first: an error here stops us before anything is served. The
    // operator socket first of all: a second gateway started by mistake stops there,
    // before its listeners take connections into their queues.
    let mut operator_socket = match &config.operator {
        Some(c) => {
            // By default the uid the gateway runs as once it has dropped privileges.
            let own = run_as.map_or_else(sys::effective_uid, |r| r.uid);
            let users = c.users.clone().unwrap_or_else(|| vec![own]);
            let s = OperatorSocket::bind(&c.socket, users)?;
            if let Some(r) = run_as {
                // So that the gateway, as that user, can remove it when it exits.
                s.chown(r.uid, r.gid).map_err(|source| RunError::Setup {
                    what: "operator socket ownership",
                    source,
                })?;
            }
            log(format_args!(
                "operator socket `{}`: status, reload, drain",
                s.path().display()
            ));
            Some(s)
        }
        None => None,
    };
    let mut per_worker: Vec<Vec<WorkerListener>> = Vec::with_capacity(nworkers);
    for _ in 0..nworkers {
        let mut ls = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let fd = sys::reuseport_listener(l.listen, 4096).map_err(|source| RunError::Bind {
                listener: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            let n = u32::try_from(nworkers).unwrap_or(1).max(1);
            ls.push(WorkerListener {
                config: Arc::new(l.clone()),
                fd,
                limit: l.max_connections.div_ceil(n),
                handshake_limit: l.handshake_limit().map_or(u32::MAX, |h| h.div_ceil(n)),
                source_handshake_limit: l
                    .tls
                    .as_ref()
                    .and_then(|t| t.max_handshakes_per_source)
                    .map_or(u32::MAX, |h| h.div_ceil(n)),
            });
        }
        per_worker.push(ls);
    }
    let mut admin = match config.admin {
        Some(addr) => {
            let l = TcpListener::bind(addr).map_err(|source| RunError::Admin { addr, source })?;
            Some(AdminEndpoint::new(l).map_err(|source| RunError::Admin { addr, source })?)
        }
        None => None,
    };

    let mut audit = AuditWriter::new(&config.audit).map_err(|source| RunError::Setup {
        what: "audit file",
        source,
    })?;
    // Every socket is bound and the audit file open: nothing left needs a privilege.
    // Before the first thread, since capabilities are per thread.
    match crate::process::drop_privileges(run_as)? {
        crate::process::Dropped::Switched(r) => log(format_args!(
            "running as uid {} gid {}, without capabilities",
            r.uid, r.gid
        )),
        crate::process::Dropped::Stayed { uid: 0 } => log(format_args!(
            "warning: running as root (without capabilities); set `[process] user` to run as an unprivileged user"
        )),
        crate::process::Dropped::Stayed { uid } => log(format_args!(
            "running as uid {uid}, without capabilities"
        )),
    }
    let published = Arc::new(Published::new(table, tls.to_vec()));
    let mut names = AuditNames::new(config.listeners.iter().map(|l| l.name.clone()).collect());
    names.published(published.table());
    // With `[control]`: what the state directory holds is published before any worker
    // runs (fail static), or nothing (fail closed).
    let mut channel = config
        .control
        .as_ref()
        .map(|c| Channel::start(c, &published, Instant::now()));
    let mut reloading = Reloading {
        tables: 0,
        table_failures: 0,
        tls_watch: TlsWatch::new(config, base, Instant::now()),
        tls: TlsReloads::default(),
    };
    let mut workers: Vec<Running> = Vec::with_capacity(nworkers);
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let setup_err = |source| RunError::Setup {
            what: "worker set-up",
            source,
        };
        let wake = sys::eventfd().map_err(setup_err)?;
        let worker_wake = wake.try_clone().map_err(setup_err)?;
        let stats = Arc::new(WorkerStats::new(config.listeners.len()));
        let audit_queue = Arc::new(AuditQueue::new(AUDIT_QUEUE));
        let setup = WorkerSetup {
            id,
            core: cores.get(id).copied(),
            poll: config.workers.poll,
            buffers: config.workers.buffers,
            splice: config.workers.splice,
            splice_pipes: config.workers.splice_pipes,
            defer_taskrun: config.workers.defer_taskrun,
            latency: config.workers.latency,
            audit: Arc::clone(&audit_queue),
            listeners,
            published: Arc::clone(&published),
            stats: Arc::clone(&stats),
            wake: worker_wake,
        };
        let handle = std::thread::Builder::new()
            .name(format!("zgate-w{id}"))
            .spawn(move || worker::run(setup))
            .map_err(setup_err)?;
        workers.push(Running {
            handle: Some(handle),
            stats,
            wake,
            audit: audit_queue,
        });
    }
    log(format_args!(
        "running: {} worker(s) on cores {:?}, {} listener(s), poll {:?}",
        nworkers,
        cores,
        config.listeners.len(),
        config.workers.poll
    ));

    let mut drain_deadline: Option<Instant> = None;
    let mut first_error: Option<RunError> = None;
    let wake_all = |workers: &[Running]| {
        for w in workers {
            sys::eventfd_wake(w.wake.as_raw_fd());
        }
    };
    // SIGTERM/SIGINT, and `drain`: the first starts the drain, a second closes every
    // flow at once.
    let drain = |why: &str, drain_deadline: &mut Option<Instant>, workers: &[Running]| {
        if drain_deadline.is_none() {
            log(format_args!(
                "{why}: draining for up to {:?}",
                config.drain_timeout
            ));
            published.advance(Phase::Draining);
            *drain_deadline = Some(Instant::now() + config.drain_timeout);
        } else {
            log(format_args!("{why} again: closing every flow now"));
            published.advance(Phase::Stop);
        }
        wake_all(workers);
    };
    let mut poll = PollSet::default();
    let mut latency = crate::latency::LatencyBook::default();
    // The table generation whose table `names` knows last (and the shadow one's).
    let mut names_generation = 0;
    let mut shadow_names_generation = 0;
    loop {
        // Wait for a signal, a client, or the next tick (100 ms at most, sooner when a
        // client's deadline falls before it). Clients never block this thread.
        poll.clear();
        let sig_at = poll.add(sigfd.as_raw_fd(), false);
        if let Some(a) = admin.as_mut() {
            a.watch(&mut poll);
        }
        if let Some(o) = operator_socket.as_mut() {
            o.watch(&mut poll);
        }
        let channel_at = channel.as_ref().and_then(|c| c.watch(&mut poll));
        let now = Instant::now();
        let tick = [
            admin.as_ref().and_then(AdminEndpoint::next_deadline),
            operator_socket
                .as_ref()
                .and_then(OperatorSocket::next_deadline),
            channel.as_ref().and_then(Channel::next_deadline),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.saturating_duration_since(now))
        .fold(Duration::from_millis(100), Duration::min);
        poll.wait(tick);
        let now = Instant::now();
        if poll.ready(sig_at) {
            while let Some(sig) = sys::read_signal(sigfd.as_raw_fd()) {
                match sig {
                    libc::SIGHUP => {
                        reloading.everything("SIGHUP", config, &published, &mut audit);
                        wake_all(&workers);
                    }
                    _ => drain(&format!("signal {sig}"), &mut drain_deadline, &workers),
                }
            }
        }
        if let Some(c) = channel.as_mut() {
            // Workers are woken as soon as something is published: a revocation reaches
            // them before the disk write that keeps it.
            if c.receive(now, &poll, channel_at, &published) {
                wake_all(&workers);
            }
            let stats: Vec<&WorkerStats> = workers.iter().map(|w| &*w.stats).collect();
            c.settle(now, &published, &stats, config.listeners.len());
        }
        if let Some(o) = operator_socket.as_mut() {
            o.turn(now, &poll, |command| match command {
                Command::Reload => {
                    let r = reloading.everything("operator `reload`", config, &published, &mut audit);
                    wake_all(&workers);
                    reload_answer(&r, published.table().map(|t| t.version()))
                }
                // Unlike a second SIGTERM, a repeated `drain` (a retrying script) does
                // not close every flow: it reports the drain under way.
                Command::Drain if drain_deadline.is_some() => {
                    "{\"ok\":true,\"phase\":\"draining\",\"already\":true}".to_string()
                }
                Command::Drain => {
                    drain("operator `drain`", &mut drain_deadline, &workers);
                    "{\"ok\":true,\"phase\":\"draining\"}".to_string()
                }
                Command::Status => {
                    let s = sum(&workers, config.listeners.len()).total;
                    let control = channel.as_ref().map_or_else(
                        || "null".to_string(),
                        |c| {
                            let v = c.view();
                            format!(
                                "{{\"name\":{},\"connected\":{},\"from_state_dir\":{},\"facts_version\":{},\"shadow_version\":{},\"last_error\":{}}}",
                                json_string(c.name()),
                                v.connected,
                                v.from_state_dir,
                                v.facts_version,
                                v.shadow_version,
                                v.last_error.as_deref().map_or("null".to_string(), json_string),
                            )
                        },
                    );
                    format!(
                        "{{\"ok\":true,\"phase\":{},\"table_version\":{},\"workers\":{},\"workers_ready\":{},\"connections_active\":{},\"accepted\":{},\"denied\":{},\"closed_by_policy\":{},\"control\":{control}}}",
                        json_string(published.phase().name()),
                        published
                            .table()
                            .map_or("null".to_string(), |t| t.version().to_string()),
                        workers.len(),
                        workers
                            .iter()
                            .filter(|w| w.stats.ready.load(Ordering::Acquire))
                            .count(),
                        s.value(M::Active),
                        s.value(M::Accepted),
                        s.total(M::Denied),
                        s.total(M::ClosedByPolicy),
                    )
                }
            });
        }
        if published.generation() != names_generation {
            names_generation = published.generation();
            names.published(published.table());
        }
        if published.shadow_generation() != shadow_names_generation {
            shadow_names_generation = published.shadow_generation();
            names.published(published.shadow());
        }
        audit.drain(workers.iter().map(|w| &*w.audit), AUDIT_BUDGET, &names);
        if config.workers.latency {
            let stats: Vec<&WorkerStats> = workers.iter().map(|w| &*w.stats).collect();
            latency.sample(now, &stats, config.listeners.len());
        }
        if let Some(a) = admin.as_mut() {
            let view = || AdminView {
                stats: sum(&workers, config.listeners.len()),
                listeners: config.listeners.iter().map(|l| l.name.clone()).collect(),
                workers: workers.len(),
                workers_sleeping: workers
                    .iter()
                    .filter(|w| w.stats.sleeping.load(Ordering::Relaxed))
                    .count(),
                workers_ready: workers
                    .iter()
                    .filter(|w| w.stats.ready.load(Ordering::Acquire))
                    .count(),
                accepting: published.phase() == Phase::Running,
                table_version: published.table().map(|t| t.version()),
                table_reloads: reloading.tables,
                table_reload_failures: reloading.table_failures,
                audit: audit.counts(),
                audit_dropped: workers.iter().map(|w| w.audit.dropped()).sum(),
                tls_reloads: reloading.tls.reloads,
                tls_reload_failures: reloading.tls.failures,
                tls_not_after: config
                    .listeners
                    .iter()
                    .enumerate()
                    .filter_map(|(i, l)| {
                        let t = published.listener_tls(i)?;
                        Some((l.name.clone(), t.server.validity().1))
                    })
                    .collect(),
                control: channel.as_ref().map(Channel::view),
                latency: latency
                    .since_start()
                    .map(<[_]>::to_vec)
                    .zip(latency.window()),
            };
            a.turn(now, &poll, view);
        }
        let events = reloading.tls_watch.poll(config, Instant::now(), unix_now());
        if !events.is_empty() {
            let _refused_and_logged = reloading.tls.apply(config, &published, events);
            // Workers pick new material up at their next loop turn; wake them so an idle
            // worker does not wait for its tick.
            wake_all(&workers);
        }
        if drain_deadline.is_some_and(|d| Instant::now() >= d) && published.phase() < Phase::Stop {
            log(format_args!("drain timeout: closing the flows still open"));
            published.advance(Phase::Stop);
            wake_all(&workers);
        }
        for (id, w) in workers.iter_mut().enumerate() {
            if w.handle.as_ref().is_some_and(|h| h.is_finished()) {
                let result = match w.handle.take().map(JoinHandle::join) {
                    Some(Ok(r)) => r.map_err(RunError::from),
                    Some(Err(_)) => Err(RunError::WorkerPanicked(id)),
                    None => Ok(()),
                };
                if let Err(e) = result {
                    log(format_args!("{e}; stopping"));
                    first_error.get_or_insert(e);
                    published.advance(Phase::Stop);
                    drain_deadline.get_or_insert_with(Instant::now);
                    wake_all(&workers);
                    break;
                }
            }
        }
        if workers.iter().all(|w| w.handle.is_none()) {
            break;
        }
    }
    // What the workers queued last.
    audit.drain(workers.iter().map(|w| &*w.audit), usize::MAX, &names);
    let s = sum(&workers, config.listeners.len()).total;
    log(format_args!(
        "stopped: accepted {} denied {} upstream_connect_failures {}",
        s.value(M::Accepted),
        s.total(M::Denied),
        s.value(M::UpstreamConnectFailures)
    ));
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What reloads: the table file and the TLS files, with their counters for `/metrics`.
struct Reloading {
    tables: u64,
    table_failures: u64,
    tls_watch: TlsWatch,
    tls: TlsReloads,
}

impl Reloading {
    /// SIGHUP, and `reload` on the operator socket: the table, the TLS files, the audit
    /// file. What was published and what was refused, with the reasons (also logged).
    /// The caller wakes the workers.
    fn everything(
        &mut self,
        why: &str,
        config: &Config,
        published: &Published,
        audit: &mut AuditWriter,
    ) -> Reloaded {
        let table = config
            .control
            .is_none()
            .then(|| reload(why, config, published));
        match &table {
            Some(Ok(_)) => self.tables += 1,
            Some(Err(_)) => self.table_failures += 1,
            None => {}
        }
        if let Err(e) = audit.reopen() {
            log(format_args!(
                "{why}: cannot reopen the audit file, still writing to the old one: {e}"
            ));
        }
        let events = self.tls_watch.reload_changed(config, unix_now());
        let tls_refused = self.tls.apply(config, published, events);
        Reloaded { table, tls_refused }
    }
}

/// TLS reload counters, for `/metrics`.
#[derive(Default)]
struct TlsReloads {
    reloads: u64,
    failures: u64,
}

impl TlsReloads {
    /// Publish the material that loaded, log every outcome. Returns each refused
    /// listener's name with its errors.
    fn apply(
        &mut self,
        config: &Config,
        published: &Published,
        events: Vec<ReloadEvent>,
    ) -> Vec<(String, Vec<String>)> {
        let mut refused = Vec::new();
        for e in events {
            let name = config
                .listeners
                .get(e.listener)
                .map_or("?", |l| l.name.as_str());
            match e.result {
                Ok(tls) => {
                    let (_, not_after) = tls.server.validity();
                    published.publish_tls(e.listener, tls);
                    self.reloads += 1;
                    log(format_args!(
                        "listener `{name}`: TLS material reloaded; new handshakes use it (certificate valid until {not_after}, Unix seconds)"
                    ));
                }
                Err(errs) => {
                    self.failures += 1;
                    log(format_args!(
                        "listener `{name}`: TLS reload refused, keeping the current material: {} error(s)",
                        errs.len()
                    ));
                    for err in &errs {
                        log(format_args!("  {err}"));
                    }
                    refused.push((
                        name.to_string(),
                        errs.iter().map(ToString::to_string).collect(),
                    ));
                }
            }
        }
        refused
    }
}

fn sum(workers: &[Running], listeners: usize) -> StatsView {
    StatsView::read(workers.iter().map(|w| &*w.stats), listeners)
}

/// SIGHUP: verify the table file, then publish it. On failure nothing changes.
/// Review M4: `dns:NAME` and `cn:NAME` match names any trusted CA can issue. Say so for
/// each listener whose CAs vouch for more than one trust domain (several bundles, or
/// one bundle not bound to a trust domain).
fn warn_unscoped_names(config: &Config, table: &DecisionTable) {
    if !table.names_without_trust_domain() {
        return;
    }
    for l in &config.listeners {
        let Some(s) = &l.tls else { continue };
        if s.trusts_several_trust_domains() {
            log(format_args!(
                "listener `{}`: warning: the table has `dns:`/`cn:` principals without a trust domain; any CA this listener trusts can issue those names (write `dns@TRUST-DOMAIN:NAME` / `cn@TRUST-DOMAIN:NAME`)",
                l.name
            ));
        }
    }
}

/// Load and publish the configured table; on failure nothing changes. Logged either
/// way; the version published, or why none was.
fn reload(why: &str, config: &Config, published: &Published) -> Result<u64, ReloadError> {
    let Some(path) = &config.table else {
        let e = ReloadError::NoTable;
        log(format_args!("{why}: {e}"));
        return Err(e);
    };
    match load_table(path) {
        Ok(t)
            if published.table().is_some_and(|p| {
                p.version() == t.version() && p.policy_hash() == t.policy_hash()
            }) =>
        {
            // The same table again: nothing to publish, no flow to decide again.
            let version = t.version();
            log(format_args!(
                "{why}: table `{}` version {version} unchanged; nothing published",
                path.display(),
            ));
            Ok(version)
        }
        Ok(t) => {
            let version = t.version();
            log(format_args!(
                "{why}: table `{}` version {version} published",
                path.display(),
            ));
            warn_unscoped_names(config, &t);
            published.publish(t);
            Ok(version)
        }
        Err(source) => {
            let e = ReloadError::Table {
                path: path.clone(),
                source,
            };
            log(format_args!("{why}: {e}"));
            Err(e)
        }
    }
}

/// The operator socket's answer to `reload`: `ok` only when nothing was refused, the
/// table version now enforced, and every refusal with its reason (not "see the log").
fn reload_answer(r: &Reloaded, enforced: Option<u64>) -> String {
    let mut problems = Vec::new();
    if let Some(Err(e)) = &r.table {
        problems.push(e.to_string());
    }
    for (listener, errs) in &r.tls_refused {
        problems.push(format!(
            "listener `{listener}`: TLS material refused, the current material stays: {}",
            errs.join("; ")
        ));
    }
    let error = if problems.is_empty() {
        String::new()
    } else {
        format!(",\"error\":{}", json_string(&problems.join("; ")))
    };
    format!(
        "{{\"ok\":{},\"table_version\":{},\"tls_refused\":{}{error}}}",
        problems.is_empty(),
        enforced.map_or("null".to_string(), |v| v.to_string()),
        r.tls_refused.len(),
    )
}
