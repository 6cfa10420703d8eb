//! Shared helpers for the `zgate` binary tests: a real gateway process, loopback
//! upstreams on std threads, a tiny HTTP client for the admin endpoint, and policies
//! compiled in-test. Every wait is bounded in count and time; nothing asserts timing.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

pub mod control;
pub mod etcd;
pub mod partition;
pub mod pki;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zgate_policy::model::{Action, Cidr, Policy, Rule, ServiceSelector};
use zgate_table::DecisionTable;

/// Generous: the box running tests is small and shared.
pub const WAIT: Duration = Duration::from_secs(30);

/// A port that was free a moment ago (bind :0, read, release).
pub fn free_port() -> u16 {
    // The kernel may hand the same ephemeral port to two binds in a row once the first
    // listener is gone: never give a port out twice in this process (one config asking
    // for two ports got the same one for its listener and its admin endpoint).
    static GIVEN: [AtomicU64; 1024] = [const { AtomicU64::new(0) }; 1024];
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (word, bit) = (usize::from(port / 64), 1u64 << (port % 64));
        if GIVEN[word].fetch_or(bit, Ordering::SeqCst) & bit == 0 {
            return port;
        }
    }
}

/// An upstream on a std thread. Each connection is handed to `serve` on its own thread.
pub struct Upstream {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let serve = Arc::clone(&serve);
                std::thread::spawn(move || serve(s));
            }
        });
        Upstream { addr, accepted }
    }

    /// Echo until EOF, then half-close.
    pub fn echo() -> Upstream {
        Upstream::start(|mut s| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }
}

/// A policy of `rules`, compiled and encoded.
pub fn table_bytes(rules: Vec<Rule>, version: u64) -> Vec<u8> {
    let policy = Policy {
        groups: vec![],
        services: vec![],
        rules,
        source_hash: [0; 32],
    };
    DecisionTable::compile(&policy, version).unwrap().encode()
}

/// Allow anyone to the service `svc`.
pub fn allow_all(svc: &str) -> Vec<Rule> {
    vec![Rule::new(
        "allow-all",
        Action::Allow,
        ServiceSelector::Named(vec![svc.to_string()]),
    )]
}

/// Allow only 10.0.0.0/8 to `svc` (so loopback clients are denied).
pub fn allow_ten_only(svc: &str) -> Vec<Rule> {
    let mut r = Rule::new(
        "allow-ten",
        Action::Allow,
        ServiceSelector::Named(vec![svc.to_string()]),
    );
    r.sources = Some(vec![Cidr {
        addr: "10.0.0.0".parse().unwrap(),
        prefix_len: 8,
    }]);
    vec![r]
}

/// A config for one listener named `echo`.
pub struct Setup {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: SocketAddr,
    pub table: Option<Vec<u8>>,
    pub workers: usize,
    pub poll: &'static str,
    pub listener_extra: String,
    pub workers_extra: String,
    /// Appended after the listener: more top-level tables (`[operator]`).
    pub tables_extra: String,
    pub drain_timeout: &'static str,
    /// A command the gateway is started under (e.g. `prlimit --nofile=64:64`).
    pub prefix: Vec<String>,
    /// The listener's `connect_timeout`.
    pub connect_timeout: &'static str,
    /// `audit = ...` (default: stderr, which `Gateway::audit` reads).
    pub audit: Option<String>,
    /// What `Gateway::start` waits for: `/readyz` (default), or `/healthz` for a
    /// gateway that is meant not to be ready (fail closed).
    pub ready_path: &'static str,
}

impl Setup {
    pub fn new(upstream: SocketAddr) -> Setup {
        Setup {
            listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            upstream,
            table: Some(table_bytes(allow_all("echo"), 1)),
            workers: 1,
            poll: "interrupt",
            listener_extra: String::new(),
            workers_extra: String::new(),
            tables_extra: String::new(),
            drain_timeout: "30s",
            prefix: Vec::new(),
            connect_timeout: "5s",
            audit: None,
            ready_path: "/readyz",
        }
    }

    pub fn config_text(&self, table_path: Option<&Path>) -> String {
        let mut table = table_path
            .map(|p| format!("table = {:?}\n", p.to_str().unwrap()))
            .unwrap_or_default();
        if let Some(a) = &self.audit {
            table.push_str(&format!("audit = {a:?}\n"));
        }
        format!(
            "{table}admin = \"{}\"\ndrain_timeout = \"{}\"\n\n[workers]\ncount = {}\npoll = \"{}\"\n{}\n\n\
             [[listener]]\nname = \"echo\"\nlisten = \"{}\"\nupstream = \"{}\"\nconnect_timeout = \"{}\"\n{}\n{}\n",
            self.admin, self.drain_timeout, self.workers, self.poll, self.workers_extra, self.listen, self.upstream, self.connect_timeout, self.listener_extra, self.tables_extra
        )
    }
}

/// A running `zgate run` process. Killed on drop.
pub struct Gateway {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub table_path: PathBuf,
}

impl Gateway {
    pub fn start(setup: &Setup) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let table_path = dir.path().join("policy.zgt");
        let table_arg = setup.table.as_ref().map(|bytes| {
            std::fs::write(&table_path, bytes).unwrap();
            table_path.as_path()
        });
        let cfg = dir.path().join("zgate.toml");
        std::fs::write(&cfg, setup.config_text(table_arg)).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut cmd = match setup.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(env!("CARGO_BIN_EXE_zgate"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_zgate")),
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut gw = Gateway {
            child,
            dir,
            listen: setup.listen,
            admin: setup.admin,
            table_path,
        };
        gw.wait_ready(setup.ready_path);
        gw
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, path: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("zgate exited early ({status}):\n{}", self.log());
            }
            if let Some((200, _)) = http_get(self.admin, path) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("zgate not ready after {WAIT:?}:\n{}", self.log());
    }

    /// The audit events written so far (`audit = "stderr"`, the default: the JSON lines
    /// among the log lines), each checked against the audit schema: every test that
    /// reads the trail (and, on drop, every test) checks the events it caused.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                let v =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l}: {e}"));
                if let Err(e) = zgate_telemetry::schema::validate(&v) {
                    panic!("audit line breaks the schema ({e}): {l}");
                }
                v
            })
            .collect()
    }

    /// Wait (bounded) for an audit event `matches` accepts, and return it. The
    /// supervisor writes queued events every 100 ms at most.
    pub fn wait_audit(&self, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.audit().into_iter().find(|e| matches(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no such audit event in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.listen).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        s
    }

    /// A metric's value: `name`, optionally with labels (`name{reason="x"}`), summed
    /// over every sample that carries those labels (so over listeners and workers
    /// unless the labels pick one). Panics if no sample matches.
    pub fn metric(&self, name: &str) -> u64 {
        let (status, body) = http_get(self.admin, "/metrics").expect("metrics reachable");
        assert_eq!(status, 200);
        metric_in(&body, name).unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
    }

    /// A `_seconds` (or other fractional) metric: the sum of the samples `name` picks.
    pub fn metric_value(&self, name: &str) -> f64 {
        let (status, body) = http_get(self.admin, "/metrics").expect("metrics reachable");
        assert_eq!(status, 200);
        metric_value_in(&body, name).unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
    }

    /// `metric` once it has settled on `want` (or whatever it reads at the deadline).
    /// Workers publish their counters at most once a millisecond and when they go
    /// idle, so a count read the instant a client saw the effect may still be the one
    /// before it.
    pub fn metric_settled(&self, name: &str, want: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(name);
            if v == want || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait (bounded) until `metric` reaches at least `at_least`.
    pub fn wait_metric(&self, name: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(name);
            if v >= at_least || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) until `metric` drops to at most `at_most`.
    pub fn wait_metric_at_most(&self, name: &str, at_most: u64) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(name);
            if v <= at_most || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("zgate did not exit within {WAIT:?}:\n{}", self.log());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever the test was about, the audit lines it caused follow the schema.
        if !std::thread::panicking() {
            let _ = self.audit();
        }
    }
}

/// GET `path` from the admin endpoint: (status, body), or `None` if unreachable.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: zgate\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Read until EOF or reset; `true` if the connection ended (either way) within the
/// stream's read timeout, `false` if data arrived or the read timed out.
pub fn ends_without_data(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: cheap, deterministic, not periodic over a few MiB.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Write `data` on one thread while reading the same amount back on this one.
pub fn round_trip(s: &TcpStream, data: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let out = data.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&out).unwrap());
    let mut got = vec![0u8; data.len()];
    (&*s).read_exact(&mut got).unwrap();
    writer.join().unwrap();
    got
}

/// Ping-pong 4 bytes every 10 ms (so the flow is never idle) until the gateway closes
/// the connection; false if it is still open after 3,000 rounds (about 30 s).
pub fn ping_until_closed(s: &mut TcpStream) -> bool {
    for _ in 0..3000 {
        if s.write_all(b"ping").is_err() {
            return true;
        }
        let mut b = [0u8; 4];
        match s.read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    false
}

/// Threads of process `pid` that are io_uring async workers (`iou-wrk-*`).
pub fn async_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("iou-wrk"))
        .count()
}

/// Resident set size of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Send one command line, read the one JSON line back. A refused client may find
/// the socket closed before it writes, and its command unread: the answer is still
/// there to read, possibly followed by a reset instead of the end of the stream.
pub fn operator_ask(socket: &Path, command: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(format!("{command}\n").as_bytes());
    let mut bytes = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !bytes.is_empty() => break,
            Err(e) => panic!("reading the answer to {command:?}: {e}"),
        }
    }
    let out = String::from_utf8(bytes).unwrap();
    assert!(out.ends_with('\n') && out.lines().count() == 1, "{out:?}");
    serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{out:?}: {e}"))
}

/// `name{labels}` (labels optional) into its name and label pairs.
fn series(text: &str) -> (&str, Vec<(&str, &str)>) {
    match text.split_once('{') {
        None => (text, Vec::new()),
        Some((name, rest)) => {
            let labels = rest
                .trim_end_matches('}')
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            (name, labels)
        }
    }
}

/// The sum of the samples in exposition text `body` that `wanted` (a name, optionally
/// with labels) picks; `None` when none does. For counts: a fractional sum is a
/// mistake (a `_seconds` family wants [`metric_value_in`]).
pub fn metric_in(body: &str, wanted: &str) -> Option<u64> {
    let v = metric_value_in(body, wanted)?;
    assert!(v.fract() == 0.0 && v >= 0.0, "{wanted} is not a count: {v}");
    format!("{v:.0}").parse().ok()
}

/// The sum, as a number, of the samples in `body` that `wanted` picks.
pub fn metric_value_in(body: &str, wanted: &str) -> Option<f64> {
    let (name, labels) = series(wanted);
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((s, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, have) = series(s);
        if n == name && labels.iter().all(|l| have.contains(l)) {
            let v: f64 = value.trim().parse().unwrap();
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}
