//! The control plane's state: kernel events recorded and not yet claimed, live connections and
//! their segments, client claims waiting for their server, and the small memories the claim rules
//! keep (servers that stayed plain, accept events still due, which processes carry the hook).
//!
//! Pure data and rules: nothing here reads `/proc`, asks `sock_diag`, creates or frees a segment,
//! writes a trace line or closes a socket. Methods take the time (`now`) and the kernel facts
//! they need as arguments, and hand back what must happen outside the lock (segments to free,
//! decision watches to close, lines to trace) as values. [`super::Control`] keeps the registry
//! behind its mutex, so every method runs inside one critical section.
//!
//! Trust: entries come from two sources only: the kernel's own events (`Registry::record`), and
//! claims that [`super::claim`] checked against the kernel before it admits them here. Reading
//! and changing a live segment's header (its state, TSSX bits and refcounts) is memory, not I/O,
//! and happens here under the lock, so that every decision about a connection is taken in one
//! place at a time.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::net::UnixStream,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use serde::Serialize;
use tssx_common::{
    event::{Event, EventKind},
    segment::{End, SegmentState},
};
use tssx_shm::segment::Segment;

use super::Timing;

/// One end of a connection as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndInfo {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// The socket's fd in that process.
    pub fd: i32,
}

/// A kernel connect or accept event, kept until a claim uses it or it expires.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    /// The end the event names (for an accept, the accepted fd).
    pub(super) end: EndInfo,
    /// The watched path's id.
    pub(super) path_id: u32,
    /// When it was recorded.
    pub(super) at: Instant,
}

/// A connection that got a segment.
pub(super) struct Connection {
    /// The agent's id for it.
    pub(super) id: u64,
    /// When the connection was last known to wait for the server: created, or last seen in a
    /// listener's accept queue (see [`Registry::keep_queued_waiting`]).
    pub(super) waiting_since: Instant,
    /// The client socket's inode.
    pub(super) client_inode: u32,
    /// A `not swapped` line was traced for it already (by the sweep).
    pub(super) plain_traced: bool,
    /// The watched path, for trace lines and status.
    pub(super) path: String,
    /// The connecting end.
    pub(super) client: EndInfo,
    /// The accepting end, once it joined.
    pub(super) server: Option<EndInfo>,
    /// Shared so that a reply can carry its fd after the lock is released; freed when the last
    /// holder drops it.
    pub(super) segment: Arc<Segment>,
    /// The client's claim connection, held open while the connection is pending and closed once
    /// the agent decided (after the state change): a hook that sees it close while the segment
    /// is still pending knows the agent died and can turn the connection plain itself.
    pub(super) decision_watch: Option<UnixStream>,
}

impl Connection {
    /// Bytes each end has written through shared memory, `(client->server, server->client)`:
    /// the producers' free-running positions.
    pub(super) fn bytes_each_way(&self) -> (u64, u64) {
        (self.segment.ring_positions(End::Client).0, self.segment.ring_positions(End::Server).0)
    }

    /// Whether it waits for its server longer than `ttl` at `now`.
    fn overdue(&self, now: Instant, ttl: Duration) -> bool {
        self.server.is_none() && now.saturating_duration_since(self.waiting_since) > ttl
    }
}

/// A client's claim the rules accepted, to be admitted as a pending connection.
pub(super) struct NewClient {
    /// The client socket's inode.
    pub(super) inode: u32,
    /// The client end (from its connect event).
    pub(super) end: EndInfo,
    /// The watched path.
    pub(super) path: String,
    /// Its segment, client end marked present.
    pub(super) segment: Arc<Segment>,
}

/// A server end joined to its connection: what the reply and the trace need.
pub(super) struct Joined {
    /// The watched path.
    pub(super) path: String,
    /// The client end.
    pub(super) client: EndInfo,
    /// The connection's segment (its fd goes with the reply).
    pub(super) segment: Arc<Segment>,
    /// The client's decision watch, to close after the lock (the decision is made).
    pub(super) watch: Option<UnixStream>,
}

/// A pending connection the sweep turned plain (its server never claimed).
pub(super) struct Expired {
    /// The connection's id.
    pub(super) id: u64,
    /// The watched path.
    pub(super) path: String,
    /// The client's pid.
    pub(super) client_pid: u32,
    /// The client's decision watch, to close after the lock.
    pub(super) watch: Option<UnixStream>,
}

/// What [`Registry::reap`] took out: to free and trace after the lock.
#[derive(Default)]
pub(super) struct Reaped {
    /// Spare segments dropped because no connection is live any more (freed first).
    pub(super) spares: Vec<Segment>,
    /// The finished connections, in id order.
    pub(super) freed: Vec<Connection>,
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

/// The state. See the module doc.
pub(super) struct Registry {
    /// Connect events by `(pid, fd)`.
    connects: HashMap<(u32, i32), Seen>,
    /// Accept events by `(pid, accepted fd)`.
    accepts: HashMap<(u32, i32), Seen>,
    /// Client-claimed connections waiting for their server, by the client socket's inode (the
    /// server's socket has no inode until `accept`, so the server side looks its peer up).
    pending: HashMap<u32, u64>,
    live: BTreeMap<u64, Connection>,
    next_id: u64,
    /// Whether a process carries the hook, and when that was checked (reused for
    /// [`Timing::hook_check_ttl`]).
    hooked: HashMap<u32, (bool, Instant)>,
    /// Client sockets (by inode) whose server already stayed plain, and when: a client claim
    /// that arrives after that is answered plain at once, instead of leaving the client pending
    /// with bytes its server never reads from the ring.
    plain_servers: HashMap<u32, Instant>,
    /// Server ends granted before their accept event arrived, by `(pid, fd)`, with how many such
    /// events are still due: [`Registry::record`] drops them instead of keeping them unclaimed.
    accepts_due: HashMap<(u32, i32), (u32, Instant)>,
    /// Fresh segments created ahead of the claims that will use them.
    spares: Vec<Segment>,
    /// Bumped whenever the spares are dropped, so that a segment created meanwhile is not kept.
    spares_generation: u64,
    /// Bumped by every change a waiting claim may be waiting for (an event recorded, a client
    /// admitted), so that a claim that looked at the kernel outside the lock can tell whether it
    /// missed one.
    generation: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            connects: HashMap::new(),
            accepts: HashMap::new(),
            pending: HashMap::new(),
            live: BTreeMap::new(),
            next_id: 1,
            hooked: HashMap::new(),
            plain_servers: HashMap::new(),
            accepts_due: HashMap::new(),
            spares: Vec::new(),
            spares_generation: 0,
            generation: 0,
        }
    }
}

impl Registry {
    // ---- kernel events ----------------------------------------------------------------------

    /// Records a kernel connect or accept so that claims can be checked against it; true if it
    /// was kept (claims waiting for events must look again). An accept whose server end was
    /// granted already (see [`Registry::accept_event_or_due`]) is dropped; other kinds are
    /// ignored.
    pub(super) fn record(&mut self, event: &Event, now: Instant) -> bool {
        let end = |fd| EndInfo { pid: event.tgid, comm: String::from_utf8_lossy(event.comm_bytes()).into_owned(), fd };
        match event.event_kind() {
            Some(EventKind::Connect) => {
                self.connects.insert((event.tgid, event.fd), Seen { end: end(event.fd), path_id: event.path_id, at: now });
            }
            Some(EventKind::Accept) => {
                let key = (event.tgid, event.new_fd);
                if let Some((due, _)) = self.accepts_due.get_mut(&key) {
                    *due -= 1;
                    if *due == 0 {
                        self.accepts_due.remove(&key);
                    }
                    return false;
                }
                self.accepts.insert(key, Seen { end: end(event.new_fd), path_id: event.path_id, at: now });
            }
            _ => return false,
        }
        self.generation += 1;
        true
    }

    /// Takes the connect event of `fd` in process `pid` (a claim uses it up).
    pub(super) fn take_connect(&mut self, pid: u32, fd: i32) -> Option<Seen> {
        self.connects.remove(&(pid, fd))
    }

    /// Takes the accept event that returned `fd` in process `pid`.
    pub(super) fn take_accept(&mut self, pid: u32, fd: i32) -> Option<Seen> {
        self.accepts.remove(&(pid, fd))
    }

    /// The `(pid, fd)` of the unclaimed connect events on path `path_id`: a server whose client
    /// has not claimed looks among them for its client (by socket inode, outside the lock).
    pub(super) fn unclaimed_connects(&self, path_id: u32) -> Vec<(u32, i32)> {
        self.connects.iter().filter(|(_, seen)| seen.path_id == path_id).map(|(&key, _)| key).collect()
    }

    /// For a server end granted on its socket's evidence: its accept event if it came already,
    /// else `None`, and the event is noted as due so that [`Registry::record`] drops it when it
    /// comes (it must not wait unclaimed, nor be taken by a later accept of the same fd number).
    pub(super) fn accept_event_or_due(&mut self, pid: u32, fd: i32, now: Instant) -> Option<Seen> {
        let seen = self.accepts.remove(&(pid, fd));
        if seen.is_none() {
            let due = self.accepts_due.entry((pid, fd)).or_insert((0, now));
            *due = (due.0 + 1, now);
        }
        seen
    }

    /// See the field `generation`.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    // ---- memories ---------------------------------------------------------------------------

    /// Whether `pid` carries the hook, if that was checked less than `ttl` before `now`.
    pub(super) fn hook_known(&self, pid: u32, now: Instant, ttl: Duration) -> Option<bool> {
        match self.hooked.get(&pid) {
            Some(&(hooked, at)) if now.saturating_duration_since(at) < ttl => Some(hooked),
            _ => None,
        }
    }

    /// Remembers whether `pid` carries the hook, as checked at `now`.
    pub(super) fn remember_hook(&mut self, pid: u32, hooked: bool, now: Instant) {
        self.hooked.insert(pid, (hooked, now));
    }

    /// Remembers that the server of the client socket `client_inode` stayed plain.
    pub(super) fn server_stayed_plain(&mut self, client_inode: u32, now: Instant) {
        self.plain_servers.insert(client_inode, now);
    }

    /// Whether the server of client socket `client_inode` stayed plain (forgotten once asked).
    pub(super) fn take_server_stayed_plain(&mut self, client_inode: u32) -> bool {
        self.plain_servers.remove(&client_inode).is_some()
    }

    // ---- connections ------------------------------------------------------------------------

    /// Live connections (pending, active, or plain/closed not yet reaped).
    pub(super) fn live_count(&self) -> usize {
        self.live.len()
    }

    /// The live connections, in id order.
    pub(super) fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.live.values()
    }

    /// Client claims waiting for their server.
    pub(super) fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Kernel connect/accept events recorded and not yet claimed or expired.
    pub(super) fn unclaimed_events(&self) -> usize {
        self.connects.len() + self.accepts.len()
    }

    /// Takes the pending connection whose client socket is `client_inode` (a server claims it).
    pub(super) fn take_pending(&mut self, client_inode: u32) -> Option<u64> {
        self.pending.remove(&client_inode)
    }

    /// Admits a client's claim as a new pending connection, unless `max` connections are live:
    /// then the claim is handed back (its segment is dropped after the lock). The check and the
    /// insert are one step, so concurrent claims cannot overshoot the limit.
    pub(super) fn admit_client(&mut self, max: usize, client: NewClient, now: Instant) -> Result<u64, NewClient> {
        if self.live.len() >= max {
            return Err(client);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(client.inode, id);
        self.live.insert(
            id,
            Connection {
                id,
                waiting_since: now,
                client_inode: client.inode,
                plain_traced: false,
                path: client.path,
                client: client.end,
                server: None,
                segment: client.segment,
                decision_watch: None,
            },
        );
        self.generation += 1;
        Ok(id)
    }

    /// Joins server end `end` to connection `id`: marks the server present and turns the segment
    /// active. `None` if the connection is gone or no longer pending (the sweep turned it plain,
    /// or the client's hook did): the server stays plain.
    pub(super) fn join_server(&mut self, id: u64, end: EndInfo) -> Option<Joined> {
        let conn = self.live.get_mut(&id)?;
        conn.segment.set_tssx_bit(End::Server, true);
        // Release, before the Active transition: a client that sees Active must also see the
        // server end present, not "gone" (refcount 0) while its hook maps the segment.
        conn.segment.header().refcount[End::Server.index()].store(1, Ordering::Release);
        conn.segment.transition(SegmentState::Pending, SegmentState::Active).ok()?;
        conn.server = Some(end);
        Some(Joined {
            path: conn.path.clone(),
            client: conn.client.clone(),
            segment: Arc::clone(&conn.segment),
            // After the transition: the client sees Active when this closes.
            watch: conn.decision_watch.take(),
        })
    }

    /// Keeps a client's claim connection open while connection `id` is pending (see
    /// [`Connection::decision_watch`]); hands it back, to be closed, if the connection is
    /// already decided or gone.
    pub(super) fn keep_decision_watch(&mut self, id: u64, stream: UnixStream) -> Option<UnixStream> {
        match self.live.get_mut(&id) {
            Some(conn) if conn.segment.state() == Some(SegmentState::Pending) => {
                conn.decision_watch = Some(stream);
                None
            }
            _ => Some(stream),
        }
    }

    // ---- lifecycle --------------------------------------------------------------------------

    /// Forgets what is too old at `now`: unclaimed events, hook answers, plain-server memories,
    /// and accept events that were due but never came (lost in a full ring buffer: they must not
    /// swallow a later accept of the same fd).
    pub(super) fn forget_stale(&mut self, now: Instant, timing: &Timing) {
        let fresh = |at: Instant, ttl: Duration| now.saturating_duration_since(at) < ttl;
        self.connects.retain(|_, s| fresh(s.at, timing.event_ttl));
        self.accepts.retain(|_, s| fresh(s.at, timing.event_ttl));
        self.hooked.retain(|_, (_, at)| fresh(*at, timing.hook_check_ttl));
        self.plain_servers.retain(|_, at| fresh(*at, timing.event_ttl));
        self.accepts_due.retain(|_, (_, at)| fresh(*at, timing.event_wait));
    }

    /// Whether some connection has waited for its server longer than `ttl` at `now`.
    pub(super) fn any_overdue(&self, now: Instant, ttl: Duration) -> bool {
        self.live.values().any(|c| c.overdue(now, ttl))
    }

    /// Overdue connections whose client socket is still in a listener's accept queue (`queued`)
    /// wait on, from `now`: the server has not accepted yet, however long it takes.
    pub(super) fn keep_queued_waiting(&mut self, queued: &HashSet<u32>, now: Instant, ttl: Duration) {
        for conn in self.live.values_mut() {
            if conn.overdue(now, ttl) && queued.contains(&conn.client_inode) {
                conn.waiting_since = now;
            }
        }
    }

    /// Turns plain every connection still overdue at `now`: accepted, and its server never
    /// claimed (it has no hook); the client replays what it wrote.
    pub(super) fn expire_overdue(&mut self, now: Instant, ttl: Duration) -> Vec<Expired> {
        let overdue: Vec<u64> = self.live.values().filter(|c| c.overdue(now, ttl)).map(|c| c.id).collect();
        let mut expired = Vec::new();
        for id in overdue {
            self.pending.retain(|_, v| *v != id);
            let Some(conn) = self.live.get_mut(&id) else { continue };
            if conn.segment.transition(SegmentState::Pending, SegmentState::Plain).is_ok() {
                conn.plain_traced = true;
                expired.push(Expired { id, path: conn.path.clone(), client_pid: conn.client.pid, watch: conn.decision_watch.take() });
            }
        }
        expired
    }

    /// The pids of the live connections' ends not yet in `alive` (for [`Registry::reap`]).
    pub(super) fn pids_unknown_to(&self, alive: &Alive) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .live
            .values()
            .flat_map(|c| std::iter::once(c.client.pid).chain(c.server.as_ref().map(|s| s.pid)))
            .filter(|&pid| !alive.knows(pid))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Takes out the connections that are over: plain, both ends closed (refcounts 0 once the
    /// server joined), or both processes gone (by `alive`; an unknown pid counts as alive).
    /// When that leaves no connection live, the spares go too (an idle agent holds no memfd).
    pub(super) fn reap(&mut self, alive: &Alive) -> Reaped {
        let dead: Vec<u64> = self
            .live
            .values()
            .filter(|c| {
                c.segment.state() == Some(SegmentState::Plain)
                    // Acquire: the segment is freed only after what its ends did before letting go.
                    || (c.server.is_some() && c.segment.header().refcount.iter().all(|r| r.load(Ordering::Acquire) == 0))
                    || (!alive.is_alive(c.client.pid) && c.server.as_ref().is_none_or(|s| !alive.is_alive(s.pid)))
            })
            .map(|c| c.id)
            .collect();
        let freed: Vec<Connection> = dead.iter().filter_map(|id| self.live.remove(id)).collect();
        let mut reaped = Reaped { spares: Vec::new(), freed };
        if !reaped.freed.is_empty() && self.live.is_empty() {
            reaped.spares = std::mem::take(&mut self.spares);
            self.spares_generation += 1;
        }
        for conn in &reaped.freed {
            self.pending.retain(|_, v| *v != conn.id);
        }
        reaped
    }

    // ---- spare segments ---------------------------------------------------------------------

    /// Takes a spare segment: it is the caller's alone from here, never handed out again.
    pub(super) fn pop_spare(&mut self) -> Option<Segment> {
        self.spares.pop()
    }

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
        EndInfo { pid, comm: format!("p{pid}"), fd }
    }

    fn event(kind: EventKind, pid: u32, fd: i32, new_fd: i32) -> Event {
        let mut comm = [0u8; tssx_common::COMM_LEN];
        comm[..4].copy_from_slice(b"proc");
        Event { ts_ns: 0, kind: kind as u32, path_id: 0, pid, tgid: pid, uid: 0, fd, new_fd, other_pid: 0, comm }
    }

    fn admit(registry: &mut Registry, inode: u32, pid: u32, now: Instant) -> u64 {
        let client = NewClient { inode, end: end(pid, 3), path: "/p".into(), segment: segment() };
        registry.admit_client(usize::MAX, client, now).ok().expect("admitted")
    }

    #[test]
    fn events_are_recorded_taken_once_and_forgotten() {
        let mut registry = Registry::default();
        let now = Instant::now();
        assert!(registry.record(&event(EventKind::Connect, 10, 3, -1), now));
        assert!(registry.record(&event(EventKind::Accept, 20, 4, 5), now));
        assert!(!registry.record(&event(EventKind::Bind, 20, 4, -1), now), "only connect and accept are kept");
        assert_eq!(registry.generation(), 2);
        assert_eq!(registry.unclaimed_events(), 2);
        let seen = registry.take_connect(10, 3).unwrap();
        assert_eq!(seen.end, EndInfo { pid: 10, comm: "proc".into(), fd: 3 });
        assert!(registry.take_connect(10, 3).is_none(), "an event is used up by one claim");
        assert!(registry.take_accept(20, 4).is_none(), "an accept is keyed by the accepted fd");
        registry.record(&event(EventKind::Connect, 11, 3, -1), now);
        registry.forget_stale(now + Timing::default().event_ttl, &Timing::default());
        assert_eq!(registry.unclaimed_events(), 0);
    }

    #[test]
    fn an_accept_due_is_dropped_once_then_recorded_again() {
        let mut registry = Registry::default();
        let now = Instant::now();
        assert!(registry.accept_event_or_due(20, 5, now).is_none());
        assert!(!registry.record(&event(EventKind::Accept, 20, 4, 5), now), "the due event is dropped");
        assert_eq!(registry.unclaimed_events(), 0);
        assert!(registry.record(&event(EventKind::Accept, 20, 4, 5), now), "a later accept of the fd is kept");
        assert_eq!(registry.accept_event_or_due(20, 5, now).map(|s| s.end.fd), Some(5));
        // One that never comes is forgotten after the event wait.
        assert!(registry.accept_event_or_due(20, 6, now).is_none());
        registry.forget_stale(now + Timing::default().event_wait, &Timing::default());
        assert!(registry.record(&event(EventKind::Accept, 20, 4, 6), now));
    }

    #[test]
    fn the_limit_is_checked_when_admitting() {
        let mut registry = Registry::default();
        let now = Instant::now();
        let first = NewClient { inode: 1, end: end(10, 3), path: "/p".into(), segment: segment() };
        assert_eq!(registry.admit_client(1, first, now).ok(), Some(1));
        let second = NewClient { inode: 2, end: end(10, 4), path: "/p".into(), segment: segment() };
        assert!(registry.admit_client(1, second, now).is_err());
        assert_eq!((registry.live_count(), registry.pending_count()), (1, 1));
        assert_eq!(registry.take_pending(2), None);
        assert_eq!(registry.take_pending(1), Some(1));
    }

    #[test]
    fn reap_rules() {
        let mut registry = Registry::default();
        let now = Instant::now();
        // 1: plain; 2: joined, both ends closed; 3: joined, one end still open; 4: pending, client
        // dead; 5: joined, client dead, server alive; 6: joined, both dead; 7: pending, alive.
        let ids: Vec<u64> = (1..=7).map(|i| admit(&mut registry, i, 100 + i, now)).collect();
        let conn = |r: &Registry, id: u64| Arc::clone(&r.live[&id].segment);
        conn(&registry, ids[0]).transition(SegmentState::Pending, SegmentState::Plain).unwrap();
        for &id in [&ids[1..3], &ids[4..6]].concat().iter() {
            assert_eq!(registry.take_pending(id as u32), Some(id), "inode i is connection i");
            assert!(registry.join_server(id, end(200 + id as u32, 4)).is_some());
        }
        // Release, as a hook's last close does.
        let closed = conn(&registry, ids[1]);
        closed.header().refcount.iter().for_each(|r| r.store(0, Ordering::Release));
        let half = conn(&registry, ids[2]);
        half.header().refcount[End::Client.index()].store(0, Ordering::Release);
        let mut alive = Alive::default();
        for pid in registry.pids_unknown_to(&alive) {
            alive.insert(pid, true);
        }
        alive.insert(104, false);
        alive.insert(105, false);
        alive.insert(106, false);
        alive.insert(206, false);
        let reaped = registry.reap(&alive);
        let freed: Vec<u64> = reaped.freed.iter().map(|c| c.id).collect();
        assert_eq!(freed, [1, 2, 4, 6]);
        assert!(reaped.spares.is_empty(), "connections are still live");
        assert_eq!(registry.connections().map(|c| c.id).collect::<Vec<_>>(), [3, 5, 7]);
        assert_eq!(registry.pending_count(), 1, "only 7 still waits for its server (4 left with its reap)");
        // A pid nobody asked about counts as alive: nothing more goes.
        assert!(registry.reap(&Alive::default()).freed.is_empty());
    }

    #[test]
    fn the_last_reap_drops_the_spares_and_a_late_spare() {
        let mut registry = Registry::default();
        let now = Instant::now();
        assert!(!registry.wants_spares(4), "no spares while nothing is live");
        let id = admit(&mut registry, 1, 10, now);
        assert!(registry.wants_spares(4));
        let generation = registry.spares_generation();
        assert!(registry.add_spare(Segment::create(4096).unwrap(), generation).is_ok());
        let made_meanwhile = Segment::create(4096).unwrap();
        registry.live[&id].segment.transition(SegmentState::Pending, SegmentState::Plain).unwrap();
        let reaped = registry.reap(&Alive::default());
        assert_eq!((reaped.freed.len(), reaped.spares.len()), (1, 1));
        assert!(registry.add_spare(made_meanwhile, generation).is_err(), "created before the drop: not kept");
        assert_eq!(registry.spare_count(), 0);
    }

    #[test]
    fn a_spare_is_handed_out_once() {
        let mut registry = Registry::default();
        admit(&mut registry, 1, 10, Instant::now());
        let generation = registry.spares_generation();
        registry.add_spare(Segment::create(4096).unwrap(), generation).unwrap();
        assert!(registry.pop_spare().is_some());
        assert!(registry.pop_spare().is_none());
    }

    #[test]
    fn decision_watch_is_kept_only_while_pending() {
        let mut registry = Registry::default();
        let id = admit(&mut registry, 1, 10, Instant::now());
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(registry.keep_decision_watch(id, a).is_none(), "pending: kept");
        let joined = registry.join_server(id, end(20, 4)).unwrap();
        assert!(joined.watch.is_some(), "the join hands the watch back to be closed");
        let (c, _d) = UnixStream::pair().unwrap();
        assert!(registry.keep_decision_watch(id, c).is_some(), "active: handed back");
        let (e, _f) = UnixStream::pair().unwrap();
        assert!(registry.keep_decision_watch(999, e).is_some(), "gone: handed back");
    }
}
