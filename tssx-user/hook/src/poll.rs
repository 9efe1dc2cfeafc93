//! `poll`, `ppoll`, `select` and `pselect` over a mix of swapped and plain fds.
//!
//! Tracked fds that are still plain (not ready yet) are plain for the kernel's `poll`, but the
//! call counts as a raw call on each of them while it is inside the kernel (see
//! [`crate::phase`]), so that none becomes ready under it.
//!
//! A swapped fd's readiness comes from its rings ([`Conn::readiness`]). The call answers without
//! a system call when a swapped fd is ready and nothing else is asked; otherwise it checks the
//! plain fds with a zero timeout. When nothing is ready it spins on the rings for the thread's
//! adaptive budget, then announces a sleep on every swapped connection and waits in the real
//! `ppoll`, where a swapped fd waits for `POLLIN` on its real socket: the peer's doorbell (or
//! its death) wakes it. Calls with no swapped fd go straight to libc.

use libc::{c_int, nfds_t, pollfd, sigset_t, timespec};

use crate::{
    conn::{bits, Conn, Phase},
    phase::RawCall,
    signals::{Mark, Quiet},
    spin::{self, now_ns, Spun},
    sys,
    table::{self, lookup, lookup_swapped, ConnRef},
};

/// What a `poll` set holds, as far as the hook is concerned.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No tracked fd: the real call, nothing else.
    Plain,
    /// Tracked fds that are all still plain: the real call, counted as a raw call on each.
    Raw,
    /// At least one swapped fd: [`poll`].
    Swapped,
}

/// Classifies `fds` (the only cost `poll` adds for plain fds when nothing is tracked: one load).
pub fn kind(fds: &[pollfd]) -> Kind {
    if !table::any_live() {
        return Kind::Plain;
    }
    let mut kind = Kind::Plain;
    for p in fds {
        let Some(c) = table::lookup(p.fd) else { continue };
        match c.phase() {
            Phase::Plain | Phase::Unconnected => {}
            phase if phase.is_raw() => kind = Kind::Raw,
            _ => return Kind::Swapped,
        }
    }
    kind
}

/// Raw calls on every tracked, still plain fd of a poll set, for the duration of a real
/// poll-like call (see [`crate::phase`]); each connection takes its next step when they end.
pub struct RawCalls {
    /// Each raw call borrows its connection from the lease next to it (dropped after it).
    calls: Vec<(c_int, RawCall<'static>, ConnRef)>,
}

impl RawCalls {
    /// Enters a raw call on each; `None` if one of them became ready meanwhile (the caller
    /// then serves the set with [`poll`]).
    pub fn enter(fds: &[pollfd]) -> Option<RawCalls> {
        let mut calls: Vec<(c_int, RawCall<'static>, ConnRef)> = Vec::new();
        for p in fds {
            let Some(c) = table::lookup(p.fd) else { continue };
            let phase = c.phase();
            // Only the phases whose calls go to the kernel as they are (a connection already on
            // the rings, or handing back, never enters a raw call: counting it as one would
            // make every wait of the set a zero-timeout spin).
            if !phase.is_raw()
                || phase == Phase::Plain
                || phase == Phase::Unconnected
                || calls.iter().any(|(_, _, other)| other.cell() == c.cell())
            {
                continue;
            }
            c.tick(p.fd);
            // SAFETY: the connection lives in a cell that stays put and alive while the lease
            // `c` is held; the lease is stored next to the raw call and dropped after it (see
            // `Drop`), so the borrow never outlives it.
            let conn: *const Conn = &*c;
            // SAFETY: as above.
            let conn: &'static Conn = unsafe { &*conn };
            calls.push((p.fd, conn.enter_raw()?, c));
        }
        Some(RawCalls { calls })
    }
}

impl Drop for RawCalls {
    fn drop(&mut self) {
        let saved = sys::errno();
        for (fd, raw, c) in self.calls.drain(..) {
            drop(raw);
            c.tick(fd);
        }
        sys::set_errno(saved);
    }
}

/// The connection of a poll entry, if it has a segment and is past the plain phases.
fn swapped(p: &pollfd) -> Option<ConnRef> {
    let c = lookup_swapped(p.fd)?;
    c.tick(p.fd);
    (c.phase() != Phase::Plain).then_some(c)
}

/// `revents` of a swapped entry from the rings (and the socket, half-way).
fn ring_revents(c: &Conn, fd: c_int, events: i16) -> i16 {
    let wanted = events as u32 | bits::HUP | bits::ERR;
    let mut ready = c.readiness(fd) & wanted;
    if events & libc::POLLPRI != 0 {
        ready |= c.urgent(fd);
    }
    ready as i16
}

/// Whether any swapped entry is ready by its rings (`revents` untouched).
fn any_ready(fds: &[pollfd]) -> bool {
    fds.iter().any(|p| p.fd >= 0 && lookup_swapped(p.fd).is_some_and(|c| ring_revents(&c, p.fd, p.events) != 0))
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
                p.revents = ring_revents(&c, p.fd, p.events);
                if c.phase() == Phase::Plain {
                    // Turned plain on the way (the end of a hand-back): the kernel answers.
                    plain = true;
                }
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
unsafe fn real_pass(
    fds: &mut [pollfd],
    timeout_ns: Option<u64>,
    sigmask: *const sigset_t,
    quiet: Option<Quiet>,
    announced: &[(usize, ConnRef)],
) -> c_int {
    // The user's events of the entries swapped now, restored after the call (on the stack for
    // the usual handful of fds). An entry that becomes swapped during the call (a connection
    // that got ready in a step of `RawCalls::enter`) was not changed and is not restored.
    let mut user_events = [None::<i16>; 64];
    let mut spill = Vec::new();
    for (i, p) in fds.iter_mut().enumerate() {
        if p.fd >= 0 && lookup_swapped(p.fd).is_some() {
            if i < user_events.len() {
                user_events[i] = Some(p.events);
            } else {
                spill.push((i, p.events));
            }
            // Doorbells and EOF; and, half-way, what the socket part of each direction needs.
            p.events = libc::POLLIN | (p.events & libc::POLLOUT);
        }
    }
    let ts = timeout_ns.map(crate::sys::timespec_of_ns);
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const timespec);
    // Plain-phase tracked fds in the set are inside the kernel now: count them as raw calls
    // (one that became ready meanwhile is served as swapped by the caller's next round).
    let raw = RawCalls::enter(fds);
    let zero = timespec { tv_sec: 0, tv_nsec: 0 };
    let ts_ptr = if raw.is_some() { ts_ptr } else { &zero };
    // The sleep after a wait's last look at its mark (see `Quiet`): the thread's signals come
    // back with the sleep's mask, and right after it (a claim below must see them unblocked;
    // the raw system call that restores them leaves errno alone).
    let mask = quiet.as_ref().map_or(sigmask, |q| q.sleep_mask(sigmask));
    // SAFETY: a live array of `fds.len()` entries; `ts_ptr` and `mask` are null or valid.
    let rc = unsafe { sys::ppoll(fds.as_mut_ptr(), fds.len() as nfds_t, ts_ptr, mask) };
    drop(quiet);
    drop(raw);
    let saved_errno = sys::errno();
    let mut count = 0;
    for (i, p) in fds.iter_mut().enumerate() {
        let Some(c) = (p.fd >= 0).then(|| lookup_swapped(p.fd)).flatten() else {
            count += c_int::from(rc > 0 && p.revents != 0);
            continue;
        };
        let saved = if i < user_events.len() { user_events[i] } else { spill.iter().find(|(j, _)| *j == i).map(|(_, e)| *e) };
        let events = saved.unwrap_or(p.events);
        let real = if rc > 0 { p.revents } else { 0 };
        p.events = events;
        if real & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            // Leave the doorbells to other sleepers of this end, unless only this call's own
            // announcement for this entry (still counted here) is among them. An entry that
            // turned swapped during the call, or a pass that announced nothing (no wait), has
            // none: a sleeping sibling thread's doorbell is not taken then.
            c.drain_doorbells_if_alone(p.fd, announced_on(announced, i, &c));
        }
        c.tick(p.fd);
        if c.phase() == Phase::Plain {
            // Plain from now on: its real readiness is what the next call reports. The real
            // call was asked for the hook's events (POLLIN for doorbells), not the caller's:
            // only what the caller asked for (and what is always reported) is given, as the
            // kernel's poll does (a POLLPRI-only wait got POLLIN, found by the conformance
            // test's migrating run); the next round asks the kernel with the caller's events.
            p.revents = real & (events | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL);
            count += c_int::from(p.revents != 0);
            continue;
        }
        p.revents = ring_revents(&c, p.fd, events);
        count += c_int::from(p.revents != 0);
    }
    if rc < 0 {
        sys::set_errno(saved_errno);
        return -1;
    }
    count
}

/// How many sleeps `announced` (entry index, connection; sorted by index) holds for entry `i`
/// on connection `c`: 1 if this call announced on that very connection for that entry, else 0.
fn announced_on(announced: &[(usize, ConnRef)], i: usize, c: &ConnRef) -> u32 {
    announced.binary_search_by_key(&i, |(j, _)| *j).is_ok_and(|k| std::ptr::eq(&*announced[k].1, &**c)).into()
}

/// `poll`/`ppoll` with at least one swapped fd. `timeout_ns`: `None` waits forever. `mark`:
/// taken when the application's call entered the hook (see [`Mark`]'s use below).
///
/// # Safety
/// `sigmask` is null or valid.
pub unsafe fn poll(fds: &mut [pollfd], timeout_ns: Option<u64>, sigmask: *const sigset_t, mark: Mark) -> c_int {
    let deadline = timeout_ns.map(|t| now_ns().saturating_add(t));
    let mut spun = false;
    // `mark` was taken when the call entered the hook (see `signals`): a handler that runs on
    // this thread from then on ends the wait with EINTR, as a signal that arrives during the
    // kernel's poll does (never restarted). Taken at the entry, not when the wait begins to
    // spin, nor here: a handler that ran between two real calls of a connection still plain
    // (one half-way polls in slices) was lost, and the wait slept until the next signal (found
    // by the conformance test's run that migrates while in use, rarely); so was one that ran
    // while the hook built a select's poll array (a debug build, a loaded machine: the
    // conformance test's swapped select, rarely).
    loop {
        if mark.interrupted().is_some() {
            sys::set_errno(libc::EINTR);
            return -1;
        }
        if !fds.iter().any(|p| p.fd >= 0 && lookup_swapped(p.fd).is_some()) {
            // Only plain (or still plain) fds: one real call, unless one of them becomes ready
            // meanwhile (then `real_pass` does not wait, and the next round serves it). This
            // may be a later round of the call, or the first after the hook's own work since
            // the entry: the last look at the mark is made with the thread's signals held
            // back, and the sleep takes them back (see `Quiet`), so that a handler that runs
            // from the look on ends it (it waited for the next signal: the conformance test's
            // `sigspin`, rarely).
            let left = deadline.map(|d| d.saturating_sub(now_ns()));
            let Some(quiet) = Quiet::look(|| mark.interrupted().is_none()) else {
                sys::set_errno(libc::EINTR);
                return -1;
            };
            // SAFETY: forwarded.
            let rc = unsafe { real_pass(fds, left, sigmask, Some(quiet), &[]) };
            if rc != 0 || deadline.is_some_and(|d| now_ns() >= d) {
                return rc;
            }
            continue;
        }
        let (ready, plain) = scan(fds);
        let expired = deadline.is_some_and(|d| now_ns() >= d);
        if ready > 0 || expired {
            if !plain && ready > 0 {
                // Answered from the rings alone: no system call.
                for p in fds.iter_mut().filter(|p| p.fd >= 0 && lookup_swapped(p.fd).is_none()) {
                    p.revents = 0;
                }
                return ready as c_int;
            }
            // SAFETY: forwarded.
            return unsafe { real_pass(fds, Some(0), sigmask, None, &[]) };
        }
        if !spun {
            spun = true;
            match spin::spin_until(timeout_ns, mark, || any_ready(fds)) {
                Spun::Ready => continue,
                Spun::Idle => {}
                Spun::Interrupted => {
                    sys::set_errno(libc::EINTR);
                    return -1;
                }
            }
        }
        // Announce on every swapped connection, then re-check: a peer that transfers after our
        // fence sees the announcement and rings. The connections announced on are kept, and
        // exactly those withdraw after the sleep: one of the set that turns swapped during the
        // real call (a connection still plain steps to ready when its raw call ends, see
        // `RawCalls`) has no announcement to take back, and one that turns plain still has one.
        // (Withdrawn by a fresh lookup, the first took its end's counter below zero, to
        // `u32::MAX`, and the next sleep's announcement back to 0: the peer saw no sleeper, and
        // its transfers rang no doorbell while this end slept in the real call. The migrating
        // echo scenarios hung, once the peer's reads no longer rang on every read.)
        let mut announced: Vec<(usize, ConnRef)> = Vec::with_capacity(fds.len());
        let mut shared = false;
        let mut halfway = false;
        for (i, p) in fds.iter().enumerate().filter(|(_, p)| p.fd >= 0) {
            if let Some(c) = lookup_swapped(p.fd) {
                c.announce();
                shared |= c.is_shared();
                halfway |= c.phase() != Phase::Active;
                announced.push((i, c));
            }
        }
        tssx_shm::wait::settle();
        // (A handler that ran since the mark: no sleep; the loop's top answers EINTR. One that
        // runs from this look on is held back until the sleep starts: see `Quiet`.)
        let rc = match Quiet::look(|| !any_ready(fds) && mark.interrupted().is_none()) {
            Some(quiet) => {
                let wait = spin::sleep_budget(deadline, shared, halfway);
                // SAFETY: forwarded.
                unsafe { real_pass(fds, wait, sigmask, Some(quiet), &announced) }
            }
            None => 0,
        };
        let saved_errno = sys::errno();
        spin::woke();
        for (_, c) in announced {
            c.withdraw();
        }
        if rc != 0 {
            sys::set_errno(saved_errno);
            return rc;
        }
    }
}

/// A caller's fd set, as the kernel reads it: bit `fd % 64` of the `fd / 64`-th 64-bit word,
/// for any `nfds` (a program may allocate a bitmap larger than `FD_SETSIZE` and pass `nfds`
/// above 1024). Read and written byte by byte, and only the bytes that hold bits below the
/// call's limit ([`select_limit`]), so a bitmap exactly as large as `nfds` needs is never
/// overrun (libc's `FD_ISSET`/`FD_SET` stop at `FD_SETSIZE`).
#[derive(Clone, Copy)]
struct FdBits(*mut u8);

impl FdBits {
    /// The byte holding `fd`'s bit, and the bit in it.
    #[inline]
    fn at(fd: usize) -> (usize, u8) {
        #[cfg(target_endian = "little")]
        let byte = fd / 8;
        #[cfg(target_endian = "big")]
        let byte = (fd / 64) * 8 + 7 - (fd % 64) / 8;
        (byte, 1u8 << (fd % 8))
    }

    /// Whether `fd`'s bit is set (false for a null set).
    ///
    /// # Safety
    /// The set is null or valid for bits below the call's limit, and `fd` is below it.
    #[inline]
    unsafe fn get(self, fd: usize) -> bool {
        if self.0.is_null() {
            return false;
        }
        let (byte, bit) = Self::at(fd);
        // SAFETY: within the set per the contract.
        unsafe { self.0.add(byte).read() & bit != 0 }
    }

    /// Sets or clears `fd`'s bit.
    ///
    /// # Safety
    /// As [`FdBits::get`], and the set is not null.
    #[inline]
    unsafe fn put(self, fd: usize, on: bool) {
        let (byte, bit) = Self::at(fd);
        // SAFETY: within the set per the contract.
        unsafe {
            let p = self.0.add(byte);
            p.write(if on { p.read() | bit } else { p.read() & !bit });
        }
    }

    /// Whether any of the 8 fds from `fd` (a multiple of 8) has its bit set: one read skips
    /// eight empty fds.
    ///
    /// # Safety
    /// As [`FdBits::get`], for `fd`.
    #[inline]
    unsafe fn any8(self, fd: usize) -> bool {
        // SAFETY: as `get`; the byte holding `fd` holds `fd..fd + 8`.
        !self.0.is_null() && unsafe { self.0.add(Self::at(fd).0).read() } != 0
    }
}

/// The caller's three sets (each may be null).
type Sets = [*mut libc::fd_set; 3];

/// How many fds of a `select` with `nfds` the kernel looks at: `nfds`, capped at the size of
/// this process's fd table (the kernel ignores bits beyond it and never reads them; it is
/// `FDSize` in `/proc/self/status`, read only for `nfds` above `FD_SETSIZE`, which the table
/// always covers). `None` for a negative `nfds` (the kernel's EINVAL).
pub fn select_limit(nfds: c_int) -> Option<usize> {
    let n = usize::try_from(nfds).ok()?;
    if n <= libc::FD_SETSIZE {
        return Some(n);
    }
    let mut buf = [0u8; 2048];
    let len = tssx_shm::sys::read_file(c"/proc/self/status", &mut buf).unwrap_or(0);
    let table = buf[..len]
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"FDSize:"))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    Some(table.map_or(n, |t| n.min(t)))
}

/// Whether every non-null set is addressable for `limit` bits (the kernel reads whole 64-bit
/// words); otherwise the real call answers (EFAULT).
fn sets_addressable(sets: Sets, limit: usize) -> bool {
    let bytes = limit.div_ceil(64) * 8;
    sets.iter().all(|&s| s.is_null() || crate::iov::range(s.cast(), bytes) == crate::iov::Range::Valid)
}

/// Calls `f` with every fd below `limit` whose bit is set in one of `sets`, and the poll events
/// it asks for.
///
/// # Safety
/// The sets are null or valid for `limit` bits.
unsafe fn each_asked(sets: Sets, limit: usize, mut f: impl FnMut(usize, i16)) {
    let bits = sets.map(|s| FdBits(s.cast()));
    let mut fd = 0;
    while fd < limit {
        // SAFETY: `fd` is below the limit (and a multiple of 8 here).
        if fd % 8 == 0 && !bits.iter().any(|b| unsafe { b.any8(fd) }) {
            fd += 8;
            continue;
        }
        let mut events = 0;
        // SAFETY: `fd` is below the limit.
        let [r, w, e] = bits.map(|b| unsafe { b.get(fd) });
        if r {
            events |= libc::POLLIN;
        }
        if w {
            events |= libc::POLLOUT;
        }
        if e {
            events |= libc::POLLPRI;
        }
        if events != 0 {
            f(fd, events);
        }
        fd += 1;
    }
}

/// `select`/`pselect` with at least one swapped fd, through [`poll`]. Returns the number of set
/// bits, like select. `limit` comes from [`select_scope`]. `timeout_ns`: `None` waits forever.
/// `mark`: taken when the application's call entered the hook.
///
/// # Safety
/// The sets are null or valid for `limit` bits; `sigmask` is null or valid.
pub unsafe fn select(
    limit: usize,
    rd: *mut libc::fd_set,
    wr: *mut libc::fd_set,
    ex: *mut libc::fd_set,
    timeout_ns: Option<u64>,
    sigmask: *const sigset_t,
    mark: Mark,
) -> c_int {
    let sets = [rd, wr, ex];
    // Up to FD_SETSIZE entries on the stack (select is async-signal-safe); more only for a
    // larger set with more bits set.
    let mut count = 0;
    // SAFETY: per the contract.
    unsafe { each_asked(sets, limit, |_, _| count += 1) };
    let mut stack = [pollfd { fd: -1, events: 0, revents: 0 }; libc::FD_SETSIZE];
    let mut heap = Vec::new();
    let fds: &mut [pollfd] = if count <= stack.len() {
        &mut stack[..count]
    } else {
        heap.resize(count, pollfd { fd: -1, events: 0, revents: 0 });
        &mut heap
    };
    let mut n = 0;
    // SAFETY: per the contract.
    unsafe {
        each_asked(sets, limit, |fd, events| {
            if n < fds.len() {
                fds[n] = pollfd { fd: fd as c_int, events, revents: 0 };
                n += 1;
            }
        })
    };
    let fds = &mut fds[..n];
    // SAFETY: forwarded.
    let rc = unsafe { poll(fds, timeout_ns, sigmask, mark) };
    if rc < 0 {
        return rc;
    }
    if fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
        sys::set_errno(libc::EBADF);
        return -1;
    }
    // The kernel writes every set back: bits below the limit cleared, then the ready ones set.
    for set in sets.iter().filter(|s| !s.is_null()) {
        let bits = FdBits(set.cast());
        for fd in 0..limit {
            // SAFETY: below the limit of a non-null set.
            unsafe { bits.put(fd, false) };
        }
    }
    let mut count = 0;
    for p in fds.iter() {
        let r = p.revents;
        let mut mark = |set: *mut libc::fd_set, on: bool| {
            if on && !set.is_null() {
                // SAFETY: a non-null set; the fd is below the limit.
                unsafe { FdBits(set.cast()).put(p.fd as usize, true) };
                count += 1;
            }
        };
        mark(rd, p.events & libc::POLLIN != 0 && r & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0);
        mark(wr, p.events & libc::POLLOUT != 0 && r & (libc::POLLOUT | libc::POLLERR) != 0);
        mark(ex, p.events & libc::POLLPRI != 0 && r & libc::POLLPRI != 0);
    }
    count
}

/// Whether a `select` over `nfds` goes through [`select`]: some fd the sets ask for is tracked
/// and not plain for good ([`poll`] counts the still-plain ones as raw calls). Returns the
/// limit to pass on ([`select_limit`]), or `None` for the real call (nothing tracked, a
/// negative `nfds`, or a set the kernel cannot read: the real call gives its error).
///
/// # Safety
/// The sets are null or valid for `nfds` fds (as the kernel reads them).
pub unsafe fn select_scope(nfds: c_int, sets: Sets) -> Option<usize> {
    if !table::any_live() || nfds <= 0 {
        return None;
    }
    let limit = select_limit(nfds)?;
    if !sets_addressable(sets, limit) {
        return None;
    }
    let mut tracked = false;
    // SAFETY: the sets are addressable for `limit` bits, valid per the contract. Fds at or
    // above the table's size are never tracked.
    unsafe {
        each_asked(sets, limit.min(table::MAX_FDS), |fd, _| {
            tracked = tracked || lookup(fd as c_int).is_some_and(|c| c.phase() != Phase::Plain && c.phase() != Phase::Unconnected);
        })
    };
    tracked.then_some(limit)
}
