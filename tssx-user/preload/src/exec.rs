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
//! Covered: execve, execv, execvp, execvpe, fexecve. Not covered: execl/execlp/execle (C
//! varargs, which stable Rust cannot define) and posix_spawn, whose children get the real
//! socket without the rings (close-on-exec avoids this, and is what servers use).

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

/// Encodes the list as `fd:memfd:end,...` (end 0 = client, 1 = server).
fn encode(list: &[Inherit]) -> String {
    let items: Vec<String> = list.iter().map(|i| format!("{}:{}:{}", i.fd, i.memfd, i.end.index())).collect();
    items.join(",")
}

/// Decodes [`encode`]'s format; malformed items are skipped.
fn decode(text: &str) -> Vec<Inherit> {
    text.split(',')
        .filter_map(|item| {
            let mut parts = item.split(':').map(|p| p.parse::<c_int>().ok());
            let (fd, memfd, end) = (parts.next()??, parts.next()??, parts.next()??);
            let end = End::from_index(usize::try_from(end).ok()?)?;
            (fd >= 0 && memfd >= 0 && parts.next().is_none()).then_some(Inherit { fd, memfd, end })
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
    for item in decode(&text.to_string_lossy()) {
        if !is_socket(item.fd) {
            continue;
        }
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
        if conn::install(item.fd, item.end, memfd, Join::Inherited) {
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

fn is_socket(fd: c_int) -> bool {
    fstat_mode(fd) == Some(libc::S_IFSOCK)
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
unsafe fn with_inherit(envp: *const *const c_char, exec: impl FnOnce(*const *const c_char) -> c_int) -> c_int {
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
    let mut env: Vec<*const c_char> = unsafe { env_entries(envp) }
        .into_iter()
        .filter(|e| !e.to_bytes().starts_with(INHERIT_VAR.as_bytes()))
        .map(CStr::as_ptr)
        .collect();
    env.push(var.as_ptr());
    env.push(std::ptr::null());
    let rc = exec(env.as_ptr());
    let saved = conn::errno();
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
    unsafe { with_inherit(envp, |env| real::execve(path, argv, env)) }
}

/// # Safety
/// libc's `execv`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: `environ` is the process environment; forwarded.
    unsafe { with_inherit(environ, |env| real::execve(path, argv, env)) }
}

/// # Safety
/// libc's `execvp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: as in `execv`.
    unsafe { with_inherit(environ, |env| real::execvpe(file, argv, env)) }
}

/// # Safety
/// libc's `execvpe`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: forwarded.
    unsafe { with_inherit(envp, |env| real::execvpe(file, argv, env)) }
}

/// # Safety
/// libc's `fexecve`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: forwarded.
    unsafe { with_inherit(envp, |env| real::fexecve(fd, argv, env)) }
}
