//! The differential random test (issue 13): seeded random sequences of socket operations run on
//! a plain connected pair of Unix stream sockets (libc's calls: the kernel is the reference) and
//! on a swapped pair (the same sockets installed in the hook's table as one connection on the
//! rings, the hook's entry points in [`tssx_hook::calls`] called directly), step by step in
//! lockstep; each step's results must match.
//!
//! One thread drives both ends of both pairs. Every call that could block forever is avoided by
//! the generator, which knows what each pair holds: a read of a blocking fd only when bytes are
//! queued on both pairs (or the stream is at its end), a write of a blocking fd only when it
//! fits on both pairs (or fails at once), otherwise `MSG_DONTWAIT` or another operation. The one
//! two-thread operation (`Bulk`) is a blocking write beyond the ring while a second thread reads
//! it all. A watchdog aborts the process, naming the seed, if a sequence runs for a minute.
//!
//! The operations: read, write, readv, writev, recv, send, recvfrom, sendto, recvmsg, sendmsg,
//! recvmmsg, sendmmsg, `__read_chk`, `__recv_chk`, `__recvfrom_chk` (flags: MSG_PEEK,
//! MSG_DONTWAIT, MSG_WAITALL where it cannot block forever, MSG_NOSIGNAL, MSG_TRUNC,
//! MSG_CMSG_CLOEXEC, MSG_WAITFORONE, MSG_MORE and flags a stream socket ignores or refuses);
//! poll, ppoll, `__poll_chk`, `__ppoll_chk`, select, pselect and a fresh epoll instance with a
//! zero timeout over every open fd (random event masks), plus one epoll instance that lives
//! through the sequence (EPOLL_CTL_ADD/MOD/DEL, EPOLLONESHOT, epoll_wait and epoll_pwait);
//! ioctl FIONREAD, SIOCOUTQ, FIONBIO;
//! fcntl F_SETFL O_NONBLOCK; shutdown (each `how`, and a bad one); dup, dup2, dup3, F_DUPFD and
//! dup2 over another fd of either end; close of copies and of an end's last fd; sizes from 0 to
//! 300 KiB (the ring holds [`RING`]); bad input (null buffers, iovec counts -1 and 1025, null
//! iovec arrays, null msghdr and mmsghdr vectors, a destination address, null ioctl pointers).
//! SIGPIPE is blocked in the test thread, and whether each call raised it is compared too.
//!
//! # What is compared, and the normalisations
//!
//! Both pairs start empty and the same, and the generator gives both the same operations, so
//! results are compared exactly (return value, errno, bytes, message lengths, flags, readiness
//! bits, `FIONREAD`) as long as every write so far fitted in both (at most [`EXACT_BYTES`]
//! queued in a direction: far below both the kernel's send buffer and the ring). What
//! legitimately differs is only where a queue's capacity shows, and only there is a result
//! normalised:
//! * a write that may not fit in either (a "capacity" write): the byte count of a partial write,
//!   and partial versus `EAGAIN`, depend on the buffer sizes (the kernel's `sk_sndbuf`, counted in
//!   skb truesize; the ring's capacity). It is compared as a class: "progress" (a count, or
//!   `EAGAIN` with bytes already queued), `EAGAIN` with nothing queued (wrong on either side),
//!   any other errno exactly. From there on the two pairs may hold different amounts in that
//!   direction (each side's own count is kept).
//! * while the amounts queued in a direction differ, a read there is compared as "returned
//!   min(asked, queued) bytes" (each side against its own queue) plus errno; when one pair has
//!   bytes queued and the other none, the read's result is not compared at all (only that its
//!   bytes are right). `FIONREAD` likewise as "equals what is queued".
//! * every byte read, on both sides, is checked against the stream that was written (a pattern
//!   of the direction and the byte's position), so loss, duplication or reordering shows even
//!   where counts are not compared.
//! * `POLLOUT` (and `EPOLLOUT`, select's write set) of an end is compared only while both pairs
//!   hold at most [`EXACT_BYTES`] in at most [`EXACT_CHUNKS`] writes in its direction and no
//!   spliced write there is partly unread: the kernel clears it once a quarter of `sk_sndbuf`
//!   is used (skb truesize; a splice is one skb of up to half of it), the ring when full.
//!   `POLLIN` of an end is not compared while one pair has bytes for it and the other none.
//! * `SIOCOUTQ` as zero or not: the kernel counts skb truesize, the hook bytes.
//! * fd numbers (dup, F_DUPFD) as "an fd" (the two pairs live in one process).
//! * the last close of an end is generated only while both pairs hold the same bytes for it
//!   (unread bytes at close make the peer's next call fail with ECONNRESET), and a peer with a
//!   reset pending is only drained while the pairs hold different amounts for it (which read
//!   meets the reset depends on when its queue runs empty).
//! * an epoll wait is compared with the same masks as poll; an entry left with no compared bit
//!   counts as not reported. EPOLLONESHOT entries wait for RDHUP/PRI only, so whether one fired
//!   never depends on a masked bit.
//!
//! Divergences found and fixed in the hook are pinned by the `script_*` tests below. Those left
//! to others (see `EPOLL_EDGES` and `Gen::leaves_a_registered_file`), and one documented at
//! `calls::recvmmsg` (an EFAULT ending a vector is not kept in SO_ERROR), are not generated.
//!
//! `TSSX_DIFF_SEED=N` replays one sequence, printing every step; `TSSX_DIFF_SEQUENCES` (how
//! many, default [`DEFAULT_SEQUENCES`]) and `TSSX_DIFF_START` (the first seed, default 1) set
//! the run (`cargo xtask soak` runs many more, from a random start).
//!
//! Also generated: `fork` ([`Op::Fork`]: the operations until [`Op::Exit`] run in a forked child
//! of each pair's side, in lockstep, its results sent back through a pipe; the child exits with
//! or without closing its copies); `SCM_RIGHTS` ([`Op::SendFds`]: a pipe, the sending end's own
//! socket or the receiving end's, with data; `recvmsg` with room for no, one or several fds,
//! MSG_CTRUNC; received fds noted and closed); `splice` both ways ([`Op::Splice`]); and, with
//! `TSSX_DIFF_OOB=1`, `send`/`recv` with MSG_OOB and `SIOCATMARK` ([`Op::SendOob`],
//! [`Op::RecvOob`], [`Op::AtMark`]), which hand a swapped connection back to the kernel (off by
//! default: see COVERAGE.md, known gaps). Reads that stop at an out-of-band mark or after a
//! message with fds are compared by count only while both pairs hold the same bytes
//! ([`Flow::irregular`]).
//!
//! Not generated (other work owns them): SO_PEEK_OFF, SO_SNDTIMEO/RCVTIMEO, sendfile,
//! close_range/closefrom/syscall(), spawn.

// `__recvfrom_chk` has glibc's eight arguments.
#![allow(clippy::too_many_arguments)]

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::Instant,
};

use libc::{c_int, c_void, iovec, msghdr, sockaddr, socklen_t, ssize_t};
use tssx_hook::calls;

mod support;

/// Bytes each ring of the swapped pair holds.
const RING: usize = 16384;
/// The most bytes queued in a direction for results to be compared exactly (far below the
/// ring and the kernel's default send buffer, also counted in truesize).
const EXACT_BYTES: u64 = 4096;
/// The most writes queued in a direction for `POLLOUT` to be compared (each is an skb in the
/// kernel, whose truesize counts against `sk_sndbuf / 4`).
const EXACT_CHUNKS: usize = 16;
/// The most bytes written in a direction since it was last empty for `POLLOUT` to be
/// compared: a partly read skb still counts whole.
const EXACT_SINCE_EMPTY: u64 = 16384;
/// Whether edge-triggered registrations are generated. Not now: with EPOLLET the kernel
/// reports an edge again after every `shutdown()` of the peer (its `sk_state_change` wakes the
/// epoll entry even when no readiness bit changes), the hook only when a ring moved or a bit
/// newly set (`epoll::reportable`). Found with this set (seed 428, step 94: after the peer's
/// second `shutdown(SHUT_WR)`, plain reports the EPOLLET entry again, swapped does not). Left
/// to the owners of `epoll.rs`.
const EPOLL_EDGES: bool = false;
/// Whether MSG_OOB (and so the hand-back of a swapped connection to the kernel) is generated:
/// with `TSSX_DIFF_OOB=1`, or in a thread that asked for it ([`with_oob`]). Off by default:
/// of its seeds 1 to 20000 and 80000 to 99999, seed 4262 still diverges (see COVERAGE.md,
/// known gaps); the divergences found and fixed are pinned by the `script_*` tests below and
/// [`REGRESSION_SEEDS_2`].
fn oob_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    OOB_HERE.with(|h| h.get()) || *ON.get_or_init(|| std::env::var("TSSX_DIFF_OOB").is_ok_and(|v| v == "1"))
}

thread_local! {
    static OOB_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with MSG_OOB generated in this thread.
fn with_oob<R>(f: impl FnOnce() -> R) -> R {
    OOB_HERE.with(|h| h.set(true));
    let r = f();
    OOB_HERE.with(|h| h.set(false));
    r
}

/// Sequences in a normal test run.
const DEFAULT_SEQUENCES: u64 = 4000;

mod sysapi {
    use libc::{c_int, c_void, pollfd, sigset_t, sockaddr, socklen_t, ssize_t, timespec};
    pub use libc::{
        close, dup, dup2, dup3, epoll_create1, epoll_ctl, epoll_pwait, epoll_wait, fork, poll, ppoll, pselect, read, readv, recv, recvfrom,
        recvmmsg, recvmsg, select, send, sendmmsg, sendmsg, sendto, shutdown, splice, write, writev,
    };
    unsafe extern "C" {
        pub fn __read_chk(fd: c_int, buf: *mut c_void, n: usize, buflen: usize) -> ssize_t;
        pub fn __recv_chk(fd: c_int, buf: *mut c_void, n: usize, buflen: usize, flags: c_int) -> ssize_t;
        pub fn __recvfrom_chk(
            fd: c_int,
            buf: *mut c_void,
            n: usize,
            buflen: usize,
            flags: c_int,
            addr: *mut sockaddr,
            len: *mut socklen_t,
        ) -> ssize_t;
        pub fn __poll_chk(fds: *mut pollfd, n: libc::nfds_t, timeout: c_int, fdslen: usize) -> c_int;
        pub fn __ppoll_chk(fds: *mut pollfd, n: libc::nfds_t, ts: *const timespec, mask: *const sigset_t, fdslen: usize) -> c_int;
    }
}

macro_rules! api {
    ($($f:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {
        /// The calls a sequence makes: libc's (plain) or the hook's (swapped).
        trait Api: Sync {
            $(unsafe fn $f(&self, $($a: $t),*) -> $r;)*
            unsafe fn ioctl(&self, fd: c_int, req: libc::c_ulong, arg: *mut c_int) -> c_int;
            unsafe fn fcntl(&self, fd: c_int, cmd: c_int, arg: c_int) -> c_int;
        }
        struct Plain;
        struct Hooked;
        impl Api for Plain {
            $(unsafe fn $f(&self, $($a: $t),*) -> $r {
                // SAFETY: forwarded; the caller's contract is the libc function's.
                unsafe { sysapi::$f($($a),*) }
            })*
            unsafe fn ioctl(&self, fd: c_int, req: libc::c_ulong, arg: *mut c_int) -> c_int {
                // SAFETY: as above.
                unsafe { libc::ioctl(fd, req, arg) }
            }
            unsafe fn fcntl(&self, fd: c_int, cmd: c_int, arg: c_int) -> c_int {
                // SAFETY: as above.
                unsafe { libc::fcntl(fd, cmd, arg) }
            }
        }
        impl Api for Hooked {
            $(unsafe fn $f(&self, $($a: $t),*) -> $r {
                // SAFETY: forwarded; the caller's contract is the libc function's.
                unsafe { calls::$f($($a),*) }
            })*
            unsafe fn ioctl(&self, fd: c_int, req: libc::c_ulong, arg: *mut c_int) -> c_int {
                // SAFETY: as above.
                unsafe { calls::ioctl(fd, req, arg.cast()) }
            }
            unsafe fn fcntl(&self, fd: c_int, cmd: c_int, arg: c_int) -> c_int {
                // SAFETY: as above.
                unsafe { calls::fcntl(fd, cmd, arg as libc::c_ulong) }
            }
        }
    };
}

api! {
    read(fd: c_int, buf: *mut c_void, n: usize) -> ssize_t;
    write(fd: c_int, buf: *const c_void, n: usize) -> ssize_t;
    readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    recv(fd: c_int, buf: *mut c_void, n: usize, flags: c_int) -> ssize_t;
    send(fd: c_int, buf: *const c_void, n: usize, flags: c_int) -> ssize_t;
    recvfrom(fd: c_int, buf: *mut c_void, n: usize, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    sendto(fd: c_int, buf: *const c_void, n: usize, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    recvmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: libc::c_uint, flags: c_int) -> c_int;
    __read_chk(fd: c_int, buf: *mut c_void, n: usize, buflen: usize) -> ssize_t;
    __recv_chk(fd: c_int, buf: *mut c_void, n: usize, buflen: usize, flags: c_int) -> ssize_t;
    __recvfrom_chk(fd: c_int, buf: *mut c_void, n: usize, buflen: usize, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int;
    ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    __poll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int, fdslen: usize) -> c_int;
    __ppoll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, ts: *const libc::timespec, mask: *const libc::sigset_t, fdslen: usize) -> c_int;
    select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, tv: *mut libc::timeval) -> c_int;
    epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
    epoll_wait(epfd: c_int, evs: *mut libc::epoll_event, max: c_int, timeout: c_int) -> c_int;
    epoll_pwait(epfd: c_int, evs: *mut libc::epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
    pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, ts: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    shutdown(fd: c_int, how: c_int) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(old: c_int, new: c_int) -> c_int;
    dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    close(fd: c_int) -> c_int;
    splice(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, len: usize, flags: libc::c_uint) -> ssize_t;
    fork() -> libc::pid_t;
    epoll_create1(flags: c_int) -> c_int;
}

// ---------------------------------------------------------------------------------------------
// Randomness and the byte stream.

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `pct` percent.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    /// A transfer size: often small, sometimes zero, sometimes beyond the ring (and the
    /// kernel's send buffer).
    fn size(&mut self) -> usize {
        (match self.below(100) {
            0..5 => 0,
            5..35 => self.range(1, 16),
            35..60 => self.range(17, 512),
            60..80 => self.range(513, EXACT_BYTES),
            80..90 => self.range(EXACT_BYTES + 1, RING as u64),
            90..97 => self.range(RING as u64 + 1, 4 * RING as u64),
            _ => self.range(64 << 10, 300 << 10),
        }) as usize
    }
}

/// The byte at position `off` of direction `dir`'s stream in sequence `seed`.
fn pattern(seed: u64, dir: usize, off: u64) -> u8 {
    (splitmix(seed ^ ((dir as u64) << 62) ^ (off >> 3).wrapping_mul(0x2545_F491_4F6C_DD1D)) >> ((off & 7) * 8)) as u8
}

fn fill(seed: u64, dir: usize, from: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(seed, dir, from + i)).collect()
}

/// A digest of `bytes` (the pairs' bytes are compared through it).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Where `got` departs from the stream `dir` from `from`, if it does.
fn check_stream(seed: u64, dir: usize, from: u64, got: &[u8]) -> Option<usize> {
    got.iter().enumerate().position(|(i, &b)| b != pattern(seed, dir, from + i as u64))
}

// ---------------------------------------------------------------------------------------------
// Operations.

#[derive(Clone, Copy, Debug, PartialEq)]
enum RdApi {
    Read,
    Recv,
    RecvFrom,
    RecvMsg,
    Readv,
    RecvMmsg,
    ReadChk,
    RecvChk,
    RecvFromChk,
}

impl RdApi {
    fn has_flags(self) -> bool {
        !matches!(self, RdApi::Read | RdApi::Readv | RdApi::ReadChk)
    }
    fn has_iov(self) -> bool {
        matches!(self, RdApi::Readv | RdApi::RecvMsg | RdApi::RecvMmsg)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum WrApi {
    Write,
    Send,
    SendTo,
    SendMsg,
    Writev,
    SendMmsg,
}

impl WrApi {
    fn has_flags(self) -> bool {
        !matches!(self, WrApi::Write | WrApi::Writev)
    }
    fn has_iov(self) -> bool {
        matches!(self, WrApi::Writev | WrApi::SendMsg | WrApi::SendMmsg)
    }
}

/// Bad input the kernel refuses (or faults on).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bad {
    None,
    /// A null buffer (or a null iovec base) with a length.
    NullBuf,
    /// An iovec count the kernel refuses (-1, 1025).
    IovCnt(c_int),
    /// A null iovec array with a count.
    NullIov,
    /// A destination address on a connected socket (sendto/sendmsg).
    Addr,
    /// A null msghdr (sendmsg/recvmsg) or mmsghdr vector (sendmmsg/recvmmsg).
    NullMsg,
}

/// `ptr`, or null for [`Bad::NullMsg`].
fn or_null<T>(bad: Bad, ptr: *mut T) -> *mut T {
    if bad == Bad::NullMsg {
        std::ptr::null_mut()
    } else {
        ptr
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum PollApi {
    Poll,
    Ppoll,
    PollChk,
    PpollChk,
    Select,
    Pselect,
    Epoll,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum DupHow {
    Dup,
    Dup2,
    Dup3,
    DupFd,
}

/// An fd passed with `SCM_RIGHTS`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pass {
    /// The read end of a new pipe.
    Pipe,
    /// The sending end's own socket (the copy sending it).
    Own,
    /// The receiving end's socket (its first copy).
    Peer,
}

// (Copy: the operations a forked child runs are sent to it as bytes, see `Child`.)
#[derive(Clone, Copy, Debug)]
enum Op {
    /// A write of `len` bytes from `end` (in `parts` iovecs, or messages for sendmmsg).
    Write {
        end: usize,
        copy: usize,
        api: WrApi,
        len: usize,
        parts: usize,
        flags: c_int,
        bad: Bad,
    },
    /// A read of up to `len` bytes into `end` (`parts` as for writes).
    Read {
        end: usize,
        copy: usize,
        api: RdApi,
        len: usize,
        parts: usize,
        flags: c_int,
        bad: Bad,
    },
    /// Non-blocking reads until there is nothing more.
    Drain {
        end: usize,
        copy: usize,
    },
    /// Readiness of every open fd of both ends, zero timeout.
    Poll {
        api: PollApi,
        events: i16,
    },
    /// `ioctl(FIONREAD)`.
    Fionread {
        end: usize,
        copy: usize,
    },
    /// `ioctl(SIOCOUTQ)`.
    Outq {
        end: usize,
        copy: usize,
    },
    Shutdown {
        end: usize,
        copy: usize,
        how: c_int,
    },
    /// O_NONBLOCK on or off (`ioctl`: FIONBIO, else fcntl F_SETFL).
    Nonblock {
        end: usize,
        copy: usize,
        on: bool,
        ioctl: bool,
    },
    /// A new copy of one of `end`'s fds.
    Dup {
        end: usize,
        copy: usize,
        how: DupHow,
    },
    /// `dup2` of one of `end`'s fds onto one of `onto`'s (possibly the same fd).
    Dup2Over {
        end: usize,
        copy: usize,
        onto: usize,
        onto_copy: usize,
    },
    /// Closes one copy (the last one: the end is closed).
    Close {
        end: usize,
        copy: usize,
    },
    /// One blocking `write` of `len` bytes (more than the ring holds) from `end`, while another
    /// thread reads everything queued for the other end with blocking `recv`s.
    Bulk {
        end: usize,
        copy: usize,
        peer_copy: usize,
        len: usize,
    },
    /// `epoll_ctl` on the sequence's epoll instance (`tag`: the event's data; its low bit is
    /// the end).
    EpollCtl {
        end: usize,
        copy: usize,
        op: c_int,
        events: u32,
        tag: u64,
    },
    /// `epoll_wait` (or `epoll_pwait`) on the sequence's epoll instance, zero timeout.
    EpollWait {
        pwait: bool,
    },
    /// `ioctl(req)` with a null pointer (EFAULT).
    IoctlNull {
        end: usize,
        copy: usize,
        req: libc::c_ulong,
    },
    /// `sendmsg` of `len` bytes with `n` fds (`SCM_RIGHTS`, `what[..n]`).
    SendFds {
        end: usize,
        copy: usize,
        len: usize,
        n: usize,
        what: [Pass; 2],
        flags: c_int,
    },
    /// `splice` between one of `end`'s fds and a new pipe: `into` the socket (the pipe holding
    /// `avail` bytes of the stream first), or out of it; `pipe_nb`: the pipe is O_NONBLOCK.
    Splice {
        end: usize,
        copy: usize,
        into: bool,
        len: usize,
        avail: usize,
        flags: libc::c_uint,
        pipe_nb: bool,
    },
    /// `send(MSG_OOB)` of `len` bytes (at least one: the last is the out-of-band byte).
    SendOob {
        end: usize,
        copy: usize,
        len: usize,
        flags: c_int,
    },
    /// `recv(MSG_OOB)` into `len` bytes (with MSG_PEEK if `peek`).
    RecvOob {
        end: usize,
        copy: usize,
        len: usize,
        peek: bool,
    },
    /// `ioctl(SIOCATMARK)`.
    AtMark {
        end: usize,
        copy: usize,
    },
    /// `fork()`: the operations until [`Op::Exit`] run in the child, on its inherited fds (the
    /// parent waits).
    Fork,
    /// The child exits (`close`: after closing its fds, otherwise with them open); the parent
    /// reaps it and continues.
    Exit {
        close: bool,
    },
}

// ---------------------------------------------------------------------------------------------
// One pair and what it holds.

/// Bytes written and read in each direction (direction `d`: written by end `d`, read by the
/// other end), as each pair's own results say.
#[derive(Clone, Copy, Default, Debug)]
struct Flow {
    wr: [u64; 2],
    rd: [u64; 2],
    /// Writes since the direction was last empty.
    chunks: [usize; 2],
    /// `wr` when the direction was last empty: the kernel charges a write's whole skb to the
    /// writer's send buffer until its last byte is read, so what was written since counts.
    empty_at: [u64; 2],
    /// Where the last out-of-band byte sent sits in the in-band stream (before the byte at this
    /// position), and whether it is still unread.
    mark: [u64; 2],
    oob: [bool; 2],
    /// Out-of-band bytes sent and not taken by `recv(MSG_OOB)`, which the kernel's `FIONREAD`
    /// counts on top of the in-band bytes queued: a waiting one, and (Linux 6.18) for good one
    /// that a read went past, which dropped it (a divergence of capacity, a `send(MSG_OOB)`
    /// that went on one pair only, shows there: seed 90895 with `TSSX_DIFF_OOB=1`).
    oob_counted: [u64; 2],
    /// Where the last message that carried fds ends.
    fds_until: [u64; 2],
    /// Where the last message that carried one of the pair's sockets ends.
    sock_until: [u64; 2],
    /// Where the last `splice` into the socket ends: the kernel queues one splice as one skb
    /// (up to half of `sk_sndbuf`, the pipe's pages), whose whole truesize stays charged to the
    /// sender until its last byte is read.
    spliced_until: [u64; 2],
    /// A `send(MSG_OOB)` was made (on the swapped pair: the connection handed back).
    handed_back: bool,
}

impl Flow {
    fn queued(&self, d: usize) -> u64 {
        self.wr[d] - self.rd[d]
    }
    fn consumed(&mut self, d: usize, n: u64) {
        // (More than was written is a wrong byte, which the caller reports.)
        self.rd[d] = (self.rd[d] + n).min(self.wr[d]);
        if self.queued(d) == 0 {
            self.chunks[d] = 0;
            self.empty_at[d] = self.wr[d];
        }
        if self.rd[d] > self.mark[d] {
            // Read past the mark: the out-of-band byte is dropped (af_unix, as TCP).
            self.oob[d] = false;
        }
    }
    /// Reads in direction `d` stop where the two pairs cannot be compared by counts alone: an
    /// out-of-band mark or the end of a message with fds is ahead. (A mark whose byte
    /// `recv(MSG_OOB)` took still stops a read that copied something: af_unix leaves an empty
    /// skb there until a read starts at it. Seeds 85023 and 86208 with `TSSX_DIFF_OOB=1`.)
    fn irregular(&self, d: usize) -> bool {
        self.oob[d] || self.rd[d] < self.mark[d] || self.rd[d] < self.fds_until[d]
    }
    /// A message that carries one of the pair's sockets is unread in direction `d`: it is
    /// read with a control buffer that takes its fds (see `Gen::socket_in_flight`).
    fn socket_in_flight(&self, d: usize) -> bool {
        self.rd[d] < self.sock_until[d]
    }
    /// A spliced skb is partly unread in direction `d`: the kernel's `POLLOUT` of the writer
    /// depends on its truesize, not on the bytes left (see [`Flow::spliced_until`]).
    fn splice_in_flight(&self, d: usize) -> bool {
        self.rd[d] < self.spliced_until[d]
    }
}

struct Side {
    api: &'static dyn Api,
    name: &'static str,
    /// Each end's open fds (copies of one file).
    fds: [Vec<c_int>; 2],
    flow: Flow,
    /// Where `dup2` targets are taken from.
    spare: c_int,
    /// The sequence's epoll instance (fds stay registered across steps).
    ep: c_int,
    /// The forked child running the operations, between [`Op::Fork`] and [`Op::Exit`].
    child: Option<Child>,
}

/// What both pairs share (results that were compared equal).
#[derive(Clone, Copy, Default, Debug)]
struct Shared {
    nonblock: [bool; 2],
    shut_rd: [bool; 2],
    shut_wr: [bool; 2],
    closed: [bool; 2],
    /// The peer closed with bytes unread: this end's next read that finds its queue empty
    /// fails with ECONNRESET.
    reset: [bool; 2],
    /// A forked child exited with its copies open: on the swapped pair it still counts as a
    /// holder of both ends in the segment, so an end's last close in the parent shows only
    /// through the real socket, which the hook looks at when it waits or reads (rate-limited),
    /// not in a zero-timeout poll. No last close is generated from then on (see COVERAGE.md,
    /// known gaps).
    orphaned: bool,
}

impl Shared {
    /// Reads of `end` return at once at the end of the stream.
    fn eof(&self, end: usize) -> bool {
        self.shut_rd[end] || self.shut_wr[1 - end] || self.closed[1 - end]
    }
    /// Writes of `end` fail at once.
    fn send_shut(&self, end: usize) -> bool {
        self.shut_wr[end] || self.shut_rd[1 - end] || self.closed[1 - end]
    }
}

/// One call's results on one pair.
#[derive(Clone, Default, Debug)]
struct Out {
    rc: i64,
    errno: c_int,
    /// Bytes received.
    data: Vec<u8>,
    /// Bytes the call moved (written, or consumed).
    moved: u64,
    /// Writes the call queued (skbs in the kernel).
    writes: usize,
    /// Raw facts beyond the return value (message lengths, flags, addresses).
    note: String,
    /// Readiness: (end, copy, bits).
    ready: Vec<(usize, usize, u32)>,
    /// An ioctl's value.
    value: i64,
    /// Where the received bytes depart from the stream, if they do.
    bad_byte: Option<usize>,
    /// The call raised SIGPIPE.
    sigpipe: bool,
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_errno(e: c_int) {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// SIGPIPE ignored for the process, once, before any test of this binary runs a sequence: a
/// later `signal(SIGPIPE, SIG_IGN)` (another test starting on another thread) would discard
/// the SIGPIPE a call just left pending in this thread, before [`take_sigpipe`] could see it.
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: setting a signal disposition; a write to a closed peer reports EPIPE.
    ONCE.call_once(|| unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    });
}

/// Takes a pending SIGPIPE of this thread (blocked by [`run`]): whether the last call raised
/// one.
fn take_sigpipe() -> bool {
    // SAFETY: a local signal set; a zero timeout; no siginfo wanted.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == libc::SIGPIPE
    }
}

/// Blocks SIGPIPE in this thread, so that one a call raises stays pending (see
/// [`take_sigpipe`]), and takes any already pending.
fn block_sigpipe() {
    // SAFETY: a local signal set; this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()), 0);
    }
    take_sigpipe();
}

fn errno_name(e: c_int) -> String {
    let name = match e {
        libc::EAGAIN => "EAGAIN",
        libc::EBADF => "EBADF",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::EPIPE => "EPIPE",
        libc::ECONNRESET => "ECONNRESET",
        libc::EISCONN => "EISCONN",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOTCONN => "ENOTCONN",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        _ => return format!("errno {e}"),
    };
    name.to_owned()
}

impl Out {
    fn from_rc(rc: i64) -> Out {
        Out { rc, errno: if rc < 0 { errno() } else { 0 }, ..Out::default() }
    }
    fn raw(&self) -> String {
        let mut s = if self.rc < 0 { format!("-1 {}", errno_name(self.errno)) } else { format!("{}", self.rc) };
        if !self.data.is_empty() {
            let _ = write!(s, " data[{}]", self.data.len());
        }
        if let Some(i) = self.bad_byte {
            let _ = write!(s, " WRONG BYTE at {i}");
        }
        if !self.note.is_empty() {
            let _ = write!(s, " {}", self.note);
        }
        if !self.ready.is_empty() {
            let _ = write!(s, " ready {:?}", self.ready);
        }
        if self.value != 0 {
            let _ = write!(s, " value {}", self.value);
        }
        if self.sigpipe {
            s.push_str(" +SIGPIPE");
        }
        s
    }
}

/// iovecs over `buf` in `parts` pieces (some empty), as the generator's `rng` splits it.
fn split(len: usize, parts: usize, salt: u64) -> Vec<(usize, usize)> {
    let mut cuts: Vec<usize> = (1..parts).map(|i| (splitmix(salt ^ i as u64) % (len as u64 + 1)) as usize).collect();
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(parts);
    let mut at = 0;
    for c in cuts.into_iter().chain(std::iter::once(len)) {
        out.push((at, c - at));
        at = c;
    }
    out
}

fn iovs(base: *mut u8, pieces: &[(usize, usize)], null: bool) -> Vec<iovec> {
    pieces
        .iter()
        .map(|&(at, len)| iovec {
            // SAFETY: within the buffer (or null on purpose: bad input).
            iov_base: if null && len > 0 { std::ptr::null_mut() } else { unsafe { base.add(at) }.cast() },
            iov_len: len,
        })
        .collect()
}

fn msghdr_for(iov: &mut [iovec], cnt: usize) -> msghdr {
    // SAFETY: plain data.
    let mut m: msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov.as_mut_ptr();
    m.msg_iovlen = cnt;
    m
}

impl Side {
    fn fd(&self, end: usize, copy: usize) -> c_int {
        self.fds[end][copy]
    }

    /// A free fd number for dup2 (below 1024: select's sets).
    fn spare_fd(&mut self) -> c_int {
        loop {
            self.spare = if self.spare >= 1000 { self.spare - 99 } else { self.spare + 1 };
            // SAFETY: F_GETFD on a number, no pointers.
            if unsafe { libc::fcntl(self.spare, libc::F_GETFD) } < 0 && !self.fds.iter().flatten().any(|&f| f == self.spare) {
                return self.spare;
            }
        }
    }

    fn exec(&mut self, op: &Op, seed: u64, salt: u64) -> Out {
        let api = self.api;
        match *op {
            Op::Write { end, copy, api: wapi, len, parts, flags, bad } => {
                let fd = self.fd(end, copy);
                let mut data = fill(seed, end, self.flow.wr[end], len);
                let base = data.as_mut_ptr();
                let null = bad == Bad::NullBuf;
                let ptr: *const c_void = if null { std::ptr::null() } else { base.cast() };
                let addr = sockaddr_un_named();
                let (aptr, alen) = if bad == Bad::Addr {
                    ((&raw const addr).cast::<sockaddr>(), size_of::<libc::sockaddr_un>() as socklen_t)
                } else {
                    (std::ptr::null(), 0)
                };
                let pieces = split(len, parts.max(1), salt);
                let mut iov = iovs(base, &pieces, null);
                let cnt = match bad {
                    Bad::IovCnt(c) => {
                        iov.resize(1025, iovec { iov_base: std::ptr::null_mut(), iov_len: 0 });
                        c
                    }
                    _ => pieces.len() as c_int,
                };
                let iov_ptr = if bad == Bad::NullIov { std::ptr::null_mut() } else { iov.as_mut_ptr() };
                let mut out;
                // SAFETY (all arms): live buffers of the stated lengths, or bad input on purpose
                // that the kernel (and the hook) must refuse without touching it.
                unsafe {
                    out = match wapi {
                        WrApi::Write => Out::from_rc(api.write(fd, ptr, len) as i64),
                        WrApi::Send => Out::from_rc(api.send(fd, ptr, len, flags) as i64),
                        WrApi::SendTo => Out::from_rc(api.sendto(fd, ptr, len, flags, aptr, alen) as i64),
                        WrApi::Writev => Out::from_rc(api.writev(fd, iov_ptr, cnt) as i64),
                        WrApi::SendMsg => {
                            let mut m = msghdr_for(&mut iov, cnt as usize);
                            m.msg_iov = iov_ptr;
                            m.msg_name = aptr as *mut c_void;
                            m.msg_namelen = alen;
                            Out::from_rc(api.sendmsg(fd, or_null(bad, &mut m), flags) as i64)
                        }
                        WrApi::SendMmsg => {
                            // One message per piece, each with one iovec.
                            let mut msgs: Vec<libc::mmsghdr> = (0..iov.len().min(pieces.len()))
                                .map(|i| libc::mmsghdr { msg_hdr: msghdr_for(&mut iov[i..], 1), msg_len: 0xdead })
                                .collect();
                            if bad == Bad::Addr {
                                msgs[0].msg_hdr.msg_name = aptr as *mut c_void;
                                msgs[0].msg_hdr.msg_namelen = alen;
                            }
                            let rc = api.sendmmsg(fd, or_null(bad, msgs.as_mut_ptr()), msgs.len() as libc::c_uint, flags);
                            let mut o = Out::from_rc(rc as i64);
                            let sent = &msgs[..rc.max(0) as usize];
                            o.note = format!("lens {:?}", sent.iter().map(|m| m.msg_len).collect::<Vec<_>>());
                            o.moved = sent.iter().map(|m| m.msg_len as u64).sum();
                            o.writes = sent.iter().filter(|m| m.msg_len > 0).count();
                            o
                        }
                    };
                }
                if wapi != WrApi::SendMmsg && out.rc > 0 {
                    out.moved = out.rc as u64;
                    out.writes = 1;
                }
                self.flow.wr[end] += out.moved;
                self.flow.chunks[end] += out.writes;
                out
            }
            Op::Read { end, copy, api: rapi, len, parts, flags, bad } => {
                let fd = self.fd(end, copy);
                let d = 1 - end;
                let mut buf = vec![0u8; len];
                let base = buf.as_mut_ptr();
                let null = bad == Bad::NullBuf;
                let ptr: *mut c_void = if null { std::ptr::null_mut() } else { base.cast() };
                let pieces = split(len, parts.max(1), salt);
                let mut iov = iovs(base, &pieces, null);
                let cnt = match bad {
                    Bad::IovCnt(c) => {
                        iov.resize(1025, iovec { iov_base: std::ptr::null_mut(), iov_len: 0 });
                        c
                    }
                    _ => pieces.len() as c_int,
                };
                let iov_ptr = if bad == Bad::NullIov { std::ptr::null_mut() } else { iov.as_mut_ptr() };
                // SAFETY: plain data.
                let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
                let mut from_len = (salt % 3) as socklen_t * 50;
                let from_ptr = if salt.is_multiple_of(5) { std::ptr::null_mut() } else { (&raw mut from).cast::<sockaddr>() };
                let mut out;
                let mut received = 0u64;
                let mut passed = Vec::new();
                // SAFETY (all arms): live buffers of the stated lengths, or bad input on purpose.
                unsafe {
                    out = match rapi {
                        RdApi::Read => Out::from_rc(api.read(fd, ptr, len) as i64),
                        RdApi::ReadChk => Out::from_rc(api.__read_chk(fd, ptr, len, len + (salt % 2) as usize) as i64),
                        RdApi::Recv => Out::from_rc(api.recv(fd, ptr, len, flags) as i64),
                        RdApi::RecvChk => Out::from_rc(api.__recv_chk(fd, ptr, len, len, flags) as i64),
                        RdApi::Readv => Out::from_rc(api.readv(fd, iov_ptr, cnt) as i64),
                        RdApi::RecvFrom | RdApi::RecvFromChk => {
                            let lenp = if from_ptr.is_null() { std::ptr::null_mut() } else { &raw mut from_len };
                            let rc = if rapi == RdApi::RecvFrom {
                                api.recvfrom(fd, ptr, len, flags, from_ptr, lenp)
                            } else {
                                api.__recvfrom_chk(fd, ptr, len, len, flags, from_ptr, lenp)
                            };
                            let mut o = Out::from_rc(rc as i64);
                            if !from_ptr.is_null() {
                                o.note = format!("addrlen {from_len} family {}", from.sun_family);
                            }
                            o
                        }
                        RdApi::RecvMsg => {
                            let mut m = msghdr_for(&mut iov, cnt as usize);
                            m.msg_iov = iov_ptr;
                            let mut cbuf = [0u64; 8];
                            // No control buffer, room for no fd, for one (MSG_CTRUNC with two),
                            // for several.
                            let room = if self.flow.socket_in_flight(d) { 64 } else { [0, 0, 16, 20, 64][(salt >> 8) as usize % 5] };
                            if room > 0 {
                                m.msg_control = cbuf.as_mut_ptr().cast();
                                m.msg_controllen = room;
                            }
                            m.msg_name = from_ptr.cast();
                            m.msg_namelen = from_len;
                            m.msg_flags = 0x5a5a;
                            let rc = api.recvmsg(fd, or_null(bad, &mut m), flags);
                            let mut o = Out::from_rc(rc as i64);
                            o.note = format!("flags {:#x} controllen {} namelen {}", m.msg_flags, m.msg_controllen, m.msg_namelen);
                            if rc >= 0 && room > 0 {
                                passed = support::received_fds(&m);
                            }
                            o
                        }
                        RdApi::RecvMmsg => {
                            let mut msgs: Vec<libc::mmsghdr> = (0..pieces.len())
                                .map(|i| libc::mmsghdr { msg_hdr: msghdr_for(&mut iov[i..], 1), msg_len: 0xdead })
                                .collect();
                            if bad == Bad::NullIov {
                                msgs[0].msg_hdr.msg_iov = std::ptr::null_mut();
                            }
                            let rc =
                                api.recvmmsg(fd, or_null(bad, msgs.as_mut_ptr()), msgs.len() as libc::c_uint, flags, std::ptr::null_mut());
                            let mut o = Out::from_rc(rc as i64);
                            let got = &msgs[..rc.max(0) as usize];
                            o.note = format!("lens {:?}", got.iter().map(|m| m.msg_len).collect::<Vec<_>>());
                            // The bytes, message by message (each fills its own piece).
                            for (m, &(at, _)) in got.iter().zip(&pieces) {
                                o.data.extend_from_slice(&buf[at..at + m.msg_len as usize]);
                            }
                            received = o.data.len() as u64;
                            o
                        }
                    };
                }
                if !passed.is_empty() {
                    let kinds = self.take_fds(&passed);
                    let _ = write!(out.note, " fds {kinds:?}");
                }
                if rapi != RdApi::RecvMmsg && out.rc > 0 {
                    received = out.rc as u64;
                    // Bytes land in the pieces in order.
                    out.data = buf[..out.rc as usize].to_vec();
                }
                if flags & libc::MSG_TRUNC != 0 {
                    // (Not looked at: what MSG_TRUNC does with the buffer is compared between
                    // the pairs only.)
                } else if rapi == RdApi::RecvMmsg && flags & libc::MSG_PEEK != 0 {
                    // Each message peeks at the same bytes.
                    let mut at = 0;
                    for len in
                        out.note.trim_start_matches("lens [").trim_end_matches(']').split(", ").filter_map(|l| l.parse::<usize>().ok())
                    {
                        out.bad_byte = out.bad_byte.or(check_stream(seed, d, self.flow.rd[d], &out.data[at..at + len]).map(|i| at + i));
                        at += len;
                    }
                } else {
                    out.bad_byte = check_stream(seed, d, self.flow.rd[d], &out.data);
                }
                if flags & libc::MSG_PEEK == 0 {
                    out.moved = received;
                    self.flow.consumed(d, received);
                }
                out
            }
            Op::Drain { end, copy } => {
                let fd = self.fd(end, copy);
                let d = 1 - end;
                let mut buf = vec![0u8; 65536];
                let mut out = Out::default();
                let mut total = 0u64;
                let mut bad_byte = None;
                let mut kinds = Vec::new();
                for _ in 0..64 {
                    // (recvmsg with room for fds: a passed socket is taken, never discarded.)
                    let mut iov = iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
                    let mut m = msghdr_for(std::slice::from_mut(&mut iov), 1);
                    let mut cbuf = [0u64; 8];
                    m.msg_control = cbuf.as_mut_ptr().cast();
                    m.msg_controllen = size_of_val(&cbuf);
                    // SAFETY: a live buffer and control buffer.
                    let rc = unsafe { api.recvmsg(fd, &mut m, libc::MSG_DONTWAIT) };
                    out = Out::from_rc(rc as i64);
                    if rc >= 0 {
                        let fds = support::received_fds(&m);
                        if !fds.is_empty() {
                            kinds.extend(self.take_fds(&fds));
                        }
                    }
                    if rc <= 0 {
                        break;
                    }
                    if bad_byte.is_none() {
                        bad_byte = check_stream(seed, d, self.flow.rd[d], &buf[..rc as usize]).map(|i| i + total as usize);
                    }
                    self.flow.consumed(d, rc as u64);
                    total += rc as u64;
                }
                out.bad_byte = bad_byte;
                out.moved = total;
                if !kinds.is_empty() {
                    out.note = format!("fds {kinds:?}");
                }
                out
            }
            Op::Poll { api: papi, events } => {
                let open: Vec<(usize, usize, c_int)> =
                    (0..2).flat_map(|e| self.fds[e].iter().enumerate().map(move |(c, &fd)| (e, c, fd))).collect();
                let mut out;
                match papi {
                    PollApi::Poll | PollApi::Ppoll | PollApi::PollChk | PollApi::PpollChk => {
                        let mut p: Vec<libc::pollfd> = open.iter().map(|&(_, _, fd)| libc::pollfd { fd, events, revents: 0 }).collect();
                        let n = p.len() as libc::nfds_t;
                        let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                        let size = size_of_val(p.as_slice());
                        // SAFETY: a live array of `n` pollfds; a zero timeout.
                        let rc = unsafe {
                            match papi {
                                PollApi::Poll => api.poll(p.as_mut_ptr(), n, 0),
                                PollApi::Ppoll => api.ppoll(p.as_mut_ptr(), n, &ts, std::ptr::null()),
                                PollApi::PollChk => api.__poll_chk(p.as_mut_ptr(), n, 0, size),
                                _ => api.__ppoll_chk(p.as_mut_ptr(), n, &ts, std::ptr::null(), size),
                            }
                        };
                        out = Out::from_rc(rc as i64);
                        out.ready = open.iter().zip(&p).map(|(&(e, c, _), p)| (e, c, p.revents as u16 as u32)).collect();
                    }
                    PollApi::Select | PollApi::Pselect => {
                        // SAFETY: plain data, then FD_* on live sets with fds below 1024.
                        unsafe {
                            let mut sets: [libc::fd_set; 3] = std::mem::zeroed();
                            let mut max = 0;
                            for &(_, _, fd) in &open {
                                for (i, s) in sets.iter_mut().enumerate() {
                                    let wanted = [libc::POLLIN, libc::POLLOUT, libc::POLLPRI][i];
                                    if events & wanted != 0 {
                                        libc::FD_SET(fd, s);
                                    }
                                }
                                max = max.max(fd);
                            }
                            let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
                            let [r, w, x] = &mut sets;
                            let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                            let rc = if papi == PollApi::Select {
                                api.select(max + 1, r, w, x, &mut tv)
                            } else {
                                api.pselect(max + 1, r, w, x, &ts, std::ptr::null())
                            };
                            out = Out::from_rc(rc as i64);
                            out.ready = open
                                .iter()
                                .map(|&(e, c, fd)| {
                                    let bits = [libc::POLLIN, libc::POLLOUT, libc::POLLPRI]
                                        .iter()
                                        .zip(&sets)
                                        .filter(|(_, s)| libc::FD_ISSET(fd, *s))
                                        .fold(0, |a, (b, _)| a | *b as u32);
                                    (e, c, bits)
                                })
                                .collect();
                        }
                    }
                    PollApi::Epoll => {
                        // SAFETY: a new epoll instance, registered and waited on with live
                        // events, closed at the end.
                        unsafe {
                            let ep = api.epoll_create1(libc::EPOLL_CLOEXEC);
                            assert!(ep >= 0);
                            let mut ctl = Vec::new();
                            if std::env::var_os("TSSX_DIFF_DEBUG").is_some() {
                                for &(_, _, fd) in &open {
                                    eprintln!("{}: fd {fd} phase {:?}", self.name, tssx_hook::table::lookup(fd).map(|c| c.phase()));
                                }
                            }
                            for (i, &(_, _, fd)) in open.iter().enumerate() {
                                let mut ev = libc::epoll_event { events: events as u16 as u32, u64: i as u64 };
                                ctl.push(api.epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev));
                            }
                            let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; open.len() + 1];
                            let rc = api.epoll_wait(ep, evs.as_mut_ptr(), evs.len() as c_int, 0);
                            out = Out::from_rc(rc as i64);
                            out.note = format!("ctl {ctl:?}");
                            let mut ready: Vec<(usize, usize, u32)> = evs[..rc.max(0) as usize]
                                .iter()
                                .map(|ev| {
                                    let (e, c, _) = open[ev.u64 as usize];
                                    (e, c, ev.events)
                                })
                                .collect();
                            ready.sort_unstable();
                            out.ready = ready;
                            api.close(ep);
                        }
                    }
                }
                out
            }
            Op::Fionread { end, copy } | Op::Outq { end, copy } => {
                let req = if matches!(op, Op::Fionread { .. }) { libc::FIONREAD } else { libc::TIOCOUTQ };
                let mut v: c_int = -7;
                // SAFETY: the request takes a pointer to an int.
                let mut out = Out::from_rc(unsafe { api.ioctl(self.fd(end, copy), req, &mut v) } as i64);
                out.value = v as i64;
                out
            }
            Op::Shutdown { end, copy, how } => {
                // SAFETY: no pointers.
                Out::from_rc(unsafe { api.shutdown(self.fd(end, copy), how) } as i64)
            }
            Op::Nonblock { end, copy, on, ioctl } => {
                let fd = self.fd(end, copy);
                // SAFETY: no pointers, or FIONBIO's int.
                unsafe {
                    if ioctl {
                        let mut v = on as c_int;
                        Out::from_rc(api.ioctl(fd, libc::FIONBIO, &mut v) as i64)
                    } else {
                        let fl = api.fcntl(fd, libc::F_GETFL, 0);
                        let fl2 = if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK };
                        let mut out = Out::from_rc(api.fcntl(fd, libc::F_SETFL, fl2) as i64);
                        out.note = format!("getfl {fl:#x}");
                        out
                    }
                }
            }
            Op::Dup { end, copy, how } => {
                let fd = self.fd(end, copy);
                let target = self.spare_fd();
                // SAFETY: no pointers.
                let rc = unsafe {
                    match how {
                        DupHow::Dup => api.dup(fd),
                        DupHow::Dup2 => api.dup2(fd, target),
                        DupHow::Dup3 => api.dup3(fd, target, libc::O_CLOEXEC),
                        DupHow::DupFd => api.fcntl(fd, libc::F_DUPFD_CLOEXEC, 500),
                    }
                };
                let mut out = Out::from_rc(rc as i64);
                if rc >= 0 {
                    assert!(rc < 1024, "{}: dup gave {rc}", self.name);
                    self.fds[end].push(rc);
                    out.rc = 0; // the number itself differs between the pairs
                    out.note = "an fd".into();
                }
                out
            }
            Op::Dup2Over { end, copy, onto, onto_copy } => {
                let (fd, target) = (self.fd(end, copy), self.fd(onto, onto_copy));
                // SAFETY: no pointers.
                let rc = unsafe { api.dup2(fd, target) };
                let mut out = Out::from_rc(rc as i64);
                if rc >= 0 {
                    out.rc = if rc == target { 0 } else { -99 };
                    if fd != target {
                        self.fds[onto].remove(onto_copy);
                        self.fds[end].push(target);
                        if self.fds[onto].is_empty() {
                            self.end_closed(onto);
                        }
                    }
                }
                out
            }
            Op::Bulk { end, copy, peer_copy, len } => {
                let (wfd, rfd) = (self.fd(end, copy), self.fd(1 - end, peer_copy));
                let d = end;
                let data = fill(seed, d, self.flow.wr[d], len);
                let want = self.flow.queued(d) as usize + len;
                let reader = std::thread::spawn(move || {
                    let mut got = Vec::with_capacity(want);
                    let mut buf = vec![0u8; 65536];
                    while got.len() < want {
                        let room = buf.len().min(want - got.len());
                        // SAFETY: a live buffer of `room` bytes.
                        let n = unsafe { api.recv(rfd, buf.as_mut_ptr().cast(), room, 0) };
                        if n <= 0 {
                            return (got, format!("reader stopped: {}", Out::from_rc(n as i64).raw()));
                        }
                        got.extend_from_slice(&buf[..n as usize]);
                    }
                    (got, String::new())
                });
                // SAFETY: a live buffer of `len` bytes.
                let mut out = Out::from_rc(unsafe { api.write(wfd, data.as_ptr().cast(), len) } as i64);
                let (got, stopped) = reader.join().expect("the reader thread");
                out.bad_byte = check_stream(seed, d, self.flow.rd[d], &got);
                out.note = format!("read {} of {want} {stopped}", got.len());
                self.flow.wr[d] += out.rc.max(0) as u64;
                self.flow.chunks[d] += 1;
                self.flow.consumed(d, got.len() as u64);
                out
            }
            Op::EpollCtl { end, copy, op, events, tag } => {
                let mut ev = libc::epoll_event { events, u64: tag };
                // SAFETY: a live event.
                Out::from_rc(unsafe { api.epoll_ctl(self.ep, op, self.fd(end, copy), &mut ev) } as i64)
            }
            Op::IoctlNull { end, copy, req } => {
                // SAFETY: bad input on purpose: the kernel (and the hook) must refuse it.
                Out::from_rc(unsafe { api.ioctl(self.fd(end, copy), req, std::ptr::null_mut()) } as i64)
            }
            Op::SendFds { end, copy, len, n, what, flags } => {
                let fd = self.fd(end, copy);
                let data = fill(seed, end, self.flow.wr[end], len);
                let p = pipe(0);
                let fds: Vec<c_int> = what[..n]
                    .iter()
                    .map(|w| match w {
                        Pass::Pipe => p[0],
                        Pass::Own => fd,
                        Pass::Peer => self.fds[1 - end].first().copied().unwrap_or(fd),
                    })
                    .collect();
                let mut iov = iovec { iov_base: data.as_ptr() as *mut c_void, iov_len: len };
                let mut cbuf = [0u64; 4];
                let mut m = msghdr_for(std::slice::from_mut(&mut iov), 1);
                m.msg_control = cbuf.as_mut_ptr().cast();
                // SAFETY: size computations, then the header and fds written inside `cbuf`
                // (room for two fds); the message's buffers are live.
                let rc = unsafe {
                    m.msg_controllen = libc::CMSG_SPACE((4 * n) as u32) as usize;
                    let c = libc::CMSG_FIRSTHDR(&m);
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN((4 * n) as u32) as usize;
                    for (i, &f) in fds.iter().enumerate() {
                        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<c_int>().add(i), f);
                    }
                    api.sendmsg(fd, &m, flags)
                };
                let mut out = Out::from_rc(rc as i64);
                close_pipe(p);
                if rc > 0 {
                    out.moved = rc as u64;
                    self.flow.wr[end] += rc as u64;
                    self.flow.chunks[end] += 1;
                    self.flow.fds_until[end] = self.flow.wr[end];
                    if what[..n].iter().any(|&w| w != Pass::Pipe) {
                        self.flow.sock_until[end] = self.flow.wr[end];
                    }
                }
                out
            }
            Op::Splice { end, copy, into, len, avail, flags, pipe_nb } => {
                let fd = self.fd(end, copy);
                let p = pipe(if pipe_nb { libc::O_NONBLOCK } else { 0 });
                let null = std::ptr::null_mut();
                let mut out;
                if into {
                    let data = fill(seed, end, self.flow.wr[end], avail);
                    // SAFETY: a live buffer; at most a pipe's capacity into an empty pipe.
                    assert_eq!(unsafe { libc::write(p[1], data.as_ptr().cast(), avail) }, avail as isize);
                    // SAFETY: no offsets; fds of this side.
                    let rc = unsafe { api.splice(p[0], null, fd, null, len, flags) };
                    out = Out::from_rc(rc as i64);
                    if rc > 0 {
                        out.moved = rc as u64;
                        out.writes = 1;
                        self.flow.wr[end] += rc as u64;
                        self.flow.chunks[end] += 1;
                        self.flow.spliced_until[end] = self.flow.wr[end];
                    }
                } else {
                    let d = 1 - end;
                    // SAFETY: as above.
                    let rc = unsafe { api.splice(fd, null, p[1], null, len, flags) };
                    out = Out::from_rc(rc as i64);
                    if rc > 0 {
                        out.data = vec![0; rc as usize];
                        let mut at = 0;
                        while at < out.data.len() {
                            // SAFETY: a live buffer; the pipe holds what splice moved.
                            let n = unsafe { libc::read(p[0], out.data[at..].as_mut_ptr().cast(), out.data.len() - at) };
                            assert!(n > 0, "{}: the pipe holds fewer bytes than splice said", self.name);
                            at += n as usize;
                        }
                        out.bad_byte = check_stream(seed, d, self.flow.rd[d], &out.data);
                        out.moved = rc as u64;
                        self.flow.consumed(d, rc as u64);
                    }
                }
                close_pipe(p);
                out
            }
            Op::SendOob { end, copy, len, flags } => {
                self.flow.handed_back = true;
                let fd = self.fd(end, copy);
                let mut data = fill(seed, end, self.flow.wr[end], len - 1);
                data.push(0xa0 | (len as u8 & 0x1f));
                // SAFETY: a live buffer of `len` bytes.
                let rc = unsafe { api.send(fd, data.as_ptr().cast(), len, flags | libc::MSG_OOB) };
                let mut out = Out::from_rc(rc as i64);
                if rc > 0 {
                    // All of it: the last byte is out of band, the rest in band; a partial
                    // send sent no out-of-band byte.
                    let inband = if rc as usize == len { len as u64 - 1 } else { rc as u64 };
                    out.moved = inband;
                    out.writes = 2;
                    self.flow.wr[end] += inband;
                    self.flow.chunks[end] += 2;
                    if rc as usize == len {
                        self.flow.mark[end] = self.flow.wr[end];
                        self.flow.oob[end] = true;
                        self.flow.oob_counted[end] += 1;
                    }
                }
                out
            }
            Op::RecvOob { end, copy, len, peek } => {
                let mut buf = [0u8; 4];
                let flags = libc::MSG_OOB | if peek { libc::MSG_PEEK } else { 0 };
                // SAFETY: a live buffer of at least `len` bytes.
                let rc = unsafe { api.recv(self.fd(end, copy), buf.as_mut_ptr().cast(), len, flags) };
                let mut out = Out::from_rc(rc as i64);
                if rc >= 0 {
                    out.data = buf[..rc as usize].to_vec();
                    out.note = format!("byte {:#x}", buf[0]);
                    if !peek {
                        self.flow.oob[1 - end] = false;
                        if rc > 0 {
                            self.flow.oob_counted[1 - end] = self.flow.oob_counted[1 - end].saturating_sub(1);
                        }
                    }
                }
                out
            }
            Op::AtMark { end, copy } => {
                let mut v: c_int = -7;
                // SAFETY: SIOCATMARK takes a pointer to an int.
                let mut out = Out::from_rc(unsafe { api.ioctl(self.fd(end, copy), SIOCATMARK, &mut v) } as i64);
                out.value = v as i64;
                out
            }
            Op::Fork | Op::Exit { .. } => unreachable!("run() forks and reaps"),
            Op::EpollWait { pwait } => {
                let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 32];
                // SAFETY: a live array of 32 events; no signal mask.
                let rc = unsafe {
                    if pwait {
                        api.epoll_pwait(self.ep, evs.as_mut_ptr(), evs.len() as c_int, 0, std::ptr::null())
                    } else {
                        api.epoll_wait(self.ep, evs.as_mut_ptr(), evs.len() as c_int, 0)
                    }
                };
                let mut out = Out::from_rc(rc as i64);
                let mut ready: Vec<(usize, usize, u32)> =
                    evs[..rc.max(0) as usize].iter().map(|ev| ((ev.u64 & 1) as usize, ev.u64 as usize, ev.events)).collect();
                ready.sort_unstable();
                out.ready = ready;
                out
            }
            Op::Close { end, copy } => {
                let fd = self.fds[end].remove(copy);
                // SAFETY: our copy, forgotten above.
                let out = Out::from_rc(unsafe { api.close(fd) } as i64);
                if self.fds[end].is_empty() {
                    self.end_closed(end);
                }
                out
            }
        }
    }

    /// Takes the fds a `recvmsg` received: notes what each is (a pipe, a copy of one of this
    /// pair's ends, with FD_CLOEXEC or not) and closes it. Returns what each was.
    fn take_fds(&mut self, fds: &[c_int]) -> Vec<String> {
        let inode = |fd: c_int| {
            // SAFETY: plain data, then fstat into it.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_mode & libc::S_IFMT, st.st_ino))
        };
        let mut kinds = Vec::new();
        for &fd in fds {
            // SAFETY: no pointers.
            let cloexec = unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC != 0;
            let (mode, ino) = inode(fd).unwrap_or((0, 0));
            let end = (0..2).find(|&e| self.fds[e].first().is_some_and(|&f| inode(f) == Some((mode, ino))));
            let kind = match (mode, end) {
                (libc::S_IFIFO, _) => "pipe".to_owned(),
                (libc::S_IFSOCK, Some(e)) => format!("end {e}"),
                _ => format!("mode {mode:o}"),
            };
            kinds.push(format!("{kind}{}", if cloexec { " cloexec" } else { "" }));
            // Closed at once (through the hook: a received swapped socket is attached to its
            // segment, and its close counts): which read receives a message's fds is only
            // compared while both pairs hold the same bytes, so the pairs' fd lists could
            // differ if the copies were kept.
            // SAFETY: our fd, just received.
            unsafe { self.api.close(fd) };
        }
        kinds
    }

    /// Forks: the child serves the operations [`Side::call_child`] sends until [`Op::Exit`].
    fn fork(&mut self, seed: u64) -> Out {
        let (cmd, resp) = (pipe(0), pipe(0));
        // SAFETY: fork; the child only runs this side's operations (libc and the hook's calls,
        // which glibc's fork keeps usable: malloc's locks are reset in the child) and `_exit`s.
        let pid = unsafe { self.api.fork() };
        if pid == 0 {
            // SAFETY: the parent's ends, not ours; the other side's child's pipe ends (so that
            // it sees EOF when the parent goes); killed with the parent's test thread.
            unsafe {
                libc::close(cmd[1]);
                libc::close(resp[0]);
                for fd in CHILD_PIPES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    libc::close(*fd);
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve(cmd[0], resp[1], seed))).unwrap_or(101);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let out = Out::from_rc(pid.min(0) as i64);
        // SAFETY: the child's ends.
        unsafe {
            libc::close(cmd[0]);
            libc::close(resp[1]);
        }
        if pid > 0 {
            self.child = Some(Child { pid, cmd: cmd[1], resp: resp[0] });
            CHILD_PIPES.lock().unwrap_or_else(|e| e.into_inner()).extend([cmd[1], resp[0]]);
        }
        out
    }

    /// In the forked child: runs each operation the parent sends, answers with its result and
    /// this side's counts.
    fn serve(&mut self, cmd: c_int, resp: c_int, seed: u64) -> c_int {
        self.child = Some(Child { pid: 0, cmd, resp });
        loop {
            let mut op = std::mem::MaybeUninit::<Op>::uninit();
            let mut salt = 0u64;
            // SAFETY: the parent wrote an `Op` of this very binary, then a u64.
            unsafe {
                if !read_exact(cmd, op.as_mut_ptr().cast(), size_of::<Op>()) || !read_exact(cmd, (&raw mut salt).cast(), 8) {
                    return 2;
                }
            }
            // SAFETY: as above.
            let op = unsafe { op.assume_init() };
            if let Op::Exit { close } = op {
                if close {
                    for fd in self.fds.iter().flatten() {
                        // SAFETY: the child's copies.
                        unsafe { self.api.close(*fd) };
                    }
                }
                return 0;
            }
            set_errno(0);
            let mut out = self.exec(&op, seed, salt);
            out.sigpipe = take_sigpipe();
            let bytes = encode(&out, &self.flow);
            let len = bytes.len();
            // SAFETY: live buffers.
            unsafe {
                write_all(resp, (&raw const len).cast(), 8);
                write_all(resp, bytes.as_ptr(), bytes.len());
            }
        }
    }

    /// Runs `op` in the forked child (or, for [`Op::Exit`], ends and reaps it).
    fn call_child(&mut self, op: &Op, salt: u64) -> Out {
        let child = self.child.as_ref().expect("a child");
        // SAFETY: live values written to the child's command pipe.
        unsafe {
            write_all(child.cmd, (op as *const Op).cast(), size_of::<Op>());
            write_all(child.cmd, (&raw const salt).cast(), 8);
        }
        if let Op::Exit { .. } = op {
            let status = self.reap();
            let mut out = Out::from_rc(0);
            out.note = status;
            return out;
        }
        let mut len = 0usize;
        // SAFETY: the child writes a length, then that many bytes.
        let bytes = unsafe {
            assert!(read_exact(child.resp, (&raw mut len).cast(), 8), "{}: the child died", self.name);
            let mut bytes = vec![0u8; len];
            assert!(read_exact(child.resp, bytes.as_mut_ptr(), len), "{}: the child died", self.name);
            bytes
        };
        let (out, flow) = decode(&bytes);
        self.flow = flow;
        out
    }

    /// Waits for the child to end (killing it first if `kill`); its exit status.
    fn reap(&mut self) -> String {
        let Some(child) = self.child.take() else { return String::new() };
        let mut status = 0;
        CHILD_PIPES.lock().unwrap_or_else(|e| e.into_inner()).retain(|&fd| fd != child.cmd && fd != child.resp);
        // SAFETY: our child and our pipe ends.
        unsafe {
            libc::waitpid(child.pid, &mut status, 0);
            libc::close(child.cmd);
            libc::close(child.resp);
        }
        if libc::WIFEXITED(status) {
            format!("exit {}", libc::WEXITSTATUS(status))
        } else {
            format!("signal {}", libc::WTERMSIG(status))
        }
    }

    /// `end` has no fd left: what was queued for it is gone with it.
    fn end_closed(&mut self, end: usize) {
        let d = 1 - end;
        self.flow.rd[d] = self.flow.wr[d];
        self.flow.chunks[d] = 0;
        self.flow.empty_at[d] = self.flow.wr[d];
    }

    fn close_all(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: our child.
            unsafe { libc::kill(child.pid, libc::SIGKILL) };
            self.reap();
        }
        // SAFETY: our epoll instance.
        unsafe { self.api.close(self.ep) };
        for end in 0..2 {
            for fd in std::mem::take(&mut self.fds[end]) {
                // SAFETY: our fd.
                unsafe { self.api.close(fd) };
            }
        }
    }
}

/// `ioctl(SIOCATMARK)`.
const SIOCATMARK: libc::c_ulong = 0x8905;

/// The parent's ends of the pipes to the children running now (a child closes the other's).
static CHILD_PIPES: Mutex<Vec<c_int>> = Mutex::new(Vec::new());

/// A forked child running a side's operations (see [`Side::fork`]).
struct Child {
    pid: libc::pid_t,
    /// Where operations go (the parent's end; in the child, where they come from).
    cmd: c_int,
    /// Where results come back.
    resp: c_int,
}

/// A new pipe (close-on-exec, plus `flags`).
fn pipe(flags: c_int) -> [c_int; 2] {
    let mut p = [-1; 2];
    // SAFETY: a valid out-array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | flags) }, 0);
    p
}

fn close_pipe(p: [c_int; 2]) {
    for fd in p {
        // SAFETY: our pipe.
        unsafe { libc::close(fd) };
    }
}

/// # Safety
/// `buf` is valid for `len` bytes.
unsafe fn write_all(fd: c_int, buf: *const u8, len: usize) {
    let mut at = 0;
    while at < len {
        // SAFETY: within the caller's buffer.
        let n = unsafe { libc::write(fd, buf.add(at).cast(), len - at) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        assert!(n > 0, "writing to a child's pipe: {}", errno());
        at += n as usize;
    }
}

/// Whether all `len` bytes came (false: end of file first).
///
/// # Safety
/// `buf` is valid for `len` bytes.
unsafe fn read_exact(fd: c_int, buf: *mut u8, len: usize) -> bool {
    let mut at = 0;
    while at < len {
        // SAFETY: within the caller's buffer.
        let n = unsafe { libc::read(fd, buf.add(at).cast(), len - at) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        at += n as usize;
    }
    true
}

/// A child's result, for its parent.
fn encode(out: &Out, flow: &Flow) -> Vec<u8> {
    let mut b = Vec::new();
    let num = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_ne_bytes());
    num(&mut b, out.rc as u64);
    num(&mut b, out.errno as u64);
    num(&mut b, out.moved);
    num(&mut b, out.writes as u64);
    num(&mut b, out.value as u64);
    num(&mut b, out.bad_byte.map_or(u64::MAX, |i| i as u64));
    num(&mut b, out.sigpipe as u64);
    num(&mut b, out.data.len() as u64);
    b.extend_from_slice(&out.data);
    num(&mut b, out.note.len() as u64);
    b.extend_from_slice(out.note.as_bytes());
    num(&mut b, out.ready.len() as u64);
    for &(e, c, bits) in &out.ready {
        num(&mut b, e as u64);
        num(&mut b, c as u64);
        num(&mut b, bits as u64);
    }
    for d in 0..2 {
        for v in [
            flow.wr[d],
            flow.rd[d],
            flow.chunks[d] as u64,
            flow.empty_at[d],
            flow.mark[d],
            flow.oob[d] as u64,
            flow.oob_counted[d],
            flow.fds_until[d],
            flow.sock_until[d],
            flow.spliced_until[d],
        ] {
            num(&mut b, v);
        }
    }
    num(&mut b, flow.handed_back as u64);
    b
}

fn decode(b: &[u8]) -> (Out, Flow) {
    let mut at = 0;
    let mut num = || {
        let v = u64::from_ne_bytes(b[at..at + 8].try_into().unwrap());
        at += 8;
        v
    };
    let mut out =
        Out { rc: num() as i64, errno: num() as c_int, moved: num(), writes: num() as usize, value: num() as i64, ..Out::default() };
    out.bad_byte = Some(num()).filter(|&v| v != u64::MAX).map(|v| v as usize);
    out.sigpipe = num() != 0;
    let n = num() as usize;
    let data = (at, n);
    at += n;
    out.data = b[data.0..data.0 + data.1].to_vec();
    let n = u64::from_ne_bytes(b[at..at + 8].try_into().unwrap()) as usize;
    at += 8;
    out.note = String::from_utf8_lossy(&b[at..at + n]).into_owned();
    at += n;
    let mut num = || {
        let v = u64::from_ne_bytes(b[at..at + 8].try_into().unwrap());
        at += 8;
        v
    };
    let n = num() as usize;
    out.ready = (0..n).map(|_| (num() as usize, num() as usize, num() as u32)).collect();
    let mut flow = Flow::default();
    for d in 0..2 {
        flow.wr[d] = num();
        flow.rd[d] = num();
        flow.chunks[d] = num() as usize;
        flow.empty_at[d] = num();
        flow.mark[d] = num();
        flow.oob[d] = num() != 0;
        flow.oob_counted[d] = num();
        flow.fds_until[d] = num();
        flow.sock_until[d] = num();
        flow.spliced_until[d] = num();
    }
    flow.handed_back = num() != 0;
    (out, flow)
}

/// A new epoll instance (the hook's `epoll_create1` for the swapped pair: it notes the
/// instance, whose interest list a fork then shares).
fn epoll_instance(api: &dyn Api) -> c_int {
    // SAFETY: no pointers.
    let ep = unsafe { api.epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    ep
}

/// A named Unix address (for sendto's EISCONN).
fn sockaddr_un_named() -> libc::sockaddr_un {
    // SAFETY: plain data.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(b"/nonexistent/tssx-diff") {
        *d = *s as libc::c_char;
    }
    a
}

// ---------------------------------------------------------------------------------------------
// Comparison.

const IN_BITS: u32 = (libc::POLLIN | libc::POLLRDNORM) as u32;
const OUT_BITS: u32 = (libc::POLLOUT | libc::POLLWRNORM | libc::POLLWRBAND) as u32;

/// What is compared of a step's result on each pair (see the module's docs for each
/// normalisation). `flows`: each pair's counts before the step; `salt`: the step's.
fn keys(op: &Op, outs: [&Out; 2], flows: [Flow; 2], salt: u64) -> [String; 2] {
    let k = keys_of_results(op, outs, flows, salt);
    // Whether the call raised SIGPIPE, always.
    [0, 1].map(|s| format!("{}{}", k[s], if outs[s].sigpipe { " +SIGPIPE" } else { "" }))
}

fn keys_of_results(op: &Op, outs: [&Out; 2], flows: [Flow; 2], salt: u64) -> [String; 2] {
    let q = |side: usize, d: usize| flows[side].queued(d);
    let same = |d: usize| flows[0].wr[d] == flows[1].wr[d] && flows[0].rd[d] == flows[1].rd[d];
    // (And at most `EXACT_SINCE_EMPTY` written since the direction was last empty: a write's
    // skb counts whole until its last byte is read. Seeds 83505 and 84431: a big write read
    // all but its last bytes left plain's end without POLLOUT.)
    let small = |d: usize| {
        (0..2).all(|s| {
            q(s, d) <= EXACT_BYTES && flows[s].chunks[d] <= EXACT_CHUNKS && flows[s].wr[d] - flows[s].empty_at[d] <= EXACT_SINCE_EMPTY
        })
    };
    // (A spliced skb partly read keeps the kernel's `POLLOUT` off however few bytes are left.)
    let out_comparable = |d: usize| small(d) && (0..2).all(|s| !flows[s].splice_in_flight(d));
    let irregular = |d: usize| flows[0].irregular(d) || flows[1].irregular(d);
    let data_ok = |o: &Out| match o.bad_byte {
        Some(i) => format!(" WRONG BYTE at {i}"),
        None => String::new(),
    };
    let err = |o: &Out| if o.rc < 0 { errno_name(o.errno) } else { String::new() };
    let each = |f: &dyn Fn(usize, &Out) -> String| [f(0, outs[0]), f(1, outs[1])];
    match *op {
        Op::Write { end, len, parts, api, .. } => {
            let writes = if api == WrApi::SendMmsg { parts } else { 1 };
            let fits = same(end) && (0..2).all(|s| q(s, end) + len as u64 <= EXACT_BYTES && flows[s].chunks[end] + writes <= EXACT_CHUNKS);
            if fits {
                each(&|_, o| o.raw())
            } else {
                each(&|s, o| {
                    if o.rc < 0 && o.errno == libc::EAGAIN {
                        if q(s, end) == 0 {
                            "EAGAIN with nothing queued".into()
                        } else {
                            "progress".into()
                        }
                    } else if o.rc < 0 {
                        err(o)
                    } else if o.rc == 0 && len > 0 {
                        o.raw()
                    } else if len == 0 {
                        "0".into()
                    } else {
                        "progress".into()
                    }
                })
            }
        }
        Op::Read { end, len, flags, parts, api, .. } => {
            let d = 1 - end;
            if same(d) {
                return each(&|_, o| format!("{}{} bytes #{:016x}", o.raw(), data_ok(o), fnv(&o.data)));
            }
            if (q(0, d) == 0) != (q(1, d) == 0) || irregular(d) {
                return each(&|_, o| format!("(not compared: one pair has bytes, the other none){}", data_ok(o)));
            }
            each(&|s, o| {
                let expect = if api == RdApi::RecvMmsg && flags & libc::MSG_PEEK != 0 {
                    // Every message peeks at the same bytes.
                    split(len, parts.max(1), salt).iter().map(|&(_, l)| (l as u64).min(q(s, d))).sum()
                } else {
                    (len as u64).min(q(s, d))
                };
                let got = if api == RdApi::RecvMmsg { o.data.len() as u64 } else { o.rc.max(0) as u64 };
                if o.rc < 0 {
                    format!("{}{}", err(o), data_ok(o))
                } else if got == expect {
                    format!("min(asked, queued){}", data_ok(o))
                } else {
                    format!("{} (queued {}){}", o.raw(), q(s, d), data_ok(o))
                }
            })
        }
        Op::Drain { end, .. } => {
            let d = 1 - end;
            if same(d) {
                each(&|_, o| format!("{} total {}{}", o.raw(), o.moved, data_ok(o)))
            } else {
                each(&|s, o| {
                    let all = if o.moved == q(s, d) { "all queued".to_owned() } else { format!("{} of {}", o.moved, q(s, d)) };
                    format!("{} {all}{}", if o.rc < 0 { errno_name(o.errno) } else { o.rc.to_string() }, data_ok(o))
                })
            }
        }
        Op::Poll { .. } | Op::EpollWait { .. } => each(&|_, o| {
            let ready: Vec<(usize, usize, String)> = o
                .ready
                .iter()
                .map(|&(e, c, bits)| {
                    let mut b = bits;
                    let mut masked = String::new();
                    if !out_comparable(e) {
                        b &= !OUT_BITS;
                        masked.push_str(" (out not compared)");
                    }
                    if (q(0, 1 - e) == 0) != (q(1, 1 - e) == 0) {
                        b &= !IN_BITS;
                        masked.push_str(" (in not compared)");
                    }
                    if !same(1 - e) && irregular(1 - e) {
                        // Whether a read passed the out-of-band mark (dropping the byte) depends
                        // on what each pair held.
                        b &= !(libc::POLLPRI as u32);
                        masked.push_str(" (pri not compared)");
                    }
                    (e, c, b, format!("{b:#x}{masked}"))
                })
                // (Nothing left to compare: as if not reported, which epoll does.)
                .filter(|&(_, _, b, _)| b != 0)
                .map(|(e, c, _, s)| (e, c, s))
                .collect();
            format!("{} {ready:?} {}", if o.rc < 0 { errno_name(o.errno) } else { "ok".into() }, o.note)
        }),
        Op::Fionread { end, .. } => {
            let d = 1 - end;
            if same(d) {
                each(&|_, o| o.raw())
            } else if irregular(d) {
                // (The kernel counts a waiting out-of-band byte too.)
                each(&|_, _| "(not compared: an out-of-band byte or a message with fds ahead)".into())
            } else {
                // (And every out-of-band byte not taken, see `Flow::oob_counted`.)
                each(&|s, o| {
                    if o.rc == 0 && o.value as u64 == q(s, d) + flows[s].oob_counted[d] {
                        "= queued".into()
                    } else {
                        o.raw()
                    }
                })
            }
        }
        Op::Outq { end, .. } => {
            if flows[0].handed_back {
                // After a hand-back the socket's SIOCOUTQ (skb truesize) counts the last
                // doorbells the peer has not skipped yet: not comparable (see COVERAGE.md).
                return each(&|_, _| "(not compared: handed back)".into());
            }
            if (q(0, end) == 0) != (q(1, end) == 0) {
                return each(&|_, _| "(not compared: one pair has bytes queued, the other none)".into());
            }
            each(&|_, o| if o.rc < 0 { err(o) } else { format!("zero: {}", o.value == 0) })
        }
        Op::Splice { end, into: true, len, avail, flags, .. } => {
            let w = Op::Write { end, copy: 0, api: WrApi::Write, len: len.min(avail), parts: 1, flags: flags as c_int, bad: Bad::None };
            keys_of_results(&w, outs, flows, salt)
        }
        Op::SendOob { end, len, flags, .. } => {
            // (Two writes: the in-band part and the out-of-band byte.)
            let w = Op::Write { end, copy: 0, api: WrApi::SendMmsg, len, parts: 2, flags, bad: Bad::None };
            keys_of_results(&w, outs, flows, salt)
        }
        Op::Splice { end, into: false, len, .. } => {
            let d = 1 - end;
            // A splice out of a socket fills at most a pipe's 16 buffers, one or two per skb
            // of the kernel's queue, one per page from the rings: counts are compared while
            // the queue is a few writes.
            if same(d) && !irregular(d) && (0..2).all(|s| flows[s].chunks[d] <= 8) {
                return each(&|_, o| format!("{}{} bytes #{:016x}", o.raw(), data_ok(o), fnv(&o.data)));
            }
            if (q(0, d) == 0) != (q(1, d) == 0) {
                return each(&|_, o| format!("(not compared: one pair has bytes, the other none){}", data_ok(o)));
            }
            each(&|s, o| {
                if o.rc > 0 && o.rc as u64 <= (len as u64).min(q(s, d)) {
                    format!("some{}", data_ok(o))
                } else {
                    format!("{} (queued {}){}", o.raw(), q(s, d), data_ok(o))
                }
            })
        }
        Op::RecvOob { end, .. } | Op::AtMark { end, .. } => {
            let d = 1 - end;
            if same(d) {
                each(&|_, o| format!("{} #{:016x}", o.raw(), fnv(&o.data)))
            } else {
                each(&|_, _| "(not compared: the pairs hold different bytes)".into())
            }
        }
        _ => each(&|_, o| o.raw()),
    }
}

// ---------------------------------------------------------------------------------------------
// The generator.

/// Flags a read may carry (besides the blocking ones the generator decides).
fn read_flags(rng: &mut Rng, exact: bool) -> c_int {
    let mut f = 0;
    if rng.pct(15) {
        f |= libc::MSG_PEEK;
    }
    if rng.pct(40) {
        f |= libc::MSG_DONTWAIT;
    }
    if rng.pct(15) {
        f |= libc::MSG_WAITALL;
    }
    if rng.pct(5) {
        f |= libc::MSG_NOSIGNAL;
    }
    if rng.pct(5) {
        f |= libc::MSG_CMSG_CLOEXEC;
    }
    if exact && rng.pct(4) {
        f |= libc::MSG_TRUNC;
    }
    if exact && rng.pct(3) {
        f |= rng.pick(&[libc::MSG_ERRQUEUE, libc::MSG_EOR, libc::MSG_CONFIRM, 0x4000_0000, 0x10 /* MSG_PROXY */]);
    }
    f
}

fn write_flags(rng: &mut Rng, exact: bool) -> c_int {
    let mut f = 0;
    if rng.pct(40) {
        f |= libc::MSG_DONTWAIT;
    }
    if rng.pct(40) {
        f |= libc::MSG_NOSIGNAL;
    }
    if rng.pct(5) {
        f |= libc::MSG_MORE;
    }
    if exact && rng.pct(3) {
        f |= rng.pick(&[libc::MSG_EOR, libc::MSG_CONFIRM, libc::MSG_ERRQUEUE, 0x10 /* MSG_PROXY */, libc::MSG_TRUNC, 0x4000_0000]);
    }
    f
}

struct Gen<'a> {
    rng: &'a mut Rng,
    shared: Shared,
    flows: [Flow; 2],
    copies: [usize; 2],
    /// The plain pair's fds of each end.
    plain_fds: &'a [Vec<c_int>; 2],
    /// The plain pair's fds registered in the sequence's epoll instance (or registered and
    /// deleted since), with their end.
    registered: &'a [(usize, c_int)],
    /// The operations run in a forked child (see [`Op::Fork`]).
    in_child: bool,
}

impl Gen<'_> {
    fn same(&self, d: usize) -> bool {
        self.flows[0].wr[d] == self.flows[1].wr[d] && self.flows[0].rd[d] == self.flows[1].rd[d]
    }
    fn q_min(&self, d: usize) -> u64 {
        self.flows[0].queued(d).min(self.flows[1].queued(d))
    }
    fn q_max(&self, d: usize) -> u64 {
        self.flows[0].queued(d).max(self.flows[1].queued(d))
    }
    /// A write of `len` bytes in `writes` writes from `end` fits on both pairs.
    fn fits(&self, end: usize, len: usize, writes: usize) -> bool {
        self.q_max(end) + len as u64 <= EXACT_BYTES && self.flows.iter().all(|f| f.chunks[end] + writes <= EXACT_CHUNKS)
    }
    fn open_end(&mut self) -> Option<usize> {
        let open: Vec<usize> = (0..2).filter(|&e| self.copies[e] > 0).collect();
        (!open.is_empty()).then(|| self.rng.pick(&open))
    }
    fn copy(&mut self, end: usize) -> usize {
        self.rng.below(self.copies[end] as u64) as usize
    }

    /// One operation that cannot block forever on either pair (`None`: this try did not give
    /// one).
    /// A message that carries one of the pair's sockets is unread in direction `d` on either
    /// pair: it is read only by `recvmsg` with room for its fds (a drain too). Not generated:
    /// a read that discards a passed swapped socket (`read`, `recv`, a control buffer too
    /// small, `recvmmsg`, `splice`) leaves the end it names counted as held in the segment,
    /// so that its peer never sees it closed on the rings (found by this test, seed 50 with
    /// socket passing; see COVERAGE.md, known gaps).
    fn socket_in_flight(&self, d: usize) -> bool {
        self.flows.iter().any(|f| f.socket_in_flight(d))
    }

    /// A last close of `end` would leave bytes unread on a connection that was handed back
    /// (`send(MSG_OOB)`): not generated. The reset is then in the segment only (the bytes were
    /// on the ring), and a peer that already went plain asks the kernel, which reports EOF
    /// (found by this test, seed 131; see COVERAGE.md, known gaps).
    fn resets_after_hand_back(&self, end: usize) -> bool {
        self.flows[0].handed_back && self.flows.iter().any(|f| f.queued(1 - end) > 0)
    }

    /// A message with fds is unread in either direction on either pair: no end's last close
    /// (a socket in flight keeps its file open: the peer would see no EOF).
    fn fds_in_flight(&self) -> bool {
        (0..2).any(|d| self.flows.iter().any(|f| f.rd[d] < f.fds_until[d]))
    }

    fn try_op(&mut self) -> Option<Op> {
        let end = self.open_end()?;
        let copy = self.copy(end);
        let blocking = !self.shared.nonblock[end];
        let pick = self.rng.below(112);
        if self.in_child && matches!(pick, 64..72 | 91..103 | 109..112) {
            // Not in a child (threads, the parent's epoll instance, its fd bookkeeping): the
            // child exits instead, now and then.
            return self.rng.pct(20).then(|| Op::Exit { close: self.rng.pct(50) });
        }
        Some(match pick {
            0..30 => {
                let api = self.rng.pick(&[WrApi::Write, WrApi::Send, WrApi::SendTo, WrApi::SendMsg, WrApi::Writev, WrApi::SendMmsg]);
                let len = self.rng.size();
                let parts = if api.has_iov() { self.rng.range(1, 4) as usize } else { 1 };
                let writes = if api == WrApi::SendMmsg { parts } else { 1 };
                let fits = self.same(end) && self.fits(end, len, writes);
                let flags = if api.has_flags() { write_flags(self.rng, fits) } else { 0 };
                let mut bad = Bad::None;
                if fits && len > 0 && self.rng.pct(5) {
                    bad = self.rng.pick(&[Bad::NullBuf, Bad::IovCnt(-1), Bad::IovCnt(1025), Bad::NullIov, Bad::Addr, Bad::NullMsg]);
                    let ok = match bad {
                        Bad::IovCnt(_) => matches!(api, WrApi::Writev | WrApi::SendMsg),
                        Bad::NullIov => matches!(api, WrApi::Writev | WrApi::SendMsg),
                        Bad::NullMsg => matches!(api, WrApi::SendMsg | WrApi::SendMmsg),
                        Bad::Addr => matches!(api, WrApi::SendTo | WrApi::SendMsg | WrApi::SendMmsg),
                        _ => true,
                    };
                    if !ok {
                        return None;
                    }
                }
                let may_block = blocking && flags & libc::MSG_DONTWAIT == 0;
                if may_block && !self.shared.send_shut(end) && !self.fits(end, len, writes) {
                    return None;
                }
                Op::Write { end, copy, api, len, parts, flags, bad }
            }
            30..58 => {
                let d = 1 - end;
                let api = self.rng.pick(&[
                    RdApi::Read,
                    RdApi::Recv,
                    RdApi::RecvFrom,
                    RdApi::RecvMsg,
                    RdApi::Readv,
                    RdApi::RecvMmsg,
                    RdApi::ReadChk,
                    RdApi::RecvChk,
                    RdApi::RecvFromChk,
                ]);
                let api = if self.socket_in_flight(d) { RdApi::RecvMsg } else { api };
                let fds_ahead = self.flows.iter().any(|f| f.rd[d] < f.fds_until[d]);
                let len = if self.rng.pct(30) { self.rng.range(1, self.q_max(d).max(1) + 10) as usize } else { self.rng.size() };
                let parts = if api.has_iov() { self.rng.range(1, 4) as usize } else { 1 };
                let exact = self.same(d);
                let mut flags = if api.has_flags() { read_flags(self.rng, exact) } else { 0 };
                if api == RdApi::RecvMmsg && self.rng.pct(40) {
                    flags |= libc::MSG_WAITFORONE;
                }
                if fds_ahead && len == 0 {
                    // A `recvmsg` of no bytes at a message with fds takes its fds in the kernel
                    // (and leaves the bytes); the hook's peeks, so the next read gets them again.
                    // Not generated (seed 371; see COVERAGE.md, known gaps).
                    return None;
                }
                if fds_ahead && flags & libc::MSG_PEEK != 0 {
                    // Linux 6.18 gives a peek the fds of the first message with fds in the
                    // queue even when the peek ends before it (checked with a plain pair); the
                    // hook gives those of a message the peek reaches. Not generated (see
                    // COVERAGE.md, known gaps).
                    return None;
                }
                let mut bad = Bad::None;
                if exact && self.rng.pct(5) {
                    bad = self.rng.pick(&[Bad::NullBuf, Bad::IovCnt(-1), Bad::IovCnt(1025), Bad::NullIov, Bad::NullMsg]);
                    let ok = match bad {
                        Bad::IovCnt(_) => matches!(api, RdApi::Readv | RdApi::RecvMsg),
                        Bad::NullIov => api.has_iov(),
                        Bad::NullMsg => matches!(api, RdApi::RecvMsg | RdApi::RecvMmsg),
                        // Not for recvmmsg: a fault in a message after the first ends the call
                        // with the messages so far, and the kernel keeps the EFAULT in the
                        // socket's SO_ERROR for the next call (POLLERR until then); the hook
                        // does not (documented at `calls::recvmmsg`).
                        Bad::NullBuf => len > 0 && api != RdApi::RecvMmsg,
                        _ => true,
                    };
                    if !ok {
                        return None;
                    }
                }
                if self.shared.reset[end] && !self.same(d) {
                    // Which read reports the reset depends on when the queue runs empty: only
                    // a drain, on both pairs, until the amounts agree again.
                    return None;
                }
                let dontwait = !blocking || flags & libc::MSG_DONTWAIT != 0;
                let eof = self.shared.eof(end);
                // A peek of no bytes (a message of none, for recvmmsg) waits while the queue
                // ends with an out-of-band byte (Linux 6.18; seed 87303 blocked).
                let peek_waits = flags & libc::MSG_PEEK != 0 && (len == 0 || api == RdApi::RecvMmsg) && self.flows.iter().any(|f| f.oob[d]);
                let safe = dontwait
                    || eof
                    || !peek_waits
                        && match api {
                            // (Every message after the first is non-blocking with WAITFORONE.)
                            RdApi::RecvMmsg if flags & libc::MSG_WAITALL != 0 => {
                                flags & libc::MSG_WAITFORONE != 0 && self.q_min(d) >= len.max(1) as u64
                            }
                            RdApi::RecvMmsg => flags & libc::MSG_WAITFORONE != 0 && self.q_min(d) > 0,
                            _ if flags & libc::MSG_WAITALL != 0 => self.q_min(d) >= len as u64 && len > 0,
                            _ => self.q_min(d) > 0,
                        };
                if !safe {
                    return None;
                }
                Op::Read { end, copy, api, len, parts, flags, bad }
            }
            58..64 => Op::Drain { end, copy },
            64..66 => {
                let peer = 1 - end;
                if self.copies[peer] == 0
                    || self.shared.nonblock != [false, false]
                    || !self.same(end)
                    || self.shared.send_shut(end)
                    || self.shared.eof(peer)
                    || self.shared.reset[peer]
                    || self.socket_in_flight(end)
                {
                    return None;
                }
                let peer_copy = self.copy(peer);
                Op::Bulk { end, copy, peer_copy, len: self.rng.range(RING as u64 + 1, 300 << 10) as usize }
            }
            66..69 => {
                if self.flows[0].handed_back {
                    return None;
                }
                let op = self.rng.pick(&[libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_ADD, libc::EPOLL_CTL_MOD, libc::EPOLL_CTL_DEL]);
                let mut events = 0;
                for bit in [libc::EPOLLIN, libc::EPOLLOUT, libc::EPOLLRDHUP, libc::EPOLLPRI] {
                    if self.rng.pct(60) {
                        events |= bit as u32;
                    }
                }
                if EPOLL_EDGES && self.rng.pct(15) {
                    events |= libc::EPOLLET as u32;
                }
                if self.rng.pct(10) {
                    // Whether a one-shot entry fired (and is disarmed) must not depend on bits
                    // that are not compared (IN and OUT depend on the queues' capacities once
                    // they differ): RDHUP and PRI only.
                    events &= (libc::EPOLLRDHUP | libc::EPOLLPRI) as u32;
                    events |= libc::EPOLLONESHOT as u32;
                }
                Op::EpollCtl { end, copy, op, events, tag: (self.rng.below(1 << 20) << 1) | end as u64 }
            }
            69..72 => Op::EpollWait { pwait: self.rng.pct(30) },
            72..76 => {
                let mut events = 0;
                for bit in
                    [libc::POLLIN, libc::POLLOUT, libc::POLLRDHUP, libc::POLLPRI, libc::POLLRDNORM, libc::POLLWRNORM, libc::POLLWRBAND]
                {
                    if self.rng.pct(if bit == libc::POLLIN || bit == libc::POLLOUT { 85 } else { 30 }) {
                        events |= bit;
                    }
                }
                let api = self.rng.pick(&[
                    PollApi::Poll,
                    PollApi::Ppoll,
                    PollApi::PollChk,
                    PollApi::PpollChk,
                    PollApi::Select,
                    PollApi::Pselect,
                    PollApi::Epoll,
                ]);
                Op::Poll { api, events }
            }
            76..80 => Op::Fionread { end, copy },
            80..81 => Op::Outq { end, copy },
            81..82 => Op::IoctlNull { end, copy, req: self.rng.pick(&[libc::FIONREAD, libc::TIOCOUTQ, libc::FIONBIO]) },
            82..85 => Op::Shutdown { end, copy, how: self.rng.pick(&[libc::SHUT_RD, libc::SHUT_WR, libc::SHUT_RDWR, 7]) },
            85..91 => Op::Nonblock { end, copy, on: self.rng.pct(60), ioctl: self.rng.pct(30) },
            91..94 => {
                if self.copies[end] >= 4 {
                    return None;
                }
                Op::Dup { end, copy, how: self.rng.pick(&[DupHow::Dup, DupHow::Dup2, DupHow::Dup3, DupHow::DupFd]) }
            }
            94..96 => {
                let onto = self.open_end()?;
                let onto_copy = self.copy(onto);
                if self.copies[onto] == 1
                    && onto != end
                    && (!self.same(1 - onto) || self.fds_in_flight() || self.shared.orphaned || self.resets_after_hand_back(onto))
                {
                    return None; // the last close of `onto` (see below)
                }
                if self.plain_fds[end][copy] != self.plain_fds[onto][onto_copy] && self.leaves_a_registered_file(onto, onto_copy) {
                    return None;
                }
                Op::Dup2Over { end, copy, onto, onto_copy }
            }
            100..103 => {
                // Exactly (the kernel attaches fds to the first skb of a message: a message
                // that does not fit at once is not generated).
                let len = if self.rng.pct(10) { 0 } else { self.rng.range(1, 600) as usize };
                if !self.same(end) || !self.fits(end, len, 1) {
                    return None;
                }
                let what = [Pass::Pipe, Pass::Own, Pass::Peer];
                let what = [self.rng.pick(&what), self.rng.pick(&what)];
                Op::SendFds { end, copy, len, n: self.rng.range(1, 2) as usize, what, flags: write_flags(self.rng, true) }
            }
            103..106 => {
                let into = self.rng.pct(50);
                let mut flags = 0;
                if self.rng.pct(40) {
                    flags |= libc::SPLICE_F_NONBLOCK;
                }
                if self.rng.pct(10) {
                    flags |= libc::SPLICE_F_MORE;
                }
                let pipe_nb = self.rng.pct(15);
                // SPLICE_F_NONBLOCK (and the pipe's O_NONBLOCK) are for the pipe's waits; into
                // a socket, only the socket's O_NONBLOCK keeps the send from waiting for room
                // (`splice_to_socket`); out of one, either (`unix_stream_splice_read`).
                let waits = blocking && (into || (!pipe_nb && flags & libc::SPLICE_F_NONBLOCK == 0));
                let avail = match self.rng.below(3) {
                    0 => self.rng.range(1, 64),
                    1 => self.rng.range(65, EXACT_BYTES),
                    _ => self.rng.range(EXACT_BYTES + 1, 65536),
                } as usize;
                let len = if self.rng.pct(70) { avail } else { self.rng.range(1, 70000) as usize };
                if into {
                    if waits && !self.shared.send_shut(end) && !(self.same(end) && self.fits(end, len.min(avail), 1)) {
                        return None;
                    }
                } else {
                    let d = 1 - end;
                    if (self.shared.reset[end] && !self.same(d)) || self.socket_in_flight(d) {
                        return None;
                    }
                    if waits && !self.shared.eof(end) && self.q_min(d) == 0 {
                        return None;
                    }
                }
                Op::Splice { end, copy, into, len, avail, flags, pipe_nb }
            }
            106..109 if !oob_enabled() => return None,
            106..109 => match self.rng.below(3) {
                // Not while the sequence's epoll instance has registrations, nor (below) a
                // registration after a hand-back: divergences left to the owners of `epoll.rs`
                // (seed 474: a level-triggered registration of a connection handed back reports
                // its EPOLLHUP once, the kernel on every wait; seed 131 with a fork).
                0 if !self.registered.is_empty() => return None,
                0 => {
                    // One out-of-band byte waits at a time: a second makes the first in-band
                    // data (af_unix since 6.9, as TCP).
                    if self.flows.iter().any(|f| f.oob[end]) {
                        return None;
                    }
                    let len = self.rng.range(1, 40) as usize;
                    let fits = self.same(end) && self.fits(end, len, 2);
                    let flags = write_flags(self.rng, fits) & !libc::MSG_MORE;
                    if blocking && flags & libc::MSG_DONTWAIT == 0 && !self.shared.send_shut(end) && !fits {
                        return None;
                    }
                    Op::SendOob { end, copy, len, flags }
                }
                1 => Op::RecvOob { end, copy, len: self.rng.range(1, 2) as usize, peek: self.rng.pct(30) },
                _ => Op::AtMark { end, copy },
            },
            109..112 => {
                // Not after a hand-back while the sequence's epoll instance has registrations:
                // a divergence left open (seed 131, step 119: the registration of a connection
                // handed back, then two children, one exiting with its copies open, is not
                // reported by the parent's epoll_wait; see COVERAGE.md, known gaps).
                if !self.rng.pct(15) || (self.flows[0].handed_back && !self.registered.is_empty()) {
                    return None;
                }
                Op::Fork
            }
            _ => {
                // A last close with unread bytes resets the peer: only while both pairs hold
                // the same bytes for this end.
                if self.copies[end] == 1
                    && (!self.same(1 - end)
                        || self.rng.pct(70)
                        || self.fds_in_flight()
                        || self.shared.orphaned
                        || self.resets_after_hand_back(end))
                {
                    return None;
                }
                if self.leaves_a_registered_file(end, copy) {
                    return None;
                }
                Op::Close { end, copy }
            }
        })
    }

    fn op(&mut self) -> Option<Op> {
        (0..1000).find_map(|_| self.try_op())
    }

    /// Closing `end`'s `copy` would leave a registration in the epoll instance whose fd is
    /// closed while another copy keeps the file open (or one that was deleted: see below). Not
    /// generated, two divergences in `epoll.rs` (left to its owners):
    /// * the kernel keeps reporting a registration whose fd closed while a dup keeps the file
    ///   open, the hook loses it (issue 13's "events of a registered fd whose dup lives on";
    ///   seed 10 with this check off, step 70);
    /// * `EPOLL_CTL_DEL` of a swapped fd only parks it in the hook, whose kernel registration of
    ///   the real socket stays; when that fd is closed while a dup keeps the file open, the hook
    ///   forgets the parked entry at its next scan but the kernel registration lives on under
    ///   the fd number: once the number names the same file again (a later dup), the kernel
    ///   answers for it: `EPOLL_CTL_DEL` of it succeeds (plain: ENOENT), an `EPOLL_CTL_ADD`
    ///   would fail with EEXIST (seed 4943 with this check off, step 125).
    fn leaves_a_registered_file(&self, end: usize, copy: usize) -> bool {
        let fd = self.plain_fds[end][copy];
        self.copies[end] > 1 && self.registered.contains(&(end, fd))
    }
}

// ---------------------------------------------------------------------------------------------
// Running a sequence.

/// One step of a sequence, for the report.
struct Step {
    op: Op,
    raw: [String; 2],
    /// The operation ran in a forked child.
    in_child: bool,
}

/// Sequences run one at a time (they take fd numbers for dup2 from a shared range).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn replay_hint(seed: u64) -> String {
    let oob = if oob_enabled() { "TSSX_DIFF_OOB=1 " } else { "" };
    format!("{oob}TSSX_DIFF_SEED={seed} cargo test -p tssx-hook --test differential -- --nocapture")
}

/// The sequence running now, and since when (ms since the epoch), for the watchdog.
static RUNNING: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A sequence must never block: if one runs for a minute, the process stops with its seed
/// (rather than a CI job hanging until its own timeout).
fn start_watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            // Relaxed: a hint read once a second.
            let (seed, since) = (RUNNING[0].load(Relaxed), RUNNING[1].load(Relaxed));
            if since != 0 && now_ms().saturating_sub(since) > 60_000 {
                eprintln!("differential: seed {seed} BLOCKED for a minute\n  replay: {}", replay_hint(seed));
                std::process::abort();
            }
        });
    });
}

/// Runs sequence `seed`; `Err` describes the first divergence. Returns the number of steps.
fn run_seed(seed: u64, verbose: bool) -> Result<usize, String> {
    run(seed, None, verbose, &replay_hint(seed))
}

/// Runs the operations of `script` (or, without one, those the generator draws from `seed`),
/// then drains both ends.
fn run(seed: u64, script: Option<&[Op]>, verbose: bool, replay: &str) -> Result<usize, String> {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    start_watchdog();
    // Relaxed: read by the watchdog only.
    RUNNING[0].store(seed, Relaxed);
    RUNNING[1].store(now_ms(), Relaxed);
    block_sigpipe();
    let mut rng = Rng(splitmix(seed));
    let plain_fds = support::socketpair(0);
    let swapped_fds = support::socketpair(0);
    support::install_swapped(swapped_fds, RING);
    let mut sides = [
        Side {
            api: &Plain,
            name: "plain",
            fds: [vec![plain_fds[0]], vec![plain_fds[1]]],
            flow: Flow::default(),
            spare: 600,
            ep: epoll_instance(&Plain),
            child: None,
        },
        Side {
            api: &Hooked,
            name: "swapped",
            fds: [vec![swapped_fds[0]], vec![swapped_fds[1]]],
            flow: Flow::default(),
            spare: 800,
            ep: epoll_instance(&Hooked),
            child: None,
        },
    ];
    let mut shared = Shared::default();
    let mut registered: Vec<(usize, c_int)> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let n_ops = script.map_or_else(|| rng.range(10, 150) as usize, <[Op]>::len);
    let mut result = Ok(0);
    for i in 0..n_ops + 3 {
        let in_child = sides[0].child.is_some();
        let op = if let Some(op) = script.and_then(|s| s.get(i)) {
            *op
        } else if i == n_ops {
            // A child still running exits first.
            if !in_child {
                continue;
            }
            Op::Exit { close: true }
        } else if i < n_ops {
            let mut g = Gen {
                rng: &mut rng,
                shared,
                flows: [sides[0].flow, sides[1].flow],
                copies: [sides[0].fds[0].len(), sides[0].fds[1].len()],
                plain_fds: &sides[0].fds,
                registered: &registered,
                in_child,
            };
            match g.op() {
                Some(op) => op,
                None => break,
            }
        } else {
            // At the end, whatever is left must come out the same.
            let end = i - n_ops - 1;
            if sides[0].fds[end].is_empty() {
                continue;
            }
            Op::Drain { end, copy: 0 }
        };
        if verbose {
            eprintln!("step {i}: {op:?}{}", if in_child { " (in the child)" } else { "" });
        }
        let flows = [sides[0].flow, sides[1].flow];
        let salt = rng.next();
        let outs = [0, 1].map(|s| {
            let side = &mut sides[s];
            set_errno(0);
            // (SIGPIPE is blocked in this thread: one the call raised is pending until taken;
            // a child takes its own.)
            let mut out = match op {
                Op::Fork => side.fork(seed),
                _ if side.child.is_some() => side.call_child(&op, salt),
                _ => side.exec(&op, seed, salt),
            };
            out.sigpipe |= take_sigpipe();
            out
        });
        let k = keys(&op, [&outs[0], &outs[1]], flows, salt);
        let raw = [outs[0].raw(), outs[1].raw()];
        if verbose {
            eprintln!("  plain:   {}\n  swapped: {}\n  fds: {:?} {:?}", raw[0], raw[1], sides[0].fds, sides[1].fds);
        }
        steps.push(Step { op, raw, in_child });
        let wrong_bytes = outs.iter().any(|o| o.bad_byte.is_some());
        if k[0] != k[1] || wrong_bytes {
            let mut report = format!("differential seed {seed} diverges at step {i}\n  replay: {replay}\n");
            for (j, s) in steps.iter().enumerate() {
                let child = if s.in_child { " (in the child)" } else { "" };
                let _ = writeln!(report, "  step {j}: {:?}{child}\n      plain:   {}\n      swapped: {}", s.op, s.raw[0], s.raw[1]);
            }
            let _ = writeln!(report, "  compared at step {i}:\n      plain:   {}\n      swapped: {}", k[0], k[1]);
            result = Err(report);
            break;
        }
        // What both pairs now share (the results were equal).
        let plain = &outs[0];
        match op {
            Op::Shutdown { end, how, .. } if plain.rc == 0 => {
                if how == libc::SHUT_RD || how == libc::SHUT_RDWR {
                    shared.shut_rd[end] = true;
                }
                if how == libc::SHUT_WR || how == libc::SHUT_RDWR {
                    shared.shut_wr[end] = true;
                }
            }
            Op::Nonblock { end, on, .. } if plain.rc == 0 => shared.nonblock[end] = on,
            Op::Exit { close: false } => shared.orphaned = true,
            Op::EpollCtl { end, copy, op, .. } if plain.rc == 0 => {
                let fd = sides[0].fds[end][copy];
                // (Deleted ones stay: see `Gen::leaves_a_registered_file`.)
                if op == libc::EPOLL_CTL_ADD {
                    registered.push((end, fd));
                }
            }
            _ => {}
        }
        // A registration goes with its file (the generator never closes a registered fd of a
        // file that stays open).
        registered.retain(|&(end, fd)| sides[0].fds[end].contains(&fd));
        for end in 0..2 {
            if !shared.closed[end] && sides[0].fds[end].is_empty() && flows[0].queued(1 - end) > 0 {
                shared.reset[1 - end] = true;
            }
            shared.closed[end] = sides[0].fds[end].is_empty();
            assert_eq!(sides[0].fds[end].len(), sides[1].fds[end].len(), "seed {seed}: copies differ after equal results");
        }
        result = Ok(i + 1);
    }
    for s in &mut sides {
        s.close_all();
    }
    RUNNING[1].store(0, Relaxed);
    result
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn plain_and_swapped_pairs_agree_on_random_sequences() {
    ignore_sigpipe();
    if let Some(seed) = env_u64("TSSX_DIFF_SEED") {
        match run_seed(seed, true) {
            Ok(n) => eprintln!("differential: seed {seed}: {n} steps agree"),
            Err(report) => panic!("{report}"),
        }
        return;
    }
    let count = env_u64("TSSX_DIFF_SEQUENCES").unwrap_or(DEFAULT_SEQUENCES);
    let start = env_u64("TSSX_DIFF_START").unwrap_or(1);
    let t = Instant::now();
    let mut steps = 0;
    let progress = std::env::var_os("TSSX_DIFF_PROGRESS").is_some();
    for seed in start..start + count {
        if progress {
            eprintln!("differential: seed {seed}");
        }
        match run_seed(seed, false) {
            Ok(n) => steps += n,
            Err(report) => panic!("{report}"),
        }
    }
    eprintln!("differential: {count} sequences from seed {start}, {steps} steps, in {:.1} s", t.elapsed().as_secs_f64());
}

/// The seeds that found the divergences fixed in the hook (with the generator of commit
/// 8876675; the generator has grown since, so they are now just more sequences: the scripts
/// below pin each fix down independently of the generator).
const REGRESSION_SEEDS: [u64; 7] = [1, 3, 20, 95, 3017, 7609, 26526];

/// Seeds of the generator with fork, SCM_RIGHTS, splice and MSG_OOB that found divergences
/// fixed in the hook and not pinned by a script (seed 506: this end's SHUT_RD carried over to
/// the socket after a hand-back was taken for the peer's death, POLLHUP), or in the model
/// (seeds 83242 and 90895: `FIONREAD` counts out-of-band bytes not taken, see
/// `Flow::oob_counted`; seed 86208: a mark stops reads after its byte was taken, see
/// `Flow::irregular`; seed 84431: a spliced skb charges the writer whole until read, see
/// `EXACT_SINCE_EMPTY`).
const REGRESSION_SEEDS_2: [u64; 5] = [506, 83242, 90895, 86208, 84431];

#[test]
fn seeds_of_the_second_generator_that_found_divergences_agree() {
    ignore_sigpipe();
    for seed in REGRESSION_SEEDS_2 {
        if let Err(report) = with_oob(|| run_seed(seed, false)) {
            panic!("{report}");
        }
    }
}

#[test]
fn seeds_that_found_divergences_agree() {
    ignore_sigpipe();
    for seed in REGRESSION_SEEDS {
        if let Err(report) = run_seed(seed, false) {
            panic!("{report}");
        }
    }
}

fn script(name: &str, ops: &[Op]) {
    ignore_sigpipe();
    let test = std::thread::current().name().unwrap_or("script").to_owned();
    let verbose = std::env::var_os("TSSX_DIFF_VERBOSE").is_some();
    if let Err(report) = run(7, Some(ops), verbose, &format!("cargo test -p tssx-hook --test differential -- --exact {test}")) {
        panic!("script {name}: {report}");
    }
}

fn write(end: usize, len: usize) -> Op {
    Op::Write { end, copy: 0, api: WrApi::Send, len, parts: 1, flags: libc::MSG_DONTWAIT, bad: Bad::None }
}

fn recv(end: usize, api: RdApi, len: usize, parts: usize, flags: c_int) -> Op {
    Op::Read { end, copy: 0, api, len, parts, flags, bad: Bad::None }
}

const ALL_EVENTS: i16 =
    libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP | libc::POLLPRI | libc::POLLRDNORM | libc::POLLWRNORM | libc::POLLWRBAND;

/// Readiness through each interface (POLLWRBAND only where asked: it has its own script).
fn polls_of(events: i16) -> Vec<Op> {
    [PollApi::Poll, PollApi::Ppoll, PollApi::Select, PollApi::Epoll].map(|api| Op::Poll { api, events }).to_vec()
}

fn polls() -> Vec<Op> {
    polls_of(ALL_EVENTS & !libc::POLLWRBAND)
}

#[test]
fn script_pollwrband() {
    script("POLLWRBAND with POLLOUT", &polls_of(ALL_EVENTS));
}

/// A splice into a socket is one skb of the kernel's (the pipe's pages, up to half of
/// `sk_sndbuf`), charged to the writer until its last byte is read: with 60,000 bytes spliced
/// and all but 1,000 read, the kernel reports no `POLLOUT` (truesize above a quarter of the
/// send buffer), the ring does (it has room). Not a divergence of the hook's: the comparison
/// leaves `POLLOUT` out while a spliced skb is partly unread (found by seeds 6275 and 13673,
/// where both ends had shut their writes by then).
#[test]
fn script_pollout_while_a_spliced_skb_is_partly_read() {
    let splice = Op::Splice { end: 0, copy: 0, into: true, len: 60_000, avail: 60_000, flags: 0, pipe_nb: false };
    // (Into a socket, only its O_NONBLOCK keeps the splice from waiting for room.)
    let mut ops =
        vec![Op::Nonblock { end: 0, copy: 0, on: true, ioctl: false }, splice, recv(1, RdApi::Recv, 59_000, 1, libc::MSG_DONTWAIT)];
    ops.extend(polls());
    ops.push(recv(1, RdApi::Recv, 2_000, 1, libc::MSG_DONTWAIT));
    ops.extend(polls());
    script("POLLOUT while a spliced skb is partly read", &ops);
}

#[test]
fn script_outq_after_the_peer_left() {
    script(
        "SIOCOUTQ after the peer closed with bytes unread",
        &[write(0, 100), Op::Outq { end: 0, copy: 0 }, Op::Close { end: 1, copy: 0 }, Op::Outq { end: 0, copy: 0 }],
    );
}

#[test]
fn script_dup2_over_a_last_fd_resets_the_peer() {
    let mut ops = vec![write(0, 10), Op::Dup2Over { end: 0, copy: 0, onto: 1, onto_copy: 0 }];
    ops.extend(polls());
    ops.push(recv(0, RdApi::Recv, 10, 1, libc::MSG_DONTWAIT));
    ops.extend(polls());
    script("dup2 over the last fd of an end with bytes unread", &ops);
}

#[test]
fn script_recvmsg_flags_keep_cmsg_cloexec() {
    script(
        "recvmsg's msg_flags",
        &[
            write(0, 5),
            recv(1, RdApi::RecvMsg, 5, 2, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT),
            recv(1, RdApi::RecvMmsg, 5, 2, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT),
        ],
    );
}

#[test]
fn script_zero_byte_calls() {
    let zero = |api| recv(1, api, 0, 2, 0);
    let mut ops = vec![Op::Nonblock { end: 1, copy: 0, on: true, ioctl: false }];
    // Nothing queued: read/readv return 0, the others EAGAIN.
    ops.extend([RdApi::Read, RdApi::Readv, RdApi::Recv, RdApi::RecvFrom, RdApi::RecvMsg, RdApi::RecvMmsg, RdApi::ReadChk].map(zero));
    ops.push(write(0, 3));
    ops.extend([RdApi::Read, RdApi::Readv, RdApi::Recv, RdApi::RecvFrom, RdApi::RecvMsg, RdApi::RecvMmsg].map(zero));
    ops.push(Op::Shutdown { end: 1, copy: 0, how: libc::SHUT_WR });
    // writev of nothing is 0 even after shutdown; write and send of nothing are EPIPE.
    for api in [WrApi::Writev, WrApi::Write, WrApi::Send, WrApi::SendMsg, WrApi::SendMmsg] {
        ops.push(Op::Write { end: 1, copy: 0, api, len: 0, parts: 2, flags: libc::MSG_NOSIGNAL, bad: Bad::None });
    }
    script("calls of zero bytes", &ops);
}

#[test]
fn script_waitall_and_peek_take_a_pending_reset() {
    // End 0 closes with 5 bytes unread: end 1 has a reset pending behind its 10 bytes.
    let reset = [write(0, 10), write(1, 5), Op::Close { end: 0, copy: 0 }];
    let mut ops = reset.to_vec();
    ops.extend(polls());
    ops.push(recv(1, RdApi::Recv, 100, 1, libc::MSG_WAITALL));
    ops.extend(polls());
    ops.push(recv(1, RdApi::Recv, 100, 1, 0));
    script("MSG_WAITALL reading up to a pending reset", &ops);
    let mut ops = reset.to_vec();
    ops.push(recv(1, RdApi::Recv, 10, 1, libc::MSG_DONTWAIT));
    ops.push(recv(1, RdApi::Recv, 10, 1, libc::MSG_PEEK | libc::MSG_DONTWAIT));
    ops.extend(polls());
    script("a peek at a pending reset", &ops);
}

#[test]
fn script_recvmmsg_and_a_pending_reset() {
    let reset = [write(0, 12), write(1, 4), Op::Close { end: 0, copy: 0 }];
    for flags in [libc::MSG_DONTWAIT, libc::MSG_DONTWAIT | libc::MSG_ERRQUEUE, libc::MSG_WAITFORONE] {
        let mut ops = reset.to_vec();
        ops.push(recv(1, RdApi::RecvMmsg, 100, 4, flags));
        ops.extend(polls());
        ops.push(recv(1, RdApi::RecvMmsg, 100, 4, flags));
        ops.extend(polls());
        script(&format!("recvmmsg (flags {flags:#x}) up to a pending reset"), &ops);
    }
}

#[test]
fn script_sendmsg_of_no_bytes_with_fds_after_the_peer_shut_down() {
    // The kernel checks the control messages, then the shutdown (EPIPE, SIGPIPE) before it
    // finds nothing to send; the real socket under the rings is not shut down. Seed 3 of the
    // generator with fd passing.
    for how in [libc::SHUT_RD, libc::SHUT_RDWR] {
        let send = |flags| Op::SendFds { end: 0, copy: 0, len: 0, n: 1, what: [Pass::Pipe, Pass::Pipe], flags };
        script(
            "sendmsg of no bytes with SCM_RIGHTS after the peer's shutdown",
            &[Op::Shutdown { end: 1, copy: 0, how }, send(0), send(libc::MSG_NOSIGNAL), write(0, 0)],
        );
    }
    script(
        "sendmsg of no bytes with SCM_RIGHTS after this end's shutdown",
        &[
            Op::Shutdown { end: 0, copy: 0, how: libc::SHUT_WR },
            Op::SendFds { end: 0, copy: 0, len: 0, n: 2, what: [Pass::Own, Pass::Peer], flags: 0 },
        ],
    );
}

#[test]
fn script_send_oob_after_the_peer_shut_its_reads() {
    // `send(MSG_OOB)` hands the connection back and goes to the real socket at once; the
    // peer's SHUT_RD, recorded in the segment while on the rings, must shut it there too.
    let mut ops =
        vec![write(1, 10), Op::Shutdown { end: 1, copy: 0, how: libc::SHUT_RD }, Op::SendOob { end: 0, copy: 0, len: 2, flags: 0 }];
    ops.extend(polls_of(ALL_EVENTS));
    ops.extend([
        Op::SendOob { end: 0, copy: 0, len: 3, flags: libc::MSG_NOSIGNAL },
        write(0, 4),
        recv(0, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT),
        write(1, 5),
        Op::AtMark { end: 0, copy: 0 },
        recv(0, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT),
    ]);
    ops.extend(polls_of(ALL_EVENTS));
    script("send(MSG_OOB) after the peer's shutdown(SHUT_RD)", &ops);
}

#[test]
fn script_a_child_closing_its_copies_keeps_the_parents_epoll_registration() {
    // A registration belongs to the open file: a forked child that closes its copies (the
    // registered fd first, or last) before it exits leaves it to its parent, which shares the
    // instance. Seed 22 of the generator with fork.
    let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP) as u32;
    for registered in [0, 1] {
        let mut ops = vec![
            Op::Dup { end: 1, copy: 0, how: DupHow::Dup },
            Op::EpollCtl { end: 1, copy: registered, op: libc::EPOLL_CTL_ADD, events, tag: 2 | 1 },
            Op::Fork,
            Op::Shutdown { end: 1, copy: 0, how: libc::SHUT_RD },
            Op::Exit { close: true },
            Op::EpollWait { pwait: false },
            write(0, 5),
            Op::EpollWait { pwait: false },
            Op::EpollCtl { end: 1, copy: registered, op: libc::EPOLL_CTL_DEL, events, tag: 2 | 1 },
            Op::EpollWait { pwait: false },
        ];
        ops.extend(polls());
        script(&format!("a child closes its copies (copy {registered} registered)"), &ops);
    }
}

#[test]
fn script_a_read_across_the_hand_back_takes_the_bytes_after_it() {
    // `send(MSG_OOB)` hands end 0's direction back: the bytes before it are on the ring, the
    // rest on the socket. One read takes both parts up to the out-of-band mark, as the
    // kernel's (seed 23 of the generator with MSG_OOB); MSG_WAITALL goes on past the ring.
    for (flags, len, follow) in [
        (0, 5150, false),
        (libc::MSG_DONTWAIT, 20, false),
        (libc::MSG_WAITALL, 20, false),
        (libc::MSG_PEEK, 100, false),
        (libc::MSG_PEEK, 100, true),
        (0, 5150, true),
    ] {
        let parts = if follow { 3 } else { 1 };
        let mut ops = vec![write(0, 4), Op::SendOob { end: 0, copy: 0, len: 31, flags: 0 }, write(0, 837)];
        if follow {
            // End 1 follows the hand-back (its write) with the ring's bytes still unread, then
            // peeks or reads into several buffers (seed 161).
            ops = vec![write(0, 600), Op::SendOob { end: 0, copy: 0, len: 31, flags: 0 }, write(1, 10), write(0, 837)];
        }
        if len == 5150 && follow {
            // The out-of-band byte right at the hand-back: the read stops at its mark (seed
            // 192).
            ops = vec![write(0, 12), Op::SendOob { end: 0, copy: 0, len: 1, flags: 0 }, write(0, 5), write(0, 15)];
        }
        ops.push(recv(1, if parts > 1 { RdApi::RecvMsg } else { RdApi::Recv }, len, parts, flags));
        ops.push(Op::AtMark { end: 1, copy: 0 });
        ops.push(Op::RecvOob { end: 1, copy: 0, len: 1, peek: true });
        ops.push(recv(1, RdApi::Recv, 5150, 1, libc::MSG_DONTWAIT));
        ops.push(Op::AtMark { end: 1, copy: 0 });
        ops.push(Op::RecvOob { end: 1, copy: 0, len: 1, peek: false });
        ops.push(recv(1, RdApi::Recv, 5150, 1, libc::MSG_DONTWAIT));
        ops.extend(polls_of(ALL_EVENTS));
        script(&format!("a read across the hand-back (flags {flags:#x})"), &ops);
    }
}

#[test]
fn script_the_last_doorbell_of_a_hand_back_is_no_data() {
    // End 1 shut its reads on the rings; end 0's send(MSG_OOB) hands back (its last doorbell
    // goes on the socket) and fails with EPIPE; end 1's reads find EOF, never that doorbell
    // (seed 27 of the generator with MSG_OOB).
    let mut ops = vec![
        Op::Dup { end: 1, copy: 0, how: DupHow::Dup2 },
        write(0, 391),
        Op::Drain { end: 1, copy: 1 },
        Op::Close { end: 1, copy: 0 },
        Op::Shutdown { end: 1, copy: 0, how: libc::SHUT_RD },
        Op::Nonblock { end: 1, copy: 0, on: true, ioctl: true },
        Op::Dup { end: 0, copy: 0, how: DupHow::Dup },
        write(1, 15),
        Op::SendOob { end: 0, copy: 1, len: 14, flags: libc::MSG_DONTWAIT },
        write(1, 197),
        Op::Drain { end: 1, copy: 0 },
    ];
    ops.extend(polls_of(ALL_EVENTS));
    ops.push(Op::Drain { end: 0, copy: 0 });
    script("the last doorbell of a hand-back", &ops);
}

#[test]
fn script_a_reset_after_a_hand_back() {
    // End 0 handed back (MSG_OOB): its bytes since are on the socket. End 1 closes (here by a
    // dup2 over its last fd) without reading them: the kernel resets the socket, and end 0's
    // read that finds its ring empty reports it (seed 34 of the generator with MSG_OOB).
    for close in [Op::Dup2Over { end: 0, copy: 0, onto: 1, onto_copy: 0 }, Op::Close { end: 1, copy: 0 }] {
        let mut ops = vec![write(1, 415), Op::SendOob { end: 0, copy: 0, len: 38, flags: 0 }, recv(0, RdApi::Read, 17, 1, 0), close];
        ops.extend(polls_of(ALL_EVENTS));
        ops.push(recv(0, RdApi::Recv, 587, 1, libc::MSG_DONTWAIT));
        ops.extend(polls_of(ALL_EVENTS));
        ops.push(recv(0, RdApi::RecvMsg, 288, 3, 0));
        ops.extend(polls_of(ALL_EVENTS));
        ops.push(recv(0, RdApi::RecvMsg, 288, 3, 0));
        script(&format!("a reset after a hand-back ({close:?})"), &ops);
    }
}

#[test]
fn script_shutdowns_of_both_ends_are_no_close() {
    // Each end shuts one direction (both SHUT_RD, or both SHUT_WR): the kernel shuts each
    // socket both ways, so a read there finds EOF and `poll` reports POLLHUP, with nobody
    // gone. A look at the socket that took that for the peer's close marked the peer reset
    // (it had bytes unread), and end 0's read reported ECONNRESET where the kernel reports EOF
    // (seed 4262 with `TSSX_DIFF_OOB=1`, after an out-of-band byte; reduced).
    for how in [libc::SHUT_RD, libc::SHUT_WR] {
        for oob in [true, false] {
            let mut ops = vec![write(0, 137)];
            if oob {
                ops.push(Op::SendOob { end: 0, copy: 0, len: 28, flags: libc::MSG_DONTWAIT });
            }
            ops.push(Op::Shutdown { end: 0, copy: 0, how });
            ops.push(Op::Shutdown { end: 1, copy: 0, how });
            ops.push(Op::Poll { api: PollApi::Epoll, events: 5 });
            ops.extend(polls_of(ALL_EVENTS));
            ops.push(Op::Drain { end: 0, copy: 0 });
            script(&format!("both ends shut down ({how}, out-of-band byte: {oob})"), &ops);
        }
    }
}

#[test]
fn script_a_shutdown_after_the_peer_handed_back() {
    // End 1 handed back (MSG_OOB) and writes to the socket; end 0, still on the rings, shuts
    // down: end 1's sends fail with EPIPE as the kernel's (seed 47 of the generator).
    for how in [libc::SHUT_RD, libc::SHUT_RDWR, libc::SHUT_WR] {
        let mut ops = vec![
            write(0, 494),
            Op::SendOob { end: 1, copy: 0, len: 18, flags: 0 },
            Op::Poll { api: PollApi::Epoll, events: 8197 },
            write(1, 1898),
            Op::Shutdown { end: 0, copy: 0, how },
            Op::Write {
                end: 1,
                copy: 0,
                api: WrApi::SendMmsg,
                len: 15,
                parts: 1,
                flags: libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                bad: Bad::None,
            },
            write(0, 3),
        ];
        ops.extend(polls_of(ALL_EVENTS));
        ops.push(Op::Drain { end: 0, copy: 0 });
        ops.push(Op::Drain { end: 1, copy: 0 });
        ops.extend(polls_of(ALL_EVENTS));
        script(&format!("shutdown({how}) after the peer handed back"), &ops);
    }
}

#[test]
fn script_siocoutq_after_a_hand_back_counts_the_socket() {
    // After this end's hand-back (MSG_OOB) its writes are on the socket: SIOCOUTQ counts them
    // (seed 52 of the generator).
    script(
        "SIOCOUTQ after a hand-back",
        &[
            Op::SendOob { end: 0, copy: 0, len: 12, flags: libc::MSG_DONTWAIT },
            Op::Outq { end: 0, copy: 0 },
            write(0, 3446),
            Op::Outq { end: 0, copy: 0 },
            Op::Drain { end: 1, copy: 0 },
            Op::Outq { end: 0, copy: 0 },
        ],
    );
}

#[test]
fn script_fionread_after_the_peer_handed_back_counts_the_socket() {
    // End 0 handed back (MSG_OOB) and writes to the socket; end 1 has not followed: FIONREAD
    // counts the ring and the socket (seed 56 of the generator).
    script(
        "FIONREAD after the peer handed back",
        &[
            write(0, 300),
            Op::SendOob { end: 0, copy: 0, len: 36, flags: libc::MSG_DONTWAIT },
            write(0, 3118),
            Op::Fionread { end: 1, copy: 0 },
            recv(1, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT),
            Op::Fionread { end: 1, copy: 0 },
            Op::Drain { end: 1, copy: 0 },
            Op::Fionread { end: 1, copy: 0 },
        ],
    );
}

#[test]
fn script_a_read_ends_after_a_message_with_fds_before_a_hand_back() {
    // A message with fds on the ring, then end 0's hand-back (MSG_OOB): a read ends after the
    // message's bytes, as the kernel's (seed 91 of the generator).
    for how in [RdApi::RecvMsg, RdApi::Read] {
        script(
            "a read over a message with fds, then the hand-back",
            &[
                Op::SendFds { end: 0, copy: 0, len: 184, n: 1, what: [Pass::Pipe, Pass::Pipe], flags: 0 },
                Op::SendOob { end: 0, copy: 0, len: 16, flags: 0 },
                write(0, 13),
                recv(1, how, 3665, 3, 0),
                recv(1, how, 3665, 3, 0),
                Op::Drain { end: 1, copy: 0 },
            ],
        );
    }
}

#[test]
fn script_an_epoll_registration_after_a_hand_back_and_a_child() {
    // Seed 131: a registration of a connection that was handed back (MSG_OOB), then a forked
    // child that closes its copies and exits.
    for (dup, close) in [(false, true), (true, true), (false, false), (true, false)] {
        let mut ops = vec![
            Op::EpollCtl { end: 0, copy: 0, op: libc::EPOLL_CTL_ADD, events: 7, tag: 2 },
            Op::Shutdown { end: 0, copy: 0, how: libc::SHUT_WR },
            Op::SendOob { end: 0, copy: 0, len: 34, flags: libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL },
            Op::EpollWait { pwait: false },
            Op::Shutdown { end: 1, copy: 0, how: libc::SHUT_WR },
            Op::EpollWait { pwait: false },
        ];
        if dup {
            ops.push(Op::Dup { end: 1, copy: 0, how: DupHow::DupFd });
        }
        ops.extend([Op::Fork, Op::Exit { close: false }, Op::EpollWait { pwait: false }]);
        ops.extend([Op::Fork, Op::Shutdown { end: 0, copy: 0, how: libc::SHUT_RD }, Op::Exit { close }, Op::EpollWait { pwait: false }]);
        ops.push(Op::Dup { end: 0, copy: 0, how: DupHow::Dup2 });
        ops.push(Op::EpollWait { pwait: false });
        script(&format!("epoll after a hand-back and a child (dup {dup}, close {close})"), &ops);
    }
}

#[test]
fn script_a_reset_taken_by_a_child_is_not_reported_again() {
    // End 1 closes with end 0's bytes unread; a forked child's read takes the reset: the
    // parent's next read finds EOF, as the kernel clears the socket's error once (seed 150).
    for close in [true, false] {
        let mut ops = vec![write(0, 50), write(1, 20), Op::Close { end: 1, copy: 0 }, Op::Fork];
        ops.push(Op::Drain { end: 0, copy: 0 });
        ops.push(Op::Exit { close });
        ops.extend(polls_of(ALL_EVENTS));
        ops.push(Op::Drain { end: 0, copy: 0 });
        script(&format!("a reset taken by a child (close {close})"), &ops);
    }
}

#[test]
fn script_o_nonblock_set_by_a_child_holds_in_the_parent() {
    // O_NONBLOCK belongs to the open file: a forked child's fcntl changes it for its parent
    // too (seed 182: the parent's read then blocked forever on the rings).
    for ioctl in [false, true] {
        script(
            "O_NONBLOCK from a child",
            &[
                Op::Fork,
                Op::Nonblock { end: 0, copy: 0, on: true, ioctl },
                Op::Exit { close: true },
                recv(0, RdApi::RecvMsg, 755, 2, 0),
                Op::Fork,
                Op::Nonblock { end: 0, copy: 0, on: false, ioctl },
                Op::Exit { close: false },
                write(1, 5),
                recv(0, RdApi::Recv, 755, 1, 0),
            ],
        );
    }
}

#[test]
fn script_an_out_of_band_byte_read_past_is_not_data() {
    // The peer handed back and sent an out-of-band byte; a read went past it (it is dropped),
    // in a child; the parent, still on the rings, reports no data (Linux keeps counting the
    // byte in FIONREAD; seed 358).
    let mut ops = vec![
        Op::Fork,
        write(1, 8),
        Op::SendOob { end: 1, copy: 0, len: 17, flags: libc::MSG_DONTWAIT },
        write(1, 30),
        recv(0, RdApi::Recv, 1000, 1, libc::MSG_DONTWAIT),
        recv(0, RdApi::Recv, 1000, 1, libc::MSG_DONTWAIT),
        Op::Exit { close: false },
    ];
    ops.extend(polls_of(ALL_EVENTS));
    ops.push(Op::Fionread { end: 0, copy: 0 });
    script("an out-of-band byte read past", &ops);
}

#[test]
fn script_msg_cmsg_cloexec_on_the_ring_part_of_a_hand_back() {
    // A message with fds on the ring, then this end's hand-back (MSG_OOB): the fds taken with
    // MSG_CMSG_CLOEXEC are close-on-exec (seed 1142 with TSSX_DIFF_OOB=1).
    script(
        "MSG_CMSG_CLOEXEC after a hand-back",
        &[
            Op::SendFds { end: 1, copy: 0, len: 276, n: 1, what: [Pass::Own, Pass::Pipe], flags: libc::MSG_DONTWAIT },
            write(0, 3395),
            Op::SendOob { end: 0, copy: 0, len: 32, flags: libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL },
            recv(0, RdApi::RecvMsg, 2411, 1, libc::MSG_CMSG_CLOEXEC),
        ],
    );
}

#[test]
fn script_a_shutdown_of_an_end_plain_after_its_hand_back() {
    // End 1 hands back (`send(MSG_OOB)`); end 0 follows and, its peer's ring read, is plain:
    // its `shutdown(SHUT_WR)` goes to the kernel only. End 1, still handing back (end 0's
    // bytes on the ring), must not take the socket's EOF for end 0's close: no POLLHUP, its
    // sends still go (seeds 90232 and 90361 with `TSSX_DIFF_OOB=1`).
    let mut ops = vec![
        write(0, 10),
        Op::SendOob { end: 1, copy: 0, len: 3, flags: 0 },
        recv(0, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT),
        Op::Shutdown { end: 0, copy: 0, how: libc::SHUT_WR },
    ];
    ops.extend(polls_of(ALL_EVENTS));
    ops.extend([write(1, 4), recv(1, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT)]);
    ops.extend(polls_of(ALL_EVENTS));
    ops.extend([recv(1, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT), write(1, 5)]);
    ops.extend(polls_of(ALL_EVENTS));
    script("shutdown(SHUT_WR) of an end plain after the hand-back", &ops);
}

#[test]
fn script_a_close_with_an_out_of_band_byte_unread_after_the_hand_back() {
    // End 1 hands back (`send(MSG_OOB)`); end 0 reads up to the mark, follows and is plain;
    // its last close leaves the out-of-band byte unread: the kernel resets end 1, which still
    // has end 0's bytes on the ring. Its readiness has the socket's POLLHUP and POLLERR, and
    // its reads the ring's bytes, then ECONNRESET, then EOF, however many probes of the
    // socket came before (seed 90303 with `TSSX_DIFF_OOB=1`).
    for dup in [false, true] {
        let mut ops = vec![write(0, 2765)];
        if dup {
            ops.push(Op::Dup { end: 0, copy: 0, how: DupHow::DupFd });
        }
        ops.extend([
            Op::SendOob { end: 1, copy: 0, len: 36, flags: libc::MSG_DONTWAIT },
            recv(0, RdApi::Recv, 378, 1, libc::MSG_WAITALL),
            Op::Close { end: 0, copy: 0 },
        ]);
        if dup {
            ops.push(Op::Close { end: 0, copy: 0 });
        }
        ops.extend(polls_of(ALL_EVENTS));
        ops.extend([recv(1, RdApi::Recv, 1000, 1, libc::MSG_DONTWAIT)]);
        ops.extend(polls_of(ALL_EVENTS));
        ops.extend([Op::Drain { end: 1, copy: 0 }]);
        ops.extend(polls_of(ALL_EVENTS));
        script(&format!("a close with an out-of-band byte unread (dup: {dup})"), &ops);
    }
}

#[test]
fn script_recvmmsg_after_a_reset_by_a_peer_plain_after_the_hand_back() {
    // End 0 hands back; end 1 reads up to the mark, follows and is plain; its last close leaves
    // the out-of-band byte unread: the kernel's recvmmsg on end 0 reports the reset before any
    // message, end 1's bytes on the ring or not (seed 80512 with `TSSX_DIFF_OOB=1`).
    let recvmmsg = |flags| recv(0, RdApi::RecvMmsg, 217, 2, flags);
    let mut ops = vec![
        write(1, 453),
        Op::SendOob { end: 0, copy: 0, len: 6, flags: libc::MSG_DONTWAIT },
        recv(1, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT),
        Op::Close { end: 1, copy: 0 },
        recvmmsg(libc::MSG_DONTWAIT),
        recvmmsg(libc::MSG_DONTWAIT),
    ];
    ops.extend(polls_of(ALL_EVENTS));
    ops.extend([Op::Drain { end: 0, copy: 0 }, recvmmsg(libc::MSG_DONTWAIT)]);
    script("recvmmsg after a reset by a peer plain after the hand-back", &ops);
}

#[test]
fn script_a_peek_across_the_hand_back_stops_at_the_mark() {
    // End 0 writes on the ring, then sends an out-of-band byte alone (it hands back) and more
    // bytes. A peek of end 1 (or a splice, which peeks first) takes the ring's bytes and stops
    // at the mark, as the kernel's: the socket, which knows nothing of the ring's bytes, would
    // skip the out-of-band byte and peek on (seed 84116 with `TSSX_DIFF_OOB=1`).
    let out_of_end_1 = [
        Op::Splice { end: 1, copy: 0, into: false, len: 23046, avail: 32919, flags: 0, pipe_nb: false },
        recv(1, RdApi::Recv, 2000, 1, libc::MSG_PEEK | libc::MSG_DONTWAIT),
    ];
    for op in out_of_end_1 {
        let mut ops = vec![
            write(0, 852),
            Op::SendOob { end: 0, copy: 0, len: 1, flags: 0 },
            write(1, 3120),
            write(0, 2),
            Op::Poll { api: PollApi::Ppoll, events: libc::POLLIN | libc::POLLRDNORM },
            op,
            recv(1, RdApi::Recv, 2000, 1, libc::MSG_DONTWAIT),
            recv(1, RdApi::Recv, 2000, 1, libc::MSG_DONTWAIT),
        ];
        ops.extend(polls_of(ALL_EVENTS));
        script(&format!("a peek across the hand-back ({op:?})"), &ops);
    }
}

#[test]
fn script_a_reset_reported_once_after_a_hand_back() {
    // End 1 hands back; end 0, which has not followed, closes with the out-of-band byte unread:
    // the hook marks the reset in the header and the kernel resets the socket too. A read
    // reports it once, and readiness shows no error after (seed 94043 with `TSSX_DIFF_OOB=1`).
    let closes = [Op::Close { end: 0, copy: 0 }, Op::Dup2Over { end: 1, copy: 0, onto: 0, onto_copy: 0 }];
    for close in closes {
        let mut ops = vec![write(0, 6), Op::SendOob { end: 1, copy: 0, len: 1, flags: 0 }, close, Op::Drain { end: 1, copy: 0 }];
        ops.extend(polls_of(ALL_EVENTS));
        ops.extend([recv(1, RdApi::RecvMmsg, 10, 2, libc::MSG_DONTWAIT), recv(1, RdApi::Recv, 10, 1, libc::MSG_DONTWAIT)]);
        ops.extend(polls_of(ALL_EVENTS));
        script(&format!("a reset reported once after a hand-back ({close:?})"), &ops);
    }
}

#[test]
fn script_bytes_after_the_hand_back_come_before_the_reset() {
    // End 1 hands back; end 0 writes once more (it follows: the bytes go on the socket, after
    // the ring's), reads up to the mark and closes with the out-of-band byte unread: the
    // kernel resets end 1. End 1 reads the ring's bytes, then the socket's, then ECONNRESET,
    // as from a plain socket (seed 94345 with `TSSX_DIFF_OOB=1`).
    let mut ops = vec![
        write(0, 296),
        Op::SendOob { end: 1, copy: 0, len: 39, flags: libc::MSG_NOSIGNAL },
        write(0, 147),
        recv(0, RdApi::RecvMsg, 10061, 4, 0),
        recv(1, RdApi::Recv, 13, 1, libc::MSG_DONTWAIT),
        Op::Close { end: 0, copy: 0 },
        recv(1, RdApi::Read, 261, 1, 0),
        recv(1, RdApi::RecvMsg, 24, 4, libc::MSG_DONTWAIT),
    ];
    ops.extend(polls_of(ALL_EVENTS));
    ops.extend([Op::Drain { end: 1, copy: 0 }]);
    ops.extend(polls_of(ALL_EVENTS));
    script("bytes after the hand-back come before the reset", &ops);
}

#[test]
fn script_a_peek_of_no_bytes_before_an_out_of_band_byte() {
    // Linux's peek of no bytes waits (EAGAIN when non-blocking) when the queue ends with an
    // out-of-band byte, returns 0 otherwise; after the peer's hand-back the ring's bytes come
    // first and the socket's queue ends as the stream does (seeds 87591 and 92886 with
    // `TSSX_DIFF_OOB=1`).
    let peek0 = |api| recv(1, api, 0, 1, libc::MSG_PEEK | libc::MSG_DONTWAIT);
    let ops = vec![
        Op::Write {
            end: 0,
            copy: 0,
            api: WrApi::SendMmsg,
            len: 12,
            parts: 1,
            flags: libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            bad: Bad::None,
        },
        Op::SendOob { end: 0, copy: 0, len: 16, flags: libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL },
        peek0(RdApi::RecvFromChk),
        peek0(RdApi::Recv),
        recv(1, RdApi::Recv, 5, 1, libc::MSG_DONTWAIT),
        peek0(RdApi::Recv),
        write(0, 3),
        peek0(RdApi::Recv),
        recv(1, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT),
        peek0(RdApi::Recv),
        recv(1, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT),
        peek0(RdApi::Recv),
    ];
    script("a peek of no bytes before an out-of-band byte", &ops);
}

#[test]
fn script_a_shutdown_in_a_child_after_its_hand_back_reaches_the_parent() {
    // A forked child hands the connection back (end 1's `send(MSG_OOB)`, end 0 follows and is
    // plain: the segment's state is `Plain`); end 1, still handing back, shuts its writes. The
    // parent, whose ends still read the rings and the header, sees end 1's EOF (POLLRDHUP)
    // (seed 88071 with `TSSX_DIFF_OOB=1`).
    for close in [false, true] {
        let mut ops = vec![
            Op::Fork,
            Op::SendOob { end: 1, copy: 0, len: 3, flags: libc::MSG_DONTWAIT },
            recv(0, RdApi::Recv, 100, 1, libc::MSG_DONTWAIT),
            Op::Shutdown { end: 1, copy: 0, how: libc::SHUT_WR },
            Op::Exit { close },
        ];
        ops.extend(polls_of(ALL_EVENTS));
        ops.extend([Op::Drain { end: 0, copy: 0 }]);
        ops.extend(polls_of(ALL_EVENTS));
        script(&format!("a shutdown in a child after its hand-back (close: {close})"), &ops);
    }
}
