//! The modes against the tool's own upstream, real sockets on loopback: two-way bulk
//! gets every byte back, the plain connection rate counts connections, the human
//! summary goes to stderr and `--json` leaves only the JSON line.

#[cfg(test)]
mod modes {
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    const BIN: &str = env!("CARGO_BIN_EXE_zgate-bench");

    struct Upstream {
        child: Child,
        addr: String,
    }

    impl Upstream {
        fn start(threads: &str) -> Upstream {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = format!("127.0.0.1:{port}");
            let child = Command::new(BIN)
                .args(["serve", "--listen", &addr, "--threads", threads])
                .args(["--max-runtime-s", "60"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(&addr).is_err() {
                assert!(Instant::now() < deadline, "the upstream did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
            Upstream { child, addr }
        }
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn bench(args: &[&str]) -> (serde_json::Value, Output) {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        (serde_json::from_slice(&out.stdout).unwrap(), out)
    }

    #[test]
    fn two_way_bulk_gets_every_byte_back_and_counts_both_directions() {
        let up = Upstream::start("2");
        let (line, out) = bench(&[
            "bulk",
            "--target",
            &up.addr,
            "--both",
            "--connections",
            "2",
            "--bytes",
            "50000000",
            "--duration-s",
            "20",
        ]);
        assert_eq!(line["direction"], "two-way", "{line}");
        assert_eq!(line["bytes"], 50_000_000, "{line}");
        assert_eq!(line["bytes_back"], line["bytes"], "{line}");
        let elapsed = line["elapsed_s"].as_f64().unwrap();
        let rate = line["bytes_per_s"].as_f64().unwrap();
        assert!(
            (rate * elapsed - 100_000_000.0).abs() < 1_000_000.0,
            "both ways counted: {line}"
        );
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(summary.contains("bulk two-way"), "{summary}");
        assert!(summary.contains("0.05 GB back"), "{summary}");
    }

    #[test]
    fn the_plain_connection_rate_counts_connections_and_json_keeps_stderr_quiet() {
        let up = Upstream::start("1");
        let args = [
            "handshake",
            "--target",
            &up.addr,
            "--concurrency",
            "4",
            "--duration-s",
            "0.5",
            "--warmup-s",
            "0",
        ];
        let (line, out) = bench(&args);
        assert!(line["handshakes"].as_u64().unwrap() > 100, "{line}");
        assert!(line["negotiated"].is_null(), "plain TCP: {line}");
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(
            summary.contains("connection rate") && summary.contains("plain TCP"),
            "{summary}"
        );
        let (_, quiet) = bench(&[&args[..], &["--json"]].concat());
        assert!(quiet.stderr.is_empty(), "{quiet:?}");
        // Resumption needs TLS: a clear error.
        let out = Command::new(BIN)
            .args(args)
            .arg("--resume")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    }
}
