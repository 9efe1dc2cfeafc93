//! Which connections of a watched path are worth tracking at all: a path (a listener, for a
//! server) whose connections keep ending without ever reaching the rings cools down, and then
//! only the connections made in a probe window (one slot of the clock in [`PROBE_EVERY`]) are
//! tracked.
//!
//! A tracked connection that never claims (one request and its answer: nginx's default
//! upstream, HTTP/1.0, nscd's `shared no`) costs its record: built at `connect`/`accept`,
//! counted on every data call, torn down at `close` (some 800 instructions per end, see the
//! README's hook cost). A busy proxy opening a connection per request pays that on every
//! request, for nothing. So each end learns, per path:
//!
//! * every tracked connection whose last descriptor in this process closes before it reached
//!   the rings (its phase never got to `Ready`) counts one more *cold* ending; one that reached
//!   the rings resets the count ([`Heat::warm`]), and so does a pause while the path is still
//!   warm: a cold ending more than [`STREAK_GAP_MS`] after the one before starts the count
//!   again (only a churn of connections cools a path: a few health checks at start-up, or a
//!   client that connects now and then, never do);
//! * once [`cool_after`] cold endings in a row were counted (64 by default, the agent's
//!   `--cool-after`), new connections of that path are left untracked, exactly as on a path the
//!   agent does not watch (they stay plain, whatever they do), except those made in a probe
//!   window: about 4 ms ([`PROBE_SLOT_SHIFT`]) in every [`PROBE_EVERY`] such slots of
//!   CLOCK_MONOTONIC_COARSE. A probe is tracked and may claim as any other connection: if it
//!   reaches the rings, the path is warm again and every connection is tracked;
//! * a cool path whose last cold ending is more than [`WARM_AFTER_MS`] old is warm again (the
//!   churn stopped: the next connections may be the long-lived ones of a pool).
//!
//! Why windows of the clock and not one connection in so many: both ends must pick the same
//! connections, and each end counts its own (a client and a server see their connections end
//! in different orders, and a server may serve clients of several processes). Both read the
//! same clock within microseconds of each other (`connect` returns as the server's `accept`
//! can take the connection), so they disagree only on a connection made at a window's edge:
//! the end that tracked it sees it end plain, nothing more.
//!
//! Never worse than a plain socket: an untracked connection is a plain one. What it can cost is
//! a missed speed-up: a long conversation opened on a cold path stays plain unless it is a probe
//! (or comes after one that warmed the path). `--cool-after 0` turns this off, and so does
//! `--claim-after 0` (claims at once: every connection is meant to move).
//!
//! Keys: a client's path by a hash of its name ([`for_path`], 64 buckets per process: two
//! paths that share one pool their counts, which only makes the decision coarser); a server's
//! listener by its fd ([`for_listener`], forgotten when the fd closes). Each process learns on
//! its own (a forked child starts from its parent's counts, and what it learns stays its own).
//! A connection that another process also holds (forked while plain) counts nothing when this
//! process lets go of it: its life goes on elsewhere.
//!
//! Ordering: every access is `Relaxed`, loads and stores only (no read-modify-write): the counts
//! are hints of this process, and two threads racing may lose one count, which only shifts a
//! decision by one connection.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use libc::c_int;

use crate::table::MAX_FDS;

/// The probe windows, shared with the connect hook program (which reports only the connects
/// made in one for a process and path the agent found quiet: see `tssx_common::heat`).
pub use tssx_common::heat::{in_probe_window, PROBE_EVERY, PROBE_SLOT_SHIFT};
/// Default of the agent's `--cool-after`: cold endings in a row that cool a path.
pub const COOL_AFTER: u32 = 64;
/// Cold endings further apart than this (ms) are no churn: the count starts again.
pub const STREAK_GAP_MS: u32 = 100;
/// A cool path with no cold ending for this long (ms) is warm again.
pub const WARM_AFTER_MS: u32 = 1000;

/// The learning of one path or listener.
#[derive(Debug)]
pub struct Heat {
    /// Which path the count is about (a path bucket is taken over by the last path that ended
    /// there: two paths sharing one never cool each other); 0 for a listener.
    key: AtomicU64,
    /// Tracked connections that ended without reaching the rings, since the last that did or
    /// the last pause (saturating).
    cold: AtomicU32,
    /// When the last cold ending was counted (coarse clock, ms, wrapping).
    last_cold_ms: AtomicU32,
}

/// The coarse clock in (wrapping) milliseconds.
fn now_ms() -> u32 {
    (crate::spin::coarse_now_ns() / 1_000_000) as u32
}

impl Heat {
    const fn new() -> Self {
        Self { key: AtomicU64::new(0), cold: AtomicU32::new(0), last_cold_ms: AtomicU32::new(0) }
    }

    /// Whether a new connection of the path `key` is to be tracked (see the module
    /// documentation).
    #[inline]
    pub fn admit(&self, key: u64) -> bool {
        self.admit_at(key, crate::spin::coarse_now_ns)
    }

    /// [`Heat::admit`] with the clock given (ns; read only for a cool path).
    #[inline]
    fn admit_at(&self, key: u64, now_ns: impl FnOnce() -> u64) -> bool {
        let limit = cool_after();
        if limit == 0 || self.cold.load(Relaxed) < limit || self.key.load(Relaxed) != key || crate::paths::claim_after_ns() == 0 {
            return true;
        }
        let now = now_ns();
        let idle_ms = ((now / 1_000_000) as u32).wrapping_sub(self.last_cold_ms.load(Relaxed));
        idle_ms > WARM_AFTER_MS || in_probe_window(now)
    }

    /// A connection of the path `key` reached the rings: every new one is tracked again.
    #[inline]
    pub fn warm(&self, key: u64) {
        if self.cold.load(Relaxed) != 0 && self.key.load(Relaxed) == key {
            self.cold.store(0, Relaxed);
        }
    }

    /// A tracked connection of the path `key` ended without reaching the rings.
    #[inline]
    pub fn cooled(&self, key: u64) {
        self.cooled_at(key, now_ms());
    }

    /// [`Heat::cooled`] at `now` (coarse clock, ms).
    fn cooled_at(&self, key: u64, now: u32) {
        let gap = now.wrapping_sub(self.last_cold_ms.load(Relaxed));
        self.last_cold_ms.store(now, Relaxed);
        if self.key.load(Relaxed) != key {
            self.key.store(key, Relaxed);
            self.cold.store(1, Relaxed);
            return;
        }
        let cold = self.cold.load(Relaxed);
        // (Once cool, the probes' endings come a window apart or more: only a pause of
        // [`WARM_AFTER_MS`] warms the path then, see `admit_at`.)
        if gap > STREAK_GAP_MS && cold < cool_after() {
            self.cold.store(1, Relaxed);
        } else if cold < u32::MAX {
            self.cold.store(cold + 1, Relaxed);
        }
    }
}

/// Buckets of client paths (see the module documentation).
const PATH_BUCKETS: usize = 64;
static PATHS: [Heat; PATH_BUCKETS] = [const { Heat::new() }; PATH_BUCKETS];
/// Per listener fd; only the pages of listener fds are ever touched.
static LISTENERS: [Heat; MAX_FDS] = [const { Heat::new() }; MAX_FDS];

/// The agent's `--cool-after` (see [`crate::paths`]; 0: never cool). Relaxed: a setting.
static COOL_AFTER_SETTING: AtomicU32 = AtomicU32::new(COOL_AFTER);

/// Cold endings in a row that cool a path (0: never).
#[inline]
pub fn cool_after() -> u32 {
    COOL_AFTER_SETTING.load(Relaxed)
}

/// Applies the agent's setting, as read from the paths file.
pub(crate) fn set_cool_after(n: u32) {
    COOL_AFTER_SETTING.store(n, Relaxed);
}

/// The heat of the client path `name`, and the path's key there: a hash of its bytes, eight at
/// a time (never 0).
#[inline]
pub fn for_path(name: &[u8]) -> (&'static Heat, u64) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ name.len() as u64;
    let mix = |hash: u64, word: u64| (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    let mut words = name.chunks_exact(8);
    for word in &mut words {
        hash = mix(hash, u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        // (Byte by byte: a copy of a variable length would be a call to libc's memcpy.)
        hash = mix(hash, rest.iter().rev().fold(0, |w, &b| w << 8 | u64::from(b)));
    }
    (&PATHS[(hash ^ hash >> 32) as usize % PATH_BUCKETS], hash | 1)
}

/// The heat of the connections accepted on listener `fd`.
#[inline]
pub fn for_listener(fd: c_int) -> Option<&'static Heat> {
    LISTENERS.get(usize::try_from(fd).ok()?)
}

/// Listener `fd` was closed (or replaced): what it taught is forgotten.
#[inline]
pub fn listener_closed(fd: c_int) {
    if let Some(heat) = for_listener(fd) {
        heat.warm(LISTENER_KEY);
    }
}

/// The key of every listener's heat (one per fd).
pub const LISTENER_KEY: u64 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: u64 = 1 << PROBE_SLOT_SHIFT;
    const KEY: u64 = LISTENER_KEY;
    /// A moment (ms) in a probe window's slot 0 of [`SLOT`]s... far from wrapping.
    const T0: u32 = 1_000_000;

    /// Counts `n` cold endings of `key`, one per ms from `T0`.
    fn churn(heat: &Heat, key: u64, n: u32) {
        for i in 0..n {
            heat.cooled_at(key, T0 + i);
        }
    }

    /// The slot of the clock where [`admitted`] counts from: the first after the churn.
    fn first_slot() -> u64 {
        u64::from(T0 + COOL_AFTER) * 1_000_000 / SLOT + 1
    }

    /// The slots (numbered from [`first_slot`]) among `slots` in which a connection of `key`
    /// made in the slot's middle is tracked.
    fn admitted(heat: &Heat, key: u64, slots: std::ops::Range<u64>) -> Vec<u64> {
        slots.filter(|&s| heat.admit_at(key, || (first_slot() + s) * SLOT + SLOT / 2)).collect()
    }

    /// Which slot of its probe window each slot of `admitted` is (0: the window's own).
    fn windows(list: Vec<u64>) -> Vec<u64> {
        list.into_iter().map(|s| (first_slot() + s) % PROBE_EVERY).collect()
    }

    #[test]
    fn a_churn_of_cold_endings_cools_a_path_which_then_tracks_only_its_probe_windows() {
        let heat = Heat::new();
        churn(&heat, KEY, COOL_AFTER - 1);
        assert_eq!(admitted(&heat, KEY, 1..PROBE_EVERY + 1).len() as u64, PROBE_EVERY, "one cold ending short: warm");
        churn(&heat, KEY, COOL_AFTER);
        let tracked = admitted(&heat, KEY, 1..3 * PROBE_EVERY + 1);
        assert_eq!(tracked.len(), 3, "cool: one slot in {PROBE_EVERY}: {tracked:?}");
        assert!(windows(tracked).iter().all(|&w| w == 0), "only in probe windows");
        heat.warm(KEY);
        assert_eq!(admitted(&heat, KEY, 1..PROBE_EVERY + 1).len() as u64, PROBE_EVERY, "a probe that reached the rings warms the path");
    }

    #[test]
    fn a_warm_ending_in_between_keeps_the_path_warm() {
        let heat = Heat::new();
        for round in 0..3 {
            churn(&heat, KEY, COOL_AFTER - 1);
            heat.warm(KEY);
            assert_eq!(admitted(&heat, KEY, 1..PROBE_EVERY + 1).len() as u64, PROBE_EVERY, "round {round}");
        }
    }

    #[test]
    fn cold_endings_with_pauses_between_them_never_cool_a_path() {
        let heat = Heat::new();
        for i in 0..3 * COOL_AFTER {
            heat.cooled_at(KEY, T0 + i * (STREAK_GAP_MS + 1));
        }
        assert_eq!(heat.cold.load(Relaxed), 1);
        assert!(heat.admit_at(KEY, || u64::from(T0 + 3 * COOL_AFTER * (STREAK_GAP_MS + 1)) * 1_000_000 + SLOT));
    }

    #[test]
    fn a_cool_path_stays_cool_while_its_probes_end_plain_less_than_a_second_apart() {
        let heat = Heat::new();
        churn(&heat, KEY, COOL_AFTER);
        // Probes ending plain 500 ms apart (few connections in each window).
        for i in 1..6 {
            heat.cooled_at(KEY, T0 + COOL_AFTER + i * 500);
        }
        let last = u64::from(T0 + COOL_AFTER + 5 * 500) * 1_000_000;
        let outside_window = (last / SLOT + 1) * SLOT + SLOT / 2;
        let outside_window = if (outside_window / SLOT).is_multiple_of(PROBE_EVERY) { outside_window + SLOT } else { outside_window };
        assert!(!heat.admit_at(KEY, || outside_window), "still cool");
    }

    #[test]
    fn a_cool_path_is_warm_again_once_the_churn_stopped() {
        let heat = Heat::new();
        churn(&heat, KEY, COOL_AFTER);
        let last = u64::from(T0 + COOL_AFTER - 1) * 1_000_000;
        let outside_windows = |at: u64| at / SLOT * SLOT + if (at / SLOT).is_multiple_of(PROBE_EVERY) { SLOT } else { 0 };
        let soon = outside_windows(last + 500 * 1_000_000);
        let later = outside_windows(last + (u64::from(WARM_AFTER_MS) + 10) * 1_000_000);
        assert!(!heat.admit_at(KEY, || soon), "still cool half a second after the last cold ending");
        assert!(heat.admit_at(KEY, || later), "warm after a second without one");
    }

    #[test]
    fn a_closed_listener_forgets() {
        let heat = for_listener(4000).unwrap();
        churn(heat, LISTENER_KEY, COOL_AFTER);
        assert_eq!(admitted(heat, LISTENER_KEY, 1..PROBE_EVERY + 1).len(), 1, "cool");
        listener_closed(4000);
        assert_eq!(admitted(heat, LISTENER_KEY, 1..PROBE_EVERY + 1).len() as u64, PROBE_EVERY);
    }

    #[test]
    fn paths_sharing_a_bucket_never_cool_each_other() {
        let heat = Heat::new();
        let (a, b) = (3, 5);
        churn(&heat, a, COOL_AFTER);
        assert_eq!(admitted(&heat, a, 1..PROBE_EVERY + 1).len(), 1, "a is cool");
        assert_eq!(admitted(&heat, b, 1..PROBE_EVERY + 1).len() as u64, PROBE_EVERY, "b is not");
        heat.cooled_at(b, T0 + COOL_AFTER);
        assert_eq!(admitted(&heat, a, 1..PROBE_EVERY + 1).len() as u64, PROBE_EVERY, "b took the bucket over: a starts again");
    }

    #[test]
    fn one_path_has_one_bucket() {
        let name = |p: &str| p.as_bytes().to_vec();
        let a = for_path(&name("/run/app/upstream.sock"));
        assert_eq!(a.1, for_path(&name("/run/app/upstream.sock")).1);
        assert!(std::ptr::eq(a.0, for_path(&name("/run/app/upstream.sock")).0));
        for other in ["/run/app/upstream.soc", "/run/app/upstream.sock2", "/run/app/upstream.socl", "/run/redis.sock", "/tmp/x", "/tmp/y"] {
            assert_ne!(a.1, for_path(&name(other)).1, "{other}");
        }
    }
}
