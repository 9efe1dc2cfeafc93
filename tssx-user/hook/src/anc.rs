//! Ancillary data on swapped sockets: `sendmsg` with `SCM_RIGHTS` / `SCM_CREDENTIALS` while the
//! bytes are on the rings.
//!
//! The message's bytes go on the ring as any write; its control messages go through the
//! kernel, attached to one marker byte ([`ANC_MARKER`]) on the real socket, so the kernel checks
//! them (its errno when it refuses them, and then nothing is sent). A record in the segment
//! ([`tssx_common::segment::AncQueue`]) says where in the byte stream they belong. The reader
//! stops its ring reads at that position; a read that reaches it (with room left) takes the
//! marker with `recvmsg` into the application's control buffer, then the message's bytes, and
//! stops there, as `af_unix` ends a stream read after an skb that carries fds
//! (`unix_stream_read_generic`). A read that stops before the position does not take them.
//!
//! With `SO_PASSCRED` turned on (the connection then hands back), the ring's bytes were all sent
//! without credentials: their reads get the kernel's "no credentials" ([`no_credentials`]), a
//! read ends before and after a message with control messages on the ring (the kernel never
//! glues bytes of other credentials; a message with fds only has none too, which the kernel
//! would glue to the bytes before it: the hook cannot tell without taking the marker), and
//! before the socket's bytes that follow the peer's hand-back (which carry its credentials).
//!
//! Shared memory only carries positions and counts: an fd, pid, uid or gid can only come out
//! of the kernel (see the segment ABI's "Ancillary data"). Doorbells never consume a marker:
//! drainers stop at the doorbell count of the oldest pending record
//! ([`Conn::anc_bell_bound`]).

use std::{
    cell::Cell,
    io::{IoSlice, IoSliceMut},
    sync::atomic::Ordering::{Relaxed, SeqCst},
};

use libc::{c_int, c_void, msghdr};
use tssx_common::segment::{AncQueue, ANC_MARKER, ANC_SLOTS, NOT_YET};
use tssx_shm::ring::{Consumer, Transfer};

use crate::{
    conn::{Conn, Phase},
    iov::IOV_BATCH,
    sys,
    wait::{Backoff, Waiting},
};

/// The control buffer of the application's `recvmsg` in progress on this thread (set by
/// [`ctrl_begin`]), and what the kernel wrote there when a marker was taken.
#[derive(Clone, Copy)]
struct Ctrl {
    buf: *mut c_void,
    len: usize,
    /// `msg_controllen` the kernel returned for the marker (0: no marker taken).
    out_len: usize,
    /// `msg_flags` the kernel returned for the marker.
    out_flags: c_int,
    /// The call's `MSG_CMSG_CLOEXEC`.
    cloexec: c_int,
    /// A `recvmsg` is in progress (its msghdr was readable): control messages are reported.
    begun: bool,
}

const NO_CTRL: Ctrl = Ctrl { buf: std::ptr::null_mut(), len: 0, out_len: 0, out_flags: 0, cloexec: 0, begun: false };

thread_local! {
    static CTRL: Cell<Ctrl> = const { Cell::new(NO_CTRL) };
}

/// Clears the thread's control request when the call ends.
pub struct CtrlGuard(());

impl Drop for CtrlGuard {
    fn drop(&mut self) {
        let _ = CTRL.try_with(|c| c.set(NO_CTRL));
    }
}

/// Before a `recvmsg` served by the hook: notes the caller's control buffer (read unaligned),
/// into which a marker met on the way is received.
///
/// # Safety
/// `msg` is null or a pointer the caller passed as a msghdr (its readability is checked here).
pub unsafe fn ctrl_begin(msg: *const msghdr, flags: c_int) -> CtrlGuard {
    // SAFETY: per the contract (read through the user copy: a header in a bad page is left to
    // the call's own check, EFAULT).
    let Some(m) = (unsafe { crate::iov::read_value(msg) }) else { return CtrlGuard(()) };
    let (buf, len) = (m.msg_control, m.msg_controllen);
    let _ = CTRL.try_with(|c| c.set(Ctrl { buf, len, out_len: 0, out_flags: 0, cloexec: flags & libc::MSG_CMSG_CLOEXEC, begun: true }));
    CtrlGuard(())
}

/// Drops the thread's control request for the rest of the call: what it reads takes no control
/// messages (as a `recv`).
pub(crate) fn forget_ctrl() {
    let _ = CTRL.try_with(|c| c.set(NO_CTRL));
}

/// After the hook served a `recvmsg`: `msg_controllen` and the `msg_flags` bits
/// (`MSG_CTRUNC`) the kernel gave for a marker taken during the call (0, 0 if none).
pub fn ctrl_result() -> (usize, c_int) {
    CTRL.try_with(|c| c.get()).map_or((0, 0), |c| (c.out_len, c.out_flags & libc::MSG_CTRUNC))
}

/// `recvmsg` of data bytes on the real socket (before the peer's switch) with the control
/// buffer of the thread's `recvmsg`, if any (used once per call). Notes what the kernel gave
/// ([`ctrl_result`], [`ctrl_ended_read`]). `passcred`: `SO_PASSCRED` is on, so the kernel gives
/// credentials with every read: they end the read only with fds (the bytes that follow on the
/// ring were sent without credentials as these were, and the kernel glues bytes of the same
/// credentials; fds truncated away for lack of a control buffer are not seen then).
///
/// # Safety
/// `msg` describes live buffers and no control buffer.
pub(crate) unsafe fn recvmsg_with_ctrl(fd: c_int, msg: &mut msghdr, flags: c_int, passcred: bool) -> Result<usize, c_int> {
    // SAFETY: per the contract.
    let (got, ctrl) = unsafe { recvmsg_into_ctrl(fd, msg, flags) };
    if got.is_ok() && got_ctrl(msg) {
        note_ctrl(ctrl, msg, ending(msg, passcred));
    }
    got
}

/// `recvmsg` on the real socket with the thread's control buffer (and the call's
/// `MSG_CMSG_CLOEXEC`), nothing noted yet: the result, and the thread's control request as it
/// was.
///
/// # Safety
/// `msg` describes live buffers and no control buffer.
unsafe fn recvmsg_into_ctrl(fd: c_int, msg: &mut msghdr, flags: c_int) -> (Result<usize, c_int>, Ctrl) {
    let ctrl = CTRL.try_with(|c| c.get()).unwrap_or(NO_CTRL);
    msg.msg_control = ctrl.buf;
    msg.msg_controllen = ctrl.len as _;
    // SAFETY: per the contract; the control buffer is the application's own.
    (unsafe { sys::recvmsg_raw(fd, msg, flags | ctrl.cloexec) }, ctrl)
}

/// Whether the kernel wrote control messages for `m` (or cut them: `MSG_CTRUNC`).
fn got_ctrl(m: &msghdr) -> bool {
    m.msg_controllen > 0 || m.msg_flags & libc::MSG_CTRUNC != 0
}

/// [`ENDED`] for control messages that end the read as the kernel's would: fds, or any with
/// `SO_PASSCRED` off (see [`recvmsg_with_ctrl`]).
fn ending(m: &msghdr, passcred: bool) -> c_int {
    if passcred && !has_rights(m) {
        0
    } else {
        ENDED
    }
}

/// Records what the kernel wrote into the thread's control buffer (`ctrl`, as it was) for
/// `m`, with `extra` flags, for the application's `recvmsg` to report, and withdraws the buffer:
/// control messages are delivered once per call.
fn note_ctrl(mut ctrl: Ctrl, m: &msghdr, extra: c_int) {
    ctrl.out_len = m.msg_controllen;
    ctrl.out_flags = m.msg_flags | extra;
    ctrl.buf = std::ptr::null_mut();
    ctrl.len = 0;
    let _ = CTRL.try_with(|c| c.set(ctrl));
}

/// After a read of the thread's `recvmsg` took ring bytes with `SO_PASSCRED` on (the connection
/// handing back after `setsockopt(SO_PASSCRED)`): the control messages the kernel gives bytes
/// that were sent while neither end had `SO_PASSCRED` on, as every byte on the rings was, unless
/// this call received control messages already. The kernel gives such bytes `SCM_CREDENTIALS`
/// with pid 0 and the overflow uid and gid (`unix_stream_read_generic`: the skb carries no
/// pid and invalid ids; `scm_recv` munges them), and `MSG_CTRUNC` when the control buffer is
/// missing or too short. They are made by the kernel itself, for the caller's control buffer
/// and flags: one byte sent on a private socket pair, received with `SO_PASSCRED` on (three
/// system calls and two closes, only on this path). If the pair cannot be made (no fd left),
/// nothing is reported, as before this existed.
pub(crate) fn no_credentials() {
    let Ok(mut ctrl) = CTRL.try_with(|c| c.get()) else { return };
    if !ctrl.begun || ctrl.out_len > 0 || ctrl.out_flags & (libc::MSG_CTRUNC | ENDED) != 0 {
        return;
    }
    let mut pair = [-1 as c_int; 2];
    // SAFETY: the kernel writes two fds into our array; both are owned below.
    let made = unsafe {
        tssx_shm::sys::syscall(
            libc::SYS_socketpair,
            [libc::AF_UNIX as usize, (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as usize, 0, pair.as_mut_ptr() as usize, 0, 0],
        )
    };
    if made.is_err() {
        return;
    }
    // SAFETY: the two fds just made, ours alone; closed when these drop.
    let (tx, rx) = unsafe { (tssx_shm::sys::Fd::from_raw(pair[0]), tssx_shm::sys::Fd::from_raw(pair[1])) };
    let on: c_int = 1;
    if sys::send_raw(tx.raw(), &[0], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) != Ok(1)
        || tssx_shm::sys::setsockopt(rx.raw(), libc::SOL_SOCKET, libc::SO_PASSCRED, &on).is_err()
    {
        return;
    }
    let mut byte = 0u8;
    let mut iov = libc::iovec { iov_base: (&raw mut byte).cast(), iov_len: 1 };
    // SAFETY: an all-zero msghdr is valid.
    let mut m: msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    m.msg_control = ctrl.buf;
    m.msg_controllen = ctrl.len as _;
    // SAFETY: our iovec and msghdr; the control buffer is the application's own, which the
    // kernel checks and writes as for its own recvmsg.
    if let Ok(1) = unsafe { sys::recvmsg_raw(rx.raw(), &mut m, libc::MSG_DONTWAIT | ctrl.cloexec) } {
        ctrl.out_len = m.msg_controllen;
        ctrl.out_flags = m.msg_flags;
        ctrl.buf = std::ptr::null_mut();
        ctrl.len = 0;
        let _ = CTRL.try_with(|c| c.set(ctrl));
    }
}

/// Internal bit of [`Ctrl::out_flags`]: the last socket read took control messages, the read
/// ends there.
const ENDED: c_int = 1 << 30;

/// Whether this thread's call is a `recvmsg` with a control buffer not filled yet (a read or
/// a peek of bytes that carried control messages must then take them).
pub(crate) fn ctrl_requested() -> bool {
    CTRL.try_with(|c| {
        let v = c.get();
        v.begun && !v.buf.is_null() && v.len > 0
    })
    .unwrap_or(false)
}

/// After a `recvmsg` peek of `k` bytes of the socket part (the bytes the peer wrote before its
/// switch; a first look without a control buffer stopped there, so they end where the kernel's
/// peek ends) into a buffer of `room` bytes: peeks them again with the thread's control buffer,
/// as the kernel's peek gives the control messages of the bytes it peeks (the fds of a message
/// sent before the switch, through the kernel). Found by the conformance test, rarely: the
/// segment came after the message with the fd was sent, and the peeks gave its bytes without
/// it.
///
/// The kernel's stream peek whose buffer fills goes on along the queue, copying nothing, to the
/// first skb with fds and peeks those (`unix_stream_read_generic` jumps back to `again`
/// without testing the size): a plain socket's peek gets the fds of the first message with fds
/// after its bytes. On the real socket that is the same message: one sent before the switch,
/// or else the marker of the first record on the ring. So this peek asks for `k + 1` bytes (a
/// buffer of its own): it gets at most `k` when the kernel stopped after an skb with fds
/// within them; `k + 1` when the size ran out, and then it keeps what the walk found only if
/// the caller's buffer is full (`k == room`), as the kernel's own peek would be. Otherwise (new
/// bytes arrived since the first look) the fds are closed and nothing is reported.
pub(crate) fn peek_socket_ctrl(fd: c_int, k: usize, room: usize, passcred: bool) {
    if !ctrl_requested() {
        return;
    }
    let mut scratch = vec![0u8; k.saturating_add(1)];
    let mut iov = libc::iovec { iov_base: scratch.as_mut_ptr().cast(), iov_len: scratch.len() };
    // SAFETY: an all-zero msghdr is valid.
    let mut m: msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    // SAFETY: `m` describes our scratch buffer.
    let (got, ctrl) = unsafe { recvmsg_into_ctrl(fd, &mut m, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    m.msg_iov = std::ptr::null_mut();
    let Ok(n) = got else { return };
    if !got_ctrl(&m) {
        return;
    }
    if n > k && k < room {
        close_rights(&m);
        return;
    }
    note_ctrl(ctrl, &m, ending(&m, passcred));
}

/// Closes the fds of the `SCM_RIGHTS` control messages the kernel just wrote for `m` (received
/// by the hook on the application's behalf and not to be delivered).
fn close_rights(m: &msghdr) {
    each_rights(m, |c| {
        // SAFETY: a control message inside the buffer the kernel just filled (see
        // `each_rights`); the fds in it are new ones of this process, owned by no one yet.
        unsafe {
            let count = (*c).cmsg_len.saturating_sub(libc::CMSG_LEN(0) as usize) / size_of::<c_int>();
            for i in 0..count {
                let _ = tssx_shm::sys::close(libc::CMSG_DATA(c).cast::<c_int>().add(i).read_unaligned());
            }
        }
        true
    });
}

/// Whether the socket part of this thread's read took control messages (fds, or fds closed
/// for lack of room), after which the kernel's read ends; clears the mark.
pub(crate) fn ctrl_ended_read() -> bool {
    CTRL.try_with(|c| {
        let mut v = c.get();
        let ended = v.out_flags & ENDED != 0;
        v.out_flags &= !ENDED;
        c.set(v);
        ended
    })
    .unwrap_or(false)
}

/// Whether `SO_PASSCRED` is on for socket `fd`: its reads then come with the writer's
/// credentials, which only the kernel gives; such a connection is not served on the rings
/// (never claimed if it is on from the start; handed back when it is turned on).
pub fn passes_creds(fd: c_int) -> bool {
    let mut on: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: one int and its length, both live locals; the real getsockopt.
    let rc = unsafe { sys::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, (&raw mut on).cast(), &mut len) };
    rc == 0 && on != 0
}

/// One `recvmsg` (`how`) of the socket into `buf`, ending with a marker, with the thread's
/// control buffer (the application's own, which the kernel checks and writes as for its own
/// `recvmsg`). If it took all of `buf`, what it wrote there is recorded for the application's
/// `recvmsg` to report; control messages are delivered once per call (the kernel's read stops
/// after fds; credentials come with SO_PASSCRED only, never served here), so the buffer is not
/// offered again. Returns the call's result and its header (`msg_iov` cleared: it pointed at a
/// local).
fn recv_marker(fd: c_int, buf: &mut [u8], how: c_int) -> (Result<usize, c_int>, msghdr) {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero msghdr is valid.
    let mut m: msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &mut iov;
    m.msg_iovlen = 1;
    // SAFETY: `m` describes our buffer (see above for the control buffer).
    let (got, ctrl) = unsafe { recvmsg_into_ctrl(fd, &mut m, how) };
    m.msg_iov = std::ptr::null_mut();
    if got == Ok(buf.len()) && got_ctrl(&m) {
        note_ctrl(ctrl, &m, 0);
    }
    (got, m)
}

/// Whether the control messages the kernel just wrote for `m` hold `SCM_RIGHTS`.
fn has_rights(m: &msghdr) -> bool {
    let mut any = false;
    each_rights(m, |_| {
        any = true;
        false
    });
    any
}

/// Calls `f` with each `SCM_RIGHTS` control message the kernel just wrote for `m`, in order,
/// while it returns true.
fn each_rights(m: &msghdr, mut f: impl FnMut(*const libc::cmsghdr) -> bool) {
    if m.msg_control.is_null() || m.msg_controllen < size_of::<libc::cmsghdr>() || !m.msg_control.cast::<libc::cmsghdr>().is_aligned() {
        return;
    }
    // SAFETY: the buffer the kernel just filled, `msg_controllen` bytes; the CMSG macros stay
    // inside it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS && !f(c) {
                return;
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
    }
}

/// One record, as loaded (untrusted: clamped by the user).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    /// Its number (the queue's `taken` when it was loaded).
    n: u64,
    pos: u64,
    len: u64,
    bells: u64,
}

/// Calls `f` with `bufs` narrowed to their first `n` bytes (at most [`IOV_BATCH`] slices).
fn limit_mut<R>(bufs: &mut [IoSliceMut<'_>], mut n: usize, f: impl FnOnce(&mut [IoSliceMut<'_>]) -> R) -> R {
    let mut short: [IoSliceMut<'_>; IOV_BATCH] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
    let mut count = 0;
    for b in bufs.iter_mut() {
        if n == 0 || count == IOV_BATCH {
            break;
        }
        let k = b.len().min(n);
        // SAFETY: a prefix of a caller buffer, used only within this call while `bufs` is
        // mutably borrowed.
        short[count] = IoSliceMut::new(unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr(), k) });
        count += 1;
        n -= k;
    }
    f(&mut short[..count])
}

/// As [`limit_mut`], for sending.
fn limit<R>(bufs: &[IoSlice<'_>], mut n: usize, f: impl FnOnce(&[IoSlice<'_>]) -> R) -> R {
    let mut short: [IoSlice<'_>; IOV_BATCH] = [IoSlice::new(&[]); IOV_BATCH];
    let mut count = 0;
    for b in bufs {
        if n == 0 || count == IOV_BATCH {
            break;
        }
        let k = b.len().min(n);
        short[count] = IoSlice::new(&b[..k]);
        count += 1;
        n -= k;
    }
    f(&short[..count])
}

/// What one attempt of [`Conn::send_anc`] under the producer lock came to.
enum Step {
    Sent(Transfer),
    Full,
    QueueFull,
    Back,
    Err(c_int),
}

impl Conn {
    /// The queue of records for the ring this end reads.
    fn in_queue(&self) -> &AncQueue {
        &self.header().anc[self.end().peer().index()]
    }

    /// The queue of records for the ring this end writes.
    fn out_queue(&self) -> &AncQueue {
        &self.header().anc[self.end().index()]
    }

    /// Whether a record for the incoming ring is pending (one load each of two counters).
    #[inline]
    pub(crate) fn anc_pending(&self) -> bool {
        let q = self.in_queue();
        // SeqCst: pairs with the writer's SeqCst store after filling the slot.
        pending(q.sent.0.load(SeqCst), q.taken.0.load(SeqCst))
    }

    /// The oldest pending record for the incoming ring.
    pub(crate) fn next_record(&self) -> Option<Record> {
        let q = self.in_queue();
        // SeqCst: as in `anc_pending`.
        let taken = q.taken.0.load(SeqCst);
        if !pending(q.sent.0.load(SeqCst), taken) {
            return None;
        }
        let slot = &q.slots[(taken % ANC_SLOTS as u64) as usize];
        // Relaxed: written before `sent` (SeqCst), loaded after it.
        let cap = self.seg().segment.ring_capacity() as u64;
        Some(Record { n: taken, pos: slot.pos.load(Relaxed), len: slot.len.load(Relaxed).clamp(1, cap), bells: slot.bells.load(Relaxed) })
    }

    /// Doorbells of the peer's that may be drained now: those before the oldest pending
    /// record's marker (`u64::MAX`: no record pending).
    pub(crate) fn anc_bell_bound(&self) -> u64 {
        if !self.anc_pending() {
            return u64::MAX;
        }
        self.next_record().map_or(u64::MAX, |r| r.bells)
    }

    /// Whether record `r` is still the oldest published one (a marker the kernel refused is
    /// withdrawn by its writer).
    fn still_published(&self, r: &Record) -> bool {
        let q = self.in_queue();
        // SeqCst: as in `anc_pending`.
        if q.taken.0.load(SeqCst) != r.n || !pending(q.sent.0.load(SeqCst), r.n) {
            return false;
        }
        // A record withdrawn and its slot filled again meanwhile: another message.
        self.next_record().is_some_and(|now| now.pos == r.pos && now.len == r.len && now.bells == r.bells)
    }

    /// Takes (or, with `peek`, peeks) the marker of record `r`: drains the doorbells sent
    /// before it, then receives the marker byte into the control buffer of the thread's
    /// `recvmsg` (none: the kernel discards the fds, as for a `read`). Consumes the record
    /// unless peeking. Under the consumer lock. Whether the marker carried fds (delivered, or
    /// closed for lack of room); `None`: the record was withdrawn (nothing taken).
    pub(crate) fn take_marker(&self, fd: c_int, r: &Record, peek: bool, flags: c_int) -> Option<bool> {
        let drained = &self.my_line().bells_drained;
        let mut scratch = [0u8; 64];
        // When the wait for the marker ends (see `MARKER_WAIT_NS`); 0 until a look missed it.
        let mut deadline = 0u64;
        loop {
            if !self.still_published(r) {
                return None;
            }
            // SeqCst: as every user of the doorbell counters.
            let before = drained.load(SeqCst);
            if before < r.bells {
                let take = (r.bells - before).min(scratch.len() as u64) as usize;
                if drained.compare_exchange(before, before + take as u64, SeqCst, SeqCst).is_err() {
                    continue;
                }
                match sys::recv_raw(fd, &mut scratch[..take], libc::MSG_DONTWAIT) {
                    Ok(n) if n > 0 => {
                        if n < take {
                            drained.fetch_sub((take - n) as u64, SeqCst);
                        }
                        continue;
                    }
                    _ => {
                        drained.fetch_sub(take as u64, SeqCst);
                    }
                }
            }
            // The next byte must be the marker (doorbells are 0: another thread may still be
            // reading the ones it reserved).
            let mut probe = 0u8;
            match sys::recv_raw(fd, std::slice::from_mut(&mut probe), libc::MSG_PEEK | libc::MSG_DONTWAIT) {
                Ok(1) if probe == ANC_MARKER => break,
                looked @ (Ok(1) | Err(libc::EAGAIN) | Err(libc::EINTR)) if waiting_for_marker(&mut deadline) => {
                    if looked == Err(libc::EAGAIN) {
                        // Nothing on the socket yet: the writer published the record and has
                        // not sent its marker. Sleep until a byte comes, in slices, so that a
                        // record withdrawn meanwhile is seen.
                        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
                        // SAFETY: one live pollfd.
                        unsafe { sys::poll(&mut p, 1, MARKER_POLL_SLICE_MS) };
                    } else {
                        // A doorbell another thread reserved and is reading: moments.
                        sys::sched_yield();
                    }
                }
                // EOF, an error, or no marker after all (a lying peer): nothing to take.
                _ => {
                    if !peek {
                        self.in_queue().taken.0.store(r.n.wrapping_add(1), SeqCst);
                    }
                    return Some(false);
                }
            }
        }
        let how = libc::MSG_DONTWAIT | (flags & libc::MSG_CMSG_CLOEXEC) | if peek { libc::MSG_PEEK } else { 0 };
        let (got, m) = recv_marker(fd, &mut [0u8], how);
        let fds = got == Ok(1) && (m.msg_flags & libc::MSG_CTRUNC != 0 || has_rights(&m));
        if !peek {
            self.in_queue().taken.0.store(r.n.wrapping_add(1), SeqCst);
        }
        Some(fds)
    }

    /// A peek that took all `socket_bytes` the peer wrote to the socket before its switch, and
    /// goes on with the ring while records are pending: the ring's bytes up to and including the
    /// first record's message, with its control messages (peeked into the thread's `recvmsg`),
    /// as the kernel's peek glues data with the message with fds that follows and stops after
    /// it (a buffer that ends inside the message gets its first bytes and its control messages:
    /// the kernel's peek gives those of every skb it touches). Into `bufs` (which follow the
    /// socket's bytes). Returns how many ring bytes; 0 if it cannot be served so
    /// (`SO_PASSCRED`, the socket does not hold exactly the socket's bytes, the doorbells and
    /// the marker yet, the message not all on the ring yet): the peek then
    /// ends with the socket's bytes, the message left for the next call. Under the consumer
    /// lock (`rx`).
    pub(crate) fn peek_ring_glued(
        &self,
        fd: c_int,
        rx: &mut Consumer,
        bufs: &mut [IoSliceMut<'_>],
        socket_bytes: usize,
        flags: c_int,
    ) -> usize {
        // Relaxed: see the field.
        if self.passcred.load(Relaxed) {
            return 0;
        }
        let Some(r) = self.next_record() else { return 0 };
        let room = bufs.iter().map(|b| b.len()).sum::<usize>();
        let before = r.pos.saturating_sub(rx.position()).min(usize::MAX as u64) as usize;
        let len = r.len.min(usize::MAX as u64) as usize;
        if before >= room {
            // The peek ends before the message: ring bytes only, as the kernel's, and, when
            // they fill the buffer, the fds of the message if all of it is queued (the kernel's
            // peek walks on to them: see `peek_socket_ctrl`).
            let got = limit_mut(bufs, room, |b| rx.peekv(b));
            if got.fault {
                return 0;
            }
            if got.bytes == room && rx.available() >= before.saturating_add(len) && ctrl_requested() {
                let _ = self.peek_marker_behind(fd, &r, socket_bytes, flags);
            }
            return got.bytes;
        }
        let through = before.saturating_add(len);
        // (The kernel's message is one skb: all of it is queued, or none.)
        let upto = through.min(room);
        if rx.available() < through || !crate::iov::writable(bufs, upto) {
            return 0;
        }
        if !self.peek_marker_behind(fd, &r, socket_bytes, flags) {
            return 0;
        }
        let got = limit_mut(bufs, upto, |b| rx.peekv(b));
        if got.fault {
            0
        } else {
            got.bytes
        }
    }

    /// Peeks the socket's `socket_bytes` of data, the doorbells sent before record `r`'s marker
    /// and the marker, in one call with the thread's control buffer (the kernel glues them and
    /// peeks the marker's fds); first without it, to check that the socket holds exactly that
    /// (a doorbell still on its way, a lying peer: nothing is delivered). True: the control
    /// messages are in the thread's `recvmsg`.
    fn peek_marker_behind(&self, fd: c_int, r: &Record, socket_bytes: usize, flags: c_int) -> bool {
        if !self.still_published(r) {
            return false;
        }
        // SeqCst: as every user of the doorbell counters.
        let owed = r.bells.saturating_sub(self.my_line().bells_drained.load(SeqCst));
        if owed > crate::wait::MAX_OWED_DOORBELLS {
            return false;
        }
        let Some(want) = socket_bytes.checked_add(owed as usize + 1) else { return false };
        let mut scratch = vec![0u8; want];
        match sys::recv_raw(fd, &mut scratch, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(n) if n == want && scratch[want - 1] == ANC_MARKER && scratch[socket_bytes..want - 1].iter().all(|&b| b == 0) => {}
            _ => return false,
        }
        let how = libc::MSG_PEEK | libc::MSG_DONTWAIT | (flags & libc::MSG_CMSG_CLOEXEC);
        // (The same bytes: only this end reads the socket, under the consumer lock; the peer
        // only appends, and a peek stops after the marker's fds.)
        recv_marker(fd, &mut scratch, how).0 == Ok(want)
    }

    /// Reads (or peeks) the incoming ring into `bufs`, at most `cap` bytes, honouring the
    /// pending records: a read that stops before a record's position does not take its
    /// marker; one that crosses it takes the marker (its control messages into the thread's
    /// `recvmsg`) and, if the marker carried fds, ends after that message's bytes, as the
    /// kernel ends a read after an skb with fds (a message with credentials only is glued to
    /// what follows). A peek crosses at most one record (the socket cannot be peeked past a
    /// marker). Under the consumer lock (`rx`). Returns the transfer (its `fault`: the caller's
    /// buffer faulted before a byte was read) and whether the read must end there.
    pub(crate) fn read_ring_anc(
        &self,
        fd: c_int,
        rx: &mut Consumer,
        bufs: &mut [IoSliceMut<'_>],
        peek: bool,
        flags: c_int,
        cap: usize,
    ) -> (Transfer, bool) {
        let room = bufs.iter().map(|b| b.len()).sum::<usize>().min(cap);
        let mut done = Transfer::default();
        // Adds a transfer to `done`; `true` if its copy faulted (the read ends there: EFAULT if
        // nothing was read before, see `Transfer::fault`).
        let add = |got: Transfer, done: &mut Transfer| {
            done.bytes += got.bytes;
            done.wake_peer |= got.wake_peer;
            done.fault = got.fault && done.bytes == 0;
            got.fault
        };
        // Reads `n` bytes more (peeks: the `done` first ones again, then `n`); `seen`: only
        // bytes the last look at the ring saw (see `Conn::ring_seen`), for a read that no
        // record bounds.
        let read = |rx: &mut Consumer, bufs: &mut [IoSliceMut<'_>], done: usize, n: usize, seen: bool| {
            if peek {
                let got = limit_mut(bufs, done + n, |b| if seen { rx.peekv_seen(b) } else { rx.peekv(b) });
                return if got.fault { got } else { Transfer::peeked(got.bytes.saturating_sub(done)) };
            }
            crate::iov::after_mut(bufs, done, |rest| limit_mut(rest, n, |b| if seen { rx.readv_seen(b) } else { rx.readv(b) }))
        };
        // At most one round per record the queue can hold, and one more: a record that keeps
        // coming back (its marker never found, its count the peer's lie) ends the loop, the
        // rest read as ordinary data (issue 16: a non-blocking read spun here for good).
        let mut rounds = 0;
        // Relaxed: see the field.
        let passcred = self.passcred.load(Relaxed);
        loop {
            let left = room - done.bytes;
            if left == 0 {
                return (done, false);
            }
            rounds += 1;
            Self::ring_seen(rx);
            let next = if rounds > ANC_SLOTS + 1 { None } else { self.next_record() };
            let Some(r) = next else {
                let got = read(rx, bufs, done.bytes, left, true);
                let fault = add(got, &mut done);
                return (done, fault);
            };
            let tail = rx.position() + if peek { done.bytes as u64 } else { 0 };
            let before = r.pos.saturating_sub(tail).min(usize::MAX as u64) as usize;
            if before >= left || rx.available() <= before + if peek { done.bytes } else { 0 } {
                let got = read(rx, bufs, done.bytes, left.min(before), false);
                let full = !got.fault && got.bytes == left;
                let fault = add(got, &mut done);
                if peek && full && !passcred && rx.available() >= before.saturating_add(r.len as usize) && ctrl_requested() {
                    // A peek that fills its buffer before the message: the kernel's walks on
                    // along the queue and peeks the fds of the first message with fds (see
                    // `peek_socket_ctrl`), this one, if all of it is queued.
                    let _ = self.take_marker(fd, &r, true, flags);
                }
                return (done, fault);
            }
            if peek && done.bytes > 0 {
                // Already past one marker, or bytes before this one: a peek stops here.
                let got = read(rx, bufs, done.bytes, before, false);
                let fault = add(got, &mut done);
                return (done, fault);
            }
            if passcred && done.bytes + before > 0 {
                // With SO_PASSCRED on, the kernel never glues bytes of other credentials: the
                // bytes before a marker (none) end the read before its message (explicit
                // credentials, or fds; see the module documentation).
                let got = read(rx, bufs, done.bytes, before, false);
                add(got, &mut done);
                return (done, true);
            }
            if before > 0 {
                let got = read(rx, bufs, done.bytes, before, false);
                if add(got, &mut done) {
                    return (done, true);
                }
                if got.bytes < before {
                    return (done, false);
                }
            }
            let len = (r.len.min(usize::MAX as u64) as usize).min(room - done.bytes);
            // As the kernel, which copies a message's bytes before it takes its control
            // messages (and takes none if the copy faults): a buffer that would fault ends the
            // read here, the marker left.
            if !crate::iov::after_mut(bufs, done.bytes, |rest| crate::iov::writable(rest, len)) {
                done.fault = done.bytes == 0;
                return (done, true);
            }
            let Some(fds) = self.take_marker(fd, &r, peek, flags) else {
                // Withdrawn meanwhile: the ring bytes are ordinary data.
                continue;
            };
            let got = read(rx, bufs, done.bytes, len, false);
            if add(got, &mut done) || fds || peek || passcred {
                return (done, true);
            }
        }
    }

    /// Takes every pending marker of the incoming ring without a control buffer (the kernel
    /// closes their fds): before an image without the hook reads the socket, which must hold
    /// nothing but data.
    pub(crate) fn discard_markers(&self, fd: c_int) {
        if fd < 0 || self.swap().is_none() {
            return;
        }
        let _ = CTRL.try_with(|c| c.set(NO_CTRL));
        self.with_rx(|_| {
            for _ in 0..ANC_SLOTS + 1 {
                let Some(r) = self.next_record() else { return };
                self.take_marker(fd, &r, false, 0);
            }
        });
    }

    /// `sendmsg` with control messages on a connection whose writes are on the ring: the
    /// bytes on the ring, the control messages through the kernel at their position (see the
    /// module documentation). `None`: not served here (nothing sent): the caller hands the
    /// connection back and makes the real call.
    ///
    /// # Safety
    /// `msg` is readable; `bufs` are its checked data buffers.
    pub unsafe fn send_anc(&self, fd: c_int, msg: *const msghdr, bufs: &[IoSlice<'_>], flags: c_int) -> Option<isize> {
        if self.phase() >= Phase::HandingBack || self.phase() < Phase::Ready {
            return None;
        }
        if !self.writes_ring() {
            // Ready, writes still on the socket: switch them to the ring now if the peer is
            // ready (as a write would), else not served here.
            // SeqCst: pairs with the peer's SeqCst store of `ready`.
            if !self.with_tx(|_| self.out_switched() || (self.peer_line().ready.load(SeqCst) == 1 && self.switch_out())) {
                return None;
            }
        }
        // SAFETY: per the contract; unaligned reads.
        let (name_len, control, control_len) = unsafe {
            (
                std::ptr::addr_of!((*msg).msg_namelen).read_unaligned(),
                std::ptr::addr_of!((*msg).msg_control).read_unaligned(),
                std::ptr::addr_of!((*msg).msg_controllen).read_unaligned(),
            )
        };
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 || name_len != 0 {
            // The kernel checks the control messages, then sends nothing: no bytes (a stream
            // send of none), or an address (EISCONN). Its answer, as it is, except that the
            // real socket under the rings is never shut down: the kernel's next check, a send
            // shut down (EPIPE, SIGPIPE), is the hook's (found by the differential test).
            // SAFETY: the caller's message, as received.
            let rc = unsafe { sys::sendmsg(fd, msg, flags) };
            if rc == 0 && name_len == 0 && self.send_shut() {
                crate::stream::raise_sigpipe(flags);
                return Some(crate::stream::partial_or_errno(0, libc::EPIPE));
            }
            return Some(rc);
        }
        let mut backoff = Backoff::new(Waiting::Write);
        loop {
            if self.phase() >= Phase::HandingBack {
                return None;
            }
            if self.send_shut() {
                crate::stream::raise_sigpipe(flags);
                return Some(crate::stream::partial_or_errno(0, libc::EPIPE));
            }
            let step = self.with_tx(|tx| {
                // Relaxed: as in `send_inner` (stored under this lock).
                if self.my_line().back_at.load(Relaxed) != NOT_YET {
                    return Step::Back;
                }
                let free = tx.free();
                if free == 0 {
                    return Step::Full;
                }
                let q = self.out_queue();
                // Relaxed: written only under this lock. SeqCst: the reader's count.
                let sent = q.sent.0.load(Relaxed);
                if sent.wrapping_sub(q.taken.0.load(SeqCst)) >= ANC_SLOTS as u64 {
                    return Step::QueueFull;
                }
                let len = want.min(free);
                if !crate::iov::readable(bufs, len) {
                    // As the kernel, whose copy of the message faults after it took the
                    // control messages: EFAULT, nothing sent (the fds never travel).
                    return Step::Err(libc::EFAULT);
                }
                let slot = &q.slots[(sent % ANC_SLOTS as u64) as usize];
                // Relaxed: published by the SeqCst store of `sent` below.
                slot.pos.store(tx.position(), Relaxed);
                slot.len.store(len as u64, Relaxed);
                // SeqCst: the doorbells counted so far were all sent before (under this lock).
                slot.bells.store(self.my_line().bells_sent.load(SeqCst), Relaxed);
                // SeqCst: before the marker exists, so a drainer never reads past it.
                q.sent.0.store(sent.wrapping_add(1), SeqCst);
                let marker = [ANC_MARKER];
                let mut iov = libc::iovec { iov_base: marker.as_ptr() as *mut c_void, iov_len: 1 };
                // SAFETY: an all-zero msghdr is valid.
                let mut m: msghdr = unsafe { std::mem::zeroed() };
                m.msg_iov = &mut iov;
                m.msg_iovlen = 1;
                m.msg_control = control;
                m.msg_controllen = control_len;
                let how = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                // SAFETY: our msghdr with the caller's control buffer, which the kernel checks
                // (EFAULT, EINVAL, EBADF, ...) before it sends anything.
                let rc = unsafe { crate::pass::send_via(&m, |m| sys::sendmsg_raw(fd, m, how)) }
                    // SAFETY: as above.
                    .unwrap_or_else(|| unsafe { sys::sendmsg_raw(fd, &m, how) });
                match rc {
                    Ok(1) => Step::Sent(limit(bufs, len, |b| tx.writev(b))),
                    other => {
                        q.sent.0.store(sent, SeqCst);
                        match other {
                            Err(libc::EAGAIN) | Err(libc::EINTR) | Ok(_) => Step::Full,
                            Err(e) => Step::Err(e),
                        }
                    }
                }
            });
            match step {
                Step::Sent(t) => {
                    if t.wake_peer {
                        self.ring_doorbell(fd);
                    }
                    let mut total = t.bytes;
                    if total < want {
                        // The rest as an ordinary send (a blocking one sends it all).
                        if let Some(n) = crate::iov::after(bufs, total, |rest| self.send(fd, rest, flags | libc::MSG_NOSIGNAL)) {
                            total += n.max(0) as usize;
                        }
                    }
                    return Some(total as isize);
                }
                Step::Err(e) => {
                    if e == libc::EPIPE {
                        crate::stream::raise_sigpipe(flags);
                    }
                    return Some(crate::stream::partial_or_errno(0, e));
                }
                Step::QueueFull => return None,
                Step::Back => {
                    self.hand_back(fd);
                    continue;
                }
                Step::Full => {
                    if self.phase() == Phase::Active && self.peer_handed_back() {
                        self.hand_back(fd);
                        continue;
                    }
                    if self.would_block_is_error(flags) {
                        if self.peer_died(fd) {
                            continue;
                        }
                        return Some(crate::stream::partial_or_errno(0, libc::EAGAIN));
                    }
                    let waited =
                        backoff.idle(self, fd, false, || self.with_tx(|tx| tx.announce_sleep()), || self.with_tx(|tx| tx.withdraw_sleep()));
                    if let Err(e) = waited {
                        return Some(crate::stream::partial_or_errno(0, e.errno()));
                    }
                }
            }
        }
    }
}

/// Whether records are pending between the writer's `sent` and the reader's `taken`: between 1
/// and [`ANC_SLOTS`] of them (any other difference is a lie of the peer's, which makes the
/// queue look empty, never a record to wait for).
fn pending(sent: u64, taken: u64) -> bool {
    (1..=ANC_SLOTS as u64).contains(&sent.wrapping_sub(taken))
}

/// How long a reader waits for the marker of a record it saw published. The writer publishes
/// the record, then sends the marker (so that a doorbell drainer never reads past it), so a
/// writer preempted between the two keeps the reader waiting, asleep on the socket. A marker
/// that does not come in this time never will: the peer lies (its record names no message), and
/// the record is consumed without fds, as the hostile tests require. This bounds what one forged
/// record costs its victim; a count of yields did not, and ran out within milliseconds on an
/// idle core, so a writer preempted for longer had its message's fds dropped.
const MARKER_WAIT_NS: u64 = 500_000_000;
/// The slice of one sleep of that wait, in milliseconds.
const MARKER_POLL_SLICE_MS: c_int = 10;

/// Whether the wait for a marker goes on: starts the clock at the first miss (`deadline` 0),
/// then says whether [`MARKER_WAIT_NS`] have not passed since.
fn waiting_for_marker(deadline: &mut u64) -> bool {
    let now = crate::spin::now_ns();
    if *deadline == 0 {
        *deadline = now.saturating_add(MARKER_WAIT_NS);
    }
    now < *deadline
}
