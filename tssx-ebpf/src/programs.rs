//! The tracepoint programs and their maps. See the crate docs for the flow.
//!
//! Each program's `#[tracepoint(category = ..., name = ...)]` attribute is the only place that
//! says which tracepoint it attaches to: the attribute names the program's ELF section
//! (`tracepoint/<category>/<name>`) and the agent's loader reads that table back from the object
//! (`tssx_agent::loader::tracepoints`). A new program here is attached without touching the agent.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tssx_common::{
    event::{listener_key, Event, EventKind, PathKey, PendingCall, TraceConfig},
    AF_UNIX, COMM_LEN, SUN_PATH_LEN,
};

/// Offsets of the `syscalls:sys_enter_*` arguments (stable: every argument is 8 bytes from 16).
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
/// Offset of `long ret` in every `syscalls:sys_exit_*` tracepoint.
const RET: usize = 16;
/// `CLONE_THREAD` from linux/sched.h.
const CLONE_THREAD: u64 = 0x0001_0000;
/// How many fork generations an inherited listener is looked up through.
const MAX_INHERIT_DEPTH: u32 = 4;
/// Ring buffer flags from linux/bpf.h: submit without waking the reader / wake it always /
/// query the bytes not consumed yet.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Unread bytes in `EVENTS` from which every event wakes the agent (a quarter of the ring): below
/// it, per-connection events (connect, accept, fork, exit) wake nobody (see [`emit`]).
const WAKE_AT_UNREAD_BYTES: u64 = 256 << 10;

#[map]
static WATCHED_PATHS: HashMap<PathKey, u32> = HashMap::with_max_entries(256, 0);

#[map]
static CONFIG: Array<TraceConfig> = Array::with_max_entries(1, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static LISTENERS: HashMap<u64, u32> = HashMap::with_max_entries(16384, 0);

#[map]
static OWNERS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

#[map]
static PARENTS: HashMap<u32, u32> = HashMap::with_max_entries(32768, 0);

#[map]
static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

/// Clone flags of an in-flight `clone`/`clone3` by a listener owner, keyed by `pid_tgid`, so
/// that `sched_process_fork` can tell a new thread (`CLONE_THREAD`) from a new process.
#[map]
static CLONING: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

#[map]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Processes (tgid) that set up an io_uring, and their forked children (pid), to 1. LRU: an
/// insert never fails; entries go when the process (or thread) exits.
#[map]
static IO_URING_USERS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

// ---------------------------------------------------------------------------------------------
// bind / listen / connect: enter looks the address up, exit reports success.
// ---------------------------------------------------------------------------------------------

#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn tssx_enter_bind(ctx: TracePointContext) -> u32 {
    enter_with_address(&ctx, EventKind::Bind);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn tssx_exit_bind(ctx: TracePointContext) -> u32 {
    if let Some((call, pid_tgid)) = take_pending(&ctx, EventKind::Bind) {
        let tgid = (pid_tgid >> 32) as u32;
        let _ = LISTENERS.insert(&listener_key(tgid, call.fd as u32), &call.path_id, 0);
        // SAFETY: a plain lookup of a u32 value that we copy out at once.
        let held = unsafe { OWNERS.get(&tgid) }.copied().unwrap_or(0);
        let _ = OWNERS.insert(&tgid, &(held + 1), 0);
        emit(&ctx, pid_tgid, EventKind::Bind, call.path_id, call.fd, -1, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_listen")]
pub fn tssx_enter_listen(ctx: TracePointContext) -> u32 {
    // SAFETY: offset ARG0 is the `fd` argument of sys_enter_listen (see its format file).
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(ARG0) }) else { return 0 };
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(path_id) = watched_listener((pid_tgid >> 32) as u32, fd as u32) {
        park(pid_tgid, EventKind::Listen, path_id, fd as i32);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_listen")]
pub fn tssx_exit_listen(ctx: TracePointContext) -> u32 {
    if let Some((call, pid_tgid)) = take_pending(&ctx, EventKind::Listen) {
        emit(&ctx, pid_tgid, EventKind::Listen, call.path_id, call.fd, -1, 0);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn tssx_enter_connect(ctx: TracePointContext) -> u32 {
    enter_with_address(&ctx, EventKind::Connect);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn tssx_exit_connect(ctx: TracePointContext) -> u32 {
    if let Some((call, pid_tgid)) = take_pending(&ctx, EventKind::Connect) {
        emit(&ctx, pid_tgid, EventKind::Connect, call.path_id, call.fd, -1, 0);
    }
    0
}

// ---------------------------------------------------------------------------------------------
// accept / accept4
// ---------------------------------------------------------------------------------------------

#[tracepoint(category = "syscalls", name = "sys_enter_accept")]
pub fn tssx_enter_accept(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn tssx_exit_accept(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_accept4")]
pub fn tssx_enter_accept4(ctx: TracePointContext) -> u32 {
    enter_accept(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn tssx_exit_accept4(ctx: TracePointContext) -> u32 {
    exit_accept(&ctx);
    0
}

#[inline(always)]
fn enter_accept(ctx: &TracePointContext) {
    // SAFETY: offset ARG0 is the `fd` argument of sys_enter_accept and sys_enter_accept4.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(ARG0) }) else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(path_id) = watched_listener((pid_tgid >> 32) as u32, fd as u32) {
        park(pid_tgid, EventKind::Accept, path_id, fd as i32);
    }
}

#[inline(always)]
fn exit_accept(ctx: &TracePointContext) {
    // SAFETY: offset RET is `long ret` of every sys_exit_* tracepoint.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain lookup; the value is copied out at once.
    let Some(call) = (unsafe { PENDING.get(&pid_tgid) }).copied() else { return };
    let _ = PENDING.remove(&pid_tgid);
    if call.kind == EventKind::Accept as u32 && ret >= 0 {
        emit(ctx, pid_tgid, EventKind::Accept, call.path_id, call.fd, ret as i32, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// close, fork, exit: keep LISTENERS / PARENTS in step with the processes.
// ---------------------------------------------------------------------------------------------

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn tssx_enter_close(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Cheap filter first: most processes hold no watched listener.
    // SAFETY: plain lookup, only tested for presence.
    if unsafe { OWNERS.get(&tgid) }.is_none() {
        return 0;
    }
    // SAFETY: offset ARG0 is the `fd` argument of sys_enter_close.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(ARG0) }) else { return 0 };
    let key = listener_key(tgid, fd as u32);
    // SAFETY: plain lookup, only tested for presence.
    if unsafe { LISTENERS.get(&key) }.is_some() {
        let _ = LISTENERS.remove(&key);
        // SAFETY: plain lookup; the value is copied out at once.
        let held = unsafe { OWNERS.get(&tgid) }.copied().unwrap_or(1);
        if held <= 1 {
            let _ = OWNERS.remove(&tgid);
        } else {
            let _ = OWNERS.insert(&tgid, &(held - 1), 0);
        }
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_clone")]
pub fn tssx_enter_clone(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if holds_listeners((pid_tgid >> 32) as u32) {
        // SAFETY: offset ARG0 is `clone_flags` of sys_enter_clone (see its format file).
        if let Ok(flags) = unsafe { ctx.read_at::<u64>(ARG0) } {
            let _ = CLONING.insert(&pid_tgid, &flags, 0);
        }
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_clone3")]
pub fn tssx_enter_clone3(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if holds_listeners((pid_tgid >> 32) as u32) {
        // SAFETY: offset ARG0 is `struct clone_args *uargs` of sys_enter_clone3; `flags` is its
        // first u64 field. The user read is fault-checked.
        let flags = unsafe { ctx.read_at::<u64>(ARG0) }.and_then(|uargs| unsafe { bpf_probe_read_user(uargs as *const u64) });
        if let Ok(flags) = flags {
            let _ = CLONING.insert(&pid_tgid, &flags, 0);
        }
    }
    0
}

/// A process set up an io_uring: its connections stay plain from now on (the agent asks
/// `IO_URING_USERS` at every claim), and the agent traces it.
#[tracepoint(category = "syscalls", name = "sys_exit_io_uring_setup")]
pub fn tssx_exit_io_uring_setup(ctx: TracePointContext) -> u32 {
    // SAFETY: offset RET is `long ret` of every sys_exit tracepoint.
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(RET) }) else { return 0 };
    if ret < 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = IO_URING_USERS.insert(&((pid_tgid >> 32) as u32), &1, 0);
    emit(&ctx, pid_tgid, EventKind::IoUring, 0, ret as i32, -1, 0);
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn tssx_process_fork(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent = (pid_tgid >> 32) as u32;
    // SAFETY: plain lookup; nothing is kept.
    if unsafe { IO_URING_USERS.get(&parent) }.is_some() {
        // The child (a process, or a thread: then its tid, removed when it exits) may use the
        // ring it inherits.
        // SAFETY: the offset was read from this kernel's sched_process_fork format file.
        if let Ok(child) = unsafe { ctx.read_at::<i32>(cfg.fork_child_pid_off as usize) } {
            let _ = IO_URING_USERS.insert(&(child as u32), &1, 0);
        }
    }
    if !holds_listeners(parent) {
        return 0;
    }
    // SAFETY: plain lookup; the value is copied out at once.
    let flags = unsafe { CLONING.get(&pid_tgid) }.copied().unwrap_or(0);
    let _ = CLONING.remove(&pid_tgid);
    if flags & CLONE_THREAD != 0 {
        return 0; // a new thread shares the process's fds: nothing to inherit
    }
    // SAFETY: the offset was read from this kernel's sched_process_fork format file.
    let Ok(child) = (unsafe { ctx.read_at::<i32>(cfg.fork_child_pid_off as usize) }) else {
        return 0;
    };
    let _ = PARENTS.insert(&(child as u32), &parent, 0);
    emit(&ctx, pid_tgid, EventKind::Fork, 0, -1, -1, child as u32);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn tssx_process_exit(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: the offset was read from this kernel's sched_process_exit format file.
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(cfg.exit_pid_off as usize) }) else { return 0 };
    let pid = pid as u32;
    let group_dead = if cfg.exit_group_dead_off == TraceConfig::ABSENT {
        pid == tgid
    } else {
        // SAFETY: the offset was read from this kernel's sched_process_exit format file.
        unsafe { ctx.read_at::<u8>(cfg.exit_group_dead_off as usize) }.unwrap_or(0) != 0
    };
    let interesting = holds_listeners(tgid);
    if pid != tgid {
        // A thread's own entry (created when its clone passed through sched_process_fork).
        let _ = PARENTS.remove(&pid);
        let _ = IO_URING_USERS.remove(&pid);
    }
    if group_dead {
        let _ = IO_URING_USERS.remove(&tgid);
    }
    if group_dead && interesting {
        let _ = PARENTS.remove(&tgid);
        let _ = OWNERS.remove(&tgid);
        emit(&ctx, pid_tgid, EventKind::Exit, 0, -1, -1, 0);
    }
    0
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// The agent-filled configuration, or `None` until the agent has written it.
#[inline(always)]
fn config() -> Option<TraceConfig> {
    let cfg = CONFIG.get(0).copied()?;
    (cfg.ready != 0).then_some(cfg)
}

/// True if `tgid` holds watched listeners itself or inherited them from an ancestor.
#[inline(always)]
fn holds_listeners(tgid: u32) -> bool {
    // SAFETY: plain lookups, only tested for presence.
    unsafe { OWNERS.get(&tgid).is_some() || PARENTS.get(&tgid).is_some() }
}

/// The path id if `fd` of `tgid` is a watched listener, directly or inherited through fork.
#[inline(always)]
fn watched_listener(tgid: u32, fd: u32) -> Option<u32> {
    let mut owner = tgid;
    for _ in 0..MAX_INHERIT_DEPTH {
        // SAFETY: plain lookup; the value is copied out at once.
        if let Some(path_id) = unsafe { LISTENERS.get(&listener_key(owner, fd)) } {
            return Some(*path_id);
        }
        // SAFETY: plain lookup; the value is copied out at once.
        owner = unsafe { PARENTS.get(&owner) }.copied()?;
    }
    None
}

/// `bind`/`connect` entry: if the address is a watched Unix path, park the call for its exit.
#[inline(always)]
fn enter_with_address(ctx: &TracePointContext, kind: EventKind) {
    // SAFETY: ARG0..ARG2 are `fd`, the sockaddr pointer and `addrlen` of sys_enter_bind and
    // sys_enter_connect (see their format files).
    let (Ok(fd), Ok(addr), Ok(addrlen)) = (unsafe { (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG1), ctx.read_at::<u64>(ARG2)) })
    else {
        return;
    };
    let Some(path_id) = watched_path_id(addr as *const u8, addrlen as usize) else { return };
    park(bpf_get_current_pid_tgid(), kind, path_id, fd as i32);
}

/// Reads a user `sockaddr` and returns the id of the watched path it names, if any.
#[inline(always)]
fn watched_path_id(addr: *const u8, addrlen: usize) -> Option<u32> {
    const FAMILY_LEN: usize = 2;
    if addr.is_null() || addrlen <= FAMILY_LEN + 1 {
        return None; // unnamed or autobind addresses are never watched
    }
    // SAFETY: reads 2 bytes from the user pointer the syscall received; faults return Err.
    let family = unsafe { bpf_probe_read_user(addr.cast::<u16>()) }.ok()?;
    if family != AF_UNIX {
        return None;
    }
    let path_len = core::cmp::min(addrlen - FAMILY_LEN, SUN_PATH_LEN);
    // SAFETY: offset within the user's sockaddr; the helpers fault-check every access.
    let path_ptr = unsafe { addr.add(FAMILY_LEN) };
    let mut key: PathKey = [0; SUN_PATH_LEN];
    // SAFETY: one byte from the user pointer; faults return Err.
    let first = unsafe { bpf_probe_read_user(path_ptr) }.ok()?;
    if first == 0 {
        // Abstract name: not NUL-terminated, exactly `path_len` bytes are significant.
        // SAFETY: reads into our stack buffer from the user pointer; faults return Err.
        unsafe { bpf_probe_read_user_buf(path_ptr, &mut key) }.ok()?;
    } else {
        // Filesystem path: up to the first NUL (callers may leave garbage after it).
        // SAFETY: reads into our stack buffer from the user pointer; faults return Err.
        unsafe { bpf_probe_read_user_str_bytes(path_ptr, &mut key) }.ok()?;
    }
    // The kernel only looks at the first `path_len` bytes: clear the rest so keys compare equal.
    for (i, byte) in key.iter_mut().enumerate() {
        if i >= path_len {
            *byte = 0;
        }
    }
    // SAFETY: plain lookup; the value is copied out at once.
    unsafe { WATCHED_PATHS.get(&key) }.copied()
}

#[inline(always)]
fn park(pid_tgid: u64, kind: EventKind, path_id: u32, fd: i32) {
    let call = PendingCall { kind: kind as u32, path_id, fd, _reserved: 0 };
    let _ = PENDING.insert(&pid_tgid, &call, 0);
}

/// At a syscall's exit: the parked call of this thread if it is `kind` and returned 0.
#[inline(always)]
fn take_pending(ctx: &TracePointContext, kind: EventKind) -> Option<(PendingCall, u64)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain lookup; the value is copied out at once.
    let call = unsafe { PENDING.get(&pid_tgid) }.copied()?;
    let _ = PENDING.remove(&pid_tgid);
    // SAFETY: offset RET is `long ret` of every sys_exit_* tracepoint.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.ok()?;
    (call.kind == kind as u32 && ret == 0).then_some((call, pid_tgid))
}

/// Sends one event to the agent; counts it in `DROPPED` and logs if the ring buffer is full.
#[inline(always)]
fn emit(ctx: &TracePointContext, pid_tgid: u64, kind: EventKind, path_id: u32, fd: i32, new_fd: i32, other_pid: u32) {
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let event = Event {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        kind: kind as u32,
        path_id,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        fd,
        new_fd,
        other_pid,
        comm,
    };
    // Per-connection events wake nobody: a short connection must not cost a wake-up of the
    // agent (on a busy machine, a context switch as long as the whole connection). The agent
    // reads them when a claim arrives (a claim worker drains the ring before it checks), on its
    // 100 ms tick, or when the ring fills up; bind and listen (rare) wake it at once.
    let wake = matches!(kind, EventKind::Bind | EventKind::Listen) || EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKE_AT_UNREAD_BYTES;
    let flags = if wake { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    if EVENTS.output::<Event>(&event, flags).is_err() {
        if let Some(dropped) = DROPPED.get_ptr_mut(0) {
            // SAFETY: per-CPU slot; programs do not migrate CPUs while running.
            unsafe { *dropped += 1 };
        }
        warn!(ctx, "tssx: event ring buffer full, event dropped");
    }
}
