//! Deciding whether a socket is on a watched path, and claiming it from the agent.
//!
//! The agent publishes its watched paths in `/run/tssx/paths` and listens on
//! `/run/tssx/agent.sock`. No agent (no file, or nobody listening): the hook does nothing, at
//! once, without waiting.

use std::os::{
    fd::{FromRawFd as _, OwnedFd},
    unix::ffi::OsStrExt as _,
};

use tssx_common::control::{Reply, ReplyKind, Request, Role, REPLY_SIZE};

use crate::real;

/// The agent's default state directory (see `tssx-agent --state-dir`).
const STATE_DIR: &str = "/run/tssx";
/// The watched paths the agent publishes: `STATE_DIR/paths`.
const PATHS_FILE: &std::ffi::CStr = c"/run/tssx/paths";
/// How long a claim may wait for the agent's answer.
const CLAIM_TIMEOUT_SECS: libc::time_t = 3;

/// The watched-path name of a Unix socket address: `/path` or `@abstract`; `None` otherwise.
///
/// # Safety
/// `addr` must point at `len` readable bytes.
pub unsafe fn unix_name(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<String> {
    let len = len as usize;
    let family_len = std::mem::size_of::<libc::sa_family_t>();
    if addr.is_null() || len <= family_len || len > std::mem::size_of::<libc::sockaddr_un>() {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable bytes; sockaddr_un is at least that long.
    let un = unsafe { &*addr.cast::<libc::sockaddr_un>() };
    if un.sun_family != libc::AF_UNIX as libc::sa_family_t {
        return None;
    }
    let path: Vec<u8> = un.sun_path[..len - family_len].iter().map(|&c| c as u8).collect();
    if path.first() == Some(&0) {
        return Some(format!("@{}", String::from_utf8_lossy(&path[1..])));
    }
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    Some(String::from_utf8_lossy(&path[..end]).into_owned())
}

/// What identifies one version of the published paths file: the agent replaces it by rename
/// (a new inode) and never rewrites it in place, so an unchanged `(dev, inode, mtime, size)` means
/// unchanged contents.
type FileVersion = (u64, u64, i64, i64, i64);

/// The paths file last read, and the version it was read at.
static PATHS: std::sync::Mutex<Option<(FileVersion, Vec<String>)>> = std::sync::Mutex::new(None);

/// True if the agent currently watches `name`.
///
/// One `stat` per call: the list is read again only when the file changed. The cache's lock is
/// only tried, never waited for (a process that forked while another thread held it must not
/// hang); when busy, the file is read directly.
pub fn watched(name: &str) -> bool {
    let path = PATHS_FILE;
    // SAFETY: `stat` is plain data; the kernel fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a live out-pointer.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } != 0 {
        return false; // no agent
    }
    let version: FileVersion = (st.st_dev, st.st_ino, st.st_mtime, st.st_mtime_nsec, st.st_size);
    let read = || std::fs::read_to_string(std::ffi::OsStr::from_bytes(path.to_bytes())).ok();
    let Ok(mut cache) = PATHS.try_lock() else {
        return read().is_some_and(|list| list.lines().any(|line| line == name));
    };
    match &*cache {
        Some((seen, list)) if *seen == version => list.iter().any(|line| line == name),
        _ => {
            let Some(list) = read() else { return false };
            let list: Vec<String> = list.lines().map(str::to_owned).collect();
            let found = list.iter().any(|line| line == name);
            *cache = Some((version, list));
            found
        }
    }
}

/// The local name of socket `fd` (for an accepted socket: the listener's path).
pub fn local_name(fd: libc::c_int) -> Option<String> {
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`.
    if unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) } != 0 {
        return None;
    }
    // SAFETY: the kernel filled `len` bytes of `addr`.
    unsafe { unix_name((&addr as *const libc::sockaddr_un).cast(), len) }
}

/// True if `fd` is a stream socket (datagram and seqpacket sockets stay plain).
pub fn stream(fd: libc::c_int) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`.
    let ok = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&mut kind as *mut libc::c_int).cast(), &mut len) } == 0;
    ok && kind == libc::SOCK_STREAM
}

thread_local! {
    /// Set while this thread talks to the agent: the segment fd in the agent's reply is the
    /// hook's own, not a socket passed by another process (see `pass::received`).
    static TALKING_TO_AGENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is inside [`ask`].
pub fn talking_to_agent() -> bool {
    TALKING_TO_AGENT.with(std::cell::Cell::get)
}

/// Sends `request` to the agent; returns the reply, the segment fd sent with a swap, and the
/// control connection (the agent keeps a pending client's open until it decides).
pub fn ask(request: Request) -> Option<(Reply, Option<OwnedFd>, OwnedFd)> {
    TALKING_TO_AGENT.with(|t| t.set(true));
    let answer = ask_agent(request);
    TALKING_TO_AGENT.with(|t| t.set(false));
    answer
}

fn ask_agent(request: Request) -> Option<(Reply, Option<OwnedFd>, OwnedFd)> {
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a fresh descriptor we own; dropping closes it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = format!("{STATE_DIR}/{}", tssx_common::control::CONTROL_SOCKET);
    for (dst, &src) in addr.sun_path.iter_mut().zip(path.as_bytes()) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; the real connect is not hooked.
    if unsafe { real::connect(raw, (&addr as *const libc::sockaddr_un).cast(), len) } != 0 {
        return None; // no agent: plain, at once
    }
    // Only the reply is waited for: the request is the first and only message on a fresh
    // connection, far below its send buffer, so sending it never blocks.
    let timeout = libc::timeval { tv_sec: CLAIM_TIMEOUT_SECS, tv_usec: 0 };
    // SAFETY: passes a live timeval of the stated size.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    tssx_shm::fdpass::send_with_fd(raw, &request.encode(), None).ok()?;
    let mut buf = [0u8; REPLY_SIZE];
    let (n, fd) = tssx_shm::fdpass::recv_with_fd(raw, &mut buf).ok()?;
    let reply = Reply::decode(&buf[..n]).ok()?;
    Some((reply, fd.map(OwnedFd::from), sock))
}

/// Claims `fd` as the `role` end; if the agent says swap: the segment fd, and for a client the
/// control connection, whose EOF while the segment is pending means the agent died.
pub fn claim(role: Role, fd: libc::c_int) -> Option<(OwnedFd, Option<OwnedFd>)> {
    let (reply, segment, sock) = ask(Request::claim(role, fd))?;
    if reply.reply_kind() != Some(ReplyKind::Swap) {
        return None;
    }
    Some((segment?, (role == Role::Client).then_some(sock)))
}
