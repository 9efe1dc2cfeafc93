//! The eBPF programs a process holds, as the kernel names them: what the agent loaded.

use std::os::fd::{FromRawFd as _, OwnedFd};

/// `BPF_PROG_GET_FD_BY_ID` and `BPF_OBJ_GET_INFO_BY_FD` from linux/bpf.h.
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_PROG_TYPE_TRACEPOINT`.
pub const PROG_TYPE_TRACEPOINT: u32 = 5;
/// `BPF_PROG_TYPE_CGROUP_SOCK_ADDR`.
pub const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

/// One program: its type (`BPF_PROG_TYPE_*`) and its name (the kernel keeps 15 bytes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BpfProgram {
    /// `BPF_PROG_TYPE_*`.
    pub kind: u32,
    /// The name given at load time, cut to 15 bytes.
    pub name: String,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: the bpf system call with a zero-padded attribute block of its size.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// The program with id `id`, if it still exists.
fn program(id: u32) -> Option<BpfProgram> {
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_le_bytes());
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).ok()?;
    // SAFETY: a new fd the kernel just returned, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = [0u8; 256];
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_le_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_le_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_le_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    // struct bpf_prog_info: `type` at 0, `name[16]` at 64.
    let kind = u32::from_le_bytes(info[..4].try_into().ok()?);
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(BpfProgram { kind, name: String::from_utf8_lossy(&name[..end]).into_owned() })
}

/// Every eBPF program process `pid` holds a descriptor of (read from its `/proc` fdinfo, then
/// asked of the kernel by id), sorted. Needs root.
pub fn programs_of(pid: u32) -> Vec<BpfProgram> {
    let mut found = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return found };
    for entry in fds.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
        let id = info.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse::<u32>().ok());
        if let Some(program) = id.and_then(program) {
            found.push(program);
        }
    }
    found.sort();
    found.dedup();
    found
}
