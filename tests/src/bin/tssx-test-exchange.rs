//! Request/answer exchanges with a slow answer, for the claim-rule tests (plain std, no tssx
//! code).
//!
//! `tssx-test-exchange server PATH DELAY_MS`: binds PATH, prints `ready`, then serves every
//! connection on a thread of its own: for each 64-byte request it sleeps DELAY_MS and sends the
//! request back with every byte incremented, until EOF.
//!
//! `tssx-test-exchange client PATH CONNECTIONS EXCHANGES`: opens CONNECTIONS connections one
//! after the other; on each it makes EXCHANGES exchanges (a request, its whole answer checked)
//! and closes. Prints `done exchanges=N`; exits non-zero on any failure.
use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    thread,
    time::Duration,
};

const MSG: usize = 64;

fn request(conn: u64, i: u64) -> [u8; MSG] {
    std::array::from_fn(|k| (conn.wrapping_mul(31) ^ i.wrapping_mul(131)).wrapping_add(k as u64 * 7) as u8)
}

fn serve(mut stream: UnixStream, delay: Duration) {
    let mut buf = [0u8; MSG];
    while stream.read_exact(&mut buf).is_ok() {
        thread::sleep(delay);
        let answer: Vec<u8> = buf.iter().map(|b| b.wrapping_add(1)).collect();
        if stream.write_all(&answer).is_err() {
            return;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("server"), Some(path)) => {
            let delay = Duration::from_millis(arg(3).expect("DELAY_MS"));
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).expect("bind");
            println!("ready");
            for stream in listener.incoming() {
                let stream = stream.expect("accept");
                thread::spawn(move || serve(stream, delay));
            }
        }
        (Some("client"), Some(path)) => {
            let (conns, exchanges) = (arg(3).expect("CONNECTIONS"), arg(4).expect("EXCHANGES"));
            let mut done = 0;
            for c in 0..conns {
                let mut stream = UnixStream::connect(path).expect("connect");
                for i in 0..exchanges {
                    let req = request(c, i);
                    stream.write_all(&req).expect("write");
                    let mut answer = [0u8; MSG];
                    stream.read_exact(&mut answer).expect("read the answer");
                    let want: Vec<u8> = req.iter().map(|b| b.wrapping_add(1)).collect();
                    assert_eq!(answer.as_slice(), want.as_slice(), "connection {c}, exchange {i}");
                    done += 1;
                }
            }
            println!("done exchanges={done}");
        }
        _ => {
            eprintln!("usage: tssx-test-exchange server PATH DELAY_MS | client PATH CONNECTIONS EXCHANGES");
            std::process::exit(2);
        }
    }
}
