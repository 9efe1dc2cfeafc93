//! A kernel made of tables, for the claim rules' unit tests: sockets, peers, accept queues,
//! processes, set by the test. Every question asserts that the registry lock is free (no I/O
//! under the lock), unless the test runs claims on several threads at once.

use std::{
    collections::{HashMap, HashSet},
    io,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock, TryLockError, Weak,
    },
    time::Duration,
};

use tssx_common::event::{Event, EventKind};

use super::{Control, KernelFacts, Timing};
use crate::paths::WatchedPath;

/// Waits short enough for tests, long enough for a claim on another thread to arrive.
pub(super) const TEST_TIMING: Timing = Timing {
    event_wait: Duration::from_millis(300),
    peer_wait: Duration::from_millis(300),
    event_ttl: Duration::from_secs(30),
    pending_ttl: Duration::from_secs(2),
    hook_check_ttl: Duration::from_secs(2),
};

#[derive(Default)]
struct Tables {
    /// `(pid, fd)` -> socket inode; `None`: open, not a socket.
    fds: HashMap<(u32, i32), Option<u32>>,
    /// Socket inode -> peer inode.
    peers: HashMap<u32, u32>,
    /// Client inodes in some accept queue.
    queued: HashSet<u32>,
    hooked: HashSet<u32>,
    dead: HashSet<u32>,
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
    /// A control plane for path `/run/app.sock` (id 0) asking this kernel, with `max`
    /// connections and 4 KiB rings.
    pub(super) fn control(self: &Arc<Self>, max: usize) -> Arc<Control> {
        let paths: Vec<WatchedPath> = vec!["/run/app.sock".parse().unwrap()];
        let control = Control::with_facts(paths, 4096, max, None, Box::new(Shared(Arc::clone(self))), TEST_TIMING);
        assert!(self.control.set(Arc::downgrade(&control)).is_ok(), "one control per fake");
        control
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap()
    }

    /// Claims will run on several threads at once from now.
    pub(super) fn concurrent(&self) {
        self.concurrent.store(true, Ordering::Relaxed); // Relaxed: read by the test's own threads after spawn
    }

    /// A connection: client `(pid, fd)` with socket `client`, server `(pid, fd)` with socket
    /// `server` (the server end may not be accepted yet: then pass its fd as `None`).
    pub(super) fn connection(&self, client: (u32, i32, u32), server: (u32, Option<i32>, u32)) {
        let mut t = self.tables();
        t.fds.insert((client.0, client.1), Some(client.2));
        if let Some(fd) = server.1 {
            t.fds.insert((server.0, fd), Some(server.2));
        }
        t.peers.insert(client.2, server.2);
        t.peers.insert(server.2, client.2);
    }

    /// Process `pid` holds socket `inode` as `fd` (`None`: a fd that is no socket).
    pub(super) fn fd(&self, pid: u32, fd: i32, inode: Option<u32>) {
        self.tables().fds.insert((pid, fd), inode);
    }

    /// Process `pid` closed `fd`.
    pub(super) fn close(&self, pid: u32, fd: i32) {
        self.tables().fds.remove(&(pid, fd));
    }

    /// Process `pid` carries the hook.
    pub(super) fn hooked(&self, pid: u32) {
        self.tables().hooked.insert(pid);
    }

    /// Process `pid` is gone.
    pub(super) fn kill(&self, pid: u32) {
        self.tables().dead.insert(pid);
    }

    /// The client socket `inode` waits in an accept queue (`true`) or was accepted.
    pub(super) fn queued(&self, inode: u32, queued: bool) {
        let mut t = self.tables();
        if queued {
            t.queued.insert(inode);
        } else {
            t.queued.remove(&inode);
        }
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
        if t.dead.contains(&pid) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        t.fds.get(&(pid, fd)).copied().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn unix_peer(&self, inode: u32) -> io::Result<Option<u32>> {
        Ok(self.0.ask("unix_peer").peers.get(&inode).copied())
    }

    fn unaccepted_clients(&self) -> io::Result<HashSet<u32>> {
        Ok(self.0.ask("unaccepted_clients").queued.clone())
    }

    fn carries_hook(&self, pid: u32) -> bool {
        self.0.ask("carries_hook").hooked.contains(&pid)
    }

    fn alive(&self, pid: u32) -> bool {
        !self.0.ask("alive").dead.contains(&pid)
    }

    fn comm(&self, pid: u32) -> String {
        drop(self.0.ask("comm"));
        format!("comm{pid}")
    }
}

/// The kernel's connect event: `pid` connected `fd` on path 0.
pub(super) fn connect_event(pid: u32, fd: i32) -> Event {
    event(EventKind::Connect, pid, fd, -1)
}

/// The kernel's accept event: `pid` accepted `fd` on path 0.
pub(super) fn accept_event(pid: u32, fd: i32) -> Event {
    event(EventKind::Accept, pid, 3, fd)
}

fn event(kind: EventKind, pid: u32, fd: i32, new_fd: i32) -> Event {
    let mut comm = [0u8; tssx_common::COMM_LEN];
    let name = format!("ev{pid}");
    comm[..name.len()].copy_from_slice(name.as_bytes());
    Event { ts_ns: 0, kind: kind as u32, path_id: 0, pid, tgid: pid, uid: 0, fd, new_fd, other_pid: 0, comm }
}
