//! Turning plain: a connection whose peer did not join (or an agent that died while it was
//! pending) goes back to the real socket, after this end replays into it what it wrote to the
//! ring, in order.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use libc::c_int;
use tssx_common::segment::{End, SegmentState, SHUT_READ, SHUT_WRITE};

use crate::{
    conn::Conn,
    stream::partial_or_errno,
    sys::{self, errno},
};

impl Conn {
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
        let n = unsafe { sys::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n == 0 || (n < 0 && errno() != libc::EAGAIN && errno() != libc::EINTR) {
            let _ = self.segment.transition(SegmentState::Pending, SegmentState::Plain);
            self.close_agent();
        }
    }

    pub(crate) fn close_agent(&self) {
        let fd = self.agent.swap(-1, AcqRel);
        if fd >= 0 {
            // SAFETY: the hook's own control connection, owned by this field.
            unsafe { sys::close(fd) };
        }
    }

    /// The real socket is readable while the connection is pending: the peer writes to the
    /// socket, so it does not use the rings. Decide plain now instead of waiting for the agent.
    pub fn on_plain_data(&self) {
        if self.end == End::Client {
            let _ = self.segment.transition(SegmentState::Pending, SegmentState::Plain);
        }
    }

    /// The connection went plain before the peer read anything: put what this end wrote into
    /// the ring back onto the real socket, in order, apply this end's shutdowns to it, and
    /// forget the swap. Returns false if the replay failed (the caller reports the error).
    pub(crate) fn replay_and_unswap(&self, fd: c_int) -> bool {
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
                    let w = unsafe { sys::send(fd, buf[done..n].as_ptr().cast(), n - done, libc::MSG_NOSIGNAL) };
                    if w < 0 && errno() == libc::EINTR {
                        continue;
                    }
                    if w < 0 && errno() == libc::EAGAIN {
                        let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                        // SAFETY: one live pollfd.
                        unsafe { sys::poll(&mut pfd, 1, 100) };
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
                unsafe { sys::shutdown(fd, how) };
            }
            // Every fd of this connection is plain from now on (writers check this under the
            // producer lock, so nothing lands in the ring after the replay).
            self.unswapped.store(true, Release);
            ok
        })
    }

    /// Once the connection is plain: replay, then the call's outcome — what it moved so far,
    /// `None` for "use the real call" if nothing yet, or EPIPE if the replay failed.
    /// A receiving call always hands over to the real socket (which reports EOF or the error
    /// itself), whatever happened to the replay.
    pub(crate) fn went_plain(&self, fd: c_int, total: usize, receiving: bool) -> Option<Option<isize>> {
        if self.state() != Some(SegmentState::Plain) && !self.unswapped.load(Acquire) {
            return None;
        }
        let replayed = self.replay_and_unswap(fd) || receiving;
        Some(match (total, replayed) {
            (0, true) => None,
            (_, true) => Some(total as isize),
            (_, false) => Some(partial_or_errno(total, libc::EPIPE)),
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
}
