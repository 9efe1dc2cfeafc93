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

/// The CPU time process `pid` used so far (user + system, from `/proc/PID/stat`; zero if it is
/// gone).
pub fn cpu_time(pid: u32) -> std::time::Duration {
    cpu_times(pid).total()
}

/// CPU time split into the time spent in the program (user) and in the kernel for it (system).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// In the program (utime).
    pub user: std::time::Duration,
    /// In the kernel on its behalf (stime).
    pub system: std::time::Duration,
}

impl CpuTimes {
    /// User + system.
    pub fn total(self) -> std::time::Duration {
        self.user + self.system
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, other: CpuTimes) -> CpuTimes {
        CpuTimes { user: self.user + other.user, system: self.system + other.system }
    }
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, other: CpuTimes) -> CpuTimes {
        CpuTimes { user: self.user.saturating_sub(other.user), system: self.system.saturating_sub(other.system) }
    }
}

impl std::iter::Sum for CpuTimes {
    fn sum<I: Iterator<Item = CpuTimes>>(iter: I) -> CpuTimes {
        iter.fold(CpuTimes::default(), |a, b| a + b)
    }
}

/// The user and system CPU time process `pid` used so far (from `/proc/PID/stat`, in clock
/// ticks; zero if it is gone).
pub fn cpu_times(pid: u32) -> CpuTimes {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold blanks): state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ticks = |i: usize| std::time::Duration::from_micros(f.get(i).copied().unwrap_or(0) * 1_000_000 / hz);
    CpuTimes { user: ticks(0), system: ticks(1) }
}
