//! The checked-in fuzz corpus doubles as example policies: each parses as documented.
//! `complete.toml` is the complete example in `docs/policy.md`.

#![expect(
    clippy::panic,
    reason = "test helpers fail the test with the policy errors in the message"
)]

use zgate_policy::{parse_policy, Checked, SourceFile};

fn check(files: Vec<SourceFile>) -> Checked {
    match parse_policy(&files) {
        Ok(c) => c,
        Err(e) => panic!("corpus policy should be valid:\n{e}"),
    }
}

fn one(text: &str) -> Checked {
    check(vec![SourceFile {
        name: "policy.toml".to_owned(),
        text: text.to_owned(),
    }])
}

#[test]
fn complete_example_is_valid_and_clean() {
    let c = one(include_str!("../fuzz/corpus/parse_policy/complete.toml"));
    assert_eq!(c.warnings, vec![]);
    let ids: Vec<&str> = c.policy.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "block-quarantine-net",
            "desk-reads-redis",
            "oncall-break-glass",
            "feeders-publish"
        ]
    );
    // group:trading-desk = the trading subtree plus ops' three members.
    assert_eq!(c.policy.rules[1].principals.as_ref().map(Vec::len), Some(4));
}

#[test]
fn small_example_is_valid() {
    let c = one(include_str!("../fuzz/corpus/parse_policy/small.toml"));
    assert_eq!(c.policy.rules.len(), 2);
    assert_eq!(c.warnings, vec![]);
}

#[test]
fn two_file_input_is_valid() {
    let raw = include_str!("../fuzz/corpus/parse_policy/two_files.bin");
    let (a, b) = raw.split_once('\0').unwrap_or((raw, ""));
    let c = check(vec![
        SourceFile {
            name: "a.toml".into(),
            text: a.into(),
        },
        SourceFile {
            name: "b.toml".into(),
            text: b.into(),
        },
    ]);
    assert_eq!(c.policy.groups.len(), 2);
    assert_eq!(c.policy.rules[0].principals.as_ref().map(Vec::len), Some(2));
}

#[test]
fn warnings_example_warns_three_times() {
    let c = one(include_str!("../fuzz/corpus/parse_policy/warnings.toml"));
    let lines: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec![
            "policy.toml:9:1: warning: allow rule `everyone-vault` admits anyone to sensitive service `vault`; narrow `principals` or set `acknowledge_broad = true`",
            "policy.toml:20:1: warning: allow rule `vault-sre` never takes effect: deny rule `deny-vault` at policy.toml:14:1 matches every flow it matches",
            "policy.toml:26:1: warning: rule `ghost` can never match: its principals only name groups with no members (`group:nobody`); it is left out of the policy",
        ]
    );
}

#[test]
fn docs_complete_example_is_the_corpus_file() {
    let docs = include_str!("../../../docs/policy.md");
    let example = include_str!("../fuzz/corpus/parse_policy/complete.toml");
    assert!(
        docs.contains(&format!("```toml\n{example}```")),
        "docs/policy.md's complete example drifted from complete.toml"
    );
}

#[test]
fn scoped_principals_example_is_valid() {
    use zgate_policy::model::Principal;
    let c = one(include_str!("../fuzz/corpus/parse_policy/scoped.toml"));
    assert_eq!(c.warnings, vec![]);
    let principals = c.policy.rules[0].principals.clone().unwrap_or_default();
    assert!(principals.contains(&Principal::DnsSanIn {
        trust_domain: "corp.example".into(),
        name: "db.corp.example".into(),
    }));
    assert!(principals.contains(&Principal::CommonNameIn {
        trust_domain: "corp.example".into(),
        name: "alice@corp:x".into(),
    }));
    assert_eq!(principals.len(), 3);
}
