//! Requests on an agent's control socket, sent exactly as the hook sends them.
//!
//! A claim is answered at once when the agent refuses it (or says "retry"), and otherwise held,
//! unanswered, until the other end's claim arrives: [`claim`] is for the first kind,
//! [`send_claim`] and [`await_answer`] for the second.

use std::{
    io::Write as _,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::net::UnixStream,
    },
    path::Path,
    time::Duration,
};

use tssx_common::control::{Reply, Request, Role, CONTROL_SOCKET, REPLY_SIZE};
use tssx_shm::fdpass;

/// Sends `request` on a fresh connection to the control socket in `state_dir` and returns the
/// reply, the fd sent with it (a segment's memfd) and the connection, still open. Panics if the
/// agent does not answer with a valid reply (within 10 s).
pub fn ask_and_keep(state_dir: &Path, request: &[u8]) -> (Reply, Option<OwnedFd>, UnixStream) {
    let stream = send(state_dir, request);
    match await_answer(&stream, Duration::from_secs(10)) {
        Answer::Reply(reply, fd) => (reply, fd, stream),
        other => panic!("no reply to {request:?}: {other:?}"),
    }
}

/// As [`ask_and_keep`], closing the connection: the reply and the fd sent with it.
pub fn ask(state_dir: &Path, request: &[u8]) -> (Reply, Option<OwnedFd>) {
    let (reply, fd, _) = ask_and_keep(state_dir, request);
    (reply, fd)
}

/// Claims `fd` of this process as the `role` end of its connection and waits for the answer
/// (10 s at most): for claims the agent answers at once (refusals). Panics without an answer.
pub fn claim(state_dir: &Path, role: Role, fd: i32) -> (Reply, Option<OwnedFd>) {
    ask(state_dir, &Request::claim(role, fd).encode())
}

/// Sends `Request::claim_with(role, fd, flags)` and returns the control connection without
/// waiting for the answer (the agent holds a claim until the other end's arrives).
pub fn send_claim(state_dir: &Path, role: Role, fd: i32, flags: u32) -> UnixStream {
    send(state_dir, &Request::claim_with(role, fd, flags).encode())
}

fn send(state_dir: &Path, request: &[u8]) -> UnixStream {
    let socket = state_dir.join(CONTROL_SOCKET);
    let stream = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    (&stream).write_all(request).expect("sending the request");
    stream
}

/// What arrived on a claim's control connection.
#[derive(Debug)]
pub enum Answer {
    /// A reply, with the fd that came with it (a segment's memfd).
    Reply(Reply, Option<OwnedFd>),
    /// The agent closed the connection without a reply.
    Closed,
    /// Nothing within the time given (the claim is held).
    Nothing,
}

impl Answer {
    /// The reply, or a panic that says what came instead.
    pub fn reply(self) -> (Reply, Option<OwnedFd>) {
        match self {
            Answer::Reply(reply, fd) => (reply, fd),
            other => panic!("expected a reply, got {other:?}"),
        }
    }
}

/// Waits up to `timeout` for the agent's answer on a claim's control connection. Panics on bytes
/// that are not a valid reply.
pub fn await_answer(stream: &UnixStream, timeout: Duration) -> Answer {
    stream.set_read_timeout(Some(timeout)).expect("setting a read timeout");
    let mut buf = [0u8; REPLY_SIZE];
    match fdpass::recv_with_fd(stream.as_raw_fd(), &mut buf) {
        Ok((0, _)) => Answer::Closed,
        Ok((n, fd)) => {
            let reply = Reply::decode(&buf[..n]).unwrap_or_else(|e| panic!("not a valid reply ({e:?}): {:?}", &buf[..n]));
            Answer::Reply(reply, fd.map(OwnedFd::from))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => Answer::Nothing,
        Err(e) => panic!("receiving the reply: {e}"),
    }
}
