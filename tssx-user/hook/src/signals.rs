//! Signal dispositions: every handler the application installs runs behind the hook's
//! trampoline, and a signal the hook needs for itself is owned here.
//!
//! # Why
//!
//! A wait the hook serves in user space (the spin phase of `poll`, `select`, `epoll_wait`, a
//! blocking read or write on the rings, the hook's short sleeps between steps) is, to the
//! application, one system call. The kernel ends such a call when a handler runs on the
//! thread that waits: `poll`, `select`, `epoll_wait` and their `p` variants always fail with
//! `EINTR` (never restarted, whatever `SA_RESTART` says); a blocking read or write fails with
//! `EINTR` if the handler was installed without `SA_RESTART`, or if the socket has a timeout
//! for that direction (`SO_RCVTIMEO`, `SO_SNDTIMEO`), and goes on otherwise (signal(7),
//! "Interruption of system calls and library functions by signal handlers"). A handler that
//! runs while the hook spins interrupts no system call: without help, the wait goes on, and an
//! event loop that waits without a timeout for its handler's flag (nginx's graceful stop on
//! SIGQUIT) never wakes.
//!
//! # How
//!
//! * The application's `sigaction` (and `__sigaction`, `signal`, `bsd_signal`, `ssignal`,
//!   `sysv_signal`, `__sysv_signal`, `sigset`, `sigignore`, `siginterrupt`: every libc function
//!   that installs a disposition; glibc's own call `__sigaction` internally, which no preload
//!   sees) installs a handler as [`trampoline`], with the application's flags (plus
//!   `SA_SIGINFO`) and mask, and records the application's handler and flags. The old action
//!   returned to the application is always its own handler, never the trampoline.
//! * The trampoline counts the handler in a per-thread counter ([`Mark`]; whether it was
//!   installed with `SA_RESTART` is counted apart), then calls the application's handler with
//!   the arity it asked for (`SA_SIGINFO` or not). The handler runs on the thread the signal
//!   interrupted, so the counter of that thread moves: the thread that spins, if the signal
//!   interrupted the spin, as the kernel interrupts exactly the thread it runs the handler
//!   on.
//! * A wait takes a [`Mark`] when it starts spinning (not before: a call that does not wait
//!   pays nothing; a read or write of 64 KiB or more takes it when it starts copying) and looks
//!   at it on every round (one load; see [`Mark::now`]); once it moved, the wait ends with `EINTR`
//!   where the kernel's would have, by the rules above (a read or write that moved bytes
//!   returns them, whatever `SA_RESTART` says).
//! * A signal the hook needs itself is owned ([`own`]): the kernel's disposition stays the
//!   trampoline, whose first step is the hook's handler; the application's `sigaction` calls
//!   for that signal are recorded, not installed (as glibc does for its own internal signals),
//!   and a signal the hook's handler declines goes where the record says: the application's
//!   handler (`SA_RESETHAND` emulated), nothing (`SIG_IGN`), or the default action (`SIG_DFL`:
//!   the default disposition is restored and the signal raised again, or, for a fault the
//!   kernel raised, the handler returns and the faulting instruction faults again, now with
//!   the default disposition: the core dump and the exit status are the plain ones).
//!
//! # What is not covered
//!
//! * A handler installed around libc (`syscall(SYS_rt_sigaction)`, or an old binary's
//!   `sigvec`) is not wrapped: a spin it interrupts goes on (until an event or its timeout; the
//!   real call that follows does not see the signal, which was handled already), and an EINTR
//!   it causes in the sleep of a blocking read or write ends that call with EINTR, even under
//!   `SA_RESTART` (the hook cannot tell its flags). A disposition
//!   glibc changes internally (`siginterrupt` and `system` call `__sigaction` directly) is
//!   followed where it keeps the trampoline (the record's `SA_RESTART` may then be stale:
//!   `siginterrupt` is interposed for that reason) and is the kernel's otherwise.
//! * With `SA_RESETHAND` on a signal that is not owned, the kernel resets the disposition
//!   itself; an application that then queries it gets `SIG_DFL` and its own flags, as without
//!   the hook.
//! * An owned signal whose default action stops the process (none is owned today) would lose
//!   the trampoline after the first such signal to the recorded default.
//! * A handler that calls `sigaction` for the very signal whose `sigaction` its thread was in
//!   the middle of may see a mixed record (handler of one call, flags of the other).
//!
//! # Async-signal safety
//!
//! The trampoline allocates nothing and takes no lock: it reads atomics (the record, a
//! sequence count that a writer interrupted on this very thread cannot hold up for long), bumps
//! a thread-local atomic (static TLS: the hook is loaded at process start, so its TLS block
//! exists in every thread and `__tls_get_addr` neither allocates nor locks), and calls the
//! application's handler; `sigaction` and `tgkill` for a default action. Writers (the
//! application's calls, [`own`]) take a per-signal lock that the same thread may take again
//! (a handler that calls `sigaction` while its thread was in `sigaction`), and that another
//! thread waits for at most [`LOCK_WAIT_ROUNDS`] yields (a lock left held by a thread that
//! is gone, say in a child forked meanwhile, is taken over).

use std::{
    cell::Cell,
    sync::atomic::{
        fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize,
        Ordering::{Acquire, Relaxed, Release},
    },
};

use libc::{c_int, c_void, siginfo_t};

use crate::sys;

/// The hook's own handler for a signal it owns ([`own`]): `true` if the signal was the hook's
/// (handled; the application's disposition is not consulted), `false` to pass it on to the
/// application's recorded disposition. It runs in a signal handler: async-signal-safe code
/// only. `errno` is kept around it.
pub type HookHandler = fn(sig: c_int, info: *mut siginfo_t, context: *mut c_void) -> bool;

/// When [`own`] takes a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Only if the application left the signal at its default (`SIG_DFL`): an application that
    /// has a disposition of its own keeps it, and the hook goes without.
    IfDefault,
    /// Whatever the application's disposition: it is recorded, and signals the hook's handler
    /// declines go there.
    Always,
}

/// Signals 1 to 64 (the kernel's `_NSIG`).
const NSIG: usize = 65;

/// How many times a writer yields while another thread holds a signal's lock before it takes
/// the lock over (the section under it is one `sigaction`: a holder that long is gone).
const LOCK_WAIT_ROUNDS: u32 = 100_000;

/// How many times the trampoline reads a record that is being written before it takes what it
/// read (the writer may be the very thread the handler interrupted).
const READ_ROUNDS: u32 = 1_000;

/// One signal's state.
struct Slot {
    /// The thread that holds the writers' lock ([`token`]; 0: free). Acquire when taken,
    /// Release when freed: the next writer sees the previous one's record.
    lock: AtomicUsize,
    /// The record's sequence count, odd while it is written (a seqlock: the trampoline reads
    /// without waiting). The writer stores it odd, fences (Release), stores the fields, and
    /// stores it even (Release); a reader loads it (Acquire), the fields, fences (Acquire) and
    /// loads it again.
    seq: AtomicU32,
    /// The application's handler (`sa_sigaction`, `SIG_DFL` or `SIG_IGN`), as last set through
    /// the hook.
    handler: AtomicUsize,
    /// The application's `sa_flags`.
    flags: AtomicI32,
    /// The application's `sa_mask` (the kernel's 64 bits): kept for owned signals, whose
    /// kernel action is not the application's.
    mask: AtomicU64,
    /// The hook's handler ([`HookHandler`] as an address; 0: not owned). Release when set,
    /// after the record; Acquire in the trampoline.
    hook: AtomicUsize,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            lock: AtomicUsize::new(0),
            seq: AtomicU32::new(0),
            handler: AtomicUsize::new(libc::SIG_DFL),
            flags: AtomicI32::new(0),
            mask: AtomicU64::new(0),
            hook: AtomicUsize::new(0),
        }
    }

    /// The record: (handler, flags, mask). See [`Slot::seq`].
    fn record(&self) -> (usize, c_int, u64) {
        let mut read = (0, 0, 0);
        for _ in 0..READ_ROUNDS {
            let seq = self.seq.load(Acquire);
            read = (self.handler.load(Relaxed), self.flags.load(Relaxed), self.mask.load(Relaxed));
            fence(Acquire);
            if seq & 1 == 0 && self.seq.load(Relaxed) == seq {
                return read;
            }
            std::hint::spin_loop();
        }
        // A writer interrupted on this very thread: its fields are either the old or the new.
        read
    }

    /// Writes the record (under the lock). See [`Slot::seq`].
    fn set_record(&self, handler: usize, flags: c_int, mask: u64) {
        self.seq.fetch_add(1, Relaxed);
        // Release fence: a reader that sees a field stored below sees the odd count first.
        fence(Release);
        self.handler.store(handler, Relaxed);
        self.flags.store(flags, Relaxed);
        self.mask.store(mask, Relaxed);
        // Release: pairs with the readers' Acquire load of the count.
        self.seq.fetch_add(1, Release);
    }

    fn owned(&self) -> bool {
        // Acquire: pairs with the Release store in `own` (the record is in place).
        self.hook.load(Acquire) != 0
    }

    /// Takes the writers' lock (see [`LOCK_WAIT_ROUNDS`]).
    fn lock(&self) -> Held<'_> {
        let me = token();
        for _ in 0..LOCK_WAIT_ROUNDS {
            // Acquire: pairs with the previous holder's Release in `Held::drop`.
            match self.lock.compare_exchange(0, me, Acquire, Relaxed) {
                Ok(_) => return Held { slot: self, nested: false },
                Err(holder) if holder == me => return Held { slot: self, nested: true },
                Err(_) => crate::spin::spin_yield(),
            }
        }
        // The holder is gone (or stuck in a handler of its own): taken over.
        self.lock.store(me, Relaxed);
        fence(Acquire);
        Held { slot: self, nested: false }
    }
}

/// A signal's writers' lock, held.
struct Held<'a> {
    slot: &'a Slot,
    nested: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.nested {
            // Release: pairs with the next holder's Acquire.
            self.slot.lock.store(0, Release);
        }
    }
}

static SLOTS: [Slot; NSIG] = [const { Slot::new() }; NSIG];

/// The process whose records these are (0: none yet): taken by the first writer, and by the
/// hook's `fork` in the child ([`in_child`]). Relaxed: one process's own memory; what matters
/// is telling another process that shares it apart (see [`records_mine`]).
static OWNER: AtomicU32 = AtomicU32::new(0);

/// Whether this process may write the records. Not in a child that runs in its parent's memory
/// (`vfork`: glibc's `posix_spawn` child calls libc's own `__sigaction`, but a program's own
/// `vfork` child may call `signal` before it execs, as dash's does): its writes would change
/// its parent's records, whose kernel dispositions are still the trampoline (a `SIG_DFL` the
/// child set for itself would make the parent's next signal its default action). Such a child
/// (the owner is its parent) installs its handlers as given, unwrapped. A child forked other
/// than through the hook's `fork` (`daemon`, a raw `clone`) is taken for one too: its new
/// dispositions are unwrapped as well, which only loses the EINTR of a spin they interrupt.
/// One or two `getpid`-like system calls per call.
fn records_mine() -> bool {
    let me = tssx_shm::sys::getpid();
    match OWNER.compare_exchange(0, me, Relaxed, Relaxed) {
        Ok(_) => true,
        Err(owner) if owner == me => true,
        // SAFETY: getppid has no preconditions.
        Err(owner) if owner == unsafe { libc::getppid() } as u32 => false,
        // The owner was a child of ours that ran in our memory (this process had written no
        // record, or it would own them), or an ancestor beyond the parent (a copy).
        Err(owner) => OWNER.compare_exchange(owner, me, Relaxed, Relaxed).is_ok(),
    }
}

/// In the child of the hook's `fork` (its own copy of the records).
pub fn in_child() {
    OWNER.store(tssx_shm::sys::getpid(), Relaxed);
}

thread_local! {
    /// This thread's identity for the writers' locks (the address of this variable).
    static TOKEN: Cell<u8> = const { Cell::new(0) };
    /// Application handlers run on this thread: the count of all of them in the high 32 bits,
    /// of those installed without `SA_RESTART` in the low 32 bits (see [`Mark`]). Written by
    /// the trampoline on this thread only, read by this thread's waits: Relaxed (the handler
    /// and the code it interrupted are one thread).
    static HANDLED: AtomicU64 = const { AtomicU64::new(0) };
}

/// The calling thread's token (never 0).
fn token() -> usize {
    TOKEN.with(|t| t as *const Cell<u8> as usize)
}

fn slot(sig: c_int) -> Option<&'static Slot> {
    usize::try_from(sig).ok().filter(|&s| (1..NSIG).contains(&s)).map(|s| &SLOTS[s])
}

/// The handlers that count as the application's (not a default or ignore disposition).
fn is_handler(handler: usize) -> bool {
    handler != libc::SIG_DFL && handler != libc::SIG_IGN && handler != libc::SIG_ERR
}

/// The kernel's 64 bits of a `sigset_t` (glibc keeps them in its first word).
fn mask_bits(set: &libc::sigset_t) -> u64 {
    // SAFETY: `sigset_t` is at least 8 bytes of plain data (glibc: 128).
    unsafe { std::ptr::read_unaligned((set as *const libc::sigset_t).cast::<u64>()) }
}

/// Stores the kernel's 64 bits into a `sigset_t` (its other bytes untouched, as glibc's
/// `sigaction` leaves them).
fn set_mask_bits(set: *mut libc::sigset_t, bits: u64) {
    // SAFETY: the caller's live sigset_t, at least 8 bytes.
    unsafe { std::ptr::write_unaligned(set.cast::<u64>(), bits) }
}

/// The trampoline's address as a `sa_sigaction`.
fn trampoline_address() -> usize {
    trampoline as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize
}

// ---------------------------------------------------------------------------------------------
// What waits look at.
// ---------------------------------------------------------------------------------------------

/// Bit of [`HANDLED`] that counts every handler.
const ANY: u64 = 1 << 32;
/// The bits that count handlers installed without `SA_RESTART`.
const NO_RESTART: u64 = ANY - 1;

/// How a wait was interrupted since its [`Mark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// Every handler that ran was installed with `SA_RESTART`: a blocking read or write goes
    /// on (unless its socket has a timeout for it); `poll` and its kind fail with `EINTR`.
    Restartable,
    /// A handler without `SA_RESTART` ran: every wait fails with `EINTR`.
    NotRestartable,
}

/// A point in this thread's run of application handlers: a wait started after it ends with
/// EINTR once a handler has run since (poll, select and epoll waits take theirs when the
/// application's call enters the hook; reads and writes when they start to wait).
#[derive(Clone, Copy, Debug)]
pub struct Mark(u64);

impl Mark {
    /// Now: one load of a flag while no application handler ever ran in the process, then of
    /// the thread's count (see `handled`).
    #[inline]
    pub fn now() -> Mark {
        Mark(handled())
    }

    /// Whether an application handler ran on this thread since the mark (as [`Mark::now`], one
    /// load).
    #[inline]
    pub fn interrupted(self) -> Option<Interruption> {
        let now = handled();
        if now == self.0 {
            None
        } else if (now ^ self.0) & NO_RESTART != 0 {
            Some(Interruption::NotRestartable)
        } else {
            Some(Interruption::Restartable)
        }
    }

    /// Whether a wait of a blocking read or write must end with `EINTR`: a handler ran since
    /// the mark, and it was installed without `SA_RESTART` or `has_timeout()` (the socket's
    /// `SO_RCVTIMEO` for a read, `SO_SNDTIMEO` for a write; asked only then). A restartable
    /// interruption moves the mark to now (the call goes on).
    #[inline]
    pub fn interrupts_transfer(&mut self, has_timeout: impl FnOnce() -> bool) -> bool {
        match self.interrupted() {
            None => false,
            Some(Interruption::NotRestartable) => true,
            Some(Interruption::Restartable) => {
                if has_timeout() {
                    return true;
                }
                *self = Mark::now();
                false
            }
        }
    }
}

/// Whether an application handler ever ran through the trampoline in this process (set before
/// the thread's count moves, never cleared). Relaxed: a thread whose [`HANDLED`] count is not
/// zero set the flag itself first, and reads its own store back; a thread that reads `false`
/// has run no handler, so its count is zero too.
static EVER_HANDLED: AtomicBool = AtomicBool::new(false);

/// This thread's [`HANDLED`] count; zero without the thread-local access (a call into the
/// dynamic loader from a shared object: a few cache lines of its code on every wait) while no
/// handler ever ran, the usual case.
#[inline]
fn handled() -> u64 {
    if !EVER_HANDLED.load(Relaxed) {
        return 0;
    }
    HANDLED.with(|h| h.load(Relaxed))
}

/// Counts an application handler about to run on this thread.
fn note_handler(flags: c_int) {
    let add = ANY | u64::from(flags & libc::SA_RESTART == 0);
    EVER_HANDLED.store(true, Relaxed);
    HANDLED.with(|h| h.fetch_add(add, Relaxed));
}

/// Signals a wait's last look at its [`Mark`] holds back: every one but those a fault raises
/// (their handlers must run at once) and glibc's two internal ones (`SIGCANCEL`, `SIGSETXID`).
const HELD_SIGNALS: u64 = !(bit(libc::SIGILL)
    | bit(libc::SIGTRAP)
    | bit(libc::SIGBUS)
    | bit(libc::SIGFPE)
    | bit(libc::SIGSEGV)
    | bit(libc::SIGSYS)
    | bit(32)
    | bit(33));

const fn bit(sig: c_int) -> u64 {
    1 << (sig - 1)
}

/// The kernel's `rt_sigprocmask` on this thread's first 64 signals (the hook's own system call:
/// libc's `sigprocmask` may be the application's). Returns the mask before.
fn set_mask(how: c_int, mask: u64) -> Option<u64> {
    let mut old = 0u64;
    // SAFETY: an 8-byte set in and out, the kernel's sigset size on x86-64.
    unsafe {
        tssx_shm::sys::syscall(libc::SYS_rt_sigprocmask, [how as usize, (&raw const mask) as usize, (&raw mut old) as usize, 8, 0, 0])
    }
    .ok()
    .map(|_| old)
}

/// The window between a wait's last look at its [`Mark`] and its sleep in the kernel, closed.
///
/// A handler that runs after that look and before the kernel's wait starts would be lost: the
/// kernel's call sleeps on (until its timeout, or the next signal), where the kernel's own wait,
/// had the application called it, would have ended with EINTR. So the look is made with the
/// thread's asynchronous signals held back ([`Quiet::block`]), and the sleep is a call that takes
/// a signal mask (`ppoll`, `epoll_pwait`) and is given the thread's mask from before
/// ([`Quiet::sleep_mask`]): the kernel applies it atomically with the start of the wait, so a
/// signal that came in between is delivered inside the wait, which then fails with EINTR. Two
/// system calls per sleep, taken only after the wait has spun in vain. Dropping it restores the
/// mask.
pub struct Quiet {
    /// The thread's mask before, as the kernel's `sigset_t` wants it (`None`: not blocked).
    old: Option<libc::sigset_t>,
}

impl Quiet {
    /// Holds back this thread's asynchronous signals (see [`Quiet`]).
    pub fn block() -> Quiet {
        let old = set_mask(libc::SIG_BLOCK, HELD_SIGNALS).map(|old| {
            // SAFETY: all-zero is a valid sigset_t; its first 8 bytes are the kernel's set.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: a sigset_t is at least 8 bytes; written unaligned.
            unsafe { std::ptr::write_unaligned((&raw mut set).cast::<u64>(), old) };
            set
        });
        Quiet { old }
    }

    /// A wait's last look before it sleeps: holds back this thread's asynchronous signals, then
    /// asks `still_waits` (nothing to answer yet, and no handler ran since the wait's mark).
    /// `Some` to sleep (with [`Quiet::sleep_mask`]); `None`, with the mask restored, if the
    /// look found the wait ended.
    pub fn look(still_waits: impl FnOnce() -> bool) -> Option<Quiet> {
        let quiet = Quiet::block();
        if !still_waits() {
            return None;
        }
        after_last_look();
        Some(quiet)
    }

    /// The mask the sleep applies: the application's own if its call passed one (`ppoll`,
    /// `pselect`, `epoll_pwait`), else the thread's from before [`Quiet::block`].
    pub fn sleep_mask(&self, application: *const libc::sigset_t) -> *const libc::sigset_t {
        match &self.old {
            _ if !application.is_null() => application,
            Some(old) => old,
            None => std::ptr::null(),
        }
    }
}

/// Tests' probe into the window [`Quiet`] closes (0: none; else a `fn()`): called by
/// [`Quiet::look`] after a look that found the wait going on, just before the sleep. One
/// Relaxed load per sleep. Relaxed: the tests set it on the thread that then waits.
static AFTER_LAST_LOOK: AtomicUsize = AtomicUsize::new(0);

/// For tests: `probe` runs in every wait between its last look at its mark and its sleep (in
/// any thread), as a signal that comes in just then would; `None` removes it.
#[doc(hidden)]
pub fn probe_after_last_look(probe: Option<fn()>) {
    AFTER_LAST_LOOK.store(probe.map_or(0, |f| f as usize), Relaxed);
}

fn after_last_look() {
    let probe = AFTER_LAST_LOOK.load(Relaxed);
    if probe != 0 {
        // SAFETY: stored from a `fn()` by `probe_after_last_look`.
        let probe = unsafe { std::mem::transmute::<usize, fn()>(probe) };
        probe();
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            // SAFETY: the first 8 bytes of a live sigset_t.
            let old = unsafe { std::ptr::read_unaligned((old as *const libc::sigset_t).cast::<u64>()) };
            set_mask(libc::SIG_SETMASK, old);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The trampoline.
// ---------------------------------------------------------------------------------------------

/// The kernel's handler for every signal whose disposition is an application handler (and for
/// owned signals): the hook's handler first if the signal is owned, then the application's
/// disposition.
extern "C" fn trampoline(sig: c_int, info: *mut siginfo_t, context: *mut c_void) {
    let Some(slot) = slot(sig) else { return };
    let hook = slot.hook.load(Acquire);
    if hook != 0 {
        // SAFETY: `hook` was stored from a `HookHandler` in `own`.
        let hook: HookHandler = unsafe { std::mem::transmute::<usize, HookHandler>(hook) };
        // A panic must not unwind out of a signal handler (that aborts): one is taken as
        // handled (the hook's own signal, whose handling failed half-way).
        let handled = std::panic::catch_unwind(|| sys::with_errno_kept(|| hook(sig, info, context))).unwrap_or(true);
        if handled {
            return;
        }
    }
    to_application(slot, sig, info, context);
}

/// Whether `sig` with `info` is a fault the kernel raised on an instruction (returning from
/// the handler runs it again).
fn is_fault(sig: c_int, info: *const siginfo_t) -> bool {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t (checked for null anyway).
    matches!(sig, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP)
        && !info.is_null()
        && unsafe { (*info).si_code } > 0
}

/// Signals whose default action is to do nothing.
fn default_ignores(sig: c_int) -> bool {
    matches!(sig, libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH | libc::SIGCONT)
}

/// The signal goes where the application's record says.
fn to_application(slot: &Slot, sig: c_int, info: *mut siginfo_t, context: *mut c_void) {
    let (handler, flags, _) = slot.record();
    match handler {
        libc::SIG_IGN if !is_fault(sig, info) => {}
        // An ignored fault: the kernel would have forced the default (a returning handler
        // would fault again forever).
        libc::SIG_IGN | libc::SIG_DFL => sys::with_errno_kept(|| default_action(sig, info)),
        _ => {
            if flags & libc::SA_RESETHAND != 0 && slot.owned() {
                // The kernel's reset, emulated (the kernel's action stays the trampoline).
                // Not under the lock (a handler must not wait): a writer at the same moment
                // wins or loses, as with the kernel's own reset.
                slot.set_record(libc::SIG_DFL, flags, slot.mask.load(Relaxed));
            }
            note_handler(flags);
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the application installed this address as a three-argument handler.
                let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) = unsafe { std::mem::transmute(handler) };
                f(sig, info, context);
            } else {
                // SAFETY: the application installed this address as a one-argument handler.
                let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(handler) };
                f(sig);
            }
        }
    }
}

/// The default action of `sig`, from inside its handler: nothing for a signal whose default is
/// to ignore; otherwise the default disposition is restored and the signal comes again (a
/// fault: when the handler returns, at the instruction; any other: raised to this thread,
/// where it is blocked until the handler returns, unless `SA_NODEFER`).
fn default_action(sig: c_int, info: *const siginfo_t) {
    if default_ignores(sig) {
        return;
    }
    // SAFETY: plain data; all zero is an empty action.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: a valid action (libc's sigaction, async-signal-safe).
    unsafe { sys::sigaction(sig, &dfl, std::ptr::null_mut()) };
    if !is_fault(sig, info) {
        sys::raise_in_thread(sig);
    }
}

// ---------------------------------------------------------------------------------------------
// Owned signals.
// ---------------------------------------------------------------------------------------------

/// Takes `sig` for the hook: from now on `hook` sees every delivery of it first, and the
/// application's disposition is recorded rather than installed (see the module
/// documentation). `true` if the hook owns it (now, or already with this `hook`); `false` if
/// not: another handler of the hook's owns it, `take` is [`Take::IfDefault`] and the
/// application has a disposition of its own, `sig` cannot be caught, or the kernel refused.
/// The application's `sigaction` calls for `sig` wait while this runs, so none is lost between
/// the look and the install. Keeps `errno`. Never call it from a signal handler.
pub fn own(sig: c_int, hook: HookHandler, take: Take) -> bool {
    let Some(slot) = slot(sig) else { return false };
    if matches!(sig, libc::SIGKILL | libc::SIGSTOP) {
        return false;
    }
    let _held = slot.lock();
    let current = slot.hook.load(Relaxed);
    if current != 0 {
        return current == hook as usize;
    }
    sys::with_errno_kept(|| {
        if !records_mine() {
            return false;
        }
        // SAFETY: plain data, filled by sigaction.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a query into a live struct.
        if unsafe { sys::sigaction(sig, std::ptr::null(), &mut now) } != 0 {
            return false;
        }
        let (handler, flags) = application_view(slot.record(), now.sa_sigaction, now.sa_flags);
        if take == Take::IfDefault && handler != libc::SIG_DFL {
            return false;
        }
        slot.set_record(handler, flags, mask_bits(&now.sa_mask));
        // Release: pairs with the trampoline's Acquire (the record is in place).
        slot.hook.store(hook as usize, Release);
        if install_owned(sig, slot) != 0 {
            slot.hook.store(0, Release);
            return false;
        }
        true
    })
}

/// Whether the hook owns `sig` ([`own`]).
pub fn owned(sig: c_int) -> bool {
    slot(sig).is_some_and(Slot::owned)
}

/// The application's disposition for `sig` as it would see it: (handler, flags). For an owned
/// signal, its record; otherwise the kernel's, through the trampoline.
pub fn application_disposition(sig: c_int) -> Option<(usize, c_int)> {
    let slot = slot(sig)?;
    if slot.owned() {
        let (handler, flags, _) = slot.record();
        return Some((handler, flags));
    }
    // SAFETY: plain data, filled by sigaction.
    let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query into a live struct.
    if sys::with_errno_kept(|| unsafe { sys::sigaction(sig, std::ptr::null(), &mut now) }) != 0 {
        return None;
    }
    Some(application_view(slot.record(), now.sa_sigaction, now.sa_flags))
}

/// What the application installed, from the kernel's (handler, flags) of a signal that is not
/// owned: the record's handler where the kernel has the trampoline, or had it until
/// `SA_RESETHAND` reset it (the kernel keeps the flags); the kernel's flags, with the
/// `SA_SIGINFO` the hook added taken back off.
fn application_view(record: (usize, c_int, u64), handler: usize, flags: c_int) -> (usize, c_int) {
    let (rec_handler, rec_flags, _) = record;
    let app_flags = (flags & !libc::SA_SIGINFO) | (rec_flags & libc::SA_SIGINFO);
    if handler == trampoline_address() {
        (rec_handler, app_flags)
    } else if handler == libc::SIG_DFL
        && is_handler(rec_handler)
        && rec_flags & libc::SA_RESETHAND != 0
        && flags & !SA_RESTORER == (rec_flags | libc::SA_SIGINFO) & !SA_RESTORER
    {
        (libc::SIG_DFL, app_flags)
    } else {
        (handler, flags)
    }
}

/// The kernel's `SA_RESTORER`, which glibc adds to every action it installs (and so reports
/// in every old action after one).
const SA_RESTORER: c_int = 0x0400_0000;

/// Installs the trampoline for owned `sig`, with what of the record's flags and mask matters
/// to the kernel (under the lock): the application's when it has a handler (its `SA_RESTART`
/// applies to the system calls the signal interrupts, its mask and `SA_ONSTACK` to its
/// handler), `SA_RESTART | SA_ONSTACK` and no mask otherwise. Never `SA_RESETHAND` (emulated).
fn install_owned(sig: c_int, slot: &Slot) -> c_int {
    let (handler, flags, mask) = slot.record();
    // SAFETY: plain data; all zero is an empty action.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = trampoline_address();
    if is_handler(handler) {
        action.sa_flags = libc::SA_SIGINFO | (flags & (libc::SA_RESTART | libc::SA_ONSTACK | libc::SA_NODEFER));
        set_mask_bits(&mut action.sa_mask, mask);
    } else {
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
    }
    // SAFETY: a valid action whose handler is a function of this library (a preloaded library
    // is never unloaded).
    unsafe { sys::sigaction(sig, &action, std::ptr::null_mut()) }
}

// ---------------------------------------------------------------------------------------------
// The application's calls.
// ---------------------------------------------------------------------------------------------

/// The application's `sigaction(sig, act, old)`: an application handler is installed behind
/// the trampoline; an owned signal's disposition is recorded; `old` is what the application
/// installed (its own handler and flags, never the trampoline). Anything else is libc's
/// `sigaction` (its answers and errors).
///
/// # Safety
/// `act` and `old` are null or point to `sigaction` structs (checked for range only, as every
/// pointer the hook receives: EFAULT where glibc would crash).
pub unsafe fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    let Some(slot) = slot(sig) else {
        // SAFETY: forwarded as received (libc's EINVAL).
        return unsafe { sys::sigaction(sig, act, old) };
    };
    if (!act.is_null() && !crate::iov::value_ok(act)) || (!old.is_null() && !crate::iov::value_ok(old)) {
        sys::set_errno(libc::EFAULT);
        return -1;
    }
    // Read first: `act` and `old` may be the same struct.
    // SAFETY: checked above; read unaligned as the kernel would.
    let new = (!act.is_null()).then(|| unsafe { std::ptr::read_unaligned(act) });
    if new.is_none() {
        // SAFETY: `old` checked above.
        return unsafe { query(sig, slot, old) };
    }
    if !records_mine() {
        // A child in its parent's memory: as given; what it inherited reads as the record.
        let before = slot.record();
        let kernel_ptr = new.as_ref().map_or(std::ptr::null(), |k| k as *const libc::sigaction);
        // SAFETY: `kernel_ptr` is null or a live local; `old` checked above.
        let rc = unsafe { sys::sigaction(sig, kernel_ptr, old) };
        if rc == 0 && !old.is_null() {
            // SAFETY: checked above; libc just filled it.
            unsafe { patch_old(old, before) };
        }
        return rc;
    }
    let _held = slot.lock();
    let before = slot.record();
    if slot.owned() {
        if let Some(new) = &new {
            // With the SA_RESTORER glibc adds (the kernel's old action would show it).
            slot.set_record(new.sa_sigaction, new.sa_flags | SA_RESTORER, mask_bits(&new.sa_mask));
            // The kernel keeps the trampoline; the flags that matter follow the application's.
            sys::with_errno_kept(|| install_owned(sig, slot));
        }
        if !old.is_null() {
            // SAFETY: checked above.
            return unsafe { owned_old(sig, old, before) };
        }
        return 0;
    }
    let kernel = new.map(|mut new| {
        slot.set_record(new.sa_sigaction, new.sa_flags, mask_bits(&new.sa_mask));
        if is_handler(new.sa_sigaction) {
            new.sa_sigaction = trampoline_address();
            new.sa_flags |= libc::SA_SIGINFO;
        }
        new
    });
    let kernel_ptr = kernel.as_ref().map_or(std::ptr::null(), |k| k as *const libc::sigaction);
    // SAFETY: `kernel_ptr` is null or a live local; `old` checked above.
    let rc = unsafe { sys::sigaction(sig, kernel_ptr, old) };
    if rc != 0 {
        if new.is_some() {
            slot.set_record(before.0, before.1, before.2);
        }
        return rc;
    }
    if !old.is_null() {
        // SAFETY: checked above; libc just filled it (`before`: the record this call's `new`
        // replaced).
        unsafe { patch_old(old, before) };
    }
    0
}

/// `sigaction(sig, NULL, old)`: a query writes no record, so it needs neither the records'
/// owner ([`records_mine`], a `getpid` each time: PHP asks for 7 dispositions per request)
/// nor the writers' lock (the record is read whole, see [`Slot::record`]). The same answer as a
/// query under the lock: an owned signal's record, else the kernel's made the application's.
///
/// # Safety
/// `old` is null or points to a `sigaction` struct (range checked by the caller).
unsafe fn query(sig: c_int, slot: &Slot, old: *mut libc::sigaction) -> c_int {
    if OWNER.load(Relaxed) == 0 {
        // The first call still takes the records for this process, as a write would (a
        // `vfork` child's later write must find them its parent's).
        records_mine();
    }
    let before = slot.record();
    if slot.owned() && !old.is_null() {
        // SAFETY: per the contract.
        return unsafe { owned_old(sig, old, before) };
    }
    // SAFETY: a query; `old` per the contract.
    let rc = unsafe { sys::sigaction(sig, std::ptr::null(), old) };
    if rc == 0 && !old.is_null() {
        // SAFETY: per the contract; libc just filled it.
        unsafe { patch_old(old, before) };
    }
    rc
}

/// The old action of an owned signal into `old`: the kernel's (for the fields the hook does
/// not keep), then the record `before`.
///
/// # Safety
/// `old` points to a `sigaction` struct (unaligned is fine).
unsafe fn owned_old(sig: c_int, old: *mut libc::sigaction, before: (usize, c_int, u64)) -> c_int {
    // SAFETY: per the contract.
    let rc = unsafe { sys::sigaction(sig, std::ptr::null(), old) };
    if rc != 0 {
        return rc;
    }
    // SAFETY: per the contract; written unaligned, field by field.
    unsafe {
        std::ptr::write_unaligned(&raw mut (*old).sa_sigaction, before.0);
        std::ptr::write_unaligned(&raw mut (*old).sa_flags, before.1);
        set_mask_bits(&raw mut (*old).sa_mask, before.2);
    }
    0
}

/// The old action libc wrote into `old`, made the application's (see [`application_view`]),
/// given the record `before` the call.
///
/// # Safety
/// `old` points to a `sigaction` struct (unaligned is fine).
unsafe fn patch_old(old: *mut libc::sigaction, before: (usize, c_int, u64)) {
    // SAFETY: per the contract.
    let (handler, flags) =
        unsafe { (std::ptr::read_unaligned(&raw const (*old).sa_sigaction), std::ptr::read_unaligned(&raw const (*old).sa_flags)) };
    let was = application_view(before, handler, flags);
    // SAFETY: per the contract.
    unsafe {
        std::ptr::write_unaligned(&raw mut (*old).sa_sigaction, was.0);
        std::ptr::write_unaligned(&raw mut (*old).sa_flags, was.1);
    }
}

/// Signals `sigset` and `siginterrupt` may name (glibc refuses its internal ones, 32 and 33).
fn installable(sig: c_int) -> bool {
    slot(sig).is_some() && !(32..=33).contains(&sig)
}

/// Signals `siginterrupt` made interruptible (glibc's `_sigintr`, which only its own `signal`
/// reads: every `signal` goes through [`bsd_signal`] now). Bit `sig - 1`.
static SIGINTR: AtomicU64 = AtomicU64::new(0);

/// `signal(sig, handler)` with `sa_flags` `flags` and the signal itself in the mask if
/// `mask_self` (glibc's `__bsd_signal` and `__sysv_signal`).
fn install_simple(sig: c_int, handler: libc::sighandler_t, flags: c_int, mask_self: bool) -> libc::sighandler_t {
    if handler == libc::SIG_ERR || !installable(sig) {
        sys::set_errno(libc::EINVAL);
        return libc::SIG_ERR;
    }
    // SAFETY: plain data; all zero is an empty action.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = flags;
    if mask_self {
        set_mask_bits(&mut act.sa_mask, 1u64 << (sig - 1));
    }
    // SAFETY: plain data, filled below.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: two live structs.
    if unsafe { sigaction(sig, &act, &mut old) } < 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}

/// The application's `signal`, `bsd_signal`, `ssignal` (glibc's BSD semantics: `SA_RESTART`
/// unless [`siginterrupt`] said otherwise, the signal blocked in its handler).
pub fn bsd_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    let interrupt = installable(sig) && SIGINTR.load(Relaxed) & (1u64 << (sig - 1)) != 0;
    install_simple(sig, handler, if interrupt { 0 } else { libc::SA_RESTART }, true)
}

/// The application's `sysv_signal`, `__sysv_signal` (one-shot, not blocked in its handler,
/// no restart).
pub fn sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    /// glibc's `SA_INTERRUPT` (historical, no effect), passed as glibc passes it.
    const SA_INTERRUPT: c_int = 0x2000_0000;
    install_simple(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER | SA_INTERRUPT, false)
}

/// `SIG_HOLD` (glibc's `<signal.h>`).
const SIG_HOLD: libc::sighandler_t = 2;

/// The calling thread's mask changed by `how` for `sig` alone; the mask before, or `None`.
fn mask_one(how: c_int, sig: c_int) -> Option<libc::sigset_t> {
    // SAFETY: plain data.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    set_mask_bits(&mut set, 1u64 << (sig - 1));
    // SAFETY: plain data, filled below.
    let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: two live sets.
    (unsafe { libc::pthread_sigmask(how, &set, &mut before) } == 0).then_some(before)
}

/// The application's `sigset` (System V: `SIG_HOLD` blocks the signal; any other disposition
/// is installed with no flags and unblocks it; `SIG_HOLD` is returned if it was blocked).
pub fn sigset(sig: c_int, disposition: libc::sighandler_t) -> libc::sighandler_t {
    if disposition == libc::SIG_ERR || !installable(sig) {
        sys::set_errno(libc::EINVAL);
        return libc::SIG_ERR;
    }
    let held = |before: &libc::sigset_t| mask_bits(before) & (1u64 << (sig - 1)) != 0;
    // SAFETY: plain data, filled below.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    if disposition == SIG_HOLD {
        let Some(before) = mask_one(libc::SIG_BLOCK, sig) else { return libc::SIG_ERR };
        if held(&before) {
            return SIG_HOLD;
        }
        // SAFETY: a live struct.
        if unsafe { sigaction(sig, std::ptr::null(), &mut old) } < 0 {
            return libc::SIG_ERR;
        }
        return old.sa_sigaction;
    }
    // SAFETY: plain data; all zero is an empty action with no flags.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = disposition;
    // SAFETY: two live structs.
    if unsafe { sigaction(sig, &act, &mut old) } < 0 {
        return libc::SIG_ERR;
    }
    let Some(before) = mask_one(libc::SIG_UNBLOCK, sig) else { return libc::SIG_ERR };
    if held(&before) {
        SIG_HOLD
    } else {
        old.sa_sigaction
    }
}

/// The application's `sigignore`.
pub fn sigignore(sig: c_int) -> c_int {
    if !installable(sig) {
        sys::set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: plain data; all zero is an empty action.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = libc::SIG_IGN;
    // SAFETY: a live struct.
    unsafe { sigaction(sig, &act, std::ptr::null_mut()) }
}

/// The application's `siginterrupt`: `SA_RESTART` off (`interrupt`) or on for the installed
/// disposition, remembered for later [`bsd_signal`] calls.
pub fn siginterrupt(sig: c_int, interrupt: c_int) -> c_int {
    if !installable(sig) {
        sys::set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: plain data, filled below.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a live struct.
    if unsafe { sigaction(sig, std::ptr::null(), &mut act) } < 0 {
        return -1;
    }
    let bit = 1u64 << (sig - 1);
    // (Not remembered by a child in its parent's memory: that would be the parent's.)
    let mine = records_mine();
    if interrupt != 0 {
        if mine {
            SIGINTR.fetch_or(bit, Relaxed);
        }
        act.sa_flags &= !libc::SA_RESTART;
    } else {
        if mine {
            SIGINTR.fetch_and(!bit, Relaxed);
        }
        act.sa_flags |= libc::SA_RESTART;
    }
    // SAFETY: a live struct.
    unsafe { sigaction(sig, &act, std::ptr::null_mut()) }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;

    fn kernel_handler(sig: c_int) -> (usize, c_int) {
        // SAFETY: plain data, filled by sigaction.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a query into a live struct.
        assert_eq!(unsafe { sys::sigaction(sig, std::ptr::null(), &mut now) }, 0);
        (now.sa_sigaction, now.sa_flags)
    }

    fn install(sig: c_int, handler: usize, flags: c_int) -> libc::sigaction {
        // SAFETY: plain data.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = handler;
        act.sa_flags = flags;
        set_mask_bits(&mut act.sa_mask, 1u64 << (libc::SIGHUP - 1));
        // SAFETY: plain data, filled below.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: two live structs.
        assert_eq!(unsafe { sigaction(sig, &act, &mut old) }, 0);
        old
    }

    fn query(sig: c_int) -> libc::sigaction {
        // SAFETY: plain data, filled below.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a live struct.
        assert_eq!(unsafe { sigaction(sig, std::ptr::null(), &mut old) }, 0);
        old
    }

    /// Calls of `one_arg` and `three_args`, by signal (each test has signals of its own).
    static ONE_ARG: [AtomicUsize; NSIG] = [const { AtomicUsize::new(0) }; NSIG];
    static THREE_ARGS: [AtomicUsize; NSIG] = [const { AtomicUsize::new(0) }; NSIG];

    extern "C" fn one_arg(sig: c_int) {
        ONE_ARG[sig as usize].fetch_add(1, Relaxed);
    }

    extern "C" fn three_args(sig: c_int, info: *mut siginfo_t, _: *mut c_void) {
        // SAFETY: the kernel's siginfo.
        let signo = unsafe { (*info).si_signo };
        if signo == sig {
            THREE_ARGS[sig as usize].fetch_add(1, Relaxed);
        }
    }

    fn calls(of: &[AtomicUsize; NSIG], sig: c_int) -> usize {
        of[sig as usize].load(Relaxed)
    }

    #[test]
    fn an_application_handler_runs_behind_the_trampoline_and_its_own_action_comes_back() {
        let sig = libc::SIGRTMIN() + 3;
        let old = install(sig, one_arg as extern "C" fn(c_int) as usize, libc::SA_RESTART);
        assert_eq!(old.sa_sigaction, libc::SIG_DFL);
        assert_eq!(kernel_handler(sig).0, trampoline_address(), "the kernel has the trampoline");
        let seen = query(sig);
        assert_eq!(seen.sa_sigaction, one_arg as extern "C" fn(c_int) as usize, "the application's own handler comes back");
        assert_eq!(seen.sa_flags & (libc::SA_SIGINFO | libc::SA_RESTART), libc::SA_RESTART, "its own flags");
        assert_eq!(mask_bits(&seen.sa_mask), 1u64 << (libc::SIGHUP - 1), "its own mask");
        let mark = Mark::now();
        sys::raise_in_thread(sig);
        assert_eq!(calls(&ONE_ARG, sig), 1, "called once, with one argument");
        assert_eq!(mark.interrupted(), Some(Interruption::Restartable));
        // Without SA_RESTART, three arguments.
        let old = install(sig, three_args as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize, libc::SA_SIGINFO);
        assert_eq!(old.sa_sigaction, one_arg as extern "C" fn(c_int) as usize);
        let mut mark = Mark::now();
        assert_eq!(mark.interrupted(), None);
        sys::raise_in_thread(sig);
        assert_eq!(calls(&THREE_ARGS, sig), 1, "called with the signal's siginfo");
        assert_eq!(mark.interrupted(), Some(Interruption::NotRestartable));
        assert!(mark.interrupts_transfer(|| false));
        // Back to the default: the kernel's too.
        let old = install(sig, libc::SIG_DFL, 0);
        assert_eq!(old.sa_sigaction, three_args as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize);
        assert_eq!(old.sa_flags & libc::SA_SIGINFO, libc::SA_SIGINFO);
        assert_eq!(kernel_handler(sig).0, libc::SIG_DFL);
        // A restartable interruption lets a transfer go on, unless its socket has a timeout.
        install(sig, one_arg as extern "C" fn(c_int) as usize, libc::SA_RESTART);
        let mut mark = Mark::now();
        sys::raise_in_thread(sig);
        assert!(mark.interrupts_transfer(|| true), "a socket timeout: EINTR even with SA_RESTART");
        let mut mark = Mark::now();
        sys::raise_in_thread(sig);
        assert!(!mark.interrupts_transfer(|| false), "SA_RESTART, no timeout: goes on");
        assert_eq!(mark.interrupted(), None, "the mark moved on");
        install(sig, libc::SIG_IGN, 0);
    }

    #[test]
    fn a_reset_handler_reads_back_as_the_default_with_its_flags() {
        let sig = libc::SIGRTMIN() + 4;
        install(sig, one_arg as extern "C" fn(c_int) as usize, libc::SA_RESETHAND);
        sys::raise_in_thread(sig);
        assert_eq!(calls(&ONE_ARG, sig), 1);
        let seen = query(sig);
        assert_eq!(seen.sa_sigaction, libc::SIG_DFL, "reset by the kernel");
        assert_eq!(seen.sa_flags & (libc::SA_SIGINFO | libc::SA_RESETHAND), libc::SA_RESETHAND);
        install(sig, libc::SIG_IGN, 0);
    }

    #[test]
    fn a_handler_on_another_thread_does_not_move_this_threads_mark() {
        let sig = libc::SIGRTMIN() + 5;
        install(sig, one_arg as extern "C" fn(c_int) as usize, 0);
        let mark = Mark::now();
        std::thread::spawn(move || sys::raise_in_thread(sig)).join().unwrap();
        assert_eq!(mark.interrupted(), None);
        install(sig, libc::SIG_IGN, 0);
    }

    #[test]
    fn the_simple_installers_keep_glibcs_flags() {
        let sig = libc::SIGRTMIN() + 6;
        let h = one_arg as extern "C" fn(c_int) as usize;
        assert_eq!(bsd_signal(sig, h), libc::SIG_DFL);
        let seen = query(sig);
        assert_eq!((seen.sa_sigaction, seen.sa_flags & libc::SA_RESTART), (h, libc::SA_RESTART));
        assert_eq!(mask_bits(&seen.sa_mask), 1u64 << (sig - 1));
        assert_eq!(siginterrupt(sig, 1), 0);
        assert_eq!(query(sig).sa_flags & libc::SA_RESTART, 0);
        let (kernel, kernel_flags) = kernel_handler(sig);
        assert_eq!((kernel, kernel_flags & (libc::SA_SIGINFO | libc::SA_RESTART)), (trampoline_address(), libc::SA_SIGINFO));
        assert_eq!(bsd_signal(sig, h), h);
        assert_eq!(query(sig).sa_flags & libc::SA_RESTART, 0, "siginterrupt is remembered");
        assert_eq!(siginterrupt(sig, 0), 0);
        assert_eq!(sysv_signal(sig, h), h);
        assert_eq!(query(sig).sa_flags & (libc::SA_RESETHAND | libc::SA_NODEFER | libc::SA_RESTART), libc::SA_RESETHAND | libc::SA_NODEFER);
        assert_eq!(sigset(sig, SIG_HOLD), h);
        assert_eq!(sigset(sig, SIG_HOLD), SIG_HOLD, "already held");
        assert_eq!(sigset(sig, libc::SIG_DFL), SIG_HOLD, "was held");
        assert_eq!(sigignore(sig), 0);
        assert_eq!(query(sig).sa_sigaction, libc::SIG_IGN);
        assert_eq!(bsd_signal(0, h), libc::SIG_ERR);
        assert_eq!(bsd_signal(sig, libc::SIG_ERR), libc::SIG_ERR);
        assert_eq!(sigset(33, h), libc::SIG_ERR);
    }

    static HOOK_TAKES: AtomicBool = AtomicBool::new(true);
    static HOOK_SAW: AtomicUsize = AtomicUsize::new(0);
    fn hook(sig: c_int, _: *mut siginfo_t, _: *mut c_void) -> bool {
        HOOK_SAW.fetch_add(sig as usize, Relaxed);
        HOOK_TAKES.load(Relaxed)
    }

    #[test]
    fn an_owned_signal_records_the_applications_disposition_and_passes_what_the_hook_declines() {
        let sig = libc::SIGRTMIN() + 7;
        let h = one_arg as extern "C" fn(c_int) as usize;
        // The application's handler first: not taken if only at its default.
        install(sig, h, libc::SA_RESTART);
        assert!(!own(sig, hook, Take::IfDefault), "the application has a handler");
        assert!(own(sig, hook, Take::Always));
        assert!(own(sig, hook, Take::IfDefault), "already owned with this handler");
        assert!(owned(sig));
        assert_eq!(application_disposition(sig).map(|(h, f)| (h, f & !SA_RESTORER)), Some((h, libc::SA_RESTART)));
        // The hook takes it: the application's handler does not run, no wait is interrupted.
        let before_hook = HOOK_SAW.load(Relaxed);
        let mark = Mark::now();
        sys::raise_in_thread(sig);
        assert_eq!(HOOK_SAW.load(Relaxed), before_hook + sig as usize);
        assert_eq!(calls(&ONE_ARG, sig), 0);
        assert_eq!(mark.interrupted(), None);
        // Declined: the application's handler.
        HOOK_TAKES.store(false, Relaxed);
        sys::raise_in_thread(sig);
        assert_eq!(calls(&ONE_ARG, sig), 1);
        assert_eq!(mark.interrupted(), Some(Interruption::Restartable));
        // The application's calls are recorded, not installed.
        let old = install(sig, libc::SIG_IGN, 0);
        assert_eq!((old.sa_sigaction, old.sa_flags & !SA_RESTORER), (h, libc::SA_RESTART));
        assert_eq!(mask_bits(&old.sa_mask), 1u64 << (libc::SIGHUP - 1));
        assert_eq!(kernel_handler(sig).0, trampoline_address(), "the hook keeps it");
        assert_eq!(query(sig).sa_sigaction, libc::SIG_IGN);
        sys::raise_in_thread(sig);
        assert_eq!(calls(&ONE_ARG, sig), 1, "ignored, as recorded");
        // SA_RESETHAND, emulated: the handler once, then the default.
        install(sig, h, libc::SA_RESETHAND);
        sys::raise_in_thread(sig);
        assert_eq!(calls(&ONE_ARG, sig), 2);
        assert_eq!(query(sig).sa_sigaction, libc::SIG_DFL);
        assert_eq!(kernel_handler(sig).0, trampoline_address());
        HOOK_TAKES.store(true, Relaxed);
    }

    /// The signal a vfork-like child resets (see the test below).
    static CHILD_SIG: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn child_resets_to_default(_: *mut c_void) -> c_int {
        let sig = CHILD_SIG.load(Relaxed) as c_int;
        // SAFETY: plain data.
        let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        dfl.sa_sigaction = libc::SIG_DFL;
        // SAFETY: plain data, filled below.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: two live structs (on this child's own stack).
        let rc = unsafe { sigaction(sig, &dfl, &mut old) };
        // The parent's handler, as the child inherited it, comes back to the child.
        if rc == 0 && old.sa_sigaction == one_arg as extern "C" fn(c_int) as usize {
            0
        } else {
            1
        }
    }

    /// A child that runs in its parent's memory (`vfork`, as dash's) and sets the default for a
    /// signal before it execs must not change its parent's record: the parent's kernel
    /// disposition is still the trampoline, and its next signal would take the default action
    /// (terminate).
    #[test]
    fn a_child_in_its_parents_memory_leaves_the_parents_records_alone() {
        let sig = libc::SIGRTMIN() + 9;
        let h = one_arg as extern "C" fn(c_int) as usize;
        install(sig, h, 0);
        CHILD_SIG.store(sig as usize, Relaxed);
        let mut stack = vec![0u8; 64 * 1024];
        // SAFETY: the top of a live stack for the child, which shares this memory and runs
        // while this thread waits (CLONE_VFORK); the child function allocates nothing.
        let pid = unsafe {
            libc::clone(
                child_resets_to_default,
                stack.as_mut_ptr().add(stack.len()).cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::null_mut(),
            )
        };
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child: {status:#x}");
        assert_eq!(query(sig).sa_sigaction, h, "the parent's record");
        sys::raise_in_thread(sig);
        assert_eq!(calls(&ONE_ARG, sig), 1, "the parent's handler, not the default action");
        install(sig, libc::SIG_IGN, 0);
    }

    #[test]
    fn a_signal_at_its_default_is_owned_only_if_default() {
        let sig = libc::SIGRTMIN() + 8;
        assert!(own(sig, hook, Take::IfDefault));
        assert_eq!(application_disposition(sig), Some((libc::SIG_DFL, 0)));
        assert!(!own(libc::SIGKILL, hook, Take::Always));
        assert!(!own(0, hook, Take::Always));
    }
}
