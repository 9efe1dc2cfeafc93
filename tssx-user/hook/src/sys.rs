//! Every system call the hook makes goes through this module.
//!
//! * [`real`]-table functions (`sys::read`, `sys::send`, ...): libc's own definitions, resolved
//!   once with `dlsym(RTLD_NEXT)`, for calls the hook makes on the application's behalf (the
//!   application's `read` of a plain fd is libc's `read`, with its errno and cancellation
//!   semantics).
//! * raw system calls ([`tssx_shm::sys`], re-exported here): for the hook's own business
//!   (`fstat`, the agent's control socket, doorbells, locks); they leave `errno` alone.
//!
//! Never `libc::read` and the like: inside `libtssx_preload.so` those names are the hook's own
//! exports, so such a call would recurse into the hook. The build of the `.so` and a test that
//! reads its relocations check that no call binds to one of the hook's own exports.
//!
//! Each table pointer is an `AtomicUsize` read with `Relaxed`: it is written once by the
//! constructor (or lazily by the first caller, with the same value), and a function pointer
//! carries no data that needs ordering.

use std::{
    cell::Cell,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

use libc::c_int;
pub use tssx_shm::sys::{fstat, gettid, raise_in_thread, read_file, readlink, sched_yield, stat, Errno, Fd};

/// The names of every function in the table, for the build's and the tests' checks.
pub use real::NAMES as REAL_NAMES;

macro_rules! real_fns {
    ($($(#[$lazy:ident])? $name:ident: fn($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// The names of the functions of the table.
        pub mod real {
            /// Every function of the table, by its libc name.
            pub const NAMES: &[&str] = &[$(stringify!($name)),*];
        }

        /// One resolved address per function (0 until resolved).
        mod slots {
            use super::AtomicUsize;
            $(
                #[allow(non_upper_case_globals)]
                pub static $name: AtomicUsize = AtomicUsize::new(0);
            )*
        }

        /// Resolves every function not marked `#[lazy]` now. No longer called by the library
        /// constructor: every function is resolved at its first use, by a lookup that takes
        /// no lock ([`crate::symbols`]: safe in a signal handler, unlike `dlsym`, which is
        /// only its fallback), so that a process that never calls one pays nothing (see
        /// `cargo xtask start-cost`). The `#[lazy]` marks remain as documentation of the
        /// functions the hook rarely needs.
        pub fn resolve_all() {
            $( real_fns!(@eager $($lazy)? $name); )*
        }

        $(
            /// The real libc function of this name.
            #[allow(clippy::missing_safety_doc)]
            #[inline]
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                let f = slots::$name.load(Relaxed);
                if f == 0 {
                    // SAFETY: as this function.
                    return unsafe { first($($arg),*) };
                }
                // SAFETY: `f` is the address found for this libc symbol, whose C signature is
                // the one declared here.
                let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(f) };
                // SAFETY: the caller passes what the libc function expects.
                return unsafe { f($($arg),*) };

                /// The first call: resolves, then calls. Out of line and whole (the address
                /// found and the call), so that both ways out of the caller are tail calls:
                /// a pass-through export then saves no register (each save is code on the
                /// application's every call).
                #[cold]
                #[inline(never)]
                unsafe fn first($($arg: $ty),*) -> $ret {
                    let f = resolve_first(&slots::$name, concat!(stringify!($name), "\0"));
                    // SAFETY: as above.
                    let f: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(f) };
                    // SAFETY: as above.
                    unsafe { f($($arg),*) }
                }
            }
        )*
    };
    (@eager lazy $name:ident) => {};
    (@eager $name:ident) => {
        let _ = resolve(&slots::$name, concat!(stringify!($name), "\0"));
    };
}

#[inline(always)]
fn resolve(slot: &AtomicUsize, name: &str) -> usize {
    let f = slot.load(Relaxed);
    if f != 0 {
        return f;
    }
    resolve_first(slot, name)
}

/// [`resolve`]'s first call for a function: out of line (the exports' pass-through path inlines
/// [`resolve`]), and unable to unwind (that path runs outside the exports' panic guard).
#[cold]
#[inline(never)]
fn resolve_first(slot: &AtomicUsize, name: &str) -> usize {
    // Without a lock first (see `symbols`); dlsym if that finds nothing.
    let found = std::panic::catch_unwind(|| crate::symbols::find(name.as_bytes())).ok().flatten();
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT finds libc's definition after ours.
    let f = found.unwrap_or_else(|| unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize);
    if f == 0 {
        // No next definition: nothing sane to do inside someone else's process.
        // SAFETY: abort has no preconditions.
        unsafe { libc::abort() };
    }
    slot.store(f, Relaxed);
    f
}

/// The address of libc's `name` if this libc has it (resolved once into `slot`; `None`, and
/// no abort, when it has not: for functions newer than the oldest glibc the hook loads with).
pub fn resolve_optional(slot: &AtomicUsize, name: &std::ffi::CStr) -> Option<usize> {
    let f = slot.load(Relaxed);
    if f != 0 {
        return Some(f);
    }
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT finds libc's definition after ours.
    let f = crate::symbols::find(name.to_bytes()).unwrap_or_else(|| unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize);
    slot.store(f, Relaxed);
    (f != 0).then_some(f)
}

/// The address of libc's `syscall` (variadic: jumped to, never called from Rust; see the
/// preload crate's `syscall` trampoline).
pub fn real_syscall_address() -> usize {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    resolve(&SLOT, "syscall\0")
}

use libc::{c_void, iovec, msghdr, nfds_t, pollfd, size_t, sockaddr, socklen_t, ssize_t};

real_fns! {
    read: fn(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    write: fn(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    readv: fn(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    writev: fn(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    recv: fn(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    send: fn(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    recvfrom: fn(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    sendto: fn(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    recvmsg: fn(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    sendmsg: fn(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    close: fn(fd: c_int) -> c_int;
    socket: fn(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    connect: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    accept: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    accept4: fn(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    poll: fn(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int;
    dup: fn(fd: c_int) -> c_int;
    dup2: fn(old: c_int, new: c_int) -> c_int;
    dup3: fn(old: c_int, new: c_int, flags: c_int) -> c_int;
    fcntl: fn(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int;
    ioctl: fn(fd: c_int, request: libc::c_ulong, arg: *mut c_void) -> c_int;
    shutdown: fn(fd: c_int, how: c_int) -> c_int;
    ppoll: fn(fds: *mut pollfd, n: nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    select: fn(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int;
    pselect: fn(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    #[lazy] epoll_ctl: fn(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
    #[lazy] epoll_create: fn(size: c_int) -> c_int;
    #[lazy] epoll_create1: fn(flags: c_int) -> c_int;
    #[lazy] epoll_wait: fn(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int;
    #[lazy] epoll_pwait: fn(epfd: c_int, ev: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
    #[lazy] sendfile: fn(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t;
    setsockopt: fn(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int;
    getsockopt: fn(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int;
    #[lazy] splice: fn(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, len: size_t, flags: libc::c_uint) -> ssize_t;
    fork: fn() -> libc::pid_t;
    execve: fn(path: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
    #[lazy] execvpe: fn(file: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
    fexecve: fn(fd: c_int, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
    #[lazy] posix_spawn: fn(pid: *mut libc::pid_t, path: *const libc::c_char, fa: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut libc::c_char, envp: *const *mut libc::c_char) -> c_int;
    #[lazy] posix_spawnp: fn(pid: *mut libc::pid_t, file: *const libc::c_char, fa: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut libc::c_char, envp: *const *mut libc::c_char) -> c_int;
    #[lazy] recvmmsg: fn(fd: c_int, msgs: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    #[lazy] sendmmsg: fn(fd: c_int, msgs: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int) -> c_int;
    __read_chk: fn(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t;
    __recv_chk: fn(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t;
    __recvfrom_chk: fn(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    __poll_chk: fn(fds: *mut pollfd, n: nfds_t, timeout: c_int, fdslen: size_t) -> c_int;
    __ppoll_chk: fn(fds: *mut pollfd, n: nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t, fdslen: size_t) -> c_int;
    #[lazy] preadv2: fn(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off_t, flags: c_int) -> ssize_t;
    #[lazy] preadv64v2: fn(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off64_t, flags: c_int) -> ssize_t;
    #[lazy] pwritev2: fn(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off_t, flags: c_int) -> ssize_t;
    #[lazy] pwritev64v2: fn(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off64_t, flags: c_int) -> ssize_t;
    #[lazy] fdopen: fn(fd: c_int, mode: *const libc::c_char) -> *mut libc::FILE;
    #[lazy] posix_spawn_file_actions_init: fn(fa: *mut libc::posix_spawn_file_actions_t) -> c_int;
    #[lazy] posix_spawn_file_actions_destroy: fn(fa: *mut libc::posix_spawn_file_actions_t) -> c_int;
    #[lazy] posix_spawn_file_actions_addclose: fn(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int) -> c_int;
    #[lazy] posix_spawn_file_actions_adddup2: fn(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int, newfd: c_int) -> c_int;
    #[lazy] posix_spawn_file_actions_addopen: fn(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int, path: *const libc::c_char, oflag: c_int, mode: libc::mode_t) -> c_int;
    #[lazy] pclose: fn(stream: *mut libc::FILE) -> c_int;
    // Watched patterns: a relative bind's address is resolved when it is bound.
    #[lazy] bind: fn(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    // Signal dispositions (`signals`); also called from the trampoline (a default action):
    // resolved without a lock.
    #[lazy] sigaction: fn(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
}

/// Resolves `name` (NUL-terminated) in the libraries after the hook, or 0 when libc has no such
/// function (an older glibc): for the functions the hook exports only because newer glibc
/// releases have them.
fn resolve_or_zero(slot: &AtomicUsize, name: &str) -> usize {
    let f = slot.load(Relaxed);
    if f != 0 {
        return f;
    }
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT finds libc's definition after ours.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
    slot.store(f, Relaxed);
    f
}

/// The address of libc's `vfork` (0 if there is none), for the exported `vfork`'s tail jump.
pub fn vfork_address() -> usize {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    resolve_or_zero(&SLOT, "vfork\0")
}

macro_rules! optional_fns {
    ($($fn_name:ident = $sym:literal: fn($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[doc = concat!("libc's `", $sym, "`, or ENOSYS when this libc has none.")]
            #[allow(clippy::missing_safety_doc)]
            pub unsafe fn $fn_name($($arg: $ty),*) -> c_int {
                static SLOT: AtomicUsize = AtomicUsize::new(0);
                let f = resolve_or_zero(&SLOT, concat!($sym, "\0"));
                if f == 0 {
                    return libc::ENOSYS;
                }
                // SAFETY: the address dlsym returned for this libc symbol, whose C signature
                // is the one declared here.
                let f: unsafe extern "C" fn($($ty),*) -> c_int = unsafe { std::mem::transmute(f) };
                // SAFETY: the caller passes what the libc function expects.
                unsafe { f($($arg),*) }
            }
        )*
    };
}

optional_fns! {
    spawn_addclosefrom_np = "posix_spawn_file_actions_addclosefrom_np": fn(fa: *mut libc::posix_spawn_file_actions_t, from: c_int);
    spawn_addchdir_np = "posix_spawn_file_actions_addchdir_np": fn(fa: *mut libc::posix_spawn_file_actions_t, path: *const libc::c_char);
    spawn_addfchdir_np = "posix_spawn_file_actions_addfchdir_np": fn(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int);
    spawn_addtcsetpgrp_np = "posix_spawn_file_actions_addtcsetpgrp_np": fn(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int);
}

unsafe extern "C" {
    /// glibc's report of a failed `_FORTIFY_SOURCE` check: prints "buffer overflow detected"
    /// and aborts (never returns). Not one of the hook's exports, so the `.so` binds it to libc.
    #[link_name = "__chk_fail"]
    fn glibc_chk_fail() -> !;
}

/// A failed `_FORTIFY_SOURCE` check (a length larger than the caller's buffer): what glibc's
/// `_chk` functions do, `__chk_fail()`, which aborts the process.
pub fn chk_fail() -> ! {
    // SAFETY: no preconditions; glibc's own reaction to the check the caller just failed.
    unsafe { glibc_chk_fail() }
}

/// This thread's `errno`.
#[inline]
pub fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Sets this thread's `errno`.
#[inline]
pub fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// `ns` nanoseconds as a `timespec`.
#[inline]
pub fn timespec_of_ns(ns: u64) -> libc::timespec {
    libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long }
}

/// `ms` milliseconds as a `timespec` (a negative count as 0).
#[inline]
pub fn timespec_of_ms(ms: c_int) -> libc::timespec {
    timespec_of_ns(ms.max(0) as u64 * 1_000_000)
}

/// Runs `f` and restores `errno` afterwards: for the hook's own work inside a call whose
/// `errno` belongs to the application.
pub fn with_errno_kept<R>(f: impl FnOnce() -> R) -> R {
    let saved = errno();
    let r = f();
    set_errno(saved);
    r
}

/// The file's O_NONBLOCK (one `F_GETFL`).
pub fn fd_nonblocking(fd: c_int) -> bool {
    tssx_shm::sys::fcntl(fd, libc::F_GETFL, 0).is_ok_and(|flags| flags as c_int & libc::O_NONBLOCK != 0)
}

thread_local! {
    /// This thread's id (0 = not read yet), cached: `gettid` is a system call. Const-initialised
    /// TLS: no allocation, usable from signal handlers; forgotten in a forked child.
    static THREAD_ID: Cell<u32> = const { Cell::new(0) };
}

/// This thread's id (the ring-lock owner id).
pub fn thread_id() -> u32 {
    THREAD_ID.with(|tid| {
        if tid.get() == 0 {
            tid.set(gettid());
        }
        tid.get()
    })
}

/// In a forked child: the calling thread has a new id.
pub fn forget_thread_id() {
    THREAD_ID.with(|tid| tid.set(0));
}

/// `recvmsg` as a raw system call (errno untouched): bytes received, or the errno.
///
/// # Safety
/// `msg` and every buffer it points at must be valid for the call.
#[inline]
pub unsafe fn recvmsg_raw(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> Result<usize, c_int> {
    // SAFETY: per the contract.
    unsafe { tssx_shm::sys::recvmsg(fd, msg, flags) }.map_err(|e| e.0)
}

/// `sendmsg` as a raw system call (errno untouched): bytes sent, or the errno.
///
/// # Safety
/// `msg` and every buffer it points at must be valid for the call.
#[inline]
pub unsafe fn sendmsg_raw(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> Result<usize, c_int> {
    // SAFETY: per the contract.
    unsafe { tssx_shm::sys::sendmsg(fd, msg, flags) }.map_err(|e| e.0)
}

/// `recv` into `buf` as a raw system call (errno untouched).
#[inline]
pub fn recv_raw(fd: c_int, buf: &mut [u8], flags: c_int) -> Result<usize, c_int> {
    tssx_shm::sys::recv(fd, buf, flags).map_err(|e| e.0)
}

/// `send` from `buf` as a raw system call (errno untouched).
#[inline]
pub fn send_raw(fd: c_int, buf: &[u8], flags: c_int) -> Result<usize, c_int> {
    tssx_shm::sys::send(fd, buf, flags).map_err(|e| e.0)
}
