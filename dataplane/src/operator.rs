//! The operator socket: a Unix stream socket the supervisor owns, for the operator (and
//! later `zgate-control`) to ask for a reload, a drain or the status, without signals
//! and with an answer.
//!
//! Protocol: one command per connection, one line (`status`, `reload` or `drain`, at
//! most 64 bytes), answered with one JSON line, then the supervisor closes the
//! connection. Who may ask is decided by the kernel's peer credentials (`SO_PEERCRED`),
//! not by anything the client says: only the uids in `[operator] users` (default: the
//! gateway's own uid) get an answer other than a refusal.
//!
//! The supervisor never waits on a client: the socket and its clients are
//! non-blocking ([`crate::clients`]), each client has two seconds in all to send its
//! line and take its answer, and at most 16 are open at once.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::clients::{Limits, Listening};
use crate::sys::{self, PollSet};

/// What a client may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Counters and state, as one JSON object.
    Status,
    /// What SIGHUP does: reload the table file and the TLS files, reopen the audit file.
    Reload,
    /// What SIGTERM does: stop accepting, let live flows finish up to `drain_timeout`.
    Drain,
}

/// How operator clients are served: a command line is at most 64 bytes, and a client
/// has two seconds for the whole exchange.
const LIMITS: Limits = Limits {
    max_open: 16,
    max_input: 64,
    deadline: Duration::from_secs(2),
};
/// What a client that sent no whole line in time is told.
const TOO_SLOW: &[u8] = b"{\"ok\":false,\"error\":\"no whole command line within 2s\"}\n";

/// Why the operator socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// Something other than a socket is at the path: never removed.
    #[error("operator socket `{path}`: the path exists and is not a socket")]
    NotASocket {
        /// The configured path.
        path: PathBuf,
    },
    /// A process answers on the socket: another gateway is running.
    #[error("operator socket `{path}`: another process is listening on it")]
    InUse {
        /// The configured path.
        path: PathBuf,
    },
    /// bind(2) or chmod failed.
    #[error("operator socket `{path}`: {source}")]
    Io {
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The bound socket and its clients. Removes its file when dropped.
pub struct OperatorSocket {
    socket: Listening<UnixListener>,
    path: PathBuf,
    users: Vec<u32>,
}

impl std::fmt::Debug for OperatorSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorSocket")
            .field("path", &self.path)
            .field("users", &self.users)
            .field("clients", &self.socket.clients.len())
            .finish_non_exhaustive()
    }
}

impl OperatorSocket {
    /// Bind `path`, admitting `users` (uids). A stale socket file left by a gateway that
    /// did not exit cleanly is replaced; a live one, or a file that is not a socket, is
    /// an error. The file is made `0600` when only the gateway's own uid (or root, which
    /// permissions do not stop) is admitted, else `0666`: then peer credentials alone
    /// decide.
    pub fn bind(path: &Path, users: Vec<u32>) -> Result<OperatorSocket, OperatorError> {
        let io_err = |source| OperatorError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(OperatorError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Ok(_) => match UnixStream::connect(path) {
                // Nobody listens: a gateway that did not exit cleanly left it.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(io_err)?;
                }
                Ok(_) => {
                    return Err(OperatorError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                // Not ours to judge (e.g. another user's socket): leave it alone.
                Err(e) => return Err(io_err(e)),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        let own = sys::effective_uid();
        let mode = if users.iter().all(|&u| u == own || u == 0) {
            0o600
        } else {
            0o666
        };
        listener.set_nonblocking(true).map_err(io_err)?;
        let bound = OperatorSocket {
            socket: Listening::new(listener, LIMITS, Some(TOO_SLOW)),
            path: path.to_path_buf(),
            users,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
        Ok(bound)
    }

    /// Give the socket file to `uid`:`gid` (the gateway switches to them once bound),
    /// so the gateway can still remove it when it exits.
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(&self.path, Some(uid), Some(gid))
    }

    /// The path bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Add the socket (while it may admit more clients) and its clients to `set`.
    pub fn watch(&mut self, set: &mut PollSet) {
        self.socket.watch(set);
    }

    /// The earliest client deadline, if any client is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.socket.next_deadline()
    }

    /// One supervisor turn: accept what is pending (a few), refuse uids that are not
    /// admitted at once, read what clients sent, and answer each whole command with
    /// `run`'s JSON (a line that is not a command is refused without calling it).
    pub fn turn(&mut self, now: Instant, set: &PollSet, mut run: impl FnMut(Command) -> String) {
        let users = &self.users;
        self.socket.accept_ready(set, |clients, stream| {
            match sys::peer_uid(stream.as_raw_fd()) {
                Ok(uid) if users.contains(&uid) => clients.admit(stream, now),
                Ok(uid) => clients.answer_at_once(
                    stream,
                    refusal(&format!("uid {uid} is not in `[operator] users`")),
                    now,
                ),
                Err(e) => clients.answer_at_once(
                    stream,
                    refusal(&format!("peer credentials unavailable: {e}")),
                    now,
                ),
            }
        });
        let complete = |input: &[u8]| input.iter().position(|&b| b == b'\n').map(|i| i + 1);
        self.socket
            .clients
            .turn(now, set, complete, |_, line| match parse(line) {
                Ok(command) => {
                    let mut answer = run(command).into_bytes();
                    answer.push(b'\n');
                    answer
                }
                Err(why) => refusal(&why),
            });
    }
}

/// One JSON line refusing the client with `why`.
fn refusal(why: &str) -> Vec<u8> {
    format!("{{\"ok\":false,\"error\":{}}}\n", json_string(why)).into_bytes()
}

/// The command on `line` (up to its newline), or why it is none.
fn parse(line: &[u8]) -> Result<Command, String> {
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    match line.trim_ascii() {
        b"status" => Ok(Command::Status),
        b"reload" => Ok(Command::Reload),
        b"drain" => Ok(Command::Drain),
        other => Err(format!(
            "unknown command `{}`: expected `status`, `reload` or `drain`",
            zgate_telemetry::bounded(&String::from_utf8_lossy(other))
        )),
    }
}

impl Drop for OperatorSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_what_json_requires() {
        assert_eq!(
            json_string("a\"b\\c\nd\u{1b}"),
            "\"a\\\"b\\\\c\\nd\\u001b\""
        );
    }

    /// Review 16.9: a client trickling its line held the supervisor for a second (and
    /// eight of them for eight). Now a turn never waits: a client that sends its whole
    /// line is answered while a trickler is still open, and the trickler is told, at
    /// its deadline, that it was too slow.
    #[test]
    #[expect(
        clippy::disallowed_methods,
        reason = "the supervisor's clock, as it runs"
    )]
    fn a_trickling_client_holds_nothing_up() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zgate.sock");
        let mut socket = OperatorSocket::bind(&path, vec![sys::effective_uid()]).unwrap();
        let mut slow = UnixStream::connect(&path).unwrap();
        slow.write_all(b"sta").unwrap();
        let mut quick = UnixStream::connect(&path).unwrap();
        quick.write_all(b"status\n").unwrap();
        let mut asked = Vec::new();
        let mut set = PollSet::default();
        let now = Instant::now();
        for _ in 0..100 {
            set.clear();
            socket.watch(&mut set);
            set.wait(Duration::from_millis(20));
            socket.turn(now, &set, |c| {
                asked.push(c);
                "{\"ok\":true}".to_string()
            });
            if !asked.is_empty() && socket.socket.clients.len() == 1 {
                break;
            }
        }
        assert_eq!(asked, [Command::Status]);
        let mut answer = String::new();
        quick.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "{\"ok\":true}\n");
        // The trickler, still there, is closed at its deadline and told why.
        assert_eq!(socket.socket.clients.len(), 1);
        set.clear();
        socket.watch(&mut set);
        socket.turn(now + Duration::from_secs(3), &set, |_| String::new());
        assert!(socket.socket.clients.is_empty());
        let mut answer = String::new();
        slow.read_to_string(&mut answer).unwrap();
        assert!(
            answer.contains("no whole command line within 2s"),
            "{answer}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zgate.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let e = OperatorSocket::bind(&path, vec![0]).unwrap_err();
        assert!(matches!(e, OperatorError::NotASocket { .. }), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn a_live_socket_is_in_use_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zgate.sock");
        let own = sys::effective_uid();
        let first = OperatorSocket::bind(&path, vec![own]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            OperatorSocket::bind(&path, vec![own]),
            Err(OperatorError::InUse { .. })
        ));
        drop(first);
        assert!(!path.exists(), "removed on drop");
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        // A crashed gateway leaves its file behind with nobody listening.
        assert!(path.exists());
        let again = OperatorSocket::bind(&path, vec![own, own.wrapping_add(1)]).unwrap();
        let mode = std::fs::metadata(again.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o666, "other users admitted: peer credentials decide");
    }
}
