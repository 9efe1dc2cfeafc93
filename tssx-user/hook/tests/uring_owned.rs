//! An application that has a disposition of its own for the hand-back signal keeps it: the
//! hook claims nothing in that process (its connections stay plain), and never replaces the
//! application's handler. (Its own test binary: the handler's state is per process.)

use libc::c_int;
use tssx_common::HANDBACK_SIGNAL;
use tssx_hook::uring;

extern "C" fn applications_handler(_sig: c_int) {}

fn current_handler() -> usize {
    // SAFETY: plain data, filled by sigaction.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query into a live struct.
    assert_eq!(unsafe { libc::sigaction(HANDBACK_SIGNAL as c_int, std::ptr::null(), &mut old) }, 0);
    old.sa_sigaction
}

#[test]
fn an_application_handler_for_the_signal_means_no_claim() {
    let handler = applications_handler as extern "C" fn(c_int) as usize;
    // SAFETY: a valid handler for a signal nobody sends in this test.
    assert_ne!(unsafe { libc::signal(HANDBACK_SIGNAL as c_int, handler) }, libc::SIG_ERR);
    assert_eq!(uring::may_claim(), Some(false), "the application owns the signal: no claim");
    assert_eq!(uring::may_claim(), Some(false), "and stays the owner");
    assert_eq!(current_handler(), handler, "the application's handler was replaced");
}
