//! `cargo xtask report`: one run of every benchmark, with and without tssx, written to
//! `target/report/REPORT.md` (Markdown tables with tssx/plain ratios) and
//! `target/report/latency.svg` (round-trip latency by message size).
//!
//! Measured in the same run, on the same machine, so that ratios compare like with like:
//! - real applications: `redis-benchmark` with 1 and 50 clients (PING, SET, GET: requests/s
//!   and p50 latency) and `pgbench -S` with one client (tps), each against a plain server and
//!   against the same server with server and client under the hook on a watched socket;
//! - nscd: a `getpwnam` + `getgrgid` pair in a loop (`tssx-test-nss bench`), with nscd's
//!   `shared no` (every lookup a connection) and `shared yes` (clients map nscd's cache), nscd
//!   and client plain vs both under the hook with an agent watching nscd's socket, in private
//!   mount namespaces (their own `/run/nscd` and `/run/tssx`); goal: within 1.1x of plain;
//! - nginx as a reverse proxy to a second nginx on Unix sockets, driven by `wrk` over loopback
//!   TCP: requests/s with (a) a new upstream connection per request and (b) upstream keepalive;
//! - the hook's pass-through cost: the hook loaded on an unwatched path versus no hook at all
//!   (64-byte round trips, 64 KiB streaming, redis-benchmark PING), against a 2% budget;
//! - connection set-up: connect + accept + first 64-byte round trip + close (`tssx-bench-setup`);
//! - what the hook adds to such a connection, in user-space instructions under callgrind
//!   (repeatable where a few percent of time is not; see [`crate::hookcost`]);
//! - round-trip latency by message size, 64 B to 256 KiB (`tssx-bench` workers; the plot);
//! - the existing microbenchmark table (`tssx-bench`: plain vs tssx vs bare ring).
//!
//! Every tssx row says how many of its connections the agent traced as `swapped`: a row whose
//! connections stayed plain measures the hook's pass-through, not the rings (nscd's always do:
//! glibc's client talks to the socket from inside libc and never claims).
//!
//! Everything is measured with the release profile (`cargo xtask build --release`: hook, agent
//! and test programs optimized, the hook and the agent stripped, as the Debian package ships
//! them), or with `--debug` the debug profile the tests use; the report names the profile in its
//! first lines.
//!
//! It takes the tests' machine-wide lock ([`MachineLock`]) and runs its own agent in `/run/tssx`
//! (where the hook looks), through the tests' support layer (`tssx_tests`), which also parses the
//! agent's JSON trace. The machine is shared and noisy: compare ratios within one report, not
//! absolute numbers across reports.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{ensure, Context as _};
use tssx_tests::{nscd, poll_until, wrk_on, Agent, MachineLock, MountNamespace, NginxConfig, NginxProxy, Nscd, Process, TempDir, Upstream};

use super::{profile_dir, sh, step, workspace_root};

/// Debian 12's PostgreSQL server binaries.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_PORT: &str = "54330";
/// Message sizes of the latency plot.
const PLOT_SIZES: &[usize] = &[64, 256, 1024, 4096, 16384, 65536, 262_144];
/// Repetitions of each pass-through measurement (alternating hook / no hook; medians compared).
const OVERHEAD_REPS: usize = 11;
/// Repetitions of the short socket-calls pass-through run (about 0.1 s each).
const CALLS_REPS: usize = 101;
/// The pass-through budget.
const OVERHEAD_BUDGET: f64 = 0.02;
/// The nscd goal: a lookup through tssx within this factor of plain.
const NSCD_GOAL: f64 = 1.1;
/// Alternating repetitions of each nscd measurement (medians compared).
const NSCD_REPS: usize = 7;
/// Paired repetitions of each nginx wrk run (even: each order equally often, see [`Paired`]),
/// and each run's length in seconds.
pub const NGINX_REPS: usize = 8;
const NGINX_SECONDS: u32 = 3;
/// wrk's connections to the front nginx (at most the upstream's `keepalive 16`, so that (b)
/// keeps every upstream connection).
const NGINX_CONNECTIONS: u32 = 8;
/// Alternating repetitions of each connection set-up measurement, and its goal (tssx/plain).
const SETUP_REPS: usize = 7;
const SETUP_GOAL: f64 = 1.1;
/// The goal for the time from connect to swapped, in microseconds.
const MIGRATION_GOAL_US: u64 = 2000;

/// How the nginx section runs (`cargo xtask report --only nginx` takes each from an option).
#[derive(Clone, Copy, Debug)]
pub struct NginxRuns {
    /// Pairs of runs per row (even).
    pub pairs: usize,
    /// The agent watches a path nginx never uses (the hook loaded, nothing watched).
    pub unwatched: bool,
    /// Neither instance under the hook (with `unwatched` too: an A/A run, the instrument's own
    /// spread).
    pub unhooked: bool,
    /// Both nginx workers on [`NGINX_WORKERS_CPU`], wrk on [`WRK_CPU`] (if the machine has
    /// that many CPUs).
    pub pinned: bool,
}

impl NginxRuns {
    /// What the full report runs.
    const REPORT: Self = Self { pairs: NGINX_REPS, unwatched: false, unhooked: false, pinned: true };
}

/// The CPU both nginx workers run on when pinned (the higher one: a machine with fewer CPUs runs
/// unpinned), and wrk's: a request's whole cost then lands on one core, which sets requests/s,
/// and wrk (which needs less) does not contend with it.
const NGINX_WORKERS_CPU: usize = 1;
const WRK_CPU: usize = 0;

/// Runs only the nginx section (`cargo xtask report --only nginx [--pairs N] [--unwatched]
/// [--unhooked] [--unpinned]`) and prints it: the row the spin policy is tuned on, without the
/// rest of the report's seven minutes.
pub fn nginx_only(profile: &str, runs: NginxRuns) -> anyhow::Result<()> {
    let bin = profile_dir(profile);
    let hook = bin.join("libtssx_preload.so");
    let _lock = MachineLock::acquire_reporting(|| step("report: waiting for the machine-wide tssx test lock"))
        .context("locking the machine-wide tssx test lock")?;
    let dir = TempDir::create("report-nginx")?;
    let (fresh, keep) = (NginxProxy::socket(&dir, NGINX_TSSX, Upstream::Fresh), NginxProxy::socket(&dir, NGINX_TSSX, Upstream::Keep));
    let load_before = load_average();
    let elsewhere = dir.join("watched-but-unused.sock").display().to_string();
    let watched: Vec<&str> = if runs.unwatched { vec![&elsewhere] } else { vec![&fresh, &keep] };
    let agent = Agent::spawn(&bin.join("tssx-agent"), &watched, None, &[])
        .context("starting tssx-agent (is another agent running in /run/tssx?)")?;
    step("report: nginx reverse proxy, plain vs tssx (upstream per request, upstream keepalive)");
    let section = nginx_section(&agent, &hook, &dir, runs);
    if runs.unwatched {
        println!("**`--unwatched`**: the agent watched {elsewhere} only; the hooked nginx ran with the hook loaded and none of its sockets watched.\n");
    }
    if runs.unhooked {
        println!("**`--unhooked`**: neither nginx ran under the hook.\n");
    }
    println!("{}\n\nBuild profile: {profile}. Load average at the start: {load_before}; at the end: {}.", section, load_average());
    let status = agent.stop();
    ensure!(status.success(), "tssx-agent exited with {status}");
    Ok(())
}

/// Runs only the hook-cost section (`cargo xtask report --only hookcost`) and prints it (see
/// [`crate::hookcost`]).
pub fn hook_cost_only(profile: &str) -> anyhow::Result<()> {
    let bin = profile_dir(profile);
    let _lock = MachineLock::acquire_reporting(|| step("report: waiting for the machine-wide tssx test lock"))
        .context("locking the machine-wide tssx test lock")?;
    let dir = TempDir::create("report-hookcost")?;
    let agent = Agent::spawn(&bin.join("tssx-agent"), &[crate::hookcost::WATCHED], None, &[])
        .context("starting tssx-agent (is another agent running in /run/tssx?)")?;
    step("report: the hook's instructions per short connection (callgrind)");
    let cost = crate::hookcost::measure(&bin, &bin.join("libtssx_preload.so"), &dir.join("callgrind"))?;
    println!(
        "{}
Build profile: {profile}.",
        cost.section()
    );
    let status = agent.stop();
    ensure!(status.success(), "tssx-agent exited with {status}");
    Ok(())
}

/// Runs everything and writes the report.
pub fn report(profile: &str) -> anyhow::Result<()> {
    let bin = profile_dir(profile);
    let hook = bin.join("libtssx_preload.so");
    let out_dir = workspace_root().join("target").join("report");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let _lock = MachineLock::acquire_reporting(|| step("report: waiting for the machine-wide tssx test lock"))
        .context("locking the machine-wide tssx test lock")?;
    let dir = TempDir::create("report")?;
    let s = |name: &str| dir.socket(name);
    let (bench_sock, unwatched) = (s("bench.sock"), s("unwatched.sock"));
    let (redis_tssx, redis_plain, redis_unwatched) = (s("redis.sock"), s("redis-plain.sock"), s("redis-unwatched.sock"));
    let (pg_tssx, pg_plain) = (dir.join("pg-tssx"), dir.join("pg-plain"));
    let pg_sock = format!("{}/.s.PGSQL.{PG_PORT}", pg_tssx.display());
    let (nginx_fresh, nginx_keep) =
        (NginxProxy::socket(&dir, NGINX_TSSX, Upstream::Fresh), NginxProxy::socket(&dir, NGINX_TSSX, Upstream::Keep));
    let load_before = load_average();
    let (dbus_tssx, dbus_plain) = (s("dbus.sock"), s("dbus-plain.sock"));
    let agent = Agent::spawn(
        &bin.join("tssx-agent"),
        &[&bench_sock, &redis_tssx, &pg_sock, &nginx_fresh, &nginx_keep, &dbus_tssx, crate::hookcost::WATCHED],
        None,
        &[],
    )
    .context("starting tssx-agent (is another agent running in /run/tssx?)")?;
    let mut md = String::new();
    writeln!(md, "# tssx performance report\n")?;
    writeln!(md, "{}\n", machine_line(&load_before))?;
    let what = if profile == "release" {
        "hook, agent and test programs optimized, as deployed; `cargo xtask report --debug` measures the debug build the tests use"
    } else {
        "hook, agent and test programs unoptimized, as the tests use them"
    };
    let size =
        |f: &Path| std::fs::metadata(f).map(|m| format!("{:.1} MiB", m.len() as f64 / (1 << 20) as f64)).unwrap_or_else(|_| "?".into());
    writeln!(
        md,
        "Build profile: **{profile}** ({what}; {}: hook {}, agent {}).\n",
        bin.display(),
        size(&hook),
        size(&bin.join("tssx-agent"))
    )?;

    // Real applications.
    step("report: redis-benchmark, plain vs tssx (1 and 50 clients)");
    let mut apps = Table::new(&["benchmark", "metric", "plain", "tssx", "tssx/plain", "tssx connections swapped"]);
    for (clients, requests) in [(1, 20_000), (50, 50_000)] {
        let plain = redis_bench(&dir, &redis_plain, None, clients, requests)?;
        let before = counts(&agent, &redis_tssx);
        let tssx = redis_bench(&dir, &redis_tssx, Some(&hook), clients, requests)?;
        let swapped = delta(&agent, &redis_tssx, before);
        for (p, t) in plain.iter().zip(&tssx) {
            let name = format!("redis-benchmark -c {clients} -n {requests} {}", p.test);
            apps.row([
                name.clone(),
                "requests/s".into(),
                format!("{:.0}", p.rps),
                format!("{:.0}", t.rps),
                ratio(t.rps, p.rps),
                swapped.clone(),
            ]);
            apps.row([
                name,
                "p50 latency".into(),
                format!("{:.3} ms", p.p50_ms),
                format!("{:.3} ms", t.p50_ms),
                ratio(t.p50_ms, p.p50_ms),
                swapped.clone(),
            ]);
        }
    }
    step("report: pgbench -S, one client, plain vs tssx");
    let pg = Postgres::init(&dir)?;
    let plain_tps = pg.bench(&pg_plain, None, true)?;
    let before = counts(&agent, &pg_sock);
    let tssx_tps = pg.bench(&pg_tssx, Some(&hook), false)?;
    let swapped = delta(&agent, &pg_sock, before);
    apps.row([
        "pgbench -S -c 1 -T 5".into(),
        "tps".into(),
        format!("{plain_tps:.0}"),
        format!("{tssx_tps:.0}"),
        ratio(tssx_tps, plain_tps),
        swapped,
    ]);
    step("report: D-Bus method calls through dbus-daemon, plain vs tssx");
    let plain = dbus_bench(&dir, &dbus_plain, None)?;
    let before = counts(&agent, &dbus_tssx);
    let tssx = dbus_bench(&dir, &dbus_tssx, Some(&hook))?;
    let swapped = delta(&agent, &dbus_tssx, before);
    for (name, p, t) in [
        ("D-Bus method call via dbus-daemon (Echo, 64 B, dbus-python)", plain.0, tssx.0),
        ("D-Bus method call passing an fd via dbus-daemon (SCM_RIGHTS both hops)", plain.1, tssx.1),
    ] {
        apps.row([name.into(), "round trip".into(), format!("{p:.1} us"), format!("{t:.1} us"), ratio(t, p), swapped.clone()]);
    }
    writeln!(md, "## Real applications\n\nServer and client both under the hook, on a socket the agent watches, against the same programs without the hook. Higher is better for requests/s and tps, lower for latency.\n")?;
    writeln!(md, "{}", apps.render())?;

    step("report: memory under request/response traffic (redis-benchmark -c 200 SET 100 B)");
    writeln!(md, "{}", memory_section(&agent, &hook, &dir, &redis_tssx, &redis_plain)?)?;

    step("report: nscd lookups, plain vs tssx (shared no, shared yes)");
    writeln!(md, "{}", nscd_section(&bin, &hook, &dir)?)?;
    step("report: nginx reverse proxy, plain vs tssx (upstream per request, upstream keepalive)");
    writeln!(md, "{}", nginx_section(&agent, &hook, &dir, NginxRuns::REPORT))?;

    // The hook's cost when it has nothing to do.
    step("report: the hook on an unwatched path vs no hook");
    let mut overhead =
        Table::new(&["test", "no hook", "hook, unwatched path", "overhead", "within 2%", "noise (no-hook runs, quartile spread)"]);
    let rtt = |preload: Option<&Path>| worker_seconds(&bin, &unwatched, preload, "rtt", 64, 20_000).map(|s| s / 20_000.0 * 1e6);
    let calls = |preload: Option<&Path>| -> anyhow::Result<f64> {
        let out = preloaded(bin.join("tssx-bench"), preload).args(["calls", &unwatched, "20000"]).stderr(Stdio::inherit()).output()?;
        ensure!(out.status.success(), "tssx-bench calls: {}", out.status);
        String::from_utf8_lossy(&out.stdout).trim().parse().context("tssx-bench calls printed no number")
    };
    // Many short runs, alternating: the VM's bursts of noise hit both sides alike.
    let measured = alternate(CALLS_REPS, || calls(None), || calls(Some(&hook)))?;
    overhead.row(overhead_row(
        &format!("socket calls, one process, no wake-up: write, poll, read 64 B (median of {CALLS_REPS})"),
        measured,
        "ns per call",
    ));
    let measured = alternate(OVERHEAD_REPS, || rtt(None), || rtt(Some(&hook)))?;
    overhead.row(overhead_row("round trip 64 B (median of 11)", measured, "us"));
    let stream = |preload: Option<&Path>| worker_seconds(&bin, &unwatched, preload, "stream", 65536, 1 << 30).map(|s| s * 1e3);
    let measured = alternate(OVERHEAD_REPS, || stream(None), || stream(Some(&hook)))?;
    overhead.row(overhead_row("stream 1 GiB, 64 KiB writes (median of 11)", measured, "ms"));
    let ping = |preload: Option<&Path>| -> anyhow::Result<f64> {
        let r = redis_bench(&dir, &redis_unwatched, preload, 1, 20_000)?;
        Ok(1e6 / r.iter().find(|r| r.test == "PING_MBULK").context("no PING_MBULK result")?.rps)
    };
    let measured = alternate(9, || ping(None), || ping(Some(&hook)))?;
    overhead.row(overhead_row("redis-benchmark -c 1 PING_MBULK, time per request (median of 9)", measured, "us"));
    writeln!(md, "## Hook pass-through cost\n\nThe hook loaded on both ends of a socket the agent does not watch, against no hook at all; runs alternate, medians compared. Budget: {:.0}%.\n", OVERHEAD_BUDGET * 100.0)?;
    writeln!(md, "{}", overhead.render())?;
    step("report: process start, the hook vs an empty preloaded library");
    let start = crate::startcost::measure(&hook, &out_dir.join("start"))?;
    let mut start_table = Table::new(&["process start", "empty library", "hook", "hook/empty", "within 1.05x"]);
    for row in start.rows() {
        start_table.row(row);
    }
    writeln!(
        md,
        "## Process start\n\nWhat the hook adds to every process (with `tssx-agent install`, every process on the host): `/bin/true` with the hook preloaded against an empty preloaded library, no agent involved. The constructor resolves the real libc functions and re-attaches connections an `exec` handed over (nothing to do without them); the unwinder is linked in, so no extra library is loaded.\n\n{}",
        start_table.render()
    )?;

    // Connection set-up and short connections.
    step("report: connection set-up and short connections");
    let mut setup = Table::new(&[
        "connections (alternating runs, medians)",
        "plain",
        "tssx",
        "hook, unwatched path",
        "tssx/plain",
        "within 1.1x",
        "tssx connections swapped",
    ]);
    let setup_bin = bin.join("tssx-bench-setup");
    for (label, count, rounds) in [
        ("set-up: connect, accept, one 64 B round trip, close; us per connection", 1000, 1),
        ("short connections: connect, accept, 100 x 64 B round trips, close; us per connection", 100, 100),
    ] {
        let run = |path: &str, preload: Option<&Path>| setup_seconds(&setup_bin, path, preload, count, rounds).map(|s| s * 1e6);
        let before = counts(&agent, &bench_sock);
        let (mut plain, mut tssx, mut unwatched_hook) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..SETUP_REPS {
            plain.push(run(&unwatched, None)?);
            tssx.push(run(&bench_sock, Some(&hook))?);
            unwatched_hook.push(run(&unwatched, Some(&hook))?);
        }
        let swapped = delta(&agent, &bench_sock, before);
        let (plain, tssx, unwatched_hook) = (median(plain), median(tssx), median(unwatched_hook));
        setup.row([
            format!("{label} (median of {SETUP_REPS} x {count})"),
            format!("{plain:.1}"),
            format!("{tssx:.1}"),
            format!("{unwatched_hook:.1}"),
            ratio(tssx, plain),
            if tssx <= plain * SETUP_GOAL { "yes" } else { "no" }.into(),
            swapped,
        ]);
    }
    writeln!(
        md,
        "## Connection set-up and short connections\n\nClient and server under the hook on the watched path (tssx) against no hook (plain) and the hook on an unwatched path; runs alternate. Connections start plain and are claimed once they have lived the agent's `--claim-after` (1 ms) and turned into a conversation (a second exchange), or moved 64 KiB, so a set-up connection never claims, and a short connection of 100 round trips migrates in its middle when it lives long enough. Goal: within {SETUP_GOAL}x.\n\n{}",
        setup.render()
    )?;

    step("report: the hook's instructions per short connection (callgrind)");
    let cost = crate::hookcost::measure(&bin, &hook, &dir.join("callgrind"))?;
    writeln!(md, "{}", cost.section())?;

    // Latency by message size.
    step("report: round-trip latency by message size");
    let mut latency = Table::new(&["message size", "plain", "tssx", "tssx/plain"]);
    let mut points = Vec::new();
    let before = counts(&agent, &bench_sock);
    for &size in PLOT_SIZES {
        let n = match size {
            0..=4096 => 20_000,
            4097..=65536 => 5_000,
            _ => 2_000,
        };
        let plain = worker_seconds(&bin, &unwatched, None, "rtt", size, n)? / n as f64 * 1e6;
        let tssx = worker_seconds(&bin, &bench_sock, Some(&hook), "rtt", size, n)? / n as f64 * 1e6;
        latency.row([format!("{size} B"), format!("{plain:.2} us"), format!("{tssx:.2} us"), ratio(tssx, plain)]);
        points.push((size, plain, tssx));
    }
    let swapped = delta(&agent, &bench_sock, before);
    std::fs::write(out_dir.join("latency.svg"), latency_svg(&points)).context("writing latency.svg")?;
    writeln!(md, "## Round-trip latency by message size\n\nOne client, one server process, ping-pong of N bytes each way (tssx connections swapped: {swapped}).\n\n![round-trip latency by message size](latency.svg)\n")?;
    writeln!(md, "{}", latency.render())?;
    writeln!(md, "{}", migration_section(&agent, &bench_sock, before))?;

    step("report: 64 B round trip with every core busy");
    writeln!(md, "{}", contended_section(&bin, &hook, &bench_sock))?;

    // The existing microbenchmarks.
    step("report: tssx-bench microbenchmarks (plain vs tssx vs bare ring)");
    let micro = Command::new(bin.join("tssx-bench"))
        .arg("--preload")
        .arg(&hook)
        .args(["--path", &bench_sock])
        .stderr(Stdio::inherit())
        .output()
        .context("running tssx-bench")?;
    ensure!(micro.status.success(), "tssx-bench failed: {}", micro.status);
    writeln!(md, "## Microbenchmarks (`tssx-bench`)\n\n{}", String::from_utf8_lossy(&micro.stdout))?;

    let load_after = load_average();
    writeln!(
        md,
        "Load average at the start: {load_before}; at the end: {load_after}. Other work on the machine makes these numbers noisy."
    )?;
    let status = agent.stop();
    ensure!(status.success(), "tssx-agent exited with {status}");
    // At scale, with an agent of its own (the report's is gone): what `cargo xtask scale` runs.
    step("report: 10,000 connections held and a storm on top (cargo xtask scale)");
    let scale = tssx_tests::scale::Scale { connections: 10_000, ring_size: 16 << 10, storm_seconds: 5, storm_threads: 8 };
    let table = tssx_tests::scale::run_locked(&bin, &scale).unwrap_or_else(|e| format!("**The scale run failed**: {e:#}"));
    writeln!(md, "{table}\nWhat `cargo xtask scale` measures: swapped connections held at once, echoing every 200 ms, then a connection storm on top; the agent's CPU, memory and descriptors.\n")?;
    let path = out_dir.join("REPORT.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    println!("{md}");
    step(&format!("report written to {} and {}", path.display(), out_dir.join("latency.svg").display()));
    Ok(())
}

/// The nscd section: `tssx-test-nss bench` (a getpwnam + getgrgid pair) in a private mount
/// namespace (its own `/run/nscd` and `/run/tssx`), alternating plain runs (a plain nscd, no
/// agent: glibc's socket path is fixed, so an agent watching it would see the plain runs too,
/// and its per-connection tracing is a real part of tssx's cost) and tssx runs (an agent
/// watching nscd's socket, nscd and the client under the hook); each run starts its own nscd
/// (and agent); medians compared.
fn nscd_section(bin: &Path, hook: &Path, dir: &Path) -> anyhow::Result<String> {
    let dirs = nscd::private_dirs();
    let ns = MountNamespace::create(&dirs.iter().map(String::as_str).collect::<Vec<_>>())?;
    let nss = bin.join("tssx-test-nss");
    let bench = |preload: Option<&Path>, count: u32| -> anyhow::Result<f64> {
        let mut cmd = ns.command(&nss);
        cmd.args(["bench", &count.to_string(), "root", "0"]);
        match preload {
            Some(so) => cmd.env("LD_PRELOAD", so),
            None => cmd.env_remove("LD_PRELOAD"),
        };
        let out = cmd.stderr(Stdio::inherit()).output().context("running tssx-test-nss bench")?;
        ensure!(out.status.success(), "tssx-test-nss bench: {}", out.status);
        // Microseconds per pair: per lookup is half of it.
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().context("tssx-test-nss bench printed no number")? / 2.0)
    };
    let mut table = Table::new(&["nscd configuration", "plain", "tssx", "tssx/plain", "within 1.1x", "tssx connections swapped"]);
    for (shared, count) in [(false, 2_000), (true, 2_000_000)] {
        let config = nscd::config(dir, shared)?;
        let (mut swapped, mut accepted) = (0, 0);
        let plain = || -> anyhow::Result<f64> {
            let nscd = Nscd::start(&ns, &config, None)?;
            let us = bench(None, count)?;
            nscd.stop()?;
            Ok(us)
        };
        let tssx = || -> anyhow::Result<f64> {
            let agent = Agent::spawn_wrapped(&ns.wrapper(), &bin.join("tssx-agent"), &[nscd::NSCD_SOCKET], None, &[])
                .context("starting tssx-agent for nscd in its namespace")?;
            let nscd = Nscd::start(&ns, &config, Some(hook))?;
            let us = bench(Some(hook), count)?;
            nscd.stop()?;
            let (a, s) = counts(&agent, nscd::NSCD_SOCKET);
            (accepted, swapped) = (accepted + a, swapped + s);
            let status = agent.stop();
            ensure!(status.success(), "nscd's tssx-agent exited with {status}");
            Ok(us)
        };
        let (p, t, noise) = alternate(NSCD_REPS, plain, tssx)?;
        let verdict = if t / p <= NSCD_GOAL {
            "yes"
        } else if t / p - 1.0 <= noise {
            "no (within noise)"
        } else {
            "**no**"
        };
        table.row([
            format!("shared {}: {count} getpwnam + getgrgid pairs (median of {NSCD_REPS})", if shared { "yes" } else { "no" }),
            format!("{p:.3} us"),
            format!("{t:.3} us"),
            ratio(t, p),
            verdict.into(),
            format!("{swapped}/{accepted}"),
        ]);
    }
    Ok(format!(
        "## nscd lookups\n\nTime per lookup (half a `getpwnam` + `getgrgid` pair) through glibc's nscd client, nscd with `server-user nobody`, `persistent no`, in a private mount namespace. Plain: no agent, neither nscd nor the client under the hook; tssx: an agent watching `{}`, nscd and the client under the hook. Runs alternate, each with a fresh nscd (and agent). Goal: within {NSCD_GOAL}x. glibc's client uses the socket from inside libc, so it never claims and no connection is swapped: the row measures what the agent and the hook cost nscd. With `shared yes` lookups read nscd's mapped cache and rarely touch the socket.\n\n{}",
        nscd::NSCD_SOCKET,
        table.render()
    ))
}

/// Name of the hooked proxy (its sockets are watched by the report's agent).
const NGINX_TSSX: &str = "nginx-tssx";

/// The nginx section: a plain and a hooked reverse proxy (front nginx to backend nginx on Unix
/// sockets, `master_process on`, `sendfile off`; pinned as `runs` says), wrk over loopback TCP
/// alternating between them in [`Paired`] runs; requests/s and the workers' CPU per request. A failure (a hang shows as wrk's timeouts) is reported
/// in the table rather than ending the report.
fn nginx_section(agent: &Agent, hook: &Path, dir: &Path, runs: NginxRuns) -> String {
    let reps = runs.pairs;
    let pinned = runs.pinned && thread::available_parallelism().is_ok_and(|n| n.get() > NGINX_WORKERS_CPU);
    let wrk_cpu = pinned.then_some(WRK_CPU);
    let mut table =
        Table::new(&["nginx reverse proxy, wrk -c 8, 4 KiB file", "plain", "tssx", "tssx/plain", "tssx upstream connections swapped"]);
    let mut pairs = Vec::new();
    let mut measure = || -> anyhow::Result<()> {
        let www = dir.join("www");
        std::fs::create_dir_all(&www)?;
        std::fs::write(www.join("4k.bin"), (0..4096u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>())?;
        let config = NginxConfig { master_process: true, sendfile: false, workers_cpu: pinned.then_some(NGINX_WORKERS_CPU) };
        let plain = NginxProxy::start(dir, "nginx-plain", &www, None, config)?;
        let tssx = NginxProxy::start(dir, NGINX_TSSX, &www, (!runs.unhooked).then_some(hook), config)?;
        for (upstream, name) in [(Upstream::Fresh, "(a) upstream connection per request"), (Upstream::Keep, "(b) upstream keepalive 16")] {
            let sock = NginxProxy::socket(dir, NGINX_TSSX, upstream);
            let swapped_before = agent.events_on("swapped", &sock).len();
            let connects = || {
                let stats = agent.stats();
                [&stats["connects"], &stats["quiet_connects"]].map(|n| n.as_u64().unwrap_or(0))
            };
            let connects_before = connects();
            let log_mark = tssx.access_log_mark(upstream);
            // Requests/s, and the CPU time of both nginx's workers per request (what the hook
            // and the kernel watcher cost them, less at the mercy of other load than requests/s).
            // (User and system time apart: what the hook costs in the program, and what the
            // kernel does for it, the watcher's eBPF programs included.)
            let run = |proxy: &NginxProxy, cpu_per_request: &mut [Vec<f64>; 3]| -> anyhow::Result<f64> {
                let cpu_before = proxy.workers_cpu();
                let load = wrk_on(&proxy.url(upstream, "4k.bin"), NGINX_CONNECTIONS, NGINX_SECONDS, wrk_cpu)?;
                ensure!(load.non_2xx == 0 && load.socket_errors.is_none() && load.requests > 0, "wrk: {load:?}");
                let used = proxy.workers_cpu() - cpu_before;
                for (list, time) in cpu_per_request.iter_mut().zip([used.total(), used.user, used.system]) {
                    list.push(time.as_secs_f64() * 1e6 / load.requests as f64);
                }
                Ok(load.rps)
            };
            let (mut cpu_plain, mut cpu_tssx) = (<[Vec<f64>; 3]>::default(), <[Vec<f64>; 3]>::default());
            let result = Paired::run(reps, || run(&plain, &mut cpu_plain), || run(&tssx, &mut cpu_tssx));
            // (The kernel's count of unreported connects reaches the agent every second.)
            thread::sleep(Duration::from_millis(1200));
            let [reported, unreported] = connects();
            let swapped = format!(
                "{}/{}; connects reported {}, left unreported on a quiet path {}",
                agent.events_on("swapped", &sock).len() - swapped_before,
                tssx.upstream_connections_since(upstream, log_mark, 1),
                reported.saturating_sub(connects_before[0]),
                unreported.saturating_sub(connects_before[1]),
            );
            match result {
                Ok(rps) => {
                    let [total_a, user_a, system_a] = cpu_plain;
                    let [total_b, user_b, system_b] = cpu_tssx;
                    let cpu = Paired { a: total_a, b: total_b };
                    table.row([
                        format!("{name}, requests/s (median of {reps} x {NGINX_SECONDS} s)"),
                        format!("{:.0}", median(rps.a.clone())),
                        format!("{:.0}", median(rps.b.clone())),
                        rps.ratio_summary(),
                        swapped,
                    ]);
                    for (what, times) in [
                        ("workers' CPU per request (median)", &cpu),
                        ("of which user", &Paired { a: user_a, b: user_b }),
                        ("of which system", &Paired { a: system_a, b: system_b }),
                    ] {
                        table.row([
                            format!("{name}, {what}"),
                            format!("{:.1} us", median(times.a.clone())),
                            format!("{:.1} us", median(times.b.clone())),
                            times.ratio_summary(),
                            String::new(),
                        ]);
                    }
                    let listed = |r: Vec<f64>| r.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
                    pairs.push(format!("{name}: requests/s {}; CPU per request {}", listed(rps.ratios()), listed(cpu.ratios())));
                }
                Err(e) => table.row([format!("{name}: **failed**: {e:#}"), String::new(), String::new(), String::new(), swapped]),
            }
        }
        plain.stop()?;
        tssx.stop()?;
        Ok(())
    };
    let failed = measure().err().map(|e| format!("\n**The nginx run failed**: {e:#}\n")).unwrap_or_default();
    let pinning = if pinned {
        format!(" (both workers pinned to CPU {NGINX_WORKERS_CPU}, wrk to CPU {WRK_CPU}: the workers' core is the bottleneck, so requests/s follows what a request costs them)")
    } else {
        String::new()
    };
    format!(
        "## nginx reverse proxy\n\nA front nginx on loopback TCP proxying to a backend nginx on Unix sockets (`master_process on`, one worker each, `sendfile off` in the backend), driven by `wrk -t1 -c{NGINX_CONNECTIONS}`{pinning}; plain: neither nginx under the hook; tssx: both, the agent watching the backend's sockets. Higher is better. Runs come in pairs, plain then tssx and tssx then plain in turn; the ratio column is the median of the pairs' ratios (tssx/plain within a pair), with their lower and upper quartiles. The last column counts the upstream connections swapped during the tssx runs against those that served requests in them (a keep-alive connection opened before the runs counts too), and the connects the kernel reported to the agent or left unreported (the front nginx's connections ending plain make it quiet: only its connects in probe windows are reported).\n\n{}\nEach pair's ratio, sorted:\n{}\n{failed}",
        table.render(),
        pairs.iter().map(|p| format!("- {p}\n")).collect::<String>()
    )
}

/// The 64-byte round trip while as many busy loops as the machine has cores compete for them:
/// the case where spinning for the peer's answer holds the core the peer needs (waits sleep at
/// once then, see the hook's `spin::cores_contended`). Plain and tssx alternate; medians.
fn contended_section(bin: &Path, hook: &Path, path: &str) -> String {
    const ROUND_TRIPS: u64 = 5_000;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let rtt = |preload: Option<&Path>| worker_seconds(bin, path, preload, "rtt", 64, ROUND_TRIPS).map(|s| s / ROUND_TRIPS as f64 * 1e6);
    let result = alternate(7, || rtt(None), || rtt(Some(hook)));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hogs.into_iter().for_each(|h| {
        let _ = h.join();
    });
    let mut table = Table::new(&["64 B round trip, all cores busy", "plain", "tssx", "tssx/plain"]);
    match result {
        Ok((p, t, _)) => table.row([
            format!("median of 7 x {ROUND_TRIPS} round trips, {cores} busy loops"),
            format!("{p:.2} us"),
            format!("{t:.2} us"),
            ratio(t, p),
        ]),
        Err(e) => table.row([format!("**failed**: {e:#}"), String::new(), String::new(), String::new()]),
    }
    format!(
        "## Round trip on a busy machine\n\nThe 64 B ping-pong while {cores} busy loops (one per core) compete with both ends for the cores. Spinning for an answer then holds a core the peer needs, so the hook's waits sleep at once and the doorbell wakes them, as a plain socket's reader sleeps and is woken. Lower is better.\n\n{}",
        table.render()
    )
}

/// `measured/baseline` as `1.23x`.
fn ratio(measured: f64, baseline: f64) -> String {
    format!("{:.2}x", measured / baseline)
}

/// A pass-through row: medians, overhead, verdict against the budget, and the no-hook runs'
/// own spread (interquartile range over the median): an overhead below it is not measurable.
fn overhead_row(name: &str, (plain, hooked, noise): (f64, f64, f64), unit: &str) -> [String; 6] {
    let over = hooked / plain - 1.0;
    let verdict = if over <= OVERHEAD_BUDGET {
        "yes"
    } else if over <= noise {
        "no (within noise)"
    } else {
        "**no**"
    };
    [
        name.into(),
        format!("{plain:.2} {unit}"),
        format!("{hooked:.2} {unit}"),
        format!("{:+.1}%", over * 100.0),
        verdict.into(),
        format!("{:.1}%", noise * 100.0),
    ]
}

/// Runs `a` and `b` alternately `reps` times each; returns their medians and the relative
/// interquartile spread of `a`'s runs.
fn alternate(
    reps: usize,
    mut a: impl FnMut() -> anyhow::Result<f64>,
    mut b: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64, f64)> {
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        xs.push(a()?);
        ys.push(b()?);
    }
    xs.sort_by(f64::total_cmp);
    let spread = (xs[xs.len() * 3 / 4] - xs[xs.len() / 4]) / xs[xs.len() / 2];
    Ok((median(xs), median(ys), spread))
}

/// Paired runs of `a` and `b`, `reps` of each, the order swapped every other pair (a b, b a, a
/// b, ...) so that neither always runs first: a machine that drifts (load, frequency, a
/// neighbour's work) weighs on both alike, and a ratio taken within each pair cancels what the
/// two runs shared.
struct Paired {
    a: Vec<f64>,
    b: Vec<f64>,
}

impl Paired {
    fn run(reps: usize, mut a: impl FnMut() -> anyhow::Result<f64>, mut b: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<Self> {
        let mut paired = Self { a: Vec::with_capacity(reps), b: Vec::with_capacity(reps) };
        for rep in 0..reps {
            if rep % 2 == 0 {
                paired.a.push(a()?);
                paired.b.push(b()?);
            } else {
                paired.b.push(b()?);
                paired.a.push(a()?);
            }
        }
        Ok(paired)
    }

    /// Each pair's b/a, sorted.
    fn ratios(&self) -> Vec<f64> {
        let mut r: Vec<f64> = self.a.iter().zip(&self.b).map(|(a, b)| b / a).collect();
        r.sort_by(f64::total_cmp);
        r
    }

    /// The pairs' ratios as "median (lower quartile-upper quartile)", e.g. `0.97x (0.95-0.99)`.
    fn ratio_summary(&self) -> String {
        let r = self.ratios();
        let at = |p: f64| r[(p * (r.len() - 1) as f64).round() as usize];
        let mid = (r[(r.len() - 1) / 2] + r[r.len() / 2]) / 2.0;
        format!("{mid:.2}x ({:.2}-{:.2})", at(0.25), at(0.75))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn machine_line(load: &str) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let commit = Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(workspace_root()).output();
    let commit = commit.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!(
        "Commit `{commit}`, kernel {}, {cpus} CPUs, load average {load}, generated at {secs} (Unix time) by `cargo xtask report`.",
        kernel.trim()
    )
}

/// A Markdown table.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()] }
    }

    fn row<const N: usize>(&mut self, cells: [String; N]) {
        self.rows.push(cells.into());
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (i, row) in self.rows.iter().enumerate() {
            out += &format!("| {} |\n", row.join(" | "));
            if i == 0 {
                out += &format!("|{}\n", "---|".repeat(row.len()));
            }
        }
        out
    }
}

/// (accepted, swapped) connections on `path` so far (the agent's stats count the accepts: their
/// trace lines are at debug level), after the trace settles.
fn counts(agent: &Agent, path: &str) -> (usize, usize) {
    thread::sleep(Duration::from_millis(300));
    let accepts = agent.try_stats().ok().and_then(|s| s["accepts"].as_u64()).unwrap_or(0) as usize;
    (accepts, agent.events_on("swapped", path).len())
}

/// `swapped/accepted` on `path` since `before` (from [`counts`]).
fn delta(agent: &Agent, path: &str, before: (usize, usize)) -> String {
    let now = counts(agent, path);
    format!("{}/{}", now.1 - before.1, now.0 - before.0)
}

pub(crate) fn preloaded(program: impl AsRef<std::ffi::OsStr>, preload: Option<&Path>) -> Command {
    let mut cmd = Command::new(program);
    match preload {
        Some(so) => cmd.env("LD_PRELOAD", so),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    cmd
}

/// A server in its own process group (PostgreSQL's backends go with it), killed with them if
/// still running when dropped.
struct Server(Process);

impl Server {
    fn start(cmd: Command) -> anyhow::Result<Self> {
        Ok(Self(Process::try_spawn_group(cmd)?))
    }

    /// Sends `signal` and checks the server exits cleanly within 30 s.
    fn stop(mut self, signal: i32) -> anyhow::Result<()> {
        let status = self.0.stop(signal, Duration::from_secs(30));
        let status = status.with_context(|| format!("{} did not exit within 30 s; stderr: {}", self.0.name(), self.0.stderr_text()))?;
        ensure!(status.success(), "{} exited with {status}; stderr: {}", self.0.name(), self.0.stderr_text());
        Ok(())
    }

    /// Waits up to 30 s for `ready`; fails at once if the server died.
    fn wait_ready(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let mut died = None;
        let became_ready = poll_until(Duration::from_secs(30), || {
            died = self.0.try_wait();
            died.is_some() || ready()
        });
        if let Some(status) = died {
            self.0.wait_closed(Duration::from_secs(1));
            anyhow::bail!("{what} exited early: {status}; stderr: {}", self.0.stderr_text());
        }
        ensure!(became_ready, "{what} not ready after 30 s");
        Ok(())
    }
}

/// One tssx-bench worker pair (`serve`/`drive`) on `path`: the client's seconds.
fn worker_seconds(bin: &Path, path: &str, preload: Option<&Path>, test: &str, size: usize, count: u64) -> anyhow::Result<f64> {
    let args = [path.to_owned(), test.to_owned(), size.to_string(), count.to_string()];
    worker_pair(&bin.join("tssx-bench"), preload, &args)
}

/// tssx-bench-setup: mean seconds per connection.
fn setup_seconds(setup_bin: &Path, path: &str, preload: Option<&Path>, count: u32, rounds: u32) -> anyhow::Result<f64> {
    worker_pair(setup_bin, preload, &[path.to_owned(), count.to_string(), rounds.to_string()])
}

/// The time from connect to `swapped` of the long-lived connections on `path` since `before`
/// (from [`counts`]): the agent's `migrated_after_us`, the later of the two ends' switches.
fn migration_section(agent: &Agent, path: &str, before: (usize, usize)) -> String {
    let mut after: Vec<u64> =
        agent.events_on("swapped", path).iter().skip(before.1).filter_map(|e| e["migrated_after_us"].as_u64()).collect();
    after.sort_unstable();
    let body = match (after.first(), after.last()) {
        (Some(min), Some(max)) => {
            let median = after[after.len() / 2];
            let within = after.iter().filter(|&&us| us <= MIGRATION_GOAL_US).count();
            let ms = |us: u64| format!("{:.2} ms", us as f64 / 1e3);
            let mut table = Table::new(&["connections", "min", "median", "max", "within 2 ms"]);
            table.row([after.len().to_string(), ms(*min), ms(median), ms(*max), format!("{within}/{}", after.len())]);
            table.render()
        }
        _ => "**No connection was swapped**: nothing to measure.\n".into(),
    };
    format!(
        "## Time from connect to swapped\n\nThe latency runs' connections (long-lived ping-pong): the time from the client's connect to the moment both ends had switched both directions onto the rings, as the agent's `swapped` line gives it (`migrated_after_us`). Goal: 2 ms or less.\n\n{body}"
    )
}

/// Starts `program serve ARGS`, waits for its `ready` line, runs `program drive ARGS`, and
/// parses the number the client prints.
fn worker_pair(program: &Path, preload: Option<&Path>, args: &[String]) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(&args[0]);
    let mut cmd = preloaded(program, preload);
    cmd.arg("serve").args(args);
    let mut server = Process::try_spawn(cmd)?;
    let ready = server.next_line(Duration::from_secs(30));
    ensure!(ready.as_deref() == Some("ready"), "{} serve said {ready:?}; stderr: {}", program.display(), server.stderr_text());
    let out = preloaded(program, preload).arg("drive").args(args).stderr(Stdio::inherit()).output()?;
    let server_status = server.wait(Duration::from_secs(600)).context("the bench server did not exit within 600 s")?;
    ensure!(
        out.status.success() && server_status.success(),
        "{} drive {args:?}: client {}, server {server_status}; server stderr: {}",
        program.display(),
        out.status,
        server.stderr_text()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().with_context(|| format!("{} printed {text:?}", program.display()))
}

/// dbus-daemon on a private bus at `sock` with the test's service and `bench.py` (all under the
/// hook if `preload`): microseconds per Echo call and per call passing an fd.
fn dbus_bench(dir: &Path, sock: &str, preload: Option<&Path>) -> anyhow::Result<(f64, f64)> {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/dbus");
    let address = format!("unix:path={sock}");
    let conf = dir.join(format!("{}.conf", Path::new(sock).file_name().and_then(|n| n.to_str()).unwrap_or("bus")));
    std::fs::write(
        &conf,
        format!(
            "<busconfig><type>session</type><listen>unix:path={sock}</listen><auth>EXTERNAL</auth><policy context=\"default\">\
             <allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/><allow own=\"*\"/><allow user=\"*\"/>\
             </policy></busconfig>"
        ),
    )?;
    let mut cmd = preloaded("dbus-daemon", preload);
    cmd.arg(format!("--config-file={}", conf.display())).args(["--nofork", "--nopidfile"]);
    let mut daemon = Server::start(cmd).context("starting dbus-daemon (cargo xtask setup installs it)")?;
    daemon.wait_ready("dbus-daemon", || Path::new(sock).exists())?;
    let mut cmd = preloaded("/usr/bin/python3", preload);
    cmd.arg(scripts.join("service.py")).arg(&address);
    let service = Server::start(cmd).context("starting the D-Bus service")?;
    service.0.expect_line("ready", Duration::from_secs(30));
    let out = preloaded("/usr/bin/python3", preload)
        .arg(scripts.join("bench.py"))
        .args([&address, "5000"])
        .stderr(Stdio::inherit())
        .output()
        .context("running bench.py")?;
    ensure!(out.status.success(), "bench.py failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(echo)), Some(Ok(fd))) = (numbers.next(), numbers.next()) else { anyhow::bail!("bench.py printed {text:?}") };
    let mut service = service;
    ensure!(service.0.wait(Duration::from_secs(30)).is_some_and(|s| s.success()), "the D-Bus service did not quit cleanly");
    daemon.stop(libc::SIGTERM)?;
    Ok((echo, fd))
}

/// One redis-benchmark result line.
struct RedisResult {
    test: String,
    rps: f64,
    p50_ms: f64,
}

/// Starts redis-server on `sock` (with the hook if `preload`), runs redis-benchmark (same hook
/// choice) with `clients` clients, stops the server.
fn redis_bench(dir: &Path, sock: &str, preload: Option<&Path>, clients: u32, requests: u32) -> anyhow::Result<Vec<RedisResult>> {
    let _ = std::fs::remove_file(sock);
    let mut cmd = preloaded("redis-server", preload);
    cmd.args(["--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--daemonize", "no"]);
    cmd.arg("--dir").arg(dir).arg("--logfile").arg(dir.join("redis.log"));
    let mut server = Server::start(cmd).context("starting redis-server (cargo xtask setup installs it)")?;
    server.wait_ready("redis-server", || Path::new(sock).exists())?;
    let out = preloaded("redis-benchmark", preload)
        .args(["-s", sock, "-c", &clients.to_string(), "-n", &requests.to_string(), "-t", "ping,set,get", "--csv"])
        .stderr(Stdio::inherit())
        .output()
        .context("running redis-benchmark")?;
    ensure!(out.status.success(), "redis-benchmark failed: {}", out.status);
    server.stop(libc::SIGTERM)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut results = Vec::new();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
        if let (Some(test), Some(rps), Some(p50)) = (cells.first(), cells.get(1), cells.get(4)) {
            results.push(RedisResult { test: (*test).to_owned(), rps: rps.parse()?, p50_ms: p50.parse()? });
        }
    }
    ensure!(results.len() == 4, "redis-benchmark gave {} results: {text}", results.len());
    Ok(results)
}

/// A throw-away PostgreSQL cluster owned by the `postgres` user.
struct Postgres {
    data: PathBuf,
}

impl Postgres {
    fn as_postgres(program: &str, preload: Option<&Path>) -> Command {
        let mut cmd = preloaded("setpriv", preload);
        cmd.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--", program]);
        cmd
    }

    fn init(dir: &Path) -> anyhow::Result<Self> {
        sh(Command::new("chown").arg("postgres:postgres").arg(dir))?;
        let data = dir.join("pgdata");
        let out = Self::as_postgres(&format!("{PG_BIN}/initdb"), None)
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .context("running initdb (cargo xtask setup installs postgresql)")?;
        ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(Self { data })
    }

    /// Starts the server with its socket in `sock_dir`, optionally loads the pgbench tables,
    /// runs `pgbench -S -c 1 -T 5`, stops the server; returns tps.
    fn bench(&self, sock_dir: &Path, preload: Option<&Path>, initialize: bool) -> anyhow::Result<f64> {
        std::fs::create_dir_all(sock_dir)?;
        sh(Command::new("chown").arg("postgres:postgres").arg(sock_dir))?;
        let sock_dir = sock_dir.to_str().context("non-UTF-8 dir")?;
        let mut cmd = Self::as_postgres(&format!("{PG_BIN}/postgres"), preload);
        cmd.arg("-D").arg(&self.data);
        cmd.args(["-k", sock_dir, "-p", PG_PORT, "-c", "listen_addresses=", "-c", "fsync=off", "-c", "shared_buffers=32MB"]);
        let mut server = Server::start(cmd).context("starting postgres")?;
        let client = |program: &str| {
            let mut cmd = preloaded(format!("{PG_BIN}/{program}"), preload);
            cmd.args(["-h", sock_dir, "-p", PG_PORT, "-U", "postgres"]);
            cmd
        };
        server.wait_ready("postgres", || client("pg_isready").arg("-q").status().is_ok_and(|s| s.success()))?;
        if initialize {
            let out = client("pgbench").args(["-i", "-s", "1", "-q", "postgres"]).output()?;
            ensure!(out.status.success(), "pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let out = client("pgbench").args(["-S", "-c", "1", "-T", "5", "postgres"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "pgbench -S failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
        server.stop(libc::SIGINT)?;
        let tps = text.lines().find_map(|l| l.strip_prefix("tps = ")).and_then(|l| l.split_whitespace().next());
        tps.with_context(|| format!("no tps in pgbench's output: {text}"))?.parse().context("parsing tps")
    }
}

/// A log-log plot of round-trip latency (us) by message size, plain vs tssx, as SVG.
fn latency_svg(points: &[(usize, f64, f64)]) -> String {
    let (w, h, left, right, top, bottom) = (740.0, 440.0, 90.0, 40.0, 40.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let xs: Vec<f64> = points.iter().map(|p| (p.0 as f64).log2()).collect();
    let (x0, x1) = (xs.iter().copied().fold(f64::MAX, f64::min), xs.iter().copied().fold(f64::MIN, f64::max).max(1.0));
    let all = points.iter().flat_map(|p| [p.1, p.2]).filter(|v| *v > 0.0);
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (y0, y1) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let px = |x: f64| left + (x - x0) / (x1 - x0).max(1e-9) * pw;
    let py = |us: f64| top + ph - (us.log10() - y0) / (y1 - y0) * ph;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">Round-trip latency by message size (lower is better)</text>\n",
        w / 2.0
    );
    // Grid and axis labels: decades on y, the measured sizes on x.
    let mut decade = y0;
    while decade <= y1 {
        let y = py(10f64.powf(decade));
        let label = 10f64.powf(decade);
        svg += &format!("<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n", left + pw);
        svg += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label} us</text>\n", left - 6.0, y + 4.0);
        decade += 1.0;
    }
    for (p, x) in points.iter().zip(&xs) {
        let label = if p.0 >= 1024 { format!("{} KiB", p.0 / 1024) } else { format!("{} B", p.0) };
        svg += &format!("<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"#eee\"/>\n", px(*x), top + ph);
        svg += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n", px(*x), top + ph + 18.0);
    }
    svg += &format!("<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n");
    svg += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">message size (log scale)</text>\n", left + pw / 2.0, h - 15.0);
    svg += &format!(
        "<text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">round trip (log scale)</text>\n",
        top + ph / 2.0
    );
    for (series, color, name) in [(1, "#c0392b", "plain Unix socket"), (2, "#2471a3", "tssx (shared memory)")] {
        let coords: Vec<(f64, f64)> = points.iter().zip(&xs).map(|(p, x)| (px(*x), py(if series == 1 { p.1 } else { p.2 }))).collect();
        let line: Vec<String> = coords.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        svg += &format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n", line.join(" "));
        for (x, y) in &coords {
            svg += &format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{color}\"/>\n");
        }
        let ly = top + 16.0 + 18.0 * (series as f64 - 1.0);
        svg += &format!(
            "<line x1=\"{0:.1}\" y1=\"{ly:.1}\" x2=\"{1:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\"/>\n",
            left + 12.0,
            left + 36.0
        );
        svg += &format!("<text x=\"{:.1}\" y=\"{:.1}\">{name}</text>\n", left + 42.0, ly + 4.0);
    }
    svg += "</svg>\n";
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_both_series_and_every_point() {
        let svg = latency_svg(&[(64, 30.0, 0.5), (1024, 35.0, 0.8), (65536, 40.0, 12.0)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 6);
        assert!(svg.contains("64 KiB") && svg.contains("64 B"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn pairs_alternate_their_order_and_compare_within_each_pair() {
        let order = std::cell::RefCell::new(String::new());
        let clock = std::cell::Cell::new(0.0);
        let step = |run: char| {
            order.borrow_mut().push(run);
            clock.set(clock.get() + 1.0);
            Ok(clock.get())
        };
        let paired = Paired::run(4, || step('a'), || step('b')).unwrap();
        assert_eq!(*order.borrow(), "abbaabba");
        // Values are the clock (1..=8): pairs (1, 2), (4, 3), (5, 6), (8, 7).
        assert_eq!(paired.a, [1.0, 4.0, 5.0, 8.0]);
        assert_eq!(paired.b, [2.0, 3.0, 6.0, 7.0]);
        assert_eq!(paired.ratios(), [0.75, 0.875, 1.2, 2.0]);
        assert_eq!(paired.ratio_summary(), "1.04x (0.88-1.20)");
    }

    #[test]
    fn median_and_table() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        let mut t = Table::new(&["a", "b"]);
        t.row(["1".to_owned(), "2".to_owned()]);
        assert_eq!(t.render(), "| a | b |\n|---|---|\n| 1 | 2 |\n");
    }
}

/// Clients, requests and value size of the memory measurement (issue 15: 200 redis-benchmark
/// clients doing 100-byte SETs).
const MEMORY_CLIENTS: u32 = 200;
const MEMORY_REQUESTS: u32 = 2_000_000;
const MEMORY_VALUE: u32 = 100;

/// `Shmem` of /proc/meminfo, in bytes.
fn shmem_bytes() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    let line = text.lines().find(|l| l.starts_with("Shmem:")).context("no Shmem line in /proc/meminfo")?;
    let kib: u64 = line.split_whitespace().nth(1).context("Shmem: no value")?.parse()?;
    Ok(kib * 1024)
}

/// What one memory run saw at its peak (the sample with the most live segments).
#[derive(Clone, Copy, Debug, Default)]
pub struct MemorySample {
    /// Growth of /proc/meminfo's Shmem over its value before the server started.
    pub shmem_growth: u64,
    /// Live segments (swapped connections) the agent held then (0 for a plain run).
    pub live_segments: u64,
    /// The agent's `resident_bytes` then (mincore of the segments).
    pub resident_bytes: u64,
    /// Requests per second redis-benchmark reported for SET.
    pub rps: f64,
}

impl MemorySample {
    /// Shmem growth per swapped connection (per client connection for a plain run).
    pub fn shmem_per_connection(&self) -> f64 {
        let connections = if self.live_segments == 0 { u64::from(MEMORY_CLIENTS) } else { self.live_segments };
        self.shmem_growth as f64 / connections as f64
    }
}

/// redis-server and `redis-benchmark -c 200 -t set -d 100` (both under the hook if `preload`)
/// on `sock`, sampling Shmem and the agent's stats every 50 ms while it runs.
fn memory_run(agent: Option<&Agent>, dir: &Path, sock: &str, preload: Option<&Path>) -> anyhow::Result<MemorySample> {
    let _ = std::fs::remove_file(sock);
    let before = shmem_bytes()?;
    let mut cmd = preloaded("redis-server", preload);
    cmd.args(["--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--daemonize", "no"]);
    cmd.args(["--maxclients", "1000"]);
    cmd.arg("--dir").arg(dir).arg("--logfile").arg(dir.join("redis.log"));
    let mut server = Server::start(cmd).context("starting redis-server (cargo xtask setup installs it)")?;
    server.wait_ready("redis-server", || Path::new(sock).exists())?;
    let mut bench = preloaded("redis-benchmark", preload)
        .args(["-s", sock, "-c", &MEMORY_CLIENTS.to_string(), "-n", &MEMORY_REQUESTS.to_string(), "-d", &MEMORY_VALUE.to_string()])
        .args(["-t", "set", "--csv"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running redis-benchmark")?;
    let mut peak = MemorySample::default();
    loop {
        if bench.try_wait()?.is_some() {
            break;
        }
        let shmem_growth = shmem_bytes()?.saturating_sub(before);
        let (live, resident) = match agent.map(Agent::try_stats) {
            Some(Ok(s)) => (s["live_segments"].as_u64().unwrap_or(0), s["resident_bytes"].as_u64().unwrap_or(0)),
            _ => (0, 0),
        };
        if live > peak.live_segments || (live == peak.live_segments && shmem_growth > peak.shmem_growth) {
            peak = MemorySample { shmem_growth, live_segments: live, resident_bytes: resident, rps: 0.0 };
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = bench.wait_with_output()?;
    ensure!(out.status.success(), "redis-benchmark failed: {}", out.status);
    server.stop(libc::SIGTERM)?;
    let text = String::from_utf8_lossy(&out.stdout);
    peak.rps = text.lines().skip(1).find_map(|l| l.split(',').nth(1).map(|c| c.trim_matches('"').parse().unwrap_or(0.0))).unwrap_or(0.0);
    Ok(peak)
}

/// The memory section: resident shared memory per swapped connection under request/response
/// traffic (the agent's `resident_bytes` per live segment, and /proc/meminfo's Shmem growth
/// per connection), against the plain socket's Shmem growth.
fn memory_section(agent: &Agent, hook: &Path, dir: &Path, tssx_sock: &str, plain_sock: &str) -> anyhow::Result<String> {
    let plain = memory_run(None, dir, plain_sock, None)?;
    let tssx = memory_run(Some(agent), dir, tssx_sock, Some(hook))?;
    let mut t = Table::new(&[
        "run",
        "swapped connections at the peak",
        "Shmem growth",
        "Shmem growth per connection",
        "resident per segment (agent, mincore)",
        "SET requests/s",
    ]);
    for (name, s) in [("plain", plain), ("tssx", tssx)] {
        t.row([
            name.into(),
            s.live_segments.to_string(),
            format!("{:.1} MiB", s.shmem_growth as f64 / (1 << 20) as f64),
            format!("{:.0} KiB", s.shmem_per_connection() / 1024.0),
            if s.live_segments > 0 { format!("{:.0} KiB", s.resident_bytes as f64 / s.live_segments as f64 / 1024.0) } else { "-".into() },
            format!("{:.0}", s.rps),
        ]);
    }
    Ok(format!(
        "## Memory\n\n`redis-benchmark -c {MEMORY_CLIENTS} -n {MEMORY_REQUESTS} -t set -d {MEMORY_VALUE}` (server and clients under the hook), sampled every 50 ms at the moment most connections were swapped: shared memory per swapped connection (rings start at `--ring-initial` and grow only when a writer finds its ring too small; goal at most 128 KiB).\n\n{}",
        t.render()
    ))
}

/// Runs only the memory comparison (`cargo xtask report --only memory`) and prints it: the same
/// workload with rings that never grow (`--ring-initial` = `--ring-size`, what every connection
/// held before rings grew) and with the default growing rings, one after the other.
pub fn memory_only(profile: &str) -> anyhow::Result<()> {
    let bin = profile_dir(profile);
    let hook = bin.join("libtssx_preload.so");
    let _lock = MachineLock::acquire_reporting(|| step("report: waiting for the machine-wide tssx test lock"))
        .context("locking the machine-wide tssx test lock")?;
    let dir = TempDir::create("report-memory")?;
    let sock = dir.socket("redis.sock");
    let plain_sock = dir.socket("redis-plain.sock");
    let mut t = Table::new(&[
        "rings",
        "swapped connections at the peak",
        "Shmem growth",
        "Shmem growth per connection",
        "resident per segment (agent, mincore)",
        "SET requests/s",
    ]);
    let plain = memory_run(None, &dir, &plain_sock, None)?;
    let mut per = Vec::new();
    for (name, args) in
        [("fixed 1 MiB (--ring-initial 1048576)", vec!["--ring-initial", "1048576"]), ("growing from 32 KiB (default)", vec![])]
    {
        step(&format!("report: memory with rings {name}"));
        let agent = Agent::spawn(&bin.join("tssx-agent"), &[&sock], None, &args).context("starting tssx-agent")?;
        let s = memory_run(Some(&agent), &dir, &sock, Some(&hook))?;
        let status = agent.stop();
        ensure!(status.success(), "tssx-agent exited with {status}");
        per.push(s.shmem_per_connection());
        t.row([
            name.into(),
            s.live_segments.to_string(),
            format!("{:.1} MiB", s.shmem_growth as f64 / (1 << 20) as f64),
            format!("{:.0} KiB", s.shmem_per_connection() / 1024.0),
            format!("{:.0} KiB", s.resident_bytes as f64 / s.live_segments.max(1) as f64 / 1024.0),
            format!("{:.0}", s.rps),
        ]);
    }
    t.row([
        "plain socket".into(),
        "-".into(),
        format!("{:.1} MiB", plain.shmem_growth as f64 / (1 << 20) as f64),
        format!("{:.0} KiB", plain.shmem_per_connection() / 1024.0),
        "-".into(),
        format!("{:.0}", plain.rps),
    ]);
    println!("{}\nShmem per connection, growing / fixed: {:.3}x\n\nBuild profile: {profile}.", t.render(), per[1] / per[0]);
    Ok(())
}
