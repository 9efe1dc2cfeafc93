//! End-to-end with real applications, unmodified: Redis, PostgreSQL and memcached on Unix
//! sockets, nscd (glibc's own client inside libc, a peer that never claims), nginx as a
//! reverse proxy to a second nginx, PHP-FPM behind nginx over FastCGI, dbus-daemon and
//! language runtimes' event loops. Each test runs the same client session twice, once plain
//! (no hook, an unwatched socket) and once with server and clients under
//! `LD_PRELOAD=libtssx_preload.so` on a path the real agent watches, and requires
//! 1. identical results (command outputs, response bodies and status codes; benchmarks complete
//!    without errors), and
//! 2. the swaps the plain-first design promises, exactly: connections start plain and migrate
//!    in flight once they lived `--claim-after` (1 ms by default) or moved 64 KiB, so a one-shot
//!    `redis-cli` or `pg_isready` may legitimately stay plain, while every connection that
//!    lived long and moved data must be traced `swapped`: each client connection of
//!    redis-benchmark, each PostgreSQL session that lasted half a second, both memcached
//!    clients (with `--claim-after 0`), each keepalive upstream connection of nginx, each
//!    busy kept FastCGI connection to PHP-FPM. nscd's
//!    connections must never be swapped (its client never claims) and never stall.
//!
//! Three heavy users of Unix stream sockets beside them: Xvfb and X clients (Xlib, xcb, fds
//! passed both ways with MIT-SHM), tmux (every client passes its fds to the server) and socat.
//!
//! These servers use epoll and non-blocking sockets, PostgreSQL forks a backend per connection,
//! nginx registers upstream sockets with epoll before it connects: (2) needs the hook to cover
//! those.
//!
//! The Debian packages come from `cargo xtask setup`. The servers run on private sockets in a
//! temporary directory (Redis with `--port 0`, PostgreSQL with `listen_addresses=''`, memcached
//! with `-s`, nginx with a private prefix and a free loopback port, Xvfb on display numbers
//! nothing else uses, `:7371` and `:7373`, with `-nolisten tcp`), nscd and its agent in a
//! private mount namespace with their own `/run/nscd` and `/run/tssx`, so they never touch the
//! default ports, sockets or the machine's name lookups.

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use tssx_tests::{
    agent_bin, hook, poll_until, require_root, wait_until, wrk, Agent, HookedAgent, MachineLock, MountNamespace, NginxConfig, NginxProxy,
    Nscd, Process, Rng, TempDir, Upstream, NSCD_SOCKET,
};

const MEMCACHE: &str = env!("CARGO_BIN_EXE_tssx-test-memcache");
/// Debian 12's PostgreSQL server binaries (off PATH).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long a server may take to get ready, and to exit once signalled.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(30);

/// A server process in its own process group (PostgreSQL's backends go with it), killed with
/// them when dropped if the test did not stop it.
struct Daemon {
    process: Process,
    name: &'static str,
}

impl Daemon {
    fn spawn(name: &'static str, cmd: Command) -> Self {
        let process = Process::try_spawn_group(cmd).unwrap_or_else(|e| panic!("{e} (cargo xtask setup installs {name})"));
        Self { process, name }
    }

    /// Sends `signal`, waits up to 30 s, and asserts that the server exited cleanly (a crash
    /// under the hook shows here); returns its stderr lines.
    fn stop(mut self, signal: i32) -> Vec<String> {
        let status = self.process.stop(signal, DAEMON_TIMEOUT);
        let status = status
            .unwrap_or_else(|| panic!("{} did not exit within {DAEMON_TIMEOUT:?}; stderr: {}", self.name, self.process.stderr_text()));
        self.process.wait_closed(Duration::from_secs(5));
        assert!(status.success(), "{} exited with {status}; stderr: {}", self.name, self.process.stderr_text());
        self.process.stderr_lines()
    }

    /// Waits until `ready` is true (up to 30 s), failing at once if the server died.
    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) {
        let process = &mut self.process;
        wait_until(DAEMON_TIMEOUT, &format!("{} to get ready", self.name), || {
            process.assert_running();
            ready()
        });
    }
}

/// `cmd`, under the hook if `hooked`.
fn command(program: &str, hooked: bool) -> Command {
    let mut cmd = Command::new(program);
    if hooked {
        cmd.env("LD_PRELOAD", hook());
    } else {
        cmd.env_remove("LD_PRELOAD");
    }
    cmd
}

/// Runs `cmd` (with `stdin` fed in), asserting success; returns stdout.
fn run(cmd: Command, stdin: Option<&[u8]>) -> String {
    run_pid(cmd, stdin).0
}

/// As [`run`], also returning the pid the program ran as (to find its connections in the
/// agent's trace).
fn run_pid(mut cmd: Command, stdin: Option<&[u8]>) -> (String, u32) {
    use std::io::Write as _;
    let started = Instant::now();
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).expect("write stdin");
    }
    let out: Output = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed after {:?}: {}\nstdout: {}\nstderr: {}",
        started.elapsed(),
        out.status,
        &stdout[..stdout.len().min(4000)],
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, pid)
}

/// Runs each client to its end, one after the other (as [`run_pid`]); returns their outputs,
/// concatenated, and their pids.
fn run_each(clients: impl IntoIterator<Item = Command>) -> (String, Vec<u32>) {
    let (mut out, mut pids) = (String::new(), Vec::new());
    for client in clients {
        let (lines, pid) = run_pid(client, None);
        out += &lines;
        pids.push(pid);
    }
    (out, pids)
}

/// The (client pid, server pid) of each `swapped` line on `path` (its message is `swapped
/// CLIENT_PID/comm <-> SERVER_PID/comm`).
fn swapped_pairs(agent: &Agent, path: &str) -> Vec<(u32, u32)> {
    let pid = |label: &str| label.split('/').next().and_then(|p| p.parse().ok());
    agent
        .events_on("swapped", path)
        .iter()
        .filter_map(|e| {
            let (client, server) = e["message"].as_str()?.strip_prefix("swapped ")?.split_once(" <-> ")?;
            Some((pid(client)?, pid(server)?))
        })
        .collect()
}

/// The agent's `not swapped` reasons on `path` (for failure messages).
fn not_swapped_reasons(agent: &Agent, path: &str) -> BTreeMap<String, usize> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for e in agent.events_on("not", path) {
        *reasons.entry(e["reason"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    reasons
}

/// How long the agent may take to trace the swaps of connections that already ran.
const TRACE_TIMEOUT: Duration = Duration::from_secs(10);

/// Asserts that exactly `expected` connections of the client process `client_pid` on `path`
/// were traced `swapped` (waiting up to 10 s for the lines, then 300 ms more for extra ones).
fn assert_client_swapped(agent: &Agent, path: &str, client_pid: u32, expected: usize, what: &str) {
    let of_client = || swapped_pairs(agent, path).iter().filter(|(c, _)| *c == client_pid).count();
    poll_until(TRACE_TIMEOUT, || of_client() >= expected);
    std::thread::sleep(Duration::from_millis(300));
    let connects = agent.events_on("connect", path).iter().filter(|e| e["pid"] == client_pid).count();
    eprintln!("{what} (pid {client_pid}): {connects} connections, {} swapped", of_client());
    assert_eq!(
        of_client(),
        expected,
        "{what} (pid {client_pid}): {expected} connections must be swapped; the agent saw {connects} connects from it and swapped {} \
         (not swapped on {path}: {:?})",
        of_client(),
        not_swapped_reasons(agent, path)
    );
}

/// Asserts two sessions' outputs are identical, showing the first differing line.
fn assert_same(what: &str, plain: &str, tssx: &str) {
    if plain != tssx {
        let line = plain.lines().zip(tssx.lines()).position(|(a, b)| a != b);
        let show = |s: &str| line.and_then(|i| s.lines().nth(i)).unwrap_or("").chars().take(200).collect::<String>();
        panic!(
            "{what}: output differs with tssx ({} vs {} bytes; first difference at line {line:?}: plain {:?}, tssx {:?})",
            plain.len(),
            tssx.len(),
            show(plain),
            show(tssx)
        );
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp dir").to_owned()
}

// ---------------------------------------------------------------------------------------- Redis

/// The functional part of a Redis session: outputs of several redis-cli runs (one connection
/// each), including a 256 KiB value sent from stdin and read back.
fn redis_session(sock: &str, hooked: bool, big: &[u8]) -> String {
    let cli = |args: &[&str], stdin: Option<&[u8]>| {
        let mut cmd = command("redis-cli", hooked);
        cmd.args(["-s", sock]).args(args);
        run(cmd, stdin)
    };
    let script = "FLUSHALL\nSET greeting hello\nGET greeting\nAPPEND greeting \" world\"\nSTRLEN greeting\n\
                  INCR n\nINCRBY n 41\nDECR n\nRPUSH l a b c d\nLPUSH l z\nLRANGE l 0 -1\nLLEN l\n\
                  HSET h f1 v1 f2 v2\nHGETALL h\nMSET a 1 b 2 c 3\nMGET a b c missing\nDEL a b\nEXISTS a b c\n\
                  ZADD z 3 three 1 one 2 two\nZRANGE z 0 -1 WITHSCORES\nGET missing\nTYPE l\n";
    let mut out = cli(&[], Some(script.as_bytes()));
    for _ in 0..3 {
        out += &cli(&["INCR", "n"], None);
    }
    out += &cli(&["-x", "SET", "big"], Some(big));
    out += &cli(&["STRLEN", "big"], None);
    let got = cli(&["--raw", "GET", "big"], None);
    // --raw prints the value and a newline.
    assert!(got.as_bytes() == [big, b"\n"].concat(), "GET big returned {} bytes, not the {} sent", got.len(), big.len() + 1);
    out += &cli(&["DBSIZE"], None);
    out
}

/// redis-benchmark's tests (`-t ping,set,get`) and its clients per test (`-c`): each test opens
/// its own clients, which live for the whole test.
const REDIS_BENCH_TESTS: [&str; 4] = ["PING_INLINE", "PING_MBULK", "SET", "GET"];
const REDIS_BENCH_CLIENTS: usize = 50;

/// redis-benchmark on `sock` (50 clients, 20 000 requests per test, so that each client
/// connection carries 400 requests); asserts every test completed and returns its pid.
/// Besides its clients, redis-benchmark opens one connection first for two `CONFIG GET`s and
/// closes it at once: it may stay plain.
fn redis_benchmark(sock: &str, hooked: bool) -> u32 {
    let mut cmd = command("redis-benchmark", hooked);
    cmd.args(["-s", sock, "-c", &REDIS_BENCH_CLIENTS.to_string(), "-n", "20000", "-t", "ping,set,get", "-q"]);
    let (out, pid) = run_pid(cmd, None);
    for test in REDIS_BENCH_TESTS {
        let line = out.lines().find(|l| l.trim_start().starts_with(&format!("{test}:")) && l.contains("requests per second"));
        assert!(line.is_some(), "redis-benchmark did not finish {test}: {out:?}");
    }
    pid
}

/// Starts redis-server on `sock` (no TCP, no persistence), waits for PONG, runs the session
/// and the benchmark, stops it; returns the session's output and redis-benchmark's pid.
fn redis_run(dir: &Path, sock: &str, hooked: bool, big: &[u8]) -> (String, u32) {
    let mut server = command("redis-server", hooked);
    server.args(["--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--save", "", "--appendonly", "no"]);
    server.args(["--daemonize", "no", "--dir"]).arg(dir).arg("--logfile").arg(dir.join(format!("redis-{hooked}.log")));
    let mut server = Daemon::spawn("redis-server", server);
    server.wait_ready(|| {
        Path::new(sock).exists() && command("redis-cli", hooked).args(["-s", sock, "PING"]).output().is_ok_and(|o| o.stdout == b"PONG\n")
    });
    let session = redis_session(sock, hooked, big);
    let bench = redis_benchmark(sock, hooked);
    // The data survived the benchmark's own keys.
    let check = run(
        {
            let mut c = command("redis-cli", hooked);
            c.args(["-s", sock, "GET", "greeting"]);
            c
        },
        None,
    );
    assert_eq!(check, "hello world\n");
    server.stop(libc::SIGTERM);
    (session, bench)
}

#[test]
fn redis_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-redis");
    let (plain_sock, tssx_sock) = (path_str(&dir.join("plain.sock")), path_str(&dir.join("redis.sock")));
    let big: Vec<u8> = (0..256 * 1024).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    let agent = HookedAgent::start(&[&tssx_sock]);
    let (plain, _) = redis_run(&dir, &plain_sock, false, &big);
    assert!(plain.starts_with("OK\nOK\nhello\n11\n") && plain.contains("\n262144\n"), "unexpected plain session: {plain}");
    let (tssx, bench) = redis_run(&dir, &tssx_sock, true, &big);
    assert_same("redis-cli session", &plain, &tssx);
    assert!(agent.events_on("connect", &plain_sock).is_empty(), "the plain run's socket is not watched");
    // Each benchmark client lived for a whole test and carried 400 requests: all migrated. The
    // one-shot redis-cli connections may have stayed plain (their results are compared above).
    assert_client_swapped(&agent, &tssx_sock, bench, REDIS_BENCH_TESTS.len() * REDIS_BENCH_CLIENTS, "redis-benchmark");
    assert!(agent.stop().success());
}

// ----------------------------------------------------------------------------------- PostgreSQL

const PG_PORT: &str = "54329";

/// Queries whose complete output is compared: DDL/DML tags, aggregates, a 20 000-row result
/// (about 900 KB through the socket), a 100 KB value and COPY.
const PG_SCRIPT: &str = "
DROP TABLE IF EXISTS t;
CREATE TABLE t (id int PRIMARY KEY, name text, v numeric);
INSERT INTO t SELECT g, 'name' || g, g * 1.5 FROM generate_series(1, 10000) g;
SELECT count(*), sum(v), min(name), max(name) FROM t;
SELECT id, name, v FROM t WHERE id % 1000 = 0 ORDER BY id;
UPDATE t SET v = v * 2 WHERE id <= 100;
SELECT md5(string_agg(name || v, ',' ORDER BY id)) FROM t;
SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
SELECT length(repeat('ab', 50000)), md5(repeat('ab', 50000));
BEGIN; DELETE FROM t WHERE id > 5000; SELECT count(*) FROM t; ROLLBACK;
SELECT count(*) FROM t;
COPY (SELECT * FROM t WHERE id <= 5 ORDER BY id) TO STDOUT;
";

/// As the unprivileged `postgres` user (PostgreSQL refuses root), keeping the environment.
fn as_postgres(program: &str, hooked: bool) -> Command {
    let mut cmd = command("setpriv", hooked);
    cmd.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]).arg(program);
    cmd
}

fn chown_postgres(path: &Path) {
    run(
        {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(path);
            c
        },
        None,
    );
}

fn pg_client(program: &str, sock_dir: &str, hooked: bool) -> Command {
    let mut cmd = command(program, hooked);
    cmd.args(["-h", sock_dir, "-p", PG_PORT, "-U", "postgres"]);
    cmd
}

/// A session that lasted this long must have migrated (it lived far longer than
/// `--claim-after` plus a migration, and every session moves data).
const LONG_SESSION: Duration = Duration::from_millis(500);

/// The sessions in postgres's log (`log_disconnections`, `log_line_prefix='%p '`): each
/// backend's pid (one backend per connection) and how long its session lasted.
fn pg_sessions(log: &[String]) -> Vec<(u32, Duration)> {
    log.iter()
        .filter_map(|line| {
            let (pid, rest) = line.split_once(' ')?;
            let time = rest.split_once("disconnection: session time: ")?.1.split_whitespace().next()?;
            let mut hms = time.split(':').map(|f| f.parse::<f64>().ok());
            let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
            Some((pid.parse().ok()?, Duration::from_secs_f64(h * 3600.0 + m * 60.0 + s)))
        })
        .collect()
}

/// Starts postgres on `data` with its socket in `sock_dir` only, runs the psql script and
/// pgbench, stops it; returns psql's output and the sessions postgres logged.
fn postgres_run(data: &Path, sock_dir: &Path, hooked: bool) -> (String, Vec<(u32, Duration)>) {
    std::fs::create_dir_all(sock_dir).unwrap();
    chown_postgres(sock_dir);
    let sock_dir = path_str(sock_dir);
    let mut server = as_postgres(&format!("{PG_BIN}/postgres"), hooked);
    server.arg("-D").arg(data).args(["-k", &sock_dir, "-p", PG_PORT, "-c", "listen_addresses=", "-c", "fsync=off"]);
    server.args(["-c", "shared_buffers=16MB", "-c", "max_connections=20"]);
    server.args(["-c", "log_connections=on", "-c", "log_disconnections=on", "-c", "log_line_prefix=%p "]);
    let mut server = Daemon::spawn("postgres", server);
    server.wait_ready(|| pg_client(&format!("{PG_BIN}/pg_isready"), &sock_dir, hooked).arg("-q").status().is_ok_and(|s| s.success()));
    let mut psql = pg_client("psql", &sock_dir, hooked);
    psql.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]);
    let out = run(psql, Some(PG_SCRIPT.as_bytes()));
    let mut init = pg_client(&format!("{PG_BIN}/pgbench"), &sock_dir, hooked);
    init.args(["-i", "-s", "1", "-q", "postgres"]);
    run(init, None);
    let mut bench = pg_client(&format!("{PG_BIN}/pgbench"), &sock_dir, hooked);
    bench.args(["-S", "-T", "2", "-c", "1", "postgres"]);
    let report = run(bench, None);
    let processed = report.lines().find_map(|l| l.strip_prefix("number of transactions actually processed: "));
    assert!(processed.and_then(|n| n.trim().parse::<u64>().ok()).is_some_and(|n| n > 0), "pgbench -S: {report}");
    assert!(report.contains("number of failed transactions: 0"), "pgbench -S: {report}");
    // Fast shutdown (SIGINT): postgres exits 0 once every backend is gone.
    let log = server.stop(libc::SIGINT);
    (out, pg_sessions(&log))
}

#[test]
fn postgres_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-pg");
    chown_postgres(&dir);
    let data = dir.join("data");
    let mut initdb = as_postgres(&format!("{PG_BIN}/initdb"), false);
    initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]);
    run(initdb, None);
    let tssx_dir: PathBuf = dir.join("tssx");
    let tssx_sock = path_str(&tssx_dir.join(format!(".s.PGSQL.{PG_PORT}")));
    let agent = HookedAgent::start(&[&tssx_sock]);
    let (plain, _) = postgres_run(&data, &dir.join("plain"), false);
    assert!(plain.contains("10000|75007500.0|name1|name9999"), "unexpected plain output: {}", &plain[..plain.len().min(500)]);
    assert!(plain.lines().count() > 20_000, "the 20 000-row result is missing");
    let (tssx, sessions) = postgres_run(&data, &tssx_dir, true);
    assert_same("psql session", &plain, &tssx);
    // Every session that lasted (pgbench -S's 2 s one at least, likely psql's and pgbench -i's)
    // migrated: its backend is the server end of a `swapped` line. pg_isready and pgbench's
    // short set-up connections may have stayed plain.
    let long: Vec<(u32, Duration)> = sessions.iter().copied().filter(|(_, t)| *t >= LONG_SESSION).collect();
    assert!(!long.is_empty(), "no session of {LONG_SESSION:?} or more in postgres's log: {sessions:?}");
    let swapped_backends = || swapped_pairs(&agent, &tssx_sock).into_iter().map(|(_, server)| server).collect::<Vec<_>>();
    poll_until(TRACE_TIMEOUT, || long.iter().all(|(pid, _)| swapped_backends().contains(pid)));
    let missing: Vec<_> = long.iter().filter(|(pid, _)| !swapped_backends().contains(pid)).collect();
    eprintln!("postgres sessions (backend pid, duration): {sessions:?}; swapped backends: {:?}", swapped_backends());
    assert!(
        missing.is_empty(),
        "sessions (backend pid, duration) that lasted but were not swapped: {missing:?}; all sessions: {sessions:?}; \
         swapped (client, server): {:?}; not swapped: {:?}",
        swapped_pairs(&agent, &tssx_sock),
        not_swapped_reasons(&agent, &tssx_sock)
    );
    assert!(agent.stop().success());
}

/// PostgreSQL as deployed: the agent watches its socket *directory* by prefix (`--paths
/// /var/run/postgresql/`-style), not one socket path; every session that lasted is swapped, and
/// traced with the socket's own path and the pattern that matched it.
#[test]
fn postgres_with_its_socket_directory_watched_by_prefix() {
    require_root();
    let dir = TempDir::new("app-pg-prefix");
    chown_postgres(&dir);
    let data = dir.join("data");
    let mut initdb = as_postgres(&format!("{PG_BIN}/initdb"), false);
    initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]);
    run(initdb, None);
    let sock_dir: PathBuf = dir.join("run-postgresql");
    let prefix = format!("{}/", path_str(&sock_dir));
    let sock = path_str(&sock_dir.join(format!(".s.PGSQL.{PG_PORT}")));
    let agent = HookedAgent::start(&[&prefix]);
    let (out, sessions) = postgres_run(&data, &sock_dir, true);
    assert!(out.contains("10000|75007500.0|name1|name9999"), "unexpected output: {}", &out[..out.len().min(500)]);
    assert!(out.lines().count() > 20_000, "the 20 000-row result is missing");
    let long: Vec<(u32, Duration)> = sessions.iter().copied().filter(|(_, t)| *t >= LONG_SESSION).collect();
    assert!(!long.is_empty(), "no session of {LONG_SESSION:?} or more in postgres's log: {sessions:?}");
    let swapped_backends = || swapped_pairs(&agent, &sock).into_iter().map(|(_, server)| server).collect::<Vec<_>>();
    poll_until(TRACE_TIMEOUT, || long.iter().all(|(pid, _)| swapped_backends().contains(pid)));
    let missing: Vec<_> = long.iter().filter(|(pid, _)| !swapped_backends().contains(pid)).collect();
    assert!(
        missing.is_empty(),
        "sessions (backend pid, duration) that lasted but were not swapped: {missing:?}; all: {sessions:?}; not swapped: {:?}",
        not_swapped_reasons(&agent, &sock)
    );
    let swapped = agent.events_on("swapped", &sock);
    assert!(swapped.iter().all(|s| s["pattern"] == prefix.as_str()), "{swapped:?}");
    assert!(agent.stop().success());
}

// ------------------------------------------------------------------------------------ memcached

/// Starts memcached on `sock` (no TCP), runs the client twice (two connections), stops it;
/// returns the clients' output and pids.
fn memcached_run(sock: &str, hooked: bool) -> (String, Vec<u32>) {
    let mut server = command("memcached", hooked);
    server.args(["-s", sock, "-a", "0700", "-u", "root", "-t", "2", "-m", "64"]);
    let mut server = Daemon::spawn("memcached", server);
    server.wait_ready(|| Path::new(sock).exists());
    let clients = ["200", "50"].map(|rounds| {
        let mut client = command(MEMCACHE, hooked);
        client.args([sock, rounds]);
        client
    });
    let ran = run_each(clients);
    server.stop(libc::SIGTERM);
    ran
}

#[test]
fn memcached_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-memcached");
    let (plain_sock, tssx_sock) = (path_str(&dir.join("plain.sock")), path_str(&dir.join("mc.sock")));
    // Every connection claims on its first call: each client's one connection (hundreds of
    // round trips) must migrate, early in its script.
    let agent = HookedAgent::start_with(&[&tssx_sock], &["--claim-after", "0"]);
    let (plain, _) = memcached_run(&plain_sock, false);
    assert_eq!(plain.matches("\nok\n").count(), 2, "{plain}");
    assert!(plain.contains("< 42\n"), "incr result missing: {plain}");
    let (tssx, clients) = memcached_run(&tssx_sock, true);
    assert_same("memcached session", &plain, &tssx);
    for client in clients {
        assert_client_swapped(&agent, &tssx_sock, client, 1, "tssx-test-memcache");
    }
    assert!(agent.stop().success());
}

// ----------------------------------------------------------------------------------------- nscd

const NSS: &str = env!("CARGO_BIN_EXE_tssx-test-nss");
/// No single lookup may take this long: far above a loaded machine's worst lookup (a few ms),
/// far below the 0.5 s and 1 s stalls of a server that waits for a claim that never comes.
const LOOKUP_BOUND: Duration = Duration::from_millis(300);
/// The same for one `getent` run (a process start, the hook's constructor and one lookup).
const GETENT_BOUND: Duration = Duration::from_millis(450);

/// What to look up: the machine's first users and groups, one that does not exist of each,
/// and the host names of /etc/hosts (never a name that would go to DNS).
struct Lookups {
    users: Vec<String>,
    gids: Vec<String>,
    hosts: Vec<String>,
}

impl Lookups {
    fn of_this_machine() -> Self {
        let first_fields = |file: &str, field: usize| -> Vec<String> {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
            text.lines().filter_map(|l| l.split(':').nth(field)).take(10).map(str::to_owned).collect()
        };
        let mut users = first_fields("/etc/passwd", 0);
        users.push("tssx-no-such-user".into());
        let mut gids = first_fields("/etc/group", 2);
        gids.push("4242424".into());
        let hosts_file = std::fs::read_to_string("/etc/hosts").expect("/etc/hosts");
        let mut hosts: Vec<String> = hosts_file
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .collect();
        hosts.dedup();
        hosts.truncate(4);
        assert!(!hosts.is_empty() && users.len() > 1 && gids.len() > 1, "nothing to look up: {users:?} {gids:?} {hosts:?}");
        Self { users, gids, hosts }
    }
}

/// Runs `cmd` (at most 30 s: a hang fails), returning its exit code, stdout lines and run time.
fn run_timed(cmd: Command) -> (i32, Vec<String>, Duration) {
    let started = Instant::now();
    let mut process = Process::spawn(cmd);
    let status = process.wait(Duration::from_secs(30));
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| panic!("{} hung (killed after 30 s); stderr: {}", process.name(), process.stderr_text()));
    process.wait_closed(Duration::from_secs(5));
    (status.code().unwrap_or(-1), process.stdout_lines(), took)
}

/// Starts nscd with `config` in the namespace (under the hook if `hooked`), runs the lookups
/// (getent and `tssx-test-nss`, under the hook too if `hooked`), checks that each database was
/// served by nscd and that no lookup stalled, stops nscd; returns the transcript of answers.
fn nscd_session(ns: &MountNamespace, config: &Path, hooked: bool, lookups: &Lookups) -> String {
    let in_ns = |program: &str| {
        let mut cmd = ns.command(program);
        if hooked {
            cmd.env("LD_PRELOAD", hook());
        } else {
            cmd.env_remove("LD_PRELOAD");
        }
        cmd
    };
    let so = hook();
    let nscd = Nscd::start(ns, config, hooked.then_some(so.as_path())).unwrap_or_else(|e| panic!("{e:#}"));
    let what = format!("{} nscd ({})", if hooked { "hooked" } else { "plain" }, config.file_name().unwrap_or_default().to_string_lossy());

    let mut transcript = String::new();
    let user = &lookups.users[0];
    let queries: Vec<Vec<&str>> = vec![
        vec!["passwd", user],
        vec!["passwd", "0"],
        vec!["passwd", "tssx-no-such-user"],
        vec!["group", "root"],
        vec!["group", "0"],
        vec!["group", "4242424"],
        vec!["hosts", &lookups.hosts[0]],
        vec!["ahostsv4", &lookups.hosts[0]],
        vec!["initgroups", user],
    ];
    // Twice: a miss (nscd asks the files), then a hit (from its cache or the shared mapping).
    for pass in 0..2 {
        for query in &queries {
            let mut getent = in_ns("getent");
            getent.args(query);
            let (code, lines, took) = run_timed(getent);
            assert!(took < GETENT_BOUND, "{what}: getent {query:?} (pass {pass}) took {took:?}: a stall");
            transcript += &format!("getent {} -> exit {code}\n{}\n", query.join(" "), lines.join("\n"));
        }
    }
    let mut check = in_ns(NSS);
    check.args(["check", "40", &lookups.users.join(","), &lookups.gids.join(","), &lookups.hosts.join(",")]);
    let (code, lines, _) = run_timed(check);
    assert_eq!(code, 0, "{what}: tssx-test-nss check failed: {lines:?}");
    let time = lines.iter().find(|l| l.starts_with("time ")).cloned().unwrap_or_default();
    let slowest = time.split_whitespace().find_map(|w| w.strip_prefix("slowest_us=")).and_then(|v| v.parse::<u64>().ok());
    let slowest = Duration::from_micros(slowest.unwrap_or_else(|| panic!("{what}: no timing line: {lines:?}")));
    assert!(slowest < LOOKUP_BOUND, "{what}: a lookup took {slowest:?} ({time}): a stall");
    eprintln!("{what}: {time}");
    transcript += &lines.iter().filter(|l| !l.starts_with("time ")).map(|l| format!("{l}\n")).collect::<String>();

    let misses = nscd.misses(ns).unwrap_or_else(|| panic!("{what}: nscd -g failed"));
    for db in ["passwd", "group", "hosts"] {
        assert!(misses.get(db).is_some_and(|&n| n > 0), "{what}: nscd served no {db} lookup (misses per cache: {misses:?})");
    }
    nscd.stop().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    transcript
}

/// nscd, the design's own example: glibc's nscd client uses the socket from inside libc, so
/// the client never claims. With nscd and every client under the hook, for `shared no` (every
/// lookup a connection) and `shared yes` (clients map the cache, fetched with SCM_RIGHTS over
/// the socket), every answer must be the plain one, no lookup may stall, and no connection may
/// be swapped (only one end ever has the hook's view of it).
#[test]
fn nscd_answers_the_same_with_tssx_and_never_stalls() {
    require_root();
    let _lock = MachineLock::acquire();
    let dir = TempDir::new("app-nscd");
    let dirs = tssx_tests::nscd::private_dirs();
    let ns = MountNamespace::new(&dirs.iter().map(String::as_str).collect::<Vec<_>>());
    let agent = Agent::spawn_wrapped(&ns.wrapper(), &agent_bin(), &[NSCD_SOCKET], None, &["-v"]).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(std::fs::metadata(ns.path("/run/tssx")).map(|m| m.permissions().mode() & 0o7777).ok(), Some(0o755), "the private /run/tssx");
    let lookups = Lookups::of_this_machine();
    for shared in [false, true] {
        let config = tssx_tests::nscd::config(&dir, shared).unwrap();
        let plain = nscd_session(&ns, &config, false, &lookups);
        assert!(plain.contains("ok rounds=40") && plain.contains("getent passwd 0 -> exit 0\nroot:"), "unexpected plain session: {plain}");
        let tssx = nscd_session(&ns, &config, true, &lookups);
        assert_same(&format!("nscd lookups, shared {shared}"), &plain, &tssx);
    }
    assert!(!agent.events_on("connect", NSCD_SOCKET).is_empty(), "the agent saw no connection to {NSCD_SOCKET}");
    let swapped = agent.events_on("swapped", NSCD_SOCKET);
    assert!(swapped.is_empty(), "glibc's client never claims, yet connections were swapped: {swapped:?}");
    assert!(agent.stop().success());
}

// ---------------------------------------------------------------------------------------- nginx

/// The backend's files: name and size (random bytes from a fixed seed).
const NGINX_FILES: &[(&str, usize)] = &[("small.txt", 100), ("4k.bin", 4096), ("64k.bin", 65536), ("1m.bin", 1 << 20), ("3m.bin", 3 << 20)];

/// Writes the backend's document root.
fn nginx_www(dir: &Path) -> PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut rng = Rng::new(12);
    for &(name, size) in NGINX_FILES {
        std::fs::write(www.join(name), rng.bytes(size)).unwrap();
    }
    www
}

/// FNV-1a, to name a body in a transcript.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// One proxy session: every file (and a missing one) twice through each upstream, bodies
/// checked against the files; a 3 MiB request body through each; then wrk for a second on
/// each upstream, which must see no error and no non-2xx answer. Returns the transcript and
/// how many keepalive upstream connections the backend accepted.
fn nginx_session(dir: &Path, www: &Path, name: &str, preload: Option<&Path>, config: NginxConfig) -> (String, usize, usize) {
    let what = format!("nginx {name}");
    let proxy = NginxProxy::start(dir, name, www, preload, config).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let mut transcript = String::new();
    for round in 0..2 {
        for upstream in [Upstream::Fresh, Upstream::Keep] {
            for file in NGINX_FILES.iter().map(|f| f.0).chain(["missing.bin"]) {
                let (status, body) = proxy.get(upstream, file).unwrap_or_else(|e| panic!("{what}: {e:#}"));
                let verdict = match std::fs::read(www.join(file)) {
                    Ok(want) if want == body => "the file".to_owned(),
                    Ok(_) => format!("NOT the file ({} bytes, fnv {:016x})", body.len(), fnv(&body)),
                    Err(_) => format!("{} bytes, fnv {:016x}", body.len(), fnv(&body)),
                };
                transcript += &format!("round {round}: GET /{}/{file} -> {status}, body: {verdict}\n", upstream.name());
            }
            let (status, body) = proxy.post(upstream, "small.txt", &www.join("3m.bin")).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            transcript += &format!("round {round}: POST 3 MiB /{}/small.txt -> {status}, body fnv {:016x}\n", upstream.name(), fnv(&body));
        }
    }
    for upstream in [Upstream::Fresh, Upstream::Keep] {
        let load = wrk(&proxy.url(upstream, "4k.bin"), 8, 1).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        eprintln!("{what}: wrk on /{}/4k.bin: {load:?}", upstream.name());
        assert!(
            load.requests > 0 && load.non_2xx == 0 && load.socket_errors.is_none(),
            "{what}: wrk through the {} upstream: {load:?}",
            upstream.name()
        );
    }
    let keep = proxy.upstream_connections(Upstream::Keep);
    let busy = proxy.busy_upstream_connections(Upstream::Keep, BUSY_UPSTREAM_REQUESTS);
    proxy.stop().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    (transcript, keep, busy)
}

/// A keepalive upstream connection that served this many requests lived far longer than the
/// claim rule's millisecond while in use: it must have been swapped. (One that served a few
/// requests within its first millisecond and then sat idle in nginx's pool never claims: an
/// idle connection makes no call, and it is not worth a segment.)
const BUSY_UPSTREAM_REQUESTS: u64 = 100;

/// Runs each of `configs` plain and then with both nginx under the hook on watched sockets:
/// the transcripts must be identical, and every keepalive upstream connection of the hooked
/// run (each carries thousands of wrk requests) must be traced `swapped`.
fn nginx_plain_vs_tssx(test: &str, configs: &[NginxConfig]) {
    require_root();
    let dir = TempDir::new(test);
    let www = nginx_www(&dir);
    let name = |c: &NginxConfig| format!("master-{}-sendfile-{}", c.master_process, c.sendfile);
    let watched: Vec<String> = configs
        .iter()
        .flat_map(|c| [Upstream::Fresh, Upstream::Keep].map(|u| NginxProxy::socket(&dir, &format!("tssx-{}", name(c)), u)))
        .collect();
    let agent = HookedAgent::start(&watched.iter().map(String::as_str).collect::<Vec<_>>());
    for config in configs {
        let (plain, plain_keep, _) = nginx_session(&dir, &www, &format!("plain-{}", name(config)), None, *config);
        assert!(
            !plain.contains("NOT the file") && plain.contains("GET /keep/3m.bin -> 200, body: the file"),
            "unexpected plain session: {plain}"
        );
        assert!(plain_keep > 0, "no keepalive upstream connection in the plain run");
        let tssx_name = format!("tssx-{}", name(config));
        let (tssx, keep, busy) = nginx_session(&dir, &www, &tssx_name, Some(&hook()), *config);
        assert_same(&format!("nginx {tssx_name}"), &plain, &tssx);
        let keep_sock = NginxProxy::socket(&dir, &tssx_name, Upstream::Keep);
        agent.wait_for("swapped", &keep_sock, busy, TRACE_TIMEOUT);
        // (The idle ones never swap: a moment for any other line still on its way.)
        std::thread::sleep(Duration::from_millis(300));
        let swapped = agent.events_on("swapped", &keep_sock);
        eprintln!(
            "nginx {tssx_name}: {keep} keepalive upstream connections ({busy} served {BUSY_UPSTREAM_REQUESTS}+ requests), {} swapped",
            swapped.len()
        );
        assert!(busy > 0, "{tssx_name}: no keepalive upstream connection served {BUSY_UPSTREAM_REQUESTS} requests");
        assert!(
            (busy..=keep).contains(&swapped.len()),
            "{tssx_name}: {keep} keepalive upstream connections, {busy} of them busy, swapped: {swapped:?}; not swapped: {:?}; \
             paired: {}, claims refused: {}; agent stats: {}",
            not_swapped_reasons(&agent, &keep_sock),
            agent.events_on("paired", &keep_sock).len(),
            agent.events("claim refused").len(),
            agent.try_stats().map(|s| s.to_string()).unwrap_or_else(|e| format!("{e:#}"))
        );
    }
    assert!(agent.stop().success());
}

/// nginx as a reverse proxy to a second nginx on watched Unix sockets, both under the hook,
/// with `master_process off` and `on`: (a) a new upstream connection per request, (b) upstream
/// keepalive. nginx registers each upstream socket with epoll (edge-triggered) before it
/// connects, so a keepalive connection migrates under an existing registration: responses must
/// be the plain ones, wrk must see no error, and in (b) every upstream connection must be traced
/// `swapped`. The backend writes with `write`/`writev` here (`sendfile off`).
#[test]
fn nginx_reverse_proxy_gives_the_same_responses_with_tssx() {
    let configs = [false, true].map(|master_process| NginxConfig { master_process, sendfile: false });
    nginx_plain_vs_tssx("app-nginx", &configs);
}

/// As [`nginx_reverse_proxy_gives_the_same_responses_with_tssx`], with the backend sending its
/// files with `sendfile(2)`, as Debian's nginx configuration does: a swapped connection must
/// get sendfile's bytes on its ring (or be handed back first).
#[test]
fn nginx_backend_with_sendfile_gives_the_same_responses_with_tssx() {
    nginx_plain_vs_tssx("app-nginx-sendfile", &[NginxConfig { master_process: true, sendfile: true }]);
}

// ------------------------------------------------------------------------------------- D-Bus

/// The test's D-Bus programs (dbus-python over libdbus, which passes fds with SCM_RIGHTS).
const DBUS_SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dbus");

/// A private bus's configuration: one Unix socket at `sock`, EXTERNAL authentication (the
/// daemon checks the peer's credentials from the kernel), everything allowed.
fn dbus_config(dir: &Path, sock: &str, hooked: bool) -> PathBuf {
    let conf = dir.join(if hooked { "bus-tssx.conf" } else { "bus-plain.conf" });
    std::fs::write(
        &conf,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n  <type>session</type>\n  \
             <listen>unix:path={sock}</listen>\n  <auth>EXTERNAL</auth>\n  <policy context=\"default\">\n    \
             <allow send_destination=\"*\" eavesdrop=\"true\"/>\n    <allow eavesdrop=\"true\"/>\n    <allow own=\"*\"/>\n    \
             <allow user=\"*\"/>\n  </policy>\n</busconfig>\n"
        ),
    )
    .expect("write the bus configuration");
    conf
}

/// One D-Bus session on a private bus at `sock`: dbus-daemon, a service and a client (method
/// calls, a 200 KB string, fds both ways, several fds in flight, signals), then `gdbus` calls
/// (GDBus's own implementation). Returns the outputs and the pids of the bus's clients.
fn dbus_run(dir: &Path, sock: &str, hooked: bool) -> (String, Vec<(u32, &'static str)>) {
    let address = format!("unix:path={sock}");
    let mut daemon = command("dbus-daemon", hooked);
    daemon.arg(format!("--config-file={}", dbus_config(dir, sock, hooked).display())).args(["--nofork", "--nopidfile"]);
    let mut daemon = Daemon::spawn("dbus-daemon", daemon);
    daemon.wait_ready(|| Path::new(sock).exists());
    let mut service = command("/usr/bin/python3", hooked);
    service.arg(format!("{DBUS_SCRIPTS}/service.py")).arg(&address);
    let service = Daemon::spawn("the D-Bus service (python3-dbus)", service);
    service.process.expect_line("ready", DAEMON_TIMEOUT);
    let mut pids = vec![(service.process.pid(), "service.py")];
    let mut client = command("/usr/bin/python3", hooked);
    client.arg(format!("{DBUS_SCRIPTS}/client.py")).args([&address, "300"]);
    let (mut out, pid) = run_pid(client, None);
    pids.push((pid, "client.py"));
    let gdbus = |method: &str, args: &[&str]| {
        let mut cmd = command("gdbus", hooked);
        cmd.args(["call", "--address", &address, "--dest", "org.tssx.Test", "--object-path", "/org/tssx/Test", "--method"])
            .arg(format!("org.tssx.Test.{method}"))
            .args(args);
        run_pid(cmd, None)
    };
    let (echo, pid) = gdbus("Echo", &["from gdbus"]);
    out += &echo;
    pids.push((pid, "gdbus call"));
    let (quit, pid) = gdbus("Quit", &[]);
    out += &quit;
    pids.push((pid, "gdbus call"));
    let mut service = service;
    let status = service.process.wait(DAEMON_TIMEOUT).expect("the service exits after Quit");
    assert!(status.success(), "the service exited with {status}: {}", service.process.stderr_text());
    out += &service.process.stdout_lines().join("\n");
    daemon.stop(libc::SIGTERM);
    (out, pids)
}

#[test]
fn dbus_daemon_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-dbus");
    let (plain_sock, tssx_sock) = (path_str(&dir.join("plain.sock")), path_str(&dir.join("bus.sock")));
    // Every connection claims on its first call: each one migrates early, authentication
    // (EXTERNAL, the daemon asks the kernel for the peer's credentials) before or after.
    let agent = HookedAgent::start_with(&[&tssx_sock], &["--claim-after", "0"]);
    let (plain, _) = dbus_run(&dir, &plain_sock, false);
    for expected in [
        "sum of 300 calls: 117600",
        "echo big: True",
        "echo big after the fds: True",
        "ReadFd: 70000 bytes",
        "MakeFd: second",
        "signals: ['a', 'b', 'c']",
    ] {
        assert!(plain.contains(expected), "{expected:?} missing: {plain}");
    }
    let (tssx, clients) = dbus_run(&dir, &tssx_sock, true);
    assert_same("D-Bus session", &plain, &tssx);
    for &(pid, what) in &clients {
        assert_client_swapped(&agent, &tssx_sock, pid, 1, what);
    }
    // The client's connection stayed on the rings through the fd passing: both 200 KB echoes
    // (one after the fds), each way, crossed shared memory.
    let closed = closed_of(&agent, &tssx_sock, clients[1].0);
    let bytes = closed["bytes_client_to_server"].as_u64().unwrap_or(0) + closed["bytes_server_to_client"].as_u64().unwrap_or(0);
    assert!(bytes >= 800_000, "only {bytes} bytes of the client's connection crossed shared memory: {closed}");
    assert!(agent.stop().success());
}

// ------------------------------------------------------------------ Node.js and Python asyncio

/// The test's echo programs for two language runtimes (see their headers).
const RUNTIMES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/runtimes");

/// The socket's place in [`echo_run`]'s argument lists.
const SOCK: &str = "{sock}";

/// One echo session on `sock`: `program` (`node`, `python3`, or a test program with no `script`) runs `script` as the server with
/// `server` (its arguments, [`SOCK`] standing for `sock`) until it prints `ready`, then as each
/// client of `clients` in turn, each run to its end; returns the clients' outputs and pids.
fn echo_run(program: &str, script: &str, sock: &str, hooked: bool, server: &[&str], clients: &[&[&str]]) -> (String, Vec<u32>) {
    // (No script: `program` is the test's own.)
    let script: Vec<String> = if script.is_empty() { Vec::new() } else { vec![format!("{RUNTIMES}/{script}")] };
    let args = |list: &[&str]| list.iter().map(|a| if *a == SOCK { sock.to_owned() } else { (*a).to_owned() }).collect::<Vec<_>>();
    let mut cmd = command(program, hooked);
    cmd.args(&script).args(args(server));
    let name = match program {
        "node" => "node (nodejs)",
        "/usr/bin/python3" => "python3",
        _ => "the test's server",
    };
    let daemon = Daemon::spawn(name, cmd);
    daemon.process.expect_line("ready", DAEMON_TIMEOUT);
    let ran = run_each(clients.iter().map(|client| {
        let mut cmd = command(program, hooked);
        cmd.args(&script).args(args(client));
        cmd
    }));
    daemon.stop(libc::SIGTERM);
    ran
}

/// Node.js (libuv: epoll, non-blocking `read`/`writev`, `accept4`) and Python's asyncio (its
/// selector loop: epoll, `recv`/`send`): a client sends 300 messages of mixed sizes, 1 B to
/// 300 KB, each echoed in full before the next, then half-closes. The echoes must be
/// identical to plain (counts and SHA-256 of both directions), and each client's one
/// connection swapped.
#[test]
fn node_and_python_asyncio_echo_the_same_with_tssx() {
    require_root();
    let dir = TempDir::new("app-runtimes");
    let runs = [("node", "echo_node.js", "node"), ("/usr/bin/python3", "echo_asyncio.py", "asyncio")];
    let socks: Vec<String> = runs.iter().map(|(_, _, name)| path_str(&dir.join(format!("{name}.sock")))).collect();
    let agent = HookedAgent::start(&socks.iter().map(String::as_str).collect::<Vec<_>>());
    for ((program, script, name), sock) in runs.iter().zip(&socks) {
        let plain_sock = path_str(&dir.join(format!("{name}-plain.sock")));
        let (server, clients): (&[&str], &[&[&str]]) = (&["server", SOCK], &[&["client", SOCK, "300"]]);
        let (plain, _) = echo_run(program, script, &plain_sock, false, server, clients);
        assert!(plain.contains("rounds 300,") && plain.contains("echo identical"), "{name} plain: {plain}");
        let (tssx, pids) = echo_run(program, script, sock, true, server, clients);
        assert_same(&format!("{name} echo session"), &plain, &tssx);
        assert_client_swapped(&agent, sock, pids[0], 1, &format!("{name} client"));
    }
    assert!(agent.stop().success());
}

/// A Node.js cluster of two workers, 20 concurrent clients of 200 lines each (in one client
/// process), in both of Node's scheduling policies:
/// - `none`: each worker accepts on the shared listener itself, so a connection is accepted
///   where it is served, and every one of the 20 must be swapped;
/// - `rr` (Node's default on Linux): the primary accepts each connection and passes the socket
///   to a worker with `SCM_RIGHTS` while it is still plain. A socket passed while plain never
///   migrates (the worker cannot share the primary's byte counts; README, "Passing a swapped
///   socket"): none may be swapped, and every line must still come back intact, with no stall.
#[test]
fn node_cluster_workers_echo_the_same_with_tssx() {
    require_root();
    let dir = TempDir::new("app-node-cluster");
    let socks = [path_str(&dir.join("none.sock")), path_str(&dir.join("rr.sock"))];
    let agent = HookedAgent::start(&[&socks[0], &socks[1]]);
    for (policy, sock) in ["none", "rr"].into_iter().zip(&socks) {
        let plain_sock = path_str(&dir.join(format!("{policy}-plain.sock")));
        let (server, clients): (&[&str], &[&[&str]]) = (&["cluster", SOCK, policy], &[&["clients", SOCK, "20", "200"]]);
        let (plain, _) = echo_run("node", "echo_node.js", &plain_sock, false, server, clients);
        assert_eq!(plain.trim(), "4000 of 4000 lines echoed intact", "{policy} plain");
        let (tssx, pids) = echo_run("node", "echo_node.js", sock, true, server, clients);
        assert_same(&format!("node cluster ({policy}) session"), &plain, &tssx);
        let expected = if policy == "none" { 20 } else { 0 };
        assert_client_swapped(&agent, sock, pids[0], expected, &format!("node cluster ({policy}) clients"));
    }
    assert!(agent.stop().success());
}

/// tokio's runtimes, multi-threaded and current-thread: 8 concurrent connections, each 100
/// messages of 1 B to 300 KB, each echoed in full before the next. mio registers every socket
/// through a duplicate of its epoll fd and waits on the original: the hook must take both
/// numbers for one instance (it once reported its own doorbell registration there, which tokio
/// read as a pointer: SIGSEGV). The echoes must be identical to plain, and all 8 connections
/// swapped.
#[test]
fn tokio_runtimes_echo_the_same_with_tssx() {
    require_root();
    let dir = TempDir::new("app-tokio");
    let program = env!("CARGO_BIN_EXE_tssx-test-tokio");
    let flavors = ["multi", "current"];
    let socks: Vec<String> = flavors.iter().map(|f| path_str(&dir.join(format!("{f}.sock")))).collect();
    let agent = HookedAgent::start(&socks.iter().map(String::as_str).collect::<Vec<_>>());
    for (flavor, sock) in flavors.into_iter().zip(&socks) {
        let plain_sock = path_str(&dir.join(format!("{flavor}-plain.sock")));
        let (server, clients): (&[&str], &[&[&str]]) = (&["server", SOCK, flavor], &[&["client", SOCK, flavor, "8", "100"]]);
        let (plain, _) = echo_run(program, "", &plain_sock, false, server, clients);
        assert_eq!(plain.matches("echo identical").count(), 8, "tokio ({flavor}) plain: {plain}");
        let (tssx, pids) = echo_run(program, "", sock, true, server, clients);
        assert_same(&format!("tokio ({flavor}) echo session"), &plain, &tssx);
        assert_client_swapped(&agent, sock, pids[0], 8, &format!("tokio ({flavor}) clients"));
    }
    assert!(agent.stop().success());
}

/// Python's multiprocessing in its three start methods (`fork`, `forkserver`, `spawn`;
/// `tests/runtimes/multiprocessing_py.py`): a `Listener` answering 3 worker processes'
/// `Client`s (150 messages of up to 300 KB each, then a pipe's fd passed with
/// `reduction.send_handle` on the swapped connection), a `Manager`'s shared dict and queue,
/// and a `Pool`. Everything runs under a directory the agent watches by prefix (`TMPDIR`
/// points the Manager's and the forkserver's sockets there too). The outputs must be identical
/// to plain, and the 3 workers' connections swapped.
#[test]
fn python_multiprocessing_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-multiprocessing");
    let watched = dir.join("watched");
    let agent = HookedAgent::start(&[&format!("{}/", path_str(&watched))]);
    for method in ["fork", "forkserver", "spawn"] {
        let session = |base: &Path, hooked: bool| {
            let run_dir = base.join(method);
            std::fs::create_dir_all(&run_dir).expect("run directory");
            let mut cmd = command("/usr/bin/python3", hooked);
            cmd.env("TMPDIR", &run_dir).arg(format!("{RUNTIMES}/multiprocessing_py.py")).arg(method).arg(&run_dir);
            (run(cmd, None), path_str(&run_dir.join("pymp-test/listener.sock")))
        };
        let (plain, _) = session(&dir.join("plain"), false);
        assert!(plain.matches("through a passed pipe").count() == 3 && plain.contains("manager: 600 keys"), "{method} plain: {plain}");
        let (tssx, listener) = session(&watched, true);
        assert_same(&format!("multiprocessing ({method}) session"), &plain, &tssx);
        let swapped = agent.wait_for("swapped", &listener, 3, TRACE_TIMEOUT);
        assert_eq!(
            swapped.len(),
            3,
            "multiprocessing ({method}): the 3 workers' connections must be swapped (not swapped: {:?})",
            not_swapped_reasons(&agent, &listener)
        );
    }
    assert!(agent.stop().success());
}

// ------------------------------------------------------------------------------------------ X11

/// The X11 test's displays, plain and under tssx: private numbers. A display's sockets are
/// `/tmp/.X11-unix/X<N>` and the abstract `@/tmp/.X11-unix/X<N>`, which Xlib and xcb try first.
const X_PLAIN: u32 = 7371;
const X_TSSX: u32 = 7373;
/// The test's X client that passes fds both ways over its connection (see its header).
const SHM_FDS_C: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/x11/shm_fds.c");

/// Both sockets of display `display`.
fn x_sockets(display: u32) -> [String; 2] {
    [format!("/tmp/.X11-unix/X{display}"), format!("@/tmp/.X11-unix/X{display}")]
}

/// Builds [`SHM_FDS_C`] into `dir` (with xcb's headers, `cargo xtask setup` installs them).
fn build_shm_fds(dir: &Path) -> PathBuf {
    let bin = dir.join("shm_fds");
    let out = Command::new("cc")
        .args(["-Wall", "-Werror", "-O2", "-o"])
        .arg(&bin)
        .arg(SHM_FDS_C)
        .arg("-lxcb")
        .output()
        .expect("run cc (cargo xtask setup installs gcc)");
    assert!(
        out.status.success(),
        "cc {SHM_FDS_C} failed (cargo xtask setup installs libxcb1-dev):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// `program` as a client of display `display`.
fn x_client(program: &str, display: u32, hooked: bool) -> Command {
    let mut cmd = command(program, hooked);
    cmd.env("DISPLAY", format!(":{display}")).env_remove("XAUTHORITY");
    cmd
}

/// One X session on `display`: Xvfb (1024x768, depth 24, the classic weave on its root so that
/// a dump has something to show), then each client to its end: xdpyinfo, `xwininfo -root
/// -tree`, `xprop -root`, `xwd -root` (a 3 MB dump), the fd-passing client `shm_fds` (200 rounds)
/// and, under the hook, a short x11perf (one-way `PutImage`s, `GetImage` round trips). Returns
/// the clients' outputs (xdpyinfo's line naming the display left out, x11perf's test names
/// only), the dump, and the clients' pids.
fn x11_run(dir: &Path, display: u32, hooked: bool, shm_fds: &Path) -> (String, Vec<u8>, Vec<(u32, &'static str)>) {
    let mut server = command("Xvfb", hooked);
    // -displayfd: one line with the display number once it accepts connections.
    server.arg(format!(":{display}")).args(["-nolisten", "tcp", "-screen", "0", "1024x768x24", "-retro", "-displayfd", "1"]);
    let server = Daemon::spawn("Xvfb (xvfb)", server);
    server.process.expect_line(&display.to_string(), DAEMON_TIMEOUT);
    let mut pids = Vec::new();
    let mut run_client = |program: &str, args: &[&str], what: &'static str| {
        let mut cmd = x_client(program, display, hooked);
        cmd.args(args);
        let (out, pid) = run_pid(cmd, None);
        pids.push((pid, what));
        out
    };
    let info = run_client("xdpyinfo", &[], "xdpyinfo");
    assert!(info.contains("name of display:"), "xdpyinfo: {info}");
    let mut out: String = info.lines().filter(|l| !l.starts_with("name of display:")).map(|l| format!("{l}\n")).collect();
    out += &run_client("xwininfo", &["-root", "-tree"], "xwininfo");
    out += &run_client("xprop", &["-root"], "xprop");
    let dump = dir.join(format!("root-{display}.xwd"));
    run_client("xwd", &["-root", "-silent", "-out", &path_str(&dump)], "xwd");
    out += &run_client(&path_str(shm_fds), &["200"], "shm_fds");
    if hooked {
        let perf = run_client("x11perf", &["-repeat", "1", "-time", "1", "-putimage10", "-getimage10"], "x11perf");
        let tests: Vec<&str> = perf.lines().filter(|l| l.contains(" reps @ ")).filter_map(|l| l.split("): ").nth(1)).collect();
        assert_eq!(tests, ["PutImage 10x10 square", "GetImage 10x10 square"], "x11perf did not complete: {perf}");
    }
    server.stop(libc::SIGTERM);
    (out, std::fs::read(&dump).expect("read the xwd dump"), pids)
}

/// Xvfb and X clients (Xlib and xcb: `writev`, `recvmsg`, `poll`), all under the hook on the
/// display's watched sockets: xdpyinfo, xwininfo and xprop must print what they print plain,
/// `xwd -root` must dump the same 3 MB, and a client that passes fds both ways over its swapped
/// connection (MIT-SHM 1.2: `ShmAttachFd` sends a memfd, `ShmCreateSegment` receives one, as
/// cairo, GTK and Mesa do) must read back its patterns through both, as plain. The dump's, the
/// fd client's and x11perf's connections must be swapped, and the fd client's must have
/// stayed on the rings through most of its rounds.
#[test]
fn x11_clients_get_the_same_answers_with_tssx() {
    require_root();
    let dir = TempDir::new("app-x11");
    let shm_fds = build_shm_fds(&dir);
    let tssx_socks = x_sockets(X_TSSX);
    let agent = HookedAgent::start(&[&tssx_socks[0], &tssx_socks[1]]);
    let (plain, plain_dump, _) = x11_run(&dir, X_PLAIN, false, &shm_fds);
    assert!(
        plain.contains("X.Org Foundation")
            && plain
                .contains("200 rounds: ShmAttachFd+ShmPutImage 200, core GetImage matched 200, ShmCreateSegment+ShmGetImage matched 200"),
        "unexpected plain session: {plain}"
    );
    assert!(plain_dump.len() > 1024 * 768 * 4, "a {}-byte dump", plain_dump.len());
    let (tssx, tssx_dump, clients) = x11_run(&dir, X_TSSX, true, &shm_fds);
    assert_same("X11 session", &plain, &tssx);
    assert!(plain_dump == tssx_dump, "xwd -root dumped {} bytes plain, {} with tssx, not the same", plain_dump.len(), tssx_dump.len());
    // Xlib and xcb connect to the abstract socket.
    for &(pid, what) in clients.iter().filter(|(_, what)| ["xwd", "shm_fds", "x11perf"].contains(what)) {
        assert_client_swapped(&agent, &tssx_socks[1], pid, 1, what);
    }
    assert!(agent.events_on("connect", &x_sockets(X_PLAIN)[1]).is_empty(), "the plain run's display is not watched");
    // The fd client's GetImage replies (16 KiB in each of its 200 rounds, each round passing an
    // fd both ways) crossed shared memory in most rounds.
    let client = clients.iter().find(|(_, what)| *what == "shm_fds").expect("shm_fds").0;
    let closed = closed_of(&agent, &tssx_socks[1], client);
    let bytes = closed["bytes_server_to_client"].as_u64().unwrap_or(0);
    assert!(bytes >= 100 * 16 * 1024, "only {bytes} bytes of the fd client's replies crossed shared memory: {closed}");
    assert!(agent.stop().success());
}

/// The agent's `closed` line of the connection the client process `client_pid` swapped on
/// `path` (waiting for it up to 10 s).
fn closed_of(agent: &Agent, path: &str, client_pid: u32) -> serde_json::Value {
    let connection = agent
        .events_on("swapped", path)
        .into_iter()
        .find(|e| e["message"].as_str().is_some_and(|m| m.starts_with(&format!("swapped {client_pid}/"))))
        .map(|e| e["connection"].clone())
        .expect("the client's swap");
    poll_until(TRACE_TIMEOUT, || agent.events_on("closed", path).iter().any(|c| c["connection"] == connection));
    agent.events_on("closed", path).into_iter().find(|c| c["connection"] == connection).expect("its closed line")
}

// ----------------------------------------------------------------------------------------- tmux

/// `tmux` on the server socket `sock` (no configuration file), under the hook if `hooked`.
fn tmux(sock: &str, hooked: bool) -> Command {
    let mut cmd = command("tmux", hooked);
    cmd.args(["-S", sock, "-f", "/dev/null"]).env("TERM", "xterm");
    cmd
}

/// A tmux control-mode client (`tmux -C attach`) fed `script` (one command a line, the last
/// one printing `cm end`): its output once `cm end` came, without the lines that start with `%`
/// (`%begin`/`%end` carry times, and a notification such as `%session-changed` may come before
/// or after a command's output). Its stdin stays open until then (at EOF the client leaves).
fn tmux_control(sock: &str, hooked: bool, script: &str) -> String {
    use std::io::{BufRead as _, Write as _};
    let mut cmd = tmux(sock, hooked);
    let mut child = cmd
        .args(["-C", "attach", "-t", "main"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tmux -C");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(script.as_bytes()).expect("write the control script");
    let mut out = String::new();
    for line in std::io::BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read tmux -C");
        if !line.starts_with('%') {
            out += &line;
            out.push('\n');
        }
        if line == "cm end" {
            break;
        }
    }
    drop(stdin);
    let status = child.wait().expect("wait tmux -C");
    assert!(status.success(), "tmux -C exited with {status}; output: {out}");
    out
}

/// One tmux session on `sock`: a server in the foreground (`tmux -D`), a session of two windows
/// running `sh`, keys sent to both and their panes captured, listings, 20 `display-message`s,
/// a 4 MB buffer loaded from `big` and saved to stdout and to a file, a control-mode client of
/// 401 commands, then `kill-server`. Each command is a client connection that passes its
/// terminal's fds to the server with SCM_RIGHTS. Returns the outputs and the pids of the
/// clients that move data over their connection for long enough to be swapped (the buffer's
/// three: tmux 3.3's clients read and write files for the server).
fn tmux_run(dir: &Path, sock: &str, hooked: bool, big: &Path) -> (String, Vec<(u32, &'static str)>) {
    let mut server = tmux(sock, hooked);
    server.arg("-D");
    let mut server = Daemon::spawn("tmux", server);
    server.wait_ready(|| Path::new(sock).exists());
    let client = |args: &[&str]| {
        let mut cmd = tmux(sock, hooked);
        cmd.args(args);
        run_pid(cmd, None)
    };
    // (Named windows: an automatic name follows the command running in the pane.)
    client(&["new-session", "-d", "-s", "main", "-n", "one", "-x", "120", "-y", "40", "sh"]);
    client(&["new-window", "-t", "main", "-n", "two", "sh"]);
    // (What the shells print is not in the command lines: $((6*7)) and $((1+1)).)
    client(&["send-keys", "-t", "main:0", "for i in $(seq 1 50); do echo line-$i; done; echo done-$((6*7))", "Enter"]);
    client(&["send-keys", "-t", "main:1", "seq 1 20000 | md5sum; echo done-$((1+1))", "Enter"]);
    let capture = |window: &str, marker: &str| {
        let mut screen = String::new();
        wait_until(DAEMON_TIMEOUT, &format!("tmux window {window} to show {marker}"), || {
            screen = client(&["capture-pane", "-p", "-S", "-", "-t", window]).0;
            screen.lines().any(|l| l == marker)
        });
        screen
    };
    let mut out = capture("main:0", "done-42") + &capture("main:1", "done-2");
    out += &client(&["list-sessions", "-F", "#{session_name} #{session_windows}"]).0;
    out += &client(&[
        "list-windows",
        "-t",
        "main",
        "-F",
        "#{window_index} #{window_name} #{window_width}x#{window_height} #{pane_current_command}",
    ])
    .0;
    for i in 0..20 {
        out += &client(&["display-message", "-p", &format!("dm {i} #{{session_name}} #{{window_index}}")]).0;
    }
    let mut pids = Vec::new();
    let (_, pid) = client(&["load-buffer", "-b", "big", &path_str(big)]);
    pids.push((pid, "tmux load-buffer"));
    let (saved, pid) = client(&["save-buffer", "-b", "big", "-"]);
    pids.push((pid, "tmux save-buffer -"));
    let expected = std::fs::read_to_string(big).expect("read the buffer's file");
    assert!(saved == expected, "save-buffer - gave {} bytes, not the {} loaded", saved.len(), expected.len());
    let copy = dir.join(format!("saved-{hooked}.txt"));
    let (_, pid) = client(&["save-buffer", "-b", "big", &path_str(&copy)]);
    pids.push((pid, "tmux save-buffer FILE"));
    assert!(std::fs::read_to_string(&copy).is_ok_and(|c| c == expected), "save-buffer to a file differs");
    let mut script: String = (0..200).map(|i| format!("display-message -p 'cm {i} #{{session_name}}'\nlist-windows -t main\n")).collect();
    script += "capture-pane -p -t main:1\ndisplay-message -p 'cm end'\n";
    let control = tmux_control(sock, hooked, &script);
    assert_eq!(control.lines().filter(|l| l.starts_with("cm ")).count(), 201, "tmux -C: {control}");
    // (The server reads a control client's commands from the stdin it passed and writes the
    // answers to its stdout: its connection carries next to nothing, and stays plain.)
    out += &control;
    client(&["kill-server"]);
    let status = server.process.wait(DAEMON_TIMEOUT).expect("the tmux server exits after kill-server");
    assert!(status.success(), "the tmux server exited with {status}: {}", server.process.stderr_text());
    (out, pids)
}

/// tmux (libevent, imsg): a server and its clients under the hook on a watched socket. Every
/// client connection passes the client's fds to the server with SCM_RIGHTS first (a
/// control-mode client's commands and answers then go through those fds, not its connection);
/// one that moves a 4 MB buffer migrates after that. The panes, listings, buffers and
/// control-mode output must be the plain ones, and the three buffer clients' connections
/// swapped.
#[test]
fn tmux_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-tmux");
    let (plain_sock, tssx_sock) = (path_str(&dir.join("plain.sock")), path_str(&dir.join("tmux.sock")));
    let big = dir.join("big.txt");
    // 4 MB of text lines (a buffer is text; tmux keeps every byte).
    let mut rng = Rng::new(7);
    let text: String = (0..64 * 1024).map(|i| format!("{i:08} {:016x} {:016x} {:016x}\n", rng.next(), rng.next(), rng.next())).collect();
    std::fs::write(&big, text).expect("write the buffer's file");
    let agent = HookedAgent::start(&[&tssx_sock]);
    let (plain, _) = tmux_run(&dir, &plain_sock, false, &big);
    assert!(
        plain.contains("line-50\ndone-42\n")
            && plain.contains("main 2\n0 one 120x40 sh\n1 two 120x40 sh\n")
            && plain.contains("dm 19 main 1\n"),
        "unexpected plain session: {plain}"
    );
    let (tssx, clients) = tmux_run(&dir, &tssx_sock, true, &big);
    assert_same("tmux session", &plain, &tssx);
    for &(pid, what) in &clients {
        assert_client_swapped(&agent, &tssx_sock, pid, 1, what);
    }
    assert!(agent.stop().success());
}

// ---------------------------------------------------------------------------------------- socat

/// Runs `client` with its stdin from `input` and its stdout into `output` (files: a stream of
/// tens of MB each way must not wait on a pipe the test reads only at the end); asserts
/// success, returns its pid and how long it ran.
fn run_files(mut client: Command, input: &Path, output: &Path) -> (u32, Duration) {
    let started = Instant::now();
    let child = client
        .stdin(std::fs::File::open(input).expect("open the input"))
        .stdout(std::fs::File::create(output).expect("create the output"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {client:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{client:?} failed: {}; stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    (pid, started.elapsed())
}

/// How long the socat test's upload lasts (its bytes are fed in slices).
const UPLOAD_FOR: Duration = Duration::from_millis(1500);

/// Runs `client`, feeding `data` to its stdin in 64 slices over about `over`; asserts success.
fn slow_feed(mut client: Command, data: &[u8], over: Duration) {
    use std::io::Write as _;
    let mut child = client.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run socat");
    let mut stdin = child.stdin.take().expect("stdin");
    for slice in data.chunks(data.len().div_ceil(64)) {
        stdin.write_all(slice).expect("feed the upload");
        std::thread::sleep(over / 64);
    }
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{client:?} failed: {}; stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// One socat session in `dir`, on sockets named `NAME-echo.sock` and `NAME-up.sock`:
/// - an echo: `socat UNIX-LISTEN:...,fork EXEC:cat` (a child per connection, `cat` on a
///   socketpair) and `socat - UNIX-CONNECT:...` sending `data` both ways at once (select, read,
///   write; half-close at the end);
/// - an upload: `socat -u UNIX-LISTEN:... SYSTEM:'cat > FILE'` (the shell it spawns inherits the
///   connection) and `socat -u - UNIX-CONNECT:...`, fed over [`UPLOAD_FOR`].
///
/// Returns what came back and what arrived, the echo client's pid and the echo's duration.
fn socat_run(dir: &Path, name: &str, hooked: bool, data: &Path) -> (Vec<u8>, Vec<u8>, u32, Duration) {
    let (echo_sock, up_sock) = (path_str(&dir.join(format!("{name}-echo.sock"))), path_str(&dir.join(format!("{name}-up.sock"))));
    let mut echo = command("socat", hooked);
    echo.args([&format!("UNIX-LISTEN:{echo_sock},fork"), "EXEC:cat"]);
    let mut echo = Daemon::spawn("socat", echo);
    echo.wait_ready(|| Path::new(&echo_sock).exists());
    let back = dir.join(format!("{name}-back.bin"));
    let mut client = command("socat", hooked);
    client.args(["-", &format!("UNIX-CONNECT:{echo_sock}")]);
    let (pid, took) = run_files(client, data, &back);
    // socat exits with 128 + the signal's number.
    let status = echo.process.stop(libc::SIGTERM, DAEMON_TIMEOUT).expect("the echo's socat exits on SIGTERM");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "the echo's socat: {}", echo.process.stderr_text());

    let arrived = dir.join(format!("{name}-arrived.bin"));
    let mut up = command("socat", hooked);
    up.args(["-u", &format!("UNIX-LISTEN:{up_sock}"), &format!("SYSTEM:cat > {}", path_str(&arrived))]);
    let mut up = Daemon::spawn("socat", up);
    up.wait_ready(|| Path::new(&up_sock).exists());
    let mut client = command("socat", hooked);
    client.args(["-u", "-", &format!("UNIX-CONNECT:{up_sock}")]);
    slow_feed(client, &std::fs::read(data).expect("read the data"), UPLOAD_FOR);
    let status = up.process.wait(DAEMON_TIMEOUT).expect("the upload's socat exits after its connection");
    assert!(status.success(), "the upload's socat exited with {status}: {}", up.process.stderr_text());
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    (read(&back), read(&arrived), pid, took)
}

/// socat (select, `read`/`write` of 8 KiB, a forking listener, children on socketpairs): 32 MB
/// echoed both ways at once and uploaded one way, plain and under the hook on watched sockets.
/// Every byte must come back and arrive; the echo's connection must be swapped. The upload's
/// connection is held by the shell socat spawns as well as by socat: a plain connection that
/// two processes hold stays plain (the agent answers its claims "retry" while the other holds
/// it), and loses nothing; its claims back off (each "retry" doubles the wait, up to 1 s: they
/// came every 5 ms, about 300 in this upload's 1.5 s). The echo's throughput, plain and
/// swapped, is printed (not asserted).
#[test]
fn socat_streams_the_same_bytes_with_tssx() {
    require_root();
    let dir = TempDir::new("app-socat");
    let data = dir.join("data.bin");
    std::fs::write(&data, Rng::new(11).bytes(32 << 20)).expect("write the data");
    let expected = std::fs::read(&data).expect("read the data");
    let (echo_sock, up_sock) = (path_str(&dir.join("tssx-echo.sock")), path_str(&dir.join("tssx-up.sock")));
    let agent = HookedAgent::start(&[&echo_sock, &up_sock]);
    let (back, arrived, _, plain_took) = socat_run(&dir, "plain", false, &data);
    assert!(back == expected && arrived == expected, "plain: {} bytes back, {} arrived, of {}", back.len(), arrived.len(), expected.len());
    let (back, arrived, client, tssx_took) = socat_run(&dir, "tssx", true, &data);
    assert!(back == expected, "the echo gave back {} bytes, not the {} sent (or other bytes)", back.len(), expected.len());
    assert!(arrived == expected, "the upload delivered {} bytes, not the {} sent (or other bytes)", arrived.len(), expected.len());
    let mb = |took: Duration| expected.len() as f64 / 1e6 / took.as_secs_f64();
    eprintln!("socat echo: {:.0} MB/s each way plain, {:.0} MB/s with tssx", mb(plain_took), mb(tssx_took));
    assert_client_swapped(&agent, &echo_sock, client, 1, "socat echo client");
    assert!(agent.events_on("swapped", &up_sock).is_empty(), "the upload's connection, held by two processes, was swapped");
    // 5, 10, 20, ... 640 ms, then every second: 9 in 1.5 s (and one or two for the echo's
    // connection, whose listener closes its copy right after its fork).
    let retried = agent.stats()["retried"].as_u64().expect("the agent's retried count");
    eprintln!("claims answered retry: {retried}");
    assert!((1..=20).contains(&retried), "{retried} claims answered \"retry\" in the socat test");
    assert!(agent.stop().success());
}

// -------------------------------------------------------------------------------------- MariaDB

/// Debian's MariaDB server (off PATH).
const MARIADBD: &str = "/usr/sbin/mariadbd";
/// Sizes of the BLOBs the session inserts as hex literals (up to a 2 MB statement).
const MARIADB_BLOBS: [usize; 7] = [0, 1, 100, 4_000, 70_000, 300_000, 1_000_000];
/// mariadb-slap's clients and rounds: each round opens `CLIENTS` connections that live for it,
/// besides the one connection that creates and drops the schema around the rounds.
const MARIADB_SLAP_CLIENTS: usize = 8;
const MARIADB_SLAP_ROUNDS: usize = 3;

/// The CLI session: DDL, 2000 single-row INSERTs (2000 round trips), BLOBs up to 1 MB as
/// literals, then everything read back (the BLOBs in hex: about 4.6 MB of output), an UPDATE,
/// a rolled-back DELETE, and checksums.
fn mariadb_script() -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "DROP DATABASE IF EXISTS t; CREATE DATABASE t; USE t;\n\
         CREATE TABLE kv (id INT PRIMARY KEY, name VARCHAR(64), v DECIMAL(12,2), note TEXT) ENGINE=InnoDB;\n\
         CREATE TABLE blobs (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB;\n",
    );
    for i in 1..=2000 {
        writeln!(s, "INSERT INTO kv VALUES ({i}, 'name{i}', {i}.5, '{}');", "x".repeat(i % 50)).unwrap();
    }
    let mut rng = Rng::new(42);
    for (i, size) in MARIADB_BLOBS.iter().enumerate() {
        let hex: String = rng.bytes(*size).iter().map(|b| format!("{b:02X}")).collect();
        writeln!(s, "INSERT INTO blobs VALUES ({}, X'{hex}');", i + 1).unwrap();
    }
    s += "INSERT INTO blobs SELECT id + 100, REPEAT(CONCAT('ab', id), 100000) FROM blobs WHERE id <= 3;\n\
          SELECT COUNT(*), SUM(v), MIN(name), MAX(name) FROM kv;\n\
          UPDATE kv SET v = v * 2 WHERE id <= 100;\n\
          SELECT id, name, v FROM kv WHERE id % 100 = 0 ORDER BY id;\n\
          SELECT id, LENGTH(b), MD5(b) FROM blobs ORDER BY id;\n\
          SELECT id, HEX(b) FROM blobs ORDER BY id;\n\
          SELECT * FROM kv ORDER BY id;\n\
          BEGIN; DELETE FROM kv WHERE id > 1000; SELECT COUNT(*) FROM kv; ROLLBACK;\n\
          SELECT COUNT(*) FROM kv;\n\
          SELECT MD5(GROUP_CONCAT(name, v ORDER BY id SEPARATOR ',')) FROM kv;\n";
    s
}

/// A MariaDB client, as root on `sock`, with packets up to 64 MB.
fn mariadb_client(program: &str, sock: &str, hooked: bool) -> Command {
    let mut cmd = command(program, hooked);
    cmd.args(["--no-defaults", "-S", sock, "-uroot"]);
    if program != "mariadb-slap" && program != "mariadb-admin" {
        cmd.arg("--max-allowed-packet=64M");
    }
    cmd
}

/// One `mariadb -e` statement list; returns its output.
fn mariadb_exec(sock: &str, hooked: bool, sql: &str) -> String {
    let mut cmd = mariadb_client("mariadb", sock, hooked);
    cmd.args(["--batch", "-e", sql]);
    run(cmd, None)
}

/// A session that lives while another one KILLs it: MariaDB's KILL shuts the victim's socket
/// down (`shutdown(SHUT_RDWR)`) from the killer's thread while the victim's thread sleeps in
/// `poll` on it, and counts on that to wake it. The victim (one `mariadb` reading statements
/// from a pipe) runs 30 statements, sits idle, is KILLed; its session must be gone from the
/// server within 5 s (at once, plain), and its next statement must find the server gone.
/// Returns what it saw and its pid.
fn mariadb_kill_a_session(sock: &str, hooked: bool) -> (String, u32) {
    use std::io::{BufRead as _, Write as _};
    let mut victim = mariadb_client("mariadb", sock, hooked);
    victim.args(["--batch", "-N", "-n"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut victim = victim.spawn().expect("run mariadb");
    let pid = victim.id();
    let mut stdin = victim.stdin.take().unwrap();
    let mut sql = String::from("SELECT CONNECTION_ID();\n");
    for i in 0..30 {
        sql += &format!("SELECT {i}, LENGTH(REPEAT('x', 3000));\n");
    }
    stdin.write_all(sql.as_bytes()).expect("write to mariadb");
    // Its 31 answers, read on a thread (a session that hangs fails the test, not the run).
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = victim.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let lines: Vec<String> = (0..31).map(|_| rx.recv_timeout(DAEMON_TIMEOUT).expect("the victim's answers")).collect();
    let id: u32 = lines[0].trim().parse().unwrap_or_else(|_| panic!("CONNECTION_ID: {:?}", lines[0]));
    std::thread::sleep(Duration::from_millis(200));
    mariadb_exec(sock, hooked, &format!("KILL {id}"));
    let started = Instant::now();
    let alive =
        || mariadb_exec(sock, hooked, &format!("SELECT COUNT(*) FROM information_schema.processlist WHERE id = {id}")) != "COUNT(*)\n0\n";
    let gone = poll_until(Duration::from_secs(5), || !alive());
    let took = started.elapsed();
    stdin.write_all(b"SELECT 'after the kill';\n").expect("write to mariadb");
    drop(stdin);
    let out = victim.wait_with_output().expect("wait for mariadb");
    reader.join().expect("the victim's reader");
    let rest: String = rx.try_iter().collect::<Vec<_>>().join("\n");
    assert!(gone, "the KILLed session (id {id}) still runs {took:?} after the KILL");
    eprintln!("mariadb: the KILLed session ended {took:?} after the KILL");
    let saw = format!(
        "victim: {} answers, then {:?} and exit {}; stderr: {}\n",
        lines.len(),
        rest,
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    (saw, pid)
}

/// What one MariaDB run leaves for the comparison, and the pids of its long-lived clients.
struct MariadbRun {
    /// Every client's output (the session, LOAD DATA, the dump, checksums, the KILL).
    out: String,
    /// The client processes with one connection that lives and moves data: (pid, what).
    sessions: Vec<(u32, &'static str)>,
    /// mariadb-slap's pid (if it ran).
    slap: Option<u32>,
    /// The server's pid and its log (stderr).
    server: u32,
    log: Vec<String>,
}

/// Initialises a data directory under `dir`, starts mariadbd on `sock` (no TCP) with `extra`
/// options, runs the session (and, if `full`, LOAD DATA LOCAL INFILE, mariadb-dump, a restore
/// of the dump, checksums, mariadb-slap and a KILL), stops it with SIGTERM.
fn mariadb_run(dir: &Path, name: &str, sock: &str, hooked: bool, extra: &[&str], full: bool) -> MariadbRun {
    let data = dir.join(format!("data-{name}"));
    let mut init = command("mariadb-install-db", hooked);
    init.arg("--no-defaults").arg(format!("--datadir={}", data.display()));
    init.args(["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"]);
    run(init, None);
    let mut server = command(MARIADBD, hooked);
    server.arg("--no-defaults").arg(format!("--datadir={}", data.display())).arg(format!("--socket={sock}"));
    server.arg(format!("--pid-file={}", dir.join(format!("{name}.pid")).display()));
    server.args(["--skip-networking", "--user=root", "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0"]);
    server.args(["--max-allowed-packet=64M", "--local-infile=1"]).args(extra);
    let mut server = Daemon::spawn("mariadbd (mariadb-server)", server);
    server.wait_ready(|| {
        Path::new(sock).exists() && mariadb_client("mariadb-admin", sock, hooked).arg("ping").output().is_ok_and(|o| o.status.success())
    });
    let mut session = mariadb_client("mariadb", sock, hooked);
    session.arg("--batch");
    let (mut out, pid) = run_pid(session, Some(mariadb_script().as_bytes()));
    let mut sessions = vec![(pid, "mariadb (the session)")];
    let mut slap = None;
    if full {
        let tsv = dir.join("load.tsv");
        if !tsv.exists() {
            let rows: String = (1..=20_000).map(|i| format!("{i}\tload{i}\t{}\n", i * 3)).collect();
            std::fs::write(&tsv, rows).expect("write load.tsv");
        }
        let mut load = mariadb_client("mariadb", sock, hooked);
        load.args(["--batch", "--local-infile=1", "t", "-e"]).arg(format!(
            "CREATE TABLE ld (id INT PRIMARY KEY, name VARCHAR(32), n INT); LOAD DATA LOCAL INFILE '{}' INTO TABLE ld; \
             SHOW WARNINGS; SELECT COUNT(*), SUM(n), MD5(GROUP_CONCAT(name ORDER BY id)) FROM ld;",
            tsv.display()
        ));
        let (loaded, pid) = run_pid(load, None);
        out += &loaded;
        sessions.push((pid, "mariadb (LOAD DATA LOCAL INFILE)"));
        let mut dump = mariadb_client("mariadb-dump", sock, hooked);
        dump.args(["--hex-blob", "--skip-dump-date", "--databases", "t"]);
        let (dumped, pid) = run_pid(dump, None);
        sessions.push((pid, "mariadb-dump"));
        out += &dumped.lines().filter(|l| !l.starts_with("-- Dump completed")).map(|l| format!("{l}\n")).collect::<String>();
        let mut restore = mariadb_client("mariadb", sock, hooked);
        restore.arg("--batch");
        let (restored, pid) = run_pid(restore, Some(dumped.replace("`t`", "`t2`").as_bytes()));
        out += &restored;
        sessions.push((pid, "mariadb (the dump restored)"));
        let sums = mariadb_exec(sock, hooked, "CHECKSUM TABLE t.kv, t.blobs, t.ld, t2.kv, t2.blobs, t2.ld");
        let sum = |table: &str| sums.lines().find_map(|l| l.strip_prefix(table)?.strip_prefix('\t')).map(str::to_owned);
        for table in ["kv", "blobs", "ld"] {
            let (a, b) = (sum(&format!("t.{table}")), sum(&format!("t2.{table}")));
            assert!(a.is_some() && a == b, "the restored {table} differs: {sums}");
        }
        out += &sums;
        let mut bench = mariadb_client("mariadb-slap", sock, hooked);
        bench.arg(format!("--concurrency={MARIADB_SLAP_CLIENTS}")).arg(format!("--iterations={MARIADB_SLAP_ROUNDS}"));
        bench.args(["--number-of-queries=2000", "--auto-generate-sql", "--auto-generate-sql-load-type=mixed"]);
        bench.arg("--auto-generate-sql-add-autoincrement");
        let started = Instant::now();
        let (report, pid) = run_pid(bench, None);
        eprintln!("mariadb-slap ({}): {:?}", if hooked { "tssx" } else { "plain" }, started.elapsed());
        assert!(
            report.contains("Average number of seconds to run all queries")
                && report.contains(&format!("Number of clients running queries: {MARIADB_SLAP_CLIENTS}")),
            "mariadb-slap: {report}"
        );
        slap = Some(pid);
        let (killed, pid) = mariadb_kill_a_session(sock, hooked);
        out += &killed;
        sessions.push((pid, "mariadb (the KILLed session)"));
    }
    let pid = server.process.pid();
    let log = server.stop(libc::SIGTERM);
    let errors: Vec<&String> = log.iter().filter(|l| l.contains("[ERROR]")).collect();
    assert!(errors.is_empty(), "mariadbd ({name}) logged errors: {errors:?}");
    MariadbRun { out, sessions, slap, server: pid, log }
}

/// MariaDB (10.11, one thread per connection, clients through libmariadb: non-blocking
/// `recv`/`send` with `MSG_DONTWAIT`, `poll` with and without a timeout) on its Unix socket:
/// a CLI session (thousands of statements, BLOBs up to 1 MB both ways), LOAD DATA LOCAL INFILE
/// (the client sends a file the server asks for), mariadb-dump, the dump restored, mariadb-slap
/// with 8 concurrent clients in 3 rounds, and a session KILLed by another one (the server shuts
/// its socket down while its thread sleeps on it). Outputs (the dump too) must be identical to
/// plain, the server must log no error, and every one of those clients' connections must be
/// swapped.
///
/// InnoDB's default asynchronous I/O is io_uring where the kernel offers it, and tssx keeps
/// every connection of a process with an io_uring plain (README, "io_uring"): the swapped runs
/// turn it off (`--innodb-use-native-aio=0`, the setting for a kernel without io_uring), and a
/// last run with MariaDB's defaults checks that such a server stays plain for that reason and
/// still gives the same results.
#[test]
fn mariadb_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-mariadb");
    let (plain_sock, tssx_sock, uring_sock) =
        (path_str(&dir.join("plain.sock")), path_str(&dir.join("mariadb.sock")), path_str(&dir.join("uring.sock")));
    let agent = HookedAgent::start(&[&tssx_sock, &uring_sock]);
    let no_uring = ["--innodb-use-native-aio=0"];
    let plain = mariadb_run(&dir, "plain", &plain_sock, false, &no_uring, true);
    for expected in ["2000\t2002000.00\tname1\tname999", "20000\t600030000\t", "CREATE TABLE `blobs`", "victim: 31 answers"] {
        assert!(plain.out.contains(expected), "{expected:?} missing from the plain run's output");
    }
    assert!(plain.out.contains("Server has gone away"), "the KILLed session did not see it: {}", plain.out.lines().last().unwrap_or(""));
    let tssx = mariadb_run(&dir, "tssx", &tssx_sock, true, &no_uring, true);
    assert_same("mariadb session, LOAD DATA, dump, restore, checksums and KILL", &plain.out, &tssx.out);
    let aborted = |run: &MariadbRun| run.log.iter().filter(|l| l.contains("Aborted connection")).count();
    assert_eq!(aborted(&plain), aborted(&tssx), "mariadbd's aborted connections, plain vs tssx: {:?}", tssx.log);
    for &(pid, what) in &tssx.sessions {
        assert_client_swapped(&agent, &tssx_sock, pid, 1, what);
    }
    let slap = tssx.slap.expect("mariadb-slap ran");
    assert_client_swapped(&agent, &tssx_sock, slap, 1 + MARIADB_SLAP_CLIENTS * MARIADB_SLAP_ROUNDS, "mariadb-slap");
    // MariaDB's defaults: InnoDB on io_uring (if this kernel has it) keeps the server plain.
    let uring = mariadb_run(&dir, "uring", &uring_sock, true, &[], false);
    let plain_session = &plain.out[..uring.out.len().min(plain.out.len())];
    assert_same("mariadb session (InnoDB on io_uring)", plain_session, &uring.out);
    if uring.log.iter().any(|l| l.contains("InnoDB: Using io_uring")) {
        let reasons = || -> Vec<String> {
            agent
                .events("not")
                .iter()
                .filter(|e| e["pid"] == uring.server)
                .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                .collect()
        };
        poll_until(TRACE_TIMEOUT, || reasons().iter().any(|r| r.contains("io_uring")));
        assert!(reasons().iter().any(|r| r.contains("io_uring")), "no `not swapped` for io_uring: {:?}", reasons());
        assert!(swapped_pairs(&agent, &uring_sock).is_empty(), "a connection of a server with an io_uring was swapped");
    } else {
        assert_client_swapped(&agent, &uring_sock, uring.sessions[0].0, 1, "mariadb (InnoDB without io_uring)");
    }
    assert!(agent.stop().success());
}

// ------------------------------------------------------------------------------------ PHP-FPM

/// Debian 12's PHP-FPM (php8.2-fpm).
const PHP_FPM: &str = "/usr/sbin/php-fpm8.2";
/// The test's PHP scripts (see their headers), written into each run's document root.
const PHP_SCRIPTS: &[(&str, &str)] = &[
    ("echo.php", include_str!("../php/echo.php")),
    ("big.php", include_str!("../php/big.php")),
    ("post.php", include_str!("../php/post.php")),
    ("stream.php", include_str!("../php/stream.php")),
    ("finish.php", include_str!("../php/finish.php")),
    ("slow.php", include_str!("../php/slow.php")),
];
/// PHP-FPM's pools, one FastCGI socket each (see [`PhpSite`]).
const PHP_POOLS: [&str; 3] = ["fresh", "keep", "term"];
/// The children of the `fresh` and `keep` pools (`pm = static`), and the most requests the
/// test has in flight. A child serves one FastCGI connection at a time, with
/// `fastcgi_keep_conn` until nginx closes it: more upstream connections than children would
/// wait in the listen backlog for a child that an idle kept connection holds (plain too).
const PHP_CHILDREN: u32 = 4;
/// A child of the `keep` pool that served this many requests served a kept connection for far
/// longer than the claim rule's millisecond (as [`BUSY_UPSTREAM_REQUESTS`]).
const BUSY_PHP_REQUESTS: usize = 100;

/// PHP-FPM (a master and [`PHP_CHILDREN`] children per pool, as `nobody`) behind nginx (a
/// master and a worker, as `nobody`, `sendfile on` as Debian has it), both in `dir` with
/// files named after `name`, on a free loopback port. Two pools, one FastCGI socket each:
/// - `/fresh/SCRIPT`: `fastcgi_pass unix:PATH`, a new connection per request, which PHP-FPM
///   ends with `shutdown(SHUT_WR)`, a read to EOF and `close`;
/// - `/keep/SCRIPT`: an `upstream` block with `keepalive`, `fastcgi_keep_conn on`: the
///   connections are kept and reused, each by the child that accepted it;
/// - `/term/SCRIPT`: as `keep`, to a pool of one child with `request_terminate_timeout = 1s`.
struct PhpSite {
    fpm: Daemon,
    nginx: Daemon,
    port: u16,
    dir: PathBuf,
    name: String,
}

impl PhpSite {
    /// The FastCGI socket of `pool`, for a site started in `dir` with `name`.
    fn socket(dir: &Path, name: &str, pool: &str) -> String {
        path_str(&dir.join(format!("{name}-{pool}.sock")))
    }

    fn file(dir: &Path, name: &str, suffix: &str) -> PathBuf {
        dir.join(format!("{name}-{suffix}"))
    }

    /// Writes the document root and both configurations, starts PHP-FPM and then nginx (under
    /// the hook if `hooked`), and waits until nginx answers.
    fn start(dir: &Path, name: &str, hooked: bool) -> Self {
        let file = |suffix: &str| Self::file(dir, name, suffix);
        let www = file("www");
        std::fs::create_dir_all(&www).unwrap();
        for (script, text) in PHP_SCRIPTS {
            std::fs::write(www.join(script), text).unwrap();
        }
        let socks = PHP_POOLS.map(|pool| Self::socket(dir, name, pool));
        let mut fpm = format!("[global]\npid = {}\nerror_log = {}\n", file("fpm.pid").display(), file("fpm.log").display());
        for (pool, sock) in PHP_POOLS.iter().zip(&socks) {
            // `term`: one child, killed by the master when a request (or the wait for the
            // next one on a kept connection) lasts over a second.
            let children = if *pool == "term" { "1\nrequest_terminate_timeout = 1s" } else { "4" };
            fpm += &format!(
                "[{pool}]\nlisten = {sock}\nlisten.mode = 0666\nuser = nobody\ngroup = nogroup\npm = static\n\
                 pm.max_children = {children}\naccess.log = {}\naccess.format = \"%p %s %r\"\n",
                file(&format!("{pool}-access.log")).display()
            );
        }
        let fpm_conf = file("fpm.conf");
        std::fs::write(&fpm_conf, fpm).unwrap();
        let mut cmd = command(PHP_FPM, hooked);
        // In the foreground, with no php.ini (PHP's defaults: no output buffering).
        cmd.args(["-F", "-n", "-y"]).arg(&fpm_conf);
        let mut fpm = Daemon::spawn("php-fpm (php8.2-fpm)", cmd);
        fpm.wait_ready(|| socks.iter().all(|s| Path::new(s).exists()));

        let port = tssx_tests::nginx::free_port().expect("a free loopback port");
        let params: String = [
            ("QUERY_STRING", "$query_string"),
            ("REQUEST_METHOD", "$request_method"),
            ("CONTENT_TYPE", "$content_type"),
            ("CONTENT_LENGTH", "$content_length"),
            ("SCRIPT_NAME", "$fastcgi_script_name"),
            ("REQUEST_URI", "$request_uri"),
            ("SERVER_PROTOCOL", "$server_protocol"),
            ("GATEWAY_INTERFACE", "CGI/1.1"),
        ]
        .iter()
        .map(|(param, value)| format!("      fastcgi_param {param} {value};\n"))
        .chain([format!("      fastcgi_param SCRIPT_FILENAME {}/$script;\n", www.display())])
        .collect();
        let temp = file("temp");
        let mut nginx = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser nobody nogroup;\npid {};\nerror_log {} warn;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_max_body_size 16m;\n  sendfile on;\n",
            file("nginx.pid").display(),
            file("nginx-error.log").display()
        );
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            nginx += &format!("  {t}_temp_path {};\n", temp.join(t).display());
        }
        nginx += &format!("  upstream php_keep {{\n    server unix:{};\n    keepalive {PHP_CHILDREN};\n  }}\n", socks[1]);
        nginx += &format!("  upstream php_term {{\n    server unix:{};\n    keepalive 1;\n  }}\n", socks[2]);
        nginx += &format!("  server {{\n    listen 127.0.0.1:{port};\n    location = /ready {{ return 204; }}\n");
        nginx += &format!("    location ~ ^/fresh/(?<script>[a-z]+\\.php)$ {{\n      fastcgi_pass unix:{};\n{params}    }}\n", socks[0]);
        for pool in ["keep", "term"] {
            nginx += &format!(
                "    location ~ ^/{pool}/(?<script>[a-z]+\\.php)$ {{\n      fastcgi_pass php_{pool};\n      fastcgi_keep_conn on;\n{params}    }}\n"
            );
        }
        nginx += "  }\n}\n";
        let nginx_conf = file("nginx.conf");
        std::fs::write(&nginx_conf, nginx).unwrap();
        std::fs::create_dir_all(&temp).unwrap();
        let mut cmd = command(tssx_tests::nginx::NGINX, hooked);
        cmd.arg("-p").arg(dir).arg("-e").arg(file("nginx-error.log")).arg("-c").arg(&nginx_conf);
        let mut nginx = Daemon::spawn("nginx (nginx-light)", cmd);
        let body = file("curl.out");
        nginx.wait_ready(|| php_curl(port, &body, "/ready", &[]).is_ok_and(|(status, ..)| status == 204));
        Self { fpm, nginx, port, dir: dir.to_owned(), name: name.to_owned() }
    }

    /// `curl`s `path` (with `args`) from nginx: (status, body, seconds it took).
    fn curl(&self, path: &str, args: &[&str]) -> (u16, Vec<u8>, f64) {
        php_curl(self.port, &Self::file(&self.dir, &self.name, "curl.out"), path, args)
            .unwrap_or_else(|e| panic!("PHP-FPM {}: {path}: {e:#}", self.name))
    }

    /// The `keep` pool's children that served at least `min_requests` requests (its access
    /// log names each request's child). A child serves kept connections one after another,
    /// each to its close, and nginx closes one only when its client left mid-request (wrk's
    /// when it stops: a few per session): a child that served a hundred served dozens on one
    /// connection, for far longer than the claim rule's millisecond. So this many kept
    /// connections at least must be swapped.
    fn busy_keep_children(&self, min_requests: usize) -> usize {
        let log = std::fs::read_to_string(Self::file(&self.dir, &self.name, "keep-access.log")).unwrap_or_default();
        let mut served = BTreeMap::<&str, usize>::new();
        for child in log.lines().filter_map(|l| l.split_whitespace().next()) {
            *served.entry(child).or_default() += 1;
        }
        served.values().filter(|&&n| n >= min_requests).count()
    }

    /// Stops nginx and then PHP-FPM gracefully (SIGQUIT), asserting that both exit with 0 and
    /// logged no error but slow.php's: PHP-FPM nothing above `NOTICE` but the child it killed,
    /// nginx nothing above `[warn]` (a request body buffered to a file) but what it read from
    /// that child's connection, which it returns (e.g. `readv() failed (104: Connection reset
    /// by peer) while reading upstream: GET /term/slow.php?s=5`).
    fn stop(self) -> Vec<String> {
        self.nginx.stop(libc::SIGQUIT);
        self.fpm.stop(libc::SIGQUIT);
        let log = |name: &str| std::fs::read_to_string(Self::file(&self.dir, &self.name, name)).unwrap_or_default();
        let fpm = log("fpm.log");
        let killed =
            |l: &&str| l.contains("[pool term]") && (l.contains("execution timed out") || l.contains("exited on signal 15 (SIGTERM)"));
        let errors: Vec<&str> = fpm.lines().filter(|l| ["WARNING", "ERROR", "ALERT"].iter().any(|w| l.contains(w)) && !killed(l)).collect();
        assert!(errors.is_empty(), "PHP-FPM {}: PHP-FPM logged errors: {errors:#?}", self.name);
        let nginx = log("nginx-error.log");
        let (mut slow, mut errors) = (Vec::new(), Vec::new());
        for line in nginx.lines().filter(|l| ["[error]", "[crit]", "[alert]", "[emerg]"].iter().any(|w| l.contains(w))) {
            // `DATE TIME [error] PID#TID: *CONNECTION MESSAGE, client: ..., request: "GET URI HTTP/1.1", ...`
            let message = line.split_once(": *").and_then(|(_, m)| m.split_once(' ')).and_then(|(_, m)| m.split_once(", client: "));
            let request = line.split_once("request: \"").and_then(|(_, r)| r.split_once(" HTTP/")).map(|(r, _)| r);
            match (message, request) {
                (Some((message, _)), Some(request)) if line.contains("[error]") && request.contains("/slow.php") => {
                    slow.push(format!("{message}: {request}"))
                }
                _ => errors.push(line),
            }
        }
        assert!(errors.is_empty(), "PHP-FPM {}: nginx logged errors: {errors:#?}", self.name);
        slow
    }
}

/// `curl -s` of `http://127.0.0.1:PORT/PATH` with `args`, the body into `body`: (status, body,
/// seconds it took).
fn php_curl(port: u16, body: &Path, path: &str, args: &[&str]) -> anyhow::Result<(u16, Vec<u8>, f64)> {
    use anyhow::Context as _;
    let out = command("curl", false)
        .args(["-s", "--max-time", "20", "-o"])
        .arg(body)
        .args(["-w", "%{http_code} %{time_total}"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("running curl")?;
    anyhow::ensure!(out.status.success(), "curl: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, seconds) = text.split_once(' ').with_context(|| format!("curl printed {text:?}"))?;
    Ok((status.parse()?, std::fs::read(body).unwrap_or_default(), seconds.parse()?))
}

/// What `big.php?n=N` answers.
fn php_big(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i % 251) * 31 + n) as u8).collect()
}

/// What `stream.php?chunks=C&size=S` answers.
fn php_stream(chunks: usize, size: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..chunks {
        let line = format!("chunk {i} ");
        let pad = char::from(b'a' + (i % 26) as u8);
        out += &format!("{line}{}\n", pad.to_string().repeat(size.saturating_sub(line.len())));
    }
    (out + "end\n").into_bytes()
}

/// One session on a site: twice through each pool, echoes of a GET and a form POST, bodies of 0
/// B to 300 KB, request bodies of 1 KB to 300 KB echoed back, a response streamed with
/// `flush()`, one ended by `fastcgi_finish_request`, each body checked against what the
/// script must answer; then wrk for a second on each pool (and one on 100 KB bodies through
/// kept connections), which must see no error and no non-2xx answer. Returns the transcript,
/// the slowest curl request's time, and how many children of the `keep` pool served
/// [`BUSY_PHP_REQUESTS`] requests or more ([`PhpSite::busy_keep_children`]).
fn php_session(dir: &Path, name: &str, hooked: bool) -> (String, f64, usize) {
    let site = PhpSite::start(dir, name, hooked);
    let mut rng = Rng::new(13);
    let posted: Vec<(usize, Vec<u8>)> = [1000, 65536, 300_000].into_iter().map(|n| (n, rng.bytes(n))).collect();
    let (mut transcript, mut slowest) = (String::new(), 0f64);
    for round in 0..2 {
        for upstream in [Upstream::Fresh, Upstream::Keep] {
            let pool = upstream.name();
            let mut check = |what: &str, path: &str, args: &[&str], want: Option<&[u8]>| {
                let (status, body, seconds) = site.curl(&format!("/{pool}/{path}"), args);
                slowest = slowest.max(seconds);
                let verdict = match want {
                    Some(want) if want == body => "as expected".to_owned(),
                    Some(_) => format!("NOT as expected ({} bytes, fnv {:016x})", body.len(), fnv(&body)),
                    None => format!("{:?}", String::from_utf8_lossy(&body)),
                };
                transcript += &format!("round {round}: {pool} {what} -> {status}, {verdict}\n");
            };
            check("GET echo", "echo.php?a=1&b=two", &["-H", "X-Test: hello"], None);
            check("POST form echo", "echo.php?q=3", &["--data", "x=1&y=hello"], None);
            for n in [0, 1, 100, 4096, 8192, 65536, 100_000, 300_000] {
                check(&format!("GET {n} B"), &format!("big.php?n={n}"), &[], Some(&php_big(n)));
            }
            for (n, body) in &posted {
                let file = dir.join(format!("{name}-post-{n}"));
                std::fs::write(&file, body).unwrap();
                let data = format!("@{}", file.display());
                let want = [format!("{n}\n").as_bytes(), body].concat();
                check(
                    &format!("POST {n} B"),
                    "post.php",
                    &["--data-binary", &data, "-H", "Content-Type: application/octet-stream"],
                    Some(&want),
                );
            }
            check("GET streamed", "stream.php?chunks=40&size=3000", &[], Some(&php_stream(40, 3000)));
            check("GET finished early", "finish.php?n=70000", &[], Some(&[vec![b'f'; 70000], b"\n".to_vec()].concat()));
        }
    }
    for (pool, path) in [("fresh", "echo.php?x=1"), ("keep", "echo.php?x=1"), ("keep", "big.php?n=100000")] {
        let url = format!("http://127.0.0.1:{}/{pool}/{path}", site.port);
        let load = wrk(&url, PHP_CHILDREN, 1).unwrap_or_else(|e| panic!("PHP-FPM {name}: {e:#}"));
        eprintln!("PHP-FPM {name}: wrk on /{pool}/{path}: {load:?}");
        assert!(load.requests > 0 && load.non_2xx == 0 && load.socket_errors.is_none(), "PHP-FPM {name}: wrk on /{pool}/{path}: {load:?}");
    }
    let busy = site.busy_keep_children(BUSY_PHP_REQUESTS);
    // A child killed mid-request (request_terminate_timeout) on a kept connection, swapped
    // after 300 KB: its request's last record unread, nginx must read ECONNRESET as from the
    // kernel, then EOF (it had read the child's first line). (curl fails: the answer ends
    // short.)
    for _ in 0..3 {
        let (status, body, _) = site.curl("/term/big.php?n=100000", &[]);
        transcript +=
            &format!("term GET 100000 B -> {status}, {}\n", if body == php_big(100_000) { "as expected" } else { "NOT as expected" });
    }
    let out = PhpSite::file(dir, name, "slow.out");
    let answer = php_curl(site.port, &out, "/term/slow.php?s=5", &[]).map(|(status, ..)| status).map_err(|e| e.to_string());
    let body = std::fs::read(&out).unwrap_or_default();
    transcript += &format!("term GET slow.php, killed -> {answer:?}, {:?}\n", String::from_utf8_lossy(&body));
    for line in site.stop() {
        transcript += &format!("nginx: {line}\n");
    }
    (transcript, slowest, busy)
}

/// PHP-FPM behind nginx over FastCGI Unix sockets, as a web host runs it, plain and then with
/// both under the hook on watched sockets: PHP-FPM's children accept on the listener their
/// master made, read requests with `read` and answer with `write`; nginx registers each
/// connection with epoll before it connects. The responses (request echoes, bodies up to 300
/// KB, request bodies read by PHP, a streamed response, one ended early) must be the plain
/// ones, wrk must see no error, neither may log an error, and no request may stall; a child
/// killed mid-request (`request_terminate_timeout`) must reset nginx's connection as the kernel
/// does (the hook once gave EOF: the child died without the close that marks a reset). With a new
/// connection per request (a) connections may stay plain (they are short); with
/// `fastcgi_keep_conn` (b) the kept connections that served many requests (at least one per
/// child that served [`BUSY_PHP_REQUESTS`]) must be traced `swapped` and carry PHP's answers on
/// the rings.
#[test]
fn php_fpm_behind_nginx_gives_the_same_responses_with_tssx() {
    require_root();
    let dir = TempDir::new("app-php-fpm");
    let [fresh, keep, term] = PHP_POOLS.map(|pool| PhpSite::socket(&dir, "tssx", pool));
    let agent = HookedAgent::start(&[&fresh, &keep, &term]);
    let (plain, plain_slowest, _) = php_session(&dir, "plain", false);
    for expected in [
        "round 1: keep GET 300000 B -> 200, as expected",
        "round 1: fresh POST 300000 B -> 200, as expected",
        "x-test hello",
        "nginx: readv() failed (104: Connection reset by peer) while reading upstream: GET /term/slow.php?s=5",
    ] {
        assert!(plain.contains(expected), "{expected:?} missing from the plain session: {plain}");
    }
    assert!(!plain.contains("NOT"), "unexpected plain session: {plain}");
    let (tssx, slowest, busy) = php_session(&dir, "tssx", true);
    assert_same("PHP-FPM session", &plain, &tssx);
    eprintln!("PHP-FPM: slowest request {plain_slowest:.3} s plain, {slowest:.3} s with tssx");
    assert!(slowest < 2.0, "a request took {slowest:.3} s with tssx ({plain_slowest:.3} s plain)");
    // (b) A swapped kept connection per busy child at least, and no more than nginx opened.
    assert!(busy > 0, "no child of the keep pool served {BUSY_PHP_REQUESTS} requests");
    let swapped = agent.wait_for("swapped", &keep, busy, TRACE_TIMEOUT);
    let connects = agent.events_on("connect", &keep).len();
    eprintln!(
        "PHP-FPM (b): {connects} kept connections ({busy} children served {BUSY_PHP_REQUESTS}+ requests), {} swapped; (a): {} connections, {} swapped",
        swapped.len(),
        agent.events_on("connect", &fresh).len(),
        agent.events_on("swapped", &fresh).len()
    );
    assert!(
        (busy..=connects).contains(&swapped.len()),
        "{connects} kept connections, {busy} busy children, swapped: {swapped:?}; not swapped: {:?}",
        not_swapped_reasons(&agent, &keep)
    );
    // nginx closed them when it stopped: their bytes crossed shared memory.
    poll_until(TRACE_TIMEOUT, || agent.events_on("closed", &keep).len() >= swapped.len());
    let bytes: u64 = agent.events_on("closed", &keep).iter().map(|c| c["bytes_server_to_client"].as_u64().unwrap_or(0)).sum();
    assert!(bytes >= 10_000_000, "only {bytes} bytes of PHP-FPM's answers on kept connections crossed shared memory");
    // The `term` pool's one connection, whose child was killed, was on the rings then.
    let killed = agent.wait_for("swapped", &term, 1, TRACE_TIMEOUT);
    assert_eq!(killed.len(), 1, "the term pool's connection: swapped {killed:?}; not swapped: {:?}", not_swapped_reasons(&agent, &term));
    assert!(agent.stop().success());
}
