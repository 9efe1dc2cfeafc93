//! [`KernelFacts`] answered by the running kernel: `/proc` for processes and their fds,
//! `sock_diag` ([`crate::sockdiag`]) for socket peers and accept queues.
//!
//! The `/proc` questions are one `readlink`, `stat` or small read each, so they are written
//! here directly rather than through the `procfs` crate: it would parse whole files (every
//! mapping in `maps` into a list) to answer the same one-line questions, and add three crates
//! (`procfs`, `procfs-core`, `hex`; more with its default `chrono` and `flate2` features) to a
//! root daemon for it.

use std::{collections::HashSet, io, path::Path};

use super::facts::KernelFacts;
use crate::sockdiag;

/// The running kernel, as the agent sees it (needs root for other users' processes).
#[derive(Clone, Copy, Debug, Default)]
pub struct Host;

impl KernelFacts for Host {
    fn socket_inode(&self, pid: u32, fd: i32) -> io::Result<Option<u32>> {
        socket_inode(pid, fd)
    }

    fn unix_peer(&self, inode: u32) -> io::Result<Option<u32>> {
        sockdiag::unix_peer(inode)
    }

    fn unaccepted_clients(&self) -> io::Result<HashSet<u32>> {
        sockdiag::unaccepted_clients()
    }

    fn carries_hook(&self, pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| maps.contains("libtssx_preload"))
    }

    fn alive(&self, pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    fn comm(&self, pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim_end_matches('\n').to_owned()).unwrap_or_default()
    }
}

/// The socket inode behind `fd` of process `pid` (`/proc/PID/fd/FD`), or `None` if that fd is
/// not a socket.
pub fn socket_inode(pid: u32, fd: i32) -> io::Result<Option<u32>> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))?;
    Ok(parse_socket_link(&link.to_string_lossy()))
}

/// Parses `socket:[12345]`.
pub fn parse_socket_link(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsRawFd as _, unix::net::UnixStream};

    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(parse_socket_link("socket:[35947]"), Some(35947));
        assert_eq!(parse_socket_link("pipe:[1]"), None);
        assert_eq!(parse_socket_link("/dev/null"), None);
        assert_eq!(parse_socket_link("socket:[]"), None);
    }

    /// The answers for this very process: its own sockets, files, command name and liveness.
    #[test]
    fn answers_for_this_process() {
        let host = Host;
        let pid = std::process::id();
        let (a, b) = UnixStream::pair().unwrap();
        let ia = host.socket_inode(pid, a.as_raw_fd()).unwrap().unwrap();
        let ib = host.socket_inode(pid, b.as_raw_fd()).unwrap().unwrap();
        assert_ne!(ia, ib);
        assert_eq!(host.unix_peer(ia).unwrap(), Some(ib));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(host.socket_inode(pid, file.as_raw_fd()).unwrap(), None);
        assert!(host.socket_inode(pid, 1 << 20).is_err(), "a fd that is not open");
        assert!(host.alive(pid));
        assert!(!host.alive(u32::MAX - 1));
        assert!(!host.carries_hook(pid), "the unit tests run without the hook");
        let comm = host.comm(pid);
        assert!(!comm.is_empty() && !comm.ends_with('\n'), "{comm:?}");
        assert_eq!(host.comm(u32::MAX - 1), "");
    }
}
