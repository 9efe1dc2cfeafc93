//! Many swapped connections at once on one host, then a connection storm on top of them,
//! against the agent's derived default connection limit; prints the agent's CPU and memory at
//! that scale. `cargo xtask scale` runs it at 10,000 connections (a benchmark, a minute or
//! two); the end-to-end test `scale` runs it at a few hundred, with the same verdicts.
//!
//! 1. The agent starts with `--ring-size` (small rings: 10,000 connections with the default
//!    1 MiB rings would pin 20 GiB) and no `--max-connections`: its limit is derived from the
//!    machine's memory and fd limit; the run stops early if that is below `--connections`.
//! 2. Hooked echo servers (one level-triggered epoll loop each, non-blocking connections) and
//!    hooked clients, one pair per [`PER_SHARD`] connections on a watched path of its own, that
//!    open `--connections` connections in all and keep them, echoing 64 bytes on each every 200 ms (which is what makes
//!    both ends claim them), until the agent reports every one swapped.
//! 3. With all of them open, `--storm-threads` threads of a second hooked client open, use and
//!    close connections for `--storm-seconds` (every other one kept 3 ms: swapped, the rest
//!    closed before the claim delay: plain), while `status --stats` is asked every 250 ms.
//! 4. The held connections are closed; the agent must free every segment.
//!
//! Verdicts (the command fails on any, after printing its table): every held connection swapped; no connection of the
//! storm and no echo on a held one slower than [`STALL`] (a hook waiting on a busy agent);
//! the agent answering `status --stats` within [`STALL`] all along (not starved); no kernel
//! events lost; every segment freed at the end, and the agent's descriptors back to its idle
//! count (within [`FD_SLACK`]).

use std::{
    fmt::Write as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use crate::{cpu_time, field, poll_until, Agent, MachineLock, Process, TempDir};

/// Progress, on stderr.
fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// The longest a single storm connection, an echo on a held one, or a `status --stats` may take.
const STALL: Duration = Duration::from_secs(2);

/// Descriptors the agent may hold beyond its idle count once everything closed.
const FD_SLACK: usize = 64;

/// Held connections per server and per hold client: each end holds two descriptors per swapped
/// connection (the socket and its segment), and a process here may open 20,000 at most, so
/// 10,000 connections are spread over three pairs of processes on three watched paths.
const PER_SHARD: u64 = 4_000;

/// What the command was asked.
pub struct Scale {
    /// Connections held open at once.
    pub connections: u64,
    /// The agent's `--ring-size`.
    pub ring_size: u64,
    /// Length of the storm.
    pub storm_seconds: u64,
    /// Storm client threads.
    pub storm_threads: u64,
}

/// `VmRSS` and `VmHWM` of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib =
        |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    (kib("VmRSS:"), kib("VmHWM:"))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// `Shmem` of `/proc/meminfo`, in KiB.
fn shmem_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo.lines().find_map(|l| l.strip_prefix("Shmem:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// How long the agent takes to answer `status --stats`, and its answer.
fn timed_stats(agent: &Agent) -> (Duration, anyhow::Result<serde_json::Value>) {
    let t = Instant::now();
    let stats = agent.try_stats();
    (t.elapsed(), stats)
}

fn stat_u64(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
}

/// The slowest single echo (`slowest_us`) in the hold client's round lines in `lines`.
fn slowest_round(lines: &[String]) -> Duration {
    Duration::from_micros(lines.iter().filter(|l| l.starts_with("round ")).filter_map(|l| field(l, "slowest_us")).max().unwrap_or(0) as u64)
}

/// Runs it with the programs in `bin` (`target/release/` or `target/debug/`), under the
/// machine-wide lock; prints its table.
pub fn run(bin: &Path, scale: &Scale) -> anyhow::Result<()> {
    let _lock = MachineLock::acquire_reporting(|| step("scale: waiting for the machine-wide tssx test lock"))
        .context("locking the machine-wide tssx test lock")?;
    run_locked(bin, scale).map(|_| ())
}

/// As [`run`], for a caller that holds the machine-wide lock already (`cargo xtask report`);
/// returns the table (Markdown), and on a failed verdict an error that ends with it.
pub fn run_locked(bin: &Path, scale: &Scale) -> anyhow::Result<String> {
    let hook = bin.join("libtssx_preload.so");
    let program = bin.join("tssx-test-scale");
    let dir = TempDir::create("scale")?;
    let shards = scale.connections.div_ceil(PER_SHARD).max(1);
    let socks: Vec<String> = (0..shards).map(|k| dir.socket(&format!("scale-{k}.sock"))).collect();
    let sock = &socks[0];
    let stop = dir.join("stop");
    let shmem_before = shmem_kib();
    let ring = scale.ring_size.to_string();
    step(&format!("scale: tssx-agent --ring-size {ring} (no --max-connections: derived)"));
    let paths: Vec<&str> = socks.iter().map(String::as_str).collect();
    let agent = Agent::spawn(&bin.join("tssx-agent"), &paths, None, &["--ring-size", &ring])
        .context("starting tssx-agent (is another agent running in /run/tssx?)")?;
    let pid = agent.pid();
    let stats = agent.try_stats()?;
    let limit = stat_u64(&stats, "max_connections");
    let (rss_idle, _) = rss_kib(pid);
    let fds_idle = fd_count(pid);
    let mut out = String::new();
    let _ = writeln!(out, "\n## tssx at scale: {} connections held, then a storm\n", scale.connections);
    let _ =
        writeln!(out, "Build: {}. Ring size {} bytes; the agent's derived `--max-connections`: {limit}.\n", bin.display(), scale.ring_size);
    ensure!(
        limit >= scale.connections,
        "the agent's derived connection limit is {limit}, below --connections {} (less memory, or a lower fd limit than needed)",
        scale.connections
    );
    let hooked = |args: &[&str]| {
        let mut cmd = Command::new(&program);
        cmd.args(args).env("LD_PRELOAD", &hook);
        Process::try_spawn(cmd).with_context(|| format!("starting {}", program.display()))
    };
    let mut servers = Vec::new();
    for sock in &socks {
        let server = hooked(&["server", sock])?;
        ensure!(
            server.next_line(Duration::from_secs(10)).as_deref() == Some("ready"),
            "the server did not start: {}",
            server.stderr_text()
        );
        servers.push(server);
    }

    // Ramp: open them all, then rounds until the agent has swapped every one.
    let n = scale.connections.to_string();
    let stop_path = stop.to_str().context("non-UTF-8 temp dir")?;
    let ramp_start = Instant::now();
    let cpu_start = cpu_time(pid);
    step(&format!("scale: opening {n} connections (hooked clients and servers, {shards} of each)"));
    // Shard k holds its share: the connections split as evenly as they go.
    let share = |k: u64| scale.connections / shards + u64::from(k < scale.connections % shards);
    let mut holders = Vec::new();
    for (k, sock) in socks.iter().enumerate() {
        holders.push(hooked(&["hold", sock, &share(k as u64).to_string(), stop_path])?);
    }
    for holder in &holders {
        let opened = holder.next_line(Duration::from_secs(60) + Duration::from_millis(10) * scale.connections as u32);
        let Some(opened) = opened.filter(|l| l.starts_with("opened")) else {
            bail!("a hold client did not open its connections: {:?} {}", holder.stdout_lines(), holder.stderr_text());
        };
        step(&format!("scale: {opened}"));
    }
    step("scale: waiting until the agent has swapped them all");
    let mut last = serde_json::Value::Null;
    // Until all are swapped, or the count stood still for 10 s (a claim refused leaves its
    // connection plain for good).
    let (mut best, mut since) = (0, Instant::now());
    let all_swapped = poll_until(Duration::from_secs(60) + Duration::from_millis(20) * scale.connections as u32, || {
        if let Ok(s) = agent.try_stats() {
            last = s;
        }
        holders.iter_mut().for_each(|h| h.assert_running());
        let swapped = stat_u64(&last, "swapped");
        if swapped > best {
            (best, since) = (swapped, Instant::now());
        }
        swapped >= scale.connections || since.elapsed() > Duration::from_secs(10)
    }) && stat_u64(&last, "swapped") >= scale.connections;
    let ramp = ramp_start.elapsed();
    let ramp_cpu = cpu_time(pid) - cpu_start;
    let held_swapped = stat_u64(&last, "swapped");
    if !all_swapped {
        step(&format!("scale: only {held_swapped} of {n} held connections swapped: {last}"));
    }
    let (rss_held, _) = rss_kib(pid);
    let fds_held = fd_count(pid);
    let shmem_held = shmem_kib().saturating_sub(shmem_before);
    let (stats_latency_held, _) = timed_stats(&agent);
    let ramp_rounds: Vec<String> = holders.iter_mut().flat_map(|h| h.unread_lines()).collect();

    // The storm, on top of the held connections.
    step(&format!("scale: storm for {} s with {} threads, the held connections still echoing", scale.storm_seconds, scale.storm_threads));
    let before = agent.try_stats()?;
    let cpu_storm_start = cpu_time(pid);
    let storm_start = Instant::now();
    let mut slowest_stats = Duration::ZERO;
    let mut unanswered = 0;
    let mut storm_line = String::from("storm connections=0 (skipped)");
    if scale.storm_seconds > 0 {
        let mut storm = hooked(&["storm", sock, &scale.storm_seconds.to_string(), &scale.storm_threads.to_string()])?;
        let grace = Duration::from_secs(scale.storm_seconds) + STALL * 10;
        while storm.running() {
            let (took, answer) = timed_stats(&agent);
            slowest_stats = slowest_stats.max(took);
            unanswered += usize::from(answer.is_err());
            thread::sleep(Duration::from_millis(250));
            if storm_start.elapsed() > grace {
                bail!(
                    "a hook stalls: the storm client (pid {}) has not finished {:?} after the storm's end; the held connections' last rounds: {:?}; \
                     the echo server is pid {} (attach gdb to see where its read waits)",
                    storm.pid(),
                    grace - Duration::from_secs(scale.storm_seconds),
                    holders[0].stdout_lines().iter().rev().take(3).collect::<Vec<_>>(),
                    servers[0].pid()
                );
            }
        }
        let storm_lines = storm.finish(Duration::from_secs(10));
        storm_line = storm_lines.iter().find(|l| l.starts_with("storm ")).context("the storm client printed no result")?.clone();
    }
    let storm_wall = storm_start.elapsed();
    let storm_cpu = cpu_time(pid) - cpu_storm_start;
    let (rss_storm, hwm_storm) = rss_kib(pid);
    // The storm's connections that were swapped: its kept ones, closed by now or soon.
    thread::sleep(Duration::from_millis(1500));
    let after = agent.try_stats()?;
    let storm_rounds: Vec<String> = holders.iter_mut().flat_map(|h| h.unread_lines()).collect();

    // Close the held connections; every segment must be freed.
    std::fs::write(&stop, b"").context("writing the stop file")?;
    for (k, holder) in holders.into_iter().enumerate() {
        let done = holder.finish(Duration::from_secs(60) + Duration::from_millis(5) * scale.connections as u32);
        ensure!(done.iter().any(|l| l.starts_with(&format!("done ok={}", share(k as u64)))), "hold client {k}: {done:?}");
    }
    let close_start = Instant::now();
    let freed = poll_until(Duration::from_secs(30), || agent.try_stats().is_ok_and(|s| stat_u64(&s, "live_segments") == 0));
    let free_time = close_start.elapsed();
    // Its descriptors back to what it had idle (give or take the control workers' sockets).
    let fds_back = poll_until(Duration::from_secs(15), || fd_count(pid) <= fds_idle + FD_SLACK);
    let (rss_end, hwm_end) = rss_kib(pid);
    let fds_end = fd_count(pid);
    // The server counts readiness reports without data on stderr (its last line has the total).
    let spurious: u64 = servers
        .iter()
        .map(|server| {
            server
                .stderr_lines()
                .iter()
                .rev()
                .find_map(|l| l.strip_prefix("tssx-test-scale: server: ")?.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    let trace = agent.trace();
    let lost: Vec<_> = trace.iter().filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("events lost"))).collect();
    // Why pairs were given up, by reason (the agent's `not swapped` lines at info).
    let mut given_up_why = std::collections::BTreeMap::<String, usize>::new();
    for line in trace.iter().filter(|l| l["message"] == "not swapped") {
        *given_up_why.entry(line["reason"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    drop(servers);
    ensure!(agent.stop().success(), "the agent did not exit cleanly");

    let storm_count = field(&storm_line, "connections").unwrap_or(0);
    let per_s = field(&storm_line, "per_s").unwrap_or(0);
    let storm_slowest = Duration::from_micros(field(&storm_line, "slowest_us").unwrap_or(0) as u64);
    let storm_p99 = Duration::from_micros(field(&storm_line, "p99_us").unwrap_or(0) as u64);
    let storm_swapped = stat_u64(&after, "swapped") - stat_u64(&before, "swapped");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let pct = |cpu: Duration, wall: Duration| format!("{:.0}%", 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9));
    let _ = writeln!(out, "| phase | measure | value |\n|---|---|---|");
    let _ = writeln!(out, "| idle | agent RSS, fds | {rss_idle} KiB, {fds_idle} |");
    let _ = writeln!(
        out,
        "| ramp: open {n} and swap them all | wall, agent CPU | {:.1} s, {:.2} s ({}) |",
        ramp.as_secs_f64(),
        ramp_cpu.as_secs_f64(),
        pct(ramp_cpu, ramp)
    );
    let _ = writeln!(
        out,
        "| {n} held | swapped, claims refused (control connections beyond the cap), pairs given up | {held_swapped}, {}, {} |",
        stat_u64(&last, "control_connections_refused"),
        stat_u64(&last, "given_up")
    );
    let _ = writeln!(
        out,
        "| {n} held | agent RSS, fds | {rss_held} KiB ({:.2} KiB per connection), {fds_held} |",
        (rss_held.saturating_sub(rss_idle)) as f64 / scale.connections as f64
    );
    let _ = writeln!(
        out,
        "| {n} held | shared memory (Shmem growth) | {shmem_held} KiB ({:.1} KiB per connection) |",
        shmem_held as f64 / scale.connections as f64
    );
    let _ = writeln!(out, "| {n} held | `status --stats` answered in | {} |", ms(stats_latency_held));
    let _ = writeln!(
        out,
        "| storm ({} threads, {} s) | connections, per second, swapped | {storm_count}, {per_s}/s, {storm_swapped} |",
        scale.storm_threads, scale.storm_seconds
    );
    let _ = writeln!(out, "| storm | slowest connection, p99 (connect to close) | {}, {} |", ms(storm_slowest), ms(storm_p99));
    let _ = writeln!(
        out,
        "| storm | slowest echo on the {n} held connections (ramp: {}) | {} |",
        ms(slowest_round(&ramp_rounds)),
        ms(slowest_round(&storm_rounds))
    );
    let _ = writeln!(
        out,
        "| storm | agent CPU | {:.2} s in {:.1} s ({}) |",
        storm_cpu.as_secs_f64(),
        storm_wall.as_secs_f64(),
        pct(storm_cpu, storm_wall)
    );
    let _ = writeln!(out, "| storm | agent RSS (peak) | {rss_storm} KiB ({hwm_storm} KiB) |");
    let _ = writeln!(out, "| storm | slowest `status --stats`, unanswered | {}, {unanswered} |", ms(slowest_stats));
    let _ = writeln!(
        out,
        "| closed | segments freed in; then agent RSS (peak), fds | {:.1} s, {rss_end} KiB ({hwm_end} KiB), {fds_end} |",
        free_time.as_secs_f64()
    );
    let _ = writeln!(out, "| all | kernel events lost | {} |", lost.len());
    let _ = writeln!(out, "| all | pairs not swapped, by reason | {given_up_why:?} |");
    let _ = writeln!(
        out,
        "| all | the echo server's epoll readiness reports without data (at least; a plain socket shows none) | {spurious} |"
    );
    println!("{out}");

    let mut failures = Vec::new();
    if !all_swapped {
        failures.push(format!(
            "{held_swapped} of {n} held connections swapped ({} claims refused: control connections beyond the agent's cap)",
            stat_u64(&last, "control_connections_refused")
        ));
    }
    if storm_slowest > STALL {
        failures.push(format!("a storm connection took {} (stall limit {STALL:?})", ms(storm_slowest)));
    }
    let slowest_held = slowest_round(&ramp_rounds).max(slowest_round(&storm_rounds));
    if slowest_held > STALL {
        failures.push(format!("an echo on a held connection took {}", ms(slowest_held)));
    }
    if slowest_stats > STALL || unanswered > 0 {
        failures
            .push(format!("the agent answered status --stats in up to {} ({unanswered} unanswered) during the storm", ms(slowest_stats)));
    }
    if !lost.is_empty() {
        failures.push(format!("kernel events lost: {lost:?}"));
    }
    if !fds_back {
        failures.push(format!("the agent holds {fds_end} descriptors 15 s after the last segment was freed ({fds_idle} idle)"));
    }
    if !freed {
        failures.push("segments still live 30 s after every connection closed".into());
    }
    if !failures.is_empty() {
        bail!("scale: {}\n{out}", failures.join("; "));
    }
    step("scale: every held connection swapped, no stall, the agent answering throughout, every segment freed");
    Ok(out)
}
