//! End-to-end: bad command lines and hostile environments give one clear line and a non-zero
//! exit, never a panic or a half-started agent.

use std::process::{Command, Output};

use tssx_tests::{agent_bin, require_root, Agent, TempDir};

fn agent(args: &[&str]) -> Output {
    Command::new(agent_bin()).args(args).output().expect("spawn tssx-agent")
}

/// Asserts failure with exactly one non-empty stderr line containing every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "must fail: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
    // clap adds a usage hint and a --help pointer after its one-line error.
    let first = lines.first().expect("an error line");
    assert!(first.starts_with("error:") || first.starts_with("tssx-agent: error:"), "{stderr}");
    assert!(lines.len() <= 4, "error should be short: {stderr}");
}

#[test]
fn no_paths_is_refused() {
    let out = agent(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, &["--paths"]);
}

#[test]
fn relative_path_is_refused() {
    let out = agent(&["--paths", "/ok.sock,relative.sock"]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, &["relative.sock", "absolute"]);
}

#[test]
fn path_over_107_bytes_is_refused() {
    let long = format!("/{}", "x".repeat(107));
    let out = agent(&["--paths", &long]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, &["108 bytes", "at most 107"]);
}

/// A malformed pattern names itself and what is wrong, in one line; good patterns of every
/// shape are accepted (the agent then fails only for want of root, or starts).
#[test]
fn malformed_patterns_are_refused_with_the_reason() {
    for (pattern, needles) in [
        ("/run/[ab.sock", &["/run/[ab.sock", "without its closing ]"][..]),
        ("/run/**/x.sock", &["/run/**/x.sock", "uses **, which is not supported", "directory prefix ending in /"][..]),
        ("/run/../x.sock", &["/run/../x.sock", "normal form"][..]),
        ("/run/[a/b].sock", &["inside [...]"][..]),
        ("/run/x\\", &["escapes nothing"][..]),
        ("*.sock", &["*.sock", "relative", "working directory"][..]),
        ("@", &["no name after the @"][..]),
    ] {
        let out = agent(&["--paths", &format!("/ok/,{pattern}")]);
        assert_eq!(out.status.code(), Some(2), "{pattern}: {out:?}");
        assert_one_line_error(&out, needles);
    }
}

#[test]
fn help_explains_the_patterns() {
    let out = agent(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["/run/php/", "/run/php/*.sock", ".s.PGSQL.*", "@name*", "any depth", "relative address", "working directory"] {
        assert!(text.contains(needle), "--help lacks {needle}: {text}");
    }
    let short = String::from_utf8_lossy(&agent(&["-h"]).stdout).into_owned();
    assert!(short.contains("directories (ending in /), globs"), "{short}");
}

/// Runs a valid agent command line under `wrapper` (e.g. `setpriv ... --`), with its own
/// state directory.
fn wrapped_agent(test: &str, wrapper: &[&str]) -> Output {
    let dir = TempDir::new(test);
    Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg(agent_bin())
        .args(["--paths", "/tmp/x.sock", "--state-dir"])
        .arg(dir.join("state"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (util-linux): {e}", wrapper[0]))
}

#[test]
fn not_root_is_refused() {
    require_root();
    let out = wrapped_agent("notroot", &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, &["must run as root"]);
}

#[test]
fn kernel_refusing_the_programs_is_reported() {
    require_root();
    // Root inside a new user namespace passes the uid check, but has no CAP_BPF in the initial
    // namespace: the kernel refuses to create the maps and programs.
    let out = wrapped_agent("refused", &["unshare", "--user", "--map-root-user", "--"]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, &["kernel refused"]);
}

#[test]
fn help_explains_the_options() {
    let out = agent(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--paths",
        "@name",
        "--log-format",
        "--state-dir",
        "SIGTERM",
        "root",
        "--claim-after",
        "500us",
        "[default: 1ms]",
        "--cool-after",
        "[default: 64]",
        "probe",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}: {text}");
    }
}

#[test]
fn malformed_claim_after_is_refused() {
    for bad in ["5", "1.5ms", "1h", "ms"] {
        let out = agent(&["--paths", "/tmp/x.sock", "--claim-after", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert_one_line_error(&out, &["--claim-after", bad, "500us, 1ms, 2s"]);
    }
}

/// `--claim-after` and `--cool-after` reach the hooks: the first lines of the published paths
/// file.
#[test]
fn claim_after_is_published_for_hooks() {
    require_root();
    let dir = TempDir::new("claim-after");
    let state = dir.join("state");
    for (arg, ns, cool) in [
        (None, 1_000_000u64, 64u32),
        (Some("250us"), 250_000, 64),
        (Some("0"), 0, 64),
        (Some("2s"), 2_000_000_000, 64),
        (Some("cool 0"), 1_000_000, 0),
        (Some("cool 5"), 1_000_000, 5),
    ] {
        let extra: Vec<&str> = match arg {
            Some(a) if a.starts_with("cool ") => vec!["--cool-after", &a[5..]],
            Some(a) => vec!["--claim-after", a],
            None => vec![],
        };
        let agent = Agent::start_with(&["/tmp/tssx-claim-after.sock", "@tssx-claim-after"], &state, &extra);
        let published = std::fs::read_to_string(state.join("paths")).unwrap();
        assert_eq!(
            published,
            format!("#claim-after-ns={ns}\n#cool-after={cool}\n/tmp/tssx-claim-after.sock\n@tssx-claim-after\n"),
            "{arg:?}"
        );
        assert_eq!(agent.events("ready")[0]["claim_after_us"], ns / 1000);
        assert_eq!(agent.events("ready")[0]["cool_after"], cool);
        assert!(agent.stop().success());
    }
}

#[test]
fn second_agent_on_the_same_state_dir_is_refused() {
    require_root();
    let dir = TempDir::new("twice");
    let state = dir.join("state");
    let first = Agent::start(&["/tmp/tssx-twice.sock"], &state);
    let out = Command::new(agent_bin()).args(["--paths", "/tmp/tssx-twice.sock", "--state-dir"]).arg(&state).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, &["already running"]);
    assert!(first.stop().success());
}

/// Without `--max-connections` the limit follows the machine: a quarter of `MemTotal` in
/// segments of two rings and a header page each, capped by what the agent's fd limit serves
/// (a descriptor per segment, and per held claim: four a connection, 4,096 at most; plus 516
/// of its own).
#[test]
fn default_connection_limit_is_derived_from_memory_and_the_fd_limit() {
    require_root();
    let dir = TempDir::new("derived-limit");
    let state = dir.join("state");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem_kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    for ring in [1u64 << 20, 16384] {
        let agent = Agent::start_with(&["/tmp/tssx-derived-limit.sock"], &state, &["--ring-size", &ring.to_string()]);
        let by_memory = (mem_kib * 1024 / 4 / (2 * ring + 4096)).clamp(16, 1_000_000);
        let derived = agent.events("connection");
        assert_eq!(derived.len(), 1, "{:?}", agent.trace());
        assert_eq!(derived[0]["by_memory"], by_memory, "{derived:?}");
        let fd_limit = derived[0]["fd_limit"].as_u64().unwrap();
        let available = fd_limit.saturating_sub(516);
        let by_fds = if available >= 1024 + 4096 { available - 4096 } else { available / 5 };
        let expected = by_memory.min(by_fds).max(1);
        assert_eq!(derived[0]["max_connections"], expected, "{derived:?}");
        assert_eq!(agent.stats()["max_connections"], expected);
        // The agent's own limit really is that high (raised for it).
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.pid())).unwrap();
        let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        assert_eq!(open_files.split_whitespace().nth(3).unwrap().parse::<u64>().unwrap(), fd_limit, "{open_files}");
        assert!(agent.stop().success());
    }
    // Given explicitly, it is taken as it is and nothing is derived.
    let agent = Agent::start_with(&["/tmp/tssx-derived-limit.sock"], &state, &["--max-connections", "7"]);
    assert!(agent.events("connection").is_empty());
    assert_eq!(agent.stats()["max_connections"], 7);
    assert!(agent.stop().success());
}
