//! Idle connections: open N, prove each one reaches the (echo) upstream with a one-byte
//! round trip, then hold them all for a while. Used to measure a gateway's memory per
//! idle connection from the outside.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::tls::{self, Client};
use crate::{ClientArgs, LoadError};

/// The JSON line `idle` prints once every connection is up (before holding).
#[derive(Debug, Serialize)]
pub struct Report {
    mode: &'static str,
    label: String,
    target: String,
    tls: bool,
    connections: usize,
    open_s: f64,
    hold_s: f64,
}

/// Opens, checks, prints the report, holds, closes.
pub fn run(
    client: &ClientArgs,
    tls: Option<&Client>,
    connections: usize,
    hold: Duration,
    stall: Duration,
) -> Result<(), LoadError> {
    let start = Instant::now();
    let mut held = Vec::with_capacity(connections);
    for index in 0..connections {
        let mut s = tls::connect_blocking(client.target, index, tls, stall)?;
        let io_err = |op| move |source| LoadError::Io { index, op, source };
        s.write_all(b"i").map_err(io_err("write"))?;
        let mut one = [0u8; 1];
        s.read_exact(&mut one).map_err(io_err("read"))?;
        if one != *b"i" {
            return Err(LoadError::Mismatch {
                index,
                seq: 0,
                got: String::from_utf8_lossy(&one).into_owned(),
            });
        }
        held.push(s);
    }
    let report = Report {
        mode: "idle",
        label: client.label.clone(),
        target: client.target.to_string(),
        tls: tls.is_some(),
        connections,
        open_s: start.elapsed().as_secs_f64(),
        hold_s: hold.as_secs_f64(),
    };
    // Tell the caller now, so it can measure while the connections are held.
    crate::report::print(&report, client.json);
    std::thread::sleep(hold);
    drop(held);
    Ok(())
}
