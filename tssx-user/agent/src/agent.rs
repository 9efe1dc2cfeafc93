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
    loader::Watcher,
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
    /// Capacity in bytes of each of a segment's two rings.
    pub ring_size: usize,
    /// Most segments live at once (beyond: plain, traced); with `ring_size` this bounds the
    /// shared memory the agent hands out.
    pub max_connections: usize,
    /// How long a connection lives before its hooks claim a segment (published for hooks).
    pub claim_after: Duration,
}

/// Runs the agent until SIGINT or SIGTERM. Everything is detached when it returns.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let made = kernel::ensure_mounts().context("preparing bpffs and tracefs")?;
    for target in made {
        tracing::info!(target, "mounted");
    }
    let state = StateDir::take(&config.state_dir)?;
    raise_fd_limit(config.max_connections);
    let (mut watcher, channels) = Watcher::load(&config.paths)?;
    let feed = std::sync::Arc::new(EventFeed::new(channels.events, config.paths.clone()));
    let control = control::Control::new(
        config.paths.clone(),
        config.ring_size,
        config.max_connections,
        Some(std::sync::Arc::clone(&feed)),
        Some(channels.io_uring_users),
    );
    control::serve(std::sync::Arc::clone(&control), state.dir())?;
    state.publish_paths(&config.paths, config.claim_after)?;

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

/// Each live or spare segment holds an fd in the agent, and each control connection (served, or
/// a held claim's) one more: raise the soft `RLIMIT_NOFILE` towards the hard limit so that
/// `max_connections` segments and their held claims fit.
fn raise_fd_limit(max_connections: usize) {
    let held = max_connections * control::HELD_PER_CONNECTION;
    let want = (max_connections + held + control::SPARE_SEGMENTS + control::MAX_CONTROL_CONNECTIONS + 256) as libc::rlim_t;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= want {
            return;
        }
        limit.rlim_cur = want.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    if limit.rlim_cur < want {
        tracing::warn!(
            limit = limit.rlim_cur,
            max_connections,
            "the fd limit is lower than --max-connections needs: claims beyond it stay plain"
        );
    }
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
