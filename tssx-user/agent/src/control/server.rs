//! The control socket: where hooks send their claims and `tssx-agent status` its questions.
//!
//! Trust: the socket is mode 0666, so any local process can connect, and nothing it sends is
//! believed: the caller's pid and uid come from `SO_PEERCRED`, a request is one fixed-size record
//! that is decoded strictly (anything malformed is answered `BadRequest` and traced as a refused
//! claim), and a claim is checked against the kernel by [`super::claim`]. A caller can only cost a
//! bounded number of threads for a bounded time: at most [`MAX_CONTROL_CONNECTIONS`] are served
//! at once (more are closed at once, so their hooks stay plain), and one that does not send a
//! complete request within [`REQUEST_TIMEOUT`] is dropped.
//!
//! Control connections are served by a pool of persistent worker threads blocked in `accept`
//! (no thread is created per claim; the pool grows when all are busy, see `WorkerPool`), with
//! blocking I/O and timeouts: a claim is decided at once. A claim held for the other end's
//! leaves its worker at once too: its connection goes to the registry, watched for its end by
//! one thread ([`super::watch`]), and is answered by the worker that serves the other end's
//! claim. Held claims are not "being served" (they are counted apart, and bounded).

use std::{
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
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::Context as _;
use tssx_common::{
    control::{PlainReason, Reply, Request, RequestKind, REQUEST_SIZE},
    segment::SegmentState,
};
use tssx_shm::fdpass;

use super::{
    claim::{Claimant, Decision, Paired},
    Control,
};

/// A control connection that has not sent a complete request after this long is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Writing a reply may take at most this long (a caller that does not read is dropped).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Control connections served at once; more are closed at once (their hooks stay plain).
pub const MAX_CONTROL_CONNECTIONS: usize = 256;
/// Workers kept blocked in `accept` on the control socket even when idle.
const CORE_WORKERS: usize = 2;

/// How busy the control socket is (for `status --stats`).
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Control connections being served (Relaxed: a counter, no data hangs on it).
    pub(super) serving: AtomicUsize,
    /// Control connections refused because too many were being served (Relaxed: a counter).
    pub(super) refused: AtomicU64,
}

/// Creates the control socket in `state_dir` and serves it on a pool of worker threads (see
/// `WorkerPool`); also starts the spare-segment maker.
///
/// The socket is mode 0666: `connect()` on a Unix socket needs write permission on its file,
/// and hooks in processes of every uid must reach the agent (a server running as `nobody`
/// swaps with a root client). That is safe because the socket grants nothing by itself: every
/// claim is checked against the kernel's events for the caller's own pid (`SO_PEERCRED`), and a
/// segment goes only to the two ends of one connection. The directory stays 0755 (root-owned),
/// so nobody else can replace the socket or the published paths.
pub fn serve(control: Arc<Control>, state_dir: &Path) -> anyhow::Result<()> {
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
    control.start_spare_maker().context("starting the spare-segment maker")?;
    control.start_held_watcher().context("starting the held-claims watcher")?;
    let pool = Arc::new(WorkerPool { listener, control, workers: AtomicUsize::new(0), idle: AtomicUsize::new(0) });
    for _ in 0..CORE_WORKERS {
        pool.spawn_worker().context("starting the control workers")?;
    }
    Ok(())
}

/// The control socket's workers: threads that each block in `accept` on the listener (the
/// kernel wakes one of them per connection) and serve the connection they got, so a claim costs
/// no thread creation. When a worker takes a connection and none is left waiting in `accept`, it
/// starts one more first, up to [`MAX_CONTROL_CONNECTIONS`] serving plus one accepting: the
/// pool grows with the load and a connection beyond the cap is still accepted at once, and
/// closed unserved.
struct WorkerPool {
    listener: UnixListener,
    control: Arc<Control>,
    /// Live workers (Relaxed: counters; they guard no data).
    workers: AtomicUsize,
    /// Workers waiting in `accept` (Relaxed, as above).
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
        let load = &self.control.load;
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
            if load.serving.fetch_add(1, Ordering::Relaxed) >= MAX_CONTROL_CONNECTIONS {
                load.serving.fetch_sub(1, Ordering::Relaxed);
                load.refused.fetch_add(1, Ordering::Relaxed);
                self.idle.fetch_add(1, Ordering::Relaxed);
                continue; // dropped: the caller sees EOF and stays plain
            }
            // Keep someone in accept: the next claim must not wait for this one to finish.
            if was_idle == 1 && self.workers.load(Ordering::Relaxed) <= MAX_CONTROL_CONNECTIONS {
                let _ = self.spawn_worker(); // on failure: later connections wait in the backlog
            }
            handle(&self.control, stream);
            load.serving.fetch_sub(1, Ordering::Relaxed);
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
fn handle(control: &Control, mut stream: UnixStream) {
    let Some((pid, uid)) = peer_cred(&stream) else { return };
    let mut buf = [0u8; REQUEST_SIZE];
    if stream.read_exact(&mut buf).is_err() {
        tracing::debug!(pid, uid, "control connection closed without a complete request");
        return;
    }
    let request = match Request::decode(&buf) {
        Ok(request) => request,
        Err(e) => {
            // Relaxed: a counter.
            control.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pid, uid, reason = PlainReason::BadRequest.describe(), error = %e, "claim refused");
            let _ = stream.write_all(&Reply::plain(PlainReason::BadRequest).encode());
            return;
        }
    };
    match request.request_kind() {
        Some(RequestKind::Status) => {
            for conn in control.status() {
                let Ok(line) = serde_json::to_string(&conn) else { continue };
                if writeln!(stream, "{line}").is_err() {
                    return;
                }
            }
        }
        Some(RequestKind::Stats) => {
            let mut stats = control.stats();
            stats.control_connections = stats.control_connections.saturating_sub(1); // not this one
            if let Ok(line) = serde_json::to_string(&stats) {
                let _ = writeln!(stream, "{line}");
            }
        }
        Some(RequestKind::Claim) => {
            let role = request.request_role().expect("validated by decode");
            let who = Claimant { pid, uid, role, fd: request.fd, flags: request.flags };
            let decision = control.claim(who, stream);
            control.deliver(decision);
        }
        None => {}
    }
}

impl Control {
    /// Sends what a claim's decision says (see [`Decision`]), then closes the control
    /// connections it answered: the reply, with the segment's memfd on both connections of a
    /// pair (the held claim's first), then the `paired` trace line. A pair whose held claim's
    /// connection closed meanwhile (the hook gave up) is given up (state `Plain`, freed by the
    /// next pass) and the new claim answered plain; one whose new claim's connection closed is
    /// given up too (the held end sees the state and stays on its socket).
    pub(super) fn deliver(&self, decision: Decision) {
        match decision {
            Decision::Held => {}
            Decision::Answer { streams, reply } => {
                for stream in streams {
                    let _ = fdpass::send_with_fd(stream.as_raw_fd(), &reply.encode(), None);
                }
            }
            Decision::Paired(Paired { id, pattern, path, client, server, segment, held, new }) => {
                let swap = Reply::swap(id).encode();
                let sent = fdpass::send_with_fd(held.as_raw_fd(), &swap, segment.fd()).and_then(|()| {
                    drop(held);
                    fdpass::send_with_fd(new.as_raw_fd(), &swap, segment.fd())
                });
                if let Err(e) = sent {
                    tracing::debug!(connection = id, path, "a claim's control connection closed before its answer: {e}");
                    let _ = segment.transition(SegmentState::Pending, SegmentState::Plain);
                    let _ = fdpass::send_with_fd(new.as_raw_fd(), &Reply::plain(PlainReason::PeerHasNoHook).encode(), None);
                    return;
                }
                drop(new);
                tracing::info!(connection = id, path, pattern, client, server, "paired {client} <-> {server}");
            }
        }
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
