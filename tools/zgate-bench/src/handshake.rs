//! Connection rate: fresh connections, one after another on each of `--concurrency`
//! slots. Each connection: TCP connect, with `--tls` a full (or, with `--resume`,
//! resumed) TLS 1.3 handshake (presenting the client certificate with `--cert`), one
//! byte echoed end to end through the gateway (so the flow was allowed by policy and
//! reached the upstream), close_notify, close. Without `--tls` it is plain TCP: connect,
//! one byte, close (the `handshakes` fields then count connections). One mio thread
//! drives every slot.
//!
//! Reported: handshakes completed in the measured window, handshakes per second,
//! handshake latency (connect start to handshake done) and connection latency (to the
//! echo), how many were resumed, what was negotiated, and with `--cpu-pid` the
//! gateway's CPU time per handshake and handshakes per gateway CPU-second (the rate
//! one core of the gateway would sustain).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::tls::{Client, Link, Negotiated};
use crate::{cpu, ClientArgs, LoadError};

/// What to run.
#[derive(Debug)]
pub struct Options {
    /// Connections in flight at once.
    pub concurrency: usize,
    /// Measured connections to stop at.
    pub connections: u64,
    /// Measured time to stop at.
    pub duration: Duration,
    /// Unmeasured warm-up (also fills the ticket cache with `--resume`).
    pub warmup: Duration,
    /// No connection finished for this long: error.
    pub stall: Duration,
}

/// The JSON line `handshake` prints. Latencies in microseconds.
#[derive(Debug, Serialize)]
pub struct Report {
    mode: &'static str,
    label: String,
    target: String,
    concurrency: usize,
    resume: bool,
    handshakes: u64,
    resumed: u64,
    elapsed_s: f64,
    handshakes_per_s: f64,
    handshake_p50_us: f64,
    handshake_p99_us: f64,
    conn_p50_us: f64,
    conn_p99_us: f64,
    negotiated: Option<Negotiated>,
    gateway_cpu_s: Option<f64>,
    gateway_cpu_ms_per_handshake: Option<f64>,
    handshakes_per_gateway_cpu_s: Option<f64>,
}

#[derive(PartialEq, Eq)]
enum Step {
    Handshake,
    /// The probe byte is (being) sent; waiting for its echo.
    Echo,
}

struct Slot {
    /// Connection number (for errors): the n-th connection this run opened.
    index: usize,
    link: Link<TcpStream>,
    step: Step,
    started: Instant,
    handshake_done: Instant,
}

/// Runs the load; the caller prints the report.
pub fn run(
    client: &ClientArgs,
    tls: Option<&Client>,
    resume: bool,
    opts: &Options,
) -> Result<Report, LoadError> {
    if opts.concurrency == 0 || opts.concurrency > 1024 {
        return Err(LoadError::Arg {
            arg: "concurrency",
            reason: "must be 1 to 1024",
        });
    }
    let hist = || {
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|_| LoadError::Arg {
            arg: "duration-s",
            reason: "histogram bounds refused",
        })
    };
    let (mut hs_hist, mut conn_hist) = (hist()?, hist()?);
    let mut poll = Poll::new().map_err(LoadError::Poll)?;
    let mut events = Events::with_capacity(1024);

    let started = Instant::now();
    let measure_from = started + opts.warmup;
    let mut measuring = false;
    let mut window_start = measure_from;
    let mut cpu_before = cpu::sample(&client.cpu_pids)?;
    let (mut count, mut resumed) = (0u64, 0u64);
    let mut negotiated: Option<Negotiated> = None;
    let mut last_progress = started;
    // Connection numbers, for error messages: slot i's k-th connection.
    let mut opened: usize = 0;

    let mut slots: Vec<Option<Slot>> = Vec::with_capacity(opts.concurrency);
    for i in 0..opts.concurrency {
        slots.push(Some(open(client, tls, &poll, i, opened, opts.stall)?));
        opened = opened.saturating_add(1);
    }

    let mut progress = crate::report::Progress::new(client.json, opts.duration, "handshakes");
    let (window_end, cpu_after) = loop {
        let now = Instant::now();
        if !measuring && now >= measure_from {
            measuring = true;
            window_start = now;
            cpu_before = cpu::sample(&client.cpu_pids)?;
        }
        if measuring {
            progress.tick(now, now.saturating_duration_since(window_start), count);
        }
        if measuring && (count >= opts.connections || now >= window_start + opts.duration) {
            break (now, cpu::sample(&client.cpu_pids)?);
        }
        if now.duration_since(last_progress) > opts.stall {
            return Err(LoadError::Stalled {
                secs: opts.stall.as_secs_f64(),
            });
        }
        match poll.poll(&mut events, Some(Duration::from_millis(50))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LoadError::Poll(e)),
        }
        for ev in &events {
            let i = ev.token().0;
            let Some(entry) = slots.get_mut(i) else {
                continue;
            };
            let Some(slot) = entry.as_mut() else { continue };
            if !advance(slot)? {
                continue;
            }
            // Done: record, close, open the next one in this slot.
            let done = Instant::now();
            last_progress = done;
            if measuring && slot.started >= window_start && count < opts.connections {
                let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
                hs_hist.saturating_record(ns(slot.handshake_done.duration_since(slot.started)));
                conn_hist.saturating_record(ns(done.duration_since(slot.started)));
                count = count.saturating_add(1);
                if slot.link.resumed() {
                    resumed = resumed.saturating_add(1);
                }
                if negotiated.is_none() {
                    negotiated = slot.link.negotiated();
                }
            }
            if let Some(mut old) = entry.take() {
                old.link.close_notify();
                let _ = poll.registry().deregister(old.link.socket());
            }
            *entry = Some(open(client, tls, &poll, i, opened, opts.stall)?);
            opened = opened.saturating_add(1);
        }
    };

    progress.finish();
    let elapsed = window_end.duration_since(window_start).as_secs_f64();
    let cpu_s = cpu::seconds_between(&client.cpu_pids, cpu_before, cpu_after, client.clk_tck);
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let countf = count as f64;
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds below 2^52")]
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(Report {
        mode: "handshake",
        label: client.label.clone(),
        target: client.target.to_string(),
        concurrency: opts.concurrency,
        resume,
        handshakes: count,
        resumed,
        elapsed_s: elapsed,
        handshakes_per_s: if elapsed > 0.0 { countf / elapsed } else { 0.0 },
        handshake_p50_us: us(hs_hist.value_at_quantile(0.50)),
        handshake_p99_us: us(hs_hist.value_at_quantile(0.99)),
        conn_p50_us: us(conn_hist.value_at_quantile(0.50)),
        conn_p99_us: us(conn_hist.value_at_quantile(0.99)),
        negotiated,
        gateway_cpu_s: cpu_s,
        gateway_cpu_ms_per_handshake: cpu_s.filter(|_| count > 0).map(|s| s * 1e3 / countf),
        handshakes_per_gateway_cpu_s: cpu_s.filter(|s| *s > 0.0).map(|s| countf / s),
    })
}

/// Connects (blocking: loopback connects complete at once), starts the handshake.
fn open(
    client: &ClientArgs,
    tls: Option<&Client>,
    poll: &Poll,
    slot: usize,
    index: usize,
    stall: Duration,
) -> Result<Slot, LoadError> {
    let started = Instant::now();
    let addr = client.target;
    let std_stream = std::net::TcpStream::connect_timeout(&addr, stall).map_err(|source| {
        LoadError::Connect {
            index,
            addr,
            source,
        }
    })?;
    let io_err = |op| move |source| LoadError::Io { index, op, source };
    std_stream
        .set_nodelay(true)
        .map_err(io_err("set_nodelay"))?;
    std_stream
        .set_nonblocking(true)
        .map_err(io_err("set_nonblocking"))?;
    let mut stream = TcpStream::from_std(std_stream);
    poll.registry()
        .register(
            &mut stream,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(LoadError::Poll)?;
    let mut s = Slot {
        index,
        link: Link::new(stream, tls.map(|t| t.session(index)).transpose()?),
        step: Step::Handshake,
        started,
        handshake_done: started,
    };
    // The ClientHello goes out now; the rest is driven by readiness events.
    s.link.flush_tls().map_err(|source| LoadError::Handshake {
        index,
        reason: source.to_string(),
    })?;
    Ok(s)
}

/// Moves one connection on. `Ok(true)` once its echo is back.
fn advance(s: &mut Slot) -> Result<bool, LoadError> {
    let index = s.index;
    if s.step == Step::Handshake {
        let done = s.link.drive_handshake().map_err(|e| LoadError::Handshake {
            index,
            reason: e.to_string(),
        })?;
        if !done {
            return Ok(false);
        }
        s.handshake_done = Instant::now();
        s.step = Step::Echo;
        s.link.write_all(b"h").map_err(|source| LoadError::Io {
            index,
            op: "write probe byte",
            source,
        })?;
    }
    // Queued TLS bytes the socket did not take at once go out on a writable event.
    s.link.flush_tls().map_err(|source| LoadError::Io {
        index,
        op: "write",
        source,
    })?;
    let mut one = [0u8; 1];
    match s.link.read(&mut one) {
        Ok(1) if one == *b"h" => Ok(true),
        Ok(1) => Err(LoadError::Mismatch {
            index,
            seq: 0,
            got: String::from_utf8_lossy(&one).into_owned(),
        }),
        Ok(_) => Err(LoadError::Refused { index }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(source) => Err(LoadError::Io {
            index,
            op: "read probe echo",
            source,
        }),
    }
}
