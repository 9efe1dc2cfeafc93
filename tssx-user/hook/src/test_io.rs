//! The unit tests' calls on a tracked fd through the hook's own entry points (as the
//! application's `read` and `write` reach them).

use libc::c_int;

use crate::calls;

/// The hook's `write` of `bytes`.
pub(crate) fn write(fd: c_int, bytes: &[u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::write(fd, bytes.as_ptr().cast(), bytes.len()) }
}

/// The hook's `read` into `buf`.
pub(crate) fn read(fd: c_int, buf: &mut [u8]) -> isize {
    // SAFETY: a live buffer of the stated length.
    unsafe { calls::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}
