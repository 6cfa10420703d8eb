//! Loading `[listener.tls]` material: read the files a listener names (relative paths
//! against the config file's directory) and build its [`ServerTls`] with `zgate-tls`.
//! Runs at config load (`zgate run`, `zgate check`) and on reload ([`TlsWatch`]), on
//! the main or supervisor thread, never in a worker. Every error names its key and file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zgate_tls::{ClientAuth, ClientTls, ClientTlsSpec, MinVersion, ServerTls, TlsConfigError};

use crate::config::{ClientAuthMode, Config, ConfigError, ListenerConfig, TlsSettings};

/// A TLS listener's material: what new handshakes use, and how to reach the upstream.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Toward clients.
    pub server: ServerTls,
    /// Toward the upstream (`[listener.upstream_tls]`); `None`: plaintext upstream.
    pub upstream: Option<ClientTls>,
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        base.join(p)
    } else {
        p.to_path_buf()
    }
}

fn read(key: String, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::Tls {
        key,
        path: path.display().to_string(),
        reason: format!("cannot read: {e}"),
    })
}

/// Which key a builder error concerns.
fn key_of(i: usize, e: &TlsConfigError) -> String {
    let f = match e {
        TlsConfigError::Key { .. } => "key",
        TlsConfigError::NoCertificate { what }
        | TlsConfigError::Pem { what, .. }
        | TlsConfigError::Certificate { what, .. } => what,
        TlsConfigError::Verifier { .. } => "client_ca",
        TlsConfigError::TrustDomain { .. } => "trust_domains",
        _ => "(tls)",
    };
    format!("listener[{i}].tls.{f}")
}

/// Read and check listener `i`'s TLS files and build its configuration. `now` (Unix
/// seconds) must lie inside every served certificate's validity window: an expired or
/// not-yet-valid server certificate would fail every handshake, so it is refused here.
pub fn load(
    i: usize,
    l: &ListenerConfig,
    base: &Path,
    now: i64,
) -> Result<ListenerTls, Vec<ConfigError>> {
    let Some(t) = l.tls.as_ref() else {
        return Err(vec![ConfigError::Missing {
            key: format!("listener[{i}].tls"),
            reason: "not a TLS listener",
        }]);
    };
    let server = build(i, t, base);
    let upstream = l
        .upstream_tls
        .as_ref()
        .map(|u| load_upstream(i, u, base))
        .transpose();
    let (server, upstream) = match (server, upstream) {
        (Ok(s), Ok(u)) => (s, u),
        (s, u) => {
            let mut errs = s.err().unwrap_or_default();
            errs.extend(u.err().unwrap_or_default());
            return Err(errs);
        }
    };
    let mut errs = Vec::new();
    let mut check = |key: String, path: &Path, (not_before, not_after): (i64, i64)| {
        if now < not_before || now >= not_after {
            let state = if now < not_before {
                "is not valid yet"
            } else {
                "has expired"
            };
            errs.push(ConfigError::Tls {
                key,
                path: resolve(base, path).display().to_string(),
                reason: format!(
                    "a certificate {state} (valid from {not_before} to {not_after}, Unix seconds; now {now})"
                ),
            });
        }
    };
    check(
        format!("listener[{i}].tls.cert"),
        &t.cert,
        server.validity(),
    );
    if let (Some(u), Some(v)) = (
        l.upstream_tls.as_ref(),
        upstream.as_ref().and_then(ClientTls::validity),
    ) {
        if let Some((c, _)) = &u.client_cert {
            check(format!("listener[{i}].upstream_tls.cert"), c, v);
        }
    }
    if errs.is_empty() {
        Ok(ListenerTls { server, upstream })
    } else {
        Err(errs)
    }
}

/// Read listener `i`'s `[listener.upstream_tls]` files and build its client config.
fn load_upstream(
    i: usize,
    u: &crate::config::UpstreamTlsSettings,
    base: &Path,
) -> Result<ClientTls, Vec<ConfigError>> {
    let k = |f: &str| format!("listener[{i}].upstream_tls.{f}");
    let ca_path = resolve(base, &u.ca);
    let ca = read(k("ca"), &ca_path).map_err(|e| vec![e])?;
    let mut errs = Vec::new();
    let pair = u.client_cert.as_ref().map(|(c, key)| {
        let (cp, kp) = (resolve(base, c), resolve(base, key));
        (read(k("cert"), &cp), read(k("key"), &kp), cp)
    });
    let client_cert = match pair {
        Some((Ok(c), Ok(key), cp)) => Some((c, key, cp)),
        Some((c, key, _)) => {
            errs.extend(c.err());
            errs.extend(key.err());
            return Err(errs);
        }
        None => None,
    };
    let spec = ClientTlsSpec {
        ca_pem: &ca,
        server_name: &u.server_name,
        client_cert: client_cert
            .as_ref()
            .map(|(c, key, _)| (c.as_slice(), key.as_slice())),
        alpn: u.alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
        min_version: if u.allow_tls12 {
            MinVersion::Tls12
        } else {
            MinVersion::Tls13
        },
    };
    ClientTls::new(&spec).map_err(|e| {
        let (key, path) = match &e {
            TlsConfigError::Key { .. } | TlsConfigError::NoCertificate { what: "cert" } => (
                k("cert"),
                client_cert
                    .as_ref()
                    .map_or(ca_path.clone(), |(_, _, p)| p.clone()),
            ),
            TlsConfigError::Settings { .. } => (k("server_name"), ca_path.clone()),
            _ => (k("ca"), ca_path.clone()),
        };
        vec![ConfigError::Tls {
            key,
            path: path.display().to_string(),
            reason: e.to_string(),
        }]
    })
}

fn build(i: usize, t: &TlsSettings, base: &Path) -> Result<ServerTls, Vec<ConfigError>> {
    let k = |f: &str| format!("listener[{i}].tls.{f}");
    let mut errs = Vec::new();
    let mut get = |key: String, p: &Path| {
        let path = resolve(base, p);
        match read(key, &path) {
            Ok(b) => Some((b, path)),
            Err(e) => {
                errs.push(e);
                None
            }
        }
    };
    let cert = get(k("cert"), &t.cert);
    let key = get(k("key"), &t.key);
    let ca = t.client_ca.as_ref().and_then(|p| get(k("client_ca"), p));
    let domains: Vec<_> = t
        .trust_domains
        .iter()
        .filter_map(|(td, p)| {
            get(k(&format!("trust_domains.\"{td}\"")), p).map(|(b, path)| (td.as_str(), b, path))
        })
        .collect();
    let crls: Vec<_> = t
        .crl
        .iter()
        .enumerate()
        .filter_map(|(j, p)| get(k(&format!("crl[{j}]")), p))
        .collect();
    let sni: Vec<_> = t
        .sni
        .iter()
        .enumerate()
        .map(|(j, (c, kk))| {
            (
                get(k(&format!("sni[{j}].cert")), c),
                get(k(&format!("sni[{j}].key")), kk),
            )
        })
        .collect();
    if !errs.is_empty() {
        return Err(errs);
    }
    let (Some((cert, cert_path)), Some((key, _))) = (cert, key) else {
        return Err(errs);
    };
    let fail = |e: TlsConfigError, path: &Path| {
        vec![ConfigError::Tls {
            key: key_of(i, &e),
            path: path.display().to_string(),
            reason: e.to_string(),
        }]
    };
    let b = ServerTls::builder()
        .with_cert(&cert, &key)
        .map_err(|e| fail(e, &cert_path))?;
    let crl_refs: Vec<&[u8]> = crls.iter().map(|(b, _)| b.as_slice()).collect();
    let mode = if t.client_auth == ClientAuthMode::Optional {
        ClientAuth::Optional
    } else {
        ClientAuth::Required
    };
    let b = match (t.client_auth, ca, t.trust_domain.as_deref()) {
        (ClientAuthMode::None, _, _) => b.without_client_auth(),
        // One bundle bound to one trust domain.
        (_, Some((ca, ca_path)), Some(td)) => b
            .with_client_auth_per_trust_domain(mode, &[(td, &ca)], &crl_refs)
            .map_err(|e| fail(e, &ca_path))?,
        // One bundle trusted for every trust domain (docs/tls.md says why to avoid it).
        (_, Some((ca, ca_path)), None) => b
            .with_client_auth(mode, &ca, &crl_refs)
            .map_err(|e| fail(e, &ca_path))?,
        (_, None, _) if !domains.is_empty() => {
            let bundles: Vec<(&str, &[u8])> = domains
                .iter()
                .map(|(td, b, _)| (*td, b.as_slice()))
                .collect();
            b.with_client_auth_per_trust_domain(mode, &bundles, &crl_refs)
                .map_err(|e| {
                    // Name the bundle at fault when the error says which, else all.
                    let at_fault = |td: &str| match &e {
                        TlsConfigError::TrustDomain { trust_domain, .. } => td == trust_domain,
                        _ => true,
                    };
                    let paths: Vec<String> = domains
                        .iter()
                        .filter(|(td, _, _)| at_fault(td))
                        .map(|(_, _, p)| p.display().to_string())
                        .collect();
                    fail(e, Path::new(&paths.join(", ")))
                })?
        }
        // Config::parse refuses a client-auth mode without `client_ca`/`trust_domains`.
        (_, None, _) => {
            return Err(vec![ConfigError::Missing {
                key: k("client_ca"),
                reason: "a client CA bundle is required unless `client_auth = \"none\"`",
            }])
        }
    };
    let mut b = b;
    for (c, kk) in sni {
        if let (Some((c, cp)), Some((kk, _))) = (c, kk) {
            b = b.add_sni_cert(&c, &kk).map_err(|e| fail(e, &cp))?;
        }
    }
    b.alpn(t.alpn.iter().map(|a| a.as_bytes().to_vec()).collect())
        .min_version(if t.allow_tls12 {
            MinVersion::Tls12
        } else {
            MinVersion::Tls13
        })
        .session_resumption(t.session_resumption)
        .session_resumption_max_age(t.session_resumption_max_age)
        .advertise_client_ca_names(t.advertise_client_ca_names)
        .device_id_uri_prefix(t.device_id_uri_prefix.clone())
        .build()
        .map_err(|e| fail(e, &cert_path))
}

/// Load every TLS listener's material: one entry per listener (`None` for plain ones),
/// or every error found.
pub fn load_all(
    config: &Config,
    base: &Path,
    now: i64,
) -> Result<Vec<Option<ListenerTls>>, Vec<ConfigError>> {
    let mut out = Vec::with_capacity(config.listeners.len());
    let mut errs = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        match l.tls.as_ref().map(|_| load(i, l, base, now)) {
            None => out.push(None),
            Some(Ok(s)) => out.push(Some(s)),
            Some(Err(e)) => errs.extend(e),
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

/// Every file listener `l`'s TLS settings name, resolved against `base`.
fn files(l: &ListenerConfig, t: &TlsSettings, base: &Path) -> Vec<PathBuf> {
    let mut out = vec![resolve(base, &t.cert), resolve(base, &t.key)];
    out.extend(t.client_ca.iter().map(|p| resolve(base, p)));
    out.extend(t.trust_domains.iter().map(|(_, p)| resolve(base, p)));
    out.extend(t.crl.iter().map(|p| resolve(base, p)));
    for (c, k) in &t.sni {
        out.push(resolve(base, c));
        out.push(resolve(base, k));
    }
    if let Some(u) = &l.upstream_tls {
        out.push(resolve(base, &u.ca));
        for p in u.client_cert.iter().flat_map(|(c, k)| [c, k]) {
            out.push(resolve(base, p));
        }
    }
    out
}

/// A file's version as `stat` sees it (following symlinks). Rewriting a file in place,
/// renaming a new one over it, or swapping a symlink (Kubernetes secret volumes) each
/// change at least one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The stamps of a listener's files, in [`files`] order (`None`: missing).
type Stamps = Vec<Option<Stamp>>;

struct Watched {
    listener: usize,
    interval: Option<Duration>,
    next_check: Instant,
    paths: Vec<PathBuf>,
    /// The files as they were when the published material was read.
    current: Stamps,
    /// Seen changed at the last check: reloaded when the next check sees the same, so a
    /// cert and key written one after the other are read together.
    pending: Option<Stamps>,
    /// A version that failed to load: not retried until the files change again.
    refused: Option<Stamps>,
}

impl Watched {
    fn stamps(&self) -> Stamps {
        self.paths.iter().map(|p| stamp(p)).collect()
    }

    /// Rebuild from the files, whose stamps were `seen` just before.
    fn attempt(
        &mut self,
        config: &Config,
        base: &Path,
        seen: Stamps,
        unix_now: i64,
    ) -> Option<ReloadEvent> {
        let l = config.listeners.get(self.listener)?;
        let result = load(self.listener, l, base, unix_now);
        self.pending = None;
        if result.is_ok() {
            self.current = seen;
            self.refused = None;
        } else {
            self.refused = Some(seen);
        }
        Some(ReloadEvent {
            listener: self.listener,
            result,
        })
    }
}

/// What a reload attempt did.
#[derive(Debug)]
pub struct ReloadEvent {
    /// Listener index.
    pub listener: usize,
    /// The new material (published by the caller), or why it was refused (the old
    /// material stays).
    pub result: Result<ListenerTls, Vec<ConfigError>>,
}

/// Watches every TLS listener's files and rebuilds its material when they change.
/// Polls `stat` (no inotify): it also sees symlink swaps and files on any filesystem, and
/// costs a few syscalls per listener per interval on the supervisor thread.
pub struct TlsWatch {
    base: PathBuf,
    watched: Vec<Watched>,
}

impl TlsWatch {
    /// Start watching the TLS listeners of `config` as their files are now (the material
    /// published at start was read from them).
    pub fn new(config: &Config, base: &Path, now: Instant) -> TlsWatch {
        let watched = config
            .listeners
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let t = l.tls.as_ref()?;
                let paths = files(l, t, base);
                Some(Watched {
                    listener: i,
                    interval: t.reload_interval,
                    next_check: now + t.reload_interval.unwrap_or(Duration::ZERO),
                    current: paths.iter().map(|p| stamp(p)).collect(),
                    paths,
                    pending: None,
                    refused: None,
                })
            })
            .collect();
        TlsWatch {
            base: base.to_path_buf(),
            watched,
        }
    }

    /// Look at the listeners whose interval has passed; rebuild those whose files changed
    /// and then held still for one interval. `unix_now` is checked against the new
    /// certificates' validity.
    pub fn poll(&mut self, config: &Config, now: Instant, unix_now: i64) -> Vec<ReloadEvent> {
        let mut events = Vec::new();
        for w in &mut self.watched {
            let Some(interval) = w.interval else { continue };
            if now < w.next_check {
                continue;
            }
            w.next_check = now + interval;
            let seen = w.stamps();
            if seen == w.current {
                w.pending = None;
                continue;
            }
            if w.refused.as_ref() == Some(&seen) {
                continue;
            }
            if w.pending.as_ref() != Some(&seen) {
                w.pending = Some(seen);
                continue;
            }
            events.extend(w.attempt(config, &self.base, seen, unix_now));
        }
        events
    }

    /// SIGHUP (and the operator socket's `reload`): rebuild now, without waiting for an
    /// interval, the material of every TLS listener whose files differ from the ones
    /// it was read from; a refused version is tried (and reported) again. Unchanged
    /// material is kept: rebuilding it would change the listener's session ticket key
    /// and send every client back to a full handshake for nothing (a table reload is
    /// a SIGHUP too).
    pub fn reload_changed(&mut self, config: &Config, unix_now: i64) -> Vec<ReloadEvent> {
        let mut events = Vec::new();
        for w in &mut self.watched {
            let seen = w.stamps();
            if seen != w.current {
                events.extend(w.attempt(config, &self.base, seen, unix_now));
            }
        }
        events
    }
}
