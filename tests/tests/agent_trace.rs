//! End-to-end: the real agent traces real processes on real sockets (root, real kernel).

use std::{
    collections::{BTreeSet, HashSet},
    os::unix::net::UnixStream,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tssx_tests::{field, lines_of, require_root, run_ok, Agent, Server, TempDir};

const SERVER: &str = env!("CARGO_BIN_EXE_tssx-test-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_tssx-test-client");
const WAIT: Duration = Duration::from_secs(15);

fn client(path: &str, connections: usize) -> String {
    let mut cmd = Command::new(CLIENT);
    cmd.args([path, &connections.to_string()]);
    String::from_utf8(run_ok(cmd).stdout).expect("utf-8")
}

/// `(pid, fd)` pairs of the test programs' `connect`/`accept` lines.
fn pid_fds<S: AsRef<str>>(lines: &[S]) -> BTreeSet<(i64, i64)> {
    lines.iter().map(|l| (field(l.as_ref(), "pid").unwrap(), field(l.as_ref(), "fd").unwrap())).collect()
}

/// `(pid, fd)` pairs of the agent's trace lines.
fn traced(events: &[Value]) -> BTreeSet<(i64, i64)> {
    events.iter().map(|e| (e["pid"].as_i64().unwrap(), e["fd"].as_i64().unwrap())).collect()
}

#[test]
fn traces_connect_and_accept_on_the_watched_path_only() {
    require_root();
    let dir = TempDir::new("trace-watched");
    let watched = dir.socket("watched.sock");
    let unwatched = dir.socket("unwatched.sock");
    let missing = dir.socket("nobody-listens.sock");
    let agent = Agent::start_with(&[&watched, &missing], &dir.join("state"), &["--syscall-tracepoints"]);

    // Watched path: one connection.
    let server = Server::start(SERVER, &watched, 1, 0);
    let server_pid = server.pid as i64;
    let client_out = client(&watched, 1);
    let accepts = server.finish();
    // Unwatched path, TCP, and a failed connect to a watched path: no events.
    let server = Server::start(SERVER, &unwatched, 1, 0);
    client(&unwatched, 1);
    server.finish();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let _tcp_client = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let _tcp_server = tcp.accept().unwrap();
    assert!(UnixStream::connect(&missing).is_err());

    let connects = agent.wait_for("connect", &watched, 1, WAIT);
    let accepted = agent.wait_for("accept", &watched, 1, WAIT);
    assert_eq!(traced(&connects), pid_fds(&lines_of(&client_out, "connect")), "{connects:?}");
    assert_eq!(traced(&accepted), pid_fds(&accepts), "{accepted:?}");
    assert_eq!(accepted[0]["pid"].as_i64(), Some(server_pid));
    assert_eq!(accepted[0]["comm"], "tssx-test-serve");
    // The listener the server reported is the one accepted on.
    assert!(accepted[0]["listen_fd"].as_i64().unwrap() >= 3);
    let binds = agent.events_on("bind", &watched);
    assert_eq!(binds.len(), 1, "{binds:?}");
    assert_eq!(binds[0]["pid"].as_i64(), Some(server_pid));
    assert_eq!(agent.events_on("listen", &watched).len(), 1);

    // Nothing at all on the unwatched path, from TCP, or from the failed connect.
    for kind in ["connect", "accept", "bind", "listen"] {
        assert_eq!(agent.events(kind).len(), agent.events_on(kind, &watched).len(), "stray {kind}");
    }
    assert!(agent.events_on("connect", &missing).is_empty());
    // The server started an echo thread per connection: threads are not forks.
    assert!(agent.events("fork").is_empty(), "{:?}", agent.events("fork"));
    assert!(agent.stop().success(), "agent must exit 0 on SIGTERM");
}

#[test]
fn traces_abstract_names() {
    require_root();
    let dir = TempDir::new("trace-abstract");
    let name = format!("@tssx-e2e-abstract-{}", std::process::id());
    let other = format!("{name}-not-watched");
    let agent = Agent::start_with(&[&name], &dir.join("state"), &["--syscall-tracepoints"]);
    let server = Server::start(SERVER, &name, 1, 0);
    let client_out = client(&name, 1);
    let accepts = server.finish();
    // Same prefix, longer name: a different address, not watched.
    let server = Server::start(SERVER, &other, 1, 0);
    client(&other, 1);
    server.finish();

    let connects = agent.wait_for("connect", &name, 1, WAIT);
    let accepted = agent.wait_for("accept", &name, 1, WAIT);
    assert_eq!(traced(&connects), pid_fds(&lines_of(&client_out, "connect")));
    assert_eq!(traced(&accepted), pid_fds(&accepts));
    assert_eq!(agent.events("connect").len(), 1, "only the watched name: {:?}", agent.events("connect"));
}

#[test]
fn traces_a_prefork_server() {
    require_root();
    let dir = TempDir::new("trace-prefork");
    let path = dir.socket("prefork.sock");
    let agent = Agent::start_with(&[&path], &dir.join("state"), &["--syscall-tracepoints"]);
    const CHILDREN: usize = 3;
    const CONNECTIONS: usize = 6;
    let server = Server::start(SERVER, &path, CONNECTIONS, CHILDREN);
    let parent = server.pid as i64;
    let client_out = client(&path, CONNECTIONS);
    let accepts = server.finish();

    let accepted = agent.wait_for("accept", &path, CONNECTIONS, WAIT);
    assert_eq!(accepted.len(), CONNECTIONS, "{accepted:?}");
    assert_eq!(traced(&accepted), pid_fds(&accepts));
    let acceptors: HashSet<i64> = accepted.iter().map(|e| e["pid"].as_i64().unwrap()).collect();
    assert!(!acceptors.contains(&parent), "the parent never accepts");
    assert_eq!(acceptors.len(), CHILDREN, "every child accepted");
    // Every acceptor is a child the agent saw being forked from the listener's owner.
    let forks = agent.events("fork");
    for pid in &acceptors {
        assert!(
            forks.iter().any(|f| f["pid"].as_i64() == Some(parent) && f["child"].as_i64() == Some(*pid)),
            "fork of {pid} not traced: {forks:?}"
        );
    }
    let connects = agent.wait_for("connect", &path, CONNECTIONS, WAIT);
    assert_eq!(traced(&connects), pid_fds(&lines_of(&client_out, "connect")));
}

/// Both watchers: the default (the connect hook: connect lines with the socket's cookie, no
/// accept lines) and the syscall tracepoints (connect and accept lines with their fds).
const WATCHERS: [&[&str]; 2] = [&[], &["--syscall-tracepoints"]];

#[test]
fn two_hundred_concurrent_connections_lose_no_event() {
    require_root();
    for args in WATCHERS {
        let tracepoints = !args.is_empty();
        let dir = TempDir::new("trace-concurrent");
        let path = dir.socket("busy.sock");
        let agent = Agent::start_with(&[&path], &dir.join("state"), args);
        const N: usize = 200;
        let server = Server::start(SERVER, &path, N, 0);
        let client_out = client(&path, N);
        let accepts = server.finish();
        assert_eq!(accepts.len(), N);

        let connects = agent.wait_for("connect", &path, N, WAIT);
        assert_eq!(connects.len(), N, "{args:?}");
        if tracepoints {
            let accepted = agent.wait_for("accept", &path, N, WAIT);
            assert_eq!(accepted.len(), N);
            assert_eq!(traced(&connects), pid_fds(&lines_of(&client_out, "connect")));
            assert_eq!(traced(&accepted), pid_fds(&accepts));
        } else {
            let pids: BTreeSet<i64> = pid_fds(&lines_of(&client_out, "connect")).into_iter().map(|(pid, _)| pid).collect();
            let traced_pids: BTreeSet<i64> = connects.iter().map(|e| e["pid"].as_i64().unwrap()).collect();
            assert_eq!(traced_pids, pids);
            let cookies: HashSet<u64> = connects.iter().map(|e| e["cookie"].as_u64().unwrap()).collect();
            assert_eq!(cookies.len(), N, "one socket each");
            assert!(agent.events("accept").is_empty());
        }
        assert!(agent.events("events lost").is_empty());
        assert!(agent.stop().success());
    }
}

/// Connections that close before either end claims them (here: programs without the hook) are
/// counted (`short_lived_plain`, one per connection) and traced per connection at debug only: at
/// info, a busy server's short connections show as connect/accept lines and counters. With
/// either watcher (the connect hook's events are checked by socket cookie).
#[test]
fn short_lived_connections_are_counted_and_traced_at_debug_only() {
    require_root();
    for args in WATCHERS {
        let dir = TempDir::new("trace-short");
        let path = dir.socket("short.sock");
        let agent = Agent::start_with(&[&path], &dir.join("state"), &[&["-v"], args].concat());
        const N: usize = 5;
        let server = Server::start(SERVER, &path, N, 0);
        client(&path, N);
        server.finish();
        agent.wait_for("connect", &path, N, WAIT);
        tssx_tests::wait_until(Duration::from_secs(5), "the sweep to count the closed connections", || {
            agent.stats()["short_lived_plain"] == N as u64
        });
        let stats = agent.stats();
        assert_eq!((stats["unclaimed_events"].as_u64(), stats["claims"].as_u64()), (Some(0), Some(0)), "{args:?}: {stats}");
        let not = agent.events_on("not", &path);
        assert_eq!(not.len(), N, "{not:?}");
        assert!(not.iter().all(|e| e["level"] == "DEBUG" && e["reason"].as_str().is_some_and(|r| r.starts_with("short-lived"))), "{not:?}");
        assert!(agent.events("paired").is_empty() && agent.events("swapped").is_empty());
        assert!(agent.stop().success());
    }
}

/// The default watcher: the connect hook (a `cgroup/connect_unix` program) and no syscall
/// tracepoint at all (while one is attached, every system call of the machine takes the
/// kernel's slower path): the kernel holds none of the agent's syscall programs. Each connect
/// to a watched path is traced with the client socket's cookie (`SO_COOKIE`); a connect to a
/// watched name that fails is traced too (the hook runs before the kernel looks the name up).
/// Nothing is traced for unwatched paths; no bind, listen or accept lines.
#[test]
fn the_default_watcher_traces_connects_by_cookie_without_syscall_tracepoints() {
    require_root();
    let dir = TempDir::new("trace-hook");
    let watched = dir.socket("watched.sock");
    let unwatched = dir.socket("unwatched.sock");
    let missing = dir.socket("nobody-listens.sock");
    let agent = Agent::start_with(&[&watched, &missing], &dir.join("state"), &["-v"]);
    let ready = &agent.events("ready")[0];
    assert!(ready["watcher"].as_str().unwrap().starts_with("connect hook"), "{ready}");
    let programs = tssx_tests::bpf::programs_of(agent.pid());
    let named = |prefix: &str| programs.iter().filter(|p| p.name.starts_with(prefix)).count();
    assert_eq!(named("tssx_enter_") + named("tssx_exit_"), 0, "syscall programs loaded: {programs:?}");
    assert!(
        programs.iter().any(|p| p.kind == tssx_tests::bpf::PROG_TYPE_CGROUP_SOCK_ADDR && p.name == "tssx_conn_unix"),
        "no connect hook: {programs:?}"
    );
    assert!(
        programs.iter().any(|p| p.kind == tssx_tests::bpf::PROG_TYPE_TRACEPOINT && p.name.starts_with("tssx_io_uring")),
        "{programs:?}"
    );

    let listener = std::os::unix::net::UnixListener::bind(&watched).unwrap();
    let client = UnixStream::connect(&watched).unwrap();
    let cookie = socket_cookie(&client);
    let _server = listener.accept().unwrap();
    let other = std::os::unix::net::UnixListener::bind(&unwatched).unwrap();
    let _plain = UnixStream::connect(&unwatched).unwrap();
    let _plain_server = other.accept().unwrap();
    assert!(UnixStream::connect(&missing).is_err());

    let connects = agent.wait_for("connect", &watched, 1, WAIT);
    assert_eq!(connects.len(), 1, "{connects:?}");
    assert_eq!((connects[0]["pid"].as_u64(), connects[0]["cookie"].as_u64()), (Some(std::process::id().into()), Some(cookie)));
    assert!(connects[0]["fd"].is_null(), "the hook sees no fd: {}", connects[0]);
    assert_eq!(agent.wait_for("connect", &missing, 1, WAIT).len(), 1, "the failed attempt");
    assert!(agent.events_on("connect", &unwatched).is_empty());
    for kind in ["bind", "listen", "accept"] {
        assert!(agent.events(kind).is_empty(), "{kind}: {:?}", agent.events(kind));
    }
    assert!(agent.stop().success());
}

/// The `SO_COOKIE` of a socket.
fn socket_cookie(socket: &UnixStream) -> u64 {
    use std::os::fd::AsRawFd as _;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a live u64 of the stated length.
    let rc = unsafe { libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, (&raw mut cookie).cast(), &mut len) };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

/// Two hooked programs stream through a watched path: the agent traces `paired`, then `swapped`
/// with the byte positions at which each direction moved onto the rings and how long after the
/// connect, then `closed` with the bytes through shared memory; together they account for every
/// byte. (Whether a pair migrates is the hooks' doing: the stream checker's client, whose two
/// threads are nearly always blocked in the kernel, sometimes never becomes ready; such a pair
/// is traced `paired` and `closed` only, and another is run, three at most.)
#[test]
fn traces_a_migration_paired_swapped_closed() {
    require_root();
    let dir = TempDir::new("trace-migrate");
    let path = dir.socket("migrate.sock");
    let agent = tssx_tests::HookedAgent::start(&[&path]);
    const BYTES: u64 = 256 << 20;
    let stream = |role: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tssx-test-stream"));
        cmd.args([role, &path, &BYTES.to_string(), "3"]).env("LD_PRELOAD", tssx_tests::hook());
        tssx_tests::Process::spawn(cmd)
    };
    let count = |stats: &Value, key: &str| stats[key].as_u64().unwrap_or_else(|| panic!("{key} in {stats}"));
    for attempt in 1..=3 {
        let before = agent.stats();
        let started = tssx_tests::monotonic_ns();
        let _ = std::fs::remove_file(&path);
        let server = stream("server");
        server.expect_line("ready", WAIT);
        tssx_tests::wait_until(WAIT, "the server's socket", || std::path::Path::new(&path).exists());
        let client = stream("client");
        for end in [client, server] {
            let lines = end.finish(Duration::from_secs(60));
            assert!(lines.contains(&format!("ok sent={BYTES} received={BYTES}")), "{lines:?}");
        }
        let took_us = (tssx_tests::monotonic_ns() - started) / 1000;
        let closed = agent.await_events("closed", &path, attempt, WAIT);
        let c = closed.last().unwrap().clone();
        let id = c["connection"].clone();
        let of = |kind: &str| -> Vec<Value> { agent.events_on(kind, &path).into_iter().filter(|e| e["connection"] == id).collect() };
        let (paired, swapped) = (of("paired"), of("swapped"));
        let after = agent.stats();
        assert_eq!(
            (count(&after, "claims") - count(&before, "claims"), count(&after, "paired") - count(&before, "paired")),
            (2, 1),
            "{after}"
        );
        assert_eq!(paired.len(), 1, "{paired:?}");
        let p = &paired[0];
        assert!(p["client"].as_str().unwrap().ends_with("/tssx-test-strea"), "{p}");
        let Some(s) = swapped.first() else {
            eprintln!("attempt {attempt}: paired, not swapped: {:?}", agent.events_on("not", &path));
            continue;
        };
        let at = |e: &Value| e["timestamp"].as_str().unwrap().to_owned();
        assert!(at(p) <= at(s) && at(s) <= at(&c), "out of order: {p} {s} {c}");
        assert_eq!((p["client"].clone(), p["server"].clone()), (s["client"].clone(), s["server"].clone()));
        assert!(s["message"].as_str().unwrap().starts_with("swapped ") && s["message"].as_str().unwrap().contains(" <-> "), "{s}");
        for (switch, shm) in
            [("switched_client_to_server", "bytes_client_to_server"), ("switched_server_to_client", "bytes_server_to_client")]
        {
            assert_eq!(s[switch].as_u64().unwrap() + c[shm].as_u64().unwrap(), BYTES, "{s} {c}");
        }
        let migrated = s["migrated_after_us"].as_u64().unwrap();
        assert!(migrated > 0 && migrated < took_us, "migrated after {migrated} us of a {took_us} us run");
        assert_eq!(count(&after, "swapped") - count(&before, "swapped"), 1, "{after}");
        eprintln!("migrated {migrated} us after the connect: {s}");
        assert!(agent.stop().success());
        return;
    }
    panic!("three stream pairs in a row were not swapped");
}
