//! [`MountNamespace`]: a private mount namespace with fresh tmpfs directories, for running a
//! system service (nscd on `/run/nscd`) and an agent with its own `/run/tssx` without touching
//! the machine's own.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _};

use super::process::Process;

/// A private mount namespace (`unshare --mount --propagation private`) in which each of the
/// given directories is a fresh tmpfs (mode 0755), kept alive by a holder process until
/// dropped. Processes are started inside it with [`MountNamespace::command`] (`nsenter`); its
/// files are read from outside through `/proc/HOLDER/root` ([`MountNamespace::path`]).
///
/// The mounts never propagate to the machine: once the holder and every process started in the
/// namespace are gone, so are they. Only the mount points themselves are created (`mkdir -p`)
/// if missing, as empty directories.
pub struct MountNamespace {
    holder: Process,
}

impl MountNamespace {
    /// Creates the namespace with a tmpfs on each of `tmpfs_dirs` (absolute paths). Panics if
    /// `unshare` or a mount fails.
    pub fn new(tmpfs_dirs: &[&str]) -> Self {
        Self::create(tmpfs_dirs).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// As [`MountNamespace::new`], or why not.
    pub fn create(tmpfs_dirs: &[&str]) -> anyhow::Result<Self> {
        let script = "set -e; for d; do mkdir -p \"$d\"; mount -t tmpfs -o mode=0755 tmpfs \"$d\"; done; echo ready; exec sleep 2147483647";
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"]).args(tmpfs_dirs).env_remove("LD_PRELOAD");
        let mut holder = Process::try_spawn_group(cmd).with_context(|| "starting unshare (util-linux)")?;
        if holder.next_line(Duration::from_secs(10)).as_deref() != Some("ready") {
            let status = holder.wait(Duration::from_secs(1));
            bail!("creating a mount namespace with tmpfs on {tmpfs_dirs:?} failed ({status:?}): {}", holder.stderr_text());
        }
        Ok(Self { holder })
    }

    /// The pid of the process holding the namespace.
    pub fn pid(&self) -> u32 {
        self.holder.pid()
    }

    /// The arguments that run a program inside the namespace: `nsenter --target PID --mount --`.
    /// nsenter `exec`s the program, so the pid of the started process is the program's.
    pub fn wrapper(&self) -> Vec<OsString> {
        ["nsenter", "--target", &self.pid().to_string(), "--mount", "--"].iter().map(OsString::from).collect()
    }

    /// `program` to be run inside the namespace (add its arguments and environment as usual;
    /// `LD_PRELOAD` set on it reaches the program too).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let wrapper = self.wrapper();
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..]).arg(program);
        cmd
    }

    /// Where `path` (as seen inside the namespace) is seen from outside it. An absolute symbolic
    /// link on the way (`/var/run -> /run`) is followed outside the namespace: give the path
    /// without one.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        Path::new(&format!("/proc/{}/root", self.pid())).join(path.strip_prefix("/").unwrap_or(path))
    }
}
