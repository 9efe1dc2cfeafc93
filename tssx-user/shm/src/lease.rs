//! Type-stable, reference-counted cells for a lock-free table: a reader *leases* the value a
//! table slot points at, and the value is dropped by whoever gives up the last reference, never
//! while a lease is out. The hook's fd table is built on it: a call on a socket leases its
//! connection, so a `close` on another thread can no longer free it under the call.
//!
//! # Why type-stable
//!
//! A reader loads a slot's pointer and then takes a reference on the cell it points at. Between
//! the two, the value may be released and its cell reused: so the cell's *memory* must stay a
//! cell forever. Cells are never given back to the allocator: a released cell goes onto the
//! pool's free list, and the next [`Pool::alloc`] reuses it. A reader holding a stale pointer
//! therefore only ever touches the cell's reference count, an atomic that is always valid.
//!
//! # Invariants
//!
//! 1. `refs == 0` exactly while the cell holds no value (free, or being filled or dropped).
//!    Nobody increments a zero count: [`Pool::acquire`] uses a compare-and-swap from a non-zero
//!    value (*increment if not zero*), so a cell whose last reference is gone stays dead until
//!    [`Pool::alloc`] fills it and stores `1`.
//! 2. The value is written (by `alloc`) and dropped (by the last [`Pool::release`]) only while
//!    `refs == 0`, by the one thread that owns the cell then; readers touch the value only
//!    through a lease, i.e. while `refs >= 1` counts them.
//! 3. A slot only points at a cell whose value is alive, and the owner that linked it keeps a
//!    reference (the hook: one reference for all the fds of a connection) until it has
//!    unlinked it from every slot.
//! 4. A lease is valid once the reader has a reference *and* has seen the slot still point at
//!    the cell afterwards; a reference taken on a cell that was released and reused meanwhile
//!    (possibly for another slot) is given back and the lookup starts over.
//!
//! # Orderings (each pair named together)
//!
//! * `alloc` fills the value, then stores `refs = 1` with `Release`; a successful `acquire`
//!   compare-and-swap is `Acquire` and reads from that store or from a later increment or
//!   decrement of its release sequence (every one of them is a read-modify-write): the reader
//!   sees the filled value.
//! * Every `release` decrements with `Release`; the one that reaches zero issues an `Acquire`
//!   fence before dropping the value: every use under any lease happens before the drop (the
//!   `Arc` pattern).
//! * Slots are stored (`Release`) by the owner after `alloc`, and loaded with `Acquire` by
//!   `acquire`, both times (the re-check too: it must not be satisfied by a value older than the
//!   compare-and-swap, which the `Acquire` of the compare-and-swap already forbids).
//! * The free list: a push links the cell (`next`, `Relaxed`) and publishes it with a `Release`
//!   compare-and-swap of the head; a pop loads the head with `Acquire` (the cell's `next` and
//!   its dropped state are visible) and unlinks it with a compare-and-swap. Pops are
//!   serialized by a try-lock (`Acquire` to take, `Release` to give back) so a popped cell can
//!   only come back through a push after our compare-and-swap: no ABA. A pop that finds the
//!   lock taken allocates a fresh cell instead, so nothing ever waits (a process forked while
//!   another thread held the lock simply never reuses the list).
//!
//! Cost: a lease is one load of the slot, one compare-and-swap and one re-load to take, one
//! atomic decrement to give back; nothing for an empty slot (one load).

use core::marker::PhantomData;
use core::ptr::null_mut;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use self::sync::{fence, spin_loop, AtomicBool, AtomicPtr, AtomicU32, ValueCell};

/// The atomics and the value cell the pool is written against: `core`'s normally, `loom`'s
/// under `--cfg tssx_loom` (as the ring's, see [`crate::ring`]).
mod sync {
    #[cfg(not(tssx_loom))]
    pub use core::hint::spin_loop;
    #[cfg(not(tssx_loom))]
    pub use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32};
    #[cfg(tssx_loom)]
    pub use loom::hint::spin_loop;
    #[cfg(tssx_loom)]
    pub use loom::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32};

    /// The slot of a cell's value.
    #[cfg(not(tssx_loom))]
    pub struct ValueCell<T>(core::cell::UnsafeCell<core::mem::MaybeUninit<T>>);

    #[cfg(not(tssx_loom))]
    impl<T> ValueCell<T> {
        pub fn new() -> Self {
            ValueCell(core::cell::UnsafeCell::new(core::mem::MaybeUninit::uninit()))
        }

        /// Runs `f` with a pointer to the value slot.
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut core::mem::MaybeUninit<T>) -> R) -> R {
            f(self.0.get())
        }

        /// Runs `f` with a pointer to the value slot, for reading.
        pub fn with<R>(&self, f: impl FnOnce(*const core::mem::MaybeUninit<T>) -> R) -> R {
            f(self.0.get())
        }

        /// The value slot.
        pub fn ptr(&self) -> *mut core::mem::MaybeUninit<T> {
            self.0.get()
        }
    }

    /// The slot of a cell's value (accesses tracked by loom).
    #[cfg(tssx_loom)]
    pub struct ValueCell<T>(loom::cell::UnsafeCell<core::mem::MaybeUninit<T>>);

    #[cfg(tssx_loom)]
    impl<T> ValueCell<T> {
        pub fn new() -> Self {
            ValueCell(loom::cell::UnsafeCell::new(core::mem::MaybeUninit::uninit()))
        }

        pub fn with_mut<R>(&self, f: impl FnOnce(*mut core::mem::MaybeUninit<T>) -> R) -> R {
            self.0.with_mut(f)
        }

        pub fn with<R>(&self, f: impl FnOnce(*const core::mem::MaybeUninit<T>) -> R) -> R {
            self.0.with(f)
        }
    }
}

/// One cell: a reference count and a value slot (see the module documentation).
pub struct Cell<T> {
    /// References: the owner's and one per lease. 0: no value.
    refs: AtomicU32,
    /// Next free cell while on the free list.
    next: AtomicPtr<Cell<T>>,
    value: ValueCell<T>,
}

// SAFETY: the value is only shared through leases (`&T`, needs `T: Sync`) and moved between
// threads by `alloc`/`release` (needs `T: Send`); the rest is atomic.
unsafe impl<T: Send + Sync> Sync for Cell<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Send for Cell<T> {}

/// The cells of one kind of value: a free list of released cells.
pub struct Pool<T> {
    free: AtomicPtr<Cell<T>>,
    popping: AtomicBool,
    _values: PhantomData<T>,
}

// SAFETY: every field is atomic; cells are shared as documented on `Cell`.
unsafe impl<T: Send + Sync> Sync for Pool<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Send for Pool<T> {}

impl<T> Pool<T> {
    /// An empty pool.
    #[cfg(not(tssx_loom))]
    pub const fn new() -> Pool<T> {
        Pool { free: AtomicPtr::new(null_mut()), popping: AtomicBool::new(false), _values: PhantomData }
    }

    /// An empty pool (loom's atomics cannot be built in a `const fn`).
    #[cfg(tssx_loom)]
    pub fn new() -> Pool<T> {
        Pool { free: AtomicPtr::new(null_mut()), popping: AtomicBool::new(false), _values: PhantomData }
    }

    /// A cell holding `value`, with one reference (the caller's, given up with
    /// [`Pool::release`]). The cell's memory is never freed (see the module documentation).
    #[inline(always)]
    pub fn alloc(&self, value: T) -> *mut Cell<T> {
        self.alloc_with(|| value)
    }

    /// As [`Pool::alloc`], the value built by `make` straight in the cell (a large value
    /// passed by value is built on the stack and copied, once or twice, otherwise).
    #[inline(always)]
    pub fn alloc_with(&self, make: impl FnOnce() -> T) -> *mut Cell<T> {
        let cell = self.pop().unwrap_or_else(|| {
            Box::into_raw(Box::new(Cell { refs: AtomicU32::new(0), next: AtomicPtr::new(null_mut()), value: ValueCell::new() }))
        });
        // SAFETY: the cell is ours alone: fresh, or popped from the free list with `refs == 0`
        // (invariant 2: nobody touches the value meanwhile; stale readers only fail to
        // increment `refs`).
        unsafe { (*cell).value.with_mut(|slot| (*slot).write(make())) };
        // Release: pairs with the Acquire compare-and-swap in `acquire` (the value is filled).
        // SAFETY: cells are never freed.
        unsafe { (*cell).refs.store(1, Release) };
        cell
    }

    /// Leases the value `slot` points at (`None`: the slot is empty).
    #[inline]
    pub fn acquire<'a>(&'a self, slot: &AtomicPtr<Cell<T>>) -> Option<Lease<'a, T>> {
        loop {
            // Acquire: pairs with the Release store that linked the cell.
            let cell = slot.load(Acquire);
            if cell.is_null() {
                return None;
            }
            // SAFETY: cells are never freed; only the atomic count is touched before the lease
            // is confirmed.
            let refs = unsafe { &(*cell).refs };
            let mut n = refs.load(Relaxed);
            let taken = loop {
                if n == 0 {
                    // Released meanwhile: the slot has changed (invariant 3), or is about to
                    // link this cell again, refilled (its count is then 1 before the link).
                    break false;
                }
                // Acquire on success: pairs with `alloc`'s Release store (see the module docs).
                match refs.compare_exchange_weak(n, n + 1, Acquire, Relaxed) {
                    Ok(_) => break true,
                    Err(now) => {
                        n = now;
                        spin_loop();
                    }
                }
            };
            if !taken {
                // Look again: a slot that still links this cell saw it refilled, and the next
                // load of the count (after the Acquire load of the slot, which synchronizes
                // with the link's Release store, itself after `alloc`'s) is not zero.
                spin_loop();
                continue;
            }
            let lease = Lease { cell, pool: self };
            // Acquire: as the first load (invariant 4).
            if slot.load(Acquire) == cell {
                return Some(lease);
            }
            drop(lease); // a reused cell: give the reference back, look again
            spin_loop();
        }
    }

    /// Takes one more reference on a cell the caller holds a reference on (a lease or the
    /// owner's), as a lease.
    ///
    /// # Safety
    /// The caller holds a reference on `cell` for the duration of the call.
    pub unsafe fn lease(&self, cell: *mut Cell<T>) -> Lease<'_, T> {
        // Relaxed: the caller's reference keeps the value alive and already synchronized.
        // SAFETY: cells are never freed.
        unsafe { (*cell).refs.fetch_add(1, Relaxed) };
        Lease { cell, pool: self }
    }

    /// Gives up one reference on `cell`; the last one drops the value and puts the cell on the
    /// free list.
    ///
    /// # Safety
    /// The caller holds a reference on `cell` and gives it up (never uses it again).
    pub unsafe fn release(&self, cell: *mut Cell<T>) {
        // Release: pairs with the Acquire fence below, in whichever thread drops the value.
        // SAFETY: cells are never freed.
        if unsafe { (*cell).refs.fetch_sub(1, Release) } != 1 {
            return;
        }
        fence(Acquire);
        // SAFETY: `refs` reached zero: the cell is ours alone (invariants 1 and 2), and it
        // holds a value (filled by `alloc`, dropped only here).
        unsafe { (*cell).value.with_mut(|slot| (*slot).assume_init_drop()) };
        self.push(cell);
    }

    /// Puts a cell with no value on the free list.
    fn push(&self, cell: *mut Cell<T>) {
        // Relaxed: our own view of the head, re-checked by the compare-and-swap.
        let mut head = self.free.load(Relaxed);
        loop {
            // Relaxed: published by the Release compare-and-swap below.
            // SAFETY: cells are never freed; this one is ours until it is on the list.
            unsafe { (*cell).next.store(head, Relaxed) };
            // Release: pairs with the Acquire load in `pop` (the link and the dropped value).
            match self.free.compare_exchange_weak(head, cell, Release, Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Takes a cell off the free list, if there is one and no other thread is popping.
    fn pop(&self) -> Option<*mut Cell<T>> {
        // Acquire: pairs with the Release that gave the lock back (the previous pop is done).
        if self.popping.compare_exchange(false, true, Acquire, Relaxed).is_err() {
            return None;
        }
        let mut taken = None;
        // Acquire: pairs with the Release compare-and-swap of `push`.
        let mut head = self.free.load(Acquire);
        while !head.is_null() {
            // Relaxed: published with the head (Acquire above or below).
            // SAFETY: cells are never freed.
            let next = unsafe { (*head).next.load(Relaxed) };
            // Acquire on success: as the load above. Only pushes race with us, and a cell we
            // saw on the list can only come back after we popped it: no ABA.
            match self.free.compare_exchange_weak(head, next, Acquire, Acquire) {
                Ok(_) => {
                    taken = Some(head);
                    break;
                }
                Err(now) => head = now,
            }
        }
        // Release: pairs with the Acquire of the next popper.
        self.popping.store(false, Release);
        taken
    }
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool::new()
    }
}

impl<T> Drop for Pool<T> {
    /// Frees the cells on the free list (a pool is only dropped when nothing uses it: tests;
    /// the hook's pool is a static).
    fn drop(&mut self) {
        let mut head = self.free.load(Acquire);
        while !head.is_null() {
            // SAFETY: `&mut self`: no other user; cells on the list hold no value and came from
            // `Box::into_raw`.
            let cell = unsafe { Box::from_raw(head) };
            head = cell.next.load(Relaxed);
        }
    }
}

/// A reference on a cell's value, given back when dropped (see [`Pool::acquire`]).
pub struct Lease<'a, T> {
    cell: *mut Cell<T>,
    pool: &'a Pool<T>,
}

impl<T> Lease<'_, T> {
    /// The cell (to compare leases, or to link it into another slot while the owner's reference
    /// covers it).
    #[inline]
    pub fn cell(&self) -> *mut Cell<T> {
        self.cell
    }

    /// Runs `f` on the value (the form the loom model uses; `Deref` otherwise).
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        // SAFETY: the lease is a reference: the value is alive and filled (invariants 1, 2).
        // SAFETY: (the inner dereference) as above.
        unsafe { (*self.cell).value.with(|slot| f((*slot).assume_init_ref())) }
    }
}

#[cfg(not(tssx_loom))]
impl<T> core::ops::Deref for Lease<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the lease is a reference: the value is alive and filled until it is dropped,
        // and the returned borrow cannot outlive the lease.
        unsafe { (*(*self.cell).value.ptr()).assume_init_ref() }
    }
}

impl<T> Drop for Lease<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the lease holds one reference and gives it up here.
        unsafe { self.pool.release(self.cell) }
    }
}

// SAFETY: a lease only hands out `&T`; moving it to another thread moves a reference count.
unsafe impl<T: Send + Sync> Send for Lease<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for Lease<'_, T> {}

#[cfg(all(test, not(tssx_loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    struct Counted(u32);

    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Relaxed);
        }
    }

    #[test]
    fn last_reference_drops_and_cells_are_reused() {
        let pool: Pool<Counted> = Pool::new();
        let slot = AtomicPtr::new(null_mut());
        assert!(pool.acquire(&slot).is_none());
        let cell = pool.alloc(Counted(7));
        slot.store(cell, Release);
        let lease = pool.acquire(&slot).expect("linked");
        assert_eq!(lease.0, 7);
        // The owner unlinks and gives its reference up: the lease keeps the value.
        slot.store(null_mut(), Release);
        let before = DROPS.load(Relaxed);
        // SAFETY: the owner's reference, given up.
        unsafe { pool.release(cell) };
        assert_eq!(DROPS.load(Relaxed), before);
        assert_eq!(lease.0, 7);
        drop(lease);
        assert_eq!(DROPS.load(Relaxed), before + 1);
        // The cell is reused.
        let again = pool.alloc(Counted(8));
        assert_eq!(again, cell);
        // SAFETY: the owner's reference.
        unsafe { pool.release(again) };
    }
}
