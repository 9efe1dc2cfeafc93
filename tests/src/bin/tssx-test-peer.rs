//! One end of a connection that either waits in a blocking call or just holds the socket, for
//! the peer-death tests (plain std, no tssx code).
//!
//! `tssx-test-peer server|client PATH read|poll|epoll|write|hold`: the server binds PATH and
//! accepts one connection, the client connects to it; each prints `connected pid=P` when it has
//! its socket.
//! - `read`: blocks reading (the peer sends nothing) until EOF or an error;
//! - `poll` / `epoll`: blocks in `poll` / `epoll_wait` (no timeout) for readability, then reads
//!   as `read` does;
//! - `write`: writes 64 KiB chunks (the peer reads nothing) until an error;
//! - `hold`: sleeps forever (the test kills it);
//! - `echo-hold` (server): echoes each byte until a `!`, then holds (never reads again);
//! - `unread GO_FILE` (client): 200 one-byte round trips 1 ms apart (so that the connection is
//!   swapped), a `!`, then 6 bytes the server never reads; prints `wrote`, waits (without
//!   touching the socket) until GO_FILE exists, then polls for POLLIN without a timeout, reads
//!   twice, and prints `seen poll=REVENTS read=R again=R` (R: `eof`, `ECONNRESET`, `bytes-N`).
//!
//! `read`, `poll`, `epoll` and `write` then print `woke result=eof|EPIPE|ECONNRESET|errno-N at_ns=T bytes=N`
//! (`T` = CLOCK_MONOTONIC when the call returned) and exit 0. SIGPIPE is ignored (Rust's default),
//! so a write to a dead peer returns EPIPE.
use std::{
    io::{Read, Write},
    os::{
        fd::AsRawFd as _,
        unix::net::{UnixListener, UnixStream},
    },
};

/// Blocks until `fd` is readable (or hung up), with `poll` or `epoll_wait` and no timeout.
fn wait_readable(fd: i32, epoll: bool) {
    if !epoll {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        while unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {}
        return;
    }
    // SAFETY: epoll_create1 has no memory arguments; the fd is ours and closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1");
    let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
    // SAFETY: registers our socket with a live event struct.
    assert_eq!(unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut event) }, 0, "epoll_ctl");
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: waits into our array of the given length.
    while unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), out.len() as i32, -1) } <= 0 {}
    // SAFETY: closes the epoll fd we created.
    unsafe { libc::close(ep) };
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into a live local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).expect("stdout");
}

fn outcome(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(n) => format!("errno-{n}"),
        None => format!("error-{e}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(role), Some(path), Some(action)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: tssx-test-peer server|client PATH read|poll|epoll|write|hold|echo-hold|unread GO_FILE");
        std::process::exit(2);
    };
    let mut stream = if role == "server" {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind");
        say("ready");
        listener.accept().expect("accept").0
    } else {
        UnixStream::connect(path).expect("connect")
    };
    say(&format!("connected pid={}", std::process::id()));
    let mut bytes = 0u64;
    let result = match action.as_str() {
        "read" | "poll" | "epoll" => {
            if action != "read" {
                wait_readable(stream.as_raw_fd(), action == "epoll");
            }
            let mut buf = vec![0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break "eof".to_owned(),
                    Ok(n) => bytes += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break outcome(&e),
                }
            }
        }
        "write" => {
            let buf = vec![0x5Au8; 65536];
            loop {
                match stream.write(&buf) {
                    Ok(n) => bytes += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break outcome(&e),
                }
            }
        }
        "hold" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        "echo-hold" => {
            let mut b = [0u8; 1];
            while stream.read_exact(&mut b).is_ok() && b[0] != b'!' {
                stream.write_all(&b).expect("echo");
            }
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        "unread" => {
            let go = args.get(4).expect("unread GO_FILE");
            let mut b = [0u8; 1];
            for _ in 0..200 {
                stream.write_all(b"r").expect("round trip");
                stream.read_exact(&mut b).expect("echo");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            stream.write_all(b"!unread").expect("write");
            say("wrote");
            while !std::path::Path::new(go).exists() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let mut pfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd.
            while unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {}
            let names = [(libc::POLLIN, "POLLIN"), (libc::POLLERR, "POLLERR"), (libc::POLLHUP, "POLLHUP"), (libc::POLLRDHUP, "POLLRDHUP")];
            let revents: Vec<&str> = names.iter().filter(|(bit, _)| pfd.revents & bit != 0).map(|(_, name)| *name).collect();
            let mut read = || {
                let mut buf = [0u8; 64];
                match stream.read(&mut buf) {
                    Ok(0) => "eof".to_owned(),
                    Ok(n) => format!("bytes-{n}"),
                    Err(e) => outcome(&e),
                }
            };
            let (first, again) = (read(), read());
            say(&format!("seen poll={} read={first} again={again}", revents.join("|")));
            return;
        }
        other => panic!("unknown action {other}"),
    };
    say(&format!("woke result={result} at_ns={} bytes={bytes}", now_ns()));
}
