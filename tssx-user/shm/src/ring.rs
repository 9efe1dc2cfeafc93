//! The single-producer single-consumer byte ring over raw shared memory.
//!
//! A ring is a power-of-two array of bytes plus two free-running `u64` positions: `head`, the
//! total bytes the producer has written, and `tail`, the total bytes the consumer has read
//! (both live in the segment header, see [`tssx_common::segment`]). Position `p` lives at index
//! `(p + offset) & (capacity - 1)` of the ring's current geometry; the ring holds `head - tail`
//! bytes, is empty when they are equal and full when the difference is the capacity. A
//! transfer copies one contiguous run of positions, which is at most two `memcpy` calls (the
//! second when the run wraps around the end).
//!
//! # Growing
//!
//! A ring's data region is mapped at its largest size, but the ring starts by using a small
//! power of two of it ([`RingRaw::geometry`]). A producer whose ring would be more than half
//! full after a write takes writes up to the end of its current block only, and doubles the
//! capacity there ([`plan`]): the unread bytes then lie just below the block end, and the
//! doubled geometry keeps them at their indices
//! ([`tssx_common::segment::RingGeometry::unrolled`]). No byte moves, and a reader that still
//! uses the old geometry reads the same bytes. The producer stores the geometry (`Release`)
//! before the `head` store (`Release`) that publishes the first byte after it; the consumer
//! loads the geometry (`Acquire`) after its `Acquire` load of `head` and keeps it with that
//! head. Pages past the capacity in use are never touched, so they are never allocated. See
//! "Rings that grow" in [`tssx_common::segment`].
//!
//! # Memory orderings
//!
//! * The producer copies bytes in, then stores `head` with `Release`. The consumer loads `head`
//!   with `Acquire` before copying out: it sees every byte written before that `head`.
//! * The consumer copies bytes out, then stores `tail` with `Release`. The producer loads
//!   `tail` with `Acquire` before overwriting: the consumer's reads of that space happened
//!   before the producer's writes.
//!
//! # Sleeping and waking
//!
//! Each end has an *asleep* counter in the header. The ring never blocks and never makes a
//! system call; the caller sleeps on the real socket and the peer wakes it with a *doorbell*
//! byte written to that socket. The protocol is [`crate::wait`]'s (the same for `poll` and
//! `epoll` waits over many rings); for a consumer waiting for data (a producer waiting for
//! space is symmetric):
//!
//! 1. The waiter increments its end's asleep counter, issues a `SeqCst` fence and re-checks the
//!    ring ([`Consumer::announce_sleep`] does all three). If data arrived meanwhile it takes the
//!    announcement back and does not sleep.
//! 2. Otherwise it blocks on the real socket (`poll`/`read`), and when woken (or whenever it
//!    stops waiting) decrements the counter ([`Consumer::withdraw_sleep`], or drop the
//!    [`SleepGuard`]).
//! 3. The peer, after every transfer that published a new position, issues a `SeqCst` fence and
//!    reads the waiter's counter; [`Transfer::wake_peer`] reports whether it was non-zero, and
//!    the caller then writes a doorbell byte.
//!
//! The two `SeqCst` fences order "announce, then re-check" against "publish, then look": at
//! least one side sees the other's write, so either the waiter sees the new data and does not
//! sleep, or the peer sees the announcement and rings. No wake-up is lost. Doorbells may be
//! spurious (the counter is read without being cleared, and several transfers may each ring
//! once); the caller drains doorbell bytes and re-checks the ring after every wake-up.
//!
//! # Why the `sync` shim, and what loom checks
//!
//! The ring's code uses the atomics, fence and data cells of [`sync`], which are those of
//! `core` normally and those of `loom` under `--cfg tssx_loom`. The handles are built from raw
//! pointers ([`RingRaw`]) rather than from the segment header type, so the very same
//! `Producer`/`Consumer` code runs both over a mapped segment (whose header, from
//! `tssx-common`, uses `core` atomics of the same types) and, in the loom model test, over an
//! in-memory control block made of loom atomics. The ring data is addressed as cells
//! (`UnsafeCell<u8>`, which for `core` has the layout of `u8`), so under loom every byte
//! access is tracked and an ordering too weak to publish the bytes shows up as a causality
//! violation. Only the byte-copy primitive differs (a `memcpy` normally, a loop of tracked
//! cell accesses under loom); positions, orderings and the wake protocol are the real code.
//! Under `--cfg tssx_loom` the mapping of a real segment is compiled out.
//! (The cfg is `tssx_loom`, not the customary `loom`: `RUSTFLAGS` reach every crate, and under
//! `--cfg loom` tokio drops `tokio::signal`, which the agent in this crate needs.)
//!
//! # Untrusted peer
//!
//! The other end is another process. Every index is masked and every length clamped to the
//! capacity, so a peer that writes garbage positions can make the ring look empty or full or
//! yield garbage bytes, but can never make a handle access memory outside the ring. A
//! [`RingLock`] word is in the peer's reach too: its value is only a claim, which the hook checks
//! before it waits long ([`RingLock::take_over`], [`RingLock::seize`]), and which the peer can
//! clear under a holder; so the hook serializes its own threads with a lock in its own memory
//! first, and the word only orders the processes of one end (see the hook's `ringlock` module).

use core::cell::Cell;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::io::{IoSlice, IoSliceMut};

use self::sync::{AtomicU32, AtomicU64, DataCell};
use tssx_common::segment::RingGeometry;

/// The atomics, fence and data cell the ring is written against: `core`'s normally, `loom`'s
/// under `--cfg tssx_loom` (see the module documentation).
pub mod sync {
    #[cfg(not(tssx_loom))]
    pub use core::sync::atomic::{fence, AtomicU32, AtomicU64};
    #[cfg(tssx_loom)]
    pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64};

    /// One byte of ring data.
    #[cfg(not(tssx_loom))]
    pub type DataCell = core::cell::UnsafeCell<u8>;
    /// One byte of ring data (tracked by loom).
    #[cfg(tssx_loom)]
    pub type DataCell = loom::cell::UnsafeCell<u8>;

    /// Copies `src` (an application's buffer, which may run into a bad page) into the cells
    /// starting at `dst`; `false` if `src` faulted (see [`crate::ucopy`]).
    ///
    /// # Safety
    /// `dst..dst + src.len()` must be valid cells that nobody else accesses meanwhile.
    #[cfg(not(tssx_loom))]
    #[inline]
    pub(crate) unsafe fn copy_in(dst: *const DataCell, src: &[u8]) -> bool {
        // SAFETY: the caller guarantees the destination range is valid and exclusively ours;
        // `UnsafeCell<u8>` has the layout of `u8` and permits writes through a shared pointer;
        // the source is read by the copy routine only, which survives a bad page.
        unsafe { crate::ucopy::copy(DataCell::raw_get(dst), src.as_ptr(), src.len()) == 0 }
    }

    /// Copies the cells starting at `src` into `dst` (an application's buffer, which may run
    /// into a bad page); `false` if `dst` faulted (see [`crate::ucopy`]).
    ///
    /// # Safety
    /// `src..src + dst.len()` must be valid cells that nobody writes meanwhile.
    #[cfg(not(tssx_loom))]
    #[inline]
    pub(crate) unsafe fn copy_out(src: *const DataCell, dst: &mut [u8]) -> bool {
        // SAFETY: the caller guarantees the source range is valid and not written meanwhile;
        // the destination is written by the copy routine only, which survives a bad page.
        unsafe { crate::ucopy::copy(dst.as_mut_ptr(), DataCell::raw_get(src), dst.len()) == 0 }
    }

    /// Copies `src` into the cells starting at `dst`, one tracked access per byte.
    ///
    /// # Safety
    /// As the non-loom version.
    #[cfg(tssx_loom)]
    pub(crate) unsafe fn copy_in(dst: *const DataCell, src: &[u8]) -> bool {
        for (i, &byte) in src.iter().enumerate() {
            // SAFETY: in bounds by the caller's contract; loom checks exclusivity.
            unsafe { (*dst.add(i)).with_mut(|p| *p = byte) }
        }
        true
    }

    /// Copies the cells starting at `src` into `dst`, one tracked access per byte.
    ///
    /// # Safety
    /// As the non-loom version.
    #[cfg(tssx_loom)]
    pub(crate) unsafe fn copy_out(src: *const DataCell, dst: &mut [u8]) -> bool {
        for (i, out) in dst.iter_mut().enumerate() {
            // SAFETY: in bounds by the caller's contract; loom checks there is no racing write.
            *out = unsafe { (*src.add(i)).with(|p| *p) };
        }
        true
    }
}

/// Raw pointers to everything one ring uses; the input of [`Producer::new`] and
/// [`Consumer::new`].
#[derive(Clone, Copy, Debug)]
pub struct RingRaw {
    /// The producer position (`head`).
    pub head: *const AtomicU64,
    /// The consumer position (`tail`).
    pub tail: *const AtomicU64,
    /// The asleep counter of the end that writes this ring.
    pub producer_asleep: *const AtomicU32,
    /// The asleep counter of the end that reads this ring.
    pub consumer_asleep: *const AtomicU32,
    /// The ring's geometry word ([`tssx_common::segment::ProducerLine::geometry`]): the
    /// capacity in use now, at most `capacity`.
    pub geometry: *const AtomicU64,
    /// The first of `capacity` data cells.
    pub data: *const DataCell,
    /// Number of data cells, the most the ring may grow to; a power of two.
    pub capacity: usize,
}

/// Result of a transfer that may have published a new position.
#[must_use = "if `wake_peer` is set the caller must ring the doorbell"]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes copied (`0` when the ring was full, resp. empty, or the buffer was empty).
    pub bytes: usize,
    /// The peer announced it sleeps waiting for this end: write a doorbell byte to the real
    /// socket. Only ever set when `bytes > 0`.
    pub wake_peer: bool,
    /// The application's buffer ran into a bad page (see [`crate::ucopy`]): the transfer moved
    /// nothing (`bytes` is 0, no position was published), as the kernel keeps a message whose
    /// copy faulted queued (reading) or drops it (writing) and answers EFAULT if nothing was
    /// moved before. Only ever set when `bytes` is 0.
    pub fault: bool,
}

impl Transfer {
    const NOTHING: Transfer = Transfer { bytes: 0, wake_peer: false, fault: false };
    /// A transfer whose copy faulted (see [`Transfer::fault`]).
    pub const FAULT: Transfer = Transfer { bytes: 0, wake_peer: false, fault: true };

    /// A peek's result: `bytes` copied, nothing published.
    pub const fn peeked(bytes: usize) -> Transfer {
        Transfer { bytes, wake_peer: false, fault: false }
    }
}

/// Bytes in the ring given a producer and a consumer position, clamped to `0..=capacity`.
/// A difference above the capacity means one position is stale (a cached copy behind another
/// handle's progress) or corrupt; it counts as nothing.
#[inline]
fn used(head: u64, tail: u64, capacity: usize) -> usize {
    let used = head.wrapping_sub(tail);
    if used > capacity as u64 {
        0
    } else {
        used as usize
    }
}

/// Free space given a producer and a consumer position, clamped likewise (stale or corrupt
/// positions count as a full ring).
#[inline]
fn free(head: u64, tail: u64, capacity: usize) -> usize {
    let used = head.wrapping_sub(tail);
    if used > capacity as u64 {
        0
    } else {
        capacity - used as usize
    }
}

/// Total length of some buffers, saturating.
fn total_len<I: Iterator<Item = usize>>(lens: I) -> usize {
    lens.fold(0usize, |acc, len| acc.saturating_add(len))
}

/// The geometry in a stored word, sanitized against the mapped capacity (see
/// [`RingGeometry::decode`]): its capacity is a power of two at most `raw.capacity`.
#[inline]
fn geometry_of(raw: &RingRaw, word: u64) -> RingGeometry {
    RingGeometry::decode(word, raw.capacity)
}

/// What a producer at `head` may write now for a transfer of `want` bytes, with the consumer
/// at `tail`, in geometry `geo`, in a ring mapped for `max` bytes: the room, and whether the
/// ring grows first (then the room is the grown ring's).
///
/// A ring that may still grow and would be more than half full after the write (it is filling
/// up: a stream, or a reader that does not keep up) takes writes up to the end of its current
/// block only (the position whose index is 0), never wrapping around it; a write that starts
/// there doubles the ring. At a block end the unread bytes lie just below the end, at the
/// indices they keep in the doubled ring ([`RingGeometry::unrolled`]): no byte moves, and a
/// reader that still uses the old geometry reads the same bytes as one that uses the new one.
/// Request/response traffic keeps the ring less than half full and never grows it.
#[inline]
fn plan(head: u64, tail: u64, geo: RingGeometry, max: usize, want: usize) -> (usize, bool) {
    let used = head.wrapping_sub(tail);
    if used > geo.capacity as u64 {
        // A stale or corrupt pair of positions: no room, and never a growth.
        return (0, false);
    }
    let used = used as usize;
    let room = geo.capacity - used;
    if geo.capacity >= max || used.saturating_add(want) <= geo.capacity / 2 {
        return (room, false);
    }
    match geo.index(head) {
        0 => {
            // The head lands at index `index(tail) + used` of the doubled ring (see
            // `unrolled`: `capacity`, or 0 when the ring is empty): up to the doubled ring's
            // block end, unless it is the largest.
            let grown = (geo.capacity * 2).min(max);
            let to_end = if grown >= max { grown } else { grown - (geo.index(tail) + used) };
            ((grown - used).min(to_end), true)
        }
        into => (room.min(geo.capacity - into), false),
    }
}

/// Room for a write on the ring whose positions and geometry word are given (mapped for `max`
/// bytes), as [`Producer::free`] counts it: what the next write takes, whatever its size
/// (growing the ring first if it does). For readiness (`POLLOUT`) from the shared header.
pub fn room_to_write(head: u64, tail: u64, geometry: u64, max: usize) -> usize {
    plan(head, tail, RingGeometry::decode(geometry, max), max, usize::MAX).0
}

/// Copies `src` into the ring at position `pos`: one copy, two if the run wraps. `false`: `src`
/// ran into a bad page (see [`crate::ucopy`]; the positions hold garbage, never published).
///
/// # Safety
/// `raw` satisfies the constructor contract, `geo` came from [`geometry_of`] (its capacity is
/// at most `raw.capacity`), `src.len() <= geo.capacity`, and the positions
/// `pos..pos + src.len()` are free space owned by the caller (the producer).
#[inline]
unsafe fn copy_to_ring(raw: &RingRaw, geo: RingGeometry, pos: u64, src: &[u8]) -> bool {
    let start = geo.index(pos);
    let first = src.len().min(geo.capacity - start);
    // SAFETY: `start + first <= geo.capacity <= raw.capacity` and the remaining
    // `src.len() - first <= start` cells from index 0 are in bounds; the caller owns these
    // positions.
    unsafe { sync::copy_in(raw.data.add(start), &src[..first]) && (first == src.len() || sync::copy_in(raw.data, &src[first..])) }
}

/// Copies from the ring at position `pos` into `dst`: one copy, two if the run wraps. `false`:
/// `dst` ran into a bad page (see [`crate::ucopy`]).
///
/// # Safety
/// As [`copy_to_ring`], with `dst.len() <= geo.capacity` and the positions
/// `pos..pos + dst.len()` holding published bytes the producer will not overwrite meanwhile.
#[inline]
unsafe fn copy_from_ring(raw: &RingRaw, geo: RingGeometry, pos: u64, dst: &mut [u8]) -> bool {
    let start = geo.index(pos);
    let first = dst.len().min(geo.capacity - start);
    let (a, b) = dst.split_at_mut(first);
    // SAFETY: as in `copy_to_ring`, both runs are in bounds; the bytes are published and not
    // overwritten before we publish a tail past them.
    unsafe { sync::copy_out(raw.data.add(start), a) && (b.is_empty() || sync::copy_out(raw.data, b)) }
}

/// The writing handle of a ring.
///
/// `Send` but neither `Sync` nor `Clone`: one handle is used by one thread at a time.
pub struct Producer {
    raw: RingRaw,
    /// Last `tail` read from the shared memory; never ahead of the real one.
    cached_tail: Cell<u64>,
}

// SAFETY: the handle only holds pointers into memory that the constructor's contract keeps
// valid for its lifetime, independent of the thread using it; all shared state is atomic.
unsafe impl Send for Producer {}

impl core::fmt::Debug for Producer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.raw.capacity)
            .field("cached_tail", &self.cached_tail.get())
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Builds the writing handle of a ring.
    ///
    /// # Safety
    /// For the whole life of the handle:
    /// * every pointer of `raw` points to a valid, initialized, suitably aligned object
    ///   (`data` to `capacity` cells), in memory that stays mapped;
    /// * `raw.capacity` is a non-zero power of two;
    /// * no other producer of this ring runs concurrently: other handles of the same ring
    ///   (other threads, a forked child) are only used while this one is not, with a
    ///   happens-before between them (e.g. the ring's producer [`RingLock`]);
    /// * nothing else writes the ring's data cells or `head`.
    ///
    /// # Panics
    /// If `raw.capacity` is not a power of two.
    pub unsafe fn new(raw: RingRaw) -> Producer {
        assert!(raw.capacity.is_power_of_two(), "ring capacity must be a power of two");
        let producer = Producer { raw, cached_tail: Cell::new(0) };
        // Acquire: as every load of the consumer's position.
        producer.cached_tail.set(producer.tail().load(Acquire));
        producer
    }

    #[inline]
    fn head(&self) -> &AtomicU64 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.head }
    }

    #[inline]
    fn tail(&self) -> &AtomicU64 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.tail }
    }

    #[inline]
    fn own_asleep(&self) -> &AtomicU32 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.producer_asleep }
    }

    #[inline]
    fn peer_asleep(&self) -> &AtomicU32 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.consumer_asleep }
    }

    #[inline]
    fn geometry_word(&self) -> &AtomicU64 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.geometry }
    }

    /// The ring's current geometry (sanitized).
    #[inline]
    pub fn geometry(&self) -> RingGeometry {
        // Relaxed: our own field, written only by producers serialized with us (their lock's
        // Acquire/Release orders it).
        geometry_of(&self.raw, self.geometry_word().load(Relaxed))
    }

    /// Capacity of the ring in bytes as it is now (it grows up to [`Producer::max_capacity`]).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.geometry().capacity
    }

    /// The most the ring may grow to: the bytes mapped for its data.
    #[inline]
    pub fn max_capacity(&self) -> usize {
        self.raw.capacity
    }

    /// Total bytes ever written to the ring (the producer position).
    #[inline]
    pub fn position(&self) -> u64 {
        // Relaxed: our own position, written only by producers serialized with us.
        self.head().load(Relaxed)
    }

    /// Room for the next write in bytes, reading the consumer's position afresh: a write of
    /// up to this many bytes takes them all (growing the ring first if it must and may).
    #[inline]
    pub fn free(&self) -> usize {
        let head = self.position();
        let geo = self.geometry();
        self.refresh(head, geo.capacity);
        plan(head, self.cached_tail.get(), geo, self.raw.capacity, usize::MAX).0
    }

    /// Whether nothing is waiting for the consumer (everything written has been read).
    #[inline]
    pub fn is_drained(&self) -> bool {
        let capacity = self.capacity();
        self.refresh(self.position(), capacity) == capacity
    }

    /// Reloads the consumer position and returns the free space for producer position `head`
    /// in a ring of `capacity` bytes.
    #[inline]
    fn refresh(&self, head: u64, capacity: usize) -> usize {
        // Acquire: pairs with the consumer's Release store of `tail` after copying out, so
        // its reads of the space we are about to reuse happened before our writes.
        let tail = self.tail().load(Acquire);
        self.cached_tail.set(tail);
        free(head, tail, capacity)
    }

    /// The geometry to write with and how many bytes may go at `head` now, for a transfer of
    /// `want` bytes (non-zero): see [`plan`]. A growth stores the doubled geometry before the
    /// caller publishes anything past `head`.
    #[inline]
    fn room_for(&self, head: u64, want: usize) -> (RingGeometry, usize) {
        let geo = self.geometry();
        let (room, grow) = plan(head, self.cached_tail.get(), geo, self.raw.capacity, want);
        if room >= want && !grow {
            return (geo, want);
        }
        // The cached consumer position may be stale (low): look again before deciding.
        self.refresh(head, geo.capacity);
        let tail = self.cached_tail.get();
        let (room, grow) = plan(head, tail, geo, self.raw.capacity, want);
        if !grow {
            return (geo, room.min(want));
        }
        let grown = geo.unrolled(tail, (geo.capacity * 2).min(self.raw.capacity));
        // Release: orders this geometry before the `head` store (Release) that publishes the
        // first byte written under it; the consumer loads `head` with Acquire, then this word.
        self.geometry_word().store(grown.encode(), Release);
        (grown, room.min(want))
    }

    /// Publishes `head + bytes` after the bytes were copied in.
    #[inline]
    fn publish(&mut self, head: u64, bytes: usize) -> Transfer {
        // Release: orders our copies into the ring before the new head, which the consumer
        // loads with Acquire.
        self.head().store(head.wrapping_add(bytes as u64), Release);
        Transfer { bytes, wake_peer: crate::wait::sleeper_announced(self.peer_asleep()), fault: false }
    }

    /// Copies as much of `src` as fits into the ring and publishes it ([`Transfer::FAULT`],
    /// nothing published, if `src` ran into a bad page).
    pub fn write(&mut self, src: &[u8]) -> Transfer {
        if src.is_empty() {
            return Transfer::NOTHING;
        }
        let head = self.position();
        let (geo, n) = self.room_for(head, src.len());
        if n == 0 {
            return Transfer::NOTHING;
        }
        // SAFETY: contract of `new`; `geo` is sanitized; `n` bytes from `head` are free space
        // (within its capacity), and only we write them until we publish.
        if !unsafe { copy_to_ring(&self.raw, geo, head, &src[..n]) } {
            return Transfer::FAULT;
        }
        self.publish(head, n)
    }

    /// Copies as much of `bufs`, in order, as fits into the ring and publishes it once
    /// ([`Transfer::FAULT`], nothing published, if a buffer ran into a bad page).
    pub fn writev(&mut self, bufs: &[IoSlice<'_>]) -> Transfer {
        let want = total_len(bufs.iter().map(|b| b.len()));
        if want == 0 {
            return Transfer::NOTHING;
        }
        let head = self.position();
        let (geo, n) = self.room_for(head, want);
        if n == 0 {
            return Transfer::NOTHING;
        }
        let mut pos = head;
        let mut left = n;
        for buf in bufs {
            let k = buf.len().min(left);
            // SAFETY: as in `write`; the runs `pos..pos + k` are consecutive parts of the `n`
            // free bytes from `head`.
            if !unsafe { copy_to_ring(&self.raw, geo, pos, &buf[..k]) } {
                return Transfer::FAULT;
            }
            pos = pos.wrapping_add(k as u64);
            left -= k;
            if left == 0 {
                break;
            }
        }
        self.publish(head, n)
    }

    /// Copies the written bytes from position `from` on (up to `dst.len()`) into `dst`,
    /// changing nothing: for a producer that sends again elsewhere bytes its consumer stopped
    /// reading at `from` (a hand-back to the kernel whose reader will read the socket only).
    /// Returns how many were copied: 0 if `from` is not between the consumer's position and
    /// this producer's.
    pub fn copy_unread(&self, from: u64, dst: &mut [u8]) -> usize {
        let head = self.position();
        // Acquire: as every load of the consumer's position.
        let tail = self.tail().load(Acquire);
        if from < tail || from > head {
            return 0;
        }
        let geo = self.geometry();
        let n = usize::try_from(head - from).unwrap_or(usize::MAX).min(dst.len()).min(geo.capacity);
        // SAFETY: contract of `new`; `geo` is sanitized, and places every unread byte where it
        // was written (a ring grows without moving one); the `n` bytes from `from` were
        // published by this producer (from >= tail, from + n <= head, within the capacity) and
        // only this producer, which is not writing now, could overwrite them.
        // (`dst` is the caller's own memory: it cannot fault.)
        let _ = unsafe { copy_from_ring(&self.raw, geo, from, &mut dst[..n]) };
        n
    }

    /// Announces that this end is about to sleep waiting for free space, then re-checks.
    ///
    /// Returns `true` if the ring is still full: the announcement stands, the caller may block
    /// on the real socket for a doorbell and must call [`Producer::withdraw_sleep`] once it
    /// stops waiting. Returns `false` (announcement already withdrawn) if there is space.
    pub fn announce_sleep(&self) -> bool {
        crate::wait::announce_then_recheck(self.own_asleep(), || self.free() > 0)
    }

    /// Takes back an announcement that [`Producer::announce_sleep`] left standing.
    pub fn withdraw_sleep(&self) {
        crate::wait::withdraw(self.own_asleep());
    }

    /// [`Producer::announce_sleep`] as a guard that withdraws on drop; `None` if there is
    /// space already.
    pub fn prepare_sleep(&self) -> Option<SleepGuard<'_>> {
        self.announce_sleep().then(|| SleepGuard { asleep: self.own_asleep() })
    }
}

/// The reading handle of a ring.
///
/// `Send` but neither `Sync` nor `Clone`: one handle is used by one thread at a time.
pub struct Consumer {
    raw: RingRaw,
    /// Last `head` read from the shared memory; never ahead of the real one.
    cached_head: Cell<u64>,
    /// The geometry loaded after `cached_head`: it places every byte below that head.
    cached_geometry: Cell<RingGeometry>,
}

// SAFETY: as for `Producer`.
unsafe impl Send for Consumer {}

impl core::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.raw.capacity)
            .field("cached_head", &self.cached_head.get())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Builds the reading handle of a ring.
    ///
    /// # Safety
    /// As [`Producer::new`], with "producer", `head` and "writes the data cells" replaced by
    /// "consumer", `tail` and "reads the data cells": no other consumer of this ring runs
    /// concurrently (serialize them, e.g. with the ring's consumer [`RingLock`]), and nothing
    /// else writes `tail`.
    ///
    /// # Panics
    /// If `raw.capacity` is not a power of two.
    pub unsafe fn new(raw: RingRaw) -> Consumer {
        assert!(raw.capacity.is_power_of_two(), "ring capacity must be a power of two");
        let consumer = Consumer { raw, cached_head: Cell::new(0), cached_geometry: Cell::new(RingGeometry::new(raw.capacity)) };
        consumer.refresh(consumer.position());
        consumer
    }

    #[inline]
    fn head(&self) -> &AtomicU64 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.head }
    }

    #[inline]
    fn tail(&self) -> &AtomicU64 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.tail }
    }

    #[inline]
    fn own_asleep(&self) -> &AtomicU32 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.consumer_asleep }
    }

    #[inline]
    fn geometry_word(&self) -> &AtomicU64 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.geometry }
    }

    #[inline]
    fn peer_asleep(&self) -> &AtomicU32 {
        // SAFETY: valid for the handle's life by the constructor's contract.
        unsafe { &*self.raw.producer_asleep }
    }

    /// Capacity of the ring in bytes as of the last look at the producer's position.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cached_geometry.get().capacity
    }

    /// Total bytes ever read from the ring (the consumer position).
    #[inline]
    pub fn position(&self) -> u64 {
        // Relaxed: our own position, written only by consumers serialized with us.
        self.tail().load(Relaxed)
    }

    /// Bytes ready to read, reading the producer's position afresh (e.g. for `FIONREAD` or
    /// `poll`).
    #[inline]
    pub fn available(&self) -> usize {
        self.refresh(self.position())
    }

    /// Reloads the producer position and returns the bytes available at consumer position
    /// `tail`.
    #[inline]
    fn refresh(&self, tail: u64) -> usize {
        // Acquire: pairs with the producer's Release store of `head` after copying in, so the
        // bytes below that head are visible to our copies.
        let head = self.head().load(Acquire);
        // Acquire, after the Acquire load of `head`: the producer stored the geometry of every
        // byte below that head (Release) before the head, so this load sees it or a later
        // one, and a later one (a ring grown meanwhile) keeps every unread byte at its index.
        let geo = geometry_of(&self.raw, self.geometry_word().load(Acquire));
        self.cached_head.set(head);
        self.cached_geometry.set(geo);
        used(head, tail, geo.capacity)
    }

    /// Bytes available at `tail`, at least `want` if the ring has them: the cached producer
    /// position is only refreshed when it shows less than `want`.
    #[inline]
    fn available_for(&self, tail: u64, want: usize) -> usize {
        let cached = used(self.cached_head.get(), tail, self.cached_geometry.get().capacity);
        if cached >= want {
            cached
        } else {
            self.refresh(tail)
        }
    }

    /// Bytes available at `tail`: as [`Consumer::available_for`], or (no `refresh`) only what
    /// the cached producer position shows.
    #[inline]
    fn seen_or_refreshed(&self, tail: u64, want: usize, refresh: bool) -> usize {
        if refresh {
            self.available_for(tail, want)
        } else {
            used(self.cached_head.get(), tail, self.cached_geometry.get().capacity)
        }
    }

    /// Copies up to `dst.len()` bytes out of the ring without consuming them (`MSG_PEEK`);
    /// [`Transfer::FAULT`] if `dst` ran into a bad page.
    pub fn peek(&self, dst: &mut [u8]) -> Transfer {
        self.peek_at(self.position(), dst)
    }

    /// Copies up to the buffers' total length out of the ring into `bufs`, in order, without
    /// consuming anything (`recvmsg` with `MSG_PEEK` and several buffers); [`Transfer::FAULT`]
    /// if a buffer ran into a bad page.
    pub fn peekv(&self, bufs: &mut [IoSliceMut<'_>]) -> Transfer {
        self.peekv_upto(bufs, true)
    }

    /// As [`Consumer::peekv`], but only bytes the last look at the producer's position saw
    /// ([`Consumer::available`] and the reads refresh it): a reader that looked at the ring,
    /// then checked something the producer publishes before its bytes (as the hook's records
    /// of ancillary data), takes no byte published after that check.
    pub fn peekv_seen(&self, bufs: &mut [IoSliceMut<'_>]) -> Transfer {
        self.peekv_upto(bufs, false)
    }

    fn peekv_upto(&self, bufs: &mut [IoSliceMut<'_>], refresh: bool) -> Transfer {
        let mut pos = self.position();
        let mut total = 0;
        for buf in bufs.iter_mut() {
            let got = self.peek_upto(pos, buf, refresh);
            if got.fault {
                return got;
            }
            total += got.bytes;
            pos = pos.wrapping_add(got.bytes as u64);
            if got.bytes < buf.len() {
                break;
            }
        }
        Transfer::peeked(total)
    }

    /// `peek` at consumer position `tail`.
    #[inline]
    fn peek_at(&self, tail: u64, dst: &mut [u8]) -> Transfer {
        self.peek_upto(tail, dst, true)
    }

    /// `peek_at`; without `refresh`, only the bytes the cached producer position shows.
    #[inline]
    fn peek_upto(&self, tail: u64, dst: &mut [u8], refresh: bool) -> Transfer {
        if dst.is_empty() {
            return Transfer::NOTHING;
        }
        let n = self.seen_or_refreshed(tail, dst.len(), refresh).min(dst.len());
        // SAFETY: contract of `new`; `n` published bytes from `tail` (within the capacity of
        // the sanitized geometry loaded with the head that published them), which the producer
        // does not overwrite before we publish a tail past them.
        if !unsafe { copy_from_ring(&self.raw, self.cached_geometry.get(), tail, &mut dst[..n]) } {
            return Transfer::FAULT;
        }
        Transfer::peeked(n)
    }

    /// Publishes `tail + bytes` after the bytes were copied out (or skipped).
    ///
    /// The peer is woken only if this read made room where its producer had none: a
    /// producer sleeps for room only then (a blocking write, a `POLLOUT` wait: see
    /// [`Producer::free`]). A wake-up on every read (the peer's end announces one asleep
    /// counter for all it waits for, mostly its incoming data) cost a doorbell, the peer's
    /// wake-up and its drain for each read of a message: PHP-FPM's child reads nginx's
    /// request in five. (The kernel wakes a writer when its skb is freed; this end's
    /// edge-triggered `EPOLLOUT` still reports the moved tail whenever its wait wakes.)
    ///
    /// No wake-up is lost: a producer that found no room announced, issued its `SeqCst` fence
    /// and loaded the tail; if that load missed this read's tail, this read's `SeqCst` fence
    /// (in `sleeper_announced`) comes after the producer's in the fences' total order, so the
    /// head and geometry loaded after it are at least those the producer saw: no room at
    /// `tail` (loom model `no_lost_wakeup`).
    #[inline]
    fn publish(&mut self, tail: u64, bytes: usize) -> Transfer {
        // Release: orders our copies out of the ring before the new tail, which the producer
        // loads with Acquire before reusing the space.
        self.tail().store(tail.wrapping_add(bytes as u64), Release);
        let wake_peer = crate::wait::sleeper_announced(self.peer_asleep()) && self.had_no_room(tail);
        Transfer { bytes, wake_peer, fault: false }
    }

    /// Whether the producer had no room with the consumer at `tail` (see [`Consumer::publish`]).
    #[inline]
    fn had_no_room(&self, tail: u64) -> bool {
        // Acquire: the head and its geometry as the producer published them (ordered after its
        // fence by the caller's fence, see `publish`).
        let head = self.head().load(Acquire);
        let geometry = self.geometry_word().load(Acquire);
        room_to_write(head, tail, geometry, self.raw.capacity) == 0
    }

    /// Copies up to `dst.len()` bytes out of the ring and consumes them ([`Transfer::FAULT`],
    /// nothing consumed, if `dst` ran into a bad page).
    pub fn read(&mut self, dst: &mut [u8]) -> Transfer {
        let tail = self.position();
        let got = self.peek_at(tail, dst);
        if got.bytes == 0 {
            return got;
        }
        self.publish(tail, got.bytes)
    }

    /// Fills `bufs` in order with as many bytes as the ring has, consuming them
    /// ([`Transfer::FAULT`], nothing consumed, if a buffer ran into a bad page).
    pub fn readv(&mut self, bufs: &mut [IoSliceMut<'_>]) -> Transfer {
        self.readv_upto(bufs, true)
    }

    /// As [`Consumer::readv`], but only bytes the last look at the producer's position saw
    /// (see [`Consumer::peekv_seen`]).
    pub fn readv_seen(&mut self, bufs: &mut [IoSliceMut<'_>]) -> Transfer {
        self.readv_upto(bufs, false)
    }

    fn readv_upto(&mut self, bufs: &mut [IoSliceMut<'_>], refresh: bool) -> Transfer {
        let want = total_len(bufs.iter().map(|b| b.len()));
        if want == 0 {
            return Transfer::NOTHING;
        }
        let tail = self.position();
        let n = self.seen_or_refreshed(tail, want, refresh).min(want);
        if n == 0 {
            return Transfer::NOTHING;
        }
        let geo = self.cached_geometry.get();
        let mut pos = tail;
        let mut left = n;
        for buf in bufs.iter_mut() {
            let k = buf.len().min(left);
            // SAFETY: as in `peek`; the runs `pos..pos + k` are consecutive parts of the `n`
            // published bytes from `tail`.
            if !unsafe { copy_from_ring(&self.raw, geo, pos, &mut buf[..k]) } {
                return Transfer::FAULT;
            }
            pos = pos.wrapping_add(k as u64);
            left -= k;
            if left == 0 {
                break;
            }
        }
        self.publish(tail, n)
    }

    /// Consumes up to `n` bytes without copying them (e.g. after a [`Consumer::peek`]).
    pub fn skip(&mut self, n: usize) -> Transfer {
        if n == 0 {
            return Transfer::NOTHING;
        }
        let tail = self.position();
        let n = self.available_for(tail, n).min(n);
        if n == 0 {
            return Transfer::NOTHING;
        }
        self.publish(tail, n)
    }

    /// Announces that this end is about to sleep waiting for data, then re-checks.
    ///
    /// Returns `true` if the ring is still empty: the announcement stands, the caller may block
    /// on the real socket for a doorbell and must call [`Consumer::withdraw_sleep`] once it
    /// stops waiting. Returns `false` (announcement already withdrawn) if data is there.
    pub fn announce_sleep(&self) -> bool {
        crate::wait::announce_then_recheck(self.own_asleep(), || self.available() > 0)
    }

    /// Takes back an announcement that [`Consumer::announce_sleep`] left standing.
    pub fn withdraw_sleep(&self) {
        crate::wait::withdraw(self.own_asleep());
    }

    /// [`Consumer::announce_sleep`] as a guard that withdraws on drop; `None` if data is there
    /// already.
    pub fn prepare_sleep(&self) -> Option<SleepGuard<'_>> {
        self.announce_sleep().then(|| SleepGuard { asleep: self.own_asleep() })
    }
}

/// A standing sleep announcement; dropping it withdraws the announcement.
#[must_use = "dropping the guard withdraws the announcement at once"]
#[derive(Debug)]
pub struct SleepGuard<'a> {
    asleep: &'a AtomicU32,
}

impl Drop for SleepGuard<'_> {
    fn drop(&mut self) {
        crate::wait::withdraw(self.asleep);
    }
}

/// A ring's producer or consumer lock word: `0` when free, else the holder's id.
///
/// The ring handles themselves take no lock; callers that may use several handles of one ring
/// side concurrently (threads, processes after `fork`) take this lock around each use. It is a
/// try-lock only: spinning or sleeping on it is the caller's policy (a signal handler must not
/// spin on a lock its own thread may hold).
#[derive(Clone, Copy, Debug)]
pub struct RingLock {
    word: *const AtomicU32,
}

// SAFETY: the word is an atomic in memory the constructor's contract keeps valid.
unsafe impl Send for RingLock {}
// SAFETY: as above; every access is atomic.
unsafe impl Sync for RingLock {}

impl RingLock {
    /// Wraps a lock word.
    ///
    /// # Safety
    /// `word` points to a valid, initialized `AtomicU32` for the life of the value and of its
    /// copies.
    pub unsafe fn new(word: *const AtomicU32) -> RingLock {
        RingLock { word }
    }

    #[inline]
    fn word(&self) -> &AtomicU32 {
        // SAFETY: valid by the constructor's contract.
        unsafe { &*self.word }
    }

    /// Takes the lock for `owner` (non-zero; the thread id is a good choice, so that a dead
    /// holder can be recognised) if it is free.
    ///
    /// # Panics
    /// If `owner` is zero.
    #[inline]
    pub fn try_lock(&self, owner: u32) -> Option<RingLockGuard<'_>> {
        assert!(owner != 0, "lock owner id must be non-zero");
        // Acquire on success: everything the previous holder did before releasing (Release)
        // happens before our critical section.
        self.word()
            .compare_exchange(0, owner, Acquire, Relaxed)
            .is_ok()
            // Lazily: a guard built and dropped on failure would unlock the current holder.
            .then(|| RingLockGuard { lock: self })
    }

    /// The current holder's id, `0` if free. Only a hint: it may change at once.
    #[inline]
    pub fn holder(&self) -> u32 {
        self.word().load(Relaxed)
    }

    /// Takes the lock over from `holder` (known dead, or not a holder at all: a value the peer
    /// wrote into the word) for `owner`, if the word still holds `holder`.
    ///
    /// # Panics
    /// If `owner` is zero.
    pub fn take_over(&self, holder: u32, owner: u32) -> Option<RingLockGuard<'_>> {
        assert!(owner != 0, "lock owner id must be non-zero");
        // Acquire on success: as `try_lock`.
        self.word().compare_exchange(holder, owner, Acquire, Relaxed).is_ok().then(|| RingLockGuard { lock: self })
    }

    /// Takes the lock for `owner` whatever the word holds, and returns what it held. Only for a
    /// word the peer is known to have written (its value says nothing about a holder any more).
    ///
    /// # Panics
    /// If `owner` is zero.
    pub fn seize(&self, owner: u32) -> (u32, RingLockGuard<'_>) {
        assert!(owner != 0, "lock owner id must be non-zero");
        // Acquire: as `try_lock`.
        (self.word().swap(owner, Acquire), RingLockGuard { lock: self })
    }

    /// Frees the lock if `owner` still holds it (e.g. the holder is known to be dead). Returns
    /// whether it did.
    pub fn break_lock(&self, owner: u32) -> bool {
        // Release: as an unlock; Relaxed on failure (nothing read).
        self.word().compare_exchange(owner, 0, Release, Relaxed).is_ok()
    }
}

/// A held [`RingLock`]; dropping it releases the lock.
#[must_use = "dropping the guard releases the lock at once"]
#[derive(Debug)]
pub struct RingLockGuard<'a> {
    lock: &'a RingLock,
}

impl Drop for RingLockGuard<'_> {
    fn drop(&mut self) {
        // Release: our critical section happens before the next holder's (Acquire).
        self.lock.word().store(0, Release);
    }
}

#[cfg(all(test, not(tssx_loom)))]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tssx_common::segment::RingControl;

    /// A ring in ordinary memory, laid out with the segment's real control block.
    struct TestRing {
        ctl: Box<RingControl>,
        asleep: Box<[AtomicU32; 2]>,
        data: Box<[DataCell]>,
    }

    impl TestRing {
        fn new(capacity: usize) -> TestRing {
            TestRing {
                ctl: Box::default(),
                asleep: Box::new([AtomicU32::new(0), AtomicU32::new(0)]),
                data: (0..capacity).map(|_| DataCell::new(0)).collect(),
            }
        }

        /// A ring of `capacity` bytes that starts using `initial` of them.
        fn growing(capacity: usize, initial: usize) -> TestRing {
            let ring = TestRing::new(capacity);
            ring.ctl.producer.0.geometry.store(RingGeometry::new(initial).encode(), Relaxed);
            ring
        }

        fn raw(&self) -> RingRaw {
            RingRaw {
                head: &self.ctl.producer.0.head,
                tail: &self.ctl.consumer.0.tail,
                producer_asleep: &self.asleep[0],
                consumer_asleep: &self.asleep[1],
                geometry: &self.ctl.producer.0.geometry,
                data: self.data.as_ptr(),
                capacity: self.data.len(),
            }
        }

        fn handles(&self) -> (Producer, Consumer) {
            // SAFETY: the test ring outlives the handles (they are dropped before it in every
            // test), and each test uses one producer and one consumer.
            unsafe { (Producer::new(self.raw()), Consumer::new(self.raw())) }
        }
    }

    #[test]
    fn empty_ring() {
        let ring = TestRing::new(16);
        let (p, mut c) = ring.handles();
        let mut buf = [0u8; 8];
        assert_eq!(c.available(), 0);
        assert_eq!(p.free(), 16);
        assert!(p.is_drained());
        assert_eq!(c.read(&mut buf), Transfer::NOTHING);
        assert_eq!(c.peek(&mut buf).bytes, 0);
        assert_eq!(c.skip(3), Transfer::NOTHING);
        assert_eq!(c.readv(&mut [IoSliceMut::new(&mut buf)]), Transfer::NOTHING);
        assert_eq!(c.position(), 0);
    }

    #[test]
    fn seen_reads_take_only_what_the_last_look_saw() {
        let ring = TestRing::new(16);
        let (mut p, mut c) = ring.handles();
        let mut out = [0u8; 8];
        assert_eq!(p.write(b"abc").bytes, 3);
        assert_eq!(c.available(), 3);
        // Published after the look: not taken by a seen read, taken by the next look.
        assert_eq!(p.write(b"def").bytes, 3);
        assert_eq!(c.peekv_seen(&mut [IoSliceMut::new(&mut out)]).bytes, 3);
        assert_eq!(c.readv_seen(&mut [IoSliceMut::new(&mut out)]).bytes, 3);
        assert_eq!(&out[..3], b"abc");
        assert_eq!(c.readv_seen(&mut [IoSliceMut::new(&mut out)]).bytes, 0);
        assert_eq!(c.available(), 3);
        assert_eq!(c.readv_seen(&mut [IoSliceMut::new(&mut out[..2]), IoSliceMut::new(&mut [0u8; 4])]).bytes, 3);
        assert_eq!(&out[..2], b"de");
        // The refreshing reads look again.
        assert_eq!(p.write(b"gh").bytes, 2);
        assert_eq!(c.readv(&mut [IoSliceMut::new(&mut out)]).bytes, 2);
        assert_eq!(&out[..2], b"gh");
    }

    #[test]
    fn full_and_exact_fill() {
        let ring = TestRing::new(16);
        let (mut p, mut c) = ring.handles();
        let data: Vec<u8> = (0..16).collect();
        // Exact fill.
        assert_eq!(p.write(&data).bytes, 16);
        assert_eq!(p.free(), 0);
        assert_eq!(c.available(), 16);
        // Full: nothing more fits.
        assert_eq!(p.write(&[99]), Transfer::NOTHING);
        assert_eq!(p.writev(&[IoSlice::new(&[1, 2])]), Transfer::NOTHING);
        let mut out = [0u8; 32];
        assert_eq!(c.read(&mut out).bytes, 16);
        assert_eq!(&out[..16], &data[..]);
        assert_eq!(c.available(), 0);
        assert!(p.is_drained());
        // Overfill: only what fits is taken.
        assert_eq!(p.write(&[7u8; 40]).bytes, 16);
        assert_eq!(p.position(), 32);
        assert_eq!(c.read(&mut out[..10]).bytes, 10);
        assert_eq!(p.write(&[8u8; 40]).bytes, 10);
        assert_eq!(c.read(&mut out).bytes, 16);
        assert_eq!(&out[..6], &[7u8; 6]);
        assert_eq!(&out[6..16], &[8u8; 10]);
    }

    #[test]
    fn wrap_around_odd_sizes() {
        let ring = TestRing::new(8);
        let (mut p, mut c) = ring.handles();
        let mut next_in = 0u8;
        let mut next_out = 0u8;
        let mut out = [0u8; 8];
        for round in 0..200usize {
            let w = 1 + round % 7; // 1..=7, never aligned with the capacity for long
            let src: Vec<u8> = (0..w).map(|i| next_in.wrapping_add(i as u8)).collect();
            let n = p.write(&src).bytes;
            next_in = next_in.wrapping_add(n as u8);
            let r = 1 + (round * 3) % 5;
            let got = c.read(&mut out[..r]).bytes;
            for &b in &out[..got] {
                assert_eq!(b, next_out, "round {round}");
                next_out = next_out.wrapping_add(1);
            }
        }
        assert!(p.position() > 200, "the ring must have wrapped many times");
    }

    #[test]
    fn peek_does_not_consume() {
        let ring = TestRing::new(8);
        let (mut p, mut c) = ring.handles();
        assert_eq!(p.write(b"abcdef").bytes, 6);
        let mut out = [0u8; 4];
        assert_eq!(c.read(&mut out).bytes, 4); // tail now 4: the next run wraps
        assert_eq!(p.write(b"ghijk").bytes, 5);
        let mut peeked = [0u8; 16];
        assert_eq!(c.peek(&mut peeked).bytes, 7);
        assert_eq!(&peeked[..7], b"efghijk");
        assert_eq!(c.peek(&mut peeked[..3]).bytes, 3);
        assert_eq!(&peeked[..3], b"efg");
        assert_eq!(c.available(), 7);
        assert_eq!(c.skip(2).bytes, 2);
        let mut rest = [0u8; 16];
        assert_eq!(c.read(&mut rest).bytes, 5);
        assert_eq!(&rest[..5], b"ghijk");
    }

    #[test]
    fn peekv_fills_buffers_in_order_across_the_wrap() {
        let ring = TestRing::new(8);
        let (mut p, mut c) = ring.handles();
        assert_eq!(p.write(b"abcdef").bytes, 6);
        let mut out = [0u8; 5];
        assert_eq!(c.read(&mut out).bytes, 5); // tail 5: "f" then a wrapped run
        assert_eq!(p.write(b"ghij").bytes, 4);
        let (mut a, mut b, mut d) = ([0u8; 2], [0u8; 2], [0u8; 4]);
        let mut bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b), IoSliceMut::new(&mut d)];
        assert_eq!(c.peekv(&mut bufs).bytes, 5);
        assert_eq!((&a, &b, &d[..1]), (b"fg", b"hi", &b"j"[..]));
        assert_eq!(c.available(), 5, "peekv consumes nothing");
    }

    #[test]
    fn vectored() {
        let ring = TestRing::new(16);
        let (mut p, mut c) = ring.handles();
        assert_eq!(p.write(&[0u8; 10]).bytes, 10);
        assert_eq!(c.skip(10).bytes, 10);
        // Head at 10: the vectored write wraps inside the second slice.
        let t = p.writev(&[IoSlice::new(b"hello"), IoSlice::new(b""), IoSlice::new(b" world, and more")]);
        assert_eq!(t.bytes, 16);
        let (mut a, mut b, mut d) = ([0u8; 3], [0u8; 0], [0u8; 20]);
        let t = c.readv(&mut [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b), IoSliceMut::new(&mut d)]);
        assert_eq!(t.bytes, 16);
        assert_eq!(&a, b"hel");
        assert_eq!(&d[..13], b"lo world, and");
    }

    /// xorshift64*: deterministic sizes and contents.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_transfers_match_reference() {
        for &capacity in &[64usize, 256, 4096] {
            let ring = TestRing::new(capacity);
            let (mut p, mut c) = ring.handles();
            let mut reference = VecDeque::new();
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ capacity as u64);
            let mut src = vec![0u8; 3 * capacity];
            let mut dst = vec![0u8; 3 * capacity];
            let mut moved = 0usize;
            for _ in 0..5000 {
                match rng.below(5) {
                    0 | 1 => {
                        let len = rng.below(2 * capacity) + 1;
                        for b in &mut src[..len] {
                            *b = rng.next() as u8;
                        }
                        let expect = len.min(capacity - reference.len());
                        let t = if rng.below(2) == 0 {
                            p.write(&src[..len])
                        } else {
                            let cut = rng.below(len + 1);
                            let (x, y) = src[..len].split_at(cut);
                            p.writev(&[IoSlice::new(x), IoSlice::new(y)])
                        };
                        assert_eq!(t.bytes, expect);
                        reference.extend(&src[..expect]);
                    }
                    2 => {
                        let len = rng.below(2 * capacity) + 1;
                        let n = c.peek(&mut dst[..len]).bytes;
                        assert_eq!(n, len.min(reference.len()));
                        assert!(dst[..n].iter().eq(reference.iter().take(n)));
                    }
                    _ => {
                        let len = rng.below(2 * capacity) + 1;
                        let t = if rng.below(2) == 0 {
                            c.read(&mut dst[..len])
                        } else {
                            let cut = rng.below(len + 1);
                            let (x, y) = dst[..len].split_at_mut(cut);
                            c.readv(&mut [IoSliceMut::new(x), IoSliceMut::new(y)])
                        };
                        assert_eq!(t.bytes, len.min(reference.len()));
                        for &b in &dst[..t.bytes] {
                            assert_eq!(Some(b), reference.pop_front());
                        }
                        moved += t.bytes;
                    }
                }
                assert_eq!(c.available(), reference.len());
                assert_eq!(p.free(), capacity - reference.len());
            }
            assert!(moved > 10 * capacity, "capacity {capacity}: only {moved} bytes moved");
        }
    }

    #[test]
    fn stale_handles_stay_consistent() {
        // Two producer and two consumer handles on one ring, used alternately (as after fork,
        // serialized by the locks): the cached peer positions may be stale but never wrong.
        let ring = TestRing::new(16);
        let (mut p1, mut c1) = ring.handles();
        let (mut p2, mut c2) = ring.handles();
        let mut out = [0u8; 16];
        assert_eq!(p1.write(&[1; 16]).bytes, 16);
        assert_eq!(c2.read(&mut out).bytes, 16); // c1 has a stale (zero) head cached, fine
        assert_eq!(p2.write(&[2; 10]).bytes, 10); // p2 cached tail 0 is stale: must refresh
        assert_eq!(c1.read(&mut out).bytes, 10); // c1 cached head 0 < tail 16: must refresh
        assert_eq!(&out[..10], &[2; 10]);
        assert_eq!(p1.write(&[3; 20]).bytes, 16); // p1 cached tail 0 vs head 26: refresh
        assert_eq!(c2.read(&mut out).bytes, 16);
        assert_eq!(out, [3; 16]);
    }

    #[test]
    fn corrupt_positions_stay_in_bounds() {
        let ring = TestRing::new(16);
        let (mut p, mut c) = ring.handles();
        // A hostile peer claims 1000 bytes are available: treated as nothing.
        ring.ctl.producer.0.head.store(1000, Release);
        let mut out = [0u8; 64];
        assert_eq!(c.available(), 0);
        assert_eq!(c.read(&mut out).bytes, 0);
        // A tail ahead of the head: treated as a full ring.
        ring.ctl.producer.0.head.store(0, Release);
        ring.ctl.consumer.0.tail.store(5, Release);
        assert_eq!(p.free(), 0);
        assert_eq!(p.write(&[1; 4]).bytes, 0);
    }

    #[test]
    fn wake_flag_protocol() {
        let ring = TestRing::new(8);
        let (mut p, mut c) = ring.handles();
        let mut out = [0u8; 8];
        // Nobody asleep: no doorbell.
        assert_eq!(p.write(b"ab"), Transfer { bytes: 2, wake_peer: false, fault: false });
        // Data is there: the consumer must not sleep, and its announcement is withdrawn.
        assert!(!c.announce_sleep());
        assert_eq!(ring.asleep[1].load(Relaxed), 0);
        assert!(c.prepare_sleep().is_none());
        assert_eq!(c.read(&mut out), Transfer { bytes: 2, wake_peer: false, fault: false });
        // Empty: the announcement stands and the next write asks for a doorbell.
        let guard = c.prepare_sleep().expect("ring is empty");
        assert_eq!(ring.asleep[1].load(Relaxed), 1);
        assert_eq!(p.write(b"c"), Transfer { bytes: 1, wake_peer: true, fault: false });
        assert_eq!(p.write(b"d"), Transfer { bytes: 1, wake_peer: true, fault: false }); // may repeat
        assert_eq!(p.write(b""), Transfer::NOTHING); // nothing published, no doorbell
        drop(guard);
        assert_eq!(ring.asleep[1].load(Relaxed), 0);
        assert_eq!(p.write(b"e"), Transfer { bytes: 1, wake_peer: false, fault: false });
        // Producer side: fill, announce, the consumer's read asks for a doorbell.
        assert_eq!(p.write(&[0; 8]).bytes, 5);
        assert!(p.announce_sleep());
        assert_eq!(ring.asleep[0].load(Relaxed), 1);
        assert_eq!(c.read(&mut out[..1]), Transfer { bytes: 1, wake_peer: true, fault: false });
        p.withdraw_sleep();
        assert_eq!(c.read(&mut out[..1]), Transfer { bytes: 1, wake_peer: false, fault: false });
        // With space, the producer does not sleep.
        assert!(!p.announce_sleep());
        assert_eq!(ring.asleep[0].load(Relaxed), 0);
    }

    #[test]
    fn grows_at_a_block_end_without_moving_unread_bytes() {
        let ring = TestRing::growing(64, 8);
        let (mut p, mut c) = ring.handles();
        let mut out = [0u8; 64];
        // Transfers that leave the ring at most half full never grow it.
        for round in 0..10u8 {
            assert_eq!(p.write(&[round; 3]).bytes, 3);
            assert_eq!(c.read(&mut out).bytes, 3);
            assert_eq!(&out[..3], &[round; 3]);
        }
        assert_eq!(p.capacity(), 8);
        let data: Vec<u8> = (100..140).collect();
        // Head 30 (index 6): a write that would fill the ring goes up to the block end only.
        assert_eq!(p.write(&data).bytes, 2);
        assert_eq!(p.capacity(), 8);
        // The reader takes one (its cached head 32 and geometry stay those of capacity 8).
        assert_eq!(c.read(&mut out[..1]).bytes, 1);
        // At the block end, with one byte unread at index 7: doubled, that byte keeps its
        // index, and the new bytes go around it.
        // index, and the new bytes go up to the new block end (index 16).
        assert_eq!(p.write(&data[2..]).bytes, 8);
        assert_eq!(p.capacity(), 16);
        assert_eq!(c.read(&mut out[..1]).bytes, 1, "below the cached head: the old geometry");
        assert_eq!(c.capacity(), 8);
        assert_eq!(out[0], data[1]);
        assert_eq!(c.read(&mut out[..5]).bytes, 5);
        assert_eq!(c.capacity(), 16);
        assert_eq!(&out[..5], &data[2..7]);
        // At the block end again, the reader idle with 3 bytes unread: doubled to 32.
        assert_eq!(p.write(&data[10..]).bytes, 16);
        assert_eq!(p.capacity(), 32);
        assert_eq!(c.read(&mut out).bytes, 19);
        assert_eq!(&out[..19], &data[7..26]);
        // Up to the maximum, and no further; an empty ring then takes all of it.
        let mut sent = 0;
        while p.capacity() < 64 {
            let t = p.write(&[5; 40]);
            sent += t.bytes;
            sent -= c.read(&mut out[..t.bytes.min(8)]).bytes;
            assert!(sent < 64 && t.bytes > 0);
        }
        while c.read(&mut out).bytes > 0 {}
        assert_eq!(p.write(&[0; 200]).bytes, 64);
        assert_eq!(p.capacity(), 64);
    }

    #[test]
    fn an_idle_reader_does_not_stop_the_growth() {
        // A writer that fills the ring while its reader reads nothing (a non-blocking writer
        // until EAGAIN) gets the whole maximum, wherever the reader stopped.
        let ring = TestRing::growing(1 << 16, 1 << 10);
        let (mut p, mut c) = ring.handles();
        let mut out = [0u8; 700];
        assert_eq!(p.write(&[1; 700]).bytes, 700);
        assert_eq!(c.read(&mut out).bytes, 700);
        let mut filled = 0;
        loop {
            // `free` is what the next write takes (the ancillary path relies on it).
            let room = p.free();
            let t = p.write(&[2; 4096]);
            assert_eq!(t.bytes, room.min(4096));
            if t.bytes == 0 {
                break;
            }
            filled += t.bytes;
        }
        assert_eq!(p.capacity(), 1 << 16);
        assert!(filled >= (1 << 16) - (1 << 10), "{filled}");
        let mut all = vec![0u8; 1 << 16];
        let n = c.read(&mut all).bytes;
        assert!(n >= filled && all[..n].iter().all(|&b| b == 2), "{n}");
    }

    #[test]
    fn whole_ring_transfers_in_lockstep_still_grow() {
        // A writer and a reader that move exactly a ring's worth at a time find the ring
        // either empty or full: the writer grows it when it finds it full.
        let ring = TestRing::growing(1 << 20, 32 << 10);
        let (mut p, mut c) = ring.handles();
        let buf = vec![9u8; 64 << 10];
        let mut out = vec![0u8; 64 << 10];
        let mut moved = 0usize;
        while p.capacity() < 1 << 20 {
            let mut done = 0;
            while done < buf.len() {
                let t = p.write(&buf[done..]);
                done += t.bytes;
                if t.bytes == 0 {
                    // The reader takes everything there is, only when the writer is stuck.
                    moved += c.read(&mut out).bytes;
                }
            }
            assert!(moved < 8 << 20, "still {} after {moved} bytes", p.capacity());
        }
    }

    #[test]
    fn a_lying_geometry_stays_inside_the_ring() {
        let ring = TestRing::growing(64, 8);
        let (mut p, mut c) = ring.handles();
        let mut out = [0u8; 256];
        for word in [0, 3, 128, 1 << 40 | 8, u64::MAX, 64 | (1 << 63), 0xffff_ffff_0000_0020] {
            ring.ctl.producer.0.geometry.store(word, Relaxed);
            let geo = p.geometry();
            assert!(geo.capacity.is_power_of_two() && geo.capacity <= 64 && geo.offset < geo.capacity as u64, "{word:#x}: {geo:?}");
            let t = p.write(&[7; 200]);
            assert!(t.bytes <= 64);
            assert!(c.read(&mut out).bytes <= 64);
        }
    }

    #[test]
    fn growth_under_a_concurrent_reader_keeps_every_byte() {
        // Two threads, byte-checked: odd write and read sizes so that growths happen at every
        // step with bytes unread and the consumer on an old geometry.
        for (max, initial) in [(1 << 16, 64), (1 << 12, 1 << 12), (1 << 14, 1 << 7)] {
            let ring = TestRing::growing(max, initial);
            let (mut p, mut c) = ring.handles();
            const TOTAL: u64 = 8 << 20;
            let byte = |pos: u64| (pos.wrapping_mul(0x9e37_79b9) >> 7) as u8;
            let writer = std::thread::spawn(move || {
                let mut pos = 0u64;
                let mut buf = vec![0u8; 3001];
                let mut round = 0usize;
                let mut caps = vec![p.capacity()];
                while pos < TOTAL {
                    let len = [1, 17, 3001, 250, 4096 % 3001][round % 5].min((TOTAL - pos) as usize);
                    round += 1;
                    for (i, b) in buf[..len].iter_mut().enumerate() {
                        *b = byte(pos + i as u64);
                    }
                    let t = p.write(&buf[..len]);
                    pos += t.bytes as u64;
                    if t.bytes == 0 {
                        std::thread::yield_now();
                    }
                    if caps.last() != Some(&p.capacity()) {
                        caps.push(p.capacity());
                    }
                }
                caps
            });
            let mut pos = 0u64;
            let mut buf = vec![0u8; 2000];
            let mut round = 0usize;
            while pos < TOTAL {
                let len = [2000, 1, 333, 64][round % 4];
                round += 1;
                // Read only once the ring is half full: growths then find bytes unread.
                if (c.available() as u64) < (c.capacity() as u64 / 2).min(TOTAL - pos) {
                    std::thread::yield_now();
                    continue;
                }
                let t = c.read(&mut buf[..len]);
                for (i, &b) in buf[..t.bytes].iter().enumerate() {
                    assert_eq!(b, byte(pos + i as u64), "position {}", pos + i as u64);
                }
                pos += t.bytes as u64;
                if t.bytes == 0 {
                    std::thread::yield_now();
                }
            }
            let caps = writer.join().unwrap();
            let expect: Vec<usize> = std::iter::successors(Some(initial), |&c| (c < max).then_some(c * 2)).collect();
            assert_eq!(caps, expect, "max {max}, initial {initial}");
        }
    }

    #[test]
    fn lock_protocol() {
        let word = AtomicU32::new(0);
        // SAFETY: `word` outlives `lock`.
        let lock = unsafe { RingLock::new(&word) };
        let guard = lock.try_lock(7).expect("free");
        assert_eq!(lock.holder(), 7);
        assert!(lock.try_lock(8).is_none());
        // A failed attempt leaves the holder alone.
        assert_eq!(lock.holder(), 7);
        assert!(lock.try_lock(9).is_none());
        drop(guard);
        assert_eq!(lock.holder(), 0);
        let guard = lock.try_lock(8).expect("free again");
        core::mem::forget(guard); // holder 8 "dies"
        assert!(!lock.break_lock(9));
        assert!(lock.break_lock(8));
        assert!(lock.try_lock(9).is_some());
        // A value nobody holds (a lying peer's): taken over only if it is still there.
        word.store(0xdead, Relaxed);
        assert!(lock.take_over(0xbeef, 9).is_none());
        let guard = lock.take_over(0xdead, 9).expect("still 0xdead");
        assert_eq!(lock.holder(), 9);
        drop(guard);
        assert_eq!(lock.holder(), 0);
        word.store(0x1234, Relaxed);
        let (was, guard) = lock.seize(9);
        assert_eq!((was, lock.holder()), (0x1234, 9));
        drop(guard);
        assert_eq!(lock.holder(), 0);
    }
}
