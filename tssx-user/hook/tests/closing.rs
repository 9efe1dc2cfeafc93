//! `close_range`, `closefrom` and `syscall()` on swapped fds (issue 13, "stale fds"). A test
//! binary of its own, its tests one at a time: they close whole ranges of fd numbers (each
//! test its own, high above what the harness uses).

use std::sync::Mutex;

use libc::c_int;
use tssx_common::segment::End;
use tssx_hook::{calls, table};
use tssx_shm::sys::Fd;

mod support;

/// One test at a time (see the module documentation).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn write(fd: c_int, bytes: &[u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

fn read(fd: c_int, buf: &mut [u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Whether `fd` is open (in the kernel).
fn is_open(fd: c_int) -> bool {
    // SAFETY: F_GETFD takes no argument.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Moves `fd` to number `to` (untracked, close-on-exec), closing the original.
fn renumber(fd: c_int, to: c_int) -> c_int {
    // SAFETY: our fds; the test's range of numbers is its own.
    unsafe {
        assert_eq!(libc::dup3(fd, to, libc::O_CLOEXEC), to);
        assert_eq!(libc::close(fd), 0);
    }
    to
}

/// A connected socket pair on the numbers `client` and `server`, installed as one swapped
/// connection whose two segment memfds are at `memfds` or above (`None`: wherever).
fn swapped_pair_at(client: c_int, server: c_int, memfds: Option<c_int>) -> [c_int; 2] {
    let fds = support::socketpair(0);
    let fds = [renumber(fds[0], client), renumber(fds[1], server)];
    let Some(min) = memfds else {
        support::install_swapped(fds, 4096);
        return fds;
    };
    // As `support::install_swapped`, with the memfds placed high.
    let segment = support::swapped_segment(4096);
    for (fd, end) in [(fds[0], End::Client), (fds[1], End::Server)] {
        let memfd = support::dup_memfd(&segment);
        // SAFETY: a dup of our own memfd, owned by the result.
        let high = unsafe { libc::fcntl(memfd.raw(), libc::F_DUPFD_CLOEXEC, min) };
        assert!(high >= min);
        drop(memfd);
        // SAFETY: as above.
        assert!(table::adopt_swapped(fd, end, unsafe { Fd::from_raw(high) }), "adopt {end:?}");
    }
    fds
}

/// Closes (through the hook) whatever of `fds` is still open.
fn close_all(fds: &[c_int]) {
    for &fd in fds {
        if is_open(fd) {
            // SAFETY: our fd.
            unsafe { calls::close(fd) };
        }
    }
}

fn memfd_of(fd: c_int) -> c_int {
    table::lookup(fd).and_then(|c| c.memfd_raw()).expect("a swapped fd")
}

/// Before: `close_range` left the connection under the fd number, so a pipe that later got
/// the number sent its bytes into the ring (to the old peer), and the peer never saw EOF.
#[test]
fn close_range_closes_swapped_fds_as_close_does_and_a_reused_number_is_the_new_file() {
    let _one = one_at_a_time();
    let [client, server] = swapped_pair_at(4000, 4001, None);
    assert_eq!(write(client, b"abc"), 3);
    // SAFETY: closes our own fd range.
    assert_eq!(unsafe { calls::close_range(4000, 4000, 0) }, 0);
    assert!(!is_open(client));
    assert!(table::lookup(client).is_none());
    let mut buf = [0u8; 16];
    assert_eq!(read(server, &mut buf), 3);
    assert_eq!(&buf[..3], b"abc");
    assert_eq!(read(server, &mut buf), 0, "the peer sees EOF after the data");

    // The number is reused by a pipe: its bytes are the pipe's.
    let mut pipe = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let pipe_w = renumber(pipe[1], 4000);
    assert_eq!(write(pipe_w, b"pipe"), 4);
    // SAFETY: the pipe's read end, a live buffer.
    assert_eq!(unsafe { libc::read(pipe[0], buf.as_mut_ptr().cast(), buf.len()) }, 4);
    assert_eq!(&buf[..4], b"pipe");
    assert_eq!(read(server, &mut buf), 0, "nothing more reached the old peer");
    close_all(&[pipe_w, pipe[0], server]);
}

/// The real call is split around the hook's own fds: the memfd of a connection that survives
/// (its socket below the range) is still open afterwards, and is closed with the connection.
#[test]
fn close_range_leaves_the_hooks_own_fds_open() {
    let _one = one_at_a_time();
    let [client, server] = swapped_pair_at(4100, 4101, Some(4150));
    let memfd = memfd_of(client);
    assert!((4150..4200).contains(&memfd));
    // SAFETY: closes our own fd range.
    assert_eq!(unsafe { calls::close_range(4101, 4199, 0) }, 0);
    assert!(!is_open(server));
    assert!(is_open(memfd), "the client's memfd survives the range");
    assert_eq!(memfd_of(client), memfd);
    let mut buf = [0u8; 4];
    assert_eq!(read(client, &mut buf), 0, "the server end is gone: EOF");
    // SAFETY: our fd.
    assert_eq!(unsafe { calls::close(client) }, 0);
    assert!(!is_open(memfd), "closed with its connection");
}

/// `CLOSE_RANGE_CLOEXEC` closes nothing: the fds are marked close-on-exec (which the exec
/// hand-over reads) and the connection keeps working.
#[test]
fn close_range_cloexec_marks_the_fds_and_keeps_the_connection() {
    let _one = one_at_a_time();
    let [client, server] = swapped_pair_at(4200, 4201, None);
    // SAFETY: F_SETFD with an integer.
    unsafe { libc::fcntl(client, libc::F_SETFD, 0) };
    // SAFETY: marks our own fd range.
    assert_eq!(unsafe { calls::close_range(4200, 4201, libc::CLOSE_RANGE_CLOEXEC as c_int) }, 0);
    // SAFETY: F_GETFD takes no argument.
    assert_eq!(unsafe { libc::fcntl(client, libc::F_GETFD) }, libc::FD_CLOEXEC);
    assert_eq!(write(client, b"still"), 5);
    let mut buf = [0u8; 8];
    assert_eq!(read(server, &mut buf), 5);
    assert!(table::lookup_swapped(client).is_some());
    close_all(&[client, server]);
}

/// The kernel's own checks come first: nothing is closed.
#[test]
fn close_range_with_bad_flags_or_a_reversed_range_is_einval_and_closes_nothing() {
    let _one = one_at_a_time();
    let [client, server] = swapped_pair_at(4300, 4301, None);
    for (first, last, flags) in [(4300, 4301, 1), (4300, 4301, 1 << 8), (4301, 4300, 0)] {
        // SAFETY: closes nothing (refused).
        assert_eq!(unsafe { calls::close_range(first, last, flags) }, -1);
        assert_eq!(errno(), libc::EINVAL);
    }
    assert!(is_open(client) && is_open(server));
    assert!(table::lookup(client).is_some() && table::lookup(server).is_some());
    close_all(&[client, server]);
}

/// `closefrom` closes every tracked fd from its start as `close` does, and keeps the hook's
/// own fds; a connection below the start keeps working. (Runs with the highest numbers: it
/// closes everything above its start.)
#[test]
fn closefrom_closes_tracked_fds_and_keeps_the_hooks_own() {
    let _one = one_at_a_time();
    let [client, server] = swapped_pair_at(4800, 4901, Some(4960));
    // SAFETY: F_DUPFD with an integer; a copy of the server socket in the range.
    let copy = unsafe { calls::fcntl(server, libc::F_DUPFD_CLOEXEC, 4950) };
    assert_eq!(copy, 4950);
    let memfd = memfd_of(client);
    assert!(memfd >= 4960);
    assert_eq!(write(client, b"xy"), 2);
    // SAFETY: closes our own fd range.
    unsafe { calls::closefrom(4900) };
    for fd in [server, copy] {
        assert!(!is_open(fd));
        assert!(table::lookup(fd).is_none());
    }
    assert!(is_open(memfd), "the client's memfd survives");
    let mut buf = [0u8; 4];
    // (As from the kernel: the server end closed with bytes unread.)
    assert_eq!(read(client, &mut buf), -1, "the server end is gone");
    assert_eq!(errno(), libc::ECONNRESET);
    close_all(&[client]);
    assert!(!is_open(memfd));
}

/// A close loop over numbers the application never opened (a daemon's `for (fd = 3; fd <
/// 1024; fd++) close(fd)`) does not close the hook's memfd behind its back: EBADF, as for a
/// free number, and the memfd stays the connection's until the connection closes it.
#[test]
fn close_of_the_hooks_own_fd_is_ebadf_and_closes_nothing() {
    let _one = one_at_a_time();
    let [client, server] = swapped_pair_at(4500, 4501, Some(4550));
    let memfd = memfd_of(client);
    // SAFETY: a number this "application" never opened.
    assert_eq!(unsafe { calls::close(memfd) }, -1);
    assert_eq!(errno(), libc::EBADF);
    assert!(is_open(memfd));
    assert!(tssx_hook::own::is_own(memfd));
    close_all(&[client, server]);
    assert!(!is_open(memfd), "closed with its connection");
    assert!(!tssx_hook::own::is_own(memfd));
}

/// `dup2`/`dup3` onto a number that holds the hook's memfd (a child putting its files on fixed
/// numbers) succeed as without the hook: the number becomes the application's file, and the
/// hook's memfd moves to a new number, still the connection's, closed with it.
#[test]
fn dup2_onto_the_hooks_own_fd_moves_it_out_of_the_way() {
    let _one = one_at_a_time();
    let [client, server] = swapped_pair_at(4600, 4601, Some(4650));
    for (k, fd) in [client, server].into_iter().enumerate() {
        let memfd = memfd_of(fd);
        let mut pipe = [0; 2];
        // SAFETY: a valid out-array.
        assert_eq!(unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: our fds; `memfd` is a number this "application" never opened.
        let rc = unsafe {
            if k == 0 {
                calls::dup2(pipe[0], memfd)
            } else {
                calls::dup3(pipe[0], memfd, libc::O_CLOEXEC)
            }
        };
        assert_eq!(rc, memfd, "{}", std::io::Error::last_os_error());
        let moved = memfd_of(fd);
        assert_ne!(moved, memfd);
        assert!(tssx_hook::own::is_own(moved) && !tssx_hook::own::is_own(memfd));
        // The number is the pipe's read end now: a byte written into the pipe comes out of it.
        // SAFETY: our pipe.
        assert_eq!(unsafe { libc::write(pipe[1], b"p".as_ptr().cast(), 1) }, 1);
        let mut one = [0u8; 1];
        // SAFETY: the application's fd now.
        assert_eq!(unsafe { libc::read(memfd, one.as_mut_ptr().cast(), 1) }, 1);
        assert_eq!(&one, b"p");
        // SAFETY: our fds.
        unsafe { calls::close(memfd) };
        for p in pipe {
            // SAFETY: our pipe.
            unsafe { calls::close(p) };
        }
    }
    // The connection still works on the rings.
    assert_eq!(write(client, b"hello"), 5);
    let mut buf = [0u8; 5];
    assert_eq!(read(server, &mut buf), 5);
    assert_eq!(&buf, b"hello");
    let moved = [memfd_of(client), memfd_of(server)];
    close_all(&[client, server]);
    for m in moved {
        assert!(!is_open(m), "the moved memfd is closed with its connection");
        assert!(!tssx_hook::own::is_own(m));
    }
    // A call that fails (a bad `old`) leaves the hook's fd where it was.
    let [client, server] = swapped_pair_at(4600, 4601, Some(4650));
    let memfd = memfd_of(client);
    // SAFETY: a closed `old`.
    assert_eq!(unsafe { calls::dup2(4699, memfd) }, -1);
    assert_eq!(errno(), libc::EBADF);
    assert_eq!(memfd_of(client), memfd);
    assert!(is_open(memfd) && tssx_hook::own::is_own(memfd));
    close_all(&[client, server]);
}

#[cfg(target_arch = "x86_64")]
mod raw_syscalls {
    use libc::{c_long, SYS_close, SYS_getpid, SYS_ppoll, SYS_read, SYS_readv, SYS_recvfrom, SYS_sendto, SYS_write};
    use tssx_hook::syscall::{hooked, wants};

    use super::*;

    fn sys(nr: c_long, args: &[c_long]) -> c_long {
        let mut a = [0; 6];
        a[..args.len()].copy_from_slice(args);
        // SAFETY: the tests pass what the kernel expects for `nr`.
        unsafe { hooked(nr, a) }
    }

    fn wants_fd(nr: c_long, fd: c_int) -> bool {
        wants(nr, [fd as c_long, 0, 0, 0, 0])
    }

    /// Which calls go through the hook: the socket-related numbers on fds it keeps something
    /// for, and for `fcntl`/`ioctl` only the commands it handles; everything else to libc.
    #[test]
    fn the_hook_takes_only_what_it_serves() {
        let _one = one_at_a_time();
        let [client, server] = swapped_pair_at(4600, 4601, None);
        let fd = client as c_long;
        let memfd = memfd_of(client) as c_long;
        assert!(wants(libc::SYS_fcntl, [fd, libc::F_SETFL as c_long, 0, 0, 0]));
        assert!(wants(libc::SYS_fcntl, [fd, libc::F_DUPFD_CLOEXEC as c_long, 0, 0, 0]));
        assert!(!wants(libc::SYS_fcntl, [fd, libc::F_GETFL as c_long, 0, 0, 0]));
        assert!(wants(libc::SYS_ioctl, [fd, libc::FIONREAD as c_long, 0, 0, 0]));
        assert!(!wants(libc::SYS_ioctl, [fd, libc::TCGETS as c_long, 0, 0, 0]));
        assert!(wants(libc::SYS_socket, [libc::AF_UNIX as c_long, libc::SOCK_STREAM as c_long, 0, 0, 0]));
        assert!(!wants(libc::SYS_socket, [libc::AF_INET as c_long, libc::SOCK_STREAM as c_long, 0, 0, 0]));
        assert!(wants(libc::SYS_splice, [4700, 0, fd, 0, 0]), "a tracked fd on either side");
        assert!(wants(libc::SYS_dup2, [4700, fd, 0, 0, 0]), "dup2 over a tracked fd");
        assert!(!wants(libc::SYS_dup2, [4700, 4701, 0, 0, 0]));
        assert!(wants(SYS_close, [memfd, 0, 0, 0, 0]), "the hook refuses to close its own fd");
        assert!(!wants(libc::SYS_futex, [fd, 0, 0, 0, 0]) && !wants(libc::SYS_fstat, [fd, 0, 0, 0, 0]));
        // The hook's own fd is EBADF through syscall() too.
        assert_eq!(sys(SYS_close, &[memfd]), -1);
        assert_eq!(errno(), libc::EBADF);
        assert!(is_open(memfd as c_int));
        close_all(&[client, server]);
    }

    /// Before: a raw `write` put the bytes on the socket behind the ring (read out of order, or
    /// never), and a raw `read` returned doorbell bytes.
    #[test]
    fn socket_syscalls_on_a_swapped_fd_are_the_hooks_calls() {
        let _one = one_at_a_time();
        let [client, server] = swapped_pair_at(4400, 4401, None);
        assert!(wants_fd(SYS_write, client) && wants_fd(SYS_read, server) && wants_fd(SYS_close, client));
        assert!(!wants_fd(SYS_getpid, client), "other numbers go to libc");
        // An untracked fd (a high bit set above the 32 the kernel reads) goes to libc.
        assert!(!wants_fd(SYS_write, 4402) && !wants(SYS_write, [(1 << 32) | 4402, 0, 0, 0, 0]));
        assert!(wants(SYS_write, [(1 << 32) | client as c_long, 0, 0, 0, 0]), "the kernel reads 32 bits of an fd");

        assert_eq!(write(client, b"a"), 1);
        assert_eq!(sys(SYS_write, &[client as c_long, b"b".as_ptr() as c_long, 1]), 1);
        assert_eq!(sys(SYS_sendto, &[client as c_long, b"c".as_ptr() as c_long, 1, 0, 0, 0]), 1);
        assert_eq!(write(client, b"d"), 1);
        let mut buf = [0u8; 8];
        assert_eq!(sys(SYS_read, &[server as c_long, buf.as_mut_ptr() as c_long, 2]), 2);
        assert_eq!(&buf[..2], b"ab");
        assert_eq!(read(server, &mut buf[..1]), 1);
        assert_eq!(buf[0], b'c');
        assert_eq!(sys(SYS_recvfrom, &[server as c_long, buf.as_mut_ptr() as c_long, 8, 0, 0, 0]), 1);
        assert_eq!(buf[0], b'd');
        assert_eq!(sys(SYS_recvfrom, &[server as c_long, buf.as_mut_ptr() as c_long, 8, libc::MSG_DONTWAIT as c_long, 0, 0]), -1);
        assert_eq!(errno(), libc::EAGAIN);

        // The system calls' own argument rules.
        let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 1 };
        for count in [1025, (1 << 32) | 1] {
            assert_eq!(sys(SYS_readv, &[server as c_long, &iov as *const libc::iovec as c_long, count]), -1);
            assert_eq!(errno(), libc::EINVAL);
        }
        let mut pfd = libc::pollfd { fd: server, events: libc::POLLIN, revents: 0 };
        // SAFETY: plain data.
        let mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        let mut ppoll = |ts: *mut libc::timespec, size: c_long| {
            sys(SYS_ppoll, &[&mut pfd as *mut libc::pollfd as c_long, 1, ts as c_long, &mask as *const libc::sigset_t as c_long, size])
        };
        assert_eq!(ppoll(&mut ts, 4), -1);
        assert_eq!(errno(), libc::EINVAL);
        assert_eq!(ppoll(std::ptr::dangling_mut::<libc::timespec>(), 8), -1, "an unreadable timeout");
        assert_eq!(errno(), libc::EFAULT);
        assert_eq!(ppoll(&mut ts, 8), 0, "nothing to read");
        let mut ts = libc::timespec { tv_sec: 5, tv_nsec: 0 };
        assert_eq!(write(client, b"e"), 1);
        assert_eq!(ppoll(&mut ts, 8), 1);
        assert!(ts.tv_sec == 4 || ts.tv_sec == 5, "the time left is written back: {}", ts.tv_sec);

        // A raw close is the hook's close: the peer sees the data, then EOF.
        assert_eq!(sys(SYS_close, &[client as c_long]), 0);
        assert!(table::lookup(client).is_none() && !is_open(client));
        assert_eq!(read(server, &mut buf), 1);
        assert_eq!(read(server, &mut buf), 0);
        assert_eq!(sys(SYS_close, &[client as c_long]), -1);
        assert_eq!(errno(), libc::EBADF);
        close_all(&[server]);
    }
}
