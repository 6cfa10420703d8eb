//! zgate's data path: the `zgate` binary's library.
//!
//! What it does: proxies TCP from configured listeners to their upstreams. One worker
//! thread per configured core, pinned, each with its own io_uring, its own
//! `SO_REUSEPORT` listener socket per listener, its own connection slab and buffers.
//! Every new flow is decided by the published [`zgate_table::DecisionTable`]; with no
//! table every flow is denied (fail closed). A supervisor thread handles signals
//! (drain, table reload), the admin endpoint, the operator socket and the control
//! channel, never waits on one of their clients, and never touches a flow.
//!
//! Live flows are re-decided when a new table is published and when their decision's
//! constraints expire; flows no longer allowed are closed. Data buffers come from a
//! per-worker provided buffer ring only while data is in flight, so an idle flow holds
//! no buffer.
//!
//! Listeners with `[listener.tls]` terminate TLS (through `zgate-tls`): the flow is
//! decided after the handshake, with the verified client identity, before anything
//! reaches the upstream. TLS material and CRLs reload live; `[listener.upstream_tls]`
//! re-encrypts toward the upstream; the operator socket answers `status`, `reload` and
//! `drain`.
//!
//! With `[control]` the supervisor subscribes to a control process (`zgate-control
//! serve`, `channel`): tables and live facts (revocations by identity, posture, risk,
//! grants) arrive over that channel, are persisted in the state directory, and every
//! live flow they touch is re-decided; without the control process the gateway
//! enforces what it last persisted. What is still to come is in
//! `docs/architecture.md`, "Next".
//!
//! Invariants:
//! - `unsafe` lives only in the private `sys` module; every block says who owns the
//!   memory and until when.
//! - A connection's memory is freed only after every SQE pushed for it has completed.
//! - Nothing on a worker's path waits for another thread. What workers share is read
//!   mostly, and written rarely or by one side only: the published block (read; the
//!   supervisor writes it on a reload), their own counters (written by the worker,
//!   read by the supervisor), each worker's own audit queue (lock-free, one pusher),
//!   and, inside rustls, the listener's session-ticket key rotator, whose lock a
//!   resuming or ticket-issuing handshake takes once for reading (0.3 µs more under
//!   contention, about 0.1 % of a handshake's CPU; docs/architecture.md).
#![deny(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod channel;
pub mod clients;
pub mod config;
#[expect(
    clippy::disallowed_methods,
    reason = "the demo is a client of the gateway, not part of it: it times steps and waits"
)]
pub mod demo;
pub mod doctor;
pub mod latency;
pub mod metrics;
pub mod operator;
pub mod postgres;
pub mod process;
pub mod shared;
pub mod supervisor;
pub mod tls;
pub mod worker;

#[expect(
    unsafe_code,
    reason = "the one module that prepares SQEs and makes raw socket calls (STYLE E.12)"
)]
mod sys;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit before and
/// after. `zgate run` calls it at start; tests that open many sockets call it too.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    sys::raise_nofile_limit()
}

/// Signals `zgate demo` sends to the gateway it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload the table.
    Hangup,
    /// SIGTERM: drain and exit.
    Terminate,
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let raw = match signal {
        Signal::Hangup => libc::SIGHUP,
        Signal::Terminate => libc::SIGTERM,
    };
    sys::send_signal(pid, raw)
}

/// A blocking TCP connection to `to` whose local address is `from`.
pub fn connect_from(
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    sys::connect_from(from, to)
}
