//! The two `NETLINK_SOCK_DIAG` queries the agent makes about Unix sockets: the peer of one socket
//! (`UNIX_DIAG_PEER`) and the client sockets waiting in accept queues (`UNIX_DIAG_ICONS`).
//!
//! The agent pairs a client's claim with a server's by socket inodes: the client socket's peer is
//! the server's accepted socket from the moment `connect()` returns, before `accept()` (the
//! socket inode of a process's fd comes from `/proc`, see `control::host`).
//!
//! Written by hand rather than with `netlink-packet-sock-diag`: the two queries are one
//! fixed-size request each and their replies are walked in a few dozen lines, while that crate
//! is only the message codec (the socket, the dump loop and the error handling would stay here)
//! and would add four crates (itself, `netlink-packet-core`, `zerocopy`, `zerocopy-derive`),
//! none with a declared minimum Rust version, to a daemon that runs as root.

use std::{io, mem::size_of};

/// `SOCK_DIAG_BY_FAMILY` netlink message type (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `UDIAG_SHOW_PEER` (linux/unix_diag.h).
const UDIAG_SHOW_PEER: u32 = 0x4;
/// `UDIAG_SHOW_ICONS`: for a listener, the peers of the connections in its accept queue.
const UDIAG_SHOW_ICONS: u32 = 0x8;
/// `UNIX_DIAG_PEER` attribute type.
const UNIX_DIAG_PEER: u16 = 2;
/// `UNIX_DIAG_ICONS` attribute type (an array of `u32` inodes).
const UNIX_DIAG_ICONS: u16 = 3;
/// `TCP_LISTEN`, the state of a listening Unix stream socket in sock_diag.
const TCP_LISTEN: u32 = 10;

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

/// The inode of the peer of Unix socket `ino`; `Ok(None)` if it has no peer (or is gone).
pub fn unix_peer(ino: u32) -> io::Result<Option<u32>> {
    let fd = diag_request(
        UnixDiagReq {
            family: libc::AF_UNIX as u8,
            protocol: 0,
            pad: 0,
            states: u32::MAX,
            ino,
            show: UDIAG_SHOW_PEER,
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

/// Inodes of the client sockets whose connections wait, not yet accepted, in the accept queue
/// of some listening Unix socket (of this network namespace): a dump of all listeners with
/// `UDIAG_SHOW_ICONS`.
pub fn unaccepted_clients() -> io::Result<std::collections::HashSet<u32>> {
    let fd = diag_request(
        UnixDiagReq {
            family: libc::AF_UNIX as u8,
            protocol: 0,
            pad: 0,
            states: 1 << TCP_LISTEN,
            ino: 0,
            show: UDIAG_SHOW_ICONS,
            cookie: [u32::MAX; 2],
        },
        libc::NLM_F_DUMP as u16,
    )?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut clients = std::collections::HashSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receives into our buffer of the given length.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 || parse_icons(&buf[..n as usize], &mut clients)? {
            return Ok(clients);
        }
    }
}

/// Adds the `UNIX_DIAG_ICONS` inodes of every message in one dump datagram to `out`; true once
/// the dump is done (`NLMSG_DONE`).
fn parse_icons(mut msgs: &[u8], out: &mut std::collections::HashSet<u32>) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag dump");
    let header = size_of::<libc::nlmsghdr>();
    while msgs.len() >= header {
        let len = read_u32(msgs, 0).ok_or_else(bad)? as usize;
        let kind = read_u16(msgs, 4).ok_or_else(bad)?;
        if len < header || len > msgs.len() {
            return Err(bad());
        }
        match kind {
            k if k == libc::NLMSG_DONE as u16 => return Ok(true),
            k if k == libc::NLMSG_ERROR as u16 => {
                let errno = read_u32(msgs, header).ok_or_else(bad)? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                let mut at = header + size_of::<UnixDiagMsg>();
                while at + 4 <= len {
                    let alen = read_u16(msgs, at).ok_or_else(bad)? as usize;
                    let atype = read_u16(msgs, at + 2).ok_or_else(bad)?;
                    if alen < 4 || at + alen > len {
                        return Err(bad());
                    }
                    if atype == UNIX_DIAG_ICONS {
                        for i in (at + 4..at + alen).step_by(4) {
                            match read_u32(msgs, i) {
                                Some(0) | None => {}
                                Some(ino) => {
                                    out.insert(ino);
                                }
                            }
                        }
                    }
                    at += (alen + 3) & !3;
                }
            }
            _ => {}
        }
        msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
    }
    Ok(false)
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Extracts the `UNIX_DIAG_PEER` attribute from a netlink reply about socket `ino`.
fn parse_reply(msg: &[u8], ino: u32) -> io::Result<Option<u32>> {
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
    if kind != SOCK_DIAG_BY_FAMILY || len > msg.len() {
        return Err(bad());
    }
    let body = size_of::<libc::nlmsghdr>();
    if read_u32(msg, body + 4) != Some(ino) {
        return Err(bad());
    }
    // Attributes (struct rtattr: u16 len, u16 type, payload), 4-byte aligned.
    let mut at = body + size_of::<UnixDiagMsg>();
    while at + 4 <= len {
        let alen = read_u16(msg, at).ok_or_else(bad)? as usize;
        let atype = read_u16(msg, at + 2).ok_or_else(bad)?;
        if alen < 4 {
            return Err(bad());
        }
        if atype == UNIX_DIAG_PEER {
            return Ok(Some(read_u32(msg, at + 4).ok_or_else(bad)?));
        }
        at += (alen + 3) & !3;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsRawFd, unix::net::UnixStream};

    use super::*;
    use crate::control::host::socket_inode;

    #[test]
    fn finds_the_peer_of_a_real_connection() {
        let (a, b) = UnixStream::pair().unwrap();
        let pid = std::process::id();
        let ia = socket_inode(pid, a.as_raw_fd()).unwrap().unwrap();
        let ib = socket_inode(pid, b.as_raw_fd()).unwrap().unwrap();
        assert_ne!(ia, ib);
        assert_eq!(unix_peer(ia).unwrap(), Some(ib));
        assert_eq!(unix_peer(ib).unwrap(), Some(ia));
    }

    #[test]
    fn unaccepted_connections_are_found_in_the_accept_queue() {
        let path = std::env::temp_dir().join(format!("tssx-sockdiag-icons-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let waiting = UnixStream::connect(&path).unwrap();
        let ino = socket_inode(std::process::id(), waiting.as_raw_fd()).unwrap().unwrap();
        assert!(unaccepted_clients().unwrap().contains(&ino), "a queued connection is listed");
        let (_accepted, _) = listener.accept().unwrap();
        assert!(!unaccepted_clients().unwrap().contains(&ino), "an accepted one is not");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn unknown_inode_has_no_peer() {
        assert_eq!(unix_peer(u32::MAX - 7).unwrap(), None);
    }
}
