//! The upstream: mio (epoll) threads that echo every byte back, or with `sink` read and
//! discard. One thread by default; `--threads N` runs N, each with its own epoll set
//! watching the same listening socket (whichever accepts a connection serves it), so a
//! many-core benchmark is not bounded by its upstream. A connection whose echo cannot be
//! written stops being read until its pending bytes are out (bounded memory: at most
//! one read buffer each).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::LoadError;

const LISTENER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    /// Echo bytes not yet written back; reading pauses while this is non-empty.
    pending: Vec<u8>,
    pending_at: usize,
    eof: bool,
}

/// Serves with `threads` threads until `max_runtime` passes (the benchmark script kills
/// it sooner).
pub fn run(
    addr: SocketAddr,
    sink: bool,
    threads: usize,
    max_runtime: Duration,
) -> Result<(), LoadError> {
    if threads == 0 {
        return Err(LoadError::Arg {
            arg: "threads",
            reason: "must be at least 1",
        });
    }
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| LoadError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| LoadError::Bind { addr, source })?;
    eprintln!(
        "zgate-bench: serving on {addr} ({}, {threads} thread{})",
        if sink { "sink" } else { "echo" },
        if threads == 1 { "" } else { "s" }
    );
    let mut copies = Vec::with_capacity(threads);
    for _ in 0..threads {
        copies.push(
            listener
                .try_clone()
                .map_err(|source| LoadError::Bind { addr, source })?,
        );
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = copies
            .into_iter()
            .map(|l| scope.spawn(move || serve(TcpListener::from_std(l), sink, max_runtime)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(LoadError::Thread)))
            .collect::<Result<Vec<()>, LoadError>>()
            .map(|_| ())
    })
}

/// One serving thread: its own epoll set, the shared listener, its own connections.
fn serve(mut listener: TcpListener, sink: bool, max_runtime: Duration) -> Result<(), LoadError> {
    let mut poll = Poll::new().map_err(LoadError::Poll)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(LoadError::Poll)?;

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; READ_BUF];
    let mut events = Events::with_capacity(1024);
    let end = Instant::now() + max_runtime;

    while Instant::now() < end {
        match poll.poll(&mut events, Some(Duration::from_secs(1))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LoadError::Poll(e)),
        }
        for ev in &events {
            if ev.token() == LISTENER {
                accept_all(&listener, &poll, &mut conns, &mut free)?;
                continue;
            }
            let idx = ev.token().0;
            let Some(slot) = conns.get_mut(idx) else {
                continue;
            };
            let Some(conn) = slot.as_mut() else { continue };
            // Any error on one connection closes that connection only.
            let keep = service(conn, sink, &mut buf, &poll, ev.token()).unwrap_or(false);
            if !keep {
                if let Some(mut c) = slot.take() {
                    // Deregistering a socket we are about to drop cannot matter if it fails.
                    let _ = poll.registry().deregister(&mut c.stream);
                }
                free.push(idx);
            }
        }
    }
    Ok(())
}

fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    conns: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
) -> Result<(), LoadError> {
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // EMFILE, ECONNABORTED...: say so, keep serving the others.
            Err(e) => {
                eprintln!("zgate-bench: accept: {e}");
                return Ok(());
            }
        };
        // Latency benchmark: never let Nagle hold an echo back.
        let _ = stream.set_nodelay(true);
        let idx = match free.pop() {
            Some(i) => i,
            None => {
                conns.push(None);
                conns.len().saturating_sub(1)
            }
        };
        poll.registry()
            .register(&mut stream, Token(idx), Interest::READABLE)
            .map_err(LoadError::Poll)?;
        if let Some(slot) = conns.get_mut(idx) {
            *slot = Some(Conn {
                stream,
                pending: Vec::new(),
                pending_at: 0,
                eof: false,
            });
        }
    }
}

/// Moves what it can on one ready connection. `Ok(false)`: close it.
fn service(
    conn: &mut Conn,
    sink: bool,
    buf: &mut [u8],
    poll: &Poll,
    token: Token,
) -> io::Result<bool> {
    if !flush(conn)? {
        return Ok(true); // still blocked on writing; readable edges wait for us
    }
    if conn.eof {
        return Ok(false);
    }
    loop {
        let n = match conn.stream.read(buf) {
            Ok(0) => {
                conn.eof = true;
                return Ok(false);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if sink {
            continue;
        }
        let data = buf.get(..n).unwrap_or_default();
        let mut at = 0;
        while at < n {
            match conn.stream.write(data.get(at..).unwrap_or_default()) {
                Ok(0) => return Ok(false),
                Ok(w) => at = at.saturating_add(w),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Park the rest, stop reading until the peer drains it.
                    conn.pending.clear();
                    conn.pending
                        .extend_from_slice(data.get(at..).unwrap_or_default());
                    conn.pending_at = 0;
                    poll.registry().reregister(
                        &mut conn.stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    return Ok(true);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes parked echo bytes. `Ok(true)`: nothing left pending.
fn flush(conn: &mut Conn) -> io::Result<bool> {
    while conn.pending_at < conn.pending.len() {
        match conn
            .stream
            .write(conn.pending.get(conn.pending_at..).unwrap_or_default())
        {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => conn.pending_at = conn.pending_at.saturating_add(w),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    conn.pending.clear();
    conn.pending_at = 0;
    Ok(true)
}
