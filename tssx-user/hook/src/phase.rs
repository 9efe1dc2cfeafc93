//! Driving a connection through its [`Phase`]s, one cheap step per call.
//!
//! Every hook call on a tracked socket that is not on the rings yet calls [`Conn::tick`] before
//! and after its own work. A tick never waits: it sends the claim once the connection has shown
//! it is worth one ([`CLAIM_AFTER_NS`] with [`CLAIM_AFTER_TURNS`] or [`CLAIM_AFTER_CALLS`],
//! or [`CLAIM_AFTER_BYTES`]), looks for the agent's answer with
//! a back-off, maps the segment, and moves the end to ready as soon as nothing of this process
//! is inside the kernel on the socket. So a connection that never gets a segment (no agent, a
//! peer without the hook or that talks to the socket from inside libc, a short connection)
//! costs a few loads per call, and one clock read per call only once it has turned into a
//! conversation.
//!
//! # Raw calls and quiescence
//!
//! While the connection is plain, the application's calls go to the kernel as they are
//! ([`RawCall`]), and two things must hold when this end becomes ready: the byte counts are
//! final, and no thread sleeps in the kernel on the socket without having announced it (a
//! doorbell would then be read as data, or nobody would ring one). A raw call enters with
//! `raw += 1` and leaves with `raw -= 1`; the end becomes ready only by a compare-and-swap of
//! `raw` from 0 to [`QUIESCED`], after which every raw call backs off to the hook's own path.
//! Threads waiting in `epoll_wait` on an instance the socket is registered in count too (see
//! [`crate::epoll::gate_close`]). Both are `SeqCst`: a call either is counted before the swap
//! (which then fails and is retried later) or sees `QUIESCED`.

use std::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Relaxed, Release, SeqCst},
};

use libc::c_int;
use tssx_common::{
    control::Role,
    segment::{End, GiveUp, SegmentState, JOIN_MAPPED, JOIN_REFUSED, NOT_YET},
};
use tssx_shm::segment::Segment;

use crate::{
    claim::{self, Answer},
    conn::{Conn, Phase, Swap, QUIESCED},
    epoll,
    own::OwnFd,
    spin::now_ns,
    sys::{self, Fd},
};

/// A connection is worth a segment once it has lived this long (ns; the agent may publish
/// another value, see `tssx-agent --claim-after`) and this end has seen it turn from one
/// direction to the other [`CLAIM_AFTER_TURNS`] times or moved data in
/// [`CLAIM_AFTER_CALLS`] calls...
pub const CLAIM_AFTER_NS: u64 = 1_000_000;
/// ... or once it moved this many bytes in either direction, whatever its age.
pub const CLAIM_AFTER_BYTES: u64 = 64 * 1024;
/// Direction changes (a read with data after a write with data, or the reverse) that show a
/// connection is a conversation, not one request and its answer: 2 means a second request
/// (or the answer to it) is under way. A connection opened per request (nginx's default
/// upstream, an HTTP/1.0 client, nscd with `shared no`) makes one turn at each end and is
/// never claimed, however long a busy machine keeps it open; a keep-alive connection claims
/// at its second exchange.
pub const CLAIM_AFTER_TURNS: u32 = 2;
/// Calls that moved data, for one-way traffic that never turns (a log or event stream).
pub const CLAIM_AFTER_CALLS: u32 = 16;

/// The [`Conn::activity`] word: the direction of the last call that moved data (bits 0-1:
/// 0 none yet, 1 in, 2 out), the direction changes since (bits 2-9) and the calls that moved
/// data (bits 10-17), both saturating at 255.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Activity(pub u32);

impl Activity {
    const TURN: u32 = 1 << 2;
    const CALL: u32 = 1 << 10;
    const MAX: u32 = 0xff;

    /// Direction changes seen.
    pub fn turns(self) -> u32 {
        self.0 >> 2 & Self::MAX
    }

    /// Calls that moved data.
    pub fn calls(self) -> u32 {
        self.0 >> 10 & Self::MAX
    }

    /// After one more call that moved data (`sending`: a write).
    pub fn after(self, sending: bool) -> Activity {
        let dir = if sending { 2 } else { 1 };
        let last = self.0 & 3;
        let mut word = self.0 & !3 | dir;
        if last != 0 && last != dir && self.turns() < Self::MAX {
            word += Self::TURN;
        }
        if self.calls() < Self::MAX {
            word += Self::CALL;
        }
        Activity(word)
    }

    /// Whether this is a conversation worth a segment once old enough (see
    /// [`CLAIM_AFTER_TURNS`]).
    pub fn worth_a_claim(self) -> bool {
        self.turns() >= CLAIM_AFTER_TURNS || self.calls() >= CLAIM_AFTER_CALLS
    }
}
/// First wait before looking for the agent's answer (one non-blocking `recv` on the control
/// connection, made by a call on the connection): every this long during the first
/// [`ANSWER_CHECK_STEADY_NS`] after the claim (a paired answer usually comes within a few
/// hundred microseconds, and each check that finds it later delays the migration), then
/// doubling up to [`ANSWER_CHECK_MAX_NS`] (a claim whose peer never claims costs a few dozen
/// checks in all).
const ANSWER_CHECK_FIRST_NS: u64 = 50_000;
const ANSWER_CHECK_STEADY_NS: u64 = 5_000_000;
const ANSWER_CHECK_MAX_NS: u64 = 50_000_000;
/// A claim the agent has not answered this long after it was sent is given up (the peer never
/// claimed): the connection stays plain and the control connection is closed. Longer than a
/// peer whose claims the agent dropped in a burst keeps retrying (see [`DROPPED_RETRIES`]); a
/// held claim costs this end a descriptor and a look every 50 ms at most.
const CLAIM_GIVE_UP_NS: u64 = 30_000_000_000;

/// The reason passed to [`Conn::give_up`] before the agent handed this end a segment (no
/// agent, its answer plain, claims dropped, no answer): there is no end line to store it in, so
/// it is never read.
const NO_SEGMENT_YET: GiveUp = GiveUp::Unusable;
/// After a "retry later" answer, the next claim goes out no sooner than this.
const RETRY_AFTER_NS: u64 = 5_000_000;
/// The longest wait between two claims answered "retry later" (another process holds the same
/// end): each such answer doubles the wait from [`RETRY_AFTER_NS`]. A forked parent that
/// closes its copy at once (PostgreSQL's postmaster) costs one retry, as before; a child that
/// keeps its copy for the connection's life (a shell that socat's `SYSTEM:` spawns, an inetd
/// service's helper) cost a claim every 5 ms, each a control connection and a walk of the
/// claimant's relatives' fd tables by the agent, for as long as the connection lived.
const RETRY_MAX_NS: u64 = 1_000_000_000;
/// A claim the agent closed unanswered (it was busy: a burst of claims beyond the control
/// connections it serves at once) is sent again, after `RETRY_AFTER_NS` doubled each time up
/// to [`DROPPED_RETRY_MAX_NS`], at most this many times (about 25 s in all; then plain for
/// good). 10,000 connections that all turn into conversations at once take the agent tens of
/// seconds to pair on a 2-core machine; each retry costs its connection one failed `connect`
/// to the agent.
const DROPPED_RETRIES: u32 = 30;
/// The longest wait between two claims the agent dropped.
const DROPPED_RETRY_MAX_NS: u64 = 1_000_000_000;
/// A segment whose peer has not joined this long after this end mapped it is given up (the
/// agent's own join timeout is as long). A peer joins at its next calls on the connection,
/// which on a loaded machine holding thousands of connections can be seconds away; waiting
/// costs this end nothing but the mapping (the connection stays plain meanwhile).
const JOIN_GIVE_UP_NS: u64 = 10_000_000_000;

/// Whether connections claim segments at all (on by default; tests that hand segments over
/// themselves with [`Conn::join_with`] turn it off). Relaxed: a switch read on every claim.
static CLAIMING: AtomicBool = AtomicBool::new(true);

/// Turns claiming on or off for this process (see [`CLAIMING`]).
pub fn set_claiming(on: bool) {
    CLAIMING.store(on, Relaxed);
}

/// One raw call in flight on a tracked socket (see the module documentation). Built by
/// [`Conn::enter_raw`]; dropping it (after the call returned) leaves.
pub struct RawCall<'a> {
    conn: &'a Conn,
}

impl RawCall<'_> {
    /// The call returned `rc` bytes written (`sending`) or consumed: counted.
    #[inline]
    pub fn moved(&self, rc: isize, sending: bool) {
        if rc > 0 {
            self.conn.counts.add(rc as u64, sending);
            // Relaxed: a hint (see `Conn::activity`); no store once both counts saturated.
            let word = Activity(self.conn.activity.load(Relaxed));
            let next = word.after(sending);
            if next != word {
                self.conn.activity.store(next.0, Relaxed);
            }
        }
    }
}

impl Drop for RawCall<'_> {
    #[inline]
    fn drop(&mut self) {
        // SeqCst: see the module documentation.
        self.conn.raw.fetch_sub(1, SeqCst);
    }
}

impl Conn {
    /// Enters a raw call, or `None` if this end is quiesced (use the hook's path; the phase is
    /// then `Ready` or later, or about to be: see [`Conn::await_ready`]).
    #[inline]
    pub fn enter_raw(&self) -> Option<RawCall<'_>> {
        // SeqCst: see the module documentation.
        let before = self.raw.fetch_add(1, SeqCst);
        if before & QUIESCED != 0 {
            self.raw.fetch_sub(1, SeqCst);
            return None;
        }
        Some(RawCall { conn: self })
    }

    /// After [`Conn::enter_raw`] refused: the quiescing thread is finishing the move to ready
    /// (a few stores and `epoll_ctl` calls); wait for it.
    pub(crate) fn await_ready(&self) -> Phase {
        loop {
            let phase = self.phase();
            if phase >= Phase::Ready {
                return phase;
            }
            sys::sched_yield();
        }
    }

    /// One step towards the rings, if one is due (see the module documentation). Never waits.
    #[inline]
    pub fn tick(&self, fd: c_int) {
        match self.phase() {
            Phase::Candidate if self.may_claim_now() => self.maybe_claim(fd),
            Phase::Candidate => {}
            Phase::Claiming => self.check_answer(),
            Phase::Mapped => self.check_peer_joined(fd),
            Phase::Quiescing => self.try_ready(fd),
            Phase::Ready => self.try_switch(),
            _ => {}
        }
    }

    /// Whether a candidate may be worth a claim already (a conversation, 64 KiB moved, or
    /// `--claim-after 0`); only then is the clock read. A few loads, inlined into every call
    /// on a plain tracked socket (see [`Conn::activity`]; Relaxed: hints).
    #[inline]
    pub fn may_claim_now(&self) -> bool {
        Activity(self.activity.load(Relaxed)).worth_a_claim()
            || crate::paths::claim_after_ns() == 0
            || self.counts.sent().max(self.counts.received()) >= CLAIM_AFTER_BYTES
    }

    /// Whether [`Conn::tick`] has anything to do: a plain candidate that has not shown it is
    /// worth a segment has not (so a call on it skips the step and its errno bookkeeping).
    #[inline]
    pub fn tick_due(&self) -> bool {
        match self.phase() {
            Phase::Candidate => self.may_claim_now(),
            Phase::Unconnected | Phase::Plain | Phase::Active => false,
            _ => true,
        }
    }

    /// Sends the claim if the connection has shown it is worth a segment (see
    /// [`Conn::may_claim_now`]).
    #[cold]
    fn maybe_claim(&self, fd: c_int) {
        let moved = self.counts.sent().max(self.counts.received());
        let now = now_ns();
        if now.saturating_sub(self.born_ns.load(Relaxed)) < crate::paths::claim_after_ns() && moved < CLAIM_AFTER_BYTES
            || !CLAIMING.load(Relaxed)
        {
            return;
        }
        let Ok(mut claim) = self.claim.try_lock() else { return };
        if self.phase() != Phase::Candidate || now < claim.retry_at {
            return;
        }
        // Another image moved bytes on the socket uncounted (see `crate::counts`).
        if self.counts.spoiled() {
            drop(claim);
            self.give_up(GiveUp::Uncounted);
            return;
        }
        // SO_PASSCRED on since before the connection (set on the socket, or inherited from the
        // listener): credentials with every read, which only the kernel gives. Looked at here,
        // the first moment the connection would leave the socket, not on connect/accept (a
        // short connection never pays the system call); turned on later, `setsockopt` hands
        // the connection back.
        if crate::anc::passes_creds(fd) {
            drop(claim);
            self.give_up(GiveUp::PassCred);
            return;
        }
        // The io_uring hand-back handler first (see `uring`): a process whose application has
        // the signal for itself claims nothing; a thread that blocks it claims later.
        match crate::uring::may_claim() {
            Some(true) => {}
            Some(false) => {
                drop(claim);
                self.give_up(GiveUp::IoUring);
                return;
            }
            None => {
                claim.retry_at = now + RETRY_AFTER_NS;
                return;
            }
        }
        // The socket's O_NONBLOCK matters from now on (waits on the rings): read it now if
        // nobody said (see `Conn::nonblock`).
        self.nonblocking_via(fd);
        let role = if self.end == End::Client { Role::Client } else { Role::Server };
        match claim::send(claim::request(role, fd, self.forked.load(Relaxed))) {
            Ok(control) => {
                claim.control = Some(OwnFd::new(control));
                claim.sent_at = now;
                claim.backoff = ANSWER_CHECK_FIRST_NS;
                claim.next_check = now + ANSWER_CHECK_FIRST_NS;
                self.advance(Phase::Candidate, Phase::Claiming);
            }
            // The agent is busy: later.
            Err(claim::Unreachable::Busy) => claim.retry_at = now + RETRY_AFTER_NS,
            // No agent: plain for good.
            Err(claim::Unreachable::NoAgent) => {
                drop(claim);
                self.give_up(NO_SEGMENT_YET);
            }
        }
    }

    /// Looks for the agent's answer, at most once per back-off interval.
    fn check_answer(&self) {
        let now = now_ns();
        let Ok(mut claim) = self.claim.try_lock() else { return };
        if self.phase() != Phase::Claiming || now < claim.next_check {
            return;
        }
        // No control connection while claiming: another thread took the answer and is joining.
        let Some(control) = claim.control.as_ref() else { return };
        match claim::poll(control.raw()) {
            Answer::NotYet => {
                if now.saturating_sub(claim.sent_at) > CLAIM_GIVE_UP_NS {
                    claim.control = None;
                    drop(claim);
                    self.give_up(NO_SEGMENT_YET);
                    return;
                }
                if now.saturating_sub(claim.sent_at) > ANSWER_CHECK_STEADY_NS {
                    claim.backoff = (claim.backoff * 2).min(ANSWER_CHECK_MAX_NS);
                }
                claim.next_check = now + claim.backoff;
            }
            Answer::Retry => {
                claim.control = None;
                claim.retry_at = now + (RETRY_AFTER_NS << claim.retried.min(20)).min(RETRY_MAX_NS);
                claim.retried = claim.retried.saturating_add(1);
                self.advance(Phase::Claiming, Phase::Candidate);
            }
            Answer::Plain => {
                claim.control = None;
                drop(claim);
                self.give_up(NO_SEGMENT_YET);
            }
            Answer::Dropped if claim.dropped < DROPPED_RETRIES => {
                // A burst of claims beyond what the agent serves at once: later, as the
                // connection stays plain meanwhile.
                claim.control = None;
                claim.retry_at = now + (RETRY_AFTER_NS << claim.dropped.min(20)).min(DROPPED_RETRY_MAX_NS);
                claim.dropped += 1;
                self.advance(Phase::Claiming, Phase::Candidate);
            }
            Answer::Dropped => {
                claim.control = None;
                drop(claim);
                self.give_up(NO_SEGMENT_YET);
            }
            Answer::Swap(memfd) => {
                claim.control = None;
                claim.sent_at = now; // from now on: when the segment was mapped
                drop(claim);
                // An io_uring set up since the claim: no swap (the segment is refused, so that
                // the peer sees it at once).
                if !self.join(memfd) {
                    self.give_up(GiveUp::Unusable);
                } else if crate::uring::io_uring_seen() {
                    self.give_up(GiveUp::IoUring);
                }
            }
        }
    }

    /// Takes the segment in `memfd` as if the agent had answered this end's claim with it (for
    /// tests that migrate a connection without an agent). The connection must be a candidate.
    pub fn join_with(&self, memfd: Fd) -> bool {
        if !self.advance(Phase::Candidate, Phase::Claiming) {
            return false;
        }
        self.join(memfd)
    }

    /// Maps the segment handed over by the agent and publishes this end's `joined`.
    fn join(&self, memfd: Fd) -> bool {
        let Ok(segment) = Segment::open(memfd.borrow()) else { return false };
        // SAFETY: this end's handles are only used under the ring locks (`with_tx`/`with_rx`),
        // and they are dropped with the `Swap`, before the segment (field order).
        let (tx, rx) = unsafe { (segment.producer(self.end), segment.consumer(self.end)) };
        let swap = Swap::new(segment, tx, rx, OwnFd::new(memfd));
        if self.swap.set(swap).is_err() {
            return false;
        }
        let header = self.header();
        // Release: the peer's Acquire load in `peer_gone` sees this end present.
        header.refcount[self.end.index()].store(1, Release);
        // SeqCst: after the refcount (see `EndLine::joined`).
        self.my_line().joined.store(JOIN_MAPPED, SeqCst);
        // Only the thread that took the answer moves the phase on from `Claiming`; a fork or
        // exec meanwhile made it plain (and `give_up` refuses the segment then).
        self.advance(Phase::Claiming, Phase::Mapped)
    }

    /// Plain for good: nothing more is tracked but the fds. A segment this end holds is given
    /// up (both ends stay on the socket; nothing went on the rings yet). Returns false, and
    /// changes nothing, if the migration is committed (an end switched: segment state
    /// `Active`), which another thread of this process can make happen by readying this end
    /// while a fork, exec or spawn looks at it: only a hand-back takes such a connection back
    /// to the socket.
    pub(crate) fn give_up(&self, why: GiveUp) -> bool {
        if let Some(swap) = self.swap() {
            // Acquire: our own flag, stored SeqCst by whichever thread made this end ready.
            if self.my_line().ready.load(Acquire) == 0 {
                // Relaxed: published by the SeqCst store of `joined` below (see `EndLine`).
                self.my_line().gave_up.store(why as u32, Relaxed);
                // SeqCst: as `joined`.
                self.my_line().joined.store(JOIN_REFUSED, SeqCst);
                // Nothing can be on the rings: no end switches before this one is ready.
                let _ = swap.segment.transition(SegmentState::Pending, SegmentState::Plain);
            } else if swap.segment.transition(SegmentState::Pending, SegmentState::Plain).is_err()
                && swap.segment.state() == Some(SegmentState::Active)
            {
                return false;
            }
        }
        if let Ok(mut claim) = self.claim.try_lock() {
            claim.control = None;
        }
        if let Ok(mut regs) = self.regs.try_lock() {
            regs.clear();
        }
        self.set_phase(Phase::Plain);
        true
    }

    /// Drops a claim in flight (the agent sees its control connection close); the connection
    /// is a candidate again.
    /// Waits for the claim lock (held only for a non-blocking step by another thread), so that
    /// a fork never leaves a claim in flight behind in both processes.
    pub(crate) fn drop_claim(&self) {
        let mut claim = self.claim.lock().unwrap_or_else(|p| p.into_inner());
        claim.control = None;
        claim.retry_at = now_ns() + RETRY_AFTER_NS;
        self.advance(Phase::Claiming, Phase::Candidate);
    }

    /// Mapped: waits (across calls) for the peer to join.
    fn check_peer_joined(&self, fd: c_int) {
        // Acquire: pairs with the peer's SeqCst store (its refcount before).
        match self.peer_line().joined.load(Acquire) {
            JOIN_MAPPED => {
                if self.advance(Phase::Mapped, Phase::Quiescing) {
                    self.try_ready(fd);
                }
            }
            JOIN_REFUSED => {
                self.give_up(GiveUp::PeerGaveUp);
            }
            _ if self.abandoned() => {
                self.give_up(GiveUp::PeerGaveUp);
            }
            _ => {
                let since = self.claim.try_lock().map(|c| c.sent_at).unwrap_or(0);
                if since != 0 && now_ns().saturating_sub(since) > JOIN_GIVE_UP_NS {
                    self.give_up(GiveUp::PeerNeverJoined);
                }
            }
        }
    }

    /// Quiescing: becomes ready if no raw call is in the kernel now (see the module docs).
    fn try_ready(&self, fd: c_int) {
        if self.abandoned() {
            self.give_up(GiveUp::PeerGaveUp);
            return;
        }
        if self.counts.spoiled() {
            self.give_up(GiveUp::Uncounted);
            return;
        }
        let Ok(mut regs) = self.regs.try_lock() else { return };
        if self.phase() != Phase::Quiescing {
            return;
        }
        let here = |fd: c_int| crate::table::lookup(fd).is_some_and(|c| c.id() == self.id());
        if regs.overflowed() || regs.iter().any(|&(reg_fd, epfd, _, _)| !here(reg_fd) || !epoll::may_adopt(epfd, self, reg_fd)) {
            // Registered through an fd closed since (the kernel's registration, which belongs
            // to the open file, can no longer be changed), or in an instance another process
            // shares without holding this connection, or in more instances than are recorded:
            // only the kernel's list can serve it, so it stays plain.
            drop(regs);
            self.give_up(GiveUp::EpollRegistration);
            return;
        }
        // Close the epoll instances this socket is registered in to new waits, if nobody waits
        // in them now; otherwise try again on a later call.
        let mut closed: Vec<c_int> = Vec::new();
        for &(_, epfd, _, _) in regs.iter() {
            if closed.contains(&epfd) {
                continue;
            }
            if !epoll::gate_close(epfd) {
                closed.iter().for_each(|&e| epoll::gate_open(e));
                return;
            }
            closed.push(epfd);
        }
        // SeqCst: see the module documentation.
        if self.raw.compare_exchange(0, QUIESCED, SeqCst, SeqCst).is_err() {
            closed.iter().for_each(|&e| epoll::gate_open(e));
            return;
        }
        // Quiesced: the counts are final; publish them.
        self.note_socket_inode(fd);
        let line = self.my_line();
        // Relaxed loads (in `Counts`): ordered after the raw calls' SeqCst exits by the CAS
        // above. Release stores: published together with `ready` below.
        line.sock_written.store(self.counts.sent(), Release);
        line.sock_read.store(self.counts.received(), Release);
        for (reg_fd, epfd, events, data) in regs.take() {
            epoll::adopt(epfd, reg_fd, self, events, data);
        }
        // SeqCst: after the counters (see `EndLine::ready`).
        line.ready.store(1, SeqCst);
        self.set_phase(Phase::Ready);
        self.heat_warm();
        closed.iter().for_each(|&e| epoll::gate_open(e));
        drop(regs);
        let _ = fd;
        self.try_switch();
    }

    /// Ready: moves this end's writes onto its ring once the peer is ready, and the connection
    /// to [`Phase::Active`] once both directions are on the rings.
    pub(crate) fn try_switch(&self) {
        if !self.out_switched() {
            if self.abandoned() {
                self.give_up(GiveUp::PeerGaveUp);
                return;
            }
            // Acquire: pairs with the peer's SeqCst store after its counters.
            if self.peer_line().ready.load(Acquire) != 1 {
                return;
            }
            if !self.with_tx(|_| self.switch_out()) {
                self.give_up(GiveUp::SwitchRefused);
                return;
            }
        }
        if self.out_switched() && self.in_switched() {
            self.became_active();
        }
    }

    /// Moves this end's writes onto its ring (under the producer lock; the peer is ready).
    /// The first switch of either end commits the migration (segment state `Pending ->
    /// Active`); once committed, neither end can give the segment up any more. Returns false if
    /// the migration was given up meanwhile (state `Plain`): the caller goes plain.
    pub(crate) fn switch_out(&self) -> bool {
        let line = self.my_line();
        if line.switch_at.load(Relaxed) != NOT_YET {
            return true;
        }
        let segment = &self.seg().segment;
        if segment.transition(SegmentState::Pending, SegmentState::Active).is_err() && segment.state() != Some(SegmentState::Active) {
            return false;
        }
        // Relaxed load: our own count, written under the lock we hold. SeqCst store: the
        // peer's reader loads it with Acquire after it peeked the socket (see `crate::migrate`).
        line.switch_at.store(line.sock_written.load(Relaxed), SeqCst);
        // No edge of room here: the kernel gives none (nothing moved), and a writer that found
        // the socket full gets one when the peer takes the socket's bytes (see
        // `Conn::socket_edge`).
        true
    }

    /// Gives the migration up if nothing is on the rings yet (segment state `Pending ->
    /// Plain`); true if the connection is plain now (for both ends: each sees the state on its
    /// next call and goes plain).
    pub(crate) fn abandon(&self, why: GiveUp) -> bool {
        let segment = &self.seg().segment;
        let plain = segment.transition(SegmentState::Pending, SegmentState::Plain).is_ok() || segment.state() == Some(SegmentState::Plain);
        if plain {
            self.give_up(why);
        }
        plain
    }

    /// The peer (or the agent) gave the migration up: go plain too.
    #[inline]
    pub(crate) fn abandoned(&self) -> bool {
        self.swap().is_some_and(|s| s.segment.state() == Some(SegmentState::Plain))
    }

    /// Both directions are on the rings.
    fn became_active(&self) {
        if self.advance(Phase::Ready, Phase::Active) {
            self.stop_watching_socket();
            // For the agent's trace (the migration is complete when both ends stored theirs).
            // Relaxed: a timestamp nobody synchronizes on.
            self.my_line().active_ns.store(now_ns().max(1), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Activity, CLAIM_AFTER_CALLS};

    fn after(calls: &[bool]) -> Activity {
        calls.iter().fold(Activity(0), |a, &sending| a.after(sending))
    }

    #[test]
    fn one_request_and_its_answer_is_not_a_conversation() {
        // The client: the request in two writes, the answer in three reads.
        let client = after(&[true, true, false, false, false]);
        assert_eq!((client.turns(), client.calls()), (1, 5));
        assert!(!client.worth_a_claim());
        // The server: the request in one read, the answer in two writes.
        assert!(!after(&[false, true, true]).worth_a_claim());
    }

    #[test]
    fn a_second_exchange_is_a_conversation_at_both_ends() {
        assert!(after(&[true, false, true]).worth_a_claim());
        assert!(after(&[false, true, false]).worth_a_claim());
    }

    #[test]
    fn one_way_traffic_claims_by_its_calls() {
        let writes = vec![true; CLAIM_AFTER_CALLS as usize];
        assert!(!after(&writes[1..]).worth_a_claim());
        assert!(after(&writes).worth_a_claim());
    }

    #[test]
    fn the_counts_saturate_without_spilling() {
        let many: Vec<bool> = (0..1000).map(|i| i % 2 == 0).collect();
        let a = after(&many);
        assert_eq!((a.turns(), a.calls(), a.0 & 3), (255, 255, 1));
        assert_eq!(a.after(false), a);
        assert_eq!(a.after(true).0 & !3, a.0 & !3);
    }
}
