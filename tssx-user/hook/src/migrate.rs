//! A connection half-way between the socket and the rings ([`Phase::Ready`]): the socket part
//! of reads and writes, counted in the header, and readiness from both.
//!
//! # Reading before the peer's switch has been consumed
//!
//! Under the consumer lock, the reader *peeks* the socket (without waiting), then loads the
//! peer's `switch_at` (`Acquire`), and consumes at most `switch_at - sock_read` of the peeked
//! bytes (all of them while the peer has not switched). A doorbell is only ever sent after the
//! peer stored `switch_at`; a reader that peeked one therefore sees `switch_at` when it loads it
//! afterwards (the socket's own locking orders the peer's store before our receive), so a
//! doorbell is never consumed as data. Once `sock_read` reaches `switch_at`, the incoming data is
//! on the ring and socket bytes are doorbells ([`Conn::in_switched`]).
//!
//! # Writing before this end's switch
//!
//! Under the producer lock, a non-blocking `send` whose byte count is added to `sock_written`
//! before the lock is released: the switch (under the same lock) stores an exact count. A
//! blocking writer waits for room outside the lock (`poll` on the socket).

use std::{
    io::{IoSlice, IoSliceMut},
    sync::atomic::Ordering::{Acquire, Relaxed, Release},
};

use libc::c_int;
use tssx_common::segment::NOT_YET;

use crate::{
    conn::{bits, Conn, Phase},
    sys,
};

/// One attempt at the socket part of a read.
pub(crate) enum SockRead {
    /// Bytes delivered (or peeked).
    Got(usize),
    /// Nothing there now (the peer's data may be on the ring: check [`Conn::in_switched`]).
    Empty,
    /// The socket reported EOF (the peer closed it before switching).
    Eof,
    /// The socket reported an error (errno).
    Err(c_int),
}

/// One attempt at the socket part of a write.
pub(crate) enum SockWrite {
    /// Bytes written to the socket.
    Sent(usize),
    /// This end's writes are on its ring now.
    OnRing,
    /// The socket is full.
    Full,
    /// The socket reported an error (errno).
    Err(c_int),
    /// The migration was given up (by either end): the connection is plain now.
    GaveUp,
}

/// A `msghdr` over `bufs` (`IoSliceMut` has the layout of `iovec`).
pub(crate) fn msg_over(bufs: &[IoSliceMut<'_>]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len();
    msg
}

impl Conn {
    /// The socket part of a read (see the module documentation). `peek`: `MSG_PEEK`.
    pub(crate) fn read_socket(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], peek: bool) -> SockRead {
        let peer_line = self.peer_line();
        let line = self.my_line();
        self.with_rx(|_| {
            let mut msg = msg_over(bufs);
            // SAFETY: `msg` describes the caller's live buffers.
            let peeked = unsafe { sys::recvmsg_raw(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
            let k = match peeked {
                Ok(0) => return SockRead::Eof,
                Ok(k) => k,
                Err(e) if e == libc::EAGAIN || e == libc::EINTR => return SockRead::Empty,
                Err(e) => return SockRead::Err(e),
            };
            // Relaxed: our own count, written under the lock we hold.
            let read = line.sock_read.load(Relaxed);
            // Acquire, after the peek: see the module documentation.
            let at = peer_line.switch_at.load(Acquire);
            let allowed = if at == NOT_YET { k } else { k.min(at.saturating_sub(read) as usize) };
            if allowed == 0 {
                return SockRead::Empty;
            }
            // Relaxed: see the field.
            let passcred = self.passcred.load(Relaxed);
            if peek {
                if allowed == k {
                    // (A first look that went past the switch met no skb with fds before it:
                    // the kernel's peek stops after one.)
                    crate::anc::peek_socket_ctrl(fd, k, bufs.iter().map(|b| b.len()).sum(), passcred);
                }
                return SockRead::Got(allowed);
            }
            let mut scratch = [0u8; 512];
            // Consume exactly the bytes peeked into the caller's buffers (the same ones: we hold
            // the consumer lock, and nothing else of this end reads the socket). Into a scratch
            // buffer when it is big enough, to leave the peeked copy as it is.
            // Control messages sent with these bytes (before the peer's switch, through the
            // kernel) go to the application's `recvmsg` (see `anc`): the kernel ends the read
            // after the bytes that carried fds, and so does this one.
            let got = if allowed <= scratch.len() {
                let one = [IoSliceMut::new(&mut scratch[..allowed])];
                let mut msg = msg_over(&one);
                // SAFETY: `msg` describes our scratch buffer.
                unsafe { crate::anc::recvmsg_with_ctrl(fd, &mut msg, libc::MSG_DONTWAIT, passcred) }
            } else {
                let mut msg = msg_over(bufs);
                crate::iov::limit(&mut msg, allowed, |msg| {
                    // SAFETY: `msg` describes the caller's live buffers, limited to `allowed`.
                    unsafe { crate::anc::recvmsg_with_ctrl(fd, msg, libc::MSG_DONTWAIT, passcred) }
                })
            };
            match got {
                Ok(n) => {
                    // Release: pairs with the Acquire in `in_switched`.
                    // Wrapping, saturating: our own count, but in the peer's reach too.
                    line.sock_read.store(read.wrapping_add(n as u64), Release);
                    if at != NOT_YET && read.saturating_add(n as u64) >= at {
                        // From now on the ring's head makes the edges: start a new one.
                        self.socket_edges[0].fetch_add(1, Relaxed);
                    }
                    SockRead::Got(n.min(allowed))
                }
                Err(e) => SockRead::Err(e),
            }
        })
    }

    /// Whether `peeked` bytes of the socket are all this end has left to read there before the
    /// peer's switch (the ring's bytes follow them).
    pub(crate) fn socket_part_peeked(&self, peeked: usize) -> bool {
        // Acquire: pairs with the peer's store of its switch (its socket writes before).
        let at = self.peer_line().switch_at.load(Acquire);
        // Relaxed: our own count.
        at != NOT_YET && self.my_line().sock_read.load(Relaxed).saturating_add(peeked as u64) >= at
    }

    /// The socket part of a write (see the module documentation).
    pub(crate) fn write_socket(&self, fd: c_int, bufs: &[IoSlice<'_>], flags: c_int) -> SockWrite {
        let line = self.my_line();
        self.with_tx(|_| {
            if self.out_switched() {
                return SockWrite::OnRing;
            }
            // Acquire: pairs with the peer's SeqCst store after its counters.
            if self.peer_line().ready.load(Acquire) == 1 {
                return if self.switch_out() { SockWrite::OnRing } else { SockWrite::GaveUp };
            }
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len();
            let extra = flags & (libc::MSG_MORE | libc::MSG_EOR);
            // SAFETY: `msg` describes the caller's live buffers.
            match unsafe { sys::sendmsg_raw(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | extra) } {
                Ok(n) => {
                    // Relaxed: under the producer lock; published by `switch_at` (SeqCst).
                    line.sock_written.fetch_add(n as u64, Relaxed);
                    SockWrite::Sent(n)
                }
                Err(e) if e == libc::EAGAIN => SockWrite::Full,
                Err(e) if e == libc::EINTR => SockWrite::Sent(0),
                Err(e) => SockWrite::Err(e),
            }
        })
    }

    /// Waits for the socket to become readable (data, a doorbell, EOF) with this end's sleep
    /// announced, so that a peer that switches meanwhile rings: a sleep of the read's `backoff`
    /// ([`crate::wait::sleep_in_ppoll`]: the socket's receive timeout and the application's
    /// handlers end it as they end the kernel's read; `moved`: the read has bytes already).
    /// `Err(errno)`: interrupted (EINTR), or the socket's receive timeout expired (EAGAIN).
    pub(crate) fn sleep_for_socket_data(&self, fd: c_int, backoff: &mut crate::wait::Backoff, moved: bool) -> Result<(), c_int> {
        let asleep = &self.header().asleep.0[self.end.index()];
        tssx_shm::wait::announce(asleep);
        tssx_shm::wait::settle();
        let result = if self.in_switched() || self.unread() > 0 {
            Ok(())
        } else {
            let deadline = backoff.deadline(fd);
            match crate::wait::sleep_in_ppoll(fd, libc::POLLIN, deadline.poll_ms(None), deadline, backoff.mark(), moved) {
                Ok(0) if deadline.expired() => Err(libc::EAGAIN),
                Ok(_) => Ok(()),
                Err(e) => Err(e.errno()),
            }
        };
        tssx_shm::wait::withdraw(asleep);
        result
    }

    /// Waits for room on the socket (a blocking writer before its switch), or for the peer to
    /// become ready (then the writer switches). The caller looks at the call's `deadline`
    /// (SO_SNDTIMEO) and at the signal handlers that ran (`Backoff::interrupted`: EINTR as
    /// the kernel's send gives it) between sleeps; a signal only cuts a sleep short.
    pub(crate) fn sleep_for_socket_room(&self, fd: c_int, deadline: crate::wait::Deadline) -> Result<(), c_int> {
        let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
        // The peer becomes ready on one of its calls; look again every millisecond.
        // SAFETY: one live pollfd; errno kept (an EINTR here is judged by the caller).
        sys::with_errno_kept(|| unsafe { sys::poll(&mut pfd, 1, deadline.poll_ms(Some(1))) });
        Ok(())
    }

    /// Readiness of a connection from [`Phase::Ready`] on that is not all on the rings yet:
    /// the rings where a direction switched, the socket (one `poll` with no wait) otherwise.
    pub fn migrating_readiness(&self, fd: c_int) -> u32 {
        let in_ring = self.in_switched();
        let out_ring = self.out_switched();
        let mut ready = self.ring_readiness();
        if in_ring && out_ring {
            return ready;
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP, revents: 0 };
        // SAFETY: one live pollfd, no wait.
        let n = unsafe { sys::poll(&mut pfd, 1, 0) };
        let sock = if n > 0 { pfd.revents as u32 } else { 0 };
        if !in_ring {
            // Socket data before the peer's switch position counts; doorbells beyond it do not.
            let at = self.peer_line().switch_at.load(Acquire);
            let data = if at == NOT_YET { sock & (libc::POLLIN as u32) != 0 } else { self.my_line().sock_read.load(Acquire) < at };
            ready &= !(bits::IN | bits::RDHUP | bits::HUP);
            if data || self.unread() > 0 || self.rcv_shut() {
                ready |= bits::IN;
            }
            if sock & (libc::POLLRDHUP as u32) != 0 {
                ready |= bits::IN | bits::RDHUP;
            }
            if self.rcv_shut() {
                ready |= bits::RDHUP;
            }
        }
        if !out_ring {
            ready &= !bits::OUT;
            if sock & (libc::POLLOUT as u32) != 0 || self.peer_line().ready.load(Acquire) == 1 {
                ready |= bits::OUT;
            }
        }
        if sock & (libc::POLLHUP as u32) != 0 {
            ready |= bits::HUP;
        }
        if ready & bits::RDHUP != 0 && self.send_shut() {
            ready |= bits::HUP;
        }
        ready
    }

    /// `FIONREAD`: bytes queued for this end: on the socket (data before the peer's switch),
    /// on the ring, and on the socket after the peer's hand-back.
    pub fn unread_total(&self, fd: c_int) -> usize {
        let mut total = self.unread();
        if self.peer_handed_back() {
            // The peer's bytes after its hand-back, on the socket behind the ring's (the
            // kernel counts every queued byte: FIONREAD is not cut where a read would stop).
            total += self.socket_bytes_after_back(fd);
        } else if !self.in_switched() {
            let mut queued: c_int = 0;
            // SAFETY: FIONREAD writes one int into a live local.
            if unsafe { sys::ioctl(fd, libc::FIONREAD, (&mut queued as *mut c_int).cast()) } == 0 {
                let at = self.peer_line().switch_at.load(Acquire);
                let queued = queued.max(0) as u64;
                let data = if at == NOT_YET { queued } else { queued.min(at.saturating_sub(self.my_line().sock_read.load(Acquire))) };
                total += data as usize;
            }
        } else if self.peer_handed_back() {
            // The peer's bytes since its hand-back are on the socket, behind its last doorbells
            // (and markers): counted too, as the kernel counts its queue (found by the
            // differential test: MSG_OOB).
            let mut queued: c_int = 0;
            // SAFETY: FIONREAD writes one int into a live local.
            if unsafe { sys::ioctl(fd, libc::FIONREAD, (&mut queued as *mut c_int).cast()) } == 0 {
                // Acquire: published with the peer's `back_at`. SeqCst: as the counters' users.
                let owed = self
                    .peer_line()
                    .bells_at
                    .load(Acquire)
                    .saturating_sub(self.my_line().bells_drained.load(std::sync::atomic::Ordering::SeqCst));
                let q = &self.header().anc[self.end.peer().index()];
                let markers = q
                    .sent
                    .0
                    .load(std::sync::atomic::Ordering::SeqCst)
                    .saturating_sub(q.taken.0.load(std::sync::atomic::Ordering::SeqCst))
                    .min(tssx_common::segment::ANC_SLOTS as u64);
                total += (queued.max(0) as u64).saturating_sub(owed + markers) as usize;
            }
        }
        total
    }

    /// `SIOCOUTQ`: bytes written and not read by the peer yet, on the socket (before this
    /// end's switch) and the ring. Nothing on the ring once the peer is gone: its last close
    /// discards what it did not read, as the kernel frees the queued skbs (found by the
    /// differential test).
    pub fn unsent_total(&self, fd: c_int) -> usize {
        let mut total = if self.peer_gone() { 0 } else { self.unsent() };
        // Relaxed: this end's own hand-back mark (a hint: after it, the writes are on the
        // socket, which the kernel counts; found by the differential test).
        let handed_back = self.my_line().back_at.load(std::sync::atomic::Ordering::Relaxed) != tssx_common::segment::NOT_YET;
        if !self.out_switched() || handed_back {
            let mut queued: c_int = 0;
            // SAFETY: SIOCOUTQ writes one int into a live local.
            if unsafe { sys::ioctl(fd, libc::TIOCOUTQ, (&mut queued as *mut c_int).cast()) } == 0 {
                total += queued.max(0) as usize;
            }
        }
        total
    }

    /// Whether incoming data is read from the ring now (the connection is active, or the
    /// peer's socket bytes were all consumed).
    #[inline]
    pub(crate) fn reads_ring(&self) -> bool {
        match self.phase() {
            Phase::Active => true,
            _ => self.in_switched(),
        }
    }
}
