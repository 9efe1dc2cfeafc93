//! Lifetimes of the fd table's connections under concurrency (issue 13, hook bug (b)): a call
//! in flight keeps its connection alive when another thread closes the fd. A test binary of
//! its own, its tests one at a time: they close fds under running calls, and a number reused
//! by a concurrent test would receive those calls' last system calls.

use std::sync::{atomic::Ordering, Mutex};

use libc::c_int;
use tssx_hook::{calls, table};

mod support;
use support::Pair;

/// One test at a time (see the module documentation).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn swapped_pair(ring: usize) -> Pair {
    let fds = support::socketpair(0);
    support::install_swapped(fds, ring);
    Pair { client: fds[0], server: fds[1] }
}

fn write(fd: c_int, bytes: &[u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

fn read(fd: c_int, buf: &mut [u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Issue 13, hook bug (b): a call in flight on one thread keeps its connection (and its
/// segment mapping) alive while another thread closes the fd. Here a read blocks on the
/// server end; the main thread closes the server's only fd, then the client: the reader wakes
/// at the client's close and returns EOF, as a plain read does. Before the connections were
/// leased, the close freed the connection and unmapped its segment under the reader, which
/// then crashed (SIGSEGV) or read freed memory when it woke.
#[test]
fn a_close_racing_a_blocked_read_frees_nothing_under_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut p = swapped_pair(4096);
    let server = p.server;
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        let n = read(server, &mut buf);
        (n, errno())
    });
    // The reader spins at most 100 us, then sleeps on the socket.
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: the server's only fd, closed while the reader is inside `read`.
    assert_eq!(unsafe { calls::close(server) }, 0);
    p.server = -1;
    std::thread::sleep(std::time::Duration::from_millis(50));
    // SAFETY: the client's only fd.
    assert_eq!(unsafe { calls::close(p.client) }, 0);
    p.client = -1;
    let (n, e) = reader.join().expect("the reader survives");
    assert_eq!(n, 0, "EOF (errno {e})");
}

/// Many threads look the same fds up while others close and re-open them: every lookup gets
/// a live connection or none (run under the test binary's checks; a freed connection would be
/// read here).
#[test]
fn lookups_race_closes_and_reuse() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first = swapped_pair(4096);
    let watch = [first.client, first.server];
    drop(first);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for fd in watch {
                        if let Some(c) = table::lookup(fd) {
                            seen += u64::from(c.phase() == tssx_hook::conn::Phase::Active);
                            let mut n: c_int = 0;
                            // SAFETY: FIONREAD writes an int.
                            unsafe { calls::ioctl(fd, libc::FIONREAD, (&mut n as *mut c_int).cast()) };
                        }
                    }
                }
                seen
            })
        })
        .collect();
    for _ in 0..300 {
        let p = swapped_pair(4096);
        assert_eq!(write(p.client, b"x"), 1);
        drop(p);
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("no reader crashed");
    }
}
