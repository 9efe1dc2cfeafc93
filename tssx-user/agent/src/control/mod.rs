//! The agent's control plane: hooks claim their end of a connection on the control socket, the
//! agent checks the claim against the kernel's events, pairs the two ends by socket inode and
//! hands both the same shared-memory segment. Also answers `tssx-agent status`.
//!
//! # Trust
//!
//! The caller's pid comes from `SO_PEERCRED`, never from the message. A claim of fd F as a client
//! is honoured only if the kernel reported a `connect` on a watched path by that pid returning F,
//! and only if `/proc/PID/fd/F` is still a socket. A claim of fd F as a server is honoured only if
//! `/proc/PID/fd/F` is a socket whose peer (`sock_diag`) is the socket of such a verified client
//! claim: only a process that accepted (or inherited) that connection holds it. Without a
//! verified client claim, the server's claim also needs the kernel's `accept` event. The segment
//! goes only to the two processes that pass these checks for the two ends of one connection, so
//! no third process can obtain it. Every such fact is the kernel's ([`KernelFacts`]), asked by
//! the agent itself; nothing a hook says is taken on its word.
//!
//! # Modules, one job each
//!
//! * [`registry`]: the state (recorded events, live connections, pending claims) with its rules;
//!   pure data, no I/O.
//! * [`claim`]: the claim rules: which claim is honoured, pairing, the connection limit; written
//!   against [`KernelFacts`].
//! * [`facts`]: [`KernelFacts`], what the rules ask the kernel; [`host`]: its real answers
//!   (`/proc`, `sock_diag`).
//! * [`lifecycle`]: the periodic sweep (expiry, accept queues), reaping finished connections, the
//!   spare-segment thread.
//! * [`server`]: the control socket: worker pool, wire handling, peer credentials, timeouts.
//! * [`report`]: `status` and `status --stats`.
//!
//! # Locking
//!
//! One mutex guards the [`registry`], and its critical sections only read and change its maps
//! (and the live segments' headers, which are memory). Kernel facts are gathered before the lock
//! is taken or after it is released, segments are created and freed outside it, replies are sent
//! and trace lines written after it. Where a rule needs facts about what the lock guards (the
//! limit's reap must know which processes are alive), the facts are gathered outside and the
//! rule runs inside with them; a fact not gathered counts as the safe answer.
//!
//! # Latency
//!
//! A claim whose kernel event has not been recorded yet reads the events ring buffer itself
//! ([`crate::feed`]), and a server claim whose client claimed already does not wait for its
//! accept event at all.
//!
//! # Limits
//!
//! At most `max_connections` segments are live at once, so the agent's shared memory is bounded
//! by `(max_connections + SPARE_SEGMENTS) * (2 * ring_size + header)`; a client claim beyond that
//! stays plain with `PlainReason::TooManyConnections`. Control connections are bounded too (see
//! [`server`]).
//!
//! # Pending connections
//!
//! A client's claim stays pending while its connection waits in the listener's accept queue (the
//! kernel's `sock_diag` lists it there), however long the server takes to accept: bytes the
//! client writes meanwhile wait in its ring, and a client that fills the ring blocks, as with a
//! full socket. Once accepted, a server that does not claim within [`PENDING_TTL`] has no hook:
//! the connection turns plain and the client replays what it wrote.

pub mod claim;
pub mod facts;
pub mod host;
pub mod lifecycle;
pub mod registry;
pub mod report;
pub mod server;

#[cfg(test)]
mod fake;

use std::{
    collections::BTreeMap,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tssx_common::event::Event;

use self::registry::Registry;
pub use self::{
    facts::KernelFacts,
    host::Host,
    lifecycle::SPARE_SEGMENTS,
    registry::EndInfo,
    report::{ConnectionStatus, Stats},
    server::{serve, MAX_CONTROL_CONNECTIONS, REQUEST_TIMEOUT},
};
use crate::{feed::EventFeed, paths::WatchedPath};

/// How long a claim waits for the kernel event that proves it (events reach the agent through
/// the ring buffer a little after the syscall returned).
const EVENT_WAIT: Duration = Duration::from_millis(1000);
/// How long a server's claim waits for the client's claim of the other end.
const PEER_WAIT: Duration = Duration::from_millis(500);
/// Kernel events older than this that nobody claimed are forgotten.
const EVENT_TTL: Duration = Duration::from_secs(30);
/// A client-claimed connection whose server has not claimed this long after the connection
/// left the accept queue turns plain (the server has no hook): the client replays its bytes.
pub const PENDING_TTL: Duration = Duration::from_secs(2);
/// How long a process's "carries the hook" answer is reused (a process may exec another image).
const HOOK_CHECK_TTL: Duration = Duration::from_secs(2);

/// The waits and lifetimes of the claim rules. The agent uses [`Timing::default`]; the unit
/// tests shorten the waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a claim waits for the kernel event that proves it.
    pub event_wait: Duration,
    /// How long a server's claim waits for the client's claim of the other end.
    pub peer_wait: Duration,
    /// How long an unclaimed kernel event (and a server that stayed plain) is remembered.
    pub event_ttl: Duration,
    /// How long an accepted connection waits for its server's claim ([`PENDING_TTL`]).
    pub pending_ttl: Duration,
    /// How long a "carries the hook" answer is reused.
    pub hook_check_ttl: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            event_wait: EVENT_WAIT,
            peer_wait: PEER_WAIT,
            event_ttl: EVENT_TTL,
            pending_ttl: PENDING_TTL,
            hook_check_ttl: HOOK_CHECK_TTL,
        }
    }
}

/// The control plane's shared state: the registry behind its lock, the kernel facts the rules
/// ask, the limits. Shared by the event loop (which records kernel events and sweeps), the
/// control socket's workers (claims) and the spare-segment thread.
pub struct Control {
    registry: Mutex<Registry>,
    /// Signalled (after the lock is released) when a kernel event is recorded or a client claim
    /// admitted: what waiting claims wait for.
    changed: Condvar,
    /// Wakes the spare-segment maker (see [`lifecycle`]).
    spares_wanted: Condvar,
    facts: Box<dyn KernelFacts>,
    /// The kernel events ring buffer, which a claim drains itself when its event has not been
    /// recorded yet (`None`: events come only through [`Control::record`]).
    feed: Option<Arc<EventFeed>>,
    paths: Vec<WatchedPath>,
    ring_size: usize,
    max_connections: usize,
    timing: Timing,
    load: server::Load,
    map_entries: Mutex<BTreeMap<String, usize>>,
}

impl Control {
    /// The control plane for `paths` (ids are positions) making segments with `ring_size`-byte
    /// rings, at most `max_connections` of them live at once; claims read kernel events from
    /// `feed` when they do not find them recorded, and ask the running kernel ([`Host`]).
    pub fn new(paths: Vec<WatchedPath>, ring_size: usize, max_connections: usize, feed: Option<Arc<EventFeed>>) -> Arc<Self> {
        Self::with_facts(paths, ring_size, max_connections, feed, Box::new(Host), Timing::default())
    }

    /// As [`Control::new`], with the kernel's answers from `facts` and the waits of `timing`.
    pub fn with_facts(
        paths: Vec<WatchedPath>,
        ring_size: usize,
        max_connections: usize,
        feed: Option<Arc<EventFeed>>,
        facts: Box<dyn KernelFacts>,
        timing: Timing,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry: Mutex::new(Registry::default()),
            changed: Condvar::new(),
            spares_wanted: Condvar::new(),
            facts,
            feed,
            paths,
            ring_size,
            max_connections,
            timing,
            load: server::Load::default(),
            map_entries: Mutex::new(BTreeMap::new()),
        })
    }

    /// Records the current entry counts of the eBPF maps (for [`Control::stats`]).
    pub fn set_map_entries(&self, entries: BTreeMap<String, usize>) {
        *self.map_entries.lock().unwrap_or_else(|p| p.into_inner()) = entries;
    }

    /// Records a kernel connect/accept so that claims can be checked against it.
    pub fn record(&self, event: &Event) {
        let kept = self.lock().record(event, Instant::now());
        if kept {
            self.changed.notify_all();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `find` returns something or `timeout` passes. `find` runs under the lock: it
    /// must only look at and change the registry.
    fn wait_for<T>(&self, timeout: Duration, mut find: impl FnMut(&mut Registry) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut registry = self.lock();
        loop {
            if let Some(found) = find(&mut registry) {
                return Some(found);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            registry = self.changed.wait_timeout(registry, left).unwrap_or_else(|p| p.into_inner()).0;
        }
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
}
