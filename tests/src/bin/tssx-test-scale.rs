//! Many connections at once, and connection storms, for `cargo xtask scale` (plain std and
//! libc, no tssx code).
//!
//! `tssx-test-scale server PATH [blocking]`: binds PATH, prints `ready`, then serves every
//! connection from one level-triggered epoll loop: echoes what it reads, closes on EOF. Runs
//! until killed. Its connections are non-blocking (a readiness without data is skipped, and
//! counted on stderr at every power of two), or with `blocking` blocking (a plain socket never shows such a
//! readiness; one under the hook would block the loop: how the hang this found shows).
//!
//! `tssx-test-scale hold PATH N STOPFILE`: opens N connections one after the other (each:
//! connect, 64 bytes echoed) and keeps them all open; prints `opened n=N elapsed_us=T
//! slowest_us=S`. Then, every 200 ms, a round: 64 bytes echoed on every connection (their calls
//! after the agent's claim delay are what claims them), printing `round k elapsed_us=T
//! slowest_us=S`, until STOPFILE exists; then closes them all and prints `done ok=N rounds=R`.
//!
//! `tssx-test-scale storm PATH SECONDS THREADS`: THREADS threads, until SECONDS are up, each
//! open a connection, echo 64 bytes, and close it; every other connection is kept about 10 ms,
//! echoing every 2 ms, so that it turns into a conversation that outlives the claim delay and
//! is swapped. Prints `storm
//! connections=C per_s=P slowest_us=S p99_us=Q`: S is the longest single connection from
//! connect to close.
//!
//! Both clients raise their own RLIMIT_NOFILE (soft and hard, as root) to what N needs, and
//! exit non-zero on any error or wrong byte.
use std::{
    io::{Read, Write},
    os::{
        fd::{AsRawFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::Path,
    time::{Duration, Instant},
};

const MSG: usize = 64;

fn message(i: u64, round: u64) -> [u8; MSG] {
    let mut m = [0u8; MSG];
    for (k, b) in m.iter_mut().enumerate() {
        *b = (i.wrapping_mul(131).wrapping_add(round.wrapping_mul(17)).wrapping_add(k as u64 * 7)) as u8;
    }
    m
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn die(what: &str) -> ! {
    eprintln!("tssx-test-scale: {what}");
    std::process::exit(1)
}

/// Raises RLIMIT_NOFILE to `want` (at most `fs.nr_open`): the hard limit too where allowed
/// (CAP_SYS_RESOURCE), else the soft limit up to the hard one (a warning on stderr).
fn raise_nofile(want: u64) {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    let want = want.min(nr_open);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a live rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur >= want {
            return;
        }
        let raised = libc::rlimit { rlim_cur: want, rlim_max: limit.rlim_max.max(want) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return;
        }
        limit.rlim_cur = limit.rlim_max.min(want);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    eprintln!("tssx-test-scale: RLIMIT_NOFILE {} (wanted {want}; raising the hard limit needs CAP_SYS_RESOURCE)", limit.rlim_cur);
}

/// One round trip of message (i, round) on `s`.
fn echo(s: &mut UnixStream, i: u64, round: u64) -> std::io::Result<()> {
    let m = message(i, round);
    s.write_all(&m)?;
    let mut back = [0u8; MSG];
    s.read_exact(&mut back)?;
    if back != m {
        return Err(std::io::Error::other(format!("connection {i} round {round}: wrong bytes back")));
    }
    Ok(())
}

fn server(path: &str, blocking_fds: bool) {
    let _ = std::fs::remove_file(path);
    raise_nofile(1 << 20);
    let listener = UnixListener::bind(path).unwrap_or_else(|e| die(&format!("bind {path}: {e}")));
    listener.set_nonblocking(true).unwrap_or_else(|e| die(&format!("nonblocking: {e}")));
    // SAFETY: epoll_create1 has no memory preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        die("epoll_create1");
    }
    let add = |fd: RawFd| {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
        // SAFETY: ev is a live epoll_event; fd is open.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            die(&format!("epoll_ctl add {fd}: {}", std::io::Error::last_os_error()));
        }
    };
    add(listener.as_raw_fd());
    say("ready");
    let mut conns: std::collections::HashMap<RawFd, UnixStream> = std::collections::HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 65536];
    let mut spurious = 0u64;
    let mut reported = 0u64;
    loop {
        if spurious > reported && spurious.is_power_of_two() {
            eprintln!("tssx-test-scale: server: {spurious} readiness reports without data so far");
            reported = spurious;
        }
        // SAFETY: events is a live buffer of events.len() entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            die(&format!("epoll_wait: {}", std::io::Error::last_os_error()));
        }
        for ev in &events[..n as usize] {
            let fd = ev.u64 as RawFd;
            if fd == listener.as_raw_fd() {
                loop {
                    match listener.accept() {
                        Ok((s, _)) => {
                            if blocking_fds {
                                s.set_nonblocking(false).unwrap_or_else(|e| die(&format!("blocking: {e}")));
                            } else {
                                s.set_nonblocking(true).unwrap_or_else(|e| die(&format!("nonblocking: {e}")));
                            }
                            add(s.as_raw_fd());
                            conns.insert(s.as_raw_fd(), s);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => die(&format!("accept: {e}")),
                        Err(_) => break,
                    }
                }
                continue;
            }
            let Some(s) = conns.get_mut(&fd) else { continue };
            let close = match s.read(&mut buf) {
                // A readiness without data (allowed by epoll(7); a plain socket here never
                // shows one): nothing to do.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    spurious += 1;
                    false
                }
                Ok(0) | Err(_) => true,
                Ok(k) => {
                    // 64-byte echoes: a full send buffer is not expected; wait for it if so.
                    let _ = s.set_nonblocking(false);
                    let failed = s.write_all(&buf[..k]).is_err();
                    let _ = s.set_nonblocking(!blocking_fds);
                    failed
                }
            };
            if close {
                // SAFETY: fd is registered and open; removing it before the close.
                unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                conns.remove(&fd);
            }
        }
    }
}

fn hold(path: &str, n: u64, stop: &str) {
    raise_nofile(n * 4 + 1024);
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut conns = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        let mut s = UnixStream::connect(path).unwrap_or_else(|e| die(&format!("connect {i}: {e}")));
        echo(&mut s, i, 0).unwrap_or_else(|e| die(&format!("connection {i}: {e}")));
        slowest = slowest.max(t.elapsed());
        conns.push(s);
    }
    say(&format!("opened n={n} elapsed_us={} slowest_us={}", start.elapsed().as_micros(), slowest.as_micros()));
    let mut round = 0;
    while !Path::new(stop).exists() {
        std::thread::sleep(Duration::from_millis(200));
        round += 1;
        let start = Instant::now();
        let mut slowest = Duration::ZERO;
        for (i, s) in conns.iter_mut().enumerate() {
            let t = Instant::now();
            echo(s, i as u64, round).unwrap_or_else(|e| die(&format!("round {round}: {e}")));
            slowest = slowest.max(t.elapsed());
        }
        say(&format!("round {round} elapsed_us={} slowest_us={}", start.elapsed().as_micros(), slowest.as_micros()));
    }
    drop(conns);
    say(&format!("done ok={n} rounds={round}"));
}

/// Exchanges after the first on a kept storm connection, 2 ms apart.
const KEPT_EXCHANGES: u64 = 5;

fn storm(path: &str, seconds: u64, threads: u64) {
    raise_nofile(threads * 16 + 1024);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let path = path.to_owned();
            std::thread::spawn(move || {
                let mut times = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let id = t << 40 | i;
                    let began = Instant::now();
                    let mut s = UnixStream::connect(&path).unwrap_or_else(|e| die(&format!("storm connect: {e}")));
                    echo(&mut s, id, 0).unwrap_or_else(|e| die(&format!("storm: {e}")));
                    if i % 2 == 1 {
                        // A conversation that outlives the claim delay: claimed at its second
                        // exchange, and swapped in flight while its next ones go on.
                        for k in 1..=KEPT_EXCHANGES {
                            std::thread::sleep(Duration::from_millis(2));
                            echo(&mut s, id, k).unwrap_or_else(|e| die(&format!("storm: {e}")));
                        }
                    }
                    drop(s);
                    times.push(began.elapsed());
                    i += 1;
                }
                times
            })
        })
        .collect();
    let mut times: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|_| die("a storm thread panicked"))).collect();
    let elapsed = start.elapsed();
    times.sort();
    let count = times.len();
    let p99 = times.get(count.saturating_sub(1) * 99 / 100).copied().unwrap_or_default();
    say(&format!(
        "storm connections={count} per_s={:.0} slowest_us={} p99_us={}",
        count as f64 / elapsed.as_secs_f64(),
        times.last().copied().unwrap_or_default().as_micros(),
        p99.as_micros()
    ));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| die("usage: see the module docs")) };
    match args.get(1).map(String::as_str) {
        Some("server") if args.len() == 3 => server(&args[2], false),
        Some("server") if args.len() == 4 && args[3] == "blocking" => server(&args[2], true),
        Some("hold") if args.len() == 5 => hold(&args[2], num(3), &args[4]),
        Some("storm") if args.len() == 5 => storm(&args[2], num(3), num(4)),
        _ => die("usage: tssx-test-scale server PATH [blocking] | hold PATH N STOPFILE | storm PATH SECONDS THREADS"),
    }
}
