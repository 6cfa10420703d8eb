//! `revoke`: how long a revocation takes to reach live flows, measured where the
//! client sees its connection end.
//!
//! It opens `--flows` mTLS connections: `--affected` of them as the round's victim
//! identity, the rest as a bystander identity that stays; with `--also-target`, spread
//! in turn over several gateways (a fleet: the last close is then the last gateway's). Then it sends the
//! revocation to the control process's HTTP/JSON API (`POST /v1/revocations` with a
//! bearer token) and, from just before the request's first byte, times the moment
//! each victim connection is ended by the gateway (reset or end of stream), with one
//! epoll loop over all of them. Each round uses the next `--victim` identity (fresh
//! connections); the bystanders are checked to still echo after every round.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;

use crate::tls::{Client, Link, TlsArgs};
use crate::LoadError;

/// One round's victim: its certificate, key and SPIFFE ID.
#[derive(Debug, Clone)]
pub struct Victim {
    cert: PathBuf,
    key: PathBuf,
    id: String,
}

impl std::str::FromStr for Victim {
    type Err = String;
    fn from_str(s: &str) -> Result<Victim, String> {
        let mut p = s.splitn(3, ',');
        match (p.next(), p.next(), p.next()) {
            (Some(c), Some(k), Some(id)) if !id.is_empty() => Ok(Victim {
                cert: c.into(),
                key: k.into(),
                id: id.to_string(),
            }),
            _ => Err("expected CERT,KEY,SPIFFE_ID".into()),
        }
    }
}

/// What `revoke` measures.
pub struct RevokeArgs {
    /// The gateways' mTLS listeners; flow `i` goes to `targets[i % len]`.
    pub targets: Vec<SocketAddr>,
    /// TLS settings; `cert`/`key` are the bystander's.
    pub tls: TlsArgs,
    /// One per round.
    pub victims: Vec<Victim>,
    /// Live flows per round.
    pub flows: usize,
    /// Of those, the victim's.
    pub affected: usize,
    /// The control process's API.
    pub api: SocketAddr,
    /// Its bearer token.
    pub token: String,
    /// Give up on a round after this long.
    pub timeout: Duration,
}

/// The report (one JSON line).
#[derive(Debug, serde::Serialize)]
pub struct RevokeReport {
    /// `revoke`.
    pub mode: &'static str,
    /// Gateways the flows were spread over.
    pub gateways: usize,
    /// Rounds run.
    pub rounds: usize,
    /// Live flows per round.
    pub flows: usize,
    /// Victim flows per round.
    pub affected: usize,
    /// From the revocation request's first byte to each victim flow's end, over all
    /// rounds: microseconds.
    pub close_p50_us: f64,
    /// 99th percentile.
    pub close_p99_us: f64,
    /// Maximum.
    pub close_max_us: f64,
    /// From the control process accepting the revocation (stored durably; its answer
    /// says when, `accepted_unix_us`) to each victim flow's end: microseconds.
    pub accepted_close_p50_us: f64,
    /// 99th percentile.
    pub accepted_close_p99_us: f64,
    /// Maximum.
    pub accepted_close_max_us: f64,
    /// Per round, the last victim flow's end.
    pub last_close_us: Vec<f64>,
    /// Per round, the API's answer (the change stored and pushed).
    pub api_answer_us: Vec<f64>,
    /// Bystander flows that failed to echo after a round (must be 0).
    pub bystanders_lost: usize,
}

/// Open one mTLS connection and finish its handshake (blocking), then hand back the
/// non-blocking mio socket and session.
fn open(
    target: SocketAddr,
    client: &Client,
    index: usize,
) -> Result<(mio::net::TcpStream, ClientConnection), LoadError> {
    let s = TcpStream::connect(target).map_err(|source| LoadError::Connect {
        index,
        addr: target,
        source,
    })?;
    s.set_nodelay(true).map_err(|source| LoadError::Io {
        index,
        op: "nodelay",
        source,
    })?;
    let mut link = Link::new(s, Some(client.session(index)?));
    // A byte through proves the flow was admitted (the decision follows the handshake).
    let io = |op: &'static str| move |source| LoadError::Io { index, op, source };
    link.write_all(b"x").map_err(io("write"))?;
    link.flush().map_err(io("flush"))?;
    let mut b = [0u8; 1];
    link.read_exact(&mut b).map_err(io("read"))?;
    let (sock, conn) = link.into_parts();
    sock.set_nonblocking(true).map_err(io("nonblocking"))?;
    let conn = conn.ok_or(LoadError::Tls {
        reason: "no TLS session".into(),
    })?;
    Ok((mio::net::TcpStream::from_std(sock), conn))
}

/// Whether the flow still echoes (blocking, bounded).
fn echoes(sock: &mut mio::net::TcpStream, conn: &mut ClientConnection) -> bool {
    let ok = (|| -> io::Result<bool> {
        let mut std = blocking_clone(sock)?;
        let mut s = rustls::Stream::new(conn, &mut std);
        s.write_all(b"y")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        std.set_nonblocking(true)?;
        Ok(b == *b"y")
    })();
    ok.unwrap_or(false)
}

/// A blocking clone of the socket with a read timeout (the clone shares the file
/// description; mio's stream stays registered).
fn blocking_clone(sock: &mio::net::TcpStream) -> io::Result<TcpStream> {
    use std::os::fd::{AsFd, BorrowedFd};
    let fd: BorrowedFd<'_> = sock.as_fd();
    let owned = fd.try_clone_to_owned()?;
    let s = TcpStream::from(owned);
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// POST the revocation; returns the open socket (the answer is read later).
fn send_revoke(api: SocketAddr, token: &str, id: &str) -> Result<TcpStream, LoadError> {
    let mut s = TcpStream::connect(api).map_err(|source| LoadError::Connect {
        index: 0,
        addr: api,
        source,
    })?;
    s.set_nodelay(true).ok();
    let body = format!("{{\"principal\":\"{id}\",\"reason\":\"zgate-bench revoke benchmark\"}}");
    let req = format!(
        "POST /v1/revocations HTTP/1.1\r\nHost: zgate-control\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|source| LoadError::Io {
            index: 0,
            op: "revoke request",
            source,
        })?;
    Ok(s)
}

/// Run every round.
pub fn run(a: &RevokeArgs) -> Result<RevokeReport, LoadError> {
    let bystander = a.tls.client(false)?.ok_or(LoadError::Arg {
        arg: "tls",
        reason: "revoke measures mTLS flows: --tls is required",
    })?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| LoadError::Tls {
            reason: e.to_string(),
        })?;
    let mut accepted =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| LoadError::Tls {
            reason: e.to_string(),
        })?;
    let target = |i: usize| -> Result<SocketAddr, LoadError> {
        a.targets
            .get(i % a.targets.len().max(1))
            .copied()
            .ok_or(LoadError::Arg {
                arg: "target",
                reason: "no gateway to measure",
            })
    };
    let others = a.flows.saturating_sub(a.affected);
    let mut stay: Vec<(mio::net::TcpStream, ClientConnection)> = (0..others)
        .map(|i| open(target(i)?, &bystander, i))
        .collect::<Result<_, _>>()?;
    let mut report = RevokeReport {
        mode: "revoke",
        gateways: a.targets.len(),
        rounds: a.victims.len(),
        flows: a.flows,
        affected: a.affected,
        close_p50_us: 0.0,
        close_p99_us: 0.0,
        close_max_us: 0.0,
        accepted_close_p50_us: 0.0,
        accepted_close_p99_us: 0.0,
        accepted_close_max_us: 0.0,
        last_close_us: Vec::new(),
        api_answer_us: Vec::new(),
        bystanders_lost: 0,
    };
    let mut poll = Poll::new().map_err(|source| LoadError::Io {
        index: 0,
        op: "epoll",
        source,
    })?;
    for (round, v) in a.victims.iter().enumerate() {
        let vt = TlsArgs {
            cert: Some(v.cert.clone()),
            key: Some(v.key.clone()),
            ..a.tls.clone()
        }
        .client(false)?
        .ok_or(LoadError::Arg {
            arg: "victim",
            reason: "no client",
        })?;
        let mut victims: Vec<(mio::net::TcpStream, ClientConnection)> = (0..a.affected)
            .map(|i| open(target(i)?, &vt, others + i))
            .collect::<Result<_, _>>()?;
        for (i, (s, _)) in victims.iter_mut().enumerate() {
            poll.registry()
                .register(s, Token(i), Interest::READABLE)
                .map_err(|source| LoadError::Io {
                    index: i,
                    op: "register",
                    source,
                })?;
        }
        let t0 = Instant::now();
        let wall0_us = wall_us();
        let api = send_revoke(a.api, &a.token, &v.id)?;
        api.set_nonblocking(true).ok();
        let mut api = mio::net::TcpStream::from_std(api);
        let api_token = Token(usize::MAX - 1);
        poll.registry()
            .register(&mut api, api_token, Interest::READABLE)
            .map_err(|source| LoadError::Io {
                index: 0,
                op: "register api",
                source,
            })?;
        let mut open_left = victims.len();
        let mut ended = vec![false; victims.len()];
        let mut answer: Vec<u8> = Vec::new();
        let mut answered: Option<Duration> = None;
        let mut last = Duration::ZERO;
        let mut closes: Vec<Duration> = Vec::with_capacity(victims.len());
        let mut events = Events::with_capacity(1024);
        let mut buf = [0u8; 4096];
        while (open_left > 0 || answered.is_none()) && t0.elapsed() < a.timeout {
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .map_err(|source| LoadError::Io {
                    index: 0,
                    op: "epoll_wait",
                    source,
                })?;
            let now = t0.elapsed();
            for ev in events.iter() {
                if ev.token() == api_token {
                    loop {
                        match api.read(&mut buf) {
                            Ok(0) => {
                                answered.get_or_insert(now);
                                break;
                            }
                            Ok(n) => answer.extend_from_slice(buf.get(..n).unwrap_or(&[])),
                            Err(_) => break,
                        }
                    }
                    continue;
                }
                let i = ev.token().0;
                let Some((s, _)) = victims.get_mut(i) else {
                    continue;
                };
                if ended.get(i).copied().unwrap_or(true) {
                    continue;
                }
                // The gateway resets a revoked flow: the read ends or fails. Stray TLS
                // bytes (a ticket) are read past.
                let gone = loop {
                    match s.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                        Err(_) => break true,
                    }
                };
                if gone {
                    if let Some(e) = ended.get_mut(i) {
                        *e = true;
                    }
                    open_left -= 1;
                    let ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX).max(1);
                    hist.record(ns).ok();
                    closes.push(now);
                    last = last.max(now);
                }
            }
        }
        if open_left > 0 {
            return Err(LoadError::Tls {
                reason: format!(
                    "round {round}: {open_left} of {} victim flows still open after {:?}",
                    victims.len(),
                    a.timeout
                ),
            });
        }
        let head = String::from_utf8_lossy(&answer);
        if !head.starts_with("HTTP/1.1 200") {
            return Err(LoadError::Tls {
                reason: format!("round {round}: the API answered: {head}"),
            });
        }
        // The acceptance instant, on the same machine's wall clock.
        let accepted_us = head
            .split("\"accepted_unix_us\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(|| LoadError::Tls {
                reason: format!("round {round}: no accepted_unix_us in the answer: {head}"),
            })?;
        let offset_us = accepted_us - wall0_us;
        for c in &closes {
            let since_us = i64::try_from(c.as_micros()).unwrap_or(i64::MAX) - offset_us;
            accepted
                .record(u64::try_from(since_us.max(1)).unwrap_or(1))
                .ok();
        }
        report.last_close_us.push(last.as_secs_f64() * 1e6);
        report
            .api_answer_us
            .push(answered.unwrap_or_default().as_secs_f64() * 1e6);
        for (s, _) in &mut victims {
            let _ = poll.registry().deregister(s);
        }
        for (s, c) in &mut stay {
            if !echoes(s, c) {
                report.bystanders_lost += 1;
            }
        }
    }
    report.close_p50_us = hist.value_at_quantile(0.5) as f64 / 1e3;
    report.close_p99_us = hist.value_at_quantile(0.99) as f64 / 1e3;
    report.close_max_us = hist.max() as f64 / 1e3;
    report.accepted_close_p50_us = accepted.value_at_quantile(0.5) as f64;
    report.accepted_close_p99_us = accepted.value_at_quantile(0.99) as f64;
    report.accepted_close_max_us = accepted.max() as f64;
    Ok(report)
}

/// Wall-clock Unix microseconds (to line up with the control process's timestamps).
fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
