//! Which sockets the hook may swap: Unix stream sockets on a path the running agent watches.
//!
//! The agent publishes its watched paths in `/run/tssx/paths`, one per line (`/path` or
//! `@abstract`). No file (no agent): nothing is watched, and the hook passes everything through.
//! Lines that start with `#` carry the agent's settings for hooks: `#claim-after-ns=N` (how long
//! a connection lives before it claims a segment, see [`crate::phase`]).

use std::{
    ffi::CStr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use libc::c_int;

use crate::sys;

/// The watched paths the agent publishes (its default state directory, see
/// `tssx-agent --state-dir`).
const PATHS_FILE: &CStr = c"/run/tssx/paths";
/// Longest paths file read (256 paths of 108 bytes fit).
const PATHS_FILE_MAX: usize = 64 * 1024;

/// The watched-path name of a Unix socket address: `/path` or `@abstract`; `None` otherwise.
///
/// # Safety
/// `addr` must point at `len` readable bytes.
pub unsafe fn unix_name(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<String> {
    let len = len as usize;
    let family_len = std::mem::size_of::<libc::sa_family_t>();
    if addr.is_null() || len <= family_len || len > std::mem::size_of::<libc::sockaddr_un>() {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable bytes; sockaddr_un is at least that long.
    let un = unsafe { &*addr.cast::<libc::sockaddr_un>() };
    if un.sun_family != libc::AF_UNIX as libc::sa_family_t {
        return None;
    }
    let path: Vec<u8> = un.sun_path[..len - family_len].iter().map(|&c| c as u8).collect();
    if path.first() == Some(&0) {
        return Some(format!("@{}", String::from_utf8_lossy(&path[1..])));
    }
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    Some(String::from_utf8_lossy(&path[..end]).into_owned())
}

/// What identifies one version of the published paths file: the agent replaces it by rename
/// (a new inode) and never rewrites it in place, so an unchanged `(dev, inode, mtime, size)`
/// means unchanged contents.
type FileVersion = (u64, u64, i64, i64, i64);

/// The watched paths as last read, and when the file was last looked at.
struct Cached {
    /// `None`: there was no paths file (no agent).
    version: Option<FileVersion>,
    list: Vec<String>,
    checked_ns: u64,
}

/// The paths file is looked at again (one `stat`) at most this often: a connection made less
/// than this after an agent started, stopped or changed its paths may be treated as before.
pub const RECHECK_NS: u64 = 50_000_000;

/// The paths last read (see [`Cached`]).
static PATHS: std::sync::Mutex<Option<Cached>> = std::sync::Mutex::new(None);
/// Bumped whenever the cached list changes (see [`generation`]). Relaxed: a version number.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A number that changes whenever the watched paths change (for caches of decisions).
#[inline]
pub fn generation() -> u64 {
    GENERATION.load(Relaxed)
}

/// The agent's `#claim-after-ns` setting (default: [`crate::phase::CLAIM_AFTER_NS`]), as last
/// read from the paths file. Relaxed: a setting, read on every claim decision.
static CLAIM_AFTER: AtomicU64 = AtomicU64::new(crate::phase::CLAIM_AFTER_NS);

/// How long a connection lives before it claims a segment (the agent's setting).
#[inline]
pub fn claim_after_ns() -> u64 {
    CLAIM_AFTER.load(Relaxed)
}

/// Reads the paths file (raw system calls: never the hook's own `read`); applies its settings.
fn read_paths() -> Option<Vec<String>> {
    let mut buf = vec![0u8; PATHS_FILE_MAX];
    let n = sys::read_file(PATHS_FILE, &mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    let mut claim_after = crate::phase::CLAIM_AFTER_NS;
    for setting in text.lines().filter_map(|l| l.strip_prefix('#')) {
        if let Some(ns) = setting.strip_prefix("claim-after-ns=").and_then(|v| v.trim().parse().ok()) {
            claim_after = ns;
        }
    }
    CLAIM_AFTER.store(claim_after, Relaxed);
    Some(text.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect())
}

/// True if the agent currently watches `name`.
///
/// Usually no system call: the list read last is used, and the file is looked at again (one
/// `stat`, and a read when it changed) at most every [`RECHECK_NS`]. The cache's lock is only
/// tried, never waited for (a process that forked while another thread held it must not
/// hang); when busy, the file is read directly.
pub fn watched(name: &str) -> bool {
    let Ok(mut cache) = PATHS.try_lock() else {
        return read_paths().is_some_and(|list| list.iter().any(|line| line == name));
    };
    refresh(&mut cache);
    cache.as_ref().is_some_and(|c| c.list.iter().any(|line| line == name))
}

/// Looks at the paths file again if [`RECHECK_NS`] passed (see [`watched`]), so that
/// [`generation`] moves when the agent's paths changed. Skipped if the cache is busy.
pub fn refresh_generation() {
    if let Ok(mut cache) = PATHS.try_lock() {
        refresh(&mut cache);
    }
}

fn refresh(cache: &mut Option<Cached>) {
    let now = crate::spin::now_ns();
    if let Some(c) = cache.as_mut() {
        if now.saturating_sub(c.checked_ns) < RECHECK_NS {
            return;
        }
    }
    let version = sys::stat(PATHS_FILE).ok().map(|st| (st.st_dev, st.st_ino, st.st_mtime, st.st_mtime_nsec, st.st_size));
    match cache.as_mut() {
        Some(c) if c.version == version => c.checked_ns = now,
        _ => {
            let list = if version.is_some() { read_paths().unwrap_or_default() } else { Vec::new() };
            *cache = Some(Cached { version, list, checked_ns: now });
            GENERATION.fetch_add(1, Relaxed);
        }
    }
}

/// The local name of socket `fd` (for an accepted socket: the listener's path).
pub fn local_name(fd: c_int) -> Option<String> {
    let (addr, len) = tssx_shm::sys::getsockname_un(fd).ok()?;
    // SAFETY: the kernel filled `len` bytes of `addr`.
    unsafe { unix_name((&addr as *const libc::sockaddr_un).cast(), len) }
}

/// True if `fd` is a stream socket (datagram and seqpacket sockets stay plain).
pub fn is_stream(fd: c_int) -> bool {
    let mut kind: c_int = 0;
    tssx_shm::sys::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, &mut kind).is_ok() && kind == libc::SOCK_STREAM
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(addr: &libc::sockaddr_un, len: usize) -> Option<String> {
        // SAFETY: `len` bytes of a live sockaddr_un.
        unsafe { unix_name((addr as *const libc::sockaddr_un).cast(), len as libc::socklen_t) }
    }

    fn addr(path: &[u8]) -> libc::sockaddr_un {
        // SAFETY: plain data.
        let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        a.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, &s) in a.sun_path.iter_mut().zip(path) {
            *d = s as libc::c_char;
        }
        a
    }

    #[test]
    fn names_of_paths_and_abstract_addresses() {
        let family = std::mem::size_of::<libc::sa_family_t>();
        assert_eq!(name_of(&addr(b"/run/a.sock"), family + 12).as_deref(), Some("/run/a.sock"));
        // Garbage after the NUL is ignored (callers such as Python leave some).
        let mut a = addr(b"/run/a.sock\0xyz");
        a.sun_path[20] = b'q' as libc::c_char;
        assert_eq!(name_of(&a, std::mem::size_of::<libc::sockaddr_un>()).as_deref(), Some("/run/a.sock"));
        // Abstract names are not NUL-terminated: the length decides.
        assert_eq!(name_of(&addr(b"\0name"), family + 5).as_deref(), Some("@name"));
        assert_eq!(name_of(&addr(b"/x"), family), None);
        let mut inet = addr(b"/x");
        inet.sun_family = libc::AF_INET as libc::sa_family_t;
        assert_eq!(name_of(&inet, family + 3), None);
    }

    #[test]
    fn socket_kinds_and_names() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(is_stream(std::os::fd::AsRawFd::as_raw_fd(&a)));
        let d = std::os::unix::net::UnixDatagram::unbound().unwrap();
        assert!(!is_stream(std::os::fd::AsRawFd::as_raw_fd(&d)));
        let dir = std::env::temp_dir().join(format!("tssx-hook-paths-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert_eq!(local_name(std::os::fd::AsRawFd::as_raw_fd(&server)).as_deref(), path.to_str());
        assert_eq!(local_name(std::os::fd::AsRawFd::as_raw_fd(&client)), None, "an unbound client has no name");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
