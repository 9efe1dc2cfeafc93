//! Ancillary data on a connection swapped inside this test process, with both ends running at
//! once (a test binary of its own: its two spinning threads would slow the timed checks of
//! `ancillary.rs` beside it).

use std::{
    sync::atomic::Ordering::SeqCst,
    time::{Duration, Instant},
};

use libc::c_int;
use tssx_common::segment::End;
use tssx_hook::{calls, conn::Phase, table};

mod support;
use support::{send_with_fd, Pair};

fn write(fd: c_int, bytes: &[u8]) -> isize {
    // SAFETY: a live buffer.
    unsafe { calls::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

fn close(fd: c_int) {
    // SAFETY: the test's own fd.
    unsafe { libc::close(fd) };
}

/// A writer thread sends plain bytes and one-byte messages with an fd while a reader thread
/// peeks and reads as they come, both through the hook on the rings: as the kernel's, every
/// read or peek that reaches a message's byte ends there and carries its fd, and no other one
/// carries an fd (but a peek that fills its buffer, which may carry the next message's) (a read once checked the records before it copied the ring, and a message
/// published in between lost its fd to a later read).
#[test]
fn fds_stay_with_their_bytes_while_both_ends_run() {
    const MESSAGES: usize = 5_000;
    let fds = support::socketpair(0);
    support::install_swapped(fds, 4096);
    let pair = Pair { client: fds[0], server: fds[1] };
    let mut p = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (client, server) = (pair.client, pair.server);
    let writer = std::thread::spawn(move || {
        // The lease keeps the connection and its segment alive as long as this thread runs,
        // even if the reader's checks fail and the pair is closed meanwhile.
        let conn = table::lookup(client).unwrap();
        let queue = &conn.header().anc[End::Client.index()];
        for i in 0..MESSAGES {
            let plain = [b'a' + (i % 7) as u8; 3];
            let k = 1 + i % 3;
            assert_eq!(write(client, &plain[..k]), k as isize);
            // At most two messages in flight: a full queue of records would hand the
            // connection back to the kernel (correct, but no longer the rings).
            while queue.sent.0.load(SeqCst).wrapping_sub(queue.taken.0.load(SeqCst)) >= 2 {
                std::thread::yield_now();
            }
            loop {
                let n = send_with_fd(client, b"M", p[0]);
                if n == 1 {
                    break;
                }
                assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN), "sendmsg: {n}");
                std::thread::yield_now();
            }
        }
    });
    // The stream as written, and as read so far: bytes in = bytes out, in order.
    let sent: Vec<u8> = (0..MESSAGES).flat_map(|i| std::iter::repeat_n(b'a' + (i % 7) as u8, 1 + i % 3).chain([b'M'])).collect();
    let mut read = Vec::with_capacity(sent.len());
    let (mut messages, mut round) = (0, 0usize);
    let started = Instant::now();
    while messages < MESSAGES {
        assert!(started.elapsed() < Duration::from_secs(120), "stuck after {messages} messages");
        round += 1;
        let room = 1 + round % 9;
        let peek = round % 3 == 0;
        let (n, data, fds) = support::recvmsg_fds(server, room, if peek { libc::MSG_PEEK } else { 0 });
        if n < 0 {
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
            continue;
        }
        assert_eq!(&data[..], &sent[read.len()..read.len() + data.len()], "the bytes after the {} read", read.len());
        if !peek {
            read.extend_from_slice(&data);
        }
        let at = data.iter().position(|&b| b == b'M');
        match at {
            Some(i) => {
                assert_eq!(i, data.len() - 1, "a read ends after the message with the fd: {data:?}");
                assert_eq!(fds.len(), 1, "the message's fd arrives with its byte: {data:?}");
                if !peek {
                    messages += 1;
                }
            }
            // (A peek that fills its buffer may get the fds of the next message with fds: the
            // kernel's walks on along the queue to them. A read never does.)
            None => assert!(fds.is_empty() || (peek && data.len() == room), "an fd with bytes of no message: {data:?}"),
        }
        for fd in fds {
            close(fd);
        }
    }
    writer.join().unwrap();
    assert_eq!(read, sent);
    for fd in [pair.client, pair.server] {
        assert_eq!(table::lookup(fd).unwrap().phase(), Phase::Active, "still on the rings");
    }
    for fd in p {
        close(fd);
    }
}
