//! Caller buffers: C iovec arrays as slices, and the rest of a buffer list after a partial
//! transfer (on the stack: no allocation on the data path).

use std::io::{IoSlice, IoSliceMut};

use libc::{c_int, c_void, iovec, size_t};

/// How many iovecs past a partial transfer a call handles at once (more are done in rounds).
const IOV_BATCH: usize = 64;

/// Calls `f` with the part of `bufs` after the first `skip` bytes (at most [`IOV_BATCH`]
/// slices, on the stack: no allocation on the data path).
pub fn after_mut<R>(bufs: &mut [IoSliceMut<'_>], mut skip: usize, f: impl FnOnce(&mut [IoSliceMut<'_>]) -> R) -> R {
    let mut rest: [IoSliceMut<'_>; IOV_BATCH] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
    let mut n = 0;
    for b in bufs.iter_mut() {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        if n == IOV_BATCH {
            break;
        }
        // SAFETY: a sub-slice of a caller buffer, used only within this call while `bufs` is
        // mutably borrowed; no other reference to it exists meanwhile.
        let tail = unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().add(skip), b.len() - skip) };
        rest[n] = IoSliceMut::new(tail);
        n += 1;
        skip = 0;
    }
    f(&mut rest[..n])
}

/// As [`after_mut`], for sending.
pub fn after<R>(bufs: &[IoSlice<'_>], mut skip: usize, f: impl FnOnce(&[IoSlice<'_>]) -> R) -> R {
    let mut rest: [IoSlice<'_>; IOV_BATCH] = [IoSlice::new(&[]); IOV_BATCH];
    let mut n = 0;
    for b in bufs {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        if n == IOV_BATCH {
            break;
        }
        rest[n] = IoSlice::new(&b[skip..]);
        n += 1;
        skip = 0;
    }
    f(&rest[..n])
}
/// Builds slices over a C iovec array (null or empty entries allowed).
///
/// # Safety
/// `iov` must point at `cnt` valid iovecs whose buffers are valid for the call.
pub unsafe fn slices_mut<'a>(iov: *const iovec, cnt: c_int) -> Vec<IoSliceMut<'a>> {
    (0..cnt.max(0) as usize)
        .map(|i| {
            // SAFETY: per the function's contract.
            let v = unsafe { &*iov.add(i) };
            if v.iov_base.is_null() || v.iov_len == 0 {
                IoSliceMut::new(&mut [])
            } else {
                // SAFETY: per the function's contract.
                IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(v.iov_base.cast(), v.iov_len) })
            }
        })
        .collect()
}

/// As [`slices_mut`], for reading.
///
/// # Safety
/// As [`slices_mut`].
pub unsafe fn slices<'a>(iov: *const iovec, cnt: c_int) -> Vec<IoSlice<'a>> {
    (0..cnt.max(0) as usize)
        .map(|i| {
            // SAFETY: per the function's contract.
            let v = unsafe { &*iov.add(i) };
            if v.iov_base.is_null() || v.iov_len == 0 {
                IoSlice::new(&[])
            } else {
                // SAFETY: per the function's contract.
                IoSlice::new(unsafe { std::slice::from_raw_parts(v.iov_base.cast(), v.iov_len) })
            }
        })
        .collect()
}

/// One caller buffer of `n` writable bytes as a slice list.
///
/// # Safety
/// `buf` must be valid for `n` writable bytes (or `n` is 0).
pub unsafe fn one_mut<'a>(buf: *mut c_void, n: size_t) -> Vec<IoSliceMut<'a>> {
    if buf.is_null() || n == 0 {
        return vec![IoSliceMut::new(&mut [])];
    }
    // SAFETY: the caller of read/recv promises `n` writable bytes at `buf`.
    vec![IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(buf.cast(), n) })]
}

/// One caller buffer of `n` readable bytes as a slice list.
///
/// # Safety
/// `buf` must be valid for `n` readable bytes (or `n` is 0).
pub unsafe fn one<'a>(buf: *const c_void, n: size_t) -> Vec<IoSlice<'a>> {
    if buf.is_null() || n == 0 {
        return vec![IoSlice::new(&[])];
    }
    // SAFETY: the caller of write/send promises `n` readable bytes at `buf`.
    vec![IoSlice::new(unsafe { std::slice::from_raw_parts(buf.cast(), n) })]
}

/// Calls `f` with `msg` narrowed to its first `n` bytes (at most [`IOV_BATCH`] iovecs, on the
/// stack), then restores it.
pub fn limit<R>(msg: &mut libc::msghdr, n: usize, f: impl FnOnce(&mut libc::msghdr) -> R) -> R {
    let mut short = [iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_BATCH];
    let mut left = n;
    let mut count = 0;
    for i in 0..msg.msg_iovlen.min(IOV_BATCH) {
        if left == 0 {
            break;
        }
        // SAFETY: `msg_iov` holds `msg_iovlen` iovecs (the caller's msghdr).
        let v = unsafe { *msg.msg_iov.add(i) };
        let len = v.iov_len.min(left);
        short[count] = iovec { iov_base: v.iov_base, iov_len: len };
        count += 1;
        left -= len;
    }
    let (saved_iov, saved_len) = (msg.msg_iov, msg.msg_iovlen);
    msg.msg_iov = short.as_mut_ptr();
    msg.msg_iovlen = count;
    let r = f(msg);
    msg.msg_iov = saved_iov;
    msg.msg_iovlen = saved_len;
    r
}
