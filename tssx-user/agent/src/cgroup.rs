//! The Unix `connect` hook (`BPF_CGROUP_UNIX_CONNECT`, Linux 6.7+), loaded and attached with
//! the `bpf` system call: aya 0.14 has no attach type for it.
//!
//! The program is compiled into the same object as the tracepoints, in a section aya parses
//! (`cgroup/connect4`) and never loads. Here its instructions are read from the object, its
//! map references pointed at the maps aya created (`BPF_PSEUDO_MAP_FD`), its calls to functions
//! of its own section resolved, and it is loaded with the Unix attach type and linked to the
//! cgroup v2 root (`BPF_LINK_CREATE`: the link goes with the agent's fd, so a killed agent
//! leaves nothing attached).
//!
//! It is the default watcher's view of the connects ([`crate::loader::WatchMode::ConnectHook`]):
//! no syscall tracepoint is attached then. When the kernel refuses it (older than 6.7, no
//! cgroup v2 mounted) the loader falls back to the syscall tracepoints.

use std::{
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::PathBuf,
};

use anyhow::{anyhow, bail, Context as _};
use aya::{maps::Map, Ebpf};

/// From linux/bpf.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_CALL: u8 = 1;
const OP_LD_IMM64: u8 = 0x18;
const OP_CALL: u8 = 0x85;

/// The attached hook; dropping it detaches it.
pub struct UnixConnectHook {
    _link: OwnedFd,
    _program: OwnedFd,
}

/// The fd of one of the object's maps, as aya created it.
fn map_fd<'a>(ebpf: &'a Ebpf, name: &str) -> Option<BorrowedFd<'a>> {
    let data = match ebpf.map(name)? {
        Map::Array(m) | Map::HashMap(m) | Map::LpmTrie(m) | Map::PerCpuArray(m) | Map::RingBuf(m) | Map::LruHashMap(m) => m,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

/// The instructions of `program` (a function at the start of its section), followed by the
/// functions of other sections it calls (those the compiler did not inline, such as
/// `memset`), each relocated against `ebpf`'s maps.
fn instructions(elf: &[u8], program: &str, ebpf: &Ebpf) -> anyhow::Result<Vec<u8>> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SymbolKind};
    let file = object::File::parse(elf).context("parsing the eBPF object")?;
    let symbol = file.symbols().find(|s| s.name() == Ok(program)).ok_or_else(|| anyhow!("no program {program} in the eBPF object"))?;
    let index = symbol.section_index().ok_or_else(|| anyhow!("{program} has no section"))?;
    if symbol.address() != 0 {
        bail!("{program} does not start its section");
    }
    // Pieces of code: (section, start, end, where it starts in `code`).
    let first = file.section_by_index(index)?;
    let mut code = first.data()?.to_vec();
    let mut pieces: Vec<(object::SectionIndex, u64, u64, usize)> = vec![(index, 0, code.len() as u64, 0)];
    let mut next = 0;
    while next < pieces.len() {
        let (section_index, start, end, at_base) = pieces[next];
        next += 1;
        let section = file.section_by_index(section_index)?;
        for (offset, relocation) in section.relocations() {
            if offset < start || offset >= end {
                continue;
            }
            let RelocationTarget::Symbol(target) = relocation.target() else { bail!("{program}: a relocation without a symbol") };
            let target = file.symbol_by_index(target)?;
            let name = target.name().unwrap_or("").to_owned();
            let at = at_base + (offset - start) as usize;
            let opcode = code.get(at).copied().ok_or_else(|| anyhow!("{program}: a relocation outside its code"))?;
            match opcode {
                OP_LD_IMM64 => {
                    let fd = map_fd(ebpf, &name).ok_or_else(|| anyhow!("{program} uses {name}, which is no map of the object"))?;
                    code[at + 1] = (code[at + 1] & 0x0f) | BPF_PSEUDO_MAP_FD << 4;
                    code[at + 4..at + 8].copy_from_slice(&fd.as_raw_fd().to_le_bytes());
                }
                OP_CALL => {
                    let to_section = target.section_index().ok_or_else(|| anyhow!("{program} calls {name}, which has no section"))?;
                    // The callee's address in its section (a call to a section symbol carries it
                    // in its immediate).
                    let address = if target.kind() == SymbolKind::Section {
                        let imm = i32::from_le_bytes([code[at + 4], code[at + 5], code[at + 6], code[at + 7]]) as i64;
                        ((offset as i64 / 8) + imm + 1) as u64 * 8
                    } else {
                        target.address()
                    };
                    let placed = pieces.iter().find(|&&(s, a, b, _)| s == to_section && a <= address && address < b).copied();
                    let (_, piece_start, _, piece_at) = match placed {
                        Some(piece) => piece,
                        None => {
                            // The function containing the callee, appended whole.
                            let function = file
                                .symbols()
                                .find(|f| {
                                    f.section_index() == Some(to_section)
                                        && f.kind() == SymbolKind::Text
                                        && f.address() <= address
                                        && address < f.address() + f.size()
                                })
                                .ok_or_else(|| anyhow!("{program} calls {name}, which is in no function"))?;
                            let data = file.section_by_index(to_section)?.data()?;
                            let (a, b) = (function.address(), function.address() + function.size());
                            let bytes = data.get(a as usize..b as usize).ok_or_else(|| anyhow!("{name}: outside its section"))?;
                            let piece = (to_section, a, b, code.len());
                            code.extend_from_slice(bytes);
                            pieces.push(piece);
                            piece
                        }
                    };
                    let target_at = piece_at as i64 + (address - piece_start) as i64;
                    let to = target_at / 8 - (at / 8) as i64 - 1;
                    code[at + 1] = (code[at + 1] & 0x0f) | BPF_PSEUDO_CALL << 4;
                    code[at + 4..at + 8].copy_from_slice(&(to as i32).to_le_bytes());
                }
                op => bail!("{program}: cannot relocate instruction {op:#x} against {name}"),
            }
        }
    }
    Ok(code)
}

/// The cgroup v2 root this agent sees (its mount point, from `/proc/self/mountinfo`).
fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        if right.split_whitespace().next() == Some("cgroup2") {
            if let Some(point) = left.split_whitespace().nth(4) {
                return Ok(PathBuf::from(point));
            }
        }
    }
    bail!("no cgroup2 file system is mounted (mount -t cgroup2 none /sys/fs/cgroup)")
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<OwnedFd> {
    // SAFETY: the bpf system call with a zero-padded attribute block of its size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

fn put(attr: &mut [u8; 128], at: usize, bytes: &[u8]) {
    attr[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Loads `program` from `elf` (see the module documentation) and attaches it to every Unix
/// `connect` of the machine.
pub fn attach(elf: &[u8], program: &str, ebpf: &Ebpf) -> anyhow::Result<UnixConnectHook> {
    let code = instructions(elf, program, ebpf)?;
    let license = CString::new("GPL")?;
    let mut log = vec![0u8; 1 << 20];
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_le_bytes());
    put(&mut attr, 4, &((code.len() / 8) as u32).to_le_bytes());
    put(&mut attr, 8, &(code.as_ptr() as u64).to_le_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_le_bytes());
    put(&mut attr, 24, &1u32.to_le_bytes()); // log_level
    put(&mut attr, 28, &(log.len() as u32).to_le_bytes());
    put(&mut attr, 32, &(log.as_mut_ptr() as u64).to_le_bytes());
    put(&mut attr, 48, b"tssx_conn_unix\0");
    put(&mut attr, 68, &BPF_CGROUP_UNIX_CONNECT.to_le_bytes());
    let load = || bpf(BPF_PROG_LOAD, &mut attr);
    let program_fd = crate::loader::retry_interrupted_load(load, crate::loader::load_interrupted).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        anyhow!("the kernel refused {program} ({e}); verifier log, last lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    })?;
    let root = cgroup2_root()?;
    let cgroup = std::fs::File::open(&root).with_context(|| format!("opening the cgroup v2 root {}", root.display()))?;
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &(program_fd.as_raw_fd() as u32).to_le_bytes());
    put(&mut attr, 4, &(cgroup.as_raw_fd() as u32).to_le_bytes());
    put(&mut attr, 8, &BPF_CGROUP_UNIX_CONNECT.to_le_bytes());
    let link = bpf(BPF_LINK_CREATE, &mut attr).with_context(|| format!("attaching {program} to the cgroup v2 root {}", root.display()))?;
    tracing::debug!(root = %root.display(), instructions = code.len() / 8, "Unix connect hook attached");
    Ok(UnixConnectHook { _link: link, _program: program_fd })
}
