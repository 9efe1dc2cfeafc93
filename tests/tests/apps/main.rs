//! End-to-end with real applications, unmodified: Redis, PostgreSQL, MariaDB and memcached on
//! Unix sockets, nscd (glibc's own client inside libc, a peer that never claims), nginx as a
//! reverse proxy to a second nginx, PHP-FPM behind nginx over FastCGI, dbus-daemon, language
//! runtimes' event loops and Python's multiprocessing. Each test runs the same client session twice, once plain
//! (no hook, an unwatched socket) and once with server and clients under
//! `LD_PRELOAD=libtssx_preload.so` on a path the real agent watches, and requires
//! 1. identical results (command outputs, response bodies and status codes; benchmarks complete
//!    without errors), and
//! 2. the swaps the plain-first design promises, exactly: connections start plain and migrate
//!    in flight once they lived `--claim-after` (1 ms by default) or moved 64 KiB, so a one-shot
//!    `redis-cli` or `pg_isready` may legitimately stay plain, while every connection that
//!    lived long and moved data must be traced `swapped`: each client connection of
//!    redis-benchmark, each PostgreSQL session that lasted half a second, both memcached
//!    clients (with `--claim-after 0`), each keepalive upstream connection of nginx, each
//!    busy kept FastCGI connection to PHP-FPM. nscd's
//!    connections must never be swapped (its client never claims) and never stall.
//!
//! Three heavy users of Unix stream sockets beside them: Xvfb and X clients (Xlib, xcb, fds
//! passed both ways with MIT-SHM), tmux (every client passes its fds to the server) and socat.
//!
//! These servers use epoll and non-blocking sockets, PostgreSQL forks a backend per connection,
//! nginx registers upstream sockets with epoll before it connects: (2) needs the hook to cover
//! those.
//!
//! One module per application (`redis.rs`, `php_fpm.rs`, ...); the helpers they share are
//! here.
//!
//! The Debian packages come from `cargo xtask setup`. The servers run on private sockets in a
//! temporary directory (Redis with `--port 0`, PostgreSQL with `listen_addresses=''`, memcached
//! with `-s`, nginx with a private prefix and a free loopback port, Xvfb on display numbers
//! nothing else uses, `:7371` and `:7373`, with `-nolisten tcp`), nscd and its agent in a
//! private mount namespace with their own `/run/nscd` and `/run/tssx`, so they never touch the
//! default ports, sockets or the machine's name lookups.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use tssx_tests::{
    agent_bin, hook, poll_until, require_root, wait_until, wrk, Agent, HookedAgent, MachineLock, MountNamespace, NginxConfig, NginxProxy,
    Nscd, Process, Rng, TempDir, Upstream, NSCD_SOCKET,
};

/// How long a server may take to get ready, and to exit once signalled.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// A server process in its own process group (PostgreSQL's backends go with it), killed with
/// them when dropped if the test did not stop it.
struct Daemon {
    process: Process,
    name: &'static str,
}

impl Daemon {
    fn spawn(name: &'static str, cmd: Command) -> Self {
        let process = Process::try_spawn_group(cmd).unwrap_or_else(|e| panic!("{e} (cargo xtask setup installs {name})"));
        Self { process, name }
    }

    /// Sends `signal`, waits up to 30 s, and asserts that the server exited cleanly (a crash
    /// under the hook shows here); returns its stderr lines.
    fn stop(mut self, signal: i32) -> Vec<String> {
        let status = self.process.stop(signal, DAEMON_TIMEOUT);
        let status = status
            .unwrap_or_else(|| panic!("{} did not exit within {DAEMON_TIMEOUT:?}; stderr: {}", self.name, self.process.stderr_text()));
        self.process.wait_closed(Duration::from_secs(5));
        assert!(status.success(), "{} exited with {status}; stderr: {}", self.name, self.process.stderr_text());
        self.process.stderr_lines()
    }

    /// Waits until `ready` is true (up to 30 s), failing at once if the server died.
    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) {
        let process = &mut self.process;
        wait_until(DAEMON_TIMEOUT, &format!("{} to get ready", self.name), || {
            process.assert_running();
            ready()
        });
    }
}

/// `cmd`, under the hook if `hooked`.
fn command(program: &str, hooked: bool) -> Command {
    let mut cmd = Command::new(program);
    if hooked {
        cmd.env("LD_PRELOAD", hook());
    } else {
        cmd.env_remove("LD_PRELOAD");
    }
    cmd
}

/// Runs `cmd` (with `stdin` fed in), asserting success; returns stdout.
fn run(cmd: Command, stdin: Option<&[u8]>) -> String {
    run_pid(cmd, stdin).0
}

/// As [`run`], also returning the pid the program ran as (to find its connections in the
/// agent's trace).
fn run_pid(mut cmd: Command, stdin: Option<&[u8]>) -> (String, u32) {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).expect("write stdin");
    }
    let out: Output = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed after {:?}: {}\nstdout: {}\nstderr: {}",
        started.elapsed(),
        out.status,
        &stdout[..stdout.len().min(4000)],
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, pid)
}

/// Runs each client to its end, one after the other (as [`run_pid`]); returns their outputs,
/// concatenated, and their pids.
fn run_each(clients: impl IntoIterator<Item = Command>) -> (String, Vec<u32>) {
    let (mut out, mut pids) = (String::new(), Vec::new());
    for client in clients {
        let (lines, pid) = run_pid(client, None);
        out += &lines;
        pids.push(pid);
    }
    (out, pids)
}

/// The (client pid, server pid) of each `swapped` line on `path` (its message is `swapped
/// CLIENT_PID/comm <-> SERVER_PID/comm`).
fn swapped_pairs(agent: &Agent, path: &str) -> Vec<(u32, u32)> {
    let pid = |label: &str| label.split('/').next().and_then(|p| p.parse().ok());
    agent
        .events_on("swapped", path)
        .iter()
        .filter_map(|e| {
            let (client, server) = e["message"].as_str()?.strip_prefix("swapped ")?.split_once(" <-> ")?;
            Some((pid(client)?, pid(server)?))
        })
        .collect()
}

/// The agent's `not swapped` reasons on `path` (for failure messages).
fn not_swapped_reasons(agent: &Agent, path: &str) -> BTreeMap<String, usize> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for e in agent.events_on("not", path) {
        *reasons.entry(e["reason"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    reasons
}

/// How long the agent may take to trace the swaps of connections that already ran.
const TRACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Asserts that exactly `expected` connections of the client process `client_pid` on `path`
/// were traced `swapped` (waiting up to 10 s for the lines, then 300 ms more for extra ones).
fn assert_client_swapped(agent: &Agent, path: &str, client_pid: u32, expected: usize, what: &str) {
    let of_client = || swapped_pairs(agent, path).iter().filter(|(c, _)| *c == client_pid).count();
    poll_until(TRACE_TIMEOUT, || of_client() >= expected);
    std::thread::sleep(Duration::from_millis(300));
    let connects = agent.events_on("connect", path).iter().filter(|e| e["pid"] == client_pid).count();
    eprintln!("{what} (pid {client_pid}): {connects} connections, {} swapped", of_client());
    assert_eq!(
        of_client(),
        expected,
        "{what} (pid {client_pid}): {expected} connections must be swapped; the agent saw {connects} connects from it and swapped {} \
         (not swapped on {path}: {:?})",
        of_client(),
        not_swapped_reasons(agent, path)
    );
}

/// Asserts two sessions' outputs are identical, showing the first differing line.
fn assert_same(what: &str, plain: &str, tssx: &str) {
    if plain != tssx {
        let line = plain.lines().zip(tssx.lines()).position(|(a, b)| a != b);
        let show = |s: &str| line.and_then(|i| s.lines().nth(i)).unwrap_or("").chars().take(200).collect::<String>();
        panic!(
            "{what}: output differs with tssx ({} vs {} bytes; first difference at line {line:?}: plain {:?}, tssx {:?})",
            plain.len(),
            tssx.len(),
            show(plain),
            show(tssx)
        );
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp dir").to_owned()
}

/// FNV-1a, to name a body in a transcript.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The agent's `closed` line of the connection the client process `client_pid` swapped on
/// `path` (waiting for it up to 10 s).
fn closed_of(agent: &Agent, path: &str, client_pid: u32) -> serde_json::Value {
    let connection = agent
        .events_on("swapped", path)
        .into_iter()
        .find(|e| e["message"].as_str().is_some_and(|m| m.starts_with(&format!("swapped {client_pid}/"))))
        .map(|e| e["connection"].clone())
        .expect("the client's swap");
    poll_until(TRACE_TIMEOUT, || agent.events_on("closed", path).iter().any(|c| c["connection"] == connection));
    agent.events_on("closed", path).into_iter().find(|c| c["connection"] == connection).expect("its closed line")
}

mod dbus;
mod mariadb;
mod memcached;
mod nginx;
mod nscd;
mod php_fpm;
mod postgres;
mod redis;
mod runtimes;
mod socat;
mod tmux;
mod x11;
