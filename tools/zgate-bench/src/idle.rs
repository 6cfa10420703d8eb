//! Idle connections: open N, prove each one reaches the (echo) upstream with a one-byte
//! round trip, then hold them all for a while. Used to measure a gateway's memory per
//! idle connection from the outside.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::tls::{self, Client, Link};
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
        let addr = client.target;
        let s = TcpStream::connect_timeout(&addr, stall).map_err(|source| LoadError::Connect {
            index,
            addr,
            source,
        })?;
        let io_err = |op| move |source| LoadError::Io { index, op, source };
        s.set_read_timeout(Some(stall))
            .map_err(io_err("set_read_timeout"))?;
        s.set_write_timeout(Some(stall))
            .map_err(io_err("set_write_timeout"))?;
        let session = tls.map(|t| t.session(index)).transpose()?;
        let mut s = Link::new(s, session);
        tls::handshake_blocking(&mut s).map_err(|e| LoadError::Handshake {
            index,
            reason: e.to_string(),
        })?;
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
