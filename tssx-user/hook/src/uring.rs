//! io_uring set up while connections are swapped: every one is handed back to the kernel before
//! the application can submit anything on the new ring.
//!
//! io_uring reads and writes reach the socket without passing through libc (liburing makes raw
//! system calls, and the kernel does the I/O), so no preload sees them: on a swapped connection
//! they would bypass the rings (bytes written lost in the peer's doorbell drain, bytes read
//! being doorbells). The hook cannot see `io_uring_setup` either; the kernel watcher can. How
//! they meet:
//!
//! 1. Before this process's first claim, the hook takes the real-time signal
//!    [`HANDBACK_SIGNAL`] for its handler ([`may_claim`], through [`crate::signals::own`]). A
//!    process that has a disposition of its own for that signal (a handler, or `SIG_IGN`)
//!    never claims: its connections stay plain.
//! 2. When the agent pairs a claim, it adds the claimant's tgid to the eBPF map
//!    `HANDBACK_ON_IO_URING` (a forked child inherits the entry; exec and exit remove it).
//! 3. At the exit of a successful `io_uring_setup` by such a process, the eBPF program sends
//!    the signal to the calling thread (`bpf_send_signal_thread`). It is pending when the
//!    system call returns, so the handler (`on_signal`) runs before the thread's next
//!    instruction: before the ring's fd reaches the application's code, so before any
//!    submission on it. The thread, not the process: a process-directed signal may be taken by
//!    another thread, and the one that set the ring up would submit meanwhile.
//! 4. The handler marks the process (no claim from now on, [`io_uring_seen`]), then for every
//!    tracked connection: one not on the rings yet is given up (plain for good); one on the
//!    rings stops reading the peer's ring where it is and asks the peer to replay the rest on
//!    the socket (`Conn::ask_replay`, as before an exec into an image without the hook),
//!    then hands its own direction back ([`Conn::hand_back`]). It then waits (at most
//!    [`WAIT_NS`] in all) for the peers to follow: a peer sleeping on the rings is woken by
//!    the hand-back's doorbell, serves the hand-back from its wait loop and sends what is on
//!    its ring onto the socket first; the handler drains the doorbells the peer sent before,
//!    and the connection is plain. What the io_uring then reads from the socket is what a plain
//!    socket would have held.
//! 5. The agent traces the io_uring (`io_uring ... handback_signal=63`) and each connection's
//!    end (`handed back to the socket ... reason=io_uring`).
//!
//! Why a signal to the thread, and not the agent flagging the segments for the peers to do the
//! work: the agent learns of the io_uring from the event ring, later (up to its 100 ms tick, or
//! a wake-up's latency); the application's first io_uring submission can come microseconds
//! after `io_uring_setup` returns. Meanwhile an io_uring SEND writes data to the real socket,
//! where the peer's hook, which has not seen any flag yet, takes socket bytes for doorbells and
//! drains them (lost), and an io_uring RECV reads the peer's doorbell bytes as data, or waits
//! for bytes that sit on the ring. No flag set later can undo a doorbell drain. The signal
//! closes that window: the kernel runs the handler on the very thread, on its way back from
//! `io_uring_setup`, before it can submit. `bpf_send_signal_thread` is allowed in tracepoint
//! programs (kernel 5.5 on); kprobes, fentry and LSM programs (which could fail the call or
//! delay it) do not load on our kernels. The signal is a real-time one, high in the range (few
//! applications use `SIGRTMAX - 1`; `SIGRTMIN + n` is the usual choice); the handler stays
//! installed for the life of the image (uninstalled, a late signal's default action would
//! terminate the process).
//!
//! Async-signal safety: the kernel's signal is handled at the return of `io_uring_setup`,
//! where the thread is in the application (never inside the hook: the hook makes no
//! `io_uring_setup`), and never inside `malloc` (or, if the thread blocked the signal, at the
//! return of the call that unblocks it: `sigprocmask`, `ppoll`, ...). So no lock of this
//! thread's is held, and what the application's thread could not do at that point, the
//! handler does not need to avoid either. What it does is atomics, leases of the connection
//! table, ring copies and system calls (`send`, `recv`, `shutdown`, `close`, `nanosleep`,
//! `clock_gettime`; `/proc` reads only when a ring lock stays held by another thread);
//! `errno` is kept. A signal from a process (`kill`), which can arrive anywhere, is declined
//! and takes the other path ([`crate::signals`]' trampoline): it only reads the application's
//! record (atomics) and calls its handler, or `sigaction` + `raise` for the default action.
//!
//! Limits (see `COVERAGE.md`): a thread that has the signal blocked when it sets up the ring
//! runs the handler only when it unblocks it (its submissions before that bypass the rings; a
//! handler that then runs inside the hook takes over any ring lock that thread held); an
//! application that sets its own disposition for the signal after the hook's first claim
//! through libc (`sigaction`, `signal`, `sigset`, ...) gets it recorded, not installed (the
//! signal is owned: [`crate::signals::own`]), but one that goes around libc
//! (`syscall(SYS_rt_sigaction)`) takes it over (`SIG_DFL`: the io_uring setup then terminates
//! the process); a peer that makes no call within [`WAIT_NS`] replays later (as after an exec
//! into an image without the hook); an image started by exec that adopted swapped
//! connections (the hook in the new image) is not in the map until it claims again.

use std::sync::atomic::{
    AtomicBool, AtomicU8,
    Ordering::{AcqRel, Acquire, Release},
};

use libc::c_int;
use tssx_common::{segment::GiveUp, HANDBACK_SIGNAL};

use crate::{
    conn::{Conn, Phase},
    handback::Source,
    signals::{self, Take},
    spin::now_ns,
    sys, table,
};

/// How long the handler waits, in all, for the peers to follow the hand-back (ns).
pub const WAIT_NS: u64 = 2_000_000_000;

/// `si_code` of a signal the kernel sent itself (`bpf_send_signal*` sends `SEND_SIG_PRIV`,
/// delivered as `SI_KERNEL`); `kill`, `tgkill` and `sigqueue` from a process cannot forge it.
const SI_KERNEL: c_int = 0x80;

/// The handler's state in this process: not looked at yet, being installed by some thread,
/// installed, or not available (the application has a disposition of its own for the signal).
const UNKNOWN: u8 = 0;
const INSTALLING: u8 = 1;
const INSTALLED: u8 = 2;
const UNAVAILABLE: u8 = 3;

/// See [`UNKNOWN`]. Acquire/Release: a thread that sees `INSTALLED` sees the handler installed
/// (the installing thread's `sigaction` happened before its Release store).
static HANDLER: AtomicU8 = AtomicU8::new(UNKNOWN);

/// This process set up an io_uring while holding connections (the signal arrived): it claims
/// nothing from now on. Inherited across fork (the child holds the ring too). Release in the
/// handler, Acquire in [`io_uring_seen`]: a claimant that sees it sees the hand-backs begun.
static SEEN: AtomicBool = AtomicBool::new(false);

/// Whether this process set up an io_uring while it held connections (the hook then claims
/// nothing more).
#[inline]
pub fn io_uring_seen() -> bool {
    SEEN.load(Acquire)
}

/// Before a claim: `Some(true)` if the hand-back handler is installed (installing it the first
/// time), `Some(false)` if this process must not claim (the application has a disposition of
/// its own for [`HANDBACK_SIGNAL`]), `None` to claim later: another thread is installing the
/// handler right now, or the calling thread blocks the signal (an io_uring it set up would get
/// the hand-back only when it unblocks it, too late; PostgreSQL's backends block every signal
/// while they start, then unblock them: their connections claim on a later call, and those of
/// a thread that blocks it for good never do). Never waits. A process that set up an io_uring
/// still claims: the agent answers plain and traces why (and should it not know, the answer is
/// refused: see [`io_uring_seen`]).
pub fn may_claim() -> Option<bool> {
    match installed()? {
        true if blocked_here() => None,
        installed => Some(installed),
    }
}

/// Whether the calling thread blocks [`HANDBACK_SIGNAL`] (one `rt_sigprocmask` that changes
/// nothing, once per claim).
fn blocked_here() -> bool {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a query (no new set) into a live sigset_t; errno kept.
    let rc = sys::with_errno_kept(|| unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set) });
    // SAFETY: a live, initialized set.
    rc != 0 || unsafe { libc::sigismember(&set, HANDBACK_SIGNAL as c_int) } == 1
}

/// Whether the handler is installed (installing it the first time): `None` while another
/// thread installs it.
fn installed() -> Option<bool> {
    match HANDLER.load(Acquire) {
        INSTALLED => return Some(true),
        UNAVAILABLE => return Some(false),
        INSTALLING => return None,
        _ => {}
    }
    // AcqRel: the winner installs; a loser's Acquire sees the winner's result or INSTALLING.
    match HANDLER.compare_exchange(UNKNOWN, INSTALLING, AcqRel, Acquire) {
        Ok(_) => {}
        Err(INSTALLED) => return Some(true),
        Err(UNAVAILABLE) => return Some(false),
        Err(_) => return None,
    }
    let installed = sys::with_errno_kept(install);
    // Release: pairs with the Acquire loads above (the handler is in place).
    HANDLER.store(if installed { INSTALLED } else { UNAVAILABLE }, Release);
    Some(installed)
}

/// Takes [`HANDBACK_SIGNAL`] for [`on_signal`] ([`signals::own`]) if the application left that
/// signal at its default; false if it has a disposition of its own (it is the application's,
/// then). From then on the application's `sigaction` calls for that signal are recorded, not
/// installed (a `SIG_DFL` set later does not turn the io_uring setup into a termination), and
/// a signal that is not the kernel watcher's goes where that record says.
fn install() -> bool {
    signals::own(HANDBACK_SIGNAL as c_int, on_signal, Take::IfDefault)
}

/// The hand-back signal's handler (see [`signals::HookHandler`]): takes only the kernel's own
/// signal (see [`SI_KERNEL`]); any other (`kill`, `sigqueue`, `tgkill`) is declined and goes
/// where the application's record says.
fn on_signal(_sig: c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) -> bool {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t (checked for null anyway).
    if info.is_null() || unsafe { (*info).si_code } != SI_KERNEL {
        return false;
    }
    // A panic must not unwind out of a signal handler (that aborts); nothing here panics, and
    // should it, the connections stay as they are.
    let _ = std::panic::catch_unwind(hand_back_all);
    true
}

/// Hands every connection of this process back to the kernel and gives up every one not on the
/// rings yet (see the module documentation); waits at most [`WAIT_NS`] for the peers. Returns
/// how many connections were left unfinished (their peers did not follow in time).
pub fn hand_back_all() -> usize {
    // Release: pairs with the Acquire of `io_uring_seen` (claims stop).
    SEEN.store(true, Release);
    // Every replay asked for before any hand-back: with both ends of a connection in this
    // process, each end's hand-back then replays what the other had not read.
    table::for_each_tracked(|fd, conn| match conn.phase() {
        Phase::Plain | Phase::Unconnected => {}
        phase if phase < Phase::Ready => {
            conn.give_up(GiveUp::IoUring);
        }
        _ => {
            conn.note_fd(fd);
            conn.ask_replay();
        }
    });
    table::for_each_tracked(|fd, conn| {
        if conn.phase() >= Phase::Ready && conn.phase() != Phase::Plain {
            conn.hand_back(fd);
        }
    });
    let deadline = now_ns() + WAIT_NS;
    let mut nap_us = 20;
    loop {
        let mut left = 0;
        table::for_each_tracked(|_, conn| match progress(conn) {
            Progress::Done => {}
            // The peer handed back on its own at the same moment and replays nothing: its
            // ring's bytes stay readable through the hook (not through the io_uring).
            Progress::NoReplay => conn.drop_replay(),
            Progress::Waiting => left += 1,
        });
        if left == 0 {
            return 0;
        }
        if now_ns() > deadline {
            // The peers that did not follow replay on their next call; until then this
            // process reads their ring through the hook (the io_uring sees those bytes later).
            table::for_each_tracked(|_, conn| {
                if matches!(progress(conn), Progress::Waiting) {
                    conn.drop_replay();
                }
            });
            return left;
        }
        // nanosleep: async-signal-safe.
        std::thread::sleep(std::time::Duration::from_micros(nap_us));
        nap_us = (nap_us * 2).min(2000);
    }
}

/// Where a connection's hand-back stands, for [`hand_back_all`].
enum Progress {
    /// Plain (or never on the rings).
    Done,
    /// The peer handed back without the replay this end asked for.
    NoReplay,
    /// The peer has not followed yet.
    Waiting,
}

fn progress(conn: &Conn) -> Progress {
    match conn.phase() {
        Phase::Plain | Phase::Unconnected => return Progress::Done,
        phase if phase < Phase::Ready => return Progress::Done,
        _ => {}
    }
    if conn.finish_hand_back() {
        return Progress::Done;
    }
    if conn.peer_handed_back() && !matches!(conn.read_source(), Source::Socket) {
        return Progress::NoReplay;
    }
    Progress::Waiting
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use tssx_common::segment::End;
    use tssx_shm::{segment::Segment, sys::Fd};

    use super::*;
    use crate::{
        calls,
        conn::bits,
        test_io::{read, write},
    };

    /// Everything the kernel's socket holds now, read past the hook (as an io_uring would).
    fn socket_bytes(fd: c_int) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: a live buffer; libc's recv, not the hook's.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
    }

    /// The io_uring hand-back of an end that is ready, its writes switched onto its ring, while
    /// the peer's last bytes before its own switch are still unread on the socket (the
    /// conformance scenario `io_uring_set_up_while_swapped_hands_back`, migrating, about one
    /// run in a hundred: the server waited in `poll` for good, and the client's read got
    /// ECONNRESET when the run's timeout killed it). The hand-back's steps for that one end
    /// (`hand_back_all` takes every connection of the process: the peer here plays the other
    /// process). Its `poll` must see those bytes, and once the peer followed (with nothing on
    /// its ring) the end is plain: the socket holds the rest of the stream, the io_uring reads
    /// it there.
    #[test]
    fn a_ready_end_hands_back_with_the_peers_bytes_before_its_switch_unread() {
        crate::phase::set_claiming(false);
        let mut pair = [0; 2];
        let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: a valid out-array.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, pair.as_mut_ptr()) }, 0);
        let [a, b] = pair;
        assert!(table::track(a, End::Client, Phase::Candidate, Some(true)));
        assert!(table::track(b, End::Server, Phase::Candidate, Some(true)));
        let segment = Segment::create(4096).expect("segment");
        for fd in [a, b] {
            // SAFETY: a dup of the segment's own fd, owned by the result.
            let memfd = unsafe { Fd::from_raw(libc::fcntl(segment.fd().unwrap().as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0)) };
            assert!(table::lookup(fd).unwrap().join_with(memfd));
        }
        let (client, server) = (table::lookup(a).unwrap(), table::lookup(b).unwrap());
        // The client is ready first: its write goes to the socket (the server is not ready, so
        // the client cannot switch).
        for _ in 0..100 {
            client.tick(a);
        }
        assert_eq!((client.phase(), server.phase()), (Phase::Ready, Phase::Mapped));
        assert_eq!(write(a, b"ping"), 4);
        assert!(!client.out_switched());
        // Then the server: ready, switched (the client is ready), its message on its ring.
        for _ in 0..100 {
            server.tick(b);
        }
        assert_eq!(server.phase(), Phase::Ready);
        assert!(server.out_switched());
        assert_eq!(write(b, b"early"), 5);
        // The server's io_uring: its part of `hand_back_all`.
        server.note_fd(b);
        server.ask_replay();
        server.hand_back(b);
        assert_eq!(server.phase(), Phase::HandingBack);
        let mut p = libc::pollfd { fd: b, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd, no wait.
        assert_eq!(unsafe { calls::poll(&mut p, 1, 0) }, 1, "the client's bytes before its switch are readable");
        assert_eq!(server.readiness(b) & bits::IN, bits::IN);
        // The client reads the server's message (switching its writes onto its ring on the way,
        // with nothing written there), then follows the hand-back.
        let mut buf = [0u8; 16];
        assert_eq!(read(a, &mut buf), 5);
        assert_eq!(&buf[..5], b"early");
        assert!(client.out_switched());
        assert_eq!(read(a, &mut buf), -1);
        assert_eq!(crate::sys::errno(), libc::EAGAIN);
        assert_eq!(client.phase(), Phase::Plain);
        // The server's handler sees the hand-back finished: plain, the socket holds the
        // client's bytes as a plain socket would (what the io_uring reads).
        assert!(matches!(progress(&server), Progress::Done), "the server's end did not finish its hand-back");
        assert_eq!(server.phase(), Phase::Plain);
        assert_eq!(socket_bytes(b), b"ping");
        // Plain both ways, in order.
        assert_eq!(write(a, b"more"), 4);
        assert_eq!(socket_bytes(b), b"more");
        assert_eq!(write(b, b"pong"), 4);
        assert_eq!(read(a, &mut buf), 4);
        assert_eq!(&buf[..4], b"pong");
        drop((client, server));
        for fd in [a, b] {
            // SAFETY: the test's own fds, through the hook.
            assert_eq!(unsafe { calls::close(fd) }, 0);
        }
    }
}
