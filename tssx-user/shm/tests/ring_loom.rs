//! Loom model of the ring: every interleaving (up to a preemption bound) of one producer and
//! one consumer on a 4-byte ring, with the real `Producer`/`Consumer` code compiled against
//! loom's atomics, fences and tracked data cells (see the `tssx_shm::ring` documentation).
//!
//! Run with:
//! `RUSTFLAGS="--cfg tssx_loom" cargo test --release -p tssx-shm --test ring_loom`
//!
//! * `order_and_no_loss`: bytes arrive complete and in order, and no data byte is read while
//!   written (loom reports a causality violation if an ordering is too weak to publish them).
//! * `no_lost_wakeup`: both sides sleep on a doorbell (a counting semaphore standing in for the
//!   byte on the real socket) following the announce/re-check protocol; a lost wake-up leaves
//!   both threads blocked, which loom reports as a deadlock.
//! * `poll_waiter_on_two_rings`: one waiter on two connections at once, as `poll`/`epoll` wait:
//!   it announces on both, settles once ([`tssx_shm::wait`]), re-checks both, and sleeps on one
//!   doorbell for both; two producers each publish a byte and ring if they see the
//!   announcement. A lost wake-up is a deadlock.
//! * `locked_consumers_share_a_ring`: two consumer handles of one ring (two threads of one end,
//!   or parent and child after `fork`) serialized by the ring's [`RingLock`] read every byte
//!   exactly once, at its position, although each caches a stale producer position.
//! * `grows_in_order`: a ring that starts at 2 of its 4 bytes and grows while the consumer
//!   reads, in some interleavings with bytes unread and a reader on the old geometry: every
//!   byte arrives in order, and no byte is read while written (a growth published too late or
//!   a geometry that moved an unread byte shows as a wrong byte or a causality violation).
#![cfg(tssx_loom)]

use loom::sync::atomic::{AtomicU32, AtomicU64};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use tssx_common::segment::RingGeometry;
use tssx_shm::ring::sync::DataCell;
use tssx_shm::ring::{Consumer, Producer, RingLock, RingRaw};

const CAPACITY: usize = 4;
/// More than the capacity, so that the ring fills, wraps and the producer has to wait.
const MESSAGE: [u8; 6] = [1, 2, 3, 4, 5, 6];

/// In-memory control block and data of one ring, made of loom's types.
struct Ring {
    head: AtomicU64,
    tail: AtomicU64,
    /// `[producer end, consumer end]`.
    asleep: [AtomicU32; 2],
    geometry: AtomicU64,
    data: Vec<DataCell>,
}

impl Ring {
    fn new() -> Arc<Ring> {
        Self::growing(CAPACITY)
    }

    /// A ring of `CAPACITY` bytes that starts using `initial` of them.
    fn growing(initial: usize) -> Arc<Ring> {
        Arc::new(Ring {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            asleep: [AtomicU32::new(0), AtomicU32::new(0)],
            geometry: AtomicU64::new(RingGeometry::new(initial).encode()),
            data: (0..CAPACITY).map(|_| DataCell::new(0)).collect(),
        })
    }

    fn raw(&self) -> RingRaw {
        RingRaw {
            head: &self.head,
            tail: &self.tail,
            producer_asleep: &self.asleep[0],
            consumer_asleep: &self.asleep[1],
            geometry: &self.geometry,
            data: self.data.as_ptr(),
            capacity: CAPACITY,
        }
    }

    /// One producer and one consumer. Each is used by one thread, which also holds an `Arc`
    /// of the ring for as long as it uses the handle.
    fn handles(&self) -> (Producer, Consumer) {
        // SAFETY: the pointers are valid while the ring lives (each thread keeps an `Arc`
        // alongside its handle); exactly one producer and one consumer.
        unsafe { (Producer::new(self.raw()), Consumer::new(self.raw())) }
    }
}

/// The doorbell: a count of bytes written to the real socket and not yet drained.
#[derive(Default)]
struct Bell {
    count: Mutex<u32>,
    rung: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.count.lock().unwrap() += 1;
        self.rung.notify_all();
    }

    /// Blocks until at least one doorbell is there, then drains all of them.
    fn wait(&self) {
        let mut count = self.count.lock().unwrap();
        while *count == 0 {
            count = self.rung.wait(count).unwrap();
        }
        *count = 0;
    }
}

/// Explores every interleaving (no preemption bound: these models are small enough, seconds in
/// a release build); set `LOOM_MAX_PREEMPTIONS` to bound it.
fn model(f: impl Fn() + Sync + Send + 'static) {
    loom::model::Builder::new().check(f);
}

/// As [`model`], bounded to `bound` forced preemptions unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise: for a model whose every interleaving takes minutes.
fn model_bounded(bound: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = builder.preemption_bound.or(Some(bound));
    builder.check(f);
}

#[test]
fn order_and_no_loss() {
    model(|| {
        let ring = Ring::new();
        let (mut producer, mut consumer) = ring.handles();
        let ring2 = ring.clone();
        let writer = thread::spawn(move || {
            let _ring = ring2;
            let mut sent = 0;
            while sent < MESSAGE.len() {
                // Odd sizes so that runs wrap around the end of the ring.
                let end = (sent + 3).min(MESSAGE.len());
                let t = producer.write(&MESSAGE[sent..end]);
                sent += t.bytes;
                if t.bytes == 0 {
                    thread::yield_now();
                }
            }
        });
        let got = read_polling::<3>(&mut consumer);
        writer.join().unwrap();
        assert_eq!(got, MESSAGE);
        assert_eq!(consumer.available(), 0);
    });
}

#[test]
fn grows_in_order() {
    // Chunks of 1, 2 and 3 bytes into a ring that starts at 2 of its 4 bytes. Interleavings
    // differ in when the ring grows and how many bytes are unread then (and whether the reader
    // still holds the old geometry). A geometry that moved an unread byte, or a growth
    // published too late, shows as a wrong byte (or a causality violation).
    //
    // Bounded to 6 preemptions: 6 s in a release build, where every interleaving took 235 s
    // (4 minutes of CI). Both mutations tried against the bound fail at once: a geometry
    // unrolled from the producer's position instead of the consumer's (bytes unread at the
    // growth move), and a `Relaxed` store of `head` (a causality violation).
    static GREW_WITH_UNREAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    model_bounded(6, || {
        let ring = Ring::growing(2);
        let (mut producer, mut consumer) = ring.handles();
        let ring2 = ring.clone();
        let writer = thread::spawn(move || {
            let ring = ring2;
            for chunk in [&MESSAGE[..1], &MESSAGE[1..3], &MESSAGE[3..]] {
                let mut sent = 0;
                while sent < chunk.len() {
                    let before = producer.capacity();
                    let t = producer.write(&chunk[sent..]);
                    // (std atomic: outside the model, a record across executions)
                    if producer.capacity() > before
                        && ring.tail.load(std::sync::atomic::Ordering::Relaxed) < producer.position() - t.bytes as u64
                    {
                        GREW_WITH_UNREAD.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    sent += t.bytes;
                    if t.bytes == 0 {
                        thread::yield_now();
                    }
                }
            }
        });
        let got = read_polling::<2>(&mut consumer);
        writer.join().unwrap();
        assert_eq!(got, MESSAGE);
    });
    assert!(GREW_WITH_UNREAD.load(std::sync::atomic::Ordering::Relaxed), "no interleaving grew the ring with bytes unread");
}

#[test]
fn no_lost_wakeup() {
    model(|| {
        let ring = Ring::new();
        let (mut producer, mut consumer) = ring.handles();
        // bells[0] wakes the producer's end, bells[1] the consumer's end.
        let bells = Arc::new([Bell::default(), Bell::default()]);
        let (ring2, bells2) = (ring.clone(), bells.clone());
        let writer = thread::spawn(move || {
            let _ring = ring2;
            let mut sent = 0;
            while sent < MESSAGE.len() {
                let t = producer.write(&MESSAGE[sent..]);
                sent += t.bytes;
                if t.wake_peer {
                    bells2[1].ring();
                }
                if t.bytes == 0 {
                    // Full: sleep until the consumer frees space.
                    if let Some(_asleep) = producer.prepare_sleep() {
                        bells2[0].wait();
                    }
                }
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 4];
        while got.len() < MESSAGE.len() {
            let t = consumer.read(&mut buf);
            got.extend_from_slice(&buf[..t.bytes]);
            if t.wake_peer {
                bells[0].ring();
            }
            if t.bytes == 0 {
                // Empty: sleep until the producer writes.
                if let Some(_asleep) = consumer.prepare_sleep() {
                    bells[1].wait();
                }
            }
        }
        writer.join().unwrap();
        assert_eq!(got, MESSAGE);
    });
}

#[test]
fn poll_waiter_on_two_rings() {
    // Three threads: bounded to two preemptions (every interleaving with at most two forced
    // switches, the usual loom bound) to stay within seconds; it still finds a missing fence.
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let rings = [Ring::new(), Ring::new()];
        let (producer_a, mut consumer_a) = rings[0].handles();
        let (producer_b, mut consumer_b) = rings[1].handles();
        // One doorbell for the waiter: it sleeps on both connections' sockets in one call.
        let bell = Arc::new(Bell::default());
        let writers: Vec<_> = [(producer_a, rings[0].clone(), 7u8), (producer_b, rings[1].clone(), 9u8)]
            .into_iter()
            .map(|(mut producer, ring, byte)| {
                let bell = bell.clone();
                thread::spawn(move || {
                    let _ring = ring;
                    let t = producer.write(&[byte]);
                    assert_eq!(t.bytes, 1);
                    if t.wake_peer {
                        bell.ring();
                    }
                })
            })
            .collect();
        let mut got = Vec::new();
        let mut buf = [0u8; 1];
        while got.len() < 2 {
            for consumer in [&mut consumer_a, &mut consumer_b] {
                if consumer.read(&mut buf).bytes == 1 {
                    got.push(buf[0]);
                }
            }
            if got.len() == 2 {
                break;
            }
            // Nothing (more) to read: announce on both, settle once, re-check both.
            let counters = [&rings[0].asleep[1], &rings[1].asleep[1]];
            for c in counters {
                tssx_shm::wait::announce(c);
            }
            tssx_shm::wait::settle();
            if consumer_a.available() == 0 && consumer_b.available() == 0 {
                bell.wait();
            }
            for c in counters {
                tssx_shm::wait::withdraw(c);
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        got.sort();
        assert_eq!(got, [7, 9]);
    });
}

#[test]
fn locked_consumers_share_a_ring() {
    const N: usize = 3;
    model(|| {
        let ring = Ring::new();
        let lock_word = Arc::new(AtomicU32::new(0));
        let (mut producer, mut first) = ring.handles();
        // SAFETY: as `handles`; the consumers are serialized by the lock below.
        let second = unsafe { Consumer::new(ring.raw()) };
        // The bytes are there before the readers start: the model is about the readers.
        assert_eq!(producer.write(&MESSAGE[..N]).bytes, N);
        let reader = {
            let (ring, lock_word) = (ring.clone(), lock_word.clone());
            thread::spawn(move || {
                let _ring = &ring;
                let mut consumer = second;
                // SAFETY: the word outlives the lock (this thread holds an Arc).
                let lock = unsafe { RingLock::new(&*lock_word) };
                read_under_lock(&lock, 2, &mut consumer)
            })
        };
        // SAFETY: as above.
        let lock = unsafe { RingLock::new(&*lock_word) };
        let mut all = read_under_lock(&lock, 1, &mut first);
        all.extend(reader.join().unwrap());
        // Whatever the two left, read by either handle afterwards.
        let held = lock.try_lock(1).expect("nobody else holds the lock any more");
        loop {
            let pos = first.position();
            let mut byte = [0u8; 1];
            if first.read(&mut byte).bytes == 0 {
                break;
            }
            all.push((pos, byte[0]));
        }
        drop(held);
        all.sort();
        let expect: Vec<(u64, u8)> = (0..N).map(|p| (p as u64, MESSAGE[p])).collect();
        assert_eq!(all, expect, "every byte read exactly once, at its position");
    });
}

/// Reads `MESSAGE.len()` bytes in reads of at most `N` bytes, yielding while the ring is empty.
fn read_polling<const N: usize>(consumer: &mut Consumer) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; N];
    while got.len() < MESSAGE.len() {
        let t = consumer.read(&mut buf);
        got.extend_from_slice(&buf[..t.bytes]);
        if t.bytes == 0 {
            thread::yield_now();
        }
    }
    got
}

/// Up to two attempts to take the lock; under it, reads one byte and notes its position.
/// (Bounded, not a spin loop, so that loom can explore every interleaving.)
fn read_under_lock(lock: &RingLock, id: u32, consumer: &mut Consumer) -> Vec<(u64, u8)> {
    let mut seen = Vec::new();
    for _ in 0..2 {
        if let Some(_held) = lock.try_lock(id) {
            let pos = consumer.position();
            let mut byte = [0u8; 1];
            if consumer.read(&mut byte).bytes == 1 {
                seen.push((pos, byte[0]));
            }
        }
        thread::yield_now();
    }
    seen
}
