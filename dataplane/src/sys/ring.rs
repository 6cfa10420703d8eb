//! Buffer ownership and the worker's io_uring (see the parent module).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{cvt, RawSockAddr};

/// Bytes per provided buffer (the most one recv moves). 64 KiB: a TLS flow then takes
/// up to four full records per receive and sends their plaintext in one go, which
/// quarters the per-operation kernel cost that bounds TLS bulk (`docs/benchmarks.md`).
/// A buffer is resident only once touched, and a flow holds one only while its data
/// is in flight.
pub const BUF_SIZE: usize = 64 * 1024;
/// Writable bytes in front of each provided buffer, never handed to the kernel for a
/// receive: a TLS record cut by the end of the last receive is moved there, in front of
/// its rest, and opened in place like the others (`zgate_tls::TlsSession::read_in_place`).
/// Touched only by such records, so it costs address space, not memory.
pub const HEADROOM: usize = 20 * 1024;
const _: () = assert!(HEADROOM >= zgate_tls::MAX_RECORD && HEADROOM % 4096 == 0);
/// Distance between two buffers of the pool: headroom, then the buffer.
const STRIDE: usize = HEADROOM + BUF_SIZE;
/// A receive at least this large marks a plain direction as bulk (it then splices).
pub const BULK_RECV: usize = 16 * 1024;
/// How many buffers the ring normally offers the kernel. The kernel takes ring buffers
/// in FIFO order, so every published buffer gets touched in turn: publishing a small
/// hot set (and keeping the rest as LIFO spares) keeps resident memory near
/// `HOT_BUFFERS * BUF_SIZE` (1 MiB) plus the buffers flows hold, instead of the whole
/// pool. Starved receives raise the target (see `BufPool::refill`).
pub const HOT_BUFFERS: u16 = 64;
/// The buffer group id of the worker's one pool.
const BGID: u16 = 0;

/// Heap memory that SQEs may point into. See the module doc.
pub struct Lent<T: ?Sized> {
    ptr: NonNull<T>,
    lent: u32,
}

impl<T: ?Sized> Lent<T> {
    /// Takes ownership of `boxed`. Its memory stays put until this `Lent` is dropped
    /// with no loans outstanding.
    pub fn new(boxed: Box<T>) -> Lent<T> {
        Lent {
            ptr: NonNull::from(Box::leak(boxed)),
            lent: 0,
        }
    }

    /// How many SQEs in flight point into this memory.
    pub fn lent(&self) -> u32 {
        self.lent
    }

    /// The memory, read-only, while no SQE points into it (`None` while lent).
    pub fn get(&self) -> Option<&T> {
        if self.lent > 0 {
            return None;
        }
        // SAFETY: as in `get_mut`: allocated until this `Lent` drops, and with
        // `lent == 0` the kernel does not touch it; the shared borrow of `self` keeps
        // `get_mut` (and so any loan to the kernel) out while this reference lives.
        Some(unsafe { &*self.ptr.as_ptr() })
    }

    /// The memory, while no SQE points into it (`None` while lent).
    pub fn get_mut(&mut self) -> Option<&mut T> {
        if self.lent > 0 {
            return None;
        }
        // SAFETY: `ptr` came from `Box::leak` in `new` and stays allocated until this
        // `Lent` drops; `lent == 0` means no SQE points into it, so the kernel does not
        // touch it, and `&mut self` makes this the only reference from our side.
        Some(unsafe { &mut *self.ptr.as_ptr() })
    }

    /// Record that one CQE for an SQE that pointed into this memory has arrived.
    /// The caller calls it exactly once per such CQE (the worker's per-op user_data says
    /// which memory an op used).
    pub fn returned(&mut self) {
        debug_assert!(self.lent > 0, "a CQE returned memory that was not lent");
        self.lent = self.lent.saturating_sub(1);
    }
}

impl<T: ?Sized> Drop for Lent<T> {
    fn drop(&mut self) {
        if self.lent == 0 {
            // SAFETY: `ptr` came from `Box::leak` in `new` and was never freed; no SQE
            // points into it any more (lent == 0), so we are its only owner.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
        } else {
            // The kernel may still write here: leak rather than free.
            debug_assert!(false, "Lent dropped with {} loans outstanding", self.lent);
        }
    }
}

/// Per-connection memory the connect SQEs point at (no data buffers: those come from
/// the worker's [`BufPool`] only while data is in flight).
pub struct ConnMem {
    addr: RawSockAddr,
    timeout: types::Timespec,
}

impl ConnMem {
    /// The memory for one connect to `addr` with `timeout`, filled in before any SQE
    /// can point at it: [`Ring::connect_with_timeout`] only reads it.
    pub fn boxed(addr: SocketAddr, timeout: Duration) -> Lent<ConnMem> {
        Lent::new(Box::new(ConnMem {
            addr: RawSockAddr::new(addr),
            timeout: types::Timespec::from(timeout),
        }))
    }
}

/// A `sendmsg` header and its pieces: [`Ring::send_runs`] points the kernel at it, so it
/// lives in a [`Lent`] until the send's CQE.
pub struct SendVec {
    hdr: libc::msghdr,
    iov: [libc::iovec; zgate_tls::MAX_RUNS],
}

impl SendVec {
    /// An empty header.
    pub fn boxed() -> Lent<SendVec> {
        // SAFETY: `msghdr` and `iovec` are plain C structs of integers and pointers, for
        // which all zero bytes (null pointers, zero lengths) is a valid value.
        let zero = unsafe { std::mem::zeroed::<SendVec>() };
        Lent::new(Box::new(zero))
    }
}

/// An anonymous private mapping, unmapped on drop. Pages become resident only when
/// touched, which is what lets a large pool cost little while idle.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> io::Result<Mmap> {
        // SAFETY: a fresh anonymous mapping; no existing memory is named or aliased.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap: null"))?;
        Ok(Mmap { ptr, len })
    }

    /// Never unmap this mapping (someone may still point into it).
    fn leak(&mut self) {
        self.len = 0;
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        if self.len == 0 {
            return; // leaked on purpose
        }
        // SAFETY: `ptr`/`len` are exactly one mapping made in `new`; whoever drops the
        // Mmap guarantees nothing (the kernel included) uses it any more (see `Ring`'s
        // Drop, which unregisters the buffer ring first).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One entry of a provided buffer ring, in the kernel's layout (`struct io_uring_buf`).
/// Entry 0's `resv` field is the ring's tail.
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}
const _: () = assert!(std::mem::size_of::<RingEntry>() == 16);

/// Where one pool buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BufState {
    /// Published in the ring: the kernel may pick it for any recv of this group.
    InRing,
    /// Owned by user space, not published, holding nothing.
    Spare,
    /// Handed to a flow by a recv CQE; no SQE points into it.
    Held,
    /// A send SQE points into it; it stays until that send's CQE.
    Sending,
}

/// A buffer a flow holds (from a recv CQE until it gives it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufId(u16);

/// A buffer operation that does not match the buffer's state: a bookkeeping bug or a
/// bid the kernel should never report. Nothing is changed when it is returned.
#[derive(Debug, thiserror::Error)]
#[error("buffer {bid}: cannot {op} (state {state})")]
pub struct BufError {
    /// The buffer id.
    pub bid: u16,
    /// What was attempted.
    pub op: &'static str,
    /// The state it was in.
    pub state: &'static str,
}

/// The worker's provided buffer ring (`IORING_REGISTER_PBUF_RING`) and its buffers.
pub struct BufPool {
    /// Buffers in the pool (a power of two, `[workers] buffers`).
    size: u16,
    ring: Mmap,
    bufs: Mmap,
    /// Our copy of the ring's tail (the kernel owns the head).
    tail: u16,
    state: Vec<BufState>,
    /// Unpublished buffers, most recently returned last (LIFO: reuse warm memory).
    spare: Vec<u16>,
    /// Buffers published and not yet reported taken by a recv CQE.
    published: u16,
}

impl BufPool {
    /// A pool of `size` buffers (a power of two, 2..=32768): at most `size * STRIDE`
    /// bytes of address space, resident only once touched (see [`HOT_BUFFERS`]).
    fn new(size: u16) -> io::Result<BufPool> {
        if !size.is_power_of_two() || !(2..=32768).contains(&size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer pool size must be a power of two in 2..=32768",
            ));
        }
        let n = usize::from(size);
        // One page at least, page-aligned (mmap), as the kernel requires.
        let ring = Mmap::new((n * std::mem::size_of::<RingEntry>()).max(4096))?;
        let bufs = Mmap::new(n * STRIDE)?;
        Ok(BufPool {
            size,
            ring,
            bufs,
            tail: 0,
            state: vec![BufState::Spare; n],
            // Popped from the end: buffer 0 first.
            spare: (0..size).rev().collect(),
            published: 0,
        })
    }

    fn state_name(s: BufState) -> &'static str {
        match s {
            BufState::InRing => "in-ring",
            BufState::Spare => "spare",
            BufState::Held => "held",
            BufState::Sending => "sending",
        }
    }

    /// Move `bid` from `from` to `to`, or say why not.
    fn transition(
        &mut self,
        bid: u16,
        from: BufState,
        to: BufState,
        op: &'static str,
    ) -> Result<(), BufError> {
        match self.state.get_mut(usize::from(bid)) {
            Some(s) if *s == from => {
                *s = to;
                Ok(())
            }
            Some(s) => Err(BufError {
                bid,
                op,
                state: BufPool::state_name(*s),
            }),
            None => Err(BufError {
                bid,
                op,
                state: "out of range",
            }),
        }
    }

    /// Where buffer `bid`'s headroom starts; the buffer itself is `HEADROOM` further.
    fn headroom_addr(&self, bid: u16) -> *mut u8 {
        // bid < size (every caller checked it through `state`), so the address
        // stays inside the `bufs` mapping; nothing is dereferenced here.
        self.bufs
            .ptr
            .as_ptr()
            .wrapping_add(usize::from(bid) * STRIDE)
    }

    fn buf_addr(&self, bid: u16) -> *mut u8 {
        self.headroom_addr(bid).wrapping_add(HEADROOM)
    }

    /// Publish spare buffers until `want` are published (or no spare is left). The new
    /// tail is stored once, with release ordering, after the entries are written.
    pub fn refill(&mut self, want: u16) {
        let want = want.min(self.size);
        let mut moved = false;
        while self.published < want {
            let Some(bid) = self.spare.pop() else { break };
            if let Some(s) = self.state.get_mut(usize::from(bid)) {
                *s = BufState::InRing;
            }
            let index = usize::from(self.tail & (self.size - 1));
            let entry = self
                .ring
                .ptr
                .as_ptr()
                .cast::<RingEntry>()
                .wrapping_add(index);
            let addr = self.buf_addr(bid) as u64;
            // SAFETY: `index < size` (a power of two), so `entry` is inside the ring mapping,
            // which lives as long as `self`. The slot at our tail is not visible to the
            // kernel until the tail store below, so writing it races nothing. We write
            // the three fields one by one and never entry 0's `resv` (the tail, which
            // the kernel reads).
            unsafe {
                std::ptr::addr_of_mut!((*entry).addr).write(addr);
                std::ptr::addr_of_mut!((*entry).len).write(BUF_SIZE as u32);
                std::ptr::addr_of_mut!((*entry).bid).write(bid);
            }
            self.tail = self.tail.wrapping_add(1);
            self.published += 1;
            moved = true;
        }
        if moved {
            let tail = self.ring.ptr.as_ptr().cast::<RingEntry>();
            // SAFETY: entry 0's `resv` is the ring tail: a u16 inside the ring mapping,
            // aligned to 2, shared with the kernel, which only reads it. All accesses
            // from our side go through this atomic store, so there is no data race.
            let tail = unsafe { AtomicU16::from_ptr(std::ptr::addr_of_mut!((*tail).resv)) };
            tail.store(self.tail, Ordering::Release);
        }
    }

    /// A recv CQE reported buffer `bid`: the kernel took it from the ring and the
    /// caller now holds it.
    pub fn take(&mut self, bid: u16) -> Result<BufId, BufError> {
        self.transition(bid, BufState::InRing, BufState::Held, "take")?;
        self.published = self.published.saturating_sub(1);
        Ok(BufId(bid))
    }

    /// The caller gives `buf` back; it becomes a spare, published again by `refill`.
    /// Refused while a send points into it.
    pub fn give_back(&mut self, buf: BufId) -> Result<(), BufError> {
        self.transition(buf.0, BufState::Held, BufState::Spare, "give back")?;
        self.spare.push(buf.0);
        Ok(())
    }

    /// That the caller holds `buf` (a recv CQE named it and no send points into it) and
    /// `len` is inside it; `op` names the access in the error.
    fn check_held(&self, buf: BufId, len: usize, op: &'static str) -> Result<(), BufError> {
        let state = match self.state.get(usize::from(buf.0)) {
            Some(BufState::Held) if len <= BUF_SIZE => return Ok(()),
            Some(BufState::Held) => "held, shorter than asked",
            Some(s) => BufPool::state_name(*s),
            None => "out of range",
        };
        Err(BufError {
            bid: buf.0,
            op,
            state,
        })
    }

    /// The first `len` bytes of `buf`, which the caller holds (a recv CQE named it and no
    /// send points into it). Refused in any other state, or past the buffer's end.
    pub fn bytes(&self, buf: BufId, len: usize) -> Result<&[u8], BufError> {
        self.check_held(buf, len, "read")?;
        // SAFETY: `buf` is `Held`: the kernel took it from the ring and reported it in a
        // recv CQE, so it no longer writes into it, and no send SQE points into it (that
        // would be `Sending`). `len <= BUF_SIZE`, so the slice stays inside this buffer of
        // the `bufs` mapping, which lives as long as `self`; the shared borrow of `self`
        // keeps every state move (and so every SQE on this buffer) out until it ends.
        Ok(unsafe { std::slice::from_raw_parts(self.buf_addr(buf.0).cast_const(), len) })
    }

    /// The first `len` bytes of `buf`, writable: TLS decrypts records in place where
    /// they were received. The same states as [`BufPool::bytes`] are required.
    pub fn bytes_mut(&mut self, buf: BufId, len: usize) -> Result<&mut [u8], BufError> {
        self.check_held(buf, len, "write")?;
        // SAFETY: as in `bytes`: `buf` is `Held`, so neither the kernel (the recv that
        // filled it has completed) nor a send SQE touches it, and `len <= BUF_SIZE` keeps
        // the slice inside this buffer of the `bufs` mapping. The exclusive borrow of
        // `self` makes this the only reference to the buffer until it ends.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.buf_addr(buf.0), len) })
    }

    /// `buf`'s headroom and its first `len` bytes ([`HEADROOM`] + `len` bytes), writable:
    /// a TLS flow opens records in place there. The same states as
    /// [`BufPool::bytes_mut`] are required.
    pub fn region_mut(&mut self, buf: BufId, len: usize) -> Result<&mut [u8], BufError> {
        self.check_held(buf, len, "write")?;
        // SAFETY: as in `bytes_mut`: `buf` is `Held`, so neither a recv (which never sees
        // the headroom anyway) nor a send SQE touches it; `HEADROOM + len <= STRIDE`
        // keeps the slice inside this buffer's stride of the `bufs` mapping, and the
        // exclusive borrow of `self` makes it the only reference until it ends.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.headroom_addr(buf.0), HEADROOM + len) })
    }

    /// Buffers held by flows or being sent.
    pub fn in_use(&self) -> usize {
        usize::from(self.size)
            .saturating_sub(self.spare.len())
            .saturating_sub(usize::from(self.published.min(self.size)))
    }

    /// Buffers published in the ring (as far as CQEs have told us).
    pub fn published(&self) -> u16 {
        self.published
    }
}

/// Pipe capacity a bulk direction asks for (`F_SETPIPE_SZ`; the default
/// `/proc/sys/fs/pipe-max-size` is 1 MiB). It bounds what one direction holds in flight,
/// as `BUF_SIZE` does for receives: the kernel's pages, referenced, not copied. Each
/// splice round costs a hand-off to an io_uring async worker and a TCP push, so
/// bigger rounds cost less per byte: against 256 KiB, 1 MiB cut the gateway's CPU per
/// byte by 43 % and the whole loopback machine's by 7-16 % (`docs/benchmarks.md`,
/// "Bulk with 1 MiB pipes").
pub const PIPE_SIZE: u32 = 1024 * 1024;

/// The smallest pipe worth splicing through: the kernel's default size.
pub const MIN_PIPE: u32 = 64 * 1024;

/// A pipe (read end, write end) that one direction of a plain flow splices through.
/// Both ends are closed on drop; the owner drops it only when no splice SQE names it
/// (an fd number closed under an SQE not yet issued could name another file by then).
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Its capacity in bytes (what `F_SETPIPE_SZ` granted, or the default).
    pub size: u32,
}

impl Pipe {
    /// A new pipe of up to `want` bytes: `want`, else a quarter of it, else the
    /// kernel's default size, if that is at least [`MIN_PIPE`]. An unprivileged user
    /// past `pipe-user-pages-soft` (64 MiB of pipes by default, shared by the whole
    /// process) gets only a page or two and no more: an error here.
    pub fn new(want: u32) -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` is a local array of two ints that the kernel fills; it outlives
        // the call.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
        // SAFETY: pipe2 succeeded, so both are new fds owned by nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let set_size = |bytes: u32| {
            let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
            // SAFETY: fcntl on an fd we own, with an int argument; no memory is passed.
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) }
        };
        let mut granted = set_size(want);
        if granted <= 0 {
            granted = set_size(want / 4);
        }
        let size = if granted > 0 {
            u32::try_from(granted).unwrap_or(want)
        } else {
            // Refused (e.g. over the user's pipe-buffer limit): keep the default.
            // SAFETY: as above.
            let cur = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) };
            u32::try_from(cur).unwrap_or(0)
        };
        // Past the user's pipe allowance the kernel makes new pipes of a page or two
        // and refuses to grow them: too small to be worth a splice round (the flow
        // would drop it as caught up after every round, and make another).
        if size < MIN_PIPE {
            return Err(io::Error::other(format!(
                "pipe: the kernel granted {size} bytes (the user's pipe allowance is spent)"
            )));
        }
        Ok(Pipe {
            r,
            w,
            size: size.min(want),
        })
    }

    /// The read end.
    pub fn read_fd(&self) -> RawFd {
        self.r.as_raw_fd()
    }

    /// The write end.
    pub fn write_fd(&self) -> RawFd {
        self.w.as_raw_fd()
    }
}

/// Errors from queueing an SQE.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The submission queue stayed full even after submitting.
    #[error("io_uring submission queue full: {0}")]
    Full(io::Error),
    /// A send range outside the buffer (a bug in the caller; nothing was queued).
    #[error("send range {start}..{end} outside a {BUF_SIZE}-byte buffer")]
    Range {
        /// Start of the range.
        start: usize,
        /// End of the range.
        end: usize,
    },
    /// The buffer is not held by the caller (a bug in the caller; nothing was queued).
    #[error(transparent)]
    Buf(#[from] BufError),
    /// The memory is already lent to an SQE in flight (a bug in the caller; nothing was
    /// queued).
    #[error("memory already lent to an operation in flight")]
    Lent,
}

/// Test hook: make the next pushes of the rings on this thread fail as a full
/// submission queue would, so the worker's handling of that can be tested.
#[cfg(test)]
pub mod push_faults {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    thread_local! {
        static FAULTS: RefCell<Option<Arc<AtomicU32>>> = const { RefCell::new(None) };
    }

    /// From now on, pushes on this thread fail while `count` is above zero (each
    /// failure takes one off).
    pub fn install(count: Arc<AtomicU32>) {
        FAULTS.with(|f| *f.borrow_mut() = Some(count));
    }

    /// Whether this push should fail.
    pub(super) fn take() -> bool {
        FAULTS.with(|f| {
            f.borrow().as_ref().is_some_and(|c| {
                c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            })
        })
    }
}

/// One completion, copied out of the CQ. Not `Copy`: the fd an accept's completion
/// carries is taken once ([`Completion::into_accepted`]).
#[derive(Debug)]
pub struct Completion {
    /// The SQE's user_data.
    pub user_data: u64,
    /// Result: bytes, fd, or a negated errno.
    pub result: i32,
    /// Whether a multishot SQE stays armed.
    pub more: bool,
    /// The provided buffer a recv filled (or took and left empty), if any.
    pub buffer: Option<u16>,
    /// The completion of an accept this ring armed ([`Ring::accept`]).
    accept: bool,
}

impl Completion {
    /// The connection an accept's completion carries: `None` for a failed accept, or
    /// a completion of anything else. With [`Drop`], the one place an fd number from
    /// the kernel becomes an owned socket: an accepted fd is adopted once, whether the
    /// caller takes it or drops the completion (which closes it).
    pub fn into_accepted(mut self) -> Option<TcpStream> {
        self.take_accepted()
    }

    fn take_accepted(&mut self) -> Option<TcpStream> {
        if !self.accept || self.result < 0 {
            return None;
        }
        self.accept = false;
        // SAFETY: a non-negative result of an accept this ring armed is a new fd the
        // kernel installed for us and nothing else owns. `accept` is cleared first, so
        // it is adopted once; the TcpStream closes it exactly once.
        Some(TcpStream::from(unsafe {
            OwnedFd::from_raw_fd(self.result)
        }))
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        // An accepted connection nobody took: close it rather than leak it.
        drop(self.take_accepted());
    }
}

/// A worker's io_uring, with its provided buffer pool.
///
/// Field order matters for drop: `Drop` unregisters the buffer ring, then the ring fd
/// closes (`ring`), then the buffer memory is unmapped (`pool`).
pub struct Ring {
    ring: IoUring,
    /// The user_data of the accepts armed on this ring: their completions carry fds.
    accepts: Vec<u64>,
    /// The provided buffers. Public so flows can take and give back buffers.
    pub pool: BufPool,
    /// Splice SQEs queued whose CQE has not been handed to [`Ring::splice_done`]: work
    /// for the ring's async workers, which run on the worker's own core.
    splices: u32,
}

impl Ring {
    /// A ring with `entries` SQ slots and a CQ four times that size, with a pool of
    /// `buffers` provided buffers registered as buffer group 0 and its hot set published.
    /// `defer_taskrun`: set up for one submitting thread with deferred task work
    /// (`SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG`, kernel 6.1+; plain ring if the
    /// kernel refuses). The ring must then be used only by the thread that made it, which
    /// is how workers use theirs. `TASKRUN_FLAG` lets a busy-polling `submit` see that
    /// completions are pending and enter with `GETEVENTS` to run them.
    pub fn new(entries: u32, buffers: u16, defer_taskrun: bool) -> io::Result<Ring> {
        let cq = entries.saturating_mul(4);
        let deferred = defer_taskrun
            .then(|| {
                IoUring::builder()
                    .setup_cqsize(cq)
                    .setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag()
                    .build(entries)
                    .ok()
            })
            .flatten();
        let ring = match deferred {
            Some(r) => r,
            None => IoUring::builder().setup_cqsize(cq).build(entries)?,
        };
        let mut pool = BufPool::new(buffers)?;
        // SAFETY: the ring memory is a page-aligned mapping of `buffers` entries that
        // lives in `pool` until after `Drop for Ring` unregisters it (and the fd closes).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                pool.ring.ptr.as_ptr() as u64,
                buffers,
                BGID,
                0,
            )?;
        }
        pool.refill(HOT_BUFFERS);
        Ok(Ring {
            ring,
            accepts: Vec::new(),
            pool,
            splices: 0,
        })
    }

    /// Whether the ring was set up for one issuer with deferred task work (see
    /// [`Ring::new`]; the two flags are only ever set together).
    pub fn defers_taskrun(&self) -> bool {
        self.ring.params().is_setup_single_issuer()
    }

    fn push(&mut self, entry: &squeue::Entry) -> Result<(), PushError> {
        #[cfg(test)]
        if push_faults::take() {
            return Err(PushError::Full(io::Error::from(io::ErrorKind::WouldBlock)));
        }
        for _ in 0..2 {
            // SAFETY: every pointer in `entry` stays valid until its CQE. The methods
            // of this type that call `push` each build their entry over memory that
            // outlives the op: a `Lent` whose count they raise on success (a recv into
            // a flow's own buffer, the eventfd read, a `SendVec`), a pool buffer they
            // move to `Sending` (a send; `BufPool` does not reuse it before
            // `send_done`), or none (accept, cancel, poll, splice between fds, and a
            // recv that names the buffer group: the kernel picks a ring buffer).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // SQ full: hand what is queued to the kernel and try once more.
            self.ring.submit().map_err(PushError::Full)?;
        }
        Err(PushError::Full(io::Error::from(io::ErrorKind::WouldBlock)))
    }

    /// Arm an accept on a listener: multishot (a CQE with `more` per connection until
    /// cancelled or failed), or one-shot (one connection, one CQE without `more`).
    pub fn accept(&mut self, fd: RawFd, user_data: u64, multishot: bool) -> Result<(), PushError> {
        let e = if multishot {
            opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        self.push(&e.user_data(user_data))?;
        if !self.accepts.contains(&user_data) {
            self.accepts.push(user_data);
        }
        Ok(())
    }

    /// Receive into a buffer the kernel picks from the pool when data arrives. The CQE
    /// names it ([`Completion::buffer`]); the caller then [`BufPool::take`]s it. With the
    /// ring empty the CQE is `-ENOBUFS` and nothing was taken.
    pub fn recv(&mut self, fd: RawFd, user_data: u64) -> Result<(), PushError> {
        let e = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), BUF_SIZE as u32)
            .buf_group(BGID)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data);
        self.push(&e)
    }

    /// Receive into heap memory `mem` (a flow's own buffer), not from the pool: what a
    /// TLS handshake reads, so that flows holding every pool buffer cannot starve the
    /// handshakes of new ones. `mem` is lent until the CQE (the caller lowers it with
    /// [`Lent::returned`]).
    pub fn recv_into(
        &mut self,
        fd: RawFd,
        mem: &mut Lent<[u8]>,
        user_data: u64,
    ) -> Result<(), PushError> {
        let len = u32::try_from(mem.ptr.len()).unwrap_or(u32::MAX);
        // The whole allocation, which stays put until its `lent` count (raised below, on
        // success) is back to 0: nothing else reads or writes it meanwhile (`get` and
        // `get_mut` refuse while lent).
        let e = opcode::Recv::new(types::Fd(fd), mem.ptr.as_ptr().cast::<u8>(), len)
            .build()
            .user_data(user_data);
        self.push(&e)?;
        mem.lent += 1;
        Ok(())
    }

    /// Splice up to `len` bytes from `fd_in` to `fd_out` (one of them a pipe). No user
    /// memory is involved. io_uring runs splices on its async workers (see
    /// [`Ring::pin_async_workers`]); the caller keeps both fds open until the CQE.
    pub fn splice(
        &mut self,
        fd_in: RawFd,
        fd_out: RawFd,
        len: u32,
        user_data: u64,
    ) -> Result<(), PushError> {
        let e = opcode::Splice::new(types::Fd(fd_in), -1, types::Fd(fd_out), -1, len)
            .flags(libc::SPLICE_F_MOVE)
            .build()
            .user_data(user_data);
        self.push(&e)?;
        self.splices += 1;
        Ok(())
    }

    /// Wait, without blocking any thread, until `fd` is readable (or has an error or
    /// end of stream to report): a one-shot `IORING_OP_POLL_ADD` for `POLLIN`.
    pub fn poll_readable(&mut self, fd: RawFd, user_data: u64) -> Result<(), PushError> {
        let mask = u32::try_from(libc::POLLIN).unwrap_or(1);
        let e = opcode::PollAdd::new(types::Fd(fd), mask)
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// A splice's CQE arrived (the caller decodes its `user_data`).
    pub fn splice_done(&mut self) {
        self.splices = self.splices.saturating_sub(1);
    }

    /// Whether some splice is in flight: an async worker of this ring may need the
    /// core, so a worker should not spin on it.
    pub fn splicing(&self) -> bool {
        self.splices > 0
    }

    /// Run this ring's async workers (which carry out splices) on `core` only, so a
    /// worker pinned to a core keeps its work there.
    pub fn pin_async_workers(&self, core: usize) -> io::Result<()> {
        // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if core >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "core out of range",
            ));
        }
        // SAFETY: `core` is inside the set (checked above); `set` is a local.
        unsafe { libc::CPU_SET(core, &mut set) };
        self.ring.submitter().register_iowq_aff(&set)
    }

    /// Send `start..end` of held buffer `buf`. The buffer is `Sending` until the caller
    /// reports the CQE with [`Ring::send_done`]; it cannot be given back before that.
    pub fn send(
        &mut self,
        fd: RawFd,
        buf: BufId,
        start: usize,
        end: usize,
        user_data: u64,
    ) -> Result<(), PushError> {
        if start >= end || end > BUF_SIZE {
            return Err(PushError::Range { start, end });
        }
        self.pool
            .transition(buf.0, BufState::Held, BufState::Sending, "send from")?;
        // `start < end <= BUF_SIZE` was checked above, so the pointer stays inside
        // buffer `buf`, whose memory lives as long as `self.pool` (so, until after the
        // send's CQE: the worker drops its ring only with nothing in flight).
        let ptr = self.pool.buf_addr(buf.0).wrapping_add(start);
        let len = u32::try_from(end - start).unwrap_or(0);
        let e = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        if let Err(err) = self.push(&e) {
            // Not queued: the buffer is simply held again.
            let _ = self
                .pool
                .transition(buf.0, BufState::Sending, BufState::Held, "unsend");
            return Err(err);
        }
        Ok(())
    }

    /// Send the pieces `runs` (offset, length) of held buffer `buf`'s region (offsets
    /// count from the start of its headroom, as [`BufPool::region_mut`] does): one piece
    /// with a plain `send`, several with one `sendmsg` described in `msg` (made when
    /// `None`). The buffer is `Sending` until the CQE (report it with
    /// [`Ring::send_done`]); returns whether `msg` is lent too (then also call
    /// [`Lent::returned`] on it).
    pub fn send_runs(
        &mut self,
        fd: RawFd,
        buf: BufId,
        runs: &[(u32, u32)],
        msg: &mut Option<Lent<SendVec>>,
        user_data: u64,
    ) -> Result<bool, PushError> {
        let outside = |&(at, n): &(u32, u32)| {
            n == 0 || (at as usize).saturating_add(n as usize) > HEADROOM + BUF_SIZE
        };
        if let Some(&(at, n)) = runs.iter().find(|r| outside(r)) {
            return Err(PushError::Range {
                start: at as usize,
                end: at as usize + n as usize,
            });
        }
        if runs.is_empty() || runs.len() > zgate_tls::MAX_RUNS {
            return Err(PushError::Range { start: 0, end: 0 });
        }
        // Every piece lies inside this buffer's stride (checked above); the buffer stays
        // `Sending` (never refilled or given back) until the CQE, inside the pool, which
        // outlives every SQE (the worker drops its ring only with nothing in flight).
        let base = self.pool.headroom_addr(buf.0);
        let (e, lends_msg) = match runs {
            [(at, n)] => {
                let e = opcode::Send::new(types::Fd(fd), base.wrapping_add(*at as usize), *n)
                    .flags(libc::MSG_NOSIGNAL);
                (e.build(), false)
            }
            _ => {
                let m = msg.get_or_insert_with(SendVec::boxed);
                let Some(v) = m.get_mut() else {
                    return Err(PushError::Range { start: 0, end: 0 });
                };
                for (slot, &(at, n)) in v.iov.iter_mut().zip(runs) {
                    slot.iov_base = base.wrapping_add(at as usize).cast();
                    slot.iov_len = n as usize;
                }
                v.hdr.msg_iov = v.iov.as_mut_ptr();
                v.hdr.msg_iovlen = runs.len();
                // The header and the iovecs stay in `msg`, lent below until the CQE.
                let hdr: *const libc::msghdr = &v.hdr;
                let e = opcode::SendMsg::new(types::Fd(fd), hdr).flags(libc::MSG_NOSIGNAL as u32);
                (e.build(), true)
            }
        };
        self.pool
            .transition(buf.0, BufState::Held, BufState::Sending, "send from")?;
        if let Err(err) = self.push(&e.user_data(user_data)) {
            let _ = self
                .pool
                .transition(buf.0, BufState::Sending, BufState::Held, "unsend");
            return Err(err);
        }
        if lends_msg {
            if let Some(m) = msg.as_mut() {
                m.lent += 1;
            }
        }
        Ok(lends_msg)
    }

    /// Send `start..end` of heap memory `mem` (a flow's own output buffer). `mem` is lent
    /// until the CQE (the caller lowers it with [`Lent::returned`]).
    pub fn send_lent(
        &mut self,
        fd: RawFd,
        mem: &mut Lent<[u8]>,
        start: usize,
        end: usize,
        user_data: u64,
    ) -> Result<(), PushError> {
        let len = mem.ptr.len();
        if start >= end || end > len {
            return Err(PushError::Range { start, end });
        }
        // `start < end <= len`: the pointer stays inside `mem`'s allocation, which
        // stays put until its `lent` count (raised below, on success) is back to 0.
        let ptr = mem.ptr.as_ptr().cast::<u8>().wrapping_add(start);
        let n = u32::try_from(end - start).unwrap_or(0);
        let e = opcode::Send::new(types::Fd(fd), ptr.cast_const(), n)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data);
        self.push(&e)?;
        mem.lent += 1;
        Ok(())
    }

    /// The CQE of the send from `buf` arrived: the buffer is held (not sending) again.
    pub fn send_done(&mut self, buf: BufId) -> Result<(), BufError> {
        self.pool
            .transition(buf.0, BufState::Sending, BufState::Held, "finish send of")
    }

    /// Connect `fd` to the address in `mem`, linked to its timeout: two SQEs, two CQEs,
    /// both lend `mem`. `mem` must not be lent already (one connect per `ConnMem`):
    /// [`PushError::Lent`] otherwise, and nothing is queued.
    pub fn connect_with_timeout(
        &mut self,
        fd: RawFd,
        mem: &mut Lent<ConnMem>,
        connect_user_data: u64,
        timeout_user_data: u64,
    ) -> Result<(), PushError> {
        // Read only, and only while nothing points into it yet.
        let Some(m) = mem.get() else {
            return Err(PushError::Lent);
        };
        let addr_ptr = std::ptr::addr_of!(m.addr.storage).cast::<libc::sockaddr>();
        let (addr_len, ts_ptr) = (m.addr.len, std::ptr::addr_of!(m.timeout));
        let room = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if room < 2 {
            self.ring.submit().map_err(PushError::Full)?;
        }
        let connect = opcode::Connect::new(types::Fd(fd), addr_ptr, addr_len)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(connect_user_data);
        let link = opcode::LinkTimeout::new(ts_ptr)
            .build()
            .user_data(timeout_user_data);
        // SAFETY: both entries point into `mem`, which stays allocated until both CQEs
        // (lent += 2 below); pushed together so the link is not split by a submit.
        unsafe { self.ring.submission().push_multiple(&[connect, link]) }
            .map_err(|_| PushError::Full(io::Error::from(io::ErrorKind::WouldBlock)))?;
        mem.lent += 2;
        Ok(())
    }

    /// Read 8 bytes (an eventfd counter) into `buf`.
    pub fn read_u64(
        &mut self,
        fd: RawFd,
        buf: &mut Lent<u64>,
        user_data: u64,
    ) -> Result<(), PushError> {
        let e = opcode::Read::new(types::Fd(fd), buf.ptr.as_ptr().cast::<u8>(), 8)
            .build()
            .user_data(user_data);
        self.push(&e)?;
        buf.lent += 1;
        Ok(())
    }

    /// Cancel every op in flight on `fd`.
    pub fn cancel_fd(&mut self, fd: RawFd, user_data: u64) -> Result<(), PushError> {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all())
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Cancel the op(s) with user_data `target`.
    pub fn cancel(&mut self, target: u64, user_data: u64) -> Result<(), PushError> {
        let e = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(target).all())
            .build()
            .user_data(user_data);
        self.push(&e)
    }

    /// Submit what is queued; do not wait.
    pub fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Busy polling: enter the kernel only when there is something to submit, deferred
    /// task work to run (`IORING_SQ_TASKRUN`, set because the ring has `TASKRUN_FLAG`),
    /// or overflowed completions to flush. Otherwise the caller just looks at the
    /// completion queue again, without a syscall.
    pub fn submit_if_needed(&mut self) -> io::Result<()> {
        let idle = {
            let sq = self.ring.submission();
            sq.is_empty() && !sq.taskrun() && !sq.cq_overflow()
        };
        if idle {
            return Ok(());
        }
        self.submit()
    }

    /// Submit and sleep until one completion arrives or `timeout` passes.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Move every available completion into `out` (cleared first).
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        for cqe in self.ring.completion() {
            out.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                more: cqueue::more(cqe.flags()),
                buffer: cqueue::buffer_select(cqe.flags()),
                accept: self.accepts.contains(&cqe.user_data()),
            });
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Unregister before the memory goes; `ring` (the fd) and then `pool` (the
        // mappings) are dropped after this, in field order. If unregistering fails the
        // kernel may still point at the ring: leak the mappings instead of unmapping.
        if self.ring.submitter().unregister_buf_ring(BGID).is_err() {
            self.pool.ring.leak();
            self.pool.bufs.leak();
        }
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::{Completion, PushError, Ring, HEADROOM};

    /// One completion, waiting up to a second for it.
    fn next(ring: &mut Ring) -> Completion {
        let mut out = Vec::new();
        for _ in 0..100 {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.completions(&mut out);
            if !out.is_empty() {
                assert_eq!(out.len(), 1, "{out:?}");
                return out.remove(0);
            }
        }
        panic!("no completion");
    }

    /// Pieces of a received buffer, its headroom included, go out in order: one piece
    /// with a plain send, several with one sendmsg. A piece outside the buffer is
    /// refused and leaves the buffer held.
    #[test]
    fn send_runs_sends_pieces_of_a_held_buffer_and_its_headroom_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut ring = Ring::new(8, 4, true).unwrap();
        peer.write_all(b"0123456789").unwrap();
        ring.recv(ours.as_raw_fd(), 1).unwrap();
        let c = next(&mut ring);
        assert_eq!(c.result, 10);
        let buf = ring.pool.take(c.buffer.unwrap()).unwrap();
        let region = ring.pool.region_mut(buf, 10).unwrap();
        assert_eq!(&region[HEADROOM..], b"0123456789");
        region[HEADROOM - 3..HEADROOM].copy_from_slice(b"abc");

        let h = HEADROOM as u32;
        let mut msg = None;
        let too_far = [(h + 60_000, 20_000)];
        assert!(matches!(
            ring.send_runs(ours.as_raw_fd(), buf, &too_far, &mut msg, 2),
            Err(PushError::Range { .. })
        ));
        // Still held: readable, and nothing was lent.
        assert!(ring.pool.bytes(buf, 10).is_ok());
        assert!(msg.is_none());

        let runs = [(h - 3, 5), (h + 4, 2), (h + 8, 2)];
        assert!(ring
            .send_runs(ours.as_raw_fd(), buf, &runs, &mut msg, 3)
            .unwrap());
        assert!(ring.pool.bytes(buf, 10).is_err(), "sending: not readable");
        let c = next(&mut ring);
        assert_eq!((c.user_data, c.result), (3, 9));
        msg.as_mut().unwrap().returned();
        ring.send_done(buf).unwrap();
        let mut got = [0u8; 9];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc014589");

        assert!(!ring
            .send_runs(ours.as_raw_fd(), buf, &[(h + 9, 1)], &mut msg, 4)
            .unwrap());
        let c = next(&mut ring);
        assert_eq!((c.user_data, c.result), (4, 1));
        ring.send_done(buf).unwrap();
        peer.read_exact(&mut got[..1]).unwrap();
        assert_eq!(got[0], b'9');
        ring.pool.give_back(buf).unwrap();
    }

    /// A splice counts as in flight from its push until its CQE is handed back, so an
    /// adaptive worker does not spin over the async worker carrying it out; a 1 MiB
    /// pipe is granted (root here, or within `pipe-max-size`).
    #[test]
    fn splices_count_as_in_flight_until_their_completion_is_handed_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        let mut ring = Ring::new(8, 4, true).unwrap();
        let pipe = super::Pipe::new(super::PIPE_SIZE).unwrap();
        assert!(
            pipe.size >= 64 * 1024 && pipe.size <= super::PIPE_SIZE,
            "{}",
            pipe.size
        );
        assert!(!ring.splicing());
        ring.splice(ours.as_raw_fd(), pipe.write_fd(), pipe.size, 7)
            .unwrap();
        assert!(ring.splicing());
        peer.write_all(b"spliced").unwrap();
        let c = next(&mut ring);
        assert_eq!((c.user_data, c.result), (7, 7));
        assert!(
            ring.splicing(),
            "until the caller hands the completion back"
        );
        ring.splice_done();
        assert!(!ring.splicing());
        ring.splice_done();
        assert!(!ring.splicing(), "an extra hand-back does not wrap");
    }

    /// Review 16.12: the connect path wrote its address through a raw pointer assuming
    /// it ran once per memory. Now the memory is filled when it is made and only read
    /// here, and memory already lent is refused (nothing queued).
    #[test]
    fn connect_memory_is_read_only_and_lent_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ring = Ring::new(8, 4, true).unwrap();
        let sock = crate::sys::upstream_socket(&listener.local_addr().unwrap()).unwrap();
        let mut mem = super::ConnMem::boxed(listener.local_addr().unwrap(), Duration::from_secs(5));
        ring.connect_with_timeout(sock.as_raw_fd(), &mut mem, 1, 2)
            .unwrap();
        assert_eq!(mem.lent(), 2);
        assert!(matches!(
            ring.connect_with_timeout(sock.as_raw_fd(), &mut mem, 3, 4),
            Err(PushError::Lent)
        ));
        // The connect completes (and its linked timeout is cancelled): two CQEs.
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for _ in 0..100 {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.completions(&mut out);
            for c in out.drain(..) {
                mem.returned();
                seen.push((c.user_data, c.result));
                // Not an accept's: it carries no fd, whatever its result.
                assert!(c.into_accepted().is_none());
            }
            if seen.len() == 2 {
                break;
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, [(1, 0), (2, -libc::ECANCELED)]);
        assert!(listener.accept().is_ok());
    }

    /// Review 16.12: `adopt_accepted` made an owned fd from any integer. Now only the
    /// completion of an accept this ring armed gives up an fd, once; one dropped
    /// without being taken closes its fd instead of leaking it.
    #[test]
    fn an_accepted_fd_is_adopted_once_and_a_dropped_one_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut ring = Ring::new(8, 4, true).unwrap();
        ring.accept(listener.as_raw_fd(), 9, true).unwrap();
        let _a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let c = next(&mut ring);
        assert!(c.result >= 0);
        let taken = c.into_accepted().expect("an accepted connection");
        assert!(taken.peer_addr().is_ok());
        let _b = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let c = next(&mut ring);
        let fd = c.result;
        assert!(fd >= 0);
        drop(c);
        // SAFETY: fcntl(F_GETFD) on a number we only test; it touches no memory.
        let rc = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(rc, -1, "the dropped completion's fd was closed");
    }

    /// The kernels zgate targets (6.1+) accept `DEFER_TASKRUN`: the option must not
    /// fall back silently here, and off must mean off.
    #[test]
    fn defer_taskrun_is_set_up_when_asked_and_not_otherwise() {
        assert!(Ring::new(8, 4, true).unwrap().defers_taskrun());
        assert!(!Ring::new(8, 4, false).unwrap().defers_taskrun());
    }
}
