//! `cargo xtask soak [--seconds N] [--seed S] [--differential N] [--hostile N]`: a long
//! randomized run against a real agent, after many sequences of the hook's differential test (no
//! agent) and many rounds of the hostile-peer fuzzer.
//!
//! Opens, uses and closes connections in a loop: several stream pairs at once (one per watched
//! path), random sizes, most with both ends hooked, some with one end plain (the replay path),
//! and some with one end SIGKILLed mid-stream. Checks that every pair that was not killed moved
//! every byte intact, that no end ever hangs (a per-pair timeout), and at the end that the agent
//! holds no segment and its descriptor count and RSS are back where they started.
//!
//! Not part of `cargo xtask test`. Built on the tests' support layer (`tssx_tests`): it takes the
//! tests' machine-wide lock ([`MachineLock`]) since the hook only finds an agent in `/run/tssx`,
//! and reads the agent's JSON trace and `status --stats` with serde_json.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use tssx_tests::{poll_until, Agent, MachineLock, Process, Resources, Rng, TempDir};

/// Stream pairs running at once (one watched path each).
const LANES: usize = 4;
/// A pair that has not finished after this long hangs.
const PAIR_TIMEOUT: Duration = Duration::from_secs(60);
/// Agent RSS may grow by at most this much over the run (KiB).
const RSS_SLACK_KIB: u64 = 16 * 1024;

/// What one pair did.
#[derive(Default)]
struct Tally {
    pairs: u64,
    killed: u64,
    bytes: u64,
}

/// The agent's live segments (`status --stats`), if it answers.
fn live_segments(agent: &Agent) -> Option<u64> {
    agent.try_stats().ok()?["live_segments"].as_u64()
}

/// One stream pair on `path`: random size, hooks, and maybe a kill. Errors name the pair.
fn one_pair(bin: &Path, hook: &Path, path: &str, rng: &mut Rng, tally: &mut Tally) -> anyhow::Result<()> {
    let bits = 10 + rng.below(17);
    let bytes = 1 + rng.below(1 << bits); // up to 64 MiB, log-spread
    let seed = rng.below(1_000_000);
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
        cmd.args([role, path, &bytes.to_string(), &seed.to_string()]);
        if hooked {
            cmd.env("LD_PRELOAD", hook);
        }
        Process::try_spawn(cmd)
    };
    let _ = std::fs::remove_file(path);
    let server = spawn("server", server_hook)?;
    if server.next_line(Duration::from_secs(10)).as_deref() != Some("ready") {
        bail!("the server did not print `ready`; stderr: {}; {what}", server.stderr_text());
    }
    let client = spawn("client", client_hook)?;
    let started = Instant::now();
    let mut pair = [("client", client), ("server", server)];
    if kill {
        thread::sleep(kill_after);
        pair[usize::from(kill_server)].1.kill9();
    }
    let mut outcomes = Vec::new();
    for (role, end) in &mut pair {
        // A hung end is killed by `wait`; the other one when `pair` is dropped.
        let Some(status) = end.wait(PAIR_TIMEOUT.saturating_sub(started.elapsed())) else {
            bail!("HANG: the {role} did not finish within {PAIR_TIMEOUT:?}; {what}");
        };
        end.wait_closed(Duration::from_secs(5));
        outcomes.push((*role, status, end.stdout_lines().join("\n"), end.stderr_text()));
    }
    tally.pairs += 1;
    if kill {
        tally.killed += 1; // the survivor finished (EOF/EPIPE) without hanging: that is the check
        return Ok(());
    }
    for (role, status, out, err) in outcomes {
        let expected = format!("ok sent={bytes} received={bytes}");
        if !status.success() || !out.contains(&expected) {
            bail!("LOST OR CORRUPT BYTES: the {role} exited {status} saying {out:?} (stderr: {err}); {what}");
        }
    }
    tally.bytes += 2 * bytes;
    Ok(())
}

/// The soak's seed: `seed`, or one from the clock.
pub fn seed(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1)
}

/// The hook's differential test (`tssx-user/hook/tests/differential.rs`) for `sequences`
/// sequences, starting from a seed derived from `seed` (a failing sequence prints its own
/// replay command). No agent, no root.
pub fn differential(seed: u64, sequences: u64) -> anyhow::Result<()> {
    if sequences == 0 {
        return Ok(());
    }
    // Below 2^40: far from the seeds of the normal run, printable, and never overflowing.
    let start = (seed % (1 << 40)) + 1_000_000;
    eprintln!("xtask: soak: {sequences} differential sequences from seed {start} (rerun: --seed {seed})");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace"))
        .args([
            "test",
            "-p",
            "tssx-hook",
            "--test",
            "differential",
            "--",
            "--exact",
            "plain_and_swapped_pairs_agree_on_random_sequences",
            "--nocapture",
        ])
        .env("TSSX_DIFF_START", start.to_string())
        .env("TSSX_DIFF_SEQUENCES", sequences.to_string())
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("the differential test failed (seed {seed}): {status}");
    }
    Ok(())
}

/// The hostile-peer fuzzer (`tests/tests/hostile.rs`) for `rounds` attackers in each of its two
/// tests (root attackers, and `nobody` attackers against a root victim), from a seed derived
/// from `seed` (each test prints its replay line). Real agent, root.
pub fn hostile(seed: u64, rounds: u64) -> anyhow::Result<()> {
    if rounds == 0 {
        return Ok(());
    }
    let start = (seed % (1 << 40)) + 7_000_000;
    eprintln!("xtask: soak: {rounds} hostile-peer rounds per test from seed {start} (rerun: --seed {seed})");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace"))
        .args(["test", "-p", "tssx-tests", "--test", "hostile", "--", "--test-threads=1", "--nocapture"])
        .env("TSSX_HOSTILE_SEED", start.to_string())
        .env("TSSX_HOSTILE_ROUNDS", rounds.to_string())
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("the hostile-peer fuzzer failed (seed {seed}): {status}");
    }
    Ok(())
}

/// Runs the soak for `seconds` (pairs already running are finished).
pub fn run(bin: &Path, seconds: u64, seed: u64) -> anyhow::Result<()> {
    let _lock = MachineLock::acquire_reporting(|| eprintln!("xtask: soak: waiting for the machine-wide tssx test lock"))
        .context("locking the machine-wide tssx test lock")?;
    eprintln!("xtask: soak for {seconds} s with {LANES} pairs at a time, seed {seed} (rerun: --seed {seed})");
    let dir = TempDir::create("soak")?;
    let paths: Vec<String> = (0..LANES).map(|i| dir.socket(&format!("soak-{i}.sock"))).collect();
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let agent =
        Agent::spawn(&bin.join("tssx-agent"), &path_refs, None, &[]).context("starting tssx-agent (is another one using /run/tssx?)")?;
    let pid = agent.pid();
    thread::sleep(Duration::from_millis(1500));
    let before = Resources::read(pid)?;
    let hook = bin.join("libtssx_preload.so");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let lanes: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let (bin, hook, path): (PathBuf, PathBuf, String) = (bin.to_owned(), hook.clone(), path.clone());
            thread::spawn(move || -> (Tally, Option<anyhow::Error>) {
                let mut rng = Rng::new(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1)) | 1);
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
    poll_until(Duration::from_secs(10), || live_segments(&agent) == Some(0));
    let after = Resources::read(pid)?;
    let live = live_segments(&agent);
    let (swapped, freed) = (agent.events("swapped").len(), agent.events("closed").len());
    let status = agent.stop();
    eprintln!(
        "xtask: soak: {} pairs ({} with an end killed), {:.1} GiB checked, {swapped} swapped, {freed} segments freed",
        total.pairs,
        total.killed,
        total.bytes as f64 / (1u64 << 30) as f64,
    );
    eprintln!("xtask: soak: agent before {before:?}, after {after:?}, live segments at the end {live:?}");
    if live != Some(0) {
        failures.push(format!("the agent still holds {live:?} segments"));
    }
    if after.fds != before.fds || after.memfd_fds != 0 {
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
