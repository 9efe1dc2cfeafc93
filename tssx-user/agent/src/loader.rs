//! Loading the embedded eBPF object, filling its maps and attaching its tracepoints.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use tssx_common::{
    event::{listener_key, listener_owner, PathKey, TraceConfig},
    maps,
};

use crate::{kernel, paths::WatchedPath};

/// The tracepoints the programs attach to: `(program name, category, tracepoint)`.
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("tssx_enter_bind", "syscalls", "sys_enter_bind"),
    ("tssx_exit_bind", "syscalls", "sys_exit_bind"),
    ("tssx_enter_listen", "syscalls", "sys_enter_listen"),
    ("tssx_exit_listen", "syscalls", "sys_exit_listen"),
    ("tssx_enter_connect", "syscalls", "sys_enter_connect"),
    ("tssx_exit_connect", "syscalls", "sys_exit_connect"),
    ("tssx_enter_accept", "syscalls", "sys_enter_accept"),
    ("tssx_exit_accept", "syscalls", "sys_exit_accept"),
    ("tssx_enter_accept4", "syscalls", "sys_enter_accept4"),
    ("tssx_exit_accept4", "syscalls", "sys_exit_accept4"),
    ("tssx_enter_close", "syscalls", "sys_enter_close"),
    ("tssx_enter_clone", "syscalls", "sys_enter_clone"),
    ("tssx_enter_clone3", "syscalls", "sys_enter_clone3"),
    ("tssx_process_fork", "sched", "sched_process_fork"),
    ("tssx_process_exit", "sched", "sched_process_exit"),
];

/// `include_bytes!` with the alignment the ELF parser wants.
#[repr(C, align(32))]
struct Aligned<B: ?Sized>(B);

static EBPF_OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/tssx")));

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Watcher {
    ebpf: Ebpf,
    /// Keeps aya-log's map fd alive (dropping it breaks later loads); `None` if the object has
    /// no log map.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Handles the agent's event loop reads from; split off the [`Watcher`] so they can be polled.
pub struct Channels {
    /// The events ring buffer.
    pub events: RingBuf<MapData>,
}

impl Watcher {
    /// Loads the programs, publishes `paths` (ids are their positions) and attaches everything.
    pub fn load(paths: &[WatchedPath]) -> anyhow::Result<(Self, Channels)> {
        if EBPF_OBJECT.0.is_empty() {
            bail!("this tssx-agent was built without its eBPF programs (TSSX_SKIP_EBPF=1); rebuild without it");
        }
        let mut ebpf = EbpfLoader::new().load(&EBPF_OBJECT.0).context(
            "the kernel refused the tssx eBPF maps (is this a BPF-enabled kernel, and are we root in the initial user namespace?)",
        )?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::debug!("aya-log not available: {e}");
                None
            }
        };
        let config = kernel::trace_config(Path::new(kernel::TRACEFS)).context("reading tracepoint formats")?;
        let mut watcher = Self { ebpf, logger };
        watcher.set_config(config)?;
        watcher.set_paths(paths)?;
        watcher.attach_all()?;
        let events = watcher.ebpf.take_map(maps::EVENTS).ok_or_else(|| anyhow!("eBPF object has no {} map", maps::EVENTS))?;
        let events = RingBuf::try_from(events).context("EVENTS is not a ring buffer")?;
        Ok((watcher, Channels { events }))
    }

    fn set_config(&mut self, config: TraceConfig) -> anyhow::Result<()> {
        let mut array: Array<_, TraceConfig> = Array::try_from(self.map_mut(maps::CONFIG)?)?;
        array.set(0, config, 0).context("writing CONFIG")?;
        Ok(())
    }

    fn set_paths(&mut self, paths: &[WatchedPath]) -> anyhow::Result<()> {
        let mut map: HashMap<_, PathKey, u32> = HashMap::try_from(self.map_mut(maps::WATCHED_PATHS)?)?;
        for (id, path) in paths.iter().enumerate() {
            map.insert(path.map_key(), id as u32, 0).with_context(|| format!("adding {path} to the watched paths"))?;
        }
        Ok(())
    }

    fn attach_all(&mut self) -> anyhow::Result<()> {
        for &(name, category, tracepoint) in TRACEPOINTS {
            let program: &mut TracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
                .try_into()
                .with_context(|| format!("{name} is not a tracepoint program"))?;
            program
                .load()
                .map_err(|e| one_line(anyhow::Error::new(e)))
                .with_context(|| format!("the kernel refused eBPF program {name} (for {category}/{tracepoint})"))?;
            program
                .attach(category, tracepoint)
                .map_err(|e| one_line(anyhow::Error::new(e)))
                .with_context(|| format!("cannot attach {name} to tracepoint {category}/{tracepoint}"))?;
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("eBPF object has no {name} map"))
    }

    /// Reads aya-log records the programs wrote and hands them to the `log` facade.
    pub fn flush_logs(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }

    /// File descriptor of aya-log's ring buffer, to poll; `None` if there is none.
    pub fn log_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.logger.as_ref().map(|l| l.as_raw_fd())
    }

    /// Events dropped so far because the events ring buffer was full (all CPUs).
    pub fn dropped_events(&self) -> anyhow::Result<u64> {
        let map = self.ebpf.map(maps::DROPPED).ok_or_else(|| anyhow!("eBPF object has no {} map", maps::DROPPED))?;
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(array.get(&0, 0)?.iter().sum())
    }

    /// Entries in each of the eBPF hash maps that grow with processes and calls (watched
    /// listeners, their owners, forked children, parked syscalls, clones in flight), by name.
    /// A map that cannot be read is left out.
    pub fn map_entries(&self) -> std::collections::BTreeMap<String, usize> {
        fn count<K: aya::Pod, V: aya::Pod>(ebpf: &Ebpf, name: &str) -> Option<usize> {
            let map: HashMap<_, K, V> = HashMap::try_from(ebpf.map(name)?).ok()?;
            Some(map.keys().filter(Result::is_ok).count())
        }
        let ebpf = &self.ebpf;
        [
            (maps::WATCHED_PATHS, count::<PathKey, u32>(ebpf, maps::WATCHED_PATHS)),
            (maps::LISTENERS, count::<u64, u32>(ebpf, maps::LISTENERS)),
            (maps::OWNERS, count::<u32, u32>(ebpf, maps::OWNERS)),
            (maps::PARENTS, count::<u32, u32>(ebpf, maps::PARENTS)),
            ("PENDING", count::<u64, tssx_common::event::PendingCall>(ebpf, "PENDING")),
            ("CLONING", count::<u64, u64>(ebpf, "CLONING")),
        ]
        .into_iter()
        .filter_map(|(name, n)| Some((name.to_owned(), n?)))
        .collect()
    }

    /// Gives `child` its own copy of `parent`'s watched listeners (after a fork), so it keeps
    /// them when the parent exits. Returns how many were copied.
    pub fn inherit_listeners(&mut self, parent: u32, child: u32) -> anyhow::Result<usize> {
        let mut listeners: HashMap<_, u64, u32> = HashMap::try_from(self.map_mut(maps::LISTENERS)?)?;
        let inherited: Vec<(u64, u32)> =
            listeners.iter().filter_map(Result::ok).filter(|(key, _)| listener_owner(*key) == parent).collect();
        for (key, path_id) in &inherited {
            listeners.insert(listener_key(child, *key as u32), *path_id, 0)?;
        }
        if !inherited.is_empty() {
            let mut owners: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(maps::OWNERS)?)?;
            owners.insert(child, inherited.len() as u32, 0)?;
        }
        Ok(inherited.len())
    }

    /// Forgets every watched listener of a process that exited. Returns how many.
    pub fn forget_process(&mut self, tgid: u32) -> anyhow::Result<usize> {
        let mut listeners: HashMap<_, u64, u32> = HashMap::try_from(self.map_mut(maps::LISTENERS)?)?;
        let keys: Vec<u64> = listeners.keys().filter_map(Result::ok).filter(|key| listener_owner(*key) == tgid).collect();
        for key in &keys {
            // Already gone is fine: the process may have closed it meanwhile.
            let _ = listeners.remove(key);
        }
        let mut owners: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(maps::OWNERS)?)?;
        let _ = owners.remove(&tgid);
        Ok(keys.len())
    }
}

/// Keeps only the first line of an error's message (verifier logs run to hundreds of lines;
/// they are logged at debug level instead).
fn one_line(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("unknown error").to_owned();
    if lines.next().is_some() {
        tracing::debug!("full error: {text}");
    }
    anyhow!(first)
}
