//! `syscall(2)`: programs call `syscall(SYS_write, fd, ...)`, `syscall(SYS_close, fd)` and the
//! like, mixed with the libc calls. For the socket-related numbers on an fd the hook tracks,
//! the call goes through the hook's function for the libc call of the same name ([`hooked`]):
//! the same semantics, and -1 with `errno` on failure, as glibc's `syscall` reports. Every other
//! number, and an fd the hook keeps nothing for, goes to libc's `syscall` unchanged: [`wants`]
//! decides with one match and a table load or two.
//!
//! The export itself is a trampoline in the preload crate (C varargs; see its `syscall`), which
//! asks [`wants`] and then jumps to libc's `syscall` or to [`hooked`] with the caller's
//! registers and stack as they were.
//!
//! Where the system call and the libc function differ, [`hooked`] gives the system call's
//! behaviour: `ppoll`, `pselect6`, `epoll_pwait` and `epoll_pwait2` take the signal set's size
//! (EINVAL unless 8), `pselect6` takes its mask as `{ sigset_t *, size_t }`, and `ppoll` and
//! `pselect6` write the time left back into the caller's timespec (glibc's wrappers hide
//! that); `readv`/`writev`/`preadv2`/`pwritev2` take the vector's length as an `unsigned long`; `fcntl` and `ioctl`
//! go through the hook only for the commands it handles (F_DUPFD, F_DUPFD_CLOEXEC, F_SETFL;
//! FIONREAD, TIOCOUTQ, FIONBIO). Arguments the kernel takes as `int` are truncated to 32 bits
//! as the kernel does (a variadic caller may leave the upper half of the register undefined).
//!
//! `connect`, `accept`, `accept4` and `socket(AF_UNIX, ...)` always go through the hook (that is
//! how a connection starts being tracked); `close`, `dup2` and `dup3` whenever the hook keeps
//! anything for one of the fds; `poll`, `ppoll`, `select` and `pselect6` while this process
//! tracks any connection; the epoll calls for an instance with swapped interests.
//!
//! Not reproduced: a call served by the hook goes through libc's function, so where that is a
//! thread-cancellation point (`read`, `write`, `close`, ...), `syscall()` is one too.
//!
//! The hook's own system calls never come here: they are made with the `syscall` instruction
//! ([`tssx_shm::sys`]) or through libc's functions ([`crate::sys`]), and the standard library's
//! references to `syscall` inside the `.so` are routed to [`raw`] (`--wrap=syscall`).

use libc::{c_int, c_long, c_uint, c_ulong, c_void, size_t};

use crate::{calls, epoll, spin::now_ns, sys, table};

/// Whether the hook serves system call `nr` with the arguments `a` (the first five; the sixth
/// is never needed to decide): a socket-related number on an fd the hook keeps something for.
/// Never panics, allocates nothing: a match and a few loads.
#[inline]
pub fn wants(nr: c_long, a: [c_long; 5]) -> bool {
    // The kernel takes fds as `int` (or `unsigned int`): the low 32 bits.
    let fd = |i: usize| a[i] as c_int;
    match nr {
        libc::SYS_read
        | libc::SYS_write
        | libc::SYS_readv
        | libc::SYS_writev
        | libc::SYS_preadv2
        | libc::SYS_pwritev2
        | libc::SYS_recvfrom
        | libc::SYS_sendto
        | libc::SYS_recvmsg
        | libc::SYS_sendmsg
        | libc::SYS_recvmmsg
        | libc::SYS_sendmmsg
        | libc::SYS_shutdown
        | libc::SYS_sendfile => table::is_tracked(fd(0)),
        // A socket with an epoll registration kept aside before its connect gets its record
        // before it is duplicated (see `preconnect`).
        libc::SYS_dup => table::is_tracked(fd(0)) || table::is_unconnected(fd(0)),
        libc::SYS_fcntl => {
            (table::is_tracked(fd(0)) && matches!(a[1] as c_int, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC | libc::F_SETFL))
                || (table::is_unconnected(fd(0)) && matches!(a[1] as c_int, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC))
        }
        libc::SYS_ioctl => table::is_tracked(fd(0)) && matches!(a[1] as c_uint as c_ulong, libc::FIONREAD | libc::TIOCOUTQ | libc::FIONBIO),
        libc::SYS_splice => table::is_tracked(fd(0)) || table::is_tracked(fd(2)),
        libc::SYS_close => !calls::close_passes(fd(0)),
        libc::SYS_dup2 | libc::SYS_dup3 => !calls::close_passes(fd(0)) || !calls::close_passes(fd(1)),
        libc::SYS_close_range => true,
        // A new Unix socket is marked; connect and accept start tracking (they cost a check
        // of the address or the listener, as the libc calls do).
        libc::SYS_socket => a[0] as c_int == libc::AF_UNIX,
        libc::SYS_connect | libc::SYS_accept | libc::SYS_accept4 => true,
        libc::SYS_poll | libc::SYS_ppoll | libc::SYS_select | libc::SYS_pselect6 => table::any_live(),
        libc::SYS_epoll_ctl => !calls::epoll_ctl_passes(fd(0), fd(2)),
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => epoll::has_set(fd(0)),
        _ => false,
    }
}

/// libc's `syscall` without the hook: the system call, then -1 and `errno` for a result in
/// `-4095..=-1`, as glibc does.
///
/// # Safety
/// As `syscall(2)`: the arguments are what the kernel expects for `nr`.
pub unsafe fn raw(nr: c_long, a: [c_long; 6]) -> c_long {
    // SAFETY: per the contract.
    match unsafe { tssx_shm::sys::syscall(nr, a.map(|v| v as usize)) } {
        Ok(v) => v as c_long,
        Err(e) => {
            sys::set_errno(e.0);
            -1
        }
    }
}

/// Fails the call with `e`.
fn fail(e: c_int) -> c_long {
    sys::set_errno(e);
    -1
}

/// The size of the kernel's signal set (what glibc passes as `sigsetsize`).
const SIGSET_SIZE: c_long = 8;

/// The system call `nr` served by the hook's function for the libc call of the same name
/// (what [`wants`] chose; any other number goes to [`raw`]).
///
/// # Safety
/// As `syscall(2)`: the arguments are what the kernel expects for `nr`.
pub unsafe fn hooked(nr: c_long, a: [c_long; 6]) -> c_long {
    let int = |i: usize| a[i] as c_int;
    let uint = |i: usize| a[i] as c_uint;
    let size = |i: usize| a[i] as size_t;
    let ptr = |i: usize| a[i] as *mut c_void;
    // SAFETY: (every arm) the caller's arguments, as the kernel takes them for `nr`, passed to
    // the hook's function with the libc signature of the same call.
    unsafe {
        match nr {
            libc::SYS_read => calls::read(int(0), ptr(1), size(2)) as c_long,
            libc::SYS_write => calls::write(int(0), ptr(1), size(2)) as c_long,
            libc::SYS_readv | libc::SYS_writev => {
                // `unsigned long vlen`: beyond UIO_MAXIOV is EINVAL, not a truncated count.
                if a[2] as c_ulong > crate::iov::MAX_IOV as c_ulong {
                    return fail(libc::EINVAL);
                }
                if nr == libc::SYS_readv {
                    calls::readv(int(0), ptr(1).cast(), int(2)) as c_long
                } else {
                    calls::writev(int(0), ptr(1).cast(), int(2)) as c_long
                }
            }
            libc::SYS_preadv2 | libc::SYS_pwritev2 => {
                // (fd, iov, unsigned long vlen, pos_l, pos_h, rwf_t flags): on 64 bits the
                // position is `pos_l` alone.
                if a[2] as c_ulong > crate::iov::MAX_IOV as c_ulong {
                    return fail(libc::EINVAL);
                }
                if nr == libc::SYS_preadv2 {
                    calls::preadv2(int(0), ptr(1).cast(), int(2), a[3] as libc::off_t, int(5)) as c_long
                } else {
                    calls::pwritev2(int(0), ptr(1).cast(), int(2), a[3] as libc::off_t, int(5)) as c_long
                }
            }
            libc::SYS_recvfrom => calls::recvfrom(int(0), ptr(1), size(2), int(3), ptr(4).cast(), ptr(5).cast()) as c_long,
            libc::SYS_sendto => calls::sendto(int(0), ptr(1), size(2), int(3), ptr(4).cast(), uint(5)) as c_long,
            libc::SYS_recvmsg => calls::recvmsg(int(0), ptr(1).cast(), int(2)) as c_long,
            libc::SYS_sendmsg => calls::sendmsg(int(0), ptr(1).cast(), int(2)) as c_long,
            libc::SYS_recvmmsg => calls::recvmmsg(int(0), ptr(1).cast(), uint(2), int(3), ptr(4).cast()) as c_long,
            libc::SYS_sendmmsg => calls::sendmmsg(int(0), ptr(1).cast(), uint(2), int(3)) as c_long,
            libc::SYS_shutdown => calls::shutdown(int(0), int(1)) as c_long,
            libc::SYS_close => calls::close(int(0)) as c_long,
            libc::SYS_close_range => calls::close_range(uint(0), uint(1), int(2)) as c_long,
            libc::SYS_dup => calls::dup(int(0)) as c_long,
            libc::SYS_dup2 => calls::dup2(int(0), int(1)) as c_long,
            libc::SYS_dup3 => calls::dup3(int(0), int(1), int(2)) as c_long,
            libc::SYS_fcntl => calls::fcntl(int(0), int(1), a[2] as c_ulong) as c_long,
            libc::SYS_ioctl => calls::ioctl(int(0), uint(1) as c_ulong, ptr(2)) as c_long,
            libc::SYS_sendfile => calls::sendfile(int(0), int(1), ptr(2).cast(), size(3)) as c_long,
            libc::SYS_splice => calls::splice(int(0), ptr(1).cast(), int(2), ptr(3).cast(), size(4), uint(5)) as c_long,
            libc::SYS_socket => calls::socket(int(0), int(1), int(2)) as c_long,
            libc::SYS_connect => calls::connect(int(0), ptr(1).cast(), uint(2)) as c_long,
            libc::SYS_accept => calls::accept(int(0), ptr(1).cast(), ptr(2).cast()) as c_long,
            libc::SYS_accept4 => calls::accept4(int(0), ptr(1).cast(), ptr(2).cast(), int(3)) as c_long,
            libc::SYS_poll => calls::poll(ptr(0).cast(), uint(1) as libc::nfds_t, int(2)) as c_long,
            libc::SYS_select => calls::select(int(0), ptr(1).cast(), ptr(2).cast(), ptr(3).cast(), ptr(4).cast()) as c_long,
            libc::SYS_ppoll => {
                let mask: *const libc::sigset_t = ptr(3).cast();
                let ts: *mut libc::timespec = ptr(2).cast();
                with_timeout(ts, (!mask.is_null() && a[4] != SIGSET_SIZE).then_some(libc::EINVAL), |ts| {
                    calls::ppoll(ptr(0).cast(), uint(1) as libc::nfds_t, ts, mask) as c_long
                })
            }
            libc::SYS_pselect6 => {
                // The sixth argument: `{ const sigset_t *ss; size_t ss_len }`, or null.
                let (mask, refused) = match copy_in::<[usize; 2]>(ptr(5).cast()) {
                    None => (std::ptr::null(), None),
                    Some(Err(e)) => (std::ptr::null(), Some(e)),
                    Some(Ok([ss, len])) => (ss as *const libc::sigset_t, (ss != 0 && len != SIGSET_SIZE as usize).then_some(libc::EINVAL)),
                };
                let ts: *mut libc::timespec = ptr(4).cast();
                with_timeout(ts, refused, |ts| calls::pselect(int(0), ptr(1).cast(), ptr(2).cast(), ptr(3).cast(), ts, mask) as c_long)
            }
            libc::SYS_epoll_ctl => calls::epoll_ctl(int(0), int(1), int(2), ptr(3).cast()) as c_long,
            libc::SYS_epoll_wait => calls::epoll_wait(int(0), ptr(1).cast(), int(2), int(3)) as c_long,
            libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => {
                let mask: *const libc::sigset_t = ptr(4).cast();
                if !mask.is_null() && a[5] != SIGSET_SIZE {
                    return fail(libc::EINVAL);
                }
                if nr == libc::SYS_epoll_pwait {
                    calls::epoll_pwait(int(0), ptr(1).cast(), int(2), int(3), mask) as c_long
                } else {
                    calls::epoll_pwait2(int(0), ptr(1).cast(), int(2), ptr(3).cast(), mask) as c_long
                }
            }
            _ => raw(nr, a),
        }
    }
}

/// `ppoll`/`pselect6` with the kernel's timeout rules: the caller's timespec is read (EFAULT
/// if it cannot be, EINVAL if it is not a valid time), then `refused` (an error the kernel
/// finds in the other arguments) ends the call, else `call` runs with a copy; afterwards the
/// time left is written back, as the kernel does (not for a zero timeout, and a write that
/// fails is ignored, as in the kernel).
fn with_timeout(ts: *mut libc::timespec, refused: Option<c_int>, call: impl FnOnce(*const libc::timespec) -> c_long) -> c_long {
    let timeout = match copy_in::<libc::timespec>(ts) {
        None => None,
        Some(Err(e)) => return fail(e),
        Some(Ok(t)) if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) => return fail(libc::EINVAL),
        Some(Ok(t)) => Some(t),
    };
    if let Some(e) = refused {
        return fail(e);
    }
    let Some(t) = timeout else { return call(std::ptr::null()) };
    let total = (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64);
    let start = now_ns();
    let rc = call(&t);
    if total != 0 {
        let saved = sys::errno();
        let left = total.saturating_sub(now_ns() - start);
        let left = sys::timespec_of_ns(left);
        copy_out(ts, &left);
        sys::set_errno(saved);
    }
    rc
}

/// Reads a `T` the caller points at, as the kernel's `copy_from_user` would: `None` for a null
/// pointer, EFAULT for memory that cannot be read (never a signal).
fn copy_in<T: Copy>(src: *const T) -> Option<Result<T, c_int>> {
    if src.is_null() {
        return None;
    }
    let mut value = std::mem::MaybeUninit::<T>::uninit();
    let len = size_of::<T>();
    let local = libc::iovec { iov_base: value.as_mut_ptr().cast(), iov_len: len };
    let remote = libc::iovec { iov_base: src as *mut c_void, iov_len: len };
    // SAFETY: the kernel reads the caller's memory (EFAULT if it cannot) into our local value.
    let rc = unsafe { process_vm(libc::SYS_process_vm_readv, &local, &remote) };
    Some(match rc {
        // SAFETY: all `len` bytes were written; `T` is plain data (a timespec or two words).
        Ok(n) if n == len => Ok(unsafe { value.assume_init() }),
        // The call itself refused (a seccomp filter, no such call): the plain range check.
        // SAFETY: a range that passes it is the caller's readable memory, per the call's
        // contract; read unaligned, as the kernel may.
        Err(e) if e.0 != libc::EFAULT && crate::iov::value_ok(src) => Ok(unsafe { src.read_unaligned() }),
        _ => Err(libc::EFAULT),
    })
}

/// Writes `value` where the caller points, if it can (as the kernel's `copy_to_user`; a
/// failure is ignored).
fn copy_out<T: Copy>(dst: *mut T, value: &T) {
    let len = size_of::<T>();
    let local = libc::iovec { iov_base: (value as *const T).cast_mut().cast(), iov_len: len };
    let remote = libc::iovec { iov_base: dst.cast(), iov_len: len };
    // SAFETY: the kernel writes into the caller's memory (EFAULT if it cannot) from our value.
    let rc = unsafe { process_vm(libc::SYS_process_vm_writev, &local, &remote) };
    if rc.is_err_and(|e| e.0 != libc::EFAULT) && crate::iov::value_ok(dst) {
        // As in `copy_in`: the call refused, the range check passed.
        // SAFETY: the caller's timespec, which the call's contract lets the kernel write.
        unsafe { dst.write_unaligned(*value) };
    }
}

/// One `process_vm_readv`/`process_vm_writev` of this process.
///
/// # Safety
/// `local` describes memory of ours valid for the direction of `nr`.
unsafe fn process_vm(nr: c_long, local: &libc::iovec, remote: &libc::iovec) -> Result<usize, tssx_shm::sys::Errno> {
    // SAFETY: per the contract; the remote side is checked by the kernel.
    unsafe {
        tssx_shm::sys::syscall(
            nr,
            [tssx_shm::sys::getpid() as usize, local as *const libc::iovec as usize, 1, remote as *const libc::iovec as usize, 1, 0],
        )
    }
}
