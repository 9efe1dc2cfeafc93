//! Calls that touch the socket in ways beyond plain reads and writes (issue 13, "coverage"):
//! socket timeouts (SO_SNDTIMEO for writes, SO_RCVTIMEO for reads), MSG_OOB and SIOCATMARK,
//! SO_PEEK_OFF, splice, sendfile, tee and vmsplice. Each sequence runs on a plain socket pair
//! (libc, the reference) and on a swapped one (the hook's entry points on a pair installed in
//! the table), and the two transcripts must be equal.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use libc::{c_int, c_void};
use tssx_hook::{calls, table};

mod support;
use support::Pair;

/// Which functions a sequence calls: libc's (the plain reference) or the hook's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Via {
    Libc,
    Hook,
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_errno(e: c_int) {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// "rc" or "-1 E<errno>".
fn rc(n: isize) -> String {
    if n < 0 {
        format!("-1 E{}", errno())
    } else {
        n.to_string()
    }
}

/// "rc \"data\"" or "-1 E<errno>".
fn data(n: isize, buf: &[u8]) -> String {
    if n < 0 {
        rc(n)
    } else {
        format!("{n} {:?}", String::from_utf8_lossy(&buf[..n as usize]))
    }
}

fn write(via: Via, fd: c_int, bytes: &[u8]) -> isize {
    set_errno(0);
    // SAFETY: a live buffer of the stated length.
    unsafe {
        match via {
            Via::Libc => libc::write(fd, bytes.as_ptr().cast(), bytes.len()),
            Via::Hook => calls::write(fd, bytes.as_ptr().cast(), bytes.len()),
        }
    }
}

fn send(via: Via, fd: c_int, bytes: &[u8], flags: c_int) -> isize {
    set_errno(0);
    // SAFETY: a live buffer of the stated length.
    unsafe {
        match via {
            Via::Libc => libc::send(fd, bytes.as_ptr().cast(), bytes.len(), flags),
            Via::Hook => calls::send(fd, bytes.as_ptr().cast(), bytes.len(), flags),
        }
    }
}

fn recv(via: Via, fd: c_int, buf: &mut [u8], flags: c_int) -> isize {
    set_errno(0);
    // SAFETY: a live buffer of the stated length.
    unsafe {
        match via {
            Via::Libc => libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags),
            Via::Hook => calls::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags),
        }
    }
}

fn read(via: Via, fd: c_int, buf: &mut [u8]) -> isize {
    set_errno(0);
    // SAFETY: a live buffer of the stated length.
    unsafe {
        match via {
            Via::Libc => libc::read(fd, buf.as_mut_ptr().cast(), buf.len()),
            Via::Hook => calls::read(fd, buf.as_mut_ptr().cast(), buf.len()),
        }
    }
}

fn ioctl_int(via: Via, fd: c_int, request: libc::c_ulong) -> String {
    let mut v: c_int = -7;
    set_errno(0);
    // SAFETY: the requests used take a pointer to an int.
    let n = unsafe {
        match via {
            Via::Libc => libc::ioctl(fd, request, &mut v as *mut c_int),
            Via::Hook => calls::ioctl(fd, request, (&mut v as *mut c_int).cast::<c_void>()),
        }
    };
    if n < 0 {
        rc(n as isize)
    } else {
        v.to_string()
    }
}

fn set_nonblock(via: Via, fd: c_int, on: bool) {
    // SAFETY: plain fcntl calls.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        let n = match via {
            Via::Libc => libc::fcntl(fd, libc::F_SETFL, flags),
            Via::Hook => calls::fcntl(fd, libc::F_SETFL, flags as libc::c_ulong),
        };
        assert_eq!(n, 0);
    }
}

fn set_timeout(fd: c_int, name: c_int, ms: i64) {
    let tv = libc::timeval { tv_sec: (ms / 1000) as libc::time_t, tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t };
    // SAFETY: a live timeval of the stated size.
    let n =
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, name, (&tv as *const libc::timeval).cast(), size_of::<libc::timeval>() as u32) };
    assert_eq!(n, 0);
}

/// Writes (non-blocking) until EAGAIN: the socket (or ring) is full. Returns the bytes written.
fn fill(via: Via, fd: c_int) -> usize {
    set_nonblock(via, fd, true);
    let chunk = [b'x'; 4096];
    let mut total = 0;
    loop {
        let n = write(via, fd, &chunk);
        if n < 0 {
            assert_eq!(errno(), libc::EAGAIN);
            break;
        }
        total += n as usize;
    }
    set_nonblock(via, fd, false);
    total
}

/// A plain socket pair, not in the table.
fn plain_pair() -> (OwnedFd, OwnedFd) {
    let fds = support::socketpair(0);
    // SAFETY: new fds.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn swapped_pair(ring: usize) -> Pair {
    let fds = support::socketpair(0);
    support::install_swapped(fds, ring);
    Pair { client: fds[0], server: fds[1] }
}

/// Runs `sequence(via, client, server)` on a plain pair and on a swapped pair (rings of
/// `ring` bytes); the transcripts must be equal. Returns the plain one.
fn compare(ring: usize, sequence: impl Fn(Via, c_int, c_int) -> Vec<String>) -> Vec<String> {
    let (c, s) = plain_pair();
    let plain = sequence(Via::Libc, c.as_raw_fd(), s.as_raw_fd());
    drop((c, s));
    let p = swapped_pair(ring);
    let swapped = sequence(Via::Hook, p.client, p.server);
    assert_eq!(plain, swapped, "plain (left) and swapped (right) differ");
    plain
}

// ---- SO_SNDTIMEO / SO_RCVTIMEO -------------------------------------------------------------

/// A write blocked on a full buffer: SO_RCVTIMEO does not end it, SO_SNDTIMEO does (EAGAIN, or
/// the partial count when some bytes went); a read on an empty one ends after SO_RCVTIMEO.
fn timeouts(via: Via, client: c_int, server: c_int) -> Vec<String> {
    let mut t = Vec::new();
    let filled = fill(via, client);
    assert!(filled > 0);
    // Only SO_RCVTIMEO: the blocked write must wait until the reader makes room.
    set_timeout(client, libc::SO_RCVTIMEO, 20);
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < 100 {
            let n = read(via, server, &mut buf);
            assert!(n > 0);
            got += n as usize;
        }
        got
    });
    let start = Instant::now();
    let n = write(via, client, &[b'y'; 100]);
    t.push(format!(
        "blocked write with only SO_RCVTIMEO -> {} (waited for the reader: {})",
        rc(n),
        start.elapsed() >= Duration::from_millis(100)
    ));
    let drained = reader.join().unwrap();
    // Drain the rest so that the next fill starts from empty.
    set_nonblock(via, server, true);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = drained;
    loop {
        let n = read(via, server, &mut buf);
        if n <= 0 {
            break;
        }
        total += n as usize;
    }
    set_nonblock(via, server, false);
    t.push(format!("all bytes arrived: {}", total == filled + 100));
    set_timeout(client, libc::SO_RCVTIMEO, 0);

    // SO_SNDTIMEO on a full buffer: EAGAIN after the timeout, nothing sent.
    fill(via, client);
    set_timeout(client, libc::SO_SNDTIMEO, 50);
    let start = Instant::now();
    let n = write(via, client, b"z");
    t.push(format!(
        "write on a full buffer with SO_SNDTIMEO -> {} (after the timeout: {})",
        rc(n),
        start.elapsed() >= Duration::from_millis(45)
    ));
    // Room for part of a large write (the buffer emptied): the partial count.
    set_nonblock(via, server, true);
    while read(via, server, &mut buf) > 0 {}
    set_nonblock(via, server, false);
    let big = vec![b'q'; 8 << 20];
    let n = write(via, client, &big);
    t.push(format!("write larger than the buffer with SO_SNDTIMEO -> partial: {}", n > 0 && (n as usize) < big.len()));
    set_timeout(client, libc::SO_SNDTIMEO, 0);

    // SO_RCVTIMEO on an empty buffer (the other direction): EAGAIN after it; SO_SNDTIMEO alone
    // does not end a read (the writer below answers after 100 ms).
    set_timeout(client, libc::SO_RCVTIMEO, 30);
    let start = Instant::now();
    let n = read(via, client, &mut buf[..10]);
    t.push(format!(
        "read on an empty buffer with SO_RCVTIMEO -> {} (after the timeout: {})",
        rc(n),
        start.elapsed() >= Duration::from_millis(25)
    ));
    set_timeout(client, libc::SO_RCVTIMEO, 0);
    set_timeout(client, libc::SO_SNDTIMEO, 20);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        write(via, server, b"late")
    });
    let n = read(via, client, &mut buf[..10]);
    t.push(format!("read with only SO_SNDTIMEO -> {}", data(n, &buf)));
    assert_eq!(writer.join().unwrap(), 4);
    t
}

#[test]
fn writes_honour_sndtimeo_and_reads_rcvtimeo() {
    let t = compare(64 * 1024, timeouts);
    assert!(t[0].starts_with("blocked write with only SO_RCVTIMEO -> 100 (waited for the reader: true)"), "{t:?}");
}

// ---- MSG_OOB and SIOCATMARK ------------------------------------------------------------------

const SIOCATMARK: libc::c_ulong = 0x8905;

/// A new epoll instance with `fd` registered (level-triggered) for `events`.
fn epoll_with(via: Via, fd: c_int, events: u32) -> OwnedFd {
    // SAFETY: plain system calls; a live event.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(ep >= 0);
        let mut ev = libc::epoll_event { events, u64: fd as u64 };
        let n = match via {
            Via::Libc => libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev),
            Via::Hook => calls::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev),
        };
        assert_eq!(n, 0);
        OwnedFd::from_raw_fd(ep)
    }
}

/// `epoll_wait` with no wait: the events reported, in hex.
fn epoll_events(via: Via, ep: c_int) -> String {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: a live array of 4 events.
    let n = unsafe {
        match via {
            Via::Libc => libc::epoll_wait(ep, evs.as_mut_ptr(), 4, 0),
            Via::Hook => calls::epoll_wait(ep, evs.as_mut_ptr(), 4, 0),
        }
    };
    let shown: Vec<String> = evs[..n.max(0) as usize].iter().map(|e| format!("{:#x}", { e.events })).collect();
    format!("{n} {shown:?}")
}

/// `poll` on one fd with no wait: its revents, in hex.
fn poll_revents(via: Via, fd: c_int, events: i16) -> String {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one live pollfd.
    let n = unsafe {
        match via {
            Via::Libc => libc::poll(&mut p, 1, 0),
            Via::Hook => calls::poll(&mut p, 1, 0),
        }
    };
    format!("{n} {:#x}", p.revents)
}

/// Out-of-band bytes both ways, with SIOCATMARK before, at and after the mark, and the
/// in-band bytes around them (the kernel's reads stop at the mark).
fn out_of_band(via: Via, client: c_int, server: c_int) -> Vec<String> {
    let mut t = Vec::new();
    let mut buf = [0u8; 100];
    let ep = epoll_with(via, server, (libc::EPOLLIN | libc::EPOLLPRI) as u32);
    t.push(format!("recv MSG_OOB, none sent -> {}", data(recv(via, server, &mut buf, libc::MSG_OOB), &buf)));
    t.push(format!("SIOCATMARK, nothing queued -> {}", ioctl_int(via, server, SIOCATMARK)));
    t.push(format!("send ab -> {}", rc(send(via, client, b"ab", 0))));
    t.push(format!("SIOCATMARK, in-band bytes only -> {}", ioctl_int(via, server, SIOCATMARK)));
    t.push(format!("send c MSG_OOB -> {}", rc(send(via, client, b"c", libc::MSG_OOB))));
    t.push(format!("send de -> {}", rc(send(via, client, b"de", 0))));
    t.push(format!("poll POLLIN|POLLPRI -> {}", poll_revents(via, server, libc::POLLIN | libc::POLLPRI)));
    t.push(format!("epoll_wait EPOLLIN|EPOLLPRI -> {}", epoll_events(via, ep.as_raw_fd())));
    t.push(format!("SIOCATMARK before the mark -> {}", ioctl_int(via, server, SIOCATMARK)));
    t.push(format!("read 100 (stops at the mark) -> {}", data(read(via, server, &mut buf), &buf)));
    t.push(format!("SIOCATMARK at the mark -> {}", ioctl_int(via, server, SIOCATMARK)));
    t.push(format!("recv MSG_OOB|MSG_PEEK -> {}", data(recv(via, server, &mut buf, libc::MSG_OOB | libc::MSG_PEEK), &buf)));
    t.push(format!("recv MSG_OOB -> {}", data(recv(via, server, &mut buf, libc::MSG_OOB), &buf)));
    t.push(format!("SIOCATMARK after the out-of-band byte -> {}", ioctl_int(via, server, SIOCATMARK)));
    t.push(format!("recv MSG_OOB again -> {}", data(recv(via, server, &mut buf, libc::MSG_OOB), &buf)));
    t.push(format!("poll POLLIN|POLLPRI -> {}", poll_revents(via, server, libc::POLLIN | libc::POLLPRI)));
    t.push(format!("read 100 -> {}", data(read(via, server, &mut buf), &buf)));
    t.push(format!("FIONREAD -> {}", ioctl_int(via, server, libc::FIONREAD)));
    // The other way.
    t.push(format!("server send xy -> {}", rc(send(via, server, b"xy", 0))));
    t.push(format!("server send Q MSG_OOB -> {}", rc(send(via, server, b"Q", libc::MSG_OOB))));
    t.push(format!("client SIOCATMARK -> {}", ioctl_int(via, client, SIOCATMARK)));
    t.push(format!("client read 100 -> {}", data(read(via, client, &mut buf), &buf)));
    t.push(format!("client SIOCATMARK -> {}", ioctl_int(via, client, SIOCATMARK)));
    t.push(format!("client recv MSG_OOB -> {}", data(recv(via, client, &mut buf, libc::MSG_OOB), &buf)));
    t.push(format!("client recv MSG_DONTWAIT -> {}", data(recv(via, client, &mut buf, libc::MSG_DONTWAIT), &buf)));
    t
}

#[test]
fn msg_oob_and_siocatmark_as_the_kernel() {
    let t = compare(4096, out_of_band);
    assert!(t.contains(&"recv MSG_OOB -> 1 \"c\"".to_owned()), "{t:#?}");
}

// ---- splice, tee, vmsplice -------------------------------------------------------------------

fn pipe() -> [c_int; 2] {
    let mut fds = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    fds
}

fn close_raw(fd: c_int) {
    // SAFETY: a pipe end of the test.
    unsafe { libc::close(fd) };
}

fn splice(via: Via, fd_in: c_int, off_in: Option<&mut i64>, fd_out: c_int, off_out: Option<&mut i64>, len: usize, flags: u32) -> isize {
    let off_in = off_in.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    let off_out = off_out.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    set_errno(0);
    // SAFETY: live offsets or null.
    unsafe {
        match via {
            Via::Libc => libc::splice(fd_in, off_in, fd_out, off_out, len, flags),
            Via::Hook => calls::splice(fd_in, off_in, fd_out, off_out, len, flags),
        }
    }
}

/// What the pipe holds (non-destructively through FIONREAD, then read out).
fn drain_pipe(fd: c_int) -> String {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD into an int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    let mut buf = vec![0u8; n as usize];
    // SAFETY: a live buffer.
    let got = if n > 0 { unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } } else { 0 };
    format!("{:?}", String::from_utf8_lossy(&buf[..got.max(0) as usize]))
}

fn raw_write(fd: c_int, bytes: &[u8]) {
    // SAFETY: a live buffer.
    assert_eq!(unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) }, bytes.len() as isize);
}

/// splice both ways between a pipe and the socket, with bytes already in flight on the socket
/// (on the rings, when swapped) in both directions, and the kernel's errors.
fn splices(via: Via, client: c_int, server: c_int) -> Vec<String> {
    let mut t = Vec::new();
    let mut buf = [0u8; 100];
    let [pr, pw] = pipe();
    // In flight both ways before any splice.
    t.push(format!("client send early1 -> {}", rc(send(via, client, b"early1", 0))));
    t.push(format!("server send early2 -> {}", rc(send(via, server, b"early2", 0))));
    raw_write(pw, b"piped1");
    t.push(format!("splice pipe -> client 100 -> {}", rc(splice(via, pr, None, client, None, 100, 0))));
    t.push(format!("splice server -> pipe 100 -> {}", rc(splice(via, server, None, pw, None, 100, 0))));
    t.push(format!("  pipe holds {}", drain_pipe(pr)));
    t.push(format!("splice client -> pipe 3 -> {}", rc(splice(via, client, None, pw, None, 3, 0))));
    t.push(format!("  pipe holds {}", drain_pipe(pr)));
    t.push(format!("client recv rest -> {}", data(recv(via, client, &mut buf, 0), &buf)));
    raw_write(pw, b"abcdef");
    t.push(format!("splice pipe -> server 4 -> {}", rc(splice(via, pr, None, server, None, 4, libc::SPLICE_F_MORE))));
    t.push(format!("  pipe holds {}", drain_pipe(pr)));
    t.push(format!("client read -> {}", data(read(via, client, &mut buf), &buf)));
    // Empty sides.
    t.push(format!("splice empty pipe -> client NONBLOCK -> {}", rc(splice(via, pr, None, client, None, 10, libc::SPLICE_F_NONBLOCK))));
    t.push(format!("splice empty server -> pipe NONBLOCK -> {}", rc(splice(via, server, None, pw, None, 10, libc::SPLICE_F_NONBLOCK))));
    set_nonblock(via, server, true);
    t.push(format!("splice empty non-blocking server -> pipe -> {}", rc(splice(via, server, None, pw, None, 10, 0))));
    set_nonblock(via, server, false);
    // The kernel's errors, nothing moved.
    send(via, client, b"kept", 0);
    let mut off = 0i64;
    t.push(format!("splice server -> pipe, offset on the socket -> {}", rc(splice(via, server, Some(&mut off), pw, None, 10, 0))));
    t.push(format!("splice server -> pipe, offset on the pipe -> {}", rc(splice(via, server, None, pw, Some(&mut off), 10, 0))));
    t.push(format!("splice server -> pipe read end -> {}", rc(splice(via, server, None, pr, None, 10, 0))));
    t.push(format!("splice server -> pipe, bad flags -> {}", rc(splice(via, server, None, pw, None, 10, 0x100))));
    t.push(format!("splice server -> pipe, len 0 -> {}", rc(splice(via, server, None, pw, None, 0, 0))));
    t.push(format!("splice server -> client (no pipe) -> {}", rc(splice(via, server, None, client, None, 10, 0))));
    raw_write(pw, b"zz");
    t.push(format!("splice pipe -> server, offset on the socket -> {}", rc(splice(via, pr, None, server, Some(&mut off), 10, 0))));
    t.push(format!("splice pipe write end -> server -> {}", rc(splice(via, pw, None, server, None, 10, 0))));
    t.push(format!("  pipe holds {}", drain_pipe(pr)));
    t.push(format!("server read (the kept bytes) -> {}", data(read(via, server, &mut buf), &buf)));
    // tee and vmsplice take pipes only: the kernel refuses a socket (the hook never sees them).
    // SAFETY: plain system calls on live fds.
    unsafe {
        set_errno(0);
        t.push(format!("tee server -> pipe -> {}", rc(libc::tee(server, pw, 10, 0))));
        set_errno(0);
        t.push(format!("tee pipe -> server -> {}", rc(libc::tee(pr, server, 10, 0))));
        let iov = libc::iovec { iov_base: b"v".as_ptr() as *mut c_void, iov_len: 1 };
        set_errno(0);
        t.push(format!("vmsplice server -> {}", rc(libc::vmsplice(server, &iov, 1, 0))));
    }
    // A full socket, non-blocking: EAGAIN, the pipe keeps its bytes.
    fill(via, client);
    set_nonblock(via, client, true);
    raw_write(pw, b"stay");
    t.push(format!("splice pipe -> full non-blocking client -> {}", rc(splice(via, pr, None, client, None, 10, 0))));
    t.push(format!("  pipe holds {}", drain_pipe(pr)));
    set_nonblock(via, client, false);
    // EOF both ways.
    close_raw(pw);
    t.push(format!("splice empty pipe without writer -> client -> {}", rc(splice(via, pr, None, client, None, 10, 0))));
    // SAFETY: the hook's shutdown (or libc's) on our socket.
    unsafe {
        match via {
            Via::Libc => libc::shutdown(server, libc::SHUT_WR),
            Via::Hook => calls::shutdown(server, libc::SHUT_WR),
        }
    };
    let [pr2, pw2] = pipe();
    t.push(format!("splice client at EOF -> pipe -> {}", rc(splice(via, client, None, pw2, None, 10, 0))));
    close_raw(pr2);
    t.push(format!("splice server -> pipe without reader -> {}", rc(splice(via, server, None, pw2, None, 10, 0))));
    for fd in [pr, pw2] {
        close_raw(fd);
    }
    t
}

#[test]
fn splice_between_a_pipe_and_the_rings_as_the_kernel() {
    let t = compare(64 * 1024, splices);
    assert!(t.contains(&"  pipe holds \"early1piped1\"".to_owned()), "{t:#?}");
}

/// A bulk transfer through pipes and splice both ways (a writer thread), in order.
#[test]
fn bulk_splice_through_the_rings() {
    let p = swapped_pair(16 * 1024);
    let (client, server) = (p.client, p.server);
    const BULK: usize = 1 << 20;
    let writer = std::thread::spawn(move || {
        let [pr, pw] = pipe();
        let mut sent = 0usize;
        while sent < BULK {
            let chunk: Vec<u8> = (sent..sent + 4096).map(|i| (i % 251) as u8).collect();
            raw_write(pw, &chunk);
            let mut left = 4096;
            while left > 0 {
                let n = splice(Via::Hook, pr, None, client, None, left, libc::SPLICE_F_MORE);
                assert!(n > 0, "splice in: {}", rc(n));
                left -= n as usize;
            }
            sent += 4096;
        }
        close_raw(pr);
        close_raw(pw);
    });
    let [pr, pw] = pipe();
    // A pipe once used with splice (even a failed one) refuses non-blocking writes
    // (RWF_NOWAIT: EOPNOTSUPP); the hook must not depend on them.
    let mut off = 0i64;
    assert_eq!(splice(Via::Libc, server, Some(&mut off), pw, None, 10, 0), -1);
    let mut got = 0usize;
    let mut buf = vec![0u8; 65536];
    while got < BULK {
        let n = splice(Via::Hook, server, None, pw, None, BULK - got, 0);
        assert!(n > 0, "splice out: {}", rc(n));
        // SAFETY: a live buffer.
        let r = unsafe { libc::read(pr, buf.as_mut_ptr().cast(), n as usize) };
        assert_eq!(r, n);
        for (i, b) in buf[..r as usize].iter().enumerate() {
            assert_eq!(*b, ((got + i) % 251) as u8, "byte {}", got + i);
        }
        got += r as usize;
    }
    writer.join().unwrap();
    close_raw(pr);
    close_raw(pw);
}

// ---- sendfile --------------------------------------------------------------------------------

fn sendfile(via: Via, out: c_int, in_fd: c_int, off: Option<&mut i64>, count: usize) -> isize {
    let off = off.map_or(std::ptr::null_mut(), |o| o as *mut i64);
    set_errno(0);
    // SAFETY: a live offset or null.
    unsafe {
        match via {
            Via::Libc => libc::sendfile(out, in_fd, off, count),
            Via::Hook => calls::sendfile(out, in_fd, off, count),
        }
    }
}

fn position(fd: c_int) -> i64 {
    // SAFETY: no memory.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

fn open_file(path: &std::path::Path, flags: c_int) -> OwnedFd {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) };
    assert!(fd >= 0, "open {}", path.display());
    // SAFETY: a new fd.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// sendfile into the socket: with and without an offset, count 0, at and past EOF, from a
/// file opened write-only, a directory, a pipe, a socket, a bad fd, a negative offset.
fn sendfiles(via: Via, client: c_int, server: c_int) -> Vec<String> {
    let mut t = Vec::new();
    let mut buf = [0u8; 100];
    let dir = std::env::temp_dir().join(format!("tssx-kcalls-sendfile-{}-{via:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    std::fs::write(&path, b"0123456789").unwrap();
    let file = open_file(&path, libc::O_RDONLY);
    let f = file.as_raw_fd();
    let mut off = 2i64;
    t.push(format!(
        "sendfile offset 2 count 3 -> {} offset {off} position {}",
        rc(sendfile(via, client, f, Some(&mut off), 3)),
        position(f)
    ));
    t.push(format!("  server read -> {}", data(read(via, server, &mut buf), &buf)));
    t.push(format!("sendfile no offset count 4 -> {} position {}", rc(sendfile(via, client, f, None, 4)), position(f)));
    t.push(format!("  server read -> {}", data(read(via, server, &mut buf), &buf)));
    t.push(format!("sendfile no offset count 0 -> {} position {}", rc(sendfile(via, client, f, None, 0)), position(f)));
    let mut off = 5i64;
    t.push(format!("sendfile offset 5 count 0 -> {} offset {off}", rc(sendfile(via, client, f, Some(&mut off), 0))));
    t.push(format!("sendfile no offset count 100 (to EOF) -> {} position {}", rc(sendfile(via, client, f, None, 100)), position(f)));
    t.push(format!("  server read -> {}", data(read(via, server, &mut buf), &buf)));
    t.push(format!("sendfile no offset at EOF -> {} position {}", rc(sendfile(via, client, f, None, 100)), position(f)));
    let mut off = 10i64;
    t.push(format!("sendfile offset at EOF -> {} offset {off}", rc(sendfile(via, client, f, Some(&mut off), 100))));
    let mut off = 50i64;
    t.push(format!("sendfile offset past EOF -> {} offset {off}", rc(sendfile(via, client, f, Some(&mut off), 100))));
    let mut off = -1i64;
    t.push(format!("sendfile offset -1 -> {} offset {off}", rc(sendfile(via, client, f, Some(&mut off), 5))));
    let mut off = -1i64;
    t.push(format!("sendfile offset -1 count 0 -> {} offset {off}", rc(sendfile(via, client, f, Some(&mut off), 0))));
    let wronly = open_file(&path, libc::O_WRONLY);
    t.push(format!("sendfile from a write-only file -> {}", rc(sendfile(via, client, wronly.as_raw_fd(), None, 5))));
    let d = open_file(&dir, libc::O_RDONLY | libc::O_DIRECTORY);
    t.push(format!("sendfile from a directory -> {}", rc(sendfile(via, client, d.as_raw_fd(), None, 5))));
    t.push(format!("sendfile from a bad fd -> {}", rc(sendfile(via, client, 987_654, None, 5))));
    t.push(format!("sendfile count 0 from a directory -> {}", rc(sendfile(via, client, d.as_raw_fd(), None, 0))));
    t.push(format!("sendfile count 0 from a bad fd -> {}", rc(sendfile(via, client, 987_654, None, 0))));
    let [pr, pw] = pipe();
    raw_write(pw, b"piped");
    let mut off = 0i64;
    t.push(format!("sendfile from a pipe with an offset -> {}", rc(sendfile(via, client, pr, Some(&mut off), 5))));
    t.push(format!("sendfile from a pipe with an offset, count 0 -> {}", rc(sendfile(via, client, pr, Some(&mut off), 0))));
    t.push(format!("sendfile from a pipe -> {}", rc(sendfile(via, client, pr, None, 5))));
    t.push(format!("sendfile from a pipe, count 0 -> {}", rc(sendfile(via, client, pr, None, 0))));
    t.push(format!("sendfile from a pipe's write end -> {}", rc(sendfile(via, client, pw, None, 5))));
    close_raw(pr);
    close_raw(pw);
    t.push(format!("sendfile from the peer socket -> {}", rc(sendfile(via, client, server, None, 5))));
    t.push(format!("sendfile from the peer socket with an offset -> {}", rc(sendfile(via, client, server, Some(&mut off), 5))));
    t.push(format!("  server read MSG_DONTWAIT -> {}", data(recv(via, server, &mut buf, libc::MSG_DONTWAIT), &buf)));
    // Still on the rings (when swapped) after all of these: the bytes keep their order.
    t.push(format!("client send tail -> {}", rc(send(via, client, b"tail", 0))));
    t.push(format!("  server read -> {}", data(read(via, server, &mut buf), &buf)));
    let zero = open_file(std::path::Path::new("/dev/zero"), libc::O_RDONLY);
    t.push(format!("sendfile from /dev/zero count 5 -> {}", rc(sendfile(via, client, zero.as_raw_fd(), None, 5))));
    t.push(format!("  server read -> {}", data(read(via, server, &mut buf), &buf)));
    let null = open_file(std::path::Path::new("/dev/null"), libc::O_RDONLY);
    t.push(format!("sendfile from /dev/null count 5 -> {}", rc(sendfile(via, client, null.as_raw_fd(), None, 5))));
    // A full non-blocking socket: EAGAIN, the offset and the position unchanged.
    fill(via, client);
    set_nonblock(via, client, true);
    let mut off = 3i64;
    t.push(format!("sendfile into a full non-blocking socket -> {} offset {off}", rc(sendfile(via, client, f, Some(&mut off), 5))));
    // SAFETY: no memory.
    unsafe { libc::lseek(f, 1, libc::SEEK_SET) };
    t.push(format!("  without an offset -> {} position {}", rc(sendfile(via, client, f, None, 5)), position(f)));
    set_nonblock(via, client, false);
    drop((file, wronly, d, zero, null));
    let _ = std::fs::remove_dir_all(&dir);
    t
}

#[test]
fn sendfile_edge_cases_as_the_kernel() {
    let t = compare(4096, sendfiles);
    assert!(t[0].starts_with("sendfile offset 2 count 3 -> 3 offset 5 position 0"), "{t:#?}");
    // Still on the rings: none of the failed calls needed the real socket.
    let p = swapped_pair(4096);
    sendfiles(Via::Hook, p.client, p.server);
    assert_eq!(table::lookup(p.client).unwrap().phase(), tssx_hook::conn::Phase::Active);
}

// ---- SO_PEEK_OFF -----------------------------------------------------------------------------

fn set_peek_off(via: Via, fd: c_int, value: c_int, len: u32) -> String {
    set_errno(0);
    let p = (&value as *const c_int).cast::<c_void>();
    // SAFETY: a live int (`len` may be shorter, as a test of the kernel's check).
    let n = unsafe {
        match via {
            Via::Libc => libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, p, len),
            Via::Hook => calls::setsockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, p, len),
        }
    };
    rc(n as isize)
}

fn get_peek_off(via: Via, fd: c_int) -> String {
    let mut v: c_int = -7;
    let mut len = size_of::<c_int>() as u32;
    let p = (&mut v as *mut c_int).cast::<c_void>();
    set_errno(0);
    // SAFETY: a live int and its length.
    let n = unsafe {
        match via {
            Via::Libc => libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, p, &mut len),
            Via::Hook => calls::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, p, &mut len),
        }
    };
    if n < 0 {
        rc(n as isize)
    } else {
        format!("{v} (len {len})")
    }
}

/// SO_PEEK_OFF: peeks at the offset move it forward, reads move it back, -1 turns it off; a
/// blocking peek past the data waits for more; EOF before the offset.
fn peek_offsets(via: Via, client: c_int, server: c_int) -> Vec<String> {
    let mut t = Vec::new();
    let mut buf = [0u8; 100];
    let int = size_of::<c_int>() as u32;
    t.push(format!("get (default) -> {}", get_peek_off(via, server)));
    t.push(format!("client send abcdefghij -> {}", rc(send(via, client, b"abcdefghij", 0))));
    t.push(format!("set 0 -> {}", set_peek_off(via, server, 0, int)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t.push(format!("peek 3 -> {}", data(recv(via, server, &mut buf[..3], libc::MSG_PEEK), &buf)));
    t.push(format!("peek 3 -> {}", data(recv(via, server, &mut buf[..3], libc::MSG_PEEK), &buf)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t.push(format!("read 2 -> {}", data(read(via, server, &mut buf[..2]), &buf)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t.push(format!("peek 100 -> {}", data(recv(via, server, &mut buf, libc::MSG_PEEK), &buf)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t.push(format!("peek MSG_DONTWAIT past the data -> {}", data(recv(via, server, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT), &buf)));
    t.push(format!("set 2 -> {}", set_peek_off(via, server, 2, int)));
    t.push(format!("peek 3 -> {}", data(recv(via, server, &mut buf[..3], libc::MSG_PEEK), &buf)));
    t.push(format!("FIONREAD -> {}", ioctl_int(via, server, libc::FIONREAD)));
    t.push(format!("set -1 -> {}", set_peek_off(via, server, -1, int)));
    t.push(format!("peek 3 (off) -> {}", data(recv(via, server, &mut buf[..3], libc::MSG_PEEK), &buf)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t.push(format!("set 100 -> {}", set_peek_off(via, server, 100, int)));
    t.push(format!("read 100 -> {}", data(read(via, server, &mut buf), &buf)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t.push(format!("set -5 -> {}", set_peek_off(via, server, -5, int)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t.push(format!("set with a 2-byte length -> {}", set_peek_off(via, server, 3, 2)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    // A blocking peek past the data waits for more.
    t.push(format!("client send xy -> {}", rc(send(via, client, b"xy", 0))));
    t.push(format!("set 2 -> {}", set_peek_off(via, server, 2, int)));
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        send(via, client, b"z", 0)
    });
    t.push(format!("peek 10, blocking, past the data -> {}", data(recv(via, server, &mut buf[..10], libc::MSG_PEEK), &buf)));
    assert_eq!(writer.join().unwrap(), 1);
    t.push(format!("get -> {}", get_peek_off(via, server)));
    // EOF before the offset.
    // SAFETY: shutdown of our socket.
    unsafe {
        match via {
            Via::Libc => libc::shutdown(client, libc::SHUT_WR),
            Via::Hook => calls::shutdown(client, libc::SHUT_WR),
        }
    };
    t.push(format!("set 5 -> {}", set_peek_off(via, server, 5, int)));
    t.push(format!("peek at EOF before the offset -> {}", data(recv(via, server, &mut buf[..10], libc::MSG_PEEK), &buf)));
    t.push(format!("set 1 -> {}", set_peek_off(via, server, 1, int)));
    t.push(format!("peek -> {}", data(recv(via, server, &mut buf[..10], libc::MSG_PEEK), &buf)));
    t.push(format!("read 10 -> {}", data(read(via, server, &mut buf[..10]), &buf)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t
}

#[test]
fn so_peek_off_emulated_on_the_rings_as_the_kernel() {
    let t = compare(4096, peek_offsets);
    assert!(t.contains(&"peek 3 -> 3 \"def\"".to_owned()), "{t:#?}");
}

/// A peek at an offset past the bytes the peer left on the ring before it handed back: the
/// socket's bytes after them (and after its last doorbell) come next, as in one kernel queue.
fn peek_across_a_hand_back(via: Via, client: c_int, server: c_int) -> Vec<String> {
    let mut t = Vec::new();
    let mut buf = [0u8; 100];
    let int = size_of::<c_int>() as u32;
    t.push(format!("client send ring1234 -> {}", rc(send(via, client, b"ring1234", 0))));
    if via == Via::Hook {
        // The client's direction goes back to the socket (the server has not followed yet).
        table::lookup(client).unwrap().hand_back(client);
    }
    t.push(format!("client send sock5678 -> {}", rc(send(via, client, b"sock5678", 0))));
    t.push(format!("set 6 -> {}", set_peek_off(via, server, 6, int)));
    t.push(format!("peek 6 -> {}", data(recv(via, server, &mut buf[..6], libc::MSG_PEEK), &buf)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t.push(format!("read 8 -> {}", data(read(via, server, &mut buf[..8]), &buf)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t.push(format!("peek 10 -> {}", data(recv(via, server, &mut buf[..10], libc::MSG_PEEK), &buf)));
    t.push(format!("read 100 -> {}", data(read(via, server, &mut buf), &buf)));
    t.push(format!("get -> {}", get_peek_off(via, server)));
    t
}

#[test]
fn so_peek_off_across_a_hand_back() {
    let t = compare(4096, peek_across_a_hand_back);
    assert!(t.contains(&"peek 6 -> 6 \"34sock\"".to_owned()), "{t:#?}");
}

/// poll and epoll on a connection whose peer handed back: the bytes it sends on the socket
/// after its ring bytes are readable once the ring is read (the connection turns plain, and
/// epoll gets the application's own registration back before it waits in the kernel).
#[test]
fn readiness_after_a_hand_back_reports_the_socket_bytes() {
    let run = |via: Via, client: c_int, server: c_int| -> Vec<String> {
        let mut t = Vec::new();
        let mut buf = [0u8; 100];
        let ep = epoll_with(via, server, libc::EPOLLIN as u32);
        t.push(format!("send ab -> {}", rc(send(via, client, b"ab", 0))));
        t.push(format!("epoll -> {}", epoll_events(via, ep.as_raw_fd())));
        if via == Via::Hook {
            table::lookup(client).unwrap().hand_back(client);
        }
        t.push(format!("send cd -> {}", rc(send(via, client, b"cd", 0))));
        t.push(format!("epoll -> {}", epoll_events(via, ep.as_raw_fd())));
        t.push(format!("read 2 -> {}", data(read(via, server, &mut buf[..2]), &buf)));
        t.push(format!("poll -> {}", poll_revents(via, server, libc::POLLIN)));
        t.push(format!("epoll -> {}", epoll_events(via, ep.as_raw_fd())));
        t.push(format!("epoll -> {}", epoll_events(via, ep.as_raw_fd())));
        t.push(format!("read 2 -> {}", data(read(via, server, &mut buf[..2]), &buf)));
        t.push(format!("epoll -> {}", epoll_events(via, ep.as_raw_fd())));
        t
    };
    compare(4096, run);
}
