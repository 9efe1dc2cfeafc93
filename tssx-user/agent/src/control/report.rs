//! What `tssx-agent status` shows: the live connections, and the agent's resource counts
//! (`status --stats`). Read under the registry lock (memory only); serialised by the caller
//! after it.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use serde::Serialize;
use tssx_common::segment::SegmentState;

use super::{registry::EndInfo, Control};

/// A live connection as `tssx-agent status` lists it (one JSON object per line).
#[derive(Debug, Serialize)]
pub struct ConnectionStatus {
    /// The agent's id for the connection.
    pub id: u64,
    /// The watched path.
    pub path: String,
    /// The connecting end.
    pub client: EndInfo,
    /// The accepting end, once it joined.
    pub server: Option<EndInfo>,
    /// `pending`, `active`, `plain` or `closed`.
    pub state: String,
    /// Bytes the client wrote through shared memory.
    pub bytes_client_to_server: u64,
    /// Bytes the server wrote through shared memory.
    pub bytes_server_to_client: u64,
}

/// Counts of the agent's resources (`tssx-agent status --stats`): what must stay flat however
/// many connections come and go.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// The agent's pid.
    pub pid: u32,
    /// Segments the agent holds (pending, active, or plain/closed not yet swept).
    pub live_segments: usize,
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--ring-size`.
    pub ring_size: usize,
    /// Bytes of shared memory the live segments span.
    pub segment_bytes: u64,
    /// Fresh segments created ahead of claims (not counted in `live_segments`).
    pub spare_segments: usize,
    /// Client claims waiting for their server.
    pub pending_claims: usize,
    /// Kernel connect/accept events recorded and not yet claimed or expired.
    pub unclaimed_events: usize,
    /// Control connections being served now (other than the one asking for these stats).
    pub control_connections: usize,
    /// Control connections closed unserved because
    /// [`MAX_CONTROL_CONNECTIONS`](super::MAX_CONTROL_CONNECTIONS) were busy.
    pub control_connections_refused: u64,
    /// Entries in each eBPF hash map (updated every second by the event loop).
    pub bpf_map_entries: BTreeMap<String, usize>,
}

impl Control {
    /// The agent's resource counts.
    pub fn stats(&self) -> Stats {
        let registry = self.lock();
        let stats = Stats {
            pid: std::process::id(),
            live_segments: registry.live_count(),
            max_connections: self.max_connections,
            ring_size: self.ring_size,
            segment_bytes: registry.connections().map(|c| c.segment.layout().total_size as u64).sum(),
            spare_segments: registry.spare_count(),
            pending_claims: registry.pending_count(),
            unclaimed_events: registry.unclaimed_events(),
            // Relaxed: counters, no data hangs on them.
            control_connections: self.load.serving.load(Ordering::Relaxed),
            control_connections_refused: self.load.refused.load(Ordering::Relaxed),
            bpf_map_entries: BTreeMap::new(),
        };
        drop(registry);
        Stats { bpf_map_entries: self.map_entries.lock().unwrap_or_else(|p| p.into_inner()).clone(), ..stats }
    }

    /// The live connections.
    pub fn status(&self) -> Vec<ConnectionStatus> {
        self.lock()
            .connections()
            .map(|c| (c, c.bytes_each_way()))
            .map(|(c, (bytes_client_to_server, bytes_server_to_client))| ConnectionStatus {
                id: c.id,
                path: c.path.clone(),
                client: c.client.clone(),
                server: c.server.clone(),
                state: match c.segment.state() {
                    Some(SegmentState::Pending) => "pending",
                    Some(SegmentState::Active) => "active",
                    Some(SegmentState::Plain) => "plain",
                    Some(SegmentState::Closed) => "closed",
                    None => "corrupt",
                }
                .to_owned(),
                bytes_client_to_server,
                bytes_server_to_client,
            })
            .collect()
    }
}
