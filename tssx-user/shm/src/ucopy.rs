//! Copies to and from an application's memory that end at a bad page instead of crashing, as
//! the kernel's `copy_to_user`/`copy_from_user` do with their exception tables.
//!
//! On a plain socket the kernel answers a buffer that runs into an unmapped or read-only page
//! with EFAULT (or with the bytes it moved before, see the hook's `iov` module). The rings are
//! copied in user space, where such a page is a SIGSEGV (SIGBUS for a file mapping past its
//! end). So every copy between a ring and an application's buffer goes through [`copy`], a
//! routine of a few loads and stores (SSE2 moves of 64, 16, 8 and 1 bytes for a copy below
//! 2 KiB, one `rep movsb` from there on) whose addresses are known. When one of them faults,
//! the process's SIGSEGV/SIGBUS handler (the hook's, installed at its first tracked connection; see the
//! hook's `fault` module) asks [`fixup`] where to resume: a fault in the wide moves resumes at
//! the byte loop, which copies what is left up to the faulting byte; a fault in the byte loop
//! or the `rep movsb` resumes at the routine's end (the CPU leaves a faulting `rep movsb`
//! restartable: every byte before the faulting one was copied, `rcx` counts the rest). [`copy`]
//! then returns the bytes it did not move, exactly from the first byte that could not be
//! copied. Any other fault is not the copy's and goes to the application's disposition.
//!
//! Without the handler (a process whose hook has swapped nothing, the agent, a unit test that
//! does not install one) a fault in [`copy`] is the SIGSEGV it always was. On other
//! architectures [`copy`] is a `memcpy` and [`fixup`] knows no address.
//!
//! No thread-local "in a user copy" flag is needed: the faulting instruction's address is the
//! flag (only [`copy`] runs those instructions), as in the kernel's exception tables.
//!
//! Cost (release, a Xeon with ERMS/FSRM, copies in cache, against `copy_nonoverlapping`): 3.3
//! ns for 64 bytes against 1.9, 256 bytes faster, 1 KiB up to 1.5 times slower, 4 KiB and
//! 64 KiB the same; on the hook's fast path not measurable (see the README, "Bad input").

#[cfg(all(target_arch = "x86_64", not(tssx_loom)))]
core::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl tssx_ucopy",
    ".hidden tssx_ucopy",
    ".type tssx_ucopy,@function",
    // rdi: destination, rsi: source, rdx: length; returns in rax the bytes not copied. rcx
    // always holds the bytes not copied yet, rsi/rdi where they start.
    "tssx_ucopy:",
    "mov rcx, rdx",
    "cmp rcx, {rep_from}",
    "jae 50f",
    // Short copies: 64 bytes a round (SSE2, part of x86-64), then 16, then 8, then bytes. A
    // fault here resumes at the byte loop, which copies what is left up to the faulting byte
    // exactly (a round's stores before the fault are simply done again).
    ".globl tssx_ucopy_short",
    ".hidden tssx_ucopy_short",
    "tssx_ucopy_short:",
    "10:",
    "cmp rcx, 64",
    "jb 20f",
    "movdqu xmm0, [rsi]",
    "movdqu xmm1, [rsi + 16]",
    "movdqu xmm2, [rsi + 32]",
    "movdqu xmm3, [rsi + 48]",
    "movdqu [rdi], xmm0",
    "movdqu [rdi + 16], xmm1",
    "movdqu [rdi + 32], xmm2",
    "movdqu [rdi + 48], xmm3",
    "add rsi, 64",
    "add rdi, 64",
    "sub rcx, 64",
    "jmp 10b",
    "20:",
    "cmp rcx, 16",
    "jb 30f",
    "movdqu xmm0, [rsi]",
    "movdqu [rdi], xmm0",
    "add rsi, 16",
    "add rdi, 16",
    "sub rcx, 16",
    "jmp 20b",
    "30:",
    "cmp rcx, 8",
    "jb 40f",
    "mov rax, [rsi]",
    "mov [rdi], rax",
    "add rsi, 8",
    "add rdi, 8",
    "sub rcx, 8",
    "40:",
    ".globl tssx_ucopy_bytes",
    ".hidden tssx_ucopy_bytes",
    "tssx_ucopy_bytes:",
    "test rcx, rcx",
    "jz 60f",
    "41:",
    "mov al, [rsi]",
    "mov [rdi], al",
    "inc rsi",
    "inc rdi",
    "dec rcx",
    "jnz 41b",
    "jmp 60f",
    // Long copies: one `rep movsb` (ERMS/FSRM: as fast as memcpy from a few KiB on), which a
    // fault leaves with rcx counting the bytes from the faulting one on.
    "50:",
    ".globl tssx_ucopy_insn",
    ".hidden tssx_ucopy_insn",
    "tssx_ucopy_insn:",
    "rep movsb",
    "60:",
    ".globl tssx_ucopy_resume",
    ".hidden tssx_ucopy_resume",
    "tssx_ucopy_resume:",
    "mov rax, rcx",
    "ret",
    ".size tssx_ucopy, .-tssx_ucopy",
    rep_from = const REP_FROM,
);

/// From this length on [`copy`] is one `rep movsb`; below, a loop of 64-, 16-, 8- and 1-byte
/// moves (a `rep movsb` costs a few nanoseconds to start, 4 times a 64-byte `memcpy`; by
/// measure, `rep movsb` equals `memcpy` from 4 KiB on and is twice as slow at 1 KiB).
#[cfg(all(target_arch = "x86_64", not(tssx_loom)))]
const REP_FROM: usize = 2048;

#[cfg(all(target_arch = "x86_64", not(tssx_loom)))]
extern "C" {
    /// The copy routine (see the module documentation).
    fn tssx_ucopy(dst: *mut u8, src: *const u8, len: usize) -> usize;
    /// The first instruction of the short loops (a fault from here to [`tssx_ucopy_bytes`]
    /// resumes there). Never called.
    fn tssx_ucopy_short();
    /// The byte loop (a fault in it resumes at [`tssx_ucopy_resume`]). Never called.
    fn tssx_ucopy_bytes();
    /// The `rep movsb` of long copies (a fault resumes at [`tssx_ucopy_resume`]). Never called.
    fn tssx_ucopy_insn();
    /// The routine's end: returns rcx, the bytes not copied. Never called.
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
        let (short, bytes, insn) =
            (tssx_ucopy_short as *const () as usize, tssx_ucopy_bytes as *const () as usize, tssx_ucopy_insn as *const () as usize);
        // Only the loads and stores of these ranges touch memory: a fault in the range is one
        // of them.
        if (short..bytes).contains(&pc) {
            return Some(bytes);
        }
        if (bytes..insn).contains(&pc) || pc == insn {
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
        let src: Vec<u8> = (0..3100u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0usize, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 79, 127, 128, 200, 2047, 2048, 2049, 3000] {
            for off in 0..8 {
                let mut dst = vec![0xAAu8; 3100];
                // SAFETY: both ranges are ours and in bounds.
                let left = unsafe { copy(dst.as_mut_ptr().add(off), src.as_ptr().add(off), len) };
                assert_eq!(left, 0);
                assert_eq!(&dst[off..off + len], &src[off..off + len]);
                assert!(dst[..off].iter().chain(&dst[off + len..]).all(|&b| b == 0xAA));
            }
        }
    }

    #[test]
    fn fixup_knows_only_the_copy_instructions() {
        let (start, short, bytes, insn, resume) = (
            tssx_ucopy as *const () as usize,
            tssx_ucopy_short as *const () as usize,
            tssx_ucopy_bytes as *const () as usize,
            tssx_ucopy_insn as *const () as usize,
            tssx_ucopy_resume as *const () as usize,
        );
        assert!(start < short && short < bytes && bytes < insn && insn < resume);
        assert_eq!(fixup(short), Some(bytes), "a wide move resumes at the byte loop");
        assert_eq!(fixup(bytes - 1), Some(bytes));
        assert_eq!(fixup(bytes), Some(resume), "the byte loop resumes at the end");
        assert_eq!(fixup(insn), Some(resume), "so does the rep movsb");
        assert_eq!(fixup(start), None, "the set-up touches no memory");
        assert_eq!(fixup(resume), None);
        assert_eq!(fixup(insn + 2), None, "rep movsb is two bytes");
        assert_eq!(fixup(0), None);
    }
}
