//! Which sockets the hook may swap: Unix stream sockets on an address the running agent
//! watches.
//!
//! The agent publishes its watched patterns in `/run/tssx/paths`, one per line: exact paths,
//! directories (`/run/php/`), globs (`/run/php/*.sock`), `@abstract` names and prefixes
//! (`@name*`); see [`tssx_common::pattern`], whose matcher the agent uses too. No file (no
//! agent): nothing is watched, and the hook passes everything through. Lines that start with
//! `#` carry the agent's settings for hooks: `#claim-after-ns=N` (how long a connection lives
//! before it claims a segment, see [`crate::phase`]). A line that is no valid pattern (a newer
//! agent's syntax) is skipped.
//!
//! Cost: the patterns are checked and compiled once per version of the file; a connect to an
//! unwatched address compares it with each pattern's literal prefix (a `memcmp`), and only an
//! address under that prefix runs the glob matcher. No allocation, no system call (the file
//! is looked at again at most every [`RECHECK_NS`]). A relative address (`connect("app.sock")`
//! after a `chdir`) costs one `getcwd` more, and only while the agent watches filesystem
//! patterns.

use std::{
    ffi::CStr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use libc::c_int;
use tssx_common::{
    pattern::{matches_parts, Pattern, Shape},
    SUN_PATH_LEN,
};

use crate::sys;

/// The watched paths the agent publishes (its default state directory, see
/// `tssx-agent --state-dir`).
const PATHS_FILE: &CStr = c"/run/tssx/paths";
/// Longest paths file read (256 paths of 108 bytes fit).
const PATHS_FILE_MAX: usize = 64 * 1024;

/// A Unix socket address as the kernel holds it: `sun_path` bytes (a path without its NUL, an
/// abstract name with its leading NUL), at most 108 of them, without allocating.
#[derive(Clone, Copy)]
pub struct UnixName {
    bytes: [u8; SUN_PATH_LEN],
    len: usize,
}

impl UnixName {
    /// The `sun_path` bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// A relative filesystem path (not `/...`, not abstract).
    fn is_relative(&self) -> bool {
        is_relative(self.bytes())
    }

    /// The name of `sun_path` bytes (at most [`SUN_PATH_LEN`]; the rest is cut off).
    fn from_bytes(bytes: &[u8]) -> UnixName {
        let mut name = UnixName { bytes: [0; SUN_PATH_LEN], len: bytes.len().min(SUN_PATH_LEN) };
        name.bytes[..name.len].copy_from_slice(&bytes[..name.len]);
        name
    }

    /// The name as the trace writes it: `@name` for an abstract one.
    pub fn display(&self) -> String {
        match self.bytes().split_first() {
            Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
            _ => String::from_utf8_lossy(self.bytes()).into_owned(),
        }
    }
}

/// Whether `sun_path` bytes name a relative filesystem path (not `/...`, not abstract).
fn is_relative(bytes: &[u8]) -> bool {
    !matches!(bytes.first(), Some(0 | b'/'))
}

/// The name of a Unix socket address; `None` for another family or an unnamed address.
///
/// # Safety
/// `addr` must point at `len` readable bytes.
pub unsafe fn unix_name(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<UnixName> {
    // SAFETY: as the caller guarantees.
    unsafe { unix_name_bytes(addr, len) }.map(UnixName::from_bytes)
}

/// The `sun_path` bytes of a Unix socket address (a path up to its NUL, an abstract name with
/// its leading NUL), borrowed from the caller's memory: what every Unix `connect` looks up,
/// without a copy. `None` for another family or an unnamed address.
///
/// # Safety
/// `addr` must point at `len` readable bytes, which stay unchanged for `'a`.
pub unsafe fn unix_name_bytes<'a>(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<&'a [u8]> {
    let len = len as usize;
    let family_len = std::mem::size_of::<libc::sa_family_t>();
    if addr.is_null() || len <= family_len || len > std::mem::size_of::<libc::sockaddr_un>() {
        return None;
    }
    // SAFETY: the caller guarantees `len` readable bytes; the family is the first field.
    if unsafe { addr.cast::<libc::sa_family_t>().read_unaligned() } != libc::AF_UNIX as libc::sa_family_t {
        return None;
    }
    // SAFETY: `len - family_len` readable bytes follow the family (the caller's guarantee).
    let raw = unsafe { std::slice::from_raw_parts(addr.cast::<u8>().add(family_len), len - family_len) };
    if raw[0] == 0 {
        return Some(raw);
    }
    // A path ends at its NUL (callers such as Python leave garbage after it).
    // (core's word-at-a-time search: this runs in every Unix `connect`.)
    Some(std::ffi::CStr::from_bytes_until_nul(raw).map_or(raw, |path| path.to_bytes()))
}

/// One published pattern, checked and compiled once: its parts for
/// [`tssx_common::pattern::matches_parts`] and its literal prefix, for a quick refusal.
struct Compiled {
    body: Box<[u8]>,
    is_abstract: bool,
    shape: Shape,
    /// Bytes of `body` that every covered name starts with.
    literal: usize,
}

impl Compiled {
    fn new(line: &str) -> Option<Self> {
        let p = Pattern::parse(line).ok()?;
        Some(Self { body: p.body.into(), is_abstract: p.is_abstract, shape: p.shape, literal: p.literal_prefix().len() })
    }

    #[inline]
    fn matches(&self, name: &[u8]) -> bool {
        // The cheap refusal first: the literal prefix, after the leading NUL or at the `/`.
        let rest = match (self.is_abstract, name.split_first()) {
            (true, Some((0, rest))) => rest,
            (false, Some((b'/', _))) => name,
            _ => return false,
        };
        rest.starts_with(&self.body[..self.literal]) && matches_parts(&self.body, self.is_abstract, self.shape, name)
    }
}

/// The compiled patterns of one version of the file.
#[derive(Default)]
struct Patterns {
    list: Vec<Compiled>,
    /// Some pattern is a filesystem one: relative addresses are worth resolving.
    filesystem: bool,
}

impl Patterns {
    fn parse(text: &str) -> Self {
        let list: Vec<Compiled> = text.lines().filter(|l| !l.starts_with('#')).filter_map(Compiled::new).collect();
        let filesystem = list.iter().any(|c| !c.is_abstract);
        Self { list, filesystem }
    }

    /// Whether `name` is watched; a relative name is resolved against the working directory.
    fn covers(&self, name: &UnixName) -> bool {
        if self.list.is_empty() {
            return false;
        }
        if name.is_relative() {
            return self.filesystem && absolute(name).is_some_and(|abs| self.list.iter().any(|c| c.matches(abs.bytes())));
        }
        self.list.iter().any(|c| c.matches(name.bytes()))
    }
}

/// A relative `name` resolved against this process's working directory (`getcwd`, lexically:
/// see [`tssx_common::pattern::resolve_relative`]); `None` if that fails or is too long.
fn absolute(name: &UnixName) -> Option<UnixName> {
    let mut cwd = [0u8; libc::PATH_MAX as usize];
    // SAFETY: getcwd writes at most `cwd.len()` bytes, NUL-terminated, into our buffer.
    if unsafe { libc::getcwd(cwd.as_mut_ptr().cast(), cwd.len()) }.is_null() {
        return None;
    }
    let cwd_len = cwd.iter().position(|&b| b == 0)?;
    let mut out = UnixName { bytes: [0; SUN_PATH_LEN], len: 0 };
    out.len = tssx_common::pattern::resolve_relative(&cwd[..cwd_len], name.bytes(), &mut out.bytes)?;
    Some(out)
}

/// Relative binds of this process: the listener fd, the name as bound, the absolute name it
/// resolved to then. Few (a process binds few sockets, fewer with a relative address): the
/// oldest goes beyond [`MAX_RELATIVE_BINDS`]. Copied into a forked child with the memory.
static RELATIVE_BINDS: std::sync::Mutex<Vec<(c_int, UnixName, UnixName)>> = std::sync::Mutex::new(Vec::new());
/// Whether [`RELATIVE_BINDS`] ever held an entry (Relaxed: a hint; the lock orders the rest).
static ANY_RELATIVE_BIND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Most relative binds remembered.
const MAX_RELATIVE_BINDS: usize = 64;

/// After a successful `bind` of `fd` to `name`: a relative path is resolved against the
/// working directory now (as the kernel just did) and remembered for the listener's accepts.
pub fn remember_bind(fd: c_int, name: &UnixName) {
    if !name.is_relative() {
        return;
    }
    let Some(absolute) = absolute(name) else { return };
    // Never waited for (a process that forked while another thread held it must not hang).
    let Ok(mut binds) = RELATIVE_BINDS.try_lock() else { return };
    binds.retain(|(f, _, _)| *f != fd);
    if binds.len() >= MAX_RELATIVE_BINDS {
        binds.remove(0);
    }
    binds.push((fd, *name, absolute));
    ANY_RELATIVE_BIND.store(true, Relaxed);
}

/// The name of the listener `listener` whose accepted socket is `accepted`, absolute: the
/// accepted socket carries the listener's name as bound; a relative one is the absolute name
/// remembered at its `bind` (if the fd was bound to that very name), else resolved against
/// the working directory now.
pub fn listener_name(listener: c_int, accepted: c_int) -> Option<UnixName> {
    let name = local_name(accepted)?;
    if !name.is_relative() {
        return Some(name);
    }
    if ANY_RELATIVE_BIND.load(Relaxed) {
        if let Ok(binds) = RELATIVE_BINDS.try_lock() {
            if let Some((_, _, absolute)) = binds.iter().find(|(f, bound, _)| *f == listener && bound.bytes() == name.bytes()) {
                return Some(*absolute);
            }
        }
    }
    absolute(&name)
}

/// What identifies one version of the published paths file: the agent replaces it by rename
/// (a new inode) and never rewrites it in place, so an unchanged `(dev, inode, mtime, size)`
/// means unchanged contents.
type FileVersion = (u64, u64, i64, i64, i64);

/// The watched paths as last read, and when the file was last looked at.
struct Cached {
    /// `None`: there was no paths file (no agent).
    version: Option<FileVersion>,
    patterns: Patterns,
    checked_ns: u64,
    /// The last absolute name looked up, and the answer: a client connects to the same few
    /// addresses over and over (one pattern walk then per address, not per connection).
    last: Option<(UnixName, bool)>,
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

/// Reads the paths file (raw system calls: never the hook's own `read`); applies its settings
/// and compiles its patterns.
fn read_paths() -> Option<Patterns> {
    let mut buf = vec![0u8; PATHS_FILE_MAX];
    let n = sys::read_file(PATHS_FILE, &mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    let mut claim_after = crate::phase::CLAIM_AFTER_NS;
    let mut cool_after = crate::heat::COOL_AFTER;
    for setting in text.lines().filter_map(|l| l.strip_prefix('#')) {
        if let Some(ns) = setting.strip_prefix("claim-after-ns=").and_then(|v| v.trim().parse().ok()) {
            claim_after = ns;
        }
        if let Some(n) = setting.strip_prefix("cool-after=").and_then(|v| v.trim().parse().ok()) {
            cool_after = n;
        }
    }
    CLAIM_AFTER.store(claim_after, Relaxed);
    crate::heat::set_cool_after(cool_after);
    Some(Patterns::parse(&text))
}

/// True if the agent currently watches `name` (a relative path: resolved against the working
/// directory now).
///
/// Usually no system call: the list read last is used, and the file is looked at again (one
/// `stat`, and a read when it changed) at most every [`RECHECK_NS`]. The cache's lock is only
/// tried, never waited for (a process that forked while another thread held it must not
/// hang); when busy, the file is read directly.
pub fn watched(name: &UnixName) -> bool {
    watched_bytes(name.bytes())
}

/// [`watched`] for `sun_path` bytes (see [`unix_name_bytes`]).
#[unsafe(link_section = ".text.tssx.hot")]
pub fn watched_bytes(name: &[u8]) -> bool {
    let Ok(mut cache) = PATHS.try_lock() else { return watched_uncached(name) };
    refresh(&mut cache);
    let Some(c) = cache.as_mut() else { return false };
    match &c.last {
        // (A relative name is resolved against the working directory, which may have changed:
        // never cached.)
        Some((last, answer)) if last.bytes() == name && !is_relative(name) => *answer,
        _ => look_up(c, name),
    }
}

/// [`watched`] while another thread holds the cache: the file read directly (`errno` kept).
#[cold]
#[inline(never)]
fn watched_uncached(name: &[u8]) -> bool {
    sys::with_errno_kept(|| read_paths().is_some_and(|patterns| patterns.covers(&UnixName::from_bytes(name))))
}

/// [`watched`] for a name other than the last one: the patterns walked, the answer kept for an
/// absolute name (`errno` kept: a relative name asks for the working directory).
#[inline(never)]
fn look_up(c: &mut Cached, name: &[u8]) -> bool {
    let name = UnixName::from_bytes(name);
    let answer = sys::with_errno_kept(|| c.patterns.covers(&name));
    if !name.is_relative() {
        c.last = Some((name, answer));
    }
    answer
}

/// Looks at the paths file again if [`RECHECK_NS`] passed (see [`watched`]), so that
/// [`generation`] moves when the agent's paths changed. Skipped if the cache is busy.
pub fn refresh_generation() {
    if let Ok(mut cache) = PATHS.try_lock() {
        refresh(&mut cache);
    }
}

/// Looks at the paths file again if [`RECHECK_NS`] passed since the last look (`errno` kept).
#[inline]
fn refresh(cache: &mut Option<Cached>) {
    // (The coarse clock: a recheck interval of 50 ms needs no finer one.)
    let now = crate::spin::coarse_now_ns();
    if cache.as_ref().is_some_and(|c| now.saturating_sub(c.checked_ns) < RECHECK_NS) {
        return;
    }
    recheck(cache, now);
}

/// [`refresh`]'s look at the file: one `stat`, and a read if it changed.
#[cold]
#[inline(never)]
fn recheck(cache: &mut Option<Cached>, now: u64) {
    sys::with_errno_kept(|| {
        let version = sys::stat(PATHS_FILE).ok().map(|st| (st.st_dev, st.st_ino, st.st_mtime, st.st_mtime_nsec, st.st_size));
        match cache.as_mut() {
            Some(c) if c.version == version => c.checked_ns = now,
            _ => {
                let patterns = if version.is_some() { read_paths().unwrap_or_default() } else { Patterns::default() };
                *cache = Some(Cached { version, patterns, checked_ns: now, last: None });
                GENERATION.fetch_add(1, Relaxed);
            }
        }
    })
}

/// The local name of socket `fd` (for an accepted socket: the listener's path, as the listener
/// bound it: relative if it was).
pub fn local_name(fd: c_int) -> Option<UnixName> {
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
        unsafe { unix_name((addr as *const libc::sockaddr_un).cast(), len as libc::socklen_t) }.map(|n| n.display())
    }

    fn name(text: &str) -> UnixName {
        let mut n = UnixName { bytes: [0; SUN_PATH_LEN], len: 0 };
        let bytes = text.strip_prefix('@').map_or_else(|| text.as_bytes().to_vec(), |rest| [&[0u8][..], rest.as_bytes()].concat());
        n.bytes[..bytes.len()].copy_from_slice(&bytes);
        n.len = bytes.len();
        n
    }

    #[test]
    fn published_patterns_are_compiled_and_matched() {
        let p = Patterns::parse("#claim-after-ns=5\n/run/a.sock\n/run/php/\n/srv/*.sock\n@app*\n/bad/[x\nrelative\n");
        assert_eq!(p.list.len(), 4, "malformed lines are skipped");
        assert!(p.filesystem);
        for yes in ["/run/a.sock", "/run/php/x.sock", "/run/php/pool/y.sock", "/srv/q.sock", "@app", "@app-7"] {
            assert!(p.covers(&name(yes)), "{yes}");
        }
        for no in ["/run/b.sock", "/run/php", "/srv/d/q.sock", "/srv/q.sockx", "@ap", "/bad/[x", "@/run/a.sock"] {
            assert!(!p.covers(&name(no)), "{no}");
        }
        assert!(!Patterns::default().covers(&name("/run/a.sock")));
    }

    #[test]
    fn relative_names_resolve_against_the_working_directory() {
        let cwd = std::env::current_dir().unwrap();
        let cwd = cwd.to_str().unwrap();
        let p = Patterns::parse(&format!("{}/\n", if cwd == "/" { "" } else { cwd }));
        assert!(p.covers(&name("sub/x.sock")));
        assert!(p.covers(&name("./x.sock")));
        assert!(!p.covers(&name("../elsewhere.sock")));
        let only_abstract = Patterns::parse("@x\n");
        assert!(!only_abstract.covers(&name("x")), "a relative name is a path, never the abstract @x");
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
        // Without a NUL, the length decides.
        assert_eq!(name_of(&addr(b"/run/a.sockX"), family + 11).as_deref(), Some("/run/a.sock"));
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
        // Borrowed from the caller's memory, at any alignment.
        let a = addr(b"/run/a.sock\0xyz");
        let mut raw = vec![0u8; 1 + std::mem::size_of::<libc::sockaddr_un>()];
        // SAFETY: `a` is plain data of exactly that size; the copy goes into `raw[1..]`.
        unsafe { std::ptr::copy_nonoverlapping((&raw const a).cast::<u8>(), raw.as_mut_ptr().add(1), raw.len() - 1) };
        // SAFETY: `raw[1..]` holds the address, readable and unchanged while used.
        let bytes = unsafe { unix_name_bytes(raw.as_ptr().add(1).cast(), (raw.len() - 1) as u32) };
        assert_eq!(bytes, Some(&b"/run/a.sock"[..]));
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
        assert_eq!(local_name(std::os::fd::AsRawFd::as_raw_fd(&server)).map(|n| n.display()).as_deref(), path.to_str());
        assert!(local_name(std::os::fd::AsRawFd::as_raw_fd(&client)).is_none(), "an unbound client has no name");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A listener bound with a relative address: its accepted sockets are named as bound
    /// (relative), and the hook matches them on the absolute name resolved at the `bind`.
    #[test]
    fn a_relative_bind_is_resolved_when_bound() {
        use std::os::fd::AsRawFd as _;
        let rel = format!("../../target/tssx-hook-relbind-{}", std::process::id());
        let _ = std::fs::remove_dir_all(&rel);
        std::fs::create_dir_all(&rel).unwrap();
        let name_rel = format!("{rel}/l.sock");
        let absolute_dir = std::fs::canonicalize(&rel).unwrap();
        let absolute = absolute_dir.join("l.sock");
        // SAFETY: plain socket(2).
        let listener = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        assert!(listener >= 0);
        // SAFETY: plain data.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, &b) in addr.sun_path.iter_mut().zip(name_rel.as_bytes()) {
            *d = b as libc::c_char;
        }
        let len = (std::mem::size_of::<libc::sa_family_t>() + name_rel.len() + 1) as libc::socklen_t;
        // SAFETY: a live sockaddr_un of `len` bytes.
        assert_eq!(unsafe { crate::calls::bind(listener, (&addr as *const libc::sockaddr_un).cast(), len) }, 0);
        // SAFETY: plain listen(2).
        assert_eq!(unsafe { libc::listen(listener, 4) }, 0);
        let _client = std::os::unix::net::UnixStream::connect(&absolute).unwrap();
        // SAFETY: plain accept(2).
        let accepted = unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) };
        assert!(accepted >= 0);
        assert_eq!(local_name(accepted).unwrap().display(), name_rel, "the kernel keeps the name as bound");
        assert_eq!(listener_name(listener, accepted).unwrap().display(), absolute.to_str().unwrap());
        // The name remembered at the bind wins over the working directory now.
        {
            let mut binds = RELATIVE_BINDS.lock().unwrap();
            let entry = binds.iter_mut().find(|(f, _, _)| *f == listener).expect("remembered");
            entry.2 = name("/elsewhere/l.sock");
        }
        assert_eq!(listener_name(listener, accepted).unwrap().display(), "/elsewhere/l.sock");
        // Another fd with the same name: resolved in the working directory.
        assert_eq!(listener_name(_client.as_raw_fd(), accepted).unwrap().display(), absolute.to_str().unwrap());
        // SAFETY: our fds.
        unsafe {
            libc::close(accepted);
            libc::close(listener);
        }
        let _ = std::fs::remove_dir_all(&rel);
    }
}
