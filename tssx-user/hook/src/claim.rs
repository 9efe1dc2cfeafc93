//! Claiming a connection's segment from the agent, without ever waiting for it.
//!
//! The agent listens on `/run/tssx/agent.sock`. A claim is one request on a fresh non-blocking
//! control connection: [`send`] connects and sends it (a local `connect` and a 24-byte `send`,
//! neither of which can block), and [`poll`] looks for the answer on later calls, never
//! waiting. The agent answers once both ends claimed (the segment comes with the answer), or at
//! once when it refuses; it closes the control connection when the claim is over (the socket
//! closed, the agent stopped): EOF means "stay plain". No agent (nobody listening): the claim
//! fails at once and the socket stays a socket.

use tssx_common::control::{Reply, ReplyKind, Request, Role, CONTROL_SOCKET, REPLY_SIZE};
use tssx_shm::{fdpass, sys};

use crate::sys::Fd;

/// The agent's default state directory (see `tssx-agent --state-dir`).
const STATE_DIR: &str = "/run/tssx";

/// Why a claim could not be sent.
pub enum Unreachable {
    /// Nobody listens on the control socket (or it cannot be reached at all).
    NoAgent,
    /// The agent's backlog is full (or the hook is short of fds): try again later.
    Busy,
}

/// Sends `request` on a new non-blocking control connection.
pub fn send(request: Request) -> Result<Fd, Unreachable> {
    let busy = |e: sys::Errno| {
        if e.0 == libc::EAGAIN || e.0 == libc::EMFILE || e.0 == libc::ENFILE || e.0 == libc::ENOBUFS {
            Unreachable::Busy
        } else {
            Unreachable::NoAgent
        }
    };
    let sock = sys::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0).map_err(busy)?;
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = concat_path();
    for (dst, &src) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes. A Unix `connect` completes at once
    // or fails (EAGAIN when the agent's backlog is full): it never leaves a connection half-open.
    unsafe { sys::connect(sock.raw(), (&addr as *const libc::sockaddr_un).cast(), len) }.map_err(busy)?;
    // The request is the first and only message on a fresh connection, far below its send
    // buffer: it goes out whole at once.
    fdpass::send_with_fd(sock.raw(), &request.encode(), None).map_err(|_| Unreachable::NoAgent)?;
    Ok(sock)
}

fn concat_path() -> String {
    format!("{STATE_DIR}/{CONTROL_SOCKET}")
}

/// What [`poll`] found on a claim's control connection.
pub enum Answer {
    /// Nothing yet.
    NotYet,
    /// Swap: the segment's memfd.
    Swap(Fd),
    /// Claim again later (after the agent's reason went away, e.g. a forked parent closed).
    Retry,
    /// Stay plain: refused, the claim is over, or the agent is gone.
    Plain,
    /// The connection ended without an answer: the agent was serving as many claims as it
    /// serves at once and closed this one unserved, or it died. Worth another claim later
    /// (a dead agent is then seen at once: nobody listens).
    Dropped,
}

/// Looks for the agent's answer on `control` (a claim's socket) without waiting.
pub fn poll(control: libc::c_int) -> Answer {
    let mut buf = [0u8; REPLY_SIZE];
    match fdpass::recv_with_fd_flags(control, &mut buf, libc::MSG_DONTWAIT) {
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) || e.raw_os_error() == Some(libc::EINTR) => Answer::NotYet,
        // The agent closed it with the request unread (a claim beyond those it serves at
        // once): af_unix reports that as a reset, not as EOF.
        Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => Answer::Dropped,
        Err(_) => Answer::Plain,
        Ok((0, None)) => Answer::Dropped,
        Ok((n, fd)) => match Reply::decode(&buf[..n]).ok().and_then(|r| r.reply_kind()) {
            Some(ReplyKind::Swap) => fd.map_or(Answer::Plain, Answer::Swap),
            Some(ReplyKind::Retry) => Answer::Retry,
            _ => Answer::Plain,
        },
    }
}

/// A request to claim `fd` as the `role` end (`forked`: see [`tssx_common::control::CLAIM_FORKED`]).
pub fn request(role: Role, fd: libc::c_int, forked: bool) -> Request {
    Request::claim_with(role, fd, if forked { tssx_common::control::CLAIM_FORKED } else { 0 })
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, os::fd::AsRawFd as _, os::unix::net::UnixStream};

    use super::{poll, Answer};

    #[test]
    fn a_claim_closed_unread_is_dropped_not_plain() {
        // The agent at its cap accepts a claim's connection and closes it without reading the
        // request: af_unix reports a reset to the claimant, which must try again later.
        let (mut hook, agent) = UnixStream::pair().unwrap();
        hook.write_all(&[1; 16]).unwrap();
        drop(agent);
        assert!(matches!(poll(hook.as_raw_fd()), Answer::Dropped));
        // Closed after reading it, with no answer: end of file, dropped as well.
        let (mut hook, agent) = UnixStream::pair().unwrap();
        hook.write_all(&[1; 16]).unwrap();
        let mut buf = [0u8; 16];
        std::io::Read::read_exact(&mut &agent, &mut buf).unwrap();
        drop(agent);
        assert!(matches!(poll(hook.as_raw_fd()), Answer::Dropped));
        // Not answered yet.
        let (hook, _agent) = UnixStream::pair().unwrap();
        assert!(matches!(poll(hook.as_raw_fd()), Answer::NotYet));
    }
}
