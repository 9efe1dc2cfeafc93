//! The hook's logic on a connection swapped inside this test process: both ends of a
//! `socketpair` are installed in the fd table with one real segment (as the agent would hand
//! out), and the entry points of `tssx_hook::calls` are called directly, without interposing
//! anything. What the tests expect is what `af_unix` does on a plain socket pair (the
//! end-to-end conformance suite compares the two for every scenario; these are the quick,
//! root-free checks of the same rules).

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::Ordering,
};

use libc::c_int;
use tssx_common::segment::End;
use tssx_hook::{calls, table};

mod support;
use support::{send_with_fd, Pair};

fn swapped_pair(ring: usize) -> Pair {
    swap(support::socketpair(0), ring)
}

/// Installs a connected pair (client, server) in the table as one swapped connection.
fn swap(fds: [c_int; 2], ring: usize) -> Pair {
    support::install_swapped(fds, ring);
    for fd in fds {
        assert_eq!(table::lookup(fd).unwrap().phase(), tssx_hook::conn::Phase::Active);
    }
    Pair { client: fds[0], server: fds[1] }
}

fn dummy_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: new fds.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write(fd: c_int, bytes: &[u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

fn read(fd: c_int, buf: &mut [u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

fn recv(fd: c_int, buf: &mut [u8], flags: c_int) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Bytes that are in the socket's real kernel queue (nothing should be: the rings carry them).
fn kernel_queued(fd: c_int) -> c_int {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes an int; the real ioctl, not the hook's.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }, 0);
    n
}

#[test]
fn bytes_go_through_the_rings_both_ways() {
    let p = swapped_pair(4096);
    assert_eq!(write(p.client, b"hello"), 5);
    assert_eq!(kernel_queued(p.server), 0, "the bytes must not be on the real socket");
    let mut buf = [0u8; 16];
    assert_eq!(read(p.server, &mut buf), 5);
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(write(p.server, b"world!"), 6);
    assert_eq!(read(p.client, &mut buf), 6);
    assert_eq!(&buf[..6], b"world!");
    let header_bytes = {
        let c = table::lookup(p.client).unwrap();
        (c.header().rings[0].producer.0.head.load(Ordering::Relaxed), c.header().rings[1].producer.0.head.load(Ordering::Relaxed))
    };
    assert_eq!(header_bytes, (5, 6));
}

#[test]
fn a_blocking_read_waits_for_a_writer_thread_larger_than_the_ring() {
    let p = swapped_pair(4096);
    let (client, server) = (p.client, p.server);
    let total = 1 << 20;
    let writer = std::thread::spawn(move || {
        let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        let mut sent = 0;
        while sent < data.len() {
            let n = write(client, &data[sent..(sent + 10_000).min(data.len())]);
            assert!(n > 0, "write: {n} errno {}", errno());
            sent += n as usize;
        }
    });
    let mut got = Vec::with_capacity(total);
    let mut buf = [0u8; 3000];
    while got.len() < total {
        let n = read(server, &mut buf);
        assert!(n > 0, "read: {n} errno {}", errno());
        got.extend_from_slice(&buf[..n as usize]);
    }
    writer.join().unwrap();
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i * 7 % 251) as u8), "bytes in order");
}

#[test]
fn nonblocking_reads_and_writes_give_eagain_and_partial_counts() {
    let p = swapped_pair(4096);
    let mut buf = [0u8; 8];
    assert_eq!(recv(p.server, &mut buf, libc::MSG_DONTWAIT), -1);
    assert_eq!(errno(), libc::EAGAIN);
    // SAFETY: F_SETFL with an int argument, through the hook (it records O_NONBLOCK).
    assert_eq!(unsafe { calls::fcntl(p.client, libc::F_SETFL, libc::O_NONBLOCK as libc::c_ulong) }, 0);
    let big = vec![1u8; 10_000];
    assert_eq!(write(p.client, &big), 4096, "a full ring takes what fits");
    assert_eq!(write(p.client, &big), -1);
    assert_eq!(errno(), libc::EAGAIN);
}

#[test]
fn peek_fionread_and_waitall() {
    let p = swapped_pair(4096);
    assert_eq!(write(p.client, b"abcdef"), 6);
    let mut n: c_int = 0;
    // SAFETY: FIONREAD writes an int.
    assert_eq!(unsafe { calls::ioctl(p.server, libc::FIONREAD, (&mut n as *mut c_int).cast()) }, 0);
    assert_eq!(n, 6);
    let mut buf = [0u8; 4];
    assert_eq!(recv(p.server, &mut buf, libc::MSG_PEEK), 4);
    assert_eq!(&buf, b"abcd");
    assert_eq!(recv(p.server, &mut buf, 0), 4);
    assert_eq!(&buf, b"abcd");
    let client = p.client;
    let late = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(write(client, b"gh"), 2);
    });
    // MSG_WAITALL collects "ef" and "gh".
    assert_eq!(recv(p.server, &mut buf, libc::MSG_WAITALL), 4);
    assert_eq!(&buf, b"efgh");
    late.join().unwrap();
}

#[test]
fn shutdown_gives_eof_after_the_data_and_epipe_to_the_writer() {
    let p = swapped_pair(4096);
    assert_eq!(write(p.client, b"last"), 4);
    // SAFETY: plain arguments.
    assert_eq!(unsafe { calls::shutdown(p.client, libc::SHUT_WR) }, 0);
    let mut buf = [0u8; 8];
    assert_eq!(read(p.server, &mut buf), 4);
    assert_eq!(read(p.server, &mut buf), 0, "EOF after the data");
    assert_eq!(recv(p.client, &mut buf, libc::MSG_DONTWAIT), -1, "the other direction is still open");
    assert_eq!(errno(), libc::EAGAIN);
    // SAFETY: MSG_NOSIGNAL: no SIGPIPE in the test process.
    assert_eq!(unsafe { calls::send(p.client, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) }, -1);
    assert_eq!(errno(), libc::EPIPE);
}

#[test]
fn poll_and_epoll_report_ring_readiness() {
    let p = swapped_pair(4096);
    let mut pfd = libc::pollfd { fd: p.server, events: libc::POLLIN | libc::POLLOUT, revents: 0 };
    // SAFETY: one live pollfd.
    assert_eq!(unsafe { calls::poll(&mut pfd, 1, 0) }, 1);
    assert_eq!(pfd.revents, libc::POLLOUT, "writable, nothing to read");
    assert_eq!(write(p.client, b"x"), 1);
    // SAFETY: as above.
    assert_eq!(unsafe { calls::poll(&mut pfd, 1, 0) }, 1);
    assert_eq!(pfd.revents, libc::POLLIN | libc::POLLOUT);

    // SAFETY: plain system call; the fd is ours.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 42 };
    // SAFETY: a live event.
    assert_eq!(unsafe { calls::epoll_ctl(ep, libc::EPOLL_CTL_ADD, p.server, &mut ev) }, 0);
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: a live array of 4 events.
    assert_eq!(unsafe { calls::epoll_wait(ep, out.as_mut_ptr(), 4, 1000) }, 1);
    let got = out[0];
    assert_eq!((got.events, { got.u64 }), (libc::EPOLLIN as u32, 42));
    let mut buf = [0u8; 1];
    assert_eq!(read(p.server, &mut buf), 1);
    // Nothing left: a short wait times out with no event.
    // SAFETY: as above.
    assert_eq!(unsafe { calls::epoll_wait(ep, out.as_mut_ptr(), 4, 20) }, 0);
    // SAFETY: the hook forgets the instance; then the real close.
    unsafe { calls::close(ep) };
}

#[test]
fn dup_is_the_same_connection_until_the_last_close() {
    let p = swapped_pair(4096);
    // SAFETY: plain argument.
    let copy = unsafe { calls::dup(p.server) };
    assert!(copy >= 0);
    assert_eq!(write(p.client, b"one"), 3);
    let mut buf = [0u8; 3];
    assert_eq!(read(copy, &mut buf), 3, "the dup reads the same ring");
    // SAFETY: our dup.
    assert_eq!(unsafe { calls::close(copy) }, 0);
    assert_eq!(write(p.client, b"two"), 3);
    assert_eq!(read(p.server, &mut buf), 3, "still swapped after closing the copy");
    assert_eq!(&buf, b"two");
}

#[test]
fn closing_with_unread_bytes_resets_the_peer_once() {
    let mut p = swapped_pair(4096);
    assert_eq!(write(p.client, b"unread"), 6);
    // SAFETY: the server end's only fd; the hook closes the real socket too.
    assert_eq!(unsafe { calls::close(p.server) }, 0);
    p.server = -1;
    let mut buf = [0u8; 4];
    assert_eq!(read(p.client, &mut buf), -1);
    assert_eq!(errno(), libc::ECONNRESET);
    assert_eq!(read(p.client, &mut buf), 0, "then EOF");
}

#[test]
fn plain_fds_pass_straight_through() {
    let (a, b) = dummy_pair();
    assert!(table::lookup(a.as_raw_fd()).is_none());
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() = 77 };
    assert_eq!(write(b.as_raw_fd(), b"pipe"), 4);
    assert_eq!(errno(), 77, "a successful pass-through leaves errno alone");
    let mut buf = [0u8; 4];
    assert_eq!(read(a.as_raw_fd(), &mut buf), 4);
    assert_eq!(&buf, b"pipe");
}

/// Issue 13, hook bug (a): a `shutdown` recorded while on the rings must survive the
/// connection's hand-back to the kernel. The shut-down end's direction goes back onto the real
/// socket, which must then carry the shutdown too (the old hook replayed it from inside the
/// producer lock through the hooked `shutdown`, re-entering itself; the restructured one
/// dropped it: the peer then waited for an EOF that never came, and writes after `SHUT_WR`
/// succeeded). As on a plain socket: the peer reads the bytes, then EOF; the shut-down end's
/// writes fail with EPIPE.
#[test]
fn a_shutdown_survives_the_hand_back() {
    let p = swapped_pair(4096);
    let (client, server) = (p.client, p.server);
    assert_eq!(write(client, b"bye"), 3);
    // SAFETY: plain arguments.
    assert_eq!(unsafe { calls::shutdown(client, libc::SHUT_WR) }, 0);
    // The server passes an fd: the connection goes back to the kernel.
    let (r, _w) = dummy_pair();
    assert_eq!(send_with_fd(server, b"fd", r.as_raw_fd()), 2);
    // The client reads that message (and follows the hand-back).
    let mut buf = [0u8; 8];
    assert_eq!(recv(client, &mut buf, 0), 2, "errno {}", errno());
    // The server reads the client's bytes, then EOF.
    assert_eq!(read(server, &mut buf), 3, "errno {}", errno());
    assert_eq!(&buf[..3], b"bye");
    assert_eq!(recv(server, &mut buf, libc::MSG_DONTWAIT), 0, "EOF after the hand-back, errno {}", errno());
    // SAFETY: MSG_NOSIGNAL: no SIGPIPE in the test process.
    assert_eq!(unsafe { calls::send(client, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) }, -1);
    assert_eq!(errno(), libc::EPIPE, "the client shut its sending side down");
    // The other direction still works, through the kernel now.
    assert_eq!(write(server, b"answer"), 6);
    assert_eq!(read(client, &mut buf), 6);
    assert_eq!(&buf[..6], b"answer");
    assert_eq!(kernel_queued(client), 0);
}

/// An end whose `back_at` is already stored while its phase still says `Active` (a hand-back
/// by the image before an `exec`, or by another thread between its store and its phase change)
/// must write to the socket, never past `back_at` on the ring (lost) nor spin.
#[test]
fn a_writer_handed_back_elsewhere_writes_to_the_socket() {
    let p = swapped_pair(4096);
    {
        let c = table::lookup(p.client).unwrap();
        c.header().ends[End::Client.index()].back_at.store(0, Ordering::SeqCst);
    }
    assert_eq!(write(p.client, b"x"), 1);
    let mut buf = [0u8; 4];
    assert_eq!(read(p.server, &mut buf), 1, "errno {}", errno());
    assert_eq!(buf[0], b'x');
}

/// `select` with the largest timeout on a swapped fd that is ready: answered (the timeout's
/// conversion to nanoseconds overflowed, a panic in a debug build).
#[test]
fn select_with_a_huge_timeout_on_a_ready_swapped_fd() {
    let p = swapped_pair(4096);
    assert_eq!(write(p.client, b"x"), 1);
    // SAFETY: fd_set is plain data; FD_ZERO/FD_SET on a live local set, fd < FD_SETSIZE.
    let mut set: libc::fd_set = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::FD_SET(p.server, &mut set) };
    let mut tv = libc::timeval { tv_sec: libc::time_t::MAX, tv_usec: 999_999 };
    // SAFETY: live set and timeval.
    let n = unsafe { calls::select(p.server + 1, &mut set, std::ptr::null_mut(), std::ptr::null_mut(), &mut tv) };
    assert_eq!(n, 1, "errno {}", errno());
}

/// A plain socket pair, not in the table: every call on it goes to libc (the reference).
fn plain_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }, 0);
    // SAFETY: new fds.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A `recvmmsg`/`sendmmsg` vector with its buffers (every `msg_len` starts at 77, to show which
/// ones a call filled).
struct Vector {
    _bufs: Vec<Vec<u8>>,
    _iovs: Vec<Vec<libc::iovec>>,
    msgs: Vec<libc::mmsghdr>,
}

impl Vector {
    /// Messages whose iovecs hold these bytes (for sending), or are zeroed buffers of these
    /// lengths (for receiving).
    fn new(messages: &[&[&[u8]]]) -> Vector {
        let mut bufs = Vec::new();
        let mut iovs = Vec::new();
        let mut msgs = Vec::new();
        for message in messages {
            let mut iov = Vec::new();
            for part in *message {
                let mut buf = part.to_vec();
                iov.push(libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() });
                bufs.push(buf);
            }
            // SAFETY: an all-zero mmsghdr is a valid (empty) one.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov.as_mut_ptr();
            m.msg_hdr.msg_iovlen = iov.len();
            m.msg_len = 77;
            iovs.push(iov);
            msgs.push(m);
        }
        Vector { _bufs: bufs, _iovs: iovs, msgs }
    }

    /// Receiving buffers of these lengths.
    fn zeroed(lengths: &[&[usize]]) -> Vector {
        let parts: Vec<Vec<Vec<u8>>> = lengths.iter().map(|m| m.iter().map(|&n| vec![0u8; n]).collect()).collect();
        let parts: Vec<Vec<&[u8]>> = parts.iter().map(|m| m.iter().map(Vec::as_slice).collect()).collect();
        let parts: Vec<&[&[u8]]> = parts.iter().map(Vec::as_slice).collect();
        Vector::new(&parts)
    }

    /// Each message's `msg_len`, and the bytes it received (its iovecs up to `msg_len`).
    fn received(&self) -> Vec<(u32, String)> {
        self.msgs
            .iter()
            .map(|m| {
                let mut bytes = Vec::new();
                let mut left = if m.msg_len == 77 { 0 } else { m.msg_len as usize };
                for i in 0..m.msg_hdr.msg_iovlen {
                    // SAFETY: the vector's own iovecs and buffers.
                    let v = unsafe { *m.msg_hdr.msg_iov.add(i) };
                    let k = left.min(v.iov_len);
                    // SAFETY: as above.
                    bytes.extend_from_slice(unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), k) });
                    left -= k;
                }
                (m.msg_len, String::from_utf8_lossy(&bytes).into_owned())
            })
            .collect()
    }
}

fn recvmmsg(fd: c_int, v: &mut Vector, flags: c_int, timeout: Option<&mut libc::timespec>) -> String {
    let ts = timeout.map_or(std::ptr::null_mut(), |t| t as *mut libc::timespec);
    // SAFETY: the vector's messages and buffers are live; `ts` is null or a live timespec.
    let rc = unsafe { calls::recvmmsg(fd, v.msgs.as_mut_ptr(), v.msgs.len() as u32, flags, ts) };
    let e = if rc < 0 { errno() } else { 0 };
    format!("recvmmsg -> {rc} (errno {e}) {:?}", v.received())
}

fn sendmmsg(fd: c_int, v: &mut Vector, flags: c_int) -> String {
    // SAFETY: the vector's messages and buffers are live.
    let rc = unsafe { calls::sendmmsg(fd, v.msgs.as_mut_ptr(), v.msgs.len() as u32, flags) };
    let e = if rc < 0 { errno() } else { 0 };
    format!("sendmmsg -> {rc} (errno {e}) {:?}", v.msgs.iter().map(|m| m.msg_len).collect::<Vec<_>>())
}

/// One sequence of recvmmsg/sendmmsg calls on a connected pair; what each call returned.
fn mmsg_sequence(client: c_int, server: c_int) -> Vec<String> {
    let mut log = Vec::new();
    let mut v = Vector::new(&[&[b"alpha"], &[b"bravo-", b"charlie"], &[b""], &[b"delta"]]);
    log.push(sendmmsg(client, &mut v, 0));
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[4], &[2, 2], &[4]]), 0, None));
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[5], &[5], &[5], &[5]]), libc::MSG_WAITFORONE, None));
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[5], &[5]]), libc::MSG_DONTWAIT, None));
    log.push(recvmmsg(server, &mut Vector::zeroed(&[]), 0, None));
    let mut bad = libc::timespec { tv_sec: 0, tv_nsec: 1_000_000_000 };
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[5]]), 0, Some(&mut bad)));
    log.push(sendmmsg(client, &mut Vector::new(&[&[b"zero", b"tm"], &[b"peekaboo"]]), 0));
    let mut zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[2], &[2], &[2]]), 0, Some(&mut zero)));
    log.push(format!("timeout after {}.{:09}", zero.tv_sec, zero.tv_nsec));
    let mut five = libc::timespec { tv_sec: 5, tv_nsec: 0 };
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[2], &[2]]), 0, Some(&mut five)));
    log.push(format!("time left in (0, 5 s): {}", five.tv_sec < 5 && (five.tv_sec > 0 || five.tv_nsec > 0)));
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[4], &[4]]), libc::MSG_PEEK, None));
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[4], &[4]]), 0, None));
    assert_eq!(write(client, b"tail"), 4);
    // SAFETY: plain arguments.
    assert_eq!(unsafe { calls::shutdown(client, libc::SHUT_WR) }, 0);
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[8], &[8], &[8]]), 0, None));
    log.push(recvmmsg(server, &mut Vector::zeroed(&[&[8], &[8]]), libc::MSG_DONTWAIT, None));
    // SAFETY: plain arguments.
    assert_eq!(unsafe { calls::shutdown(client, libc::SHUT_RD) }, 0);
    log.push(sendmmsg(server, &mut Vector::new(&[&[b"x"], &[b"y"]]), libc::MSG_NOSIGNAL));
    log
}

#[test]
fn recvmmsg_and_sendmmsg_on_the_rings_do_what_the_kernel_does() {
    let (a, b) = plain_pair();
    let kernel = mmsg_sequence(a.as_raw_fd(), b.as_raw_fd());
    let p = swapped_pair(4096);
    let rings = mmsg_sequence(p.client, p.server);
    assert_eq!(kernel_queued(p.server), 0, "the bytes must not be on the real socket");
    assert_eq!(rings, kernel, "(left: swapped, right: the kernel's socket pair)");
}

/// A non-blocking `sendmmsg` stops at a partial message (its `msg_len`: what fitted), then EAGAIN.
fn partial_sendmmsg(client: c_int) -> (c_int, bool, u32, c_int, c_int) {
    let big = vec![7u8; 8 << 20];
    let mut v = Vector::new(&[&[b"0123456789abcdef"], &[&big], &[b"0123456789abcdef"]]);
    // SAFETY: the vector is live.
    let rc = unsafe { calls::sendmmsg(client, v.msgs.as_mut_ptr(), 3, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    let partial = v.msgs[1].msg_len > 0 && (v.msgs[1].msg_len as usize) < big.len();
    // SAFETY: as above.
    let again = unsafe { calls::sendmmsg(client, v.msgs.as_mut_ptr().add(2), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    let e = errno();
    (rc, partial, v.msgs[2].msg_len, again, e)
}

#[test]
fn a_nonblocking_sendmmsg_stops_at_a_partial_message_as_the_kernel() {
    let (a, b) = plain_pair();
    let kernel = partial_sendmmsg(a.as_raw_fd());
    drop((a, b));
    let p = swapped_pair(4096);
    assert_eq!(partial_sendmmsg(p.client), kernel);
    assert_eq!(kernel, (2, true, 77, -1, libc::EAGAIN));
}

#[test]
fn recvmmsg_reports_a_reset_before_the_data_as_the_kernel() {
    let sequence = |client: c_int, server: c_int| -> Vec<String> {
        assert_eq!(write(server, b"data"), 4);
        assert_eq!(write(client, b"unread"), 6);
        // SAFETY: the server end's only fd.
        assert_eq!(unsafe { calls::close(server) }, 0);
        vec![
            recvmmsg(client, &mut Vector::zeroed(&[&[8], &[8]]), 0, None),
            recvmmsg(client, &mut Vector::zeroed(&[&[8], &[8]]), 0, None),
            recvmmsg(client, &mut Vector::zeroed(&[&[8]]), 0, None),
        ]
    };
    let (a, b) = plain_pair();
    let b = std::os::fd::IntoRawFd::into_raw_fd(b);
    let kernel = sequence(a.as_raw_fd(), b);
    let mut p = swapped_pair(4096);
    let rings = sequence(p.client, p.server);
    p.server = -1;
    assert_eq!(rings, kernel, "(left: swapped, right: the kernel's socket pair)");
}

#[test]
fn fortified_reads_and_polls_are_served_on_the_rings() {
    let p = swapped_pair(4096);
    assert_eq!(write(p.client, b"hello fortified"), 15);
    let mut buf = [0u8; 16];
    let mut pfd = [libc::pollfd { fd: p.server, events: libc::POLLIN, revents: 0 }];
    // SAFETY: one live pollfd, its size in bytes.
    assert_eq!(unsafe { calls::__poll_chk(pfd.as_mut_ptr(), 1, 0, size_of_val(&pfd)) }, 1);
    assert_eq!(pfd[0].revents, libc::POLLIN);
    // SAFETY: live buffers, their true sizes.
    unsafe {
        assert_eq!(calls::__read_chk(p.server, buf.as_mut_ptr().cast(), 5, buf.len()), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(calls::__recv_chk(p.server, buf.as_mut_ptr().cast(), 4, buf.len(), libc::MSG_PEEK), 4);
        assert_eq!(&buf[..4], b" for");
        assert_eq!(calls::__recv_chk(p.server, buf.as_mut_ptr().cast(), 4, buf.len(), 0), 4);
        let mut len: libc::socklen_t = 16;
        let mut addr = [0u8; 16];
        assert_eq!(calls::__recvfrom_chk(p.server, buf.as_mut_ptr().cast(), 16, buf.len(), 0, addr.as_mut_ptr().cast(), &mut len), 6);
        assert_eq!(&buf[..6], b"tified");
        assert_eq!(len, 0, "a connected stream socket reports no address");
        assert_eq!(calls::__recv_chk(p.server, buf.as_mut_ptr().cast(), 5, buf.len(), libc::MSG_DONTWAIT), -1);
    }
    assert_eq!(errno(), libc::EAGAIN);
}

#[test]
fn a_fortified_read_longer_than_its_buffer_aborts_as_glibc() {
    let p = swapped_pair(4096);
    let (plain, _other) = plain_pair();
    for fd in [p.server, plain.as_raw_fd()] {
        // SAFETY: the child only calls the hook's __read_chk (which aborts before touching
        // anything) and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let mut buf = [0u8; 8];
            // SAFETY: 16 bytes claimed for an 8-byte buffer: the check must abort before reading.
            unsafe { calls::__read_chk(fd, buf.as_mut_ptr().cast(), 16, buf.len()) };
            // SAFETY: leaves the child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT, "fd {fd}: status {status:#x}");
    }
}

/// A connection to a listener bound to a path (client, accepted server end), not swapped.
fn connection_on_a_path(path: &std::path::Path) -> (OwnedFd, OwnedFd) {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    let client = std::os::unix::net::UnixStream::connect(path).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client.into(), server.into())
}

/// recvfrom/recvmsg with an address buffer: what each end learns about the sender.
fn source_addresses(client: c_int, server: c_int) -> Vec<String> {
    let mut log = Vec::new();
    let mut from = |fd: c_int| {
        let mut buf = [0u8; 8];
        // SAFETY: an all-zero sockaddr_un is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: live buffers and their sizes.
        let n = unsafe { calls::recvfrom(fd, buf.as_mut_ptr().cast(), buf.len(), 0, (&raw mut addr).cast(), &mut len) };
        let path: Vec<u8> = addr.sun_path.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        log.push(format!(
            "recvfrom -> {n}, address length {len}, path {:?}",
            String::from_utf8_lossy(&path).rsplit('/').next().unwrap_or("")
        ));
    };
    assert_eq!(write(server, b"to-c"), 4);
    from(client);
    assert_eq!(write(client, b"to-s"), 4);
    from(server);
    let mut small = [0u8; 4];
    let mut len: libc::socklen_t = small.len() as libc::socklen_t;
    let mut buf = [0u8; 8];
    assert_eq!(write(server, b"again"), 5);
    // SAFETY: live buffers; an address buffer too short for the path.
    let n = unsafe { calls::recvfrom(client, buf.as_mut_ptr().cast(), buf.len(), 0, small.as_mut_ptr().cast(), &mut len) };
    log.push(format!("recvfrom with 4 bytes for the address -> {n}, address length {len}, {small:?}"));
    log
}

#[test]
fn a_source_address_is_the_senders_as_the_kernel_reports_it() {
    let dir = std::env::temp_dir().join(format!("tssx-hook-addr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = connection_on_a_path(&dir.join("k.sock"));
    let kernel = source_addresses(a.as_raw_fd(), b.as_raw_fd());
    let (c, d) = connection_on_a_path(&dir.join("s.sock"));
    let p = swap([std::os::fd::IntoRawFd::into_raw_fd(c), std::os::fd::IntoRawFd::into_raw_fd(d)], 4096);
    let rings = source_addresses(p.client, p.server);
    std::fs::remove_dir_all(&dir).ok();
    // (The two listeners' paths differ in one letter, k and s.)
    let strip = |v: Vec<String>| v.into_iter().map(|l| l.replace("s.sock", "k.sock")).collect::<Vec<_>>();
    assert_eq!(strip(rings), strip(kernel), "(left: swapped, right: the kernel's connection)");
}
