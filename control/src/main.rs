//! `zgate-control`: the control side of zgate.
//!
//! - The control process, `serve`: it watches and compiles the policy directory, keeps
//!   the live facts (revocations, posture, risk, just-in-time grants) and a history of
//!   tables, and serves the gateways over the control channel (`zgate-proto`).
//! - The operator's CLI for it: `status`, `revoke`, `posture`, `risk`, `grant`,
//!   `rollback`, `apply --shadow`, `impact`, `promote`, over its Unix socket.
//! - The policy toolchain a reviewer and a CI job use: `check` validates a policy
//!   directory, `compile` writes a table file, `explain` answers "what happens to this
//!   flow, and why not the other rules", `test` runs policy unit tests, `inspect`
//!   verifies a table file.
//!
//! Exit codes follow sysexits: 0 success, 1 a policy test failed, 2 command-line usage,
//! 64 bad `serve` configuration, 65 invalid policy or input data (or a refused
//! request), 66 an input file could not be read, 69 the control process is not
//! reachable, 70 an internal error, 71 an OS error, 73 the output could not be
//! written, 77 not permitted.

#![forbid(unsafe_code)]

mod cases;
mod cli;
mod client;
mod explain;
mod load;
mod ops;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("zgate-control: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
