//! The tssx control plane: the pieces of `tssx-agent`.
//!
//! * [`paths`]: the watched socket addresses given on the command line.
//! * [`kernel`]: bpffs/tracefs mounts and tracepoint field offsets.
//! * [`loader`]: loading, configuring and attaching the eBPF programs.
//! * [`trace`]: one trace line per kernel event.
//! * [`state`]: the agent's state directory (lock, published paths).
//! * [`control`]: the control socket: claims, pairing, segments, status (one module per job).
//! * [`sockdiag`]: what the kernel says about a Unix socket: type, peer, name (`NETLINK_SOCK_DIAG`).
//! * [`feed`]: the kernel events ring buffer, shared by the event loop and the claim workers.
//! * [`agent`]: the event loop tying them together.
//! * [`install`]: the system-wide mode (`/etc/ld.so.preload`).
//!
//! The segment, ring and fd passing it shares with the hook live in `tssx-shm`.
#![deny(missing_docs)]

pub mod agent;
pub mod btf;
pub mod cgroup;
pub mod control;
pub mod feed;
pub mod install;
pub mod kernel;
pub mod loader;
pub mod paths;
pub mod sockdiag;
pub mod state;
pub mod trace;
