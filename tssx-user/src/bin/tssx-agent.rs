//! `tssx-agent`: watches Unix socket paths with eBPF and traces every connection on them.

use std::{path::PathBuf, process::ExitCode};

use anyhow::bail;
use clap::{Parser, ValueEnum};
use tssx_user::{
    agent::{self, AgentConfig},
    paths::{self, WatchedPath},
    state::DEFAULT_STATE_DIR,
};

/// Transparent shared-memory socket swapping: the agent.
///
/// Loads eBPF tracepoint programs that watch bind, listen, connect and accept on the given
/// Unix socket paths (and fork/exit of the processes that listen on them), and prints one
/// trace line per event. Runs until SIGINT or SIGTERM, then detaches everything and exits 0.
/// Must run as root.
#[derive(Parser, Debug)]
#[command(name = "tssx-agent", version, about, long_about)]
#[command(after_help = "Example:\n  sudo tssx-agent --paths /var/run/nscd/socket,/run/redis.sock\n  sudo tssx-agent --paths @my-abstract-socket --log-format json")]
struct Cli {
    /// Unix socket paths to watch: absolute paths (at most 107 bytes), or @name for an
    /// abstract socket. Comma-separated, and the option may be repeated.
    #[arg(short, long = "paths", value_name = "PATH[,PATH...]", value_delimiter = ',', required = true, num_args = 1..)]
    paths: Vec<WatchedPath>,

    /// Format of the trace lines on standard output.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Directory for the agent's lock and published state (the preload hook looks in the
    /// default one).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Also print debug details (e.g. full verifier logs).
    #[arg(short, long)]
    verbose: bool,
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
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tssx-agent must run as root (it loads eBPF programs); try: sudo tssx-agent --paths ...");
    }
    let paths = paths::dedup(cli.paths);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?;
    runtime.block_on(agent::run(AgentConfig { paths, state_dir: cli.state_dir }))
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
