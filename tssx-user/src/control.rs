//! The agent's control socket: hooks claim their end of a connection, the agent checks the claim
//! against the kernel's events, pairs the two ends by socket inode and hands both the same
//! shared-memory segment. Also answers `tssx-agent status`.
//!
//! Trust: the caller's pid comes from `SO_PEERCRED`; a claim of fd F as a client is honoured
//! only if the kernel reported a `connect` on a watched path by that pid returning F (an
//! `accept` returning F, for a server), and only if `/proc/PID/fd/F` is still that socket. The
//! segment goes only to the two processes that pass these checks for the two ends of one
//! connection, so no third process can obtain it.
//!
//! Each control connection is served on a thread of its own with blocking I/O and timeouts:
//! claims are rare (one per connection) and short.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::{fs::PermissionsExt as _, net::{UnixListener, UnixStream}},
    },
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard},
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

use crate::{fdpass, paths::WatchedPath, segment::Segment, sockdiag};

/// How long a claim waits for the kernel event that proves it (events reach the agent through
/// the ring buffer a little after the syscall returned).
const EVENT_WAIT: Duration = Duration::from_millis(1000);
/// How long a server's claim waits for the client's claim of the other end.
const PEER_WAIT: Duration = Duration::from_millis(500);
/// Kernel events older than this that nobody claimed are forgotten.
const EVENT_TTL: Duration = Duration::from_secs(30);
/// A client-claimed connection whose server has not claimed after this long turns plain (the
/// server has no hook, or has not accepted yet): the client replays its bytes into the socket.
const PENDING_TTL: Duration = Duration::from_secs(2);
/// A control connection that sends nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

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
    created: Instant,
    path: String,
    client: EndInfo,
    server: Option<EndInfo>,
    segment: Segment,
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

#[derive(Default)]
struct Inner {
    connects: HashMap<(u32, i32), Seen>,
    accepts: HashMap<(u32, i32), Seen>,
    /// Client-claimed connections waiting for their server, by the client socket's inode (the
    /// server's socket has no inode until `accept`, so the server side looks its peer up).
    pending: HashMap<u32, u64>,
    live: BTreeMap<u64, Connection>,
    next_id: u64,
}

/// State shared by the event loop (which records kernel events) and the control threads.
pub struct Registry {
    inner: Mutex<Inner>,
    changed: Condvar,
    paths: Vec<WatchedPath>,
    ring_size: usize,
}

impl Registry {
    /// A registry for `paths` (ids are positions) making segments with `ring_size`-byte rings.
    pub fn new(paths: Vec<WatchedPath>, ring_size: usize) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::new(Inner { next_id: 1, ..Inner::default() }), changed: Condvar::new(), paths, ring_size })
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
                inner.accepts.insert((event.tgid, event.new_fd), Seen { end: key_end(event.new_fd), path_id: event.path_id, at: Instant::now() });
            }
            _ => return,
        }
        drop(inner);
        self.changed.notify_all();
    }

    /// Drops stale events and connections whose processes are both gone. Call periodically.
    pub fn sweep(&self) {
        let mut inner = self.lock();
        inner.connects.retain(|_, s| s.at.elapsed() < EVENT_TTL);
        inner.accepts.retain(|_, s| s.at.elapsed() < EVENT_TTL);
        let expired: Vec<u64> = inner
            .live
            .values()
            .filter(|c| c.server.is_none() && c.created.elapsed() > PENDING_TTL)
            .map(|c| c.id)
            .collect();
        for id in expired {
            inner.pending.retain(|_, v| *v != id);
            if let Some(conn) = inner.live.get(&id) {
                if conn.segment.transition(SegmentState::Pending, SegmentState::Plain).is_ok() {
                    tracing::info!(connection = id, path = conn.path, client = conn.client.pid, reason = PlainReason::PeerHasNoHook.describe(), "not swapped");
                }
            }
        }
        let dead: Vec<u64> = inner
            .live
            .values()
            .filter(|c| {
                c.segment.state() == Some(SegmentState::Plain)
                    || (c.server.is_some() && c.segment.header().refcount.iter().all(|r| r.load(std::sync::atomic::Ordering::Acquire) == 0))
                    || (!alive(c.client.pid) && c.server.as_ref().is_none_or(|s| !alive(s.pid)))
            })
            .map(|c| c.id)
            .collect();
        for id in dead {
            if let Some(conn) = inner.live.remove(&id) {
                inner.pending.retain(|_, v| *v != id);
                if conn.server.is_none() && conn.segment.state() == Some(SegmentState::Plain) && conn.created.elapsed() <= PENDING_TTL {
                    // The client's hook saw the peer write to the real socket and went plain.
                    tracing::info!(connection = id, path = conn.path, client = conn.client.pid, reason = PlainReason::PeerHasNoHook.describe(), "not swapped");
                }
                let (c2s, s2c) = conn.bytes_each_way();
                tracing::info!(connection = id, path = conn.path, bytes_client_to_server = c2s, bytes_server_to_client = s2c, "closed: segment freed");
            }
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

    /// A server declines the swap of its accepted `fd`: the connection turns plain.
    fn decline(&self, pid: u32, fd: i32) -> Reply {
        let seen = self.wait_for(EVENT_WAIT, |inner| inner.accepts.remove(&(pid, fd)));
        let inode = seen.and_then(|_| sockdiag::socket_inode(pid, fd).ok().flatten());
        let peer = inode.and_then(|inode| sockdiag::unix_peer(inode).ok().flatten());
        let Some(peer) = peer else { return Reply::plain(PlainReason::NotSeen) };
        if let Some(id) = self.wait_for(PEER_WAIT, |inner| inner.pending.remove(&peer)) {
            let inner = self.lock();
            if let Some(conn) = inner.live.get(&id) {
                let _ = conn.segment.transition(SegmentState::Pending, SegmentState::Plain);
                tracing::info!(connection = id, path = conn.path, pid, fd, reason = PlainReason::Declined.describe(), "not swapped");
            }
        }
        Reply::plain(PlainReason::Declined)
    }

    /// Handles a claim; returns the reply and, for a swap, the id of the connection whose
    /// segment fd must go with it.
    fn claim(&self, pid: u32, role: Role, fd: i32) -> (Reply, Option<u64>) {
        let not_swapped = |reason: PlainReason| {
            tracing::info!(pid, fd, role = ?role, reason = reason.describe(), "not swapped");
            (Reply::plain(reason), None)
        };
        // 1. The kernel must have seen this process connect/accept this fd on a watched path.
        let seen = self.wait_for(EVENT_WAIT, |inner| match role {
            Role::Client => inner.connects.remove(&(pid, fd)),
            Role::Server => inner.accepts.remove(&(pid, fd)),
        });
        let Some(seen) = seen else { return not_swapped(PlainReason::NotSeen) };
        // 2. The fd must still be that socket, and (for a client) connected to a peer.
        let Ok(Some(inode)) = sockdiag::socket_inode(pid, fd) else { return not_swapped(PlainReason::NotSeen) };
        match role {
            Role::Client => {
                let segment = match Segment::create(self.ring_size) {
                    Ok(segment) => segment,
                    Err(e) => {
                        tracing::warn!("creating a segment: {e}");
                        return not_swapped(PlainReason::NoSegment);
                    }
                };
                segment.set_tssx_bit(End::Client, true);
                // Release: the end counts as present before the segment reaches anyone.
                segment.header().refcount[End::Client.index()].store(1, std::sync::atomic::Ordering::Release);
                let path = self.path_name(seen.path_id);
                let mut inner = self.lock();
                let id = inner.next_id;
                inner.next_id += 1;
                inner.pending.insert(inode, id);
                inner.live.insert(id, Connection { id, created: Instant::now(), path: path.clone(), client: seen.end.clone(), server: None, segment });
                drop(inner);
                self.changed.notify_all();
                tracing::info!(connection = id, pid, comm = seen.end.comm, fd, path, "client claimed: segment sent, waiting for the server");
                (Reply::swap(id), Some(id))
            }
            Role::Server => {
                let Ok(Some(peer)) = sockdiag::unix_peer(inode) else { return not_swapped(PlainReason::NotSeen) };
                let Some(id) = self.wait_for(PEER_WAIT, |inner| inner.pending.remove(&peer)) else {
                    return not_swapped(PlainReason::PeerHasNoHook);
                };
                let mut inner = self.lock();
                let Some(conn) = inner.live.get_mut(&id) else { return not_swapped(PlainReason::PeerHasNoHook) };
                conn.segment.set_tssx_bit(End::Server, true);
                // Release, before the Active transition: a client that sees Active must also see
                // the server end present, not "gone" (refcount 0) while its hook maps the segment.
                conn.segment.header().refcount[End::Server.index()].store(1, std::sync::atomic::Ordering::Release);
                if conn.segment.transition(SegmentState::Pending, SegmentState::Active).is_err() {
                    drop(inner);
                    return not_swapped(PlainReason::PeerHasNoHook);
                }
                conn.server = Some(seen.end.clone());
                tracing::info!(
                    connection = id,
                    path = conn.path,
                    "swapped {}/{} <-> {}/{}",
                    conn.client.pid,
                    conn.client.comm,
                    pid,
                    seen.end.comm
                );
                (Reply::swap(id), Some(id))
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Creates the control socket in `state_dir` and serves it on a background thread.
pub fn serve(registry: Arc<Registry>, state_dir: &Path) -> anyhow::Result<()> {
    let path = state_dir.join(tssx_common::control::CONTROL_SOCKET);
    let _ = std::fs::remove_file(&path); // stale, from an agent that died (we hold the lock)
    let listener = UnixListener::bind(&path).with_context(|| format!("creating the control socket {}", path.display()))?;
    // Hooks in processes of any uid must reach the agent; what they can get is checked above.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    thread::Builder::new().name("tssx-control".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let registry = Arc::clone(&registry);
            let _ = thread::Builder::new().name("tssx-claim".into()).spawn(move || handle(&registry, stream));
        }
    })?;
    Ok(())
}

fn handle(registry: &Registry, mut stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Some(pid) = peer_pid(&stream) else { return };
    let mut buf = [0u8; REQUEST_SIZE];
    if stream.read_exact(&mut buf).is_err() {
        tracing::debug!(pid, "control connection closed without a complete request");
        return;
    }
    let request = match Request::decode(&buf) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(pid, "malformed control request refused: {e}");
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
        Some(RequestKind::Claim) => {
            let role = request.request_role().expect("validated by decode");
            let (reply, connection) = registry.claim(pid, role, request.fd);
            let inner = registry.lock();
            let fd = connection.and_then(|id| inner.live.get(&id)).and_then(|c| c.segment.fd());
            if let Err(e) = fdpass::send_with_fd(stream.as_raw_fd(), &reply.encode(), fd) {
                tracing::warn!(pid, "sending the claim reply: {e}");
            }
        }
        Some(RequestKind::Decline) => {
            let _ = stream.write_all(&registry.decline(pid, request.fd).encode());
        }
        None => {}
    }
}

/// The pid of the process at the other end of a control connection (`SO_PEERCRED`).
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live ucred.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}
