//! Tiny memcached text-protocol client used by the real-application tests (plain std, no tssx
//! code), since Debian's memcached ships no client for Unix sockets.
//!
//! `tssx-test-memcache PATH [ROUNDS]`: connects to the memcached socket at PATH (one blocking
//! connection) and runs a fixed script of commands: set/get/append/incr/decr/delete/gets/add,
//! then ROUNDS (default 100) set+get pairs with values from 1 B to 64 KiB, each checked.
//! Prints every command's reply (with `\r\n` shown as a line break), the value checks' total
//! and `ok`, so that two runs can be compared line by line. Exits non-zero on any mismatch.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
};

/// Reads one reply: lines up to a terminal line (`END`, `STORED`, a number, ...).
fn reply(reader: &mut BufReader<UnixStream>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read reply");
        assert!(n > 0, "memcached closed the connection");
        all.push_str(&line);
        let word = line.trim_end();
        if let Some(rest) = word.strip_prefix("VALUE ") {
            // `VALUE key flags bytes [cas]`: the data block, then more lines up to END.
            let bytes: usize = rest.split(' ').nth(2).and_then(|b| b.parse().ok()).expect("VALUE length");
            let mut data = vec![0u8; bytes + 2];
            std::io::Read::read_exact(reader, &mut data).expect("read value");
            all.push_str(&String::from_utf8_lossy(&data));
            continue;
        }
        let terminal = ["END", "STORED", "NOT_STORED", "EXISTS", "NOT_FOUND", "DELETED", "TOUCHED", "OK", "ERROR"].contains(&word)
            || word.starts_with("CLIENT_ERROR")
            || word.starts_with("SERVER_ERROR")
            || word.starts_with("VERSION")
            || word.bytes().all(|b| b.is_ascii_digit());
        if terminal {
            return all;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: tssx-test-memcache PATH [ROUNDS]");
        std::process::exit(2);
    };
    let rounds: usize = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(100);
    let stream = UnixStream::connect(path).expect("connect");
    let mut writer = stream.try_clone().expect("try_clone");
    let mut reader = BufReader::new(stream);
    let mut ask = |cmd: &str| -> String {
        writer.write_all(cmd.as_bytes()).expect("write command");
        reply(&mut reader)
    };
    let script = [
        "flush_all\r\n",
        "set greeting 5 0 5\r\nhello\r\n",
        "get greeting\r\n",
        "append greeting 0 0 6\r\n world\r\n",
        "get greeting\r\n",
        "add greeting 0 0 1\r\nx\r\n",
        "set counter 0 0 2\r\n10\r\n",
        "incr counter 32\r\n",
        "decr counter 2\r\n",
        "get counter missing\r\n",
        "delete greeting\r\n",
        "delete greeting\r\n",
        "get greeting counter\r\n",
    ];
    for cmd in script {
        print!("> {}\n< {}", cmd.lines().next().unwrap_or(""), ask(cmd).replace("\r\n", "\n"));
    }
    let mut bytes = 0usize;
    for i in 0..rounds {
        let size = 1 + (i * 7919) % (64 * 1024);
        let value: String = (0..size).map(|j| char::from(b'a' + ((i + j) % 26) as u8)).collect();
        let stored = ask(&format!("set k{i} {i} 0 {size}\r\n{value}\r\n"));
        assert_eq!(stored, "STORED\r\n", "set k{i}");
        let got = ask(&format!("get k{i}\r\n"));
        assert_eq!(got, format!("VALUE k{i} {i} {size}\r\n{value}\r\nEND\r\n"), "get k{i}");
        bytes += size;
    }
    println!("checked {rounds} values, {bytes} bytes");
    println!("ok");
}
