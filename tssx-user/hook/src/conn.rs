//! One tracked connection as this process sees it: where it is in its life (plain at first,
//! then migrating onto the rings), its segment once it has one, and what the socket looks like
//! from outside (shutdown state, readiness).
//!
//! # A connection's life in the hook
//!
//! Every Unix stream socket on a watched path is tracked from `connect`/`accept` on, and starts
//! plain: the application's calls go straight to the kernel (a *raw* call), counted in
//! [`Conn::raw`] while they run and in the byte counters when they return. See [`Phase`] for
//! the steps; [`crate::phase`] drives them, [`crate::migrate`] serves the calls while the
//! connection is half-way, [`crate::stream`] once it is on the rings.
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
//! `shutdown` is recorded in the segment header only once the connection has a segment, never
//! on the real socket: the real socket must keep carrying doorbells both ways until both ends
//! close it.

use std::{
    cell::UnsafeCell,
    sync::{
        atomic::{
            AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8,
            Ordering::{Acquire, Relaxed, SeqCst},
        },
        Mutex, OnceLock,
    },
};

use libc::c_int;
pub use tssx_common::segment::End;
use tssx_common::segment::{EndLine, SegmentHeader, JOIN_MAPPED, NOT_YET, RESET_TAKEN, SHUT_READ, SHUT_RESET, SHUT_WRITE};
use tssx_shm::{
    ring::{Consumer, Producer},
    segment::Segment,
};

use crate::{
    own::OwnFd,
    ringlock::{lock_local, Local, Side},
    sys,
    witness::Witness,
};

/// Where a tracked connection is in its life. Phases only move forward (the order of the
/// values), except that a claim that must be retried goes back to [`Phase::Candidate`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// A Unix stream socket not connected yet: only its epoll registrations are recorded, so
    /// that they can move with it if it is swapped later (nginx registers before `connect`).
    Unconnected = 0,
    /// Connected or accepted on a watched path; plain, not claimed yet.
    Candidate = 1,
    /// The claim was sent to the agent; its answer is picked up by a later call.
    Claiming = 2,
    /// The segment is mapped and this end's `joined` published; still plain, waiting to see the
    /// peer joined.
    Mapped = 3,
    /// Both ends joined: waiting for a moment when no raw call of this process is inside the
    /// kernel on the socket (see [`crate::phase`]).
    Quiescing = 4,
    /// This end is ready: every socket transfer is counted in the header; the directions move
    /// onto the rings (see [`crate::migrate`]).
    Ready = 5,
    /// Both directions are on the rings.
    Active = 6,
    /// Handing the connection back to the kernel: rings drained first, then the socket.
    HandingBack = 7,
    /// Plain for good: every call goes to the kernel, nothing is counted.
    Plain = 8,
}

impl Phase {
    fn from_u8(raw: u8) -> Phase {
        match raw {
            0 => Phase::Unconnected,
            1 => Phase::Candidate,
            2 => Phase::Claiming,
            3 => Phase::Mapped,
            4 => Phase::Quiescing,
            5 => Phase::Ready,
            6 => Phase::Active,
            7 => Phase::HandingBack,
            _ => Phase::Plain,
        }
    }

    /// Whether calls in this phase go to the kernel as they are (counted while not yet ready).
    #[inline]
    pub fn is_raw(self) -> bool {
        self < Phase::Ready || self == Phase::Plain
    }
}

/// Bit of [`Conn::raw`]: this end is quiesced; no raw call may start any more.
pub const QUIESCED: u32 = 1 << 31;

/// The segment of a connection and this end's ring handles (from the moment it is mapped).
pub struct Swap {
    /// The mapped segment.
    pub segment: Segment,
    pub(crate) tx: UnsafeCell<Producer>,
    pub(crate) rx: UnsafeCell<Consumer>,
    /// The segment's memfd (close-on-exec), kept to hand the segment across `execve`.
    pub(crate) memfd: OwnFd,
    /// This process's own locks of this end's producer (`[0]`) and consumer (`[1]`) side: 0
    /// when free, else the id of the thread that holds it. Taken before the segment's lock word
    /// of that side, and out of the peer's reach: whatever the peer writes into the segment, two
    /// threads of this process never use `tx` (or `rx`) at once (see [`crate::ringlock`]). On a
    /// line of its own: only lock takers write it.
    pub(crate) local: tssx_common::segment::CacheLine<[AtomicU32; 2]>,
}

impl Swap {
    /// The mapped segment, its ring handles and its memfd, no lock held.
    pub(crate) fn new(segment: Segment, tx: Producer, rx: Consumer, memfd: OwnFd) -> Swap {
        // A segment adopted without a tracked connect or accept in this image (across exec,
        // with SCM_RIGHTS): faults in the copies become EFAULT from now on too (see
        // `crate::fault`).
        crate::fault::arm();
        Swap {
            segment,
            tx: UnsafeCell::new(tx),
            rx: UnsafeCell::new(rx),
            memfd,
            local: tssx_common::segment::CacheLine([AtomicU32::new(0), AtomicU32::new(0)]),
        }
    }
}

// SAFETY: `tx` and `rx` are only touched under this process's own lock of that side (`local`,
// see `Conn::with_tx`/`with_rx`), which the peer cannot reach: one thread at a time (a signal
// handler's call inside its own thread's critical section aside, which runs while that thread
// is stopped). The segment mapping may be used from any thread.
unsafe impl Sync for Swap {}
// SAFETY: as above.
unsafe impl Send for Swap {}

/// The claim in flight (see [`crate::claim`]).
#[derive(Default)]
pub struct ClaimState {
    /// The control connection on which the agent's answer will arrive.
    pub(crate) control: Option<OwnFd>,
    /// When to look for the answer next (CLOCK_MONOTONIC ns), and the current back-off.
    pub(crate) next_check: u64,
    pub(crate) backoff: u64,
    /// When the claim was sent.
    pub(crate) sent_at: u64,
    /// Earliest time of the next claim after an answer "retry later" (0: none).
    pub(crate) retry_at: u64,
    /// Claims of this connection the agent closed unanswered (see [`crate::claim::Answer::Dropped`]).
    pub(crate) dropped: u32,
    /// Claims of this connection the agent answered "retry later" (see
    /// [`crate::claim::Answer::Retry`]): each one doubles the wait before the next.
    pub(crate) retried: u32,
}

/// One tracked socket.
pub struct Conn {
    pub(crate) end: End,
    /// Unique in this process: tells a connection from a later one that reuses fd and address.
    pub(crate) id: u64,
    /// [`Phase`] as a `u8`. Moves forward with `SeqCst` stores or compare-and-swaps (the
    /// quiescence protocol orders it against [`Conn::raw`]); loaded `Acquire`.
    pub(crate) phase: AtomicU8,
    /// Raw calls of this process inside the kernel on this socket (low bits), and
    /// [`QUIESCED`]. A raw call adds one (`SeqCst`) and backs off if it finds `QUIESCED`; the
    /// quiescer sets `QUIESCED` only by a compare-and-swap from zero: so no raw call is inside
    /// the kernel from then on.
    pub(crate) raw: AtomicU32,
    /// When the connection was connected or accepted (CLOCK_MONOTONIC ns). Relaxed: a hint.
    pub(crate) born_ns: AtomicU64,
    /// Bytes this end wrote to / consumed from the socket by raw calls, in this process and in
    /// the ones forked while it was plain (see [`crate::counts`]).
    pub(crate) counts: crate::counts::Counts,
    /// How this end used the socket by raw calls: see [`crate::phase::Activity`]. Relaxed
    /// loads and stores (no read-modify-write: two threads racing may lose a count, which
    /// only delays a claim): a hint for the claim rule.
    pub(crate) activity: AtomicU32,
    /// Another process may hold this end too (it was forked while plain): a claim must let the
    /// agent check that this process is the only holder. Relaxed: a flag of this process.
    pub(crate) forked: AtomicBool,
    /// The claim in flight; only ever try-locked (a process that forked while another thread
    /// held it must not hang).
    pub(crate) claim: Mutex<ClaimState>,
    /// Epoll registrations made while the connection was plain (fd, epfd, events, data), moved into
    /// the hook's epoll tables when the connection becomes ready.
    pub(crate) regs: Mutex<Registrations>,
    /// The segment, from the moment it is mapped (`OnceLock`: set once, read lock-free).
    pub(crate) swap: OnceLock<Swap>,
    /// How many fds of this process refer to this connection (dup, dup2, dup3, F_DUPFD).
    /// AcqRel on the decrement that may reach zero, so the last closer sees all prior uses.
    pub(crate) fds: AtomicU32,
    /// The socket's O_NONBLOCK ([`NONBLOCK_UNKNOWN`], [`NONBLOCK_OFF`], [`NONBLOCK_ON`]):
    /// given at install when the caller knows it (accept4's flags), else read with one
    /// `F_GETFL` at the first moment it matters (the claim, or a wait on the rings: a short
    /// connection that never claims never pays it), and kept up to date by the
    /// `fcntl(F_SETFL)` and `ioctl(FIONBIO)` hooks, so that an empty ring costs no system call.
    /// Relaxed: a flag of this fd.
    pub(crate) nonblock: AtomicU8,
    /// The first thread that used this connection, and whether another one has since: several
    /// threads of one end sleep on the same socket, and one may drain the doorbell meant for
    /// another, so such connections wait with a short timeout. Relaxed: hints for a timeout.
    pub(crate) first_user: AtomicU32,
    pub(crate) shared: AtomicBool,
    /// The real socket reported EOF or an error: the peer's last descriptor is closed (it
    /// closed or died). Relaxed: a hint re-checked against the rings, which carry their own
    /// ordering.
    pub(crate) peer_closed: AtomicBool,
    /// The peer wrote one of this end's ring lock words (a value no holder of this end has):
    /// it is hostile or broken, see [`crate::ringlock`]. Relaxed: a note for tests and traces.
    pub peer_wrote_lock: AtomicBool,
    /// The inode of this end's socket (0: not known yet), noted once when the end becomes ready
    /// or is adopted: how [`crate::ringlock`] recognises another process holding this end.
    /// Relaxed: written once before the rings are used, by the thread that moves the phase on.
    pub(crate) sock_inode: AtomicU64,
    /// Edges the kernel reported on the real socket (incoming, outgoing) while a direction was
    /// still on it: part of [`Conn::edges`], so that edge-triggered epoll reports socket data
    /// and socket room as the kernel would. Relaxed: counters compared for change only.
    pub(crate) socket_edges: [AtomicU32; 2],
    /// Which wake-ups the real socket had (see [`crate::witness`]): from the first adopted
    /// epoll registration until the connection is active.
    socket_witness: Mutex<Option<Witness>>,
    /// An incoming edge of the real socket (data, EOF, hang-up) was consumed by epoll while the
    /// incoming direction was still on the socket, so nobody drained it as doorbells. Once that
    /// direction reads the ring, the socket must be looked at once more: a peer that died
    /// half-way left its EOF behind edges epoll will not report again (see
    /// [`Conn::examine_socket_once`]). Relaxed: a flag whose reader re-checks the socket itself.
    pub(crate) socket_unexamined: AtomicBool,
    /// When [`Conn::peer_died`] last looked at the socket (CLOCK_MONOTONIC ns). Relaxed: a
    /// rate limit.
    pub(crate) death_checked_ns: AtomicU64,
    /// Fork generation in which this connection's refcount was last raised.
    pub(crate) fork_mark: AtomicU64,
    /// fd of the connection for helpers that need one (-1: unknown). Relaxed: a hint.
    pub(crate) last_fd: AtomicI32,
    /// The socket's `SO_PEEK_OFF` while the hook serves its reads (-1: off, the default): see
    /// [`crate::peekoff`]. Relaxed: an option of this socket, updated by its readers.
    pub(crate) peek_off: AtomicI32,
    /// `SO_PASSCRED` was turned on through the hook (and not off again): the connection is
    /// handing back (or plain), and the ring bytes still read before the socket's come with the
    /// kernel's "no credentials" (see [`crate::anc::no_credentials`]). Relaxed: an option of
    /// this socket, set by the `setsockopt` that handed it back, read by its later reads.
    pub(crate) passcred: AtomicBool,
    /// The path's (or listener's) learning, told how this connection ended (see
    /// [`crate::heat`]); null until the socket is connected (or accepted) on a watched path,
    /// and again once the connection reached the rings. Relaxed: set once by the thread that
    /// tracks the connection, read when its last fd here closes.
    pub(crate) heat: AtomicPtr<crate::heat::Heat>,
    /// The path's key in [`Conn::heat`]. Relaxed: as `heat`, stored before it.
    pub(crate) heat_key: AtomicU64,
}

// SAFETY: every field is atomic, a lock, or the `Swap` (whose ring handles are only used under
// the segment's locks).
unsafe impl Sync for Conn {}
// SAFETY: as above.
unsafe impl Send for Conn {}

/// Readiness bits, as `poll` reports them.
pub mod bits {
    /// Data or EOF to read.
    pub const IN: u32 = (libc::POLLIN | libc::POLLRDNORM) as u32;
    /// Room to write (or a write would fail at once); `POLLWRBAND` too, as `af_unix` reports it
    /// (found by the differential test).
    pub const OUT: u32 = (libc::POLLOUT | libc::POLLWRNORM | libc::POLLWRBAND) as u32;
    /// Receive side shut down.
    pub const RDHUP: u32 = libc::POLLRDHUP as u32;
    /// Both sides shut down.
    pub const HUP: u32 = libc::POLLHUP as u32;
    /// A pending error (the peer closed with bytes unread: ECONNRESET).
    pub const ERR: u32 = libc::POLLERR as u32;
}

/// One epoll registration of a still plain connection: (fd, epfd, events, data).
pub(crate) type Registration = (c_int, c_int, u32, u64);

/// The epoll registrations of a still plain connection ([`Conn::regs`]), held inline: tracking
/// a connection that registers with epoll (every upstream socket of nginx does, before its
/// `connect`) allocates nothing. A socket registered in more than [`Registrations::INLINE`]
/// instances at once is marked `overflowed`, and stays plain when it would become ready (the
/// kernel's lists serve it as they did).
pub(crate) struct Registrations {
    items: [Registration; Registrations::INLINE],
    len: usize,
    overflowed: bool,
}

impl Registrations {
    /// Registrations held; one more marks the list overflowed.
    pub(crate) const INLINE: usize = 4;

    pub(crate) const fn new() -> Registrations {
        Registrations { items: [(0, 0, 0, 0); Registrations::INLINE], len: 0, overflowed: false }
    }

    /// Keeps the registrations for which `keep` says true, in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Registration) -> bool) {
        let mut kept = 0;
        for i in 0..self.len {
            if keep(&self.items[i]) {
                self.items[kept] = self.items[i];
                kept += 1;
            }
        }
        self.len = kept;
    }

    /// Adds one (or marks the list overflowed if it is full).
    pub(crate) fn push(&mut self, reg: Registration) {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = reg;
                self.len += 1;
            }
            None => self.overflowed = true,
        }
    }

    /// Whether a registration did not fit (the connection must stay plain).
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Registration> {
        self.items[..self.len].iter()
    }

    pub(crate) fn iter_mut(&mut self) -> std::slice::IterMut<'_, Registration> {
        self.items[..self.len].iter_mut()
    }

    /// Forgets every registration (and the overflow).
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    /// Takes every registration out, in order.
    pub(crate) fn take(&mut self) -> impl Iterator<Item = Registration> {
        let (items, len) = (self.items, self.len);
        self.clear();
        items.into_iter().take(len)
    }
}

/// [`Conn::nonblock`]: not read yet / off / on.
pub(crate) const NONBLOCK_UNKNOWN: u8 = 0;
pub(crate) const NONBLOCK_OFF: u8 = 1;
pub(crate) const NONBLOCK_ON: u8 = 2;

fn nonblock_word(on: bool) -> u8 {
    if on {
        NONBLOCK_ON
    } else {
        NONBLOCK_OFF
    }
}

impl Conn {
    /// A connection tracked in `phase` (for an unconnected socket, `end` is the client's).
    #[inline(always)]
    pub(crate) fn new(end: End, phase: Phase, id: u64, nonblock: Option<bool>) -> Conn {
        Conn {
            end,
            id,
            phase: AtomicU8::new(phase as u8),
            raw: AtomicU32::new(0),
            born_ns: AtomicU64::new(crate::spin::now_ns()),
            counts: crate::counts::Counts::default(),
            activity: AtomicU32::new(0),
            forked: AtomicBool::new(false),
            claim: Mutex::new(ClaimState::default()),
            regs: Mutex::new(Registrations::new()),
            swap: OnceLock::new(),
            fds: AtomicU32::new(1),
            nonblock: AtomicU8::new(nonblock.map_or(NONBLOCK_UNKNOWN, nonblock_word)),
            first_user: AtomicU32::new(0),
            shared: AtomicBool::new(false),
            peer_closed: AtomicBool::new(false),
            peer_wrote_lock: AtomicBool::new(false),
            sock_inode: AtomicU64::new(0),
            fork_mark: AtomicU64::new(0),
            death_checked_ns: AtomicU64::new(0),
            socket_edges: [AtomicU32::new(0), AtomicU32::new(0)],
            socket_witness: Mutex::new(None),
            socket_unexamined: AtomicBool::new(false),
            last_fd: AtomicI32::new(-1),
            peek_off: AtomicI32::new(-1),
            passcred: AtomicBool::new(false),
            heat: AtomicPtr::new(std::ptr::null_mut()),
            heat_key: AtomicU64::new(0),
        }
    }

    /// The current phase.
    #[inline]
    pub fn phase(&self) -> Phase {
        // Acquire: pairs with the SeqCst stores that move it forward (what the mover did
        // before, e.g. mapping the segment, is visible).
        Phase::from_u8(self.phase.load(Acquire))
    }

    /// Moves to `to` (never backwards except to `Plain`, which is final).
    pub(crate) fn set_phase(&self, to: Phase) {
        // SeqCst: ordered with the quiescence protocol on `raw`.
        self.phase.store(to as u8, SeqCst);
        if to == Phase::Plain {
            self.peek_off_to_kernel();
        }
    }

    /// Moves from `from` to `to` if the phase is still `from`.
    pub(crate) fn advance(&self, from: Phase, to: Phase) -> bool {
        // SeqCst: as `set_phase`.
        self.phase.compare_exchange(from as u8, to as u8, SeqCst, Acquire).is_ok()
    }

    /// The segment, once mapped.
    #[inline]
    pub fn swap(&self) -> Option<&Swap> {
        self.swap.get()
    }

    /// The segment of a connection in a phase that has one. Callers check the phase first;
    /// a connection past [`Phase::Claiming`] (other than `Plain`) always has its segment.
    #[inline]
    pub(crate) fn seg(&self) -> &Swap {
        match self.swap.get() {
            Some(s) => s,
            // The phase is set after the segment (SeqCst store after `OnceLock::set`).
            None => unreachable_swap(),
        }
    }

    /// The segment header.
    #[inline]
    pub fn header(&self) -> &SegmentHeader {
        self.seg().segment.header()
    }

    /// This end's migration line.
    #[inline]
    pub(crate) fn my_line(&self) -> &EndLine {
        &self.header().ends[self.end.index()]
    }

    /// The peer's migration line (untrusted values).
    #[inline]
    pub(crate) fn peer_line(&self) -> &EndLine {
        &self.header().ends[self.end.peer().index()]
    }

    /// Which end this process holds.
    pub fn end(&self) -> End {
        self.end
    }

    /// The segment's memfd (owned by this connection), if it has one.
    pub fn memfd_raw(&self) -> Option<c_int> {
        self.swap().map(|s| s.memfd.raw())
    }

    /// Unique id of this connection in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records the fd's new O_NONBLOCK after `fcntl(F_SETFL)` or `ioctl(FIONBIO)`.
    pub fn set_nonblocking(&self, on: bool) {
        self.nonblock.store(nonblock_word(on), Relaxed);
    }

    /// The socket's O_NONBLOCK, read from the kernel (through `fd`, one of this connection's
    /// descriptors) the first time it is asked for.
    pub(crate) fn nonblocking_via(&self, fd: c_int) -> bool {
        match self.nonblock.load(Relaxed) {
            NONBLOCK_ON => true,
            NONBLOCK_OFF => false,
            _ => {
                let on = crate::sys::with_errno_kept(|| crate::sys::fd_nonblocking(fd));
                // A concurrent `fcntl(F_SETFL)` hook that stored a value meanwhile wins.
                let _ = self.nonblock.compare_exchange(NONBLOCK_UNKNOWN, nonblock_word(on), Relaxed, Relaxed);
                self.nonblock.load(Relaxed) == NONBLOCK_ON
            }
        }
    }

    pub(crate) fn would_block_is_error(&self, flags: c_int) -> bool {
        if flags & libc::MSG_DONTWAIT != 0 {
            return true;
        }
        if self.shared.load(Relaxed) {
            // O_NONBLOCK belongs to the open file: another process holding it (a fork) may
            // have changed it. Read again before waiting (found by the differential test: a
            // child's fcntl(O_NONBLOCK), then the parent's read blocked forever).
            let fd = self.last_fd.load(Relaxed);
            if fd >= 0 {
                if let Ok(fl) = tssx_shm::sys::fcntl(fd, libc::F_GETFL, 0) {
                    let nonblock = fl as c_int & libc::O_NONBLOCK != 0;
                    self.set_nonblocking(nonblock);
                    return nonblock;
                }
            }
        }
        self.nonblocking_via(self.last_fd.load(Relaxed))
    }

    /// Notes which thread uses the connection (see `shared`); returns its id.
    pub(crate) fn user(&self) -> u32 {
        let me = sys::thread_id();
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
        self.shared.load(Relaxed) || self.header().refcount[self.end.index()].load(Relaxed) > 1
    }

    /// Runs `f` with the producer side of this end held: this process's own lock, then the
    /// segment's word (a word the peer wrote is never waited for without bound, and one it
    /// clears lets no second thread of this process in: see [`crate::ringlock`]).
    #[inline]
    pub(crate) fn with_tx<R>(&self, f: impl FnOnce(&mut Producer) -> R) -> R {
        let swap = self.seg();
        let me = self.user();
        let _local = match lock_local(&swap.local.0[Side::Tx as usize], me) {
            Local::Taken(guard) => guard,
            // SAFETY: a signal handler on this thread, inside this thread's own critical
            // section: the interrupted use of the handle is stopped until the handler returns,
            // so no two threads use it at once; the handle only ever touches the ring and the
            // caller's buffers (see `crate::ringlock`). Waiting instead would never end.
            Local::Reentered => return f(unsafe { &mut *swap.tx.get() }),
        };
        let lock = swap.segment.producer_lock(self.end);
        // Dropped before `_local` (declared after it): the word is free before the local lock.
        let _word = match lock.try_lock(me) {
            Some(guard) => guard,
            None => self.contended(&lock, me),
        };
        // SAFETY: this process's lock of the producer side is held: no other thread of this
        // process uses the handle (the segment's word, which the peer may clear, only keeps
        // other processes of this end off the ring; they have their own handles).
        f(unsafe { &mut *swap.tx.get() })
    }

    /// Runs `f` with the consumer side of this end held (as [`Conn::with_tx`]).
    #[inline]
    pub(crate) fn with_rx<R>(&self, f: impl FnOnce(&mut Consumer) -> R) -> R {
        let swap = self.seg();
        let me = self.user();
        let _local = match lock_local(&swap.local.0[Side::Rx as usize], me) {
            Local::Taken(guard) => guard,
            // SAFETY: as in `with_tx`, for the consumer side.
            Local::Reentered => return f(unsafe { &mut *swap.rx.get() }),
        };
        let lock = swap.segment.consumer_lock(self.end);
        let _word = match lock.try_lock(me) {
            Some(guard) => guard,
            None => self.contended(&lock, me),
        };
        // SAFETY: as in `with_tx`, for the consumer side.
        f(unsafe { &mut *swap.rx.get() })
    }

    /// The header's shutdown bits for `shutdown`'s `how` (`None`: not a `how` the kernel takes).
    pub(crate) fn shut_bits_of(how: c_int) -> Option<u32> {
        match how {
            libc::SHUT_RD => Some(SHUT_READ),
            libc::SHUT_WR => Some(SHUT_WRITE),
            libc::SHUT_RDWR => Some(SHUT_READ | SHUT_WRITE),
            _ => None,
        }
    }

    /// Shutdown bits of `end` (Acquire: pairs with the SeqCst `fetch_or` in `shutdown`).
    pub(crate) fn shut_bits(&self, end: End) -> u32 {
        self.header().shut.0[end.index()].load(Acquire)
    }

    /// `end` shut down both ways (`SHUT_RDWR`, or `SHUT_RD` and `SHUT_WR` in two calls): nothing
    /// goes onto either ring any more, and the real socket is shut down too (`Conn::shutdown`).
    pub(crate) fn shut_both_ways(&self, end: End) -> bool {
        self.shut_bits(end) & (SHUT_READ | SHUT_WRITE) == SHUT_READ | SHUT_WRITE
    }

    /// The two ends' shutdowns alone shut this end's socket both ways, as the kernel keeps
    /// them: its reads by its own `SHUT_RD` or the peer's `SHUT_WR`, its writes by its own
    /// `SHUT_WR` or the peer's `SHUT_RD` (af_unix's `unix_shutdown` gives the peer the mirror
    /// of each). Then the socket's EOF and `POLLHUP` say nothing of a close (found by the
    /// differential test, seed 4262 with `TSSX_DIFF_OOB=1`: both ends' `SHUT_RD`).
    pub(crate) fn shut_both_ways_by_shutdowns(&self) -> bool {
        self.reads_shut_by_shutdowns() && self.writes_shut_by_shutdowns()
    }

    /// This end's reads are shut by a shutdown: its own `SHUT_RD` or the peer's `SHUT_WR`.
    pub(crate) fn reads_shut_by_shutdowns(&self) -> bool {
        self.shut_bits(self.end) & SHUT_READ != 0 || self.shut_bits(self.end.peer()) & SHUT_WRITE != 0
    }

    /// This end's writes are shut by a shutdown: its own `SHUT_WR` or the peer's `SHUT_RD`.
    fn writes_shut_by_shutdowns(&self) -> bool {
        self.shut_bits(self.end) & SHUT_WRITE != 0 || self.shut_bits(self.end.peer()) & SHUT_READ != 0
    }

    /// The peer's last descriptor is closed (or the peer died).
    pub(crate) fn peer_gone(&self) -> bool {
        if self.peer_closed.load(Relaxed) {
            return true;
        }
        let header = self.header();
        // Acquire: the peer stores its refcount before `joined` (SeqCst), and a zero count
        // after its last use.
        self.peer_line().joined.load(Acquire) == JOIN_MAPPED && header.refcount[self.end.peer().index()].load(Acquire) == 0
    }

    /// My writes moved onto my ring.
    #[inline]
    pub(crate) fn out_switched(&self) -> bool {
        // Acquire: pairs with the SeqCst store of our own switch (possibly by another process
        // of this end).
        self.my_line().switch_at.load(Acquire) != NOT_YET
    }

    /// Everything the peer wrote to the socket before its switch has been consumed: incoming
    /// data is on the ring (and socket bytes are doorbells).
    #[inline]
    pub(crate) fn in_switched(&self) -> bool {
        // Acquire on both: the peer's switch position, and our count stored under the
        // consumer lock with Release.
        let at = self.peer_line().switch_at.load(Acquire);
        at != NOT_YET && self.my_line().sock_read.load(Acquire) >= at
    }

    /// Nothing more will arrive on the ring: reads return what is left, then 0.
    pub fn rcv_shut(&self) -> bool {
        self.reads_shut_by_shutdowns() || self.peer_gone()
    }

    /// Writes fail with EPIPE.
    pub fn send_shut(&self) -> bool {
        self.writes_shut_by_shutdowns() || self.peer_gone()
    }

    /// Bytes waiting in the incoming ring.
    pub fn unread(&self) -> usize {
        let ring = &self.header().rings[self.end.peer().index()];
        // Acquire on both: positions published by their writers with Release.
        let head = ring.producer.0.head.load(Acquire);
        let tail = ring.consumer.0.tail.load(Acquire);
        clamp_used(head, tail, self.ring_geometry(self.end.peer()).capacity)
    }

    /// The geometry of the ring `writer` writes, sanitized (see
    /// `tssx_common::segment::RingGeometry::decode`): the capacity the ring handles clamp with,
    /// so that what readiness counts is what a transfer finds.
    pub(crate) fn ring_geometry(&self, writer: End) -> tssx_common::segment::RingGeometry {
        // Relaxed: loaded after the positions (Acquire), as the consumer does (see
        // `tssx_shm::ring`): the geometry of every byte below the head loaded, or a later one.
        let word = self.header().rings[writer.index()].producer.0.geometry.load(Relaxed);
        tssx_common::segment::RingGeometry::decode(word, self.seg().segment.ring_capacity())
    }

    /// Bytes this end wrote that the peer has not read yet.
    pub fn unsent(&self) -> usize {
        let ring = &self.header().rings[self.end.index()];
        // Acquire on both, as in `unread`.
        let head = ring.producer.0.head.load(Acquire);
        let tail = ring.consumer.0.tail.load(Acquire);
        clamp_used(head, tail, self.ring_geometry(self.end).capacity)
    }

    /// Room in the outgoing ring as the next write finds it (`tssx_shm::ring::room_to_write`:
    /// a full ring that may still grow has room); none when the positions are further apart
    /// than the ring (a lie of the peer's: the ring looks full, as to the producer itself, see
    /// `tssx_shm::ring`).
    pub fn room(&self) -> usize {
        let ring = &self.header().rings[self.end.index()];
        // Acquire on both, as in `unread`.
        let (head, tail) = (ring.producer.0.head.load(Acquire), ring.consumer.0.tail.load(Acquire));
        // Relaxed: our own ring's geometry, a snapshot for readiness as the positions are (a
        // write re-reads it under the producer lock).
        let geometry = ring.producer.0.geometry.load(Relaxed);
        tssx_shm::ring::room_to_write(head, tail, geometry, self.seg().segment.ring_capacity())
    }

    /// Positions that change when new data arrives (incoming head, plus the kernel's edges on
    /// the socket while data still comes that way) and when room is made (outgoing tail, plus
    /// the socket's edges likewise): edge-triggered epoll reports an edge when one moved.
    pub fn edges(&self) -> (u64, u64) {
        let header = self.header();
        // Acquire: as in `unread`.
        let head = header.rings[self.end.peer().index()].producer.0.head.load(Acquire);
        let tail = header.rings[self.end.index()].consumer.0.tail.load(Acquire);
        // Relaxed: counters (see `socket_edges`).
        let (sock_in, sock_out) = (self.socket_edges[0].load(Relaxed), self.socket_edges[1].load(Relaxed));
        (head.wrapping_add(u64::from(sock_in) << 40), tail.wrapping_add(u64::from(sock_out) << 40))
    }

    /// The kernel reported `events` on the real socket: count them as edges of the incoming
    /// direction if it is not on the ring yet, and of the outgoing one until the peer took the
    /// bytes this end wrote to the socket before its switch: each of those takes is room, as
    /// in the kernel, even once this end writes to its ring.
    ///
    /// Only a side the socket was woken for since the last event counts (see
    /// [`crate::witness`]: one wake-up reported by several instances is one edge, and the event
    /// an `EPOLL_CTL_MOD` queues is none), when the connection has a witness; otherwise every
    /// event counts.
    pub(crate) fn socket_edge(&self, events: u32) {
        let incoming =
            events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP) as u32 != 0 && (!self.reads_ring() || self.peer_handed_back());
        let room_event = events & libc::EPOLLOUT as u32 != 0;
        if incoming || room_event {
            self.count_socket_edges(incoming, room_event);
        }
        // (Any event will do, a doorbell's too: the witness goes as soon as it can.)
        self.stop_watching_socket();
    }

    /// [`Conn::socket_edge`]'s count. Room: while the peer may still take this end's socket
    /// bytes (after that, room is the ring's, and a socket wake-up is the drain of a doorbell):
    /// per the witness's look, else for an event while the peer's count is not complete.
    fn count_socket_edges(&self, incoming: bool, room_event: bool) {
        let took = self.peer_took_socket_bytes();
        let looked = match self.socket_witness.try_lock() {
            Ok(witness) => witness.as_ref().map(|w| w.look(crate::epoll::my_pid(), took)),
            // Another thread (or a handler on this one) looks: count (an extra edge at most).
            Err(_) => None,
        };
        let (woken_in, room) = looked.unwrap_or((true, room_event && !took));
        if incoming {
            self.socket_unexamined.store(true, Relaxed);
            if woken_in {
                self.socket_edges[0].fetch_add(1, Relaxed);
            }
        }
        if room {
            self.socket_edges[1].fetch_add(1, Relaxed);
        }
    }

    /// Starts the socket's [`Witness`] (`epoll::adopt`, before the application's first
    /// registration becomes the hook's and before the kernel's ready list is looked at), if
    /// it has none.
    pub(crate) fn watch_socket_wakeups(&self, fd: c_int) {
        if let Ok(mut witness) = self.socket_witness.try_lock() {
            if witness.is_none() {
                *witness = Witness::watch(fd, crate::epoll::my_pid());
            }
        }
    }

    /// Ends the socket's [`Witness`] (its two fds) once no wake-up of the socket can be an edge
    /// any more: the connection is active (incoming data is on the ring) and the peer took
    /// every byte this end wrote to the socket (no room will come from the socket). The peer
    /// stores its count after the read that woke this socket, so a last look sees that
    /// wake-up.
    pub(crate) fn stop_watching_socket(&self) {
        if self.phase() != Phase::Active || !self.peer_took_socket_bytes() {
            return;
        }
        let Ok(mut witness) = self.socket_witness.try_lock() else { return };
        if let Some(last) = witness.take() {
            // A take whose wake-up came after the last look (the count is complete now).
            if last.look(crate::epoll::my_pid(), true).1 {
                self.socket_edges[1].fetch_add(1, Relaxed);
            }
        }
    }

    /// Whether the peer consumed every byte this end wrote to the socket before its switch.
    pub(crate) fn peer_took_socket_bytes(&self) -> bool {
        // Acquire on both: our own switch position, and the peer's count (stored Release).
        let at = self.my_line().switch_at.load(Acquire);
        at != NOT_YET && self.peer_line().sock_read.load(Acquire) >= at
    }

    /// The peer closed with bytes unread and no read has reported ECONNRESET yet. Only once the
    /// peer is gone: a `dup2` over its last fd marks the reset just before the real call closes
    /// the socket, and the kernel shows the error and the hang-up together.
    pub(crate) fn reset_pending(&self) -> bool {
        self.shut_bits(self.end.peer()) & SHUT_RESET != 0 && self.shut_bits(self.end) & RESET_TAKEN == 0 && self.peer_gone()
    }

    /// Notes that a read reported the peer's reset (`true`), or that it stays pending
    /// (`false`: an error that ended a `recvmmsg` after some messages), in the header: once per
    /// socket, whichever process holding this end reads it (found by the differential test: a
    /// forked child took it, the parent reported it again). SeqCst: as the other shut bits.
    pub(crate) fn note_reset_reported(&self, taken: bool) {
        let word = &self.header().shut.0[self.end.index()];
        if taken {
            word.fetch_or(RESET_TAKEN, SeqCst);
            // The peer's close may have reset the socket too (bytes of its socket unread, such
            // as an out-of-band byte after a hand-back): the same reset, taken with it, or it
            // shows again (found by the differential test with MSG_OOB, seed 94043).
            let fd = self.last_fd.load(Relaxed);
            if fd >= 0 && crate::wait::socket_has_error(fd) {
                self.take_socket_error(fd);
            }
        } else {
            word.fetch_and(!RESET_TAKEN, SeqCst);
        }
    }

    /// Readiness of an [`Phase::Active`] connection from the rings and the shutdown state
    /// ([`bits`]), without a system call.
    pub fn ring_readiness(&self) -> u32 {
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
        if self.room() > 0 || self.peer_gone() {
            ready |= bits::OUT;
        }
        ready
    }

    /// `IN` if the socket holds bytes beyond the doorbells (and ancillary markers) the peer
    /// sent before it handed back: its data, which this end reads once it followed.
    fn socket_data_after_back(&self, fd: c_int) -> u32 {
        if self.socket_bytes_after_back(fd) == 0 {
            return 0;
        }
        // Linux 6.18 keeps counting an out-of-band byte a read skipped in FIONREAD (the queue
        // is empty, no POLLIN): the kernel's poll confirms (found by the differential test).
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd, no wait; errno kept.
        if sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, 0) }) > 0 && p.revents & libc::POLLIN != 0 {
            bits::IN
        } else {
            0
        }
    }

    /// The bytes the socket holds beyond the doorbells (and ancillary markers) the peer sent
    /// before it handed back: its data, which this end reads after the ring's (one `FIONREAD`).
    pub(crate) fn socket_bytes_after_back(&self, fd: c_int) -> usize {
        let mut queued: c_int = 0;
        // SAFETY: FIONREAD writes one int into a live local; the real ioctl.
        if fd < 0 || sys::with_errno_kept(|| unsafe { sys::ioctl(fd, libc::FIONREAD, (&mut queued as *mut c_int).cast()) }) != 0 {
            return 0;
        }
        // Acquire: published with the peer's `back_at`. SeqCst: as the doorbell counters' users.
        let owed = self.peer_line().bells_at.load(Acquire).saturating_sub(self.my_line().bells_drained.load(SeqCst));
        let markers = {
            let q = &self.header().anc[self.end.peer().index()];
            q.sent.0.load(SeqCst).saturating_sub(q.taken.0.load(SeqCst)).min(tssx_common::segment::ANC_SLOTS as u64)
        };
        (queued.max(0) as u64).saturating_sub(owed.saturating_add(markers)).min(usize::MAX as u64) as usize
    }

    /// Readiness of a connection that has a segment, in any phase from [`Phase::Ready`] on
    /// (half-way phases ask the socket too, see [`crate::migrate`]).
    pub fn readiness(&self, fd: c_int) -> u32 {
        match self.phase() {
            // The peer handed back: this end follows on its next call, which reads the
            // socket after the ring; meanwhile the socket's data past the last doorbells is
            // readable too (else a waiter in poll or epoll never makes that call).
            Phase::Active if self.peer_handed_back() => self.ring_readiness() | self.socket_data_after_back(fd),
            Phase::Active => self.ring_readiness(),
            Phase::HandingBack => self.handing_back_readiness(fd),
            _ => self.migrating_readiness(fd),
        }
    }

    /// An unconnected socket just connected (as `end`: always the client) on a watched path:
    /// a candidate from now on, with the epoll registrations recorded so far.
    pub(crate) fn connected(&self, _end: End) {
        self.born_ns.store(crate::spin::now_ns(), Relaxed);
        self.advance(Phase::Unconnected, Phase::Candidate);
    }

    /// Records that `fd` is (one of) this connection's descriptors.
    #[inline]
    pub(crate) fn note_fd(&self, fd: c_int) {
        self.last_fd.store(fd, Relaxed);
    }

    /// The learning of this connection's path, to be told how it ends (see [`crate::heat`]).
    #[inline]
    pub(crate) fn set_heat(&self, (heat, key): (&'static crate::heat::Heat, u64)) {
        self.heat_key.store(key, Relaxed);
        self.heat.store(std::ptr::from_ref(heat).cast_mut(), Relaxed);
    }

    /// This end reached the rings: its path is warm, and its ending teaches nothing more.
    pub(crate) fn heat_warm(&self) {
        let heat = self.heat.swap(std::ptr::null_mut(), Relaxed);
        // SAFETY: null or a `&'static Heat` (see `set_heat`).
        if let Some(heat) = unsafe { heat.as_ref() } {
            heat.warm(self.heat_key.load(Relaxed));
        }
    }

    /// This process lets go of the connection (its last fd here closes): if it never reached
    /// the rings, and no other process holds it on (forked while plain), its path counts one
    /// more cold ending.
    #[inline]
    pub(crate) fn heat_ended(&self) {
        let heat = self.heat.load(Relaxed);
        // SAFETY: null or a `&'static Heat` (see `set_heat`).
        if let Some(heat) = unsafe { heat.as_ref() } {
            if !self.counts.is_shared() {
                heat.cooled(self.heat_key.load(Relaxed));
            }
        }
    }
}

/// Bytes between two free-running positions, clamped to the capacity (a lying peer can make
/// the stream look full or empty, never longer than the ring).
#[inline]
pub(crate) fn clamp_used(head: u64, tail: u64, capacity: usize) -> usize {
    let used = head.wrapping_sub(tail);
    if used > capacity as u64 {
        0
    } else {
        used as usize
    }
}

#[cold]
fn unreachable_swap() -> ! {
    // A phase with a segment is only ever published after the segment: reaching this is a bug
    // in the hook; abort rather than unwind through a C caller.
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

#[cfg(test)]
mod tests {
    use super::Registrations;

    #[test]
    fn registrations_are_held_inline_in_order_until_one_does_not_fit() {
        let mut regs = Registrations::new();
        for epfd in 10..10 + Registrations::INLINE as i32 {
            regs.push((3, epfd, 1, epfd as u64));
        }
        assert!(!regs.overflowed());
        regs.retain(|&(_, epfd, _, _)| epfd != 11);
        assert_eq!(regs.iter().map(|r| r.1).collect::<Vec<_>>(), [10, 12, 13]);
        regs.iter_mut().for_each(|r| r.2 = 7);
        regs.push((3, 20, 1, 20));
        regs.push((3, 21, 1, 21));
        assert!(regs.overflowed(), "a fifth registration does not fit");
        let taken: Vec<_> = regs.take().collect();
        assert_eq!(taken, [(3, 10, 7, 10), (3, 12, 7, 12), (3, 13, 7, 13), (3, 20, 1, 20)]);
        assert!(!regs.overflowed() && regs.iter().next().is_none());
    }
}
