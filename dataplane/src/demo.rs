//! `zgate demo`: the whole system on one machine, in one command.
//!
//! It writes a throwaway policy, compiles it with the same compiler `zgate-control`
//! uses, starts an echo service as the upstream, runs the real gateway (`zgate run`,
//! this same binary, as a child process) in front of it, and then shows, with real
//! sockets on loopback: an allowed client, a denied client, and a live flow closed
//! within milliseconds of a policy change that revokes it. Everything it starts is
//! stopped by PID, and its files are removed, before it returns.
//!
//! It exists for newcomers; nothing in it weakens the gateway: the gateway runs with
//! its ordinary configuration, table and checks.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use zgate_policy::{parse_policy, SourceFile};
use zgate_table::DecisionTable;

/// The demo policy: loopback clients at 127.0.0.1 may use the echo service.
const POLICY_V1: &str = r#"
[[rule]]
id = "demo-clients"
action = "allow"
services = ["echo"]
sources = ["127.0.0.1/32"]
"#;

/// The incident response: 127.0.0.1 is quarantined. A deny beats any allow.
const POLICY_V2_EXTRA: &str = r#"
[[rule]]
id = "incident-quarantine"
action = "deny"
services = ["*"]
sources = ["127.0.0.1/32"]
"#;

/// How long any single step may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the demo could not complete.
#[derive(Debug)]
pub enum DemoError {
    /// An OS call failed.
    Io {
        /// What the demo was doing.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The embedded policy did not compile (a bug in zgate).
    Policy(String),
    /// The gateway did not behave as the step expected.
    Unexpected {
        /// The step.
        step: &'static str,
        /// What happened instead.
        detail: String,
    },
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Io { step, source } => write!(f, "demo step `{step}` failed: {source}"),
            DemoError::Policy(e) => write!(f, "the embedded demo policy is invalid: {e}"),
            DemoError::Unexpected { step, detail } => {
                write!(f, "demo step `{step}` went wrong: {detail}")
            }
        }
    }
}

impl std::error::Error for DemoError {}

fn io_step(step: &'static str) -> impl FnOnce(io::Error) -> DemoError {
    move |source| DemoError::Io { step, source }
}

fn unexpected(step: &'static str, detail: impl Into<String>) -> DemoError {
    DemoError::Unexpected {
        step,
        detail: detail.into(),
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The gateway child process, stopped by PID on drop if still running.
struct Gateway {
    child: Child,
}

impl Gateway {
    fn signal(&self, signal: crate::Signal) -> Result<(), DemoError> {
        crate::send_signal(self.child.id(), signal).map_err(io_step("signal the gateway"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn compile(files: &[(&str, &str)], version: u64, out: &Path) -> Result<(), DemoError> {
    let sources: Vec<SourceFile> = files
        .iter()
        .map(|(name, text)| SourceFile {
            name: (*name).to_string(),
            text: (*text).to_string(),
        })
        .collect();
    let checked = parse_policy(&sources).map_err(|e| DemoError::Policy(e.to_string()))?;
    let table = DecisionTable::compile(&checked.policy, version)
        .map_err(|e| DemoError::Policy(e.to_string()))?;
    // Write then rename, as `zgate-control compile` does: a reload never sees half a file.
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, table.encode()).map_err(io_step("write the table"))?;
    std::fs::rename(&tmp, out).map_err(io_step("write the table"))
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, DemoError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_step("pick a port"))?;
    Ok(l.local_addr().map_err(io_step("pick a port"))?.port())
}

/// The upstream: echoes every byte back; counts connections it saw.
fn start_echo() -> Result<(SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>), DemoError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_step("start the echo service"))?;
    let addr = listener
        .local_addr()
        .map_err(io_step("start the echo service"))?;
    let seen = std::sync::Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::Relaxed);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let Some(chunk) = buf.get(..n) else { break };
                            if stream.write_all(chunk).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok((addr, seen))
}

fn http_get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: zgate\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn wait_ready(admin: SocketAddr, gateway: &mut Gateway) -> Result<(), DemoError> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = gateway.child.try_wait() {
            return Err(unexpected(
                "start the gateway",
                format!("it exited with {status}"),
            ));
        }
        if matches!(http_get(admin, "/readyz"), Some((200, _))) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(unexpected("start the gateway", "not ready within 10 s"))
}

/// Connects from `source_ip` (any 127/8 address works on Linux loopback).
fn connect_from(source_ip: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    // std has no bind-before-connect; a socket bound by a throwaway listener cannot
    // connect, so ask the kernel through the dataplane's one unsafe module.
    let stream = crate::connect_from(SocketAddr::V4(SocketAddrV4::new(source_ip, 0)), to)?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    Ok(stream)
}

/// Sends `msg` and reads it back; `Ok(None)` when the gateway closed the flow instead.
fn echo(stream: &mut TcpStream, msg: &[u8]) -> io::Result<Option<Duration>> {
    let start = Instant::now();
    if stream.write_all(msg).is_err() {
        return Ok(None);
    }
    let mut back = vec![0u8; msg.len()];
    let mut got = 0;
    while got < back.len() {
        let Some(rest) = back.get_mut(got..) else {
            break;
        };
        match stream.read(rest) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok((back == msg).then(|| start.elapsed()))
}

fn metric(metrics: &str, name: &str) -> String {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("?")
        .to_string()
}

/// Runs the demo, narrating on stdout.
pub fn run() -> Result<(), DemoError> {
    let dir = std::env::temp_dir().join(format!("zgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io_step("create the scratch directory"))?;
    let scratch = Scratch(dir);
    let table = scratch.0.join("policy.zgt");
    compile(&[("demo.toml", POLICY_V1)], 1, &table)?;

    let (upstream, upstream_seen) = start_echo()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = scratch.0.join("zgate.toml");
    std::fs::write(
        &config,
        format!(
            "table = \"policy.zgt\"\nadmin = \"{admin}\"\ndrain_timeout = \"2s\"\naudit = \"audit.jsonl\"\n\n\
             [workers]\ncount = 1\n\n\
             [[listener]]\nname = \"echo\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n"
        ),
    )
    .map_err(io_step("write the config"))?;

    println!("zgate demo: a zero-trust gateway in front of an echo service, all on loopback");
    println!(
        "  policy v1: rule `demo-clients` allows service `echo` from 127.0.0.1 only; default deny"
    );
    let exe = std::env::current_exe().map_err(io_step("find the zgate binary"))?;
    let child = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(io_step("start the gateway"))?;
    let mut gateway = Gateway { child };
    wait_ready(admin, &mut gateway)?;
    println!(
        "  gateway:   `zgate run` (pid {}), listener `echo` {listen} -> upstream {upstream}, admin http://{admin}\n",
        gateway.child.id()
    );

    // 1. Allowed.
    let step = "allowed client";
    let mut allowed = connect_from(Ipv4Addr::new(127, 0, 0, 1), listen).map_err(io_step(step))?;
    match echo(&mut allowed, b"hello, upstream").map_err(io_step(step))? {
        Some(rtt) => println!(
            "1. client 127.0.0.1: allowed by `demo-clients`; \"hello, upstream\" echoed back in {:.2} ms",
            rtt.as_secs_f64() * 1e3
        ),
        None => return Err(unexpected(step, "the gateway closed an allowed flow")),
    }

    // 2. Denied.
    let step = "denied client";
    let before = upstream_seen.load(std::sync::atomic::Ordering::Relaxed);
    let mut denied = connect_from(Ipv4Addr::new(127, 0, 0, 2), listen).map_err(io_step(step))?;
    match echo(&mut denied, b"let me in").map_err(io_step(step))? {
        None => {
            let after = upstream_seen.load(std::sync::atomic::Ordering::Relaxed);
            println!(
                "2. client 127.0.0.2: denied (default deny); closed by the gateway, {} new connection(s) reached the upstream",
                after - before
            );
        }
        Some(_) => return Err(unexpected(step, "a denied client got through")),
    }

    // 3. Live revocation: the allowed flow is still open; quarantine its source.
    let step = "live revocation";
    compile(
        &[("demo.toml", POLICY_V1), ("incident.toml", POLICY_V2_EXTRA)],
        2,
        &table,
    )?;
    allowed
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(io_step(step))?;
    let swapped = Instant::now();
    gateway.signal(crate::Signal::Hangup)?;
    let mut byte = [0u8; 1];
    let closed = match allowed.read(&mut byte) {
        Ok(0) => true,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    if !closed {
        return Err(unexpected(
            step,
            "the live flow was not closed after the policy change",
        ));
    }
    println!(
        "3. policy v2 adds deny rule `incident-quarantine` for 127.0.0.1; table swapped with SIGHUP;\n   the live flow from 127.0.0.1 was closed {:.1} ms later",
        swapped.elapsed().as_secs_f64() * 1e3
    );
    let mut again = connect_from(Ipv4Addr::new(127, 0, 0, 1), listen).map_err(io_step(step))?;
    if echo(&mut again, b"hello again")
        .map_err(io_step(step))?
        .is_some()
    {
        return Err(unexpected(
            step,
            "a new flow from the quarantined source got through",
        ));
    }
    println!("   a new flow from 127.0.0.1 is refused too");

    // 4. What the gateway counted. Workers publish their counters on their next loop
    // tick, so wait (bounded) until the refused second flow shows up.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut scraped = http_get(admin, "/metrics");
    while Instant::now() < deadline {
        if let Some((200, m)) = &scraped {
            if metric(m, "zgate_connections_denied_total") == "2" {
                break;
            }
        }
        thread::sleep(Duration::from_millis(50));
        scraped = http_get(admin, "/metrics");
    }
    if let Some((200, metrics)) = scraped {
        println!(
            "4. /metrics: accepted {}, denied {}, closed by policy {}, table version {}",
            metric(&metrics, "zgate_connections_accepted_total"),
            metric(&metrics, "zgate_connections_denied_total"),
            metric(&metrics, "zgate_flows_closed_by_policy_total"),
            metric(&metrics, "zgate_table_version"),
        );
    }

    // 5. Clean stop.
    let _ = denied.shutdown(Shutdown::Both);
    gateway.signal(crate::Signal::Terminate)?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(status) = gateway
            .child
            .try_wait()
            .map_err(io_step("stop the gateway"))?
        {
            println!("5. SIGTERM: the gateway drained and exited with {status}");
            let audit = std::fs::read_to_string(scratch.0.join("audit.jsonl"))
                .map_err(io_step("read the audit trail"))?;
            println!("6. the audit trail (`audit = \"audit.jsonl\"`), one JSON line per decision:");
            for line in audit.lines() {
                println!("   {line}");
            }
            if audit.lines().count() < 4 {
                return Err(unexpected(
                    "read the audit trail",
                    format!("expected 4 records (3 decisions, 1 closed by policy), got:\n{audit}"),
                ));
            }
            if !status.success() {
                return Err(unexpected(
                    "stop the gateway",
                    format!("exit status {status}"),
                ));
            }
            break;
        }
        if Instant::now() > deadline {
            return Err(unexpected(
                "stop the gateway",
                "still running 10 s after SIGTERM",
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    println!(
        "\nNext: docs/policy.md for the policy language, docs/operations.md to run zgate for real."
    );
    Ok(())
}
