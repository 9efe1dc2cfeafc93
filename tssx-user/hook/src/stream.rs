//! Stream-socket semantics over the rings: `recv` and `send` with their flags, partial
//! transfers, EOF, EPIPE/SIGPIPE, ECONNRESET, and `shutdown`.

use std::{
    io::{IoSlice, IoSliceMut},
    sync::atomic::Ordering::{Acquire, Relaxed, SeqCst},
};

use libc::c_int;
use tssx_common::segment::{SHUT_READ, SHUT_WRITE};
use tssx_shm::ring::Transfer;

use crate::{
    conn::Conn,
    iov::{after, after_mut},
    sys::set_errno,
    wait::Backoff,
};

/// The result of a call that moved `total` bytes before it had to stop with `errno`: the
/// partial count if any, else -1 with `errno` set (as the kernel reports partial transfers).
pub(crate) fn partial_or_errno(total: usize, errno: c_int) -> isize {
    if total > 0 {
        return total as isize;
    }
    set_errno(errno);
    -1
}

impl Conn {
    /// `recv` semantics over the ring. `None` means "went plain: call the real function".
    pub fn recv(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], flags: c_int) -> Option<isize> {
        let peek = flags & libc::MSG_PEEK != 0;
        let wait_all = flags & libc::MSG_WAITALL != 0 && !peek;
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return Some(0);
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
                    return Some(total as isize);
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
                    return Some(partial_or_errno(0, libc::ECONNRESET));
                }
                return Some(total as isize); // EOF (0) or what MSG_WAITALL collected
            }
            if self.would_block_is_error(flags) {
                return Some(partial_or_errno(total, libc::EAGAIN));
            }
            let waited = backoff.idle(self, fd, || self.with_rx(|rx| rx.announce_sleep()), || self.with_rx(|rx| rx.withdraw_sleep()));
            if let Err(e) = waited {
                return Some(partial_or_errno(total, e.errno()));
            }
        }
    }

    /// `send` semantics over the ring (blocking sends write everything). `None`: went plain.
    pub fn send(&self, fd: c_int, bufs: &[IoSlice<'_>], flags: c_int) -> Option<isize> {
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
                return Some(partial_or_errno(total, libc::EPIPE));
            }
            if total == want {
                return Some(total as isize);
            }
            let put = self.with_tx(|tx| {
                if self.unswapped.load(Acquire) {
                    return Transfer { bytes: 0, wake_peer: false };
                }
                after(bufs, total, |rest| tx.writev(rest))
            });
            if put.bytes == 0 && self.unswapped.load(Acquire) {
                return if total == 0 { None } else { Some(total as isize) };
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
                return Some(partial_or_errno(total, libc::EAGAIN));
            }
            let waited = backoff.idle(self, fd, || self.with_tx(|tx| tx.announce_sleep()), || self.with_tx(|tx| tx.withdraw_sleep()));
            if let Err(e) = waited {
                return Some(partial_or_errno(total, e.errno()));
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
}
