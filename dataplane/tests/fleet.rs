//! The fleet end to end (issue 19): a real 3-member etcd cluster (Debian's etcd 3.4)
//! on loopback, three hosts each with its own `zgate-control serve --store etcd` and
//! `zgate run` subscribed to it, and real mTLS clients (rustls). A fact written on one
//! host reaches the live flows of all three; etcd losing a member changes nothing;
//! etcd gone entirely leaves every gateway enforcing what it has; one host cut off from
//! etcd (a relay that stops moving bytes: silence, no reset) reports stale facts and
//! catches up when healed; a control process restarted resumes from the revision it
//! kept, or reads everything again after a compaction. Partitions are relays on
//! loopback rather than network namespaces: the same silence, no privileges needed.
//!
//! Built with `--features zgate-dataplane/fleet-tests,zgate-control/etcd` (tools/test
//! does): the etcd client needs `protoc` to build.

#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines are the point"
)]

#[cfg(test)]
mod common;

#[cfg(test)]
mod fleet {
    use std::time::{Duration, Instant};

    use super::common::control::{control_bin, Control};
    use super::common::etcd::EtcdCluster;
    use super::common::partition::Link;
    use super::common::pki::{
        client_config, closed, connect_tls, echo_through, echoes, refused, refuses, Pki, Tls,
    };
    use super::common::{http_get, Gateway, Setup, Upstream, WAIT};
    use zgate_devpki::{ClientSpec, Leaf};

    const TRADER: &str = "spiffe://corp.example/ns/trading/sa/pricer";
    const OTHER_TRADER: &str = "spiffe://corp.example/ns/trading/sa/quoter";
    const ONCALL: &str = "spiffe://corp.example/ns/ops/sa/bob";
    /// The fleet's etcd prefix.
    const PREFIX: &str = "/zgate-test";

    const POLICY: &str = r#"
    [[rule]]
    id = "traders"
    action = "allow"
    services = ["echo"]
    principals = ["spiffe://corp.example/ns/trading/*"]

    [[rule]]
    id = "oncall-break-glass"
    action = "allow"
    services = ["echo"]
    principals = ["spiffe://corp.example/ns/ops/*"]
    requires_grant = true
    "#;

    /// One gateway host: its control process (facts in etcd) and its dataplane.
    struct Host {
        control: Control,
        gw: Gateway,
        /// Its gateway's config (a restart reuses it, and its state directory).
        setup: Setup,
        _state: tempfile::TempDir,
    }

    /// Three hosts on one etcd cluster, with one PKI and one upstream.
    struct Fleet {
        etcd: EtcdCluster,
        pki: Pki,
        _up: Upstream,
        hosts: Vec<Host>,
        /// Host 2's links to the three members, when it can be cut off.
        links: Vec<Link>,
    }

    /// The `serve` flags of a host on etcd at `endpoints`, with a client certificate
    /// when it speaks TLS.
    fn store_flags(endpoints: String, tls: Option<(&Pki, &str)>) -> Vec<String> {
        let mut flags: Vec<String> = vec![
            "--store".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            endpoints,
            "--etcd-prefix".into(),
            PREFIX.into(),
        ];
        if let Some((pki, name)) = tls {
            let spec = ClientSpec::spiffe(&format!("spiffe://etcd.test/{name}"));
            let (cert, key) = pki.write_leaf(name, &pki.client(&spec));
            for (flag, path) in [
                ("--etcd-ca", pki.path("ca.pem")),
                ("--etcd-cert", cert),
                ("--etcd-key", key),
            ] {
                flags.push(flag.into());
                flags.push(path.display().to_string());
            }
        }
        flags
    }

    impl Fleet {
        fn start() -> Fleet {
            Fleet::start_with(None, false)
        }

        /// Three hosts; with `tls`, etcd speaks only TLS and each control process shows
        /// its own client certificate; with `cuttable`, host 2 reaches the members
        /// through links the test can cut.
        fn start_with(tls: Option<&Pki>, cuttable: bool) -> Fleet {
            let etcd = EtcdCluster::start_with(3, tls);
            let pki = Pki::new(&[]);
            let up = Upstream::echo();
            let links: Vec<Link> = if cuttable {
                etcd.members
                    .iter()
                    .map(|m| Link::to(format!("127.0.0.1:{}", m.client_port)))
                    .collect()
            } else {
                Vec::new()
            };
            let hosts = (0..3)
                .map(|i| {
                    let name = format!("control-{i}");
                    let endpoints = if i == 2 && cuttable {
                        links
                            .iter()
                            .map(|l| format!("http://127.0.0.1:{}", l.port))
                            .collect::<Vec<_>>()
                            .join(",")
                    } else {
                        etcd.endpoints()
                    };
                    let control = Control::start_with(
                        &[("p.toml", POLICY)],
                        &store_flags(endpoints, tls.map(|t| (t, name.as_str()))),
                    );
                    let state = tempfile::tempdir().unwrap();
                    let mut setup = Setup::new(up.addr);
                    setup.table = None;
                    setup.listener_extra = pki.listener_tls("");
                    setup.tables_extra = control.gateway_named(&format!("gw-{i}"), state.path());
                    let gw = Gateway::start(&setup);
                    Host {
                        control,
                        gw,
                        setup,
                        _state: state,
                    }
                })
                .collect();
            let f = Fleet {
                etcd,
                pki,
                _up: up,
                hosts,
                links,
            };
            f.wait_in_step();
            f
        }

        fn leaf(&self, id: &str) -> Leaf {
            self.pki.client(&ClientSpec::spiffe(id))
        }

        fn flow(&self, host: usize, leaf: &Leaf) -> Tls {
            let mut s = connect_tls(&self.hosts[host].gw, client_config(&self.pki, Some(leaf)));
            echo_through(&mut s, b"hello");
            s
        }

        /// Wait until every control process has applied the same fact version and its
        /// gateway enforces it; that version.
        fn wait_in_step(&self) -> u64 {
            let deadline = Instant::now() + WAIT;
            loop {
                let versions: Vec<u64> = self
                    .hosts
                    .iter()
                    .map(|h| {
                        let s = h.control.wait_enforced(1);
                        s["facts_version"].as_u64().unwrap()
                    })
                    .collect();
                if versions.iter().all(|v| *v == versions[0]) {
                    return versions[0];
                }
                assert!(
                    Instant::now() < deadline,
                    "the hosts never agreed on a fact version: {versions:?}\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// Wait until `hosts` enforce one table from the fleet (same version, same
        /// table hash in the manifest) and their gateways enforce it; that version and
        /// hash.
        fn wait_same_table(&self, hosts: &[usize], newer_than: u64) -> (u64, String) {
            let deadline = Instant::now() + WAIT;
            loop {
                let seen: Vec<(u64, String)> = hosts
                    .iter()
                    .map(|&i| {
                        let s = self.hosts[i].control.wait_enforced(1);
                        let m = &s["fleet_policy"]["manifest"];
                        (
                            s["table_version"].as_u64().unwrap_or(0),
                            m["table_sha256"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect();
                let first = seen[0].clone();
                if first.0 > newer_than && seen.iter().all(|x| *x == first) {
                    return first;
                }
                assert!(
                    Instant::now() < deadline,
                    "hosts {hosts:?} never enforced one table newer than {newer_than}: {seen:?}\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// The host that is the fleet's elected compiler now, waiting for one among
        /// `hosts`.
        fn leader(&self, hosts: &[usize]) -> usize {
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(&i) = hosts
                    .iter()
                    .find(|&&i| self.hosts[i].control.status()["fleet_policy"]["leader"] == true)
                {
                    return i;
                }
                assert!(
                    Instant::now() < deadline,
                    "no compiler elected among {hosts:?}\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// Deploy a policy to `hosts` (as a config push would: every host gets the same
        /// directory).
        fn deploy(&self, hosts: &[usize], text: &str) {
            for &i in hosts {
                self.hosts[i].control.write_policy("p.toml", text);
            }
        }

        fn logs(&self) -> String {
            let mut out = String::new();
            for (i, h) in self.hosts.iter().enumerate() {
                out.push_str(&format!("--- control {i}:\n{}\n", h.control.log()));
            }
            out + &self.etcd.logs()
        }

        /// The principals revoked, as host `i` lists them.
        fn revoked(&self, i: usize) -> Vec<String> {
            let v: serde_json::Value =
                serde_json::from_str(&self.hosts[i].control.ok(&["revocations"])).unwrap();
            let mut out: Vec<String> = v["revocations"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["subject"]["principal"].as_str().map(String::from))
                .collect();
            out.sort();
            out
        }
    }

    /// A revocation written on one host closes the flows of that identity on all
    /// three, and only those; a grant made on another admits on all three and ends on
    /// all three, and etcd forgets it by itself (its lease).
    #[test]
    fn a_fact_written_on_one_host_reaches_the_live_flows_of_all_three() {
        let fleet = Fleet::start();
        let (victim, bystander) = (fleet.leaf(TRADER), fleet.leaf(OTHER_TRADER));
        // 20 flows of each identity on each gateway.
        let mut flows: Vec<(bool, Tls)> = Vec::new();
        for host in 0..3 {
            for i in 0..40 {
                let mine = i % 2 == 0;
                flows.push((
                    mine,
                    fleet.flow(host, if mine { &victim } else { &bystander }),
                ));
            }
        }
        let out = fleet.hosts[1].control.ok(&[
            "revoke",
            "--principal",
            TRADER,
            "--reason",
            "SEC-7 key leaked",
        ]);
        assert!(out.contains("revoked"), "{out}");
        for (mine, s) in flows.iter_mut() {
            if *mine {
                assert!(
                    closed(s),
                    "a flow of the revoked identity stayed open\n{}",
                    fleet.logs()
                );
            }
        }
        for (_, s) in flows.iter_mut().filter(|(m, _)| !*m) {
            assert!(echoes(s), "a flow of another identity was cut");
        }
        let version = fleet.wait_in_step();
        for (i, h) in fleet.hosts.iter().enumerate() {
            assert_eq!(
                h.gw.metric_settled("zgate_flows_closed_by_policy_total{reason=\"revoked\"}", 20),
                20,
                "gateway {i}"
            );
            assert_eq!(fleet.revoked(i), vec![TRADER.to_string()], "host {i}");
            assert!(refuses(&h.gw, &fleet.pki, &victim));
            let s = h.control.status();
            assert!(
                s["facts_store"].as_str().unwrap().starts_with("etcd "),
                "{s}"
            );
            assert_eq!(s["facts_store_sync"]["reachable"], true, "{s}");
        }
        // The writer audited who did it, with the store's revision.
        let audit =
            std::fs::read_to_string(fleet.hosts[1].control.path("state/audit.jsonl")).unwrap();
        let line = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["what"] == "revoke")
            .expect("no audit line for the revocation on the host that wrote it");
        assert_eq!(line["facts_version"], version, "{line}");

        // A grant made on host 2 admits on-call on all three, then ends on all three.
        let oncall = fleet.leaf(ONCALL);
        assert!(refused(connect_tls(
            &fleet.hosts[0].gw,
            client_config(&fleet.pki, Some(&oncall))
        )));
        fleet.hosts[2].control.ok(&[
            "grant",
            "--principal",
            ONCALL,
            "--service",
            "echo",
            "--for",
            "3s",
            "--reason",
            "INC-42",
        ]);
        fleet.wait_in_step();
        let mut oncall_flows: Vec<Tls> = (0..3).map(|h| fleet.flow(h, &oncall)).collect();
        for (i, s) in oncall_flows.iter_mut().enumerate() {
            assert!(
                closed(s),
                "host {i}: the grant's end did not close the flow"
            );
        }
        for (i, h) in fleet.hosts.iter().enumerate() {
            h.gw.wait_audit(|e| {
                e["event"] == "closed_by_policy"
                    && e["spiffe_id"] == ONCALL
                    && e["cause"] == "grant-ended"
            });
            // The elected compiler deletes the ended grant; every host applies the delete.
            let s = h.control.wait_status(|s| s["grants"] == 0);
            assert_eq!(s["grants"], 0, "host {i} still lists the grant: {s}");
        }
        fleet.wait_in_step();
    }

    /// A policy change reaches all three as one table (one compiler, the same hash
    /// everywhere) and closes what it no longer allows on all three; the compiler
    /// killed, another is elected and the next change lands on the hosts left.
    #[test]
    fn a_policy_change_reaches_all_three_as_one_table_and_survives_its_compiler() {
        let fleet = Fleet::start();
        let (v1, _) = fleet.wait_same_table(&[0, 1, 2], 0);
        let leaders: Vec<usize> = (0..3)
            .filter(|&i| fleet.hosts[i].control.status()["fleet_policy"]["leader"] == true)
            .collect();
        assert_eq!(leaders.len(), 1, "one compiler at a time: {leaders:?}");
        let quoter = fleet.leaf(OTHER_TRADER);
        let mut flows: Vec<Tls> = (0..3).map(|h| fleet.flow(h, &quoter)).collect();
        // Traders narrowed to the pricer: the quoter's flows close on every host.
        let narrowed = POLICY.replace(
            "spiffe://corp.example/ns/trading/*",
            "spiffe://corp.example/ns/trading/sa/pricer",
        );
        fleet.deploy(&[0, 1, 2], &narrowed);
        let (v2, sha2) = fleet.wait_same_table(&[0, 1, 2], v1);
        for (i, s) in flows.iter_mut().enumerate() {
            assert!(
                closed(s),
                "host {i}: the narrowed policy left the flow open"
            );
        }
        for (i, h) in fleet.hosts.iter().enumerate() {
            let s = h.control.status();
            assert_eq!(
                s["fleet_policy"]["manifest"]["table_sha256"],
                sha2.as_str(),
                "host {i}"
            );
            assert_eq!(s["fleet_policy"]["manifest"]["rules"], 2, "host {i}");
            assert!(refuses(&h.gw, &fleet.pki, &quoter));
        }
        // Rollback is the compiler's business in a fleet: refused here, in words.
        let out = fleet.hosts[0].control.cli(&["rollback"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("refused in a fleet"));

        // The compiler dies: another is elected; the next change lands on the others.
        let mut fleet = fleet;
        let dead = fleet.leader(&[0, 1, 2]);
        fleet.hosts[dead].control.kill();
        let alive: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
        let next = fleet.leader(&alive);
        assert_ne!(next, dead);
        fleet.deploy(&alive, POLICY);
        let (v3, _) = fleet.wait_same_table(&alive, v2);
        assert!(v3 > v2);
        for &i in &alive {
            drop(fleet.flow(i, &quoter));
        }
        // The host without its control process keeps enforcing what it had.
        assert!(refused(connect_tls(
            &fleet.hosts[dead].gw,
            client_config(&fleet.pki, Some(&quoter))
        )));
    }

    /// etcd with TLS and client-certificate auth: three control processes with their
    /// own certificates share facts and table as over plain HTTP; one whose certificate
    /// etcd does not trust (another CA) never gets in step, says so, and its writes
    /// are refused; one without TLS flags is refused at its command line.
    #[test]
    fn over_mtls_only_control_processes_with_a_trusted_certificate_reach_etcd() {
        let etcd_pki = Pki::new(&[]);
        let fleet = Fleet::start_with(Some(&etcd_pki), false);
        let victim = fleet.leaf(TRADER);
        let mut flows: Vec<Tls> = (0..3).map(|h| fleet.flow(h, &victim)).collect();
        fleet.hosts[1]
            .control
            .ok(&["revoke", "--principal", TRADER]);
        fleet.wait_in_step();
        for (i, s) in flows.iter_mut().enumerate() {
            assert!(closed(s), "host {i}: the revocation did not close the flow");
        }
        fleet.wait_same_table(&[0, 1, 2], 0);

        // A certificate from another CA: etcd refuses the handshake.
        let stranger_pki = Pki::new(&[]);
        let mut flags = store_flags(fleet.etcd.endpoints(), Some((&stranger_pki, "stranger")));
        // It trusts the members (the right CA) but shows a certificate they do not.
        let ca_at = flags.iter().position(|f| f == "--etcd-ca").unwrap() + 1;
        flags[ca_at] = etcd_pki.path("ca.pem").display().to_string();
        let stranger = Control::start_with(&[("p.toml", POLICY)], &flags);
        std::thread::sleep(Duration::from_secs(2));
        let s = stranger.status();
        assert_eq!(s["facts_store_sync"]["reachable"], false, "{s}");
        assert!(
            s["facts_store_sync"]["age_ms"].is_null(),
            "never in step: {s}"
        );
        let log = stranger.log();
        assert!(log.contains("shared store unreachable"), "{log}");
        let out = stranger.cli(&["revoke", "--principal", OTHER_TRADER]);
        assert!(!out.status.success());
        // Nothing it tried reached the fleet.
        for i in 0..3 {
            assert_eq!(fleet.revoked(i), vec![TRADER.to_string()], "host {i}");
        }

        // https:// endpoints without a CA: refused before anything starts.
        let out = std::process::Command::new(control_bin())
            .args([
                "serve",
                "--policy-dir",
                "/nonexistent",
                "--state-dir",
                "/nonexistent",
            ])
            .args([
                "--store",
                "etcd",
                "--etcd-endpoints",
                &fleet.etcd.endpoints(),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "a usage error: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("need --etcd-ca"),
            "{out:?}"
        );
    }

    /// One host cut off from etcd (its links stop moving bytes; nothing is closed), the
    /// others not: a revocation written meanwhile closes the flows on the two that hear
    /// of it; the cut-off host cannot know, so its gateway says its facts are stale,
    /// and a write there is refused in words. The link healed, it catches up from its
    /// revision: the revocation lands there too, fresh again, in step.
    #[test]
    fn a_host_cut_off_from_etcd_reports_stale_facts_and_catches_up_when_healed() {
        let fleet = Fleet::start_with(None, true);
        let victim = fleet.leaf(TRADER);
        let mut flows: Vec<Tls> = (0..3).map(|h| fleet.flow(h, &victim)).collect();
        for (i, h) in fleet.hosts.iter().enumerate() {
            assert_eq!(
                h.gw.wait_metric_at_most("zgate_facts_stale", 0),
                0,
                "host {i}"
            );
        }
        for l in &fleet.links {
            l.cut();
        }
        fleet.hosts[0]
            .control
            .ok(&["revoke", "--principal", TRADER]);
        for (i, s) in flows.iter_mut().enumerate().take(2) {
            assert!(closed(s), "host {i}: the revocation did not close the flow");
        }
        let cut_off = &fleet.hosts[2];
        assert_eq!(cut_off.gw.wait_metric("zgate_facts_stale", 1), 1);
        let (code, body) = http_get(cut_off.gw.admin, "/readyz").unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("facts STALE"), "{body}");
        // It has not heard: the flow there still flows (fail static, and stale).
        assert!(
            echoes(&mut flows[2]),
            "the cut-off host acted on what it cannot know"
        );
        let out = cut_off
            .control
            .cli(&["revoke", "--principal", OTHER_TRADER]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("did not answer"), "{err}");
        for i in 0..2 {
            assert_eq!(
                fleet.hosts[i].gw.metric("zgate_facts_stale"),
                0,
                "host {i} is in step"
            );
        }

        for l in &fleet.links {
            l.heal();
        }
        assert!(
            closed(&mut flows[2]),
            "healed, the revocation reached host 2"
        );
        assert_eq!(
            fleet.hosts[2]
                .gw
                .wait_metric_at_most("zgate_facts_stale", 0),
            0
        );
        // The write refused during the cut may still have landed (it was only
        // delayed): whatever the store holds, all three agree on it.
        fleet.wait_in_step();
        assert!(fleet.revoked(2).contains(&TRADER.to_string()));
    }

    /// A manifest whose chunk does not match its hash (someone with write access to
    /// etcd, or a bit flipped) is refused on every host and the table in force stays;
    /// the compiler sees a manifest that is not its compilation and publishes its own
    /// again, which every host takes.
    #[test]
    fn an_altered_table_in_etcd_is_refused_everywhere_and_the_compiler_puts_it_right() {
        let fleet = Fleet::start();
        let (v1, _) = fleet.wait_same_table(&[0, 1, 2], 0);
        let policy_sha = |i: usize| {
            fleet.hosts[i].control.status()["fleet_policy"]["manifest"]["policy_sha256"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let compiled = policy_sha(0);
        let forged = "0".repeat(64);
        fleet.etcd.put(
            &format!("{PREFIX}/policy/chunks/{forged}"),
            b"allow everyone",
        );
        let manifest = serde_json::json!({
            "version": v1 + 1, "table_sha256": forged, "policy_sha256": forged,
            "rules": 1, "size": 14, "chunks": [forged], "compiled_by": "mallory", "at": 0,
        });
        fleet.etcd.put(
            &format!("{PREFIX}/policy/manifest"),
            manifest.to_string().as_bytes(),
        );
        let (v2, _) = fleet.wait_same_table(&[0, 1, 2], v1);
        assert!(v2 > v1 + 1, "a version past the forged one: {v2}");
        for (i, h) in fleet.hosts.iter().enumerate() {
            assert_eq!(
                policy_sha(i),
                compiled,
                "host {i}: the same policy, published again"
            );
            let log = h.control.log();
            assert!(
                log.contains(&format!(
                    "chunk {forged} of table version {} does not match its hash",
                    v1 + 1
                )),
                "host {i}: {log}"
            );
            assert!(
                !log.contains(&format!("table version {} from the fleet", v1 + 1)),
                "host {i}: {log}"
            );
        }

        // A manifest claiming a table larger than any dataplane takes is refused
        // before a byte of it is fetched (no allocation of its size).
        let huge = serde_json::json!({
            "version": v2 + 1, "table_sha256": forged, "policy_sha256": forged,
            "rules": 1, "size": 1u64 << 40, "chunks": [forged], "compiled_by": "mallory",
            "at": 0,
        });
        fleet.etcd.put(
            &format!("{PREFIX}/policy/manifest"),
            huge.to_string().as_bytes(),
        );
        let (v3, _) = fleet.wait_same_table(&[0, 1, 2], v2);
        assert!(v3 > v2 + 1, "a version past the forged one: {v3}");
        for (i, h) in fleet.hosts.iter().enumerate() {
            let log = h.control.log();
            assert!(
                log.contains(&format!("the manifest of table version {} claims", v2 + 1)),
                "host {i}: {log}"
            );
        }
    }

    /// One etcd member down: writes and their enforcement go on. All of etcd down:
    /// every gateway keeps enforcing (fail static), every control process says it is
    /// out of step and for how long, a write is refused in words. etcd back: they are
    /// in step again, and the writes made next land everywhere in order.
    #[test]
    fn etcd_losing_a_member_or_everything_leaves_enforcement_standing() {
        let mut fleet = Fleet::start();
        let (victim, bystander) = (fleet.leaf(TRADER), fleet.leaf(OTHER_TRADER));
        fleet.etcd.kill_member(0);
        fleet.hosts[0]
            .control
            .ok(&["revoke", "--principal", TRADER]);
        fleet.wait_in_step();
        for h in &fleet.hosts {
            assert!(refuses(&h.gw, &fleet.pki, &victim));
        }

        // Everything down.
        fleet.etcd.kill_member(1);
        fleet.etcd.kill_member(2);
        for (i, h) in fleet.hosts.iter().enumerate() {
            let s = h.control.wait_status(|s| {
                s["facts_store_sync"]["reachable"] == false
                    && s["facts_store_sync"]["age_ms"].as_i64().unwrap_or(0) >= 1000
            });
            assert_eq!(s["facts_store_sync"]["reachable"], false, "host {i}: {s}");
            assert!(
                s["facts_store_sync"]["age_ms"].as_i64().unwrap() >= 1000,
                "host {i}: {s}"
            );
            // Each gateway says its facts are stale (past 1 s) and still enforces them.
            assert_eq!(h.gw.wait_metric("zgate_facts_stale", 1), 1, "gateway {i}");
            let (code, body) = http_get(h.gw.admin, "/readyz").unwrap();
            assert_eq!(code, 200, "gateway {i}: {body}");
            assert!(body.contains("facts STALE"), "gateway {i}: {body}");
            // Enforcement stands: the revoked stay out, the others get in.
            assert!(refuses(&h.gw, &fleet.pki, &victim));
            drop(fleet.flow(i, &bystander));
        }
        let out = fleet.hosts[2]
            .control
            .cli(&["revoke", "--principal", OTHER_TRADER]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("shared store did not take the change"),
            "{err}"
        );

        // Back: in step again; an ordered burst of changes from two hosts lands the same
        // everywhere (revoke, lift, revoke again: any reordering leaves a different set).
        for i in 0..3 {
            fleet.etcd.start_member(i);
        }
        fleet.etcd.wait_healthy();
        for (i, h) in fleet.hosts.iter().enumerate() {
            h.control
                .wait_status(|s| s["facts_store_sync"]["reachable"] == true);
            assert_eq!(
                h.gw.wait_metric_at_most("zgate_facts_stale", 0),
                0,
                "gateway {i}"
            );
        }
        fleet.hosts[0]
            .control
            .ok(&["unrevoke", "--principal", TRADER]);
        fleet.hosts[1]
            .control
            .ok(&["revoke", "--principal", OTHER_TRADER]);
        fleet.hosts[2]
            .control
            .ok(&["unrevoke", "--principal", OTHER_TRADER]);
        fleet.hosts[0]
            .control
            .ok(&["revoke", "--principal", OTHER_TRADER]);
        fleet.wait_in_step();
        for i in 0..3 {
            assert_eq!(fleet.revoked(i), vec![OTHER_TRADER.to_string()], "host {i}");
            drop(fleet.flow(i, &victim));
            assert!(refused(connect_tls(
                &fleet.hosts[i].gw,
                client_config(&fleet.pki, Some(&bystander))
            )));
        }
    }

    /// A control process restarted resumes its watch after the revision it kept (and
    /// gets what it missed); restarted after a compaction past that revision, it reads
    /// every fact again. Its gateway enforces the result both times. A gateway
    /// restarted resumes from the version it persisted.
    #[test]
    fn a_restarted_control_process_resumes_or_resyncs_after_a_compaction() {
        let mut fleet = Fleet::start();
        let victim = fleet.leaf(TRADER);
        fleet.hosts[2].control.kill();
        fleet.hosts[0]
            .control
            .ok(&["revoke", "--principal", TRADER]);
        fleet.hosts[2].control.spawn();
        fleet.wait_in_step();
        assert!(
            fleet.hosts[2]
                .control
                .log()
                .contains("resuming after revision"),
            "{}",
            fleet.hosts[2].control.log()
        );
        assert_eq!(fleet.revoked(2), vec![TRADER.to_string()]);
        assert!(refused(connect_tls(
            &fleet.hosts[2].gw,
            client_config(&fleet.pki, Some(&victim))
        )));

        fleet.hosts[2].control.kill();
        fleet.hosts[1]
            .control
            .ok(&["unrevoke", "--principal", TRADER]);
        fleet.hosts[1]
            .control
            .ok(&["revoke", "--principal", OTHER_TRADER]);
        fleet.etcd.compact();
        fleet.hosts[2].control.spawn();
        fleet.wait_in_step();
        let log = fleet.hosts[2].control.log();
        assert!(log.contains("reading every fact again"), "{log}");
        assert_eq!(fleet.revoked(2), vec![OTHER_TRADER.to_string()]);
        drop(fleet.flow(2, &victim));

        // A gateway restarted enforces what it persisted at once (the revocation
        // included, before its control process answers) and resubscribes from that
        // version: nothing older is sent, nothing is missed.
        let version = fleet.wait_in_step();
        let bystander = fleet.leaf(OTHER_TRADER);
        let host = &mut fleet.hosts[1];
        // Killed (a crash), then started on the same config and state directory.
        host.gw.child.kill().unwrap();
        host.gw.child.wait().unwrap();
        host.gw = Gateway::start(&host.setup);
        assert!(host.gw.log().contains("fail static"), "{}", host.gw.log());
        assert_eq!(host.gw.metric("zgate_facts_version"), version);
        assert!(
            host.control
                .log()
                .contains(&format!("it enforces table 1 and facts {version}")),
            "{}",
            host.control.log()
        );
        fleet.wait_in_step();
        assert!(refused(connect_tls(
            &fleet.hosts[1].gw,
            client_config(&fleet.pki, Some(&bystander))
        )));
        drop(fleet.flow(1, &victim));
    }
}
