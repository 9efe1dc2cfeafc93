//! Waiting for a condition with a deadline, and the clock the test programs print.

use std::{
    thread,
    time::{Duration, Instant},
};

/// The first pause between two checks of a condition; it doubles up to [`MAX_PAUSE`], so a
/// condition that is soon true is seen soon, and a slow one (a server starting) is not polled
/// hundreds of times.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two checks.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Polls `condition` until it is true or `timeout` passed (it is checked once more at the
/// deadline); returns whether it became true.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Polls `condition` until it is true; panics with "timed out after {timeout} waiting for
/// {what}" if it is not within `timeout`. A condition may itself panic with a better message
/// (e.g. a server that died while we wait for it).
pub fn wait_until(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    assert!(poll_until(timeout, condition), "timed out after {timeout:?} waiting for {what}");
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock the test programs print their times in).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into a live local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
