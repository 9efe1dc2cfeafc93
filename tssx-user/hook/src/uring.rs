//! io_uring set up while connections are swapped: every one is handed back to the kernel before
//! the application can submit anything on the new ring.
//!
//! io_uring reads and writes reach the socket without passing through libc (liburing makes raw
//! system calls, and the kernel does the I/O), so no preload sees them: on a swapped connection
//! they would bypass the rings (bytes written lost in the peer's doorbell drain, bytes read
//! being doorbells). The hook cannot see `io_uring_setup` either; the kernel watcher can. How
//! they meet:
//!
//! 1. Before this process's first claim, the hook installs its handler for the real-time
//!    signal [`HANDBACK_SIGNAL`] ([`may_claim`]). A process that has a disposition of its own
//!    for that signal (a handler, or `SIG_IGN`) never claims: its connections stay plain.
//! 2. When the agent pairs a claim, it adds the claimant's tgid to the eBPF map
//!    `HANDBACK_ON_IO_URING` (a forked child inherits the entry; exec and exit remove it).
//! 3. At the exit of a successful `io_uring_setup` by such a process, the eBPF program sends
//!    the signal to the calling thread (`bpf_send_signal_thread`). It is pending when the
//!    system call returns, so the handler (`on_signal`) runs before the thread's next
//!    instruction: before the ring's fd reaches the application's code, so before any
//!    submission on it. The thread, not the process: a process-directed signal may be taken by
//!    another thread, and the one that set the ring up would submit meanwhile.
//! 4. The handler marks the process (no claim from now on, [`io_uring_seen`]), then for every
//!    tracked connection: one not on the rings yet is given up (plain for good); one on the
//!    rings stops reading the peer's ring where it is and asks the peer to replay the rest on
//!    the socket (`Conn::ask_replay`, as before an exec into an image without the hook),
//!    then hands its own direction back ([`Conn::hand_back`]). It then waits (at most
//!    [`WAIT_NS`] in all) for the peers to follow: a peer sleeping on the rings is woken by
//!    the hand-back's doorbell, serves the hand-back from its wait loop and sends what is on
//!    its ring onto the socket first; the handler drains the doorbells the peer sent before,
//!    and the connection is plain. What the io_uring then reads from the socket is what a plain
//!    socket would have held.
//! 5. The agent traces the io_uring (`io_uring ... handback_signal=63`) and each connection's
//!    end (`handed back to the socket ... reason=io_uring`).
//!
//! Why a signal to the thread, and not the agent flagging the segments for the peers to do the
//! work: the agent learns of the io_uring from the event ring, later (up to its 100 ms tick, or
//! a wake-up's latency); the application's first io_uring submission can come microseconds
//! after `io_uring_setup` returns. Meanwhile an io_uring SEND writes data to the real socket,
//! where the peer's hook, which has not seen any flag yet, takes socket bytes for doorbells and
//! drains them (lost), and an io_uring RECV reads the peer's doorbell bytes as data, or waits
//! for bytes that sit on the ring. No flag set later can undo a doorbell drain. The signal
//! closes that window: the kernel runs the handler on the very thread, on its way back from
//! `io_uring_setup`, before it can submit. `bpf_send_signal_thread` is allowed in tracepoint
//! programs (kernel 5.5 on); kprobes, fentry and LSM programs (which could fail the call or
//! delay it) do not load on our kernels. The signal is a real-time one, high in the range (few
//! applications use `SIGRTMAX - 1`; `SIGRTMIN + n` is the usual choice); the handler stays
//! installed for the life of the image (uninstalled, a late signal's default action would
//! terminate the process).
//!
//! Async-signal safety: the kernel's signal is handled at the return of `io_uring_setup`,
//! where the thread is in the application (never inside the hook: the hook makes no
//! `io_uring_setup`), and never inside `malloc` (or, if the thread blocked the signal, at the
//! return of the call that unblocks it: `sigprocmask`, `ppoll`, ...). So no lock of this
//! thread's is held, and what the application's thread could not do at that point, the
//! handler does not need to avoid either. What it does is atomics, leases of the connection
//! table, ring copies and system calls (`send`, `recv`, `shutdown`, `close`, `nanosleep`,
//! `clock_gettime`; `/proc` reads only when a ring lock stays held by another thread);
//! `errno` is kept. A signal from a process (`kill`), which can arrive anywhere, takes the
//! other path: it only reads the application's record (atomics) and calls its handler, or
//! `sigaction` + `raise` for the default action.
//!
//! Limits (see `COVERAGE.md`): a thread that has the signal blocked when it sets up the ring
//! runs the handler only when it unblocks it (its submissions before that bypass the rings; a
//! handler that then runs inside the hook takes over any ring lock that thread held); an
//! application that sets its own disposition for the signal after the hook's first claim
//! through `sigaction` or `signal` gets it recorded, not installed (see `app_sigaction`), but
//! one that goes around libc (`syscall(SYS_rt_sigaction)`, `sysv_signal`, `sigset`) takes it
//! over (`SIG_DFL`: the io_uring setup then terminates the process); a peer that makes no call within [`WAIT_NS`] replays later (as after an
//! exec into an image without the hook); an image started by exec that adopted swapped
//! connections (the hook in the new image) is not in the map until it claims again.

use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicU32, AtomicU8, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

use libc::c_int;
use tssx_common::HANDBACK_SIGNAL;

use crate::{
    conn::{Conn, Phase},
    handback::Source,
    spin::now_ns,
    sys, table,
};

/// How long the handler waits, in all, for the peers to follow the hand-back (ns).
pub const WAIT_NS: u64 = 2_000_000_000;

/// `si_code` of a signal the kernel sent itself (`bpf_send_signal*` sends `SEND_SIG_PRIV`,
/// delivered as `SI_KERNEL`); `kill`, `tgkill` and `sigqueue` from a process cannot forge it.
const SI_KERNEL: c_int = 0x80;

/// The handler's state in this process: not looked at yet, being installed by some thread,
/// installed, or not available (the application has a disposition of its own for the signal).
const UNKNOWN: u8 = 0;
const INSTALLING: u8 = 1;
const INSTALLED: u8 = 2;
const UNAVAILABLE: u8 = 3;

/// See [`UNKNOWN`]. Acquire/Release: a thread that sees `INSTALLED` sees the handler installed
/// (the installing thread's `sigaction` happened before its Release store).
static HANDLER: AtomicU8 = AtomicU8::new(UNKNOWN);

/// This process set up an io_uring while holding connections (the signal arrived): it claims
/// nothing from now on. Inherited across fork (the child holds the ring too). Release in the
/// handler, Acquire in [`io_uring_seen`]: a claimant that sees it sees the hand-backs begun.
static SEEN: AtomicBool = AtomicBool::new(false);

/// Whether this process set up an io_uring while it held connections (the hook then claims
/// nothing more).
#[inline]
pub fn io_uring_seen() -> bool {
    SEEN.load(Acquire)
}

/// Before a claim: `Some(true)` if the hand-back handler is installed (installing it the first
/// time), `Some(false)` if this process must not claim (the application has a disposition of
/// its own for [`HANDBACK_SIGNAL`]), `None` to claim later: another thread is installing the
/// handler right now, or the calling thread blocks the signal (an io_uring it set up would get
/// the hand-back only when it unblocks it, too late; PostgreSQL's backends block every signal
/// while they start, then unblock them: their connections claim on a later call, and those of
/// a thread that blocks it for good never do). Never waits. A process that set up an io_uring
/// still claims: the agent answers plain and traces why (and should it not know, the answer is
/// refused: see [`io_uring_seen`]).
pub fn may_claim() -> Option<bool> {
    match installed()? {
        true if blocked_here() => None,
        installed => Some(installed),
    }
}

/// Whether the calling thread blocks [`HANDBACK_SIGNAL`] (one `rt_sigprocmask` that changes
/// nothing, once per claim).
fn blocked_here() -> bool {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a query (no new set) into a live sigset_t; errno kept.
    let rc = sys::with_errno_kept(|| unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set) });
    // SAFETY: a live, initialized set.
    rc != 0 || unsafe { libc::sigismember(&set, HANDBACK_SIGNAL as c_int) } == 1
}

/// Whether the handler is installed (installing it the first time): `None` while another
/// thread installs it.
fn installed() -> Option<bool> {
    match HANDLER.load(Acquire) {
        INSTALLED => return Some(true),
        UNAVAILABLE => return Some(false),
        INSTALLING => return None,
        _ => {}
    }
    // AcqRel: the winner installs; a loser's Acquire sees the winner's result or INSTALLING.
    match HANDLER.compare_exchange(UNKNOWN, INSTALLING, AcqRel, Acquire) {
        Ok(_) => {}
        Err(INSTALLED) => return Some(true),
        Err(UNAVAILABLE) => return Some(false),
        Err(_) => return None,
    }
    let installed = sys::with_errno_kept(install);
    // Release: pairs with the Acquire loads above (the handler is in place).
    HANDLER.store(if installed { INSTALLED } else { UNAVAILABLE }, Release);
    Some(installed)
}

/// Installs [`on_signal`] for [`HANDBACK_SIGNAL`] if the application left that signal at its
/// default; false if it has a disposition of its own (it is the application's, then). The
/// application's `sigaction` and `signal` calls for that signal wait while this runs (see
/// [`app_sigaction`]), so none is lost between the look and the install.
fn install() -> bool {
    let sig = HANDBACK_SIGNAL as c_int;
    // SAFETY: sigaction is plain data; all zero is a valid empty action.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: reads the current action into a live struct; no new action (libc's sigaction).
    if unsafe { sys::sigaction(sig, std::ptr::null(), &mut old) } != 0 || old.sa_sigaction != libc::SIG_DFL {
        return false;
    }
    // SAFETY: as above.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_signal as extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    // SA_RESTART: a system call this signal interrupts (only possible once the application
    // unblocked it late) restarts as if nothing happened.
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `action.sa_mask` is a live sigset_t.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: a valid action whose handler is a function of this library (never unloaded:
    // a preloaded library stays to the end).
    unsafe { sys::sigaction(sig, &action, std::ptr::null_mut()) == 0 }
}

// ---------------------------------------------------------------------------------------------
// The application's own disposition for the signal, while the hook owns it.
// ---------------------------------------------------------------------------------------------
//
// An application that sets a disposition for the signal after the hook installed its handler
// (a handler, `SIG_IGN`, or `SIG_DFL` as in a loop that resets every signal) would take the
// hand-back away, or (`SIG_DFL`) make the io_uring setup terminate the process. As glibc does for
// its own internal signals, the hook keeps the kernel's disposition and records the
// application's instead: its `sigaction`/`signal` calls read and write that record, and a
// signal that is not the kernel watcher's (`kill`, `sigqueue`, `tgkill`) is passed to the
// recorded handler (`SIG_DFL`: the default action, termination; `SIG_IGN`: nothing).

/// The recorded handler (`sa_sigaction`), flags and a sequence count, odd while written
/// (a seqlock: the signal handler reads without waiting). Writers (the application's calls)
/// take the count from even to odd with a compare-and-swap (Acquire), store, then make it even
/// again (Release); a reader loads it (Acquire), the fields, fences (Acquire) and loads it again.
static APP_SEQ: AtomicU32 = AtomicU32::new(0);
static APP_HANDLER: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static APP_FLAGS: AtomicI32 = AtomicI32::new(0);

/// The recorded disposition: (handler, flags).
fn app_disposition() -> (usize, c_int) {
    for _ in 0..10_000 {
        let seq = APP_SEQ.load(Acquire);
        if seq & 1 == 0 {
            let handler = APP_HANDLER.load(Relaxed);
            let flags = APP_FLAGS.load(Relaxed);
            fence(Acquire);
            if APP_SEQ.load(Relaxed) == seq {
                return (handler, flags);
            }
        }
        std::hint::spin_loop();
    }
    // A writer interrupted on this very thread: take the default.
    (libc::SIG_DFL, 0)
}

/// Records the application's disposition.
fn set_app_disposition(handler: usize, flags: c_int) {
    let mut seq = APP_SEQ.load(Relaxed);
    for _ in 0..1_000_000 {
        // Acquire: after the previous writer's Release (its stores are done).
        if seq & 1 == 0 && APP_SEQ.compare_exchange(seq, seq.wrapping_add(1), Acquire, Relaxed).is_ok() {
            break;
        }
        std::hint::spin_loop();
        seq = APP_SEQ.load(Relaxed);
    }
    // Release fence: a reader that sees a field stored below sees the odd count first.
    fence(Release);
    APP_HANDLER.store(handler, Relaxed);
    APP_FLAGS.store(flags, Relaxed);
    // Release: pairs with the readers' Acquire load of the count.
    APP_SEQ.store((seq | 1).wrapping_add(1), Release);
}

/// Whether the hook owns the signal now, waiting (briefly) while another thread installs it.
fn owned() -> bool {
    loop {
        match HANDLER.load(Acquire) {
            INSTALLED => return true,
            INSTALLING => crate::spin::spin_yield(),
            _ => return false,
        }
    }
}

/// The application's `sigaction(sig, act, old)`: `None` when it is not the hook's business
/// (another signal, or the hook does not own this one: libc's `sigaction` answers); else the
/// result, after reading and writing the record (see above): 0, or -1 with `errno` EFAULT
/// (a bad pointer) or EINVAL (`SA_SIGINFO` is kept, `SA_RESETHAND` honoured, other flags and
/// the mask recorded as given but not applied).
///
/// # Safety
/// `act` and `old` are null or point to `sigaction` structs (checked for range only, as every
/// pointer the hook receives).
pub unsafe fn app_sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> Option<c_int> {
    if sig != HANDBACK_SIGNAL as c_int || !owned() {
        return None;
    }
    if (!act.is_null() && !crate::iov::value_ok(act)) || (!old.is_null() && !crate::iov::value_ok(old)) {
        sys::set_errno(libc::EFAULT);
        return Some(-1);
    }
    // Read first: `act` and `old` may be the same struct.
    // SAFETY: checked above; read unaligned as the kernel would.
    let new = (!act.is_null()).then(|| unsafe { std::ptr::read_unaligned(act) });
    if !old.is_null() {
        let (handler, flags) = app_disposition();
        // SAFETY: plain data; all zero is an empty mask.
        let mut was: libc::sigaction = unsafe { std::mem::zeroed() };
        was.sa_sigaction = handler;
        was.sa_flags = flags;
        // SAFETY: checked above.
        unsafe { std::ptr::write_unaligned(old, was) };
    }
    if let Some(new) = new {
        set_app_disposition(new.sa_sigaction, new.sa_flags);
    }
    Some(0)
}

/// The application's `signal(sig, handler)` (BSD semantics, as glibc's: `SA_RESTART`): `None`
/// when it is not the hook's business; else the previous recorded handler.
pub fn app_signal(sig: c_int, handler: libc::sighandler_t) -> Option<libc::sighandler_t> {
    if sig != HANDBACK_SIGNAL as c_int || !owned() {
        return None;
    }
    let (was, _) = app_disposition();
    set_app_disposition(handler, libc::SA_RESTART);
    Some(was)
}

/// A signal that is not the kernel watcher's goes where the application's record says.
fn to_application(sig: c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let (handler, flags) = app_disposition();
    match handler {
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            // The default action of a real-time signal: terminate, as the kernel would have.
            // SAFETY: restores the default disposition (libc's sigaction) and re-raises the
            // signal to this thread, where it is blocked until this handler returns.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                sys::sigaction(sig, &dfl, std::ptr::null_mut());
                libc::raise(sig);
            }
        }
        _ => {
            if flags & libc::SA_RESETHAND != 0 {
                set_app_disposition(libc::SIG_DFL, 0);
            }
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the application installed this address as a three-argument handler.
                let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(handler) };
                f(sig, info, context);
            } else {
                // SAFETY: the application installed this address as a one-argument handler.
                let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(handler) };
                f(sig);
            }
        }
    }
}

/// The hand-back signal's handler: acts only on the kernel's own signal (see [`SI_KERNEL`]);
/// any other goes where the application's record says ([`app_sigaction`]).
extern "C" fn on_signal(sig: c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t (checked for null anyway).
    if info.is_null() || unsafe { (*info).si_code } != SI_KERNEL {
        sys::with_errno_kept(|| to_application(sig, info, context));
        return;
    }
    // A panic must not unwind out of a signal handler (that aborts); nothing here panics, and
    // should it, the connections stay as they are.
    let _ = std::panic::catch_unwind(|| sys::with_errno_kept(hand_back_all));
}

/// Hands every connection of this process back to the kernel and gives up every one not on the
/// rings yet (see the module documentation); waits at most [`WAIT_NS`] for the peers. Returns
/// how many connections were left unfinished (their peers did not follow in time).
pub fn hand_back_all() -> usize {
    // Release: pairs with the Acquire of `io_uring_seen` (claims stop).
    SEEN.store(true, Release);
    // Every replay asked for before any hand-back: with both ends of a connection in this
    // process, each end's hand-back then replays what the other had not read.
    table::for_each_tracked(|fd, conn| match conn.phase() {
        Phase::Plain | Phase::Unconnected => {}
        phase if phase < Phase::Ready => conn.give_up(),
        _ => {
            conn.note_fd(fd);
            conn.ask_replay();
        }
    });
    table::for_each_tracked(|fd, conn| {
        if conn.phase() >= Phase::Ready && conn.phase() != Phase::Plain {
            conn.hand_back(fd);
        }
    });
    let deadline = now_ns() + WAIT_NS;
    let mut nap_us = 20;
    loop {
        let mut left = 0;
        table::for_each_tracked(|_, conn| match progress(conn) {
            Progress::Done => {}
            // The peer handed back on its own at the same moment and replays nothing: its
            // ring's bytes stay readable through the hook (not through the io_uring).
            Progress::NoReplay => conn.drop_replay(),
            Progress::Waiting => left += 1,
        });
        if left == 0 {
            return 0;
        }
        if now_ns() > deadline {
            // The peers that did not follow replay on their next call; until then this
            // process reads their ring through the hook (the io_uring sees those bytes later).
            table::for_each_tracked(|_, conn| {
                if matches!(progress(conn), Progress::Waiting) {
                    conn.drop_replay();
                }
            });
            return left;
        }
        // nanosleep: async-signal-safe.
        std::thread::sleep(std::time::Duration::from_micros(nap_us));
        nap_us = (nap_us * 2).min(2000);
    }
}

/// Where a connection's hand-back stands, for [`hand_back_all`].
enum Progress {
    /// Plain (or never on the rings).
    Done,
    /// The peer handed back without the replay this end asked for.
    NoReplay,
    /// The peer has not followed yet.
    Waiting,
}

fn progress(conn: &Conn) -> Progress {
    match conn.phase() {
        Phase::Plain | Phase::Unconnected => return Progress::Done,
        phase if phase < Phase::Ready => return Progress::Done,
        _ => {}
    }
    if conn.finish_hand_back() {
        return Progress::Done;
    }
    if conn.peer_handed_back() && !matches!(conn.read_source(), Source::Socket) {
        return Progress::NoReplay;
    }
    Progress::Waiting
}
