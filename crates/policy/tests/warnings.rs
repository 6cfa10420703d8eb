//! Every warning class, with its full message, and policies that must not warn.

#![expect(
    clippy::panic,
    reason = "test helpers fail the test with the policy errors in the message"
)]

use zgate_policy::{parse_policy, Checked, SourceFile, WarningKind};

fn check(text: &str) -> Checked {
    match parse_policy(&[SourceFile {
        name: "p.toml".to_owned(),
        text: text.to_owned(),
    }]) {
        Ok(c) => c,
        Err(e) => panic!("policy should be valid:\n{e}"),
    }
}

fn warnings(text: &str) -> Vec<String> {
    check(text)
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// `[[rule]]` with the given id, action, services line and extra lines.
fn rule(id: &str, action: &str, services: &str, extra: &str) -> String {
    format!("[[rule]]\nid = \"{id}\"\naction = \"{action}\"\nservices = {services}\n{extra}\n")
}

#[test]
fn allow_shadowed_by_broader_deny() {
    let text = [
        rule(
            "a1",
            "allow",
            "[\"redis\"]",
            "principals = [\"spiffe://ex.org/ns/trading/desk1\", \"spiffe://ex.org/ns/trading/sub/*\"]\n\
             sources = [\"10.20.30.0/24\"]\nsni = [\"redis.trading.ex.org\"]\nalpn = [\"redis\"]\n\
             schedule = { days = [\"mon-fri\"], hours = [\"09:00-12:00\"], time_zone = \"UTC\" }\n\
             posture = { managed = true }\nmax_risk = 10\nrequires_grant = true",
        ),
        // Later in the file, and still wins: deny beats allow wherever it is.
        rule(
            "d1",
            "deny",
            "[\"redis\", \"pg\"]",
            "principals = [\"spiffe://ex.org/ns/trading/*\"]\nsources = [\"10.20.0.0/16\"]\n\
             sni = [\"*.trading.ex.org\"]\nalpn = [\"redis\", \"h2\"]\n\
             schedule = { days = [\"mon-sun\"], hours = [\"08:00-18:00\"], time_zone = \"UTC\" }",
        ),
    ]
    .concat();
    let c = check(&text);
    assert_eq!(
        c.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec!["p.toml:1:1: warning: allow rule `a1` never takes effect: deny rule `d1` at p.toml:13:1 matches every flow it matches"]
    );
    assert_eq!(c.warnings[0].rule_id.as_deref(), Some("a1"));
    assert!(matches!(
        c.warnings[0].kind,
        WarningKind::ShadowedByDeny { .. }
    ));
    // The rule still exists: a warning does not change the policy.
    assert_eq!(c.policy.rules.len(), 2);
}

#[test]
fn allow_shadowed_by_unconstrained_deny() {
    let text = [
        rule("d", "deny", "[\"*\"]", ""),
        rule("a", "allow", "[\"redis\"]", "principals = [\"*\"]"),
    ]
    .concat();
    assert_eq!(
        warnings(&text),
        vec!["p.toml:6:1: warning: allow rule `a` never takes effect: deny rule `d` at p.toml:1:1 matches every flow it matches"]
    );
}

#[test]
fn duplicate_of_earlier_rule() {
    let text = [
        rule(
            "first",
            "allow",
            "[\"redis\", \"pg\"]",
            "principals = [\"cn:a\", \"cn:b\"]\nmax_session = \"1h\"",
        ),
        // Same match conditions in another order; max_session applies after the match.
        rule(
            "second",
            "allow",
            "[\"pg\", \"redis\"]",
            "principals = [\"cn:b\", \"cn:a\"]\nmax_session = \"8h\"",
        ),
    ]
    .concat();
    assert_eq!(
        warnings(&text),
        vec!["p.toml:7:1: warning: rule `second` matches exactly what earlier rule `first` at p.toml:1:1 matches, so it is never named in a decision"]
    );
}

#[test]
fn rule_over_empty_groups_never_matches_and_is_left_out() {
    let text = format!(
        "[[group]]\nname = \"nobody\"\nmembers = []\n[[group]]\nname = \"also-nobody\"\nmembers = [\"group:nobody\"]\n{}{}",
        rule(
            "ghost",
            "allow",
            "[\"redis\"]",
            "principals = [\"group:nobody\", \"group:also-nobody\"]"
        ),
        rule("real", "allow", "[\"redis\"]", "principals = [\"cn:a\", \"group:nobody\"]"),
    );
    let c = check(&text);
    assert_eq!(
        c.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec!["p.toml:7:1: warning: rule `ghost` can never match: its principals only name groups with no members (`group:nobody`, `group:also-nobody`); it is left out of the policy"]
    );
    let ids: Vec<&str> = c.policy.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["real"]);
}

#[test]
fn broad_allow_on_sensitive_service() {
    let text = [
        "[[service]]\nname = \"redis-trading\"\nsensitive = true\n[[service]]\nname = \"web\"\n"
            .to_owned(),
        rule("anyone", "allow", "[\"redis-trading\"]", ""),
        rule(
            "whole-td",
            "allow",
            "[\"redis-trading\"]",
            "principals = [\"spiffe://ex.org/*\"]\nsources = [\"10.0.0.0/8\"]",
        ),
        rule(
            "everywhere",
            "allow",
            "[\"*\"]",
            "principals = [\"*\"]\nsni = [\"a.ex.org\"]",
        ),
        // Not broad, acknowledged, not sensitive, or a deny: no warning.
        rule(
            "narrow",
            "allow",
            "[\"redis-trading\"]",
            "principals = [\"spiffe://ex.org/ns/*\"]",
        ),
        rule(
            "acked",
            "allow",
            "[\"redis-trading\"]",
            "alpn = [\"redis\"]\nacknowledge_broad = true",
        ),
        rule("web-open", "allow", "[\"web\"]", "alpn = [\"h2\"]"),
        rule(
            "deny-all",
            "deny",
            "[\"redis-trading\"]",
            "sources = [\"192.0.2.0/24\"]",
        ),
    ]
    .concat();
    assert_eq!(
        warnings(&text),
        vec![
            "p.toml:6:1: warning: allow rule `anyone` admits anyone to sensitive service `redis-trading`; narrow `principals` or set `acknowledge_broad = true`",
            "p.toml:11:1: warning: allow rule `whole-td` admits every workload in trust domain `ex.org` to sensitive service `redis-trading`; narrow `principals` or set `acknowledge_broad = true`",
            "p.toml:17:1: warning: allow rule `everywhere` admits anyone to sensitive service `redis-trading`; narrow `principals` or set `acknowledge_broad = true`",
        ]
    );
}

/// Policies where a careless analysis would warn, and must not.
#[test]
fn no_false_warnings() {
    let cases: Vec<(&str, String)> = vec![
        (
            "deny narrower in sources",
            [
                rule("a", "allow", "[\"redis\"]", "sources = [\"10.0.0.0/8\"]"),
                rule("d", "deny", "[\"redis\"]", "sources = [\"10.1.0.0/16\"]"),
            ]
            .concat(),
        ),
        (
            "deny names an exact id, allow a subtree",
            [
                rule("a", "allow", "[\"redis\"]", "principals = [\"spiffe://ex.org/ns/*\"]"),
                rule("d", "deny", "[\"redis\"]", "principals = [\"spiffe://ex.org/ns/x\"]"),
            ]
            .concat(),
        ),
        (
            "under does not cover the id it is under",
            [
                rule("a", "allow", "[\"redis\"]", "principals = [\"spiffe://ex.org/ns\"]"),
                rule("d", "deny", "[\"redis\"]", "principals = [\"spiffe://ex.org/ns/*\"]"),
            ]
            .concat(),
        ),
        (
            "segment prefix is not a string prefix",
            [
                rule("a", "allow", "[\"redis\"]", "principals = [\"spiffe://ex.org/nsx/a\"]"),
                rule("d", "deny", "[\"redis\"]", "principals = [\"spiffe://ex.org/ns/*\"]"),
            ]
            .concat(),
        ),
        (
            "deny constrains sni, allow does not (flows without sni)",
            [
                rule("a", "allow", "[\"redis\"]", ""),
                rule("d", "deny", "[\"redis\"]", "sni = [\"*.ex.org\"]"),
            ]
            .concat(),
        ),
        (
            "sni wildcard matches one label only",
            [
                rule("a", "allow", "[\"redis\"]", "sni = [\"a.b.ex.org\"]"),
                rule("d", "deny", "[\"redis\"]", "sni = [\"*.ex.org\"]"),
            ]
            .concat(),
        ),
        (
            "deny schedule narrower",
            [
                rule(
                    "a",
                    "allow",
                    "[\"redis\"]",
                    "schedule = { days = [\"mon-fri\"], hours = [\"09:00-17:00\"], time_zone = \"UTC\" }",
                ),
                rule(
                    "d",
                    "deny",
                    "[\"redis\"]",
                    "schedule = { days = [\"mon-fri\"], hours = [\"12:00-13:00\"], time_zone = \"UTC\" }",
                ),
            ]
            .concat(),
        ),
        (
            "same hours in another time zone",
            [
                rule(
                    "a",
                    "allow",
                    "[\"redis\"]",
                    "schedule = { days = [\"mon\"], hours = [\"09:00-17:00\"], time_zone = \"UTC\" }",
                ),
                rule(
                    "d",
                    "deny",
                    "[\"redis\"]",
                    "schedule = { days = [\"mon\"], hours = [\"09:00-17:00\"], time_zone = \"Europe/London\" }",
                ),
            ]
            .concat(),
        ),
        (
            "deny on another service; allow on every service",
            [
                rule("a", "allow", "[\"*\"]", "principals = [\"cn:x\"]"),
                rule("d", "deny", "[\"redis\", \"pg\"]", "principals = [\"cn:x\"]"),
            ]
            .concat(),
        ),
        (
            "deny covers only part of the allow's principals",
            [
                rule("a", "allow", "[\"redis\"]", "principals = [\"cn:x\", \"cn:y\"]"),
                rule("d", "deny", "[\"redis\"]", "principals = [\"cn:x\"]"),
            ]
            .concat(),
        ),
        (
            "deny v4 default route does not cover v6 sources",
            [
                rule("a", "allow", "[\"redis\"]", ""),
                rule("d", "deny", "[\"redis\"]", "sources = [\"0.0.0.0/0\"]"),
            ]
            .concat(),
        ),
        (
            "same matchers, different constraints: both can be named",
            [
                // Narrowest first: each can match a flow the earlier ones do not.
                rule("a", "allow", "[\"redis\"]", "posture = { managed = true }"),
                rule("c", "allow", "[\"redis\"]", "max_risk = 10"),
                rule("e", "allow", "[\"redis\"]", "requires_grant = true"),
                rule("b", "allow", "[\"redis\"]", ""),
            ]
            .concat(),
        ),
        (
            "same matchers, different action",
            [
                rule("a", "allow", "[\"redis\"]", "principals = [\"cn:x\"]\nsources = [\"10.0.0.0/8\"]"),
                rule("d", "deny", "[\"redis\"]", "principals = [\"cn:x\"]\nsources = [\"10.0.0.0/9\"]"),
            ]
            .concat(),
        ),
        (
            "dns principal is not a cn principal",
            [
                rule("a", "allow", "[\"redis\"]", "principals = [\"dns:x.ex.org\"]"),
                rule("d", "deny", "[\"redis\"]", "principals = [\"cn:x.ex.org\"]"),
            ]
            .concat(),
        ),
    ];
    for (what, text) in cases {
        assert_eq!(warnings(&text), Vec::<String>::new(), "{what}");
    }
}

#[test]
fn full_coverage_by_both_default_routes_and_anyone() {
    let text = [
        rule("a", "allow", "[\"redis\"]", "principals = [\"cn:x\"]"),
        rule(
            "d",
            "deny",
            "[\"*\"]",
            "sources = [\"0.0.0.0/0\", \"::/0\"]\nprincipals = [\"*\"]",
        ),
    ]
    .concat();
    assert_eq!(
        warnings(&text),
        vec!["p.toml:1:1: warning: allow rule `a` never takes effect: deny rule `d` at p.toml:6:1 matches every flow it matches"]
    );
}
