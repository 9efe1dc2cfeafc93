//! The shared-memory ABI of one connection's segment.
//!
//! One sealed memfd per swapped connection holds a [`SegmentHeader`] followed by two
//! single-producer single-consumer byte rings, one per direction. Both ends of the connection
//! (and the agent, which creates it) map the same memfd, so everything here is `#[repr(C)]`
//! with fixed sizes and alignments checked at compile time, and every field that changes after
//! creation is an atomic. `core::sync::atomic::AtomicU32`/`AtomicU64` have the size and
//! alignment of `u32`/`u64`, so they are ABI-compatible with the plain integers a C reader
//! would declare.
//!
//! # Layout
//!
//! ```text
//! offset 0                    SegmentHeader (2048 bytes, 64-byte aligned)
//!   0    immutable:           magic, version, header_size, total_size, ring_capacity,
//!                             ring_offsets[2]
//!   48   mutable, rarely:     tssx[2], state, refcount[2], reserved, socket_inode[2]
//!                             (padded to 128)
//!   128  asleep[2]            (written only around a sleep; read after every transfer)
//!   192  shut[2]              (shutdown(2) bits of each end)
//!   256  rings[0] (A->B)      producer line: head, producer lock, geometry
//!                             consumer line: tail, consumer lock
//!   384  rings[1] (B->A)      same
//!   512  ends[0] (A)          migration lines of end A (see [`EndLine`])
//!   640  ends[1] (B)          migration lines of end B
//!   768  anc[0] (A->B)        ancillary records of ring A->B (see [`AncQueue`])
//!   1408 anc[1] (B->A)        same (the header is 2048 bytes)
//! RING_DATA_OFFSET (4096)     ring data A->B, `ring_capacity` bytes
//! align_up(.., 4096)          ring data B->A, `ring_capacity` bytes
//! align_up(.., 4096)          end = total_size
//! ```
//!
//! [`SegmentLayout::new`] computes these offsets; readers must check the header against it
//! (see [`SegmentHeader::check`]) before trusting any offset.
//!
//! # Rules for every field
//!
//! * Immutable fields are written once by the creator before the memfd is passed to anyone
//!   (the `SCM_RIGHTS` transfer orders them before the receiver's reads) and never change.
//! * A reader copies the immutable values it needs (capacity, sizes) into private memory once,
//!   after validation, and never re-reads them: the peer is another process and may be buggy.
//! * Ring positions are free-running `u64` byte counters (they never wrap in practice; code
//!   still uses wrapping arithmetic). The index of position `p` is
//!   `(p + offset) & (capacity - 1)`, where `capacity` and `offset` are the ring's current
//!   geometry ([`ProducerLine::geometry`], see "Rings that grow" below); `capacity` is at most
//!   `ring_capacity`, the bytes mapped for the ring. A ring is empty when `head == tail` and
//!   full when `head - tail == capacity`.
//! * Each atomic documents who writes it and with which ordering.
//!
//! # Rings that grow
//!
//! Each ring's data region is `ring_capacity` bytes (the agent's `--ring-size`), but a ring
//! starts by using only its first [`DEFAULT_INITIAL_RING_CAPACITY`] bytes (the agent's
//! `--ring-initial`): pages nobody writes never become resident, so a connection that carries
//! requests and responses holds a few pages, not two full rings. A writer whose ring fills
//! up grows it, doubling the capacity up to `ring_capacity`:
//!
//! * It grows at a *block end* only: a head whose index is 0. A writer whose ring would be
//!   more than half full after its write takes writes up to the block end, no further, and
//!   the next write doubles the ring there. The unread bytes then lie just below the block
//!   end, and the doubled geometry ([`RingGeometry::unrolled`]) keeps each of them at its
//!   index: no byte moves, and a reader that still uses the old geometry reads the same bytes
//!   as one that uses the new one. New bytes go to indices that the unread ones do not use
//!   (the free space rule `head - tail <= capacity` of the new capacity). The writer never
//!   waits for the reader to empty the ring, and an idle reader does not stop the growth (the
//!   writer stops at the block end before the ring is full).
//! * Request/response traffic keeps a ring less than half full and never grows it.
//! * Ordering: the producer stores the new geometry (`Release`) before the `head` store
//!   (`Release`) that publishes the first byte after it; the consumer loads `head` (`Acquire`)
//!   and then the geometry (`Acquire`), so it sees the geometry of every byte below that head,
//!   or a later one, which keeps those bytes at the same indices. The consumer keeps the
//!   geometry it loaded with the head it loaded.
//!
//! # Ancillary data: fds and credentials travel through the kernel
//!
//! A `sendmsg` with control messages (`SCM_RIGHTS`, `SCM_CREDENTIALS`) on a connection whose
//! writes are on the ring keeps its bytes on the ring, and sends its control messages through
//! the kernel, on the real socket, attached to one *marker* byte ([`ANC_MARKER`]): the kernel
//! checks them there exactly as for a plain `sendmsg` (an fd that is not open, a bad length,
//! more than `SCM_MAX_FD` fds, credentials the sender may not claim: the kernel's errno, and
//! nothing is sent). The ring only carries *where* they belong: an [`AncRecord`] in the
//! direction's [`AncQueue`] says at which ring position the message's bytes start, how many
//! there are, and how many doorbells were sent before the marker. A reader that reaches that
//! position takes the marker with `recvmsg` into the application's control buffer (so the
//! kernel applies `MSG_CTRUNC`, `MSG_CMSG_CLOEXEC`, `SO_PASSCRED` itself) and stops after the
//! message's bytes, as `af_unix` stops a stream read after an skb that carries fds.
//!
//! With `SO_PASSCRED` turned on, the connection is handed back; the ring bytes still unread were
//! sent without credentials, and their reads get the kernel's "no credentials" (pid 0, the
//! overflow ids), which the hook has the kernel make on a private socket pair: no value of the
//! segment goes into it.
//!
//! **Security rule.** Shared memory never carries an fd, a pid, a uid or a gid: those only
//! come out of the kernel's `recvmsg` of a marker (or of the private pair above). A peer that writes the queue wrongly can
//! only misplace its own control messages in its own byte stream, or make the reader take a
//! doorbell byte as a marker (which carries nothing): it can neither forge credentials nor
//! make the receiver take an fd the kernel did not pass.
//!
//! Doorbells and markers share the socket, in the order they were sent (both are sent under
//! the writer's producer lock). A doorbell drainer never takes more than
//! `bells - bells_drained` bytes of the oldest pending record, so it never reads a marker;
//! a reader takes a marker only after the doorbells before it are drained and a peek shows
//! the marker byte (doorbell bytes are `0`).
//!
//! # Threat model: a hostile peer
//!
//! Both ends map the whole segment read-write, and the ends may be processes of different users
//! (an unprivileged client and a root daemon). So every field, the other end's *and one's own*,
//! can hold any value at any moment, changing between two loads. The rule: **a peer can do no
//! more harm through the segment than through a plain socket**, whose worst is garbage data,
//! EOF, ECONNRESET/EPIPE, or never reading or writing (a blocked call then waits, as on a plain
//! socket, and wakes with EOF/EPIPE once the peer is gone). Nothing read from the segment is
//! trusted for memory safety, a length, a loop bound, or the number of bytes to deliver:
//!
//! * Memory: the layout (sizes, offsets, capacity) is checked once when an end maps the segment,
//!   against the memfd's sealed size, and kept in private memory (`tssx_shm::segment::Segment`);
//!   every ring index is `position & (capacity - 1)`, every length clamped to the capacity and
//!   to the caller's buffer (`tssx_shm::ring`). Each mapping also sits between two `PROT_NONE`
//!   guard pages. What the ends free or unmap is decided by their own process's counts (the
//!   hook's table and leases), never by a header field.
//! * Waiting: no call loops on a header value without a bound. A read or write whose ring is
//!   empty or full sleeps on the real socket, which the kernel wakes with the peer's EOF when the
//!   peer closes or dies, whatever the header says; a lock word (the only thing an end spins on)
//!   is placed after 200 µs and taken over when the peer wrote it (`tssx_hook::ringlock`).
//! * The process's own memory: a ring end's handles (cached positions) are process-local, and
//!   the threads of one process are kept apart by a lock in that process's memory, taken before
//!   the segment's lock word. A lock word the peer clears can thus let a *sibling process* of
//!   the same end (a forked child, a receiver of the socket) into a ring side beside the holder,
//!   never a second thread of the same process: two processes, each with its own handles, copy
//!   at the same ring positions (garbage in that end's stream, as when the peer writes the ring
//!   bytes itself), while no memory of either process is shared, so there is no data race in
//!   it (`tssx_hook::ringlock`).
//! * The agent reads states, counts and positions for its status and traces only (a lie makes
//!   them wrong; arithmetic on them saturates), and frees its own mapping once both processes
//!   are gone whatever the header says.
//!
//! Field by field: who writes it, what a lie can cause in the victim, why that is no worse.
//!
//! | field | written by | a lie's worst in the other end | why no worse than a plain socket |
//! |---|---|---|---|
//! | `magic`, `version`, `header_size`, `total_size`, `ring_capacity`, `ring_offsets` | the agent, at creation | before the victim maps it: the map fails and the connection stays plain; after: nothing (never re-read) | the socket is unchanged |
//! | `tssx` | the agent | nothing (no hook reads it) | - |
//! | `state` | either end (compare-and-swap) | the victim gives the migration up (stays or goes plain) or its switch fails: its stream from the peer turns to garbage or ends | garbage, EOF |
//! | `refcount[peer]` | the peer's processes, the agent (a dead end's to 0) | 0: the victim sees the peer closed (EOF, EPIPE); non-zero after the peer died: the socket's EOF tells instead | what a close does |
//! | `refcount[own]` | the victim's processes | waits poll with a short timeout (CPU), the reset mark or last-close doorbell to the peer is wrong, a close may hand the connection back | never frees or unmaps anything: the process's own counts do |
//! | `socket_inode` | nobody (unused since version 5) | nothing: a segment passed with `SCM_RIGHTS` names its socket by the file offset of the open description passed (private to sender and receiver), never through the header | - |
//! | `asleep[peer]` | the peer's waiters | the victim sends a needless doorbell per transfer (a non-blocking one-byte send) | a slow peer costs as much |
//! | `asleep[own]` | the victim's waiters | the victim's waiters poll with short timeouts instead of draining doorbells; 0 while it sleeps: the peer (the liar) rings no doorbell, so the victim waits for data, EOF or the peer's death | a peer that sends nothing |
//! | `shut[peer]` | the peer | `SHUT_WRITE`: EOF; `SHUT_READ`: EPIPE; `SHUT_RESET`: ECONNRESET, only once the peer is really gone | the peer's own shutdown or close |
//! | `shut[own]` | the victim | the victim's reads see EOF (`SHUT_READ`) or writes EPIPE (`SHUT_WRITE`) | the peer's shutdown or close gives the same |
//! | `rings[*].head`, `tail` | producer, consumer | the ring looks empty, full or holds garbage; a difference above the capacity counts as nothing to read and no room (never a transfer longer than the ring) | garbage, a peer that never reads or writes |
//! | `rings[*].geometry` | the producer (the creator sets the first) | a capacity that is not a power of two within the mapped `ring_capacity` counts as `ring_capacity` (offset 0); any offset is masked below the capacity: every index stays inside the ring's mapped data, every length within the capacity. A lying geometry makes the victim read its peer's bytes from the wrong indices (garbage), and as the writer of its own ring (a peer that rewrites the victim's geometry) write at indices its reader does not expect: the peer's own stream turns to garbage. No loop depends on it: one copy per transfer, at most two `memcpy` | garbage |
//! | `rings[*].lock` | the processes of the end that uses that side | a forged holder: after 200 µs the value is placed (any thread of the victim's own process is not a holder: its threads take a lock in the process's own memory first; another process by its `/proc/TID/fd`) and taken over; the peer can also clear it while the victim holds it: a second *process* of the victim's end (if there is one) gets in beside the holder, each with its own handles: garbage, still within the ring and the caller's buffers; a second thread of the holder's process still waits for the process-local lock | a bounded delay per forged value; garbage |
//! | `ends[peer].joined`, `ready` | the peer | the migration is given up, or the victim switches onto a ring the peer never reads | a peer that never reads |
//! | `ends[peer].switch_at`, `sock_written` | the peer | the victim reads that many socket bytes as data (at most what the socket holds), later ones as doorbells: garbage or loss | garbage |
//! | `ends[peer].back_at`, `bells_at`, `bells_sent` | the peer | the victim hands back, reads the ring up to `back_at` only if the ring holds it (`back_at <= head`, within one capacity), else waits as for an empty ring; drains at most the doorbells the socket holds (data taken for doorbells: loss) | garbage, loss, EOF |
//! | `ends[peer].replay_from` | the peer | at the victim's hand-back, its ring's unread bytes from there are sent on the socket, only within `head - capacity ..= head`; that send waits for room as a blocking write does | a peer that never reads |
//! | `ends[own].*` (`switch_at`, `back_at`, `sock_read`, `bells_drained`, `replay_from`) | the victim | the victim writes on the socket instead of its ring (hands back), takes socket data for doorbells or the reverse, stops reading the ring early (then waits); `bells_drained` rewritten without pause makes the victim's reservations retry while the peer writes | garbage, loss, waits that end with the peer |
//! | `ends[*].active_ns`, `gave_up`, `reserved` | the end | the agent's traces (timestamps, why an end gave up) are wrong | - |
//! | `anc[peer].sent`, `slots` | the peer (the writer of that ring) | the victim takes a marker at a wrong position, or a doorbell byte for a marker (which carries nothing): the peer's control messages land elsewhere in its own stream; every value is clamped | fds and credentials only ever come from the kernel's `recvmsg` of a marker: never forged |
//! | `anc[own].taken` | the victim (the reader of the peer's ring) | the victim, as the writer of its own ring, reads the peer's `taken` for its queue: a queue that looks full (it hands the connection back) or has room it has not (records overwritten: its messages misplaced) | garbage, a hand-back |
//!
//! Until version 5 the pairing of a passed segment with its socket went through `socket_inode`:
//! a peer that knew the inode of another socket the victim passed in the same message could have
//! the receiving process attach the segment to that socket, whose bytes would then have gone
//! through the rings to the peer. Now the sender passes an open description of the memfd whose
//! file offset names the socket and the end (`tssx-user/hook/src/pass.rs`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Value of [`SegmentHeader::magic`]: `"TSSXSEG\0"` read as a little-endian `u64`.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"TSSXSEG\0");

/// Value of [`SegmentHeader::version`]. Bumped on any change to this file's layout or rules
/// (5: a segment passed with `SCM_RIGHTS` names its socket and end by its open description's
/// file offset, and [`SegmentHeader::socket_inode`] is no longer written nor read: hooks of
/// version 4 would not find the socket; 6: rings start small and grow, each ring's
/// [`ProducerLine::geometry`] says which part of its data is in use: hooks of version 5 would
/// read a grown ring at the wrong indices).
pub const SEGMENT_VERSION: u32 = 6;

/// Value of [`EndLine::switch_at`] and [`EndLine::back_at`] before the event they record.
pub const NOT_YET: u64 = u64::MAX;

/// Value of [`EndLine::joined`]: the end has not mapped the segment yet.
pub const JOIN_NONE: u32 = 0;
/// Value of [`EndLine::joined`]: the end mapped the segment and takes part in the migration.
pub const JOIN_MAPPED: u32 = 1;
/// Value of [`EndLine::joined`]: the end gave the segment up before anything went on the rings
/// (e.g. it forked or exec'ed half-way); both ends stay on the socket.
pub const JOIN_REFUSED: u32 = 2;

/// Why an end gave its segment up before anything went on the rings: the value of
/// [`EndLine::gave_up`], for the agent's `not swapped` trace (0: not said).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// Bytes moved on the socket that this end could not count (a process without the hook,
    /// or one that forked or spawned with the socket).
    Uncounted = 1,
    /// `SO_PASSCRED` is on: credentials come with every read, which only the kernel gives.
    PassCred = 2,
    /// The process set up an io_uring.
    IoUring = 3,
    /// The segment could not be mapped or used.
    Unusable = 4,
    /// The peer gave the segment up first, or the migration was abandoned.
    PeerGaveUp = 5,
    /// The peer did not map the segment in time.
    PeerNeverJoined = 6,
    /// An epoll registration the hook cannot take over (through an fd closed since, or in an
    /// instance another process shares).
    EpollRegistration = 7,
    /// This end's last fd closed first.
    Closed = 8,
    /// `shutdown` first.
    Shutdown = 9,
    /// Passed to another process with `SCM_RIGHTS` first.
    Passed = 10,
    /// A hand-back first: a call only the kernel serves (`MSG_OOB`), or the peer's.
    HandedBack = 11,
    /// `fork`, `exec` or a spawn first.
    ForkOrExec = 12,
    /// The switch of this end's writes found the migration given up.
    SwitchRefused = 13,
}

impl GiveUp {
    /// Every reason, in code order.
    pub const ALL: [GiveUp; 13] = [
        GiveUp::Uncounted,
        GiveUp::PassCred,
        GiveUp::IoUring,
        GiveUp::Unusable,
        GiveUp::PeerGaveUp,
        GiveUp::PeerNeverJoined,
        GiveUp::EpollRegistration,
        GiveUp::Closed,
        GiveUp::Shutdown,
        GiveUp::Passed,
        GiveUp::HandedBack,
        GiveUp::ForkOrExec,
        GiveUp::SwitchRefused,
    ];

    /// The reason a code names (an untrusted header value: `None` for anything else).
    pub fn from_u32(code: u32) -> Option<GiveUp> {
        GiveUp::ALL.into_iter().find(|&why| why as u32 == code)
    }

    /// The reason in words, for traces.
    pub fn text(self) -> &'static str {
        match self {
            GiveUp::Uncounted => {
                "bytes moved on the socket that it could not count (a process without the hook, or a fork or spawn with the socket)"
            }
            GiveUp::PassCred => "SO_PASSCRED is on",
            GiveUp::IoUring => "its process set up an io_uring",
            GiveUp::Unusable => "the segment could not be mapped",
            GiveUp::PeerGaveUp => "its peer gave the segment up",
            GiveUp::PeerNeverJoined => "its peer did not map the segment in time",
            GiveUp::EpollRegistration => "an epoll registration the hook cannot take over",
            GiveUp::Closed => "its last fd closed first",
            GiveUp::Shutdown => "shutdown first",
            GiveUp::Passed => "passed with SCM_RIGHTS first",
            GiveUp::HandedBack => "a call only the kernel serves, or its peer's hand-back",
            GiveUp::ForkOrExec => "fork, exec or spawn first",
            GiveUp::SwitchRefused => "the migration was given up when it switched",
        }
    }
}

/// Bit of [`SegmentHeader::shut`]: the end shut down reading (`SHUT_RD`): its peer's writes
/// fail with EPIPE, its own reads return what is left, then EOF.
pub const SHUT_READ: u32 = 1;

/// Bit of [`SegmentHeader::shut`]: the end closed its last descriptor while bytes it had not
/// read were still in its incoming ring: its peer's next read that finds no data fails once
/// with ECONNRESET (and poll reports POLLERR until then), as `af_unix` does.
pub const SHUT_RESET: u32 = 4;

/// Bit of [`SegmentHeader::shut`]: a read of this end took the peer's [`SHUT_RESET`]
/// (ECONNRESET is reported once per socket, as the kernel clears `sk_err`, whichever process
/// holding the end reads it).
pub const RESET_TAKEN: u32 = 8;

/// Bit of [`SegmentHeader::shut`]: the end shut down writing (`SHUT_WR`): its own writes fail
/// with EPIPE, its peer reads what is left, then EOF.
pub const SHUT_WRITE: u32 = 2;

/// Size of a cache line as far as this ABI is concerned: fields written by different parties
/// are kept this far apart (x86-64 and most arm64 cores use 64-byte lines).
pub const CACHE_LINE: usize = 64;

/// Alignment unit of the data regions and of the total size. Equal to the usual page size;
/// `mmap` works for any length, this only keeps ring data page-aligned where pages are 4 KiB.
pub const SEGMENT_ALIGN: usize = 4096;

/// Offset of the first ring's data: the header is padded to one [`SEGMENT_ALIGN`] unit.
pub const RING_DATA_OFFSET: usize = SEGMENT_ALIGN;

/// Smallest ring capacity a segment may have, in bytes.
pub const MIN_RING_CAPACITY: usize = 64;

/// Largest ring capacity a segment may have, in bytes (1 GiB).
pub const MAX_RING_CAPACITY: usize = 1 << 30;

/// One end of a connection. The discriminant indexes every per-end array in the header.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    /// End *A*: the process that called `connect`.
    Client = 0,
    /// End *B*: the process that called `accept`.
    Server = 1,
}

impl End {
    /// End *A*, another name for [`End::Client`].
    pub const A: End = End::Client;
    /// End *B*, another name for [`End::Server`].
    pub const B: End = End::Server;

    /// The other end.
    #[inline]
    pub const fn peer(self) -> End {
        match self {
            End::Client => End::Server,
            End::Server => End::Client,
        }
    }

    /// Index into per-end arrays (`0` for A, `1` for B); also the index of the ring this end
    /// writes.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Decodes an index (`0` or `1`).
    #[inline]
    pub const fn from_index(index: usize) -> Option<End> {
        match index {
            0 => Some(End::Client),
            1 => Some(End::Server),
            _ => None,
        }
    }
}

/// State of the connection, stored in [`SegmentHeader::state`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentState {
    /// Handed to the ends, which are migrating onto the rings (see each [`EndLine`]).
    Pending = 0,
    /// Both directions moved onto the rings (set by the end that completed the migration).
    Active = 1,
    /// The connection stays on (or went back to) the real socket: an end refused the segment
    /// before anything went on the rings, or the connection was handed back and both rings are
    /// drained. Final for the rings.
    Plain = 2,
    /// The connection is closed. Final.
    Closed = 3,
}

impl SegmentState {
    /// Decodes a raw state value; `None` for a value no version of this ABI defines.
    #[inline]
    pub const fn from_u32(raw: u32) -> Option<SegmentState> {
        match raw {
            0 => Some(SegmentState::Pending),
            1 => Some(SegmentState::Active),
            2 => Some(SegmentState::Plain),
            3 => Some(SegmentState::Closed),
            _ => None,
        }
    }

    /// The raw value stored in the header.
    #[inline]
    pub const fn as_u32(self) -> u32 {
        self as u32
    }
}

/// The byte that carries a `sendmsg`'s control messages on the real socket (see "Ancillary
/// data" in the module documentation). Doorbell bytes are `0`.
pub const ANC_MARKER: u8 = 0xa5;

/// Ancillary records one direction can have in flight (sent, not yet taken by the reader); a
/// writer that finds its queue full hands the connection back to the kernel.
pub const ANC_SLOTS: usize = 16;

/// Where one `sendmsg`'s control messages belong in the byte stream. Written by the writer end
/// only, before it sends the marker; read by the reader end; untrusted (see the module
/// documentation: a wrong record misplaces, it never forges).
#[repr(C)]
#[derive(Debug, Default)]
pub struct AncRecord {
    /// Ring position of the message's first byte.
    pub pos: AtomicU64,
    /// Number of the message's bytes on the ring (at least 1).
    pub len: AtomicU64,
    /// Doorbells the writer had sent before the marker (its `bells_sent` then).
    pub bells: AtomicU64,
    /// Reserved, zero.
    pub reserved: u64,
}

/// The ancillary records of one ring (`anc[e]` belongs to `rings[e]`, written by end `e`).
///
/// Record number `n` (counting from 0 over the connection's life) lives in
/// `slots[n % ANC_SLOTS]`. The writer fills a slot, then stores `sent = n + 1` (`SeqCst`),
/// then sends the marker and writes the bytes to the ring, all under its producer lock; a
/// marker the kernel refused is withdrawn (`sent` back to `n`) before the lock is released.
/// The reader stores `taken = n + 1` (`SeqCst`, under its consumer lock) once it took the
/// marker. `sent - taken` is at most [`ANC_SLOTS`]; the reader clamps every value it loads.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct AncQueue {
    /// Records published (written by the writer end).
    pub sent: CacheLine<AtomicU64>,
    /// Records taken (written by the reader end).
    pub taken: CacheLine<AtomicU64>,
    /// The records.
    pub slots: [AncRecord; ANC_SLOTS],
}

/// Wrapper that gives its content a cache line of its own (alignment and size a multiple of
/// [`CACHE_LINE`]), so that fields written by different parties never share a line.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct CacheLine<T>(pub T);

/// The producer's cache line of a ring: written only by the end that writes the ring.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ProducerLine {
    /// Producer position: total bytes ever written to the ring (free-running).
    ///
    /// Written by the producer with `Release` after the bytes are copied in (publishes them);
    /// read by the consumer with `Acquire` before it copies them out. The producer itself reads
    /// it `Relaxed` (it is the only writer; concurrent producers are serialized by
    /// [`ProducerLine::lock`], whose `Acquire`/`Release` orders their accesses).
    pub head: AtomicU64,
    /// Producer lock: `0` when free, otherwise the thread id (`gettid`) of the holder.
    /// Serializes the processes that write one socket's end (parent and child after `fork`, a
    /// receiver of the socket); the threads of one process are serialized first by a lock in
    /// that process's own memory, which the hook takes before this word.
    /// Taken with `compare_exchange(0, tid, Acquire, Relaxed)`, released with
    /// `store(0, Release)`. The peer can write it too: a waiter never trusts the value for
    /// long (see "Threat model" in the module documentation).
    pub lock: AtomicU32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The ring's geometry: which capacity and offset apply to the positions written so far
    /// (see "Rings that grow" in the module documentation; [`RingGeometry`] encodes it). Set
    /// by the creator to the initial capacity (offset 0); then written only by the producer,
    /// under its lock, when the ring grows: stored `Release` *before* the `head` store
    /// (`Release`) that publishes the first byte written under it; loaded by the consumer after
    /// its `Acquire` load of `head`, with `Acquire` (it sees this geometry or a later one,
    /// which places every byte it may read at the same index). Untrusted: every load is
    /// sanitized ([`RingGeometry::decode`]).
    pub geometry: AtomicU64,
}

/// A ring's geometry, as stored in [`ProducerLine::geometry`]: the capacity that applies now
/// (a power of two, at most the ring's mapped size [`SegmentHeader::ring_capacity`]) and an
/// offset: position `p` lives at index `(p + offset) & (capacity - 1)`. Encoded in one `u64`
/// (capacity in the low 32 bits, offset in the high 32) so that a reader never sees the
/// capacity of one geometry with the offset of another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    /// Bytes of the ring in use; a power of two.
    pub capacity: usize,
    /// Added to a position before masking; below `capacity`.
    pub offset: u64,
}

impl RingGeometry {
    /// The geometry of a fresh ring of `capacity` bytes.
    pub const fn new(capacity: usize) -> RingGeometry {
        RingGeometry { capacity, offset: 0 }
    }

    /// The stored form.
    pub const fn encode(self) -> u64 {
        (self.capacity as u64 & 0xffff_ffff) | ((self.offset & 0xffff_ffff) << 32)
    }

    /// Decodes a stored value, which anyone mapping the segment may have written: a capacity
    /// that is not a power of two within `1..=max` (the mapped size) becomes `max` with offset
    /// 0, and the offset is masked below the capacity. Whatever the value, every index derived
    /// from the result is below `max`.
    pub const fn decode(word: u64, max: usize) -> RingGeometry {
        let capacity = (word & 0xffff_ffff) as usize;
        if !capacity.is_power_of_two() || capacity > max {
            return RingGeometry { capacity: max, offset: 0 };
        }
        RingGeometry { capacity, offset: (word >> 32) & (capacity as u64 - 1) }
    }

    /// Index of position `pos` in the ring's data.
    #[inline]
    pub const fn index(self, pos: u64) -> usize {
        (pos.wrapping_add(self.offset) & (self.capacity as u64 - 1)) as usize
    }

    /// The geometry of `capacity` bytes (a larger power of two) that *unrolls* the positions
    /// from `tail` on: position `tail + k` gets index `self.index(tail) + k`. The unread bytes
    /// (at most `self.capacity` from `tail`) keep their index unless they had wrapped around
    /// the end of this geometry ([`RingGeometry::wrapped`]); a producer grows only when none
    /// had (at a block end).
    pub const fn unrolled(self, tail: u64, capacity: usize) -> RingGeometry {
        let start = self.index(tail) as u64;
        RingGeometry { capacity, offset: start.wrapping_sub(tail) & (capacity as u64 - 1) }
    }

    /// How many of the `used` bytes from `tail` wrapped around the end of this geometry (they
    /// sit at indices `0..wrapped`).
    pub const fn wrapped(self, tail: u64, used: usize) -> usize {
        (self.index(tail) + used).saturating_sub(self.capacity)
    }
}

/// Initial capacity of each ring (32 KiB): what request/response traffic touches. A writer
/// that finds its ring too small doubles it, up to [`SegmentHeader::ring_capacity`] (the
/// agent's `--ring-size`). The agent's `--ring-initial` overrides it.
pub const DEFAULT_INITIAL_RING_CAPACITY: usize = 32 << 10;

/// The consumer's cache line of a ring: written only by the end that reads the ring.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ConsumerLine {
    /// Consumer position: total bytes ever read from the ring (free-running).
    ///
    /// Written by the consumer with `Release` after the bytes are copied out (frees their
    /// space); read by the producer with `Acquire` before it overwrites that space. The
    /// consumer itself reads it `Relaxed` (serialized by [`ConsumerLine::lock`]).
    pub tail: AtomicU64,
    /// Consumer lock: `0` when free, otherwise the thread id (`gettid`) of the holder.
    /// Serializes the processes that read one socket's end. Same protocol as
    /// [`ProducerLine::lock`].
    pub lock: AtomicU32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Control block of one ring: producer and consumer positions on separate cache lines.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingControl {
    /// Written by the producer only.
    pub producer: CacheLine<ProducerLine>,
    /// Written by the consumer only.
    pub consumer: CacheLine<ConsumerLine>,
}

/// One end's migration progress (see the module documentation), on a cache line of its own.
/// Every field is written only by the processes of that end (under the end's producer lock
/// for the writer-side fields, its consumer lock for the reader-side ones) and read by the
/// peer; the peer must treat every value as untrusted.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct EndLine {
    /// [`JOIN_NONE`], [`JOIN_MAPPED`] or [`JOIN_REFUSED`]. Stored with `SeqCst` after the end's
    /// refcount is set; loaded with `Acquire` (or `SeqCst` where a fence pairs with it).
    pub joined: AtomicU32,
    /// `1` once the end is ready (step 2): every later socket transfer of this end is counted
    /// here. Stored `SeqCst` after the counters; loaded `Acquire`.
    pub ready: AtomicU32,
    /// Socket bytes this end wrote before it moved its writes onto its ring ([`NOT_YET`] until
    /// then). Stored once, `SeqCst`, under the producer lock, before the first ring write;
    /// loaded `Acquire` by the reader after it peeked the socket.
    pub switch_at: AtomicU64,
    /// Ring head at which this end handed its writes back to the socket ([`NOT_YET`] until
    /// then). Stored once, `SeqCst`, under the producer lock, after `bells_at`.
    pub back_at: AtomicU64,
    /// Doorbell bytes this end sent before `back_at` (valid once `back_at` is set).
    pub bells_at: AtomicU64,
    /// Doorbell bytes this end has sent: incremented (`SeqCst`) before each one is sent, under
    /// the producer lock, decremented again if the send failed.
    pub bells_sent: AtomicU64,
    /// Data bytes this end wrote to the socket since it became ready, plus what it wrote
    /// before (copied in when it became ready). `Relaxed` under the producer lock; published by
    /// `switch_at`.
    pub sock_written: AtomicU64,
    /// Data bytes of the peer's this end consumed from the socket (same accounting), `Release`
    /// under the consumer lock.
    pub sock_read: AtomicU64,
    /// Doorbell bytes of the peer's this end drained from the socket. Updated with
    /// compare-and-swap reservations so that drainers never take more than `bells_sent`.
    pub bells_drained: AtomicU64,
    /// When this end completed its migration (both directions on the rings), CLOCK_MONOTONIC
    /// nanoseconds; zero before. Stored `SeqCst`, then the peer's is loaded `SeqCst`: the end
    /// that sees both non-zero moves the state to [`SegmentState::Active`]. For traces only.
    pub active_ns: AtomicU64,
    /// A replay this end asks of its peer (0: none): `1 +` the position of the peer's ring at
    /// which this end stopped reading it, because an image without the hook takes over this
    /// end's reads from the socket. The peer, when it hands its direction back, stores that
    /// position as its `back_at` (rather than its head) and sends its ring's bytes from there
    /// on the socket, before anything else it writes. Stored `SeqCst` under this end's consumer
    /// lock, before this end's own `back_at`; loaded `SeqCst` by the peer under its producer
    /// lock. Zero in segments made before it existed.
    pub replay_from: AtomicU64,
    /// Why this end gave the segment up, if it did before anything went on the rings: a
    /// [`GiveUp`] code, 0 if not said. Stored `Relaxed` before `joined` takes
    /// [`JOIN_REFUSED`] (whose `SeqCst` store publishes it); for the agent's traces only. It
    /// took a reserved word without a version change: a hook that predates it leaves it zero
    /// ("no reason given"), and an agent that predates it never reads it.
    pub gave_up: AtomicU32,
    /// Reserved, zero.
    pub reserved_word: u32,
    /// Reserved, zero.
    pub reserved: [u64; 4],
}

impl EndLine {
    /// A line with nothing recorded yet.
    pub const fn new() -> EndLine {
        EndLine {
            joined: AtomicU32::new(JOIN_NONE),
            ready: AtomicU32::new(0),
            switch_at: AtomicU64::new(NOT_YET),
            back_at: AtomicU64::new(NOT_YET),
            bells_at: AtomicU64::new(0),
            bells_sent: AtomicU64::new(0),
            sock_written: AtomicU64::new(0),
            sock_read: AtomicU64::new(0),
            bells_drained: AtomicU64::new(0),
            active_ns: AtomicU64::new(0),
            replay_from: AtomicU64::new(0),
            gave_up: AtomicU32::new(0),
            reserved_word: 0,
            reserved: [0; 4],
        }
    }
}

impl Default for EndLine {
    fn default() -> Self {
        Self::new()
    }
}

/// The header at offset 0 of every segment.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SegmentHeader {
    /// [`SEGMENT_MAGIC`]. Immutable.
    pub magic: u64,
    /// [`SEGMENT_VERSION`]. Immutable.
    pub version: u32,
    /// `size_of::<SegmentHeader>()` as the creator saw it. Immutable.
    pub header_size: u32,
    /// Total size of the segment in bytes (= the memfd's size). Immutable.
    pub total_size: u64,
    /// Capacity of each ring in bytes, a power of two. Immutable.
    pub ring_capacity: u64,
    /// Offsets of the data of `rings[0]` (A->B) and `rings[1]` (B->A). Immutable.
    pub ring_offsets: [u64; 2],
    /// The TSSX bit of each end: `1` once the agent has handed this segment to that end and
    /// the end may use the rings. Written by the agent (`Release`), read with `Acquire`.
    pub tssx: [AtomicU32; 2],
    /// [`SegmentState`] as a `u32`. Transitions with `compare_exchange(AcqRel, Acquire)`:
    /// `Pending -> Active | Plain | Closed`, `Active -> Plain | Closed`, `Plain -> Closed`.
    pub state: AtomicU32,
    /// Open descriptions of the socket per end (dup and fork bookkeeping): `fetch_add(1,
    /// Relaxed)` when one more appears, `fetch_sub(1, AcqRel)` when one closes; the one that
    /// brings it to zero closes the end.
    pub refcount: [AtomicU32; 2],
    /// Reserved, zero.
    pub reserved: u32,
    /// Unused since version 5 (zero): it named the socket a segment passed with `SCM_RIGHTS`
    /// belongs to, which a lying peer could change; the pairing now travels in the message
    /// itself (see `tssx-user/hook/src/pass.rs`).
    pub socket_inode: [AtomicU64; 2],
    /// Per end: number of that end's threads that announced they are about to block on the
    /// real socket waiting for a doorbell byte (non-zero = asleep). A waiter increments it
    /// (`Relaxed`), issues a `SeqCst` fence and re-checks the ring before blocking; it
    /// decrements it (`Relaxed`) when it stops waiting. The peer, after publishing a position,
    /// issues a `SeqCst` fence and reads it (`Relaxed`): non-zero means "send a doorbell".
    /// The two fences guarantee that at least one side sees the other's write, so no wake-up is
    /// lost.
    pub asleep: CacheLine<[AtomicU32; 2]>,
    /// Per end: what that end shut down with `shutdown(2)`, a set of [`SHUT_READ`] and
    /// [`SHUT_WRITE`] bits (never cleared). Set with `fetch_or(SeqCst)` by any process holding
    /// the end, then the peer's asleep counter is checked (a doorbell wakes it); read with
    /// `Acquire` before deciding EOF (the reader saw every byte written before the shutdown)
    /// or EPIPE. The bytes moved each way are the rings' `tail` positions.
    pub shut: CacheLine<[AtomicU32; 2]>,
    /// The two ring control blocks: `rings[0]` is A->B, `rings[1]` is B->A.
    pub rings: [RingControl; 2],
    /// Each end's migration progress: `ends[0]` is A's, `ends[1]` is B's.
    pub ends: [EndLine; 2],
    /// Ancillary records of each ring (see [`AncQueue`]): `anc[0]` is A->B, `anc[1]` is B->A.
    pub anc: [AncQueue; 2],
}

/// Where everything lies in a segment with a given ring capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLayout {
    /// Capacity of each ring in bytes (power of two).
    pub ring_capacity: usize,
    /// Offset of the [`SegmentHeader`] (always `0`).
    pub header_offset: usize,
    /// Offset of the data of ring A->B (`rings[0]`).
    pub ring_a_to_b: usize,
    /// Offset of the data of ring B->A (`rings[1]`).
    pub ring_b_to_a: usize,
    /// Total size, a multiple of [`SEGMENT_ALIGN`].
    pub total_size: usize,
}

const fn align_up(value: usize, align: usize) -> Option<usize> {
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

impl SegmentLayout {
    /// The layout for rings of `ring_capacity` bytes, or `None` if the capacity is not a power
    /// of two within [`MIN_RING_CAPACITY`]..=[`MAX_RING_CAPACITY`].
    pub const fn new(ring_capacity: usize) -> Option<SegmentLayout> {
        if !ring_capacity.is_power_of_two() || ring_capacity < MIN_RING_CAPACITY || ring_capacity > MAX_RING_CAPACITY {
            return None;
        }
        let ring_a_to_b = RING_DATA_OFFSET;
        // Cannot overflow: both terms are bounded by MAX_RING_CAPACITY (1 GiB) plus a page.
        let ring_b_to_a = match align_up(ring_a_to_b + ring_capacity, SEGMENT_ALIGN) {
            Some(v) => v,
            None => return None,
        };
        let total_size = match align_up(ring_b_to_a + ring_capacity, SEGMENT_ALIGN) {
            Some(v) => v,
            None => return None,
        };
        Some(SegmentLayout { ring_capacity, header_offset: 0, ring_a_to_b, ring_b_to_a, total_size })
    }

    /// Offset of the data of the ring written by `writer`.
    #[inline]
    pub const fn ring_offset(&self, writer: End) -> usize {
        match writer {
            End::Client => self.ring_a_to_b,
            End::Server => self.ring_b_to_a,
        }
    }
}

/// Why a header does not describe the segment it sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// `magic` is not [`SEGMENT_MAGIC`].
    BadMagic(u64),
    /// `version` is not [`SEGMENT_VERSION`].
    BadVersion(u32),
    /// `header_size` is not `size_of::<SegmentHeader>()`.
    BadHeaderSize(u32),
    /// `ring_capacity` is not a valid capacity.
    BadCapacity(u64),
    /// `total_size` or a ring offset disagrees with [`SegmentLayout::new`] for the capacity.
    LayoutMismatch,
    /// The object's actual size (e.g. the memfd's) differs from the layout's total size.
    SizeMismatch {
        /// Size the layout requires.
        expected: u64,
        /// Size found.
        actual: u64,
    },
}

impl SegmentHeader {
    /// Checks the immutable fields against this ABI and against `actual_size`, the size of the
    /// object the header sits in, and returns the layout they describe.
    pub fn check(&self, actual_size: u64) -> Result<SegmentLayout, HeaderError> {
        if self.magic != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic(self.magic));
        }
        if self.version != SEGMENT_VERSION {
            return Err(HeaderError::BadVersion(self.version));
        }
        if self.header_size as usize != core::mem::size_of::<SegmentHeader>() {
            return Err(HeaderError::BadHeaderSize(self.header_size));
        }
        let layout = match usize::try_from(self.ring_capacity).ok().and_then(SegmentLayout::new) {
            Some(layout) => layout,
            None => return Err(HeaderError::BadCapacity(self.ring_capacity)),
        };
        if self.total_size != layout.total_size as u64 || self.ring_offsets != [layout.ring_a_to_b as u64, layout.ring_b_to_a as u64] {
            return Err(HeaderError::LayoutMismatch);
        }
        if actual_size != layout.total_size as u64 {
            return Err(HeaderError::SizeMismatch { expected: layout.total_size as u64, actual: actual_size });
        }
        Ok(layout)
    }

    /// Whether `end` leaves bytes its peer sent unread: on the ring it reads, or (once it was
    /// ready, so that its socket reads are counted) on the socket before the peer's switch. A
    /// socket released with bytes unread resets its peer (af_unix's `unix_release_sock`): the
    /// peer's reads report ECONNRESET once, then EOF. The rule the hooks and the agent share
    /// when an end goes without its hook deciding it at its last close (the peer's look at the
    /// real socket, the agent's sweep of a dead end). Every value is the peer's word, untrusted:
    /// a lie only changes whether a reset is reported.
    pub fn left_unread(&self, end: End) -> bool {
        let incoming = &self.rings[end.peer().index()];
        // Acquire on both: the positions' last stores (the peer's `Release` head store, the
        // end's `Release` tail store).
        if incoming.producer.0.head.load(Ordering::Acquire) != incoming.consumer.0.tail.load(Ordering::Acquire) {
            return true;
        }
        // Acquire: the end's readiness publishes its counts (stored `SeqCst` after them).
        if self.ends[end.index()].ready.load(Ordering::Acquire) != 1 {
            return false;
        }
        let writer = &self.ends[end.peer().index()];
        // Acquire: the peer's switch position (stored `SeqCst`); its running count is a hint
        // (`Relaxed`: a write racing with the end's going comes after it anyway).
        let written = match writer.switch_at.load(Ordering::Acquire) {
            NOT_YET => writer.sock_written.load(Ordering::Relaxed),
            at => at,
        };
        // Acquire: stored `Release` by the end under its consumer lock.
        self.ends[end.index()].sock_read.load(Ordering::Acquire) < written
    }
}

// The ABI, checked at compile time.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<AtomicU32>() == 4 && align_of::<AtomicU32>() == 4);
    assert!(size_of::<AtomicU64>() == 8 && align_of::<AtomicU64>() == 8);
    assert!(size_of::<ProducerLine>() == 24);
    assert!(offset_of!(ProducerLine, geometry) == 16);
    assert!(size_of::<ConsumerLine>() == 16);
    assert!(size_of::<CacheLine<ProducerLine>>() == CACHE_LINE);
    assert!(align_of::<CacheLine<ProducerLine>>() == CACHE_LINE);
    assert!(size_of::<RingControl>() == 2 * CACHE_LINE);
    assert!(offset_of!(RingControl, consumer) == CACHE_LINE);
    assert!(offset_of!(SegmentHeader, magic) == 0);
    assert!(offset_of!(SegmentHeader, version) == 8);
    assert!(offset_of!(SegmentHeader, header_size) == 12);
    assert!(offset_of!(SegmentHeader, total_size) == 16);
    assert!(offset_of!(SegmentHeader, ring_capacity) == 24);
    assert!(offset_of!(SegmentHeader, ring_offsets) == 32);
    assert!(offset_of!(SegmentHeader, tssx) == 48);
    assert!(offset_of!(SegmentHeader, state) == 56);
    assert!(offset_of!(SegmentHeader, refcount) == 60);
    assert!(offset_of!(SegmentHeader, socket_inode) == 72);
    assert!(offset_of!(SegmentHeader, asleep) == 2 * CACHE_LINE);
    assert!(offset_of!(SegmentHeader, shut) == 3 * CACHE_LINE);
    assert!(offset_of!(SegmentHeader, rings) == 4 * CACHE_LINE);
    assert!(size_of::<EndLine>() == 2 * CACHE_LINE);
    assert!(offset_of!(SegmentHeader, ends) == 8 * CACHE_LINE);
    assert!(offset_of!(EndLine, switch_at) == 8);
    assert!(offset_of!(EndLine, sock_written) == 40);
    assert!(offset_of!(EndLine, gave_up) == 80);
    assert!(size_of::<AncRecord>() == 32);
    assert!(size_of::<AncQueue>() == 10 * CACHE_LINE);
    assert!(offset_of!(SegmentHeader, anc) == 12 * CACHE_LINE);
    assert!(size_of::<SegmentHeader>() == 32 * CACHE_LINE);
    assert!(align_of::<SegmentHeader>() == CACHE_LINE);
    assert!(size_of::<SegmentHeader>() <= RING_DATA_OFFSET);
    assert!(RING_DATA_OFFSET.is_multiple_of(SEGMENT_ALIGN));
    // Smallest and largest layouts.
    match SegmentLayout::new(MIN_RING_CAPACITY) {
        Some(l) => assert!(l.ring_a_to_b == 4096 && l.ring_b_to_a == 8192 && l.total_size == 12288),
        None => panic!(),
    }
    match SegmentLayout::new(1 << 20) {
        Some(l) => assert!(
            l.ring_a_to_b == 4096
                && l.ring_b_to_a == 4096 + (1 << 20)
                && l.total_size == 4096 + (2 << 20)
                && l.ring_b_to_a % SEGMENT_ALIGN == 0
        ),
        None => panic!(),
    }
    assert!(SegmentLayout::new(MAX_RING_CAPACITY).is_some());
    assert!(SegmentLayout::new(MAX_RING_CAPACITY * 2).is_none());
    assert!(SegmentLayout::new(MIN_RING_CAPACITY / 2).is_none());
    assert!(SegmentLayout::new(3 << 10).is_none());
    assert!(matches!(SegmentState::from_u32(2), Some(SegmentState::Plain)));
    assert!(SegmentState::from_u32(4).is_none());
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn give_up_codes_round_trip_and_nothing_else_is_one() {
        for (i, why) in GiveUp::ALL.into_iter().enumerate() {
            assert_eq!(why as u32, i as u32 + 1, "codes run from 1 in order");
            assert_eq!(GiveUp::from_u32(why as u32), Some(why));
            assert!(!why.text().is_empty());
        }
        for code in [0, GiveUp::ALL.len() as u32 + 1, u32::MAX] {
            assert_eq!(GiveUp::from_u32(code), None);
        }
    }
}
