//! Ring locks: one in this process's own memory for its threads, then the word in the segment
//! for its sibling processes, whose wait is bounded because the peer can write it.
//!
//! # Two locks per ring end
//!
//! A thread that uses one of this end's ring handles ([`Swap`]'s `tx` or `rx`: process-local
//! state, the cached positions) first takes this process's own lock of that side ([`Swap`]'s
//! `local`, a thread id in the hook's memory, out of the peer's reach), then the lock word in the
//! segment ([`tssx_common::segment::ProducerLine::lock`],
//! [`tssx_common::segment::ConsumerLine::lock`]). The first keeps the threads of one process
//! apart whatever the segment holds; the second only keeps apart the processes that hold this
//! end (a forked child, a spawned or exec'ed image, a receiver of the socket through
//! `SCM_RIGHTS`), which each have their own copy of the handles.
//!
//! The segment's word is in the peer's reach: it can store any value there and leave it, or
//! clear it while a process of this end holds it. Before the local lock, a cleared word let a
//! second thread of the victim into the ring end the first one was using: two threads mutating
//! the same process-local handle at once, a data race in the victim's own memory (issue 16).
//! Now a cleared word can only let a *sibling process* of this end in beside the holder: each
//! has its own handle, so nothing of either process's memory is shared; what they share is the
//! ring, whose positions are atomics and whose bytes the peer can write at any moment anyway.
//! Both copy at the same positions: this end's stream turns to garbage, every index still
//! masked and every length clamped (`tssx_shm::ring`), so no access leaves the ring or the
//! caller's buffer. No worse than a plain socket's peer, which can send garbage.
//!
//! # A held local lock
//!
//! Its holder is a thread of this process inside a critical section (a ring copy, or one
//! non-blocking system call), or waiting for the segment's word: it is waited for, yielding for
//! [`LOCK_SPIN_NS`], then napping. Two values are not such a holder:
//! * this very thread: a signal handler interrupted this thread's own critical section and
//!   reads or writes the same socket. Waiting would never end, so the handler's call goes
//!   through without either lock (the interrupted copy resumes after it): the stream may be
//!   garbled where the two copies overlap, nothing leaves the ring or the buffers, and no
//!   second thread runs meanwhile;
//! * a thread that is not in this process: a forked child's copy of a lock a parent's thread
//!   held at the fork (the child's fork clears them, see [`clear_local_locks_in_child`]; a
//!   fork the hook did not see is caught here). It is taken over.
//!
//! # A held segment word
//!
//! A call that finds the word taken (it holds the local lock then) yields for [`LOCK_SPIN_NS`]
//! (a real holder keeps it for a few microseconds), then places the value it finds:
//!
//! * a thread of another process that holds this end's socket (its `/proc/TID/fd` shows it): a
//!   real holder; wait, napping;
//! * a thread that does not exist: a holder that died inside its critical section; the lock
//!   is taken over (compare-and-swap from that value);
//! * anything else (this very thread, any other thread of this process, which cannot hold it
//!   while this thread holds the local lock, a process that does not hold this end, a value
//!   that is no thread at all): the peer wrote it. The connection is marked
//!   ([`Conn::peer_wrote_lock`]) and the word is taken whatever it holds.
//! * a holder that cannot be placed (its `/proc/TID/fd` is not readable: another user, another
//!   pid namespace): trusted for [`LOCK_UNPLACED_NS`] of holding the word unchanged, then
//!   taken as the peer's.
//!
//! Misjudged, a real holder would have its word taken over (two processes of one end in one ring
//! side at once: as a cleared word, garbage in this end's stream, memory-safe). That takes a
//! holder of this end that keeps the lock far longer than a critical section ever lasts *and*
//! that cannot be placed (another user's process, or another pid namespace's, holding this end
//! after an `SCM_RIGHTS` pass), or a process that holds this end's socket through two table
//! entries (its own socket passed back to itself): each entry then has its own handles and its
//! own local lock, like two processes.
//!
//! The uncontended path is two compare-and-swaps (local, then the segment's word) and two
//! stores.

use std::sync::atomic::{
    AtomicU32,
    Ordering::{Acquire, Relaxed, Release},
};

use libc::c_int;
use tssx_shm::ring::{RingLock, RingLockGuard};

use crate::{conn::Conn, spin::now_ns, sys};

/// How long a call yields on a held ring lock before it looks at the holder (ns).
pub const LOCK_SPIN_NS: u64 = 200_000;
/// How long a holder that cannot be placed may hold a ring lock before it counts as a value the
/// peer wrote (ns).
pub const LOCK_UNPLACED_NS: u64 = 100_000_000;
/// Longest nap between two looks at a real holder (ns).
const LOCK_NAP_MAX_NS: u64 = 1_000_000;

/// Which of this end's two ring locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The producer lock of the ring this end writes.
    Tx = 0,
    /// The consumer lock of the ring this end reads.
    Rx = 1,
}

/// What a segment lock word's value turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// A thread of another process of this end holds it.
    Real,
    /// A thread that no longer exists.
    Dead,
    /// Not a holder: the peer wrote it.
    Forged,
    /// Cannot tell (another user's or another pid namespace's process).
    Unplaced,
}

/// What taking this process's own lock of a ring side gave (see the module documentation).
pub(crate) enum Local<'a> {
    /// Taken; released when the guard drops.
    Taken(LocalGuard<'a>),
    /// This very thread holds it: a signal handler interrupted its critical section.
    Reentered,
}

/// This process's own lock of one ring side, held: dropping it releases the lock.
pub(crate) struct LocalGuard<'a>(&'a AtomicU32);

impl Drop for LocalGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // Release: pairs with the Acquire of the next taker's compare-and-swap (in
        // `lock_local` or `local_contended`): this critical section's use of the process-local
        // ring handle, and the release of the segment's word before it, happen before the next.
        self.0.store(0, Release);
    }
}

/// Takes this process's own lock `slot` of a ring side for thread `me` (see the module
/// documentation): waits for another thread of this process that holds it, never for this very
/// thread, never for a thread that is not in this process.
#[inline]
pub(crate) fn lock_local(slot: &AtomicU32, me: u32) -> Local<'_> {
    // Acquire on success: pairs with `LocalGuard::drop`'s Release. Relaxed on failure: only a
    // holder's id is read.
    match slot.compare_exchange(0, me, Acquire, Relaxed) {
        Ok(_) => Local::Taken(LocalGuard(slot)),
        Err(holder) if holder == me => Local::Reentered,
        Err(_) => local_contended(slot, me),
    }
}

/// [`lock_local`] once a first try failed on another thread's hold.
#[cold]
#[inline(never)]
fn local_contended(slot: &AtomicU32, me: u32) -> Local<'_> {
    let started = now_ns();
    let mut nap_ns = 10_000u64;
    loop {
        // Orderings: as in `lock_local`.
        let holder = match slot.compare_exchange(0, me, Acquire, Relaxed) {
            Ok(_) => return Local::Taken(LocalGuard(slot)),
            Err(holder) => holder,
        };
        if now_ns().saturating_sub(started) < LOCK_SPIN_NS {
            sys::sched_yield();
            continue;
        }
        if !thread_of_this_process(holder) {
            // A copy of a hold made in the parent before a fork the hook did not see: nobody
            // here holds it. Acquire on success: as in `lock_local`.
            if slot.compare_exchange(holder, me, Acquire, Relaxed).is_ok() {
                return Local::Taken(LocalGuard(slot));
            }
            continue;
        }
        nap(nap_ns);
        nap_ns = (nap_ns * 2).min(LOCK_NAP_MAX_NS);
    }
}

/// Whether `tid` is a live thread of this process.
fn thread_of_this_process(tid: u32) -> bool {
    if tid == 0 || tid > i32::MAX as u32 {
        return false;
    }
    let pid = tssx_shm::sys::getpid();
    // SAFETY: tgkill with signal 0 sends nothing; it only asks whether `tid` is a thread of
    // this process. No memory is passed; errno is untouched (raw call).
    unsafe { tssx_shm::sys::syscall(libc::SYS_tgkill, [pid as usize, tid as usize, 0, 0, 0, 0]) }.is_ok()
}

/// In a forked child: the local ring locks held by the parent's threads at the fork are
/// nobody's here (the child has one thread); one held by the thread that forked (`forker`, its
/// id in the parent: a fork from a signal handler inside a critical section) is this thread's,
/// under its new id `me`.
pub(crate) fn clear_local_locks_in_child(forker: u32, me: u32) {
    crate::table::for_each_conn(|_, conn| {
        if let Some(swap) = conn.swap() {
            for slot in &swap.local.0 {
                // Relaxed: the child's only thread.
                let held = slot.load(Relaxed);
                if held != 0 {
                    slot.store(if held == forker { me } else { 0 }, Relaxed);
                }
            }
        }
    });
}

impl Conn {
    /// Takes `lock` (this end's `side` word in the segment) for `me`, which holds this
    /// process's own lock of that side, once a first try failed: see the module documentation.
    /// Never waits without bound on a value the peer wrote.
    #[cold]
    #[inline(never)]
    pub(crate) fn contended<'l>(&self, lock: &'l RingLock, me: u32) -> RingLockGuard<'l> {
        let started = now_ns();
        let mut nap_ns = 10_000u64;
        // The value that could not be placed, and since when it stands.
        let mut unplaced: (u32, u64) = (0, 0);
        loop {
            if let Some(guard) = lock.try_lock(me) {
                return guard;
            }
            if now_ns().saturating_sub(started) < LOCK_SPIN_NS {
                sys::sched_yield();
                continue;
            }
            let holder = lock.holder();
            if holder == 0 {
                continue;
            }
            let verdict = match self.place_holder(holder, me) {
                Holder::Unplaced => {
                    let now = now_ns();
                    if unplaced.0 != holder {
                        unplaced = (holder, now);
                    }
                    if now.saturating_sub(unplaced.1) >= LOCK_UNPLACED_NS {
                        Holder::Forged
                    } else {
                        Holder::Unplaced
                    }
                }
                v => v,
            };
            match verdict {
                Holder::Dead => {
                    if let Some(guard) = lock.take_over(holder, me) {
                        return guard;
                    }
                }
                Holder::Forged => {
                    self.peer_wrote_lock.store(true, Relaxed);
                    return lock.seize(me).1;
                }
                Holder::Real | Holder::Unplaced => {
                    nap(nap_ns);
                    nap_ns = (nap_ns * 2).min(LOCK_NAP_MAX_NS);
                }
            }
        }
    }

    /// Places the value `holder` of one of this end's segment lock words, seen by thread `me`,
    /// which holds this process's own lock of that side (see [`Holder`]).
    fn place_holder(&self, holder: u32, me: u32) -> Holder {
        if holder == me || holder > i32::MAX as u32 {
            // This thread does not hold it (it would not be waiting).
            return Holder::Forged;
        }
        if thread_of_this_process(holder) {
            // Another thread of ours: it released the word before the local lock this thread
            // then took (Release/Acquire on the local lock), so it does not hold it.
            return Holder::Forged;
        }
        // SAFETY: kill with signal 0 sends nothing; no memory is passed.
        if let Err(tssx_shm::sys::Errno(libc::ESRCH)) = unsafe { tssx_shm::sys::syscall(libc::SYS_kill, [holder as usize, 0, 0, 0, 0, 0]) }
        {
            return Holder::Dead;
        }
        match holds_socket(holder, self.socket_inode()) {
            Some(true) => Holder::Real,
            Some(false) => Holder::Forged,
            None => Holder::Unplaced,
        }
    }

    /// Notes the inode of this end's socket `fd` (one `fstat`, when the end becomes ready).
    pub(crate) fn note_socket_inode(&self, fd: c_int) {
        if let Ok(st) = tssx_shm::sys::fstat(fd) {
            if st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
                // Relaxed: see the field.
                self.sock_inode.store(st.st_ino, Relaxed);
            }
        }
    }

    /// The inode of this end's socket: as noted, else from the fd the connection was last used
    /// through (`None` if that fd is no socket any more).
    fn socket_inode(&self) -> Option<u64> {
        // Relaxed: see the field.
        let noted = self.sock_inode.load(Relaxed);
        if noted != 0 {
            return Some(noted);
        }
        let fd = self.last_fd.load(Relaxed);
        if fd < 0 {
            return None;
        }
        let st = tssx_shm::sys::fstat(fd).ok()?;
        (st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(st.st_ino)
    }
}

/// Sleeps `ns` nanoseconds (a raw `nanosleep`: errno untouched; a signal just cuts it short).
fn nap(ns: u64) {
    let ts = crate::sys::timespec_of_ns(ns);
    // SAFETY: reads one live timespec; no remainder is asked for.
    let _ = unsafe { tssx_shm::sys::syscall(libc::SYS_nanosleep, [&ts as *const libc::timespec as usize, 0, 0, 0, 0, 0]) };
}

/// Writes `n` in decimal into `out` from `at` on; returns the end.
fn put_decimal(out: &mut [u8], mut at: usize, n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    let mut v = n;
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in (0..len).rev() {
        out[at] = digits[i];
        at += 1;
    }
    at
}

/// Whether thread `tid`'s process has this end's socket (inode `inode`) among its descriptors:
/// `None` when that cannot be told (no inode, `/proc/TID/fd` not readable).
fn holds_socket(tid: u32, inode: Option<u64>) -> Option<bool> {
    let inode = inode?;
    // "/proc/<tid>/fd\0"
    let mut path = [0u8; 32];
    path[..6].copy_from_slice(b"/proc/");
    let at = put_decimal(&mut path, 6, u64::from(tid));
    path[at..at + 4].copy_from_slice(b"/fd\0");
    // "socket:[<inode>]"
    let mut want = [0u8; 40];
    want[..8].copy_from_slice(b"socket:[");
    let mut w = put_decimal(&mut want, 8, inode);
    want[w] = b']';
    w += 1;
    // SAFETY: a NUL-terminated path in a live buffer; the new fd is closed below.
    let dir = match unsafe {
        tssx_shm::sys::syscall(
            libc::SYS_openat,
            [libc::AT_FDCWD as usize, path.as_ptr() as usize, (libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) as usize, 0, 0, 0],
        )
    } {
        Ok(fd) => fd as c_int,
        Err(tssx_shm::sys::Errno(libc::ENOENT)) | Err(tssx_shm::sys::Errno(libc::ESRCH)) => return Some(false),
        Err(_) => return None,
    };
    let mut found = Some(false);
    let mut entries = [0u8; 4096];
    'outer: loop {
        // SAFETY: the kernel writes at most `entries.len()` bytes into our buffer.
        let n = match unsafe {
            tssx_shm::sys::syscall(libc::SYS_getdents64, [dir as usize, entries.as_mut_ptr() as usize, entries.len(), 0, 0, 0])
        } {
            Ok(0) => break,
            Ok(n) => n.min(entries.len()),
            Err(_) => {
                found = None;
                break;
            }
        };
        let mut off = 0;
        // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
        while off + 19 < n {
            let reclen = u16::from_ne_bytes([entries[off + 16], entries[off + 17]]) as usize;
            if reclen == 0 || off + reclen > n {
                break;
            }
            let name = &entries[off + 19..off + reclen];
            let mut target = [0u8; 40];
            // SAFETY: `name` is NUL-terminated inside the record (the kernel pads it); the
            // kernel writes at most `target.len()` bytes.
            let len = unsafe {
                tssx_shm::sys::syscall(
                    libc::SYS_readlinkat,
                    [dir as usize, name.as_ptr() as usize, target.as_mut_ptr() as usize, target.len(), 0, 0],
                )
            };
            if let Ok(len) = len {
                if target[..len.min(target.len())] == want[..w] {
                    found = Some(true);
                    break 'outer;
                }
            }
            off += reclen;
        }
    }
    // SAFETY: the directory fd opened above, ours alone.
    let _ = unsafe { tssx_shm::sys::close(dir) };
    found
}

#[cfg(test)]
mod tests {
    use std::{
        os::fd::AsRawFd as _,
        sync::atomic::Ordering::SeqCst,
        time::{Duration, Instant},
    };

    use tssx_common::segment::{End, SegmentState, JOIN_MAPPED};
    use tssx_shm::{segment::Segment, sys::Fd};

    use crate::table;

    /// A socket pair adopted as one swapped connection (no agent), and its segment.
    fn swapped_pair() -> ([i32; 2], Segment) {
        let mut fds = [0; 2];
        // SAFETY: a valid out-array.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }, 0);
        let segment = Segment::create(4096).unwrap();
        segment.transition(SegmentState::Pending, SegmentState::Active).unwrap();
        for end in [End::Client, End::Server] {
            let line = &segment.header().ends[end.index()];
            line.joined.store(JOIN_MAPPED, SeqCst);
            line.ready.store(1, SeqCst);
            line.switch_at.store(0, SeqCst);
            segment.header().refcount[end.index()].store(1, SeqCst);
        }
        for (fd, end) in [(fds[0], End::Client), (fds[1], End::Server)] {
            // SAFETY: a dup of the segment's fd, owned by the result.
            let memfd = unsafe { Fd::from_raw(libc::fcntl(segment.fd().unwrap().as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0)) };
            assert!(table::adopt_swapped(fd, end, memfd));
        }
        (fds, segment)
    }

    /// A real holder, a thread of this process inside a long critical section, is waited for:
    /// neither taken over nor blamed on the peer.
    #[test]
    fn a_real_holder_is_waited_for() {
        let (fds, segment) = swapped_pair();
        let server = fds[1];
        let hold = Duration::from_millis(300);
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let c = table::lookup(server).unwrap();
            c.with_tx(|_| {
                held_tx.send(()).unwrap();
                std::thread::sleep(hold);
            });
        });
        held_rx.recv().unwrap();
        let started = Instant::now();
        let c = table::lookup(server).unwrap();
        c.with_tx(|_| ());
        let waited = started.elapsed();
        holder.join().unwrap();
        assert!(waited >= hold - Duration::from_millis(50), "took a real holder's lock after {waited:?}");
        assert!(!c.peer_wrote_lock.load(SeqCst), "a real holder blamed on the peer");
        // Another process holding this end (a forked child with the socket) likewise.
        let lock = segment.producer_lock(End::Server);
        // SAFETY: the child only takes the lock word, sleeps and exits (no allocation, no lock
        // of this multi-threaded parent's).
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: getpid/usleep/_exit have no preconditions.
            unsafe {
                let guard = lock.try_lock(libc::getpid() as u32);
                libc::usleep(300_000);
                drop(guard);
                libc::_exit(0);
            }
        }
        let started = Instant::now();
        while lock.holder() != child as u32 {
            assert!(started.elapsed() < Duration::from_secs(5), "the child never took the lock");
            std::thread::yield_now();
        }
        let started = Instant::now();
        c.with_tx(|_| ());
        let waited = started.elapsed();
        let mut status = 0;
        // SAFETY: reaps our child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(waited >= Duration::from_millis(200), "took a sibling process's lock after {waited:?}");
        assert!(!c.peer_wrote_lock.load(SeqCst), "a sibling process blamed on the peer");
        drop(c);
        for fd in fds {
            // SAFETY: our sockets; the hook forgets them.
            unsafe { crate::calls::close(fd) };
        }
    }

    /// A forked child whose parent had a thread inside a critical section at the fork: the
    /// child's copy of this process's own lock is nobody's, so the child waits only for the
    /// parent's real hold of the segment's word (a sibling process), then goes on.
    #[test]
    fn a_forked_child_is_not_locked_out_by_a_parent_threads_hold() {
        let (fds, _segment) = swapped_pair();
        let server = fds[1];
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let c = table::lookup(server).unwrap();
            c.with_tx(|_| {
                held_tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            });
        });
        held_rx.recv().unwrap();
        // SAFETY: the hook's fork; the child only takes the lock (no allocation, no lock of
        // this multi-threaded parent's) and exits.
        let child = unsafe { crate::calls::fork() };
        if child == 0 {
            // SAFETY: alarm/_exit have no preconditions; SIGALRM's default kills a child
            // that stays locked out.
            unsafe {
                libc::alarm(5);
                if let Some(c) = table::lookup(server) {
                    c.with_tx(|_| ());
                    libc::_exit(0);
                }
                libc::_exit(2);
            }
        }
        let mut status = 0;
        // SAFETY: reaps our child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        holder.join().unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "the child ended with status {status:#x}");
        for fd in fds {
            // SAFETY: our sockets; the hook forgets them.
            unsafe { crate::calls::close(fd) };
        }
    }
}
