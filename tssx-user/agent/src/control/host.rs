//! [`KernelFacts`] answered by the running kernel: `/proc` for processes and their fds,
//! `sock_diag` ([`crate::sockdiag`]) for Unix sockets.
//!
//! The `/proc` questions are one `readlink`, `stat` or small read each, so they are written
//! here directly rather than through the `procfs` crate: it would parse whole files to answer
//! the same one-line questions, and add three crates (`procfs`, `procfs-core`, `hex`; more with
//! its default `chrono` and `flate2` features) to a root daemon for it.

use std::{
    collections::HashMap,
    io,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::facts::{KernelFacts, UnixSocket};
use crate::sockdiag;

/// The running kernel, as the agent sees it (needs root for other users' processes).
#[derive(Default)]
pub struct Host {
    /// The eBPF programs' `IO_URING_USERS` map; `None` without the eBPF programs (tests).
    io_uring_users: Option<aya::maps::HashMap<aya::maps::MapData, u32, u32>>,
    /// The eBPF programs' `HANDBACK_ON_IO_URING` map; `None` without them.
    handback: Option<Mutex<aya::maps::HashMap<aya::maps::MapData, u32, u32>>>,
    /// The eBPF programs' `QUIET` map; `None` without them.
    quiet: Option<Mutex<aya::maps::HashMap<aya::maps::MapData, u64, u64>>>,
    /// Connected sockets from the last look at all of them (see [`ConnectedSockets`]).
    connected: Mutex<ConnectedSockets>,
}

impl Host {
    /// The running kernel, with the eBPF programs' maps (`None` without the programs: tests).
    pub fn new(
        io_uring_users: Option<aya::maps::HashMap<aya::maps::MapData, u32, u32>>,
        handback: Option<aya::maps::HashMap<aya::maps::MapData, u32, u32>>,
        quiet: Option<aya::maps::HashMap<aya::maps::MapData, u64, u64>>,
    ) -> Self {
        Self { io_uring_users, handback: handback.map(Mutex::new), quiet: quiet.map(Mutex::new), connected: Mutex::default() }
    }
}

/// The kernel answers a `sock_diag` question about one Unix socket by walking every Unix socket
/// of the host (`unix_lookup_by_ino`): with 20,000 sockets open, a claim's two questions cost
/// the agent about a millisecond of CPU, and a burst of claims (10,000 connections turning into
/// conversations at once) took it tens of seconds, 88% of it in that walk. In a burst, one dump
/// of every connected socket (one walk) answers the claims that follow: a connected stream
/// socket's type, peer and name never change, so an entry stays true as long as the socket
/// lives, and a claim's own socket is known to live (its claimant holds it). Sockets that were
/// not connected at the dump, or are new since, are asked about one by one.
#[derive(Default)]
pub struct ConnectedSockets {
    /// Connected stream sockets with a named peer, by inode, as of `dumped`.
    known: HashMap<u32, UnixSocket>,
    /// When the last dump was taken.
    dumped: Option<Instant>,
    /// The dumps' receive buffer, kept (as `known`'s table is) so that a storm of dumps does
    /// not allocate and free megabytes over and over across the claim workers' threads.
    buf: Vec<u8>,
    /// Questions that missed `known` since `window`.
    misses: u32,
    window: Option<Instant>,
}

/// Misses within [`BURST_WINDOW`] from which a dump is worth it.
const BURST_MISSES: u32 = 16;
const BURST_WINDOW: Duration = Duration::from_millis(20);
/// A dump is not taken again sooner than this...
const DUMP_EVERY: Duration = Duration::from_millis(20);
/// ... and is forgotten this long after it was taken.
const KEEP_DUMP: Duration = Duration::from_secs(2);

impl ConnectedSockets {
    /// Whether `socket` may be kept: a connected stream socket whose peer has an inode (a client
    /// whose server has not accepted yet gets one later).
    fn keeps(socket: &UnixSocket) -> bool {
        socket.is_stream() && socket.is_connected() && socket.peer.is_some()
    }

    /// Counts a miss; true if misses come fast enough, and the last dump is old enough, for a
    /// new dump.
    fn dump_due(&mut self, now: Instant) -> bool {
        match self.window {
            Some(start) if now.duration_since(start) < BURST_WINDOW => self.misses += 1,
            _ => (self.window, self.misses) = (Some(now), 1),
        }
        self.misses >= BURST_MISSES && self.dumped.is_none_or(|d| now.duration_since(d) >= DUMP_EVERY)
    }
}

impl KernelFacts for Host {
    fn socket_inode(&self, pid: u32, fd: i32) -> io::Result<Option<u32>> {
        socket_inode(pid, fd)
    }

    fn connected_cookies(&self) -> io::Result<crate::sockdiag::CookieInodes> {
        sockdiag::connected_stream_cookies()
    }

    fn unix_socket(&self, inode: u32) -> io::Result<Option<UnixSocket>> {
        sockdiag::unix_socket(inode)
    }

    fn connected_unix_socket(&self, inode: u32) -> io::Result<Option<UnixSocket>> {
        let mut cache = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if cache.dumped.is_some_and(|d| now.duration_since(d) > KEEP_DUMP) {
            // The burst is over: its sockets are not kept (most are closed by now).
            cache.known = HashMap::new();
            cache.buf = Vec::new();
            cache.dumped = None;
        }
        if let Some(known) = cache.known.get(&inode) {
            return Ok(Some(known.clone()));
        }
        if cache.dump_due(now) {
            // Taken under the lock: the other claim workers would each walk the sockets anyway.
            let ConnectedSockets { known, buf, .. } = &mut *cache;
            known.clear();
            let dumped = sockdiag::for_each_connected_unix_socket(buf, |ino, socket| {
                if ConnectedSockets::keeps(&socket) {
                    known.insert(ino, socket);
                }
            });
            if dumped.is_ok() {
                cache.dumped = Some(Instant::now());
                cache.misses = 0;
                if let Some(known) = cache.known.get(&inode) {
                    return Ok(Some(known.clone()));
                }
            }
        }
        drop(cache);
        sockdiag::unix_socket(inode)
    }

    fn relatives(&self, pid: u32) -> Vec<u32> {
        let mut relatives: Vec<u32> = parent_of(pid).filter(|&p| p != 0).into_iter().collect();
        // Every descendant (a child that forked again: `sh -c` running a command), breadth
        // first, at most MAX_DESCENDANTS of them.
        let mut next = 0;
        let mut descendants = children_of(pid);
        while next < descendants.len() && descendants.len() < MAX_DESCENDANTS {
            let more = children_of(descendants[next]);
            descendants.extend(more.into_iter().filter(|c| *c != pid));
            next += 1;
        }
        descendants.truncate(MAX_DESCENDANTS);
        relatives.extend(descendants);
        relatives.sort_unstable();
        relatives.dedup();
        relatives.retain(|&r| r != pid);
        relatives
    }

    fn holds_socket(&self, pid: u32, inode: u32) -> bool {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|link| parse_socket_link(&link.to_string_lossy()) == Some(inode)))
    }

    fn alive(&self, pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    fn comm(&self, pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end_matches('\n').to_owned()).unwrap_or_default()
    }

    fn uses_io_uring(&self, pid: u32) -> bool {
        self.io_uring_users.as_ref().is_some_and(|users| users.get(&pid, 0).is_ok())
    }

    fn hand_back_on_io_uring(&self, pid: u32) {
        if let Some(map) = &self.handback {
            let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = map.insert(pid, tssx_common::HANDBACK_SIGNAL, 0) {
                tracing::warn!(pid, "HANDBACK_ON_IO_URING: {e}: an io_uring this process sets up will not hand its connections back");
            }
        }
    }

    fn set_quiet(&self, tgid: u32, path_id: u32, until: u64) {
        let Some(map) = &self.quiet else { return };
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        let key = tssx_common::event::quiet_key(tgid, path_id);
        // A failure costs only the event records the entry would have saved (or, for a
        // removal, the entry lasts until its time runs out): at debug level.
        let result = if until == 0 { map.remove(&key) } else { map.insert(key, until, 0) };
        if let Err(e) = result {
            if until != 0 || !matches!(&e, aya::maps::MapError::KeyNotFound) {
                tracing::debug!(pid = tgid, path_id, "QUIET: {e}");
            }
        }
    }

    fn resolve_relative(&self, pid: u32, name: &[u8], file: (u64, u64)) -> Option<Vec<u8>> {
        let path = resolve_in_cwd(pid, name)?;
        (file_id(pid, &path) == Some(file)).then_some(path)
    }
}

/// Whether thread `tid` of process `pid` holds signal `sig` blocked and pending now (`SigBlk`,
/// `SigPnd` and `ShdPnd` of its `/proc` status): it will not run the handler until it unblocks
/// the signal. Blocked alone is no sign of that: the signal is blocked while its handler runs.
/// `None` if that cannot be read (the thread is gone).
pub fn holds_signal_blocked(pid: u32, tid: u32, sig: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let mask = |field: &str| {
        let value = status.lines().find_map(|l| l.strip_prefix(field))?;
        u64::from_str_radix(value.trim(), 16).ok()
    };
    let bit = if (1..=64).contains(&sig) { 1u64 << (sig - 1) } else { return Some(false) };
    let pending = (mask("SigPnd:")? | mask("ShdPnd:")?) & bit != 0;
    Some(mask("SigBlk:")? & bit != 0 && pending)
}

/// `name` (relative) resolved against the working directory of process `pid` now
/// (`/proc/PID/cwd`), lexically ([`tssx_common::pattern::resolve_relative`]).
pub fn resolve_in_cwd(pid: u32, name: &[u8]) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt as _;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let mut out = [0u8; tssx_common::SUN_PATH_LEN];
    let len = tssx_common::pattern::resolve_relative(cwd.as_os_str().as_bytes(), name, &mut out)?;
    Some(out[..len].to_vec())
}

/// `(device, inode)` of the file at absolute `path` as process `pid` sees it (through
/// `/proc/PID/root`, so a process in a chroot or another mount namespace is looked at in its
/// own tree).
pub fn file_id(pid: u32, path: &[u8]) -> Option<(u64, u64)> {
    use std::os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _};
    let mut full = format!("/proc/{pid}/root").into_bytes();
    full.extend_from_slice(path);
    let meta = std::fs::symlink_metadata(std::ffi::OsStr::from_bytes(&full)).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The socket inode behind `fd` of process `pid` (`/proc/PID/fd/FD`), or `None` if that fd is
/// not a socket.
pub fn socket_inode(pid: u32, fd: i32) -> io::Result<Option<u32>> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))?;
    Ok(parse_socket_link(&link.to_string_lossy()))
}

/// Parses `socket:[12345]`.
pub fn parse_socket_link(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The parent of `pid` (`/proc/PID/stat`, field 4).
/// How many descendants of a forked claimant [`KernelFacts::relatives`] looks at.
const MAX_DESCENDANTS: usize = 256;

fn parent_of(pid: u32) -> Option<u32> {
    parse_ppid(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The ppid in the text of a `/proc/PID/stat` file: the second field after the command name,
/// which is in parentheses and may itself hold spaces and parentheses.
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// The children of `pid`: from `/proc/PID/task/*/children` where the kernel has them
/// (`CONFIG_PROC_CHILDREN`), else by reading every process's parent in `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut children = Vec::new();
        let mut listed = false;
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                listed = true;
                children.extend(text.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
        if listed {
            return children;
        }
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&other| other != pid && parent_of(other) == Some(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsRawFd as _, unix::net::UnixStream};

    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(parse_socket_link("socket:[35947]"), Some(35947));
        assert_eq!(parse_socket_link("pipe:[1]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_socket_link("socket:[]"), None);
    }

    /// A signal blocked alone (as while its handler runs) is not held; blocked and pending is.
    #[test]
    fn a_signal_is_held_only_when_blocked_and_pending() {
        // Its own thread: the test harness's threads keep their masks.
        std::thread::spawn(|| {
            let sig = libc::SIGRTMIN() + 5;
            // SAFETY: plain data, filled by the calls below.
            let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: a live sigset_t; this thread's own mask.
            unsafe {
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()), 0);
            }
            // SAFETY: no arguments.
            let tid = unsafe { libc::gettid() } as u32;
            let pid = std::process::id();
            assert_eq!(holds_signal_blocked(pid, tid, sig as u32), Some(false), "blocked, not pending");
            // SAFETY: a signal to this very thread, which blocks it.
            assert_eq!(unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) }, 0);
            assert_eq!(holds_signal_blocked(pid, tid, sig as u32), Some(true), "blocked and pending");
            let timeout = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: takes the pending signal; live arguments.
            assert_eq!(unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) }, sig);
            assert_eq!(holds_signal_blocked(pid, tid, sig as u32), Some(false));
        })
        .join()
        .unwrap();
    }

    /// A relative name resolves against the process's working directory only while that
    /// names the very socket file.
    #[test]
    fn relative_names_resolve_only_to_the_socket_file() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("tssx-host-rel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let file = (meta.dev(), meta.ino());
        let pid = std::process::id();
        let cwd = std::env::current_dir().unwrap();
        let rel = path.strip_prefix(&cwd).ok().map(|p| p.as_os_str().as_encoded_bytes().to_vec());
        let host = Host::default();
        if let Some(rel) = rel {
            assert_eq!(host.resolve_relative(pid, &rel, file).as_deref(), Some(path.as_os_str().as_encoded_bytes()));
        }
        let up = format!("../{}", cwd.file_name().unwrap().to_str().unwrap());
        let abs_of_up = resolve_in_cwd(pid, up.as_bytes()).unwrap();
        assert_eq!(abs_of_up, cwd.as_os_str().as_encoded_bytes());
        assert_eq!(host.resolve_relative(pid, b"no-such.sock", file), None);
        assert_eq!(host.resolve_relative(pid, &abs_of_up, file), None, "another file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_the_parent_after_an_odd_command_name() {
        assert_eq!(parse_ppid("812 (postgres) S 811 812 812 0 -1"), Some(811));
        assert_eq!(parse_ppid("9 (a) b (c) R 1 9 9"), Some(1), "the last ')' ends the name");
        assert_eq!(parse_ppid("9 (x"), None);
    }

    /// A burst of questions about connected sockets is answered from one dump, with the same
    /// answers as one question each; a socket that is not connected is asked about alone.
    #[test]
    fn a_burst_of_questions_about_connected_sockets_is_answered_from_one_dump() {
        let host = Host::default();
        let pid = std::process::id();
        let pairs: Vec<_> = (0..2 * BURST_MISSES).map(|_| UnixStream::pair().unwrap()).collect();
        let inodes: Vec<u32> =
            pairs.iter().flat_map(|(a, b)| [a, b]).map(|s| host.socket_inode(pid, s.as_raw_fd()).unwrap().unwrap()).collect();
        for &ino in &inodes {
            assert_eq!(host.connected_unix_socket(ino).unwrap(), host.unix_socket(ino).unwrap(), "socket {ino}");
        }
        let cache = host.connected.lock().unwrap();
        assert!(cache.dumped.is_some(), "a burst of misses took a dump");
        assert!(inodes.iter().filter(|i| cache.known.contains_key(i)).count() >= inodes.len() - BURST_MISSES as usize);
        drop(cache);
        // A listener is not connected: never kept, asked about alone.
        let path = std::env::temp_dir().join(format!("tssx-host-burst-{pid}"));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let il = host.socket_inode(pid, listener.as_raw_fd()).unwrap().unwrap();
        assert!(host.connected_unix_socket(il).unwrap().is_some_and(|s| !s.is_connected()));
        assert!(!host.connected.lock().unwrap().known.contains_key(&il));
        let _ = std::fs::remove_file(&path);
    }

    /// The answers for this very process: its own sockets, files, command name, liveness, and a
    /// child that holds one of its sockets.
    #[test]
    fn answers_for_this_process() {
        let host = Host::default();
        assert!(!host.uses_io_uring(std::process::id()), "no map: nobody");
        let pid = std::process::id();
        let (a, b) = UnixStream::pair().unwrap();
        let ia = host.socket_inode(pid, a.as_raw_fd()).unwrap().unwrap();
        let ib = host.socket_inode(pid, b.as_raw_fd()).unwrap().unwrap();
        assert_ne!(ia, ib);
        assert_eq!(host.unix_socket(ia).unwrap().and_then(|s| s.peer), Some(ib));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(host.socket_inode(pid, file.as_raw_fd()).unwrap(), None);
        assert!(host.socket_inode(pid, 1 << 20).is_err(), "a fd that is not open");
        assert!(host.alive(pid));
        assert!(!host.alive(u32::MAX - 1));
        let comm = host.comm(pid);
        assert!(!comm.is_empty() && !comm.ends_with('\n'), "{comm:?}");
        assert_eq!(host.comm(u32::MAX - 1), "");
        assert!(host.holds_socket(pid, ia) && host.holds_socket(pid, ib));
        assert!(!host.holds_socket(pid, u32::MAX - 3));
        // A child inherits the socket: it is a relative that holds it; this process's parent is
        // a relative too.
        let mut child = std::process::Command::new("sleep").arg("10").spawn().unwrap();
        let relatives = host.relatives(pid);
        assert!(relatives.contains(&child.id()), "{relatives:?}");
        assert!(relatives.contains(&parent_of(pid).unwrap()), "{relatives:?}");
        assert!(!relatives.contains(&pid));
        assert!(!host.holds_socket(child.id(), ia), "sleep's fds are closed on exec: it holds no socket of ours");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
