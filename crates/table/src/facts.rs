//! The inputs and the output of a decision.
//!
//! [`FlowFacts`] describe one flow and borrow everything (the dataplane builds them on
//! the stack from its connection state). [`LiveFacts`] are the fast-changing context
//! signals the control process publishes: revocations, device posture, risk scores and
//! just-in-time grants. [`Decision`] is plain data: no strings built, nothing allocated.

use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHashSet};

pub use crate::idset::IdSet;

/// Seconds since the Unix epoch, UTC. Time is an input: nothing in this crate reads a clock.
pub type UnixSeconds = i64;

/// What the verified client certificate says about the peer. All borrowed.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIdentity<'a> {
    /// The SPIFFE ID from the URI SAN, already validated by the TLS layer
    /// (`spiffe://td/seg/...`).
    pub spiffe_id: Option<&'a str>,
    /// DNS SANs, lowercase.
    pub dns_sans: &'a [&'a str],
    /// Subject common name.
    pub common_name: Option<&'a str>,
    /// SHA-256 of the DER end-entity certificate.
    pub fingerprint: Option<&'a [u8; 32]>,
}

/// Everything known about one flow at decision time.
#[derive(Debug, Clone, Copy)]
pub struct FlowFacts<'a> {
    /// Listener (service) name.
    pub service: &'a str,
    /// Client source address.
    pub source: IpAddr,
    /// TLS SNI, lowercase; `None` for plain flows or when the client sent none.
    pub sni: Option<&'a str>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<&'a str>,
    /// Verified peer identity; `None` for plain listeners or anonymous clients.
    pub identity: Option<PeerIdentity<'a>>,
    /// Device id found in the certificate, when the listener is configured to look.
    pub device_id: Option<&'a str>,
    /// Certificate age in seconds (now - not_before); `None` without a certificate.
    pub cert_age_secs: Option<u64>,
    /// The decision instant.
    pub now: UnixSeconds,
}

impl<'a> FlowFacts<'a> {
    /// A plain (no TLS) flow: service, source and time only.
    pub fn plain(service: &'a str, source: IpAddr, now: UnixSeconds) -> FlowFacts<'a> {
        FlowFacts {
            service,
            source,
            sni: None,
            alpn: None,
            identity: None,
            device_id: None,
            cert_age_secs: None,
            now,
        }
    }
}

/// Device posture as last reported for one device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DevicePosture {
    /// Enrolled in device management.
    pub managed: bool,
    /// Reported compliant with the organisation's baseline.
    pub compliant: bool,
    /// EDR agent reported running.
    pub edr_running: bool,
    /// Reported compromised: fails every posture requirement.
    pub compromised: bool,
    /// OS patch level as `YYYYMMDD`.
    pub os_patch: u32,
}

/// Fast-changing context, published by the control process beside the table.
///
/// Keys: revocations by SPIFFE ID or certificate fingerprint; posture by device id;
/// risk by SPIFFE ID and by device id (the higher applies); grants by service, then
/// SPIFFE ID. Unknown risk counts as 0; unknown posture meets no requirement.
#[derive(Debug, Clone, Default)]
pub struct LiveFacts {
    /// Monotonic version of this fact set.
    pub version: u64,
    /// Revoked SPIFFE IDs: any flow presenting one is denied. An [`IdSet`], so that
    /// `decide` hashes the flow's ID once for this set and the table's index.
    pub revoked_ids: IdSet,
    /// Revoked certificate fingerprints.
    pub revoked_fingerprints: FxHashSet<[u8; 32]>,
    /// Posture per device id.
    pub posture: FxHashMap<String, DevicePosture>,
    /// Risk score (0..=100) per SPIFFE ID.
    pub risk_by_id: FxHashMap<String, u8>,
    /// Risk score (0..=100) per device id.
    pub risk_by_device: FxHashMap<String, u8>,
    /// Just-in-time grants: service -> SPIFFE ID -> end instant (exclusive).
    pub grants: FxHashMap<String, FxHashMap<String, UnixSeconds>>,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Proxy the flow.
    Allow,
    /// Close the flow.
    Deny,
}

/// What made the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// The rule at this index of the policy (and of the table).
    Rule(u32),
    /// No rule matched: default deny.
    DefaultDeny,
    /// The peer's SPIFFE ID is revoked.
    RevokedIdentity,
    /// The peer's certificate fingerprint is revoked.
    RevokedCertificate,
}

/// Why, in one word a log line or a metric label can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An allow rule matched and no deny rule did.
    AllowedByRule,
    /// A deny rule matched.
    DeniedByRule,
    /// No rule matched the flow.
    NoRuleMatched,
    /// The service is not named by any rule.
    UnknownService,
    /// Identity or certificate revoked.
    Revoked,
}

impl Reason {
    /// A stable, lowercase label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::AllowedByRule => "allowed-by-rule",
            Reason::DeniedByRule => "denied-by-rule",
            Reason::NoRuleMatched => "no-rule-matched",
            Reason::UnknownService => "unknown-service",
            Reason::Revoked => "revoked",
        }
    }
}

/// Limits on how long an allowed flow may live. Each is independent; the dataplane
/// closes (or re-decides) the flow at the earliest of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Constraints {
    /// End of the just-in-time grant the decision relied on.
    pub grant_end: Option<UnixSeconds>,
    /// End of the schedule range the decision was made in.
    pub schedule_end: Option<UnixSeconds>,
    /// Longest the flow may live, counted from its start.
    pub max_session_secs: Option<u64>,
}

impl Constraints {
    /// The earliest instant at which the flow must be closed or re-decided, given the
    /// instant it started.
    pub fn expires_at(&self, started: UnixSeconds) -> Option<UnixSeconds> {
        let session_end = self
            .max_session_secs
            .map(|s| started.saturating_add(i64::try_from(s).unwrap_or(i64::MAX)));
        [self.grant_end, self.schedule_end, session_end]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The answer for one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The rule (or built-in) that decided.
    pub decided_by: DecidedBy,
    /// Why.
    pub reason: Reason,
    /// Expiry limits; all `None` for a deny.
    pub constraints: Constraints,
}

impl Decision {
    /// The default-deny decision.
    pub const fn default_deny(reason: Reason) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            decided_by: DecidedBy::DefaultDeny,
            reason,
            constraints: Constraints {
                grant_end: None,
                schedule_end: None,
                max_session_secs: None,
            },
        }
    }

    /// Whether the flow may proceed.
    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}
