//! Harness for the end-to-end tests: runs the real `tssx-agent` (real eBPF programs in the
//! running kernel) and real processes, and collects the agent's JSON trace lines.
//!
//! The tests need root. `cargo xtask test` builds the agent first and runs them. The harness
//! itself is the [`support`] layer (child processes, the agent, waits, the machine lock,
//! temporary directories, the control socket, a seeded generator), re-exported here; `cargo
//! xtask soak` and `cargo xtask report` use it too.

#![warn(missing_docs)]

pub mod support;

pub use support::*;
