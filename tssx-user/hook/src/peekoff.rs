//! `SO_PEEK_OFF` on a connection the hook serves: emulated on the rings, with the kernel's
//! semantics for af_unix stream sockets (`unix_stream_read_generic`).
//!
//! Why emulated rather than handed back: the kernel's offset applies to every `MSG_PEEK` on the
//! socket, including the hook's own (its one-byte blocking peek while it sleeps, its peeks of a
//! connection half-way); and a hand-back completes only when the peer follows, so peeks would
//! have to be served on the rings with an offset anyway until then. So while the hook serves
//! the socket, the kernel's offset stays off (-1) and the connection keeps its own
//! ([`Conn::peek_off`](crate::conn::Conn)):
//!
//! * `setsockopt(SO_PEEK_OFF)`: the real call first (the kernel's checks and errno), then its
//!   value is read back and kept here, and the kernel's is set back to -1. On a connection not
//!   ready yet the migration is given up first (it stays plain for good, and the kernel keeps the
//!   value), since the hook peeks the socket while it migrates. `getsockopt(SO_PEEK_OFF)`
//!   reports the kept value.
//! * a `MSG_PEEK` read with the offset at `k >= 0` returns the bytes from `k` on and moves the
//!   offset forward by what it returned; a blocking one waits until there are more than `k`
//!   bytes (in 1 ms steps, up to SO_RCVTIMEO), a non-blocking one gives EAGAIN, and at EOF it
//!   returns 0; a normal read moves the offset back by what it read (not below 0). -1 turns it
//!   off.
//! * once the connection is plain again (handed back), the kept value goes to the kernel.
//!
//! Not reproduced: the offset is per process image here (a forked child or another process
//! sharing the socket has its own copy; the kernel has one per socket). The hook's own peeks
//! (a splice out of the socket looks before it consumes) pass `MSG_INTERNAL` and neither use
//! nor move it; what a splice consumes moves it back, as in the kernel.

use std::{
    io::IoSliceMut,
    sync::atomic::Ordering::{Acquire, Relaxed, SeqCst},
};

use libc::c_int;
use tssx_common::segment::NOT_YET;

use crate::{
    conn::{Conn, Phase},
    stream::{partial_or_errno, MSG_INTERNAL, WENT_PLAIN},
    sys,
    wait::{Deadline, Waiting},
};

impl Conn {
    /// [`Conn::recv`] with the offset on (see the module documentation).
    pub(crate) fn recv_peek_off(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], flags: c_int) -> Option<isize> {
        let flags = flags & !MSG_INTERNAL;
        if flags & libc::MSG_PEEK == 0 {
            let n = self.recv_plainly(fd, bufs, flags);
            if n == WENT_PLAIN {
                return None;
            }
            if n > 0 {
                // Relaxed: see `peek_off`.
                let _ = self.peek_off.fetch_update(Relaxed, Relaxed, |off| {
                    (off >= 0).then(|| off.saturating_sub(n.min(c_int::MAX as isize) as c_int).max(0))
                });
            }
            return Some(n);
        }
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return Some(0);
        }
        let nonblock = self.would_block_is_error(flags);
        let mut deadline: Option<Deadline> = None;
        // Taken at the first pause (see `crate::signals`).
        let mut mark: Option<crate::signals::Mark> = None;
        loop {
            let off = self.peek_off.load(Relaxed).max(0) as usize;
            let mut tmp = vec![0u8; off.saturating_add(want)];
            let n = self.recv_plainly(fd, &mut [IoSliceMut::new(&mut tmp)], (flags & !libc::MSG_WAITALL) | libc::MSG_DONTWAIT);
            if n == WENT_PLAIN {
                return None;
            }
            let n = if n >= 0 { self.peek_more(fd, &mut tmp, n as usize) as isize } else { n };
            if n > off as isize {
                let put = crate::iov::spread(bufs, &tmp[off..n as usize]);
                if put.fault {
                    // As the kernel: EFAULT, the offset unmoved.
                    return Some(partial_or_errno(0, libc::EFAULT));
                }
                let copied = put.bytes;
                let _ = self
                    .peek_off
                    .fetch_update(Relaxed, Relaxed, |o| (o >= 0).then(|| o.saturating_add(copied.min(c_int::MAX as usize) as c_int)));
                return Some(copied as isize);
            }
            if n < 0 && sys::errno() != libc::EAGAIN {
                return Some(n); // ECONNRESET and the like
            }
            if n == 0 || (self.rcv_shut() && self.unread() <= off) {
                return Some(0); // EOF before the offset
            }
            if nonblock {
                return Some(partial_or_errno(0, libc::EAGAIN));
            }
            let d = *deadline.get_or_insert_with(|| Deadline::of(fd, Waiting::Read));
            if d.expired() {
                return Some(partial_or_errno(0, libc::EAGAIN));
            }
            // A handler that ran on this thread since the first pause: EINTR where the kernel's
            // read would give it.
            if mark.get_or_insert_with(crate::signals::Mark::now).interrupts_transfer(|| d.at.is_some()) {
                return Some(partial_or_errno(0, libc::EINTR));
            }
            let mut p = libc::pollfd { fd, events: 0, revents: 0 };
            // SAFETY: one live pollfd; a 1 ms pause (a signal ends it early: judged above on
            // the next round).
            sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, d.poll_ms(Some(1))) });
            if self.phase() == Phase::Ready {
                self.try_switch();
            }
        }
    }

    /// A peek of a connection half-way shows one source at a time (the socket up to the peer's
    /// switch, or the ring up to the peer's hand-back); a peek at an offset may need the next
    /// one too. After `n` bytes peeked into `tmp`, from the source that follows when the first
    /// one is complete: the ring after the peer's socket bytes (while migrating), the socket
    /// after the peer's ring bytes and its last doorbells (handing back). Returns the bytes
    /// now in `tmp`.
    fn peek_more(&self, fd: c_int, tmp: &mut [u8], n: usize) -> usize {
        if n >= tmp.len() {
            return n;
        }
        let peer = self.peer_line();
        match self.phase() {
            Phase::Ready if !self.reads_ring() => {
                // Acquire: pairs with the peer's SeqCst store; our own count, stored with Release.
                let at = peer.switch_at.load(Acquire);
                if at != NOT_YET && self.my_line().sock_read.load(Acquire).wrapping_add(n as u64) == at {
                    // (`tmp` is ours: the peek cannot fault.)
                    return n + self.with_rx(|rx| rx.peek(&mut tmp[n..])).bytes;
                }
            }
            Phase::HandingBack if self.reads_ring() => {
                // Acquire: pairs with the peer's SeqCst store (its ring writes and `bells_at`
                // before).
                let back_at = peer.back_at.load(Acquire);
                if back_at != NOT_YET && self.with_rx(|rx| rx.position()).wrapping_add(n as u64) == back_at {
                    // SeqCst: as the drainers' updates.
                    let owed = peer.bells_at.load(Acquire).saturating_sub(self.my_line().bells_drained.load(SeqCst));
                    // More doorbells than a socket's buffer can hold one-byte messages of is the
                    // peer's lie: no allocation sized by it (issue 16: a huge one aborts).
                    if owed > crate::wait::MAX_OWED_DOORBELLS {
                        return n;
                    }
                    let owed = owed as usize;
                    let mut more = vec![0u8; owed + tmp.len() - n];
                    if let Ok(k) = sys::recv_raw(fd, &mut more, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
                        if k > owed {
                            tmp[n..n + k - owed].copy_from_slice(&more[owed..k]);
                            return n + k - owed;
                        }
                    }
                }
            }
            _ => {}
        }
        n
    }

    /// `setsockopt(SOL_SOCKET, SO_PEEK_OFF)` just succeeded on the real socket of this
    /// connection: keep its value here and turn the kernel's off while the hook serves the
    /// socket (see the module documentation). Returns false if the connection is plain (the
    /// kernel keeps it).
    pub fn took_peek_off(&self, fd: c_int) -> bool {
        if self.phase() < Phase::Ready {
            // The hook peeks the socket while it migrates: stay plain for good.
            self.leave_rings(fd);
        }
        if matches!(self.phase(), Phase::Plain | Phase::Unconnected) {
            return false;
        }
        let mut value: c_int = -1;
        if tssx_shm::sys::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &mut value).is_err() {
            return false;
        }
        self.note_fd(fd);
        // Relaxed: see `peek_off`.
        self.peek_off.store(value, Relaxed);
        let _ = tssx_shm::sys::setsockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &(-1 as c_int));
        true
    }

    /// The kept `SO_PEEK_OFF` (for `getsockopt`), while the hook serves the socket.
    pub fn peek_off(&self) -> Option<c_int> {
        (!matches!(self.phase(), Phase::Plain | Phase::Unconnected) && self.phase() >= Phase::Ready).then(|| self.peek_off.load(Relaxed))
    }

    /// The connection is plain again: the kernel takes the kept offset over.
    pub(crate) fn peek_off_to_kernel(&self) {
        // Relaxed: see `peek_off`.
        let off = self.peek_off.load(Relaxed);
        let fd = self.last_fd.load(Relaxed);
        if off != -1 && fd >= 0 {
            let _ = tssx_shm::sys::setsockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, &off);
        }
    }
}
