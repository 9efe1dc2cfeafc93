//! tssx user space: the pieces of `tssx-agent`.
//!
//! * [`paths`]: the watched socket addresses given on the command line.
//! * [`kernel`]: bpffs/tracefs mounts and tracepoint field offsets.
//! * [`loader`]: loading, configuring and attaching the eBPF programs.
//! * [`trace`]: one trace line per kernel event.
//! * [`state`]: the agent's state directory (lock, published paths).
//! * [`agent`]: the event loop tying them together.
#![deny(missing_docs)]

pub mod agent;
pub mod kernel;
pub mod loader;
pub mod paths;
pub mod state;
pub mod trace;
