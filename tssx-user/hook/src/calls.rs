//! The hook's entry points: one function per interposed libc function, with libc's signature.
//!
//! `libtssx_preload.so` exports each of these under the libc name (a one-line `extern "C"`
//! wrapper); the logic lives here so that it can be unit-tested without interposing anything.
//! Each one looks the fd up in the table: a swapped fd is served from the rings, anything else
//! goes straight to the real libc function.
//!
//! # Safety
//! Every function here has the contract of the libc function of the same name.
#![allow(clippy::missing_safety_doc)]

use libc::{c_int, c_void, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};
use tssx_common::segment::{End, GiveUp};

use crate::{
    anc, closing,
    conn::{Conn, Phase},
    epoll,
    exec::{self, Image, Kind},
    iov, lifecycle, pass, paths,
    phase::RawCall,
    poll, preconnect,
    spawn::{self, Op},
    spin::now_ns,
    stream::partial_or_errno,
    sys::{self, with_errno_kept},
    table,
};

/// The library constructor (before `main`): notes the objects loaded after the hook (where the
/// real functions are looked up at their first use, see [`crate::symbols`]) and re-attaches
/// connections handed over by the previous image. Nothing else: every process pays for it
/// (see the README, "What the hook costs a process that does not use it").
pub fn init() {
    crate::symbols::snapshot();
    exec::reattach();
    for fd in 0..=2 {
        crate::stdio::adopt_standard_stream(fd);
    }
}

/// After a successful connect of `fd` to `name` (`None`: not a named Unix address): track it
/// if it is a stream socket on a watched path (plain for now: nothing is asked of the agent
/// here), else forget it.
///
/// A connection the hook does not track (another family, a path nobody watches, a cool path's
/// connection outside its probe windows) takes the short way: a few loads and no system call
/// but the paths file's recheck, which keeps `errno` itself. Everything else is out of line, so
/// that the short way is a few cache lines of the application's instruction cache.
#[inline]
fn track_connected(fd: c_int, end: End, name: Option<&[u8]>) {
    // A socket made by our `socket` as SOCK_STREAM needs no question.
    let known_stream = table::is_unconnected(fd);
    let Some(name) = name.filter(|name| paths::watched_bytes(name)) else {
        return forget_connected(fd, known_stream);
    };
    // A path whose connections keep ending plain tracks only its probes (see `heat`): the
    // others go on as on a path nobody watches.
    let heat = crate::heat::for_path(name);
    if !heat.0.admit(heat.1) {
        return forget_connected(fd, known_stream);
    }
    with_errno_kept(|| track_watched(fd, end, known_stream, heat))
}

/// [`track_connected`]'s short way: whatever the hook kept for `fd` goes (its unconnected bits,
/// a registration kept before the connect, a stale record).
#[inline]
fn forget_connected(fd: c_int, known_stream: bool) {
    if known_stream {
        // (Its forked bit is only ever set with this one.)
        table::mark_unconnected(fd, false);
        if preconnect::kept(fd) {
            // Registered with epoll before it connected: the application's registration, in
            // the kernel, is all there is (see `preconnect`).
            preconnect::forget(fd);
        }
    }
    if table::is_tracked(fd) {
        with_errno_kept(|| table::untrack(fd));
    }
    // A connected socket is no listener nor epoll instance: nothing is left for its close.
    table::close_state_forgotten(fd);
}

/// [`track_connected`] for a connection on a watched path that its path's heat admits.
#[inline(never)]
fn track_watched(fd: c_int, end: End, known_stream: bool, heat: (&'static crate::heat::Heat, u64)) {
    let forked = known_stream && table::forked_unconnected(fd);
    if !(known_stream || paths::is_stream(fd)) {
        // Datagram and seqpacket sockets stay plain.
        return forget_connected(fd, known_stream);
    }
    table::mark_unconnected(fd, false);
    if known_stream && preconnect::kept(fd) {
        // Registered with epoll before it connected: the registration moves with the
        // connection (see `preconnect`).
        preconnect::adopt(fd);
    }
    track_if(fd, end, true, None, Some(heat));
    if forked {
        // Another process holds this socket since before the connect, and counts nothing on
        // it (see `table::forked_unconnected`).
        if let Some(c) = table::lookup(fd) {
            c.counts.spoil();
        }
    }
}

/// Tracks `fd` as a candidate if `watched` (`nonblock`: its O_NONBLOCK if known; `heat`: its
/// path's learning, told how the connection ends), else forgets it.
fn track_if(fd: c_int, end: End, watched: bool, nonblock: Option<bool>, heat: Option<(&'static crate::heat::Heat, u64)>) {
    if watched {
        // From now on the hook reads and writes this process's buffers for a tracked
        // connection (its iovec arrays and headers at once, its data once swapped): faults
        // there become EFAULT (see `crate::fault`).
        crate::fault::arm();
    }
    match table::lookup(fd) {
        Some(c) if watched && c.phase() == Phase::Unconnected => {
            c.connected(end);
            if let Some(heat) = heat {
                c.set_heat(heat);
            }
        }
        _ if watched => {
            table::track_candidate(fd, end, nonblock, heat);
        }
        Some(_) => table::untrack(fd),
        None => {}
    }
}

/// After `accept`/`accept4` on `listener` returned `new`: track it if the listener is a stream
/// socket on a watched path. What the listener is gets remembered per listener fd, so a busy
/// server pays no system call per connection (see [`table::listener_kind`]); a connection the
/// hook does not track takes a short way, as in [`track_connected`].
#[inline]
#[unsafe(link_section = ".text.tssx.hot")]
fn track_accepted(listener: c_int, new: c_int, nonblock: bool) {
    let watched = match table::listener_kind(listener) {
        Some(watched) => watched,
        None => learn_listener(listener, new),
    };
    // A listener whose connections keep ending plain tracks only its probes (see `heat`).
    let heat = crate::heat::for_listener(listener).map(|h| (h, crate::heat::LISTENER_KEY));
    if !watched || heat.is_some_and(|(h, key)| !h.admit(key)) {
        if table::is_tracked(new) {
            // A stale record under the new number.
            with_errno_kept(|| table::untrack(new));
        }
        return;
    }
    with_errno_kept(|| track_if(new, End::Server, true, Some(nonblock), heat))
}

/// Whether `listener` (which just accepted `new`) is a stream socket on a watched path,
/// remembered for its next accepts.
#[inline(never)]
fn learn_listener(listener: c_int, new: c_int) -> bool {
    with_errno_kept(|| {
        let watched = paths::listener_name(listener, new).is_some_and(|name| paths::watched(&name)) && paths::is_stream(new);
        table::remember_listener(listener, watched);
        watched
    })
}

/// libc's `socket`: a new Unix stream socket is marked (one bit), so that an epoll
/// registration made before it connects can be recorded (see [`table::mark_unconnected`]).
pub unsafe fn socket(domain: c_int, kind: c_int, protocol: c_int) -> c_int {
    // SAFETY: no pointers.
    let fd = unsafe { sys::socket(domain, kind, protocol) };
    if fd >= 0 && domain == libc::AF_UNIX && kind & 0xf == libc::SOCK_STREAM {
        table::mark_unconnected(fd, true);
    }
    fd
}

/// libc's `connect`.
#[unsafe(link_section = ".text.tssx.hot")]
pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarded as received.
    let rc = unsafe { sys::connect(fd, addr, len) };
    if rc == 0 {
        // SAFETY: the kernel just accepted `addr`/`len` as readable.
        track_connected(fd, End::Client, unsafe { paths::unix_name_bytes(addr, len) });
    } else if table::any_live() && table::lookup(fd).is_some() && sys::errno() != libc::EINTR && sys::errno() != libc::EAGAIN {
        with_errno_kept(|| table::untrack(fd));
    }
    rc
}

// ---- signal dispositions (a contiguous block; see `crate::signals`) ----

/// libc's `sigaction` (and `__sigaction`): an application handler is installed behind the
/// hook's trampoline (so that a wait it interrupts while the hook spins ends as the kernel's
/// would), a signal the hook owns has the application's disposition recorded, and the old
/// action is always the application's own (see [`crate::signals`]).
///
/// # Safety
/// As libc's `sigaction`.
pub unsafe fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    // SAFETY: forwarded as received.
    unsafe { crate::signals::sigaction(sig, act, old) }
}

/// libc's `signal` (also `bsd_signal`, `ssignal`): as [`sigaction`], with glibc's BSD
/// semantics.
///
/// # Safety
/// As libc's `signal`.
pub unsafe fn signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    crate::signals::bsd_signal(sig, handler)
}

/// libc's `sysv_signal` (also `__sysv_signal`): as [`sigaction`], with System V semantics.
///
/// # Safety
/// As libc's `sysv_signal`.
pub unsafe fn sysv_signal(sig: c_int, handler: libc::sighandler_t) -> libc::sighandler_t {
    crate::signals::sysv_signal(sig, handler)
}

/// libc's `sigset`: as [`sigaction`].
///
/// # Safety
/// As libc's `sigset`.
pub unsafe fn sigset(sig: c_int, disposition: libc::sighandler_t) -> libc::sighandler_t {
    crate::signals::sigset(sig, disposition)
}

/// libc's `sigignore`: as [`sigaction`].
///
/// # Safety
/// As libc's `sigignore`.
pub unsafe fn sigignore(sig: c_int) -> c_int {
    crate::signals::sigignore(sig)
}

/// libc's `siginterrupt`: as [`sigaction`].
///
/// # Safety
/// As libc's `siginterrupt`.
pub unsafe fn siginterrupt(sig: c_int, interrupt: c_int) -> c_int {
    crate::signals::siginterrupt(sig, interrupt)
}

// ---- end of the block ----

// ---- watched patterns: relative binds (a contiguous block) ----

/// libc's `bind`: a Unix address bound relative to the working directory is resolved now (the
/// kernel resolves it now too), so that its connections are matched on the right absolute path
/// even if the process changes directory before it accepts (see [`paths::listener_name`]).
pub unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarded as received.
    let rc = unsafe { sys::bind(fd, addr, len) };
    if rc == 0 {
        // SAFETY: the kernel just accepted `addr`/`len` as readable.
        if let Some(name) = unsafe { paths::unix_name(addr, len) } {
            with_errno_kept(|| paths::remember_bind(fd, &name));
        }
    }
    rc
}

// ---- end of the block ----

/// libc's `accept`.
pub unsafe fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded as received.
    let new = unsafe { sys::accept(fd, addr, len) };
    if new >= 0 {
        // (An accepted socket does not inherit O_NONBLOCK.)
        track_accepted(fd, new, false);
    }
    new
}

/// libc's `accept4`.
pub unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    // SAFETY: forwarded as received.
    let new = unsafe { sys::accept4(fd, addr, len, flags) };
    if new >= 0 {
        track_accepted(fd, new, flags & libc::SOCK_NONBLOCK != 0);
    }
    new
}

/// How a call on a tracked fd goes: straight to the kernel (counted while the connection is
/// not ready), or through the hook's own path (`Hook`).
enum Route<'a> {
    Kernel(Option<RawCall<'a>>),
    Hook,
}

/// Routes a call on `c` (fd `fd`; `sending`: a write): one step of the connection's
/// migration first.
#[inline]
fn route(c: &Conn, fd: c_int, sending: bool) -> Route<'_> {
    let mut phase = c.phase();
    if phase == Phase::Active && c.peer_handed_back() {
        with_errno_kept(|| c.hand_back(fd));
        phase = c.phase();
    }
    if phase == Phase::HandingBack {
        c.note_fd(fd);
        with_errno_kept(|| c.finish_hand_back());
        phase = c.phase();
        if sending {
            // This end's writes are on the socket again.
            return Route::Kernel(None);
        }
    }
    if phase == Phase::Plain || phase == Phase::Unconnected {
        return Route::Kernel(None);
    }
    if phase.is_raw() {
        if phase != Phase::Candidate {
            // (A candidate's claim waits for the call's end, `after_raw`: the call's own bytes
            // and activity may be what makes the connection worth one; and a short connection
            // then pays that test once per call, not twice.)
            c.tick(fd);
        }
        if let Some(raw) = c.enter_raw() {
            return Route::Kernel(Some(raw));
        }
        if c.await_ready() == Phase::Plain {
            return Route::Kernel(None);
        }
    }
    if c.phase() == Phase::Ready {
        c.try_switch();
        if c.peer_handed_back() {
            with_errno_kept(|| c.hand_back(fd));
            if sending || c.phase() == Phase::Plain {
                return Route::Kernel(None);
            }
        }
    }
    Route::Hook
}

/// A blocking read of a socket whose segment is here ([`Phase::Mapped`], [`Phase::Quiescing`])
/// must not sit in the kernel for long, or this end never becomes ready: it waits for data in
/// slices of a millisecond (counted as a raw call each), taking a migration step between them,
/// and reads once data is there (or goes through the hook if the end became ready). A handler
/// that runs on this thread meanwhile ends the read with EINTR where the kernel's read would
/// have ended (`Err`: no `SA_RESTART`, or the socket has `SO_RCVTIMEO`; see
/// [`crate::signals`]); under `SA_RESTART` the wait goes on, as the kernel's would.
fn wait_before_raw_read<'a>(
    c: &'a Conn,
    fd: c_int,
    flags: c_int,
    wants_bytes: impl Fn() -> bool,
    first: Route<'a>,
) -> Result<Route<'a>, Interrupted> {
    let mut route_now = first;
    let mut mark: Option<crate::signals::Mark> = None;
    loop {
        let Route::Kernel(Some(raw)) = route_now else { return Ok(route_now) };
        let phase = c.phase();
        if !(phase == Phase::Mapped || phase == Phase::Quiescing) || c.would_block_is_error(flags) || !wants_bytes() {
            // (A read of no bytes returns at once.)
            return Ok(Route::Kernel(Some(raw)));
        }
        let since = mark.get_or_insert_with(crate::signals::Mark::now);
        if since.interrupts_transfer(|| crate::wait::socket_timeout_ns(fd, crate::wait::Waiting::Read).is_some()) {
            return Err(Interrupted);
        }
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        let n = unsafe { sys::poll(&mut p, 1, 1) };
        if n != 0 && !(n < 0 && sys::errno() == libc::EINTR) {
            return Ok(Route::Kernel(Some(raw))); // readable, EOF, or an error the read reports
        }
        drop(raw);
        with_errno_kept(|| c.tick(fd));
        route_now = route(c, fd, false);
    }
}

/// A read that [`wait_before_raw_read`] ended with EINTR.
struct Interrupted;

/// -1 with `errno` EINTR.
fn interrupted<R: From<i8>>() -> R {
    sys::set_errno(libc::EINTR);
    R::from(-1)
}

/// After a call served by the hook: a connection half-way takes its next step (its last
/// call may be the one that completed the migration).
#[inline]
fn after_hook(c: &Conn) {
    if c.phase() == Phase::Ready {
        with_errno_kept(|| c.try_switch());
    }
}

/// After a raw call returned `rc`: count it, leave, and take the next step.
#[inline]
fn after_raw(c: &Conn, fd: c_int, raw: Option<RawCall<'_>>, rc: isize, sending: bool) {
    if let Some(raw) = raw {
        raw.moved(rc, sending);
        drop(raw);
        if c.tick_due() {
            with_errno_kept(|| c.tick(fd));
        }
    }
}

/// Whether a call's flags ask for out-of-band data (`MSG_OOB`), which only the kernel carries
/// (af_unix stream sockets support it since Linux 5.15, `CONFIG_AF_UNIX_OOB`). A send with it
/// makes the connection leave the rings first ([`Conn::leave_rings`]: the out-of-band byte and
/// the bytes after it follow everything sent before, on the socket); a receive with it goes
/// straight to the kernel, which gives the byte, or its error (EINVAL when there is none),
/// without ever touching the in-band stream (so the rings' order is kept, and nothing is
/// counted). See also [`ioctl`] `SIOCATMARK`.
#[inline(always)]
fn oob(flags: c_int) -> bool {
    flags & libc::MSG_OOB != 0
}

/// Defines a receiving call: on the rings (or half-way) -> the hook, otherwise the real call.
/// `$bufs` checks and builds the caller's buffers (an errno the kernel would give at once, or
/// [`iov::Checked`]); `after` adjusts a result the hook produced (`|n| -> n`).
macro_rules! recv_like {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => |$fd:ident| ($bufs:expr, $flags:expr) $(, after = |$n:ident| $after:expr)? $(, plain_after = |$rc:ident| $plain_after:expr)? $(, empty_noop = $noop:literal)? $(, ctrl = $ctrl:expr)?) => {
        $(#[$doc])*
        #[doc = concat!("libc's `", stringify!($name), "`.")]
        pub unsafe fn $name($($arg: $ty),*) -> ssize_t {
            // The lease keeps the connection alive for the whole call (a close on another
            // thread cannot free it under us); declared first, dropped last.
            let conn = table::lookup($fd);
            let mut raw = None;
            #[allow(unused_unsafe)]
            if conn.is_some() && oob($flags) {
                // SAFETY: forwarded as received (see `oob`).
                return unsafe { sys::$name($($arg),*) };
            }
            if let Some(c) = conn.as_deref() {
                #[allow(unused_unsafe)]
                // (The hook's own flag bit is never the application's.)
                let flags = $flags & !crate::stream::MSG_INTERNAL;
                #[allow(unused_unsafe)]
                // SAFETY: the caller's buffers, checked (only their lengths are read).
                let wants_bytes = || unsafe { $bufs }.is_ok_and(|b| b.faults || b.slices.iter().any(|b| !b.is_empty()));
                match wait_before_raw_read(c, $fd, flags, wants_bytes, route(c, $fd, false)) {
                    Err(Interrupted) => return interrupted(),
                    Ok(Route::Kernel(r)) => raw = r.map(|r| (c, r)),
                    Ok(Route::Hook) => {
                        #[allow(unused_unsafe)]
                        // SAFETY: the caller's buffers, checked as the kernel would.
                        let checked = unsafe { $bufs };
                        $(
                            #[allow(unused_unsafe)]
                            // SAFETY: the caller's message (its readability is checked inside).
                            let _ctrl = unsafe { $ctrl };
                        )?
                        let got = match checked {
                            Err(e) => {
                                sys::set_errno(e);
                                return -1;
                            }
                            // read/readv of no bytes: 0 at once, before any state is
                            // looked at (the kernel's `sock_read_iter`, `do_iter_read`).
                            Ok(b) if false $(|| $noop)? && !b.faults && b.slices.iter().all(|s| s.is_empty()) => Some(0),
                            Ok(b) if b.faults => c.recv_faulting($fd, flags),
                            Ok(mut b) => c.recv($fd, &mut b.slices, flags),
                        };
                        if let Some(n) = got {
                            $(
                                let $n = n;
                                let n = if $n >= 0 { $after } else { $n };
                            )?
                            after_hook(c);
                            return n;
                        }
                    }
                }
            }
            // SAFETY: forwarded as received.
            let rc = unsafe { sys::$name($($arg),*) };
            if let Some((c, r)) = raw {
                #[allow(unused_unsafe)]
                let consumed = $flags & libc::MSG_PEEK == 0;
                after_raw(c, $fd, Some(r), if consumed { rc } else { 0 }, false);
            }
            $(
                let $rc = rc;
                $plain_after;
            )?
            rc
        }
    };
}

/// Defines a sending call, as [`recv_like`]; `check` gives the kernel's answer to what the
/// socket refuses before it looks at the data (an address on a connected socket: EISCONN).
macro_rules! send_like {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => |$fd:ident| ($bufs:expr, $flags:expr) $(, check = $check:expr)? $(, guard = $guard:expr)? $(, anc = |$c:ident| $anc:expr)? $(, pre = $pre:expr)? $(, empty_noop = $noop:literal)?) => {
        $(#[$doc])*
        #[doc = concat!("libc's `", stringify!($name), "`.")]
        pub unsafe fn $name($($arg: $ty),*) -> ssize_t {
            $(
                #[allow(unused_unsafe)]
                // SAFETY: the caller's message, valid for the call per the libc contract.
                if let Some(rc) = unsafe { $pre } {
                    return rc;
                }
            )?
            // The lease keeps the connection alive for the whole call; declared first, dropped
            // last.
            let conn = table::lookup($fd);
            let mut raw = None;
            #[allow(unused_unsafe)]
            if let Some(c) = conn.as_deref().filter(|_| oob($flags)) {
                with_errno_kept(|| c.leave_rings($fd));
                // SAFETY: forwarded as received (see `oob`).
                return unsafe { sys::$name($($arg),*) };
            }
            if let Some(c) = conn.as_deref() {
                match route(c, $fd, true) {
                    Route::Kernel(r) => raw = r.map(|r| (c, r)),
                    // SAFETY: the caller's message, checked before (see `guard`).
                    Route::Hook if false $(|| unsafe { $guard })? => {
                        $(
                            let $c = c;
                            #[allow(unused_unsafe)]
                            // SAFETY: the caller's message, readable (checked by `guard`).
                            if let Some(n) = unsafe { $anc } {
                                after_hook(c);
                                return n;
                            }
                        )?
                        // Not served on the rings: the ancillary data travels through the
                        // kernel, with the bytes it goes with, the connection back on the
                        // socket first.
                        with_errno_kept(|| c.hand_back($fd));
                    }
                    Route::Hook => {
                        #[allow(unused_unsafe)]
                        // SAFETY: the caller's buffers, checked as the kernel would.
                        let checked = unsafe { $bufs };
                        let bufs = match checked {
                            Err(e) => {
                                sys::set_errno(e);
                                return -1;
                            }
                            Ok(b) => b,
                        };
                        if false $(|| $noop)? && !bufs.faults && bufs.slices.iter().all(|s| s.is_empty()) {
                            // writev of no bytes: 0 at once, even on a socket shut down (the
                            // kernel's `do_iter_write`; a `write` of 0 goes on to the socket).
                            // Found by the differential test.
                            return 0;
                        }
                        $(
                            #[allow(unused_unsafe)]
                            // SAFETY: the caller's address arguments, checked inside.
                            if let Some(e) = unsafe { $check } {
                                sys::set_errno(e);
                                return -1;
                            }
                        )?
                        let sent = if bufs.faults { c.send_faulting($fd, $flags) } else { c.send($fd, &bufs.slices, $flags) };
                        if let Some(n) = sent {
                            after_hook(c);
                            return n;
                        }
                    }
                }
            }
            // SAFETY: forwarded as received.
            let rc = unsafe { sys::$name($($arg),*) };
            if let Some((c, r)) = raw {
                after_raw(c, $fd, Some(r), rc, true);
            }
            rc
        }
    };
}

recv_like!(fn read(fd: c_int, buf: *mut c_void, n: size_t) => |fd| (iov::one_mut(buf, n), 0), empty_noop = true);
recv_like!(fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) => |fd| (iov::one_mut(buf, n), flags));
recv_like!(fn readv(fd: c_int, iov: *const iovec, cnt: c_int) => |fd| (iov::slices_mut(iov, cnt as isize, libc::EINVAL), 0), empty_noop = true);
recv_like!(
    fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t)
        => |fd| (iov::one_mut(buf, n), flags),
        // SAFETY: the caller's address buffer of `*len` bytes and its length, both read and
        // written through the user copy. (The kernel writes them after the data is consumed:
        // EFAULT then.)
        after = |n| if addr.is_null() || unsafe { source_address(fd, n, addr, len) } {
            n
        } else {
            partial_or_errno(0, libc::EFAULT)
        }
);
recv_like!(
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int)
        => |fd| (iov::msg_iov(msg).and_then(|(v, cnt)| iov::slices_mut(v, cnt, libc::EMSGSIZE)), flags),
        after = |n| {
            // (As the kernel: nothing is written back after an error, nor a name length
            // without a name buffer; `msg_flags` keeps the call's MSG_CMSG_CLOEXEC, found by the
            // differential test.)
            // SAFETY: the caller's msghdr, readable (checked by `msg_iov`, through the user
            // copy); fields written unaligned through the user copy (a read-only header:
            // EFAULT after the data was taken, as the kernel's `put_user`).
            unsafe {
                // Control messages: only those of a marker taken on the way (`anc`).
                let (control_len, control_flags) = anc::ctrl_result();
                let written = iov::write_value(std::ptr::addr_of_mut!((*msg).msg_flags), (flags & libc::MSG_CMSG_CLOEXEC) | control_flags)
                    && iov::write_value(std::ptr::addr_of_mut!((*msg).msg_controllen), control_len as _);
                if control_len > 0 {
                    // Swapped sockets may have arrived with their segments.
                    with_errno_kept(|| pass::received(msg));
                }
                let name = iov::read_value(std::ptr::addr_of!((*msg).msg_name)).unwrap_or(std::ptr::null_mut());
                if !written || (!name.is_null() && !source_address(fd, n, name.cast(), std::ptr::addr_of_mut!((*msg).msg_namelen))) {
                    partial_or_errno(0, libc::EFAULT)
                } else {
                    n
                }
            }
        },
        // SAFETY: the caller's msghdr, just filled by the kernel (so valid), read unaligned.
        plain_after = |rc| if rc >= 0 && !msg.is_null() && unsafe { std::ptr::addr_of!((*msg).msg_controllen).read_unaligned() } > 0 {
            // Swapped sockets may have arrived with their segments.
            // SAFETY: the msghdr the kernel just filled.
            with_errno_kept(|| unsafe { pass::received(msg) });
        },
        ctrl = anc::ctrl_begin(msg, flags)
);

/// The source address `recvfrom`/`recvmsg` report after receiving `got` bytes on a connected
/// Unix stream socket, as the kernel does: the sending socket's own address (for bytes from an
/// accepted socket, the listener's path; `getpeername` names the same socket), nothing (length
/// 0) for an unbound peer or when no byte was received. At most `*len` bytes are written, and
/// `*len` is set to the address's full length.
///
/// `false` if `len` or the `addr` bytes to write lie outside user space or in a bad page (the
/// kernel's EFAULT, after the data was taken).
///
/// # Safety
/// `addr` and `len` are the application's pointers (possibly bad: read and written through the
/// user copy).
unsafe fn source_address(fd: c_int, got: isize, addr: *mut sockaddr, len: *mut socklen_t) -> bool {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut name: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut name_len = size_of::<libc::sockaddr_un>() as socklen_t;
    let known = got > 0
        // SAFETY: a live sockaddr_un and its size; getpeername is not interposed.
        && with_errno_kept(|| unsafe { libc::getpeername(fd, (&raw mut name).cast(), &mut name_len) }) == 0
        && name_len as usize > size_of::<libc::sa_family_t>();
    let full = if known { name_len } else { 0 };
    // SAFETY: per the contract; read and written unaligned, as the kernel may.
    let Some(room) = (unsafe { iov::read_value(len) }) else { return false };
    let copy = full.min(room) as usize;
    if copy > 0 && iov::range(addr.cast(), copy) != iov::Range::Valid {
        return false;
    }
    // SAFETY: `copy` bytes of ours; the caller's buffer checked for range, written through the
    // user copy.
    unsafe {
        let bytes = std::slice::from_raw_parts((&raw const name).cast::<u8>(), copy);
        tssx_shm::ucopy::to_user(addr.cast::<u8>(), bytes).is_ok() && iov::write_value(len, full)
    }
}

send_like!(fn write(fd: c_int, buf: *const c_void, n: size_t) => |fd| (iov::one(buf, n), 0));
send_like!(fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) => |fd| (iov::one(buf, n), flags));
send_like!(fn writev(fd: c_int, iov: *const iovec, cnt: c_int) => |fd| (iov::slices(iov, cnt as isize, libc::EINVAL), 0), empty_noop = true);
send_like!(
    fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t)
        => |fd| (iov::one(buf, n), flags),
        // (The kernel takes the length as an `int`.)
        check = address_refused(addr, len as i32 as isize)
);
send_like!(
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int)
        => |fd| (iov::msg_iov(msg).and_then(|(v, cnt)| iov::slices(v, cnt, libc::EMSGSIZE)), flags),
        // SAFETY: read unaligned through the user copy (a header that cannot be read is left
        // to the checks of the hook's path).
        // (sendmsg clamps a name length beyond `sockaddr_storage`; a negative `int` is EINVAL.)
        check = iov::read_value(msg).and_then(|m| address_refused(
            m.msg_name.cast(),
            (m.msg_namelen as i32 as isize).min(std::mem::size_of::<libc::sockaddr_storage>() as isize)
        )),
        // (A header that cannot be read is left to the checks of the hook's path.)
        guard = iov::read_value(msg).is_some_and(|m| m.msg_controllen > 0),
        anc = |c| anc_send(c, fd, msg, flags),
        pre = if table::lookup_swapped(fd).is_none() { pass::send(fd, msg, flags) } else { None }
);

/// `sendmsg` with control messages on a connection on the rings ([`Conn::send_anc`]): the
/// data buffers checked as the kernel does first. `None`: not served (hand back).
///
/// # Safety
/// `msg` is readable.
unsafe fn anc_send(c: &Conn, fd: c_int, msg: *const msghdr, flags: c_int) -> Option<isize> {
    // SAFETY: per the contract.
    let checked = unsafe { iov::msg_iov(msg).and_then(|(v, cnt)| iov::slices(v, cnt, libc::EMSGSIZE)) };
    match checked {
        Err(e) => {
            sys::set_errno(e);
            Some(-1)
        }
        Ok(b) if b.faults => None,
        // SAFETY: per the contract; the buffers just checked.
        Ok(b) => unsafe { c.send_anc(fd, msg, &b.slices, flags) },
    }
}

/// What `preadv2`/`pwritev2` with these `RWF_*` flags do on a tracked socket.
#[derive(Debug, PartialEq, Eq)]
enum Rwf {
    /// Offset -1 and flags the kernel accepts on a socket: the call is `readv`/`writev` with
    /// these `MSG_*` flags (served where `readv`/`recvmsg` are).
    Stream(c_int),
    /// The kernel refuses the call before it touches the data (an offset: ESPIPE or EINVAL; a
    /// flag sockets do not support, RWF_ATOMIC or RWF_DONTCACHE: EOPNOTSUPP): the real call.
    Kernel,
    /// A flag unknown to this hook: refused with EOPNOTSUPP, as kernels without it do (a newer
    /// kernel might accept it and read the socket past the rings).
    Unknown,
}

/// Classifies a `preadv2`/`pwritev2` on a socket. The accepted flags, as Linux 6.18 treats
/// them on a Unix stream socket (checked plain, see the `rwf` conformance scenario):
/// RWF_HIPRI, RWF_DSYNC, RWF_SYNC, RWF_APPEND and RWF_NOAPPEND change nothing, RWF_NOWAIT is
/// MSG_DONTWAIT, RWF_NOSIGNAL (0x100) is MSG_NOSIGNAL; RWF_ATOMIC (0x40) and RWF_DONTCACHE
/// (0x80) are refused with EOPNOTSUPP.
fn rwf(offset: i64, flags: c_int) -> Rwf {
    const NOSIGNAL: c_int = 0x100;
    const REFUSED: c_int = 0x40 | 0x80;
    const IGNORED: c_int = libc::RWF_HIPRI | libc::RWF_DSYNC | libc::RWF_SYNC | libc::RWF_APPEND | 0x20;
    if offset != -1 || flags & REFUSED != 0 {
        return Rwf::Kernel;
    }
    if flags & !(IGNORED | libc::RWF_NOWAIT | NOSIGNAL | REFUSED) != 0 {
        return Rwf::Unknown;
    }
    let mut msg = 0;
    if flags & libc::RWF_NOWAIT != 0 {
        msg |= libc::MSG_DONTWAIT;
    }
    if flags & NOSIGNAL != 0 {
        msg |= libc::MSG_NOSIGNAL;
    }
    Rwf::Stream(msg)
}

/// `readv`/`writev` with `MSG_*` flags: `recvmsg`/`sendmsg` over the same vector, after
/// `readv`'s own check of the count (EINVAL, where `recvmsg` says EMSGSIZE).
///
/// # Safety
/// As `readv`/`writev`.
unsafe fn vector_with_flags(fd: c_int, iov: *const iovec, cnt: c_int, flags: c_int, writing: bool) -> ssize_t {
    if !(0..=libc::UIO_MAXIOV).contains(&cnt) {
        sys::set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: an all-zero msghdr (no name, no control) is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.cast_mut();
    msg.msg_iovlen = cnt as usize;
    // SAFETY: the caller's vector, as for readv/writev.
    unsafe {
        if writing {
            sendmsg(fd, &msg, flags)
        } else {
            recvmsg(fd, &mut msg, flags)
        }
    }
}

/// `preadv2`/`pwritev2` (and their `64v2` twins): on a tracked socket with offset -1 they are
/// `readv`/`writev` with flags (see [`rwf`]); everything else is the real call.
///
/// # Safety
/// As the libc function; `real` is its real twin.
unsafe fn vector_v2(
    fd: c_int,
    iov: *const iovec,
    cnt: c_int,
    offset: i64,
    flags: c_int,
    writing: bool,
    real: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if table::lookup(fd).is_some() {
        match rwf(offset, flags) {
            // SAFETY: the caller's arguments, as readv/writev.
            Rwf::Stream(0) if !writing => return unsafe { readv(fd, iov, cnt) },
            // SAFETY: as above.
            Rwf::Stream(0) => return unsafe { writev(fd, iov, cnt) },
            // SAFETY: as above.
            Rwf::Stream(msg_flags) => return unsafe { vector_with_flags(fd, iov, cnt, msg_flags, writing) },
            Rwf::Unknown => {
                sys::set_errno(libc::EOPNOTSUPP);
                return -1;
            }
            Rwf::Kernel => {}
        }
    }
    real()
}

/// libc's `preadv2`.
pub unsafe fn preadv2(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarded as received.
    unsafe { vector_v2(fd, iov, cnt, offset, flags, false, || sys::preadv2(fd, iov, cnt, offset, flags)) }
}

/// libc's `preadv64v2`.
pub unsafe fn preadv64v2(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off64_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarded as received.
    unsafe { vector_v2(fd, iov, cnt, offset, flags, false, || sys::preadv64v2(fd, iov, cnt, offset, flags)) }
}

/// libc's `pwritev2`.
pub unsafe fn pwritev2(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarded as received.
    unsafe { vector_v2(fd, iov, cnt, offset, flags, true, || sys::pwritev2(fd, iov, cnt, offset, flags)) }
}

/// libc's `pwritev64v2`.
pub unsafe fn pwritev64v2(fd: c_int, iov: *const iovec, cnt: c_int, offset: libc::off64_t, flags: c_int) -> ssize_t {
    // SAFETY: forwarded as received.
    unsafe { vector_v2(fd, iov, cnt, offset, flags, true, || sys::pwritev64v2(fd, iov, cnt, offset, flags)) }
}

/// What the kernel answers a send with a destination address on a connected stream socket,
/// before it looks at the data: EINVAL for a length beyond `sockaddr_storage` (or negative),
/// EFAULT for an address it cannot read, EISCONN otherwise; `None` without an address (a null
/// pointer or a zero length).
///
/// # Safety
/// An `addr` that passes [`iov::range`] is readable for `len` bytes (the kernel reads it).
unsafe fn address_refused(addr: *const sockaddr, len: isize) -> Option<c_int> {
    if addr.is_null() || len == 0 {
        return None;
    }
    if !(0..=std::mem::size_of::<libc::sockaddr_storage>() as isize).contains(&len) {
        return Some(libc::EINVAL);
    }
    if iov::range(addr.cast(), len as usize) != iov::Range::Valid {
        return Some(libc::EFAULT);
    }
    Some(libc::EISCONN)
}

/// Most messages one `sendmmsg` sends (`UIO_MAXIOV`: the kernel cuts a longer vector there).
const SENDMMSG_MAX: libc::c_uint = 1024;

/// Whether any of the first `vlen` messages carries ancillary data (false for a null vector:
/// the real call reports it).
///
/// # Safety
/// `msgs` is null or points at `vlen` valid `mmsghdr`s.
unsafe fn any_control(msgs: *const libc::mmsghdr, vlen: libc::c_uint) -> bool {
    // SAFETY: per the contract; read through the user copy (a vector in a bad page counts as
    // none: the call then goes to the kernel, EFAULT).
    !msgs.is_null()
        && (0..vlen as usize).any(|i| unsafe { iov::read_value(&raw const (*msgs.add(i)).msg_hdr.msg_controllen) }.unwrap_or(0) > 0)
}

/// The bytes a message's iovecs hold (0 for a header or an array that cannot be read: read
/// through the user copy).
///
/// # Safety
/// `msg` is the application's msghdr pointer (possibly bad).
unsafe fn msg_bytes(msg: *const msghdr) -> usize {
    // SAFETY: per the contract.
    let Some(m) = (unsafe { iov::read_value(msg) }) else { return 0 };
    if m.msg_iov.is_null() {
        return 0;
    }
    (0..m.msg_iovlen.min(iov::MAX_IOV))
        // SAFETY: the application's iovec array (possibly bad), read through the user copy.
        .map(|i| unsafe { iov::read_value(&raw const (*m.msg_iov.add(i)).iov_len) }.unwrap_or(0))
        .fold(0usize, usize::saturating_add)
}

/// The bytes the first `n` messages of a vector moved (their `msg_len`, as the kernel filled
/// them): what a raw `recvmmsg`/`sendmmsg` transferred.
///
/// # Safety
/// `msgs` points at at least `n` valid `mmsghdr`s (when `n > 0`).
unsafe fn mmsg_moved(msgs: *const libc::mmsghdr, n: c_int) -> isize {
    // SAFETY: per the contract.
    (0..n.max(0) as usize).map(|i| unsafe { (*msgs.add(i)).msg_len } as isize).sum()
}

/// After a real `recvmmsg` that returned `n` messages: segments of swapped sockets passed in
/// them are attached (as after a real `recvmsg`, see [`pass::received`]).
///
/// # Safety
/// `msgs` holds at least `n` `mmsghdr`s just filled by the kernel.
unsafe fn mmsg_received(msgs: *mut libc::mmsghdr, n: c_int) {
    for i in 0..n.max(0) as usize {
        // SAFETY: per the contract.
        let hdr = unsafe { &raw mut (*msgs.add(i)).msg_hdr };
        // SAFETY: as above.
        if unsafe { (*hdr).msg_controllen } > 0 {
            // SAFETY: a msghdr the kernel just filled.
            with_errno_kept(|| unsafe { pass::received(hdr) });
        }
    }
}

/// libc's `sendmmsg`. The kernel sends each message of the vector as `sendmsg` would (a partial
/// send ends the call; an error after the first message is not reported) and returns how many
/// it sent; on a connection that is served by the hook (or when a message passes fds while
/// this process tracks connections), so does the hook, with [`sendmsg`] for each message: the
/// rings (ancillary data as [`sendmsg`]: through the kernel, positioned on the rings). A socket still
/// plain makes one real call (counted); any other fd goes straight to libc.
pub unsafe fn sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int) -> c_int {
    let conn = table::lookup(fd).filter(|c| !matches!(c.phase(), Phase::Plain | Phase::Unconnected));
    if let Some(c) = conn.as_deref().filter(|_| oob(flags)) {
        with_errno_kept(|| c.leave_rings(fd));
        // SAFETY: forwarded as received (see `oob`).
        return unsafe { sys::sendmmsg(fd, msgs, vlen, flags) };
    }
    // SAFETY: `msgs` points at `vlen` messages, per sendmmsg's contract.
    let control = table::any_live() && unsafe { any_control(msgs, vlen.min(SENDMMSG_MAX)) };
    if !control {
        let Some(c) = conn.as_deref() else {
            // SAFETY: forwarded as received.
            return unsafe { sys::sendmmsg(fd, msgs, vlen, flags) };
        };
        if let Route::Kernel(raw) = route(c, fd, true) {
            // SAFETY: forwarded as received.
            let rc = unsafe { sys::sendmmsg(fd, msgs, vlen, flags) };
            // SAFETY: the kernel filled the first `rc` messages' `msg_len`.
            after_raw(c, fd, raw, unsafe { mmsg_moved(msgs, rc) }, true);
            return rc;
        }
    }
    if msgs.is_null() && vlen > 0 {
        sys::set_errno(libc::EFAULT);
        return -1;
    }
    let saved = sys::errno();
    let vlen = vlen.min(SENDMMSG_MAX);
    let mut sent: libc::c_uint = 0;
    while sent < vlen {
        // SAFETY: `sent < vlen`: one of the caller's messages (possibly in a bad page: it is
        // only read and written through the user copy).
        let m = unsafe { msgs.add(sent as usize) };
        // SAFETY: the caller's message, as for sendmsg.
        let rc = unsafe { sendmsg(fd, &raw const (*m).msg_hdr, flags) };
        if rc < 0 {
            break;
        }
        // SAFETY: as above. As the kernel: a length it cannot store ends the vector, the
        // message sent but not counted (EFAULT if it was the first).
        if !unsafe { iov::write_value(&raw mut (*m).msg_len, rc as libc::c_uint) } {
            sys::set_errno(libc::EFAULT);
            break;
        }
        sent += 1;
        // SAFETY: the caller's message, just sent.
        if (rc as usize) < unsafe { msg_bytes(&raw const (*m).msg_hdr) } {
            break; // a partial send ends the vector, as in the kernel
        }
    }
    if sent == 0 && vlen > 0 {
        return -1; // the first message's errno
    }
    sys::set_errno(saved);
    sent as c_int
}

/// libc's `recvmmsg`. On a connection served by the hook, as the kernel does for a stream
/// socket: a pending `ECONNRESET` first (the kernel's `sock_error` check), then each message
/// received as `recvmsg` would ([`recvmsg`]: the rings), its byte count in `msg_len` (an EOF is
/// a message of 0 bytes); `MSG_WAITFORONE` makes every message after the first non-blocking;
/// the timeout is looked at only after each message (so it never cuts a blocking wait short,
/// as in the kernel) and the time left is written back when messages were received; an error
/// after the first message ends the call with what was received. A socket still plain makes
/// one real call (counted, after waiting as a blocking [`read`] does); any other fd goes
/// straight to libc. An ECONNRESET that ends a call after some messages stays pending for the
/// next call, as in the kernel; not reproduced: the kernel keeps any other error that ended a
/// call after some messages (other than `EAGAIN`, e.g. EFAULT) in the socket's `SO_ERROR`.
pub unsafe fn recvmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int {
    // The lease keeps the connection alive for the whole call.
    let conn = table::lookup(fd).filter(|c| !matches!(c.phase(), Phase::Plain | Phase::Unconnected) && !oob(flags));
    let Some(c) = conn.as_deref() else {
        // SAFETY: forwarded as received.
        let rc = unsafe { sys::recvmmsg(fd, msgs, vlen, flags, timeout) };
        // SAFETY: the kernel filled the first `rc` messages.
        unsafe { mmsg_received(msgs, rc) };
        return rc;
    };
    // The timeout is checked first, as the kernel does. The deadline as the kernel computes it
    // (a zero timeout: the clock's zero, so the call ends after one message).
    // SAFETY: `timeout` is the application's pointer, read through the user copy (EFAULT for a
    // bad one, as the kernel's `get_timespec64`).
    let read_timeout = (!timeout.is_null()).then(|| unsafe { iov::read_value(timeout) });
    if matches!(read_timeout, Some(None)) {
        sys::set_errno(libc::EFAULT);
        return -1;
    }
    let deadline = match read_timeout.flatten().as_ref() {
        None => None,
        Some(t) if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) => {
            sys::set_errno(libc::EINVAL);
            return -1;
        }
        Some(t) if t.tv_sec == 0 && t.tv_nsec == 0 => Some(0i128),
        Some(t) => Some(now_ns() as i128 + t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128),
    };
    // SAFETY: the caller's first message (only its lengths are read, through the user copy).
    let wants_bytes = || vlen > 0 && !msgs.is_null() && unsafe { msg_bytes(&raw const (*msgs).msg_hdr) } > 0;
    let first = flags & !libc::MSG_WAITFORONE;
    let Ok(routed) = wait_before_raw_read(c, fd, first, wants_bytes, route(c, fd, false)) else { return interrupted() };
    if let Route::Kernel(raw) = routed {
        // SAFETY: forwarded as received.
        let rc = unsafe { sys::recvmmsg(fd, msgs, vlen, flags, timeout) };
        let consumed = flags & libc::MSG_PEEK == 0;
        // SAFETY: the kernel filled the first `rc` messages' `msg_len`.
        after_raw(c, fd, raw, if consumed { unsafe { mmsg_moved(msgs, rc) } } else { 0 }, false);
        // SAFETY: as above.
        unsafe { mmsg_received(msgs, rc) };
        return rc;
    }
    if flags & libc::MSG_ERRQUEUE == 0 && c.reset_pending() {
        // The kernel reports (and clears) the socket's pending error before any message
        // (unless MSG_ERRQUEUE is set: found by the differential test).
        c.note_reset_reported(true);
        sys::set_errno(libc::ECONNRESET);
        return -1;
    }
    if flags & libc::MSG_ERRQUEUE == 0 && c.socket_error_pending(fd) {
        // The same for the socket's own error, once the peer handed back: the peer, plain,
        // closed with bytes unread (an out-of-band byte), bytes of its on the ring or not
        // (found by the differential test with MSG_OOB, seed 80512).
        let err = c.take_socket_error(fd);
        if err != 0 {
            // (The header's mark of the same reset, if any, is taken with it.)
            c.note_reset_reported(true);
            sys::set_errno(err);
            return -1;
        }
    }
    if vlen == 0 {
        return 0;
    }
    if msgs.is_null() {
        sys::set_errno(libc::EFAULT);
        return -1;
    }
    let saved = sys::errno();
    let mut each = first;
    let mut left = None;
    let mut got: libc::c_uint = 0;
    while got < vlen {
        // SAFETY: `got < vlen`: one of the caller's messages (possibly in a bad page: it is
        // only read and written through the user copy).
        let m = unsafe { msgs.add(got as usize) };
        // SAFETY: the caller's message, as for recvmsg.
        let rc = unsafe { recvmsg(fd, &raw mut (*m).msg_hdr, each) };
        if rc < 0 {
            if got > 0 && sys::errno() == libc::ECONNRESET {
                // The kernel keeps an error that ends the call after some messages in the
                // socket for the next call: the peer's reset stays pending (found by the
                // differential test).
                c.note_reset_reported(false);
            }
            break;
        }
        // SAFETY: as above. As the kernel: a length it cannot store ends the vector, the
        // message taken but not counted (EFAULT if it was the first).
        if !unsafe { iov::write_value(&raw mut (*m).msg_len, rc as libc::c_uint) } {
            sys::set_errno(libc::EFAULT);
            break;
        }
        got += 1;
        if flags & libc::MSG_WAITFORONE != 0 {
            each |= libc::MSG_DONTWAIT;
        }
        if let Some(deadline) = deadline {
            let rest = deadline - now_ns() as i128;
            left = Some(rest.max(0));
            if rest <= 0 {
                break;
            }
        }
    }
    if got == 0 {
        return -1; // the first message's errno
    }
    if let (Some(rest), false) = (left, timeout.is_null()) {
        let t = sys::timespec_of_ns(rest as u64);
        // SAFETY: the application's timespec, read above; written through the user copy. As
        // the kernel: a time left it cannot store makes the call fail with EFAULT.
        if !unsafe { iov::write_value(timeout, t) } {
            sys::set_errno(libc::EFAULT);
            return -1;
        }
    }
    sys::set_errno(saved);
    got as c_int
}

/// libc's `sendfile` (and `sendfile64`, the same function on 64-bit Linux): into a socket on
/// the rings, the kernel reads the input into a private pipe (its own checks, offsets and EOF)
/// and the hook sends it (the offset moves by what was sent, as the kernel's; see
/// [`Conn::sendfile`]); into a plain tracked socket, the real call, counted. Never hands back.
pub unsafe fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t {
    let conn = table::lookup(out_fd);
    if let Some(c) = conn.as_deref() {
        match route(c, out_fd, true) {
            Route::Kernel(raw) => {
                // SAFETY: forwarded as received.
                let rc = unsafe { sys::sendfile(out_fd, in_fd, offset, count) };
                after_raw(c, out_fd, raw, rc, true);
                return rc;
            }
            Route::Hook => {
                // SAFETY: `offset` is null or valid, per sendfile's contract.
                if let Some(rc) = unsafe { c.sendfile(out_fd, in_fd, offset, count) } {
                    after_hook(c);
                    return rc;
                }
            }
        }
    }
    // SAFETY: forwarded as received.
    unsafe { sys::sendfile(out_fd, in_fd, offset, count) }
}

/// libc's `splice`. With a swapped socket on one side and a pipe on the other (no offsets,
/// the kernel's flags, `len` > 0): served on the rings through a bounce buffer with the
/// kernel's semantics ([`crate::splice`]); a tracked socket not ready yet: the real call,
/// counted. Anything else (an offset, the wrong pipe end, unknown flags, no pipe on the other
/// side, `len` 0) fails in the kernel before it moves a byte, or moves none: the real call.
pub unsafe fn splice(
    fd_in: c_int,
    off_in: *mut libc::loff_t,
    fd_out: c_int,
    off_out: *mut libc::loff_t,
    len: size_t,
    flags: libc::c_uint,
) -> ssize_t {
    use crate::splice::Way;
    for (fd, way) in [(fd_out, Way::IntoSocket), (fd_in, Way::OutOfSocket)] {
        // The lease keeps the connection alive for the whole call.
        let Some(conn) = table::lookup(fd) else { continue };
        let c = &*conn;
        if matches!(c.phase(), Phase::Plain | Phase::Unconnected) {
            continue;
        }
        let (pipe, off_pipe, off_socket) = match way {
            Way::IntoSocket => (fd_in, off_in, off_out),
            Way::OutOfSocket => (fd_out, off_out, off_in),
        };
        let served = with_errno_kept(|| crate::splice::served(way, pipe, !off_pipe.is_null(), !off_socket.is_null(), len, flags));
        if !served {
            break;
        }
        let sending = way == Way::IntoSocket;
        match route(c, fd, sending) {
            Route::Kernel(raw) => {
                // SAFETY: forwarded as received.
                let rc = unsafe { sys::splice(fd_in, off_in, fd_out, off_out, len, flags) };
                after_raw(c, fd, raw, rc, sending);
                return rc;
            }
            Route::Hook => {
                let rc = match way {
                    Way::IntoSocket => c.splice_in(fd, pipe, len, flags),
                    Way::OutOfSocket => c.splice_out(fd, pipe, len, flags),
                };
                if let Some(rc) = rc {
                    after_hook(c);
                    return rc;
                }
            }
        }
        break;
    }
    // SAFETY: forwarded as received.
    unsafe { sys::splice(fd_in, off_in, fd_out, off_out, len, flags) }
}

/// libc's `setsockopt`: always the real call; after a successful `SO_PEEK_OFF` on a tracked
/// connection the hook serves, the value is kept by the hook and the kernel's turned off (see
/// [`crate::peekoff`]). The timeouts (SO_RCVTIMEO, SO_SNDTIMEO) stay in the kernel, where a
/// blocked call reads them (`wait::Deadline`).
pub unsafe fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int {
    // SAFETY: forwarded as received.
    let rc = unsafe { sys::setsockopt(fd, level, name, value, len) };
    if rc == 0 && level == libc::SOL_SOCKET && name == libc::SO_PEEK_OFF {
        if let Some(c) = table::lookup(fd) {
            with_errno_kept(|| c.took_peek_off(fd));
        }
    }
    if rc == 0 && level == libc::SOL_SOCKET && name == libc::SO_PASSCRED {
        if let Some(c) = table::lookup(fd) {
            // Credentials with every read: only the kernel has them (see `anc`).
            with_errno_kept(|| {
                let on = anc::passes_creds(fd);
                // Relaxed: see the field.
                c.passcred.store(on, std::sync::atomic::Ordering::Relaxed);
                if on {
                    c.leave_rings(fd);
                }
            });
        }
    }
    rc
}

/// libc's `getsockopt`: the real call; `SO_PEEK_OFF` of a connection the hook serves reports
/// the hook's value (see [`crate::peekoff`]).
pub unsafe fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int {
    // SAFETY: forwarded as received.
    let rc = unsafe { sys::getsockopt(fd, level, name, value, len) };
    if rc == 0 && level == libc::SOL_SOCKET && name == libc::SO_PEEK_OFF {
        if let Some(off) = table::lookup(fd).and_then(|c| c.peek_off()) {
            // SAFETY: the kernel just wrote `*len` (at most the caller's room) bytes of an int
            // there; the same bytes of ours, unaligned as the kernel may.
            unsafe {
                let n = (len.read_unaligned() as usize).min(size_of::<c_int>());
                std::ptr::copy_nonoverlapping((&raw const off).cast::<u8>(), value.cast::<u8>(), n);
            }
        }
    }
    rc
}

/// Whether [`forget_fd`] may have anything to forget for `fd` (one load: see
/// [`table::may_have_close_state`]).
#[inline(always)]
pub(crate) fn has_close_state(fd: c_int) -> bool {
    let summary = table::may_have_close_state(fd);
    // Every state `forget_fd` forgets sets the summary's bit first (`table::note_state`).
    debug_assert!(summary || !has_any_close_state(fd), "fd {fd} has state the close summary misses");
    summary
}

/// Whether [`forget_fd`] has anything to forget for `fd`, asked of each table: a connection, an
/// unconnected-socket bit, a listener's kind (see [`table::has_fd_state`]), an epoll set, or an
/// epoll instance a registration kept before a connect names.
fn has_any_close_state(fd: c_int) -> bool {
    table::has_fd_state(fd) || epoll::has_state(fd) || preconnect::names_instance(fd)
}

/// Whether `close(fd)` may go straight to libc: `fd` is not one of the hook's own, and the
/// hook keeps nothing for it ([`forget_fd`] would do nothing). The preload's export tests this
/// before anything else.
#[inline(always)]
pub fn close_passes(fd: c_int) -> bool {
    !crate::own::is_own(fd) && !has_close_state(fd)
}

/// What the hook does when `fd` closes, before the real call: everything it kept for the fd
/// is forgotten, and a connection whose last fd this is tells its peer (while `fd` is still
/// open). Shared by `close`, `close_range` and `closefrom`.
pub(crate) fn forget_fd(fd: c_int) {
    if table::is_unconnected(fd) {
        preconnect::forget(fd);
        table::mark_unconnected(fd, false);
    }
    preconnect::instance_closing(fd);
    table::forget_listener(fd);
    if table::lookup(fd).is_some() {
        with_errno_kept(|| {
            epoll::fd_closing(fd);
            table::close(fd)
        });
    }
    if epoll::has_state(fd) {
        epoll::closed(fd);
    }
    table::close_state_forgotten(fd);
}

/// libc's `close`. The hook's own fds (see [`crate::own`]) are not the application's to close:
/// EBADF, as for a number nothing is open on.
pub unsafe fn close(fd: c_int) -> c_int {
    if crate::own::is_own(fd) {
        sys::set_errno(libc::EBADF);
        return -1;
    }
    forget_fd(fd);
    // SAFETY: forwarded as received.
    unsafe { sys::close(fd) }
}

/// libc's `dup`.
pub unsafe fn dup(fd: c_int) -> c_int {
    adopt_kept_before_dup(fd);
    // SAFETY: forwarded as received.
    let new = unsafe { sys::dup(fd) };
    if new >= 0 {
        epoll::duplicated(fd, new);
        if table::lookup(fd).is_some() {
            table::duplicated(fd, new);
        }
    }
    new
}

/// Before a `dup2`/`dup3` of `old` onto a swapped `new`: the call will close `new` (if `old`
/// is open), as a `close` would (see [`table::before_replaced`]).
fn before_replaced(old: c_int, new: c_int) {
    if table::any_live() && table::lookup_swapped(new).is_some() {
        with_errno_kept(|| {
            // SAFETY: F_GETFD takes no pointer.
            if unsafe { sys::fcntl(old, libc::F_GETFD, 0) } >= 0 {
                table::before_replaced(new);
            }
        });
    }
}

/// A socket whose epoll registration was kept aside before its connect (see `preconnect`) gets
/// its record before it is duplicated: the record follows every fd of the socket.
fn adopt_kept_before_dup(fd: c_int) {
    if table::is_unconnected(fd) && preconnect::kept(fd) {
        with_errno_kept(|| preconnect::adopt(fd));
    }
}

/// Before a `dup2`/`dup3` of `old` onto `new`: registrations kept aside for an epoll instance
/// `new` go the general way (as before a close), and `old` is duplicated with its record.
fn before_dup_onto(old: c_int, new: c_int) {
    adopt_kept_before_dup(old);
    with_errno_kept(|| preconnect::instance_closing(new));
}

/// After `dup2`/`dup3` put `old` on `new`: an epoll instance that was on `new` lost that number
/// (as on `close`), and `new` is `old`'s instance now if that is one.
fn replaced_epoll(old: c_int, new: c_int) {
    if epoll::has_state(new) {
        with_errno_kept(|| epoll::closed(new));
    }
    epoll::duplicated(old, new);
}

/// libc's `dup2`.
pub unsafe fn dup2(old: c_int, new: c_int) -> c_int {
    if old != new {
        before_dup_onto(old, new);
        if table::lookup(new).is_some() && tssx_shm::sys::fcntl(old, libc::F_GETFD, 0).is_ok() {
            // `new` is closed by the call (`old` is valid): as `close`.
            with_errno_kept(|| epoll::fd_closing(new));
        }
        before_replaced(old, new);
    }
    // One of the hook's own fds on `new` moves out of the way first.
    let relocated =
        old != new && crate::own::is_own(new) && tssx_shm::sys::fcntl(old, libc::F_GETFD, 0).is_ok() && crate::own::relocate(new);
    // SAFETY: forwarded as received.
    let rc = unsafe { sys::dup2(old, new) };
    if rc < 0 && relocated {
        with_errno_kept(|| crate::own::relocation_failed(new));
    }
    if rc >= 0 && old != new {
        table::forget_listener(new);
        // A socket on `new` registered before its connect was closed by the call.
        preconnect::forget(new);
        replaced_epoll(old, new);
    }
    if rc >= 0 && old != new && (table::lookup(old).is_some() || table::lookup(new).is_some()) {
        table::duplicated(old, new);
        crate::stdio::adopt_standard_stream(new);
    }
    rc
}

/// libc's `dup3`.
pub unsafe fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    if old != new {
        before_dup_onto(old, new);
        if table::lookup(new).is_some() && tssx_shm::sys::fcntl(old, libc::F_GETFD, 0).is_ok() {
            // `new` is closed by the call (`old` is valid): as `close`.
            with_errno_kept(|| epoll::fd_closing(new));
        }
        before_replaced(old, new);
    }
    // One of the hook's own fds on `new` moves out of the way first.
    let relocated =
        old != new && crate::own::is_own(new) && tssx_shm::sys::fcntl(old, libc::F_GETFD, 0).is_ok() && crate::own::relocate(new);
    // SAFETY: forwarded as received.
    let rc = unsafe { sys::dup3(old, new, flags) };
    if rc < 0 && relocated {
        with_errno_kept(|| crate::own::relocation_failed(new));
    }
    if rc >= 0 {
        table::forget_listener(new);
        // A socket on `new` registered before its connect was closed by the call.
        preconnect::forget(new);
        replaced_epoll(old, new);
    }
    if rc >= 0 && (table::lookup(old).is_some() || table::lookup(new).is_some()) {
        table::duplicated(old, new);
        crate::stdio::adopt_standard_stream(new);
    }
    rc
}

/// `fcntl` is variadic in C; on x86-64 the one optional integer or pointer argument travels in
/// the third argument register, so a three-argument definition receives it unchanged. Also
/// `fcntl64`: glibc's same function under the name a program built with
/// `-D_FILE_OFFSET_BITS=64` calls (nginx and python3 on Debian 12 import only that one).
pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong) -> c_int {
    if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
        adopt_kept_before_dup(fd);
    }
    // SAFETY: forwarded as received.
    let rc = unsafe { sys::fcntl(fd, cmd, arg) };
    if rc >= 0 {
        if matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
            epoll::duplicated(fd, rc);
        }
        if let Some(c) = table::lookup(fd) {
            match cmd {
                libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => table::duplicated(fd, rc),
                libc::F_SETFL => c.set_nonblocking(arg as c_int & libc::O_NONBLOCK != 0),
                _ => {}
            }
        }
    }
    rc
}

/// libc's `shutdown`.
pub unsafe fn shutdown(fd: c_int, how: c_int) -> c_int {
    if let Some(c) = table::lookup(fd) {
        let phase = c.phase();
        if phase >= Phase::Ready && phase != Phase::Plain {
            if let Some(rc) = c.shutdown(fd, how) {
                return rc;
            }
        } else if phase == Phase::Plain {
            // Before the real call, for a peer still handing back that sees its EOF.
            c.note_plain_shutdown(how);
        } else if phase != Phase::Unconnected {
            // A socket shut down for real is never migrated (its peer could not be woken).
            with_errno_kept(|| c.give_up(GiveUp::Shutdown));
        }
    }
    // SAFETY: forwarded as received.
    unsafe { sys::shutdown(fd, how) }
}

/// `ioctl(SIOCATMARK)`: whether the socket's read position is at the out-of-band mark.
pub(crate) const SIOCATMARK: libc::c_ulong = 0x8905;

/// `ioctl` is variadic in C; its one optional argument travels in the third argument register
/// on x86-64, so a three-argument definition receives it unchanged.
pub unsafe fn ioctl(fd: c_int, request: libc::c_ulong, arg: *mut c_void) -> c_int {
    if request == SIOCATMARK {
        if let Some(mark) = table::lookup(fd).and_then(|c| with_errno_kept(|| c.at_mark(fd))) {
            // SAFETY: SIOCATMARK takes a pointer to an int, written unaligned through the user
            // copy (EFAULT for a bad one).
            if !unsafe { iov::write_value(arg.cast::<c_int>(), c_int::from(mark)) } {
                sys::set_errno(libc::EFAULT);
                return -1;
            }
            return 0;
        }
    }
    if let Some(c) = table::lookup_swapped(fd) {
        if request == libc::FIONREAD && c.phase() == Phase::HandingBack {
            // Once the peer's ring bytes are read, the rest is the kernel's to count.
            c.note_fd(fd);
            with_errno_kept(|| c.finish_hand_back());
        }
        let value = match request {
            libc::FIONREAD if c.phase() == Phase::Plain => None,
            libc::FIONREAD => Some(c.unread_total(fd)),
            libc::TIOCOUTQ => Some(c.unsent_total(fd)),
            _ => None,
        };
        if let Some(value) = value {
            // SAFETY: FIONREAD/SIOCOUTQ take a pointer to an int; written unaligned (as the
            // kernel's `put_user` accepts any alignment) through the user copy (EFAULT for a
            // bad one).
            if !unsafe { iov::write_value(arg.cast::<c_int>(), value.min(c_int::MAX as usize) as c_int) } {
                sys::set_errno(libc::EFAULT);
                return -1;
            }
            return 0;
        }
    }
    // SAFETY: forwarded as received.
    let rc = unsafe { sys::ioctl(fd, request, arg) };
    if rc == 0 && request == libc::FIONBIO && !arg.is_null() {
        if let Some(c) = table::lookup(fd) {
            // SAFETY: FIONBIO takes a pointer to an int, just read by the kernel (any alignment).
            c.set_nonblocking(unsafe { arg.cast::<c_int>().read_unaligned() } != 0);
        }
    }
    rc
}

fn ms_to_ns(ms: c_int) -> Option<u64> {
    (ms >= 0).then(|| ms as u64 * 1_000_000)
}

/// The timeout of a `ppoll`, `pselect` or `epoll_pwait2`, read through the user copy:
/// `Ok(None)` for none (null), `Ok(Some(ns))`, or `Err(())` where the kernel fails the call
/// before anything else (EFAULT: it cannot be read; EINVAL: not a valid `timespec`, a negative
/// second or nanoseconds outside 0..1e9): the real call then gives that answer, at once.
fn user_timeout(ts: *const libc::timespec) -> Result<Option<u64>, ()> {
    if ts.is_null() {
        return Ok(None);
    }
    // SAFETY: the application's pointer (possibly bad), read through the user copy.
    let ts = unsafe { iov::read_value(ts) }.ok_or(())?;
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return Err(());
    }
    Ok(Some((ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)))
}

/// How many pollfds [`with_pollfds`] copies on the stack (more: on the heap).
const POLLFDS_ON_STACK: usize = 32;

/// What a `poll` over a copy of the application's array did ([`with_pollfds`]).
enum Polled {
    /// Answered on the copy: its `revents` go back to the application's array.
    Copy(c_int),
    /// Answered by the real call on the application's own array.
    Direct(c_int),
}

/// Calls `f` with a copy of the application's `n` pollfds at `fds`, read through the user copy,
/// and copies the `revents` of an answer given on the copy back. `None`: the array cannot be
/// read (the real call then answers: EFAULT, as the kernel's copy of it), or `f` left the call
/// to the caller. An array that can be read but not written gets EFAULT, as from the kernel's
/// `__put_user` of `revents`.
///
/// # Safety
/// `fds` is the application's pointer (possibly bad).
unsafe fn with_pollfds(fds: *mut libc::pollfd, n: usize, f: impl FnOnce(&mut [libc::pollfd]) -> Option<Polled>) -> Option<c_int> {
    if n > 1 << 20 {
        // Beyond any fd limit: the kernel's EINVAL (and no allocation sized by it).
        return None;
    }
    let empty = libc::pollfd { fd: -1, events: 0, revents: 0 };
    let mut stack = [empty; POLLFDS_ON_STACK];
    let mut heap = Vec::new();
    let local: &mut [libc::pollfd] = if n <= POLLFDS_ON_STACK {
        &mut stack[..n]
    } else {
        heap.resize(n, empty);
        &mut heap
    };
    let bytes = std::mem::size_of_val(local);
    if iov::range(fds.cast(), bytes) != iov::Range::Valid
        // SAFETY: the application's array (possibly bad: the user copy survives that) into
        // ours, of the same size; any bit pattern is a pollfd.
        || unsafe { tssx_shm::ucopy::copy(local.as_mut_ptr().cast(), fds.cast(), bytes) } != 0
    {
        return None;
    }
    match f(local)? {
        Polled::Direct(rc) => Some(rc),
        Polled::Copy(rc) if rc < 0 => Some(rc),
        Polled::Copy(rc) => {
            for (i, p) in local.iter().enumerate() {
                // SAFETY: the application's array, read above; written through the user copy.
                if !unsafe { iov::write_value(&raw mut (*fds.add(i)).revents, p.revents) } {
                    sys::set_errno(libc::EFAULT);
                    return Some(-1);
                }
            }
            Some(rc)
        }
    }
}

/// The real `ppoll` of a set whose tracked connections are all still plain (raw calls):
/// `mark` (taken at the call's entry) is looked at last with the thread's signals held back,
/// and the kernel's wait takes the mask from before (the application's, if it gave one; see
/// [`crate::signals::Quiet`]), so that a handler that ran since the entry fails the call with
/// EINTR, and one that runs from the look on runs inside the wait and ends it (the hook's work
/// before the wait, in a debug build or on a loaded machine, was a window in which it ran and
/// the wait slept until the next signal). errno is the wait's.
///
/// # Safety
/// As `ppoll(2)`: `fds` valid for `n` entries, `ts` and `mask` null or valid.
unsafe fn raw_poll_quietly(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
    mark: crate::signals::Mark,
) -> c_int {
    let Some(quiet) = crate::signals::Quiet::look(|| mark.interrupted().is_none()) else { return interrupted() };
    // SAFETY: per the contract; the mask is the application's or the thread's own.
    let rc = unsafe { sys::ppoll(fds, n, ts, quiet.sleep_mask(mask)) };
    // (The raw system call that restores the mask leaves errno alone.)
    drop(quiet);
    rc
}

/// libc's `poll`. While this process holds connections, the array is read (and `revents`
/// written) through the user copy ([`with_pollfds`]): a bad one gets EFAULT, never a signal.
pub unsafe fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    if table::any_live() && !fds.is_null() {
        // Before anything else the hook does: a handler that runs from here on ends a wait the
        // hook serves (see `poll::poll`).
        let mark = crate::signals::Mark::now();
        // SAFETY: the caller's array, copied in and out through the user copy.
        let served = unsafe {
            with_pollfds(fds, n as usize, |slice| match poll::kind(slice) {
                poll::Kind::Plain => None,
                poll::Kind::Raw => Some(match poll::RawCalls::enter(slice) {
                    Some(raw) => {
                        let ts = (timeout >= 0).then(|| sys::timespec_of_ms(timeout));
                        // SAFETY: forwarded as received, the timeout as a timespec.
                        let rc = raw_poll_quietly(fds, n, ts.as_ref().map_or(std::ptr::null(), |t| t), std::ptr::null(), mark);
                        drop(raw);
                        Polled::Direct(rc)
                    }
                    // SAFETY: no signal mask.
                    None => Polled::Copy(poll::poll(slice, ms_to_ns(timeout), std::ptr::null(), mark)),
                }),
                // SAFETY: no signal mask.
                poll::Kind::Swapped => Some(Polled::Copy(poll::poll(slice, ms_to_ns(timeout), std::ptr::null(), mark))),
            })
        };
        if let Some(rc) = served {
            return rc;
        }
    }
    // SAFETY: forwarded as received.
    unsafe { sys::poll(fds, n, timeout) }
}

/// libc's `ppoll` (the array as for [`poll`]).
pub unsafe fn ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int {
    // A timeout that cannot be read or is not valid: the real call's EFAULT or EINVAL.
    let timeout = if table::any_live() && !fds.is_null() { user_timeout(ts) } else { Err(()) };
    if let Ok(timeout) = timeout {
        // Before the array is copied (see `poll`).
        let mark = crate::signals::Mark::now();
        // SAFETY: the caller's array, copied in and out through the user copy; `ts` readable
        // (just checked) or null, `mask` null or valid, per ppoll's contract.
        let served = unsafe {
            with_pollfds(fds, n as usize, |slice| match poll::kind(slice) {
                poll::Kind::Plain => None,
                poll::Kind::Raw => Some(match poll::RawCalls::enter(slice) {
                    Some(raw) => {
                        // SAFETY: forwarded as received.
                        let rc = raw_poll_quietly(fds, n, ts, mask, mark);
                        drop(raw);
                        Polled::Direct(rc)
                    }
                    None => Polled::Copy(poll::poll(slice, timeout, mask, mark)),
                }),
                poll::Kind::Swapped => Some(Polled::Copy(poll::poll(slice, timeout, mask, mark))),
            })
        };
        if let Some(rc) = served {
            return rc;
        }
    }
    // SAFETY: forwarded as received.
    unsafe { sys::ppoll(fds, n, ts, mask) }
}

/// glibc's `__read_chk`: `read` in a program built with `_FORTIFY_SOURCE` when the compiler
/// knows the buffer's size (`buflen`) but not the count. For a tracked fd, glibc's check
/// (`n > buflen`: [`sys::chk_fail`], which aborts as glibc does), then [`read`]; any other fd
/// goes to glibc's own `__read_chk`, so its behaviour and errno are exactly glibc's.
pub unsafe fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    if table::lookup(fd).is_none() {
        // SAFETY: forwarded as received.
        return unsafe { sys::__read_chk(fd, buf, n, buflen) };
    }
    if n > buflen {
        sys::chk_fail();
    }
    // SAFETY: the caller's buffer holds `buflen >= n` bytes.
    unsafe { read(fd, buf, n) }
}

/// glibc's `__recv_chk` (fortified `recv`), as [`__read_chk`].
pub unsafe fn __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t {
    if table::lookup(fd).is_none() {
        // SAFETY: forwarded as received.
        return unsafe { sys::__recv_chk(fd, buf, n, buflen, flags) };
    }
    if n > buflen {
        sys::chk_fail();
    }
    // SAFETY: the caller's buffer holds `buflen >= n` bytes.
    unsafe { recv(fd, buf, n, flags) }
}

/// glibc's `__recvfrom_chk` (fortified `recvfrom`), as [`__read_chk`].
pub unsafe fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    if table::lookup(fd).is_none() {
        // SAFETY: forwarded as received.
        return unsafe { sys::__recvfrom_chk(fd, buf, n, buflen, flags, addr, len) };
    }
    if n > buflen {
        sys::chk_fail();
    }
    // SAFETY: the caller's buffer holds `buflen >= n` bytes; `addr`/`len` as for recvfrom.
    unsafe { recvfrom(fd, buf, n, flags, addr, len) }
}

/// Whether `n` pollfds fit in `fdslen` bytes (glibc's check in `__poll_chk`/`__ppoll_chk`).
fn pollfds_fit(n: libc::nfds_t, fdslen: size_t) -> bool {
    (fdslen / size_of::<libc::pollfd>()) as libc::nfds_t >= n
}

/// glibc's `__poll_chk` (fortified `poll`, `fdslen`: the array's size in bytes). While this
/// process tracks connections, glibc's check ([`sys::chk_fail`] if `n` entries do not fit),
/// then [`poll`]; otherwise glibc's own `__poll_chk`.
pub unsafe fn __poll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int, fdslen: size_t) -> c_int {
    if !table::any_live() {
        // SAFETY: forwarded as received.
        return unsafe { sys::__poll_chk(fds, n, timeout, fdslen) };
    }
    if !pollfds_fit(n, fdslen) {
        sys::chk_fail();
    }
    // SAFETY: the caller's array holds `n` pollfds.
    unsafe { poll(fds, n, timeout) }
}

/// glibc's `__ppoll_chk` (fortified `ppoll`), as [`__poll_chk`].
pub unsafe fn __ppoll_chk(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
    fdslen: size_t,
) -> c_int {
    if !table::any_live() {
        // SAFETY: forwarded as received.
        return unsafe { sys::__ppoll_chk(fds, n, ts, mask, fdslen) };
    }
    if !pollfds_fit(n, fdslen) {
        sys::chk_fail();
    }
    // SAFETY: the caller's array holds `n` pollfds; `ts`/`mask` as for ppoll.
    unsafe { ppoll(fds, n, ts, mask) }
}

/// The caller's three fd sets copied in through the user copy, for a `select` the hook serves
/// ([`with_local_sets`]): a set in a bad page never faults in the hook.
struct LocalSets {
    /// 1024 fds per set (FD_SETSIZE) on the stack; a larger `nfds` on the heap.
    stack: [[u64; libc::FD_SETSIZE / 64]; 3],
    heap: Vec<u64>,
    words: usize,
}

impl LocalSets {
    fn set(&mut self, k: usize) -> *mut libc::fd_set {
        let words = self.words;
        if words <= libc::FD_SETSIZE / 64 {
            self.stack[k].as_mut_ptr().cast()
        } else {
            // SAFETY: `heap` holds 3 * `words` words (see `with_local_sets`).
            unsafe { self.heap.as_mut_ptr().add(k * words).cast() }
        }
    }
}

/// Serves a `select`/`pselect` over `nfds` on copies of the caller's sets (read and written
/// back through the user copy, as the kernel's `get_fd_set`/`set_fd_set`): `f` gets the limit
/// ([`poll::select_scope`]) and the copies. `None`: the real call answers (nothing tracked, a
/// negative `nfds`, a set the kernel cannot read: its EFAULT). A set that can be read but not
/// written gets EFAULT after the wait, as from the kernel.
///
/// # Safety
/// The sets are the application's pointers (null, or possibly bad).
unsafe fn with_local_sets(
    nfds: c_int,
    sets: [*mut libc::fd_set; 3],
    f: impl FnOnce(usize, [*mut libc::fd_set; 3]) -> c_int,
) -> Option<c_int> {
    if !table::any_live() || nfds <= 0 {
        return None;
    }
    if !crate::fault::is_armed() {
        // No tracked connect or accept in this image, so nothing to serve in practice; the
        // sets cannot be read safely without the fault handler: as before it existed.
        // SAFETY: per select's contract.
        let limit = unsafe { poll::select_scope(nfds, sets) }?;
        return Some(f(limit, sets));
    }
    let limit = poll::select_limit(nfds)?;
    let words = limit.div_ceil(64);
    let bytes = words * 8;
    if sets.iter().any(|&s| !s.is_null() && iov::range(s.cast(), bytes) != iov::Range::Valid) {
        return None;
    }
    let mut local = LocalSets { stack: [[0; libc::FD_SETSIZE / 64]; 3], heap: Vec::new(), words };
    if words > libc::FD_SETSIZE / 64 {
        local.heap = vec![0; 3 * words];
    }
    let mut mine = [std::ptr::null_mut(); 3];
    for (k, &set) in sets.iter().enumerate() {
        if set.is_null() {
            continue;
        }
        mine[k] = local.set(k);
        // SAFETY: the application's set (possibly bad: the user copy survives it) into ours,
        // `bytes` long each.
        if unsafe { tssx_shm::ucopy::copy(mine[k].cast(), set.cast(), bytes) } != 0 {
            return None;
        }
    }
    // SAFETY: our copies, valid for `limit` fds.
    let limit = unsafe { poll::select_scope(nfds, mine) }?;
    let rc = f(limit, mine);
    if rc < 0 {
        return Some(rc);
    }
    for (k, &set) in sets.iter().enumerate() {
        // SAFETY: ours into the application's set (checked range, possibly a bad page).
        if !set.is_null() && unsafe { tssx_shm::ucopy::copy(set.cast(), mine[k].cast(), bytes) } != 0 {
            sys::set_errno(libc::EFAULT);
            return Some(-1);
        }
    }
    Some(rc)
}

/// libc's `select`. While this process holds connections, the sets are read and written back
/// through the user copy ([`with_local_sets`]) and the timeout read and written back through
/// it too: a bad one gets EFAULT, never a signal.
pub unsafe fn select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int {
    // (Nothing tracked: the real call, at no cost; `with_local_sets` serves nothing then.)
    if !table::any_live() {
        // SAFETY: forwarded as received.
        return unsafe { sys::select(n, r, w, e, tv) };
    }
    // Before anything else the hook does (see `poll`): copying the sets and building the poll
    // array come after.
    let mark = crate::signals::Mark::now();
    // A timeout that cannot be read: the real call's EFAULT, before it waits; a negative one:
    // its EINVAL (glibc's and the kernel's), at once.
    // SAFETY: `tv` is the caller's pointer (null or possibly bad), read through the user copy.
    let read_tv = if tv.is_null() { Some(None) } else { unsafe { iov::read_value(tv) }.map(Some) };
    if let Some(read_tv) = read_tv.filter(|t| t.is_none_or(|t| t.tv_sec >= 0 && t.tv_usec >= 0)) {
        // (Saturating: a huge timeout is "forever", not an overflow.)
        let timeout =
            read_tv.map(|t| (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add((t.tv_usec as u64).saturating_mul(1_000)));
        let start = now_ns();
        // SAFETY: the caller's sets, copied in and out through the user copy.
        let served =
            unsafe { with_local_sets(n, [r, w, e], |limit, [r, w, e]| poll::select(limit, r, w, e, timeout, std::ptr::null(), mark)) };
        if let Some(rc) = served {
            if let Some(t) = timeout {
                // Linux reports the time left (a timeout it cannot write back is ignored, as
                // the kernel's `poll_select_finish` does).
                let left = t.saturating_sub(now_ns() - start);
                let left = libc::timeval {
                    tv_sec: (left / 1_000_000_000) as libc::time_t,
                    tv_usec: ((left % 1_000_000_000) / 1_000) as libc::suseconds_t,
                };
                // SAFETY: the caller's pointer, written through the user copy.
                let _ = unsafe { iov::write_value(tv, left) };
            }
            return rc;
        }
    }
    // SAFETY: forwarded as received.
    unsafe { sys::select(n, r, w, e, tv) }
}

/// libc's `pselect` (the sets and the timeout as for [`select`]).
pub unsafe fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // (As in `select`.)
    if !table::any_live() {
        // SAFETY: forwarded as received.
        return unsafe { sys::pselect(n, r, w, e, ts, mask) };
    }
    let mark = crate::signals::Mark::now();
    // A timeout that cannot be read or is not valid: the real call's EFAULT or EINVAL.
    if let Ok(timeout) = user_timeout(ts) {
        // SAFETY: the caller's sets, copied in and out through the user copy; `mask` null or
        // valid, per pselect's contract.
        let served = unsafe { with_local_sets(n, [r, w, e], |limit, [r, w, e]| poll::select(limit, r, w, e, timeout, mask, mark)) };
        if let Some(rc) = served {
            return rc;
        }
    }
    // SAFETY: forwarded as received.
    unsafe { sys::pselect(n, r, w, e, ts, mask) }
}

/// libc's `epoll_create`: the instance is noted (one bit), so that a `fork` gives it one
/// interest list for both processes (see [`epoll`]).
pub unsafe fn epoll_create(size: c_int) -> c_int {
    // SAFETY: forwarded as received.
    let fd = unsafe { sys::epoll_create(size) };
    epoll::created(fd);
    fd
}

/// libc's `epoll_create1`, as [`epoll_create`].
pub unsafe fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: forwarded as received.
    let fd = unsafe { sys::epoll_create1(flags) };
    epoll::created(fd);
    fd
}

/// Whether `epoll_ctl(epfd, _, fd, _)` goes straight to the kernel: the hook's way has nothing to
/// do for an untracked socket registered in an instance without interests of the hook's own (no
/// record to keep, no stale interest to drop).
#[inline]
pub(crate) fn epoll_ctl_passes(epfd: c_int, fd: c_int) -> bool {
    !(table::is_tracked(fd) || table::is_unconnected(fd) || epoll::has_interests(epfd))
}

/// libc's `epoll_ctl`.
#[unsafe(link_section = ".text.tssx.hot")]
pub unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut libc::epoll_event) -> c_int {
    if !epoll_ctl_passes(epfd, fd) {
        // SAFETY: `event` is null or valid, per epoll_ctl's contract.
        if let Some(rc) = unsafe { epoll::ctl(epfd, op, fd, event) } {
            return rc;
        }
    }
    // SAFETY: forwarded as received.
    unsafe { sys::epoll_ctl(epfd, op, fd, event) }
}

/// libc's `epoll_wait`.
pub unsafe fn epoll_wait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int {
    if epoll::has_interests(epfd) {
        // (The mark at the entry: see `poll`.)
        let mark = crate::signals::Mark::now();
        // SAFETY: forwarded.
        return unsafe { epoll::wait(epfd, events, max, ms_to_ns(timeout), std::ptr::null(), mark) };
    }
    // SAFETY: forwarded as received.
    unsafe { epoll::plain_wait(epfd, events, max, timeout, std::ptr::null()) }
}

/// libc's `epoll_pwait`.
pub unsafe fn epoll_pwait(epfd: c_int, events: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int {
    if epoll::has_interests(epfd) {
        // (The mark at the entry: see `poll`.)
        let mark = crate::signals::Mark::now();
        // SAFETY: forwarded.
        return unsafe { epoll::wait(epfd, events, max, ms_to_ns(timeout), mask, mark) };
    }
    // SAFETY: forwarded as received.
    unsafe { epoll::plain_wait(epfd, events, max, timeout, mask) }
}

/// `epoll_pwait2` (glibc 2.35+), implemented with the system call so that the hook also loads
/// with an older libc.
pub unsafe fn epoll_pwait2(
    epfd: c_int,
    events: *mut libc::epoll_event,
    max: c_int,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    if epoll::has_set(epfd) {
        // A timeout that cannot be read or is not valid: the real call's EFAULT or EINVAL.
        if let Ok(timeout) = user_timeout(ts) {
            // (The mark at the entry: see `poll`.)
            let mark = crate::signals::Mark::now();
            // SAFETY: forwarded.
            return unsafe { epoll::wait(epfd, events, max, timeout, mask, mark) };
        }
    }
    // SAFETY: the epoll_pwait2 system call with the caller's arguments; the kernel's sigset is
    // 8 bytes on x86-64.
    let rc = epoll::counted(epfd, || unsafe {
        tssx_shm::sys::syscall(libc::SYS_epoll_pwait2, [epfd as usize, events as usize, max as usize, ts as usize, mask as usize, 8])
    });
    match rc {
        Ok(n) => n as c_int,
        Err(e) => {
            sys::set_errno(e.0);
            -1
        }
    }
}

/// libc's `fork`.
pub unsafe fn fork() -> libc::pid_t {
    lifecycle::before_fork();
    with_errno_kept(epoll::before_fork);
    // SAFETY: forwarded.
    let pid = unsafe { sys::fork() };
    if pid < 0 {
        with_errno_kept(lifecycle::fork_failed);
    } else if pid == 0 {
        lifecycle::in_child();
        with_errno_kept(epoll::in_child);
    }
    pid
}

unsafe extern "C" {
    static environ: *const *const libc::c_char;
}

/// libc's `execve`.
pub unsafe fn execve(path: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int {
    // SAFETY: forwarded; `envp` is valid per execve's contract.
    unsafe { exec::with_inherit(envp, Image::Path(path), Kind::Exec, |env, _| sys::execve(path, argv, env)) }
}

/// libc's `execv`.
pub unsafe fn execv(path: *const libc::c_char, argv: *const *const libc::c_char) -> c_int {
    // SAFETY: `environ` is the process environment; forwarded.
    unsafe { exec::with_inherit(environ, Image::Path(path), Kind::Exec, |env, _| sys::execve(path, argv, env)) }
}

/// libc's `execvp`.
pub unsafe fn execvp(file: *const libc::c_char, argv: *const *const libc::c_char) -> c_int {
    // SAFETY: as in `execv`.
    unsafe { exec::with_inherit(environ, Image::Search(file), Kind::Exec, |env, _| sys::execvpe(file, argv, env)) }
}

/// libc's `execvpe`.
pub unsafe fn execvpe(file: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int {
    // SAFETY: forwarded.
    unsafe { exec::with_inherit(envp, Image::Search(file), Kind::Exec, |env, _| sys::execvpe(file, argv, env)) }
}

/// libc's `fexecve`.
pub unsafe fn fexecve(fd: c_int, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int {
    // SAFETY: forwarded.
    unsafe { exec::with_inherit(envp, Image::Fd(fd), Kind::Exec, |env, _| sys::fexecve(fd, argv, env)) }
}

/// libc's `posix_spawn`.
pub unsafe fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const libc::c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut libc::c_char,
    envp: *const *mut libc::c_char,
) -> c_int {
    let ops = spawn::actions_of(actions as usize);
    // SAFETY: forwarded; `envp` is valid per posix_spawn's contract.
    unsafe {
        exec::with_inherit(envp.cast(), Image::Path(path), Kind::Spawn(ops.as_deref()), |env, fa| {
            sys::posix_spawn(pid, path, fa.unwrap_or(actions), attr, argv, env.cast())
        })
    }
}

/// libc's `posix_spawnp`.
pub unsafe fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const libc::c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut libc::c_char,
    envp: *const *mut libc::c_char,
) -> c_int {
    let ops = spawn::actions_of(actions as usize);
    // SAFETY: as in `posix_spawn`.
    unsafe {
        exec::with_inherit(envp.cast(), Image::Search(file), Kind::Spawn(ops.as_deref()), |env, fa| {
            sys::posix_spawnp(pid, file, fa.unwrap_or(actions), attr, argv, env.cast())
        })
    }
}

// --- Children: posix_spawn file actions, vfork, system, popen (see `spawn`) ---

/// libc's `posix_spawn_file_actions_init` (starts the hook's record of the object).
pub unsafe fn posix_spawn_file_actions_init(fa: *mut libc::posix_spawn_file_actions_t) -> c_int {
    // SAFETY: forwarded.
    let rc = unsafe { sys::posix_spawn_file_actions_init(fa) };
    if rc == 0 {
        spawn::actions_init(fa as usize);
    }
    rc
}

/// libc's `posix_spawn_file_actions_destroy` (drops the hook's record).
pub unsafe fn posix_spawn_file_actions_destroy(fa: *mut libc::posix_spawn_file_actions_t) -> c_int {
    spawn::actions_destroy(fa as usize);
    // SAFETY: forwarded.
    unsafe { sys::posix_spawn_file_actions_destroy(fa) }
}

/// Records `op` for `fa` if the real call (`rc`) succeeded.
fn recorded(fa: *mut libc::posix_spawn_file_actions_t, rc: c_int, op: Option<Op>) -> c_int {
    if let (0, Some(op)) = (rc, op) {
        spawn::actions_push(fa as usize, op);
    }
    rc
}

/// libc's `posix_spawn_file_actions_addclose`.
pub unsafe fn posix_spawn_file_actions_addclose(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int) -> c_int {
    // SAFETY: forwarded.
    recorded(fa, unsafe { sys::posix_spawn_file_actions_addclose(fa, fd) }, Some(Op::Close(fd)))
}

/// libc's `posix_spawn_file_actions_adddup2`.
pub unsafe fn posix_spawn_file_actions_adddup2(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int, newfd: c_int) -> c_int {
    // SAFETY: forwarded.
    recorded(fa, unsafe { sys::posix_spawn_file_actions_adddup2(fa, fd, newfd) }, Some(Op::Dup2(fd, newfd)))
}

/// libc's `posix_spawn_file_actions_addopen`.
pub unsafe fn posix_spawn_file_actions_addopen(
    fa: *mut libc::posix_spawn_file_actions_t,
    fd: c_int,
    path: *const libc::c_char,
    oflag: c_int,
    mode: libc::mode_t,
) -> c_int {
    // SAFETY: forwarded.
    let rc = unsafe { sys::posix_spawn_file_actions_addopen(fa, fd, path, oflag, mode) };
    // SAFETY: libc accepted `path` as a valid C string.
    recorded(fa, rc, (rc == 0).then(|| Op::Open(fd, unsafe { std::ffi::CStr::from_ptr(path) }.into(), oflag, mode)))
}

/// libc's `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34+; ENOSYS without it).
pub unsafe fn posix_spawn_file_actions_addclosefrom_np(fa: *mut libc::posix_spawn_file_actions_t, from: c_int) -> c_int {
    // SAFETY: forwarded.
    recorded(fa, unsafe { sys::spawn_addclosefrom_np(fa, from) }, Some(Op::CloseFrom(from)))
}

/// libc's `posix_spawn_file_actions_addchdir_np` (changes no fd; recorded so that the hook can
/// rebuild the object).
pub unsafe fn posix_spawn_file_actions_addchdir_np(fa: *mut libc::posix_spawn_file_actions_t, path: *const libc::c_char) -> c_int {
    // SAFETY: forwarded.
    let rc = unsafe { sys::spawn_addchdir_np(fa, path) };
    // SAFETY: libc accepted `path` as a valid C string.
    recorded(fa, rc, (rc == 0).then(|| Op::Chdir(unsafe { std::ffi::CStr::from_ptr(path) }.into())))
}

/// libc's `posix_spawn_file_actions_addfchdir_np` (changes no fd; recorded).
pub unsafe fn posix_spawn_file_actions_addfchdir_np(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int) -> c_int {
    // SAFETY: forwarded.
    recorded(fa, unsafe { sys::spawn_addfchdir_np(fa, fd) }, Some(Op::Fchdir(fd)))
}

/// libc's `posix_spawn_file_actions_addtcsetpgrp_np` (glibc 2.35+; changes no fd; recorded).
pub unsafe fn posix_spawn_file_actions_addtcsetpgrp_np(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int) -> c_int {
    // SAFETY: forwarded.
    recorded(fa, unsafe { sys::spawn_addtcsetpgrp_np(fa, fd) }, Some(Op::Tcsetpgrp(fd)))
}

/// libc's `vfork`, run as `fork` (see [`spawn::vfork`]).
pub unsafe fn vfork() -> libc::pid_t {
    spawn::vfork()
}

/// Where the exported `vfork` (a tail jump, so that no frame of the hook's is on the shared
/// stack) goes: libc's `vfork` while this process tracks no connection (a `vfork` child's
/// calls would change this process's table), else `as_fork` (the address of the export that
/// calls [`vfork`]).
pub fn vfork_target(as_fork: usize) -> usize {
    let real = sys::vfork_address();
    if table::any_live() || real == 0 {
        as_fork
    } else {
        real
    }
}

/// libc's `system` (see [`spawn::system`]).
pub unsafe fn system(command: *const libc::c_char) -> c_int {
    // SAFETY: per system's contract.
    unsafe { spawn::system(command) }
}

/// libc's `popen` (see [`spawn::popen`]).
pub unsafe fn popen(command: *const libc::c_char, mode: *const libc::c_char) -> *mut libc::FILE {
    // SAFETY: per popen's contract.
    unsafe { spawn::popen(command, mode) }
}

/// libc's `pclose` (see [`spawn::pclose`]).
pub unsafe fn pclose(stream: *mut libc::FILE) -> c_int {
    // SAFETY: per pclose's contract.
    unsafe { spawn::pclose(stream) }
}

/// libc's `close_range` (glibc 2.34+; the system call itself, so that the hook also loads with
/// an older libc): see [`closing::close_range`].
pub unsafe fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    closing::close_range(first, last, flags)
}

/// libc's `closefrom` (glibc 2.34+): see [`closing::closefrom`].
pub unsafe fn closefrom(low: c_int) {
    closing::closefrom(low)
}
