//! Loading the embedded eBPF object, filling its maps and attaching its tracepoints.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, PerCpuArray, RingBuf,
    },
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use tssx_common::{
    event::{listener_key, listener_owner, PathKey, TraceConfig},
    maps,
};

use crate::{kernel, paths::WatchedPath};

/// The eBPF object built by `build.rs` (empty when built with `TSSX_SKIP_EBPF=1`), aligned as
/// the ELF parser wants.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tssx"));

/// How often a program load is tried when the kernel answers EAGAIN: its verifier gives up
/// with EAGAIN when a signal is pending (a `SIGCONT` after the agent was stopped, a
/// `SIGCHLD`), and libbpf tries such a load again too. Found by stopping and continuing the
/// agent while it started: it exited with "the kernel refused eBPF program ...: Resource
/// temporarily unavailable".
const LOAD_ATTEMPTS: u32 = 5;

/// Whether a program load failed only because a signal interrupted the verifier.
pub(crate) fn load_interrupted(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

/// Runs `load` until it succeeds, fails for another reason than `interrupted` says, or
/// [`LOAD_ATTEMPTS`] tries were made.
pub(crate) fn retry_interrupted_load<T, E>(mut load: impl FnMut() -> Result<T, E>, interrupted: impl Fn(&E) -> bool) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(e) if interrupted(&e) && attempt < LOAD_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// One tracepoint program of the object and the tracepoint it attaches to.
///
/// The one place that says which program watches which tracepoint is its
/// `#[tracepoint(category = ..., name = ...)]` attribute in `tssx-ebpf/src/programs.rs`: the
/// attribute puts the program in the ELF section `tracepoint/<category>/<name>`, and
/// [`tracepoints`] reads the table back from the object, so there is no second list to keep
/// in step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    /// The program's name (its symbol, as aya names it).
    pub program: String,
    /// The tracepoint's category (`syscalls`, `sched`).
    pub category: String,
    /// The tracepoint's name within the category (`sys_enter_bind`).
    pub name: String,
}

/// Why the tracepoint table could not be read from an eBPF object.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// Not an ELF object the parser understands.
    #[error("cannot parse the eBPF object: {0}")]
    Parse(#[from] object::Error),
    /// A program in a `tracepoint` section that does not name its tracepoint.
    #[error("eBPF program {program} is in section `{section}`, which names no tracepoint (expected tracepoint/<category>/<name>)")]
    Unnamed {
        /// The program.
        program: String,
        /// Its section.
        section: String,
    },
}

/// The tracepoint programs of the ELF object `elf`, read from their section names, in the order
/// they are attached: per syscall its `sys_enter_*` program before its `sys_exit_*` one (an exit
/// never waits for an enter that is not attached yet), syscall tracepoints before the others.
///
/// Like aya, a program is a named function symbol in a program section.
pub fn tracepoints(elf: &[u8]) -> Result<Vec<Tracepoint>, ObjectError> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};
    let file = object::File::parse(elf)?;
    let mut found = Vec::new();
    for symbol in file.symbols() {
        let (Ok(program), SymbolKind::Text, Some(index)) = (symbol.name(), symbol.kind(), symbol.section_index()) else { continue };
        if program.is_empty() {
            continue;
        }
        let section = file.section_by_index(index)?;
        let section = section.name()?;
        let Some(rest) = section.strip_prefix("tracepoint/").or_else(|| section.strip_prefix("tp/")) else { continue };
        let Some((category, name)) = rest.split_once('/').filter(|(c, n)| !c.is_empty() && !n.is_empty() && !n.contains('/')) else {
            return Err(ObjectError::Unnamed { program: program.to_owned(), section: section.to_owned() });
        };
        found.push(Tracepoint { program: program.to_owned(), category: category.to_owned(), name: name.to_owned() });
    }
    found.sort_by(|a, b| attach_order(a).cmp(&attach_order(b)));
    Ok(found)
}

/// Sort key for [`tracepoints`]: syscalls first, then by syscall, enter before exit.
fn attach_order(tp: &Tracepoint) -> (bool, &str, bool, &str) {
    let (stem, exit) = match (tp.name.strip_prefix("sys_enter_"), tp.name.strip_prefix("sys_exit_")) {
        (Some(stem), _) => (stem, false),
        (_, Some(stem)) => (stem, true),
        _ => (tp.name.as_str(), false),
    };
    (tp.category != "syscalls", stem, exit, tp.program.as_str())
}

/// Tracepoints a kernel may lack (io_uring compiled out): the agent runs without them, and
/// says what it then does not see.
const OPTIONAL_TRACEPOINTS: &[&str] = &["io_uring_create"];

/// How the kernel watcher sees the connections on the watched paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// The default: a `cgroup/connect_unix` program sees every Unix connect (Linux 6.7+; the
    /// event carries the client socket's cookie, not its fd); the server's end of a claim is
    /// checked with `sock_diag` only. No syscall tracepoint is attached, so no system call of
    /// the machine pays for the watcher.
    ConnectHook,
    /// Syscall tracepoints on bind, listen, connect, accept, close and clone: every watched
    /// bind, listen, connect and accept is traced with its fd. While any syscall tracepoint is
    /// attached, every system call of every process takes the kernel's slower traced path (a
    /// few percent of CPU for a syscall-heavy program such as nginx).
    SyscallTracepoints,
}

impl WatchMode {
    /// How trace lines name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConnectHook => "connect hook (cgroup/connect_unix; no syscall tracepoint)",
            Self::SyscallTracepoints => "syscall tracepoints (bind, listen, connect, accept, close)",
        }
    }
}

/// The loaded and attached programs. Dropping it detaches everything.
pub struct Watcher {
    ebpf: Ebpf,
    /// Keeps aya-log's map fd alive (dropping it breaks later loads); `None` if the object has
    /// no log map.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// The Unix connect hook (see [`crate::cgroup`]), in [`WatchMode::ConnectHook`].
    _unix_connect: Option<crate::cgroup::UnixConnectHook>,
    /// The mode in effect.
    mode: WatchMode,
}

/// Handles the agent's event loop reads from; split off the [`Watcher`] so they can be polled.
pub struct Channels {
    /// The events ring buffer.
    pub events: RingBuf<MapData>,
    /// Processes that set up an io_uring (the claim rules keep their connections plain).
    pub io_uring_users: HashMap<MapData, u32, u32>,
    /// Processes whose hook is signalled to hand its connections back if they set up an
    /// io_uring (the agent adds each process it pairs a claim of).
    pub handback: HashMap<MapData, u32, u32>,
    /// Processes and patterns whose connects the connect hook leaves unreported but in probe
    /// windows (see `control::quiet`).
    pub quiet: HashMap<MapData, u64, u64>,
}

impl Watcher {
    /// Loads the programs, publishes `paths` (ids are their positions) and attaches everything
    /// `mode` needs. `parked_slots`: the size of the per-thread array of parked calls (`None`:
    /// the machine's `pid_max`, at most `PARKED_SLOTS_MAX`). A kernel that refuses the connect
    /// hook (older than 6.7, no cgroup v2) gets the syscall tracepoints instead, with a
    /// warning: [`Watcher::mode`] says which mode is in effect.
    pub fn load(paths: &[WatchedPath], parked_slots: Option<u32>, mode: WatchMode) -> anyhow::Result<(Self, Channels)> {
        if EBPF_OBJECT.is_empty() {
            bail!("this tssx-agent was built without its eBPF programs (TSSX_SKIP_EBPF=1); rebuild without it");
        }
        let tracepoints = tracepoints(EBPF_OBJECT).context("reading the tracepoint programs of the embedded eBPF object")?;
        let slots = parked_slots.unwrap_or_else(default_parked_slots).max(1);
        let mut ebpf =
            EbpfLoader::new().map_max_entries(PARKED_BY_TID, slots).map_max_entries(MAY_OWN_LISTENERS, slots).load(EBPF_OBJECT).context(
                "the kernel refused the tssx eBPF maps (is this a BPF-enabled kernel, and are we root in the initial user namespace?)",
            )?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                tracing::debug!("aya-log not available: {e}");
                None
            }
        };
        let mut config = kernel::trace_config(Path::new(kernel::TRACEFS)).context("reading tracepoint formats")?;
        config.relative = u32::from(crate::paths::any_filesystem(paths));
        crate::paths::fill_prefilter(&mut config, paths);
        let mut mode = mode;
        if mode == WatchMode::ConnectHook {
            match sock_addr_layout() {
                Ok(Some((uaddr, uaddrlen))) => {
                    config.sock_addr_uaddr_off = uaddr;
                    config.sock_addr_uaddrlen_off = uaddrlen;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(
                        "{e}: the connect hook cannot read this kernel's connect context; watching with syscall tracepoints instead (every system call of the machine pays a little for them)"
                    );
                    mode = WatchMode::SyscallTracepoints;
                }
            }
        }
        let mut watcher = Self { ebpf, logger, _unix_connect: None, mode };
        watcher.set_config(config)?;
        watcher.set_paths(paths)?;
        let (syscalls, others): (Vec<Tracepoint>, Vec<Tracepoint>) = tracepoints.into_iter().partition(|t| t.category == "syscalls");
        if others.is_empty() && syscalls.is_empty() {
            bail!("the embedded eBPF object has no tracepoint programs");
        }
        watcher.attach_all(&others)?;
        if mode == WatchMode::ConnectHook {
            match crate::cgroup::attach(EBPF_OBJECT, CONNECT_HOOK_PROGRAM, &watcher.ebpf) {
                Ok(hook) => watcher._unix_connect = Some(hook),
                Err(e) => {
                    tracing::warn!(
                        "{e:#}: watching with syscall tracepoints instead (every system call of the machine pays a little for them; Linux 6.7 or later with cgroup v2 mounted avoids it)"
                    );
                    watcher.mode = WatchMode::SyscallTracepoints;
                }
            }
        }
        if watcher.mode == WatchMode::SyscallTracepoints {
            watcher.attach_all(&syscalls)?;
        }
        let events = watcher.ebpf.take_map(maps::EVENTS).ok_or_else(|| anyhow!("eBPF object has no {} map", maps::EVENTS))?;
        let events = RingBuf::try_from(events).context("EVENTS is not a ring buffer")?;
        let io_uring_users =
            watcher.ebpf.take_map(maps::IO_URING_USERS).ok_or_else(|| anyhow!("eBPF object has no {} map", maps::IO_URING_USERS))?;
        let io_uring_users = HashMap::try_from(io_uring_users).context("IO_URING_USERS is not a hash map")?;
        let handback = watcher
            .ebpf
            .take_map(maps::HANDBACK_ON_IO_URING)
            .ok_or_else(|| anyhow!("eBPF object has no {} map", maps::HANDBACK_ON_IO_URING))?;
        let handback = HashMap::try_from(handback).context("HANDBACK_ON_IO_URING is not a hash map")?;
        // (Taken after the connect hook was loaded against it.)
        let quiet = watcher.ebpf.take_map(maps::QUIET).ok_or_else(|| anyhow!("eBPF object has no {} map", maps::QUIET))?;
        let quiet = HashMap::try_from(quiet).context("QUIET is not a hash map")?;
        Ok((watcher, Channels { events, io_uring_users, handback, quiet }))
    }

    /// The mode in effect (see [`Watcher::load`]).
    pub fn mode(&self) -> WatchMode {
        self.mode
    }

    fn set_config(&mut self, config: TraceConfig) -> anyhow::Result<()> {
        let mut array: Array<_, TraceConfig> = Array::try_from(self.map_mut(maps::CONFIG)?)?;
        array.set(0, config, 0).context("writing CONFIG")?;
        Ok(())
    }

    /// Exact names go into the hash map, literal prefixes into the LPM trie (see
    /// [`crate::paths::prefix_entries`]).
    fn set_paths(&mut self, paths: &[WatchedPath]) -> anyhow::Result<()> {
        let mut map: HashMap<_, PathKey, u32> = HashMap::try_from(self.map_mut(maps::WATCHED_PATHS)?)?;
        for (id, path) in paths.iter().enumerate() {
            if let Some(key) = path.map_key() {
                map.insert(key, id as u32, 0).with_context(|| format!("adding {path} to the watched paths"))?;
            }
        }
        let mut trie: LpmTrie<_, PathKey, u32> = LpmTrie::try_from(self.map_mut(maps::WATCHED_PREFIXES)?)?;
        for entry in crate::paths::prefix_entries(paths) {
            let mut data = [0u8; tssx_common::SUN_PATH_LEN];
            data[..entry.prefix.len()].copy_from_slice(&entry.prefix);
            let key = Key::new(entry.prefix.len() as u32 * 8, data);
            trie.insert(&key, entry.value, 0)
                .with_context(|| format!("adding the prefix {} to the watched prefixes", crate::paths::display_name(&entry.prefix)))?;
        }
        Ok(())
    }

    /// Writes the agent's match of a listener the kernel program recorded undecided (a bind
    /// whose address needed the agent: a glob, a relative path): `Some(id)` sets the pattern's
    /// id, `None` removes the entry (and counts it off its owner).
    pub fn decide_listener(&mut self, tgid: u32, fd: i32, decision: Option<u32>) -> anyhow::Result<()> {
        let key = listener_key(tgid, fd as u32);
        let mut listeners: HashMap<_, u64, u32> = HashMap::try_from(self.map_mut(maps::LISTENERS)?)?;
        let Ok(current) = listeners.get(&key, 0) else { return Ok(()) }; // closed meanwhile
        if tssx_common::event::is_pattern_id(current) {
            return Ok(()); // another bind on the same fd since, decided by the kernel
        }
        match decision {
            Some(id) => listeners.insert(key, id, 0)?,
            None => {
                let _ = listeners.remove(&key);
                let mut owners: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(maps::OWNERS)?)?;
                match owners.get(&tgid, 0) {
                    Ok(held) if held > 1 => owners.insert(tgid, held - 1, 0)?,
                    Ok(_) => {
                        let _ = owners.remove(&tgid);
                    }
                    Err(_) => {}
                }
            }
        }
        Ok(())
    }

    fn attach_all(&mut self, tracepoints: &[Tracepoint]) -> anyhow::Result<()> {
        for Tracepoint { program: name, category, name: tracepoint } in tracepoints {
            let program: &mut TracePoint = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("eBPF object has no program {name}"))?
                .try_into()
                .with_context(|| format!("{name} is not a tracepoint program"))?;
            retry_interrupted_load(
                || program.load(),
                |e| matches!(e, aya::programs::ProgramError::LoadError { io_error, .. } if load_interrupted(io_error)),
            )
            .map_err(|e| one_line(anyhow::Error::new(e)))
            .with_context(|| format!("the kernel refused eBPF program {name} (for {category}/{tracepoint})"))?;
            let attached = program
                .attach(category, tracepoint)
                .map_err(|e| one_line(anyhow::Error::new(e)))
                .with_context(|| format!("cannot attach {name} to tracepoint {category}/{tracepoint}"));
            match attached {
                Err(e) if OPTIONAL_TRACEPOINTS.contains(&tracepoint.as_str()) => {
                    tracing::warn!("{e:#}: processes that use io_uring are not recognized (their connections may swap)");
                }
                other => {
                    other?;
                }
            }
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
        self.per_cpu_count(maps::DROPPED)
    }

    /// Connects the connect hook left unreported on quiet paths so far (all CPUs).
    pub fn quiet_connects(&self) -> anyhow::Result<u64> {
        self.per_cpu_count(maps::QUIET_SKIPPED)
    }

    /// The sum over the CPUs of the one entry of the per-CPU counter `name`.
    fn per_cpu_count(&self, name: &str) -> anyhow::Result<u64> {
        let map = self.ebpf.map(name).ok_or_else(|| anyhow!("eBPF object has no {name} map"))?;
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
        let prefixes = ebpf
            .map(maps::WATCHED_PREFIXES)
            .and_then(|map| LpmTrie::<_, PathKey, u32>::try_from(map).ok())
            .map(|trie| trie.keys().filter(Result::is_ok).count());
        [
            (maps::WATCHED_PATHS, count::<PathKey, u32>(ebpf, maps::WATCHED_PATHS)),
            (maps::WATCHED_PREFIXES, prefixes),
            (maps::LISTENERS, count::<u64, u32>(ebpf, maps::LISTENERS)),
            (maps::OWNERS, count::<u32, u32>(ebpf, maps::OWNERS)),
            (maps::PARENTS, count::<u32, u32>(ebpf, maps::PARENTS)),
            (maps::IO_URING_USERS, count::<u32, u32>(ebpf, maps::IO_URING_USERS)),
            ("PENDING", count::<u64, tssx_common::event::PendingCall>(ebpf, "PENDING")),
            ("PARKED", count::<u64, tssx_common::event::Parked>(ebpf, "PARKED")),
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
            // With its OWNERS entry (see the eBPF map's invariant); a process id beyond the
            // array has no flag and is looked up in OWNERS.
            let mut may_own: Array<_, u32> = Array::try_from(self.map_mut(MAY_OWN_LISTENERS)?)?;
            if child < may_own.len() {
                may_own.set(child, 1, 0)?;
            }
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

/// The `cgroup/connect_unix` program (see [`crate::cgroup`]).
const CONNECT_HOOK_PROGRAM: &str = "tssx_connect_unix";

/// The per-thread array of calls parked between their enter and exit (see the eBPF crate).
const PARKED_BY_TID: &str = "PARKED_BY_TID";
/// The per-process flags "may hold a watched listener" (see the eBPF crate), sized as
/// [`PARKED_BY_TID`].
const MAY_OWN_LISTENERS: &str = "MAY_OWN_LISTENERS";

/// How many `PARKED_BY_TID` slots to make: one per possible thread id (`pid_max`), at most
/// `PARKED_SLOTS_MAX`; threads with higher ids park in the hash map instead.
fn default_parked_slots() -> u32 {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|text| text.trim().parse::<u32>().ok());
    pid_max.unwrap_or(tssx_common::event::PARKED_SLOTS_DEFAULT).clamp(1, tssx_common::event::PARKED_SLOTS_MAX)
}

/// The byte offsets of `uaddr` and `uaddrlen` in this kernel's `struct bpf_sock_addr_kern`,
/// the connect hook's context, read from its BTF. `Ok(None)`: the kernel publishes no BTF we
/// can read (the program then uses the Linux 6.7 layout, logged); `Err`: the BTF says the
/// struct or its members are not what the program reads (the connect hook must not be used).
pub fn sock_addr_layout() -> Result<Option<(u32, u32)>, crate::btf::BtfError> {
    use crate::btf::{Btf, BtfError, Expect, VMLINUX};
    let unreadable = |why: &dyn std::fmt::Display| {
        tracing::info!("{VMLINUX}: {why}; the connect hook reads its context at the Linux 6.7 offsets");
        Ok(None)
    };
    let data = match std::fs::read(VMLINUX) {
        Ok(data) => data,
        Err(e) => return unreadable(&e),
    };
    let btf = match Btf::parse(&data) {
        Ok(btf) => btf,
        Err(e @ (BtfError::Malformed(_) | BtfError::UnknownKind(_))) => return unreadable(&e),
        Err(e) => return Err(e),
    };
    const CONTEXT: &str = "bpf_sock_addr_kern";
    let uaddr = btf.member_offset(CONTEXT, "uaddr", Expect::Pointer)?;
    let uaddrlen = btf.member_offset(CONTEXT, "uaddrlen", Expect::Int(4))?;
    tracing::debug!("{CONTEXT}: uaddr at {uaddr}, uaddrlen at {uaddrlen} (kernel BTF)");
    Ok(Some((uaddr, uaddrlen)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(program: &str, category: &str, name: &str) -> Tracepoint {
        Tracepoint { program: program.into(), category: category.into(), name: name.into() }
    }

    #[test]
    fn an_interrupted_load_is_tried_again_a_few_times_and_no_other_failure_is() {
        let eagain = || std::io::Error::from_raw_os_error(libc::EAGAIN);
        let mut calls = 0;
        let once_interrupted = retry_interrupted_load(
            || {
                calls += 1;
                if calls == 1 {
                    Err(eagain())
                } else {
                    Ok(calls)
                }
            },
            load_interrupted,
        );
        assert_eq!(once_interrupted.unwrap(), 2);
        let mut calls = 0;
        let always = retry_interrupted_load::<(), _>(
            || {
                calls += 1;
                Err(eagain())
            },
            load_interrupted,
        );
        assert!(always.is_err());
        assert_eq!(calls, LOAD_ATTEMPTS);
        let mut calls = 0;
        let refused = retry_interrupted_load::<(), _>(
            || {
                calls += 1;
                Err(std::io::Error::from_raw_os_error(libc::EINVAL))
            },
            load_interrupted,
        );
        assert!(refused.is_err());
        assert_eq!(calls, 1, "a verifier's refusal is final");
    }

    #[test]
    fn enter_is_attached_before_exit_and_syscalls_first() {
        let mut list = [
            tp("exit_b", "syscalls", "sys_exit_bind"),
            tp("fork", "sched", "sched_process_fork"),
            tp("enter_c", "syscalls", "sys_enter_connect"),
            tp("enter_b", "syscalls", "sys_enter_bind"),
            tp("exit_c", "syscalls", "sys_exit_connect"),
        ];
        list.sort_by(|a, b| attach_order(a).cmp(&attach_order(b)));
        let order: Vec<&str> = list.iter().map(|t| t.program.as_str()).collect();
        assert_eq!(order, ["enter_b", "exit_b", "enter_c", "exit_c", "fork"]);
    }

    #[test]
    fn a_non_elf_object_is_an_error() {
        assert!(matches!(tracepoints(b"not an ELF object"), Err(ObjectError::Parse(_))));
    }

    /// The table read from the embedded object (skipped when built with `TSSX_SKIP_EBPF=1`):
    /// every program once, every `sys_exit_*` after its `sys_enter_*`, and the tracepoints the
    /// agent relies on (the events it pairs claims with, and the `sched` formats it reads).
    #[test]
    fn the_embedded_object_names_its_tracepoints() {
        if EBPF_OBJECT.is_empty() {
            return;
        }
        let table = tracepoints(EBPF_OBJECT).unwrap();
        let position = |category: &str, name: &str| table.iter().position(|t| t.category == category && t.name == name);
        for (category, name) in [
            ("syscalls", "sys_exit_connect"),
            ("syscalls", "sys_exit_accept"),
            ("syscalls", "sys_exit_accept4"),
            ("syscalls", "sys_exit_bind"),
            ("sched", "sched_process_fork"),
            ("sched", "sched_process_exit"),
        ] {
            assert!(position(category, name).is_some(), "no program for {category}/{name}: {table:?}");
        }
        assert!(position("io_uring", "io_uring_create").is_some(), "no program for io_uring_create: {table:?}");
        let mut programs: Vec<&str> = table.iter().map(|t| t.program.as_str()).collect();
        programs.sort_unstable();
        programs.dedup();
        assert_eq!(programs.len(), table.len(), "a program listed twice: {table:?}");
        for (i, t) in table.iter().enumerate() {
            assert!(t.program.starts_with("tssx_"), "{t:?}");
            // (An exit program pairs with its enter program through PENDING.)
            if let Some(stem) = t.name.strip_prefix("sys_exit_") {
                let enter = position(&t.category, &format!("sys_enter_{stem}")).unwrap_or_else(|| panic!("{t:?} has no enter program"));
                assert!(enter < i, "{t:?} is attached before its enter program");
            }
        }
    }
}
