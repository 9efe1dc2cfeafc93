//! `close_range` and `closefrom`: many fds closed in one call.
//!
//! Every fd of the range that the hook keeps something for is closed in the hook exactly as
//! `close` does (`calls::forget_fd`: the peer is told when the last copy of a connection
//! goes, while the fd is still open; epoll sets, listener kinds and unconnected-socket bits are
//! forgotten), then the real call closes the range. Without this, the table would keep the
//! connection under the fd number, and a pipe or socket that later gets the number would send
//! its bytes to the old peer.
//!
//! The hook's own fds (a connection's segment memfd, a claim's control socket: see
//! [`crate::own`]) may lie inside the range: the real call is split around them, so that a
//! connection that survives (its socket below the range, e.g. dup'ed onto 0 and 1 before an
//! exec: the inetd pattern) keeps its memfd for the exec hand-over, and no fd the hook closes
//! later has been closed (and perhaps reused) behind its back. The fds of the connections the
//! range closed are closed by the hook itself, with the connection.
//!
//! `CLOSE_RANGE_CLOEXEC` closes nothing: the real call marks the fds close-on-exec, and that is
//! all `fcntl(F_SETFD, FD_CLOEXEC)` does in the hook too (the exec hand-over reads each fd's
//! flag at exec time, see [`crate::lifecycle::prepare_exec`]; the hook's own fds are
//! close-on-exec already).
//!
//! `CLOSE_RANGE_UNSHARE`: the calling thread gets a private fd table first; the hook's table is
//! the process's, so the range is forgotten for every thread (the flag's use is a process
//! about to exec, whose other threads do not survive the exec).
//!
//! Limits: a hook fd created in the range by another thread while the range is being closed (a
//! claim sent meanwhile) is closed by the kernel, and its number stays marked as the hook's
//! until the claim ends (closing fds while other threads open fds is racy for the
//! application's own fds too); on a kernel without `close_range` (before 5.9) the call fails
//! with ENOSYS as glibc's does, after the hook has forgotten the range (the application's
//! fallback, one `close` per fd, then closes them for real).

use std::sync::atomic::AtomicUsize;

use libc::{c_int, c_uint};

use crate::{
    calls::{forget_fd, has_close_state},
    own,
    sys::{self, Errno},
    table,
};

/// The flags the kernel knows (any other bit: EINVAL).
const KNOWN_FLAGS: c_uint = libc::CLOSE_RANGE_UNSHARE | libc::CLOSE_RANGE_CLOEXEC;

/// `close_range(first, last, flags)`: the checks the kernel makes before it touches a
/// descriptor (EINVAL for unknown flags or `first > last`), then the hook's close of every
/// tracked fd of the range (unless `CLOSE_RANGE_CLOEXEC`), then the system call, split around
/// the hook's own fds (see the module documentation). -1 and `errno` on failure, as glibc.
pub fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    let flags = flags as c_uint;
    if flags & !KNOWN_FLAGS != 0 || first > last {
        sys::set_errno(libc::EINVAL);
        return -1;
    }
    let result = if flags & libc::CLOSE_RANGE_CLOEXEC != 0 {
        raw_close_range(first, last, flags)
    } else {
        forget_range(first, last);
        gaps(first, last, &own::in_range(first, last)).try_for_each(|(from, to)| raw_close_range(from, to, flags))
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            sys::set_errno(e.0);
            -1
        }
    }
}

/// `closefrom(low)`: the hook's close of every tracked fd from `max(low, 0)` on, then the real
/// calls around the hook's own fds: `close_range` for each gap below the last of them (one
/// `close` per fd on a kernel without `close_range`), and glibc's `closefrom` for the rest (with
/// its own fallback, and its abort when an fd cannot be closed).
pub fn closefrom(low: c_int) {
    let first = low.max(0) as c_uint;
    forget_range(first, c_uint::MAX);
    let own = own::in_range(first, c_uint::MAX);
    for (from, to) in gaps(first, c_uint::MAX, &own) {
        if to != c_uint::MAX {
            if raw_close_range(from, to, 0) == Err(Errno(libc::ENOSYS)) {
                for fd in from..=to {
                    // SAFETY: the application asked for this fd to be closed; not one of ours.
                    let _ = unsafe { tssx_shm::sys::close(fd as c_int) };
                }
            }
            continue;
        }
        match real_closefrom() {
            // SAFETY: glibc's `closefrom`, with the start of the last gap.
            Some(f) => unsafe { f(from as c_int) },
            None => {
                let _ = raw_close_range(from, to, 0);
            }
        }
    }
}

/// The kernel's `close_range` (errno untouched).
fn raw_close_range(first: c_uint, last: c_uint, flags: c_uint) -> Result<(), Errno> {
    // SAFETY: closes descriptors only: the application's, by its request (the hook's own are
    // excluded by the callers).
    unsafe { tssx_shm::sys::syscall(libc::SYS_close_range, [first as usize, last as usize, flags as usize, 0, 0, 0]) }.map(drop)
}

/// The hook's close of every fd in `first..=last` that it keeps anything for.
fn forget_range(first: c_uint, last: c_uint) {
    let end = (last as usize).min(table::state_limit().saturating_sub(1));
    for fd in first as usize..=end {
        let fd = fd as c_int;
        if has_close_state(fd) {
            forget_fd(fd);
        }
    }
}

/// The sub-ranges of `first..=last` (non-empty, in order) that leave out `skip` (sorted, each
/// inside the range).
fn gaps(first: c_uint, last: c_uint, skip: &[c_uint]) -> impl Iterator<Item = (c_uint, c_uint)> + '_ {
    let starts = std::iter::once(first as u64).chain(skip.iter().map(|&fd| fd as u64 + 1));
    let ends = skip.iter().map(|&fd| fd as i64 - 1).chain(std::iter::once(last as i64));
    starts.zip(ends).filter(|&(from, to)| from as i64 <= to).map(|(from, to)| (from as c_uint, to as c_uint))
}

/// glibc's `closefrom`, if this libc has one (2.34+), resolved on first use.
fn real_closefrom() -> Option<unsafe extern "C" fn(c_int)> {
    static SLOT: AtomicUsize = AtomicUsize::new(0);
    let f = sys::resolve_optional(&SLOT, c"closefrom")?;
    // SAFETY: the address of glibc's `void closefrom(int)`.
    Some(unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(c_int)>(f) })
}

#[cfg(test)]
mod tests {
    use super::gaps;

    #[test]
    fn gaps_leave_out_the_skipped_fds() {
        let all = |first, last, skip: &[u32]| gaps(first, last, skip).collect::<Vec<_>>();
        assert_eq!(all(3, 10, &[]), [(3, 10)]);
        assert_eq!(all(3, 10, &[3, 5, 6, 10]), [(4, 4), (7, 9)]);
        assert_eq!(all(3, 3, &[3]), []);
        assert_eq!(all(0, u32::MAX, &[7, u32::MAX]), [(0, 6), (8, u32::MAX - 1)]);
        assert_eq!(all(5, u32::MAX, &[9]), [(5, 8), (10, u32::MAX)]);
    }
}
