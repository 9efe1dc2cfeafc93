//! `epoll_ctl` and `epoll_wait`/`epoll_pwait`/`epoll_pwait2` for swapped fds.
//!
//! The kernel cannot see a swapped socket's readiness (the bytes are in shared memory), so the
//! hook keeps the application's interest in each swapped fd itself, per epoll instance, and
//! registers the *real* socket with the kernel for what only the kernel can report: doorbells
//! and the peer's death (`EPOLLIN | EPOLLRDHUP | EPOLLET`, data = [`TAG`] | fd). `epoll_wait`
//! then reports swapped fds from their rings (level- or edge-triggered, `EPOLLONESHOT` until
//! re-armed with `EPOLL_CTL_MOD`), merges what the kernel reports for plain fds, and sleeps in
//! the real call only after spinning briefly and announcing the sleep to every peer.
//!
//! A tracked socket that is still plain keeps the application's own kernel registration; the
//! hook records it ([`Conn::regs`]) and moves it into its table when the connection becomes
//! ready ([`adopt`]), whether it was registered before or after `connect`. A swapped fd that
//! turns plain gets the application's own registration back (`EPOLL_CTL_MOD`).
//!
//! Every wait in the kernel on an instance counts itself in the instance's gate ([`GATES`]): a
//! connection becomes ready only while no thread waits in an instance it is registered in (a
//! thread that went to sleep before its interest moved into the table would not have
//! announced it, and would sleep through the rings). An instance without swapped fds costs two
//! uncontended atomic operations per wait.
//!
//! Limit: a user `data` value equal to [`TAG`] | fd for an fd of the same instance would be
//! mistaken for a doorbell.

use std::{
    cell::UnsafeCell,
    ptr::null_mut,
    sync::atomic::{
        AtomicBool, AtomicPtr, AtomicU32, AtomicU64,
        Ordering::{Acquire, Relaxed, Release, SeqCst},
    },
};

use libc::{c_int, epoll_event, sigset_t};

use crate::{
    conn::{bits, Conn, Phase},
    spin::{self, now_ns},
    sys,
    table::{lookup, lookup_swapped, ConnRef, MAX_FDS},
};

/// High half of the kernel registration data of a swapped fd's real socket ("tSSX").
pub const TAG: u64 = 0x7453_5358_0000_0000;
const TAG_MASK: u64 = 0xffff_ffff_0000_0000;

/// What the application asked for one swapped fd in one epoll instance.
#[derive(Clone, Copy)]
struct Interest {
    fd: c_int,
    /// [`Conn::id`] of the connection registered, to tell it from a later one on the same fd.
    conn: u64,
    events: u32,
    data: u64,
    /// EPOLLONESHOT: disarmed after one report until EPOLL_CTL_MOD.
    armed: bool,
    /// Edge-triggered: the edge positions and bits at the last report.
    seen: (u64, u64, u32),
    /// Deleted by the application (`EPOLL_CTL_DEL`) while the kernel registration of the real
    /// socket stays: reported never, announced never, and a later `EPOLL_CTL_ADD` costs no
    /// system call (event loops such as redis-benchmark's delete and re-add write interest on
    /// every request).
    parked: bool,
}

impl Interest {
    fn new(fd: c_int, conn: u64, events: u32, data: u64) -> Interest {
        Interest { fd, conn, events, data, armed: true, seen: (u64::MAX, u64::MAX, 0), parked: false }
    }
}

/// The swapped interests of one epoll instance, behind a spin lock (epoll calls are not
/// async-signal-safe, so a lock is allowed; it is held for list updates and scans only).
struct Set {
    /// Acquire on lock, Release on unlock.
    locked: AtomicBool,
    entries: UnsafeCell<Vec<Interest>>,
    /// Round-robin start of the next scan, so a small `maxevents` starves nobody.
    next: UnsafeCell<usize>,
    /// When the kernel was last asked for plain fds' events while swapped fds were ready, and
    /// how many calls skipped asking since (see [`PLAIN_CHECK_EVERY`]). Relaxed: heuristics.
    plain_checked_ns: AtomicU64,
    plain_skips: AtomicU32,
    /// `EPOLLONESHOT` registrations of tracked sockets still plain, as (fd, data): when the
    /// kernel reports one, it disarms it; the hook notes that in the socket's recorded
    /// registration, so that it stays disarmed when it moves into the table.
    plain_oneshots: std::sync::Mutex<Vec<(c_int, u64)>>,
    /// Whether `plain_oneshots` is not empty (Relaxed: a hint to skip the scan).
    has_plain_oneshots: AtomicBool,
}

/// Bit of a recorded registration's events (unused by epoll): the kernel reported this
/// `EPOLLONESHOT` registration, which is disarmed until `EPOLL_CTL_MOD`.
pub const DISARMED: u32 = 1 << 27;

/// While swapped fds keep being ready, the kernel is asked for the plain fds' events (a system
/// call) on every this-many-th call, or when this much time passed: busy event loops with many
/// swapped connections save a system call per wait, and plain fds wait at most that long.
const PLAIN_CHECK_EVERY: u32 = 8;
const PLAIN_CHECK_NS: u64 = 200_000;
/// While a wait spins on the rings, every this many spin rounds it also asks the kernel (one
/// `poll` of the epoll fd, no wait) whether a plain fd of the instance is ready: an event loop
/// that serves plain clients and swapped upstreams (a proxy) must not keep its plain fds
/// waiting for the spin.
const KERNEL_CHECK_ROUNDS: u32 = 4;

// SAFETY: `entries` and `next` are only touched with `locked` held (see `Set::with`).
unsafe impl Sync for Set {}

impl Set {
    fn with<R>(&self, f: impl FnOnce(&mut Vec<Interest>, &mut usize) -> R) -> R {
        while self.locked.compare_exchange_weak(false, true, Acquire, Relaxed).is_err() {
            std::hint::spin_loop();
        }
        // SAFETY: the lock is held.
        let r = f(unsafe { &mut *self.entries.get() }, unsafe { &mut *self.next.get() });
        self.locked.store(false, Release);
        r
    }
}

/// epoll fd -> its swapped interests (null: none ever). Acquire/Release publish a new set.
static SETS: [AtomicPtr<Set>; MAX_FDS] = [const { AtomicPtr::new(null_mut()) }; MAX_FDS];

/// Per epoll fd: threads inside a kernel wait on it (low bits) and [`GATE_CLOSED`]. A waiter
/// adds one (`SeqCst`) and backs off while the gate is closed; [`gate_close`] closes it only
/// by a compare-and-swap from zero. A cache line each: waiters of different instances do not
/// share one.
static GATES: [Gate; MAX_FDS] = [const { Gate(AtomicU32::new(0)) }; MAX_FDS];

#[repr(align(64))]
struct Gate(AtomicU32);

/// Bit of a [`GATES`] word: a connection registered in the instance is becoming ready.
const GATE_CLOSED: u32 = 1 << 31;

/// Closes `epfd`'s gate if no thread waits in it now (see [`crate::phase`]).
pub fn gate_close(epfd: c_int) -> bool {
    usize::try_from(epfd).ok().and_then(|i| GATES.get(i)).is_some_and(|g| g.0.compare_exchange(0, GATE_CLOSED, SeqCst, SeqCst).is_ok())
}

/// Opens a gate [`gate_close`] closed.
pub fn gate_open(epfd: c_int) {
    if let Some(g) = usize::try_from(epfd).ok().and_then(|i| GATES.get(i)) {
        g.0.fetch_and(!GATE_CLOSED, SeqCst);
    }
}

/// A thread inside a kernel wait on an epoll instance (see [`GATES`]).
struct Waiting(Option<&'static AtomicU32>);

impl Waiting {
    fn enter(epfd: c_int) -> Waiting {
        let Some(g) = usize::try_from(epfd).ok().and_then(|i| GATES.get(i)) else { return Waiting(None) };
        loop {
            // SeqCst: pairs with the compare-and-swap of `gate_close`.
            if g.0.fetch_add(1, SeqCst) & GATE_CLOSED == 0 {
                return Waiting(Some(&g.0));
            }
            g.0.fetch_sub(1, SeqCst);
            // A connection is moving into this instance's table: a few stores and epoll_ctls.
            sys::sched_yield();
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.fetch_sub(1, SeqCst);
        }
    }
}

fn set_of(epfd: c_int) -> Option<&'static Set> {
    let ptr = SETS.get(usize::try_from(epfd).ok()?)?.load(Acquire);
    // SAFETY: non-null entries are leaked `Set`s, freed only when the epoll fd closes.
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

fn set_or_new(epfd: c_int) -> Option<&'static Set> {
    if let Some(s) = set_of(epfd) {
        return Some(s);
    }
    let slot = SETS.get(usize::try_from(epfd).ok()?)?;
    let new = Box::into_raw(Box::new(Set {
        locked: AtomicBool::new(false),
        entries: UnsafeCell::new(Vec::new()),
        next: UnsafeCell::new(0),
        plain_checked_ns: AtomicU64::new(0),
        plain_skips: AtomicU32::new(0),
        plain_oneshots: std::sync::Mutex::new(Vec::new()),
        has_plain_oneshots: AtomicBool::new(false),
    }));
    if slot.compare_exchange(null_mut(), new, Release, Acquire).is_err() {
        // SAFETY: ours, never shared.
        drop(unsafe { Box::from_raw(new) });
    }
    set_of(epfd)
}

/// `close(epfd)`: forget its interests.
pub fn closed(fd: c_int) {
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| SETS.get(i)) {
        let old = slot.swap(null_mut(), Acquire);
        if !old.is_null() {
            // SAFETY: the set was leaked by `set_or_new`; a concurrent epoll_wait on a closing
            // epoll fd is an application bug (EBADF), as with the kernel.
            drop(unsafe { Box::from_raw(old) });
        }
    }
}

/// Whether `fd` is an epoll instance with swapped interests.
#[inline]
pub fn has_set(epfd: c_int) -> bool {
    set_of(epfd).is_some()
}

/// The live connection an interest was registered for, if it is still that one and swapped.
fn live(i: &Interest) -> Option<ConnRef> {
    lookup_swapped(i.fd).filter(|c| c.id() == i.conn)
}

/// The kernel registration of a swapped fd's real socket: doorbells, EOF, and room on the
/// socket (for a writer whose writes are not on its ring yet).
fn tagged(fd: c_int) -> epoll_event {
    epoll_event { events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32, u64: TAG | fd as u64 }
}

/// The kernel registration of an [`Phase::Active`] connection's real socket: doorbells and
/// EOF only. Room on the socket no longer matters (both directions are on the rings), and its
/// edges (each time the peer drains a doorbell) would only wake this end for nothing.
fn tagged_active(fd: c_int) -> epoll_event {
    epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32, u64: TAG | fd as u64 }
}

/// Records the registration of a tracked, still plain socket (after the kernel took it), so
/// that [`adopt`] can move it when the connection becomes ready; the instance gets a table so
/// that its waits are counted and filtered.
fn record(c: &Conn, epfd: c_int, op: c_int, fd: c_int, user: Option<(u32, u64)>) {
    let mut regs = match c.regs.lock() {
        Ok(regs) => regs,
        Err(poisoned) => poisoned.into_inner(),
    };
    regs.retain(|&(f, e, _, _)| !(f == fd && e == epfd));
    let oneshot = match (op, user) {
        (libc::EPOLL_CTL_DEL, _) | (_, None) => None,
        (_, Some((events, data))) => {
            regs.push((fd, epfd, events, data));
            (events & libc::EPOLLONESHOT as u32 != 0).then_some(data)
        }
    };
    drop(regs);
    let Some(set) = set_or_new(epfd) else { return };
    let mut oneshots = set.plain_oneshots.lock().unwrap_or_else(|p| p.into_inner());
    oneshots.retain(|&(f, _)| f != fd);
    if let Some(data) = oneshot {
        oneshots.push((fd, data));
    }
    set.has_plain_oneshots.store(!oneshots.is_empty(), Relaxed);
}

/// The kernel reported `events` (plain fds' events, in the application's array): an
/// `EPOLLONESHOT` registration of a tracked socket among them is disarmed now (see
/// [`Set::plain_oneshots`]).
fn note_oneshots_fired(set: &Set, events: &[epoll_event]) {
    if !set.has_plain_oneshots.load(Relaxed) {
        return;
    }
    let mut oneshots = set.plain_oneshots.lock().unwrap_or_else(|p| p.into_inner());
    oneshots.retain(|&(fd, data)| {
        if !events.iter().any(|e| e.u64 == data) {
            return true;
        }
        if let Some(c) = lookup(fd) {
            let mut regs = c.regs.lock().unwrap_or_else(|p| p.into_inner());
            for reg in regs.iter_mut().filter(|r| r.0 == fd && r.3 == data) {
                reg.2 |= DISARMED;
            }
        }
        false
    });
    set.has_plain_oneshots.store(!oneshots.is_empty(), Relaxed);
}

/// Moves a recorded registration of `fd` in `epfd` into the hook's table, and the kernel's
/// registration of the real socket to the hook's own ([`tagged`]). Called while `epfd`'s gate
/// is closed (no thread waits in it).
pub fn adopt(epfd: c_int, fd: c_int, c: &Conn, events: u32, data: u64) {
    let Some(set) = set_or_new(epfd) else { return };
    let mut kernel = tagged(fd);
    // SAFETY: a live event; a failure (the fd or instance closed meanwhile) leaves nothing.
    if unsafe { sys::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut kernel) } != 0 {
        return;
    }
    let mut interest = Interest::new(fd, c.id(), events & !DISARMED, data);
    interest.armed = events & DISARMED == 0;
    set.with(|v, _| {
        v.retain(|i| i.fd != fd);
        v.push(interest);
    });
    let mut oneshots = set.plain_oneshots.lock().unwrap_or_else(|p| p.into_inner());
    oneshots.retain(|&(f, _)| f != fd);
    set.has_plain_oneshots.store(!oneshots.is_empty(), Relaxed);
}

/// Gives a no-longer-swapped fd the application's own registration back (none if it deleted
/// it: the parked kernel registration goes).
fn restore(epfd: c_int, i: &Interest) {
    let mut ev = epoll_event { events: i.events, u64: i.data };
    let op = if i.parked { libc::EPOLL_CTL_DEL } else { libc::EPOLL_CTL_MOD };
    // SAFETY: a live event; ENOENT (the fd was closed) is fine.
    unsafe { sys::epoll_ctl(epfd, op, i.fd, &mut ev) };
}

/// Fails an epoll_ctl the way the kernel would: -1 with `errno`.
fn fail(errno: c_int) -> Option<c_int> {
    sys::set_errno(errno);
    Some(-1)
}

/// `epoll_ctl` on a swapped fd. `None`: not swapped, use the real call.
///
/// The kernel registration of the real socket is the same for every interest ([`tagged`]), so
/// only the first `EPOLL_CTL_ADD` of a connection in an instance makes a system call: `MOD`
/// changes the hook's table, `DEL` parks the interest (see [`Interest::parked`]) and a later
/// `ADD` un-parks it. The errors the kernel would give for those (`EEXIST`, `ENOENT`) come from
/// the table.
///
/// # Safety
/// `event` is null or valid, as for epoll_ctl.
pub unsafe fn ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> Option<c_int> {
    if lookup(fd).is_none() && crate::table::is_unconnected(fd) && op == libc::EPOLL_CTL_ADD {
        // Registered before it connects: keep the registration with the socket from now on.
        crate::table::track(fd, tssx_common::segment::End::Client, Phase::Unconnected, None);
    }
    if let Some(c) = lookup(fd) {
        if c.phase() < Phase::Ready {
            // Still plain: the kernel's registration is the application's; remember it.
            // SAFETY: forwarded as received.
            let rc = unsafe { sys::epoll_ctl(epfd, op, fd, event) };
            if rc == 0 {
                // SAFETY: non-null and valid per the contract.
                let user = (!event.is_null()).then(|| unsafe { ((*event).events, (*event).u64) });
                sys::with_errno_kept(|| record(&c, epfd, op, fd, user));
            }
            return Some(rc);
        }
    }
    let Some(c) = lookup_swapped(fd) else {
        // A swapped fd that closed (its number reused now) or went plain left an interest
        // behind. If it went plain while parked, its kernel registration is the hook's, not the
        // application's: drop it, so that the application's own calls get the kernel's answers.
        // A fd that was never swapped costs no scan unless it is added.
        let same_socket = lookup(fd).map(|c| c.id());
        let set = set_of(epfd).filter(|_| op == libc::EPOLL_CTL_ADD || same_socket.is_some());
        if let Some(set) = set {
            set.with(|v, _| {
                v.retain(|i| {
                    if i.fd != fd || live(i).is_some() {
                        return true;
                    }
                    if i.parked && same_socket == Some(i.conn) {
                        restore(epfd, i);
                    }
                    false
                })
            });
        }
        return None;
    };
    let user = (!event.is_null()).then(|| {
        // SAFETY: non-null and valid per the contract.
        let e = unsafe { &*event };
        (e.events, e.u64)
    });
    if let Some(set) = set_of(epfd) {
        // Some(result): answered from the table; None: not registered here, ask the kernel.
        let answered = set.with(|v, _| {
            let i = v.iter_mut().find(|i| i.fd == fd && i.conn == c.id())?;
            Some(match (op, i.parked, user) {
                (libc::EPOLL_CTL_ADD, false, _) => Err(libc::EEXIST),
                (libc::EPOLL_CTL_MOD | libc::EPOLL_CTL_DEL, true, _) => Err(libc::ENOENT),
                (libc::EPOLL_CTL_DEL, false, _) => {
                    i.parked = true;
                    Ok(())
                }
                (libc::EPOLL_CTL_MOD, false, Some((events, _))) if events & libc::EPOLLEXCLUSIVE as u32 != 0 => Err(libc::EINVAL),
                (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, _, Some((events, data))) => {
                    *i = Interest::new(fd, c.id(), events, data);
                    Ok(())
                }
                (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, _, None) => Err(libc::EFAULT),
                _ => Err(libc::EINVAL),
            })
        });
        match answered {
            Some(Ok(())) => return Some(0),
            Some(Err(errno)) => return fail(errno),
            None => {}
        }
    }
    let mut kernel = tagged(fd);
    // SAFETY: a live event; the kernel checks epfd, fd, op and reports errors itself.
    let rc = unsafe { sys::epoll_ctl(epfd, op, fd, &mut kernel) };
    if rc != 0 {
        return Some(rc);
    }
    let Some(set) = set_or_new(epfd) else { return Some(rc) };
    set.with(|v, _| {
        v.retain(|i| i.fd != fd);
        if op != libc::EPOLL_CTL_DEL {
            if let Some((events, data)) = user {
                v.push(Interest::new(fd, c.id(), events, data));
            }
        }
    });
    Some(0)
}

/// Gives every interest of `set` whose connection turned plain the application's own kernel
/// registration back, and forgets it (as [`collect`] does for the ones it meets).
fn restore_plain(epfd: c_int, set: &Set) {
    set.with(|v, _| {
        let mut dead = false;
        for i in v.iter() {
            if lookup(i.fd).is_some_and(|c| c.id() == i.conn && c.phase() == Phase::Plain) {
                restore(epfd, i);
                dead = true;
            }
        }
        if dead {
            v.retain(|i| live(i).is_some());
        }
    })
}

/// Moves ready swapped interests into `out`; returns how many.
fn collect(epfd: c_int, set: &Set, out: &mut [epoll_event]) -> usize {
    set.with(|v, next| {
        let mut n = 0;
        let len = v.len();
        let mut dead = false;
        for k in 0..len {
            if n == out.len() {
                break;
            }
            let idx = (*next + k) % len;
            let i = &mut v[idx];
            let Some(c) = lookup(i.fd).filter(|c| c.id() == i.conn) else {
                dead = true;
                continue;
            };
            if c.phase() == Phase::Plain {
                restore(epfd, i);
                dead = true;
                continue;
            }
            if !i.armed || i.parked {
                continue;
            }
            c.tick(i.fd);
            let (mask, seen) = reportable(i, &c);
            if mask == 0 {
                continue;
            }
            if i.events & libc::EPOLLET as u32 != 0 {
                i.seen = seen;
            }
            if i.events & libc::EPOLLONESHOT as u32 != 0 {
                i.armed = false;
            }
            out[n] = epoll_event { events: mask, u64: i.data };
            n += 1;
        }
        if dead {
            v.retain(|i| live(i).is_some());
        }
        *next = if len == 0 { 0 } else { (*next + 1) % len };
        n
    })
}

/// Drops the kernel's events for tagged real sockets from `out[..m]` (draining doorbells or
/// noting a plain peer), keeping plain fds' events in order; returns how many remain.
fn filter(epfd: c_int, out: &mut [epoll_event], m: usize) -> usize {
    let mut kept = 0;
    for k in 0..m {
        let ev = out[k];
        if ev.u64 & TAG_MASK == TAG {
            let fd = (ev.u64 & 0xffff_ffff) as c_int;
            if let Some(c) = lookup_swapped(fd) {
                // Half-way, the socket carries data too: its edges are the connection's.
                c.socket_edge(ev.events);
                // Called after this thread withdrew its announcements.
                c.drain_doorbells_if_alone(fd, 0);
                if ev.events & libc::EPOLLOUT as u32 != 0 && c.phase() == Phase::Active {
                    // Once per registration: stop the socket's room edges (see `tagged_active`).
                    let mut quiet = tagged_active(fd);
                    // SAFETY: a live epoll_event; errno is kept (a failure changes nothing the
                    // application sees: the registration keeps waking it, filtered here).
                    sys::with_errno_kept(|| unsafe { sys::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut quiet) });
                }
            }
            continue;
        }
        out[kept] = ev;
        kept += 1;
    }
    kept
}

/// What interest `i` of connection `c` would report now, and (edge-triggered) what it has seen
/// once reported: the one rule [`collect`] and [`any_ready`] share, so that a wait never
/// finds something "ready" that the collection then does not report (a busy loop).
///
/// Level-triggered: the ready bits the application asked for. Edge-triggered: the same bits,
/// but only if something moved since the last report (new data or EOF in, room out, see
/// [`Conn::edges`], or a hang-up or error not reported yet): as the kernel, which on each
/// wake-up of an edge-triggered item reports all its ready bits, not just the new one.
fn reportable(i: &Interest, c: &Conn) -> (u32, (u64, u64, u32)) {
    let mut ready = c.readiness(i.fd);
    if i.events & libc::EPOLLPRI as u32 != 0 {
        ready |= c.urgent(i.fd);
    }
    let mask = ready & (i.events | bits::HUP | bits::ERR);
    if i.events & libc::EPOLLET as u32 == 0 || mask == 0 {
        return (mask, i.seen);
    }
    let (head, tail) = c.edges();
    let (seen_head, seen_tail, seen_bits) = i.seen;
    let mut edge = 0;
    if head != seen_head || (ready & bits::RDHUP != 0 && seen_bits & bits::RDHUP == 0) {
        edge |= bits::IN | bits::RDHUP;
    }
    if tail != seen_tail {
        edge |= bits::OUT;
    }
    edge |= (ready & !seen_bits) & (bits::HUP | bits::RDHUP | bits::ERR | libc::EPOLLPRI as u32);
    (if mask & edge != 0 { mask } else { 0 }, (head, tail, ready))
}

/// Whether any interest of `set` would be reported now (for the spin and the re-check).
/// Whether the kernel has events for the instance `epfd` (a plain fd's, or a doorbell), without
/// waiting.
fn kernel_ready(epfd: c_int) -> bool {
    let mut p = libc::pollfd { fd: epfd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd; no wait. errno is kept: the application's is not ours to change.
    sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, 0) }) > 0
}

fn any_ready(set: &Set) -> bool {
    set.with(|v, _| v.iter().any(|i| i.armed && !i.parked && live(i).is_some_and(|c| reportable(i, &c).0 != 0)))
}

/// Announces (or withdraws) a sleep on every connection of `set`; returns (any shared, any
/// pending) for the announcing call.
fn announce_all(set: &Set, on: bool) -> (bool, bool) {
    set.with(|v, _| {
        let (mut shared, mut halfway) = (false, false);
        for i in v.iter().filter(|i| !i.parked) {
            if let Some(c) = live(i) {
                if on {
                    c.announce();
                    shared |= c.is_shared();
                    halfway |= c.phase() != Phase::Active;
                } else {
                    c.withdraw();
                }
            }
        }
        (shared, halfway)
    })
}

/// Whether the instance has an interest of a swapped connection (otherwise a wait is the
/// kernel's alone, counted and filtered).
fn has_swapped(set: &Set) -> bool {
    set.with(|v, _| v.iter().any(|i| live(i).is_some()))
}

/// `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an instance with swapped interests.
/// `timeout_ns`: `None` waits forever.
///
/// # Safety
/// `events` is valid for `maxevents` entries; `sigmask` is null or valid.
pub unsafe fn wait(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout_ns: Option<u64>, sigmask: *const sigset_t) -> c_int {
    let Some(set) = set_of(epfd) else {
        // SAFETY: forwarded.
        return unsafe { real_wait(epfd, events, maxevents, timeout_ns, sigmask) };
    };
    if maxevents <= 0 || events.is_null() {
        sys::set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: valid for `maxevents` entries per the contract.
    let out = unsafe { std::slice::from_raw_parts_mut(events, maxevents as usize) };
    let deadline = timeout_ns.map(|t| now_ns().saturating_add(t));
    let mut spun = false;
    loop {
        if !has_swapped(set) {
            // Interests whose connection turned plain (handed back) get the application's own
            // registration back before the kernel waits: the hook's edge-triggered one would
            // not report bytes that arrived before this wait.
            restore_plain(epfd, set);
            // Only the kernel's events (the recorded interests are still plain): one counted
            // real wait, whose events of tagged sockets (an interest adopted meanwhile) are
            // the hook's, not the application's.
            let left = deadline.map(|d| d.saturating_sub(now_ns()));
            // SAFETY: the caller's array.
            let m = unsafe { real_wait(epfd, out.as_mut_ptr(), out.len() as c_int, left, sigmask) };
            if m <= 0 {
                return m;
            }
            let kept = filter(epfd, out, m as usize);
            note_oneshots_fired(set, &out[..kept]);
            let n = kept + collect(epfd, set, &mut out[kept..]);
            if n > 0 || deadline.is_some_and(|d| now_ns() >= d) {
                return n as c_int;
            }
            continue;
        }
        let n = collect(epfd, set, out);
        let expired = deadline.is_some_and(|d| now_ns() >= d);
        if n > 0 && !expired {
            let now = now_ns();
            let skips = set.plain_skips.load(Relaxed);
            if skips + 1 < PLAIN_CHECK_EVERY && now.saturating_sub(set.plain_checked_ns.load(Relaxed)) < PLAIN_CHECK_NS {
                set.plain_skips.store(skips + 1, Relaxed);
                return n as c_int;
            }
            set.plain_skips.store(0, Relaxed);
            set.plain_checked_ns.store(now, Relaxed);
        }
        if n > 0 || expired {
            // Plain fds' events too, without waiting.
            // SAFETY: the rest of the caller's array.
            let m = unsafe { real_wait(epfd, out[n..].as_mut_ptr(), (out.len() - n) as c_int, Some(0), sigmask) };
            let m = if m > 0 { filter(epfd, &mut out[n..], m as usize) } else { 0 };
            note_oneshots_fired(set, &out[n..n + m]);
            let more = if n + m < out.len() && m > 0 { collect(epfd, set, &mut out[n + m..]) } else { 0 };
            return (n + m + more) as c_int;
        }
        if !spun {
            spun = true;
            let mut rounds = 0u32;
            let ready = || {
                rounds = rounds.wrapping_add(1);
                any_ready(set) || (rounds.is_multiple_of(KERNEL_CHECK_ROUNDS) && kernel_ready(epfd))
            };
            if spin::spin_until(timeout_ns, ready) {
                // Ready on a ring, or in the kernel: the next pass collects it (the real wait
                // then returns at once).
                continue;
            }
        }
        let (shared, halfway) = announce_all(set, true);
        tssx_shm::wait::settle();
        let m = if any_ready(set) {
            0
        } else {
            let wait = spin::sleep_budget(deadline, shared, halfway);
            // SAFETY: the caller's array.
            unsafe { real_wait(epfd, out.as_mut_ptr(), out.len() as c_int, wait, sigmask) }
        };
        let saved_errno = sys::errno();
        spin::woke();
        announce_all(set, false);
        if m < 0 {
            sys::set_errno(saved_errno);
            return -1;
        }
        let kept = filter(epfd, out, m as usize);
        note_oneshots_fired(set, &out[..kept]);
        let n = kept + collect(epfd, set, &mut out[kept..]);
        if n > 0 {
            return n as c_int;
        }
    }
}

/// The real wait with a nanosecond timeout: `epoll_pwait` when it fits in milliseconds
/// (rounded up, so a short wait is never a busy loop), else `epoll_pwait2`.
///
/// # Safety
/// As [`wait`].
pub unsafe fn real_wait(
    epfd: c_int,
    events: *mut epoll_event,
    maxevents: c_int,
    timeout_ns: Option<u64>,
    sigmask: *const sigset_t,
) -> c_int {
    let ms = match timeout_ns {
        None => -1,
        Some(ns) => ns.div_ceil(1_000_000).min(c_int::MAX as u64) as c_int,
    };
    let _waiting = Waiting::enter(epfd);
    // SAFETY: forwarded.
    unsafe { sys::epoll_pwait(epfd, events, maxevents, ms, sigmask) }
}

/// Runs `f` (a real wait on `epfd`) counted in the instance's gate.
pub fn counted<R>(epfd: c_int, f: impl FnOnce() -> R) -> R {
    let _waiting = Waiting::enter(epfd);
    f()
}

/// `epoll_wait`/`epoll_pwait` on an instance without a hook table: the real call, counted in
/// the instance's gate; if a table appeared meanwhile, its tagged events are filtered out.
///
/// # Safety
/// As [`wait`].
pub unsafe fn plain_wait(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout_ms: c_int, sigmask: *const sigset_t) -> c_int {
    let rc = {
        let _waiting = Waiting::enter(epfd);
        // SAFETY: forwarded.
        unsafe { sys::epoll_pwait(epfd, events, maxevents, timeout_ms, sigmask) }
    };
    if rc > 0 && has_set(epfd) {
        // SAFETY: the kernel filled `rc` entries of the caller's array.
        let out = unsafe { std::slice::from_raw_parts_mut(events, rc as usize) };
        let kept = filter(epfd, out, rc as usize);
        if let Some(set) = set_of(epfd) {
            note_oneshots_fired(set, &out[..kept]);
        }
        if kept == 0 {
            // Only the hook's events: wait again, through the table.
            // SAFETY: forwarded.
            return unsafe { wait(epfd, events, maxevents, (timeout_ms >= 0).then(|| timeout_ms as u64 * 1_000_000), sigmask) };
        }
        return kept as c_int;
    }
    rc
}
