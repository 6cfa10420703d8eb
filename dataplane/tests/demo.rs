//! `zgate demo`, the README's first command, run as a newcomer would run it: the
//! gateway and the control process (`zgate-control`, built beside it by the workspace
//! test run) as two processes.

use std::process::Command;

#[test]
fn demo_shows_mtls_allow_deny_revocation_and_a_grant_with_two_processes_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_zgate"))
        .arg("demo")
        .output()
        .expect("run zgate demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for expected in [
        "1. spiffe://demo.example/ns/trading/sa/pricer (mTLS): allowed by `traders`",
        "2. spiffe://demo.example/ns/guest/sa/visitor: a valid certificate, but no rule admits it",
        "the client is told: received fatal alert: AccessDenied",
        "the pricer's live flow was closed",
        "the quoter's flow still echoes",
        "a new connection as the pricer is refused",
        "admitted; its flow was closed by the gateway when the grant ended",
        "5. gateway /metrics: closed by policy: 1 revoked, 1 grant-ended; denied 3; table version 1, facts version",
        "demo-gateway (pid",
        "6. SIGTERM: the gateway drained and exited with exit status: 0; the control process exited with exit status: 0",
        "\"what\":\"revoke\"",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
}
