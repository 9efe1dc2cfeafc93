//! Watching held claims for their end: one thread waits on one epoll instance in which every
//! held claim's control connection is registered, and drops a claim whose connection ends (the
//! hook gave the claim up, its socket closed, or its process died).
//!
//! A held claim sits in the registry with its control connection, unanswered, until the other
//! end claims; it must not pin a worker thread meanwhile. Each connection is registered (one
//! `epoll_ctl`) before the claim enters the registry, with a token that names the claim, and
//! `EPOLLONESHOT`: its first event is its last. The kernel removes a registration when the
//! connection is closed, so a claim paired (answered and closed by a worker) leaves nothing
//! behind, and an event that arrives for a claim no longer held is ignored. The hook never
//! writes after its request, so any event (`EPOLLIN` with EOF, `EPOLLRDHUP`, `EPOLLHUP`,
//! `EPOLLERR`) ends the claim.

use std::{
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::net::UnixStream,
    },
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use super::Control;

/// Events a held claim's control connection is watched for (one-shot).
const WATCHED: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32;
/// Events taken per wait.
const BATCH: usize = 64;

/// The epoll instance of the held claims.
pub(super) struct HeldWatch {
    epoll: OwnedFd,
}

impl HeldWatch {
    /// A new epoll instance.
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointer; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        Ok(Self { epoll: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Watches `stream` for its end, under `token`.
    fn add(&self, stream: &UnixStream, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: WATCHED, u64: token };
        // SAFETY: both fds are open (we hold them), `event` is a live epoll_event.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, stream.as_raw_fd(), &mut event) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) for ended connections; their tokens.
    fn wait(&self, timeout_ms: i32) -> io::Result<Vec<u64>> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        // SAFETY: `events` holds BATCH live entries for the kernel to fill.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted { Ok(Vec::new()) } else { Err(err) };
        }
        Ok(events[..n as usize].iter().map(|e| e.u64).collect())
    }
}

impl Control {
    /// Watches a claim's control connection before it may be held (see the module doc). Without
    /// a watch, a held claim still ends when the sweep finds its socket gone, or when the other
    /// end's claim finds its connection closed.
    pub(super) fn watch_held(&self, stream: &UnixStream, token: u64) {
        if let Some(watch) = &self.held_watch {
            if let Err(e) = watch.add(stream, token) {
                tracing::warn!("watching a claim's control connection: {e}");
            }
        }
    }

    /// Waits up to `timeout_ms` (-1: forever) for held claims whose control connection ended,
    /// and drops them; returns how many.
    pub(super) fn watch_held_once(&self, timeout_ms: i32) -> usize {
        let Some(watch) = &self.held_watch else { return 0 };
        let tokens = match watch.wait(timeout_ms) {
            Ok(tokens) => tokens,
            Err(e) => {
                tracing::warn!("waiting for held claims: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                return 0;
            }
        };
        let now = Instant::now();
        let ended: Vec<_> = {
            let mut registry = self.lock();
            tokens.into_iter().filter_map(|token| registry.take_held(token, now)).collect()
        };
        let count = ended.len();
        for held in ended {
            self.unpaired(held, "its claim's control connection closed (the hook gave up, or the socket closed) before the peer claimed");
        }
        count
    }

    /// A held claim ended without its peer's claim: closed, counted, traced at debug (one line
    /// per connection whose peer has no hook, or is short-lived).
    pub(super) fn unpaired(&self, held: super::registry::Held, detail: &str) {
        let super::registry::Held { claim, stream, since, .. } = held;
        drop(stream);
        // Relaxed: a counter.
        self.counters.peer_never_claimed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            pid = claim.end.pid,
            fd = claim.end.fd,
            role = ?claim.role,
            path = self.path_name(claim.path_id),
            held_ms = since.elapsed().as_millis() as u64,
            reason = "peer never claimed",
            detail,
            "not swapped"
        );
    }

    /// Starts the thread that watches the held claims.
    pub(super) fn start_held_watcher(self: &Arc<Self>) -> io::Result<()> {
        let control = Arc::clone(self);
        std::thread::Builder::new()
            .name("tssx-held".into())
            .spawn(move || loop {
                control.watch_held_once(-1);
            })
            .map(drop)
    }
}
