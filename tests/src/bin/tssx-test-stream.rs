//! Full-duplex stream checker used by the end-to-end tests (plain std sockets; its generator is
//! the tests' [`Rng`]).
//!
//! `tssx-test-stream server|client PATH BYTES SEED`: the server accepts one connection on PATH,
//! the client connects to it. Each side sends BYTES pseudo-random bytes (xorshift64* from SEED and
//! its role) in random write sizes from 1 B to 1 MiB, while reading the peer's BYTES in random
//! read sizes and checking every byte against the same generator. Then the client closes and
//! the server must read EOF. Prints `ok sent=N received=N` and exits 0, or exits non-zero.
//! An optional fifth argument ACCEPT_DELAY_MS makes the server wait that long between `listen`
//! and `accept` (the client connects, and writes, meanwhile).
use std::{
    io::{Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    thread,
};

use tssx_tests::Rng;

/// Deterministic byte stream over the tests' [`Rng`]: the same bytes whatever the chunk sizes
/// (a word's bytes left over by one call start the next).
struct Stream {
    rng: Rng,
    word: [u8; 8],
    used: usize,
}

impl Stream {
    fn new(seed: u64) -> Self {
        Self { rng: Rng::new(seed), word: [0; 8], used: 8 }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut at = 0;
        while at < buf.len() {
            if self.used == 8 {
                self.word = self.rng.next().to_le_bytes();
                self.used = 0;
            }
            let n = (8 - self.used).min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&self.word[self.used..self.used + n]);
            self.used += n;
            at += n;
        }
    }

    /// A size from 1 to 1 MiB, log-uniform so that tiny and huge transfers both occur.
    fn size(&mut self) -> usize {
        let bits = self.rng.below(21); // 2^0 .. 2^20
        1 + self.rng.below(1 << bits) as usize
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(role), Some(path), Some(bytes), Some(seed)) = (
        args.get(1).cloned(),
        args.get(2).cloned(),
        args.get(3).and_then(|a| a.parse::<u64>().ok()),
        args.get(4).and_then(|a| a.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: tssx-test-stream server|client PATH BYTES SEED");
        std::process::exit(2);
    };
    let server = role == "server";
    let stream = if server {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        println!("ready");
        std::io::stdout().flush().unwrap();
        if let Some(ms) = args.get(5).and_then(|a| a.parse::<u64>().ok()) {
            thread::sleep(std::time::Duration::from_millis(ms));
        }
        listener.accept().expect("accept").0
    } else {
        UnixStream::connect(&path).expect("connect")
    };
    // Each direction's content and chunking come from its sender's role.
    let my_seed = seed.wrapping_mul(2).wrapping_add(u64::from(server)) | 1;
    let peer_seed = seed.wrapping_mul(2).wrapping_add(u64::from(!server)) | 1;
    let mut writer = stream.try_clone().expect("try_clone");
    let sender = thread::spawn(move || {
        let (mut data, mut sizes) = (Stream::new(my_seed), Stream::new(my_seed ^ 0xABCD));
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        while sent < bytes {
            let n = sizes.size().min((bytes - sent) as usize);
            data.fill(&mut buf[..n]);
            writer.write_all(&buf[..n]).expect("write");
            sent += n as u64;
        }
        sent
    });
    let mut reader = stream;
    let (mut expect, mut sizes) = (Stream::new(peer_seed), Stream::new(peer_seed ^ 0x1234));
    let mut buf = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut received = 0u64;
    while received < bytes {
        let n = sizes.size().min((bytes - received) as usize);
        let got = reader.read(&mut buf[..n]).expect("read");
        assert!(got > 0, "EOF after {received} of {bytes} bytes");
        expect.fill(&mut want[..got]);
        assert!(buf[..got] == want[..got], "corrupt or reordered bytes at offset {received}");
        received += got as u64;
    }
    let sent = sender.join().expect("sender");
    if server {
        // The client closes when done: the server must then see EOF, and nothing extra.
        let mut extra = [0u8; 16];
        assert_eq!(reader.read(&mut extra).expect("read at EOF"), 0, "expected EOF");
    }
    println!("ok sent={sent} received={received}");
}
