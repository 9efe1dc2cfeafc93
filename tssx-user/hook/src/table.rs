//! The fd -> connection table of this process and the lifetimes of its entries.
//!
//! The pass-through path (an fd not in the table) costs one bounds check and one atomic load,
//! takes no lock and allocates nothing. Every fd of a connection (dup, dup2, dup3, F_DUPFD)
//! points at the same [`Conn`], which counts them; the last close tells the peer this end is
//! gone and unmaps the segment.

use std::{
    cell::UnsafeCell,
    ptr::null_mut,
    sync::atomic::{
        AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
        Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst},
    },
};

use libc::c_int;
use tssx_common::segment::{End, SHUT_RESET};
use tssx_shm::{segment::Segment, sys::Fd};

use crate::{conn::Conn, sys};

/// Fds at or above this are never swapped.
pub const MAX_FDS: usize = 1 << 16;

/// fd -> connection. `Acquire` loads pair with the `Release` store that publishes a fully
/// built connection.
pub(crate) static TABLE: [AtomicPtr<Conn>; MAX_FDS] = [const { AtomicPtr::new(null_mut()) }; MAX_FDS];
/// Connections alive in this process (fork and exec only scan the table when non-zero).
/// Relaxed: a hint; the table entries carry their own ordering.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Source of [`Conn::id`]. Relaxed: only uniqueness matters.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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
pub fn install(fd: c_int, end: End, memfd: Fd, join: Join, agent: Option<Fd>) -> bool {
    let Some(slot) = usize::try_from(fd).ok().and_then(|i| TABLE.get(i)) else { return false };
    let Ok(segment) = Segment::open(memfd.borrow()) else { return false };
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
        nonblock: AtomicBool::new(sys::fd_nonblocking(fd)),
        first_user: AtomicU32::new(0),
        shared: AtomicBool::new(false),
        fork_mark: AtomicU64::new(0),
        reset_reported: AtomicBool::new(false),
        unswapped: AtomicBool::new(false),
        agent: AtomicI32::new(agent.map_or(-1, Fd::into_raw)),
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
pub(crate) fn release(ptr: *mut Conn, fd: c_int) {
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
pub(crate) fn for_each_conn(mut f: impl FnMut(c_int, &Conn)) {
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

impl Conn {
    /// The last fd of this process closes: this process no longer holds the end. If it was the
    /// end's last holder, the peer is woken through `fd` (still open; -1: not available).
    pub(crate) fn leave(&self, fd: c_int) {
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
