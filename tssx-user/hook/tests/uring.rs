//! The io_uring hand-back inside one test process (`tssx_hook::uring`): the handler installed
//! before a claim, a signal that does not come from the kernel ignored, a thread that blocks
//! the signal not claiming, and the hand-back itself: with bytes on both rings, every
//! connection goes plain and the socket then holds exactly what a plain socket would, in order
//! (what an io_uring reads from it). The kernel's own signal (`SI_KERNEL`) cannot be sent from
//! user space: the end-to-end test is the conformance scenario
//! `io_uring_set_up_while_swapped_hands_back` (real agent, real eBPF).
//!
//! One test: the hand-back takes every connection of the process.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::c_int;
use tssx_common::HANDBACK_SIGNAL;
use tssx_hook::{calls, conn::Phase, table, uring};

mod support;
use support::{install_swapped, socketpair, Pair};

fn write(fd: c_int, bytes: &[u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

fn read(fd: c_int, buf: &mut [u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

/// Everything the kernel's socket holds now, read past the hook (as an io_uring would).
fn socket_bytes(fd: c_int) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: a live buffer; libc's recv, not the hook's.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

fn phase(fd: c_int) -> Phase {
    table::lookup(fd).expect("tracked").phase()
}

/// The handler of this library for the signal, as the kernel has it.
fn handler_installed() -> bool {
    // SAFETY: plain data, filled by sigaction.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query into a live struct.
    assert_eq!(unsafe { libc::sigaction(HANDBACK_SIGNAL as c_int, std::ptr::null(), &mut old) }, 0);
    old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN && old.sa_flags & libc::SA_SIGINFO != 0
}

static APP_SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn applications_handler(_sig: c_int) {
    APP_SIGNALS.fetch_add(1, Ordering::SeqCst);
}

fn wait_for(done: impl Fn() -> bool) -> bool {
    for _ in 0..1000 {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

#[test]
fn io_uring_hand_back() {
    tssx_hook::phase::set_claiming(false);
    let fds = socketpair(0);
    install_swapped(fds, 4096);
    let pair = Pair { client: fds[0], server: fds[1] };

    // Installed at the first claim of the process, and only then.
    assert!(!handler_installed(), "no handler before a claim");
    assert_eq!(uring::may_claim(), Some(true));
    assert!(handler_installed(), "the claim installed the handler");

    // A thread that blocks the signal does not claim now (it would get the signal too late);
    // it claims on a later call, once it unblocks it.
    let blocked = std::thread::spawn(|| {
        // SAFETY: plain data, initialized by sigemptyset/sigaddset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a live set; this thread's own mask.
        unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, HANDBACK_SIGNAL as c_int);
            assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()), 0);
        }
        uring::may_claim()
    });
    assert_eq!(blocked.join().unwrap(), None, "a thread that blocks the signal must not claim now");

    // Bytes on both rings, unread.
    assert_eq!(write(pair.client, b"client: on the ring"), 19);
    assert_eq!(write(pair.server, b"server: on the ring too"), 23);
    assert_eq!(phase(pair.client), Phase::Active);

    // The application's own disposition for the signal is recorded, not installed: the
    // kernel's stays the hook's, and a signal from a process (kill: SI_USER), which is not the
    // kernel watcher's, goes to the application's handler.
    let app = applications_handler as extern "C" fn(c_int) as libc::sighandler_t;
    // SAFETY: a valid handler.
    assert_eq!(unsafe { calls::signal(HANDBACK_SIGNAL as c_int, app) }, libc::SIG_DFL, "the recorded default");
    assert!(handler_installed(), "the application's signal() replaced the hook's handler");
    // SAFETY: plain data, filled by the call.
    let mut seen: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query into a live struct, through the hook.
    assert_eq!(unsafe { calls::sigaction(HANDBACK_SIGNAL as c_int, std::ptr::null(), &mut seen) }, 0);
    assert_eq!(seen.sa_sigaction, app, "sigaction reports the application's handler");
    // SAFETY: a signal to this process.
    assert_eq!(unsafe { libc::kill(libc::getpid(), HANDBACK_SIGNAL as c_int) }, 0);
    assert!(wait_for(|| APP_SIGNALS.load(Ordering::SeqCst) == 1), "the application's handler did not run");
    assert!(!uring::io_uring_seen(), "a forged signal was taken for the kernel's");
    assert_eq!(phase(pair.client), Phase::Active);
    assert_eq!(phase(pair.server), Phase::Active);
    // SIG_DFL recorded (a loop that resets every signal): the hook's handler stays, so the
    // kernel watcher's signal would not terminate the process. (A SIG_DFL signal from a
    // process would: not sent here.) SIG_IGN: a signal from a process is ignored.
    // SAFETY: plain data.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: a valid action, through the hook.
    assert_eq!(unsafe { calls::sigaction(HANDBACK_SIGNAL as c_int, &dfl, std::ptr::null_mut()) }, 0);
    assert!(handler_installed());
    // SAFETY: as above.
    assert_eq!(unsafe { calls::signal(HANDBACK_SIGNAL as c_int, libc::SIG_IGN) }, libc::SIG_DFL);
    // SAFETY: a signal to this process.
    assert_eq!(unsafe { libc::kill(libc::getpid(), HANDBACK_SIGNAL as c_int) }, 0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(APP_SIGNALS.load(Ordering::SeqCst), 1, "ignored");
    assert!(!uring::io_uring_seen());

    // What the handler does for the kernel's signal: both ends here, both handed back (the
    // second end replays what the first had not read, and the other way round).
    assert_eq!(uring::hand_back_all(), 0, "every connection finished its hand-back");
    assert!(uring::io_uring_seen());
    assert_eq!(phase(pair.client), Phase::Plain);
    assert_eq!(phase(pair.server), Phase::Plain);
    // The socket holds what a plain socket would: the ring's bytes, no doorbell.
    assert_eq!(socket_bytes(pair.server), b"client: on the ring");
    assert_eq!(socket_bytes(pair.client), b"server: on the ring too");

    // Plain from now on: the hook's calls and the kernel's agree, in order.
    assert_eq!(write(pair.client, b"after"), 5);
    assert_eq!(socket_bytes(pair.server), b"after");
    // SAFETY: a live buffer; libc's send, past the hook.
    assert_eq!(unsafe { libc::send(pair.server, b"raw".as_ptr().cast(), 3, 0) }, 3);
    let mut buf = [0u8; 16];
    assert_eq!(read(pair.client, &mut buf), 3);
    assert_eq!(&buf[..3], b"raw");
}
