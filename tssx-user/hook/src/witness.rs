//! Which wake-ups a half-way connection's real socket has had: the kernel's edges.
//!
//! Edge-triggered epoll reports a registration once per wake-up of its file. While a direction
//! of a swapped connection is still on its real socket (half-way, see [`crate::migrate`]), the
//! hook must count those wake-ups as the connection's edges, and the events of its own tagged
//! registrations (`crate::epoll`) count them badly: every instance the connection is
//! registered in reports each wake-up once (so one wake-up would count as many edges as there
//! are instances), and the `EPOLL_CTL_MOD` that moves an application's registration to the
//! hook's queues an event of its own when the socket is ready, though nothing woke it.
//!
//! A [`Witness`] is the kernel's own answer: two private epoll instances of the hook, each with
//! the socket registered edge-triggered, one for incoming wake-ups (`EPOLLIN`: data, and the
//! state changes that wake every waiter: EOF, hang-up) and one for room (`EPOLLOUT`), whose
//! ready lists are emptied at each look. The kernel queues an item only on a wake-up whose
//! events it asked for, so a look tells, per direction, whether the socket was woken since the
//! last look, whichever instance's event made the hook look and whenever the waker's bytes
//! were queued. (A wake-up is never lost between looks: it queues the item until the next
//! look, which empties it.)
//!
//! The instances are the hook's own fds ([`OwnFd`], close-on-exec), held from the connection's
//! first adopted registration until it is active (both directions on the rings). Without a
//! witness (no fd left, another process than the one that made it, or a look already under
//! way), every event counts as an edge, which may report one more than the kernel would,
//! never one fewer.

use libc::c_int;

use crate::{own::OwnFd, sys::Fd};

/// The two private instances watching one socket (see the module documentation).
#[derive(Debug)]
pub struct Witness {
    incoming: OwnFd,
    outgoing: OwnFd,
    /// The process that made them: a forked child shares the instances (a look of one process
    /// would empty them for the other), so it does not use them.
    pid: u32,
    /// Whether the peer had taken every byte this end wrote to the socket at the last look
    /// ([`Witness::look`]): a wake-up for room after that is the drain of a doorbell.
    took_at_last_look: std::cell::Cell<bool>,
}

/// Events the incoming instance asks for: data, EOF and hang-ups (a wake-up without events,
/// as a shutdown's, queues every item).
const INCOMING: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// Events the outgoing instance asks for: room.
const OUTGOING: u32 = (libc::EPOLLOUT | libc::EPOLLET) as u32;

impl Witness {
    /// Starts watching the socket `fd`: wake-ups from now on are seen by [`Witness::woken`].
    /// `None` if the kernel refuses (no fd left, `fd` closed meanwhile).
    pub fn watch(fd: c_int, pid: u32) -> Option<Witness> {
        let incoming = instance_on(fd, INCOMING)?;
        let outgoing = instance_on(fd, OUTGOING)?;
        let witness = Witness { incoming, outgoing, pid, took_at_last_look: std::cell::Cell::new(false) };
        // The registrations queue the items if the socket is ready now: not a wake-up.
        witness.woken(pid);
        Some(witness)
    }

    /// [`Witness::woken`] as edges: incoming, and room only while the peer may still have been
    /// taking this end's socket bytes (`took_now`: it had taken them all, loaded before this
    /// look). A take's wake-up comes before the peer stores its count, so a look that finds
    /// the count complete has seen every take's wake-up; later ones are doorbells drained.
    pub fn look(&self, pid: u32, took_now: bool) -> (bool, bool) {
        let (incoming, room) = self.woken(pid);
        let took_before = self.took_at_last_look.replace(took_now);
        (incoming, room && !took_before)
    }

    /// Whether the socket was woken for incoming data (or a state change), and for room, since
    /// the last look (or since [`Witness::watch`]); `(true, true)` in another process than
    /// `pid` (the one that made the witness), which cannot tell.
    pub fn woken(&self, pid: u32) -> (bool, bool) {
        if pid != self.pid {
            return (true, true);
        }
        (take(self.incoming.raw()), take(self.outgoing.raw()))
    }
}

/// A new private epoll instance with `fd` registered for `events`.
fn instance_on(fd: c_int, events: u32) -> Option<OwnFd> {
    // SAFETY: epoll_create1 takes a flags word; the new fd is ours (owned by the `Fd`).
    let raw = unsafe { tssx_shm::sys::syscall(libc::SYS_epoll_create1, [libc::EPOLL_CLOEXEC as usize, 0, 0, 0, 0, 0]) }.ok()?;
    // SAFETY: just returned by the kernel; nothing else owns it.
    let instance = OwnFd::new(unsafe { Fd::from_raw(raw as c_int) });
    let mut ev = libc::epoll_event { events, u64: 0 };
    // SAFETY: a live event; our own instance; `fd` is only registered, never changed.
    let added = unsafe {
        tssx_shm::sys::syscall(
            libc::SYS_epoll_ctl,
            [instance.raw() as usize, libc::EPOLL_CTL_ADD as usize, fd as usize, (&mut ev as *mut libc::epoll_event) as usize, 0, 0],
        )
    };
    added.ok().map(|_| instance)
}

/// Empties the ready list of our instance `epfd` (one item at most); whether it had one.
fn take(epfd: c_int) -> bool {
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: room for one event; no wait; no signal mask. A raw call: errno is kept.
    let n =
        unsafe { tssx_shm::sys::syscall(libc::SYS_epoll_pwait, [epfd as usize, (&mut ev as *mut libc::epoll_event) as usize, 1, 0, 0, 8]) };
    // An error (EINTR cannot happen without a wait): as if woken, never a lost edge.
    !matches!(n, Ok(0))
}

#[cfg(test)]
mod tests {
    use super::Witness;

    /// A connected stream socket pair (closed on drop).
    struct Pair([libc::c_int; 2]);

    impl Pair {
        fn new() -> Pair {
            let mut fds = [-1; 2];
            // SAFETY: room for two fds.
            assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) }, 0);
            Pair(fds)
        }

        fn send(&self, from: usize, bytes: &[u8]) {
            // SAFETY: a live buffer of that length.
            assert_eq!(unsafe { libc::write(self.0[from], bytes.as_ptr().cast(), bytes.len()) }, bytes.len() as isize);
        }

        fn take(&self, at: usize, n: usize) {
            let mut buf = vec![0u8; n];
            // SAFETY: a live buffer of that length.
            assert_eq!(unsafe { libc::read(self.0[at], buf.as_mut_ptr().cast(), n) }, n as isize);
        }
    }

    impl Drop for Pair {
        fn drop(&mut self) {
            // SAFETY: our own fds.
            unsafe {
                libc::close(self.0[0]);
                libc::close(self.0[1]);
            }
        }
    }

    const PID: u32 = 1;

    #[test]
    fn data_queued_before_the_watch_is_no_wake_up_and_each_wake_up_is_seen_once() {
        let pair = Pair::new();
        pair.send(1, b"queued before");
        let w = Witness::watch(pair.0[0], PID).expect("two epoll instances");
        // Readable and writable already: nothing woke the socket since the watch.
        assert_eq!(w.woken(PID), (false, false));
        pair.send(1, b"more");
        assert_eq!(w.woken(PID), (true, false), "new data wakes the incoming side");
        assert_eq!(w.woken(PID), (false, false), "once");
        pair.send(0, b"ours");
        assert_eq!(w.woken(PID), (false, false), "our own write wakes nothing here");
        pair.take(1, 4);
        assert_eq!(w.woken(PID), (false, true), "the peer taking our bytes is room");
        assert_eq!(w.woken(PID), (false, false));
        // SAFETY: a live fd of the pair.
        assert_eq!(unsafe { libc::shutdown(pair.0[1], libc::SHUT_WR) }, 0);
        assert!(w.woken(PID).0, "EOF wakes the incoming side");
    }

    #[test]
    fn a_wake_up_for_data_already_read_is_none_as_in_the_kernel() {
        let pair = Pair::new();
        let w = Witness::watch(pair.0[0], PID).expect("two epoll instances");
        pair.send(1, b"x");
        pair.take(0, 1);
        // The kernel drops an edge-triggered item that is no longer ready when it delivers.
        assert_eq!(w.woken(PID), (false, false));
    }

    #[test]
    fn room_after_a_look_that_found_every_socket_byte_taken_is_no_edge() {
        let pair = Pair::new();
        let w = Witness::watch(pair.0[0], PID).expect("two epoll instances");
        // (Two writes, two skbs: the kernel wakes for room when it frees one.)
        pair.send(0, b"a");
        pair.send(0, b"b");
        pair.take(1, 1);
        assert_eq!(w.look(PID, false), (false, true), "a take before the count was complete");
        pair.take(1, 1);
        assert_eq!(w.look(PID, true), (false, true), "the last take, seen by the look that finds the count complete");
        pair.send(0, b"c");
        pair.take(1, 1);
        assert_eq!(w.look(PID, true), (false, false), "a drain after that");
    }

    #[test]
    fn another_process_cannot_tell_and_counts_every_event() {
        let pair = Pair::new();
        let w = Witness::watch(pair.0[0], PID).expect("two epoll instances");
        assert_eq!(w.woken(PID + 1), (true, true));
    }
}
