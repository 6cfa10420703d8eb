//! Ping-pong, closed or open loop. Every connection has at most one request in flight;
//! one mio thread drives every connection, so the client adds no context switches of
//! its own and connections are not lock-stepped.
//!
//! - Closed loop (default): when a whole echo is back (and matches), its latency is
//!   recorded and the next request leaves at once.
//! - Open loop (`--rate R`): requests are due on a fixed timetable, R per second over
//!   all connections (request j at `start + j / R`, on connection `j % N`), and each
//!   latency is measured from the request's *intended* send time, as wrk2 does. A
//!   gateway that stalls delays every request due meanwhile, and each of them counts
//!   the whole delay: coordinated omission is corrected. A connection still waiting for
//!   its last echo when its next request is due sends it late, and that lateness is
//!   part of the latency.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use crate::tls::{self, Client, Link};
use crate::{cpu, ClientArgs, LoadError};

/// What to run.
#[derive(Debug)]
pub struct Options {
    /// Concurrent connections.
    pub connections: usize,
    /// Measured requests to stop at.
    pub requests: u64,
    /// Measured time to stop at.
    pub duration: Duration,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Request size in bytes.
    pub size: usize,
    /// No progress for this long with requests in flight: error.
    pub stall: Duration,
    /// Open loop: requests per second over all connections (`None`: closed loop).
    pub rate: Option<f64>,
    /// Write the latency distribution here (HdrHistogram's `.hgrm` text format).
    pub hgrm: Option<std::path::PathBuf>,
    /// What the requests are.
    pub payload: Payload,
}

/// What each request carries, and what its reply must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// `--size` bytes, echoed back byte for byte (an echo upstream).
    Raw,
    /// Redis commands in RESP, for a real Redis behind the gateway: `SET` of a
    /// `--size`-byte value (reply `+OK`), then `GET` of it (reply: that value), in
    /// turn on each connection, each reply checked.
    Resp,
}

/// The JSON line `pingpong` prints. Latencies in microseconds.
#[derive(Debug, Serialize)]
pub struct Report {
    mode: &'static str,
    label: String,
    target: String,
    tls: bool,
    connections: usize,
    size: usize,
    requests: u64,
    elapsed_s: f64,
    msgs_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    mean_us: f64,
    p9999_us: f64,
    /// `raw` or `resp`.
    payload: Payload,
    /// Open loop: the rate asked for.
    target_rate: Option<f64>,
    /// Open loop: the p99 of the time from the actual send to the echo (what a closed
    /// loop would report), beside the corrected `p99_us`.
    service_p99_us: Option<f64>,
    /// Open loop: requests the client itself sent more than 1 ms after they were due
    /// while their connection was free (its own lateness: should be 0).
    client_late: Option<u64>,
    gateway_cpu_s: Option<f64>,
    gateway_cpu_us_per_req: Option<f64>,
}

struct Conn {
    stream: Link<TcpStream>,
    request: Vec<u8>,
    reply: Vec<u8>,
    /// RESP: the reply the request must get (raw: the request itself, not copied).
    expected: Option<Vec<u8>>,
    /// RESP: the value of the last `SET`, which the next `GET` must return.
    value: Vec<u8>,
    /// Bytes of the current request written / of its echo received.
    written: usize,
    got: usize,
    seq: u64,
    /// When the request in flight was due (open loop) or sent (closed loop): its
    /// latency is measured from here.
    sent_at: Instant,
    /// When it actually left (open loop: the service time starts here).
    left_at: Instant,
    in_flight: bool,
    replies: u64,
    /// Open loop: requests this connection has been due so far.
    due: u64,
}

impl Conn {
    /// Stamps the next request (sequence number in front, a pattern behind) so a stale
    /// or misrouted echo is caught by the byte comparison.
    fn prepare(&mut self, index: usize) {
        self.seq = self.seq.wrapping_add(1);
        let stamp = self.seq.to_le_bytes();
        let fill = |buf: &mut [u8]| {
            for (i, b) in buf.iter_mut().enumerate() {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a byte pattern, wraps on purpose"
                )]
                let pattern = (i ^ index) as u8;
                *b = stamp.get(i).copied().unwrap_or(pattern);
            }
        };
        if let Some(expected) = &mut self.expected {
            resp_next(
                &mut self.request,
                expected,
                &mut self.value,
                index,
                self.seq,
                fill,
            );
            self.reply.resize(expected.len(), 0);
        } else {
            fill(&mut self.request);
        }
        self.written = 0;
        self.got = 0;
        self.in_flight = true;
    }

    /// Writes as much of the request as the socket takes. `Ok(true)`: all of it.
    fn push(&mut self, index: usize) -> Result<bool, LoadError> {
        while self.written < self.request.len() {
            let rest = self.request.get(self.written..).unwrap_or_default();
            match self.stream.write(rest) {
                // TLS: rustls' send buffer is full until the socket takes more.
                Ok(0) if self.stream.wants_write() => return Ok(false),
                Ok(0) => {
                    return Err(LoadError::Closed {
                        index,
                        replies: self.replies,
                    })
                }
                Ok(n) => self.written = self.written.saturating_add(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(source) => {
                    return Err(LoadError::Io {
                        index,
                        op: "write",
                        source,
                    })
                }
            }
        }
        // TLS: records rustls still holds because the socket was full.
        self.stream.flush_tls().map_err(|source| LoadError::Io {
            index,
            op: "write",
            source,
        })?;
        Ok(!self.stream.wants_write())
    }

    /// Reads what has arrived. `Ok(true)`: the whole echo is in and matches.
    fn pull(&mut self, index: usize) -> Result<bool, LoadError> {
        while self.got < self.reply.len() {
            let room = self.reply.get_mut(self.got..).unwrap_or_default();
            match self.stream.read(room) {
                Ok(0) => {
                    return Err(LoadError::Closed {
                        index,
                        replies: self.replies,
                    })
                }
                Ok(n) => self.got = self.got.saturating_add(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(source) => {
                    return Err(LoadError::Io {
                        index,
                        op: "read",
                        source,
                    })
                }
            }
        }
        if self.reply != *self.expected.as_ref().unwrap_or(&self.request) {
            return Err(LoadError::Mismatch {
                index,
                seq: self.seq,
                got: String::from_utf8_lossy(self.reply.get(..40).unwrap_or(&self.reply))
                    .into_owned(),
            });
        }
        self.in_flight = false;
        self.replies = self.replies.saturating_add(1);
        Ok(true)
    }
}

/// Connects, warms up, measures, prints nothing (the caller prints the report).
pub fn run(client: &ClientArgs, tls: Option<&Client>, opts: &Options) -> Result<Report, LoadError> {
    if opts.connections == 0 {
        return Err(LoadError::Arg {
            arg: "connections",
            reason: "must be at least 1",
        });
    }
    if opts.size == 0 || opts.size > 1 << 20 {
        return Err(LoadError::Arg {
            arg: "size",
            reason: "must be 1 byte to 1 MiB",
        });
    }
    let mut poll = Poll::new().map_err(LoadError::Poll)?;
    let mut conns = connect_all(client, tls, opts, &poll)?;

    // At most 60 s of latency is recorded exactly (3 significant digits); more saturates.
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|_| LoadError::Arg {
            arg: "duration-s",
            reason: "histogram bounds refused",
        })?;

    let mut service =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|_| LoadError::Arg {
            arg: "duration-s",
            reason: "histogram bounds refused",
        })?;
    if let Some(r) = opts.rate {
        if !(r.is_finite() && r > 0.0 && r <= 10_000_000.0) {
            return Err(LoadError::Arg {
                arg: "rate",
                reason: "must be 0 < rate <= 10,000,000 requests/s",
            });
        }
    }
    let n = opts.connections;
    // Open loop: when request k of connection i is due, counted from `started`.
    #[expect(clippy::cast_precision_loss, reason = "request indices far below 2^52")]
    let due_at = |started: Instant, rate: f64, i: usize, k: u64| {
        started + Duration::from_secs_f64((k as f64 * n as f64 + i as f64) / rate)
    };

    let started = Instant::now();
    let measure_from = started + opts.warmup;
    let mut measuring = false;
    let mut window_start = measure_from;
    let mut cpu_before = cpu::sample(&client.cpu_pids)?;
    let mut count: u64 = 0;
    let mut client_late: u64 = 0;
    let mut last_progress = started;
    let mut events = Events::with_capacity(1024);
    // When each connection became free for its next request (open loop).
    let mut free_since: Vec<Instant> = vec![started; n];
    // Open loop: a timer in the epoll set wakes the loop when the next request is due
    // (epoll's own timeout is whole milliseconds, and spinning would starve an
    // upstream that shares the client's core).
    const TIMER: Token = Token(usize::MAX);
    let mut timer = match opts.rate {
        Some(_) => {
            let t = timerfd::TimerFd::new_custom(timerfd::ClockId::Monotonic, true, true)
                .map_err(LoadError::Poll)?;
            poll.registry()
                .register(
                    &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&t)),
                    TIMER,
                    Interest::READABLE,
                )
                .map_err(LoadError::Poll)?;
            Some(t)
        }
        None => None,
    };

    if opts.rate.is_none() {
        for (i, c) in conns.iter_mut().enumerate() {
            c.prepare(i);
            c.sent_at = Instant::now();
            c.left_at = c.sent_at;
            if !c.push(i)? {
                rearm(&poll, c, i, true)?;
            }
        }
    }

    let mut progress = crate::report::Progress::new(client.json, opts.duration, "requests");
    let (window_end, cpu_after) = loop {
        let now = Instant::now();
        if measuring {
            progress.tick(now, now.saturating_duration_since(window_start), count);
        }
        if !measuring && now >= measure_from {
            // Open the measured window: only requests due (or sent) from here on are
            // recorded.
            measuring = true;
            window_start = now;
            cpu_before = cpu::sample(&client.cpu_pids)?;
        }
        if measuring && (count >= opts.requests || now >= window_start + opts.duration) {
            let cpu_after = cpu::sample(&client.cpu_pids)?;
            break (now, cpu_after);
        }
        if conns.iter().any(|c| c.in_flight) && now.duration_since(last_progress) > opts.stall {
            return Err(LoadError::Stalled {
                secs: opts.stall.as_secs_f64(),
            });
        }
        // Open loop: send what is due on free connections; sleep until the next due.
        let mut timeout = Duration::from_millis(50);
        if let Some(rate) = opts.rate {
            for (i, c) in conns.iter_mut().enumerate() {
                if c.in_flight {
                    continue;
                }
                let due = due_at(started, rate, i, c.due);
                if due > now {
                    timeout = timeout.min(due - now);
                    continue;
                }
                // Late by more than 1 ms although the connection was free before the
                // request was due: the client's own lateness (reported, should be 0).
                let free = free_since.get(i).copied().unwrap_or(started);
                if free <= due && now.duration_since(due) > Duration::from_millis(1) {
                    client_late = client_late.saturating_add(1);
                }
                c.due = c.due.saturating_add(1);
                c.prepare(i);
                c.sent_at = due;
                c.left_at = Instant::now();
                if !c.push(i)? {
                    rearm(&poll, c, i, true)?;
                }
                last_progress = last_progress.max(c.left_at);
            }
            if let Some(t) = timer.as_mut() {
                // A zero duration would disarm it: at least a microsecond.
                t.set_state(
                    timerfd::TimerState::Oneshot(timeout.max(Duration::from_micros(1))),
                    timerfd::SetTimeFlags::Default,
                );
            }
            timeout = Duration::from_millis(50);
        }
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LoadError::Poll(e)),
        }
        for ev in &events {
            if ev.token() == TIMER {
                if let Some(t) = &timer {
                    let _expirations = t.read();
                }
                continue;
            }
            let i = ev.token().0;
            let Some(c) = conns.get_mut(i) else { continue };
            if !c.in_flight {
                continue;
            }
            if c.written < c.request.len() || c.stream.wants_write() {
                if !c.push(i)? {
                    continue;
                }
                rearm(&poll, c, i, false)?;
            }
            if !c.pull(i)? {
                continue;
            }
            let done = Instant::now();
            last_progress = done;
            // Replies that land in the same poll batch after the count is reached
            // are not recorded: the report never says more than --requests.
            if measuring && c.sent_at >= window_start && count < opts.requests {
                let ns =
                    u64::try_from(done.duration_since(c.sent_at).as_nanos()).unwrap_or(u64::MAX);
                hist.saturating_record(ns.max(1));
                let ns =
                    u64::try_from(done.duration_since(c.left_at).as_nanos()).unwrap_or(u64::MAX);
                service.saturating_record(ns.max(1));
                count = count.saturating_add(1);
                if count >= opts.requests {
                    continue; // the loop head closes the window
                }
            }
            if opts.rate.is_some() {
                if let Some(f) = free_since.get_mut(i) {
                    *f = done;
                }
                continue; // the next request leaves when it is due
            }
            c.prepare(i);
            c.sent_at = Instant::now();
            c.left_at = c.sent_at;
            if !c.push(i)? {
                rearm(&poll, c, i, true)?;
            }
        }
    };
    progress.finish();
    if count == 0 {
        // Nothing measured is not a result (e.g. a Redis given raw bytes never answers
        // in full): say so rather than print zeros.
        return Err(LoadError::NothingMeasured);
    }
    if let Some(path) = &opts.hgrm {
        std::fs::write(path, hgrm(&hist)).map_err(|e| LoadError::Tls {
            reason: format!("{}: {e}", path.display()),
        })?;
    }

    let elapsed = window_end.duration_since(window_start).as_secs_f64();
    let cpu_s = cpu::seconds_between(&client.cpu_pids, cpu_before, cpu_after, client.clk_tck);
    #[expect(
        clippy::cast_precision_loss,
        reason = "request counts are far below 2^52"
    )]
    let countf = count as f64;
    #[expect(
        clippy::cast_precision_loss,
        reason = "nanoseconds below 2^52 (60 s cap)"
    )]
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(Report {
        mode: if opts.rate.is_some() {
            "open-loop"
        } else {
            "pingpong"
        },
        label: client.label.clone(),
        target: client.target.to_string(),
        tls: tls.is_some(),
        connections: opts.connections,
        size: opts.size,
        requests: count,
        elapsed_s: elapsed,
        msgs_per_s: if elapsed > 0.0 { countf / elapsed } else { 0.0 },
        p50_us: us(hist.value_at_quantile(0.50)),
        p99_us: us(hist.value_at_quantile(0.99)),
        p999_us: us(hist.value_at_quantile(0.999)),
        max_us: us(hist.max()),
        mean_us: hist.mean() / 1000.0,
        p9999_us: us(hist.value_at_quantile(0.9999)),
        payload: opts.payload,
        target_rate: opts.rate,
        service_p99_us: opts.rate.map(|_| us(service.value_at_quantile(0.99))),
        client_late: opts.rate.map(|_| client_late),
        gateway_cpu_s: cpu_s,
        gateway_cpu_us_per_req: cpu_s.filter(|_| count > 0).map(|s| s * 1e6 / countf),
    })
}

/// The next RESP request of connection `index` (its `seq`-th): odd ones `SET` a fresh
/// value (filled by `fill`, so every value differs), even ones `GET` it back; and the
/// reply each must get. Buffers are reused.
fn resp_next(
    request: &mut Vec<u8>,
    expected: &mut Vec<u8>,
    value: &mut [u8],
    index: usize,
    seq: u64,
    fill: impl Fn(&mut [u8]),
) {
    use std::io::Write as _;
    let key = format!("zgate-bench:{index}");
    request.clear();
    expected.clear();
    if seq % 2 == 1 {
        fill(value);
        let _ = write!(
            request,
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        );
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        expected.extend_from_slice(b"+OK\r\n");
    } else {
        let _ = write!(request, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
        let _ = write!(expected, "${}\r\n", value.len());
        expected.extend_from_slice(value);
        expected.extend_from_slice(b"\r\n");
    }
}

/// Connects every connection (and, with TLS, completes its handshake) before any load.
fn connect_all(
    client: &ClientArgs,
    tls: Option<&Client>,
    opts: &Options,
    poll: &Poll,
) -> Result<Vec<Conn>, LoadError> {
    let mut conns = Vec::with_capacity(opts.connections);
    for index in 0..opts.connections {
        // The handshake runs blocking (bounded by the stall time), then the socket
        // turns non-blocking for the measured loop.
        let (std_stream, session) =
            tls::connect_blocking(client.target, index, tls, opts.stall)?.into_parts();
        let io_err = |op| move |source| LoadError::Io { index, op, source };
        std_stream
            .set_nodelay(true)
            .map_err(io_err("set_nodelay"))?;
        std_stream
            .set_nonblocking(true)
            .map_err(io_err("set_nonblocking"))?;
        let mut stream = Link::new(TcpStream::from_std(std_stream), session);
        poll.registry()
            .register(stream.socket(), Token(index), Interest::READABLE)
            .map_err(LoadError::Poll)?;
        conns.push(Conn {
            stream,
            request: vec![0; opts.size],
            reply: vec![0; opts.size],
            expected: (opts.payload == Payload::Resp).then(Vec::new),
            value: vec![0; opts.size],
            written: 0,
            got: 0,
            seq: 0,
            sent_at: Instant::now(),
            left_at: Instant::now(),
            in_flight: false,
            replies: 0,
            due: 0,
        });
    }
    Ok(conns)
}

/// Adds (or drops) write interest while a request is only partly written.
fn rearm(poll: &Poll, c: &mut Conn, index: usize, writable: bool) -> Result<(), LoadError> {
    let interest = if writable {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    poll.registry()
        .reregister(c.stream.socket(), Token(index), interest)
        .map_err(LoadError::Poll)
}

/// A histogram (nanoseconds) in HdrHistogram's percentile-distribution text format, in
/// milliseconds: what the HdrHistogram plotter (and `zgate-bench plot`) reads.
pub fn hgrm(h: &Histogram<u64>) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total: u64 = 0;
    for v in h.iter_quantiles(5) {
        total = total.saturating_add(v.count_since_last_iteration());
        let q = v.quantile_iterated_to();
        #[expect(clippy::cast_precision_loss, reason = "nanoseconds below 2^52")]
        let ms = v.value_iterated_to() as f64 / 1e6;
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{ms:12.3} {q:14.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{ms:12.3} {q:14.12} {total:10}");
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds below 2^52")]
    let (mean, sd, max) = (h.mean() / 1e6, h.stdev() / 1e6, h.max() as f64 / 1e6);
    let _ = writeln!(out, "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]");
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}
