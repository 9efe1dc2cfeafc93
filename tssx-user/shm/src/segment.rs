//! Creating and mapping a connection's shared-memory segment.
//!
//! The agent [`Segment::create`]s one sealed memfd per connection and passes its descriptor to
//! the two ends, which [`Segment::open`] it. The layout and every field's rules are those of
//! [`tssx_common::segment`]. A [`Segment`] owns its mapping (unmapped on drop) and hands out the
//! ring handles of [`crate::ring`].
//!
//! Every system call goes through [`crate::sys`] (raw system calls) and nothing here allocates,
//! so the preload hook can map a segment it receives.
//!
//! The peer maps the same memory read-write and is not trusted (see "Threat model" in
//! [`tssx_common::segment`]): the layout is checked once against the sealed memfd's size and
//! kept in private memory, and every mapping sits between two `PROT_NONE` [`GUARD`]s.

use core::fmt;
use core::mem::size_of;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicU32, AtomicU64};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::sys::{self, Errno, Fd};

use tssx_common::segment::{
    CacheLine, End, EndLine, HeaderError, RingControl, RingGeometry, SegmentHeader, SegmentLayout, SegmentState,
    DEFAULT_INITIAL_RING_CAPACITY, MAX_RING_CAPACITY, SEGMENT_MAGIC, SEGMENT_VERSION,
};

/// The seals a segment must carry: its size can never change, and neither can its seals.
pub const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Why a segment could not be created or mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentError {
    /// A system call failed.
    Os {
        /// The call (`"memfd_create"`, `"mmap"`, ...).
        call: &'static str,
        /// Its `errno`.
        errno: i32,
    },
    /// The requested ring capacity is not a power of two within the allowed range.
    InvalidCapacity(usize),
    /// The descriptor is not a regular file (memfd).
    NotAFile,
    /// The file is too small to hold a header, or larger than any valid segment.
    BadSize(u64),
    /// The file lacks some of [`REQUIRED_SEALS`] (its size could still change under us).
    NotSealed {
        /// The seals it has.
        seals: i32,
    },
    /// The header does not describe a valid segment of this version and size.
    Header(HeaderError),
}

impl SegmentError {
    fn os(call: &'static str) -> impl FnOnce(Errno) -> SegmentError {
        move |e| SegmentError::Os { call, errno: e.0 }
    }
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SegmentError::Os { call, errno } => {
                write!(f, "{call} failed: {}", std::io::Error::from_raw_os_error(errno))
            }
            SegmentError::InvalidCapacity(c) => write!(f, "invalid ring capacity {c}"),
            SegmentError::NotAFile => f.write_str("segment descriptor is not a regular file"),
            SegmentError::BadSize(s) => write!(f, "segment size {s} is not a valid segment size"),
            SegmentError::NotSealed { seals } => {
                write!(f, "segment is not sealed against resizing (seals {seals:#x})")
            }
            SegmentError::Header(HeaderError::BadMagic(m)) => write!(f, "bad segment magic {m:#018x}"),
            SegmentError::Header(HeaderError::BadVersion(v)) => {
                write!(f, "segment version {v}, expected {SEGMENT_VERSION}")
            }
            SegmentError::Header(HeaderError::BadHeaderSize(s)) => {
                write!(f, "segment header size {s}, expected {}", size_of::<SegmentHeader>())
            }
            SegmentError::Header(HeaderError::BadCapacity(c)) => write!(f, "segment ring capacity {c} is invalid"),
            SegmentError::Header(HeaderError::LayoutMismatch) => f.write_str("segment header offsets/size disagree with its capacity"),
            SegmentError::Header(HeaderError::SizeMismatch { expected, actual }) => {
                write!(f, "segment file is {actual} bytes, its header requires {expected}")
            }
        }
    }
}

impl std::error::Error for SegmentError {}

/// A mapped segment.
///
/// `Send` and `Sync`: the header's mutable fields are atomics and the rest is immutable; the
/// ring data is only reached through the (unsafe to build) ring handles.
pub struct Segment {
    base: NonNull<SegmentHeader>,
    /// Bytes of [`GUARD`] around the mapping (0: mapped without).
    guard: usize,
    layout: SegmentLayout,
    /// The memfd, for a segment this process created (to be passed to the ends).
    fd: Option<Fd>,
}

// SAFETY: see the type's documentation; the mapping is process-wide, not thread-bound.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only gives atomic or immutable access.
unsafe impl Sync for Segment {}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("base", &self.base)
            .field("layout", &self.layout)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Inaccessible memory (`PROT_NONE`) around every mapping of a segment, before and after: a
/// ring access that left its ring (none can: every index is masked and every length clamped,
/// whatever the peer writes) would fault at once instead of touching a neighbour's memory.
pub const GUARD: usize = tssx_common::segment::SEGMENT_ALIGN;

/// Maps `len` bytes of `fd` shared, read-write, between two [`GUARD`]s when the address space
/// allows (else without); returns the mapping and the guard size used (0 or [`GUARD`]).
fn map(fd: libc::c_int, len: usize) -> Result<(NonNull<SegmentHeader>, usize), SegmentError> {
    if let Some(total) = len.checked_add(2 * GUARD) {
        if let Ok(reserved) = sys::mmap_reserve(total) {
            // SAFETY: the middle of our fresh reservation, which nothing references; on a
            // kernel whose pages are larger than GUARD the fixed mapping fails (unaligned) and
            // the reservation goes.
            match unsafe { sys::mmap_shared_at(fd, len, reserved.cast::<u8>().add(GUARD).cast()) } {
                Ok(ptr) => {
                    if let Some(base) = NonNull::new(ptr.cast::<SegmentHeader>()) {
                        return Ok((base, GUARD));
                    }
                }
                Err(_) => {
                    // SAFETY: our own reservation, unused.
                    let _ = unsafe { sys::munmap(reserved, total) };
                }
            }
        }
    }
    let ptr = sys::mmap_shared(fd, len).map_err(SegmentError::os("mmap"))?;
    // mmap returns page-aligned memory, enough for the header's 64-byte alignment.
    NonNull::new(ptr.cast::<SegmentHeader>()).map(|p| (p, 0)).ok_or(SegmentError::Os { call: "mmap", errno: libc::EINVAL })
}

/// Unmaps a mapping made by `map` (with its guards, `guard` bytes each side).
///
/// # Safety
/// `base..base + len` is a mapping made by `map` with that `guard` that nothing references any
/// more.
unsafe fn unmap(base: NonNull<SegmentHeader>, len: usize, guard: usize) {
    // SAFETY: by the caller's contract: `map` reserved `guard` bytes each side. A failure
    // (EINVAL only for bad arguments) leaks.
    let _ = unsafe { sys::munmap(base.as_ptr().cast::<u8>().sub(guard).cast(), len + 2 * guard) };
}

impl Segment {
    /// Creates a segment whose rings may grow to `ring_capacity` bytes and start with
    /// [`DEFAULT_INITIAL_RING_CAPACITY`] (or `ring_capacity` if smaller): see
    /// [`Segment::create_growing`].
    pub fn create(ring_capacity: usize) -> Result<Segment, SegmentError> {
        Self::create_growing(ring_capacity, DEFAULT_INITIAL_RING_CAPACITY.min(ring_capacity))
    }

    /// Creates a segment with rings of `ring_capacity` bytes that start using `initial` of
    /// them (a power of two, at most `ring_capacity`; equal to it: rings that never grow): an
    /// anonymous memfd sized to the layout, sealed against resizing, mapped, with its header
    /// initialised (state `Pending`, TSSX bits and refcounts zero). [`Segment::fd`] gives the
    /// memfd to pass to the two ends.
    pub fn create_growing(ring_capacity: usize, initial: usize) -> Result<Segment, SegmentError> {
        let layout = SegmentLayout::new(ring_capacity).ok_or(SegmentError::InvalidCapacity(ring_capacity))?;
        if !initial.is_power_of_two() || initial > ring_capacity {
            return Err(SegmentError::InvalidCapacity(initial));
        }
        let fd =
            sys::memfd_create(c"tssx-segment", libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING).map_err(SegmentError::os("memfd_create"))?;
        sys::ftruncate(fd.raw(), layout.total_size as u64).map_err(SegmentError::os("ftruncate"))?;
        sys::fcntl(fd.raw(), libc::F_ADD_SEALS, REQUIRED_SEALS as usize).map_err(SegmentError::os("fcntl(F_ADD_SEALS)"))?;
        let (base, guard) = map(fd.raw(), layout.total_size)?;
        let header = SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: SEGMENT_VERSION,
            header_size: size_of::<SegmentHeader>() as u32,
            total_size: layout.total_size as u64,
            ring_capacity: layout.ring_capacity as u64,
            ring_offsets: [layout.ring_a_to_b as u64, layout.ring_b_to_a as u64],
            tssx: [AtomicU32::new(0), AtomicU32::new(0)],
            state: AtomicU32::new(SegmentState::Pending.as_u32()),
            refcount: [AtomicU32::new(0), AtomicU32::new(0)],
            reserved: 0,
            socket_inode: [AtomicU64::new(0), AtomicU64::new(0)],
            asleep: CacheLine([AtomicU32::new(0), AtomicU32::new(0)]),
            shut: CacheLine([AtomicU32::new(0), AtomicU32::new(0)]),
            rings: [RingControl::default(), RingControl::default()],
            ends: [EndLine::new(), EndLine::new()],
            anc: Default::default(),
        };
        for ring in &header.rings {
            // Relaxed: nobody else sees the header before the memfd is passed (SCM_RIGHTS
            // orders it before the receiver's loads).
            ring.producer.0.geometry.store(RingGeometry::new(initial).encode(), Relaxed);
        }
        // SAFETY: the mapping is fresh, ours alone (the fd has not left this process), large
        // enough and aligned; writing the whole header initialises it.
        unsafe { base.as_ptr().write(header) };
        Ok(Segment { base, guard, layout, fd: Some(fd) })
    }

    /// Maps a segment received from elsewhere (the descriptor stays the caller's; the mapping
    /// outlives it). Checks that it is a sealed regular file whose size and header match this
    /// ABI before returning.
    pub fn open(fd: BorrowedFd<'_>) -> Result<Segment, SegmentError> {
        let fd = fd.as_raw_fd();
        let st = sys::fstat(fd).map_err(SegmentError::os("fstat"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(SegmentError::NotAFile);
        }
        let size = st.st_size as u64;
        let max = SegmentLayout::new(MAX_RING_CAPACITY).map_or(0, |l| l.total_size as u64);
        if st.st_size < 0 || size < size_of::<SegmentHeader>() as u64 || size > max {
            return Err(SegmentError::BadSize(size));
        }
        let seals = sys::fcntl(fd, libc::F_GET_SEALS, 0).map_err(SegmentError::os("fcntl(F_GET_SEALS)"))? as libc::c_int;
        if seals & REQUIRED_SEALS != REQUIRED_SEALS {
            return Err(SegmentError::NotSealed { seals });
        }
        // `size <= max` fits in usize.
        let len = size as usize;
        let (base, guard) = map(fd, len)?;
        // SAFETY: the mapping is at least a header long and aligned; the header's fields are
        // integers and atomics, valid for any bit pattern.
        let checked = unsafe { base.as_ref() }.check(size);
        match checked {
            Ok(layout) => Ok(Segment { base, guard, layout, fd: None }),
            Err(e) => {
                // SAFETY: our mapping of `len` bytes; the header reference above is gone.
                unsafe { unmap(base, len, guard) };
                Err(SegmentError::Header(e))
            }
        }
    }

    /// The memfd, if this process created the segment.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(Fd::borrow)
    }

    /// The header.
    #[inline]
    pub fn header(&self) -> &SegmentHeader {
        // SAFETY: mapped and validated (or initialised) for the life of `self`.
        unsafe { self.base.as_ref() }
    }

    /// The layout, as validated when the segment was created or opened (never re-read from the
    /// shared header).
    #[inline]
    pub fn layout(&self) -> SegmentLayout {
        self.layout
    }

    /// Capacity of each ring in bytes.
    #[inline]
    pub fn ring_capacity(&self) -> usize {
        self.layout.ring_capacity
    }

    /// Bytes of the segment resident in memory now (pages in the memfd's page cache, whoever
    /// touched them; `mincore` over this mapping), `None` if the kernel refused to tell.
    pub fn resident_bytes(&self) -> Option<u64> {
        const PAGE: usize = 4096;
        let len = self.layout.total_size;
        let mut pages = vec![0u8; len.div_ceil(PAGE)];
        // SAFETY: our mapping of `len` bytes starts at `base`, page-aligned (mmap's result);
        // `pages` holds one byte per page.
        unsafe { sys::mincore(self.base.as_ptr().cast(), len, &mut pages) }.ok()?;
        Some(pages.iter().filter(|&&p| p & 1 != 0).count() as u64 * PAGE as u64)
    }

    /// The capacity each ring uses now, `[A->B, B->A]`, from the (untrusted, sanitized)
    /// geometry words: for status and traces.
    pub fn ring_capacities(&self) -> [usize; 2] {
        // Relaxed: a snapshot for display.
        let load = |e: End| {
            RingGeometry::decode(self.header().rings[e.index()].producer.0.geometry.load(Relaxed), self.layout.ring_capacity).capacity
        };
        [load(End::Client), load(End::Server)]
    }

    /// The connection state; `None` if the header holds an undefined value.
    #[inline]
    pub fn state(&self) -> Option<SegmentState> {
        // Acquire: pairs with the AcqRel transition, so what the transitioning end did before
        // (e.g. a replay before `Plain`) is visible.
        SegmentState::from_u32(self.header().state.load(Acquire))
    }

    /// Moves the state from `from` to `to` if it is still `from`; otherwise returns the raw
    /// value found. Whether a transition is allowed is the caller's policy (see
    /// [`SegmentHeader::state`]).
    pub fn transition(&self, from: SegmentState, to: SegmentState) -> Result<(), u32> {
        // AcqRel: publishes what we did before, and sees what the previous transition published.
        self.header().state.compare_exchange(from.as_u32(), to.as_u32(), AcqRel, Acquire).map(|_| ())
    }

    /// Whether `end`'s TSSX bit is set.
    #[inline]
    pub fn tssx_bit(&self, end: End) -> bool {
        // Acquire: pairs with the Release in `set_tssx_bit`.
        self.header().tssx[end.index()].load(Acquire) != 0
    }

    /// Sets or clears `end`'s TSSX bit.
    pub fn set_tssx_bit(&self, end: End, on: bool) {
        // Release: everything done before (e.g. handing out the segment) is visible to an
        // Acquire reader of the bit.
        self.header().tssx[end.index()].store(u32::from(on), Release);
    }

    /// The free-running positions `(head, tail)` of the ring written by `writer`; `head` counts
    /// the bytes written into shared memory, `tail` those read out. A snapshot for tracing.
    #[inline]
    pub fn ring_positions(&self, writer: End) -> (u64, u64) {
        let ring = &self.header().rings[writer.index()];
        // Relaxed: a tracing snapshot, nothing is read through it.
        (ring.producer.0.head.load(Relaxed), ring.consumer.0.tail.load(Relaxed))
    }

    /// Raw description of the ring written by `writer`.
    #[cfg(not(tssx_loom))]
    fn ring_raw(&self, writer: End) -> crate::ring::RingRaw {
        let header = self.header();
        let ring = &header.rings[writer.index()];
        let offset = self.layout.ring_offset(writer);
        crate::ring::RingRaw {
            head: &ring.producer.0.head,
            tail: &ring.consumer.0.tail,
            producer_asleep: &header.asleep.0[writer.index()],
            consumer_asleep: &header.asleep.0[writer.peer().index()],
            geometry: &ring.producer.0.geometry,
            // SAFETY: the validated layout puts `capacity` bytes at `offset` inside the
            // mapping; `UnsafeCell<u8>` has the layout of `u8`.
            data: unsafe { self.base.as_ptr().cast::<u8>().add(offset) }.cast(),
            capacity: self.layout.ring_capacity,
        }
    }

    /// The handle with which `end` writes to its peer (the ring `end` -> peer).
    ///
    /// # Safety
    /// The handle must be dropped before this `Segment`, and the contract of
    /// [`crate::ring::Producer::new`] holds: across all processes mapping the segment, producers
    /// of this ring are never used concurrently (hold [`Segment::producer_lock`] otherwise).
    #[cfg(not(tssx_loom))]
    pub unsafe fn producer(&self, end: End) -> crate::ring::Producer {
        // SAFETY: valid pointers for the segment's life, which the caller outlives; the
        // exclusivity is the caller's contract.
        unsafe { crate::ring::Producer::new(self.ring_raw(end)) }
    }

    /// The handle with which `end` reads from its peer (the ring peer -> `end`).
    ///
    /// # Safety
    /// As [`Segment::producer`], for consumers ([`Segment::consumer_lock`]).
    #[cfg(not(tssx_loom))]
    pub unsafe fn consumer(&self, end: End) -> crate::ring::Consumer {
        // SAFETY: as in `producer`.
        unsafe { crate::ring::Consumer::new(self.ring_raw(end.peer())) }
    }

    /// A consumer of the ring that `writer` writes: for `writer` itself to take back the bytes
    /// its peer never read (replay into the real socket when the connection turns plain).
    ///
    /// # Safety
    /// As [`Segment::consumer`]: in particular the peer must no longer consume that ring.
    #[cfg(not(tssx_loom))]
    pub unsafe fn consumer_of(&self, writer: End) -> crate::ring::Consumer {
        // SAFETY: as in `producer`.
        unsafe { crate::ring::Consumer::new(self.ring_raw(writer)) }
    }

    /// The lock that serializes the producers of the ring `end` writes.
    #[cfg(not(tssx_loom))]
    pub fn producer_lock(&self, end: End) -> crate::ring::RingLock {
        // SAFETY: the lock word lives in the header; the caller keeps the `RingLock` no longer
        // than the segment (it is `Copy` and unsafe to build precisely so that we vouch here:
        // the word stays valid as long as the mapping).
        unsafe { crate::ring::RingLock::new(&self.header().rings[end.index()].producer.0.lock) }
    }

    /// The lock that serializes the consumers of the ring `end` reads.
    #[cfg(not(tssx_loom))]
    pub fn consumer_lock(&self, end: End) -> crate::ring::RingLock {
        // SAFETY: as in `producer_lock`.
        unsafe { crate::ring::RingLock::new(&self.header().rings[end.peer().index()].consumer.0.lock) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: our mapping; ring handles must have been dropped first (their constructors'
        // contract) and `&self` references end here.
        unsafe { unmap(self.base, self.layout.total_size, self.guard) };
    }
}

#[cfg(all(test, not(tssx_loom)))]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    /// The protection of the mapping in /proc/self/maps that contains `addr` (e.g. "---p").
    fn protection_at(addr: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().find_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            let (lo, hi) = range.split_once('-')?;
            let (lo, hi) = (usize::from_str_radix(lo, 16).ok()?, usize::from_str_radix(hi, 16).ok()?);
            (lo <= addr && addr < hi).then(|| rest.split(' ').next().unwrap_or("").to_owned())
        })
    }

    #[test]
    fn guard_pages_surround_every_mapping() {
        let created = Segment::create(1 << 12).unwrap();
        let opened = Segment::open(created.fd().unwrap()).unwrap();
        for seg in [&created, &opened] {
            assert_eq!(seg.guard, GUARD);
            let base = seg.header() as *const SegmentHeader as usize;
            let end = base + seg.layout().total_size;
            assert_eq!(protection_at(base).as_deref(), Some("rw-s"));
            assert_eq!(protection_at(end - 1).as_deref(), Some("rw-s"));
            assert_eq!(protection_at(base - 1).as_deref(), Some("---p"), "no guard before the segment");
            assert_eq!(protection_at(end).as_deref(), Some("---p"), "no guard after the segment");
        }
    }

    #[test]
    fn create_then_open() {
        let seg = Segment::create(1 << 16).unwrap();
        assert_eq!(seg.state(), Some(SegmentState::Pending));
        assert_eq!(seg.layout(), SegmentLayout::new(1 << 16).unwrap());
        let fd = seg.fd().unwrap();
        // SAFETY: plain fcntl on a valid fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(seals & REQUIRED_SEALS, REQUIRED_SEALS);
        let other = Segment::open(fd).unwrap();
        assert_eq!(other.ring_capacity(), 1 << 16);
        // Both mappings see the same memory.
        seg.set_tssx_bit(End::Server, true);
        assert!(other.tssx_bit(End::Server));
        assert!(!other.tssx_bit(End::Client));
        assert_eq!(other.transition(SegmentState::Pending, SegmentState::Active), Ok(()));
        assert_eq!(seg.state(), Some(SegmentState::Active));
        assert_eq!(seg.transition(SegmentState::Pending, SegmentState::Plain), Err(1));
        // Ring A->B written through one mapping, read through the other.
        // SAFETY: one producer and one consumer, dropped before the segments.
        let (mut p, mut c) = unsafe { (seg.producer(End::Client), other.consumer(End::Server)) };
        assert_eq!(p.write(b"hello").bytes, 5);
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).bytes, 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(seg.ring_positions(End::Client), (5, 5));
        assert_eq!(seg.ring_positions(End::Server), (0, 0));
        // The locks are shared too.
        let lock = seg.producer_lock(End::Client);
        let _g = lock.try_lock(1).unwrap();
        assert!(other.producer_lock(End::Client).try_lock(2).is_none());
        assert!(other.producer_lock(End::Server).try_lock(2).is_some());
    }

    #[test]
    fn untouched_pages_are_not_resident() {
        let seg = Segment::create_growing(1 << 20, 1 << 15).unwrap();
        let header_only = seg.resident_bytes().unwrap();
        assert!(header_only <= 4096, "{header_only}");
        assert_eq!(seg.ring_capacities(), [1 << 15, 1 << 15]);
        // SAFETY: one producer, used here only, dropped before the segment.
        let mut tx = unsafe { seg.producer(End::Client) };
        // SAFETY: one consumer, likewise.
        let mut rx = unsafe { seg.consumer(End::Server) };
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..64 {
            assert_eq!(tx.write(&[1; 1000]).bytes, 1000);
            assert_eq!(rx.read(&mut buf).bytes, 1000);
        }
        let small = seg.resident_bytes().unwrap();
        assert!(small > header_only && small <= 4096 + (1 << 15), "{small}");
        // A stream grows the ring to its maximum: then it is resident.
        let mut out = vec![0u8; 1 << 16];
        for _ in 0..256 {
            // Writes of 64 KiB, reads of 50,000 bytes: the ring fills up.
            let _ = tx.write(&buf);
            let _ = rx.read(&mut out[..50_000]);
        }
        assert_eq!(seg.ring_capacities(), [1 << 20, 1 << 15]);
        assert!(seg.resident_bytes().unwrap() >= 1 << 20);
    }

    #[test]
    fn invalid_capacity() {
        assert_eq!(Segment::create(1000).unwrap_err(), SegmentError::InvalidCapacity(1000));
        assert_eq!(Segment::create(0).unwrap_err(), SegmentError::InvalidCapacity(0));
    }

    fn memfd(size: i64, seals: libc::c_int) -> OwnedFd {
        // SAFETY: plain system calls; the fd is new and owned by the result.
        unsafe {
            let fd = libc::memfd_create(c"test".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, size), 0);
            if seals != 0 {
                assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, seals), 0);
            }
            OwnedFd::from_raw_fd(fd)
        }
    }

    /// Copies a valid segment's bytes into a new memfd, after `edit`.
    fn tampered(edit: impl FnOnce(&mut [u8]), extra: i64, seals: libc::c_int) -> OwnedFd {
        let seg = Segment::create(4096).unwrap();
        let len = seg.layout().total_size;
        let mut bytes = vec![0u8; len];
        // SAFETY: the mapping is `len` bytes long and nobody writes it meanwhile.
        unsafe { core::ptr::copy_nonoverlapping(seg.base.as_ptr().cast::<u8>(), bytes.as_mut_ptr(), len) };
        edit(&mut bytes);
        let fd = memfd(0, 0);
        // SAFETY: writing our buffer to our fd.
        let n = unsafe { libc::pwrite(fd.as_raw_fd(), bytes.as_ptr().cast(), len, 0) };
        assert_eq!(n as usize, len);
        if extra != 0 {
            // SAFETY: plain system call.
            assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len as i64 + extra) }, 0);
        }
        // SAFETY: plain system call.
        assert_eq!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }, 0);
        fd
    }

    #[test]
    fn open_rejects_bad_segments() {
        let ok = tampered(|_| {}, 0, REQUIRED_SEALS);
        assert!(Segment::open(ok.as_fd()).is_ok());

        let unsealed = tampered(|_| {}, 0, libc::F_SEAL_GROW);
        assert!(matches!(Segment::open(unsealed.as_fd()), Err(SegmentError::NotSealed { .. })));

        let magic = tampered(|b| b[0] ^= 1, 0, REQUIRED_SEALS);
        assert!(matches!(Segment::open(magic.as_fd()), Err(SegmentError::Header(HeaderError::BadMagic(_)))));

        let version = tampered(|b| b[8] = 99, 0, REQUIRED_SEALS);
        assert_eq!(Segment::open(version.as_fd()).unwrap_err(), SegmentError::Header(HeaderError::BadVersion(99)));

        let capacity = tampered(|b| b[24..32].copy_from_slice(&3000u64.to_le_bytes()), 0, REQUIRED_SEALS);
        assert_eq!(Segment::open(capacity.as_fd()).unwrap_err(), SegmentError::Header(HeaderError::BadCapacity(3000)));

        // A valid but larger capacity than the file holds.
        let bigger = tampered(|b| b[24..32].copy_from_slice(&8192u64.to_le_bytes()), 0, REQUIRED_SEALS);
        assert_eq!(Segment::open(bigger.as_fd()).unwrap_err(), SegmentError::Header(HeaderError::LayoutMismatch));

        let longer = tampered(|_| {}, 4096, REQUIRED_SEALS);
        assert!(matches!(Segment::open(longer.as_fd()), Err(SegmentError::Header(HeaderError::SizeMismatch { .. }))));

        let tiny = memfd(100, REQUIRED_SEALS);
        assert_eq!(Segment::open(tiny.as_fd()).unwrap_err(), SegmentError::BadSize(100));

        let pipe = {
            let mut fds = [0; 2];
            // SAFETY: valid out-array.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: the fds are new and owned by these values.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        assert_eq!(Segment::open(pipe.0.as_fd()).unwrap_err(), SegmentError::NotAFile);
        let msg = SegmentError::Header(HeaderError::BadVersion(99)).to_string();
        assert!(msg.contains("99"), "{msg}");
    }
}
