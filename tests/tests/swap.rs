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
    assert_connections_do_not_wait, hook, poll_until, require_root, wait_until, HookedAgent, MachineLock, Process, TempDir,
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
    let swapped = agent.wait_for("swapped", &path, 1, Duration::from_secs(10));
    assert_eq!(swapped.len(), 1, "{:?}", agent.events("swapped"));
    // Every payload byte each way crossed the socket until its direction switched, and the
    // rings after (the peers read nothing else); the programs checked each one and saw EOF.
    let switched = (swapped[0]["switched_client_to_server"].as_u64().unwrap(), swapped[0]["switched_server_to_client"].as_u64().unwrap());
    assert!(switched.0 < GIB / 2 && switched.1 < GIB / 2, "most of the stream went through shared memory: {switched:?}");
    let shm = shm_bytes(&agent, &path);
    assert_eq!((shm.0 + switched.0, shm.1 + switched.1), (GIB, GIB));
    // Both rings started at --ring-initial and grew, step by step, to --ring-size while the
    // byte-checked streams crossed them (every growth step in both directions).
    let closed = &agent.events("closed")[0];
    for dir in ["ring_client_to_server", "ring_server_to_client"] {
        assert_eq!(closed[dir].as_u64(), Some(1 << 20), "{dir}: {closed}");
    }
    assert!(closed["resident_bytes"].as_u64().unwrap() >= 2 << 20, "{closed}");
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
    assert_eq!(agent.stats()["claims"], 0, "no claim on an unwatched path");
    assert!(agent.stop().success());
}

/// A peer without the hook never claims: the connection stays plain, every byte goes over the
/// socket, and nothing waits for the agent or the peer (plain first: nobody waits for a claim).
#[test]
fn a_peer_without_the_hook_gets_every_byte_over_the_plain_socket() {
    require_root();
    let dir = TempDir::new("swap-mixed");
    // Hooked client, plain server: the client's claim is held by the agent until the hook
    // gives it up (or the connection ends); the stream never waits for it.
    let path = dir.socket("plain-server.sock");
    let agent = start_agent(&path);
    let took = run_pair(&path, 16 << 20, false, true);
    eprintln!("hooked client, plain server: 16 MiB each way in {took:?}");
    assert!(took < Duration::from_millis(1500), "the hooked client waited: the pair took {took:?}");
    assert!(agent.events("swapped").is_empty());
    assert!(agent.events("paired").is_empty(), "a peer without the hook never pairs");
    wait_until(Duration::from_secs(5), "the held claim counted as never matched", || {
        agent.stats()["peer_never_claimed"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(agent.stats()["held_claims"], 0, "the claim is dropped once the connection closed");
    assert!(agent.stop().success());
    // Plain client, hooked server, and short connections on top: plain, and not one waits.
    let path = dir.socket("plain-client.sock");
    let churn = dir.socket("plain-client-churn.sock");
    let agent = HookedAgent::start(&[&path, &churn]);
    let took = run_pair(&path, 16 << 20, true, false);
    assert!(took < Duration::from_millis(1500), "the hooked server waited: the pair took {took:?}");
    assert_connections_do_not_wait(&churn, true, false, "a hooked server whose client has no hook");
    assert!(agent.events("swapped").is_empty());
    assert!(agent.events("paired").is_empty());
    assert!(agent.stop().success());
}

/// A tracked socket registered with epoll, deleted and added again while its connection stays
/// plain (the peer has no hook): the hook records and forgets the registrations, and adding the
/// fd again must work as on a plain socket and report the application's own data.
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
    // A server without the hook: the client's connection is tracked (and claims), but stays
    // plain; its epoll registrations stay the kernel's.
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
    // The server has no hook: the connection stayed plain all along.
    assert!(agent.events("paired").is_empty() && agent.events("swapped").is_empty());
    assert!(agent.stop().success());
}

const EXCHANGE: &str = env!("CARGO_BIN_EXE_tssx-test-exchange");

/// Runs `tssx-test-exchange` (both ends hooked) on `path`: `connections` connections one after
/// the other, `exchanges` request/answer exchanges each, the server answering after `delay_ms`.
fn exchanges(path: &str, delay_ms: u64, connections: u64, exchanges: u64) {
    let mut server = Command::new(EXCHANGE)
        .args(["server", path, &delay_ms.to_string()])
        .env("LD_PRELOAD", hook())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), &format!("the server to bind {path}"), || Path::new(path).exists());
    let out = Command::new(EXCHANGE)
        .args(["client", path, &connections.to_string(), &exchanges.to_string()])
        .env("LD_PRELOAD", hook())
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "client failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("done exchanges={}", connections * exchanges)), "{stdout}");
}

/// The claim rule: a connection opened for one request and its answer (nginx's default
/// upstream, HTTP/1.0, nscd with `shared no`) is never claimed, even when a slow answer keeps
/// it open well past `--claim-after`: a segment would cost more than it saves. A connection
/// that goes on to a second exchange claims and is swapped.
#[test]
fn one_exchange_per_connection_never_claims_however_long_it_lives() {
    require_root();
    let dir = TempDir::new("swap-exchange");
    let (short, kept) = (dir.socket("short.sock"), dir.socket("kept.sock"));
    let agent = HookedAgent::start(&[&short, &kept]);
    // Each connection lives at least 5 ms, five times the default --claim-after.
    exchanges(&short, 5, 20, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.stats()["claims"], 0, "no claim for one exchange per connection");
    assert!(agent.events_on("swapped", &short).is_empty());
    // The same connection with more exchanges: claimed and swapped in flight.
    exchanges(&kept, 5, 1, 40);
    let swapped = agent.wait_for("swapped", &kept, 1, Duration::from_secs(10));
    assert_eq!(swapped.len(), 1, "{:?}", agent.events("not swapped"));
    assert!(agent.stop().success());
}

/// Runs `tssx-bench-setup` on `path`, server and client under the hook: `count` connections
/// with the round trips of `schedule` (its ROUNDS argument); both must succeed.
fn bench_setup(path: &str, count: usize, schedule: &str) {
    const SETUP: &str = env!("CARGO_BIN_EXE_tssx-bench-setup");
    let mut server = Command::new(SETUP);
    server.args(["serve", path, &count.to_string(), schedule]).env("LD_PRELOAD", hook());
    let mut server = Process::spawn(server);
    // Its `ready` comes once it listens: the socket file of an earlier run on the same path
    // is no sign (the server removes it before it binds; a client that connected in between
    // failed with ENOENT, and the server then waited for it for good).
    server.expect_line("ready", Duration::from_secs(10));
    let out = Command::new(SETUP).args(["drive", path, &count.to_string(), schedule]).env("LD_PRELOAD", hook()).output().unwrap();
    // (A client that failed leaves the server waiting for its connections: killed then.)
    let served = server.wait(Duration::from_secs(if out.status.success() { 60 } else { 1 }));
    let served_ok = served.is_some_and(|s| s.success());
    assert!(out.status.success() && served_ok, "client {}, server {served:?}: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// Cooling in the kernel (the agent's `control::quiet`): once a process's connections on a
/// path keep ending plain, the connect hook program reports only its connects made in a probe
/// window. A client makes one-exchange connections for some seconds (a few sweeps), then 48
/// conversations of 1,000 round trips: every connect is either reported (`connects`) or
/// counted unreported (`quiet_connects`), a good part goes unreported, and the conversations
/// still migrate (one made in a probe window warms the path, and its claim ends the quiet).
#[test]
fn a_process_whose_connections_end_plain_goes_quiet_in_the_kernel() {
    require_root();
    const SHORT: usize = 60_000;
    const CONVERSATIONS: usize = 48;
    let dir = TempDir::new("swap-quiet");
    let path = dir.socket("quiet.sock");
    let agent = HookedAgent::start_with(&[&path], &["--cool-after", "8"]);
    bench_setup(&path, SHORT + CONVERSATIONS, &format!("1@{SHORT}/1000"));
    let total = (SHORT + CONVERSATIONS) as u64;
    // Events the ring buffer had no room for (an agent stalled for a second or more on a loaded
    // machine) are counted by the kernel too, and warned about.
    let lost = || agent.events("events").iter().filter_map(|v| v["dropped"].as_u64()).sum::<u64>();
    let counted =
        |stats: &serde_json::Value| stats["connects"].as_u64().unwrap_or(0) + stats["quiet_connects"].as_u64().unwrap_or(0) + lost();
    // (The kernel's counts are copied every second, the events read every 100 ms.)
    poll_until(Duration::from_secs(5), || counted(&agent.stats()) == total);
    let stats = agent.stats();
    assert_eq!(counted(&stats), total, "every connect reported, counted unreported or lost ({}): {stats}", lost());
    let unreported = stats["quiet_connects"].as_u64().unwrap_or(0);
    assert!(unreported > SHORT as u64 / 10, "most connects of a churn go unreported once it is quiet: {stats}");
    let starts_with = |v: &serde_json::Value, words: &str| v["message"].as_str().is_some_and(|m| m.starts_with(words));
    let quiet = agent.events_on("quiet", &path);
    assert!(quiet.iter().any(|v| starts_with(v, "quiet:")), "the agent traces the quiet: {quiet:?}");
    let swapped = agent.wait_for("swapped", &path, 1, Duration::from_secs(10));
    assert!(!swapped.is_empty(), "a conversation made in a probe window migrates: {stats}");
    // (A short connection that happened to live past the claim rule may have ended an earlier
    // quiet, which the churn then started again.)
    let last = agent.events_on("quiet", &path).pop();
    assert!(last.as_ref().is_some_and(|v| starts_with(v, "quiet no more")), "a conversation's claim ends the quiet: {last:?}");
    assert!(agent.events("claim").iter().all(|v| v["message"] != "claim refused"), "{:?}", agent.events("claim"));
    assert!(agent.stop().success());
}

/// Cooling (the hook's `heat`): once `--cool-after` connections of a path ended plain in a row,
/// each end tracks only the connections made in a probe window (about 4 ms in 67), and a probe
/// that reaches the rings warms the path again. Here 16 one-exchange connections (`--cool-after
/// 8`), then 48 conversations of 1,000 round trips (several ms each, over at least two windows
/// in all): the conversations stay plain until one begins in a window, which both ends track;
/// it is swapped, and so is every conversation after it (had none begun in a window, the path
/// would be warm again a second after the last short connection ended). With `--cool-after 0` every
/// conversation is swapped. (Every conversation is swapped with cooling too when the first
/// begins in a window, 1 time in 16: the run is repeated then.)
#[test]
fn a_path_whose_connections_end_plain_cools_until_a_probe_reaches_the_rings() {
    require_root();
    // Twice `--cool-after` short connections: a pause over 100 ms between two of them (a
    // loaded machine) restarts the count, and the path cools at the 8th in a row all the same.
    const COOL_AFTER: usize = 8;
    const SHORT: usize = 2 * COOL_AFTER;
    const CONVERSATIONS: usize = 48;
    let dir = TempDir::new("swap-cool");
    let (cooling, never) = (dir.socket("cooling.sock"), dir.socket("never.sock"));
    let schedule = format!("1@{SHORT}/1000");
    for attempt in 1.. {
        let agent = HookedAgent::start_with(&[&cooling], &["--cool-after", &COOL_AFTER.to_string()]);
        bench_setup(&cooling, SHORT + CONVERSATIONS, &schedule);
        std::thread::sleep(Duration::from_millis(300));
        let swapped = agent.events_on("swapped", &cooling).len();
        assert!(agent.stop().success());
        eprintln!("run {attempt}: {swapped} of {CONVERSATIONS} conversations swapped");
        assert!(swapped >= 1, "no probe reached the rings: both ends must track the connections of a window");
        if swapped < CONVERSATIONS {
            break;
        }
        assert!(attempt < 6, "all {CONVERSATIONS} conversations swapped in {attempt} runs: the path never cooled");
    }
    let agent = HookedAgent::start_with(&[&never], &["--cool-after", "0"]);
    bench_setup(&never, SHORT + CONVERSATIONS, &schedule);
    let swapped = agent.wait_for("swapped", &never, CONVERSATIONS, Duration::from_secs(10));
    assert_eq!(swapped.len(), CONVERSATIONS, "{:?}", agent.events("not swapped"));
    assert!(agent.stop().success());
}
