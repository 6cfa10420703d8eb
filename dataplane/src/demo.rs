//! `zgate demo`: the whole system on one machine, in one command, as in production:
//! two processes.
//!
//! It generates a throwaway PKI (a CA, the gateway's certificate, client SVIDs),
//! writes a policy directory, starts the real control process (`zgate-control serve`,
//! the binary beside this one) and the real gateway (`zgate run`, this binary) with
//! an mTLS listener subscribed to it, in front of an echo service. Then, with real
//! mTLS clients on loopback: an allowed identity, an identity no rule admits, a live
//! flow closed when its identity is revoked (`zgate-control revoke`, as an operator
//! would type it) while another identity's flow goes on, and a just-in-time grant
//! that lets an on-call engineer in and ends by itself. Everything it starts is
//! stopped by PID, and its files are removed, before it returns.
//!
//! It exists for newcomers; nothing in it weakens the gateway: both processes run with
//! their ordinary configuration and checks.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use zgate_devpki::client::{ClientSetup, TlsClient};
use zgate_devpki::{Ca, ClientSpec, Leaf};

const PRICER: &str = "spiffe://demo.example/ns/trading/sa/pricer";
const QUOTER: &str = "spiffe://demo.example/ns/trading/sa/quoter";
const VISITOR: &str = "spiffe://demo.example/ns/guest/sa/visitor";
const ONCALL: &str = "spiffe://demo.example/ns/ops/sa/oncall";

/// The demo policy, as `zgate-control serve` watches it.
const POLICY: &str = r#"
# The trading desk's workloads may use the echo service.
[[rule]]
id = "traders"
action = "allow"
services = ["echo"]
principals = ["spiffe://demo.example/ns/trading/*"]

# On-call engineers only with a just-in-time grant (zgate-control grant).
[[rule]]
id = "oncall-break-glass"
action = "allow"
services = ["echo"]
principals = ["spiffe://demo.example/ns/ops/*"]
requires_grant = true
"#;

/// How long any single step may take before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The on-call engineer's grant.
const GRANT: &str = "2s";

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
    /// The throwaway PKI could not be made (a bug in zgate).
    Pki(String),
    /// `zgate-control` is not beside this binary.
    NoControl(PathBuf),
    /// A process did not behave as the step expected.
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
            DemoError::Pki(e) => write!(f, "the demo PKI could not be made: {e}"),
            DemoError::NoControl(p) => write!(
                f,
                "the demo runs the control process beside the gateway, but `{}` is missing: build both (`cargo build -p zgate-dataplane -p zgate-control`)",
                p.display()
            ),
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

/// A child process, stopped by PID on drop if still running.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn signal(&self, signal: crate::Signal) -> Result<(), DemoError> {
        crate::send_signal(self.child.id(), signal).map_err(io_step("signal a process"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (bounded) for it to exit after a signal; its exit status.
    fn wait_exit(&mut self) -> Result<std::process::ExitStatus, DemoError> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(s) = self.child.try_wait().map_err(io_step("stop a process"))? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(unexpected(
                    "stop a process",
                    format!("{} still running 10 s after SIGTERM", self.name),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self, step: &'static str) -> Result<(), DemoError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(unexpected(
                step,
                format!("{} exited with {status}:\n{}", self.name, self.log()),
            ));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(name: &'static str, cmd: &mut Command, log: PathBuf) -> Result<Proc, DemoError> {
    let file = std::fs::File::create(&log).map_err(io_step("create a log file"))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(io_step("start a process"))?;
    Ok(Proc { name, child, log })
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, DemoError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_step("pick a port"))?;
    Ok(l.local_addr().map_err(io_step("pick a port"))?.port())
}

/// The upstream: echoes every byte back.
fn start_echo() -> Result<SocketAddr, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_step("start the echo service"))?;
    let addr = listener
        .local_addr()
        .map_err(io_step("start the echo service"))?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
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
    Ok(addr)
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

/// The sum of the samples of `name` (with `label` among their labels, if given).
fn metric(metrics: &str, name: &str, label: Option<&str>) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split([' ', '{']).next() == Some(name) && label.is_none_or(|lb| l.contains(lb))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Poll `cond` every 20 ms for at most [`STEP_TIMEOUT`].
fn wait_for(step: &'static str, mut cond: impl FnMut() -> bool) -> Result<(), DemoError> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while Instant::now() < deadline {
        if cond() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(unexpected(step, "timed out after 10 s"))
}

/// The demo's files: PKI, policy, both processes' state and sockets.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn pki(files: &Files) -> Result<(Ca, [Leaf; 4]), DemoError> {
    let now = crate::supervisor::unix_now();
    let e = |e: zgate_devpki::PkiError| DemoError::Pki(e.to_string());
    let ca = Ca::new("zgate demo CA", now).map_err(e)?;
    let server = ca
        .server(
            &["localhost"],
            &["127.0.0.1"
                .parse()
                .map_err(|_| DemoError::Pki("ip".into()))?],
            now,
        )
        .map_err(e)?;
    let write = |name: &str, text: &str| {
        std::fs::write(files.path(name), text).map_err(io_step("write the PKI"))
    };
    write("ca.pem", ca.cert_pem())?;
    write("server.pem", &server.chain_pem)?;
    write("server.key", &server.key_pem)?;
    let leaf = |id: &str| ca.client(&ClientSpec::spiffe(id), now).map_err(e);
    let leaves = [leaf(PRICER)?, leaf(QUOTER)?, leaf(VISITOR)?, leaf(ONCALL)?];
    Ok((ca, leaves))
}

/// Runs the demo, narrating on stdout.
pub fn run() -> Result<(), DemoError> {
    let exe = std::env::current_exe().map_err(io_step("find the zgate binary"))?;
    let control_bin = exe.with_file_name("zgate-control");
    if !control_bin.exists() {
        return Err(DemoError::NoControl(control_bin));
    }
    let dir = std::env::temp_dir().join(format!("zgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policy")).map_err(io_step("create the scratch directory"))?;
    let _scratch = Scratch(dir.clone());
    let files = Files { dir };
    let (ca, [pricer, quoter, visitor, oncall]) = pki(&files)?;
    std::fs::write(files.path("policy/demo.toml"), POLICY).map_err(io_step("write the policy"))?;

    // The control process.
    let socket = files.path("control.sock");
    let mut control = start(
        "zgate-control",
        Command::new(&control_bin)
            .arg("serve")
            .arg("--policy-dir")
            .arg(files.path("policy"))
            .arg("--state-dir")
            .arg(files.path("control-state"))
            .arg("--socket")
            .arg(&socket)
            .arg("--channel")
            .arg(files.path("channel.sock")),
        files.path("control.log"),
    )?;
    wait_for("start the control process", || {
        control.log().contains("policy compiled")
            || control.child.try_wait().ok().flatten().is_some()
    })?;
    control.exited("start the control process")?;

    // The gateway, subscribed to it.
    let upstream = start_echo()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = files.path("zgate.toml");
    std::fs::write(
        &config,
        format!(
            "admin = \"{admin}\"\ndrain_timeout = \"2s\"\naudit = \"audit.jsonl\"\n\n\
             [workers]\ncount = 1\n\n\
             [[listener]]\nname = \"echo\"\nlisten = \"{listen}\"\nupstream = \"{upstream}\"\n\n\
             [listener.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\ntrust_domain = \"demo.example\"\n\n\
             [control]\nsocket = \"channel.sock\"\nstate_dir = \"gateway-state\"\nname = \"demo-gateway\"\n"
        ),
    )
    .map_err(io_step("write the config"))?;
    let mut gateway = start(
        "zgate",
        Command::new(&exe).arg("run").arg("--config").arg(&config),
        files.path("gateway.log"),
    )?;
    wait_for("start the gateway", || {
        matches!(http_get(admin, "/readyz"), Some((200, _)))
            || gateway.child.try_wait().ok().flatten().is_some()
    })?;
    gateway.exited("start the gateway")?;

    println!("zgate demo: a zero-trust gateway in front of an echo service, all on loopback");
    println!(
        "  control:  `zgate-control serve` (pid {}) watches policy/demo.toml: rule `traders` admits\n            spiffe://demo.example/ns/trading/*; rule `oncall-break-glass` admits ns/ops/* with a grant",
        control.child.id()
    );
    println!(
        "  gateway:  `zgate run` (pid {}), mTLS listener `echo` {listen} -> upstream {upstream},\n            subscribed to the control process; admin http://{admin}\n",
        gateway.child.id()
    );

    let client = |leaf: &Leaf| -> Result<TlsClient, DemoError> {
        ClientSetup::new(&ca, Some(leaf))
            .map_err(|e| DemoError::Pki(e.to_string()))?
            .connect(listen, STEP_TIMEOUT)
            .map_err(io_step("connect a client"))
    };
    let ctl = |args: &[&str]| -> Result<String, DemoError> {
        let out = Command::new(&control_bin)
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .map_err(io_step("run zgate-control"))?;
        if !out.status.success() {
            return Err(unexpected(
                "run zgate-control",
                format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };

    // 1. Allowed identities.
    let step = "allowed identity";
    let mut p = client(&pricer)?;
    let started = Instant::now();
    if !p.echo(b"hello, upstream").map_err(io_step(step))? {
        return Err(unexpected(step, "the gateway refused an allowed identity"));
    }
    println!(
        "1. {PRICER} (mTLS): allowed by `traders`;\n   \"hello, upstream\" echoed back, handshake included, in {:.2} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut q = client(&quoter)?;
    if !q.echo(b"quote").map_err(io_step(step))? {
        return Err(unexpected(step, "the gateway refused an allowed identity"));
    }
    println!("   {QUOTER}: allowed too; both flows stay open");

    // 2. An identity no rule admits.
    let step = "denied identity";
    let mut v = client(&visitor)?;
    if v.echo(b"let me in").unwrap_or(false) {
        return Err(unexpected(step, "an identity no rule admits got through"));
    }
    println!(
        "2. {VISITOR}: a valid certificate, but no rule admits it (default deny);\n   the client is told: {}",
        v.peer_alert().unwrap_or_else(|| "connection closed".into())
    );

    // 3. Revocation by identity, while its flow is live.
    let step = "revocation";
    let issued = Instant::now();
    let said = ctl(&[
        "revoke",
        "--principal",
        PRICER,
        "--reason",
        "demo: key leaked",
    ])?;
    if !p.closed_by_server() {
        return Err(unexpected(
            step,
            "the revoked identity's live flow stayed open",
        ));
    }
    let took = issued.elapsed();
    println!(
        "3. $ zgate-control revoke --principal {PRICER} --reason \"demo: key leaked\"\n   {said}\n   the pricer's live flow was closed {:.1} ms after the command started (CLI process and fsync included)",
        took.as_secs_f64() * 1e3
    );
    if !q.echo(b"still here").map_err(io_step(step))? {
        return Err(unexpected(step, "another identity's flow was cut"));
    }
    println!("   the quoter's flow still echoes: only the revoked identity's flows were touched");
    let mut again = client(&pricer)?;
    if again.echo(b"again").unwrap_or(false) {
        return Err(unexpected(
            step,
            "a new flow of the revoked identity got through",
        ));
    }
    println!("   a new connection as the pricer is refused");

    // 4. Just-in-time access.
    let step = "just-in-time grant";
    let mut o = client(&oncall)?;
    if o.echo(b"break glass").unwrap_or(false) {
        return Err(unexpected(step, "on-call got in without a grant"));
    }
    let said = ctl(&[
        "grant",
        "--principal",
        ONCALL,
        "--service",
        "echo",
        "--for",
        GRANT,
        "--reason",
        "INC-1234",
    ])?;
    let mut o = client(&oncall)?;
    if !o.echo(b"break glass").map_err(io_step(step))? {
        return Err(unexpected(step, "on-call was refused despite the grant"));
    }
    let granted = Instant::now();
    if !o.closed_by_server() {
        return Err(unexpected(step, "the flow outlived its grant"));
    }
    println!(
        "4. {ONCALL}: refused without a grant;\n   $ zgate-control grant --principal ... --service echo --for {GRANT} --reason INC-1234\n   {said}\n   admitted; its flow was closed by the gateway when the grant ended ({:.1} s later)",
        granted.elapsed().as_secs_f64()
    );

    // 5. What both sides say.
    wait_for("read the metrics", || {
        http_get(admin, "/metrics")
            .is_some_and(|(_, m)| metric(&m, "zgate_flows_closed_by_policy_total", None) >= 2)
    })?;
    if let Some((200, m)) = http_get(admin, "/metrics") {
        println!(
            "5. gateway /metrics: closed by policy: {} revoked, {} grant-ended; denied {}; table version {}, facts version {}",
            metric(&m, "zgate_flows_closed_by_policy_total", Some("reason=\"revoked\"")),
            metric(&m, "zgate_flows_closed_by_policy_total", Some("reason=\"grant-ended\"")),
            metric(&m, "zgate_connections_denied_total", None),
            metric(&m, "zgate_table_version", None),
            metric(&m, "zgate_facts_version", None),
        );
    }
    println!("   $ zgate-control status");
    for line in ctl(&["status"])?.lines() {
        println!("   {line}");
    }

    // 6. Clean stop, and the audit trails.
    gateway.signal(crate::Signal::Terminate)?;
    let status = gateway.wait_exit()?;
    control.signal(crate::Signal::Terminate)?;
    let control_status = control.wait_exit()?;
    println!("6. SIGTERM: the gateway drained and exited with {status}; the control process exited with {control_status}");
    let audit = std::fs::read_to_string(files.path("audit.jsonl"))
        .map_err(io_step("read the audit trail"))?;
    println!("   the gateway's audit trail, one JSON line per decision:");
    for line in audit.lines() {
        println!("   {line}");
    }
    let control_audit = std::fs::read_to_string(files.path("control-state/audit.jsonl"))
        .map_err(io_step("read the control audit trail"))?;
    println!("   the control process's audit trail, one line per change (who, what, versions):");
    for line in control_audit.lines() {
        println!("   {line}");
    }
    if !status.success() || !control_status.success() {
        return Err(unexpected("stop", "a process did not exit cleanly"));
    }
    println!(
        "\nNext: docs/operations.md (running zgate and zgate-control), docs/policy.md (the policy language)."
    );
    Ok(())
}
