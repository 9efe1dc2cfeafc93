//! Harness for the end-to-end tests: runs the real `tssx-agent` (real eBPF programs in the
//! running kernel) and real processes, and collects the agent's JSON trace lines.
//!
//! The tests need root. `cargo xtask test` builds the agent first and runs them.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long the agent may take to load its programs.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Panics with a clear message unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the end-to-end tests load eBPF programs: run them as root (cargo xtask test)");
}

/// `target/<profile>/` of the running test binary.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary>
    exe.parent().and_then(Path::parent).expect("target dir").to_owned()
}

/// Path of the `tssx-agent` binary built next to the tests.
pub fn agent_bin() -> PathBuf {
    let bin = target_dir().join("tssx-agent");
    assert!(bin.exists(), "{} is missing: build it first (`cargo build -p tssx-agent`; `cargo xtask test` does)", bin.display());
    bin
}

/// A fresh, empty directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tssx-e2e-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// The socket address a test program uses for `path` (`@name` = abstract name).
pub fn socket_address(path: &str) -> std::os::unix::net::SocketAddr {
    use std::os::{linux::net::SocketAddrExt as _, unix::net::SocketAddr};
    match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name"),
        None => SocketAddr::from_pathname(path).expect("socket path"),
    }
}

/// A running agent whose JSON trace lines are collected.
pub struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    /// Its state directory.
    pub state_dir: PathBuf,
}

impl Agent {
    /// Starts `tssx-agent --paths <paths> --log-format json` and waits for its ready line.
    pub fn start(paths: &[&str], state_dir: &Path) -> Self {
        Self::start_with(paths, state_dir, &[])
    }

    /// As [`Agent::start`], with extra agent arguments (e.g. `--max-connections 2`).
    pub fn start_with(paths: &[&str], state_dir: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(agent_bin())
            .arg("--paths")
            .arg(paths.join(","))
            .args(["--log-format", "json", "--state-dir"])
            .arg(state_dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tssx-agent");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("agent printed a non-JSON line ({e}): {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        let mut agent = Self { child, lines, state_dir: state_dir.to_owned() };
        let deadline = Instant::now() + READY_TIMEOUT;
        while agent.events("ready").is_empty() {
            assert!(Instant::now() < deadline, "agent not ready after {READY_TIMEOUT:?}");
            if let Some(status) = agent.child.try_wait().expect("try_wait") {
                panic!("agent exited before it was ready: {status}");
            }
            thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    /// Trace lines whose message's first word is `kind` (`connect`, `accept`, `ready`, ...).
    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.split([':', ' ']).next() == Some(kind)))
            .cloned()
            .collect()
    }

    /// Trace lines of `kind` on `path`.
    pub fn events_on(&self, kind: &str, path: &str) -> Vec<Value> {
        self.events(kind).into_iter().filter(|v| v["path"] == path).collect()
    }

    /// Waits until at least `count` lines of `kind` on `path` arrived (or `timeout`), then a
    /// little longer so that extra, unexpected lines are seen too; returns them all.
    pub fn wait_for(&self, kind: &str, path: &str, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        while self.events_on(kind, path).len() < count && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(300));
        self.events_on(kind, path)
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the agent with SIGKILL (nothing is cleaned up) and reaps it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL the agent");
        self.child.wait().expect("reap the agent");
    }

    /// The agent's resource counts (`tssx-agent status --stats`, one JSON object).
    pub fn stats(&self) -> Value {
        self.try_stats().unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Agent::stats`], or why not (e.g. the agent is busy and dropped the request).
    pub fn try_stats(&self) -> Result<Value, String> {
        let out = Command::new(agent_bin())
            .args(["status", "--stats", "--state-dir"])
            .arg(&self.state_dir)
            .output()
            .expect("run tssx-agent status");
        if !out.status.success() {
            return Err(format!("status --stats failed: {out:?}"));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("status --stats printed non-JSON ({e}): {out:?}"))
    }

    /// What the agent process holds, counted from outside through `/proc`.
    pub fn resources(&self) -> Resources {
        Resources::of(self.pid())
    }

    fn terminate(&mut self) -> ExitStatus {
        // SAFETY: signals our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent did not exit within 20 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process's descriptors and shared-memory mappings, counted through `/proc/PID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    /// Open file descriptors.
    pub fds: usize,
    /// Descriptors that are memfds (`/memfd:` links): segments.
    pub memfd_fds: usize,
    /// Mappings of memfds in `/proc/PID/maps`.
    pub memfd_maps: usize,
    /// Resident set size in KiB (`VmRSS`).
    pub rss_kib: u64,
}

impl Resources {
    /// Counts them for `pid` now.
    pub fn of(pid: u32) -> Self {
        let mut fds = 0;
        let mut memfd_fds = 0;
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd").flatten() {
            fds += 1;
            if std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:")) {
                memfd_fds += 1;
            }
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read /proc/PID/maps");
        let memfd_maps = maps.lines().filter(|l| l.contains("/memfd:")).count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
        let rss_kib =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        Self { fds, memfd_fds, memfd_maps, rss_kib }
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock the test programs print their times in).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into a live local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Parses `key=value` words of a test program's output line (`accept pid=12 fd=5`).
pub fn field(line: &str, key: &str) -> Option<i64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// Output lines of a test program starting with `word`.
pub fn lines_of<'a>(output: &'a str, word: &str) -> Vec<&'a str> {
    output.lines().filter(|l| l.split_whitespace().next() == Some(word)).collect()
}

/// Runs a test program from this package to completion and checks it succeeded.
pub fn run_ok(mut cmd: Command) -> Output {
    let out = cmd.output().expect("spawn test program");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A started test server whose `ready` line has been read.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// Lines printed after `ready`, filled by a reader thread.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `bin PATH ACCEPTS [PREFORK]` and waits for its `ready` line.
    pub fn start(bin: &str, path: &str, accepts: usize, prefork: usize) -> Self {
        let mut child = Command::new(bin)
            .args([path.to_owned(), accepts.to_string(), prefork.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut ready = String::new();
        reader.read_line(&mut ready).expect("read ready line");
        assert!(ready.starts_with("ready "), "server said {ready:?}");
        let pid = field(&ready, "pid").expect("pid") as u32;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, pid, lines }
    }

    /// Waits for the server to exit successfully and returns its `accept` lines.
    pub fn finish(mut self) -> Vec<String> {
        let status = self.child.wait().expect("wait server");
        assert!(status.success(), "server failed: {status}");
        thread::sleep(Duration::from_millis(50));
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.starts_with("accept ")).cloned().collect()
    }
}

/// State directory of the agent that the hook finds (compiled into `libtssx_preload.so`).
pub const DEFAULT_STATE_DIR: &str = "/run/tssx";

/// Path of `libtssx_preload.so` built next to the tests.
pub fn hook() -> PathBuf {
    let so = target_dir().join("libtssx_preload.so");
    assert!(so.exists(), "{} is missing: `cargo build -p tssx-preload` (cargo xtask test does)", so.display());
    so
}

/// Exclusive use of the default state directory, held for one test: the hook only finds the
/// agent in [`DEFAULT_STATE_DIR`], so every test that runs hooked programs takes this lock
/// (an `flock` shared by all test binaries and processes on the machine) for its whole run.
pub struct DefaultAgentLock {
    _file: std::fs::File,
}

impl DefaultAgentLock {
    /// Blocks until no other test holds the default state directory.
    pub fn acquire() -> Self {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/tssx-tests.lock")
            .expect("open /run/tssx-tests.lock");
        loop {
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EINTR), "flock");
        }
        Self { _file: file }
    }
}

/// An agent in the default state directory (where the hook finds it), watching `paths`, with
/// the default-state-directory lock held until it is dropped.
pub struct HookedAgent {
    /// The agent (dropped, and so stopped, before the lock is released).
    pub agent: Agent,
    _lock: DefaultAgentLock,
}

impl std::ops::Deref for HookedAgent {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl HookedAgent {
    /// Takes the lock, then starts the agent on `paths` in [`DEFAULT_STATE_DIR`].
    pub fn start(paths: &[&str]) -> Self {
        Self::start_with(paths, &[])
    }

    /// As [`HookedAgent::start`], with extra agent arguments.
    pub fn start_with(paths: &[&str], args: &[&str]) -> Self {
        let lock = DefaultAgentLock::acquire();
        // A foreign agent in the default directory makes Agent::start fail with its reason.
        Self { agent: Agent::start_with(paths, Path::new(DEFAULT_STATE_DIR), args), _lock: lock }
    }

    /// Sends SIGTERM and returns the exit status (the lock is released afterwards).
    pub fn stop(self) -> ExitStatus {
        self.agent.stop()
    }
}
