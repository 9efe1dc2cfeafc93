//! The fd -> connection table of this process and the lifetimes of its entries.
//!
//! The pass-through path (an fd not in the table) costs one bounds check and one atomic load,
//! takes no lock and allocates nothing. Every fd of a connection (dup, dup2, dup3, F_DUPFD)
//! points at the same [`Conn`], which counts them; the last close tells the peer this end is
//! gone.
//!
//! # Lifetimes: leases
//!
//! A call on a tracked fd may race a `close` of that fd (or of its last duplicate) on another
//! thread. So [`lookup`] does not hand out a plain reference: it *leases* the connection
//! ([`ConnRef`], a [`tssx_shm::lease::Lease`]), and the connection's memory (and its segment
//! mapping) is dropped by whoever gives up the last reference: the last close if no call is
//! in flight, otherwise the last call to return. The references on a connection are:
//!
//! * one held by the table for all of the connection's fds together, from [`track`] (or
//!   [`adopt_swapped`]) until [`Conn::fds`] drops to zero: given up by the close (or dup2 over
//!   it, or [`untrack`]) that unlinks its last slot, after [`Conn::leave`] told the peer;
//! * one per lease: per call in flight, per connection visited by poll, epoll, fork or exec.
//!
//! A slot links a connection only while `fds` counts that slot, so a thread that swaps a link
//! out of a slot holds one of the `fds` counts, and through it the table's reference, until it
//! decrements `fds`. `fds` is only ever raised from a non-zero value (a dup of a connection
//! whose last fd was closed meanwhile is not linked), so the table's reference is given up
//! exactly once. The orderings of the lease counts are documented in
//! [`tssx_shm::lease`]; the slots are stored with `Release` (after the connection is built) and
//! loaded with `Acquire` by every lookup.

use std::{
    ptr::null_mut,
    sync::atomic::{
        AtomicPtr, AtomicU64, AtomicUsize,
        Ordering::{AcqRel, Acquire, Relaxed, SeqCst},
    },
};

use libc::c_int;
use tssx_common::segment::{End, GiveUp, JOIN_MAPPED, SHUT_RESET};
use tssx_shm::{
    lease::{Cell, Lease, Pool},
    segment::Segment,
    sys::Fd,
};

use crate::{
    conn::{Conn, Phase, Swap, QUIESCED},
    own::OwnFd,
    sys,
};

/// Fds at or above this are never tracked.
pub const MAX_FDS: usize = 1 << 16;

/// A leased connection: derefs to the [`Conn`]; the connection cannot be freed while a lease
/// is alive (see the module documentation).
pub type ConnRef = Lease<'static, Conn>;

/// The cells connections live in (type-stable: see [`tssx_shm::lease`]).
static POOL: Pool<Conn> = Pool::new();

/// fd -> connection cell. `Acquire` loads pair with the `Release` stores that link a fully
/// built connection.
pub(crate) static TABLE: [AtomicPtr<Cell<Conn>>; MAX_FDS] = [const { AtomicPtr::new(null_mut()) }; MAX_FDS];
/// Connections tracked in this process (poll, fork and exec only scan the table when non-zero).
/// Relaxed: a hint; the table entries carry their own ordering.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Source of [`Conn::id`]. Relaxed: only uniqueness matters.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Every fd number the hook has ever kept state for (a table slot, an [`UNCONNECTED`] bit, a
/// [`LISTENERS`] entry, an epoll set) is below this: `close_range`/`closefrom` scan up to here,
/// not the whole [`MAX_FDS`] (whose untouched pages would be faulted in). Only grows. Relaxed:
/// raised by the thread that creates the state before it stores it, and read by a thread that
/// closes fds of this process, which cannot race the creation of state for the same fd number
/// without racing its `close` (an application bug the kernel does not order either).
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

/// One bit per fd number: the hook may keep something for it that `close` must forget
/// (whatever [`crate::calls::forget_fd`] forgets: a connection, an unconnected-socket bit, a
/// listener's kind, an epoll set or alias, an instance a kept registration names). Set by
/// [`note_state`], through which every such state passes before it is stored; cleared when the
/// fd is closed ([`close_state_forgotten`]) and when a socket connects untracked. A superset: a
/// bit left set only sends a `close` the long way, while a `close` of a number without one goes
/// straight to libc after this one load, instead of a load in each of the tables (nginx closes
/// an upstream socket and an accepted one per request). Relaxed: as [`HIGH_WATER`].
static CLOSE_STATE: FdBits = FdBits::new();

/// State for `fd` is about to be stored: raises [`HIGH_WATER`] above it (one load when it is
/// already above) and sets its [`CLOSE_STATE`] bit (one load when set).
#[inline]
pub(crate) fn note_state(fd: usize) {
    if HIGH_WATER.load(Relaxed) <= fd {
        HIGH_WATER.fetch_max(fd + 1, Relaxed);
    }
    // (Not `FdBits::set`, which comes here.)
    if let Some((word, bit)) = c_int::try_from(fd).ok().and_then(|fd| CLOSE_STATE.word(fd)) {
        if word.load(Relaxed) & bit == 0 {
            word.fetch_or(bit, Relaxed);
        }
    }
}

/// Whether the hook may keep anything that closing `fd` must forget (see [`CLOSE_STATE`]).
#[inline(always)]
pub fn may_have_close_state(fd: c_int) -> bool {
    CLOSE_STATE.get(fd)
}

/// Everything `fd` had in the hook is forgotten: clears its [`CLOSE_STATE`] bit.
#[inline]
pub(crate) fn close_state_forgotten(fd: c_int) {
    CLOSE_STATE.clear(fd);
}

/// The fd numbers at or above this have no state in the hook (see [`HIGH_WATER`]).
#[inline]
pub fn state_limit() -> usize {
    HIGH_WATER.load(Relaxed)
}

/// Whether `fd` is in the table (any phase), without leasing it: one load, for a caller that
/// only decides where a call goes (the call itself looks the fd up again; the exported data
/// calls pass an untracked fd straight to libc with it). Relaxed: an empty slot publishes
/// nothing; a filled one is looked up again, with its Acquire load.
#[inline(always)]
pub fn is_tracked(fd: c_int) -> bool {
    usize::try_from(fd).ok().and_then(|i| TABLE.get(i)).is_some_and(|slot| !slot.load(Relaxed).is_null())
}

/// Whether the hook keeps anything for `fd` that its `close` must forget: a connection, an
/// unconnected-socket bit, a listener's kind (an epoll set is asked of [`crate::epoll`]).
#[inline]
pub fn has_fd_state(fd: c_int) -> bool {
    is_tracked(fd) || is_unconnected(fd) || usize::try_from(fd).ok().and_then(|i| LISTENERS.get(i)).is_some_and(|l| l.load(Relaxed) != 0)
}

/// The connection of `fd`, leased, if it is tracked (in any phase, `Plain` included). An
/// untracked fd costs one bounds check and one load.
#[inline]
pub fn lookup(fd: c_int) -> Option<ConnRef> {
    let slot = TABLE.get(usize::try_from(fd).ok()?)?;
    POOL.acquire(slot)
}

/// The connection of `fd` if it has a segment and is past the plain phases (`Ready` and
/// later, `Plain` excluded): what poll, epoll and the exec hand-over care about.
#[inline]
pub fn lookup_swapped(fd: c_int) -> Option<ConnRef> {
    lookup(fd).filter(|c| {
        let phase = c.phase();
        phase >= Phase::Ready && phase != Phase::Plain
    })
}

/// One bit per fd: a Unix stream socket made by `socket` and not connected yet. Such a socket
/// gets a [`Conn`] (phase `Unconnected`) only if it is registered with epoll before it
/// connects (nginx does that), so that the registration can move with it if it is swapped.
/// Relaxed: a hint about this process's own fds.
static UNCONNECTED: FdBits = FdBits::new();
/// One bit per fd: an [`UNCONNECTED`] socket this process forked with. The other process holds
/// it too and counts nothing on it (it has no record of the connect), so a connection made on
/// it here is spoiled (see [`crate::counts`]). Relaxed: as [`UNCONNECTED`].
static FORKED_UNCONNECTED: FdBits = FdBits::new();

/// One bit per fd number below [`MAX_FDS`], for facts about this process's own fds. Relaxed:
/// each bit is a hint its users re-derive or order otherwise. Setting a bit raises
/// [`HIGH_WATER`] above its fd.
pub(crate) struct FdBits([AtomicU64; MAX_FDS / 64]);

impl FdBits {
    /// All clear.
    pub(crate) const fn new() -> FdBits {
        FdBits([const { AtomicU64::new(0) }; MAX_FDS / 64])
    }

    fn word(&self, fd: c_int) -> Option<(&AtomicU64, u64)> {
        let fd = usize::try_from(fd).ok()?;
        Some((self.0.get(fd / 64)?, 1 << (fd % 64)))
    }

    /// Whether `fd`'s bit is set (false for a number out of range).
    #[inline]
    pub(crate) fn get(&self, fd: c_int) -> bool {
        self.word(fd).is_some_and(|(word, bit)| word.load(Relaxed) & bit != 0)
    }

    /// Sets `fd`'s bit.
    #[inline]
    pub(crate) fn set(&self, fd: c_int) {
        if let Some((word, bit)) = self.word(fd) {
            note_state(fd as usize);
            word.fetch_or(bit, Relaxed);
        }
    }

    /// Clears `fd`'s bit (a load only, when it is clear).
    #[inline]
    pub(crate) fn clear(&self, fd: c_int) {
        if let Some((word, bit)) = self.word(fd) {
            if word.load(Relaxed) & bit != 0 {
                word.fetch_and(!bit, Relaxed);
            }
        }
    }

    /// The fds whose bit is set, lowest first (one load per word, each word read once).
    pub(crate) fn ones(&self) -> impl Iterator<Item = c_int> + '_ {
        self.0.iter().enumerate().flat_map(|(w, word)| {
            let mut bits = word.load(Relaxed);
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let fd = (w * 64 + bits.trailing_zeros() as usize) as c_int;
                bits &= bits - 1;
                Some(fd)
            })
        })
    }
}

/// Marks (or unmarks) `fd` as an unconnected Unix stream socket.
#[inline]
pub fn mark_unconnected(fd: c_int, on: bool) {
    if on {
        UNCONNECTED.set(fd);
    } else {
        UNCONNECTED.clear(fd);
    }
    FORKED_UNCONNECTED.clear(fd);
}

/// Whether `fd` was an unconnected socket when this process forked (or was forked): see
/// [`FORKED_UNCONNECTED`]. Cleared with [`mark_unconnected`].
#[inline]
pub fn forked_unconnected(fd: c_int) -> bool {
    FORKED_UNCONNECTED.get(fd)
}

/// Before a fork: every unconnected socket becomes [`forked_unconnected`] (in both
/// processes, which inherit the bits).
pub(crate) fn unconnected_forked() {
    let words = state_limit().div_ceil(64).min(MAX_FDS / 64);
    for (from, to) in UNCONNECTED.0.iter().zip(&FORKED_UNCONNECTED.0).take(words) {
        let bits = from.load(Relaxed);
        if bits != 0 {
            to.fetch_or(bits, Relaxed);
        }
    }
}

/// Whether `fd` is an unconnected Unix stream socket (see [`mark_unconnected`]).
#[inline]
pub fn is_unconnected(fd: c_int) -> bool {
    UNCONNECTED.get(fd)
}

/// Every connection made from now on gets an id at or above this one (see
/// [`crate::epoll::before_fork`]).
pub(crate) fn id_mark() -> u64 {
    // Relaxed: read by the thread that forks; ids made by other threads meanwhile are above.
    NEXT_ID.load(Relaxed)
}

/// Whether any connection is tracked in this process.
#[inline]
pub fn any_live() -> bool {
    LIVE.load(Relaxed) != 0
}

/// Publishes `conn` as the connection of `fd` (replacing whatever was there). The cell's
/// first reference becomes the table's (see the module documentation).
#[inline(always)]
fn publish(fd: c_int, make: impl FnOnce() -> Conn) -> bool {
    let Some(slot) = usize::try_from(fd).ok().and_then(|i| TABLE.get(i)) else { return false };
    note_state(fd as usize);
    LIVE.fetch_add(1, Relaxed);
    // (Built in its cell: a `Conn` is some 800 bytes.)
    let cell = POOL.alloc_with(|| {
        let conn = make();
        conn.note_fd(fd);
        conn
    });
    // Release: pairs with the Acquire loads of `lookup` (the connection is built).
    let old = slot.swap(cell, AcqRel);
    release_at(old, fd, -1);
    true
}

/// Starts tracking `fd` as the `end` of a connection in `phase` (`Candidate` after
/// connect/accept, `Unconnected` before `connect`); `nonblock`: the socket's O_NONBLOCK if
/// the caller knows it (else read when it first matters: see [`Conn::nonblock`]).
#[inline(always)]
pub fn track(fd: c_int, end: End, phase: Phase, nonblock: Option<bool>) -> bool {
    publish(fd, || Conn::new(end, phase, NEXT_ID.fetch_add(1, Relaxed), nonblock))
}

/// Starts tracking `fd` as the `end` of a connection just connected or accepted (see
/// [`track`]), whose ending its path's `heat` learns from (see [`crate::heat`]).
#[inline(always)]
pub fn track_candidate(fd: c_int, end: End, nonblock: Option<bool>, heat: Option<(&'static crate::heat::Heat, u64)>) -> bool {
    publish(fd, || {
        let conn = Conn::new(end, Phase::Candidate, NEXT_ID.fetch_add(1, Relaxed), nonblock);
        if let Some(heat) = heat {
            conn.set_heat(heat);
        }
        conn
    })
}

/// Per listener fd: whether the connections it accepts are watched stream sockets, as found
/// at its first `accept` (bit 0: watched; the rest: the [`crate::paths::generation`] it was
/// found under, +1; 0: not known). Cleared when the fd is closed. Relaxed: a cache of this
/// process's own answers, re-derived whenever in doubt.
static LISTENERS: [AtomicU64; MAX_FDS] = [const { AtomicU64::new(0) }; MAX_FDS];

/// What the listener `fd` was found to be under the current watched paths, if known.
#[inline]
pub fn listener_kind(fd: c_int) -> Option<bool> {
    let slot = LISTENERS.get(usize::try_from(fd).ok()?)?;
    crate::paths::refresh_generation();
    let word = slot.load(Relaxed);
    (word != 0 && word >> 1 == crate::paths::generation()).then_some(word & 1 != 0)
}

/// Remembers what the listener `fd` is (see [`LISTENERS`]).
pub fn remember_listener(fd: c_int, watched: bool) {
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| LISTENERS.get(i)) {
        note_state(fd as usize);
        slot.store(crate::paths::generation() << 1 | u64::from(watched), Relaxed);
    }
}

/// `fd` was closed: whatever listener it was is forgotten.
#[inline]
pub fn forget_listener(fd: c_int) {
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| LISTENERS.get(i)) {
        if slot.load(Relaxed) != 0 {
            slot.store(0, Relaxed);
            crate::heat::listener_closed(fd);
        }
    }
}

/// Maps a segment handed over by another process of this end (the previous image before
/// `execve`, or a process that passed the socket with `SCM_RIGHTS`) and makes `fd` a swapped
/// socket. The end's refcount already counts this process. The phase comes from the header.
pub fn adopt_swapped(fd: c_int, end: End, memfd: Fd) -> bool {
    let Ok(segment) = Segment::open(memfd.borrow()) else { return false };
    let line = &segment.header().ends[end.index()];
    // Acquire: pairs with the SeqCst store of `ready` (its counters before).
    if line.ready.load(Acquire) != 1 || line.joined.load(Acquire) != JOIN_MAPPED {
        return false;
    }
    // SAFETY: this end's handles are only used under the ring locks, and they are dropped with
    // the `Swap`, before the segment (field order).
    let (tx, rx) = unsafe { (segment.producer(end), segment.consumer(end)) };
    let conn = Conn::new(end, Phase::Ready, NEXT_ID.fetch_add(1, Relaxed), Some(sys::fd_nonblocking(fd)));
    // The end is past quiescence: raw calls are over for good.
    conn.raw.store(QUIESCED, Relaxed);
    let swap = Swap::new(segment, tx, rx, OwnFd::new(memfd));
    if conn.swap.set(swap).is_err() {
        return false;
    }
    conn.note_socket_inode(fd);
    if conn.out_switched() && conn.in_switched() {
        conn.set_phase(Phase::Active);
    }
    publish(fd, || conn)
}

/// `new_fd` (just made by dup/dup2/dup3/F_DUPFD from `old_fd`) is the same connection.
pub fn duplicated(old_fd: c_int, new_fd: c_int) {
    let Some(slot) = usize::try_from(new_fd).ok().and_then(|i| TABLE.get(i)) else { return };
    note_state(new_fd as usize);
    let conn = lookup(old_fd);
    // Only from a non-zero count: a connection whose last fd was closed meanwhile (by another
    // thread, between the real dup and this) is not linked again (see the module docs).
    // Relaxed: the count is ordered by the lease we hold and by the AcqRel decrements.
    let linked = conn.as_ref().filter(|c| c.fds.fetch_update(Relaxed, Relaxed, |n| (n != 0).then_some(n + 1)).is_ok());
    let new = linked.map_or(null_mut(), |c| c.cell());
    // Release: pairs with the Acquire loads of `lookup`. Acquire: the old occupant, whose
    // `fds` count we take over from the slot. The real dup2/dup3 closed the old occupant's
    // file: it leaves as after a close (see [`REPLACED`]).
    release_at(slot.swap(new, AcqRel), new_fd, REPLACED);
}

/// The `fd` given to [`release`] for a slot whose fd a `dup2`/`dup3` just pointed elsewhere:
/// the kernel closed the file (so a last holder closing with unread bytes resets the peer, as
/// a `close` does), but the fd no longer names the socket (nothing can be sent through it).
pub(crate) const REPLACED: c_int = -2;

/// Before a `dup2`/`dup3` onto `fd` (which closes it): as before a `close`, a last fd drains
/// its doorbells, so that the kernel does not turn the peer's EOF into ECONNRESET.
pub fn before_replaced(fd: c_int) {
    if let Some(conn) = lookup_swapped(fd) {
        if conn.fds.load(Acquire) == 1 {
            conn.drain_doorbells(fd);
            conn.mark_reset_if_socket_unread(fd);
            // The real call closes the socket before the table forgets the fd (then `leave`
            // marks it again): marked now, the reset is there before the peer can see the
            // socket's EOF.
            conn.mark_reset_if_unread();
        }
    }
}

/// Drains the doorbells of `fd` if it is its connection's last fd.
fn drain_if_last(fd: c_int) {
    if let Some(conn) = lookup_swapped(fd) {
        if conn.fds.load(Acquire) == 1 {
            // Last fd: unread doorbells would turn the peer's EOF into ECONNRESET.
            conn.drain_doorbells(fd);
            conn.mark_reset_if_socket_unread(fd);
        }
    }
}

/// Forgets `fd` without closing anything (it is not a socket of ours any more).
pub fn untrack(fd: c_int) {
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| TABLE.get(i)) {
        // Acquire: the unlinked connection is seen whole.
        release_at(slot.swap(null_mut(), Acquire), fd, -1);
    }
}

/// Gives up the `fds` count a slot held on `cell` (the caller just unlinked it); the last one
/// tells the peer this end is gone (ringing through `fd` if it is still this socket, else -1)
/// and gives up the table's reference: the connection is dropped (and its segment unmapped)
/// now, or when the last call in flight on it returns.
#[allow(dead_code)]
pub(crate) fn release(cell: *mut Cell<Conn>, fd: c_int) {
    release_at(cell, -1, fd);
}

/// [`release`] of the connection that was linked at fd `number` (just unlinked).
fn release_at(cell: *mut Cell<Conn>, number: c_int, fd: c_int) {
    if cell.is_null() {
        return;
    }
    if number >= 0 {
        // SAFETY: as in `release` (the slot's count is still ours).
        let conn = unsafe { POOL.lease(cell) };
        if conn.last_fd.load(Relaxed) == number {
            // The fd the hook's own calls use when they have none at hand (skipping the last
            // doorbells of a hand-back, ...) is going: another fd of the connection here, or
            // none. A stale number could name another socket once reused (found by the
            // differential test: a hand-back's last doorbell skipped on another connection's
            // socket, and read as data on this one). The table is scanned only when a dup
            // of the connection stays (Acquire: as every reader of the count, and `lookup`).
            let other = if conn.fds.load(Acquire) <= 1 {
                -1
            } else {
                TABLE.iter().position(|slot| slot.load(Acquire) == cell).map_or(-1, |i| i as c_int)
            };
            conn.last_fd.store(other, Relaxed);
        }
    }
    // SAFETY: the slot's link was counted in `fds`, which keeps the table's reference (see the
    // module documentation); we hold that count until the decrement below.
    let conn = unsafe { POOL.lease(cell) };
    // AcqRel: the last decrement sees every fd's use of the connection.
    if conn.fds.fetch_sub(1, AcqRel) == 1 {
        conn.heat_ended();
        conn.leave(fd);
        LIVE.fetch_sub(1, Relaxed);
        // SAFETY: the table's reference, given up once: `fds` reached zero and is never raised
        // from zero again.
        unsafe { POOL.release(cell) };
    }
    drop(conn);
}

/// Calls `f` for the connection of every tracked fd (a connection with several fds is visited
/// once per fd), without touching any connection's state.
pub(crate) fn for_each_fd_conn(mut f: impl FnMut(&Conn)) {
    if !any_live() {
        return;
    }
    for slot in TABLE.iter() {
        if let Some(conn) = POOL.acquire(slot) {
            f(&conn);
        }
    }
}

/// Calls `f` with every tracked fd and its connection (a connection with several fds is visited
/// once per fd), without touching any connection's state: no allocation, no lock (leases only),
/// so a signal handler may call it ([`crate::uring`]).
pub(crate) fn for_each_tracked(mut f: impl FnMut(c_int, &Conn)) {
    if !any_live() {
        return;
    }
    for (fd, slot) in TABLE.iter().enumerate().take(state_limit()) {
        if let Some(conn) = POOL.acquire(slot) {
            f(fd as c_int, &conn);
        }
    }
}

/// Calls `f` once for every connection of this process (however many fds refer to it).
pub(crate) fn for_each_conn(mut f: impl FnMut(c_int, &Conn)) {
    if !any_live() {
        return;
    }
    let generation = NEXT_ID.fetch_add(1, Relaxed);
    for (fd, slot) in TABLE.iter().enumerate() {
        let Some(conn) = POOL.acquire(slot) else { continue };
        if conn.fork_mark.swap(generation, Relaxed) != generation {
            f(fd as c_int, &conn);
        }
    }
}

/// `close` of a tracked fd: tell the peer this end is gone, then let the caller close the real
/// socket (whose EOF wakes a sleeping peer).
pub fn close(fd: c_int) {
    drain_if_last(fd);
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| TABLE.get(i)) {
        // Acquire: the unlinked connection is seen whole.
        release_at(slot.swap(null_mut(), Acquire), fd, fd);
    }
}

impl Conn {
    /// Whether a reset can be marked in the header: the connection has its segment and is past
    /// the plain phases (`Ready` and later, `Plain` excluded).
    pub(crate) fn on_segment(&self) -> bool {
        let phase = self.phase();
        self.swap().is_some() && phase >= Phase::Ready && phase != Phase::Plain
    }

    /// Marks `end` reset (`SHUT_RESET`): the other end's reads report ECONNRESET once, as the
    /// kernel's after a socket released with data unread.
    pub(crate) fn mark_reset(&self, end: End) {
        // SeqCst: as in `shutdown`.
        self.header().shut.0[end.index()].fetch_or(SHUT_RESET, SeqCst);
    }

    /// The end's last holder closes with bytes unread: the peer gets ECONNRESET, as from the
    /// kernel (only on the rings).
    fn mark_reset_if_unread(&self) {
        if !self.on_segment() {
            return;
        }
        if self.header().refcount[self.end.index()].load(Relaxed) <= 1 && self.reads_ring() && self.unread() > 0 {
            self.mark_reset(self.end);
        }
    }

    /// The end's last holder closes with bytes of the peer's unread on the socket (the peer
    /// handed back: its bytes since went there), its doorbells drained: the kernel resets the
    /// peer's socket, which the peer, reading its ring first, would not see: marked as for
    /// bytes unread on the ring (found by the differential test: MSG_OOB, then a close).
    fn mark_reset_if_socket_unread(&self, fd: c_int) {
        if !self.on_segment() || !self.peer_handed_back() {
            return;
        }
        if self.header().refcount[self.end.index()].load(Relaxed) > 1 {
            return;
        }
        let mut queued: c_int = 0;
        // SAFETY: FIONREAD into a live int.
        if unsafe { crate::sys::ioctl(fd, libc::FIONREAD, (&raw mut queued).cast()) } == 0 && queued > 0 {
            self.mark_reset(self.end);
        }
    }

    /// The last fd of this process closes: this process no longer holds the end. If it was the
    /// end's last holder, the peer is woken through `fd` (still open; -1: not available).
    pub(crate) fn leave(&self, fd: c_int) {
        let phase = self.phase();
        if self.swap().is_none() || phase == Phase::Plain {
            return; // a claim's control connection closes with the `Conn`
        }
        if phase < Phase::Ready {
            // Nothing is on the rings: the peer stays on the socket, whose EOF it will see.
            self.give_up(GiveUp::Closed);
            return;
        }
        let header = self.header();
        if fd >= 0 || fd == REPLACED {
            self.mark_reset_if_unread();
        }
        // Relaxed: a hint; the last holder of an end is the only one that closes the socket
        // for good (a racing holder leaves a doorbell or two for its own close).
        if fd >= 0 && header.refcount[self.end.index()].load(Relaxed) == 1 {
            // Doorbells the peer rang and nobody drained would make the kernel reset the peer
            // at the socket's close, as for unread data (af_unix: ECONNRESET): the peer,
            // reading its ring to the end, would get the reset instead of the EOF (found by
            // `tests/conform/share.c` `fork-epoll`, swapped: a doorbell rung for a wait in
            // epoll, which the ring's data ended first). A doorbell counted after this look
            // can still land before the close: the peer, reading its ring, takes that reset
            // for this end's EOF (`Conn::drain`, `Conn::sleep_on_socket`); only `SHUT_RESET`
            // in the header makes its read report ECONNRESET.
            self.drain_owed_doorbells(fd);
        }
        // AcqRel: the peer's Acquire load of a zero count sees everything this end wrote.
        let before = header.refcount[self.end.index()].fetch_sub(1, AcqRel);
        if before == 1 && fd >= 0 {
            // Another process (e.g. a posix_spawn child) may keep the real socket open, so its
            // EOF may never come: wake the peer through the header.
            self.wake_peer(fd);
        }
    }
}
