//! Children: which fds of a new image (after `execve`, or in a `posix_spawn` child) are which
//! swapped connection, and the children libc makes itself (`system`, `popen`).
//!
//! # posix_spawn file actions
//! glibc's `posix_spawn_file_actions_t` is opaque (its layout and action tags changed between
//! releases), so the hook does not read it: it interposes the `posix_spawn_file_actions_*`
//! functions and keeps a side record per actions object (keyed by its address: `init` starts
//! one, each successful `add*` appends to it, `destroy` drops it). At spawn time [`child_fds`]
//! replays the record over a model of this process's relevant fds (each swapped socket with its
//! FD_CLOEXEC, and each segment memfd), exactly as glibc's child runs the actions
//! (`adddup2(fd, fd)` clears FD_CLOEXEC, as since glibc 2.29), then drops what is close-on-exec:
//! the result names every child fd number that is a swapped socket, and where each segment's
//! memfd is. An actions object the hook has no record of (impossible unless it was made before
//! the hook was loaded) is treated as "no actions".
//!
//! # system, popen, pclose
//! glibc spawns these children with its internal `posix_spawn`, so no interposed function runs
//! and the child would inherit a swapped socket without its segment. The hook implements them
//! itself over its own `posix_spawn` (as glibc does over its internal one: `/bin/sh -c`, the
//! same signal handling, the same pipe and close-on-exec rules), so a child with the hook keeps
//! the rings and a child without it gets the connection handed back first ([`crate::exec`]).

use std::{ffi::CString, sync::Mutex};

use libc::c_int;

use crate::sys;

/// One file action, as recorded (with what it needs to be added again to another object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `addclose(fd)`.
    Close(c_int),
    /// `adddup2(fd, newfd)`.
    Dup2(c_int, c_int),
    /// `addopen(fd, path, oflag, mode)`: `fd` becomes a file that is not a tracked socket.
    Open(c_int, CString, c_int, libc::mode_t),
    /// `addclosefrom_np(from)`.
    CloseFrom(c_int),
    /// `addchdir_np(path)` (no fd changes).
    Chdir(CString),
    /// `addfchdir_np(fd)` (no fd changes).
    Fchdir(c_int),
    /// `addtcsetpgrp_np(fd)` (no fd changes).
    Tcsetpgrp(c_int),
}

/// The side records: (address of the actions object, its actions).
static RECORDS: Mutex<Vec<(usize, Vec<Op>)>> = Mutex::new(Vec::new());

fn records() -> std::sync::MutexGuard<'static, Vec<(usize, Vec<Op>)>> {
    RECORDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `posix_spawn_file_actions_init(addr)` succeeded: a new, empty record.
pub fn actions_init(addr: usize) {
    let mut recs = records();
    recs.retain(|(a, _)| *a != addr);
    recs.push((addr, Vec::new()));
}

/// `posix_spawn_file_actions_destroy(addr)`: the record is dropped.
pub fn actions_destroy(addr: usize) {
    records().retain(|(a, _)| *a != addr);
}

/// A successful `add*` on the object at `addr` (an object the hook saw no `init` of stays
/// unknown: its record would be incomplete).
pub fn actions_push(addr: usize, op: Op) {
    if let Some((_, ops)) = records().iter_mut().find(|(a, _)| *a == addr) {
        ops.push(op);
    }
}

/// The actions recorded for the object at `addr`: empty for a null pointer, `None` for an
/// object the hook has no record of.
pub fn actions_of(addr: usize) -> Option<Vec<Op>> {
    if addr == 0 {
        return Some(Vec::new());
    }
    records().iter().find(|(a, _)| *a == addr).map(|(_, ops)| ops.clone())
}

/// A new actions object (libc's) with `ops`, then `addopen(fd, path, O_RDWR)` for each of
/// `opens`; `None` if libc refused one. The caller destroys it.
pub fn rebuild(ops: &[Op], opens: &[(c_int, CString)]) -> Option<Box<libc::posix_spawn_file_actions_t>> {
    // SAFETY: plain data, initialised by libc's init below.
    let mut fa: Box<libc::posix_spawn_file_actions_t> = Box::new(unsafe { std::mem::zeroed() });
    let p: *mut libc::posix_spawn_file_actions_t = &mut *fa;
    // SAFETY: libc's functions on a valid object, with valid C strings.
    unsafe {
        if sys::posix_spawn_file_actions_init(p) != 0 {
            return None;
        }
        for op in ops.iter().chain(opens.iter().map(|(fd, path)| Op::Open(*fd, path.clone(), libc::O_RDWR, 0)).collect::<Vec<_>>().iter()) {
            let rc = match op {
                Op::Close(fd) => sys::posix_spawn_file_actions_addclose(p, *fd),
                Op::Dup2(fd, to) => sys::posix_spawn_file_actions_adddup2(p, *fd, *to),
                Op::Open(fd, path, oflag, mode) => sys::posix_spawn_file_actions_addopen(p, *fd, path.as_ptr(), *oflag, *mode),
                Op::CloseFrom(from) => sys::spawn_addclosefrom_np(p, *from),
                Op::Chdir(path) => sys::spawn_addchdir_np(p, path.as_ptr()),
                Op::Fchdir(fd) => sys::spawn_addfchdir_np(p, *fd),
                Op::Tcsetpgrp(fd) => sys::spawn_addtcsetpgrp_np(p, *fd),
            };
            if rc != 0 {
                sys::posix_spawn_file_actions_destroy(p);
                return None;
            }
        }
    }
    Some(fa)
}

/// What an fd of the model refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Obj {
    /// A swapped socket of connection `k`.
    Sock(usize),
    /// The segment memfd of connection `k`.
    Mem(usize),
    /// Something else the file actions put there (an opened file, a dup of another fd).
    Other,
}

/// The fds of the new image: starts from `initial` (fd, what it is, its FD_CLOEXEC), runs
/// `ops` as glibc's child does, then drops what is close-on-exec. Sorted by fd.
pub fn child_fds(initial: &[(c_int, Obj, bool)], ops: &[Op]) -> Vec<(c_int, Obj)> {
    let mut map: std::collections::BTreeMap<c_int, (Obj, bool)> = initial.iter().map(|&(fd, obj, cloexec)| (fd, (obj, cloexec))).collect();
    for op in ops {
        match *op {
            Op::Close(fd) => {
                map.remove(&fd);
            }
            Op::Open(fd, ..) => {
                map.insert(fd, (Obj::Other, false));
            }
            Op::Dup2(from, to) if from == to => {
                if let Some(entry) = map.get_mut(&from) {
                    entry.1 = false;
                }
            }
            Op::Dup2(from, to) => {
                let obj = map.get(&from).map_or(Obj::Other, |&(obj, _)| obj);
                map.insert(to, (obj, false));
            }
            Op::CloseFrom(from) => map.retain(|&fd, _| fd < from),
            Op::Chdir(_) | Op::Fchdir(_) | Op::Tcsetpgrp(_) => {}
        }
    }
    map.into_iter().filter(|(_, (_, cloexec))| !cloexec).map(|(fd, (obj, _))| (fd, obj)).collect()
}

/// Closes an fd the hook made itself (a pipe end), errno untouched.
fn close_fd(fd: c_int) {
    // SAFETY: `fd` is one of the hook's own pipe ends, closed once.
    let _ = unsafe { tssx_shm::sys::close(fd) };
}

unsafe extern "C" {
    static environ: *const *const libc::c_char;
}

/// `vfork` in a process that tracks connections (the exported `vfork` jumps to libc's own
/// otherwise, see [`crate::calls::vfork_target`]), run as `fork` (libc's, so that the child's
/// libc is whole: an exec through the hook
/// may allocate), and the parent then waits until the child has exec'd or exited, as after a
/// real `vfork`. A real `vfork` child runs in the parent's memory: a `close` of its copy of a
/// swapped socket would change the parent's table and the connection's refcount, and the
/// peer would see EOF while the parent still writes. POSIX allows `vfork` to be `fork` (what a
/// child may legally do after `vfork`, exec or `_exit`, behaves the same); what differs is
/// only what a program may not rely on: a child's stores are not seen by the parent, and
/// `pthread_atfork` handlers run.
pub fn vfork() -> libc::pid_t {
    // The wait: a close-on-exec pipe whose write end only the child holds; EOF on the read end
    // means the child exec'd or exited.
    let mut ends = [-1 as c_int; 2];
    // SAFETY: a valid array of two fds.
    let piped = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } == 0;
    // SAFETY: libc's fork, through the hook's fork (refcounts, child state).
    let pid = unsafe { crate::calls::fork() };
    let close = |fd: c_int| {
        if piped {
            close_fd(fd);
        }
    };
    if pid == 0 {
        close(ends[0]);
        return 0;
    }
    let saved = crate::sys::errno();
    close(ends[1]);
    if pid > 0 && piped {
        let mut byte = [0u8; 1];
        loop {
            // SAFETY: reads one byte into a live buffer.
            let n = unsafe { crate::sys::read(ends[0], byte.as_mut_ptr().cast(), 1) };
            if !(n < 0 && crate::sys::errno() == libc::EINTR) {
                break;
            }
        }
    }
    close(ends[0]);
    crate::sys::set_errno(saved);
    pid
}

/// Concurrent `system` calls share one saving of SIGINT's and SIGQUIT's actions: (callers
/// inside, saved SIGINT, saved SIGQUIT), as glibc does.
static SYSTEM_SIGNALS: Mutex<(u32, Option<(libc::sigaction, libc::sigaction)>)> = Mutex::new((0, None));

/// `system(command)`: `/bin/sh -c command` through the hook's `posix_spawn`, with glibc's
/// signal handling (SIGINT and SIGQUIT ignored and SIGCHLD blocked while waiting; the child
/// gets the caller's mask and, unless they were ignored, SIGINT and SIGQUIT at their default
/// action). A null command: whether a shell is available. 127 as exit status when the shell
/// cannot be spawned.
///
/// # Safety
/// `command` is null or a valid C string.
pub unsafe fn system(command: *const libc::c_char) -> c_int {
    if command.is_null() {
        // SAFETY: a valid C string.
        return c_int::from(unsafe { system(c"exit 0".as_ptr()) } == 0);
    }
    // SAFETY: plain data, filled below.
    let (mut omask, mut chld, mut reset): (libc::sigset_t, libc::sigset_t, libc::sigset_t) = unsafe { std::mem::zeroed() };
    let (intr, quit) = {
        let mut shared = SYSTEM_SIGNALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if shared.0 == 0 {
            // SAFETY: plain data; sigaction fills the old actions.
            let (mut ign, mut intr, mut quit): (libc::sigaction, libc::sigaction, libc::sigaction) = unsafe { std::mem::zeroed() };
            ign.sa_sigaction = libc::SIG_IGN;
            // SAFETY: valid pointers to sigaction structs.
            unsafe {
                libc::sigemptyset(&mut ign.sa_mask);
                libc::sigaction(libc::SIGINT, &ign, &mut intr);
                libc::sigaction(libc::SIGQUIT, &ign, &mut quit);
            }
            shared.1 = Some((intr, quit));
        }
        shared.0 += 1;
        shared.1.unwrap_or_else(|| {
            // SAFETY: plain data (not reached: set above or by the first caller).
            unsafe { std::mem::zeroed() }
        })
    };
    // SAFETY: valid signal sets.
    unsafe {
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &chld, &mut omask);
        libc::sigemptyset(&mut reset);
        if intr.sa_sigaction != libc::SIG_IGN {
            libc::sigaddset(&mut reset, libc::SIGINT);
        }
        if quit.sa_sigaction != libc::SIG_IGN {
            libc::sigaddset(&mut reset, libc::SIGQUIT);
        }
    }
    // SAFETY: plain data, initialised by posix_spawnattr_init.
    let mut attr: libc::posix_spawnattr_t = unsafe { std::mem::zeroed() };
    let mut pid: libc::pid_t = 0;
    let argv: [*mut libc::c_char; 4] = [c"sh".as_ptr().cast_mut(), c"-c".as_ptr().cast_mut(), command.cast_mut(), std::ptr::null_mut()];
    // SAFETY: a valid attribute object and signal sets; the hook's posix_spawn with valid
    // arguments (argv and environ are NULL-terminated).
    let spawned = unsafe {
        libc::posix_spawnattr_init(&mut attr);
        libc::posix_spawnattr_setsigdefault(&mut attr, &reset);
        libc::posix_spawnattr_setsigmask(&mut attr, &omask);
        libc::posix_spawnattr_setflags(&mut attr, (libc::POSIX_SPAWN_SETSIGDEF | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short);
        let rc = crate::calls::posix_spawn(&mut pid, c"/bin/sh".as_ptr(), std::ptr::null(), &attr, argv.as_ptr(), environ.cast());
        libc::posix_spawnattr_destroy(&mut attr);
        rc
    };
    let mut status: c_int = 0;
    if spawned == 0 {
        loop {
            // SAFETY: a valid status pointer.
            let got = unsafe { libc::waitpid(pid, &mut status, 0) };
            if got == pid {
                break;
            }
            if got < 0 && crate::sys::errno() == libc::EINTR {
                continue;
            }
            status = -1;
            break;
        }
    } else {
        status = 127 << 8;
    }
    let saved = crate::sys::errno();
    {
        let mut shared = SYSTEM_SIGNALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.0 = shared.0.saturating_sub(1);
        if shared.0 == 0 {
            if let Some((intr, quit)) = shared.1.take() {
                // SAFETY: the actions saved above.
                unsafe {
                    libc::sigaction(libc::SIGINT, &intr, std::ptr::null_mut());
                    libc::sigaction(libc::SIGQUIT, &quit, std::ptr::null_mut());
                }
            }
        }
    }
    // SAFETY: the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &omask, std::ptr::null_mut()) };
    crate::sys::set_errno(saved);
    status
}

/// The streams [`popen`] made: (stream, child pid, the stream's fd).
static POPENED: Mutex<Vec<(usize, libc::pid_t, c_int)>> = Mutex::new(Vec::new());

fn popened() -> std::sync::MutexGuard<'static, Vec<(usize, libc::pid_t, c_int)>> {
    POPENED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `popen(command, mode)`: a pipe, `/bin/sh -c command` spawned through the hook's
/// `posix_spawn` with the pipe's end on its stdin ("w") or stdout ("r") and every other
/// `popen` stream of this process closed (POSIX), the stream made with `fdopen`. Mode: `r` or
/// `w`, and `e` for a close-on-exec stream (as glibc; anything else is EINVAL).
///
/// # Safety
/// `command` and `mode` are valid C strings.
pub unsafe fn popen(command: *const libc::c_char, mode: *const libc::c_char) -> *mut libc::FILE {
    // SAFETY: per the contract.
    let flags = unsafe { std::ffi::CStr::from_ptr(mode) }.to_bytes();
    let (mut read, mut write, mut cloexec) = (false, false, false);
    for &b in flags {
        match b {
            b'r' => read = true,
            b'w' => write = true,
            b'e' => cloexec = true,
            _ => {}
        }
    }
    if read == write || !flags.iter().all(|b| b"rwe".contains(b)) {
        crate::sys::set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    let mut ends = [-1 as c_int; 2];
    // SAFETY: a valid array of two fds.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return std::ptr::null_mut();
    }
    let (parent_end, child_end, child_fd) = if read { (ends[0], ends[1], 1) } else { (ends[1], ends[0], 0) };
    // SAFETY: plain data, initialised by the hook's posix_spawn_file_actions_init.
    let mut fa: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
    let mut pid: libc::pid_t = 0;
    let argv: [*mut libc::c_char; 4] = [c"sh".as_ptr().cast_mut(), c"-c".as_ptr().cast_mut(), command.cast_mut(), std::ptr::null_mut()];
    let others: Vec<c_int> = popened().iter().map(|&(_, _, fd)| fd).collect();
    // SAFETY: the hook's own file-action and spawn functions (so the spawn sees these actions),
    // with a valid object and NULL-terminated argv and environ.
    let rc = unsafe {
        crate::calls::posix_spawn_file_actions_init(&mut fa);
        // adddup2(fd, fd) clears close-on-exec when the pipe end is already the std fd.
        crate::calls::posix_spawn_file_actions_adddup2(&mut fa, child_end, child_fd);
        for fd in others.into_iter().filter(|&fd| fd != child_fd) {
            crate::calls::posix_spawn_file_actions_addclose(&mut fa, fd);
        }
        let rc = crate::calls::posix_spawn(&mut pid, c"/bin/sh".as_ptr(), &fa, std::ptr::null(), argv.as_ptr(), environ.cast());
        crate::calls::posix_spawn_file_actions_destroy(&mut fa);
        rc
    };
    close_fd(child_end);
    if rc != 0 {
        close_fd(parent_end);
        crate::sys::set_errno(rc);
        return std::ptr::null_mut();
    }
    if !cloexec {
        let _ = tssx_shm::sys::fcntl(parent_end, libc::F_SETFD, 0);
    }
    // SAFETY: a valid fd and mode string.
    let stream = unsafe { crate::sys::fdopen(parent_end, if read { c"r".as_ptr() } else { c"w".as_ptr() }) };
    if stream.is_null() {
        let saved = crate::sys::errno();
        close_fd(parent_end);
        let mut status = 0;
        // SAFETY: reaps the child just spawned.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        crate::sys::set_errno(saved);
        return stream;
    }
    popened().push((stream as usize, pid, parent_end));
    stream
}

/// `pclose(stream)`: for a stream of [`popen`], closes it and waits for its child (its wait
/// status, or -1); any other stream goes to libc's `pclose`.
///
/// # Safety
/// `stream` is a stream `popen` returned and that is not closed yet.
pub unsafe fn pclose(stream: *mut libc::FILE) -> c_int {
    let found = {
        let mut list = popened();
        list.iter().position(|&(s, _, _)| s == stream as usize).map(|i| list.remove(i))
    };
    let Some((_, pid, _)) = found else {
        // SAFETY: forwarded.
        return unsafe { crate::sys::pclose(stream) };
    };
    // SAFETY: per the contract: an open stream.
    unsafe { libc::fclose(stream) };
    let mut status: c_int = 0;
    loop {
        // SAFETY: a valid status pointer.
        let got = unsafe { libc::waitpid(pid, &mut status, 0) };
        if got == pid {
            return status;
        }
        if got < 0 && crate::sys::errno() == libc::EINTR {
            continue;
        }
        return -1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(fd: c_int) -> Op {
        Op::Open(fd, c"/dev/null".into(), libc::O_RDONLY, 0)
    }

    #[test]
    fn inetd_dup2_onto_stdin_and_stdout_of_a_cloexec_socket() {
        // Socket 5 (close-on-exec), its memfd 9.
        let initial = [(5, Obj::Sock(0), true), (9, Obj::Mem(0), false)];
        let out = child_fds(&initial, &[Op::Dup2(5, 0), Op::Dup2(5, 1), Op::Close(5)]);
        assert_eq!(out, [(0, Obj::Sock(0)), (1, Obj::Sock(0)), (9, Obj::Mem(0))]);
        // Only stdin; only stdout.
        assert_eq!(child_fds(&initial, &[Op::Dup2(5, 0)]), [(0, Obj::Sock(0)), (9, Obj::Mem(0))]);
        assert_eq!(child_fds(&initial, &[Op::Dup2(5, 1)]), [(1, Obj::Sock(0)), (9, Obj::Mem(0))]);
        // No actions: the close-on-exec socket does not survive.
        assert_eq!(child_fds(&initial, &[]), [(9, Obj::Mem(0))]);
    }

    #[test]
    fn close_open_closefrom_and_self_dup2() {
        let initial = [(3, Obj::Sock(0), false), (4, Obj::Sock(1), true), (7, Obj::Mem(0), false), (8, Obj::Mem(1), false)];
        // addclose of the socket.
        assert_eq!(child_fds(&initial, &[Op::Close(3)]), [(7, Obj::Mem(0)), (8, Obj::Mem(1))]);
        // addopen reuses a socket's number: not a socket any more.
        assert_eq!(
            child_fds(&initial, &[Op::Dup2(4, 1), open(1)]),
            [(1, Obj::Other), (3, Obj::Sock(0)), (7, Obj::Mem(0)), (8, Obj::Mem(1))]
        );
        // adddup2(fd, fd) clears close-on-exec.
        assert_eq!(child_fds(&initial, &[Op::Dup2(4, 4)]), [(3, Obj::Sock(0)), (4, Obj::Sock(1)), (7, Obj::Mem(0)), (8, Obj::Mem(1))]);
        // A dup2 from an fd the model does not know replaces what was there.
        assert_eq!(child_fds(&initial, &[Op::Dup2(20, 3)]), [(3, Obj::Other), (7, Obj::Mem(0)), (8, Obj::Mem(1))]);
        // closefrom after moving the socket low: the memfds are gone too; chdir changes no fd.
        assert_eq!(child_fds(&initial, &[Op::Dup2(3, 0), Op::CloseFrom(3), Op::Chdir(c"/".into()), Op::Fchdir(0)]), [(0, Obj::Sock(0))]);
    }

    #[test]
    fn records_follow_init_add_destroy() {
        let addr = 0x1234_5678;
        actions_init(addr);
        actions_push(addr, Op::Dup2(5, 0));
        actions_push(addr, Op::CloseFrom(3));
        assert_eq!(actions_of(addr), Some(vec![Op::Dup2(5, 0), Op::CloseFrom(3)]));
        // A second init of the same object starts afresh.
        actions_init(addr);
        assert_eq!(actions_of(addr), Some(vec![]));
        actions_destroy(addr);
        // Unknown afterwards (an add to it is not recorded); a null pointer has no actions.
        actions_push(addr, Op::Close(1));
        assert_eq!(actions_of(addr), None);
        assert_eq!(actions_of(0), Some(vec![]));
    }

    #[test]
    fn rebuilt_actions_run_like_the_original_plus_the_opens() {
        // Spawn `/bin/sh -c` with rebuilt actions: /dev/null opened onto 805, a file opened by
        // the extra open onto 806, closefrom(807), a chdir; the shell reports what it has.
        let dir = std::env::temp_dir().join(format!("tssx-rebuild-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        // An fd above 807 that the closefrom must close in the child (F_DUPFD: never one of
        // the other tests' fds).
        let keep = std::fs::File::open(&file).unwrap();
        // SAFETY: duplicates an fd we own to the lowest free number >= 808.
        let high = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&keep), libc::F_DUPFD, 808) };
        assert!(high >= 808);
        let ops = [open(805), Op::CloseFrom(807), Op::Chdir(CString::new(dir.to_str().unwrap()).unwrap())];
        let fa = rebuild(&ops, &[(806, CString::new(file.to_str().unwrap()).unwrap())]).expect("rebuild");
        let out = dir.join("out");
        let script = format!(
            "ls -l /proc/self/fd/805 /proc/self/fd/806 > {0} 2>&1; pwd >> {0}; test -e /proc/self/fd/{high} && echo leaked >> {0}",
            out.display()
        );
        let script = CString::new(script).unwrap();
        let argv = [c"sh".as_ptr().cast_mut(), c"-c".as_ptr().cast_mut(), script.as_ptr().cast_mut(), std::ptr::null_mut()];
        let env = [std::ptr::null_mut()];
        let mut pid = 0;
        // SAFETY: valid arguments; libc's posix_spawn (this test binary has no hook).
        let rc = unsafe { libc::posix_spawn(&mut pid, c"/bin/sh".as_ptr(), &*fa, std::ptr::null(), argv.as_ptr(), env.as_ptr()) };
        assert_eq!(rc, 0);
        let mut st = 0;
        // SAFETY: reaps the child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        // SAFETY: the rebuilt object, destroyed once; our own dup closed once.
        unsafe {
            sys::posix_spawn_file_actions_destroy(Box::into_raw(fa));
            libc::close(high);
        }
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("/dev/null"), "{text}");
        assert!(text.contains(file.to_str().unwrap()), "{text}");
        assert!(text.contains(&format!("\n{}\n", dir.display())), "{text}");
        assert!(!text.contains("leaked"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
