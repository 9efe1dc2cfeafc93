//! What the claim rules ask the kernel, behind one small interface.
//!
//! The rules in [`super::claim`] and [`super::lifecycle`] trust the kernel, never a hook: which
//! socket a process holds under a fd, what that socket is (stream or not, its peer, its name),
//! which processes are related to a claimant and what they hold, whether a process is alive.
//! [`KernelFacts`] is that list of questions. The agent answers them from `/proc` and
//! `sock_diag` ([`super::host::Host`]); the unit tests answer them from a table, so the rules are
//! tested without root and without real processes.
//!
//! Every method may do I/O: callers ask before taking the registry lock or after releasing it,
//! never while holding it.

use std::io;

pub use crate::sockdiag::UnixSocket;

/// The kernel's answers the claim rules rely on. Implementations must be callable from any
/// thread at once.
pub trait KernelFacts: Send + Sync {
    /// The inode of the socket behind `fd` of process `pid`; `Ok(None)` if that fd is open but
    /// is no socket, an error if it is not open (or the process is gone).
    fn socket_inode(&self, pid: u32, fd: i32) -> io::Result<Option<u32>>;

    /// What the kernel says about Unix socket `inode` (type, peer, own name); `Ok(None)` if
    /// there is no such Unix socket (any more).
    fn unix_socket(&self, inode: u32) -> io::Result<Option<UnixSocket>>;

    /// As [`KernelFacts::unix_socket`] for a socket the caller knows is open (a claimant's,
    /// or its connected peer): the answer may come from an earlier look at every connected
    /// socket, since a connected stream socket's type, peer and name never change. Never use it
    /// to learn whether a socket still exists.
    fn connected_unix_socket(&self, inode: u32) -> io::Result<Option<UnixSocket>> {
        self.unix_socket(inode)
    }

    /// Every connected Unix stream socket of the host, as its cookie and inode: whether the
    /// sockets of the connect hook's events are still there (one walk of the kernel's socket
    /// table).
    fn connected_cookies(&self) -> io::Result<crate::sockdiag::CookieInodes>;

    /// The processes that may share `pid`'s descriptors through `fork`: its parent and its
    /// descendants (not `pid` itself; a descendant reparented away, its parent gone, is not
    /// found). Empty if that cannot be read.
    fn relatives(&self, pid: u32) -> Vec<u32>;

    /// Whether process `pid` has socket `inode` open under some fd (false if that cannot be
    /// read: the process is gone).
    fn holds_socket(&self, pid: u32, inode: u32) -> bool;

    /// Whether process `pid` exists.
    fn alive(&self, pid: u32) -> bool;

    /// The command name of process `pid`; empty if it cannot be read.
    fn comm(&self, pid: u32) -> String;

    /// The absolute name of the relative socket name `name` that process `pid` used: resolved
    /// against its working directory, and returned only if that file is `file` (the socket's
    /// `(device, inode)` from the kernel), so that a process that changed directory since is
    /// never matched wrongly. `None` if it cannot be resolved or checked.
    fn resolve_relative(&self, pid: u32, name: &[u8], file: (u64, u64)) -> Option<Vec<u8>> {
        let _ = (pid, name, file);
        None
    }

    /// Whether process `pid` set up an io_uring (or descends from one that did): its io_uring
    /// reads and writes would bypass the rings.
    fn uses_io_uring(&self, pid: u32) -> bool;

    /// Asks the kernel watcher to signal process `pid`'s hook if it sets up an io_uring from
    /// now on (`tssx_common::maps::HANDBACK_ON_IO_URING`): its hook is about to take a segment.
    fn hand_back_on_io_uring(&self, pid: u32) {
        let _ = pid;
    }

    /// Tells the connect hook program to leave process `tgid`'s connects on pattern `path_id`
    /// unreported, but for those made in a probe window, until `until` (coarse clock, ns; 0:
    /// report them all again). See [`super::quiet`].
    fn set_quiet(&self, tgid: u32, path_id: u32, until: u64) {
        let _ = (tgid, path_id, until);
    }
}
