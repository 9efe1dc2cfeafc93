//! The shared-memory core of tssx: what the agent and the hook both need to share a connection.
//!
//! * [`segment`]: creating (agent) and mapping (hook) a connection's sealed memfd segment, whose
//!   layout is the ABI in [`tssx_common::segment`];
//! * [`ring`]: the single-producer single-consumer byte ring over that memory, and its sleep and
//!   wake protocol;
//! * [`wait`]: the sleep and wake protocol (announce, fence, re-check; publish, fence, look)
//!   that every waiter uses;
//! * [`lease`]: type-stable reference-counted cells, so that a lock-free table (the hook's fd
//!   table) can hand out values that a concurrent removal never frees under a reader;
//! * [`fdpass`]: one fd with a small message over a Unix socket (`SCM_RIGHTS`);
//! * [`ucopy`]: copies to and from an application's buffers that end at a bad page (EFAULT)
//!   instead of crashing;
//! * [`sys`]: the raw system calls everything here makes (never libc's wrappers: inside the
//!   hook those names are the hook's own exports).
//!
//! It depends on `libc` (types and constants) and `tssx-common` only, so the hook can link it
//! without the agent's crates.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod fdpass;
pub mod lease;
pub mod ring;
pub mod segment;
pub mod sys;
pub mod ucopy;
pub mod wait;
