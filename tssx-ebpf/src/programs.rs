//! The tracepoint programs and their maps. See the crate docs for the flow.
//!
//! Each program's `#[tracepoint(category = ..., name = ...)]` attribute is the only place that
//! says which tracepoint it attaches to: the attribute names the program's ELF section
//! (`tracepoint/<category>/<name>`) and the agent's loader reads that table back from the object
//! (`tssx_agent::loader::tracepoints`). A new program here is attached without touching the agent.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_buf,
        bpf_probe_read_user_str_bytes, generated,
    },
    macros::{cgroup_sock_addr, map, tracepoint},
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, TracePointContext},
};
use aya_log_ebpf::warn;
use tssx_common::{
    event::{
        is_pattern_id, listener_key, quiet_key, Event, EventHead, EventKind, Parked, ParkedSlot, PathKey, PendingCall, TraceConfig,
        PARKED_SLOTS_DEFAULT, PATH_ID_RELATIVE,
    },
    heat::in_probe_window,
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

/// Literal prefixes of directory, glob and abstract-prefix patterns (see
/// `tssx_common::pattern::KernelKey`): the value is the pattern id when the prefix decides
/// alone, `PATH_ID_CANDIDATE` when the agent finishes the match on the event's address.
#[map]
static WATCHED_PREFIXES: LpmTrie<PathKey, u32> = LpmTrie::with_max_entries(256, 0);

/// Scratch space for a `bind`/`connect` address (too big for the 512-byte stack next to the
/// other values): per CPU, used within one program run.
#[map]
static SCRATCH: PerCpuArray<PendingCall> = PerCpuArray::with_max_entries(1, 0);

#[map]
static CONFIG: Array<TraceConfig> = Array::with_max_entries(1, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static LISTENERS: HashMap<u64, u32> = HashMap::with_max_entries(16384, 0);

#[map]
static OWNERS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Per process, for process ids below the array's size (the agent sizes it as
/// [`PARKED_BY_TID`]): not 0 once it may hold a watched listener. Set wherever its [`OWNERS`]
/// entry is made (a bind here, an inheritance by the agent), cleared when it exits; never
/// cleared earlier (a process that closed its listeners only costs its own closes a lookup).
/// Invariant: an `OWNERS` entry of a process within the array implies its flag. `close`, run by
/// every process of the machine, tests the flag (an array load) instead of looking `OWNERS` up.
#[map]
static MAY_OWN_LISTENERS: Array<u32> = Array::with_max_entries(PARKED_SLOTS_DEFAULT, 0);

#[map]
static PARENTS: HashMap<u32, u32> = HashMap::with_max_entries(32768, 0);

#[map]
static PENDING: HashMap<u64, PendingCall> = HashMap::with_max_entries(16384, 0);

/// A call on a watched path or listener between its enter and its exit, keyed by `pid_tgid`:
/// what the exit needs to report it, in 16 bytes. Every connect, accept and listen on a watched
/// path parks here; only a call whose event must carry its address (bind, and a connect the
/// agent has to decide: a glob candidate or a relative address) also parks its full
/// [`PendingCall`] (128 bytes, address included) in [`PENDING`] (`Parked::full`). Per accepted
/// connection that is one small insert and no 108-byte address to clear or copy.
#[map]
static PARKED: HashMap<u64, Parked> = HashMap::with_max_entries(16384, 0);

/// The same, for threads whose id is below this array's size (the agent sizes it to the
/// machine's `pid_max`, at most [`tssx_common::event::PARKED_SLOTS_MAX`]): slot `tid` belongs
/// to the live thread of that id, so parking is a plain store and no lock, allocation or hash
/// (about 6 hash-map operations less per watched connection: an insert, a lookup and a delete
/// at each end). Threads with higher ids (`pid_max` raised after the agent started) use
/// [`PARKED`]. A slot holds its thread's `pid_tgid`, and its exit clears it: a slot left by a
/// thread that died in between (an exit the program did not see) never matches another.
#[map]
static PARKED_BY_TID: Array<ParkedSlot> = Array::with_max_entries(PARKED_SLOTS_DEFAULT, 0);

/// Clone flags of an in-flight `clone`/`clone3` by a listener owner, keyed by `pid_tgid`, so
/// that `sched_process_fork` can tell a new thread (`CLONE_THREAD`) from a new process.
#[map]
static CLONING: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

#[map]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Processes and patterns whose connections keep ending plain (`quiet_key(tgid, pattern)`), to
/// the coarse-clock time until which the connect hook reports only their connects made in a
/// probe window: the hook of such a process tracks no other connection of that path, so their
/// events would only cost the connect its record and the agent its reading. Filled by the
/// agent. LRU: an insert never fails; an entry pushed out only reports that process again.
#[map]
static QUIET: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Connects left unreported because of [`QUIET`] (the agent's `status --stats`).
#[map]
static QUIET_SKIPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Processes (tgid) that set up an io_uring, and their forked children (pid), to 1. LRU: an
/// insert never fails; entries go when the process (or thread) exits.
#[map]
static IO_URING_USERS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// Processes (tgid) whose hook holds (or held) swapped connections, to the signal its hand-back
/// handler is installed for (`tssx_common::HANDBACK_SIGNAL`); filled by the agent when it pairs
/// a claim. A forked child inherits the entry (and the handler); exec and exit remove it (the
/// new image has no handler: the signal's default action would kill it). LRU: an insert never
/// fails; an entry pushed out only costs that process the hand-back.
#[map]
static HANDBACK_ON_IO_URING: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

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
    if let Some((parked, pid_tgid)) = take_parked(&ctx, EventKind::Bind) {
        let tgid = (pid_tgid >> 32) as u32;
        let (path_id, fd) = (parked.path_id, parked.fd);
        // A candidate (glob, relative address) is recorded undecided (its path id says so):
        // its accepts are reported from now on, and the agent, which matches the bind event's
        // address, sets the pattern's id or removes the entry.
        let _ = LISTENERS.insert(&listener_key(tgid, fd as u32), &path_id, 0);
        // SAFETY: a plain lookup of a u32 value that we copy out at once.
        let held = unsafe { OWNERS.get(&tgid) }.copied().unwrap_or(0);
        let _ = OWNERS.insert(&tgid, &(held + 1), 0);
        set_may_own_listeners(tgid, 1);
        emit_parked(&ctx, pid_tgid, EventKind::Bind, parked);
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
    if let Some((parked, pid_tgid)) = take_parked(&ctx, EventKind::Listen) {
        emit(&ctx, pid_tgid, EventKind::Listen, parked.path_id, parked.fd, -1, 0);
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
    if let Some((parked, pid_tgid)) = take_parked(&ctx, EventKind::Connect) {
        emit_parked(&ctx, pid_tgid, EventKind::Connect, parked);
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
    let Some(parked) = unpark(pid_tgid) else { return };
    if parked.kind == EventKind::Accept as u32 && ret >= 0 {
        emit(ctx, pid_tgid, EventKind::Accept, parked.path_id, parked.fd, ret as i32, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// close, fork, exit: keep LISTENERS / PARENTS in step with the processes.
// ---------------------------------------------------------------------------------------------

#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn tssx_enter_close(ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Cheap filter first: most processes hold no watched listener. (Looking LISTENERS up
    // directly, one lookup instead of two for a listener's owner, measured slower per close.)
    match MAY_OWN_LISTENERS.get(tgid) {
        Some(0) => return 0,
        Some(_) => {}
        // SAFETY: plain lookup, only tested for presence.
        None if unsafe { OWNERS.get(&tgid) }.is_none() => return 0,
        None => {}
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
/// `IO_URING_USERS` at every claim), and the agent traces it. If its hook holds swapped
/// connections (`HANDBACK_ON_IO_URING`), the calling thread gets the hook's hand-back signal:
/// sent here, at the end of `io_uring_setup` (the kernel traces the creation after it
/// installed the ring's fd, in the calling thread), it is pending when the thread returns to
/// user space, so the hook's handler runs (and hands every swapped connection back to the
/// kernel) before the application's next instruction, before it can submit anything on the
/// new ring. The thread, not the process (`bpf_send_signal_thread`): another thread taking it
/// would let this one submit meanwhile.
///
/// The `io_uring` tracepoint, not `syscalls:sys_exit_io_uring_setup`: while any syscall
/// tracepoint is attached, every system call of the machine takes the kernel's slow path.
#[tracepoint(category = "io_uring", name = "io_uring_create")]
pub fn tssx_io_uring_create(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let fd = if cfg.io_uring_create_fd_off == TraceConfig::ABSENT {
        -1
    } else {
        // SAFETY: the offset was read from this kernel's io_uring_create format file.
        unsafe { ctx.read_at::<i32>(cfg.io_uring_create_fd_off as usize) }.unwrap_or(-1)
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let _ = IO_URING_USERS.insert(&tgid, &1, 0);
    // SAFETY: plain lookup; the value is copied out at once.
    let signal = unsafe { HANDBACK_ON_IO_URING.get(&tgid) }.copied().unwrap_or(0);
    // `other_pid` carries the signal sent (0: none) for the agent's trace.
    let mut sent = 0;
    if signal != 0 {
        // SAFETY: a helper call with a plain integer; it signals the current thread only.
        if unsafe { generated::bpf_send_signal_thread(signal) } == 0 {
            sent = signal;
        }
    }
    emit(&ctx, pid_tgid, EventKind::IoUring, 0, fd, -1, sent);
    0
}

/// A new image: no hand-back handler any more (and its hook, if any, has not claimed yet).
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn tssx_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: plain lookup, only tested for presence (most processes have no entry).
    if unsafe { HANDBACK_ON_IO_URING.get(&tgid) }.is_some() {
        let _ = HANDBACK_ON_IO_URING.remove(&tgid);
    }
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
    // SAFETY: plain lookup; the value is copied out at once.
    if let Some(signal) = unsafe { HANDBACK_ON_IO_URING.get(&parent) }.copied() {
        // A forked child holds the same swapped connections and the same handler (a thread:
        // its tid, removed when it exits; the process's entry covers it anyway).
        // SAFETY: the offset was read from this kernel's sched_process_fork format file.
        if let Ok(child) = unsafe { ctx.read_at::<i32>(cfg.fork_child_pid_off as usize) } {
            let _ = HANDBACK_ON_IO_URING.insert(&(child as u32), &signal, 0);
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
    clear_parked_slot(pid);
    if pid != tgid {
        // A thread's own entry (created when its clone passed through sched_process_fork).
        let _ = PARENTS.remove(&pid);
        let _ = IO_URING_USERS.remove(&pid);
        let _ = HANDBACK_ON_IO_URING.remove(&pid);
    }
    if group_dead {
        let _ = IO_URING_USERS.remove(&tgid);
        let _ = HANDBACK_ON_IO_URING.remove(&tgid);
        set_may_own_listeners(tgid, 0);
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

/// `bind`/`connect` entry: if the address is a watched Unix path, or one the agent must look
/// at (a glob candidate, a relative path), park the call (with its address) for its exit.
#[inline(always)]
fn enter_with_address(ctx: &TracePointContext, kind: EventKind) {
    // SAFETY: ARG0..ARG2 are `fd`, the sockaddr pointer and `addrlen` of sys_enter_bind and
    // sys_enter_connect (see their format files).
    let (Ok(fd), Ok(addr), Ok(addrlen)) = (unsafe { (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG1), ctx.read_at::<u64>(ARG2)) })
    else {
        return;
    };
    let Some(call) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: the per-CPU scratch entry: this program run alone uses it (no preemption within
    // a tracepoint program on one CPU), and it is a valid, aligned map value.
    let call = unsafe { &mut *call };
    if !read_address(addr as *const u8, addrlen as usize, call) {
        return;
    }
    let Some(config) = config() else { return };
    let Some((path_id, exact)) = watched_path_id(&config, &call.addr, call.addr_len) else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    // A connect to a name watched exactly needs no address in its event (the pattern is the
    // name); a bind's event always carries it (the agent records the listener's name).
    let full = kind == EventKind::Bind || !exact;
    if full {
        call.kind = kind as u32;
        call.path_id = path_id;
        call.fd = fd as i32;
        let _ = PENDING.insert(&pid_tgid, call, 0);
    }
    park_call(pid_tgid, &Parked { kind: kind as u32, path_id, fd: fd as i32, full: full as u32 });
}

// ---------------------------------------------------------------------------------------------
// connect, seen by the cgroup hook (the default watcher: no syscall tracepoint).
// ---------------------------------------------------------------------------------------------

/// Every Unix `connect` of the machine (`BPF_CGROUP_UNIX_CONNECT`, attached by the agent at the
/// cgroup v2 root with the `bpf` system call: aya 0.14 has no attach type for it, so the
/// section is one aya parses and never loads). Runs before the kernel looks the address up: a
/// connect to a missing path runs it too. Always allows the call. A connect to a watched name
/// (or one the agent must decide: a glob candidate, a relative name) becomes a
/// [`EventKind::Connect`] event without an fd, with the client socket's cookie, which the
/// agent matches with `sock_diag` when the connection is claimed.
#[cgroup_sock_addr(connect4)]
pub fn tssx_connect_unix(ctx: SockAddrContext) -> i32 {
    connect_unix(&ctx);
    1
}

#[inline(always)]
fn connect_unix(ctx: &SockAddrContext) {
    let Some(config) = config() else { return };
    let kern = ctx.sock_addr as *const u8;
    // The address pointer and its length in the kernel's `struct bpf_sock_addr_kern` (the
    // context's real layout), at the offsets the agent read from the kernel's BTF.
    let (uaddr_at, len_at) = (config.sock_addr_uaddr_off as usize, config.sock_addr_uaddrlen_off as usize);
    // SAFETY: the helper checks the read; the context is the kernel's bpf_sock_addr_kern.
    let (Ok(uaddr), Ok(len)) = (unsafe {
        (bpf_probe_read_kernel(kern.wrapping_add(uaddr_at).cast::<u64>()), bpf_probe_read_kernel(kern.wrapping_add(len_at).cast::<u32>()))
    }) else {
        return;
    };
    let Some(call) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: the per-CPU scratch entry, used by this program run alone.
    let call = unsafe { &mut *call };
    const FAMILY_LEN: usize = 2;
    let len = len as usize;
    if len <= FAMILY_LEN + 1 {
        return;
    }
    let path_len = core::cmp::min(len - FAMILY_LEN, SUN_PATH_LEN);
    let path = (uaddr as *const u8).wrapping_add(FAMILY_LEN);
    call.addr = [0; SUN_PATH_LEN];
    // SAFETY: the kernel's copy of the address; the helper checks the read.
    let Ok(first) = (unsafe { bpf_probe_read_kernel(path) }) else { return };
    let read = if first == 0 {
        // Abstract: exactly `path_len` bytes count.
        // SAFETY: as above, into the scratch entry.
        if unsafe { bpf_probe_read_kernel_buf(path, &mut call.addr) }.is_err() {
            return;
        }
        SUN_PATH_LEN
    } else {
        // SAFETY: as above, up to the NUL.
        match unsafe { bpf_probe_read_kernel_str_bytes(path, &mut call.addr) } {
            Ok(bytes) => bytes.len(),
            Err(_) => return,
        }
    };
    if read > path_len {
        for (i, byte) in call.addr.iter_mut().enumerate() {
            if i >= path_len {
                *byte = 0;
            }
        }
    }
    call.addr_len = core::cmp::min(read, path_len) as u32;
    let Some((path_id, exact)) = watched_path_id(&config, &call.addr, call.addr_len) else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    if quiet((pid_tgid >> 32) as u32, path_id) {
        return count_quiet();
    }
    // SAFETY: the context is the program's own `bpf_sock_addr`, which this helper takes.
    let cookie = unsafe { generated::bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let kind = EventKind::Connect;
    // The cookie's halves, where a tracepoint's connect has its (unused) `new_fd`/`other_pid`.
    let (low, high) = (cookie as u32 as i32, (cookie >> 32) as u32);
    // `other_pid` is the cookie here, not a signal: only io_uring events wake for it.
    let flags = wake_flags(kind, path_id, 0);
    if exact {
        // No log line when the ring is full (aya-log's map is not relocated for this
        // program): the drop is counted.
        let Some(mut entry) = EVENTS.reserve::<EventHead>(0) else { return count_dropped() };
        // SAFETY: a reserved, writable record of `size_of::<EventHead>()` bytes.
        unsafe { fill_head(entry.as_mut_ptr(), pid_tgid, kind, path_id, -1, low, high) };
        entry.submit(flags);
        return;
    }
    // A candidate (glob) or a relative name: the agent decides on the address.
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else { return count_dropped() };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable record of `size_of::<Event>()` bytes,
    // whose first bytes are laid out as an `EventHead` (checked in tssx-common); every field is
    // written before it is submitted.
    unsafe {
        fill_head(event.cast::<EventHead>(), pid_tgid, kind, path_id, -1, low, high);
        (*event).addr_len = call.addr_len;
        (*event).addr = call.addr;
    }
    entry.submit(flags);
}

/// Whether process `tgid`'s connects on pattern `path_id` go unreported now: the agent found
/// them quiet ([`QUIET`]) and this is no probe window (`tssx_common::heat`, the windows whose
/// connections the process's hook still tracks on a cool path).
#[inline(always)]
fn quiet(tgid: u32, path_id: u32) -> bool {
    if !is_pattern_id(path_id) {
        return false; // the agent decides the pattern on the address
    }
    // SAFETY: a value read by copy, at once.
    let Some(&until) = (unsafe { QUIET.get(&quiet_key(tgid, path_id)) }) else { return false };
    // SAFETY: a helper without arguments (CLOCK_MONOTONIC_COARSE, as the hook's windows).
    let now = unsafe { generated::bpf_ktime_get_coarse_ns() };
    now < until && !in_probe_window(now)
}

/// Counts a connect left unreported by [`quiet`].
#[inline(always)]
fn count_quiet() {
    if let Some(skipped) = QUIET_SKIPPED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs while running.
        unsafe { *skipped += 1 };
    }
}

/// Counts an event dropped because the ring buffer is full (the agent warns about the count).
#[inline(always)]
fn count_dropped() {
    if let Some(dropped) = DROPPED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; programs do not migrate CPUs while running.
        unsafe { *dropped += 1 };
    }
}

/// Reads a user `sockaddr` into `call.addr`/`call.addr_len` (zero-padded): false if it is no
/// named Unix address.
#[inline(always)]
fn read_address(addr: *const u8, addrlen: usize, call: &mut PendingCall) -> bool {
    const FAMILY_LEN: usize = 2;
    if addr.is_null() || addrlen <= FAMILY_LEN + 1 {
        return false; // unnamed or autobind addresses are never watched
    }
    // SAFETY: reads 2 bytes from the user pointer the syscall received; faults return Err.
    let Ok(family) = (unsafe { bpf_probe_read_user(addr.cast::<u16>()) }) else { return false };
    if family != AF_UNIX {
        return false;
    }
    let path_len = core::cmp::min(addrlen - FAMILY_LEN, SUN_PATH_LEN);
    // SAFETY: offset within the user's sockaddr; the helpers fault-check every access.
    let path_ptr = unsafe { addr.add(FAMILY_LEN) };
    call.addr = [0; SUN_PATH_LEN];
    // SAFETY: one byte from the user pointer; faults return Err.
    let Ok(first) = (unsafe { bpf_probe_read_user(path_ptr) }) else { return false };
    // `read`: the bytes read before the NUL (filesystem path) or the whole buffer (abstract).
    let read = if first == 0 {
        // Abstract name: not NUL-terminated, exactly `path_len` bytes are significant.
        // SAFETY: reads into the scratch buffer from the user pointer; faults return Err.
        if unsafe { bpf_probe_read_user_buf(path_ptr, &mut call.addr) }.is_err() {
            return false;
        }
        SUN_PATH_LEN
    } else {
        // Filesystem path: up to the first NUL (callers may leave garbage after it).
        // SAFETY: reads into the scratch buffer from the user pointer; faults return Err.
        match unsafe { bpf_probe_read_user_str_bytes(path_ptr, &mut call.addr) } {
            Ok(bytes) => bytes.len(),
            Err(_) => return false,
        }
    };
    let len = core::cmp::min(read, path_len);
    // The kernel only looks at the first `path_len` bytes: clear the rest so keys compare equal.
    // A filesystem path whose NUL comes within `path_len` (every well-formed address) has
    // nothing after it: the buffer was cleared and the string read stopped at its NUL.
    if read > path_len {
        for (i, byte) in call.addr.iter_mut().enumerate() {
            if i >= path_len {
                *byte = 0;
            }
        }
    }
    call.addr_len = len as u32;
    true
}

/// The id of the watched pattern that `key` (a `sun_path`, zero-padded) falls under, and
/// whether the pattern is exactly that name: an exact name (hash), else the longest literal
/// prefix (LPM trie: a pattern id, or `PATH_ID_CANDIDATE`); a relative path is
/// `PATH_ID_RELATIVE` if the agent asked for them. `len`: the address's length as read (a
/// filesystem name's bytes before its NUL); a map the configuration says cannot hold the name
/// is not looked at (see `TraceConfig::exact_lengths`).
#[inline(always)]
fn watched_path_id(config: &TraceConfig, key: &PathKey, len: u32) -> Option<(u32, bool)> {
    if key[0] != 0 && key[0] != b'/' {
        return (config.relative != 0).then_some((PATH_ID_RELATIVE, false));
    }
    if config.may_be_exact(key[0] == 0, len) {
        // SAFETY: plain lookup; the value is copied out at once.
        if let Some(id) = unsafe { WATCHED_PATHS.get(key) } {
            return Some((*id, true));
        }
    }
    if config.prefixes == 0 {
        return None;
    }
    let lookup = LOOKUP.get_ptr_mut(0)?;
    // SAFETY: the per-CPU lookup entry: this program run alone uses it.
    let lookup = unsafe { &mut *lookup };
    lookup.prefix_len = (SUN_PATH_LEN * 8) as u32;
    lookup.data = *key;
    WATCHED_PREFIXES.get(&*lookup).map(|id| (*id, false))
}

/// A per-CPU LPM-trie lookup key (112 bytes: off the stack).
#[map]
static LOOKUP: PerCpuArray<LpmKey<PathKey>> = PerCpuArray::with_max_entries(1, 0);

/// Parks an address-less call (listen, accept) for its exit.
#[inline(always)]
fn park(pid_tgid: u64, kind: EventKind, path_id: u32, fd: i32) {
    park_call(pid_tgid, &Parked { kind: kind as u32, path_id, fd, full: 0 });
}

/// Parks `parked` for this thread's exit: in its `PARKED_BY_TID` slot, else in `PARKED`.
#[inline(always)]
fn park_call(pid_tgid: u64, parked: &Parked) {
    if let Some(slot) = PARKED_BY_TID.get_ptr_mut(pid_tgid as u32) {
        // SAFETY: a valid, aligned array value; slot `tid` is written only by programs running
        // in the thread of that id (this one), and one thread runs one program at a time.
        unsafe { *slot = ParkedSlot { pid_tgid, parked: *parked } };
    } else {
        let _ = PARKED.insert(&pid_tgid, parked, 0);
    }
}

/// Takes this thread's parked call, if any (its slot is cleared, its `PARKED` entry removed).
#[inline(always)]
fn unpark(pid_tgid: u64) -> Option<Parked> {
    if let Some(slot) = PARKED_BY_TID.get_ptr_mut(pid_tgid as u32) {
        // SAFETY: as in `park_call`: this thread's own slot.
        let slot = unsafe { &mut *slot };
        if slot.pid_tgid != pid_tgid {
            return None; // nothing parked (0), or a dead thread's leftover
        }
        slot.pid_tgid = 0;
        return Some(slot.parked);
    }
    // SAFETY: plain lookup; the value is copied out at once.
    let parked = unsafe { PARKED.get(&pid_tgid) }.copied()?;
    let _ = PARKED.remove(&pid_tgid);
    Some(parked)
}

/// Sets process `tgid`'s [`MAY_OWN_LISTENERS`] flag (nothing beyond the array).
#[inline(always)]
fn set_may_own_listeners(tgid: u32, flag: u32) {
    if let Some(slot) = MAY_OWN_LISTENERS.get_ptr_mut(tgid) {
        // SAFETY: a valid, aligned array value; one aligned u32 store. Stores race only with
        // stores of the same value (binds, the agent's inheritance) or after the process
        // exited (a late inheritance leaves a stale 1 for a reused id: its closes then look
        // the listener map up, as before the flag existed).
        unsafe { *slot = flag };
    }
}

/// Forgets whatever thread `tid` left parked (it exits).
#[inline(always)]
fn clear_parked_slot(tid: u32) {
    if let Some(slot) = PARKED_BY_TID.get_ptr_mut(tid) {
        // SAFETY: a valid, aligned array value; its thread is exiting and runs no more calls.
        unsafe { (*slot).pid_tgid = 0 };
    }
}

/// At a syscall's exit: the parked call of this thread if it is `kind` and returned 0.
#[inline(always)]
fn take_parked(ctx: &TracePointContext, kind: EventKind) -> Option<(Parked, u64)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let parked = unpark(pid_tgid)?;
    // SAFETY: offset RET is `long ret` of every sys_exit_* tracepoint.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.ok();
    if parked.kind != kind as u32 || ret != Some(0) {
        if parked.full != 0 {
            let _ = PENDING.remove(&pid_tgid);
        }
        return None;
    }
    Some((parked, pid_tgid))
}

/// Sends the event of a parked bind/connect: with its address if it parked one.
#[inline(always)]
fn emit_parked(ctx: &TracePointContext, pid_tgid: u64, kind: EventKind, parked: Parked) {
    if parked.full == 0 {
        emit(ctx, pid_tgid, kind, parked.path_id, parked.fd, -1, 0);
        return;
    }
    // SAFETY: plain lookup; the value is copied out at once (into the scratch entry).
    let Some(call) = (unsafe { PENDING.get(&pid_tgid) }) else { return };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: the per-CPU scratch entry: this program run alone uses it.
    unsafe { *scratch = *call };
    let _ = PENDING.remove(&pid_tgid);
    // SAFETY: as above; filled just now.
    let call = unsafe { &*scratch };
    emit_full(ctx, pid_tgid, kind, call);
}

/// Sends one event without an address: an [`EventHead`], 56 bytes (with the ring's record
/// header, one cache line of the ring instead of three).
#[inline(always)]
fn emit(ctx: &TracePointContext, pid_tgid: u64, kind: EventKind, path_id: u32, fd: i32, new_fd: i32, other_pid: u32) {
    let flags = wake_flags(kind, path_id, other_pid);
    let Some(mut entry) = EVENTS.reserve::<EventHead>(0) else {
        ring_full(ctx);
        return;
    };
    // SAFETY: a reserved, writable record of `size_of::<EventHead>()` bytes.
    unsafe { fill_head(entry.as_mut_ptr(), pid_tgid, kind, path_id, fd, new_fd, other_pid) };
    entry.submit(flags);
}

/// Sends the event of a parked bind/connect with its address: a whole [`Event`] (written in
/// place in the ring: it is too big for the stack).
#[inline(always)]
fn emit_full(ctx: &TracePointContext, pid_tgid: u64, kind: EventKind, call: &PendingCall) {
    let flags = wake_flags(kind, call.path_id, 0);
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        ring_full(ctx);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable record of `size_of::<Event>()` bytes,
    // whose first bytes are laid out as an `EventHead` (checked in tssx-common); every field is
    // written before it is submitted.
    unsafe {
        fill_head(event.cast::<EventHead>(), pid_tgid, kind, call.path_id, call.fd, -1, 0);
        (*event).addr_len = call.addr_len;
        (*event).addr = call.addr;
    }
    entry.submit(flags);
}

/// Whether an event wakes the agent.
///
/// Per-connection events wake nobody: a short connection must not cost a wake-up of the agent
/// (on a busy machine, a context switch as long as the whole connection). The agent reads them
/// when a claim arrives (a claim worker drains the ring before it checks), on its 100 ms tick,
/// or when the ring fills up; bind and listen (rare) wake it at once.
///
/// A relative address (rare) wakes it too: the agent resolves it against the caller's working
/// directory, which it reads while the caller most likely still runs. So does an io_uring set
/// up by a process whose hook was signalled to hand back (`other_pid` not 0): the agent traces
/// why its connections go back to the socket.
#[inline(always)]
fn wake_flags(kind: EventKind, path_id: u32, other_pid: u32) -> u64 {
    let wake = matches!(kind, EventKind::Bind | EventKind::Listen)
        || path_id == PATH_ID_RELATIVE
        || matches!(kind, EventKind::IoUring) && other_pid != 0
        || EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKE_AT_UNREAD_BYTES;
    if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Counts a dropped event in `DROPPED` and logs it: the ring buffer is full.
#[inline(always)]
fn ring_full(ctx: &TracePointContext) {
    count_dropped();
    warn!(ctx, "tssx: event ring buffer full, event dropped");
}

/// Writes every field of an event's head (all of an [`EventHead`]; an [`Event`]'s `addr_len`
/// and `addr` are the caller's).
///
/// # Safety
/// `head` points at a writable record of at least `size_of::<EventHead>()` bytes.
#[inline(always)]
unsafe fn fill_head(head: *mut EventHead, pid_tgid: u64, kind: EventKind, path_id: u32, fd: i32, new_fd: i32, other_pid: u32) {
    // SAFETY: per the contract, every field written lies within the record.
    unsafe {
        (*head).ts_ns = bpf_ktime_get_ns();
        (*head).kind = kind as u32;
        (*head).path_id = path_id;
        (*head).pid = pid_tgid as u32;
        (*head).tgid = (pid_tgid >> 32) as u32;
        (*head).uid = bpf_get_current_uid_gid() as u32;
        (*head).fd = fd;
        (*head).new_fd = new_fd;
        (*head).other_pid = other_pid;
        (*head).comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    }
}
