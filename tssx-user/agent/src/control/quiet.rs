//! Cooling in the kernel: a process whose connections on a watched pattern keep ending plain
//! (never claimed) gets its connects there left unreported by the connect hook program, but for
//! those made in a probe window.
//!
//! The hook of such a process already tracks only the connections of probe windows on that
//! path (`tssx_hook::heat`): the others stay plain, exactly as on an unwatched path, and never
//! claim. Their connect events bought nothing: they cost each `connect` the event's record
//! (some 0.6 us of the 0.8 us the program adds to a watched connect) and the agent the reading
//! of one event per connection. So the agent, which learns at each sweep which connections
//! ended before anyone claimed them, tells the kernel (`tssx_common::maps::QUIET`, keyed by
//! process and pattern) once a process's streak reaches `--cool-after`, and the program then
//! reports only the connects made in a probe window (`tssx_common::heat`, the windows the hook
//! tracks) until the entry's time runs out.
//!
//! * A streak counts the connections of one process on one pattern that ended short-lived
//!   since that process last claimed a connection there; a claim ends it (and the quiet, at
//!   once: the process's connections are worth reporting again). The agent learns that a
//!   connection ended up to two sweeps after its connect (a socket that closed before a sweep
//!   saw it is told from a failed connect after a second): an ending whose connect came
//!   before the claim does not count.
//! * A quiet entry lasts [`QUIET_FOR_NS`]; each sweep that counted more endings of the streak
//!   (the probe windows' connections, still reported) extends it. When the churn stops, the
//!   entry runs out within that time, about when the hook warms the path again (a second
//!   without a cold ending).
//! * What an unreported connect costs: nothing for the hook's connections of a quiet path
//!   (none is tracked outside a probe window). A connection the hook tracks anyway (its path
//!   warmed before the entry ran out) and that claims before the server accepted it has no
//!   connect event to be verified by: its claim is answered "retry" (the next one, a few
//!   milliseconds later, verifies by the accepted peer). The `short-lived` count of
//!   `status --stats` misses the unreported connections: `status --stats` counts them as
//!   `quiet_connects`.
//! * Only the connect hook watcher (the default) reports connects this way: with
//!   `--syscall-tracepoints` every watched connect is reported, as before. A pattern the kernel
//!   cannot name alone (a glob, a relative name: the agent finishes the match) is never quiet.
//!
//! `--cool-after 0` (or `--claim-after 0`) turns this off with the hook's cooling.

use std::collections::HashMap;

use tssx_common::event::quiet_key;

/// How long a quiet entry lasts from the sweep that set or extended it (ns): longer than a
/// sweep's period, so that a churn that goes on keeps it without a gap.
pub const QUIET_FOR_NS: u64 = 2_500_000_000;

/// Streaks kept at most (the processes and patterns that churn, or claimed lately); beyond it,
/// new ones are not counted.
const MAX_STREAKS: usize = 4096;

/// How long a claim is remembered (ns): longer than the agent takes to learn that a
/// connection made before it ended (two sweeps).
const CLAIM_MEMORY_NS: u64 = 3_000_000_000;

/// One process's streak on one pattern.
#[derive(Debug, Default, Clone, Copy)]
struct Streak {
    /// Connections that ended short-lived since the process last claimed on the pattern.
    cold: u32,
    /// Of those, the ones counted since the last sweep.
    fresh: u32,
    /// Until when the kernel was told to keep quiet (coarse clock, ns; 0: it was not).
    until: u64,
    /// When the process last claimed a connection on the pattern (ns; 0: never).
    claimed: u64,
}

/// What the kernel's `QUIET` map is to be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Leave process `tgid`'s connects on `path_id` unreported, but in probe windows, until
    /// `until` (coarse clock, ns).
    Quiet {
        /// The process.
        tgid: u32,
        /// The pattern.
        path_id: u32,
        /// The end of the quiet.
        until: u64,
        /// Whether the process was not quiet before (otherwise: extended).
        new: bool,
    },
    /// Report them all again.
    Loud {
        /// The process.
        tgid: u32,
        /// The pattern.
        path_id: u32,
    },
}

/// The streaks of every process and pattern (see the module documentation).
#[derive(Debug, Default)]
pub struct Quieting {
    streaks: HashMap<u64, Streak>,
}

impl Quieting {
    /// A connection of process `tgid` on pattern `path_id`, connected at `connected_ns`
    /// (`CLOCK_MONOTONIC`), ended before anyone claimed it.
    pub fn cold(&mut self, tgid: u32, path_id: u32, connected_ns: u64) {
        let key = quiet_key(tgid, path_id);
        if self.streaks.len() >= MAX_STREAKS && !self.streaks.contains_key(&key) {
            return;
        }
        let streak = self.streaks.entry(key).or_default();
        if connected_ns <= streak.claimed {
            return; // made before the process's last claim there
        }
        streak.cold = streak.cold.saturating_add(1);
        streak.fresh = streak.fresh.saturating_add(1);
    }

    /// Process `tgid` claimed a connection on pattern `path_id` at `now` (coarse clock, ns):
    /// its streak ends, and its quiet with it (`Some`: tell the kernel).
    pub fn claimed(&mut self, tgid: u32, path_id: u32, now: u64) -> Option<Change> {
        let key = quiet_key(tgid, path_id);
        if self.streaks.len() >= MAX_STREAKS && !self.streaks.contains_key(&key) {
            return None;
        }
        let streak = self.streaks.entry(key).or_default();
        let was_quiet = streak.until != 0;
        *streak = Streak { claimed: now, ..Streak::default() };
        was_quiet.then_some(Change::Loud { tgid, path_id })
    }

    /// The sweep at `now` (coarse clock, ns), with `cool_after` the streak that quiets (0:
    /// never): quiets (or extends) each streak of at least `cool_after` that counted an ending
    /// since the last sweep, forgets the streaks that counted none once their quiet ran out
    /// (a claim until then ends it at once) and their claim is old. Returns what the kernel is
    /// to be told.
    pub fn sweep(&mut self, now: u64, cool_after: u32) -> Vec<Change> {
        let mut changes = Vec::new();
        self.streaks.retain(|&key, streak| {
            if streak.fresh == 0 {
                return streak.until > now || streak.claimed.saturating_add(CLAIM_MEMORY_NS) > now;
            }
            streak.fresh = 0;
            if cool_after != 0 && streak.cold >= cool_after {
                let new = streak.until <= now;
                streak.until = now + QUIET_FOR_NS;
                changes.push(Change::Quiet { tgid: (key >> 32) as u32, path_id: key as u32, until: streak.until, new });
            }
            true
        });
        changes
    }
}

/// `CLOCK_MONOTONIC_COARSE` now, in nanoseconds: the clock of the program's quiet check
/// (`bpf_ktime_get_coarse_ns`) and of the hooks' probe windows.
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000_000;

    fn quiet(tgid: u32, path_id: u32, at: u64, new: bool) -> Change {
        Change::Quiet { tgid, path_id, until: at + QUIET_FOR_NS, new }
    }

    #[test]
    fn a_streak_of_cool_after_endings_quiets_its_process_and_pattern_only() {
        let mut q = Quieting::default();
        for _ in 0..7 {
            q.cold(10, 0, NOW);
        }
        q.cold(11, 0, NOW);
        q.cold(10, 1, NOW);
        assert_eq!(q.sweep(NOW, 8), [], "seven endings are no streak of eight");
        q.cold(10, 0, NOW);
        assert_eq!(q.sweep(NOW + 1, 8), [quiet(10, 0, NOW + 1, true)], "the eighth, in a later sweep: the streak counts on");
        assert_eq!(q.sweep(NOW + 2, 8), [], "no ending since: nothing extended (the entry runs out)");
        assert_eq!(q.claimed(10, 0, NOW), Some(Change::Loud { tgid: 10, path_id: 0 }), "kept while quiet: a claim ends it");
        for _ in 0..8 {
            q.cold(11, 0, NOW);
        }
        assert_eq!(q.sweep(NOW, 8), [quiet(11, 0, NOW, true)]);
        let later = NOW + QUIET_FOR_NS + 1;
        assert_eq!(q.sweep(later, 8), [], "idle, and its time ran out");
        q.cold(11, 0, NOW);
        assert_eq!(q.sweep(later + 1, 8), [], "forgotten: a new streak starts");
    }

    #[test]
    fn endings_in_probe_windows_extend_the_quiet() {
        let mut q = Quieting::default();
        for _ in 0..8 {
            q.cold(10, 0, NOW);
        }
        assert_eq!(q.sweep(NOW, 8), [quiet(10, 0, NOW, true)]);
        q.cold(10, 0, NOW);
        assert_eq!(q.sweep(NOW + 5, 8), [quiet(10, 0, NOW + 5, false)], "extended");
        q.cold(10, 0, NOW);
        let later = NOW + 5 + QUIET_FOR_NS + 1;
        assert_eq!(q.sweep(later, 8), [quiet(10, 0, later, true)], "after its time ran out: quiet again, anew");
    }

    #[test]
    fn a_claim_ends_the_streak_and_the_quiet_and_older_connections_count_no_more() {
        let mut q = Quieting::default();
        for _ in 0..8 {
            q.cold(10, 0, NOW);
        }
        assert_eq!(q.claimed(10, 0, NOW + 1), None, "not quiet yet: nothing to tell the kernel");
        assert_eq!(q.sweep(NOW + 2, 8), [], "the claim ended the streak");
        for _ in 0..8 {
            q.cold(10, 0, NOW + 3);
        }
        assert_eq!(q.sweep(NOW + 4, 8), [quiet(10, 0, NOW + 4, true)]);
        assert_eq!(q.claimed(10, 0, NOW + 5), Some(Change::Loud { tgid: 10, path_id: 0 }));
        for _ in 0..8 {
            q.cold(10, 0, NOW + 4); // connected before the claim, learnt after it
        }
        assert_eq!(q.sweep(NOW + 6, 8), [], "connections made before the claim count no more");
        for _ in 0..8 {
            q.cold(10, 0, NOW + 6);
        }
        assert_eq!(q.sweep(NOW + 7, 8), [quiet(10, 0, NOW + 7, true)], "after it, a new streak");
    }

    #[test]
    fn cool_after_zero_never_quiets() {
        let mut q = Quieting::default();
        for _ in 0..1000 {
            q.cold(10, 0, NOW);
        }
        assert_eq!(q.sweep(NOW, 0), []);
    }
}
