//! The per-thread adaptive spin budget: how long a wait checks the rings before it sleeps.
//!
//! A wake-up costs tens of microseconds on our machines, a ring check tens of nanoseconds, so a
//! waiting thread first spins for a budget between [`SPIN_MIN_NS`] and [`SPIN_MAX_NS`]. The
//! budget adapts to what this thread's waits turn out to be (see [`woke`]).

use std::{
    cell::Cell,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
};

/// Bounds of the adaptive spin before a wait sleeps, in nanoseconds.
pub const SPIN_MIN_NS: u64 = 4_000;
/// See [`SPIN_MIN_NS`].
pub const SPIN_MAX_NS: u64 = 100_000;

/// CLOCK_MONOTONIC in nanoseconds (vDSO: no system call).
pub fn now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the monotonic clock at the kernel's tick (a few
/// milliseconds at most), read without the time counter (vDSO). For intervals of tens of
/// milliseconds that every `connect` looks at (see `crate::paths`).
pub fn coarse_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

#[inline(always)]
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into a live local timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

thread_local! {
    /// This thread's current spin budget in nanoseconds (0 = not set yet): grows when spinning
    /// found work or when a wait that slept was short enough to catch spinning, shrinks when a
    /// wait that slept was longer than the longest spin (see [`woke`]).
    static SPIN_NS: Cell<u64> = const { Cell::new(0) };
    /// When the wait that spun in vain and went to sleep started (0: none); see [`woke`].
    static WAIT_SINCE: Cell<u64> = const { Cell::new(0) };
}

/// The adaptive spin budget of this thread; none while the machine's cores are contended (see
/// [`cores_contended`]).
pub fn spin_budget() -> u64 {
    if cores_contended() {
        return 0;
    }
    adaptive_budget()
}

thread_local! {
    /// Spins in a row of a wait that watches the kernel too ([`spin_for_rings`]) that the
    /// kernel's readiness ended, not a ring's (a ring resets it).
    static KERNEL_WON: Cell<u32> = const { Cell::new(0) };
    /// Such waits that skipped their spin since the last one that spun.
    static SKIPPED: Cell<u32> = const { Cell::new(0) };
}

/// After this many spins in a row that the kernel's readiness ended, a wait that watches the
/// kernel too sleeps at once (see [`spin_for_rings`]). Large enough that a proxy whose
/// requests come from plain fds and whose answers come from the rings (each answer a ring's
/// win) keeps spinning: 8 stopped nginx's swapped keep-alive upstream from spinning
/// (1.21x the CPU per request of plain, 0.92x the requests/s).
const KERNEL_WON_LIMIT: u32 = 64;
/// While its spins are skipped, every this many waits spin once more (to see whether the
/// rings came back to life).
const SKIPPED_PROBE_EVERY: u32 = 16;

/// What one look of [`spin_for_rings`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing ready.
    Nothing,
    /// A connection on the rings is ready.
    Ring,
    /// The kernel has events (a plain fd's, or a doorbell).
    Kernel,
}

/// The spin phase of a poll-like wait that watches the kernel too (an epoll instance with
/// plain fds beside swapped ones): as [`spin_until`], except that a spin the kernel's
/// readiness ended earns the spin nothing, and after [`KERNEL_WON_LIMIT`] of those in a row the
/// wait sleeps at once (but every [`SKIPPED_PROBE_EVERY`]th), until a spin a ring ends.
///
/// Spinning pays off only for the rings: an event of a plain fd would wake the sleeping wait
/// as it wakes it without the hook, and a spin that ends on one only burnt a core the peer
/// or the application's other processes needed (nginx with a swapped keep-alive upstream
/// beside a new plain upstream connection per request spun up to 100 us at every wait). A
/// ring's data while the wait sleeps rings the doorbell, so sleeping at once is always right,
/// at the price of a wake-up.
pub fn spin_for_rings(timeout_ns: Option<u64>, mark: crate::signals::Mark, mut look: impl FnMut() -> Found) -> Spun {
    if KERNEL_WON.with(Cell::get) >= KERNEL_WON_LIMIT {
        let skipped = SKIPPED.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        if !skipped.is_multiple_of(SKIPPED_PROBE_EVERY) {
            return Spun::Idle;
        }
    }
    SKIPPED.with(|s| s.set(0));
    let mut kernel = false;
    let spun = spin_until_found(timeout_ns, mark, || match look() {
        Found::Nothing => false,
        Found::Ring => true,
        Found::Kernel => {
            kernel = true;
            true
        }
    });
    match spun {
        Spun::Ready if kernel => KERNEL_WON.with(|k| k.set(k.get().saturating_add(1))),
        Spun::Ready => {
            KERNEL_WON.with(|k| k.set(0));
            spin_paid_off();
        }
        Spun::Idle | Spun::Interrupted => {}
    }
    spun
}

/// The adaptive part of [`spin_budget`].
fn adaptive_budget() -> u64 {
    SPIN_NS.with(|b| if b.get() == 0 { SPIN_MAX_NS / 2 } else { b.get() })
}

/// How often [`cores_contended`] looks again (per process).
const CONTENTION_CHECK_NS: u64 = 10_000_000;

/// Whether more threads are runnable on the machine than it has cores online (and one more):
/// the runnable
/// count of `/proc/loadavg` (its fourth field, `R/T`; this thread counts), looked at again at
/// most every [`CONTENTION_CHECK_NS`] by a waiting thread (one `open`, `read`, `close`).
///
/// Spinning is a bet that the peer answers on another core within microseconds. When threads
/// queue for the cores, a spinner holds one that the peer (or anyone) needs, and its
/// `sched_yield` may hand it away for a whole time slice: measured here with two builds running
/// beside a 64-byte ping-pong, a round trip on the rings took 150 us where the plain socket's
/// took 6 us (its reader sleeps, and the writer's wake-up runs it at once). So waits sleep at
/// once then, as the plain socket's reader does, and the doorbell wakes them.
/// Relaxed: a per-process cache of a hint; a stale answer spins or sleeps once too often.
pub fn cores_contended() -> bool {
    static NEXT_CHECK_NS: AtomicU64 = AtomicU64::new(0);
    static CONTENDED: AtomicBool = AtomicBool::new(false);
    let now = now_ns();
    if now < NEXT_CHECK_NS.load(Relaxed) {
        return CONTENDED.load(Relaxed);
    }
    NEXT_CHECK_NS.store(now + CONTENTION_CHECK_NS, Relaxed);
    // One runnable thread beyond the cores is tolerated: a sample that catches a passing task
    // (a kernel worker, a shell) beside two spinning ends must not stop the spin for 10 ms.
    let contended = crate::sys::with_errno_kept(|| runnable().is_some_and(|r| r > cores_online() + 1));
    CONTENDED.store(contended, Relaxed);
    contended
}

/// The machine's runnable threads now (`/proc/loadavg`'s `R` of `R/T`), with raw system calls.
fn runnable() -> Option<u32> {
    let mut buf = [0u8; 128];
    let n = tssx_shm::sys::read_file(c"/proc/loadavg", &mut buf).ok()?;
    parse_runnable(&buf[..n])
}

/// `R` from a `/proc/loadavg` line (`0.52 0.58 0.59 3/412 12345`).
fn parse_runnable(line: &[u8]) -> Option<u32> {
    let field = line.split(|&b| b == b' ').nth(3)?;
    let running = field.split(|&b| b == b'/').next()?;
    std::str::from_utf8(running).ok()?.parse().ok()
}

/// The cores online (asked once; at least 1).
fn cores_online() -> u32 {
    static CORES: AtomicU32 = AtomicU32::new(0);
    match CORES.load(Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.clamp(1, u32::MAX as libc::c_long) as u32;
            CORES.store(n, Relaxed);
            n
        }
        n => n,
    }
}

/// A poll-like spin yields the core every this many rounds (of 32 pause instructions and one
/// readiness check). With 32, an nginx proxying to a swapped upstream ran at 0.56x of plain on
/// our 2-core VM; with 4, 0.78x (alternating runs, medians).
const SPIN_YIELD_ROUNDS: u32 = 4;

/// Gives the core away during a long spin (a cheap system call when nobody else wants it).
pub fn spin_yield() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// How the spin phase of a poll-like wait ended ([`spin_until`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spun {
    /// Something became ready.
    Ready,
    /// Nothing did within the budget: the wait sleeps.
    Idle,
    /// An application handler ran on this thread (see [`crate::signals`]): the wait fails with
    /// `EINTR`, as the kernel's poll-like calls do whatever `SA_RESTART` says.
    Interrupted,
}

/// The spin phase of a poll-like wait: checks `ready` for the thread's spin budget (at most
/// `timeout_ns`), yielding the core now and then, and `mark` on every round (one load,
/// see [`crate::signals::Mark::now`]); adapts the budget to the outcome.
pub fn spin_until(timeout_ns: Option<u64>, mark: crate::signals::Mark, ready: impl FnMut() -> bool) -> Spun {
    let spun = spin_until_found(timeout_ns, mark, ready);
    if spun == Spun::Ready {
        spin_paid_off();
    }
    spun
}

/// [`spin_until`]'s loop, without the credit of a success (the caller gives it: see
/// [`spin_for_rings`]); a spin in vain is noted for [`woke`].
fn spin_until_found(timeout_ns: Option<u64>, mark: crate::signals::Mark, mut ready: impl FnMut() -> bool) -> Spun {
    let until = now_ns() + spin_budget().min(timeout_ns.unwrap_or(u64::MAX));
    let mut found = false;
    let mut rounds = 0u32;
    let started = now_ns();
    while now_ns() < until {
        for _ in 0..32 {
            std::hint::spin_loop();
        }
        rounds += 1;
        // Often: a peer this thread just woke (a doorbell is a "sync" wake-up, which the
        // scheduler likes to put on the waker's core, expecting the waker to sleep) waits for
        // this core until the spin yields it.
        if rounds.is_multiple_of(SPIN_YIELD_ROUNDS) {
            spin_yield();
        }
        if ready() {
            found = true;
            break;
        }
        if mark.interrupted().is_some() {
            // Neither a success nor a miss of the spin: the budget stays.
            return Spun::Interrupted;
        }
    }
    if found {
        Spun::Ready
    } else {
        spin_missed(started);
        Spun::Idle
    }
}

/// How long a poll-like call may sleep in the real call: until `deadline` (`None`: forever),
/// but at most 1 ms if a connection is shared by several waiters (one may drain a doorbell
/// meant for another) and 10 ms if one is pending (to see the agent's decision).
pub fn sleep_budget(deadline: Option<u64>, shared: bool, pending: bool) -> Option<u64> {
    let mut wait = deadline.map(|d| d.saturating_sub(now_ns()));
    if shared {
        wait = Some(wait.unwrap_or(u64::MAX).min(1_000_000));
    }
    if pending {
        wait = Some(wait.unwrap_or(u64::MAX).min(10_000_000));
    }
    wait
}

/// Spinning found work: the spin budget doubles (up to [`SPIN_MAX_NS`]).
pub fn spin_paid_off() {
    SPIN_NS.with(|b| {
        let cur = if b.get() == 0 { SPIN_MAX_NS / 2 } else { b.get() };
        b.set((cur * 2).min(SPIN_MAX_NS));
    });
}

/// A wait that started at `started` spun for the whole budget in vain and is going to sleep;
/// the caller reports the end of the sleep with [`woke`].
pub fn spin_missed(started: u64) {
    WAIT_SINCE.with(|w| w.set(started));
}

/// The sleep after [`spin_missed`] ended. If the whole wait was shorter than the longest spin,
/// a longer spin would have caught it: the budget grows to 1.5 times that wait. Otherwise it
/// halves. (Halving on every sleep alone is a trap: once the budget is below the usual wait,
/// spinning never finds work again, and every wait pays a sleep and a wake-up for good.)
pub fn woke() {
    let since = WAIT_SINCE.with(|w| w.replace(0));
    if since == 0 {
        return;
    }
    let waited = now_ns().saturating_sub(since);
    SPIN_NS.with(|b| {
        let cur = if b.get() == 0 { SPIN_MAX_NS / 2 } else { b.get() };
        b.set(if waited <= SPIN_MAX_NS { cur.max(waited + waited / 2).min(SPIN_MAX_NS) } else { (cur / 2).max(SPIN_MIN_NS) });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait that slept `ns` (as seen by `woke`).
    fn slept(ns: u64) {
        spin_missed(now_ns().saturating_sub(ns));
        woke();
    }

    #[test]
    fn the_runnable_count_is_read_from_loadavg() {
        assert_eq!(parse_runnable(b"0.52 0.58 0.59 3/412 12345\n"), Some(3));
        assert_eq!(parse_runnable(b"1.00 2.00 3.00 17/900 1"), Some(17));
        assert_eq!(parse_runnable(b"garbage"), None);
        // This machine's: at least this thread runs.
        assert!(runnable().is_some_and(|r| r >= 1));
        assert!(cores_online() >= 1);
    }

    #[test]
    fn the_budget_grows_back_after_a_short_sleep_and_halves_after_a_long_one() {
        // Threads start in the middle.
        assert_eq!(adaptive_budget(), SPIN_MAX_NS / 2);
        // Long sleeps halve it, down to the floor.
        for _ in 0..10 {
            slept(10 * SPIN_MAX_NS);
        }
        assert_eq!(adaptive_budget(), SPIN_MIN_NS);
        // A sleep a longer spin would have caught: 1.5 times that wait (it is never lost for
        // good, the trap of halving on every sleep).
        slept(20_000);
        let b = adaptive_budget();
        assert!((30_000..=32_000).contains(&b), "{b}");
        // Spinning that found work doubles it, up to the cap.
        for _ in 0..5 {
            spin_paid_off();
        }
        assert_eq!(adaptive_budget(), SPIN_MAX_NS);
    }

    /// Spins that the kernel's readiness ends earn nothing, and after a few in a row the wait
    /// sleeps at once (but for a probe now and then) until a ring ends one.
    #[test]
    fn spins_the_kernel_ends_stop_until_a_ring_ends_one() {
        let mark = crate::signals::Mark::now();
        let budget = adaptive_budget();
        // (No spin at all while the machine's cores are contended: then nothing to check.)
        if spin_for_rings(None, mark, || Found::Kernel) == Spun::Ready {
            assert_eq!((KERNEL_WON.with(Cell::get), adaptive_budget()), (1, budget), "no credit for the kernel's events");
        }
        KERNEL_WON.with(|k| k.set(KERNEL_WON_LIMIT));
        // Skipped without a look, but every SKIPPED_PROBE_EVERY-th wait.
        let mut looks = 0;
        for _ in 1..SKIPPED_PROBE_EVERY {
            let spun = spin_for_rings(None, mark, || {
                looks += 1;
                Found::Ring
            });
            assert_eq!(spun, Spun::Idle);
        }
        assert_eq!(looks, 0);
        // The probe spins: a ring that ends it brings the spins back.
        if spin_for_rings(None, mark, || Found::Ring) == Spun::Ready {
            assert_eq!(KERNEL_WON.with(Cell::get), 0);
            assert_eq!(spin_for_rings(None, mark, || Found::Ring), Spun::Ready);
        }
    }

    #[test]
    fn sleep_budget_caps_shared_and_pending_waits() {
        assert_eq!(sleep_budget(None, false, false), None);
        assert_eq!(sleep_budget(None, true, false), Some(1_000_000));
        assert_eq!(sleep_budget(None, false, true), Some(10_000_000));
        let soon = now_ns() + 500_000;
        assert!(sleep_budget(Some(soon), true, true).unwrap() <= 500_000);
    }
}
