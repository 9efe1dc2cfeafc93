//! Swapped connections: the fd-indexed table and stream-socket semantics over the rings.
//!
//! The pass-through path (an fd not in the table) costs one bounds check and one atomic load,
//! takes no lock and allocates nothing. A swapped fd reads and writes its rings under the ring
//! locks in the segment header (so threads, or processes after fork, never corrupt a ring), and
//! waits on the real socket: the peer writes a doorbell byte there when this end announced it
//! sleeps, and the kernel reports the peer's death there as EOF.
//!
//! # What a swapped socket looks like from outside
//!
//! The rules of `af_unix` stream sockets, with the rings as the queues:
//! * *receive shut down* (reads return what is left, then 0; `POLLIN|POLLRDHUP`): this end
//!   called `shutdown(SHUT_RD)`, or the peer `shutdown(SHUT_WR)`, or the peer closed its last
//!   descriptor (header refcount 0) or died (EOF on the real socket);
//! * *send shut down* (writes fail with EPIPE and SIGPIPE): this end `shutdown(SHUT_WR)`, the
//!   peer `shutdown(SHUT_RD)`, or the peer is gone;
//! * `POLLHUP` when both are shut down, `POLLOUT` while the outgoing ring has room (or the peer
//!   is gone, when a write fails at once).
//!
//! `shutdown` is recorded in the segment header only, never on the real socket: the real
//! socket must keep carrying doorbells both ways until both ends close it.

use std::{
    cell::{Cell, UnsafeCell},
    io::{IoSlice, IoSliceMut},
    os::fd::{AsRawFd as _, OwnedFd},
    ptr::null_mut,
    sync::atomic::{
        fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
        Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst},
    },
};

use libc::c_int;
use tssx_common::segment::{End, SegmentState, SHUT_READ, SHUT_RESET, SHUT_WRITE};
use tssx_shm::{
    ring::{Consumer, Producer, Transfer},
    segment::Segment,
};

use crate::real;

/// Fds at or above this are never swapped.
pub const MAX_FDS: usize = 1 << 16;
/// Bounds of the adaptive spin before a wait sleeps, in nanoseconds: a wake-up costs tens of
/// microseconds on our machines, a ring check tens of nanoseconds.
const SPIN_MIN_NS: u64 = 4_000;
const SPIN_MAX_NS: u64 = 100_000;
/// How many iovecs past a partial transfer a call handles at once (more are done in rounds).
const IOV_BATCH: usize = 64;

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into a live local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// fd -> connection. `Acquire` loads pair with the `Release` store that publishes a fully
/// built connection.
static TABLE: [AtomicPtr<Conn>; MAX_FDS] = [const { AtomicPtr::new(null_mut()) }; MAX_FDS];
/// Connections alive in this process (fork and exec only scan the table when non-zero).
/// Relaxed: a hint; the table entries carry their own ordering.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Source of [`Conn::id`]. Relaxed: only uniqueness matters.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One swapped socket.
pub struct Conn {
    segment: Segment,
    end: End,
    tx: UnsafeCell<Producer>,
    rx: UnsafeCell<Consumer>,
    /// The segment's memfd (close-on-exec), kept to hand the segment across `execve`.
    memfd: OwnedFd,
    /// Unique in this process: tells a connection from a later one that reuses fd and address.
    id: u64,
    /// How many fds of this process refer to this connection (dup, dup2, dup3, F_DUPFD).
    /// AcqRel on the decrement that may reach zero, so the last closer sees all prior uses.
    fds: AtomicU32,
    /// The socket's O_NONBLOCK, read at install and kept up to date by the `fcntl(F_SETFL)`
    /// and `ioctl(FIONBIO)` hooks, so that an empty ring costs no `F_GETFL` system call.
    /// Relaxed: a flag of this fd.
    nonblock: AtomicBool,
    /// The first thread that used this connection, and whether another one has since: several
    /// threads of one end sleep on the same socket, and one may drain the doorbell meant for
    /// another, so such connections wait with a short timeout. Relaxed: hints for a timeout.
    first_user: AtomicU32,
    shared: AtomicBool,
    /// The real socket reported EOF or an error: the peer's last descriptor is closed (it
    /// closed or died). Relaxed: a hint re-checked against the rings, which carry their own
    /// ordering.
    peer_closed: AtomicBool,
    /// The connection went plain and this end replayed its ring: every fd of it is a plain
    /// socket from now on. The `Conn` itself stays in the table until its fds close, so that
    /// threads still inside a call on it never see it freed. Set under the producer lock
    /// (`Release`), read with `Acquire`.
    unswapped: AtomicBool,
    /// While the segment is pending (client end): the control connection of the claim, which
    /// the agent closes when it decides. EOF on it while still pending means the agent died:
    /// the connection turns plain. -1 once closed. `swap` to take it (AcqRel).
    agent: std::sync::atomic::AtomicI32,
    /// The peer's ECONNRESET was reported by a read (it is reported once, like `sk_err`).
    /// Relaxed: a flag of this process's view.
    reset_reported: AtomicBool,
    /// Fork generation in which this connection's refcount was last raised (see [`before_fork`]).
    fork_mark: AtomicU64,
}

// SAFETY: `tx` and `rx` are only touched under the segment's producer/consumer lock of this
// end (see `with_tx`/`with_rx`), which serializes every thread and process using them.
unsafe impl Sync for Conn {}
// SAFETY: as above; the segment mapping may be used from any thread.
unsafe impl Send for Conn {}

/// The connection of `fd`, if it is swapped (and has not gone plain).
#[inline]
pub fn lookup(fd: c_int) -> Option<&'static Conn> {
    lookup_any(fd).filter(|c| !c.unswapped.load(Acquire))
}

/// The connection of `fd`, swapped or gone plain (close and dup bookkeeping).
#[inline]
pub fn lookup_any(fd: c_int) -> Option<&'static Conn> {
    let slot = TABLE.get(usize::try_from(fd).ok()?)?;
    let ptr = slot.load(Acquire);
    // SAFETY: non-null entries point at leaked-until-close `Conn`s (see `install`/`release`).
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

/// Whether any connection is swapped in this process.
#[inline]
pub fn any_live() -> bool {
    LIVE.load(Relaxed) != 0
}

/// How an end joins the segment: `Fresh` for a new connection (this process is the end's only
/// holder), `Inherited` after `execve` (the end's refcount already counts this process).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// A new connection from the agent.
    Fresh,
    /// Re-attached after exec.
    Inherited,
}

/// Maps the segment and makes `fd` a swapped socket (as `end`). Takes the memfd, and for a
/// pending client the agent connection to watch (see [`Conn::agent_alive`]).
pub fn install(fd: c_int, end: End, memfd: OwnedFd, join: Join, agent: Option<OwnedFd>) -> bool {
    let Some(slot) = usize::try_from(fd).ok().and_then(|i| TABLE.get(i)) else { return false };
    let Ok(segment) = Segment::open(std::os::fd::AsFd::as_fd(&memfd)) else { return false };
    // SAFETY: this end's handles are only used under the ring locks (`with_tx`/`with_rx`), and
    // they are dropped with the `Conn`, before the segment (field order).
    let (tx, rx) = unsafe { (segment.producer(end), segment.consumer(end)) };
    if join == Join::Fresh {
        // Release: pairs with the peer's Acquire load in `peer_gone`.
        segment.header().refcount[end.index()].store(1, Release);
    }
    let conn = Box::new(Conn {
        tx: UnsafeCell::new(tx),
        rx: UnsafeCell::new(rx),
        segment,
        end,
        memfd,
        id: NEXT_ID.fetch_add(1, Relaxed),
        peer_closed: AtomicBool::new(false),
        fds: AtomicU32::new(1),
        nonblock: AtomicBool::new(fd_nonblocking(fd)),
        first_user: AtomicU32::new(0),
        shared: AtomicBool::new(false),
        fork_mark: AtomicU64::new(0),
        reset_reported: AtomicBool::new(false),
        unswapped: AtomicBool::new(false),
        agent: std::sync::atomic::AtomicI32::new(agent.map_or(-1, std::os::fd::IntoRawFd::into_raw_fd)),
    });
    LIVE.fetch_add(1, Relaxed);
    let old = slot.swap(Box::into_raw(conn), Release);
    release(old, -1);
    true
}

/// `new_fd` (just made by dup/dup2/dup3/F_DUPFD from `old_fd`) is the same connection.
pub fn duplicated(old_fd: c_int, new_fd: c_int) {
    let Some(slot) = usize::try_from(new_fd).ok().and_then(|i| TABLE.get(i)) else { return };
    let Some(conn) = lookup_any(old_fd) else {
        // dup2 onto a swapped fd from a plain one: the swapped one was closed by it.
        release(slot.swap(null_mut(), Acquire), -1);
        return;
    };
    conn.fds.fetch_add(1, Relaxed);
    let ptr = (conn as *const Conn).cast_mut();
    release(slot.swap(ptr, Release), -1);
}

/// Drops one fd's reference; the last one tells the peer this end is gone (ringing through
/// `fd` if it is still this socket, else -1) and unmaps.
fn release(ptr: *mut Conn, fd: c_int) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: non-null entries point at live `Conn`s from Box::into_raw; each table entry holds
    // one count of `fds`.
    let conn = unsafe { &*ptr };
    if conn.fds.fetch_sub(1, AcqRel) == 1 {
        conn.leave(fd);
        conn.close_agent();
        LIVE.fetch_sub(1, Relaxed);
        // SAFETY: that was the last reference.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// Calls `f` once for every connection of this process (however many fds refer to it).
fn for_each_conn(mut f: impl FnMut(c_int, &Conn)) {
    if !any_live() {
        return;
    }
    let generation = NEXT_ID.fetch_add(1, Relaxed);
    for (fd, slot) in TABLE.iter().enumerate() {
        let ptr = slot.load(Acquire);
        if ptr.is_null() {
            continue;
        }
        // SAFETY: non-null entries point at live `Conn`s.
        let conn = unsafe { &*ptr };
        if conn.fork_mark.swap(generation, Relaxed) != generation {
            f(fd as c_int, conn);
        }
    }
}

/// Before `fork`: the child will hold every connection too, so each end's refcount goes up
/// (before the child exists, so a parent closing early never makes the peer see zero).
pub fn before_fork() {
    for_each_conn(|_, conn| {
        conn.segment.header().refcount[conn.end.index()].fetch_add(1, Relaxed);
        conn.shared.store(true, Relaxed);
    });
}

/// `fork` failed: undo [`before_fork`].
pub fn fork_failed() {
    for_each_conn(|_, conn| {
        conn.segment.header().refcount[conn.end.index()].fetch_sub(1, AcqRel);
    });
}

/// In the child after `fork`: the calling thread has a new id.
pub fn in_child() {
    OWNER.with(|tid| tid.set(0));
}

/// One swapped fd that survives `execve`, as handed to the new image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inherit {
    /// The socket.
    pub fd: c_int,
    /// The segment's memfd (close-on-exec cleared for the exec).
    pub memfd: c_int,
    /// Which end the socket is.
    pub end: End,
    /// The socket's inode, to find it again if a spawn's file actions renumbered it.
    pub inode: u64,
}

/// Before `execve`: every swapped fd that survives the exec (no FD_CLOEXEC) and its memfd,
/// whose close-on-exec flag is cleared so the new image's hook can map it again.
pub fn prepare_exec(mut out: impl FnMut(Inherit)) {
    if !any_live() {
        return;
    }
    for (fd, slot) in TABLE.iter().enumerate() {
        let ptr = slot.load(Acquire);
        if ptr.is_null() {
            continue;
        }
        // SAFETY: non-null entries point at live `Conn`s.
        let conn = unsafe { &*ptr };
        if conn.unswapped.load(Acquire) {
            continue;
        }
        let fd = fd as c_int;
        // SAFETY: F_GETFD takes no argument.
        let flags = unsafe { real::fcntl(fd, libc::F_GETFD, 0) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            let memfd = conn.memfd.as_raw_fd();
            // SAFETY: clears FD_CLOEXEC on our own memfd.
            unsafe { real::fcntl(memfd, libc::F_SETFD, 0) };
            // SAFETY: `stat` is plain data; fstat fills it.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: a valid out-pointer.
            let inode = if unsafe { libc::fstat(fd, &mut st) } == 0 { st.st_ino } else { 0 };
            out(Inherit { fd, memfd, end: conn.end, inode });
        }
    }
}

/// A spawned process will hold the connections of `list` too (`+1`), or the spawn failed
/// (`-1`): adjusts each connection's end refcount once.
pub fn spawn_holds(list: &[Inherit], delta: i32) {
    for (i, item) in list.iter().enumerate() {
        if list[..i].iter().any(|other| other.memfd == item.memfd) {
            continue;
        }
        if let Some(conn) = lookup(item.fd) {
            let count = &conn.segment.header().refcount[conn.end.index()];
            if delta > 0 {
                count.fetch_add(1, Relaxed);
            } else {
                count.fetch_sub(1, AcqRel);
            }
        }
    }
}

/// `execve` failed: the memfds are close-on-exec again.
pub fn exec_failed() {
    for_each_conn(|_, conn| {
        // SAFETY: sets FD_CLOEXEC on our own memfd.
        unsafe { real::fcntl(conn.memfd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC as libc::c_ulong) };
    });
}

pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

pub fn errno() -> c_int {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

/// The file's O_NONBLOCK (one `F_GETFL`).
fn fd_nonblocking(fd: c_int) -> bool {
    // SAFETY: F_GETFL takes no argument.
    let flags = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    flags >= 0 && flags & libc::O_NONBLOCK != 0
}

thread_local! {
    /// This thread's id as ring-lock owner (0 = not read yet). `gettid` is a system call in
    /// glibc, so it is cached (const-initialised TLS: no allocation, usable from signal
    /// handlers); reset in a forked child.
    static OWNER: Cell<u32> = const { Cell::new(0) };
    /// This thread's current spin budget in nanoseconds (0 = not set yet): grows when spinning
    /// found work or when a wait that slept was short enough to catch spinning, shrinks when a
    /// wait that slept was longer than the longest spin (see [`woke`]).
    static SPIN_NS: Cell<u64> = const { Cell::new(0) };
    /// When the wait that spun in vain and went to sleep started (0: none); see [`woke`].
    static WAIT_SINCE: Cell<u64> = const { Cell::new(0) };
}

fn owner_id() -> u32 {
    OWNER.with(|tid| {
        if tid.get() == 0 {
            // SAFETY: gettid has no preconditions; thread ids are positive.
            tid.set(unsafe { libc::gettid() } as u32);
        }
        tid.get()
    })
}

/// The adaptive spin budget of this thread.
pub fn spin_budget() -> u64 {
    SPIN_NS.with(|b| if b.get() == 0 { SPIN_MAX_NS / 2 } else { b.get() })
}

/// Gives the core away during a long spin (a cheap system call when nobody else wants it).
pub fn spin_yield() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// The spin phase of a poll-like wait: checks `ready` for the thread's spin budget (at most
/// `timeout_ns`), yielding the core now and then; adapts the budget to the outcome and returns
/// whether something became ready.
pub fn spin_until(timeout_ns: Option<u64>, mut ready: impl FnMut() -> bool) -> bool {
    let until = now_ns() + spin_budget().min(timeout_ns.unwrap_or(u64::MAX));
    let mut found = false;
    let mut rounds = 0u32;
    let started = now_ns();
    while now_ns() < until {
        for _ in 0..32 {
            std::hint::spin_loop();
        }
        rounds += 1;
        if rounds % 32 == 0 {
            spin_yield();
        }
        if ready() {
            found = true;
            break;
        }
    }
    if found {
        spin_paid_off();
    } else {
        spin_missed(started);
    }
    found
}

/// How long a poll-like call may sleep in the real call: until `deadline` (`None`: forever),
/// but at most 1 ms if a connection is shared by several waiters (one may drain a doorbell
/// meant for another) and 10 ms if one is pending (to see the agent's decision).
pub fn sleep_budget(deadline: Option<u64>, shared: bool, pending: bool) -> Option<u64> {
    let mut wait = deadline.map(|d| d.saturating_sub(now_ns()));
    if shared {
        wait = Some(wait.unwrap_or(u64::MAX).min(1_000_000));
    }
    if pending {
        wait = Some(wait.unwrap_or(u64::MAX).min(10_000_000));
    }
    wait
}

/// Spinning found work: the spin budget doubles (up to [`SPIN_MAX_NS`]).
fn spin_paid_off() {
    SPIN_NS.with(|b| {
        let cur = if b.get() == 0 { SPIN_MAX_NS / 2 } else { b.get() };
        b.set((cur * 2).min(SPIN_MAX_NS));
    });
}

/// A wait that started at `started` spun for the whole budget in vain and is going to sleep;
/// the caller reports the end of the sleep with [`woke`].
pub fn spin_missed(started: u64) {
    WAIT_SINCE.with(|w| w.set(started));
}

/// The sleep after [`spin_missed`] ended. If the whole wait was shorter than the longest spin,
/// a longer spin would have caught it: the budget grows to 1.5 times that wait. Otherwise it
/// halves. (Halving on every sleep alone is a trap: once the budget is below the usual wait,
/// spinning never finds work again, and every wait pays a sleep and a wake-up for good.)
pub fn woke() {
    let since = WAIT_SINCE.with(|w| w.replace(0));
    if since == 0 {
        return;
    }
    let waited = now_ns().saturating_sub(since);
    SPIN_NS.with(|b| {
        let cur = if b.get() == 0 { SPIN_MAX_NS / 2 } else { b.get() };
        b.set(if waited <= SPIN_MAX_NS { cur.max(waited + waited / 2).min(SPIN_MAX_NS) } else { (cur / 2).max(SPIN_MIN_NS) });
    });
}

/// Why a blocking wait ended without progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// A signal handler ran and the call must fail with EINTR.
    Interrupted,
    /// The socket's receive timeout (SO_RCVTIMEO) expired, or it turned non-blocking.
    TimedOut,
}

impl WaitError {
    fn errno(self) -> c_int {
        match self {
            WaitError::Interrupted => libc::EINTR,
            WaitError::TimedOut => libc::EAGAIN,
        }
    }
}

/// What a waiting end does while its ring is empty (reader) or full (writer): check again for
/// the thread's spin budget, then announce its sleep and sleep on the real socket.
#[derive(Default)]
struct Backoff {
    spins: u32,
    spin_from: u64,
    spin_until: u64,
}

impl Backoff {
    /// Progress was made: the next wait starts with a fresh spin budget.
    fn progress(&mut self) {
        if self.spins != 0 {
            spin_paid_off();
        }
        self.spins = 0;
    }

    /// One idle step. `announce` announces the sleep and re-checks the ring (true: still
    /// nothing to do, so sleep); `withdraw` takes the announcement back after waking.
    fn idle(&mut self, conn: &Conn, fd: c_int, announce: impl FnOnce() -> bool, withdraw: impl FnOnce()) -> Result<(), WaitError> {
        if self.spins == 0 {
            if conn.state() == Some(SegmentState::Pending) {
                // The peer has not joined yet: it cannot answer before the agent's reply reached
                // it, a wake-up away at least. Spinning would only take the core that the peer
                // and the agent need; and this wait says nothing about the usual one.
                return Self::sleep(conn, fd, announce, withdraw);
            }
            self.spin_from = now_ns();
            self.spin_until = self.spin_from + spin_budget();
        }
        self.spins += 1;
        // The clock is read every 64 checks only; a long spin yields now and then, so that on
        // a busy machine the peer (or anyone) that needs this core gets it.
        if self.spins % 64 != 0 || now_ns() < self.spin_until {
            if self.spins % 1024 == 0 {
                spin_yield();
            }
            std::hint::spin_loop();
            return Ok(());
        }
        spin_missed(self.spin_from);
        self.spins = 0;
        let result = Self::sleep(conn, fd, announce, withdraw);
        woke();
        result
    }

    /// Announces the sleep, re-checks, and sleeps on the real socket unless that found work.
    fn sleep(conn: &Conn, fd: c_int, announce: impl FnOnce() -> bool, withdraw: impl FnOnce()) -> Result<(), WaitError> {
        if !announce() {
            return Ok(());
        }
        // The announcement's fence orders these flag reads after it (see `Conn::announce`).
        let result = if conn.rcv_shut()
            || conn.send_shut()
            || conn.state() != Some(SegmentState::Active) && conn.state() != Some(SegmentState::Pending)
        {
            Ok(())
        } else {
            conn.sleep_on_socket(fd)
        };
        withdraw();
        result
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

/// Calls `f` with the part of `bufs` after the first `skip` bytes (at most [`IOV_BATCH`]
/// slices, on the stack: no allocation on the data path).
fn after_mut<R>(bufs: &mut [IoSliceMut<'_>], mut skip: usize, f: impl FnOnce(&mut [IoSliceMut<'_>]) -> R) -> R {
    let mut rest: [IoSliceMut<'_>; IOV_BATCH] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
    let mut n = 0;
    for b in bufs.iter_mut() {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        if n == IOV_BATCH {
            break;
        }
        // SAFETY: a sub-slice of a caller buffer, used only within this call while `bufs` is
        // mutably borrowed; no other reference to it exists meanwhile.
        let tail = unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().add(skip), b.len() - skip) };
        rest[n] = IoSliceMut::new(tail);
        n += 1;
        skip = 0;
    }
    f(&mut rest[..n])
}

/// As [`after_mut`], for sending.
fn after<R>(bufs: &[IoSlice<'_>], mut skip: usize, f: impl FnOnce(&[IoSlice<'_>]) -> R) -> R {
    let mut rest: [IoSlice<'_>; IOV_BATCH] = [IoSlice::new(&[]); IOV_BATCH];
    let mut n = 0;
    for b in bufs {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        if n == IOV_BATCH {
            break;
        }
        rest[n] = IoSlice::new(&b[skip..]);
        n += 1;
        skip = 0;
    }
    f(&rest[..n])
}

/// Readiness bits, as `poll` reports them.
pub mod bits {
    /// Data or EOF to read.
    pub const IN: u32 = (libc::POLLIN | libc::POLLRDNORM) as u32;
    /// Room to write (or a write would fail at once).
    pub const OUT: u32 = (libc::POLLOUT | libc::POLLWRNORM) as u32;
    /// Receive side shut down.
    pub const RDHUP: u32 = libc::POLLRDHUP as u32;
    /// Both sides shut down.
    pub const HUP: u32 = libc::POLLHUP as u32;
    /// A pending error (the peer closed with bytes unread: ECONNRESET).
    pub const ERR: u32 = libc::POLLERR as u32;
}

/// The received socket of `fds` that the segment in `memfd` belongs to (see `pass`).
pub fn segment_target(memfd: &OwnedFd, fds: &[c_int]) -> Option<(c_int, End)> {
    let segment = Segment::open(std::os::fd::AsFd::as_fd(memfd)).ok()?;
    crate::pass::target_of(segment.header(), fds)
}

impl Conn {
    /// The segment header.
    pub fn header(&self) -> &tssx_common::segment::SegmentHeader {
        self.segment.header()
    }

    /// Which end this process holds.
    pub fn end(&self) -> End {
        self.end
    }

    /// The segment's memfd (owned by this connection).
    pub fn memfd_raw(&self) -> c_int {
        self.memfd.as_raw_fd()
    }

    /// Unique id of this connection in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records the fd's new O_NONBLOCK after `fcntl(F_SETFL)` or `ioctl(FIONBIO)`.
    pub fn set_nonblocking(&self, on: bool) {
        self.nonblock.store(on, Relaxed);
    }

    fn would_block_is_error(&self, flags: c_int) -> bool {
        flags & libc::MSG_DONTWAIT != 0 || self.nonblock.load(Relaxed)
    }

    /// The segment state.
    pub fn state(&self) -> Option<SegmentState> {
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

    /// Whether other threads or processes may wait on this socket too (and steal doorbells).
    pub fn is_shared(&self) -> bool {
        self.shared.load(Relaxed) || self.segment.header().refcount[self.end.index()].load(Relaxed) > 1
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

    /// Shutdown bits of `end` (Acquire: pairs with the SeqCst `fetch_or` in `shutdown`).
    fn shut_bits(&self, end: End) -> u32 {
        self.segment.header().shut.0[end.index()].load(Acquire)
    }

    /// The peer's last descriptor is closed (or the peer died).
    fn peer_gone(&self) -> bool {
        self.peer_closed.load(Relaxed)
            || self.state() == Some(SegmentState::Closed)
            || (self.state() == Some(SegmentState::Active) && self.segment.header().refcount[self.end.peer().index()].load(Acquire) == 0)
    }

    /// Nothing more will arrive: reads return what is left, then 0.
    pub fn rcv_shut(&self) -> bool {
        self.shut_bits(self.end) & SHUT_READ != 0 || self.shut_bits(self.end.peer()) & SHUT_WRITE != 0 || self.peer_gone()
    }

    /// Writes fail with EPIPE.
    pub fn send_shut(&self) -> bool {
        self.shut_bits(self.end) & SHUT_WRITE != 0 || self.shut_bits(self.end.peer()) & SHUT_READ != 0 || self.peer_gone()
    }

    /// Bytes waiting in the incoming ring (`FIONREAD`).
    pub fn unread(&self) -> usize {
        let ring = &self.segment.header().rings[self.end.peer().index()];
        // Acquire on both: positions published by their writers with Release.
        let head = ring.producer.0.head.load(Acquire);
        let tail = ring.consumer.0.tail.load(Acquire);
        head.wrapping_sub(tail) as usize
    }

    /// Bytes this end wrote that the peer has not read yet (`SIOCOUTQ`).
    pub fn unsent(&self) -> usize {
        let ring = &self.segment.header().rings[self.end.index()];
        // Acquire on both, as in `unread`.
        let head = ring.producer.0.head.load(Acquire);
        let tail = ring.consumer.0.tail.load(Acquire);
        head.wrapping_sub(tail) as usize
    }

    /// Positions that change when new data arrives (incoming head) and when room is made
    /// (outgoing tail): edge-triggered epoll reports an edge when one of them moved.
    pub fn edges(&self) -> (u64, u64) {
        let header = self.segment.header();
        // Acquire: as in `unread`.
        (header.rings[self.end.peer().index()].producer.0.head.load(Acquire), header.rings[self.end.index()].consumer.0.tail.load(Acquire))
    }

    /// The peer closed with bytes unread and no read has reported ECONNRESET yet.
    fn reset_pending(&self) -> bool {
        self.shut_bits(self.end.peer()) & SHUT_RESET != 0 && !self.reset_reported.load(Relaxed)
    }

    /// Readiness from the rings and the shutdown state ([`bits`]), without a system call.
    pub fn readiness(&self) -> u32 {
        let mut ready = 0;
        if self.reset_pending() {
            ready |= bits::ERR;
        }
        let rcv_shut = self.rcv_shut();
        let send_shut = self.send_shut();
        if self.unread() > 0 || rcv_shut {
            ready |= bits::IN;
        }
        if rcv_shut {
            ready |= bits::RDHUP;
            if send_shut {
                ready |= bits::HUP;
            }
        }
        if self.unsent() < self.segment.ring_capacity() || self.peer_gone() {
            ready |= bits::OUT;
        }
        ready
    }

    /// Announces that a thread of this end is about to sleep in a poll-like call (the peer
    /// then rings the doorbell after its next transfer or shutdown). The caller issues one
    /// `SeqCst` fence after all its announcements and re-checks readiness before sleeping.
    pub fn announce(&self) {
        // Relaxed: ordered by the caller's SeqCst fence (see `SegmentHeader::asleep`).
        self.segment.header().asleep.0[self.end.index()].fetch_add(1, Relaxed);
    }

    /// Takes an announcement back.
    pub fn withdraw(&self) {
        // Relaxed: at worst the peer sends one spurious doorbell.
        self.segment.header().asleep.0[self.end.index()].fetch_sub(1, Relaxed);
    }

    /// After changing something the peer may wait for (shutdown, last close): wake it if it
    /// announced a sleep.
    fn wake_peer(&self, fd: c_int) {
        // SeqCst fence: pairs with the fence after the peer's announcement.
        fence(SeqCst);
        // Relaxed: ordered by the fence.
        if self.segment.header().asleep.0[self.end.peer().index()].load(Relaxed) != 0 {
            Self::ring_doorbell(fd);
        }
    }

    /// Wakes the peer: one byte on the real socket (it drains and ignores them).
    fn ring_doorbell(fd: c_int) {
        let bell = 0u8;
        // SAFETY: sends one byte from a live local; never blocks, never raises SIGPIPE.
        unsafe { real::send(fd, (&bell as *const u8).cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    }

    /// Sleeps on the real socket until a doorbell, the peer's EOF, or (pending or shared
    /// connections) a short timeout. The caller has announced its sleep.
    ///
    /// An active connection used by one thread sleeps in a blocking `recv(MSG_PEEK)` of one
    /// byte: the kernel then applies the caller's signal dispositions (SA_RESTART restarts it,
    /// otherwise EINTR) and the socket's SO_RCVTIMEO, exactly as for a plain read.
    fn sleep_on_socket(&self, fd: c_int) -> Result<(), WaitError> {
        let active = self.state() == Some(SegmentState::Active);
        if active && !self.is_shared() {
            let mut byte = 0u8;
            // SAFETY: peeks one byte into a live local.
            let n = unsafe { real::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK) };
            return match n {
                1 => {
                    self.drain_doorbells(fd);
                    Ok(())
                }
                0 => {
                    self.peer_closed.store(true, Relaxed);
                    Ok(())
                }
                _ => match errno() {
                    libc::EINTR => Err(WaitError::Interrupted),
                    libc::EAGAIN => {
                        if fd_nonblocking(fd) {
                            self.set_nonblocking(true);
                        }
                        Err(WaitError::TimedOut)
                    }
                    _ => {
                        self.peer_closed.store(true, Relaxed);
                        Ok(())
                    }
                },
            };
        }
        if !active {
            self.check_agent();
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // Pending: re-check the agent's decision often. Shared: a sibling may drain our
        // doorbell, so never sleep long.
        let timeout = if active { 1 } else { 10 };
        // SAFETY: one live pollfd.
        let ready = unsafe { real::poll(&mut pfd, 1, timeout) };
        if ready <= 0 {
            return Ok(());
        }
        if active {
            self.drain_doorbells_if_alone(fd, 1);
        } else {
            self.on_plain_data();
        }
        Ok(())
    }

    /// Drains doorbells unless other threads of this end (beyond the caller's own `mine`
    /// announcements) sleep too: one of them may block in `recv(MSG_PEEK)`, which only a byte
    /// on the socket wakes, and it drains them itself. Waiters that leave the bytes there poll
    /// again with a short timeout, so nobody sleeps through a doorbell.
    pub fn drain_doorbells_if_alone(&self, fd: c_int, mine: u32) {
        // Relaxed: a hint; the doorbell bytes themselves stay until someone drains them.
        if self.segment.header().asleep.0[self.end.index()].load(Relaxed) <= mine {
            self.drain_doorbells(fd);
        } else {
            let mut probe = 0u8;
            // SAFETY: peeks one byte into a live local without blocking: EOF still counts.
            if unsafe { real::recv(fd, (&mut probe as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) } == 0 {
                self.peer_closed.store(true, Relaxed);
            }
            // Let the sibling run before this thread polls again.
            spin_yield();
        }
    }

    /// While pending: checks the claim's control connection (no system call otherwise). EOF
    /// there while the segment is still pending means the agent died before deciding: the
    /// connection turns plain. Once decided, the control connection is closed.
    pub fn check_agent(&self) {
        if self.agent.load(Relaxed) < 0 {
            return;
        }
        if self.state() != Some(SegmentState::Pending) {
            self.close_agent();
            return;
        }
        let fd = self.agent.load(Relaxed);
        let mut byte = 0u8;
        // SAFETY: peeks one byte into a live local without blocking.
        let n = unsafe { real::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n == 0 || (n < 0 && errno() != libc::EAGAIN && errno() != libc::EINTR) {
            let _ = self.segment.transition(SegmentState::Pending, SegmentState::Plain);
            self.close_agent();
        }
    }

    fn close_agent(&self) {
        let fd = self.agent.swap(-1, AcqRel);
        if fd >= 0 {
            // SAFETY: the hook's own control connection, owned by this field.
            unsafe { real::close(fd) };
        }
    }

    /// The real socket is readable while the connection is pending: the peer writes to the
    /// socket, so it does not use the rings. Decide plain now instead of waiting for the agent.
    pub fn on_plain_data(&self) {
        if self.end == End::Client {
            let _ = self.segment.transition(SegmentState::Pending, SegmentState::Plain);
        }
    }

    /// Reads and discards doorbell bytes; notes the peer's EOF.
    pub fn drain_doorbells(&self, fd: c_int) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: receives into a live local buffer; never blocks.
            let n = unsafe { real::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                continue;
            }
            if n == 0 || (errno() != libc::EAGAIN && errno() != libc::EINTR) {
                self.peer_closed.store(true, Relaxed);
            }
            return;
        }
    }

    /// The connection went plain before the peer read anything: put what this end wrote into
    /// the ring back onto the real socket, in order, apply this end's shutdowns to it, and
    /// forget the swap. Returns false if the replay failed (the caller reports the error).
    fn replay_and_unswap(&self, fd: c_int) -> bool {
        self.with_tx(|_| {
            if self.unswapped.load(Acquire) {
                return true; // another thread did it
            }
            // SAFETY: the peer never consumed this ring (it is plain for the peer), and the
            // producer lock is held, so this is the only handle touching it.
            let mut back = unsafe { self.segment.consumer_of(self.end) };
            let mut buf = [0u8; 16384];
            let ok = 'replay: loop {
                let n = back.read(&mut buf).bytes;
                if n == 0 {
                    break true;
                }
                let mut done = 0;
                while done < n {
                    // SAFETY: writes from a live local buffer.
                    let w = unsafe { real::send(fd, buf[done..n].as_ptr().cast(), n - done, libc::MSG_NOSIGNAL) };
                    if w < 0 && errno() == libc::EINTR {
                        continue;
                    }
                    if w < 0 && errno() == libc::EAGAIN {
                        let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                        // SAFETY: one live pollfd.
                        unsafe { real::poll(&mut pfd, 1, 100) };
                        continue;
                    }
                    if w <= 0 {
                        break 'replay false;
                    }
                    done += w as usize;
                }
            };
            let how = match self.shut_bits(self.end) & (SHUT_READ | SHUT_WRITE) {
                0 => None,
                SHUT_READ => Some(libc::SHUT_RD),
                SHUT_WRITE => Some(libc::SHUT_WR),
                _ => Some(libc::SHUT_RDWR),
            };
            if let Some(how) = how {
                // SAFETY: plain system call on the caller's socket.
                unsafe { libc::shutdown(fd, how) };
            }
            // Every fd of this connection is plain from now on (writers check this under the
            // producer lock, so nothing lands in the ring after the replay).
            self.unswapped.store(true, Release);
            ok
        })
    }

    /// Once the connection is plain: replay, then the call's outcome — what it moved so far,
    /// `Err(())` for "use the real call" if nothing yet, or EPIPE if the replay failed.
    /// A receiving call always hands over to the real socket (which reports EOF or the error
    /// itself), whatever happened to the replay.
    fn went_plain(&self, fd: c_int, total: usize, receiving: bool) -> Option<Result<isize, ()>> {
        if self.state() != Some(SegmentState::Plain) && !self.unswapped.load(Acquire) {
            return None;
        }
        let replayed = self.replay_and_unswap(fd) || receiving;
        Some(match (total, replayed) {
            (0, true) => Err(()),
            (_, true) => Ok(total as isize),
            (_, false) => Ok(partial_or_errno(total, libc::EPIPE)),
        })
    }

    /// For poll and epoll: if the connection went plain, replay and forget it; true if so
    /// (the fd is a plain socket from now on).
    pub fn unswap_if_plain(&self, fd: c_int) -> bool {
        if self.unswapped.load(Acquire) {
            return true;
        }
        if self.state() != Some(SegmentState::Plain) {
            return false;
        }
        self.replay_and_unswap(fd);
        true
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
            if let Some(outcome) = self.went_plain(fd, total, true) {
                return outcome;
            }
            let got = self.with_rx(|rx| {
                if peek {
                    return Transfer { bytes: rx.peekv(bufs), wake_peer: false };
                }
                after_mut(bufs, total, |rest| rx.readv(rest))
            });
            if got.wake_peer {
                Self::ring_doorbell(fd);
            }
            total += got.bytes;
            if got.bytes > 0 {
                backoff.progress();
                if !wait_all || total == want {
                    return Ok(total as isize);
                }
                continue;
            }
            if self.rcv_shut() {
                // Re-check once: the peer may have written just before shutting down.
                if self.unread() > 0 {
                    continue;
                }
                if total == 0 && !peek && self.reset_pending() {
                    self.reset_reported.store(true, Relaxed);
                    return Ok(partial_or_errno(0, libc::ECONNRESET));
                }
                return Ok(total as isize); // EOF (0) or what MSG_WAITALL collected
            }
            if self.would_block_is_error(flags) {
                return Ok(partial_or_errno(total, libc::EAGAIN));
            }
            let waited = backoff.idle(self, fd, || self.with_rx(|rx| rx.announce_sleep()), || self.with_rx(|rx| rx.withdraw_sleep()));
            if let Err(e) = waited {
                return Ok(partial_or_errno(total, e.errno()));
            }
        }
    }

    /// `send` semantics over the ring (blocking sends write everything). `Err(())`: went plain.
    pub fn send(&self, fd: c_int, bufs: &[IoSlice<'_>], flags: c_int) -> Result<isize, ()> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let mut total = 0usize;
        let mut backoff = Backoff::default();
        loop {
            if let Some(outcome) = self.went_plain(fd, total, false) {
                return outcome;
            }
            if self.send_shut() {
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
                if self.unswapped.load(Acquire) {
                    return Transfer { bytes: 0, wake_peer: false };
                }
                after(bufs, total, |rest| tx.writev(rest))
            });
            if put.bytes == 0 && self.unswapped.load(Acquire) {
                return if total == 0 { Err(()) } else { Ok(total as isize) };
            }
            if put.wake_peer {
                Self::ring_doorbell(fd);
            }
            total += put.bytes;
            if put.bytes > 0 {
                backoff.progress();
                continue;
            }
            if self.would_block_is_error(flags) {
                return Ok(partial_or_errno(total, libc::EAGAIN));
            }
            let waited = backoff.idle(self, fd, || self.with_tx(|tx| tx.announce_sleep()), || self.with_tx(|tx| tx.withdraw_sleep()));
            if let Err(e) = waited {
                return Ok(partial_or_errno(total, e.errno()));
            }
        }
    }

    /// `shutdown(fd, how)`: recorded in the header (see the module documentation); wakes the
    /// peer if it sleeps. Returns the call's result.
    pub fn shutdown(&self, fd: c_int, how: c_int) -> c_int {
        let bits = match how {
            libc::SHUT_RD => SHUT_READ,
            libc::SHUT_WR => SHUT_WRITE,
            libc::SHUT_RDWR => SHUT_READ | SHUT_WRITE,
            _ => {
                set_errno(libc::EINVAL);
                return -1;
            }
        };
        // SeqCst: ordered with the fence in `wake_peer` (and the peer's announcement).
        self.segment.header().shut.0[self.end.index()].fetch_or(bits, SeqCst);
        self.wake_peer(fd);
        0
    }

    /// The last fd of this process closes: this process no longer holds the end. If it was the
    /// end's last holder, the peer is woken through `fd` (still open; -1: not available).
    fn leave(&self, fd: c_int) {
        if self.unswapped.load(Acquire) {
            return;
        }
        let holders = self.segment.header().refcount[self.end.index()].load(Relaxed);
        if holders <= 1 && fd >= 0 && self.unread() > 0 {
            // Closing with bytes unread: the peer gets ECONNRESET, as from the kernel.
            // SeqCst: as in `shutdown`.
            self.segment.header().shut.0[self.end.index()].fetch_or(SHUT_RESET, SeqCst);
        }
        // AcqRel: the peer's Acquire load of a zero count sees everything this end wrote.
        let before = self.segment.header().refcount[self.end.index()].fetch_sub(1, AcqRel);
        if before == 1 && fd >= 0 {
            // Another process (e.g. a posix_spawn child) may keep the real socket open, so its
            // EOF may never come: wake the peer through the header.
            self.wake_peer(fd);
        }
    }
}

/// `close` of a swapped fd: tell the peer this end is gone, then let the caller close the real
/// socket (whose EOF wakes a sleeping peer).
pub fn close(fd: c_int) {
    if let Some(conn) = lookup(fd) {
        // (A connection gone plain has no doorbells, only the application's bytes.)
        if conn.fds.load(Acquire) == 1 {
            // Last fd: unread doorbells would turn the peer's EOF into ECONNRESET.
            conn.drain_doorbells(fd);
        }
    }
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| TABLE.get(i)) {
        release(slot.swap(null_mut(), Acquire), fd);
    }
}
