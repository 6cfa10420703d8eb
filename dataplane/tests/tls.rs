//! TLS termination end to end: the real `zgate` binary with `[listener.tls]`, certificates
//! from the dev PKI (`zgate-devpki`), real clients (rustls, `openssl s_client`,
//! `redis-cli --tls`) on loopback sockets. A missing client binary fails the test.
#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines and short sleeps are the point"
)]

#[cfg(test)]
mod common;

#[cfg(test)]
mod tls {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use zgate_devpki::{Bad, Ca, ClientSpec, Leaf};
    use zgate_policy::model::{Action, Principal, Rule, ServiceSelector};

    use super::common::pki::{
        client_config, connect_tls, echo_through, now, refused, refuses, trading_only, Pki, Tls,
        TRADING,
    };
    use super::common::*;

    const OTHER: &str = "spiffe://corp.example/ns/marketing/sa/web";

    fn rule_for_principals(principals: Option<Vec<Principal>>) -> Vec<u8> {
        let mut r = Rule::new(
            "allow-trading",
            Action::Allow,
            ServiceSelector::Named(vec!["echo".to_string()]),
        );
        r.principals = principals;
        table_bytes(vec![r], 1)
    }

    fn tls_gateway(pki: &Pki, upstream: SocketAddr, table: Vec<u8>, extra: &str) -> Gateway {
        let mut setup = Setup::new(upstream);
        setup.table = Some(table);
        setup.listener_extra = pki.listener_tls(extra);
        Gateway::start(&setup)
    }

    fn failures(gw: &Gateway, reason: &str) -> u64 {
        gw.metric(&format!(
            "zgate_tls_handshake_failures_total{{reason=\"{reason}\"}}"
        ))
    }

    /// A partner CA beside `pki`'s, and the `[listener.tls]` section of a listener that
    /// trusts `corp.example` by `pki`'s CA and `partner.example` by the partner's.
    fn corp_and_partner(pki: &Pki) -> (Ca, String) {
        let partner = Ca::new("partner.example root", now()).unwrap();
        std::fs::write(pki.path("partner-ca.pem"), partner.cert_pem()).unwrap();
        let tls = format!(
            "[listener.tls]\ncert = {:?}\nkey = {:?}\nhandshake_timeout = \"1s\"\n\
             trust_domains = {{ \"corp.example\" = {:?}, \"partner.example\" = {:?} }}\n",
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
            pki.path("partner-ca.pem"),
        );
        (partner, tls)
    }

    #[test]
    fn valid_svid_reaches_the_echo_upstream_byte_exact() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let mut s = connect_tls(&gw, client_config(&pki, Some(&leaf)));
        echo_through(&mut s, b"x");
        echo_through(&mut s, &pattern(4 << 20, 7));
        s.conn.send_close_notify();
        s.flush().unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
        assert_eq!(gw.wait_metric("zgate_tls_handshakes_total", 1), 1);
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        let e = gw.wait_audit(|e| e["event"] == "decision");
        assert_eq!(e["verdict"], "allow");
        assert_eq!(e["rule"], "allow-trading");
        assert_eq!(e["spiffe_id"], TRADING);
        assert_eq!(e["sni"], "localhost");
        // The worker timed its loop turns: a handshake's signature alone takes tens of µs.
        assert!(gw.metric_value("zgate_worker_longest_turn_seconds") > 0.0);
        // This listener's `client_ca` is bound to no trust domain: said at startup.
        assert!(
            gw.log()
                .contains("`client_ca` is not bound to a trust domain"),
            "{}",
            gw.log()
        );
    }

    /// A client that reads slowly makes the gateway's sends toward it come back short
    /// (the socket buffer had room for part of a record batch): the rest must still go
    /// out, byte-exact, with no stall.
    #[test]
    fn a_slow_reading_client_gets_every_byte_through_short_sends() {
        const TOTAL: usize = 24 << 20;
        let pki = Pki::new(&[]);
        let up = Upstream::start(|mut s| {
            // Read the client's "go" first: closing with unread bytes would be a reset.
            let mut go = [0u8; 2];
            if s.read_exact(&mut go).is_err() {
                return;
            }
            let chunk = pattern(1 << 20, 21);
            for _ in 0..TOTAL >> 20 {
                if s.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let mut s = connect_tls(&gw, client_config(&pki, Some(&leaf)));
        s.write_all(b"go").unwrap();
        s.flush().unwrap();
        let want = pattern(1 << 20, 21);
        let mut got = vec![0u8; 3 * 1024];
        let mut n = 0usize;
        let mut reads = 0u32;
        while n < TOTAL {
            let k = s.read(&mut got).unwrap();
            assert!(k > 0, "stream ended after {n} bytes");
            for (i, b) in got[..k].iter().enumerate() {
                assert_eq!(*b, want[(n + i) % want.len()], "byte {} differs", n + i);
            }
            n += k;
            reads += 1;
            // Stop reading now and then so the socket buffer fills and drains in steps.
            if reads % 512 == 0 {
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        assert_eq!(n, TOTAL);
    }

    /// The client's records are opened where they arrived and their plaintext is sent
    /// to the upstream from there. Records of every size, cut anywhere by the
    /// receives (a cut record is completed in the buffer's headroom), toward an
    /// upstream that reads slowly (sends come back short): every byte arrives, in
    /// order, and no buffer stays held.
    #[test]
    fn client_records_of_every_size_reach_a_slow_upstream_byte_exact() {
        const TOTAL: usize = 12 << 20;
        let (tx, rx) = std::sync::mpsc::channel::<Result<usize, String>>();
        let up = Upstream::start(move |mut s| {
            let want = pattern(1 << 20, 33);
            let mut buf = vec![0u8; 7 * 1024];
            let mut n = 0usize;
            let mut reads = 0u32;
            let verdict = loop {
                match s.read(&mut buf) {
                    Ok(0) => break Ok(n),
                    Ok(k) => {
                        if let Some(i) = (0..k).find(|&i| buf[i] != want[(n + i) % want.len()]) {
                            break Err(format!("byte {} differs", n + i));
                        }
                        n += k;
                        reads += 1;
                        if reads % 256 == 0 {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    Err(e) => break Err(format!("read after {n} bytes: {e}")),
                }
            };
            let _ = tx.send(verdict);
        });
        let pki = Pki::new(&[]);
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let mut s = connect_tls(&gw, client_config(&pki, Some(&leaf)));
        let data = pattern(1 << 20, 33);
        // Each write is one record or more: sizes from 1 byte to several records.
        let sizes = [
            1usize, 16_384, 700, 40_000, 5, 16_383, 3_000, 100_000, 1_025, 9,
        ];
        let mut sent = 0usize;
        let mut k = 0usize;
        while sent < TOTAL {
            let n = sizes[k % sizes.len()].min(TOTAL - sent);
            let at = sent % data.len();
            let chunk: Vec<u8> = data.iter().cycle().skip(at).take(n).copied().collect();
            s.write_all(&chunk).unwrap();
            sent += n;
            k += 1;
        }
        s.flush().unwrap();
        s.conn.send_close_notify();
        s.flush().unwrap();
        let got = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(got, Ok(TOTAL));
        // Both ways finished: the flow ends, and every buffer is back.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.metric("zgate_connections_active") > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(gw.metric("zgate_connections_active"), 0);
        assert_eq!(gw.metric("zgate_buffers_in_use"), 0);
    }

    /// A TLS gateway in front of `upstream` whose worker has a pool of two buffers, and
    /// a client configuration with an allowed identity.
    fn two_buffer_gateway(pki: &Pki, upstream: SocketAddr) -> (Gateway, Arc<rustls::ClientConfig>) {
        let mut setup = Setup::new(upstream);
        setup.table = Some(trading_only());
        setup.listener_extra = pki.listener_tls("");
        setup.workers_extra = "buffers = 2".into();
        let gw = Gateway::start(&setup);
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        (gw, client_config(pki, Some(&leaf)))
    }

    /// Two pool buffers for four TLS flows whose upstreams do not read for a while: a
    /// flow whose plaintext waits in its receive buffer (sent from there) and whose next
    /// receive waits too holds both, so the other flows' receives find the pool empty
    /// and must wait. Then the upstreams read: every byte arrives,
    /// and every buffer comes back.
    #[test]
    fn tls_flows_wait_for_an_empty_buffer_pool_and_then_deliver_every_byte() {
        const FLOWS: usize = 4;
        const EACH: usize = 16 << 20;
        let (tx, rx) = std::sync::mpsc::channel::<Result<usize, String>>();
        let up = Upstream::start(move |mut s| {
            std::thread::sleep(Duration::from_millis(700));
            let want = pattern(1 << 20, 9);
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0usize;
            let verdict = loop {
                match s.read(&mut buf) {
                    Ok(0) => break Ok(n),
                    Ok(k) => {
                        if (0..k).any(|i| buf[i] != want[(n + i) % want.len()]) {
                            break Err(format!("payload corrupted near byte {n}"));
                        }
                        n += k;
                    }
                    Err(e) => break Err(format!("read after {n} bytes: {e}")),
                }
            };
            let _ = tx.send(verdict);
        });
        let pki = Pki::new(&[]);
        let (gw, cfg) = two_buffer_gateway(&pki, up.addr);
        // Handshakes first, so that every flow is open before the pool runs dry.
        let mut clients: Vec<Tls> = (0..FLOWS)
            .map(|_| {
                let mut s = connect_tls(&gw, Arc::clone(&cfg));
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock).unwrap();
                }
                s
            })
            .collect();
        assert_eq!(gw.wait_metric("zgate_tls_handshakes_total", 4), 4);
        let writers: Vec<_> = (0..FLOWS)
            .map(|_| {
                let mut s = clients.pop().unwrap();
                std::thread::spawn(move || {
                    let chunk = pattern(1 << 20, 9);
                    for _ in 0..EACH >> 20 {
                        if let Err(e) = s.write_all(&chunk) {
                            eprintln!("client write: {e}");
                            break;
                        }
                    }
                    s.conn.send_close_notify();
                    let _ = s.flush();
                    s
                })
            })
            .collect();
        assert!(
            gw.wait_metric("zgate_recv_buffer_starved_total", 1) >= 1,
            "no receive ever found the pool empty"
        );
        assert!(gw.metric("zgate_buffers_in_use") <= 2);
        for _ in 0..FLOWS {
            let got = rx.recv_timeout(Duration::from_secs(60));
            assert_eq!(
                got,
                Ok(Ok(EACH)),
                "{}\n{}",
                gw.log(),
                http_get(gw.admin, "/metrics").unwrap().1
            );
        }
        let clients: Vec<Tls> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.metric("zgate_connections_active") > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(gw.metric("zgate_connections_active"), 0);
        assert_eq!(gw.metric("zgate_buffers_in_use"), 0);
        drop(clients);
    }

    /// Handshakes read into the flow's own buffer, not the pool: with every pool buffer
    /// held by a flow stalled behind an upstream that does not read, a new client still
    /// completes its handshake well inside the 1 s handshake timeout.
    #[test]
    fn a_handshake_completes_while_a_stalled_flow_holds_every_pool_buffer() {
        let up = Upstream::start(|mut s| {
            std::thread::sleep(Duration::from_secs(3));
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        });
        let pki = Pki::new(&[]);
        let (gw, cfg) = two_buffer_gateway(&pki, up.addr);
        let mut hog = connect_tls(&gw, Arc::clone(&cfg));
        let writer = std::thread::spawn(move || {
            let chunk = pattern(1 << 20, 3);
            for _ in 0..32 {
                if hog.write_all(&chunk).is_err() {
                    break;
                }
            }
            hog
        });
        // The stalled flow holds both buffers (its plaintext being sent, its next
        // receive waiting), and receives find the pool empty.
        let deadline = Instant::now() + Duration::from_secs(2);
        while gw.metric("zgate_buffers_in_use") < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(gw.metric_settled("zgate_buffers_in_use", 2), 2);
        // It completes (a handshake starved of buffers would run into the 1 s timeout
        // and be closed: the I/O below would fail, and the counter would say so).
        let mut s = connect_tls(&gw, Arc::clone(&cfg));
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).unwrap();
        }
        assert_eq!(
            gw.wait_metric("zgate_tls_handshakes_total", 2),
            2,
            "{}",
            gw.log()
        );
        assert_eq!(failures(&gw, "handshake-timeout"), 0);
        drop(s);
        drop(writer.join().unwrap());
    }

    #[test]
    fn policy_admits_the_trading_prefix_and_refuses_another_identity() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let other = pki.client(&ClientSpec::spiffe(OTHER));
        assert!(refuses(&gw, &pki, &other));
        assert_eq!(gw.wait_metric("zgate_connections_denied_total", 1), 1);
        // Not a byte reached the upstream: it never even saw a connection.
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        let good = pki.client(&ClientSpec::spiffe(TRADING));
        let mut s = connect_tls(&gw, client_config(&pki, Some(&good)));
        echo_through(&mut s, b"ping");
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// Review 16.15: a denied client learned nothing useful (the TCP connection just
    /// closed). Now it reads the `access_denied` alert; the reason stays in the audit.
    #[test]
    fn a_denied_client_is_told_access_denied() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let other = pki.client(&ClientSpec::spiffe(OTHER));
        let mut s = connect_tls(&gw, client_config(&pki, Some(&other)));
        let mut buf = [0u8; 16];
        let e = s.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("AccessDenied"), "{e}");
        let audit = gw.wait_audit(|e| e["event"] == "decision");
        assert_eq!(audit["verdict"], "deny");
        assert_eq!(audit["reason"], "no-rule-matched");
        // OpenSSL says so too.
        require("openssl", "version");
        let mut child = s_client_as(&pki, &gw, OTHER, &[])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // stdin stays open: s_client quits at its EOF, before the alert could arrive.
        // It exits on the alert (or on the gateway's close, if no alert came).
        let _ = stdin.write_all(b"hello\n");
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("alert access denied"), "{text}");
    }

    /// Review 16.15: a client the handshake itself refuses reads the alert that says
    /// why (docs/tls.md "Failure reasons and alerts"), as rustls reports it: the
    /// TLS 1.3 client finishes its side, then its first read gets the alert.
    #[test]
    fn a_client_refused_during_the_handshake_reads_the_alert_that_says_why() {
        use rustls::AlertDescription as A;
        let pki = Pki::new(&[]);
        let revoked = pki.client(&ClientSpec::spiffe(TRADING));
        pki.write_crl(&[&revoked]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, rule_for_principals(None), "");
        let stranger = Ca::new("stranger", now())
            .unwrap()
            .client(&ClientSpec::spiffe(TRADING), now())
            .unwrap();
        let expired = pki.client(&Bad::Expired.spec(TRADING));
        let two_ids = pki.client(&Bad::TwoUriSans.spec(TRADING));
        for (name, leaf, want) in [
            ("no certificate", None, A::CertificateRequired),
            ("untrusted issuer", Some(&stranger), A::UnknownCA),
            ("expired", Some(&expired), A::CertificateExpired),
            ("revoked", Some(&revoked), A::CertificateRevoked),
            ("two URI SANs", Some(&two_ids), A::CertificateUnknown),
        ] {
            let mut s = connect_tls(&gw, client_config(&pki, leaf));
            let mut buf = [0u8; 16];
            let e = s.read(&mut buf).expect_err(name);
            let got = e
                .into_inner()
                .and_then(|e| e.downcast::<rustls::Error>().ok())
                .map(|e| *e);
            assert_eq!(got, Some(rustls::Error::AlertReceived(want)), "{name}");
        }
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// What an [`ending_upstream`] read, and how its client's stream ended.
    type Ending = (Vec<u8>, Result<(), std::io::ErrorKind>);

    /// An upstream that reads its client's stream to the end and reports what it read
    /// and how the stream ended: `Ok(())` for a FIN, the error kind otherwise. After
    /// the first `ack_after` bytes it writes one byte back, so a test knows they
    /// arrived before it cuts.
    fn ending_upstream(ack_after: usize) -> (Upstream, std::sync::mpsc::Receiver<Ending>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let up = Upstream::start(move |mut s| {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let mut acked = false;
            let end = loop {
                match s.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break Err(e.kind()),
                }
                if !acked && got.len() >= ack_after {
                    acked = true;
                    let _ = s.write_all(b"k");
                }
            };
            let _ = tx.send((got, end));
        });
        (up, rx)
    }

    /// Review 16.2: a TCP FIN from the client without close_notify, even in the middle
    /// of a record, became a FIN to the upstream: an on-path attacker could cut the
    /// stream and have the gateway pass the cut on as a clean end. Now the upstream's
    /// connection is reset.
    #[test]
    fn a_client_fin_without_close_notify_resets_the_upstream() {
        let pki = Pki::new(&[]);
        let (up, ends) = ending_upstream(12);
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        for cut_in_a_record in [false, true] {
            let mut s = connect_tls(&gw, client_config(&pki, Some(&leaf)));
            s.write_all(b"whole record").unwrap();
            s.flush().unwrap();
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).unwrap();
            if cut_in_a_record {
                // The first 10 bytes of a record, and no more.
                s.conn.writer().write_all(b"never whole").unwrap();
                let mut rec = Vec::new();
                s.conn.write_tls(&mut rec).unwrap();
                s.sock.write_all(&rec[..10]).unwrap();
            }
            s.sock.shutdown(std::net::Shutdown::Write).unwrap();
            let (got, end) = ends.recv_timeout(WAIT).unwrap();
            assert_eq!(got, b"whole record");
            assert_eq!(
                end,
                Err(std::io::ErrorKind::ConnectionReset),
                "cut in a record: {cut_in_a_record}"
            );
        }
        assert_eq!(gw.wait_metric("zgate_tls_truncations_total", 2), 2);
    }

    /// Review 16.2: after a record failure (here a forged byte: `bad_record_mac`) the
    /// upstream saw a FIN. Now it is reset, and the client reads the alert.
    #[test]
    fn a_forged_record_resets_the_upstream_and_the_client_reads_bad_record_mac() {
        let pki = Pki::new(&[]);
        let (up, ends) = ending_upstream(6);
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let mut s = connect_tls(&gw, client_config(&pki, Some(&leaf)));
        s.write_all(b"honest").unwrap();
        s.flush().unwrap();
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack).unwrap();
        s.conn.writer().write_all(b"forged on the way").unwrap();
        let mut rec = Vec::new();
        s.conn.write_tls(&mut rec).unwrap();
        let last = rec.len() - 1;
        rec[last] ^= 0x55;
        s.sock.write_all(&rec).unwrap();
        let (got, end) = ends.recv_timeout(WAIT).unwrap();
        assert_eq!(got, b"honest");
        assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
        let mut buf = [0u8; 16];
        let e = s.read(&mut buf).unwrap_err();
        assert!(e.to_string().contains("BadRecordMac"), "{e}");
    }

    /// Review 16.1: each KeyUpdate(update_requested) sealed a reply whether or not the
    /// last was sent, and the socket was read again regardless: a client that asks and
    /// never reads made the gateway hold about as much as it sent. Now one update is
    /// owed however many are asked for, and a client whose update cannot be sent (its
    /// window is full) is not read until it reads: its sends stall, the gateway's
    /// memory stays flat, and every byte still arrives once it reads.
    #[test]
    fn a_client_asking_for_key_updates_and_never_reading_is_stalled_not_buffered() {
        const MOST: usize = 100_000;
        const FLOOD: usize = 8 << 20;
        let pki = Pki::new(&[]);
        let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&received);
        // The upstream floods the client (who does not read, so its window fills and
        // the gateway's sends toward it stop) and counts what the client sends.
        let up = Upstream::start(move |mut s| {
            let mut w = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = w.write_all(&vec![b'u'; FLOOD]);
            });
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                count.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let mut s = connect_tls(&gw, client_config(&pki, Some(&leaf)));
        s.write_all(b"x").unwrap();
        s.flush().unwrap();
        // The flood fills the client's window: the gateway holds an upstream buffer it
        // cannot send on yet.
        gw.wait_metric("zgate_buffers_in_use", 1);
        let rss_before = rss_kib(gw.child.id());
        s.sock.set_nonblocking(true).unwrap();
        let mut asked = 0;
        let mut last_progress = Instant::now();
        while asked < MOST && last_progress.elapsed() < Duration::from_secs(2) {
            if s.conn.wants_write() {
                match s.conn.write_tls(&mut s.sock) {
                    Ok(_) => last_progress = Instant::now(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("{e}"),
                }
                continue;
            }
            s.conn.refresh_traffic_keys().unwrap();
            s.conn.writer().write_all(b"k").unwrap();
            asked += 1;
        }
        assert!(
            asked < MOST,
            "the gateway read all {MOST} KeyUpdate requests of a client whose window is full"
        );
        let grew = rss_kib(gw.child.id()).saturating_sub(rss_before);
        assert!(grew < 2048, "gateway RSS grew by {grew} KiB");
        // The client reads now: the flood and the owed update arrive, the gateway reads
        // again, and every byte the client sent reaches the upstream. (Non-blocking IO
        // by hand: a blocking write of the client's last requests would wait for a
        // gateway that waits for the client to read.)
        let mut flood = 0;
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + WAIT;
        while flood < FLOOD || received.load(std::sync::atomic::Ordering::SeqCst) < asked + 1 {
            assert!(
                Instant::now() < deadline,
                "bytes lost: {flood} of the flood"
            );
            let mut moved = false;
            match s.conn.read_tls(&mut s.sock) {
                Ok(0) => panic!("the gateway ended the flow"),
                Ok(_) => {
                    moved = true;
                    s.conn.process_new_packets().unwrap();
                    while let Ok(n) = s.conn.reader().read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        flood += n;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if s.conn.wants_write() {
                moved |= s.conn.write_tls(&mut s.sock).is_ok();
            }
            if !moved {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(flood, FLOOD);
        assert_eq!(
            received.load(std::sync::atomic::Ordering::SeqCst),
            asked + 1
        );
    }

    #[test]
    fn every_bad_certificate_is_refused_with_its_reason_in_metrics() {
        // The CA must exist before the leaf it revokes: make the PKI, then the CRL.
        let pki = Pki::new(&[]);
        let revoked = pki.client(&ClientSpec::spiffe(TRADING));
        pki.write_crl(&[&revoked]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, rule_for_principals(None), "");
        let mut cases: Vec<(String, Leaf, &str)> = Bad::ALL
            .iter()
            .map(|b| {
                let want = match b {
                    Bad::Expired => "expired",
                    Bad::NotYetValid => "not-yet-valid",
                    Bad::TwoUriSans
                    | Bad::NoUriSan
                    | Bad::SpiffeIdInCnOnly
                    | Bad::SpiffeIdInDnsSanOnly => "uri-san-count",
                    Bad::InvalidSpiffeId | Bad::NotSpiffeScheme => "bad-spiffe-id",
                    Bad::CaLeaf => "ca-as-leaf",
                    Bad::KeyCertSignOnLeaf
                    | Bad::CrlSignOnLeaf
                    | Bad::NoDigitalSignature
                    | Bad::NoKeyUsage => "wrong-key-usage",
                };
                (b.name().to_string(), pki.client(&b.spec(TRADING)), want)
            })
            .collect();
        let stranger = Ca::new("stranger", now()).unwrap();
        cases.push((
            "untrusted".into(),
            stranger
                .client(&ClientSpec::spiffe(TRADING), now())
                .unwrap(),
            "untrusted-issuer",
        ));
        cases.push(("revoked".into(), revoked, "revoked"));
        // With a CRL configured, a chain through an intermediate that has no CRL of its own
        // has an unknown revocation status: refused before the keyCertSign check (which
        // crates/tls tests without CRLs).
        let int = pki.ca.intermediate("weak int", now(), false).unwrap();
        cases.push((
            "intermediate-without-crl".into(),
            int.client(&ClientSpec::spiffe(TRADING), now()).unwrap(),
            "revocation-unknown",
        ));
        for (name, leaf, reason) in &cases {
            let before = failures(&gw, reason);
            assert!(refuses(&gw, &pki, leaf), "{name} was not refused");
            let deadline = Instant::now() + WAIT;
            while failures(&gw, reason) <= before && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(
                failures(&gw, reason),
                before + 1,
                "{name}: reason {reason} not counted"
            );
        }
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(gw.metric("zgate_tls_handshakes_total"), 0);
        // Each refusal is an audit record with its reason (and the library's words).
        let deadline = Instant::now() + WAIT;
        let refused = || -> Vec<serde_json::Value> {
            gw.audit()
                .into_iter()
                .filter(|e| e["event"] == "tls_refused")
                .collect()
        };
        while refused().len() < cases.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let got: Vec<String> = refused()
            .iter()
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<&str> = cases.iter().map(|(_, _, r)| *r).collect();
        assert_eq!(got, want);
        assert!(refused()
            .iter()
            .all(|e| e["detail"].is_string() && e["listener"] == "echo"));
        // Each refusal's alert is counted by its RFC 8446 name (`RejectReason::alert`).
        let sent = |alert: &str| format!("zgate_tls_alerts_sent_total{{alert=\"{alert}\"}}");
        assert_eq!(gw.metric(&sent("unknown_ca")), 2, "untrusted, no CRL");
        assert_eq!(
            gw.metric(&sent("certificate_expired")),
            2,
            "expired, not yet"
        );
        assert_eq!(gw.metric(&sent("certificate_revoked")), 1);
        assert_eq!(
            gw.metric(&sent("certificate_unknown")),
            11,
            "the SVID rules"
        );
        assert_eq!(gw.metric("zgate_tls_alerts_received_total"), 0);
        // A client that does not trust the gateway's certificate says so: its alert is
        // counted as received, by name. Its roots are another test PKI's, whose CA has
        // the same name and another key: the signature fails, `decrypt_error`.
        let elsewhere = Pki::new(&[]);
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let stranger_client = client_config(&elsewhere, Some(&leaf));
        assert!(super::common::pki::refused(connect_tls(
            &gw,
            stranger_client
        )));
        let received = "zgate_tls_alerts_received_total{alert=\"decrypt_error\"}";
        assert_eq!(gw.metric_settled(received, 1), 1);
        assert_eq!(failures(&gw, "peer-alert"), 1);
    }

    /// Review 16.3: a TLS 1.2 session at its confidentiality limit (put 40 records after
    /// the handshake by the tests' build, feature `test-limits`) sends what it sealed,
    /// then close_notify, and the flow ends at once: the client reads every echo sealed
    /// before the limit and then a clean end (not a truncation, not a bad_record_mac),
    /// and the flow is gone long before its idle timeout of an hour.
    #[test]
    fn a_tls12_flow_at_its_confidentiality_limit_ends_with_close_notify_at_once() {
        const LIMIT: usize = 40;
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        setup.table = Some(trading_only());
        setup.listener_extra = format!(
            "idle_timeout = \"1h\"\n{}",
            pki.listener_tls("min_version = \"1.2\"")
        );
        setup.prefix = vec!["env".into(), format!("ZGATE_TEST_TLS_RECORD_LIMIT={LIMIT}")];
        let gw = Gateway::start(&setup);
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let cfg =
            super::common::pki::client_config_for(&pki, Some(&leaf), &[&rustls::version::TLS12]);
        let mut s = connect_tls(&gw, cfg);
        let mut echoed = 0;
        let end = 'pings: loop {
            if s.write_all(&[7u8; 64]).and_then(|()| s.flush()).is_err() {
                break "the write failed";
            }
            let mut got = 0;
            let mut back = [0u8; 64];
            while got < back.len() {
                match s.read(&mut back[got..]) {
                    Ok(0) => break 'pings "close_notify",
                    Ok(n) => got += n,
                    Err(e) => panic!("after {echoed} echoes: {e}"),
                }
            }
            assert_eq!(back, [7u8; 64]);
            echoed += 1;
            assert!(echoed <= LIMIT, "still echoing past the limit");
        };
        assert_eq!(end, "close_notify");
        assert_eq!(
            s.conn.negotiated_cipher_suite().map(|c| c.version()),
            Some(&rustls::version::TLS12)
        );
        assert!(echoed + 2 >= LIMIT, "{echoed} echoes before the end");
        assert_eq!(gw.wait_metric_at_most("zgate_connections_active", 0), 0);
        let close = gw.wait_audit(|e| e["event"] == "close");
        assert_eq!(close["cause"], "confidentiality-limit", "{close}");
    }

    /// Review H1: with `trust_domains`, a CA vouches only for its own trust domain.
    #[test]
    fn a_partner_ca_cannot_issue_a_corp_spiffe_id_with_per_trust_domain_bundles() {
        let pki = Pki::new(&[]);
        let (partner, tls) = corp_and_partner(&pki);
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        setup.table = Some(rule_for_principals(None));
        setup.listener_extra = tls;
        let gw = Gateway::start(&setup);
        let expect_refused = |leaf: &Leaf, reason: &str| {
            let before = failures(&gw, reason);
            assert!(refuses(&gw, &pki, leaf));
            assert_eq!(
                gw.wait_metric(
                    &format!("zgate_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
                    before + 1
                ),
                before + 1,
                "{reason} not counted"
            );
        };
        let forged = partner.client(&ClientSpec::spiffe(TRADING), now()).unwrap();
        expect_refused(&forged, "untrusted-issuer");
        let elsewhere = pki.client(&ClientSpec::spiffe("spiffe://other.example/x"));
        expect_refused(&elsewhere, "unknown-trust-domain");
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);

        let own = partner
            .client(
                &ClientSpec::spiffe("spiffe://partner.example/billing"),
                now(),
            )
            .unwrap();
        echo_through(&mut connect_tls(&gw, client_config(&pki, Some(&own))), b"p");
        let corp = pki.client(&ClientSpec::spiffe(TRADING));
        echo_through(
            &mut connect_tls(&gw, client_config(&pki, Some(&corp))),
            b"c",
        );
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// Review M4: on a listener that trusts two trust domains, `dns@td:` and `cn@td:`
    /// principals match only names on certificates of that trust domain, while plain
    /// `dns:` matches the partner's certificate too.
    #[test]
    fn scoped_dns_and_cn_principals_ignore_names_from_another_trust_domain() {
        let pki = Pki::new(&[]);
        let (partner, tls) = corp_and_partner(&pki);
        let up = Upstream::echo();
        let start = |principals: Vec<Principal>| {
            let mut setup = Setup::new(up.addr);
            setup.table = Some(rule_for_principals(Some(principals)));
            setup.listener_extra = tls.clone();
            Gateway::start(&setup)
        };
        let named = |id: &str| ClientSpec {
            dns: vec!["db.corp.example".into()],
            common_name: Some("alice".into()),
            ..ClientSpec::spiffe(id)
        };
        let corp = pki.client(&named("spiffe://corp.example/ns/db/sa/client"));
        let partners = partner
            .client(&named("spiffe://partner.example/ns/db/sa/client"), now())
            .unwrap();
        let gets_through = |gw: &Gateway, leaf: &Leaf| {
            let mut s = connect_tls(gw, client_config(&pki, Some(leaf)));
            let mut buf = [0u8; 1];
            let _ = s.write_all(b"x");
            matches!(s.read(&mut buf), Ok(1))
        };

        let scoped = [
            vec![Principal::DnsSanIn {
                trust_domain: "corp.example".into(),
                name: "db.corp.example".into(),
            }],
            vec![Principal::CommonNameIn {
                trust_domain: "corp.example".into(),
                name: "alice".into(),
            }],
        ];
        for principals in scoped {
            let gw = start(principals.clone());
            assert!(!gw.log().contains("without a trust domain"), "{}", gw.log());
            assert!(gets_through(&gw, &corp), "{principals:?}: corp refused");
            assert!(
                !gets_through(&gw, &partners),
                "{principals:?}: partner let in"
            );
            // The partner's flow is denied by the table, not by the handshake.
            let denied = gw.wait_audit(|e| e["event"] == "decision" && e["verdict"] == "deny");
            assert_eq!(denied["reason"], "no-rule-matched", "{principals:?}");
            assert_eq!(
                denied["spiffe_id"],
                "spiffe://partner.example/ns/db/sa/client"
            );
        }
        // The unscoped form names the partner's certificate as well.
        let gw = start(vec![Principal::DnsSan("db.corp.example".into())]);
        assert!(gets_through(&gw, &corp));
        assert!(gets_through(&gw, &partners));
        // ... and the operator is told at startup.
        assert!(
            gw.log().contains(
                "listener `echo`: warning: the table has `dns:`/`cn:` principals without a trust domain"
            ),
            "{}",
            gw.log()
        );
    }

    /// `client_ca` bound to one trust domain: its CA cannot vouch for another one.
    #[test]
    fn client_ca_with_a_trust_domain_refuses_other_trust_domains() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(
            &pki,
            up.addr,
            rule_for_principals(None),
            "trust_domain = \"corp.example\"",
        );
        let elsewhere = pki.client(&ClientSpec::spiffe("spiffe://other.example/x"));
        assert!(refuses(&gw, &pki, &elsewhere));
        assert_eq!(
            gw.metric_settled(
                "zgate_tls_handshake_failures_total{reason=\"unknown-trust-domain\"}",
                1
            ),
            1
        );
        assert!(
            !gw.log().contains("not bound to a trust domain"),
            "{}",
            gw.log()
        );
        let corp = pki.client(&ClientSpec::spiffe(TRADING));
        echo_through(
            &mut connect_tls(&gw, client_config(&pki, Some(&corp))),
            b"c",
        );
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn no_client_certificate_is_refused_when_required() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, rule_for_principals(None), "");
        assert!(refused(connect_tls(&gw, client_config(&pki, None))));
        assert_eq!(
            gw.wait_metric(
                "zgate_tls_handshake_failures_total{reason=\"no-client-certificate\"}",
                1
            ),
            1
        );
        assert_eq!(up.accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn garbage_instead_of_a_client_hello_is_refused_and_the_gateway_lives_on() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, rule_for_principals(None), "");
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0, 0][..],
            &pattern(20_000, 3)[..],
        ] {
            let mut s = gw.connect();
            let _ = s.write_all(garbage);
            assert!(
                ends_without_data(&mut s) || {
                    // An alert may come first: then the stream ends.
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest);
                    true
                }
            );
        }
        assert!(
            gw.wait_metric(
                "zgate_tls_handshake_failures_total{reason=\"malformed\"}",
                3
            ) >= 2
        );
        let good = pki.client(&ClientSpec::spiffe(TRADING));
        let mut s = connect_tls(&gw, client_config(&pki, Some(&good)));
        echo_through(&mut s, b"still alive");
    }

    #[test]
    fn a_client_stalling_mid_handshake_is_closed_after_the_timeout() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, rule_for_principals(None), "");
        let mut s = gw.connect();
        // A TLS record header announcing a ClientHello that never comes.
        s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80, 0x01]).unwrap();
        // Closed by the gateway (the read would otherwise time out after 30 s), and
        // counted as the handshake timeout, not anything else.
        assert!(ends_without_data(&mut s));
        assert_eq!(
            gw.wait_metric(
                "zgate_tls_handshake_failures_total{reason=\"handshake-timeout\"}",
                1
            ),
            1
        );
    }

    /// Panics, naming the fix, when `bin` cannot be run.
    fn require(bin: &str, arg: &str) {
        let ok = Command::new(bin)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "`{bin}` is not installed: run tools/test, which installs it"
        );
    }

    /// `openssl s_client` to `gw` with an allowed client certificate, stdin and stdout
    /// piped, plus `extra` arguments.
    fn s_client(pki: &Pki, gw: &Gateway, extra: &[&str]) -> Command {
        s_client_as(pki, gw, TRADING, extra)
    }

    /// [`s_client`] with a certificate for `id`.
    fn s_client_as(pki: &Pki, gw: &Gateway, id: &str, extra: &[&str]) -> Command {
        let (cert, key) = pki.write_leaf("client", &pki.client(&ClientSpec::spiffe(id)));
        let mut c = Command::new("openssl");
        c.args(["s_client", "-connect", &gw.listen.to_string()])
            .args(["-servername", "localhost", "-verify_return_error"])
            .args(extra)
            .arg("-CAfile")
            .arg(pki.path("ca.pem"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        c
    }

    #[test]
    fn openssl_s_client_with_a_client_certificate_echoes() {
        require("openssl", "version");
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let mut child = s_client(&pki, &gw, &["-quiet"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello through openssl\n").unwrap();
        stdin.flush().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(line, "hello through openssl\n");
        assert_eq!(gw.metric_settled("zgate_tls_handshakes_total", 1), 1);
    }

    /// `advertise_client_ca_names = false` keeps the client CA names out of the
    /// CertificateRequest, as OpenSSL's s_client reports it; the client still gets in.
    #[test]
    fn client_ca_names_can_be_kept_from_clients() {
        require("openssl", "version");
        let pki = Pki::new(&[]);
        // Echoes one line, then ends the stream: s_client sees the end (close_notify
        // from the gateway) and exits with everything it read printed, so nothing
        // here waits on a guessed pause.
        let up = Upstream::start(|s| {
            let mut line = String::new();
            let mut r = BufReader::new(&s);
            if r.read_line(&mut line).is_ok() {
                let _ = (&s).write_all(line.as_bytes());
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
        });
        for (extra, want) in [
            (
                "",
                "Acceptable client certificate CA names\nCN = zgate test CA\n",
            ),
            (
                "advertise_client_ca_names = false",
                "No client certificate CA names sent\n",
            ),
        ] {
            let gw = tls_gateway(&pki, up.addr, trading_only(), extra);
            let mut child = s_client(&pki, &gw, &["-tls1_3"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let mut stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut out = String::new();
                let _ = stdout.read_to_string(&mut out);
                let _ = tx.send(out);
            });
            stdin.write_all(b"ca names\n").unwrap();
            stdin.flush().unwrap();
            let out = rx.recv_timeout(WAIT).unwrap_or_default();
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
            assert!(out.contains(want), "{extra:?}: {out}");
            assert!(out.contains("ca names\n"), "{extra:?}: no echo in {out}");
        }
    }

    /// OpenSSL updates its keys mid-flow and asks the gateway to update too (s_client's
    /// interactive `K` command): zgate's record layer follows the client's new key,
    /// answers with its own KeyUpdate, and the echo keeps flowing both ways.
    #[test]
    fn openssl_key_updates_both_ways_keep_the_flow_going() {
        require("openssl", "version");
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        // Not -quiet: only an interactive s_client reads `K` as a command.
        let mut child = s_client(&pki, &gw, &["-tls1_3"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Both streams, as lines: the echo comes on stdout, s_client's `KEYUPDATE` on
        // stderr.
        let (tx, rx) = std::sync::mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        // A line *ending* in `want`: s_client prints the session tickets the gateway
        // sends after the handshake in pieces, so the echo may land at the end of one
        // of their lines.
        let wait_for = |want: &str| {
            let deadline = Instant::now() + WAIT;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(l) if l.trim_end().ends_with(want) => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
            false
        };
        stdin.write_all(b"before the update\n").unwrap();
        stdin.flush().unwrap();
        assert!(wait_for("before the update"), "no echo before the update");
        for round in 0..3 {
            // s_client drops whatever else its stdin read returned with a command:
            // send the next line only once the update went out.
            stdin.write_all(b"K\n").unwrap();
            stdin.flush().unwrap();
            assert!(wait_for("KEYUPDATE"), "s_client sent no KeyUpdate");
            let line = format!("after update {round}");
            stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
            stdin.flush().unwrap();
            assert!(wait_for(&line), "no echo after key update {round}");
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(gw.metric_settled("zgate_tls_handshakes_total", 1), 1);
        assert_eq!(
            gw.metric("zgate_tls_handshake_failures_total{reason=\"bad-record\"}"),
            0
        );
    }

    /// A `redis-server` on a loopback port (plain TCP). Killed on drop.
    struct Redis(std::process::Child, SocketAddr);

    impl Redis {
        fn start() -> Redis {
            require("redis-server", "--version");
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + WAIT;
            while TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            Redis(child, addr)
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn redis_cli(gw: &Gateway, pki: &Pki, cert: &Path, key: &Path, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &gw.listen.port().to_string(),
                "--tls",
            ])
            .arg("--cacert")
            .arg(pki.path("ca.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    #[test]
    fn redis_cli_over_mtls_to_a_plain_redis_server_behind_zgate() {
        require("redis-cli", "--version");
        let help = Command::new("redis-cli").arg("--help").output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--tls")
                || String::from_utf8_lossy(&help.stderr).contains("--tls"),
            "redis-cli was built without TLS"
        );
        let redis = Redis::start();
        let pki = Pki::new(&[]);
        let gw = tls_gateway(&pki, redis.1, trading_only(), "");
        let (cert, key) = pki.write_leaf("pricer", &pki.client(&ClientSpec::spiffe(TRADING)));
        assert_eq!(
            redis_cli(&gw, &pki, &cert, &key, &["SET", "k", "v-over-mtls"]).trim(),
            "OK"
        );
        assert_eq!(
            redis_cli(&gw, &pki, &cert, &key, &["GET", "k"]).trim(),
            "v-over-mtls"
        );
        // Another identity gets nothing.
        let (cert, key) = pki.write_leaf("web", &pki.client(&ClientSpec::spiffe(OTHER)));
        let out = redis_cli(&gw, &pki, &cert, &key, &["GET", "k"]);
        assert!(!out.contains("v-over-mtls"), "{out}");
    }

    /// Review M3: connections that never finish a handshake hold at most
    /// `max_handshakes` slots; more are closed at once, and established flows are not
    /// held back once the stalled ones go.
    #[test]
    fn stalled_handshakes_are_capped_by_max_handshakes() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        setup.table = Some(trading_only());
        setup.listener_extra = pki
            .listener_tls("max_handshakes = 2")
            .replace("handshake_timeout = \"1s\"", "handshake_timeout = \"60s\"");
        let gw = Gateway::start(&setup);
        let stalled: Vec<TcpStream> = (0..2).map(|_| gw.connect()).collect();
        assert_eq!(gw.wait_metric("zgate_tls_handshakes_in_progress", 2), 2);
        let mut third = gw.connect();
        assert!(ends_without_data(&mut third));
        // The worker publishes its counters after the completion batch that closed it.
        assert_eq!(
            gw.wait_metric("zgate_tls_handshakes_over_limit_total", 1),
            1
        );
        drop(stalled);
        assert_eq!(
            gw.wait_metric_at_most("zgate_tls_handshakes_in_progress", 0),
            0
        );
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let mut s = connect_tls(&gw, client_config(&pki, Some(&leaf)));
        echo_through(&mut s, b"after the flood");
        // An established flow no longer counts as a handshake.
        assert_eq!(gw.metric("zgate_tls_handshakes_in_progress"), 0);
    }

    /// One source may not take every handshake slot: its third stalled handshake is
    /// closed at accept, while another source still gets through, and the source is
    /// admitted again once its stalled handshakes are gone.
    #[test]
    fn stalled_handshakes_from_one_source_are_capped_by_max_handshakes_per_source() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        setup.table = Some(trading_only());
        setup.listener_extra = pki
            .listener_tls("max_handshakes_per_source = 2")
            .replace("handshake_timeout = \"1s\"", "handshake_timeout = \"60s\"");
        let gw = Gateway::start(&setup);
        let from = |ip: [u8; 4]| {
            let s = zgate_dataplane::connect_from(std::net::SocketAddr::from((ip, 0)), gw.listen)
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        let stalled: Vec<TcpStream> = (0..2).map(|_| from([127, 0, 0, 1])).collect();
        assert_eq!(gw.wait_metric("zgate_tls_handshakes_in_progress", 2), 2);
        let mut third = from([127, 0, 0, 1]);
        assert!(ends_without_data(&mut third));
        assert_eq!(
            gw.wait_metric("zgate_tls_handshakes_over_source_limit_total", 1),
            1
        );
        // Another source is not held back by the first one's stalled handshakes.
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let cfg = client_config(&pki, Some(&leaf));
        let conn = rustls::ClientConnection::new(
            Arc::clone(&cfg),
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut other = rustls::StreamOwned::new(conn, from([127, 0, 0, 2]));
        echo_through(&mut other, b"another source");
        drop(stalled);
        assert_eq!(
            gw.wait_metric_at_most("zgate_tls_handshakes_in_progress", 0),
            0
        );
        let mut again = connect_tls(&gw, cfg);
        echo_through(&mut again, b"the first source again");
        assert_eq!(
            gw.metric_settled("zgate_tls_handshakes_over_source_limit_total", 1),
            1
        );
        assert_eq!(gw.metric("zgate_tls_handshakes_over_limit_total"), 0);
    }

    /// Replace `path` the way deployment tools do: write a temp file, rename it over.
    fn replace_file(path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// The leaf certificate the gateway served on `s` (DER).
    fn served_leaf(s: &Tls) -> Vec<u8> {
        s.conn.peer_certificates().unwrap()[0].as_ref().to_vec()
    }

    fn leaf_der(leaf: &Leaf) -> Vec<u8> {
        zgate_devpki::pem_to_der(&leaf.cert_pem).remove(0)
    }

    /// Hot reload: new handshakes get the new server certificate, a live connection keeps
    /// running on the old one, and broken material (garbage, a key that does not match,
    /// an expired certificate) is refused with the old material kept.
    #[test]
    fn server_certificate_rotation_under_live_connections_and_broken_files_refused() {
        let pki = Pki::new(&[]);
        let first =
            zgate_devpki::pem_to_der(&std::fs::read_to_string(pki.path("server.pem")).unwrap())
                .remove(0);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, trading_only(), "reload_interval = \"100ms\"");
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let cfg = client_config(&pki, Some(&leaf));
        let mut live = connect_tls(&gw, Arc::clone(&cfg));
        echo_through(&mut live, b"before");
        assert_eq!(served_leaf(&live), first);

        // Rotate: new key and certificate, each renamed into place.
        let issued_at = now();
        let next = pki
            .ca
            .server(&["localhost"], &["127.0.0.1".parse().unwrap()], now())
            .unwrap();
        replace_file(&pki.path("server.key"), next.key_pem.as_bytes());
        replace_file(&pki.path("server.pem"), next.chain_pem.as_bytes());
        assert_eq!(
            gw.wait_metric("zgate_tls_reloads_total", 1),
            1,
            "{}",
            gw.log()
        );
        let mut fresh = connect_tls(&gw, Arc::clone(&cfg));
        echo_through(&mut fresh, b"after");
        assert_eq!(served_leaf(&fresh), leaf_der(&next));
        // The live connection is untouched: same session, still forwarding.
        echo_through(&mut live, &pattern(256 * 1024, 3));
        assert_eq!(served_leaf(&live), first);
        // devpki server certificates are valid for a day from their issue.
        let not_after = gw.metric("zgate_tls_certificate_not_after_seconds{listener=\"echo\"}");
        let not_after = i64::try_from(not_after).unwrap();
        assert!((issued_at + 86_400..=now() + 86_400).contains(&not_after));

        // Broken material, one kind at a time; each is refused and the rotated material
        // keeps serving.
        let stale = pki
            .ca
            .server(&["localhost"], &[], now() - 3 * 86_400)
            .unwrap();
        let other_key = pki.ca.server(&["localhost"], &[], now()).unwrap().key_pem;
        let broken: [(&str, &[u8], &[u8], &str); 3] = [
            (
                "garbage",
                b"not a certificate",
                next.key_pem.as_bytes(),
                "listener[0].tls.cert",
            ),
            (
                "mismatched key",
                next.chain_pem.as_bytes(),
                other_key.as_bytes(),
                "listener[0].tls",
            ),
            (
                "expired",
                stale.chain_pem.as_bytes(),
                stale.key_pem.as_bytes(),
                "has expired",
            ),
        ];
        for (n, (what, cert, key, logged)) in broken.iter().enumerate() {
            replace_file(&pki.path("server.key"), key);
            replace_file(&pki.path("server.pem"), cert);
            let want = u64::try_from(n + 1).unwrap();
            assert_eq!(
                gw.wait_metric("zgate_tls_reload_failures_total", want),
                want,
                "{what}: not refused\n{}",
                gw.log()
            );
            assert!(gw.log().contains(logged), "{what}: {}", gw.log());
            let mut s = connect_tls(&gw, Arc::clone(&cfg));
            echo_through(&mut s, what.as_bytes());
            assert_eq!(
                served_leaf(&s),
                leaf_der(&next),
                "{what}: old material kept"
            );
        }
        assert_eq!(gw.metric_settled("zgate_tls_reloads_total", 1), 1);
        assert!(gw
            .log()
            .contains("TLS reload refused, keeping the current material"));
        echo_through(&mut live, b"still here");
    }

    /// A gateway that re-reads its TLS files every 100 ms, a trading workload's
    /// certificate, and one client configuration for it (so one ticket cache).
    fn reloading_gateway(pki: &Pki) -> (Upstream, Gateway, Leaf, Arc<rustls::ClientConfig>) {
        let up = Upstream::echo();
        let gw = tls_gateway(pki, up.addr, trading_only(), "reload_interval = \"100ms\"");
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let cfg = client_config(pki, Some(&leaf));
        (up, gw, leaf, cfg)
    }

    /// Write a CRL revoking `leaf`, wait for the gateway's first reload, and check that
    /// `cfg`'s next connection is refused as revoked.
    fn revoke_by_crl_reload(pki: &Pki, gw: &Gateway, leaf: &Leaf, cfg: &Arc<rustls::ClientConfig>) {
        pki.write_crl(&[leaf]);
        assert_eq!(
            gw.wait_metric("zgate_tls_reloads_total", 1),
            1,
            "{}",
            gw.log()
        );
        assert!(refused(connect_tls(gw, Arc::clone(cfg))));
        assert_eq!(
            gw.wait_metric("zgate_tls_handshake_failures_total{reason=\"revoked\"}", 1),
            1
        );
    }

    /// Hot reload of the client trust material: a new CRL revokes a certificate for new
    /// handshakes, and a new CA bundle admits clients of the new CA.
    #[test]
    fn crl_and_client_ca_changes_apply_to_new_handshakes() {
        let pki = Pki::new(&[]);
        let (_up, gw, leaf, cfg) = reloading_gateway(&pki);
        let mut live = connect_tls(&gw, Arc::clone(&cfg));
        echo_through(&mut live, b"ok");

        revoke_by_crl_reload(&pki, &gw, &leaf, &cfg);

        // Move to a new client CA (both in the bundle during the change, then only the
        // new one): its clients get in, the old CA's do not.
        let next_ca = Ca::new("zgate test CA 2", now()).unwrap();
        let newcomer = next_ca.client(&ClientSpec::spiffe(TRADING), now()).unwrap();
        let next_crl = next_ca.crl(&[], now()).unwrap();
        replace_file(&pki.path("crl.pem"), next_crl.as_bytes());
        replace_file(&pki.path("ca.pem"), next_ca.cert_pem().as_bytes());
        assert_eq!(
            gw.wait_metric("zgate_tls_reloads_total", 2),
            2,
            "{}",
            gw.log()
        );
        let mut s = connect_tls(&gw, client_config(&pki, Some(&newcomer)));
        echo_through(&mut s, b"new ca");
        let other = pki.client(&ClientSpec::spiffe(TRADING));
        assert!(refuses(&gw, &pki, &other));
        // Live connections are not re-authenticated by a material change.
        echo_through(&mut live, b"still ok");
    }

    /// A live flow ends when a certificate of its chain expires: here an intermediate CA
    /// that expires before the client's own certificate does.
    #[test]
    fn a_live_flow_closes_when_an_intermediate_of_its_chain_expires() {
        let pki = Pki::new(&[]);
        // `intermediate` makes a CA valid for ten years from the instant it is given.
        let int = pki
            .ca
            .intermediate("short-lived int", now() + 3 - 10 * 365 * 86_400, true)
            .unwrap();
        let leaf = int.client(&ClientSpec::spiffe(TRADING), now()).unwrap();
        // With CRLs configured, the intermediate needs one of its own.
        let crls = format!(
            "{}{}",
            pki.ca.crl(&[], now()).unwrap(),
            int.crl(&[], now()).unwrap()
        );
        std::fs::write(pki.path("crl.pem"), crls).unwrap();
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, trading_only(), "");
        let mut s = connect_tls(&gw, client_config(&pki, Some(&leaf)));
        echo_through(&mut s, b"valid chain");
        // Keep the flow busy (never idle) until the gateway closes it; bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut closed = false;
        while Instant::now() < deadline {
            let mut b = [0u8; 4];
            if s.write_all(b"ping").and_then(|()| s.flush()).is_err()
                || matches!(s.read(&mut b), Ok(0) | Err(_))
            {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(closed, "flow outlived its intermediate CA: {}", gw.log());
        assert_eq!(gw.wait_metric("zgate_flows_closed_by_policy_total", 1), 1);
        // Closed for that reason, by label and in the audit record.
        assert_eq!(
            gw.metric("zgate_flows_closed_by_policy_total{reason=\"certificate-expired\"}"),
            1
        );
        let e = gw.wait_audit(|e| e["event"] == "closed_by_policy");
        assert_eq!(e["cause"], "certificate-expired", "{e}");
        assert_eq!(e["spiffe_id"], TRADING, "{e}");
        // New handshakes with that chain are refused now.
        assert!(refuses(&gw, &pki, &leaf));
    }

    /// `reload` on the operator socket says when a listener's new TLS material was
    /// refused (here a server certificate file turned to garbage), and the listener
    /// keeps serving with what it had.
    #[test]
    fn control_reload_reports_refused_tls_material() {
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let mut setup = Setup::new(up.addr);
        setup.table = Some(trading_only());
        // Reloads only when asked.
        setup.listener_extra = pki.listener_tls("reload_interval = \"off\"");
        setup.tables_extra = "[operator]\nsocket = \"zgate.sock\"\n".into();
        let gw = Gateway::start(&setup);
        let socket = gw.dir.path().join("zgate.sock");
        let cfg = client_config(&pki, Some(&pki.client(&ClientSpec::spiffe(TRADING))));
        let r = operator_ask(&socket, "reload");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["tls_refused"], 0);

        std::fs::write(pki.path("server.pem"), b"not a certificate").unwrap();
        let r = operator_ask(&socket, "reload");
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["tls_refused"], 1);
        assert_eq!(r["table_version"], 1, "the table itself reloaded");
        // The answer says why, not "see the log" (review 16.13).
        let error = r["error"].as_str().unwrap();
        assert!(
            error.contains("listener `echo`: TLS material refused, the current material stays: listener[0].tls.cert"),
            "{error}"
        );
        assert_eq!(gw.metric_settled("zgate_tls_reload_failures_total", 1), 1);
        let mut s = connect_tls(&gw, cfg);
        echo_through(&mut s, b"old material still serves");
    }

    /// Resumption beside a CRL: a client's second connection resumes; once a reloaded
    /// CRL revokes its certificate, its ticket no longer gets it in (the reload made a
    /// new ticket key, so it must make a full handshake, which the new CRL refuses).
    #[test]
    fn sessions_resume_beside_a_crl_until_a_reload_revokes_the_certificate() {
        let pki = Pki::new(&[]);
        // One client configuration, so one ticket cache, for every connection.
        let (_up, gw, leaf, cfg) = reloading_gateway(&pki);
        let mut first = connect_tls(&gw, Arc::clone(&cfg));
        // Reading the echo also takes in the tickets sent after the handshake.
        echo_through(&mut first, b"full");
        assert_eq!(
            first.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        drop(first);
        let mut second = connect_tls(&gw, Arc::clone(&cfg));
        echo_through(&mut second, b"resumed");
        assert_eq!(
            second.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{}",
            gw.log()
        );
        assert_eq!(gw.wait_metric("zgate_tls_handshakes_total", 2), 2);
        assert_eq!(
            gw.metric_settled("zgate_tls_resumed_handshakes_total", 1),
            1
        );
        // The decision's audit record says which flow skipped verification.
        let decisions: Vec<_> = gw
            .audit()
            .into_iter()
            .filter(|e| e["event"] == "decision")
            .collect();
        assert_eq!(decisions.len(), 2, "{decisions:?}");
        assert_eq!(decisions[0].get("resumed"), None);
        assert_eq!(decisions[1]["resumed"], true);

        revoke_by_crl_reload(&pki, &gw, &leaf, &cfg);
        // The live resumed connection is not re-authenticated by the material change.
        echo_through(&mut second, b"still open");
    }

    /// A SIGHUP that changes no TLS file (a table reload) keeps the listener's
    /// material, so its session tickets stay good; a SIGHUP after a TLS file changed
    /// rebuilds it at once (no watch interval here), and the old tickets then lead to a
    /// full handshake.
    #[test]
    fn sighup_rebuilds_only_changed_tls_material_and_keeps_tickets_otherwise() {
        use rustls::HandshakeKind::{Full, Resumed};
        let pki = Pki::new(&[]);
        let up = Upstream::echo();
        let gw = tls_gateway(&pki, up.addr, trading_only(), "reload_interval = \"off\"");
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        let cfg = client_config(&pki, Some(&leaf));
        let handshake = || {
            let mut s = connect_tls(&gw, Arc::clone(&cfg));
            // Reading the echo also takes in the tickets sent after the handshake.
            echo_through(&mut s, b"x");
            s.conn.handshake_kind()
        };
        assert_eq!(handshake(), Some(Full));
        assert_eq!(handshake(), Some(Resumed));

        gw.signal("HUP");
        assert_eq!(gw.wait_metric("zgate_table_reloads_total", 1), 1);
        assert_eq!(handshake(), Some(Resumed), "{}", gw.log());
        assert_eq!(gw.metric("zgate_tls_reloads_total"), 0);

        // The same certificate, written anew: a change all the same.
        let cert = std::fs::read(pki.path("server.pem")).unwrap();
        replace_file(&pki.path("server.pem"), &cert);
        gw.signal("HUP");
        assert_eq!(gw.wait_metric("zgate_table_reloads_total", 2), 2);
        assert_eq!(gw.wait_metric("zgate_tls_reloads_total", 1), 1);
        assert_eq!(handshake(), Some(Full), "{}", gw.log());
        assert_eq!(handshake(), Some(Resumed));
    }

    #[test]
    fn zgate_check_reports_tls_errors_with_their_key_and_exits_64() {
        let pki = Pki::new(&[]);
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("zgate.toml");
        let text = format!(
            "[workers]\ncount = 1\n[[listener]]\nname = \"echo\"\nlisten = \"127.0.0.1:1\"\n\
             upstream = \"127.0.0.1:2\"\n[listener.tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            pki.path("server.pem"),
            pki.path("ca.pem"), // not a key
            pki.path("missing.pem"),
        );
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_zgate"))
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains("listener[0].tls.client_ca"), "{err}");
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[listener.tls]", "[listener.tls]\nclient_atuh = \"none\"");
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_zgate"))
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains("client_atuh"), "{err}");
    }
}
