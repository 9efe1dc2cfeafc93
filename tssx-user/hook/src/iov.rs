//! Caller buffers: C iovec arrays as slices, checked as the kernel checks them, and the rest of
//! a buffer list after a partial transfer (on the stack: no allocation on the data path).
//!
//! # Bad pointers
//!
//! On a plain socket the kernel answers a bad buffer with EFAULT; the hook copies with
//! `memcpy`, where a bad pointer is a SIGSEGV. So before a swapped call touches a buffer, the
//! hook classifies it with two compares ([`range`]): a pointer into page zero (`NULL`,
//! `(void*)1`) is known to fault, a range that wraps or ends beyond user space fails at once,
//! anything else is taken as valid. What this does not catch, because it would cost a system
//! call per call: a buffer elsewhere in user space that is not mapped, or runs into an unmapped
//! page, or is read-only for a read. Such a call still crashes on a swapped socket (as a
//! `memcpy` into it would); the README says so.

use std::io::{IoSlice, IoSliceMut};

use libc::{c_int, c_void, iovec, size_t};

/// How many iovecs past a partial transfer a call handles at once (more are done in rounds).
pub(crate) const IOV_BATCH: usize = 64;

/// Calls `f` with the part of `bufs` after the first `skip` bytes (at most [`IOV_BATCH`]
/// slices, on the stack: no allocation on the data path).
pub fn after_mut<R>(bufs: &mut [IoSliceMut<'_>], mut skip: usize, f: impl FnOnce(&mut [IoSliceMut<'_>]) -> R) -> R {
    if skip == 0 && bufs.len() == 1 && !bufs[0].is_empty() {
        // One whole buffer (every read and recv): what the loop below would pass, without
        // building a 64-entry array per call (a tenth of a 4 KiB stream's reading time).
        return f(bufs);
    }
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
    if skip == 0 && bufs.len() == 1 && !bufs[0].is_empty() {
        // As in `after_mut`: every write and send.
        return f(bufs);
    }
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
/// The lowest address anything can be mapped at: page zero never is (`vm.mmap_min_addr` is
/// at least 4096 on every distribution kernel), so a pointer below it is bad without asking
/// the kernel. `NULL` and `(void*)1` are the usual ones.
const LOWEST_MAPPABLE: usize = 4096;

/// The end of user space on x86-64 with 4-level page tables (`TASK_SIZE_MAX`). A range that
/// ends above it fails the kernel's `access_ok` at once (EFAULT before anything happens), unless
/// the machine has 5-level page tables and the range is mapped there (checked with one system
/// call, see [`beyond_is_mapped`]).
const TASK_SIZE_4LEVEL: usize = (1 << 47) - 4096;

/// What a caller's buffer is, as far as the hook can tell without a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// Assumed valid (the kernel would copy to or from it).
    Valid,
    /// Inside user space but never mapped (below [`LOWEST_MAPPABLE`]): the kernel accepts the
    /// call and fails with EFAULT when it copies, i.e. only once data would move.
    Faults,
    /// Fails the kernel's `access_ok` (wraps around, or ends beyond user space): EFAULT at once.
    Bad,
}

/// Classifies `len` bytes at `ptr` (see [`Range`]). Two compares on the fast path; a system
/// call only for a range that ends beyond 128 TiB.
#[inline]
pub fn range(ptr: *const c_void, len: usize) -> Range {
    let start = ptr as usize;
    if len == 0 {
        return Range::Valid;
    }
    let Some(end) = start.checked_add(len) else { return Range::Bad };
    if start >= LOWEST_MAPPABLE && end <= TASK_SIZE_4LEVEL {
        return Range::Valid;
    }
    if end > TASK_SIZE_4LEVEL {
        return if beyond_is_mapped(start, end) { Range::Valid } else { Range::Bad };
    }
    Range::Faults
}

/// Whether a range ending beyond the 4-level user space is mapped after all (5-level page
/// tables): one `process_vm_readv` of its first and last byte from this process.
#[cold]
fn beyond_is_mapped(start: usize, end: usize) -> bool {
    let mut scratch = [0u8; 2];
    let local = [iovec { iov_base: scratch.as_mut_ptr().cast(), iov_len: 2 }];
    let remote = [iovec { iov_base: start as *mut c_void, iov_len: 1 }, iovec { iov_base: (end - 1) as *mut c_void, iov_len: 1 }];
    // SAFETY: the kernel reads the remote ranges (reporting EFAULT if unmapped) and writes two
    // bytes into a live local buffer.
    let rc = unsafe {
        tssx_shm::sys::syscall(
            libc::SYS_process_vm_readv,
            [tssx_shm::sys::getpid() as usize, local.as_ptr() as usize, 1, remote.as_ptr() as usize, 2, 0],
        )
    };
    rc == Ok(2)
}

/// A pointer to one value of type `T` the caller passes (an `int` for `FIONREAD`, a
/// `socklen_t`, a `msghdr`): whether it may be dereferenced. Alignment is not required (the
/// kernel does not require it either): read and write such values unaligned.
#[inline]
pub fn value_ok<T>(ptr: *const T) -> bool {
    range(ptr.cast(), std::mem::size_of::<T>()) == Range::Valid
}

/// The most iovecs a call takes (`UIO_MAXIOV`).
pub const MAX_IOV: usize = 1024;

/// A caller's buffer list, checked: the slices to use, and whether one of the buffers is in
/// the [`Range::Faults`] class (its slice is then empty, never built over the bad memory: the
/// call must fail with EFAULT as soon as data would move).
pub struct Checked<S> {
    /// One slice per buffer (empty for a buffer that would fault).
    pub slices: Vec<S>,
    /// A buffer with bytes to move would fault.
    pub faults: bool,
}

impl<S> Checked<S> {
    fn new(slices: Vec<S>, faults: bool) -> Self {
        Checked { slices, faults }
    }
}

/// Checks a C iovec array as the kernel's `import_iovec` does, and builds slices over it:
/// `Err(EINVAL)` for a count below 0 or above [`MAX_IOV`] (`too_many`: the errno for too many,
/// EMSGSIZE for `recvmsg`/`sendmsg`) or a negative length, `Err(EFAULT)` for an array or a
/// buffer that fails `access_ok` or an array that is not mapped. The entries are read
/// unaligned (the kernel accepts any alignment).
///
/// # Safety
/// An `iov` that passes [`range`] must point at `cnt` readable iovecs, and their buffers that
/// pass it must be valid for the call (the hook cannot check what it cannot see without a
/// system call; see the README).
unsafe fn checked<S>(
    iov: *const iovec,
    cnt: usize,
    too_many: c_int,
    empty: impl Fn() -> S,
    make: impl Fn(*mut u8, usize) -> S,
) -> Result<Checked<S>, c_int> {
    if cnt > MAX_IOV {
        return Err(too_many);
    }
    if cnt == 0 {
        return Ok(Checked::new(vec![empty()], false));
    }
    if range(iov.cast(), cnt * std::mem::size_of::<iovec>()) != Range::Valid {
        return Err(libc::EFAULT);
    }
    let entry = |i: usize| {
        // SAFETY: per the contract (the array passed `range`; `i < cnt`); unaligned reads.
        unsafe { iov.add(i).read_unaligned() }
    };
    // As the kernel: every length is checked (EINVAL) before any buffer (EFAULT).
    if (0..cnt).any(|i| (entry(i).iov_len as isize) < 0) {
        return Err(libc::EINVAL);
    }
    let mut slices = Vec::with_capacity(cnt);
    let mut faults = false;
    for i in 0..cnt {
        let v = entry(i);
        match range(v.iov_base, v.iov_len) {
            Range::Valid if v.iov_len > 0 => slices.push(make(v.iov_base.cast(), v.iov_len)),
            Range::Valid => slices.push(empty()),
            Range::Faults => {
                faults = true;
                slices.push(empty());
            }
            Range::Bad => return Err(libc::EFAULT),
        }
    }
    Ok(Checked::new(slices, faults))
}

/// Builds slices over a C iovec array for reading into (see [`checked`]; `cnt` as the caller
/// passed it, negative included).
///
/// # Safety
/// As [`checked`].
pub unsafe fn slices_mut<'a>(iov: *const iovec, cnt: isize, too_many: c_int) -> Result<Checked<IoSliceMut<'a>>, c_int> {
    if cnt < 0 {
        return Err(libc::EINVAL);
    }
    // SAFETY: per the contract; each slice is built over a buffer that passed `range`.
    unsafe {
        checked(iov, cnt as usize, too_many, || IoSliceMut::new(&mut []), |p, n| IoSliceMut::new(std::slice::from_raw_parts_mut(p, n)))
    }
}

/// As [`slices_mut`], for writing from.
///
/// # Safety
/// As [`checked`].
pub unsafe fn slices<'a>(iov: *const iovec, cnt: isize, too_many: c_int) -> Result<Checked<IoSlice<'a>>, c_int> {
    if cnt < 0 {
        return Err(libc::EINVAL);
    }
    // SAFETY: as in `slices_mut`.
    unsafe { checked(iov, cnt as usize, too_many, || IoSlice::new(&[]), |p, n| IoSlice::new(std::slice::from_raw_parts(p, n))) }
}

/// One caller buffer of `n` writable bytes as a checked slice list (`Err(EFAULT)`: fails
/// `access_ok`).
///
/// # Safety
/// A buffer that passes [`range`] must be valid for `n` writable bytes.
pub unsafe fn one_mut<'a>(buf: *mut c_void, n: size_t) -> Result<Checked<IoSliceMut<'a>>, c_int> {
    match range(buf, n) {
        Range::Valid if n > 0 => {
            // SAFETY: per the contract.
            Ok(Checked::new(vec![IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(buf.cast(), n) })], false))
        }
        Range::Valid => Ok(Checked::new(vec![IoSliceMut::new(&mut [])], false)),
        Range::Faults => Ok(Checked::new(vec![IoSliceMut::new(&mut [])], true)),
        Range::Bad => Err(libc::EFAULT),
    }
}

/// One caller buffer of `n` readable bytes, as [`one_mut`].
///
/// # Safety
/// A buffer that passes [`range`] must be valid for `n` readable bytes.
pub unsafe fn one<'a>(buf: *const c_void, n: size_t) -> Result<Checked<IoSlice<'a>>, c_int> {
    match range(buf, n) {
        Range::Valid if n > 0 => {
            // SAFETY: per the contract.
            Ok(Checked::new(vec![IoSlice::new(unsafe { std::slice::from_raw_parts(buf.cast(), n) })], false))
        }
        Range::Valid => Ok(Checked::new(vec![IoSlice::new(&[])], false)),
        Range::Faults => Ok(Checked::new(vec![IoSlice::new(&[])], true)),
        Range::Bad => Err(libc::EFAULT),
    }
}

/// The iovec array and count of a caller's `msghdr` (read unaligned), or EFAULT if the header
/// itself cannot be read.
///
/// # Safety
/// A `msg` that passes [`value_ok`] must point at a readable `msghdr`.
pub unsafe fn msg_iov(msg: *const libc::msghdr) -> Result<(*const iovec, isize), c_int> {
    if !value_ok(msg) {
        return Err(libc::EFAULT);
    }
    // SAFETY: per the contract; unaligned reads of two fields.
    let (iov, len) =
        unsafe { (std::ptr::addr_of!((*msg).msg_iov).read_unaligned(), std::ptr::addr_of!((*msg).msg_iovlen).read_unaligned()) };
    // A count beyond isize (a huge size_t) is "too many" as well.
    Ok((iov, isize::try_from(len).unwrap_or(isize::MAX)))
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
