//! `poll`, `ppoll`, `select` and `pselect` over a mix of swapped and plain fds.
//!
//! A swapped fd's readiness comes from its rings ([`Conn::readiness`]). The call answers without
//! a system call when a swapped fd is ready and nothing else is asked; otherwise it checks the
//! plain fds with a zero timeout. When nothing is ready it spins on the rings for the thread's
//! adaptive budget, then announces a sleep on every swapped connection and waits in the real
//! `ppoll`, where a swapped fd waits for `POLLIN` on its real socket: the peer's doorbell (or
//! its death) wakes it. Calls with no swapped fd go straight to libc.

use libc::{c_int, nfds_t, pollfd, sigset_t, timespec};

use crate::{
    conn::{bits, Conn},
    spin::{self, now_ns},
    sys,
    table::{self, lookup},
};
use tssx_common::segment::SegmentState;

/// Whether any fd of `fds` is swapped (the only cost `poll` adds for plain fds).
pub fn any_swapped(fds: &[pollfd]) -> bool {
    table::any_live() && fds.iter().any(|p| lookup(p.fd).is_some())
}

/// The connection of a poll entry, if swapped and still using the rings (a connection found
/// plain is replayed and forgotten here, so the entry is treated as a plain socket).
fn swapped(p: &pollfd) -> Option<&'static Conn> {
    let c = lookup(p.fd)?;
    (!c.unswap_if_plain(p.fd)).then_some(c)
}

/// `revents` of a swapped entry from the rings.
fn ring_revents(c: &Conn, events: i16) -> i16 {
    let wanted = events as u32 | bits::HUP | bits::ERR;
    (c.readiness() & wanted) as i16
}

/// Whether any swapped entry is ready by its rings (no system call, `revents` untouched).
fn any_ready(fds: &[pollfd]) -> bool {
    fds.iter().any(|p| p.fd >= 0 && lookup(p.fd).is_some_and(|c| ring_revents(c, p.events) != 0))
}

/// Fills `revents` of swapped entries from the rings; returns (ready swapped entries, whether
/// there are plain entries).
fn scan(fds: &mut [pollfd]) -> (usize, bool) {
    let mut ready = 0;
    let mut plain = false;
    for p in fds.iter_mut() {
        if p.fd < 0 {
            p.revents = 0;
            continue;
        }
        match swapped(p) {
            Some(c) => {
                p.revents = ring_revents(c, p.events);
                ready += usize::from(p.revents != 0);
            }
            None => plain = true,
        }
    }
    (ready, plain)
}

/// One real `ppoll` over all entries; swapped entries wait for `POLLIN` on their real socket
/// (doorbells, EOF, or a plain peer's data while pending) and report ring readiness. Returns
/// the number of entries with events, or -1 with errno from the real call.
///
/// # Safety
/// `sigmask` is null or valid.
unsafe fn real_pass(fds: &mut [pollfd], timeout_ns: Option<u64>, sigmask: *const sigset_t) -> c_int {
    // The user's events of swapped entries, restored after the call (on the stack for the
    // usual handful of fds).
    let mut user_events = [0i16; 64];
    let mut spill = Vec::new();
    for (i, p) in fds.iter_mut().enumerate() {
        if p.fd >= 0 && lookup(p.fd).is_some() {
            if i < user_events.len() {
                user_events[i] = p.events;
            } else {
                spill.push((i, p.events));
            }
            p.events = libc::POLLIN;
        }
    }
    let ts = timeout_ns.map(|ns| timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const timespec);
    // SAFETY: a live array of `fds.len()` entries; `ts_ptr` and `sigmask` are null or valid.
    let rc = unsafe { sys::ppoll(fds.as_mut_ptr(), fds.len() as nfds_t, ts_ptr, sigmask) };
    let saved_errno = sys::errno();
    let mut count = 0;
    for (i, p) in fds.iter_mut().enumerate() {
        let Some(c) = (p.fd >= 0).then(|| lookup(p.fd)).flatten() else {
            count += c_int::from(rc > 0 && p.revents != 0);
            continue;
        };
        let events = if i < user_events.len() { user_events[i] } else { spill.iter().find(|(j, _)| *j == i).map_or(0, |(_, e)| *e) };
        let real = if rc > 0 { p.revents } else { 0 };
        p.events = events;
        let pending = c.state() == Some(SegmentState::Pending);
        if real & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            if pending {
                c.on_plain_data();
            } else {
                // This call announced once on the connection (still counted here).
                c.drain_doorbells_if_alone(p.fd, 1);
            }
        }
        if c.unswap_if_plain(p.fd) {
            // Plain from now on: its real readiness is what the next call reports.
            p.revents = 0;
            continue;
        }
        p.revents = ring_revents(c, events);
        count += c_int::from(p.revents != 0);
    }
    if rc < 0 {
        sys::set_errno(saved_errno);
        return -1;
    }
    count
}

/// `poll`/`ppoll` with at least one swapped fd. `timeout_ns`: `None` waits forever.
///
/// # Safety
/// `sigmask` is null or valid.
pub unsafe fn poll(fds: &mut [pollfd], timeout_ns: Option<u64>, sigmask: *const sigset_t) -> c_int {
    let deadline = timeout_ns.map(|t| now_ns().saturating_add(t));
    let mut spun = false;
    loop {
        let (ready, plain) = scan(fds);
        let expired = deadline.is_some_and(|d| now_ns() >= d);
        if ready > 0 || expired {
            if !plain && ready > 0 {
                // Answered from the rings alone: no system call.
                for p in fds.iter_mut().filter(|p| p.fd >= 0 && lookup(p.fd).is_none()) {
                    p.revents = 0;
                }
                return ready as c_int;
            }
            // SAFETY: forwarded.
            return unsafe { real_pass(fds, Some(0), sigmask) };
        }
        if !spun {
            spun = true;
            if spin::spin_until(timeout_ns, || any_ready(fds)) {
                continue;
            }
        }
        // Announce on every swapped connection, then re-check: a peer that transfers after our
        // fence sees the announcement and rings.
        let mut shared = false;
        let mut pending = false;
        for p in fds.iter().filter(|p| p.fd >= 0) {
            if let Some(c) = lookup(p.fd) {
                c.announce();
                shared |= c.is_shared();
                if c.state() == Some(SegmentState::Pending) {
                    c.check_agent();
                    pending = true;
                }
            }
        }
        tssx_shm::wait::settle();
        let still_idle = !any_ready(fds);
        let rc = if still_idle {
            let wait = spin::sleep_budget(deadline, shared, pending);
            // SAFETY: forwarded.
            unsafe { real_pass(fds, wait, sigmask) }
        } else {
            0
        };
        let saved_errno = sys::errno();
        spin::woke();
        for p in fds.iter().filter(|p| p.fd >= 0) {
            if let Some(c) = lookup(p.fd) {
                c.withdraw();
            }
        }
        if rc != 0 {
            sys::set_errno(saved_errno);
            return rc;
        }
    }
}

/// `select`/`pselect` with at least one swapped fd, through [`poll`]. Returns the number of set
/// bits, like select. `timeout_ns`: `None` waits forever.
///
/// # Safety
/// The sets are null or valid for `nfds` fds; `sigmask` is null or valid.
pub unsafe fn select(
    nfds: c_int,
    rd: *mut libc::fd_set,
    wr: *mut libc::fd_set,
    ex: *mut libc::fd_set,
    timeout_ns: Option<u64>,
    sigmask: *const sigset_t,
) -> c_int {
    let mut fds = [pollfd { fd: -1, events: 0, revents: 0 }; libc::FD_SETSIZE];
    let mut n = 0;
    let is_set = |set: *mut libc::fd_set, fd: c_int| -> bool {
        // SAFETY: a valid set per the contract; fd < nfds <= FD_SETSIZE.
        !set.is_null() && unsafe { libc::FD_ISSET(fd, set) }
    };
    for fd in 0..nfds {
        let mut events = 0;
        if is_set(rd, fd) {
            events |= libc::POLLIN;
        }
        if is_set(wr, fd) {
            events |= libc::POLLOUT;
        }
        if is_set(ex, fd) {
            events |= libc::POLLPRI;
        }
        if events != 0 {
            fds[n] = pollfd { fd, events, revents: 0 };
            n += 1;
        }
    }
    // SAFETY: forwarded.
    let rc = unsafe { poll(&mut fds[..n], timeout_ns, sigmask) };
    if rc < 0 {
        return rc;
    }
    if fds[..n].iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        sys::set_errno(libc::EBADF);
        return -1;
    }
    for set in [rd, wr, ex] {
        if !set.is_null() {
            // SAFETY: a valid set.
            unsafe { libc::FD_ZERO(set) };
        }
    }
    let mut count = 0;
    for p in &fds[..n] {
        let r = p.revents;
        let mut mark = |set: *mut libc::fd_set, on: bool| {
            if on && !set.is_null() {
                // SAFETY: a valid set; fd < FD_SETSIZE.
                unsafe { libc::FD_SET(p.fd, set) };
                count += 1;
            }
        };
        mark(rd, p.events & libc::POLLIN != 0 && r & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0);
        mark(wr, p.events & libc::POLLOUT != 0 && r & (libc::POLLOUT | libc::POLLERR) != 0);
        mark(ex, p.events & libc::POLLPRI != 0 && r & libc::POLLPRI != 0);
    }
    count
}

/// Whether any fd below `nfds` in the sets is swapped.
///
/// # Safety
/// The sets are null or valid for `nfds` fds.
pub unsafe fn select_has_swapped(nfds: c_int, sets: [*mut libc::fd_set; 3]) -> bool {
    if !table::any_live() || !(0..=libc::FD_SETSIZE as c_int).contains(&nfds) {
        return false;
    }
    (0..nfds).any(|fd| {
        // SAFETY: valid sets per the contract.
        lookup(fd).is_some() && sets.iter().any(|&s| !s.is_null() && unsafe { libc::FD_ISSET(fd, s) })
    })
}
