//! Issue 4, "run twice": any program correct on a Unix stream socket must be correct, unchanged,
//! on a swapped one.
//!
//! Each scenario is a small C program in `tests/conform/` (no tssx code in it) run as a server
//! and a client process on one socket path. Each end prints a deterministic transcript of what
//! it observed (return values, errno names, data, readiness, EOF, signals). A scenario runs:
//!
//! 1. plain, twice (no agent, no hook): both ends must succeed and the two transcripts must be
//!    identical, so that the reference itself is deterministic;
//! 2. hooked as it comes: the real agent watching the path (every connection claims at its
//!    first call), `LD_PRELOAD=libtssx_preload.so` on both ends; connections start plain and
//!    migrate while the scenario uses them. The transcript must equal the plain one.
//! 3. swapped: the same, but every connection first exchanges one-byte round trips a
//!    millisecond apart until both ends have mapped its segment, and three more
//!    (`CONFORM_WARMUP`, see `tests/conform/conform.h`), so that the scenario runs on the
//!    rings. The transcript must equal the plain one, the agent must have traced `swapped`
//!    for every connection of the scenario, and the `closed` lines must account for the
//!    scenario's payload as bytes that crossed shared memory.
//!
//! A mismatch is reported as a line diff (`-` plain, `+` swapped) together with the other
//! findings, the ends' stderr and the agent's `not swapped` reasons.

use std::{
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use tssx_tests::{hook, poll_until, require_root, target_dir, Agent, MountNamespace, Process, TempDir, DEFAULT_STATE_DIR};

/// How long one run (server and client together) may take before both are killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to wait for the agent's `swapped` / `closed` lines after a run.
const TRACE_TIMEOUT: Duration = Duration::from_secs(5);
/// Round trips each connection of the warmed-up run exchanges after both ends have mapped its
/// segment, before the scenario uses it: each direction then has moved onto the rings.
const WARMUP_SETTLE_ROUNDS: &str = "3";

/// One conformance scenario: a program, its two ends' arguments and what the swap must show.
struct Scenario {
    /// Test name, also the temp-dir name.
    name: &'static str,
    /// Program built from `tests/conform/<program>.c`.
    program: &'static str,
    /// Arguments after `server PATH`.
    server: &'static [&'static str],
    /// Arguments after `client PATH`.
    client: &'static [&'static str],
    /// Connections the client opens: each must be traced `swapped` once.
    connections: usize,
    /// Bytes (both directions, all connections) that must have crossed the connection: on the
    /// socket before each direction switched, on the rings after.
    shm_bytes: u64,
    /// For a scenario whose connections must stay plain: words the agent's `not swapped`
    /// reason must contain.
    plain_because: Option<&'static str>,
    /// For a scenario whose swapped connections are handed back to the kernel: words the
    /// agent's `handed back` reason must contain, for every connection traced `swapped`.
    handed_back_because: Option<&'static str>,
}

/// How a conformance program is built. Every program is built both ways and every scenario runs
/// with both builds, each compared with its own plain runs.
#[derive(Clone, Copy, Debug)]
enum Build {
    /// `-O0`: the program calls the plain libc functions.
    O0,
    /// `-O2 -D_FORTIFY_SOURCE=2`, as Debian builds its packages (and `-D_FILE_OFFSET_BITS=64`,
    /// as nginx and python3 are built): reads and polls into buffers whose size the compiler
    /// knows become glibc's `__read_chk`, `__recv_chk`, `__recvfrom_chk`, `__poll_chk`,
    /// `__ppoll_chk`, and `fcntl` becomes `fcntl64`.
    Fortified,
}

impl Build {
    const ALL: [Build; 2] = [Build::O0, Build::Fortified];

    /// The build's directory under `target/<profile>/conform/`.
    fn dir(self) -> &'static str {
        match self {
            Build::O0 => "o0",
            Build::Fortified => "fortified",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Build::O0 => &["-O0"],
            Build::Fortified => &["-O2", "-D_FORTIFY_SOURCE=2", "-D_FILE_OFFSET_BITS=64"],
        }
    }
}

/// The names a fortified build turns socket calls into: `tests/conform/fortify.c` built
/// [`Build::Fortified`] must import every one of them, and no [`Build::O0`] program may import
/// any, so that the suite cannot silently stop testing them.
const FORTIFIED_NAMES: &[&str] = &["__read_chk", "__recv_chk", "__recvfrom_chk", "__poll_chk", "__ppoll_chk", "fcntl64"];

/// The undefined dynamic symbols of `bin` (names without their version), by `nm -D`.
fn imports(bin: &Path) -> Vec<String> {
    let out = Command::new("nm").args(["-D", "--undefined-only"]).arg(bin).output().expect("run nm");
    assert!(out.status.success(), "nm -D {} failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Builds every `tests/conform/*.c` once per test process, both ways ([`Build`]), into
/// `target/<profile>/conform/<build>/`; returns `target/<profile>/conform`. Each binary is
/// written under a temporary name and renamed into place, so that another test process running
/// the previous build is never disturbed. Checks the builds' imports ([`FORTIFIED_NAMES`]).
fn programs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("conform");
        let out = target_dir().join("conform");
        let mut builds = Vec::new();
        for build in Build::ALL {
            let dir = out.join(build.dir());
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            for entry in std::fs::read_dir(&src).expect("read tests/conform") {
                let path = entry.expect("dir entry").path();
                if path.extension().and_then(|e| e.to_str()) != Some("c") {
                    continue;
                }
                let bin = dir.join(path.file_stem().expect("stem"));
                let tmp = bin.with_extension(format!("{}.tmp", std::process::id()));
                let child = Command::new("cc")
                    .args(build.flags())
                    .args(["-Wall", "-Werror", "-pthread", "-o"])
                    .arg(&tmp)
                    .arg(&path)
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn cc");
                builds.push((build, path, tmp, bin, child));
            }
        }
        assert!(!builds.is_empty(), "no C sources in {}", src.display());
        for (build, path, tmp, bin, child) in builds {
            let out = child.wait_with_output().expect("wait cc");
            assert!(out.status.success(), "cc ({build:?}) {} failed:\n{}", path.display(), String::from_utf8_lossy(&out.stderr));
            std::fs::rename(&tmp, &bin).unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), bin.display()));
            let fortified: Vec<String> = imports(&bin).into_iter().filter(|name| FORTIFIED_NAMES.contains(&name.as_str())).collect();
            match build {
                Build::O0 => assert!(fortified.is_empty(), "{} built -O0 imports {fortified:?}", bin.display()),
                Build::Fortified if path.file_stem().is_some_and(|s| s == "fortify") => {
                    let missing: Vec<_> = FORTIFIED_NAMES.iter().filter(|n| !fortified.iter().any(|f| f == *n)).collect();
                    assert!(
                        missing.is_empty(),
                        "{} (fortified) does not import {missing:?}: the fortify tests test nothing",
                        bin.display()
                    );
                }
                Build::Fortified => {}
            }
        }
        out
    })
}

/// What one run of a scenario showed.
struct Run {
    /// `server: ...` lines, `server: exit ...`, then `client: ...` lines and `client: exit ...`.
    transcript: String,
    /// Both ends exited 0 within the time limit.
    ok: bool,
    /// The ends' stderr, for failure messages.
    stderr: String,
}

/// One end of a scenario, in its own process group (scenarios fork): a timeout kills the
/// children too.
fn spawn_end(bin: &Path, role: &str, path: &str, args: &[&str], hooked: Option<&Hooked>, warm: bool) -> Process {
    let mut cmd = match hooked {
        Some(h) => h.ns.command(bin),
        None => Command::new(bin),
    };
    cmd.arg(role).arg(path).args(args);
    // See `warm_up` in tests/conform/conform.h.
    if warm {
        cmd.env("CONFORM_WARMUP", WARMUP_SETTLE_ROUNDS);
    } else {
        cmd.env_remove("CONFORM_WARMUP");
    }
    match hooked {
        Some(h) => cmd.env("LD_PRELOAD", &h.preload),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    Process::spawn_group(cmd)
}

/// How the hooked runs of a scenario are started: in the scenario's own mount namespace, where
/// its agent keeps `/run/tssx` (so scenarios run side by side, each with its agent), with the
/// hook preloaded.
struct Hooked {
    ns: MountNamespace,
    preload: PathBuf,
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "timeout (killed)".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => format!("{s}"),
        },
    }
}

/// Runs the scenario's server, waits for its `listening` line, runs its client; both must end
/// before `RUN_TIMEOUT` or are killed with their process groups.
fn run(sc: &Scenario, build: Build, path: &str, hooked: Option<&Hooked>, warm: bool) -> Run {
    let bin = programs().join(build.dir()).join(sc.program);
    let deadline = Instant::now() + RUN_TIMEOUT;
    let left = || deadline.saturating_duration_since(Instant::now());
    let mut server = spawn_end(&bin, "server", path, sc.server, hooked, warm);
    let mut client = match server.next_line(Duration::from_secs(10)) {
        Some(first) if first == "listening" => Some(spawn_end(&bin, "client", path, sc.client, hooked, warm)),
        _ => None,
    };
    // Without a client, a server still running has nothing to wait for: killed at once.
    let server_status = server.wait(if client.is_some() { left() } else { Duration::ZERO });
    let client_status = client.as_mut().and_then(|c| c.wait(left()));
    // Forked children may hold the pipes a little longer; take what arrives until they close.
    let ends: Vec<&Process> = std::iter::once(&server).chain(&client).collect();
    for end in &ends {
        end.wait_closed(Duration::from_secs(5));
    }
    let server_lines = match server.stdout_lines() {
        lines if lines.is_empty() => vec!["(no listening line)".to_owned()],
        lines => lines,
    };
    let client_lines = client.as_ref().map(Process::stdout_lines).unwrap_or_default();
    let mut stderr = server.stderr_lines();
    if let Some(c) = &client {
        stderr.extend(c.stderr_lines().into_iter().map(|l| format!("client: {l}")));
    }
    let ok = server_status.is_some_and(|s| s.success()) && client_status.is_some_and(|s| s.success());
    let mut transcript = String::new();
    for l in &server_lines {
        transcript += &format!("server: {l}\n");
    }
    transcript += &format!("server: {}\n", describe(server_status));
    for l in &client_lines {
        transcript += &format!("client: {l}\n");
    }
    transcript += &format!("client: {}\n", if client.is_some() { describe(client_status) } else { "not started".into() });
    Run { transcript, ok, stderr: stderr.join("\n") }
}

/// Line diff of two transcripts (longest common subsequence): ` ` same, `-` a only, `+` b only.
fn diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        } else {
            out += &format!("- {}\n", a[i]);
            i += 1;
        }
    }
    out
}

/// Runs one scenario with one build plain twice, then hooked (migrating, then swapped), and
/// fails with every finding at once.
fn conform(sc: &Scenario, build: Build) {
    require_root();
    let dir = TempDir::new(&format!("conform-{}-{}", sc.name, build.dir()));
    let started = Instant::now();
    let plain = run(sc, build, &dir.socket("plain-1.sock"), None, false);
    assert!(plain.ok, "{} ({build:?}): the plain run failed\n{}\nstderr:\n{}", sc.name, plain.transcript, plain.stderr);
    let again = run(sc, build, &dir.socket("plain-2.sock"), None, false);
    assert!(
        plain.transcript == again.transcript,
        "{} ({build:?}): the plain transcript is not deterministic (- first run, + second run):\n{}",
        sc.name,
        diff(&plain.transcript, &again.transcript)
    );
    let plain_time = started.elapsed() / 2;

    let path = dir.socket("s.sock");
    let migrating_path = dir.socket("m.sock");
    let started = Instant::now();
    // The scenario's own agent, in its own mount namespace (no lock: scenarios run side by
    // side). Every connection claims at its first call (the scenarios are short).
    let hooked = Hooked { ns: MountNamespace::new(&[DEFAULT_STATE_DIR]), preload: hook() };
    let agent = Agent::start_in(&hooked.ns, &[&path, &migrating_path], &["--claim-after", "0"]);
    let agent_time = started.elapsed();
    let mut problems = Vec::new();
    // Hooked, as it comes: each connection migrates while the scenario uses it (or ends
    // before it could), whatever the scenario does meanwhile (fork, exec, shutdown, ...).
    let migrating = run(sc, build, &migrating_path, Some(&hooked), false);
    if !migrating.ok || migrating.transcript != plain.transcript {
        problems.push(format!(
            "transcripts differ (- plain, + hooked, migrating while in use):\n{}stderr of that run:\n{}",
            diff(&plain.transcript, &migrating.transcript),
            migrating.stderr
        ));
    }
    // Hooked, each connection warmed up first: the scenario runs on the rings.
    let started = Instant::now();
    let swapped = run(sc, build, &path, Some(&hooked), true);
    let swapped_time = started.elapsed();
    if !swapped.ok || swapped.transcript != plain.transcript {
        problems.push(format!(
            "transcripts differ (- plain, + swapped):\n{}stderr of the swapped run:\n{}",
            diff(&plain.transcript, &swapped.transcript),
            swapped.stderr
        ));
    }
    let swaps = agent.wait_for("swapped", &path, sc.connections, TRACE_TIMEOUT);
    if swaps.len() != sc.connections {
        problems.push(format!("agent traced `swapped` {} times, expected {}", swaps.len(), sc.connections));
    }
    // Every swapped connection's segment must be freed, and the payload must have crossed it.
    let ids: Vec<&serde_json::Value> = swaps.iter().map(|s| &s["connection"]).collect();
    let closed = || -> Vec<_> { agent.events_on("closed", &path).into_iter().filter(|c| ids.contains(&&c["connection"])).collect() };
    poll_until(TRACE_TIMEOUT, || closed().len() >= ids.len());
    let closed = closed();
    if closed.len() != ids.len() {
        problems.push(format!("{} swapped connections but {} of them traced `closed`", ids.len(), closed.len()));
    }
    let bytes: u64 =
        closed.iter().map(|c| c["bytes_client_to_server"].as_u64().unwrap_or(0) + c["bytes_server_to_client"].as_u64().unwrap_or(0)).sum();
    // Bytes written before a direction switched went through the socket, the rest through
    // shared memory: together, at least the scenario's payload.
    let before_switch: u64 = swaps
        .iter()
        .map(|s| s["switched_client_to_server"].as_u64().unwrap_or(0) + s["switched_server_to_client"].as_u64().unwrap_or(0))
        .sum();
    if bytes + before_switch < sc.shm_bytes {
        problems.push(format!(
            "{bytes} bytes crossed shared memory after {before_switch} on the socket, expected at least {} in all",
            sc.shm_bytes
        ));
    }
    // Why the others stayed plain, with counts.
    let mut refused: Vec<(String, usize)> = Vec::new();
    for e in agent.events("not") {
        let reason = e["reason"].as_str().unwrap_or("?").to_owned();
        match refused.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => refused.push((reason, 1)),
        }
    }
    if let Some(why) = sc.plain_because {
        if !refused.iter().any(|(reason, _)| reason.contains(why)) {
            problems.push(format!("no `not swapped` trace with a reason about {why}"));
        }
    }
    if let Some(why) = sc.handed_back_because {
        // (The `closed` lines waited for above come after the `handed back` ones.)
        let handed = agent.events_on("handed", &path);
        for id in &ids {
            let because = |h: &serde_json::Value| h["connection"] == **id && h["reason"].as_str().is_some_and(|r| r.contains(why));
            if !handed.iter().any(because) {
                problems.push(format!("connection {id} was not traced `handed back` with a reason about {why}: {handed:?}"));
            }
        }
    }
    eprintln!(
        "{} ({build:?}): plain {:?}, namespace+agent start {:?}, swapped {:?}, {} swapped, {} bytes through shared memory",
        sc.name,
        plain_time,
        agent_time,
        swapped_time,
        swaps.len(),
        bytes
    );
    // For a failure's message: why connections of the warmed-up run stayed plain, line by line.
    let warm_not_swapped: String = agent.events_on("not", &path).iter().map(|line| format!("{line}\n")).collect();
    assert!(agent.stop().success(), "agent failed to stop");
    assert!(
        problems.is_empty(),
        "{} ({build:?}): the swapped run does not conform:\n\n{}\n\nnot swapped, both runs (reason, count): {:?}\n\nnot swapped in the warmed-up run, whole lines:\n{}",
        sc.name,
        problems.join("\n\n"),
        refused,
        warm_not_swapped
    );
}

/// One module per scenario, with one test per [`Build`]: `<scenario>::o0` and
/// `<scenario>::fortified`.
macro_rules! scenarios {
    ($($name:ident: $program:literal, server $server:expr, client $client:expr, connections $conns:expr, shm $shm:expr $(, plain because $why:literal)? $(, handed back because $back:literal)?;)*) => {
        $(
            mod $name {
                use super::*;

                fn scenario() -> Scenario {
                    Scenario {
                        name: stringify!($name),
                        program: $program,
                        server: &$server,
                        client: &$client,
                        connections: $conns,
                        shm_bytes: $shm,
                        plain_because: None $(.or(Some($why)))?,
                        handed_back_because: None $(.or(Some($back)))?,
                    }
                }

                #[test]
                fn o0() {
                    conform(&scenario(), Build::O0);
                }

                #[test]
                fn fortified() {
                    conform(&scenario(), Build::Fortified);
                }
            }
        )*
    };
}

scenarios! {
    epoll_level_triggered_echo_100_clients: "echo", server ["epoll-lt", "100"], client ["100", "20"], connections 100, shm 2 * 2_980_964;
    epoll_edge_triggered_echo_100_clients: "echo", server ["epoll-et", "100"], client ["100", "20"], connections 100, shm 2 * 2_980_964;
    epoll_pwait_echo: "echo", server ["epoll-pwait", "20"], client ["20", "10"], connections 20, shm 2 * ECHO_20_10;
    poll_echo: "echo", server ["poll", "20"], client ["20", "10"], connections 20, shm 2 * ECHO_20_10;
    ppoll_echo: "echo", server ["ppoll", "20"], client ["20", "10"], connections 20, shm 2 * ECHO_20_10;
    select_echo: "echo", server ["select", "20"], client ["20", "10"], connections 20, shm 2 * ECHO_20_10;
    pselect_echo: "echo", server ["pselect", "20"], client ["20", "10"], connections 20, shm 2 * ECHO_20_10;
    epoll_oneshot_del_add_and_two_sets: "epoll_sets", server [], client [], connections 1, shm 34;
    epoll_edges_taken_before_the_move_stay_taken: "epoll_move", server [], client [], connections 1, shm 9;
    epoll_instance_under_several_numbers: "epoll_dup", server [], client [], connections 1, shm 81;
    epoll_registered_before_connect: "epoll_early", server [], client [], connections 8, shm 81;
    readiness_mixed_with_pipe_and_timerfd: "mixed", server [], client [], connections 1, shm 12;
    nonblocking_eagain_fill_partial_pollout: "nonblock", server [], client [], connections 2, shm 1 << 20;
    peek_waitall_fionread_readv: "peek", server [], client [], connections 1, shm 50;
    shutdown_wr_rd_rdwr: "shutdown", server [], client [], connections 4, shm 100_000;
    // MariaDB's KILL: a shutdown(SHUT_RDWR) must wake the thread that sleeps on the socket.
    shutdown_wakes_a_thread_asleep_on_the_socket: "localshut", server [], client [], connections 4, shm 6;
    sigpipe_epipe_nosignal_reset: "sigpipe", server [], client [], connections 3, shm 15;
    dup_copies_are_one_connection: "dup", server [], client [], connections 3, shm 100;
    fd_numbers_stay_the_applications: "fdnumbers", server [], client [], connections 1, shm 50;
    prefork_server: "prefork", server ["3", "12"], client ["12"], connections 12, shm 12 * 16;
    fork_after_accept_and_connect: "fork", server [], client [], connections 1, shm 46;
    exec_child_inherits_the_socket_execv: "exec", server ["execv"], client [], connections 1, shm 52_009;
    exec_child_inherits_the_socket_execve: "exec", server ["execve"], client [], connections 1, shm 52_009;
    exec_child_inherits_the_socket_execvp: "exec", server ["execvp"], client [], connections 1, shm 52_009;
    exec_child_inherits_the_socket_execl: "exec", server ["execl"], client [], connections 1, shm 52_009;
    exec_child_inherits_the_socket_posix_spawn: "exec", server ["posix_spawn"], client [], connections 1, shm 52_009;
    fd_passed_to_a_worker_with_scm_rights: "fdpass", server [], client [], connections 1, shm 1000;
    threads_duplex_two_readers_two_writers: "threads", server [], client [], connections 3, shm 3 * (8 << 20) + 2 * 20_000 * 64;
    signals_eintr_and_sa_restart: "signals", server [], client [], connections 1, shm 10;
    // Issue 13: one signal while the wait spins in the hook (50 round trips before each of the
    // 9 x 8 waits; 8 restarted reads get "data"; 3 bulk writes of 8 MiB).
    signal_during_a_spinning_wait_eintr_and_sa_restart: "sigspin", server [], client [], connections 1, shm 9 * 8 * 50 * 2 + 8 * 5 + 3 * (50 * 2 + (8 << 20));
    bad_input_efault_einval_eisconn: "badinput", server [], client [], connections 1, shm 10;
    // Issue 13 item 4: bad pages anywhere in user space, and the application's own faults.
    bad_pages_efault_and_own_fault_handlers: "badpages", server [], client [], connections 1, shm 1127;
    random_interleaving_stress: "stress", server ["8388608", "42"], client ["8388608", "42"], connections 1, shm 2 * 8_388_608;
    fortify_chk_variants_fcntl64_and_overflow: "fortify", server [], client [], connections 2, shm 41;
    recvmmsg_sendmmsg_waitforone_timeout_partial_scm_rights: "mmsg", server [], client [], connections 3, shm 72;
    preadv2_pwritev2_rwf_flags_and_offsets: "rwf", server [], client [], connections 1, shm 255;
    stdio_fdopen_dup2_stdout_and_inetd_image: "stdio", server [], client [], connections 1, shm 290;
    io_uring_server_stays_plain: "iouring", server [], client [], connections 0, shm 0, plain because "io_uring";
    // Issue 13 item 3: swapped, then an io_uring: handed back before the io_uring is used.
    io_uring_set_up_while_swapped_hands_back: "iouring", server ["late"], client ["late"], connections 1, shm 2 * 7 * 5, plain because "io_uring", handed back because "io_uring";
    close_range_and_closefrom_with_fd_reuse: "closing", server ["range"], client ["range"], connections 6, shm 25;
    close_range_cloexec_then_exec: "closing", server ["cloexec"], client ["cloexec"], connections 2, shm 40;
    close_loop_over_numbers_never_opened_then_exec: "closing", server ["closeloop"], client ["closeloop"], connections 1, shm 23;
    syscall_mixed_with_libc_calls: "rawsys", server [], client [], connections 1, shm 24;
    child_moves_bytes_then_the_parent_migrates_fork: "share", server ["fork"], client ["fork"], connections 1, shm 30_440;
    child_moves_bytes_then_the_parent_migrates_fork_exec: "share", server ["fork-exec"], client ["fork-exec"], connections 1, shm 30_440;
    child_moves_bytes_then_the_parent_migrates_spawn: "share", server ["spawn"], client ["spawn"], connections 1, shm 30_440;
    child_changes_epoll_registration_then_parent_migrates: "share", server ["fork-epoll"], client ["fork"], connections 1, shm 30_440;
    child_forked_before_connect_moves_bytes: "share", server ["fork"], client ["fork-early"], connections 0, shm 0, plain because "peer never claimed";
    children_spawn_dup2_stdin_and_stdout: "children", server ["spawn-dup2-both"], client ["spawn-dup2-both"], connections 1, shm 21_000;
    children_spawn_dup2_stdin_only: "children", server ["spawn-dup2-in"], client ["spawn-dup2-in"], connections 1, shm 21_000;
    children_spawn_dup2_stdout_only: "children", server ["spawn-dup2-out"], client ["spawn-dup2-out"], connections 1, shm 21_000;
    children_spawnp_dup2_stdin_and_stdout: "children", server ["spawnp-dup2-both"], client ["spawnp-dup2-both"], connections 1, shm 21_000;
    children_spawn_addclose_of_the_socket: "children", server ["spawn-addclose"], client ["spawn-addclose"], connections 1, shm 21_000;
    children_spawn_addopen_reuses_stdout_and_closefrom: "children", server ["spawn-dup2-reuse"], client ["spawn-dup2-reuse"], connections 1, shm 21_000;
    children_vfork_child_closes_and_execs: "children", server ["vfork-close"], client ["vfork-close"], connections 1, shm 21_000;
    children_vfork_child_closes_and_exits: "children", server ["vfork-exit"], client ["vfork-exit"], connections 1, shm 21_000;
    children_system_with_the_socket_as_stdout: "children", server ["system-stdout"], client ["system-stdout"], connections 1, shm 21_000;
    children_popen_read_and_write_with_the_socket_inherited: "children", server ["popen"], client ["popen"], connections 1, shm 21_000;
    children_without_the_hook_exec: "children", server ["nohook-exec"], client ["nohook-exec"], connections 1, shm 1000;
    children_without_the_hook_system: "children", server ["nohook-system"], client ["nohook-system"], connections 1, shm 1000;
    children_without_the_hook_posix_spawn: "children", server ["nohook-spawn"], client ["nohook-spawn"], connections 1, shm 1000;
    children_without_the_hook_exec_with_unread_bytes: "children", server ["nohook-exec-unread"], client ["nohook-exec-unread"], connections 1, shm 1000;
    children_without_the_hook_posix_spawn_with_unread_bytes: "children", server ["nohook-spawn-unread"], client ["nohook-spawn-unread"], connections 1, shm 1000;
    differential_findings_wrband_zero_bytes_dup2_reset: "edges", server [], client [], connections 1, shm 9;
    select_pselect_bitmap_above_fd_setsize: "readiness", server ["select-big"], client [], connections 1, shm 19;
    epoll_one_interest_list_across_fork: "readiness", server ["epoll-fork"], client [], connections 2, shm 26;
    epoll_registration_outlives_its_fd_while_a_dup_lives: "readiness", server ["epoll-dup"], client [], connections 1, shm 19;
    // Issue 13, calls the rings serve or hand back: timeouts, MSG_OOB, SO_PEEK_OFF, splice, sendfile.
    sndtimeo_on_a_full_buffer_rcvtimeo_on_an_empty_one: "timeouts", server [], client [], connections 2, shm 4096;
    msg_oob_and_siocatmark_both_ways: "oob", server [], client [], connections 1, shm 3;
    splice_both_ways_with_bytes_in_flight_bulk_and_errors: "splice", server [], client [], connections 1, shm 2 * 1_048_576;
    sendfile_offsets_eof_bad_inputs_and_bulk: "sendfile", server [], client [], connections 1, shm 1_048_576;
    so_peek_off_forward_back_off_blocking_and_eof: "peekoff", server [], client [], connections 1, shm 20;
    // Issue 14, ancillary data on swapped sockets: fds through the kernel, positioned in the stream.
    scm_rights_in_the_stream: "ancdata", server [], client [], connections 2, shm 60;
    scm_credentials_checked_by_the_kernel_then_so_passcred: "creds", server [], client [], connections 1, shm 10;
    so_passcred_on_the_listener_keeps_the_connection_plain: "creds", server ["listener"], client ["listener"], connections 0, shm 0, plain because "claim";
    so_passcred_on_with_bytes_unread_on_the_ring: "creds", server ["unread"], client ["unread"], connections 1, shm 8;
    so_passcred_on_the_listener_after_its_first_accept: "creds", server ["listener-late"], client ["listener-late"], connections 1, shm 6;
    so_passcred_hands_back_under_epoll: "passcred_epoll", server [], client [], connections 1, shm 5;
    so_passcred_hands_back_under_edge_triggered_epoll: "passcred_epoll", server ["et"], client [], connections 1, shm 5;
}

/// Bytes echoed by the `echo` client with 20 connections and 10 rounds (fixed by its seeds).
const ECHO_20_10: u64 = 304_735;
