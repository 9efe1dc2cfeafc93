//! Sends one claim to an agent's control socket as this process, for the security tests: a
//! third process (possibly of another uid) asking for someone else's socket.
//!
//! `tssx-test-claim STATE_DIR client|server FD`: prints `reply kind=K reason=R fd=yes|no`, or
//! `no reply` if the agent closed the connection, or `held` if it answered nothing within 5 s
//! (the agent holds a claim it honours until the other end's arrives), and exits 0.
use std::{
    io::Write as _,
    os::{fd::AsRawFd as _, unix::net::UnixStream},
};

use tssx_common::control::{Reply, Request, Role, CONTROL_SOCKET, REPLY_SIZE};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(role), Some(fd)) = (args.get(1), args.get(2), args.get(3).and_then(|f| f.parse().ok())) else {
        eprintln!("usage: tssx-test-claim STATE_DIR client|server FD");
        std::process::exit(2);
    };
    let role = if role == "server" { Role::Server } else { Role::Client };
    let stream = UnixStream::connect(std::path::Path::new(dir).join(CONTROL_SOCKET)).expect("connect to the control socket");
    (&stream).write_all(&Request::claim(role, fd).encode()).expect("send claim");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("SO_RCVTIMEO");
    let mut buf = [0u8; REPLY_SIZE];
    let (n, segment) = match tssx_shm::fdpass::recv_with_fd(stream.as_raw_fd(), &mut buf) {
        Ok(got) => got,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            println!("held");
            return;
        }
        Err(e) => panic!("recvmsg: {e}"),
    };
    match Reply::decode(&buf[..n]) {
        Ok(reply) => println!("reply kind={} reason={} fd={}", reply.kind, reply.reason, if segment.is_some() { "yes" } else { "no" }),
        Err(_) => println!("no reply"),
    }
}
