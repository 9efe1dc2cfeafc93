//! Readiness calls on swapped fds behave as the kernel's: `select` over a set larger than
//! `FD_SETSIZE`, epoll interest lists shared across fork, and registrations that outlive the
//! fd they were made with while a dup keeps the connection open.

use libc::c_int;
use tssx_hook::calls;

mod support;
use support::Pair;

/// The tests run one at a time: each closes fd numbers and checks what the kernel says about
/// them afterwards (EBADF), forks, and counts the process's connections, which a test running
/// on another thread would change (a closed number reused by it gives ENOENT instead).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn swapped_pair(ring: usize) -> Pair {
    let fds = support::socketpair(0);
    support::install_swapped(fds, ring);
    Pair { client: fds[0], server: fds[1] }
}

fn write(fd: c_int, data: &[u8]) -> isize {
    // SAFETY: a live buffer.
    unsafe { calls::write(fd, data.as_ptr().cast(), data.len()) }
}

fn read(fd: c_int, buf: &mut [u8]) -> isize {
    // SAFETY: a live buffer.
    unsafe { calls::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Raises the soft fd limit so that `fd` can be used.
fn allow_fd(fd: c_int) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a live out-struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur <= fd as libc::rlim_t {
        lim.rlim_cur = (fd as libc::rlim_t + 1).max(lim.rlim_cur).min(lim.rlim_max);
        // SAFETY: a live struct.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
}

fn bit(set: &[u64], fd: usize) -> bool {
    set[fd / 64] & (1 << (fd % 64)) != 0
}

/// `select` with a swapped fd at 1500 in a caller's bitmap of exactly `nfds` bits (rounded to
/// whole words): its readiness comes from the ring; bits below nfds are written back, and
/// nothing past the bitmap is touched.
#[test]
fn select_sees_a_swapped_fd_above_fd_setsize() {
    let _one = one_at_a_time();
    const HIGH: c_int = 1500;
    allow_fd(HIGH + 10);
    let mut p = swapped_pair(4096);
    // SAFETY: dup2 of our socket onto a free number.
    assert_eq!(unsafe { calls::dup2(p.server, HIGH) }, HIGH);
    // SAFETY: our fd.
    unsafe { calls::close(p.server) };
    p.server = HIGH;
    let nfds = HIGH as usize + 1;
    let words = nfds.div_ceil(64);
    // One guard word past the bitmap, which must stay as it is.
    let mut rd = vec![0u64; words + 1];
    let mut wr = vec![0u64; words + 1];
    rd[words] = u64::MAX;
    wr[words] = u64::MAX;
    rd[HIGH as usize / 64] |= 1 << (HIGH % 64);
    wr[HIGH as usize / 64] |= 1 << (HIGH % 64);
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    // SAFETY: live bitmaps of `nfds` bits; a live timeval.
    let n = unsafe { calls::select(nfds as c_int, rd.as_mut_ptr().cast(), wr.as_mut_ptr().cast(), std::ptr::null_mut(), &mut tv) };
    assert_eq!(n, 1, "nothing to read yet, room to write; errno {}", errno());
    assert!(!bit(&rd, HIGH as usize) && bit(&wr, HIGH as usize));
    assert_eq!(rd[words], u64::MAX, "the word past the bitmap was written");

    assert_eq!(write(p.client, b"x"), 1);
    rd.iter_mut().take(words).for_each(|w| *w = 0);
    rd[HIGH as usize / 64] |= 1 << (HIGH % 64);
    let mut tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: as above.
    let n = unsafe { calls::select(nfds as c_int, rd.as_mut_ptr().cast(), std::ptr::null_mut(), std::ptr::null_mut(), &mut tv) };
    assert_eq!(n, 1, "errno {}", errno());
    assert!(bit(&rd, HIGH as usize));
    assert_eq!(rd.iter().take(words).map(|w| w.count_ones()).sum::<u32>(), 1);

    // pselect, blocking until the peer writes (from the ring after a doorbell).
    let mut buf = [0u8; 4];
    assert_eq!(read(HIGH, &mut buf), 1);
    let client = p.client;
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(write(client, b"y"), 1);
    });
    rd[HIGH as usize / 64] |= 1 << (HIGH % 64);
    // SAFETY: as above; no timeout, no mask.
    let n = unsafe {
        calls::pselect(
            nfds as c_int,
            rd.as_mut_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    writer.join().unwrap();
    assert_eq!(n, 1, "errno {}", errno());
    assert!(bit(&rd, HIGH as usize));
    assert_eq!(read(HIGH, &mut buf), 1);
    assert_eq!(buf[0], b'y');
}

/// A bit set for a closed fd inside the fd table: EBADF, as from the kernel.
#[test]
fn select_above_fd_setsize_reports_ebadf_for_a_closed_fd() {
    let _one = one_at_a_time();
    const HIGH: c_int = 1300;
    allow_fd(HIGH + 10);
    let mut p = swapped_pair(4096);
    // SAFETY: dup2 of our socket onto a free number.
    assert_eq!(unsafe { calls::dup2(p.server, HIGH) }, HIGH);
    // SAFETY: our fd.
    unsafe { calls::close(p.server) };
    p.server = HIGH;
    let closed = HIGH as usize - 7;
    let nfds = HIGH as usize + 1;
    let mut rd = vec![0u64; nfds.div_ceil(64)];
    rd[HIGH as usize / 64] |= 1 << (HIGH % 64);
    rd[closed / 64] |= 1 << (closed % 64);
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    // SAFETY: a live bitmap of `nfds` bits.
    let n = unsafe { calls::select(nfds as c_int, rd.as_mut_ptr().cast(), std::ptr::null_mut(), std::ptr::null_mut(), &mut tv) };
    assert_eq!((n, errno()), (-1, libc::EBADF));
}

fn epoll() -> c_int {
    // SAFETY: plain argument; the hook notes the instance.
    let ep = unsafe { calls::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    ep
}

fn ctl(ep: c_int, op: c_int, fd: c_int, events: u32, data: u64) -> (c_int, c_int) {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a live event.
    let rc = unsafe { calls::epoll_ctl(ep, op, fd, &mut ev) };
    (rc, if rc < 0 { errno() } else { 0 })
}

/// epoll_wait with `timeout` ms; the (events, data) reported, sorted by data.
fn ewait(ep: c_int, timeout: c_int) -> Vec<(u32, u64)> {
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 8];
    // SAFETY: a live array of 8 events.
    let n = unsafe { calls::epoll_wait(ep, out.as_mut_ptr(), 8, timeout) };
    assert!(n >= 0, "epoll_wait: errno {}", errno());
    let mut got: Vec<(u32, u64)> = out[..n as usize].iter().map(|e| (e.events, e.u64)).collect();
    got.sort_by_key(|&(_, d)| d);
    got
}

const IN: u32 = libc::EPOLLIN as u32;

/// One `epoll_wait` reports each registration at most once, as the kernel does (one entry per
/// registration): a level-triggered swapped fd with data beside a ready plain fd came twice
/// (the ring was looked at again after the plain fds' events), and a server with blocking
/// sockets then blocked in its second read (found by `cargo xtask scale`).
#[test]
fn one_wait_reports_a_ready_swapped_fd_once_beside_a_ready_plain_fd() {
    let _one = one_at_a_time();
    let pair = swapped_pair(4096);
    let mut pipe = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let ep = epoll();
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, pair.server, IN, 1), (0, 0));
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, pipe[0], IN, 2), (0, 0));
    assert_eq!(write(pair.client, b"ring"), 4);
    // SAFETY: our pipe.
    assert_eq!(unsafe { libc::write(pipe[1], b"p".as_ptr().cast(), 1) }, 1);
    let mut plain_reports = 0;
    for round in 0..24 {
        // Level-triggered: nothing is read, so every wait reports the swapped fd, once; the
        // plain fd too, once (a busy loop of ring events asks the kernel every 8th call only).
        let got = ewait(ep, 1000);
        assert!(got == [(IN, 1), (IN, 2)] || got == [(IN, 1)], "round {round}: {got:?}");
        plain_reports += got.len() - 1;
    }
    assert!(plain_reports >= 3, "the plain fd reported {plain_reports} times in 24 waits");
    for fd in [ep, pipe[0], pipe[1]] {
        // SAFETY: our fds.
        unsafe { calls::close(fd) };
    }
}

/// A registered fd closed while a dup keeps the connection open: the registration stays (the
/// kernel's belongs to the open file) and reports with its data until the last fd closes;
/// `EPOLL_CTL_DEL` of the closed number is EBADF; the dup can be registered beside it.
#[test]
fn a_registration_outlives_its_fd_while_a_dup_keeps_the_connection() {
    let _one = one_at_a_time();
    let mut p = swapped_pair(4096);
    let ep = epoll();
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, p.server, IN, 7), (0, 0));
    // SAFETY: plain argument.
    let copy = unsafe { calls::dup(p.server) };
    assert!(copy >= 0);
    // SAFETY: our fd; the dup keeps the connection.
    assert_eq!(unsafe { calls::close(p.server) }, 0);
    let closed = p.server;
    p.server = copy;
    assert_eq!(ewait(ep, 0), vec![]);
    assert_eq!(write(p.client, b"a"), 1);
    assert_eq!(ewait(ep, 1000), vec![(IN, 7)], "the registration reports through the dup");
    assert_eq!(ctl(ep, libc::EPOLL_CTL_DEL, closed, 0, 0), (-1, libc::EBADF));
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, copy, IN | libc::EPOLLET as u32, 8), (0, 0));
    assert_eq!(ewait(ep, 0), vec![(IN, 7), (IN, 8)]);
    assert_eq!(ewait(ep, 0), vec![(IN, 7)], "level-triggered again, the edge was seen");
    let mut buf = [0u8; 4];
    assert_eq!(read(copy, &mut buf), 1);
    assert_eq!(ewait(ep, 0), vec![]);
    // Blocking: a doorbell wakes the wait.
    let client = p.client;
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(write(client, b"b"), 1);
    });
    assert_eq!(ewait(ep, 5000), vec![(IN, 7), (IN, 8)]);
    writer.join().unwrap();
    assert_eq!(read(copy, &mut buf), 1);
    // SAFETY: the last fd of the connection: both registrations go with it.
    assert_eq!(unsafe { calls::close(copy) }, 0);
    p.server = -1;
    // The peer sees EOF; nothing is registered any more (the closed connection reports nothing,
    // though its peer's end is readable and writable).
    assert_eq!(read(p.client, &mut buf), 0);
    assert_eq!(ewait(ep, 0), vec![]);
    // SAFETY: ours.
    unsafe { calls::close(ep) };
}

/// Waits for `pid` and returns its exit status.
fn reap(pid: libc::pid_t) -> c_int {
    let mut status = 0;
    // SAFETY: a live out-int.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    libc::WEXITSTATUS(status)
}

/// Runs `f` in a forked child (through the hook's fork); the child exits with `f`'s value.
fn in_child(f: impl FnOnce() -> c_int) -> c_int {
    // SAFETY: the child only runs `f` (the hook's calls, no locks other threads of the test
    // harness could hold) and leaves with `_exit`.
    let pid = unsafe { calls::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(99);
        // SAFETY: ends the child without running the harness's destructors.
        unsafe { libc::_exit(code) };
    }
    reap(pid)
}

/// An epoll instance shared across fork has one interest list: `EPOLL_CTL_MOD`, `DEL` and
/// `ADD` made in the child are the parent's, and `EPOLLONESHOT` disarmed by the parent's wait
/// is disarmed in the child.
#[test]
fn fork_shares_one_interest_list() {
    let _one = one_at_a_time();
    let p = swapped_pair(4096);
    let ep = epoll();
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, p.server, IN, 1), (0, 0));
    let server = p.server;
    // The child changes the registration.
    let code = in_child(|| {
        let (rc, _) = ctl(ep, libc::EPOLL_CTL_MOD, server, IN | libc::EPOLLONESHOT as u32, 2);
        c_int::from(rc != 0)
    });
    assert_eq!(code, 0);
    assert_eq!(write(p.client, b"x"), 1);
    assert_eq!(ewait(ep, 1000), vec![(IN, 2)], "the child's MOD");
    assert_eq!(ewait(ep, 0), vec![], "disarmed after one report");
    // The child sees it disarmed, re-arms it edge-triggered, and takes the edge.
    let code = in_child(|| {
        if !ewait(ep, 0).is_empty() {
            return 1;
        }
        if ctl(ep, libc::EPOLL_CTL_MOD, server, IN | libc::EPOLLET as u32, 3).0 != 0 {
            return 2;
        }
        if ewait(ep, 0) != vec![(IN, 3)] {
            return 3;
        }
        0
    });
    assert_eq!(code, 0);
    assert_eq!(ewait(ep, 0), vec![], "the edge was taken by the child");
    assert_eq!(write(p.client, b"y"), 1);
    assert_eq!(ewait(ep, 1000), vec![(IN, 3)], "a new edge");
    // The child deletes it, and adds it back with other data.
    let code = in_child(|| {
        if ctl(ep, libc::EPOLL_CTL_DEL, server, 0, 0).0 != 0 {
            return 1;
        }
        if ctl(ep, libc::EPOLL_CTL_DEL, server, 0, 0) != (-1, libc::ENOENT) {
            return 2;
        }
        c_int::from(ctl(ep, libc::EPOLL_CTL_ADD, server, IN, 4).0 != 0) * 3
    });
    assert_eq!(code, 0);
    assert_eq!(ewait(ep, 0), vec![(IN, 4)]);
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, server, IN, 5), (-1, libc::EEXIST));
    let mut buf = [0u8; 4];
    assert_eq!(read(server, &mut buf), 2);
    assert_eq!(ewait(ep, 0), vec![]);
    // SAFETY: ours.
    unsafe { calls::close(ep) };
}

/// A connection made after the fork and registered by one process in the shared instance
/// reports in the other process too (the kernel's list serves it: it is handed back first).
#[test]
fn a_connection_registered_after_fork_reports_in_the_other_process() {
    let _one = one_at_a_time();
    let p = swapped_pair(4096);
    let ep = epoll();
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, p.server, IN, 1), (0, 0));
    // Pipes: the child tells the parent it has registered its new connection (`up`), the
    // parent tells the child it saw it (`down`).
    let (mut up, mut down) = ([0; 2], [0; 2]);
    // SAFETY: live out-arrays.
    assert_eq!(unsafe { libc::pipe(up.as_mut_ptr()) + libc::pipe(down.as_mut_ptr()) }, 0);
    // SAFETY: as in `in_child`.
    let pid = unsafe { calls::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the ends the child does not use (so a failed parent never leaves it waiting).
        unsafe {
            libc::close(up[0]);
            libc::close(down[1]);
        }
        let code = std::panic::catch_unwind(|| {
            let q = swapped_pair(4096);
            if ctl(ep, libc::EPOLL_CTL_ADD, q.server, IN, 9).0 != 0 {
                return 1;
            }
            if write(q.client, b"z") != 1 {
                return 2;
            }
            // SAFETY: a live byte.
            unsafe { libc::write(up[1], b"r".as_ptr().cast(), 1) };
            // Keep the connection until the parent saw it.
            let mut b = 0u8;
            // SAFETY: a live byte.
            unsafe { libc::read(down[0], (&mut b as *mut u8).cast(), 1) };
            let mut buf = [0u8; 4];
            if read(q.server, &mut buf) != 1 || buf[0] != b'z' {
                return 3;
            }
            0
        })
        .unwrap_or(99);
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    let mut b = 0u8;
    // SAFETY: a live byte.
    assert_eq!(unsafe { libc::read(up[0], (&mut b as *mut u8).cast(), 1) }, 1);
    assert_eq!(ewait(ep, 5000), vec![(IN, 9)], "the child's connection, through the kernel");
    // SAFETY: a live byte (the child reads it back).
    unsafe { libc::write(down[1], b"g".as_ptr().cast(), 1) };
    assert_eq!(reap(pid), 0);
    assert_eq!(write(p.client, b"x"), 1);
    assert_eq!(ewait(ep, 1000), vec![(IN, 1)], "the parent's own, still from the ring");
    drop(p);
    // SAFETY: ours.
    unsafe {
        calls::close(ep);
        for fd in up.into_iter().chain(down) {
            libc::close(fd);
        }
    }
}

/// The registered connection's last fd in this process closes while another process still
/// holds it: the kernel keeps the registration (the file is open) and keeps reporting it here,
/// with its data; the hook cannot read that process's rings for this one, so the connection is
/// handed back and the registration becomes the kernel's.
#[test]
fn a_registration_reports_after_its_last_fd_here_closes_while_another_process_holds_it() {
    let _one = one_at_a_time();
    let mut p = swapped_pair(4096);
    let mut down = [0; 2];
    // SAFETY: a live out-array.
    assert_eq!(unsafe { libc::pipe(down.as_mut_ptr()) }, 0);
    // SAFETY: as in `in_child`.
    let pid = unsafe { calls::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the end the child does not use (so a failed parent never leaves it waiting).
        unsafe { libc::close(down[1]) };
        // Holds the connection until the parent is done.
        let mut b = 0u8;
        // SAFETY: a live byte.
        unsafe { libc::read(down[0], (&mut b as *mut u8).cast(), 1) };
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
    let ep = epoll();
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, p.server, IN, 3), (0, 0));
    // SAFETY: our fd; the child keeps the connection.
    assert_eq!(unsafe { calls::close(p.server) }, 0);
    p.server = -1;
    assert_eq!(ewait(ep, 0), vec![]);
    assert_eq!(write(p.client, b"x"), 1);
    assert_eq!(ewait(ep, 5000), vec![(IN, 3)], "reported through the kernel");
    // SAFETY: a live byte.
    unsafe { libc::write(down[1], b"g".as_ptr().cast(), 1) };
    assert_eq!(reap(pid), 0);
    // SAFETY: ours.
    unsafe {
        calls::close(ep);
        libc::close(down[0]);
        libc::close(down[1]);
    }
}

/// A connection that only the child holds (the parent closed its copy after the fork), added
/// by the child to the instance it shares with the parent: the kernel would report it to the
/// parent too, so the kernel's list serves it (handed back), and the parent's wait reports it.
#[test]
fn a_connection_only_one_sharer_holds_is_served_by_the_kernel() {
    let _one = one_at_a_time();
    let mut p = swapped_pair(4096);
    let ep = epoll();
    let (mut up, mut down) = ([0; 2], [0; 2]);
    // SAFETY: live out-arrays.
    assert_eq!(unsafe { libc::pipe(up.as_mut_ptr()) + libc::pipe(down.as_mut_ptr()) }, 0);
    let server = p.server;
    let byte = |fd: c_int| {
        let mut b = 0u8;
        // SAFETY: a live byte.
        unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        b
    };
    let put = |fd: c_int, b: u8| {
        // SAFETY: a live byte.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    };
    // SAFETY: as in `in_child`.
    let pid = unsafe { calls::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the ends the child does not use (so a failed parent never leaves it waiting).
        unsafe {
            libc::close(up[0]);
            libc::close(down[1]);
        }
        let code = std::panic::catch_unwind(|| {
            byte(down[0]);
            if ctl(ep, libc::EPOLL_CTL_ADD, server, IN, 6).0 != 0 {
                return 1;
            }
            put(up[1], b'r');
            byte(down[0]);
            let mut buf = [0u8; 4];
            c_int::from(read(server, &mut buf) != 1 || buf[0] != b'x') * 2
        })
        .unwrap_or(99);
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: our copy; the child keeps its own.
    assert_eq!(unsafe { calls::close(p.server) }, 0);
    p.server = -1;
    put(down[1], b'a');
    assert_eq!(byte(up[0]), b'r');
    assert_eq!(write(p.client, b"x"), 1);
    assert_eq!(ewait(ep, 5000), vec![(IN, 6)], "the child's registration, through the kernel");
    put(down[1], b'g');
    assert_eq!(reap(pid), 0);
    // SAFETY: ours.
    unsafe {
        calls::close(ep);
        for fd in up.into_iter().chain(down) {
            libc::close(fd);
        }
    }
}

/// The announcement counter of `fd`'s end (a swapped connection's): how many of its threads
/// say they sleep.
fn asleep(fd: c_int, end: tssx_common::segment::End) -> u32 {
    tssx_hook::table::lookup(fd).unwrap().header().asleep.0[end.index()].load(std::sync::atomic::Ordering::SeqCst)
}

/// An `epoll_wait` takes back exactly the sleeps it announced: an interest that another thread
/// adds while it sleeps was not announced on, and withdrawing on it too took the end's counter
/// below zero (to `u32::MAX`). The next wait's announcement then left it at 0: the peer's
/// writes saw no sleeper and rang no doorbell, and the wait slept on with data on the ring.
#[test]
fn an_epoll_wait_withdraws_only_the_sleeps_it_announced() {
    use tssx_common::segment::End;
    let _one = one_at_a_time();
    let first = swapped_pair(4096);
    let added = swapped_pair(4096);
    let ep = epoll();
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, first.server, IN, 1), (0, 0));
    let waiter = std::thread::spawn(move || ewait(ep, 5_000));
    // The waiter sleeps, announced on `first` only; the second interest comes in meanwhile.
    let mut tries = 0;
    while asleep(first.server, End::Server) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(1));
        tries += 1;
        assert!(tries < 5_000, "the waiter never slept");
    }
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, added.server, IN, 2), (0, 0));
    assert_eq!(write(first.client, b"w"), 1);
    assert_eq!(waiter.join().unwrap(), [(IN, 1)]);
    assert_eq!(asleep(first.server, End::Server), 0, "the announced sleep is taken back");
    assert_eq!(asleep(added.server, End::Server), 0, "no sleep was announced on the interest added during it");
    let mut buf = [0u8; 4];
    assert_eq!(read(first.server, &mut buf), 1);
    // A wait on both now is woken by a write on the added one.
    let client = added.client;
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(write(client, b"wake"), 4);
    });
    let started = std::time::Instant::now();
    assert_eq!(ewait(ep, 5_000), [(IN, 2)]);
    let slept = started.elapsed();
    writer.join().unwrap();
    assert!(slept < std::time::Duration::from_secs(2), "the write woke the wait after {slept:?}");
    // SAFETY: our instance.
    unsafe { calls::close(ep) };
}

/// A thread asleep in `epoll_wait` while another adds a swapped fd whose ring already holds
/// data wakes and reports it, as the kernel wakes a waiter when an fd that is ready is added.
#[test]
fn adding_a_ready_swapped_fd_wakes_a_thread_asleep_in_the_instance() {
    let _one = one_at_a_time();
    let pair = swapped_pair(4096);
    assert_eq!(write(pair.client, b"ready"), 5);
    let ep = epoll();
    let waiter = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        (ewait(ep, 5_000), started.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(ctl(ep, libc::EPOLL_CTL_ADD, pair.server, IN, 9), (0, 0));
    let (got, slept) = waiter.join().unwrap();
    assert_eq!(got, [(IN, 9)]);
    assert!(slept < std::time::Duration::from_secs(2), "the wait saw the added fd after {slept:?}");
    // SAFETY: our instance.
    unsafe { calls::close(ep) };
}

/// Bytes queued on `fd`'s real socket (doorbells, on a swapped connection), by libc's own
/// `ioctl`.
fn queued_on_socket(fd: c_int) -> c_int {
    let mut n: c_int = 0;
    // SAFETY: FIONREAD into a live int.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }, 0);
    n
}

/// A `poll` pass that announced no sleep on a connection (here a zero timeout, with a plain fd
/// in the set so that the kernel is asked) leaves a doorbell rung for a sibling thread asleep
/// on that connection: taken, the kernel's poll of the sibling, woken by the byte, finds the
/// socket empty again and sleeps on with data on the ring (until its short timeout). Only the
/// pass's own announcements count as its own.
#[test]
fn a_poll_that_announced_no_sleep_leaves_a_sleeping_siblings_doorbell() {
    let _one = one_at_a_time();
    let pair = swapped_pair(4096);
    let mut pipe = [0; 2];
    // SAFETY: a live array of two fds.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let conn = tssx_hook::table::lookup(pair.server).unwrap();
    // A sibling thread of the server's end says it sleeps on the socket.
    conn.announce();
    assert_eq!(write(pair.client, b"w"), 1);
    assert!(queued_on_socket(pair.server) >= 1, "the write rang the doorbell for the sleeper");
    let mut fds = [
        libc::pollfd { fd: pair.server, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: pipe[0], events: libc::POLLIN, revents: 0 },
    ];
    // SAFETY: a live array of two pollfds.
    assert_eq!(unsafe { calls::poll(fds.as_mut_ptr(), 2, 0) }, 1);
    assert_eq!((fds[0].revents, fds[1].revents), (libc::POLLIN, 0));
    assert!(queued_on_socket(pair.server) >= 1, "the sleeping sibling's doorbell was taken");
    // Nobody else sleeps: the next pass drains it.
    conn.withdraw();
    // SAFETY: as above.
    assert_eq!(unsafe { calls::poll(fds.as_mut_ptr(), 2, 0) }, 1);
    assert_eq!(queued_on_socket(pair.server), 0, "a doorbell nobody sleeps for is drained");
    let mut buf = [0u8; 4];
    assert_eq!(read(pair.server, &mut buf), 1);
    drop(conn);
    // SAFETY: our pipe.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
}
