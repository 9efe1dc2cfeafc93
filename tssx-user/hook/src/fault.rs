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

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use libc::{c_int, c_void, siginfo_t};

use crate::signals::{self, Take};

/// Whether [`arm`] ran in this process (Relaxed: a second `arm` racing the first is harmless,
/// `signals::own` with the same handler is idempotent).
static ARMED: AtomicBool = AtomicBool::new(false);

/// Takes SIGSEGV and SIGBUS for `on_fault`, once per process image. Cheap after the first
/// call (one load). Never from a signal handler of the hook's own.
#[inline]
pub fn arm() {
    if !ARMED.load(Relaxed) {
        arm_slow();
    }
}

#[cold]
fn arm_slow() {
    ARMED.store(true, Relaxed);
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        signals::own(sig, on_fault, Take::Always);
    }
}

/// Whether [`arm`] ran in this image: faults of the user copy become EFAULT (one relaxed load).
#[inline]
pub fn is_armed() -> bool {
    ARMED.load(Relaxed)
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
