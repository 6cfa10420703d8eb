//! The listener TLS configuration: a typestate builder (certificates first, then the
//! client-auth decision, then options) that produces a [`ServerTls`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::error::{svid_to_rustls, SvidError, TlsConfigError};
use crate::svid;
use crate::tickets::AgedTickets;

/// How long a full handshake's verification may be reused by session resumption, by
/// default: an hour. Short enough that a client's chain is re-verified hourly; long
/// enough that a client reconnecting every few seconds resumes nearly every time.
pub const DEFAULT_RESUMPTION_MAX_AGE: Duration = Duration::from_secs(3600);

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// A verified SVID is required; no certificate, no flow.
    Required,
    /// A certificate is verified when presented; anonymous clients are let through to
    /// the decision (with no identity).
    Optional,
}

/// Oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// TLS 1.3 only (default).
    #[default]
    Tls13,
    /// TLS 1.2 and 1.3.
    Tls12,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate { what });
    }
    Ok(certs)
}

pub(crate) fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsConfigError> {
    let chain = certs("cert", cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsConfigError::Key {
        reason: format!("no usable private key in the PEM input: {e}"),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsConfigError::Key {
        reason: e.to_string(),
    })
}

/// DNS names a server certificate answers for (its DNS SANs, lowercase).
fn dns_names(der: &[u8]) -> Result<Vec<String>, TlsConfigError> {
    let bad = |reason: String| TlsConfigError::Certificate {
        what: "cert",
        reason,
    };
    let (_, c) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    if let Some(san) = c
        .subject_alternative_name()
        .map_err(|e| bad(e.to_string()))?
    {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                out.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(out)
}

/// Picks the server certificate by SNI (exact DNS SAN match, lowercase); the first
/// certificate when there is no SNI or no match.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

thread_local! {
    /// The SNI of the last ClientHello the resolver saw on this thread (outer `None`:
    /// none seen since the last take). rustls' unbuffered server connection does not
    /// expose the SNI, but it calls the resolver synchronously, on the calling thread,
    /// inside `process_tls_records` for every ClientHello (resumed ones too), so the
    /// session takes it right after each call (see `session.rs`).
    static SNI_SEEN: std::cell::RefCell<Option<Option<String>>> = const { std::cell::RefCell::new(None) };
}

/// The SNI recorded since the last call, if a ClientHello was resolved.
pub(crate) fn take_sni_seen() -> Option<Option<String>> {
    SNI_SEEN.with(|s| s.borrow_mut().take())
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        SNI_SEEN.with(|s| *s.borrow_mut() = Some(sni));
        let by_sni = hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()));
        Some(Arc::clone(by_sni.unwrap_or(&self.default)))
    }
}

/// Which CAs may vouch for a client certificate.
enum Anchors {
    /// One bundle, trusted for every trust domain (`client_ca` with no trust domain).
    AnyDomain(Arc<dyn ClientCertVerifier>),
    /// One bundle per trust domain: a chain is validated only against the bundle of its
    /// leaf's SPIFFE trust domain, so one domain's CA cannot issue another's IDs.
    ByDomain(HashMap<String, Arc<dyn ClientCertVerifier>>),
}

/// rustls' webpki client verifier(s) plus the SPIFFE X.509-SVID checks they leave out.
struct SpiffeVerifier {
    anchors: Arc<Anchors>,
    /// Any one of the webpki verifiers: the answers that do not depend on the trust
    /// anchors (client-auth mode, signature checks) come from it.
    any: Arc<dyn ClientCertVerifier>,
    /// Every bundle's CA subjects (CertificateRequest hints).
    hints: Arc<[DistinguishedName]>,
    device_prefix: Option<String>,
}

impl fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domains: Vec<&str> = match self.anchors.as_ref() {
            Anchors::AnyDomain(_) => Vec::new(),
            Anchors::ByDomain(m) => m.keys().map(String::as_str).collect(),
        };
        f.debug_struct("SpiffeVerifier")
            .field("trust_domains", &domains)
            .field("device_prefix", &self.device_prefix)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn offer_client_auth(&self) -> bool {
        self.any.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.any.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // With per-trust-domain bundles the leaf's SPIFFE ID is read first, only to pick
        // the one bundle allowed to vouch for it (review H1); a leaf without exactly one
        // valid SPIFFE ID is refused for that before path validation.
        let inner = match self.anchors.as_ref() {
            Anchors::AnyDomain(v) => v,
            Anchors::ByDomain(by_domain) => {
                let td =
                    svid::leaf_trust_domain(end_entity.as_ref(), self.device_prefix.as_deref())
                        .map_err(svid_to_rustls)?;
                match by_domain.get(&td) {
                    Some(v) => v,
                    None => {
                        return Err(svid_to_rustls(SvidError::UnknownTrustDomain {
                            trust_domain: td,
                        }))
                    }
                }
            }
        };
        // Path validation next: an expired or untrusted certificate is reported as
        // such, whatever else is wrong with it.
        inner.verify_client_cert(end_entity, intermediates, now)?;
        let ints: Vec<&[u8]> = intermediates.iter().map(|c| c.as_ref()).collect();
        svid::check_client_chain(end_entity.as_ref(), &ints, self.device_prefix.as_deref())
            .map_err(svid_to_rustls)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.any.supported_verify_schemes()
    }
}

/// A listener's TLS configuration, ready to accept handshakes. Cheap to clone (an
/// `Arc`); shared read-only by every worker.
#[derive(Clone)]
pub struct ServerTls {
    pub(crate) config: Arc<rustls::ServerConfig>,
    pub(crate) device_prefix: Option<Arc<str>>,
    pub(crate) client_auth: Option<ClientAuth>,
    /// Earliest notBefore / notAfter over the served certificates (Unix seconds).
    pub(crate) validity: (i64, i64),
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_auth", &self.client_auth)
            .field("device_prefix", &self.device_prefix)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Start building: [`ServerTlsBuilder::new`].
    pub fn builder() -> ServerTlsBuilder<NeedCert> {
        ServerTlsBuilder::new()
    }

    /// The client-auth mode (`None`: no client certificates asked for).
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.client_auth
    }

    /// The served certificates' validity window, narrowed over all of them: the latest
    /// notBefore and the earliest notAfter (Unix seconds). Reload refuses material whose
    /// window does not hold now; `/metrics` exports the notAfter.
    pub fn validity(&self) -> (i64, i64) {
        self.validity
    }
}

/// The validity window of `ck`'s leaf (Unix seconds).
pub(crate) fn leaf_validity(ck: &CertifiedKey) -> Result<(i64, i64), TlsConfigError> {
    let bad = |reason: String| TlsConfigError::Certificate {
        what: "cert",
        reason,
    };
    let leaf = ck
        .cert
        .first()
        .ok_or(TlsConfigError::NoCertificate { what: "cert" })?;
    let (_, c) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| bad(e.to_string()))?;
    Ok((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

/// Builder state: no certificate yet.
#[derive(Debug)]
pub struct NeedCert;
/// Builder state: certificate set, client auth not yet decided.
#[derive(Debug)]
pub struct NeedClientAuth {
    default: Arc<CertifiedKey>,
}
/// Builder state: ready to [`ServerTlsBuilder::build`].
pub struct Ready {
    default: Arc<CertifiedKey>,
    verifier: Option<Arc<SpiffeVerifierSlot>>,
    client_auth: Option<ClientAuth>,
    sni: HashMap<String, Arc<CertifiedKey>>,
    alpn: Vec<Vec<u8>>,
    min_version: MinVersion,
    resumption: bool,
    resumption_max_age: Duration,
    advertise_ca_names: bool,
    device_prefix: Option<String>,
}

/// The verifier's inputs, kept until `build` (the device prefix may be set later).
pub struct SpiffeVerifierSlot {
    anchors: Arc<Anchors>,
    any: Arc<dyn ClientCertVerifier>,
    hints: Arc<[DistinguishedName]>,
    /// Earliest nextUpdate among the CRLs (Unix seconds): no session resumes from then.
    crl_next_update: Option<i64>,
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ready")
            .field("client_auth", &self.client_auth)
            .field("alpn", &self.alpn)
            .field("min_version", &self.min_version)
            .finish_non_exhaustive()
    }
}

/// A typestate builder for [`ServerTls`]: `new()` → `with_cert` → `with_client_auth`
/// (or `without_client_auth`) → options → `build()`. A half-built configuration does
/// not type-check.
#[derive(Debug)]
pub struct ServerTlsBuilder<S> {
    state: S,
}

impl ServerTlsBuilder<NeedCert> {
    /// A new builder.
    pub fn new() -> Self {
        ServerTlsBuilder { state: NeedCert }
    }

    /// The default server certificate chain and its private key (PEM). Used when the
    /// client sends no SNI or one no other certificate matches.
    ///
    /// Errors: no certificate, no or unsupported key, key not matching the certificate.
    pub fn with_cert(
        self,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<ServerTlsBuilder<NeedClientAuth>, TlsConfigError> {
        Ok(ServerTlsBuilder {
            state: NeedClientAuth {
                default: Arc::new(certified_key(cert_pem, key_pem)?),
            },
        })
    }
}

impl Default for ServerTlsBuilder<NeedCert> {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerTlsBuilder<NeedClientAuth> {
    /// Verify client certificates against `ca_pem` (one or more CA certificates), with
    /// optional CRLs (PEM). Every CA must be allowed to sign certificates (CA=true,
    /// keyCertSign when keyUsage is present): webpki does not check trust anchors for it.
    ///
    /// With CRLs, the whole chain's revocation status must be known and the CRLs must
    /// not have expired (fail closed).
    pub fn with_client_auth(
        self,
        mode: ClientAuth,
        ca_pem: &[u8],
        crl_pems: &[&[u8]],
    ) -> Result<ServerTlsBuilder<Ready>, TlsConfigError> {
        let crls = parse_crls(crl_pems)?;
        let crl_next_update = earliest_next_update(&crls)?;
        let v = webpki_verifier(mode, roots("client_ca", ca_pem)?, crls)?;
        let hints = Arc::from(v.root_hint_subjects());
        let slot = SpiffeVerifierSlot {
            anchors: Arc::new(Anchors::AnyDomain(Arc::clone(&v))),
            any: v,
            hints,
            crl_next_update,
        };
        Ok(self.ready(slot, mode))
    }

    /// Verify client certificates against one CA bundle per SPIFFE trust domain
    /// (`(trust domain, PEM bundle)`; a bundle may hold several CAs, for rotation). A
    /// chain is validated only against the bundle of its leaf's trust domain, so a CA
    /// can vouch only for IDs of its own trust domain; a leaf of any other trust
    /// domain is refused (`unknown-trust-domain`). CRLs and CA checks as in
    /// [`ServerTlsBuilder::with_client_auth`]; the CRLs apply to every bundle.
    ///
    /// Errors: no bundle, a name that is not a valid trust domain (lowercase, as in a
    /// SPIFFE ID) or given twice, and every error of `with_client_auth`.
    pub fn with_client_auth_per_trust_domain(
        self,
        mode: ClientAuth,
        bundles: &[(&str, &[u8])],
        crl_pems: &[&[u8]],
    ) -> Result<ServerTlsBuilder<Ready>, TlsConfigError> {
        let crls = parse_crls(crl_pems)?;
        let crl_next_update = earliest_next_update(&crls)?;
        let mut by_domain: HashMap<String, Arc<dyn ClientCertVerifier>> = HashMap::new();
        let mut hints = Vec::new();
        let mut any = None;
        for (td, pem) in bundles {
            check_trust_domain(td)?;
            let v = webpki_verifier(mode, roots("client_ca", pem)?, crls.clone())?;
            hints.extend_from_slice(v.root_hint_subjects());
            any.get_or_insert_with(|| Arc::clone(&v));
            if by_domain.insert((*td).to_string(), v).is_some() {
                return Err(TlsConfigError::TrustDomain {
                    trust_domain: (*td).to_string(),
                    reason: "given twice",
                });
            }
        }
        let Some(any) = any else {
            return Err(TlsConfigError::TrustDomain {
                trust_domain: String::new(),
                reason: "no trust domain bundle given",
            });
        };
        let slot = SpiffeVerifierSlot {
            anchors: Arc::new(Anchors::ByDomain(by_domain)),
            any,
            hints: Arc::from(hints),
            crl_next_update,
        };
        Ok(self.ready(slot, mode))
    }

    fn ready(self, slot: SpiffeVerifierSlot, mode: ClientAuth) -> ServerTlsBuilder<Ready> {
        ServerTlsBuilder {
            state: Ready::new(self.state.default, Some(Arc::new(slot)), Some(mode)),
        }
    }

    /// Ask for no client certificate: flows carry no identity (policy sees only the
    /// source address, SNI and ALPN). The dataplane logs this at startup.
    pub fn without_client_auth(self) -> ServerTlsBuilder<Ready> {
        ServerTlsBuilder {
            state: Ready::new(self.state.default, None, None),
        }
    }
}

/// A trust domain name as it appears in a SPIFFE ID (`spiffe://NAME`), nothing more.
fn check_trust_domain(td: &str) -> Result<(), TlsConfigError> {
    let bad = |reason| TlsConfigError::TrustDomain {
        trust_domain: td.to_string(),
        reason,
    };
    match zgate_policy::parse_spiffe_id(&format!("spiffe://{td}")) {
        Ok(id) if id.trust_domain == td && id.segments.is_empty() => Ok(()),
        _ => Err(bad(
            "not a valid SPIFFE trust domain (lowercase letters, digits, `.-_`)",
        )),
    }
}

/// A CA bundle as trust anchors. Every CA must be allowed to sign certificates (CA=true,
/// keyCertSign when keyUsage is present): webpki does not check trust anchors for it.
pub(crate) fn roots(what: &'static str, ca_pem: &[u8]) -> Result<RootCertStore, TlsConfigError> {
    let cas = certs(what, ca_pem)?;
    let mut roots = RootCertStore::empty();
    for (i, ca) in cas.iter().enumerate() {
        svid::check_issuer(ca.as_ref()).map_err(|reason| TlsConfigError::Certificate {
            what,
            reason: format!("certificate {i} may not sign certificates: {reason}"),
        })?;
        roots
            .add(ca.clone())
            .map_err(|e| TlsConfigError::Certificate {
                what,
                reason: format!("certificate {i}: {e}"),
            })?;
    }
    Ok(roots)
}

fn parse_crls(
    crl_pems: &[&[u8]],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsConfigError> {
    let mut crls = Vec::new();
    for pem in crl_pems {
        let found = CertificateRevocationListDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsConfigError::Pem {
                what: "crl",
                reason: e.to_string(),
            })?;
        if found.is_empty() {
            return Err(TlsConfigError::Pem {
                what: "crl",
                reason: "no CRL found in the PEM input".into(),
            });
        }
        crls.extend(found);
    }
    Ok(crls)
}

/// The earliest nextUpdate among `crls` (Unix seconds; `None` when none has one).
fn earliest_next_update(
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<Option<i64>, TlsConfigError> {
    let mut earliest: Option<i64> = None;
    for crl in crls {
        let (_, parsed) =
            CertificateRevocationList::from_der(crl.as_ref()).map_err(|e| TlsConfigError::Pem {
                what: "crl",
                reason: format!("not a readable CRL: {e}"),
            })?;
        if let Some(next) = parsed.next_update() {
            let t = next.timestamp();
            earliest = Some(earliest.map_or(t, |e| e.min(t)));
        }
    }
    Ok(earliest)
}

/// rustls' webpki verifier over `roots`; with CRLs, revocation status must be known and
/// the CRLs unexpired (fail closed).
fn webpki_verifier(
    mode: ClientAuth,
    roots: RootCertStore,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsConfigError> {
    let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    if !crls.is_empty() {
        b = b.with_crls(crls).enforce_revocation_expiration();
    }
    if mode == ClientAuth::Optional {
        b = b.allow_unauthenticated();
    }
    b.build().map_err(|e| TlsConfigError::Verifier {
        reason: e.to_string(),
    })
}

impl Ready {
    fn new(
        default: Arc<CertifiedKey>,
        verifier: Option<Arc<SpiffeVerifierSlot>>,
        client_auth: Option<ClientAuth>,
    ) -> Ready {
        Ready {
            default,
            verifier,
            client_auth,
            sni: HashMap::new(),
            alpn: Vec::new(),
            min_version: MinVersion::Tls13,
            resumption: true,
            resumption_max_age: DEFAULT_RESUMPTION_MAX_AGE,
            advertise_ca_names: true,
            device_prefix: None,
        }
    }
}

impl ServerTlsBuilder<Ready> {
    /// Another certificate, served to clients whose SNI matches one of its DNS SANs.
    pub fn add_sni_cert(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsConfigError> {
        let ck = Arc::new(certified_key(cert_pem, key_pem)?);
        let Some(leaf) = ck.cert.first() else {
            return Err(TlsConfigError::NoCertificate { what: "cert" });
        };
        let names = dns_names(leaf.as_ref())?;
        if names.is_empty() {
            return Err(TlsConfigError::Certificate {
                what: "cert",
                reason: "an SNI certificate needs at least one DNS SAN".into(),
            });
        }
        for n in names {
            self.state.sni.insert(n, Arc::clone(&ck));
        }
        Ok(self)
    }

    /// ALPN protocols offered, in preference order (empty: no ALPN).
    pub fn alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.state.alpn = protocols;
        self
    }

    /// Oldest TLS version accepted (default TLS 1.3).
    pub fn min_version(mut self, v: MinVersion) -> Self {
        self.state.min_version = v;
        self
    }

    /// Session resumption (stateless TLS 1.3 tickets, no shared session cache) on or
    /// off (default on). Resumed sessions keep the original client certificate; the
    /// dataplane re-checks its validity window at decision time. A ticket is accepted
    /// only within [`Self::session_resumption_max_age`] of the full handshake that
    /// verified the chain, and not once a CRL is past its nextUpdate (see
    /// `tickets.rs`).
    pub fn session_resumption(mut self, on: bool) -> Self {
        self.state.resumption = on;
        self
    }

    /// How long after a full handshake its chain may be reused by resumption (default
    /// [`DEFAULT_RESUMPTION_MAX_AGE`]); resumed handshakes do not extend it. Zero is
    /// taken as one millisecond.
    pub fn session_resumption_max_age(mut self, max_age: Duration) -> Self {
        self.state.resumption_max_age = max_age.max(Duration::from_millis(1));
        self
    }

    /// Whether the CertificateRequest names the client CAs (default yes, as TLS
    /// servers usually do). Those names go to every client that starts a handshake,
    /// anonymous ones included: a listener trusting partners' CAs tells anyone who its
    /// partners are. Off, the list is empty, which TLS 1.3 and 1.2 clients read as "any
    /// CA": a client holding one SVID presents it all the same; one holding several
    /// certificates may pick without the hint.
    pub fn advertise_client_ca_names(mut self, on: bool) -> Self {
        self.state.advertise_ca_names = on;
        self
    }

    /// URI SANs starting with `prefix` carry the device id (e.g. `urn:device:`).
    pub fn device_id_uri_prefix(mut self, prefix: Option<String>) -> Self {
        self.state.device_prefix = prefix.filter(|p| !p.is_empty());
        self
    }

    /// The finished configuration.
    pub fn build(self) -> Result<ServerTls, TlsConfigError> {
        let s = self.state;
        let versions: &[&rustls::SupportedProtocolVersion] = match s.min_version {
            MinVersion::Tls13 => &[&rustls::version::TLS13],
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| TlsConfigError::Settings {
                reason: e.to_string(),
            })?;
        let builder = match &s.verifier {
            Some(v) => builder.with_client_cert_verifier(Arc::new(SpiffeVerifier {
                anchors: Arc::clone(&v.anchors),
                any: Arc::clone(&v.any),
                hints: if s.advertise_ca_names {
                    Arc::clone(&v.hints)
                } else {
                    Arc::from([])
                },
                device_prefix: s.device_prefix.clone(),
            })),
            None => builder.with_no_client_auth(),
        };
        let mut validity = leaf_validity(&s.default)?;
        for ck in s.sni.values() {
            let (nb, na) = leaf_validity(ck)?;
            validity = (validity.0.max(nb), validity.1.min(na));
        }
        let mut config = builder.with_cert_resolver(Arc::new(SniResolver {
            default: s.default,
            by_name: s.sni,
        }));
        config.alpn_protocols = s.alpn;
        // TLS 1.2 without Extended Master Secret (RFC 7627) is the triple-handshake
        // setting; every current client sends EMS, so refuse the ones that do not. No
        // effect on TLS 1.3.
        config.require_ems = true;
        // The record layer after the handshake is ours (`record.rs`): rustls hands over
        // the traffic secrets.
        config.enable_secret_extraction = true;
        if s.resumption {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            let rotating =
                rustls::crypto::ring::Ticketer::new().map_err(|e| TlsConfigError::Settings {
                    reason: e.to_string(),
                })?;
            // A new key with every build: a reloaded CA bundle, CRL or certificate
            // ends the tickets issued under the old material.
            config.ticketer = Arc::new(AgedTickets::new(
                rotating,
                s.resumption_max_age,
                s.verifier.as_ref().and_then(|v| v.crl_next_update),
            ));
        } else {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        Ok(ServerTls {
            config: Arc::new(config),
            device_prefix: s.device_prefix.map(Arc::from),
            client_auth: s.client_auth,
            validity,
        })
    }
}
