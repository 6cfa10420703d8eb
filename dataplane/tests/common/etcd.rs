//! A real etcd cluster on loopback for the fleet tests: Debian's `etcd` (etcd-server,
//! 3.4), three members on free ports, each stoppable and restartable on its own data.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, WAIT};

/// The `etcd` server binary (Debian's etcd-server installs it on the PATH).
fn etcd_bin() -> &'static str {
    let found = Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`etcd` is not on the PATH: install it (`apt-get install etcd-server`; tools/test does)"
    );
    "etcd"
}

/// One member: its ports and process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Plain HTTP `/health` (and metrics) when the client port speaks TLS.
    pub metrics_port: u16,
    pub child: Option<Child>,
}

/// A cluster of members, killed on drop.
pub struct EtcdCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    token: String,
    /// Clients must speak TLS and show a certificate of this CA.
    tls: Option<PathBuf>,
}

impl EtcdCluster {
    /// Start `n` members and wait until the cluster has a leader.
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, None)
    }

    /// The same, with `https://` client URLs and client-certificate auth (etcd's
    /// `--client-cert-auth`) under `pki`'s CA.
    pub fn start_with(n: usize, pki: Option<&super::pki::Pki>) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                child: None,
            })
            .collect();
        let token = format!("zgate-test-{}", std::process::id());
        let mut c = EtcdCluster {
            dir,
            members,
            token,
            tls: pki.map(|p| p.dir.path().to_path_buf()),
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy();
        c
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    /// (Re)start member `i` on its data directory.
    pub fn start_member(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let client = format!("{}://127.0.0.1:{}", self.scheme(), m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(etcd_bin());
        if let Some(dir) = &self.tls {
            cmd.arg("--cert-file")
                .arg(dir.join("server.pem"))
                .arg("--key-file")
                .arg(dir.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(dir.join("ca.pem"))
                .arg("--client-cert-auth")
                .arg("--listen-metrics-urls")
                .arg(format!("http://127.0.0.1:{}", m.metrics_port));
        }
        let child = cmd
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            // Loopback: elections in a quarter of the default time keep the tests short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.members[i].child = Some(child);
    }

    /// SIGKILL member `i` (a crash).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Every member's client URL, comma separated (`--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The logs of every member, for a failure message.
    pub fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                format!(
                    "--- {}:\n{}",
                    self.members[i].name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One HTTP/JSON call to a running member (etcd's gRPC gateway, v3 in 3.4):
    /// the response body. Plain clusters only.
    pub fn call(&self, path: &str, body: &str) -> Option<serde_json::Value> {
        assert!(self.tls.is_none(), "call() speaks plain HTTP");
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .find_map(|m| http_post(m.client_port, path, body))
    }

    /// The cluster's current revision.
    pub fn revision(&self) -> u64 {
        let r = self
            .call("/v3/kv/range", r#"{"key":"AA==","count_only":true}"#)
            .unwrap_or_else(|| panic!("no etcd member answers\n{}", self.logs()));
        r["header"]["revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no revision in {r}"))
    }

    /// Put `value` at `key` behind the control processes' backs (as a tamperer with
    /// write access to etcd would).
    pub fn put(&self, key: &str, value: &[u8]) {
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            base64(key.as_bytes()),
            base64(value)
        );
        let r = self
            .call("/v3/kv/put", &body)
            .unwrap_or_else(|| panic!("no etcd member answers\n{}", self.logs()));
        assert!(r.get("error").is_none(), "put refused: {r}");
    }

    /// Compact the history up to the current revision (a resumed watch before it is
    /// cancelled).
    pub fn compact(&self) -> u64 {
        let rev = self.revision();
        let r = self
            .call(
                "/v3/kv/compaction",
                &format!(r#"{{"revision":"{rev}","physical":true}}"#),
            )
            .expect("compaction");
        assert!(r.get("error").is_none(), "compaction refused: {r}");
        rev
    }

    /// Wait (bounded) until every running member reports itself healthy.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let healthy = self.members.iter().filter(|m| m.child.is_some()).all(|m| {
                let port = if self.tls.is_some() {
                    m.metrics_port
                } else {
                    m.client_port
                };
                http_get_close(port, "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
            });
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after {WAIT:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

fn http(port: u16, request: &str) -> Option<String> {
    let addr = format!("127.0.0.1:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    Some(resp.split_once("\r\n\r\n")?.1.to_string())
}

fn http_get_close(port: u16, path: &str) -> Option<String> {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n"),
    )
}

/// Standard base64 with padding (the gRPC gateway's encoding of bytes).
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn http_post(port: u16, path: &str, body: &str) -> Option<serde_json::Value> {
    let text = http(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )?;
    // Errors come chunked: the JSON object is what lies between the outer braces.
    let json = text.get(text.find('{')?..=text.rfind('}')?)?;
    serde_json::from_str(json).ok()
}
