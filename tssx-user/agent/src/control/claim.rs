//! The claim rules: which claim is honoured, how the two ends are paired, the limits. Nothing
//! here waits: a claim is answered at once (refused, retried, or plain at a limit), held until
//! the other end's claim arrives, or paired with the other end's held claim.
//!
//! A claim goes through three steps, and only the middle one holds the registry lock:
//! 1. gather what the kernel says (the caller's socket, its peer and their names, through
//!    [`KernelFacts`](super::KernelFacts); for a forked claimant, which relatives hold the same
//!    socket);
//! 2. decide, in the registry: use the kernel event up, pair with the other end's held claim or
//!    hold this one, check the limits and admit the connection (the segment, if no spare is
//!    ready, is created between two critical sections);
//! 3. answer and trace ([`super::server`] sends the replies after this returns).
//!
//! Rules (see also the trust rules in [`super`]):
//! * A **client** claim of fd F is honoured if F is a connected stream socket whose peer is named
//!   like a watched path: the peer of a connected client is the server's socket, which carries
//!   its listener's name, so this is the kernel's word that the caller connected to that path.
//!   The kernel's `connect` event for (pid, F), kept since the connect, names the same path and
//!   gives the connection's time and the process's command name; without it (lost, or
//!   forgotten at the cap) the claim stands on `sock_diag` alone. A claim names the fd of the
//!   call its hook was in, which may be a duplicate of the connected one (`dup`, a clone used by
//!   another thread): the event is then found among the process's own events by socket inode. Before the server accepted,
//!   its socket has no inode for `sock_diag` to describe: the connect event alone backs the
//!   claim then, and the server's claim, whose socket's peer is this one, pairs with it,
//!   whichever of the two is decided first.
//! * A **server** claim of fd F is honoured if F is a stream socket with a peer and: the
//!   kernel's `accept` event for (pid, F), or a held client claim on that peer (only a process
//!   that accepted or inherited the connection holds its other end), or the socket's own name,
//!   which is its listener's path.
//! * A claim flagged [`CLAIM_FORKED`] (the process forked while the connection was plain) is
//!   answered "retry" while the claimant's parent or one of its children holds the same socket:
//!   the other process could write to it behind this one's back.
//! * The first honoured claim of a connection is **held**, unanswered; when the other end's
//!   arrives (its socket is the held one's peer), both get the same segment, within the limit of
//!   `max_connections` live segments. At most `HELD_PER_CONNECTION * max_connections` claims
//!   (and never more than `MAX_HELD_CLAIMS`) are held at once; beyond, a claim is answered
//!   plain.
//! * Anything else is refused and traced `claim refused` with the caller's pid and uid: a
//!   process asking for a socket that is not its own end of a connection on a watched path. A
//!   claim that fails because its socket is gone while its control connection is closed too
//!   was abandoned by its hook (the connection closed before the agent looked at the claim):
//!   traced at debug, counted apart. A server end whose client closed already is answered
//!   plain (`PeerHasNoHook`), not refused.

use std::{
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use tssx_common::{
    control::{PlainReason, Reply, Role, CLAIM_FORKED},
    segment::End,
};
use tssx_shm::segment::Segment;

use super::{
    comm::Comm,
    lifecycle,
    registry::{Alive, EndInfo, Held, NewConnection, Side, Step, Verified},
    Control,
};

/// Why a claim is not honoured.
enum Unverified {
    /// The kernel does not back it (see the module doc): refused.
    Refused(&'static str),
    /// A server end on a watched path whose client closed already: plain, nothing to pair.
    PeerGone,
    /// A client end not accepted yet, whose connect the kernel did not report (its process's
    /// connects on the path are quiet, see [`super::quiet`]): claim again later, once the
    /// accepted peer names the path.
    NotAcceptedYet,
}

/// Whether the other end of a claim's control connection is closed (a look, no wait).
fn hung_up(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one live pollfd, no wait.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

/// How often a pair at the limit gathers the liveness of more processes and tries again (more
/// are needed only when connections appeared while it asked).
const LIMIT_ROUNDS: usize = 3;
/// Most kept events of one process a claim looks through for its socket under another fd.
const DUPLICATE_SEARCH: usize = 64;
/// Claims held at once, per allowed connection (`--max-connections`)...
pub const HELD_PER_CONNECTION: usize = 4;
/// ... and at most this many in all: a claim is held only until its peer's arrives (usually
/// within a millisecond, at most the hook's give-up time), so a few thousand at once is a storm,
/// and each holds a descriptor: without a cap, 10,000 allowed connections would reserve 40,000
/// descriptors for claims on top of their segments.
pub const MAX_HELD_CLAIMS: usize = 4096;

/// Claims held at once with `max_connections` allowed (see [`MAX_HELD_CLAIMS`]).
pub fn held_claims(max_connections: usize) -> usize {
    max_connections.saturating_mul(HELD_PER_CONNECTION).min(MAX_HELD_CLAIMS)
}

/// A claim as it arrived: the caller (from `SO_PEERCRED`) and what it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claimant {
    /// The caller's pid.
    pub pid: u32,
    /// The caller's uid.
    pub uid: u32,
    /// The end it claims.
    pub role: Role,
    /// Its fd of that end.
    pub fd: i32,
    /// `CLAIM_*` flags.
    pub flags: u32,
}

/// What to do with a claim's control connection (and a held one's): the I/O that
/// [`super::server`] does after the decision.
pub(super) enum Decision {
    /// Send `reply` on each stream, then close them.
    Answer {
        /// The control connections to answer (the claim's; at a limit, also the held partner's).
        streams: Vec<UnixStream>,
        /// The answer.
        reply: Reply,
    },
    /// The claim is held: its control connection is in the registry.
    Held,
    /// Both ends claimed: each gets the segment.
    Paired(Paired),
}

/// Two claims paired: the replies to send and the trace line to write.
pub(super) struct Paired {
    /// The connection's id.
    pub(super) id: u64,
    /// The watched pattern that covers it.
    pub(super) pattern: String,
    /// The socket's address.
    pub(super) path: String,
    /// `pid/comm` of the client.
    pub(super) client: String,
    /// `pid/comm` of the server.
    pub(super) server: String,
    /// The segment whose memfd goes with both replies.
    pub(super) segment: Arc<Segment>,
    /// The held claim's control connection (answered first: it has waited).
    pub(super) held: UnixStream,
    /// The new claim's control connection.
    pub(super) new: UnixStream,
}

impl Claimant {
    /// A claim the kernel does not back is refused: a process asking for a socket that is not
    /// its own end of a connection on a watched path (or a stale fd). Traced `claim refused`.
    fn refused(self, stream: UnixStream, why: &str) -> Decision {
        let reason = PlainReason::NotSeen.describe();
        tracing::warn!(pid = self.pid, uid = self.uid, fd = self.fd, role = ?self.role, reason, detail = why, "claim refused");
        Decision::Answer { streams: vec![stream], reply: Reply::plain(PlainReason::NotSeen) }
    }
}

impl Control {
    /// Handles a claim arriving on control connection `stream` (see the module doc). Never
    /// waits: the decision comes back at once; a held claim keeps `stream` in the registry.
    pub(super) fn claim(&self, who: Claimant, stream: UnixStream) -> Decision {
        // Relaxed: counters.
        self.counters.claims.fetch_add(1, Ordering::Relaxed);
        // A process that set up an io_uring stays plain whatever the claim (its pid is the
        // kernel's, from the control connection): answered first, so that the reason is traced
        // even for a connection that closes before its claim is looked at (a short one, or a
        // loaded agent).
        if self.facts.uses_io_uring(who.pid) {
            let reason = PlainReason::IoUring.describe();
            tracing::info!(pid = who.pid, fd = who.fd, role = ?who.role, reason, "not swapped");
            return Decision::Answer { streams: vec![stream], reply: Reply::plain(PlainReason::IoUring) };
        }
        // A claim whose hook closed it already (its socket closed) is over: the fd it names may
        // even be another socket by now.
        let verified = if hung_up(&stream) { Err(Unverified::Refused("its connection closed first")) } else { self.verify(who) };
        let verified = match verified {
            Ok(verified) => verified,
            Err(Unverified::PeerGone) => {
                self.counters.peer_never_claimed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pid = who.pid, fd = who.fd, role = ?who.role, reason = "peer never claimed", detail = "its peer closed first", "not swapped");
                return Decision::Answer { streams: vec![stream], reply: Reply::plain(PlainReason::PeerHasNoHook) };
            }
            Err(Unverified::NotAcceptedYet) => {
                self.counters.retried_unaccepted.fetch_add(1, Ordering::Relaxed);
                let reason = PlainReason::NotAcceptedYet.describe();
                tracing::debug!(pid = who.pid, fd = who.fd, role = ?who.role, reason, "claim answered retry");
                return Decision::Answer { streams: vec![stream], reply: Reply::retry(PlainReason::NotAcceptedYet) };
            }
            Err(Unverified::Refused(why)) if hung_up(&stream) => {
                // The hook closed its socket (and with it the claim) before the agent looked: a
                // short connection, not a suspicious claim.
                self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(pid = who.pid, fd = who.fd, role = ?who.role, detail = why, "claim abandoned: its connection closed first");
                return Decision::Answer { streams: Vec::new(), reply: Reply::plain(PlainReason::NotSeen) };
            }
            Err(Unverified::Refused(why)) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return who.refused(stream, why);
            }
        };
        if who.flags & CLAIM_FORKED != 0 {
            if let Some(other) = self.facts.relatives(who.pid).into_iter().find(|&r| self.facts.holds_socket(r, verified.inode)) {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                let reason = PlainReason::NotSoleHolder.describe();
                tracing::debug!(pid = who.pid, fd = who.fd, role = ?who.role, other, reason, "claim answered retry");
                return Decision::Answer { streams: vec![stream], reply: Reply::retry(PlainReason::NotSoleHolder) };
            }
        }
        if verified.role == Role::Client {
            self.note_client_claim(who.pid, verified.path_id);
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        // Watched before it can be held: once in the registry, it may be closed at any time.
        self.watch_held(&stream, token);
        let cap = self.max_held();
        let step = self.lock().hold_or_pair(verified.clone(), stream, token, cap, Instant::now());
        match step {
            Step::Held { replaced } => {
                drop(replaced); // an earlier claim of the same socket: its hook sees EOF
                let path = self.path_name(verified.path_id);
                tracing::debug!(pid = who.pid, fd = who.fd, role = ?who.role, path, "claim held: waiting for the other end's");
                Decision::Held
            }
            Step::Full { stream } => {
                let reason = PlainReason::TooManyConnections.describe();
                tracing::info!(pid = who.pid, fd = who.fd, role = ?who.role, held_claims = cap, reason, "not swapped");
                Decision::Answer { streams: vec![stream], reply: Reply::plain(PlainReason::TooManyConnections) }
            }
            Step::Pair { partner, spare, stream } => self.pair(verified, stream, partner, spare),
        }
    }

    /// Checks a claim against the kernel (see the module doc); `Err` says why it is refused.
    fn verify(&self, who: Claimant) -> Result<Verified, Unverified> {
        let Claimant { pid, fd, role, .. } = who;
        let refused = |why| Err(Unverified::Refused(why));
        let inode = match self.facts.socket_inode(pid, fd) {
            Ok(Some(inode)) => inode,
            Ok(None) => return refused("the fd is no socket"),
            Err(_) => return refused("no such fd"),
        };
        let socket = match self.facts.connected_unix_socket(inode) {
            Ok(Some(socket)) if socket.is_stream() && socket.is_connected() => socket,
            _ => return refused("no connected Unix stream socket"),
        };
        let side = if role == Role::Client { Side::Connect } else { Side::Accept };
        // Per-connection events reach the agent lazily (the kernel does not wake it for them):
        // the ring buffer may still hold this socket's event, and the registry an older one of
        // the same fd (a connection closed since). Every event submitted before the claim's
        // syscall returned is recorded after this drain, in order, so the lookup finds the
        // newest.
        self.drain_feed();
        // (Two statements: the registry lock is released before `event_of_duplicate` takes it.)
        let recorded = self.lock().event(side, pid, fd);
        let event = recorded.or_else(|| self.event_of_duplicate(side, pid, inode));
        // The connect hook's event names the socket, not the fd (any holder may claim it).
        let event = event.or_else(|| if role == Role::Client { self.lock().event_by_cookie(socket.cookie) } else { None });
        let (path_id, peer, name) = match (role, socket.peer) {
            (Role::Client, Some(peer)) => {
                // The peer (the server's socket) carries the listener's name.
                let named = self.facts.connected_unix_socket(peer).ok().flatten();
                let Some((path_id, name)) = named.and_then(|p| self.match_socket(pid, &p)) else {
                    return refused("its peer is not named like a watched path");
                };
                (path_id, peer, Some(name))
            }
            // Connected, not accepted yet: the server's socket has no inode to ask about. The
            // connect event alone names the path; the server's claim, whose peer this socket
            // is, completes the pair.
            (Role::Client, None) => match &event {
                Some((seen, _)) => (seen.path_id, 0, None),
                None => return Err(Unverified::NotAcceptedYet),
            },
            (Role::Server, Some(peer)) => {
                let own = self.match_socket(pid, &socket);
                let from_event = event.as_ref().map(|(seen, _)| seen.path_id);
                let from_client = || self.lock().held_client_path(peer);
                let from_name = || own.as_ref().map(|(id, _)| *id);
                let Some(path_id) = from_event.or_else(from_client).or_else(from_name) else {
                    return refused("no accept event, no claimed client, and not named like a watched path");
                };
                (path_id, peer, own.map(|(_, name)| name))
            }
            // Connected, and its peer has no inode: the client closed its end already.
            (Role::Server, None) if event.is_some() || self.match_socket(pid, &socket).is_some() => {
                return Err(Unverified::PeerGone);
            }
            (Role::Server, None) => return refused("the socket has no peer"),
        };
        // An event of another path is another socket's that had the same fd.
        let event = event.filter(|(seen, _)| seen.path_id == path_id);
        let end = match &event {
            Some((seen, _)) if seen.end.fd >= 0 => seen.end.clone(),
            // The connect hook's event has no fd: the claim's (the socket is the same).
            Some((seen, _)) if seen.end.pid == pid => EndInfo { pid, comm: seen.end.comm, fd },
            _ => EndInfo { pid, comm: Comm::from(self.facts.comm(pid).as_str()), fd },
        };
        Ok(Verified {
            role,
            end,
            fd,
            inode,
            peer,
            path_id,
            name,
            event_ns: event.as_ref().map(|(seen, _)| seen.ts_ns),
            event: event.map(|(_, at)| at),
        })
    }

    /// The `side` event of process `pid` for socket `inode` under another fd (the hook claims
    /// with the fd of the call it was in, which may be a duplicate: `dup`, `try_clone`). Looks
    /// at the process's own kept events only, at most [`DUPLICATE_SEARCH`] of them, reading
    /// `/proc` for those whose socket the agent has not learnt yet (outside the lock).
    fn event_of_duplicate(&self, side: Side, pid: u32, inode: u32) -> Option<(super::registry::Seen, super::registry::EventRef)> {
        let candidates = self.lock().events_of(side, pid, DUPLICATE_SEARCH)?;
        let fd = candidates.into_iter().find_map(|(fd, known)| match known {
            Some(known) => (known == inode).then_some(fd),
            None => (self.facts.socket_inode(pid, fd).ok().flatten() == Some(inode)).then_some(fd),
        })?;
        self.lock().event(side, pid, fd)
    }

    /// Pairs claim `new` (control connection `stream`) with the held claim `partner`: makes the
    /// segment (a spare if there was one), sets both TSSX bits and admits the connection under
    /// the limit.
    fn pair(&self, new: Verified, stream: UnixStream, partner: Held, spare: Option<Segment>) -> Decision {
        let Held { claim: held, stream: held_stream, since, .. } = partner;
        // Each end's process is signalled to hand back if it sets up an io_uring from now on;
        // one that did since its claim was checked is answered plain (the kernel watcher marks
        // the io_uring before it looks for the signal entry, this after it stored the entry:
        // one of the two sees the other).
        for pid in [new.end.pid, held.end.pid] {
            self.facts.hand_back_on_io_uring(pid);
        }
        let (client, server) = if new.role == Role::Client { (&new, &held) } else { (&held, &new) };
        let pattern = self.path_name(new.path_id);
        let path = new.name.as_deref().or(held.name.as_deref()).map_or_else(|| pattern.clone(), crate::paths::display_name);
        let labels = (client.end.label(), server.end.label());
        if let Some(pid) = [new.end.pid, held.end.pid].into_iter().find(|&pid| self.facts.uses_io_uring(pid)) {
            let reason = PlainReason::IoUring.describe();
            tracing::info!(path, client = labels.0, server = labels.1, io_uring_pid = pid, reason, "not swapped");
            return Decision::Answer { streams: vec![held_stream, stream], reply: Reply::plain(PlainReason::IoUring) };
        }
        let segment = match spare.map_or_else(|| Segment::create_growing(self.ring_size, self.ring_initial()), Ok) {
            Ok(segment) => segment,
            Err(e) => {
                tracing::warn!("creating a segment: {e}");
                return Decision::Answer { streams: vec![held_stream, stream], reply: Reply::plain(PlainReason::NoSegment) };
            }
        };
        segment.set_tssx_bit(End::Client, true);
        segment.set_tssx_bit(End::Server, true);
        let segment = Arc::new(segment);
        // The connection's time: the client's connect event, else the server's accept event,
        // else the first claim.
        let first_claim_ns = super::monotonic_ns().saturating_sub(since.elapsed().as_nanos() as u64);
        let connected_ns = client.event_ns.or(server.event_ns).unwrap_or(first_claim_ns);
        let pair = NewConnection {
            path: path.as_str().into(),
            pattern: pattern.as_str().into(),
            client: client.end.clone(),
            server: server.end.clone(),
            inodes: [client.inode, server.inode],
            connected_ns,
            segment: Arc::clone(&segment),
        };
        match self.admit(pair) {
            Some(id) => {
                self.counters.paired.fetch_add(1, Ordering::Relaxed);
                self.want_spares();
                Decision::Paired(Paired { id, pattern, path, client: labels.0, server: labels.1, segment, held: held_stream, new: stream })
            }
            None => {
                tracing::info!(
                    path,
                    client = labels.0,
                    server = labels.1,
                    max_connections = self.max_connections,
                    reason = PlainReason::TooManyConnections.describe(),
                    "not swapped"
                );
                Decision::Answer { streams: vec![held_stream, stream], reply: Reply::plain(PlainReason::TooManyConnections) }
            }
        }
    }

    /// Admits a pair under the limit: the limit is checked and the connection counted in one
    /// critical section, so that concurrent pairs cannot overshoot it. At the limit, finished
    /// connections are reaped first (they may not have been swept yet); the liveness of their
    /// processes is asked outside the lock, and the admission tried again with it. `None`: the
    /// limit holds (the pair's segment is dropped, after the lock).
    fn admit(&self, mut pair: NewConnection) -> Option<u64> {
        let mut alive = Alive::default();
        for round in 1..=LIMIT_ROUNDS {
            let now = Instant::now();
            let mut registry = self.lock();
            let reaped = if registry.live_count() >= self.max_connections {
                registry.reap(&alive, now, self.timing.join_timeout)
            } else {
                Default::default()
            };
            let admitted = registry.admit(self.max_connections, pair, now);
            let unknown = if admitted.is_err() && round < LIMIT_ROUNDS { registry.pids_unknown_to(&alive) } else { Vec::new() };
            drop(registry);
            lifecycle::finish_reaped(self, reaped);
            match admitted {
                Ok(id) => return Some(id),
                Err(_) if unknown.is_empty() => return None,
                Err(refused) => {
                    for pid in unknown {
                        alive.insert(pid, self.facts.alive(pid));
                    }
                    pair = refused;
                }
            }
        }
        None
    }

    /// Most claims held at once.
    pub(super) fn max_held(&self) -> usize {
        held_claims(self.max_connections)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read as _,
        os::{fd::AsRawFd as _, unix::net::UnixStream},
        sync::{atomic::Ordering, Arc},
        time::{Duration, Instant},
    };

    use tssx_common::{
        control::{PlainReason, Reply, ReplyKind, Role, CLAIM_FORKED, REPLY_SIZE},
        segment::{End, SegmentState},
    };
    use tssx_shm::segment::Segment;

    use super::{super::fake::*, Claimant, Decision};
    use crate::{
        control::{Comm, Control},
        sockdiag::{UnixSocket, ESTABLISHED},
    };

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

    fn who(pid: u32, role: Role, fd: i32) -> Claimant {
        Claimant { pid, uid: 0, role, fd, flags: 0 }
    }

    /// A claim as the hook sends it: the decision, and the hook's end of its control connection.
    fn claim(control: &Control, pid: u32, role: Role, fd: i32) -> (Decision, UnixStream) {
        claim_as(control, who(pid, role, fd))
    }

    fn claim_as(control: &Control, who: Claimant) -> (Decision, UnixStream) {
        let (agent, hook) = control_connection();
        (control.claim(who, agent), hook)
    }

    /// The reply of an answered claim (sent as the server does), read on the hook's end.
    fn answered(control: &Control, (decision, hook): (Decision, UnixStream)) -> Reply {
        assert!(matches!(decision, Decision::Answer { .. }), "answered at once");
        control.deliver(decision);
        read_reply(&hook).expect("a reply").0
    }

    /// Reads one reply on a hook's end of a control connection: `None` at EOF.
    fn read_reply(hook: &UnixStream) -> Option<(Reply, Option<tssx_shm::sys::Fd>)> {
        hook.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; REPLY_SIZE];
        let (n, fd) = tssx_shm::fdpass::recv_with_fd(hook.as_raw_fd(), &mut buf).expect("no timeout");
        (n > 0).then(|| (Reply::decode(&buf[..n]).expect("a valid reply"), fd))
    }

    fn refused(control: &Control, pid: u32, role: Role, fd: i32) -> bool {
        answered(control, claim(control, pid, role, fd)) == Reply::plain(PlainReason::NotSeen)
    }

    /// Answered "retry": a client claim before the accept without its connect event.
    fn not_accepted_yet(control: &Control, pid: u32, role: Role, fd: i32) -> bool {
        answered(control, claim(control, pid, role, fd)) == Reply::retry(PlainReason::NotAcceptedYet)
    }

    /// Held then paired: the second claim delivers the segment to both hooks.
    fn held_then_paired(control: &Control, first: (u32, Role, i32), second: (u32, Role, i32)) -> (Reply, Reply, Segment) {
        let (decision, first_hook) = claim(control, first.0, first.1, first.2);
        assert!(matches!(decision, Decision::Held), "the first claim is held");
        first_hook.set_nonblocking(true).unwrap();
        let err = (&first_hook).read(&mut [0u8; 1]).expect_err("no answer while held");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        let (decision, second_hook) = claim(control, second.0, second.1, second.2);
        assert!(matches!(decision, Decision::Paired(_)), "the second claim pairs");
        control.deliver(decision);
        first_hook.set_nonblocking(false).unwrap();
        let (a, a_fd) = read_reply(&first_hook).expect("the held claim is answered");
        let (b, b_fd) = read_reply(&second_hook).expect("the second claim is answered");
        assert!(read_reply(&first_hook).is_none() && read_reply(&second_hook).is_none(), "both closed after the answer");
        let a_seg = Segment::open(a_fd.expect("memfd").borrow()).unwrap();
        let b_seg = Segment::open(b_fd.expect("memfd").borrow()).unwrap();
        // The same segment: what one end writes in the header, the other sees.
        a_seg.header().shut.0[0].store(7, Ordering::SeqCst);
        assert_eq!(b_seg.header().shut.0[0].load(Ordering::SeqCst), 7);
        a_seg.header().shut.0[0].store(0, Ordering::SeqCst);
        (a, b, a_seg)
    }

    #[test]
    fn a_client_claim_is_held_then_paired_with_its_server() {
        let (kernel, control) = setup(8, true);
        let (client, server, segment) = held_then_paired(&control, (CLIENT, Role::Client, 5), (SERVER, Role::Server, 7));
        assert_eq!((client, server), (Reply::swap(1), Reply::swap(1)));
        assert_eq!(segment.state(), Some(SegmentState::Pending), "the hooks migrate it");
        assert!(segment.tssx_bit(End::Client) && segment.tssx_bit(End::Server));
        // Acquire: the hooks set their own refcounts when they map it.
        assert!(segment.header().refcount.iter().all(|r| r.load(Ordering::Acquire) == 0));
        let status = control.status();
        assert_eq!(status.len(), 1);
        assert_eq!((status[0].state.as_str(), status[0].client.fd, status[0].server.fd), ("migrating", 5, 7));
        assert_eq!((status[0].client.comm, status[0].server.comm), (Comm::from("ev100"), Comm::from("ev200")));
        let stats = control.stats();
        assert_eq!((stats.claims, stats.held_claims, stats.paired, stats.refused, stats.unclaimed_events), (2, 0, 1, 0, 0));
        assert_eq!(kernel.asked("comm"), 0, "the events name both ends");
    }

    #[test]
    fn a_server_claim_first_is_held_then_paired_with_its_client() {
        let (_kernel, control) = setup(8, true);
        let (server, client, _) = held_then_paired(&control, (SERVER, Role::Server, 7), (CLIENT, Role::Client, 5));
        assert_eq!((server, client), (Reply::swap(1), Reply::swap(1)));
        let stats = control.stats();
        assert_eq!((stats.paired, stats.unclaimed_events), (1, 0), "the pair used both events up");
    }

    #[test]
    fn a_client_claim_before_the_accept_is_held_and_paired_once_its_server_claims() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        kernel.connection((CLIENT, 5, 1005), (SERVER, None, 2007));
        // Without its connect event, nothing proves the path yet: claim again later.
        assert!(not_accepted_yet(&control, CLIENT, Role::Client, 5));
        control.record(&connect_event(CLIENT, 5));
        let (decision, client_hook) = claim(&control, CLIENT, Role::Client, 5);
        assert!(matches!(decision, Decision::Held), "held while the connection waits in the accept queue");
        kernel.accept(SERVER, 7, 2007);
        let (decision, server_hook) = claim(&control, SERVER, Role::Server, 7);
        assert!(matches!(decision, Decision::Paired(_)));
        control.deliver(decision);
        assert_eq!(read_reply(&client_hook).unwrap().0, Reply::swap(1));
        assert_eq!(read_reply(&server_hook).unwrap().0, Reply::swap(1));
        assert_eq!(control.status()[0].socket_inodes, [1005, 2007]);
    }

    /// A process whose connections on a path keep ending unclaimed is quieted in the kernel at
    /// the sweep (`quiet`); a client claim of it made before the accept, whose connect the
    /// kernel then did not report, is answered "retry"; the same claim after the accept pairs
    /// by the peer, and the quiet ends.
    #[test]
    fn a_churning_process_is_quieted_and_its_unreported_connection_claims_after_the_accept() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        control.set_cool_after(3);
        // Three connects that ended before anyone claimed them (no socket left, events old).
        for n in 0..3 {
            control.record(&hook_connect_event(CLIENT, cookie_of(1100 + n)));
        }
        control.record(&hook_connect_event(CLIENT + 1, cookie_of(1200)));
        control.sweep();
        let now = crate::control::quiet::coarse_now_ns();
        assert!(kernel.quiet_until(CLIENT, 0).is_some_and(|until| until > now), "three in a row: quiet");
        assert_eq!(kernel.quiet_until(CLIENT + 1, 0), None, "one: not quiet");
        // A connection the kernel did not report, claimed before the server accepted it.
        kernel.connection((CLIENT, 5, 1005), (SERVER, None, 2007));
        let (decision, hook) = claim(&control, CLIENT, Role::Client, 5);
        control.deliver(decision);
        assert_eq!(read_reply(&hook).unwrap().0, Reply::retry(PlainReason::NotAcceptedYet));
        assert_eq!(control.stats().retried_unaccepted, 1);
        assert!(kernel.quiet_until(CLIENT, 0).is_some(), "a claim answered retry ends no quiet");
        // Accepted: the claim stands on the peer's name.
        kernel.accept(SERVER, 7, 2007);
        let (decision, client_hook) = claim(&control, CLIENT, Role::Client, 5);
        assert!(matches!(decision, Decision::Held));
        assert_eq!(kernel.quiet_until(CLIENT, 0), None, "a verified claim of the process ends its quiet");
        let (decision, server_hook) = claim(&control, SERVER, Role::Server, 7);
        assert!(matches!(decision, Decision::Paired(_)));
        control.deliver(decision);
        assert_eq!(read_reply(&client_hook).unwrap().0, Reply::swap(1));
        assert_eq!(read_reply(&server_hook).unwrap().0, Reply::swap(1));
    }

    /// A glob reaches the agent as a candidate (the program cannot match it): the program
    /// never looks it up in `QUIET`, so no streak is kept and nothing is written there.
    #[test]
    fn a_churning_process_on_a_glob_pattern_is_not_quieted() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control_watching(&["/run/*.sock"], 8);
        control.set_cool_after(3);
        for n in 0..6 {
            control.record(&hook_connect_event(CLIENT, cookie_of(1100 + n)));
        }
        control.sweep();
        assert_eq!(control.stats().short_lived_plain, 6, "the connections ended");
        assert_eq!(kernel.quiet_until(CLIENT, 0), None, "the kernel would never read it");
    }

    /// The connect hook's event (no fd, the socket's cookie) backs a client claim made before
    /// the accept, whatever fd the claim names; its end is traced with the claim's fd.
    #[test]
    fn a_connect_hook_event_backs_a_client_claim_before_the_accept_by_its_cookie() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        kernel.connection((CLIENT, 5, 1005), (SERVER, None, 2007));
        kernel.fd(CLIENT, 9, Some(1005)); // a duplicate: the cookie names the socket anyway
                                          // Another socket's event does not do.
        control.record(&hook_connect_event(CLIENT, cookie_of(1006)));
        assert!(not_accepted_yet(&control, CLIENT, Role::Client, 9));
        control.record(&hook_connect_event(CLIENT, cookie_of(1005)));
        let (decision, client_hook) = claim(&control, CLIENT, Role::Client, 9);
        assert!(matches!(decision, Decision::Held), "held while the connection waits in the accept queue");
        kernel.accept(SERVER, 7, 2007);
        let (decision, server_hook) = claim(&control, SERVER, Role::Server, 7);
        let Decision::Paired(paired) = &decision else { panic!("not paired") };
        assert_eq!(paired.client, format!("{CLIENT}/ev{CLIENT}"), "named as the event names it");
        control.deliver(decision);
        assert_eq!(read_reply(&client_hook).unwrap().0, Reply::swap(1));
        assert_eq!(read_reply(&server_hook).unwrap().0, Reply::swap(1));
        let status = &control.status()[0];
        assert_eq!((status.socket_inodes, status.client.fd), ([1005, 2007], 9));
        assert_eq!(control.stats().unclaimed_events, 1, "the pair used its event up; the other socket's is kept");
    }

    #[test]
    fn a_claim_through_a_duplicate_fd_finds_the_event_of_the_original() {
        let (kernel, control) = setup(8, true);
        // The client's writer thread claims through its clone (fd 9) of fd 5; another socket of
        // the same process has an event too.
        kernel.fd(CLIENT, 9, Some(1005));
        kernel.connection((CLIENT, 6, 1006), (SERVER, Some(8), 2008));
        control.record(&connect_event(CLIENT, 6));
        let (_, _, _) = held_then_paired(&control, (CLIENT, Role::Client, 9), (SERVER, Role::Server, 7));
        let status = control.status();
        assert_eq!((status[0].client.fd, status[0].client.comm), (5, Comm::from("ev100")), "the original fd, from the event");
        // Both events of the pair used up, the other socket's kept.
        assert_eq!(control.stats().unclaimed_events, 1);
    }

    #[test]
    fn claims_without_events_stand_on_sock_diag() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        kernel.connection((CLIENT, 5, 1005), (SERVER, Some(7), 2007));
        let started = Instant::now();
        let (client, server, _) = held_then_paired(&control, (SERVER, Role::Server, 7), (CLIENT, Role::Client, 5));
        assert!(started.elapsed() < Duration::from_millis(100), "nothing waits for an event: {:?}", started.elapsed());
        assert_eq!((client, server), (Reply::swap(1), Reply::swap(1)));
        assert_eq!(control.status()[0].client.comm, Comm::from("comm100"), "the command name from /proc");
    }

    #[test]
    fn third_party_and_stale_claims_are_refused() {
        let (kernel, control) = setup(8, true);
        // Another process claims the client's fd number, a socket of its own on an unwatched
        // path, and holds the client's socket itself (passed to it) as a "server".
        kernel.connection_on("/run/other.sock", (OTHER, 5, 3005), (OTHER, Some(9), 3009));
        assert!(refused(&control, OTHER, Role::Client, 5), "its own socket on an unwatched path");
        assert!(refused(&control, OTHER, Role::Server, 9), "named like an unwatched path, no event");
        kernel.fd(OTHER, 11, Some(1005));
        assert!(refused(&control, OTHER, Role::Server, 11), "a client socket is no server end");
        assert!(refused(&control, OTHER, Role::Client, 12), "not open");
        // The wrong role for a real end, a listener, a datagram socket, no socket at all.
        assert!(refused(&control, CLIENT, Role::Server, 5));
        kernel.fd(SERVER, 3, Some(2000));
        kernel.socket(
            2000,
            UnixSocket { kind: libc::SOCK_STREAM as u8, state: 10, peer: None, name: Some(PATH.into()), file: None, cookie: 0 },
        );
        assert!(refused(&control, SERVER, Role::Server, 3), "a listener has no peer");
        kernel.fd(SERVER, 4, Some(2004));
        kernel.socket(
            2004,
            UnixSocket {
                kind: libc::SOCK_DGRAM as u8,
                state: ESTABLISHED,
                peer: Some(1005),
                name: Some(PATH.into()),
                file: None,
                cookie: 0,
            },
        );
        assert!(refused(&control, SERVER, Role::Server, 4), "datagram sockets stay plain");
        kernel.fd(CLIENT, 6, None);
        assert!(refused(&control, CLIENT, Role::Client, 6), "no socket");
        // A stale fd: closed since its connect.
        kernel.close(CLIENT, 5);
        assert!(refused(&control, CLIENT, Role::Client, 5));
        let stats = control.stats();
        assert_eq!((stats.refused, stats.held_claims, stats.live_segments), (9, 0, 0));
        assert_eq!(stats.unclaimed_events, 2, "refusals use no event up");
        // The real server is unaffected.
        assert!(matches!(claim(&control, SERVER, Role::Server, 7).0, Decision::Held));
    }

    #[test]
    fn a_claim_whose_socket_and_connection_closed_first_is_abandoned_not_refused() {
        let (kernel, control) = setup(8, true);
        kernel.close(CLIENT, 5);
        let (agent, hook) = control_connection();
        drop(hook); // the hook closed the socket, and the claim with it
        let asked = kernel.asked("socket_inode");
        assert!(matches!(control.claim(who(CLIENT, Role::Client, 5), agent), Decision::Answer { ref streams, .. } if streams.is_empty()));
        assert_eq!(kernel.asked("socket_inode"), asked, "not even looked at: its fd may be another socket by now");
        let stats = control.stats();
        assert_eq!((stats.abandoned, stats.refused), (1, 0));
        // With its connection open, the same claim is refused.
        assert!(refused(&control, CLIENT, Role::Client, 5));
        assert_eq!(control.stats().refused, 1);
    }

    #[test]
    fn a_process_that_uses_io_uring_is_answered_plain() {
        let (kernel, control) = setup(8, true);
        kernel.io_uring(CLIENT);
        assert_eq!(answered(&control, claim(&control, CLIENT, Role::Client, 5)), Reply::plain(PlainReason::IoUring));
        assert_eq!(control.stats().held_claims, 0, "nothing held for its peer to pair with");
    }

    #[test]
    fn a_pair_registers_both_processes_for_the_io_uring_hand_back() {
        let (kernel, control) = setup(8, true);
        let (held, _client) = claim(&control, CLIENT, Role::Client, 5);
        assert!(matches!(held, Decision::Held));
        assert!(!kernel.hands_back_on_io_uring(CLIENT), "not before the pair");
        let (paired, _server) = claim(&control, SERVER, Role::Server, 7);
        assert!(matches!(paired, Decision::Paired(_)));
        assert!(kernel.hands_back_on_io_uring(CLIENT) && kernel.hands_back_on_io_uring(SERVER));
    }

    #[test]
    fn an_io_uring_set_up_while_the_claim_was_held_means_plain_for_both() {
        let (kernel, control) = setup(8, true);
        let (held, client) = claim(&control, CLIENT, Role::Client, 5);
        assert!(matches!(held, Decision::Held));
        // After its claim was checked, before the pair: the signal would come too late.
        kernel.io_uring(CLIENT);
        let (decision, server) = claim(&control, SERVER, Role::Server, 7);
        let Decision::Answer { ref streams, reply } = decision else { panic!("answered, not paired") };
        assert_eq!((streams.len(), reply), (2, Reply::plain(PlainReason::IoUring)), "both claims answered plain");
        control.deliver(decision);
        for hook in [&client, &server] {
            assert_eq!(read_reply(hook).expect("a reply").0, Reply::plain(PlainReason::IoUring));
        }
        assert_eq!(control.stats().live_segments, 0);
    }

    #[test]
    fn a_server_whose_client_closed_first_is_answered_plain_not_refused() {
        let (kernel, control) = setup(8, true);
        // The client closed: the server's socket is still connected, with a peer the kernel can
        // no longer name.
        kernel.close(CLIENT, 5);
        kernel.socket(
            2007,
            UnixSocket { kind: libc::SOCK_STREAM as u8, state: ESTABLISHED, peer: None, name: Some(PATH.into()), file: None, cookie: 0 },
        );
        assert_eq!(answered(&control, claim(&control, SERVER, Role::Server, 7)), Reply::plain(PlainReason::PeerHasNoHook));
        let stats = control.stats();
        assert_eq!((stats.refused, stats.peer_never_claimed, stats.held_claims), (0, 1, 0));
        // Another process's peerless socket on no watched path is refused as before.
        kernel.fd(OTHER, 4, Some(3004));
        kernel.socket(
            3004,
            UnixSocket {
                kind: libc::SOCK_STREAM as u8,
                state: ESTABLISHED,
                peer: None,
                name: Some(b"/other".to_vec()),
                file: None,
                cookie: 0,
            },
        );
        assert!(refused(&control, OTHER, Role::Server, 4));
    }

    #[test]
    fn an_event_of_another_path_does_not_name_the_connection() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        // fd 5's connect event is on the watched path, but fd 5 is now another socket, whose
        // peer has an unwatched name: refused.
        control.record(&connect_event(CLIENT, 5));
        kernel.connection_on("/run/other.sock", (CLIENT, 5, 1005), (SERVER, Some(7), 2007));
        assert!(refused(&control, CLIENT, Role::Client, 5));
    }

    #[test]
    fn a_forked_claimant_is_retried_while_its_parent_holds_the_socket() {
        let (kernel, control) = setup(8, true);
        // The postmaster (SERVER) accepted fd 7, forked a backend, which claims.
        const BACKEND: u32 = 201;
        kernel.fork(SERVER, BACKEND);
        let forked = Claimant { flags: CLAIM_FORKED, ..who(BACKEND, Role::Server, 7) };
        assert_eq!(answered(&control, claim_as(&control, forked)), Reply::retry(PlainReason::NotSoleHolder));
        assert_eq!(control.stats().held_claims, 0);
        // The client's claim is held meanwhile.
        let (decision, client_hook) = claim(&control, CLIENT, Role::Client, 5);
        assert!(matches!(decision, Decision::Held));
        // A child of the backend holding it too: retried as well.
        kernel.close(SERVER, 7);
        kernel.fork(BACKEND, BACKEND + 1);
        assert_eq!(answered(&control, claim_as(&control, forked)), Reply::retry(PlainReason::NotSoleHolder));
        // Once the others closed their copies, the backend's claim pairs.
        kernel.close(BACKEND + 1, 7);
        let (decision, backend_hook) = claim_as(&control, forked);
        assert!(matches!(decision, Decision::Paired(_)));
        control.deliver(decision);
        assert_eq!(read_reply(&client_hook).unwrap().0, Reply::swap(1));
        assert_eq!(read_reply(&backend_hook).unwrap().0, Reply::swap(1));
        let stats = control.stats();
        assert_eq!((stats.retried, stats.paired), (2, 1));
        assert_eq!(control.status()[0].server.pid, BACKEND);
        // An unflagged claim is never checked.
        assert!(kernel.asked("relatives") == 3);
    }

    #[test]
    fn a_held_claim_ends_when_its_control_connection_closes() {
        let (_kernel, control) = setup(8, true);
        let (decision, hook) = claim(&control, CLIENT, Role::Client, 5);
        assert!(matches!(decision, Decision::Held));
        assert_eq!(control.stats().held_claims, 1);
        assert_eq!(control.watch_held_once(0), 0, "nothing happened yet");
        drop(hook); // the hook gave up (2 s) or its socket closed
        assert_eq!(control.watch_held_once(1000), 1);
        let stats = control.stats();
        assert_eq!((stats.held_claims, stats.peer_never_claimed), (0, 1));
        // The server claiming now is held in turn (its client's claim is over).
        assert!(matches!(claim(&control, SERVER, Role::Server, 7).0, Decision::Held));
        assert_eq!(control.stats().paired, 0);
    }

    #[test]
    fn a_held_claim_whose_hook_gave_up_unseen_turns_the_pair_plain() {
        let (_kernel, control) = setup(8, true);
        let (decision, hook) = claim(&control, CLIENT, Role::Client, 5);
        assert!(matches!(decision, Decision::Held));
        drop(hook); // closed, but not noticed yet
        let (decision, server_hook) = claim(&control, SERVER, Role::Server, 7);
        let Decision::Paired(paired) = decision else { panic!("paired") };
        let segment = Arc::clone(&paired.segment);
        control.deliver(Decision::Paired(paired));
        assert_eq!(read_reply(&server_hook).unwrap().0, Reply::plain(PlainReason::PeerHasNoHook));
        assert_eq!(segment.state(), Some(SegmentState::Plain), "given up: the sweep frees it");
        control.progress();
        assert_eq!(control.stats().live_segments, 0);
    }

    #[test]
    fn a_second_claim_of_a_socket_replaces_the_first() {
        let (_kernel, control) = setup(8, true);
        let (first, first_hook) = claim(&control, CLIENT, Role::Client, 5);
        assert!(matches!(first, Decision::Held));
        let (second, _second_hook) = claim(&control, CLIENT, Role::Client, 5);
        assert!(matches!(second, Decision::Held));
        assert!(read_reply(&first_hook).is_none(), "the first claim's connection is closed");
        assert_eq!(control.stats().held_claims, 1);
    }

    #[test]
    fn the_connection_limit_holds_and_finished_connections_make_room() {
        let (kernel, control) = setup(1, true);
        held_then_paired(&control, (CLIENT, Role::Client, 5), (SERVER, Role::Server, 7));
        kernel.connection((CLIENT + 1, 5, 1105), (SERVER, Some(8), 2108));
        let (decision, client_hook) = claim(&control, CLIENT + 1, Role::Client, 5);
        assert!(matches!(decision, Decision::Held), "a claim is held whatever the limit");
        let (decision, server_hook) = claim(&control, SERVER, Role::Server, 8);
        control.deliver(decision);
        for hook in [&client_hook, &server_hook] {
            assert_eq!(read_reply(hook).unwrap().0, Reply::plain(PlainReason::TooManyConnections));
        }
        assert_eq!(control.stats().live_segments, 1);
        // Both processes of the first connection die: the next pair at the limit reaps it
        // (liveness asked outside the lock) and is admitted.
        kernel.kill(CLIENT);
        kernel.kill(SERVER);
        kernel.connection((CLIENT + 2, 5, 1205), (SERVER + 2, Some(8), 2208));
        let (_, _, second) = held_then_paired(&control, (CLIENT + 2, Role::Client, 5), (SERVER + 2, Role::Server, 8));
        assert!(kernel.asked("alive") >= 1);
        assert_eq!(control.status().iter().map(|s| s.id).collect::<Vec<_>>(), [2]);
        // A connection given up by its hooks makes room too.
        second.transition(SegmentState::Pending, SegmentState::Plain).unwrap();
        kernel.connection((CLIENT + 3, 5, 1305), (SERVER + 3, Some(8), 2308));
        let (client, _, _) = held_then_paired(&control, (CLIENT + 3, Role::Client, 5), (SERVER + 3, Role::Server, 8));
        assert_eq!(client, Reply::swap(3));
        assert_eq!(control.status().iter().map(|s| s.id).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn held_claims_are_bounded() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(1); // at most 4 held
        let mut hooks = Vec::new();
        for i in 0..4 {
            kernel.connection((CLIENT + i, 5, 1000 + i), (SERVER, Some(10 + i as i32), 2000 + i));
            let (decision, hook) = claim(&control, CLIENT + i, Role::Client, 5);
            assert!(matches!(decision, Decision::Held));
            hooks.push(hook);
        }
        kernel.connection((CLIENT + 9, 5, 1009), (SERVER, Some(19), 2009));
        assert_eq!(answered(&control, claim(&control, CLIENT + 9, Role::Client, 5)), Reply::plain(PlainReason::TooManyConnections));
        assert_eq!(control.stats().held_claims, 4);
    }

    #[test]
    fn claims_on_many_threads_pair_once_each() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(64);
        kernel.concurrent();
        const N: u32 = 32;
        for i in 0..N {
            kernel.connection((CLIENT + i, 5, 1000 + i), (SERVER, Some(10 + i as i32), 2000 + i));
        }
        let threads: Vec<_> = (0..N)
            .flat_map(|i| [(CLIENT + i, Role::Client, 5), (SERVER, Role::Server, 10 + i as i32)])
            .map(|(pid, role, fd)| {
                let control = Arc::clone(&control);
                std::thread::spawn(move || {
                    let (decision, hook) = claim(&control, pid, role, fd);
                    control.deliver(decision);
                    read_reply(&hook).map(|(reply, _)| reply.reply_kind())
                })
            })
            .collect();
        let replies: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(replies.iter().all(|r| *r == Some(Some(ReplyKind::Swap))), "{replies:?}");
        let stats = control.stats();
        assert_eq!((stats.paired, stats.live_segments, stats.held_claims), (N as u64, N as usize, 0));
    }

    /// Paired on a pattern: the connection is traced with the socket's own path and the most
    /// specific pattern that covers it.
    fn paired_on(control: &Control, client: (u32, i32), server: (u32, i32)) -> Option<(String, String)> {
        let (first, _hook) = claim(control, client.0, Role::Client, client.1);
        if !matches!(first, Decision::Held) {
            return None;
        }
        let (second, _hook2) = claim(control, server.0, Role::Server, server.1);
        match second {
            Decision::Paired(super::Paired { ref path, ref pattern, .. }) => Some((path.clone(), pattern.clone())),
            _ => None,
        }
    }

    #[test]
    fn claims_are_checked_against_directory_and_glob_patterns() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control_watching(&["/run/", "/run/php/*.sock"], 8);
        kernel.connection_on("/run/php/www.sock", (CLIENT, 5, 1005), (SERVER, Some(7), 2007));
        assert_eq!(paired_on(&control, (CLIENT, 5), (SERVER, 7)), Some(("/run/php/www.sock".into(), "/run/php/*.sock".into())));
        kernel.connection_on("/run/deep/er/a.sock", (CLIENT, 6, 1006), (SERVER, Some(8), 2008));
        assert_eq!(paired_on(&control, (CLIENT, 6), (SERVER, 8)), Some(("/run/deep/er/a.sock".into(), "/run/".into())));
        // Outside both: refused (a client's peer names the path).
        kernel.connection_on("/srv/a.sock", (CLIENT, 9, 1009), (SERVER, Some(10), 2010));
        assert!(refused(&control, CLIENT, Role::Client, 9));
    }

    /// A listener bound with a relative name: the claim is honoured only when the name resolves
    /// (in the claimant's working directory, checked against the socket file) under a pattern.
    #[test]
    fn relative_names_are_resolved_against_the_socket_file() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control_watching(&["/run/app/"], 8);
        kernel.connection_on("app.sock", (CLIENT, 5, 1005), (SERVER, Some(7), 2007));
        kernel.relative(2007, (8, 42), CLIENT, "app.sock", "/run/app/app.sock");
        kernel.relative(2007, (8, 42), SERVER, "app.sock", "/run/app/app.sock");
        assert_eq!(paired_on(&control, (CLIENT, 5), (SERVER, 7)), Some(("/run/app/app.sock".into(), "/run/app/".into())));
        // The same name where the claimant's directory holds another file (or none): refused.
        kernel.connection_on("app.sock", (OTHER, 5, 3005), (SERVER, Some(9), 2009));
        kernel.relative(2009, (8, 43), OTHER, "app.sock", "/srv/app.sock");
        assert!(refused(&control, OTHER, Role::Client, 5));
        kernel.connection_on("b.sock", (OTHER, 6, 3006), (SERVER, Some(11), 2011));
        assert!(refused(&control, OTHER, Role::Client, 6), "no socket file to check against");
    }
}
