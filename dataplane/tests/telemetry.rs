//! The gateway's own latency (issue 17): histograms per listener that move with the
//! traffic through that listener only, `/latency` percentiles that fit inside what a
//! client measures through the gateway, and a `/metrics` page a real Prometheus parser
//! reads.
#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes and time their own round trips"
)]

#[cfg(test)]
mod common;

#[cfg(test)]
mod latency {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use super::common::*;

    /// Two plain listeners on one echo upstream: `echo` (the Setup's) and `other`.
    fn two_listeners(up: &Upstream, extra_workers: &str) -> (Gateway, std::net::SocketAddr) {
        let mut setup = Setup::new(up.addr);
        let other: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        setup.table = Some(table_bytes(
            [allow_all("echo"), allow_all("other")]
                .concat()
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| {
                    r.id = format!("allow-{i}");
                    r
                })
                .collect(),
            1,
        ));
        setup.workers_extra = extra_workers.to_string();
        setup.tables_extra = format!(
            "[[listener]]\nname = \"other\"\nlisten = \"{other}\"\nupstream = \"{}\"\n",
            up.addr
        );
        (Gateway::start(&setup), other)
    }

    /// `n` 64-byte round trips on one connection; the client's own RTTs, sorted.
    fn ping(addr: std::net::SocketAddr, n: usize) -> Vec<Duration> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let msg = [7u8; 64];
        let mut back = [0u8; 64];
        let mut rtts = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut back).unwrap();
            rtts.push(t.elapsed());
        }
        rtts.sort();
        rtts
    }

    fn measure<'a>(v: &'a serde_json::Value, listener: &str, m: &str) -> &'a serde_json::Value {
        let l = v["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["listener"] == listener)
            .unwrap_or_else(|| panic!("no listener {listener} in {v}"));
        l["measures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["measure"] == m)
            .unwrap_or_else(|| panic!("no measure {m} in {l}"))
    }

    /// Wait (bounded) until `/latency` shows at least `n` dwell samples on `listener`
    /// (workers hand their histograms over once a second).
    fn wait_dwell(gw: &Gateway, listener: &str, n: u64) -> serde_json::Value {
        wait_measure(gw, listener, "dwell_upstream_to_client", n)
    }

    /// Wait (bounded) until `/latency` shows at least `n` samples of measure `m` on
    /// `listener`; the whole `/latency` then.
    fn wait_measure(gw: &Gateway, listener: &str, m: &str, n: u64) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((200, body)) = http_get(gw.admin, "/latency") {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                if count(&v, listener, m) >= n {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {n} {m} samples on {listener}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many samples of measure `m` `/latency` (`v`) has on `listener` since start.
    fn count(v: &serde_json::Value, listener: &str, m: &str) -> u64 {
        measure(v, listener, m)["since_start"]["count"]
            .as_u64()
            .unwrap_or(0)
    }

    #[test]
    fn a_listeners_histograms_move_with_its_traffic_only_and_fit_inside_the_client_rtt() {
        let up = Upstream::echo();
        let (gw, _other) = two_listeners(&up, "");
        let rtts = ping(gw.listen, 2000);
        let v = wait_dwell(&gw, "echo", 2000);
        let c2u = measure(&v, "echo", "dwell_client_to_upstream");
        let u2c = measure(&v, "echo", "dwell_upstream_to_client");
        assert!(
            c2u["since_start"]["count"].as_u64().unwrap() >= 2000,
            "{c2u}"
        );
        // The gateway's share of a round trip: more than nothing, less than the whole
        // round trip the client saw (which also holds the upstream and four socket hops).
        let client_p50_us = rtts[rtts.len() / 2].as_secs_f64() * 1e6;
        let gw_p50_us = c2u["since_start"]["p50_us"].as_f64().unwrap()
            + u2c["since_start"]["p50_us"].as_f64().unwrap();
        assert!(
            gw_p50_us > 0.0 && gw_p50_us < client_p50_us,
            "gateway dwell p50 {gw_p50_us} µs vs client RTT p50 {client_p50_us} µs"
        );
        // The longest dwell fits inside the longest round trip, but for one scheduler
        // slice: the worker reads its loop clock once per turn, and a worker preempted
        // between a send's completion and that read counts the preemption too (seen on
        // a loaded 2-core CI machine: 1.46 ms against a 1.00 ms round trip). Units or
        // clock errors would be off by far more.
        let client_max_us = rtts[rtts.len() - 1].as_secs_f64() * 1e6;
        let gw_max_us = u2c["since_start"]["max_us"].as_f64().unwrap();
        assert!(
            gw_max_us <= client_max_us + 20_000.0,
            "{gw_max_us} vs {client_max_us}"
        );
        // The upstream connect and the flow were timed too (the flow once it ends).
        assert!(
            measure(&v, "echo", "upstream_connect")["since_start"]["count"]
                .as_u64()
                .unwrap()
                >= 1
        );
        // Nothing moved on the other listener.
        for m in [
            "dwell_client_to_upstream",
            "dwell_upstream_to_client",
            "upstream_connect",
        ] {
            assert_eq!(measure(&v, "other", m)["since_start"]["count"], 0, "{m}");
        }
        // The window holds the recent samples.
        assert!(u2c["last_window"]["count"].as_u64().unwrap() >= 1, "{u2c}");
    }

    #[test]
    fn metrics_parse_with_a_prometheus_parser_and_carry_the_histograms() {
        let up = Upstream::echo();
        let (gw, _other) = two_listeners(&up, "");
        drop(ping(gw.listen, 100));
        wait_dwell(&gw, "echo", 100);
        let (code, body) = http_get(gw.admin, "/metrics").unwrap();
        assert_eq!(code, 200);
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("/metrics parses");
        let mut names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        // Every family shown is one of the declared ones (whose names
        // `names_follow_the_prometheus_conventions` checks), a listener family's
        // per-worker copy, or a latency histogram.
        let declared: Vec<String> = zgate_dataplane::metrics::all_families()
            .flat_map(|f| [f.name.to_string(), f.worker_name()])
            .collect();
        let mut typed: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        typed.sort_unstable();
        assert!(typed.len() > 40, "{typed:?}");
        for n in &typed {
            assert!(
                declared.iter().any(|d| d == n)
                    || n.ends_with("_seconds") && body.contains(&format!("# TYPE {n} histogram")),
                "/metrics shows `{n}`, which no list declares"
            );
        }
        for n in &names {
            assert!(
                n.starts_with("zgate_")
                    && n.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "naming: {n}"
            );
        }
        let dwell: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "zgate_dwell_seconds")
            .collect();
        assert!(
            !dwell.is_empty(),
            "no zgate_dwell_seconds histogram in:\n{body}"
        );
        let echo_c2u = dwell
            .iter()
            .find(|s| {
                s.labels.get("listener") == Some("echo")
                    && s.labels.get("direction") == Some("client_to_upstream")
            })
            .expect("echo's client_to_upstream dwell");
        match &echo_c2u.value {
            prometheus_parse::Value::Histogram(buckets) => {
                let top = buckets.last().map_or(0.0, |b| b.count);
                assert!(top >= 100.0, "{buckets:?}");
                // Cumulative buckets never go down.
                assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
            }
            other => panic!("not a histogram: {other:?}"),
        }
        // Counters carry their listener too, and help text exists for every family.
        assert!(scrape.docs.contains_key("zgate_dwell_seconds"));
        assert!(scrape
            .samples
            .iter()
            .any(|s| s.metric == "zgate_connections_accepted_total"
                && s.labels.get("listener") == Some("other")));
    }

    /// TLS flows: full handshakes timed, and the record layer's share of the dwell
    /// (opens and seals, one in 64 timed) inside the dwell itself; sampled decisions
    /// and flow durations on plain flows.
    #[test]
    fn tls_handshakes_crypto_decisions_and_flow_durations_are_timed() {
        use super::common::pki::{client_config, connect_tls, trading_only, Pki, TRADING};
        const PINGS: usize = 1280;
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        setup.table = Some(trading_only());
        setup.listener_extra = pki.listener_tls("");
        let gw = Gateway::start(&setup);
        let leaf = pki.client(&zgate_devpki::ClientSpec::spiffe(TRADING));
        let cfg = client_config(&pki, Some(&leaf));
        for _ in 0..2 {
            let mut s = connect_tls(&gw, cfg.clone());
            let mut back = [0u8; 64];
            for _ in 0..PINGS / 2 {
                s.write_all(&[7u8; 64]).unwrap();
                s.read_exact(&mut back).unwrap();
            }
        }
        let v = wait_dwell(&gw, "echo", PINGS as u64);
        let samples = |m: &str| count(&v, "echo", m);
        let handshakes = samples("tls_handshake_full") + samples("tls_handshake_resumed");
        assert_eq!(handshakes, 2);
        // Each ping is one open and one seal call, give or take a coalesced pair.
        let per_sample = zgate_telemetry::latency::CRYPTO_SAMPLE as usize;
        for m in ["tls_open", "tls_seal"] {
            let n = samples(m);
            assert!(
                (PINGS / per_sample / 2..=PINGS / per_sample + 2).contains(&(n as usize)),
                "{m}: {n} samples for {PINGS} pings"
            );
        }
        // Opening is part of the client-to-upstream dwell, sealing of the other way.
        let p = |m: &str, q: &str| measure(&v, "echo", m)["since_start"][q].as_f64().unwrap();
        assert!(p("tls_open", "p50_us") > 0.0);
        assert!(
            p("tls_open", "p50_us") <= p("dwell_client_to_upstream", "max_us"),
            "{v}"
        );
        assert!(
            p("tls_seal", "p50_us") <= p("dwell_upstream_to_client", "max_us"),
            "{v}"
        );

        // Plain flows: 128 short ones give at least one sampled decision (one in 64)
        // and 128 flow durations.
        let up = Upstream::echo();
        let (gw, _other) = two_listeners(&up, "");
        for _ in 0..128 {
            drop(ping(gw.listen, 1));
        }
        let v = wait_measure(&gw, "echo", "flow_duration", 128);
        let samples = |m: &str| count(&v, "echo", m);
        assert_eq!(samples("flow_duration"), 128);
        assert!(
            (1..=2).contains(&samples("decision")),
            "{}",
            samples("decision")
        );
        assert!(
            measure(&v, "echo", "decision")["since_start"]["p50_us"]
                .as_f64()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn histograms_can_be_switched_off() {
        let up = Upstream::echo();
        let (gw, _other) = two_listeners(&up, "latency = false\n");
        drop(ping(gw.listen, 10));
        let (code, body) = http_get(gw.admin, "/latency").unwrap();
        assert_eq!(code, 404, "{body}");
        assert!(body.contains("latency = false"), "{body}");
        let (_, metrics) = http_get(gw.admin, "/metrics").unwrap();
        assert!(!metrics.contains("zgate_dwell_seconds"), "{metrics}");
    }

    /// Every line the gateway writes validates against the schema; a flow's decision,
    /// re-decision and close share its id; the close says how long, how many bytes,
    /// and why.
    #[test]
    fn audit_lines_follow_the_schema_and_a_flows_records_share_its_id() {
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let (other, broken, sides) = (free_port(), free_port(), free_port());
        // `sides`' upstream does what the client's first three bytes say: `fin`: answer
        // and finish first; `rst`: reset (closing with bytes unread); `cli`: answer and
        // wait for the client to go.
        let sides_up = Upstream::start(|mut s| {
            let mut cmd = [0u8; 3];
            if s.read_exact(&mut cmd).is_err() {
                return;
            }
            match &cmd {
                b"fin" => {
                    let _ = s.write_all(b"ok");
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let _ = s.read_to_end(&mut Vec::new());
                }
                b"rst" => {
                    let _ = s.peek(&mut cmd);
                }
                _ => {
                    let _ = s.write_all(b"ok");
                    let _ = s.read_to_end(&mut Vec::new());
                }
            }
        });
        // `echo`, `broken` and `sides` allowed; `other` named by no rule (default deny).
        let mut rules = allow_all("echo");
        for name in ["broken", "sides"] {
            let mut b = allow_all(name);
            b[0].id = format!("allow-{name}");
            rules.extend(b);
        }
        setup.table = Some(table_bytes(rules, 1));
        setup.tables_extra = format!(
            "[[listener]]\nname = \"other\"\nlisten = \"127.0.0.1:{other}\"\nupstream = \"{}\"\n\n\
             [[listener]]\nname = \"broken\"\nlisten = \"127.0.0.1:{broken}\"\nupstream = \"{dead}\"\n\n\
             [[listener]]\nname = \"sides\"\nlisten = \"127.0.0.1:{sides}\"\nupstream = \"{}\"\n",
            up.addr, sides_up.addr
        );
        let gw = Gateway::start(&setup);
        // A flow that finishes: 5 bytes each way, then the client closes.
        let mut s = gw.connect();
        s.write_all(b"hello").unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        // The upstream finishes first: the client reads its answer and the end.
        let mut u = TcpStream::connect(("127.0.0.1", sides)).unwrap();
        u.write_all(b"fin").unwrap();
        let mut answer = Vec::new();
        u.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"ok");
        drop(u);
        let upstream_fin = gw.wait_audit(|e| e["event"] == "close" && e["cause"] == "upstream-fin");
        // The upstream resets: the client is reset.
        let mut r = TcpStream::connect(("127.0.0.1", sides)).unwrap();
        r.write_all(b"rst and more").unwrap();
        assert_eq!(
            r.read_to_end(&mut Vec::new()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
        let upstream_reset =
            gw.wait_audit(|e| e["event"] == "close" && e["cause"] == "upstream-reset");
        // The client resets (closing with the answer unread).
        let mut c = TcpStream::connect(("127.0.0.1", sides)).unwrap();
        c.write_all(b"cli").unwrap();
        let _ = c.peek(&mut [0u8; 2]).unwrap();
        drop(c);
        let client_reset = gw.wait_audit(|e| e["event"] == "close" && e["cause"] == "client-reset");
        for e in [&upstream_fin, &upstream_reset, &client_reset] {
            assert_eq!(e["listener"], "sides", "{e}");
        }
        assert_eq!(upstream_fin["bytes_upstream_to_client"], 2);
        assert_eq!(upstream_reset["bytes_upstream_to_client"], 0);
        // A denied flow, and one whose upstream refuses.
        let mut d = TcpStream::connect(("127.0.0.1", other)).unwrap();
        assert!(ends_without_data(&mut d));
        let mut f = TcpStream::connect(("127.0.0.1", broken)).unwrap();
        assert!(ends_without_data(&mut f));
        // A live flow closed by a new table.
        let live = gw.connect();
        assert_eq!(round_trip(&live, b"x"), b"x");
        std::fs::write(&gw.table_path, table_bytes(vec![], 2)).unwrap();
        gw.signal("HUP");
        let policy_close = gw.wait_audit(|e| e["event"] == "close" && e["cause"] == "policy");
        let finished = gw.wait_audit(|e| e["event"] == "close" && e["cause"] == "client-fin");
        let refused =
            gw.wait_audit(|e| e["event"] == "close" && e["cause"] == "upstream-connect-failed");
        gw.wait_audit(|e| e["event"] == "upstream_connect_failed");
        gw.wait_audit(|e| e["event"] == "decision" && e["verdict"] == "deny");
        for line in gw.audit() {
            zgate_telemetry::schema::validate(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        }
        assert_eq!(finished["bytes_client_to_upstream"], 5);
        assert_eq!(finished["bytes_upstream_to_client"], 5);
        assert!(finished["duration_us"].as_u64().unwrap() > 0);
        let decision = gw.wait_audit(|e| e["event"] == "decision" && e["flow"] == finished["flow"]);
        assert_eq!(decision["verdict"], "allow");
        let re = gw.wait_audit(|e| e["event"] == "closed_by_policy");
        assert_eq!(re["flow"], policy_close["flow"]);
        assert_eq!(re["cause"], "policy-changed");
        assert_eq!(refused["listener"], "broken");
    }

    /// Every metric the Grafana dashboard in hw-config/ queries exists on a gateway's
    /// `/metrics` (one subscribed to a control process, so the channel's families are
    /// there too).
    #[test]
    fn the_grafana_dashboard_queries_only_metrics_that_exist() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../hw-config/grafana/zgate.json");
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut queried = Vec::new();
        for p in dash["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                let mut rest = expr;
                while let Some(at) = rest.find("zgate_") {
                    let name: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    rest = &rest[at + name.len()..];
                    queried.push(name);
                }
            }
        }
        queried.sort();
        queried.dedup();
        assert!(queried.len() >= 10, "{queried:?}");

        let control = super::common::control::Control::start(&[(
            "p.toml",
            "[[rule]]\nid = \"l\"\naction = \"allow\"\nservices = [\"echo\"]\nsources = [\"127.0.0.0/8\"]\n",
        )]);
        let state = tempfile::tempdir().unwrap();
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        setup.table = None;
        setup.tables_extra = control.gateway_section(state.path());
        let gw = Gateway::start(&setup);
        drop(ping(gw.listen, 10));
        wait_dwell(&gw, "echo", 10);
        let (_, body) = http_get(gw.admin, "/metrics").unwrap();
        let scrape =
            prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
        for q in &queried {
            let base = q
                .strip_suffix("_bucket")
                .or_else(|| q.strip_suffix("_sum"))
                .or_else(|| q.strip_suffix("_count"))
                .unwrap_or(q);
            assert!(
                scrape
                    .samples
                    .iter()
                    .any(|s| s.metric == base || s.metric == *q),
                "the dashboard queries `{q}`, which /metrics does not have"
            );
        }
    }
}
