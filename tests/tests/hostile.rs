//! A hostile peer can do no more harm through the shared segment than through a plain socket
//! (issue 16).
//!
//! The fuzzer (`tssx-test-hostile`): an attacker client, a legitimate hooked end of a swapped
//! connection, maps the connection's segment and writes random and adversarial values into
//! every header field and ring byte at random moments for a while, then exits (four ways),
//! while a hooked victim server runs an ordinary workload on its end (blocking and
//! non-blocking reads and writes, poll and epoll waits, shutdown, fork, exec, a descriptor passed,
//! which hands the connection back). The victim must never crash, never deliver more than a
//! read asked for nor write past its buffer, never leak a descriptor, and see the end of each
//! hostile connection within a bounded time after the attacker is gone, as a plain socket
//! would; then it still serves a polite client correctly.
//!
//! Seeded and replayable: `TSSX_HOSTILE_SEED` fixes the seed (printed by every run),
//! `TSSX_HOSTILE_ROUNDS` the number of attackers (`cargo xtask soak --hostile N`).

use std::{os::unix::process::ExitStatusExt as _, process::Command, time::Duration};

use tssx_tests::{hook, monotonic_ns, require_root, wait_until, HookedAgent, Process, TempDir};

const HOSTILE: &str = env!("CARGO_BIN_EXE_tssx-test-hostile");
/// uid/gid of `nobody`.
const NOBODY: u32 = 65534;
/// How long each attacker scribbles.
const ATTACK_MS: u64 = 1200;
/// After the attacker is gone, the victim must have finished with its connection within this
/// (a plain socket gives EOF or ECONNRESET at once; the margin is for a loaded machine).
const END_WITHIN: Duration = Duration::from_secs(3);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The fuzzer attacked enough: some connections stay plain by design (a victim end that a
/// fork left in two processes is never swapped, an exec before the migration gives it up) or by
/// timing; about half to three quarters are swapped. At least one in a short run, a third in a
/// long one.
fn assert_attacked(mapped: u64, rounds: u64) {
    let needed = if rounds >= 10 { rounds / 3 } else { 1 };
    assert!(mapped >= needed, "only {mapped} of {rounds} connections were swapped: the fuzzer attacked too little");
}

/// Runs `rounds` attackers (the `as_nobody` ones under uid 65534) against one victim server.
fn fuzz(name: &str, as_nobody: bool, default_rounds: u64) {
    require_root();
    let seed = env_u64("TSSX_HOSTILE_SEED").unwrap_or_else(|| monotonic_ns() | 1);
    let rounds = env_u64("TSSX_HOSTILE_ROUNDS").unwrap_or(default_rounds);
    eprintln!("{name}: seed {seed}, {rounds} rounds (replay: TSSX_HOSTILE_SEED={seed} TSSX_HOSTILE_ROUNDS={rounds})");
    let dir = TempDir::new(name);
    if as_nobody {
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let path = dir.socket("victim.sock");
    let agent = HookedAgent::start(&[&path]);
    let mut victim = Command::new(HOSTILE);
    victim.args(["victim", &path, &seed.to_string(), &rounds.to_string()]).env("LD_PRELOAD", hook());
    // In a group of its own: a victim child that hangs is killed with it when the test fails.
    let mut victim = Process::spawn_group(victim);
    let ready = victim.expect_line("ready", Duration::from_secs(10));
    wait_until(Duration::from_secs(10), "the socket", || std::path::Path::new(&path).exists());
    let mut mapped = 0;
    let mut baseline_fds = None;
    for round in 0..rounds {
        let attack_seed = seed.wrapping_add(round.wrapping_mul(0x9E37_79B9)).to_string();
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            let nobody = NOBODY.to_string();
            c.args(["--reuid", &nobody, "--regid", &nobody, "--clear-groups", HOSTILE]);
            c
        } else {
            Command::new(HOSTILE)
        };
        cmd.args(["attack", &path, &attack_seed, &ATTACK_MS.to_string()]).env("LD_PRELOAD", hook());
        let mut attacker = Process::spawn(cmd);
        // The watchdog ends it 2 s after its attack at the latest.
        let status = attacker.wait(Duration::from_millis(ATTACK_MS + 3000 + 5000));
        let gone_at = monotonic_ns();
        let lines = attacker.stdout_lines();
        eprintln!("round {round} (seed {attack_seed}): attacker {status:?}: {lines:?}");
        let Some(status) = status else {
            panic!("round {round}: the attacker outlived its watchdog; stderr: {}", attacker.stderr_text());
        };
        // It exits 0 or kills itself (SIGKILL); anything else is a broken attacker, which proves
        // nothing about the victim.
        assert!(
            status.success() || status.signal() == Some(libc::SIGKILL),
            "round {round}: the attacker failed: {status}; stderr: {}",
            attacker.stderr_text()
        );
        if lines.iter().any(|l| l.starts_with("mapped")) {
            mapped += 1;
        }
        let end = victim.next_line(END_WITHIN).unwrap_or_else(|| {
            panic!(
                "round {round} (TSSX_HOSTILE_SEED={seed}): the victim did not finish its connection within {END_WITHIN:?} after \
                 the attacker was gone; victim stdout {:?}, stderr {}",
                victim.stdout_lines(),
                victim.stderr_text()
            )
        });
        eprintln!("round {round}: victim: {end} ({:?} after the attacker)", Duration::from_nanos(monotonic_ns() - gone_at));
        assert!(end.starts_with(&format!("end conn={round} ")), "round {round}: {end}");
        let fds = tssx_tests::field(&end, "fds").expect("fds");
        // The first connection may leave the hook's lasting descriptors behind; none may grow
        // after that.
        match baseline_fds {
            None => baseline_fds = Some(fds),
            Some(b) => assert!(fds <= b, "round {round}: the victim holds {fds} descriptors, {b} after the first connection"),
        }
        victim.assert_running();
    }
    let mut polite = Command::new(HOSTILE);
    polite.args(["polite", &path]).env("LD_PRELOAD", hook());
    let out = Process::spawn(polite).finish(Duration::from_secs(20));
    assert!(out.iter().any(|l| l == "polite ok"), "{out:?}");
    let end = victim.expect_line("end", END_WITHIN);
    assert!(end.contains("result=eof"), "{end}");
    victim.assert_running();
    let violations: Vec<String> = victim.stdout_lines().into_iter().filter(|l| l.starts_with("violation")).collect();
    assert!(violations.is_empty(), "{violations:?}");
    eprintln!("{name}: {mapped} of {rounds} attackers mapped their segment; victim {ready}");
    assert_attacked(mapped, rounds);
    victim.kill9();
    assert!(agent.stop().success());
}

/// A root victim and root attackers.
#[test]
fn hostile_peer_through_the_segment() {
    fuzz("hostile-root", false, 6);
}

/// A root victim and attackers running as `nobody` (uid 65534): the segment is theirs to write
/// as the design allows (the agent hands it to both ends), and still harmless to the victim.
#[test]
fn hostile_unprivileged_peer_against_a_root_server() {
    fuzz("hostile-nobody", true, 4);
}

/// The other direction: hostile servers (root) against a hooked victim client each, which runs
/// the same workload on its connecting end and must end within the bound after its server is
/// gone, with its descriptors back where they were.
#[test]
fn hostile_server_against_a_victim_client() {
    require_root();
    let seed = env_u64("TSSX_HOSTILE_SEED").unwrap_or_else(|| monotonic_ns() | 1);
    let rounds = env_u64("TSSX_HOSTILE_ROUNDS").unwrap_or(4);
    eprintln!("hostile-server: seed {seed}, {rounds} rounds (replay: TSSX_HOSTILE_SEED={seed} TSSX_HOSTILE_ROUNDS={rounds})");
    let dir = TempDir::new("hostile-server");
    let path = dir.socket("attacker.sock");
    let agent = HookedAgent::start(&[&path]);
    let mut mapped = 0;
    for round in 0..rounds {
        let round_seed = seed.wrapping_add(round.wrapping_mul(0x9E37_79B9)).to_string();
        let mut cmd = Command::new(HOSTILE);
        cmd.args(["attack-server", &path, &round_seed, &ATTACK_MS.to_string()]).env("LD_PRELOAD", hook());
        let mut attacker = Process::spawn(cmd);
        attacker.expect_line("ready", Duration::from_secs(10));
        let mut cmd = Command::new(HOSTILE);
        cmd.args(["victim-client", &path, &round_seed]).env("LD_PRELOAD", hook());
        let mut victim = Process::spawn_group(cmd);
        let status = attacker.wait(Duration::from_millis(ATTACK_MS + 3000 + 5000));
        let lines = attacker.stdout_lines();
        eprintln!("round {round} (seed {round_seed}): attacker {status:?}: {lines:?}");
        let status = status.unwrap_or_else(|| panic!("round {round}: the attacker outlived its watchdog"));
        assert!(status.success() || status.signal() == Some(libc::SIGKILL), "round {round}: the attacker failed: {status}");
        if lines.iter().any(|l| l.starts_with("mapped")) {
            mapped += 1;
        }
        let end = victim.expect_line("end", END_WITHIN);
        eprintln!("round {round}: victim: {end}");
        let fds = tssx_tests::field(&end, "fds").expect("fds");
        let before = tssx_tests::field(&end, "before").expect("before");
        assert!(fds <= before, "round {round}: the victim client holds {fds} descriptors after its connection, {before} before");
        let status = victim.wait(Duration::from_secs(5)).expect("the victim exits after its connection");
        assert!(
            status.success(),
            "round {round}: the victim failed: {status}; {:?}; stderr {}",
            victim.stdout_lines(),
            victim.stderr_text()
        );
    }
    eprintln!("hostile-server: {mapped} of {rounds} attackers mapped their segment");
    assert_attacked(mapped, rounds);
    assert!(agent.stop().success());
}
