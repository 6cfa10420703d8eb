//! `zgate.toml`: parsed once, at the edge, into [`Config`] (STYLE D.11).
//!
//! [`Config::parse`] is a pure function of the text. It reports every error it can find
//! in one go, each with the key it concerns: unknown keys and wrong types per section
//! (serde stops at the first problem inside one table, so each `[[listener]]` and
//! `[workers]` table is checked on its own), then every value (addresses, durations,
//! limits), then fields against each other (unique names and listen addresses).
//! [`Config::parse_for_host`] adds the checks against the machine (the cores exist).
//! Nothing else in the dataplane reads configuration.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How a worker waits for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Sleep in `io_uring_enter` until a completion arrives (default).
    Interrupt,
    /// Spin on the completion queue: lowest latency, one full core per worker.
    Busy,
    /// Spin on the completion queue for `spin` after the last completion, then sleep as
    /// `Interrupt` does: a flow that answers within `spin` finds the worker awake (no
    /// wake-up on its path), and an idle worker costs nothing.
    Adaptive {
        /// How long to keep spinning after the last completion.
        spin: Duration,
    },
}

/// Default `[workers] spin` for `poll = "adaptive"`.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);
/// Longest `[workers] spin`: past this, `busy` is what is meant.
pub const MAX_SPIN: Duration = Duration::from_millis(10);

/// Which cores the workers run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// One worker pinned to each listed core.
    Cores(Vec<usize>),
    /// This many workers, pinned to the first cores the process may run on.
    Count(usize),
}

/// One listener: a service name, where to listen, where to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// The service name policy rules refer to.
    pub name: String,
    /// Address every worker binds (with `SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// Upstream address.
    pub upstream: SocketAddr,
    /// Longest an upstream connect may take.
    pub connect_timeout: Duration,
    /// A flow with no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// A flow is closed this long after it was accepted; `None` = no limit.
    pub max_lifetime: Option<Duration>,
    /// Most concurrent flows on this listener, over all workers.
    pub max_connections: u32,
    /// TLS termination (`[listener.tls]`); `None`: plain TCP.
    pub tls: Option<TlsSettings>,
    /// What the client speaks before TLS.
    pub protocol: Protocol,
    /// TLS toward the upstream (`[listener.upstream_tls]`); `None`: plaintext upstream.
    pub upstream_tls: Option<UpstreamTlsSettings>,
}

/// `[listener.upstream_tls]`: re-encrypt toward the upstream (paths, not yet read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsSettings {
    /// CA bundle the upstream's certificate must chain to.
    pub ca: PathBuf,
    /// The name the upstream's certificate must carry (DNS name or IP); SNI.
    pub server_name: String,
    /// The gateway's own certificate and key, for upstreams that require mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// ALPN protocols offered to the upstream.
    pub alpn: Vec<String>,
    /// Accept TLS 1.2 upstreams too.
    pub allow_tls12: bool,
}

impl ListenerConfig {
    /// Most handshakes in progress at once on this listener (all workers); `None` for
    /// plain listeners.
    pub fn handshake_limit(&self) -> Option<u32> {
        let t = self.tls.as_ref()?;
        Some(
            t.max_handshakes
                .unwrap_or_else(|| (self.max_connections / 10).max(16)),
        )
    }
}

/// What a listener's clients send before TLS (`protocol = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// TLS (or plain TCP) from the first byte (`"tcp"`, the default).
    #[default]
    Tcp,
    /// PostgreSQL: an `SSLRequest` answered with `S`, or PostgreSQL 17 direct TLS with
    /// ALPN `postgresql` (`"postgres"`; needs `[listener.tls]`). See `crate::postgres`.
    Postgres,
}

/// Whether a TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMode {
    /// A verified SPIFFE client certificate is required (default).
    Required,
    /// Verified when presented; anonymous clients reach the decision without identity.
    Optional,
    /// No client certificate is asked for.
    None,
}

/// `[listener.tls]`, as configured (paths, not yet read: see `crate::tls::load`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Server certificate chain (PEM), the default one.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// More (certificate, key) pairs, chosen by SNI against their DNS SANs.
    pub sni: Vec<(PathBuf, PathBuf)>,
    /// Client CA bundle (PEM) for one trust domain (or, without `trust_domain`, trusted
    /// for every trust domain). Exactly one of `client_ca` and `trust_domains` is
    /// required unless `client_auth = "none"`.
    pub client_ca: Option<PathBuf>,
    /// The trust domain `client_ca` vouches for; leaves of any other trust domain are
    /// refused (`unknown-trust-domain`). `None`: any (see `docs/tls.md`).
    pub trust_domain: Option<String>,
    /// One CA bundle per trust domain, sorted by name (`trust_domains = { "td" = "ca.pem" }`).
    pub trust_domains: Vec<(String, PathBuf)>,
    /// Client-auth mode.
    pub client_auth: ClientAuthMode,
    /// CRL files (PEM).
    pub crl: Vec<PathBuf>,
    /// ALPN protocols, in preference order.
    pub alpn: Vec<String>,
    /// Accept TLS 1.2 too (`min_version = "1.2"`); default TLS 1.3 only.
    pub allow_tls12: bool,
    /// Session resumption (stateless tickets); default on.
    pub session_resumption: bool,
    /// How long after a full handshake its chain verification may be reused by
    /// resumption (default 1 h); tickets issued on resumed handshakes do not extend it,
    /// and no ticket is accepted once a CRL is past its nextUpdate.
    pub session_resumption_max_age: Duration,
    /// Name the client CAs in the CertificateRequest (default true); false keeps the
    /// list of trusted CAs, partners' included, from clients that have not
    /// authenticated (review I2).
    pub advertise_client_ca_names: bool,
    /// URI SAN prefix that carries the device id (e.g. `urn:device:`).
    pub device_id_uri_prefix: Option<String>,
    /// Longest a handshake may take.
    pub handshake_timeout: Duration,
    /// Most handshakes in progress at once on this listener, over all workers
    /// (`max_handshakes`; default a tenth of `max_connections`, at least 16): a flood
    /// of connections that never finish a handshake cannot take every slot.
    pub max_handshakes: Option<u32>,
    /// Most handshakes in progress at once from one source (an IPv4 address, an IPv6
    /// /64), over all workers (`max_handshakes_per_source`; default: no limit beyond
    /// `max_handshakes`): one source cannot take every handshake slot.
    pub max_handshakes_per_source: Option<u32>,
    /// How often the supervisor looks at the TLS files for changes (`None`: only on
    /// SIGHUP, `reload_interval = "off"`).
    pub reload_interval: Option<Duration>,
}

impl TlsSettings {
    /// `client_ca` without `trust_domain`: every CA in the bundle may issue any SPIFFE
    /// ID (`docs/tls.md`, "Trust domains").
    pub fn client_ca_unbound(&self) -> bool {
        self.client_ca.is_some() && self.trust_domain.is_none()
    }

    /// Whether this listener's CAs vouch for more than one trust domain: several
    /// `trust_domains`, or an unbound `client_ca`.
    pub fn trusts_several_trust_domains(&self) -> bool {
        self.trust_domains.len() > 1 || self.client_ca_unbound()
    }
}

/// Worker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkersConfig {
    /// Where workers run.
    pub placement: Placement,
    /// How they wait.
    pub poll: PollMode,
    /// Provided buffers (64 KiB each) in each worker's pool: a power of two, 2..=32768.
    pub buffers: u16,
    /// Splice bulk directions of plain flows through a pipe (`splice = true`, default)
    /// instead of receiving every byte into pool buffers.
    pub splice: bool,
    /// Most splice pipes one worker holds at once (`splice_pipes`, default
    /// [`DEFAULT_SPLICE_PIPES`]); a bulk direction past it stays on buffer receives.
    /// It bounds the kernel memory in pipes (up to 1 MiB each) and the async worker
    /// threads that splices toward slow readers can hold.
    pub splice_pipes: u32,
    /// Create each worker's ring with `IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN`
    /// (`defer_taskrun = true`, default): completion work runs when the worker asks for
    /// completions, not as interrupting task work. Falls back to a plain ring on kernels
    /// that refuse it.
    pub defer_taskrun: bool,
    /// Keep latency histograms (`latency = true`, default): dwell time, handshakes,
    /// upstream connects, decisions, flow durations, per listener (`/latency`).
    pub latency: bool,
}

/// Default `[workers] splice_pipes`: up to 256 MiB of pipes per worker.
pub const DEFAULT_SPLICE_PIPES: u32 = 256;

/// Default `[workers] buffers`: 84 MiB of address space per worker (64 KiB buffers
/// with 20 KiB of headroom each), resident only once touched.
pub const DEFAULT_BUFFERS: u16 = 1024;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Listeners, in file order. Never empty.
    pub listeners: Vec<ListenerConfig>,
    /// Workers.
    pub workers: WorkersConfig,
    /// Decision table file (`zgate-control compile` output). `None`: deny every flow.
    pub table: Option<PathBuf>,
    /// Admin HTTP endpoint (`/healthz`, `/readyz`, `/metrics`). `None`: none.
    pub admin: Option<SocketAddr>,
    /// How long live flows may run on after SIGTERM/SIGINT before they are closed.
    pub drain_timeout: Duration,
    /// Where the audit trail goes.
    pub audit: AuditSink,
    /// The operator socket (`[operator]`). `None`: none.
    pub operator: Option<OperatorConfig>,
    /// Who the process runs as once its sockets are bound (`[process]`).
    pub process: ProcessConfig,
    /// The control process this gateway takes its table and facts from
    /// (`[control]`). `None`: the `table` file and SIGHUP.
    pub control: Option<ControlConfig>,
}

/// `[control]`: subscribe to `zgate-control serve` for the table, live facts and
/// shadow tables, and keep the last good ones in `state_dir` (fail static).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// The control process's channel socket (relative to the config file).
    pub socket: PathBuf,
    /// Where the last good table and facts are kept (relative to the config file).
    pub state_dir: PathBuf,
    /// How this gateway names itself to the control process. `None`: the host name.
    pub name: Option<String>,
    /// How old the facts may get (since the control process was last in step with its
    /// store) before `/readyz` and `zgate_facts_stale` say they are stale.
    pub stale_after: Duration,
}

/// `[control] stale_after` when absent: ten progress notices of a fleet's store missed.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(5);

/// `[process]`: the account the gateway switches to, when started as root, once every
/// socket is bound (`crate::process`). Capabilities are dropped either way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessConfig {
    /// The user (name or uid). `None`: stay who we are.
    pub user: Option<Account>,
    /// The group (name or gid). `None`: the user's primary group.
    pub group: Option<Account>,
}

/// A user or group, as the config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    /// By name, looked up in the system's databases.
    Name(String),
    /// By number.
    Id(u32),
}

/// `[operator]`: the Unix socket that answers `status`, `reload` and `drain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Socket path (relative to the config file).
    pub socket: PathBuf,
    /// Uids admitted (peer credentials). `None`: the gateway's own uid.
    pub users: Option<Vec<u32>>,
}

/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// `audit = ...`: where one JSON line per decision and refusal is written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuditSink {
    /// Standard error, between the log lines (`"stderr"`, the default).
    #[default]
    Stderr,
    /// Appended to this file (relative to the config file); reopened on SIGHUP, so
    /// logrotate can move it away.
    File(PathBuf),
    /// Not written (`"off"`); counted only.
    Off,
}

/// What the machine offers, for [`Config::parse_for_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Cores this process may run on.
    pub cores: Vec<usize>,
}

impl Host {
    /// The cores in this process's affinity mask.
    pub fn detect() -> Host {
        let mut cores: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        cores.sort_unstable();
        Host { cores }
    }
}

/// One configuration error: the key it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not TOML.
    #[error("{message}")]
    Syntax {
        /// The TOML parser's message (with line and column).
        message: String,
    },
    /// An unknown key, a missing key or a value of the wrong type.
    #[error("{key}: {message}")]
    Shape {
        /// The table the problem is in (`listener[1]`, `workers`, `(top level)`).
        key: String,
        /// What serde found wrong.
        message: String,
    },
    /// A value that does not parse or is out of range.
    #[error("{key}: {reason} (got `{value}`)")]
    Value {
        /// Full key, e.g. `listener[0].listen`.
        key: String,
        /// The value as written.
        value: String,
        /// What was expected.
        reason: &'static str,
    },
    /// A value that collides with another.
    #[error("{key}: `{value}` is already used by {other}")]
    Duplicate {
        /// Full key.
        key: String,
        /// The repeated value.
        value: String,
        /// The key that used it first.
        other: String,
    },
    /// `[process]` names an account this machine does not have.
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    /// Something required is missing.
    #[error("{key}: {reason}")]
    Missing {
        /// Full key.
        key: String,
        /// What is missing.
        reason: &'static str,
    },
    /// A core that this machine (or this process's affinity mask) does not offer.
    #[error("{key}: core {core} is not available (available: {available:?})")]
    NoSuchCore {
        /// Full key.
        key: String,
        /// The core asked for.
        core: usize,
        /// The cores that exist.
        available: Vec<usize>,
    },
    /// A TLS file named by `[listener.tls]` cannot be read or used.
    #[error("{key}: `{path}`: {reason}")]
    Tls {
        /// Full key, e.g. `listener[0].tls.cert`.
        key: String,
        /// The path as resolved.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The decision table named by `table` cannot be used.
    #[error("table: `{path}`: {reason}")]
    Table {
        /// The path as configured.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
}

/// Every error found in one configuration, in the order found. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    table: Option<String>,
    admin: Option<String>,
    drain_timeout: Option<String>,
    audit: Option<String>,
    operator: Option<toml::Value>,
    process: Option<toml::Value>,
    control: Option<toml::Value>,
    workers: Option<toml::Value>,
    listener: Option<Vec<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    user: Option<toml::Value>,
    group: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: String,
    state_dir: String,
    name: Option<String>,
    stale_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    socket: String,
    users: Option<Vec<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkers {
    cores: Option<Vec<i64>>,
    count: Option<i64>,
    poll: Option<String>,
    spin: Option<String>,
    buffers: Option<i64>,
    splice: Option<bool>,
    splice_pipes: Option<i64>,
    defer_taskrun: Option<bool>,
    latency: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    listen: String,
    upstream: String,
    connect_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_lifetime: Option<String>,
    max_connections: Option<i64>,
    protocol: Option<String>,
    tls: Option<toml::Value>,
    upstream_tls: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: String,
    server_name: String,
    cert: Option<String>,
    key: Option<String>,
    alpn: Option<Vec<String>>,
    min_version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    sni: Option<Vec<RawSniCert>>,
    client_ca: Option<String>,
    trust_domain: Option<String>,
    trust_domains: Option<BTreeMap<String, String>>,
    client_auth: Option<String>,
    crl: Option<Vec<String>>,
    alpn: Option<Vec<String>>,
    min_version: Option<String>,
    session_resumption: Option<bool>,
    session_resumption_max_age: Option<String>,
    advertise_client_ca_names: Option<bool>,
    device_id_uri_prefix: Option<String>,
    handshake_timeout: Option<String>,
    max_handshakes: Option<i64>,
    max_handshakes_per_source: Option<i64>,
    reload_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSniCert {
    cert: String,
    key: String,
}

/// The ALPN protocol id PostgreSQL registered.
pub const POSTGRES_ALPN: &str = "postgresql";
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
const MAX_RESUMPTION_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

impl Errors {
    /// `alpn = [...]`: every protocol id 1 to 255 bytes. Whether all were.
    fn alpn(&mut self, key: &impl Fn(&str) -> String, alpn: &[String]) -> bool {
        let mut ok = true;
        for (j, a) in alpn.iter().enumerate() {
            if a.is_empty() || a.len() > 255 {
                self.value(key(&format!("alpn[{j}]")), a, "expected 1 to 255 bytes");
                ok = false;
            }
        }
        ok
    }

    /// `min_version = "1.2" | "1.3"` (default 1.3): whether TLS 1.2 is allowed, `None`
    /// (with the error recorded) for anything else.
    fn allow_tls12(&mut self, key: String, v: Option<&str>) -> Option<bool> {
        match v {
            None | Some("1.3") => Some(false),
            Some("1.2") => Some(true),
            Some(other) => {
                self.value(key, other, "expected `1.2` or `1.3`");
                None
            }
        }
    }

    /// Validate `[listener.upstream_tls]` of listener `i` (pure: files are read later).
    fn upstream_tls(
        &mut self,
        i: usize,
        v: toml::Value,
        has_tls: bool,
    ) -> Option<UpstreamTlsSettings> {
        let k = |f: &str| format!("listener[{i}].upstream_tls.{f}");
        let t = match RawUpstreamTls::deserialize(v) {
            Ok(t) => t,
            Err(e) => {
                self.0
                    .push(shape(&format!("listener[{i}].upstream_tls"), e));
                return None;
            }
        };
        let mut ok = true;
        if !has_tls {
            self.0.push(ConfigError::Missing {
                key: format!("listener[{i}].tls"),
                reason: "`[listener.upstream_tls]` re-encrypts what a TLS listener decrypted: add `[listener.tls]` (plain listeners forward bytes untouched)",
            });
            ok = false;
        }
        for (key, value) in [("ca", &t.ca), ("server_name", &t.server_name)] {
            if value.is_empty() {
                self.value(k(key), value, "expected a non-empty value");
                ok = false;
            }
        }
        let client_cert = match (t.cert, t.key) {
            (Some(c), Some(key)) if !c.is_empty() && !key.is_empty() => {
                Some((PathBuf::from(c), PathBuf::from(key)))
            }
            (None, None) => None,
            _ => {
                self.0.push(ConfigError::Missing {
                    key: k("cert"),
                    reason: "`cert` and `key` (the gateway's own certificate for the upstream) go together",
                });
                ok = false;
                None
            }
        };
        let alpn = t.alpn.unwrap_or_default();
        ok &= self.alpn(&k, &alpn);
        let allow_tls12 = self.allow_tls12(k("min_version"), t.min_version.as_deref());
        ok &= allow_tls12.is_some();
        let allow_tls12 = allow_tls12.unwrap_or(false);
        ok.then_some(UpstreamTlsSettings {
            ca: PathBuf::from(t.ca),
            server_name: t.server_name,
            client_cert,
            alpn,
            allow_tls12,
        })
    }

    /// PostgreSQL listeners offer ALPN `postgresql` (required for direct TLS, and what a
    /// PostgreSQL 17 client sends after an SSLRequest): added when `alpn` is left out;
    /// an `alpn` list without it is an error.
    fn postgres_alpn(&mut self, i: usize, t: &mut TlsSettings) {
        if t.alpn.is_empty() {
            t.alpn.push(POSTGRES_ALPN.to_string());
        } else if !t.alpn.iter().any(|a| a == POSTGRES_ALPN) {
            self.value(
                format!("listener[{i}].tls.alpn"),
                &t.alpn.join(", "),
                "a `protocol = \"postgres\"` listener must offer `postgresql` (or leave `alpn` out)",
            );
        }
    }

    /// Validate `[listener.tls]` of listener `i` (pure: files are read later).
    fn tls(&mut self, i: usize, v: toml::Value) -> Option<TlsSettings> {
        let k = |f: &str| format!("listener[{i}].tls.{f}");
        let t = match RawTls::deserialize(v) {
            Ok(t) => t,
            Err(e) => {
                self.0.push(shape(&format!("listener[{i}].tls"), e));
                return None;
            }
        };
        let mut ok = true;
        let mut path = |key: String, p: &str, errs: &mut Errors| {
            if p.is_empty() {
                errs.value(key, p, "expected a file path");
                ok = false;
            }
            PathBuf::from(p)
        };
        let cert = path(k("cert"), &t.cert, self);
        let key = path(k("key"), &t.key, self);
        let sni = t
            .sni
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, c)| {
                (
                    path(k(&format!("sni[{j}].cert")), &c.cert, self),
                    path(k(&format!("sni[{j}].key")), &c.key, self),
                )
            })
            .collect();
        let client_ca = t
            .client_ca
            .as_deref()
            .map(|p| path(k("client_ca"), p, self));
        let has_domains = t.trust_domains.is_some();
        let trust_domains: Vec<(String, PathBuf)> = t
            .trust_domains
            .unwrap_or_default()
            .into_iter()
            .map(|(td, p)| {
                let pb = path(k(&format!("trust_domains.\"{td}\"")), &p, self);
                (td, pb)
            })
            .collect();
        let crl: Vec<PathBuf> = t
            .crl
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(j, p)| path(k(&format!("crl[{j}]")), p, self))
            .collect();
        let client_auth = match t.client_auth.as_deref() {
            None | Some("required") => ClientAuthMode::Required,
            Some("optional") => ClientAuthMode::Optional,
            Some("none") => ClientAuthMode::None,
            Some(other) => {
                self.value(
                    k("client_auth"),
                    other,
                    "expected `required`, `optional` or `none`",
                );
                ok = false;
                ClientAuthMode::Required
            }
        };
        if client_auth != ClientAuthMode::None && client_ca.is_none() && !has_domains {
            self.0.push(ConfigError::Missing {
                key: k("client_ca"),
                reason: "a client CA bundle (`client_ca` or `trust_domains`) is required unless `client_auth = \"none\"`",
            });
            ok = false;
        }
        if client_ca.is_some() && has_domains {
            self.0.push(ConfigError::Missing {
                key: k("trust_domains"),
                reason: "`client_ca` and `trust_domains` are mutually exclusive: put the `client_ca` bundle under its trust domain",
            });
            ok = false;
        }
        if has_domains && trust_domains.is_empty() {
            self.0.push(ConfigError::Missing {
                key: k("trust_domains"),
                reason: "at least one `\"trust domain\" = \"ca.pem\"` entry is required",
            });
            ok = false;
        }
        if t.trust_domain.is_some() && client_ca.is_none() {
            self.0.push(ConfigError::Missing {
                key: k("trust_domain"),
                reason: "`trust_domain` names the trust domain of `client_ca`, which is not set",
            });
            ok = false;
        }
        if client_auth == ClientAuthMode::None
            && (client_ca.is_some() || has_domains || !crl.is_empty())
        {
            self.0.push(ConfigError::Missing {
                key: k("client_auth"),
                reason: "`client_ca`, `trust_domains` and `crl` need `client_auth = \"required\"` or `\"optional\"`",
            });
            ok = false;
        }
        let alpn = t.alpn.unwrap_or_default();
        ok &= self.alpn(&k, &alpn);
        let allow_tls12 = self.allow_tls12(k("min_version"), t.min_version.as_deref());
        ok &= allow_tls12.is_some();
        let allow_tls12 = allow_tls12.unwrap_or(false);
        let session_resumption = t.session_resumption.unwrap_or(true);
        // Bounds how long one full handshake's chain verification is reused (review
        // M1); the ticket key itself rotates every 6 h, so longer would mean nothing.
        let session_resumption_max_age = self.duration(
            k("session_resumption_max_age"),
            t.session_resumption_max_age.as_deref(),
            zgate_tls::DEFAULT_RESUMPTION_MAX_AGE,
        );
        if session_resumption_max_age > MAX_RESUMPTION_MAX_AGE {
            self.value(
                k("session_resumption_max_age"),
                t.session_resumption_max_age.as_deref().unwrap_or_default(),
                "at most `12h`: tickets do not outlive two 6-hour ticket keys",
            );
            ok = false;
        }
        let handshake_timeout = self.duration(
            k("handshake_timeout"),
            t.handshake_timeout.as_deref(),
            DEFAULT_HANDSHAKE_TIMEOUT,
        );
        let max_handshakes = match t.max_handshakes {
            None => None,
            Some(n) => match u32::try_from(n) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    self.value(
                        k("max_handshakes"),
                        &n.to_string(),
                        "expected 1..=4294967295",
                    );
                    ok = false;
                    None
                }
            },
        };
        let max_handshakes_per_source = match t.max_handshakes_per_source {
            None => None,
            Some(n) => match u32::try_from(n) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    self.value(
                        k("max_handshakes_per_source"),
                        &n.to_string(),
                        "expected 1..=4294967295",
                    );
                    ok = false;
                    None
                }
            },
        };
        // The prefix must end where a URI part does, so `urn:device` cannot turn
        // `urn:devicex:foo` into device id `x:foo` (review L1).
        if let Some(p) = t.device_id_uri_prefix.as_deref() {
            if !p.is_empty() && !p.ends_with([':', '/']) {
                self.value(
                    k("device_id_uri_prefix"),
                    p,
                    "expected a prefix ending in `:` or `/`, such as `urn:device:`",
                );
                ok = false;
            } else if p.to_ascii_lowercase().starts_with("spiffe:") {
                // A device-id URI is left out of the identity-URI count, so a `spiffe:`
                // prefix would let a certificate carry two SPIFFE IDs and pass the
                // one-URI-SAN rule with either (review 16.8).
                self.value(
                    k("device_id_uri_prefix"),
                    p,
                    "a device-id prefix may not be a SPIFFE URI: a certificate could then carry two SPIFFE IDs",
                );
                ok = false;
            }
        }
        let reload_interval = match t.reload_interval.as_deref() {
            Some("off") => None,
            other => Some(self.duration(k("reload_interval"), other, DEFAULT_TLS_RELOAD_INTERVAL)),
        };
        ok.then_some(TlsSettings {
            cert,
            key,
            sni,
            client_ca,
            trust_domain: t.trust_domain,
            trust_domains,
            client_auth,
            crl,
            alpn,
            allow_tls12,
            session_resumption,
            session_resumption_max_age,
            advertise_client_ca_names: t.advertise_client_ca_names.unwrap_or(true),
            device_id_uri_prefix: t.device_id_uri_prefix.filter(|p| !p.is_empty()),
            handshake_timeout,
            max_handshakes,
            max_handshakes_per_source,
            reload_interval,
        })
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

/// Parse a duration such as `250ms`, `5s`, `10m`, `1h`. Zero is rejected.
fn parse_duration(s: &str) -> Result<Duration, &'static str> {
    const WHAT: &str = "expected a positive duration such as `500ms`, `5s`, `10m` or `1h`";
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| WHAT)?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or(WHAT)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or(WHAT)?),
        _ => return Err(WHAT),
    };
    if d.is_zero() {
        return Err("must be greater than zero");
    }
    Ok(d)
}

/// `[workers] spin`: microseconds (`50us`) or any [`parse_duration`] form.
fn parse_spin(s: &str) -> Result<Duration, &'static str> {
    const WHAT: &str = "expected a duration such as `50us` or `1ms`";
    match s.strip_suffix("us") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            let us: u64 = n.parse().map_err(|_| WHAT)?;
            if us == 0 {
                return Err("must be greater than zero");
            }
            Ok(Duration::from_micros(us))
        }
        _ => parse_duration(s).map_err(|e| match e {
            "must be greater than zero" => e,
            _ => WHAT,
        }),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

struct Errors(Vec<ConfigError>);

impl Errors {
    fn value(&mut self, key: String, value: &str, reason: &'static str) {
        self.0.push(ConfigError::Value {
            key,
            value: value.to_string(),
            reason,
        });
    }

    /// `[process]`: a user and a group, each a name or a number.
    fn process(&mut self, p: RawProcess) -> ProcessConfig {
        let mut account = |key: &str, v: Option<toml::Value>| match v {
            None => None,
            Some(toml::Value::String(name))
                if !name.is_empty()
                    && name.len() <= 32
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                Some(Account::Name(name))
            }
            Some(toml::Value::Integer(n)) if u32::try_from(n).is_ok_and(|n| n != u32::MAX) => {
                u32::try_from(n).ok().map(Account::Id)
            }
            Some(other) => {
                self.value(
                    format!("process.{key}"),
                    &other.to_string(),
                    "expected a name (letters, digits, `.`, `_`, `-`; at most 32) or a number",
                );
                None
            }
        };
        ProcessConfig {
            user: account("user", p.user),
            group: account("group", p.group),
        }
    }

    /// `[operator]`: a socket path that fits `sun_path`, and uids if given.
    fn operator(&mut self, c: RawOperator) -> Option<OperatorConfig> {
        let mut ok = true;
        if c.socket.is_empty() || c.socket.len() > MAX_SOCKET_PATH {
            self.value(
                "operator.socket".into(),
                &c.socket,
                "expected a path of 1 to 107 bytes (a Unix socket path)",
            );
            ok = false;
        }
        let users = match c.users {
            None => None,
            Some(list) if list.is_empty() => {
                self.value(
                    "operator.users".into(),
                    "[]",
                    "expected at least one uid (leave it out to admit the gateway's own uid)",
                );
                ok = false;
                None
            }
            Some(list) => {
                let mut uids = Vec::with_capacity(list.len());
                for (i, u) in list.into_iter().enumerate() {
                    match u32::try_from(u) {
                        Ok(u) => uids.push(u),
                        Err(_) => {
                            self.value(
                                format!("operator.users[{i}]"),
                                &u.to_string(),
                                "expected a uid, 0..=4294967295",
                            );
                            ok = false;
                        }
                    }
                }
                Some(uids)
            }
        };
        ok.then(|| OperatorConfig {
            socket: PathBuf::from(c.socket),
            users,
        })
    }

    /// `[control]`: a socket path that fits `sun_path`, a state directory, a name
    /// without control characters, a staleness alarm.
    fn control(&mut self, c: RawControl) -> Option<ControlConfig> {
        let mut ok = true;
        if c.socket.is_empty() || c.socket.len() > MAX_SOCKET_PATH {
            self.value(
                "control.socket".into(),
                &c.socket,
                "expected a path of 1 to 107 bytes (a Unix socket path)",
            );
            ok = false;
        }
        if c.state_dir.is_empty() {
            self.value("control.state_dir".into(), "", "expected a directory path");
            ok = false;
        }
        if let Some(n) = &c.name {
            if n.is_empty() || n.len() > 255 || n.chars().any(char::is_control) {
                self.value(
                    "control.name".into(),
                    n,
                    "expected 1 to 255 bytes without control characters",
                );
                ok = false;
            }
        }
        let stale_after = self.duration(
            "control.stale_after".into(),
            c.stale_after.as_deref(),
            DEFAULT_STALE_AFTER,
        );
        ok.then(|| ControlConfig {
            socket: PathBuf::from(c.socket),
            state_dir: PathBuf::from(c.state_dir),
            name: c.name,
            stale_after,
        })
    }

    fn duration(&mut self, key: String, value: Option<&str>, default: Duration) -> Duration {
        self.parsed(key, value, default, parse_duration)
    }

    /// `value` read by `parse`; `default` when absent, or (with the error recorded)
    /// when `parse` refuses it.
    fn parsed(
        &mut self,
        key: String,
        value: Option<&str>,
        default: Duration,
        parse: fn(&str) -> Result<Duration, &'static str>,
    ) -> Duration {
        match value.map(parse) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(reason)) => {
                self.value(key, value.unwrap_or_default(), reason);
                default
            }
        }
    }

    fn addr(&mut self, key: String, value: &str, port_zero_ok: bool) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 && !port_zero_ok => {
                self.value(
                    key,
                    value,
                    "port 0 is not allowed: every worker must bind the same port",
                );
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.value(key, value, "expected `IP:PORT`, e.g. `127.0.0.1:6379` or `[::1]:6379` (names are not resolved)");
                None
            }
        }
    }
}

impl Errors {
    /// `[workers]`: placement (cores or a count), poll mode, buffers, splicing.
    fn workers(&mut self, raw: Option<toml::Value>) -> WorkersConfig {
        let errs = self;
        let mut workers = WorkersConfig {
            placement: Placement::Count(1),
            poll: PollMode::Interrupt,
            buffers: DEFAULT_BUFFERS,
            splice: true,
            splice_pipes: DEFAULT_SPLICE_PIPES,
            defer_taskrun: true,
            latency: true,
        };
        match raw.map(RawWorkers::deserialize) {
            None => errs.0.push(ConfigError::Missing {
                key: "workers".into(),
                reason: "a `[workers]` table with `cores = [...]` or `count = N` is required",
            }),
            Some(Err(e)) => errs.0.push(shape("workers", e)),
            Some(Ok(w)) => {
                workers.poll = match w.poll.as_deref() {
                    None | Some("interrupt") => PollMode::Interrupt,
                    Some("busy") => PollMode::Busy,
                    Some("adaptive") => {
                        let spin = errs.parsed(
                            "workers.spin".into(),
                            w.spin.as_deref(),
                            DEFAULT_SPIN,
                            parse_spin,
                        );
                        if spin > MAX_SPIN {
                            errs.value(
                                "workers.spin".into(),
                                w.spin.as_deref().unwrap_or_default(),
                                "at most `10ms`: to spin all the time, use `poll = \"busy\"`",
                            );
                        }
                        PollMode::Adaptive {
                            spin: spin.min(MAX_SPIN),
                        }
                    }
                    Some(other) => {
                        errs.value(
                            "workers.poll".into(),
                            other,
                            "expected `interrupt`, `busy` or `adaptive`",
                        );
                        PollMode::Interrupt
                    }
                };
                if let (Some(spin), false) =
                    (&w.spin, matches!(workers.poll, PollMode::Adaptive { .. }))
                {
                    errs.value(
                        "workers.spin".into(),
                        spin,
                        "only with `poll = \"adaptive\"`",
                    );
                }
                workers.splice = w.splice.unwrap_or(true);
                if let (Some(n), false) = (w.splice_pipes, workers.splice) {
                    errs.value(
                        "workers.splice_pipes".into(),
                        &n.to_string(),
                        "only with `splice = true`",
                    );
                }
                if let Some(n) = w.splice_pipes {
                    match u32::try_from(n) {
                        Ok(n) if (1..=65536).contains(&n) => workers.splice_pipes = n,
                        _ => errs.value(
                            "workers.splice_pipes".into(),
                            &n.to_string(),
                            "expected a whole number in 1..=65536",
                        ),
                    }
                }
                workers.defer_taskrun = w.defer_taskrun.unwrap_or(true);
                workers.latency = w.latency.unwrap_or(true);
                if let Some(b) = w.buffers {
                    match u16::try_from(b) {
                        Ok(b) if (2..=32768).contains(&b) && b.is_power_of_two() => {
                            workers.buffers = b;
                        }
                        _ => errs.value(
                            "workers.buffers".into(),
                            &b.to_string(),
                            "expected a power of two in 2..=32768",
                        ),
                    }
                }
                match (w.cores, w.count) {
                    (Some(_), Some(_)) => errs.0.push(ConfigError::Missing {
                        key: "workers".into(),
                        reason: "give either `cores` or `count`, not both",
                    }),
                    (None, None) => errs.0.push(ConfigError::Missing {
                        key: "workers".into(),
                        reason: "give `cores = [...]` or `count = N`",
                    }),
                    (Some(cores), None) => {
                        let mut seen: HashMap<usize, usize> = HashMap::new();
                        let mut ok = Vec::new();
                        if cores.is_empty() {
                            errs.0.push(ConfigError::Missing {
                                key: "workers.cores".into(),
                                reason: "must list at least one core",
                            });
                        }
                        for (i, c) in cores.iter().enumerate() {
                            let key = format!("workers.cores[{i}]");
                            match usize::try_from(*c) {
                                Err(_) => {
                                    errs.value(key, &c.to_string(), "expected a core number >= 0")
                                }
                                Ok(core) => {
                                    if let Some(first) = seen.insert(core, i) {
                                        errs.0.push(ConfigError::Duplicate {
                                            key,
                                            value: core.to_string(),
                                            other: format!("workers.cores[{first}]"),
                                        });
                                    } else {
                                        ok.push(core);
                                    }
                                }
                            }
                        }
                        workers.placement = Placement::Cores(ok);
                    }
                    (None, Some(n)) => match usize::try_from(n) {
                        Ok(n) if (1..=1024).contains(&n) => workers.placement = Placement::Count(n),
                        _ => {
                            errs.value("workers.count".into(), &n.to_string(), "expected 1..=1024")
                        }
                    },
                }
            }
        }

        workers
    }

    /// Every `[[listener]]`, each on its own; names and listen addresses must not
    /// repeat. Returns the listeners that parsed and the listen addresses by index.
    fn listeners(
        &mut self,
        raw: Option<Vec<toml::Value>>,
    ) -> (Vec<ListenerConfig>, HashMap<SocketAddr, usize>) {
        let errs = self;
        let raw_listeners = raw.unwrap_or_default();
        if raw_listeners.is_empty() {
            errs.0.push(ConfigError::Missing {
                key: "listener".into(),
                reason: "at least one `[[listener]]` is required",
            });
        }
        let mut listeners = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, v) in raw_listeners.into_iter().enumerate() {
            let l = match RawListener::deserialize(v) {
                Ok(l) => l,
                Err(e) => {
                    errs.0.push(shape(&format!("listener[{i}]"), e));
                    continue;
                }
            };
            let k = |f: &str| format!("listener[{i}].{f}");
            if !valid_name(&l.name) {
                errs.value(
                    k("name"),
                    &l.name,
                    "expected 1 to 64 of `A-Z a-z 0-9 - _ .`",
                );
            } else if let Some(first) = names.insert(l.name.clone(), i) {
                errs.0.push(ConfigError::Duplicate {
                    key: k("name"),
                    value: l.name.clone(),
                    other: format!("listener[{first}].name"),
                });
            }
            let listen = errs.addr(k("listen"), &l.listen, false);
            if let Some(a) = listen {
                if let Some(first) = addrs.insert(a, i) {
                    errs.0.push(ConfigError::Duplicate {
                        key: k("listen"),
                        value: a.to_string(),
                        other: format!("listener[{first}].listen"),
                    });
                }
            }
            let upstream = errs.addr(k("upstream"), &l.upstream, false);
            let connect_timeout = errs.duration(
                k("connect_timeout"),
                l.connect_timeout.as_deref(),
                DEFAULT_CONNECT_TIMEOUT,
            );
            let idle_timeout = errs.duration(
                k("idle_timeout"),
                l.idle_timeout.as_deref(),
                DEFAULT_IDLE_TIMEOUT,
            );
            let max_lifetime = l
                .max_lifetime
                .as_deref()
                .map(|s| errs.duration(k("max_lifetime"), Some(s), Duration::from_secs(1)));
            let max_connections = match l.max_connections {
                None => DEFAULT_MAX_CONNECTIONS,
                Some(n) => match u32::try_from(n) {
                    Ok(n) if n > 0 => n,
                    _ => {
                        errs.value(
                            k("max_connections"),
                            &n.to_string(),
                            "expected 1..=4294967295",
                        );
                        1
                    }
                },
            };
            let has_tls = l.tls.is_some();
            let mut tls = l.tls.and_then(|v| errs.tls(i, v));
            let protocol = match l.protocol.as_deref() {
                None | Some("tcp") => Protocol::Tcp,
                Some("postgres") => {
                    if !has_tls {
                        errs.0.push(ConfigError::Missing {
                            key: k("tls"),
                            reason: "`protocol = \"postgres\"` needs a `[listener.tls]` table: zgate terminates the TLS the client asks for",
                        });
                    }
                    if let Some(t) = tls.as_mut() {
                        errs.postgres_alpn(i, t);
                    }
                    Protocol::Postgres
                }
                Some(other) => {
                    errs.value(k("protocol"), other, "expected `tcp` or `postgres`");
                    Protocol::Tcp
                }
            };
            let upstream_tls = l
                .upstream_tls
                .and_then(|v| errs.upstream_tls(i, v, has_tls));
            if let (Some(listen), Some(upstream)) = (listen, upstream) {
                listeners.push(ListenerConfig {
                    name: l.name,
                    listen,
                    upstream,
                    connect_timeout,
                    idle_timeout,
                    max_lifetime,
                    max_connections,
                    tls,
                    protocol,
                    upstream_tls,
                });
            }
        }

        (listeners, addrs)
    }

    /// Second pass: the worker placement against the cores this process may run on.
    fn host(&mut self, workers: &WorkersConfig, host: &Host) {
        let errs = self;
        let wanted: Vec<(String, usize)> = match &workers.placement {
            Placement::Cores(c) => c
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("workers.cores[{i}]"), *c))
                .collect(),
            Placement::Count(n) => {
                if *n > host.cores.len() {
                    errs.value(
                        "workers.count".into(),
                        &n.to_string(),
                        "more workers than cores this process may run on",
                    );
                }
                Vec::new()
            }
        };
        for (key, core) in wanted {
            if !host.cores.contains(&core) {
                errs.0.push(ConfigError::NoSuchCore {
                    key,
                    core,
                    available: host.cores.clone(),
                });
            }
        }
    }
}

fn shape(key: &str, e: toml::de::Error) -> ConfigError {
    ConfigError::Shape {
        key: key.to_string(),
        message: e.message().trim().to_string(),
    }
}

impl Config {
    /// Parse and validate `text`. Pure: reads nothing but its argument.
    ///
    /// Errors: every problem found, each naming its key.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse_inner(text, None)
    }

    /// [`Config::parse`] plus the checks against `host` (configured cores exist).
    pub fn parse_for_host(text: &str, host: &Host) -> Result<Config, ConfigErrors> {
        Self::parse_inner(text, Some(host))
    }

    fn parse_inner(text: &str, host: Option<&Host>) -> Result<Config, ConfigErrors> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError::Syntax {
                message: e.to_string().trim().replace('\n', " "),
            }])
        })?;
        let top = RawTop::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigErrors(vec![shape("(top level)", e)]))?;
        let mut errs = Errors(Vec::new());
        let workers = errs.workers(top.workers);
        let (listeners, addrs) = errs.listeners(top.listener);
        let admin = top.admin.as_deref().and_then(|a| {
            let parsed = errs.addr("admin".into(), a, false);
            if let Some(p) = parsed {
                if let Some(i) = addrs.get(&p) {
                    errs.0.push(ConfigError::Duplicate {
                        key: "admin".into(),
                        value: p.to_string(),
                        other: format!("listener[{i}].listen"),
                    });
                }
            }
            parsed
        });
        let drain_timeout = errs.duration(
            "drain_timeout".into(),
            top.drain_timeout.as_deref(),
            DEFAULT_DRAIN_TIMEOUT,
        );
        let audit = match top.audit.as_deref() {
            None | Some("stderr") => AuditSink::Stderr,
            Some("off") => AuditSink::Off,
            Some("") => {
                errs.value(
                    "audit".into(),
                    "",
                    "expected `stderr`, `off` or a file path",
                );
                AuditSink::Off
            }
            Some(path) => AuditSink::File(PathBuf::from(path)),
        };
        let operator = match top.operator.map(RawOperator::deserialize) {
            None => None,
            Some(Err(e)) => {
                errs.0.push(shape("operator", e));
                None
            }
            Some(Ok(c)) => errs.operator(c),
        };
        let process = match top.process.map(RawProcess::deserialize) {
            None => ProcessConfig::default(),
            Some(Err(e)) => {
                errs.0.push(shape("process", e));
                ProcessConfig::default()
            }
            Some(Ok(p)) => errs.process(p),
        };
        let control = match top.control.map(RawControl::deserialize) {
            None => None,
            Some(Err(e)) => {
                errs.0.push(shape("control", e));
                None
            }
            Some(Ok(c)) => errs.control(c),
        };
        let table = match top.table {
            Some(t) if t.is_empty() => {
                errs.value("table".into(), &t, "expected a file path");
                None
            }
            Some(t) if control.is_some() => {
                errs.value(
                    "table".into(),
                    &t,
                    "cannot be used with [control]: the control process sends the table (leave `table` out)",
                );
                None
            }
            t => t.map(PathBuf::from),
        };

        if let Some(host) = host {
            errs.host(&workers, host);
        }

        if errs.0.is_empty() {
            Ok(Config {
                listeners,
                workers,
                table,
                admin,
                drain_timeout,
                audit,
                operator,
                process,
                control,
            })
        } else {
            Err(ConfigErrors(errs.0))
        }
    }

    /// The cores the workers run on, one per worker, given what `host` offers.
    pub fn worker_cores(&self, host: &Host) -> Vec<usize> {
        match &self.workers.placement {
            Placement::Cores(c) => c.clone(),
            Placement::Count(n) => host.cores.iter().copied().take(*n).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
table = "policy.zgt"
admin = "127.0.0.1:9901"
drain_timeout = "10s"

[workers]
cores = [0, 1]
poll = "busy"

[[listener]]
name = "redis"
listen = "127.0.0.1:7000"
upstream = "127.0.0.1:6379"
connect_timeout = "250ms"
idle_timeout = "5m"
max_lifetime = "1h"
max_connections = 100
"#;

    #[test]
    fn good_config_parses() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.listeners.len(), 1);
        let l = &c.listeners[0];
        assert_eq!(l.name, "redis");
        assert_eq!(l.connect_timeout, Duration::from_millis(250));
        assert_eq!(l.idle_timeout, Duration::from_secs(300));
        assert_eq!(l.max_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(l.max_connections, 100);
        assert_eq!(c.workers.placement, Placement::Cores(vec![0, 1]));
        assert_eq!(c.workers.poll, PollMode::Busy);
        assert_eq!(c.table, Some(PathBuf::from("policy.zgt")));
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
    }

    #[test]
    fn defaults_apply() {
        let c = Config::parse(
            "[workers]\ncount = 1\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nupstream='127.0.0.1:2'\n",
        )
        .unwrap();
        assert_eq!(c.workers.poll, PollMode::Interrupt);
        assert_eq!(c.workers.buffers, DEFAULT_BUFFERS);
        assert!(c.workers.splice);
        assert_eq!(c.listeners[0].connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.listeners[0].max_lifetime, None);
        assert_eq!(c.table, None);
        assert_eq!(c.admin, None);
    }

    #[test]
    fn control_stale_after_defaults_to_5s_and_a_bad_one_is_named() {
        let text = |extra: &str| {
            format!(
                "[workers]\ncount = 1\n[control]\nsocket = 'c.sock'\nstate_dir = 's'\n{extra}\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nupstream='127.0.0.1:2'\n"
            )
        };
        let c = Config::parse(&text("")).unwrap();
        assert_eq!(c.control.unwrap().stale_after, DEFAULT_STALE_AFTER);
        let c = Config::parse(&text("stale_after = '750ms'")).unwrap();
        assert_eq!(c.control.unwrap().stale_after, Duration::from_millis(750));
        let e = Config::parse(&text("stale_after = 'soon'")).unwrap_err();
        assert!(e.to_string().contains("control.stale_after"), "{e}");
    }

    #[test]
    fn splice_can_be_turned_off_and_must_be_a_boolean() {
        let text = |v: &str| {
            format!("[workers]\ncount = 1\nsplice = {v}\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nupstream='127.0.0.1:2'\n")
        };
        assert!(!Config::parse(&text("false")).unwrap().workers.splice);
        assert!(Config::parse(&text("true")).unwrap().workers.splice);
        let e = Config::parse(&text("\"yes\"")).unwrap_err();
        assert!(e.to_string().contains("workers"), "{e}");
    }

    #[test]
    fn adaptive_poll_takes_a_spin_and_only_it_does() {
        let text = |workers: &str| {
            format!("[workers]\ncount = 1\n{workers}\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nupstream='127.0.0.1:2'\n")
        };
        let poll = |w: &str| Config::parse(&text(w)).map(|c| c.workers.poll);
        assert_eq!(
            poll("poll = \"adaptive\"").unwrap(),
            PollMode::Adaptive { spin: DEFAULT_SPIN }
        );
        assert_eq!(
            poll("poll = \"adaptive\"\nspin = \"50us\"").unwrap(),
            PollMode::Adaptive {
                spin: Duration::from_micros(50)
            }
        );
        assert_eq!(
            poll("poll = \"adaptive\"\nspin = \"10ms\"").unwrap(),
            PollMode::Adaptive { spin: MAX_SPIN }
        );
        for (w, want) in [
            (
                "poll = \"adaptive\"\nspin = \"11ms\"",
                "workers.spin: at most `10ms`: to spin all the time, use `poll = \"busy\"` (got `11ms`)",
            ),
            (
                "poll = \"adaptive\"\nspin = \"0us\"",
                "workers.spin: must be greater than zero (got `0us`)",
            ),
            (
                "poll = \"adaptive\"\nspin = \"fast\"",
                "workers.spin: expected a duration such as `50us` or `1ms` (got `fast`)",
            ),
            (
                "poll = \"adaptive\"\nspin = \"us\"",
                "workers.spin: expected a duration such as `50us` or `1ms` (got `us`)",
            ),
            (
                "spin = \"100us\"",
                "workers.spin: only with `poll = \"adaptive\"` (got `100us`)",
            ),
            (
                "poll = \"busy\"\nspin = \"100us\"",
                "workers.spin: only with `poll = \"adaptive\"` (got `100us`)",
            ),
        ] {
            let e = poll(w).unwrap_err().to_string();
            assert!(e.contains(want), "{w:?}: {e}");
        }
    }

    #[test]
    fn splice_pipes_defaults_and_must_be_in_range() {
        let text = |w: &str| {
            format!("[workers]\ncount = 1\n{w}\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nupstream='127.0.0.1:2'\n")
        };
        let pipes = |w: &str| Config::parse(&text(w)).map(|c| c.workers.splice_pipes);
        assert_eq!(pipes("").unwrap(), DEFAULT_SPLICE_PIPES);
        assert_eq!(pipes("splice_pipes = 1").unwrap(), 1);
        assert_eq!(pipes("splice_pipes = 65536").unwrap(), 65536);
        for bad in ["0", "65537", "-1"] {
            let e = pipes(&format!("splice_pipes = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(
                    "workers.splice_pipes: expected a whole number in 1..=65536 (got `{bad}`)"
                )),
                "{bad}: {e}"
            );
        }
        let e = pipes("splice_pipes = \"many\"").unwrap_err().to_string();
        assert!(e.contains("workers"), "{e}");
        let e = pipes("splice = false\nsplice_pipes = 4")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("workers.splice_pipes: only with `splice = true` (got `4`)"),
            "{e}"
        );
    }

    #[test]
    fn buffers_must_be_a_power_of_two_in_range() {
        let text = |b: &str| {
            format!("[workers]\ncount = 1\nbuffers = {b}\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nupstream='127.0.0.1:2'\n")
        };
        assert_eq!(Config::parse(&text("4")).unwrap().workers.buffers, 4);
        assert_eq!(
            Config::parse(&text("32768")).unwrap().workers.buffers,
            32768
        );
        for bad in ["3", "1", "0", "-2", "65536"] {
            let e = Config::parse(&text(bad)).unwrap_err();
            assert!(e.to_string().contains("workers.buffers"), "{bad}: {e}");
        }
    }

    #[test]
    fn misspelled_key_is_rejected_with_its_table() {
        let text = GOOD.replace("connect_timeout", "conect_timeout");
        let e = Config::parse(&text).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        let msg = e.to_string();
        assert!(msg.contains("listener[0]"), "{msg}");
        assert!(msg.contains("conect_timeout"), "{msg}");
    }

    #[test]
    fn unknown_top_level_key_is_rejected() {
        let e = Config::parse(&format!("tabel = 'x'\n{GOOD}")).unwrap_err();
        assert!(e.to_string().contains("tabel"), "{e}");
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = r#"
drain_timeout = "0s"
[workers]
cores = [0, 0]
poll = "spin"
[[listener]]
name = "a"
listen = "127.0.0.1:7000"
upstream = "localhost:6379"
idle_timeout = "soon"
[[listener]]
name = "a"
listen = "127.0.0.1:7000"
upstream = "127.0.0.1:1"
max_connections = 0
[[listener]]
name = "b"
listen = "127.0.0.1:7002"
upstream = "127.0.0.1:1"
typo = 1
"#;
        let e = Config::parse(text).unwrap_err();
        let keys: Vec<String> =
            e.0.iter()
                .map(|e| e.to_string().split(':').next().unwrap_or("").to_string())
                .collect();
        for want in [
            "workers.poll",
            "workers.cores[1]",
            "listener[0].upstream",
            "listener[0].idle_timeout",
            "listener[1].name",
            "listener[1].listen",
            "listener[1].max_connections",
            "listener[2]",
            "drain_timeout",
        ] {
            assert!(keys.iter().any(|k| k == want), "missing {want} in {e}");
        }
        assert_eq!(e.0.len(), 9, "{e}");
    }

    #[test]
    fn host_checks_cores() {
        let host = Host { cores: vec![0] };
        let e = Config::parse_for_host(GOOD, &host).unwrap_err();
        assert_eq!(
            e.0,
            vec![ConfigError::NoSuchCore {
                key: "workers.cores[1]".into(),
                core: 1,
                available: vec![0]
            }]
        );
        let c = Config::parse_for_host(&GOOD.replace("[0, 1]", "[0]"), &host).unwrap();
        assert_eq!(c.worker_cores(&host), vec![0]);
    }

    #[test]
    fn missing_sections_are_named() {
        let e = Config::parse("").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("workers"), "{msg}");
        assert!(msg.contains("listener"), "{msg}");
    }

    #[test]
    fn syntax_error_is_one_error() {
        let e = Config::parse("[workers\n").unwrap_err();
        assert!(
            matches!(e.0.as_slice(), [ConfigError::Syntax { .. }]),
            "{e}"
        );
    }

    const TLS_BASE: &str = "[workers]\ncount = 1\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nupstream='127.0.0.1:2'\n[listener.tls]\ncert='s.pem'\nkey='s.key'\n";

    #[test]
    fn postgres_listeners_need_tls_and_offer_alpn_postgresql() {
        let pg = TLS_BASE.replace("[listener.tls]", "protocol='postgres'\n[listener.tls]");
        let c = Config::parse(&format!("{pg}client_ca='ca.pem'\n")).unwrap();
        assert_eq!(c.listeners[0].protocol, Protocol::Postgres);
        let t = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(t.alpn, vec![POSTGRES_ALPN.to_string()]);
        let e = Config::parse(&format!("{pg}client_ca='ca.pem'\nalpn=['h2']\n")).unwrap_err();
        assert_eq!(
            e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["listener[0].tls.alpn: a `protocol = \"postgres\"` listener must offer `postgresql` (or leave `alpn` out) (got `h2`)".to_string()]
        );
        let plain = "[workers]\ncount = 1\n[[listener]]\nname='a'\nlisten='127.0.0.1:1'\nupstream='127.0.0.1:2'\nprotocol='postgres'\n";
        let e = Config::parse(plain).unwrap_err();
        assert!(
            e.0[0].to_string().starts_with(
                "listener[0].tls: `protocol = \"postgres\"` needs a `[listener.tls]` table"
            ),
            "{e:?}"
        );
        let e = Config::parse(&plain.replace("postgres", "mysql")).unwrap_err();
        assert_eq!(
            e.0[0].to_string(),
            "listener[0].protocol: expected `tcp` or `postgres` (got `mysql`)"
        );
        assert_eq!(
            Config::parse(GOOD).unwrap().listeners[0].protocol,
            Protocol::Tcp
        );
    }

    #[test]
    fn tls_settings_parse_with_defaults() {
        let c = Config::parse(&format!("{TLS_BASE}client_ca='ca.pem'\n")).unwrap();
        let t = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(t.client_auth, ClientAuthMode::Required);
        assert_eq!(t.client_ca, Some(PathBuf::from("ca.pem")));
        assert!(!t.allow_tls12);
        assert!(t.session_resumption);
        assert!(t.advertise_client_ca_names);
        assert_eq!(t.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert_eq!(t.reload_interval, Some(DEFAULT_TLS_RELOAD_INTERVAL));
        let c = Config::parse(&format!(
            "{TLS_BASE}client_auth='optional'\nclient_ca='ca.pem'\ncrl=['a.crl']\nalpn=['redis']\n\
             min_version='1.2'\nsession_resumption=false\ndevice_id_uri_prefix='urn:device:'\n\
             advertise_client_ca_names=false\n\
             handshake_timeout='2s'\nsni=[{{cert='b.pem', key='b.key'}}]\nreload_interval='off'\n"
        ))
        .unwrap();
        let t = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(t.client_auth, ClientAuthMode::Optional);
        assert_eq!(t.crl, vec![PathBuf::from("a.crl")]);
        assert_eq!(t.alpn, vec!["redis".to_string()]);
        assert!(t.allow_tls12);
        assert!(!t.session_resumption);
        assert!(!t.advertise_client_ca_names);
        assert_eq!(t.device_id_uri_prefix.as_deref(), Some("urn:device:"));
        assert_eq!(t.handshake_timeout, Duration::from_secs(2));
        assert_eq!(t.sni.len(), 1);
        assert_eq!(t.reload_interval, None);
        let e = Config::parse(&format!(
            "{TLS_BASE}client_ca='ca.pem'\ndevice_id_uri_prefix='urn:device'\n"
        ))
        .unwrap_err();
        assert_eq!(
            e.0[0].to_string(),
            "listener[0].tls.device_id_uri_prefix: expected a prefix ending in `:` or `/`, such as `urn:device:` (got `urn:device`)"
        );
        // Review 16.8: a SPIFFE prefix, in any case.
        for prefix in ["spiffe://corp.example/device/", "SPIFFE://corp.example/"] {
            let e = Config::parse(&format!(
                "{TLS_BASE}client_ca='ca.pem'\ndevice_id_uri_prefix='{prefix}'\n"
            ))
            .unwrap_err();
            assert_eq!(
                e.0[0].to_string(),
                format!("listener[0].tls.device_id_uri_prefix: a device-id prefix may not be a SPIFFE URI: a certificate could then carry two SPIFFE IDs (got `{prefix}`)")
            );
        }
        let e = Config::parse(&format!(
            "{TLS_BASE}client_ca='ca.pem'\nreload_interval='soon'\n"
        ))
        .unwrap_err();
        assert!(
            e.0[0]
                .to_string()
                .starts_with("listener[0].tls.reload_interval: expected a positive duration"),
            "{e:?}"
        );
        // Plain listeners stay plain.
        assert!(Config::parse(GOOD).unwrap().listeners[0].tls.is_none());
    }

    #[test]
    fn session_resumption_works_with_a_crl_and_its_max_age_is_bounded() {
        let with_crl = format!("{TLS_BASE}client_ca='ca.pem'\ncrl=['a.crl']\n");
        let t = Config::parse(&with_crl)
            .unwrap()
            .listeners
            .remove(0)
            .tls
            .unwrap();
        assert!(t.session_resumption);
        assert_eq!(
            t.session_resumption_max_age,
            zgate_tls::DEFAULT_RESUMPTION_MAX_AGE
        );
        let c = Config::parse(&format!(
            "{with_crl}session_resumption=true\nsession_resumption_max_age='10m'\n"
        ))
        .unwrap();
        let t = c.listeners[0].tls.as_ref().unwrap();
        assert!(t.session_resumption);
        assert_eq!(t.session_resumption_max_age, Duration::from_secs(600));
        for (bad, why) in [
            (
                "'13h'",
                "at most `12h`: tickets do not outlive two 6-hour ticket keys (got `13h`)",
            ),
            ("'0s'", "must be greater than zero (got `0s`)"),
        ] {
            let e = Config::parse(&format!("{with_crl}session_resumption_max_age={bad}\n"))
                .unwrap_err();
            assert_eq!(
                e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                vec![format!("listener[0].tls.session_resumption_max_age: {why}")]
            );
        }
    }

    /// The `config` fuzz target's corpus (`dataplane/fuzz/corpus/config/`), replayed on
    /// every test run: the seeds (the reference in docs/operations.md, the benchmark
    /// configs) and what fuzzing kept. None may panic; the benchmark configs parse.
    #[test]
    fn the_config_fuzz_corpus_parses_or_explains() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            match Config::parse(text) {
                Ok(c) => assert!(!c.listeners.is_empty()),
                Err(e) => assert!(!e.0.is_empty(), "{}", path.display()),
            }
            seen += 1;
        }
        assert!(seen >= 3, "corpus missing in {}", dir.display());
        for seed in ["plain-busy.toml", "tls-bench.toml"] {
            let text = std::fs::read_to_string(dir.join(seed)).unwrap();
            assert!(Config::parse(&text).is_ok(), "{seed}");
        }
    }

    #[test]
    fn process_names_a_user_and_a_group_by_name_or_number() {
        assert_eq!(
            Config::parse(GOOD).unwrap().process,
            ProcessConfig::default()
        );
        let c = Config::parse(&format!(
            "{GOOD}\n[process]\nuser = \"zgate\"\ngroup = 65534\n"
        ))
        .unwrap();
        assert_eq!(
            c.process,
            ProcessConfig {
                user: Some(Account::Name("zgate".into())),
                group: Some(Account::Id(65534)),
            }
        );
        for (value, shown) in [
            ("\"\"", "\"\""),
            ("-1", "-1"),
            ("\"a b\"", "\"a b\""),
            ("[1]", "[1]"),
        ] {
            let e = Config::parse(&format!("{GOOD}\n[process]\nuser = {value}\n")).unwrap_err();
            assert_eq!(
                e.0[0].to_string(),
                format!("process.user: expected a name (letters, digits, `.`, `_`, `-`; at most 32) or a number (got `{shown}`)")
            );
        }
        let e = Config::parse(&format!("{GOOD}\n[process]\nusr = \"zgate\"\n")).unwrap_err();
        assert!(e.to_string().contains("process"), "{e}");
    }

    #[test]
    fn the_operator_socket_is_checked_before_anything_binds() {
        assert_eq!(Config::parse(GOOD).unwrap().operator, None);
        let c = Config::parse(&format!(
            "{GOOD}\n[operator]\nsocket = \"run/zgate.sock\"\nusers = [0, 1001]\n"
        ))
        .unwrap();
        assert_eq!(
            c.operator,
            Some(OperatorConfig {
                socket: PathBuf::from("run/zgate.sock"),
                users: Some(vec![0, 1001]),
            })
        );
        let long = "s".repeat(MAX_SOCKET_PATH + 1);
        for (table, want) in [
            (
                "socket = \"\"".to_string(),
                "operator.socket: expected a path of 1 to 107 bytes (a Unix socket path) (got ``)".to_string(),
            ),
            (
                format!("socket = \"{long}\""),
                format!("operator.socket: expected a path of 1 to 107 bytes (a Unix socket path) (got `{long}`)"),
            ),
            (
                "socket = \"z.sock\"\nusers = []".to_string(),
                "operator.users: expected at least one uid (leave it out to admit the gateway's own uid) (got `[]`)".to_string(),
            ),
            (
                "socket = \"z.sock\"\nusers = [0, -1]".to_string(),
                "operator.users[1]: expected a uid, 0..=4294967295 (got `-1`)".to_string(),
            ),
        ] {
            let e = Config::parse(&format!("{GOOD}\n[operator]\n{table}\n")).unwrap_err();
            assert_eq!(
                e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                vec![want]
            );
        }
        // Unknown keys and a missing socket are refused too.
        let e = Config::parse(&format!("{GOOD}\n[operator]\nsockt = \"z.sock\"\n")).unwrap_err();
        assert!(e.to_string().contains("operator"), "{e}");
    }

    #[test]
    fn tls_errors_name_their_keys() {
        let e = Config::parse(&format!(
            "{TLS_BASE}client_ca='ca.pem'\nclient_atuh='none'\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("listener[0].tls"), "{e}");
        assert!(e.to_string().contains("client_atuh"), "{e}");
        let e = Config::parse(TLS_BASE).unwrap_err();
        assert!(e.to_string().contains("listener[0].tls.client_ca"), "{e}");
        let e = Config::parse(&format!(
            "{TLS_BASE}client_ca='ca.pem'\nclient_auth='maybe'\nmin_version='1.1'\nalpn=['']\n"
        ))
        .unwrap_err();
        let msg = e.to_string();
        for key in [
            "listener[0].tls.client_auth",
            "listener[0].tls.min_version",
            "listener[0].tls.alpn[0]",
        ] {
            assert!(msg.contains(key), "missing {key} in {msg}");
        }
        let e = Config::parse(&format!(
            "{TLS_BASE}client_auth='none'\nclient_ca='ca.pem'\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("listener[0].tls.client_auth"), "{e}");
        for bad in ["0", "-3", "5000000000"] {
            let e = Config::parse(&format!(
                "{TLS_BASE}client_ca='ca.pem'\nmax_handshakes_per_source={bad}\n"
            ))
            .unwrap_err();
            assert!(
                e.to_string()
                    .contains("listener[0].tls.max_handshakes_per_source"),
                "{e}"
            );
        }
        let c = Config::parse(&format!(
            "{TLS_BASE}client_ca='ca.pem'\nmax_handshakes_per_source=8\n"
        ))
        .unwrap();
        let t = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(t.max_handshakes_per_source, Some(8));
    }

    #[test]
    fn tls_trust_domains_parse_and_exclude_client_ca() {
        let c = Config::parse(&format!(
            "{TLS_BASE}trust_domains={{ 'partner.example'='p.pem', 'corp.example'='c.pem' }}\n"
        ))
        .unwrap();
        let t = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(t.client_ca, None);
        assert_eq!(
            t.trust_domains,
            vec![
                ("corp.example".to_string(), PathBuf::from("c.pem")),
                ("partner.example".to_string(), PathBuf::from("p.pem")),
            ]
        );
        let c = Config::parse(&format!(
            "{TLS_BASE}client_ca='ca.pem'\ntrust_domain='corp.example'\n"
        ))
        .unwrap();
        let t = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(t.trust_domain.as_deref(), Some("corp.example"));
        for (extra, key) in [
            (
                "client_ca='ca.pem'\ntrust_domains={ 'corp.example'='c.pem' }\n",
                "listener[0].tls.trust_domains",
            ),
            ("trust_domains={}\n", "listener[0].tls.trust_domains"),
            (
                "trust_domain='corp.example'\n",
                "listener[0].tls.trust_domain",
            ),
            (
                "client_auth='none'\ntrust_domains={ 'corp.example'='c.pem' }\n",
                "listener[0].tls.client_auth",
            ),
            (
                "trust_domains={ 'corp.example'='' }\n",
                "listener[0].tls.trust_domains.\"corp.example\"",
            ),
        ] {
            let e = Config::parse(&format!("{TLS_BASE}{extra}")).unwrap_err();
            assert!(e.to_string().contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("0ms").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("s").is_err());
    }
}
