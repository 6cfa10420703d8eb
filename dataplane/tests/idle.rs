//! 5,000 concurrent idle connections through one zgate worker: all established, all
//! still forwarding afterwards, and the gateway's memory per idle connection printed
//! (the number itself is recorded in docs/benchmarks.md, "dataplane memory").
//!
//! File descriptors: this box caps open files at 20,000 per process. The gateway needs
//! two per connection (10,000), and this test process two more (the client socket and
//! the echo upstream's accepted socket: 10,000), so 5,000 is what fits.
#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines and short sleeps are the point"
)]

#[cfg(test)]
mod common;
#[cfg(test)]
#[path = "common/idle.rs"]
mod idle;

use common::*;
use idle::*;

const N: usize = 5_000;

#[test]
fn five_thousand_idle_connections_are_held_and_still_forward() {
    let (_, soft) = zgate_dataplane::raise_nofile_limit().unwrap();
    let need = N as u64 * FDS_PER_FLOW + 256;
    assert!(
        soft >= need,
        "this test needs {need} open files in the test process (soft limit {soft}); \
         raise the hard RLIMIT_NOFILE"
    );
    let up = EchoUpstream::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut setup = Setup::new(up.addr);
    setup.listener_extra = "max_connections = 20000\nidle_timeout = \"1h\"".into();
    let gw = Gateway::start(&setup);
    let pid = gw.child.id();

    // Warm up: a few flows that move data, so the baseline includes the worker's first
    // buffers and slab growth that any flow causes.
    for i in 0..8u8 {
        let mut s = gw.connect();
        assert!(idle::echoes(&mut s, i));
    }
    assert_eq!(gw.wait_metric_at_most("zgate_connections_active", 0), 0);

    let (mut conns, report) = open_idle(gw.listen, &up, pid, N, WAIT);
    assert_eq!(
        report.established, N,
        "upstream saw {} flows",
        report.established
    );
    assert_eq!((conns.len(), report.wanted), (N, N));
    assert_eq!(
        gw.wait_metric("zgate_connections_active", N as u64),
        N as u64
    );
    let per_conn = report.bytes_per_conn();
    println!(
        "zgate idle memory: {N} connections, RSS {} KiB -> {} KiB: {per_conn} bytes per connection",
        report.rss_before_kib, report.rss_after_kib
    );
    // Loose on purpose (RSS is noisy): catches a flow holding a data buffer while idle
    // (16 KiB or more each), not small drifts. The measured number is in the docs.
    assert!(
        per_conn < 8 * 1024,
        "{per_conn} bytes per idle connection: idle flows should hold no buffers"
    );
    assert_eq!(gw.metric("zgate_buffers_in_use"), 0);

    // Every one of them still forwards, both ways.
    let mut failed = 0;
    for (i, s) in conns.iter_mut().enumerate() {
        if !idle::echoes(s, (i % 251) as u8) {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "{failed} of {N} idle flows no longer forward");
    assert_eq!(
        gw.metric_settled("zgate_connections_active", N as u64),
        N as u64
    );
    drop(conns);
    assert!(
        wait_until(WAIT, || gw.metric("zgate_connections_active") == 0),
        "flows did not close"
    );
}
