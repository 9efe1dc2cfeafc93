//! The kernel events ring buffer, read by both the event loop and the claim workers.
//!
//! A hook claims its socket after `connect()`/`accept()` returned, and the eBPF program
//! submitted the event in that syscall's exit tracepoint: by the time the claim reaches the
//! agent, its event is in the ring buffer if the event loop has not read it yet. A claim worker
//! drains the ring itself before it looks for its event ([`EventFeed::drain`]), rather than wait
//! for the event loop (which per-connection events do not wake): connect and accept events are
//! recorded in the claims' registry at once, in the kernel's order (so an older event of the
//! same fd is replaced before the lookup), and every drained event is forwarded to the event
//! loop, which traces it and acts on it (fork/exit) as if it had read it itself.
//!
//! Order: the ring is drained under one lock, and the forwarded events are queued before that
//! lock is released; the event loop takes the queued events before the ring's under the same
//! lock ([`EventFeed::take`]), so it sees every event exactly once and in the kernel's order.
//! Whoever reads an event out of the ring records it before the lock is released (the event
//! loop too), so a claim that drains the ring and then looks in the registry finds every event
//! submitted before its claim: none is in between, read and not yet recorded.
//!
//! Wake-ups: queuing wakes nobody, and neither do per-connection events (connect, accept, fork,
//! exit): the eBPF program submits them without a notification while the ring is less than a
//! quarter full, so that a short connection costs the agent no wake-up. The event loop takes
//! the queue and the ring on its 100 ms tick, and when the ring notifies it (bind and listen
//! events, or a ring filling up); a claim never waits for the loop, since its worker drains the
//! ring itself.

//!
//! Matching: the kernel program decides exact names and directory prefixes itself; for a glob
//! it reports every address under the glob's literal prefix (`PATH_ID_CANDIDATE`), and every
//! relative filesystem address (`PATH_ID_RELATIVE`), with the address in the event. The feed
//! finishes those before anyone sees them ([`classify`]): a candidate is matched against the
//! patterns; a relative address is resolved against the caller's working directory and, for a
//! bind, accepted only if that names the very socket file the kernel bound (`sock_diag`'s
//! device and inode), so a process that changed directory meanwhile is never matched wrongly.
//! Events that match no pattern are dropped here: sockets outside the patterns stay untraced.
//!
//! Such a bind's listener is in the kernel's listener map from its bind on, undecided (its
//! path id is the candidate's or the relative one), so that no accept is missed while the agent
//! decides; its listen and accept events carry that undecided id, and the feed gives them the
//! decision taken on the bind event (always read first: one ring, in order). The event loop
//! then writes the decision into the map ([`Classified::listener`]): the pattern's id, or the
//! entry removed.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use aya::maps::{MapData, RingBuf};
use tssx_common::{
    event::{Event, EventKind, PATH_ID_CANDIDATE, PATH_ID_RELATIVE},
    SUN_PATH_LEN,
};

use crate::paths::{best_match, WatchedPath};

/// Most relative listeners' resolved names kept (beyond, the table starts over).
const MAX_RESOLVED: usize = 4096;
/// Most processes whose decisions on undecided listeners are kept (beyond, the table starts
/// over: later events of those listeners are dropped, untraced; their connections' claims are
/// still checked by the socket's name).
const MAX_DECIDED: usize = 16384;

/// The shared events ring buffer and the queue of events drained by claim workers.
pub struct EventFeed {
    ring: Mutex<Ring>,
    paths: Vec<WatchedPath>,
    /// Absolute names of listeners bound with a relative address, by socket file `(device,
    /// inode)`: claims on their connections are matched with these.
    resolved: Mutex<HashMap<(u64, u64), Vec<u8>>>,
    /// The agent's decision on each undecided listener, by process and fd: the pattern id, or
    /// `None` (no pattern covers it). A forked child gets its parent's (its accepts name the
    /// inherited listener); an exited process's go. Used under the ring lock only.
    decided: Mutex<HashMap<u32, HashMap<i32, Option<u32>>>>,
}

/// What the feed's lock guards.
struct Ring {
    ring: RingBuf<MapData>,
    /// Drained by claim workers (recorded already), for the event loop.
    forwarded: Vec<Classified>,
    /// How many events the last read found: the next batch starts with room for as many (a
    /// busy machine's batches hold thousands; growing each from empty copied them again and
    /// again, a quarter of the agent's time).
    last_batch: usize,
}

/// A kernel event after matching (see the module doc).
#[derive(Clone, Debug)]
pub struct Classified {
    /// The event: its `path_id` names a pattern, its address is absolute.
    pub event: Event,
    /// For a bind the kernel recorded undecided: the decision for its entry in the eBPF
    /// listener map (`Some(id)`: the pattern's id; `None`: remove it), which the event loop
    /// writes.
    pub listener: Option<Option<u32>>,
    /// Outside every pattern: acted on (`listener`), neither recorded nor traced.
    pub hidden: bool,
    /// The relative address as the process wrote it, if it was one.
    pub written: Option<String>,
}

/// Events the event loop takes, all recorded already: those a claim worker drained, then those
/// read from the ring now; in the kernel's order, to be traced and acted on.
#[derive(Debug, Default)]
pub struct Taken {
    /// Drained and recorded by claim workers.
    pub recorded: Vec<Classified>,
    /// Read from the ring now (and recorded by [`EventFeed::take`]).
    pub fresh: Vec<Classified>,
}

impl EventFeed {
    /// Wraps the events ring buffer; `paths` are the watched patterns (ids are positions).
    pub fn new(ring: RingBuf<MapData>, paths: Vec<WatchedPath>) -> Self {
        Self {
            ring: Mutex::new(Ring { ring, forwarded: Vec::new(), last_batch: 0 }),
            paths,
            resolved: Mutex::new(HashMap::new()),
            decided: Mutex::new(HashMap::new()),
        }
    }

    /// The absolute name of a listener bound with a relative address, by its socket file.
    pub fn resolved_name(&self, file: (u64, u64)) -> Option<Vec<u8>> {
        self.resolved.lock().unwrap_or_else(|p| p.into_inner()).get(&file).cloned()
    }

    /// The ring buffer's fd, to poll for readiness (it stays open as long as `self`).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.lock().ring)
    }

    fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// For a claim worker: reads every event in the ring, passes each to `record` (which keeps
    /// the connect/accept ones for claims) and forwards all of them to the event loop.
    pub fn drain(&self, mut record: impl FnMut(&Event)) {
        let mut ring = self.lock();
        let batch = self.read_all(&mut ring);
        for seen in batch.iter().filter(|s| !s.hidden) {
            record(&seen.event);
        }
        // Queued under the ring lock (see the module doc).
        ring.forwarded.extend(batch);
    }

    /// For the event loop: the events claim workers forwarded, then the ring's, each of the
    /// latter passed to `record` under the ring lock (see the module doc).
    pub fn take(&self, mut record: impl FnMut(&Event)) -> Taken {
        let mut ring = self.lock();
        let recorded = std::mem::take(&mut ring.forwarded);
        let fresh = self.read_all(&mut ring);
        for seen in fresh.iter().filter(|s| !s.hidden) {
            record(&seen.event);
        }
        Taken { recorded, fresh }
    }

    /// Every complete event now in `ring`, matched (short records are traced and skipped,
    /// events outside the patterns dropped).
    fn read_all(&self, ring: &mut Ring) -> Vec<Classified> {
        let mut batch = Vec::with_capacity(ring.last_batch);
        while let Some(item) = ring.ring.next() {
            match Event::from_bytes(&item) {
                Some(event) => batch.extend(self.classify(event)),
                None => tracing::warn!(len = item.len(), "short event record ignored"),
            }
        }
        ring.last_batch = batch.len();
        batch
    }

    /// Finishes the kernel's match of one event (see the module doc); `None`: dropped.
    fn classify(&self, mut event: Event) -> Option<Classified> {
        let plain = |event| Some(Classified { event, listener: None, hidden: false, written: None });
        let undecided = event.path_id == PATH_ID_CANDIDATE || event.path_id == PATH_ID_RELATIVE;
        let kind = event.event_kind();
        match kind {
            Some(EventKind::Fork) => {
                let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(inherited) = decided.get(&event.tgid).cloned() {
                    decided.insert(event.other_pid, inherited);
                }
                drop(decided);
                plain(event)
            }
            Some(EventKind::Exit) => {
                self.decided.lock().unwrap_or_else(|p| p.into_inner()).remove(&event.tgid);
                plain(event)
            }
            _ if !undecided => plain(event),
            Some(EventKind::Listen | EventKind::Accept) => {
                let decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
                event.path_id = decided.get(&event.tgid).and_then(|fds| fds.get(&event.fd)).copied().flatten()?;
                drop(decided);
                plain(event)
            }
            Some(EventKind::Bind | EventKind::Connect) => {
                let bind = kind == Some(EventKind::Bind);
                let (id, written) = self.decide(&mut event, bind);
                if !bind {
                    event.path_id = id?;
                    return Some(Classified { event, listener: None, hidden: false, written });
                }
                let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
                if decided.len() >= MAX_DECIDED {
                    decided.clear();
                }
                decided.entry(event.tgid).or_default().insert(event.fd, id);
                drop(decided);
                event.path_id = id.unwrap_or(event.path_id);
                Some(Classified { event, listener: Some(id), hidden: id.is_none(), written })
            }
            _ => None,
        }
    }

    /// The pattern covering an undecided bind/connect address (a glob candidate, or a relative
    /// path: then resolved, the event's address made absolute, and the address as written
    /// returned too).
    fn decide(&self, event: &mut Event, bind: bool) -> (Option<u32>, Option<String>) {
        if event.path_id == PATH_ID_CANDIDATE {
            return (best_match(&self.paths, event.addr_bytes()), None);
        }
        let written = String::from_utf8_lossy(event.addr_bytes()).into_owned();
        let Some((absolute, file)) = resolve_event(event, bind) else { return (None, Some(written)) };
        let id = best_match(&self.paths, &absolute);
        // A bind's socket file, or the file a connect seen by the connect hook named (no bind
        // event tells the name of a relative listener then): later claims find the name by it.
        if let (true, Some(file), Some(_)) = (bind || event.socket_cookie().is_some(), file, id) {
            let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            if resolved.len() >= MAX_RESOLVED {
                resolved.clear();
            }
            resolved.insert(file, absolute.clone());
        }
        event.addr = [0; SUN_PATH_LEN];
        event.addr[..absolute.len()].copy_from_slice(&absolute);
        event.addr_len = absolute.len() as u32;
        (id, Some(written))
    }
}

/// A relative address resolved: its absolute name, and the socket file `(device, inode)` it was
/// checked against, if any.
type Resolution = (Vec<u8>, Option<(u64, u64)>);

/// The absolute name of a relative bind/connect address, resolved against the caller's working
/// directory now, and the socket file it was checked against. A bind is checked against the
/// socket's own file and refused if that is not it; a connect against its peer's (the
/// listener's file), when the peer is known already (else, unchecked: its claim is checked
/// against the peer's name anyway). A connect seen by the connect hook (no fd) returns the file
/// the name stands for, which the agent then keeps as that file's name, as for a bind.
fn resolve_event(event: &Event, bind: bool) -> Option<Resolution> {
    use crate::control::host;
    let absolute = host::resolve_in_cwd(event.tgid, event.addr_bytes())?;
    if event.socket_cookie().is_some() {
        // The connect hook's event names no fd: the file the name stands for now (the event is
        // read moments after the connect), which is also what the check below would compare.
        let file = host::file_id(event.tgid, &absolute);
        return Some((absolute, file));
    }
    let socket = host::socket_inode(event.tgid, event.fd).ok().flatten().and_then(|ino| crate::sockdiag::unix_socket(ino).ok().flatten());
    let file = if bind {
        socket?.file
    } else {
        socket.and_then(|s| s.peer).and_then(|peer| crate::sockdiag::unix_socket(peer).ok().flatten()).and_then(|p| p.file)
    };
    match file {
        Some(file) if host::file_id(event.tgid, &absolute) != Some(file) => None,
        None if bind => None,
        _ => Some((absolute, file)),
    }
}
