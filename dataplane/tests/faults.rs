//! The fault suite: each test names one fault and the behaviour a user may count on
//! while it lasts, with the real `zgate` binary, real sockets and real peers. What a
//! trading desk's security review asks: "what happens when ...?". Every wait is
//! bounded; nothing asserts a timing.
#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines and short sleeps are the point"
)]

#[cfg(test)]
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// What a trickler reports.
enum Trickle {
    /// Trickler `id` is connected and has sent the start of a request.
    Started(usize),
    /// The gateway ended trickler `id`'s connection: what it read first, and how the
    /// stream ended (`Ok` for a FIN, else the error's kind).
    Closed {
        id: usize,
        read: Vec<u8>,
        end: Result<(), std::io::ErrorKind>,
    },
}

/// Clients `ids` that send `first`, then trickle one byte every 300 ms (the read timeout
/// `connect` gives their sockets paces them: each byte waits for the gateway's answer),
/// never finishing a request; each reports its start and its end on `events`, and
/// reconnects after the gateway closes it, until `stop` (or until it cannot connect).
fn tricklers<S: std::io::Read + Write + Send + 'static>(
    ids: std::ops::Range<usize>,
    stop: &Arc<AtomicBool>,
    events: &std::sync::mpsc::Sender<Trickle>,
    first: &'static [u8],
    connect: impl Fn() -> Option<S> + Send + Sync + 'static,
) -> Vec<std::thread::JoinHandle<()>> {
    let connect = Arc::new(connect);
    ids.map(|id| {
        let (stop, connect, events) = (Arc::clone(stop), Arc::clone(&connect), events.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Some(mut s) = connect() else {
                    return;
                };
                if s.write_all(first).is_err() {
                    continue;
                }
                let _ = events.send(Trickle::Started(id));
                let mut read = Vec::new();
                let mut buf = [0u8; 256];
                let end = loop {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Err(e) = s.write_all(b"\x01") {
                        break Err(e.kind());
                    }
                    match s.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(n) => read.extend_from_slice(buf.get(..n).unwrap_or_default()),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => break Err(e.kind()),
                    }
                };
                let _ = events.send(Trickle::Closed { id, read, end });
            }
        })
    })
    .collect()
}

/// Fault: slowloris on the admin endpoint and the operator socket: clients that open a
/// connection and trickle bytes, never finishing a request.
/// Behaviour: the supervisor keeps answering `/healthz`, `status`, `reload` and
/// `drain` while they hang on; each trickler is closed at its deadline (review 16.9:
/// one trickling client used to hold the supervisor, and with it drain, reload and
/// the audit drain, for as long as it trickled): the gateway ends its stream, and an
/// operator client is told it sent no whole line in time.
#[test]
fn slow_admin_and_operator_clients_do_not_hold_the_supervisor() {
    const ADMIN: usize = 20;
    const ALL: usize = 30;
    let up = Upstream::echo();
    let mut setup = Setup::new(up.addr);
    setup.tables_extra = "[operator]\nsocket = \"zgate.sock\"\n".into();
    let mut gw = Gateway::start(&setup);
    let socket = gw.dir.path().join("zgate.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, events) = std::sync::mpsc::channel();
    let pace = Some(Duration::from_millis(300));
    let admin = gw.admin;
    let mut slow = tricklers(0..ADMIN, &stop, &tx, b"G", move || {
        let s = TcpStream::connect(admin).ok()?;
        s.set_read_timeout(pace).ok()?;
        Some(s)
    });
    let path = socket.clone();
    slow.extend(tricklers(ADMIN..ALL, &stop, &tx, b"s", move || {
        let s = UnixStream::connect(&path).ok()?;
        s.set_read_timeout(pace).ok()?;
        Some(s)
    }));
    // Which tricklers have started, and how each one's first connection ended.
    let mut started = std::collections::BTreeSet::new();
    let mut first_ends = std::collections::BTreeMap::new();
    let mut until = |done: &dyn Fn(usize, usize) -> bool| {
        while !done(started.len(), first_ends.len()) {
            match events.recv_timeout(WAIT).expect("news from a trickler") {
                Trickle::Started(id) => {
                    started.insert(id);
                }
                Trickle::Closed { id, read, end } => {
                    first_ends.entry(id).or_insert((read, end));
                }
            }
        }
        first_ends.clone()
    };
    // Every trickler is connected and mid-request.
    until(&|started, _| started == ALL);
    for _ in 0..10 {
        let (status, body) = http_get(gw.admin, "/healthz").expect("/healthz answered");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    assert_eq!(operator_ask(&socket, "status")["ok"], true);
    assert_eq!(operator_ask(&socket, "reload")["ok"], true);
    let flow = gw.connect();
    assert_eq!(round_trip(&flow, b"still forwarding"), b"still forwarding");
    // The gateway closes every trickler at its deadline (each then reconnects).
    for (id, (read, end)) in until(&|_, closed| closed == ALL) {
        assert!(
            matches!(
                end,
                Ok(()) | Err(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
            ),
            "trickler {id}: {end:?}"
        );
        let read = String::from_utf8_lossy(&read);
        if id < ADMIN {
            assert_eq!(read, "", "admin trickler {id}");
        } else {
            assert!(
                read.contains("no whole command line within"),
                "operator trickler {id}: {read}"
            );
        }
    }
    assert_eq!(operator_ask(&socket, "drain")["ok"], true);
    drop(flow);
    assert!(gw.wait_exit().success(), "{}", gw.log());
    stop.store(true, Ordering::SeqCst);
    for t in slow {
        t.join().unwrap();
    }
}

/// Fault: the upstream refuses connections (nothing listens).
/// Behaviour: the client is closed at once, the failure is counted and audited with
/// its reason; the gateway serves the next client as before.
#[test]
fn upstream_refusing_closes_the_client_at_once_and_says_why() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&Setup::new(dead));
    for _ in 0..3 {
        let mut s = gw.connect();
        assert!(ends_without_data(&mut s));
    }
    assert_eq!(
        gw.wait_metric("zgate_upstream_connect_failures_total", 3),
        3
    );
    let e = gw.wait_audit(|e| e["event"] == "upstream_connect_failed");
    assert_eq!(e["reason"], "connect-refused");
    assert_eq!(gw.wait_metric_at_most("zgate_connections_active", 0), 0);
}

/// Fault: the upstream blackholes (its accept queue is full, SYNs are dropped).
/// Behaviour: the flow ends after `connect_timeout` (here 1 s), counted as a timeout
/// and audited `connect-timeout`; another listener's flows go on meanwhile.
#[test]
fn a_blackholed_upstream_times_out_at_connect_timeout() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hole.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(s) => fill.push(s),
            Err(_) => break,
        }
    }
    let echo = Upstream::echo();
    let other: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut setup = Setup::new(addr);
    setup.connect_timeout = "1s";
    setup.listener_extra = format!(
        "\n[[listener]]\nname = \"echo2\"\nlisten = \"{other}\"\nupstream = \"{}\"\n",
        echo.addr
    );
    let mut rules = allow_all("echo");
    rules.extend(allow_all("echo2").into_iter().map(|mut r| {
        r.id = "allow-echo2".into();
        r
    }));
    setup.table = Some(table_bytes(rules, 1));
    let gw = Gateway::start(&setup);
    let mut s = gw.connect();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let o = TcpStream::connect(other).unwrap();
    assert_eq!(round_trip(&o, b"unaffected"), b"unaffected");
    assert!(ends_without_data(&mut s));
    assert_eq!(
        gw.wait_metric("zgate_upstream_connect_timeouts_total", 1),
        1
    );
    let e = gw.wait_audit(|e| e["event"] == "upstream_connect_failed");
    assert_eq!(e["reason"], "connect-timeout");
    drop(fill);
}

/// Fault: the upstream resets the connection in the middle of a flow.
/// Behaviour: the client's connection is reset too (not ended cleanly: it must not
/// take a cut stream for a whole one), and the reset is counted.
#[test]
fn an_upstream_reset_mid_flow_resets_the_client() {
    let up = Upstream::start(|mut s| {
        use std::io::Read;
        let mut b = [0u8; 5];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(b"partial answer");
            // Closing with bytes unread sends RST: wait until some are there.
            let _ = s.peek(&mut b);
        }
    });
    let gw = Gateway::start(&Setup::new(up.addr));
    let mut s = gw.connect();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"hello, and the rest").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let end = loop {
        use std::io::Read;
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e.kind()),
        }
    };
    assert!(got.len() <= 14);
    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
    assert!(gw.wait_metric("zgate_resets_total", 1) >= 1);
}

/// Fault: the upstream reads slowly (a database under load) while the client sends
/// 64 MiB as fast as it can.
/// Behaviour: the gateway buffers at most a buffer or a pipe per direction: the
/// client is slowed by TCP, the gateway's memory does not grow with what is sent, and
/// every byte arrives in order.
#[test]
fn a_slow_reading_upstream_slows_the_client_and_the_gateway_memory_stays_flat() {
    const TOTAL: usize = 64 << 20;
    let (tx, rx) = std::sync::mpsc::channel();
    let up = Upstream::start(move |mut s| {
        use std::io::Read;
        let mut buf = vec![0u8; 64 * 1024];
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut n = 0;
        while n < TOTAL {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    for b in &buf[..k] {
                        hash = (hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
                    }
                    n += k;
                    // About 16 MiB/s: slow beside loopback.
                    std::thread::sleep(Duration::from_millis(4));
                }
            }
        }
        let _ = tx.send((n, hash));
    });
    let gw = Gateway::start(&Setup::new(up.addr));
    let s = gw.connect();
    let data = pattern(TOTAL, 17);
    let mut want: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &data {
        want = (want ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    let rss_before = rss_kib(gw.child.id());
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
    let mut peak = 0;
    while !writer.is_finished() {
        peak = peak.max(rss_kib(gw.child.id()));
        std::thread::sleep(Duration::from_millis(50));
    }
    writer.join().unwrap();
    let (n, hash) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((n, hash), (TOTAL, want), "bytes lost or reordered");
    let grew = peak.saturating_sub(rss_before);
    assert!(
        grew < 8 * 1024,
        "gateway RSS grew by {grew} KiB for 64 MiB sent"
    );
}

/// Fault: slowloris during the TLS handshake: 30 clients send a ClientHello a byte at a
/// time and never finish, past `max_handshakes` (8).
/// Behaviour: at most 8 hold a handshake slot, the others are closed at once; each is
/// closed at `handshake_timeout`; a client that already finished its handshake keeps
/// echoing, and a new one still gets through once the slow ones are gone.
#[test]
fn slow_handshakes_past_max_handshakes_do_not_touch_established_flows() {
    use common::pki::{client_config, connect_tls, echo_through, trading_only, Pki, TRADING};
    use zgate_devpki::ClientSpec;
    let pki = Pki::new(&[]);
    let up = Upstream::echo();
    let mut setup = Setup::new(up.addr);
    setup.table = Some(trading_only());
    setup.listener_extra = pki.listener_tls("max_handshakes = 8");
    let gw = Gateway::start(&setup);
    let cfg = client_config(&pki, Some(&pki.client(&ClientSpec::spiffe(TRADING))));
    let mut established = connect_tls(&gw, cfg.clone());
    echo_through(&mut established, b"before the flood");
    let stop = Arc::new(AtomicBool::new(false));
    let listen = gw.listen;
    // A handshake record header announcing 512 bytes, then a byte every 300 ms.
    let (news, _) = std::sync::mpsc::channel();
    let slow = tricklers(0..30, &stop, &news, &[22, 3, 1, 2, 0, 1], move || {
        let s = TcpStream::connect(listen).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
        Some(s)
    });
    assert!(gw.wait_metric("zgate_tls_handshakes_over_limit_total", 1) >= 1);
    assert!(gw.metric("zgate_tls_handshakes_in_progress") <= 8);
    for i in 0..20 {
        echo_through(&mut established, format!("during the flood {i}").as_bytes());
    }
    assert!(
        gw.wait_metric(
            "zgate_tls_handshake_failures_total{reason=\"handshake-timeout\"}",
            8
        ) >= 8
    );
    stop.store(true, Ordering::SeqCst);
    for t in slow {
        t.join().unwrap();
    }
    assert_eq!(
        gw.wait_metric_at_most("zgate_tls_handshakes_in_progress", 0),
        0
    );
    let mut fresh = connect_tls(&gw, cfg);
    echo_through(&mut fresh, b"after the flood");
    echo_through(&mut established, b"still here");
}

/// Fault: the process reaches its open-file limit (here 64 or 65 descriptors, set
/// with `prlimit`, which also fixes the limit the gateway would raise itself to).
/// Behaviour: new connections wait in the listen queue (accept fails with EMFILE,
/// counted in `zgate_accept_errors_total`; or the flow accepted last finds no
/// descriptor for its upstream socket and is refused); the worker then accepts nothing
/// until a tick finds a flow's two descriptors free, and no more than one at a time
/// for a while; established flows keep flowing; once descriptors free up, the waiting
/// connections are served. Which of the two happens first depends on the parity of
/// the descriptors left: both limits are tried.
#[test]
fn at_the_open_file_limit_established_flows_flow_and_new_ones_wait() {
    // Each flow holds two descriptors: an odd and an even limit reach it each way.
    for limit in [64, 65] {
        at_the_open_file_limit(limit);
    }
}

#[expect(
    clippy::unwrap_used,
    reason = "the body of the test above, run once per limit"
)]
fn at_the_open_file_limit(limit: u32) {
    let up = Upstream::echo();
    let mut setup = Setup::new(up.addr);
    setup.prefix = vec!["prlimit".into(), format!("--nofile={limit}:{limit}")];
    let gw = Gateway::start(&setup);
    // Open flows until one is not served: it waits in the listen queue. (Near the
    // limit a flow may also be refused for want of a descriptor for its upstream
    // socket: its client is closed, counted as an upstream failure.)
    let mut flows = Vec::new();
    let mut waiting = Vec::new();
    for _ in 0..64 {
        let mut s = gw.connect();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        match std::io::Read::read(&mut s, &mut b) {
            Ok(1) => flows.push(s),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                waiting.push(s);
                break;
            }
            Err(_) => {}
        }
    }
    assert!(!waiting.is_empty(), "limit {limit}: never reached it");
    assert!(
        flows.len() >= 10,
        "limit {limit}: only {} flows before it",
        flows.len()
    );
    waiting.extend((0..2).map(|_| gw.connect()));
    for s in &mut waiting {
        s.set_read_timeout(Some(WAIT)).unwrap();
    }
    for s in &flows {
        assert_eq!(round_trip(s, b"flowing"), b"flowing");
    }
    // Give a spinning worker time to show itself in the count below.
    std::thread::sleep(Duration::from_millis(500));
    // Free some descriptors: the waiting connections are served.
    flows.truncate(flows.len() - 4);
    for (i, s) in waiting.iter().enumerate() {
        if i == 0 {
            // Its first byte, sent while it waited, comes back first.
            let mut x = [0u8; 1];
            std::io::Read::read_exact(&mut &*s, &mut x).unwrap();
            assert_eq!(&x, b"x");
        }
        assert_eq!(round_trip(s, b"served at last"), b"served at last");
    }
    for s in &flows {
        assert_eq!(round_trip(s, b"and still"), b"and still");
    }
    // Counted, and retried on the 100 ms tick, not in a loop: a spinning accept would
    // have failed thousands of times in that half second, and one that took each new
    // client only to refuse it for want of an upstream socket would have refused all.
    let errors = gw.metric("zgate_accept_errors_total");
    let no_socket = gw.metric("zgate_upstream_connect_failures_total");
    assert!(
        (1..50).contains(&(errors + no_socket)),
        "limit {limit}: {errors} accept errors, {no_socket} flows without an upstream socket"
    );
}

/// Fault: the table file is replaced by a truncated or corrupt one, then reloaded.
/// Behaviour: the reload is refused and counted, the log says why, the old table is
/// still enforced (new flows allowed as before), and a good file is taken after.
#[test]
fn a_corrupt_or_truncated_table_on_reload_keeps_the_old_one() {
    let up = Upstream::echo();
    let gw = Gateway::start(&Setup::new(up.addr));
    let good = std::fs::read(&gw.table_path).unwrap();
    for (n, bad) in [good[..good.len() / 2].to_vec(), {
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        b
    }]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&gw.table_path, &bad).unwrap();
        gw.signal("HUP");
        let n = n as u64 + 1;
        assert_eq!(gw.wait_metric("zgate_table_reload_failures_total", n), n);
        let s = gw.connect();
        assert_eq!(round_trip(&s, b"old table"), b"old table");
    }
    assert!(gw.log().contains("truncated"), "{}", gw.log());
    assert!(gw.log().contains("checksum"), "{}", gw.log());
    assert_eq!(gw.metric_settled("zgate_table_version", 1), 1);
    std::fs::write(&gw.table_path, table_bytes(allow_all("echo"), 2)).unwrap();
    gw.signal("HUP");
    assert_eq!(gw.wait_metric("zgate_table_version", 2), 2);
}

/// Fault: the audit file's filesystem is full (`/dev/full`: every write fails with
/// ENOSPC).
/// Behaviour: flows are decided and forwarded as ever (the data path never waits for
/// the audit trail); the failed writes are counted.
#[test]
fn a_full_audit_filesystem_never_blocks_the_data_path() {
    let up = Upstream::echo();
    let mut setup = Setup::new(up.addr);
    setup.audit = Some("/dev/full".into());
    let gw = Gateway::start(&setup);
    for _ in 0..50 {
        let s = gw.connect();
        assert_eq!(round_trip(&s, b"audited?"), b"audited?");
    }
    assert!(gw.wait_metric("zgate_audit_write_errors_total", 1) >= 1);
    assert_eq!(gw.wait_metric("zgate_connections_accepted_total", 50), 50);
}

/// Fault: the process is killed (SIGKILL) in the middle of traffic, and started again
/// at once on the same ports.
/// Behaviour: the new process binds the same listener, admin and operator addresses
/// (a stale operator socket file is replaced) and serves; clients of the old one see
/// their connections end.
#[test]
fn killed_during_traffic_it_restarts_at_once_on_the_same_ports() {
    let up = Upstream::echo();
    let mut setup = Setup::new(up.addr);
    let socket = std::env::temp_dir().join(format!("zgate-faults-{}.sock", std::process::id()));
    setup.tables_extra = format!("[operator]\nsocket = {socket:?}\n");
    let mut gw = Gateway::start(&setup);
    let live: Vec<TcpStream> = (0..10).map(|_| gw.connect()).collect();
    for s in &live {
        assert_eq!(round_trip(s, b"before"), b"before");
    }
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    for mut s in live {
        s.set_read_timeout(Some(WAIT)).unwrap();
        assert!(ends_without_data(&mut s));
    }
    let again = Gateway::start(&setup);
    let s = again.connect();
    assert_eq!(round_trip(&s, b"after"), b"after");
    let st = operator_ask(&socket, "status");
    assert_eq!(st["ok"], true);
    assert!(http_get(again.admin, "/healthz").is_some());
}
