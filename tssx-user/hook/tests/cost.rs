//! The hook's own cost on the swapped fast path, without wake-ups: one process, a swapped
//! pair, 64-byte write + read through the hook's entry points, alternately on both ends.
//! `cargo test --release -p tssx-hook --test cost -- --ignored --nocapture` (a measurement,
//! not a check: ignored by default; the README's benchmark section quotes it). Also prints the
//! cost of one `table::lookup` of a tracked fd (a lease).
use std::time::Instant;

use libc::c_int;
use tssx_hook::{calls, table};

mod support;

fn swapped_pair() -> (c_int, c_int) {
    let fds = support::socketpair(0);
    support::install_swapped(fds, 1 << 20);
    (fds[0], fds[1])
}

#[test]
#[ignore]
fn fast_path_cost() {
    let (a, b) = swapped_pair();
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    let n = 2_000_000u64;
    let mut best = f64::MAX;
    for _round in 0..7 {
        let start = Instant::now();
        for _ in 0..n {
            // SAFETY: live buffers.
            unsafe {
                assert_eq!(calls::write(a, msg.as_ptr().cast(), 64), 64);
                assert_eq!(calls::read(b, buf.as_mut_ptr().cast(), 64), 64);
            }
        }
        let ns = start.elapsed().as_secs_f64() * 1e9 / (2 * n) as f64;
        best = best.min(ns);
    }
    println!("COST ns per call (best of 7): {best:.2}");
    // Larger transfers: the copies dominate (a 4 KiB and a 64 KiB write + read).
    for size in [4096usize, 65536] {
        let msg = vec![7u8; size];
        let mut buf = vec![0u8; size];
        let n = (200_000_000 / size) as u64;
        let mut best = f64::MAX;
        for _round in 0..7 {
            let start = Instant::now();
            for _ in 0..n {
                // SAFETY: live buffers.
                unsafe {
                    assert_eq!(calls::write(a, msg.as_ptr().cast(), size), size as isize);
                    assert_eq!(calls::read(b, buf.as_mut_ptr().cast(), size), size as isize);
                }
            }
            best = best.min(start.elapsed().as_secs_f64() * 1e9 / n as f64);
        }
        println!("COST {size} B write + read ns (best of 7): {best:.1} ({:.2} GB/s)", size as f64 / best);
    }
    let mut best = f64::MAX;
    for _round in 0..7 {
        let start = Instant::now();
        let mut k = 0u64;
        for _ in 0..n {
            if let Some(c) = table::lookup(std::hint::black_box(a)) {
                k += u64::from(c.phase() == tssx_hook::conn::Phase::Active);
            }
        }
        std::hint::black_box(k);
        best = best.min(start.elapsed().as_secs_f64() * 1e9 / n as f64);
    }
    println!("LOOKUP ns (best of 7): {best:.2}");
}
