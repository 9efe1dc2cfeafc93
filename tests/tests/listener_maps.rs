//! End-to-end: the kernel side's record of watched listeners follows a listener's `close` while
//! its process lives on. Alone in its test binary: a process that forks while it holds a
//! watched listener gives each child a copy of the record (the agent's inheritance, until the
//! child exits), and other tests' spawned processes would add theirs to the counts.

use std::{os::unix::net::UnixListener, time::Duration};

use tssx_tests::{require_root, wait_until, Agent, TempDir};

/// How long the agent may take to publish its map sizes (its 1 s sweep) on a loaded machine.
const PUBLISHED: Duration = Duration::from_secs(10);

/// The kernel side remembers each watched listener (`LISTENERS`) and its process (`OWNERS`), and
/// forgets them when the listener is closed, while the process lives on: the `close` program
/// first tests a per-process flag (an array, for process ids within it) or, beyond the array,
/// looks the process up. Both ways (one slot: this process is beyond it); twice each (the flag
/// stays set after the first close).
#[test]
fn a_closed_listener_leaves_the_maps_while_its_process_lives() {
    require_root();
    for args in [&["--syscall-tracepoints"][..], &["--syscall-tracepoints", "--parked-slots", "1"]] {
        let dir = TempDir::new("listener-maps");
        let path = dir.socket("app.sock");
        let state = dir.join("state");
        let agent = Agent::start_with(&[&path], &state, args);
        let entries = |map: &str| agent.stats()["bpf_map_entries"][map].as_u64();
        wait_until(PUBLISHED, "the map sizes published", || entries("LISTENERS") == Some(0));
        for round in 0..2 {
            let listener = UnixListener::bind(&path).unwrap();
            wait_until(PUBLISHED, "the listener recorded", || entries("LISTENERS") == Some(1) && entries("OWNERS") == Some(1));
            drop(listener);
            std::fs::remove_file(&path).unwrap();
            wait_until(PUBLISHED, "the listener forgotten", || entries("LISTENERS") == Some(0) && entries("OWNERS") == Some(0));
            eprintln!("{args:?} round {round}: forgotten");
        }
        assert!(agent.stop().success());
    }
}
