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
//! The supervisor never blocks on a client for long: each connection has one second in
//! all to send its line (and a one-second write timeout for the answer), and at most a
//! few connections are served per loop turn.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys;

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

/// Longest command line read.
const MAX_LINE: usize = 64;
/// Connections served per supervisor turn.
const PER_TURN: usize = 8;
const IO_TIMEOUT: Duration = Duration::from_secs(1);

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

/// The bound socket. Removes its file when dropped.
#[derive(Debug)]
pub struct OperatorSocket {
    listener: UnixListener,
    path: PathBuf,
    users: Vec<u32>,
}

/// One client's command, waiting for its answer.
#[derive(Debug)]
pub struct Request {
    stream: UnixStream,
    /// The command.
    pub command: Command,
}

impl Request {
    /// Send the answer (one JSON line) and close. A client gone by then misses it.
    pub fn answer(mut self, json: &str) {
        let _ = self.stream.write_all(json.as_bytes());
        let _ = self.stream.write_all(b"\n");
        close_quietly(self.stream);
    }
}

/// Close `stream` after discarding what the client sent and was not read (a little, and
/// only what is already there): closing a Unix socket with unread input makes the
/// client's next read fail with ECONNRESET, which can hide the answer from it.
fn close_quietly(mut stream: UnixStream) {
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 1024];
    for _ in 0..4 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
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
        let bound = OperatorSocket {
            listener,
            path: path.to_path_buf(),
            users,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
        bound.listener.set_nonblocking(true).map_err(io_err)?;
        Ok(bound)
    }

    /// For `poll`.
    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// The path bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept what is pending (a few per call) and read each client's command. Clients
    /// that are not admitted, or send something that is not a command, are answered
    /// here and closed.
    pub fn requests(&self) -> Vec<Request> {
        let mut out = Vec::new();
        for _ in 0..PER_TURN {
            let Ok((stream, _)) = self.listener.accept() else {
                break;
            };
            if let Some(r) = self.read_request(stream) {
                out.push(r);
            }
        }
        out
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "the supervisor's thread: a deadline for one operator client, off the data path"
    )]
    fn read_request(&self, mut stream: UnixStream) -> Option<Request> {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let refuse = |mut s: UnixStream, why: &str| {
            let _ = writeln!(s, "{{\"ok\":false,\"error\":{}}}", json_string(why));
            close_quietly(s);
        };
        match sys::peer_uid(stream.as_raw_fd()) {
            Ok(uid) if self.users.contains(&uid) => {}
            Ok(uid) => {
                refuse(stream, &format!("uid {uid} is not in `[operator] users`"));
                return None;
            }
            Err(e) => {
                refuse(stream, &format!("peer credentials unavailable: {e}"));
                return None;
            }
        }
        // One deadline for the whole line, not per read: a client trickling bytes
        // cannot hold the supervisor longer than this.
        let deadline = Instant::now() + IO_TIMEOUT;
        let mut buf = [0u8; MAX_LINE];
        let mut len = 0;
        while len < buf.len() {
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                break;
            };
            let _ = stream.set_read_timeout(Some(left));
            let rest = buf.get_mut(len..)?;
            match stream.read(rest) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    len += n;
                    if buf.get(..len).is_some_and(|b| b.contains(&b'\n')) {
                        break;
                    }
                }
            }
        }
        let line = buf.get(..len).unwrap_or_default();
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        let command = match line.trim_ascii() {
            b"status" => Command::Status,
            b"reload" => Command::Reload,
            b"drain" => Command::Drain,
            other => {
                let shown = String::from_utf8_lossy(other);
                refuse(
                    stream,
                    &format!(
                        "unknown command `{}`: expected `status`, `reload` or `drain`",
                        zgate_telemetry::bounded(&shown)
                    ),
                );
                return None;
            }
        };
        Some(Request { stream, command })
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

    /// A client trickling its line a byte at a time gets one second in all, not one
    /// per byte: the supervisor is back within a few seconds although the client would
    /// go on for ten.
    #[test]
    #[expect(clippy::disallowed_methods, reason = "the bound under test is a time")]
    fn a_trickling_client_cannot_hold_the_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zgate.sock");
        let socket = OperatorSocket::bind(&path, vec![sys::effective_uid()]).unwrap();
        let client_path = path.clone();
        let client = std::thread::spawn(move || {
            let mut c = UnixStream::connect(&client_path).unwrap();
            for b in b"status".iter().cycle().take(25) {
                if c.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(400));
            }
            let mut answer = String::new();
            let _ = c.read_to_string(&mut answer);
            answer
        });
        // The client is connected (its first byte sent) before the supervisor looks.
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        let served = socket.requests();
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "held for {took:?}");
        // What arrived in that second is not a whole command: refused, nothing served.
        assert!(served.is_empty(), "{served:?}");
        let answer = client.join().unwrap();
        assert!(answer.contains("\"ok\":false"), "{answer}");
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
