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
