//! What happens to connections after the claims: the periodic sweep (stale events, pending
//! connections whose server never claimed), reaping finished connections, and the spare
//! segments kept ready for the next claims.
//!
//! Trust: the sweep decides from the kernel's word only: a pending connection keeps waiting while
//! `sock_diag` lists its client socket in an accept queue, and a connection is freed when its
//! segment says both ends left (refcounts the hooks keep), when it went plain, or when `/proc`
//! shows both processes gone. When the kernel cannot tell, the choice is the one that is always
//! safe: a connection turns plain (the client replays its bytes to the real socket) rather than
//! wait, and a process counts as alive rather than lose its segment.
//!
//! Spare segments: creating a segment (memfd, size, seals, mapping, header) costs tens of
//! microseconds, so a thread of its own keeps up to [`SPARE_SEGMENTS`] ready for the next claims,
//! off the claims' path. It runs at `SCHED_IDLE` priority, so it only uses a core that nothing
//! else wants: on a busy machine the claims' processes go first (and a claim that finds no spare
//! creates its segment itself). Spares exist only while connections are live: when the last one
//! is freed, they are dropped with it, so an idle agent holds no memfd. A spare is taken out of
//! the registry under the lock by the one claim that uses it, so it is never handed out twice,
//! and never reused after a connection.

use std::{collections::HashSet, sync::Arc, time::Instant};

use tssx_common::{control::PlainReason, segment::SegmentState};
use tssx_shm::segment::Segment;

use super::{
    registry::{Alive, Expired, Reaped},
    Control,
};

/// Most spare segments kept ready (each is one memfd and one mapped header page until used).
pub const SPARE_SEGMENTS: usize = 4;

impl Control {
    /// Drops stale events, turns plain the pending connections whose server (accepted, no
    /// hook) never claimed, and frees the segments of finished connections. Call periodically.
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    /// [`Control::sweep`] as if the time were `now` (which must not be earlier than the last
    /// sweep's).
    ///
    /// The kernel is asked between two critical sections: whether overdue connections still wait
    /// in an accept queue, and which processes of live connections are alive. The second section
    /// judges overdue by the same `now`, so a connection that became overdue in between (or was
    /// created) is not expired without its accept queue having been looked at.
    pub(super) fn sweep_at(&self, now: Instant) {
        let ttl = self.timing.pending_ttl;
        let (any_overdue, pids) = {
            let mut registry = self.lock();
            registry.forget_stale(now, &self.timing);
            (registry.any_overdue(now, ttl), registry.pids_unknown_to(&Alive::default()))
        };
        // Still in an accept queue: the server has not accepted yet, keep waiting for it. If the
        // kernel cannot tell, assume accepted (plain is always safe).
        let queued = if any_overdue {
            self.facts.unaccepted_clients().unwrap_or_else(|e| {
                tracing::warn!("listing accept queues: {e}");
                HashSet::new()
            })
        } else {
            HashSet::new()
        };
        let mut alive = Alive::default();
        for pid in pids {
            alive.insert(pid, self.facts.alive(pid));
        }
        let (expired, reaped) = {
            let mut registry = self.lock();
            registry.keep_queued_waiting(&queued, now, ttl);
            let expired = registry.expire_overdue(now, ttl);
            (expired, registry.reap(&alive))
        };
        for Expired { id, path, client_pid, watch } in expired {
            drop(watch); // after the state change: the client's hook sees Plain
            tracing::info!(connection = id, path, client = client_pid, reason = PlainReason::PeerHasNoHook.describe(), "not swapped");
        }
        finish_reaped(reaped);
    }

    /// The spare-segment maker's loop (never returns): sleeps until spares are wanted (fewer
    /// than [`SPARE_SEGMENTS`] while connections are live), then makes them.
    pub(super) fn make_spares(&self) {
        // SAFETY: sets the calling thread's policy from a live sched_param; a failure (e.g. not
        // permitted) leaves it at normal priority, which is only less polite.
        let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &libc::sched_param { sched_priority: 0 }) };
        if idle != 0 {
            tracing::debug!("spare segments: SCHED_IDLE refused: {}", std::io::Error::last_os_error());
        }
        loop {
            let mut registry = self.lock();
            while !registry.wants_spares(SPARE_SEGMENTS) {
                registry = self.spares_wanted.wait(registry).unwrap_or_else(|p| p.into_inner());
            }
            drop(registry);
            self.refill_spares();
        }
    }

    /// Creates spare segments (outside the lock) until there are [`SPARE_SEGMENTS`], while
    /// connections are live.
    pub(super) fn refill_spares(&self) {
        loop {
            let generation = {
                let registry = self.lock();
                if !registry.wants_spares(SPARE_SEGMENTS) {
                    return;
                }
                registry.spares_generation()
            };
            let segment = match Segment::create(self.ring_size) {
                Ok(segment) => segment,
                Err(e) => {
                    tracing::warn!("creating a spare segment: {e}");
                    return;
                }
            };
            let added = self.lock().add_spare(segment, generation);
            if let Err(segment) = added {
                drop(segment); // the spares were dropped meanwhile: so is this one
                return;
            }
        }
    }

    /// Wakes the spare-segment maker (a claim used a spare, or a connection went live).
    pub(super) fn want_spares(&self) {
        self.spares_wanted.notify_one();
    }

    /// Starts the spare-segment maker's thread.
    pub(super) fn start_spare_maker(self: &Arc<Self>) -> std::io::Result<()> {
        let control = Arc::clone(self);
        std::thread::Builder::new().name("tssx-spares".into()).spawn(move || control.make_spares()).map(drop)
    }
}

/// Frees and traces what a reap took out, after the registry lock is released: the spares first
/// (an idle agent holds no memfd by the time its `closed` lines appear), then each connection,
/// traced `not swapped` if its client's hook went plain unseen, and `closed` with its bytes.
pub(super) fn finish_reaped(reaped: Reaped) {
    let Reaped { spares, freed } = reaped;
    drop(spares);
    for conn in freed {
        let id = conn.id;
        if conn.server.is_none() && conn.segment.state() == Some(SegmentState::Plain) && !conn.plain_traced {
            // The client's hook saw the peer write to the real socket and went plain.
            tracing::info!(
                connection = id,
                path = conn.path,
                client = conn.client.pid,
                reason = PlainReason::PeerHasNoHook.describe(),
                "not swapped"
            );
        }
        let (c2s, s2c) = conn.bytes_each_way();
        tracing::info!(
            connection = id,
            path = conn.path,
            bytes_client_to_server = c2s,
            bytes_server_to_client = s2c,
            "closed: segment freed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read as _,
        os::{fd::AsRawFd as _, unix::net::UnixStream},
        sync::{atomic::Ordering, Arc},
        time::{Duration, Instant},
    };

    use tssx_common::{
        control::{Reply, Role},
        segment::{End, SegmentState},
    };
    use tssx_shm::segment::Segment;

    use super::{super::fake::*, SPARE_SEGMENTS};
    use crate::control::Control;

    const CLIENT: u32 = 100;
    const SERVER: u32 = 200;
    const TTL: Duration = TEST_TIMING.pending_ttl;

    /// A client that claimed (its segment) on a connection whose server has not joined.
    fn pending(kernel: &Arc<FakeKernel>, control: &Control, n: u32) -> Arc<Segment> {
        kernel.connection((CLIENT + n, 5, 1000 + n), (SERVER, None, 2000 + n));
        control.record(&connect_event(CLIENT + n, 5));
        let (reply, granted) = control.claim(CLIENT + n, 0, Role::Client, 5);
        assert_eq!(reply.reply_kind(), Reply::swap(1).reply_kind());
        match granted.unwrap() {
            super::super::claim::Granted::Client { segment, .. } => segment,
            super::super::claim::Granted::Server { .. } => unreachable!("a client claim"),
        }
    }

    fn ids(control: &Control) -> Vec<u64> {
        control.status().iter().map(|s| s.id).collect()
    }

    #[test]
    fn an_accepted_connection_whose_server_never_claims_turns_plain_after_the_ttl() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        let start = Instant::now();
        let segment = pending(&kernel, &control, 1);
        let id = ids(&control)[0];
        let (watch, mut hook) = UnixStream::pair().unwrap();
        assert!(control.lock().keep_decision_watch(id, watch).is_none());
        control.sweep_at(start);
        control.sweep_at(start + TTL - Duration::from_millis(100));
        assert_eq!(segment.state(), Some(SegmentState::Pending), "not overdue yet");
        assert_eq!(kernel.asked("unaccepted_clients"), 0, "nothing overdue: no question");
        control.sweep_at(Instant::now() + TTL + Duration::from_millis(1));
        assert_eq!(segment.state(), Some(SegmentState::Plain));
        assert_eq!(kernel.asked("unaccepted_clients"), 1);
        assert!(ids(&control).is_empty(), "a plain connection is reaped in the same sweep");
        assert_eq!(control.stats().pending_claims, 0);
        hook.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(hook.read(&mut [0u8; 1]).unwrap(), 0, "the decision watch is closed");
    }

    #[test]
    fn a_connection_in_an_accept_queue_keeps_waiting() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        let segment = pending(&kernel, &control, 1);
        kernel.queued(1001, true);
        let late = Instant::now() + TTL + Duration::from_secs(1);
        control.sweep_at(late);
        assert_eq!(segment.state(), Some(SegmentState::Pending), "still queued: the server has not accepted");
        // Accepted now: it waits a full TTL from the last time it was seen queued.
        kernel.queued(1001, false);
        control.sweep_at(late + TTL - Duration::from_millis(100));
        assert_eq!(segment.state(), Some(SegmentState::Pending));
        control.sweep_at(late + TTL + Duration::from_millis(1));
        assert_eq!(segment.state(), Some(SegmentState::Plain));
        assert!(ids(&control).is_empty());
    }

    #[test]
    fn the_sweep_reaps_closed_and_dead_connections_and_then_the_spares() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        kernel.hooked(CLIENT + 1);
        let first = pending(&kernel, &control, 1);
        let _second = pending(&kernel, &control, 2);
        control.record(&accept_event(SERVER, 7));
        kernel.fd(SERVER, 7, Some(2001));
        assert_eq!(control.claim(SERVER, 0, Role::Server, 7).0, Reply::swap(1));
        control.refill_spares();
        assert_eq!(control.stats().spare_segments, SPARE_SEGMENTS);
        // Both ends of the first closed (Release, as a hook's last close); the second's client is
        // alive.
        first.header().refcount.iter().for_each(|r| r.store(0, Ordering::Release));
        control.sweep();
        assert_eq!(ids(&control), [2]);
        assert_eq!(control.stats().spare_segments, SPARE_SEGMENTS, "spares stay while connections are live");
        kernel.kill(CLIENT + 2);
        control.sweep();
        assert!(ids(&control).is_empty());
        let stats = control.stats();
        assert_eq!((stats.live_segments, stats.spare_segments), (0, 0), "an idle agent holds no memfd");
        control.refill_spares();
        assert_eq!(control.stats().spare_segments, 0, "no spares while nothing is live");
    }

    #[test]
    fn a_claim_takes_a_spare_that_is_never_handed_out_again() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        let first = pending(&kernel, &control, 1);
        control.refill_spares();
        let second = pending(&kernel, &control, 2);
        assert_eq!(control.stats().spare_segments, SPARE_SEGMENTS - 1, "the claim used a spare");
        let third = pending(&kernel, &control, 3);
        assert_eq!(control.stats().spare_segments, SPARE_SEGMENTS - 2);
        // Three connections, three distinct memfds.
        let fds: Vec<i32> = [&first, &second, &third].iter().map(|s| s.fd().unwrap().as_raw_fd()).collect();
        assert!(fds[0] != fds[1] && fds[1] != fds[2] && fds[0] != fds[2], "{fds:?}");
        for segment in [&first, &second, &third] {
            assert!(segment.tssx_bit(End::Client) && !segment.tssx_bit(End::Server));
        }
    }
}
