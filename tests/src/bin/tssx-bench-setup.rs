//! `tssx-bench-setup`: connection set-up cost over a Unix stream socket (plain std, no tssx
//! code; run it under `LD_PRELOAD=libtssx_preload.so` to measure tssx's).
//!
//! `tssx-bench-setup serve PATH COUNT [ROUNDS]` binds PATH, prints `ready`, then COUNT times:
//! accepts, ROUNDS times reads 64 bytes and echoes them, waits for the client's close.
//! `tssx-bench-setup drive PATH COUNT [ROUNDS]` COUNT times: connects, ROUNDS times writes 64
//! bytes and reads the echo, closes; prints the mean seconds per connection (connect + accept +
//! ROUNDS 64-byte round trips + close). ROUNDS defaults to 1 (the connection set-up cost); a few
//! hundred make connections that live past the claim rule and migrate in the middle. ROUNDS may
//! also be `ROUNDS@FIRST/LATER`: the first FIRST connections make ROUNDS round trips and the
//! rest LATER (e.g. `1@70/1000`: 70 short connections, then long ones; the same on both sides).
use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    time::Instant,
};

const MESSAGE: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(path), Some(count)) = (args.get(1), args.get(2), args.get(3).and_then(|c| c.parse::<u32>().ok())) else {
        eprintln!("usage: tssx-bench-setup serve|drive PATH COUNT [ROUNDS]");
        std::process::exit(2);
    };
    let schedule = args.get(4).map_or(Some((1, u32::MAX, 1)), |r| parse_rounds(r)).unwrap_or_else(|| {
        eprintln!("tssx-bench-setup: ROUNDS must be a number, or ROUNDS@FIRST/LATER");
        std::process::exit(2);
    });
    let rounds_of = |i: u32| if i < schedule.1 { schedule.0 } else { schedule.2 };
    let mut buf = [0u8; MESSAGE];
    match mode.as_str() {
        "serve" => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).expect("bind");
            println!("ready");
            std::io::stdout().flush().expect("stdout");
            for i in 0..count {
                let (mut stream, _) = listener.accept().expect("accept");
                for _ in 0..rounds_of(i) {
                    stream.read_exact(&mut buf).expect("read");
                    stream.write_all(&buf).expect("write");
                }
                let mut rest = [0u8; 1];
                assert_eq!(stream.read(&mut rest).expect("read EOF"), 0, "client sent extra bytes");
            }
        }
        "drive" => {
            let start = Instant::now();
            let mut phases = [0f64; 3];
            for i in 0..count {
                let t0 = Instant::now();
                let mut stream = UnixStream::connect(path).expect("connect");
                let t1 = Instant::now();
                for r in 0..rounds_of(i) {
                    let mark = (i ^ r) as u8;
                    buf.fill(mark);
                    stream.write_all(&buf).expect("write");
                    stream.read_exact(&mut buf).expect("read");
                    assert!(buf.iter().all(|&b| b == mark), "corrupt echo");
                }
                let t2 = Instant::now();
                drop(stream);
                let t3 = Instant::now();
                phases[0] += (t1 - t0).as_secs_f64();
                phases[1] += (t2 - t1).as_secs_f64();
                phases[2] += (t3 - t2).as_secs_f64();
            }
            if std::env::var_os("TSSX_BENCH_PHASES").is_some() {
                let n = f64::from(count.max(1)) / 1e6;
                eprintln!("connect {:.1} us, round trip {:.1} us, close {:.1} us", phases[0] / n, phases[1] / n, phases[2] / n);
            }
            println!("{}", start.elapsed().as_secs_f64() / f64::from(count.max(1)));
        }
        _ => {
            eprintln!("usage: tssx-bench-setup serve|drive PATH COUNT [ROUNDS]");
            std::process::exit(2);
        }
    }
}

/// `R` (every connection R round trips) or `R@FIRST/LATER` (see the module documentation), as
/// (rounds of the first ones, how many first ones, rounds of the rest).
fn parse_rounds(text: &str) -> Option<(u32, u32, u32)> {
    match text.split_once('@') {
        None => text.parse().ok().map(|r| (r, u32::MAX, r)),
        Some((first, rest)) => {
            let (count, later) = rest.split_once('/')?;
            Some((first.parse().ok()?, count.parse().ok()?, later.parse().ok()?))
        }
    }
}
