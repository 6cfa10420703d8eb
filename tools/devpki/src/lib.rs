//! A throwaway development PKI for zgate's tests, the demo and benchmarks (rcgen).
//!
//! What it does: makes a CA (ECDSA P-256), intermediates, server certificates (DNS and
//! IP SANs) and SPIFFE client certificates (X.509-SVIDs), CRLs, and on purpose each
//! kind of bad client certificate the gateway must refuse ([`Bad`]): expired, not yet
//! valid, two URI SANs, none, a CA as leaf, wrong key usage, a SPIFFE ID only in the CN
//! or a DNS SAN, an invalid SPIFFE ID.
//!
//! What it does not do: protect keys (they are returned as PEM strings), or anything
//! a production CA does. Never use it outside tests and demos.
//!
//! Time is an input: every function takes `now` (Unix seconds); nothing reads a clock.
#![forbid(unsafe_code)]

pub mod client;
use std::net::IpAddr;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// rcgen refused the parameters.
    #[error("rcgen: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A time outside what X.509 can encode.
    #[error("time {0} out of range")]
    Time(i64),
    /// A name that is not IA5 (ASCII).
    #[error("`{0}` is not an ASCII (IA5) string")]
    NotAscii(String),
    /// The client configuration could not be built from this PKI's PEM.
    #[error("client configuration: {0}")]
    Client(String),
}

/// Key usages a test may put on a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// digitalSignature
    DigitalSignature,
    /// keyEncipherment
    KeyEncipherment,
    /// keyCertSign (forbidden on a SPIFFE leaf)
    KeyCertSign,
    /// cRLSign (forbidden on a SPIFFE leaf)
    CrlSign,
}

impl Usage {
    fn rcgen(self) -> KeyUsagePurpose {
        match self {
            Usage::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            Usage::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            Usage::KeyCertSign => KeyUsagePurpose::KeyCertSign,
            Usage::CrlSign => KeyUsagePurpose::CrlSign,
        }
    }
}

/// What goes into a client certificate. [`ClientSpec::spiffe`] is a valid X.509-SVID;
/// change fields to make a bad one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    /// The SPIFFE ID, as a URI SAN (`None`: no SPIFFE URI SAN).
    pub spiffe_id: Option<String>,
    /// More URI SANs (a device id, or a second identity).
    pub extra_uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// Subject CN.
    pub common_name: Option<String>,
    /// A second subject CN attribute (rcgen keeps one value per attribute type, so it
    /// is written under CN's OID as a custom type): an ambiguous subject.
    pub second_common_name: Option<String>,
    /// notBefore = now + this (seconds, may be negative).
    pub not_before: i64,
    /// notAfter = now + this.
    pub not_after: i64,
    /// basicConstraints CA=true.
    pub is_ca: bool,
    /// keyUsage bits; empty = no keyUsage extension.
    pub key_usage: Vec<Usage>,
}

impl ClientSpec {
    /// A valid SVID for `id`: valid from a minute ago for a day, digitalSignature,
    /// clientAuth EKU, CA=false.
    pub fn spiffe(id: &str) -> ClientSpec {
        ClientSpec {
            spiffe_id: Some(id.to_string()),
            extra_uris: Vec::new(),
            dns: Vec::new(),
            common_name: None,
            second_common_name: None,
            not_before: -60,
            not_after: 86_400,
            is_ca: false,
            key_usage: vec![Usage::DigitalSignature],
        }
    }
}

/// The classes of bad client certificate the gateway must refuse, each a variation of a
/// valid SVID (untrusted issuers and revocation come from [`Ca::new`] and [`Ca::crl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// notAfter in the past.
    Expired,
    /// notBefore in the future.
    NotYetValid,
    /// Two SPIFFE URI SANs.
    TwoUriSans,
    /// No URI SAN at all.
    NoUriSan,
    /// The SPIFFE ID only in the subject CN.
    SpiffeIdInCnOnly,
    /// The SPIFFE ID only as a DNS SAN.
    SpiffeIdInDnsSanOnly,
    /// A URI SAN that is not a valid SPIFFE ID (`..` path segment).
    InvalidSpiffeId,
    /// A URI SAN of another scheme.
    NotSpiffeScheme,
    /// basicConstraints CA=true on the leaf.
    CaLeaf,
    /// keyCertSign on the leaf.
    KeyCertSignOnLeaf,
    /// cRLSign on the leaf.
    CrlSignOnLeaf,
    /// keyUsage without digitalSignature.
    NoDigitalSignature,
    /// No keyUsage extension.
    NoKeyUsage,
}

impl Bad {
    /// Every class.
    pub const ALL: [Bad; 13] = [
        Bad::Expired,
        Bad::NotYetValid,
        Bad::TwoUriSans,
        Bad::NoUriSan,
        Bad::SpiffeIdInCnOnly,
        Bad::SpiffeIdInDnsSanOnly,
        Bad::InvalidSpiffeId,
        Bad::NotSpiffeScheme,
        Bad::CaLeaf,
        Bad::KeyCertSignOnLeaf,
        Bad::CrlSignOnLeaf,
        Bad::NoDigitalSignature,
        Bad::NoKeyUsage,
    ];

    /// A file-name-friendly name.
    pub fn name(self) -> &'static str {
        match self {
            Bad::Expired => "expired",
            Bad::NotYetValid => "not-yet-valid",
            Bad::TwoUriSans => "two-uri-sans",
            Bad::NoUriSan => "no-uri-san",
            Bad::SpiffeIdInCnOnly => "spiffe-id-in-cn-only",
            Bad::SpiffeIdInDnsSanOnly => "spiffe-id-in-dns-san-only",
            Bad::InvalidSpiffeId => "invalid-spiffe-id",
            Bad::NotSpiffeScheme => "not-spiffe-scheme",
            Bad::CaLeaf => "ca-leaf",
            Bad::KeyCertSignOnLeaf => "key-cert-sign-on-leaf",
            Bad::CrlSignOnLeaf => "crl-sign-on-leaf",
            Bad::NoDigitalSignature => "no-digital-signature",
            Bad::NoKeyUsage => "no-key-usage",
        }
    }

    /// The spec of this bad certificate, built around `id`.
    pub fn spec(self, id: &str) -> ClientSpec {
        let mut s = ClientSpec::spiffe(id);
        match self {
            Bad::Expired => {
                s.not_before = -7200;
                s.not_after = -3600;
            }
            Bad::NotYetValid => {
                s.not_before = 3600;
                s.not_after = 7200;
            }
            Bad::TwoUriSans => s.extra_uris = vec![format!("{id}-other")],
            Bad::NoUriSan => s.spiffe_id = None,
            Bad::SpiffeIdInCnOnly => {
                s.spiffe_id = None;
                s.common_name = Some(id.to_string());
            }
            Bad::SpiffeIdInDnsSanOnly => {
                s.spiffe_id = None;
                s.dns = vec![id.to_string()];
            }
            Bad::InvalidSpiffeId => s.spiffe_id = Some(format!("{id}/../admin")),
            Bad::NotSpiffeScheme => s.spiffe_id = Some("https://corp.example/pricer".into()),
            Bad::CaLeaf => s.is_ca = true,
            Bad::KeyCertSignOnLeaf => {
                s.key_usage = vec![Usage::DigitalSignature, Usage::KeyCertSign];
            }
            Bad::CrlSignOnLeaf => s.key_usage = vec![Usage::DigitalSignature, Usage::CrlSign],
            Bad::NoDigitalSignature => s.key_usage = vec![Usage::KeyEncipherment],
            Bad::NoKeyUsage => s.key_usage = Vec::new(),
        }
        s
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// The certificate followed by the intermediates up to (not including) the root.
    pub chain_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
    /// Its serial number (for CRLs).
    pub serial: u64,
}

/// A certificate authority (root or intermediate) that can issue and revoke.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
    /// PEM of the intermediates between this CA and the root (empty for a root),
    /// this CA's own certificate first.
    chain_pem: String,
    next_serial: std::cell::Cell<u64>,
}

fn at(t: i64) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(t).map_err(|_| PkiError::Time(t))
}

fn ia5(s: &str) -> Result<Ia5String, PkiError> {
    Ia5String::try_from(s).map_err(|_| PkiError::NotAscii(s.to_string()))
}

fn ca_params(name: &str, now: i64, key_cert_sign: bool) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = if key_cert_sign {
        vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign]
    };
    p.not_before = at(now - 3600)?;
    p.not_after = at(now + 10 * 365 * 86_400)?;
    Ok(p)
}

impl Ca {
    /// A new self-signed root named `name`, valid from an hour before `now` for ten years.
    pub fn new(name: &str, now: i64) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let params = ca_params(name, now, true)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain_pem: String::new(),
            issuer: Issuer::new(params, key),
            next_serial: std::cell::Cell::new(1000),
        })
    }

    /// An intermediate CA signed by this one. `key_cert_sign = false` makes one whose
    /// keyUsage lacks keyCertSign (which must not be accepted as an issuer).
    pub fn intermediate(&self, name: &str, now: i64, key_cert_sign: bool) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params(name, now, key_cert_sign)?;
        params.serial_number = Some(SerialNumber::from(self.serial()));
        let cert = params.signed_by(&key, &self.issuer)?;
        let pem = cert.pem();
        Ok(Ca {
            chain_pem: format!("{pem}{}", self.chain_pem),
            cert_pem: pem,
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            next_serial: std::cell::Cell::new(self.next_serial.get() + 100_000),
        })
    }

    fn serial(&self) -> u64 {
        let s = self.next_serial.get();
        self.next_serial.set(s + 1);
        s
    }

    /// This CA's certificate (PEM): the trust anchor to configure.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// This CA's private key (PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn issue(&self, p: &mut CertificateParams) -> Result<Leaf, PkiError> {
        let key = KeyPair::generate()?;
        let serial = self.serial();
        p.serial_number = Some(SerialNumber::from(serial));
        let cert = p.signed_by(&key, &self.issuer)?;
        let pem = cert.pem();
        Ok(Leaf {
            chain_pem: format!("{pem}{}", self.chain_pem),
            cert_pem: pem,
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A server certificate for `dns` names and `ips`, valid a day, serverAuth.
    pub fn server(&self, dns: &[&str], ips: &[IpAddr], now: i64) -> Result<Leaf, PkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns.first().copied().unwrap_or("zgate"));
        p.distinguished_name = dn;
        for d in dns {
            p.subject_alt_names.push(SanType::DnsName(ia5(d)?));
        }
        for ip in ips {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = at(now - 60)?;
        p.not_after = at(now + 86_400)?;
        self.issue(&mut p)
    }

    /// A client certificate made to `spec`.
    pub fn client(&self, spec: &ClientSpec, now: i64) -> Result<Leaf, PkiError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = &spec.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        if let Some(cn) = &spec.second_common_name {
            dn.push(DnType::CustomDnType(vec![2, 5, 4, 3]), cn.as_str());
        }
        p.distinguished_name = dn;
        if let Some(id) = &spec.spiffe_id {
            p.subject_alt_names.push(SanType::URI(ia5(id)?));
        }
        for u in &spec.extra_uris {
            p.subject_alt_names.push(SanType::URI(ia5(u)?));
        }
        for d in &spec.dns {
            p.subject_alt_names.push(SanType::DnsName(ia5(d)?));
        }
        if spec.is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        } else {
            p.is_ca = IsCa::ExplicitNoCa;
        }
        p.key_usages = spec.key_usage.iter().map(|u| u.rcgen()).collect();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = at(now + spec.not_before)?;
        p.not_after = at(now + spec.not_after)?;
        self.issue(&mut p)
    }

    /// A CRL signed by this CA revoking `revoked`, valid from a minute before `now` for
    /// a day (PEM).
    pub fn crl(&self, revoked: &[&Leaf], now: i64) -> Result<String, PkiError> {
        let params = CertificateRevocationListParams {
            this_update: at(now - 60)?,
            next_update: at(now + 86_400)?,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|l| {
                    Ok(RevokedCertParams {
                        serial_number: SerialNumber::from(l.serial),
                        revocation_time: at(now - 30)?,
                        reason_code: None,
                        invalidity_date: None,
                    })
                })
                .collect::<Result<_, PkiError>>()?,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// The DER bodies of every PEM block in `pem` (any label), in order. Malformed blocks
/// are skipped (this is a test helper, not a parser for untrusted input).
pub fn pem_to_der(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            body = Some(String::new());
        } else if line.starts_with("-----END ") {
            if let Some(b) = body.take() {
                if let Some(d) = base64_decode(&b) {
                    out.push(d);
                }
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer;

    const NOW: i64 = 1_750_000_000;

    #[test]
    fn a_spiffe_client_cert_has_what_was_asked() {
        let ca = Ca::new("root", NOW).unwrap();
        let leaf = ca
            .client(&ClientSpec::spiffe("spiffe://td/a"), NOW)
            .unwrap();
        let der = pem_to_der(&leaf.cert_pem).remove(0);
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert!(san
            .value
            .general_names
            .contains(&GeneralName::URI("spiffe://td/a")));
        assert!(!c.is_ca());
        assert!(c.key_usage().unwrap().unwrap().value.digital_signature());
        assert_eq!(c.validity().not_before.timestamp(), NOW - 60);
        assert!(!c.tbs_certificate.raw_serial_as_string().is_empty());
    }

    #[test]
    fn bad_specs_differ_from_the_good_one() {
        for b in Bad::ALL {
            assert_ne!(
                b.spec("spiffe://td/a"),
                ClientSpec::spiffe("spiffe://td/a"),
                "{b:?}"
            );
        }
    }

    #[test]
    fn intermediate_chain_and_crl() {
        let root = Ca::new("root", NOW).unwrap();
        let int = root.intermediate("int", NOW, true).unwrap();
        let leaf = int
            .client(&ClientSpec::spiffe("spiffe://td/a"), NOW)
            .unwrap();
        assert_eq!(pem_to_der(&leaf.chain_pem).len(), 2);
        let crl = root.crl(&[&leaf], NOW).unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----"));
    }

    #[test]
    fn base64_round_trip_of_known_values() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("a*b").is_none());
    }
}
