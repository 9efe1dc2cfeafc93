//! Swapped sockets passed to another process with `SCM_RIGHTS` (over any plain socket).
//!
//! The receiving process would get the real socket without the rings. So the sender's hook
//! appends, for each passed swapped socket, its segment's memfd to the message's `SCM_RIGHTS`
//! fds, and counts the receiver as one more holder of that end (as after fork). The receiver's
//! hook takes those trailing memfds out of the message before the application sees it, and
//! attaches each segment to the received socket it belongs to. A receiver without the hook
//! gets the extra fds and a socket it cannot use: passing swapped sockets needs the hook on both
//! sides.
//!
//! Which socket, and as which end, travels with the memfd itself: the sender passes a new open
//! description of the memfd (re-opened through `/proc/self/fd`) whose file offset is
//! `2 * index + end`, `index` being the socket's place among the message's fds. An open
//! description is shared by the sender and the receiver only, so nobody else can change that
//! offset; the segment, which the peer maps read-write, is not involved (issue 16: the header
//! field that named the socket let a lying peer have the segment attached to *another* socket
//! passed in the same message, whose bytes would then have gone through the peer's rings). One
//! extra fd per socket, as before: the padding of an application's control buffer sized for
//! its own fds often has room for exactly that.

use std::sync::atomic::Ordering::{AcqRel, Relaxed};

use libc::{c_int, cmsghdr, msghdr};
use tssx_common::segment::{End, GiveUp};

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
    // A length the kernel refuses (shorter than a header, or past the buffer): EINVAL from the
    // real call; nothing of ours to rewrite.
    let room = msg.msg_controllen - (last as usize - msg.msg_control as usize);
    // SAFETY: a pure size computation.
    if h.cmsg_len < unsafe { libc::CMSG_LEN(0) } as usize || h.cmsg_len > room {
        return None;
    }
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
    // SAFETY: per the contract.
    let sent = unsafe { send_via(msg, |m| sys::sendmsg_raw(fd, m, flags)) }?;
    Some(match sent {
        Ok(n) => n as isize,
        Err(e) => {
            sys::set_errno(e);
            -1
        }
    })
}

/// As [`send`], with the sending done by `real` (given the rewritten message; it answers
/// bytes sent or the errno): for a marker of [`crate::anc`], which carries the application's
/// control messages. `None`: nothing swapped is passed, nothing was sent.
///
/// # Safety
/// `msg` is valid, as for sendmsg.
pub unsafe fn send_via(msg: *const msghdr, real: impl FnOnce(&msghdr) -> Result<usize, c_int>) -> Option<Result<usize, c_int>> {
    // A header the kernel will refuse (EFAULT), or one that is not aligned (rare, and
    // nothing to rewrite then), goes to the real call as it is.
    if !table::any_live() || !crate::iov::value_ok(msg) || !msg.is_aligned() {
        return None;
    }
    // SAFETY: per the contract (read through the user copy: a header in a bad page goes to
    // the real call, EFAULT).
    let m = unsafe { crate::iov::read_value(msg) }?;
    let m = &m;
    if crate::iov::range(m.msg_control, m.msg_controllen) != crate::iov::Range::Valid || !m.msg_control.cast::<cmsghdr>().is_aligned() {
        return None;
    }
    if !crate::iov::readable_range(m.msg_control, m.msg_controllen) {
        // A control buffer in a bad page goes to the real call as well (EFAULT).
        return None;
    }
    // SAFETY: as above.
    let rights = unsafe { last_rights(m) }?;
    // SAFETY: a SCM_RIGHTS header of the caller's message.
    let fds = unsafe { fds_of(rights) };
    let mut extra = [0 as c_int; MAX_FDS];
    // The re-opened descriptions, ours, closed when this returns (the message holds its own).
    let mut opened: Vec<Fd> = Vec::new();
    // The passed fds whose receiver was counted (undone if the send fails).
    let mut handed: Vec<c_int> = Vec::new();
    let mut n_extra = 0;
    for (index, &passed) in fds.iter().enumerate() {
        let Some(c) = table::lookup(passed) else { continue };
        if table::lookup_swapped(passed).is_none() {
            // Still plain: the receiver cannot share this process's byte counts, so this
            // connection is never migrated now (it stays a socket for both), nor by the
            // processes forked with it (see `crate::counts`).
            c.counts.spoil();
            if sys::with_errno_kept(|| c.give_up(GiveUp::Passed)) {
                continue;
            }
            // Committed meanwhile by another thread (see `Conn::give_up`): the segment
            // travels with it, as for a swapped one.
        }
        if n_extra + fds.len() >= MAX_FDS {
            return None;
        }
        let Some(memfd) = c.memfd_raw() else { continue };
        let Some(tagged) = tagged_description(memfd, index, c.end()) else { continue };
        if c.hand_over(passed).is_none() {
            continue;
        }
        handed.push(passed);
        extra[n_extra] = tagged.raw();
        opened.push(tagged);
        n_extra += 1;
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
    let rc = real(&copy);
    if rc.is_err() {
        for &passed in &handed {
            if let Some(c) = table::lookup_swapped(passed) {
                c.undo_hand_over();
            }
        }
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
    let mut segments = 0;
    while segments < fds.len() && is_segment(fds[fds.len() - 1 - segments]) {
        segments += 1;
    }
    if segments == 0 {
        return;
    }
    let (app, memfds) = fds.split_at(fds.len() - segments);
    for &memfd in memfds {
        // SAFETY: the kernel just installed this fd for us; nobody else knows it.
        let memfd = unsafe { Fd::from_raw(memfd) };
        let Some((sock, end)) = target_of(&memfd, app) else { continue };
        table::adopt_swapped(sock, end, memfd);
    }
    // SAFETY: shrinks the last header (and the control length) so the application sees only
    // its own fds; both stay within what the kernel wrote.
    unsafe {
        (*rights).cmsg_len = libc::CMSG_LEN(size_of_val(app) as u32) as _;
        let end = rights as usize - m.msg_control as usize + libc::CMSG_SPACE(size_of_val(app) as u32) as usize;
        m.msg_controllen = end.min(m.msg_controllen);
    }
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
    /// holder. Returns the memfd whose segment goes along.
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

/// A new open description of the segment memfd `memfd` whose file offset says where its socket
/// is in the message and which end it is (see the module documentation).
fn tagged_description(memfd: c_int, index: usize, end: End) -> Option<Fd> {
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
    let digits = memfd.to_string();
    if memfd < 0 || digits.len() > 11 {
        return None;
    }
    path[14..14 + digits.len()].copy_from_slice(digits.as_bytes());
    // SAFETY: a NUL-terminated path in a live buffer; the new fd is owned below.
    let fd = unsafe {
        tssx_shm::sys::syscall(
            libc::SYS_openat,
            [libc::AT_FDCWD as usize, path.as_ptr() as usize, (libc::O_RDWR | libc::O_CLOEXEC) as usize, 0, 0, 0],
        )
    }
    .ok()? as c_int;
    // SAFETY: the fd just opened, ours alone.
    let fd = unsafe { Fd::from_raw(fd) };
    let tag = 2 * index as i64 + end.index() as i64;
    (tssx_shm::sys::lseek(fd.raw(), tag, libc::SEEK_SET).ok()? == tag as usize).then_some(fd)
}

/// Which received socket (of `fds`) the passed segment in `memfd` belongs to, and as which end:
/// from the file offset of the description the sender passed (see the module documentation).
fn target_of(memfd: &Fd, fds: &[c_int]) -> Option<(c_int, End)> {
    let tag = tssx_shm::sys::lseek(memfd.raw(), 0, libc::SEEK_CUR).ok()?;
    let end = End::from_index(tag % 2)?;
    let &fd = fds.get(tag / 2)?;
    let st = sys::fstat(fd).ok()?;
    (st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some((fd, end))
}
