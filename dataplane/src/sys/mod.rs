//! The one place in zgate that talks to the kernel through `unsafe` (STYLE E.12), in
//! two parts:
//!
//! - [`ring`]: buffer ownership and the io_uring. [`Ring`] prepares every SQE that
//!   carries a pointer, only from memory held in a [`Lent`] box or in a pool buffer the
//!   caller holds; [`BufPool`] is the worker's provided buffer ring, whose buffers move
//!   between states (in the ring, spare, held by a flow, being sent) only as
//!   `BufPool::take`, `Ring::send`, `Ring::send_done`, `BufPool::give_back` and
//!   `BufPool::refill` allow, so a buffer goes back to the kernel only once no send
//!   points into it (STYLE E.13); a [`Lent`] dropped while lent is leaked, never
//!   freed; an accepted fd becomes an owned socket only through its [`Completion`];
//!   [`Pipe`] is what a busy plain direction splices through.
//! - [`os`]: the rest of the process's dealings with the kernel: socket set-up that
//!   `std` does not offer (`SO_REUSEPORT` listeners, upstream sockets, `SO_LINGER 0`),
//!   `RLIMIT_NOFILE`, the supervisor's signals, `poll` and `eventfd`, peer
//!   credentials, and dropping privileges.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

mod os;
mod ring;

pub use os::*;
pub use ring::*;

/// A socket address in the kernel's layout, plus its length.
#[derive(Clone, Copy)]
pub(crate) struct RawSockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawSockAddr {
    pub(crate) fn new(addr: SocketAddr) -> RawSockAddr {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC)
        // value. Nothing else owns it: it is a fresh local.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in
                // (that is its purpose); `storage` is a local we own for this call.
                unsafe {
                    std::ptr::write(
                        std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in>(),
                        sin,
                    );
                }
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6.
                unsafe {
                    std::ptr::write(
                        std::ptr::addr_of_mut!(storage).cast::<libc::sockaddr_in6>(),
                        sin6,
                    );
                }
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        RawSockAddr {
            storage,
            // Both sizes are below 128; the conversion cannot fail.
            len: libc::socklen_t::try_from(len).unwrap_or(0),
        }
    }
}

pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(crate) fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a local that outlives the call; the kernel copies it.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Set up (and drop) a ring as a worker does, with a small buffer ring: whether this
/// kernel and this process may run the workers (`zgate doctor`).
pub fn probe_ring(defer_taskrun: bool) -> std::io::Result<()> {
    Ring::new(8, 2, defer_taskrun).map(drop)
}
