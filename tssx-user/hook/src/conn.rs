//! One swapped connection as this process sees it: the mapped segment, this end's ring
//! handles, and what the socket looks like from outside (shutdown state, readiness).
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
    cell::UnsafeCell,
    sync::atomic::{
        AtomicBool, AtomicI32, AtomicU32, AtomicU64,
        Ordering::{Acquire, Relaxed},
    },
};

use libc::c_int;
use tssx_common::segment::{End, SegmentState, SHUT_READ, SHUT_RESET, SHUT_WRITE};
use tssx_shm::{
    ring::{Consumer, Producer},
    segment::Segment,
    sys::Fd,
};

use crate::sys;

/// One swapped socket.
pub struct Conn {
    pub(crate) segment: Segment,
    pub(crate) end: End,
    pub(crate) tx: UnsafeCell<Producer>,
    pub(crate) rx: UnsafeCell<Consumer>,
    /// The segment's memfd (close-on-exec), kept to hand the segment across `execve`.
    pub(crate) memfd: Fd,
    /// Unique in this process: tells a connection from a later one that reuses fd and address.
    pub(crate) id: u64,
    /// How many fds of this process refer to this connection (dup, dup2, dup3, F_DUPFD).
    /// AcqRel on the decrement that may reach zero, so the last closer sees all prior uses.
    pub(crate) fds: AtomicU32,
    /// The socket's O_NONBLOCK, read at install and kept up to date by the `fcntl(F_SETFL)`
    /// and `ioctl(FIONBIO)` hooks, so that an empty ring costs no `F_GETFL` system call.
    /// Relaxed: a flag of this fd.
    pub(crate) nonblock: AtomicBool,
    /// The first thread that used this connection, and whether another one has since: several
    /// threads of one end sleep on the same socket, and one may drain the doorbell meant for
    /// another, so such connections wait with a short timeout. Relaxed: hints for a timeout.
    pub(crate) first_user: AtomicU32,
    pub(crate) shared: AtomicBool,
    /// The real socket reported EOF or an error: the peer's last descriptor is closed (it
    /// closed or died). Relaxed: a hint re-checked against the rings, which carry their own
    /// ordering.
    pub(crate) peer_closed: AtomicBool,
    /// The connection went plain and this end replayed its ring: every fd of it is a plain
    /// socket from now on. The `Conn` itself stays in the table until its fds close, so that
    /// threads still inside a call on it never see it freed. Set under the producer lock
    /// (`Release`), read with `Acquire`.
    pub(crate) unswapped: AtomicBool,
    /// While the segment is pending (client end): the control connection of the claim, which
    /// the agent closes when it decides. EOF on it while still pending means the agent died:
    /// the connection turns plain. -1 once closed. `swap` to take it (AcqRel).
    pub(crate) agent: AtomicI32,
    /// The peer's ECONNRESET was reported by a read (it is reported once, like `sk_err`).
    /// Relaxed: a flag of this process's view.
    pub(crate) reset_reported: AtomicBool,
    /// Fork generation in which this connection's refcount was last raised (see [`before_fork`]).
    pub(crate) fork_mark: AtomicU64,
}

// SAFETY: `tx` and `rx` are only touched under the segment's producer/consumer lock of this
// end (see `with_tx`/`with_rx`), which serializes every thread and process using them.
unsafe impl Sync for Conn {}
// SAFETY: as above; the segment mapping may be used from any thread.
unsafe impl Send for Conn {}

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
        self.memfd.raw()
    }

    /// Unique id of this connection in this process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records the fd's new O_NONBLOCK after `fcntl(F_SETFL)` or `ioctl(FIONBIO)`.
    pub fn set_nonblocking(&self, on: bool) {
        self.nonblock.store(on, Relaxed);
    }

    pub(crate) fn would_block_is_error(&self, flags: c_int) -> bool {
        flags & libc::MSG_DONTWAIT != 0 || self.nonblock.load(Relaxed)
    }

    /// The segment state.
    pub fn state(&self) -> Option<SegmentState> {
        self.segment.state()
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
        self.shared.load(Relaxed) || self.segment.header().refcount[self.end.index()].load(Relaxed) > 1
    }

    pub(crate) fn with_tx<R>(&self, f: impl FnOnce(&mut Producer) -> R) -> R {
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

    pub(crate) fn with_rx<R>(&self, f: impl FnOnce(&mut Consumer) -> R) -> R {
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
    pub(crate) fn shut_bits(&self, end: End) -> u32 {
        self.segment.header().shut.0[end.index()].load(Acquire)
    }

    /// The peer's last descriptor is closed (or the peer died).
    pub(crate) fn peer_gone(&self) -> bool {
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
    pub(crate) fn reset_pending(&self) -> bool {
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
}
