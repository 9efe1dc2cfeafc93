//! [`Resources`]: what a process holds, counted from outside through `/proc/PID`.

use std::io;

/// A process's descriptors and shared-memory mappings, counted through `/proc/PID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    /// Open file descriptors.
    pub fds: usize,
    /// Descriptors that are memfds (`/memfd:` links): segments.
    pub memfd_fds: usize,
    /// Mappings of memfds in `/proc/PID/maps`.
    pub memfd_maps: usize,
    /// Resident set size in KiB (`VmRSS`).
    pub rss_kib: u64,
}

impl Resources {
    /// Counts them for `pid` now. Panics if `/proc/PID` cannot be read (the process is gone).
    pub fn of(pid: u32) -> Self {
        Self::read(pid).unwrap_or_else(|e| panic!("reading /proc/{pid}: {e}"))
    }

    /// As [`Resources::of`], or the error.
    pub fn read(pid: u32) -> io::Result<Self> {
        let mut fds = 0;
        let mut memfd_fds = 0;
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
            fds += 1;
            if std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:")) {
                memfd_fds += 1;
            }
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let memfd_maps = maps.lines().filter(|l| l.contains("/memfd:")).count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib =
            status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        Ok(Self { fds, memfd_fds, memfd_maps, rss_kib })
    }
}
