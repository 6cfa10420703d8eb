//! Loading `[listener.tls]` material: read the files a listener names (relative paths
//! against the config file's directory) and build its [`ServerTls`] with `zgate-tls`.
//! Runs at config load (`zgate run`, `zgate check`), on the main thread, never in a
//! worker. Every error names its key and file.

use std::path::{Path, PathBuf};

use zgate_tls::{ClientAuth, MinVersion, ServerTls, TlsConfigError};

use crate::config::{ClientAuthMode, Config, ConfigError, TlsSettings};

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

/// Read and check listener `i`'s TLS files and build its configuration.
pub fn load(i: usize, t: &TlsSettings, base: &Path) -> Result<ServerTls, Vec<ConfigError>> {
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
        .device_id_uri_prefix(t.device_id_uri_prefix.clone())
        .build()
        .map_err(|e| fail(e, &cert_path))
}

/// Load every TLS listener's material: one entry per listener (`None` for plain ones),
/// or every error found.
pub fn load_all(config: &Config, base: &Path) -> Result<Vec<Option<ServerTls>>, Vec<ConfigError>> {
    let mut out = Vec::with_capacity(config.listeners.len());
    let mut errs = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        match l.tls.as_ref().map(|t| load(i, t, base)) {
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
