//! The zero-trust loop end to end (issue 15): a real `zgate-control serve` beside a real
//! `zgate run` subscribed to it (`[control]`), real mTLS clients (rustls) through the
//! gateway. Policy edits, revocations, posture, risk and grants reach live flows;
//! the control process going away changes nothing enforced; a restarted gateway
//! enforces what it persisted.

#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines are the point"
)]

#[cfg(test)]
mod common;

#[cfg(test)]
mod zero_trust_loop {
    use std::io::{Read, Write};

    use super::common::control::Control;
    use super::common::pki::{
        client_config, closed, connect_tls, echo_through, echoes, now, refuses, Pki, Tls,
    };
    use super::common::{http_get, Gateway, Setup, Upstream};
    use zgate_devpki::{ClientSpec, Leaf};

    const TRADER: &str = "spiffe://corp.example/ns/trading/sa/pricer";
    const OTHER_TRADER: &str = "spiffe://corp.example/ns/trading/sa/quoter";
    const ENGINEER: &str = "spiffe://corp.example/ns/eng/sa/alice";
    const ONCALL: &str = "spiffe://corp.example/ns/ops/sa/bob";

    /// Traders always; engineers from managed devices at risk 50 or below; on-call only
    /// with a just-in-time grant.
    const POLICY: &str = r#"
    [[rule]]
    id = "traders"
    action = "allow"
    services = ["echo"]
    principals = ["spiffe://corp.example/ns/trading/*"]

    [[rule]]
    id = "engineers-on-managed-devices"
    action = "allow"
    services = ["echo"]
    principals = ["spiffe://corp.example/ns/eng/*"]
    posture = { managed = true }
    max_risk = 50

    [[rule]]
    id = "oncall-break-glass"
    action = "allow"
    services = ["echo"]
    principals = ["spiffe://corp.example/ns/ops/*"]
    requires_grant = true
    "#;

    /// A gateway with one mTLS listener `echo`, subscribed to `control`, keeping its state
    /// in `state`.
    fn gateway(pki: &Pki, up: &Upstream, control: &Control, state: &std::path::Path) -> Gateway {
        let mut setup = Setup::new(up.addr);
        setup.table = None;
        setup.workers = 2;
        setup.listener_extra = pki.listener_tls("");
        setup.tables_extra = control.gateway_section(state);
        Gateway::start(&setup)
    }

    /// What most tests start from: a dev PKI, an echo upstream, a control process
    /// serving `POLICY`, its state directory, and a gateway subscribed to it that
    /// enforces its first table.
    struct Scene {
        /// The echo upstream and the gateway's state directory: kept for the test's
        /// length, read by no test. Bound first, so dropped last.
        _keep: (Upstream, tempfile::TempDir),
        pki: Pki,
        control: Control,
        gw: Gateway,
    }

    fn scene() -> Scene {
        scene_with(POLICY)
    }

    /// [`scene`] with `policy` as the control process's policy.
    fn scene_with(policy: &str) -> Scene {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let control = Control::start(&[("p.toml", policy)]);
        let state = tempfile::tempdir().unwrap();
        let gw = gateway(&pki, &up, &control, state.path());
        control.wait_enforced(1);
        Scene {
            pki,
            control,
            gw,
            _keep: (up, state),
        }
    }

    fn leaf(pki: &Pki, id: &str, device: Option<&str>) -> Leaf {
        let mut spec = ClientSpec::spiffe(id);
        if let Some(d) = device {
            spec.extra_uris.push(format!("urn:device:{d}"));
        }
        pki.client(&spec)
    }

    /// An open, echoing mTLS flow as `leaf`.
    fn flow(gw: &Gateway, pki: &Pki, leaf: &Leaf) -> Tls {
        let mut s = connect_tls(gw, client_config(pki, Some(leaf)));
        echo_through(&mut s, b"hello");
        s
    }

    fn closed_because(gw: &Gateway, principal: &str, cause: &str) -> serde_json::Value {
        gw.wait_audit(|e| {
            e["event"] == "closed_by_policy" && e["spiffe_id"] == principal && e["cause"] == cause
        })
    }

    #[test]
    fn a_revocation_closes_exactly_the_flows_of_that_identity_among_a_thousand() {
        let Scene {
            _keep,
            pki,
            control,
            gw,
        } = scene();
        let (victim, bystander) = (leaf(&pki, TRADER, None), leaf(&pki, OTHER_TRADER, None));
        // 1,000 live mTLS flows (2,000 descriptors in the gateway, 1,000 here: inside the
        // 20,000 open-file cap); every tenth belongs to the identity revoked below.
        let mut flows: Vec<(bool, Tls)> = (0..1000)
            .map(|i| {
                let mine = i % 10 == 0;
                (
                    mine,
                    flow(&gw, &pki, if mine { &victim } else { &bystander }),
                )
            })
            .collect();
        let out = control.ok(&[
            "revoke",
            "--principal",
            TRADER,
            "--reason",
            "laptop stolen, ticket SEC-1",
        ]);
        assert!(out.contains("revoked"), "{out}");
        for (mine, s) in flows.iter_mut().filter(|(m, _)| *m) {
            assert!(
                *mine && closed(s),
                "a flow of the revoked identity stayed open"
            );
        }
        for (_, s) in flows.iter_mut().filter(|(m, _)| !*m) {
            assert!(echoes(s), "a flow of another identity was cut");
        }
        assert_eq!(
            gw.metric_settled(
                "zgate_flows_closed_by_policy_total{reason=\"revoked\"}",
                100
            ),
            100
        );
        assert_eq!(gw.metric("zgate_flows_closed_by_policy_total"), 100);
        let e = closed_because(&gw, TRADER, "revoked");
        assert_eq!(e["rule"], "revoked-identity");
        // New flows of that identity are refused; others still get in.
        assert!(refuses(&gw, &pki, &victim));
        drop(flow(&gw, &pki, &bystander));
        // The control process audited who did it and the resulting version.
        let audit = std::fs::read_to_string(control.path("state/audit.jsonl")).unwrap();
        let line = audit
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["what"] == "revoke")
            .expect("no audit line for the revocation");
        assert!(line["who"].as_str().unwrap().starts_with("uid "), "{line}");
        assert_eq!(line["facts_version"], 1);
        // Lifted: the identity gets in again.
        control.ok(&["unrevoke", "--principal", TRADER]);
        control.wait_enforced(1);
        drop(flow(&gw, &pki, &victim));
    }

    /// The SHA-256 fingerprint of `leaf`'s certificate, as `openssl x509 -fingerprint`
    /// prints it (colon-separated upper-case hex; the CLI takes it so).
    fn fingerprint(leaf: &Leaf) -> String {
        let mut c = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(leaf.cert_pem.as_bytes())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        text.trim().rsplit('=').next().unwrap().to_string()
    }

    /// `secs` seconds from now as RFC 3339 (UTC).
    fn rfc3339_in(secs: i64) -> String {
        zgate_telemetry::rfc3339_micros((now() + secs) * 1_000_000)
    }

    /// The control process's audit lines whose `what` is `what`.
    fn control_audit(control: &Control, what: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(control.path("state/audit.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["what"] == what)
            .collect()
    }

    /// `revoke --fingerprint` closes that certificate's flows only; `revoke --for` and
    /// `--until` lift themselves, and the identity gets in again; `revocations` lists
    /// what is in force.
    #[test]
    fn certificate_and_time_bounded_revocations_close_what_they_name_and_lift_themselves() {
        let Scene {
            _keep,
            pki,
            control,
            gw,
        } = scene();
        // Two certificates of the same identity, and another identity.
        let (laptop, phone) = (leaf(&pki, TRADER, None), leaf(&pki, TRADER, None));
        let other = leaf(&pki, OTHER_TRADER, None);
        let (mut on_laptop, mut on_phone, mut of_other) = (
            flow(&gw, &pki, &laptop),
            flow(&gw, &pki, &phone),
            flow(&gw, &pki, &other),
        );

        // One certificate: its flow closes, the same identity's other certificate and
        // the other identity keep going.
        let fp = fingerprint(&laptop);
        assert!(fp.contains(':'), "{fp}");
        control.ok(&["revoke", "--fingerprint", &fp, "--reason", "key leaked"]);
        assert!(
            closed(&mut on_laptop),
            "the revoked certificate's flow stayed open"
        );
        assert!(echoes(&mut on_phone) && echoes(&mut of_other));
        let e = closed_because(&gw, TRADER, "revoked");
        assert_eq!(e["rule"], "revoked-certificate", "{e}");
        assert!(refuses(&gw, &pki, &laptop));
        drop(flow(&gw, &pki, &phone));
        let listed: serde_json::Value =
            serde_json::from_str(&control.ok(&["revocations"])).unwrap();
        let want = fp.replace(':', "").to_lowercase();
        assert_eq!(listed["facts_version"], 1, "{listed}");
        let revs = listed["revocations"].as_array().unwrap();
        assert_eq!(revs.len(), 1, "{listed}");
        assert_eq!(revs[0]["subject"]["fingerprint"], want, "{listed}");
        assert_eq!(revs[0]["reason"], "key leaked", "{listed}");
        assert!(revs[0]["until"].is_null(), "{listed}");
        control.ok(&["unrevoke", "--fingerprint", &fp]);
        control.wait_enforced(1);
        drop(flow(&gw, &pki, &laptop));

        // For four seconds: closed now, refused meanwhile, then lifted by the control
        // process itself (audited as the expiry's), and the identity gets in again.
        control.ok(&["revoke", "--principal", OTHER_TRADER, "--for", "4s"]);
        assert!(closed(&mut of_other));
        assert!(echoes(&mut on_phone));
        assert!(refuses(&gw, &pki, &other));
        let listed: serde_json::Value =
            serde_json::from_str(&control.ok(&["revocations"])).unwrap();
        let until = listed["revocations"][0]["until"].as_i64().unwrap();
        assert!((now() - 2..=now() + 4).contains(&until), "{listed}");
        let s = control.wait_status(|s| s["revocations"] == 0);
        assert_eq!(
            s["revocations"], 0,
            "the revocation did not lift itself: {s}"
        );
        control.wait_enforced(1);
        drop(flow(&gw, &pki, &other));
        let expired = control_audit(&control, "expired");
        assert_eq!(expired.len(), 1, "{expired:?}");
        assert_eq!(expired[0]["who"], "expiry");

        // Until an instant (RFC 3339): the same, for the other identity.
        control.ok(&["revoke", "--principal", TRADER, "--until", &rfc3339_in(4)]);
        assert!(closed(&mut on_phone));
        assert!(refuses(&gw, &pki, &phone));
        let s = control.wait_status(|s| s["revocations"] == 0);
        assert_eq!(
            s["revocations"], 0,
            "the revocation did not lift itself: {s}"
        );
        control.wait_enforced(1);
        drop(flow(&gw, &pki, &phone));
        assert_eq!(control_audit(&control, "expired").len(), 2);
        assert_eq!(
            gw.metric_settled("zgate_flows_closed_by_policy_total{reason=\"revoked\"}", 3),
            3
        );
    }

    /// `posture list` / `clear`, `risk set --device`, `grants` and `ungrant`: each
    /// listing shows what was set, and each removal reaches the live flow at once.
    #[test]
    fn posture_clear_device_risk_and_ungrant_reach_live_flows_and_the_listings_show_them() {
        let Scene {
            _keep,
            pki,
            control,
            gw,
        } = scene();
        let alice = leaf(&pki, ENGINEER, Some("laptop-7"));
        control.ok(&["posture", "set", "laptop-7", "managed=true"]);
        control.wait_enforced(1);
        let listed: serde_json::Value =
            serde_json::from_str(&control.ok(&["posture", "list"])).unwrap();
        let postures = listed["posture"].as_array().unwrap();
        assert_eq!(postures.len(), 1, "{listed}");
        assert_eq!(postures[0]["device"], "laptop-7");
        assert_eq!(postures[0]["managed"], true);
        assert_eq!(postures[0]["compromised"], false);

        // A risk score on the device (not the principal): over max_risk, closed.
        let mut a = flow(&gw, &pki, &alice);
        control.ok(&["risk", "set", "--device", "laptop-7", "80"]);
        assert!(closed(&mut a), "the device's risk did not close its flow");
        closed_because(&gw, ENGINEER, "risk");
        assert!(refuses(&gw, &pki, &alice));
        let listed: serde_json::Value =
            serde_json::from_str(&control.ok(&["risk", "list"])).unwrap();
        assert_eq!(
            listed["risk"][0]["subject"]["device"], "laptop-7",
            "{listed}"
        );
        assert_eq!(listed["risk"][0]["score"], 80, "{listed}");
        control.ok(&["risk", "clear", "--device", "laptop-7"]);
        control.wait_enforced(1);

        // The posture forgotten: the device meets no requirement, its flow closes.
        let mut a = flow(&gw, &pki, &alice);
        control.ok(&["posture", "clear", "laptop-7"]);
        assert!(
            closed(&mut a),
            "clearing the posture did not close the flow"
        );
        closed_because(&gw, ENGINEER, "posture");
        assert!(refuses(&gw, &pki, &alice));
        let listed: serde_json::Value =
            serde_json::from_str(&control.ok(&["posture", "list"])).unwrap();
        assert_eq!(listed["posture"], serde_json::json!([]), "{listed}");

        // A grant listed with its ticket; ended early by `ungrant`, which closes the flow.
        let bob = leaf(&pki, ONCALL, None);
        control.ok(&[
            "grant",
            "--principal",
            ONCALL,
            "--service",
            "echo",
            "--for",
            "10m",
            "--reason",
            "INC-7",
        ]);
        control.wait_enforced(1);
        let listed: serde_json::Value = serde_json::from_str(&control.ok(&["grants"])).unwrap();
        let grants = listed["grants"].as_array().unwrap();
        assert_eq!(grants.len(), 1, "{listed}");
        assert_eq!(grants[0]["principal"], ONCALL);
        assert_eq!(grants[0]["service"], "echo");
        assert_eq!(grants[0]["reason"], "INC-7");
        let until = grants[0]["until"].as_i64().unwrap();
        assert!((now() + 590..=now() + 600).contains(&until), "{listed}");
        let mut b = flow(&gw, &pki, &bob);
        control.ok(&["ungrant", "--principal", ONCALL, "--service", "echo"]);
        assert!(closed(&mut b), "ungrant did not close the flow");
        closed_because(&gw, ONCALL, "grant-ended");
        assert!(refuses(&gw, &pki, &bob));
        let listed: serde_json::Value = serde_json::from_str(&control.ok(&["grants"])).unwrap();
        assert_eq!(listed["grants"], serde_json::json!([]), "{listed}");
        // Nothing left to end: a clear refusal.
        let out = control.cli(&["ungrant", "--principal", ONCALL, "--service", "echo"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no grant for"),
            "{out:?}"
        );
    }

    /// `history` lists the kept tables with the git commit of a policy directory that
    /// is a git work tree; `rollback` with no version goes back one; `shadow-clear`
    /// withdraws the shadow table from the gateways.
    #[test]
    fn history_names_the_git_commit_rollback_goes_back_one_and_shadow_clear_withdraws() {
        let Scene {
            _keep,
            pki,
            control,
            gw,
        } = scene();
        let trader = leaf(&pki, TRADER, None);
        let mut live = flow(&gw, &pki, &trader);

        // The policy directory becomes a git work tree (same content: no new table).
        let dir = control.path("policy");
        let git = |args: &[&str], input: Option<&str>| -> String {
            let mut c = std::process::Command::new("git")
                .arg("-C")
                .arg(&dir)
                .args(["-c", "user.name=ops", "-c", "user.email=ops@corp.example"])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = c.stdin.take().unwrap();
            stdin.write_all(input.unwrap_or("").as_bytes()).unwrap();
            drop(stdin);
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        git(&["init", "-q"], None);
        git(&["add", "p.toml"], None);
        git(&["commit", "-q", "-m", "policy as deployed"], None);
        // An edit committed before it reaches the work tree, so the compilation that
        // sees it can only see its commit: traders are no longer allowed.
        let edited = POLICY.replace("ns/trading/*", "ns/trading/sa/quoter");
        let blob = git(&["hash-object", "-w", "--stdin"], Some(&edited));
        git(
            &[
                "update-index",
                "--cacheinfo",
                &format!("100644,{blob},p.toml"),
            ],
            None,
        );
        git(&["commit", "-q", "-m", "traders: quoter only"], None);
        let commit = git(&["rev-parse", "HEAD"], None);
        git(&["checkout", "--", "p.toml"], None);
        let s = control.wait_status(|s| s["table_version"] == 2);
        assert_eq!(s["table_version"], 2, "{s}");
        assert!(
            closed(&mut live),
            "the new table did not close the trader's flow"
        );
        closed_because(&gw, TRADER, "policy-changed");
        let text = control.ok(&["history"]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        // `[*] VERSION  TIME  RULES rules  SHA256  SOURCE[ (git COMMIT)]`, `*` enforced.
        let version_of = |l: &str| {
            l.trim_start_matches('*')
                .split_whitespace()
                .next()
                .map(str::to_owned)
        };
        assert!(
            version_of(lines[0]).as_deref() == Some("1")
                && !lines[0].starts_with('*')
                && lines[0].ends_with(" policy"),
            "{text}"
        );
        assert!(
            version_of(lines[1]).as_deref() == Some("2")
                && lines[1].starts_with('*')
                && lines[1].contains(" policy ")
                && lines[1].ends_with(&format!("(git {})", &commit[..12])),
            "{text}"
        );

        // Rollback with no version: the table before the enforced one, republished as 3.
        let out = control.ok(&["rollback"]);
        assert!(out.contains("table version 3"), "{out}");
        control.wait_enforced(1);
        drop(flow(&gw, &pki, &trader));
        let text = control.ok(&["history"]);
        let last = text.lines().last().unwrap();
        assert!(
            last.starts_with('*')
                && version_of(last).as_deref() == Some("3")
                && last.ends_with("rollback of 1"),
            "{text}"
        );

        // A shadow table set, then withdrawn: the gateway stops evaluating it, and there
        // is nothing left to promote.
        let candidate = control.path("candidate");
        std::fs::create_dir_all(&candidate).unwrap();
        std::fs::write(candidate.join("p.toml"), &edited).unwrap();
        control.ok(&["apply", "--shadow", candidate.to_str().unwrap()]);
        let s = control.wait_status(|s| s["dataplanes"][0]["report"]["shadow_version"] == 4);
        assert_eq!(s["shadow"]["version"], 4, "{s}");
        assert_eq!(s["dataplanes"][0]["report"]["shadow_version"], 4, "{s}");
        let out = control.ok(&["shadow-clear"]);
        assert!(out.contains("shadow table withdrawn"), "{out}");
        let s = control.wait_status(|s| s["dataplanes"][0]["report"]["shadow_version"] == 0);
        assert!(s["shadow"].is_null(), "{s}");
        assert_eq!(s["dataplanes"][0]["report"]["shadow_version"], 0, "{s}");
        assert!(gw.log().contains("shadow table withdrawn"), "{}", gw.log());
        let out = control.cli(&["promote"]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no shadow table to promote"),
            "{out:?}"
        );
        // Still enforcing the rolled-back table.
        drop(flow(&gw, &pki, &trader));
        assert_eq!(gw.metric("zgate_table_version"), 3);
    }

    /// A rule allowed only inside a schedule window that ends soon: a flow admitted in
    /// it is closed at the window's end by the timer wheel (cause `schedule-ended`), and
    /// new flows are refused after it. Windows are whole minutes, so this waits for the
    /// next minute boundary (up to 70 s): the window ends at the next one at least 10 s
    /// away, which leaves the setup time to admit the flow inside it.
    #[test]
    fn a_live_flow_closes_when_its_schedule_window_ends() {
        let start = now();
        let minute = (start % 86_400) / 60;
        let end = minute + if 60 - start % 60 >= 10 { 1 } else { 2 };
        let hhmm = |m: i64| format!("{:02}:{:02}", m / 60, m % 60);
        // A range cannot cross midnight: the part after it is a range of its own (on
        // every day, so the next day's part follows this day's).
        let hours = if end <= 1440 {
            format!("\"{}-{}\"", hhmm(minute), hhmm(end))
        } else {
            format!("\"00:00-{}\", \"{}-24:00\"", hhmm(end - 1440), hhmm(minute))
        };
        let policy = format!(
            "[[rule]]\nid = \"traders-this-minute\"\naction = \"allow\"\nservices = [\"echo\"]\n\
             principals = [\"spiffe://corp.example/ns/trading/*\"]\n\
             schedule = {{ days = [\"mon-sun\"], hours = [{hours}], time_zone = \"UTC\" }}\n"
        );
        let Scene {
            _keep,
            pki,
            control: _control,
            gw,
        } = scene_with(&policy);
        let trader = leaf(&pki, TRADER, None);
        let mut live = flow(&gw, &pki, &trader);
        let ends_at = start - start % 86_400 + end * 60;
        // Past `closed`'s usual bound: the window may be over a minute away.
        live.sock
            .set_read_timeout(Some(std::time::Duration::from_secs(
                u64::try_from(ends_at - now()).unwrap_or(0) + 30,
            )))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(live.read(&mut b), Ok(0) | Err(_)),
            "the flow outlived its schedule window"
        );
        assert!(
            now() >= ends_at,
            "closed before the window's end ({ends_at})"
        );
        let e = closed_because(&gw, TRADER, "schedule-ended");
        assert_eq!(e["rule"], "default-deny", "{e}");
        assert_eq!(
            gw.metric_settled(
                "zgate_flows_closed_by_policy_total{reason=\"schedule-ended\"}",
                1
            ),
            1
        );
        assert_eq!(gw.metric("zgate_flows_closed_by_policy_total"), 1);
        assert!(refuses(&gw, &pki, &trader));
    }

    /// One control process, two gateways: both in `status` by name, both enforce
    /// every change, a revocation closes the identity's flows on each.
    #[test]
    fn one_control_process_serves_several_gateways() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let control = Control::start(&[("p.toml", POLICY)]);
        let (s1, s2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let start = |name: &str, state: &std::path::Path| {
            let mut setup = Setup::new(up.addr);
            setup.table = None;
            setup.listener_extra = pki.listener_tls("");
            setup.tables_extra = control.gateway_named(name, state);
            Gateway::start(&setup)
        };
        let (a, b) = (start("gw-a", s1.path()), start("gw-b", s2.path()));
        let s = control.wait_enforced(2);
        let mut names: Vec<String> = s["dataplanes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["gw-a", "gw-b"], "{s}");
        let trader = leaf(&pki, TRADER, None);
        let (mut fa, mut fb) = (flow(&a, &pki, &trader), flow(&b, &pki, &trader));
        control.ok(&["revoke", "--principal", TRADER]);
        assert!(closed(&mut fa) && closed(&mut fb));
        let s = control.wait_enforced(2);
        for d in s["dataplanes"].as_array().unwrap() {
            assert_eq!(d["report"]["facts_version"], 1, "{s}");
        }
        let text = control.ok(&["status"]);
        assert!(
            text.contains("gw-a (pid") && text.contains("gw-b (pid"),
            "{text}"
        );
    }

    #[test]
    fn policy_edits_take_effect_and_a_broken_policy_changes_nothing() {
        let Scene {
            _keep,
            pki,
            control,
            gw,
        } = scene();
        let trader = leaf(&pki, TRADER, None);
        let mut live = flow(&gw, &pki, &trader);

        // A broken edit: refused with its report, the old table stays.
        control.write_policy(
            "broken.toml",
            "[[rule]]\nid = \"x\"\naction = \"allow\"\nservices = [\"echo\"]\nprincipalz = []\n",
        );
        let s = control.wait_status(|s| !s["policy_error"].is_null());
        let errors = s["policy_error"]["errors"].to_string();
        assert!(
            errors.contains("broken.toml:5:1") && errors.contains("principalz"),
            "{errors}"
        );
        assert_eq!(s["table_version"], 1);
        assert!(echoes(&mut live));
        let text = control.ok(&["status"]);
        assert!(text.contains("policy REFUSED"), "{text}");

        // Fixed, and traders dropped from the policy: new flows follow, the live one closes.
        std::fs::remove_file(control.path("policy/broken.toml")).unwrap();
        control.write_policy("p.toml", &POLICY.replace("ns/trading/*", "ns/nobody/*"));
        let s = control.wait_status(|s| s["table_version"] == 2 && s["policy_error"].is_null());
        assert_eq!(s["table_version"], 2, "{s}");
        assert!(closed(&mut live));
        closed_because(&gw, TRADER, "policy-changed");
        assert!(refuses(&gw, &pki, &trader));

        // Rolled back: version 3 carries version 1's rules.
        let out = control.ok(&["rollback", "1"]);
        assert!(out.contains("table version 3"), "{out}");
        control.wait_enforced(1);
        drop(flow(&gw, &pki, &trader));
        assert_eq!(gw.metric("zgate_table_version"), 3);
    }

    #[test]
    fn posture_risk_and_grants_reach_live_flows() {
        let Scene {
            _keep,
            pki,
            control,
            gw,
        } = scene();
        let alice = leaf(&pki, ENGINEER, Some("laptop-7"));
        // Unknown posture meets no requirement.
        assert!(refuses(&gw, &pki, &alice));
        control.ok(&[
            "posture",
            "set",
            "laptop-7",
            "managed=true",
            "edr_running=true",
        ]);
        control.wait_enforced(1);
        let mut a = flow(&gw, &pki, &alice);
        // Risk above the rule's max_risk: closed.
        control.ok(&["risk", "set", "--principal", ENGINEER, "80"]);
        assert!(closed(&mut a));
        closed_because(&gw, ENGINEER, "risk");
        control.ok(&["risk", "clear", "--principal", ENGINEER]);
        control.wait_enforced(1);
        let mut a = flow(&gw, &pki, &alice);
        // The device reported compromised: closed.
        control.ok(&["posture", "set", "laptop-7", "compromised=true"]);
        assert!(closed(&mut a));
        closed_because(&gw, ENGINEER, "posture");

        // On-call: nothing without a grant; a grant lets in, then ends by itself.
        let bob = leaf(&pki, ONCALL, None);
        assert!(refuses(&gw, &pki, &bob));
        control.ok(&[
            "grant",
            "--principal",
            ONCALL,
            "--service",
            "echo",
            "--for",
            "2s",
            "--reason",
            "INC-42",
        ]);
        control.wait_enforced(1);
        let mut b = flow(&gw, &pki, &bob);
        assert!(closed(&mut b), "the grant's end did not close the flow");
        closed_because(&gw, ONCALL, "grant-ended");
        assert!(refuses(&gw, &pki, &bob));
        assert!(gw.metric("zgate_flows_closed_by_policy_total{reason=\"grant-ended\"}") >= 1);
    }

    #[test]
    fn the_gateway_enforces_without_the_control_process_and_after_its_own_restart() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let mut control = Control::start(&[("p.toml", POLICY)]);
        let state = tempfile::tempdir().unwrap();
        let trader = leaf(&pki, TRADER, None);
        let other = leaf(&pki, OTHER_TRADER, None);
        {
            let gw = gateway(&pki, &up, &control, state.path());
            control.ok(&["revoke", "--principal", TRADER]);
            control.wait_enforced(1);
            // The control process vouches for its facts twice a second.
            assert_eq!(gw.wait_metric_at_most("zgate_facts_stale", 0), 0);
            assert!(gw.metric_value("zgate_facts_age_seconds") < 1.0);
            let (_, body) = http_get(gw.admin, "/readyz").unwrap();
            assert!(body.contains("facts in step with their store"), "{body}");
            let mut live = flow(&gw, &pki, &other);
            // The control process dies: nothing enforced changes.
            control.kill();
            assert!(echoes(&mut live));
            // But the gateway says how stale its facts are, past `stale_after` (1 s).
            assert_eq!(gw.wait_metric("zgate_facts_stale", 1), 1);
            assert!(gw.metric_value("zgate_facts_age_seconds") >= 1.0);
            let (code, body) = http_get(gw.admin, "/readyz").unwrap();
            assert_eq!(code, 200, "stale facts are still enforced: {body}");
            assert!(body.contains("facts STALE: last in step"), "{body}");
            assert!(refuses(&gw, &pki, &trader));
            drop(flow(&gw, &pki, &other));
            let (code, body) = http_get(gw.admin, "/readyz").unwrap();
            assert_eq!(code, 200, "{body}");
            assert!(
                body.contains("unreachable") && body.contains("fail static"),
                "{body}"
            );
        }
        // The gateway restarts while the control process is still down: it enforces the
        // table and facts it persisted (the revocation included).
        let gw = gateway(&pki, &up, &control, state.path());
        assert!(gw.log().contains("fail static"), "{}", gw.log());
        let (_, body) = http_get(gw.admin, "/readyz").unwrap();
        assert!(body.contains("persisted"), "{body}");
        drop(flow(&gw, &pki, &other));
        assert!(refuses(&gw, &pki, &trader));
        // The control process comes back: the gateway resubscribes, fresh again.
        control.spawn();
        control.wait_enforced(1);
        assert!(gw.wait_metric("zgate_control_connects_total", 1) >= 1);
        assert_eq!(gw.wait_metric_at_most("zgate_facts_stale", 0), 0);
    }

    /// The control process's facts survive its restart: the same version, the
    /// revocation still refused by a gateway that learns everything from the restarted
    /// process. A gateway that kept enforcing older persisted facts meanwhile gets the
    /// whole new set on reconnection, and the live flow it no longer allows is closed as
    /// `facts-changed`. A corrupt fact file, history or kept table stops `serve` (exit
    /// 65), a missing kept table too (71), naming the file and what starting without it
    /// would cost.
    #[test]
    fn facts_survive_a_restart_of_the_control_process_and_a_corrupt_state_file_stops_it() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let mut control = Control::start(&[("p.toml", POLICY)]);
        let s1 = tempfile::tempdir().unwrap();
        let alice = leaf(&pki, ENGINEER, Some("laptop-7"));
        let other = leaf(&pki, OTHER_TRADER, None);
        {
            let gw = gateway(&pki, &up, &control, s1.path());
            control.ok(&["revoke", "--principal", OTHER_TRADER, "--reason", "SEC-9"]);
            control.ok(&["posture", "set", "laptop-7", "managed=true"]);
            control.wait_enforced(1);
            drop(flow(&gw, &pki, &alice));
        }
        // While that gateway is down, the device's posture is forgotten (version 3);
        // then the control process dies.
        control.ok(&["posture", "clear", "laptop-7"]);
        let before = control.status();
        assert_eq!(before["facts_version"], 3, "{before}");
        control.kill();

        // The gateway comes back first and enforces what it persisted (version 2, with
        // the posture): Alice gets in.
        let gw = gateway(&pki, &up, &control, s1.path());
        assert!(gw.log().contains("facts version 2"), "{}", gw.log());
        let mut a = flow(&gw, &pki, &alice);
        assert!(refuses(&gw, &pki, &other));

        // The control process restarts with the same facts.
        control.spawn();
        let after = control.wait_enforced(1);
        for k in ["facts_version", "revocations", "postures"] {
            assert_eq!(after[k], before[k], "{k}: {before} then {after}");
        }
        let listed: serde_json::Value =
            serde_json::from_str(&control.ok(&["revocations"])).unwrap();
        assert_eq!(
            listed["revocations"][0]["subject"]["principal"], OTHER_TRADER,
            "{listed}"
        );
        assert_eq!(listed["revocations"][0]["reason"], "SEC-9", "{listed}");
        // The reconnected gateway took the whole set: Alice's flow is closed.
        assert!(closed(&mut a), "the new fact set did not close the flow");
        closed_because(&gw, ENGINEER, "facts-changed");
        assert_eq!(
            gw.metric_settled(
                "zgate_flows_closed_by_policy_total{reason=\"facts-changed\"}",
                1
            ),
            1
        );
        // A gateway with nothing of its own learns the revocation from the restarted
        // control process.
        let s2 = tempfile::tempdir().unwrap();
        let fresh = gateway(&pki, &up, &control, s2.path());
        control.wait_enforced(2);
        assert!(refuses(&fresh, &pki, &other));
        drop(flow(&fresh, &pki, &leaf(&pki, TRADER, None)));

        // A corrupt state file: `serve` refuses to start, names the file and what
        // starting without it would cost, exits 65; a missing kept table, 71. Each
        // restored, it starts again with the same state.
        control.kill();
        let serve_refuses =
            |file: &str, damage: &dyn Fn(&std::path::Path), code: i32, says: &str| {
                let path = control.path(&format!("state/{file}"));
                let good = std::fs::read(&path).unwrap();
                damage(&path);
                let (status, log) = control.serve_until_exit();
                assert_eq!(status.code(), Some(code), "{file}: {log}");
                assert!(log.contains(&format!("`{}`", path.display())), "{log}");
                assert!(log.contains(says), "{file}: {log}");
                std::fs::write(&path, good).unwrap();
                log
            };
        let garbage =
            |p: &std::path::Path| std::fs::write(p, b"{\"version\": 3, \"tables\": [").unwrap();
        let log = serve_refuses("facts.json", &garbage, 65, "may have lost revocations");
        assert!(!log.contains("numbered from 1"), "{log}");
        let log = serve_refuses(
            "history.json",
            &garbage,
            65,
            "new tables would be numbered from 1 again",
        );
        assert!(!log.contains("revocations"), "{log}");
        let log = serve_refuses("tables/1.zgt", &garbage, 65, "is corrupt");
        assert!(log.contains("a kept table that does not verify"), "{log}");
        let log = serve_refuses(
            "tables/1.zgt",
            &|p| std::fs::remove_file(p).unwrap(),
            71,
            "No such file or directory",
        );
        assert!(!log.contains("is corrupt"), "{log}");
        // The gateways kept enforcing meanwhile.
        assert!(refuses(&fresh, &pki, &other));
        control.spawn();
        assert_eq!(control.status()["facts_version"], 3);
        assert_eq!(control.status()["table_version"], 1);
    }

    #[test]
    fn a_gateway_with_nothing_persisted_and_no_control_process_denies_everything() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let mut control = Control::start(&[("p.toml", POLICY)]);
        control.kill();
        let state = tempfile::tempdir().unwrap();
        let mut setup = Setup::new(up.addr);
        setup.table = None;
        setup.listener_extra = pki.listener_tls("");
        setup.tables_extra = control.gateway_section(state.path());
        setup.ready_path = "/healthz";
        let gw = Gateway::start(&setup);
        // Started on /healthz: until its worker is up `/readyz` says that instead.
        let deadline = std::time::Instant::now() + super::common::WAIT;
        let (code, body) = loop {
            let (code, body) = http_get(gw.admin, "/readyz").unwrap();
            if !body.contains("workers ready") || std::time::Instant::now() > deadline {
                break (code, body);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("fail closed"), "{body}");
        let trader = leaf(&pki, TRADER, None);
        assert!(refuses(&gw, &pki, &trader));
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        // A corrupt state file is the same: nothing it says is trusted.
        drop(gw);
        std::fs::write(state.path().join("table.zgt"), b"ZGTBL\0\r\n garbage").unwrap();
        std::fs::write(state.path().join("facts.zgf"), b"ZGCP").unwrap();
        let gw = Gateway::start(&setup);
        assert!(gw.log().contains("does not verify"), "{}", gw.log());
        assert_eq!(http_get(gw.admin, "/readyz").unwrap().0, 503);
    }

    /// An impostor on the channel socket sends `m` to the gateway on its next
    /// connection; the gateway must answer `Refused` and close the channel: the reason.
    fn refusal_of(l: &std::os::unix::net::UnixListener, m: &[u8]) -> String {
        use zgate_proto::{Decoder, Message, Side, MAX_PAYLOAD};
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(super::common::WAIT)).unwrap();
        s.write_all(m).unwrap();
        // Everything the gateway sends until it closes (a timeout here is a failure:
        // the channel stayed open).
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let mut d = Decoder::new(Side::Dataplane, MAX_PAYLOAD);
        d.push(&got);
        let mut reason = None;
        while let Some(m) = d.next().unwrap() {
            if let Message::Refused { reason: r } = m {
                reason = Some(r);
            }
        }
        reason.unwrap_or_else(|| panic!("closed without a refusal"))
    }

    /// Garbage, an older fact set, an older table, another table under the enforced
    /// version, a delta from a version not enforced: each closes the channel with its
    /// reason (logged, sent, counted, and shown as the gateway's `last_error` in
    /// `status` once a real control process is back), and nothing enforced changes.
    #[test]
    fn a_malformed_older_or_out_of_order_message_closes_the_channel_and_changes_nothing() {
        use std::os::unix::net::UnixListener;
        use zgate_proto::{
            Change, Encoder, FactsDelta, FactsSnapshot, Message, Subject, TableUpdate,
        };

        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let mut control = Control::start(&[("p.toml", POLICY)]);
        let state = tempfile::tempdir().unwrap();
        let (trader, other) = (leaf(&pki, TRADER, None), leaf(&pki, OTHER_TRADER, None));
        let alice = leaf(&pki, ENGINEER, None);
        let gw = gateway(&pki, &up, &control, state.path());
        control.ok(&["revoke", "--principal", OTHER_TRADER]);
        // Table version 2: the same rules and one more.
        control.write_policy(
            "q.toml",
            "[[rule]]\nid = \"deny-tests\"\naction = \"deny\"\nservices = [\"echo\"]\nprincipals = [\"spiffe://corp.example/ns/test/*\"]\n",
        );
        control.wait_status(|s| s["table_version"] == 2);
        control.wait_enforced(1);
        let mut live = flow(&gw, &pki, &trader);
        let table_v1 = std::fs::read(control.path("state/tables/1.zgt")).unwrap();
        control.kill();
        // An impostor on the channel socket.
        let _ = std::fs::remove_file(control.channel());
        let l = UnixListener::bind(control.channel()).unwrap();
        let frame = |m: Message| {
            let mut out = Vec::new();
            Encoder::new().encode(&m, &mut out);
            out
        };
        let cases: [(Vec<u8>, &str); 5] = [
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "malformed frame"),
            // Facts that would lift the revocation.
            (
                frame(Message::Facts(FactsSnapshot {
                    version: 0,
                    changes: vec![],
                })),
                "facts version 0 is older than the enforced 1",
            ),
            (
                frame(Message::Table(TableUpdate {
                    version: 1,
                    table: table_v1,
                })),
                "table version 1 is older than the enforced 2",
            ),
            // Allows everyone, under the enforced version.
            (
                frame(Message::Table(TableUpdate {
                    version: 2,
                    table: super::common::table_bytes(super::common::allow_all("echo"), 2),
                })),
                "table version 2 differs from the enforced table of the same version",
            ),
            (
                frame(Message::Delta(FactsDelta {
                    from: 0,
                    to: 5,
                    changes: vec![Change::Unrevoke(Subject::Principal(OTHER_TRADER.into()))],
                })),
                "fact delta from version 0, but version 1 is enforced",
            ),
        ];
        for (n, (bytes, why)) in cases.iter().enumerate() {
            let reason = refusal_of(&l, bytes);
            assert!(reason.contains(why), "case {n}: {reason}");
            let n = u64::try_from(n).unwrap() + 1;
            assert_eq!(gw.wait_metric("zgate_control_refusals_total", n), n);
            assert!(
                gw.log()
                    .contains(&format!("control: channel closed: {reason}")),
                "{}",
                gw.log()
            );
            // Nothing enforced changed: table 2, facts 1, the revocation stands, the
            // live flow echoes, and what table 2 denies is still denied.
            assert_eq!(gw.metric("zgate_table_version"), 2);
            assert_eq!(gw.metric("zgate_facts_version"), 1);
            assert!(echoes(&mut live));
            assert!(refuses(&gw, &pki, &other));
            assert!(refuses(&gw, &pki, &alice));
        }
        drop(flow(&gw, &pki, &trader));

        // The real control process back: the gateway's last refusal is in `status`.
        drop(l);
        let _ = std::fs::remove_file(control.channel());
        control.spawn();
        control.wait_enforced(1);
        // (Its first report follows its hello.)
        let s = control.wait_status(|s| !s["dataplanes"][0]["report"]["last_error"].is_null());
        let last = s["dataplanes"][0]["report"]["last_error"]
            .as_str()
            .unwrap_or_default();
        assert!(
            last.contains("fact delta from version 0, but version 1 is enforced"),
            "{s}"
        );
        let text = control.ok(&["status"]);
        assert!(
            text.contains("; last error: fact delta from version 0"),
            "{text}"
        );
        assert!(echoes(&mut live));
    }

    #[test]
    fn shadow_mode_reports_what_would_change_enforces_nothing_and_can_be_promoted() {
        let Scene {
            _keep,
            pki,
            control,
            gw,
        } = scene();
        let trader = leaf(&pki, TRADER, None);
        let other = leaf(&pki, OTHER_TRADER, None);
        let mut t1 = flow(&gw, &pki, &trader);
        let mut t2 = flow(&gw, &pki, &trader);
        let mut o1 = flow(&gw, &pki, &other);
        // The candidate admits only the quoter.
        let candidate = control.path("candidate");
        std::fs::create_dir_all(&candidate).unwrap();
        std::fs::write(
            candidate.join("p.toml"),
            POLICY.replace("ns/trading/*", "ns/trading/sa/quoter"),
        )
        .unwrap();
        let out = control.ok(&["apply", "--shadow", candidate.to_str().unwrap()]);
        assert!(out.contains("shadow"), "{out}");
        let impact: serde_json::Value =
            serde_json::from_str(&control.ok(&["impact", "--json"])).unwrap();
        assert_eq!(impact["would_close"], 2, "{impact}");
        let flows = impact["dataplanes"][0]["flows"].as_array().unwrap().clone();
        assert_eq!(flows.len(), 2);
        for f in &flows {
            assert_eq!(f["principal"], TRADER);
            assert_eq!(f["listener"], "echo");
            assert_eq!(f["rule"], "default-deny");
        }
        let text = control.ok(&["impact"]);
        assert!(text.contains("would close 2 live flow(s)"), "{text}");
        // Nothing enforced: all three still echo, a new trader flow still gets in, and
        // that decision is counted and audited as a shadow difference.
        assert!(echoes(&mut t1) && echoes(&mut t2) && echoes(&mut o1));
        drop(flow(&gw, &pki, &trader));
        let e = gw.wait_audit(|e| e["event"] == "shadow" && e["verdict"] == "deny");
        assert_eq!(e["spiffe_id"], TRADER);
        assert!(gw.wait_metric("zgate_shadow_differences_total", 3) >= 3);
        // Promoted: the trader flows close, the quoter's stays.
        control.ok(&["promote"]);
        assert!(closed(&mut t1) && closed(&mut t2));
        assert!(echoes(&mut o1));
        assert!(control.status()["shadow"].is_null());
    }

    #[test]
    fn the_sockets_admit_only_whom_they_should() {
        let token = "0123456789abcdef0123456789abcdef-siem";
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("# SIEM\nsiem {token}\n")).unwrap();
        std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        // Without --api the control process listens on no TCP port at all.
        let plain = Control::start(&[("p.toml", POLICY)]);
        assert_eq!(plain.tcp_listening(), Vec::<u16>::new());
        drop(plain);
        let port = super::common::free_port();
        let control = Control::start_with(
            &[("p.toml", POLICY)],
            &[
                "--api".into(),
                format!("127.0.0.1:{port}"),
                "--api-tokens".into(),
                tokens.display().to_string(),
            ],
        );
        // With it, on that port only.
        assert_eq!(control.tcp_listening(), [port]);
        // No token, a wrong token: 401, nothing changes.
        let api = |auth: Option<&str>, body: &str| -> (u16, String) {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
            write!(
                s,
                "POST /v1/revocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).unwrap();
            let code = resp.split(' ').nth(1).unwrap().parse().unwrap();
            (code, resp)
        };
        let body = format!("{{\"principal\":\"{TRADER}\",\"reason\":\"EDR alert 7\"}}");
        assert_eq!(api(None, &body).0, 401);
        assert_eq!(api(Some("not-the-token-not-the-token-xxxx"), &body).0, 401);
        assert_eq!(control.status()["facts_version"], 0);
        let (code, resp) = api(Some(token), &body);
        assert_eq!(code, 200, "{resp}");
        assert_eq!(control.status()["facts_version"], 1);
        let audit = std::fs::read_to_string(control.path("state/audit.jsonl")).unwrap();
        assert!(audit.contains("\"who\":\"token siem\""), "{audit}");
        // Bad input: a clear 400, nothing changes.
        let (code, resp) = api(Some(token), "{\"principal\":\"alice\"}");
        assert_eq!(code, 400, "{resp}");
        assert!(resp.contains("not a SPIFFE ID"), "{resp}");
        assert_eq!(control.status()["facts_version"], 1);

        // The operator socket, as a uid that is not admitted (tests run as root in CI).
        // The file modes are opened up so that only the peer-credential check stands.
        let me = effective_uid();
        if me == 0 {
            use std::os::unix::fs::PermissionsExt;
            let open = std::fs::Permissions::from_mode(0o777);
            std::fs::set_permissions(control.dir.path(), open.clone()).unwrap();
            std::fs::set_permissions(control.socket(), open).unwrap();
            let out = std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(super::common::control::control_bin())
                .args(["status", "--socket"])
                .arg(control.socket())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(77), "{out:?}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("not admitted"),
                "{out:?}"
            );
            assert!(
                control.log().contains("uid 65534 refused"),
                "{}",
                control.log()
            );
        } else {
            panic!("this test runs as root (CI does): it switches to uid 65534 to be refused");
        }
    }

    /// The effective uid, read from /proc (no libc call in tests).
    fn effective_uid() -> u32 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|r| r.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }
}
