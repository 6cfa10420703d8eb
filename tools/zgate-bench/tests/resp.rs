//! `--payload resp` drives a real Redis (Debian's redis-server, installed by tools/test):
//! SET then GET of each connection's value, every reply checked; raw bytes, which Redis
//! never answers in full, are an error, not a line of zeros.

#[cfg(test)]
mod resp {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    struct Redis {
        child: Child,
        port: u16,
    }

    impl Redis {
        fn start() -> Redis {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is missing: apt-get install redis-server (tools/test does)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not listen");
                std::thread::sleep(Duration::from_millis(20));
            }
            Redis { child, port }
        }

        fn addr(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        /// `STRLEN key` over RESP, read back by hand.
        fn strlen(&self, key: &str) -> i64 {
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
            write!(s, "*2\r\n$6\r\nSTRLEN\r\n${}\r\n{key}\r\n", key.len()).unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            line.trim_start_matches(':').trim().parse().unwrap()
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn bench(args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_zgate-bench"))
            .args(args)
            .output()
            .unwrap()
    }

    #[test]
    fn resp_sets_and_gets_through_a_real_redis_and_raw_bytes_are_an_error() {
        let redis = Redis::start();
        let addr = redis.addr();
        let common = [
            "pingpong",
            "--target",
            &addr,
            "--duration-s",
            "0.5",
            "--warmup-s",
            "0.1",
            "--size",
            "300",
            "--stall-s",
            "2",
        ];
        let out = bench(&[&common[..], &["--payload", "resp", "--connections", "3"]].concat());
        assert!(out.status.success(), "{out:?}");
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(line["payload"], "resp", "{line}");
        assert!(line["requests"].as_u64().unwrap() > 100, "{line}");
        // Each connection's key holds a value of --size bytes, set through the load.
        for i in 0..3 {
            assert_eq!(redis.strlen(&format!("zgate-bench:{i}")), 300);
        }
        // Open loop too.
        let out = bench(
            &[
                &common[..],
                &["--payload", "resp", "--connections", "2", "--rate", "2000"],
            ]
            .concat(),
        );
        assert!(out.status.success(), "{out:?}");
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(line["mode"], "open-loop", "{line}");

        // Raw bytes: Redis waits for the rest of a command that never comes.
        let out = bench(&[&common[..], &["--payload", "raw", "--connections", "1"]].concat());
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no request completed") || err.contains("stalled"),
            "{err}"
        );
    }
}
