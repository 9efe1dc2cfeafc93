//! What `tssx-agent status` shows: the live connections, and the agent's counters and resource
//! counts (`status --stats`). Read under the registry lock (memory only); serialised by the
//! caller after it.

use std::{collections::BTreeMap, sync::atomic::Ordering};

use serde::Serialize;
use tssx_common::segment::{End, SegmentState};

use super::{registry::EndInfo, Control};

/// A live connection as `tssx-agent status` lists it (one JSON object per line).
#[derive(Debug, Serialize)]
pub struct ConnectionStatus {
    /// The agent's id for the connection.
    pub id: u64,
    /// The socket's address.
    pub path: String,
    /// The watched pattern that covers it.
    pub pattern: String,
    /// The connecting end.
    pub client: EndInfo,
    /// The accepting end.
    pub server: EndInfo,
    /// The client's and the server's socket inodes (as `ss -x` and `/proc/PID/fd` show them).
    pub socket_inodes: [u32; 2],
    /// `migrating` (handed out, not committed yet), `swapped` (some direction moved onto the
    /// rings), `plain` (given up or handed back; freed soon) or `closed`.
    pub state: String,
    /// Where each end is in its migration, `[client, server]`: `not joined` (has not mapped the
    /// segment), `joined`, `ready` (counting its socket bytes), `switched` (its writes are on
    /// its ring), `active` (both directions are), or `refused` (it gave the segment up).
    pub ends: [&'static str; 2],
    /// Bytes the client wrote to the socket before its writes moved onto its ring (`null`:
    /// not yet).
    pub switched_client_to_server: Option<u64>,
    /// Bytes the server wrote to the socket before its writes moved onto its ring.
    pub switched_server_to_client: Option<u64>,
    /// Bytes the client wrote through shared memory.
    pub bytes_client_to_server: u64,
    /// Bytes the server wrote through shared memory.
    pub bytes_server_to_client: u64,
    /// The capacity each ring uses now, `[client->server, server->client]` (they start at
    /// `--ring-initial` and grow up to `--ring-size`).
    pub ring_capacity: [usize; 2],
    /// Bytes of the connection's segment resident in memory (`mincore` of the agent's mapping:
    /// the pages either end touched).
    pub resident_bytes: Option<u64>,
}

/// The agent's counters and resource counts (`tssx-agent status --stats`): the resource counts
/// must stay flat however many connections come and go.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// The agent's pid.
    pub pid: u32,
    /// The watched patterns, as given to `--paths`.
    pub patterns: Vec<String>,
    /// Segments the agent holds (migrating, swapped, or plain/closed not yet freed).
    pub live_segments: usize,
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--ring-size`: the most a ring grows to.
    pub ring_size: usize,
    /// `--ring-initial`: the capacity a ring starts with.
    pub ring_initial: usize,
    /// Bytes of shared memory the live segments span.
    pub segment_bytes: u64,
    /// Bytes of the live segments resident in memory (`mincore` of the agent's mappings: the
    /// pages the ends touched).
    pub resident_bytes: u64,
    /// `resident_bytes / live_segments` (0 with none).
    pub resident_bytes_per_connection: u64,
    /// Live segments whose rings grew (either direction) past `--ring-initial`.
    pub grown_segments: usize,
    /// Fresh segments created ahead of pairs (not counted in `live_segments`).
    pub spare_segments: usize,
    /// Connections the kernel reported on watched paths since the start: `connect`s and
    /// `accept`s (their trace lines are at debug level).
    pub connects: u64,
    /// See `connects`.
    pub accepts: u64,
    /// Claims received (well-formed claim requests), since the start.
    pub claims: u64,
    /// Claims held now, waiting for the other end's.
    pub held_claims: usize,
    /// Most claims held at once.
    pub max_held_claims: usize,
    /// Connections paired (both ends got a segment), since the start.
    pub paired: u64,
    /// Connections whose ends both completed the migration onto the rings.
    pub swapped: u64,
    /// Paired connections freed before anything went on the rings (an end gave up, or both
    /// closed or died first).
    pub given_up: u64,
    /// Connections that closed before the agent saw a claim for them (their kernel events
    /// dropped unclaimed; their hooks' claims, if any, came after the close: `abandoned`).
    pub short_lived_plain: u64,
    /// Held claims that ended without the other end's claim (peer without the hook, or gone).
    pub peer_never_claimed: u64,
    /// Forked claims answered "retry" (another process held the same end).
    pub retried: u64,
    /// Claims and requests refused (no kernel evidence, or malformed).
    pub refused: u64,
    /// Claims abandoned by their hooks: the socket and the claim's connection closed before the
    /// agent looked (short connections; not counted as refused).
    pub abandoned: u64,
    /// Connects the kernel left unreported because their process's connections on the path
    /// keep ending plain (see `control::quiet`; not in `connects` nor `short_lived_plain`).
    pub quiet_connects: u64,
    /// Client claims made before the accept whose connect was not reported (a quiet path),
    /// answered "retry".
    pub retried_unaccepted: u64,
    /// Kernel connect/accept events kept and not claimed.
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
    /// The agent's counters and resource counts.
    pub fn stats(&self) -> Stats {
        let registry = self.lock();
        let (live_segments, segment_bytes) =
            (registry.live_count(), registry.connections().map(|c| c.segment.layout().total_size as u64).sum());
        let segments: Vec<_> = registry.connections().map(|c| std::sync::Arc::clone(&c.segment)).collect();
        let (spare_segments, held_claims, unclaimed_events) = (registry.spare_count(), registry.held_count(), registry.unclaimed_events());
        drop(registry);
        // Outside the lock: a system call per segment.
        let resident_bytes: u64 = segments.iter().filter_map(|s| s.resident_bytes()).sum();
        let initial = self.ring_initial();
        let grown_segments = segments.iter().filter(|s| s.ring_capacities().iter().any(|&c| c > initial)).count();
        drop(segments);
        // Relaxed: counters, no data hangs on them.
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let counters = &self.counters;
        Stats {
            pid: std::process::id(),
            patterns: self.patterns(),
            live_segments,
            max_connections: self.max_connections,
            ring_size: self.ring_size,
            ring_initial: initial,
            segment_bytes,
            resident_bytes,
            resident_bytes_per_connection: resident_bytes.checked_div(live_segments as u64).unwrap_or(0),
            grown_segments,
            spare_segments,
            connects: count(&counters.connects),
            accepts: count(&counters.accepts),
            claims: count(&counters.claims),
            held_claims,
            max_held_claims: self.max_held(),
            paired: count(&counters.paired),
            swapped: count(&counters.swapped),
            given_up: count(&counters.given_up),
            short_lived_plain: count(&counters.short_lived_plain),
            peer_never_claimed: count(&counters.peer_never_claimed),
            retried: count(&counters.retried),
            refused: count(&counters.refused),
            abandoned: count(&counters.abandoned),
            quiet_connects: count(&counters.quiet_connects),
            retried_unaccepted: count(&counters.retried_unaccepted),
            unclaimed_events,
            control_connections: self.load.serving.load(Ordering::Relaxed),
            control_connections_refused: self.load.refused.load(Ordering::Relaxed),
            bpf_map_entries: self.map_entries.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// The live connections.
    pub fn status(&self) -> Vec<ConnectionStatus> {
        self.lock()
            .connections()
            .map(|c| {
                let (bytes_client_to_server, bytes_server_to_client) = c.bytes_each_way();
                ConnectionStatus {
                    id: c.id,
                    path: c.path.to_string(),
                    pattern: c.pattern.to_string(),
                    client: c.client.clone(),
                    server: c.server.clone(),
                    socket_inodes: c.inodes,
                    state: match c.segment.state() {
                        Some(SegmentState::Pending) => "migrating",
                        Some(SegmentState::Active) => "swapped",
                        Some(SegmentState::Plain) => "plain",
                        Some(SegmentState::Closed) => "closed",
                        None => "corrupt",
                    }
                    .to_owned(),
                    ends: [End::Client, End::Server].map(|end| c.end_phase(end)),
                    switched_client_to_server: c.switched_at(End::Client),
                    switched_server_to_client: c.switched_at(End::Server),
                    bytes_client_to_server,
                    bytes_server_to_client,
                    ring_capacity: c.segment.ring_capacities(),
                    resident_bytes: c.segment.resident_bytes(),
                }
            })
            .collect()
    }
}
