//! `libtssx_preload.so`: the libc names the tssx hook interposes (via `LD_PRELOAD` or
//! `/etc/ld.so.preload`), each a one-line `extern "C"` function that calls its twin in
//! [`tssx_hook::calls`], where the logic lives (see that crate's documentation).
//!
//! Nothing else is here: the library constructor, the `execl*` trampolines (C varargs), and the
//! `__wrap_*` functions through which the linker routes every internal reference to an
//! interposed name (see `build.rs`), so that no call inside the `.so` binds to its own exports.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use libc::{c_char, c_int, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

/// Resolves the real functions when the library is loaded, before `main`.
#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    // A panic here would abort the process before `main`: the hook then simply does less.
    let _ = std::panic::catch_unwind(tssx_hook::calls::init);
}

/// Runs one hooked call so that no panic ever leaves an exported function: a panic (a bug of
/// the hook, never expected) is caught here and the call fails with -1 and `errno` EIO, rather
/// than unwinding into C (which Rust turns into an abort of the application). The hook is
/// built with `panic = "unwind"` (the default) for this; catching costs nothing on the path
/// that does not panic.
#[inline(always)]
fn guarded<R: From<i8>>(f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            tssx_hook::sys::set_errno(libc::EIO);
            R::from(-1)
        }
    }
}

/// Debug builds only (the ones the tests load): panics inside [`guarded`], so returns -1 with
/// `errno` EIO. `tests/panic_guard.rs` calls it to prove that the unwinder linked into the
/// `.so` (see `build.rs`) catches a panic before it reaches C.
#[cfg(debug_assertions)]
#[unsafe(no_mangle)]
pub extern "C" fn tssx_debug_selftest_panic_guard() -> c_int {
    guarded(|| -> c_int { panic!("tssx self-test: a panic the export guard catches") })
}

/// libc's `fdopen` (a pointer result: [`guarded`]'s -1 does not fit, so a caught panic gives
/// null with `errno` EIO).
///
/// # Safety
/// As the libc function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: the caller's arguments, forwarded unchanged; same contract.
    guarded_stream(|| unsafe { tssx_hook::stdio::fdopen(fd, mode) })
}

/// Runs a call that returns a signal handler (`signal` and its kind): a caught panic gives
/// `SIG_ERR` with `errno` EIO ([`guarded`]'s -1 does not fit).
fn guarded_handler(f: impl FnOnce() -> libc::sighandler_t) -> libc::sighandler_t {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tssx_hook::sys::set_errno(libc::EIO);
        libc::SIG_ERR
    })
}

/// Exports the libc functions that install a signal disposition and return the previous
/// handler, each forwarding to its twin in [`tssx_hook::calls`] (see `tssx_hook::signals`).
macro_rules! handler_installers {
    ($($name:ident => $target:ident;)*) => {
        $(
            /// # Safety
            /// As the libc function of the same name.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
                // SAFETY: the caller's arguments, forwarded unchanged; same contract.
                guarded_handler(|| unsafe { tssx_hook::calls::$target(sig, handler) })
            }
        )*
    };
}

handler_installers! {
    signal => signal;
    bsd_signal => signal;
    ssignal => signal;
    sysv_signal => sysv_signal;
    __sysv_signal => sysv_signal;
    sigset => sigset;
}

/// glibc's other name for `sigaction`.
///
/// # Safety
/// As libc's `sigaction`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    // SAFETY: the caller's arguments, forwarded unchanged; same contract.
    guarded(move || unsafe { tssx_hook::calls::sigaction(sig, act, old) })
}

/// [`guarded`] for the functions that return a `FILE *`: a caught panic gives null with
/// `errno` EIO.
fn guarded_stream(f: impl FnOnce() -> *mut libc::FILE) -> *mut libc::FILE {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        tssx_hook::sys::set_errno(libc::EIO);
        std::ptr::null_mut()
    })
}

/// Exports each function under its libc name, forwarding to [`tssx_hook::calls`] inside
/// [`guarded`].
macro_rules! interpose {
    ($($(#[$attr:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            /// # Safety
            /// As the libc function of the same name.
            $(#[$attr])*
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                // SAFETY: the caller's arguments, forwarded unchanged; same contract.
                guarded(move || unsafe { tssx_hook::calls::$name($($arg),*) })
            }
        )*
    };
}

/// Exports calls that go straight to libc when `$passes` holds for their arguments: the
/// cases in which the hook's own path would only forward the call (each condition is that
/// path's own test, a load or two of the hook's per-fd state). The pass-through is then a few
/// instructions in one place, the hook's body kept out of line, rather than a walk through
/// the hook's code that evicts the application's own from the instruction cache (callgrind on
/// nginx serving a file over TCP, the hook loaded with nothing watched: some 30 more L1
/// instruction-cache misses per request than without the hook). These exports sit in the hook's
/// hot section (see `tssx_hook`'s documentation, "Hot code").
macro_rules! interpose_passing {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty, passes if $passes:expr;)*) => {
        $(
            /// # Safety
            /// As the libc function of the same name.
            #[unsafe(no_mangle)]
            #[unsafe(link_section = ".text.tssx.hot")]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                if $passes {
                    // SAFETY: the caller's arguments, forwarded unchanged to libc (what the
                    // hook's path does in this case); same contract.
                    return unsafe { tssx_hook::sys::$name($($arg),*) };
                }
                #[cold]
                #[inline(never)]
                unsafe fn hooked($($arg: $ty),*) -> $ret {
                    // SAFETY: the caller's arguments, forwarded unchanged; same contract.
                    guarded(move || unsafe { tssx_hook::calls::$name($($arg),*) })
                }
                // SAFETY: as above.
                unsafe { hooked($($arg),*) }
            }
        )*
    };
}

use tssx_hook::{calls::close_passes, table::is_tracked};

interpose_passing! {
    // Data calls: the hook's path does nothing for an fd without a connection in its table.
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t, passes if !is_tracked(fd);
    fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t, passes if !is_tracked(fd);
    fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t, passes if !is_tracked(fd);
    fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t, passes if !is_tracked(fd);
    fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t, passes if !is_tracked(fd);
    fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t, passes if !is_tracked(fd);
    fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t, passes if !is_tracked(fd);
    fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t, passes if !is_tracked(fd);
    // Socket options and ioctls: the hook answers or notes some for a connection only.
    fn ioctl(fd: c_int, request: libc::c_ulong, arg: *mut c_void) -> c_int, passes if !is_tracked(fd);
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int, passes if !is_tracked(fd);
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int, passes if !is_tracked(fd);
    // `close`: nothing to forget, and not one of the hook's own fds.
    fn close(fd: c_int) -> c_int, passes if close_passes(fd);
}

interpose! {
    // Signal dispositions: the application's handlers behind the hook's trampoline
    // (`tssx_hook::signals`).
    fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
    fn sigignore(sig: c_int) -> c_int;
    fn siginterrupt(sig: c_int, interrupt: c_int) -> c_int;
    #[unsafe(link_section = ".text.tssx.hot")]
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    #[unsafe(link_section = ".text.tssx.hot")]
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    #[unsafe(link_section = ".text.tssx.hot")]
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    #[unsafe(link_section = ".text.tssx.hot")]
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    // Watched patterns: a relative bind's address is resolved when it is bound.
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    fn preadv2(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off_t, flags: c_int) -> ssize_t;
    fn preadv64v2(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off64_t, flags: c_int) -> ssize_t;
    fn pwritev2(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off_t, flags: c_int) -> ssize_t;
    fn pwritev64v2(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off64_t, flags: c_int) -> ssize_t;
    fn dup(fd: c_int) -> c_int;
    fn dup2(old: c_int, new: c_int) -> c_int;
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int;
    fn shutdown(fd: c_int, how: c_int) -> c_int;
    fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int;
    fn ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fn select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int;
    fn pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    #[unsafe(link_section = ".text.tssx.hot")]
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut libc::epoll_event) -> c_int;
    fn epoll_create(size: c_int) -> c_int;
    fn epoll_create1(flags: c_int) -> c_int;
    #[unsafe(link_section = ".text.tssx.hot")]
    fn epoll_wait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int;
    #[unsafe(link_section = ".text.tssx.hot")]
    fn epoll_pwait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
    fn epoll_pwait2(epfd: c_int, events: *mut libc::epoll_event, max: c_int, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t;
    fn splice(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, len: size_t, flags: libc::c_uint) -> ssize_t;
    fn recvmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    fn sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int) -> c_int;
    fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t;
    fn __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t;
    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    fn __poll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int, fdslen: size_t) -> c_int;
    fn __ppoll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t, fdslen: size_t) -> c_int;
    fn fork() -> libc::pid_t;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fn execv(path: *const c_char, argv: *const *const c_char) -> c_int;
    fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int;
    fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    fn posix_spawn(pid: *mut libc::pid_t, path: *const c_char, actions: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int;
    fn posix_spawnp(pid: *mut libc::pid_t, file: *const c_char, actions: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut c_char, envp: *const *mut c_char) -> c_int;
    fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int;
    fn posix_spawn_file_actions_init(fa: *mut libc::posix_spawn_file_actions_t) -> c_int;
    fn posix_spawn_file_actions_destroy(fa: *mut libc::posix_spawn_file_actions_t) -> c_int;
    fn posix_spawn_file_actions_addclose(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int) -> c_int;
    fn posix_spawn_file_actions_adddup2(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int, newfd: c_int) -> c_int;
    fn posix_spawn_file_actions_addopen(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int, path: *const c_char, oflag: c_int, mode: libc::mode_t) -> c_int;
    fn posix_spawn_file_actions_addclosefrom_np(fa: *mut libc::posix_spawn_file_actions_t, from: c_int) -> c_int;
    fn posix_spawn_file_actions_addchdir_np(fa: *mut libc::posix_spawn_file_actions_t, path: *const c_char) -> c_int;
    fn posix_spawn_file_actions_addfchdir_np(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int) -> c_int;
    fn posix_spawn_file_actions_addtcsetpgrp_np(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int) -> c_int;
    fn system(command: *const c_char) -> c_int;
    fn pclose(stream: *mut libc::FILE) -> c_int;
}

/// libc's `vfork`: a tail jump to where [`vfork_target`] says, so that no frame of the hook's
/// is on the stack when the child returns (a `vfork` child shares the caller's stack): libc's
/// own `vfork` while this process holds no tracked connection (exactly the real semantics and
/// cost), the hook's `fork`-based one otherwise (see `tssx_hook::spawn::vfork`).
///
/// # Safety
/// libc's `vfork`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vfork() {
    // At entry the stack holds the return address (rsp = 8 mod 16): 8 more align the call.
    core::arch::naked_asm!("sub rsp, 8", "call {target}", "add rsp, 8", "jmp rax", target = sym vfork_target)
}

/// Where [`vfork`] jumps (never panics out: libc's `vfork` if anything goes wrong).
extern "C" fn vfork_target() -> usize {
    std::panic::catch_unwind(|| tssx_hook::calls::vfork_target(vfork_as_fork as *const () as usize))
        .unwrap_or_else(|_| tssx_hook::sys::vfork_address())
}

/// The hook's `vfork` for a process with tracked connections.
extern "C" fn vfork_as_fork() -> libc::pid_t {
    // SAFETY: no arguments; libc's `vfork` contract.
    guarded(|| unsafe { tssx_hook::calls::vfork() })
}

/// libc's `popen` (a pointer result: a caught panic gives NULL and EIO).
///
/// # Safety
/// As libc's `popen`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn popen(command: *const c_char, mode: *const c_char) -> *mut libc::FILE {
    // SAFETY: the caller's arguments, forwarded unchanged; same contract.
    guarded_stream(move || unsafe { tssx_hook::calls::popen(command, mode) })
}

/// `sendfile64`: the same function as `sendfile` on 64-bit Linux (glibc exports both names).
///
/// # Safety
/// As libc's `sendfile64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t {
    // SAFETY: the caller's arguments, forwarded unchanged; same contract.
    guarded(move || unsafe { tssx_hook::calls::sendfile(out_fd, in_fd, offset, count) })
}

/// `fcntl64`: glibc's `fcntl` under the name that programs built with
/// `-D_FILE_OFFSET_BITS=64` call (the same function on 64-bit Linux).
///
/// # Safety
/// As libc's `fcntl64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    // SAFETY: the caller's arguments, forwarded unchanged; same contract.
    guarded(move || unsafe { tssx_hook::calls::fcntl(fd, cmd, arg) })
}

/// `__wrap_<name>` for every interposed name: `build.rs` links the `.so` with
/// `--wrap=<name>`, so every reference to an interposed name that is not our own definition
/// (chiefly in the standard library: a panic message's `write`, a backtrace's `close`) calls
/// `__wrap_<name>` instead, which jumps to libc's function. So nothing inside the `.so` binds to
/// one of its own exports. The wrappers are hidden symbols (not exported), defined in assembly
/// because Rust has no stable way to hide a symbol; each is a tail jump into a Rust function
/// with the same signature that calls the real function.
macro_rules! wrap_to_real {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// One module per wrapped name.
        mod wrapped {
            $(
                #[doc = concat!("`__wrap_", stringify!($name), "`.")]
                pub mod $name {
                    use super::super::*;

                    /// The real function, for the wrapper.
                    unsafe extern "C" fn real($($arg: $ty),*) -> $ret {
                        // SAFETY: the caller's arguments, forwarded to libc's function of this name.
                        unsafe { tssx_hook::sys::$name($($arg),*) }
                    }

                    core::arch::global_asm!(
                        concat!(".globl __wrap_", stringify!($name)),
                        concat!(".hidden __wrap_", stringify!($name)),
                        concat!(".type __wrap_", stringify!($name), ",@function"),
                        concat!("__wrap_", stringify!($name), ":"),
                        "jmp {real}",
                        real = sym real,
                    );
                }
            )*
        }
    };
}

wrap_to_real! {
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    fn close(fd: c_int) -> c_int;
    fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
}

/// The `execv`/`execvp`/`execve` of the C shim (`execl.c`): the hooked calls, under names of
/// their own so that the shim never calls an interposed name (the C side declares them hidden:
/// they are not exported).
macro_rules! shim_targets {
    ($($shim:ident => $target:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            /// # Safety
            /// As the libc function the shim stands for.
            #[unsafe(no_mangle)]
            unsafe extern "C" fn $shim($($arg: $ty),*) -> c_int {
                // SAFETY: forwarded unchanged; same contract.
                guarded(move || unsafe { tssx_hook::calls::$target($($arg),*) })
            }
        )*
    };
}

shim_targets! {
    tssx_shim_execv => execv(path: *const c_char, argv: *const *const c_char);
    tssx_shim_execvp => execvp(file: *const c_char, argv: *const *const c_char);
    tssx_shim_execve => execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char);
}

unsafe extern "C" {
    /// The C shim's execl (src/execl.c).
    fn tssx_execl();
    /// The C shim's execlp.
    fn tssx_execlp();
    /// The C shim's execle.
    fn tssx_execle();
}

/// libc's `execl` (variadic): a tail jump into the C shim, which sees the caller's arguments
/// (registers, `%al` and stack) exactly as passed.
///
/// # Safety
/// libc's `execl`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execl() {
    core::arch::naked_asm!("jmp {f}", f = sym tssx_execl)
}

/// libc's `execlp` (variadic), as [`execl`].
///
/// # Safety
/// libc's `execlp`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execlp() {
    core::arch::naked_asm!("jmp {f}", f = sym tssx_execlp)
}

/// libc's `execle` (variadic), as [`execl`].
///
/// # Safety
/// libc's `execle`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execle() {
    core::arch::naked_asm!("jmp {f}", f = sym tssx_execle)
}

/// glibc's `closefrom` (returns nothing, so not in `interpose!`).
///
/// # Safety
/// As libc's `closefrom`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closefrom(low: c_int) {
    // SAFETY: the caller's argument, forwarded unchanged; same contract. (A panic, never
    // expected, is caught: the call then closes less, with no way to report it.)
    let _ = std::panic::catch_unwind(move || unsafe { tssx_hook::calls::closefrom(low) });
}

/// libc's `syscall(long number, ...)` (C varargs), as a trampoline.
///
/// ABI (x86-64 System V): a variadic call passes its integer arguments exactly as a
/// non-variadic one does: the number in `%rdi`, the next five in `%rsi`, `%rdx`, `%rcx`, `%r8`,
/// `%r9`, the seventh at `8(%rsp)` on entry, plus `%al` (an upper bound on the vector
/// registers used, which only a callee that runs `va_start` reads). Every argument of
/// `syscall` is an integer or a pointer (glibc's own `syscall` reads exactly these seven
/// slots), so a non-variadic C-ABI function of seven `long`s receives them unchanged. An
/// argument the caller did not pass is whatever its register or stack slot holds (the slot at
/// `8(%rsp)` is the caller's own, always mapped, stack): any bit pattern is a valid `long`,
/// and only the arguments of the number are used.
///
/// The trampoline saves the argument registers (and `%rax`), asks [`syscall_route`] where the
/// call goes, restores them and jumps there with `%rsp` as the caller left it: libc's
/// `syscall` itself for every number the hook does not serve (so a raw `clone`, `vfork` or
/// anything that cares about its stack sees glibc's `syscall` exactly as without the hook), or
/// [`syscall_hooked`]. `%r11` (scratch in the ABI, and clobbered by the `syscall` instruction
/// anyway) carries the target. Seven pushes after the return address leave `%rsp` 16-byte
/// aligned at the `call`, as the ABI requires.
///
/// # Safety
/// libc's `syscall`.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall() {
    core::arch::naked_asm!(
        "push rdi",
        "push rsi",
        "push rdx",
        "push rcx",
        "push r8",
        "push r9",
        "push rax",
        "call {route}",
        "mov r11, rax",
        "pop rax",
        "pop r9",
        "pop r8",
        "pop rcx",
        "pop rdx",
        "pop rsi",
        "pop rdi",
        "jmp r11",
        route = sym syscall_route,
    )
}

/// Where a `syscall` goes: [`syscall_hooked`] for a socket-related number on an fd the hook
/// keeps something for ([`tssx_hook::syscall::wants`]: a match and a table load), libc's
/// `syscall` otherwise. Never unwinds (a panic, never expected, sends the call to libc).
#[cfg(target_arch = "x86_64")]
extern "C" fn syscall_route(
    nr: libc::c_long,
    a1: libc::c_long,
    a2: libc::c_long,
    a3: libc::c_long,
    a4: libc::c_long,
    a5: libc::c_long,
) -> usize {
    let hooked = std::panic::catch_unwind(|| tssx_hook::syscall::wants(nr, [a1, a2, a3, a4, a5])).unwrap_or(false);
    if hooked {
        syscall_hooked as *const () as usize
    } else {
        tssx_hook::sys::real_syscall_address()
    }
}

/// `syscall` for a number the hook serves (see [`syscall`] for why a seven-`long` function
/// receives the variadic call's arguments).
///
/// # Safety
/// libc's `syscall`.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn syscall_hooked(
    nr: libc::c_long,
    a1: libc::c_long,
    a2: libc::c_long,
    a3: libc::c_long,
    a4: libc::c_long,
    a5: libc::c_long,
    a6: libc::c_long,
) -> libc::c_long {
    // SAFETY: the caller's arguments, forwarded unchanged; same contract.
    guarded(move || unsafe { tssx_hook::syscall::hooked(nr, [a1, a2, a3, a4, a5, a6]) })
}

/// `__wrap_syscall`: the standard library's own `syscall` calls (futex, getrandom, ...), routed
/// here by `--wrap=syscall` (see [`wrap_to_real!`]) so that they never bind to the export
/// above: the system call itself, with glibc's errno convention.
#[cfg(target_arch = "x86_64")]
mod wrapped_syscall {
    /// The raw system call.
    unsafe extern "C" fn raw(
        nr: libc::c_long,
        a1: libc::c_long,
        a2: libc::c_long,
        a3: libc::c_long,
        a4: libc::c_long,
        a5: libc::c_long,
        a6: libc::c_long,
    ) -> libc::c_long {
        // SAFETY: the standard library's arguments for `nr`.
        unsafe { tssx_hook::syscall::raw(nr, [a1, a2, a3, a4, a5, a6]) }
    }

    core::arch::global_asm!(
        ".globl __wrap_syscall",
        ".hidden __wrap_syscall",
        ".type __wrap_syscall,@function",
        "__wrap_syscall:",
        "jmp {raw}",
        raw = sym raw,
    );
}
