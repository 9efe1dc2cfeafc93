//! Language runtimes' event loops (Node.js, Python's asyncio, tokio) and Python's multiprocessing.

use super::*;

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
