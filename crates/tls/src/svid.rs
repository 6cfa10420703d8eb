//! The SPIFFE X.509-SVID rules webpki does not check, and identity extraction.
//!
//! webpki (through rustls' `WebPkiClientVerifier`) has already built and checked the
//! path (signatures, validity, trust anchor, basicConstraints of the path, EKU when
//! present, critical extensions, CRLs) when these checks run. What it leaves out, and
//! what [`check_client_chain`] adds (each has a unit test below):
//! - URI SANs: exactly one, and it parses as a SPIFFE ID (`zgate_policy::parse_spiffe_id`,
//!   fail closed). webpki never looks at URI SANs of a client certificate.
//! - Leaf keyUsage: present, digitalSignature set, keyCertSign and cRLSign clear. webpki
//!   ignores keyUsage entirely.
//! - Issuers: every intermediate the client sent is a CA whose keyUsage (when present)
//!   has keyCertSign. webpki does not check keyCertSign (trust anchors are checked the
//!   same way when the CA bundle is loaded).
//! - Leaf CA=true: webpki refuses it too (`CaUsedAsEndEntity`); checked again here so
//!   the rule holds whatever the path builder does.
//!
//! The SPIFFE ID comes only from the URI SAN. A SPIFFE-looking string in the subject
//! CN, a DNS SAN or any other extension is never used as one.

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use zgate_table::facts::{PeerIdentity, UnixSeconds};

use crate::error::SvidError;

/// What the verified client certificate says about the peer, owned (kept for the
/// life of the flow and lent to every decision with [`PeerIdentityOwned::lend`]).
///
/// Only this crate makes one, from a certificate its verifier accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerIdentityOwned {
    /// The SPIFFE ID (the one URI SAN), validated. Shared: audit records of the flow
    /// point at it instead of copying it.
    pub spiffe_id: std::sync::Arc<str>,
    /// DNS SANs, lowercase.
    pub dns_sans: Vec<String>,
    /// Subject common name (never used as a SPIFFE ID).
    pub common_name: Option<String>,
    /// SHA-256 of the DER end-entity certificate.
    pub fingerprint: [u8; 32],
    /// notBefore, Unix seconds.
    pub not_before: UnixSeconds,
    /// notAfter, Unix seconds.
    pub not_after: UnixSeconds,
    /// The earliest notAfter of the chain the client presented (the leaf and its
    /// intermediates; trust anchors carry no validity webpki checks), Unix seconds:
    /// when the chain stops being valid, which can be before the leaf does. A live
    /// flow, or a resumed session, is checked against this.
    pub chain_not_after: UnixSeconds,
    /// Device id: the rest of the URI SAN that starts with the listener's configured
    /// prefix, when one is configured and present.
    pub device_id: Option<String>,
}

/// Borrowed views of an identity's DNS SANs, for [`PeerIdentity::dns_sans`].
#[derive(Debug, Clone, Default)]
pub struct DnsRefs<'a>(Vec<&'a str>);

impl PeerIdentityOwned {
    /// The DNS SANs as a slice of `&str`, for [`PeerIdentityOwned::lend`].
    pub fn dns_refs(&self) -> DnsRefs<'_> {
        DnsRefs(self.dns_sans.iter().map(String::as_str).collect())
    }

    /// Lend this identity to a decision. `dns` comes from [`PeerIdentityOwned::dns_refs`]
    /// (kept by the caller so nothing is allocated per decision once it exists).
    pub fn lend<'a>(&'a self, dns: &'a DnsRefs<'a>) -> PeerIdentity<'a> {
        PeerIdentity {
            spiffe_id: Some(&*self.spiffe_id),
            dns_sans: &dns.0,
            common_name: self.common_name.as_deref(),
            fingerprint: Some(&self.fingerprint),
        }
    }

    /// Seconds since notBefore at `now` (0 if `now` is before it).
    pub fn age_secs(&self, now: UnixSeconds) -> u64 {
        u64::try_from(now.saturating_sub(self.not_before)).unwrap_or(0)
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        Ok(_) => Err(SvidError::Parse(
            "trailing bytes after the certificate".into(),
        )),
        Err(e) => Err(SvidError::Parse(e.to_string())),
    }
}

/// The URI SANs of `cert`, split into (identity URIs, device-id URIs).
fn uri_sans<'a>(
    cert: &'a X509Certificate<'a>,
    device_prefix: Option<&str>,
) -> Result<(Vec<&'a str>, Vec<&'a str>), SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Extension(format!("subjectAltName: {e}")))?;
    let mut ids = Vec::new();
    let mut devices = Vec::new();
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                match device_prefix {
                    Some(p) if !p.is_empty() && u.starts_with(p) => devices.push(*u),
                    _ => ids.push(*u),
                }
            }
        }
    }
    Ok((ids, devices))
}

/// The SVID rule in one place: exactly one identity URI SAN, and it parses as a SPIFFE
/// ID. Returns the ID and the device-id URIs set aside by `device_prefix`.
fn leaf_spiffe_id<'a>(
    leaf: &'a X509Certificate<'a>,
    device_prefix: Option<&str>,
) -> Result<(zgate_policy::model::SpiffeId, Vec<&'a str>), SvidError> {
    let (ids, devices) = uri_sans(leaf, device_prefix)?;
    let [uri] = ids.as_slice() else {
        return Err(SvidError::UriSanCount { found: ids.len() });
    };
    let id = zgate_policy::parse_spiffe_id(uri).map_err(|e| SvidError::BadSpiffeId {
        uri: (*uri).to_string(),
        reason: e.to_string(),
    })?;
    Ok((id, devices))
}

/// Check the SPIFFE X.509-SVID rules on a client's leaf and the intermediates it sent
/// (see the module doc). `device_prefix`: URI SANs starting with it are device ids, not
/// identities (at most one).
pub fn check_client_chain(
    leaf_der: &[u8],
    intermediates: &[&[u8]],
    device_prefix: Option<&str>,
) -> Result<(), SvidError> {
    let leaf = parse(leaf_der)?;
    let bc = leaf
        .basic_constraints()
        .map_err(|e| SvidError::Extension(format!("basicConstraints: {e}")))?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(SvidError::CaAsLeaf);
    }
    let ku = leaf
        .key_usage()
        .map_err(|e| SvidError::Extension(format!("keyUsage: {e}")))?;
    let Some(ku) = ku else {
        return Err(SvidError::NoKeyUsage);
    };
    if !ku.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::SigningUsageOnLeaf);
    }
    let (_, devices) = leaf_spiffe_id(&leaf, device_prefix)?;
    identity_fields(&leaf, &devices, device_prefix)?;
    for (index, der) in intermediates.iter().enumerate() {
        check_issuer(der).map_err(|reason| SvidError::IssuerCannotSign { index, reason })?;
    }
    Ok(())
}

/// The trust domain of the leaf's one identity URI SAN, read *before* path validation
/// so that the chain is validated only against that trust domain's CAs. Nothing is
/// trusted yet: the answer only picks which CAs may vouch for the certificate, and the
/// full rules ([`check_client_chain`]) still run after path validation.
pub fn leaf_trust_domain(
    leaf_der: &[u8],
    device_prefix: Option<&str>,
) -> Result<String, SvidError> {
    let leaf = parse(leaf_der)?;
    let (id, _) = leaf_spiffe_id(&leaf, device_prefix)?;
    Ok(id.trust_domain)
}

/// Whether a certificate may sign certificates: CA=true and, when keyUsage is present,
/// keyCertSign. `Err` says what is missing.
pub fn check_issuer(der: &[u8]) -> Result<(), &'static str> {
    let c = parse(der).map_err(|_| "does not parse")?;
    match c.basic_constraints() {
        Ok(Some(b)) if b.value.ca => {}
        Ok(_) => return Err("basicConstraints CA=false or absent"),
        Err(_) => return Err("malformed basicConstraints"),
    }
    match c.key_usage() {
        Ok(Some(k)) if !k.value.key_cert_sign() => Err("keyUsage lacks keyCertSign"),
        Ok(_) => Ok(()),
        Err(_) => Err("malformed keyUsage"),
    }
}

/// The identity fields besides the SPIFFE ID, checked: (DNS SANs lowercased, the one
/// subject CN, the device id). [`check_client_chain`] and [`identity_of`] both use it, so
/// what is accepted and what is read cannot drift apart (review L1, L2, M4).
type IdentityFields = (Vec<String>, Option<String>, Option<String>);

fn identity_fields(
    leaf: &X509Certificate<'_>,
    devices: &[&str],
    device_prefix: Option<&str>,
) -> Result<IdentityFields, SvidError> {
    let bad = |what, reason: String| SvidError::BadIdentityField { what, reason };
    let device_id = match (device_prefix, devices) {
        (_, []) | (None, _) => None,
        (Some(p), [d]) => {
            let id = d.strip_prefix(p).unwrap_or_default();
            let ok = (1..=MAX_DEVICE_ID_LEN).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(bad(
                    "device id",
                    format!(
                        "`{}` is not 1 to {MAX_DEVICE_ID_LEN} of `A-Z a-z 0-9 . _ -`",
                        id.escape_debug()
                    ),
                ));
            }
            Some(id.to_string())
        }
        (Some(_), _) => return Err(SvidError::DeviceIdCount),
    };
    let mut dns_sans = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                let n = zgate_policy::parse_dns_name(d)
                    .map_err(|e| bad("DNS SAN", format!("`{}`: {e}", d.escape_debug())))?;
                dns_sans.push(n);
            }
        }
    }
    let mut cns = leaf.subject().iter_common_name();
    let common_name = match (cns.next(), cns.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            // Stacks disagree on which of several CNs counts: refuse rather than pick.
            return Err(bad("subject CN", "more than one CN attribute".into()));
        }
        (Some(cn), None) => Some(
            cn.as_str()
                .map_err(|e| bad("subject CN", format!("not a string: {e}")))?
                .to_string(),
        ),
    };
    Ok((dns_sans, common_name, device_id))
}

/// Longest device id accepted.
pub const MAX_DEVICE_ID_LEN: usize = 128;

/// The identity of a certificate that [`check_client_chain`] (and webpki) accepted;
/// `intermediates` are the other certificates of the chain the client presented.
pub(crate) fn identity_of<'c>(
    leaf_der: &[u8],
    intermediates: impl IntoIterator<Item = &'c [u8]>,
    device_prefix: Option<&str>,
) -> Result<PeerIdentityOwned, SvidError> {
    let leaf = parse(leaf_der)?;
    let (id, devices) = leaf_spiffe_id(&leaf, device_prefix)?;
    let (dns_sans, common_name, device_id) = identity_fields(&leaf, &devices, device_prefix)?;
    let not_after = leaf.validity().not_after.timestamp();
    let mut chain_not_after = not_after;
    for der in intermediates {
        chain_not_after = chain_not_after.min(parse(der)?.validity().not_after.timestamp());
    }
    Ok(PeerIdentityOwned {
        spiffe_id: std::sync::Arc::from(id.to_string()),
        dns_sans,
        common_name,
        fingerprint: Sha256::digest(leaf_der).into(),
        not_before: leaf.validity().not_before.timestamp(),
        not_after,
        chain_not_after,
        device_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zgate_devpki::{Bad, Ca, ClientSpec};

    const NOW: i64 = 1_750_000_000;
    const ID: &str = "spiffe://corp.example/ns/trading/sa/pricer";

    fn ca() -> Ca {
        Ca::new("test CA", NOW).unwrap()
    }

    fn der(pem: &str) -> Vec<u8> {
        zgate_devpki::pem_to_der(pem).into_iter().next().unwrap()
    }

    fn check(spec: &ClientSpec, prefix: Option<&str>) -> Result<(), SvidError> {
        let ca = ca();
        let leaf = ca.client(spec, NOW).unwrap();
        check_client_chain(&der(&leaf.cert_pem), &[], prefix)
    }

    #[test]
    fn a_good_svid_passes_and_yields_its_identity() {
        let ca = ca();
        let mut spec = ClientSpec::spiffe(ID);
        spec.dns = vec!["Pricer.Corp.Example".into()];
        spec.common_name = Some("pricer".into());
        spec.extra_uris = vec!["urn:device:laptop-42".into()];
        let leaf = ca.client(&spec, NOW).unwrap();
        let d = der(&leaf.cert_pem);
        check_client_chain(&d, &[], Some("urn:device:")).unwrap();
        let id = identity_of(&d, [], Some("urn:device:")).unwrap();
        assert_eq!(&*id.spiffe_id, ID);
        assert_eq!(id.dns_sans, vec!["pricer.corp.example".to_string()]);
        assert_eq!(id.common_name.as_deref(), Some("pricer"));
        assert_eq!(id.device_id.as_deref(), Some("laptop-42"));
        assert_eq!(id.fingerprint, <[u8; 32]>::from(Sha256::digest(&d)));
        assert!(id.not_before <= NOW && NOW < id.not_after);
        assert_eq!(id.age_secs(id.not_before + 5), 5);
        let refs = id.dns_refs();
        let lent = id.lend(&refs);
        assert_eq!(lent.spiffe_id, Some(ID));
        assert_eq!(lent.dns_sans, &["pricer.corp.example"]);
    }

    /// Review L1/M4: the fields besides the SPIFFE ID are checked, not just read.
    #[test]
    fn malformed_or_ambiguous_identity_fields_are_refused() {
        let field = |e: Result<(), SvidError>| match e {
            Err(SvidError::BadIdentityField { what, .. }) => what,
            other => panic!("expected BadIdentityField, got {other:?}"),
        };
        let prefix = Some("urn:device:");
        for bad_device in [
            "urn:device:",
            "urn:device:has space",
            "urn:device:a/b",
            &format!("urn:device:{}", "x".repeat(MAX_DEVICE_ID_LEN + 1)),
        ] {
            let mut spec = ClientSpec::spiffe(ID);
            spec.extra_uris = vec![bad_device.to_string()];
            assert_eq!(field(check(&spec, prefix)), "device id", "{bad_device}");
        }
        let mut spec = ClientSpec::spiffe(ID);
        spec.extra_uris = vec![format!("urn:device:{}", "x".repeat(MAX_DEVICE_ID_LEN))];
        check(&spec, prefix).unwrap();
        let mut spec = ClientSpec::spiffe(ID);
        spec.extra_uris = vec!["urn:device:a".into(), "urn:device:b".into()];
        assert_eq!(check(&spec, prefix), Err(SvidError::DeviceIdCount));

        let mut spec = ClientSpec::spiffe(ID);
        spec.common_name = Some("alice".into());
        spec.second_common_name = Some("admin".into());
        assert_eq!(field(check(&spec, None)), "subject CN");

        for bad_dns in ["*.corp.example", "a..b", "-a.example"] {
            let mut spec = ClientSpec::spiffe(ID);
            spec.dns = vec![bad_dns.into()];
            assert_eq!(field(check(&spec, None)), "DNS SAN", "{bad_dns}");
        }
    }

    #[test]
    fn device_uri_without_a_configured_prefix_is_a_second_uri_san() {
        let mut spec = ClientSpec::spiffe(ID);
        spec.extra_uris = vec!["urn:device:laptop-42".into()];
        assert_eq!(check(&spec, None), Err(SvidError::UriSanCount { found: 2 }));
    }

    #[test]
    fn two_device_ids_are_refused() {
        let mut spec = ClientSpec::spiffe(ID);
        spec.extra_uris = vec!["urn:device:a".into(), "urn:device:b".into()];
        assert_eq!(
            check(&spec, Some("urn:device:")),
            Err(SvidError::DeviceIdCount)
        );
    }

    #[test]
    fn each_bad_class_breaks_its_rule() {
        type Check = fn(&SvidError) -> bool;
        let cases: Vec<(Bad, Check)> = vec![
            (Bad::TwoUriSans, |e| {
                *e == SvidError::UriSanCount { found: 2 }
            }),
            (Bad::NoUriSan, |e| *e == SvidError::UriSanCount { found: 0 }),
            (Bad::SpiffeIdInCnOnly, |e| {
                *e == SvidError::UriSanCount { found: 0 }
            }),
            (Bad::SpiffeIdInDnsSanOnly, |e| {
                *e == SvidError::UriSanCount { found: 0 }
            }),
            (Bad::InvalidSpiffeId, |e| {
                matches!(e, SvidError::BadSpiffeId { .. })
            }),
            (Bad::NotSpiffeScheme, |e| {
                matches!(e, SvidError::BadSpiffeId { .. })
            }),
            (Bad::CaLeaf, |e| *e == SvidError::CaAsLeaf),
            (Bad::KeyCertSignOnLeaf, |e| {
                *e == SvidError::SigningUsageOnLeaf
            }),
            (Bad::CrlSignOnLeaf, |e| *e == SvidError::SigningUsageOnLeaf),
            (Bad::NoDigitalSignature, |e| {
                *e == SvidError::NoDigitalSignature
            }),
            (Bad::NoKeyUsage, |e| *e == SvidError::NoKeyUsage),
        ];
        for (bad, ok) in cases {
            let r = check(&bad.spec(ID), Some("urn:device:"));
            match r {
                Err(e) if ok(&e) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_spiffe_id_never_comes_from_the_cn_or_a_dns_san() {
        for bad in [Bad::SpiffeIdInCnOnly, Bad::SpiffeIdInDnsSanOnly] {
            let ca = ca();
            let leaf = ca.client(&bad.spec(ID), NOW).unwrap();
            assert!(
                identity_of(&der(&leaf.cert_pem), [], None).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn intermediates_must_be_allowed_to_sign() {
        let root = ca();
        let good = root.intermediate("good int", NOW, true).unwrap();
        let bad = root.intermediate("no keyCertSign", NOW, false).unwrap();
        let leaf = good.client(&ClientSpec::spiffe(ID), NOW).unwrap();
        let chain = zgate_devpki::pem_to_der(&leaf.chain_pem);
        let ints: Vec<&[u8]> = chain.iter().skip(1).map(Vec::as_slice).collect();
        assert_eq!(ints.len(), 1);
        check_client_chain(&chain[0], &ints, None).unwrap();
        let leaf = bad.client(&ClientSpec::spiffe(ID), NOW).unwrap();
        let chain = zgate_devpki::pem_to_der(&leaf.chain_pem);
        let ints: Vec<&[u8]> = chain.iter().skip(1).map(Vec::as_slice).collect();
        assert_eq!(
            check_client_chain(&chain[0], &ints, None),
            Err(SvidError::IssuerCannotSign {
                index: 0,
                reason: "keyUsage lacks keyCertSign"
            })
        );
        // A leaf presented as an intermediate is not a CA.
        let other = root.client(&ClientSpec::spiffe(ID), NOW).unwrap();
        let other = der(&other.cert_pem);
        assert!(matches!(
            check_client_chain(&chain[0], &[&other], None),
            Err(SvidError::IssuerCannotSign { .. })
        ));
    }

    #[test]
    fn garbage_der_is_a_parse_error() {
        assert!(matches!(
            check_client_chain(b"\x30\x03\x01\x01", &[], None),
            Err(SvidError::Parse(_))
        ));
        let mut d = der(&ca().client(&ClientSpec::spiffe(ID), NOW).unwrap().cert_pem);
        d.push(0);
        assert!(matches!(
            check_client_chain(&d, &[], None),
            Err(SvidError::Parse(_))
        ));
    }
}
