//! The agent's control plane: hooks claim their end of a connection on the control socket, the
//! agent checks each claim against the kernel, pairs the two ends by socket inode and hands both
//! the same shared-memory segment. Also answers `tssx-agent status`.
//!
//! # Lazy, asynchronous claims
//!
//! A connection starts plain at both ends. Each end's hook claims it later (once it lived
//! `--claim-after` or moved 64 KiB), on a fresh non-blocking control connection, and never
//! waits for the answer: it looks for it on later calls and gives up after 2 s. So the agent
//! never makes a claim wait either: a claim is refused or retried at once, or **held** (no
//! answer yet, its control connection kept) until the other end's claim arrives; then both get
//! the segment, and both control connections are closed. A held claim ends when its control
//! connection does (the hook gave up, or its socket closed: see [`watch`]) or when the sweep
//! finds its socket gone. The hooks then move the connection onto the rings themselves, and the
//! agent reads their progress in the segment's header ([`lifecycle`]).
//!
//! # Trust
//!
//! The caller's pid comes from `SO_PEERCRED`, never from the message. A claim of fd F is
//! honoured only if `/proc/PID/fd/F` is a Unix stream socket that is an end of a connection on a
//! watched path, by the kernel's word: its eBPF connect/accept events, and `sock_diag` (the
//! peer's inode; an accepted socket's name, which is its listener's path). The two ends are
//! paired by their sockets' inodes (each is the other's peer), so the segment goes only to two
//! processes that hold the two ends of one connection, and no third process can obtain it. A
//! claim from a process that forked while the connection was plain is held off ("retry") while
//! a relative holds the same end. Nothing a hook says is taken on its word.
//!
//! # Modules, one job each
//!
//! * [`registry`]: the state (kernel events, held claims, live connections, spares) with its
//!   rules; pure data, no I/O.
//! * [`comm`]: [`Comm`], a command name kept inline in each event.
//! * [`claim`]: the claim rules: which claim is honoured, holding and pairing, the limits;
//!   written against [`KernelFacts`].
//! * [`facts`]: [`KernelFacts`], what the rules ask the kernel; [`host`]: its real answers
//!   (`/proc`, `sock_diag`).
//! * [`lifecycle`]: the progress pass (`swapped`, freeing finished connections), the sweep
//!   (events and held claims of gone sockets, dead processes), the spare-segment thread.
//! * [`watch`]: the thread that watches held claims' control connections for their end.
//! * [`server`]: the control socket: worker pool, wire handling, peer credentials, timeouts,
//!   sending the decisions.
//! * [`report`]: `status` and `status --stats`.
//!
//! # Locking
//!
//! One mutex guards the [`registry`], and its critical sections only read and change its maps
//! (and the live segments' headers, which are memory). Kernel facts are gathered before the lock
//! is taken or after it is released, segments are created and freed outside it, replies are sent,
//! control connections closed and trace lines written after it. Where a rule needs facts about
//! what the lock guards (the limit's reap must know which processes are alive), the facts are
//! gathered outside and the rule runs inside with them; a fact not gathered counts as the safe
//! answer.
//!
//! # Limits
//!
//! At most `max_connections` segments are live at once, so the agent's shared memory is bounded
//! by `(max_connections + SPARE_SEGMENTS) * (2 * ring_size + header)`; a pair beyond that stays
//! plain with `PlainReason::TooManyConnections`. At most
//! [`held_claims`] (`HELD_PER_CONNECTION * max_connections`, at most [`MAX_HELD_CLAIMS`]) claims are held at once, and
//! [`registry::EVENT_CAP`] kernel events kept. Control connections being served are bounded too
//! (see [`server`]).

pub mod claim;
pub mod comm;
pub mod facts;
pub mod host;
pub mod lifecycle;
pub mod quiet;
pub mod registry;
pub mod report;
pub mod server;
pub mod watch;

#[cfg(test)]
mod fake;

use std::{
    collections::BTreeMap,
    sync::{atomic::AtomicU64, Arc, Condvar, Mutex, MutexGuard},
    time::Duration,
};

use tssx_common::event::Event;

use self::registry::Registry;
pub use self::{
    claim::{held_claims, Claimant, HELD_PER_CONNECTION, MAX_HELD_CLAIMS},
    comm::Comm,
    facts::{KernelFacts, UnixSocket},
    host::Host,
    lifecycle::SPARE_SEGMENTS,
    registry::EndInfo,
    report::{ConnectionStatus, Stats},
    server::{serve, MAX_CONTROL_CONNECTIONS, REQUEST_TIMEOUT},
};
use crate::{feed::EventFeed, paths::WatchedPath};

/// A paired connection that neither end joined this long after the pair (both closed before
/// they picked the answer up) is freed.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The lifetimes of the claim rules. The agent uses [`Timing::default`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a paired connection waits for either end to join before it is freed
    /// ([`JOIN_TIMEOUT`]).
    pub join_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self { join_timeout: JOIN_TIMEOUT }
    }
}

/// What the control plane counts since it started (`status --stats`). Every counter is
/// `Relaxed`: nothing is synchronized through them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Kernel connect events on watched paths.
    pub(crate) connects: AtomicU64,
    /// Kernel accept events on watched paths.
    pub(crate) accepts: AtomicU64,
    /// Well-formed claims.
    pub(crate) claims: AtomicU64,
    /// Connections paired.
    pub(crate) paired: AtomicU64,
    /// Connections traced `swapped`.
    pub(crate) swapped: AtomicU64,
    /// Paired connections freed before they committed.
    pub(crate) given_up: AtomicU64,
    /// Connections that ended before either end claimed them.
    pub(crate) short_lived_plain: AtomicU64,
    /// Held claims that ended unpaired.
    pub(crate) peer_never_claimed: AtomicU64,
    /// Forked claims answered "retry".
    pub(crate) retried: AtomicU64,
    /// Claims and requests refused.
    pub(crate) refused: AtomicU64,
    /// Claims whose socket and control connection closed before the agent looked.
    pub(crate) abandoned: AtomicU64,
    /// Connects the connect hook left unreported on quiet paths (the kernel's count, copied
    /// by the event loop every second).
    pub(crate) quiet_connects: AtomicU64,
    /// Client claims made before the accept with no connect event (a quiet path), answered
    /// "retry".
    pub(crate) retried_unaccepted: AtomicU64,
}

/// The control plane's shared state: the registry behind its lock, the kernel facts the rules
/// ask, the limits. Shared by the event loop (which records kernel events, sweeps and traces
/// progress), the control socket's workers (claims), the held-claims watcher and the
/// spare-segment thread.
pub struct Control {
    registry: Mutex<Registry>,
    /// Wakes the spare-segment maker (see [`lifecycle`]).
    spares_wanted: Condvar,
    facts: Box<dyn KernelFacts>,
    /// The kernel events ring buffer, which a claim drains itself when its event has not been
    /// recorded yet (`None`: events come only through [`Control::record`]).
    feed: Option<Arc<EventFeed>>,
    /// The watched patterns (ids are positions).
    paths: Vec<WatchedPath>,
    /// Per pattern id: whether the kernel program names it alone, so that quieting it there
    /// means something (see [`crate::paths::kernel_named`]).
    kernel_named: Vec<bool>,
    ring_size: usize,
    /// Capacity the rings of new segments start with (`--ring-initial`, at most `ring_size`).
    /// Relaxed: a setting read when a segment is made.
    ring_initial: std::sync::atomic::AtomicUsize,
    max_connections: usize,
    timing: Timing,
    /// Watches held claims' control connections (`None` if no epoll instance could be made:
    /// held claims then end by the sweep).
    held_watch: Option<watch::HeldWatch>,
    /// Names held claims for the watcher (Relaxed: a unique number, nothing hangs on it).
    next_token: AtomicU64,
    pub(crate) counters: Counters,
    load: server::Load,
    map_entries: Mutex<BTreeMap<String, usize>>,
    /// Which processes' connects the kernel leaves unreported (see [`quiet`]).
    quieting: Mutex<quiet::Quieting>,
    /// The streak that quiets a process's connects on a pattern (`--cool-after`; 0: never).
    /// Relaxed: a setting.
    cool_after: std::sync::atomic::AtomicU32,
}

impl Control {
    /// The control plane for `paths` (ids are positions) making segments with `ring_size`-byte
    /// rings, at most `max_connections` of them live at once; claims read kernel events from
    /// `feed` when they do not find them recorded, and ask the running kernel ([`Host`]).
    pub fn new(paths: Vec<WatchedPath>, ring_size: usize, max_connections: usize, feed: Option<Arc<EventFeed>>, host: Host) -> Arc<Self> {
        Self::with_facts(paths, ring_size, max_connections, feed, Box::new(host), Timing::default())
    }

    /// As [`Control::new`], with the kernel's answers from `facts` and the lifetimes of
    /// `timing`.
    pub fn with_facts(
        paths: Vec<WatchedPath>,
        ring_size: usize,
        max_connections: usize,
        feed: Option<Arc<EventFeed>>,
        facts: Box<dyn KernelFacts>,
        timing: Timing,
    ) -> Arc<Self> {
        let held_watch =
            watch::HeldWatch::new().inspect_err(|e| tracing::warn!("no epoll instance for held claims (the sweep ends them): {e}")).ok();
        Arc::new(Self {
            registry: Mutex::new(Registry::default()),
            spares_wanted: Condvar::new(),
            facts,
            feed,
            kernel_named: crate::paths::kernel_named(&paths),
            paths,
            ring_size,
            ring_initial: std::sync::atomic::AtomicUsize::new(tssx_common::segment::DEFAULT_INITIAL_RING_CAPACITY.min(ring_size)),
            max_connections,
            timing,
            held_watch,
            next_token: AtomicU64::new(1),
            counters: Counters::default(),
            load: server::Load::default(),
            map_entries: Mutex::new(BTreeMap::new()),
            quieting: Mutex::default(),
            cool_after: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Sets the capacity the rings of new segments start with (`--ring-initial`): a power of
    /// two, clamped to the ring size (equal to it: rings that never grow).
    pub fn set_ring_initial(&self, initial: usize) {
        let initial = if initial.is_power_of_two() { initial.min(self.ring_size) } else { self.ring_size };
        // Relaxed: see the field.
        self.ring_initial.store(initial, std::sync::atomic::Ordering::Relaxed);
    }

    /// Capacity the rings of new segments start with.
    pub(crate) fn ring_initial(&self) -> usize {
        // Relaxed: see the field.
        self.ring_initial.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Quiets a process's connects on a pattern in the kernel once `cool_after` of its
    /// connections there in a row ended plain (see [`quiet`]; 0, the default: never). The
    /// agent passes `--cool-after`, or 0 with `--claim-after 0` (the hooks then track every
    /// connection).
    pub fn set_cool_after(&self, cool_after: u32) {
        // Relaxed: see the field.
        self.cool_after.store(cool_after, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records the kernel's count of connects left unreported on quiet paths (for
    /// [`Control::stats`]).
    pub fn set_quiet_connects(&self, n: u64) {
        // Relaxed: a counter.
        self.counters.quiet_connects.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Tells the kernel `change` (see [`quiet`]), traced at debug level.
    fn apply_quiet(&self, change: quiet::Change) {
        match change {
            quiet::Change::Quiet { tgid, path_id, until, new } => {
                if new && tracing::enabled!(tracing::Level::DEBUG) {
                    let path = self.path_name(path_id);
                    tracing::debug!(
                        pid = tgid,
                        path,
                        "quiet: the process's connections there end plain; its connects outside probe windows go unreported"
                    );
                }
                self.facts.set_quiet(tgid, path_id, until);
            }
            quiet::Change::Loud { tgid, path_id } => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let path = self.path_name(path_id);
                    tracing::debug!(pid = tgid, path, "quiet no more: the process claimed a connection there");
                }
                self.facts.set_quiet(tgid, path_id, 0);
            }
        }
    }

    /// A client claim of process `tgid` on pattern `path_id` verified: its connections there
    /// are worth reporting (see [`quiet`]).
    fn note_client_claim(&self, tgid: u32, path_id: u32) {
        if !self.kernel_quiets(path_id) {
            return;
        }
        let change = self.quieting.lock().unwrap_or_else(|p| p.into_inner()).claimed(tgid, path_id, quiet::coarse_now_ns());
        if let Some(change) = change {
            self.apply_quiet(change);
        }
    }

    /// Whether the kernel program can leave connects on pattern `path_id` unreported (see
    /// [`quiet`]): only for a pattern it names alone.
    pub(super) fn kernel_quiets(&self, path_id: u32) -> bool {
        self.kernel_named.get(path_id as usize).copied().unwrap_or(false)
    }

    /// The sweep's part of [`quiet`]: quiets the streaks that reached `--cool-after`.
    fn sweep_quiet(&self) {
        // Relaxed: see the field.
        let cool_after = self.cool_after.load(std::sync::atomic::Ordering::Relaxed);
        let changes = self.quieting.lock().unwrap_or_else(|p| p.into_inner()).sweep(quiet::coarse_now_ns(), cool_after);
        for change in changes {
            self.apply_quiet(change);
        }
    }

    /// Records the current entry counts of the eBPF maps (for [`Control::stats`]).
    pub fn set_map_entries(&self, entries: BTreeMap<String, usize>) {
        *self.map_entries.lock().unwrap_or_else(|p| p.into_inner()) = entries;
    }

    /// Records a kernel connect/accept so that claims can be checked against it. A connect that
    /// replaces an unclaimed one of the same fd ends that connection: counted short-lived.
    pub fn record(&self, event: &Event) {
        // Relaxed: counters.
        match event.event_kind() {
            Some(tssx_common::event::EventKind::Connect) => self.counters.connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            Some(tssx_common::event::EventKind::Accept) => self.counters.accepts.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            _ => 0,
        };
        if event.event_kind() == Some(tssx_common::event::EventKind::IoUring) && event.other_pid != 0 {
            let ids = self.lock().io_uring_set_up(event.tgid);
            for connection in ids {
                tracing::info!(connection, pid = event.tgid, reason = "io_uring", "handing back: the process set up an io_uring");
            }
            // The hook claims nothing in a thread that blocks the signal, but a thread may block
            // it later: then the hand-back waits until it unblocks it (see `tssx_hook::uring`).
            // (Blocked while its handler runs, it is not pending: no warning then.)
            if host::holds_signal_blocked(event.tgid, event.pid, event.other_pid) == Some(true) {
                tracing::warn!(
                    pid = event.tgid,
                    tid = event.pid,
                    signal = event.other_pid,
                    "io_uring: the thread blocks the hand-back signal: its connections are handed back only when it unblocks it (io_uring reads and writes on them before that bypass the rings)"
                );
            }
            return;
        }
        let replaced = self.lock().record(event);
        if let Some(seen) = replaced {
            self.short_lived(std::slice::from_ref(&seen));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads every event now in the kernel's ring buffer and records it (see [`crate::feed`]).
    fn drain_feed(&self) {
        if let Some(feed) = &self.feed {
            feed.drain(|event| self.record(event));
        }
    }

    fn path_name(&self, path_id: u32) -> String {
        self.paths.get(path_id as usize).map(ToString::to_string).unwrap_or_default()
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> Vec<String> {
        self.paths.iter().map(ToString::to_string).collect()
    }

    /// The watched pattern that covers the name of `socket` (as `sock_diag` reports it), and
    /// that name, absolute. A relative name (bound with a relative address) is resolved to the
    /// name its socket file has: the agent's record of the listener's bind, else the working
    /// directory of process `pid` (a claimant, on the same host), checked against the file.
    fn match_socket(&self, pid: u32, socket: &UnixSocket) -> Option<(u32, Vec<u8>)> {
        let name = socket.name.as_deref()?;
        if matches!(name.first(), Some(0 | b'/')) {
            return Some((crate::paths::best_match(&self.paths, name)?, name.to_vec()));
        }
        let file = socket.file?;
        let absolute =
            self.feed.as_ref().and_then(|feed| feed.resolved_name(file)).or_else(|| self.facts.resolve_relative(pid, name, file))?;
        Some((crate::paths::best_match(&self.paths, &absolute)?, absolute))
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the kernel's event timestamps and of the
/// hooks' `active_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
