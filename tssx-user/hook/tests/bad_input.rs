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
        }
    };
}

api!(Plain, libc);
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
