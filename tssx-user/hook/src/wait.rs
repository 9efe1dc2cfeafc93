//! Waiting for the peer on the rings: the spin phase, then the announced sleep on the real
//! socket, where the peer's doorbell byte (or its death) wakes the sleeper. Doorbells are
//! drained only where every socket byte is one (the incoming direction is on the ring).

use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};

use libc::c_int;
use tssx_common::segment::NOT_YET;

use crate::{
    conn::{Conn, Phase},
    signals::{Mark, Quiet},
    spin::{now_ns, spin_budget, spin_missed, spin_paid_off, spin_yield, woke},
    sys::{self, errno},
};

/// How often a connection whose non-blocking calls keep finding the rings empty (or full)
/// looks at its socket for the peer's death.
pub const DEATH_CHECK_NS: u64 = 200_000;

/// Why a blocking wait ended without progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// A signal handler ran and the call must fail with EINTR.
    Interrupted,
    /// The socket's timeout for the call expired (SO_RCVTIMEO for a read, SO_SNDTIMEO for a
    /// write), or it turned non-blocking.
    TimedOut,
}

/// More doorbells than this owed at once cannot be (each is a one-byte message, and a socket's
/// send buffer holds a few hundred of those): a count above it is a lie of the peer's, and
/// nothing is sized or looped by it (issue 16).
pub(crate) const MAX_OWED_DOORBELLS: u64 = 1 << 16;

/// See [`Backoff::mark_if_long`].
const LONG_TRANSFER: usize = 64 * 1024;

/// What a blocked call waits for: data (a read, bounded by SO_RCVTIMEO) or room (a write,
/// bounded by SO_SNDTIMEO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// A read waits for data.
    Read,
    /// A write waits for room.
    Write,
}

/// The socket's timeout for `waiting` (SO_RCVTIMEO or SO_SNDTIMEO, read from the real socket)
/// in nanoseconds; `None` when it has none (0, the default) or the option cannot be read.
pub(crate) fn socket_timeout_ns(fd: c_int, waiting: Waiting) -> Option<u64> {
    let name = match waiting {
        Waiting::Read => libc::SO_RCVTIMEO,
        Waiting::Write => libc::SO_SNDTIMEO,
    };
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    tssx_shm::sys::getsockopt(fd, libc::SOL_SOCKET, name, &mut tv).ok()?;
    let ns = (tv.tv_sec.max(0) as u64).saturating_mul(1_000_000_000).saturating_add((tv.tv_usec.max(0) as u64).saturating_mul(1_000));
    (ns > 0).then_some(ns)
}

/// The timeouts of one blocking call, read from the socket at its first sleep (a call that never
/// sleeps makes no system call for them). As in the kernel, the timeout bounds the whole call:
/// a read's (`SO_RCVTIMEO`) or a write's (`SO_SNDTIMEO`), never the other one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    /// CLOCK_MONOTONIC ns at which the call times out (`None`: never).
    pub(crate) at: Option<u64>,
}

impl Deadline {
    /// Reads the socket's timeouts for a call `waiting` that is about to sleep.
    pub(crate) fn of(fd: c_int, waiting: Waiting) -> Deadline {
        Deadline { at: socket_timeout_ns(fd, waiting).map(|t| now_ns().saturating_add(t)) }
    }

    /// Whether the call's time is up.
    pub(crate) fn expired(&self) -> bool {
        self.at.is_some_and(|at| now_ns() >= at)
    }

    /// Milliseconds left for `poll` (rounded up; -1: no timeout), at most `cap` when given.
    pub(crate) fn poll_ms(&self, cap: Option<c_int>) -> c_int {
        let left = self.at.map(|at| {
            let ns = at.saturating_sub(now_ns());
            ns.div_ceil(1_000_000).min(c_int::MAX as u64) as c_int
        });
        match (left, cap) {
            (Some(l), Some(c)) => l.min(c),
            (Some(l), None) => l,
            (None, Some(c)) => c,
            (None, None) => -1,
        }
    }
}

/// Whether the application handlers that ran on this thread since `mark` end a blocking read or
/// write, as the kernel's: any handler if the call `moved` bytes already (it returns them);
/// otherwise one without `SA_RESTART`, or any if `has_timeout()` (the socket's `SO_RCVTIMEO`
/// for a read, `SO_SNDTIMEO` for a write: `sock_intr_errno`). A restartable interruption moves
/// the mark on (see [`Mark::interrupts_transfer`]).
pub(crate) fn transfer_interrupted(mark: &mut Mark, moved: bool, has_timeout: impl FnOnce() -> bool) -> bool {
    if moved {
        return mark.interrupted().is_some();
    }
    mark.interrupts_transfer(has_timeout)
}

/// One sleep of a blocking read or write: a `ppoll` of `fd` for `events` up to `ms`
/// milliseconds (-1: no limit), after the call's last look at `mark` (see
/// [`transfer_interrupted`]) made with the thread's signals held back; the sleep takes the
/// thread's mask from before ([`Quiet`]), so a handler that runs from that look on runs inside
/// it and ends it, as a signal that arrives while the kernel's read or write waits ends that.
/// `Ok(revents)` (0: the time is up, or a handler under `SA_RESTART` that does not end the call,
/// which goes on as the kernel's restarts); `Err(Interrupted)` where the kernel's call fails
/// with EINTR, and for an EINTR no handler behind the trampoline caused (one installed around
/// libc). (The sleeps of reads were a blocking `recv(MSG_PEEK)`, which applied the dispositions
/// itself, but left a window between the look and the system call in which a handler was lost
/// until the next signal: the conformance test `sigspin`, rarely.)
pub(crate) fn sleep_in_ppoll(
    fd: c_int,
    events: i16,
    ms: c_int,
    deadline: Deadline,
    mark: &mut Mark,
    moved: bool,
) -> Result<i16, WaitError> {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    let ts = sys::timespec_of_ms(ms);
    let ts_ptr = if ms < 0 { std::ptr::null() } else { &raw const ts };
    let Some(quiet) = Quiet::look(|| !transfer_interrupted(mark, moved, || deadline.at.is_some())) else {
        return Err(WaitError::Interrupted);
    };
    // SAFETY: one live pollfd; `ts_ptr` null or a live timespec; the mask the thread's own.
    let n = unsafe { sys::ppoll(&mut pfd, 1, ts_ptr, quiet.sleep_mask(std::ptr::null())) };
    let interrupted = n < 0 && errno() == libc::EINTR;
    drop(quiet);
    match n {
        n if n > 0 => Ok(pfd.revents),
        _ if interrupted => match mark.interrupted() {
            Some(_) if !transfer_interrupted(mark, moved, || deadline.at.is_some()) => Ok(0),
            _ => Err(WaitError::Interrupted),
        },
        _ => Ok(0),
    }
}

impl WaitError {
    pub(crate) fn errno(self) -> c_int {
        match self {
            WaitError::Interrupted => libc::EINTR,
            WaitError::TimedOut => libc::EAGAIN,
        }
    }
}

/// What a waiting end does while its ring is empty (reader) or full (writer): check again for
/// the thread's spin budget, then announce its sleep and sleep on the real socket.
pub(crate) struct Backoff {
    spins: u32,
    spin_from: u64,
    spin_until: u64,
    waiting: Waiting,
    /// Read at the first sleep.
    deadline: Option<Deadline>,
    /// Taken when the call starts to wait (see [`crate::signals`]): a handler that runs on this
    /// thread from then on ends the call with EINTR where the kernel's would
    /// ([`Mark::interrupts_transfer`]).
    mark: Option<Mark>,
}

impl Backoff {
    /// The back-off of one blocking call `waiting` for data or room.
    pub(crate) fn new(waiting: Waiting) -> Backoff {
        Backoff { spins: 0, spin_from: 0, spin_until: 0, waiting, deadline: None, mark: None }
    }

    /// A transfer of `want` bytes that may copy for a while before it waits (64 KiB and more:
    /// microseconds of copying) takes its mark now, so that a handler that runs during the copy
    /// ends the wait that follows (with the bytes moved), as a signal that is pending when the
    /// kernel's send or `MSG_WAITALL` read has to wait. A shorter one takes it when it first
    /// waits (nothing on the calls that never wait).
    pub(crate) fn mark_if_long(&mut self, want: usize) {
        if want >= LONG_TRANSFER {
            self.mark = Some(Mark::now());
        }
    }

    /// The call's deadline (read from the socket the first time).
    pub(crate) fn deadline(&mut self, fd: c_int) -> Deadline {
        *self.deadline.get_or_insert_with(|| Deadline::of(fd, self.waiting))
    }

    /// Whether an application handler that ran on this thread since the call began to wait ends
    /// it (see [`transfer_interrupted`]); the first call takes the mark. One load (see [`Mark::now`]).
    pub(crate) fn interrupted(&mut self, fd: c_int, moved: bool) -> bool {
        let mut mark = *self.mark.get_or_insert_with(Mark::now);
        let interrupted = transfer_interrupted(&mut mark, moved, || self.deadline(fd).at.is_some());
        self.mark = Some(mark);
        interrupted
    }

    /// The call's mark (taken now if it has none yet).
    pub(crate) fn mark(&mut self) -> &mut Mark {
        self.mark.get_or_insert_with(Mark::now)
    }

    /// Progress was made: the next wait starts with a fresh spin budget.
    pub(crate) fn progress(&mut self) {
        if self.spins != 0 {
            spin_paid_off();
        }
        self.spins = 0;
    }

    /// One idle step. `announce` announces the sleep and re-checks the ring (true: still
    /// nothing to do, so sleep); `withdraw` takes the announcement back after waking.
    /// `moved`: whether the call has transferred bytes already (a handler then ends it with
    /// what it moved, whatever `SA_RESTART` says, as the kernel's read and write do).
    pub(crate) fn idle(
        &mut self,
        conn: &Conn,
        fd: c_int,
        moved: bool,
        announce: impl FnOnce() -> bool,
        withdraw: impl FnOnce(),
    ) -> Result<(), WaitError> {
        if self.interrupted(fd, moved) {
            return Err(WaitError::Interrupted);
        }
        let mut spin = true;
        if self.spins == 0 {
            self.spin_from = now_ns();
            let budget = spin_budget();
            self.spin_until = self.spin_from + budget;
            // No budget (the cores are contended): sleep at once, not even the first checks.
            spin = budget != 0;
        }
        self.spins += 1;
        // The clock is read every 64 checks only; a long spin yields now and then, so that on
        // a busy machine the peer (or anyone) that needs this core gets it.
        if spin && (!self.spins.is_multiple_of(64) || now_ns() < self.spin_until) {
            if self.spins.is_multiple_of(1024) {
                spin_yield();
            }
            std::hint::spin_loop();
            return Ok(());
        }
        spin_missed(self.spin_from);
        self.spins = 0;
        let deadline = self.deadline(fd);
        if deadline.expired() {
            return Err(WaitError::TimedOut);
        }
        let result = self.sleep(conn, fd, deadline, moved, announce, withdraw);
        woke();
        result
    }

    /// Announces the sleep, re-checks, and sleeps on the real socket unless that found work.
    /// Only the direction the call waits on ends the wait without sleeping: a reader whose
    /// sending side is shut down (the peer's `SHUT_READ`, which the peer may also just have
    /// written into the header) still sleeps until data, EOF or the peer's death comes (it
    /// spun at full speed, and never looked at the socket for the peer's EOF; issue 16).
    /// `moved`: as for [`Backoff::idle`].
    fn sleep(
        &mut self,
        conn: &Conn,
        fd: c_int,
        deadline: Deadline,
        moved: bool,
        announce: impl FnOnce() -> bool,
        withdraw: impl FnOnce(),
    ) -> Result<(), WaitError> {
        if !announce() {
            return Ok(());
        }
        let shut = match self.waiting {
            Waiting::Read => conn.rcv_shut(),
            Waiting::Write => conn.send_shut(),
        };
        let mark = self.mark.get_or_insert_with(Mark::now);
        // The announcement's fence orders these flag reads after it (see `Conn::announce`).
        let result = if shut || conn.phase() == Phase::Plain { Ok(()) } else { conn.sleep_on_socket(fd, deadline, mark, moved) };
        withdraw();
        result
    }
}

impl Conn {
    /// Announces that a thread of this end is about to sleep in a poll-like call (the peer
    /// then rings the doorbell after its next transfer or shutdown). The caller issues one
    /// `SeqCst` fence after all its announcements and re-checks readiness before sleeping.
    pub fn announce(&self) {
        tssx_shm::wait::announce(&self.header().asleep.0[self.end.index()]);
    }

    /// Takes an announcement back.
    pub fn withdraw(&self) {
        tssx_shm::wait::withdraw(&self.header().asleep.0[self.end.index()]);
    }

    /// After changing something the peer may wait for (shutdown, last close): wake it if it
    /// announced a sleep.
    pub(crate) fn wake_peer(&self, fd: c_int) {
        if tssx_shm::wait::sleeper_announced(&self.header().asleep.0[self.end.peer().index()]) {
            self.ring_doorbell(fd);
        }
    }

    /// Wakes the peer: one byte on the real socket, counted in `bells_sent` first, under the
    /// producer lock (so that a hand-back, which holds it, sees an exact count; see
    /// `EndLine::bells_sent`). Only once this end's writes are on its ring, since before that
    /// the peer reads every socket byte as data: an end whose peer is ready switches here
    /// first (a reader that freed room in the peer's ring must be able to wake it).
    pub(crate) fn ring_doorbell(&self, fd: c_int) {
        self.with_tx(|_| {
            // Handed back: this end sends no doorbell any more (its last one is counted in
            // `bells_at`): a byte after it would reach the peer as data (a `shutdown` while the
            // peer slept gave it a stray zero byte before the EOF). Its socket's data, EOF or
            // close wakes the peer now. Relaxed: stored under this lock.
            if self.my_line().back_at.load(Relaxed) != NOT_YET {
                return;
            }
            // Acquire: pairs with the peer's SeqCst store of `ready`.
            let switched = self.out_switched() || (self.peer_line().ready.load(Acquire) == 1 && self.switch_out());
            if !switched {
                return;
            }
            let bells = &self.my_line().bells_sent;
            // SeqCst: counted before the byte exists, so a drainer never takes more than sent.
            bells.fetch_add(1, SeqCst);
            // One byte; never blocks, never raises SIGPIPE.
            if sys::send_raw(fd, &[0u8], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL).is_err() {
                bells.fetch_sub(1, SeqCst);
            }
        })
    }

    /// Sleeps on the real socket until a doorbell, the peer's EOF, or (shared connections, or
    /// while incoming socket bytes may be data) a short timeout. The caller has announced its
    /// sleep. The sleep is [`sleep_in_ppoll`] for `POLLIN` (doorbells and EOF; only `POLLHUP`
    /// and `POLLERR` while the socket's bytes may be data), bounded by the call's deadline.
    pub(crate) fn sleep_on_socket(&self, fd: c_int, deadline: Deadline, mark: &mut Mark, moved: bool) -> Result<(), WaitError> {
        let doorbells_only = self.reads_ring();
        // Incoming socket bytes may be the peer's data (not consumed here): wait only for the
        // peer's death, briefly. Shared: a sibling may drain our doorbell, so never sleep long.
        let long = doorbells_only && !self.is_shared();
        let events = if doorbells_only { libc::POLLIN } else { 0 };
        let ready = sleep_in_ppoll(fd, events, deadline.poll_ms(if long { None } else { Some(1) }), deadline, mark, moved)?;
        if ready != 0 && long {
            // This wait's next sleep polls again: an EOF behind the doorbells shows then (no look
            // for it now, which would be one more system call per doorbell).
            self.drain(fd, false);
        } else if ready != 0 && doorbells_only {
            self.drain_doorbells_if_alone(fd, 1);
        } else if deadline.expired() {
            return Err(WaitError::TimedOut);
        }
        Ok(())
    }

    /// Before a non-blocking call on the rings answers EAGAIN: whether the peer is gone (its
    /// process died, so its hook never said so in the header, but the kernel closed its end of
    /// the socket). A look at the socket, without waiting, at most every
    /// [`DEATH_CHECK_NS`] per connection (a busy loop of EAGAINs pays a clock read), which also
    /// drains doorbells.
    pub(crate) fn peer_died(&self, fd: c_int) -> bool {
        let now = crate::spin::now_ns();
        // Relaxed: a rate limit.
        // (An edge epoll consumed before this end read the ring is looked at at once.)
        if now.saturating_sub(self.death_checked_ns.load(Relaxed)) < DEATH_CHECK_NS && !self.socket_unexamined.load(Relaxed) {
            return false;
        }
        self.death_checked_ns.store(now, Relaxed);
        if self.reads_ring() {
            self.drain_doorbells(fd);
        } else {
            let mut probe = 0u8;
            self.note_peer_end(fd, sys::recv_raw(fd, std::slice::from_mut(&mut probe), libc::MSG_PEEK | libc::MSG_DONTWAIT));
        }
        self.peer_closed.load(Relaxed)
    }

    /// Looks at the socket once the incoming direction reads the ring, if epoll consumed an
    /// edge of it before (see [`Conn::socket_unexamined`]): a peer that died half-way left its
    /// EOF behind bytes that were data then, and an edge-triggered registration will not
    /// report it again.
    #[inline]
    pub fn examine_socket_once(&self, fd: c_int) {
        // Relaxed: a flag; the socket itself is the truth.
        if self.socket_unexamined.load(Relaxed) {
            self.drain_doorbells_if_alone(fd, 0);
        }
    }

    /// Drains doorbells unless other threads of this end (beyond the caller's own `mine`
    /// announcements) sleep too: one of them may sleep in a `ppoll` of the socket, which only a
    /// byte there wakes (one drained first leaves it asleep), and it drains them itself.
    /// Waiters that leave the bytes there poll again with a short timeout, so nobody sleeps
    /// through a doorbell.
    ///
    /// The count of sleepers is in the header, in the peer's reach: a hostile peer that raises
    /// it must not keep this thread deferring for good (found by the hostile test: a victim
    /// spun here after its attacker had closed, the EOF behind a doorbell it never drained).
    /// So the socket's hang-up is looked at too (the EOF behind the bytes), and a thread that
    /// has deferred for [`DEFER_AT_MOST_NS`] drains the doorbells itself.
    pub fn drain_doorbells_if_alone(&self, fd: c_int, mine: u32) {
        self.drain_if_alone(fd, mine, true);
    }

    /// [`Conn::drain_doorbells_if_alone`] for an edge of the hook's own registration of the
    /// socket with an epoll instance (`EPOLLIN | EPOLLRDHUP | EPOLLET`), whose `events` the
    /// kernel computed when it reported the edge: they say whether the peer's EOF (or an error)
    /// was behind the doorbells then (`EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`), and an EOF that
    /// comes after the report is an edge of its own. So the look for one after the drain (a
    /// `recv(MSG_PEEK)` that finds nothing, one more system call per doorbell) is made only when
    /// the edge says so.
    pub fn drain_doorbells_after_edge(&self, fd: c_int, events: u32) {
        let ended = events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        self.drain_if_alone(fd, 0, ended);
    }

    /// [`Conn::drain_doorbells_if_alone`]; `eof_check`: look for an EOF behind the doorbells
    /// even when some were drained (see [`Conn::drain`]).
    fn drain_if_alone(&self, fd: c_int, mine: u32, eof_check: bool) {
        if !self.reads_ring() {
            return;
        }
        // Relaxed: a hint; the doorbell bytes themselves stay until someone drains them.
        if self.header().asleep.0[self.end.index()].load(Relaxed) <= mine || deferred_too_long() {
            let _ = DEFERRING.try_with(|d| d.set((0, 0)));
            self.drain(fd, eof_check);
        } else {
            let mut p = libc::pollfd { fd, events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
            // SAFETY: one live pollfd, no wait; errno kept.
            let polled = sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, 0) });
            if polled > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                // The peer shut or closed its socket: its EOF (or error) waits behind the
                // doorbells, which a sibling will not need now.
                self.drain_doorbells(fd);
                return;
            }
            // Let the sibling run before this thread polls again.
            spin_yield();
        }
    }

    /// Once the peer handed back: whether the socket holds a pending error (the peer, plain,
    /// closed with bytes unread: ECONNRESET), which only `poll` shows without taking it.
    pub(crate) fn socket_error_pending(&self, fd: c_int) -> bool {
        self.peer_handed_back() && socket_has_error(fd)
    }

    /// Takes the socket's pending error (`SO_ERROR`), if any (0: none; another call took it).
    pub(crate) fn take_socket_error(&self, fd: c_int) -> c_int {
        let mut err: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR writes one int into a live local, its length into another; errno
        // kept.
        let rc = sys::with_errno_kept(|| unsafe { sys::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &mut len) });
        if rc == 0 {
            err
        } else {
            0
        }
    }

    /// A look at the socket, taking nothing: `recv(MSG_PEEK)` of one byte (`Ok(1)`: bytes
    /// queued, `Ok(0)`: EOF). But a read that finds the queue empty takes the socket's pending
    /// error even when it peeks, and once the peer handed back that error is the
    /// application's: the peer, plain, closed with bytes unread (an out-of-band byte it read
    /// past), and this end's read of the socket after the ring must report ECONNRESET as the
    /// kernel's does, after the bytes queued before it. Then `poll` says it first and it stays
    /// in the socket: `Ok(1)` if `FIONREAD` counts bytes, else `Err(ECONNRESET)`. Found by the
    /// differential test with `MSG_OOB`, seed 90303: probes from `epoll_wait` and from a read
    /// that finished the hand-back took it, the application's read found EOF; seed 94345: the
    /// bytes before it. (Linux 6.18 keeps counting in `FIONREAD` an out-of-band byte a read
    /// went past: with one, a read taken for bytes still takes the error; and a peer that
    /// closes between the two calls can still lose it to the `recv`.)
    pub(crate) fn peek_socket(&self, fd: c_int) -> Result<usize, c_int> {
        if self.socket_error_pending(fd) {
            let mut queued: c_int = 0;
            // SAFETY: FIONREAD writes one int into a live local; errno kept.
            let rc = sys::with_errno_kept(|| unsafe { sys::ioctl(fd, libc::FIONREAD, (&raw mut queued).cast()) });
            return if rc == 0 && queued > 0 { Ok(1) } else { Err(libc::ECONNRESET) };
        }
        let mut probe = 0u8;
        sys::recv_raw(fd, std::slice::from_mut(&mut probe), libc::MSG_PEEK | libc::MSG_DONTWAIT)
    }

    /// Notes the peer's end from a look at the socket without waiting: EOF, or an error such as
    /// ECONNRESET (the peer died with bytes it never read: our doorbells), means it is gone.
    fn note_peer_end(&self, fd: c_int, probe: Result<usize, c_int>) {
        if matches!(probe, Ok(0)) {
            self.note_eof(fd);
        } else if matches!(probe, Err(e) if e != libc::EAGAIN && e != libc::EINTR) {
            self.note_peer_closed();
        }
    }

    /// EOF on the real socket: the peer is gone, unless its `SHUT_WR` or this end's `SHUT_RD`
    /// explains it (carried over to the socket once a direction is back there) and it did not
    /// close since (the socket
    /// is not shut both ways, as the peer's last close makes it). Found by the differential
    /// test: a peer's `shutdown(SHUT_WR)` after a hand-back made this end's sends fail.
    /// Nor is it gone when the shutdowns shut this end's socket both ways (either end's
    /// `SHUT_RDWR`, see `Conn::shutdown`, or one direction by each end: both `SHUT_RD`, say):
    /// its EOF and `POLLHUP` say nothing of a close then; the peer's close is seen in the
    /// header (its holders, `Conn::peer_gone`).
    pub(crate) fn note_eof(&self, fd: c_int) {
        if self.shut_both_ways_by_shutdowns() {
            return;
        }
        // (This end's own SHUT_RD, carried over to the socket, explains it just as well.)
        if self.reads_shut_by_shutdowns() {
            let mut p = libc::pollfd { fd, events: 0, revents: 0 };
            // SAFETY: one live pollfd, no wait; errno kept.
            let polled = sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, 0) });
            if polled >= 0 && p.revents & libc::POLLHUP == 0 {
                return;
            }
        }
        self.note_peer_closed();
    }

    /// The real socket says the peer's end is gone (EOF that no shutdown explains, or an
    /// error). A peer whose holders all left through the hook decided at its last close whether
    /// this end is reset (`Conn::leave`); one whose holders never did (killed by a signal, or
    /// its socket closed by `exec` or a raw system call: the kernel released the socket, no hook
    /// ran) may have left bytes of this end's unread on the ring. The kernel resets the peer of
    /// a socket released with data unread (af_unix's `unix_release_sock`): marked as the
    /// peer's close would have, so that this end's reads report ECONNRESET once, then EOF
    /// (found with PHP-FPM: a child killed by `request_terminate_timeout` with its request's
    /// last record unread; nginx read EOF where plain it read ECONNRESET).
    pub(crate) fn note_peer_closed(&self) {
        self.peer_closed.store(true, Relaxed);
        if !self.on_segment() {
            return;
        }
        let peer = self.end.peer();
        // Acquire: a holder that left stored its decrement (AcqRel) before its socket's close,
        // which this end's look at the socket came after.
        if self.header().refcount[peer.index()].load(Acquire) > 0 && self.header().left_unread(peer) {
            self.mark_reset(peer);
        }
    }

    /// Reads and discards the peer's doorbell bytes (never more than it counted as sent);
    /// notes the peer's EOF. Only where the incoming direction is on the ring.
    pub fn drain_doorbells(&self, fd: c_int) {
        self.drain(fd, true);
    }

    /// Drains the doorbells the peer counted and this end has not drained yet, if any (no
    /// system call otherwise). Only where the incoming direction is on the ring.
    pub(crate) fn drain_owed_doorbells(&self, fd: c_int) {
        // SeqCst: as in `drain`.
        if self.reads_ring() && self.peer_line().bells_sent.load(SeqCst) != self.my_line().bells_drained.load(SeqCst) {
            self.drain(fd, false);
        }
    }

    /// As [`Conn::drain_doorbells`]; `eof_check_after_bells`: look for EOF behind the doorbells
    /// even when some were drained. Two kinds of caller skip that system call: a sleep whose
    /// next one is a level-triggered `ppoll` of its own (which reports an
    /// EOF that is left), and an epoll edge that reported none (a later EOF is an edge of its
    /// own, see [`Conn::drain_doorbells_after_edge`]).
    fn drain(&self, fd: c_int, eof_check_after_bells: bool) {
        if !self.reads_ring() {
            return;
        }
        let mut drained_some = false;
        if eof_check_after_bells {
            // Relaxed: see `socket_unexamined`; the socket is looked at below.
            self.socket_unexamined.store(false, Relaxed);
        }
        let sent = &self.peer_line().bells_sent;
        let drained = &self.my_line().bells_drained;
        let mut buf = [0u8; 64];
        // At most this many rounds per call: a peer that inflates its count and floods the
        // socket keeps no call here for long (its bytes are then taken for data: garbage).
        for _ in 0..MAX_OWED_DOORBELLS / 64 {
            // Reserve up to 64 of the doorbells sent and not yet drained (SeqCst, pairing with
            // the sender's count before its byte).
            let before = drained.load(SeqCst);
            let sent_now = sent.load(SeqCst);
            // Never past the marker of a pending ancillary record (loaded after `sent`: a
            // doorbell counted after a marker comes after its record).
            let take = sent_now.min(self.anc_bell_bound()).saturating_sub(before).min(buf.len() as u64) as usize;
            if take == 0 {
                // Nothing counted: only EOF (or a reset) is worth noting.
                if eof_check_after_bells || !drained_some {
                    let probe = self.peek_socket(fd);
                    if matches!(probe, Ok(n) if n > 0) && socket_hung_up(fd) {
                        // A byte nobody counted (a peer that lied about its doorbells, or a
                        // marker whose record is pending) in front of the EOF of a peer that
                        // closed its socket: the EOF is what matters (found by the hostile
                        // test: a victim polled that byte for good).
                        self.note_eof(fd);
                        return;
                    }
                    self.note_peer_end(fd, probe);
                }
                return;
            }
            if drained.compare_exchange(before, before.wrapping_add(take as u64), SeqCst, SeqCst).is_err() {
                continue;
            }
            match sys::recv_raw(fd, &mut buf[..take], libc::MSG_DONTWAIT) {
                Ok(n) => {
                    if n < take {
                        drained.fetch_sub((take - n) as u64, SeqCst);
                    }
                    if n == 0 {
                        self.note_eof(fd);
                        return;
                    }
                    drained_some = true;
                    if n < take {
                        // Fewer bytes than counted: the rest are on their way, or the peer
                        // died between counting a doorbell and sending it (SIGKILL). Then the
                        // socket is at EOF behind these bytes, and an edge-triggered wait
                        // would never hear of it again: look now.
                        self.note_peer_end(fd, self.peek_socket(fd));
                        return;
                    }
                }
                Err(e) => {
                    drained.fetch_sub(take as u64, SeqCst);
                    if e != libc::EAGAIN && e != libc::EINTR {
                        self.note_peer_closed();
                    }
                    return;
                }
            }
        }
    }
}

/// How long a thread leaves the doorbells to siblings the header says sleep too, before it
/// drains them itself (see [`Conn::drain_doorbells_if_alone`]): a sibling blocked on the
/// socket wakes at the doorbell's arrival and drains it in far less, even on a loaded machine.
const DEFER_AT_MOST_NS: u64 = 200_000_000;

thread_local! {
    /// When this thread began leaving doorbells to its siblings, and when it last did
    /// (CLOCK_MONOTONIC ns; a pause of over [`DEFER_EPISODE_GAP_NS`] starts a new count).
    static DEFERRING: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// A thread that has not deferred for this long is not in the same wait any more.
const DEFER_EPISODE_GAP_NS: u64 = 5_000_000;

/// Whether this thread has left the doorbells to its siblings for [`DEFER_AT_MOST_NS`] in one
/// wait (counted from its first deferral in a row).
fn deferred_too_long() -> bool {
    DEFERRING
        .try_with(|deferring| {
            let now = now_ns();
            let (since, last) = deferring.get();
            let since = if since == 0 || now.saturating_sub(last) > DEFER_EPISODE_GAP_NS { now } else { since };
            deferring.set((since, now));
            now.saturating_sub(since) >= DEFER_AT_MOST_NS
        })
        .unwrap_or(true)
}

/// Whether the socket holds a pending error (`POLLERR`, which leaves it there). A look, no
/// wait; errno kept.
pub(crate) fn socket_has_error(fd: c_int) -> bool {
    socket_revents(fd) & libc::POLLERR != 0
}

/// Whether socket `fd` is shut both ways (`POLLHUP`): for a connected Unix stream socket, the
/// peer closed its end (or both ends shut down). A look, no wait; errno kept.
fn socket_hung_up(fd: c_int) -> bool {
    socket_revents(fd) & libc::POLLHUP != 0
}

/// The socket's unconditional `poll` bits (`POLLERR`, `POLLHUP`) now, without waiting (0 if
/// the call fails); errno kept.
fn socket_revents(fd: c_int) -> libc::c_short {
    let mut p = libc::pollfd { fd, events: 0, revents: 0 };
    // SAFETY: one live pollfd, no wait; errno kept.
    if sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, 0) }) > 0 {
        p.revents
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use tssx_common::segment::{End, GiveUp, JOIN_REFUSED};
    use tssx_shm::{segment::Segment, sys::Fd};

    use super::*;
    use crate::{
        calls, table,
        test_io::{read, write},
    };

    /// Hands the tracked candidates `a` and `b` one new segment, as the agent would; the
    /// segment must outlive the test's use of them.
    /// A socketpair of `kind`, both ends tracked as candidates (client, server) with
    /// `nonblock` as known.
    fn tracked_pair(kind: c_int, nonblock: Option<bool>) -> [c_int; 2] {
        let mut pair = [0; 2];
        // SAFETY: a valid out-array.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, pair.as_mut_ptr()) };
        assert_eq!(rc, 0);
        assert!(table::track(pair[0], End::Client, Phase::Candidate, nonblock));
        assert!(table::track(pair[1], End::Server, Phase::Candidate, nonblock));
        pair
    }

    fn join_both(a: c_int, b: c_int) -> Segment {
        let segment = Segment::create(4096).expect("segment");
        let memfd = || {
            // SAFETY: a dup of the segment's own fd, owned by the result.
            unsafe { Fd::from_raw(libc::fcntl(segment.fd().unwrap().as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0)) }
        };
        assert!(table::lookup(a).unwrap().join_with(memfd()));
        assert!(table::lookup(b).unwrap().join_with(memfd()));
        segment
    }

    /// `give_up` on an end made ready meanwhile by another thread (a fork, exec or spawn that
    /// looked at it a moment before): before any switch it still gives the migration up, for
    /// both ends; once an end switched it refuses, and the connection stays on the rings with
    /// every byte.
    #[test]
    fn give_up_refuses_a_committed_migration() {
        crate::phase::set_claiming(false);
        let pair = || tracked_pair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC, None);
        // Ready (the client not yet), nothing switched: given up, and the peer sees it.
        let [a, b] = pair();
        let _segment = join_both(a, b);
        let (client, server) = (table::lookup(a).unwrap(), table::lookup(b).unwrap());
        for _ in 0..100 {
            server.tick(b);
        }
        assert_eq!((client.phase(), server.phase()), (Phase::Mapped, Phase::Ready), "the server alone is ready");
        assert!(server.give_up(GiveUp::Closed));
        assert_eq!(server.phase(), Phase::Plain);
        assert!(client.abandoned(), "the peer sees the migration given up");
        client.tick(a);
        let line = client.my_line();
        assert_eq!(
            (client.phase(), line.joined.load(SeqCst), line.gave_up.load(SeqCst)),
            (Phase::Plain, JOIN_REFUSED, GiveUp::PeerGaveUp as u32),
            "the client, mapped only, refuses the segment and says why"
        );
        assert_eq!(write(a, b"plain"), 5);
        let mut buf = [0u8; 8];
        assert_eq!(read(b, &mut buf), 5);
        assert_eq!(&buf[..5], b"plain");
        // Switched: refused; the bytes still cross.
        let [c, d] = pair();
        let _segment = join_both(c, d);
        for _ in 0..20 {
            assert_eq!(write(c, b"x"), 1);
            assert_eq!(read(d, &mut buf[..1]), 1);
        }
        let server = table::lookup(d).unwrap();
        assert!(table::lookup(c).unwrap().out_switched(), "the client's writes are on its ring");
        let phase = server.phase();
        assert!(!server.give_up(GiveUp::Closed));
        assert_eq!(server.phase(), phase, "a refused give-up changes nothing");
        assert_eq!(write(c, b"ring"), 4);
        assert_eq!(read(d, &mut buf[..4]), 4);
        assert_eq!(&buf[..4], b"ring");
        for fd in [a, b, c, d] {
            // SAFETY: our own fds; the hook forgets them and closes them.
            unsafe { calls::close(fd) };
        }
    }

    /// A peer killed half-way through a migration, after its switch and before this end had
    /// read the bytes it wrote to the socket before it: epoll (edge-triggered) reports the
    /// bytes and the EOF in one edge while they are still data. Once this end has read them
    /// and reads the ring, the next read must give EOF as the kernel would, even right after
    /// another look at the socket (the rate limit of `peer_died`), or an edge-triggered
    /// application sleeps for good (seen in the migration kill test, epoll-et mode).
    #[test]
    fn an_eof_whose_edge_epoll_consumed_half_way_is_seen_once_on_the_ring() {
        crate::phase::set_claiming(false);
        let [a, b] = tracked_pair(libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, None);
        // SAFETY: no arguments to check.
        let epfd = unsafe { calls::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epfd >= 0);
        let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32, u64: 7 };
        // SAFETY: a live event.
        assert_eq!(unsafe { calls::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, b, &mut ev) }, 0);
        // The client's bytes before its switch: on the socket.
        assert_eq!(write(a, b"hello"), 5);
        let _segment = join_both(a, b);
        // Server → client traffic moves both ends to ready and switches both writers; the
        // server reads nothing, so its incoming direction stays on the socket.
        for _ in 0..20 {
            assert_eq!(write(b, b"x"), 1);
            let mut one = [0u8; 1];
            assert_eq!(read(a, &mut one), 1);
        }
        let server = table::lookup(b).unwrap();
        assert!(table::lookup(a).unwrap().out_switched() && server.out_switched(), "both writers switched");
        assert!(!server.reads_ring(), "the server still reads the socket");
        // The client dies: the kernel closes its end; its hook never says so.
        // SAFETY: the client's own socket; the hook's entry is closed below.
        assert_eq!(unsafe { libc::shutdown(a, libc::SHUT_RDWR) }, 0);
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: a live array of 4.
        let n = unsafe { calls::epoll_wait(epfd, out.as_mut_ptr(), 4, 1000) };
        assert_eq!(n, 1, "the bytes and the EOF, in one edge");
        assert_eq!({ out[0].u64 }, 7);
        let mut buf = [0u8; 5];
        assert_eq!(read(b, &mut buf), 5);
        assert_eq!(&buf, b"hello");
        assert_eq!(server.phase(), Phase::Active);
        // Another look at the socket just happened (say, an EAGAIN a moment ago).
        server.death_checked_ns.store(now_ns(), Relaxed);
        assert_eq!(read(b, &mut buf), 0, "EOF, as the kernel gives it");
        for fd in [a, b, epfd] {
            // SAFETY: our own fds; the hook forgets the tracked ones and closes them.
            unsafe { calls::close(fd) };
        }
    }

    /// A swapped pair (client, server), blocking, both ends active on the rings.
    fn active_pair() -> ([c_int; 2], Segment) {
        crate::phase::set_claiming(false);
        let [a, b] = tracked_pair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC, Some(false));
        let segment = join_both(a, b);
        for _ in 0..20 {
            for (from, to) in [(a, b), (b, a)] {
                assert_eq!(write(from, b"x"), 1);
                let mut one = [0u8; 1];
                assert_eq!(read(to, &mut one), 1);
            }
        }
        assert_eq!(table::lookup(a).unwrap().phase(), Phase::Active);
        assert_eq!(table::lookup(b).unwrap().phase(), Phase::Active);
        ([a, b], segment)
    }

    /// The close of a server whose header still counts another holder of its end (a forked
    /// child that exited): it hands the connection back first (`epoll::fd_closing`). The client
    /// follows on its next read, which takes the server's last bytes from the ring; the server's
    /// socket then closes. A byte of the client's landing in that socket before its close (its
    /// own hand-back's last doorbell: nobody drains it any more) makes the kernel reset the
    /// client, which read ECONNRESET instead of EOF (conformance `share fork-epoll`, swapped).
    #[test]
    fn following_a_closing_peers_hand_back_leaves_its_socket_nothing_unread() {
        let ([a, b], _segment) = active_pair();
        assert_eq!(write(b, b"done\n"), 5);
        let server = table::lookup(b).unwrap();
        // The exited child still counted as a holder of the server's end.
        // Relaxed: a test on one thread.
        server.header().refcount[End::Server.index()].fetch_add(1, Relaxed);
        server.hand_back(b);
        drop(server);
        // The hook's part of the server's close (it drains what the client counted so far) ...
        table::close(b);
        let mut buf = [0u8; 64];
        assert_eq!(read(a, &mut buf), 5, "the server's last bytes");
        assert_eq!(&buf[..5], b"done\n");
        // ... then the kernel's.
        // SAFETY: the server's own socket, which the hook forgot above.
        assert_eq!(unsafe { libc::close(b) }, 0);
        assert_eq!(read(a, &mut buf), 0, "EOF, as the kernel gives it (not ECONNRESET)");
        // The client's data after the hand-back is on the socket: a server that closes without
        // reading it resets the client, as the kernel does.
        let ([c, d], _segment) = active_pair();
        let server = table::lookup(d).unwrap();
        server.hand_back(d);
        drop(server);
        assert_eq!(write(d, b"done\n"), 5);
        assert_eq!(read(c, &mut buf), 5);
        assert_eq!(write(c, b"unread"), 6);
        // SAFETY: our own fd; the hook forgets it and closes it.
        unsafe { calls::close(d) };
        assert_eq!(read(c, &mut buf), -1);
        assert_eq!(errno(), libc::ECONNRESET, "a real reset stays one");
        assert_eq!(read(c, &mut buf), 0, "then EOF");
        for fd in [a, c] {
            // SAFETY: our own fds; the hook forgets them and closes them.
            unsafe { calls::close(fd) };
        }
    }

    /// The server's last close drains the doorbells the client counted once; one the client
    /// sends just after lands in the socket before its close, and the kernel resets the client.
    /// A client reading its ring takes that reset for the server's end: EOF after the ring's
    /// bytes, blocked in the read or not, as from a server that closed with nothing unread. One
    /// that closes with ring bytes unread resets the client for real: ECONNRESET once, then EOF.
    #[test]
    fn a_doorbell_after_the_closers_last_drain_is_no_reset() {
        for blocked in [false, true] {
            let ([a, b], _segment) = active_pair();
            assert_eq!(write(b, b"done\n"), 5);
            let mut buf = [0u8; 64];
            assert_eq!(read(a, &mut buf), 5);
            let reader = blocked.then(|| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8];
                    (read(a, &mut buf), errno())
                })
            });
            if blocked {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            table::close(b);
            // A doorbell counted after the drain's look (SeqCst, as the counters' users).
            table::lookup(a).unwrap().my_line().bells_sent.fetch_add(1, SeqCst);
            assert_eq!(sys::send_raw(a, &[0u8], libc::MSG_DONTWAIT), Ok(1));
            // SAFETY: the server's own socket, which the hook forgot above.
            assert_eq!(unsafe { libc::close(b) }, 0);
            let got = match reader {
                Some(r) => r.join().expect("the reader"),
                None => (read(a, &mut buf), errno()),
            };
            assert_eq!(got.0, 0, "EOF, not a reset (errno {})", got.1);
            // SAFETY: our own fd; the hook forgets it and closes it.
            unsafe { calls::close(a) };
        }
        let ([a, b], _segment) = active_pair();
        assert_eq!(write(a, b"unread"), 6);
        // SAFETY: our own fd; the hook forgets it and closes it.
        unsafe { calls::close(b) };
        let mut buf = [0u8; 8];
        assert_eq!(read(a, &mut buf), -1);
        assert_eq!(errno(), libc::ECONNRESET, "a real reset stays one");
        assert_eq!(read(a, &mut buf), 0, "then EOF");
        // SAFETY: our own fd; the hook forgets it and closes it.
        unsafe { calls::close(a) };
    }

    /// After this end's own hand-back, no doorbell: a `shutdown` or a close while the peer
    /// sleeps gives the peer EOF after the bytes, never a stray byte counted after `bells_at`
    /// (the peer, following, would read it as data).
    #[test]
    fn no_doorbell_after_an_ends_own_hand_back() {
        for closing in [false, true] {
            let ([a, b], _segment) = active_pair();
            assert_eq!(write(a, b"last"), 4);
            table::lookup(a).unwrap().hand_back(a);
            let server = table::lookup(b).unwrap();
            server.announce();
            if closing {
                // SAFETY: our own fd; the hook forgets it and closes it.
                assert_eq!(unsafe { calls::close(a) }, 0);
            } else {
                // SAFETY: no pointers.
                assert_eq!(unsafe { calls::shutdown(a, libc::SHUT_WR) }, 0);
            }
            server.withdraw();
            drop(server);
            let mut buf = [0u8; 8];
            assert_eq!(read(b, &mut buf), 4);
            assert_eq!(&buf[..4], b"last");
            assert_eq!(read(b, &mut buf), 0, "EOF, no stray byte (closing: {closing})");
            let fds: &[c_int] = if closing { &[b] } else { &[a, b] };
            for &fd in fds {
                // SAFETY: our own fds; the hook forgets them and closes them.
                unsafe { calls::close(fd) };
            }
        }
    }

    /// A byte on the socket that no doorbell count accounts for (a peer that lied about its
    /// count, as the hostile test's attacker does), in front of the EOF of a peer that closed:
    /// a read on the ring gives EOF, blocking or not, instead of polling that byte for good
    /// (the hostile test's victim hung in its blocking read).
    #[test]
    fn an_eof_behind_a_byte_nobody_counted_ends_a_read_on_the_ring() {
        crate::phase::set_claiming(false);
        let [a, b] = tracked_pair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC, Some(false));
        let _segment = join_both(a, b);
        for _ in 0..20 {
            for (from, to) in [(a, b), (b, a)] {
                assert_eq!(write(from, b"x"), 1);
                let mut one = [0u8; 1];
                assert_eq!(read(to, &mut one), 1);
            }
        }
        assert_eq!(table::lookup(b).unwrap().phase(), Phase::Active);
        // The peer puts a byte on the socket outside its count, then its socket closes (its
        // hook never says so in the header).
        // SAFETY: the real send and shutdown on the client's own socket.
        unsafe {
            assert_eq!(libc::send(a, b"?".as_ptr().cast(), 1, 0), 1);
            assert_eq!(libc::shutdown(a, libc::SHUT_RDWR), 0);
        }
        let (done, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            let _ = done.send(read(b, &mut buf));
        });
        let n = got.recv_timeout(std::time::Duration::from_secs(5)).expect("the blocking read ends");
        assert_eq!(n, 0, "EOF");
        for fd in [a, b] {
            // SAFETY: our own fds; the hook forgets the tracked ones and closes them.
            unsafe { calls::close(fd) };
        }
    }
}
