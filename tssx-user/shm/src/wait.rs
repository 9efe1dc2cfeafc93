//! The sleep and wake protocol between a waiting end and its peer: the one implementation that
//! the rings' handles ([`crate::ring`], for read and write), and the hook's `poll`/`select` and
//! `epoll` waits (over many connections at once) all use.
//!
//! Each end of a connection has an *asleep* counter in the segment header. A waiter:
//! 1. [`announce`]s on the counter of every connection it is about to wait on (`Relaxed`),
//! 2. [`settle`]s once: a `SeqCst` fence,
//! 3. re-checks whatever it waits for (ring data, ring space, shutdown); if something is ready
//!    it [`withdraw`]s its announcements and does not sleep; otherwise it sleeps (on a
//!    doorbell) and withdraws them when it wakes.
//!
//! The peer, after publishing anything a waiter may wait for (a ring position, a shutdown bit,
//! a state), asks [`sleeper_announced`]: a `SeqCst` fence, then a `Relaxed` load of the
//! waiter's counter; non-zero means "ring the doorbell".
//!
//! The waiter's fence (step 2) and the peer's fence (in [`sleeper_announced`]) are the pair
//! that makes this safe: in the single total order of `SeqCst` fences one of them comes first,
//! so either the peer's load sees the announcement (and rings), or the waiter's re-check sees
//! what the peer published (and does not sleep). No wake-up is lost. Doorbells may be spurious
//! (a counter is read without being cleared, several transfers may each ring once): a woken
//! waiter re-checks before it acts. The loom model (`tests/ring_loom.rs`) checks the protocol
//! with one ring and with a waiter on two connections at once.
//!
//! The counters are the header's `core` atomics, or loom's under `--cfg tssx_loom` (see
//! [`crate::ring::sync`]).

use core::sync::atomic::Ordering::{Relaxed, SeqCst};

use crate::ring::sync::{fence, AtomicU32};

/// Step 1: one more waiter of this end is about to sleep on this connection.
#[inline]
pub fn announce(asleep: &AtomicU32) {
    // Relaxed: ordered before the re-check by the `SeqCst` fence of `settle`.
    asleep.fetch_add(1, Relaxed);
}

/// Takes an announcement back (the waiter woke, or found something ready).
#[inline]
pub fn withdraw(asleep: &AtomicU32) {
    // Relaxed: at worst the peer sends one spurious doorbell.
    asleep.fetch_sub(1, Relaxed);
}

/// Step 2: after all announcements, before the re-check.
#[inline]
pub fn settle() {
    // SeqCst fence: pairs with the fence in `sleeper_announced` (see the module docs).
    fence(SeqCst);
}

/// The waker's side: after publishing something a waiter may wait for, whether one announced a
/// sleep on `asleep` (the caller then rings the doorbell).
#[inline]
pub fn sleeper_announced(asleep: &AtomicU32) -> bool {
    // SeqCst fence: pairs with the waiter's fence in `settle`.
    fence(SeqCst);
    // Relaxed: ordered by the fence above.
    asleep.load(Relaxed) != 0
}

/// Steps 1 to 3 for one connection: announces on `asleep`, settles, and re-checks with
/// `ready`. Returns `true` if the caller must sleep (the announcement stands: withdraw it after
/// waking) and `false` if something is ready (already withdrawn).
#[inline]
pub fn announce_then_recheck(asleep: &AtomicU32, ready: impl FnOnce() -> bool) -> bool {
    announce(asleep);
    settle();
    if ready() {
        withdraw(asleep);
        false
    } else {
        true
    }
}
