//! A plain Unix-socket echo server used by the end-to-end tests and the demo (no tssx code).
//!
//! `tssx-test-server PATH ACCEPTS [PREFORK]`: binds PATH (`@name` = abstract), listens, prints
//! `ready pid=P fd=L`, then accepts ACCEPTS connections, printing `accept pid=P fd=F` for each
//! and echoing every line it reads on a thread of its own. With PREFORK=K the parent forks K
//! children after listen and each child accepts ACCEPTS/K connections (a prefork server); the
//! parent itself never accepts.
use std::{
    io::{BufRead, BufReader, Write},
    os::{
        fd::AsRawFd,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    },
    thread,
};

fn address(path: &str) -> SocketAddr {
    if !path.starts_with('@') {
        let _ = std::fs::remove_file(path); // a stale socket file from an earlier run
    }
    tssx_tests::socket_address(path)
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).expect("stdout");
}

fn echo(stream: UnixStream) {
    let mut writer = stream.try_clone().expect("clone stream");
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if writeln!(writer, "{line}").is_err() {
            return;
        }
    }
}

fn serve(listener: &UnixListener, accepts: usize) {
    let mut echoers = Vec::new();
    for _ in 0..accepts {
        let (stream, _) = listener.accept().expect("accept");
        say(format!("accept pid={} fd={}", std::process::id(), stream.as_raw_fd()));
        echoers.push(thread::spawn(move || echo(stream)));
    }
    for e in echoers {
        let _ = e.join();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (path, accepts) = match (args.get(1), args.get(2).and_then(|a| a.parse().ok())) {
        (Some(p), Some(n)) => (p.clone(), n),
        _ => {
            eprintln!("usage: tssx-test-server PATH ACCEPTS [PREFORK]");
            std::process::exit(2);
        }
    };
    let prefork: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    let listener = UnixListener::bind_addr(&address(&path)).expect("bind");
    say(format!("ready pid={} fd={}", std::process::id(), listener.as_raw_fd()));
    if prefork == 0 {
        serve(&listener, accepts);
        return;
    }
    let mut children = Vec::new();
    for _ in 0..prefork {
        // SAFETY: single-threaded here (no thread spawned yet); the child only uses the
        // listener and std I/O, then exits.
        match unsafe { libc::fork() } {
            -1 => panic!("fork failed: {}", std::io::Error::last_os_error()),
            0 => {
                serve(&listener, accepts / prefork);
                std::process::exit(0);
            }
            child => children.push(child),
        }
    }
    for child in children {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child {child} failed");
    }
}
