//! `cargo xtask soak [--seconds N] [--seed S]`: a long randomized run against a real agent.
//!
//! Opens, uses and closes connections in a loop: several stream pairs at once (one per watched
//! path), random sizes, most with both ends hooked, some with one end plain (the replay path),
//! and some with one end SIGKILLed mid-stream. Checks that every pair that was not killed moved
//! every byte intact, that no end ever hangs (a per-pair timeout), and at the end that the agent
//! holds no segment and its descriptor count and RSS are back where they started.
//!
//! Not part of `cargo xtask test`. Takes the tests' machine-wide lock (`/run/tssx-tests.lock`)
//! since the hook only finds an agent in `/run/tssx`.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Stream pairs running at once (one watched path each).
const LANES: usize = 4;
/// A pair that has not finished after this long hangs.
const PAIR_TIMEOUT: Duration = Duration::from_secs(60);
/// Agent RSS may grow by at most this much over the run (KiB).
const RSS_SLACK_KIB: u64 = 16 * 1024;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one pair did.
#[derive(Default)]
struct Tally {
    pairs: u64,
    killed: u64,
    bytes: u64,
}

/// Counts of the agent process seen through `/proc`.
#[derive(Debug, Clone, Copy)]
struct AgentUse {
    fds: usize,
    memfds: usize,
    rss_kib: u64,
}

fn agent_use(pid: u32) -> anyhow::Result<AgentUse> {
    let mut fds = 0;
    let mut memfds = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).context("reading the agent's fds")?.flatten() {
        fds += 1;
        if std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:")) {
            memfds += 1;
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    Ok(AgentUse { fds, memfds, rss_kib })
}

/// A number field of a flat JSON object (`"key":123`), enough for `status --stats`.
fn json_number(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn live_segments(bin: &Path) -> Option<u64> {
    let out = Command::new(bin.join("tssx-agent")).args(["status", "--stats"]).output().ok()?;
    json_number(&String::from_utf8_lossy(&out.stdout), "live_segments")
}

/// Takes the tests' machine-wide lock on the default state directory.
fn lock() -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open("/run/tssx-tests.lock")?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking /run/tssx-tests.lock: {}", std::io::Error::last_os_error());
    }
    Ok(file)
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn stdout_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    text
}

/// One stream pair on `path`: random size, hooks, and maybe a kill. Errors name the pair.
fn one_pair(bin: &Path, hook: &Path, path: &str, rng: &mut Rng, tally: &mut Tally) -> anyhow::Result<()> {
    let bits = 10 + rng.below(17);
    let bytes = 1 + rng.below(1 << bits); // up to 64 MiB, log-spread
    let seed = rng.next() % 1_000_000;
    let (server_hook, client_hook) = match rng.below(10) {
        0 => (false, true),
        1 => (true, false),
        _ => (true, true),
    };
    let kill = rng.below(5) == 0;
    let kill_server = rng.below(2) == 0;
    // Not before ~20 ms: a client killed before it even connected leaves a (plain or swapped)
    // server waiting in accept forever, which is not a hang of the connection.
    let kill_after = Duration::from_millis(20 + rng.below(200));
    let what = format!("pair on {path}: {bytes} bytes, seed {seed}, hooks server={server_hook} client={client_hook}, kill={kill}");
    let spawn = |role: &str, hooked: bool| {
        let mut cmd = Command::new(bin.join("tssx-test-stream"));
        cmd.args([role, path, &bytes.to_string(), &seed.to_string()]).stdout(Stdio::piped()).stderr(Stdio::null());
        if hooked {
            cmd.env("LD_PRELOAD", hook);
        }
        cmd.spawn()
    };
    let _ = std::fs::remove_file(path);
    let mut server = spawn("server", server_hook)?;
    let mut ready = String::new();
    BufReader::new(server.stdout.as_mut().expect("piped")).read_line(&mut ready)?;
    let client = spawn("client", client_hook)?;
    let started = Instant::now();
    let mut pair = [("client", client), ("server", server)];
    if kill {
        thread::sleep(kill_after);
        let _ = pair[usize::from(kill_server)].1.kill();
    }
    let mut outputs = Vec::new();
    for i in 0..pair.len() {
        let left = PAIR_TIMEOUT.saturating_sub(started.elapsed());
        let Some(status) = wait_timeout(&mut pair[i].1, left)? else {
            for (_, child) in pair.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            bail!("HANG: the {} did not finish within {PAIR_TIMEOUT:?}; {what}", pair[i].0);
        };
        outputs.push((pair[i].0, status, stdout_of(&mut pair[i].1)));
    }
    tally.pairs += 1;
    if kill {
        tally.killed += 1; // the survivor finished (EOF/EPIPE) without hanging: that is the check
        return Ok(());
    }
    for (role, status, out) in outputs {
        let expected = format!("ok sent={bytes} received={bytes}");
        if !status.success() || !out.contains(&expected) {
            bail!("LOST OR CORRUPT BYTES: the {role} exited {status} saying {out:?}; {what}");
        }
    }
    tally.bytes += 2 * bytes;
    Ok(())
}

/// Runs the soak for `seconds` (pairs already running are finished).
pub fn run(bin: &Path, seconds: u64, seed: Option<u64>) -> anyhow::Result<()> {
    let _lock = lock()?;
    let seed =
        seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1);
    eprintln!("xtask: soak for {seconds} s with {LANES} pairs at a time, seed {seed} (rerun: --seed {seed})");
    let dir = std::env::temp_dir().join("tssx-soak");
    std::fs::create_dir_all(&dir)?;
    let paths: Vec<String> = (0..LANES).map(|i| dir.join(format!("soak-{i}.sock")).to_string_lossy().into_owned()).collect();
    let mut agent = Command::new(bin.join("tssx-agent"))
        .args(["--paths", &paths.join(","), "--log-format", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting tssx-agent")?;
    let mut lines = BufReader::new(agent.stdout.take().expect("piped")).lines();
    if !lines.by_ref().any(|l| l.is_ok_and(|l| l.contains("ready:"))) {
        let _ = agent.kill();
        bail!("the agent did not start (is another tssx-agent using /run/tssx?)");
    }
    let swapped = Arc::new(AtomicU64::new(0));
    let freed = Arc::new(AtomicU64::new(0));
    let drain = {
        let (swapped, freed) = (Arc::clone(&swapped), Arc::clone(&freed));
        // Relaxed: counters read after the agent exits (the join orders them).
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("\"message\":\"swapped") {
                    swapped.fetch_add(1, Ordering::Relaxed);
                } else if line.contains("closed: segment freed") {
                    freed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let pid = agent.id();
    thread::sleep(Duration::from_millis(1500));
    let before = agent_use(pid)?;
    let hook = bin.join("libtssx_preload.so");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let lanes: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let (bin, hook, path): (PathBuf, PathBuf, String) = (bin.to_owned(), hook.clone(), path.clone());
            thread::spawn(move || -> (Tally, Option<anyhow::Error>) {
                let mut rng = Rng(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1)) | 1);
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    if let Err(e) = one_pair(&bin, &hook, &path, &mut rng, &mut tally) {
                        return (tally, Some(e)); // this lane stops at its first failure
                    }
                }
                (tally, None)
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut failures = Vec::new();
    for lane in lanes {
        let (t, error) = lane.join().map_err(|_| anyhow::anyhow!("a soak thread panicked"))?;
        total.pairs += t.pairs;
        total.killed += t.killed;
        total.bytes += t.bytes;
        if let Some(e) = error {
            failures.push(format!("after {} pair(s) on this lane: {e:#}", t.pairs));
        }
    }
    // The agent frees segments on its once-a-second sweep.
    let settle = Instant::now() + Duration::from_secs(10);
    while live_segments(bin) != Some(0) && Instant::now() < settle {
        thread::sleep(Duration::from_millis(200));
    }
    let after = agent_use(pid)?;
    let live = live_segments(bin);
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = agent.wait()?;
    let _ = drain.join();
    eprintln!(
        "xtask: soak: {} pairs ({} with an end killed), {:.1} GiB checked, {} swapped, {} segments freed",
        total.pairs,
        total.killed,
        total.bytes as f64 / (1u64 << 30) as f64,
        swapped.load(Ordering::Relaxed),
        freed.load(Ordering::Relaxed)
    );
    eprintln!("xtask: soak: agent before {before:?}, after {after:?}, live segments at the end {live:?}");
    if live != Some(0) {
        failures.push(format!("the agent still holds {live:?} segments"));
    }
    if after.fds != before.fds || after.memfds != 0 {
        failures.push(format!("agent descriptors not back to the start: before {before:?}, after {after:?}"));
    }
    if after.rss_kib > before.rss_kib + RSS_SLACK_KIB {
        failures.push(format!("agent RSS grew from {} to {} KiB", before.rss_kib, after.rss_kib));
    }
    if !status.success() {
        failures.push(format!("the agent exited with {status} after SIGTERM"));
    }
    if total.pairs == 0 {
        failures.push("no pair ran".into());
    }
    if !failures.is_empty() {
        bail!("soak failed (seed {seed}):\n  {}", failures.join("\n  "));
    }
    eprintln!("xtask: soak passed");
    Ok(())
}
