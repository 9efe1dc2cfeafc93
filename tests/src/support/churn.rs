//! Many short connections one after the other through `tssx-test-churn`: the measure behind
//! "plain at once" (a connection that must not wait for the agent).

use std::{process::Command, time::Duration};

use super::{
    env::{hook, target_dir},
    process::Process,
    text::field,
};

/// Connections [`assert_connections_do_not_wait`] opens, one after the other.
pub const NO_WAIT_CONNECTIONS: u64 = 20;
/// The average time one of them may take: 100 ms, a fifth of the shortest wait the agent can
/// impose on a connection (0.5 s, a hooked server waiting for its client's claim; a pending
/// client waits 2 s for a server that never claims). One such connection takes about a
/// millisecond, so this holds on a loaded 2-core machine, while a wait on every connection
/// cannot hide in it.
pub const NO_WAIT_AVERAGE: Duration = Duration::from_millis(100);

/// What one [`churn`] run measured (from the client's `done` line).
#[derive(Debug)]
pub struct Churn {
    /// From the client's first connect to its last close.
    pub elapsed: Duration,
    /// The longest single connection (connect, 64 B each way, close).
    pub slowest: Duration,
}

/// Runs `tssx-test-churn` server and client on `path` (each under the hook if asked): `n`
/// connections one after the other, 64 bytes echoed on each. Panics unless both ends report
/// every connection done and end with the descriptors they started with and no memfd mapped.
pub fn churn(path: &str, n: u64, server_hook: bool, client_hook: bool) -> Churn {
    let bin = target_dir().join("tssx-test-churn");
    let end = |args: &[&str], hooked: bool| {
        let mut cmd = Command::new(&bin);
        cmd.args(args);
        if hooked {
            cmd.env("LD_PRELOAD", hook());
        } else {
            cmd.env_remove("LD_PRELOAD");
        }
        Process::spawn(cmd)
    };
    let count = n.to_string();
    let server = end(&["server", path, &count], server_hook);
    server.expect_line("ready", Duration::from_secs(10));
    let client = end(&["client", path, &count, "0"], client_hook);
    let timeout = Duration::from_secs(10) + n as u32 * Duration::from_secs(3);
    let client_done = client.expect_line("done", timeout);
    let server_done = server.expect_line("done", Duration::from_secs(10));
    client.finish(Duration::from_secs(10));
    server.finish(Duration::from_secs(10));
    for (who, done) in [("client", &client_done), ("server", &server_done)] {
        let f = |key| field(done, key).unwrap_or_else(|| panic!("{key} in {done}"));
        assert_eq!(f("ok"), n as i64, "{who}: {done}");
        assert_eq!((f("fds_after"), f("memfd_maps")), (f("fds_before"), 0), "{who} leaked: {done}");
    }
    let us = |key| Duration::from_micros(field(&client_done, key).unwrap_or_else(|| panic!("{key} in {client_done}")) as u64);
    Churn { elapsed: us("elapsed_us"), slowest: us("slowest_us") }
}

/// [`NO_WAIT_CONNECTIONS`] connections on `path` through [`churn`] must take under
/// [`NO_WAIT_AVERAGE`] each on average: none waited for the agent. `why` names the situation
/// for the failure message (e.g. "no agent").
pub fn assert_connections_do_not_wait(path: &str, server_hook: bool, client_hook: bool, why: &str) -> Churn {
    let run = churn(path, NO_WAIT_CONNECTIONS, server_hook, client_hook);
    let budget = NO_WAIT_AVERAGE * NO_WAIT_CONNECTIONS as u32;
    eprintln!("{why}: {NO_WAIT_CONNECTIONS} connections in {:?} (slowest {:?}; budget {budget:?})", run.elapsed, run.slowest);
    assert!(
        run.elapsed < budget,
        "{why}: {NO_WAIT_CONNECTIONS} connections (hooks: server {server_hook}, client {client_hook}) took {:?} (slowest {:?}), \
         more than {NO_WAIT_AVERAGE:?} each: they waited for something",
        run.elapsed,
        run.slowest
    );
    run
}
