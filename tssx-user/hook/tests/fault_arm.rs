//! Arming the fault handler from many threads at once: every thread returns from
//! `fault::arm` with SIGSEGV and SIGBUS already the hook's, so that its next copy from a bad
//! buffer is an EFAULT, never the application's disposition. Arming happens once per process,
//! so each round is a fresh process of this test binary running `one_round`.

use std::{
    process::Command,
    sync::{Arc, Barrier},
    thread,
};

use tssx_hook::fault;

/// Threads that arm at once, released together by a barrier.
const THREADS: usize = 8;
/// Fresh processes, each one race.
const ROUNDS: usize = 20;

#[test]
fn every_thread_returns_from_arm_with_the_handlers_in_place() {
    let exe = std::env::current_exe().expect("this test binary");
    for round in 0..ROUNDS {
        let out = Command::new(&exe)
            .args(["--ignored", "--exact", "one_round", "--test-threads", "1", "--nocapture"])
            .output()
            .expect("run one round");
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "round {round}:\n{said}");
        assert!(said.contains("1 passed"), "round {round} ran no race:\n{said}");
    }
}

#[test]
#[ignore = "one race in a process of its own: run by every_thread_returns_from_arm_with_the_handlers_in_place"]
fn one_round() {
    assert!(!fault::is_armed(), "a fresh process starts unarmed");
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                fault::arm();
                (fault::is_armed(), fault::armed())
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().expect("thread"), (true, true), "thread {i}: back from arm, armed (flag, SIGSEGV and SIGBUS owned)");
    }
}
