//! Requests on an agent's control socket, sent exactly as the hook sends them.

use std::{
    io::Write as _,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::net::UnixStream,
    },
    path::Path,
};

use tssx_common::control::{Reply, Request, Role, CONTROL_SOCKET, REPLY_SIZE};
use tssx_shm::fdpass;

/// Sends `request` on a fresh connection to the control socket in `state_dir` and returns the
/// reply, the fd sent with it (a segment's memfd) and the connection, still open: the agent
/// keeps a pending client claim's connection open until it decides, and closes it then.
/// Panics if the agent does not answer with a valid reply.
pub fn ask_and_keep(state_dir: &Path, request: &[u8]) -> (Reply, Option<OwnedFd>, UnixStream) {
    let socket = state_dir.join(CONTROL_SOCKET);
    let stream = UnixStream::connect(&socket).unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    (&stream).write_all(request).expect("sending the request");
    let mut buf = [0u8; REPLY_SIZE];
    let (n, fd) = fdpass::recv_with_fd(stream.as_raw_fd(), &mut buf).expect("receiving the reply");
    let reply = Reply::decode(&buf[..n]).unwrap_or_else(|e| panic!("not a valid reply ({e:?}): {:?}", &buf[..n]));
    (reply, fd.map(OwnedFd::from), stream)
}

/// As [`ask_and_keep`], closing the connection: the reply and the fd sent with it.
pub fn ask(state_dir: &Path, request: &[u8]) -> (Reply, Option<OwnedFd>) {
    let (reply, fd, _) = ask_and_keep(state_dir, request);
    (reply, fd)
}

/// Claims `fd` of this process as the `role` end of its connection: [`ask`] with
/// `Request::claim(role, fd)`.
pub fn claim(state_dir: &Path, role: Role, fd: i32) -> (Reply, Option<OwnedFd>) {
    ask(state_dir, &Request::claim(role, fd).encode())
}
