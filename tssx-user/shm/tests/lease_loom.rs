//! Loom model of the lease protocol ([`tssx_shm::lease`]): the real `Pool` code compiled
//! against loom's atomics and tracked value cells (`--cfg tssx_loom`).
//!
//! Run with:
//! `RUSTFLAGS="--cfg tssx_loom" cargo test --release -p tssx-shm --test lease_loom`
//!
//! * `a_lease_never_sees_its_value_dropped_or_refilled`: a reader leases what a slot points at
//!   and reads it, while a closer unlinks the value, gives the owner's reference up and
//!   allocates a new value (which reuses the cell once the old one is dropped) into the same
//!   slot. Loom reports a causality violation if the reader's read can race the drop or the
//!   refill of the cell; the reader must see the old value or the new one, never another.
//! * `two_readers_and_a_close`: two readers lease concurrently while the owner's reference
//!   goes; the value is dropped exactly once, after both.
#![cfg(tssx_loom)]

use std::ptr::null_mut;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};

use loom::sync::atomic::{AtomicPtr, AtomicUsize};
use loom::sync::Arc;
use loom::thread;

use tssx_shm::lease::{Cell, Pool};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

struct Shared<T> {
    pool: Pool<T>,
    slot: AtomicPtr<Cell<T>>,
}

/// The value: its drop is counted.
struct Value {
    n: u32,
    drops: Arc<AtomicUsize>,
}

impl Drop for Value {
    fn drop(&mut self) {
        self.drops.fetch_add(1, AcqRel);
    }
}

#[test]
fn a_lease_never_sees_its_value_dropped_or_refilled() {
    model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared { pool: Pool::new(), slot: AtomicPtr::new(null_mut()) });
        let first = shared.pool.alloc(Value { n: 1, drops: drops.clone() });
        shared.slot.store(first, Release);

        let reader = {
            let shared = shared.clone();
            thread::spawn(move || shared.pool.acquire(&shared.slot).map(|lease| lease.with(|v| v.n)))
        };
        let closer = {
            let shared = shared.clone();
            let drops = drops.clone();
            thread::spawn(move || {
                let old = shared.slot.swap(null_mut(), AcqRel);
                // SAFETY: the owner's reference on the unlinked cell, given up.
                unsafe { shared.pool.release(old) };
                let new = shared.pool.alloc(Value { n: 2, drops });
                shared.slot.store(new, Release);
            })
        };
        let seen = reader.join().unwrap();
        closer.join().unwrap();
        assert!(matches!(seen, None | Some(1) | Some(2)), "{seen:?}");
        assert_eq!(drops.load(Acquire), 1, "the first value is dropped once, after the reader");
        let last = shared.slot.swap(null_mut(), AcqRel);
        // SAFETY: the owner's reference.
        unsafe { shared.pool.release(last) };
        assert_eq!(drops.load(Acquire), 2);
    });
}

#[test]
fn two_readers_and_a_close() {
    model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared { pool: Pool::new(), slot: AtomicPtr::new(null_mut()) });
        let cell = shared.pool.alloc(Value { n: 5, drops: drops.clone() });
        shared.slot.store(cell, Release);
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let shared = shared.clone();
                thread::spawn(move || shared.pool.acquire(&shared.slot).map(|lease| lease.with(|v| v.n)))
            })
            .collect();
        let old = shared.slot.swap(null_mut(), AcqRel);
        // SAFETY: the owner's reference, given up.
        unsafe { shared.pool.release(old) };
        for r in readers {
            assert!(matches!(r.join().unwrap(), None | Some(5)));
        }
        assert_eq!(drops.load(Acquire), 1);
    });
}
