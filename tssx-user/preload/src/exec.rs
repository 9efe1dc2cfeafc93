//! Swapped sockets across `execve`: the new image's hook maps the same segment again.
//!
//! The new image has none of this process's memory, but its file descriptors survive. Before
//! the exec, every swapped fd that survives it (no FD_CLOEXEC) has its segment's memfd made
//! inheritable, and the list `fd:memfd:end,...` travels in the environment variable
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

use std::{
    ffi::{CStr, CString},
    os::fd::{FromRawFd as _, OwnedFd},
};

use libc::{c_char, c_int};
use tssx_common::segment::End;

use crate::{
    conn::{self, Inherit, Join},
    real,
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
            conn::duplicated(first, item.fd);
            continue;
        }
        if !is_memfd(item.memfd) {
            continue;
        }
        // SAFETY: the previous image handed this memfd to us alone; nothing else owns it.
        let memfd = unsafe { OwnedFd::from_raw_fd(item.memfd) };
        // SAFETY: sets FD_CLOEXEC on the memfd we now own.
        unsafe { real::fcntl(item.memfd, libc::F_SETFD, libc::FD_CLOEXEC as libc::c_ulong) };
        // On failure install drops (closes) the memfd and the socket stays as it is.
        if conn::install(item.fd, item.end, memfd, Join::Inherited, None) {
            mapped.push((item.memfd, item.fd));
        }
    }
}

fn fstat_mode(fd: c_int) -> Option<libc::mode_t> {
    // SAFETY: `stat` is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer; a bad fd just fails.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some(st.st_mode & libc::S_IFMT)
}

/// The inode of socket `fd`, if it is one.
fn socket_inode(fd: c_int) -> Option<u64> {
    // SAFETY: `stat` is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer; a bad fd just fails.
    (unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(st.st_ino)
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
    preload || std::fs::read_to_string("/etc/ld.so.preload").is_ok_and(|s| s.contains("libtssx_preload"))
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
unsafe fn with_inherit(envp: *const *const c_char, spawn: bool, exec: impl FnOnce(*const *const c_char) -> c_int) -> c_int {
    // SAFETY: per the contract.
    if !conn::any_live() || !unsafe { hook_in(envp) } {
        return exec(envp);
    }
    let mut list = Vec::new();
    conn::prepare_exec(|i| list.push(i));
    if list.is_empty() {
        return exec(envp);
    }
    let var = CString::new(format!("{INHERIT_VAR}={}", encode(&list))).expect("digits only");
    // SAFETY: per the contract.
    let mut env: Vec<*const c_char> =
        unsafe { env_entries(envp) }.into_iter().filter(|e| !e.to_bytes().starts_with(INHERIT_VAR.as_bytes())).map(CStr::as_ptr).collect();
    env.push(var.as_ptr());
    env.push(std::ptr::null());
    if spawn {
        // The spawned process holds these connections too (as after fork).
        conn::spawn_holds(&list, 1);
    }
    let rc = exec(env.as_ptr());
    let saved = conn::errno();
    if spawn && rc != 0 {
        conn::spawn_holds(&list, -1);
    }
    // The exec failed, or the spawn is done: our memfds are close-on-exec again.
    conn::exec_failed();
    conn::set_errno(saved);
    rc
}

unsafe extern "C" {
    static environ: *const *const c_char;
}

/// # Safety
/// libc's `execve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: forwarded; `envp` is valid per execve's contract.
    unsafe { with_inherit(envp, false, |env| real::execve(path, argv, env)) }
}

/// # Safety
/// libc's `execv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: `environ` is the process environment; forwarded.
    unsafe { with_inherit(environ, false, |env| real::execve(path, argv, env)) }
}

/// # Safety
/// libc's `execvp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: as in `execv`.
    unsafe { with_inherit(environ, false, |env| real::execvpe(file, argv, env)) }
}

/// # Safety
/// libc's `execvpe`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: forwarded.
    unsafe { with_inherit(envp, false, |env| real::execvpe(file, argv, env)) }
}

/// # Safety
/// libc's `fexecve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: forwarded.
    unsafe { with_inherit(envp, false, |env| real::fexecve(fd, argv, env)) }
}

/// # Safety
/// libc's `posix_spawn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut libc::pid_t,
    path: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: forwarded; `envp` is valid per posix_spawn's contract.
    unsafe { with_inherit(envp.cast(), true, |env| real::posix_spawn(pid, path, actions, attr, argv, env.cast())) }
}

/// # Safety
/// libc's `posix_spawnp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut libc::pid_t,
    file: *const c_char,
    actions: *const libc::posix_spawn_file_actions_t,
    attr: *const libc::posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: as in `posix_spawn`.
    unsafe { with_inherit(envp.cast(), true, |env| real::posix_spawnp(pid, file, actions, attr, argv, env.cast())) }
}

unsafe extern "C" {
    /// The C shim's execl (src/execl.c).
    fn tssx_execl();
    /// The C shim's execlp.
    fn tssx_execlp();
    /// The C shim's execle.
    fn tssx_execle();
}

/// libc's `execl` (variadic): a tail jump into the C shim, which sees the caller's arguments
/// (registers, `%al` and stack) exactly as passed.
///
/// # Safety
/// libc's `execl`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execl() {
    core::arch::naked_asm!("jmp {f}", f = sym tssx_execl)
}

/// libc's `execlp` (variadic), as [`execl`].
///
/// # Safety
/// libc's `execlp`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execlp() {
    core::arch::naked_asm!("jmp {f}", f = sym tssx_execlp)
}

/// libc's `execle` (variadic), as [`execl`].
///
/// # Safety
/// libc's `execle`.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execle() {
    core::arch::naked_asm!("jmp {f}", f = sym tssx_execle)
}
