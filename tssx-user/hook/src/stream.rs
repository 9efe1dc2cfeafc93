//! Stream-socket semantics for a connection with a segment: `recv` and `send` with their flags,
//! partial transfers, EOF, EPIPE/SIGPIPE, ECONNRESET, and `shutdown`. Each direction is served
//! from the socket until it switched ([`crate::migrate`]) and from the rings afterwards.

use std::{
    io::{IoSlice, IoSliceMut},
    sync::atomic::Ordering::{Acquire, Relaxed, SeqCst},
};

use libc::c_int;
use tssx_common::segment::{GiveUp, NOT_YET};
use tssx_shm::ring::Transfer;

use crate::{
    conn::{Conn, Phase},
    handback::Source,
    iov::{after, after_mut},
    migrate::{SockRead, SockWrite},
    sys::set_errno,
    wait::{Backoff, Waiting},
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

/// A flag of the hook's own [`Conn::recv`] calls (a bit no receive call of an application
/// means anything by: the kernel's internal `MSG_CMSG_COMPAT`, masked off the application's
/// flags): the socket's emulated `SO_PEEK_OFF` does not apply to them.
pub(crate) const MSG_INTERNAL: c_int = 1 << 31;

/// A pipe or a socket as `sendfile`'s input: what the kernel answers a sendfile into a socket
/// from it (EBADF when it is not open for reading, ESPIPE with an offset, EINVAL otherwise,
/// even for a count of 0). `None` for any other file. (Into the private pipe the kernel would
/// accept them, and read them: never tried.)
fn stream_input_refused(in_fd: c_int, has_offset: bool) -> Option<c_int> {
    let kind = crate::sys::fstat(in_fd).ok()?.st_mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
        return None;
    }
    let fl = tssx_shm::sys::fcntl(in_fd, libc::F_GETFL, 0).ok()? as c_int;
    Some(if fl & libc::O_ACCMODE == libc::O_WRONLY {
        libc::EBADF
    } else if has_offset {
        libc::ESPIPE
    } else {
        libc::EINVAL
    })
}

/// Internal marker of [`Conn::recv`]/[`Conn::send`]: went plain before moving anything.
pub(crate) const WENT_PLAIN: isize = isize::MIN;

/// Raises SIGPIPE in this thread, as the kernel does for a failed stream write.
pub(crate) fn raise_sigpipe(flags: c_int) {
    if flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: raising SIGPIPE in this thread, as the kernel would.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
}

impl Conn {
    /// `recv` semantics for a connection with a segment (phase `Ready` or `Active`). `None`:
    /// the connection went plain before anything was read: the caller makes the real call.
    pub fn recv(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], flags: c_int) -> Option<isize> {
        // The emulated SO_PEEK_OFF: applies to the application's reads; the hook's own peeks
        // neither use nor move it, its own consuming reads (splice) move it back.
        if self.peek_off.load(Relaxed) >= 0 && (flags & MSG_INTERNAL == 0 || flags & libc::MSG_PEEK == 0) {
            return self.recv_peek_off(fd, bufs, flags);
        }
        Some(self.recv_inner(fd, bufs, flags & !MSG_INTERNAL)).filter(|&n| n != WENT_PLAIN)
    }

    /// [`Conn::recv`] without the emulated `SO_PEEK_OFF` (see [`crate::peekoff`]).
    pub(crate) fn recv_plainly(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], flags: c_int) -> isize {
        self.recv_inner(fd, bufs, flags)
    }

    fn recv_inner(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], flags: c_int) -> isize {
        let peek = flags & libc::MSG_PEEK != 0;
        let wait_all = flags & libc::MSG_WAITALL != 0 && !peek;
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            // As the kernel (whose target is one byte even for an empty buffer): a receive of
            // no bytes waits for data, EOF or an error as a one-byte one would, then returns 0
            // and consumes nothing (EAGAIN when non-blocking with nothing there). Found by the
            // differential test (`read`/`readv` of 0 return 0 at once: see `calls`).
            if peek && self.urgent(fd) != 0 {
                // But a peek of no bytes walks the kernel's queue to its end, and one that ends
                // with an out-of-band byte (which the peek may not pass) waits, EAGAIN when
                // non-blocking (Linux 6.18): the socket's queue ends as the stream does once
                // the peer handed back (only then can there be one), so it answers (found by
                // the differential test with MSG_OOB, seeds 87591 and 92886).
                return match crate::sys::recv_raw(fd, &mut [], flags & !libc::MSG_WAITALL) {
                    Ok(n) => n as isize,
                    Err(e) => partial_or_errno(0, e),
                };
            }
            let mut probe = [0u8; 1];
            let n = self.recv_inner(fd, &mut [IoSliceMut::new(&mut probe)], (flags & !libc::MSG_WAITALL) | libc::MSG_PEEK);
            return if n > 0 { 0 } else { n };
        }
        let mut total = 0usize;
        let mut backoff = Backoff::new(Waiting::Read);
        backoff.mark_if_long(want);
        // The socket part of this read reached the peer's switch: the ring's bytes follow
        // without a wait, as the kernel's read takes every queued byte the buffer holds.
        let mut glue = false;
        loop {
            if self.phase() == Phase::Plain {
                if total == 0 {
                    return WENT_PLAIN;
                }
                // Plain from here on (the last of a hand-back): what MSG_WAITALL still wants
                // comes from the socket, as the kernel's read would wait for it.
                return if wait_all { self.rest_from_socket(fd, bufs, total, flags) } else { total as isize };
            }
            if !self.reads_ring() {
                // Loaded before the peek: a shutdown seen here saw every byte written before it.
                let shut = self.rcv_shut();
                match after_mut(bufs, total, |rest| self.read_socket(fd, rest, peek)) {
                    SockRead::Got(n) => {
                        total += n;
                        // Relaxed: see the field. `SO_PASSCRED` turned on half-way: the socket's
                        // bytes before the peer's switch were sent without credentials (no end
                        // had the option, or the connection would not have been claimed): the
                        // kernel's "none" for them. The ring's bytes before the peer's hand-back
                        // were too (the option hands the connection back): the read goes on with
                        // them (the ring part ends it), as the kernel glues bytes of the same
                        // credentials and never those of others.
                        let creds = n > 0 && self.passcred.load(Relaxed);
                        if creds {
                            crate::anc::no_credentials();
                        }
                        if total == want || crate::anc::ctrl_ended_read() {
                            return total as isize;
                        }
                        if peek {
                            // A peek that saw every socket byte before the peer's switch goes on
                            // with the ring's, as the kernel's peek takes every queued byte.
                            return (total + self.peek_ring_after_switch(fd, bufs, total, flags)) as isize;
                        }
                        if creds && !self.reads_ring() {
                            return total as isize;
                        }
                        if !wait_all {
                            if !self.reads_ring() {
                                return total as isize;
                            }
                            glue = true;
                        }
                    }
                    SockRead::Eof => {
                        self.note_eof(fd);
                        return total as isize;
                    }
                    SockRead::Err(e) => return partial_or_errno(total, e),
                    SockRead::Empty => {
                        if self.reads_ring() {
                            continue;
                        }
                        if shut {
                            return total as isize;
                        }
                        if self.would_block_is_error(flags) {
                            return partial_or_errno(total, libc::EAGAIN);
                        }
                        if backoff.deadline(fd).expired() {
                            return partial_or_errno(total, libc::EAGAIN);
                        }
                        if backoff.interrupted(fd, total > 0) {
                            return partial_or_errno(total, libc::EINTR);
                        }
                        if let Err(e) = self.sleep_for_socket_data(fd, &mut backoff, total > 0) {
                            return partial_or_errno(total, e);
                        }
                        self.try_switch();
                    }
                }
                continue;
            }
            // A read that took a marker's control messages ends after that message's bytes.
            let mut stop = false;
            let got = if self.phase() == Phase::HandingBack {
                match self.read_source() {
                    Source::Socket => {
                        if self.finish_hand_back() {
                            // (Plain now: see the top of the loop.)
                            continue;
                        }
                        Transfer::default()
                    }
                    _ => {
                        let (got, ends) = after_mut(bufs, total, |rest| self.read_ring_until_back(rest, peek, flags));
                        stop = ends;
                        // Relaxed: see the field.
                        if got.bytes > 0 && self.passcred.load(Relaxed) {
                            // Ring bytes were sent without credentials: the kernel's "none"
                            // for them, and the read ends here (the socket's bytes that follow
                            // carry the peer's; the kernel never glues the two).
                            crate::anc::no_credentials();
                            stop = true;
                        }
                        got
                    }
                }
            } else {
                self.with_rx(|rx| {
                    // The ring's bytes seen before the records are looked at (see
                    // `Conn::ring_seen`).
                    Self::ring_seen(rx);
                    if self.anc_pending() {
                        let (got, ends) =
                            after_mut(bufs, if peek { 0 } else { total }, |rest| self.read_ring_anc(fd, rx, rest, peek, flags, usize::MAX));
                        stop = ends;
                        return got;
                    }
                    if peek {
                        return rx.peekv_seen(bufs);
                    }
                    after_mut(bufs, total, |rest| rx.readv_seen(rest))
                })
            };
            if got.wake_peer {
                self.ring_doorbell(fd);
            }
            if got.fault {
                // The caller's buffer ran into a bad page: nothing of this transfer was taken
                // (it stays for the next read), as the kernel leaves a message whose copy
                // faulted queued; EFAULT unless bytes were read before (see `crate::iov`).
                return partial_or_errno(total, libc::EFAULT);
            }
            total += got.bytes;
            if stop || (glue && got.bytes == 0) {
                return total as isize;
            }
            if got.bytes > 0 {
                backoff.progress();
                let phase = self.phase();
                if total < want && matches!(phase, Phase::Active | Phase::HandingBack) && self.peer_handed_back() {
                    if peek {
                        return (total + self.peek_past_back(fd, bufs, total)) as isize;
                    }
                    if !wait_all {
                        // The ring's part of a hand-back is read: the kernel's read would go on
                        // with the bytes queued on the socket after it (the peer's since its
                        // hand-back), without waiting. Found by the differential test (MSG_OOB).
                        if phase == Phase::Active {
                            self.hand_back(fd);
                        }
                        if matches!(self.read_source(), Source::Socket) && self.finish_hand_back() {
                            return self.rest_from_socket(fd, bufs, total, flags | libc::MSG_DONTWAIT);
                        }
                    }
                }
                if !wait_all || total == want {
                    return total as isize;
                }
                continue;
            }
            if self.phase() == Phase::Active && self.peer_handed_back() {
                // The peer went back to the socket: follow (everything it put on the ring was
                // read above; what follows is on the socket).
                self.hand_back(fd);
                continue;
            }
            if self.phase() == Phase::HandingBack && self.peer_handed_back() {
                // The rest comes from the socket (after the last doorbells).
                match self.read_source() {
                    Source::Socket => {
                        if self.finish_hand_back() {
                            continue;
                        }
                    }
                    // The ring gave nothing, yet the peer's `back_at` says there is more on it:
                    // a position the peer lied about (or one a replay ends earlier). Wait as for
                    // an empty ring (no spinning here: issue 16).
                    Source::Ring => {}
                    Source::SocketBeforeSwitch => continue,
                }
            }
            if self.rcv_shut() {
                // Re-check once: the peer may have written just before shutting down.
                if self.unread() > 0 {
                    continue;
                }
                // As the kernel, whose read takes the socket's pending error when it finds the
                // queue empty short of its target (one byte, or all that MSG_WAITALL asks; a
                // peek too): ECONNRESET if nothing was read, else the bytes, and the error is
                // gone. Found by the differential test.
                if (total == 0 || (wait_all && total < want)) && self.reset_pending() {
                    self.note_reset_reported(true);
                    return partial_or_errno(total, libc::ECONNRESET);
                }
                return total as isize; // EOF (0) or what MSG_WAITALL collected
            }
            if self.would_block_is_error(flags) {
                if self.peer_died(fd) {
                    continue; // EOF, as the kernel reports a dead peer
                }
                return partial_or_errno(total, libc::EAGAIN);
            }
            let waited =
                backoff.idle(self, fd, total > 0, || self.with_rx(|rx| rx.announce_sleep()), || self.with_rx(|rx| rx.withdraw_sleep()));
            if let Err(e) = waited {
                return partial_or_errno(total, e.errno());
            }
            if self.phase() == Phase::Ready {
                self.try_switch();
            }
        }
    }

    /// Looks at the producer's position of the incoming ring before a reader checks for
    /// pending records of ancillary data; the read that follows takes only the bytes seen here
    /// (`Consumer::readv_seen`, `peekv_seen`). The peer's `send_anc` publishes a record
    /// (SeqCst store of the queue's `sent`) before the message's bytes (the ring's Release
    /// store of its head, loaded Acquire here), so the record of every byte seen here is seen
    /// by the check: a read never takes a message's bytes without its marker. Reading whatever
    /// the ring held after the check could: a record and its bytes published between the
    /// check and the copy, the message read as plain bytes and its fds left for a later read.
    #[inline]
    pub(crate) fn ring_seen(rx: &tssx_shm::ring::Consumer) {
        rx.available();
    }

    /// After a peek of `total` socket bytes: if they were all this end has left to read before
    /// the peer's switch, the ring's bytes that follow, peeked into `bufs` after them (up to the
    /// peer's hand-back, if it is handing back; while markers of ancillary data are pending, up
    /// to and including the first message, with its control messages: see
    /// `Conn::peek_ring_glued`). Returns how many.
    fn peek_ring_after_switch(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], total: usize, flags: c_int) -> usize {
        if !self.socket_part_peeked(total) || self.phase() == Phase::Plain {
            return 0;
        }
        let got = if self.phase() == Phase::HandingBack {
            if self.anc_pending() {
                return 0;
            }
            after_mut(bufs, total, |rest| self.read_ring_until_back(rest, true, flags)).0
        } else {
            self.with_rx(|rx| {
                // The ring's bytes seen before the records are looked at (see
                // `Conn::ring_seen`).
                Self::ring_seen(rx);
                if self.anc_pending() {
                    return Transfer::peeked(after_mut(bufs, total, |rest| self.peek_ring_glued(fd, rx, rest, total, flags)));
                }
                after_mut(bufs, total, |rest| rx.peekv_seen(rest))
            })
        };
        // A buffer that faults: the peek ends with the socket's bytes.
        if got.fault {
            0
        } else {
            got.bytes
        }
    }

    /// A peek that took the ring's bytes up to the peer's hand-back (`total` of them, from the
    /// ring's read position): the bytes after them, on the socket behind the peer's last
    /// doorbells, peeked into the rest of `bufs` without taking anything, as the kernel's peek
    /// goes on through its queue. Returns how many (0: none queued, or the ring's part did not
    /// reach the hand-back, or ancillary records are pending).
    fn peek_past_back(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], total: usize) -> usize {
        if self.anc_pending() {
            return 0;
        }
        let (peer, line) = (self.peer_line(), self.my_line());
        // Acquire: pairs with the peer's SeqCst store of `back_at` (its ring writes and its
        // `bells_at` before).
        let back_at = peer.back_at.load(Acquire);
        if back_at == NOT_YET || self.with_rx(|rx| rx.position()).wrapping_add(total as u64) != back_at {
            return 0;
        }
        // SeqCst: as the doorbell counters' other users.
        let owed = peer.bells_at.load(Acquire).saturating_sub(line.bells_drained.load(SeqCst));
        let room: usize = bufs.iter().map(|b| b.len()).sum::<usize>() - total;
        if owed > crate::wait::MAX_OWED_DOORBELLS {
            return 0;
        }
        // The kernel's peek stops at an out-of-band mark once it copied something: the ring's
        // bytes here, which the socket does not know of (it would skip the out-of-band byte
        // and peek on; a splice that took those bytes went past the mark: found by the
        // differential test with MSG_OOB, seed 84116). With doorbells before the mark, the
        // socket's own peek stops there.
        if owed == 0 && at_mark(fd) {
            return 0;
        }
        let mut tmp = vec![0u8; owed as usize + room.min(1 << 20)];
        let Ok(k) = crate::sys::recv_raw(fd, &mut tmp, libc::MSG_PEEK | libc::MSG_DONTWAIT) else { return 0 };
        let data = tmp.get(owed as usize..k).unwrap_or(&[]);
        // A buffer that faults: the peek ends with the ring's bytes (the kernel's peek returns
        // what it copied before the message whose copy faulted).
        after_mut(bufs, total, |rest| crate::iov::spread(rest, data).bytes)
    }

    /// The end of a read that found the connection plain (its hand-back done) after `total`
    /// bytes: the rest of `bufs` from the socket with `flags` (the kernel's answer as it is,
    /// control messages to the application's `recvmsg`), if the socket has bytes queued or
    /// the call may wait; an error there (the socket's pending one, or EAGAIN) stays for the
    /// next call, as the kernel's read returns the bytes it has.
    fn rest_from_socket(&self, fd: c_int, bufs: &mut [IoSliceMut<'_>], total: usize, flags: c_int) -> isize {
        // The kernel's read stops at an out-of-band mark once it copied something (found by
        // the differential test).
        if at_mark(fd) {
            return total as isize;
        }
        // (Not a plain peek: it would take the socket's pending error, which stays for the next
        // call, as a read that got bytes leaves it: see `peek_socket`.)
        let probe = self.peek_socket(fd);
        if probe == Err(libc::ECONNRESET) || probe != Ok(1) && flags & libc::MSG_DONTWAIT != 0 {
            return total as isize;
        }
        let got = after_mut(bufs, total, |rest| {
            let mut msg = crate::migrate::msg_over(rest);
            // SAFETY: `msg` describes the caller's live buffers, no control buffer.
            crate::sys::with_errno_kept(|| unsafe { crate::anc::recvmsg_with_ctrl(fd, &mut msg, flags, false) })
        });
        total as isize + got.map_or(0, |n| n as isize)
    }

    /// `recv` into buffers that would fault ([`crate::iov::Range::Faults`]: `NULL`,
    /// `(void*)1`), as the kernel answers it without ever touching them: EFAULT when there are
    /// bytes to copy (they stay unread), otherwise what the call gives with nothing to copy (it
    /// waits, or EAGAIN, EOF, EINTR). `None`: went plain; the caller makes the real call.
    pub fn recv_faulting(&self, fd: c_int, flags: c_int) -> Option<isize> {
        // The probe takes no control messages: the fds of a marker it peeks would be installed
        // and never handed over (the call fails), keeping the passed sockets open for good
        // (found by the differential test with MSG_OOB, seed 91002: the peer's socket, passed
        // to this end, outlived its close).
        crate::anc::forget_ctrl();
        let mut probe = [0u8; 1];
        let n = self.recv(fd, &mut [IoSliceMut::new(&mut probe)], (flags & !libc::MSG_WAITALL) | libc::MSG_PEEK)?;
        Some(if n > 0 { partial_or_errno(0, libc::EFAULT) } else { n })
    }

    /// `send` from buffers that would fault, as the kernel answers it: EPIPE (and SIGPIPE) if
    /// the sending side is shut down, otherwise EFAULT, nothing sent. `None`: went plain.
    pub fn send_faulting(&self, fd: c_int, flags: c_int) -> Option<isize> {
        let n = self.send(fd, &[], flags)?;
        Some(if n < 0 { n } else { partial_or_errno(0, libc::EFAULT) })
    }

    /// `send` semantics for a connection with a segment (blocking sends write everything).
    /// `None`: the connection went plain before anything was sent: the caller makes the real
    /// call.
    pub fn send(&self, fd: c_int, bufs: &[IoSlice<'_>], flags: c_int) -> Option<isize> {
        Some(self.send_inner(fd, bufs, flags)).filter(|&n| n != WENT_PLAIN)
    }

    fn send_inner(&self, fd: c_int, bufs: &[IoSlice<'_>], flags: c_int) -> isize {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let mut total = 0usize;
        let mut backoff = Backoff::new(Waiting::Write);
        backoff.mark_if_long(want);
        loop {
            if self.phase() >= Phase::HandingBack {
                // This end's writes are on the socket again (handing back, or plain).
                return if total == 0 { WENT_PLAIN } else { total as isize };
            }
            if self.send_shut() {
                if total == 0 {
                    raise_sigpipe(flags);
                }
                return partial_or_errno(total, libc::EPIPE);
            }
            if total == want {
                return total as isize;
            }
            if !self.writes_ring() {
                match after(bufs, total, |rest| self.write_socket(fd, rest, flags)) {
                    SockWrite::Sent(n) => total += n,
                    SockWrite::OnRing => {}
                    SockWrite::Full => {
                        if self.would_block_is_error(flags) {
                            return partial_or_errno(total, libc::EAGAIN);
                        }
                        let deadline = backoff.deadline(fd);
                        if deadline.expired() {
                            return partial_or_errno(total, libc::EAGAIN);
                        }
                        if backoff.interrupted(fd, total > 0) {
                            return partial_or_errno(total, libc::EINTR);
                        }
                        if let Err(e) = self.sleep_for_socket_room(fd, deadline) {
                            return partial_or_errno(total, e);
                        }
                    }
                    SockWrite::Err(libc::EPIPE) => {
                        if total == 0 {
                            raise_sigpipe(flags);
                        }
                        return partial_or_errno(total, libc::EPIPE);
                    }
                    SockWrite::Err(e) => return partial_or_errno(total, e),
                    SockWrite::GaveUp => {
                        self.give_up(GiveUp::SwitchRefused);
                    }
                }
                continue;
            }
            let put = self.with_tx(|tx| {
                // Relaxed: stored under this lock by a hand-back of another thread; nothing
                // may go on the ring past it (the reader stops there).
                if self.my_line().back_at.load(Relaxed) != NOT_YET {
                    return Transfer::default();
                }
                after(bufs, total, |rest| tx.writev(rest))
            });
            if put.wake_peer {
                self.ring_doorbell(fd);
            }
            if put.fault {
                // The caller's buffer ran into a bad page: nothing of this transfer was
                // published, as the kernel drops a message whose copy faulted; EFAULT unless
                // bytes were sent before (see `crate::iov`).
                return partial_or_errno(total, libc::EFAULT);
            }
            total += put.bytes;
            if put.bytes > 0 {
                backoff.progress();
                continue;
            }
            if self.phase() == Phase::Active && self.peer_handed_back() {
                // The peer went back to the socket: follow (the loop's top then sends the
                // rest through the kernel).
                self.hand_back(fd);
                continue;
            }
            if self.my_line().back_at.load(Relaxed) != NOT_YET {
                // Handed back already (by another thread, or by the image before an exec):
                // make sure the phase says so, and the loop's top sends through the kernel.
                self.hand_back(fd);
                continue;
            }
            if self.would_block_is_error(flags) {
                if self.peer_died(fd) {
                    continue; // EPIPE, as the kernel reports a dead peer
                }
                return partial_or_errno(total, libc::EAGAIN);
            }
            let waited =
                backoff.idle(self, fd, total > 0, || self.with_tx(|tx| tx.announce_sleep()), || self.with_tx(|tx| tx.withdraw_sleep()));
            if let Err(e) = waited {
                return partial_or_errno(total, e.errno());
            }
        }
    }

    /// `sendfile` into this connection. The kernel reads the input, with all of its checks and
    /// offset rules (the caller's `*offset`, or the file's position, moved by what it read):
    /// `sendfile` into a private pipe, at most 64 KiB a round; the hook sends what it read
    /// through [`Conn::send`], and moves the offset back by what the socket did not take (a
    /// non-blocking socket with a full ring, a timeout), as the kernel's own sendfile does.
    /// `None`: the connection went plain before anything was read (the caller makes the real
    /// call).
    ///
    /// # Safety
    /// `offset` is null or valid for reads and writes (the kernel checks it first).
    pub unsafe fn sendfile(&self, fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: usize) -> Option<isize> {
        if let Some(e) = stream_input_refused(in_fd, !offset.is_null()) {
            return Some(partial_or_errno(0, e));
        }
        let scratch = match crate::splice::Scratch::new() {
            Ok(s) => s,
            Err(e) => return Some(partial_or_errno(0, e)),
        };
        // Moves the input's offset back by `k` bytes it read and nobody sent.
        let rewind = |k: usize| {
            // SAFETY: per the contract (the kernel just read and wrote it).
            match unsafe { offset.as_mut() } {
                Some(at) => *at -= k as libc::off_t,
                None => {
                    let _ = tssx_shm::sys::lseek(in_fd, -(k as i64), libc::SEEK_CUR);
                }
            }
        };
        let mut buf = vec![0u8; count.clamp(1, 64 * 1024)];
        let mut sent = 0usize;
        loop {
            let want = (count - sent).min(buf.len());
            // SAFETY: the caller's offset (null or valid, the kernel checks it); no other memory.
            let read = unsafe {
                tssx_shm::sys::syscall(libc::SYS_sendfile, [scratch.writer() as usize, in_fd as usize, offset as usize, want, 0, 0])
            };
            let n = match read {
                Ok(0) => break, // EOF, or a count of 0
                Ok(n) => n,
                Err(e) => return Some(partial_or_errno(sent, e.0)),
            };
            let n = scratch.read_into(&mut buf[..n]);
            let put = match self.send(fd, &[IoSlice::new(&buf[..n])], 0) {
                Some(put) => put,
                None => {
                    // Went plain meanwhile: the rest through the kernel, from where it was.
                    rewind(n);
                    // SAFETY: the caller's arguments.
                    let rest = unsafe { crate::sys::sendfile(fd, in_fd, offset, count - sent) };
                    return Some(if rest >= 0 {
                        (sent + rest as usize) as isize
                    } else if sent > 0 {
                        sent as isize
                    } else {
                        -1
                    });
                }
            };
            if put < 0 {
                rewind(n);
                return Some(if sent > 0 { sent as isize } else { put });
            }
            sent += put as usize;
            if (put as usize) < n {
                rewind(n - put as usize);
                break;
            }
            if sent == count {
                break;
            }
        }
        Some(sent as isize)
    }

    /// Whether this end writes to its ring now.
    #[inline]
    pub(crate) fn writes_ring(&self) -> bool {
        match self.phase() {
            Phase::Active => true,
            _ => self.out_switched(),
        }
    }

    /// `shutdown(fd, how)` on a connection with a segment: recorded in the header (see
    /// [`crate::conn`]); wakes the peer if it sleeps. Returns the call's result, or `None` if
    /// the migration was not committed yet and is given up instead: the caller makes the real
    /// call on what is a plain socket again (a peer that is not ready yet reads the socket, not
    /// the header).
    pub fn shutdown(&self, fd: c_int, how: c_int) -> Option<c_int> {
        // (Not once handing back: the segment's state is `Plain` when the hand-back is done
        // in any process, but a process forked before may still read this end's shutdowns in
        // the header. Found by the differential test with MSG_OOB, seed 88071: after a child
        // handed back, its `SHUT_WR` never reached its parent's peer.)
        if self.phase() < Phase::Active && self.abandon(GiveUp::Shutdown) {
            return None;
        }
        let rc = self.shutdown_in_header(fd, how);
        // SeqCst: after the SeqCst `fetch_or` of the bits (see `Conn::shutdown_socket`).
        if rc == 0 && self.my_line().back_at.load(SeqCst) != NOT_YET {
            // This end's direction is back on the socket (handing back): the shutdown must
            // be the socket's too; the caller makes the real call.
            return None;
        }
        if rc == 0 && how != libc::SHUT_WR && self.peer_handed_back() {
            // The peer writes to the socket since its hand-back: its sends must fail there too
            // (SHUT_RD here shuts them in the kernel). Only that half: a SHUT_WR on the socket
            // would show the peer an EOF it takes for this end's death. Found by the
            // differential test (MSG_OOB, then the other end's shutdown).
            // SAFETY: the real `shutdown` on this connection's socket; no pointers.
            crate::sys::with_errno_kept(|| unsafe { crate::sys::shutdown(fd, libc::SHUT_RD) });
        }
        if rc == 0 && self.shut_both_ways(self.end) {
            // Shut both ways: no byte goes onto either ring any more (the peer's writes fail,
            // this end's too), so the socket has no doorbell left to carry, and the kernel's
            // shutdown of it wakes every thread asleep on this end (in `poll`, a read or
            // `epoll_wait` on the socket) and on the peer's, as a plain shutdown does. The
            // header alone rings only the peer's sleepers: MariaDB's KILL, which shuts the
            // victim session's socket while that session's thread sleeps in `poll` on it,
            // never ended the session (conformance `localshut`). Their next look finds the
            // socket's EOF explained by the header (`Conn::note_eof`) and the rings' last
            // bytes still readable.
            // SAFETY: the real `shutdown` on this connection's socket; no pointers.
            crate::sys::with_errno_kept(|| unsafe { crate::sys::shutdown(fd, libc::SHUT_RDWR) });
        }
        Some(rc)
    }

    fn shutdown_in_header(&self, fd: c_int, how: c_int) -> c_int {
        let Some(bits) = Conn::shut_bits_of(how) else {
            set_errno(libc::EINVAL);
            return -1;
        };
        // SeqCst: ordered with the fence in `wake_peer` (and the peer's announcement).
        self.header().shut.0[self.end.index()].fetch_or(bits, SeqCst);
        self.wake_peer(fd);
        0
    }
}

/// Whether the socket's next byte is the out-of-band mark (`SIOCATMARK`; errno kept).
fn at_mark(fd: c_int) -> bool {
    let mut at: c_int = 0;
    // SAFETY: SIOCATMARK writes one int into a live local.
    crate::sys::with_errno_kept(|| unsafe { crate::sys::ioctl(fd, crate::calls::SIOCATMARK, (&raw mut at).cast()) }) == 0 && at != 0
}
