//! Claiming a connection's segment from the agent over its control socket.
//!
//! The agent listens on `/run/tssx/agent.sock`. No agent (nobody listening): the claim fails at
//! once and the socket stays a socket.

use tssx_common::control::{Reply, ReplyKind, Request, Role, CONTROL_SOCKET, REPLY_SIZE};
use tssx_shm::{fdpass, sys};

use crate::sys::Fd;

/// The agent's default state directory (see `tssx-agent --state-dir`).
const STATE_DIR: &str = "/run/tssx";
/// How long a claim may wait for the agent's answer.
const CLAIM_TIMEOUT_SECS: libc::time_t = 3;

/// Sends `request` to the agent; returns the reply, the segment fd sent with a swap, and the
/// control connection (the agent keeps a pending client's open until it decides).
pub fn ask(request: Request) -> Option<(Reply, Option<Fd>, Fd)> {
    let sock = sys::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0).ok()?;
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = format!("{STATE_DIR}/{CONTROL_SOCKET}");
    for (dst, &src) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    unsafe { sys::connect(sock.raw(), (&addr as *const libc::sockaddr_un).cast(), len) }.ok()?; // no agent: plain, at once
                                                                                                // Only the reply is waited for: the request is the first and only message on a fresh
                                                                                                // connection, far below its send buffer, so sending it never blocks.
    let timeout = libc::timeval { tv_sec: CLAIM_TIMEOUT_SECS, tv_usec: 0 };
    sys::setsockopt(sock.raw(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout).ok()?;
    fdpass::send_with_fd(sock.raw(), &request.encode(), None).ok()?;
    let mut buf = [0u8; REPLY_SIZE];
    let (n, fd) = fdpass::recv_with_fd(sock.raw(), &mut buf).ok()?;
    let reply = Reply::decode(&buf[..n]).ok()?;
    Some((reply, fd, sock))
}

/// Claims `fd` as the `role` end; if the agent says swap: the segment fd, and for a client the
/// control connection, whose EOF while the segment is pending means the agent died.
pub fn claim(role: Role, fd: libc::c_int) -> Option<(Fd, Option<Fd>)> {
    let (reply, segment, sock) = ask(Request::claim(role, fd))?;
    if reply.reply_kind() != Some(ReplyKind::Swap) {
        return None;
    }
    Some((segment?, (role == Role::Client).then_some(sock)))
}
