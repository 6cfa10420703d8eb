//! Many idle connections through a proxy, and the proxy's memory per connection.
//!
//! Shared by the `idle` test (which runs zgate) and the `idle_memory` example (which runs
//! zgate or HAProxy the same way, for `docs/benchmarks.md`). Proxy-agnostic: a flow
//! counts as established once the echo upstream here has accepted its connection.
//! Every wait is bounded; nothing asserts timing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Open files per flow: the proxy needs two (client side, upstream side); this process
/// needs two more (the client socket and the upstream's accepted socket).
pub const FDS_PER_FLOW: u64 = 2;

/// An echo upstream, one small-stack thread per connection, counting accepts.
pub struct EchoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl EchoUpstream {
    /// Listen on `addr` (port 0: any).
    pub fn start(addr: SocketAddr) -> std::io::Result<EchoUpstream> {
        let l = TcpListener::bind(addr)?;
        let addr = l.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                // Idle flows are the point: thousands of threads parked in read(2),
                // each with a small stack and a small buffer.
                let spawned = std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let mut buf = [0u8; 512];
                        while let Ok(n @ 1..) = s.read(&mut buf) {
                            if s.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                                return;
                            }
                        }
                    });
                if spawned.is_err() {
                    return;
                }
            }
        });
        Ok(EchoUpstream { addr, accepted })
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Wait (bounded by `limit`) until `cond` holds; returns whether it did.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One byte out and back on `s`.
pub fn echoes(s: &mut TcpStream, byte: u8) -> bool {
    let mut b = [0u8; 1];
    s.write_all(&[byte]).is_ok() && s.read_exact(&mut b).is_ok() && b == [byte]
}

/// What [`open_idle`] found.
pub struct IdleReport {
    /// Connections asked for.
    pub wanted: usize,
    /// Connections the upstream saw (end-to-end through the proxy).
    pub established: usize,
    /// Proxy RSS before any of them, KiB.
    pub rss_before_kib: u64,
    /// Proxy RSS with all of them open and idle, KiB.
    pub rss_after_kib: u64,
}

impl IdleReport {
    /// Proxy memory per idle connection, bytes.
    pub fn bytes_per_conn(&self) -> u64 {
        let grown = self.rss_after_kib.saturating_sub(self.rss_before_kib) * 1024;
        grown / u64::try_from(self.established.max(1)).unwrap_or(1)
    }
}

/// Open `n` connections to `proxy` (which forwards to `up`), in batches, waiting after
/// each batch until the upstream has accepted them all (bounded by `limit` per batch),
/// so no SYN backlog overflows on a slow box. Measures `pid`'s RSS before and after.
/// The connections are returned open and idle.
pub fn open_idle(
    proxy: SocketAddr,
    up: &EchoUpstream,
    pid: u32,
    n: usize,
    limit: Duration,
) -> (Vec<TcpStream>, IdleReport) {
    let base = up.accepted.load(Ordering::SeqCst);
    let rss_before_kib = rss_kib(pid).unwrap_or(0);
    let mut conns = Vec::with_capacity(n);
    let batch = 250;
    while conns.len() < n {
        let upto = (conns.len() + batch).min(n);
        while conns.len() < upto {
            match TcpStream::connect(proxy) {
                Ok(s) => {
                    let _ = s.set_read_timeout(Some(limit));
                    let _ = s.set_write_timeout(Some(limit));
                    conns.push(s);
                }
                Err(_) => break,
            }
        }
        let want = conns.len();
        let ok = wait_until(limit, || up.accepted.load(Ordering::SeqCst) - base >= want);
        if !ok || conns.len() < upto {
            break;
        }
    }
    // Let the proxy finish whatever it does after the connect (arming receives).
    std::thread::sleep(Duration::from_millis(500));
    let report = IdleReport {
        wanted: n,
        established: up.accepted.load(Ordering::SeqCst) - base,
        rss_before_kib,
        rss_after_kib: rss_kib(pid).unwrap_or(0),
    };
    (conns, report)
}
