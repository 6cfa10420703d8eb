//! `zgate-bench`: the load generator for zgate's end-to-end benchmarks.
//!
//! What it is for: measuring a TCP gateway from the outside, the same way for zgate,
//! HAProxy and nginx, so `tools/bench-proxy.sh` can put them side by side in one run.
//! It has five modes:
//!
//! - `serve`: the upstream. Echoes every byte back (`--sink`: discards them), one
//!   mio/epoll thread, optionally pinned to a core.
//! - `pingpong`: N connections, each sends a message and waits for its whole echo
//!   before sending the next (closed loop). Per-request latency goes into an HDR
//!   histogram; one JSON line reports p50/p99/p99.9/max and messages per second.
//! - `bulk`: moves M bytes one way (client to upstream), or with `--both` both ways
//!   through an echo, and reports bytes per second.
//! - `idle`: opens N connections, proves each one carries a byte, and holds them.
//! - `handshake`: fresh TLS connections, `--concurrency` at a time, each with a full
//!   (or `--resume`d) mTLS handshake and a one-byte echo; handshakes per second and
//!   gateway CPU per handshake.
//!
//! Every client mode takes `--tls --ca --cert --key`: TLS 1.3 with a client certificate
//! (rustls, ring), so the same load runs against a TLS-terminating gateway.
//!
//! With `--cpu-pid PID` (repeatable) the client reads the gateway's user+system CPU
//! time from `/proc/PID/stat` at the start and end of the measured window, so CPU per
//! request and bytes per CPU-second cover exactly the requests that were counted.
//!
//! What it does not do: start, configure or stop gateways (the script does that), or
//! judge results against targets (the report in `docs/benchmarks.md` does).
//!
//! Invariants: every loop is bounded by a count and by time (`--requests` and
//! `--duration-s`, `--bytes` and `--duration-s`, `--max-runtime-s`); a reply that
//! differs from its request, a peer that closes early or a path that stalls is an
//! error (exit 1), never a silently smaller number.
#![forbid(unsafe_code)]

mod bulk;
mod cpu;
mod handshake;
mod idle;
mod pingpong;
mod plot;
mod report;
mod revoke;
mod serve;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// zgate-bench: echo upstream and load clients for gateway benchmarks.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

/// Options every client mode shares.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Address to connect to: the gateway's listener, or the upstream for a direct run.
    #[arg(long)]
    target: SocketAddr,
    /// Pin this process's threads to this core.
    #[arg(long)]
    core: Option<usize>,
    /// Gateway process whose CPU time is measured over the run (repeatable: summed).
    #[arg(long = "cpu-pid")]
    cpu_pids: Vec<u32>,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Free text copied into the JSON line, to tell runs apart.
    #[arg(long, default_value = "")]
    label: String,
    /// A connection with a request in flight and no progress for this long is an error.
    #[arg(long, default_value_t = 5.0)]
    stall_s: f64,
    /// Scripts: the JSON line only (no summary on stderr, no progress line).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: tls::TlsArgs,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Serve as the upstream: echo every byte back (or discard with --sink).
    Serve {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Pin to this core.
        #[arg(long)]
        core: Option<usize>,
        /// Discard what arrives instead of echoing it (for `bulk`).
        #[arg(long)]
        sink: bool,
        /// Serving threads (each its own epoll set on the same listener): enough that
        /// the upstream is not what a many-core run measures.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Exit after this many seconds whatever happens.
        #[arg(long, default_value_t = 3600.0)]
        max_runtime_s: f64,
    },
    /// Closed-loop request/echo latency over N connections.
    Pingpong {
        #[command(flatten)]
        client: ClientArgs,
        /// Concurrent connections, each with one request in flight.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Stop after this many measured requests...
        #[arg(long, default_value_t = 1_000_000)]
        requests: u64,
        /// ...or after this many measured seconds, whichever comes first.
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        /// Unmeasured warm-up before the window opens.
        #[arg(long, default_value_t = 1.0)]
        warmup_s: f64,
        /// Request (and echo) size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Open loop: this many requests per second over all connections, each timed
        /// from when it was due (coordinated omission corrected).
        #[arg(long)]
        rate: Option<f64>,
        /// Write the latency distribution here (HdrHistogram `.hgrm` text).
        #[arg(long)]
        hgrm: Option<std::path::PathBuf>,
        /// `raw` (echoed bytes) or `resp` (Redis SET then GET of a --size value, for a
        /// real Redis behind the gateway).
        #[arg(long, value_enum, default_value = "raw")]
        payload: pingpong::Payload,
    },
    /// Move bytes one way, client to upstream (the upstream should be a --sink).
    Bulk {
        #[command(flatten)]
        client: ClientArgs,
        /// Parallel connections; the bytes are split evenly over them.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Total bytes to send...
        #[arg(long, default_value_t = 4 << 30)]
        bytes: u64,
        /// ...or stop sending after this many seconds, whichever comes first.
        #[arg(long, default_value_t = 20.0)]
        duration_s: f64,
        /// Size of each write.
        #[arg(long, default_value_t = 64 * 1024)]
        chunk: usize,
        /// Both ways at once through an echo upstream (not a --sink): every byte sent
        /// must come back; bytes per second count both directions.
        #[arg(long)]
        both: bool,
    },
    /// Connection rate: fresh connections (with --tls: a TLS handshake each), a one-byte
    /// echo, close; repeat.
    Handshake {
        #[command(flatten)]
        client: ClientArgs,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Stop after this many measured connections...
        #[arg(long, default_value_t = 1_000_000)]
        connections: u64,
        /// ...or after this many measured seconds, whichever comes first.
        #[arg(long, default_value_t = 10.0)]
        duration_s: f64,
        /// Unmeasured warm-up before the window opens.
        #[arg(long, default_value_t = 1.0)]
        warmup_s: f64,
        /// Keep session tickets and resume with them (TLS 1.3 PSK with (EC)DHE).
        #[arg(long)]
        resume: bool,
    },
    /// Open N connections, check each carries a byte, hold them, then close.
    Idle {
        #[command(flatten)]
        client: ClientArgs,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them open once all are up.
        #[arg(long, default_value_t = 10.0)]
        hold_s: f64,
    },
    /// Draw .hgrm files as a percentile spectrum (PNG), or with --cpu, a JSON results
    /// file as p99 against gateway CPU per request.
    Plot {
        /// `.hgrm` files (one line each, named by the file), or with --cpu one JSON
        /// results file.
        #[arg(required = true)]
        inputs: Vec<std::path::PathBuf>,
        /// The PNG to write.
        #[arg(short, long)]
        output: std::path::PathBuf,
        /// Chart p99 against gateway CPU per request from JSON result lines.
        #[arg(long)]
        cpu: bool,
        /// Title.
        #[arg(long, default_value = "latency by percentile")]
        title: String,
        /// A TrueType font for the labels.
        #[arg(
            long,
            default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
        )]
        font: std::path::PathBuf,
    },
    /// Revocation latency: open --flows mTLS flows (--affected of them as the round's
    /// victim), revoke the victim through the control process's API, and time each
    /// victim flow's end from the request's first byte.
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// One round per victim: CERT,KEY,SPIFFE_ID (the bystander is --cert/--key).
        #[arg(long = "victim", required = true)]
        victims: Vec<revoke::Victim>,
        /// Live flows per round.
        #[arg(long, default_value_t = 1000)]
        flows: usize,
        /// Of those, the victim's.
        #[arg(long, default_value_t = 100)]
        affected: usize,
        /// The control process's HTTP/JSON API (`serve --api`).
        #[arg(long)]
        api: SocketAddr,
        /// A file holding the API bearer token (first line).
        #[arg(long)]
        token_file: std::path::PathBuf,
        /// More gateways of a fleet (mTLS listeners): the flows are spread in turn over
        /// --target and these.
        #[arg(long = "also-target")]
        also_targets: Vec<SocketAddr>,
    },
}

/// Everything that stops a run, with the connection or address it was about.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// OS error.
        source: io::Error,
    },
    /// A client connection could not be opened.
    #[error("connection {index}: cannot connect to {addr}: {source}")]
    Connect {
        /// Which connection (0-based).
        index: usize,
        /// Target address.
        addr: SocketAddr,
        /// OS error.
        source: io::Error,
    },
    /// A socket operation failed mid-run.
    #[error("connection {index}: {op} failed: {source}")]
    Io {
        /// Which connection (0-based).
        index: usize,
        /// The operation (`read`, `write`, ...).
        op: &'static str,
        /// OS error.
        source: io::Error,
    },
    /// The peer closed while a reply was still expected.
    #[error("connection {index}: closed by the peer after {replies} replies")]
    Closed {
        /// Which connection (0-based).
        index: usize,
        /// Replies it had received before.
        replies: u64,
    },
    /// A reply was not the one its request must get (raw: its echo byte for byte).
    #[error("connection {index}: the reply to request {seq} is not the one expected (it begins {got:?})")]
    Mismatch {
        /// Which connection (0-based).
        index: usize,
        /// The request's sequence number on that connection.
        seq: u64,
        /// The reply's first bytes.
        got: String,
    },
    /// The measured window closed without one complete request.
    #[error("no request completed in the measured window: is the upstream answering this payload (--payload)?")]
    NothingMeasured,
    /// Requests are in flight and nothing has progressed for too long.
    #[error("no progress for {secs} s with requests in flight: the path is stalled")]
    Stalled {
        /// The stall limit that was passed.
        secs: f64,
    },
    /// The epoll instance failed.
    #[error("poll: {0}")]
    Poll(io::Error),
    /// The core to pin to is not one this process may run on.
    #[error("cannot pin to core {core}: not in this process's allowed cores")]
    Pin {
        /// Core asked for.
        core: usize,
    },
    /// The gateway's CPU time could not be read.
    #[error("cannot read CPU time of pid {pid}: {reason}")]
    Cpu {
        /// Process asked for.
        pid: u32,
        /// What went wrong.
        reason: String,
    },
    /// A command-line value is out of range.
    #[error("--{arg}: {reason}")]
    Arg {
        /// The option.
        arg: &'static str,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The TLS client could not be set up (a file, a certificate, a key).
    #[error("TLS client set-up: {reason}")]
    Tls {
        /// What failed, naming the file.
        reason: String,
    },
    /// A TLS handshake failed or was refused.
    #[error("connection {index}: TLS handshake failed: {reason}")]
    Handshake {
        /// Which connection (0-based).
        index: usize,
        /// rustls' or the socket's reason (an alert from the peer, a bad certificate).
        reason: String,
    },
    /// The gateway closed a connection right after a successful handshake.
    #[error(
        "connection {index}: closed by the peer after the TLS handshake, before the echo \
         (denied by policy, or no upstream?)"
    )]
    Refused {
        /// Which connection (0-based).
        index: usize,
    },
    /// A worker thread of this tool died.
    #[error("a load thread panicked")]
    Thread,
}

/// Pins the calling thread (and threads it starts later) to `core`.
fn pin(core: Option<usize>) -> Result<(), LoadError> {
    let Some(core) = core else { return Ok(()) };
    let allowed = core_affinity::get_core_ids().unwrap_or_default();
    let id = allowed
        .into_iter()
        .find(|c| c.id == core)
        .ok_or(LoadError::Pin { core })?;
    if core_affinity::set_for_current(id) {
        Ok(())
    } else {
        Err(LoadError::Pin { core })
    }
}

/// A duration in seconds from the command line: finite and > 0.
fn seconds(arg: &'static str, secs: f64) -> Result<std::time::Duration, LoadError> {
    std::time::Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or(LoadError::Arg {
            arg,
            reason: "must be a number of seconds greater than zero",
        })
}

/// A duration in seconds from the command line that may be zero (a warm-up): finite
/// and >= 0.
fn seconds_or_zero(arg: &'static str, secs: f64) -> Result<std::time::Duration, LoadError> {
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| LoadError::Arg {
        arg,
        reason: "must be a number of seconds >= 0",
    })
}

fn run(cli: Cli) -> Result<(), LoadError> {
    match cli.mode {
        Mode::Serve {
            listen,
            core,
            sink,
            threads,
            max_runtime_s,
        } => {
            pin(core)?;
            serve::run(
                listen,
                sink,
                threads,
                seconds("max-runtime-s", max_runtime_s)?,
            )
        }
        Mode::Pingpong {
            client,
            connections,
            requests,
            duration_s,
            warmup_s,
            size,
            rate,
            hgrm,
            payload,
        } => {
            pin(client.core)?;
            let opts = pingpong::Options {
                connections,
                requests,
                duration: seconds("duration-s", duration_s)?,
                warmup: seconds_or_zero("warmup-s", warmup_s)?,
                size,
                stall: seconds("stall-s", client.stall_s)?,
                rate,
                hgrm,
                payload,
            };
            let tls = client.tls.client(false)?;
            let report = pingpong::run(&client, tls.as_ref(), &opts)?;
            report::print(&report, client.json);
            Ok(())
        }
        Mode::Bulk {
            client,
            connections,
            bytes,
            duration_s,
            chunk,
            both,
        } => {
            pin(client.core)?;
            let opts = bulk::Options {
                connections,
                bytes,
                duration: seconds("duration-s", duration_s)?,
                chunk,
                stall: seconds("stall-s", client.stall_s)?,
                both,
            };
            let tls = client.tls.client(false)?;
            let report = bulk::run(&client, tls.as_ref(), &opts)?;
            report::print(&report, client.json);
            Ok(())
        }
        Mode::Handshake {
            client,
            concurrency,
            connections,
            duration_s,
            warmup_s,
            resume,
        } => {
            pin(client.core)?;
            let tls = client.tls.client(resume)?;
            if resume && tls.is_none() {
                return Err(LoadError::Arg {
                    arg: "resume",
                    reason: "resumes TLS sessions: give --tls --ca (and --cert --key for mTLS)",
                });
            }
            let opts = handshake::Options {
                concurrency,
                connections,
                duration: seconds("duration-s", duration_s)?,
                warmup: seconds_or_zero("warmup-s", warmup_s)?,
                stall: seconds("stall-s", client.stall_s)?,
            };
            let report = handshake::run(&client, tls.as_ref(), resume, &opts)?;
            report::print(&report, client.json);
            Ok(())
        }
        Mode::Idle {
            client,
            connections,
            hold_s,
        } => {
            pin(client.core)?;
            let tls = client.tls.client(false)?;
            // Prints its line itself, before holding, so the caller can measure then.
            idle::run(
                &client,
                tls.as_ref(),
                connections,
                seconds("hold-s", hold_s)?,
                seconds("stall-s", client.stall_s)?,
            )
        }
        Mode::Plot {
            inputs,
            output,
            cpu,
            title,
            font,
        } => {
            if cpu {
                let [results] = inputs.as_slice() else {
                    return Err(LoadError::Arg {
                        arg: "cpu",
                        reason: "takes one JSON results file",
                    });
                };
                plot::latency_vs_cpu(results, &output, &title, &font)
            } else {
                plot::spectrum(&inputs, &output, &title, &font)
            }
        }
        Mode::Revoke {
            client,
            victims,
            flows,
            affected,
            api,
            token_file,
            also_targets,
        } => {
            pin(client.core)?;
            let token = std::fs::read_to_string(&token_file)
                .map_err(|e| LoadError::Tls {
                    reason: format!("{}: {e}", token_file.display()),
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let report = revoke::run(&revoke::RevokeArgs {
                targets: std::iter::once(client.target).chain(also_targets).collect(),
                tls: client.tls.clone(),
                victims,
                flows,
                affected,
                api,
                token,
                timeout: seconds("stall-s", client.stall_s)?,
            })?;
            report::print(&report, client.json);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
