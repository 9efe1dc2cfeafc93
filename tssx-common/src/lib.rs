//! Types shared by every boundary of tssx.
//!
//! * [`control`]: the control protocol between the preload hook and the agent.
//! * [`pattern`]: the watched-address patterns of `--paths` and their matcher (agent and hook).
//! * [`event`]: what the eBPF programs send to the agent through the `EVENTS` ring buffer, and
//!   the keys and values of the eBPF maps the agent fills or reads.
//!
//! The crate is `no_std` so that the eBPF programs (built for `bpfel-unknown-none`) and user space
//! use the very same `#[repr(C)]` definitions. The `user` feature adds the `aya::Pod` impls that
//! user space needs to put these types into maps.
#![no_std]
#![deny(missing_docs)]

pub mod control;
pub mod event;
pub mod pattern;
// The segment ABI uses 32-bit atomics, which the BPF target lacks; only user space needs it.
#[cfg(not(target_arch = "bpf"))]
pub mod segment;

/// Length of `sun_path` in `struct sockaddr_un` on Linux, and so of every watched-path map key.
pub const SUN_PATH_LEN: usize = 108;

/// Length of a task's `comm` (command name) in the kernel, including the terminating NUL.
pub const COMM_LEN: usize = 16;

/// Unix-domain socket address family (`AF_UNIX`), as the kernel stores it in `sa_family`.
pub const AF_UNIX: u16 = 1;

/// The real-time signal (kernel number; glibc's `SIGRTMAX - 1`) that the kernel watcher sends to
/// a thread that set up an io_uring while its process holds swapped connections (see
/// [`maps::HANDBACK_ON_IO_URING`]). The hook installs its handler before its first claim and
/// does not claim at all in a process that has a handler of its own for it.
pub const HANDBACK_SIGNAL: u32 = 63;

/// Names of the eBPF maps, shared so that the loader and the programs cannot disagree.
pub mod maps {
    /// `HashMap<PathKey, u32>`: exact watched `sun_path` values to their pattern id (filled by
    /// the agent).
    pub const WATCHED_PATHS: &str = "WATCHED_PATHS";
    /// `LpmTrie<PrefixKey, u32>`: literal prefixes of the watched patterns (directories,
    /// globs, abstract prefixes) to a pattern id, or to `PATH_ID_CANDIDATE` when the agent must
    /// finish the match (filled by the agent).
    pub const WATCHED_PREFIXES: &str = "WATCHED_PREFIXES";
    /// `Array<TraceConfig>` with one entry: tracepoint field offsets read from tracefs.
    pub const CONFIG: &str = "CONFIG";
    /// `RingBuf` of [`crate::event::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// `HashMap<u64, u32>`: `(tgid << 32) | fd` of watched listening sockets to their pattern id
    /// (`PATH_ID_CANDIDATE`/`PATH_ID_RELATIVE` until the agent decided).
    pub const LISTENERS: &str = "LISTENERS";
    /// `HashMap<u32, u32>`: tgid of a process that holds watched listeners, to the number of them.
    pub const OWNERS: &str = "OWNERS";
    /// `HashMap<u32, u32>`: child pid to parent tgid, for children of listener owners.
    pub const PARENTS: &str = "PARENTS";
    /// `LruHashMap<u32, u32>`: pids of processes that set up an io_uring, or descend from one
    /// (a forked child inherits the ring), to 1. The agent keeps their connections plain.
    pub const IO_URING_USERS: &str = "IO_URING_USERS";
    /// `LruHashMap<u32, u32>`: tgid of a process whose hook took a segment (and installed its
    /// hand-back handler for [`crate::HANDBACK_SIGNAL`] first), to the signal number. When such
    /// a process sets up an io_uring, the eBPF program sends that signal to the calling thread
    /// (`bpf_send_signal_thread`): the hook hands every swapped connection back before the
    /// thread returns to the application. Filled by the agent when it pairs a claim; a forked
    /// child inherits its parent's entry; exec and exit remove it.
    pub const HANDBACK_ON_IO_URING: &str = "HANDBACK_ON_IO_URING";
    /// `PerCpuArray<u64>` with one entry: events dropped because `EVENTS` was full.
    pub const DROPPED: &str = "DROPPED";
    /// `LruHashMap<u64, u64>`: [`crate::event::quiet_key`] of a process and a watched pattern
    /// whose connections keep ending plain, to the time (`CLOCK_MONOTONIC_COARSE`, ns) until
    /// which the connect hook reports only its connects made in a probe window
    /// ([`crate::heat`]). Filled by the agent (see its `control::quiet`).
    pub const QUIET: &str = "QUIET";
    /// `PerCpuArray<u64>` with one entry: connects the connect hook left unreported because
    /// their process and pattern were in `QUIET`.
    pub const QUIET_SKIPPED: &str = "QUIET_SKIPPED";
}

/// The probe windows of a cool path, the same for the hook (which tracks only the connections
/// made in one) and the connect hook program (which reports only those on a quiet path): one
/// slot of 2^[`heat::PROBE_SLOT_SHIFT`] ns of `CLOCK_MONOTONIC_COARSE` in
/// [`heat::PROBE_EVERY`].
pub mod heat {
    /// A probe window is one slot of 2^22 ns (4.2 ms) of the coarse clock in [`PROBE_EVERY`].
    pub const PROBE_SLOT_SHIFT: u32 = 22;
    /// Slots per probe window: a cool path tracks the connections of one slot in this many.
    pub const PROBE_EVERY: u64 = 16;

    /// Whether `now_ns` (`CLOCK_MONOTONIC_COARSE`) is in a probe window.
    ///
    /// ```
    /// use tssx_common::heat::{in_probe_window, PROBE_EVERY, PROBE_SLOT_SHIFT};
    /// assert!(in_probe_window(0));
    /// assert!(!in_probe_window(1 << PROBE_SLOT_SHIFT));
    /// assert!(in_probe_window(PROBE_EVERY << PROBE_SLOT_SHIFT));
    /// ```
    #[inline(always)]
    pub const fn in_probe_window(now_ns: u64) -> bool {
        (now_ns >> PROBE_SLOT_SHIFT).is_multiple_of(PROBE_EVERY)
    }
}
