//! `splice` with a swapped socket on one side and a pipe on the other, served on the rings
//! through a bounce buffer with the kernel's semantics (Linux's `splice_to_socket` and
//! `unix_stream_splice_read`), so that no byte bypasses the rings' order.
//!
//! * pipe → socket: waits for data in the pipe as the kernel does (EAGAIN with
//!   `SPLICE_F_NONBLOCK` or a non-blocking pipe; 0 when the pipe is empty and has no writer;
//!   once something moved, never waits for more), copies what the pipe holds (up to `len`)
//!   without consuming it (`tee` into a private pipe, then `read`), sends it with the hook's
//!   [`Conn::send`] (the socket's O_NONBLOCK, SO_SNDTIMEO, EPIPE and SIGPIPE as for a `send`
//!   without flags), and only then consumes from the pipe exactly what was sent: a partial send
//!   (a full ring on a non-blocking socket, a timeout) loses nothing.
//! * socket → pipe: waits for room in the pipe as the kernel does (EAGAIN with
//!   `SPLICE_F_NONBLOCK` or a non-blocking pipe, EPIPE and SIGPIPE when the pipe has no reader),
//!   peeks the socket with the hook's [`Conn::recv`] (it waits for data unless the socket or the
//!   call is non-blocking; 0 at EOF), writes to the pipe without waiting, and then consumes from
//!   the socket exactly what the pipe took.
//!
//! Every other combination fails in the kernel before anything moves (neither side a pipe,
//! an offset on the pipe side: ESPIPE; an offset on the socket side: EINVAL, a socket has no
//! position; the wrong end of the pipe: EBADF; unknown flags: EINVAL) or moves nothing (`len`
//! 0): [`served`] leaves those to the real call. Not reproduced: another reader of the same
//! input pipe (or another reader of the same socket) between the copy and the consume would
//! make the consumed bytes differ from the sent ones; a signal while waiting ends the call with
//! EINTR even under SA_RESTART (the kernel restarts a splice that moved nothing).

use std::io::{IoSlice, IoSliceMut};

use libc::c_int;

use crate::{conn::Conn, stream::partial_or_errno, sys};

/// `SPLICE_F_MOVE | SPLICE_F_NONBLOCK | SPLICE_F_MORE | SPLICE_F_GIFT`: the flags the kernel
/// accepts (others: EINVAL).
const SPLICE_F_ALL: libc::c_uint = 0x0f;

/// The most one round moves through the bounce buffer (a default pipe's capacity).
const BOUNCE: usize = 64 * 1024;

/// Which way a `splice` call goes through the swapped socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// From a pipe into the socket (`fd_out` is the socket).
    IntoSocket,
    /// From the socket into a pipe (`fd_in` is the socket).
    OutOfSocket,
}

/// Whether the hook serves this call on the rings: `pipe` is a pipe (or FIFO) opened for the
/// direction the call needs, no offset is given, the flags are the kernel's and `len` is not 0.
/// Anything else fails in the kernel before it moves a byte (or moves none), so the caller
/// makes the real call.
pub fn served(way: Way, pipe: c_int, off_pipe: bool, off_socket: bool, len: usize, flags: libc::c_uint) -> bool {
    if len == 0 || flags & !SPLICE_F_ALL != 0 || off_pipe || off_socket {
        return false;
    }
    let Ok(st) = sys::fstat(pipe) else { return false };
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return false;
    }
    let Ok(fl) = tssx_shm::sys::fcntl(pipe, libc::F_GETFL, 0) else { return false };
    let access = fl as c_int & libc::O_ACCMODE;
    match way {
        Way::IntoSocket => access == libc::O_RDONLY || access == libc::O_RDWR,
        Way::OutOfSocket => access == libc::O_WRONLY || access == libc::O_RDWR,
    }
}

/// Whether a pipe end is non-blocking for this call (`SPLICE_F_NONBLOCK`, or the pipe's own
/// O_NONBLOCK, which the kernel turns into that flag).
fn pipe_nonblocking(pipe: c_int, flags: libc::c_uint) -> bool {
    flags & libc::SPLICE_F_NONBLOCK != 0 || sys::fd_nonblocking(pipe)
}

/// `poll` on one fd; the revents (0 on timeout), or the errno.
fn poll_one(fd: c_int, events: i16, timeout: c_int) -> Result<i16, c_int> {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one live pollfd.
    let n = unsafe { sys::poll(&mut p, 1, timeout) };
    if n < 0 {
        Err(sys::errno())
    } else {
        Ok(p.revents)
    }
}

/// `read(fd, buf)` as a raw system call.
fn read_raw(fd: c_int, buf: &mut [u8]) -> Result<usize, c_int> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into a live slice.
    unsafe { tssx_shm::sys::syscall(libc::SYS_read, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0]) }.map_err(|e| e.0)
}

/// `write(fd, buf)` as a raw system call.
fn write_raw(fd: c_int, buf: &[u8]) -> Result<usize, c_int> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from a live slice.
    unsafe { tssx_shm::sys::syscall(libc::SYS_write, [fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0]) }.map_err(|e| e.0)
}

/// `splice(from, NULL, to, NULL, len, flags)` as a raw system call.
fn splice_raw(from: c_int, to: c_int, len: usize, flags: libc::c_uint) -> Result<usize, c_int> {
    // SAFETY: no memory is passed (null offsets).
    unsafe { tssx_shm::sys::syscall(libc::SYS_splice, [from as usize, 0, to as usize, 0, len, flags as usize]) }.map_err(|e| e.0)
}

/// A private pipe (close-on-exec, non-blocking: only the hook uses it), closed on drop.
pub(crate) struct Scratch([tssx_shm::sys::Fd; 2]);

impl Scratch {
    pub(crate) fn new() -> Result<Scratch, c_int> {
        let mut fds = [0 as c_int; 2];
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the kernel writes two fds into a live array.
        unsafe { tssx_shm::sys::syscall(libc::SYS_pipe2, [fds.as_mut_ptr() as usize, flags as usize, 0, 0, 0, 0]) }.map_err(|e| e.0)?;
        // SAFETY: two new fds, owned by nobody else.
        Ok(Scratch(unsafe { [tssx_shm::sys::Fd::from_raw(fds[0]), tssx_shm::sys::Fd::from_raw(fds[1])] }))
    }

    /// The write end.
    pub(crate) fn writer(&self) -> c_int {
        self.0[1].raw()
    }

    /// Reads what the pipe holds into `buf` (as much as fits); the bytes read.
    pub(crate) fn read_into(&self, buf: &mut [u8]) -> usize {
        let mut got = 0;
        while got < buf.len() {
            match read_raw(self.0[0].raw(), &mut buf[got..]) {
                Ok(n) if n > 0 => got += n,
                _ => break,
            }
        }
        got
    }

    /// Reads out whatever the pipe still holds.
    fn empty(&self, buf: &mut [u8]) {
        while matches!(read_raw(self.0[0].raw(), buf), Ok(n) if n > 0) {}
    }
}

impl Conn {
    /// `splice(pipe, NULL, fd, NULL, len, flags)` on the rings (see the module documentation).
    /// `None`: the connection went plain before anything moved; the caller makes the real
    /// call.
    pub fn splice_in(&self, fd: c_int, pipe: c_int, len: usize, flags: libc::c_uint) -> Option<isize> {
        let nonblock = pipe_nonblocking(pipe, flags);
        let scratch = match Scratch::new() {
            Ok(s) => s,
            Err(e) => return Some(partial_or_errno(0, e)),
        };
        let mut bounce = vec![0u8; len.min(BOUNCE)];
        let mut total = 0usize;
        while total < len {
            let revents = match poll_one(pipe, libc::POLLIN, 0) {
                Ok(r) => r,
                Err(e) => return Some(partial_or_errno(total, e)),
            };
            if revents & libc::POLLIN == 0 {
                if revents & libc::POLLHUP != 0 || total > 0 {
                    // Empty with no writer (0), or something moved already.
                    return Some(total as isize);
                }
                if nonblock {
                    return Some(partial_or_errno(0, libc::EAGAIN));
                }
                if let Err(e) = poll_one(pipe, libc::POLLIN, -1) {
                    return Some(partial_or_errno(0, e));
                }
                continue;
            }
            let want = (len - total).min(bounce.len());
            // A copy of the pipe's first bytes, the pipe left as it is.
            // SAFETY: the tee system call on two pipes; no memory is passed.
            let teed = unsafe {
                tssx_shm::sys::syscall(
                    libc::SYS_tee,
                    [pipe as usize, scratch.0[1].raw() as usize, want, libc::SPLICE_F_NONBLOCK as usize, 0, 0],
                )
            };
            let n = match teed {
                Ok(0) => return Some(total as isize),
                Ok(n) => n,
                Err(tssx_shm::sys::Errno(libc::EAGAIN)) => continue, // taken by another reader
                Err(e) => return Some(partial_or_errno(total, e.0)),
            };
            let got = match read_raw(scratch.0[0].raw(), &mut bounce[..n]) {
                Ok(got) => got,
                Err(e) => return Some(partial_or_errno(total, e)),
            };
            let sent = match self.send(fd, &[IoSlice::new(&bounce[..got])], 0) {
                Some(sent) => sent,
                None if total == 0 => return None,
                None => return Some(total as isize),
            };
            if sent <= 0 {
                return Some(if total > 0 { total as isize } else { sent });
            }
            // Consume what was sent (it is in the pipe: a blocking read returns at once).
            let mut left = sent as usize;
            while left > 0 {
                match read_raw(pipe, &mut bounce[..left]) {
                    Ok(0) => break,
                    Ok(k) => left -= k,
                    Err(libc::EINTR) => {}
                    Err(_) => break,
                }
            }
            total += sent as usize;
            if (sent as usize) < got {
                return Some(total as isize);
            }
        }
        Some(total as isize)
    }

    /// `splice(fd, NULL, pipe, NULL, len, flags)` on the rings (see the module documentation).
    /// `None`: the connection went plain before anything moved; the caller makes the real
    /// call.
    pub fn splice_out(&self, fd: c_int, pipe: c_int, len: usize, flags: libc::c_uint) -> Option<isize> {
        let nonblock = pipe_nonblocking(pipe, flags);
        let scratch = match Scratch::new() {
            Ok(s) => s,
            Err(e) => return Some(partial_or_errno(0, e)),
        };
        let mut bounce = vec![0u8; len.min(BOUNCE)];
        loop {
            // Room in the pipe first (the kernel's `wait_for_space`).
            let revents = match poll_one(pipe, libc::POLLOUT, 0) {
                Ok(r) => r,
                Err(e) => return Some(partial_or_errno(0, e)),
            };
            if revents & libc::POLLERR != 0 {
                // No reader: EPIPE and SIGPIPE (to this thread, as the kernel sends it).
                sys::raise_in_thread(libc::SIGPIPE);
                return Some(partial_or_errno(0, libc::EPIPE));
            }
            if revents & libc::POLLOUT == 0 {
                if nonblock {
                    return Some(partial_or_errno(0, libc::EAGAIN));
                }
                if let Err(e) = poll_one(pipe, libc::POLLOUT, -1) {
                    return Some(partial_or_errno(0, e));
                }
                continue;
            }
            let peek = libc::MSG_PEEK | crate::stream::MSG_INTERNAL | if nonblock { libc::MSG_DONTWAIT } else { 0 };
            let n = self.recv(fd, &mut [IoSliceMut::new(&mut bounce)], peek)?;
            if n <= 0 {
                return Some(n); // EOF, or the read's error (EAGAIN, EINTR, ECONNRESET...)
            }
            // Into the private pipe (empty, as large as the bounce buffer), then moved into the
            // caller's pipe without waiting: as much as it has room for. (A write with
            // RWF_NOWAIT would not do: a pipe once used with splice refuses it.)
            let staged = match write_raw(scratch.0[1].raw(), &bounce[..n as usize]) {
                Ok(k) => k,
                Err(e) => return Some(partial_or_errno(0, e)),
            };
            let moved = splice_raw(scratch.0[0].raw(), pipe, staged, libc::SPLICE_F_NONBLOCK);
            scratch.empty(&mut bounce);
            let put = match moved {
                Ok(put) => put,
                Err(libc::EAGAIN) => continue,                 // filled meanwhile: wait for room again
                Err(e) => return Some(partial_or_errno(0, e)), // EPIPE (the kernel raised SIGPIPE)
            };
            // Consume exactly what the pipe took (peeked above: it is there).
            let mut left = put;
            while left > 0 {
                let k = left.min(bounce.len());
                match self.recv(fd, &mut [IoSliceMut::new(&mut bounce[..k])], libc::MSG_DONTWAIT | crate::stream::MSG_INTERNAL) {
                    Some(k) if k > 0 => left -= k as usize,
                    _ => break,
                }
            }
            return Some(put as isize);
        }
    }
}
