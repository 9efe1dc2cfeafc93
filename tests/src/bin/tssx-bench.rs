//! `tssx-bench`: round-trip latency and streaming throughput, in one run, for
//! (a) a plain Unix socket, (b) the same socket swapped by tssx (the client and server
//! processes run under LD_PRELOAD=libtssx_preload.so with a tssx-agent watching the path), and
//! (c) the bare shared-memory ring with no hook and no socket (busy-polling), with ratios.
//!
//! `cargo xtask bench` starts the agent and runs this. By hand:
//! `tssx-bench --preload target/release/libtssx_preload.so --path /tmp/tssx-bench/bench.sock`
//! with `tssx-agent --paths /tmp/tssx-bench/bench.sock` running.
//!
//! Worker mode (used by the orchestrator): `tssx-bench serve PATH` / `tssx-bench drive PATH TEST SIZE COUNT`.
//!
//! `tssx-bench calls PATH COUNT`: the cost of the socket calls themselves, with no wake-up in
//! the measure: one process binds PATH, connects to it, accepts, then COUNT times writes 64
//! bytes on each end, polls both (timeout 0) and reads them back; prints nanoseconds per call.
//! Run under the hook on a path the agent does not watch, against no hook, it measures the
//! hook's pass-through cost without the scheduler's noise.
use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    process::{Command, Stdio},
    time::Instant,
};

use tssx_common::segment::End;
use tssx_shm::segment::Segment;

const LATENCY_SIZES: &[usize] = &[64, 1024, 16 * 1024, 64 * 1024];
const STREAM_SIZES: &[usize] = &[4 * 1024, 64 * 1024, 1 << 20];
const STREAM_BYTES: u64 = 1 << 30;

/// Round trips to time for a message size (fewer for big messages).
fn round_trips(size: usize) -> u64 {
    if size <= 1024 {
        20_000
    } else {
        5_000
    }
}

/// One test: `("rtt", size)` or `("stream", size)`. The server side of each.
fn serve_one(stream: &mut UnixStream, test: &str, size: usize, count: u64) {
    let mut buf = vec![0u8; size.max(1)];
    match test {
        "rtt" => {
            for _ in 0..count {
                stream.read_exact(&mut buf).unwrap();
                stream.write_all(&buf).unwrap();
            }
        }
        _ => {
            let mut left = count;
            while left > 0 {
                let n = stream.read(&mut buf[..size.min(left as usize)]).unwrap();
                assert!(n > 0, "early EOF");
                left -= n as u64;
            }
            stream.write_all(&[1]).unwrap();
        }
    }
}

/// The client side; returns the seconds taken.
fn drive_one(stream: &mut UnixStream, test: &str, size: usize, count: u64) -> f64 {
    let mut buf = vec![7u8; size.max(1)];
    let start = Instant::now();
    match test {
        "rtt" => {
            for _ in 0..count {
                stream.write_all(&buf).unwrap();
                stream.read_exact(&mut buf).unwrap();
            }
        }
        _ => {
            let mut left = count;
            while left > 0 {
                let n = size.min(left as usize);
                stream.write_all(&buf[..n]).unwrap();
                left -= n as u64;
            }
            stream.read_exact(&mut buf[..1]).unwrap();
        }
    }
    start.elapsed().as_secs_f64()
}

/// Runs one test between two fresh processes over `path`, with or without the hook.
fn socket_test(path: &str, preload: Option<&str>, test: &str, size: usize, count: u64) -> f64 {
    let me = std::env::current_exe().unwrap();
    let _ = std::fs::remove_file(path);
    let mut server = Command::new(&me);
    server.args(["serve", path, test, &size.to_string(), &count.to_string()]).stdout(Stdio::piped());
    let mut client = Command::new(&me);
    client.args(["drive", path, test, &size.to_string(), &count.to_string()]).stdout(Stdio::piped());
    if let Some(so) = preload {
        server.env("LD_PRELOAD", so);
        client.env("LD_PRELOAD", so);
    }
    let mut server = server.spawn().unwrap();
    let mut ready = [0u8; 6];
    server.stdout.as_mut().unwrap().read_exact(&mut ready).unwrap();
    let out = client.output().unwrap();
    assert!(out.status.success(), "client failed");
    assert!(server.wait().unwrap().success(), "server failed");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("seconds")
}

/// The same tests over a bare ring pair in shared memory: two processes busy-polling, no
/// hook, no socket, no sleeping. The best tssx could do.
fn ring_test(test: &str, size: usize, count: u64) -> f64 {
    let segment = Segment::create(1 << 20).expect("segment");
    // SAFETY: fork in a single-threaded orchestrator; the child only uses the mapping and exits.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    let end = if child == 0 { End::Server } else { End::Client };
    // SAFETY: one producer and one consumer per ring per process; dropped before the segment.
    let (mut tx, mut rx) = unsafe { (segment.producer(end), segment.consumer(end)) };
    let mut buf = vec![7u8; size.max(1)];
    let write_all = |tx: &mut tssx_shm::ring::Producer, data: &[u8]| {
        let mut done = 0;
        while done < data.len() {
            done += tx.write(&data[done..]).bytes;
        }
    };
    let read_exact = |rx: &mut tssx_shm::ring::Consumer, data: &mut [u8]| {
        let mut done = 0;
        while done < data.len() {
            done += rx.read(&mut data[done..]).bytes;
        }
    };
    if child == 0 {
        match test {
            "rtt" => {
                for _ in 0..count {
                    read_exact(&mut rx, &mut buf);
                    write_all(&mut tx, &buf);
                }
            }
            _ => {
                let mut left = count;
                while left > 0 {
                    let n = size.min(left as usize);
                    read_exact(&mut rx, &mut buf[..n]);
                    left -= n as u64;
                }
                write_all(&mut tx, &[1]);
            }
        }
        // SAFETY: leave the child without running the parent's destructors or atexit handlers.
        unsafe { libc::_exit(0) };
    }
    let start = Instant::now();
    match test {
        "rtt" => {
            for _ in 0..count {
                write_all(&mut tx, &buf);
                read_exact(&mut rx, &mut buf);
            }
        }
        _ => {
            let mut left = count;
            while left > 0 {
                let n = size.min(left as usize);
                write_all(&mut tx, &buf[..n]);
                left -= n as u64;
            }
            read_exact(&mut rx, &mut buf[..1]);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    secs
}

fn worker(args: &[String]) {
    let path = &args[2];
    let (test, size, count) = (args[3].as_str(), args[4].parse().unwrap(), args[5].parse().unwrap());
    if args[1] == "serve" {
        let listener = UnixListener::bind(path).unwrap();
        println!("ready");
        std::io::stdout().flush().unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        serve_one(&mut stream, test, size, count);
        let mut rest = [0u8; 1];
        let _ = stream.read(&mut rest); // wait for the client's close
    } else {
        let mut stream = UnixStream::connect(path).unwrap();
        println!("{}", drive_one(&mut stream, test, size, count));
    }
}

/// `calls PATH COUNT`: nanoseconds per socket call (see the module doc).
fn calls(path: &str, count: u64) -> f64 {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bind");
    let mut client = UnixStream::connect(path).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for i in 0..count {
        buf[0] = i as u8;
        client.write_all(&buf).expect("write");
        server.write_all(&buf).expect("write");
        let mut fds = [
            libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&client), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&server), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two live pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, 0) };
        assert_eq!(ready, 2, "both ends readable");
        server.read_exact(&mut buf).expect("read");
        assert_eq!(buf[0], i as u8, "bytes out of order");
        client.read_exact(&mut buf).expect("read");
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    secs * 1e9 / (count * 5) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 6 && (args[1] == "serve" || args[1] == "drive") {
        return worker(&args);
    }
    if args.len() >= 4 && args[1] == "calls" {
        println!("{}", calls(&args[2], args[3].parse().expect("COUNT")));
        return;
    }
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let (Some(preload), Some(path)) = (arg("--preload"), arg("--path")) else {
        eprintln!("usage: tssx-bench --preload PATH/TO/libtssx_preload.so --path WATCHED.sock  (with tssx-agent watching it)");
        std::process::exit(2);
    };
    println!("| test | size | plain Unix socket | tssx (hook) | bare ring | tssx vs plain | tssx vs bare ring |");
    println!("|---|---|---|---|---|---|---|");
    for &size in LATENCY_SIZES {
        let n = round_trips(size);
        let plain = socket_test(&path, None, "rtt", size, n) / n as f64 * 1e6;
        let tssx = socket_test(&path, Some(&preload), "rtt", size, n) / n as f64 * 1e6;
        let ring = ring_test("rtt", size, n) / n as f64 * 1e6;
        println!(
            "| round trip | {size} B | {plain:.2} us | {tssx:.2} us | {ring:.2} us | {:.1}x faster | {:.1}x slower |",
            plain / tssx,
            tssx / ring
        );
    }
    for &size in STREAM_SIZES {
        let gbps = |secs: f64| STREAM_BYTES as f64 / secs / 1e9;
        let plain = gbps(socket_test(&path, None, "stream", size, STREAM_BYTES));
        let tssx = gbps(socket_test(&path, Some(&preload), "stream", size, STREAM_BYTES));
        let ring = gbps(ring_test("stream", size, STREAM_BYTES));
        println!(
            "| stream 1 GiB | {size} B writes | {plain:.2} GB/s | {tssx:.2} GB/s | {ring:.2} GB/s | {:.2}x | {:.2}x of ring |",
            tssx / plain,
            tssx / ring
        );
    }
}
