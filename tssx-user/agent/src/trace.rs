//! Turning kernel events into trace lines.
//!
//! Each line is one `tracing` event whose message is the event kind (`bind`, `listen`,
//! `connect`, `accept`, `fork`, `exit`, `io_uring`) with the facts as fields, so the text format reads
//! `connect pid=812 tid=812 comm="client" uid=0 fd=3 path=/run/a.sock` and the JSON format
//! carries the same keys. Per-connection lines (`connect`, `accept`) and `io_uring` (any process
//! on the host) are at DEBUG level (`-v`):
//! a busy server must not flood the log; `status --stats` counts them. The others are at INFO.

use tssx_common::event::{Event, EventKind};

use crate::paths::WatchedPath;

/// Emits the trace line for one event. `paths` maps path ids to the watched paths.
pub fn trace_event(event: &Event, paths: &[WatchedPath]) {
    let comm = String::from_utf8_lossy(event.comm_bytes());
    let comm = comm.as_ref();
    let path = paths.get(event.path_id as usize).map(ToString::to_string).unwrap_or_default();
    let (pid, tid, uid, fd) = (event.tgid, event.pid, event.uid, event.fd);
    match event.event_kind() {
        Some(EventKind::Bind) => tracing::info!(pid, tid, comm, uid, fd, path, "bind"),
        Some(EventKind::Listen) => tracing::info!(pid, tid, comm, uid, fd, path, "listen"),
        Some(EventKind::Connect) => tracing::debug!(pid, tid, comm, uid, fd, path, "connect"),
        Some(EventKind::Accept) => {
            tracing::debug!(pid, tid, comm, uid, listen_fd = fd, fd = event.new_fd, path, "accept")
        }
        Some(EventKind::Fork) => {
            tracing::info!(pid, comm, child = event.other_pid, "fork: child inherits watched listeners")
        }
        Some(EventKind::Exit) => tracing::info!(pid, comm, "exit: process with watched listeners ended"),
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
