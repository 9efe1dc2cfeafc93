//! Swapped sockets passed to another process with `SCM_RIGHTS` (over any plain socket).
//!
//! The receiving process would get the real socket without the rings. So the sender's hook
//! appends, for each passed swapped socket, a pair of fds to the message's `SCM_RIGHTS`: the
//! segment's memfd and the socket once more, in that order for end A (the client), the other
//! way round for end B, and counts the receiver as one more holder of that end (as after
//! fork). The receiver's hook takes those trailing pairs out of the message before the
//! application sees it, and attaches each segment to the received socket that is the same
//! file as the pair's socket (same inode, vouched for by the kernel), as the pair's end. The
//! pairing never goes through the segment, which the peer can write (issue 16: a header field
//! naming the socket let a lying peer have the segment attached to *another* socket passed in
//! the same message, whose bytes would then have gone to it). A receiver without the hook gets
//! the extra fds and a socket it cannot use: passing swapped sockets needs the hook on both
//! sides.

use std::sync::atomic::Ordering::{AcqRel, Relaxed};

use libc::{c_int, cmsghdr, msghdr};
use tssx_common::segment::End;

use crate::{
    conn::Conn,
    sys::{self, Fd},
    table,
};

/// Most fds one message may carry (SCM_MAX_FD in the kernel).
const MAX_FDS: usize = 253;

/// The fds of the message's `SCM_RIGHTS` control message, if it is the last one (the only
/// layout the hook rewrites).
///
/// # Safety
/// `msg` is a valid msghdr whose control buffer is valid.
unsafe fn last_rights(msg: &msghdr) -> Option<*mut cmsghdr> {
    if msg.msg_control.is_null() || msg.msg_controllen == 0 {
        return None;
    }
    // SAFETY: a valid msghdr per the contract; the CMSG macros stay inside msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
    let mut last = None;
    while !c.is_null() {
        last = Some(c);
        // SAFETY: as above.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    let last = last?;
    // SAFETY: `last` points at a complete header inside the buffer.
    let h = unsafe { &*last };
    (h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS).then_some(last)
}

/// The fds of a `SCM_RIGHTS` header.
///
/// # Safety
/// `c` is a valid SCM_RIGHTS header.
unsafe fn fds_of<'a>(c: *mut cmsghdr) -> &'a mut [c_int] {
    // SAFETY: per the contract, the data holds (cmsg_len - CMSG_LEN(0)) / 4 fds.
    unsafe {
        let n = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<c_int>();
        std::slice::from_raw_parts_mut(libc::CMSG_DATA(c).cast::<c_int>(), n)
    }
}

/// `sendmsg` on a plain socket whose `SCM_RIGHTS` carry swapped sockets: sends the message with
/// their memfds appended. `None`: nothing swapped is passed, use the real call.
///
/// # Safety
/// `msg` is valid, as for sendmsg.
pub unsafe fn send(fd: c_int, msg: *const msghdr, flags: c_int) -> Option<isize> {
    // A header the kernel will refuse (EFAULT), or one that is not aligned (rare, and
    // nothing to rewrite then), goes to the real call as it is.
    if !table::any_live() || !crate::iov::value_ok(msg) || !msg.is_aligned() {
        return None;
    }
    // SAFETY: per the contract (readable and aligned: checked above).
    let m = unsafe { &*msg };
    if crate::iov::range(m.msg_control, m.msg_controllen) != crate::iov::Range::Valid || !m.msg_control.cast::<cmsghdr>().is_aligned() {
        return None;
    }
    // SAFETY: as above.
    let rights = unsafe { last_rights(m) }?;
    // SAFETY: a SCM_RIGHTS header of the caller's message.
    let fds = unsafe { fds_of(rights) };
    let mut extra = [0 as c_int; MAX_FDS];
    let mut n_extra = 0;
    for &passed in fds.iter() {
        let Some(c) = table::lookup(passed) else { continue };
        if table::lookup_swapped(passed).is_none() {
            // Still plain: the receiver cannot share this process's byte counts, so this
            // connection is never migrated now (it stays a socket for both).
            sys::with_errno_kept(|| c.give_up());
            continue;
        }
        if n_extra + 2 + fds.len() > MAX_FDS {
            return None;
        }
        let Some(memfd) = c.hand_over(passed) else { continue };
        // The pair's order says the end (see the module documentation).
        let pair = if c.end() == End::Client { [memfd, passed] } else { [passed, memfd] };
        extra[n_extra..n_extra + 2].copy_from_slice(&pair);
        n_extra += 2;
    }
    if n_extra == 0 {
        return None;
    }
    // A copy of the control buffer with the memfds appended to the last (SCM_RIGHTS) message.
    let head = rights as usize - m.msg_control as usize;
    let all = fds.len() + n_extra;
    // SAFETY: pure size computations.
    let new_len = head + unsafe { libc::CMSG_SPACE((all * size_of::<c_int>()) as u32) } as usize;
    let mut buf = vec![0u8; new_len];
    // SAFETY: copies the headers before the last one, then writes a new last header inside
    // `buf`, which is large enough by construction.
    unsafe {
        std::ptr::copy_nonoverlapping(m.msg_control.cast::<u8>(), buf.as_mut_ptr(), head);
        let c = buf.as_mut_ptr().add(head).cast::<cmsghdr>();
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((all * size_of::<c_int>()) as u32) as _;
        let data = libc::CMSG_DATA(c).cast::<c_int>();
        std::ptr::copy_nonoverlapping(fds.as_ptr(), data, fds.len());
        std::ptr::copy_nonoverlapping(extra.as_ptr(), data.add(fds.len()), n_extra);
    }
    let mut copy = *m;
    copy.msg_control = buf.as_mut_ptr().cast();
    copy.msg_controllen = new_len as _;
    // SAFETY: a valid msghdr whose buffers are the caller's and ours.
    let rc = unsafe { sys::sendmsg(fd, &copy, flags) };
    if rc < 0 {
        let e = sys::errno();
        for &passed in fds.iter() {
            if let Some(c) = table::lookup_swapped(passed) {
                c.undo_hand_over();
            }
        }
        sys::set_errno(e);
    }
    Some(rc)
}

/// After a successful real `recvmsg` on a plain socket: attaches segments that arrived with
/// swapped sockets, and removes their memfds from the message.
///
/// # Safety
/// `msg` is the valid msghdr just filled by recvmsg.
pub unsafe fn received(msg: *mut msghdr) {
    // (A header or control buffer that is not aligned carries nothing of ours to rewrite.)
    if msg.is_null() || !msg.is_aligned() {
        return;
    }
    // SAFETY: per the contract.
    let m = unsafe { &mut *msg };
    if !m.msg_control.cast::<cmsghdr>().is_aligned() {
        return;
    }
    // SAFETY: as above.
    let Some(rights) = (unsafe { last_rights(m) }) else { return };
    // SAFETY: the SCM_RIGHTS header the kernel just wrote.
    let fds = unsafe { fds_of(rights) };
    // The trailing (memfd, socket) / (socket, memfd) pairs, from the last one back.
    let mut app_len = fds.len();
    while app_len >= 2 {
        let (a, b) = (fds[app_len - 2], fds[app_len - 1]);
        if !(is_segment(a) && socket_inode(b).is_some() || socket_inode(a).is_some() && is_segment(b)) {
            break;
        }
        app_len -= 2;
    }
    if app_len == fds.len() {
        return;
    }
    let (app, pairs) = fds.split_at(app_len);
    for pair in pairs.chunks_exact(2) {
        let (memfd, sock, end) = if is_segment(pair[0]) { (pair[0], pair[1], End::Client) } else { (pair[1], pair[0], End::Server) };
        // SAFETY: the kernel just installed these fds for us; nobody else knows them.
        let (memfd, sock) = unsafe { (Fd::from_raw(memfd), Fd::from_raw(sock)) };
        // The received socket that is the same file as the pair's copy.
        let inode = socket_inode(sock.raw());
        let target = app.iter().copied().find(|&fd| inode.is_some() && socket_inode(fd) == inode);
        if let Some(target) = target {
            table::adopt_swapped(target, end, memfd);
        }
        // The pair's copy of the socket closes with `sock`.
    }
    // SAFETY: shrinks the last header (and the control length) so the application sees only
    // its own fds; both stay within what the kernel wrote.
    unsafe {
        (*rights).cmsg_len = libc::CMSG_LEN(size_of_val(app) as u32) as _;
        let end = rights as usize - m.msg_control as usize + libc::CMSG_SPACE(size_of_val(app) as u32) as usize;
        m.msg_controllen = end.min(m.msg_controllen);
    }
}

/// The inode of `fd` if it is a socket.
fn socket_inode(fd: c_int) -> Option<u64> {
    let st = sys::fstat(fd).ok()?;
    (st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(st.st_ino)
}

/// Whether `fd` is a tssx segment memfd (by its name in /proc).
fn is_segment(fd: c_int) -> bool {
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
    let digits = fd.to_string();
    if fd < 0 || digits.len() > 11 {
        return false;
    }
    path[14..14 + digits.len()].copy_from_slice(digits.as_bytes());
    let mut target = [0u8; 64];
    let Ok(path) = std::ffi::CStr::from_bytes_until_nul(&path) else { return false };
    sys::readlink(path, &mut target).is_ok_and(|n| target[..n].starts_with(b"/memfd:tssx-segment"))
}

impl Conn {
    /// Before this end's socket `fd` is passed to another process: count the receiver as a
    /// holder. Returns the memfd to pass along.
    pub fn hand_over(&self, fd: c_int) -> Option<c_int> {
        let _ = fd;
        let memfd = self.memfd_raw()?;
        self.header().refcount[self.end().index()].fetch_add(1, Relaxed);
        Some(memfd)
    }

    /// The pass failed: undo [`Conn::hand_over`]'s count.
    pub fn undo_hand_over(&self) {
        self.header().refcount[self.end().index()].fetch_sub(1, AcqRel);
    }
}
