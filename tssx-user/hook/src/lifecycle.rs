//! Fork, exec and spawn: who holds a connection's end, counted in the segment header.
//!
//! A forked child, a spawned process and the image after `execve` hold the same sockets, so
//! each is one more holder of its connections' ends (`refcount[end]` in the header); the last
//! holder to close tells the peer this end is gone.
//!
//! A connection that is still plain counts its bytes in this process's memory: a fork moves
//! the counts to memory the child shares ([`crate::counts`]) and marks the connection (its next
//! claim asks the agent to check that this process is the only holder left), a claim in flight
//! is dropped (claimed again later), and a segment mapped but not ready yet is given up
//! (nothing is on the rings then). Once ready, everything an end needs is in the header,
//! shared by every holder.

use std::sync::atomic::Ordering::{AcqRel, Relaxed, SeqCst};

use libc::c_int;
use tssx_common::segment::{End, GiveUp};

use crate::{
    conn::{Phase, QUIESCED},
    sys,
    table::for_each_conn,
};

/// Whether `phase` is one whose byte counts are this process's (see [`crate::counts`]).
fn counts_plain(phase: Phase) -> bool {
    matches!(phase, Phase::Candidate | Phase::Claiming)
}

/// Before `fork`: the child will hold every connection too, so each end's refcount goes up
/// (before the child exists, so a parent closing early never makes the peer see zero), and a
/// plain connection's byte counts move to memory the child shares ([`crate::counts`]).
pub fn before_fork() {
    crate::table::unconnected_forked();
    // Connections plain from here on whose counts nobody shares yet.
    let mut unshared = 0;
    for_each_conn(|_, conn| {
        match conn.phase() {
            Phase::Unconnected | Phase::Plain => {}
            Phase::Candidate => conn.forked.store(true, Relaxed),
            Phase::Claiming => {
                conn.forked.store(true, Relaxed);
                conn.drop_claim();
            }
            // (Committed meanwhile by another thread: held like a swapped one.)
            Phase::Mapped | Phase::Quiescing if conn.give_up(GiveUp::ForkOrExec) => {}
            Phase::Mapped | Phase::Quiescing | Phase::Ready | Phase::Active | Phase::HandingBack => {
                conn.header().refcount[conn.end.index()].fetch_add(1, Relaxed);
                conn.shared.store(true, Relaxed);
            }
        }
        if counts_plain(conn.phase()) && !conn.counts.is_shared() {
            unshared += 1;
        }
    });
    if unshared > 0 {
        let mut slots = crate::counts::ForkSlots::new(unshared);
        for_each_conn(|_, conn| {
            if counts_plain(conn.phase()) {
                // SeqCst: see `crate::counts`.
                slots.share(&conn.counts, || conn.raw.load(SeqCst) & !QUIESCED != 0);
            }
        });
    }
}

/// `fork` failed: undo [`before_fork`].
pub fn fork_failed() {
    for_each_conn(|_, conn| {
        if lookup_swapped_conn(conn) {
            conn.header().refcount[conn.end.index()].fetch_sub(1, AcqRel);
        }
    });
}

/// Whether `conn` is past the plain phases (it has a segment in use).
fn lookup_swapped_conn(conn: &crate::conn::Conn) -> bool {
    let phase = conn.phase();
    phase >= Phase::Ready && phase != Phase::Plain
}

/// In the child after `fork`: the calling thread has a new id, the parent's other threads'
/// holds of this process's own ring locks are nobody's (see [`crate::ringlock`]), and the
/// signal records are the child's own.
pub fn in_child() {
    // Its own copy of the signal records (see `signals::records_mine`).
    sys::with_errno_kept(crate::signals::in_child);
    crate::fault::in_child();
    let forker = sys::thread_id();
    sys::forget_thread_id();
    crate::ringlock::clear_local_locks_in_child(forker, sys::thread_id());
}

/// One swapped fd that survives `execve`, as handed to the new image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inherit {
    /// The socket.
    pub fd: c_int,
    /// The segment's memfd (close-on-exec cleared for the exec).
    pub memfd: c_int,
    /// Which end the socket is.
    pub end: End,
    /// The socket's inode, to find it again if a spawn's file actions renumbered it.
    pub inode: u64,
}

/// `execve` failed: the memfds are close-on-exec again.
pub fn exec_failed() {
    for_each_conn(|_, conn| {
        if let Some(memfd) = conn.memfd_raw() {
            // SAFETY: sets FD_CLOEXEC on our own memfd.
            unsafe { sys::fcntl(memfd, libc::F_SETFD, libc::FD_CLOEXEC as libc::c_ulong) };
        }
    });
}
