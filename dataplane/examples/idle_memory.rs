//! Memory per idle connection of a TCP proxy, measured the same way for zgate and
//! HAProxy (`docs/benchmarks.md`, "dataplane memory"). Not a test: it prints numbers.
//!
//! ```text
//! cargo run --release -p zgate-dataplane --example idle_memory -- zgate target/release/zgate 5000
//! cargo run --release -p zgate-dataplane --example idle_memory -- haproxy haproxy 5000
//! ```
//!
//! It starts an echo upstream, starts the proxy in front of it (one worker/thread), warms
//! it up with a few flows, reads the proxy's VmRSS, opens N connections end to end
//! (each counted once the upstream accepted it), reads VmRSS again, checks that every
//! connection still echoes a byte, and prints (RSS after - RSS before) / N.
//!
//! Open files: the box caps them at 20,000 per process; the proxy needs two per
//! connection and this program two more, so N = 5,000 fits.
#![expect(
    clippy::disallowed_methods,
    reason = "a measurement driver on its own process: sleeps and deadlines are fine here"
)]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark driver: failing loudly is the right answer"
)]

#[path = "../tests/common/idle.rs"]
mod idle;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use idle::*;
use zgate_policy::model::{Action, Policy, Rule, ServiceSelector};
use zgate_table::DecisionTable;

const LIMIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn start_zgate(bin: &str, dir: &std::path::Path, listen: SocketAddr, up: SocketAddr) -> Child {
    let policy = Policy {
        groups: vec![],
        services: vec![],
        rules: vec![Rule::new(
            "allow-all",
            Action::Allow,
            ServiceSelector::Named(vec!["idle".to_string()]),
        )],
        source_hash: [0; 32],
    };
    let table = dir.join("policy.zgt");
    std::fs::write(&table, DecisionTable::compile(&policy, 1).unwrap().encode()).unwrap();
    let cfg = dir.join("zgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "table = {:?}\n[workers]\ncount = 1\n\n[[listener]]\nname = \"idle\"\n\
             listen = \"{listen}\"\nupstream = \"{up}\"\nidle_timeout = \"1h\"\n\
             max_connections = 20000\n",
            table.to_str().unwrap()
        ),
    )
    .unwrap();
    Command::new(bin)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start zgate")
}

fn start_haproxy(bin: &str, dir: &std::path::Path, listen: SocketAddr, up: SocketAddr) -> Child {
    let cfg = dir.join("haproxy.cfg");
    // One thread, plain TCP forwarding. maxconn 9000 keeps HAProxy's own fd need
    // (about 2 * maxconn) under this box's 20,000 limit.
    std::fs::write(
        &cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 9000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n\
             timeout client 1h\n  timeout server 1h\n\nfrontend f\n  bind {listen}\n  maxconn 9000\n\
             default_backend b\n\nbackend b\n  server s1 {up}\n"
        ),
    )
    .unwrap();
    Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start haproxy")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (kind, bin, n) = match args.as_slice() {
        [_, kind, bin, n] => (kind.as_str(), bin.as_str(), n.parse::<usize>().unwrap()),
        [_, kind, bin] => (kind.as_str(), bin.as_str(), 5_000),
        _ => panic!("usage: idle_memory <zgate|haproxy> <binary> [N]"),
    };
    let (_, soft) = zgate_dataplane::raise_nofile_limit().unwrap();
    assert!(
        soft >= n as u64 * FDS_PER_FLOW + 256,
        "open-file limit {soft} too low for {n}"
    );
    let up = EchoUpstream::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = match kind {
        "zgate" => start_zgate(bin, dir.path(), listen, up.addr),
        "haproxy" => start_haproxy(bin, dir.path(), listen, up.addr),
        other => panic!("unknown proxy kind {other}"),
    };
    let pid = child.id();
    // Ready once a flow echoes; then a few more as warm-up.
    assert!(
        wait_until(LIMIT, || TcpStream::connect(listen).ok().is_some_and(
            |mut s| {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                echoes(&mut s, 0)
            }
        )),
        "{kind} not forwarding"
    );
    for i in 0..8u8 {
        let mut s = TcpStream::connect(listen).unwrap();
        assert!(echoes(&mut s, i));
    }
    std::thread::sleep(Duration::from_millis(500));

    let (mut conns, report) = open_idle(listen, &up, pid, n, LIMIT);
    let mut failed = 0;
    for (i, s) in conns.iter_mut().enumerate() {
        if !echoes(s, (i % 251) as u8) {
            failed += 1;
        }
    }
    println!(
        "{kind}: {} of {} connections established, {failed} failed to echo; \
         RSS {} KiB -> {} KiB idle: {} bytes per idle connection",
        report.established,
        report.wanted,
        report.rss_before_kib,
        report.rss_after_kib,
        report.bytes_per_conn()
    );
    drop(conns);
    let _ = child.kill();
    let _ = child.wait();
}
