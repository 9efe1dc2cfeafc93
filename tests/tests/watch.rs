//! End-to-end: what `--paths` patterns watch (root, real agent, real kernel): directory
//! prefixes at any depth, globs, abstract prefixes, relative addresses (resolved against the
//! caller's working directory, for connect and for bind), and sockets outside every pattern,
//! which must stay untraced. Then the same through the hook: connections swapped on a prefix
//! with relative addresses, and a test-suite style run where every test makes its socket in a
//! fresh temporary directory under the watched prefix.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tssx_tests::{field, hook, lines_of, require_root, run_ok, Agent, HookedAgent, Process, TempDir};

const SERVER: &str = env!("CARGO_BIN_EXE_tssx-test-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_tssx-test-client");
const STREAM: &str = env!("CARGO_BIN_EXE_tssx-test-stream");
const WAIT: Duration = Duration::from_secs(15);

/// `tssx-test-server ADDRESS 1` started in `cwd` (so a relative address is bound there); waits
/// for its `ready` line.
fn server_in(cwd: &Path, address: &str) -> Process {
    let mut cmd = Command::new(SERVER);
    cmd.current_dir(cwd).args([address, "1", "0"]);
    let server = Process::spawn_group(cmd);
    server.expect_line("ready", WAIT);
    server
}

/// One connection of `tssx-test-client` to `address` from `cwd`; returns its `connect` line.
/// The client lives 300 ms after its exchange: the agent resolves a relative address against
/// a living process's working directory.
fn client_in(cwd: &Path, address: &str) -> String {
    let mut cmd = Command::new(CLIENT);
    cmd.current_dir(cwd).args([address, "1", "300"]);
    let out = String::from_utf8(run_ok(cmd).stdout).expect("utf-8");
    lines_of(&out, "connect").into_iter().next().map(str::to_owned).unwrap_or_else(|| panic!("no connect line: {out}"))
}

/// One server and one client on `address` (bound from `server_cwd`, connected from
/// `client_cwd`); returns the client's `(pid, fd)` and the server's pid. With `bound`, the
/// client connects once the agent traced the bind on that path: a listener that the agent
/// matches itself (a glob, a relative address) is watched from then on.
fn connection(server_cwd: &Path, client_cwd: &Path, address: &str, bound: Option<(&Agent, &str)>) -> ((i64, i64), i64) {
    connection_to(server_cwd, address, client_cwd, address, bound)
}

/// As [`connection`], the server binding `bind` and the client connecting to `connect`.
fn connection_to(server_cwd: &Path, bind: &str, client_cwd: &Path, connect: &str, bound: Option<(&Agent, &str)>) -> ((i64, i64), i64) {
    let server = server_in(server_cwd, bind);
    if let Some((agent, path)) = bound {
        agent.await_events("bind", path, 1, WAIT);
    }
    let pid = server.pid() as i64;
    let line = client_in(client_cwd, connect);
    server.finish(WAIT);
    ((field(&line, "pid").unwrap(), field(&line, "fd").unwrap()), pid)
}

/// The trace lines of `kind` whose `path` is `path`.
fn lines_on(agent: &Agent, kind: &str, path: &str) -> Vec<Value> {
    agent.events(kind).into_iter().filter(|e| e["path"] == path).collect()
}

/// Asserts one bind, one connect (by `client`) and one accept (in `server`) traced on `path`
/// under `pattern`, the bind and connect written as `written` (if relative).
fn assert_traced(agent: &Agent, path: &str, pattern: &str, client: (i64, i64), server: i64, written: Option<(&str, &str)>) {
    let connects = agent.wait_for("connect", path, 1, WAIT);
    assert_eq!(connects.len(), 1, "{path}: {connects:?}");
    let c = &connects[0];
    assert_eq!((c["pid"].as_i64().unwrap(), c["fd"].as_i64().unwrap()), client, "{c}");
    assert_eq!(c["pattern"], pattern, "{c}");
    let binds = lines_on(agent, "bind", path);
    assert_eq!(binds.len(), 1, "{path}: {binds:?}");
    assert_eq!((binds[0]["pid"].as_i64(), binds[0]["pattern"].as_str()), (Some(server), Some(pattern)), "{binds:?}");
    if let Some((bound, connected)) = written {
        assert_eq!(binds[0]["as_written"], bound, "{binds:?}");
        assert_eq!(c["as_written"], connected, "{c}");
    }
    // An accept's event has no address: its line names the listener's pattern, and the server.
    let accepts: Vec<Value> =
        agent.events("accept").into_iter().filter(|e| e["pid"].as_i64() == Some(server) && e["pattern"] == pattern).collect();
    let summary: Vec<String> = agent
        .trace()
        .iter()
        .filter(|e| e["pid"].is_number())
        .map(|e| format!("{} pid={} fd={} path={} pattern={}", e["message"], e["pid"], e["fd"], e["path"], e["pattern"]))
        .collect();
    assert_eq!(accepts.len(), 1, "{path}: {summary:#?}");
}

#[test]
fn prefixes_globs_and_abstract_prefixes_are_traced_and_nothing_else() {
    require_root();
    let dir = TempDir::new("watch-shapes");
    for sub in ["prefix/x/y", "glob/sub", "other"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let prefix = format!("{}/", dir.socket("prefix"));
    let glob = dir.socket("glob/*.sock");
    let abstract_prefix = format!("@tssx-e2e-watch-{}-*", std::process::id());
    let agent = Agent::start_with(&[&prefix, &glob, &abstract_prefix], &dir.join("state"), &["--syscall-tracepoints"]);
    let at = dir.path();
    let cases = [
        (dir.socket("prefix/a.sock"), prefix.as_str()),
        (dir.socket("prefix/x/y/deep.sock"), prefix.as_str()),
        (dir.socket("glob/b.sock"), glob.as_str()),
        (abstract_prefix.replace('*', "one"), abstract_prefix.as_str()),
    ];
    for (address, pattern) in &cases {
        let (client, server) = connection(at, at, address, Some((&agent, address)));
        assert_traced(&agent, address, pattern, client, server, None);
    }
    // Outside every pattern: under the glob's literal prefix but not matching it (the kernel
    // reports these as candidates, the agent drops them), elsewhere, another abstract name.
    let outside = [
        dir.socket("glob/b.txt"),
        dir.socket("glob/sub/c.sock"),
        dir.socket("other/d.sock"),
        dir.socket("prefixed.sock"),
        format!("@tssx-e2e-watch-{}", std::process::id()),
    ];
    for address in &outside {
        connection(at, at, address, None);
    }
    // Let the agent read them (per-connection events reach it within its 100 ms tick).
    std::thread::sleep(Duration::from_millis(500));
    for kind in ["bind", "listen", "connect", "accept"] {
        let stray: Vec<Value> = agent.events(kind).into_iter().filter(|e| outside.iter().any(|o| e["path"] == o.as_str())).collect();
        assert!(stray.is_empty(), "traced outside the patterns: {stray:?}");
        assert_eq!(agent.events(kind).len(), cases.len(), "{kind}: {:?}", agent.events(kind));
    }
    let ready = &agent.events("ready")[0];
    assert!(ready["message"].as_str().unwrap().contains("3 pattern(s)"), "{ready}");
    let stats = agent.stats();
    assert_eq!(stats["patterns"], serde_json::json!([prefix, glob, abstract_prefix]), "{stats}");
    // `status` shows the patterns too.
    let out = run_ok({
        let mut cmd = Command::new(tssx_tests::agent_bin());
        cmd.args(["status", "--state-dir"]).arg(dir.join("state"));
        cmd
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&format!("watching: {prefix}, {glob}, {abstract_prefix}\n")), "{text}");
    assert!(agent.stop().success());
}

/// A prefork server on a glob: the children fork right after the bind, before the agent has
/// matched it (the kernel records the listener undecided, the children inherit it); every
/// child's accept is traced under the glob, with no wait for the agent before the clients come.
#[test]
fn a_prefork_server_on_a_glob_has_every_accept_traced() {
    require_root();
    let dir = TempDir::new("watch-prefork");
    let glob = dir.socket("pool-*.sock");
    let path = dir.socket("pool-1.sock");
    let agent = Agent::start_with(&[&glob], &dir.join("state"), &["--syscall-tracepoints"]);
    const CHILDREN: usize = 3;
    const CONNECTIONS: usize = 6;
    let server = tssx_tests::Server::start(SERVER, &path, CONNECTIONS, CHILDREN);
    let parent = server.pid as i64;
    let mut cmd = Command::new(CLIENT);
    cmd.args([path.as_str(), &CONNECTIONS.to_string()]);
    let out = String::from_utf8(run_ok(cmd).stdout).unwrap();
    let accepts = server.finish();
    assert_eq!(accepts.len(), CONNECTIONS);
    let traced = || -> Vec<Value> { agent.events("accept").into_iter().filter(|e| e["pattern"] == glob.as_str()).collect() };
    tssx_tests::poll_until(WAIT, || traced().len() >= CONNECTIONS);
    let accepted = traced();
    assert_eq!(accepted.len(), CONNECTIONS, "{:?}", agent.events("accept"));
    let acceptors: std::collections::HashSet<i64> = accepted.iter().map(|e| e["pid"].as_i64().unwrap()).collect();
    assert!(!acceptors.contains(&parent) && acceptors.len() == CHILDREN, "{accepted:?}");
    let connects = agent.wait_for("connect", &path, CONNECTIONS, WAIT);
    assert_eq!(connects.len(), lines_of(&out, "connect").len(), "{connects:?}");
    assert!(agent.stop().success());
}

/// A relative address in bind and in connect is matched on the absolute path it names in the
/// caller's working directory; the same relative name elsewhere is not watched.
#[test]
fn relative_binds_and_connects_match_the_absolute_path() {
    require_root();
    let dir = TempDir::new("watch-relative");
    let watched = dir.join("srv");
    std::fs::create_dir_all(watched.join("sub")).unwrap();
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    let prefix = format!("{}/", watched.to_str().unwrap());
    let exact = dir.socket("srv/exact.sock");
    let agent = Agent::start_with(&[&prefix, &exact], &dir.join("state"), &["--syscall-tracepoints"]);
    // Bound relative in the watched directory, connected relative from a subdirectory.
    let path = dir.socket("srv/app.sock");
    let (client, server) = connection_to(&watched, "app.sock", &watched.join("sub"), "../app.sock", Some((&agent, &path)));
    assert_traced(&agent, &path, &prefix, client, server, Some(("app.sock", "../app.sock")));
    // Bound absolute, connected with `./` after a chdir: the exact pattern, the most specific.
    let server = server_in(dir.path(), &exact);
    let line = client_in(&watched, "./exact.sock");
    server.finish(WAIT);
    let connects = agent.wait_for("connect", &exact, 1, WAIT);
    assert_eq!(connects.len(), 1, "{:?}", agent.events("connect"));
    assert_eq!((connects[0]["pid"].as_i64(), connects[0]["fd"].as_i64()), (field(&line, "pid"), field(&line, "fd")));
    assert_eq!((connects[0]["pattern"].as_str(), connects[0]["as_written"].as_str()), (Some(exact.as_str()), Some("./exact.sock")));
    // The same relative name in an unwatched directory: nothing.
    connection(&dir.join("elsewhere"), &dir.join("elsewhere"), "app.sock", None);
    std::thread::sleep(Duration::from_millis(500));
    let elsewhere = dir.socket("elsewhere/app.sock");
    for kind in ["bind", "connect", "accept"] {
        assert!(lines_on(&agent, kind, &elsewhere).is_empty(), "{:?}", agent.events(kind));
    }
    assert_eq!(agent.events("connect").len(), 2, "{:?}", agent.events("connect"));
    assert_eq!(agent.events("bind").len(), 2, "{:?}", agent.events("bind"));
    assert!(agent.stop().success());
}

/// `tssx-test-stream ROLE ADDRESS BYTES 7` under the hook, in `cwd`.
fn stream(role: &str, cwd: &Path, address: &str, bytes: u64) -> Process {
    let mut cmd = Command::new(STREAM);
    cmd.current_dir(cwd).args([role, address, &bytes.to_string(), "7"]).env("LD_PRELOAD", hook());
    Process::spawn(cmd)
}

/// Runs one stream pair (server bound from `server_cwd` to `bind`, client connected from
/// `client_cwd` to `connect`); asserts both ends checked every byte.
fn stream_pair(server_cwd: &Path, bind: &str, client_cwd: &Path, connect: &str, socket: &Path, bytes: u64) {
    let server = stream("server", server_cwd, bind, bytes);
    server.expect_line("ready", WAIT);
    tssx_tests::wait_until(WAIT, "the server's socket", || socket.exists());
    let client = stream("client", client_cwd, connect, bytes);
    for end in [client, server] {
        let lines = end.finish(Duration::from_secs(60));
        assert!(lines.contains(&format!("ok sent={bytes} received={bytes}")), "{lines:?}");
    }
}

/// The `claim refused` lines.
fn refused(agent: &Agent) -> Vec<Value> {
    agent.events("claim").into_iter().filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with("claim refused"))).collect()
}

/// The `paired` lines on `path` (each: both hooks claimed, the agent checked both claims
/// against the patterns, and handed out one segment).
fn paired_on(agent: &Agent, path: &str, count: usize) -> Vec<Value> {
    agent.wait_for("paired", path, count, WAIT)
}

/// Through the hook: a connection on a directory prefix, bound and connected with relative
/// addresses, is claimed by both ends (the hook resolves with `getcwd`), paired by the agent
/// (which checks the relative names against the socket file) and swapped onto the rings; one
/// matched by a glob too.
#[test]
fn connections_under_a_prefix_and_a_glob_swap_with_relative_addresses() {
    require_root();
    let dir = TempDir::new("watch-swap");
    let root = dir.join("run");
    std::fs::create_dir_all(root.join("app/deeper")).unwrap();
    std::fs::create_dir_all(root.join("php")).unwrap();
    let prefix = format!("{}/", root.join("app").to_str().unwrap());
    let glob = format!("{}/*.sock", root.join("php").to_str().unwrap());
    let agent = HookedAgent::start(&[&prefix, &glob]);
    const BYTES: u64 = 64 << 20;
    let app = root.join("app/deeper/app.sock");
    stream_pair(&root.join("app/deeper"), "app.sock", &root.join("app"), "deeper/app.sock", &app, BYTES);
    let app = app.to_str().unwrap();
    let paired = paired_on(&agent, app, 1);
    assert_eq!(paired.len(), 1, "not paired: {:?}; refused: {:?}", agent.events("not"), refused(&agent));
    assert_eq!(paired[0]["pattern"], prefix.as_str(), "{paired:?}");
    let www = root.join("php/www.sock");
    stream_pair(dir.path(), www.to_str().unwrap(), dir.path(), www.to_str().unwrap(), &www, BYTES);
    let www = www.to_str().unwrap();
    let paired = paired_on(&agent, www, 1);
    assert_eq!(paired.len(), 1, "not paired: {:?}; refused: {:?}", agent.events("not"), refused(&agent));
    assert_eq!(paired[0]["pattern"], glob.as_str(), "{paired:?}");
    let closed = agent.await_events("closed", www, 1, WAIT);
    let swapped: Vec<Value> = [app, www].iter().flat_map(|p| agent.events_on("swapped", p)).collect();
    eprintln!("swapped: {swapped:?}; closed: {closed:?}");
    assert!(!swapped.is_empty(), "neither connection moved onto the rings: {:?}", agent.events("not"));
    assert!(refused(&agent).is_empty(), "claims refused: {:?}", refused(&agent));
    assert!(agent.stop().success());
}

/// A test suite's way: every test makes a fresh temporary directory under the watched prefix
/// and its socket in it; every connection is claimed and paired, none refused.
#[test]
fn every_fresh_temporary_directory_under_the_prefix_is_watched() {
    require_root();
    let dir = TempDir::new("watch-suite");
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let prefix = format!("{}/", tmp.to_str().unwrap());
    let agent = HookedAgent::start(&[&prefix]);
    const TESTS: usize = 5;
    const BYTES: u64 = 16 << 20;
    let started = Instant::now();
    let mut sockets = Vec::new();
    for test in 0..TESTS {
        let fresh = tmp.join(format!("test-{test}-{}", std::process::id()));
        std::fs::create_dir(&fresh).unwrap();
        let socket = fresh.join("s.sock");
        let path = socket.to_str().unwrap().to_owned();
        stream_pair(&fresh, &path, &fresh, &path, &socket, BYTES);
        std::fs::remove_dir_all(&fresh).unwrap();
        sockets.push(path);
    }
    for path in &sockets {
        let paired = paired_on(&agent, path, 1);
        assert_eq!(paired.len(), 1, "{path} not paired: {:?}; refused: {:?}", agent.events("not"), refused(&agent));
        assert_eq!(paired[0]["pattern"], prefix.as_str());
    }
    assert!(refused(&agent).is_empty(), "claims refused: {:?}", refused(&agent));
    eprintln!("{TESTS} tests in {:?}; swapped: {}", started.elapsed(), agent.events("swapped").len());
    // A sibling of the prefix (same leading bytes, another directory) stays plain: no claim.
    let claims = agent.stats()["claims"].as_u64().unwrap();
    assert_eq!(claims, 2 * TESTS as u64, "{}", agent.stats());
    let outside = dir.join("tmp-not-watched");
    std::fs::create_dir_all(&outside).unwrap();
    let socket = outside.join("s.sock");
    let path = socket.to_str().unwrap().to_owned();
    stream_pair(&outside, &path, &outside, &path, &socket, BYTES);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.stats()["claims"].as_u64(), Some(claims), "a socket outside the prefix was claimed");
    assert!(agent.events_on("connect", &path).is_empty() && agent.events_on("paired", &path).is_empty());
    assert!(agent.stop().success());
}
