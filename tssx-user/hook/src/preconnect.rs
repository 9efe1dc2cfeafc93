//! epoll registrations of Unix stream sockets made before they connect, kept without a
//! connection record until the connect says whether the socket is on a watched path.
//!
//! nginx adds each upstream socket to its epoll instance and only then connects it. If that
//! socket connects to a watched path, its registration must move with it when it migrates
//! (see [`crate::epoll`]), so the hook has to know it. Most such sockets go elsewhere (a
//! FastCGI backend, a database on an unwatched path), and for those the hook must cost next to
//! nothing: no [`crate::conn::Conn`], no epoll set (which would send every later wait on that
//! instance through the hook). So the first registration of an unconnected socket is kept
//! here, in a slot of its fd (two words, no allocation, no lock):
//!
//! * a successful `connect` to a watched path turns it into a connection record with that
//!   registration ([`adopt`], then the usual tracking); to any other path it is dropped
//!   ([`forget`]);
//! * whatever the slot cannot describe goes the general way first: a second registration of
//!   the socket, an `EPOLLONESHOT` one (the kernel disarms it on its own), a dup of the socket,
//!   the epoll instance being closed or replaced ([`instance_closing`]): the socket gets its
//!   record in phase `Unconnected` with the kept registration, as every such registration did
//!   before this module;
//! * `EPOLL_CTL_MOD`/`DEL` of the kept registration update the slot after the kernel accepted
//!   them; closing the socket forgets it.
//!
//! Ordering: every access is `Relaxed`. The slots describe this process's own fds and are read
//! and written by the thread that calls on that fd; two threads racing `epoll_ctl` and
//! `connect` on one unconnected socket race in the kernel too, and a torn slot only ever names a
//! registration (never memory).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use libc::{c_int, epoll_event};

use crate::{
    conn::Phase,
    sys,
    table::{self, MAX_FDS},
};

/// One kept registration: `head` is `(epfd + 1) << 32 | events`, 0 when the slot is empty;
/// `data` the application's `epoll_data`.
struct Slot {
    head: AtomicU64,
    data: AtomicU64,
}

/// Per fd (see the module documentation). 1 MiB of zero pages that only fds registered before
/// a connect ever touch.
static SLOTS: [Slot; MAX_FDS] = [const { Slot { head: AtomicU64::new(0), data: AtomicU64::new(0) } }; MAX_FDS];

/// One bit per fd: an epoll instance some slot names (cleared when it is closed), so that its
/// `close` adopts those registrations first and the other closes of the process cost one load.
static INSTANCES: table::FdBits = table::FdBits::new();

fn slot(fd: c_int) -> Option<&'static Slot> {
    SLOTS.get(usize::try_from(fd).ok()?)
}

fn head(epfd: c_int, events: u32) -> u64 {
    ((epfd as u32 as u64) + 1) << 32 | u64::from(events)
}

fn epfd_of(head: u64) -> c_int {
    ((head >> 32) - 1) as u32 as c_int
}

/// Whether `fd` is an epoll instance that a kept registration names (its close must go
/// through [`instance_closing`]).
#[inline]
pub fn names_instance(fd: c_int) -> bool {
    INSTANCES.get(fd)
}

/// Whether `fd` has a kept registration.
#[inline]
pub fn kept(fd: c_int) -> bool {
    slot(fd).is_some_and(|s| s.head.load(Relaxed) != 0)
}

/// `epoll_ctl` of an unconnected, untracked Unix stream socket `fd`. `Some(rc)`: done (the
/// kernel's answer, the slot updated); `None`: the general way must serve it (the socket has
/// its connection record now if its kept registration could not stay here).
///
/// # Safety
/// `event` is null or valid, as for `epoll_ctl`.
pub unsafe fn ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> Option<c_int> {
    let slot = slot(fd)?;
    let kept = slot.head.load(Relaxed);
    // One instance under several numbers (a `dup` of the epoll fd) is one registration.
    let home = crate::epoll::canon(epfd);
    let ours = kept != 0 && epfd_of(kept) == home;
    match op {
        // The kept one again (the kernel's EEXIST) is no second registration.
        libc::EPOLL_CTL_ADD if kept == 0 || ours => {}
        libc::EPOLL_CTL_MOD | libc::EPOLL_CTL_DEL if ours => {}
        libc::EPOLL_CTL_ADD => {
            // A second registration: the record holds any number of them.
            sys::with_errno_kept(|| adopt(fd));
            return None;
        }
        // Not the kept registration: the kernel answers (ENOENT, or it is another instance's).
        _ => return None,
    }
    // SAFETY: forwarded as received.
    let rc = unsafe { sys::epoll_ctl(epfd, op, fd, event) };
    if rc != 0 {
        return Some(rc);
    }
    if op == libc::EPOLL_CTL_DEL || event.is_null() {
        slot.head.store(0, Relaxed);
        return Some(rc);
    }
    // SAFETY: the kernel just read the event from there.
    let (events, data) = unsafe { ((*event).events, (*event).u64) };
    INSTANCES.set(home);
    slot.data.store(data, Relaxed);
    slot.head.store(head(home, events), Relaxed);
    if events & libc::EPOLLONESHOT as u32 != 0 {
        // The kernel disarms it by itself: the record follows that (see `epoll`).
        sys::with_errno_kept(|| adopt(fd));
    }
    Some(rc)
}

/// Gives the unconnected socket `fd` its connection record (phase `Unconnected`) with the kept
/// registration, and empties the slot. Nothing if nothing is kept.
pub fn adopt(fd: c_int) {
    let Some(slot) = slot(fd) else { return };
    let kept = slot.head.swap(0, Relaxed);
    if kept == 0 {
        return;
    }
    if table::lookup(fd).is_none() {
        table::track(fd, tssx_common::segment::End::Client, Phase::Unconnected, None);
    }
    if let Some(c) = table::lookup(fd) {
        crate::epoll::record_plain(&c, epfd_of(kept), fd, kept as u32, slot.data.load(Relaxed));
    }
}

/// Drops `fd`'s kept registration (closed, or connected to a path the hook does not watch).
#[inline]
pub fn forget(fd: c_int) {
    if let Some(slot) = slot(fd) {
        if slot.head.load(Relaxed) != 0 {
            slot.head.store(0, Relaxed);
        }
    }
}

/// Epoll instance `epfd` is about to be closed (or replaced by `dup2`): the registrations kept
/// for it get their records first, so that the general way forgets them as it forgets those of
/// any other plain connection. One load for any other fd.
pub fn instance_closing(epfd: c_int) {
    if !names_instance(epfd) {
        return;
    }
    INSTANCES.clear(epfd);
    // Rare (an epoll instance closed while a socket registered in it waits to connect): every
    // fd with state is below the high-water mark.
    for (fd, slot) in SLOTS.iter().enumerate().take(table::state_limit()) {
        let kept = slot.head.load(Relaxed);
        if kept != 0 && epfd_of(kept) == epfd {
            adopt(fd as c_int);
        }
    }
}
