//! The control plane's state: kernel events kept while their sockets may still be claimed, claims
//! held until the other end's arrives, live connections and their segments, and the spare
//! segments.
//!
//! Pure data and rules: nothing here reads `/proc`, asks `sock_diag`, creates or frees a segment,
//! writes a trace line or sends on (or closes) a socket. Methods take the time (`now`) and the
//! kernel facts they need as arguments, and hand back what must happen outside the lock (claims
//! to answer or close, segments to free, lines to trace) as values. [`super::Control`] keeps the
//! registry behind its mutex, so every method runs inside one critical section.
//!
//! Trust: entries come from two sources only: the kernel's own events (`Registry::record`), and
//! claims that [`super::claim`] checked against the kernel before it hands them here. Reading a
//! live segment's header (its state, the ends' migration lines and refcounts) is memory, not
//! I/O, and happens here under the lock, so that every decision about a connection is taken in
//! one place at a time.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::net::UnixStream,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use serde::Serialize;
use tssx_common::{
    control::Role,
    event::{Event, EventKind},
    segment::{End, EndLine, SegmentState, JOIN_MAPPED, JOIN_NONE, JOIN_REFUSED, NOT_YET, SHUT_RESET},
};
use tssx_shm::segment::Segment;

use super::comm::Comm;

/// The registry's maps: keyed by small integers that every connection adds and removes, hashed
/// with foldhash (randomly seeded per map) rather than SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Most kernel connect/accept events kept at once (both kinds together); beyond it the oldest
/// are forgotten (their sockets can still be claimed: the claim rules fall back on `sock_diag`).
pub const EVENT_CAP: usize = 1 << 16;
/// How long the sockets of a claim whose peer never claimed are remembered, so that their
/// connect event, when the socket goes, is not counted as a short-lived connection as well.
const UNPAIRED_MEMORY: Duration = Duration::from_secs(60);

/// One end of a connection as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndInfo {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: Comm,
    /// The socket's fd in that process.
    pub fd: i32,
}

impl EndInfo {
    /// `pid/comm`, as trace lines name an end.
    pub fn label(&self) -> String {
        format!("{}/{}", self.pid, self.comm)
    }
}

/// Which kind of kernel event: the map it is kept in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Side {
    /// `connect`, keyed by the client's `(pid, fd)`.
    Connect,
    /// `accept`, keyed by the server's `(pid, accepted fd)`.
    Accept,
}

/// A kernel connect or accept event, kept while its socket may still be claimed.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    /// The end the event names (for an accept, the accepted fd).
    pub(super) end: EndInfo,
    /// The watched path's id.
    pub(super) path_id: u32,
    /// The event's kernel time (`bpf_ktime_get_ns`, CLOCK_MONOTONIC).
    pub(super) ts_ns: u64,
    /// Arrival order: tells this event from a later one with the same key; the oldest go first
    /// at the cap.
    seq: u64,
    /// Its socket's inode, once a sweep read it.
    inode: Option<u32>,
}

/// Where an event is kept, and which one it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct EventRef {
    side: Side,
    pid: u32,
    fd: i32,
    /// A connect seen by the cgroup hook: its socket's cookie (the key; `pid` and `fd` unused).
    /// 0 for an event keyed by `(pid, fd)` (no socket has cookie 0).
    cookie: u64,
    seq: u64,
}

/// An event whose socket the sweep must look at, outside the lock: is its fd still the socket
/// it was?
#[derive(Clone, Copy, Debug)]
pub(super) struct EventCheck {
    /// The event.
    pub(super) at: EventRef,
}

impl EventCheck {
    /// The process and fd to look at.
    pub(super) fn fd(&self) -> (u32, i32) {
        (self.at.pid, self.at.fd)
    }
}

/// What the kernel says about an event's fd now (see [`EventCheck`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FdNow {
    /// It is a socket with this inode.
    Socket(u32),
    /// Closed, not a socket, or the process is gone.
    Gone,
}

/// A claim that [`super::claim`] checked against the kernel.
#[derive(Clone, Debug)]
pub(super) struct Verified {
    /// Which end it claims.
    pub(super) role: Role,
    /// The claimant and its fd (the connected or accepted one, from the kernel event when the
    /// agent has it).
    pub(super) end: EndInfo,
    /// The fd the claim named (the same socket; possibly a duplicate of `end.fd`).
    pub(super) fd: i32,
    /// The claimed socket's inode.
    pub(super) inode: u32,
    /// Its peer's inode; 0 for a client whose connection waits in the accept queue (the
    /// server's socket has no inode yet).
    pub(super) peer: u32,
    /// The watched path.
    pub(super) path_id: u32,
    /// The socket's address as `sock_diag` named it (absolute), if the agent asked.
    pub(super) name: Option<Vec<u8>>,
    /// The kernel time of its connect/accept event, if the agent has it.
    pub(super) event_ns: Option<u64>,
    /// That event, used up when the claim is held or paired.
    pub(super) event: Option<EventRef>,
}

/// A verified claim waiting for the other end's: its control connection is kept, unanswered.
pub(super) struct Held {
    /// Identifies this claim to the watcher of its control connection.
    pub(super) token: u64,
    /// The claim.
    pub(super) claim: Verified,
    /// When it was held.
    pub(super) since: Instant,
    /// The hook's control connection, answered once the other end claims.
    pub(super) stream: UnixStream,
}

/// What [`Registry::hold_or_pair`] decided.
pub(super) enum Step {
    /// The other end's claim was held: it is taken out of the registry to be paired with this
    /// one, with a spare segment if there was one.
    Pair {
        /// The other end's claim.
        partner: Held,
        /// A fresh segment for the pair (else the caller creates one).
        spare: Option<Segment>,
        /// This claim's control connection.
        stream: UnixStream,
    },
    /// Held until the other end claims. `replaced`: an earlier claim of the same socket, to be
    /// closed after the lock.
    Held {
        /// The earlier claim this one replaced.
        replaced: Option<Held>,
    },
    /// Too many claims are held: this one is answered plain.
    Full {
        /// This claim's control connection.
        stream: UnixStream,
    },
}

/// A pair of claims with their segment, to be admitted as a live connection.
pub(super) struct NewConnection {
    /// The socket's address (else the pattern).
    pub(super) path: Box<str>,
    /// The watched pattern that covers it.
    pub(super) pattern: Box<str>,
    /// The connecting end.
    pub(super) client: EndInfo,
    /// The accepting end.
    pub(super) server: EndInfo,
    /// The client's and the server's socket inodes.
    pub(super) inodes: [u32; 2],
    /// When the connection was made (kernel time, see [`Connection::connected_ns`]).
    pub(super) connected_ns: u64,
    /// The segment both ends get.
    pub(super) segment: Arc<Segment>,
}

/// A connection that got a segment.
pub(super) struct Connection {
    /// The agent's id for it.
    pub(super) id: u64,
    /// The socket's address, for trace lines and status.
    pub(super) path: Box<str>,
    /// The watched pattern that covers it.
    pub(super) pattern: Box<str>,
    /// The connecting end (the claimant).
    pub(super) client: EndInfo,
    /// The accepting end (the claimant).
    pub(super) server: EndInfo,
    /// The client's and the server's socket inodes.
    pub(super) inodes: [u32; 2],
    /// Shared so that a reply can carry its fd after the lock is released; freed when the last
    /// holder drops it.
    pub(super) segment: Arc<Segment>,
    /// When it was paired.
    pub(super) paired_at: Instant,
    /// When the connection was made, CLOCK_MONOTONIC ns: the kernel's connect event (or its
    /// accept event, or the first claim, when the agent has no such event).
    pub(super) connected_ns: u64,
    /// Its `swapped` line was traced.
    pub(super) swapped_traced: bool,
    /// A process of one of its ends set up an io_uring while holding it: its hook was
    /// signalled to hand the connection back (traced as the hand-back's reason).
    pub(super) io_uring: bool,
}

/// A `swapped` trace line: both ends completed the migration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SwappedLine {
    /// The connection's id.
    pub(super) id: u64,
    /// The socket's address.
    pub(super) path: String,
    /// The watched pattern that covers it.
    pub(super) pattern: String,
    /// `pid/comm` of the client.
    pub(super) client: String,
    /// `pid/comm` of the server.
    pub(super) server: String,
    /// Bytes the client wrote to the socket before its writes moved onto its ring.
    pub(super) switched_client_to_server: u64,
    /// Bytes the server wrote to the socket before its writes moved onto its ring.
    pub(super) switched_server_to_client: u64,
    /// From the connection's making to the later end's completed migration, microseconds.
    pub(super) migrated_after_us: u64,
}

impl Connection {
    /// Bytes each end has written through shared memory, `(client->server, server->client)`:
    /// the producers' free-running positions.
    pub(super) fn bytes_each_way(&self) -> (u64, u64) {
        (self.segment.ring_positions(End::Client).0, self.segment.ring_positions(End::Server).0)
    }

    fn line(&self, end: End) -> &EndLine {
        &self.segment.header().ends[end.index()]
    }

    /// The bytes `end` wrote to the socket before it moved its writes onto its ring; `None`
    /// before that.
    pub(super) fn switched_at(&self, end: End) -> Option<u64> {
        // Acquire: pairs with the hook's SeqCst store (a snapshot for status and traces).
        Some(self.line(end).switch_at.load(Ordering::Acquire)).filter(|&at| at != NOT_YET)
    }

    /// Where `end` is in its migration (see [`super::ConnectionStatus::ends`]).
    pub(super) fn end_phase(&self, end: End) -> &'static str {
        let line = self.line(end);
        // Acquire/Relaxed: a snapshot for status (the hooks store these with SeqCst).
        if line.active_ns.load(Ordering::Relaxed) != 0 {
            return "active";
        }
        if self.switched_at(end).is_some() {
            return "switched";
        }
        if line.ready.load(Ordering::Acquire) == 1 {
            return "ready";
        }
        match line.joined.load(Ordering::Acquire) {
            JOIN_NONE => "not joined",
            JOIN_REFUSED => "refused",
            _ => "joined",
        }
    }

    /// Some direction moved onto the rings (the migration is committed).
    pub(super) fn committed(&self) -> bool {
        self.switched_at(End::Client).is_some() || self.switched_at(End::Server).is_some()
    }

    /// The ends' `joined` values ([`JOIN_NONE`], `JOIN_MAPPED`, `JOIN_REFUSED`), each with the
    /// reason code the end stored before it refused (`gave_up`: a `GiveUp` code, untrusted; 0 if
    /// none).
    pub(super) fn joined_and_why(&self) -> [(u32, u32); 2] {
        [End::Client, End::Server].map(|end| {
            let line = self.line(end);
            // Acquire: pairs with the hook's SeqCst store of `joined`, which it makes after its
            // Relaxed store of `gave_up`: so that load sees the code of a refusal it saw.
            let joined = line.joined.load(Ordering::Acquire);
            (joined, line.gave_up.load(Ordering::Relaxed))
        })
    }

    /// The `swapped` line, once both ends completed their migration (both `active_ns` set).
    pub(super) fn swapped_line(&self) -> Option<SwappedLine> {
        // Relaxed: timestamps for the trace; the switch positions are loaded with Acquire.
        let active = [End::Client, End::Server].map(|end| self.line(end).active_ns.load(Ordering::Relaxed));
        if active.contains(&0) {
            return None;
        }
        let latest = active[0].max(active[1]);
        Some(SwappedLine {
            id: self.id,
            path: self.path.to_string(),
            pattern: self.pattern.to_string(),
            client: self.client.label(),
            server: self.server.label(),
            switched_client_to_server: self.switched_at(End::Client).unwrap_or(0),
            switched_server_to_client: self.switched_at(End::Server).unwrap_or(0),
            migrated_after_us: latest.saturating_sub(self.connected_ns) / 1000,
        })
    }

    /// Why it is over at `now`, judged by the segment's header and `alive`; `None` if it is not.
    fn finished(&self, alive: &Alive, now: Instant, join_timeout: Duration) -> Option<Finished> {
        let joined = self.joined_and_why().map(|(joined, _)| joined);
        match self.segment.state() {
            Some(SegmentState::Plain) => return Some(if self.committed() { Finished::HandedBack } else { Finished::GaveUp }),
            Some(SegmentState::Closed) | None => return Some(Finished::Closed),
            _ => {}
        }
        // Acquire: the segment is freed only after what its ends did before letting go.
        let released = self.segment.header().refcount.iter().all(|r| r.load(Ordering::Acquire) == 0);
        if !joined.contains(&JOIN_NONE) && released {
            return Some(Finished::Closed);
        }
        if !alive.is_alive(self.client.pid) && !alive.is_alive(self.server.pid) {
            return Some(Finished::ProcessesGone);
        }
        if joined == [JOIN_NONE; 2] && now.saturating_duration_since(self.paired_at) > join_timeout {
            return Some(Finished::NeverJoined);
        }
        None
    }
}

/// Why a connection was freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Finished {
    /// State `Plain` before anything went on the rings: an end gave the migration up.
    GaveUp,
    /// State `Plain` after the migration was committed: handed back to the socket.
    HandedBack,
    /// Both ends joined and let go (refcounts 0), or the state is `Closed`.
    Closed,
    /// Both processes are gone.
    ProcessesGone,
    /// Neither end picked the segment up within the join timeout.
    NeverJoined,
}

/// What [`Registry::reap`] took out: to free and trace after the lock.
#[derive(Default)]
pub(super) struct Reaped {
    /// Spare segments dropped because no connection is live any more (freed first).
    pub(super) spares: Vec<Segment>,
    /// The finished connections, in id order, and why.
    pub(super) freed: Vec<(Connection, Finished)>,
}

/// Which processes are alive, as far as the caller asked the kernel; a pid it did not ask about
/// counts as alive (the safe answer: its connection is kept until a later reap knows better).
#[derive(Debug, Default)]
pub(super) struct Alive(HashMap<u32, bool>);

impl Alive {
    /// Records the kernel's answer for `pid`.
    pub(super) fn insert(&mut self, pid: u32, alive: bool) {
        self.0.insert(pid, alive);
    }

    /// Whether an answer for `pid` is here.
    pub(super) fn knows(&self, pid: u32) -> bool {
        self.0.contains_key(&pid)
    }

    fn is_alive(&self, pid: u32) -> bool {
        self.0.get(&pid).copied().unwrap_or(true)
    }
}

/// A connect seen by the cgroup hook whose socket the sweep asks `sock_diag` about (outside the
/// lock): is it still there?
#[derive(Clone, Copy, Debug)]
pub(super) struct CookieCheck {
    /// The event.
    pub(super) at: EventRef,
    /// Its kernel time (`bpf_ktime_get_ns`).
    pub(super) ts_ns: u64,
}

impl CookieCheck {
    /// The socket's cookie.
    pub(super) fn cookie(&self) -> u64 {
        self.at.cookie
    }
}

/// The state. See the module doc.
pub(super) struct Registry {
    /// Connect events by `(pid, fd)` (syscall tracepoints).
    connects: FastMap<(u32, i32), Seen>,
    /// Connect events by socket cookie (the cgroup hook: no fd; the end's `fd` is -1).
    cookies: FastMap<u64, Seen>,
    /// Accept events by `(pid, accepted fd)`.
    accepts: FastMap<(u32, i32), Seen>,
    next_seq: u64,
    /// Claims waiting for the other end's, by the claimed socket's inode.
    held: FastMap<u32, Held>,
    /// The held claims' inodes by token.
    held_tokens: FastMap<u64, u32>,
    live: BTreeMap<u64, Connection>,
    next_id: u64,
    /// Sockets of claims that ended unpaired (the claimant's and its peer), and when (see
    /// [`UNPAIRED_MEMORY`]).
    unpaired_peers: FastMap<u32, Instant>,
    /// Fresh segments created ahead of the claims that will use them.
    spares: Vec<Segment>,
    /// Bumped whenever the spares are dropped, so that a segment created meanwhile is not kept.
    spares_generation: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            connects: FastMap::default(),
            cookies: FastMap::default(),
            accepts: FastMap::default(),
            next_seq: 0,
            held: FastMap::default(),
            held_tokens: FastMap::default(),
            live: BTreeMap::new(),
            next_id: 1,
            unpaired_peers: FastMap::default(),
            spares: Vec::new(),
            spares_generation: 0,
        }
    }
}

impl Registry {
    // ---- kernel events ----------------------------------------------------------------------

    fn events(&mut self, side: Side) -> &mut FastMap<(u32, i32), Seen> {
        match side {
            Side::Connect => &mut self.connects,
            Side::Accept => &mut self.accepts,
        }
    }

    /// Process `pid` set up an io_uring and its hook was signalled to hand its connections back:
    /// marks its live connections (see [`Connection::io_uring`]); returns their ids.
    pub(super) fn io_uring_set_up(&mut self, pid: u32) -> Vec<u64> {
        let mut ids = Vec::new();
        for conn in self.live.values_mut().filter(|c| c.client.pid == pid || c.server.pid == pid) {
            conn.io_uring = true;
            ids.push(conn.id);
        }
        ids
    }

    /// Records a kernel connect or accept so that claims can be checked against it (other kinds
    /// are ignored). Returns the unclaimed connect event it replaced, if any: the same fd of
    /// the same process, so that connection's socket is gone (a short-lived connection).
    pub(super) fn record(&mut self, event: &Event) -> Option<Seen> {
        let (side, fd) = match event.event_kind() {
            Some(EventKind::Connect) if event.socket_cookie().is_some() => (Side::Connect, -1),
            Some(EventKind::Connect) => (Side::Connect, event.fd),
            Some(EventKind::Accept) => (Side::Accept, event.new_fd),
            _ => return None,
        };
        let end = EndInfo { pid: event.tgid, comm: Comm::from_bytes(event.comm_bytes()), fd };
        let seq = self.next_seq;
        self.next_seq += 1;
        let seen = Seen { end, path_id: event.path_id, ts_ns: event.ts_ns, seq, inode: None };
        let replaced = match event.socket_cookie() {
            // A cookie is never reused: nothing to replace.
            Some(cookie) => self.cookies.insert(cookie, seen).and(None),
            None => self.events(side).insert((event.tgid, fd), seen),
        };
        if self.unclaimed_events() > EVENT_CAP {
            self.forget_oldest_events();
        }
        replaced.filter(|_| side == Side::Connect)
    }

    /// At the cap: forgets the oldest eighth of the events.
    fn forget_oldest_events(&mut self) {
        let mut seqs: Vec<u64> = self.connects.values().chain(self.accepts.values()).chain(self.cookies.values()).map(|s| s.seq).collect();
        let cut = seqs.len() / 8;
        let (_, &mut threshold, _) = seqs.select_nth_unstable(cut);
        self.connects.retain(|_, s| s.seq > threshold);
        self.accepts.retain(|_, s| s.seq > threshold);
        self.cookies.retain(|_, s| s.seq > threshold);
    }

    /// The `side` event for `fd` of `pid`, if kept (a copy: it is used up only when the claim
    /// is held or paired).
    pub(super) fn event(&self, side: Side, pid: u32, fd: i32) -> Option<(Seen, EventRef)> {
        let map = match side {
            Side::Connect => &self.connects,
            Side::Accept => &self.accepts,
        };
        map.get(&(pid, fd)).map(|seen| (seen.clone(), EventRef { side, pid, fd, cookie: 0, seq: seen.seq }))
    }

    /// The connect event the cgroup hook reported for the socket whose cookie is `cookie`, if
    /// kept (a copy, as [`Registry::event`]).
    pub(super) fn event_by_cookie(&self, cookie: u64) -> Option<(Seen, EventRef)> {
        let seen = self.cookies.get(&cookie)?;
        Some((seen.clone(), EventRef { side: Side::Connect, pid: seen.end.pid, fd: -1, cookie, seq: seen.seq }))
    }

    /// The kept event `at` refers to, if it is still that one.
    fn event_mut(&mut self, at: EventRef) -> Option<&mut Seen> {
        let seen = if at.cookie != 0 { self.cookies.get_mut(&at.cookie) } else { self.events(at.side).get_mut(&(at.pid, at.fd)) };
        seen.filter(|s| s.seq == at.seq)
    }

    /// The fds of `pid`'s kept `side` events, with their sockets' inodes where known; `None` if
    /// there are more than `most` (the search would cost too much).
    pub(super) fn events_of(&self, side: Side, pid: u32, most: usize) -> Option<Vec<(i32, Option<u32>)>> {
        let map = match side {
            Side::Connect => &self.connects,
            Side::Accept => &self.accepts,
        };
        let found: Vec<(i32, Option<u32>)> =
            map.iter().filter(|((p, _), _)| *p == pid).map(|(&(_, fd), s)| (fd, s.inode)).take(most + 1).collect();
        (found.len() <= most).then_some(found)
    }

    /// Takes out the event `at` refers to, if it is still that one.
    fn take_event(&mut self, at: EventRef) -> Option<Seen> {
        if at.cookie != 0 {
            self.event_mut(at)?;
            return self.cookies.remove(&at.cookie);
        }
        let map = self.events(at.side);
        if map.get(&(at.pid, at.fd)).is_some_and(|s| s.seq == at.seq) {
            map.remove(&(at.pid, at.fd))
        } else {
            None
        }
    }

    /// Kernel connect/accept events kept and not claimed.
    pub(super) fn unclaimed_events(&self) -> usize {
        self.connects.len() + self.accepts.len() + self.cookies.len()
    }

    /// Every kept event, for the sweep to look at its socket (outside the lock).
    pub(super) fn events_to_check(&self) -> Vec<EventCheck> {
        let refs = |side: Side, map: &FastMap<(u32, i32), Seen>| -> Vec<EventCheck> {
            map.iter().map(|(&(pid, fd), s)| EventCheck { at: EventRef { side, pid, fd, cookie: 0, seq: s.seq } }).collect()
        };
        let mut checks = refs(Side::Connect, &self.connects);
        checks.extend(refs(Side::Accept, &self.accepts));
        checks
    }

    /// Applies what the kernel said about the events' sockets: a socket seen for the first time
    /// is remembered; an event whose fd is gone, or is another socket now, is dropped. Returns
    /// the dropped connect events that count as short-lived connections (never claimed: not the
    /// event of a held claim, nor the peer of a claim that ended unpaired).
    pub(super) fn apply_event_checks(&mut self, results: &[(EventRef, FdNow)]) -> Vec<Seen> {
        let held: std::collections::HashSet<EventRef> = self.held.values().filter_map(|h| h.claim.event).collect();
        let mut short_lived = Vec::new();
        for &(at, now) in results {
            let Some(seen) = self.event_mut(at) else { continue };
            match (now, seen.inode) {
                (FdNow::Socket(inode), None) => seen.inode = Some(inode),
                (FdNow::Socket(inode), Some(known)) if inode == known => {}
                _ => {
                    let Some(gone) = self.take_event(at) else { continue };
                    let unpaired = gone.inode.is_some_and(|i| self.unpaired_peers.contains_key(&i));
                    if at.side == Side::Connect && !unpaired && !held.contains(&at) {
                        short_lived.push(gone);
                    }
                }
            }
        }
        short_lived
    }

    /// Every kept connect event of the cgroup hook, for the sweep to ask `sock_diag` whether
    /// its socket is still there (outside the lock).
    pub(super) fn cookies_to_check(&self) -> Vec<CookieCheck> {
        self.cookies
            .iter()
            .map(|(&cookie, s)| CookieCheck {
                at: EventRef { side: Side::Connect, pid: s.end.pid, fd: -1, cookie, seq: s.seq },
                ts_ns: s.ts_ns,
            })
            .collect()
    }

    /// Applies what `sock_diag` said about the cgroup hook's connect events (`connected`: the
    /// inode of each one's socket if it is connected now, `None` if it is not): a socket seen
    /// for the first time is remembered; one that is gone (or never connected: a failed
    /// connect, once its event is older than `settle_ns` at `now_ns`) drops its event.
    /// Returns the dropped events that count as short-lived connections, as
    /// [`Registry::apply_event_checks`].
    pub(super) fn apply_cookie_checks(&mut self, results: &[(CookieCheck, Option<u32>)], now_ns: u64, settle_ns: u64) -> Vec<Seen> {
        // The same rules as for the events kept by fd, once the answers say the same thing: a
        // socket (connected now), or gone (never seen connected counts as gone once settled).
        let answers: Vec<(EventRef, FdNow)> = results
            .iter()
            .filter_map(|&(check, inode)| match inode {
                Some(inode) => Some((check.at, FdNow::Socket(inode))),
                // Not connected yet, and young: its connect may still be under way.
                None if now_ns.saturating_sub(check.ts_ns) < settle_ns
                    && self.cookies.get(&check.at.cookie).is_some_and(|s| s.inode.is_none()) =>
                {
                    None
                }
                None => Some((check.at, FdNow::Gone)),
            })
            .collect();
        self.apply_event_checks(&answers)
    }

    // ---- held claims ------------------------------------------------------------------------

    /// Claims held now.
    pub(super) fn held_count(&self) -> usize {
        self.held.len()
    }

    /// The path of a held client claim whose socket is `inode` (a server claim whose socket's
    /// peer it is holds the other end of that verified connection).
    pub(super) fn held_client_path(&self, inode: u32) -> Option<u32> {
        self.held.get(&inode).filter(|h| h.claim.role == Role::Client).map(|h| h.claim.path_id)
    }

    /// Decides a verified claim (its control connection `stream`, watched under `token`): if
    /// the other end's claim is held (its socket is this claim's peer, and this one its peer),
    /// both are paired: the other is taken out, with a spare segment. Otherwise this claim is
    /// held, unless `cap` claims are held already. A claim uses its kernel event up when it is
    /// paired, not while it is held nor when it ends unpaired: a later claim of the same socket
    /// (say, after a stale claim of a reused fd number was held against it) still finds it.
    pub(super) fn hold_or_pair(&mut self, claim: Verified, stream: UnixStream, token: u64, cap: usize, now: Instant) -> Step {
        // A held client whose server had not accepted yet knew no peer inode (0): the new
        // claim's socket, whose peer it is, is that peer.
        let is_partner = |h: &Held| h.claim.role != claim.role && (h.claim.peer == claim.inode || h.claim.peer == 0);
        let partner_key = if claim.peer != 0 {
            self.held.get(&claim.peer).is_some_and(is_partner).then_some(claim.peer)
        } else {
            // A client checked before its server accepted knew no peer; the server may have
            // accepted, claimed and been held since (its claim names this socket as its peer).
            // Rare (a race of the two claims), so a scan rather than a second index.
            self.held.iter().find(|(_, h)| h.claim.role != claim.role && h.claim.peer == claim.inode).map(|(&inode, _)| inode)
        };
        if let Some(key) = partner_key {
            let partner = self.held.remove(&key).expect("checked above");
            self.held_tokens.remove(&partner.token);
            for at in [claim.event, partner.claim.event].into_iter().flatten() {
                self.take_event(at);
            }
            return Step::Pair { partner, spare: self.spares.pop(), stream };
        }
        let replaces = self.held.contains_key(&claim.inode);
        if !replaces && self.held.len() >= cap {
            return Step::Full { stream };
        }
        let inode = claim.inode;
        // Its event's socket is the claimed one (checked together): the sweep needs not learn it.
        if let Some(at) = claim.event {
            if let Some(seen) = self.event_mut(at) {
                seen.inode.get_or_insert(inode);
            }
        }
        let replaced = self.held.insert(inode, Held { token, claim, since: now, stream });
        if let Some(old) = &replaced {
            self.held_tokens.remove(&old.token);
        }
        self.held_tokens.insert(token, inode);
        Step::Held { replaced }
    }

    /// Takes out the held claim watched under `token` (its control connection ended), if it is
    /// still held; its socket and its peer's are remembered as unpaired (their connect event, when
    /// their socket goes, is no short-lived connection). Its event is kept: a later claim of the
    /// same socket may need it.
    pub(super) fn take_held(&mut self, token: u64, now: Instant) -> Option<Held> {
        let inode = self.held_tokens.remove(&token)?;
        let held = self.held.remove(&inode)?;
        self.unpaired_peers.insert(held.claim.inode, now);
        self.unpaired_peers.insert(held.claim.peer, now);
        Some(held)
    }

    /// The held claims, as `(token, pid, fd, inode)`, for the sweep to check that each claimed
    /// socket is still there (outside the lock).
    pub(super) fn held_to_check(&self) -> Vec<(u64, u32, i32, u32)> {
        self.held.values().map(|h| (h.token, h.claim.end.pid, h.claim.fd, h.claim.inode)).collect()
    }

    // ---- connections ------------------------------------------------------------------------

    /// Live connections (migrating, swapped, or plain/closed not yet reaped).
    pub(super) fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The live connections, in id order.
    pub(super) fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.live.values()
    }

    /// Admits a pair as a live connection, unless `max` connections are live: then it is handed
    /// back (its segment is dropped after the lock). The check and the insert are one step, so
    /// concurrent pairs cannot overshoot the limit.
    pub(super) fn admit(&mut self, max: usize, pair: NewConnection, now: Instant) -> Result<u64, NewConnection> {
        if self.live.len() >= max {
            return Err(pair);
        }
        let id = self.next_id;
        self.next_id += 1;
        let NewConnection { path, pattern, client, server, inodes, connected_ns, segment } = pair;
        self.live.insert(
            id,
            Connection {
                id,
                path,
                pattern,
                client,
                server,
                inodes,
                segment,
                paired_at: now,
                connected_ns,
                swapped_traced: false,
                io_uring: false,
            },
        );
        Ok(id)
    }

    /// The `swapped` lines of the connections that completed their migration since the last
    /// call (each connection's once).
    pub(super) fn take_swapped(&mut self) -> Vec<SwappedLine> {
        let mut lines = Vec::new();
        for conn in self.live.values_mut().filter(|c| !c.swapped_traced) {
            if let Some(line) = conn.swapped_line() {
                conn.swapped_traced = true;
                lines.push(line);
            }
        }
        lines
    }

    // ---- lifecycle --------------------------------------------------------------------------

    /// Forgets the unpaired peers older than [`UNPAIRED_MEMORY`] at `now`.
    pub(super) fn forget_stale(&mut self, now: Instant) {
        self.unpaired_peers.retain(|_, at| now.saturating_duration_since(*at) < UNPAIRED_MEMORY);
    }

    /// The pids of the live connections' ends not yet in `alive` (for [`Registry::reap`]).
    pub(super) fn pids_unknown_to(&self, alive: &Alive) -> Vec<u32> {
        let mut pids: Vec<u32> = self.live.values().flat_map(|c| [c.client.pid, c.server.pid]).filter(|&pid| !alive.knows(pid)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The ends of live connections that may have died without closing: their claimant is gone
    /// (by `alive`), yet the end still counts holders and has joined. As `(id, end, socket
    /// inode)`, for the sweep to ask whether the socket still exists (outside the lock).
    pub(super) fn ends_of_the_dead(&self, alive: &Alive) -> Vec<(u64, End, u32)> {
        let mut ends = Vec::new();
        for c in self.live.values() {
            for (end, pid) in [(End::Client, c.client.pid), (End::Server, c.server.pid)] {
                let line = c.line(end);
                // Acquire: as the hooks' peers read them.
                let holds = c.segment.header().refcount[end.index()].load(Ordering::Acquire) > 0;
                if alive.knows(pid) && !alive.is_alive(pid) && holds && line.joined.load(Ordering::Acquire) == JOIN_MAPPED {
                    ends.push((c.id, end, c.inodes[end.index()]));
                }
            }
        }
        ends
    }

    /// End `end` of connection `id` is gone: its socket no longer exists, so no process holds
    /// it (its last holder died without closing, e.g. SIGKILL). Its holder count goes to zero,
    /// as the hook's last close would have set it: the peer's hook then reads what is left and
    /// EOF, and its writes fail with EPIPE, at once (a non-blocking writer facing a full ring
    /// would otherwise never look at the real socket's hang-up). True if it changed.
    ///
    /// The count's zero says "the end decided the peer's reset when it left", as a last close
    /// through the hook does: so the reset is decided here first, by the hooks' own rule
    /// ([`tssx_common::segment::SegmentHeader::left_unread`]), as the kernel resets the peer of a socket released with
    /// bytes unread. (Without it, a peer whose hook looked at its socket only after this sweep
    /// read EOF where a plain socket gives ECONNRESET.)
    pub(super) fn end_gone(&mut self, id: u64, end: End) -> bool {
        let Some(c) = self.live.get(&id) else { return false };
        let header = c.segment.header();
        if header.refcount[end.index()].load(Ordering::Acquire) != 0 && header.left_unread(end) {
            // SeqCst: as the hooks' shut bits; before the count's zero below, which the peer's
            // hook loads (Acquire) before it looks at this bit.
            header.shut.0[end.index()].fetch_or(SHUT_RESET, Ordering::SeqCst);
        }
        // Release: pairs with the peer's Acquire load of a zero count (nothing of the dead end
        // is published after it anyway).
        header.refcount[end.index()].swap(0, Ordering::AcqRel) != 0
    }

    /// Takes out the connections that are over at `now` (see [`Finished`]; a pid `alive` does
    /// not know counts as alive). When that leaves no connection live, the spares go too (an
    /// idle agent holds no memfd).
    pub(super) fn reap(&mut self, alive: &Alive, now: Instant, join_timeout: Duration) -> Reaped {
        let over: Vec<(u64, Finished)> =
            self.live.values().filter_map(|c| c.finished(alive, now, join_timeout).map(|why| (c.id, why))).collect();
        let freed: Vec<(Connection, Finished)> = over.into_iter().filter_map(|(id, why)| Some((self.live.remove(&id)?, why))).collect();
        let mut reaped = Reaped { spares: Vec::new(), freed };
        if !reaped.freed.is_empty() && self.live.is_empty() {
            reaped.spares = std::mem::take(&mut self.spares);
            self.spares_generation += 1;
        }
        reaped
    }

    // ---- spare segments ---------------------------------------------------------------------

    /// Spare segments ready.
    pub(super) fn spare_count(&self) -> usize {
        self.spares.len()
    }

    /// Whether spares are wanted: fewer than `most`, while connections are live.
    pub(super) fn wants_spares(&self, most: usize) -> bool {
        self.spares.len() < most && !self.live.is_empty()
    }

    /// The spares' generation now, to pass to [`Registry::add_spare`].
    pub(super) fn spares_generation(&self) -> u64 {
        self.spares_generation
    }

    /// Adds a segment created outside the lock as a spare, unless the spares were dropped since
    /// `generation` was read or no connection is live: then it is handed back, to be freed.
    pub(super) fn add_spare(&mut self, segment: Segment, generation: u64) -> Result<(), Segment> {
        if self.spares_generation != generation || self.live.is_empty() {
            return Err(segment);
        }
        self.spares.push(segment);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment() -> Arc<Segment> {
        Arc::new(Segment::create(4096).expect("memfd segment"))
    }

    fn end(pid: u32, fd: i32) -> EndInfo {
        EndInfo { pid, comm: Comm::from(format!("p{pid}").as_str()), fd }
    }

    use super::super::fake::{event, EVENT_NS};

    fn verified(role: Role, pid: u32, inode: u32, peer: u32) -> Verified {
        Verified { role, end: end(pid, 3), fd: 3, inode, peer, path_id: 0, name: None, event_ns: None, event: None }
    }

    fn stream() -> UnixStream {
        UnixStream::pair().unwrap().0
    }

    fn pair(client_pid: u32, server_pid: u32, n: u32) -> NewConnection {
        NewConnection {
            path: "/p".into(),
            pattern: "/p".into(),
            client: end(client_pid, 3),
            server: end(server_pid, 4),
            inodes: [n, n + 1000],
            connected_ns: 0,
            segment: segment(),
        }
    }

    fn admit(registry: &mut Registry, client_pid: u32, server_pid: u32, now: Instant) -> u64 {
        registry.admit(usize::MAX, pair(client_pid, server_pid, client_pid), now).ok().expect("admitted")
    }

    fn join(segment: &Segment, end: End) {
        let header = segment.header();
        // Release/SeqCst, as a hook's join does.
        header.refcount[end.index()].store(1, Ordering::Release);
        header.ends[end.index()].joined.store(JOIN_MAPPED, Ordering::SeqCst);
    }

    #[test]
    fn events_are_kept_until_used_up_or_replaced() {
        let mut registry = Registry::default();
        assert!(registry.record(&event(EventKind::Connect, 10, 3, -1)).is_none());
        assert!(registry.record(&event(EventKind::Accept, 20, 4, 5)).is_none());
        assert!(registry.record(&event(EventKind::Bind, 20, 4, -1)).is_none());
        assert_eq!(registry.unclaimed_events(), 2, "only connect and accept are kept");
        let (seen, at) = registry.event(Side::Connect, 10, 3).unwrap();
        assert_eq!((seen.end, seen.ts_ns), (EndInfo { pid: 10, comm: "ev10".into(), fd: 3 }, EVENT_NS));
        assert!(registry.event(Side::Accept, 20, 4).is_none(), "an accept is keyed by the accepted fd");
        assert!(registry.event(Side::Accept, 20, 5).is_some());
        // A claim held keeps its event, and so does one that ended unpaired; a pair uses both up.
        let mut claim = verified(Role::Client, 10, 100, 200);
        claim.event = Some(at);
        assert!(matches!(registry.hold_or_pair(claim.clone(), stream(), 1, 8, Instant::now()), Step::Held { replaced: None }));
        assert!(registry.event(Side::Connect, 10, 3).is_some(), "a second claim of the socket still finds it");
        assert!(registry.take_held(1, Instant::now()).is_some());
        assert!(registry.event(Side::Connect, 10, 3).is_some());
        // Its socket went: not a short-lived connection (it was claimed).
        assert!(registry.apply_event_checks(&[(at, FdNow::Gone)]).is_empty());
        registry.record(&event(EventKind::Connect, 10, 3, -1));
        registry.record(&event(EventKind::Accept, 20, 4, 6));
        let (_, client_at) = registry.event(Side::Connect, 10, 3).unwrap();
        let (_, server_at) = registry.event(Side::Accept, 20, 6).unwrap();
        let mut client = verified(Role::Client, 10, 100, 200);
        client.event = Some(client_at);
        let mut server = verified(Role::Server, 20, 200, 100);
        server.event = Some(server_at);
        registry.hold_or_pair(client, stream(), 2, 8, Instant::now());
        assert!(matches!(registry.hold_or_pair(server, stream(), 3, 8, Instant::now()), Step::Pair { .. }));
        assert!(registry.event(Side::Connect, 10, 3).is_none() && registry.event(Side::Accept, 20, 6).is_none(), "a pair uses both up");
        // A new connect of the same fd replaces an unclaimed one: its socket is gone.
        registry.record(&event(EventKind::Connect, 11, 3, -1));
        assert_eq!(registry.record(&event(EventKind::Connect, 11, 3, -1)).map(|s| s.end.pid), Some(11));
        assert!(registry.record(&event(EventKind::Accept, 20, 4, 5)).is_none(), "a replaced accept is no connection of its own");
    }

    #[test]
    fn the_sweep_learns_event_sockets_and_drops_gone_ones() {
        let mut registry = Registry::default();
        for pid in 1..=4 {
            registry.record(&event(EventKind::Connect, pid, 3, -1));
        }
        registry.record(&event(EventKind::Accept, 9, 3, 7));
        let checks = registry.events_to_check();
        assert_eq!(checks.len(), 5);
        let at = |pid| checks.iter().find(|c| c.fd().0 == pid).unwrap().at;
        // 1: a socket (learnt); 2: gone; 3: a socket, later another one; 4: the peer of a claim
        // that ended unpaired; the accept: gone (not counted: its connect counts the connection).
        let first = registry.apply_event_checks(&[
            (at(1), FdNow::Socket(101)),
            (at(2), FdNow::Gone),
            (at(3), FdNow::Socket(103)),
            (at(4), FdNow::Socket(104)),
            (at(9), FdNow::Gone),
        ]);
        assert_eq!(first.iter().map(|s| s.end.pid).collect::<Vec<_>>(), [2]);
        assert_eq!(registry.unclaimed_events(), 3);
        let mut claim = verified(Role::Server, 50, 500, 104);
        claim.end.fd = 8;
        registry.hold_or_pair(claim, stream(), 7, 8, Instant::now());
        assert!(registry.take_held(7, Instant::now()).is_some());
        // 3's socket was learnt in the first sweep: another socket under its fd now means gone.
        let second = registry.apply_event_checks(&[(at(1), FdNow::Socket(101)), (at(3), FdNow::Socket(999)), (at(4), FdNow::Gone)]);
        assert_eq!(second.iter().map(|s| s.end.pid).collect::<Vec<_>>(), [3], "4's connection is counted as unpaired, not short-lived");
        assert_eq!(registry.unclaimed_events(), 1);
        // A check of an event replaced meanwhile does nothing.
        registry.record(&event(EventKind::Connect, 1, 3, -1));
        assert!(registry.apply_event_checks(&[(at(1), FdNow::Gone)]).is_empty());
        assert_eq!(registry.unclaimed_events(), 1);
    }

    #[test]
    fn events_beyond_the_cap_forget_the_oldest() {
        let mut registry = Registry::default();
        for i in 0..=EVENT_CAP as u32 {
            registry.record(&event(EventKind::Connect, 1 + i / 1000, (i % 1000) as i32, -1));
        }
        assert!(registry.unclaimed_events() <= EVENT_CAP);
        assert!(registry.event(Side::Connect, 1, 0).is_none(), "the oldest went");
        let last = EVENT_CAP as u32;
        assert!(registry.event(Side::Connect, 1 + last / 1000, (last % 1000) as i32).is_some(), "the newest stayed");
    }

    #[test]
    fn claims_are_held_then_paired_with_the_other_end() {
        let mut registry = Registry::default();
        let now = Instant::now();
        assert!(matches!(registry.hold_or_pair(verified(Role::Server, 20, 200, 100), stream(), 1, 8, now), Step::Held { replaced: None }));
        assert_eq!(registry.held_count(), 1);
        assert_eq!(registry.held_client_path(200), None, "a held server is no verified client");
        // Another connection's client: held too.
        assert!(matches!(registry.hold_or_pair(verified(Role::Client, 11, 101, 201), stream(), 2, 8, now), Step::Held { .. }));
        assert_eq!(registry.held_client_path(101), Some(0));
        // The first one's client: paired with the held server.
        match registry.hold_or_pair(verified(Role::Client, 10, 100, 200), stream(), 3, 8, now) {
            Step::Pair { partner, spare, .. } => {
                assert_eq!((partner.token, partner.claim.role, partner.claim.inode), (1, Role::Server, 200));
                assert!(spare.is_none());
            }
            _ => panic!("paired"),
        }
        assert_eq!(registry.held_count(), 1);
        assert!(registry.take_held(1, now).is_none(), "the paired claim's token is gone");
        assert_eq!(registry.take_held(2, now).map(|h| h.claim.inode), Some(101));
        assert_eq!(registry.held_count(), 0);
    }

    #[test]
    fn pairing_needs_matching_inodes_and_opposite_roles() {
        let mut registry = Registry::default();
        let now = Instant::now();
        registry.hold_or_pair(verified(Role::Client, 10, 100, 200), stream(), 1, 8, now);
        // Same role on the peer socket: not a pair (held).
        assert!(matches!(registry.hold_or_pair(verified(Role::Client, 20, 200, 100), stream(), 2, 8, now), Step::Held { .. }));
        // A server whose peer is the held client, but the client's peer is another socket.
        assert!(matches!(registry.hold_or_pair(verified(Role::Server, 30, 300, 100), stream(), 3, 8, now), Step::Held { .. }));
        // A second claim of the same socket replaces the first (its connection is closed after
        // the lock).
        match registry.hold_or_pair(verified(Role::Client, 10, 100, 200), stream(), 4, 8, now) {
            Step::Held { replaced: Some(old) } => assert_eq!(old.token, 1),
            _ => panic!("replaced"),
        }
        assert!(registry.take_held(1, now).is_none());
        assert_eq!(registry.held_count(), 3);
    }

    #[test]
    fn a_client_checked_before_the_accept_pairs_in_either_order() {
        let mut registry = Registry::default();
        let now = Instant::now();
        // Client first (its server had not accepted: no peer inode), then the server.
        assert!(matches!(registry.hold_or_pair(verified(Role::Client, 10, 100, 0), stream(), 1, 8, now), Step::Held { .. }));
        assert!(matches!(registry.hold_or_pair(verified(Role::Server, 20, 200, 100), stream(), 2, 8, now), Step::Pair { .. }));
        // The server's claim decided first although the client's was checked before the accept
        // (two workers, the client's slower): the client still finds it.
        assert!(matches!(registry.hold_or_pair(verified(Role::Server, 21, 201, 101), stream(), 3, 8, now), Step::Held { .. }));
        match registry.hold_or_pair(verified(Role::Client, 11, 101, 0), stream(), 4, 8, now) {
            Step::Pair { partner, .. } => assert_eq!(partner.token, 3),
            _ => panic!("the client must pair with the held server"),
        }
        // A server held for another client is no partner.
        assert!(matches!(registry.hold_or_pair(verified(Role::Server, 22, 202, 102), stream(), 5, 8, now), Step::Held { .. }));
        assert!(matches!(registry.hold_or_pair(verified(Role::Client, 12, 103, 0), stream(), 6, 8, now), Step::Held { .. }));
        assert_eq!(registry.held_count(), 2);
    }

    #[test]
    fn held_claims_are_capped() {
        let mut registry = Registry::default();
        let now = Instant::now();
        for i in 0..4 {
            assert!(matches!(
                registry.hold_or_pair(verified(Role::Client, 10, 100 + i, 200 + i), stream(), i.into(), 4, now),
                Step::Held { .. }
            ));
        }
        assert!(matches!(registry.hold_or_pair(verified(Role::Client, 10, 150, 250), stream(), 9, 4, now), Step::Full { .. }));
        // At the cap, a pair is still made (it frees a place), and a replacement still held.
        assert!(matches!(registry.hold_or_pair(verified(Role::Server, 20, 200, 100), stream(), 10, 4, now), Step::Pair { .. }));
        assert!(matches!(
            registry.hold_or_pair(verified(Role::Client, 10, 101, 201), stream(), 11, 4, now),
            Step::Held { replaced: Some(_) }
        ));
    }

    #[test]
    fn the_limit_is_checked_when_admitting() {
        let mut registry = Registry::default();
        let now = Instant::now();
        assert_eq!(registry.admit(1, pair(10, 20, 1), now).ok(), Some(1));
        assert!(registry.admit(1, pair(11, 20, 2), now).is_err());
        assert_eq!(registry.live_count(), 1);
    }

    /// A dead end's sweep decides the peer's reset as the end's last close would have: set
    /// when the end leaves bytes unread (on its incoming ring, or counted on the socket), not
    /// otherwise, and before its count goes to zero.
    #[test]
    fn an_end_gone_with_bytes_unread_resets_its_peer() {
        let mut registry = Registry::default();
        let now = Instant::now();
        let ids: Vec<u64> = (1..=3).map(|i| admit(&mut registry, 100 + i, 200 + i, now)).collect();
        let seg: Vec<Arc<Segment>> = ids.iter().map(|id| Arc::clone(&registry.live[id].segment)).collect();
        for s in &seg {
            join(s, End::Client);
            join(s, End::Server);
        }
        // 1: the client wrote 6 bytes on its ring that the server never read; 2: the server
        // read all of them; 3: the client wrote 10 bytes on the socket before its switch, the
        // ready server read 4.
        let ring = |s: &Segment, head: u64, tail: u64| {
            let r = &s.header().rings[End::Client.index()];
            r.producer.0.head.store(head, Ordering::Release);
            r.consumer.0.tail.store(tail, Ordering::Release);
        };
        ring(&seg[0], 6, 0);
        ring(&seg[1], 6, 6);
        let (client, server) = (&seg[2].header().ends[End::Client.index()], &seg[2].header().ends[End::Server.index()]);
        client.switch_at.store(10, Ordering::SeqCst);
        server.sock_read.store(4, Ordering::Release);
        server.ready.store(1, Ordering::SeqCst);
        let reset = |s: &Segment| s.header().shut.0[End::Server.index()].load(Ordering::SeqCst) & SHUT_RESET != 0;
        for (id, s, expected) in [(ids[0], &seg[0], true), (ids[1], &seg[1], false), (ids[2], &seg[2], true)] {
            assert!(registry.end_gone(id, End::Server));
            assert_eq!(reset(s), expected, "connection {id}");
            assert_eq!(s.header().refcount[End::Server.index()].load(Ordering::Acquire), 0);
            assert_eq!(s.header().shut.0[End::Client.index()].load(Ordering::SeqCst), 0, "the live end is not reset");
            // Once: a second sweep changes nothing.
            assert!(!registry.end_gone(id, End::Server));
        }
    }

    #[test]
    fn reap_rules() {
        let mut registry = Registry::default();
        let now = Instant::now();
        let ids: Vec<u64> = (1..=8).map(|i| admit(&mut registry, 100 + i, 200 + i, now)).collect();
        let seg: Vec<Arc<Segment>> = ids.iter().map(|id| Arc::clone(&registry.live[id].segment)).collect();
        // 1: plain, given up (one end refused); 2: both joined, both closed; 3: both joined, one
        // open; 4: nobody joined, young; 5: client dead, server alive; 6: both dead; 7: swapped,
        // then handed back (plain); 8: nobody joined, old.
        seg[0].header().ends[0].joined.store(JOIN_REFUSED, Ordering::SeqCst);
        seg[0].transition(SegmentState::Pending, SegmentState::Plain).unwrap();
        for &i in &[1, 2, 4, 5, 6] {
            join(&seg[i], End::Client);
            join(&seg[i], End::Server);
        }
        // Release, as a hook's last close does.
        seg[1].header().refcount.iter().for_each(|r| r.store(0, Ordering::Release));
        seg[2].header().refcount[0].store(0, Ordering::Release);
        seg[6].header().ends[0].switch_at.store(10, Ordering::SeqCst);
        seg[6].transition(SegmentState::Pending, SegmentState::Active).unwrap();
        seg[6].transition(SegmentState::Active, SegmentState::Plain).unwrap();
        let mut alive = Alive::default();
        for pid in registry.pids_unknown_to(&alive) {
            alive.insert(pid, true);
        }
        alive.insert(105, false);
        alive.insert(106, false);
        alive.insert(206, false);
        registry.live.get_mut(&8).unwrap().paired_at = now - Duration::from_secs(11);
        let reaped = registry.reap(&alive, now, Duration::from_secs(10));
        let freed: Vec<(u64, Finished)> = reaped.freed.iter().map(|(c, why)| (c.id, *why)).collect();
        assert_eq!(
            freed,
            [
                (1, Finished::GaveUp),
                (2, Finished::Closed),
                (6, Finished::ProcessesGone),
                (7, Finished::HandedBack),
                (8, Finished::NeverJoined)
            ]
        );
        assert!(reaped.spares.is_empty(), "connections are still live");
        assert_eq!(registry.connections().map(|c| c.id).collect::<Vec<_>>(), [3, 4, 5]);
        // A pid nobody asked about counts as alive: nothing more goes.
        assert!(registry.reap(&Alive::default(), now, Duration::from_secs(10)).freed.is_empty());
        // 4 is reaped once the join timeout passed.
        let later = registry.reap(&Alive::default(), now + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(later.freed.iter().map(|(c, _)| c.id).collect::<Vec<_>>(), [4]);
    }

    #[test]
    fn swapped_is_reported_once_both_ends_are_active() {
        let mut registry = Registry::default();
        let mut new = pair(10, 20, 1);
        new.connected_ns = 1_000_000;
        let id = registry.admit(8, new, Instant::now()).ok().expect("admitted");
        assert!(registry.take_swapped().is_empty());
        let segment = Arc::clone(&registry.live[&id].segment);
        let header = segment.header();
        header.ends[0].switch_at.store(3, Ordering::SeqCst);
        header.ends[1].switch_at.store(0, Ordering::SeqCst);
        header.ends[0].active_ns.store(2_000_000, Ordering::Relaxed);
        assert!(registry.take_swapped().is_empty(), "one end is not active yet");
        header.ends[1].active_ns.store(3_500_000, Ordering::Relaxed);
        let lines = registry.take_swapped();
        assert_eq!(
            lines,
            [SwappedLine {
                id,
                path: "/p".into(),
                pattern: "/p".into(),
                client: "10/p10".into(),
                server: "20/p20".into(),
                switched_client_to_server: 3,
                switched_server_to_client: 0,
                migrated_after_us: 2500,
            }]
        );
        assert!(registry.take_swapped().is_empty(), "once");
    }

    /// Issue 16: every value an end can write into the header it shares (its own fields and
    /// its peer's, lies included) gives the agent's readers a trace, right or wrong, never a
    /// panic (an overflow in a debug build) or a connection held forever.
    #[test]
    fn lying_header_values_only_make_traces_wrong() {
        let lies = [0u64, 1, 2, 3, u64::from(u32::MAX), u64::MAX, u64::MAX - 1, 1 << 63, 0x5a5a_5a5a_5a5a_5a5a];
        for (k, &v) in lies.iter().enumerate() {
            let mut registry = Registry::default();
            let now = Instant::now();
            let id = admit(&mut registry, 100 + k as u32, 200 + k as u32, now);
            let segment = Arc::clone(&registry.live[&id].segment);
            let header = segment.header();
            header.state.store(v as u32, Ordering::SeqCst);
            for r in &header.refcount {
                r.store(v as u32, Ordering::SeqCst);
            }
            for line in &header.ends {
                line.joined.store(v as u32, Ordering::SeqCst);
                line.ready.store(v as u32, Ordering::SeqCst);
                for f in [&line.switch_at, &line.back_at, &line.active_ns, &line.sock_written, &line.bells_sent] {
                    f.store(v, Ordering::SeqCst);
                }
            }
            for ring in &header.rings {
                ring.producer.0.head.store(v, Ordering::SeqCst);
                ring.consumer.0.tail.store(v.wrapping_mul(3), Ordering::SeqCst);
            }
            let c = &registry.live[&id];
            let _ = (c.bytes_each_way(), c.end_phase(End::Client), c.end_phase(End::Server), c.committed(), c.swapped_line());
            let _ = registry.take_swapped();
            let mut alive = Alive::default();
            alive.insert(100 + k as u32, false);
            alive.insert(200 + k as u32, false);
            // Whatever the header says, both processes gone frees it.
            let reaped = registry.reap(&alive, now, Duration::from_secs(10));
            assert_eq!(reaped.freed.iter().map(|(c, _)| c.id).collect::<Vec<_>>(), [id], "lie {v:#x}");
        }
    }

    #[test]
    fn the_last_reap_drops_the_spares_and_a_late_spare() {
        let mut registry = Registry::default();
        let now = Instant::now();
        assert!(!registry.wants_spares(4), "no spares while nothing is live");
        let id = admit(&mut registry, 10, 20, now);
        assert!(registry.wants_spares(4));
        let generation = registry.spares_generation();
        assert!(registry.add_spare(Segment::create(4096).unwrap(), generation).is_ok());
        let made_meanwhile = Segment::create(4096).unwrap();
        registry.live[&id].segment.transition(SegmentState::Pending, SegmentState::Plain).unwrap();
        let reaped = registry.reap(&Alive::default(), now, Duration::from_secs(10));
        assert_eq!((reaped.freed.len(), reaped.spares.len()), (1, 1));
        assert!(registry.add_spare(made_meanwhile, generation).is_err(), "created before the drop: not kept");
        assert_eq!(registry.spare_count(), 0);
    }

    #[test]
    fn a_spare_is_handed_out_once() {
        let mut registry = Registry::default();
        let now = Instant::now();
        admit(&mut registry, 10, 20, now);
        let generation = registry.spares_generation();
        registry.add_spare(Segment::create(4096).unwrap(), generation).unwrap();
        registry.hold_or_pair(verified(Role::Client, 11, 100, 200), stream(), 1, 8, now);
        let Step::Pair { spare, .. } = registry.hold_or_pair(verified(Role::Server, 21, 200, 100), stream(), 2, 8, now) else { panic!() };
        assert!(spare.is_some());
        registry.hold_or_pair(verified(Role::Client, 12, 101, 201), stream(), 3, 8, now);
        let Step::Pair { spare, .. } = registry.hold_or_pair(verified(Role::Server, 22, 201, 101), stream(), 4, 8, now) else { panic!() };
        assert!(spare.is_none());
    }
}
