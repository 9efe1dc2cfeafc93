//! `tssx-agent`: watches Unix socket paths with eBPF, traces every connection on them, and hands
//! the two ends of each connection whose hooks claim it one shared-memory segment.

use std::{path::PathBuf, process::ExitCode};

use anyhow::bail;
use clap::{Parser, ValueEnum};
use tssx_agent::{
    agent::{self, AgentConfig},
    install,
    loader::WatchMode,
    paths::{self, WatchedPath},
    state::{self, DEFAULT_STATE_DIR},
};

/// Transparent shared-memory socket swapping: the agent.
///
/// Loads eBPF programs that watch every Unix connect to the given socket paths (a
/// cgroup/connect_unix hook; with --syscall-tracepoints, tracepoints on bind, listen, connect
/// and accept instead) and traces the connections on them. Processes running with the preload hook (libtssx_preload.so) claim
/// their connections on those paths once they lived --claim-after; the agent checks each claim
/// against the kernel, pairs the two ends and hands both a shared-memory segment, onto which
/// the hooks move the connection in flight (traced: paired, swapped, closed). Runs until
/// SIGINT or SIGTERM, then detaches everything and exits 0. Must run as root.
#[derive(Parser, Debug)]
#[command(name = "tssx-agent", version, about, long_about)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(
    after_help = "Example:\n  sudo tssx-agent --paths /var/run/nscd/socket,/run/redis.sock\n  sudo tssx-agent --paths @my-abstract-socket --log-format json"
)]
struct Cli {
    /// Unix socket addresses to watch: paths, directories (ending in /), globs, @abstract
    /// names (comma-separated; the option may be repeated).
    #[arg(short, long = "paths", value_name = "PATTERN[,PATTERN...]", value_delimiter = ',', required = true, num_args = 1..)]
    #[arg(long_help = PATHS_HELP)]
    paths: Vec<WatchedPath>,

    /// Format of the trace lines on standard output.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Directory for the agent's lock and published state (the preload hook looks in the
    /// default one).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Capacity of each of a connection's two shared-memory rings, in bytes (a power of two).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = parse_ring_size)]
    ring_size: usize,

    /// Capacity each ring starts with, in bytes (a power of two; clamped to --ring-size). A
    /// writer that finds its ring too small doubles it, up to --ring-size; pages a ring never
    /// used stay unallocated, so request/response connections hold a few pages. Equal to
    /// --ring-size: rings that never grow.
    #[arg(long, value_name = "BYTES", default_value_t = tssx_common::segment::DEFAULT_INITIAL_RING_CAPACITY, value_parser = parse_ring_size)]
    ring_initial: usize,

    /// Most connections swapped at once (live shared-memory segments); beyond it a connection
    /// stays plain, traced as `not swapped`. Shared memory is at most N * (2 * ring size + 4 KiB).
    /// Default: as many as fill a quarter of the machine's memory (MemTotal) and fit the fd
    /// limit (5 per connection; raised up to fs.nr_open), at least 16 (the ready trace line
    /// and `status --stats` show it): on 24 GiB, about 3,000 with 1 MiB rings, 175,000 with 16 KiB.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: Option<u32>,

    /// How long a connection lives (or how many bytes, 64 KiB, it moves) before its hooks claim
    /// shared memory for it: `0`, or a number with a unit (ns, us, ms, s), e.g. 500us, 1ms, 2s.
    /// Besides its age, a connection must have turned into a conversation (a second exchange,
    /// or 16 one-way writes): one request and its answer never claim. `0` claims at once,
    /// whatever the traffic.
    /// Connections always start on the plain socket and migrate onto the rings in flight; a
    /// shorter time migrates more connections (short-lived ones too), each paying a claim (a
    /// control round trip, a segment, the migration), a longer one leaves short connections
    /// plain at no cost. Published for the hooks in <state-dir>/paths.
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_claim_after)]
    claim_after: std::time::Duration,

    /// After this many connections of one watched path (one listener, for a server) ended
    /// plain in a row, each within 100 ms of the one before, a hook tracks only that path's
    /// connections made in a probe window (about 4 ms in 67): untracked, a connection stays
    /// plain and costs the hook next to nothing, the same as on a path nobody watches. A probe
    /// that moves onto the rings, or a second without a tracked connection ending plain, makes
    /// every connection tracked again. For a proxy that opens a connection per request; a long
    /// conversation opened on such a path stays plain unless it is a probe. `0`: never (every
    /// connection tracked); `--claim-after 0` never cools either. Published for the hooks in
    /// <state-dir>/paths.
    #[arg(long, value_name = "N", default_value_t = tssx_agent::state::DEFAULT_COOL_AFTER)]
    cool_after: u32,

    /// Watch bind, listen, connect, accept and close with syscall tracepoints instead of the
    /// connect hook: every watched bind, listen, connect and accept gets a trace line with its
    /// fd (connect and accept at debug level, -v), and listeners are tracked by the kernel
    /// side. The price: while any syscall tracepoint is attached, every system call of every
    /// process on the machine takes the kernel's slower traced path (measured: about 4% more
    /// CPU per request for nginx). Without it (the default), a cgroup/connect_unix program
    /// (Linux 6.7+, cgroup v2) sees each connect, claims' server ends are checked with
    /// sock_diag, and no system call pays; a kernel without that hook gets the tracepoints,
    /// with a warning.
    #[arg(long)]
    syscall_tracepoints: bool,

    /// (Testing) threads with an id below N park their watched calls in the eBPF per-thread
    /// array, the others in its hash map (default: one slot per possible thread id).
    #[arg(long, value_name = "N", hide = true, value_parser = clap::value_parser!(u32).range(1..))]
    parked_slots: Option<u32>,

    /// Also print debug details (e.g. full verifier logs, and one line per connection that
    /// stayed plain because it was short-lived or its peer never claimed).
    #[arg(short, long)]
    verbose: bool,

    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Show the watched patterns and list the live connections of the running agent: both
    /// ends, the socket's path, the state (migrating,
    /// swapped, plain, closed), the byte positions at which each direction moved onto the
    /// rings, and the bytes moved each way through shared memory.
    Status {
        /// State directory of the agent to ask.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Print one JSON object per connection instead of a table.
        #[arg(long)]
        json: bool,
        /// Print the agent's counters and resource counts instead (one JSON object: the watched
        /// patterns, claims,
        /// held claims, pairs, swaps, connections given up or short-lived, live segments,
        /// limits, control connections, eBPF map entries).
        #[arg(long)]
        stats: bool,
    },
    /// Install the hook system-wide: copy it to a stable path and add that path to
    /// /etc/ld.so.preload (opt-in; idempotent).
    #[command(long_about = INSTALL_HELP)]
    Install {
        /// The hook to install (default: libtssx_preload.so next to this tssx-agent, else in
        /// ../lib/tssx/ from it, where the Debian package puts it).
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        #[command(flatten)]
        target: InstallTarget,
    },
    /// Remove the system-wide hook: delete exactly its line from /etc/ld.so.preload, then
    /// the installed copy.
    Uninstall {
        #[command(flatten)]
        target: InstallTarget,
    },
}

/// Where `install`/`uninstall` put the hook and which preload file they edit.
#[derive(clap::Args, Debug)]
struct InstallTarget {
    /// Directory for the installed copy of the hook.
    #[arg(long, value_name = "DIR", default_value = install::DEFAULT_LIB_DIR)]
    lib_dir: PathBuf,
    /// The loader's preload file (change it only for a chroot or image being prepared).
    #[arg(long, value_name = "FILE", default_value = install::DEFAULT_PRELOAD_FILE)]
    preload_file: PathBuf,
}

const PATHS_HELP: &str = "\
Unix socket addresses to watch, comma-separated (the option may be repeated). Each is one of:
  /run/redis.sock      an absolute path (at most 107 bytes)
  /run/php/            a directory (ending in /): every socket under it, at any depth
  /run/php/*.sock      a glob: * (any run of bytes) and ? (one byte) never match /,
  /var/run/postgresql/.s.PGSQL.*
                       [abc] [a-z] [!abc] match one byte of (not of) a set, \\ escapes the next byte;
                       unlike the shell, * also matches a leading dot
  /run/user/*/         a glob ending in /: every socket under each directory it matches
  @name                an abstract socket
  @name*               every abstract name starting with name (* and ? match any byte there)
Patterns are absolute and written in normal form (no . or .. components, no //); ** is refused
(a directory covers every depth). A program that binds or connects with a relative address
(e.g. ./app.sock after chdir) is matched on the absolute path it names, resolved against its
working directory. When several patterns match a socket, the trace names the most specific: an
exact path, else the one with the longest literal prefix. The patterns are published for the
hooks in <state-dir>/paths; `tssx-agent status` shows them.";

const INSTALL_HELP: &str = "\
Install the hook system-wide: copy libtssx_preload.so to <lib-dir>/libtssx_preload.so (mode 0644,
replaced by rename so running processes keep their copy), check that it loads, and add that path
as a line of its own to /etc/ld.so.preload (rewritten atomically; other lines are kept). Running
it twice changes nothing. Undo with `tssx-agent uninstall` (same --lib-dir).

RISK: every dynamically linked program started afterwards, root's and setuid ones included,
loads the hook. A hook that crashes or misbehaves breaks every new process, possibly including
the shell and sudo you would use to undo it. The hook passes everything through unless a
tssx-agent is running and the socket path is watched, but try it with LD_PRELOAD first.
Recovery: from a shell that still works (keep one open), `rm /etc/ld.so.preload` or run
`tssx-agent uninstall`; programs started with an empty preload (e.g. a statically linked
busybox, or booting with init=/bin/sh and removing the line) are not affected.";

fn parse_claim_after(s: &str) -> Result<std::time::Duration, String> {
    state::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_ring_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    let (min, max) = (tssx_common::segment::MIN_RING_CAPACITY.max(4096), tssx_common::segment::MAX_RING_CAPACITY);
    if !n.is_power_of_two() || n < min || n > max {
        return Err(format!("ring size must be a power of two between {min} and {max} bytes"));
    }
    Ok(n)
}

/// How often `status` asks a busy agent that closed its request unread.
const STATUS_TRIES: u32 = 50;

/// `tssx-agent status`: asks the agent on its control socket and prints the answer.
fn status(state_dir: &std::path::Path, json: bool, stats: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let path = state_dir.join(tssx_common::control::CONTROL_SOCKET);
    let request = if stats { tssx_common::control::Request::stats() } else { tssx_common::control::Request::status() };
    // A busy agent (serving as many control connections as it serves at once, e.g. in a storm
    // of claims) closes the request unread: asked again, a few times, before giving up.
    let mut tries = 0;
    let answer = loop {
        let mut stream = std::os::unix::net::UnixStream::connect(&path)
            .with_context(|| format!("no tssx-agent is answering on {} (is it running?)", path.display()))?;
        stream.write_all(&request.encode())?;
        let mut text = String::new();
        // Unread, the request makes the agent's close a reset; `--stats` always has an answer.
        let dropped = match std::io::Read::read_to_string(&mut stream, &mut text) {
            Ok(_) => stats && text.is_empty(),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) => return Err(e).context("reading the agent's answer"),
        };
        if !dropped {
            break text;
        }
        tries += 1;
        anyhow::ensure!(tries < STATUS_TRIES, "the agent on {} is too busy to answer (asked {STATUS_TRIES} times)", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    if stats {
        print!("{answer}");
        return Ok(());
    }
    let mut count = 0;
    if !json {
        // The patterns the agent published for the hooks (its settings lines start with #).
        let published = std::fs::read_to_string(state_dir.join(state::PATHS_FILE)).unwrap_or_default();
        let patterns: Vec<&str> = published.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        println!("watching: {}", patterns.join(", "));
        println!(
            "{:>4}  {:<9} {:<28} {:<28} {:>12} {:>12} {:>14} {:>14} {:>15} {:>9}  path",
            "id", "state", "client", "server", "switch c->s", "switch s->c", "shm c->s", "shm s->c", "rings KiB", "resident"
        );
    }
    for line in answer.lines() {
        count += 1;
        if json {
            println!("{line}");
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).context("the agent sent malformed status")?;
        let end = |e: &serde_json::Value| {
            if e.is_null() {
                "-".to_owned()
            } else {
                format!("{}/{} fd {}", e["pid"], e["comm"].as_str().unwrap_or("?"), e["fd"])
            }
        };
        // Values as strings: a `serde_json::Value`'s Display ignores the column width.
        let switch = |v: &serde_json::Value| if v.is_null() { "-".to_owned() } else { v.to_string() };
        let kib = |v: &serde_json::Value| v.as_u64().map_or("-".to_owned(), |b| format!("{}", b >> 10));
        println!(
            "{:>4}  {:<9} {:<28} {:<28} {:>12} {:>12} {:>14} {:>14} {:>15} {:>9}  {}",
            v["id"].to_string(),
            v["state"].as_str().unwrap_or("?"),
            end(&v["client"]),
            end(&v["server"]),
            switch(&v["switched_client_to_server"]),
            switch(&v["switched_server_to_client"]),
            v["bytes_client_to_server"].to_string(),
            v["bytes_server_to_client"].to_string(),
            format!("{}/{}", kib(&v["ring_capacity"][0]), kib(&v["ring_capacity"][1])),
            kib(&v["resident_bytes"]).to_string() + " KiB",
            v["path"].as_str().unwrap_or("")
        );
    }
    if !json {
        println!("{count} live connection(s)");
    }
    Ok(())
}

/// Output format of the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_tracing(format: LogFormat, verbose: bool) {
    use tracing_subscriber::{fmt, EnvFilter};
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("TSSX_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).with_writer(std::io::stdout);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Sub::Status { state_dir, json, stats }) => return status(state_dir, *json, *stats),
        Some(Sub::Install { from, target }) => {
            let source = match from {
                Some(f) => f.clone(),
                None => install::default_source()?,
            };
            let done = install::install(&source, &target.lib_dir, &target.preload_file)?;
            match &done.strip {
                install::Strip::AlreadyStripped => {}
                install::Strip::Stripped { from, to } => {
                    println!("stripped the symbol table and debug info of {} on the way: {from} -> {to} bytes", source.display())
                }
                install::Strip::Unstripped(why) => eprintln!(
                    "warning: {} carries its symbol table and debug info, copied as it is ({why}); the release build is stripped: `cargo xtask build --release`",
                    source.display()
                ),
            }
            let what = if done.preload_changed { "added to" } else { "already in" };
            println!("installed {} ({what} {})", done.library.display(), target.preload_file.display());
            return Ok(());
        }
        Some(Sub::Uninstall { target }) => {
            let done = install::uninstall(&target.lib_dir, &target.preload_file)?;
            let what = if done.preload_changed { "removed from" } else { "was not in" };
            println!("uninstalled {} ({what} {})", done.library.display(), target.preload_file.display());
            return Ok(());
        }
        None => {}
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tssx-agent must run as root (it loads eBPF programs); try: sudo tssx-agent --paths ...");
    }
    let paths = paths::dedup(cli.paths);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?;
    runtime.block_on(agent::run(AgentConfig {
        paths,
        state_dir: cli.state_dir,
        ring_size: cli.ring_size,
        ring_initial: cli.ring_initial.min(cli.ring_size),
        max_connections: cli.max_connections.map(|n| n as usize),
        claim_after: cli.claim_after,
        cool_after: cli.cool_after,
        parked_slots: cli.parked_slots,
        watch_mode: if cli.syscall_tracepoints { WatchMode::SyscallTracepoints } else { WatchMode::ConnectHook },
    }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tssx-agent: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error chain on one line: `context: cause: cause`.
fn one_line(err: &anyhow::Error) -> String {
    format!("{err:#}").lines().map(str::trim).collect::<Vec<_>>().join(" ")
}
