//! Waiting for the peer: the spin phase, then the announced sleep on the real socket, where
//! the peer's doorbell byte (or its death) wakes the sleeper.

use std::sync::atomic::Ordering::Relaxed;

use libc::c_int;
use tssx_common::segment::SegmentState;

use crate::{
    conn::Conn,
    spin::{now_ns, spin_budget, spin_missed, spin_paid_off, spin_yield, woke},
    sys::{self, errno, fd_nonblocking},
};

/// Why a blocking wait ended without progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// A signal handler ran and the call must fail with EINTR.
    Interrupted,
    /// The socket's receive timeout (SO_RCVTIMEO) expired, or it turned non-blocking.
    TimedOut,
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
#[derive(Default)]
pub(crate) struct Backoff {
    spins: u32,
    spin_from: u64,
    spin_until: u64,
}

impl Backoff {
    /// Progress was made: the next wait starts with a fresh spin budget.
    pub(crate) fn progress(&mut self) {
        if self.spins != 0 {
            spin_paid_off();
        }
        self.spins = 0;
    }

    /// One idle step. `announce` announces the sleep and re-checks the ring (true: still
    /// nothing to do, so sleep); `withdraw` takes the announcement back after waking.
    pub(crate) fn idle(
        &mut self,
        conn: &Conn,
        fd: c_int,
        announce: impl FnOnce() -> bool,
        withdraw: impl FnOnce(),
    ) -> Result<(), WaitError> {
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
        if !self.spins.is_multiple_of(64) || now_ns() < self.spin_until {
            if self.spins.is_multiple_of(1024) {
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
    pub(crate) fn sleep(conn: &Conn, fd: c_int, announce: impl FnOnce() -> bool, withdraw: impl FnOnce()) -> Result<(), WaitError> {
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

impl Conn {
    /// Announces that a thread of this end is about to sleep in a poll-like call (the peer
    /// then rings the doorbell after its next transfer or shutdown). The caller issues one
    /// `SeqCst` fence after all its announcements and re-checks readiness before sleeping.
    pub fn announce(&self) {
        tssx_shm::wait::announce(&self.segment.header().asleep.0[self.end.index()]);
    }

    /// Takes an announcement back.
    pub fn withdraw(&self) {
        tssx_shm::wait::withdraw(&self.segment.header().asleep.0[self.end.index()]);
    }

    /// After changing something the peer may wait for (shutdown, last close): wake it if it
    /// announced a sleep.
    pub(crate) fn wake_peer(&self, fd: c_int) {
        if tssx_shm::wait::sleeper_announced(&self.segment.header().asleep.0[self.end.peer().index()]) {
            Self::ring_doorbell(fd);
        }
    }

    /// Wakes the peer: one byte on the real socket (it drains and ignores them).
    pub(crate) fn ring_doorbell(fd: c_int) {
        let bell = 0u8;
        // SAFETY: sends one byte from a live local; never blocks, never raises SIGPIPE.
        unsafe { sys::send(fd, (&bell as *const u8).cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    }

    /// Sleeps on the real socket until a doorbell, the peer's EOF, or (pending or shared
    /// connections) a short timeout. The caller has announced its sleep.
    ///
    /// An active connection used by one thread sleeps in a blocking `recv(MSG_PEEK)` of one
    /// byte: the kernel then applies the caller's signal dispositions (SA_RESTART restarts it,
    /// otherwise EINTR) and the socket's SO_RCVTIMEO, exactly as for a plain read.
    pub(crate) fn sleep_on_socket(&self, fd: c_int) -> Result<(), WaitError> {
        let active = self.state() == Some(SegmentState::Active);
        if active && !self.is_shared() {
            let mut byte = 0u8;
            // SAFETY: peeks one byte into a live local.
            let n = unsafe { sys::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK) };
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
        let ready = unsafe { sys::poll(&mut pfd, 1, timeout) };
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
            if unsafe { sys::recv(fd, (&mut probe as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) } == 0 {
                self.peer_closed.store(true, Relaxed);
            }
            // Let the sibling run before this thread polls again.
            spin_yield();
        }
    }

    /// Reads and discards doorbell bytes; notes the peer's EOF.
    pub fn drain_doorbells(&self, fd: c_int) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: receives into a live local buffer; never blocks.
            let n = unsafe { sys::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                continue;
            }
            if n == 0 || (errno() != libc::EAGAIN && errno() != libc::EINTR) {
                self.peer_closed.store(true, Relaxed);
            }
            return;
        }
    }
}
