//! End-to-end: connections that start plain and move onto the rings in flight, with real
//! processes, the real agent and kernel.
//!
//! `tssx-test-migrate` exchanges a few MiB each way with random pieces and pauses, checking
//! every byte; the connection migrates at whatever moment the claims are answered. Each wait
//! style (blocking, non-blocking, poll, select, epoll level- and edge-triggered) must deliver
//! every byte once and in order, and the agent must trace the connection `swapped` with the
//! byte positions at which each direction switched. Killing either end, or the agent, at random
//! moments of the migration must never make the survivor hang or see a wrong byte.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tssx_tests::{hook, poll_until, require_root, wait_until, HookedAgent, Process, Rng, TempDir};

const MIGRATE: &str = env!("CARGO_BIN_EXE_tssx-test-migrate");
const MODES: [&str; 6] = ["blocking", "nonblock", "poll", "select", "epoll-lt", "epoll-et"];
/// How long one exchange may take before it counts as a hang.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);

fn migrate(role: &str, path: &str, seed: u64, mode: &str, bytes: u64, hooked: bool) -> Command {
    let mut cmd = Command::new(MIGRATE);
    cmd.args([role, path, &seed.to_string(), mode, &bytes.to_string()]).stdout(Stdio::piped()).stderr(Stdio::piped());
    if hooked {
        cmd.env("LD_PRELOAD", hook());
    }
    cmd
}

/// Starts a server and a client of one exchange.
fn start_pair(path: &str, seed: u64, mode: &str, bytes: u64, hooked: bool) -> (Process, Process) {
    let server = Process::spawn(migrate("server", path, seed, mode, bytes, hooked));
    server.expect_line("ready", Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "the socket file", || Path::new(path).exists());
    let client = Process::spawn(migrate("client", path, seed, mode, bytes, hooked));
    (server, client)
}

/// Runs one exchange to its end; both ends must report every byte. Returns the pids of the
/// client and the server.
fn exchange(path: &str, seed: u64, mode: &str, bytes: u64, hooked: bool) -> (u32, u32) {
    let (mut server, mut client) = start_pair(path, seed, mode, bytes, hooked);
    let statuses = [client.wait(EXCHANGE_TIMEOUT), server.wait(EXCHANGE_TIMEOUT)];
    let both = format!("client: {} / server: {}", client.stderr_text(), server.stderr_text());
    for ((who, end), status) in [("client", &client), ("server", &server)].into_iter().zip(statuses) {
        assert!(status.is_some_and(|s| s.success()), "{mode} seed {seed}: {who} failed or hung ({status:?}); {both}");
        // The exit can be seen before the reader thread took the last line (`ok ...`, printed
        // just before it): wait for the pipe's end first.
        end.wait_closed(Duration::from_secs(5));
        let lines = end.stdout_lines();
        let want = format!("ok sent={bytes} received={bytes}");
        assert!(lines.contains(&want), "{mode} seed {seed}: {who} printed {lines:?}");
    }
    (client.pid(), server.pid())
}

/// What the agent made of one exchange's connection.
enum Outcome {
    /// Traced `swapped`: this line.
    Swapped(Value),
    /// The exchange ended before its migration could begin (a loaded machine: the agent or
    /// an end slow to act): an end's claim came after its connection closed (`claim
    /// abandoned`), or an end gave the segment up because its stream ended first (`not
    /// swapped`: shutdown or close first).
    EndedFirst,
}

/// Waits for the agent's verdict on the exchange of `client` and `server` (pids); panics with
/// the agent's lines on them if it is neither of [`Outcome`]'s.
fn outcome(agent: &HookedAgent, client: u32, server: u32) -> Outcome {
    let label = |v: &Value, key: &str, pid: u32| v[key].as_str().is_some_and(|l| l.starts_with(&format!("{pid}/")));
    let ours = |v: &Value| {
        let pid = v["pid"].as_u64();
        pid == Some(client.into()) || pid == Some(server.into()) || label(v, "client", client) || label(v, "server", server)
    };
    let find = || {
        let trace = agent.trace();
        let swapped = trace.iter().find(|v| ours(v) && v["message"].as_str().is_some_and(|m| m.starts_with("swapped")));
        if let Some(line) = swapped {
            return Some(Outcome::Swapped(line.clone()));
        }
        let ended_first = |v: &&Value| {
            let message = v["message"].as_str().unwrap_or("");
            let reason = v["reason"].as_str().unwrap_or("");
            ours(v)
                && (message.starts_with("claim abandoned")
                    || (message == "not swapped"
                        && (reason.ends_with("shutdown first") || reason.ends_with("closed first") || reason.contains("closed before"))))
        };
        trace.iter().find(ended_first).map(|_| Outcome::EndedFirst)
    };
    let mut found = None;
    poll_until(Duration::from_secs(10), || {
        found = find();
        found.is_some()
    });
    found.unwrap_or_else(|| {
        let lines: Vec<String> = agent.trace().iter().filter(|v| ours(v)).map(|v| v.to_string()).collect();
        panic!(
            "client {client} / server {server}: neither swapped nor ended before its claims; the agent's lines on them:\n{}",
            lines.join("\n")
        )
    })
}

/// Every wait style migrates mid-stream without losing, duplicating or reordering a byte, and
/// each connection is traced `swapped` with its switch positions. An exchange that ended
/// before its migration could begin ([`Outcome::EndedFirst`]: a stall of a loaded machine
/// longer than the exchange) is run again with another seed, twice at most; any other
/// outcome fails.
#[test]
fn every_wait_style_migrates_mid_stream_and_keeps_every_byte() {
    require_root();
    let dir = TempDir::new("migrate-modes");
    let path = dir.socket("m.sock");
    let agent = HookedAgent::start_with(&[&path], &["--claim-after", "0"]);
    let bytes = 3 << 20;
    let mut swapped = Vec::new();
    for (i, mode) in MODES.iter().enumerate() {
        for seed in [1u64, 2] {
            let mut attempt = 0;
            let line = loop {
                let seed = seed * 100 + i as u64 + attempt * 1000;
                let (client, server) = exchange(&path, seed, mode, bytes, true);
                match outcome(&agent, client, server) {
                    Outcome::Swapped(line) => break line,
                    Outcome::EndedFirst if attempt < 2 => {
                        eprintln!("{mode} seed {seed}: the exchange ended before its migration could begin; once more");
                        attempt += 1;
                    }
                    Outcome::EndedFirst => panic!("{mode}: three exchanges in a row ended before their migration could begin"),
                }
            };
            swapped.push(line);
        }
    }
    for line in &swapped {
        let (c2s, s2c) = (line["switched_client_to_server"].as_u64(), line["switched_server_to_client"].as_u64());
        assert!(c2s.is_some_and(|b| b <= bytes) && s2c.is_some_and(|b| b <= bytes), "switch positions within the stream: {line}");
    }
    let runs = swapped.len();
    let closed = agent.wait_for("closed", &path, runs, Duration::from_secs(10));
    let through_shm: u64 = closed.iter().map(|c| c["bytes_client_to_server"].as_u64().unwrap_or(0)).sum();
    let switched: u64 = swapped.iter().map(|c| c["switched_client_to_server"].as_u64().unwrap_or(0)).sum();
    assert_eq!(through_shm + switched, runs as u64 * bytes, "bytes before the switch on the socket, the rest on the ring");
}

/// With the default claim rule (a connection claims once it lived a millisecond), a
/// long-lived connection migrates too; and the same exchange without the hook behaves the same.
#[test]
fn the_default_claim_rule_migrates_long_lived_connections() {
    require_root();
    let dir = TempDir::new("migrate-default");
    let path = dir.socket("d.sock");
    let agent = HookedAgent::start(&[&path]);
    exchange(&path, 7, "epoll-lt", 4 << 20, false);
    exchange(&path, 7, "epoll-lt", 4 << 20, true);
    exchange(&path, 8, "blocking", 4 << 20, true);
    let swapped = agent.wait_for("swapped", &path, 2, Duration::from_secs(10));
    assert_eq!(swapped.len(), 2, "{swapped:?}");
    for line in &swapped {
        let after = line["migrated_after_us"].as_u64().expect("migrated_after_us");
        assert!(after >= 1000, "not before the claim rule's millisecond: {line}");
    }
}

/// Kills one end with SIGKILL at a random moment of the exchange (while migrating, or just
/// after). The survivor must end, within a few seconds, with EOF or a reset, never a wrong
/// byte and never a hang.
#[test]
fn killing_an_end_mid_migration_never_hangs_the_other() {
    require_root();
    let dir = TempDir::new("migrate-kill");
    let path = dir.socket("k.sock");
    let _agent = HookedAgent::start_with(&[&path], &["--claim-after", "0"]);
    let mut rng = Rng::new(0x5EED);
    for round in 0..12u64 {
        let mode = MODES[(round % MODES.len() as u64) as usize];
        let (mut server, mut client) = start_pair(&path, round, mode, 64 << 20, true);
        client.expect_line("connected", Duration::from_secs(10));
        let kill_server = rng.below(2) == 0;
        // Somewhere in the first milliseconds (claims, pairing, switch) or a little later.
        std::thread::sleep(Duration::from_micros(rng.below(6000)));
        let (victim, survivor) = if kill_server { (&mut server, &mut client) } else { (&mut client, &mut server) };
        victim.kill9();
        let started = Instant::now();
        let status = survivor.wait(Duration::from_secs(10));
        survivor.wait_closed(Duration::from_secs(2));
        let stderr = survivor.stderr_text();
        assert!(status.is_some(), "round {round} ({mode}): the survivor hung after its peer was killed: {stderr}");
        assert!(!stderr.contains("corrupt"), "round {round} ({mode}): {stderr}");
        if !status.is_some_and(|s| s.success()) {
            assert!(
                stderr.contains("EOF after")
                    || stderr.contains("reset")
                    || stderr.contains("Broken pipe")
                    || stderr.contains("broken pipe"),
                "round {round} ({mode}): the survivor failed for another reason: {status:?} {stderr}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(5), "round {round} ({mode}): survivor took {:?}", started.elapsed());
    }
}

/// Kills the agent at a random moment of an exchange's migration: the agent is never on the
/// data path, so both ends finish with every byte (migrated or not).
#[test]
fn killing_the_agent_mid_migration_loses_nothing() {
    require_root();
    let dir = TempDir::new("migrate-agent-kill");
    let path = dir.socket("a.sock");
    let mut rng = Rng::new(0xA6E7);
    for round in 0..6u64 {
        let agent = HookedAgent::start_with(&[&path], &["--claim-after", "0"]);
        let mode = MODES[(round % MODES.len() as u64) as usize];
        let bytes = 8 << 20;
        let (mut server, mut client) = start_pair(&path, 40 + round, mode, bytes, true);
        std::thread::sleep(Duration::from_micros(rng.below(4000)));
        agent.kill9();
        for (who, end) in [("client", &mut client), ("server", &mut server)] {
            let status = end.wait(EXCHANGE_TIMEOUT);
            assert!(status.is_some_and(|s| s.success()), "round {round} ({mode}): {who} failed or hung: {}", end.stderr_text());
            // (The exit can be seen before the reader thread took the last line: see `exchange`.)
            end.wait_closed(Duration::from_secs(5));
            let want = format!("ok sent={bytes} received={bytes}");
            assert!(end.stdout_lines().contains(&want), "round {round}: {who} printed {:?}", end.stdout_lines());
        }
    }
}
