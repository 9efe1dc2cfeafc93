//! Fork, exec and spawn: who holds a connection's end, counted in the segment header.
//!
//! A forked child, a spawned process and the image after `execve` hold the same sockets, so
//! each is one more holder of its connections' ends (`refcount[end]` in the header); the last
//! holder to close tells the peer this end is gone.
//!
//! A connection that is still plain keeps its byte counts in this process's memory, which a
//! second holder would not share: a fork marks it (its next claim asks the agent to check that
//! this process is the only holder left), a claim in flight is dropped (claimed again later),
//! and a segment mapped but not ready yet is given up (nothing is on the rings then). Once
//! ready, everything an end needs is in the header, shared by every holder.

use std::sync::atomic::Ordering::{AcqRel, Relaxed};

use libc::c_int;
use tssx_common::segment::End;

use crate::{
    conn::Phase,
    sys,
    table::{any_live, for_each_conn, lookup, lookup_swapped, MAX_FDS},
};

/// Before `fork`: the child will hold every connection too, so each end's refcount goes up
/// (before the child exists, so a parent closing early never makes the peer see zero).
pub fn before_fork() {
    for_each_conn(|_, conn| match conn.phase() {
        Phase::Unconnected | Phase::Plain => {}
        Phase::Candidate => conn.forked.store(true, Relaxed),
        Phase::Claiming => {
            conn.forked.store(true, Relaxed);
            conn.drop_claim();
        }
        Phase::Mapped | Phase::Quiescing => conn.give_up(),
        Phase::Ready | Phase::Active | Phase::HandingBack => {
            conn.header().refcount[conn.end.index()].fetch_add(1, Relaxed);
            conn.shared.store(true, Relaxed);
        }
    });
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

/// In the child after `fork`: the calling thread has a new id.
pub fn in_child() {
    sys::forget_thread_id();
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

/// Before `execve`: every swapped fd that survives the exec (no FD_CLOEXEC) and its memfd,
/// whose close-on-exec flag is cleared so the new image's hook can map it again.
pub fn prepare_exec(mut out: impl FnMut(Inherit)) {
    if !any_live() {
        return;
    }
    for fd in 0..MAX_FDS as c_int {
        let Some(conn) = lookup(fd) else { continue };
        if !lookup_swapped_conn(&conn) {
            // Plain in the new image (its hook starts afresh): a segment not in use yet is
            // given up, a claim in flight dropped.
            match conn.phase() {
                Phase::Claiming => conn.drop_claim(),
                Phase::Mapped | Phase::Quiescing => conn.give_up(),
                _ => {}
            }
            continue;
        }
        // SAFETY: F_GETFD takes no argument.
        let flags = unsafe { sys::fcntl(fd, libc::F_GETFD, 0) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            let Some(memfd) = conn.memfd_raw() else { continue };
            // SAFETY: clears FD_CLOEXEC on our own memfd.
            unsafe { sys::fcntl(memfd, libc::F_SETFD, 0) };
            // SAFETY: `stat` is plain data; fstat fills it.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: a valid out-pointer.
            let inode = if unsafe { libc::fstat(fd, &mut st) } == 0 { st.st_ino } else { 0 };
            out(Inherit { fd, memfd, end: conn.end, inode });
        }
    }
}

/// A spawned process will hold the connections of `list` too (`+1`), or the spawn failed
/// (`-1`): adjusts each connection's end refcount once.
pub fn spawn_holds(list: &[Inherit], delta: i32) {
    for (i, item) in list.iter().enumerate() {
        if list[..i].iter().any(|other| other.memfd == item.memfd) {
            continue;
        }
        if let Some(conn) = lookup_swapped(item.fd) {
            let count = &conn.header().refcount[conn.end.index()];
            if delta > 0 {
                count.fetch_add(1, Relaxed);
            } else {
                count.fetch_sub(1, AcqRel);
            }
        }
    }
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
