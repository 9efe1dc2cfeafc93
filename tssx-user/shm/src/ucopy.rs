//! Copies to and from an application's memory that end at a bad page instead of crashing, as
//! the kernel's `copy_to_user`/`copy_from_user` do with their exception tables.
//!
//! On a plain socket the kernel answers a buffer that runs into an unmapped or read-only page
//! with EFAULT (or with the bytes it moved before, see the hook's `iov` module). The rings are
//! copied in user space, where such a page is a SIGSEGV (SIGBUS for a file mapping past its
//! end). So every copy between a ring and an application's buffer goes through [`copy`]: one
//! `rep movsb` (x86-64; fast for short and long copies alike on CPUs with ERMS/FSRM) whose
//! address is known. When that instruction faults, the process's SIGSEGV/SIGBUS handler (the
//! hook's, installed at its first swap; see the hook's `fault` module) asks [`fixup`] where to
//! resume: just after the instruction, where `rcx` still holds the bytes the copy did not
//! move (the CPU leaves a faulting `rep movsb` restartable: every byte before the faulting one
//! was copied, `rcx` counts the rest). [`copy`] then returns that count. Any other fault is
//! not the copy's and goes to the application's disposition.
//!
//! Without the handler (a process whose hook has swapped nothing, the agent, a unit test that
//! does not install one) a fault in [`copy`] is the SIGSEGV it always was. On other
//! architectures [`copy`] is a `memcpy` and [`fixup`] knows no address.
//!
//! No thread-local "in a user copy" flag is needed: the faulting instruction's address is the
//! flag (only [`copy`] runs that instruction), as in the kernel's exception tables.

#[cfg(all(target_arch = "x86_64", not(tssx_loom)))]
core::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl tssx_ucopy",
    ".hidden tssx_ucopy",
    ".type tssx_ucopy,@function",
    // rdi: destination, rsi: source, rdx: length; returns in rax the bytes not copied.
    "tssx_ucopy:",
    "mov rcx, rdx",
    ".globl tssx_ucopy_insn",
    ".hidden tssx_ucopy_insn",
    "tssx_ucopy_insn:",
    "rep movsb",
    ".globl tssx_ucopy_resume",
    ".hidden tssx_ucopy_resume",
    "tssx_ucopy_resume:",
    "mov rax, rcx",
    "ret",
    ".size tssx_ucopy, .-tssx_ucopy",
);

#[cfg(all(target_arch = "x86_64", not(tssx_loom)))]
extern "C" {
    /// The copy routine (see the module documentation).
    fn tssx_ucopy(dst: *mut u8, src: *const u8, len: usize) -> usize;
    /// The routine's `rep movsb`: the only instruction of it that touches memory. Never called.
    fn tssx_ucopy_insn();
    /// The instruction after it. Never called.
    fn tssx_ucopy_resume();
}

/// Copies `len` bytes from `src` to `dst` and returns how many it did not copy: 0 normally;
/// after a fault that the process's handler resolved with [`fixup`], the bytes from the
/// faulting one on (the bytes before it were copied).
///
/// # Safety
/// The ranges do not overlap; each is either memory the caller may access for `len` bytes, or
/// application memory that may be unmapped or read-only (a fault there ends the copy when the
/// handler is installed, and is a SIGSEGV otherwise). Neither range may be Rust memory that
/// another thread accesses meanwhile.
#[inline]
pub unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> usize {
    #[cfg(all(target_arch = "x86_64", not(tssx_loom)))]
    {
        // SAFETY: per the contract; the routine touches exactly `dst..dst + len` and
        // `src..src + len`, keeps the ABI (rdi, rsi, rcx clobbered as scratch registers), and
        // returns normally, from its end or from the resume point.
        unsafe { tssx_ucopy(dst, src, len) }
    }
    #[cfg(not(all(target_arch = "x86_64", not(tssx_loom))))]
    {
        // SAFETY: per the contract (no fault recovery here).
        unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
        0
    }
}

/// Where a thread whose instruction at `pc` faulted resumes, if that instruction is [`copy`]'s
/// (for the SIGSEGV/SIGBUS handler: it sets the context's instruction pointer to it and
/// returns). Async-signal-safe.
#[inline]
pub fn fixup(pc: usize) -> Option<usize> {
    #[cfg(all(target_arch = "x86_64", not(tssx_loom)))]
    {
        if pc == tssx_ucopy_insn as *const () as usize {
            return Some(tssx_ucopy_resume as *const () as usize);
        }
    }
    let _ = pc;
    None
}

/// Copies `src` into the application's memory at `dst`: `Err(copied)` if it faulted after
/// `copied` bytes (see [`copy`]).
///
/// # Safety
/// As [`copy`]: `dst` is the application's memory for `src.len()` bytes (possibly bad).
#[inline]
pub unsafe fn to_user(dst: *mut u8, src: &[u8]) -> Result<(), usize> {
    // SAFETY: per the contract; `src` is ours.
    match unsafe { copy(dst, src.as_ptr(), src.len()) } {
        0 => Ok(()),
        left => Err(src.len() - left),
    }
}

/// Copies the application's memory at `src` into `dst`: `Err(copied)` if it faulted after
/// `copied` bytes (see [`copy`]).
///
/// # Safety
/// As [`copy`]: `src` is the application's memory for `dst.len()` bytes (possibly bad).
#[inline]
pub unsafe fn from_user(dst: &mut [u8], src: *const u8) -> Result<(), usize> {
    // SAFETY: per the contract; `dst` is ours.
    match unsafe { copy(dst.as_mut_ptr(), src, dst.len()) } {
        0 => Ok(()),
        left => Err(dst.len() - left),
    }
}

/// Reads one `T` (plain data) from the application's memory at `src`, unaligned; `None` if it
/// faulted.
///
/// # Safety
/// As [`copy`], and any bit pattern is a valid `T`.
#[inline]
pub unsafe fn read<T: Copy>(src: *const T) -> Option<T> {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: per the contract; our local is valid for `size_of::<T>()` bytes.
    let left = unsafe { copy(v.as_mut_ptr().cast(), src.cast(), core::mem::size_of::<T>()) };
    // SAFETY: fully written when nothing is left, and any bit pattern is a `T`.
    (left == 0).then(|| unsafe { v.assume_init() })
}

/// Writes one `T` into the application's memory at `dst`, unaligned; `false` if it faulted
/// (the bytes before the fault are written, as the kernel's `put_user` of a larger value may).
///
/// # Safety
/// As [`copy`].
#[inline]
pub unsafe fn write<T: Copy>(dst: *mut T, value: T) -> bool {
    // SAFETY: per the contract; our local is valid for `size_of::<T>()` bytes.
    unsafe { copy(dst.cast(), (&raw const value).cast(), core::mem::size_of::<T>()) == 0 }
}

#[cfg(all(test, target_arch = "x86_64", not(tssx_loom)))]
mod tests {
    use super::*;

    #[test]
    fn copies_like_memcpy_at_every_length_and_alignment() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0usize, 1, 7, 8, 15, 16, 63, 64, 65, 200] {
            for off in 0..8 {
                let mut dst = vec![0xAAu8; 300];
                // SAFETY: both ranges are ours and in bounds.
                let left = unsafe { copy(dst.as_mut_ptr().add(off), src.as_ptr().add(off), len) };
                assert_eq!(left, 0);
                assert_eq!(&dst[off..off + len], &src[off..off + len]);
                assert!(dst[..off].iter().chain(&dst[off + len..]).all(|&b| b == 0xAA));
            }
        }
    }

    #[test]
    fn fixup_knows_only_the_copy_instruction() {
        let insn = tssx_ucopy_insn as *const () as usize;
        assert_eq!(fixup(insn), Some(tssx_ucopy_resume as *const () as usize));
        assert_eq!(fixup(insn + 1), None);
        assert_eq!(fixup(insn - 1), None);
        assert_eq!(fixup(0), None);
        // `rep movsb` is two bytes: the resume point follows it.
        assert_eq!(tssx_ucopy_resume as *const () as usize, insn + 2);
    }
}
