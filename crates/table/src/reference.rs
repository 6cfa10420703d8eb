//! The reference evaluator: the slow, obviously correct statement of what a decision is.
//!
//! It walks every rule of the validated [`Policy`] in order and checks every condition
//! straight from the model, converting time with `jiff` on every call. It exists for two
//! readers: the differential test, which checks that the compiled
//! [`DecisionTable`](crate::DecisionTable) agrees with it on random policies and flows, and
//! `zgate-control explain`, which uses [`explain`] to say why each rule did or did not
//! match. It allocates freely and is never on the data path.
//!
//! The semantics, in the order they apply:
//!
//! 1. A flow presenting a revoked SPIFFE ID is denied ([`DecidedBy::RevokedIdentity`]);
//!    otherwise one presenting a revoked certificate fingerprint is denied
//!    ([`DecidedBy::RevokedCertificate`]).
//! 2. The candidate rules are those whose services are `*` or name the flow's service.
//!    No candidate at all is a default deny for an unknown service.
//! 3. A rule matches when every condition it has holds (see [`Mismatch`] for the order
//!    they are checked in, which only matters to [`explain`]).
//! 4. The lowest-index matching deny rule wins; else the lowest-index matching allow
//!    rule, whose constraints (grant end, schedule end, session limit) come with the
//!    decision; else default deny because no rule matched.

use std::fmt;
use std::net::IpAddr;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use zgate_policy::model::{
    Action, Cidr, Policy, PostureRequirement, Principal, Rule, Schedule, ServiceSelector,
};

use crate::facts::{
    Constraints, DecidedBy, Decision, FlowFacts, LiveFacts, PeerIdentity, Reason, UnixSeconds,
    Verdict,
};

/// Decide one flow by walking the whole policy. Same answer as the compiled table.
pub fn evaluate(policy: &Policy, flow: &FlowFacts<'_>, live: &LiveFacts) -> Decision {
    explain(policy, flow, live).decision
}

/// A decision together with the outcome of every candidate rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The decision, identical to [`evaluate`]'s.
    pub decision: Decision,
    /// One entry per candidate rule (services `*` or naming the flow's service), in
    /// policy order. Present even when a revocation decided, so the trace still shows
    /// what the rules would have said.
    pub rules: Vec<RuleTrace>,
}

/// What one candidate rule said about the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    /// Index of the rule in [`Policy::rules`].
    pub index: u32,
    /// `Ok` when every condition of the rule held; otherwise the first one that did not.
    pub outcome: Result<(), Mismatch>,
}

/// The first condition of a rule that a flow failed, with what the flow had.
///
/// Conditions are checked in this order: principal, source, SNI, ALPN, schedule,
/// posture, risk, certificate age, grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The flow's identity is none of the rule's principals.
    Principal {
        /// A short summary of what the flow presented; `None` when it presented no
        /// identity at all.
        presented: Option<String>,
    },
    /// The source address is in none of the rule's networks.
    Source {
        /// The flow's source address.
        ip: IpAddr,
    },
    /// The SNI is none of the rule's names.
    Sni {
        /// The flow's SNI, if it sent one.
        got: Option<String>,
    },
    /// The ALPN protocol is none of the rule's.
    Alpn {
        /// The flow's negotiated ALPN protocol, if any.
        got: Option<String>,
    },
    /// The local time is outside the rule's schedule.
    Schedule {
        /// Local weekday, 0 = Monday … 6 = Sunday.
        weekday: u8,
        /// Local minute of the day, 0..1440.
        minute_of_day: u16,
        /// The schedule's time zone.
        zone: String,
    },
    /// The decision instant cannot be placed in the schedule's time zone (it is outside
    /// the range of representable dates, or the zone is unknown): the schedule fails
    /// closed.
    ScheduleUndecidable {
        /// The decision instant.
        now: UnixSeconds,
        /// The schedule's time zone.
        zone: String,
    },
    /// The device does not meet the rule's posture requirement.
    Posture(PostureFailure),
    /// The risk score is above the rule's ceiling.
    Risk {
        /// The higher of the identity's and the device's score (0 when unknown).
        score: u8,
        /// The rule's ceiling.
        max: u8,
    },
    /// The rule limits certificate age and the flow has no certificate.
    NoCertificate,
    /// The certificate is older than the rule allows.
    CertAge {
        /// The certificate's age.
        age_secs: u64,
        /// The rule's limit.
        max_secs: u64,
    },
    /// The rule requires a just-in-time grant and there is none for this identity and
    /// service.
    NoGrant {
        /// The flow's SPIFFE ID; `None` when it has none (a grant is keyed by it).
        spiffe_id: Option<String>,
        /// The flow's service.
        service: String,
    },
    /// The just-in-time grant has ended.
    GrantExpired {
        /// The grant's (exclusive) end.
        end: UnixSeconds,
    },
}

/// Which part of a posture requirement a flow failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostureFailure {
    /// The flow carries no device id.
    NoDevice,
    /// No posture is known for the device.
    UnknownDevice {
        /// The device id.
        device: String,
    },
    /// The device is reported compromised.
    Compromised {
        /// The device id.
        device: String,
    },
    /// The device is not managed.
    NotManaged,
    /// The device is not compliant.
    NotCompliant,
    /// No EDR agent is reported running.
    EdrNotRunning,
    /// The OS patch level is below the minimum.
    OsPatchTooOld {
        /// Reported level, `YYYYMMDD`.
        have: u32,
        /// Required level, `YYYYMMDD`.
        need: u32,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Principal { presented: None } => {
                write!(
                    f,
                    "the flow presents no identity and the rule names principals"
                )
            }
            Mismatch::Principal { presented: Some(p) } => {
                write!(f, "peer {p} is not among the rule's principals")
            }
            Mismatch::Source { ip } => write!(f, "source {ip} is not in the rule's networks"),
            Mismatch::Sni { got: None } => write!(f, "the flow sent no sni"),
            Mismatch::Sni { got: Some(s) } => write!(f, "sni {s} is not among the rule's names"),
            Mismatch::Alpn { got: None } => write!(f, "the flow negotiated no alpn protocol"),
            Mismatch::Alpn { got: Some(a) } => {
                write!(f, "alpn {a} is not among the rule's protocols")
            }
            Mismatch::Schedule {
                weekday,
                minute_of_day,
                zone,
            } => write!(
                f,
                "outside the schedule: {} {:02}:{:02} in {zone}",
                weekday_name(*weekday),
                minute_of_day / 60,
                minute_of_day % 60
            ),
            Mismatch::ScheduleUndecidable { now, zone } => write!(
                f,
                "instant {now} cannot be placed in time zone {zone}, so the schedule does not hold"
            ),
            Mismatch::Posture(p) => write!(f, "{p}"),
            Mismatch::Risk { score, max } => {
                write!(f, "risk score {score} is above the maximum {max}")
            }
            Mismatch::NoCertificate => write!(
                f,
                "the rule limits certificate age and the flow has no certificate"
            ),
            Mismatch::CertAge { age_secs, max_secs } => write!(
                f,
                "certificate age {age_secs}s is above the maximum {max_secs}s"
            ),
            Mismatch::NoGrant {
                spiffe_id: None,
                service,
            } => write!(
                f,
                "the rule requires a grant for {service} and the flow has no spiffe id"
            ),
            Mismatch::NoGrant {
                spiffe_id: Some(id),
                service,
            } => write!(f, "no grant for {id} on {service}"),
            Mismatch::GrantExpired { end } => write!(f, "the grant ended at {end}"),
        }
    }
}

impl fmt::Display for PostureFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostureFailure::NoDevice => write!(
                f,
                "the rule requires device posture and the flow has no device id"
            ),
            PostureFailure::UnknownDevice { device } => {
                write!(f, "no posture is known for device {device}")
            }
            PostureFailure::Compromised { device } => {
                write!(f, "device {device} is reported compromised")
            }
            PostureFailure::NotManaged => write!(f, "the device is not managed"),
            PostureFailure::NotCompliant => write!(f, "the device is not compliant"),
            PostureFailure::EdrNotRunning => write!(f, "no edr agent is running on the device"),
            PostureFailure::OsPatchTooOld { have, need } => {
                write!(f, "os patch level {have} is below the minimum {need}")
            }
        }
    }
}

fn weekday_name(day: u8) -> &'static str {
    match day {
        0 => "mon",
        1 => "tue",
        2 => "wed",
        3 => "thu",
        4 => "fri",
        5 => "sat",
        6 => "sun",
        _ => "?",
    }
}

/// Decide and explain one flow. See the module doc for the semantics.
pub fn explain(policy: &Policy, flow: &FlowFacts<'_>, live: &LiveFacts) -> Explanation {
    let mut rules = Vec::new();
    let mut first_deny: Option<u32> = None;
    let mut first_allow: Option<(u32, Constraints)> = None;
    for (index, rule) in (0u32..).zip(&policy.rules) {
        if !names_service(&rule.services, flow.service) {
            continue;
        }
        let outcome = rule_matches(rule, flow, live);
        if let Ok(constraints) = &outcome {
            match rule.action {
                Action::Deny => {
                    first_deny.get_or_insert(index);
                }
                Action::Allow => {
                    first_allow.get_or_insert((index, *constraints));
                }
            }
        }
        rules.push(RuleTrace {
            index,
            outcome: outcome.map(|_| ()),
        });
    }

    let decision = if let Some(reason) = revocation(flow, live) {
        reason
    } else if rules.is_empty() {
        Decision::default_deny(Reason::UnknownService)
    } else if let Some(index) = first_deny {
        Decision {
            verdict: Verdict::Deny,
            decided_by: DecidedBy::Rule(index),
            reason: Reason::DeniedByRule,
            constraints: Constraints::default(),
        }
    } else if let Some((index, constraints)) = first_allow {
        Decision {
            verdict: Verdict::Allow,
            decided_by: DecidedBy::Rule(index),
            reason: Reason::AllowedByRule,
            constraints,
        }
    } else {
        Decision::default_deny(Reason::NoRuleMatched)
    };
    Explanation { decision, rules }
}

/// The revocation deny, if the flow's identity or certificate is revoked.
fn revocation(flow: &FlowFacts<'_>, live: &LiveFacts) -> Option<Decision> {
    let identity = flow.identity?;
    let decided_by = if identity
        .spiffe_id
        .is_some_and(|id| live.revoked_ids.contains(id))
    {
        DecidedBy::RevokedIdentity
    } else if identity
        .fingerprint
        .is_some_and(|fp| live.revoked_fingerprints.contains(fp))
    {
        DecidedBy::RevokedCertificate
    } else {
        return None;
    };
    Some(Decision {
        verdict: Verdict::Deny,
        decided_by,
        reason: Reason::Revoked,
        constraints: Constraints::default(),
    })
}

fn names_service(services: &ServiceSelector, service: &str) -> bool {
    match services {
        ServiceSelector::Any => true,
        ServiceSelector::Named(names) => names.iter().any(|n| n == service),
    }
}

/// Check every condition of `rule` in order; on success return the constraints the
/// rule would put on an allow.
fn rule_matches(
    rule: &Rule,
    flow: &FlowFacts<'_>,
    live: &LiveFacts,
) -> Result<Constraints, Mismatch> {
    let mut constraints = Constraints {
        max_session_secs: rule.max_session_secs,
        ..Constraints::default()
    };
    if let Some(principals) = &rule.principals {
        check_principals(principals, flow.identity.as_ref())?;
    }
    if let Some(sources) = &rule.sources {
        check_sources(sources, flow.source)?;
    }
    if let Some(names) = &rule.sni {
        check_sni(names, flow.sni)?;
    }
    if let Some(protocols) = &rule.alpn {
        if !flow.alpn.is_some_and(|a| protocols.iter().any(|p| p == a)) {
            return Err(Mismatch::Alpn {
                got: flow.alpn.map(str::to_owned),
            });
        }
    }
    if let Some(schedule) = &rule.schedule {
        constraints.schedule_end = Some(check_schedule(schedule, flow.now)?);
    }
    if let Some(req) = &rule.posture {
        check_posture(req, flow.device_id, live).map_err(Mismatch::Posture)?;
    }
    if let Some(max) = rule.max_risk {
        let score = risk_score(flow, live);
        if score > max {
            return Err(Mismatch::Risk { score, max });
        }
    }
    if let Some(max_secs) = rule.max_cert_age_secs {
        match flow.cert_age_secs {
            None => return Err(Mismatch::NoCertificate),
            Some(age_secs) if age_secs > max_secs => {
                return Err(Mismatch::CertAge { age_secs, max_secs })
            }
            Some(_) => {}
        }
    }
    if rule.requires_grant {
        constraints.grant_end = Some(check_grant(flow, live)?);
    }
    Ok(constraints)
}

fn check_principals(
    principals: &[Principal],
    identity: Option<&PeerIdentity<'_>>,
) -> Result<(), Mismatch> {
    if principals.contains(&Principal::Any) {
        return Ok(());
    }
    let Some(identity) = identity else {
        return Err(Mismatch::Principal { presented: None });
    };
    if principals.iter().any(|p| principal_matches(p, identity)) {
        Ok(())
    } else {
        Err(Mismatch::Principal {
            presented: Some(summarize(identity)),
        })
    }
}

fn principal_matches(principal: &Principal, identity: &PeerIdentity<'_>) -> bool {
    match principal {
        Principal::Any => true,
        Principal::SpiffeExact(id) => identity.spiffe_id == Some(id.to_string().as_str()),
        Principal::SpiffeUnder(prefix) => identity.spiffe_id.is_some_and(|presented| {
            split_spiffe(presented).is_some_and(|(td, segs)| {
                td == prefix.trust_domain
                    && segs.len() > prefix.segments.len()
                    && segs.iter().zip(&prefix.segments).all(|(a, b)| *a == b)
            })
        }),
        Principal::DnsSan(name) => identity.dns_sans.iter().any(|s| s == name),
        Principal::CommonName(cn) => identity.common_name == Some(cn.as_str()),
        Principal::DnsSanIn { trust_domain, name } => {
            in_trust_domain(identity, trust_domain) && identity.dns_sans.iter().any(|s| s == name)
        }
        Principal::CommonNameIn { trust_domain, name } => {
            in_trust_domain(identity, trust_domain) && identity.common_name == Some(name.as_str())
        }
        Principal::Fingerprint(fp) => identity.fingerprint == Some(fp),
    }
}

/// Whether the identity's SPIFFE ID is in trust domain `td` (no SPIFFE ID: no).
fn in_trust_domain(identity: &PeerIdentity<'_>, td: &str) -> bool {
    identity
        .spiffe_id
        .and_then(split_spiffe)
        .is_some_and(|(presented, _)| presented == td)
}

/// `spiffe://td/a/b` → (`td`, [`a`, `b`]); `spiffe://td` → (`td`, []).
fn split_spiffe(id: &str) -> Option<(&str, Vec<&str>)> {
    let rest = id.strip_prefix("spiffe://")?;
    match rest.split_once('/') {
        None => Some((rest, Vec::new())),
        Some((td, path)) => Some((td, path.split('/').collect())),
    }
}

/// What a peer presented, for messages: its SPIFFE ID, else its first DNS SAN, else its
/// common name, else its fingerprint.
fn summarize(identity: &PeerIdentity<'_>) -> String {
    if let Some(id) = identity.spiffe_id {
        return id.to_owned();
    }
    if let Some(name) = identity.dns_sans.first() {
        return format!("dns:{name}");
    }
    if let Some(cn) = identity.common_name {
        return format!("cn:{cn}");
    }
    if let Some(fp) = identity.fingerprint {
        return Principal::Fingerprint(*fp).to_string();
    }
    "a certificate with no usable name".to_owned()
}

fn check_sources(sources: &[Cidr], ip: IpAddr) -> Result<(), Mismatch> {
    if sources.iter().any(|c| c.contains(ip)) {
        Ok(())
    } else {
        Err(Mismatch::Source { ip })
    }
}

fn check_sni(names: &[String], sni: Option<&str>) -> Result<(), Mismatch> {
    let matched = sni.is_some_and(|sni| names.iter().any(|n| sni_matches(n, sni)));
    if matched {
        Ok(())
    } else {
        Err(Mismatch::Sni {
            got: sni.map(str::to_owned),
        })
    }
}

/// `name` equals `sni`, or `name` is `*.suffix` and `sni` is one non-empty, dot-free
/// label followed by `.suffix`.
fn sni_matches(name: &str, sni: &str) -> bool {
    if name == sni {
        return true;
    }
    let Some(suffix) = name.strip_prefix("*.") else {
        return false;
    };
    let Some(head) = sni.strip_suffix(suffix) else {
        return false;
    };
    let Some(label) = head.strip_suffix('.') else {
        return false;
    };
    !label.is_empty() && !label.contains('.')
}

/// Whether `now` is inside the schedule; if so, the end of the range it is in, converted
/// back to an instant with the UTC offset in force at `now`.
fn check_schedule(schedule: &Schedule, now: UnixSeconds) -> Result<UnixSeconds, Mismatch> {
    let undecidable = || Mismatch::ScheduleUndecidable {
        now,
        zone: schedule.time_zone.clone(),
    };
    let tz = TimeZone::get(&schedule.time_zone).map_err(|_| undecidable())?;
    let local = Timestamp::from_second(now)
        .map_err(|_| undecidable())?
        .to_zoned(tz);
    let weekday = u8::try_from(local.weekday().to_monday_zero_offset()).unwrap_or(u8::MAX);
    let hour = u16::try_from(local.hour()).unwrap_or(0);
    let minute = u16::try_from(local.minute()).unwrap_or(0);
    let second = i64::from(local.second());
    let minute_of_day = hour * 60 + minute;
    let range = schedule
        .ranges
        .iter()
        .find(|r| r.start_minute <= minute_of_day && minute_of_day < r.end_minute);
    match range {
        Some(range) if schedule.days.contains(weekday) => {
            let local_secs = i64::from(minute_of_day) * 60 + second;
            Ok(now + (i64::from(range.end_minute) * 60 - local_secs))
        }
        _ => Err(Mismatch::Schedule {
            weekday,
            minute_of_day,
            zone: schedule.time_zone.clone(),
        }),
    }
}

fn check_posture(
    req: &PostureRequirement,
    device_id: Option<&str>,
    live: &LiveFacts,
) -> Result<(), PostureFailure> {
    let device = device_id.ok_or(PostureFailure::NoDevice)?;
    let posture = live
        .posture
        .get(device)
        .ok_or_else(|| PostureFailure::UnknownDevice {
            device: device.to_owned(),
        })?;
    if posture.compromised {
        return Err(PostureFailure::Compromised {
            device: device.to_owned(),
        });
    }
    if req.managed && !posture.managed {
        return Err(PostureFailure::NotManaged);
    }
    if req.compliant && !posture.compliant {
        return Err(PostureFailure::NotCompliant);
    }
    if req.edr_running && !posture.edr_running {
        return Err(PostureFailure::EdrNotRunning);
    }
    if let Some(need) = req.min_os_patch {
        if posture.os_patch < need {
            return Err(PostureFailure::OsPatchTooOld {
                have: posture.os_patch,
                need,
            });
        }
    }
    Ok(())
}

/// The higher of the identity's and the device's risk score; unknown counts as 0.
fn risk_score(flow: &FlowFacts<'_>, live: &LiveFacts) -> u8 {
    let by_id = flow
        .identity
        .and_then(|i| i.spiffe_id)
        .and_then(|id| live.risk_by_id.get(id).copied())
        .unwrap_or(0);
    let by_device = flow
        .device_id
        .and_then(|d| live.risk_by_device.get(d).copied())
        .unwrap_or(0);
    by_id.max(by_device)
}

/// The end of the live grant for (flow's SPIFFE ID, flow's service).
fn check_grant(flow: &FlowFacts<'_>, live: &LiveFacts) -> Result<UnixSeconds, Mismatch> {
    let spiffe_id = flow.identity.and_then(|i| i.spiffe_id);
    let no_grant = || Mismatch::NoGrant {
        spiffe_id: spiffe_id.map(str::to_owned),
        service: flow.service.to_owned(),
    };
    let id = spiffe_id.ok_or_else(no_grant)?;
    let end = live
        .grants
        .get(flow.service)
        .and_then(|by_id| by_id.get(id))
        .copied()
        .ok_or_else(no_grant)?;
    if end > flow.now {
        Ok(end)
    } else {
        Err(Mismatch::GrantExpired { end })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use zgate_policy::model::{
        Action, Cidr, MinuteRange, Policy, PostureRequirement, Principal, Rule, Schedule,
        ServiceSelector, SpiffeId, Weekdays,
    };

    use super::{evaluate, explain, Mismatch, PostureFailure};
    use crate::facts::{
        Constraints, DecidedBy, Decision, DevicePosture, FlowFacts, LiveFacts, PeerIdentity,
        Reason, Verdict,
    };

    const FP_A: [u8; 32] = [0xaa; 32];
    const FP_B: [u8; 32] = [0xbb; 32];
    /// 2026-03-07 (a Saturday) 10:05:30 in America/New_York (EST, UTC-5).
    const SAT_NY_1005: i64 = 1_772_895_930;

    fn policy(rules: Vec<Rule>) -> Policy {
        Policy {
            groups: Vec::new(),
            services: Vec::new(),
            rules,
            source_hash: [0; 32],
        }
    }

    fn named(s: &str) -> ServiceSelector {
        ServiceSelector::Named(vec![s.to_owned()])
    }

    fn allow(id: &str) -> Rule {
        Rule::new(id, Action::Allow, named("redis"))
    }

    fn deny(id: &str) -> Rule {
        Rule::new(id, Action::Deny, named("redis"))
    }

    fn sid(s: &str) -> SpiffeId {
        let rest = s.strip_prefix("spiffe://").unwrap();
        let mut parts = rest.split('/');
        SpiffeId {
            trust_domain: parts.next().unwrap().to_owned(),
            segments: parts.map(str::to_owned).collect(),
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Cidr {
            addr: a.parse().unwrap(),
            prefix_len: p.parse().unwrap(),
        }
    }

    fn flow(now: i64) -> FlowFacts<'static> {
        FlowFacts::plain("redis", v4(10, 1, 2, 3), now)
    }

    fn with_id<'a>(f: FlowFacts<'a>, id: &'a str) -> FlowFacts<'a> {
        FlowFacts {
            identity: Some(PeerIdentity {
                spiffe_id: Some(id),
                ..PeerIdentity::default()
            }),
            ..f
        }
    }

    fn allowed(index: u32, constraints: Constraints) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            decided_by: DecidedBy::Rule(index),
            reason: Reason::AllowedByRule,
            constraints,
        }
    }

    fn denied(index: u32) -> Decision {
        Decision {
            verdict: Verdict::Deny,
            decided_by: DecidedBy::Rule(index),
            reason: Reason::DeniedByRule,
            constraints: Constraints::default(),
        }
    }

    /// The mismatch of the single rule of `p`.
    fn mismatch(p: &Policy, f: &FlowFacts<'_>, live: &LiveFacts) -> Mismatch {
        let e = explain(p, f, live);
        assert_eq!(e.rules.len(), 1);
        e.rules[0].outcome.clone().unwrap_err()
    }

    fn at_ny(y: i16, mo: i8, d: i8, h: i8, mi: i8, s: i8) -> i64 {
        at(y, mo, d, h, mi, s, "America/New_York")
    }

    fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8, s: i8, tz: &str) -> i64 {
        jiff::civil::date(y, mo, d)
            .at(h, mi, s, 0)
            .in_tz(tz)
            .unwrap()
            .timestamp()
            .as_second()
    }

    #[test]
    fn fixture_instant_is_what_it_claims() {
        assert_eq!(at_ny(2026, 3, 7, 10, 5, 30), SAT_NY_1005);
    }

    #[test]
    fn unknown_service_versus_no_rule_matched() {
        let live = LiveFacts::default();
        let mut r = allow("a");
        r.sources = Some(vec![cidr("192.0.2.0/24")]);
        let p = policy(vec![r]);
        let other = FlowFacts::plain("postgres", v4(10, 1, 2, 3), 0);
        assert_eq!(
            evaluate(&p, &other, &live),
            Decision::default_deny(Reason::UnknownService)
        );
        assert!(explain(&p, &other, &live).rules.is_empty());
        assert_eq!(
            evaluate(&p, &flow(0), &live),
            Decision::default_deny(Reason::NoRuleMatched)
        );
        // A `*` rule makes every service known, even when it does not match.
        let mut any = Rule::new("any", Action::Deny, ServiceSelector::Any);
        any.sources = Some(vec![cidr("192.0.2.0/24")]);
        let p = policy(vec![any]);
        assert_eq!(
            evaluate(&p, &other, &live),
            Decision::default_deny(Reason::NoRuleMatched)
        );
    }

    #[test]
    fn any_service_rule_applies_to_every_listener() {
        let p = policy(vec![Rule::new("all", Action::Allow, ServiceSelector::Any)]);
        let f = FlowFacts::plain("whatever", v4(1, 1, 1, 1), 0);
        assert_eq!(
            evaluate(&p, &f, &LiveFacts::default()),
            allowed(0, Constraints::default())
        );
    }

    #[test]
    fn multi_service_rule_names_each_service() {
        let mut r = allow("a");
        r.services = ServiceSelector::Named(vec!["pg".into(), "redis".into()]);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        assert!(evaluate(&p, &flow(0), &live).is_allow());
        assert!(evaluate(&p, &FlowFacts::plain("pg", v4(1, 1, 1, 1), 0), &live).is_allow());
        assert_eq!(
            evaluate(&p, &FlowFacts::plain("kafka", v4(1, 1, 1, 1), 0), &live).reason,
            Reason::UnknownService
        );
    }

    #[test]
    fn revoked_identity_beats_revoked_certificate_and_every_rule() {
        let p = policy(vec![allow("open")]);
        let mut live = LiveFacts::default();
        let id = "spiffe://corp.example/ns/a";
        let f = FlowFacts {
            identity: Some(PeerIdentity {
                spiffe_id: Some(id),
                fingerprint: Some(&FP_A),
                ..PeerIdentity::default()
            }),
            ..flow(0)
        };
        assert!(evaluate(&p, &f, &live).is_allow());
        live.revoked_fingerprints.insert(FP_A);
        let d = evaluate(&p, &f, &live);
        assert_eq!(d.decided_by, DecidedBy::RevokedCertificate);
        assert_eq!(d.reason, Reason::Revoked);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.constraints, Constraints::default());
        live.revoked_ids.insert(id.to_owned());
        assert_eq!(
            evaluate(&p, &f, &live).decided_by,
            DecidedBy::RevokedIdentity
        );
        // Revocation is checked before the service lookup.
        let unknown = FlowFacts {
            service: "nope",
            ..f
        };
        assert_eq!(
            evaluate(&p, &unknown, &live).decided_by,
            DecidedBy::RevokedIdentity
        );
        // A different fingerprint is not revoked.
        let mut live = LiveFacts::default();
        live.revoked_fingerprints.insert(FP_B);
        assert!(evaluate(&p, &f, &live).is_allow());
    }

    #[test]
    fn deny_beats_earlier_allow_and_lowest_index_wins() {
        let live = LiveFacts::default();
        let mut a0 = allow("a0");
        a0.max_session_secs = Some(60);
        let mut a1 = allow("a1");
        a1.max_session_secs = Some(99);
        let p = policy(vec![a0.clone(), a1.clone(), deny("d2"), deny("d3")]);
        assert_eq!(evaluate(&p, &flow(0), &live), denied(2));
        let p = policy(vec![a0, a1]);
        assert_eq!(
            evaluate(&p, &flow(0), &live),
            allowed(
                0,
                Constraints {
                    max_session_secs: Some(60),
                    ..Constraints::default()
                }
            )
        );
    }

    #[test]
    fn non_matching_deny_does_not_block() {
        let mut d = deny("d");
        d.sources = Some(vec![cidr("192.0.2.0/24")]);
        let p = policy(vec![d, allow("a")]);
        let e = explain(&p, &flow(0), &LiveFacts::default());
        assert_eq!(e.decision, allowed(1, Constraints::default()));
        assert_eq!(e.rules.len(), 2);
        assert_eq!(e.rules[0].index, 0);
        assert!(e.rules[0].outcome.is_err());
        assert_eq!(e.rules[1].outcome, Ok(()));
    }

    #[test]
    fn principals_any_matches_anonymous_flows() {
        let mut r = allow("a");
        r.principals = Some(vec![Principal::CommonName("x".into()), Principal::Any]);
        let p = policy(vec![r]);
        assert!(evaluate(&p, &flow(0), &LiveFacts::default()).is_allow());
    }

    #[test]
    fn named_principal_needs_an_identity() {
        let mut r = allow("a");
        r.principals = Some(vec![Principal::CommonName("x".into())]);
        let p = policy(vec![r]);
        let m = mismatch(&p, &flow(0), &LiveFacts::default());
        assert_eq!(m, Mismatch::Principal { presented: None });
        assert_eq!(
            m.to_string(),
            "the flow presents no identity and the rule names principals"
        );
    }

    #[test]
    fn spiffe_exact() {
        let mut r = allow("a");
        r.principals = Some(vec![Principal::SpiffeExact(sid(
            "spiffe://corp.example/ns/a",
        ))]);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        assert!(evaluate(&p, &with_id(flow(0), "spiffe://corp.example/ns/a"), &live).is_allow());
        for other in [
            "spiffe://corp.example/ns/a/b",
            "spiffe://corp.example/ns",
            "spiffe://other.example/ns/a",
        ] {
            assert!(
                !evaluate(&p, &with_id(flow(0), other), &live).is_allow(),
                "{other}"
            );
        }
        let m = mismatch(&p, &with_id(flow(0), "spiffe://corp.example/ns/b"), &live);
        assert_eq!(
            m.to_string(),
            "peer spiffe://corp.example/ns/b is not among the rule's principals"
        );
    }

    #[test]
    fn spiffe_under_is_strictly_below_whole_segments() {
        let mut r = allow("a");
        r.principals = Some(vec![Principal::SpiffeUnder(sid(
            "spiffe://corp.example/ns/trading",
        ))]);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        let yes = [
            "spiffe://corp.example/ns/trading/sa",
            "spiffe://corp.example/ns/trading/sa/desk1",
        ];
        let no = [
            "spiffe://corp.example/ns/trading",
            "spiffe://corp.example/ns/tradingx/sa",
            "spiffe://corp.example/ns",
            "spiffe://corp.example",
            "spiffe://corp.examplex/ns/trading/sa",
            "spiffe://other.example/ns/trading/sa",
            "spiffe://corp.example/ns/Trading/sa",
        ];
        for id in yes {
            assert!(
                evaluate(&p, &with_id(flow(0), id), &live).is_allow(),
                "{id}"
            );
        }
        for id in no {
            assert!(
                !evaluate(&p, &with_id(flow(0), id), &live).is_allow(),
                "{id}"
            );
        }
    }

    #[test]
    fn spiffe_under_trust_domain_root() {
        let mut r = allow("a");
        r.principals = Some(vec![Principal::SpiffeUnder(sid("spiffe://corp.example"))]);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        assert!(evaluate(&p, &with_id(flow(0), "spiffe://corp.example/x"), &live).is_allow());
        assert!(!evaluate(&p, &with_id(flow(0), "spiffe://corp.example"), &live).is_allow());
    }

    #[test]
    fn dns_cn_and_fingerprint_principals() {
        let mut r = allow("a");
        r.principals = Some(vec![
            Principal::DnsSan("db.corp.example".into()),
            Principal::CommonName("alice".into()),
            Principal::Fingerprint(FP_A),
        ]);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        let sans = ["x.corp.example", "db.corp.example"];
        let cases = [
            (
                PeerIdentity {
                    dns_sans: &sans,
                    ..PeerIdentity::default()
                },
                true,
            ),
            (
                PeerIdentity {
                    dns_sans: &sans[..1],
                    ..PeerIdentity::default()
                },
                false,
            ),
            (
                PeerIdentity {
                    common_name: Some("alice"),
                    ..PeerIdentity::default()
                },
                true,
            ),
            (
                PeerIdentity {
                    common_name: Some("Alice"),
                    ..PeerIdentity::default()
                },
                false,
            ),
            (
                PeerIdentity {
                    fingerprint: Some(&FP_A),
                    ..PeerIdentity::default()
                },
                true,
            ),
            (
                PeerIdentity {
                    fingerprint: Some(&FP_B),
                    ..PeerIdentity::default()
                },
                false,
            ),
            (PeerIdentity::default(), false),
        ];
        for (identity, expect) in cases {
            let f = FlowFacts {
                identity: Some(identity),
                ..flow(0)
            };
            assert_eq!(evaluate(&p, &f, &live).is_allow(), expect, "{identity:?}");
        }
        let f = FlowFacts {
            identity: Some(PeerIdentity {
                fingerprint: Some(&FP_B),
                ..PeerIdentity::default()
            }),
            ..flow(0)
        };
        assert_eq!(
            mismatch(&p, &f, &live).to_string(),
            format!(
                "peer sha256:{} is not among the rule's principals",
                "bb".repeat(32)
            )
        );
    }

    #[test]
    fn sources_v4_v6_and_families() {
        let mut r = allow("a");
        r.sources = Some(vec![
            cidr("10.1.0.0/16"),
            cidr("2001:db8::/32"),
            cidr("192.0.2.9/32"),
        ]);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        let at_ip = |ip: IpAddr| FlowFacts {
            source: ip,
            ..flow(0)
        };
        assert!(evaluate(&p, &at_ip(v4(10, 1, 255, 255)), &live).is_allow());
        assert!(evaluate(&p, &at_ip(v4(192, 0, 2, 9)), &live).is_allow());
        assert!(!evaluate(&p, &at_ip(v4(192, 0, 2, 10)), &live).is_allow());
        assert!(!evaluate(&p, &at_ip(v4(10, 2, 0, 0)), &live).is_allow());
        let v6: IpAddr = "2001:db8:ffff::1".parse().unwrap();
        assert!(evaluate(&p, &at_ip(v6), &live).is_allow());
        // An IPv4-mapped IPv6 address is not converted.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 0, 1).to_ipv6_mapped());
        assert!(!evaluate(&p, &at_ip(mapped), &live).is_allow());
        let m = mismatch(&p, &at_ip(v4(192, 0, 2, 10)), &live);
        assert_eq!(
            m.to_string(),
            "source 192.0.2.10 is not in the rule's networks"
        );
    }

    #[test]
    fn zero_prefix_matches_its_family_only() {
        let mut r = allow("a");
        r.sources = Some(vec![cidr("0.0.0.0/0")]);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        assert!(evaluate(
            &p,
            &FlowFacts {
                source: v4(255, 255, 255, 255),
                ..flow(0)
            },
            &live
        )
        .is_allow());
        let f = FlowFacts {
            source: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..flow(0)
        };
        assert!(!evaluate(&p, &f, &live).is_allow());
    }

    #[test]
    fn sni_exact_and_single_label_wildcard() {
        let mut r = allow("a");
        r.sni = Some(vec![
            "db.corp.example".into(),
            "*.cache.corp.example".into(),
        ]);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        let with_sni = |s: Option<&'static str>| FlowFacts { sni: s, ..flow(0) };
        let cases = [
            (Some("db.corp.example"), true),
            (Some("r1.cache.corp.example"), true),
            (Some("a.b.cache.corp.example"), false),
            (Some(".cache.corp.example"), false),
            (Some("cache.corp.example"), false),
            (Some("r1xcache.corp.example"), false),
            (Some("x.db.corp.example"), false),
            (None, false),
        ];
        for (sni, expect) in cases {
            assert_eq!(
                evaluate(&p, &with_sni(sni), &live).is_allow(),
                expect,
                "{sni:?}"
            );
        }
        assert_eq!(
            mismatch(&p, &with_sni(None), &live),
            Mismatch::Sni { got: None }
        );
        assert_eq!(
            mismatch(&p, &with_sni(Some("x.example")), &live).to_string(),
            "sni x.example is not among the rule's names"
        );
    }

    #[test]
    fn alpn() {
        let mut r = allow("a");
        r.alpn = Some(vec!["h2".into(), "postgresql".into()]);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        let with = |a: Option<&'static str>| FlowFacts { alpn: a, ..flow(0) };
        assert!(evaluate(&p, &with(Some("h2")), &live).is_allow());
        assert!(!evaluate(&p, &with(Some("http/1.1")), &live).is_allow());
        assert!(!evaluate(&p, &with(None), &live).is_allow());
        assert_eq!(
            mismatch(&p, &with(Some("http/1.1")), &live).to_string(),
            "alpn http/1.1 is not among the rule's protocols"
        );
    }

    fn schedule(days: u8, ranges: &[(u16, u16)], tz: &str) -> Schedule {
        Schedule {
            days: Weekdays(days),
            ranges: ranges
                .iter()
                .map(|&(start_minute, end_minute)| MinuteRange {
                    start_minute,
                    end_minute,
                })
                .collect(),
            time_zone: tz.to_owned(),
        }
    }

    const WEEKEND: u8 = 0b110_0000;

    #[test]
    fn schedule_days_ranges_and_end() {
        let mut r = allow("a");
        r.schedule = Some(schedule(
            WEEKEND,
            &[(9 * 60, 10 * 60 + 5), (10 * 60 + 30, 11 * 60)],
            "America/New_York",
        ));
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        // Saturday 10:05:30 is just past the first range.
        let m = mismatch(&p, &flow(SAT_NY_1005), &live);
        assert_eq!(
            m.to_string(),
            "outside the schedule: sat 10:05 in America/New_York"
        );
        // 10:04:59 is in it, and the range ends one second later.
        let t = at_ny(2026, 3, 7, 10, 4, 59);
        assert_eq!(
            evaluate(&p, &flow(t), &live),
            allowed(
                0,
                Constraints {
                    schedule_end: Some(t + 1),
                    ..Constraints::default()
                }
            )
        );
        // Second range, start boundary inclusive.
        let t = at_ny(2026, 3, 7, 10, 30, 0);
        assert_eq!(
            evaluate(&p, &flow(t), &live).constraints.schedule_end,
            Some(t + 30 * 60)
        );
        // Same wall time on a Friday is outside the days.
        let t = at_ny(2026, 3, 6, 9, 30, 0);
        assert_eq!(
            mismatch(&p, &flow(t), &live).to_string(),
            "outside the schedule: fri 09:30 in America/New_York"
        );
    }

    #[test]
    fn schedule_end_uses_offset_in_force_across_spring_forward() {
        // 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT. A range 00:00-04:00 seen
        // at 01:30 EST ends, by the offset in force at 01:30, 2.5 h later (05:00 EDT
        // real clock; the flow is re-decided then anyway).
        let mut r = allow("a");
        r.schedule = Some(schedule(0b111_1111, &[(0, 4 * 60)], "America/New_York"));
        let p = policy(vec![r]);
        let t = at_ny(2026, 3, 8, 1, 30, 0);
        let d = evaluate(&p, &flow(t), &LiveFacts::default());
        assert_eq!(d.constraints.schedule_end, Some(t + 150 * 60));
        // One hour of real time later it is 03:30 EDT, still inside.
        let d = evaluate(&p, &flow(t + 3600), &LiveFacts::default());
        assert_eq!(d.constraints.schedule_end, Some(t + 3600 + 30 * 60));
    }

    #[test]
    fn schedule_whole_day_and_half_hour_zone() {
        let mut r = allow("a");
        r.schedule = Some(schedule(1 << 2, &[(0, 1440)], "Asia/Kolkata"));
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        // Wednesday 2026-03-04 00:00 IST = Tuesday 18:30 UTC.
        let start = at(2026, 3, 4, 0, 0, 0, "Asia/Kolkata");
        assert_eq!(start % 86_400, 18 * 3600 + 30 * 60);
        assert_eq!(
            evaluate(&p, &flow(start), &live).constraints.schedule_end,
            Some(start + 86_400)
        );
        assert_eq!(
            mismatch(&p, &flow(start - 1), &live).to_string(),
            "outside the schedule: tue 23:59 in Asia/Kolkata"
        );
        assert!(!evaluate(&p, &flow(start + 86_400), &live).is_allow());
    }

    #[test]
    fn schedule_fails_closed_on_unrepresentable_instant() {
        let mut r = allow("a");
        r.schedule = Some(schedule(0b111_1111, &[(0, 1440)], "UTC"));
        let p = policy(vec![r]);
        let m = mismatch(&p, &flow(i64::MAX), &LiveFacts::default());
        assert!(matches!(m, Mismatch::ScheduleUndecidable { .. }), "{m:?}");
    }

    fn posture_live(p: DevicePosture) -> LiveFacts {
        let mut live = LiveFacts::default();
        live.posture.insert("dev1".into(), p);
        live
    }

    #[test]
    fn posture_requirements() {
        let mut r = allow("a");
        r.posture = Some(PostureRequirement {
            managed: true,
            compliant: true,
            edr_running: true,
            min_os_patch: Some(20_261_001),
        });
        let p = policy(vec![r]);
        let good = DevicePosture {
            managed: true,
            compliant: true,
            edr_running: true,
            compromised: false,
            os_patch: 20_261_001,
        };
        let f = FlowFacts {
            device_id: Some("dev1"),
            ..flow(0)
        };
        assert!(evaluate(&p, &f, &posture_live(good)).is_allow());
        let cases = [
            (
                DevicePosture {
                    compromised: true,
                    ..good
                },
                PostureFailure::Compromised {
                    device: "dev1".into(),
                },
            ),
            (
                DevicePosture {
                    managed: false,
                    ..good
                },
                PostureFailure::NotManaged,
            ),
            (
                DevicePosture {
                    compliant: false,
                    ..good
                },
                PostureFailure::NotCompliant,
            ),
            (
                DevicePosture {
                    edr_running: false,
                    ..good
                },
                PostureFailure::EdrNotRunning,
            ),
            (
                DevicePosture {
                    os_patch: 20_261_000,
                    ..good
                },
                PostureFailure::OsPatchTooOld {
                    have: 20_261_000,
                    need: 20_261_001,
                },
            ),
        ];
        for (posture, failure) in cases {
            assert_eq!(
                mismatch(&p, &f, &posture_live(posture)),
                Mismatch::Posture(failure)
            );
        }
        assert_eq!(
            mismatch(&p, &flow(0), &posture_live(good)),
            Mismatch::Posture(PostureFailure::NoDevice)
        );
        let unknown = FlowFacts {
            device_id: Some("dev2"),
            ..flow(0)
        };
        assert_eq!(
            mismatch(&p, &unknown, &posture_live(good)).to_string(),
            "no posture is known for device dev2"
        );
    }

    #[test]
    fn empty_posture_requirement_still_needs_a_known_healthy_device() {
        let mut r = allow("a");
        r.posture = Some(PostureRequirement::default());
        let p = policy(vec![r]);
        let f = FlowFacts {
            device_id: Some("dev1"),
            ..flow(0)
        };
        assert!(evaluate(&p, &f, &posture_live(DevicePosture::default())).is_allow());
        let bad = DevicePosture {
            compromised: true,
            ..DevicePosture::default()
        };
        assert!(!evaluate(&p, &f, &posture_live(bad)).is_allow());
        assert!(!evaluate(&p, &f, &LiveFacts::default()).is_allow());
    }

    #[test]
    fn risk_is_the_higher_of_identity_and_device() {
        let mut r = allow("a");
        r.max_risk = Some(40);
        let p = policy(vec![r]);
        let id = "spiffe://corp.example/a";
        let f = FlowFacts {
            device_id: Some("dev1"),
            ..with_id(flow(0), id)
        };
        let mut live = LiveFacts::default();
        assert!(
            evaluate(&p, &f, &live).is_allow(),
            "unknown risk counts as 0"
        );
        live.risk_by_id.insert(id.into(), 40);
        assert!(
            evaluate(&p, &f, &live).is_allow(),
            "the maximum itself is allowed"
        );
        live.risk_by_device.insert("dev1".into(), 70);
        let m = mismatch(&p, &f, &live);
        assert_eq!(m, Mismatch::Risk { score: 70, max: 40 });
        assert_eq!(m.to_string(), "risk score 70 is above the maximum 40");
        live.risk_by_device.insert("dev1".into(), 10);
        live.risk_by_id.insert(id.into(), 41);
        assert_eq!(
            mismatch(&p, &f, &live),
            Mismatch::Risk { score: 41, max: 40 }
        );
    }

    #[test]
    fn certificate_age() {
        let mut r = allow("a");
        r.max_cert_age_secs = Some(3600);
        let p = policy(vec![r]);
        let live = LiveFacts::default();
        let aged = |a: Option<u64>| FlowFacts {
            cert_age_secs: a,
            ..flow(0)
        };
        assert!(evaluate(&p, &aged(Some(3600)), &live).is_allow());
        assert_eq!(
            mismatch(&p, &aged(Some(3601)), &live).to_string(),
            "certificate age 3601s is above the maximum 3600s"
        );
        assert_eq!(mismatch(&p, &aged(None), &live), Mismatch::NoCertificate);
    }

    #[test]
    fn grants() {
        let mut r = allow("a");
        r.requires_grant = true;
        r.max_session_secs = Some(300);
        let p = policy(vec![r]);
        let id = "spiffe://corp.example/oncall";
        let f = with_id(flow(1000), id);
        let mut live = LiveFacts::default();
        assert_eq!(
            mismatch(&p, &f, &live).to_string(),
            "no grant for spiffe://corp.example/oncall on redis"
        );
        live.grants
            .entry("redis".into())
            .or_default()
            .insert(id.into(), 1000);
        assert_eq!(
            mismatch(&p, &f, &live),
            Mismatch::GrantExpired { end: 1000 }
        );
        live.grants
            .entry("redis".into())
            .or_default()
            .insert(id.into(), 1001);
        assert_eq!(
            evaluate(&p, &f, &live),
            allowed(
                0,
                Constraints {
                    grant_end: Some(1001),
                    schedule_end: None,
                    max_session_secs: Some(300)
                }
            )
        );
        // A grant on another service does not count, nor does a flow without a SPIFFE ID.
        let other = FlowFacts { service: "pg", ..f };
        let mut r2 = Rule::new("b", Action::Allow, named("pg"));
        r2.requires_grant = true;
        let p2 = policy(vec![r2]);
        assert!(!evaluate(&p2, &other, &live).is_allow());
        assert_eq!(
            mismatch(&p, &flow(1000), &live),
            Mismatch::NoGrant {
                spiffe_id: None,
                service: "redis".into()
            }
        );
    }

    #[test]
    fn constraints_come_from_the_deciding_rule_only() {
        let id = "spiffe://corp.example/oncall";
        let mut a0 = allow("a0");
        a0.sources = Some(vec![cidr("192.0.2.0/24")]);
        a0.max_session_secs = Some(1);
        let mut a1 = allow("a1");
        a1.requires_grant = true;
        a1.schedule = Some(schedule(0b111_1111, &[(0, 1440)], "UTC"));
        let mut a2 = allow("a2");
        a2.max_session_secs = Some(7);
        let p = policy(vec![a0, a1, a2]);
        let mut live = LiveFacts::default();
        let t = 86_400 * 3 + 100;
        live.grants
            .entry("redis".into())
            .or_default()
            .insert(id.into(), t + 5000);
        let d = evaluate(&p, &with_id(flow(t), id), &live);
        assert_eq!(
            d,
            allowed(
                1,
                Constraints {
                    grant_end: Some(t + 5000),
                    schedule_end: Some(86_400 * 4),
                    max_session_secs: None
                }
            )
        );
    }

    #[test]
    fn first_failing_condition_is_reported() {
        let mut r = allow("a");
        r.sources = Some(vec![cidr("192.0.2.0/24")]);
        r.alpn = Some(vec!["h2".into()]);
        r.max_cert_age_secs = Some(1);
        let p = policy(vec![r]);
        let m = mismatch(&p, &flow(0), &LiveFacts::default());
        assert_eq!(
            m,
            Mismatch::Source {
                ip: v4(10, 1, 2, 3)
            }
        );
    }
}
