//! `zgate demo`, the README's first command, run as a newcomer would run it.

use std::process::Command;

#[test]
fn demo_shows_allow_deny_and_live_revocation_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_zgate"))
        .arg("demo")
        .output()
        .expect("run zgate demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for expected in [
        "1. client 127.0.0.1: allowed by `demo-clients`",
        "2. client 127.0.0.2: denied (default deny); closed by the gateway, 0 new connection(s) reached the upstream",
        "the live flow from 127.0.0.1 was closed",
        "a new flow from 127.0.0.1 is refused too",
        "4. /metrics: accepted 3, denied 2, closed by policy 1, table version 2",
        "5. SIGTERM: the gateway drained and exited with exit status: 0",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
}
