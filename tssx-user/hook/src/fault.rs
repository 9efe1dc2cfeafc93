//! Bad buffers anywhere in user space: EFAULT, never a signal.
//!
//! Every copy between a ring and an application's buffer (and of the application's iovec
//! arrays, headers, addresses, ints and pollfds) is [`tssx_shm::ucopy::copy`], a routine whose
//! few loads and stores are at known addresses. The hook owns SIGSEGV and SIGBUS ([`crate::signals::own`],
//! taken whatever the application's disposition): its handler (`on_fault`) looks at the
//! faulting instruction, and when it is the copy's, moves the thread to the copy's resume point,
//! where the copy returns the bytes it did not move; the ring then publishes nothing of that
//! transfer ([`tssx_shm::ring::Transfer::fault`]) and the call answers as the kernel does
//! (see [`crate::iov`]). Every other fault is declined and goes to the application's recorded
//! disposition: its handler (with its arity, flags and alternate stack: Rust's stack-overflow
//! handler keeps working), or the default (the fault recurs with the default disposition: the
//! same death, core dump and exit status as without the hook), `SIG_IGN` acting as the kernel
//! forces it (the default).
//!
//! The handlers are installed at the process's first tracked connection ([`arm`]: a connect or
//! accept on a watched path, or a segment adopted across exec or with `SCM_RIGHTS`): a process
//! that never talks on a watched path pays nothing, at start or later, and the hook reads
//! nothing of an application's memory for a socket it does not track. After `fork` the child
//! keeps them (and the flag); after `exec` the new image installs them again at its first
//! tracked connection.

use std::sync::atomic::{
    AtomicU32,
    Ordering::{Acquire, Relaxed, Release},
};

use libc::{c_int, c_void, siginfo_t};

use crate::{
    signals::{self, Take},
    sys,
};

/// [`ARM`]'s value once both handlers are installed (no thread id is `u32::MAX`).
const ARMED: u32 = u32::MAX;

/// Whether [`arm`] ran in this process: 0 not yet, [`ARMED`] done, any other value the id of
/// the thread installing the handlers now. A thread that finds another one installing waits
/// for it: returning at once, as a plain flag did, let it copy from a bad buffer with the
/// application's disposition still in place (a crash instead of EFAULT).
static ARM: AtomicU32 = AtomicU32::new(0);

/// Takes SIGSEGV and SIGBUS for `on_fault`, once per process image. Cheap after the first
/// call (one load). On return the handlers are in place, unless this thread was already
/// installing them (a handler of the application's that interrupted it): then nothing is
/// armed yet, and the hook behaves as unarmed ([`is_armed`] false) until the install ends.
/// Never from a signal handler of the hook's own.
#[inline]
pub fn arm() {
    // Acquire: pairs with the Release store of `ARMED` in `arm_slow` (the handlers are in
    // place before anyone sees the word).
    if ARM.load(Acquire) != ARMED {
        arm_slow();
    }
}

#[cold]
fn arm_slow() {
    let me = sys::thread_id();
    // Acquire on both outcomes: as `arm`.
    match ARM.compare_exchange(0, me, Acquire, Acquire) {
        Ok(_) => {
            for sig in [libc::SIGSEGV, libc::SIGBUS] {
                signals::own(sig, on_fault, Take::Always);
            }
            // Release: pairs with the Acquire loads of `arm`, `arm_slow` and `is_armed`.
            ARM.store(ARMED, Release);
        }
        Err(ARMED) => {}
        // This thread is the installer, interrupted: it cannot wait for itself.
        Err(installer) if installer == me => {}
        // Another thread is installing: a few `sigaction` calls.
        Err(_) => {
            // Acquire: as `arm`.
            while ARM.load(Acquire) != ARMED {
                sys::sched_yield();
            }
        }
    }
}

/// Whether [`arm`] finished in this image: faults of the user copy become EFAULT (one load;
/// Acquire, as `arm`: the handlers are in place when it says so).
#[inline]
pub fn is_armed() -> bool {
    ARM.load(Acquire) == ARMED
}

/// In the child after `fork`: an install that another thread of the parent had under way
/// has no thread to finish it here, so the child's next [`arm`] starts it over (taking a
/// signal the hook already owns is a no-op, see [`signals::own`]).
pub fn in_child() {
    // Relaxed: the child has one thread.
    if ARM.load(Relaxed) != ARMED {
        ARM.store(0, Relaxed);
    }
}

/// Whether this process's SIGSEGV and SIGBUS are the hook's (for tests).
pub fn armed() -> bool {
    signals::owned(libc::SIGSEGV) && signals::owned(libc::SIGBUS)
}

/// The hook's SIGSEGV/SIGBUS handler: a fault of the user copy resumes where
/// [`tssx_shm::ucopy::fixup`] says (`true`: handled); any other goes on to the application's disposition (`false`).
/// Async-signal-safe: reads and writes the interrupted context only.
fn on_fault(_sig: c_int, _info: *mut siginfo_t, context: *mut c_void) -> bool {
    if context.is_null() {
        return false;
    }
    resume_after_copy(context.cast())
}

/// Moves the interrupted thread of `uc` to the copy routine's resume point if it faulted in
/// the copy (x86-64).
#[cfg(target_arch = "x86_64")]
fn resume_after_copy(uc: *mut libc::ucontext_t) -> bool {
    // SAFETY: the kernel's context of the interrupted thread (SA_SIGINFO), live for the
    // handler's duration; only the instruction pointer is read and written.
    let rip = unsafe { &mut (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] };
    match tssx_shm::ucopy::fixup(*rip as usize) {
        Some(to) => {
            *rip = to as i64;
            true
        }
        None => false,
    }
}

/// Other architectures: the copy is a `memcpy` (see [`tssx_shm::ucopy`]); nothing to resume.
#[cfg(not(target_arch = "x86_64"))]
fn resume_after_copy(_uc: *mut libc::ucontext_t) -> bool {
    false
}
