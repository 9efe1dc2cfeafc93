//! stdio streams over tracked sockets.
//!
//! glibc's stdio reads and writes a stream's fd with its own internal `__read`/`__write`,
//! which no preload can interpose: a `FILE` over a swapped socket would read and write the
//! kernel socket behind the rings' back (bytes lost or stuck). So a stream over a tracked fd
//! is made a `fopencookie` stream whose read, write and close are the hook's own
//! [`calls::read`], [`calls::write`] and [`calls::close`] on that fd, in every phase (plain,
//! migrating, swapped, handed back), with its `_fileno` set to the fd so that `fileno()` answers
//! as for any stream (glibc marks cookie streams with -2 there and treats a fd ≥ 0 as "open";
//! closing the stream then closes the fd through the cookie's close).
//!
//! Three places make such streams:
//! * `fdopen` on a tracked fd (after the real `fdopen` of a duplicate has checked the mode, so
//!   errors and `O_APPEND` are the kernel's and glibc's);
//! * the library constructor, when an exec handed over a connection on fd 0, 1 or 2 (the inetd
//!   pattern): `stdin`, `stdout`, `stderr` are replaced (stderr unbuffered, as glibc's);
//! * `dup2`/`dup3` of a tracked fd onto 0, 1 or 2: the standard stream is replaced, its
//!   pending output moved into the new stream first (plain, it would reach the new fd at the
//!   next flush). A `stdin` that holds read-ahead from the previous fd 0 is left as it is
//!   (that read-ahead comes first, plain as well; later reads then bypass the rings: see the
//!   coverage table).
//!
//! Streams created by `fopen`, `popen` and the like never hold a socket.

use std::{
    ffi::{c_char, c_void, CStr},
    sync::atomic::{AtomicPtr, Ordering::Relaxed},
};

use libc::{c_int, size_t, ssize_t, FILE};

use crate::{calls, sys, table};

/// glibc's `cookie_io_functions_t`.
#[repr(C)]
struct CookieIo {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut c_char, size_t) -> ssize_t>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const c_char, size_t) -> ssize_t>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut i64, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

/// The public head of glibc's `struct _IO_FILE` (`<bits/types/struct_FILE.h>`, a stable ABI):
/// the fields up to `_fileno`.
#[repr(C)]
struct FileHead {
    flags: c_int,
    read_ptr: *mut c_char,
    read_end: *mut c_char,
    read_base: *mut c_char,
    write_base: *mut c_char,
    write_ptr: *mut c_char,
    write_end: *mut c_char,
    buf_base: *mut c_char,
    buf_end: *mut c_char,
    save_base: *mut c_char,
    backup_base: *mut c_char,
    save_end: *mut c_char,
    markers: *mut c_void,
    chain: *mut c_void,
    fileno: c_int,
}

unsafe extern "C" {
    // None of these is one of the hook's exports: they bind to libc.
    fn fopencookie(cookie: *mut c_void, mode: *const c_char, io: CookieIo) -> *mut FILE;
    fn fclose(stream: *mut FILE) -> c_int;
    fn fwrite(data: *const c_void, size: size_t, n: size_t, stream: *mut FILE) -> size_t;
    fn setvbuf(stream: *mut FILE, buf: *mut c_char, mode: c_int, size: size_t) -> c_int;
    static mut stdin: *mut FILE;
    static mut stdout: *mut FILE;
    static mut stderr: *mut FILE;
}

/// The cookie streams this hook made for fds 0, 1, 2: a standard stream that is already one
/// of them (it serves whatever that fd is, through the hook) is not replaced again. Relaxed:
/// only compared with the stream variable, which carries no data of its own.
static STANDARD: [AtomicPtr<FILE>; 3] = [const { AtomicPtr::new(std::ptr::null_mut()) }; 3];

fn cookie_fd(cookie: *mut c_void) -> c_int {
    cookie as usize as c_int
}

/// Runs a cookie callback: no panic may unwind into glibc's stdio.
fn no_unwind<R>(fail: R, f: impl FnOnce() -> R) -> R {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        sys::set_errno(libc::EIO);
        fail
    })
}

unsafe extern "C" fn cookie_read(cookie: *mut c_void, buf: *mut c_char, n: size_t) -> ssize_t {
    // SAFETY: stdio's buffer of `n` bytes.
    no_unwind(-1, || unsafe { calls::read(cookie_fd(cookie), buf.cast(), n) })
}

/// glibc counts a short cookie write as an error (a file stream retries instead): all of it
/// goes, or -1.
unsafe extern "C" fn cookie_write(cookie: *mut c_void, buf: *const c_char, n: size_t) -> ssize_t {
    no_unwind(-1, || {
        let mut done = 0;
        while done < n {
            // SAFETY: stdio's `n` bytes; `done < n`.
            let rc = unsafe { calls::write(cookie_fd(cookie), buf.add(done).cast(), n - done) };
            if rc < 0 {
                if sys::errno() == libc::EINTR {
                    continue;
                }
                return if done > 0 { done as ssize_t } else { -1 };
            }
            done += rc as usize;
        }
        n as ssize_t
    })
}

/// A socket cannot seek (what `lseek` says: ESPIPE).
unsafe extern "C" fn cookie_seek(_cookie: *mut c_void, _offset: *mut i64, _whence: c_int) -> c_int {
    sys::set_errno(libc::ESPIPE);
    -1
}

unsafe extern "C" fn cookie_close(cookie: *mut c_void) -> c_int {
    // SAFETY: the stream owned the fd; closing the stream closes it.
    no_unwind(-1, || unsafe { calls::close(cookie_fd(cookie)) })
}

/// A cookie stream over `fd` with `mode` (`"r"`, `"w"`, `"r+"`, ...), its `_fileno` set.
///
/// # Safety
/// `mode` is a C string.
unsafe fn stream_over(fd: c_int, mode: *const c_char) -> *mut FILE {
    let io = CookieIo { read: Some(cookie_read), write: Some(cookie_write), seek: Some(cookie_seek), close: Some(cookie_close) };
    // SAFETY: a valid mode; the cookie is the fd number, never dereferenced.
    let f = unsafe { fopencookie(fd as usize as *mut c_void, mode, io) };
    if !f.is_null() {
        // SAFETY: a live glibc stream; `_fileno` is a public field of its head.
        unsafe { (*f.cast::<FileHead>()).fileno = fd };
    }
    f
}

/// libc's `fdopen`: a cookie stream for a tracked fd (see the module documentation).
///
/// # Safety
/// As `fdopen`.
pub unsafe fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    if table::lookup(fd).is_none() {
        // SAFETY: forwarded as received.
        return unsafe { sys::fdopen(fd, mode) };
    }
    // glibc's checks and side effects (mode against the fd's access mode, O_APPEND for "a")
    // on a duplicate of the fd (same open file), whose stream is then closed with it.
    let Ok(copy) = tssx_shm::sys::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) else {
        // SAFETY: forwarded as received.
        return unsafe { sys::fdopen(fd, mode) };
    };
    let copy = copy as c_int;
    // SAFETY: the caller's mode; `copy` is ours.
    let check = unsafe { sys::fdopen(copy, mode) };
    if check.is_null() {
        // SAFETY: `copy` is ours, unused elsewhere.
        sys::with_errno_kept(|| unsafe { tssx_shm::sys::close(copy) }).ok();
        return check;
    }
    // SAFETY: the stream we just made; closes `copy` (glibc's own close: untracked).
    sys::with_errno_kept(|| unsafe { fclose(check) });
    // SAFETY: the caller's mode is a C string (fdopen accepted it).
    let cloexec = unsafe { CStr::from_ptr(mode) }.to_bytes().contains(&b'e');
    if cloexec {
        // SAFETY: the hook's fcntl on the caller's fd.
        unsafe { calls::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC as libc::c_ulong) };
    }
    // SAFETY: as above.
    unsafe { stream_over(fd, mode) }
}

/// Replaces the standard stream of `fd` (0, 1 or 2) with a cookie stream if `fd` is tracked.
/// Pending output of the old stream moves into the new one; a `stdin` with read-ahead stays.
pub fn adopt_standard_stream(fd: c_int) {
    // (No connection at all: not even a look at the fd table, whose first page a process
    // would otherwise fault in at start.)
    if !(0..=2).contains(&fd) || !table::any_live() || table::lookup(fd).is_none() {
        return;
    }
    sys::with_errno_kept(|| {
        // SAFETY: the process's standard stream variables (libc's, or the executable's copies
        // libc uses): read and replaced here as glibc allows; a hooked process does this in
        // the constructor (single-threaded) or in dup2, like the application's own assignment.
        unsafe {
            let slot = match fd {
                0 => &raw mut stdin,
                1 => &raw mut stdout,
                _ => &raw mut stderr,
            };
            let old = slot.read();
            if old.is_null() || old == STANDARD[fd as usize].load(Relaxed) {
                return;
            }
            let head = old.cast::<FileHead>();
            if (*head).fileno == fd && fd == 0 && (*head).read_ptr < (*head).read_end {
                return; // read-ahead from the previous fd 0 comes first
            }
            let new = stream_over(fd, if fd == 0 { c"r" } else { c"w" }.as_ptr());
            if new.is_null() {
                return;
            }
            if fd == 2 {
                setvbuf(new, std::ptr::null_mut(), libc::_IONBF, 0);
            }
            let pending = (*head).write_ptr.offset_from((*head).write_base);
            if fd != 0 && pending > 0 {
                fwrite((*head).write_base.cast(), 1, pending as size_t, new);
                (*head).write_ptr = (*head).write_base;
            }
            STANDARD[fd as usize].store(new, Relaxed);
            slot.write(new);
        }
    })
}
