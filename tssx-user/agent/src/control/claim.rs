//! The claim rules: which claim is honoured, how the two ends are paired, the connection limit.
//!
//! A claim goes through three steps, and only the middle one holds the registry lock:
//! 1. gather what the kernel says (the caller's socket inode and its peer, through
//!    [`KernelFacts`](super::KernelFacts)), and create the segment;
//! 2. decide, in the registry (take the kernel event that backs the claim, pair with the pending
//!    client, check the limit and admit);
//! 3. answer and trace (the reply is sent by [`super::server`] after this returns).
//!
//! Rules (see also the trust rules in [`super`]):
//! * A **client** claim of fd F needs the kernel's `connect` event for (pid, F) on a watched path,
//!   and F must still be a socket; the event is used up by the claim (a second claim of the same
//!   fd is refused). If its server already stayed plain, the client stays plain too. Otherwise it
//!   gets a new segment and waits, pending, for its server, unless `max_connections` are live
//!   (finished ones are reaped first).
//! * A **server** claim of fd F needs F to be a socket whose peer is the socket of a pending
//!   client claim: that is the kernel's word that the caller holds the other end. Without a
//!   client claim yet, the kernel's `accept` event for (pid, F) is required, and the claim waits
//!   up to [`Timing::peer_wait`](super::Timing) for the client's claim, not at all if the connect
//!   event shows a client process without the hook. A server that gets no client stays plain,
//!   and is remembered so that its client, claiming late, stays plain too.
//! * Anything else is refused and traced `claim refused` with the caller's pid and uid: a process
//!   asking for a socket that is not its own end of a connection on a watched path.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use tssx_common::{
    control::{PlainReason, Reply, Role},
    segment::End,
};
use tssx_shm::segment::Segment;

use super::{
    lifecycle,
    registry::{Alive, EndInfo, NewClient, Registry, Seen},
    Control,
};

/// How often a client claim at the limit gathers the liveness of more processes and tries again
/// (more are needed only when connections appeared while it asked).
const LIMIT_ROUNDS: usize = 3;

/// A granted claim: the segment whose fd goes with the reply, and what its trace line says
/// (traced right after the reply is sent, off the claim's path).
pub(super) enum Granted {
    /// A client's claim: the segment is the client's, waiting for the server.
    Client { id: u64, pid: u32, comm: String, fd: i32, path: String, segment: Arc<Segment> },
    /// A server's claim: both ends swapped (`client` and `server` as `pid/comm`).
    Server { id: u64, path: String, client: String, server: String, segment: Arc<Segment> },
}

impl Granted {
    /// The connection's id.
    pub(super) fn id(&self) -> u64 {
        match *self {
            Granted::Client { id, .. } | Granted::Server { id, .. } => id,
        }
    }

    /// The segment to send.
    pub(super) fn segment(&self) -> &Segment {
        match self {
            Granted::Client { segment, .. } | Granted::Server { segment, .. } => segment,
        }
    }

    /// Writes the trace line of the grant.
    pub(super) fn trace(&self) {
        match self {
            Granted::Client { id, pid, comm, fd, path, .. } => {
                tracing::info!(connection = id, pid, comm, fd, path, "client claimed: segment sent, waiting for the server")
            }
            Granted::Server { id, path, client, server, .. } => tracing::info!(connection = id, path, "swapped {client} <-> {server}"),
        }
    }
}

/// The answer to a claim: the reply, and the grant when it is a swap.
pub(super) type Outcome = (Reply, Option<Granted>);

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
    fn not_swapped(self, reason: PlainReason) -> Outcome {
        tracing::info!(pid = self.pid, fd = self.fd, role = ?self.role, reason = reason.describe(), "not swapped");
        (Reply::plain(reason), None)
    }

    /// A claim the kernel does not back is refused: a process asking for a socket that is not
    /// its own end of a connection on a watched path (or a stale fd). Traced `claim refused`.
    fn refused(self, reason: PlainReason) -> Outcome {
        tracing::warn!(pid = self.pid, uid = self.uid, fd = self.fd, role = ?self.role, reason = reason.describe(), "claim refused");
        (Reply::plain(reason), None)
    }
}

impl Control {
    /// Handles a claim of `fd` as the `role` end by process `pid` (running as `uid`, both from
    /// `SO_PEERCRED`); returns the reply and, for a swap, the grant whose segment goes with it.
    pub(super) fn claim(&self, pid: u32, uid: u32, role: Role, fd: i32) -> Outcome {
        let who = Claimant { pid, uid, fd, role };
        match role {
            Role::Client => self.claim_client(who),
            Role::Server => self.claim_server(who),
        }
    }

    /// A client's claim (see the module doc).
    fn claim_client(&self, who: Claimant) -> Outcome {
        let Claimant { pid, fd, role, .. } = who;
        // 1. The kernel must have seen this process connect this fd on a watched path.
        let Some(seen) = self.await_connect(pid, fd) else { return who.refused(PlainReason::NotSeen) };
        // 2. The fd must still be that socket.
        let Ok(Some(inode)) = self.facts.socket_inode(pid, fd) else { return who.refused(PlainReason::NotSeen) };
        let spare = {
            let mut registry = self.lock();
            if registry.take_server_stayed_plain(inode) {
                None
            } else {
                Some(registry.pop_spare())
            }
        };
        // Its server claimed first, found no client claim, and reads the real socket.
        let Some(spare) = spare else { return who.not_swapped(PlainReason::PeerHasNoHook) };
        let segment = match spare.map_or_else(|| Segment::create(self.ring_size), Ok) {
            Ok(segment) => segment,
            Err(e) => {
                tracing::warn!("creating a segment: {e}");
                return who.not_swapped(PlainReason::NoSegment);
            }
        };
        segment.set_tssx_bit(End::Client, true);
        // Release: the end counts as present before the segment reaches anyone.
        segment.header().refcount[End::Client.index()].store(1, Ordering::Release);
        let segment = Arc::new(segment);
        let path = self.path_name(seen.path_id);
        let client = NewClient { inode, end: seen.end.clone(), path: path.clone(), segment: Arc::clone(&segment) };
        match self.admit(client) {
            Some(id) => {
                self.changed.notify_all();
                (Reply::swap(id), Some(Granted::Client { id, pid, comm: seen.end.comm, fd, path, segment }))
            }
            None => {
                tracing::info!(pid, fd, role = ?role, path, max_connections = self.max_connections, reason = PlainReason::TooManyConnections.describe(), "not swapped");
                (Reply::plain(PlainReason::TooManyConnections), None)
            }
        }
    }

    /// Admits a client's claim under the limit: the limit is checked and the connection counted
    /// in one critical section, so that concurrent claims cannot overshoot it. At the limit,
    /// finished connections are reaped first (they may not have been swept yet); the liveness of
    /// their processes is asked outside the lock, and the admission tried again with it. `None`:
    /// the limit holds (the claim's segment is dropped, after the lock).
    fn admit(&self, mut client: NewClient) -> Option<u64> {
        let mut alive = Alive::default();
        for round in 1..=LIMIT_ROUNDS {
            let mut registry = self.lock();
            let reaped = if registry.live_count() >= self.max_connections { registry.reap(&alive) } else { Default::default() };
            let admitted = registry.admit_client(self.max_connections, client, Instant::now());
            let unknown = if admitted.is_err() && round < LIMIT_ROUNDS { registry.pids_unknown_to(&alive) } else { Vec::new() };
            drop(registry);
            lifecycle::finish_reaped(reaped);
            match admitted {
                Ok(id) => return Some(id),
                Err(_) if unknown.is_empty() => return None,
                Err(refused) => {
                    for pid in unknown {
                        alive.insert(pid, self.facts.alive(pid));
                    }
                    client = refused;
                }
            }
        }
        None
    }

    /// The kernel's connect event for `fd` of `pid`, taken out of the registry: recorded
    /// already, or drained from the ring buffer now (it was submitted before the syscall returned
    /// to the claiming process), or else waited for up to [`Timing::event_wait`](super::Timing).
    fn await_connect(&self, pid: u32, fd: i32) -> Option<Seen> {
        let take = |registry: &mut Registry| registry.take_connect(pid, fd);
        if let Some(seen) = take(&mut self.lock()) {
            return Some(seen);
        }
        self.drain_feed();
        self.wait_for(self.timing.event_wait, take)
    }

    /// A server's claim of its accepted fd (see the module doc).
    ///
    /// The proof is the socket itself: `/proc/PID/fd/FD` must be a socket whose peer
    /// (`sock_diag`) is the client socket of a connection whose client claim the kernel backed.
    /// Before `accept()` that server socket is in no process's fd table, so a process that holds
    /// it is an end of that connection, by the kernel's word, with or without its accept event.
    fn claim_server(&self, who: Claimant) -> Outcome {
        let Claimant { pid, fd, .. } = who;
        let Ok(Some(inode)) = self.facts.socket_inode(pid, fd) else { return who.refused(PlainReason::NotSeen) };
        let Ok(Some(peer)) = self.facts.unix_peer(inode) else { return who.refused(PlainReason::NotSeen) };
        enum Found {
            /// The connection the client claimed.
            Client(u64),
            /// The server's accept event (the client has not claimed yet).
            Event(Seen),
        }
        let take_pending = |registry: &mut Registry| registry.take_pending(peer).map(Found::Client);
        let mut found = take_pending(&mut self.lock());
        if found.is_none() {
            self.drain_feed();
            found = self.wait_for(self.timing.event_wait, |registry| {
                take_pending(registry).or_else(|| registry.take_accept(pid, fd).map(Found::Event))
            });
        }
        let (id, event) = match found {
            Some(Found::Client(id)) => (id, None),
            Some(Found::Event(seen)) => match self.await_client_claim(peer, seen.path_id) {
                Some(id) => (id, Some(seen)),
                None => {
                    self.lock().server_stayed_plain(peer, Instant::now());
                    return who.not_swapped(PlainReason::PeerHasNoHook);
                }
            },
            None => return who.refused(PlainReason::NotSeen),
        };
        // Granted on the socket's evidence: use the accept event if it came, else let it be
        // dropped when it does.
        let event = event.or_else(|| self.lock().accept_event_or_due(pid, fd, Instant::now()));
        let end = match event {
            Some(seen) => seen.end,
            None => EndInfo { pid, comm: self.facts.comm(pid), fd },
        };
        let server = format!("{pid}/{}", end.comm);
        let joined = self.lock().join_server(id, end);
        let Some(joined) = joined else { return who.not_swapped(PlainReason::PeerHasNoHook) };
        drop(joined.watch); // closed after the state change: the client sees Active
        let client = format!("{}/{}", joined.client.pid, joined.client.comm);
        (Reply::swap(id), Some(Granted::Server { id, path: joined.path, client, server, segment: joined.segment }))
    }

    /// Waits up to [`Timing::peer_wait`](super::Timing) for the claim of the client whose socket
    /// is `peer` (on path `path_id`), and takes it; `None` if it does not come, or at once if the
    /// kernel's connect event shows a client process without the hook (a plain client must not
    /// cost the server a wait).
    ///
    /// The client is looked for among the unclaimed connect events by socket inode, and its hook
    /// checked, outside the lock; the registry's generation tells whether an event or a claim
    /// arrived meanwhile, so that no wake-up is missed.
    fn await_client_claim(&self, peer: u32, path_id: u32) -> Option<u64> {
        let deadline = Instant::now() + self.timing.peer_wait;
        let mut registry = self.lock();
        loop {
            if let Some(id) = registry.take_pending(peer) {
                return Some(id);
            }
            let candidates = registry.unclaimed_connects(path_id);
            let generation = registry.generation();
            drop(registry);
            if self.client_without_hook(peer, &candidates) {
                return None;
            }
            registry = self.lock();
            let left = deadline.checked_duration_since(Instant::now())?;
            if registry.generation() == generation {
                registry = self.changed.wait_timeout(registry, left).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
    }

    /// Whether the client among `candidates` (`(pid, fd)` of connect events) whose socket is
    /// `peer` runs without the hook (it will never claim). Asks the kernel; call without the lock.
    fn client_without_hook(&self, peer: u32, candidates: &[(u32, i32)]) -> bool {
        let Some(&(pid, _)) = candidates.iter().find(|&&(pid, fd)| self.facts.socket_inode(pid, fd).ok().flatten() == Some(peer)) else {
            return false;
        };
        let now = Instant::now();
        let known = self.lock().hook_known(pid, now, self.timing.hook_check_ttl);
        let hooked = known.unwrap_or_else(|| {
            let hooked = self.facts.carries_hook(pid);
            self.lock().remember_hook(pid, hooked, now);
            hooked
        });
        !hooked
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use tssx_common::{
        control::{PlainReason, Reply, Role},
        segment::{End, SegmentState},
    };

    use super::{super::fake::*, Granted, Outcome};
    use crate::control::Control;

    const CLIENT: u32 = 100;
    const SERVER: u32 = 200;
    const OTHER: u32 = 300;

    /// One connection on the watched path: client fd 5 (socket 1005), server fd 7 (socket 2007),
    /// the client's connect event recorded and, if `accepted`, the server's accept event.
    fn setup(max: usize, accepted: bool) -> (Arc<FakeKernel>, Arc<Control>) {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(max);
        kernel.connection((CLIENT, 5, 1005), (SERVER, Some(7), 2007));
        control.record(&connect_event(CLIENT, 5));
        if accepted {
            control.record(&accept_event(SERVER, 7));
        }
        (kernel, control)
    }

    fn plain(outcome: &Outcome) -> Option<PlainReason> {
        let (reply, granted) = outcome;
        (granted.is_none() && reply.connection == 0).then(|| PlainReason::from_u32(reply.reason)).filter(|r| *r != PlainReason::None)
    }

    fn granted(outcome: &Outcome) -> &Granted {
        outcome.1.as_ref().unwrap_or_else(|| panic!("not granted: {:?}", outcome.0))
    }

    #[test]
    fn a_client_claim_backed_by_its_connect_event_gets_a_pending_segment() {
        let (_kernel, control) = setup(8, false);
        let outcome = control.claim(CLIENT, 0, Role::Client, 5);
        assert_eq!(outcome.0, Reply::swap(1));
        let Granted::Client { id, pid, ref comm, fd, ref path, ref segment } = *granted(&outcome) else { panic!("a client grant") };
        assert_eq!((id, pid, comm.as_str(), fd, path.as_str()), (1, CLIENT, "ev100", 5, "/run/app.sock"));
        assert_eq!(segment.state(), Some(SegmentState::Pending));
        assert!(segment.tssx_bit(End::Client) && !segment.tssx_bit(End::Server));
        // Acquire: pairs with the claim's Release store.
        assert_eq!(segment.header().refcount[End::Client.index()].load(std::sync::atomic::Ordering::Acquire), 1);
        let stats = control.stats();
        assert_eq!((stats.live_segments, stats.pending_claims, stats.unclaimed_events), (1, 1, 0));
        // The connect event is used up: the same fd cannot be claimed twice.
        assert_eq!(plain(&control.claim(CLIENT, 0, Role::Client, 5)), Some(PlainReason::NotSeen));
        assert_eq!(control.stats().live_segments, 1);
    }

    #[test]
    fn a_client_claim_without_a_connect_event_is_refused_after_the_event_wait() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        kernel.fd(CLIENT, 5, Some(1005));
        let started = Instant::now();
        assert_eq!(plain(&control.claim(CLIENT, 0, Role::Client, 5)), Some(PlainReason::NotSeen));
        assert!(started.elapsed() >= TEST_TIMING.event_wait, "it waits for an event still in flight");
        assert_eq!(kernel.asked("socket_inode"), 0, "no event, no question");
        assert_eq!(control.stats().live_segments, 0);
    }

    #[test]
    fn a_client_event_that_arrives_during_the_wait_backs_the_claim() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        kernel.concurrent();
        kernel.fd(CLIENT, 5, Some(1005));
        let late = Arc::clone(&control);
        let recorder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            late.record(&connect_event(CLIENT, 5));
        });
        let outcome = control.claim(CLIENT, 0, Role::Client, 5);
        recorder.join().unwrap();
        assert_eq!(outcome.0, Reply::swap(1));
    }

    #[test]
    fn a_stale_fd_is_refused() {
        let (kernel, control) = setup(8, false);
        kernel.close(CLIENT, 5); // closed since its connect
        assert_eq!(plain(&control.claim(CLIENT, 0, Role::Client, 5)), Some(PlainReason::NotSeen));
        // Reused for something that is no socket.
        control.record(&connect_event(CLIENT, 6));
        kernel.fd(CLIENT, 6, None);
        assert_eq!(plain(&control.claim(CLIENT, 0, Role::Client, 6)), Some(PlainReason::NotSeen));
        assert_eq!(control.stats().live_segments, 0);
    }

    #[test]
    fn a_server_claim_is_paired_by_its_peer_inode() {
        let (kernel, control) = setup(8, true);
        let client = control.claim(CLIENT, 0, Role::Client, 5);
        let server = control.claim(SERVER, 0, Role::Server, 7);
        assert_eq!(server.0, Reply::swap(client.0.connection));
        let Granted::Server { ref client, ref server, ref segment, .. } = *granted(&server) else { panic!("a server grant") };
        assert_eq!((client.as_str(), server.as_str()), ("100/ev100", "200/ev200"));
        assert_eq!(segment.state(), Some(SegmentState::Active));
        assert!(segment.tssx_bit(End::Client) && segment.tssx_bit(End::Server));
        assert_eq!(kernel.asked("comm"), 0, "the accept event names the server");
        let status = control.status();
        assert_eq!(status.len(), 1);
        assert_eq!((status[0].state.as_str(), status[0].server.as_ref().map(|s| s.fd)), ("active", Some(7)));
        let stats = control.stats();
        assert_eq!((stats.pending_claims, stats.unclaimed_events), (0, 0));
    }

    #[test]
    fn a_server_claim_needs_no_accept_event_when_its_client_claimed_and_drops_the_late_one() {
        let (kernel, control) = setup(8, false);
        control.claim(CLIENT, 0, Role::Client, 5);
        let started = Instant::now();
        let server = control.claim(SERVER, 0, Role::Server, 7);
        assert!(started.elapsed() < TEST_TIMING.event_wait, "no wait for the accept event");
        let Granted::Server { ref server, .. } = *granted(&server) else { panic!("a server grant") };
        assert_eq!(server, "200/comm200");
        assert_eq!(kernel.asked("comm"), 1);
        control.record(&accept_event(SERVER, 7));
        assert_eq!(control.stats().unclaimed_events, 0, "the accept event of a granted end is dropped");
        control.record(&accept_event(SERVER, 7));
        assert_eq!(control.stats().unclaimed_events, 1, "only once");
    }

    #[test]
    fn a_server_claim_before_its_client_waits_for_the_client() {
        let (kernel, control) = setup(8, true);
        kernel.hooked(CLIENT);
        kernel.concurrent();
        let early = Arc::clone(&control);
        let server = std::thread::spawn(move || early.claim(SERVER, 0, Role::Server, 7).0);
        std::thread::sleep(Duration::from_millis(50));
        let client = control.claim(CLIENT, 0, Role::Client, 5);
        let server = server.join().unwrap();
        assert_eq!(client.0, Reply::swap(1));
        assert_eq!(server, Reply::swap(1));
        assert_eq!(control.status()[0].state, "active");
    }

    #[test]
    fn a_server_whose_client_never_claims_stays_plain_and_so_does_the_late_client() {
        let (kernel, control) = setup(8, true);
        kernel.hooked(CLIENT);
        let started = Instant::now();
        assert_eq!(plain(&control.claim(SERVER, 0, Role::Server, 7)), Some(PlainReason::PeerHasNoHook));
        assert!(started.elapsed() >= TEST_TIMING.peer_wait, "a hooked client is waited for");
        // Its server reads the real socket: the client, claiming late, stays plain at once.
        let started = Instant::now();
        assert_eq!(plain(&control.claim(CLIENT, 0, Role::Client, 5)), Some(PlainReason::PeerHasNoHook));
        assert!(started.elapsed() < TEST_TIMING.event_wait);
        assert_eq!(control.stats().live_segments, 0);
        // The memory is used once; the event is used up too.
        assert_eq!(plain(&control.claim(CLIENT, 0, Role::Client, 5)), Some(PlainReason::NotSeen));
    }

    #[test]
    fn a_client_without_the_hook_costs_the_server_no_wait() {
        let (kernel, control) = setup(8, true);
        let started = Instant::now();
        assert_eq!(plain(&control.claim(SERVER, 0, Role::Server, 7)), Some(PlainReason::PeerHasNoHook));
        assert!(started.elapsed() < TEST_TIMING.peer_wait, "{:?}", started.elapsed());
        assert_eq!(kernel.asked("carries_hook"), 1);
        // A second connection of the same client process: the answer is reused.
        kernel.connection((CLIENT, 6, 1006), (SERVER, Some(8), 2008));
        control.record(&connect_event(CLIENT, 6));
        control.record(&accept_event(SERVER, 8));
        assert_eq!(plain(&control.claim(SERVER, 0, Role::Server, 8)), Some(PlainReason::PeerHasNoHook));
        assert_eq!(kernel.asked("carries_hook"), 1);
    }

    #[test]
    fn third_party_claims_are_refused() {
        let (kernel, control) = setup(8, true);
        kernel.hooked(CLIENT);
        // Another process claims the client's fd number, and a socket of its own as a server.
        kernel.connection((OTHER, 5, 3005), (OTHER, Some(9), 3009));
        assert_eq!(plain(&control.claim(OTHER, 1000, Role::Client, 5)), Some(PlainReason::NotSeen));
        assert_eq!(plain(&control.claim(OTHER, 1000, Role::Server, 9)), Some(PlainReason::NotSeen));
        // The client's own socket, held by the other process (passed to it), is no server end.
        kernel.fd(OTHER, 11, Some(1005));
        control.claim(CLIENT, 0, Role::Client, 5);
        assert_eq!(plain(&control.claim(OTHER, 1000, Role::Server, 11)), Some(PlainReason::NotSeen));
        // None of that used up the real ends' evidence or their pending connection.
        assert_eq!(control.stats().pending_claims, 1);
        assert_eq!(control.claim(SERVER, 0, Role::Server, 7).0, Reply::swap(1));
    }

    #[test]
    fn the_connection_limit_holds_and_finished_connections_make_room() {
        let (kernel, control) = setup(1, false);
        assert_eq!(control.claim(CLIENT, 0, Role::Client, 5).0, Reply::swap(1));
        kernel.connection((CLIENT + 1, 5, 1105), (SERVER, None, 2107));
        control.record(&connect_event(CLIENT + 1, 5));
        assert_eq!(plain(&control.claim(CLIENT + 1, 0, Role::Client, 5)), Some(PlainReason::TooManyConnections));
        assert_eq!(control.stats().live_segments, 1);
        // The first client dies before its server joined: the next claim at the limit reaps it
        // (liveness asked outside the lock) and is admitted.
        kernel.kill(CLIENT);
        kernel.connection((CLIENT + 2, 5, 1205), (SERVER, None, 2207));
        control.record(&connect_event(CLIENT + 2, 5));
        let second = control.claim(CLIENT + 2, 0, Role::Client, 5);
        assert_eq!(second.0, Reply::swap(2));
        assert!(kernel.asked("alive") >= 1);
        assert_eq!(control.status().iter().map(|s| s.id).collect::<Vec<_>>(), [2]);
        // A connection whose client's hook went plain makes room too.
        granted(&second).segment().transition(SegmentState::Pending, SegmentState::Plain).unwrap();
        kernel.connection((CLIENT + 3, 5, 1305), (SERVER, None, 2307));
        control.record(&connect_event(CLIENT + 3, 5));
        assert_eq!(control.claim(CLIENT + 3, 0, Role::Client, 5).0, Reply::swap(3));
        assert_eq!(control.status().iter().map(|s| s.id).collect::<Vec<_>>(), [3]);
    }
}
