//! What the claim rules ask the kernel, behind one small interface.
//!
//! The rules in [`super::claim`] and [`super::lifecycle`] trust the kernel, never a hook: which
//! socket a process holds under a fd, which socket is its peer, which connections still wait in
//! an accept queue, whether a process is alive and carries the hook. [`KernelFacts`] is that list
//! of questions. The agent answers them from `/proc` and `sock_diag` ([`super::host::Host`]); the
//! unit tests answer them from a table, so the rules are tested without root and without real
//! processes.
//!
//! Every method may do I/O: callers ask before taking the registry lock or after releasing it,
//! never while holding it.

use std::{collections::HashSet, io};

/// The kernel's answers the claim rules rely on. Implementations must be callable from any
/// thread at once.
pub trait KernelFacts: Send + Sync {
    /// The inode of the socket behind `fd` of process `pid`; `Ok(None)` if that fd is open but
    /// is no socket, an error if it is not open (or the process is gone).
    fn socket_inode(&self, pid: u32, fd: i32) -> io::Result<Option<u32>>;

    /// The inode of the peer of Unix socket `inode`; `Ok(None)` if it has none (or is gone).
    fn unix_peer(&self, inode: u32) -> io::Result<Option<u32>>;

    /// Inodes of the client sockets whose connections wait, not yet accepted, in the accept
    /// queue of some listening Unix socket.
    fn unaccepted_clients(&self) -> io::Result<HashSet<u32>>;

    /// Whether process `pid` has the hook (`libtssx_preload.so`) mapped; false if that cannot be
    /// read.
    fn carries_hook(&self, pid: u32) -> bool;

    /// Whether process `pid` exists.
    fn alive(&self, pid: u32) -> bool;

    /// The command name of process `pid`; empty if it cannot be read.
    fn comm(&self, pid: u32) -> String;
}
