//! Bad input on a swapped connection gets the kernel's answer (issue 13): the same calls, with
//! bad pointers and counts, are made on a plain socket pair through libc and on a swapped pair
//! through the hook, and the two transcripts (return value and errno of each call) must match.
//! The plain pair is the reference: nothing here says what the kernel answers.

use libc::{c_int, c_void, iovec, msghdr, sockaddr, socklen_t, ssize_t};
use tssx_hook::calls;

mod support;

/// The calls a scenario makes: libc's (plain) or the hook's (swapped).
trait Api {
    unsafe fn read(&self, fd: c_int, buf: *mut c_void, n: usize) -> ssize_t;
    unsafe fn write(&self, fd: c_int, buf: *const c_void, n: usize) -> ssize_t;
    unsafe fn recv(&self, fd: c_int, buf: *mut c_void, n: usize, flags: c_int) -> ssize_t;
    unsafe fn send(&self, fd: c_int, buf: *const c_void, n: usize, flags: c_int) -> ssize_t;
    unsafe fn readv(&self, fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    unsafe fn writev(&self, fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    unsafe fn sendto(&self, fd: c_int, buf: *const c_void, n: usize, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    unsafe fn recvfrom(&self, fd: c_int, buf: *mut c_void, n: usize, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    unsafe fn sendmsg(&self, fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    unsafe fn recvmsg(&self, fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    unsafe fn ioctl(&self, fd: c_int, req: libc::c_ulong, arg: *mut c_void) -> c_int;
    unsafe fn shutdown(&self, fd: c_int, how: c_int) -> c_int;
    unsafe fn epoll_ctl(&self, epfd: c_int, op: c_int, fd: c_int, event: *mut libc::epoll_event) -> c_int;
    unsafe fn ppoll(&self, fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec) -> c_int;
    unsafe fn select(&self, n: c_int, r: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int;
    unsafe fn epoll_pwait2(&self, epfd: c_int, events: *mut libc::epoll_event, max: c_int, ts: *const libc::timespec) -> c_int;
}

struct Plain;
struct Hooked;

macro_rules! api {
    ($ty:ty, $m:ident) => {
        impl Api for $ty {
            unsafe fn read(&self, fd: c_int, buf: *mut c_void, n: usize) -> ssize_t {
                unsafe { $m::read(fd, buf, n) }
            }
            unsafe fn write(&self, fd: c_int, buf: *const c_void, n: usize) -> ssize_t {
                unsafe { $m::write(fd, buf, n) }
            }
            unsafe fn recv(&self, fd: c_int, buf: *mut c_void, n: usize, flags: c_int) -> ssize_t {
                unsafe { $m::recv(fd, buf, n, flags) }
            }
            unsafe fn send(&self, fd: c_int, buf: *const c_void, n: usize, flags: c_int) -> ssize_t {
                unsafe { $m::send(fd, buf, n, flags) }
            }
            unsafe fn readv(&self, fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
                unsafe { $m::readv(fd, iov, cnt) }
            }
            unsafe fn writev(&self, fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
                unsafe { $m::writev(fd, iov, cnt) }
            }
            unsafe fn sendto(
                &self,
                fd: c_int,
                buf: *const c_void,
                n: usize,
                flags: c_int,
                addr: *const sockaddr,
                len: socklen_t,
            ) -> ssize_t {
                unsafe { $m::sendto(fd, buf, n, flags, addr, len) }
            }
            unsafe fn recvfrom(
                &self,
                fd: c_int,
                buf: *mut c_void,
                n: usize,
                flags: c_int,
                addr: *mut sockaddr,
                len: *mut socklen_t,
            ) -> ssize_t {
                unsafe { $m::recvfrom(fd, buf, n, flags, addr, len) }
            }
            unsafe fn sendmsg(&self, fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
                unsafe { $m::sendmsg(fd, msg, flags) }
            }
            unsafe fn recvmsg(&self, fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
                unsafe { $m::recvmsg(fd, msg, flags) }
            }
            unsafe fn ioctl(&self, fd: c_int, req: libc::c_ulong, arg: *mut c_void) -> c_int {
                unsafe { $m::ioctl(fd, req, arg) }
            }
            unsafe fn shutdown(&self, fd: c_int, how: c_int) -> c_int {
                unsafe { $m::shutdown(fd, how) }
            }
            unsafe fn epoll_ctl(&self, epfd: c_int, op: c_int, fd: c_int, event: *mut libc::epoll_event) -> c_int {
                unsafe { $m::epoll_ctl(epfd, op, fd, event) }
            }
            unsafe fn ppoll(&self, fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec) -> c_int {
                unsafe { $m::ppoll(fds, n, ts, std::ptr::null()) }
            }
            unsafe fn select(&self, n: c_int, r: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int {
                unsafe { $m::select(n, r, std::ptr::null_mut(), std::ptr::null_mut(), tv) }
            }
            unsafe fn epoll_pwait2(&self, epfd: c_int, events: *mut libc::epoll_event, max: c_int, ts: *const libc::timespec) -> c_int {
                unsafe { $m::epoll_pwait2(epfd, events, max, ts, std::ptr::null()) }
            }
        }
    };
}

/// libc's functions, and `epoll_pwait2` as the system call (not in every libc crate).
mod plain_calls {
    pub use libc::*;

    /// The `epoll_pwait2` system call (the kernel's sigset is 8 bytes on x86-64).
    pub unsafe fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, max: c_int, ts: *const timespec, mask: *const sigset_t) -> c_int {
        // SAFETY: the caller's arguments, forwarded.
        unsafe { syscall(SYS_epoll_pwait2, epfd, events, max, ts, mask, 8usize) as c_int }
    }
}

api!(Plain, plain_calls);
api!(Hooked, calls);

fn plain_pair() -> (c_int, c_int) {
    let mut fds = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }, 0);
    (fds[0], fds[1])
}

fn swapped_pair() -> (c_int, c_int) {
    let (a, b) = plain_pair();
    support::install_swapped([a, b], 4096);
    (a, b)
}

fn errno_name(e: c_int) -> String {
    match e {
        libc::EFAULT => "EFAULT".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::EISCONN => "EISCONN".into(),
        libc::EMSGSIZE => "EMSGSIZE".into(),
        libc::EPIPE => "EPIPE".into(),
        libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
        e => format!("errno {e}"),
    }
}

/// The transcript line of a call's result.
fn line(what: &str, rc: isize) -> String {
    if rc < 0 {
        format!("{what}: -1 {}", errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)))
    } else {
        format!("{what}: {rc}")
    }
}

/// The bad-input scenario on `(a, b)` through `api`.
fn scenario(api: &dyn Api, a: c_int, b: c_int) -> Vec<String> {
    let mut out = Vec::new();
    let one = std::ptr::without_provenance_mut::<c_void>(1); // (void*)1
    let null = std::ptr::null_mut::<c_void>();
    let mut buf = [0u8; 64];
    let dw = libc::MSG_DONTWAIT;
    // SAFETY (whole scenario): bad pointers handed to the calls on purpose; every good pointer
    // is a live local.
    unsafe {
        // Nothing to read yet: the bad buffer is not looked at.
        out.push(line("recv NULL, empty", api.recv(a, null, 16, dw)));
        out.push(line("recv (void*)1, empty", api.recv(a, one, 16, dw)));
        out.push(line("write", api.write(b, b"hello".as_ptr().cast(), 5)));
        out.push(line("read NULL", api.read(a, null, 16)));
        out.push(line("read (void*)1", api.read(a, one, 16)));
        out.push(line("recv NULL peek", api.recv(a, null, 16, libc::MSG_PEEK)));
        out.push(line("read NULL, 0 bytes", api.read(a, null, 0)));
        let good = iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 2 };
        let iovs = [good, iovec { iov_base: null, iov_len: 8 }];
        out.push(line("readv -1", api.readv(a, iovs.as_ptr(), -1)));
        out.push(line("readv 1025", api.readv(a, iovs.as_ptr(), 1025)));
        out.push(line("readv NULL array", api.readv(a, std::ptr::null(), 1)));
        out.push(line("readv 0", api.readv(a, std::ptr::null(), 0)));
        out.push(line("readv good + NULL", api.readv(a, iovs.as_ptr(), 2)));
        let neg = [good, iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: usize::MAX }];
        out.push(line("readv negative length", api.readv(a, neg.as_ptr(), 2)));
        out.push(line("recvmsg NULL", api.recvmsg(a, std::ptr::null_mut(), 0)));
        // FIONREAD into a misaligned int: works (the kernel accepts any alignment).
        let mut words = [0u64; 2];
        let odd = words.as_mut_ptr().cast::<u8>().add(1);
        let rc = api.ioctl(a, libc::FIONREAD, odd.cast());
        out.push(format!("{} value {}", line("ioctl FIONREAD misaligned", rc as isize), odd.cast::<c_int>().read_unaligned()));
        out.push(line("ioctl FIONREAD NULL", api.ioctl(a, libc::FIONREAD, null) as isize));
        out.push(line("ioctl FIONREAD (void*)1", api.ioctl(a, libc::FIONREAD, one) as isize));
        // The bytes are all still there.
        out.push(line("read", api.read(a, buf.as_mut_ptr().cast(), 64)));
        out.push(format!("data {:?}", std::str::from_utf8(&buf[..5]).unwrap_or("?")));
        // Writes from bad buffers send nothing.
        out.push(line("write NULL", api.write(a, null, 4)));
        out.push(line("write (void*)1", api.write(a, one, 4)));
        out.push(line("write NULL, 0 bytes", api.write(a, null, 0)));
        let wiov = [iovec { iov_base: b"ab".as_ptr() as *mut c_void, iov_len: 2 }, iovec { iov_base: one, iov_len: 3 }];
        out.push(line("writev -1", api.writev(a, wiov.as_ptr(), -1)));
        out.push(line("writev 1025", api.writev(a, wiov.as_ptr(), 1025)));
        out.push(line("writev good + (void*)1", api.writev(a, wiov.as_ptr(), 2)));
        out.push(line("sendmsg NULL", api.sendmsg(a, std::ptr::null(), 0)));
        // A destination address on a connected stream socket.
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as _;
        let alen = std::mem::size_of::<libc::sockaddr_un>() as socklen_t;
        let ap = (&addr as *const libc::sockaddr_un).cast::<sockaddr>();
        out.push(line("sendto with address", api.sendto(a, b"x".as_ptr().cast(), 1, 0, ap, alen)));
        out.push(line("sendto address length 0", api.sendto(a, b"y".as_ptr().cast(), 1, 0, ap, 0)));
        out.push(line("sendto address length 200", api.sendto(a, b"x".as_ptr().cast(), 1, 0, ap, 200)));
        out.push(line("sendto address (void*)1", api.sendto(a, b"x".as_ptr().cast(), 1, 0, one.cast(), 16)));
        let mut siov = iovec { iov_base: b"z".as_ptr() as *mut c_void, iov_len: 1 };
        let mut msg: msghdr = std::mem::zeroed();
        msg.msg_iov = &mut siov;
        msg.msg_iovlen = 1025;
        out.push(line("sendmsg iovlen 1025", api.sendmsg(a, &msg, 0)));
        msg.msg_iovlen = 1;
        msg.msg_name = (&mut addr as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = alen;
        out.push(line("sendmsg with address", api.sendmsg(a, &msg, 0)));
        msg.msg_name = null;
        out.push(line("sendmsg", api.sendmsg(a, &msg, 0)));
        // What arrived: "y" and "z" only.
        out.push(line("peer read", api.recv(b, buf.as_mut_ptr().cast(), 64, dw)));
        out.push(format!("data {:?}", std::str::from_utf8(&buf[..2]).unwrap_or("?")));
        out.push(line("peer read again", api.recv(b, buf.as_mut_ptr().cast(), 64, dw)));
        // recvfrom with an unreadable length pointer: EFAULT after the data was taken.
        out.push(line("write", api.write(b, b"q".as_ptr().cast(), 1)));
        let mut from: libc::sockaddr_un = std::mem::zeroed();
        out.push(line(
            "recvfrom bad length",
            api.recvfrom(a, buf.as_mut_ptr().cast(), 64, 0, (&mut from as *mut libc::sockaddr_un).cast(), one.cast()),
        ));
        out.push(line("recv after", api.recv(a, buf.as_mut_ptr().cast(), 64, dw)));
        // Shut down: EPIPE comes first.
        out.push(line("shutdown", api.shutdown(a, libc::SHUT_WR) as isize));
        out.push(line("send NULL after SHUT_WR", api.send(a, null, 4, libc::MSG_NOSIGNAL)));
        out.push(line("peer recv NULL at EOF", api.recv(b, null, 4, 0)));
    }
    out
}

#[test]
fn bad_input_gets_the_kernels_answers() {
    let (a, b) = plain_pair();
    let plain = scenario(&Plain, a, b);
    let (c, d) = swapped_pair();
    let swapped = scenario(&Hooked, c, d);
    for (p, s) in plain.iter().zip(&swapped) {
        println!("{p:40} | {s}");
    }
    assert_eq!(plain, swapped);
}

/// Two pages whose second is PROT_NONE (`unmap`: unmapped), the first filled: the address of
/// the last `good` bytes before the bad page. Mapped far below where the kernel places mappings
/// on its own (top-down from under the stack), so that no other mapping (a segment of the test
/// running beside) ever lands in an unmapped page of the scenario.
fn before_bad_page(good: usize, unmap: bool) -> *mut u8 {
    const PAGE: usize = 4096;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0x5f00_0000_0000);
    let want = NEXT.fetch_add(16 * PAGE, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: a fresh anonymous mapping where nothing is mapped (MAP_FIXED_NOREPLACE); only
    // its own pages are changed.
    unsafe {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
        let p = libc::mmap(want as *mut c_void, 2 * PAGE, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0);
        assert_eq!(p as usize, want);
        let p = p.cast::<u8>();
        std::ptr::write_bytes(p, b'p', PAGE);
        let second = p.add(PAGE).cast::<c_void>();
        assert_eq!(if unmap { libc::munmap(second, PAGE) } else { libc::mprotect(second, PAGE, libc::PROT_NONE) }, 0);
        p.add(PAGE - good)
    }
}

/// Bad pages in the middle of the address space: buffers that run into a PROT_NONE or unmapped
/// page with more bytes to move than the good part holds, buffers wholly in such a page or a
/// read-only one, an iovec array and a msghdr in an unmapped page. Then what the peer received.
fn bad_pages(api: &dyn Api, a: c_int, b: c_int) -> Vec<String> {
    let mut out = Vec::new();
    let tail = before_bad_page(100, false).cast::<c_void>();
    let gap = before_bad_page(100, true).cast::<c_void>();
    let hole = before_bad_page(0, true).cast::<c_void>(); // wholly unmapped
    let mut buf = [0u8; 2048];
    let dw = libc::MSG_DONTWAIT;
    let payload: Vec<u8> = (0..1000u32).map(|i| b'A' + (i % 26) as u8).collect();
    // SAFETY (whole scenario): bad pointers handed to the calls on purpose; every good pointer
    // is a live local or the good part of a mapping.
    unsafe {
        out.push(line("write 1000", api.write(b, payload.as_ptr().cast(), 1000)));
        out.push(line("read, PROT_NONE after 100", api.read(a, tail, 1000)));
        out.push(line("read, unmapped after 100", api.read(a, gap, 1000)));
        out.push(line("recv MSG_PEEK, PROT_NONE after 100", api.recv(a, tail, 1000, libc::MSG_PEEK)));
        out.push(line("recv MSG_WAITALL, unmapped after 100", api.recv(a, gap, 1000, libc::MSG_WAITALL)));
        let iov = [iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 10 }, iovec { iov_base: tail, iov_len: 990 }];
        out.push(line("readv 10 good + PROT_NONE after 100", api.readv(a, iov.as_ptr(), 2)));
        let mut m: msghdr = std::mem::zeroed();
        m.msg_iov = iov.as_ptr().cast_mut();
        m.msg_iovlen = 2;
        out.push(line("recvmsg, the same", api.recvmsg(a, &mut m, 0)));
        out.push(line("recvmsg MSG_PEEK, the same", api.recvmsg(a, &mut m, libc::MSG_PEEK)));
        out.push(line("read into an unmapped page", api.read(a, hole, 10)));
        out.push(line("readv, the array in an unmapped page", api.readv(a, hole.cast(), 1)));
        out.push(line("recvmsg, the msghdr in an unmapped page", api.recvmsg(a, hole.cast(), 0)));
        out.push(line("read the good 100", api.read(a, tail, 100)));
        out.push(line("read the rest", api.read(a, buf.as_mut_ptr().cast(), 2048)));
        out.push(format!("data ok {}", buf[..900] == payload[100..]));
        // Writes: nothing of a faulting write is sent.
        out.push(line("write, PROT_NONE after 100", api.write(a, tail, 1000)));
        out.push(line("send, unmapped after 100", api.send(a, gap, 1000, 0)));
        let wiov = [iovec { iov_base: b"ab".as_ptr() as *mut c_void, iov_len: 2 }, iovec { iov_base: tail, iov_len: 1000 }];
        out.push(line("writev \"ab\" + PROT_NONE after 100", api.writev(a, wiov.as_ptr(), 2)));
        let mut wm: msghdr = std::mem::zeroed();
        wm.msg_iov = wiov.as_ptr().cast_mut();
        wm.msg_iovlen = 2;
        out.push(line("sendmsg, the same", api.sendmsg(a, &wm, 0)));
        out.push(line("write from an unmapped page", api.write(a, hole, 10)));
        out.push(line("writev, the array in an unmapped page", api.writev(a, hole.cast(), 1)));
        out.push(line("sendmsg, the msghdr in an unmapped page", api.sendmsg(a, hole.cast(), 0)));
        out.push(line("peer read", api.recv(b, buf.as_mut_ptr().cast(), 2048, dw)));
        // The connection keeps working.
        out.push(line("write the good 100", api.write(a, tail, 100)));
        out.push(line("peer read", api.recv(b, buf.as_mut_ptr().cast(), 2048, dw)));
        out.push(format!("data ok {}", buf[..100] == payload[..100]));
        // epoll_ctl reads the event first (ADD, MOD), or never (DEL).
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let one = std::ptr::without_provenance_mut::<libc::epoll_event>(1);
        out.push(line("epoll_ctl ADD, the event in an unmapped page", api.epoll_ctl(ep, libc::EPOLL_CTL_ADD, a, hole.cast()) as isize));
        out.push(line("epoll_ctl ADD, the event at (void*)1", api.epoll_ctl(ep, libc::EPOLL_CTL_ADD, a, one) as isize));
        out.push(line("epoll_ctl DEL, the event in an unmapped page", api.epoll_ctl(ep, libc::EPOLL_CTL_DEL, a, hole.cast()) as isize));
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 7 };
        out.push(line("epoll_ctl ADD", api.epoll_ctl(ep, libc::EPOLL_CTL_ADD, a, &mut ev) as isize));
        out.push(line("epoll_ctl MOD, the event in an unmapped page", api.epoll_ctl(ep, libc::EPOLL_CTL_MOD, a, hole.cast()) as isize));
        out.push(line(
            "epoll_ctl ADD again, the event in an unmapped page",
            api.epoll_ctl(ep, libc::EPOLL_CTL_ADD, a, hole.cast()) as isize,
        ));
        out.push(line("epoll_ctl DEL, the event in an unmapped page", api.epoll_ctl(ep, libc::EPOLL_CTL_DEL, a, hole.cast()) as isize));
        // A timeout that cannot be read, or is not a valid timespec: the kernel's answer, at
        // once (on an instance with a swapped interest, and a ppoll of a swapped fd).
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 7 };
        out.push(line("epoll_ctl ADD", api.epoll_ctl(ep, libc::EPOLL_CTL_ADD, a, &mut ev) as isize));
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        let mut pfd = [libc::pollfd { fd: a, events: libc::POLLIN, revents: 0 }];
        let bad = [
            libc::timespec { tv_sec: 0, tv_nsec: 1_000_000_000 },
            libc::timespec { tv_sec: -1, tv_nsec: 0 },
            libc::timespec { tv_sec: 0, tv_nsec: -1 },
        ];
        for (what, ts) in [("in an unmapped page", hole.cast_const().cast()), ("at (void*)1", std::ptr::without_provenance(1))]
            .into_iter()
            .chain(bad.iter().map(|t| ("not valid", t as *const libc::timespec)))
        {
            out.push(line(&format!("epoll_pwait2, the timeout {what}"), api.epoll_pwait2(ep, events.as_mut_ptr(), 4, ts) as isize));
            if what == "not valid" {
                // (glibc's own `ppoll` copies a timeout it is given, before the system call:
                // one it cannot read is a SIGSEGV in libc, with or without the hook.)
                out.push(line(&format!("ppoll, the timeout {what}"), api.ppoll(pfd.as_mut_ptr(), 1, ts) as isize));
            }
        }
        // (A byte to read, so that a valid timeout ends at once.)
        out.push(line("write 1", api.write(a, b"x".as_ptr().cast(), 1)));
        for tv in [
            libc::timeval { tv_sec: -1, tv_usec: 0 },
            libc::timeval { tv_sec: 0, tv_usec: -1 },
            libc::timeval { tv_sec: 0, tv_usec: 1_500_000 },
        ] {
            // (The last is valid: the microseconds carry into the seconds.)
            let mut set: libc::fd_set = std::mem::zeroed();
            libc::FD_SET(b, &mut set);
            let mut tv = tv;
            out.push(line(
                &format!("select, the timeout {{{}, {}}}", tv.tv_sec, tv.tv_usec),
                api.select(b + 1, &mut set, &mut tv) as isize,
            ));
        }
        out.push(line("peer read", api.recv(b, buf.as_mut_ptr().cast(), 2048, dw)));
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        out.push(line("epoll_pwait2, a zero timeout", api.epoll_pwait2(ep, events.as_mut_ptr(), 4, &zero) as isize));
        out.push(line("ppoll, a zero timeout", api.ppoll(pfd.as_mut_ptr(), 1, &zero) as isize));
        libc::close(ep);
    }
    out
}

#[test]
fn bad_pages_anywhere_get_the_kernels_answers() {
    let (a, b) = plain_pair();
    let plain = bad_pages(&Plain, a, b);
    let (c, d) = swapped_pair();
    let swapped = bad_pages(&Hooked, c, d);
    for (p, s) in plain.iter().zip(&swapped) {
        println!("{p:45} | {s}");
    }
    assert_eq!(plain, swapped);
}
