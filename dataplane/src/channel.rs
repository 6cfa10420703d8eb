//! The dataplane's end of the control channel (`[control]`): subscribe to
//! `zgate-control serve`, verify what it sends, publish it to the workers, keep the
//! last good table and facts on disk, and report back.
//!
//! Runs on the supervisor thread, non-blocking: the socket is in the supervisor's
//! poll set, a turn reads what is there and writes what it can, and nothing here ever
//! waits. Failure stance (DESIGN "Failure stance"):
//! - control down: the gateway keeps enforcing what it has (fail static) and
//!   reconnects with backoff (100 ms doubling to 5 s);
//! - started without the control process: it enforces the table and facts persisted
//!   in `state_dir`; with none (or a state it cannot verify), it denies everything
//!   (fail closed) until the control process sends a table;
//! - anything malformed, oversized, out of order or older than what is enforced
//!   closes the channel with the reason (logged, sent as `Refused`, kept for
//!   `Report.last_error`) and changes nothing that is enforced.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zgate_proto::{
    Decoder, Encoder, FactsDelta, FactsSnapshot, FrameError, Hello, ImpactReport, Message, Report,
    Side, TableUpdate, Touched, MAX_PAYLOAD,
};
use zgate_table::facts::LiveFacts;
use zgate_table::DecisionTable;

use crate::config::ControlConfig;
use crate::metrics::M;
use crate::shared::{Published, StatsView, WorkerStats};
use crate::supervisor::log;
use crate::sys::PollSet;

/// First reconnection delay; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A report is sent at least this often.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Most bytes read from the socket per turn: a large table is taken over several
/// turns so the supervisor keeps serving its other clients.
const READ_PER_TURN: usize = 4 << 20;
/// Unsent output above this closes the channel: the control process is not reading.
const MAX_OUTPUT: usize = 16 << 20;

/// The last good state, kept in `state_dir` (fail static across restarts).
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// What was found in the state directory at start.
#[derive(Debug)]
pub enum Persisted {
    /// A table and facts that verify: enforce them (fail static).
    Good {
        /// The table.
        table: Box<DecisionTable>,
        /// The facts.
        facts: LiveFacts,
        /// Their version.
        facts_version: u64,
    },
    /// Nothing usable: deny everything (fail closed). Why, for the log.
    Nothing(String),
}

/// Why the state directory could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write `{path}`: {source}")]
pub struct PersistError {
    path: PathBuf,
    source: std::io::Error,
}

const TABLE_FILE: &str = "table.zgt";
const FACTS_FILE: &str = "facts.zgf";

impl StateDir {
    /// The state directory at `dir` (created when the first state is written).
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    /// Read back the last good table and facts. A table without facts is not used:
    /// enforcing it without the revocations it was sent with would let revoked peers
    /// in.
    pub fn load(&self) -> Persisted {
        let table_path = self.dir.join(TABLE_FILE);
        let table = match std::fs::read(&table_path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Persisted::Nothing(format!(
                    "no table persisted in `{}`",
                    self.dir.display()
                ))
            }
            Err(e) => {
                return Persisted::Nothing(format!("cannot read `{}`: {e}", table_path.display()))
            }
            Ok(bytes) => match DecisionTable::decode(&bytes) {
                Ok(t) => Box::new(t),
                Err(e) => {
                    return Persisted::Nothing(format!(
                        "`{}` does not verify: {e}",
                        table_path.display()
                    ))
                }
            },
        };
        let facts_path = self.dir.join(FACTS_FILE);
        let snapshot = match std::fs::read(&facts_path) {
            Err(e) => {
                return Persisted::Nothing(format!(
                    "table version {} persisted, but its facts are not readable (`{}`: {e})",
                    table.version(),
                    facts_path.display()
                ))
            }
            Ok(bytes) => match zgate_proto::from_standalone(&bytes, MAX_PAYLOAD) {
                Ok(Message::Facts(s)) => s,
                Ok(other) => {
                    return Persisted::Nothing(format!(
                        "`{}` holds a {:?} message, not facts",
                        facts_path.display(),
                        other.kind()
                    ))
                }
                Err(e) => {
                    return Persisted::Nothing(format!(
                        "`{}` does not verify: {e}",
                        facts_path.display()
                    ))
                }
            },
        };
        let mut facts = LiveFacts::default();
        for c in &snapshot.changes {
            zgate_proto::apply(&mut facts, c);
        }
        facts.version = snapshot.version;
        Persisted::Good {
            table,
            facts,
            facts_version: snapshot.version,
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), PersistError> {
        let path = self.dir.join(name);
        let err = |source| PersistError {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(err)?;
        // The rename itself reaches the disk with the directory.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)
    }

    fn save_table(&self, bytes: &[u8]) -> Result<(), PersistError> {
        self.write(TABLE_FILE, bytes)
    }

    fn save_facts(&self, facts: &LiveFacts, version: u64) -> Result<(), PersistError> {
        let m = Message::Facts(FactsSnapshot {
            version,
            changes: zgate_proto::snapshot(facts),
        });
        self.write(FACTS_FILE, &zgate_proto::to_standalone(&m))
    }
}

/// Why the channel was closed from this side.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("malformed frame: {0}")]
    Frame(#[from] FrameError),
    #[error("table version {got} is older than the enforced {enforced} (no rollback through the channel; `zgate-control rollback` publishes old content under a new version)")]
    OlderTable { got: u64, enforced: u64 },
    #[error("table version {0} differs from the enforced table of the same version")]
    SameVersionOtherTable(u64),
    #[error("table version {version} does not verify: {error}")]
    BadTable { version: u64, error: String },
    #[error("table message says version {message}, its header says {header}")]
    VersionMismatch { message: u64, header: u64 },
    #[error("facts version {got} is older than the enforced {enforced} (no rollback through the channel)")]
    OlderFacts { got: u64, enforced: u64 },
    #[error("fact delta from version {from}, but version {enforced} is enforced")]
    DeltaOutOfOrder { from: u64, enforced: u64 },
    #[error("the control process refused this gateway: {0}")]
    ByControl(String),
    #[error("the control process does not read (over {MAX_OUTPUT} bytes unsent)")]
    NotReading,
}

enum Link {
    /// Not connected; the next attempt is due at `retry_at`.
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
    Up(Box<Connected>),
}

struct Connected {
    stream: UnixStream,
    decoder: Decoder,
    encoder: Encoder,
    out: Vec<u8>,
    next_report: Instant,
    /// An impact query under way: the control process's id and the workers' one.
    impact: Option<(u64, u64)>,
}

/// What the admin endpoint shows of the channel.
#[derive(Debug, Clone, Default)]
pub struct ChannelView {
    /// Connected to the control process now.
    pub connected: bool,
    /// Whether what is enforced came from the state directory, not (yet) from a
    /// connected control process.
    pub from_state_dir: bool,
    /// The fact-set version enforced.
    pub facts_version: u64,
    /// The shadow table version evaluated (0: none).
    pub shadow_version: u64,
    /// Connections made.
    pub connects: u64,
    /// Channels closed because of something received.
    pub refusals: u64,
    /// The last refusal.
    pub last_error: Option<String>,
    /// The fact store's revision the control process was last in step with.
    pub store_revision: u64,
    /// When that was (Unix ms); `None` until the control process said.
    pub in_step_at_ms: Option<u64>,
    /// How long ago that was, as of this view (ms).
    pub facts_age_ms: Option<u64>,
    /// `[control] stale_after`: the age past which the facts are reported stale (ms).
    pub stale_after_ms: u64,
}

impl ChannelView {
    /// Whether the facts are stale: older than `stale_after`, or of unknown age.
    pub fn stale(&self) -> bool {
        self.facts_age_ms.is_none_or(|a| a > self.stale_after_ms)
    }
}

/// The channel, owned by the supervisor.
pub struct Channel {
    socket: PathBuf,
    name: String,
    state: StateDir,
    link: Link,
    facts: LiveFacts,
    facts_version: u64,
    /// Facts changed since they were last written to the state directory.
    facts_dirty: bool,
    /// Something was applied this turn (a report follows it).
    changed: bool,
    shadow_version: u64,
    from_state_dir: bool,
    next_impact: u64,
    view: ChannelView,
}

impl Channel {
    /// Read the state directory and publish what verifies (fail static), or nothing
    /// (fail closed); the first connection attempt is made on the first turn.
    pub fn start(cfg: &ControlConfig, published: &Published, now: Instant) -> Channel {
        let state = StateDir::new(&cfg.state_dir);
        let name = cfg.name.clone().unwrap_or_else(host_name);
        let mut c = Channel {
            socket: cfg.socket.clone(),
            name,
            state,
            link: Link::Down {
                retry_at: now,
                backoff: MIN_BACKOFF,
            },
            facts: LiveFacts::default(),
            facts_version: 0,
            facts_dirty: false,
            changed: false,
            shadow_version: 0,
            from_state_dir: false,
            next_impact: 0,
            view: ChannelView {
                stale_after_ms: u64::try_from(cfg.stale_after.as_millis()).unwrap_or(u64::MAX),
                ..ChannelView::default()
            },
        };
        match c.state.load() {
            Persisted::Good {
                table,
                facts,
                facts_version,
            } => {
                log(format_args!(
                    "control: enforcing the persisted table version {} and facts version {facts_version} from `{}` until the control process answers (fail static)",
                    table.version(),
                    cfg.state_dir.display()
                ));
                published.publish(*table);
                published.publish_facts(facts.clone(), None);
                c.facts = facts;
                c.facts_version = facts_version;
                c.from_state_dir = true;
            }
            Persisted::Nothing(why) => log(format_args!(
                "control: {why}; every flow is denied until the control process sends a table (fail closed)"
            )),
        }
        c
    }

    /// The name this gateway gives the control process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wait on the socket (reading, and writing while output is pending).
    pub fn watch(&self, poll: &mut PollSet) -> Option<usize> {
        match &self.link {
            Link::Up(c) => Some(poll.add(c.stream.as_raw_fd(), !c.out.is_empty())),
            Link::Down { .. } => None,
        }
    }

    /// The next instant a turn has something to do without the socket: a
    /// reconnection or a report.
    pub fn next_deadline(&self) -> Option<Instant> {
        Some(match &self.link {
            Link::Down { retry_at, .. } => *retry_at,
            Link::Up(c) => c.next_report,
        })
    }

    /// What `/readyz`, `/metrics` and `status` show.
    pub fn view(&self) -> ChannelView {
        ChannelView {
            connected: matches!(self.link, Link::Up(_)),
            from_state_dir: self.from_state_dir,
            facts_version: self.facts_version,
            shadow_version: self.shadow_version,
            facts_age_ms: self
                .view
                .in_step_at_ms
                .map(|at| crate::supervisor::unix_now_ms().saturating_sub(at)),
            ..self.view.clone()
        }
    }

    /// First half of a turn: connect when due, read and apply what arrived. Returns
    /// whether anything was published: the caller wakes the workers at once, before
    /// [`Channel::settle`] spends time on the disk.
    pub fn receive(
        &mut self,
        now: Instant,
        poll: &PollSet,
        at: Option<usize>,
        published: &Published,
    ) -> bool {
        if let Link::Down { retry_at, backoff } = self.link {
            if now >= retry_at {
                self.connect(now, backoff, published);
            }
        }
        let readable = at.is_some_and(|i| poll.ready(i));
        if !readable {
            return false;
        }
        match self.read(published) {
            Ok(changed) => {
                self.changed |= changed;
                changed
            }
            Err(e) => {
                self.refuse(now, &e);
                false
            }
        }
    }

    /// Second half of a turn, after the workers were woken: keep what was applied
    /// (once per turn, however many deltas it read, and before the report that says
    /// they are enforced), answer impact queries the workers have finished, report,
    /// and write what the socket takes.
    pub fn settle(
        &mut self,
        now: Instant,
        published: &Published,
        workers: &[&WorkerStats],
        listeners: usize,
    ) {
        if self.facts_dirty {
            self.facts_dirty = false;
            if let Err(e) = self.state.save_facts(&self.facts, self.facts_version) {
                log(format_args!(
                    "control: {e}; a restart would enforce older facts"
                ));
            }
        }
        let changed = std::mem::take(&mut self.changed);
        if let Link::Up(c) = &mut self.link {
            if let Some((id, local)) = c.impact {
                if let Some(report) = impact_answer(id, local, workers) {
                    c.impact = None;
                    c.encoder.encode(&Message::Impact(report), &mut c.out);
                }
            }
            if changed || now >= c.next_report {
                c.next_report = now + REPORT_EVERY;
                let report = self.report(published, workers, listeners);
                if let Link::Up(c) = &mut self.link {
                    c.encoder.encode(&Message::Report(report), &mut c.out);
                }
            }
        }
        if let Err(e) = self.flush() {
            self.down(now, &format!("control: channel lost: {e}"));
        }
    }

    fn connect(&mut self, now: Instant, backoff: Duration, published: &Published) {
        let stream = UnixStream::connect(&self.socket).and_then(|s| {
            s.set_nonblocking(true)?;
            Ok(s)
        });
        match stream {
            Ok(stream) => {
                let mut c = Connected {
                    stream,
                    decoder: Decoder::new(Side::Control, MAX_PAYLOAD),
                    encoder: Encoder::new(),
                    out: Vec::new(),
                    next_report: now + REPORT_EVERY,
                    impact: None,
                };
                let hello = Message::Hello(Hello {
                    name: self.name.clone(),
                    pid: std::process::id(),
                    table_version: published.table().map_or(0, |t| t.version()),
                    facts_version: self.facts_version,
                });
                c.encoder.encode(&hello, &mut c.out);
                self.view.connects += 1;
                log(format_args!(
                    "control: connected to `{}` as `{}`",
                    self.socket.display(),
                    self.name
                ));
                self.link = Link::Up(Box::new(c));
            }
            Err(e) => {
                // Said once per outage, not once per attempt.
                if backoff == MIN_BACKOFF {
                    log(format_args!(
                        "control: cannot connect to `{}`: {e}; enforcing what is published, retrying",
                        self.socket.display()
                    ));
                }
                self.link = Link::Down {
                    retry_at: now + backoff,
                    backoff: (backoff * 2).min(MAX_BACKOFF),
                };
            }
        }
    }

    /// Read what is there and apply every whole message.
    fn read(&mut self, published: &Published) -> Result<bool, Refusal> {
        let mut changed = false;
        let mut buf = vec![0u8; 64 << 10];
        let mut taken = 0;
        let mut eof = false;
        while taken < READ_PER_TURN {
            let Link::Up(c) = &mut self.link else {
                return Ok(changed);
            };
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    taken += n;
                    c.decoder.push(buf.get(..n).unwrap_or(&[]));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        while let Link::Up(c) = &mut self.link {
            let Some(m) = c.decoder.next()? else { break };
            changed |= self.apply(m, published)?;
        }
        if eof {
            let Link::Up(_) = &self.link else {
                return Ok(changed);
            };
            self.link = Link::Down {
                retry_at: monotonic_now(),
                backoff: MIN_BACKOFF,
            };
            log(format_args!(
                "control: the control process closed the channel; enforcing what is published, reconnecting"
            ));
        }
        Ok(changed)
    }

    fn apply(&mut self, m: Message, published: &Published) -> Result<bool, Refusal> {
        match m {
            Message::Table(t) => self.take_table(t, published),
            Message::Facts(s) => self.take_snapshot(s, published),
            Message::Delta(d) => self.take_delta(d, published),
            Message::Shadow(s) => {
                match s.table {
                    None => {
                        published.publish_shadow(None);
                        self.shadow_version = 0;
                        log(format_args!("control: shadow table withdrawn"));
                    }
                    Some(t) => {
                        let table = verify(&t)?;
                        log(format_args!(
                            "control: evaluating table version {} in shadow (nothing enforced from it)",
                            t.version
                        ));
                        published.publish_shadow(Some(table));
                        self.shadow_version = t.version;
                    }
                }
                Ok(true)
            }
            Message::ImpactQuery { id } => {
                self.next_impact += 1;
                published.request_impact(self.next_impact);
                if let Link::Up(c) = &mut self.link {
                    c.impact = Some((id, self.next_impact));
                }
                Ok(true)
            }
            Message::Refused { reason } => Err(Refusal::ByControl(reason)),
            // The decoder admits only what the control process sends.
            Message::Freshness(f) => {
                self.view.store_revision = f.store_revision;
                self.view.in_step_at_ms = (f.in_step_at_ms > 0).then_some(f.in_step_at_ms);
                Ok(false)
            }
            Message::Hello(_) | Message::Impact(_) | Message::Report(_) => Ok(false),
        }
    }

    fn take_table(&mut self, t: TableUpdate, published: &Published) -> Result<bool, Refusal> {
        let enforced = published.table();
        if let Some(e) = &enforced {
            if t.version < e.version() {
                return Err(Refusal::OlderTable {
                    got: t.version,
                    enforced: e.version(),
                });
            }
        }
        let table = verify(&t)?;
        if let Some(e) = &enforced {
            if t.version == e.version() {
                if table.policy_hash() != e.policy_hash() {
                    return Err(Refusal::SameVersionOtherTable(t.version));
                }
                self.from_state_dir = false;
                return Ok(false);
            }
        }
        published.publish(table);
        self.from_state_dir = false;
        log(format_args!(
            "control: table version {} published",
            t.version
        ));
        if let Err(e) = self.state.save_table(&t.table) {
            log(format_args!(
                "control: {e}; a restart would enforce an older table"
            ));
        }
        Ok(true)
    }

    fn take_snapshot(&mut self, s: FactsSnapshot, published: &Published) -> Result<bool, Refusal> {
        if s.version < self.facts_version {
            return Err(Refusal::OlderFacts {
                got: s.version,
                enforced: self.facts_version,
            });
        }
        if s.version == self.facts_version && self.facts_version != 0 {
            return Ok(false);
        }
        let mut facts = LiveFacts::default();
        for c in &s.changes {
            zgate_proto::apply(&mut facts, c);
        }
        facts.version = s.version;
        published.publish_facts(facts.clone(), None);
        self.facts = facts;
        self.facts_version = s.version;
        self.facts_dirty = true;
        Ok(true)
    }

    fn take_delta(&mut self, d: FactsDelta, published: &Published) -> Result<bool, Refusal> {
        if d.from != self.facts_version {
            return Err(Refusal::DeltaOutOfOrder {
                from: d.from,
                enforced: self.facts_version,
            });
        }
        for c in &d.changes {
            zgate_proto::apply(&mut self.facts, c);
        }
        self.facts.version = d.to;
        self.facts_version = d.to;
        published.publish_facts(self.facts.clone(), Some(Touched::of(&d.changes)));
        self.facts_dirty = true;
        Ok(true)
    }

    fn report(&self, published: &Published, workers: &[&WorkerStats], listeners: usize) -> Report {
        let s = StatsView::read(workers.iter().copied(), listeners);
        use crate::metrics::Count;
        Report {
            table_version: published.table().map_or(0, |t| t.version()),
            facts_version: self.facts_version,
            shadow_version: self.shadow_version,
            flows: s.total.value(M::Active),
            closed_by_policy: s.total.total(M::ClosedByPolicy),
            shadow_differences: s.total.value(M::ShadowDifferences),
            last_error: self.view.last_error.clone(),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let Link::Up(c) = &mut self.link else {
            return Ok(());
        };
        while !c.out.is_empty() {
            match c.stream.write(&c.out) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if c.out.len() > MAX_OUTPUT {
            return Err(std::io::Error::other(Refusal::NotReading.to_string()));
        }
        Ok(())
    }

    /// Close the channel because of what was received: say why (log, the peer, the
    /// next report), reconnect later. Nothing enforced changes.
    fn refuse(&mut self, now: Instant, why: &Refusal) {
        let reason = why.to_string();
        self.view.refusals += 1;
        self.view.last_error = Some(reason.clone());
        if let Link::Up(c) = &mut self.link {
            c.encoder.encode(
                &Message::Refused {
                    reason: reason.clone(),
                },
                &mut c.out,
            );
            let _best_effort = c.stream.write(&c.out);
        }
        self.down(
            now,
            &format!("control: channel closed: {reason}; enforcing what is published"),
        );
    }

    fn down(&mut self, now: Instant, why: &str) {
        if let Link::Up(_) = self.link {
            log(format_args!("{why}"));
        }
        // Not at once: a control process that sends the same bad message again would
        // otherwise be reconnected to in a loop.
        self.link = Link::Down {
            retry_at: now + MIN_BACKOFF,
            backoff: MIN_BACKOFF * 2,
        };
    }
}

/// Decode and verify a table message's bytes.
fn verify(t: &TableUpdate) -> Result<DecisionTable, Refusal> {
    let table = DecisionTable::decode(&t.table).map_err(|e| Refusal::BadTable {
        version: t.version,
        error: e.to_string(),
    })?;
    if table.version() != t.version {
        return Err(Refusal::VersionMismatch {
            message: t.version,
            header: table.version(),
        });
    }
    Ok(table)
}

/// Every worker's answer to impact query `local`, merged, once all have answered.
fn impact_answer(id: u64, local: u64, workers: &[&WorkerStats]) -> Option<ImpactReport> {
    let mut report = ImpactReport {
        id,
        shadow_version: 0,
        flows: Vec::new(),
        total: 0,
    };
    for w in workers {
        let a = w.impact.load_full()?;
        if a.id != local {
            return None;
        }
        report.shadow_version = report.shadow_version.max(a.shadow_version);
        report.total += a.total;
        let room = ImpactReport::MAX_FLOWS.saturating_sub(report.flows.len());
        report.flows.extend(a.flows.iter().take(room).cloned());
    }
    Some(report)
}

/// The host name (`/proc/sys/kernel/hostname`), or `zgate` when unreadable.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "zgate".to_string())
}

#[expect(
    clippy::disallowed_methods,
    reason = "the supervisor's clock, off the data path"
)]
fn monotonic_now() -> Instant {
    Instant::now()
}
