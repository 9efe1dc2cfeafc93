//! The agent's main loop: read kernel events, keep the listener maps in step, trace.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tssx_common::event::EventKind;

use crate::{
    control,
    feed::{Classified, EventFeed},
    kernel,
    loader::{WatchMode, Watcher},
    paths::WatchedPath,
    state::StateDir,
    trace::trace_event,
};

/// How often the event loop looks at the live segments' headers (`swapped` lines, finished
/// connections).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// What `tssx-agent` was asked to do.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Watched socket addresses; a path's id is its index here.
    pub paths: Vec<WatchedPath>,
    /// The state directory (lock, published paths, control socket).
    pub state_dir: PathBuf,
    /// Capacity in bytes of each of a segment's two rings: the most a ring grows to.
    pub ring_size: usize,
    /// Capacity a ring starts with (at most `ring_size`; equal to it: rings that never grow).
    pub ring_initial: usize,
    /// Most segments live at once (beyond: plain, traced); with `ring_size` this bounds the
    /// shared memory the agent hands out. `None`: derived from the machine's memory and the
    /// fd limit ([`default_max_connections`], [`fd_capacity`]).
    pub max_connections: Option<usize>,
    /// How long a connection lives before its hooks claim a segment (published for hooks).
    pub claim_after: Duration,
    /// Connections of a path that end plain in a row before hooks track only probes of it
    /// (published for hooks; 0: never).
    pub cool_after: u32,
    /// Threads whose calls park in the eBPF per-thread array (`None`: one per possible thread
    /// id, see [`crate::loader::Watcher::load`]); tests set a small number to exercise the hash
    /// map the others use.
    pub parked_slots: Option<u32>,
    /// How the kernel watcher sees connections (the default: the connect hook).
    pub watch_mode: WatchMode,
}

/// Runs the agent until SIGINT or SIGTERM. Everything is detached when it returns.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let made = kernel::ensure_mounts().context("preparing bpffs and tracefs")?;
    for target in made {
        tracing::info!(target, "mounted");
    }
    let state = StateDir::take(&config.state_dir)?;
    let max_connections = match config.max_connections {
        Some(n) => {
            let limit = raise_fd_limit(n);
            if fd_capacity(limit) < n {
                tracing::warn!(
                    limit,
                    max_connections = n,
                    "the fd limit is lower than --max-connections needs: claims beyond it stay plain"
                );
            }
            n
        }
        None => {
            let memory = mem_total().unwrap_or(0);
            let by_memory = default_max_connections(memory, config.ring_size);
            let limit = raise_fd_limit(by_memory);
            let n = by_memory.min(fd_capacity(limit)).max(1);
            tracing::info!(
                max_connections = n,
                by_memory,
                mem_total = memory,
                fd_limit = limit,
                ring_size = config.ring_size,
                "connection limit derived from memory (a quarter of it for shared memory, 2 rings and a header each) and the fd limit"
            );
            n
        }
    };
    let (mut watcher, channels) = Watcher::load(&config.paths, config.parked_slots, config.watch_mode)?;
    let feed = std::sync::Arc::new(EventFeed::new(channels.events, config.paths.clone()));
    let control = control::Control::new(
        config.paths.clone(),
        config.ring_size,
        max_connections,
        Some(std::sync::Arc::clone(&feed)),
        control::Host::new(Some(channels.io_uring_users), Some(channels.handback), Some(channels.quiet)),
    );
    control.set_ring_initial(config.ring_initial);
    // The kernel's cooling follows the hooks' (see `control::quiet`): off with
    // `--claim-after 0`, where the hooks track every connection.
    control.set_cool_after(if config.claim_after.is_zero() { 0 } else { config.cool_after });
    control::serve(std::sync::Arc::clone(&control), state.dir())?;
    state.publish_paths(&config.paths, config.claim_after, config.cool_after)?;

    // SAFETY: the fd belongs to the ring buffer inside `feed`, which is kept alive (by the
    // control plane and this function) until after this AsyncFd is dropped (see the end).
    let mut events = unsafe { AsyncFd::register(RawFdHolder(feed.raw_fd())) }.context("polling the events ring buffer")?;
    let mut logs = match watcher.log_fd().map(RawFdHolder) {
        // SAFETY: the fd belongs to the logger inside `watcher`, which is dropped only after
        // this AsyncFd (see the end of this function).
        Some(fd) => Some(unsafe { AsyncFd::register(fd) }.context("polling the eBPF log ring buffer")?),
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut drop_check = tokio::time::interval(Duration::from_secs(1));
    // The `swapped` lines and the freeing of finished connections read the segments' headers
    // only: often, so that a switch is traced well within a second.
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dropped_seen = 0u64;

    let paths: Vec<String> = config.paths.iter().map(ToString::to_string).collect();
    tracing::info!(
        paths = paths.join(","),
        state_dir = %state.dir().display(),
        pid = std::process::id(),
        claim_after_us = config.claim_after.as_micros() as u64,
        cool_after = config.cool_after,
        watcher = watcher.mode().name(),
        "ready: watching {} pattern(s)",
        paths.len()
    );

    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                // Cleared before reading: an event submitted meanwhile makes it ready again.
                guard.context("waiting for events")?.clear_ready();
                handle_events(&mut watcher, &config.paths, &feed.take(|event| control.record(event)));
            }
            guard = async { logs.as_mut().expect("guarded by the if").readable_mut().await }, if logs.is_some() => {
                let mut guard = guard.context("waiting for eBPF logs")?;
                watcher.flush_logs();
                guard.clear_ready();
            }
            _ = progress.tick() => {
                // Per-connection events do not wake this loop (see the eBPF `emit`): take them here.
                handle_events(&mut watcher, &config.paths, &feed.take(|event| control.record(event)));
                control.progress();
            }
            _ = drop_check.tick() => {
                // (Events were taken on the progress tick, at most 100 ms ago.)
                control.sweep();
                control.set_map_entries(watcher.map_entries());
                if let Ok(n) = watcher.quiet_connects() {
                    control.set_quiet_connects(n);
                }
                let dropped = watcher.dropped_events().unwrap_or(dropped_seen);
                if dropped > dropped_seen {
                    tracing::warn!(dropped = dropped - dropped_seen, total = dropped, "events lost: the events ring buffer was full");
                    dropped_seen = dropped;
                }
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: detaching and exiting"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: detaching and exiting"); break; }
        }
    }
    // The AsyncFds borrow fds owned by the feed and the watcher: deregister them first.
    drop(events);
    drop(logs);
    drop(watcher);
    drop(state);
    tracing::info!("stopped");
    Ok(())
}

/// The share of the machine's memory (`MemTotal`) that the derived default of
/// `--max-connections` lets live segments fill at most: one in this many bytes.
pub const MEMORY_SHARE_DIVISOR: u64 = 4;
/// Bounds of the derived default of `--max-connections` (the option's own range).
pub const DERIVED_MAX_CONNECTIONS: (usize, usize) = (16, 1_000_000);
/// Descriptors the agent needs besides those that scale with the connections (its eBPF maps
/// and programs, the spare segments, the control connections served at once, a margin).
const FIXED_FDS: usize = control::SPARE_SEGMENTS + control::MAX_CONTROL_CONNECTIONS + 256;

/// The default `--max-connections` for a machine with `mem_total` bytes of memory and rings of
/// `ring_size` bytes: as many segments (two rings and a header, each fully touched: the most a
/// connection can pin) as fill [`MEMORY_SHARE_DIVISOR`]'s share of the memory, within
/// [`DERIVED_MAX_CONNECTIONS`]. 24 GiB: 3,066 with 1 MiB rings, 174,762 with 16 KiB rings.
pub fn default_max_connections(mem_total: u64, ring_size: usize) -> usize {
    let per_connection = tssx_common::segment::SegmentLayout::new(ring_size).map_or(2 * ring_size + 4096, |l| l.total_size).max(1) as u64;
    let n = (mem_total / MEMORY_SHARE_DIVISOR / per_connection).min(DERIVED_MAX_CONNECTIONS.1 as u64) as usize;
    n.max(DERIVED_MAX_CONNECTIONS.0)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Descriptors `max_connections` live segments need in the agent at most: one per segment, and
/// one per held claim (a control connection kept open until its peer claims; see
/// [`control::held_claims`]).
pub fn fds_needed(max_connections: usize) -> usize {
    max_connections.saturating_add(control::held_claims(max_connections)).saturating_add(FIXED_FDS)
}

/// The most connections an fd limit of `limit` serves (the inverse of [`fds_needed`]): 15,388
/// with the 20,000 descriptors of our test machines.
pub fn fd_capacity(limit: u64) -> usize {
    let available = usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(FIXED_FDS);
    // From this many connections on, the held claims are at their cap.
    let capped_from = control::MAX_HELD_CLAIMS / control::HELD_PER_CONNECTION;
    if available >= capped_from + control::MAX_HELD_CLAIMS {
        available - control::MAX_HELD_CLAIMS
    } else {
        available / (1 + control::HELD_PER_CONNECTION)
    }
}

/// Raises `RLIMIT_NOFILE` so that `max_connections` segments and their held claims fit: the
/// soft limit up to the hard one, and the hard one too when the agent may (root, with
/// `CAP_SYS_RESOURCE`: up to `fs.nr_open`). Returns the soft limit in force afterwards.
fn raise_fd_limit(max_connections: usize) -> u64 {
    let want = fds_needed(max_connections) as libc::rlim_t;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit reads into a live rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur >= want {
        return limit.rlim_cur;
    }
    if limit.rlim_max < want {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
        let raised = libc::rlimit { rlim_cur: want.min(nr_open.unwrap_or(want)), rlim_max: want.min(nr_open.unwrap_or(want)) };
        // SAFETY: setrlimit reads a live rlimit; without the capability it fails with EPERM
        // and the limit stays as it was.
        if raised.rlim_max > limit.rlim_max && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur = want.min(limit.rlim_max);
    // SAFETY: as above; lowering nothing, raising the soft limit within the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        // SAFETY: getrlimit reads into a live rlimit.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    }
    limit.rlim_cur
}

/// Traces and acts on events in the kernel's order (all of them recorded for claims already).
fn handle_events(watcher: &mut Watcher, paths: &[WatchedPath], taken: &crate::feed::Taken) {
    for seen in taken.recorded.iter().chain(&taken.fresh) {
        handle_event(watcher, seen, paths);
    }
}

fn handle_event(watcher: &mut Watcher, seen: &Classified, paths: &[WatchedPath]) {
    let event = &seen.event;
    if let Some(decision) = seen.listener {
        if let Err(e) = watcher.decide_listener(event.tgid, event.fd, decision) {
            tracing::warn!(pid = event.tgid, fd = event.fd, "could not record the agent's match of a listener: {e:#}");
        }
    }
    if seen.hidden {
        return;
    }
    match event.event_kind() {
        Some(EventKind::Fork) => {
            let child = event.other_pid;
            trace_event(seen, paths);
            if let Err(e) = watcher.inherit_listeners(event.tgid, child) {
                tracing::warn!(child, "could not record inherited listeners: {e:#}");
            }
        }
        Some(EventKind::Exit) => {
            trace_event(seen, paths);
            if let Err(e) = watcher.forget_process(event.tgid) {
                tracing::warn!(pid = event.tgid, "could not forget listeners: {e:#}");
            }
        }
        _ => trace_event(seen, paths),
    }
}

/// A borrowed raw fd for `AsyncFd` (the fd is owned by the logger inside the watcher, which
/// outlives the `AsyncFd`).
struct RawFdHolder(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for RawFdHolder {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_follows_memory_and_ring_size() {
        const GIB: u64 = 1 << 30;
        // A quarter of 24 GiB in segments of two 1 MiB rings and a header page.
        let per = tssx_common::segment::SegmentLayout::new(1 << 20).unwrap().total_size as u64;
        assert_eq!(default_max_connections(24 * GIB, 1 << 20) as u64, 6 * GIB / per);
        assert_eq!(default_max_connections(24 * GIB, 1 << 20), 3066);
        assert_eq!(default_max_connections(24 * GIB, 16 << 10), 174_762);
        // Small rings: 10,000 connections fit a 1 GiB machine with 16 KiB rings.
        assert!(default_max_connections(GIB, 16 << 10) >= 7_000, "{}", default_max_connections(GIB, 16 << 10));
        assert!(default_max_connections(2 * GIB, 16 << 10) >= 10_000);
        // Bounded both ways.
        assert_eq!(default_max_connections(0, 1 << 20), DERIVED_MAX_CONNECTIONS.0);
        assert_eq!(default_max_connections(u64::MAX, 4096), DERIVED_MAX_CONNECTIONS.1);
        assert!(mem_total().is_some_and(|m| m > 64 << 20));
    }

    #[test]
    fn fd_capacity_inverts_fds_needed() {
        for n in [0, 1, 2, 1024, 10_000, 1_000_000] {
            assert_eq!(fd_capacity(fds_needed(n) as u64), n);
            assert_eq!(fd_capacity(fds_needed(n) as u64 - 1), n.saturating_sub(1));
        }
        assert_eq!(fd_capacity(0), 0);
        // 10,000 connections need 50,516 descriptors: more than a default hard limit.
        assert_eq!(fds_needed(10_000), 10_000 + 4_096 + 516);
        assert_eq!(fd_capacity(20_000), 15_388);
    }
}
