//! What happens to connections and kernel facts after the claims: the progress pass (every
//! 100 ms: `swapped` lines, and freeing what the segments' headers show is over), the sweep
//! (every second: kernel events and held claims whose sockets are gone, processes gone, ends
//! whose last holder died), and the spare segments kept ready for the next pairs.
//!
//! A process killed without closing its end of a swapped connection leaves the end's holder
//! count (`refcount`) above zero for ever. Its peer's kernel socket reports the hang-up, which
//! wakes a peer asleep on it, but a peer that never sleeps (a non-blocking writer facing a full
//! ring, retrying) would not notice. So the sweep looks at the ends whose claimant died: if the
//! end's socket no longer exists (`sock_diag`), no process holds it, and its count is set to
//! zero as the last close would have: the peer reads what is left, then EOF, and its writes
//! fail with EPIPE (the "agent's exit event" of a crashed peer). Nothing else of the header is
//! written by the agent after the pair.
//!
//! Trust: these passes decide from the kernel's word and the segment headers only. A connection
//! is freed when its segment says so (state `Plain`: given up or handed back; both ends joined
//! and let go), when `/proc` shows both processes gone, or when neither end picked the segment
//! up within [`Timing::join_timeout`](super::Timing). When the kernel cannot tell, the choice is
//! the one that is always safe: a process counts as alive rather than lose its segment.
//!
//! Spare segments: creating a segment (memfd, size, seals, mapping, header) costs tens of
//! microseconds, so a thread of its own keeps up to [`SPARE_SEGMENTS`] ready for the next pairs,
//! off the claims' path. It runs at `SCHED_IDLE` priority, so it only uses a core that nothing
//! else wants: on a busy machine the claims' processes go first (and a pair that finds no spare
//! creates its segment itself). Spares exist only while connections are live: when the last one
//! is freed, they are dropped with it, so an idle agent holds no memfd. A spare is taken out of
//! the registry under the lock by the one pair that uses it, so it is never handed out twice,
//! and never reused after a connection.

use std::{sync::atomic::Ordering, sync::Arc, time::Instant};

use tssx_common::segment::{End, GiveUp, JOIN_NONE, JOIN_REFUSED};

use tssx_shm::segment::Segment;

use super::{
    registry::{Alive, Connection, FdNow, Finished, Reaped, SwappedLine},
    Control,
};

/// How old a connect event of the cgroup hook must be before a socket that is not connected
/// counts as gone: the hook runs before the kernel connects the socket, and a sweep may look
/// in between.
const COOKIE_SETTLE_NS: u64 = 1_000_000_000;

/// Most spare segments kept ready (each is one memfd and one mapped header page until used).
pub const SPARE_SEGMENTS: usize = 4;

impl Control {
    /// Traces the connections that completed their migration (`swapped`) and frees those whose
    /// segment says they are over. Memory only: call often (every 100 ms).
    pub fn progress(&self) {
        let now = Instant::now();
        let (swapped, reaped) = {
            let mut registry = self.lock();
            (registry.take_swapped(), registry.reap(&Alive::default(), now, self.timing.join_timeout))
        };
        self.trace_swapped(swapped);
        finish_reaped(self, reaped);
    }

    /// [`Control::progress`], plus what needs the kernel: drops the kernel events whose sockets
    /// are gone (counting the connections nobody claimed as short-lived), the held claims whose
    /// sockets are gone, and frees the connections whose processes are both gone. Call
    /// periodically (every second).
    pub fn sweep(&self) {
        self.sweep_at(Instant::now());
    }

    /// [`Control::sweep`] as if the time were `now` (which must not be earlier than the last
    /// sweep's). The kernel is asked between two critical sections.
    pub(super) fn sweep_at(&self, now: Instant) {
        let (checks, cookie_checks, held, pids) = {
            let mut registry = self.lock();
            registry.forget_stale(now);
            (registry.events_to_check(), registry.cookies_to_check(), registry.held_to_check(), registry.pids_unknown_to(&Alive::default()))
        };
        // The connect hook's events name sockets by cookie: one walk of the connected sockets
        // answers for all of them (none when there are none to check; nothing is dropped if
        // the walk fails).
        let cookie_results: Vec<_> = match cookie_checks.is_empty() {
            true => Vec::new(),
            false => match self.facts.connected_cookies() {
                Ok(live) => cookie_checks.iter().map(|&c| (c, live.get(&c.cookie()).copied())).collect(),
                Err(e) => {
                    tracing::debug!("sock_diag walk of the connected sockets: {e}");
                    Vec::new()
                }
            },
        };
        let socket_now = |pid: u32, fd: i32| match self.facts.socket_inode(pid, fd) {
            Ok(Some(inode)) => FdNow::Socket(inode),
            _ => FdNow::Gone,
        };
        let results: Vec<_> = checks.iter().map(|c| (c.at, socket_now(c.fd().0, c.fd().1))).collect();
        let gone: Vec<u64> =
            held.into_iter().filter(|&(_, pid, fd, inode)| socket_now(pid, fd) != FdNow::Socket(inode)).map(|h| h.0).collect();
        let mut alive = Alive::default();
        for pid in pids {
            alive.insert(pid, self.facts.alive(pid));
        }
        // Ends whose process died: does their socket still exist (another process may hold it)?
        let suspects = self.lock().ends_of_the_dead(&alive);
        let dead_ends: Vec<_> = suspects.into_iter().filter(|&(_, _, inode)| matches!(self.facts.unix_socket(inode), Ok(None))).collect();
        let (short_lived, dropped, swapped, reaped) = {
            let mut registry = self.lock();
            for &(id, end, _) in &dead_ends {
                if registry.end_gone(id, end) {
                    let end = if end == End::Client { "client" } else { "server" };
                    tracing::debug!(connection = id, end, "end gone: its last holder died without closing; its peer sees it closed");
                }
            }
            let mut short_lived = registry.apply_event_checks(&results);
            short_lived.extend(registry.apply_cookie_checks(&cookie_results, super::monotonic_ns(), COOKIE_SETTLE_NS));
            let dropped: Vec<_> = gone.into_iter().filter_map(|token| registry.take_held(token, now)).collect();
            (short_lived, dropped, registry.take_swapped(), registry.reap(&alive, now, self.timing.join_timeout))
        };
        self.short_lived(&short_lived);
        self.sweep_quiet();
        for held in dropped {
            self.unpaired(held, "its socket closed before the peer claimed");
        }
        self.trace_swapped(swapped);
        finish_reaped(self, reaped);
    }

    /// Connections that ended before either end claimed them (each named by its kernel event:
    /// the end, the pattern, when it connected): counted, traced at debug. The quieting's lock
    /// is taken once for all of them (a sweep may bring thousands).
    pub(super) fn short_lived(&self, ended: &[super::registry::Seen]) {
        if ended.is_empty() {
            return;
        }
        // Relaxed: a counter.
        self.counters.short_lived_plain.fetch_add(ended.len() as u64, Ordering::Relaxed);
        // The connect hook's events (they name no fd) on a pattern the program names alone: a
        // streak of their process (see `quiet`).
        let mut streaks = ended.iter().filter(|seen| seen.end.fd < 0 && self.kernel_quiets(seen.path_id)).peekable();
        if streaks.peek().is_some() {
            let mut quieting = self.quieting.lock().unwrap_or_else(|p| p.into_inner());
            for seen in streaks {
                quieting.cold(seen.end.pid, seen.path_id, seen.ts_ns);
            }
        }
        // At info level (the default), nothing else: the name is looked up only for the line.
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        for seen in ended {
            let path = self.path_name(seen.path_id);
            tracing::debug!(
                pid = seen.end.pid,
                // (None for a connect the connect hook saw: it names no fd.)
                fd = (seen.end.fd >= 0).then_some(seen.end.fd),
                path,
                reason = "short-lived: closed before either end claimed (or no end could: no hook, a socket another image shares, or a path its hooks found cool, see --cool-after)",
                "not swapped"
            );
        }
    }

    /// Traces `swapped` lines.
    fn trace_swapped(&self, lines: Vec<SwappedLine>) {
        for line in lines {
            trace_swapped(self, &line);
        }
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
            let segment = match Segment::create_growing(self.ring_size, self.ring_initial()) {
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

    /// Wakes the spare-segment maker (a pair used a spare, or a connection went live).
    pub(super) fn want_spares(&self) {
        self.spares_wanted.notify_one();
    }

    /// Starts the spare-segment maker's thread.
    pub(super) fn start_spare_maker(self: &Arc<Self>) -> std::io::Result<()> {
        let control = Arc::clone(self);
        std::thread::Builder::new().name("tssx-spares".into()).spawn(move || control.make_spares()).map(drop)
    }
}

/// Traces one `swapped` line and counts it.
fn trace_swapped(control: &Control, line: &SwappedLine) {
    // Relaxed: a counter.
    control.counters.swapped.fetch_add(1, Ordering::Relaxed);
    let SwappedLine { id, path, pattern, client, server, switched_client_to_server, switched_server_to_client, migrated_after_us } = line;
    tracing::info!(
        connection = id,
        path,
        pattern,
        client,
        server,
        switched_client_to_server,
        switched_server_to_client,
        migrated_after_us,
        "swapped {client} <-> {server}"
    );
}

/// Why a connection that never committed was given up, from its ends' `joined` values and the
/// reason code each stored with a refusal (see [`GiveUp`]).
fn given_up_reason(joined: [(u32, u32); 2]) -> String {
    let name = |end: End| if end == End::Client { "client" } else { "server" };
    for end in [End::Client, End::Server] {
        let (joined, code) = joined[end.index()];
        if joined == JOIN_REFUSED {
            let why = match GiveUp::from_u32(code) {
                Some(why) => why.text().to_owned(),
                None if code == 0 => "no reason given".to_owned(),
                None => format!("an unknown reason (code {code})"),
            };
            return format!("the {} gave the segment up before anything went on the rings: {why}", name(end));
        }
    }
    for end in [End::Client, End::Server] {
        if joined[end.index()].0 == JOIN_NONE {
            return format!("the segment never reached the {} (its claim ended first)", name(end));
        }
    }
    "given up before anything went on the rings".to_owned()
}

/// Frees and traces what a reap took out, after the registry lock is released: the spares first
/// (an idle agent holds no memfd by the time its `closed` lines appear), then each connection:
/// `swapped` if that was not traced yet, `not swapped` if it never committed (info when an end
/// gave it up, debug when its ends closed or died before migrating), `handed back`, and
/// `closed` with its bytes through shared memory.
pub(super) fn finish_reaped(control: &Control, reaped: Reaped) {
    let Reaped { spares, freed } = reaped;
    drop(spares);
    for (conn, why) in freed {
        let Connection { id, ref path, .. } = conn;
        let swapped = conn.swapped_traced || conn.swapped_line().inspect(|line| trace_swapped(control, line)).is_some();
        let committed = conn.committed();
        let (client, server) = (conn.client.label(), conn.server.label());
        match why {
            Finished::GaveUp => {
                let reason = given_up_reason(conn.joined_and_why());
                tracing::info!(connection = id, path, client, server, reason, "not swapped");
            }
            Finished::HandedBack => {
                // The one hand-back the agent sees the cause of: a process of the connection
                // set up an io_uring (its hook was signalled; see `tssx_hook::uring`). Others
                // are the hooks' own (a call only the kernel serves, an image without the hook).
                let io_uring = conn.io_uring || [conn.client.pid, conn.server.pid].into_iter().any(|pid| control.facts.uses_io_uring(pid));
                let reason = if io_uring { "io_uring" } else { "by an end (a call only the kernel serves, or an image without the hook)" };
                tracing::info!(connection = id, path, client, server, reason, "handed back to the socket")
            }
            Finished::NeverJoined | Finished::ProcessesGone | Finished::Closed if !committed && !swapped => {
                let reason = match why {
                    Finished::NeverJoined => "both ends closed before picking the segment up",
                    Finished::ProcessesGone => "both processes exited before migrating",
                    _ => "both ends closed before migrating",
                };
                tracing::debug!(connection = id, path, client, server, reason, "not swapped");
            }
            _ => {}
        }
        if !committed && !swapped {
            // Relaxed: a counter.
            control.counters.given_up.fetch_add(1, Ordering::Relaxed);
        }
        let (c2s, s2c) = conn.bytes_each_way();
        // The capacity each ring reached, and the pages resident at the end.
        let [ring_client_to_server, ring_server_to_client] = conn.segment.ring_capacities();
        let resident_bytes = conn.segment.resident_bytes().unwrap_or(0);
        tracing::info!(
            connection = id,
            path,
            bytes_client_to_server = c2s,
            bytes_server_to_client = s2c,
            ring_client_to_server,
            ring_server_to_client,
            resident_bytes,
            "closed: segment freed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{
        os::fd::AsRawFd as _,
        sync::{atomic::Ordering, Arc},
        time::{Duration, Instant},
    };

    use tssx_common::{
        control::Role,
        segment::{End, GiveUp, SegmentState, JOIN_MAPPED, JOIN_REFUSED},
    };
    use tssx_shm::segment::Segment;

    use super::{super::fake::*, given_up_reason, SPARE_SEGMENTS};
    use crate::control::{claim::Claimant, Control};

    const CLIENT: u32 = 100;
    const SERVER: u32 = 200;

    /// Connection `n` on the watched path (client `CLIENT + n` fd 5, server `SERVER` fd
    /// `10 + n`), both ends claimed: its segment.
    fn paired(kernel: &Arc<FakeKernel>, control: &Control, n: u32) -> Arc<Segment> {
        let fd = 10 + n as i32;
        kernel.connection((CLIENT + n, 5, 1000 + n), (SERVER, Some(fd), 2000 + n));
        control.record(&connect_event(CLIENT + n, 5));
        let mut segment = None;
        let mut hooks = Vec::new(); // open until both claims are answered
        for (pid, role, fd) in [(CLIENT + n, Role::Client, 5), (SERVER, Role::Server, fd)] {
            let (agent, hook) = control_connection();
            let decision = control.claim(Claimant { pid, uid: 0, role, fd, flags: 0 }, agent);
            if let super::super::claim::Decision::Paired(p) = &decision {
                segment = Some(Arc::clone(&p.segment));
            }
            control.deliver(decision);
            hooks.push(hook);
        }
        let segment = segment.expect("paired");
        assert_eq!(segment.state(), Some(SegmentState::Pending), "both answered");
        segment
    }

    /// What a hook does when it maps the segment.
    /// Connections 1 and 2, paired, both ends of each joined.
    fn two_joined(kernel: &Arc<FakeKernel>, control: &Control) -> (Arc<Segment>, Arc<Segment>) {
        let (first, second) = (paired(kernel, control, 1), paired(kernel, control, 2));
        for segment in [&first, &second] {
            join(segment, End::Client);
            join(segment, End::Server);
        }
        (first, second)
    }

    fn join(segment: &Segment, end: End) {
        // Release, then SeqCst, as the hook's join.
        segment.header().refcount[end.index()].store(1, Ordering::Release);
        segment.header().ends[end.index()].joined.store(JOIN_MAPPED, Ordering::SeqCst);
    }

    fn ids(control: &Control) -> Vec<u64> {
        control.status().iter().map(|s| s.id).collect()
    }

    #[test]
    fn swapped_is_counted_once_and_the_status_shows_the_switch() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        let segment = paired(&kernel, &control, 1);
        join(&segment, End::Client);
        join(&segment, End::Server);
        let header = segment.header();
        header.ends[0].switch_at.store(64, Ordering::SeqCst);
        segment.transition(SegmentState::Pending, SegmentState::Active).unwrap();
        let status = control.status();
        assert_eq!(
            (status[0].state.as_str(), status[0].switched_client_to_server, status[0].switched_server_to_client),
            ("swapped", Some(64), None)
        );
        header.ends[1].switch_at.store(0, Ordering::SeqCst);
        control.progress();
        assert_eq!(control.stats().swapped, 0, "not traced before both ends are active");
        header.ends[0].active_ns.store(EVENT_NS + 3_000_000, Ordering::Relaxed);
        header.ends[1].active_ns.store(EVENT_NS + 2_000_000, Ordering::Relaxed);
        control.progress();
        control.progress();
        assert_eq!(control.stats().swapped, 1);
        // Both close: freed by the next pass, not given up.
        header.refcount.iter().for_each(|r| r.store(0, Ordering::Release));
        control.progress();
        assert!(ids(&control).is_empty());
        let stats = control.stats();
        assert_eq!((stats.swapped, stats.given_up, stats.live_segments), (1, 0, 0));
    }

    #[test]
    fn a_connection_given_up_is_freed_and_counted() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        let segment = paired(&kernel, &control, 1);
        join(&segment, End::Server);
        segment.header().ends[0].joined.store(JOIN_REFUSED, Ordering::SeqCst);
        segment.transition(SegmentState::Pending, SegmentState::Plain).unwrap();
        assert_eq!(control.status()[0].state, "plain");
        control.progress();
        assert!(ids(&control).is_empty());
        assert_eq!(control.stats().given_up, 1);
    }

    #[test]
    fn a_refusal_says_why_the_end_gave_up() {
        let closed = given_up_reason([(JOIN_MAPPED, 0), (JOIN_REFUSED, GiveUp::Closed as u32)]);
        assert_eq!(closed, format!("the server gave the segment up before anything went on the rings: {}", GiveUp::Closed.text()));
        assert!(given_up_reason([(JOIN_REFUSED, 0), (JOIN_MAPPED, 0)])
            .ends_with("the client gave the segment up before anything went on the rings: no reason given"));
        assert!(given_up_reason([(JOIN_REFUSED, 999), (JOIN_MAPPED, 0)]).ends_with(": an unknown reason (code 999)"));
    }

    #[test]
    fn a_connection_nobody_joined_is_freed_after_the_join_timeout() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        paired(&kernel, &control, 1);
        let joined_one = paired(&kernel, &control, 2);
        join(&joined_one, End::Client);
        let late = Instant::now() + TEST_TIMING.join_timeout + Duration::from_millis(1);
        control.sweep_at(Instant::now());
        assert_eq!(ids(&control), [1, 2]);
        control.sweep_at(late);
        assert_eq!(ids(&control), [2], "an end that joined gives up itself (and the state says so)");
        assert_eq!(control.stats().given_up, 1);
    }

    #[test]
    fn the_sweep_reaps_dead_connections_and_then_the_spares() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        let (first, _second) = two_joined(&kernel, &control);
        control.refill_spares();
        assert_eq!(control.stats().spare_segments, SPARE_SEGMENTS);
        // Both ends of the first closed (Release, as a hook's last close).
        first.header().refcount.iter().for_each(|r| r.store(0, Ordering::Release));
        control.sweep();
        assert_eq!(ids(&control), [2]);
        assert_eq!(control.stats().spare_segments, SPARE_SEGMENTS, "spares stay while connections are live");
        // One process gone: kept; both: freed.
        kernel.kill(CLIENT + 2);
        control.sweep();
        assert_eq!(ids(&control), [2]);
        kernel.kill(SERVER);
        control.sweep();
        assert!(ids(&control).is_empty());
        let stats = control.stats();
        assert_eq!((stats.live_segments, stats.spare_segments), (0, 0), "an idle agent holds no memfd");
        control.refill_spares();
        assert_eq!(control.stats().spare_segments, 0, "no spares while nothing is live");
    }

    #[test]
    fn a_pair_takes_a_spare_that_is_never_handed_out_again() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        let first = paired(&kernel, &control, 1);
        control.refill_spares();
        let second = paired(&kernel, &control, 2);
        assert_eq!(control.stats().spare_segments, SPARE_SEGMENTS - 1, "the pair used a spare");
        let third = paired(&kernel, &control, 3);
        assert_eq!(control.stats().spare_segments, SPARE_SEGMENTS - 2);
        // Three connections, three distinct memfds, each with both TSSX bits.
        let fds: Vec<i32> = [&first, &second, &third].iter().map(|s| s.fd().unwrap().as_raw_fd()).collect();
        assert!(fds[0] != fds[1] && fds[1] != fds[2] && fds[0] != fds[2], "{fds:?}");
        for segment in [&first, &second, &third] {
            assert!(segment.tssx_bit(End::Client) && segment.tssx_bit(End::Server));
        }
    }

    /// The connect hook's events are checked by cookie, in one walk of the connected sockets:
    /// a live socket keeps its event, a gone one counts as a short-lived connection, and one
    /// whose socket never showed up connected (a failed connect) goes once it is old enough.
    #[test]
    fn connect_hook_events_of_closed_sockets_count_as_short_lived_connections() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        for n in 1..=2 {
            kernel.connection((CLIENT + n, 5, 1000 + n), (SERVER, Some(10 + n as i32), 2000 + n));
            control.record(&hook_connect_event(CLIENT + n, cookie_of(1000 + n)));
        }
        // A connect that failed: no such socket ever connected (its event is old: EVENT_NS).
        control.record(&hook_connect_event(CLIENT + 3, cookie_of(1003)));
        // A connect still under way: not connected yet, its event just now.
        let mut young = hook_connect_event(CLIENT + 4, cookie_of(1004));
        young.ts_ns = crate::control::monotonic_ns();
        control.record(&young);
        control.sweep();
        let stats = control.stats();
        assert_eq!((stats.short_lived_plain, stats.unclaimed_events), (1, 3), "the failed connect went, the young one waits");
        assert_eq!(kernel.asked("connected_cookies"), 1, "one walk for all of them");
        kernel.forget_socket(1001);
        kernel.forget_socket(2001);
        control.sweep();
        let stats = control.stats();
        assert_eq!((stats.short_lived_plain, stats.unclaimed_events), (2, 2));
        // A claimed connection is no short-lived one.
        let (agent, _hook) = control_connection();
        let decision = control.claim(Claimant { pid: CLIENT + 2, uid: 0, fd: 5, role: Role::Client, flags: 0 }, agent);
        assert!(matches!(decision, super::super::claim::Decision::Held));
        kernel.forget_socket(1002);
        kernel.forget_socket(2002);
        control.sweep();
        assert_eq!(control.stats().short_lived_plain, 2);
    }

    #[test]
    fn events_of_closed_sockets_count_as_short_lived_connections() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        // Three connections nobody claims; one stays open.
        for n in 1..=3 {
            kernel.connection((CLIENT + n, 5, 1000 + n), (SERVER, Some(10 + n as i32), 2000 + n));
            control.record(&connect_event(CLIENT + n, 5));
            control.record(&accept_event(SERVER, 10 + n as i32));
        }
        control.sweep();
        assert_eq!(control.stats().unclaimed_events, 6, "live sockets: kept");
        for n in 1..=2 {
            kernel.close(CLIENT + n, 5);
            kernel.close(SERVER, 10 + n as i32);
        }
        control.sweep();
        let stats = control.stats();
        assert_eq!((stats.short_lived_plain, stats.unclaimed_events), (2, 2), "one per connection, counted by its connect");
        // The same fd connected again: the replaced event's socket is gone.
        control.record(&connect_event(CLIENT + 3, 5));
        assert_eq!(control.stats().short_lived_plain, 3);
        // An event a week old still backs a claim of its live socket.
        let later = Instant::now() + Duration::from_secs(7 * 24 * 3600);
        control.sweep_at(later);
        assert_eq!(control.stats().unclaimed_events, 2);
    }

    #[test]
    fn an_end_whose_last_holder_died_is_closed_for_its_peer() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        let (first, second) = two_joined(&kernel, &control);
        // Acquire: as a peer's hook reads it.
        let held = |s: &Segment, end: End| s.header().refcount[end.index()].load(Ordering::Acquire);
        // Client 1 is SIGKILLed: its socket is gone with it.
        kernel.kill(CLIENT + 1);
        kernel.forget_socket(1001);
        // Client 2 died too, but passed its socket to another process first: it still exists.
        kernel.kill(CLIENT + 2);
        control.sweep();
        assert_eq!((held(&first, End::Client), held(&first, End::Server)), (0, 1), "the dead end reads as closed");
        assert_eq!((held(&second, End::Client), held(&second, End::Server)), (1, 1), "a socket still held elsewhere is kept");
        // The survivor closes: both ends closed, freed.
        first.header().refcount[End::Server.index()].store(0, Ordering::Release);
        control.progress();
        assert_eq!(ids(&control), [2]);
    }

    #[test]
    fn a_held_claim_whose_socket_is_gone_is_dropped_by_the_sweep() {
        let kernel = Arc::new(FakeKernel::default());
        let control = kernel.control(8);
        kernel.connection((CLIENT, 5, 1005), (SERVER, Some(7), 2007));
        let (agent, _hook) = control_connection();
        let decision = control.claim(Claimant { pid: SERVER, uid: 0, role: Role::Server, fd: 7, flags: 0 }, agent);
        assert!(matches!(decision, super::super::claim::Decision::Held));
        control.sweep();
        assert_eq!(control.stats().held_claims, 1);
        kernel.close(SERVER, 7);
        control.sweep();
        let stats = control.stats();
        assert_eq!((stats.held_claims, stats.peer_never_claimed), (0, 1));
        // Its peer's connect event, once gone, is not counted as short-lived as well.
        control.record(&connect_event(CLIENT, 5));
        control.sweep();
        kernel.close(CLIENT, 5);
        control.sweep();
        assert_eq!(control.stats().short_lived_plain, 0);
    }
}
