//! STYLE E.13: the kernel owns a buffer (and a socket) until its CQE. For each op kind a
//! flow can have in flight (recv, send, splice, connect with its linked timeout; and for
//! TLS flows the handshake recv into the flow's own buffer, the in-place `sendmsg` and
//! the send from an output buffer), close
//! the flow while the op is pending and check that every file descriptor comes back:
//! the slot, its sockets and its pipe are freed only after the last CQE, and nothing
//! leaks. The close comes from a re-decision (SIGHUP with a table that denies
//! loopback), which cancels whatever is in flight.
#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines and short sleeps are the point"
)]

#[cfg(test)]
mod common;

#[cfg(test)]
mod lifecycle {
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::common::*;

    fn open_fds(gw: &Gateway) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", gw.child.id()))
            .unwrap()
            .count()
    }

    /// An upstream that accepts and never reads or writes (until the test ends).
    fn mute() -> Upstream {
        Upstream::start(|s| {
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(s);
        })
    }

    /// A listener whose accept queue is full and never drained: new connects to it stay
    /// pending (the kernel drops their SYNs). Returns it and the connections filling it.
    fn black_hole() -> (TcpListener, SocketAddr, Vec<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut fill = Vec::new();
        // std listens with a backlog of 128: the queue holds 129.
        for _ in 0..200 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fill.push(s),
                Err(_) => break,
            }
        }
        assert!(fill.len() < 200, "the accept queue never filled");
        (l, addr, fill)
    }

    /// SIGHUP a table that denies loopback; wait until no flow is left.
    fn deny_all_and_drain(gw: &Gateway) {
        std::fs::write(&gw.table_path, table_bytes(allow_ten_only("echo"), 2)).unwrap();
        gw.signal("HUP");
        assert_eq!(gw.wait_metric_at_most("zgate_connections_active", 0), 0);
    }

    /// Wait (bounded) for the gateway's fd count to come back to `want`.
    fn wait_fds(gw: &Gateway, want: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let n = open_fds(gw);
            if n <= want || Instant::now() >= deadline {
                return n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Steps, for recv, send and splice:
    /// 1. start zgate (one worker; splice on or off) and note its open fds;
    /// 2. an idle flow to an echo upstream: a recv is armed on both sockets;
    /// 3. a flow whose client floods a mute upstream: once the socket buffers are full a
    ///    send (splice off) or a splice into the upstream (splice on) stays pending;
    /// 4. SIGHUP a table denying loopback: both flows are re-decided and closed, their
    ///    ops cancelled;
    /// 5. no flow left, and the fd count is back to step 1: every socket (and pipe) was
    ///    closed, after its last CQE;
    /// 6. the gateway still serves: allow again, a new flow echoes.
    #[test]
    fn closing_flows_with_recv_send_or_splice_in_flight_frees_every_fd() {
        for splice in [false, true] {
            let echo = Upstream::echo();
            let quiet = mute();
            let mut setup = Setup::new(echo.addr);
            setup.workers_extra = format!("splice = {splice}");
            // A second listener to the mute upstream, on the same worker.
            let mute_listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            setup.listener_extra = format!(
                "\n[[listener]]\nname = \"mute\"\nlisten = \"{mute_listen}\"\nupstream = \"{}\"\n",
                quiet.addr
            );
            let mut rules = allow_all("echo");
            rules.extend(allow_all("mute").into_iter().map(|mut r| {
                r.id = "allow-mute".into();
                r
            }));
            setup.table = Some(table_bytes(rules, 1));
            let gw = Gateway::start(&setup);
            let before = open_fds(&gw);

            let idle = gw.connect();
            assert_eq!(round_trip(&idle, b"x"), b"x");
            let flooded = TcpStream::connect(mute_listen).unwrap();
            let mut w = flooded.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                let chunk = pattern(1 << 20, 5);
                for _ in 0..256 {
                    if w.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
            // Both flows open, and bytes have gone toward the mute upstream.
            assert_eq!(gw.wait_metric("zgate_connections_active", 2), 2);
            assert!(
                gw.wait_metric(
                    "zgate_bytes_total{direction=\"client_to_upstream\"}",
                    1 << 20
                ) >= 1 << 20
            );
            if splice {
                assert!(gw.wait_metric("zgate_splice_pipes_opened_total", 1) >= 1);
            }
            assert!(open_fds(&gw) >= before + 4);

            deny_all_and_drain(&gw);
            assert_eq!(
                gw.metric_settled("zgate_flows_closed_by_policy_total", 2),
                2
            );
            assert_eq!(
                wait_fds(&gw, before),
                before,
                "splice = {splice}: fds leaked"
            );
            writer.join().unwrap();
            drop(idle);

            std::fs::write(&gw.table_path, table_bytes(allow_all("echo"), 3)).unwrap();
            gw.signal("HUP");
            assert_eq!(gw.wait_metric("zgate_table_version", 3), 3);
            let again = gw.connect();
            assert_eq!(round_trip(&again, b"still serving"), b"still serving");
        }
    }

    /// Steps, for the poll a splicing direction waits in:
    /// 1. start zgate (one worker, splice on), note its open fds;
    /// 2. a flow to an echo upstream has 1 MiB echoed (both directions splice), then
    ///    goes quiet: each direction holds its pipe and waits in a poll for more;
    /// 3. SIGHUP a table denying loopback: the flow is re-decided and closed, its polls
    ///    cancelled;
    /// 4. the fd count is back to step 1 (sockets and pipes closed after the last CQE)
    ///    and no pipe is counted open.
    #[test]
    fn closing_a_flow_whose_splice_waits_for_data_frees_every_fd() {
        let echo = Upstream::echo();
        let gw = Gateway::start(&Setup::new(echo.addr));
        let before = open_fds(&gw);
        let s = gw.connect();
        let data = pattern(1 << 20, 11);
        // A direction whose last splice brought little drops its pipe (caught up):
        // echo again until one waits with its pipe (almost always the first time).
        for _ in 0..10 {
            assert!(round_trip(&s, &data) == data);
            if gw.metric("zgate_splice_pipes_open") >= 1 {
                break;
            }
        }
        assert!(gw.metric("zgate_splice_pipes_open") >= 1);
        assert!(open_fds(&gw) >= before + 4);
        deny_all_and_drain(&gw);
        assert_eq!(
            gw.metric_settled("zgate_flows_closed_by_policy_total", 1),
            1
        );
        assert_eq!(wait_fds(&gw, before), before, "fds leaked");
        assert_eq!(gw.wait_metric_at_most("zgate_splice_pipes_open", 0), 0);
    }

    /// Steps, for connect (and its linked timeout):
    /// 1. start zgate toward an upstream whose accept queue is full, note its fds;
    /// 2. a client connects: the upstream connect stays pending (SYNs dropped), with a
    ///    LinkTimeout linked to it (connect_timeout 5 s);
    /// 3. SIGHUP a table denying loopback: the flow, still connecting, is re-decided and
    ///    closed (counted in zgate_flows_closed_by_policy_total, which a timeout would
    ///    not be), cancelling the connect and its timeout;
    /// 4. the fd count is back to step 1.
    #[test]
    fn closing_a_flow_whose_connect_is_in_flight_frees_every_fd() {
        let (_hole, addr, _fill) = black_hole();
        let gw = Gateway::start(&Setup::new(addr));
        let before = open_fds(&gw);
        let _client = gw.connect();
        assert_eq!(gw.wait_metric("zgate_connections_active", 1), 1);
        assert!(open_fds(&gw) >= before + 2);
        deny_all_and_drain(&gw);
        assert_eq!(
            gw.metric_settled("zgate_flows_closed_by_policy_total", 1),
            1
        );
        assert_eq!(gw.metric("zgate_upstream_connect_timeouts_total"), 0);
        assert_eq!(wait_fds(&gw, before), before, "fds leaked");
    }

    /// An upstream whose behaviour the flow's first byte picks: `e` echo, `m` mute
    /// (reads nothing more), `f` flood 8 MiB toward the client.
    fn chooser() -> Upstream {
        Upstream::start(|mut s| {
            use std::io::Read;
            let mut first = [0u8; 1];
            if s.read_exact(&mut first).is_err() {
                return;
            }
            match first[0] {
                b'e' => {
                    let _ = s.write_all(b"e");
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
                b'f' => {
                    let _ = s.write_all(&pattern(8 << 20, 3));
                }
                _ => {
                    let deadline = Instant::now() + WAIT;
                    while Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
    }

    /// Review 16.12: the close-while-in-flight tests skipped the TLS operations. Steps:
    /// 1. start zgate with a TLS listener (one worker), note its open fds;
    /// 2. four TLS flows: one idle (a recv armed on both sockets); one whose client
    ///    floods a mute upstream (a `sendmsg` of plaintext opened in place, from the
    ///    receive buffer with its `SendVec`, pending); one whose upstream floods a
    ///    client that does not read (a send from the flow's output buffer pending); and
    ///    one stalled mid-handshake (a recv into the flow's own handshake buffer);
    /// 3. SIGHUP a table denying loopback: the three decided flows are re-decided and
    ///    closed, their ops cancelled; the handshake runs into its timeout (1 s);
    /// 4. the fd count is back to step 1, and no pool buffer is held.
    #[test]
    fn closing_tls_flows_with_each_op_in_flight_frees_every_fd() {
        use super::common::pki::{client_config, connect_tls, trading_only, Pki, TRADING};
        use zgate_devpki::ClientSpec;

        let pki = Pki::new(&[]);
        let up = chooser();
        let mut setup = Setup::new(up.addr);
        setup.table = Some(trading_only());
        setup.listener_extra = pki.listener_tls("");
        let gw = Gateway::start(&setup);
        let before = open_fds(&gw);
        let cfg = client_config(&pki, Some(&pki.client(&ClientSpec::spiffe(TRADING))));

        let mut idle = connect_tls(&gw, cfg.clone());
        idle.write_all(b"e").unwrap();
        idle.flush().unwrap();
        let mut e = [0u8; 1];
        std::io::Read::read_exact(&mut idle, &mut e).unwrap();

        let mut flooding = connect_tls(&gw, cfg.clone());
        flooding.write_all(b"m").unwrap();
        flooding.flush().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = pattern(1 << 20, 9);
            for _ in 0..64 {
                if flooding
                    .write_all(&chunk)
                    .and_then(|()| flooding.flush())
                    .is_err()
                {
                    return;
                }
            }
        });
        assert!(
            gw.wait_metric(
                "zgate_bytes_total{direction=\"client_to_upstream\"}",
                1 << 20
            ) >= 1 << 20
        );

        let mut flooded = connect_tls(&gw, cfg);
        flooded.write_all(b"f").unwrap();
        flooded.flush().unwrap();
        assert!(
            gw.wait_metric(
                "zgate_bytes_total{direction=\"upstream_to_client\"}",
                1 << 20
            ) >= 1 << 20
        );

        let mut stalled = gw.connect();
        stalled.write_all(&[22, 3, 1, 0, 200, 1]).unwrap();
        assert_eq!(gw.wait_metric("zgate_tls_handshakes_in_progress", 1), 1);
        assert_eq!(gw.wait_metric("zgate_connections_active", 4), 4);
        assert!(open_fds(&gw) >= before + 7);

        deny_all_and_drain(&gw);
        assert_eq!(
            gw.metric_settled("zgate_flows_closed_by_policy_total", 3),
            3
        );
        assert_eq!(
            gw.metric_settled(
                "zgate_tls_handshake_failures_total{reason=\"handshake-timeout\"}",
                1
            ),
            1
        );
        assert_eq!(wait_fds(&gw, before), before, "fds leaked");
        assert_eq!(gw.wait_metric_at_most("zgate_buffers_in_use", 0), 0);
        writer.join().unwrap();
        drop((idle, flooded, stalled));
    }
}
