//! The supervisor's clients: the admin endpoint's HTTP clients and the operator
//! socket's clients.
//!
//! The supervisor never waits on one of them (review 16.9). Before, it served them one
//! after another with blocking reads: a client trickling a byte a second held it, and
//! with it drain, reload, certificate rotation and the audit drain (whose per-worker
//! queues then dropped records). Now:
//! - every client socket is non-blocking and watched in the supervisor's `poll`;
//! - each exchange has one deadline for the whole of it, not one per read;
//! - at most `max_open` clients are open at once (one more is closed at once), and
//!   each reads at most `max_input` bytes;
//! - a turn does one read and one write per ready client, so the work per turn is
//!   bounded whatever the clients do.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::sys::PollSet;

/// A client connection: a non-blocking byte stream with a descriptor to poll.
pub trait Stream: Read + Write + AsRawFd {
    /// Make it non-blocking.
    fn set_nonblocking(&self) -> std::io::Result<()>;
}

impl Stream for std::net::TcpStream {
    fn set_nonblocking(&self) -> std::io::Result<()> {
        std::net::TcpStream::set_nonblocking(self, true)
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_nonblocking(&self) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_nonblocking(self, true)
    }
}

struct Client<S> {
    stream: S,
    input: Vec<u8>,
    /// The answer, once there is one; `sent` of it is written.
    output: Option<Vec<u8>>,
    sent: usize,
    deadline: Instant,
    /// Polled for this turn (its index in the poll set), if it was.
    polled: Option<usize>,
}

/// How one kind of client is served.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Clients open at once.
    pub max_open: usize,
    /// Most bytes read from one client; a request not complete by then is answered as
    /// it stands (the caller's parser refuses it).
    pub max_input: usize,
    /// Time for the whole exchange: request in, answer out.
    pub deadline: Duration,
}

/// Clients of one listening socket.
pub struct Clients<S> {
    open: Vec<Client<S>>,
    limits: Limits,
    /// What a client that sent no whole request in time is told (best effort), if
    /// anything.
    on_timeout: Option<&'static [u8]>,
    /// Clients closed because `max_open` were open.
    pub refused: u64,
    /// Clients closed at their deadline.
    pub expired: u64,
}

impl<S: Stream> Clients<S> {
    /// No clients yet.
    pub fn new(limits: Limits, on_timeout: Option<&'static [u8]>) -> Clients<S> {
        Clients {
            open: Vec::new(),
            limits,
            on_timeout,
            refused: 0,
            expired: 0,
        }
    }

    /// Clients open now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Whether another may be admitted.
    pub fn has_room(&self) -> bool {
        self.open.len() < self.limits.max_open
    }

    /// A new client, to be read from; its deadline counts from `now`. Closed at once
    /// (and counted) when `max_open` are open, or when it cannot be made non-blocking.
    pub fn admit(&mut self, stream: S, now: Instant) {
        self.push(stream, None, now);
    }

    /// A new client that gets `answer` without being read (a refusal made at accept,
    /// such as a uid the operator socket does not admit).
    pub fn answer_at_once(&mut self, stream: S, answer: Vec<u8>, now: Instant) {
        self.push(stream, Some(answer), now);
    }

    fn push(&mut self, stream: S, output: Option<Vec<u8>>, now: Instant) {
        if !self.has_room() || stream.set_nonblocking().is_err() {
            self.refused += 1;
            return;
        }
        self.open.push(Client {
            stream,
            input: Vec::new(),
            output,
            sent: 0,
            deadline: now + self.limits.deadline,
            polled: None,
        });
    }

    /// Add every client to `set`: to be read while its request is incomplete, to be
    /// written once it has an answer.
    pub fn watch(&mut self, set: &mut PollSet) {
        for c in &mut self.open {
            c.polled = Some(set.add(c.stream.as_raw_fd(), c.output.is_some()));
        }
    }

    /// The earliest deadline of an open client (the supervisor wakes up for it).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.iter().map(|c| c.deadline).min()
    }

    /// One turn. Each client that `set` says is ready does one read (or one write): a
    /// request found whole by `complete` (which returns its length), or `max_input`
    /// bytes without one, gets `answer`'s bytes, written as the socket takes them.
    /// Clients whose answer is out, who hung up or failed, or whose deadline passed
    /// are closed.
    pub fn turn(
        &mut self,
        now: Instant,
        set: &PollSet,
        complete: impl Fn(&[u8]) -> Option<usize>,
        mut answer: impl FnMut(&S, &[u8]) -> Vec<u8>,
    ) {
        let max_input = self.limits.max_input;
        let on_timeout = self.on_timeout;
        let mut expired = 0;
        self.open.retain_mut(|c| {
            let ready = c.polled.take().is_some_and(|i| set.ready(i));
            if now >= c.deadline {
                if c.output.is_none() {
                    if let Some(msg) = on_timeout {
                        let _ = c.stream.write(msg);
                    }
                }
                expired += 1;
                close_quietly(&mut c.stream);
                return false;
            }
            if !ready {
                return true;
            }
            if c.output.is_none() {
                let mut buf = [0u8; 4096];
                let room = max_input.saturating_sub(c.input.len()).min(buf.len());
                match c.stream.read(buf.get_mut(..room).unwrap_or_default()) {
                    Ok(0) => return false,
                    Ok(n) => c.input.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
                let whole =
                    complete(&c.input).or((c.input.len() >= max_input).then_some(max_input));
                match whole {
                    Some(n) => {
                        let request = c.input.get(..n).unwrap_or_default();
                        c.output = Some(answer(&c.stream, request));
                    }
                    None => return true,
                }
            }
            let Some(out) = c.output.as_deref() else {
                return true;
            };
            match c.stream.write(out.get(c.sent..).unwrap_or_default()) {
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
            if c.sent < out.len() {
                return true;
            }
            close_quietly(&mut c.stream);
            false
        });
        self.expired += expired;
    }
}

/// A listening socket: what [`Listening`] accepts clients from.
pub trait Accept {
    /// The clients it accepts.
    type Client: Stream;
    /// One pending connection, if any (the socket is non-blocking).
    fn accept_one(&self) -> Option<Self::Client>;
    /// For `poll`.
    fn raw_fd(&self) -> std::os::fd::RawFd;
}

impl Accept for std::net::TcpListener {
    type Client = std::net::TcpStream;
    fn accept_one(&self) -> Option<Self::Client> {
        self.accept().ok().map(|(s, _)| s)
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.as_raw_fd()
    }
}

impl Accept for std::os::unix::net::UnixListener {
    type Client = std::os::unix::net::UnixStream;
    fn accept_one(&self) -> Option<Self::Client> {
        self.accept().ok().map(|(s, _)| s)
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        self.as_raw_fd()
    }
}

/// A non-blocking listening socket and its clients: what the admin endpoint and the
/// operator socket are made of.
pub struct Listening<L: Accept> {
    listener: L,
    /// Its clients.
    pub clients: Clients<L::Client>,
    /// Its index in this turn's poll set, when it was watched.
    polled: Option<usize>,
}

/// Connections accepted per supervisor turn, per listening socket.
const ACCEPTS_PER_TURN: usize = 16;

impl<L: Accept> Listening<L> {
    /// `listener` (already non-blocking) and no clients yet.
    pub fn new(listener: L, limits: Limits, on_timeout: Option<&'static [u8]>) -> Listening<L> {
        Listening {
            listener,
            clients: Clients::new(limits, on_timeout),
            polled: None,
        }
    }

    /// The listening socket.
    pub fn listener(&self) -> &L {
        &self.listener
    }

    /// Add the socket (while it may admit more clients) and its clients to `set`.
    pub fn watch(&mut self, set: &mut PollSet) {
        self.polled = self
            .clients
            .has_room()
            .then(|| set.add(self.listener.raw_fd(), false));
        self.clients.watch(set);
    }

    /// The earliest client deadline, if any client is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.next_deadline()
    }

    /// When `set` says the socket is ready: hand each pending connection (a few) to
    /// `take`, which admits it (or answers it at once).
    pub fn accept_ready(
        &mut self,
        set: &PollSet,
        mut take: impl FnMut(&mut Clients<L::Client>, L::Client),
    ) {
        if !self.polled.take().is_some_and(|i| set.ready(i)) {
            return;
        }
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(stream) = self.listener.accept_one() else {
                break;
            };
            take(&mut self.clients, stream);
        }
    }
}

/// Before a client is closed: discard what it sent and was not read (a little, and only
/// what is already there). Closing a socket with unread input resets the connection,
/// and the reset can make the client's read fail before it sees the answer.
fn close_quietly(stream: &mut impl Read) {
    let mut sink = [0u8; 1024];
    for _ in 0..4 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

#[cfg(test)]
#[expect(
    clippy::disallowed_methods,
    reason = "the tests stand in for the supervisor, whose clock they read"
)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_open: 2,
            max_input: 16,
            deadline: Duration::from_secs(60),
        }
    }

    fn line(input: &[u8]) -> Option<usize> {
        input.iter().position(|&b| b == b'\n').map(|i| i + 1)
    }

    /// Run turns until `done` or 100 turns have passed (each waits at most 50 ms).
    fn turns(
        c: &mut Clients<UnixStream>,
        now: Instant,
        done: impl Fn(&Clients<UnixStream>) -> bool,
    ) {
        let mut set = PollSet::default();
        for _ in 0..100 {
            if done(c) {
                return;
            }
            set.clear();
            c.watch(&mut set);
            set.wait(Duration::from_millis(50));
            c.turn(now, &set, line, |_, req| {
                let mut a = b"got ".to_vec();
                a.extend_from_slice(req);
                a
            });
        }
        assert!(done(c), "not done after 100 turns");
    }

    #[test]
    fn a_trickled_request_is_answered_when_whole_and_others_are_served_meanwhile() {
        let now = Instant::now();
        let mut c = Clients::new(limits(), None);
        let (mut slow, slow_peer) = UnixStream::pair().unwrap();
        let (mut quick, quick_peer) = UnixStream::pair().unwrap();
        c.admit(slow_peer, now);
        c.admit(quick_peer, now);
        slow.write_all(b"sta").unwrap();
        quick.write_all(b"status\n").unwrap();
        // The quick one is answered and closed; the slow one waits, holding nothing up.
        turns(&mut c, now, |c| c.len() == 1);
        let mut got = String::new();
        quick.read_to_string(&mut got).unwrap();
        assert_eq!(got, "got status\n");
        slow.write_all(b"tus\n").unwrap();
        turns(&mut c, now, Clients::is_empty);
        let mut got = String::new();
        slow.read_to_string(&mut got).unwrap();
        assert_eq!(got, "got status\n");
    }

    #[test]
    fn the_deadline_is_for_the_whole_exchange_and_the_client_is_told() {
        let now = Instant::now();
        let mut c = Clients::new(limits(), Some(b"too slow\n"));
        let (mut slow, peer) = UnixStream::pair().unwrap();
        c.admit(peer, now);
        slow.write_all(b"sta").unwrap();
        turns(&mut c, now, |c| c.len() == 1);
        // Later than its deadline: closed, told why, counted.
        let late = now + Duration::from_secs(61);
        let set = PollSet::default();
        c.turn(late, &set, line, |_, _| Vec::new());
        assert!(c.is_empty());
        assert_eq!(c.expired, 1);
        let mut got = String::new();
        slow.read_to_string(&mut got).unwrap();
        assert_eq!(got, "too slow\n");
    }

    #[test]
    fn clients_past_max_open_are_closed_at_once_and_input_is_bounded() {
        let now = Instant::now();
        let mut c = Clients::new(limits(), None);
        let mut peers = Vec::new();
        for _ in 0..3 {
            let (mine, theirs) = UnixStream::pair().unwrap();
            c.admit(theirs, now);
            peers.push(mine);
        }
        assert_eq!((c.len(), c.refused), (2, 1));
        let mut third = peers.pop().unwrap();
        let mut got = Vec::new();
        third.read_to_end(&mut got).unwrap();
        assert!(got.is_empty(), "closed without an answer");
        // 16 bytes and no newline: answered as it stands.
        peers[0].write_all(&[b'x'; 40]).unwrap();
        turns(&mut c, now, |c| c.len() == 1);
        let mut got = Vec::new();
        peers[0].read_to_end(&mut got).unwrap();
        assert_eq!(got, b"got xxxxxxxxxxxxxxxx");
    }
}
