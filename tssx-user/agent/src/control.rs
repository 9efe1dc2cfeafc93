//! The agent's control socket: hooks claim their end of a connection, the agent checks the claim
//! against the kernel's events, pairs the two ends by socket inode and hands both the same
//! shared-memory segment. Also answers `tssx-agent status`.
//!
//! Trust: the caller's pid comes from `SO_PEERCRED`; a claim of fd F as a client is honoured
//! only if the kernel reported a `connect` on a watched path by that pid returning F, and only
//! if `/proc/PID/fd/F` is still that socket. A claim of fd F as a server is honoured only if
//! `/proc/PID/fd/F` is a socket whose peer (`sock_diag`) is the socket of such a verified client
//! claim: only a process that accepted (or inherited) that connection holds it. Without a
//! verified client claim, the server's claim also needs the kernel's `accept` event. The segment
//! goes only to the two processes that pass these checks for the two ends of one connection, so
//! no third process can obtain it.
//!
//! Latency: a claim whose kernel event has not been recorded yet reads the events ring buffer
//! itself ([`crate::feed`]), and a server claim whose client claimed already does not wait for
//! its accept event at all.
//!
//! Control connections are served by a pool of persistent worker threads blocked in `accept`
//! (no thread is created per claim; the pool grows when all are busy, see [`serve`]), with
//! blocking I/O and timeouts: claims are short. At most [`MAX_CONTROL_CONNECTIONS`] are served
//! at once (more are closed at once, so the hook stays plain), and one that does not send a
//! complete request within [`REQUEST_TIMEOUT`] is dropped: garbage, half messages and idle
//! connections cost a bounded number of threads for a bounded time.
//!
//! Limits: at most `max_connections` segments are live at once, so the agent's shared memory is
//! bounded by `(max_connections + SPARE_SEGMENTS) * (2 * ring_size + header)`; a client claim
//! beyond that stays plain with [`PlainReason::TooManyConnections`].
//!
//! Spare segments: creating a segment (memfd, size, seals, mapping, header) costs tens of
//! microseconds, so a thread of its own keeps up to [`SPARE_SEGMENTS`] ready for the next claims,
//! off the claims' path. It runs at `SCHED_IDLE` priority, so it only uses a core that nothing
//! else wants: on a busy machine the claims' processes go first (and a claim that finds no spare
//! creates its segment itself). Spares exist only while connections are live: when the last one
//! is freed, they are dropped with it, so an idle agent holds no memfd. A spare is never handed
//! out twice and never reused after a connection.
//!
//! A client's claim stays pending while its connection waits in the listener's accept queue
//! (the kernel's `sock_diag` lists it there), however long the server takes to accept: bytes the
//! client writes meanwhile wait in its ring, and a client that fills the ring blocks, as with a
//! full socket. Once accepted, a server that does not claim within [`PENDING_TTL`] has no hook:
//! the connection turns plain and the client replays what it wrote.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::{
            fs::PermissionsExt as _,
            net::{UnixListener, UnixStream},
        },
    },
    path::Path,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;
use tssx_common::{
    control::{PlainReason, Reply, Request, RequestKind, Role, REQUEST_SIZE},
    event::{Event, EventKind},
    segment::{End, SegmentState},
};

use tssx_shm::{fdpass, segment::Segment};

use crate::{feed::EventFeed, paths::WatchedPath, sockdiag};

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
/// A control connection that has not sent a complete request after this long is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Writing a reply may take at most this long (a caller that does not read is dropped).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections served at once; more are closed at once (their hooks stay plain).
pub const MAX_CONTROL_CONNECTIONS: usize = 256;

/// One end of a connection as the kernel reported it.
#[derive(Clone, Debug, Serialize)]
pub struct EndInfo {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// The socket's fd in that process.
    pub fd: i32,
}

#[derive(Clone, Debug)]
struct Seen {
    end: EndInfo,
    path_id: u32,
    at: Instant,
}

/// A connection that got a segment.
struct Connection {
    id: u64,
    /// When the connection was last known to wait for the server: created, or last seen in a
    /// listener's accept queue (see [`Registry::sweep`]).
    waiting_since: Instant,
    /// The client socket's inode.
    client_inode: u32,
    /// A `not swapped` line was traced for it already (by the sweep).
    plain_traced: bool,
    path: String,
    client: EndInfo,
    server: Option<EndInfo>,
    segment: Segment,
    /// The client's claim connection, held open while the connection is pending and closed once
    /// the agent decided (after the state change): a hook that sees it close while the segment
    /// is still pending knows the agent died and can turn the connection plain itself.
    decision_watch: Option<UnixStream>,
}

impl Connection {
    /// Bytes each end has written through shared memory, `(client->server, server->client)`:
    /// the producers' free-running positions.
    fn bytes_each_way(&self) -> (u64, u64) {
        (self.segment.ring_positions(End::Client).0, self.segment.ring_positions(End::Server).0)
    }
}

/// A live connection as `tssx-agent status` lists it (one JSON object per line).
#[derive(Debug, Serialize)]
pub struct ConnectionStatus {
    /// The agent's id for the connection.
    pub id: u64,
    /// The watched path.
    pub path: String,
    /// The connecting end.
    pub client: EndInfo,
    /// The accepting end, once it joined.
    pub server: Option<EndInfo>,
    /// `pending`, `active`, `plain` or `closed`.
    pub state: String,
    /// Bytes the client wrote through shared memory.
    pub bytes_client_to_server: u64,
    /// Bytes the server wrote through shared memory.
    pub bytes_server_to_client: u64,
}

/// Counts of the agent's resources (`tssx-agent status --stats`): what must stay flat however
/// many connections come and go.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// The agent's pid.
    pub pid: u32,
    /// Segments the agent holds (pending, active, or plain/closed not yet swept).
    pub live_segments: usize,
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--ring-size`.
    pub ring_size: usize,
    /// Bytes of shared memory the live segments span.
    pub segment_bytes: u64,
    /// Fresh segments created ahead of claims (not counted in `live_segments`).
    pub spare_segments: usize,
    /// Client claims waiting for their server.
    pub pending_claims: usize,
    /// Kernel connect/accept events recorded and not yet claimed or expired.
    pub unclaimed_events: usize,
    /// Control connections being served now (other than the one asking for these stats).
    pub control_connections: usize,
    /// Control connections closed unserved because [`MAX_CONTROL_CONNECTIONS`] were busy.
    pub control_connections_refused: u64,
    /// Entries in each eBPF hash map (updated every second by the event loop).
    pub bpf_map_entries: BTreeMap<String, usize>,
}

#[derive(Default)]
struct Inner {
    connects: HashMap<(u32, i32), Seen>,
    accepts: HashMap<(u32, i32), Seen>,
    /// Client-claimed connections waiting for their server, by the client socket's inode (the
    /// server's socket has no inode until `accept`, so the server side looks its peer up).
    pending: HashMap<u32, u64>,
    live: BTreeMap<u64, Connection>,
    next_id: u64,
    /// Whether a process carries the hook (its TSSX bit, read from its memory map), and when
    /// that was checked: answers are reused for [`HOOK_CHECK_TTL`].
    hooked: HashMap<u32, (bool, Instant)>,
    /// Client sockets (by inode) whose server already stayed plain, and when: a client claim
    /// that arrives after that is answered plain at once, instead of leaving the client pending
    /// with bytes its server never reads from the ring.
    plain_servers: HashMap<u32, Instant>,
    /// Server ends granted before their accept event arrived, by `(pid, fd)`, with how many such
    /// events are still due: [`Registry::record`] drops them instead of keeping them unclaimed.
    accepts_due: HashMap<(u32, i32), (u32, Instant)>,
    /// Fresh segments created ahead of the claims that will use them (see the module doc).
    spares: Vec<Segment>,
    /// Bumped whenever the spares are dropped, so that a segment created meanwhile is not kept.
    spares_generation: u64,
}

/// Most spare segments kept ready (each is one memfd and one mapped header page until used).
pub const SPARE_SEGMENTS: usize = 4;

/// How long a process's "carries the hook" answer is reused (a process may exec another image).
const HOOK_CHECK_TTL: Duration = Duration::from_secs(2);

/// Whether process `pid` has `libtssx_preload.so` mapped (false if it cannot be read).
fn carries_hook(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| maps.contains("libtssx_preload"))
}

impl Inner {
    /// The client end of the connection whose client socket is `peer`, if its connect event is
    /// here and its process does not carry the hook: it will never claim, so the server need
    /// not wait for it.
    fn client_without_hook(&mut self, peer: u32, path_id: u32) -> Option<EndInfo> {
        let client = self
            .connects
            .iter()
            .find(|(&(pid, fd), seen)| seen.path_id == path_id && sockdiag::socket_inode(pid, fd).ok().flatten() == Some(peer))
            .map(|(_, seen)| seen.end.clone())?;
        let now = Instant::now();
        let hooked = match self.hooked.get(&client.pid) {
            Some(&(hooked, at)) if now.duration_since(at) < HOOK_CHECK_TTL => hooked,
            _ => {
                let hooked = carries_hook(client.pid);
                self.hooked.insert(client.pid, (hooked, now));
                hooked
            }
        };
        (!hooked).then_some(client)
    }
}

/// State shared by the event loop (which records kernel events) and the control threads.
pub struct Registry {
    inner: Mutex<Inner>,
    /// The kernel events ring buffer, which a claim drains itself when its event has not been
    /// recorded yet (`None`: events come only through [`Registry::record`]).
    feed: Option<Arc<EventFeed>>,
    changed: Condvar,
    /// Wakes the spare-segment maker (see [`Registry::make_spares`]).
    spares_wanted: Condvar,
    paths: Vec<WatchedPath>,
    ring_size: usize,
    max_connections: usize,
    /// Control connections being served (Relaxed: a counter, no data hangs on it).
    serving: AtomicUsize,
    /// Control connections refused because too many were being served (Relaxed: a counter).
    refused: AtomicU64,
    map_entries: Mutex<BTreeMap<String, usize>>,
}

impl Registry {
    /// A registry for `paths` (ids are positions) making segments with `ring_size`-byte rings,
    /// at most `max_connections` of them live at once; claims read kernel events from `feed`
    /// when they do not find them recorded.
    pub fn new(paths: Vec<WatchedPath>, ring_size: usize, max_connections: usize, feed: Option<Arc<EventFeed>>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner { next_id: 1, ..Inner::default() }),
            feed,
            changed: Condvar::new(),
            spares_wanted: Condvar::new(),
            paths,
            ring_size,
            max_connections,
            serving: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            map_entries: Mutex::new(BTreeMap::new()),
        })
    }

    /// Records the current entry counts of the eBPF maps (for [`Registry::stats`]).
    pub fn set_map_entries(&self, entries: BTreeMap<String, usize>) {
        *self.map_entries.lock().unwrap_or_else(|p| p.into_inner()) = entries;
    }

    /// The agent's resource counts.
    pub fn stats(&self) -> Stats {
        let inner = self.lock();
        Stats {
            pid: std::process::id(),
            live_segments: inner.live.len(),
            max_connections: self.max_connections,
            ring_size: self.ring_size,
            segment_bytes: inner.live.values().map(|c| c.segment.layout().total_size as u64).sum(),
            spare_segments: inner.spares.len(),
            pending_claims: inner.pending.len(),
            unclaimed_events: inner.connects.len() + inner.accepts.len(),
            control_connections: self.serving.load(Ordering::Relaxed),
            control_connections_refused: self.refused.load(Ordering::Relaxed),
            bpf_map_entries: self.map_entries.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a kernel connect/accept so that claims can be checked against it.
    pub fn record(&self, event: &Event) {
        let key_end = |fd| EndInfo { pid: event.tgid, comm: String::from_utf8_lossy(event.comm_bytes()).into_owned(), fd };
        let mut inner = self.lock();
        match event.event_kind() {
            Some(EventKind::Connect) => {
                inner.connects.insert((event.tgid, event.fd), Seen { end: key_end(event.fd), path_id: event.path_id, at: Instant::now() });
            }
            Some(EventKind::Accept) => {
                let key = (event.tgid, event.new_fd);
                if let Some((due, _)) = inner.accepts_due.get_mut(&key) {
                    // Its claim was granted already (see `Registry::claim_server`).
                    *due -= 1;
                    if *due == 0 {
                        inner.accepts_due.remove(&key);
                    }
                    return;
                }
                inner
                    .accepts
                    .insert((event.tgid, event.new_fd), Seen { end: key_end(event.new_fd), path_id: event.path_id, at: Instant::now() });
            }
            _ => return,
        }
        drop(inner);
        self.changed.notify_all();
    }

    /// Drops stale events, turns plain the pending connections whose server (accepted, no
    /// hook) never claimed, and frees the segments of finished connections. Call periodically.
    pub fn sweep(&self) {
        let mut inner = self.lock();
        inner.connects.retain(|_, s| s.at.elapsed() < EVENT_TTL);
        inner.accepts.retain(|_, s| s.at.elapsed() < EVENT_TTL);
        inner.hooked.retain(|_, (_, at)| at.elapsed() < HOOK_CHECK_TTL);
        inner.plain_servers.retain(|_, at| at.elapsed() < EVENT_TTL);
        // An accept event arrives within milliseconds of its claim; one that never came (lost
        // in a full ring buffer) must not swallow a later accept of the same fd.
        inner.accepts_due.retain(|_, (_, at)| at.elapsed() < EVENT_WAIT);
        let overdue = |c: &Connection| c.server.is_none() && c.waiting_since.elapsed() > PENDING_TTL;
        if inner.live.values().any(overdue) {
            // Still in an accept queue: the server has not accepted yet, keep waiting for it.
            // If the kernel cannot tell, assume accepted (plain is always safe).
            let queued = sockdiag::unaccepted_clients().unwrap_or_else(|e| {
                tracing::warn!("listing accept queues: {e}");
                Default::default()
            });
            for conn in inner.live.values_mut() {
                if overdue(conn) && queued.contains(&conn.client_inode) {
                    conn.waiting_since = Instant::now();
                }
            }
        }
        let expired: Vec<u64> = inner.live.values().filter(|c| overdue(c)).map(|c| c.id).collect();
        for id in expired {
            inner.pending.retain(|_, v| *v != id);
            if let Some(conn) = inner.live.get_mut(&id) {
                if conn.segment.transition(SegmentState::Pending, SegmentState::Plain).is_ok() {
                    conn.plain_traced = true;
                    conn.decision_watch = None;
                    tracing::info!(
                        connection = id,
                        path = conn.path,
                        client = conn.client.pid,
                        reason = PlainReason::PeerHasNoHook.describe(),
                        "not swapped"
                    );
                }
            }
        }
        Self::reap(&mut inner);
    }

    /// Frees the segments of connections that are over: plain, both ends closed, or both
    /// processes gone.
    fn reap(inner: &mut Inner) {
        let dead: Vec<u64> = inner
            .live
            .values()
            .filter(|c| {
                c.segment.state() == Some(SegmentState::Plain)
                    || (c.server.is_some() && c.segment.header().refcount.iter().all(|r| r.load(Ordering::Acquire) == 0))
                    || (!alive(c.client.pid) && c.server.as_ref().is_none_or(|s| !alive(s.pid)))
            })
            .map(|c| c.id)
            .collect();
        let freed: Vec<Connection> = dead.iter().filter_map(|id| inner.live.remove(id)).collect();
        if !freed.is_empty() && inner.live.is_empty() {
            // Idle: no spares either (dropped before the `closed` lines are traced).
            inner.spares.clear();
            inner.spares_generation += 1;
        }
        for conn in freed {
            let id = conn.id;
            inner.pending.retain(|_, v| *v != id);
            if conn.server.is_none() && conn.segment.state() == Some(SegmentState::Plain) && !conn.plain_traced {
                // The client's hook saw the peer write to the real socket and went plain.
                tracing::info!(
                    connection = id,
                    path = conn.path,
                    client = conn.client.pid,
                    reason = PlainReason::PeerHasNoHook.describe(),
                    "not swapped"
                );
            }
            let (c2s, s2c) = conn.bytes_each_way();
            tracing::info!(
                connection = id,
                path = conn.path,
                bytes_client_to_server = c2s,
                bytes_server_to_client = s2c,
                "closed: segment freed"
            );
        }
    }

    /// The live connections.
    pub fn status(&self) -> Vec<ConnectionStatus> {
        self.lock()
            .live
            .values()
            .map(|c| (c, c.bytes_each_way()))
            .map(|(c, (bytes_client_to_server, bytes_server_to_client))| ConnectionStatus {
                id: c.id,
                path: c.path.clone(),
                client: c.client.clone(),
                server: c.server.clone(),
                state: match c.segment.state() {
                    Some(SegmentState::Pending) => "pending",
                    Some(SegmentState::Active) => "active",
                    Some(SegmentState::Plain) => "plain",
                    Some(SegmentState::Closed) => "closed",
                    None => "corrupt",
                }
                .to_owned(),
                bytes_client_to_server,
                bytes_server_to_client,
            })
            .collect()
    }

    /// Waits until `find` returns something or `timeout` passes.
    fn wait_for<T>(&self, timeout: Duration, mut find: impl FnMut(&mut Inner) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if let Some(found) = find(&mut inner) {
                return Some(found);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            inner = self.changed.wait_timeout(inner, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn path_name(&self, path_id: u32) -> String {
        self.paths.get(path_id as usize).map(ToString::to_string).unwrap_or_default()
    }

    /// Handles a claim; returns the reply and, for a swap, the id of the connection whose
    /// segment fd must go with it.
    fn claim(&self, pid: u32, uid: u32, role: Role, fd: i32) -> (Reply, Option<Granted>) {
        if role == Role::Server {
            return self.claim_server(pid, uid, fd);
        }
        let who = Claimant { pid, uid, fd, role };
        // 1. The kernel must have seen this process connect this fd on a watched path.
        let Some(seen) = self.await_event(role, pid, fd) else { return who.refused(PlainReason::NotSeen) };
        // 2. The fd must still be that socket.
        let Ok(Some(inode)) = sockdiag::socket_inode(pid, fd) else { return who.refused(PlainReason::NotSeen) };
        if self.lock().plain_servers.remove(&inode).is_some() {
            // Its server claimed first, found no client claim, and reads the real socket.
            return who.not_swapped(PlainReason::PeerHasNoHook);
        }
        let spare = self.lock().spares.pop();
        let segment = match spare.map_or_else(|| Segment::create(self.ring_size), Ok) {
            Ok(segment) => segment,
            Err(e) => {
                tracing::warn!("creating a segment: {e}");
                return who.not_swapped(PlainReason::NoSegment);
            }
        };
        segment.set_tssx_bit(End::Client, true);
        // Release: the end counts as present before the segment reaches anyone.
        segment.header().refcount[End::Client.index()].store(1, std::sync::atomic::Ordering::Release);
        let path = self.path_name(seen.path_id);
        // The limit is checked and the segment counted in one critical section, so that
        // concurrent claims cannot overshoot it (a refused segment is simply dropped).
        let mut inner = self.lock();
        if inner.live.len() >= self.max_connections {
            Self::reap(&mut inner); // finished ones may not have been swept yet
        }
        if inner.live.len() >= self.max_connections {
            drop(inner);
            tracing::info!(pid, fd, role = ?role, path, max_connections = self.max_connections, reason = PlainReason::TooManyConnections.describe(), "not swapped");
            return (Reply::plain(PlainReason::TooManyConnections), None);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.pending.insert(inode, id);
        inner.live.insert(
            id,
            Connection {
                id,
                waiting_since: Instant::now(),
                client_inode: inode,
                plain_traced: false,
                path: path.clone(),
                client: seen.end.clone(),
                server: None,
                segment,
                decision_watch: None,
            },
        );
        drop(inner);
        self.changed.notify_all();
        (Reply::swap(id), Some(Granted::Client { id, pid, comm: seen.end.comm, fd, path }))
    }

    /// The spare-segment maker's loop (never returns): sleeps until spares are wanted (fewer
    /// than [`SPARE_SEGMENTS`] while connections are live), then makes them.
    fn make_spares(&self) {
        // SAFETY: sets the calling thread's policy from a live sched_param; a failure (e.g. not
        // permitted) leaves it at normal priority, which is only less polite.
        let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &libc::sched_param { sched_priority: 0 }) };
        if idle != 0 {
            tracing::debug!("spare segments: SCHED_IDLE refused: {}", std::io::Error::last_os_error());
        }
        loop {
            let mut inner = self.lock();
            while inner.spares.len() >= SPARE_SEGMENTS || inner.live.is_empty() {
                inner = self.spares_wanted.wait(inner).unwrap_or_else(|p| p.into_inner());
            }
            drop(inner);
            self.refill_spares();
        }
    }

    /// Creates spare segments until there are [`SPARE_SEGMENTS`], while connections are live.
    fn refill_spares(&self) {
        loop {
            let generation = {
                let inner = self.lock();
                if inner.spares.len() >= SPARE_SEGMENTS || inner.live.is_empty() {
                    return;
                }
                inner.spares_generation
            };
            let segment = match Segment::create(self.ring_size) {
                Ok(segment) => segment,
                Err(e) => {
                    tracing::warn!("creating a spare segment: {e}");
                    return;
                }
            };
            let mut inner = self.lock();
            if inner.spares_generation != generation || inner.live.is_empty() {
                drop(inner);
                drop(segment); // the spares were dropped meanwhile: so is this one
                return;
            }
            inner.spares.push(segment);
        }
    }

    /// The kernel's connect (client) or accept (server) event for `fd` of `pid`, taken out of
    /// the registry: recorded already, or drained from the ring buffer now (it was submitted
    /// before the syscall returned to the claiming process), or else waited for up to
    /// [`EVENT_WAIT`].
    fn await_event(&self, role: Role, pid: u32, fd: i32) -> Option<Seen> {
        let take = |inner: &mut Inner| match role {
            Role::Client => inner.connects.remove(&(pid, fd)),
            Role::Server => inner.accepts.remove(&(pid, fd)),
        };
        if let Some(seen) = take(&mut self.lock()) {
            return Some(seen);
        }
        if let Some(feed) = &self.feed {
            feed.drain(self);
        }
        self.wait_for(EVENT_WAIT, take)
    }

    /// Handles a server's claim of its accepted `fd`.
    ///
    /// The proof is the socket itself: `/proc/PID/fd/FD` must be a socket whose peer
    /// (`sock_diag`) is the client socket of a connection whose client claim the kernel backed
    /// (its connect event on a watched path). Before `accept()` that server socket is in no
    /// process's fd table, so a process that holds it is an end of that connection, by the
    /// kernel's word, with or without its accept event: the claim needs not wait for that event.
    /// When the client has not claimed (yet), the accept event is required as before, and the
    /// claim waits up to [`PEER_WAIT`] for the client's claim (not at all if the connect event
    /// shows a client without the hook). A fd that is no such socket is refused.
    fn claim_server(&self, pid: u32, uid: u32, fd: i32) -> (Reply, Option<Granted>) {
        let who = Claimant { pid, uid, fd, role: Role::Server };
        let Ok(Some(inode)) = sockdiag::socket_inode(pid, fd) else { return who.refused(PlainReason::NotSeen) };
        let Ok(Some(peer)) = sockdiag::unix_peer(inode) else { return who.refused(PlainReason::NotSeen) };
        enum Found {
            /// The connection the client claimed.
            Client(u64),
            /// The server's accept event (the client has not claimed yet).
            Event(Seen),
        }
        let take_pending = |inner: &mut Inner| inner.pending.remove(&peer).map(Found::Client);
        let mut found = take_pending(&mut self.lock());
        if found.is_none() {
            if let Some(feed) = &self.feed {
                feed.drain(self);
            }
            found = self.wait_for(EVENT_WAIT, |inner| take_pending(inner).or_else(|| inner.accepts.remove(&(pid, fd)).map(Found::Event)));
        }
        let (id, event) = match found {
            Some(Found::Client(id)) => (id, None),
            Some(Found::Event(seen)) => {
                // Wait for the client's claim, unless the kernel's connect event shows a client
                // process without the hook (a plain client must not cost the server a wait).
                let client = self.wait_for(PEER_WAIT, |inner| match inner.pending.remove(&peer) {
                    Some(id) => Some(Some(id)),
                    None => inner.client_without_hook(peer, seen.path_id).map(|_| None),
                });
                let Some(Some(id)) = client else {
                    self.lock().plain_servers.insert(peer, Instant::now());
                    return who.not_swapped(PlainReason::PeerHasNoHook);
                };
                (id, Some(seen))
            }
            None => return who.refused(PlainReason::NotSeen),
        };
        let mut inner = self.lock();
        let event = event.or_else(|| {
            // Granted on the socket's evidence: use the accept event if it came, else let it be
            // dropped when it does.
            let seen = inner.accepts.remove(&(pid, fd));
            if seen.is_none() {
                let due = inner.accepts_due.entry((pid, fd)).or_insert((0, Instant::now()));
                *due = (due.0 + 1, Instant::now());
            }
            seen
        });
        let end = match event {
            Some(seen) => seen.end,
            None => EndInfo { pid, comm: process_comm(pid), fd },
        };
        let Some(conn) = inner.live.get_mut(&id) else { return who.not_swapped(PlainReason::PeerHasNoHook) };
        conn.segment.set_tssx_bit(End::Server, true);
        // Release, before the Active transition: a client that sees Active must also see the
        // server end present, not "gone" (refcount 0) while its hook maps the segment.
        conn.segment.header().refcount[End::Server.index()].store(1, std::sync::atomic::Ordering::Release);
        if conn.segment.transition(SegmentState::Pending, SegmentState::Active).is_err() {
            drop(inner);
            return who.not_swapped(PlainReason::PeerHasNoHook);
        }
        let granted = Granted::Server {
            id,
            path: conn.path.clone(),
            client: format!("{}/{}", conn.client.pid, conn.client.comm),
            server: format!("{pid}/{}", end.comm),
        };
        conn.server = Some(end);
        conn.decision_watch = None; // after the transition: the client sees Active
        (Reply::swap(id), Some(granted))
    }
}

/// The process that claims a fd, for the trace line of a claim answered plain.
#[derive(Clone, Copy)]
struct Claimant {
    pid: u32,
    uid: u32,
    fd: i32,
    role: Role,
}

impl Claimant {
    /// The connection stays plain for `reason`: traced `not swapped`.
    fn not_swapped(self, reason: PlainReason) -> (Reply, Option<Granted>) {
        tracing::info!(pid = self.pid, fd = self.fd, role = ?self.role, reason = reason.describe(), "not swapped");
        (Reply::plain(reason), None)
    }

    /// A claim the kernel does not back is refused: a process asking for a socket that is not
    /// its own end of a connection on a watched path (or a stale fd). Traced `claim refused`.
    fn refused(self, reason: PlainReason) -> (Reply, Option<Granted>) {
        tracing::warn!(pid = self.pid, uid = self.uid, fd = self.fd, role = ?self.role, reason = reason.describe(), "claim refused");
        (Reply::plain(reason), None)
    }
}

/// The command name of process `pid` (`/proc/PID/comm`; empty if it cannot be read).
fn process_comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end_matches('\n').to_owned()).unwrap_or_default()
}

/// A granted claim: the connection whose segment goes with the reply, and what its trace line
/// says (traced right after the reply is sent, off the claim's path).
enum Granted {
    /// A client's claim: the segment is the client's, waiting for the server.
    Client { id: u64, pid: u32, comm: String, fd: i32, path: String },
    /// A server's claim: both ends swapped (`client` and `server` as `pid/comm`).
    Server { id: u64, path: String, client: String, server: String },
}

impl Granted {
    fn id(&self) -> u64 {
        match *self {
            Granted::Client { id, .. } | Granted::Server { id, .. } => id,
        }
    }

    fn trace(&self) {
        match self {
            Granted::Client { id, pid, comm, fd, path } => {
                tracing::info!(connection = id, pid, comm, fd, path, "client claimed: segment sent, waiting for the server")
            }
            Granted::Server { id, path, client, server } => tracing::info!(connection = id, path, "swapped {client} <-> {server}"),
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Creates the control socket in `state_dir` and serves it on a pool of worker threads (see
/// `WorkerPool`).
///
/// The socket is mode 0666: `connect()` on a Unix socket needs write permission on its file,
/// and hooks in processes of every uid must reach the agent (a server running as `nobody`
/// swaps with a root client). That is safe because the socket grants nothing by itself: every
/// claim is checked against the kernel's events for the caller's own pid (`SO_PEERCRED`), and a
/// segment goes only to the two ends of one connection. The directory stays 0755 (root-owned),
/// so nobody else can replace the socket or the published paths.
pub fn serve(registry: Arc<Registry>, state_dir: &Path) -> anyhow::Result<()> {
    let path = state_dir.join(tssx_common::control::CONTROL_SOCKET);
    let _ = std::fs::remove_file(&path); // stale, from an agent that died (we hold the lock)
    let listener = UnixListener::bind(&path).with_context(|| format!("creating the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    // Accepted sockets inherit the listener's timeouts, so a connection costs no setsockopt:
    // reads time out after REQUEST_TIMEOUT, writes after WRITE_TIMEOUT. On the listener, the
    // receive timeout also ends a blocking accept (EAGAIN), which lets spare workers retire.
    set_timeout(listener.as_raw_fd(), libc::SO_RCVTIMEO, REQUEST_TIMEOUT).context("setting the control socket's request timeout")?;
    set_timeout(listener.as_raw_fd(), libc::SO_SNDTIMEO, WRITE_TIMEOUT).context("setting the control socket's write timeout")?;
    thread::Builder::new()
        .name("tssx-spares".into())
        .spawn({
            let registry = Arc::clone(&registry);
            move || registry.make_spares()
        })
        .context("starting the spare-segment maker")?;
    let pool = Arc::new(WorkerPool { listener, registry, workers: AtomicUsize::new(0), idle: AtomicUsize::new(0) });
    for _ in 0..CORE_WORKERS {
        pool.spawn_worker().context("starting the control workers")?;
    }
    Ok(())
}

/// Workers kept blocked in `accept` on the control socket even when idle.
const CORE_WORKERS: usize = 2;
/// The control socket's workers: threads that each block in `accept` on the listener (the
/// kernel wakes one of them per connection) and serve the connection they got, so a claim costs
/// no thread creation. When a worker takes a connection and none is left waiting in `accept`, it
/// starts one more first, up to [`MAX_CONTROL_CONNECTIONS`] serving plus one accepting: the
/// pool grows with the load and a connection beyond the cap is still accepted at once, and
/// closed unserved.
struct WorkerPool {
    listener: UnixListener,
    registry: Arc<Registry>,
    /// Live workers (Relaxed: counters; they guard no data).
    workers: AtomicUsize,
    /// Workers waiting in `accept`.
    idle: AtomicUsize,
}

impl WorkerPool {
    /// Starts one more worker (counted as idle from now).
    fn spawn_worker(self: &Arc<Self>) -> std::io::Result<()> {
        self.workers.fetch_add(1, Ordering::Relaxed);
        self.idle.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::clone(self);
        thread::Builder::new().name("tssx-control".into()).spawn(move || pool.work()).map(drop).inspect_err(|_| {
            self.workers.fetch_sub(1, Ordering::Relaxed);
            self.idle.fetch_sub(1, Ordering::Relaxed);
        })
    }

    fn work(self: Arc<Self>) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    // Idle for REQUEST_TIMEOUT: a spare worker leaves, a core one waits on.
                    if self.retire_if_spare() {
                        return;
                    }
                    continue;
                }
                Err(_) => continue, // e.g. ECONNABORTED, EMFILE: nothing to serve
            };
            let was_idle = self.idle.fetch_sub(1, Ordering::Relaxed);
            if self.registry.serving.fetch_add(1, Ordering::Relaxed) >= MAX_CONTROL_CONNECTIONS {
                self.registry.serving.fetch_sub(1, Ordering::Relaxed);
                self.registry.refused.fetch_add(1, Ordering::Relaxed);
                self.idle.fetch_add(1, Ordering::Relaxed);
                continue; // dropped: the caller sees EOF and stays plain
            }
            // Keep someone in accept: the next claim must not wait for this one to finish.
            if was_idle == 1 && self.workers.load(Ordering::Relaxed) <= MAX_CONTROL_CONNECTIONS {
                let _ = self.spawn_worker(); // on failure: later connections wait in the backlog
            }
            handle(&self.registry, stream);
            self.registry.serving.fetch_sub(1, Ordering::Relaxed);
            self.idle.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends this worker's service if there are more than [`CORE_WORKERS`]; true if it must exit.
    fn retire_if_spare(&self) -> bool {
        let mut workers = self.workers.load(Ordering::Relaxed);
        while workers > CORE_WORKERS {
            match self.workers.compare_exchange_weak(workers, workers - 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.idle.fetch_sub(1, Ordering::Relaxed);
                    return true;
                }
                Err(now) => workers = now,
            }
        }
        false
    }
}

/// Sets the `SO_RCVTIMEO` or `SO_SNDTIMEO` of socket `fd` to `timeout`.
fn set_timeout(fd: libc::c_int, option: libc::c_int, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: timeout.subsec_micros() as libc::suseconds_t };
    // SAFETY: passes a live timeval of the stated size.
    let rc = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, option, (&tv as *const libc::timeval).cast(), size_of_val(&tv) as libc::socklen_t)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Serves one control connection (its read and write timeouts come from the listener).
fn handle(registry: &Registry, mut stream: UnixStream) {
    let Some((pid, uid)) = peer_cred(&stream) else { return };
    let mut buf = [0u8; REQUEST_SIZE];
    if stream.read_exact(&mut buf).is_err() {
        tracing::debug!(pid, uid, "control connection closed without a complete request");
        return;
    }
    let request = match Request::decode(&buf) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(pid, uid, reason = PlainReason::BadRequest.describe(), error = %e, "claim refused");
            let _ = stream.write_all(&Reply::plain(PlainReason::BadRequest).encode());
            return;
        }
    };
    match request.request_kind() {
        Some(RequestKind::Status) => {
            for conn in registry.status() {
                let Ok(line) = serde_json::to_string(&conn) else { continue };
                if writeln!(stream, "{line}").is_err() {
                    return;
                }
            }
        }
        Some(RequestKind::Stats) => {
            let mut stats = registry.stats();
            stats.control_connections = stats.control_connections.saturating_sub(1); // not this one
            if let Ok(line) = serde_json::to_string(&stats) {
                let _ = writeln!(stream, "{line}");
            }
        }
        Some(RequestKind::Claim) => {
            let role = request.request_role().expect("validated by decode");
            let (reply, granted) = registry.claim(pid, uid, role, request.fd);
            let mut inner = registry.lock();
            let fd = granted.as_ref().and_then(|g| inner.live.get(&g.id())).and_then(|c| c.segment.fd());
            let sent = fdpass::send_with_fd(stream.as_raw_fd(), &reply.encode(), fd);
            if let Err(e) = sent {
                drop(inner);
                tracing::warn!(pid, "sending the claim reply: {e}");
                return;
            }
            // A pending client keeps its claim connection until the decision (see
            // `Connection::decision_watch`); one already decided is closed now.
            let connection = granted.as_ref().map(Granted::id);
            if let Some(conn) = connection.and_then(|id| inner.live.get_mut(&id)) {
                if role == Role::Client && conn.segment.state() == Some(SegmentState::Pending) {
                    conn.decision_watch = Some(stream);
                }
            }
            drop(inner);
            // After the reply: tracing and spare segments are off the claim's path.
            if let Some(granted) = &granted {
                granted.trace();
            }
            if matches!(granted, Some(Granted::Client { .. })) {
                registry.spares_wanted.notify_one();
            }
        }
        None => {}
    }
}

/// The pid and uid of the process at the other end of a control connection (`SO_PEERCRED`).
fn peer_cred(stream: &UnixStream) -> Option<(u32, u32)> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live ucred.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    (rc == 0 && cred.pid > 0).then_some((cred.pid as u32, cred.uid))
}
