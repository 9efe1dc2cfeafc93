//! Swapped connections: the fd-indexed table and stream-socket semantics over the rings.
//!
//! The pass-through path (an fd not in the table) costs one bounds check and one atomic load,
//! takes no lock and allocates nothing. A swapped fd reads and writes its rings under the ring
//! locks in the segment header (so threads, or processes after fork, never corrupt a ring), and
//! waits on the real socket: the peer writes a doorbell byte there when this end announced it
//! sleeps, and the kernel reports the peer's death there as EOF.

use std::{
    cell::UnsafeCell,
    io::{IoSlice, IoSliceMut},
    os::fd::BorrowedFd,
    ptr::null_mut,
    sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering::{AcqRel, Acquire, Relaxed, Release}},
};

use libc::c_int;
use tssx_common::segment::{End, SegmentState};
use tssx_user::{ring::{Consumer, Producer}, segment::Segment};

use crate::real;

/// Fds at or above this are never swapped.
const MAX_FDS: usize = 1 << 16;
/// How long to keep checking the rings before sleeping on the real socket, in nanoseconds (a
/// wake-up costs tens of microseconds on our machines, a ring check tens of nanoseconds).
const SPIN_NS: u64 = 50_000;

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into a live local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// fd -> connection. `Acquire` loads pair with the `Release` store that publishes a fully
/// built connection.
static TABLE: [AtomicPtr<Conn>; MAX_FDS] = [const { AtomicPtr::new(null_mut()) }; MAX_FDS];

/// One swapped socket.
pub struct Conn {
    segment: Segment,
    end: End,
    tx: UnsafeCell<Producer>,
    rx: UnsafeCell<Consumer>,
    /// How many fds of this process refer to this connection (dup, dup2, dup3, F_DUPFD).
    /// AcqRel on the decrement that may reach zero, so the last closer sees all prior uses.
    fds: AtomicU32,
    /// The socket's O_NONBLOCK, read at install and kept up to date by the `fcntl(F_SETFL)`
    /// hook, so that an empty ring costs no `F_GETFL` system call. Relaxed: a flag of this fd.
    nonblock: AtomicBool,
    /// The first thread that used this connection, and whether another one has since: several
    /// threads of one end sleep on the same socket, and one may drain the doorbell meant for
    /// another, so such connections poll with a short timeout. Relaxed: hints for a timeout.
    first_user: AtomicU32,
    shared: AtomicBool,
    /// The real socket reported EOF or an error: the peer closed it or died.
    /// Relaxed: a hint re-checked against the rings, which carry their own ordering.
    peer_eof: AtomicBool,
}

// SAFETY: `tx` and `rx` are only touched under the segment's producer/consumer lock of this
// end (see `with_tx`/`with_rx`), which serializes every thread and process using them.
unsafe impl Sync for Conn {}
// SAFETY: as above; the segment mapping may be used from any thread.
unsafe impl Send for Conn {}

/// The connection of `fd`, if it is swapped.
#[inline]
pub fn lookup(fd: c_int) -> Option<&'static Conn> {
    let slot = TABLE.get(usize::try_from(fd).ok()?)?;
    let ptr = slot.load(Acquire);
    // SAFETY: non-null entries point at leaked-until-close `Conn`s (see `install`/`remove`).
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

/// Maps the segment from the agent and makes `fd` a swapped socket (as `end`).
pub fn install(fd: c_int, end: End, memfd: BorrowedFd<'_>) -> bool {
    let Some(slot) = usize::try_from(fd).ok().and_then(|i| TABLE.get(i)) else { return false };
    let Ok(segment) = Segment::open(memfd) else { return false };
    // SAFETY: this end's handles are only used under the ring locks (`with_tx`/`with_rx`), and
    // they are dropped with the `Conn`, before the segment (field order).
    let (tx, rx) = unsafe { (segment.producer(end), segment.consumer(end)) };
    segment.header().refcount[end.index()].store(1, Release);
    let conn = Box::new(Conn { tx: UnsafeCell::new(tx), rx: UnsafeCell::new(rx), segment, end, peer_eof: AtomicBool::new(false), fds: AtomicU32::new(1), nonblock: AtomicBool::new(nonblocking(fd, 0)), first_user: AtomicU32::new(0), shared: AtomicBool::new(false) });
    let old = slot.swap(Box::into_raw(conn), Release);
    release(old);
    true
}

/// `new_fd` (just made by dup/dup2/dup3/F_DUPFD from `old_fd`) is the same connection.
pub fn duplicated(old_fd: c_int, new_fd: c_int) {
    let Some(slot) = usize::try_from(new_fd).ok().and_then(|i| TABLE.get(i)) else { return };
    let Some(conn) = lookup(old_fd) else {
        // dup2 onto a swapped fd from a plain one: the swapped one was closed by it.
        release(slot.swap(null_mut(), Acquire));
        return;
    };
    conn.fds.fetch_add(1, Relaxed);
    let ptr = (conn as *const Conn).cast_mut();
    release(slot.swap(ptr, Release));
}

/// Drops one fd's reference; the last one tells the peer this end is gone and unmaps.
fn release(ptr: *mut Conn) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: non-null entries point at live `Conn`s from Box::into_raw; each table entry holds
    // one count of `fds`.
    let conn = unsafe { &*ptr };
    if conn.fds.fetch_sub(1, AcqRel) == 1 {
        conn.segment.header().refcount[conn.end.index()].store(0, Release);
        // SAFETY: that was the last reference.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// Forgets `fd` (it is being closed, or went plain) and drops its reference.
fn remove(fd: c_int) {
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| TABLE.get(i)) {
        release(slot.swap(null_mut(), Acquire));
    }
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

fn errno() -> c_int {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

fn nonblocking(fd: c_int, flags: c_int) -> bool {
    // SAFETY: F_GETFL takes no argument.
    flags & libc::MSG_DONTWAIT != 0 || unsafe { real::fcntl(fd, libc::F_GETFL, 0) } & libc::O_NONBLOCK != 0
}

/// This thread's id as ring-lock owner. `gettid` is a system call in glibc, so it is cached per
/// thread (const-initialised TLS: no allocation, usable from signal handlers). A child after
/// fork keeps its parent thread's cached id; the locks only need the id to be non-zero for
/// mutual exclusion, which the compare-and-swap gives regardless.
fn owner_id() -> u32 {
    thread_local! {
        static TID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    TID.with(|tid| {
        if tid.get() == 0 {
            // SAFETY: gettid has no preconditions; thread ids are positive.
            tid.set(unsafe { libc::gettid() } as u32);
        }
        tid.get()
    })
}

/// What a waiting end does while its ring is empty (reader) or full (writer): check again for
/// [`SPIN_NS`], then announce its sleep and sleep on the real socket.
#[derive(Default)]
struct Backoff {
    spins: u32,
    spin_until: u64,
}

impl Backoff {
    /// Progress was made: the next wait starts with a fresh spin budget.
    fn reset(&mut self) {
        self.spins = 0;
    }

    /// One idle step. `announce` announces the sleep and re-checks the ring (true: still
    /// nothing to do, so sleep); `withdraw` takes the announcement back after waking.
    fn idle(&mut self, conn: &Conn, fd: c_int, announce: impl FnOnce() -> bool, withdraw: impl FnOnce()) {
        if self.spins == 0 {
            self.spin_until = now_ns() + SPIN_NS;
        }
        self.spins += 1;
        // The clock is read every 64 checks only.
        if self.spins % 64 != 0 || now_ns() < self.spin_until {
            std::hint::spin_loop();
            return;
        }
        if announce() {
            conn.sleep_on_socket(fd);
            withdraw();
        }
        self.reset();
    }
}

/// The result of a call that moved `total` bytes before it had to stop with `errno`: the
/// partial count if any, else -1 with `errno` set (as the kernel reports partial transfers).
fn partial_or_errno(total: usize, errno: c_int) -> isize {
    if total > 0 {
        return total as isize;
    }
    set_errno(errno);
    -1
}

impl Conn {
    /// Records the fd's new O_NONBLOCK after `fcntl(F_SETFL)`.
    pub fn set_nonblocking(&self, on: bool) {
        self.nonblock.store(on, Relaxed);
    }

    fn would_block_is_error(&self, flags: c_int) -> bool {
        flags & libc::MSG_DONTWAIT != 0 || self.nonblock.load(Relaxed)
    }

    fn state(&self) -> Option<SegmentState> {
        self.segment.state()
    }

    /// Notes which thread uses the connection (see `shared`); returns its id.
    fn user(&self) -> u32 {
        let me = owner_id();
        let first = self.first_user.load(Relaxed);
        if first == 0 {
            let _ = self.first_user.compare_exchange(0, me, Relaxed, Relaxed);
        } else if first != me && !self.shared.load(Relaxed) {
            self.shared.store(true, Relaxed);
        }
        me
    }

    fn with_tx<R>(&self, f: impl FnOnce(&mut Producer) -> R) -> R {
        let lock = self.segment.producer_lock(self.end);
        let me = self.user();
        loop {
            if let Some(_guard) = lock.try_lock(me) {
                // SAFETY: the producer lock of this end is held: no other handle of this ring
                // side is in use anywhere.
                return f(unsafe { &mut *self.tx.get() });
            }
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }

    fn with_rx<R>(&self, f: impl FnOnce(&mut Consumer) -> R) -> R {
        let lock = self.segment.consumer_lock(self.end);
        let me = self.user();
        loop {
            if let Some(_guard) = lock.try_lock(me) {
                // SAFETY: as in `with_tx`, for the consumer side.
                return f(unsafe { &mut *self.rx.get() });
            }
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
    }

    fn peer_gone(&self) -> bool {
        self.peer_eof.load(Relaxed)
            || self.state() == Some(SegmentState::Closed)
            || (self.state() == Some(SegmentState::Active) && self.segment.header().refcount[self.end.peer().index()].load(Acquire) == 0)
    }

    /// Wakes the peer: one byte on the real socket (it drains and ignores them).
    fn ring_doorbell(fd: c_int) {
        let bell = 0u8;
        // SAFETY: sends one byte from a live local; never blocks, never raises SIGPIPE.
        unsafe { real::send(fd, (&bell as *const u8).cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    }

    /// Sleeps on the real socket until a doorbell, the peer's EOF, or a timeout (to re-check a
    /// pending connection's state). The caller has announced its sleep.
    fn sleep_on_socket(&self, fd: c_int) {
        let active = self.state() == Some(SegmentState::Active);
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        // Pending: re-check the agent's decision often. Shared by threads: a sibling may drain
        // our doorbell, so never sleep long. Otherwise the doorbell or EOF always comes.
        let timeout = if !active { 10 } else if self.shared.load(Relaxed) { 1 } else { 1000 };
        let ready = unsafe { real::poll(&mut pfd, 1, timeout) };
        if ready <= 0 {
            return;
        }
        if !active {
            // Pending: anything on the real socket is the peer's data, not doorbells; leave it
            // for after the agent's decision.
            // SAFETY: plain nanosleep on a live timespec.
            unsafe { libc::nanosleep(&libc::timespec { tv_sec: 0, tv_nsec: 1_000_000 }, null_mut()) };
            return;
        }
        self.drain_doorbells(fd);
    }

    fn drain_doorbells(&self, fd: c_int) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: receives into a live local buffer; never blocks.
            let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                continue;
            }
            if n == 0 || (errno() != libc::EAGAIN && errno() != libc::EINTR) {
                self.peer_eof.store(true, Relaxed);
            }
            return;
        }
    }

    /// The connection went plain before the peer read anything: put what this end wrote into
    /// the ring back onto the real socket, in order, and forget the swap. Returns false if the
    /// replay failed (the caller reports the error).
    fn replay_and_unswap(&self, fd: c_int) -> bool {
        let ok = self.with_tx(|_| {
            // SAFETY: the peer never consumed this ring (it is plain for the peer), and the
            // producer lock is held, so this is the only handle touching it.
            let mut back = unsafe { self.segment.consumer_of(self.end) };
            let mut buf = [0u8; 16384];
            loop {
                let n = back.read(&mut buf).bytes;
                if n == 0 {
                    return true;
                }
                let mut done = 0;
                while done < n {
                    // SAFETY: writes from a live local buffer.
                    let w = unsafe { real::send(fd, buf[done..n].as_ptr().cast(), n - done, libc::MSG_NOSIGNAL) };
                    if w < 0 && errno() == libc::EINTR {
                        continue;
                    }
                    if w <= 0 {
                        return false;
                    }
                    done += w as usize;
                }
            }
        });
        remove(fd);
        ok
    }

    /// Once the connection is plain: replay, then the call's outcome — what it moved so far,
    /// `Err(())` for "use the real call" if nothing yet, or EPIPE if the replay failed.
    fn went_plain(&self, fd: c_int, total: usize) -> Option<Result<isize, ()>> {
        if self.state() != Some(SegmentState::Plain) {
            return None;
        }
        let replayed = self.replay_and_unswap(fd);
        Some(match (total, replayed) {
            (0, true) => Err(()),
            (_, true) => Ok(total as isize),
            (_, false) => Ok(partial_or_errno(total, libc::EPIPE)),
        })
    }

    /// `recv` semantics over the ring. `Err(())` means "went plain: call the real function".
    pub fn recv(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], flags: c_int) -> Result<isize, ()> {
        let peek = flags & libc::MSG_PEEK != 0;
        let wait_all = flags & libc::MSG_WAITALL != 0 && !peek;
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return Ok(0);
        }
        let mut total = 0usize;
        let mut backoff = Backoff::default();
        loop {
            if let Some(outcome) = self.went_plain(fd, total) {
                return outcome;
            }
            let got = self.with_rx(|rx| {
                if peek {
                    let first = bufs.iter_mut().find(|b| !b.is_empty()).expect("want > 0");
                    return tssx_user::ring::Transfer { bytes: rx.peek(first), wake_peer: false };
                }
                let mut skip = total;
                let mut rest: Vec<IoSliceMut<'_>> = Vec::new();
                for b in bufs.iter_mut() {
                    if skip >= b.len() {
                        skip -= b.len();
                        continue;
                    }
                    rest.push(IoSliceMut::new(&mut b[skip..]));
                    skip = 0;
                }
                rx.readv(&mut rest)
            });
            if got.wake_peer {
                Self::ring_doorbell(fd);
            }
            total += got.bytes;
            if got.bytes > 0 {
                backoff.reset();
                if !wait_all || total == want {
                    return Ok(total as isize);
                }
                continue;
            }
            if self.peer_gone() {
                // Re-check once: the peer may have written just before leaving.
                if self.with_rx(|rx| rx.available()) > 0 {
                    continue;
                }
                return Ok(total as isize); // EOF (0) or what MSG_WAITALL collected
            }
            if self.would_block_is_error(flags) {
                return Ok(partial_or_errno(total, libc::EAGAIN));
            }
            backoff.idle(self, fd, || self.with_rx(|rx| rx.announce_sleep()), || self.with_rx(|rx| rx.withdraw_sleep()));
        }
    }

    /// `send` semantics over the ring (blocking sends write everything). `Err(())`: went plain.
    pub fn send(&self, fd: c_int, bufs: &[IoSlice<'_>], flags: c_int) -> Result<isize, ()> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let mut total = 0usize;
        let mut backoff = Backoff::default();
        loop {
            if let Some(outcome) = self.went_plain(fd, total) {
                return outcome;
            }
            if self.peer_gone() {
                if total == 0 && flags & libc::MSG_NOSIGNAL == 0 {
                    // SAFETY: raising SIGPIPE in this thread, as the kernel would.
                    unsafe { libc::raise(libc::SIGPIPE) };
                }
                return Ok(partial_or_errno(total, libc::EPIPE));
            }
            if total == want {
                return Ok(total as isize);
            }
            let put = self.with_tx(|tx| {
                let mut skip = total;
                let mut rest: Vec<IoSlice<'_>> = Vec::new();
                for b in bufs {
                    if skip >= b.len() {
                        skip -= b.len();
                        continue;
                    }
                    rest.push(IoSlice::new(&b[skip..]));
                    skip = 0;
                }
                tx.writev(&rest)
            });
            if put.wake_peer {
                Self::ring_doorbell(fd);
            }
            total += put.bytes;
            if put.bytes > 0 {
                backoff.reset();
                continue;
            }
            if self.would_block_is_error(flags) {
                return Ok(partial_or_errno(total, libc::EAGAIN));
            }
            backoff.idle(self, fd, || self.with_tx(|tx| tx.announce_sleep()), || self.with_tx(|tx| tx.withdraw_sleep()));
        }
    }
}

/// `close` of a swapped fd: tell the peer this end is gone, then let the caller close the real
/// socket (whose EOF wakes a sleeping peer).
pub fn close(fd: c_int) {
    if let Some(conn) = lookup(fd) {
        if conn.fds.load(Acquire) == 1 {
            // Last fd: unread doorbells would turn the peer's EOF into ECONNRESET.
            conn.drain_doorbells(fd);
        }
    }
    remove(fd);
}
