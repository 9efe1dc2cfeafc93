//! The kernel events ring buffer, read by both the event loop and the claim workers.
//!
//! A hook claims its socket after `connect()`/`accept()` returned, and the eBPF program
//! submitted the event in that syscall's exit tracepoint: by the time the claim reaches the
//! agent, its event is in the ring buffer if the event loop has not read it yet. A claim worker
//! drains the ring itself before it looks for its event ([`EventFeed::drain`]), rather than wait
//! for the event loop (which per-connection events do not wake): connect and accept events are
//! recorded in the claims' registry at once, in the kernel's order (so an older event of the
//! same fd is replaced before the lookup), and every drained event is forwarded to the event
//! loop, which traces it and acts on it (fork/exit) as if it had read it itself.
//!
//! Order: the ring is drained under one lock, and the forwarded events are queued before that
//! lock is released; the event loop takes the queued events before the ring's under the same
//! lock ([`EventFeed::take`]), so it sees every event exactly once and in the kernel's order.
//! Whoever reads an event out of the ring records it before the lock is released (the event
//! loop too), so a claim that drains the ring and then looks in the registry finds every event
//! submitted before its claim: none is in between, read and not yet recorded.
//!
//! Wake-ups: queuing wakes nobody, and neither do per-connection events (connect, accept, fork,
//! exit): the eBPF program submits them without a notification while the ring is less than a
//! quarter full, so that a short connection costs the agent no wake-up. The event loop takes
//! the queue and the ring on its 100 ms tick, and when the ring notifies it (bind and listen
//! events, or a ring filling up); a claim never waits for the loop, since its worker drains the
//! ring itself.

use std::sync::{Mutex, MutexGuard};

use aya::maps::{MapData, RingBuf};
use tssx_common::event::Event;

/// The shared events ring buffer and the queue of events drained by claim workers.
pub struct EventFeed {
    ring: Mutex<Ring>,
}

/// What the feed's lock guards.
struct Ring {
    ring: RingBuf<MapData>,
    /// Drained by claim workers (recorded already), for the event loop.
    forwarded: Vec<Event>,
}

/// Events the event loop takes, all recorded already: those a claim worker drained, then those
/// read from the ring now; in the kernel's order, to be traced and acted on.
#[derive(Debug, Default)]
pub struct Taken {
    /// Drained and recorded by claim workers.
    pub recorded: Vec<Event>,
    /// Read from the ring now (and recorded by [`EventFeed::take`]).
    pub fresh: Vec<Event>,
}

impl EventFeed {
    /// Wraps the events ring buffer.
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring: Mutex::new(Ring { ring, forwarded: Vec::new() }) }
    }

    /// The ring buffer's fd, to poll for readiness (it stays open as long as `self`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.lock().ring)
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// For a claim worker: reads every event in the ring, passes each to `record` (which keeps
    /// the connect/accept ones for claims) and forwards all of them to the event loop.
    pub fn drain(&self, mut record: impl FnMut(&Event)) {
        let mut ring = self.lock();
        let batch = read_all(&mut ring.ring);
        for event in &batch {
            record(event);
        }
        // Queued under the ring lock (see the module doc).
        ring.forwarded.extend(batch);
    }

    /// For the event loop: the events claim workers forwarded, then the ring's, each of the
    /// latter passed to `record` under the ring lock (see the module doc).
    pub fn take(&self, mut record: impl FnMut(&Event)) -> Taken {
        let mut ring = self.lock();
        let recorded = std::mem::take(&mut ring.forwarded);
        let fresh = read_all(&mut ring.ring);
        for event in &fresh {
            record(event);
        }
        Taken { recorded, fresh }
    }
}

/// Every complete event now in `ring` (short records are traced and skipped).
fn read_all(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut batch = Vec::new();
    while let Some(item) = ring.next() {
        match Event::from_bytes(&item) {
            Some(event) => batch.push(event),
            None => tracing::warn!(len = item.len(), "short event record ignored"),
        }
    }
    batch
}
