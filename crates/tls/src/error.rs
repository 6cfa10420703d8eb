//! Typed errors: configuration (bad PEM, bad key, bad CA) and handshake rejections,
//! each rejection with the TLS alert it maps to and a short label for audit and metrics.

use std::sync::Arc;

/// Why a listener's TLS material cannot be used. Raised at config load or reload; the
/// old material (if any) stays in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A PEM input holds no certificate.
    #[error("{what}: no certificate found in the PEM input")]
    NoCertificate {
        /// Which input (`cert`, `client_ca`, ...).
        what: &'static str,
    },
    /// A PEM input could not be decoded.
    #[error("{what}: not valid PEM: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The private key is missing, unsupported, or does not match the certificate.
    #[error("key: {reason}")]
    Key {
        /// What is wrong.
        reason: String,
    },
    /// A certificate could not be parsed or is not fit for its role.
    #[error("{what}: {reason}")]
    Certificate {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The client CA bundle or CRLs were refused by the verifier builder.
    #[error("client_ca: {reason}")]
    Verifier {
        /// What is wrong.
        reason: String,
    },
    /// The protocol settings were refused (e.g. no usable version).
    #[error("tls settings: {reason}")]
    Settings {
        /// What is wrong.
        reason: String,
    },
    /// A trust domain name given for a CA bundle is not a valid SPIFFE trust domain, or
    /// is given twice, or no trust domain was given.
    #[error("trust domain `{trust_domain}`: {reason}")]
    TrustDomain {
        /// The name as given.
        trust_domain: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A TLS alert this crate maps a rejection to (the code is the RFC 8446 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alert {
    /// 10
    UnexpectedMessage,
    /// 20
    BadRecordMac,
    /// 22
    RecordOverflow,
    /// 40
    HandshakeFailure,
    /// 42
    BadCertificate,
    /// 43
    UnsupportedCertificate,
    /// 44
    CertificateRevoked,
    /// 45
    CertificateExpired,
    /// 46
    CertificateUnknown,
    /// 48
    UnknownCa,
    /// 47
    IllegalParameter,
    /// 49
    AccessDenied,
    /// 50
    DecodeError,
    /// 51
    DecryptError,
    /// 70
    ProtocolVersion,
    /// 80
    InternalError,
    /// 100
    NoRenegotiation,
    /// 116
    CertificateRequired,
    /// 120
    NoApplicationProtocol,
    /// No alert is sent (the peer is not speaking TLS, or it timed out).
    None,
    /// An alert received that this crate does not name (never sent).
    Other,
}

impl Alert {
    /// The alert's code on the wire, `None` when no alert is sent.
    pub fn code(self) -> Option<u8> {
        Some(match self {
            Alert::UnexpectedMessage => 10,
            Alert::BadRecordMac => 20,
            Alert::RecordOverflow => 22,
            Alert::HandshakeFailure => 40,
            Alert::BadCertificate => 42,
            Alert::UnsupportedCertificate => 43,
            Alert::CertificateRevoked => 44,
            Alert::CertificateExpired => 45,
            Alert::CertificateUnknown => 46,
            Alert::IllegalParameter => 47,
            Alert::UnknownCa => 48,
            Alert::AccessDenied => 49,
            Alert::DecodeError => 50,
            Alert::DecryptError => 51,
            Alert::ProtocolVersion => 70,
            Alert::InternalError => 80,
            Alert::NoRenegotiation => 100,
            Alert::CertificateRequired => 116,
            Alert::NoApplicationProtocol => 120,
            Alert::None | Alert::Other => return None,
        })
    }

    /// Every alert's label, in declaration order ([`Alert::label`]): the `alert`
    /// label of the alert metrics.
    pub const LABELS: &'static [&'static str] = &[
        "unexpected_message",
        "bad_record_mac",
        "record_overflow",
        "handshake_failure",
        "bad_certificate",
        "unsupported_certificate",
        "certificate_revoked",
        "certificate_expired",
        "certificate_unknown",
        "unknown_ca",
        "illegal_parameter",
        "access_denied",
        "decode_error",
        "decrypt_error",
        "protocol_version",
        "internal_error",
        "no_renegotiation",
        "certificate_required",
        "no_application_protocol",
        "none",
        "other",
    ];

    /// Its position in [`Alert::LABELS`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its RFC 8446 name (`bad_certificate`, `unknown_ca`, ...).
    pub fn label(self) -> &'static str {
        Self::LABELS.get(self.index()).copied().unwrap_or("other")
    }

    /// The alert with wire code `code` ([`Alert::Other`] for one not named here).
    pub fn from_code(code: u8) -> Alert {
        [
            Alert::UnexpectedMessage,
            Alert::BadRecordMac,
            Alert::RecordOverflow,
            Alert::HandshakeFailure,
            Alert::BadCertificate,
            Alert::UnsupportedCertificate,
            Alert::CertificateRevoked,
            Alert::CertificateExpired,
            Alert::CertificateUnknown,
            Alert::UnknownCa,
            Alert::IllegalParameter,
            Alert::AccessDenied,
            Alert::DecodeError,
            Alert::DecryptError,
            Alert::ProtocolVersion,
            Alert::InternalError,
            Alert::NoRenegotiation,
            Alert::CertificateRequired,
            Alert::NoApplicationProtocol,
        ]
        .into_iter()
        .find(|a| a.code() == Some(code))
        .unwrap_or(Alert::Other)
    }
}

/// A rule of the SPIFFE X.509-SVID profile (or of zgate's identity rules) that a client
/// certificate breaks. These are the checks webpki does not make (see `docs/tls.md`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The certificate DER does not parse.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// Not exactly one identity URI SAN (device-id URIs excluded, when configured).
    #[error("expected exactly one URI SAN, found {found}")]
    UriSanCount {
        /// How many identity URI SANs the certificate has.
        found: usize,
    },
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN `{uri}` is not a valid SPIFFE ID: {reason}")]
    BadSpiffeId {
        /// The URI SAN.
        uri: String,
        /// What the SPIFFE ID parser rejected.
        reason: String,
    },
    /// The leaf is a CA certificate (basicConstraints CA=true).
    #[error("leaf certificate is a CA (basicConstraints CA=true)")]
    CaAsLeaf,
    /// The leaf has no keyUsage extension.
    #[error("leaf certificate has no keyUsage extension")]
    NoKeyUsage,
    /// The leaf's keyUsage lacks digitalSignature.
    #[error("leaf keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    /// The leaf's keyUsage has keyCertSign or cRLSign.
    #[error("leaf keyUsage has keyCertSign or cRLSign")]
    SigningUsageOnLeaf,
    /// An intermediate is not a CA or its keyUsage lacks keyCertSign.
    #[error("intermediate {index} may not sign certificates: {reason}")]
    IssuerCannotSign {
        /// Position in the chain the client sent (0 = first intermediate).
        index: usize,
        /// What is missing.
        reason: &'static str,
    },
    /// More than one device-id URI SAN.
    #[error("more than one device-id URI SAN")]
    DeviceIdCount,
    /// A field the identity is read from is malformed or ambiguous: a device id outside
    /// `[A-Za-z0-9._-]{1,128}`, more than one subject CN, a DNS SAN that is not a DNS
    /// name.
    #[error("{what}: {reason}")]
    BadIdentityField {
        /// Which field (`device id`, `subject CN`, `DNS SAN`).
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A duplicate or malformed extension (SAN, keyUsage, basicConstraints).
    #[error("extension: {0}")]
    Extension(String),
    /// The SPIFFE ID's trust domain has no CA bundle on this listener: no configured CA
    /// may vouch for it (a CA vouches only for its own trust domain).
    #[error("no CA bundle for trust domain `{trust_domain}`")]
    UnknownTrustDomain {
        /// The trust domain of the certificate's SPIFFE ID.
        trust_domain: String,
    },
}

/// Why a handshake (or a flow before its first byte) was refused: the label goes into
/// the audit record and the `reason` metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// Client certificate (or one in its chain) has expired.
    #[error("certificate expired")]
    Expired,
    /// Client certificate not valid yet.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// The chain does not lead to a configured client CA.
    #[error("certificate issuer not trusted")]
    UntrustedIssuer,
    /// Revoked by a configured CRL.
    #[error("certificate revoked")]
    Revoked,
    /// Revocation status could not be determined (no CRL for the issuer, or CRL expired).
    #[error("certificate revocation status unknown")]
    RevocationUnknown,
    /// A bad signature or an unsupported signature algorithm in the chain.
    #[error("certificate signature invalid")]
    BadSignature,
    /// Extended key usage does not allow client authentication.
    #[error("certificate extended key usage does not allow client auth")]
    WrongExtendedKeyUsage,
    /// A SPIFFE X.509-SVID rule is broken.
    #[error("{0}")]
    Svid(SvidError),
    /// Some other certificate problem webpki found (bad encoding, critical extension...).
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// `client_auth = "required"` and the client sent no certificate.
    #[error("no client certificate")]
    NoClientCertificate,
    /// No common protocol version, cipher suite or signature scheme.
    #[error("no common protocol parameters")]
    NoCommonParameters,
    /// No common ALPN protocol.
    #[error("no common ALPN protocol")]
    NoApplicationProtocol,
    /// The bytes are not TLS (or are malformed TLS).
    #[error("not TLS or malformed TLS")]
    Malformed,
    /// The peer sent a fatal alert (which one: [`Alert::Other`] when not named here).
    #[error("peer sent the alert {}", .0.label())]
    PeerAlert(Alert),
    /// The handshake did not finish within the listener's handshake timeout.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The peer closed the connection before the handshake finished.
    #[error("peer closed during handshake")]
    PeerClosed,
    /// A record after the handshake was refused (forged or corrupted, too long, of a
    /// type or content not allowed there).
    #[error("bad record: {what}")]
    BadRecord {
        /// The alert sent for it.
        alert: Alert,
        /// What was wrong.
        what: &'static str,
    },
    /// The gateway's own failure, not the peer's (a buffer in an unexpected state,
    /// traffic keys the record layer cannot take over): the flow ends with
    /// `internal_error`, and the metric and audit say it was ours.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// Any other TLS failure rustls reported.
    #[error("tls error: {0}")]
    Other(String),
}

/// Number of distinct [`RejectReason::label`] values (for per-reason counters).
pub const REJECT_LABELS: usize = 26;

impl RejectReason {
    /// A short, stable label for metrics and audit (`expired`, `bad-spiffe-id`, ...).
    pub fn label(&self) -> &'static str {
        REJECT_LABEL_NAMES
            .get(self.index())
            .copied()
            .unwrap_or("other")
    }

    /// A dense index in `0..REJECT_LABELS`, one per label (for counter arrays).
    pub fn index(&self) -> usize {
        match self {
            RejectReason::Expired => 0,
            RejectReason::NotYetValid => 1,
            RejectReason::UntrustedIssuer => 2,
            RejectReason::Revoked => 3,
            RejectReason::RevocationUnknown => 4,
            RejectReason::BadSignature => 5,
            RejectReason::WrongExtendedKeyUsage => 6,
            RejectReason::Svid(e) => match e {
                SvidError::Parse(_) | SvidError::Extension(_) => 7,
                SvidError::UriSanCount { .. } => 8,
                SvidError::BadSpiffeId { .. } => 9,
                SvidError::CaAsLeaf => 10,
                SvidError::NoKeyUsage
                | SvidError::NoDigitalSignature
                | SvidError::SigningUsageOnLeaf => 11,
                SvidError::IssuerCannotSign { .. } => 12,
                SvidError::DeviceIdCount => 13,
                SvidError::UnknownTrustDomain { .. } => 22,
                SvidError::BadIdentityField { .. } => 23,
            },
            RejectReason::BadCertificate(_) => 7,
            RejectReason::NoClientCertificate => 14,
            RejectReason::NoCommonParameters => 15,
            RejectReason::NoApplicationProtocol => 16,
            RejectReason::Malformed => 17,
            RejectReason::PeerAlert(_) => 18,
            RejectReason::HandshakeTimeout => 19,
            RejectReason::PeerClosed => 20,
            RejectReason::Other(_) => 21,
            RejectReason::BadRecord { .. } => 24,
            RejectReason::Internal(_) => 25,
        }
    }

    /// The TLS alert the gateway sends for this rejection (rustls sends it; this is
    /// the mapping rustls 0.23 applies, kept here so the audit can say which).
    pub fn alert(&self) -> Alert {
        match self {
            RejectReason::Expired | RejectReason::NotYetValid => Alert::CertificateExpired,
            RejectReason::UntrustedIssuer | RejectReason::RevocationUnknown => Alert::UnknownCa,
            RejectReason::Revoked => Alert::CertificateRevoked,
            RejectReason::BadSignature => Alert::DecryptError,
            RejectReason::WrongExtendedKeyUsage => Alert::UnsupportedCertificate,
            // Our SVID checks surface through rustls as `CertificateError::Other`.
            RejectReason::Svid(_) => Alert::CertificateUnknown,
            RejectReason::BadCertificate(_) => Alert::BadCertificate,
            RejectReason::NoClientCertificate => Alert::CertificateRequired,
            RejectReason::NoCommonParameters => Alert::HandshakeFailure,
            RejectReason::NoApplicationProtocol => Alert::NoApplicationProtocol,
            RejectReason::Malformed => Alert::DecodeError,
            RejectReason::PeerAlert(_)
            | RejectReason::HandshakeTimeout
            | RejectReason::PeerClosed => Alert::None,
            RejectReason::Other(_) => Alert::HandshakeFailure,
            RejectReason::Internal(_) => Alert::InternalError,
            RejectReason::BadRecord { alert, .. } => *alert,
        }
    }

    /// Every label, in [`RejectReason::index`] order.
    pub const LABELS: [&'static str; REJECT_LABELS] = REJECT_LABEL_NAMES;

    /// Every label, in [`RejectReason::index`] order.
    pub fn labels() -> &'static [&'static str; REJECT_LABELS] {
        &REJECT_LABEL_NAMES
    }

    /// Classify a rustls error.
    pub(crate) fn from_rustls(e: &rustls::Error) -> RejectReason {
        use rustls::{CertificateError as C, Error as E};
        match e {
            E::InvalidCertificate(c) => match c {
                C::Expired | C::ExpiredContext { .. } => RejectReason::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => RejectReason::NotYetValid,
                C::UnknownIssuer => RejectReason::UntrustedIssuer,
                C::Revoked => RejectReason::Revoked,
                C::UnknownRevocationStatus
                | C::ExpiredRevocationList
                | C::ExpiredRevocationListContext { .. } => RejectReason::RevocationUnknown,
                C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                    RejectReason::WrongExtendedKeyUsage
                }
                C::Other(other) => match other.0.downcast_ref::<SvidError>() {
                    Some(s) => RejectReason::Svid(s.clone()),
                    // webpki's own refusal of a CA certificate as the leaf.
                    None if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                        RejectReason::Svid(SvidError::CaAsLeaf)
                    }
                    None => RejectReason::BadCertificate(other.to_string()),
                },
                #[expect(deprecated, reason = "rustls 0.23 may still produce these")]
                C::BadSignature | C::UnsupportedSignatureAlgorithm => RejectReason::BadSignature,
                C::UnsupportedSignatureAlgorithmContext { .. }
                | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                    RejectReason::BadSignature
                }
                other => RejectReason::BadCertificate(other.to_string()),
            },
            E::NoCertificatesPresented => RejectReason::NoClientCertificate,
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => RejectReason::Malformed,
            E::InappropriateHandshakeMessage { .. } => RejectReason::Malformed,
            E::AlertReceived(d) => RejectReason::PeerAlert(Alert::from_code(u8::from(*d))),
            E::PeerIncompatible(p) => {
                let s = format!("{p:?}");
                if s.contains("Alpn") || s.contains("ApplicationProtocol") {
                    RejectReason::NoApplicationProtocol
                } else {
                    RejectReason::NoCommonParameters
                }
            }
            E::NoApplicationProtocol => RejectReason::NoApplicationProtocol,
            E::PeerMisbehaved(_) => RejectReason::Malformed,
            other => RejectReason::Other(other.to_string()),
        }
    }
}

const REJECT_LABEL_NAMES: [&str; REJECT_LABELS] = [
    "expired",
    "not-yet-valid",
    "untrusted-issuer",
    "revoked",
    "revocation-unknown",
    "bad-signature",
    "wrong-extended-key-usage",
    "bad-certificate",
    "uri-san-count",
    "bad-spiffe-id",
    "ca-as-leaf",
    "wrong-key-usage",
    "issuer-cannot-sign",
    "device-id-count",
    "no-client-certificate",
    "no-common-parameters",
    "no-application-protocol",
    "malformed",
    "peer-alert",
    "handshake-timeout",
    "peer-closed",
    "other",
    "unknown-trust-domain",
    "bad-identity-field",
    "bad-record",
    "internal",
];

/// Wrap an [`SvidError`] so rustls carries it through the handshake.
pub(crate) fn svid_to_rustls(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_indexed() {
        let mut seen = std::collections::HashSet::new();
        for l in RejectReason::labels() {
            assert!(seen.insert(*l), "duplicate label {l}");
        }
        assert_eq!(RejectReason::Expired.label(), "expired");
        assert_eq!(
            RejectReason::Svid(SvidError::UriSanCount { found: 2 }).label(),
            "uri-san-count"
        );
        assert_eq!(RejectReason::HandshakeTimeout.label(), "handshake-timeout");
    }

    /// Every named alert comes back from its code under its RFC 8446 name; codes not
    /// named are `other`.
    #[test]
    fn alerts_round_trip_through_their_codes() {
        assert_eq!(Alert::Other.index() + 1, Alert::LABELS.len());
        let mut named = 0;
        for code in 0..=u8::MAX {
            let a = Alert::from_code(code);
            if a == Alert::Other {
                continue;
            }
            named += 1;
            assert_eq!(a.code(), Some(code));
            let wire = rustls::AlertDescription::from(code);
            let rustls_name = format!("{wire:?}").to_ascii_lowercase();
            assert_eq!(a.label().replace('_', ""), rustls_name, "{code}");
        }
        assert_eq!(named, Alert::LABELS.len() - 2, "all but none and other");
        assert_eq!(Alert::from_code(90), Alert::Other);
    }

    #[test]
    fn svid_errors_survive_the_trip_through_rustls() {
        let e = svid_to_rustls(SvidError::CaAsLeaf);
        assert_eq!(
            RejectReason::from_rustls(&e),
            RejectReason::Svid(SvidError::CaAsLeaf)
        );
        assert_eq!(RejectReason::from_rustls(&e).alert().code(), Some(46));
    }

    #[test]
    fn webpki_errors_map_to_reasons_and_alerts() {
        let cases = [
            (rustls::CertificateError::Expired, "expired", Some(45)),
            (
                rustls::CertificateError::NotValidYet,
                "not-yet-valid",
                Some(45),
            ),
            (
                rustls::CertificateError::UnknownIssuer,
                "untrusted-issuer",
                Some(48),
            ),
            (rustls::CertificateError::Revoked, "revoked", Some(44)),
        ];
        for (c, label, code) in cases {
            let r = RejectReason::from_rustls(&rustls::Error::InvalidCertificate(c));
            assert_eq!(r.label(), label);
            assert_eq!(r.alert().code(), code);
        }
        assert_eq!(
            RejectReason::from_rustls(&rustls::Error::NoCertificatesPresented).label(),
            "no-client-certificate"
        );
    }
}
