//! Unit tests of the compiled table. Every decision a test checks is also checked
//! against the reference evaluator and against a decoded copy of the table, so each
//! case tests compile, decide, encode/decode and the reference at once.

mod decide;
mod format;
mod reference_eval;

use std::net::{IpAddr, Ipv4Addr};

use zgate_policy::model::{
    Action, Cidr, MinuteRange, Policy, Rule, Schedule, ServiceSelector, SpiffeId, Weekdays,
};

use crate::{
    reference, Constraints, DecidedBy, Decision, DecisionTable, FlowFacts, LiveFacts, PeerIdentity,
    Reason, Verdict,
};

pub(crate) fn policy(rules: Vec<Rule>) -> Policy {
    Policy {
        groups: Vec::new(),
        services: Vec::new(),
        rules,
        source_hash: [7; 32],
    }
}

pub(crate) fn named(names: &[&str]) -> ServiceSelector {
    ServiceSelector::Named(names.iter().map(|s| (*s).to_owned()).collect())
}

pub(crate) fn allow(id: &str) -> Rule {
    Rule::new(id, Action::Allow, named(&["redis"]))
}

pub(crate) fn deny(id: &str) -> Rule {
    Rule::new(id, Action::Deny, named(&["redis"]))
}

pub(crate) fn sid(s: &str) -> SpiffeId {
    let rest = s.strip_prefix("spiffe://").unwrap();
    let mut parts = rest.split('/');
    SpiffeId {
        trust_domain: parts.next().unwrap().to_owned(),
        segments: parts.map(str::to_owned).collect(),
    }
}

pub(crate) fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

pub(crate) fn cidr(s: &str) -> Cidr {
    let (a, p) = s.split_once('/').unwrap();
    Cidr {
        addr: a.parse().unwrap(),
        prefix_len: p.parse().unwrap(),
    }
}

pub(crate) fn schedule(days: u8, ranges: &[(u16, u16)], tz: &str) -> Schedule {
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

pub(crate) fn flow(now: i64) -> FlowFacts<'static> {
    FlowFacts::plain("redis", v4(10, 1, 2, 3), now)
}

pub(crate) fn with_id<'a>(f: FlowFacts<'a>, id: &'a str) -> FlowFacts<'a> {
    FlowFacts {
        identity: Some(PeerIdentity {
            spiffe_id: Some(id),
            ..PeerIdentity::default()
        }),
        ..f
    }
}

pub(crate) fn allowed(index: u32, constraints: Constraints) -> Decision {
    Decision {
        verdict: Verdict::Allow,
        decided_by: DecidedBy::Rule(index),
        reason: Reason::AllowedByRule,
        constraints,
    }
}

pub(crate) fn denied(index: u32) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        decided_by: DecidedBy::Rule(index),
        reason: Reason::DeniedByRule,
        constraints: Constraints::default(),
    }
}

/// A table plus its decoded twin and the policy, checked against each other.
pub(crate) struct Fixture {
    pub policy: Policy,
    pub table: DecisionTable,
    pub decoded: DecisionTable,
}

impl Fixture {
    pub(crate) fn new(rules: Vec<Rule>) -> Fixture {
        let policy = policy(rules);
        let table = DecisionTable::compile(&policy, 42).unwrap();
        let decoded = DecisionTable::decode(&table.encode()).unwrap();
        Fixture {
            policy,
            table,
            decoded,
        }
    }

    /// Decide with the table; assert the decoded table and the reference agree.
    pub(crate) fn decide(&self, f: &FlowFacts<'_>, live: &LiveFacts) -> Decision {
        let d = self.table.decide(f, live);
        assert_eq!(d, self.decoded.decide(f, live), "decoded table differs");
        assert_eq!(
            d,
            reference::evaluate(&self.policy, f, live),
            "reference differs"
        );
        d
    }
}
