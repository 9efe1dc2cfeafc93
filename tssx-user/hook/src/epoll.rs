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
//! One interest list per instance, as in the kernel: the swapped interests live in a shared
//! mapping ([`Shared`]) that a forked child shares with its parent, as it shares the instance
//! (the list is made at the latest when a process with the instance forks), so registrations,
//! `EPOLL_CTL_MOD`/`DEL`, `EPOLLONESHOT` disarming and edge-triggered edges made or consumed in
//! one process are those of the other. A process can only read the rings of connections it
//! holds, so a connection that another process sharing the instance does not hold (made after
//! the fork) is handed back to the kernel before it is registered, and the kernel's list
//! serves it; the same for a connection whose last fd here closes while another process keeps
//! it ([`fd_closing`]).
//!
//! A registration belongs to the open file, as in the kernel: closing the registered fd while
//! a dup keeps the connection open keeps it (reported with its data, through the dup, until
//! the connection's last fd closes).
//!
//! One instance under several numbers in one process (`dup`, `dup2`, `dup3`, `F_DUPFD`: mio,
//! tokio's I/O driver, registers through a duplicate and waits on the original) is one set,
//! one gate and, for a socket still plain, one recorded registration, those of the number that
//! serves it ([`CANON`]); closing that number hands them to a duplicate.
//!
//! Limits: a user `data` value equal to [`TAG`] | fd for an fd of the same instance would be
//! mistaken for a doorbell. Instances the hook did not see being made (inherited through
//! `exec`, received with `SCM_RIGHTS`) have no shared list before a registration in this
//! process, and their duplicates are separate instances to the hook. A process that shared an
//! instance and died unreaped (a zombie) still counts as sharing it until it is reaped: registrations of new
//! connections made meanwhile are served by the kernel. A connection handed back so that the
//! kernel's list serves it may show one `EPOLLIN` without data there if its peer follows the
//! hand-back during a call that writes nothing (the peer's last doorbell is skipped by the next
//! read, which then finds no data). The hook's own fds sit from number 64 up
//! ([`crate::own`]): in a process with that many files open, an fd the application closed may
//! name a hook fd before its next call (`EPOLL_CTL_DEL` on it then fails with ENOENT, not
//! EBADF). An edge-triggered registration moved into the list while its
//! instance has other events ready (or is shared with another process) reports its socket's
//! ready bits once, though the kernel may have reported that edge already (see [`adopt`]).

use std::{
    cell::UnsafeCell,
    ptr::null_mut,
    sync::atomic::{
        AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
        Ordering::{Acquire, Relaxed, Release, SeqCst},
    },
};

use libc::{c_int, epoll_event, sigset_t};

use crate::{
    conn::{bits, Conn, Phase},
    signals::Mark,
    spin::{self, now_ns, Spun},
    sys,
    table::{lookup, lookup_swapped, ConnRef, FdBits, MAX_FDS},
};

/// High half of the kernel registration data of a swapped fd's real socket ("tSSX").
pub const TAG: u64 = 0x7453_5358_0000_0000;
const TAG_MASK: u64 = 0xffff_ffff_0000_0000;

/// Whether a kernel event is one of the hook's own registrations ([`TAG`]).
#[inline]
fn is_tagged(e: &epoll_event) -> bool {
    e.u64 & TAG_MASK == TAG
}

/// What the application asked for one swapped fd in one epoll instance: an entry of the
/// instance's shared list ([`Shared`]), the same in every process that shares the instance.
#[derive(Clone, Copy)]
struct Interest {
    /// The fd the registration was made with (the kernel's key is this fd and its file: the
    /// registration stays while a dup keeps the file open, see [`Alias`]).
    fd: c_int,
    /// [`Conn::id`] of the connection registered, to tell it from a later one on the same fd.
    /// A fork copies the ids, so processes that share an instance agree on them (a connection
    /// made after the instance became shared is never entered, see [`Set::admits`]).
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

    /// Whether this is the registration of connection `conn` under fd number `fd`.
    fn is(&self, fd: c_int, conn: u64) -> bool {
        self.fd == fd && self.conn == conn
    }
}

/// How many entries one instance's list holds (address space reserved, pages touched as used).
/// A registration beyond it is served by the kernel (the connection is handed back).
const CAP: usize = 1 << 14;
/// How many processes one instance's list names (more sharers: shared for good).
const PIDS: usize = 64;

/// The part of an epoll instance's state that every process holding the instance must see,
/// as the kernel keeps one interest list per instance: the swapped interests, their
/// `EPOLLONESHOT` and edge-triggered state, and the processes that share it. It lives in a
/// `MAP_SHARED` anonymous mapping made by the process that first needed it (at the first
/// registration of a tracked socket, or at the first `fork` while the instance is open), so a
/// forked child shares it with its parent from the fork on, as it shares the instance.
///
/// The list is guarded by a spin lock in the mapping (`lock`: the holder's thread id, unique
/// across processes; Acquire on lock, Release on unlock; a holder whose process died is seen
/// with `kill(tid, 0)` and displaced). A fork while another thread holds it is harmless: that
/// thread, in the parent, still unlocks the one lock both processes see.
#[repr(C)]
struct Shared {
    lock: AtomicU32,
    /// Entries in use (only touched with the lock held; Relaxed).
    len: AtomicU32,
    /// Processes holding the instance (0: free slot). Relaxed: re-checked against the kernel
    /// (`kill`), and a stale entry only makes the hook more careful.
    pids: [AtomicU32; PIDS],
    /// More processes than `pids` holds share the instance: shared for good. Relaxed.
    crowded: AtomicBool,
}

/// Byte offset of the entries in the mapping.
const ENTRIES_AT: usize = std::mem::size_of::<Shared>().next_multiple_of(std::mem::align_of::<Interest>());
/// Size of one instance's mapping.
const MAP_LEN: usize = (ENTRIES_AT + CAP * std::mem::size_of::<Interest>()).next_multiple_of(4096);

/// A swapped registration whose fd was closed while a dup keeps the connection open: the
/// kernel keeps the registration (it belongs to the open file), and so does the hook, which
/// reaches the connection through the lease kept here and any of its remaining fds.
struct Alias {
    fd: c_int,
    conn: ConnRef,
    /// An fd of the connection in this process now (-1: look it up).
    via: c_int,
}

/// The process-local part of an instance's state, guarded by the shared lock too.
struct Local {
    /// Round-robin start of the next scan, so a small `maxevents` starves nobody.
    next: usize,
    aliases: Vec<Alias>,
}

/// One epoll instance as this process sees it: the shared list, and what stays per process.
struct Set {
    shared: *mut Shared,
    local: UnsafeCell<Local>,
    /// Connections with an id at or above this were made after the fork that made the instance
    /// shared (u64::MAX: never shared): the other processes do not hold them. Relaxed: set by
    /// the thread that forks.
    fork_id: AtomicU64,
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

// SAFETY: the mapping's list and `local` are only touched with the shared lock held (see
// `Set::with`); the rest is atomic or a mutex.
unsafe impl Sync for Set {}
// SAFETY: as above.
unsafe impl Send for Set {}

/// This process's pid, cached (0: not known yet; reset in a forked child). Relaxed: a value of
/// this process.
static MY_PID: AtomicU32 = AtomicU32::new(0);

pub(crate) fn my_pid() -> u32 {
    match MY_PID.load(Relaxed) {
        0 => {
            let pid = tssx_shm::sys::getpid();
            MY_PID.store(pid, Relaxed);
            pid
        }
        pid => pid,
    }
}

/// Whether process `pid` exists (a zombie still counts until it is reaped).
fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks; errno is kept by the raw call.
    let rc = unsafe { tssx_shm::sys::syscall(libc::SYS_kill, [pid as usize, 0, 0, 0, 0, 0]) };
    !matches!(rc, Err(tssx_shm::sys::Errno(libc::ESRCH)))
}

/// The entries of a locked list.
struct List<'a> {
    shared: &'a Shared,
    base: *mut Interest,
}

impl List<'_> {
    fn len(&self) -> usize {
        (self.shared.len.load(Relaxed) as usize).min(CAP)
    }

    fn items(&mut self) -> &mut [Interest] {
        // SAFETY: the lock is held; the first `len` entries were written by `push`.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len()) }
    }

    fn iter(&mut self) -> std::slice::Iter<'_, Interest> {
        self.items().iter()
    }

    fn iter_mut(&mut self) -> std::slice::IterMut<'_, Interest> {
        self.items().iter_mut()
    }

    /// Appends `i`; false if the list is full.
    fn push(&mut self, i: Interest) -> bool {
        let len = self.len();
        if len == CAP {
            return false;
        }
        // SAFETY: within the mapping; the lock is held.
        unsafe { self.base.add(len).write(i) };
        self.shared.len.store(len as u32 + 1, Relaxed);
        true
    }

    /// Keeps the entries for which `keep` is true, in order.
    fn retain(&mut self, mut keep: impl FnMut(&mut Interest) -> bool) {
        let items = self.items();
        let mut kept = 0;
        for k in 0..items.len() {
            if keep(&mut items[k]) {
                items[kept] = items[k];
                kept += 1;
            }
        }
        self.shared.len.store(kept as u32, Relaxed);
    }
}

impl Set {
    fn shared(&self) -> &Shared {
        // SAFETY: the mapping lives as long as the set.
        unsafe { &*self.shared }
    }

    /// Whether the list holds interests (see [`has_interests`]). Relaxed: a hint, read without
    /// the lock.
    #[inline]
    fn has_interests(&self) -> bool {
        self.shared().len.load(Relaxed) != 0
    }

    fn with<R>(&self, f: impl FnOnce(&mut List<'_>, &mut Local) -> R) -> R {
        match self.try_with(f) {
            Ok(r) => r,
            // This thread holds the lock: a signal handler interrupted an epoll call of its
            // own thread and made one (epoll calls are not async-signal-safe). The list is
            // mid-update and `f` must not see it; the interrupted call cannot finish first:
            // the deadlock any such handler risks (only `close` is served, see `try_with`).
            Err(_) => loop {
                sys::sched_yield();
            },
        }
    }

    /// As [`Set::with`], but `Err(f)` instead of waiting for a lock this thread holds (a
    /// `close` in a signal handler that interrupted this thread's epoll call).
    fn try_with<R, F: FnOnce(&mut List<'_>, &mut Local) -> R>(&self, f: F) -> Result<R, F> {
        let shared = self.shared();
        let me = sys::thread_id();
        let mut spins = 0u32;
        loop {
            match shared.lock.compare_exchange_weak(0, me, Acquire, Relaxed) {
                Ok(_) => break,
                Err(holder) if holder == me => return Err(f),
                Err(holder) => {
                    spins = spins.wrapping_add(1);
                    if spins.is_multiple_of(1024) {
                        if holder != 0 && holder != me && !alive(holder) {
                            // The holder died inside a list update: take the lock over.
                            let _ = shared.lock.compare_exchange(holder, 0, Relaxed, Relaxed);
                        }
                        sys::sched_yield();
                    }
                    std::hint::spin_loop();
                }
            }
        }
        // SAFETY: past the header, within the mapping.
        let base = unsafe { self.shared.cast::<u8>().add(ENTRIES_AT).cast::<Interest>() };
        let mut list = List { shared, base };
        // SAFETY: the lock is held.
        let r = f(&mut list, unsafe { &mut *self.local.get() });
        shared.lock.store(0, Release);
        Ok(r)
    }

    /// Calls `f` with each live process other than this one that holds the instance; false
    /// (and stops) as soon as `f` does, or if more processes share it than the list names.
    /// Forgets the dead ones.
    fn all_others(&self, mut f: impl FnMut(u32) -> bool) -> bool {
        let shared = self.shared();
        if shared.crowded.load(Relaxed) {
            return false;
        }
        let me = my_pid();
        shared.pids.iter().all(|slot| {
            let pid = slot.load(Relaxed);
            if pid == 0 || pid == me {
                return true;
            }
            if !alive(pid) {
                let _ = slot.compare_exchange(pid, 0, Relaxed, Relaxed);
                return true;
            }
            f(pid)
        })
    }

    /// Whether another live process holds the instance.
    fn shared_with_others(&self) -> bool {
        !self.all_others(|_| false)
    }

    /// Names this process as a holder of the instance.
    fn join(&self) {
        let shared = self.shared();
        let me = my_pid();
        if shared.pids.iter().any(|p| p.load(Relaxed) == me) {
            return;
        }
        // A free slot, else one of a process that died.
        for dead_ok in [false, true] {
            for slot in &shared.pids {
                let pid = slot.load(Relaxed);
                if (pid == 0 || (dead_ok && !alive(pid))) && slot.compare_exchange(pid, me, Relaxed, Relaxed).is_ok() {
                    return;
                }
            }
        }
        shared.crowded.store(true, Relaxed);
    }

    /// This process no longer holds the instance.
    fn leave(&self) {
        let me = my_pid();
        for slot in &self.shared().pids {
            let _ = slot.compare_exchange(me, 0, Relaxed, Relaxed);
        }
    }

    /// Whether connection `c` (registered through `fd`) may be served in this instance's
    /// list: always, unless another process shares the instance and cannot serve `c` too, which
    /// it can only if it holds `c` under the same number and knows it by the same id (it was
    /// forked from this process after `c` was made, see [`Set::fork_id`]; its
    /// `/proc/PID/fd/FD` names the same socket). Otherwise the kernel would report `c` to a
    /// process whose hook cannot read its rings: `c` is handed back to the kernel, whose list
    /// then serves every process.
    fn admits(&self, c: &Conn, fd: c_int) -> bool {
        self.others_hold(c, fd, &[fd])
    }

    /// Whether every other process sharing the instance holds `c` (whose fd here is `fd`) as
    /// the fds `numbers` (as [`Set::admits`]: made before the fork that shared the instance, and
    /// the same socket under each number in `/proc/PID/fd`). True if no other process shares
    /// it.
    fn others_hold(&self, c: &Conn, fd: c_int, numbers: &[c_int]) -> bool {
        if !self.shared_with_others() {
            return true;
        }
        if c.id() >= self.fork_id.load(Relaxed) {
            return false;
        }
        let Ok(st) = tssx_shm::sys::fstat(fd) else { return false };
        let want = format!("socket:[{}]", st.st_ino);
        self.all_others(|pid| {
            numbers.iter().all(|fd| {
                let Ok(path) = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}")) else { return false };
                let mut buf = [0u8; 64];
                tssx_shm::sys::readlink(&path, &mut buf).is_ok_and(|n| &buf[..n.min(buf.len())] == want.as_bytes())
            })
        })
    }
}

/// epoll fd -> its set (null: none yet). Acquire/Release publish a new set.
static SETS: [AtomicPtr<Set>; MAX_FDS] = [const { AtomicPtr::new(null_mut()) }; MAX_FDS];
/// How many entries of [`SETS`] are set (Relaxed: a hint that lets fork and close skip the scan).
static LIVE_SETS: AtomicUsize = AtomicUsize::new(0);
/// One bit per fd whose entry of [`SETS`] is set, so that a scan reads 1024 words, not 65536
/// pointers. Relaxed: a hint; [`SETS`] carries the ordering.
static SET_BITS: FdBits = FdBits::new();
/// One bit per fd: an epoll instance made by `epoll_create`/`epoll_create1` in this process and
/// not closed (a `fork` gives each one a shared list). Relaxed: a hint about this process's fds.
static EPOLL_FDS: FdBits = FdBits::new();

/// `epoll_create`/`epoll_create1` returned `fd`.
pub fn created(fd: c_int) {
    EPOLL_FDS.set(fd);
    // A new instance: whatever an earlier file on this number was an alias of is gone.
    if ALIASED.get(fd) {
        ALIASED.clear(fd);
        if let Some(c) = usize::try_from(fd).ok().and_then(|i| CANON.get(i)) {
            c.store(0, Relaxed);
        }
    }
}

/// Per fd: the number whose entries of [`SETS`] and [`GATES`] serve the epoll instance this fd
/// is a duplicate of, plus one (0: the fd's own entries). Several numbers of one instance are
/// one instance to the hook, as to the kernel: mio (tokio's I/O driver) registers every socket
/// through a duplicate of its epoll fd (`Registry::try_clone`) and waits on the original, and
/// a wait on one number must report (and filter) what was registered through the other.
/// Relaxed: set by the thread that made the duplicate, before the application can name it.
static CANON: [AtomicI32; MAX_FDS] = [const { AtomicI32::new(0) }; MAX_FDS];
/// One bit per fd that is a duplicate of another epoll fd's instance ([`CANON`]) or has
/// duplicates: its close goes through [`closed`]. Relaxed: as [`CANON`].
static ALIASED: FdBits = FdBits::new();

/// The number whose entries serve `epfd`'s instance (see [`CANON`]): `epfd` itself unless it
/// is a duplicate. One load.
#[inline]
pub(crate) fn canon(epfd: c_int) -> c_int {
    match usize::try_from(epfd).ok().and_then(|i| CANON.get(i)).map(|c| c.load(Relaxed)) {
        Some(n) if n > 0 => n - 1,
        _ => epfd,
    }
}

/// `dup`, `dup2`, `dup3` or `fcntl(F_DUPFD*)` made `new` a duplicate of `old`: if `old` is an
/// epoll instance this process made (or one the hook keeps a set for), `new` is that instance
/// too (see [`CANON`]). Nothing for any other fd (one load).
pub fn duplicated(old: c_int, new: c_int) {
    if old == new || !(EPOLL_FDS.get(old) || has_set(old)) {
        return;
    }
    let Some(slot) = usize::try_from(new).ok().and_then(|i| CANON.get(i)) else { return };
    let home = canon(old);
    slot.store(home + 1, Relaxed);
    ALIASED.set(new);
    ALIASED.set(home);
    EPOLL_FDS.set(new);
}

/// Whether closing `fd` must go through [`closed`] for its epoll state: it has a set, or is
/// (or has) a duplicate.
#[inline]
pub fn has_state(fd: c_int) -> bool {
    ALIASED.get(fd) || has_set(fd)
}

/// `fd` is closing and is a duplicate of an instance, or has duplicates: unlinks it. `true`
/// when the instance lives on under another number (its set, if any, is kept there), `false`
/// when `fd` was its last number here (the caller frees what `fd` holds).
fn unalias(fd: c_int) -> bool {
    ALIASED.clear(fd);
    let Some(slot) = usize::try_from(fd).ok().and_then(|i| CANON.get(i)) else { return false };
    if slot.swap(0, Relaxed) != 0 {
        // A duplicate: its instance's entries are another number's.
        return true;
    }
    // The number whose entries serve the instance: the first duplicate found takes them over,
    // and the others name it from now on (rare: every fd with state is below the high-water
    // mark).
    let mut heir: Option<c_int> = None;
    for (i, c) in CANON.iter().enumerate().take(crate::table::state_limit()) {
        if c.load(Relaxed) == fd + 1 {
            match heir {
                None => {
                    c.store(0, Relaxed);
                    heir = Some(i as c_int);
                }
                Some(h) => {
                    c.store(h + 1, Relaxed);
                    ALIASED.set(h);
                }
            }
        }
    }
    let Some(heir) = heir else { return false };
    // The records of still plain connections registered in the instance name it by the number
    // that served it (see `record`): they name the heir now.
    crate::table::for_each_fd_conn(|c| {
        let mut regs = c.regs.lock().unwrap_or_else(|p| p.into_inner());
        regs.iter_mut().filter(|r| r.1 == fd).for_each(|r| r.1 = heir);
    });
    let old = SETS[fd as usize].swap(null_mut(), Acquire);
    if !old.is_null() {
        SET_BITS.clear(fd);
        SETS[heir as usize].store(old, Release);
        SET_BITS.set(heir);
    }
    true
}

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
    usize::try_from(canon(epfd))
        .ok()
        .and_then(|i| GATES.get(i))
        .is_some_and(|g| g.0.compare_exchange(0, GATE_CLOSED, SeqCst, SeqCst).is_ok())
}

/// Opens a gate [`gate_close`] closed.
pub fn gate_open(epfd: c_int) {
    if let Some(g) = usize::try_from(canon(epfd)).ok().and_then(|i| GATES.get(i)) {
        g.0.fetch_and(!GATE_CLOSED, SeqCst);
    }
}

/// A thread inside a kernel wait on an epoll instance (see [`GATES`]).
struct Waiting(Option<&'static AtomicU32>);

impl Waiting {
    fn enter(epfd: c_int) -> Waiting {
        let Some(g) = usize::try_from(canon(epfd)).ok().and_then(|i| GATES.get(i)) else { return Waiting(None) };
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
    let ptr = SETS.get(usize::try_from(canon(epfd)).ok()?)?.load(Acquire);
    // SAFETY: non-null entries are leaked `Set`s, freed only when the epoll fd closes.
    (!ptr.is_null()).then(|| unsafe { &*ptr })
}

fn set_or_new(epfd: c_int) -> Option<&'static Set> {
    if let Some(s) = set_of(epfd) {
        return Some(s);
    }
    // The set of a duplicate's instance lives under the number that serves it.
    let epfd = canon(epfd);
    let slot = SETS.get(usize::try_from(epfd).ok()?)?;
    crate::table::note_state(epfd as usize);
    // SAFETY: a fresh anonymous shared mapping (no file, no fixed address); untouched pages
    // cost nothing (MAP_NORESERVE), the first use zero-fills them.
    let map = unsafe {
        libc::mmap(
            null_mut(),
            MAP_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return None;
    }
    let new = Box::into_raw(Box::new(Set {
        shared: map.cast(),
        local: UnsafeCell::new(Local { next: 0, aliases: Vec::new() }),
        fork_id: AtomicU64::new(u64::MAX),
        plain_checked_ns: AtomicU64::new(0),
        plain_skips: AtomicU32::new(0),
        plain_oneshots: std::sync::Mutex::new(Vec::new()),
        has_plain_oneshots: AtomicBool::new(false),
    }));
    // SAFETY: ours until published.
    unsafe { &*new }.join();
    if slot.compare_exchange(null_mut(), new, Release, Acquire).is_err() {
        // SAFETY: ours, never shared; the mapping is ours too.
        unsafe { drop_set(new) };
    } else {
        LIVE_SETS.fetch_add(1, Relaxed);
        SET_BITS.set(epfd);
    }
    set_of(epfd)
}

/// Frees a set and unmaps this process's view of its list.
///
/// # Safety
/// `set` came from `set_or_new` and nothing uses it any more.
unsafe fn drop_set(set: *mut Set) {
    // SAFETY: per the contract.
    let set = unsafe { Box::from_raw(set) };
    // SAFETY: the mapping made for this set, unused from now on.
    let _ = unsafe { tssx_shm::sys::munmap(set.shared.cast(), MAP_LEN) };
}

/// Calls `f` for every epoll instance of this process that has a set.
fn for_each_set(mut f: impl FnMut(c_int, &'static Set)) {
    if LIVE_SETS.load(Relaxed) == 0 {
        return;
    }
    for fd in SET_BITS.ones() {
        if let Some(set) = set_of(fd) {
            f(fd, set);
        }
    }
}

/// `close(epfd)`: forget its interests (in this process: another one that shares the
/// instance keeps the list).
pub fn closed(fd: c_int) {
    EPOLL_FDS.clear(fd);
    if ALIASED.get(fd) && unalias(fd) {
        // Another number keeps the instance (and its set) open.
        return;
    }
    if let Some(slot) = usize::try_from(fd).ok().and_then(|i| SETS.get(i)) {
        let old = slot.swap(null_mut(), Acquire);
        if !old.is_null() {
            LIVE_SETS.fetch_sub(1, Relaxed);
            SET_BITS.clear(fd);
            // SAFETY: the set was leaked by `set_or_new`; a concurrent epoll_wait on a closing
            // epoll fd is an application bug (EBADF), as with the kernel.
            unsafe {
                (*old).leave();
                drop_set(old);
            }
        }
    }
}

/// Before `fork`: every epoll instance of this process gets its shared list (the child shares
/// the instance), and an instance that was private until now notes which connections the child
/// will hold (every one made so far).
pub fn before_fork() {
    for fd in EPOLL_FDS.ones() {
        let _ = set_or_new(fd);
    }
    let mark = crate::table::id_mark();
    for_each_set(|_, set| {
        if !set.shared_with_others() {
            set.fork_id.store(mark, Relaxed);
        }
    });
}

/// In the child after `fork`: it holds every instance of its parent too.
pub fn in_child() {
    MY_PID.store(0, Relaxed);
    for_each_set(|_, set| set.join());
}

/// Before an `exec`: the new image does not see the lists (a close-on-exec instance is gone).
pub fn leaving_image() {
    for_each_set(|_, set| set.leave());
}

/// The `exec` failed: this image holds its instances again.
pub fn image_stays() {
    for_each_set(|_, set| set.join());
}

/// Whether `fd` is an epoll instance the hook keeps a set for (made at the first registration
/// of a tracked socket, or at a fork while the instance is open; see [`has_interests`]).
#[inline]
pub fn has_set(epfd: c_int) -> bool {
    set_of(epfd).is_some()
}

/// Whether `epfd`'s set lists interests of its own (swapped fds, parked ones, or one left
/// behind by a closed fd): only then must a wait or an `epoll_ctl` of an untracked fd go
/// through the hook's table. An instance whose tracked sockets are all still plain (their
/// registrations are the application's own, in the kernel) has none: nginx with an upstream
/// connection per request. Relaxed: a hint; [`plain_wait`] looks again once it is counted in
/// the instance's gate, which a connection's interest moves into the list only while closed
/// (see [`gate_close`]).
#[inline]
pub fn has_interests(epfd: c_int) -> bool {
    set_of(epfd).is_some_and(Set::has_interests)
}

/// This process's connection for interest `i` (in any phase) and an fd of it here: the
/// registered fd, or (after that was closed while a dup keeps the connection) another one.
fn resolve(aliases: &mut [Alias], i: &Interest) -> Option<(ConnRef, c_int)> {
    if let Some(c) = lookup(i.fd).filter(|c| c.id() == i.conn) {
        return Some((c, i.fd));
    }
    let a = aliases.iter_mut().find(|a| a.fd == i.fd && a.conn.id() == i.conn)?;
    // Acquire: as every reader of the count (see `table`).
    if a.conn.fds.load(Acquire) == 0 {
        return None;
    }
    let cell = a.conn.cell();
    if lookup(a.via).is_none_or(|c| c.cell() != cell) {
        let hint = a.conn.last_fd.load(Relaxed);
        a.via = if lookup(hint).is_some_and(|c| c.cell() == cell) {
            hint
        } else {
            // Rare: a registered fd closed, and the hint is stale. Acquire: as `lookup`.
            crate::table::TABLE.iter().position(|slot| slot.load(Acquire) == cell).map_or(-1, |fd| fd as c_int)
        };
    }
    lookup(a.via).filter(|c| c.cell() == cell).map(|c| (c, a.via))
}

/// The live swapped connection of an interest, if this process has it.
fn live(aliases: &mut [Alias], i: &Interest) -> Option<(ConnRef, c_int)> {
    resolve(aliases, i).filter(|(c, _)| {
        let phase = c.phase();
        phase >= Phase::Ready && phase != Phase::Plain
    })
}

/// Before `fd` is closed (close, or dup2/dup3 over it): its swapped registrations follow the
/// kernel's, which belong to the open file. If a dup keeps the connection open here, they stay
/// (reached through the dup); if this was the connection's last fd anywhere, they go; if
/// another process still holds the connection, that process cannot be served from this list
/// (the kernel keeps reporting the file to this one): the connection is handed back and its
/// registrations become the application's own kernel registrations.
pub fn fd_closing(fd: c_int) {
    if LIVE_SETS.load(Relaxed) == 0 {
        return;
    }
    let Some(c) = lookup_swapped(fd) else { return };
    let id = c.id();
    // Acquire: as every reader of the count.
    let last_here = c.fds.load(Acquire) <= 1;
    let others = last_here && c.header().refcount[c.end().index()].load(Acquire) > 1;
    let mut handed_back = false;
    for_each_set(|epfd, set| {
        // A close in a signal handler that interrupted this thread's epoll call leaves the
        // list as it is (as if the registration had been made through the dup).
        let registered = set.try_with(|list, _| list.iter().any(|i| i.conn == id)).unwrap_or(false);
        if !registered {
            return;
        }
        if others {
            // Every other process sharing the instance (forked with it) holds the connection
            // under the registered numbers: the list serves them, and the registration lives
            // on with the file, as the kernel's (a child closing its copies before it exits
            // took it away from its parent; found by the differential test's fork).
            let numbers =
                set.try_with(|list, _| list.iter().filter(|i| i.conn == id).map(|i| i.fd).collect::<Vec<_>>()).unwrap_or_default();
            if !numbers.is_empty() && set.shared_with_others() && set.others_hold(&c, fd, &numbers) {
                let _ = set.try_with(|_, local| local.aliases.retain(|a| a.conn.id() != id));
                return;
            }
        }
        if others && !handed_back {
            handed_back = true;
            sys::with_errno_kept(|| hand_back_for_kernel(&c, fd));
        }
        let _ = set.try_with(|list, local| {
            if !last_here {
                let known = local.aliases.iter().any(|a| a.fd == fd && a.conn.id() == id);
                if !known && list.iter().any(|i| i.is(fd, id)) {
                    if let Some(lease) = lookup(fd) {
                        local.aliases.push(Alias { fd, conn: lease, via: -1 });
                    }
                }
                return;
            }
            list.retain(|i| {
                if i.conn != id {
                    return true;
                }
                if others && i.fd == fd {
                    sys::with_errno_kept(|| restore(epfd, i));
                }
                false
            });
            local.aliases.retain(|a| a.conn.id() != id);
        });
    });
}

/// Whether a tracked socket registered in `epfd` while plain may move into its list when it
/// becomes ready (see [`Set::admits`]); otherwise it stays plain.
pub fn may_adopt(epfd: c_int, c: &Conn, fd: c_int) -> bool {
    set_of(epfd).is_none_or(|set| set.admits(c, fd))
}

/// The kernel registration of a swapped fd's real socket: doorbells, EOF, and room on the
/// socket (for a writer whose writes are not on its ring yet).
fn tagged(fd: c_int) -> epoll_event {
    epoll_event { events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32, u64: TAG | fd as u64 }
}

/// The kernel registration of an [`Phase::Active`] connection's real socket once the peer took
/// the bytes this end wrote to it: doorbells and EOF only. Room on the socket no longer matters
/// (both directions are on the rings), and its edges (each time the peer drains a doorbell)
/// would only wake this end for nothing.
fn tagged_active(fd: c_int) -> epoll_event {
    epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32, u64: TAG | fd as u64 }
}

/// Records the application's registration of the still plain `c` under `fd` in `epfd` (made
/// while the socket was unconnected: see `preconnect`).
pub(crate) fn record_plain(c: &Conn, epfd: c_int, fd: c_int, events: u32, data: u64) {
    record(c, epfd, libc::EPOLL_CTL_ADD, fd, Some((events, data)));
}

/// Records the registration of a tracked, still plain socket (after the kernel took it), so
/// that [`adopt`] can move it when the connection becomes ready; the instance gets a table so
/// that its waits are counted and filtered.
fn record(c: &Conn, epfd: c_int, op: c_int, fd: c_int, user: Option<(u32, u64)>) {
    // One instance under several numbers is one registration (the kernel's key is the
    // instance): a `MOD` through a duplicate replaces the `ADD` made through the original, and
    // the record names the number that serves the instance ([`CANON`], kept live by
    // [`unalias`]), not one that may close while the instance lives on.
    let epfd = canon(epfd);
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
    let set = set_or_new(epfd);
    if c.counts.is_shared() && set.is_none_or(Set::shared_with_others) {
        // A connection forked while plain, registered (or changed) in an instance another
        // live process shares: each process records only its own calls, so whichever of the
        // two migrated would adopt a list the kernel's no longer matches (found by the
        // conformance run that migrates while in use, `epoll_fork`: a child's ADD of the
        // connection lost when the parent migrated). Plain for good (see `crate::counts`).
        c.counts.spoil();
    }
    let Some(set) = set else { return };
    // Relaxed: a hint, set under the lock below; no one-shot to add and none to forget (the
    // common case) takes no lock.
    if oneshot.is_none() && !set.has_plain_oneshots.load(Relaxed) {
        return;
    }
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
///
/// Edge-triggered, the kernel reports an edge once: one it reported before the move stays
/// reported, one it has not reported yet is reported by the hook. The kernel tells which only
/// through its ready list: if the instance has no event ready (one `poll` of it), the
/// application's registration has no edge pending, and the hook's starts from the socket's
/// state now; otherwise (or if another process shares the instance) the hook reports the
/// socket's ready bits once, which may be an edge the kernel would not give (an instance
/// with other ready events at the moment of the move is the documented limit).
///
/// The `EPOLL_CTL_MOD` to the hook's registration queues an event of its own when the socket
/// is ready; it counts as an edge only if the socket was woken since just before the ready
/// list was looked at ([`crate::witness`], started first): a wake-up that came after that look
/// (a sender whose bytes were already queued) still counts, so no edge is lost.
pub fn adopt(epfd: c_int, fd: c_int, c: &Conn, events: u32, data: u64) {
    let Some(set) = set_or_new(epfd) else { return };
    let edge_triggered = events & libc::EPOLLET as u32 != 0;
    if edge_triggered {
        // (Only edge-triggered interests look at the socket's edges: a connection registered
        // level-triggered only costs no witness.)
        c.watch_socket_wakeups(fd);
    }
    let edge_pending = edge_triggered && (set.shared_with_others() || kernel_ready(epfd));
    let mut kernel = tagged(fd);
    // SAFETY: a live event; a failure (the fd or instance closed meanwhile) leaves nothing.
    if unsafe { sys::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut kernel) } != 0 {
        return;
    }
    let mut interest = Interest::new(fd, c.id(), events & !DISARMED, data);
    interest.armed = events & DISARMED == 0;
    if edge_triggered && !edge_pending {
        interest.seen = positions(&interest, c, fd);
    }
    let pushed = set.with(|v, _| {
        v.retain(|i| !i.is(fd, c.id()));
        v.push(interest)
    });
    if !pushed {
        // The list is full: the application's registration goes back to the kernel, and the
        // connection with it.
        sys::with_errno_kept(|| {
            restore(epfd, &interest);
            hand_back_for_kernel(c, fd);
        });
    }
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

/// The application's event of an `epoll_ctl` (events, data), read as the kernel reads it:
/// first, for the operations that take one (`ADD`, `MOD`), through the user copy, so that a
/// bad pointer gets EFAULT, as from the kernel, rather than a SIGSEGV in the hook; never for
/// `DEL` (nor a null one: the table answers `EFAULT` where the operation needs it).
fn user_event(op: c_int, event: *const epoll_event) -> Result<Option<(u32, u64)>, c_int> {
    if event.is_null() || op == libc::EPOLL_CTL_DEL {
        return Ok(None);
    }
    // SAFETY: the application's pointer (possibly bad), read through the user copy; any bit
    // pattern is an epoll_event.
    let e = unsafe { crate::iov::read_value(event) }.ok_or(libc::EFAULT)?;
    Ok(Some((e.events, e.u64)))
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
    if lookup(fd).is_none() && crate::table::is_unconnected(fd) {
        // Registered before it connects: kept aside until the connect says whether the socket
        // is watched (see `preconnect`), or, where the slot cannot describe it, with the
        // socket's record from now on.
        // SAFETY: as received.
        if let Some(rc) = unsafe { crate::preconnect::ctl(epfd, op, fd, event) } {
            return Some(rc);
        }
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
            set.with(|v, local| {
                v.retain(|i| {
                    if i.fd != fd || live(&mut local.aliases, i).is_some() {
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
    let user = match user_event(op, event) {
        Ok(user) => user,
        Err(errno) => return fail(errno),
    };
    if let Some(set) = set_of(epfd) {
        // Some(result): answered from the table; None: not registered here, ask the kernel.
        let answered = set.with(|v, _| {
            let i = v.iter_mut().find(|i| i.is(fd, c.id()))?;
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
    if op == libc::EPOLL_CTL_ADD && !set_or_new(epfd).is_some_and(|set| set.admits(&c, fd)) {
        // Another process shares the instance and does not hold this connection (or the list
        // could not be made): the kernel's list must serve it, for every process. The
        // connection goes back to the kernel, and the registration is the application's own.
        sys::with_errno_kept(|| hand_back_for_kernel(&c, fd));
        return None;
    }
    let Some(set) = set_or_new(epfd) else {
        // No list (it could not be made): the kernel serves this connection.
        sys::with_errno_kept(|| hand_back_for_kernel(&c, fd));
        return None;
    };
    if op == libc::EPOLL_CTL_ADD {
        // The interest goes into the list before the kernel registration: that registration
        // is ready at once (room to write) and wakes a thread asleep in the instance, which
        // must then find the interest, or it takes the event for the hook's alone and sleeps
        // on with the ring's data unreported (its edge consumed). A waiter that looks in
        // between reports the ring's readiness a moment before the `ADD` returns, as the
        // kernel may once the registration is in.
        let Some((events, data)) = user else { return fail(libc::EFAULT) };
        let pushed = set.with(|v, _| {
            v.retain(|i| !i.is(fd, c.id()));
            v.push(Interest::new(fd, c.id(), events, data))
        });
        if !pushed {
            // The list is full: the kernel serves this one, with the application's own
            // registration.
            sys::with_errno_kept(|| hand_back_for_kernel(&c, fd));
            return None;
        }
        let mut kernel = tagged(fd);
        // SAFETY: a live event; the kernel checks epfd, fd, op and reports errors itself.
        let rc = unsafe { sys::epoll_ctl(epfd, op, fd, &mut kernel) };
        if rc != 0 {
            // Refused (errno is the kernel's): the interest was never registered.
            set.with(|v, _| v.retain(|i| !i.is(fd, c.id())));
        }
        return Some(rc);
    }
    let mut kernel = tagged(fd);
    // SAFETY: a live event; the kernel checks epfd, fd, op and reports errors itself.
    let rc = unsafe { sys::epoll_ctl(epfd, op, fd, &mut kernel) };
    if rc != 0 {
        return Some(rc);
    }
    let pushed = set.with(|v, _| {
        v.retain(|i| !i.is(fd, c.id()));
        match (op, user) {
            (libc::EPOLL_CTL_DEL, _) | (_, None) => true,
            (_, Some((events, data))) => v.push(Interest::new(fd, c.id(), events, data)),
        }
    });
    if !pushed {
        // The list is full: as above, the kernel serves this one.
        sys::with_errno_kept(|| hand_back_for_kernel(&c, fd));
        // SAFETY: forwarded as received (replacing the hook's registration just made).
        return Some(unsafe { sys::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, event) });
    }
    Some(0)
}

/// Hands `c` back to the kernel before its readiness is left to the kernel's list: the
/// doorbells the peer rang so far are drained, since its socket is readable only for data from
/// now on (the peer's last doorbell, rung when it follows the hand-back, comes with its next
/// call and is skipped by the next read).
fn hand_back_for_kernel(c: &Conn, fd: c_int) {
    c.hand_back(fd);
    // A doorbell the peer counted is on its way (counted before it is sent, uncounted if the
    // send fails): wait for it, briefly, so that it never shows as readiness.
    let until = now_ns() + DOORBELL_WAIT_NS;
    loop {
        c.drain_doorbells(fd);
        // SeqCst: as the doorbell counters' other users.
        let owed = c.peer_line().bells_sent.load(SeqCst).saturating_sub(c.my_line().bells_drained.load(SeqCst));
        if owed == 0 || !c.reads_ring() || now_ns() >= until {
            break;
        }
        sys::sched_yield();
    }
    c.finish_hand_back();
}

/// How long [`hand_back_for_kernel`] waits for a doorbell in flight (the peer sends it right
/// after counting it, without blocking).
const DOORBELL_WAIT_NS: u64 = 20_000_000;

/// Gives every interest of `set` whose connection turned plain the application's own kernel
/// registration back, and forgets it (as [`collect`] does for the ones it meets).
fn restore_plain(epfd: c_int, set: &Set) {
    set.with(|v, local| {
        let mut gone = false;
        for i in v.iter_mut() {
            let Some((c, fd)) = resolve(&mut local.aliases, i) else { continue };
            if c.phase() == Phase::Plain {
                if fd == i.fd {
                    restore(epfd, i);
                }
                i.conn = 0;
                gone = true;
            }
        }
        if gone {
            // (No connection has id 0: ids start at 1.)
            v.retain(|i| i.conn != 0);
        }
    })
}

/// Moves ready swapped interests into `out`; returns how many.
fn collect(epfd: c_int, set: &Set, out: &mut [epoll_event]) -> usize {
    let mut private = None;
    set.with(|v, local| {
        let mut n = 0;
        let len = v.len();
        let items = v.items();
        let mut gone = false;
        for k in 0..len {
            if n == out.len() {
                break;
            }
            let idx = (local.next + k) % len;
            let i = &mut items[idx];
            let Some((c, fd)) = resolve(&mut local.aliases, i) else {
                // Not here: gone, unless another process that shares the instance holds it.
                if *private.get_or_insert_with(|| !set.shared_with_others()) {
                    i.conn = 0;
                    gone = true;
                }
                continue;
            };
            if c.phase() == Phase::Plain {
                if fd == i.fd {
                    restore(epfd, i);
                }
                i.conn = 0;
                gone = true;
                continue;
            }
            if c.phase() < Phase::Ready || !i.armed || i.parked {
                continue;
            }
            c.tick(fd);
            c.examine_socket_once(fd);
            let (mask, seen) = reportable(i, &c, fd);
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
        if gone {
            // (No connection has id 0: ids start at 1.)
            v.retain(|i| i.conn != 0);
            local.aliases.retain(|a| a.conn.fds.load(Acquire) != 0);
        }
        let len = v.len();
        local.next = if len == 0 { 0 } else { (local.next + 1) % len };
        n
    })
}

/// Drops the kernel's events for tagged real sockets from `out[..m]` (draining doorbells or
/// noting a plain peer), keeping plain fds' events in order; returns how many remain.
fn filter(epfd: c_int, out: &mut [epoll_event], m: usize) -> usize {
    let set = set_of(epfd);
    let mut kept = 0;
    for k in 0..m {
        let ev = out[k];
        if is_tagged(&ev) {
            let tagged_fd = (ev.u64 & 0xffff_ffff) as c_int;
            // The registration of `tagged_fd`'s file: the connection on that fd now, or one
            // whose registered fd was closed while a dup keeps it open.
            // (At most a few: one per file that had a connection registered under this number.)
            let mut conns: [Option<(ConnRef, c_int)>; 4] = [const { None }; 4];
            let mut found = 0;
            if let Some(set) = set {
                set.with(|v, local| {
                    for i in v.iter().filter(|i| i.fd == tagged_fd) {
                        let Some(pair) = live(&mut local.aliases, i) else { continue };
                        if found < conns.len() && !conns[..found].iter().flatten().any(|(c, _)| c.cell() == pair.0.cell()) {
                            conns[found] = Some(pair);
                            found += 1;
                        }
                    }
                });
            }
            if found == 0 {
                conns[0] = lookup_swapped(tagged_fd).map(|c| (c, tagged_fd));
            }
            for (c, fd) in conns.into_iter().flatten() {
                // Half-way, the socket carries data too: its edges are the connection's.
                c.socket_edge(ev.events);
                // Called after this thread withdrew its announcements.
                c.drain_doorbells_after_edge(fd, ev.events);
                if ev.events & libc::EPOLLOUT as u32 != 0 && c.phase() == Phase::Active && fd == tagged_fd && c.peer_took_socket_bytes() {
                    // Once per registration: stop the socket's room edges (see `tagged_active`),
                    // once the peer took this end's socket bytes (until then, each take is an
                    // edge of room: a writer that found the socket full waits for one).
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
fn reportable(i: &Interest, c: &Conn, fd: c_int) -> (u32, (u64, u64, u32)) {
    let (head, tail, ready) = positions(i, c, fd);
    let mask = ready & (i.events | bits::HUP | bits::ERR);
    if i.events & libc::EPOLLET as u32 == 0 || mask == 0 {
        return (mask, i.seen);
    }
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

/// The edge positions of `c` ([`Conn::edges`]) and the bits interest `i` finds ready now.
fn positions(i: &Interest, c: &Conn, fd: c_int) -> (u64, u64, u32) {
    // The edge positions first, then the readiness: data that arrives in between is then
    // reported now and counted as new once more next time (one extra edge), never counted as
    // seen without being reported (an edge-triggered connection whose reply came between the
    // two loads was never reported again: nginx's proxy stalled on it).
    let (head, tail) = c.edges();
    let mut ready = c.readiness(fd);
    if i.events & libc::EPOLLPRI as u32 != 0 {
        ready |= c.urgent(fd);
    }
    (head, tail, ready)
}

/// Whether the kernel has events for the instance `epfd` (a plain fd's, or a doorbell), without
/// waiting.
fn kernel_ready(epfd: c_int) -> bool {
    let mut p = libc::pollfd { fd: epfd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd; no wait. errno is kept: the application's is not ours to change.
    sys::with_errno_kept(|| unsafe { sys::poll(&mut p, 1, 0) }) > 0
}

/// Whether any interest of `set` would be reported now (for the spin and the re-check).
fn any_ready(set: &Set) -> bool {
    set.with(|v, local| {
        v.iter().any(|i| i.armed && !i.parked && live(&mut local.aliases, i).is_some_and(|(c, fd)| reportable(i, &c, fd).0 != 0))
    })
}

/// The sleeps a wait announced ([`announce_all`]): exactly these are withdrawn after it.
struct Announced {
    /// The connections announced on, one entry per announcement.
    conns: Vec<ConnRef>,
    /// Any of them shared with another thread or process.
    shared: bool,
    /// Any of them not active yet.
    halfway: bool,
}

impl Announced {
    /// Takes back every announcement made.
    fn withdraw(self) {
        for c in self.conns {
            c.withdraw();
        }
    }
}

/// Announces a sleep on every connection of `set`, and keeps them: another thread may add an
/// interest to the set during the sleep (an `EPOLL_CTL_ADD`, a connection that becomes ready
/// and moves its registration in) or park one, and withdrawing by the set as it is after the
/// sleep took back an announcement never made (the end's counter went below zero, to
/// `u32::MAX`, and the next sleep's announcement back to 0: the peer saw no sleeper and rang no
/// doorbell) or left one standing.
fn announce_all(set: &Set) -> Announced {
    set.with(|v, local| {
        let mut announced = Announced { conns: Vec::with_capacity(v.len()), shared: false, halfway: false };
        for i in v.iter().filter(|i| !i.parked) {
            if let Some((c, _)) = live(&mut local.aliases, i) {
                c.announce();
                announced.shared |= c.is_shared();
                announced.halfway |= c.phase() != Phase::Active;
                announced.conns.push(c);
            }
        }
        announced
    })
}

/// Whether the instance has an interest of a swapped connection (otherwise a wait is the
/// kernel's alone, counted and filtered).
fn has_swapped(set: &Set) -> bool {
    set.with(|v, local| v.iter().any(|i| live(&mut local.aliases, i).is_some()))
}

/// `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on an instance with swapped interests.
/// `timeout_ns`: `None` waits forever.
///
/// # Safety
/// `events` is valid for `maxevents` entries; `sigmask` is null or valid.
pub unsafe fn wait(
    epfd: c_int,
    events: *mut epoll_event,
    maxevents: c_int,
    timeout_ns: Option<u64>,
    sigmask: *const sigset_t,
    mark: Mark,
) -> c_int {
    let Some(set) = set_of(epfd) else {
        // SAFETY: forwarded.
        return unsafe { real_wait(epfd, events, maxevents, timeout_ns, sigmask) };
    };
    let array = (maxevents as usize).saturating_mul(std::mem::size_of::<epoll_event>());
    if maxevents <= 0 || crate::iov::range(events.cast(), array) != crate::iov::Range::Valid {
        // The kernel's answer (EINVAL, EFAULT), at once.
        // SAFETY: forwarded; the kernel checks the arguments before it waits.
        return unsafe { real_wait(epfd, events, maxevents, Some(0), sigmask) };
    }
    let deadline = timeout_ns.map(|t| now_ns().saturating_add(t));
    // Nothing in the hook's table and no plain one-shot registration to follow: every event
    // the kernel gives is the application's (a tagged registration exists only while its
    // interest is in the table), so one counted real wait answers, as without the hook.
    // (`epoll_wait` and `epoll_pwait` send such waits to `plain_wait`; here come
    // `epoll_pwait2`'s, and those whose list emptied since the caller looked.) Relaxed:
    // hints, checked again after the wait; an interest adopted meanwhile (its tagged events
    // may be among ours) sends the answer through the general path's filtering.
    if !set.has_interests() && !set.has_plain_oneshots.load(Relaxed) {
        // The kernel writes the events (and fails with EFAULT for an array it cannot write).
        // SAFETY: the caller's array, range-checked above; written by the kernel only.
        let m = unsafe { real_wait(epfd, events, maxevents, timeout_ns, sigmask) };
        if m <= 0 {
            return m;
        }
        // SAFETY: the kernel just wrote `m` entries there: readable and writable.
        let given = unsafe { std::slice::from_raw_parts_mut(events, m as usize) };
        if !set.has_interests() && !given.iter().any(is_tagged) {
            return m;
        }
        // The hook adds events of its own after the kernel's: into the whole array if it is
        // writable, else into the entries the kernel wrote.
        // SAFETY: the caller's array, range-checked above; probed through the user copy.
        let room = if unsafe { crate::iov::array_writable(events.cast(), array) } { maxevents } else { m };
        // SAFETY: writable for `room` entries (probed, or written by the kernel).
        if let Some(n) = kernel_answer(epfd, set, unsafe { std::slice::from_raw_parts_mut(events, room as usize) }, m as usize, deadline) {
            return n;
        }
    }
    // From here the hook writes events into the array itself: it must be writable.
    // SAFETY: the caller's array, range-checked above; probed through the user copy.
    if !unsafe { crate::iov::array_writable(events.cast(), array) } {
        // An array in a read-only or unmapped page: the kernel waits as usual and fails with
        // EFAULT when it has events to give. So does this wait, on an array of its own.
        let mut own = [epoll_event { events: 0, u64: 0 }; 1];
        // SAFETY: our own array of one entry; `sigmask` as received.
        let rc = unsafe { wait(epfd, own.as_mut_ptr(), 1, timeout_ns, sigmask, mark) };
        if rc > 0 {
            sys::set_errno(libc::EFAULT);
            return -1;
        }
        return rc;
    }
    // SAFETY: valid and writable for `maxevents` entries (checked just above).
    let out = unsafe { std::slice::from_raw_parts_mut(events, maxevents as usize) };
    let mut spun = false;
    // `mark` was taken when the call entered the hook (see `signals`): a handler that runs on
    // this thread from then on ends the wait with EINTR, as a signal that arrives during the
    // kernel's epoll_wait does (never restarted); see `poll::poll` for why at the entry.
    loop {
        if mark.interrupted().is_some() {
            sys::set_errno(libc::EINTR);
            return -1;
        }
        if !has_swapped(set) {
            // Interests whose connection turned plain (handed back) get the application's own
            // registration back before the kernel waits: the hook's edge-triggered one would
            // not report bytes that arrived before this wait.
            restore_plain(epfd, set);
            // Only the kernel's events (the recorded interests are still plain): one counted
            // real wait, whose events of tagged sockets (an interest adopted meanwhile) are
            // the hook's, not the application's.
            // This may be a second sleep of the call (after a wake-up that was only the
            // hook's): a handler that ran since the mark ends it (the loop's top answers
            // EINTR), as the kernel's would, instead of running just before it.
            let left = || deadline.map(|d| d.saturating_sub(now_ns()));
            // SAFETY: the caller's array.
            let Some(m) = (unsafe { sleep_quietly(epfd, out, sigmask, left, || mark.interrupted().is_some()) }) else { continue };
            if m <= 0 {
                return m;
            }
            if let Some(n) = kernel_answer(epfd, set, out, m as usize, deadline) {
                return n;
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
            // Plain fds' events too, without waiting. The hook's own registrations (doorbells,
            // filtered out) can fill the room the kernel was given: ask again while they did
            // (they are edge-triggered: reported once), so that a plain fd's event is not left
            // out (found by the differential test: a connection just handed back, registered
            // with the kernel, missing from a zero-timeout wait).
            // A level-triggered event reported by the first call comes again in the next: kept
            // once (by its events and data).
            let mut m = 0;
            // Whether the kernel gave any event, the hook's own included: filtering a tagged
            // one may have counted an edge of a half-way socket or drained a doorbell.
            let mut drew = false;
            for round in 0..4 {
                let room = out.len() - n - m;
                if room == 0 {
                    break;
                }
                // SAFETY: the rest of the caller's array.
                let raw = unsafe { real_wait(epfd, out[n + m..].as_mut_ptr(), room as c_int, Some(0), sigmask) };
                if raw <= 0 {
                    break;
                }
                drew = true;
                let mut kept = filter(epfd, &mut out[n + m..], raw as usize);
                if round > 0 {
                    let (before, new) = out[n..].split_at_mut(m);
                    let mut unique = 0;
                    for k in 0..kept {
                        let ev = new[k];
                        if !before.iter().any(|b| b.events == ev.events && b.u64 == ev.u64) {
                            new[unique] = ev;
                            unique += 1;
                        }
                    }
                    kept = unique;
                }
                m += kept;
                if (raw as usize) < room || kept == raw as usize {
                    break;
                }
            }
            note_oneshots_fired(set, &out[n..n + m]);
            // The rings once more (a doorbell the kernel's events brought was drained, or an
            // edge of a half-way socket counted, even if all of them were the hook's) only if
            // they reported nothing above: a ready level-triggered interest would come twice
            // in one answer, which the kernel never gives (a server with blocking sockets then
            // blocks in its second read). (A zero-timeout wait whose only kernel event was the
            // tagged room edge of a connection that had just switched its writes to the ring
            // reported that edge one call late: the `nonblock` scenario, migrating.)
            let more = if n == 0 && drew && m < out.len() { collect(epfd, set, &mut out[m..]) } else { 0 };
            return (n + m + more) as c_int;
        }
        if !spun {
            spun = true;
            let mut rounds = 0u32;
            let look = || {
                rounds = rounds.wrapping_add(1);
                if any_ready(set) {
                    spin::Found::Ring
                } else if rounds.is_multiple_of(KERNEL_CHECK_ROUNDS) && kernel_ready(epfd) {
                    spin::Found::Kernel
                } else {
                    spin::Found::Nothing
                }
            };
            match spin::spin_for_rings(timeout_ns, mark, look) {
                // Ready on a ring, or in the kernel: the next pass collects it (the real wait
                // then returns at once).
                Spun::Ready => continue,
                Spun::Idle => {}
                Spun::Interrupted => {
                    sys::set_errno(libc::EINTR);
                    return -1;
                }
            }
        }
        let announced = announce_all(set);
        let (shared, halfway) = (announced.shared, announced.halfway);
        tssx_shm::wait::settle();
        // (A handler that ran since the mark: no sleep; the loop's top answers EINTR.)
        let budget = || spin::sleep_budget(deadline, shared, halfway);
        // SAFETY: the caller's array.
        let m = unsafe { sleep_quietly(epfd, out, sigmask, budget, || any_ready(set) || mark.interrupted().is_some()) }.unwrap_or(0);
        let saved_errno = sys::errno();
        spin::woke();
        announced.withdraw();
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

/// The real wait of a sleep that follows a last look (`skip`: whether there is something to
/// answer already, then `None` without a sleep): a handler that runs from the look on is held
/// back until the sleep starts (see [`crate::signals::Quiet`]), so that it ends the sleep with
/// EINTR. The wait's errno is kept across the mask's restore.
///
/// # Safety
/// As [`real_wait`], for `out`.
unsafe fn sleep_quietly(
    epfd: c_int,
    out: &mut [epoll_event],
    sigmask: *const sigset_t,
    timeout_ns: impl FnOnce() -> Option<u64>,
    skip: impl FnOnce() -> bool,
) -> Option<c_int> {
    let quiet = crate::signals::Quiet::look(|| !skip())?;
    // SAFETY: the caller's array; the mask is the application's or the thread's own.
    let m = unsafe { real_wait(epfd, out.as_mut_ptr(), out.len() as c_int, timeout_ns(), quiet.sleep_mask(sigmask)) };
    let saved_errno = sys::errno();
    drop(quiet);
    sys::set_errno(saved_errno);
    Some(m)
}

/// The answer to a wait whose real call gave the `m` events now in `out`: the application's
/// (the hook's tagged ones filtered out), then the rings' ready interests; `None` if that is
/// nothing and time is left (wait again).
fn kernel_answer(epfd: c_int, set: &Set, out: &mut [epoll_event], m: usize, deadline: Option<u64>) -> Option<c_int> {
    let kept = filter(epfd, out, m);
    note_oneshots_fired(set, &out[..kept]);
    let n = kept + collect(epfd, set, &mut out[kept..]);
    (n > 0 || deadline.is_some_and(|d| now_ns() >= d)).then_some(n as c_int)
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

/// `epoll_wait`/`epoll_pwait` on an instance without interests in a hook table (no set, or a
/// set whose tracked sockets are all plain, see [`has_interests`]): the real call, counted in
/// the instance's gate; if interests appeared meanwhile, its tagged events are filtered out.
///
/// # Safety
/// As [`wait`].
#[unsafe(link_section = ".text.tssx.hot")]
pub unsafe fn plain_wait(epfd: c_int, events: *mut epoll_event, maxevents: c_int, timeout_ms: c_int, sigmask: *const sigset_t) -> c_int {
    // At the entry (one load, see `Mark::now`): a handler that runs after the kernel's wait
    // returned only the hook's events ends the wait that follows (see `wait`).
    let mark = Mark::now();
    let rc = {
        let waiting = Waiting::enter(epfd);
        if has_interests(epfd) {
            // An interest moved into the list between the caller's look and this thread's
            // entry in the gate (the move closes the gate; `Waiting::enter`'s SeqCst
            // increment reads the value its `gate_open` left, so the list's length is seen):
            // the table's wait must serve it, or this one would sleep through its ring.
            drop(waiting);
            // SAFETY: forwarded.
            return unsafe { wait(epfd, events, maxevents, (timeout_ms >= 0).then(|| timeout_ms as u64 * 1_000_000), sigmask, mark) };
        }
        // SAFETY: forwarded.
        unsafe { sys::epoll_pwait(epfd, events, maxevents, timeout_ms, sigmask) }
    };
    if rc <= 0 {
        return rc;
    }
    if let Some(set) = set_of(epfd) {
        // SAFETY: the kernel filled `rc` entries of the caller's array.
        let out = unsafe { std::slice::from_raw_parts_mut(events, rc as usize) };
        if !set.has_interests() && !set.has_plain_oneshots.load(Relaxed) && !out.iter().any(is_tagged) {
            // Every event is the application's, and no plain one-shot registration to note
            // (tagged registrations exist only while their interest is in the list).
            return rc;
        }
        let kept = filter(epfd, out, rc as usize);
        note_oneshots_fired(set, &out[..kept]);
        if kept == 0 {
            // Only the hook's events: wait again, through the table. (A handler that ran
            // during the kernel's wait made it fail with EINTR; one that ran after it ends
            // this one, through the entry's mark.)
            // SAFETY: forwarded.
            return unsafe { wait(epfd, events, maxevents, (timeout_ms >= 0).then(|| timeout_ms as u64 * 1_000_000), sigmask, mark) };
        }
        return kept as c_int;
    }
    rc
}
