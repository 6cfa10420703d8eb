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

/// Clients that trickle one byte every 300 ms, reconnecting when the gateway closes
/// them, until `stop`: they never finish a request.
fn tricklers<S: Write + Send + 'static>(
    n: usize,
    stop: &Arc<AtomicBool>,
    connect: impl Fn() -> Option<S> + Send + Sync + 'static,
) -> Vec<std::thread::JoinHandle<u64>> {
    let connect = Arc::new(connect);
    (0..n)
        .map(|_| {
            let (stop, connect) = (Arc::clone(stop), Arc::clone(&connect));
            std::thread::spawn(move || {
                let mut connections = 0;
                while !stop.load(Ordering::SeqCst) {
                    let Some(mut s) = connect() else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    connections += 1;
                    while !stop.load(Ordering::SeqCst) && s.write_all(b"G").is_ok() {
                        std::thread::sleep(Duration::from_millis(300));
                    }
                }
                connections
            })
        })
        .collect()
}

/// Fault: slowloris on the admin endpoint and the operator socket: clients that open a
/// connection and trickle bytes, never finishing a request.
/// Behaviour: the supervisor keeps answering `/healthz`, `status`, `reload` and
/// `drain` while they hang on; each trickler is closed at its deadline (review 16.9:
/// one trickling client used to hold the supervisor, and with it drain, reload and
/// the audit drain, for as long as it trickled).
#[test]
fn slow_admin_and_operator_clients_do_not_hold_the_supervisor() {
    let up = Upstream::echo();
    let mut setup = Setup::new(up.addr);
    setup.tables_extra = "[operator]\nsocket = \"zgate.sock\"\n".into();
    let mut gw = Gateway::start(&setup);
    let socket = gw.dir.path().join("zgate.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let admin = gw.admin;
    let mut slow = tricklers(20, &stop, move || TcpStream::connect(admin).ok());
    let path = socket.clone();
    slow.extend(tricklers(10, &stop, move || {
        UnixStream::connect(&path).ok()
    }));
    // Let every trickler be connected and mid-request.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..10 {
        let (status, body) = http_get(gw.admin, "/healthz").expect("/healthz answered");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
    assert_eq!(operator_ask(&socket, "status")["ok"], true);
    assert_eq!(operator_ask(&socket, "reload")["ok"], true);
    let flow = gw.connect();
    assert_eq!(round_trip(&flow, b"still forwarding"), b"still forwarding");
    assert_eq!(operator_ask(&socket, "drain")["ok"], true);
    drop(flow);
    assert!(gw.wait_exit().success(), "{}", gw.log());
    stop.store(true, Ordering::SeqCst);
    let connections: u64 = slow.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(connections >= 30, "every trickler connected at least once");
}
