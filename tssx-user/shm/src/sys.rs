//! The system calls of the shared-memory core, made with the `syscall` instruction itself.
//!
//! This crate runs inside the preload hook, which exports `close`, `fcntl`, `sendmsg`,
//! `recvmsg`, `syscall` and more under libc's names: a call to `libc::close` from here would
//! bind to the hook's own export, not to libc. So nothing here calls libc for a system call;
//! each wrapper traps into the kernel directly, returns the kernel's result, and never touches
//! the thread's `errno` (the hook must not change `errno` behind the application's back).
//!
//! Only x86-64 and aarch64 are supported (the hook's exec trampolines are x86-64 too).

use core::ffi::{c_int, c_void};

/// An `errno` value returned by a failed system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub c_int);

impl Errno {
    /// The error as an [`std::io::Error`].
    pub fn io(self) -> std::io::Error {
        std::io::Error::from_raw_os_error(self.0)
    }
}

impl core::fmt::Display for Errno {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.io(), f)
    }
}

impl std::error::Error for Errno {}

/// The result of a raw system call.
pub type SysResult = Result<usize, Errno>;

#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn raw6(nr: libc::c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the x86-64 Linux system call convention (rax = number, rdi, rsi, rdx, r10, r8, r9 =
    // arguments; rcx and r11 are clobbered); the caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2], in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

#[cfg(target_arch = "aarch64")]
#[inline]
unsafe fn raw6(nr: libc::c_long, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the aarch64 Linux system call convention (x8 = number, x0-x5 = arguments, x0 =
    // result); the caller vouches for the arguments.
    unsafe {
        core::arch::asm!(
            "svc 0",
            in("x8") nr as usize,
            inlateout("x0") a[0] => ret, in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack),
        );
    }
    ret
}

/// Makes system call `nr` with up to six arguments (unused ones zero).
///
/// # Safety
/// The arguments must be what the kernel expects for `nr` (pointers valid for what it reads or
/// writes), and the call must not break an invariant of the process (e.g. closing an fd that
/// something else owns).
#[inline]
pub unsafe fn syscall(nr: libc::c_long, args: [usize; 6]) -> SysResult {
    // SAFETY: per the contract.
    let ret = unsafe { raw6(nr, args) };
    // The kernel returns -4095..-1 for errors.
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret as c_int))
    } else {
        Ok(ret as usize)
    }
}

/// `close(fd)`.
///
/// # Safety
/// `fd` must be owned by the caller and not used afterwards.
pub unsafe fn close(fd: c_int) -> SysResult {
    // SAFETY: per the contract.
    unsafe { syscall(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]) }
}

/// `mincore(addr, len, vec)`: one byte per page of `addr..addr + len` into `vec`, bit 0 set
/// when the page is resident (for a shared file mapping: in the file's page cache, whoever
/// touched it).
///
/// # Safety
/// `addr` is page-aligned and `addr..addr + len` mapped; `vec` holds at least one byte per page.
pub unsafe fn mincore(addr: *const c_void, len: usize, vec: &mut [u8]) -> SysResult {
    // SAFETY: per the contract; the kernel writes at most one byte per page into `vec`.
    unsafe { syscall(libc::SYS_mincore, [addr as usize, len, vec.as_mut_ptr() as usize, 0, 0, 0]) }
}

/// `fcntl(fd, cmd, arg)` for commands that take an integer (or nothing).
pub fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> SysResult {
    // SAFETY: integer-argument commands read and write no memory of ours; an invalid fd fails.
    unsafe { syscall(libc::SYS_fcntl, [fd as usize, cmd as usize, arg, 0, 0, 0]) }
}

/// `fstat(fd)`.
pub fn fstat(fd: c_int) -> Result<libc::stat, Errno> {
    // SAFETY: `stat` is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: a valid out-pointer; glibc's `struct stat` is the kernel's on x86-64 and aarch64.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        syscall(libc::SYS_fstat, [fd as usize, &mut st as *mut libc::stat as usize, 0, 0, 0, 0])?
    };
    // SAFETY: as above; newfstatat with AT_EMPTY_PATH and "" is fstat.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        syscall(
            libc::SYS_newfstatat,
            [fd as usize, c"".as_ptr() as usize, &mut st as *mut libc::stat as usize, libc::AT_EMPTY_PATH as usize, 0, 0],
        )?
    };
    Ok(st)
}

/// `memfd_create(name, flags)`: a new fd owned by the result.
pub fn memfd_create(name: &core::ffi::CStr, flags: libc::c_uint) -> Result<Fd, Errno> {
    // SAFETY: a NUL-terminated name; the new fd is owned by the result alone.
    let fd = unsafe { syscall(libc::SYS_memfd_create, [name.as_ptr() as usize, flags as usize, 0, 0, 0, 0]) }?;
    // SAFETY: as above.
    Ok(unsafe { Fd::from_raw(fd as c_int) })
}

/// `ftruncate(fd, len)`.
pub fn ftruncate(fd: c_int, len: u64) -> SysResult {
    // SAFETY: no memory is passed; an invalid fd fails.
    unsafe { syscall(libc::SYS_ftruncate, [fd as usize, len as usize, 0, 0, 0, 0]) }
}

/// `mmap(NULL, len, prot, flags, fd, 0)`.
pub fn mmap_shared(fd: c_int, len: usize) -> Result<*mut c_void, Errno> {
    // SAFETY: a fresh mapping chosen by the kernel aliases nothing in this process.
    let addr = unsafe {
        syscall(libc::SYS_mmap, [0, len, (libc::PROT_READ | libc::PROT_WRITE) as usize, libc::MAP_SHARED as usize, fd as usize, 0])
    }?;
    Ok(addr as *mut c_void)
}

/// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS)`: zeroed memory that
/// a forked child shares with its parent.
pub fn mmap_shared_anon(len: usize) -> Result<*mut c_void, Errno> {
    let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
    // SAFETY: a fresh mapping chosen by the kernel aliases nothing in this process.
    let addr = unsafe { syscall(libc::SYS_mmap, [0, len, (libc::PROT_READ | libc::PROT_WRITE) as usize, flags as usize, usize::MAX, 0]) }?;
    Ok(addr as *mut c_void)
}

/// `mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)`: address space
/// reserved, nothing accessible (guard pages).
pub fn mmap_reserve(len: usize) -> Result<*mut c_void, Errno> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a fresh mapping chosen by the kernel aliases nothing in this process.
    let addr = unsafe { syscall(libc::SYS_mmap, [0, len, libc::PROT_NONE as usize, flags as usize, usize::MAX, 0]) }?;
    Ok(addr as *mut c_void)
}

/// `mmap(addr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0)`.
///
/// # Safety
/// `addr..addr + len` must be address space of the caller's (e.g. reserved with
/// [`mmap_reserve`]) that nothing references: it is replaced.
pub unsafe fn mmap_shared_at(fd: c_int, len: usize, addr: *mut c_void) -> Result<*mut c_void, Errno> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let flags = libc::MAP_SHARED | libc::MAP_FIXED;
    // SAFETY: per the contract.
    let addr = unsafe { syscall(libc::SYS_mmap, [addr as usize, len, prot as usize, flags as usize, fd as usize, 0]) }?;
    Ok(addr as *mut c_void)
}

/// `munmap(addr, len)`.
///
/// # Safety
/// `addr..addr + len` must be a mapping nothing references any more.
pub unsafe fn munmap(addr: *mut c_void, len: usize) -> SysResult {
    // SAFETY: per the contract.
    unsafe { syscall(libc::SYS_munmap, [addr as usize, len, 0, 0, 0, 0]) }
}

/// `sendmsg(fd, msg, flags)`.
///
/// # Safety
/// `msg` and every buffer it points at must be valid for the call.
pub unsafe fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> SysResult {
    // SAFETY: per the contract.
    unsafe { syscall(libc::SYS_sendmsg, [fd as usize, msg as usize, flags as usize, 0, 0, 0]) }
}

/// `recvmsg(fd, msg, flags)`.
///
/// # Safety
/// `msg` and every buffer it points at must be valid for the call; fds the kernel installs are
/// the caller's to own.
pub unsafe fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> SysResult {
    // SAFETY: per the contract.
    unsafe { syscall(libc::SYS_recvmsg, [fd as usize, msg as usize, flags as usize, 0, 0, 0]) }
}

/// `socket(domain, kind, protocol)`: a new fd owned by the result.
pub fn socket(domain: c_int, kind: c_int, protocol: c_int) -> Result<Fd, Errno> {
    // SAFETY: no memory is passed; the new fd is owned by the result alone.
    let fd = unsafe { syscall(libc::SYS_socket, [domain as usize, kind as usize, protocol as usize, 0, 0, 0]) }?;
    // SAFETY: as above.
    Ok(unsafe { Fd::from_raw(fd as c_int) })
}

/// `connect(fd, addr, len)`.
///
/// # Safety
/// `addr` must point at `len` readable bytes.
pub unsafe fn connect(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> SysResult {
    // SAFETY: per the contract.
    unsafe { syscall(libc::SYS_connect, [fd as usize, addr as usize, len as usize, 0, 0, 0]) }
}

/// `getsockopt(fd, level, name, value, len)` into a plain value of type `T`.
pub fn getsockopt<T: Copy>(fd: c_int, level: c_int, name: c_int, value: &mut T) -> Result<libc::socklen_t, Errno> {
    let mut len = core::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`, a live `T`.
    unsafe {
        syscall(
            libc::SYS_getsockopt,
            [fd as usize, level as usize, name as usize, value as *mut T as usize, &mut len as *mut libc::socklen_t as usize, 0],
        )
    }?;
    Ok(len)
}

/// `setsockopt(fd, level, name, value, size_of::<T>())`.
pub fn setsockopt<T: Copy>(fd: c_int, level: c_int, name: c_int, value: &T) -> SysResult {
    // SAFETY: the kernel reads `size_of::<T>()` bytes from `value`, a live `T`.
    unsafe {
        syscall(
            libc::SYS_setsockopt,
            [fd as usize, level as usize, name as usize, value as *const T as usize, core::mem::size_of::<T>(), 0],
        )
    }
}

/// `getsockname(fd)` into a `sockaddr_un`; returns the address and its length.
pub fn getsockname_un(fd: c_int) -> Result<(libc::sockaddr_un, libc::socklen_t), Errno> {
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    let mut len = core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `addr`.
    unsafe {
        syscall(
            libc::SYS_getsockname,
            [fd as usize, &mut addr as *mut libc::sockaddr_un as usize, &mut len as *mut libc::socklen_t as usize, 0, 0, 0],
        )
    }?;
    Ok((addr, len))
}

/// `sendto(fd, buf, len, flags, NULL, 0)`.
pub fn send(fd: c_int, buf: &[u8], flags: c_int) -> SysResult {
    // SAFETY: the kernel reads `buf.len()` bytes from a live slice.
    unsafe { syscall(libc::SYS_sendto, [fd as usize, buf.as_ptr() as usize, buf.len(), flags as usize, 0, 0]) }
}

/// `recvfrom(fd, buf, len, flags, NULL, NULL)`.
pub fn recv(fd: c_int, buf: &mut [u8], flags: c_int) -> SysResult {
    // SAFETY: the kernel writes at most `buf.len()` bytes into a live slice.
    unsafe { syscall(libc::SYS_recvfrom, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), flags as usize, 0, 0]) }
}

/// `sched_yield()`.
pub fn sched_yield() {
    // SAFETY: no arguments, no effect on memory.
    let _ = unsafe { syscall(libc::SYS_sched_yield, [0; 6]) };
}

/// `gettid()`.
pub fn gettid() -> u32 {
    // SAFETY: no arguments, no effect on memory; never fails.
    unsafe { syscall(libc::SYS_gettid, [0; 6]) }.unwrap_or(0) as u32
}

/// `getpid()`.
pub fn getpid() -> u32 {
    // SAFETY: no arguments, no effect on memory; never fails.
    unsafe { syscall(libc::SYS_getpid, [0; 6]) }.unwrap_or(0) as u32
}

/// Sends `signal` to the calling thread (`tgkill(getpid(), gettid(), signal)`), as the kernel
/// does for SIGPIPE on a failed socket write.
pub fn raise_in_thread(signal: c_int) {
    // SAFETY: signals our own thread; no memory is passed.
    let _ = unsafe { syscall(libc::SYS_tgkill, [getpid() as usize, gettid() as usize, signal as usize, 0, 0, 0]) };
}

/// `newfstatat(AT_FDCWD, path, 0)`: `stat(path)`.
pub fn stat(path: &core::ffi::CStr) -> Result<libc::stat, Errno> {
    // SAFETY: `stat` is plain data; all-zero is a valid value.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer (glibc's `struct stat` is the
    // kernel's on x86-64 and aarch64).
    unsafe {
        syscall(libc::SYS_newfstatat, [libc::AT_FDCWD as usize, path.as_ptr() as usize, &mut st as *mut libc::stat as usize, 0, 0, 0])
    }?;
    Ok(st)
}

/// `readlinkat(AT_FDCWD, path, buf)`: the link's target length (not NUL-terminated).
pub fn readlink(path: &core::ffi::CStr, buf: &mut [u8]) -> SysResult {
    // SAFETY: a NUL-terminated path; the kernel writes at most `buf.len()` bytes.
    unsafe { syscall(libc::SYS_readlinkat, [libc::AT_FDCWD as usize, path.as_ptr() as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0]) }
}

/// `pread(fd, buf, offset)`: bytes read into `buf`.
pub fn pread(fd: c_int, buf: &mut [u8], offset: i64) -> SysResult {
    // SAFETY: the kernel writes at most `buf.len()` bytes into a live slice.
    unsafe { syscall(libc::SYS_pread64, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), offset as usize, 0, 0]) }
}

/// `lseek(fd, offset, whence)`: the new file offset.
pub fn lseek(fd: c_int, offset: i64, whence: c_int) -> SysResult {
    // SAFETY: no memory is passed.
    unsafe { syscall(libc::SYS_lseek, [fd as usize, offset as usize, whence as usize, 0, 0, 0]) }
}

/// Reads a whole (small) file into `buf`; returns how many bytes it holds (at most
/// `buf.len()`; a longer file is cut).
pub fn read_file(path: &core::ffi::CStr, buf: &mut [u8]) -> SysResult {
    // SAFETY: a NUL-terminated path; the new fd is owned below.
    let fd = unsafe {
        syscall(libc::SYS_openat, [libc::AT_FDCWD as usize, path.as_ptr() as usize, (libc::O_RDONLY | libc::O_CLOEXEC) as usize, 0, 0, 0])
    }?;
    // SAFETY: the fd is new and ours.
    let fd = unsafe { Fd::from_raw(fd as c_int) };
    let mut n = 0;
    while n < buf.len() {
        // SAFETY: the kernel writes at most the rest of `buf`.
        let got = unsafe { syscall(libc::SYS_read, [fd.raw() as usize, buf[n..].as_mut_ptr() as usize, buf.len() - n, 0, 0, 0]) };
        match got {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(Errno(libc::EINTR)) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An owned file descriptor, closed (with a raw system call) on drop.
///
/// The shared-memory core's replacement for [`std::os::fd::OwnedFd`], whose `Drop` calls
/// `libc::close`, which inside the hook would be the hook's own `close`.
#[derive(Debug)]
pub struct Fd(c_int);

impl Fd {
    /// Takes ownership of `fd`.
    ///
    /// # Safety
    /// `fd` must be open and owned by nobody else.
    pub unsafe fn from_raw(fd: c_int) -> Fd {
        Fd(fd)
    }

    /// The raw descriptor (still owned by `self`).
    #[inline]
    pub fn raw(&self) -> c_int {
        self.0
    }

    /// Gives up ownership: the caller must close the descriptor.
    pub fn into_raw(self) -> c_int {
        let fd = self.0;
        core::mem::forget(self);
        fd
    }

    /// A borrowed view for APIs that take one.
    pub fn borrow(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: the fd stays open as long as `self`, which the borrow cannot outlive.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.0) }
    }
}

impl From<Fd> for std::os::fd::OwnedFd {
    fn from(fd: Fd) -> Self {
        // SAFETY: ownership moves from one owner type to the other.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(fd.into_raw()) }
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: owned by `self`, never used again. An error (EBADF, EINTR) leaves nothing to do.
        let _ = unsafe { close(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_come_back_as_errno_and_leave_errno_alone() {
        // SAFETY: writes the thread's errno.
        unsafe { *libc::__errno_location() = 1234 };
        assert_eq!(fcntl(-1, libc::F_GETFD, 0), Err(Errno(libc::EBADF)));
        // SAFETY: reads the thread's errno.
        assert_eq!(unsafe { *libc::__errno_location() }, 1234);
    }

    #[test]
    fn memfd_fstat_truncate_map_close() {
        let fd = memfd_create(c"tssx-sys-test", libc::MFD_CLOEXEC).unwrap();
        ftruncate(fd.raw(), 8192).unwrap();
        let st = fstat(fd.raw()).unwrap();
        assert_eq!((st.st_size, st.st_mode & libc::S_IFMT), (8192, libc::S_IFREG));
        assert_eq!(fcntl(fd.raw(), libc::F_GETFD, 0), Ok(libc::FD_CLOEXEC as usize));
        let p = mmap_shared(fd.raw(), 8192).unwrap();
        // SAFETY: our fresh mapping of 8192 bytes.
        unsafe {
            p.cast::<u8>().write(7);
            munmap(p, 8192).unwrap();
        }
        let raw = fd.raw();
        drop(fd);
        assert_eq!(fcntl(raw, libc::F_GETFD, 0), Err(Errno(libc::EBADF)));
    }
}
