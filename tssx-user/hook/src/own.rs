//! The hook's own fds inside the application's fd table: each connection's segment memfd (kept
//! for the exec hand-over) and a claim's control socket.
//!
//! The application did not open them and cannot know them, but it may close them all the same:
//! a daemon's `for (fd = 3; fd < 1024; fd++) close(fd)`, `closefrom`, `close_range`. Closed
//! behind the hook's back, such a number may be reused by the application's next `open`, and
//! the hook would later close (or hand across an exec) the application's file. So every such fd
//! is an [`OwnFd`], marked in a bitmap while the hook holds it: `close` of a marked number fails
//! with EBADF, as for a number nothing is open on (which is what the application sees), and
//! `close_range`/`closefrom` leave the marked numbers out of the real call.
//!
//! `dup2`/`dup3` onto a marked number (a child after `fork` that puts its files on fixed
//! numbers, `exec 3>file` in a shell) must succeed as it would without the hook, so the hook's
//! file moves out of the way first ([`relocate`]): it gets a new number, and the application's
//! call replaces only the old one.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};

use libc::{c_int, c_uint};
use tssx_shm::sys::Fd;

use crate::table::MAX_FDS;

/// The lowest number an fd of the hook's gets: above the small numbers programs put their own
/// files on.
const RELOCATE_FROM: c_int = 64;

/// One bit per fd number held by an [`OwnFd`]. Relaxed: a number is marked by the thread that
/// just received it from the kernel and unmarked before it is closed; a thread of the
/// application that closes the same number concurrently races the hook's own use of it anyway.
static OWN: [AtomicU64; MAX_FDS / 64] = [const { AtomicU64::new(0) }; MAX_FDS / 64];

/// An fd of the hook's own (closed on drop, as [`Fd`]), marked as such while it lives. Its
/// number can change ([`relocate`]). Relaxed: the number is changed by a thread of the
/// application that replaces it with `dup2`, which races the hook's own use of it anyway.
#[derive(Debug)]
pub struct OwnFd(AtomicI32);

impl OwnFd {
    /// Takes `fd` as one of the hook's own, moved out of the application's way first (see
    /// [`out_of_the_way`]).
    pub fn new(fd: Fd) -> OwnFd {
        let raw = out_of_the_way(fd.into_raw());
        mark(raw, true);
        OwnFd(AtomicI32::new(raw))
    }

    /// The descriptor's number now.
    #[inline]
    pub fn raw(&self) -> c_int {
        self.0.load(Relaxed)
    }
}

impl Drop for OwnFd {
    fn drop(&mut self) {
        let fd = self.raw();
        // Unmarked before it is closed: the number is never free while marked.
        mark(fd, false);
        // SAFETY: owned by `self`, never used again.
        drop(unsafe { Fd::from_raw(fd) });
    }
}

/// A new fd of the hook's (the kernel gave it the lowest free number) moved to the lowest free
/// number from [`RELOCATE_FROM`] up, with its close-on-exec flag: the application's next
/// `open`, `socket` or `accept` gets the number it would get without the hook (POSIX's lowest
/// free number; a daemon that reopens its standard streams relies on it), and a number the
/// application closes and then names (an `EPOLL_CTL_DEL` after the close: EBADF) is not the
/// hook's. Where that fails (no number left at or above it, a limit below it), the fd stays
/// where it is.
fn out_of_the_way(fd: c_int) -> c_int {
    if fd >= RELOCATE_FROM {
        return fd;
    }
    // (System calls that leave errno alone: the hook may be inside an application's call.)
    let Ok(flags) = tssx_shm::sys::fcntl(fd, libc::F_GETFD, 0) else { return fd };
    let cmd = if flags as c_int & libc::FD_CLOEXEC != 0 { libc::F_DUPFD_CLOEXEC } else { libc::F_DUPFD };
    match tssx_shm::sys::fcntl(fd, cmd, RELOCATE_FROM as usize) {
        Ok(to) => {
            // SAFETY: the original number, owned by the caller and replaced by its copy.
            drop(unsafe { Fd::from_raw(fd) });
            to as c_int
        }
        Err(_) => fd,
    }
}

/// Before `dup2`/`dup3` (valid `old`) onto `fd`: if `fd` is one of the hook's own, moves the
/// hook's file to a new number, so that the call replaces only a leftover duplicate. Returns
/// whether `fd` was moved (then [`relocation_failed`] closes the leftover if the call fails).
pub fn relocate(fd: c_int) -> bool {
    if !is_own(fd) {
        return false;
    }
    let Ok(to) = tssx_shm::sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, RELOCATE_FROM as usize) else { return false };
    let to = to as c_int;
    mark(to, true);
    let mut moved = false;
    let mut move_it = |own: &OwnFd| moved |= own.0.compare_exchange(fd, to, Relaxed, Relaxed).is_ok();
    crate::table::for_each_fd_conn(|c| {
        if let Some(s) = c.swap() {
            move_it(&s.memfd);
        }
        // A claim in flight: its holder only reads the number (a busy lock means this thread
        // interrupted it, and its socket stays where it is).
        if let Ok(claim) = c.claim.try_lock() {
            if let Some(control) = claim.control.as_ref() {
                move_it(control);
            }
        }
    });
    if !moved {
        // Not found (a number being given back): leave it as it was.
        mark(to, false);
        // SAFETY: the duplicate made above, owned here.
        drop(unsafe { Fd::from_raw(to) });
        return false;
    }
    mark(fd, false);
    true
}

/// The `dup2`/`dup3` after a [`relocate`] of `fd` failed: `fd` still holds the leftover
/// duplicate of the hook's file, which nobody owns; it is closed.
pub fn relocation_failed(fd: c_int) {
    // SAFETY: the leftover duplicate, owned by nobody else.
    drop(unsafe { Fd::from_raw(fd) });
}

fn mark(fd: c_int, on: bool) {
    let Ok(fd) = usize::try_from(fd) else { return };
    let Some(word) = OWN.get(fd / 64) else { return };
    let bit = 1u64 << (fd % 64);
    if on {
        word.fetch_or(bit, Relaxed);
    } else {
        word.fetch_and(!bit, Relaxed);
    }
}

/// Whether `fd` is one of the hook's own (one load).
#[inline]
pub fn is_own(fd: c_int) -> bool {
    usize::try_from(fd).ok().and_then(|fd| OWN.get(fd / 64).map(|w| w.load(Relaxed) & (1 << (fd % 64)) != 0)).unwrap_or(false)
}

/// The hook's own fds in `first..=last`, in order.
pub fn in_range(first: c_uint, last: c_uint) -> Vec<c_uint> {
    let mut out = Vec::new();
    let end = (last as usize).min(MAX_FDS - 1);
    let first = first as usize;
    if first > end {
        return out;
    }
    for (w, word) in OWN.iter().enumerate().take(end / 64 + 1).skip(first / 64) {
        let mut bits = word.load(Relaxed);
        while bits != 0 {
            let fd = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if (first..=end).contains(&fd) {
                out.push(fd as c_uint);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_range_lists_the_marked_numbers_inside_the_range() {
        // High numbers no other unit test marks.
        for fd in [60_000, 60_063, 60_064, 60_200] {
            mark(fd, true);
        }
        assert!(is_own(60_063) && !is_own(60_062));
        assert_eq!(in_range(60_000, 60_100), [60_000, 60_063, 60_064]);
        assert_eq!(in_range(60_001, 60_063), [60_063]);
        assert_eq!(in_range(60_065, u32::MAX), [60_200]);
        assert_eq!(in_range(u32::MAX, u32::MAX), [] as [c_uint; 0]);
        for fd in [60_000, 60_063, 60_064, 60_200] {
            mark(fd, false);
        }
        assert_eq!(in_range(60_000, 60_300), [] as [c_uint; 0]);
    }
}
