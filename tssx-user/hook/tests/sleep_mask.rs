//! `signals::Quiet`: a signal that comes in between a wait's last look at its mark and its
//! sleep is held back and delivered inside the sleep, which then ends with EINTR (the window
//! behind the conformance test `sigspin`'s rare "after the first signal in 7 of 8").
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tssx_hook::{calls, signals};

static HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr2(_: libc::c_int) {
    HANDLED.fetch_add(1, SeqCst);
}

#[test]
fn a_signal_after_the_last_look_ends_the_sleep() {
    // SAFETY: a handler installed through the hook (the application's way); all-zero sigaction.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_usr2 as *const () as usize;
        act.sa_flags = libc::SA_RESTART;
        assert_eq!(calls::sigaction(libc::SIGUSR2, &act, std::ptr::null_mut()), 0);
    }
    let mut pipe = [0; 2];
    // SAFETY: a live array of two.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    for sleep_mask_of_the_application in [false, true] {
        HANDLED.store(0, SeqCst);
        let mark = signals::Mark::now();
        let quiet = signals::Quiet::block();
        // The signal comes in after the last look: held back, nothing ran yet.
        // SAFETY: a signal to this thread.
        assert_eq!(unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) }, 0);
        assert_eq!(HANDLED.load(SeqCst), 0, "held back");
        assert!(mark.interrupted().is_none());
        // The application's own mask for the sleep (pselect, ppoll, epoll_pwait), or none.
        // SAFETY: all-zero is the empty set.
        let empty: libc::sigset_t = unsafe { std::mem::zeroed() };
        let application = if sleep_mask_of_the_application { &raw const empty } else { std::ptr::null() };
        let mut pfd = libc::pollfd { fd: pipe[0], events: libc::POLLIN, revents: 0 };
        let ten_s = libc::timespec { tv_sec: 10, tv_nsec: 0 };
        let started = std::time::Instant::now();
        // SAFETY: one live pollfd, a live timeout and mask.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ten_s, quiet.sleep_mask(application)) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        drop(quiet);
        assert_eq!((rc, errno), (-1, Some(libc::EINTR)), "the sleep ends with EINTR");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "at once, not at the timeout");
        assert_eq!(HANDLED.load(SeqCst), 1, "inside the sleep");
        assert!(mark.interrupted().is_some(), "the mark sees it");
    }
    // The thread's mask is what it was: a signal now runs its handler at once.
    // SAFETY: a signal to this thread.
    unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
    assert_eq!(HANDLED.load(SeqCst), 2);
}

mod support;

/// The tests below share the probe (every thread's waits call it) and SIGUSR1: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Signals the probe still raises.
static PROBE_RAISES: AtomicUsize = AtomicUsize::new(0);
static USR1_HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    USR1_HANDLED.fetch_add(1, SeqCst);
}

/// The probe: one SIGUSR1 to the waiting thread, right after its wait's last look (while the
/// look's hold is on), as a signal that comes in just then.
fn raise_usr1() {
    if PROBE_RAISES.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
        // SAFETY: a signal to this thread.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };
    }
}

/// Runs `wait` with SIGUSR1's handler installed through the hook (with `SA_RESTART` or not) and
/// the probe raising one SIGUSR1 right after the wait's last look; returns its result, its
/// errno, how long it took and how many handlers ran.
fn with_a_signal_after_the_last_look(restart: bool, wait: impl FnOnce() -> isize) -> (isize, i32, std::time::Duration, usize) {
    // SAFETY: a handler installed through the hook (the application's way); all-zero sigaction.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_usr1 as *const () as usize;
        act.sa_flags = if restart { libc::SA_RESTART } else { 0 };
        assert_eq!(calls::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()), 0);
    }
    USR1_HANDLED.store(0, SeqCst);
    PROBE_RAISES.store(1, SeqCst);
    signals::probe_after_last_look(Some(raise_usr1));
    let started = std::time::Instant::now();
    let rc = wait();
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let took = started.elapsed();
    signals::probe_after_last_look(None);
    assert_eq!(PROBE_RAISES.load(SeqCst), 0, "the wait slept (the probe ran)");
    (rc, errno, took, USR1_HANDLED.load(SeqCst))
}

/// A socket timeout of `secs` for `name` (`SO_RCVTIMEO`, `SO_SNDTIMEO`).
fn timeout(fd: libc::c_int, name: libc::c_int, secs: i64) {
    let tv = libc::timeval { tv_sec: secs, tv_usec: 0 };
    // SAFETY: a live timeval of the stated size.
    assert_eq!(unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, name, (&raw const tv).cast(), size_of::<libc::timeval>() as u32) }, 0);
}

/// A socket pair installed as one swapped connection, rings of 64 KiB.
fn swapped_pair() -> support::Pair {
    let fds = support::socketpair(0);
    support::install_swapped(fds, 1 << 16);
    support::Pair { client: fds[0], server: fds[1] }
}

/// How long a wait the signal did not end would take at least: each test bounds its wait with
/// a timeout of 3 s, so that a lost signal fails the test rather than hanging it.
const LOST: std::time::Duration = std::time::Duration::from_secs(2);

/// A blocking read on the rings sleeps on its socket: a handler that runs right after its last
/// look ends it as the kernel's read would (EINTR without `SA_RESTART` or with `SO_RCVTIMEO`;
/// under `SA_RESTART` alone it goes on and gets the data that comes later). Its sleep was a
/// `recv(MSG_PEEK)`, which that handler did not end: it waited for the next signal, or here
/// for the timeout (the conformance test `sigspin`'s rare "after the first signal in 7 of 8").
#[test]
fn a_handler_right_after_a_blocking_reads_last_look_ends_it_as_the_kernels() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pair = swapped_pair();
    let mut buf = [0u8; 16];
    let read = |buf: &mut [u8]| {
        // SAFETY: a live buffer of the stated length.
        unsafe { calls::read(pair.client, buf.as_mut_ptr().cast(), buf.len()) }
    };
    timeout(pair.client, libc::SO_RCVTIMEO, 3);
    let (rc, errno, took, handled) = with_a_signal_after_the_last_look(false, || read(&mut buf));
    assert_eq!((rc, errno, handled), (-1, libc::EINTR, 1), "no SA_RESTART: EINTR (took {took:?})");
    assert!(took < LOST, "at once, not at the timeout: {took:?}");
    let (rc, errno, took, handled) = with_a_signal_after_the_last_look(true, || read(&mut buf));
    assert_eq!((rc, errno, handled), (-1, libc::EINTR, 1), "SA_RESTART with SO_RCVTIMEO: EINTR (took {took:?})");
    assert!(took < LOST, "at once, not at the timeout: {took:?}");
    // SA_RESTART alone: the read goes on, and gets what the peer writes once the handler ran.
    timeout(pair.client, libc::SO_RCVTIMEO, 0);
    let server = pair.server;
    let writer = std::thread::spawn(move || {
        while USR1_HANDLED.load(SeqCst) == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: a live buffer of the stated length.
        assert_eq!(unsafe { calls::write(server, b"data".as_ptr().cast(), 4) }, 4);
    });
    let (rc, _, _, handled) = with_a_signal_after_the_last_look(true, || read(&mut buf));
    writer.join().unwrap();
    assert_eq!((rc, &buf[..4], handled), (4, &b"data"[..], 1), "SA_RESTART alone: restarted, then the data");
}

/// A blocking write that filled the ring and sleeps for room: a handler right after its last
/// look ends it with the bytes it moved, `SA_RESTART` or not (as the kernel's).
#[test]
fn a_handler_right_after_a_blocking_writes_last_look_ends_it_with_what_it_moved() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pair = swapped_pair();
    timeout(pair.client, libc::SO_SNDTIMEO, 3);
    let big = vec![b'x'; 1 << 20];
    for restart in [false, true] {
        let (rc, _, took, handled) = with_a_signal_after_the_last_look(restart, || {
            // SAFETY: a live buffer of the stated length.
            unsafe { calls::write(pair.client, big.as_ptr().cast(), big.len()) }
        });
        assert!(
            rc > 0 && (rc as usize) < big.len() && handled == 1,
            "restart {restart}: a partial count, got {rc} after {handled} handlers"
        );
        assert!(took < LOST, "restart {restart}: at once, not at the timeout: {took:?}");
        // Room again for the next round.
        let mut sink = vec![0u8; rc as usize];
        let mut got = 0;
        while got < sink.len() {
            // SAFETY: a live buffer of the stated length.
            let n = unsafe { calls::read(pair.server, sink[got..].as_mut_ptr().cast(), sink.len() - got) };
            assert!(n > 0);
            got += n as usize;
        }
    }
}

/// `poll` and `select` on a swapped fd, and on a tracked connection still plain (its raw
/// `ppoll`, and the branch of the hook's poll for sets with nothing swapped): a handler right
/// after the last look ends them with EINTR.
#[test]
fn a_handler_right_after_a_polls_last_look_ends_it_with_eintr() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let swapped = swapped_pair();
    // A tracked pair whose migration never goes on (no claims: no agent here).
    tssx_hook::phase::set_claiming(false);
    let fds = support::socketpair(0);
    assert!(tssx_hook::table::track(fds[0], tssx_common::segment::End::Client, tssx_hook::conn::Phase::Candidate, None));
    assert!(tssx_hook::table::track(fds[1], tssx_common::segment::End::Server, tssx_hook::conn::Phase::Candidate, None));
    let still_plain = support::Pair { client: fds[0], server: fds[1] };
    for (what, fd) in [("swapped", swapped.client), ("still plain", still_plain.client)] {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        let (rc, errno, took, handled) = with_a_signal_after_the_last_look(true, || unsafe { calls::poll(&mut p, 1, 3000) } as isize);
        assert_eq!((rc, errno, handled), (-1, libc::EINTR, 1), "poll, {what} (took {took:?})");
        assert!(took < LOST, "poll, {what}: at once, not at the timeout: {took:?}");
        let (rc, errno, took, handled) = with_a_signal_after_the_last_look(true, || {
            // SAFETY: all-zero is the empty set.
            let mut set: libc::fd_set = unsafe { std::mem::zeroed() };
            // SAFETY: a live set; the fd is below FD_SETSIZE.
            unsafe { libc::FD_SET(fd, &mut set) };
            let mut tv = libc::timeval { tv_sec: 3, tv_usec: 0 };
            // SAFETY: live sets and timeout.
            unsafe { calls::select(fd + 1, &mut set, std::ptr::null_mut(), std::ptr::null_mut(), &mut tv) as isize }
        });
        assert_eq!((rc, errno, handled), (-1, libc::EINTR, 1), "select, {what} (took {took:?})");
        assert!(took < LOST, "select, {what}: at once, not at the timeout: {took:?}");
    }
}
