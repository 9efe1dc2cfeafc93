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
//! | [`ringlock`] | a ring end's locks: the process's own (its threads), then the segment's word (its processes), whose wait is bounded (the peer can write it) |
//! | [`phase`], [`migrate`], [`handback`] | a connection's phases: claimed lazily, moved onto the rings in flight, handed back to the kernel |
//! | [`lifecycle`], [`exec`], [`pass`] | fork/spawn refcounts; exec hand-over; `SCM_RIGHTS` hand-over |
//! | [`counts`] | a plain connection's byte counts, shared with the processes forked while it is plain; spoiled by an image that cannot count |
//! | [`anc`] | ancillary data (`SCM_RIGHTS`, `SCM_CREDENTIALS`) on swapped sockets: through the kernel, positioned in the stream |
//! | [`spawn`] | spawn file actions (side records, the child's fds), vfork, system, popen |
//! | [`poll`], [`epoll`] | readiness calls over a mix of swapped and plain fds |
//! | [`paths`], [`claim`] | which sockets are watched; claiming a segment from the agent |
//! | [`heat`] | a watched path whose connections keep ending plain cools: only one new connection in 16 is tracked, as a probe |
//! | [`stdio`] | `FILE` streams over tracked sockets (glibc's stdio bypasses any preload) |
//! | [`splice`], [`peekoff`] | `splice` between a pipe and the rings; the emulated `SO_PEEK_OFF` |
//! | [`iov`], [`sys`] | caller buffers, checked as the kernel checks them (EFAULT/EINVAL, never a crash); every system call the hook makes |
//! | [`fault`] | a buffer that runs into a bad page: the copy's fault caught (SIGSEGV/SIGBUS owned from the first tracked connection), EFAULT as the kernel answers |
//! | [`signals`] | signal dispositions: the application's handlers behind a trampoline (a handler that runs while the hook spins ends the wait with `EINTR` as the kernel would); signals the hook owns (`signals::own`) |
//! | [`uring`] | an io_uring set up while connections are swapped: the kernel watcher's signal, every connection handed back |
//! | [`own`] | the hook's own fds (segment memfds, claim sockets): never closed by the application's `close`, left out of `close_range`/`closefrom` |
//! | [`closing`], `syscall` | `close_range`/`closefrom` (each tracked fd of the range closed as `close` does; the hook's own fds kept); `syscall()` for the socket-related numbers (x86-64) |
//!
//! What the hook does with each libc function that can touch a socket, and the known gaps:
//! [`coverage`].
//!
//! # Hot code
//!
//! The hook is in every process that preloads it, and most of what it runs there is the
//! pass-through of calls it does not serve: the exports' tests, the short way of a `connect`,
//! `accept` or epoll wait it does not track. Those functions (the exports of
//! `interpose_passing!` and a few others in `tssx-preload`, [`calls::connect`],
//! [`epoll::plain_wait`], [`calls::epoll_ctl`], [`paths::watched_bytes`] and the accept's
//! `track_accepted`) carry `#[unsafe(link_section = ".text.tssx.hot")]`: one input section,
//! which the linker keeps in one piece, so that an application's every call walks a few
//! adjacent pages of the hook's code instead of a dozen spread over its half-megabyte of text
//! (callgrind on nginx (a): 11 pages of the hook's code per request down to 4, the instruction
//! TLB entries it takes). A function belongs there only if every process walks it on a path
//! that is not the hook's own; the hook's real work stays where the compiler puts it.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

/// What the hook does with every libc path into a socket (the table of `COVERAGE.md`).
#[doc = include_str!("../COVERAGE.md")]
pub mod coverage {}

pub mod anc;
pub mod calls;
pub mod claim;
pub mod closing;
pub mod conn;
pub mod counts;
pub mod epoll;
pub mod exec;
pub mod fault;
pub mod handback;
pub mod heat;
pub mod iov;
pub mod lifecycle;
pub mod migrate;
pub mod own;
pub mod pass;
pub mod paths;
pub mod peekoff;
pub mod phase;
pub mod poll;
pub mod preconnect;
pub mod ringlock;
pub mod signals;
pub mod spawn;
pub mod spin;
pub mod splice;
pub mod stdio;
pub mod stream;
pub mod symbols;
pub mod sys;
#[cfg(target_arch = "x86_64")]
pub mod syscall;
pub mod table;
#[cfg(test)]
mod test_io;
pub mod uring;
pub mod wait;
pub mod witness;
