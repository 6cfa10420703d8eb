//! Human reports of decisions: `explain` and the per-case report of `test`.
//!
//! The enforced answer comes from the compiled table, the same code the dataplane
//! runs. The reference evaluator runs beside it to say why each other rule did not
//! match; if the two ever disagree the report says so loudly and `test` fails,
//! because that is a compiler bug, not a policy bug.

use std::fmt::Write as _;

use zgate_policy::model::Policy;
use zgate_table::reference;
use zgate_table::{Constraints, DecidedBy, Decision, DecisionTable, LiveFacts, Verdict};

use crate::cases::{Case, FlowSpec};

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
    }
}

fn instant(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |ts| ts.to_string())
}

fn describe_rule(policy: &Policy, table: &DecisionTable, by: DecidedBy) -> String {
    match by {
        DecidedBy::Rule(i) => {
            let origin = usize::try_from(i)
                .ok()
                .and_then(|i| policy.rules.get(i))
                .map(|r| format!(" ({})", r.origin))
                .unwrap_or_default();
            format!("{}{origin}", table.decided_by_name(by))
        }
        _ => table.decided_by_name(by).to_string(),
    }
}

/// `5400` -> `1h30m`: the way durations are written in policy.
fn human_duration(mut secs: u64) -> String {
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            let _ = write!(out, "{}{unit}", secs / size);
            secs %= size;
        }
    }
    out
}

fn describe_limits(c: &Constraints) -> String {
    let mut parts = Vec::new();
    if let Some(t) = c.schedule_end {
        parts.push(format!("schedule window ends {}", instant(t)));
    }
    if let Some(t) = c.grant_end {
        parts.push(format!("grant ends {}", instant(t)));
    }
    if let Some(s) = c.max_session_secs {
        parts.push(format!("max session {}", human_duration(s)));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join("; ")
    }
}

fn describe_flow(spec: &FlowSpec) -> String {
    let mut s = format!("service `{}` from {}", spec.service, spec.source);
    match &spec.spiffe_id {
        Some(id) => {
            let _ = write!(s, ", principal {id}");
        }
        None if spec.dns_sans.is_empty() && spec.common_name.is_none() => {
            s.push_str(", no client certificate");
        }
        None => {}
    }
    for d in &spec.dns_sans {
        let _ = write!(s, ", dns:{d}");
    }
    if let Some(cn) = &spec.common_name {
        let _ = write!(s, ", cn:{cn}");
    }
    if let Some(sni) = &spec.sni {
        let _ = write!(s, ", sni {sni}");
    }
    if let Some(alpn) = &spec.alpn {
        let _ = write!(s, ", alpn {alpn}");
    }
    if let Some(dev) = &spec.device_id {
        let _ = write!(s, ", device {dev}");
    }
    let _ = write!(s, ", at {}", instant(spec.now));
    s
}

/// Decides `spec` with the compiled table and explains it with the reference
/// evaluator; returns the printable report.
pub fn explain(
    policy: &Policy,
    table: &DecisionTable,
    spec: &FlowSpec,
    live: &LiveFacts,
) -> String {
    let (enforced, explanation) = spec.with_facts(|facts| {
        (
            table.decide(facts, live),
            reference::explain(policy, facts, live),
        )
    });
    let mut out = String::new();
    let _ = writeln!(out, "flow:       {}", describe_flow(spec));
    let _ = writeln!(out, "decision:   {}", verdict_word(enforced.verdict));
    let _ = writeln!(
        out,
        "decided by: {}",
        describe_rule(policy, table, enforced.decided_by)
    );
    let _ = writeln!(out, "reason:     {}", enforced.reason.as_str());
    if enforced.is_allow() {
        let _ = writeln!(
            out,
            "limits:     {}",
            describe_limits(&enforced.constraints)
        );
    }
    if explanation.decision != enforced {
        let _ = writeln!(
            out,
            "INTERNAL ERROR: the reference evaluator decides {:?}; please report this policy and flow",
            explanation.decision
        );
    }
    if explanation.rules.is_empty() {
        let _ = writeln!(out, "no rule applies to service `{}`", spec.service);
        return out;
    }
    let _ = writeln!(out, "candidate rules, in order:");
    for trace in &explanation.rules {
        let Some(rule) = usize::try_from(trace.index)
            .ok()
            .and_then(|i| policy.rules.get(i))
        else {
            continue;
        };
        let action = match rule.action {
            zgate_policy::model::Action::Allow => "allow",
            zgate_policy::model::Action::Deny => "deny",
        };
        let decisive = enforced.decided_by == DecidedBy::Rule(trace.index);
        match &trace.outcome {
            Ok(()) => {
                let note = if decisive { "  <- decides" } else { "" };
                let _ = writeln!(
                    out,
                    "  matched      {action:5} {} ({}){note}",
                    rule.id, rule.origin
                );
            }
            Err(mismatch) => {
                let _ = writeln!(
                    out,
                    "  not matched  {action:5} {} ({}): {mismatch}",
                    rule.id, rule.origin
                );
            }
        }
    }
    out
}

/// Runs one test case; on failure returns a diff-like report.
pub fn run_case(policy: &Policy, table: &DecisionTable, case: &Case) -> Result<(), String> {
    let (enforced, reference_decision): (Decision, Decision) = case.flow.with_facts(|facts| {
        (
            table.decide(facts, &case.live),
            reference::evaluate(policy, facts, &case.live),
        )
    });
    let actual_rule = table.decided_by_name(enforced.decided_by);
    let verdict_ok = enforced.verdict == case.expect;
    let rule_ok = case.rule.as_deref().is_none_or(|r| r == actual_rule);
    let agree = enforced == reference_decision;
    if verdict_ok && rule_ok && agree {
        return Ok(());
    }
    let mut out = String::new();
    let expected_rule = case
        .rule
        .as_deref()
        .map(|r| format!(" by {r}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  - expected: {}{expected_rule}",
        verdict_word(case.expect)
    );
    let _ = writeln!(
        out,
        "  + actual:   {} by {} ({})",
        verdict_word(enforced.verdict),
        actual_rule,
        enforced.reason.as_str()
    );
    if !agree {
        let _ = writeln!(
            out,
            "  ! INTERNAL ERROR: the reference evaluator decides {reference_decision:?}"
        );
    }
    let report = explain(policy, table, &case.flow, &case.live);
    for line in report.lines() {
        let _ = writeln!(out, "    {line}");
    }
    Err(out)
}
