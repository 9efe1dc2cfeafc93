//! [`Process`]: a child process whose stdout and stderr lines are captured by reader threads,
//! so that a test can wait for a line, wait for the exit with a timeout, and show what the
//! process said when something goes wrong.

use std::{
    io::{BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

/// How long [`Process::finish`] waits, after the exit, for the pipes to close (forked children
/// may still hold them) before it takes the lines it has.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// A running child process with captured output.
///
/// Spawning sets stdin to `/dev/null` and pipes stdout and stderr; two threads collect their
/// lines (invalid UTF-8 is replaced, never a reason to stop reading). Stdout lines can be
/// consumed in order ([`Process::next_line`], [`Process::expect_line`], [`Process::unread_lines`])
/// or read as a whole ([`Process::stdout_lines`]).
///
/// Dropping a `Process` that was not reaped kills it with SIGKILL (its whole process group if
/// it was started with [`Process::spawn_group`]) and reaps it, so a failing test leaves nothing
/// running.
pub struct Process {
    name: String,
    child: Child,
    /// Leader of its own process group (see [`Process::spawn_group`]).
    group: bool,
    /// The exit status, once reaped.
    status: Option<ExitStatus>,
    stdout: Arc<Pipe>,
    stderr: Arc<Pipe>,
    /// Stdout lines already consumed by `next_line`/`expect_line`/`unread_lines`. Relaxed: only
    /// an index into the log, which its own mutex orders.
    consumed: AtomicUsize,
}

impl Process {
    /// Spawns `cmd` in the caller's process group (Ctrl-C of the test run reaches it); a
    /// timeout or drop kills the process itself. Panics if it cannot be started.
    pub fn spawn(cmd: Command) -> Self {
        Self::try_spawn(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawns `cmd` as the leader of a new process group, for programs that fork (servers,
    /// prefork test programs): a timeout or drop kills the whole group. Panics if it cannot be
    /// started.
    pub fn spawn_group(cmd: Command) -> Self {
        Self::try_spawn_group(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// As [`Process::spawn`], or the error (naming the command).
    pub fn try_spawn(cmd: Command) -> std::io::Result<Self> {
        Self::start(cmd, false)
    }

    /// As [`Process::spawn_group`], or the error (naming the command).
    pub fn try_spawn_group(cmd: Command) -> std::io::Result<Self> {
        Self::start(cmd, true)
    }

    fn start(mut cmd: Command, group: bool) -> std::io::Result<Self> {
        let name = describe(&cmd);
        if group {
            cmd.process_group(0);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        let stdout = Pipe::capture(child.stdout.take().expect("piped stdout"));
        let stderr = Pipe::capture(child.stderr.take().expect("piped stderr"));
        Ok(Self { name, child, group, status: None, stdout, stderr, consumed: AtomicUsize::new(0) })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next stdout line not consumed yet, waiting up to `timeout` for it; `None` on timeout
    /// or when stdout closed first.
    pub fn next_line(&self, timeout: Duration) -> Option<String> {
        let at = self.consumed.load(Ordering::Relaxed);
        let line = self.stdout.wait_line(at, timeout)?;
        self.consumed.store(at + 1, Ordering::Relaxed);
        Some(line)
    }

    /// The next stdout line whose first word is `word`, within `timeout`; the lines before it
    /// are consumed too. Panics (with the process's stderr) on timeout or EOF: a hang or a
    /// crash.
    pub fn expect_line(&self, word: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_line(deadline.saturating_duration_since(Instant::now())) {
                Some(line) if line.split_whitespace().next() == Some(word) => return line,
                Some(_) => {}
                None => panic!(
                    "{}: no `{word}` line within {timeout:?} ({}); stdout so far: {:?}; stderr: {}",
                    self.name,
                    if self.stdout.closed() { "stdout closed" } else { "still running" },
                    self.stdout_lines(),
                    self.stderr_text()
                ),
            }
        }
    }

    /// The stdout lines not consumed yet (consuming them).
    pub fn unread_lines(&self) -> Vec<String> {
        let lines = self.stdout.lines_from(self.consumed.load(Ordering::Relaxed));
        self.consumed.fetch_add(lines.len(), Ordering::Relaxed);
        lines
    }

    /// Every stdout line so far, consumed or not.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lines_from(0)
    }

    /// Stdout lines from index `from` on (0-based; for callers that keep their own position).
    pub fn stdout_lines_from(&self, from: usize) -> Vec<String> {
        self.stdout.lines_from(from)
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lines_from(0)
    }

    /// Stderr so far as one text.
    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }

    /// Waits until both pipes reached EOF (the process and every child holding them exited),
    /// at most `timeout`; true if they did.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.stdout.wait_closed(timeout) && self.stderr.wait_closed(deadline.saturating_duration_since(Instant::now()))
    }

    /// Its exit status if it exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap_or_else(|e| panic!("{}: waitpid: {e}", self.name));
        }
        self.status
    }

    /// True while it has not exited.
    pub fn running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Panics (with its stderr) if it already exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            self.wait_closed(Duration::from_millis(500));
            panic!("{} exited early: {status}; stderr: {}", self.name, self.stderr_text());
        }
    }

    /// Waits at most `timeout` for the exit. On timeout it is killed with SIGKILL (its process
    /// group if it leads one), reaped, and `None` is returned.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.kill_and_reap();
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` (to the process only), then [`Process::wait`]s at most `timeout`.
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> Option<ExitStatus> {
        self.signal(signal);
        self.wait(timeout)
    }

    /// Sends `signal` to the process (not its group), unless it was reaped already.
    pub fn signal(&self, signal: i32) {
        if self.status.is_none() {
            // SAFETY: signals our own child, which is not reaped (its pid cannot be reused).
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// Kills the process (not its group) with SIGKILL and reaps it: `kill -9`.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.status = Some(self.child.wait().unwrap_or_else(|e| panic!("{}: waitpid: {e}", self.name)));
    }

    /// Waits (at most `timeout`) for a successful exit and returns the stdout lines not consumed
    /// yet. Panics if it is still running after `timeout` (it is killed: a hang) or failed,
    /// showing its stderr.
    pub fn finish(mut self, timeout: Duration) -> Vec<String> {
        let Some(status) = self.wait(timeout) else {
            panic!("{} (pid {}) hung: still running after {timeout:?}, killed; stderr: {}", self.name, self.pid(), self.stderr_text());
        };
        self.wait_closed(PIPE_GRACE);
        assert!(status.success(), "{} failed: {status}; stdout: {:?}; stderr: {}", self.name, self.stdout_lines(), self.stderr_text());
        self.unread_lines()
    }

    fn kill_and_reap(&mut self) {
        if self.status.is_some() {
            return;
        }
        let target = if self.group { -(self.child.id() as i32) } else { self.child.id() as i32 };
        // SAFETY: signals our own unreaped child, or the process group it leads (its pid, and so
        // the group id, cannot be reused before it is reaped).
        unsafe { libc::kill(target, libc::SIGKILL) };
        self.status = self.child.wait().ok();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// `program arg arg ...` of a command, for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// The lines read from one pipe so far, and whether it reached EOF.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// One captured pipe: its log, and a condition variable signalled on every new line and at EOF.
#[derive(Default)]
struct Pipe {
    log: Mutex<Log>,
    changed: Condvar,
}

impl Pipe {
    /// Starts the thread that reads `pipe` line by line into a new `Pipe`.
    fn capture(pipe: impl Read + Send + 'static) -> Arc<Self> {
        let this = Arc::new(Self::default());
        let sink = Arc::clone(&this);
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(buf.strip_suffix(b"\n").unwrap_or(&buf)).into_owned();
                        sink.log.lock().unwrap_or_else(|p| p.into_inner()).lines.push(line);
                        sink.changed.notify_all();
                    }
                }
            }
            sink.log.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            sink.changed.notify_all();
        });
        this
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `done(log)` or `timeout`; returns the log's guard either way.
    fn wait(&self, timeout: Duration, mut done: impl FnMut(&Log) -> bool) -> std::sync::MutexGuard<'_, Log> {
        let deadline = Instant::now() + timeout;
        let mut log = self.lock();
        while !done(&log) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            log = self.changed.wait_timeout(log, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        log
    }

    /// Line `at`, waiting up to `timeout` for it; `None` on timeout or EOF before it.
    fn wait_line(&self, at: usize, timeout: Duration) -> Option<String> {
        self.wait(timeout, |log| log.lines.len() > at || log.closed).lines.get(at).cloned()
    }

    fn wait_closed(&self, timeout: Duration) -> bool {
        self.wait(timeout, |log| log.closed).closed
    }

    fn closed(&self) -> bool {
        self.lock().closed
    }

    fn lines_from(&self, from: usize) -> Vec<String> {
        self.lock().lines.get(from..).map(<[String]>::to_vec).unwrap_or_default()
    }
}

/// Runs `cmd` to completion (stdout and stderr captured) and checks it succeeded; panics with
/// both outputs otherwise.
pub fn run_ok(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(&cmd)));
    assert!(
        out.status.success(),
        "{} failed: {}\nstdout: {}\nstderr: {}",
        describe(&cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
