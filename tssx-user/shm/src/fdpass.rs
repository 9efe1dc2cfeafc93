//! Sending and receiving one file descriptor with a small message over a Unix stream socket
//! (`SCM_RIGHTS`). Raw system calls ([`crate::sys`]) and no allocation, so the preload hook can
//! use it too.

use std::{
    io,
    mem::{size_of, zeroed},
    os::fd::{BorrowedFd, RawFd},
};

use crate::sys::{self, Fd};

/// Control-message buffer big enough for one fd, aligned for `cmsghdr`.
#[repr(C)]
union CmsgBuf {
    _align: libc::cmsghdr,
    bytes: [u8; 64],
}

/// Sends `bytes` (all of them, in one `sendmsg`) with `fd` attached, if any.
pub fn send_with_fd(sock: RawFd, bytes: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() };
    let mut cbuf = CmsgBuf { bytes: [0; 64] };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
        // SAFETY: the union's bytes are at least CMSG_SPACE(4) long and initialised.
        msg.msg_control = unsafe { cbuf.bytes.as_mut_ptr() }.cast();
        // SAFETY: msg_control/msg_controllen describe our buffer, so CMSG_FIRSTHDR is in it,
        // and CMSG_DATA leaves room for one fd (CMSG_SPACE above).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), raw);
        }
    }
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = unsafe { sys::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) }.map_err(sys::Errno::io)?;
    if n != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes (one `recvmsg`) and the fd attached to them, if any.
/// Received fds are close-on-exec. Returns the byte count and the fd.
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<Fd>)> {
    recv_with_fd_flags(sock, buf, 0)
}

/// As [`recv_with_fd`], with extra `recvmsg` flags (e.g. `MSG_DONTWAIT`).
pub fn recv_with_fd_flags(sock: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<(usize, Option<Fd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = CmsgBuf { bytes: [0; 64] };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: the union's bytes are initialised.
    msg.msg_control = unsafe { cbuf.bytes.as_mut_ptr() }.cast();
    msg.msg_controllen = 64;
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = unsafe { sys::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | flags) }.map_err(sys::Errno::io)?;
    let mut fd = None;
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_* walk within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    let raw = std::ptr::read_unaligned(data.add(i));
                    let owned = Fd::from_raw(raw);
                    // Keep the first; extra fds (never sent by tssx) are closed on drop.
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, fd))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Seek, Write},
        os::{fd::AsRawFd, unix::net::UnixStream},
    };

    use super::*;

    #[test]
    fn passes_a_working_fd() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile();
        file.write_all(b"shared").unwrap();
        send_with_fd(a.as_raw_fd(), b"hello", Some(std::os::fd::AsFd::as_fd(&file))).unwrap();
        let mut buf = [0u8; 16];
        let (n, fd) = recv_with_fd(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let mut got = std::fs::File::from(std::os::fd::OwnedFd::from(fd.expect("an fd")));
        got.rewind().unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "shared");
    }

    #[test]
    fn message_without_fd() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fd(a.as_raw_fd(), b"x", None).unwrap();
        let mut buf = [0u8; 4];
        let (n, fd) = recv_with_fd(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((n, fd.is_none()), (1, true));
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("tssx-fdpass-{}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }
}
