//! What the hook's test binaries share: socket pairs, and installing a pair in the fd table as
//! one swapped connection (with a real segment, as the agent would hand out).
// Each test binary uses part of it.
#![allow(dead_code)]

use std::{os::fd::AsRawFd, sync::atomic::Ordering};

use libc::c_int;
use tssx_common::segment::{End, SegmentState, JOIN_MAPPED};
use tssx_hook::{calls, table};
use tssx_shm::{segment::Segment, sys::Fd};

/// One swapped connection: the socket pair (client, server) with both ends in the table. Drop
/// closes both through the hook (-1: closed already by the test).
pub struct Pair {
    pub client: c_int,
    pub server: c_int,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for fd in [self.client, self.server] {
            if fd >= 0 {
                // SAFETY: our socket; the hook forgets its table entry and closes it.
                unsafe { calls::close(fd) };
            }
        }
    }
}

/// A connected Unix stream socket pair (close-on-exec, plus `flags`), not in the table.
pub fn socketpair(flags: c_int) -> [c_int; 2] {
    let mut fds = [0; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags, 0, fds.as_mut_ptr()) }, 0);
    fds
}

/// A copy of `segment`'s memfd, owned by the result.
pub fn dup_memfd(segment: &Segment) -> Fd {
    // SAFETY: dup of the segment's own fd; the copy is owned by the result.
    let fd = unsafe { libc::fcntl(segment.fd().unwrap().as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: as above.
    unsafe { Fd::from_raw(fd) }
}

/// Installs the connected pair `fds` (client, server) in the table as one swapped connection
/// with rings of `ring` bytes: both ends joined, ready and switched at byte 0 (as after a
/// migration before any byte).
pub fn install_swapped(fds: [c_int; 2], ring: usize) {
    install_swapped_growing(fds, ring, ring.min(tssx_common::segment::DEFAULT_INITIAL_RING_CAPACITY));
}

/// [`install_swapped`] with rings that start at `initial` bytes and grow to `ring`.
#[allow(dead_code)]
pub fn install_swapped_growing(fds: [c_int; 2], ring: usize, initial: usize) {
    let segment = swapped_segment_growing(ring, initial);
    for (fd, end) in [(fds[0], End::Client), (fds[1], End::Server)] {
        assert!(table::adopt_swapped(fd, end, dup_memfd(&segment)), "adopt {end:?}");
    }
}

/// `sendmsg` of `bytes` with one fd (`SCM_RIGHTS`) through the hook: on a swapped connection,
/// the bytes on the ring and the fd through the kernel (see `tssx_hook::anc`).
pub fn send_with_fd(sock: c_int, bytes: &[u8], fd: c_int) -> isize {
    // SAFETY: a msghdr over live buffers, as `with_fd` builds it.
    with_fd(bytes, fd, |msg| unsafe { calls::sendmsg(sock, msg, 0) })
}

/// `send` called with a msghdr of `bytes` and one fd in `SCM_RIGHTS` (its buffers live for
/// the call): its result.
pub fn with_fd(bytes: &[u8], fd: c_int, send: impl FnOnce(&libc::msghdr) -> isize) -> isize {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    let mut cbuf = [0u64; 4];
    // SAFETY: plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: pure size computations; the header is written inside `cbuf`.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>(), fd);
    }
    send(&msg)
}

/// A segment with rings of `ring` bytes whose two ends are joined, ready and switched at byte 0
/// (as after a migration before any byte), for [`install_swapped`] and tests that adopt its
/// memfds themselves.
pub fn swapped_segment(ring: usize) -> Segment {
    swapped_segment_growing(ring, ring.min(tssx_common::segment::DEFAULT_INITIAL_RING_CAPACITY))
}

/// [`swapped_segment`] with rings that start at `initial` bytes and grow to `ring`.
pub fn swapped_segment_growing(ring: usize, initial: usize) -> Segment {
    let segment = Segment::create_growing(ring, initial).expect("segment");
    segment.transition(SegmentState::Pending, SegmentState::Active).unwrap();
    for end in [End::Client, End::Server] {
        let line = &segment.header().ends[end.index()];
        line.joined.store(JOIN_MAPPED, Ordering::SeqCst);
        line.ready.store(1, Ordering::SeqCst);
        line.switch_at.store(0, Ordering::SeqCst);
        segment.header().refcount[end.index()].store(1, Ordering::SeqCst);
    }
    segment
}

/// xorshift64*: reproducible random choices from a seed (not 0).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `recvmsg` through the hook of at most `room` bytes, without waiting and with `flags`: its
/// result, the bytes, and the fds received (`SCM_RIGHTS`).
#[allow(dead_code)]
pub fn recvmsg_fds(fd: c_int, room: usize, flags: c_int) -> (isize, Vec<u8>, Vec<c_int>) {
    let mut buf = vec![0u8; room];
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: room };
    // SAFETY: plain data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cbuf);
    // SAFETY: a valid msghdr over live buffers.
    let n = unsafe { calls::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | flags) };
    let fds = if n >= 0 { received_fds(&msg) } else { Vec::new() };
    buf.truncate(n.max(0) as usize);
    (n, buf, fds)
}

/// The fds of the `SCM_RIGHTS` control messages a `recvmsg` just wrote for `msg`.
#[allow(dead_code)]
pub fn received_fds(msg: &libc::msghdr) -> Vec<c_int> {
    let mut fds = Vec::new();
    // SAFETY: the control buffer the call just filled, read with the CMSG macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let k = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<c_int>();
                for i in 0..k {
                    fds.push(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<c_int>().add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    fds
}
