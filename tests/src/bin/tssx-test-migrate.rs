//! Full-duplex exchange with pauses, for migration tests (plain std and libc, no tssx code).
//!
//! `tssx-test-migrate server|client PATH SEED MODE [BYTES]`: the server accepts one connection
//! on PATH (printing `ready` once it listens), the client connects. Each side sends BYTES
//! (default 4 MiB) pseudo-random bytes in random pieces (1 B to 256 KiB) with random pauses
//! (up to 2 ms, now and then), so that a connection moves onto the rings at a random moment of
//! the stream, and checks every byte it reads against the same generator. Then it shuts its
//! writing side down and must read EOF after the peer's last byte.
//!
//! MODE is how the ends wait: `blocking` (a writer thread and a reading thread, blocking
//! calls), `nonblock` (non-blocking calls, retried after a short sleep), `poll`, `select`,
//! `epoll-lt`, `epoll-et` (non-blocking, one thread, waits in that call).
//!
//! Prints `progress received=N` every 256 KiB received (so a test can kill an end in the
//! middle), then `ok sent=N received=N`, and exits 0; any lost, extra or reordered byte, an
//! unexpected error or EOF exits non-zero with a message naming the offset.

use std::{
    io::{Read, Write},
    os::{
        fd::AsRawFd,
        unix::net::{UnixListener, UnixStream},
    },
    thread,
    time::Duration,
};

/// xorshift64*: the same sequence on both ends for the same seed.
struct Gen {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen { state: seed | 1, word: [0; 8], used: 8 }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut at = 0;
        while at < buf.len() {
            if self.used == 8 {
                self.word = self.next().to_le_bytes();
                self.used = 0;
            }
            let n = (8 - self.used).min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&self.word[self.used..self.used + n]);
            self.used += n;
            at += n;
        }
    }

    /// A piece size from 1 B to 256 KiB, log-uniform.
    fn piece(&mut self) -> usize {
        let bits = self.below(19);
        1 + self.below(1 << bits) as usize
    }

    /// Now and then (one call in 16) a pause of up to 2 ms.
    fn pause(&mut self) {
        if self.below(16) == 0 {
            thread::sleep(Duration::from_micros(self.below(2000)));
        }
    }
}

/// The checking side of one direction.
struct Checker {
    data: Gen,
    sizes: Gen,
    received: u64,
    want: Vec<u8>,
    reported: u64,
}

impl Checker {
    fn check(&mut self, got: &[u8]) {
        self.want.resize(got.len(), 0);
        self.data.fill(&mut self.want[..got.len()]);
        if got != &self.want[..] {
            let at = got.iter().zip(&self.want).position(|(a, b)| a != b).unwrap_or(0);
            fail(&format!("corrupt or reordered byte at offset {}", self.received + at as u64));
        }
        self.received += got.len() as u64;
        if self.received - self.reported >= 256 * 1024 {
            self.reported = self.received;
            println!("progress received={}", self.received);
            let _ = std::io::stdout().flush();
        }
    }
}

/// The sending side of one direction.
struct Sender {
    data: Gen,
    sizes: Gen,
    sent: u64,
    buf: Vec<u8>,
    /// Bytes of `buf` not written yet.
    pending: std::ops::Range<usize>,
}

impl Sender {
    /// The next piece to write (refilled when the previous one is out), empty when done.
    fn piece(&mut self, total: u64) -> &[u8] {
        if self.pending.is_empty() && self.sent < total {
            let n = self.sizes.piece().min((total - self.sent) as usize);
            self.buf.resize(n, 0);
            self.data.fill(&mut self.buf[..n]);
            self.pending = 0..n;
        }
        &self.buf[self.pending.clone()]
    }

    fn wrote(&mut self, n: usize) {
        self.pending.start += n;
        self.sent += n as u64;
    }
}

fn fail(what: &str) -> ! {
    eprintln!("tssx-test-migrate: {what}");
    std::process::exit(1);
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(role), Some(path), Some(seed), Some(mode)) =
        (args.get(1).cloned(), args.get(2).cloned(), args.get(3).and_then(|a| a.parse::<u64>().ok()), args.get(4).cloned())
    else {
        eprintln!("usage: tssx-test-migrate server|client PATH SEED MODE [BYTES]");
        std::process::exit(2);
    };
    let total: u64 = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(4 << 20);
    let server = role == "server";
    let stream = if server {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap_or_else(|e| fail(&format!("bind: {e}")));
        println!("ready");
        let _ = std::io::stdout().flush();
        listener.accept().unwrap_or_else(|e| fail(&format!("accept: {e}"))).0
    } else {
        UnixStream::connect(&path).unwrap_or_else(|e| fail(&format!("connect: {e}")))
    };
    let (mine, peers) = (seed.wrapping_mul(2).wrapping_add(u64::from(server)), seed.wrapping_mul(2).wrapping_add(u64::from(!server)));
    let sender = Sender { data: Gen::new(mine), sizes: Gen::new(mine ^ 0xABCD), sent: 0, buf: Vec::new(), pending: 0..0 };
    let checker = Checker { data: Gen::new(peers), sizes: Gen::new(peers ^ 0x1234), received: 0, want: Vec::new(), reported: 0 };
    let (sent, received) = match mode.as_str() {
        "blocking" => blocking(stream, sender, checker, total, Gen::new(seed ^ 0x55)),
        "nonblock" | "poll" | "select" | "epoll-lt" | "epoll-et" => {
            event_loop(stream, &mode, sender, checker, total, Gen::new(seed ^ 0x55))
        }
        other => fail(&format!("unknown mode {other}")),
    };
    println!("ok sent={sent} received={received}");
}

/// A writer thread and a reading thread, blocking calls.
fn blocking(stream: UnixStream, mut sender: Sender, mut checker: Checker, total: u64, mut pauses: Gen) -> (u64, u64) {
    let mut writer = stream.try_clone().unwrap_or_else(|e| fail(&format!("try_clone: {e}")));
    let mut writer_pauses = Gen::new(pauses.next());
    let writing = thread::spawn(move || {
        loop {
            let piece = sender.piece(total).to_vec();
            if piece.is_empty() {
                break;
            }
            writer.write_all(&piece).unwrap_or_else(|e| fail(&format!("write at {}: {e}", sender.sent)));
            sender.wrote(piece.len());
            writer_pauses.pause();
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap_or_else(|e| fail(&format!("shutdown: {e}")));
        sender.sent
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = checker.sizes.piece();
        let got = reader.read(&mut buf[..n]).unwrap_or_else(|e| fail(&format!("read at {}: {e}", checker.received)));
        if got == 0 {
            break;
        }
        checker.check(&buf[..got]);
        pauses.pause();
    }
    if checker.received != total {
        fail(&format!("EOF after {} of {total} bytes", checker.received));
    }
    (writing.join().unwrap_or_else(|_| fail("writer thread")), checker.received)
}

/// One thread, non-blocking calls, waiting in the call `mode` names.
fn event_loop(stream: UnixStream, mode: &str, mut sender: Sender, mut checker: Checker, total: u64, mut pauses: Gen) -> (u64, u64) {
    stream.set_nonblocking(true).unwrap_or_else(|e| fail(&format!("set_nonblocking: {e}")));
    let fd = stream.as_raw_fd();
    let edge = mode == "epoll-et";
    // SAFETY: creates a new epoll instance owned by this function.
    let ep = if mode.starts_with("epoll") { unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) } } else { -1 };
    let mut registered = 0u32;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut shut, mut eof) = (false, false);
    while !(shut && eof) {
        let want_out = !shut;
        let (readable, writable) = wait(mode, fd, ep, &mut registered, want_out, edge);
        if readable || mode == "nonblock" {
            loop {
                let n = checker.sizes.piece();
                // SAFETY: reads into a live buffer of at least `n` bytes.
                let got = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), n) };
                if got < 0 {
                    if errno() == libc::EAGAIN {
                        break;
                    }
                    fail(&format!("read at {}: {}", checker.received, std::io::Error::last_os_error()));
                }
                if got == 0 {
                    eof = true;
                    break;
                }
                checker.check(&buf[..got as usize]);
                if !edge {
                    break;
                }
            }
        }
        if (writable || mode == "nonblock") && !shut {
            loop {
                let piece = sender.piece(total);
                if piece.is_empty() {
                    // SAFETY: shuts down our own socket's writing side.
                    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } != 0 {
                        fail(&format!("shutdown: {}", std::io::Error::last_os_error()));
                    }
                    shut = true;
                    break;
                }
                // SAFETY: writes from a live buffer.
                let w = unsafe { libc::write(fd, piece.as_ptr().cast(), piece.len()) };
                if w < 0 {
                    if errno() == libc::EAGAIN {
                        break;
                    }
                    fail(&format!("write at {}: {}", sender.sent, std::io::Error::last_os_error()));
                }
                sender.wrote(w as usize);
                if !edge {
                    break;
                }
            }
        }
        if mode == "nonblock" && !readable {
            thread::sleep(Duration::from_micros(50));
        }
        pauses.pause();
    }
    if checker.received != total {
        fail(&format!("EOF after {} of {total} bytes", checker.received));
    }
    (sender.sent, checker.received)
}

/// Waits until `fd` is readable (or writable, if `out`); returns (readable, writable).
fn wait(mode: &str, fd: i32, ep: i32, registered: &mut u32, out: bool, edge: bool) -> (bool, bool) {
    let events = libc::POLLIN | if out { libc::POLLOUT } else { 0 };
    match mode {
        "nonblock" => (false, out),
        "poll" => {
            let mut p = libc::pollfd { fd, events, revents: 0 };
            // SAFETY: one live pollfd.
            if unsafe { libc::poll(&mut p, 1, -1) } < 0 && errno() != libc::EINTR {
                fail("poll");
            }
            let r = p.revents;
            (r & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0, r & (libc::POLLOUT | libc::POLLERR) != 0)
        }
        "select" => {
            // SAFETY: fd_sets are plain data, initialised by FD_ZERO/FD_SET; fd < FD_SETSIZE.
            unsafe {
                let mut r: libc::fd_set = std::mem::zeroed();
                let mut w: libc::fd_set = std::mem::zeroed();
                libc::FD_ZERO(&mut r);
                libc::FD_ZERO(&mut w);
                libc::FD_SET(fd, &mut r);
                if out {
                    libc::FD_SET(fd, &mut w);
                }
                if libc::select(fd + 1, &mut r, &mut w, std::ptr::null_mut(), std::ptr::null_mut()) < 0 && errno() != libc::EINTR {
                    fail("select");
                }
                (libc::FD_ISSET(fd, &r), libc::FD_ISSET(fd, &w))
            }
        }
        _ => {
            let mut wanted = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | if out { libc::EPOLLOUT as u32 } else { 0 };
            if edge {
                wanted |= libc::EPOLLET as u32;
            }
            if *registered != wanted {
                let mut ev = libc::epoll_event { events: wanted, u64: 7 };
                let op = if *registered == 0 { libc::EPOLL_CTL_ADD } else { libc::EPOLL_CTL_MOD };
                // SAFETY: a live event on our own epoll instance.
                if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
                    fail(&format!("epoll_ctl: {}", std::io::Error::last_os_error()));
                }
                *registered = wanted;
            }
            let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: a live array of 4 events.
            let n = unsafe { libc::epoll_wait(ep, ev.as_mut_ptr(), 4, -1) };
            if n < 0 && errno() != libc::EINTR {
                fail("epoll_wait");
            }
            let mut got = (false, false);
            for e in &ev[..n.max(0) as usize] {
                let data = e.u64;
                if data != 7 {
                    fail(&format!("epoll_wait reported data {data:#x}, not ours"));
                }
                let bits = e.events;
                got.0 |= bits & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32 != 0;
                got.1 |= bits & (libc::EPOLLOUT | libc::EPOLLERR) as u32 != 0;
            }
            got
        }
    }
}
