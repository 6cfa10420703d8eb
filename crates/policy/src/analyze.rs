//! Stage 3: warnings about a valid policy that probably does not say what was meant.
//!
//! Every check is conservative: it only warns when the finding is certain. Coverage
//! ("every flow rule A matches, rule B matches too") is decided field by field, and a
//! field counts as covered only when B's set plainly contains A's set; unions that
//! happen to cover (two deny CIDRs adding up to an allow CIDR, say) are not detected.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::error::{Warning, WarningKind};
use crate::load::is_anyone;
use crate::model::{
    Action, Cidr, PostureRequirement, Principal, Rule, Schedule, ServiceDecl, ServiceSelector,
};

/// Most deny-covers-allow comparisons one analysis makes. Each is cheap, but a policy
/// with tens of thousands of allow and deny rules on one service would otherwise take
/// minutes; past this budget the shadow check stops (it can only miss warnings, never
/// invent one).
const MAX_COVER_CHECKS: usize = 20_000_000;

/// Runs every analysis over the rules, in rule order.
pub(crate) fn analyze(rules: &[Rule], services: &[ServiceDecl]) -> Vec<Warning> {
    // Deny rules by service: a deny covering an allow on `Named(names)` either applies
    // to every service or lists `names[0]`.
    let mut denies_any = Vec::new();
    let mut denies_by_service: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        if r.action != Action::Deny {
            continue;
        }
        match &r.services {
            ServiceSelector::Any => denies_any.push(i),
            ServiceSelector::Named(names) => {
                for n in names {
                    denies_by_service.entry(n.as_str()).or_default().push(i);
                }
            }
        }
    }
    let sensitive: HashSet<&str> = services
        .iter()
        .filter(|s| s.sensitive)
        .map(|s| s.name.as_str())
        .collect();
    let mut first_with: HashMap<Conditions<'_>, usize> = HashMap::new();
    let mut budget = MAX_COVER_CHECKS;
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let warn = |kind| Warning {
            origin: rule.origin.clone(),
            rule_id: Some(rule.id.clone()),
            kind,
        };
        if rule.action == Action::Allow {
            let mut candidates: Vec<usize> = denies_any.clone();
            if let ServiceSelector::Named(names) = &rule.services {
                if let Some(list) = names
                    .first()
                    .and_then(|n| denies_by_service.get(n.as_str()))
                {
                    candidates.extend(list);
                }
            }
            candidates.sort_unstable();
            let deny = candidates.iter().filter_map(|d| rules.get(*d)).find(|d| {
                if budget == 0 {
                    return false;
                }
                budget -= 1;
                covers(d, rule)
            });
            if let Some(deny) = deny {
                out.push(warn(WarningKind::ShadowedByDeny {
                    rule: rule.id.clone(),
                    deny: deny.id.clone(),
                    deny_origin: deny.origin.clone(),
                }));
            }
        }
        let earlier = *first_with.entry(Conditions::of(rule)).or_insert(i);
        if earlier != i {
            if let Some(earlier) = rules.get(earlier) {
                out.push(warn(WarningKind::Duplicate {
                    rule: rule.id.clone(),
                    earlier: earlier.id.clone(),
                    earlier_origin: earlier.origin.clone(),
                }));
            }
        }
        if let Some((service, breadth)) = broad_on_sensitive(rule, services, &sensitive) {
            out.push(warn(WarningKind::BroadOnSensitive {
                rule: rule.id.clone(),
                service,
                breadth,
            }));
        }
    }
    out
}

/// Whether every flow that `allow` matches is also matched by `deny`. Allow-only
/// constraints (posture, risk, certificate age, grants) only narrow `allow`, so they
/// do not affect the answer.
pub(crate) fn covers(deny: &Rule, allow: &Rule) -> bool {
    covers_services(&deny.services, &allow.services)
        && covers_principals(deny.principals.as_deref(), allow.principals.as_deref())
        && covers_sources(deny.sources.as_deref(), allow.sources.as_deref())
        && covers_set(deny.sni.as_deref(), allow.sni.as_deref(), sni_covers)
        && covers_set(deny.alpn.as_deref(), allow.alpn.as_deref(), |d, a| d == a)
        && covers_schedule(deny.schedule.as_ref(), allow.schedule.as_ref())
}

fn covers_services(d: &ServiceSelector, a: &ServiceSelector) -> bool {
    match (d, a) {
        (ServiceSelector::Any, _) => true,
        (ServiceSelector::Named(_), ServiceSelector::Any) => false,
        (ServiceSelector::Named(d), ServiceSelector::Named(a)) => a.iter().all(|s| d.contains(s)),
    }
}

fn covers_principals(d: Option<&[Principal]>, a: Option<&[Principal]>) -> bool {
    if is_anyone(d) {
        return true;
    }
    match (d, a) {
        (Some(d), Some(a)) if !is_anyone(Some(a)) => a
            .iter()
            .all(|ap| d.iter().any(|dp| principal_covers(dp, ap))),
        _ => false,
    }
}

/// Whether every peer `a` names is also named by `d`.
pub(crate) fn principal_covers(d: &Principal, a: &Principal) -> bool {
    match (d, a) {
        (Principal::Any, _) => true,
        // Strictly below `x`: `y` must extend `x` by at least one segment.
        (Principal::SpiffeUnder(x), Principal::SpiffeExact(y)) => {
            x.trust_domain == y.trust_domain
                && y.segments.len() > x.segments.len()
                && y.segments.starts_with(&x.segments)
        }
        // Everything strictly below `y` is strictly below `x` when `y` is at or below `x`.
        (Principal::SpiffeUnder(x), Principal::SpiffeUnder(y)) => {
            x.trust_domain == y.trust_domain && y.segments.starts_with(&x.segments)
        }
        // A name in any trust domain covers the same name in one.
        (Principal::DnsSan(x), Principal::DnsSanIn { name: y, .. })
        | (Principal::CommonName(x), Principal::CommonNameIn { name: y, .. }) => x == y,
        _ => d == a,
    }
}

fn cidr_covers(d: &Cidr, a: &Cidr) -> bool {
    d.prefix_len <= a.prefix_len && d.contains(a.addr)
}

fn covers_sources(d: Option<&[Cidr]>, a: Option<&[Cidr]>) -> bool {
    match (d, a) {
        (None, _) => true,
        (Some(d), None) => {
            // Every source is IPv4 or IPv6; both default routes cover them all.
            let all4 = d.iter().any(|c| c.addr.is_ipv4() && c.prefix_len == 0);
            let all6 = d.iter().any(|c| c.addr.is_ipv6() && c.prefix_len == 0);
            all4 && all6
        }
        (Some(d), Some(a)) => a.iter().all(|ac| d.iter().any(|dc| cidr_covers(dc, ac))),
    }
}

/// Set coverage for optional lists where `None` means "anything, including nothing".
fn covers_set(
    d: Option<&[String]>,
    a: Option<&[String]>,
    item_covers: impl Fn(&str, &str) -> bool,
) -> bool {
    match (d, a) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(d), Some(a)) => a.iter().all(|ai| d.iter().any(|di| item_covers(di, ai))),
    }
}

/// Whether SNI entry `d` matches every name SNI entry `a` matches.
fn sni_covers(d: &str, a: &str) -> bool {
    if d == a {
        return true;
    }
    // `*.x` matches exactly one extra label in front of `x`.
    match (d.strip_prefix("*."), a.split_once('.')) {
        (Some(suffix), Some((label, rest))) => rest == suffix && !label.is_empty() && label != "*",
        _ => false,
    }
}

fn covers_schedule(d: Option<&Schedule>, a: Option<&Schedule>) -> bool {
    match (d, a) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(d), Some(a)) => {
            d.time_zone == a.time_zone
                && a.days.0 & !d.days.0 == 0
                && a.ranges.iter().all(|ar| {
                    d.ranges.iter().any(|dr| {
                        dr.start_minute <= ar.start_minute && ar.end_minute <= dr.end_minute
                    })
                })
        }
    }
}

/// A schedule as a hashable value: day bits, minute ranges, time zone.
type ScheduleKey<'r> = (u8, Vec<(u16, u16)>, &'r str);

/// Everything that decides whether a rule matches, plus its action, as sets: two
/// rules with equal `Conditions` match exactly the same flows under the same
/// conditions. Ids, origins, `max_session` (applied after the match) and
/// `acknowledge_broad` are left out.
#[derive(PartialEq, Eq, Hash)]
struct Conditions<'r> {
    action: Action,
    /// `None` = every service.
    services: Option<BTreeSet<&'r str>>,
    /// `None` = anyone.
    principals: Option<BTreeSet<&'r Principal>>,
    sources: Option<BTreeSet<&'r Cidr>>,
    sni: Option<BTreeSet<&'r str>>,
    alpn: Option<BTreeSet<&'r str>>,
    schedule: Option<ScheduleKey<'r>>,
    posture: Option<PostureRequirement>,
    max_risk: Option<u8>,
    max_cert_age_secs: Option<u64>,
    requires_grant: bool,
}

impl<'r> Conditions<'r> {
    fn of(r: &'r Rule) -> Conditions<'r> {
        let strs = |v: &'r Option<Vec<String>>| {
            v.as_ref()
                .map(|v| v.iter().map(String::as_str).collect::<BTreeSet<_>>())
        };
        Conditions {
            action: r.action,
            services: match &r.services {
                ServiceSelector::Any => None,
                ServiceSelector::Named(n) => Some(n.iter().map(String::as_str).collect()),
            },
            principals: if is_anyone(r.principals.as_deref()) {
                None
            } else {
                r.principals.as_ref().map(|v| v.iter().collect())
            },
            sources: r.sources.as_ref().map(|v| v.iter().collect()),
            sni: strs(&r.sni),
            alpn: strs(&r.alpn),
            schedule: r.schedule.as_ref().map(|s| {
                (
                    s.days.0,
                    s.ranges
                        .iter()
                        .map(|m| (m.start_minute, m.end_minute))
                        .collect(),
                    s.time_zone.as_str(),
                )
            }),
            posture: r.posture,
            max_risk: r.max_risk,
            max_cert_age_secs: r.max_cert_age_secs,
            requires_grant: r.requires_grant,
        }
    }
}

/// For an unacknowledged allow rule admitting anyone, or a whole trust domain, to a
/// sensitive service: that service and a description of who is admitted.
fn broad_on_sensitive(
    rule: &Rule,
    services: &[ServiceDecl],
    sensitive: &HashSet<&str>,
) -> Option<(String, String)> {
    if rule.action != Action::Allow || rule.acknowledge_broad {
        return None;
    }
    let service = match &rule.services {
        ServiceSelector::Any => services.iter().find(|s| s.sensitive)?.name.as_str(),
        ServiceSelector::Named(names) => names
            .iter()
            .find(|n| sensitive.contains(n.as_str()))?
            .as_str(),
    };
    let breadth = if is_anyone(rule.principals.as_deref()) {
        "anyone".to_owned()
    } else {
        let td = rule.principals.as_deref()?.iter().find_map(|p| match p {
            Principal::SpiffeUnder(id) if id.segments.is_empty() => Some(&id.trust_domain),
            _ => None,
        })?;
        format!("every workload in trust domain `{td}`")
    };
    Some((service.to_owned(), breadth))
}
