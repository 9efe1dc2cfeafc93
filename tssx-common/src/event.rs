//! Events from the eBPF programs to the agent, and the map keys and values around them.
//!
//! Every type here is `#[repr(C)]`, has no padding that could leak kernel stack bytes (fields are
//! ordered by size and the sizes are checked below), and is plain old data, so both sides can
//! read it with a byte copy.

use crate::{COMM_LEN, SUN_PATH_LEN};

/// A watched `sun_path`, zero-padded to 108 bytes: the key of the `WATCHED_PATHS` map.
///
/// A filesystem path is its bytes without the terminating NUL; an abstract name (written
/// `@name` on the command line) is a NUL byte followed by the name. The kernel side builds the
/// same key from the address a process passes to `bind`/`connect`, keeping only the first
/// `addrlen - 2` bytes, so the whole `sun_path` is compared.
pub type PathKey = [u8; SUN_PATH_LEN];

/// [`Event::path_id`] (and a parked call's) of an address that a pattern's literal prefix
/// covers but whose full match the agent decides (a glob: the event carries the address).
pub const PATH_ID_CANDIDATE: u32 = u32::MAX - 1;
/// [`Event::path_id`] (and a parked call's) of a relative filesystem address (not starting
/// with `/`): the agent resolves it against the caller's working directory.
pub const PATH_ID_RELATIVE: u32 = u32::MAX - 2;
/// Whether a path id names a pattern (an index into the agent's list), as opposed to
/// [`PATH_ID_CANDIDATE`] or [`PATH_ID_RELATIVE`].
pub const fn is_pattern_id(id: u32) -> bool {
    id < PATH_ID_RELATIVE
}

/// What happened. Stored as a `u32` in [`Event::kind`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// `bind()` succeeded on a watched path. `fd` is the socket.
    Bind = 1,
    /// `listen()` succeeded on a socket bound to a watched path. `fd` is the socket.
    Listen = 2,
    /// `connect()` to a watched path. From the syscall tracepoints: it succeeded, and `fd` is the
    /// client's socket. From the cgroup hook (`cgroup/connect_unix`, the default watcher): it
    /// was attempted (the hook runs before the kernel looks the address up, so it may still
    /// fail), `fd` is -1 (the hook sees no fd), and `new_fd`/`other_pid` carry the low/high
    /// halves of the client socket's cookie: see [`Event::socket_cookie`].
    Connect = 3,
    /// `accept()`/`accept4()` on a watched listener returned a connection. `fd` is the listener,
    /// `new_fd` the accepted socket.
    Accept = 4,
    /// A process holding (or inheriting) watched listeners forked. `tgid` is the parent,
    /// `other_pid` the child's pid. The child inherits the parent's listeners.
    Fork = 5,
    /// The last thread of a process that held (or inherited) watched listeners exited.
    Exit = 6,
    /// A process set up an io_uring (`io_uring_setup` succeeded; `fd` is the ring's fd). Its
    /// io_uring reads and writes bypass any preload, so its connections stay plain.
    /// `other_pid` is the hand-back signal sent to the calling thread (its hook held swapped
    /// connections and hands them back), 0 if none.
    IoUring = 7,
}

impl EventKind {
    /// Decodes the raw `kind` field; `None` for values this version does not know.
    pub const fn from_u32(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::Bind,
            2 => Self::Listen,
            3 => Self::Connect,
            4 => Self::Accept,
            5 => Self::Fork,
            6 => Self::Exit,
            7 => Self::IoUring,
            _ => return None,
        })
    }

    /// Lower-case name used in trace lines (`connect`, `accept`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Listen => "listen",
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::Fork => "fork",
            Self::Exit => "exit",
            Self::IoUring => "io_uring",
        }
    }
}

/// One record in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` when the event was recorded (CLOCK_MONOTONIC, nanoseconds).
    pub ts_ns: u64,
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Id of the watched pattern (the value in `WATCHED_PATHS` or `WATCHED_PREFIXES`, or the
    /// listener's in `LISTENERS`), or [`PATH_ID_CANDIDATE`] / [`PATH_ID_RELATIVE`] for the
    /// agent to decide; 0 for fork/exit.
    pub path_id: u32,
    /// Thread id of the calling task (what user space calls the tid).
    pub pid: u32,
    /// Thread-group id of the calling task (what user space calls the pid).
    pub tgid: u32,
    /// Effective uid of the calling task.
    pub uid: u32,
    /// The socket fd the call was made on (see [`EventKind`]); -1 when there is none.
    pub fd: i32,
    /// For [`EventKind::Accept`]: the accepted fd; for a connect seen by the cgroup hook: the
    /// low half of its socket cookie; -1 otherwise.
    pub new_fd: i32,
    /// For [`EventKind::Fork`]: the child's pid; for a connect seen by the cgroup hook: the
    /// high half of its socket cookie; 0 otherwise.
    pub other_pid: u32,
    /// The calling task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// For bind and connect: how many bytes of [`Event::addr`] the caller's address has.
    pub addr_len: u32,
    /// For bind and connect: the caller's `sun_path` (a path up to its NUL, an abstract name
    /// with its leading NUL), zero-padded; zeros otherwise.
    pub addr: PathKey,
}

/// An event without an address (listen, accept, fork, exit, io_uring, and a connect to a name
/// watched exactly): the first fields of an [`Event`] (up to `addr_len`), laid out the same, in
/// one 64-byte record with the ring's header (an [`Event`] takes 176 bytes of the ring, three
/// cache lines the kernel side writes on every connection). [`Event::from_bytes`] tells the two
/// apart by the record's length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHead {
    /// See [`Event::ts_ns`].
    pub ts_ns: u64,
    /// See [`Event::kind`].
    pub kind: u32,
    /// See [`Event::path_id`].
    pub path_id: u32,
    /// See [`Event::pid`].
    pub pid: u32,
    /// See [`Event::tgid`].
    pub tgid: u32,
    /// See [`Event::uid`].
    pub uid: u32,
    /// See [`Event::fd`].
    pub fd: i32,
    /// See [`Event::new_fd`].
    pub new_fd: i32,
    /// See [`Event::other_pid`].
    pub other_pid: u32,
    /// See [`Event::comm`].
    pub comm: [u8; COMM_LEN],
}

/// Size in bytes of one [`EventHead`] record.
pub const EVENT_HEAD_SIZE: usize = core::mem::size_of::<EventHead>();
// 56 bytes and the ring buffer's 8-byte record header: one 64-byte record, each in a cache line
// of its own (the ring's data area is page-aligned).
const _: () = assert!(EVENT_HEAD_SIZE == 56, "EventHead layout changed: update both sides");
// The kernel side fills an `Event`'s head through an `EventHead` pointer: same offsets.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(EventHead, ts_ns) == offset_of!(Event, ts_ns));
    assert!(offset_of!(EventHead, kind) == offset_of!(Event, kind));
    assert!(offset_of!(EventHead, path_id) == offset_of!(Event, path_id));
    assert!(offset_of!(EventHead, pid) == offset_of!(Event, pid));
    assert!(offset_of!(EventHead, tgid) == offset_of!(Event, tgid));
    assert!(offset_of!(EventHead, uid) == offset_of!(Event, uid));
    assert!(offset_of!(EventHead, fd) == offset_of!(Event, fd));
    assert!(offset_of!(EventHead, new_fd) == offset_of!(Event, new_fd));
    assert!(offset_of!(EventHead, other_pid) == offset_of!(Event, other_pid));
    assert!(offset_of!(EventHead, comm) == offset_of!(Event, comm));
};

/// A call parked between its enter and its exit (in its thread's [`ParkedSlot`], or in the
/// `PARKED` map keyed by `pid_tgid`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parked {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// The watched path's id.
    pub path_id: u32,
    /// The fd the call was made on.
    pub fd: i32,
    /// 1 if the call's [`PendingCall`] (with its address) is parked in `PENDING` too.
    pub full: u32,
}

/// A thread's slot in the `PARKED_BY_TID` array (index: the thread id): its parked call, valid
/// while `pid_tgid` is the thread's own (0: nothing parked).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkedSlot {
    /// `bpf_get_current_pid_tgid()` of the thread that parked `parked`; 0 once taken.
    pub pid_tgid: u64,
    /// The call.
    pub parked: Parked,
}

/// Slots the eBPF object declares in `PARKED_BY_TID` (the agent resizes it at load).
pub const PARKED_SLOTS_DEFAULT: u32 = 32768;
/// The most slots the agent gives `PARKED_BY_TID` (24 bytes each: 3 MiB), whatever `pid_max`.
pub const PARKED_SLOTS_MAX: u32 = 1 << 17;

/// Size in bytes of one [`Event`] record.
pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();
const _: () = assert!(EVENT_SIZE == 168, "Event layout changed: update both sides");

impl Event {
    /// The decoded kind, or `None` if the kernel side sent a kind this build does not know.
    pub const fn event_kind(&self) -> Option<EventKind> {
        EventKind::from_u32(self.kind)
    }

    /// The caller's address bytes (bind, connect; empty otherwise).
    pub fn addr_bytes(&self) -> &[u8] {
        &self.addr[..(self.addr_len as usize).min(SUN_PATH_LEN)]
    }

    /// The client socket's cookie (`SO_COOKIE`, the `sock_diag` cookie) of a connect seen by
    /// the cgroup hook; `None` for every other event.
    pub const fn socket_cookie(&self) -> Option<u64> {
        if self.kind == EventKind::Connect as u32 && self.fd < 0 {
            Some(self.new_fd as u32 as u64 | (self.other_pid as u64) << 32)
        } else {
            None
        }
    }

    /// The `comm` bytes up to the first NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.comm[..end]
    }

    /// Decodes a record read from the ring buffer: a whole [`Event`], or an [`EventHead`] (an
    /// event without an address; `addr` all zeros).
    ///
    /// Returns `None` if `bytes` is shorter than an [`EventHead`]; extra trailing bytes (a newer
    /// kernel side with a longer record) are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() >= EVENT_SIZE {
            // SAFETY: `bytes` holds at least EVENT_SIZE readable bytes; `Event` is `repr(C)`
            // plain old data for which every bit pattern is valid; `read_unaligned` has no
            // alignment need.
            return Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) });
        }
        if bytes.len() < EVENT_HEAD_SIZE {
            return None;
        }
        // SAFETY: as above, with EVENT_HEAD_SIZE bytes and `EventHead`.
        let head = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<EventHead>()) };
        Some(Event {
            ts_ns: head.ts_ns,
            kind: head.kind,
            path_id: head.path_id,
            pid: head.pid,
            tgid: head.tgid,
            uid: head.uid,
            fd: head.fd,
            new_fd: head.new_fd,
            other_pid: head.other_pid,
            comm: head.comm,
            addr_len: 0,
            addr: [0; SUN_PATH_LEN],
        })
    }
}

/// Key of the `QUIET` map: a process (tgid) and a watched pattern id.
pub const fn quiet_key(tgid: u32, path_id: u32) -> u64 {
    ((tgid as u64) << 32) | path_id as u64
}

/// Key of the `LISTENERS` map: a process and one of its fds.
pub const fn listener_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// The process (tgid) of a [`listener_key`].
pub const fn listener_owner(key: u64) -> u32 {
    (key >> 32) as u32
}

/// Offsets of the tracepoint fields whose layout changed across kernel versions, read by the
/// agent from `/sys/kernel/tracing/events/{sched,io_uring}/*/format` and stored in the `CONFIG` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceConfig {
    /// `sched_process_fork`: offset of `pid_t child_pid`.
    pub fork_child_pid_off: u32,
    /// `sched_process_exit`: offset of `pid_t pid`.
    pub exit_pid_off: u32,
    /// `sched_process_exit`: offset of `bool group_dead`, or [`TraceConfig::ABSENT`].
    pub exit_group_dead_off: u32,
    /// Non-zero once the agent filled this entry; programs do nothing before that.
    pub ready: u32,
    /// Non-zero if relative filesystem addresses are reported (as [`PATH_ID_RELATIVE`]): the
    /// agent watches filesystem patterns.
    pub relative: u32,
    /// `io_uring:io_uring_create`: offset of `int fd`, or [`TraceConfig::ABSENT`].
    pub io_uring_create_fd_off: u32,
    /// The lengths (bytes before the NUL) of the exact filesystem names in `WATCHED_PATHS`, one
    /// bit each (length `n`: bit `n % 32` of word `n / 32`). A filesystem address whose length
    /// has no bit is looked up in no hash map: a key equal to an exact name has its length.
    /// Every Unix `connect` of the machine runs the connect program, and most go to paths
    /// nobody watches; the hash of a 108-byte key was about a third of what such a connect
    /// cost the program.
    pub exact_lengths: [u32; 4],
    /// Non-zero if `WATCHED_PATHS` holds an exact abstract name.
    pub exact_abstract: u32,
    /// Non-zero if `WATCHED_PREFIXES` holds an entry.
    pub prefixes: u32,
    /// The connect hook's context, `struct bpf_sock_addr_kern` (read with
    /// `bpf_probe_read_kernel`, not through a stable field): byte offsets of `uaddr` (the
    /// kernel's copy of the address) and `uaddrlen`, from the running kernel's BTF (see
    /// [`TraceConfig::SOCK_ADDR_UADDR_OFF`]).
    pub sock_addr_uaddr_off: u32,
    /// See [`TraceConfig::sock_addr_uaddr_off`].
    pub sock_addr_uaddrlen_off: u32,
}

impl TraceConfig {
    /// Marks a field the running kernel does not have.
    pub const ABSENT: u32 = u32::MAX;
    /// `uaddr`'s offset in `struct bpf_sock_addr_kern` since Linux 6.7 (the first kernel with
    /// the Unix connect hook), used where the kernel publishes no BTF.
    pub const SOCK_ADDR_UADDR_OFF: u32 = 8;
    /// `uaddrlen`'s offset there, as [`TraceConfig::SOCK_ADDR_UADDR_OFF`].
    pub const SOCK_ADDR_UADDRLEN_OFF: u32 = 32;
    /// [`TraceConfig::exact_lengths`] that lets every length through (no prefilter).
    pub const EVERY_LENGTH: [u32; 4] = [u32::MAX; 4];

    /// Whether an address of `len` bytes (filesystem: before the NUL) may be an exact watched
    /// name (`abstract_name`: it starts with a NUL).
    #[inline(always)]
    pub fn may_be_exact(&self, abstract_name: bool, len: u32) -> bool {
        if abstract_name {
            return self.exact_abstract != 0;
        }
        self.exact_lengths.get((len / 32) as usize).is_some_and(|word| word & (1 << (len % 32)) != 0)
    }

    /// Sets the bit of an exact filesystem name of `len` bytes (see
    /// [`TraceConfig::exact_lengths`]).
    pub fn note_exact_length(&mut self, len: usize) {
        if let Some(word) = self.exact_lengths.get_mut(len / 32) {
            *word |= 1 << (len % 32);
        }
    }
}

/// What an `enter` program remembers for its `exit` program, keyed by `pid_tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingCall {
    /// An [`EventKind`] as `u32` (bind, listen, connect or accept).
    pub kind: u32,
    /// The watched path's id.
    pub path_id: u32,
    /// The fd the call was made on.
    pub fd: i32,
    /// Bytes of `addr` that count (bind, connect).
    pub addr_len: u32,
    /// The address (see [`Event::addr`]).
    pub addr: PathKey,
    /// `io_uring:io_uring_create`: offset of `int fd`, or [`TraceConfig::ABSENT`].
    pub io_uring_create_fd_off: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: these are `repr(C)` plain old data with no padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::TraceConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingCall {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Parked {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut comm = [0u8; COMM_LEN];
        comm[..6].copy_from_slice(b"server");
        Event {
            ts_ns: 123_456_789,
            kind: EventKind::Accept as u32,
            path_id: 2,
            pid: 41,
            tgid: 40,
            uid: 1000,
            fd: 3,
            new_fd: 7,
            other_pid: 0,
            comm,
            addr_len: 0,
            addr: [0; SUN_PATH_LEN],
        }
    }

    fn bytes_of(event: &Event) -> [u8; EVENT_SIZE] {
        // SAFETY: Event is repr(C) plain old data without padding (EVENT_SIZE is asserted).
        unsafe { core::mem::transmute_copy(event) }
    }

    #[test]
    fn decodes_what_the_kernel_side_writes() {
        let event = sample();
        let decoded = Event::from_bytes(&bytes_of(&event)).unwrap();
        assert_eq!(decoded, event);
        assert_eq!(decoded.event_kind(), Some(EventKind::Accept));
        assert_eq!(decoded.comm_bytes(), b"server");
    }

    #[test]
    fn field_offsets_are_fixed() {
        let bytes = bytes_of(&sample());
        assert_eq!(u64::from_ne_bytes(bytes[0..8].try_into().unwrap()), 123_456_789);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 4); // kind
        assert_eq!(u32::from_ne_bytes(bytes[20..24].try_into().unwrap()), 40); // tgid
        assert_eq!(i32::from_ne_bytes(bytes[32..36].try_into().unwrap()), 7); // new_fd
        assert_eq!(&bytes[40..46], b"server");
    }

    #[test]
    fn a_head_record_decodes_without_an_address() {
        let mut event = sample();
        event.kind = EventKind::Connect as u32;
        let bytes = bytes_of(&event);
        // The kernel side's `EventHead` record: the first 56 bytes.
        assert_eq!(Event::from_bytes(&bytes[..EVENT_HEAD_SIZE]), Some(event));
        // Whatever lies after the head in a record shorter than an `Event` is not an address.
        event.addr_len = 3;
        event.addr[..3].copy_from_slice(b"/x/");
        let decoded = Event::from_bytes(&bytes_of(&event)[..EVENT_SIZE - 1]).unwrap();
        assert_eq!((decoded.addr_len, decoded.addr_bytes()), (0, &b""[..]));
        assert_eq!(decoded.tgid, 40);
    }

    #[test]
    fn short_records_are_refused_and_longer_ones_accepted() {
        let bytes = bytes_of(&sample());
        assert_eq!(Event::from_bytes(&bytes[..EVENT_HEAD_SIZE - 1]), None);
        assert_eq!(Event::from_bytes(&[]), None);
        let mut longer = [0u8; EVENT_SIZE + 8];
        longer[..EVENT_SIZE].copy_from_slice(&bytes);
        assert_eq!(Event::from_bytes(&longer), Some(sample()));
    }

    #[test]
    fn unknown_kinds_and_full_comm() {
        let mut event = sample();
        event.kind = 99;
        assert_eq!(event.event_kind(), None);
        event.comm = *b"sixteen-bytes-xx";
        assert_eq!(event.comm_bytes(), b"sixteen-bytes-xx");
        for kind in [EventKind::Bind, EventKind::Listen, EventKind::Connect, EventKind::Accept, EventKind::Fork, EventKind::Exit] {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::Connect.name(), "connect");
    }

    #[test]
    fn listener_keys_pack_tgid_and_fd() {
        assert_eq!(listener_key(1, 2), (1 << 32) | 2);
        assert_eq!(listener_key(u32::MAX, u32::MAX), u64::MAX);
        assert_ne!(listener_key(1, 2), listener_key(2, 1));
        assert_eq!(listener_owner(listener_key(77, 3)), 77);
        assert_eq!(listener_key(77, 3) as u32, 3);
    }
}
