//! Handing a connection back to the kernel: the migration in reverse, for the whole connection.
//!
//! An end that must give the connection back (a call the rings cannot serve, such as `send`
//! with `MSG_OOB`, or `SO_PASSCRED`) does, under its producer lock: store how many doorbells it
//! ever sent, counting one last one (`bells_at`), then its ring head (`back_at`), then ring that
//! last doorbell (so a peer asleep on the rings wakes and sees the hand-back). From then on it
//! writes to the socket and never sends a doorbell again. Its peer, on its next call (or woken by that doorbell), does the same
//! for its own direction.
//!
//! A reader then reads, in stream order: the socket up to the peer's `switch_at` (if it had not
//! consumed it yet), the ring up to the peer's `back_at`, exactly `bells_at - bells_drained`
//! doorbell bytes (they are all in the socket already: sent before `bells_at` was stored), and
//! the socket from there on. When both directions are done, the connection is plain for good
//! ([`Phase::Plain`]): every call goes to the kernel again, and epoll registrations go back to
//! the application's.

use std::{
    io::IoSliceMut,
    sync::atomic::Ordering::{Acquire, Relaxed, SeqCst},
};

use libc::c_int;
use tssx_common::segment::{GiveUp, SegmentState, NOT_YET, SHUT_READ, SHUT_WRITE};
use tssx_shm::{ring::Transfer, wait::sleeper_announced};

use crate::{
    conn::{bits, Conn, Phase},
    sys,
};

/// Where a reader of a connection being handed back takes its next bytes from.
pub(crate) enum Source {
    /// The socket, up to the peer's switch position (data written before it switched).
    SocketBeforeSwitch,
    /// The ring (the peer has not handed back yet, or its ring is not drained up to `back_at`).
    Ring,
    /// The socket, all of it (doorbells skipped): this direction is plain.
    Socket,
}

impl Conn {
    /// Before a call that only the real socket can serve (`send(MSG_OOB)`): a connection that
    /// is not ready yet stays plain for good (a raw call the hook cannot count, such as an
    /// out-of-band byte, would make its byte positions wrong); a ready one hands this end's
    /// direction back ([`Conn::hand_back`]). Never waits.
    pub fn leave_rings(&self, fd: c_int) {
        match self.phase() {
            Phase::Plain | Phase::Unconnected => {}
            phase if phase < Phase::Ready => {
                self.give_up(GiveUp::HandedBack);
            }
            _ => {
                self.note_fd(fd);
                self.hand_back(fd);
            }
        }
    }

    /// `ioctl(SIOCATMARK)`: whether the next byte to read is the peer's out-of-band mark.
    /// `None`: the kernel answers (the connection is plain, or its reads go to the socket
    /// as they are). An out-of-band byte only ever travels through the kernel, sent by a peer
    /// that handed its direction back first: until then there is no mark (false); after, this
    /// end follows, and once the ring and the last doorbells are drained the connection is
    /// plain and the kernel answers; bytes still on the ring come before the mark (false).
    pub fn at_mark(&self, fd: c_int) -> Option<bool> {
        let phase = self.phase();
        if phase.is_raw() {
            return None;
        }
        if !self.peer_handed_back() {
            return Some(false);
        }
        self.note_fd(fd);
        if phase < Phase::HandingBack {
            self.hand_back(fd);
        }
        if self.finish_hand_back() {
            return None;
        }
        Some(false)
    }

    /// `POLLPRI` (= `EPOLLPRI`) if an out-of-band byte waits, else 0. One only ever travels
    /// through the kernel, after the peer's hand-back (see [`Conn::leave_rings`]): until then
    /// there is none and no system call is made; after, the kernel says.
    pub fn urgent(&self, fd: c_int) -> u32 {
        if !self.peer_handed_back() {
            return 0;
        }
        let mut p = libc::pollfd { fd, events: libc::POLLPRI, revents: 0 };
        // SAFETY: one live pollfd, no wait; the application's errno is kept.
        if sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, 0) }) > 0 {
            (p.revents & libc::POLLPRI) as u32
        } else {
            0
        }
    }

    /// Hands this end's direction back to the socket (see the module documentation). Never
    /// waits. A connection whose migration was not committed yet is simply given up.
    pub fn hand_back(&self, fd: c_int) {
        let phase = self.phase();
        if self.swap().is_none() || phase == Phase::Plain {
            return;
        }
        if phase < Phase::Ready {
            // Plain until now: stays plain (a raw call's bytes would not be counted).
            self.give_up(GiveUp::HandedBack);
            return;
        }
        if self.seg().segment.state() == Some(SegmentState::Pending) && self.abandon(GiveUp::HandedBack) {
            return;
        }
        let stored = self.with_tx(|tx| {
            let line = self.my_line();
            if line.back_at.load(Relaxed) != NOT_YET {
                return false;
            }
            if !self.out_switched() {
                // Never switched: everything this end wrote is on the socket already.
                // Relaxed: published by the SeqCst store of `back_at`.
                line.bells_at.store(line.bells_sent.load(Relaxed), Relaxed);
                line.back_at.store(0, SeqCst);
                return true;
            }
            // SeqCst: pairs with the reader's SeqCst store, made before its own `back_at`
            // (which this hand-back may be answering).
            let asked = self.peer_line().replay_from.load(SeqCst);
            if asked != 0 {
                let from = asked - 1;
                let head = tx.position();
                if from <= head && head - from <= tx.capacity() as u64 {
                    // The reader stopped reading the ring at `from` and reads the socket from
                    // now on (an image without the hook): no last doorbell (nobody sleeps on
                    // the ring there), and the ring's bytes from `from` go on the socket first.
                    // Relaxed: published by the SeqCst store of `back_at`.
                    line.bells_at.store(line.bells_sent.load(Relaxed), Relaxed);
                    line.back_at.store(from, SeqCst);
                    replay(tx, fd, from, head);
                    return true;
                }
            }
            // SeqCst: pairs with the peer's SeqCst store of its `back_at`; `sleeper_announced`
            // fences before it loads the peer's announcements.
            if self.peer_line().back_at.load(SeqCst) != NOT_YET && !sleeper_announced(&self.header().asleep.0[self.end.peer().index()]) {
                // The peer handed back first and none of its threads sleeps: no last doorbell.
                // Its writes are on the socket already (a writer still waiting for room on its
                // ring announced its sleep, and gets the doorbell below; one of another thread
                // that announces later polls: see `Conn::is_shared`), and a reader of this ring
                // that sleeps later wakes on what this end sends on the socket from now on (its
                // data, or EOF). And the peer may be closing (a close hands back when another
                // process seems to hold its end: `epoll::fd_closing`), its doorbells drained:
                // a byte left unread in its socket would make the kernel reset this end, whose
                // read got ECONNRESET instead of EOF (conformance `share fork-epoll`, swapped).
                // Relaxed: published by the SeqCst store of `back_at`.
                line.bells_at.store(line.bells_sent.load(Relaxed), Relaxed);
                line.back_at.store(tx.position(), SeqCst);
                return true;
            }
            // The last doorbell, counted (SeqCst, as every doorbell) and published with
            // `back_at` before it is sent: a peer it wakes sees the hand-back (sent first, the
            // peer could wake, find nothing new and sleep again before `back_at` is stored,
            // with nothing left to wake it when no data follows).
            // Wrapping: the count is the peer's to overwrite (a panic here would be its doing).
            let bells = line.bells_sent.fetch_add(1, SeqCst).wrapping_add(1);
            // Relaxed: published by the SeqCst store of `back_at` below.
            line.bells_at.store(bells, Relaxed);
            line.back_at.store(tx.position(), SeqCst);
            if sys::send_raw(fd, &[0u8], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL).is_err() {
                // Not sent (the socket is full, or the peer is gone): the counts published
                // above are one too many. A reader re-loads `bells_at` each time it drains, and
                // this end sends no data before this returns.
                line.bells_sent.fetch_sub(1, SeqCst);
                line.bells_at.fetch_sub(1, SeqCst);
            }
            true
        });
        if stored {
            // Outside the ring lock: the real call never re-enters the hook.
            sys::with_errno_kept(|| self.shutdown_socket(fd));
        }
        if self.phase() != Phase::Plain {
            self.set_phase(Phase::HandingBack);
        }
        self.finish_hand_back();
    }

    /// Before an image without the hook takes over this end's reads (it reads the socket
    /// only): stops reading the peer's ring at the current position and asks the peer to send
    /// what is on it from there on the socket when it hands back (see
    /// [`tssx_common::segment::EndLine::replay_from`]). Readers of this process stop at that
    /// position too ([`Conn::read_ring_until_back`]). Call before [`Conn::hand_back`]; does
    /// nothing if the peer handed back already (its `back_at` stands).
    pub(crate) fn ask_replay(&self) {
        if self.swap().is_none() || !self.in_switched() || self.peer_handed_back() {
            return;
        }
        // The new image reads the socket: no marker may be left in it (their fds are closed,
        // as by a read without a control buffer).
        self.discard_markers(self.last_fd.load(Relaxed));
        self.with_rx(|rx| {
            // SeqCst: before this end's `back_at` (SeqCst, in `hand_back`), which the peer
            // loads before it loads this.
            self.my_line().replay_from.store(rx.position().wrapping_add(1), SeqCst);
        });
    }

    /// Takes back a replay [`Conn::ask_replay`] asked for that the peer did not make (it had
    /// handed back on its own, or it has not answered yet): this process reads the ring up to
    /// the peer's `back_at` again.
    pub(crate) fn drop_replay(&self) {
        let asked = self.my_line().replay_from.load(SeqCst);
        if asked != 0 && self.peer_line().back_at.load(SeqCst) != asked - 1 {
            self.my_line().replay_from.store(0, SeqCst);
        }
    }

    /// Carries this end's `shutdown`s, recorded in the header while on the rings, over to the
    /// real socket once this end's direction is back on it (its [`EndLine::back_at`] is
    /// stored), so that a peer reading the socket sees EOF after the bytes, and a write after
    /// `SHUT_WR` fails there. Called after `back_at` is stored (by [`Conn::hand_back`]) and by a
    /// `shutdown` after it (see [`Conn::shutdown`]); never under a ring lock, and through the
    /// real `shutdown` (libc's, not the hook's), so it cannot re-enter the hook.
    ///
    /// [`EndLine::back_at`]: tssx_common::segment::EndLine::back_at
    pub(crate) fn shutdown_socket(&self, fd: c_int) {
        // SeqCst: ordered against a concurrent `shutdown`'s SeqCst `fetch_or` and its SeqCst
        // load of `back_at` (after our SeqCst store of it): one of the two applies the bits.
        let mut bits = self.header().shut.0[self.end.index()].load(SeqCst);
        // The peer's `SHUT_RD` shuts this end's sends in the kernel (`unix_shutdown` sets both
        // sockets' bits): this end's `SHUT_WR` sets the same two bits. Without it, a send that
        // goes to the socket right after the hand-back (`MSG_OOB`) would succeed before the
        // peer's own hand-back carries its bits over (found by the differential test).
        if self.shut_bits(self.end.peer()) & SHUT_READ != 0 {
            bits |= SHUT_WRITE;
        }
        let how = match (bits & SHUT_READ != 0, bits & SHUT_WRITE != 0) {
            (false, false) => return,
            (true, false) => libc::SHUT_RD,
            (false, true) => libc::SHUT_WR,
            (true, true) => libc::SHUT_RDWR,
        };
        if fd >= 0 {
            // SAFETY: the real `shutdown` on this connection's socket; no pointers.
            unsafe { sys::shutdown(fd, how) };
        }
    }

    /// A `shutdown` of an end already plain after its hand-back (its calls go to the kernel),
    /// before the real call: recorded in the header too, for a peer still handing back (bytes
    /// of this end's left on its ring), which reads its readiness from the header and takes
    /// the socket's EOF for this end's close unless the header explains it
    /// ([`Conn::note_eof`]). Without it, the peer reported `POLLHUP` after this end's
    /// `SHUT_WR` (found by the differential test with `MSG_OOB`, seeds 90232 and 90361).
    /// Nothing for a connection that never handed back (plain before it was ready: no peer
    /// reads the header), nor for a bad `how` (the real call fails).
    pub(crate) fn note_plain_shutdown(&self, how: c_int) {
        if self.phase() != Phase::Plain || self.swap().is_none() {
            return;
        }
        // SeqCst: as every `back_at` load and store (see `hand_back`).
        if self.my_line().back_at.load(SeqCst) == NOT_YET {
            return;
        }
        let Some(bits) = Conn::shut_bits_of(how) else { return };
        // SeqCst: as the bits' other stores (`Conn::shutdown`), and before the real call: a
        // peer that finds the socket's EOF loads the bits after it, and sees them.
        self.header().shut.0[self.end.index()].fetch_or(bits, SeqCst);
    }

    /// Whether the peer handed its direction back (this end then follows).
    #[inline]
    pub(crate) fn peer_handed_back(&self) -> bool {
        // Relaxed: a hint on the hot path; `read_source` loads it again with Acquire.
        self.peer_line().back_at.load(Relaxed) != NOT_YET
    }

    /// Where the next incoming bytes come from while handing back.
    pub(crate) fn read_source(&self) -> Source {
        let peer = self.peer_line();
        // Acquire: pairs with the peer's SeqCst store of `switch_at`.
        let switch_at = peer.switch_at.load(Acquire);
        if switch_at == NOT_YET {
            // The peer never wrote to its ring: the socket has its data and no doorbells.
            return Source::Socket;
        }
        // Acquire: pairs with the peer's SeqCst store of `back_at` (its ring writes before).
        let back_at = peer.back_at.load(Acquire);
        let ring = &self.header().rings[self.end.peer().index()];
        let tail = ring.consumer.0.tail.load(Acquire);
        if self.my_line().sock_read.load(Acquire) < switch_at {
            if back_at != NOT_YET && back_at <= tail && self.nothing_behind_socket_data() {
                // The peer handed back with nothing on its ring for this end (it switched,
                // then wrote nothing there) and no doorbell or marker owed: the socket holds the
                // rest of the stream as a plain one would, its bytes before the switch first,
                // and the connection can go plain now. (Else an end that handed back while
                // ready, for an io_uring, never finished: the io_uring reads those bytes past
                // the hook, which never counts them. Found by the conformance scenario
                // `io_uring_set_up_while_swapped_hands_back`, migrating: the server then
                // waited in `poll` for good.)
                return Source::Socket;
            }
            return Source::SocketBeforeSwitch;
        }
        if back_at == NOT_YET {
            return Source::Ring;
        }
        // Acquire: the peer's head, published before its `back_at`, which it never exceeds
        // (a `back_at` beyond it is a lie: nothing more can come from the ring).
        let head = ring.producer.0.head.load(Acquire);
        if tail < back_at && back_at - tail <= self.seg().segment.ring_capacity() as u64 && back_at <= head {
            return Source::Ring;
        }
        Source::Socket
    }

    /// Whether nothing of the peer's but data follows in the socket, once it handed back: no
    /// doorbell it counted that this end has not drained, and no ancillary record pending
    /// (its marker would be in the socket).
    fn nothing_behind_socket_data(&self) -> bool {
        // Acquire: published by the peer's `back_at`, loaded before (see `read_source`).
        let bells_at = self.peer_line().bells_at.load(Acquire);
        // SeqCst: as every load of the drained count.
        bells_at <= self.my_line().bells_drained.load(SeqCst) && !self.anc_pending()
    }

    /// Skips the doorbells the peer sent before it handed back (all in the socket already).
    /// True when none is left.
    pub(crate) fn skip_last_doorbells(&self, fd: c_int) -> bool {
        let peer = self.peer_line();
        let drained = &self.my_line().bells_drained;
        let mut buf = [0u8; 64];
        loop {
            // Acquire: published by the peer's `back_at`, loaded before (see `read_source`).
            let owed = peer.bells_at.load(Acquire).saturating_sub(drained.load(SeqCst));
            // More than a socket can hold is a lie of the peer's: skip no more (what follows is
            // read as data: garbage, and no loop as long as the peer keeps the socket full).
            if owed == 0 || owed > crate::wait::MAX_OWED_DOORBELLS {
                return true;
            }
            // A pending ancillary record's marker comes first: its reader takes it (see `anc`).
            let owed = owed.min(self.anc_bell_bound().saturating_sub(drained.load(SeqCst)));
            if owed == 0 {
                return false;
            }
            let take = owed.min(buf.len() as u64) as usize;
            let before = drained.load(SeqCst);
            if drained.compare_exchange(before, before.wrapping_add(take as u64), SeqCst, SeqCst).is_err() {
                continue;
            }
            match sys::recv_raw(fd, &mut buf[..take], libc::MSG_DONTWAIT) {
                Ok(n) if n > 0 => {
                    if n < take {
                        drained.fetch_sub((take - n) as u64, SeqCst);
                    }
                }
                _ => {
                    drained.fetch_sub(take as u64, SeqCst);
                    match sys::recv_raw(fd, &mut buf[..1], libc::MSG_PEEK | libc::MSG_DONTWAIT) {
                        // The peer counts a doorbell before it sends it: the byte arrived
                        // between the two calls. Drain it (taken for EOF, it would reach the
                        // application as a data byte once the connection is plain).
                        Ok(n) if n > 0 => continue,
                        // Counted, not sent yet: not done.
                        Err(libc::EAGAIN) => return false,
                        // EOF, or an error: the direction is over either way.
                        _ => return true,
                    }
                }
            }
        }
    }

    /// Once both directions are back on the socket and nothing of the peer's is left on the
    /// ring or in doorbells: plain for good.
    pub(crate) fn finish_hand_back(&self) -> bool {
        if self.phase() != Phase::HandingBack || !self.peer_handed_back() {
            return self.phase() == Phase::Plain;
        }
        let fd = self.last_fd.load(Relaxed);
        if !matches!(self.read_source(), Source::Socket) || fd < 0 || !self.skip_last_doorbells(fd) {
            return false;
        }
        self.set_phase(Phase::Plain);
        self.rings_over();
        true
    }

    /// This end is plain: if the peer has read this end's ring up to this end's `back_at` too,
    /// both rings are drained and the segment's state goes `Active -> Plain` (the agent traces
    /// the hand-back and frees its copy; each end keeps its own mapping). Of the two ends, the
    /// one that finishes last sees the other's drain done; a peer still draining does it when
    /// it finishes. The hooks never look at the state once both ends handed back.
    fn rings_over(&self) {
        // Acquire: pairs with this end's SeqCst store of `back_at` (another thread of it).
        let back_at = self.my_line().back_at.load(Acquire);
        // Acquire: the peer's consumer position of this end's ring (it may lie: then the
        // agent frees its copy early, which changes nothing for the ends).
        let tail = self.header().rings[self.end.index()].consumer.0.tail.load(Acquire);
        if back_at != NOT_YET && tail >= back_at {
            let _ = self.seg().segment.transition(SegmentState::Active, SegmentState::Plain);
        }
    }

    /// Readiness of a connection handing back ([`Conn::readiness`]): once the peer's ring
    /// bytes are all read, the connection finishes going plain here (skipping the peer's last
    /// doorbells, as a read would) and the kernel answers; before, incoming data is what the
    /// ring holds (the peer's bytes after it come later in the stream), and room to write is
    /// the socket's (this end writes there again).
    pub(crate) fn handing_back_readiness(&self, fd: c_int) -> u32 {
        self.note_fd(fd);
        // (Every bit the kernel reports for a socket's room: POLLWRNORM and POLLWRBAND come
        // only when asked. Found by the differential test.)
        let events = libc::POLLIN | libc::POLLRDNORM | libc::POLLOUT | libc::POLLWRNORM | libc::POLLWRBAND | libc::POLLRDHUP;
        let mut p = libc::pollfd { fd, events, revents: 0 };
        if sys::with_errno_kept(|| self.finish_hand_back()) {
            // SAFETY: one live pollfd, no wait; the application's errno is kept.
            sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, 0) });
            return p.revents as u32;
        }
        let ready = self.ring_readiness();
        // SAFETY: as above.
        sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, 0) });
        let sock = p.revents as u32;
        // Bytes the peer wrote to the socket before its switch (or before it handed back,
        // never switched), not read yet, come first in the stream, and a read takes them from
        // the socket: readable as the socket says, the ring empty or not (found by the
        // conformance scenario `io_uring_set_up_while_swapped_hands_back`, migrating: a poll
        // waited for good on bytes a read would have returned).
        let before_switch = if self.reads_ring() { 0 } else { sock & bits::IN };
        let mut ready = (ready & !bits::OUT) | (sock & bits::OUT) | before_switch;
        if sock & bits::HUP != 0 {
            // A peer already plain closes on the socket only (`Conn::leave` leaves the header
            // alone then): the kernel's hang-up, and its error if the peer left bytes unread
            // (ECONNRESET: an out-of-band byte it read past), are the answer, as for a plain
            // pair, with this end's ring bytes still to read (found by the differential test
            // with `MSG_OOB`, seed 90303). The socket never hangs up before the header does
            // otherwise: a shutdown recorded there goes to the socket once its end's direction
            // is back on it, both ways only when both are recorded.
            ready |= sock & (bits::HUP | bits::ERR) | bits::RDHUP | bits::IN;
        }
        ready
    }

    /// The ring part of a read while handing back: reads at most up to the peer's `back_at`.
    /// The bytes read (no doorbell owed; `fault`: the caller's buffer faulted before a byte was
    /// read), and whether the read took a marker's control messages (it ends there).
    /// `flags`: the caller's (MSG_CMSG_CLOEXEC for the fds of a marker taken on the way).
    pub(crate) fn read_ring_until_back(&self, bufs: &mut [IoSliceMut<'_>], peek: bool, flags: libc::c_int) -> (Transfer, bool) {
        let back_at = self.peer_line().back_at.load(Acquire);
        self.with_rx(|rx| {
            let tail = rx.position();
            // A replay asked of the peer ends this process's ring reads where it stopped.
            let back_at = match self.my_line().replay_from.load(SeqCst) {
                0 => back_at,
                asked => back_at.min(asked - 1),
            };
            let limit = if back_at == NOT_YET { usize::MAX } else { back_at.saturating_sub(tail).min(usize::MAX as u64) as usize };
            // Only the bytes seen before the records are looked at (see `Conn::ring_seen`).
            let limit = limit.min(rx.available());
            if limit == 0 {
                return (Transfer::default(), false);
            }
            let fd = self.last_fd.load(Relaxed);
            if fd >= 0 && self.anc_pending() {
                // Ancillary records before `back_at`: their markers are taken on the way.
                // (The caller's flags: MSG_CMSG_CLOEXEC was dropped here, found by the
                // differential test.)
                let (got, ends) = self.read_ring_anc(fd, rx, bufs, peek, flags, limit);
                return (Transfer { wake_peer: false, ..got }, ends);
            }
            if peek && bufs.len() > 1 {
                // A peek always starts at the read position: into one buffer, then spread over
                // the caller's (a peek filled only the first of several: found by the
                // differential test).
                let room: usize = bufs.iter().map(|b| b.len()).sum();
                let mut tmp = vec![0u8; room.min(limit)];
                // (`tmp` is ours: the peek cannot fault; the spread can.)
                let n = rx.peek(&mut tmp).bytes;
                return (crate::iov::spread(bufs, &tmp[..n]), false);
            }
            let mut left = limit;
            let mut total = 0;
            for buf in bufs.iter_mut() {
                if left == 0 {
                    break;
                }
                let k = buf.len().min(left);
                // No doorbell for the room made: this end sends none any more (the peer, woken
                // by the last one, hands back instead of waiting for room).
                let got = if peek { rx.peek(&mut buf[..k]) } else { rx.read(&mut buf[..k]) };
                if got.fault {
                    return (if total == 0 { Transfer::FAULT } else { Transfer::peeked(total) }, false);
                }
                let n = got.bytes;
                total += n;
                left -= n;
                if n < k || peek {
                    break;
                }
            }
            (Transfer::peeked(total), false)
        })
    }
}

/// Sends the ring's bytes `from..head` on the socket (under the producer lock, before anything
/// else this end writes), waiting for room as a blocking write would; stops if the reader is
/// gone.
fn replay(tx: &tssx_shm::ring::Producer, fd: c_int, from: u64, head: u64) {
    let mut buf = [0u8; 4096];
    let mut at = from;
    while at < head {
        let n = tx.copy_unread(at, &mut buf[..(head - at).min(4096) as usize]);
        if n == 0 {
            return;
        }
        let mut sent = 0;
        while sent < n {
            match sys::send_raw(fd, &buf[sent..n], libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) {
                Ok(k) => sent += k,
                Err(libc::EAGAIN) | Err(libc::EINTR) => {
                    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                    // SAFETY: one live pollfd.
                    unsafe { sys::poll(&mut p, 1, 100) };
                }
                Err(_) => return,
            }
        }
        at += n as u64;
    }
}
