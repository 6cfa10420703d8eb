//! The open-loop mode corrects coordinated omission, writes `.hgrm` files, and `plot`
//! draws them: real sockets on loopback, the real binary.

#[cfg(test)]
mod open_loop {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::Command;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// An echo upstream that, once, after `after` echoes in all, stops for `stall`.
    fn stalling_echo(after: u64, stall: Duration) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    s.set_nodelay(true).unwrap();
                    let mut buf = [0u8; 64];
                    loop {
                        if s.read_exact(&mut buf).is_err() {
                            return;
                        }
                        if seen.fetch_add(1, Ordering::SeqCst) == after {
                            std::thread::sleep(stall);
                        }
                        if s.write_all(&buf).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn run(args: &[&str]) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_zgate-bench"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[test]
    fn a_stall_counts_for_every_request_due_during_it() {
        let addr = stalling_echo(300, Duration::from_millis(300)).to_string();
        let dir = tempfile::tempdir().unwrap();
        let hgrm = dir.path().join("open.hgrm");
        let open = run(&[
            "pingpong",
            "--target",
            &addr,
            "--connections",
            "1",
            "--rate",
            "1000",
            "--duration-s",
            "1.5",
            "--warmup-s",
            "0",
            "--requests",
            "100000",
            "--hgrm",
            hgrm.to_str().unwrap(),
        ]);
        assert_eq!(open["mode"], "open-loop");
        // ~1,500 requests were due; the 300 ms stall delays the ~300 due meanwhile, so
        // about a fifth of all requests waited 100 ms or more.
        let requests = open["requests"].as_u64().unwrap();
        assert!((1_000..=1_600).contains(&requests), "{open}");
        let p99 = open["p99_us"].as_f64().unwrap();
        let service = open["service_p99_us"].as_f64().unwrap();
        assert!(
            p99 > 100_000.0,
            "corrected p99 {p99} µs should carry the stall: {open}"
        );
        // What a closed loop would have said of the same requests: the stall is one
        // slow request, far out in the tail.
        assert!(service < p99 / 2.0, "{open}");
        // The .hgrm holds the same run.
        let text = std::fs::read_to_string(&hgrm).unwrap();
        assert!(text.contains("#[Max     ="), "{text}");
        assert!(
            text.lines().any(|l| l.contains(&format!(" {requests} "))),
            "{text}"
        );

        // The same stall closed-loop, one connection: it is one slow request among
        // many, and the tail hides it.
        let addr = stalling_echo(300, Duration::from_millis(300)).to_string();
        let closed = run(&[
            "pingpong",
            "--target",
            &addr,
            "--connections",
            "1",
            "--duration-s",
            "1",
            "--warmup-s",
            "0",
            "--requests",
            "100000",
        ]);
        assert_eq!(closed["mode"], "pingpong");
        assert!(closed["p99_us"].as_f64().unwrap() < 100_000.0, "{closed}");
    }

    #[test]
    fn plot_draws_a_percentile_spectrum_and_a_latency_cpu_chart() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.hgrm");
        std::fs::write(
            &a,
            "       Value     Percentile TotalCount 1/(1-Percentile)\n\n       0.050 0.000000000000          1           1.00\n       0.060 0.900000000000         90          10.00\n       0.200 0.990000000000         99         100.00\n       1.000 1.000000000000        100\n",
        )
        .unwrap();
        let png = dir.path().join("s.png");
        let out = Command::new(env!("CARGO_BIN_EXE_zgate-bench"))
            .args(["plot"])
            .arg(&a)
            .arg("-o")
            .arg(&png)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{out:?} (fonts-dejavu-core installed? tools/test installs it)"
        );
        assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
        let results = dir.path().join("r.jsonl");
        std::fs::write(
            &results,
            "{\"label\":\"zgate\",\"p99_us\":500.0,\"gateway_cpu_us_per_req\":6.5}\n{\"label\":\"haproxy\",\"p99_us\":900.0,\"gateway_cpu_us_per_req\":7.0}\n",
        )
        .unwrap();
        let png2 = dir.path().join("c.png");
        let out = Command::new(env!("CARGO_BIN_EXE_zgate-bench"))
            .args(["plot", "--cpu"])
            .arg(&results)
            .arg("-o")
            .arg(&png2)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(&std::fs::read(&png2).unwrap()[..4], b"\x89PNG");
        // Not an .hgrm: a clear error.
        let out = Command::new(env!("CARGO_BIN_EXE_zgate-bench"))
            .args(["plot"])
            .arg(&results)
            .arg("-o")
            .arg(&png)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not an .hgrm file"),
            "{out:?}"
        );
    }
}
