//! A plain connection's byte counts, shared with the processes forked while it is plain.
//!
//! A connection migrates at the byte counts of its socket part: the writer publishes how many
//! bytes it wrote to the socket, the reader consumes that many before it reads the ring, and
//! takes every socket byte after them for a doorbell (see [`crate::migrate`]). So while a
//! connection is plain, the counts an end publishes must include every byte any holder of that
//! end moved through the socket. One process counts its own raw calls; a second holder needs
//! the same counts:
//!
//! * **A forked child** (same image, same hook): at the fork, every plain connection gets a
//!   slot in one shared anonymous mapping made for that fork ([`ForkSlots::share`]), which
//!   parent and child (and their own children later) add to from then on. A process's total
//!   is its own count (what it moved before the fork)
//!   plus the slot's.
//! * **Another image** (a spawned process, `popen`, `system`, or an `exec` after a fork: its
//!   hook starts afresh and does not count on a socket it did not connect or accept): nothing
//!   can count for it. The counts are **spoiled** ([`Counts::spoil`], in the slot when there is
//!   one, so every holder sees it): the connection stays plain for good in each holder (a
//!   claim is not sent, a migration is given up before it commits).
//!
//! Found by the conformance scenario `children popen`: a `popen` child read 500 bytes of the
//! inherited socket, which its parent never counted; the parent migrated later, took the
//! peer's doorbell for the last of "its" bytes, and gave the application a stray zero byte.
//!
//! A socket forked before its connect: the process that did not connect it has no record of
//! the connection at all, so a connection made on it is spoiled at once in the process that
//! connects (`table::forked_unconnected`).
//!
//! A fork that races a raw call of another thread on a plain connection (the call loaded its
//! count's place before the slot existed) cannot tell where that call's bytes will be counted:
//! such a connection is spoiled at the fork. [`ForkSlots::share`] stores each slot's address
//! and then loads the connection's raw-call count, a raw call adds itself to that count and
//! then loads the address (all four `SeqCst`): either the fork sees the call, or the call
//! counts in the slot.
//!
//! The agent still answers a forked end's claim "retry" while a relative holds the socket
//! (`CLAIM_FORKED`): shared counts make the bytes exact, not the timing of other holders'
//! calls against this end's switch.

use std::sync::{
    atomic::{
        AtomicPtr, AtomicU64,
        Ordering::{Relaxed, SeqCst},
    },
    Arc, OnceLock,
};

/// One end's counts: bytes written to and consumed from the socket, and whether an image that
/// cannot count took the socket.
#[repr(C, align(32))]
#[derive(Default, Debug)]
pub struct Tally {
    sent: AtomicU64,
    received: AtomicU64,
    spoiled: AtomicU64,
}

/// A shared anonymous mapping of [`Tally`] slots, made before one fork; unmapped in each
/// process when the last connection using it goes.
#[derive(Debug)]
struct Region {
    base: *mut Tally,
    len: usize,
}

// SAFETY: the mapping is plain shared memory of atomics, valid until `drop`; nothing in it is
// tied to a thread.
unsafe impl Send for Region {}
// SAFETY: as above: every access goes through the atomics of a `Tally`.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the last `Arc` (every connection using it is gone).
        let _ = unsafe { tssx_shm::sys::munmap(self.base.cast(), self.len) };
    }
}

/// The counts of one connection end (see the module documentation).
#[derive(Debug, Default)]
pub struct Counts {
    /// What this process counted before the connection had a slot.
    own: Tally,
    /// The slot (null: none yet). `SeqCst`: see the module documentation.
    slot: AtomicPtr<Tally>,
    /// Keeps the slot's mapping alive.
    region: OnceLock<Arc<Region>>,
}

impl Counts {
    /// Where bytes moved from now on are counted. `SeqCst`: see the module documentation.
    #[inline]
    fn live(&self) -> &Tally {
        let slot = self.slot.load(SeqCst);
        if slot.is_null() {
            &self.own
        } else {
            // SAFETY: a slot of `self.region`'s mapping, which lives as long as `self`.
            unsafe { &*slot }
        }
    }

    /// The slot, if any.
    fn slot(&self) -> Option<&Tally> {
        let slot = self.slot.load(SeqCst);
        // SAFETY: as in `live`.
        (!slot.is_null()).then(|| unsafe { &*slot })
    }

    /// Counts `n` bytes written (`sending`) or consumed by a raw call. Relaxed: read by the
    /// quiescer after its `SeqCst` compare-and-swap on the raw-call count, which the call's
    /// `SeqCst` exit from it orders after this (in another process: see the module
    /// documentation, the agent's sole-holder check).
    #[inline]
    pub fn add(&self, n: u64, sending: bool) {
        let tally = self.live();
        if sending {
            tally.sent.fetch_add(n, Relaxed);
        } else {
            tally.received.fetch_add(n, Relaxed);
        }
    }

    /// Bytes written to the socket by this end (every holder that counts).
    #[inline]
    pub fn sent(&self) -> u64 {
        // Relaxed: see `add`.
        self.own.sent.load(Relaxed).wrapping_add(self.slot().map_or(0, |s| s.sent.load(Relaxed)))
    }

    /// Bytes consumed from the socket by this end (every holder that counts).
    #[inline]
    pub fn received(&self) -> u64 {
        // Relaxed: see `add`.
        self.own.received.load(Relaxed).wrapping_add(self.slot().map_or(0, |s| s.received.load(Relaxed)))
    }

    /// An image that cannot count holds the socket now: the counts are wrong for good, in
    /// every holder. SeqCst: before the image exists, so a holder that commits a migration
    /// later (after the agent saw the image let go of the socket) sees it.
    pub fn spoil(&self) {
        self.own.spoiled.store(1, SeqCst);
        if let Some(slot) = self.slot() {
            slot.spoiled.store(1, SeqCst);
        }
    }

    /// Whether [`Counts::spoil`] was called by any holder. SeqCst: see `spoil`.
    pub fn spoiled(&self) -> bool {
        self.own.spoiled.load(SeqCst) != 0 || self.slot().is_some_and(|s| s.spoiled.load(SeqCst) != 0)
    }

    /// Whether the counts are shared with other processes already.
    pub fn is_shared(&self) -> bool {
        !self.slot.load(SeqCst).is_null()
    }
}

/// The slots made before one fork (see the module documentation): [`ForkSlots::new`] with
/// the number of connections that need one, then [`ForkSlots::share`] for each.
pub struct ForkSlots {
    region: Option<Arc<Region>>,
    slots: usize,
    next: usize,
}

impl ForkSlots {
    /// One shared mapping with `slots` slots (none if `slots` is 0; if it cannot be made,
    /// [`ForkSlots::share`] spoils instead).
    pub fn new(slots: usize) -> ForkSlots {
        let len = (slots * std::mem::size_of::<Tally>()).next_multiple_of(4096);
        // An anonymous shared mapping is zeroed: every slot starts at 0.
        let region = (slots > 0)
            .then(|| tssx_shm::sys::mmap_shared_anon(len).ok())
            .flatten()
            .map(|base| Arc::new(Region { base: base.cast(), len }));
        ForkSlots { region, slots, next: 0 }
    }

    /// Gives `counts` the next slot, unless they are shared already. Spoils them instead if no
    /// slot is left, or if `raw_in_flight` (the connection's raw-call count, loaded `SeqCst`
    /// after the slot's address is stored) says another thread is inside a raw call on it.
    pub fn share(&mut self, counts: &Counts, raw_in_flight: impl FnOnce() -> bool) {
        if counts.is_shared() {
            return;
        }
        let Some(region) = self.region.as_ref().filter(|_| self.next < self.slots) else {
            counts.spoil();
            return;
        };
        // SAFETY: slot `next` of `slots`, inside the mapping (its length covers them all).
        let slot = unsafe { region.base.add(self.next) };
        self.next += 1;
        let _ = counts.region.set(Arc::clone(region));
        // SeqCst: the slot's address before the raw-call count (see the module documentation).
        counts.slot.store(slot, SeqCst);
        if raw_in_flight() {
            counts.spoil();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks; the child runs `f` (atomics only: the test binary has other threads) and exits.
    fn in_child(f: impl FnOnce()) {
        // SAFETY: the child touches atomics of shared memory only, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            f();
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: our child, a live status word.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(status, 0);
    }

    #[test]
    fn a_forked_childs_bytes_count_for_the_parent() {
        let counts = Counts::default();
        counts.add(100, false);
        counts.add(3, true);
        let mut slots = ForkSlots::new(1);
        slots.share(&counts, || false);
        assert!(counts.is_shared() && !counts.spoiled());
        counts.add(1, false);
        in_child(|| {
            counts.add(50, false);
            counts.add(20, true);
        });
        assert_eq!((counts.received(), counts.sent()), (151, 23));
        // Without a slot, the child's bytes are its own: what `share` prevents.
        let alone = Counts::default();
        in_child(|| alone.add(50, false));
        assert_eq!(alone.received(), 0);
    }

    #[test]
    fn an_image_that_cannot_count_spoils_every_holder() {
        let counts = Counts::default();
        ForkSlots::new(1).share(&counts, || false);
        in_child(|| counts.spoil());
        assert!(counts.spoiled());
        // Spoiled in this process only when there is no slot.
        let alone = Counts::default();
        in_child(|| alone.spoil());
        assert!(!alone.spoiled());
        alone.spoil();
        assert!(alone.spoiled());
    }

    #[test]
    fn a_raw_call_in_flight_or_no_slot_left_spoils() {
        let (busy, extra, fine) = (Counts::default(), Counts::default(), Counts::default());
        let mut slots = ForkSlots::new(2);
        slots.share(&busy, || true);
        slots.share(&fine, || false);
        slots.share(&extra, || false);
        assert!(busy.spoiled() && extra.spoiled() && !fine.spoiled());
        // Shared already: a later fork keeps the slot.
        let before = fine.slot.load(SeqCst);
        ForkSlots::new(1).share(&fine, || true);
        assert_eq!(fine.slot.load(SeqCst), before);
        assert!(!fine.spoiled());
    }
}
