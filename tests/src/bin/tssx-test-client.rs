//! A plain Unix-socket client used by the end-to-end tests and the demo (no tssx code).
//!
//! `tssx-test-client PATH CONNECTIONS [HOLD_MS]`: opens CONNECTIONS connections to PATH (`@name`
//! = abstract) at once, one thread each, printing `connect pid=P fd=F` for each; when all are
//! open, each sends a line and checks the echo, then keeps its connection HOLD_MS milliseconds
//! (default 0) before it closes. Exits non-zero on any failure.
use std::{
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::{Arc, Barrier},
    thread,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(n)) = (args.get(1).cloned(), args.get(2).and_then(|a| a.parse::<usize>().ok())) else {
        eprintln!("usage: tssx-test-client PATH CONNECTIONS");
        std::process::exit(2);
    };
    let hold = std::time::Duration::from_millis(args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0));
    let barrier = Arc::new(Barrier::new(n));
    let workers: Vec<_> = (0..n)
        .map(|i| {
            let (path, barrier) = (path.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                let mut stream = UnixStream::connect_addr(&tssx_tests::socket_address(&path)).expect("connect");
                {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "connect pid={} fd={}", std::process::id(), stream.as_raw_fd()).unwrap();
                    out.flush().unwrap();
                }
                barrier.wait();
                let msg = format!("hello from connection {i}");
                writeln!(stream, "{msg}").expect("write");
                let mut reply = String::new();
                BufReader::new(&stream).read_line(&mut reply).expect("read");
                assert_eq!(reply.trim_end(), msg, "echo mismatch");
                thread::sleep(hold);
            })
        })
        .collect();
    let failed = workers.into_iter().map(|w| w.join()).filter(Result::is_err).count();
    if failed > 0 {
        eprintln!("{failed} connection(s) failed");
        std::process::exit(1);
    }
}
