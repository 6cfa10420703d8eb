//! Upstream TLS origination end to end: a rustls client with an SVID → the real `zgate`
//! (TLS listener with `[listener.upstream_tls]`) → an in-test rustls echo server that
//! only speaks TLS and requires the gateway's own client certificate. Failure modes: an
//! upstream whose certificate names another host, or chains to a CA the gateway does
//! not trust, is refused and counted; the client is closed.
#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines and short sleeps are the point"
)]

#[cfg(test)]
mod common;

#[cfg(test)]
mod upstream_tls {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc::{channel, Receiver};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::server::WebPkiClientVerifier;
    use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
    use zgate_devpki::{Ca, ClientSpec, Leaf};

    use super::common::pki::{
        client_config, connect_tls, echo_through, now, refused, trading_only, Pki, Tls, TRADING,
    };
    use super::common::*;

    const GATEWAY: &str = "spiffe://corp.example/zgate/gateway";

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn chain(leaf: &Leaf) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .map(Result::unwrap)
            .collect()
    }

    /// A TLS-only echo server: requires a client certificate from `client_ca`, serves
    /// `cert`, echoes until the peer's close_notify, then sends its own. Records the
    /// client certificates it saw.
    struct TlsEcho {
        addr: SocketAddr,
        handshakes: Arc<AtomicUsize>,
        peers: Receiver<Vec<u8>>,
        /// How each connection's input ended: `close_notify`, or the read error's kind
        /// (with `After::KeyUpdateFlood`: `asked N`).
        ends: Receiver<String>,
        /// `After::KeyUpdateFlood` waits for this before it floods, and keeps its
        /// connection open until it is cleared.
        go: Arc<AtomicBool>,
    }

    /// What the echo does after its first echo.
    #[derive(Clone, Copy, PartialEq)]
    enum After {
        /// Echo on until the peer's close_notify, then send its own.
        EchoOn,
        /// End its TCP stream at once, without close_notify (a cut).
        Fin,
        /// Answer the second input with the first 10 bytes of a record, then end its
        /// TCP stream (a cut in the middle of a record).
        CutRecord,
        /// Answer the second input with a record whose tag has one bit changed (a
        /// forgery), then read on.
        Forged,
        /// Read nothing more; once `go` is set, ask for key updates (each followed by
        /// a byte of data) as fast as the socket takes them, until 100,000 or two
        /// seconds without progress; report how many were asked.
        KeyUpdateFlood,
    }

    /// The requests an `After::KeyUpdateFlood` upstream makes at most.
    const MOST_KEY_UPDATES: usize = 100_000;

    /// `After::KeyUpdateFlood`'s flood, by hand on a non-blocking socket (a blocking
    /// write would wait for a gateway that waits for its own output to drain).
    fn key_update_flood(
        s: &mut StreamOwned<ServerConnection, TcpStream>,
        go: &AtomicBool,
    ) -> usize {
        let deadline = std::time::Instant::now() + WAIT;
        while !go.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        s.sock.set_nonblocking(true).unwrap();
        let mut asked = 0;
        let mut last_progress = std::time::Instant::now();
        while asked < MOST_KEY_UPDATES
            && last_progress.elapsed() < std::time::Duration::from_secs(2)
        {
            if s.conn.wants_write() {
                match s.conn.write_tls(&mut s.sock) {
                    Ok(_) => last_progress = std::time::Instant::now(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(_) => break,
                }
                continue;
            }
            s.conn.refresh_traffic_keys().unwrap();
            s.conn.writer().write_all(b"k").unwrap();
            asked += 1;
        }
        asked
    }

    /// Send a record of data cut short (`After::CutRecord`) or with one bit of its tag
    /// changed (`After::Forged`) on `s`'s socket, under `s`'s keys.
    fn misbehave(s: &mut StreamOwned<ServerConnection, TcpStream>, after: After) {
        s.conn
            .writer()
            .write_all(b"a record cut or forged")
            .unwrap();
        let mut rec = Vec::new();
        s.conn.write_tls(&mut rec).unwrap();
        match after {
            After::CutRecord => rec.truncate(10),
            After::Forged => *rec.last_mut().unwrap() ^= 1,
            After::EchoOn | After::Fin | After::KeyUpdateFlood => unreachable!(),
        }
        s.sock.write_all(&rec).unwrap();
    }

    impl TlsEcho {
        fn start_with(cert: &Leaf, client_ca: &Ca, after: After) -> TlsEcho {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(client_ca.cert_pem().as_bytes()).unwrap())
                .unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .unwrap();
            let config = Arc::new(
                ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(
                        chain(cert),
                        PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
                    )
                    .unwrap(),
            );
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let handshakes = Arc::new(AtomicUsize::new(0));
            let (tx, peers) = channel();
            let (end_tx, ends) = channel();
            let h = Arc::clone(&handshakes);
            let go = Arc::new(AtomicBool::new(false));
            let go_all = Arc::clone(&go);
            std::thread::spawn(move || {
                for tcp in listener.incoming().take(64) {
                    let Ok(tcp) = tcp else { break };
                    let (config, h, p) = (Arc::clone(&config), Arc::clone(&h), tx.clone());
                    let end_tx = end_tx.clone();
                    let go = Arc::clone(&go_all);
                    std::thread::spawn(move || {
                        tcp.set_read_timeout(Some(WAIT)).unwrap();
                        let conn = ServerConnection::new(config).unwrap();
                        let mut s = StreamOwned::new(conn, tcp);
                        let mut buf = vec![0u8; 32 * 1024];
                        let mut first = true;
                        let mut echoed = false;
                        loop {
                            let n = match s.read(&mut buf) {
                                Ok(0) => {
                                    let _ = end_tx.send("close_notify".to_string());
                                    break;
                                }
                                Ok(n) => n,
                                Err(e) => {
                                    let _ = end_tx.send(format!("{:?}", e.kind()));
                                    break;
                                }
                            };
                            if first {
                                // Data arrived: the handshake (with client auth) is done.
                                first = false;
                                h.fetch_add(1, Ordering::SeqCst);
                                if let Some(c) = s.conn.peer_certificates() {
                                    let _ = p.send(c[0].to_vec());
                                }
                            }
                            if echoed && matches!(after, After::CutRecord | After::Forged) {
                                misbehave(&mut s, after);
                                if after == After::CutRecord {
                                    // Dropping the stream closes the socket: a bare FIN.
                                    return;
                                }
                                continue;
                            }
                            if s.write_all(&buf[..n]).and_then(|()| s.flush()).is_err() {
                                break;
                            }
                            echoed = true;
                            if after == After::Fin {
                                // Dropping the stream closes the socket: a bare FIN.
                                return;
                            }
                            if after == After::KeyUpdateFlood {
                                let asked = key_update_flood(&mut s, &go);
                                let _ = end_tx.send(format!("asked {asked}"));
                                let deadline = std::time::Instant::now() + WAIT;
                                while go.load(Ordering::SeqCst)
                                    && std::time::Instant::now() < deadline
                                {
                                    std::thread::sleep(std::time::Duration::from_millis(5));
                                }
                                return;
                            }
                        }
                        s.conn.send_close_notify();
                        let _ = s.flush();
                    });
                }
            });
            TlsEcho {
                addr,
                handshakes,
                peers,
                ends,
                go,
            }
        }
    }

    /// The PKI of the upstream side: its CA and server certificate for `db.internal`,
    /// and the gateway's own client certificate (from the corp CA the upstream trusts).
    struct Upstream {
        _dir: tempfile::TempDir,
        echo: TlsEcho,
        table: String,
        gateway_leaf: Leaf,
    }

    fn upstream_side(pki: &Pki, server_name_in_cert: &str, trusted: bool) -> Upstream {
        upstream_side_with(pki, server_name_in_cert, trusted, After::EchoOn)
    }

    fn upstream_side_with(
        pki: &Pki,
        server_name_in_cert: &str,
        trusted: bool,
        after: After,
    ) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let upstream_ca = Ca::new("upstream CA", now()).unwrap();
        let server = upstream_ca
            .server(&[server_name_in_cert], &[], now())
            .unwrap();
        let gateway_leaf = pki.ca.client(&ClientSpec::spiffe(GATEWAY), now()).unwrap();
        let echo = TlsEcho::start_with(&server, &pki.ca, after);
        let ca_for_gateway = if trusted {
            upstream_ca.cert_pem().to_string()
        } else {
            Ca::new("some other CA", now())
                .unwrap()
                .cert_pem()
                .to_string()
        };
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("upstream-ca.pem"), ca_for_gateway).unwrap();
        std::fs::write(p("gw.pem"), &gateway_leaf.chain_pem).unwrap();
        std::fs::write(p("gw.key"), &gateway_leaf.key_pem).unwrap();
        let table = format!(
            "[listener.upstream_tls]\nca = {:?}\nserver_name = \"db.internal\"\ncert = {:?}\nkey = {:?}\n",
            p("upstream-ca.pem"),
            p("gw.pem"),
            p("gw.key")
        );
        Upstream {
            _dir: dir,
            echo,
            table,
            gateway_leaf,
        }
    }

    fn gateway(pki: &Pki, up: &Upstream) -> Gateway {
        let mut setup = Setup::new(up.echo.addr);
        setup.table = Some(trading_only());
        setup.listener_extra = format!("{}{}", pki.listener_tls(""), up.table);
        Gateway::start(&setup)
    }

    fn connect(gw: &Gateway, pki: &Pki) -> Tls {
        let leaf = pki.client(&ClientSpec::spiffe(TRADING));
        connect_tls(gw, client_config(pki, Some(&leaf)))
    }

    #[test]
    fn traffic_is_re_encrypted_to_an_mtls_upstream_byte_exact_and_closes_cleanly() {
        let pki = Pki::new(&[]);
        let up = upstream_side(&pki, "db.internal", true);
        let gw = gateway(&pki, &up);
        let mut s = connect(&gw, &pki);
        echo_through(&mut s, b"x");
        echo_through(&mut s, &pattern(2 << 20, 11));
        // The upstream authenticated the gateway by its own certificate.
        assert_eq!(
            up.echo.peers.try_iter().collect::<Vec<_>>(),
            vec![zgate_devpki::pem_to_der(&up.gateway_leaf.cert_pem).remove(0)]
        );
        assert_eq!(gw.wait_metric("zgate_upstream_tls_handshakes_total", 1), 1);
        // close_notify from the client reaches the upstream (through its own TLS
        // session), whose close_notify comes back: a clean end both ways.
        s.conn.send_close_notify();
        s.flush().unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(gw.wait_metric_at_most("zgate_connections_active", 0), 0);
        assert!(up.echo.handshakes.load(Ordering::SeqCst) >= 1);
    }

    /// Review 16.2: a bare FIN from a TLS upstream became close_notify to the client:
    /// an on-path attacker could cut the upstream's stream and have the gateway vouch
    /// for the cut. Now the client's connection is reset, with no close_notify.
    #[test]
    fn an_upstream_fin_without_close_notify_resets_the_client() {
        let pki = Pki::new(&[]);
        let up = upstream_side_with(&pki, "db.internal", true, After::Fin);
        let gw = gateway(&pki, &up);
        let mut s = connect(&gw, &pki);
        echo_through(&mut s, b"the one echo");
        let mut rest = Vec::new();
        let e = s.read_to_end(&mut rest).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
        assert!(rest.is_empty());
        assert_eq!(gw.wait_metric("zgate_tls_truncations_total", 1), 1);
    }

    /// Review 16.1 from the upstream's side: a TLS upstream that asks for key updates
    /// and never reads, while the gateway's output toward it is full (the client sends
    /// more than the upstream takes). One update is owed however many are asked, and
    /// the upstream is not read until it can be sent: the gateway reads a batch of the
    /// flood and no more.
    #[test]
    fn an_upstream_asking_for_key_updates_and_never_reading_is_stalled_not_buffered() {
        const FLOOD: usize = 8 << 20;
        let pki = Pki::new(&[]);
        let up = upstream_side_with(&pki, "db.internal", true, After::KeyUpdateFlood);
        let gw = gateway(&pki, &up);
        let mut s = connect(&gw, &pki);
        echo_through(&mut s, b"the one echo");
        // The client sends more than the upstream (which reads no more) takes: the
        // gateway holds a client buffer it cannot pass on yet. The writer blocks until
        // the gateway is stopped at the end of the test.
        std::thread::spawn(move || {
            let _ = s.write_all(&vec![b'c'; FLOOD]).and_then(|()| s.flush());
        });
        gw.wait_metric("zgate_buffers_in_use", 1);
        up.echo.go.store(true, Ordering::SeqCst);
        let report = up.echo.ends.recv_timeout(WAIT * 2).unwrap();
        let asked: usize = report.strip_prefix("asked ").unwrap().parse().unwrap();
        // What the gateway read of them: each request came with one byte of data, and
        // the data it read is counted (the rest waits in the kernel's socket buffers,
        // which is what bounds `asked` here: megabytes on loopback).
        let read = gw.metric("zgate_bytes_total{direction=\"upstream_to_client\"}");
        assert!(asked > 10_000, "the flood stopped early: {report}");
        assert!(
            read < 10_000,
            "the gateway read {read} of {asked} requests from an upstream it could not write to"
        );
        // Stalled, not cut: the flow is still there.
        assert_eq!(gw.metric("zgate_connections_active"), 1);
        assert_eq!(gw.metric("zgate_upstream_tls_failures_total"), 0);
        up.echo.go.store(false, Ordering::SeqCst);
    }

    /// Review 16.2, the other two cases from a TLS upstream: a record cut in its middle
    /// by a FIN, and a forged record, each reset the client: never a close_notify, and
    /// nothing of the bad record reaches it. The upstream misbehaves only after its
    /// first echo arrived, in answer to the client's second write.
    #[test]
    fn an_upstream_record_cut_in_its_middle_or_forged_resets_the_client() {
        let pki = Pki::new(&[]);
        for after in [After::CutRecord, After::Forged] {
            let up = upstream_side_with(&pki, "db.internal", true, after);
            let gw = gateway(&pki, &up);
            let mut s = connect(&gw, &pki);
            echo_through(&mut s, b"the one echo");
            s.write_all(b"again").unwrap();
            s.flush().unwrap();
            let mut rest = Vec::new();
            let e = s.read_to_end(&mut rest).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
            assert!(rest.is_empty());
            if after == After::CutRecord {
                assert_eq!(gw.wait_metric("zgate_tls_truncations_total", 1), 1);
            } else {
                assert_eq!(
                    gw.wait_metric(
                        "zgate_upstream_tls_failures_total{reason=\"bad-record\"}",
                        1
                    ),
                    1
                );
                // The forger, still reading, is reset (or reads an alert): it is
                // never told the stream ended cleanly.
                let end = up.echo.ends.recv_timeout(WAIT).unwrap();
                assert!(
                    matches!(end.as_str(), "ConnectionReset" | "InvalidData"),
                    "{end}"
                );
            }
        }
    }

    /// The other way: a client that cuts its stream (FIN, no close_notify) does not
    /// make the gateway send the upstream an authenticated close_notify: the upstream's
    /// connection is reset.
    #[test]
    fn a_client_fin_without_close_notify_resets_the_tls_upstream() {
        let pki = Pki::new(&[]);
        let up = upstream_side(&pki, "db.internal", true);
        let gw = gateway(&pki, &up);
        let mut s = connect(&gw, &pki);
        echo_through(&mut s, b"before the cut");
        s.sock.shutdown(std::net::Shutdown::Write).unwrap();
        let end = up.echo.ends.recv_timeout(WAIT).unwrap();
        assert_eq!(end, "ConnectionReset");
        assert_eq!(gw.wait_metric("zgate_tls_truncations_total", 1), 1);
    }

    /// `openssl s_server -rev` with `-max_send_frag 512`, asking for the gateway's
    /// certificate: its session tickets carry that certificate, so each is longer than
    /// one 512-byte record. Killed on drop.
    struct OpensslUpstream(std::process::Child, u16);

    impl Drop for OpensslUpstream {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Review 16.7: a handshake message split over records after the handshake (here an
    /// upstream's NewSessionTicket) was refused and upstream TLS broke. Now it is
    /// reassembled: the flow works and the next connection resumes with the ticket.
    #[test]
    fn an_openssl_upstream_with_small_records_splits_its_tickets_and_is_followed() {
        let ok = std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "openssl is missing: install the `openssl` package (tools/test does)"
        );
        let pki = Pki::new(&[]);
        let up = upstream_side(&pki, "db.internal", true);
        let dir = tempfile::tempdir().unwrap();
        let upstream_ca = Ca::new("openssl upstream CA", now()).unwrap();
        let server = upstream_ca.server(&["db.internal"], &[], now()).unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("server.pem"), &server.chain_pem).unwrap();
        std::fs::write(p("server.key"), &server.key_pem).unwrap();
        std::fs::write(p("upstream-ca.pem"), upstream_ca.cert_pem()).unwrap();
        std::fs::write(p("corp-ca.pem"), pki.ca.cert_pem()).unwrap();
        let port = free_port();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-rev", "-accept", &port.to_string()])
            .args(["-max_send_frag", "512", "-Verify", "1"])
            .arg("-cert")
            .arg(p("server.pem"))
            .arg("-key")
            .arg(p("server.key"))
            .arg("-CAfile")
            .arg(p("corp-ca.pem"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let openssl = OpensslUpstream(child, port);
        let addr: SocketAddr = format!("127.0.0.1:{}", openssl.1).parse().unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let table = up.table.replace(
            &up._dir.path().join("upstream-ca.pem").display().to_string(),
            &p("upstream-ca.pem").display().to_string(),
        );
        let mut setup = Setup::new(addr);
        setup.table = Some(trading_only());
        setup.listener_extra = format!("{}{}", pki.listener_tls(""), table);
        let gw = Gateway::start(&setup);
        for round in 0..2u64 {
            let mut s = connect(&gw, &pki);
            s.write_all(b"fragmented tickets\n").unwrap();
            s.flush().unwrap();
            let mut got = [0u8; 19];
            s.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"stekcit detnemgarf\n", "round {round}");
            assert_eq!(
                gw.wait_metric("zgate_upstream_tls_handshakes_total", round + 1),
                round + 1
            );
        }
        assert_eq!(
            gw.metric("zgate_upstream_tls_failures_total{reason=\"bad-record\"}"),
            0,
            "{}",
            gw.log()
        );
    }

    fn upstream_failures(gw: &Gateway, reason: &str) -> u64 {
        gw.metric(&format!(
            "zgate_upstream_tls_failures_total{{reason=\"{reason}\"}}"
        ))
    }

    #[test]
    fn an_upstream_certificate_for_another_name_is_refused() {
        let pki = Pki::new(&[]);
        let up = upstream_side(&pki, "evil.internal", true);
        let gw = gateway(&pki, &up);
        assert!(refused(connect(&gw, &pki)));
        let deadline = std::time::Instant::now() + WAIT;
        while upstream_failures(&gw, "bad-certificate") == 0 && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(upstream_failures(&gw, "bad-certificate"), 1, "{}", gw.log());
        assert_eq!(gw.metric("zgate_upstream_tls_handshakes_total"), 0);
        assert!(
            up.echo.peers.try_iter().count() == 0,
            "no byte went upstream"
        );
    }

    #[test]
    fn an_upstream_chaining_to_an_untrusted_ca_is_refused() {
        let pki = Pki::new(&[]);
        let up = upstream_side(&pki, "db.internal", false);
        let gw = gateway(&pki, &up);
        assert!(refused(connect(&gw, &pki)));
        assert_eq!(
            gw.wait_metric(
                "zgate_upstream_tls_failures_total{reason=\"untrusted-issuer\"}",
                1
            ),
            1
        );
        assert_eq!(up.echo.peers.try_iter().count(), 0);
    }

    #[test]
    fn zgate_check_refuses_upstream_tls_on_a_plain_listener_and_a_half_client_pair() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("zgate.toml");
        std::fs::write(
            &cfg,
            "[workers]\ncount = 1\n[[listener]]\nname = \"db\"\nlisten = \"127.0.0.1:1\"\n\
             upstream = \"127.0.0.1:2\"\n[listener.upstream_tls]\nca = \"ca.pem\"\n\
             server_name = \"db.internal\"\ncert = \"gw.pem\"\n",
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_zgate"))
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(
            err.contains("listener[0].tls: `[listener.upstream_tls]` re-encrypts"),
            "{err}"
        );
        assert!(
            err.contains("listener[0].upstream_tls.cert: `cert` and `key`"),
            "{err}"
        );
    }
}
