//! Sockets, limits, signals, credentials and privileges (see the parent module).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{cvt, setsockopt_int, RawSockAddr};

fn new_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall with constant arguments; no memory is passed.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listening TCP socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, so every
/// worker can bind its own and the kernel spreads connections among them.
pub fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = new_socket(&addr)?;
    let raw = fd.as_raw_fd();
    setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // Accepted sockets inherit TCP_NODELAY from their listener (Linux clones the
    // listening socket): set once here, not once per accepted connection.
    setsockopt_int(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let sa = RawSockAddr::new(addr);
    // SAFETY: `sa` is a local holding a valid sockaddr of `sa.len` bytes; bind copies it.
    cvt(unsafe {
        libc::bind(
            raw,
            std::ptr::addr_of!(sa.storage).cast::<libc::sockaddr>(),
            sa.len,
        )
    })?;
    // SAFETY: plain syscall on an fd we own.
    cvt(unsafe { libc::listen(raw, backlog) })?;
    Ok(fd)
}

/// An unconnected TCP socket of `addr`'s family, to be connected through the ring,
/// with TCP_NODELAY already set (it holds through the connect).
pub fn upstream_socket(addr: &SocketAddr) -> io::Result<TcpStream> {
    let fd = new_socket(addr)?;
    setsockopt_int(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    Ok(TcpStream::from(fd))
}

/// `SO_LINGER {on, 0}`: the next close sends RST instead of FIN.
pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `l` is a local that outlives the call; the kernel copies it.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Abort a TCP connection now: the kernel sends RST, and every operation pending on
/// the socket (an io_uring recv, send or connect) completes with an error at once.
/// `connect(2)` with `AF_UNSPEC` is Linux's disconnect (`tcp_disconnect`), the same
/// reset a close with `SO_LINGER {on, 0}` sends, without waiting for the close: with
/// operations in flight the descriptor cannot be closed until they complete, and a
/// cut flow should not wait for that (a revocation closes a hundred flows in a few
/// hundred microseconds instead of milliseconds, docs/benchmarks.md).
pub fn abort_connection(fd: RawFd) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr is valid; only its family is read.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: `addr` is a local that outlives the call; the kernel reads its family.
    cvt(unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr),
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (each flow needs two fds).
/// Returns the soft limit before and after.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a local the kernel fills; it outlives the call.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is an initialised local; the kernel copies it.
        cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    }
    Ok((before, lim.rlim_cur))
}

/// An eventfd the supervisor writes to wake a sleeping worker.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall, no memory passed.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: `fd` was just returned by eventfd(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add 1 to an eventfd's counter (wakes a reader).
pub fn eventfd_wake(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a local that outlives the call. A full counter
    // (EAGAIN) means a wake is already pending, which is all we want.
    let _ = unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
}

/// The signals the supervisor handles.
pub const HANDLED_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise the local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Block the handled signals in the calling thread (and so in every thread it spawns
/// afterwards) and return a signalfd that reports them.
pub fn signalfd() -> io::Result<OwnedFd> {
    let set = handled_set();
    // SAFETY: `set` is an initialised local; the kernel copies it.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: as above; -1 asks for a new fd.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: `fd` was just returned by signalfd(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Read one pending signal number from a signalfd, if any.
pub fn read_signal(fd: RawFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data; zero is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reads at most `size` bytes into the local `info`, which outlives the call.
    let n = unsafe { libc::read(fd, std::ptr::addr_of_mut!(info).cast(), size) };
    if usize::try_from(n).ok() == Some(size) {
        i32::try_from(info.ssi_signo).ok()
    } else {
        None
    }
}

/// A set of descriptors for one `poll(2)`: the supervisor's signalfd, listening
/// sockets and client connections, each waited on for reading or writing.
#[derive(Debug, Default)]
pub struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    /// Empty the set (keeping its memory).
    pub fn clear(&mut self) {
        self.fds.clear();
    }

    /// Wait on `fd` for reading (or, `write`, for writing); returns its index. A
    /// negative `fd` is ignored by the kernel (never ready).
    pub fn add(&mut self, fd: RawFd, write: bool) -> usize {
        self.fds.push(libc::pollfd {
            fd,
            events: if write { libc::POLLOUT } else { libc::POLLIN },
            revents: 0,
        });
        self.fds.len() - 1
    }

    /// Wait until one descriptor is ready or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) {
        for p in &mut self.fds {
            p.revents = 0;
        }
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let n = libc::nfds_t::try_from(self.fds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `fds` is a Vec of `n` initialised pollfds that outlives the call; the
        // kernel writes only their `revents`.
        let rc = unsafe { libc::poll(self.fds.as_mut_ptr(), n, ms) };
        if rc < 0 {
            for p in &mut self.fds {
                p.revents = 0;
            }
        }
    }

    /// Whether descriptor `i` is ready for what it was added for (or has an error or
    /// a hang-up, which the next read or write reports).
    pub fn ready(&self, i: usize) -> bool {
        self.fds
            .get(i)
            .is_some_and(|p| p.revents & (p.events | libc::POLLERR | libc::POLLHUP) != 0)
    }
}

/// A user from the system's user database (`getpwnam_r`): uid and primary gid.
pub fn user_by_name(name: &str) -> io::Result<Option<(u32, u32)>> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a user name"))?;
    // SAFETY: `passwd` is plain data (integers and pointers); all zero is valid.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local (`cname`, `pw`, `buf` with its length,
    // `found`); getpwnam_r writes only into `pw`, `buf` and `found`.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!found.is_null()).then_some((pw.pw_uid, pw.pw_gid)))
}

/// A user's primary gid by uid (`getpwuid_r`), if the database knows the uid.
pub fn user_by_uid(uid: u32) -> io::Result<Option<u32>> {
    // SAFETY: as in `user_by_name`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in `user_by_name`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!found.is_null()).then_some(pw.pw_gid))
}

/// A group's gid from the system's group database (`getgrnam_r`).
pub fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a group name"))?;
    // SAFETY: `group` is plain data (integers and pointers); all zero is valid.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `user_by_name`, for the group database.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!found.is_null()).then_some(gr.gr_gid))
}

/// Become `uid`/`gid` for good (real, effective and saved ids; supplementary groups
/// reduced to `gid`). Needs root. Call before any thread starts: glibc applies
/// set*id to every thread, but nothing else here would.
pub fn switch_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: `gid` is a local that outlives the call; the kernel copies one gid.
    cvt(unsafe { libc::setgroups(1, &gid) })?;
    // SAFETY: setresgid/setresuid take integers only.
    cvt(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::setresuid(uid, uid, uid) })?;
    // SAFETY: getuid/getgid take nothing and cannot fail.
    let (now_uid, now_gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if now_uid != uid || now_gid != gid {
        return Err(io::Error::other("the ids did not change"));
    }
    Ok(())
}

/// Give up every capability for good: the ambient set is cleared, the effective,
/// permitted and inheritable sets emptied (`capset`), and `no_new_privs` set so no
/// exec can bring any back. Per thread: call before any thread starts.
pub fn drop_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })?;
    let mut header = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) with version 3 reads one header and two data structs, both
    // locals that outlive the call, laid out as the kernel's (repr(C), u32 fields).
    cvt(unsafe {
        libc::syscall(
            libc::SYS_capset,
            std::ptr::addr_of_mut!(header),
            data.as_ptr(),
        )
    } as libc::c_int)?;
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

/// The process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process at the other end of the Unix socket `fd`, as the kernel
/// recorded it at connect time (`SO_PEERCRED`): not something the peer can claim.
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>())
        .map_err(|_| io::Error::other("ucred size"))?;
    // SAFETY: `cred` is a local ucred and `len` its size, both outliving the call; the
    // kernel writes at most `len` bytes into it.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// Sends `signal` to process `pid` (kill(2)).
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes no memory; a wrong pid is reported as an error, not UB.
    cvt(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// A blocking TCP connection to `to` from the local address `from` (bind, then
/// connect): std cannot choose the source address of an outgoing connection.
pub fn connect_from(from: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    if from.is_ipv4() != to.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "source and destination address families differ",
        ));
    }
    let fd = new_socket(&to)?;
    let raw = fd.as_raw_fd();
    let local = RawSockAddr::new(from);
    // SAFETY: `local` is a local holding a valid sockaddr of `local.len` bytes; bind
    // copies it before returning.
    cvt(unsafe {
        libc::bind(
            raw,
            std::ptr::addr_of!(local.storage).cast::<libc::sockaddr>(),
            local.len,
        )
    })?;
    let remote = RawSockAddr::new(to);
    // SAFETY: as above; connect(2) copies the address. The socket is blocking.
    cvt(unsafe {
        libc::connect(
            raw,
            std::ptr::addr_of!(remote.storage).cast::<libc::sockaddr>(),
            remote.len,
        )
    })?;
    Ok(TcpStream::from(fd))
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    /// Review 16.11: TCP_NODELAY was set with a syscall per accepted connection.
    /// Linux copies it from the listener to every socket accepted from it (measured
    /// here), and an upstream socket keeps it through the connect.
    #[test]
    fn accepted_and_upstream_sockets_have_nodelay_without_a_call_each() {
        let fd = super::reuseport_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let listener = TcpListener::from(fd);
        let addr = listener.local_addr().unwrap();
        let up = super::upstream_socket(&addr).unwrap();
        assert!(up.nodelay().unwrap());
        let _client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap(), "inherited from the listener");
    }
}
