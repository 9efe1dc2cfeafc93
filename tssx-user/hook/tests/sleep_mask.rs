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
