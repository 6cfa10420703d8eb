//! A real `zgate-control serve` process for the tests, and its CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;

/// The `zgate-control` binary, built beside `zgate` (`cargo build --workspace`, or
/// `cargo nextest run --workspace`, builds both).
pub fn control_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_zgate")).with_file_name("zgate-control");
    assert!(
        p.exists(),
        "`{}` is missing: build it with `cargo build -p zgate-control` (the workspace test run does)",
        p.display()
    );
    p
}

/// A running control process with its policy, state and sockets in one temp dir.
/// Killed on drop.
pub struct Control {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub extra_args: Vec<String>,
}

impl Control {
    /// Start one with the policy files `policy` (name, TOML text).
    pub fn start(policy: &[(&str, &str)]) -> Control {
        Control::start_with(policy, &[])
    }

    /// Start one with extra `serve` flags.
    pub fn start_with(policy: &[(&str, &str)], extra: &[String]) -> Control {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policy")).unwrap();
        for (name, text) in policy {
            std::fs::write(dir.path().join("policy").join(name), text).unwrap();
        }
        let mut c = Control {
            child: None,
            dir,
            extra_args: extra.to_vec(),
        };
        c.spawn();
        c
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("control.sock")
    }

    pub fn channel(&self) -> PathBuf {
        self.path("channel.sock")
    }

    /// The `[control]` table a gateway needs to subscribe (state in `state_dir`).
    pub fn gateway_section(&self, state_dir: &Path) -> String {
        self.gateway_named("gw-test", state_dir)
    }

    /// The same, for a gateway named `name` (facts stale after 1 s, not 5, so the
    /// tests see it soon).
    pub fn gateway_named(&self, name: &str, state_dir: &Path) -> String {
        format!(
            "[control]\nsocket = {:?}\nstate_dir = {:?}\nname = {name:?}\nstale_after = \"1s\"\n",
            self.channel(),
            state_dir
        )
    }

    /// `serve` on this directory, its log appended to `control.log`.
    fn serve_command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("control.log"))
            .unwrap();
        let mut c = Command::new(control_bin());
        c.arg("serve")
            .arg("--policy-dir")
            .arg(self.path("policy"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--socket")
            .arg(self.socket())
            .arg("--channel")
            .arg(self.channel())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        c
    }

    /// Run `serve` on the same directory while none runs, expecting it to stop by
    /// itself (bounded): its exit status and what it logged.
    pub fn serve_until_exit(&self) -> (std::process::ExitStatus, String) {
        assert!(self.child.is_none(), "the control process is running");
        let before = self.log().len();
        let mut child = self.serve_command().spawn().unwrap();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().unwrap() {
                return (s, self.log().get(before..).unwrap_or_default().to_string());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("zgate-control serve kept running:\n{}", self.log());
    }

    /// (Re)start the process on the same directory; waits for its socket.
    pub fn spawn(&mut self) {
        let child = self.serve_command().spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
                && self.log().contains("policy compiled")
                || self.log().contains("policy `") && self.log().contains("refused")
            {
                return;
            }
            if let Some(s) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("zgate-control exited early ({s}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("zgate-control not serving after {WAIT:?}:\n{}", self.log());
    }

    /// The TCP ports the running process listens on: its socket descriptors
    /// (`/proc/PID/fd`) matched against the listening sockets of its network namespace
    /// (`/proc/PID/net/tcp` and `tcp6`, state 0A), by inode.
    pub fn tcp_listening(&self) -> Vec<u16> {
        let pid = self.child.as_ref().expect("not running").id();
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|l| {
                let l = l.to_str()?;
                Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .collect();
        assert!(
            !inodes.is_empty(),
            "no socket descriptors in {pid}: not the right process?"
        );
        let mut ports = Vec::new();
        for table in ["tcp", "tcp6"] {
            let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap();
            for row in text.lines().skip(1) {
                let f: Vec<&str> = row.split_whitespace().collect();
                if f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                    let port = f[1].rsplit(':').next().unwrap();
                    ports.push(u16::from_str_radix(port, 16).unwrap());
                }
            }
        }
        ports.sort_unstable();
        ports
    }

    /// SIGKILL it (a crash, not a stop).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("control.log")).unwrap_or_default()
    }

    /// Run the CLI against this process.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(control_bin())
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .unwrap()
    }

    /// Run the CLI and insist it succeeds; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "zgate-control {args:?} failed ({}):\n{}{}\n--- control log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// Write a policy file (the watcher compiles it).
    pub fn write_policy(&self, name: &str, text: &str) {
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path("policy").join(name)).unwrap();
    }

    /// Wait (bounded) until `status` satisfies `cond`; the last status.
    pub fn wait_status(&self, cond: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status();
            if cond(&s) || Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until every connected gateway reports `table` and `facts` versions.
    pub fn wait_enforced(&self, gateways: usize) -> serde_json::Value {
        self.wait_status(|s| {
            let (t, f) = (&s["table_version"], &s["facts_version"]);
            let dps = s["dataplanes"].as_array().cloned().unwrap_or_default();
            dps.len() == gateways
                && dps.iter().all(|d| {
                    d["report"]["table_version"] == *t && d["report"]["facts_version"] == *f
                })
        })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill();
    }
}
