//! Readiness calls on swapped fds behave as the kernel's: `select` over a set larger than
//! `FD_SETSIZE`, epoll interest lists shared across fork, and registrations that outlive the
//! fd they were made with while a dup keeps the connection open.

use libc::c_int;
use tssx_hook::calls;

mod support;
use support::Pair;

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
