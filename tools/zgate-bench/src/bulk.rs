//! One-way bulk transfer: each connection writes its share of the bytes, half-closes,
//! and waits for the upstream (a sink) to close back. The time runs from the first
//! write to the last close, so bytes still buffered in the gateway are counted only
//! once they have reached the upstream.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::tls::{self, Client, Link, Negotiated};
use crate::{cpu, ClientArgs, LoadError};

/// What to run.
#[derive(Debug)]
pub struct Options {
    /// Parallel connections.
    pub connections: usize,
    /// Total bytes to send.
    pub bytes: u64,
    /// Stop sending after this long.
    pub duration: Duration,
    /// Write size.
    pub chunk: usize,
    /// A write or the final read blocked this long: error.
    pub stall: Duration,
}

/// The JSON line `bulk` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    mode: &'static str,
    label: String,
    target: String,
    tls: bool,
    /// What the TLS handshake negotiated (the cipher the bytes were encrypted with).
    negotiated: Option<Negotiated>,
    connections: usize,
    bytes: u64,
    elapsed_s: f64,
    bytes_per_s: f64,
    gateway_cpu_s: Option<f64>,
    bytes_per_gateway_cpu_s: Option<f64>,
}

/// Connects every connection first (with TLS: handshake done), then sends from one
/// thread per connection.
pub fn run(client: &ClientArgs, tls: Option<&Client>, opts: &Options) -> Result<Report, LoadError> {
    if opts.connections == 0 || opts.chunk == 0 {
        return Err(LoadError::Arg {
            arg: "connections",
            reason: "connections and chunk must be at least 1",
        });
    }
    let per_conn = opts.bytes / opts.connections as u64;
    let mut streams = Vec::with_capacity(opts.connections);
    for index in 0..opts.connections {
        let addr = client.target;
        let s =
            TcpStream::connect_timeout(&addr, opts.stall).map_err(|source| LoadError::Connect {
                index,
                addr,
                source,
            })?;
        let io_err = |op| move |source| LoadError::Io { index, op, source };
        s.set_write_timeout(Some(opts.stall))
            .map_err(io_err("set_write_timeout"))?;
        s.set_read_timeout(Some(opts.stall))
            .map_err(io_err("set_read_timeout"))?;
        let session = tls.map(|t| t.session(index)).transpose()?;
        let mut link = Link::new(s, session);
        tls::handshake_blocking(&mut link).map_err(|e| LoadError::Handshake {
            index,
            reason: e.to_string(),
        })?;
        streams.push(link);
    }
    let negotiated = streams.first().and_then(Link::negotiated);

    let cpu_before = cpu::sample(&client.cpu_pids)?;
    let start = Instant::now();
    let deadline = start + opts.duration;
    let sent: Vec<Result<u64, LoadError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(index, s)| scope.spawn(move || send(index, s, per_conn, opts.chunk, deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(LoadError::Thread)))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = cpu::sample(&client.cpu_pids)?;

    let mut total = 0u64;
    for r in sent {
        total = total.saturating_add(r?);
    }
    let cpu_s = cpu::seconds_between(&client.cpu_pids, cpu_before, cpu_after, client.clk_tck);
    #[expect(
        clippy::cast_precision_loss,
        reason = "byte counts below 2^52 are exact enough"
    )]
    let totalf = total as f64;
    Ok(Report {
        mode: "bulk",
        label: client.label.clone(),
        target: client.target.to_string(),
        tls: tls.is_some(),
        negotiated,
        connections: opts.connections,
        bytes: total,
        elapsed_s: elapsed,
        bytes_per_s: if elapsed > 0.0 { totalf / elapsed } else { 0.0 },
        gateway_cpu_s: cpu_s,
        bytes_per_gateway_cpu_s: cpu_s.filter(|s| *s > 0.0).map(|s| totalf / s),
    })
}

/// Sends up to `bytes` (stopping at `deadline`), half-closes (TLS: close_notify first),
/// waits for the close.
fn send(
    index: usize,
    mut s: Link<TcpStream>,
    bytes: u64,
    chunk: usize,
    deadline: Instant,
) -> Result<u64, LoadError> {
    let io_err = |op| move |source| LoadError::Io { index, op, source };
    let buf = vec![0x5au8; chunk];
    let mut sent = 0u64;
    while sent < bytes && Instant::now() < deadline {
        let want = usize::try_from(bytes.saturating_sub(sent))
            .unwrap_or(usize::MAX)
            .min(chunk);
        match s.write(buf.get(..want).unwrap_or_default()) {
            Ok(0) => return Err(LoadError::Closed { index, replies: 0 }),
            Ok(n) => sent = sent.saturating_add(n as u64),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("write")(e)),
        }
        // TLS on a blocking socket: records left queued mean the write timed out.
        if s.wants_write() {
            return Err(io_err("write")(io::Error::from(io::ErrorKind::TimedOut)));
        }
    }
    s.close_notify();
    if s.wants_write() {
        return Err(io_err("write close_notify")(io::Error::from(
            io::ErrorKind::TimedOut,
        )));
    }
    s.socket()
        .shutdown(Shutdown::Write)
        .map_err(io_err("shutdown"))?;
    // The sink sends nothing; EOF means it has read everything and closed.
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return Ok(sent),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read until close")(e)),
        }
    }
}
