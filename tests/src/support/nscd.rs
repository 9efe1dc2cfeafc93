//! [`Nscd`]: Debian's nscd in the foreground (`nscd -F -f CONFIG`) inside a
//! [`MountNamespace`] that has its own `/run/nscd` (and the agent its own `/run/tssx`), so that
//! the machine's name lookups never see it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _};

use super::{namespace::MountNamespace, process::Process, wait::poll_until};

/// Debian's nscd.
pub const NSCD: &str = "/usr/sbin/nscd";
/// The socket glibc's nscd client connects to and nscd binds (both spell it this way).
pub const NSCD_SOCKET: &str = "/var/run/nscd/socket";
/// How long nscd may take to get ready, and to exit once told.
const NSCD_TIMEOUT: Duration = Duration::from_secs(30);

/// The directories that need a private tmpfs for nscd and its agent: the agent's state
/// directory (so that only the processes of the namespace find that agent), nscd's socket and
/// pid directory (`/var/run/nscd` too where `/var/run` is not `/run`) and its persistent-cache
/// directory.
pub fn private_dirs() -> Vec<String> {
    let mut dirs = vec!["/run/tssx".to_owned(), "/run/nscd".to_owned(), "/var/cache/nscd".to_owned()];
    if std::fs::canonicalize("/var/run").is_ok_and(|p| p != Path::new("/run")) {
        dirs.push("/var/run/nscd".to_owned());
    }
    dirs
}

/// Writes an nscd configuration into `dir` and returns its path: Debian's, with what a private
/// foreground instance needs: `paranoia no` (no re-exec), `server-user nobody` (Debian runs
/// nscd as root and lets it keep root; dropping to nobody is the hardened set-up, and makes the
/// server and its root clients different users), `persistent no` (no cache files in
/// /var/cache/nscd), the passwd, group and hosts caches with Debian's lifetimes, `shared` as
/// given (with `yes` clients map the cache, fetched over the socket with SCM_RIGHTS, and ask the
/// socket only on a miss; with `no` every lookup is a connection), services and netgroup off.
pub fn config(dir: &Path, shared: bool) -> anyhow::Result<PathBuf> {
    let shared = if shared { "yes" } else { "no" };
    let mut conf = String::from("debug-level 0\nparanoia no\nserver-user nobody\n");
    for (db, positive, negative) in [("passwd", 600, 20), ("group", 3600, 60), ("hosts", 3600, 20)] {
        conf += &format!(
            "enable-cache {db} yes\npositive-time-to-live {db} {positive}\nnegative-time-to-live {db} {negative}\n\
             suggested-size {db} 211\ncheck-files {db} yes\npersistent {db} no\nshared {db} {shared}\nmax-db-size {db} 33554432\n"
        );
    }
    conf += "enable-cache services no\nenable-cache netgroup no\n";
    let path = dir.join(format!("nscd-shared-{shared}.conf"));
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A running `nscd -F -f CONFIG` in a namespace (killed if dropped without [`Nscd::stop`]).
pub struct Nscd {
    process: Process,
    config: PathBuf,
}

impl Nscd {
    /// Starts nscd with `config` in `ns`, with `LD_PRELOAD=preload` if given, and waits until
    /// it answers `nscd -g` on its socket.
    pub fn start(ns: &MountNamespace, config: &Path, preload: Option<&Path>) -> anyhow::Result<Self> {
        let mut cmd = ns.command(NSCD);
        cmd.arg("-F").arg("-f").arg(config);
        match preload {
            Some(so) => cmd.env("LD_PRELOAD", so),
            None => cmd.env_remove("LD_PRELOAD"),
        };
        let process = Process::try_spawn_group(cmd).context("starting nscd (cargo xtask setup installs it)")?;
        let mut nscd = Self { process, config: config.to_owned() };
        let mut died = None;
        let ready = poll_until(NSCD_TIMEOUT, || {
            died = nscd.process.try_wait();
            died.is_some() || nscd.misses(ns).is_some()
        });
        if let Some(status) = died {
            nscd.process.wait_closed(Duration::from_secs(1));
            bail!("nscd exited early: {status}; stderr: {}", nscd.process.stderr_text());
        }
        ensure!(ready, "nscd did not answer within {NSCD_TIMEOUT:?}; stderr: {}", nscd.process.stderr_text());
        Ok(nscd)
    }

    /// Its cache misses (positive + negative) per database, from `nscd -g` (run plain in the
    /// namespace): a lookup that reached nscd counts there, one that fell back to the files
    /// does not. `None` while nscd does not answer.
    pub fn misses(&self, ns: &MountNamespace) -> Option<BTreeMap<String, u64>> {
        let mut cmd = ns.command(NSCD);
        cmd.arg("-f").arg(&self.config).arg("-g").env_remove("LD_PRELOAD");
        let out = cmd.output().ok().filter(|o| o.status.success())?;
        let mut misses = BTreeMap::new();
        let mut db = String::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.strip_suffix(" cache:") {
                db = name.trim().to_owned();
            } else if line.contains("cache misses on") {
                let n: u64 = line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
                *misses.entry(db.clone()).or_default() += n;
            }
        }
        Some(misses)
    }

    /// Stops it (SIGTERM) and checks that it exits with 0 within 30 s.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.process.stop(libc::SIGTERM, NSCD_TIMEOUT).context("nscd did not exit within 30 s of SIGTERM")?;
        ensure!(status.success(), "nscd exited with {status}; stderr: {}", self.process.stderr_text());
        Ok(())
    }
}
