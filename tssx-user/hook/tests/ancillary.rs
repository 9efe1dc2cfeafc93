//! Ancillary data on a connection swapped inside this test process (see `rings.rs`): fds travel
//! through the kernel on a marker byte, at the position a record in the segment gives; a peer
//! that writes the records wrongly can misplace its own stream, never make the reader take an
//! fd the kernel did not pass, nor hang it.

use std::{
    sync::atomic::Ordering::SeqCst,
    time::{Duration, Instant},
};

use libc::c_int;
use tssx_common::segment::{End, ANC_MARKER, ANC_SLOTS};
use tssx_hook::{calls, conn::Phase, table};

mod support;
use support::{send_with_fd, Pair};

fn swapped_pair() -> Pair {
    let fds = support::socketpair(0);
    support::install_swapped(fds, 4096);
    Pair { client: fds[0], server: fds[1] }
}

/// `recvmsg` of at most `room` bytes without waiting: the bytes, and the fds received.
fn recv(fd: c_int, room: usize) -> (isize, Vec<u8>, Vec<c_int>) {
    support::recvmsg_fds(fd, room, 0)
}

fn write(fd: c_int, bytes: &[u8]) -> isize {
    // SAFETY: a live buffer.
    unsafe { calls::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

fn pipe() -> [c_int; 2] {
    let mut p = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    p
}

fn close(fd: c_int) {
    // SAFETY: the test's own fd.
    unsafe { libc::close(fd) };
}

#[test]
fn an_fd_arrives_with_the_first_byte_of_its_message_and_the_connection_stays_on_the_rings() {
    let pair = swapped_pair();
    let p = pipe();
    assert_eq!(write(pair.client, b"abc"), 3);
    assert_eq!(send_with_fd(pair.client, b"DEF", p[0]), 3);
    assert_eq!(write(pair.client, b"ghi"), 3);
    let (n, data, fds) = recv(pair.server, 2);
    assert_eq!((n, &data[..], fds.len()), (2, &b"ab"[..], 0), "a read that stops before the fd's byte does not take it");
    let (n, data, fds) = recv(pair.server, 100);
    assert_eq!((n, &data[..], fds.len()), (4, &b"cDEF"[..], 1), "the read ends after the message that carried the fd");
    let (n, data, more) = recv(pair.server, 100);
    assert_eq!((n, &data[..], more.len()), (3, &b"ghi"[..], 0));
    // The fd is the pipe's read end.
    // SAFETY: a live buffer; the pipe's write end.
    assert_eq!(unsafe { libc::write(p[1], b"x".as_ptr().cast(), 1) }, 1);
    let mut one = [0u8; 1];
    // SAFETY: a live buffer; the received fd.
    assert_eq!(unsafe { libc::read(fds[0], one.as_mut_ptr().cast(), 1) }, 1);
    for fd in [pair.client, pair.server] {
        assert_eq!(table::lookup(fd).unwrap().phase(), Phase::Active);
    }
    for fd in [p[0], p[1], fds[0]] {
        close(fd);
    }
}

/// How many fds of this process are open on the file `fd` is open on.
fn copies_of(fd: c_int) -> usize {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).expect("a live fd");
    std::fs::read_dir("/proc/self/fd")
        .expect("procfs")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| *t == target)
        .count()
}

#[test]
fn a_recvmsg_into_a_buffer_that_faults_takes_no_fd() {
    // As the kernel's: EFAULT, and the message and its fds stay for the next read. The hook's
    // probe of the stream must not install the marker's fds, which the failed call never
    // hands over: a passed socket then outlived its peer's close (the differential test with
    // MSG_OOB, seed 91002). A plain pair first, as the reference.
    let plain = support::socketpair(0);
    let plain = Pair { client: plain[0], server: plain[1] };
    for pair in [plain, swapped_pair()] {
        let p = pipe();
        assert_eq!(send_with_fd(pair.client, b"DEF", p[0]), 3);
        let mut cbuf = [0u64; 8];
        let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 100 };
        // SAFETY: plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&cbuf);
        // SAFETY: a msghdr whose buffer faults (the point), with a live control buffer.
        let n = unsafe { calls::recvmsg(pair.server, &mut msg, libc::MSG_DONTWAIT) };
        assert_eq!((n, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EFAULT)));
        assert_eq!(copies_of(p[0]), 2, "no fd of the pipe installed by the failed call");
        let (n, data, fds) = recv(pair.server, 100);
        assert_eq!((n, &data[..], fds.len()), (3, &b"DEF"[..], 1), "the message and its fd are still there");
        assert_eq!(copies_of(p[0]), 3);
        for fd in [p[0], p[1], fds[0]] {
            close(fd);
        }
    }
}

#[test]
fn an_fd_the_kernel_refuses_sends_nothing() {
    let pair = swapped_pair();
    assert_eq!(send_with_fd(pair.client, b"never", 987_654), -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EBADF));
    let (n, _, _) = recv(pair.server, 100);
    assert_eq!((n, std::io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EAGAIN)), "nothing arrived");
    let header = table::lookup(pair.client).unwrap().header() as *const tssx_common::segment::SegmentHeader;
    // SAFETY: the segment lives as long as the pair.
    let q = unsafe { &(*header).anc[End::Client.index()] };
    assert_eq!(q.sent.0.load(SeqCst), q.taken.0.load(SeqCst), "the record was withdrawn");
    assert_eq!(write(pair.client, b"after"), 5);
    let (n, data, fds) = recv(pair.server, 100);
    assert_eq!((n, &data[..], fds.len()), (5, &b"after"[..], 0));
}

/// A writer preempted between publishing a record and sending its marker (here: 100 ms, as a
/// loaded machine can make it): the reader waits for the marker, asleep on the socket, and the
/// fd arrives with its byte. (A reader that gave up after a count of yields took the byte
/// without the fd within milliseconds.)
#[test]
fn a_marker_sent_late_still_brings_its_fd() {
    let pair = swapped_pair();
    let c = table::lookup(pair.client).unwrap();
    // The message's byte on the ring first (at position 0: nothing was written before), then
    // its record, as the writer publishes them, then, later, the marker on the socket.
    assert_eq!(write(pair.client, b"F"), 1);
    let q = &c.header().anc[End::Client.index()];
    let n = q.sent.0.load(SeqCst);
    let slot = &q.slots[(n % ANC_SLOTS as u64) as usize];
    slot.pos.store(0, SeqCst);
    slot.len.store(1, SeqCst);
    slot.bells.store(c.header().ends[End::Client.index()].bells_sent.load(SeqCst), SeqCst);
    q.sent.0.store(n + 1, SeqCst);
    let p = pipe();
    let (client, passed) = (pair.client, p[0]);
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        raw_marker_with_fd(client, passed)
    });
    let (got, data, fds) = recv(pair.server, 100);
    assert_eq!(late.join().unwrap(), 1, "the marker was sent");
    assert_eq!((got, &data[..], fds.len()), (1, &b"F"[..], 1), "the byte with its fd");
    // The fd is the pipe's read end.
    // SAFETY: a live buffer; the pipe's write end.
    assert_eq!(unsafe { libc::write(p[1], b"x".as_ptr().cast(), 1) }, 1);
    let mut one = [0u8; 1];
    // SAFETY: a live buffer; the received fd.
    assert_eq!(unsafe { libc::read(fds[0], one.as_mut_ptr().cast(), 1) }, 1);
    assert_eq!(write(pair.client, b"after"), 5);
    let (got, data, more) = recv(pair.server, 100);
    assert_eq!((got, &data[..], more.len()), (5, &b"after"[..], 0));
    for fd in [p[0], p[1], fds[0]] {
        close(fd);
    }
}

/// The marker byte with `fd` in `SCM_RIGHTS`, sent on `sock` by libc itself (not the hook), as
/// the hook's writer sends it after publishing the record.
fn raw_marker_with_fd(sock: c_int, fd: c_int) -> isize {
    // SAFETY: a msghdr over live buffers, as `with_fd` builds it.
    support::with_fd(&[ANC_MARKER], fd, |msg| unsafe { libc::sendmsg(sock, msg, libc::MSG_NOSIGNAL) })
}

/// A peer that writes a record without sending a marker (or with wrong doorbell counts) only
/// misplaces its own stream: the reader gets the bytes, no fd, and does not hang.
#[test]
fn a_forged_record_gives_no_fd_and_no_hang() {
    let pair = swapped_pair();
    let c = table::lookup(pair.client).unwrap();
    let q = &c.header().anc[End::Client.index()];
    let n = q.sent.0.load(SeqCst);
    let slot = &q.slots[(n % ANC_SLOTS as u64) as usize];
    slot.pos.store(0, SeqCst);
    slot.len.store(u64::MAX, SeqCst);
    slot.bells.store(1 << 40, SeqCst);
    q.sent.0.store(n + 1, SeqCst);
    assert_eq!(write(pair.client, b"hello"), 5);
    let started = Instant::now();
    let (got, data, fds) = recv(pair.server, 100);
    assert_eq!((got, &data[..], fds.len()), (5, &b"hello"[..], 0));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // A real fd after it still arrives in its place.
    let p = pipe();
    assert_eq!(send_with_fd(pair.client, b"F", p[0]), 1);
    let (got, data, fds) = recv(pair.server, 100);
    assert_eq!((got, &data[..], fds.len()), (1, &b"F"[..], 1));
    for fd in [p[0], p[1], fds[0]] {
        close(fd);
    }
}
