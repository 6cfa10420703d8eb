//! The validated policy model.
//!
//! Values of these types only come out of [`crate::parse_policy`] (or are built by hand
//! in tests of downstream crates): every group reference is resolved, every CIDR, SPIFFE
//! ID, schedule and duration is already checked. Code downstream (the table compiler,
//! the reference evaluator, `zgate-control explain`) never re-validates.
//!
//! Rules are kept in evaluation order: files sorted by name, then position in the file.
//! A rule's index in [`Policy::rules`] is its identity everywhere downstream.

use std::fmt;
use std::net::IpAddr;

/// A complete, validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Named groups of principals, members already expanded (nested groups flattened).
    pub groups: Vec<Group>,
    /// Services that were declared explicitly (to mark them sensitive, say).
    pub services: Vec<ServiceDecl>,
    /// Rules in evaluation order.
    pub rules: Vec<Rule>,
    /// SHA-256 over the sorted (file name, file text) pairs the policy came from.
    pub source_hash: [u8; 32],
}

/// A named set of principals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name, referenced from rules as `group:NAME`.
    pub name: String,
    /// Members; nested groups are already flattened into this list.
    pub members: Vec<Principal>,
    /// Where the group was defined.
    pub origin: Origin,
}

/// An explicitly declared service (listener name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDecl {
    /// The listener name the dataplane uses.
    pub name: String,
    /// Broad allow rules on a sensitive service are warned about unless acknowledged.
    pub sensitive: bool,
    /// Where the service was declared.
    pub origin: Origin,
}

/// Where something was written: file name, 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// File name as given to the parser (relative to the policy directory).
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the flow through (unless some deny rule also matches).
    Allow,
    /// Refuse the flow; beats any allow.
    Deny,
}

/// Which services a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceSelector {
    /// `services = ["*"]`: every listener.
    Any,
    /// Listed listener names (deduplicated, in written order).
    Named(Vec<String>),
}

/// A parsed SPIFFE ID: `spiffe://TRUST_DOMAIN/SEG/SEG/...`.
///
/// INVARIANT: `trust_domain` is lowercase and made of `[a-z0-9.-_]`; every segment is
/// non-empty, not `.` or `..`, and made of `[A-Za-z0-9.-_]` (the SPIFFE ID spec).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The trust domain, e.g. `example.org`.
    pub trust_domain: String,
    /// Path segments, e.g. `["ns", "trading", "sa", "desk1"]`. May be empty.
    pub segments: Vec<String>,
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)?;
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// One way of naming who is on the other end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// `*`: anyone, including flows with no client certificate.
    Any,
    /// `spiffe://td/a/b`: exactly this SPIFFE ID.
    SpiffeExact(SpiffeId),
    /// `spiffe://td/a/*`: any SPIFFE ID strictly below the given path (one or more
    /// further whole segments). `spiffe://td/*` is any workload of the trust domain.
    SpiffeUnder(SpiffeId),
    /// `dns:host.example.org`: a DNS SAN, compared lowercase and exactly.
    DnsSan(String),
    /// `cn:alice`: the subject common name, compared exactly.
    CommonName(String),
    /// `dns@td:host.example.org`: a DNS SAN as [`Principal::DnsSan`], on a certificate
    /// whose SPIFFE ID is in trust domain `td`. On a listener that trusts several trust
    /// domains, any of their CAs can issue a name; this form names only one's.
    DnsSanIn {
        /// The trust domain the certificate's SPIFFE ID must be in.
        trust_domain: String,
        /// The DNS SAN, lowercase.
        name: String,
    },
    /// `cn@td:alice`: a subject common name as [`Principal::CommonName`], on a
    /// certificate whose SPIFFE ID is in trust domain `td`.
    CommonNameIn {
        /// The trust domain the certificate's SPIFFE ID must be in.
        trust_domain: String,
        /// The common name, compared exactly.
        name: String,
    },
    /// `sha256:<64 hex>`: the SHA-256 fingerprint of the DER end-entity certificate.
    Fingerprint([u8; 32]),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Any => write!(f, "*"),
            Principal::SpiffeExact(id) => write!(f, "{id}"),
            Principal::SpiffeUnder(id) => write!(f, "{id}/*"),
            Principal::DnsSan(n) => write!(f, "dns:{n}"),
            Principal::CommonName(n) => write!(f, "cn:{n}"),
            Principal::DnsSanIn { trust_domain, name } => write!(f, "dns@{trust_domain}:{name}"),
            Principal::CommonNameIn { trust_domain, name } => {
                write!(f, "cn@{trust_domain}:{name}")
            }
            Principal::Fingerprint(fp) => {
                write!(f, "sha256:")?;
                for b in fp {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// An IPv4 or IPv6 network. INVARIANT: host bits are zero, `prefix_len` fits the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    /// Network address (host bits zero).
    pub addr: IpAddr,
    /// Prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` lies inside this network. Addresses of the other family never do.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Days of the week as a bit set: bit 0 = Monday … bit 6 = Sunday.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Weekdays(pub u8);

impl Weekdays {
    /// Whether `day` (0 = Monday … 6 = Sunday) is in the set.
    pub fn contains(self, day: u8) -> bool {
        day < 7 && self.0 & (1 << day) != 0
    }
}

/// A half-open range of minutes within a local day: `start_minute..end_minute`.
/// INVARIANT: `start_minute < end_minute <= 1440`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MinuteRange {
    /// First minute inside the range (0 = 00:00).
    pub start_minute: u16,
    /// First minute after the range (1440 = 24:00).
    pub end_minute: u16,
}

/// When a rule applies, in a named time zone.
///
/// Semantics: a flow at instant `t` is inside the schedule when the local weekday of `t`
/// in `time_zone` is in `days` and the local minute of day is inside one of `ranges`.
/// The schedule's end for that flow is the end of the range it is in, converted back to
/// an instant with the UTC offset in force at `t` (so a DST change inside the range
/// moves the end by the DST shift; the flow is re-decided then anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Days on which the ranges apply. INVARIANT: non-empty.
    pub days: Weekdays,
    /// Time-of-day ranges, sorted by start, non-overlapping. INVARIANT: non-empty.
    pub ranges: Vec<MinuteRange>,
    /// IANA time zone name (`Europe/London`) or `UTC`; validated to exist.
    pub time_zone: String,
}

/// Device posture a rule requires. A flow whose device is unknown, or whose posture
/// is unknown, does not meet any requirement (fail closed). A device reported
/// compromised never meets a posture requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PostureRequirement {
    /// The device must be managed (enrolled in MDM).
    pub managed: bool,
    /// The device must be reported compliant.
    pub compliant: bool,
    /// An EDR agent must be reported running.
    pub edr_running: bool,
    /// Minimum OS patch level as `YYYYMMDD` (from `min_os_patch = "2026-10-01"`).
    pub min_os_patch: Option<u32>,
}

/// One policy rule. Every `Option` that is `None` means "no constraint on that field".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique rule id, named in every decision the rule makes.
    pub id: String,
    /// Allow or deny.
    pub action: Action,
    /// Services the rule applies to.
    pub services: ServiceSelector,
    /// Principals (groups already expanded, deduplicated). `None` = anyone.
    /// Never `Some(vec![])`; `Some` containing `Principal::Any` is equivalent to `None`.
    pub principals: Option<Vec<Principal>>,
    /// Source networks. `None` = any source.
    pub sources: Option<Vec<Cidr>>,
    /// SNI names, lowercase. An entry `*.example.org` matches exactly one extra label.
    /// `None` = any SNI, including none.
    pub sni: Option<Vec<String>>,
    /// ALPN protocol names. `None` = any ALPN, including none.
    pub alpn: Option<Vec<String>>,
    /// Time window. `None` = always.
    pub schedule: Option<Schedule>,
    /// Device posture requirement (allow rules only).
    pub posture: Option<PostureRequirement>,
    /// Highest risk score (0..=100) allowed (allow rules only). Unknown risk counts as 0.
    pub max_risk: Option<u8>,
    /// Highest certificate age in seconds (now - not_before) allowed (allow rules only).
    /// A flow with no certificate does not match.
    pub max_cert_age_secs: Option<u64>,
    /// Longest a flow allowed by this rule may live, in seconds (allow rules only).
    pub max_session_secs: Option<u64>,
    /// Allow only while a just-in-time grant for (SPIFFE ID, service) is live
    /// (allow rules only). The grant's end becomes a constraint of the decision.
    pub requires_grant: bool,
    /// The author acknowledged that this allow rule is broad on a sensitive service.
    pub acknowledge_broad: bool,
    /// Where the rule was written (the `[[rule]]` header).
    pub origin: Origin,
}

impl Rule {
    /// A rule with only an id, action and services; everything else unconstrained.
    /// Meant for tests and generators in downstream crates.
    pub fn new(id: impl Into<String>, action: Action, services: ServiceSelector) -> Rule {
        Rule {
            id: id.into(),
            action,
            services,
            principals: None,
            sources: None,
            sni: None,
            alpn: None,
            schedule: None,
            posture: None,
            max_risk: None,
            max_cert_age_secs: None,
            max_session_secs: None,
            requires_grant: false,
            acknowledge_broad: false,
            origin: Origin::default(),
        }
    }
}
