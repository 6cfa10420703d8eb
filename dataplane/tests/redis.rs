//! A real client through zgate: `redis-cli` and `redis-benchmark` against a real
//! `redis-server` behind the gateway. The redis binaries come from the Debian packages
//! `redis-server` and `redis-tools`, which `tools/test` installs; when they are missing
//! the test fails and says so (nothing here skips).
#![expect(
    clippy::disallowed_methods,
    reason = "tests wait on real processes: wall-clock deadlines and short sleeps are the point"
)]

#[cfg(test)]
mod common;

#[cfg(test)]
mod redis {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use super::common::*;
    use zgate_policy::model::{Action, Cidr, Rule, ServiceSelector};

    /// Panics, naming the fix, when `bin` cannot be run.
    fn require(bin: &str) {
        let ok = Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "`{bin}` is not installed: run tools/test, which installs the Debian packages \
             redis-server and redis-tools"
        );
    }

    /// A `redis-server` on a loopback port, with persistence off. Killed (by PID) on drop.
    struct Redis {
        child: Child,
        addr: SocketAddr,
    }

    impl Redis {
        fn start() -> Redis {
            require("redis-server");
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--protected-mode", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut r = Redis {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            r.wait_ready();
            r
        }

        /// PING until PONG (bounded).
        fn wait_ready(&mut self) {
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("redis-server exited early: {status}");
                }
                if let Ok(mut s) = TcpStream::connect(self.addr) {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = [0u8; 7];
                    if s.write_all(b"PING\r\n").is_ok()
                        && s.read_exact(&mut buf).is_ok()
                        && &buf == b"+PONG\r\n"
                    {
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("redis-server not answering after {WAIT:?}");
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Allow loopback sources (only) to the gateway's `echo` listener.
    fn allow_loopback() -> Vec<u8> {
        let mut r = Rule::new(
            "allow-loopback",
            Action::Allow,
            ServiceSelector::Named(vec!["echo".to_string()]),
        );
        r.sources = Some(vec![Cidr {
            addr: "127.0.0.0".parse().unwrap(),
            prefix_len: 8,
        }]);
        table_bytes(vec![r], 1)
    }

    /// Run `redis-cli` against `addr` with `args`, feeding `stdin`.
    fn cli(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> Output {
        require("redis-cli");
        let mut child = Command::new("redis-cli")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn redis-cli");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(
            out.status.success(),
            "redis-cli {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn gateway_for(redis: &Redis) -> Gateway {
        let mut setup = Setup::new(redis.addr);
        setup.table = Some(allow_loopback());
        setup.workers = 2;
        Gateway::start(&setup)
    }

    #[test]
    fn redis_cli_values_round_trip_through_zgate() {
        let redis = Redis::start();
        let gw = gateway_for(&redis);
        let g = gw.listen;

        let set = cli(g, &["SET", "greeting", "hello through zgate"], b"");
        assert_eq!(set.stdout, b"OK\n");
        let get = cli(g, &["GET", "greeting"], b"");
        assert_eq!(get.stdout, b"hello through zgate\n");

        // `-x` reads the last argument from stdin, byte for byte. Output is raw (not a tty):
        // the value, then one newline.
        let big = pattern(1 << 20, 11);
        assert_eq!(cli(g, &["-x", "SET", "big"], &big).stdout, b"OK\n");
        let mut want = big.clone();
        want.push(b'\n');
        let got = cli(g, &["GET", "big"], b"").stdout;
        assert!(
            got == want,
            "1 MiB value corrupted ({} bytes back)",
            got.len()
        );
        assert_eq!(cli(g, &["STRLEN", "big"], b"").stdout, b"1048576\n");

        let binary: Vec<u8> = b"\0\r\n\xff\xfe*3\r\n$-1\r\n\0end".to_vec();
        assert_eq!(cli(g, &["-x", "SET", "bin"], &binary).stdout, b"OK\n");
        let mut want = binary.clone();
        want.push(b'\n');
        assert_eq!(cli(g, &["GET", "bin"], b"").stdout, want);

        // The same keys, read straight from redis: the gateway changed nothing.
        assert_eq!(
            cli(redis.addr, &["STRLEN", "bin"], b"").stdout,
            format!("{}\n", binary.len()).as_bytes()
        );
        // Seven redis-cli runs went through the gateway, one connection each.
        assert_eq!(gw.wait_metric("zgate_connections_accepted_total", 7), 7);
        assert_eq!(gw.metric("zgate_connections_denied_total"), 0);
    }

    /// `redis-benchmark -q` prints one `NAME: RATE requests per second, ...` line per test
    /// (progress lines end in `\r`). Returns the rate per test name.
    fn benchmark_rates(text: &str) -> Vec<(String, f64)> {
        text.split(['\r', '\n'])
            .filter_map(|line| {
                let (name, rest) = line.trim().split_once(": ")?;
                let (rate, _) = rest.split_once(" requests per second")?;
                Some((name.to_string(), rate.trim().parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn redis_benchmark_through_zgate_reports_every_test_without_errors() {
        require("redis-benchmark");
        let redis = Redis::start();
        let gw = gateway_for(&redis);
        let before = total_connections(redis.addr);
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &gw.listen.port().to_string()])
            .args(["-q", "-n", "20000", "-c", "50", "-P", "1"])
            .args(["-t", "set,get,incr,lpush,lrange_100"])
            .stdin(Stdio::null())
            .output()
            .expect("spawn redis-benchmark");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "redis-benchmark failed:\n{stderr}");
        for text in [&stdout, &stderr] {
            assert!(
                !text.to_ascii_lowercase().contains("error"),
                "redis-benchmark reported an error:\n{stdout}\n{stderr}"
            );
        }
        let rates = benchmark_rates(&stdout);
        for want in [
            "SET",
            "GET",
            "INCR",
            "LPUSH",
            "LRANGE_100 (first 100 elements)",
        ] {
            let rate = rates.iter().find(|(n, _)| n == want).map(|(_, r)| *r);
            assert!(
                rate.is_some_and(|r| r > 0.0),
                "no rate for {want} in:\n{stdout}"
            );
        }
        // Every benchmark client went through the gateway to this redis: 50 per test, six
        // tests (LRANGE_100 first runs an LPUSH fill), plus our INFO connection.
        let after = total_connections(redis.addr);
        assert!(
            after - before >= 50 * 5,
            "redis saw {} new connections",
            after - before
        );
        let accepted = gw.metric("zgate_connections_accepted_total");
        assert!(accepted >= 50 * 5, "zgate accepted {accepted}");
        assert_eq!(gw.metric("zgate_resets_total"), 0, "{}", gw.log());
        assert_eq!(gw.metric("zgate_upstream_connect_failures_total"), 0);
    }

    /// `total_connections_received` from `INFO stats`, asked of redis directly.
    fn total_connections(addr: SocketAddr) -> u64 {
        let out = cli(addr, &["INFO", "stats"], b"");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO stats has total_connections_received")
    }
}
