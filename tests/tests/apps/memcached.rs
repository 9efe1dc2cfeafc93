//! memcached on a Unix socket, with the test's own client.

use super::*;

/// The test's own memcached client.
const MEMCACHE: &str = env!("CARGO_BIN_EXE_tssx-test-memcache");

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
