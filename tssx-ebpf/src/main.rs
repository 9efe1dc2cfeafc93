//! tssx eBPF programs: tracepoints that tell the agent who binds, listens, connects and accepts
//! on the watched Unix socket paths, and which processes inherit watched listeners through fork.
//!
//! Only `syscalls:*` and `sched:*` tracepoints are used: fentry/fexit/LSM programs are refused on
//! our kernels (lockdown) and kprobes are not built in.
//!
//! How a connection is recognised:
//! * which addresses are watched: `sys_enter_bind`/`sys_enter_connect` read the `sun_path` and
//!   look it up in `WATCHED_PATHS` (exact names), then in the LPM trie `WATCHED_PREFIXES` (the
//!   literal prefixes of directory, glob and abstract-prefix patterns: the longest wins). A
//!   prefix of a directory or of `@name*` decides alone (the value is the pattern id); a glob's
//!   makes the address a candidate (`PATH_ID_CANDIDATE`) and a relative path is reported as
//!   `PATH_ID_RELATIVE` (when the agent watches filesystem patterns): the agent finishes those
//!   from the address the event carries.
//! * a call on a watched path or listener is parked at its enter for its exit, in its thread's
//!   slot of the array `PARKED_BY_TID` (a thread id beyond the array: keyed by `pid_tgid`, in
//!   the hash map `PARKED`): 16 bytes, kind, path id, fd; a call whose event must carry its
//!   address (bind, a glob candidate, a relative address) parks its whole call, address
//!   included, in `PENDING` too. Events without an address are 56-byte `EventHead` records,
//!   those with one whole `Event`s (168 bytes): per watched connection, the kernel side writes
//!   one cache line of the ring for each end.
//! * `bind` on a watched path: `sys_exit_bind` with ret 0 records `(tgid, fd)` in `LISTENERS`
//!   (a candidate undecided: the agent writes its decision) and emits `Bind` with the address.
//! * `accept`/`accept4` on a fd that is a watched listener of the process, or of an ancestor it
//!   inherited the fd from (`PARENTS`, filled at fork), emits `Accept` when it returns a fd.
//! * `connect` to a watched path (or a candidate) emits `Connect` when it returns 0, with the
//!   address unless the path is watched by that exact name.
//! * `fork` (clone without `CLONE_THREAD`, told apart at `sys_enter_clone`/`clone3`) of a
//!   listener owner records the child in `PARENTS` and emits `Fork`.
//! * `close` of a listener fd forgets it; the last thread's exit emits `Exit` so the agent can
//!   drop the process's `LISTENERS` entries (maps cannot be iterated here).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("tssx-ebpf is built for bpfel-unknown-none by tssx-user's build script");
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects programs that can reach this; it is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

/// License of the programs, read by the kernel (GPL-compatible, needed for some helpers).
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
