//! Turning kernel events into trace lines.
//!
//! Each line is one `tracing` event whose message is the event kind (`bind`, `listen`,
//! `connect`, `accept`, `fork`, `exit`, `io_uring`) with the facts as fields, so the text format reads
//! `connect pid=812 tid=812 comm="client" uid=0 fd=3 path=/run/a.sock` and the JSON format
//! carries the same keys. A connect seen by the cgroup hook (the default watcher) has the
//! socket's `cookie` instead of its `fd`, and is an attempt (the hook runs before the kernel
//! looks the address up); bind, listen and accept lines come with `--syscall-tracepoints` only. Per-connection lines (`connect`, `accept`) and `io_uring` (any process
//! on the host) are at DEBUG level (`-v`):
//! a busy server must not flood the log; `status --stats` counts them. The others are at INFO.

use tssx_common::event::EventKind;

use crate::{
    feed::Classified,
    paths::{display_name, WatchedPath},
};

/// Emits the trace line for one event. `paths` maps path ids to the watched patterns.
///
/// `pattern` names the watched pattern that matched; `path` is the socket's address for bind
/// and connect (absolute: a relative one, resolved, also appears `as_written`), and the
/// pattern for listen and accept, whose events carry no address.
pub fn trace_event(seen: &Classified, paths: &[WatchedPath]) {
    let event = &seen.event;
    let per_connection = matches!(event.event_kind(), Some(EventKind::Connect | EventKind::Accept));
    if per_connection && !tracing::enabled!(tracing::Level::DEBUG) {
        return; // (without -v: one per connection, built for nothing)
    }
    let comm = String::from_utf8_lossy(event.comm_bytes());
    let comm = comm.as_ref();
    let pattern = paths.get(event.path_id as usize).map(ToString::to_string).unwrap_or_default();
    let path = if event.addr_len > 0 { display_name(event.addr_bytes()) } else { pattern.clone() };
    let pattern = pattern.as_str();
    let as_written = seen.written.as_deref();
    let (pid, tid, uid, fd) = (event.tgid, event.pid, event.uid, event.fd);
    match event.event_kind() {
        Some(EventKind::Bind) => tracing::info!(pid, tid, comm, uid, fd, path, pattern, as_written, "bind"),
        Some(EventKind::Listen) => tracing::info!(pid, tid, comm, uid, fd, path, pattern, "listen"),
        Some(EventKind::Connect) => match event.socket_cookie() {
            // Seen by the cgroup hook: before the kernel decided, with the socket's cookie.
            Some(cookie) => tracing::debug!(pid, tid, comm, uid, cookie, path, pattern, as_written, "connect"),
            None => tracing::debug!(pid, tid, comm, uid, fd, path, pattern, as_written, "connect"),
        },
        Some(EventKind::Accept) => {
            tracing::debug!(pid, tid, comm, uid, listen_fd = fd, fd = event.new_fd, path, pattern, "accept")
        }
        Some(EventKind::Fork) => {
            tracing::info!(pid, comm, child = event.other_pid, "fork: child inherits watched listeners")
        }
        Some(EventKind::Exit) => tracing::info!(pid, comm, "exit: process with watched listeners ended"),
        Some(EventKind::IoUring) if event.other_pid != 0 => {
            tracing::info!(
                pid,
                tid,
                comm,
                uid,
                fd,
                handback_signal = event.other_pid,
                "io_uring: the process set up an io_uring while its hook held segments: signalled to hand its connections back; none swaps from now on"
            )
        }
        Some(EventKind::IoUring) => {
            tracing::debug!(
                pid,
                comm,
                uid,
                fd,
                "io_uring: the process set up an io_uring: its connections (and its children's) stay plain from now on"
            )
        }
        None => tracing::warn!(kind = event.kind, "unknown event kind from the eBPF programs"),
    }
}
