//! Many swapped connections held at once and a connection storm on top, scaled down from
//! `cargo xtask scale` (10,000 connections) to what a CI run affords: every held connection
//! swapped, no storm connection and no echo slower than the stall limit (a hook waiting on a busy
//! agent), the agent answering `status --stats` throughout, no kernel event lost, every segment
//! freed and the agent's descriptors back at the end.

use tssx_tests::{require_root, scale, target_dir};

#[test]
fn hundreds_held_and_a_storm_are_served_without_a_stall() {
    require_root();
    let run = scale::Scale { connections: 600, ring_size: 16 << 10, storm_seconds: 3, storm_threads: 4 };
    if let Err(e) = scale::run(&target_dir(), &run) {
        panic!("{e:#}");
    }
}
