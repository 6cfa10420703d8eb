//! One test per error class, each asserting the full rendered message.

#![expect(
    clippy::panic,
    reason = "test helpers fail the test with the policy errors in the message"
)]

use zgate_policy::{parse_policy, ErrorKind, SourceFile};

fn file(name: &str, text: &str) -> SourceFile {
    SourceFile {
        name: name.to_owned(),
        text: text.to_owned(),
    }
}

/// Every error line for a policy made of `files`; panics if the policy is valid.
fn errors_of(files: &[SourceFile]) -> Vec<String> {
    match parse_policy(files) {
        Ok(c) => panic!("expected errors, policy was valid: {:?}", c.policy.rules),
        Err(e) => {
            let lines: Vec<String> = e.errors().iter().map(ToString::to_string).collect();
            // Display of the whole set is the same lines joined.
            assert_eq!(e.to_string(), lines.join("\n"));
            assert_eq!(e.len(), lines.len());
            assert!(!e.is_empty());
            lines
        }
    }
}

fn errors(text: &str) -> Vec<String> {
    errors_of(&[file("p.toml", text)])
}

/// A valid rule header to build on: `[[rule]]` with id, action and services.
fn rule(extra: &str) -> String {
    format!("[[rule]]\nid = \"r1\"\naction = \"allow\"\nservices = [\"redis\"]\n{extra}")
}

fn deny_rule(extra: &str) -> String {
    format!("[[rule]]\nid = \"d1\"\naction = \"deny\"\nservices = [\"redis\"]\n{extra}")
}

#[test]
fn toml_syntax_error() {
    assert_eq!(
        errors("[[rule]]\nid = \"r1\naction = \"allow\"\n"),
        vec!["p.toml:2:9: toml syntax error: invalid basic string, expected `\"`".to_owned()]
    );
}

#[test]
fn toml_syntax_error_keeps_snippet_and_position() {
    let e = parse_policy(&[file("p.toml", "a = = 1\n")]).err();
    let first = e.as_ref().and_then(|e| e.errors().first().cloned());
    let first = first.expect("a syntax error");
    assert!(matches!(first.kind, ErrorKind::Syntax { .. }));
    assert_eq!((first.origin.line, first.origin.column), (1, 5));
    assert_eq!(first.snippet, "=");
}

#[test]
fn unknown_key() {
    assert_eq!(
        errors(&rule("principalz = [\"*\"]\n")),
        vec!["p.toml:5:1: unknown key `principalz` in rule; allowed keys: id, action, services, principals, sources, sni, alpn, schedule, posture, max_risk, max_cert_age, max_session, requires_grant, acknowledge_broad"]
    );
    assert_eq!(
        errors("[[rules]]\n"),
        vec![
            "p.toml:1:3: unknown key `rules` in the top level; allowed keys: group, service, rule"
        ]
    );
    assert_eq!(
        errors(&rule(
            "schedule = { days = [\"mon\"], hours = [\"09:00-10:00\"], time_zone = \"UTC\", tz = 1 }\n"
        )),
        vec!["p.toml:5:74: unknown key `tz` in schedule; allowed keys: days, hours, time_zone"]
    );
    assert_eq!(
        errors(&rule("posture = { managed = true, patched = true }\n")),
        vec!["p.toml:5:29: unknown key `patched` in posture; allowed keys: managed, compliant, edr_running, min_os_patch"]
    );
    assert_eq!(
        errors("[[group]]\nname = \"g\"\nmembers = []\nmember = []\n"),
        vec!["p.toml:4:1: unknown key `member` in group; allowed keys: name, members"]
    );
    assert_eq!(
        errors("[[service]]\nname = \"s\"\nsensitiv = true\n"),
        vec!["p.toml:3:1: unknown key `sensitiv` in service; allowed keys: name, sensitive"]
    );
}

#[test]
fn missing_required_key() {
    assert_eq!(
        errors("[[rule]]\nid = \"r1\"\n"),
        vec![
            "p.toml:1:1: missing required key `action` in rule",
            "p.toml:1:1: missing required key `services` in rule",
        ]
    );
    assert_eq!(
        errors("[[group]]\nname = \"g\"\n"),
        vec!["p.toml:1:1: missing required key `members` in group"]
    );
    assert_eq!(
        errors(&rule(
            "schedule = { days = [\"mon\"], time_zone = \"UTC\" }\n"
        )),
        vec!["p.toml:5:12: missing required key `hours` in schedule"]
    );
}

#[test]
fn wrong_type() {
    assert_eq!(
        errors("[[rule]]\nid = \"r1\"\naction = 3\nservices = \"redis\"\n"),
        vec![
            "p.toml:3:10: `action` must be a string, found integer `3`",
            "p.toml:4:12: `services` must be an array of strings, found string `\"redis\"`",
        ]
    );
    assert_eq!(
        errors(&rule("requires_grant = \"yes\"\nsources = [\"10.0.0.0/8\", 7]\n")),
        vec![
            "p.toml:5:18: `requires_grant` must be a boolean (`true` or `false`), found string `\"yes\"`",
            "p.toml:6:26: `sources` must be an array of strings, found integer `7`",
        ]
    );
    assert_eq!(
        errors("[rule]\nid = \"r1\"\n"),
        vec!["p.toml:1:1: `rule` must be an array of tables (`[[rule]]`), found table `[rule]`"]
    );
}

#[test]
fn duplicate_rule_id_names_first_definition_across_files() {
    let a = file("a.toml", &rule(""));
    let b = file("b.toml", &format!("\n\n{}", rule("")));
    assert_eq!(
        errors_of(&[b, a]),
        vec!["b.toml:4:6: duplicate rule id `r1`; first defined at a.toml:2:6"]
    );
}

#[test]
fn duplicate_group() {
    assert_eq!(
        errors(
            "[[group]]\nname = \"ops\"\nmembers = []\n[[group]]\nname = \"ops\"\nmembers = []\n"
        ),
        vec!["p.toml:4:1: duplicate group `ops`; first defined at p.toml:1:1"]
    );
}

#[test]
fn duplicate_service() {
    assert_eq!(
        errors("[[service]]\nname = \"redis\"\n[[service]]\nname = \"redis\"\nsensitive = true\n"),
        vec!["p.toml:3:1: duplicate service declaration `redis`; first declared at p.toml:1:1"]
    );
}

#[test]
fn undefined_group() {
    assert_eq!(
        errors(&rule("principals = [\"group:trading\"]\n")),
        vec!["p.toml:5:15: undefined group `trading`; no `[[group]]` has that name"]
    );
    assert_eq!(
        errors("[[group]]\nname = \"a\"\nmembers = [\"group:nope\"]\n"),
        vec!["p.toml:3:12: undefined group `nope`; no `[[group]]` has that name"]
    );
}

#[test]
fn group_cycle() {
    assert_eq!(
        errors(
            "[[group]]\nname = \"a\"\nmembers = [\"group:b\"]\n\
             [[group]]\nname = \"b\"\nmembers = [\"group:c\"]\n\
             [[group]]\nname = \"c\"\nmembers = [\"group:a\"]\n"
        ),
        vec!["p.toml:9:12: group cycle: `a` includes `b` includes `c` includes `a`"]
    );
    assert_eq!(
        errors("[[group]]\nname = \"a\"\nmembers = [\"cn:x\", \"group:a\"]\n"),
        vec!["p.toml:3:20: group cycle: `a` includes `a`"]
    );
}

#[test]
fn malformed_spiffe_id() {
    assert_eq!(
        errors(&rule("principals = [\"spiffe://Example.org/a\", \"spiffe://example.org/a//b\"]\n")),
        vec![
            "p.toml:5:15: malformed spiffe id `spiffe://Example.org/a`: the trust domain must be lowercase",
            "p.toml:5:41: malformed spiffe id `spiffe://example.org/a//b`: path segments must not be empty (`//`)",
        ]
    );
}

#[test]
fn malformed_principal_prefix() {
    assert_eq!(
        errors(&rule("principals = [\"user:alice\"]\n")),
        vec!["p.toml:5:15: malformed principal `user:alice`: unknown principal form; expected `*`, `spiffe://…`, `dns:NAME`, `cn:NAME`, `dns@TRUST-DOMAIN:NAME`, `cn@TRUST-DOMAIN:NAME`, `sha256:HEX` or `group:NAME`"]
    );
    assert_eq!(
        errors(&rule("principals = [\"spiffe://example.org/ns/trad*\"]\n")),
        vec!["p.toml:5:15: malformed principal `spiffe://example.org/ns/trad*`: a wildcard is only allowed as a whole last path segment (`spiffe://td/path/*`)"]
    );
    assert_eq!(
        errors(&rule("principals = [\"group:desk 7\"]\n")),
        vec!["p.toml:5:15: malformed principal `group:desk 7`: `group:` needs a group name made of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`"]
    );
    assert_eq!(
        errors(&rule("principals = [\"dns:a b\"]\n")),
        vec!["p.toml:5:15: malformed principal `dns:a b`: `dns:` needs a dns name: names may only contain `a-z`, `0-9`, `-`, `_` and `.`, found ` `"]
    );
}

#[test]
fn malformed_scoped_principal() {
    assert_eq!(
        errors(&rule("principals = [\"dns@corp.example\", \"cn@Corp.example:alice\"]\n")),
        vec![
            "p.toml:5:15: malformed principal `dns@corp.example`: `dns@TRUST-DOMAIN:NAME` needs a `:` between the trust domain and the name",
            "p.toml:5:35: malformed principal `cn@Corp.example:alice`: `cn@TRUST-DOMAIN:NAME` needs a valid trust domain: the trust domain must be lowercase",
        ]
    );
    assert_eq!(
        errors(&rule("principals = [\"dns@corp.example:a b\", \"cn@corp.example:\"]\n")),
        vec![
            "p.toml:5:15: malformed principal `dns@corp.example:a b`: `dns:` needs a dns name: names may only contain `a-z`, `0-9`, `-`, `_` and `.`, found ` `",
            "p.toml:5:39: malformed principal `cn@corp.example:`: `cn:` needs a non-empty common name without control characters",
        ]
    );
    // A common name may hold `@` and `:`: only the first `:` ends the trust domain.
    assert_eq!(
        zgate_policy::parse_principal("cn@corp.example:alice@corp:x"),
        Ok(zgate_policy::model::Principal::CommonNameIn {
            trust_domain: "corp.example".into(),
            name: "alice@corp:x".into(),
        })
    );
}

#[test]
fn malformed_cidr() {
    assert_eq!(
        errors(&rule("sources = [\"10.20.1.1/16\", \"10.0.0.0/33\", \"10.0.0\"]\n")),
        vec![
            "p.toml:5:12: malformed cidr `10.20.1.1/16`: host bits are set; did you mean `10.20.0.0/16`?",
            "p.toml:5:28: malformed cidr `10.0.0.0/33`: the prefix length 33 is longer than 32",
            "p.toml:5:43: malformed cidr `10.0.0`: `10.0.0` is not an ipv4 or ipv6 address",
        ]
    );
    assert_eq!(
        errors(&rule("sources = [\"2001:db8::1/48\"]\n")),
        vec!["p.toml:5:12: malformed cidr `2001:db8::1/48`: host bits are set; did you mean `2001:db8::/48`?"]
    );
}

#[test]
fn malformed_duration() {
    assert_eq!(
        errors(&rule("max_session = \"8 hours\"\nmax_cert_age = \"30m1h\"\n")),
        vec![
            "p.toml:5:15: malformed duration `8 hours` for `max_session`: unexpected ` `; expected digits followed by `d`, `h`, `m` or `s`",
            "p.toml:6:16: malformed duration `30m1h` for `max_cert_age`: units must appear at most once, in the order `d`, `h`, `m`, `s`",
        ]
    );
}

#[test]
fn malformed_fingerprint() {
    assert_eq!(
        errors(&rule("principals = [\"sha256:abcd\"]\n")),
        vec!["p.toml:5:15: malformed fingerprint `sha256:abcd`: expected 64 hex digits, found 4"]
    );
}

#[test]
fn impossible_schedule() {
    let sched = |s: &str| errors(&rule(&format!("schedule = {{ {s} }}\n")));
    let tz = "time_zone = \"UTC\"";
    assert_eq!(
        sched(&format!("days = [\"funday\"], hours = [\"09:00-10:00\"], {tz}")),
        vec!["p.toml:5:22: impossible schedule: unknown day `funday`; expected mon, tue, wed, thu, fri, sat, sun or a range like `mon-fri`"]
    );
    assert_eq!(
        sched(&format!("days = [\"fri-mon\"], hours = [\"09:00-10:00\"], {tz}")),
        vec!["p.toml:5:22: impossible schedule: day range `fri-mon` wraps past sunday; split it, e.g. `fri-sun` and `mon`"]
    );
    assert_eq!(
        sched(&format!("days = [\"mon\"], hours = [\"9:00-10:00\"], {tz}")),
        vec!["p.toml:5:39: impossible schedule: bad time range `9:00-10:00`; expected `HH:MM-HH:MM` between 00:00 and 24:00"]
    );
    assert_eq!(
        sched(&format!(
            "days = [\"mon\"], hours = [\"18:00-06:00\"], {tz}"
        )),
        vec![
            "p.toml:5:39: impossible schedule: time range `18:00-06:00` must start before it ends"
        ]
    );
    assert_eq!(
        sched(&format!(
            "days = [\"mon\"], hours = [\"13:00-18:00\", \"06:30-13:30\"], {tz}"
        )),
        vec![
            "p.toml:5:54: impossible schedule: time ranges `13:00-18:00` and `06:30-13:30` overlap"
        ]
    );
    assert_eq!(
        sched(&format!("days = [], hours = [\"09:00-10:00\"], {tz}")),
        vec!["p.toml:5:21: impossible schedule: `days` is empty; list at least one day"]
    );
    assert_eq!(
        sched(&format!("days = [\"mon\"], hours = [], {tz}")),
        vec!["p.toml:5:38: impossible schedule: `hours` is empty; list at least one range, e.g. `00:00-24:00`"]
    );
    assert_eq!(
        sched("days = [\"mon\"], hours = [\"09:00-10:00\"], time_zone = \"Europe/Londn\""),
        vec!["p.toml:5:67: impossible schedule: unknown time zone `Europe/Londn`; expected an iana name like `Europe/London` or `UTC`"]
    );
}

#[test]
fn empty_lists() {
    assert_eq!(
        errors("[[rule]]\nid = \"r1\"\naction = \"allow\"\nservices = []\n"),
        vec!["p.toml:4:12: `services` must not be empty; list service names, or `[\"*\"]` for every service"]
    );
    assert_eq!(
        errors(&rule("principals = []\nsources = []\nsni = []\nalpn = []\n")),
        vec![
            "p.toml:5:14: `principals` must not be empty; leave `principals` out, or write `[\"*\"]`, to match anyone",
            "p.toml:6:11: `sources` must not be empty; leave `sources` out to match any source",
            "p.toml:7:7: `sni` must not be empty; leave `sni` out to match any sni",
            "p.toml:8:8: `alpn` must not be empty; leave `alpn` out to match any alpn",
        ]
    );
}

#[test]
fn wildcard_mixed_with_names() {
    assert_eq!(
        errors("[[rule]]\nid = \"r1\"\naction = \"allow\"\nservices = [\"redis\", \"*\"]\nprincipals = [\"*\", \"cn:a\"]\n"),
        vec![
            "p.toml:4:22: `*` cannot be mixed with other entries in `services`; use `[\"*\"]` alone",
            "p.toml:5:15: `*` cannot be mixed with other entries in `principals`; use `[\"*\"]` alone",
        ]
    );
}

#[test]
fn allow_only_fields_on_deny_rule() {
    assert_eq!(
        errors(&deny_rule(
            "posture = { managed = true }\nmax_risk = 10\nmax_cert_age = \"1h\"\nmax_session = \"1h\"\nrequires_grant = true\n"
        )),
        vec![
            "p.toml:5:1: `posture` is only allowed on allow rules, and rule `d1` is a deny rule",
            "p.toml:6:1: `max_risk` is only allowed on allow rules, and rule `d1` is a deny rule",
            "p.toml:7:1: `max_cert_age` is only allowed on allow rules, and rule `d1` is a deny rule",
            "p.toml:8:1: `max_session` is only allowed on allow rules, and rule `d1` is a deny rule",
            "p.toml:9:1: `requires_grant` is only allowed on allow rules, and rule `d1` is a deny rule",
        ]
    );
}

#[test]
fn max_risk_out_of_range() {
    assert_eq!(
        errors(&rule("max_risk = 101\n")),
        vec!["p.toml:5:12: `max_risk` must be between 0 and 100, found `101`"]
    );
    assert_eq!(
        errors(&rule("max_risk = -1\n")),
        vec!["p.toml:5:12: `max_risk` must be between 0 and 100, found `-1`"]
    );
    assert_eq!(
        errors(&rule("max_risk = 4.5\n")),
        vec!["p.toml:5:12: `max_risk` must be an integer from 0 to 100, found float `4.5`"]
    );
}

#[test]
fn bad_rule_id() {
    assert_eq!(
        errors("[[rule]]\nid = \"desk reads\"\naction = \"allow\"\nservices = [\"redis\"]\n"),
        vec!["p.toml:2:6: invalid rule id `desk reads`; use one or more of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`"]
    );
    assert_eq!(
        errors("[[rule]]\nid = \"default-deny\"\naction = \"deny\"\nservices = [\"*\"]\n"),
        vec!["p.toml:2:6: rule id `default-deny` is reserved for the built-in default deny"]
    );
}

#[test]
fn bad_min_os_patch_date() {
    assert_eq!(
        errors(&rule("posture = { min_os_patch = \"2026-02-30\" }\n")),
        vec!["p.toml:5:28: invalid `min_os_patch` date `2026-02-30`; expected a calendar date as `YYYY-MM-DD`"]
    );
}

#[test]
fn bad_action() {
    assert_eq!(
        errors("[[rule]]\nid = \"r1\"\naction = \"permit\"\nservices = [\"redis\"]\n"),
        vec!["p.toml:3:10: invalid action `permit`; expected `allow` or `deny`"]
    );
}

#[test]
fn bad_names() {
    assert_eq!(
        errors("[[group]]\nname = \"desk 7\"\nmembers = []\n[[service]]\nname = \"\"\n"),
        vec![
            "p.toml:2:8: invalid group name `desk 7`; use one or more of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`",
            "p.toml:5:8: invalid service name ``; use one or more of `A-Z`, `a-z`, `0-9`, `.`, `_` and `-`",
        ]
    );
}

#[test]
fn malformed_sni_and_alpn() {
    assert_eq!(
        errors(&rule("sni = [\"a.*.example.org\"]\nalpn = [\"\"]\n")),
        vec![
            "p.toml:5:8: malformed sni `a.*.example.org`: a wildcard is only allowed as the whole first label (`*.example.org`)",
            "p.toml:6:9: malformed alpn ``: a protocol name must be 1 to 255 bytes",
        ]
    );
}

#[test]
fn empty_posture() {
    assert_eq!(
        errors(&rule("posture = { managed = false }\n")),
        vec!["p.toml:5:11: `posture` requires nothing; set at least one requirement or leave `posture` out"]
    );
}

#[test]
fn every_error_in_every_file_in_one_run() {
    let a = file(
        "a.toml",
        "[[rule]]\nid = \"a1\"\naction = \"allow\"\nservices = [\"redis\"]\nsources = [\"10.0.0.1/8\"]\nmax_risk = 400\n",
    );
    let b = file(
        "b.toml",
        "[[rule]]\nid = \"a1\"\naction = \"deny\"\nservices = [\"redis\"]\nprincipals = [\"group:ghost\"]\nmax_session = \"1h\"\n",
    );
    let c = file(
        "c.toml",
        "[[group]]\nname = \"x\"\nmembers = [\"spiffe://td/\"]\n",
    );
    assert_eq!(
        errors_of(&[c, b, a]),
        vec![
            "a.toml:5:12: malformed cidr `10.0.0.1/8`: host bits are set; did you mean `10.0.0.0/8`?",
            "a.toml:6:12: `max_risk` must be between 0 and 100, found `400`",
            "b.toml:2:6: duplicate rule id `a1`; first defined at a.toml:2:6",
            "b.toml:5:15: undefined group `ghost`; no `[[group]]` has that name",
            "b.toml:6:1: `max_session` is only allowed on allow rules, and rule `a1` is a deny rule",
            "c.toml:3:12: malformed spiffe id `spiffe://td/`: a spiffe id must not end with `/`",
        ]
    );
}

#[test]
fn syntax_error_in_one_file_does_not_hide_others_nor_invent_undefined_groups() {
    // The group may be defined in the file that does not parse: no guess about it.
    let broken = file("groups.toml", "[[group]]\nname = \"desk\nmembers = []\n");
    let rules = file(
        "rules.toml",
        "[[rule]]\nid = \"r1\"\naction = \"allow\"\nservices = [\"redis\"]\nprincipals = [\"group:desk\"]\nmax_risk = 101\n",
    );
    assert_eq!(
        errors_of(&[rules, broken]),
        vec![
            "groups.toml:2:13: toml syntax error: invalid basic string, expected `\"`",
            "rules.toml:6:12: `max_risk` must be between 0 and 100, found `101`",
        ]
    );
}

#[test]
fn snippet_is_the_offending_text() {
    let e = parse_policy(&[file("p.toml", &rule("sources = [\"10.0.0.1/8\"]\n"))]).err();
    let snippets: Vec<String> = e
        .map(|e| e.errors().iter().map(|x| x.snippet.clone()).collect())
        .unwrap_or_default();
    assert_eq!(snippets, vec!["\"10.0.0.1/8\"".to_owned()]);
}

#[test]
fn columns_count_characters_not_bytes() {
    // `é` is two bytes; the column of the bad cidr must count it once.
    let text = "# café\n[[rule]]\nid = \"r1\"\naction = \"allow\"\nservices = [\"redis\"]\nsources = [\"é\", \"x\"]\n";
    assert_eq!(
        errors(text),
        vec![
            "p.toml:6:12: malformed cidr `é`: `é` is not an ipv4 or ipv6 address",
            "p.toml:6:17: malformed cidr `x`: `x` is not an ipv4 or ipv6 address",
        ]
    );
}

#[test]
fn control_characters_are_escaped_in_messages() {
    // TOML `\u001b` is ESC: a terminal escape must not reach a log or a terminal.
    let lines = errors(&rule(
        "principals = [\"user:\\u001b[31mred\"]\nsources = [\"10.0.0.0/8\\t\"]\n",
    ));
    assert_eq!(
        lines,
        vec![
            "p.toml:5:15: malformed principal `user:\\u{1b}[31mred`: unknown principal form; expected `*`, `spiffe://…`, `dns:NAME`, `cn:NAME`, `dns@TRUST-DOMAIN:NAME`, `cn@TRUST-DOMAIN:NAME`, `sha256:HEX` or `group:NAME`",
            "p.toml:6:12: malformed cidr `10.0.0.0/8\\t`: the prefix length `8\\t` is not a number",
        ]
    );
    assert!(lines.iter().all(|l| !l.chars().any(char::is_control)));
}
