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

/// Exports each function under its libc name, forwarding to [`tssx_hook::calls`] inside
/// [`guarded`].
macro_rules! interpose {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            /// # Safety
            /// As the libc function of the same name.
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                // SAFETY: the caller's arguments, forwarded unchanged; same contract.
                guarded(move || unsafe { tssx_hook::calls::$name($($arg),*) })
            }
        )*
    };
}

interpose! {
    fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int;
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    fn close(fd: c_int) -> c_int;
    fn dup(fd: c_int) -> c_int;
    fn dup2(old: c_int, new: c_int) -> c_int;
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int;
    fn shutdown(fd: c_int, how: c_int) -> c_int;
    fn ioctl(fd: c_int, request: libc::c_ulong, arg: *mut c_void) -> c_int;
    fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int;
    fn ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fn select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int;
    fn pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut libc::epoll_event) -> c_int;
    fn epoll_wait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int;
    fn epoll_pwait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
    fn epoll_pwait2(epfd: c_int, events: *mut libc::epoll_event, max: c_int, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int;
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int;
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
