//! Caller buffers: C iovec arrays as slices, checked as the kernel checks them, and the rest of
//! a buffer list after a partial transfer (on the stack: no allocation on the data path).
//!
//! # Bad pointers
//!
//! On a plain socket the kernel answers a bad buffer with EFAULT. The hook answers the same,
//! in two steps:
//!
//! * Before a swapped call touches a buffer, it classifies it with two compares ([`range`]): a
//!   pointer into page zero (`NULL`, `(void*)1`) is known to fault (EFAULT once data would
//!   move, never touched), a range that wraps or ends beyond user space fails at once (the
//!   kernel's `access_ok`); anything else is taken as valid.
//! * A buffer elsewhere in user space that is not mapped, runs into an unmapped page, is
//!   read-only for a read, or is a file mapping past the file's end, is caught when it is
//!   copied: every copy between a ring and an application's buffer (and of an iovec array, a
//!   `msghdr`, a peek spread over buffers) is [`tssx_shm::ucopy::copy`], whose fault the hook's
//!   SIGSEGV/SIGBUS handler turns into a short copy ([`crate::fault`]). No system call, and
//!   nothing on the fast path but the copy itself.
//!
//! The slices the hook builds over an application's buffers ([`slices`], [`one`], ...) are
//! only ever handed to that copy (through the rings' `read`/`write`/`peek` and [`spread`]):
//! no Rust code of the hook reads or writes through them, so a bad page in them is never
//! touched by anything but the copy routine.
//!
//! What the call then answers follows the kernel's af_unix stream socket, which copies one
//! message (skb, one per write of up to about 36 KiB) at a time and keeps or drops a message
//! whose copy faulted whole: a read returns the messages copied before the faulting one, or
//! EFAULT, and the faulting one stays queued; a write returns the messages it queued before
//! the faulting one, or EFAULT, and the faulting one is dropped. The hook does the same per
//! ring transfer ([`tssx_shm::ring::Transfer::fault`]): the transfer whose copy faulted moves
//! nothing (a read leaves its bytes on the ring, a write publishes none), and the call returns
//! the bytes of its earlier transfers, or EFAULT. The two agree whenever the kernel's
//! faulting message is the call's first (a read of bytes from one write, any write up to
//! 36 KiB); otherwise the kernel's count is a multiple of the writer's messages, the hook's of
//! its ring transfers (a read of several small writes into a buffer that faults part-way:
//! the kernel returns the writes before the fault, the hook EFAULT; nothing is lost either
//! way, the bytes not returned stay queued).

use std::io::{IoSlice, IoSliceMut};

use libc::{c_int, c_void, iovec, size_t};
use tssx_shm::ring::Transfer;

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

/// Copies `data` into the application's buffers `bufs`, in order, as far as they reach, through
/// the user copy ([`tssx_shm::ucopy`]): the bytes copied (a peek's [`Transfer`]), or
/// [`Transfer::FAULT`] if a buffer ran into a bad page.
pub fn spread(bufs: &mut [IoSliceMut<'_>], data: &[u8]) -> Transfer {
    let mut at = 0;
    for b in bufs.iter_mut() {
        let k = b.len().min(data.len() - at);
        // SAFETY: `b` is the application's buffer of at least `k` bytes (possibly bad: the user
        // copy survives that); `data[at..at + k]` is ours.
        if unsafe { tssx_shm::ucopy::to_user(b.as_mut_ptr(), &data[at..at + k]) }.is_err() {
            return Transfer::FAULT;
        }
        at += k;
        if at == data.len() {
            break;
        }
    }
    Transfer::peeked(at)
}

/// Calls `f` with the address of one byte in each page of `len` bytes at `start` (the first,
/// then each page start, then the last), until it returns `false`; `true` if it never did.
fn each_page(start: usize, len: usize, mut f: impl FnMut(usize) -> bool) -> bool {
    const PAGE: usize = 4096;
    if len == 0 {
        return true;
    }
    let last = start + (len - 1);
    let mut at = start;
    loop {
        if !f(at) {
            return false;
        }
        if at == last {
            return true;
        }
        at = ((at / PAGE + 1) * PAGE).min(last);
    }
}

/// Whether `len` bytes of the application's memory at `start` can be read (see [`readable`]).
pub fn readable_range(start: *const c_void, len: usize) -> bool {
    // SAFETY: a byte of the application's memory (possibly bad: the user copy survives that)
    // into ours.
    each_page(start as usize, len, |at| unsafe { tssx_shm::ucopy::read(at as *const u8) }.is_some())
}

/// Whether the first `len` bytes of the application's `bufs` can be read: one byte of each
/// page they touch read through the user copy ([`tssx_shm::ucopy`]). For the cold paths that
/// must know before they act (a `sendmsg` whose control messages go out first).
pub fn readable(bufs: &[IoSlice<'_>], len: usize) -> bool {
    let mut left = len;
    for b in bufs {
        let k = b.len().min(left);
        if !readable_range(b.as_ptr().cast(), k) {
            return false;
        }
        left -= k;
        if left == 0 {
            break;
        }
    }
    true
}

/// Whether the first `len` bytes of the application's `bufs` can be written: one byte of each
/// page they touch read and written back through the user copy (the call is about to write
/// these bytes anyway). For a read that must know before it takes control messages.
pub fn writable(bufs: &mut [IoSliceMut<'_>], len: usize) -> bool {
    let mut left = len;
    for b in bufs.iter_mut() {
        let k = b.len().min(left);
        let ok = each_page(b.as_mut_ptr() as usize, k, |at| {
            // SAFETY: a byte of the application's buffer (possibly bad: the user copy survives
            // that), read, then written back unchanged.
            unsafe { tssx_shm::ucopy::read(at as *const u8).is_some_and(|v| tssx_shm::ucopy::write(at as *mut u8, v)) }
        });
        if !ok {
            return false;
        }
        left -= k;
        if left == 0 {
            break;
        }
    }
    true
}

/// Whether the application's `len` bytes at `ptr` can be written: one byte of every page they
/// touch is read and written back through the user copy (the array is the call's own while it
/// runs). True without a probe when the fault handler is not armed (a probe could not survive a
/// fault then; nothing of the hook writes there before it is armed) or for nothing to write.
///
/// # Safety
/// `ptr` is the application's pointer (possibly bad), [`range`]-checked for `len` bytes, and no
/// other thread of the hook writes those bytes meanwhile.
pub unsafe fn array_writable(ptr: *mut u8, len: usize) -> bool {
    if len == 0 || !crate::fault::is_armed() {
        return true;
    }
    const PAGE: usize = 4096;
    let (start, end) = (ptr as usize, ptr as usize + len);
    let mut at = start;
    while at < end {
        let p = at as *mut u8;
        // SAFETY: within the checked range; the user copy survives a bad page.
        let ok = unsafe { tssx_shm::ucopy::read(p) }.is_some_and(|b| unsafe { tssx_shm::ucopy::write(p, b) });
        if !ok {
            return false;
        }
        at = (at / PAGE + 1) * PAGE;
    }
    true
}

/// A pointer to one value of type `T` the caller passes (an `int` for `FIONREAD`, a
/// `socklen_t`, a `msghdr`): whether it may be dereferenced. Alignment is not required (the
/// kernel does not require it either): read and write such values unaligned.
#[inline]
pub fn value_ok<T>(ptr: *const T) -> bool {
    range(ptr.cast(), std::mem::size_of::<T>()) == Range::Valid
}

/// Reads one value the application passes by pointer (a `msghdr`, an `int`, a `socklen_t`),
/// unaligned: `None` if it fails [`value_ok`] or lies in a bad page (read through the user copy,
/// [`tssx_shm::ucopy`]: EFAULT for the caller, never a signal).
///
/// # Safety
/// `p` is the application's pointer (possibly bad); any bit pattern is a valid `T`.
#[inline]
pub unsafe fn read_value<T: Copy>(p: *const T) -> Option<T> {
    if !value_ok(p) {
        return None;
    }
    // SAFETY: per the contract; the user copy survives a bad page.
    unsafe { tssx_shm::ucopy::read(p) }
}

/// Writes one value into the application's memory at `p`, unaligned: `false` if `p` fails
/// [`value_ok`] or lies in a bad page (read-only, unmapped: see [`read_value`]).
///
/// # Safety
/// `p` is the application's pointer (possibly bad) to a `T`.
#[inline]
pub unsafe fn write_value<T: Copy>(p: *mut T, value: T) -> bool {
    // SAFETY: per the contract; the user copy survives a bad page.
    value_ok(p) && unsafe { tssx_shm::ucopy::write(p, value) }
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
/// An `iov` that passes [`range`] points at `cnt` iovecs of the application (possibly in a bad
/// page), and the slices built over their buffers are only ever copied to or from through the
/// user copy ([`tssx_shm::ucopy`]).
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
    // The array, copied once through the user copy (an array in a bad page: EFAULT, as the
    // kernel's copy of it).
    let mut array = vec![iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; cnt];
    // SAFETY: the application's array of `cnt` iovecs (possibly bad: the user copy survives
    // that) into ours, of the same size; any bit pattern is an iovec.
    if unsafe { tssx_shm::ucopy::copy(array.as_mut_ptr().cast(), iov.cast(), cnt * std::mem::size_of::<iovec>()) } != 0 {
        return Err(libc::EFAULT);
    }
    let entry = |i: usize| array[i];
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
/// itself cannot be read (outside user space, or in a bad page: read through the user copy).
///
/// # Safety
/// `msg` is the application's pointer (possibly bad).
pub unsafe fn msg_iov(msg: *const libc::msghdr) -> Result<(*const iovec, isize), c_int> {
    if !value_ok(msg) {
        return Err(libc::EFAULT);
    }
    // SAFETY: per the contract; the user copy survives a bad page; any bit pattern is a msghdr.
    let Some(m) = (unsafe { tssx_shm::ucopy::read(msg) }) else { return Err(libc::EFAULT) };
    let (iov, len) = (m.msg_iov.cast_const(), m.msg_iovlen);
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
