//! `zgate-control` driven as a user would: the real binary, real files, exit codes and
//! messages asserted.
#![expect(
    clippy::expect_used,
    reason = "test helpers: a setup failure should fail the test with its message"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zgate-control"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example_policy() -> PathBuf {
    repo().join("examples/trading-redis/policy")
}

fn example_cases() -> PathBuf {
    repo().join("examples/trading-redis/cases.toml")
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run zgate-control");
    (
        status.code().expect("exit code"),
        String::from_utf8(stdout).expect("utf8 stdout"),
        String::from_utf8(stderr).expect("utf8 stderr"),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn check_accepts_the_example_policy() {
    let (code, out, err) = run(bin().arg("check").arg(example_policy()));
    assert_eq!(code, 0, "stderr: {err}");
    assert!(
        out.contains("is valid: 6 rule(s), 3 group(s), 1 declared service(s), 0 warning(s)"),
        "{out}"
    );
}

#[test]
fn check_reports_every_error_with_its_location_and_exits_65() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.toml",
        "[[rule]]\nid = \"r1\"\naction = \"allow\"\nservices = [\"db\"]\nsources = [\"10.0.0.1/8\"]\n",
    );
    write(
        dir.path(),
        "b.toml",
        "[[rule]]\nid = \"r2\"\naction = \"allow\"\nservices = [\"db\"]\nprincipals = [\"group:nobody\"]\n",
    );
    let (code, _, err) = run(bin().arg("check").arg(dir.path()));
    assert_eq!(code, 65, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("a.toml:5:") && l.contains("`10.0.0.1/8`")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("b.toml:5:") && l.contains("undefined group `nobody`")),
        "{err}"
    );
    assert!(err.contains("is invalid: 2 error(s)"), "{err}");
}

#[test]
fn check_refuses_an_empty_directory_and_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(bin().arg("check").arg(dir.path()));
    assert_eq!(code, 65);
    assert!(err.contains("holds no *.toml policy files"), "{err}");
    let (code, _, err) = run(bin().arg("check").arg(dir.path().join("nope")));
    assert_eq!(code, 66);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn check_deny_warnings_turns_warnings_into_failure() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.toml",
        "[[service]]\nname = \"db\"\nsensitive = true\n\n[[rule]]\nid = \"open\"\naction = \"allow\"\nservices = [\"db\"]\n",
    );
    let (code, _, err) = run(bin().arg("check").arg(dir.path()));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning"), "{err}");
    let (code, _, err) = run(bin().arg("check").arg("--deny-warnings").arg(dir.path()));
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("--deny-warnings is set"), "{err}");
}

#[test]
fn compile_then_inspect_round_trips_and_corruption_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t.zgt");
    let (code, out, err) = run(bin()
        .arg("compile")
        .arg(example_policy())
        .arg("-o")
        .arg(&table)
        .args(["--policy-version", "42"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("6 rule(s), policy version 42"), "{out}");
    let (code, out, err) = run(bin().arg("inspect").arg(&table));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("policy version: 42"), "{out}");
    assert!(out.contains("redis-trading"), "{out}");

    let mut bytes = std::fs::read(&table).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&table, &bytes).unwrap();
    let (code, _, err) = run(bin().arg("inspect").arg(&table));
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("rejected"), "{err}");
}

#[test]
fn the_example_policy_passes_its_cases() {
    let (code, out, err) = run(bin().arg("test").arg(example_policy()).arg(example_cases()));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("20 passed, 0 failed"), "{out}");
}

#[test]
fn a_wrong_expectation_fails_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let cases = write(
        dir.path(),
        "cases.toml",
        r#"
[[case]]
name = "feeder at night"
service = "redis-trading"
principal = "spiffe://corp.example/ns/md/sa/feeder-a"
source = "10.30.0.9"
at = "2026-11-24T04:00:00Z"
expect = "deny"

[[case]]
name = "right one"
service = "redis-local"
source = "127.0.0.1"
at = "2026-11-24T04:00:00Z"
expect = "allow"
rule = "loopback-health"
"#,
    );
    let (code, out, _) = run(bin().arg("test").arg(example_policy()).arg(&cases));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL feeder at night"), "{out}");
    assert!(out.contains("  - expected: deny"), "{out}");
    assert!(
        out.contains("  + actual:   allow by feeders-write-redis (allowed-by-rule)"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");
}

#[test]
fn cases_files_reject_typos_and_clock_dependence() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write(
        dir.path(),
        "typo.toml",
        "[[case]]\nname = \"x\"\nservice = \"s\"\nsource = \"127.0.0.1\"\nat = \"2026-11-24T04:00:00Z\"\nexpct = \"allow\"\n",
    );
    let (code, _, err) = run(bin().arg("test").arg(example_policy()).arg(&typo));
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("expct"), "{err}");
    let no_at = write(
        dir.path(),
        "no_at.toml",
        "[[case]]\nname = \"x\"\nservice = \"s\"\nsource = \"127.0.0.1\"\nexpect = \"allow\"\n",
    );
    let (code, _, err) = run(bin().arg("test").arg(example_policy()).arg(&no_at));
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("`at` is required"), "{err}");
}

#[test]
fn explain_names_the_rule_and_why_the_others_did_not_match() {
    let (code, out, err) = run(bin()
        .arg("explain")
        .arg(example_policy())
        .args(["--service", "redis-trading", "--source", "10.30.0.9"])
        .args(["--principal", "spiffe://corp.example/ns/md/sa/feeder-a"])
        .args(["--at", "2026-11-24T04:00:00Z"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("decision:   allow"), "{out}");
    assert!(
        out.contains("decided by: feeders-write-redis (10-redis-trading.toml:"),
        "{out}"
    );
    assert!(out.contains("limits:     max session 1d"), "{out}");
    assert!(out.contains("not matched  allow desk-reads-redis"), "{out}");
    assert!(!out.contains("INTERNAL ERROR"), "{out}");
}

#[test]
fn explain_rejects_a_malformed_principal() {
    let (code, _, err) = run(bin()
        .arg("explain")
        .arg(example_policy())
        .args(["--service", "redis-trading", "--source", "10.30.0.9"])
        .args(["--principal", "spiffe://Corp.Example/x"]));
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("invalid principal `spiffe://Corp.Example/x`"),
        "{err}"
    );
}
