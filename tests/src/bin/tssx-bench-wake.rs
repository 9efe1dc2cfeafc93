//! `tssx-bench-wake`: the cost of the sleeping half of a wait, doorbell vs futex.
//!
//! When a swapped end has spun without finding work it sleeps, and the peer wakes it. tssx
//! wakes it with a *doorbell*: one byte on the real socket, which the sleeper waits for in
//! `recv`/`poll`/`epoll`. The alternative is a *futex* on a word in the shared segment. This
//! bench measures the wake-up itself, with no spinning: two processes ping-pong a turn
//! `ROUNDS` times, each sleeping until the other hands the turn over, (a) with a byte over a
//! Unix socket pair, (b) with a futex on shared memory. It prints the mean round trip (two
//! wake-ups) of each and their ratio, from one run.
//!
//! Usage: `tssx-bench-wake [ROUNDS]` (default 20000).

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    sync::atomic::{
        AtomicU32,
        Ordering::{Acquire, Release},
    },
    time::Instant,
};

/// Blocks while `*word == expected` (FUTEX_WAIT on a shared mapping).
fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: a valid, aligned u32 in a MAP_SHARED mapping; no timeout.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, std::ptr::null::<libc::timespec>()) };
}

/// Wakes the waiter on `word`.
fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above; wakes at most one waiter.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

/// Mean round trip in seconds of `rounds` socket-byte ping-pongs between two processes.
fn doorbell(rounds: u32) -> f64 {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    // SAFETY: fork in a single-threaded program; the child only uses its socket and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    let mut byte = [0u8; 1];
    if pid == 0 {
        for _ in 0..rounds {
            b.read_exact(&mut byte).expect("child read");
            b.write_all(&byte).expect("child write");
        }
        // SAFETY: leaves the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    let start = Instant::now();
    for _ in 0..rounds {
        a.write_all(&byte).expect("write");
        a.read_exact(&mut byte).expect("read");
    }
    let elapsed = start.elapsed().as_secs_f64();
    // SAFETY: reaps our child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    elapsed / f64::from(rounds)
}

/// Mean round trip in seconds of `rounds` futex ping-pongs between two processes: the turn
/// word counts hand-overs; even = parent's turn, odd = child's.
fn futex(rounds: u32) -> f64 {
    // SAFETY: a fresh shared anonymous mapping of one page, zeroed by the kernel.
    let page = unsafe {
        libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
    };
    assert!(page != libc::MAP_FAILED, "mmap");
    // SAFETY: the page is mapped for the life of both processes and holds a zeroed u32.
    let turn = unsafe { &*page.cast::<AtomicU32>() };
    // SAFETY: as in `doorbell`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    let (mine, count) = if pid == 0 { (1, rounds) } else { (0, rounds) };
    let start = Instant::now();
    for i in 0..count {
        let my_turn = 2 * i + mine;
        // Acquire: sees the other side's hand-over (Release) before acting.
        loop {
            let now = turn.load(Acquire);
            if now == my_turn {
                break;
            }
            futex_wait(turn, now);
        }
        // Release: publishes the turn; then wake the other side.
        turn.store(my_turn + 1, Release);
        futex_wake(turn);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if pid == 0 {
        // SAFETY: as in `doorbell`.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: reaps our child; then unmaps our page.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::munmap(page, 4096);
    }
    elapsed / f64::from(rounds)
}

fn main() {
    let rounds = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(20_000u32);
    let bell = doorbell(rounds);
    let fut = futex(rounds);
    println!("wake-up round trip (two sleeps, no spinning), {rounds} rounds, one run:");
    println!("  doorbell (1 byte on a Unix socket): {:8.2} us", bell * 1e6);
    println!("  futex on shared memory:             {:8.2} us", fut * 1e6);
    println!("  futex / doorbell:                   {:8.2}x", fut / bell);
}
