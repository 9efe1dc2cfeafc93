//! Cross-process stress test of the shared-memory rings.
//!
//! The parent creates a segment and forks; parent (end A) and child (end B) then stream the
//! same amount of pseudo-random data to each other through the two rings at once, with random
//! write and read sizes (1 B to 1 MiB, over a smaller ring so that it wraps, fills and drains
//! constantly), and check every byte received against the sender's stream. When neither
//! direction can progress for a while, a side sleeps on a real Unix socket pair following the
//! ring's announce/re-check protocol, and the peer rings a doorbell byte when a transfer reports
//! `wake_peer`: a lost wake-up shows up as a poll timeout and fails the test.
//!
//! Size per direction: `TSSX_RING_STRESS_MIB` (default 256 MiB; about 1 s in a debug build).
#![cfg(not(tssx_loom))]

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tssx_common::segment::End;
use tssx_shm::ring::{Consumer, Producer, Transfer};
use tssx_shm::segment::Segment;

const RING_CAPACITY: usize = 1 << 18;
const MAX_IO: usize = 1 << 20;
/// Iterations without progress before a side goes to sleep.
const SPINS_BEFORE_SLEEP: u32 = 32;
/// A sleep longer than this is a lost wake-up.
const POLL_TIMEOUT_MS: i32 = 10_000;
/// How long the parent waits for the child once it is done itself.
const CHILD_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A size in 1..=MAX_IO, log-uniform so that tiny and huge transfers both occur often.
    fn io_size(&mut self) -> usize {
        let bits = (self.next() % 21) as u32; // 0..=20
        let size = 1 + (self.next() as usize & ((1usize << bits) - 1));
        size.min(MAX_IO)
    }
}

/// splitmix64 finalizer: the stream's 8-byte word number `k`.
fn word(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the bytes of stream `seed` at positions `pos..`.
fn fill(seed: u64, pos: u64, buf: &mut [u8]) {
    let mut i = 0;
    let mut p = pos;
    while i < buf.len() && !p.is_multiple_of(8) {
        buf[i] = word(seed, p / 8).to_le_bytes()[(p % 8) as usize];
        i += 1;
        p += 1;
    }
    let mut chunks = buf[i..].chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word(seed, p / 8).to_le_bytes());
        p += 8;
    }
    for b in chunks.into_remainder() {
        *b = word(seed, p / 8).to_le_bytes()[(p % 8) as usize];
        p += 1;
    }
}

fn seed_of(writer: End) -> u64 {
    0x5eed_0000 + writer.index() as u64
}

/// What went wrong on one side; built and formatted without allocating (the child reports it).
#[derive(Debug)]
enum Failure {
    Mismatch { end: End, pos: u64, got: u8, expect: u8 },
    LostWakeup { end: End, sent: u64, received: u64, free: usize, available: usize },
    PeerHungUp { end: End, sent: u64, received: u64 },
    Poll { errno: i32 },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Failure::Mismatch { end, pos, got, expect } => {
                write!(f, "{end:?}: byte {pos} of the stream is {got:#04x}, expected {expect:#04x}")
            }
            Failure::LostWakeup { end, sent, received, free, available } => write!(
                f,
                "{end:?}: lost wake-up: slept {POLL_TIMEOUT_MS} ms with sent {sent}, received {received}, \
                 ring free {free}, ring available {available}"
            ),
            Failure::PeerHungUp { end, sent, received } => {
                write!(f, "{end:?}: peer hung up with sent {sent}, received {received}")
            }
            Failure::Poll { errno } => write!(f, "poll: errno {errno}"),
        }
    }
}

/// Writes `prefix` and `failure` to stderr through a stack buffer (no allocation, no locks:
/// for the forked child).
fn report_raw(prefix: &str, failure: &Failure) {
    struct Buf {
        bytes: [u8; 512],
        len: usize,
    }
    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let n = s.len().min(self.bytes.len() - self.len);
            self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
            self.len += n;
            Ok(())
        }
    }
    let mut buf = Buf { bytes: [0; 512], len: 0 };
    let _ = fmt::Write::write_fmt(&mut buf, format_args!("{prefix}{failure}\n"));
    // SAFETY: writing our buffer to stderr.
    unsafe { libc::write(2, buf.bytes.as_ptr().cast(), buf.len) };
}

#[derive(Debug, Default)]
struct Stats {
    writes: u64,
    reads: u64,
    sleeps: u64,
    doorbells: u64,
}

/// Everything one side needs, allocated before the fork (the child must not allocate: the
/// parent may have had other threads).
struct Side {
    end: End,
    total: u64,
    producer: Producer,
    consumer: Consumer,
    bell: OwnedFd,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    expect: Vec<u8>,
    rng: Rng,
}

impl Side {
    fn ring(&self, t: Transfer, stats: &mut Stats) {
        if t.wake_peer {
            stats.doorbells += 1;
            // SAFETY: writing one byte from a valid buffer to our socket.
            let r = unsafe { libc::send(self.bell.as_raw_fd(), [1u8].as_ptr().cast(), 1, libc::MSG_DONTWAIT) };
            // EAGAIN: the peer has unread doorbells already, which will wake it.
            assert!(r == 1 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN));
        }
    }

    /// Runs both directions to completion. Errors are returned, not panicked, so that the child
    /// can report them through its exit status.
    fn run(&mut self) -> Result<Stats, Failure> {
        let send_seed = seed_of(self.end);
        let recv_seed = seed_of(self.end.peer());
        let mut stats = Stats::default();
        let (mut sent, mut received) = (0u64, 0u64);
        // The pending chunk to send: out[off..len], whose first byte is stream position
        // `sent`.
        let (mut off, mut len) = (0usize, 0usize);
        let mut idle = 0u32;
        while sent < self.total || received < self.total {
            let mut progress = false;
            if sent < self.total {
                if off == len {
                    len = self.rng.io_size().min((self.total - sent) as usize);
                    off = 0;
                    fill(send_seed, sent, &mut self.out[..len]);
                }
                let t = self.producer.write(&self.out[off..len]);
                if t.bytes > 0 {
                    progress = true;
                    stats.writes += 1;
                    off += t.bytes;
                    sent += t.bytes as u64;
                }
                self.ring(t, &mut stats);
            }
            if received < self.total {
                let want = self.rng.io_size();
                let t = self.consumer.read(&mut self.inbuf[..want]);
                if t.bytes > 0 {
                    progress = true;
                    stats.reads += 1;
                    let got = &self.inbuf[..t.bytes];
                    let expect = &mut self.expect[..t.bytes];
                    fill(recv_seed, received, expect);
                    if got != &expect[..] {
                        let at = got.iter().zip(expect.iter()).position(|(a, b)| a != b).unwrap_or(0);
                        return Err(Failure::Mismatch { end: self.end, pos: received + at as u64, got: got[at], expect: expect[at] });
                    }
                    received += t.bytes as u64;
                }
                self.ring(t, &mut stats);
            }
            if progress {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < SPINS_BEFORE_SLEEP {
                if idle.is_multiple_of(8) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            idle = 0;
            // Sleep only if neither direction can move: announce on each waiting direction,
            // each announcement re-checking its ring.
            let waits_data = received < self.total;
            let waits_space = sent < self.total;
            let mut announced_data = false;
            if waits_data {
                if !self.consumer.announce_sleep() {
                    continue;
                }
                announced_data = true;
            }
            if waits_space && !self.producer.announce_sleep() {
                if announced_data {
                    self.consumer.withdraw_sleep();
                }
                continue;
            }
            stats.sleeps += 1;
            let mut pfd = libc::pollfd { fd: self.bell.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, POLL_TIMEOUT_MS) };
            if announced_data {
                self.consumer.withdraw_sleep();
            }
            if waits_space {
                self.producer.withdraw_sleep();
            }
            if r == 0 {
                return Err(Failure::LostWakeup {
                    end: self.end,
                    sent,
                    received,
                    free: self.producer.free(),
                    available: self.consumer.available(),
                });
            }
            if r < 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if errno == libc::EINTR {
                    continue;
                }
                return Err(Failure::Poll { errno });
            }
            // The peer's death shows on the real socket, never as a hang.
            if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                return Err(Failure::PeerHungUp { end: self.end, sent, received });
            }
            // Drain the doorbells; more may come, which only causes a spurious wake-up.
            let mut drain = [0u8; 256];
            loop {
                // SAFETY: valid buffer of that length.
                let n = unsafe { libc::recv(self.bell.as_raw_fd(), drain.as_mut_ptr().cast(), drain.len(), libc::MSG_DONTWAIT) };
                if n == 0 {
                    return Err(Failure::PeerHungUp { end: self.end, sent, received });
                }
                if n < 0 {
                    break;
                }
            }
        }
        Ok(stats)
    }
}

fn stress_mib() -> u64 {
    std::env::var("TSSX_RING_STRESS_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn side(seg: &Segment, end: End, bell: OwnedFd, total: u64) -> Side {
    Side {
        end,
        total,
        // SAFETY: one producer and one consumer per ring and process; the parent's and the
        // child's handles are for different ends, so every ring has exactly one producer (one
        // end) and one consumer (the other end). They are dropped (or the child exits) before
        // the segment is unmapped.
        producer: unsafe { seg.producer(end) },
        // SAFETY: as above.
        consumer: unsafe { seg.consumer(end) },
        bell,
        out: vec![0; MAX_IO],
        inbuf: vec![0; MAX_IO],
        expect: vec![0; MAX_IO],
        rng: Rng(0xdead_beef ^ ((end.index() as u64 + 1) * 0x1234_5678_9abc)),
    }
}

#[test]
fn stream_both_ways_between_processes() {
    let total = stress_mib() << 20;
    let seg = Segment::create(RING_CAPACITY).expect("create segment");
    let mut fds = [0; 2];
    // SAFETY: valid out-array.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are new and owned by these values.
    let (bell_a, bell_b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut a = side(&seg, End::Client, bell_a, total);
    let mut b = side(&seg, End::Server, bell_b, total);

    let start = Instant::now();
    // SAFETY: the child only runs `b.run()` (which allocates nothing and takes no lock, so the
    // parent's other threads cannot have left it a held lock) and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        drop(a.bell); // (not needed in the child; closing is async-signal-safe)
        let code = match b.run() {
            Ok(_) => 0,
            Err(failure) => {
                report_raw("child: ", &failure);
                1
            }
        };
        // SAFETY: leave at once, without running the parent's test harness or destructors.
        unsafe { libc::_exit(code) };
    }
    drop(b);
    let result = a.run();
    if result.is_err() {
        // Do not wait for a child that may be waiting for us.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    let deadline = Instant::now() + CHILD_EXIT_TIMEOUT;
    let waited = loop {
        // SAFETY: waiting for our own child.
        let waited = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if waited != 0 || Instant::now() > deadline {
            break waited;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    if waited == 0 {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
    }
    let stats = result.unwrap_or_else(|failure| panic!("parent: {failure}"));
    assert_eq!(waited, pid, "child still running {CHILD_EXIT_TIMEOUT:?} after the parent finished");
    assert!(libc::WIFEXITED(status), "child did not exit normally: status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0, "child reported failure (see its stderr)");
    // Everything each side wrote went through the rings and was read.
    assert_eq!(seg.ring_positions(End::Client), (total, total));
    assert_eq!(seg.ring_positions(End::Server), (total, total));
    let mib = (2 * total) as f64 / (1 << 20) as f64;
    eprintln!("moved {mib:.0} MiB in {elapsed:.2?} ({:.0} MiB/s both ways); parent: {stats:?}", mib / elapsed.as_secs_f64());
}
