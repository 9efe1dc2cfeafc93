//! Swapped sockets across `execve`: the new image's hook maps the same segment again.
//!
//! The new image has none of this process's memory, but its file descriptors survive. Before
//! the exec, every swapped fd that survives it (no FD_CLOEXEC) has its segment's memfd made
//! inheritable, and the list `fd:memfd:end:inode,...` travels in the environment variable
//! [`INHERIT_VAR`] of the new image. The hook's constructor there (before `main`) maps each
//! segment, takes the ring positions from shared memory (where they always are), and removes
//! the variable and closes nothing the application can see except those memfds' close-on-exec
//! flag, which it sets again. Unread bytes stay in the rings: nothing is lost, nothing is
//! replayed.
//!
//! Covered: execve, execv, execvp, execvpe, fexecve, execl, execlp, execle (C varargs: a C
//! shim, `execl.c`, collects the arguments and calls the hooked `execv`/`execvp`/`execve`),
//! and posix_spawn/posix_spawnp, whose child holds the connection too (its end's refcount is
//! raised, as after fork); the child finds a socket that the spawn's file actions moved onto
//! fd 0, 1 or 2 by its inode.

use std::ffi::{CStr, CString};

use libc::{c_char, c_int};
use tssx_common::segment::End;

use crate::{
    lifecycle::{self, Inherit},
    sys::{self, Fd},
    table,
};

/// The environment variable that hands swapped fds to the new image (internal to the hook).
pub const INHERIT_VAR: &str = "TSSX_INHERIT";

/// Encodes the list as `fd:memfd:end:inode,...` (end 0 = client, 1 = server).
fn encode(list: &[Inherit]) -> String {
    let items: Vec<String> = list.iter().map(|i| format!("{}:{}:{}:{}", i.fd, i.memfd, i.end.index(), i.inode)).collect();
    items.join(",")
}

/// Decodes [`encode`]'s format; malformed items are skipped.
fn decode(text: &str) -> Vec<Inherit> {
    text.split(',')
        .filter_map(|item| {
            let mut parts = item.split(':');
            let mut int = || parts.next()?.parse::<c_int>().ok();
            let (fd, memfd, end) = (int()?, int()?, int()?);
            let inode = parts.next()?.parse::<u64>().ok()?;
            let end = End::from_index(usize::try_from(end).ok()?)?;
            (fd >= 0 && memfd >= 0 && parts.next().is_none()).then_some(Inherit { fd, memfd, end, inode })
        })
        .collect()
}

/// In the library constructor: re-attach the swapped fds handed over by the previous image.
pub fn reattach() {
    let Some(text) = std::env::var_os(INHERIT_VAR) else { return };
    // SAFETY: the constructor runs before main, before the application starts threads.
    unsafe { std::env::remove_var(INHERIT_VAR) };
    // Several fds of one connection share one memfd: the first maps it, the others are dups.
    let mut mapped: Vec<(c_int, c_int)> = Vec::new();
    for mut item in decode(&text.to_string_lossy()) {
        // A spawn's file actions may have moved the socket (typically onto 0, 1 or 2).
        let Some(fd) = [item.fd, 0, 1, 2].into_iter().find(|&fd| socket_inode(fd) == Some(item.inode)) else { continue };
        item.fd = fd;
        if let Some(&(_, first)) = mapped.iter().find(|(memfd, _)| *memfd == item.memfd) {
            table::duplicated(first, item.fd);
            continue;
        }
        if !is_memfd(item.memfd) {
            continue;
        }
        // SAFETY: the previous image handed this memfd to us alone; nothing else owns it.
        let memfd = unsafe { Fd::from_raw(item.memfd) };
        let _ = tssx_shm::sys::fcntl(item.memfd, libc::F_SETFD, libc::FD_CLOEXEC as usize);
        // On failure the memfd is dropped (closed) and the socket stays as it is.
        if table::adopt_swapped(item.fd, item.end, memfd) {
            mapped.push((item.memfd, item.fd));
        }
    }
}

fn fstat_mode(fd: c_int) -> Option<libc::mode_t> {
    sys::fstat(fd).ok().map(|st| st.st_mode & libc::S_IFMT)
}

/// The inode of socket `fd`, if it is one.
fn socket_inode(fd: c_int) -> Option<u64> {
    sys::fstat(fd).ok().filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK).map(|st| st.st_ino)
}

fn is_memfd(fd: c_int) -> bool {
    fstat_mode(fd) == Some(libc::S_IFREG)
}

/// Whether the image started with `envp` loads this hook (LD_PRELOAD naming it, or the
/// system-wide preload list).
///
/// # Safety
/// `envp` is a valid NULL-terminated array.
unsafe fn hook_in(envp: *const *const c_char) -> bool {
    // SAFETY: per the contract.
    let env = unsafe { env_entries(envp) };
    let preload = env.iter().any(|e| e.to_bytes().starts_with(b"LD_PRELOAD=") && e.to_string_lossy().contains("libtssx_preload"));
    preload || system_wide_preload()
}

/// Whether `/etc/ld.so.preload` names the hook.
fn system_wide_preload() -> bool {
    let mut buf = [0u8; 4096];
    sys::read_file(c"/etc/ld.so.preload", &mut buf)
        .is_ok_and(|n| buf[..n].windows(b"libtssx_preload".len()).any(|w| w == b"libtssx_preload"))
}

/// # Safety
/// `envp` is null or a valid NULL-terminated array.
unsafe fn env_entries<'a>(envp: *const *const c_char) -> Vec<&'a CStr> {
    let mut out = Vec::new();
    if envp.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: per the contract, entries up to the NULL are valid C strings.
        let p = unsafe { *envp.add(i) };
        if p.is_null() {
            return out;
        }
        // SAFETY: as above.
        out.push(unsafe { CStr::from_ptr(p) });
        i += 1;
    }
}

/// Runs `exec` with `envp` extended by the inherit list (if any swapped fd survives the exec
/// and the new image loads the hook); undoes the preparation if the exec returns.
///
/// # Safety
/// `envp` is null or a valid NULL-terminated array.
pub unsafe fn with_inherit(envp: *const *const c_char, spawn: bool, exec: impl FnOnce(*const *const c_char) -> c_int) -> c_int {
    if spawn {
        // SAFETY: per the contract.
        return unsafe { inherit_and_exec(envp, spawn, exec) };
    }
    // The new image does not see this one's epoll lists.
    sys::with_errno_kept(crate::epoll::leaving_image);
    // SAFETY: per the contract.
    let rc = unsafe { inherit_and_exec(envp, spawn, exec) };
    sys::with_errno_kept(crate::epoll::image_stays);
    rc
}

/// [`with_inherit`] without the epoll lists' bookkeeping.
///
/// # Safety
/// As [`with_inherit`].
unsafe fn inherit_and_exec(envp: *const *const c_char, spawn: bool, exec: impl FnOnce(*const *const c_char) -> c_int) -> c_int {
    // SAFETY: per the contract.
    if !table::any_live() || !unsafe { hook_in(envp) } {
        return exec(envp);
    }
    let mut list = Vec::new();
    lifecycle::prepare_exec(|i| list.push(i));
    if list.is_empty() {
        return exec(envp);
    }
    let Ok(var) = CString::new(format!("{INHERIT_VAR}={}", encode(&list))) else { return exec(envp) };
    // SAFETY: per the contract.
    let mut env: Vec<*const c_char> =
        unsafe { env_entries(envp) }.into_iter().filter(|e| !e.to_bytes().starts_with(INHERIT_VAR.as_bytes())).map(CStr::as_ptr).collect();
    env.push(var.as_ptr());
    env.push(std::ptr::null());
    if spawn {
        // The spawned process holds these connections too (as after fork).
        lifecycle::spawn_holds(&list, 1);
    }
    let rc = exec(env.as_ptr());
    let saved = sys::errno();
    if spawn && rc != 0 {
        lifecycle::spawn_holds(&list, -1);
    }
    // The exec failed, or the spawn is done: our memfds are close-on-exec again.
    lifecycle::exec_failed();
    sys::set_errno(saved);
    rc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherit_list_round_trips_and_skips_garbage() {
        let list = [Inherit { fd: 5, memfd: 9, end: End::Client, inode: 123_456 }, Inherit { fd: 0, memfd: 9, end: End::Server, inode: 7 }];
        let text = encode(&list);
        assert_eq!(text, "5:9:0:123456,0:9:1:7");
        assert_eq!(decode(&text), list);
        // Malformed items (a bad end, a negative fd, missing or extra fields) are skipped.
        assert_eq!(decode("1:2:3:4,x,-1:2:0:4,1:2:0,1:2:0:4:5,3:4:1:8"), [Inherit { fd: 3, memfd: 4, end: End::Server, inode: 8 }]);
    }
}
