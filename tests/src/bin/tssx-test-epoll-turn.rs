//! A plain Unix-socket client that registers its socket with epoll, deletes it, then adds it
//! again after the connection went plain (no tssx code; used by `tests/tests/swap.rs`).
//!
//! `tssx-test-epoll-turn PATH`: connects, `EPOLL_CTL_ADD` then `EPOLL_CTL_DEL` the socket,
//! sends `hi`, reads `yo`; adds the socket again (data 9) and checks `epoll_wait(0)` reports
//! nothing; sends `go` and checks that `epoll_wait` reports `EPOLLIN` with data 9 before it
//! reads `zz`. Prints `ok`, or the first step that differs, and exits non-zero.
use std::{
    io::{Read, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
};

fn ctl(ep: i32, op: i32, fd: i32, data: u64) -> Result<(), String> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: data };
    // SAFETY: a live event; the kernel checks the fds.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
        return Err(format!("epoll_ctl op {op}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `epoll_wait` with `timeout_ms`: the events reported.
fn wait(ep: i32, timeout_ms: i32) -> Result<Vec<(u32, u64)>, String> {
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: `out` holds 4 events.
    let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, timeout_ms) };
    if n < 0 {
        return Err(format!("epoll_wait: {}", std::io::Error::last_os_error()));
    }
    Ok(out[..n as usize].iter().map(|e| (e.events, e.u64)).collect())
}

fn expect_read(stream: &mut UnixStream, want: &[u8]) -> Result<(), String> {
    let mut buf = vec![0u8; want.len()];
    stream.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
    if buf != want {
        return Err(format!("read {buf:?}, want {want:?}"));
    }
    Ok(())
}

fn run(path: &str) -> Result<(), String> {
    let mut stream = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    let fd = stream.as_raw_fd();
    // SAFETY: plain epoll_create1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err("epoll_create1".into());
    }
    ctl(ep, libc::EPOLL_CTL_ADD, fd, 7)?;
    ctl(ep, libc::EPOLL_CTL_DEL, fd, 0)?;
    stream.write_all(b"hi").map_err(|e| format!("write: {e}"))?;
    expect_read(&mut stream, b"yo")?;
    ctl(ep, libc::EPOLL_CTL_ADD, fd, 9).map_err(|e| format!("adding the socket again: {e}"))?;
    let idle = wait(ep, 0)?;
    if !idle.is_empty() {
        return Err(format!("epoll_wait(0) with nothing to read reported {idle:?}"));
    }
    stream.write_all(b"go").map_err(|e| format!("write: {e}"))?;
    let ready = wait(ep, 10_000)?;
    if ready != [(libc::EPOLLIN as u32, 9)] {
        return Err(format!("epoll_wait reported {ready:?}, want EPOLLIN with data 9"));
    }
    expect_read(&mut stream, b"zz")
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: tssx-test-epoll-turn PATH");
        std::process::exit(2);
    };
    match run(&path) {
        Ok(()) => println!("ok"),
        Err(e) => {
            println!("{e}");
            std::process::exit(1);
        }
    }
}
