//! A real `tssx-agent` (real eBPF programs in the running kernel) and its JSON trace lines.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use super::{env::agent_bin, lock::MachineLock, process::Process, resources::Resources, wait::poll_until};

/// State directory of the agent that the hook finds (compiled into `libtssx_preload.so`).
pub const DEFAULT_STATE_DIR: &str = "/run/tssx";
/// How long the agent may take to load its programs.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running agent (`--log-format json`) whose trace lines are collected.
///
/// It runs in the caller's process group, so that a Ctrl-C of the test run stops it too (it
/// then withdraws its files). Dropped without [`Agent::stop`], it is killed with SIGKILL.
pub struct Agent {
    process: Process,
    bin: PathBuf,
    /// The command that the agent (and `status`) run under, e.g. `nsenter ...` (empty: none).
    wrapper: Vec<OsString>,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// The trace lines parsed so far (stdout line `i` is `parsed[i]`).
    parsed: Mutex<Vec<Value>>,
}

impl Agent {
    /// Starts `tssx-agent --paths <paths> --log-format json --state-dir <state_dir>` (the binary
    /// built next to the tests) and waits for its ready line. Panics if it does not get ready.
    pub fn start(paths: &[&str], state_dir: &Path) -> Self {
        Self::start_with(paths, state_dir, &[])
    }

    /// As [`Agent::start`], with extra agent arguments (e.g. `--max-connections 2`). Tests run
    /// the agent with `-v`: its per-connection `connect`/`accept` lines are at debug level.
    pub fn start_with(paths: &[&str], state_dir: &Path, args: &[&str]) -> Self {
        let verbose = args.iter().any(|a| *a == "-v" || *a == "--verbose");
        let args: Vec<&str> = (!verbose).then_some("-v").into_iter().chain(args.iter().copied()).collect();
        Self::spawn(&agent_bin(), paths, Some(state_dir), &args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// As [`Agent::start_with`], inside `ns` (a [`super::MountNamespace`] with its own tmpfs on
    /// [`DEFAULT_STATE_DIR`]), in the agent's default state directory there: no other agent's
    /// directory, so no machine lock; the hooked processes of the test are started in `ns` too
    /// ([`super::MountNamespace::command`]), where their hooks find this agent.
    pub fn start_in(ns: &super::MountNamespace, paths: &[&str], args: &[&str]) -> Self {
        let verbose = args.iter().any(|a| *a == "-v" || *a == "--verbose");
        let args: Vec<&str> = (!verbose).then_some("-v").into_iter().chain(args.iter().copied()).collect();
        Self::spawn_wrapped(&ns.wrapper(), &agent_bin(), paths, None, &args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts the agent binary `bin` on `paths` in `state_dir` (`None`: the agent's default,
    /// [`DEFAULT_STATE_DIR`]) with extra `args`, and waits for its ready line; the error says
    /// why it did not get ready (its stderr, e.g. another agent holds the directory).
    pub fn spawn(bin: &Path, paths: &[&str], state_dir: Option<&Path>, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_wrapped(&[], bin, paths, state_dir, args)
    }

    /// As [`Agent::spawn`], run under `wrapper` (a program and its arguments that `exec`s the
    /// agent, e.g. [`super::MountNamespace::wrapper`]); [`Agent::stats`] runs under it too, so
    /// the state directory is the one seen through the wrapper.
    pub fn spawn_wrapped(
        wrapper: &[OsString],
        bin: &Path,
        paths: &[&str],
        state_dir: Option<&Path>,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let state_dir = state_dir.unwrap_or(Path::new(DEFAULT_STATE_DIR)).to_owned();
        let mut cmd = wrapped(wrapper, bin);
        cmd.arg("--paths").arg(paths.join(",")).args(["--log-format", "json", "--state-dir"]).arg(&state_dir).args(args);
        let process = Process::try_spawn(cmd)?;
        let mut agent = Self { process, bin: bin.to_owned(), wrapper: wrapper.to_vec(), state_dir, parsed: Mutex::new(Vec::new()) };
        let deadline = Instant::now() + READY_TIMEOUT;
        while agent.events("ready").is_empty() {
            if let Some(status) = agent.process.try_wait() {
                agent.process.wait_closed(Duration::from_secs(1));
                bail!("tssx-agent exited before it was ready: {status}; stderr: {}", agent.process.stderr_text());
            }
            if Instant::now() > deadline {
                bail!("tssx-agent not ready after {READY_TIMEOUT:?}; stderr: {}", agent.process.stderr_text());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(agent)
    }

    /// Every trace line so far, parsed. Panics on a line that is not JSON.
    pub fn trace(&self) -> Vec<Value> {
        self.parsed().clone()
    }

    /// The parsed trace, brought up to date with the lines that arrived since the last call.
    fn parsed(&self) -> std::sync::MutexGuard<'_, Vec<Value>> {
        let mut parsed = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        for line in self.process.stdout_lines_from(parsed.len()) {
            let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("the agent printed a non-JSON line ({e}): {line}"));
            parsed.push(value);
        }
        parsed
    }

    /// Trace lines whose message's first word is `kind` (`connect`, `accept`, `ready`,
    /// `swapped`, `not` for "not swapped", `closed`, `claim` for "claim refused", ...).
    pub fn events(&self, kind: &str) -> Vec<Value> {
        let first_word = |v: &Value| v["message"].as_str().and_then(|m| m.split([':', ' ']).next()) == Some(kind);
        self.parsed().iter().filter(|v| first_word(v)).cloned().collect()
    }

    /// Trace lines of `kind` on `path`.
    pub fn events_on(&self, kind: &str, path: &str) -> Vec<Value> {
        self.events(kind).into_iter().filter(|v| v["path"] == path).collect()
    }

    /// Waits until at least `count` lines of `kind` on `path` arrived (or `timeout`), then a
    /// little longer (300 ms) so that extra, unexpected lines are seen too; returns them all.
    /// Never panics: the caller asserts on what it got.
    pub fn wait_for(&self, kind: &str, path: &str, count: usize, timeout: Duration) -> Vec<Value> {
        poll_until(timeout, || self.events_on(kind, path).len() >= count);
        thread::sleep(Duration::from_millis(300));
        self.events_on(kind, path)
    }

    /// Waits until at least `count` lines of `kind` on `path` arrived and returns them (no
    /// settling time); panics with what arrived if they do not within `timeout`.
    pub fn await_events(&self, kind: &str, path: &str, count: usize, timeout: Duration) -> Vec<Value> {
        if !poll_until(timeout, || self.events_on(kind, path).len() >= count) {
            panic!("no {count} `{kind}` line(s) on {path} within {timeout:?}: {:?}", self.events_on(kind, path));
        }
        self.events_on(kind, path)
    }

    /// Sends SIGTERM and returns the exit status. Panics if it does not exit within 20 s.
    pub fn stop(mut self) -> ExitStatus {
        let status = self.process.stop(libc::SIGTERM, STOP_TIMEOUT);
        status
            .unwrap_or_else(|| panic!("the agent did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr: {}", self.process.stderr_text()))
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The agent's process (its stderr, its exit).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Kills the agent with SIGKILL (nothing is cleaned up) and reaps it.
    pub fn kill9(mut self) {
        self.process.kill9();
    }

    /// The agent's resource counts (`tssx-agent status --stats`, one JSON object). Panics if
    /// the agent does not answer.
    pub fn stats(&self) -> Value {
        self.try_stats().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// As [`Agent::stats`], or why not (e.g. the agent is busy and dropped the request).
    pub fn try_stats(&self) -> anyhow::Result<Value> {
        let out = wrapped(&self.wrapper, &self.bin)
            .args(["status", "--stats", "--state-dir"])
            .arg(&self.state_dir)
            .output()
            .context("running tssx-agent status --stats")?;
        if !out.status.success() {
            bail!("status --stats failed: {out:?}");
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("status --stats printed non-JSON: {out:?}"))
    }

    /// What the agent process holds, counted from outside through `/proc`.
    pub fn resources(&self) -> Resources {
        Resources::of(self.pid())
    }
}

/// `bin` run under `wrapper` (if any).
fn wrapped(wrapper: &[OsString], bin: &Path) -> Command {
    match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// An agent in the default state directory (where the hook finds it), watching `paths`, with
/// the [`MachineLock`] held until it is dropped: the agent every test that runs hooked
/// programs uses.
pub struct HookedAgent {
    /// The agent (dropped, and so stopped, before the lock is released).
    pub agent: Agent,
    _lock: MachineLock,
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
        let lock = MachineLock::acquire();
        // A foreign agent in the default directory makes Agent::start fail with its reason.
        Self { agent: Agent::start_with(paths, Path::new(DEFAULT_STATE_DIR), args), _lock: lock }
    }

    /// Sends SIGTERM and returns the exit status (the lock is released afterwards).
    pub fn stop(self) -> ExitStatus {
        self.agent.stop()
    }

    /// SIGKILLs the agent and reaps it (the lock is released afterwards; the state directory
    /// keeps the dead agent's files, as after a crash).
    pub fn kill9(self) {
        self.agent.kill9()
    }
}
