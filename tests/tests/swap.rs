//! End-to-end: unmodified programs under LD_PRELOAD=libtssx_preload.so with the real agent.
//!
//! The hook finds the agent in the default state directory (`/run/tssx`), so these tests run
//! one at a time ([`HookedAgent`] and [`MachineLock`] hold a machine-wide lock).

use std::{
    io::{Read, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tssx_tests::{
    assert_connections_do_not_wait, churn::NO_WAIT_CONNECTIONS, hook, require_root, wait_until, HookedAgent, MachineLock, TempDir,
    DEFAULT_STATE_DIR,
};

const STREAM: &str = env!("CARGO_BIN_EXE_tssx-test-stream");
const GIB: u64 = 1 << 30;

fn stream(role: &str, path: &str, bytes: u64, preload: bool) -> Command {
    let mut cmd = Command::new(STREAM);
    cmd.args([role, path, &bytes.to_string(), "42"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    if preload {
        cmd.env("LD_PRELOAD", hook());
    }
    cmd
}

/// Runs the stream server and client (each with or without the hook); both must succeed.
/// Returns the time from the client's start to the end of both.
fn run_pair(path: &str, bytes: u64, server_hook: bool, client_hook: bool) -> Duration {
    let server = stream("server", path, bytes, server_hook).spawn().unwrap();
    // Wait for the socket file rather than sleeping a fixed time.
    wait_until(Duration::from_secs(10), &format!("the server to bind {path}"), || Path::new(path).exists());
    let started = Instant::now();
    let client = stream("client", path, bytes, client_hook).output().unwrap();
    let server = server.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    for (who, out) in [("client", &client), ("server", &server)] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{who} failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("ok sent={bytes} received={bytes}")), "{who}: {stdout}");
    }
    elapsed
}

fn start_agent(path: &str) -> HookedAgent {
    HookedAgent::start(&[path])
}

/// The `closed` trace line of the only connection on `path`: its shared-memory byte counts.
fn shm_bytes(agent: &HookedAgent, path: &str) -> (u64, u64) {
    let closed = agent.wait_for("closed", path, 1, Duration::from_secs(10));
    assert_eq!(closed.len(), 1, "{closed:?}");
    (closed[0]["bytes_client_to_server"].as_u64().unwrap(), closed[0]["bytes_server_to_client"].as_u64().unwrap())
}

#[test]
fn one_gib_each_way_goes_through_shared_memory() {
    require_root();
    let dir = TempDir::new("swap-gib");
    let path = dir.socket("app.sock");
    let agent = start_agent(&path);
    run_pair(&path, GIB, true, true);
    assert_eq!(agent.events_on("swapped", &path).len(), 1, "{:?}", agent.events("swapped"));
    // Every payload byte each way crossed the rings (the peers read nothing else), and the
    // programs checked each one and saw EOF at the end.
    assert_eq!(shm_bytes(&agent, &path), (GIB, GIB));
    assert!(agent.stop().success());
}

/// No agent: hooked programs work, and plain at once: no connection waits for a claim (the
/// hook finds no paths file and passes everything through), and none maps a segment.
#[test]
fn without_the_agent_the_hook_passes_through() {
    require_root();
    let _serial = MachineLock::acquire();
    assert!(!Path::new(DEFAULT_STATE_DIR).join("paths").exists(), "another tssx-agent is running");
    let dir = TempDir::new("swap-noagent");
    let path = dir.socket("app.sock");
    let started = Instant::now();
    run_pair(&path, 64 << 20, true, true);
    assert!(started.elapsed() < Duration::from_secs(30));
    // No agent: plain at once, no waiting for a claim.
    assert_connections_do_not_wait(&dir.socket("churn.sock"), true, true, "no agent");
}

#[test]
fn unwatched_paths_stay_plain() {
    require_root();
    let dir = TempDir::new("swap-unwatched");
    let watched = dir.socket("watched.sock");
    let other = dir.socket("other.sock");
    let agent = start_agent(&watched);
    run_pair(&other, 64 << 20, true, true);
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.events("swapped").is_empty());
    assert!(agent.events("client").is_empty(), "no claim on an unwatched path");
    assert!(agent.stop().success());
}

#[test]
fn a_peer_without_the_hook_gets_every_byte_over_the_plain_socket() {
    require_root();
    let dir = TempDir::new("swap-mixed");
    // Hooked client, plain server: the client's tentative bytes are replayed into the socket.
    // The server writes at once, so the pending client sees bytes on the real socket and goes
    // plain at once: well before the agent would decide (2 s after the accept, at its next
    // once-a-second sweep).
    let path = dir.socket("plain-server.sock");
    let agent = start_agent(&path);
    let took = run_pair(&path, 16 << 20, false, true);
    eprintln!("hooked client, plain server: 16 MiB each way in {took:?}");
    assert!(took < Duration::from_millis(1500), "the hooked client waited for the agent's decision: the pair took {took:?}");
    let refused = agent.wait_for("not", &path, 1, Duration::from_secs(5));
    assert!(refused.iter().any(|e| e["reason"].as_str().unwrap_or("").contains("no hook")), "{refused:?}");
    assert!(agent.events("swapped").is_empty());
    assert!(agent.stop().success());
    // Plain client, hooked server: the server's claim finds no client claim and stays plain,
    // without waiting for one (the agent sees that the client does not map the hook).
    let path = dir.socket("plain-client.sock");
    let churn = dir.socket("plain-client-churn.sock");
    let agent = HookedAgent::start(&[&path, &churn]);
    run_pair(&path, 16 << 20, true, false);
    assert!(agent.events("swapped").is_empty());
    // Server claims answered plain (those lines carry no path: count them from here on).
    let server_plain = || agent.events("not").into_iter().filter(|e| e["role"] == "Server").count();
    let before = server_plain();
    assert_connections_do_not_wait(&churn, true, false, "a hooked server whose client has no hook");
    wait_until(Duration::from_secs(5), "every churn server claim traced `not swapped`", || {
        server_plain() >= before + NO_WAIT_CONNECTIONS as usize
    });
    assert_eq!(server_plain(), before + NO_WAIT_CONNECTIONS as usize, "{:?}", agent.events("not"));
    assert!(agent.events("swapped").is_empty());
    assert!(agent.stop().success());
}

/// An fd deleted from epoll while swapped keeps a kernel registration the hook made (see the
/// hook's epoll module): when the connection then goes plain, adding the fd again must work as
/// on a plain socket, and report the application's own data.
#[test]
fn epoll_add_after_delete_and_plain_turn() {
    require_root();
    let dir = TempDir::new("swap-epoll-turn");
    let path = dir.socket("plain-server.sock");
    let agent = start_agent(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let client = Command::new(env!("CARGO_BIN_EXE_tssx-test-epoll-turn"))
        .arg(&path)
        .env("LD_PRELOAD", hook())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // A server without the hook: the client's claim ends plain, its first bytes replayed.
    let (mut server, _) = listener.accept().unwrap();
    server.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 2];
    let mut exchange = |expect: &[u8], answer: &[u8]| {
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, expect);
        server.write_all(answer).unwrap();
    };
    exchange(b"hi", b"yo");
    exchange(b"go", b"zz");
    let out = client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.trim() == "ok", "client: {stdout}");
    let refused = agent.wait_for("not", &path, 1, Duration::from_secs(5));
    assert!(refused.iter().any(|e| e["reason"].as_str().unwrap_or("").contains("no hook")), "{refused:?}");
    assert!(agent.stop().success());
}
