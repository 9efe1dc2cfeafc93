//! Swapped sockets across `execve` and into spawned children: a new image with the hook maps
//! the same segment again; a new image without it gets the connection handed back first.
//!
//! The new image has none of this process's memory, but its file descriptors survive. Before
//! the exec (or spawn), the hook computes which fds of the new image are swapped sockets: the
//! swapped fds without FD_CLOEXEC, after a spawn's file actions (`dup2` onto 0 and 1, `close`,
//! `open` over a number, `closefrom`: see [`crate::spawn::child_fds`]). Each of their segments'
//! memfds is made inheritable, and the list `fd:memfd:end:inode,...` (child fd numbers) travels
//! in the environment variable [`INHERIT_VAR`] of the new image. The hook's constructor there
//! (before `main`) maps each segment once, links every listed fd that is still that socket (by
//! inode) to it, takes the ring positions from shared memory (where they always are), removes
//! the variable, and sets the memfds' close-on-exec flag again (a memfd none of whose sockets
//! arrived is closed). Unread bytes stay in the rings: nothing is lost, nothing is replayed. A
//! spawn whose file actions close a memfd (`closefrom`) runs with a copy of its actions that
//! opens it again at the same number from `/proc/<pid>/fd/<memfd>` (glibc's spawn holds the
//! parent until the child execs, so the parent's memfd is there to open).
//!
//! **An image without the hook** (the environment has no `LD_PRELOAD` naming it and
//! `/etc/ld.so.preload` does not name it either, or the file is a static ELF, or a file run
//! set-user-ID or set-group-ID to another user or group and no `/etc/ld.so.preload` entry, or a
//! script run by one of those) must read and write the real socket, so each connection it
//! would hold is handed back to the kernel before the exec (`hand_over`): this end stops
//! reading the peer's ring where it is and asks the peer for a replay
//! ([`tssx_common::segment::EndLine::replay_from`]), then hands its own writes back to the
//! socket; the peer, woken by the hand-back's doorbell if it sleeps on the rings (or on its next
//! call on the connection), hands back too and sends the bytes still on its ring onto the socket
//! before anything else; the hook waits (at most [`HAND_OVER_WAIT_NS`]) for that, drains the
//! doorbells the peer sent, and the connection is plain for good, in this process too. The new
//! image reads, from the socket, exactly what a plain socket would have held.
//!
//! Limits: a peer that makes no call on the connection within [`HAND_OVER_WAIT_NS`] (it is not
//! waiting for this end) answers later; until it does, its ring's bytes do not reach the new
//! image, and its last doorbell byte then reaches it as data. A peer that handed back on its
//! own at the same moment does not replay (its ring's bytes stay readable through the hook
//! only). A replay larger than the socket's buffer keeps the peer's call that answered waiting
//! until the new image reads (a plain writer would have waited in its own write earlier).

//! Covered: execve, execv, execvp, execvpe, fexecve, execl, execlp, execle (C varargs: a C
//! shim, `execl.c`, collects the arguments and calls the hooked `execv`/`execvp`/`execve`),
//! posix_spawn/posix_spawnp (whose child holds the connection too: its end's refcount is
//! raised, as after fork), and through them `system` and `popen` ([`crate::spawn`]).

use std::ffi::{CStr, CString};

use libc::{c_char, c_int};
use tssx_common::segment::{End, GiveUp};

use std::sync::atomic::Ordering::{AcqRel, Relaxed};

use crate::{
    conn::{Conn, Phase},
    lifecycle::{self, Inherit},
    spawn::{Obj, Op},
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
    let items = decode(&text.to_string_lossy());
    for item in &items {
        // The previous image computed the fd numbers after the spawn's file actions; the inode
        // makes sure the number is still that socket.
        if socket_inode(item.fd) != Some(item.inode) {
            continue;
        }
        if let Some(&(_, first)) = mapped.iter().find(|(memfd, _)| *memfd == item.memfd) {
            table::duplicated(first, item.fd);
            continue;
        }
        if !is_memfd(item.memfd) || mapped.iter().any(|&(_, fd)| fd == item.memfd) {
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
    // A memfd of a connection none of whose sockets arrived is closed (never left to the
    // application).
    for item in &items {
        if !mapped.iter().any(|&(memfd, _)| memfd == item.memfd) && is_memfd(item.memfd) && !items.iter().any(|i| i.fd == item.memfd) {
            // SAFETY: as above: the memfd was handed to the hook alone.
            drop(unsafe { Fd::from_raw(item.memfd) });
            mapped.push((item.memfd, -1));
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

/// The image an exec or spawn starts, to tell whether it will load the hook.
#[derive(Clone, Copy)]
pub enum Image {
    /// A path (absolute, or relative to the working directory).
    Path(*const c_char),
    /// A file name searched in `PATH` when it has no slash (`execvp`, `posix_spawnp`).
    Search(*const c_char),
    /// An open file (`fexecve`).
    Fd(c_int),
}

/// What the dynamic loader preloads into a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preloads {
    /// Nothing: a static ELF file (no `PT_INTERP`).
    No,
    /// Only `/etc/ld.so.preload`: secure execution (set-user-ID or set-group-ID to another
    /// user or group), where `LD_PRELOAD` paths are ignored.
    SystemWide,
    /// `LD_PRELOAD` and `/etc/ld.so.preload`.
    Any,
}

/// What the dynamic loader will preload into the program `image` names (a script: into its
/// interpreter). A file that cannot be read or is neither ELF nor a script is taken as
/// [`Preloads::Any`] (the kernel will refuse it, or `execvp` runs it with `/bin/sh`).
fn image_preloads(image: Image) -> Preloads {
    match image {
        // SAFETY: exec's and spawn's contract: a valid C string.
        Image::Path(p) => path_preloads(&unsafe { CStr::from_ptr(p) }.to_string_lossy(), 0),
        Image::Search(p) => {
            // SAFETY: as above.
            let name = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
            if name.contains('/') {
                return path_preloads(&name, 0);
            }
            let search = std::env::var("PATH").unwrap_or_else(|_| "/bin:/usr/bin".into());
            for dir in search.split(':') {
                let full = format!("{}/{name}", if dir.is_empty() { "." } else { dir });
                let is_file = CString::new(full.as_str())
                    .ok()
                    .and_then(|c| sys::stat(&c).ok())
                    .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
                if is_file {
                    return path_preloads(&full, 0);
                }
            }
            Preloads::Any
        }
        Image::Fd(fd) => path_preloads(&format!("/proc/self/fd/{fd}"), 0),
    }
}

fn path_preloads(path: &str, depth: u32) -> Preloads {
    // Raw system calls (the standard library's file code would call the hook's own exports).
    let Ok(cpath) = CString::new(path) else { return Preloads::Any };
    let Ok(st) = sys::stat(&cpath) else { return Preloads::Any };
    // Secure execution (the loader ignores LD_PRELOAD paths) when the image changes the
    // effective user or group away from the real ones.
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let secure = (st.st_mode & libc::S_ISUID != 0 && st.st_uid != uid) || (st.st_mode & libc::S_ISGID != 0 && st.st_gid != gid);
    let mut head = [0u8; 4096];
    let Ok(got) = sys::read_file(&cpath, &mut head) else { return Preloads::Any };
    let head = &head[..got];
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        let interp = String::from_utf8_lossy(line);
        let Some(interp) = interp.split_whitespace().next() else { return Preloads::Any };
        return if depth >= 4 { Preloads::Any } else { path_preloads(interp, depth + 1) };
    }
    match elf_is_dynamic(head) {
        Some(false) => Preloads::No,
        _ if secure => Preloads::SystemWide,
        _ => Preloads::Any,
    }
}

/// Whether the ELF file starting with `head` has a `PT_INTERP` program header (`None`: not
/// ELF, or its program headers are not in `head`).
fn elf_is_dynamic(head: &[u8]) -> Option<bool> {
    if head.get(..4)? != b"\x7fELF" {
        return None;
    }
    let wide = *head.get(4)? == 2;
    let little = *head.get(5)? == 1;
    let int = |at: usize, len: usize| -> Option<u64> {
        let bytes = head.get(at..at + len)?;
        let mut v = 0u64;
        for (i, &b) in bytes.iter().enumerate() {
            let shift = if little { 8 * i } else { 8 * (len - 1 - i) };
            v |= u64::from(b) << shift;
        }
        Some(v)
    };
    let (phoff, phentsize, phnum) = if wide { (int(32, 8)?, int(54, 2)?, int(56, 2)?) } else { (int(28, 4)?, int(42, 2)?, int(44, 2)?) };
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).ok()?;
        if int(at, 4)? == u64::from(libc::PT_INTERP) {
            return Some(true);
        }
    }
    Some(false)
}

/// Hands `conn` (fd `fd` of this process) back to the kernel for good, before an image that
/// does not load the hook runs with the socket: this end's direction goes back at once, then
/// the peer's (it follows on its next call, or woken by the doorbell the hand-back rings; the
/// wait is bounded by [`HAND_OVER_WAIT_NS`]); the doorbells the peer sent are drained, so the
/// new image reads nothing but the peer's data from the socket. True when the connection is
/// plain. False when the peer did not answer in time, or had put bytes on the ring that this
/// process has not read yet: those stay readable through the hook (this process, the rings),
/// not through the socket (see the module documentation).
fn hand_over(conn: &Conn, fd: c_int) -> bool {
    conn.note_fd(fd);
    conn.ask_replay();
    conn.hand_back(fd);
    let deadline = crate::spin::now_ns() + HAND_OVER_WAIT_NS;
    let mut nap_us = 20;
    loop {
        if conn.phase() == Phase::Plain || conn.finish_hand_back() {
            return true;
        }
        if conn.peer_handed_back() && !matches!(conn.read_source(), crate::handback::Source::Socket) || crate::spin::now_ns() > deadline {
            conn.drop_replay();
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(nap_us));
        nap_us = (nap_us * 2).min(2000);
    }
}

/// How long `hand_over` waits for the peer to follow.
pub const HAND_OVER_WAIT_NS: u64 = 2_000_000_000;

/// What [`with_inherit`] runs.
#[derive(Clone, Copy)]
pub enum Kind<'a> {
    /// An exec: this process becomes the new image.
    Exec,
    /// A spawn with these file actions (`None`: an actions object the hook has no record of,
    /// taken as no actions).
    Spawn(Option<&'a [Op]>),
}

/// Runs `exec` (see [`Kind`]) with `envp` extended by the inherit list: every fd of the new
/// image that is a swapped socket (see [`crate::spawn::child_fds`]) and its segment's memfd,
/// made inheritable for the call. If a spawn's file actions close a memfd (`closefrom`), the
/// spawn gets a copy of the actions that opens it again at the end (`/proc/<pid>/fd/<memfd>`,
/// which the child can open while glibc's spawn holds the parent in `vfork` fashion): `exec`
/// then gets that object to use instead of the caller's. If the new image will not load the
/// hook, its connections are handed back to the kernel first (`hand_over`). A spawned
/// process is one more holder of each connection it inherits. Undoes the preparation if the
/// exec returns.
///
/// # Safety
/// `envp` is null or a valid NULL-terminated array; `image` names a valid C string.
pub unsafe fn with_inherit(
    envp: *const *const c_char,
    image: Image,
    kind: Kind<'_>,
    exec: impl FnOnce(*const *const c_char, Option<*const libc::posix_spawn_file_actions_t>) -> c_int,
) -> c_int {
    if matches!(kind, Kind::Spawn(_)) {
        // SAFETY: per the contract.
        return unsafe { inherit_and_exec(envp, image, kind, exec) };
    }
    // The new image does not see this one's epoll lists.
    sys::with_errno_kept(crate::epoll::leaving_image);
    // SAFETY: per the contract.
    let rc = unsafe { inherit_and_exec(envp, image, kind, exec) };
    sys::with_errno_kept(crate::epoll::image_stays);
    rc
}

/// [`with_inherit`] without the epoll lists' bookkeeping.
///
/// # Safety
/// As [`with_inherit`].
unsafe fn inherit_and_exec(
    envp: *const *const c_char,
    image: Image,
    kind: Kind<'_>,
    exec: impl FnOnce(*const *const c_char, Option<*const libc::posix_spawn_file_actions_t>) -> c_int,
) -> c_int {
    if !table::any_live() {
        return exec(envp, None);
    }
    let spawn = matches!(kind, Kind::Spawn(_));
    let ops = match kind {
        Kind::Spawn(Some(ops)) => Some(ops),
        _ => None,
    };
    // The tracked connections, and the model of their fds (see `spawn::child_fds`).
    let mut conns: Vec<(table::ConnRef, c_int)> = Vec::new();
    let mut initial = Vec::new();
    for fd in 0..table::MAX_FDS as c_int {
        let Some(conn) = table::lookup(fd) else { continue };
        let k = match conns.iter().position(|(c, _)| c.id() == conn.id()) {
            Some(k) => k,
            None => {
                if let Some(memfd) = conn.memfd_raw().filter(|_| swapped(&conn)) {
                    initial.push((memfd, Obj::Mem(conns.len()), false));
                }
                conns.push((conn, fd));
                conns.len() - 1
            }
        };
        // SAFETY: F_GETFD takes no argument.
        let flags = unsafe { sys::fcntl(fd, libc::F_GETFD, 0) };
        initial.push((fd, Obj::Sock(k), flags < 0 || flags & libc::FD_CLOEXEC != 0));
    }
    let child = crate::spawn::child_fds(&initial, ops.unwrap_or(&[]));
    // SAFETY: per the contract.
    let hook = match image_preloads(image) {
        Preloads::No => false,
        Preloads::SystemWide => system_wide_preload(),
        // SAFETY: per the contract.
        Preloads::Any => unsafe { hook_in(envp) },
    };
    // A memfd the file actions close can be opened again at its number if that is free.
    let can_reopen = ops.is_some() && dumpable();
    let mut list = Vec::new();
    let mut held = Vec::new();
    let mut reopen: Vec<(c_int, CString)> = Vec::new();
    for (k, (conn, fd)) in conns.iter().enumerate() {
        let socks: Vec<c_int> = child.iter().filter(|(_, o)| *o == Obj::Sock(k)).map(|&(fd, _)| fd).collect();
        if socks.is_empty() {
            continue; // the new image does not hold this connection
        }
        if !swapped(conn) {
            // Plain in the new image, whose hook starts afresh and does not count what it
            // moves on the socket: the counts are spoiled for every holder, and the
            // connection stays plain for good (see `crate::counts`). A spawning process
            // gives it up now; an exec'ing one (or the parent a vfork child runs in) leaves
            // it to the holders that stay (a segment not in use yet is given up, a claim in
            // flight dropped, in case the exec fails).
            if conn.phase() != Phase::Unconnected {
                conn.counts.spoil();
            }
            match conn.phase() {
                Phase::Candidate if spawn => {
                    conn.give_up(GiveUp::ForkOrExec);
                }
                Phase::Claiming => {
                    // (Waits for another thread's non-blocking claim step: the control
                    // connection is closed for sure.)
                    conn.drop_claim();
                    if spawn {
                        conn.give_up(GiveUp::ForkOrExec);
                    }
                }
                // (Given up in the guard; refused if committed meanwhile by another thread:
                // then back to the socket, as for an image without the hook.)
                Phase::Mapped | Phase::Quiescing if !conn.give_up(GiveUp::ForkOrExec) => {
                    sys::with_errno_kept(|| hand_over(conn, *fd));
                }
                _ => {}
            }
            continue;
        }
        let Some(own) = conn.memfd_raw() else { continue };
        let kept = child.iter().any(|&(fd, o)| fd == own && o == Obj::Mem(k));
        let free = !child.iter().any(|&(fd, _)| fd == own);
        if hook && kept {
            // SAFETY: clears FD_CLOEXEC on our own memfd.
            unsafe { sys::fcntl(own, libc::F_SETFD, 0) };
        } else if hook && free && can_reopen {
            let Ok(path) = CString::new(format!("/proc/{}/fd/{own}", std::process::id())) else { continue };
            reopen.push((own, path));
        } else {
            // No hook in the new image, or the memfd cannot reach it: the socket goes back to
            // the kernel first.
            sys::with_errno_kept(|| hand_over(conn, *fd));
            continue;
        }
        let inode = socket_inode(*fd).unwrap_or(0);
        list.extend(socks.iter().map(|&s| Inherit { fd: s, memfd: own, end: conn.end(), inode }));
        held.push(k);
    }
    if list.is_empty() {
        return exec(envp, None);
    }
    let rebuilt = match (reopen.is_empty(), ops) {
        (false, Some(ops)) => crate::spawn::rebuild(ops, &reopen),
        _ => None,
    };
    if !reopen.is_empty() && rebuilt.is_none() {
        // (Not reached unless libc refuses what it accepted before.) Those connections go back
        // to the kernel instead.
        for &(memfd, _) in &reopen {
            for (k, (conn, fd)) in conns.iter().enumerate() {
                if conn.memfd_raw() == Some(memfd) {
                    held.retain(|&h| h != k);
                    sys::with_errno_kept(|| hand_over(conn, *fd));
                }
            }
            list.retain(|i| i.memfd != memfd);
        }
    }
    let Ok(var) = CString::new(format!("{INHERIT_VAR}={}", encode(&list))) else { return exec(envp, None) };
    // SAFETY: per the contract.
    let mut env: Vec<*const c_char> =
        unsafe { env_entries(envp) }.into_iter().filter(|e| !e.to_bytes().starts_with(INHERIT_VAR.as_bytes())).map(CStr::as_ptr).collect();
    env.push(var.as_ptr());
    env.push(std::ptr::null());
    let holds = |delta: i32| {
        for &k in &held {
            let conn = &conns[k].0;
            let count = &conn.header().refcount[conn.end().index()];
            if delta > 0 {
                // Relaxed: as a fork's (the spawned process cannot close before it exists).
                count.fetch_add(1, Relaxed);
            } else {
                // AcqRel: as a close's.
                count.fetch_sub(1, AcqRel);
            }
        }
    };
    if spawn {
        // The spawned process holds these connections too (as after fork).
        holds(1);
    }
    let rc = exec(env.as_ptr(), rebuilt.as_deref().map(|fa| fa as *const _));
    let saved = sys::errno();
    if spawn && rc != 0 {
        holds(-1);
    }
    if let Some(fa) = rebuilt {
        let fa = Box::into_raw(fa);
        // SAFETY: the object `rebuild` initialised, destroyed once; then its box is freed.
        unsafe {
            sys::posix_spawn_file_actions_destroy(fa);
            drop(Box::from_raw(fa));
        }
    }
    // The exec failed, or the spawn is done: our memfds are close-on-exec again.
    lifecycle::exec_failed();
    sys::set_errno(saved);
    rc
}

/// Whether another process of this user may open `/proc/<pid>/fd/*` of this one (the process
/// is dumpable: not set-user-ID, no `PR_SET_DUMPABLE` 0).
fn dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointers.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE) == 1 }
}

/// Whether `conn` has a segment in use (past the plain phases).
fn swapped(conn: &Conn) -> bool {
    let phase = conn.phase();
    phase >= Phase::Ready && phase != Phase::Plain
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

    fn elf(kind: u32) -> Vec<u8> {
        let mut v = vec![0u8; 64 + 56];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2; // 64-bit
        v[5] = 1; // little-endian
        v[32] = 64; // e_phoff
        v[54] = 56; // e_phentsize
        v[56] = 1; // e_phnum
        v[64..68].copy_from_slice(&kind.to_le_bytes());
        v
    }

    #[test]
    fn static_images_scripts_and_set_user_id_files_are_told_apart() {
        assert_eq!(elf_is_dynamic(&elf(libc::PT_INTERP)), Some(true));
        assert_eq!(elf_is_dynamic(&elf(libc::PT_LOAD)), Some(false));
        assert_eq!(elf_is_dynamic(b"#!/bin/sh"), None);
        assert_eq!(elf_is_dynamic(&elf(libc::PT_LOAD)[..66]), None, "program headers cut off");
        assert_eq!(path_preloads("/bin/sh", 0), Preloads::Any);
        let dir = std::env::temp_dir().join(format!("tssx-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8], mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let stat = write("static", &elf(libc::PT_LOAD), 0o755);
        assert_eq!(path_preloads(&stat, 0), Preloads::No);
        assert_eq!(path_preloads(&write("dynamic", &elf(libc::PT_INTERP), 0o755), 0), Preloads::Any);
        // Set-user-ID to another user: secure execution; to this very user: not.
        let setuid = write("setuid", &elf(libc::PT_INTERP), 0o4755);
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert_eq!(path_preloads(&setuid, 0), Preloads::Any);
        std::os::unix::fs::chown(&setuid, Some(if me == 0 { 65534 } else { 0 }), None).ok();
        std::fs::set_permissions(&setuid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
        if std::fs::metadata(&setuid).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) != me) {
            assert_eq!(path_preloads(&setuid, 0), Preloads::SystemWide);
        }
        assert_eq!(path_preloads(&write("script", b"#!/bin/sh\necho\n", 0o755), 0), Preloads::Any);
        assert_eq!(path_preloads(&write("script-of-static", format!("#!{stat} -x\n").as_bytes(), 0o755), 0), Preloads::No);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
