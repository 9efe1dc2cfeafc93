//! `cargo xtask`: set-up, build, demo and test helpers for tssx.
//!
//! Every command runs `setup` first, which is idempotent: it installs what a fresh machine
//! lacks (Debian packages, the nightly `rust-src` component, `bpf-linker`, `cargo-deb`) and
//! mounts bpffs and tracefs. Run as root: the agent loads eBPF programs.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _};
use clap::{Parser, Subcommand};

mod hookcost;
mod recap;
mod report;
mod soak;
mod startcost;

/// bpf-linker release that works with the nightly's LLVM 22 on our machines.
const BPF_LINKER_VERSION: &str = "0.10.2";
/// cargo-deb release that `cargo xtask package` uses (builds with our stable rustc in ~50 s).
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Commands the tests use, and the Debian package that has each. The real-application tests
/// (tests/tests/apps/) and `cargo xtask report` need the servers and their clients; the
/// PostgreSQL server binaries live in bookworm's versioned directory, off PATH. nscd and nginx
/// are installed like the others, their services blocked from starting (the tests run private
/// instances in a private mount namespace or a temporary prefix); curl and wrk drive nginx.
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("setpriv", "util-linux"),
    ("unshare", "util-linux"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("redis-benchmark", "redis-tools"),
    ("memcached", "memcached"),
    ("/usr/lib/postgresql/15/bin/postgres", "postgresql"),
    ("/usr/lib/postgresql/15/bin/pgbench", "postgresql"),
    ("psql", "postgresql-client"),
    ("/usr/sbin/nscd", "nscd"),
    ("getent", "libc-bin"),
    ("/usr/sbin/nginx", "nginx-light"),
    ("curl", "curl"),
    ("wrk", "wrk"),
    // `cargo xtask report`: the hook's instructions per connection (callgrind).
    ("valgrind", "valgrind"),
    ("cc", "gcc"),
    // `tssx-agent install` strips an unstripped hook; the tests read ELF sections.
    ("strip", "binutils"),
    ("readelf", "binutils"),
    // `cargo xtask package` and its test.
    ("dpkg-deb", "dpkg"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("systemd-analyze", "systemd"),
    // The D-Bus test (tests/tests/apps/dbus.rs): a private bus, dbus-python clients (libdbus
    // passes fds with SCM_RIGHTS) on a GLib main loop, and GDBus's `gdbus`.
    ("dbus-daemon", "dbus-daemon"),
    ("gdbus", "libglib2.0-bin"),
    ("/usr/lib/python3/dist-packages/dbus/__init__.py", "python3-dbus"),
    ("/usr/lib/python3/dist-packages/gi/__init__.py", "python3-gi"),
    // Two language runtimes' event loops on Unix sockets (tests/tests/apps/runtimes.rs):
    // Node.js (libuv, and its cluster module) and Python's asyncio (Debian's python3).
    ("node", "nodejs"),
    ("/usr/bin/python3", "python3"),
    // X11 (tests/tests/apps/x11.rs): Xvfb and its clients (Xlib and xcb), and the test's own xcb
    // client that passes fds with MIT-SHM.
    ("Xvfb", "xvfb"),
    ("xdpyinfo", "x11-utils"),
    ("xwd", "x11-apps"),
    ("x11perf", "x11-apps"),
    ("/usr/include/xcb/xcbext.h", "libxcb1-dev"),
    // tmux (its clients pass their terminal's fds to the server with SCM_RIGHTS) and socat.
    ("tmux", "tmux"),
    ("socat", "socat"),
    // MariaDB on its Unix socket (tests/tests/apps/mariadb.rs): the server, the CLI,
    // mariadb-dump, mariadb-slap and mariadb-install-db.
    ("/usr/sbin/mariadbd", "mariadb-server"),
    ("mariadb-install-db", "mariadb-server"),
    ("mariadb", "mariadb-client"),
    ("mariadb-dump", "mariadb-client"),
    ("mariadb-slap", "mariadb-client"),
    // PHP-FPM behind nginx over FastCGI Unix sockets (tests/tests/apps/php_fpm.rs).
    ("/usr/sbin/php-fpm8.2", "php8.2-fpm"),
];
/// Debian's hook for `invoke-rc.d`: while it exits 101, package scripts start no services.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

#[derive(Parser)]
#[command(name = "cargo xtask", about = "tssx set-up, build, demo and test helpers (run as root)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (idempotent) and mount bpffs/tracefs.
    Setup,
    /// Set up, then build the agent, the eBPF programs and the test programs into
    /// target/debug/ (what the tests use), or with `--release` into target/release/ (optimized,
    /// the agent and the hook stripped: what to deploy and install).
    Build {
        /// Build the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build the release profile, start the agent on a demo socket, run a demo server
    /// and client on it, and show the agent's trace.
    Demo {
        /// Keep the agent running after the demo (until Ctrl-C).
        #[arg(long)]
        keep: bool,
        /// Use the debug build (target/debug/, the tests' build) instead of the release build.
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build, and run the agent with the given arguments (e.g. `-- --paths /run/a.sock`).
    Run {
        /// Build and run the release profile (target/release/) instead of the debug one.
        #[arg(long)]
        release: bool,
        /// Arguments for tssx-agent.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build (release), and run the benchmark (plain Unix socket vs tssx vs bare ring; a few
    /// minutes): prints a Markdown table with ratios measured in this one run.
    Bench,
    /// Set up, build, and write a performance report (real applications with and without tssx,
    /// the hook's pass-through cost, connection set-up, latency by size, the microbenchmarks) to
    /// target/report/REPORT.md and latency.svg. A few minutes; not part of `test`. Measures the
    /// release build (what a user deploys); `--debug` measures the debug build the tests use.
    Report {
        /// Measure the debug build (unoptimized hook and agent) instead of the release build.
        #[arg(long)]
        debug: bool,
        /// Run one section only and print it instead of writing the report (`nginx`; `memory`: rings
        /// that never grow against growing rings, one run; `hookcost`: the hook's instructions per
        /// short connection, under callgrind).
        #[arg(long, value_parser = ["nginx", "memory", "hookcost"])]
        only: Option<String>,
        /// With `--only nginx`: pairs of runs per row (default 8, even: each order equally
        /// often). More pairs narrow the median's spread on a noisy machine, at 6 s a pair.
        #[arg(long, requires = "only", value_parser = clap::value_parser!(u16).range(2..=200))]
        pairs: Option<u16>,
        /// With `--only nginx`: the agent watches a path nginx never uses, so the hooked nginx
        /// runs with the hook loaded and nothing watched (what the hook costs alone, apart from
        /// what watching the upstream sockets costs).
        #[arg(long, requires = "only")]
        unwatched: bool,
        /// With `--only nginx`: neither nginx under the hook, the agent still watching the second
        /// one's sockets (what watching costs: the kernel's programs, the agent's events); with
        /// `--unwatched` too, an A/A run: the two instances compared with nothing between them,
        /// so the ratio column shows what the instrument itself makes of two equal things.
        #[arg(long, requires = "only")]
        unhooked: bool,
        /// With `--only nginx`: leave the nginx workers and wrk wherever the scheduler puts
        /// them instead of pinning both workers to one core and wrk to another.
        #[arg(long, requires = "only")]
        unpinned: bool,
    },
    /// Set up, build the release hook, and measure what it adds to every process start:
    /// `/bin/true` with the hook preloaded against an empty preloaded library (about a
    /// minute; goal within 5%). Also part of `report`.
    StartCost,
    /// Set up, build, and run a randomized soak: first many sequences of the hook's differential
    /// test (no agent) and many rounds of the hostile-peer fuzzer, then, against a real agent, connections opened, used and closed in a
    /// loop with random sizes and kills; checks bytes, hangs and agent leaks. Not part of `test`.
    Soak {
        /// How long to keep opening connections.
        #[arg(long, default_value_t = 180)]
        seconds: u64,
        /// Seed of the random choices (printed by every run, to reproduce one).
        #[arg(long)]
        seed: Option<u64>,
        /// Sequences of the hook's differential test (plain pair vs swapped pair, no agent)
        /// run first, from a seed derived from `--seed`; 0 skips it.
        #[arg(long, default_value_t = 100_000)]
        differential: u64,
        /// Rounds of the hostile-peer fuzzer (`tests/tests/hostile.rs`: attackers that write
        /// every header field and ring byte of their segment against a hooked victim, as root
        /// and as `nobody`), run after the differential test from a seed derived from
        /// `--seed`; 0 skips it.
        #[arg(long, default_value_t = 200)]
        hostile: u64,
    },
    /// Set up, build the release profile, and hold many swapped connections at once, then a
    /// connection storm on top of them: the agent's CPU and memory at that scale, and checks
    /// that no hook stalls and the agent keeps answering (a minute or two; not part of `test`).
    Scale {
        /// Connections held open (and swapped) at once.
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        /// The agent's --ring-size (small: 10,000 connections of two 1 MiB rings pin 20 GiB).
        #[arg(long, default_value_t = 16384)]
        ring_size: u64,
        /// Length of the storm in seconds (0: no storm).
        #[arg(long, default_value_t = 10)]
        storm_seconds: u64,
        /// Storm client threads (each opens, uses and closes connections back to back).
        #[arg(long, default_value_t = 8)]
        storm_threads: u64,
        /// Use the debug build instead of the release build.
        #[arg(long)]
        debug: bool,
    },
    /// Set up, build the release profile and from it the Debian package (cargo-deb):
    /// target/debian/tssx_<version>-1_<arch>.deb with the agent (/usr/bin), the hook
    /// (/usr/lib/tssx), the systemd unit, /etc/default/tssx-agent and the README.
    Package,
    /// Set up, check formatting and clippy, build, build the Debian package, and run every test
    /// (unit and end-to-end; needs root). With extra arguments (a test filter), only those
    /// tests run (the package is built for them only if an argument names `package`).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    setup()?;
    match cmd {
        Cmd::Setup => Ok(()),
        Cmd::Build { release } => build_profile(profile(release)),
        Cmd::Demo { keep, debug } => {
            let profile = profile(!debug);
            build_profile(profile)?;
            demo(&profile_dir(profile), keep)
        }
        Cmd::Run { release, args } => {
            build_profile(profile(release))?;
            let status = Command::new(profile_dir(profile(release)).join("tssx-agent")).args(args).status()?;
            if !status.success() {
                bail!("tssx-agent exited with {status}");
            }
            Ok(())
        }
        Cmd::StartCost => start_cost(),
        Cmd::Bench => {
            // What a user deploys: the release build (the tests' debug build would measure an
            // unoptimized hook and ring).
            build_profile("release")?;
            bench(&profile_dir("release"))
        }
        Cmd::Report { debug, only, pairs, unwatched, unhooked, unpinned } => {
            ensure!(
                (pairs.is_none() && !unwatched && !unhooked && !unpinned) || only.as_deref() == Some("nginx"),
                "--pairs, --unwatched, --unhooked and --unpinned go with --only nginx"
            );
            let profile = if debug { "debug" } else { "release" };
            build_profile(profile)?;
            match only.as_deref() {
                Some("nginx") => {
                    let pairs = pairs.map_or(report::NGINX_REPS, |p| usize::from(p).next_multiple_of(2));
                    report::nginx_only(profile, report::NginxRuns { pairs, unwatched, unhooked, pinned: !unpinned })
                }
                Some("memory") => report::memory_only(profile),
                Some("hookcost") => report::hook_cost_only(profile),
                _ => report::report(profile),
            }
        }
        Cmd::Soak { seconds, seed, differential, hostile } => {
            build()?;
            let seed = soak::seed(seed);
            soak::differential(seed, differential)?;
            soak::hostile(seed, hostile)?;
            soak::run(&target_dir(), seconds, seed)
        }
        Cmd::Package => package().map(drop),
        Cmd::Scale { connections, ring_size, storm_seconds, storm_threads, debug } => {
            let profile = profile(!debug);
            build_profile(profile)?;
            tssx_tests::scale::run(
                &profile_dir(profile),
                &tssx_tests::scale::Scale { connections, ring_size, storm_seconds, storm_threads },
            )
        }
        Cmd::Test { args } => {
            if args.is_empty() {
                lint()?;
            }
            build()?;
            // tests/tests/package.rs installs this .deb (TSSX_DEB); about 1.5 min for a cold
            // release build on 2 cores, seconds when it is up to date.
            let deb = if args.is_empty() || args.iter().any(|a| selects_package_tests(a)) { Some(package()?) } else { None };
            let cargo_bin = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut test = Command::new(cargo_bin);
            test.current_dir(workspace_root()).args(["test", "--workspace", "--exclude", "tssx-ebpf", "--no-fail-fast"]).args(&args);
            if let Some(deb) = deb {
                test.env("TSSX_DEB", deb);
            }
            recap::run_tests(&mut test)?;
            if args.is_empty() {
                loom()?;
            }
            Ok(())
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_owned()
}

fn target_dir() -> PathBuf {
    profile_dir("debug")
}

/// The tests in tests/tests/package.rs (keep in step): they install the package that
/// `cargo xtask test` builds first, for a full run or a filter that may select them.
const PACKAGE_TESTS: &[&str] = &[
    "package_holds_the_agent_the_hook_the_unit_the_defaults_and_the_readme",
    "package_installs_with_dpkg_in_a_private_namespace_as_a_working_agent",
];

/// Whether the `cargo test` argument `arg` may select a package test: `--test package`, or a
/// name filter that is part of one's name (cargo's filters match substrings).
fn selects_package_tests(arg: &str) -> bool {
    arg == "package" || (!arg.starts_with('-') && PACKAGE_TESTS.iter().any(|t| t.contains(arg)))
}

/// `release` or `debug`.
fn profile(release: bool) -> &'static str {
    if release {
        "release"
    } else {
        "debug"
    }
}

/// `target/<profile>/` (or under `CARGO_TARGET_DIR`).
fn profile_dir(profile: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target")).join(profile)
}

fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// Runs a command, failing with its name if it fails.
fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// True if `cmd` runs and exits 0 (output discarded).
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo(args: &[&str], extra: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    sh(Command::new(cargo).current_dir(workspace_root()).args(args).args(extra))
}

fn setup() -> anyhow::Result<()> {
    // Debian packages for the commands the tests use.
    let mut missing: Vec<&str> = DEBIAN_TOOLS
        .iter()
        .filter(|(tool, _)| !succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")])))
        .map(|&(_, pkg)| pkg)
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        step(&format!("installing Debian packages: {}", missing.join(" ")));
        sh(Command::new("apt-get").arg("update").arg("-q"))?;
        // The servers must not start on their default sockets and ports: the tests start their
        // own instances on private sockets. A policy-rc.d that says "no" (101) does that, for
        // the length of the install, unless the machine already has a policy of its own.
        let own_policy = !Path::new(POLICY_RC_D).exists();
        if own_policy {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::write(POLICY_RC_D, "#!/bin/sh\n# cargo xtask setup: no service starts while it installs packages\nexit 101\n")
                .with_context(|| format!("writing {POLICY_RC_D}"))?;
            std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
        }
        let installed = sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"));
        if own_policy {
            std::fs::remove_file(POLICY_RC_D).with_context(|| format!("removing {POLICY_RC_D}"))?;
        }
        installed?;
    }
    // rustfmt and clippy for the checks `cargo xtask test` runs first.
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        if !succeeds(Command::new("cargo").args([probe, "--version"])) {
            step(&format!("installing the {component} component"));
            sh(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    // Nightly rust-src, for -Z build-std=core when building the eBPF programs.
    let installed = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))
        .context("the nightly toolchain is missing: `rustup toolchain install nightly` (it is preinstalled on our machines)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        step("installing the nightly rust-src component");
        sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    // bpf-linker, built with the nightly so that it uses the nightly's own LLVM.
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !version.contains(&format!(" {BPF_LINKER_VERSION}")) {
        step(&format!("installing bpf-linker {BPF_LINKER_VERSION} (about 80 s)"));
        sh(Command::new("cargo").args(["+nightly", "install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"]))?;
    }
    // cargo-deb, for `cargo xtask package` (and the package test that `cargo xtask test` runs).
    let version = output(Command::new("cargo").args(["deb", "--version"])).unwrap_or_default();
    if !version.contains(&format!(" {CARGO_DEB_VERSION}")) {
        step(&format!("installing cargo-deb {CARGO_DEB_VERSION} (about 50 s)"));
        sh(Command::new("cargo").args(["install", "cargo-deb", "--version", CARGO_DEB_VERSION, "--locked", "--force"]))?;
    }
    // bpffs and tracefs (the agent mounts them too; the unit tests read tracefs).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        for (fstype, target) in [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing")] {
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
            let mounted = mounts.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&target) && f.get(2) == Some(&fstype)
            });
            if !mounted {
                step(&format!("mounting {fstype} on {target}"));
                sh(Command::new("mount").args(["-t", fstype, fstype, target]))?;
            }
        }
    } else {
        step("not root: skipping bpffs/tracefs mounts (the agent and the tests need root)");
    }
    Ok(())
}

/// The conventions CI enforces before any test runs: rustfmt's layout (rustfmt.toml) and a
/// clippy without warnings on every crate and target (the eBPF crate builds for its own target
/// only, through the agent's build script).
fn lint() -> anyhow::Result<()> {
    step("cargo fmt --check");
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    step("cargo clippy --all-targets -- -D warnings");
    cargo(&["clippy", "--quiet", "--workspace", "--exclude", "tssx-ebpf", "--all-targets", "--", "-D", "warnings"], &[])
}

/// The loom models of the ring protocol and of the leases the hook's fd table hands out: the
/// real code compiled against loom's atomics (its own target dir, since `--cfg tssx_loom`
/// rebuilds every crate; no eBPF needed).
fn loom() -> anyhow::Result<()> {
    step("loom model check of the ring protocol and the fd table's leases");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    sh(Command::new(cargo)
        .current_dir(workspace_root())
        .args(["test", "--release", "-p", "tssx-shm", "--test", "ring_loom", "--test", "lease_loom"])
        .env("RUSTFLAGS", "--cfg tssx_loom")
        .env("TSSX_SKIP_EBPF", "1")
        .env("CARGO_TARGET_DIR", workspace_root().join("target").join("loom")))
}

fn build() -> anyhow::Result<()> {
    build_profile("debug")
}

/// Builds the agent (with its eBPF programs), the hook and the test programs in `profile`
/// (`debug` or `release`), into `target/<profile>/`.
fn build_profile(profile: &str) -> anyhow::Result<()> {
    step(&format!("building (eBPF programs, agent, preload hook, test programs; {profile} profile)"));
    let mut args = vec!["build", "--quiet", "-p", "tssx-agent", "-p", "tssx-preload", "-p", "tssx-tests"];
    if profile == "release" {
        args.push("--release");
    }
    cargo(&args, &[])
}

/// Builds the release profile, then the Debian package from it (`cargo deb --no-build`: the
/// metadata is `[package.metadata.deb]` in tssx-user/agent/Cargo.toml); returns the .deb's path.
fn package() -> anyhow::Result<PathBuf> {
    build_profile("release")?;
    step("packaging (cargo deb -p tssx-agent --no-build)");
    let out_dir = profile_dir("debian");
    let cargo_bin = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo_bin)
        .current_dir(workspace_root())
        .args(["deb", "-p", "tssx-agent", "--no-build", "--output"])
        .arg(&out_dir)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo deb (`cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", out.status);
    }
    // cargo-deb prints the path of the package it wrote.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout.lines().rev().map(str::trim).find(|l| l.ends_with(".deb")).context("cargo deb printed no .deb path")?;
    let deb = PathBuf::from(deb);
    ensure!(deb.is_file(), "cargo deb said it wrote {}, which is not there", deb.display());
    println!("{}", deb.display());
    Ok(deb)
}

/// Starts the agent on a demo socket, runs the demo server and client, shows the trace; the
/// programs are those in `bin` (`target/release/` or `target/debug/`).
fn demo(bin: &Path, keep: bool) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join("tssx-demo");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("demo.sock");
    let path = path.to_str().context("non-UTF-8 temp dir")?.to_owned();
    step(&format!("starting tssx-agent --paths {path},@tssx-demo (state dir /run/tssx, where the hook looks)"));
    // The per-connection `connect`/`accept` lines are at debug level: the agent's own debug
    // lines (not aya's loader details, which `-v` shows too).
    let mut agent = Command::new(bin.join("tssx-agent"))
        .env("TSSX_LOG", "info,tssx_agent=debug")
        .args(["--paths", &format!("{path},@tssx-demo")])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting tssx-agent")?;
    // Echo the agent's lines; tell the main thread when it is ready.
    let (ready_tx, ready_rx) = mpsc::channel();
    let stdout = agent.stdout.take().expect("piped");
    let echo = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("  agent | {line}");
            if line.contains("ready:") {
                let _ = ready_tx.send(());
            }
        }
    });
    if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = agent.kill();
        bail!("the agent did not become ready (see its output above; is another tssx-agent running?)");
    }
    let hook = bin.join("libtssx_preload.so");
    for (label, address) in [("watched path", path.as_str()), ("watched abstract name", "@tssx-demo")] {
        step(&format!("demo: echo server + 3 client connections on the {label} {address} (no hook: traced only)"));
        let mut server = Command::new(bin.join("tssx-test-server"))
            .args([address, "3"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the demo server")?;
        thread::sleep(Duration::from_millis(200));
        sh(Command::new(bin.join("tssx-test-client")).args([address, "3"]).stdout(Stdio::null()))?;
        sh_wait(&mut server)?;
    }
    step(&format!("demo: 256 MiB each way between two unmodified programs under LD_PRELOAD={}", hook.display()));
    let mut server = Command::new(bin.join("tssx-test-stream"))
        .args(["server", &path, "268435456", "1"])
        .env("LD_PRELOAD", &hook)
        .stdout(Stdio::null())
        .spawn()
        .context("starting the stream server")?;
    thread::sleep(Duration::from_millis(300));
    sh(Command::new(bin.join("tssx-test-stream")).args(["client", &path, "268435456", "1"]).env("LD_PRELOAD", &hook))?;
    sh_wait(&mut server)?;
    thread::sleep(Duration::from_millis(1500)); // the agent frees the segment on its next sweep
    step("demo: a client on an unwatched path (no trace expected)");
    let other = dir.join("unwatched.sock");
    let other = other.to_str().context("non-UTF-8")?;
    let mut server = Command::new(bin.join("tssx-test-server")).args([other, "1"]).stdout(Stdio::null()).spawn()?;
    thread::sleep(Duration::from_millis(200));
    sh(Command::new(bin.join("tssx-test-client")).args([other, "1"]).stdout(Stdio::null()))?;
    sh_wait(&mut server)?;
    thread::sleep(Duration::from_millis(500));
    if keep {
        step("agent keeps running: press Ctrl-C to stop it");
        let status = agent.wait()?;
        let _ = echo.join();
        return if status.success() { Ok(()) } else { bail!("agent exited with {status}") };
    }
    step("stopping the agent (SIGTERM)");
    sh(Command::new("kill").args(["-TERM", &agent.id().to_string()]))?;
    let status = agent.wait()?;
    let _ = echo.join();
    if !status.success() {
        bail!("agent exited with {status}");
    }
    step("demo done: the trace shows connect/accept on the watched addresses only, the swap, and the bytes moved through shared memory");
    Ok(())
}

/// Runs tssx-bench with an agent watching the bench socket (default state dir, for the hook).
fn bench(bin: &Path) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join("tssx-bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench.sock");
    let path = path.to_str().context("non-UTF-8 temp dir")?.to_owned();
    let mut agent =
        Command::new(bin.join("tssx-agent")).args(["--paths", &path]).stdout(Stdio::piped()).spawn().context("starting tssx-agent")?;
    let mut lines = BufReader::new(agent.stdout.take().expect("piped")).lines();
    if !lines.any(|l| l.is_ok_and(|l| l.contains("ready:"))) {
        bail!("the agent did not start");
    }
    // Keep draining the agent's trace so it never blocks on a full pipe.
    let drain = thread::spawn(move || lines.for_each(drop));
    step("benchmark: plain Unix socket vs tssx (hook) vs bare ring, one run");
    let result = sh(Command::new(bin.join("tssx-bench")).args(["--preload"]).arg(bin.join("libtssx_preload.so")).args(["--path", &path]));
    sh(Command::new("kill").args(["-TERM", &agent.id().to_string()]))?;
    agent.wait()?;
    let _ = drain.join();
    result?;
    step("benchmark: the sleeping half of a wait, doorbell (socket byte) vs futex, one run");
    sh(&mut Command::new(bin.join("tssx-bench-wake")))
}

/// Builds the release hook and prints its start cost (see [`startcost`]).
fn start_cost() -> anyhow::Result<()> {
    sh(Command::new(env!("CARGO")).current_dir(workspace_root()).args(["build", "--release", "-p", "tssx-preload"]))?;
    step("process start: the release hook vs an empty preloaded library (alternating batches)");
    let dir = std::env::temp_dir().join("tssx-start-cost");
    let cost = startcost::measure(&profile_dir("release").join("libtssx_preload.so"), &dir)?;
    println!(
        "/bin/true, CPU time per run: empty library {:.0} us, hook {:.0} us: {:.3}x (goal {:.2}x); wall time {:.0} us vs {:.0} us",
        cost.empty_cpu_us,
        cost.hook_cpu_us,
        cost.ratio(),
        startcost::GOAL,
        cost.empty_wall_us,
        cost.hook_wall_us
    );
    Ok(())
}

fn sh_wait(child: &mut std::process::Child) -> anyhow::Result<()> {
    let status = child.wait()?;
    if !status.success() {
        bail!("demo program failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_tests_are_the_ones_in_package_rs() {
        let source = std::fs::read_to_string(workspace_root().join("tests/tests/package.rs")).unwrap();
        let names: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("fn "))
            .filter_map(|l| l.strip_suffix("() {"))
            .filter(|n| n.starts_with("package_"))
            .collect();
        assert_eq!(names, PACKAGE_TESTS);
        for filter in ["package", "package_installs", "dpkg", "holds_the"] {
            assert!(selects_package_tests(filter), "{filter}");
        }
        for filter in ["conformance", "--test", "-q", "swap"] {
            assert!(!selects_package_tests(filter), "{filter}");
        }
    }
}
