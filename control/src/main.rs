//! `zgate-control`: the control side of zgate.
//!
//! Today it is the policy toolchain a reviewer and a CI job use: `check` validates a
//! policy directory and prints its warnings, `compile` writes the binary decision table
//! the dataplane loads, `explain` answers "what happens to this flow, and why not the
//! other rules", `test` runs policy unit tests, and `inspect` verifies a table file.
//! Later it also becomes the daemon that ingests facts and pushes tables.
//!
//! Exit codes follow sysexits: 0 success, 1 a policy test failed, 2 command-line usage,
//! 65 invalid policy or input data, 66 an input file could not be read, 73 the output
//! could not be written.

#![forbid(unsafe_code)]

mod cases;
mod cli;
mod explain;
mod load;

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
