//! Bulk transfer. One way (default): each connection writes its share of the bytes,
//! half-closes, and waits for the upstream (a sink) to close back. Two ways (`--both`,
//! an echo upstream): each connection writes and reads its echo at once (one
//! non-blocking loop per connection, plain or TLS), checks every byte that comes back,
//! half-closes when it has sent its share, and ends when the echo has closed with all
//! of it back. The time runs from the first write to the last close, so bytes still
//! buffered in the gateway are counted only once they have arrived.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Both ways through an echo upstream.
    pub both: bool,
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
    /// `one-way` or `two-way`.
    direction: &'static str,
    /// Bytes sent (client to upstream).
    bytes: u64,
    /// Two ways: bytes that came back (equal to `bytes`, or the run is an error).
    bytes_back: Option<u64>,
    elapsed_s: f64,
    /// Bytes through the gateway per second, both directions counted.
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
        streams.push(tls::connect_blocking(
            client.target,
            index,
            tls,
            opts.stall,
        )?);
    }
    let negotiated = streams.first().and_then(Link::negotiated);

    let cpu_before = cpu::sample(&client.cpu_pids)?;
    let start = Instant::now();
    let deadline = start + opts.duration;
    let moved = AtomicU64::new(0);
    let mut progress = crate::report::Progress::new(client.json, opts.duration, "bytes sent");
    let sent: Vec<Result<(u64, u64), LoadError>> = std::thread::scope(|scope| {
        let moved = &moved;
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(index, s)| {
                scope.spawn(move || {
                    if opts.both {
                        both_ways(index, s, per_conn, opts, deadline, moved)
                    } else {
                        send(index, s, per_conn, opts.chunk, deadline, moved).map(|n| (n, 0))
                    }
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            let now = Instant::now();
            progress.tick(
                now,
                now.saturating_duration_since(start),
                moved.load(Ordering::Relaxed),
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        progress.finish();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(LoadError::Thread)))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = cpu::sample(&client.cpu_pids)?;

    let (mut total, mut back) = (0u64, 0u64);
    for r in sent {
        let (s, b) = r?;
        total = total.saturating_add(s);
        back = back.saturating_add(b);
    }
    let cpu_s = cpu::seconds_between(&client.cpu_pids, cpu_before, cpu_after, client.clk_tck);
    #[expect(
        clippy::cast_precision_loss,
        reason = "byte counts below 2^52 are exact enough"
    )]
    let totalf = total.saturating_add(back) as f64;
    Ok(Report {
        mode: "bulk",
        label: client.label.clone(),
        target: client.target.to_string(),
        tls: tls.is_some(),
        negotiated,
        connections: opts.connections,
        direction: if opts.both { "two-way" } else { "one-way" },
        bytes: total,
        bytes_back: opts.both.then_some(back),
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
    moved: &AtomicU64,
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
            Ok(n) => {
                sent = sent.saturating_add(n as u64);
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
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

/// Two ways on one connection: write `bytes` (or until `deadline`) while reading the
/// echo, check each byte back, half-close once all is sent, end at the echo's close.
/// Returns (sent, received).
fn both_ways(
    index: usize,
    link: Link<TcpStream>,
    bytes: u64,
    opts: &Options,
    deadline: Instant,
    progressed: &AtomicU64,
) -> Result<(u64, u64), LoadError> {
    use mio::{Events, Interest, Poll, Token};
    let io_err = |op| move |source| LoadError::Io { index, op, source };
    let (std_stream, session) = link.into_parts();
    std_stream
        .set_nonblocking(true)
        .map_err(io_err("set_nonblocking"))?;
    let mut link = Link::new(mio::net::TcpStream::from_std(std_stream), session);
    let mut poll = Poll::new().map_err(LoadError::Poll)?;
    poll.registry()
        .register(
            link.socket(),
            Token(0),
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(LoadError::Poll)?;
    let mut events = Events::with_capacity(4);
    let out = vec![0x5au8; opts.chunk];
    let mut got = vec![0u8; 64 * 1024];
    let (mut sent, mut back) = (0u64, 0u64);
    let mut half_closed = false;
    let mut last_progress = Instant::now();
    loop {
        let mut moved = false;
        // Edge-triggered: write until the socket (or rustls) takes no more...
        while !half_closed && sent < bytes && Instant::now() < deadline {
            let want = usize::try_from(bytes.saturating_sub(sent))
                .unwrap_or(usize::MAX)
                .min(opts.chunk);
            match link.write(out.get(..want).unwrap_or_default()) {
                // TLS: rustls' buffer is full; the socket is too, or it just took
                // everything queued and the next write goes in.
                Ok(0) if link.wants_write() => break,
                Ok(0) if link.tls().is_some() => {}
                Ok(0) => return Err(LoadError::Closed { index, replies: 0 }),
                Ok(n) => {
                    sent = sent.saturating_add(n as u64);
                    progressed.fetch_add(n as u64, Ordering::Relaxed);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io_err("write")(e)),
            }
        }
        match link.flush_tls() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io_err("write")(e)),
        }
        if !half_closed && (sent >= bytes || Instant::now() >= deadline) && !link.wants_write() {
            link.close_notify();
            if !link.wants_write() {
                link.socket()
                    .shutdown(Shutdown::Write)
                    .map_err(io_err("shutdown"))?;
                half_closed = true;
            }
        }
        // ...and read until it has nothing more.
        loop {
            match link.read(&mut got) {
                Ok(0) => {
                    return if half_closed && back == sent {
                        Ok((sent, back))
                    } else {
                        Err(LoadError::Closed {
                            index,
                            replies: back,
                        })
                    };
                }
                Ok(n) => {
                    if got.get(..n).is_some_and(|b| b.iter().any(|&x| x != 0x5a)) {
                        return Err(LoadError::Mismatch {
                            index,
                            seq: back,
                            got: "bytes other than the ones sent".into(),
                        });
                    }
                    back = back.saturating_add(n as u64);
                    moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io_err("read")(e)),
            }
        }
        if back > sent {
            return Err(LoadError::Mismatch {
                index,
                seq: back,
                got: "more bytes back than were sent".into(),
            });
        }
        let now = Instant::now();
        if moved {
            last_progress = now;
        } else if now.saturating_duration_since(last_progress) > opts.stall {
            return Err(LoadError::Stalled {
                secs: opts.stall.as_secs_f64(),
            });
        }
        // Wake at the deadline too, to half-close on time.
        let wait = deadline
            .saturating_duration_since(now)
            .max(Duration::from_millis(1))
            .min(Duration::from_millis(100));
        poll.poll(&mut events, Some(wait))
            .map_err(LoadError::Poll)?;
    }
}
