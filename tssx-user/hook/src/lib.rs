//! The data plane of tssx: what `libtssx_preload.so` does inside an application.
//!
//! For a Unix stream socket on a path the running `tssx-agent` watches, the hook claims the
//! connection's shared-memory segment from the agent and serves the socket's I/O from the rings;
//! everything else passes straight through to the real libc function. An fd that is not in the
//! table costs one bounds check and one atomic load (poll/select scan their fds that way; an
//! epoll instance without swapped fds costs one load). With no agent running, or an unwatched
//! path, nothing is ever swapped.
//!
//! This crate is the logic, as a library that links libc (and `tssx-shm`, `tssx-common`) only.
//! The `tssx-preload` crate builds the cdylib: one thin `extern "C"` function per interposed
//! libc name, each calling its twin in [`calls`]. Keeping the exports out of this crate lets
//! its unit tests run in an ordinary test binary, whose own `read`/`write` stay libc's.
//!
//! | module | holds |
//! |---|---|
//! | [`calls`] | the entry points, one per interposed libc function |
//! | [`table`] | the fd → connection table and its entries' lifetimes (leases: a call keeps its connection alive) |
//! | [`conn`] | one swapped connection: segment, ring handles, shutdown state, readiness |
//! | [`stream`] | recv/send/shutdown semantics over the rings |
//! | [`wait`], [`spin`] | waiting for the peer: spin budget, announced sleep, doorbells |
//! | [`plain`] | turning plain: replay of the ring into the real socket |
//! | [`lifecycle`], [`exec`], [`pass`] | fork/spawn refcounts; exec hand-over; `SCM_RIGHTS` hand-over |
//! | [`poll`], [`epoll`] | readiness calls over a mix of swapped and plain fds |
//! | [`paths`], [`claim`] | which sockets are watched; claiming a segment from the agent |
//! | [`splice`], [`peekoff`] | `splice` between a pipe and the rings; the emulated `SO_PEEK_OFF` |
//! | [`iov`], [`sys`] | caller buffers, checked as the kernel checks them (EFAULT/EINVAL, never a crash); every system call the hook makes |
//!
//! Covered on swapped fds: read, write, readv, writev, recv, send, recvfrom, sendto, recvmsg,
//! sendmsg (MSG_PEEK, MSG_DONTWAIT, MSG_WAITALL, MSG_NOSIGNAL), recvmmsg and sendmmsg (each
//! message as recvmsg/sendmsg, with the kernel's MSG_WAITFORONE, timeout and msg_len rules),
//! the `_FORTIFY_SOURCE` variants `__read_chk`, `__recv_chk`, `__recvfrom_chk`, `__poll_chk`,
//! `__ppoll_chk` (glibc's length check, then the plain call; glibc's own function for fds the
//! hook does not track), blocking and non-blocking (accept4 SOCK_NONBLOCK, fcntl/fcntl64
//! F_SETFL, ioctl FIONBIO), shutdown, ioctl FIONREAD/SIOCOUTQ,
//! close, dup/dup2/dup3/F_DUPFD*, poll, ppoll, select, pselect, epoll_ctl, epoll_wait,
//! epoll_pwait, epoll_pwait2, fork (both processes keep the connection) and the exec family
//! (execve, execv, execvp, execvpe, fexecve, execl, execlp, execle, posix_spawn, posix_spawnp:
//! the new image re-attaches the segment). Ancillary data (sendmsg, or a sendmmsg message, with
//! a control message on a swapped fd) hands the connection back to the kernel first.
//!
//! Calls beyond reads and writes (issue 13), each proved by a conformance scenario
//! (`tests/conform/{splice,sendfile,oob,peekoff,timeouts}.c`) and `tests/kcalls.rs`:
//!
//! | libc function | what the hook does with a swapped socket |
//! |---|---|
//! | `splice` (pipe → socket, socket → pipe) | served on the rings through a bounce buffer ([`splice`]): the kernel's waits, EOF, EAGAIN (`SPLICE_F_NONBLOCK`, the pipe's and the socket's O_NONBLOCK), EPIPE/SIGPIPE, partial counts; bytes are copied before they are consumed, so a partial send loses nothing. Offsets, the wrong pipe end, unknown flags, no pipe: the real call (it fails before moving a byte) |
//! | `sendfile`, `sendfile64` | the kernel reads the input into a private pipe (its checks, offsets, EOF), the rings carry it, the offset moves back by what the socket did not take; never hands back |
//! | `tee`, `vmsplice` | not interposed: they take pipes only, the kernel refuses a socket (`tee`: EINVAL, `vmsplice`: EBADF) before any byte moves |
//! | `send`/`sendto`/`sendmsg`/`sendmmsg` with `MSG_OOB` | the connection leaves the rings first (hand-back; plain for good before it is ready), then the real call |
//! | `recv`/`recvfrom`/`recvmsg`/`recvmmsg` with `MSG_OOB` | the real call at once (it never touches the in-band stream; EINVAL when there is no out-of-band byte) |
//! | `poll`/`ppoll`/`select` `POLLPRI`, `epoll` `EPOLLPRI` | the kernel's answer once the peer handed back (no system call before: there can be no out-of-band byte) |
//! | `ioctl(SIOCATMARK)` | false while bytes before the mark are on the ring; the kernel's answer once the peer's hand-back is drained |
//! | `setsockopt`, `getsockopt` | the real call; `SO_PEEK_OFF` is emulated on the rings ([`peekoff`]), the kernel takes it over once plain |
//! | blocked read / write | SO_RCVTIMEO bounds a read, SO_SNDTIMEO a write, each for the whole call, read from the socket at the first sleep (`wait::Deadline`) |
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod calls;
pub mod claim;
pub mod conn;
pub mod epoll;
pub mod exec;
pub mod handback;
pub mod iov;
pub mod lifecycle;
pub mod migrate;
pub mod pass;
pub mod paths;
pub mod peekoff;
pub mod phase;
pub mod poll;
pub mod spin;
pub mod splice;
pub mod stream;
pub mod sys;
pub mod table;
pub mod wait;
