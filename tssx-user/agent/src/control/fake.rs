//! A kernel made of tables, for the claim rules' unit tests: sockets, peers, names, processes,
//! set by the test. Every question asserts that the registry lock is free (no I/O under the
//! lock), unless the test runs claims on several threads at once.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::unix::net::UnixStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock, TryLockError, Weak,
    },
    time::Duration,
};

use tssx_common::event::{Event, EventKind};

use super::{Control, KernelFacts, Timing, UnixSocket};
use crate::paths::WatchedPath;

/// The watched path of the fake's control plane (path id 0).
pub(super) const PATH: &str = "/run/app.sock";

/// The lifetimes of the rules, as the agent has them.
pub(super) const TEST_TIMING: Timing = Timing { join_timeout: Duration::from_secs(10) };

/// A process, a relative name, a socket file.
type RelativeKey = (u32, Vec<u8>, (u64, u64));

#[derive(Default)]
struct Tables {
    /// `(pid, fd)` -> socket inode; `None`: open, not a socket.
    fds: HashMap<(u32, i32), Option<u32>>,
    /// Unix socket inode -> what the kernel says about it.
    sockets: HashMap<u32, UnixSocket>,
    /// Child -> parent.
    parents: HashMap<u32, u32>,
    dead: HashSet<u32>,
    /// Processes that set up an io_uring.
    io_uring: HashSet<u32>,
    /// Processes registered for the io_uring hand-back signal.
    hand_back: HashSet<u32>,
    /// The `QUIET` map: `(tgid, pattern)` -> until.
    quiet: HashMap<(u32, u32), u64>,
    /// Relative names the fake resolves: `(pid, name, file)` -> the absolute name.
    relative: HashMap<RelativeKey, Vec<u8>>,
    /// Questions asked, by name.
    asked: HashMap<&'static str, usize>,
}

/// The fake kernel. Share it with [`FakeKernel::control`].
#[derive(Default)]
pub(super) struct FakeKernel {
    tables: Mutex<Tables>,
    control: OnceLock<Weak<Control>>,
    /// Claims run on several threads: the lock may be held by another one.
    concurrent: AtomicBool,
}

/// The facts the control plane asks: the shared fake.
struct Shared(Arc<FakeKernel>);

impl FakeKernel {
    /// A control plane for path [`PATH`] (id 0) asking this kernel, with `max` connections and
    /// 4 KiB rings.
    pub(super) fn control(self: &Arc<Self>, max: usize) -> Arc<Control> {
        self.control_watching(&[PATH], max)
    }

    /// As [`FakeKernel::control`], watching `patterns` (ids are positions).
    pub(super) fn control_watching(self: &Arc<Self>, patterns: &[&str], max: usize) -> Arc<Control> {
        let paths: Vec<WatchedPath> = patterns.iter().map(|p| p.parse().unwrap()).collect();
        let control = Control::with_facts(paths, 4096, max, None, Box::new(Shared(Arc::clone(self))), TEST_TIMING);
        assert!(self.control.set(Arc::downgrade(&control)).is_ok(), "one control per fake");
        control
    }

    /// Until when the `QUIET` map quiets process `tgid`'s connects on pattern `path_id`.
    pub(super) fn quiet_until(&self, tgid: u32, path_id: u32) -> Option<u64> {
        self.tables().quiet.get(&(tgid, path_id)).copied()
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap()
    }

    /// Claims will run on several threads at once from now.
    pub(super) fn concurrent(&self) {
        self.concurrent.store(true, Ordering::Relaxed); // Relaxed: read by the test's own threads after spawn
    }

    /// A stream connection on [`PATH`]: client `(pid, fd)` with socket `client` (unnamed),
    /// server `(pid, fd)` with socket `server`, named like the listener. The server end may not
    /// be accepted yet (pass its fd as `None`): then, as in the kernel, the client's peer has no
    /// inode yet ([`FakeKernel::accept`] completes it).
    pub(super) fn connection(&self, client: (u32, i32, u32), server: (u32, Option<i32>, u32)) {
        self.connection_on(PATH, client, server);
    }

    /// As [`FakeKernel::connection`], on the listener named `path`.
    pub(super) fn connection_on(&self, path: &str, client: (u32, i32, u32), server: (u32, Option<i32>, u32)) {
        let mut t = self.tables();
        t.fds.insert((client.0, client.1), Some(client.2));
        let accepted = server.1.is_some();
        if let Some(fd) = server.1 {
            t.fds.insert((server.0, fd), Some(server.2));
        }
        let (stream, connected) = (libc::SOCK_STREAM as u8, crate::sockdiag::ESTABLISHED);
        let peer = accepted.then_some(server.2);
        t.sockets
            .insert(client.2, UnixSocket { kind: stream, state: connected, peer, name: None, file: None, cookie: cookie_of(client.2) });
        t.sockets.insert(
            server.2,
            UnixSocket {
                kind: stream,
                state: connected,
                peer: Some(client.2),
                name: Some(path.as_bytes().to_vec()),
                file: None,
                cookie: cookie_of(server.2),
            },
        );
    }

    /// The server socket `server` stands for socket file `file` (its listener's), and process
    /// `pid` resolves the relative `name` to `absolute` while that file is there.
    pub(super) fn relative(&self, server: u32, file: (u64, u64), pid: u32, name: &str, absolute: &str) {
        let mut t = self.tables();
        if let Some(socket) = t.sockets.get_mut(&server) {
            socket.file = Some(file);
        }
        t.relative.insert((pid, name.as_bytes().to_vec(), file), absolute.as_bytes().to_vec());
    }

    /// Process `pid` accepts the connection whose server socket is `server` as `fd`.
    pub(super) fn accept(&self, pid: u32, fd: i32, server: u32) {
        let mut t = self.tables();
        t.fds.insert((pid, fd), Some(server));
        let client = t.sockets[&server].peer.expect("a connection");
        t.sockets.get_mut(&client).expect("its client").peer = Some(server);
    }

    /// Unix socket `inode` is what `socket` says (e.g. a listener, a datagram socket).
    pub(super) fn socket(&self, inode: u32, socket: UnixSocket) {
        self.tables().sockets.insert(inode, socket);
    }

    /// Process `pid` holds socket `inode` as `fd` (`None`: a fd that is no socket).
    pub(super) fn fd(&self, pid: u32, fd: i32, inode: Option<u32>) {
        self.tables().fds.insert((pid, fd), inode);
    }

    /// Process `pid` closed `fd`.
    pub(super) fn close(&self, pid: u32, fd: i32) {
        self.tables().fds.remove(&(pid, fd));
    }

    /// Process `child` was forked by `parent` (and holds copies of all its fds).
    pub(super) fn fork(&self, parent: u32, child: u32) {
        let mut t = self.tables();
        t.parents.insert(child, parent);
        let copies: Vec<((u32, i32), Option<u32>)> =
            t.fds.iter().filter(|((p, _), _)| *p == parent).map(|(&(_, fd), &i)| ((child, fd), i)).collect();
        t.fds.extend(copies);
    }

    /// Unix socket `inode` no longer exists (its last holder closed it, or died).
    pub(super) fn forget_socket(&self, inode: u32) {
        self.tables().sockets.remove(&inode);
    }

    /// Process `pid` is gone (with its fds).
    pub(super) fn kill(&self, pid: u32) {
        let mut t = self.tables();
        t.dead.insert(pid);
        t.fds.retain(|(p, _), _| *p != pid);
    }

    /// Process `pid` set up an io_uring.
    pub(super) fn io_uring(&self, pid: u32) {
        self.tables().io_uring.insert(pid);
    }

    /// Whether process `pid` was registered for the io_uring hand-back signal.
    pub(super) fn hands_back_on_io_uring(&self, pid: u32) -> bool {
        self.tables().hand_back.contains(&pid)
    }

    /// How often `question` was asked.
    pub(super) fn asked(&self, question: &str) -> usize {
        self.tables().asked.get(question).copied().unwrap_or(0)
    }

    /// Counts the question and checks that nobody asks it under the registry lock.
    fn ask(&self, question: &'static str) -> std::sync::MutexGuard<'_, Tables> {
        if !self.concurrent.load(Ordering::Relaxed) {
            if let Some(control) = self.control.get().and_then(Weak::upgrade) {
                let held = matches!(control.registry.try_lock(), Err(TryLockError::WouldBlock));
                assert!(!held, "kernel asked `{question}` under the registry lock");
            }
        }
        let mut t = self.tables();
        *t.asked.entry(question).or_default() += 1;
        t
    }
}

impl KernelFacts for Shared {
    fn socket_inode(&self, pid: u32, fd: i32) -> io::Result<Option<u32>> {
        let t = self.0.ask("socket_inode");
        t.fds.get(&(pid, fd)).copied().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn unix_socket(&self, inode: u32) -> io::Result<Option<UnixSocket>> {
        Ok(self.0.ask("unix_socket").sockets.get(&inode).cloned())
    }

    fn connected_cookies(&self) -> io::Result<crate::sockdiag::CookieInodes> {
        let t = self.0.ask("connected_cookies");
        Ok(t.sockets.iter().filter(|(_, s)| s.is_stream() && s.is_connected() && s.cookie != 0).map(|(&ino, s)| (s.cookie, ino)).collect())
    }

    fn relatives(&self, pid: u32) -> Vec<u32> {
        let t = self.0.ask("relatives");
        let mut relatives: Vec<u32> = t.parents.get(&pid).copied().into_iter().collect();
        relatives.extend(t.parents.iter().filter(|(_, &p)| p == pid).map(|(&c, _)| c));
        relatives.retain(|r| !t.dead.contains(r));
        relatives
    }

    fn holds_socket(&self, pid: u32, inode: u32) -> bool {
        self.0.ask("holds_socket").fds.iter().any(|(&(p, _), &i)| p == pid && i == Some(inode))
    }

    fn alive(&self, pid: u32) -> bool {
        !self.0.ask("alive").dead.contains(&pid)
    }

    fn comm(&self, pid: u32) -> String {
        drop(self.0.ask("comm"));
        format!("comm{pid}")
    }

    fn uses_io_uring(&self, pid: u32) -> bool {
        self.0.ask("uses_io_uring").io_uring.contains(&pid)
    }

    fn hand_back_on_io_uring(&self, pid: u32) {
        self.0.ask("hand_back_on_io_uring").hand_back.insert(pid);
    }

    fn set_quiet(&self, tgid: u32, path_id: u32, until: u64) {
        let mut t = self.0.ask("set_quiet");
        if until == 0 {
            t.quiet.remove(&(tgid, path_id));
        } else {
            t.quiet.insert((tgid, path_id), until);
        }
    }

    fn resolve_relative(&self, pid: u32, name: &[u8], file: (u64, u64)) -> Option<Vec<u8>> {
        self.0.ask("resolve_relative").relative.get(&(pid, name.to_vec(), file)).cloned()
    }
}

/// The kernel's connect event: `pid` connected `fd` on path 0 (at [`EVENT_NS`]).
pub(super) fn connect_event(pid: u32, fd: i32) -> Event {
    event(EventKind::Connect, pid, fd, -1)
}

/// The cookie the fake gives socket `inode` (one above 2^32: both halves count).
pub(super) fn cookie_of(inode: u32) -> u64 {
    1 << 32 | u64::from(inode)
}

/// The cgroup hook's connect event: `pid` connected the socket whose cookie is `cookie` on
/// path 0 (no fd).
pub(super) fn hook_connect_event(pid: u32, cookie: u64) -> Event {
    let mut event = event(EventKind::Connect, pid, -1, cookie as u32 as i32);
    event.other_pid = (cookie >> 32) as u32;
    event
}

/// The kernel's accept event: `pid` accepted `fd` on path 0.
pub(super) fn accept_event(pid: u32, fd: i32) -> Event {
    event(EventKind::Accept, pid, 3, fd)
}

/// Kernel time of the fake's events (CLOCK_MONOTONIC ns).
pub(super) const EVENT_NS: u64 = 1_000_000_000;

/// A kernel event of `kind` from `pid` (comm `ev<pid>`, time [`EVENT_NS`]) on path 0.
pub(super) fn event(kind: EventKind, pid: u32, fd: i32, new_fd: i32) -> Event {
    let mut comm = [0u8; tssx_common::COMM_LEN];
    let name = format!("ev{pid}");
    comm[..name.len()].copy_from_slice(name.as_bytes());
    Event {
        ts_ns: EVENT_NS,
        kind: kind as u32,
        path_id: 0,
        pid,
        tgid: pid,
        uid: 0,
        fd,
        new_fd,
        other_pid: 0,
        comm,
        addr_len: 0,
        addr: [0; tssx_common::SUN_PATH_LEN],
    }
}

/// A control connection: the agent's end (handed to a claim) and the hook's end (where the
/// reply arrives).
pub(super) fn control_connection() -> (UnixStream, UnixStream) {
    UnixStream::pair().expect("socketpair")
}
