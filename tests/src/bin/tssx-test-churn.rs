//! Many short connections, some with an end killed, for the leak tests (plain std, no tssx code).
//!
//! `tssx-test-churn server PATH N`: binds PATH, prints `ready`, then accepts N connections one
//! after the other; on each it reads a 64-byte message, echoes it and reads until EOF (a killed
//! client gives EOF or ECONNRESET). Prints `done ok=K fds_before=A fds_after=B memfd_maps=M`:
//! its own descriptor counts before the first and after the last connection.
//!
//! `tssx-test-churn client PATH N KILL_EVERY`: opens N connections one after the other; each
//! sends 64 bytes, checks the echo and closes. Every KILL_EVERY-th connection (0: none) is made
//! instead by a child process (`tssx-test-churn victim PATH I`) that connects, sends its message
//! and is killed with SIGKILL while it waits for the echo. Prints the same `done` line, followed
//! by `elapsed_us=T slowest_us=S`: the time from the first connect to the last close, and the
//! longest single connection (connect, message, echo, close), in microseconds.
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const MSG: usize = 64;

fn message(i: u64) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    for (k, b) in m.iter_mut().enumerate() {
        *b = (i.wrapping_mul(131).wrapping_add(k as u64 * 7)) as u8;
    }
    m
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn memfd_maps() -> usize {
    std::fs::read_to_string("/proc/self/maps").map(|m| m.lines().filter(|l| l.contains("/memfd:")).count()).unwrap_or(0)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).expect("stdout");
}

fn one_client(path: &str, i: u64) {
    let mut s = UnixStream::connect(path).expect("connect");
    s.write_all(&message(i)).expect("write");
    let mut back = [0u8; MSG];
    s.read_exact(&mut back).expect("read echo");
    assert!(back == message(i), "echo mismatch on connection {i}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let role = args.get(1).map(String::as_str).unwrap_or("");
    let path = args.get(2).cloned().unwrap_or_default();
    let n: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
    match role {
        "server" => {
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path).expect("bind");
            let before = fds();
            say("ready");
            let mut ok = 0;
            for _ in 0..n {
                let (mut s, _) = listener.accept().expect("accept");
                let mut m = [0u8; MSG];
                if s.read_exact(&mut m).is_ok() && s.write_all(&m).is_ok() {
                    ok += 1;
                }
                let mut rest = [0u8; 16];
                // Until EOF (or the reset of a killed client): the client closes first.
                while matches!(s.read(&mut rest), Ok(k) if k > 0) {}
            }
            say(&format!("done ok={ok} fds_before={before} fds_after={} memfd_maps={}", fds(), memfd_maps()));
        }
        "client" => {
            let kill_every: u64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(0);
            let before = fds();
            let me = std::env::current_exe().expect("current_exe");
            let mut ok = 0;
            let started = Instant::now();
            let mut slowest = Duration::ZERO;
            for i in 0..n {
                let one = Instant::now();
                if kill_every > 0 && i % kill_every == kill_every - 1 {
                    let mut child =
                        Command::new(&me).args(["victim", &path, &i.to_string()]).stdout(Stdio::piped()).spawn().expect("spawn victim");
                    let mut line = String::new();
                    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("victim line");
                    assert_eq!(line.trim(), "sent", "victim {i}");
                    child.kill().expect("SIGKILL victim");
                    child.wait().expect("reap victim");
                } else {
                    one_client(&path, i);
                    ok += 1;
                }
                slowest = slowest.max(one.elapsed());
            }
            let elapsed = started.elapsed();
            say(&format!(
                "done ok={ok} fds_before={before} fds_after={} memfd_maps={} elapsed_us={} slowest_us={}",
                fds(),
                memfd_maps(),
                elapsed.as_micros(),
                slowest.as_micros()
            ));
        }
        "victim" => {
            let mut s = UnixStream::connect(&path).expect("connect");
            s.write_all(&message(n)).expect("write");
            say("sent");
            let mut back = [0u8; MSG];
            let _ = s.read_exact(&mut back);
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        _ => {
            eprintln!("usage: tssx-test-churn server PATH N | client PATH N KILL_EVERY");
            std::process::exit(2);
        }
    }
}
