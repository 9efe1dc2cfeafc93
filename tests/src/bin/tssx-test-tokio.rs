//! An echo server and clients on tokio's runtime, over a Unix stream socket: an application as
//! the Rust ecosystem writes them. mio (tokio's I/O driver) registers every socket through a
//! duplicate of its epoll fd (`Registry::try_clone`, `F_DUPFD_CLOEXEC`) and waits on the
//! original, so the hook must see both numbers as one epoll instance.
//!
//! ```text
//! tssx-test-tokio server PATH multi|current          echo every byte back until EOF
//! tssx-test-tokio client PATH multi|current N ROUNDS N concurrent connections, each ROUNDS
//!                                                     messages of 1 B to 300 KB, each echoed in
//!                                                     full before the next
//! ```
//!
//! The client prints counts and a checksum of each direction, never timings: the plain and
//! swapped runs' outputs must be identical.

use std::{path::PathBuf, process::ExitCode};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};

/// FNV-1a, 64-bit, continued over `bytes`.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    hash
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

async fn serve(path: PathBuf) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (mut socket, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = term.recv() => return Ok(()),
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// One connection's session: what it sent and got back (bytes, checksums).
async fn session(path: PathBuf, index: u64, rounds: u64) -> std::io::Result<(u64, u64, u64, u64)> {
    let mut socket = UnixStream::connect(&path).await?;
    let (mut sent, mut got, mut out, mut back) = (0u64, 0u64, FNV_START, FNV_START);
    let mut seed = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = [1, 64, 1000, 70_000, 300_000][(seed % 5) as usize] + (seed >> 8) as usize % 50;
        let msg: Vec<u8> = (0..len).map(|i| (seed >> (i % 56)) as u8 ^ i as u8).collect();
        out = fnv(out, &msg);
        sent += len as u64;
        let (mut reader, mut writer) = socket.split();
        let write = writer.write_all(&msg);
        let read = async {
            let mut left = len;
            while left > 0 {
                let n = reader.read(&mut buf[..left.min(1 << 16)]).await?;
                if n == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "EOF before the echo"));
                }
                back = fnv(back, &buf[..n]);
                got += n as u64;
                left -= n;
            }
            Ok(())
        };
        let (w, r) = tokio::join!(write, read);
        w?;
        r?;
    }
    socket.shutdown().await?;
    let tail = socket.read(&mut buf).await?;
    got += tail as u64;
    Ok((sent, got, out, back))
}

async fn clients(path: PathBuf, n: u64, rounds: u64) -> std::io::Result<()> {
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(session(path.clone(), i, rounds))).collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (sent, got, out, back) = task.await.map_err(std::io::Error::other)??;
        let same = if out == back && sent == got { "identical" } else { "DIFFERENT" };
        println!("connection {i}: sent {sent}, got {got}, echo {same} ({out:016x})");
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        eprintln!("usage: tssx-test-tokio server PATH multi|current | client PATH multi|current N ROUNDS");
        ExitCode::from(2)
    };
    if args.len() < 4 {
        return usage();
    }
    let mut runtime =
        if args[3] == "current" { tokio::runtime::Builder::new_current_thread() } else { tokio::runtime::Builder::new_multi_thread() };
    let runtime = runtime.worker_threads(4).enable_all().build().expect("a tokio runtime");
    let path = PathBuf::from(&args[2]);
    let done = match (args[1].as_str(), args.get(4), args.get(5)) {
        ("server", _, _) => runtime.block_on(serve(path)),
        ("client", Some(n), Some(rounds)) => match (n.parse(), rounds.parse()) {
            (Ok(n), Ok(rounds)) => runtime.block_on(clients(path, n, rounds)),
            _ => return usage(),
        },
        _ => return usage(),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tssx-test-tokio: {e}");
            ExitCode::FAILURE
        }
    }
}
