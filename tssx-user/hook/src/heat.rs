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
//!   the rings resets the count ([`Heat::warm`]);
//! * once [`cool_after`] cold endings in a row were counted (64 by default, the agent's
//!   `--cool-after`), new connections of that path are left untracked, exactly as on a path the
//!   agent does not watch (they stay plain, whatever they do), except those made in a probe
//!   window: about 4 ms ([`PROBE_SLOT_SHIFT`]) in every [`PROBE_EVERY`] such slots of
//!   CLOCK_MONOTONIC_COARSE. A probe is tracked and may claim as any other connection: if it
//!   reaches the rings, the path is warm again and every connection is tracked.
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

use crate::{paths::UnixName, table::MAX_FDS};

/// A probe window is one slot of 2^22 ns (4.2 ms) of the coarse clock in [`PROBE_EVERY`].
pub const PROBE_SLOT_SHIFT: u32 = 22;
/// Slots per probe window: a cool path tracks the connections of one slot in this many.
pub const PROBE_EVERY: u64 = 16;
/// Default of the agent's `--cool-after`: cold endings in a row that cool a path.
pub const COOL_AFTER: u32 = 64;

/// The learning of one path or listener.
#[derive(Debug)]
pub struct Heat {
    /// Which path the count is about (a path bucket is taken over by the last path that ended
    /// there: two paths sharing one never cool each other); 0 for a listener.
    key: AtomicU64,
    /// Tracked connections that ended without reaching the rings, since the last that did
    /// (saturating).
    cold: AtomicU32,
}

impl Heat {
    const fn new() -> Self {
        Self { key: AtomicU64::new(0), cold: AtomicU32::new(0) }
    }

    /// Whether a new connection of the path `key` is to be tracked (see the module
    /// documentation).
    #[inline]
    pub fn admit(&self, key: u64) -> bool {
        self.admit_at(key, crate::spin::coarse_now_ns)
    }

    /// [`Heat::admit`] with the clock given (read only for a cool path).
    #[inline]
    fn admit_at(&self, key: u64, now_ns: impl FnOnce() -> u64) -> bool {
        let limit = cool_after();
        if limit == 0 || self.cold.load(Relaxed) < limit || self.key.load(Relaxed) != key || crate::paths::claim_after_ns() == 0 {
            return true;
        }
        (now_ns() >> PROBE_SLOT_SHIFT).is_multiple_of(PROBE_EVERY)
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
        if self.key.load(Relaxed) != key {
            self.key.store(key, Relaxed);
            self.cold.store(1, Relaxed);
            return;
        }
        let cold = self.cold.load(Relaxed);
        if cold < u32::MAX {
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
pub fn for_path(name: &UnixName) -> (&'static Heat, u64) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ name.bytes().len() as u64;
    for word in name.bytes().chunks(8) {
        let mut w = [0u8; 8];
        w[..word.len()].copy_from_slice(word);
        hash = (hash ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
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

    /// Whether a connection made at each slot of `slots` (ns: the slot's middle) is tracked.
    fn admitted(heat: &Heat, slots: std::ops::Range<u64>) -> Vec<u64> {
        slots.filter(|&s| heat.admit_at(KEY, || s * SLOT + SLOT / 2)).collect()
    }

    #[test]
    fn a_path_cools_after_cold_endings_in_a_row_and_then_tracks_only_its_probe_windows() {
        let heat = Heat::new();
        for _ in 0..COOL_AFTER {
            assert!(heat.admit_at(KEY, || 5 * SLOT), "warm: every connection is tracked");
            heat.cooled(KEY);
        }
        assert_eq!(
            admitted(&heat, 1..3 * PROBE_EVERY + 1),
            vec![PROBE_EVERY, 2 * PROBE_EVERY, 3 * PROBE_EVERY],
            "cool: one slot in {PROBE_EVERY}"
        );
        heat.warm(KEY);
        assert_eq!(admitted(&heat, 1..PROBE_EVERY).len() as u64, PROBE_EVERY - 1, "a probe that reached the rings warms the path");
    }

    #[test]
    fn a_warm_ending_in_between_keeps_the_path_warm() {
        let heat = Heat::new();
        for i in 0..3 * COOL_AFTER {
            assert!(heat.admit_at(KEY, || 5 * SLOT));
            if i % COOL_AFTER == COOL_AFTER - 1 {
                heat.warm(KEY);
            } else {
                heat.cooled(KEY);
            }
        }
    }

    #[test]
    fn a_closed_listener_forgets() {
        let heat = for_listener(4000).unwrap();
        for _ in 0..COOL_AFTER {
            heat.cooled(KEY);
        }
        assert_eq!(admitted(heat, 1..PROBE_EVERY + 1), vec![PROBE_EVERY], "cool");
        listener_closed(4000);
        assert_eq!(admitted(heat, 1..PROBE_EVERY + 1).len() as u64, PROBE_EVERY);
    }

    #[test]
    fn one_path_has_one_bucket() {
        let name = |p: &str| {
            let mut addr: libc::sockaddr_un = unsafe_zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (d, s) in addr.sun_path.iter_mut().zip(p.bytes()) {
                *d = s as libc::c_char;
            }
            // SAFETY: a live sockaddr_un of the given length.
            unsafe { crate::paths::unix_name((&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_un>() as u32) }.unwrap()
        };
        let a = for_path(&name("/run/app/upstream.sock"));
        assert_eq!(a.1, for_path(&name("/run/app/upstream.sock")).1);
        assert!(std::ptr::eq(a.0, for_path(&name("/run/app/upstream.sock")).0));
        for other in ["/run/app/upstream.soc", "/run/app/upstream.sock2", "/run/redis.sock", "/tmp/x"] {
            assert_ne!(a.1, for_path(&name(other)).1, "{other}");
        }
    }

    #[test]
    fn paths_sharing_a_bucket_never_cool_each_other() {
        let heat = Heat::new();
        let (a, b) = (3, 5);
        for _ in 0..COOL_AFTER {
            heat.cooled(a);
        }
        assert_eq!(admitted_key(&heat, a, 1..PROBE_EVERY + 1), vec![PROBE_EVERY], "a is cool");
        assert_eq!(admitted_key(&heat, b, 1..PROBE_EVERY + 1).len() as u64, PROBE_EVERY, "b is not");
        heat.cooled(b);
        assert_eq!(admitted_key(&heat, a, 1..PROBE_EVERY + 1).len() as u64, PROBE_EVERY, "b took the bucket over: a starts again");
    }

    fn admitted_key(heat: &Heat, key: u64, slots: std::ops::Range<u64>) -> Vec<u64> {
        slots.filter(|&s| heat.admit_at(key, || s * SLOT + SLOT / 2)).collect()
    }

    fn unsafe_zeroed() -> libc::sockaddr_un {
        // SAFETY: all-zero bytes are a valid sockaddr_un.
        unsafe { std::mem::zeroed() }
    }
}
