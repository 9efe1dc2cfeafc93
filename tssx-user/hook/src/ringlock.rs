//! Waiting for a ring lock word that is held: bounded, because the peer can write it.
//!
//! A ring lock word ([`tssx_common::segment::ProducerLine::lock`],
//! [`tssx_common::segment::ConsumerLine::lock`]) serializes the threads and processes of *one*
//! end, but it lies in the segment, which the peer maps read-write: a peer can store any value
//! there and leave it (issue 16: a victim then yielded in a loop forever, after the peer was
//! long gone). So a holder is never taken on its word. A call that finds the lock taken yields
//! for [`LOCK_SPIN_NS`] (a real holder keeps it for a few microseconds: a ring copy, or one
//! non-blocking system call), then places the value it finds:
//!
//! * a thread of this process that this process's own record ([`Swap`]'s `held`, which the
//!   peer cannot reach) says holds it, or a thread of another process that holds this end's
//!   socket (its `/proc/TID/fd` shows it): a real holder; wait, napping;
//! * a thread that does not exist: a holder that died inside its critical section; the lock
//!   is taken over (compare-and-swap from that value);
//! * anything else (this very thread, another thread of this process that does not hold it,
//!   a process that does not hold this end, a value that is no thread at all): the peer wrote
//!   it. The connection is marked ([`Conn::peer_wrote_lock`]) and the lock is taken whatever it
//!   holds. Nothing is lost that the peer could not take anyway: a peer that can write the word
//!   can also clear it while a thread of this end holds it and let a second one in; either way
//!   the stream turns to garbage, and the ring code masks every index and clamps every length,
//!   so no access leaves the ring or the caller's buffer.
//! * a holder that cannot be placed (its `/proc/TID/fd` is not readable: another user, another
//!   pid namespace): trusted for [`LOCK_UNPLACED_NS`] of holding the word unchanged, then
//!   taken as the peer's.
//!
//! Misjudged, a real holder would have its lock taken over (two users of one ring side at once:
//! this end's stream turns to garbage). That takes a holder of this end that keeps the lock far
//! longer than a critical section ever lasts *and* that cannot be placed (another user's
//! process, or another pid namespace's, holding this end after an `SCM_RIGHTS` pass), or a
//! process that holds this end's socket through two table entries (its own socket passed back
//! to itself): then each entry keeps its own record.
//!
//! The uncontended path is the `compare_exchange` it always was, plus two `Relaxed` stores of
//! the process-private record.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

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

/// What a lock word's value turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// A thread of this end holds it.
    Real,
    /// A thread of this process that this process's record does not show as the holder: it is
    /// between its compare-and-swap and its mark, or the peer wrote its id.
    Unmarked,
    /// A thread that no longer exists.
    Dead,
    /// Not a holder: the peer wrote it.
    Forged,
    /// Cannot tell (another user's or another pid namespace's process).
    Unplaced,
}

/// Marks, in this process's own memory, which thread holds one of this end's ring locks; the
/// mark is cleared on drop (also when the critical section unwinds).
pub(crate) struct HeldMark<'a>(&'a AtomicU32);

impl<'a> HeldMark<'a> {
    #[inline]
    pub(crate) fn new(slot: &'a AtomicU32, me: u32) -> Self {
        // Relaxed: read by this process's waiters only after they found the word held by
        // `me` for longer than a critical section lasts; a stale read makes them nap once more.
        slot.store(me, Relaxed);
        HeldMark(slot)
    }
}

impl Drop for HeldMark<'_> {
    #[inline]
    fn drop(&mut self) {
        // Relaxed: as in `new`.
        self.0.store(0, Relaxed);
    }
}

impl Conn {
    /// Takes `lock` (this end's `side` lock) for `me` once a first try failed: see the module
    /// documentation. Never waits without bound on a value the peer wrote.
    #[cold]
    #[inline(never)]
    pub(crate) fn contended<'l>(&self, lock: &'l RingLock, me: u32, side: Side) -> RingLockGuard<'l> {
        let started = now_ns();
        let mut nap_ns = 10_000u64;
        // A thread of ours not marked as the holder: seen once (it may be between its
        // compare-and-swap and its mark), forged when the next look finds the same.
        let mut unmarked = 0u32;
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
            let verdict = match self.place_holder(holder, me, side) {
                Holder::Unmarked if unmarked == holder => Holder::Forged,
                Holder::Unmarked => {
                    unmarked = holder;
                    Holder::Unmarked
                }
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
            if verdict != Holder::Unmarked {
                unmarked = 0;
            }
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
                Holder::Real | Holder::Unmarked | Holder::Unplaced => {
                    nap(nap_ns);
                    nap_ns = (nap_ns * 2).min(LOCK_NAP_MAX_NS);
                }
            }
        }
    }

    /// Places the value `holder` of this end's `side` lock word (see [`Holder`]).
    fn place_holder(&self, holder: u32, me: u32, side: Side) -> Holder {
        if holder == me {
            // This thread does not hold it (it would not be waiting): a signal handler that
            // interrupted our own critical section would wait forever anyway.
            return Holder::Forged;
        }
        if holder > i32::MAX as u32 {
            return Holder::Forged;
        }
        let pid = tssx_shm::sys::getpid();
        // SAFETY: tgkill with signal 0 sends nothing; it only asks whether `holder` is a thread
        // of this process. No memory is passed; errno is untouched (raw call).
        if unsafe { tssx_shm::sys::syscall(libc::SYS_tgkill, [pid as usize, holder as usize, 0, 0, 0, 0]) }.is_ok() {
            // A thread of ours holds the lock only if our own record says so.
            let held = self.swap().map_or(0, |s| s.held.0[side as usize].load(Relaxed));
            return if held == holder { Holder::Real } else { Holder::Unmarked };
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
    let ts = libc::timespec { tv_sec: (ns / 1_000_000_000) as libc::time_t, tv_nsec: (ns % 1_000_000_000) as libc::c_long };
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

    /// A real holder, a thread of this process inside a long critical section, is waited for:
    /// neither taken over nor blamed on the peer.
    #[test]
    fn a_real_holder_is_waited_for() {
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
}
