//! The io_uring hand-back inside one test process (`tssx_hook::uring`): the handler installed
//! before a claim, a signal that does not come from the kernel ignored, a thread that blocks
//! the signal not claiming, and the hand-back itself: with bytes on both rings, every
//! connection goes plain and the socket then holds exactly what a plain socket would, in order
//! (what an io_uring reads from it). The kernel's own signal (`SI_KERNEL`) cannot be sent from
//! user space: the end-to-end test is the conformance scenario
//! `io_uring_set_up_while_swapped_hands_back` (real agent, real eBPF).
//!
//! One test: the hand-back takes every connection of the process.

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

    // A thread that blocks the signal does not claim (it would get the signal too late).
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
    assert_eq!(blocked.join().unwrap(), Some(false), "a thread that blocks the signal must not claim");

    // Bytes on both rings, unread.
    assert_eq!(write(pair.client, b"client: on the ring"), 19);
    assert_eq!(write(pair.server, b"server: on the ring too"), 23);
    assert_eq!(phase(pair.client), Phase::Active);

    // The signal from a process (kill: SI_USER) is not the kernel's: nothing happens.
    // SAFETY: a signal to this process, whose handler is the hook's.
    assert_eq!(unsafe { libc::kill(libc::getpid(), HANDBACK_SIGNAL as c_int) }, 0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!uring::io_uring_seen(), "a forged signal was taken for the kernel's");
    assert_eq!(phase(pair.client), Phase::Active);
    assert_eq!(phase(pair.server), Phase::Active);

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
