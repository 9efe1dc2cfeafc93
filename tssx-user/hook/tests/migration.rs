//! Migration in flight, inside one test process: both ends of a `socketpair` are tracked as
//! plain candidates, bytes flow through the kernel, then both ends are handed one segment (as
//! the agent would after both claimed) and keep talking while the hook moves each direction
//! onto the rings. Every byte must arrive once, in order, whatever moment the segment arrives
//! and whatever the transfer sizes; and the connection must end up on the rings.

use libc::c_int;
use tssx_common::segment::End;
use tssx_hook::{calls, conn::Phase, table};
use tssx_shm::segment::Segment;

mod support;
use support::Rng;
use support::{dup_memfd, send_with_fd};

fn socketpair(flags: c_int) -> (c_int, c_int) {
    let [a, b] = support::socketpair(flags);
    (a, b)
}

fn write(fd: c_int, bytes: &[u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

fn read(fd: c_int, buf: &mut [u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

/// The byte at stream position `i` of direction `dir`.
fn byte(dir: usize, i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(dir as u64 * 7) % 251) as u8
}

/// One direction's progress: bytes written and read so far.
#[derive(Default)]
struct Dir {
    written: u64,
    read: u64,
}

/// Non-blocking ends; random writes and reads both ways; the segment arrives at step `join_at`
/// (for the client) and `join_at + skew` (for the server).
fn run(seed: u64, ring: usize) {
    tssx_hook::phase::set_claiming(false);
    let mut rng = Rng(seed | 1);
    let (a, b) = socketpair(libc::SOCK_NONBLOCK);
    assert!(table::track(a, End::Client, Phase::Candidate, None));
    assert!(table::track(b, End::Server, Phase::Candidate, None));
    let segment = Segment::create(ring).expect("segment");
    let join_at = rng.below(40);
    let skew = rng.below(10);
    // One seed in three sends an fd (sendmsg with SCM_RIGHTS) at a random step: served on the
    // rings once the sender's writes are there, handed back if the connection is half-way.
    let hand_back_at = if rng.below(3) == 0 { join_at + rng.below(300) } else { u64::MAX };
    let mut pipe = [0; 2];
    let mut handed_back = false;
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let ends = [a, b];
    let mut dirs = [Dir::default(), Dir::default()];
    let total_steps = 400;
    for step in 0..total_steps {
        if step == join_at {
            assert!(table::lookup(a).unwrap().join_with(dup_memfd(&segment)));
        }
        if step == join_at + skew {
            assert!(table::lookup(b).unwrap().join_with(dup_memfd(&segment)));
        }
        let dir = rng.below(2) as usize;
        let (from, to) = (ends[dir], ends[1 - dir]);
        if rng.below(2) == 0 {
            let max = if rng.below(4) == 0 { 40_000 } else { 300 };
            let n = 1 + rng.below(max);
            let data: Vec<u8> = (0..n).map(|k| byte(dir, dirs[dir].written + k)).collect();
            let w = if step >= hand_back_at && step < hand_back_at + 3 {
                // Maybe handed back if the connection had a segment in use then; plain calls
                // pass fds through the kernel anyway.
                handed_back |= table::lookup(from).unwrap().phase() >= Phase::Ready;
                send_with_fd(from, &data, pipe[0])
            } else {
                write(from, &data)
            };
            if w > 0 {
                dirs[dir].written += w as u64;
            } else {
                assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN), "seed {seed} step {step}: write");
            }
        } else {
            let mut buf = vec![0u8; 1 + rng.below(50_000) as usize];
            let r = read(to, &mut buf);
            if r > 0 {
                for (k, &got) in buf[..r as usize].iter().enumerate() {
                    let pos = dirs[dir].read + k as u64;
                    assert_eq!(got, byte(dir, pos), "seed {seed} step {step}: direction {dir} byte {pos}");
                }
                dirs[dir].read += r as u64;
                assert!(dirs[dir].read <= dirs[dir].written, "seed {seed}: more read than written");
            } else {
                assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN), "seed {seed} step {step}: read");
            }
        }
    }
    // Drain both directions: everything written arrives.
    for dir in 0..2 {
        let to = ends[1 - dir];
        let mut spins = 0;
        while dirs[dir].read < dirs[dir].written {
            let mut buf = vec![0u8; 65536];
            let r = read(to, &mut buf);
            if r > 0 {
                for (k, &got) in buf[..r as usize].iter().enumerate() {
                    assert_eq!(got, byte(dir, dirs[dir].read + k as u64), "seed {seed}: drain {dir}");
                }
                dirs[dir].read += r as u64;
            } else {
                spins += 1;
                assert!(spins < 1_000_000, "seed {seed}: direction {dir} stuck at {} of {}", dirs[dir].read, dirs[dir].written);
            }
        }
    }
    // A few more exchanges move both ends the rest of the way.
    for _ in 0..4 {
        for dir in 0..2 {
            assert_eq!(write(ends[dir], &[byte(dir, dirs[dir].written)]), 1);
            dirs[dir].written += 1;
            let mut one = [0u8; 1];
            let mut tries = 0;
            while read(ends[1 - dir], &mut one) != 1 {
                tries += 1;
                assert!(tries < 1_000_000, "seed {seed}: final byte of {dir}");
            }
            assert_eq!(one[0], byte(dir, dirs[dir].read));
            dirs[dir].read += 1;
        }
    }
    let expected = if handed_back { [Phase::Active, Phase::Plain] } else { [Phase::Active; 2] };
    for fd in ends {
        let c = table::lookup(fd).unwrap();
        let h = c.swap().map(|s| {
            let h = s.segment.header();
            use std::sync::atomic::Ordering::SeqCst;
            format!(
                "state {:?} joined {:?} ready {:?} switch {:?} sock_read {:?} written {:?}",
                s.segment.state(),
                [h.ends[0].joined.load(SeqCst), h.ends[1].joined.load(SeqCst)],
                [h.ends[0].ready.load(SeqCst), h.ends[1].ready.load(SeqCst)],
                [h.ends[0].switch_at.load(SeqCst), h.ends[1].switch_at.load(SeqCst)],
                [h.ends[0].sock_read.load(SeqCst), h.ends[1].sock_read.load(SeqCst)],
                [h.ends[0].sock_written.load(SeqCst), h.ends[1].sock_written.load(SeqCst)],
            )
        });
        assert!(expected.contains(&c.phase()), "seed {seed}: fd {fd}: {:?} {h:?}", c.phase());
    }
    // Nothing is left on the kernel's queues but doorbells, and the rings carried bytes.
    let conn = table::lookup(a).unwrap();
    let header = conn.header();
    assert!(header.ends[0].switch_at.load(std::sync::atomic::Ordering::SeqCst) <= dirs[0].written);
    for fd in [a, b, pipe[0], pipe[1]] {
        // SAFETY: our own fds; the hook forgets them and closes them.
        unsafe { calls::close(fd) };
    }
}

#[test]
fn every_byte_arrives_once_in_order_whenever_the_segment_arrives() {
    for seed in 1..=200u64 {
        run(seed, 4096);
    }
}

#[test]
fn small_rings_and_large_transfers() {
    for seed in 100..=120u64 {
        run(seed, 64);
    }
}

/// A blocking reader thread that is inside the kernel when the segment arrives: the end becomes
/// ready only after that read returned, and nothing is lost.
#[test]
fn a_reader_blocked_in_the_kernel_delays_readiness_and_loses_nothing() {
    tssx_hook::phase::set_claiming(false);
    let (a, b) = socketpair(0);
    assert!(table::track(a, End::Client, Phase::Candidate, None));
    assert!(table::track(b, End::Server, Phase::Candidate, None));
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < 300_000 {
            let mut buf = vec![0u8; 10_000];
            let r = read(b, &mut buf);
            assert!(r > 0, "read failed: {}", std::io::Error::last_os_error());
            got.extend_from_slice(&buf[..r as usize]);
        }
        got
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    let segment = Segment::create(1 << 12).expect("segment");
    assert!(table::lookup(a).unwrap().join_with(dup_memfd(&segment)));
    assert!(table::lookup(b).unwrap().join_with(dup_memfd(&segment)));
    let data: Vec<u8> = (0..300_000u64).map(|i| byte(0, i)).collect();
    let mut sent = 0;
    while sent < data.len() {
        let w = write(a, &data[sent..(sent + 7_000).min(data.len())]);
        assert!(w > 0);
        sent += w as usize;
    }
    let got = reader.join().unwrap();
    assert_eq!(got, data);
    for fd in [a, b] {
        // SAFETY: our own sockets.
        unsafe { calls::close(fd) };
    }
}

/// A fresh non-blocking pair, both ends tracked as plain candidates (client, server).
fn tracked_pair() -> (c_int, c_int) {
    tssx_hook::phase::set_claiming(false);
    let (a, b) = socketpair(libc::SOCK_NONBLOCK);
    assert!(table::track(a, End::Client, Phase::Candidate, None));
    assert!(table::track(b, End::Server, Phase::Candidate, None));
    (a, b)
}

/// Hands both ends of a tracked pair one segment, as the agent would after both claimed.
fn join_both(a: c_int, b: c_int) -> Segment {
    let segment = Segment::create(4096).expect("segment");
    assert!(table::lookup(a).unwrap().join_with(dup_memfd(&segment)));
    assert!(table::lookup(b).unwrap().join_with(dup_memfd(&segment)));
    segment
}

/// Joins both ends of a fresh tracked pair and talks until both are on the rings.
fn active_pair() -> (c_int, c_int, Segment) {
    let (a, b) = tracked_pair();
    let segment = join_both(a, b);
    talk_until_active(a, b);
    (a, b, segment)
}

/// One `recvmsg` on `fd` into `buf`, with `ctrl` as its control buffer: the count, and the
/// header as the call left it (its iovec pointer cleared: it pointed at a local).
fn recvmsg_into(fd: c_int, buf: &mut [u8], ctrl: &mut [u64], flags: c_int) -> (isize, libc::msghdr) {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(ctrl);
    // SAFETY: `msg` describes live buffers.
    let n = unsafe { calls::recvmsg(fd, &mut msg, flags) };
    msg.msg_iov = std::ptr::null_mut();
    (n, msg)
}

/// One `recvmsg` on `fd` of at most `room` bytes (up to 16) with `flags`, as a line of a
/// transcript (count, bytes, `msg_controllen`); the fds it received are closed.
fn recv_line(fd: c_int, room: usize, flags: c_int) -> String {
    let mut buf = [0u8; 16];
    let mut ctrl = [0u64; 8];
    let (n, msg) = recvmsg_into(fd, &mut buf[..room], &mut ctrl, flags);
    let got = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
    for fd in support::received_fds(&msg) {
        // SAFETY: an fd this call received, ours to close.
        unsafe { libc::close(fd) };
    }
    format!("recvmsg {room} flags {flags}: {n} {got:?} controllen {}", msg.msg_controllen)
}

/// Closes the test's own `fds` through the hook (which forgets those it tracks); -1 is skipped.
fn close_all(fds: &[c_int]) {
    for &fd in fds.iter().filter(|&&fd| fd >= 0) {
        // SAFETY: the test's own fds.
        unsafe { calls::close(fd) };
    }
}

/// Reads everything available from `fd` with `recvmsg`, collecting bytes and received fds,
/// until `want` bytes arrived.
fn recv_all(fd: c_int, want: usize) -> (Vec<u8>, Vec<(usize, c_int)>) {
    let mut data = Vec::new();
    let mut fds = Vec::new();
    let mut tries = 0;
    while data.len() < want {
        let mut buf = [0u8; 256];
        let mut cbuf = [0u64; 16];
        let (n, msg) = recvmsg_into(fd, &mut buf, &mut cbuf, 0);
        if n <= 0 {
            tries += 1;
            assert!(tries < 1_000_000, "stuck at {} of {want}: {:?}", data.len(), String::from_utf8_lossy(&data));
            continue;
        }
        // SAFETY: the kernel filled the control buffer.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    // Where the read that brought it ended (filled in below).
                    fds.push((usize::MAX, std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>())));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        data.extend_from_slice(&buf[..n as usize]);
        if let Some(last) = fds.last_mut().filter(|f| f.0 == usize::MAX) {
            last.0 = data.len();
        }
    }
    (data, fds)
}

/// `sendmsg` with `SCM_RIGHTS` on a swapped connection stays on the rings: the fd travels
/// through the kernel and arrives with the read that reaches its message's first byte, which
/// ends after the message's bytes, as the kernel's does; both ends stay active.
#[test]
fn ancillary_data_stays_on_the_rings_in_its_place() {
    let (a, b, _segment) = active_pair();
    assert_eq!(write(a, b"on the ring;"), 12);
    let mut pipe = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    assert_eq!(send_with_fd(a, b"with an fd;", pipe[0]), 11);
    assert_eq!(write(a, b"after."), 6);
    // The other way too: b is still on the rings until it notices.
    assert_eq!(write(b, b"reply"), 5);
    let (data, fds) = recv_all(b, 29);
    assert_eq!(&data, b"on the ring;with an fd;after.");
    assert_eq!(fds.len(), 1, "one fd arrived");
    assert_eq!(fds[0].0, 23, "the read that brought the fd ended with its message");
    let (back, none) = recv_all(a, 5);
    assert_eq!(&back, b"reply");
    assert!(none.is_empty());
    assert_eq!(write(b, b"still swapped"), 13);
    let (more, _) = recv_all(a, 13);
    assert_eq!(&more, b"still swapped");
    for fd in [a, b] {
        assert_eq!(table::lookup(fd).unwrap().phase(), Phase::Active, "fd {fd}");
    }
    for fd in [a, b, pipe[0], pipe[1], fds[0].1] {
        // SAFETY: our own fds.
        unsafe { calls::close(fd) };
    }
}

/// What the server sees of "pq" then "PQ" from the client (`with_fd`: "PQ" sent with an fd),
/// the server's SO_PASSCRED turned on (`passcred`) before it reads: a peek of 4, then reads of
/// 4. `swap`: the segment arrives between the two writes (the first on the socket, the second
/// on the ring), else plain.
fn across_the_switch(swap: bool, passcred: bool, with_fd: bool) -> Vec<String> {
    pieces_across(swap, passcred, with_fd, 4, &[libc::MSG_PEEK, 0, 0])
}

/// [`across_the_switch`] with `recvmsg`s of at most `size` bytes, one per entry of `steps`
/// (its flags).
fn pieces_across(swap: bool, passcred: bool, with_fd: bool, size: usize, steps: &[c_int]) -> Vec<String> {
    tssx_hook::phase::set_claiming(false);
    let (a, b) = socketpair(libc::SOCK_NONBLOCK);
    let segment = Segment::create(4096).expect("segment");
    if swap {
        assert!(table::track(a, End::Client, Phase::Candidate, None));
        assert!(table::track(b, End::Server, Phase::Candidate, None));
    }
    assert_eq!(write(a, b"pq"), 2);
    if swap {
        assert!(table::lookup(a).unwrap().join_with(dup_memfd(&segment)));
        assert!(table::lookup(b).unwrap().join_with(dup_memfd(&segment)));
    }
    // Each end looks at the connection once (a poll): a swapped one then sees its peer's
    // segment and moves its writes onto the ring.
    for fd in [b, a] {
        let mut p = libc::pollfd { fd, events: libc::POLLIN | libc::POLLOUT, revents: 0 };
        // SAFETY: one live pollfd.
        assert!(unsafe { calls::poll(&mut p, 1, 0) } > 0);
    }
    let mut pipe = [-1; 2];
    if with_fd {
        // SAFETY: a live array of two.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        assert_eq!(send_with_fd(a, b"PQ", pipe[0]), 2);
    } else {
        assert_eq!(write(a, b"PQ"), 2);
    }
    if swap {
        let mut queued: c_int = 0;
        // SAFETY: FIONREAD into a live int, on the real socket.
        assert_eq!(unsafe { libc::ioctl(b, libc::FIONREAD, &mut queued) }, 0);
        // (With an fd: the socket also holds its marker byte.)
        assert_eq!(queued, 2 + c_int::from(with_fd), "the second write went on the ring");
    }
    let on: c_int = 1;
    if passcred {
        // SAFETY: a live int of the stated size.
        let rc = unsafe { calls::setsockopt(b, libc::SOL_SOCKET, libc::SO_PASSCRED, (&raw const on).cast(), 4) };
        assert_eq!(rc, 0);
    }
    let seen = steps.iter().map(|&flags| recv_line(b, size, flags)).collect();
    close_all(&[pipe[0], pipe[1], a, b]);
    seen
}

/// Bytes on both sides of the peer's switch are one read and one peek, as the kernel's, also
/// with SO_PASSCRED turned on before them (found by the conformance test, rarely: the switch
/// fell between two writes of its `creds unread` scenario, and the peek returned the socket's
/// two bytes alone).
#[test]
fn a_peek_and_a_read_span_the_peers_switch() {
    for passcred in [false, true] {
        let plain = across_the_switch(false, passcred, false);
        assert_eq!(across_the_switch(true, passcred, false), plain, "SO_PASSCRED {passcred}");
    }
}

/// The same when the first bytes on the ring came with an fd: the kernel's peek glues the
/// socket's bytes with that message and peeks its fd (found by the conformance test's run that
/// migrates while in use, rarely: `scm_rights_in_the_stream`, the switch right before the
/// message with the fd, and the peek returned the socket's byte alone).
#[test]
fn a_peek_spans_the_peers_switch_into_a_message_with_fds() {
    let plain = across_the_switch(false, false, true);
    assert!(plain[0].contains("4 \"pqPQ\" controllen 24"), "{plain:?}");
    assert_eq!(across_the_switch(true, false, true), plain);
}

/// The conformance scenario `scm_rights_in_the_stream`'s "partial reads and peeks around the
/// fd byte": the client writes "xy", then "ABCDEF" with an fd; the server reads 1, peeks 10,
/// reads 1, peeks 10, reads 3 and 10. `join`: when the segment arrives (0: before "xy", 1:
/// after it, 3: after the message, 2: never); `looks`: which ends look at the connection (a
/// poll) before the message, and in which order.
fn around_the_fd_byte(join: u8, looks: &[usize]) -> Vec<String> {
    tssx_hook::phase::set_claiming(false);
    let (a, b) = socketpair(libc::SOCK_NONBLOCK);
    let segment = Segment::create(4096).expect("segment");
    assert!(table::track(a, End::Client, Phase::Candidate, None));
    assert!(table::track(b, End::Server, Phase::Candidate, None));
    let join_now = || {
        assert!(table::lookup(a).unwrap().join_with(dup_memfd(&segment)));
        assert!(table::lookup(b).unwrap().join_with(dup_memfd(&segment)));
    };
    if join == 0 {
        join_now();
    }
    assert_eq!(write(a, b"xy"), 2);
    if join == 1 {
        join_now();
    }
    for &end in looks {
        let fd = [a, b][end];
        let mut p = libc::pollfd { fd, events: libc::POLLIN | libc::POLLOUT, revents: 0 };
        // SAFETY: one live pollfd.
        unsafe { calls::poll(&mut p, 1, 0) };
    }
    let mut pipe = [-1; 2];
    // SAFETY: a live array of two.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    assert_eq!(send_with_fd(a, b"ABCDEF", pipe[0]), 6);
    if join == 3 {
        join_now();
        for &end in looks {
            let mut p = libc::pollfd { fd: [a, b][end], events: libc::POLLIN | libc::POLLOUT, revents: 0 };
            // SAFETY: one live pollfd.
            unsafe { calls::poll(&mut p, 1, 0) };
        }
    }
    let mut seen = Vec::new();
    let mut queued: c_int = 0;
    // SAFETY: FIONREAD into a live int, through the hook (the scenario waits for 8).
    let rc = unsafe { calls::ioctl(b, libc::FIONREAD, (&raw mut queued).cast()) };
    seen.push(format!("FIONREAD {rc} {queued}"));
    for (room, flags) in [(1, 0), (10, libc::MSG_PEEK), (1, 0), (10, libc::MSG_PEEK), (3, 0), (10, 0)] {
        seen.push(recv_line(b, room, flags));
    }
    close_all(&[pipe[0], pipe[1], a, b]);
    seen
}

#[test]
fn partial_reads_and_peeks_around_the_fd_byte_whenever_the_segment_arrives() {
    let plain = around_the_fd_byte(2, &[]);
    assert!(plain[2].contains("7 \"yABCDEF\" controllen 24"), "{plain:?}");
    for join in [0, 1, 3] {
        for looks in [&[][..], &[0], &[1], &[0, 1], &[1, 0], &[1, 0, 1], &[0, 1, 0]] {
            assert_eq!(around_the_fd_byte(join, looks), plain, "segment at {join}, looks {looks:?}");
        }
    }
}

/// "abc", then "DE" with an fd, then "f", all on the rings when `swap` (else a plain socket
/// pair), peeked and read in pieces of `size` bytes.
fn pieces_on_the_rings(swap: bool, size: usize) -> Vec<String> {
    let [a, b] = support::socketpair(libc::SOCK_NONBLOCK);
    if swap {
        support::install_swapped([a, b], 4096);
    }
    assert_eq!(write(a, b"abc"), 3);
    let mut pipe = [-1; 2];
    // SAFETY: a live array of two.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    assert_eq!(send_with_fd(a, b"DE", pipe[0]), 2);
    assert_eq!(write(a, b"f"), 1);
    let seen = [libc::MSG_PEEK, 0, libc::MSG_PEEK, 0, libc::MSG_PEEK, 0, 0, 0].into_iter().map(|flags| recv_line(b, size, flags)).collect();
    close_all(&[pipe[0], pipe[1], a, b]);
    seen
}

/// A peek with a control buffer gets the fds of the first message with fds from where it
/// starts, as the kernel's (whose peek, once its buffer is full, walks on along the queue to
/// them), whatever the sizes, on the rings and across the peer's switch.
#[test]
fn peeks_get_the_fds_the_kernels_get() {
    for size in 1..=6 {
        let plain = pieces_on_the_rings(false, size);
        assert!(plain[0].ends_with("controllen 24"), "{plain:?}");
        assert_eq!(pieces_on_the_rings(true, size), plain, "on the rings, pieces of {size}");
        let steps = [libc::MSG_PEEK, 0, libc::MSG_PEEK, 0, 0];
        let plain = pieces_across(false, false, true, size, &steps);
        assert_eq!(pieces_across(true, false, true, size, &steps), plain, "across the switch, pieces of {size}");
    }
}

fn epoll_ctl(ep: c_int, op: c_int, fd: c_int, data: u64) {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: data };
    // SAFETY: a live event.
    assert_eq!(unsafe { calls::epoll_ctl(ep, op, fd, &mut ev) }, 0, "epoll_ctl {op} through {ep}");
}

/// `epoll_wait(ep, 1000)`: the (events, data) reported.
fn epoll_wait(ep: c_int) -> Vec<(u32, u64)> {
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: a live array of four.
    let n = unsafe { calls::epoll_wait(ep, out.as_mut_ptr(), 4, 1000) };
    assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
    out[..n as usize].iter().map(|e| (e.events, e.u64)).collect()
}

/// Talks both ways on a tracked pair until both ends are on the rings.
fn talk_until_active(a: c_int, b: c_int) {
    for _ in 0..10 {
        for (from, to) in [(a, b), (b, a)] {
            assert_eq!(write(from, b"x"), 1);
            let mut one = [0u8; 1];
            let mut tries = 0;
            while read(to, &mut one) != 1 {
                tries += 1;
                assert!(tries < 1_000_000, "a byte of the exchange");
            }
        }
    }
    for fd in [a, b] {
        assert_eq!(table::lookup(fd).unwrap().phase(), Phase::Active);
    }
}

/// One epoll instance under several numbers (mio, tokio's I/O driver, registers through a
/// duplicate and waits on the original): a registration made through one number and changed
/// through another while the connection is plain moves onto the rings as the kernel holds it,
/// with its last data, and is served through the number left after the others closed (found
/// by the conformance scenario `epoll_dup` migrating while in use: the record kept the `ADD`'s
/// data, and lost the registration when the number it named closed).
#[test]
fn a_registration_made_through_several_numbers_of_an_instance_migrates_as_the_kernel_holds_it() {
    // (made through the home number, changed through a copy dup2 made; numbers closed before
    // the connection migrates)
    for (made_through_home, close_home) in [(false, true), (true, true), (true, false)] {
        let (a, b) = tracked_pair();
        // SAFETY: plain arguments.
        let ep = unsafe { calls::epoll_create1(libc::EPOLL_CLOEXEC) };
        // SAFETY: plain arguments.
        let dup = unsafe { calls::fcntl(ep, libc::F_DUPFD_CLOEXEC, 0) };
        // SAFETY: plain arguments.
        let other = unsafe { calls::epoll_create1(0) };
        assert!(ep >= 0 && dup >= 0 && other >= 0);
        epoll_ctl(if made_through_home { ep } else { dup }, libc::EPOLL_CTL_ADD, b, 1);
        // SAFETY: our fds: `other` becomes a third number of the instance.
        assert_eq!(unsafe { calls::dup2(ep, other) }, other);
        epoll_ctl(other, libc::EPOLL_CTL_MOD, b, 2);
        let mut open = vec![dup];
        for (fd, close) in [(ep, close_home), (other, true)] {
            if close {
                // SAFETY: ours; the instance lives on under `dup`.
                assert_eq!(unsafe { calls::close(fd) }, 0);
            } else {
                open.push(fd);
            }
        }
        let _segment = join_both(a, b);
        talk_until_active(a, b);
        assert_eq!(write(a, b"z"), 1);
        let case = format!("made through the home number: {made_through_home}, home closed: {close_home}");
        assert_eq!(epoll_wait(dup), [(libc::EPOLLIN as u32, 2)], "{case}");
        let mut one = [0u8; 1];
        assert_eq!(read(b, &mut one), 1);
        // Level-triggered and read: nothing more, neither the hook's registration nor the
        // application's left in the kernel.
        let mut none = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: a live array of four.
        let n = unsafe { calls::epoll_wait(dup, none.as_mut_ptr(), 4, 0) };
        let data = none[0].u64;
        assert_eq!(n, 0, "{case}: reported {data:x}");
        open.extend([a, b]);
        close_all(&open);
    }
}

/// One `poll` of `fds` (all for `POLLIN`) through the hook, `timeout` ms: its count.
fn poll_in(fds: &[c_int], timeout: c_int) -> c_int {
    let mut set: Vec<libc::pollfd> = fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: a live array of `set.len()` entries.
    unsafe { calls::poll(set.as_mut_ptr(), set.len() as libc::nfds_t, timeout) }
}

/// A `poll` that sleeps on a swapped connection takes back exactly the sleeps it announced: a
/// connection of its set that becomes ready during the call (its raw call's end steps it on)
/// was not announced on, and withdrawing on it too took its end's counter below zero. The
/// next sleep's announcement then left it at 0: the peer's writes saw no sleeper and rang no
/// doorbell, and the sleep went on after the data arrived (the migrating echo scenarios hung
/// in `ppoll` with data on the ring).
#[test]
fn a_poll_withdraws_only_the_sleeps_it_announced() {
    let (x_client, x_server, _x_segment) = active_pair();
    // A second connection, joined at both ends but not ready yet: its raw call in the poll
    // below moves it on.
    let (a, b) = tracked_pair();
    let _segment = join_both(a, b);
    assert!(table::lookup(b).unwrap().phase() < Phase::Ready);
    // Nothing to read on either: the poll sleeps (announced on `x_server` only) and times out.
    assert_eq!(poll_in(&[x_server, b], 20), 0);
    assert!(table::lookup(b).unwrap().phase() >= Phase::Ready, "the poll's raw call made it ready");
    let asleep = |fd: c_int| table::lookup(fd).unwrap().header().asleep.0[End::Server.index()].load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asleep(x_server), 0, "the announced connection's sleep is taken back");
    assert_eq!(asleep(b), 0, "no sleep was announced on the connection that became ready");
    // Both directions onto the rings; then a sleep on it must be woken by the peer's write.
    talk_until_active(a, b);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(write(a, b"wake"), 4);
    });
    let started = std::time::Instant::now();
    assert_eq!(poll_in(&[b], 5_000), 1);
    let slept = started.elapsed();
    writer.join().unwrap();
    assert!(slept < std::time::Duration::from_secs(2), "the write woke the poll after {slept:?}");
    let mut buf = [0u8; 8];
    assert_eq!(read(b, &mut buf), 4);
    close_all(&[x_client, x_server, a, b]);
}

/// `epoll_wait(ep, 0)`: the events reported (one entry at most).
fn epoll_poll(ep: c_int) -> u32 {
    let mut out = [libc::epoll_event { events: 0, u64: 0 }];
    // SAFETY: a live array of one.
    let n = unsafe { calls::epoll_wait(ep, out.as_mut_ptr(), 1, 0) };
    assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
    if n == 1 {
        out[0].events
    } else {
        0
    }
}

/// What an edge-triggered `EPOLLOUT` registration of the client reports, with zero-timeout
/// waits, as the client fills its socket until EAGAIN and the server drains it; the pair
/// tracked and joined after the fill (`migrating`) or plain.
fn room_edges_after_a_drain(migrating: bool) -> Vec<String> {
    let (a, b) = if migrating { tracked_pair() } else { socketpair(libc::SOCK_NONBLOCK) };
    // SAFETY: plain arguments.
    let ep = unsafe { calls::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let mut ev = libc::epoll_event { events: (libc::EPOLLOUT | libc::EPOLLET) as u32, u64: 7 };
    // SAFETY: a live event.
    assert_eq!(unsafe { calls::epoll_ctl(ep, libc::EPOLL_CTL_ADD, a, &mut ev) }, 0);
    let mut lines = vec![format!("idle: {:#x}", epoll_poll(ep)), format!("again: {:#x}", epoll_poll(ep))];
    let chunk = [b'f'; 4096];
    let mut filled = 0;
    loop {
        let w = write(a, &chunk);
        if w < 0 {
            break;
        }
        filled += w as usize;
    }
    let _segment = migrating.then(|| join_both(a, b));
    // The client's call after the segment arrived moves it on (its registration becomes the
    // hook's); the socket is still full.
    lines.push(format!("write full: {}", write(a, b"z")));
    lines.push(format!("full: {:#x}", epoll_poll(ep)));
    let mut buf = vec![0u8; 65536];
    let mut drained = 0;
    // Most of the bytes, then a look at the client (a switch of its direction may come now),
    // then the rest.
    while drained < filled * 3 / 4 {
        let want = buf.len().min(filled * 3 / 4 - drained);
        let r = read(b, &mut buf[..want]);
        assert!(r > 0);
        drained += r as usize;
    }
    // (Its answer is the ring's room once the client's direction switched: not compared.)
    let mut p = libc::pollfd { fd: a, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one live pollfd.
    unsafe { calls::poll(&mut p, 1, 0) };
    if migrating {
        assert_eq!(table::lookup(a).unwrap().phase(), Phase::Active, "the poll's tick switched the client's direction");
    }
    loop {
        let r = read(b, &mut buf);
        if r <= 0 {
            break;
        }
        drained += r as usize;
    }
    lines.push(format!("drained all: {}", drained == filled));
    lines.push(format!("after the drain: {:#x}", epoll_poll(ep)));
    lines.push(format!("again: {:#x}", epoll_poll(ep)));
    close_all(&[ep, a, b]);
    lines
}

/// A zero-timeout `epoll_wait` whose rings had nothing to report but whose kernel events were
/// only the hook's (the socket's room edge of a half-way connection, counted when its tagged
/// event is filtered out) reports the edge in the same call, as the kernel's wait does (found
/// by the conformance scenario `nonblock`, migrating: "epoll ET EPOLLOUT after drain -> 0x0").
#[test]
fn a_zero_timeout_wait_reports_the_room_edge_its_own_kernel_events_brought() {
    assert_eq!(room_edges_after_a_drain(true), room_edges_after_a_drain(false));
}
