//! Facts about the running kernel that the agent needs before loading: the bpffs and tracefs
//! mounts, and tracepoint field offsets read from tracefs format files.

use std::{fs, io, path::Path};

use tssx_common::event::TraceConfig;

/// Where bpffs is mounted by convention.
pub const BPFFS: &str = "/sys/fs/bpf";
/// Where tracefs is mounted by convention.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Error from the kernel-facts helpers.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `mount` failed.
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount point.
        target: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A tracepoint format file could not be read.
    #[error("cannot read the format of tracepoint {tracepoint}: {source}")]
    Format {
        /// The tracepoint, `category/name`.
        tracepoint: String,
        /// The OS error.
        source: io::Error,
    },
    /// A field the programs need is not in the tracepoint's format.
    #[error("tracepoint {tracepoint} has no field `{field}` on this kernel")]
    MissingField {
        /// The tracepoint, `category/name`.
        tracepoint: String,
        /// The field name.
        field: &'static str,
    },
}

/// True if some filesystem of type `fstype` is mounted on `target` (per /proc/self/mounts).
pub fn is_mounted(fstype: &str, target: &str) -> bool {
    fs::read_to_string("/proc/self/mounts").map(|mounts| mounts_contain(&mounts, fstype, target)).unwrap_or(false)
}

fn mounts_contain(mounts: &str, fstype: &str, target: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_src, mnt, ty) = (fields.next(), fields.next(), fields.next());
        mnt == Some(target) && ty == Some(fstype)
    })
}

/// Mounts bpffs on [`BPFFS`] and tracefs on [`TRACEFS`] unless they already are.
/// Returns the mounts it made, for the log.
pub fn ensure_mounts() -> Result<Vec<&'static str>, KernelError> {
    let mut made = Vec::new();
    for (fstype, target) in [("bpf", BPFFS), ("tracefs", TRACEFS)] {
        if is_mounted(fstype, target) {
            continue;
        }
        mount(fstype, target)?;
        made.push(target);
    }
    Ok(made)
}

fn mount(fstype: &'static str, target: &'static str) -> Result<(), KernelError> {
    let err = |source| KernelError::Mount { fstype, target, source };
    let c_type = std::ffi::CString::new(fstype).expect("no NUL in literal");
    let c_target = std::ffi::CString::new(target).expect("no NUL in literal");
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; data is null.
    let rc = unsafe { libc::mount(c_type.as_ptr(), c_target.as_ptr(), c_type.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Offset of `field` in a tracepoint format file's text (`field:<type> <field>;\toffset:N;`).
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        // The name is the last word of the declaration, minus any array suffix (`comm[16]`).
        let name = decl.split_whitespace().last()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let offset = rest.trim().strip_prefix("offset:")?;
        offset.split(';').next()?.trim().parse().ok()
    })
}

fn read_format(tracefs: &Path, tracepoint: &str) -> Result<String, KernelError> {
    let path = tracefs.join("events").join(tracepoint).join("format");
    fs::read_to_string(&path).map_err(|source| KernelError::Format { tracepoint: tracepoint.to_owned(), source })
}

/// Reads the offsets of the `sched` and `io_uring` tracepoint fields the programs use from
/// `tracefs`.
pub fn trace_config(tracefs: &Path) -> Result<TraceConfig, KernelError> {
    let need = |tracepoint: &str, format: &str, field: &'static str| {
        field_offset(format, field).ok_or_else(|| KernelError::MissingField { tracepoint: tracepoint.to_owned(), field })
    };
    let fork = read_format(tracefs, "sched/sched_process_fork")?;
    let exit = read_format(tracefs, "sched/sched_process_exit")?;
    Ok(TraceConfig {
        fork_child_pid_off: need("sched/sched_process_fork", &fork, "child_pid")?,
        exit_pid_off: need("sched/sched_process_exit", &exit, "pid")?,
        exit_group_dead_off: field_offset(&exit, "group_dead").unwrap_or(TraceConfig::ABSENT),
        ready: 1,
        relative: 0,
        io_uring_create_fd_off: read_format(tracefs, "io_uring/io_uring_create")
            .ok()
            .and_then(|format| field_offset(&format, "fd"))
            .unwrap_or(TraceConfig::ABSENT),
        // No prefilter until the loader fills it from the watched paths.
        exact_lengths: TraceConfig::EVERY_LENGTH,
        exact_abstract: 1,
        prefixes: 1,
        // The loader reads the running kernel's layout when it attaches the connect hook.
        sock_addr_uaddr_off: TraceConfig::SOCK_ADDR_UADDR_OFF,
        sock_addr_uaddrlen_off: TraceConfig::SOCK_ADDR_UADDRLEN_OFF,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork\nID: 301\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
    const FORK_OLD: &str = "format:\n\
        \tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";

    #[test]
    fn offsets_from_both_layouts() {
        assert_eq!(field_offset(FORK_6_18, "child_pid"), Some(20));
        assert_eq!(field_offset(FORK_6_18, "parent_pid"), Some(12));
        assert_eq!(field_offset(FORK_OLD, "child_pid"), Some(44));
        assert_eq!(field_offset(FORK_OLD, "child_comm"), Some(28));
        assert_eq!(field_offset(FORK_OLD, "group_dead"), None);
        // A field name that is a suffix of another must not match it.
        assert_eq!(field_offset(FORK_OLD, "pid"), None);
    }

    #[test]
    fn error_messages() {
        let missing = KernelError::MissingField { tracepoint: "sched/sched_process_fork".into(), field: "child_pid" };
        assert_eq!(missing.to_string(), "tracepoint sched/sched_process_fork has no field `child_pid` on this kernel");
        assert!(std::error::Error::source(&missing).is_none());
        let mount = KernelError::Mount { fstype: "bpf", target: BPFFS, source: io::Error::from_raw_os_error(libc::EPERM) };
        assert!(mount.to_string().starts_with("cannot mount bpf on /sys/fs/bpf: "), "{mount}");
        assert!(std::error::Error::source(&mount).is_some());
    }

    #[test]
    fn mounts_are_matched_by_type_and_target() {
        let mounts = "bpf /sys/fs/bpf bpf rw 0 0\nnone /sys/kernel/tracing tracefs rw 0 0\n";
        assert!(mounts_contain(mounts, "bpf", BPFFS));
        assert!(mounts_contain(mounts, "tracefs", TRACEFS));
        assert!(!mounts_contain(mounts, "tracefs", BPFFS));
        assert!(!mounts_contain("", "bpf", BPFFS));
    }

    #[test]
    fn running_kernel_has_the_fields() {
        // Skipped where tracefs is not mounted (the agent mounts it; unit tests do not).
        if !is_mounted("tracefs", TRACEFS) {
            return;
        }
        let cfg = trace_config(Path::new(TRACEFS)).unwrap();
        assert_eq!(cfg.ready, 1);
        assert!(cfg.fork_child_pid_off >= 8);
        assert!(cfg.exit_pid_off >= 8);
    }
}
