//! `libtssx_preload.so`: interposes the libc socket calls (via `LD_PRELOAD` or
//! `/etc/ld.so.preload`) and, for a Unix stream socket on a path the running `tssx-agent`
//! watches, moves its bytes onto the shared-memory rings the agent hands out.
//!
//! Everything else passes straight through to the real libc function: an fd that is not in the
//! table costs one bounds check and one atomic load (poll/select scan their fds that way; an
//! epoll instance without swapped fds costs one load). With no agent running, or an unwatched
//! path, nothing is ever swapped.
//!
//! Covered on swapped fds: read, write, readv, writev, recv, send, recvfrom, sendto, recvmsg,
//! sendmsg (MSG_PEEK, MSG_DONTWAIT, MSG_WAITALL, MSG_NOSIGNAL), blocking and non-blocking
//! (accept4 SOCK_NONBLOCK, fcntl F_SETFL, ioctl FIONBIO), shutdown, ioctl FIONREAD/SIOCOUTQ,
//! close, dup/dup2/dup3/F_DUPFD*, poll, ppoll, select, pselect, epoll_ctl, epoll_wait,
//! epoll_pwait, epoll_pwait2, fork (both processes keep the connection) and the execve family
//! without varargs (execve, execv, execvp, execvpe, fexecve: the new image re-attaches the
//! segment). Fd passing (sendmsg with ancillary data on a swapped fd) fails with EOPNOTSUPP.

mod claim;
mod conn;
mod epoll;
mod exec;
mod pass;
mod poll;
mod real;

use std::io::{IoSlice, IoSliceMut};

use libc::{c_int, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};
use tssx_common::{control::Role, segment::End};

/// Resolves the real functions when the library is loaded, before `main`.
#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    real::resolve_all();
    exec::reattach();
}

fn with_errno_kept<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: __errno_location returns this thread's errno.
    let saved = unsafe { *libc::__errno_location() };
    let r = f();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
    r
}

/// After a successful connect/accept: claim `fd` if it is a watched stream socket.
fn maybe_swap(fd: c_int, role: Role, name: Option<String>) {
    with_errno_kept(|| {
        let Some(name) = name else { return };
        if !claim::watched(&name) {
            return;
        }
        if !claim::stream(fd) {
            return;
        }
        if let Some((memfd, agent)) = claim::claim(role, fd) {
            let end = if role == Role::Client { End::Client } else { End::Server };
            conn::install(fd, end, memfd, conn::Join::Fresh, agent);
        }
    })
}

/// # Safety
/// libc's `connect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarded as received.
    let rc = unsafe { real::connect(fd, addr, len) };
    if rc == 0 {
        // SAFETY: the kernel just accepted `addr`/`len` as readable.
        maybe_swap(fd, Role::Client, unsafe { claim::unix_name(addr, len) });
    }
    rc
}

/// # Safety
/// libc's `accept`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded as received.
    let new = unsafe { real::accept(fd, addr, len) };
    if new >= 0 {
        maybe_swap(new, Role::Server, claim::local_name(new));
    }
    new
}

/// # Safety
/// libc's `accept4`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    // SAFETY: forwarded as received.
    let new = unsafe { real::accept4(fd, addr, len, flags) };
    if new >= 0 {
        maybe_swap(new, Role::Server, claim::local_name(new));
    }
    new
}

/// Builds slices over a C iovec array (null or empty entries allowed).
///
/// # Safety
/// `iov` must point at `cnt` valid iovecs whose buffers are valid for the call.
unsafe fn slices_mut<'a>(iov: *const iovec, cnt: c_int) -> Vec<IoSliceMut<'a>> {
    (0..cnt.max(0) as usize)
        .map(|i| {
            // SAFETY: per the function's contract.
            let v = unsafe { &*iov.add(i) };
            if v.iov_base.is_null() || v.iov_len == 0 {
                IoSliceMut::new(&mut [])
            } else {
                // SAFETY: per the function's contract.
                IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(v.iov_base.cast(), v.iov_len) })
            }
        })
        .collect()
}

/// # Safety
/// As [`slices_mut`], for reading.
unsafe fn slices<'a>(iov: *const iovec, cnt: c_int) -> Vec<IoSlice<'a>> {
    (0..cnt.max(0) as usize)
        .map(|i| {
            // SAFETY: per the function's contract.
            let v = unsafe { &*iov.add(i) };
            if v.iov_base.is_null() || v.iov_len == 0 {
                IoSlice::new(&[])
            } else {
                // SAFETY: per the function's contract.
                IoSlice::new(unsafe { std::slice::from_raw_parts(v.iov_base.cast(), v.iov_len) })
            }
        })
        .collect()
}

fn one_mut<'a>(buf: *mut c_void, n: size_t) -> Vec<IoSliceMut<'a>> {
    if buf.is_null() || n == 0 {
        return vec![IoSliceMut::new(&mut [])];
    }
    // SAFETY: the caller of read/recv promises `n` writable bytes at `buf`.
    vec![IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(buf.cast(), n) })]
}

fn one<'a>(buf: *const c_void, n: size_t) -> Vec<IoSlice<'a>> {
    if buf.is_null() || n == 0 {
        return vec![IoSlice::new(&[])];
    }
    // SAFETY: the caller of write/send promises `n` readable bytes at `buf`.
    vec![IoSlice::new(unsafe { std::slice::from_raw_parts(buf.cast(), n) })]
}

/// Defines a receiving call: swapped -> ring, otherwise (or once plain) -> the real call.
macro_rules! recv_like {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => |$fd:ident| ($bufs:expr, $flags:expr), after = |$n:ident| $after:expr $(, plain_after = |$rc:ident| $plain_after:expr)?) => {
        $(#[$doc])*
        /// # Safety
        /// As the libc function of the same name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> ssize_t {
            if let Some(c) = conn::lookup($fd) {
                #[allow(unused_unsafe)]
                let mut bufs = unsafe { $bufs };
                if let Ok($n) = c.recv($fd, &mut bufs, $flags) {
                    $after;
                    return $n;
                }
            }
            // SAFETY: forwarded as received.
            let rc = unsafe { real::$name($($arg),*) };
            $(
                let $rc = rc;
                $plain_after;
            )?
            rc
        }
    };
}

macro_rules! send_like {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => |$fd:ident| ($bufs:expr, $flags:expr) $(, guard = $guard:expr)? $(, pre = $pre:expr)?) => {
        $(#[$doc])*
        /// # Safety
        /// As the libc function of the same name.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> ssize_t {
            $(
                #[allow(unused_unsafe)]
                if let Some(rc) = unsafe { $pre } {
                    return rc;
                }
            )?
            if let Some(c) = conn::lookup($fd) {
                $(
                    #[allow(unused_unsafe)]
                    if unsafe { $guard } {
                        // SAFETY: __errno_location returns this thread's errno.
                        unsafe { *libc::__errno_location() = libc::EOPNOTSUPP };
                        return -1;
                    }
                )?
                #[allow(unused_unsafe)]
                let bufs = unsafe { $bufs };
                if let Ok(n) = c.send($fd, &bufs, $flags) {
                    return n;
                }
            }
            // SAFETY: forwarded as received.
            unsafe { real::$name($($arg),*) }
        }
    };
}

recv_like!(fn read(fd: c_int, buf: *mut c_void, n: size_t) => |fd| (one_mut(buf, n), 0), after = |_n| ());
recv_like!(fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) => |fd| (one_mut(buf, n), flags), after = |_n| ());
recv_like!(fn readv(fd: c_int, iov: *const iovec, cnt: c_int) => |fd| (slices_mut(iov, cnt), 0), after = |_n| ());
recv_like!(
    fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t)
        => |fd| (one_mut(buf, n), flags),
        after = |_n| if !addr.is_null() && !len.is_null() {
            // A connected stream socket reports no source address.
            // SAFETY: the caller passed a valid length pointer with a non-null address.
            unsafe { *len = 0 };
        }
);
recv_like!(
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int)
        => |fd| (slices_mut((*msg).msg_iov, (*msg).msg_iovlen as c_int), flags),
        after = |_n| {
            // SAFETY: the caller passed a valid msghdr.
            let m = unsafe { &mut *msg };
            m.msg_flags = 0;
            m.msg_controllen = 0;
            m.msg_namelen = 0;
        },
        plain_after = |rc| if rc >= 0 && !msg.is_null() && unsafe { (*msg).msg_controllen } > 0 {
            // Swapped sockets may have arrived with their segments.
            // SAFETY: the msghdr the kernel just filled.
            with_errno_kept(|| unsafe { pass::received(msg) });
        }
);

send_like!(fn write(fd: c_int, buf: *const c_void, n: size_t) => |fd| (one(buf, n), 0));
send_like!(fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) => |fd| (one(buf, n), flags));
send_like!(fn writev(fd: c_int, iov: *const iovec, cnt: c_int) => |fd| (slices(iov, cnt), 0));
send_like!(
    fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t)
        => |fd| (one(buf, n), flags)
);
send_like!(
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int)
        => |fd| (slices((*msg).msg_iov, (*msg).msg_iovlen as c_int), flags),
        guard = (*msg).msg_controllen > 0,
        pre = if conn::lookup(fd).is_none() { pass::send(fd, msg, flags) } else { None }
);

/// # Safety
/// libc's `close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if conn::lookup_any(fd).is_some() {
        with_errno_kept(|| conn::close(fd));
    }
    if epoll::has_set(fd) {
        epoll::closed(fd);
    }
    // SAFETY: forwarded as received.
    unsafe { real::close(fd) }
}

/// # Safety
/// libc's `dup`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarded as received.
    let new = unsafe { real::dup(fd) };
    if new >= 0 && conn::lookup_any(fd).is_some() {
        conn::duplicated(fd, new);
    }
    new
}

/// # Safety
/// libc's `dup2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    // SAFETY: forwarded as received.
    let rc = unsafe { real::dup2(old, new) };
    if rc >= 0 && old != new && (conn::lookup_any(old).is_some() || conn::lookup_any(new).is_some()) {
        conn::duplicated(old, new);
    }
    rc
}

/// # Safety
/// libc's `dup3`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: forwarded as received.
    let rc = unsafe { real::dup3(old, new, flags) };
    if rc >= 0 && (conn::lookup_any(old).is_some() || conn::lookup_any(new).is_some()) {
        conn::duplicated(old, new);
    }
    rc
}

/// `fcntl` is variadic in C; on x86-64 the one optional integer or pointer argument travels in
/// the third argument register, so a three-argument definition receives it unchanged.
///
/// # Safety
/// libc's `fcntl`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    // SAFETY: forwarded as received.
    let rc = unsafe { real::fcntl(fd, cmd, arg) };
    if rc >= 0 {
        if let Some(c) = conn::lookup_any(fd) {
            match cmd {
                libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => conn::duplicated(fd, rc),
                libc::F_SETFL => c.set_nonblocking(arg as c_int & libc::O_NONBLOCK != 0),
                libc::F_SETFD | libc::F_GETFD | libc::F_GETFL => {}
                _ => {}
            }
        }
    }
    rc
}

/// # Safety
/// libc's `shutdown`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if let Some(c) = conn::lookup(fd) {
        if !c.unswap_if_plain(fd) {
            return c.shutdown(fd, how);
        }
    }
    // SAFETY: forwarded as received.
    unsafe { real::shutdown(fd, how) }
}

/// `ioctl` is variadic in C; its one optional argument travels in the third argument register
/// on x86-64, so a three-argument definition receives it unchanged.
///
/// # Safety
/// libc's `ioctl`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, request: libc::c_ulong, arg: *mut c_void) -> c_int {
    if let Some(c) = conn::lookup(fd) {
        let value = match request {
            libc::FIONREAD => Some(c.unread()),
            libc::TIOCOUTQ => Some(c.unsent()),
            _ => None,
        };
        if let Some(value) = value {
            if arg.is_null() {
                conn::set_errno(libc::EFAULT);
                return -1;
            }
            // SAFETY: FIONREAD/SIOCOUTQ take a pointer to an int.
            unsafe { *arg.cast::<c_int>() = value.min(c_int::MAX as usize) as c_int };
            return 0;
        }
    }
    // SAFETY: forwarded as received.
    let rc = unsafe { real::ioctl(fd, request, arg) };
    if rc == 0 && request == libc::FIONBIO && !arg.is_null() {
        if let Some(c) = conn::lookup(fd) {
            // SAFETY: FIONBIO takes a pointer to an int, just read by the kernel.
            c.set_nonblocking(unsafe { *arg.cast::<c_int>() } != 0);
        }
    }
    rc
}

fn ms_to_ns(ms: c_int) -> Option<u64> {
    (ms >= 0).then(|| ms as u64 * 1_000_000)
}

/// # Safety
/// `ts` is null or valid.
unsafe fn ts_to_ns(ts: *const libc::timespec) -> Option<u64> {
    // SAFETY: per the contract.
    let ts = unsafe { ts.as_ref() }?;
    Some((ts.tv_sec.max(0) as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec.max(0) as u64))
}

/// # Safety
/// libc's `poll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    if conn::any_live() && !fds.is_null() {
        // SAFETY: the caller passes `n` pollfds.
        let slice = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
        if poll::any_swapped(slice) {
            // SAFETY: no signal mask.
            return unsafe { poll::poll(slice, ms_to_ns(timeout), std::ptr::null()) };
        }
    }
    // SAFETY: forwarded as received.
    unsafe { real::poll(fds, n, timeout) }
}

/// # Safety
/// libc's `ppoll`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int {
    if conn::any_live() && !fds.is_null() {
        // SAFETY: the caller passes `n` pollfds.
        let slice = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
        if poll::any_swapped(slice) {
            // SAFETY: `ts` and `mask` are null or valid, per ppoll's contract.
            return unsafe { poll::poll(slice, ts_to_ns(ts), mask) };
        }
    }
    // SAFETY: forwarded as received.
    unsafe { real::ppoll(fds, n, ts, mask) }
}

/// # Safety
/// libc's `select`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn select(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    // SAFETY: the sets are valid for `n` fds, per select's contract.
    if unsafe { poll::select_has_swapped(n, [r, w, e]) } {
        // SAFETY: `tv` is null or valid.
        let timeout = unsafe { tv.as_ref() }.map(|t| (t.tv_sec.max(0) as u64) * 1_000_000_000 + (t.tv_usec.max(0) as u64) * 1_000);
        let start = conn::now_ns();
        // SAFETY: as above.
        let rc = unsafe { poll::select(n, r, w, e, timeout, std::ptr::null()) };
        if let (Some(t), Some(tv)) = (timeout, unsafe { tv.as_mut() }) {
            // Linux reports the time left.
            let left = t.saturating_sub(conn::now_ns() - start);
            tv.tv_sec = (left / 1_000_000_000) as libc::time_t;
            tv.tv_usec = ((left % 1_000_000_000) / 1_000) as libc::suseconds_t;
        }
        return rc;
    }
    // SAFETY: forwarded as received.
    unsafe { real::select(n, r, w, e, tv) }
}

/// # Safety
/// libc's `pselect`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the sets are valid for `n` fds, per pselect's contract.
    if unsafe { poll::select_has_swapped(n, [r, w, e]) } {
        // SAFETY: `ts` and `mask` are null or valid.
        return unsafe { poll::select(n, r, w, e, ts_to_ns(ts), mask) };
    }
    // SAFETY: forwarded as received.
    unsafe { real::pselect(n, r, w, e, ts, mask) }
}

/// # Safety
/// libc's `epoll_ctl`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut libc::epoll_event) -> c_int {
    if conn::any_live() || epoll::has_set(epfd) {
        // SAFETY: `event` is null or valid, per epoll_ctl's contract.
        if let Some(rc) = unsafe { epoll::ctl(epfd, op, fd, event) } {
            return rc;
        }
    }
    // SAFETY: forwarded as received.
    unsafe { real::epoll_ctl(epfd, op, fd, event) }
}

/// # Safety
/// libc's `epoll_wait`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int {
    if epoll::has_set(epfd) {
        // SAFETY: forwarded.
        return unsafe { epoll::wait(epfd, events, max, ms_to_ns(timeout), std::ptr::null()) };
    }
    // SAFETY: forwarded as received.
    unsafe { real::epoll_wait(epfd, events, max, timeout) }
}

/// # Safety
/// libc's `epoll_pwait`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    if epoll::has_set(epfd) {
        // SAFETY: forwarded.
        return unsafe { epoll::wait(epfd, events, max, ms_to_ns(timeout), mask) };
    }
    // SAFETY: forwarded as received.
    unsafe { real::epoll_pwait(epfd, events, max, timeout, mask) }
}

/// `epoll_pwait2` (glibc 2.35+), implemented with the system call so that the hook also loads
/// with an older libc.
///
/// # Safety
/// libc's `epoll_pwait2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    if epoll::has_set(epfd) {
        // SAFETY: forwarded; `ts` is null or valid.
        return unsafe { epoll::wait(epfd, events, max, ts_to_ns(ts), mask) };
    }
    // SAFETY: the epoll_pwait2 system call with the caller's arguments; the kernel's sigset is
    // 8 bytes on x86-64.
    unsafe { libc::syscall(libc::SYS_epoll_pwait2, epfd, events, max, ts, mask, 8usize) as c_int }
}

/// # Safety
/// libc's `fork`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    conn::before_fork();
    // SAFETY: forwarded.
    let pid = unsafe { real::fork() };
    if pid < 0 {
        with_errno_kept(conn::fork_failed);
    } else if pid == 0 {
        conn::in_child();
    }
    pid
}
