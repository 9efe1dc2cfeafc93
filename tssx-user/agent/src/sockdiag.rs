//! The one `NETLINK_SOCK_DIAG` query the agent makes about Unix sockets: what the kernel knows of
//! one socket, by inode ([`unix_socket`]): its type, its peer (`UNIX_DIAG_PEER`) and its own name
//! (`UNIX_DIAG_NAME`).
//!
//! The agent pairs a client's claim with a server's by socket inodes: the client socket's peer is
//! the server's accepted socket from the moment `connect()` returns, before `accept()` (the
//! socket inode of a process's fd comes from `/proc`, see `control::host`). An accepted socket
//! carries its listener's name (the kernel copies the address on `connect`), so "this socket is
//! named like a watched path and has a peer" proves a server end, and "this socket's peer is
//! named like a watched path" a client end, when the agent holds no eBPF event for a claim.
//!
//! Written by hand rather than with `netlink-packet-sock-diag`: the query is one fixed-size
//! request and its reply is walked in a few dozen lines, while that crate is only the message
//! codec (the socket and the error handling would stay here) and would add four crates (itself,
//! `netlink-packet-core`, `zerocopy`, `zerocopy-derive`), none with a declared minimum Rust
//! version, to a daemon that runs as root.

use std::{io, mem::size_of};

/// `SOCK_DIAG_BY_FAMILY` netlink message type (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `UDIAG_SHOW_NAME` (linux/unix_diag.h).
const UDIAG_SHOW_NAME: u32 = 0x1;
/// `UDIAG_SHOW_VFS`.
const UDIAG_SHOW_VFS: u32 = 0x2;
/// `UDIAG_SHOW_PEER`.
const UDIAG_SHOW_PEER: u32 = 0x4;
/// `UNIX_DIAG_VFS` attribute type (`struct unix_diag_vfs`: the socket file's inode and device).
const UNIX_DIAG_VFS: u16 = 1;
/// `UNIX_DIAG_NAME` attribute type (the socket's `sun_path` bytes).
const UNIX_DIAG_NAME: u16 = 0;
/// `UNIX_DIAG_PEER` attribute type (the peer's inode, `u32`).
const UNIX_DIAG_PEER: u16 = 2;

/// `TCP_ESTABLISHED`: the state of a connected Unix socket in sock_diag.
pub const ESTABLISHED: u8 = 1;

/// What the kernel says about one Unix socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixSocket {
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub kind: u8,
    /// Its state: [`ESTABLISHED`] once connected (a client from `connect()` on, before its
    /// server accepted), `TCP_LISTEN` for a listener, `TCP_CLOSE` otherwise.
    pub state: u8,
    /// The peer's inode, if it has one the kernel can name: a client whose connection still
    /// waits in its listener's accept queue has a peer, but one without an inode yet (the
    /// server's socket gets it from `accept()`), so `None` here.
    pub peer: Option<u32>,
    /// Its own address as `sun_path` bytes: a filesystem path without its terminating NUL, or an
    /// abstract name with its leading NUL; `None` if it has no address (an unbound client).
    pub name: Option<Vec<u8>>,
    /// The socket file a filesystem name stands for, `(device, inode)` as `stat` gives them:
    /// for a bound socket its own file, for an accepted one its listener's (the kernel copies
    /// the path on `connect`). This is what a relative name is checked against.
    pub file: Option<(u64, u64)>,
    /// Its cookie (`SO_COOKIE`): what the kernel watcher's connect hook names a client socket
    /// by.
    pub cookie: u64,
}

impl UnixSocket {
    /// Whether it is a stream socket.
    pub fn is_stream(&self) -> bool {
        i32::from(self.kind) == libc::SOCK_STREAM
    }

    /// Whether it is connected.
    pub fn is_connected(&self) -> bool {
        self.state == ESTABLISHED
    }
}

/// `struct unix_diag_req`.
#[repr(C)]
struct UnixDiagReq {
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

/// `struct unix_diag_msg`.
#[repr(C)]
struct UnixDiagMsg {
    family: u8,
    kind: u8,
    state: u8,
    pad: u8,
    ino: u32,
    cookie: [u32; 2],
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    body: UnixDiagReq,
}

/// A `NETLINK_SOCK_DIAG` socket with `body` sent on it (flags: `NLM_F_REQUEST` plus `extra`).
fn diag_request(body: UnixDiagReq, extra_flags: u16) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: libc::NLM_F_REQUEST as u16 | extra_flags,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body,
    };
    // SAFETY: sends `size_of::<Request>()` bytes from a live, initialised struct.
    let sent = unsafe { libc::send(raw, (&request as *const Request).cast(), size_of::<Request>(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// What the kernel says about Unix socket `ino` (one request with `UDIAG_SHOW_PEER` and
/// `UDIAG_SHOW_NAME`); `Ok(None)` if there is no such socket (any more).
pub fn unix_socket(ino: u32) -> io::Result<Option<UnixSocket>> {
    let fd = diag_request(
        UnixDiagReq {
            family: libc::AF_UNIX as u8,
            protocol: 0,
            pad: 0,
            states: u32::MAX,
            ino,
            show: UDIAG_SHOW_PEER | UDIAG_SHOW_NAME | UDIAG_SHOW_VFS,
            cookie: [u32::MAX; 2], // INET_DIAG_NOCOOKIE: look up by inode alone
        },
        0,
    )?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut buf = [0u8; 1024];
    // SAFETY: receives into our stack buffer of the given length.
    let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..n as usize], ino)
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Every connected Unix socket of the host (one `NLM_F_DUMP` request, the kernel's states
/// filter set to [`ESTABLISHED`]), by inode: one walk of the kernel's socket table, where
/// [`unix_socket`] walks it once per question.
pub fn connected_unix_sockets() -> io::Result<Vec<(u32, UnixSocket)>> {
    let mut out = Vec::new();
    for_each_connected_unix_socket(&mut Vec::new(), |ino, socket| out.push((ino, socket)))?;
    Ok(out)
}

/// As [`connected_unix_sockets`], handing each socket to `found` as its message is read, with
/// `buf` as the receive buffer (kept by the caller across dumps: nothing is allocated per dump
/// but the sockets' names).
pub fn for_each_connected_unix_socket(buf: &mut Vec<u8>, found: impl FnMut(u32, UnixSocket)) -> io::Result<()> {
    dump_connected(buf, UDIAG_SHOW_PEER | UDIAG_SHOW_NAME | UDIAG_SHOW_VFS, found)
}

/// Sockets' inodes by cookie. The sweep builds one per second from all connected sockets of the
/// host and looks up every kept connect event in it: foldhash, not SipHash.
pub type CookieInodes = std::collections::HashMap<u64, u32, foldhash::fast::RandomState>;

/// Every connected Unix stream socket of the host, as its cookie and its inode (one dump
/// without attributes: the lightest walk of the kernel's socket table).
pub fn connected_stream_cookies() -> io::Result<CookieInodes> {
    let mut out = CookieInodes::default();
    dump_connected(&mut Vec::new(), 0, |ino, socket| {
        if socket.is_stream() {
            out.insert(socket.cookie, ino);
        }
    })?;
    Ok(out)
}

/// One `NLM_F_DUMP` of the connected Unix sockets with the attributes `show` asks for.
fn dump_connected(buf: &mut Vec<u8>, show: u32, mut found: impl FnMut(u32, UnixSocket)) -> io::Result<()> {
    let fd = diag_request(
        UnixDiagReq { family: libc::AF_UNIX as u8, protocol: 0, pad: 0, states: 1 << ESTABLISHED, ino: 0, show, cookie: [u32::MAX; 2] },
        libc::NLM_F_DUMP as u16,
    )?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag dump");
    buf.resize(64 << 10, 0);
    loop {
        // SAFETY: receives into our buffer of the given length.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut at = 0;
        while at + size_of::<libc::nlmsghdr>() <= n as usize {
            let msg = &buf[at..n as usize];
            let len = read_u32(msg, 0).ok_or_else(bad)? as usize;
            if len < size_of::<libc::nlmsghdr>() || len > msg.len() {
                return Err(bad());
            }
            match read_u16(msg, 4).ok_or_else(bad)? {
                t if t == libc::NLMSG_DONE as u16 => return Ok(()),
                _ => {
                    if let Some((ino, socket)) = parse_message(&msg[..len])? {
                        found(ino, socket);
                    }
                }
            }
            at += (len + 3) & !3;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

/// Reads the type and the `UNIX_DIAG_PEER` and `UNIX_DIAG_NAME` attributes from a netlink reply
/// about socket `ino`.
fn parse_reply(msg: &[u8], ino: u32) -> io::Result<Option<UnixSocket>> {
    match parse_message(msg)? {
        Some((found, socket)) if found == ino => Ok(Some(socket)),
        Some(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply")),
        None => Ok(None),
    }
}

/// One netlink message about a Unix socket: its inode and what it says (`Ok(None)`: no such
/// socket).
fn parse_message(msg: &[u8]) -> io::Result<Option<(u32, UnixSocket)>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply");
    let len = read_u32(msg, 0).ok_or_else(bad)? as usize;
    let kind = read_u16(msg, 4).ok_or_else(bad)?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = read_u32(msg, size_of::<libc::nlmsghdr>()).ok_or_else(bad)? as i32;
        return match -errno {
            libc::ENOENT => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY || len > msg.len() || len < size_of::<libc::nlmsghdr>() + size_of::<UnixDiagMsg>() {
        return Err(bad());
    }
    let body = size_of::<libc::nlmsghdr>();
    let ino = read_u32(msg, body + 4).ok_or_else(bad)?;
    let cookie = u64::from(read_u32(msg, body + 8).ok_or_else(bad)?) | u64::from(read_u32(msg, body + 12).ok_or_else(bad)?) << 32;
    let mut socket = UnixSocket { kind: msg[body + 1], state: msg[body + 2], cookie, ..UnixSocket::default() };
    // Attributes (struct rtattr: u16 len, u16 type, payload), 4-byte aligned.
    let mut at = body + size_of::<UnixDiagMsg>();
    while at + 4 <= len {
        let alen = read_u16(msg, at).ok_or_else(bad)? as usize;
        let atype = read_u16(msg, at + 2).ok_or_else(bad)?;
        if alen < 4 || at + alen > len {
            return Err(bad());
        }
        match atype {
            UNIX_DIAG_PEER => socket.peer = Some(read_u32(msg, at + 4).ok_or_else(bad)?).filter(|&p| p != 0),
            UNIX_DIAG_NAME => socket.name = Some(sun_path_name(&msg[at + 4..at + alen])),
            UNIX_DIAG_VFS => {
                let ino = read_u32(msg, at + 4).ok_or_else(bad)?;
                let dev = read_u32(msg, at + 8).ok_or_else(bad)?;
                // The kernel's dev_t (major << 20 | minor), in the encoding `stat` uses.
                socket.file = Some((libc::makedev(dev >> 20, dev & 0xf_ffff), u64::from(ino)));
            }
            _ => {}
        }
        at += (alen + 3) & !3;
    }
    Ok(Some((ino, socket)))
}

/// A `UNIX_DIAG_NAME` payload as [`UnixSocket::name`]: a filesystem path loses the terminating
/// NUL the kernel keeps in its address length.
fn sun_path_name(raw: &[u8]) -> Vec<u8> {
    match raw.first() {
        Some(0) => raw.to_vec(),
        _ => raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsRawFd, unix::net::UnixStream};

    use super::*;
    use crate::control::host::socket_inode;

    #[test]
    fn a_dump_names_every_connected_socket_as_the_single_question_does() {
        let (a, b) = UnixStream::pair().unwrap();
        let pid = std::process::id();
        let (ia, ib) = (socket_inode(pid, a.as_raw_fd()).unwrap().unwrap(), socket_inode(pid, b.as_raw_fd()).unwrap().unwrap());
        let lone = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let il = socket_inode(pid, lone.as_raw_fd()).unwrap().unwrap();
        let all = connected_unix_sockets().unwrap();
        for ino in [ia, ib] {
            let dumped = all.iter().find(|(i, _)| *i == ino).map(|(_, s)| s.clone());
            assert_eq!(dumped, unix_socket(ino).unwrap(), "socket {ino}");
        }
        assert!(all.iter().all(|(i, s)| *i != il && s.is_connected()), "only connected sockets");
    }

    #[test]
    fn finds_the_peer_of_a_real_connection() {
        let (a, b) = UnixStream::pair().unwrap();
        let pid = std::process::id();
        let ia = socket_inode(pid, a.as_raw_fd()).unwrap().unwrap();
        let ib = socket_inode(pid, b.as_raw_fd()).unwrap().unwrap();
        assert_ne!(ia, ib);
        let sa = unix_socket(ia).unwrap().unwrap();
        assert_eq!((sa.peer, sa.name.as_deref(), sa.is_stream()), (Some(ib), None, true));
        assert_eq!(unix_socket(ib).unwrap().unwrap().peer, Some(ia));
        let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let id = socket_inode(pid, d.as_raw_fd()).unwrap().unwrap();
        assert!(!unix_socket(id).unwrap().unwrap().is_stream());
    }

    /// An accepted socket carries its listener's name; the connecting one has none (unbound),
    /// and its peer is the accepted one, before and after `accept`.
    #[test]
    fn an_accepted_socket_is_named_like_its_listener() {
        let path = std::env::temp_dir().join(format!("tssx-sockdiag-name-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let pid = std::process::id();
        let ic = socket_inode(pid, client.as_raw_fd()).unwrap().unwrap();
        let queued = unix_socket(ic).unwrap().unwrap();
        assert!(queued.is_connected() && queued.is_stream(), "{queued:?}");
        assert_eq!(queued.peer, None, "the server's socket has no inode before accept");
        let (server, _) = listener.accept().unwrap();
        let is = socket_inode(pid, server.as_raw_fd()).unwrap().unwrap();
        assert_eq!(unix_socket(ic).unwrap().unwrap().peer, Some(is));
        let accepted = unix_socket(is).unwrap().unwrap();
        assert!(accepted.is_connected());
        assert_eq!(accepted.name.as_deref(), Some(path.as_os_str().as_encoded_bytes()));
        // The accepted socket stands for its listener's file, as `stat` names it.
        let st = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&path).unwrap());
        assert_eq!(accepted.file, Some((dev, st)));
        assert_eq!(accepted.peer, Some(ic));
        assert_eq!(unix_socket(ic).unwrap().unwrap().name, None);
        let il = socket_inode(pid, listener.as_raw_fd()).unwrap().unwrap();
        let listening = unix_socket(il).unwrap().unwrap();
        assert_eq!((listening.peer, listening.is_connected()), (None, false), "a listener has no peer");
        std::fs::remove_file(&path).unwrap();
        // An abstract name keeps its leading NUL.
        let name = format!("tssx-sockdiag-{}", pid);
        let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name.as_bytes()).unwrap();
        let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        let _client = UnixStream::connect_addr(&addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let is = socket_inode(pid, server.as_raw_fd()).unwrap().unwrap();
        let mut want = vec![0u8];
        want.extend_from_slice(name.as_bytes());
        assert_eq!(unix_socket(is).unwrap().unwrap().name, Some(want));
    }

    #[test]
    fn unknown_inode_is_no_socket() {
        assert_eq!(unix_socket(u32::MAX - 7).unwrap(), None);
    }

    #[test]
    fn names_lose_the_terminating_nul_only_for_paths() {
        assert_eq!(sun_path_name(b"/run/a.sock\0"), b"/run/a.sock");
        assert_eq!(sun_path_name(b"/run/a.sock"), b"/run/a.sock");
        assert_eq!(sun_path_name(b"\0abs\0"), b"\0abs\0");
    }
}
