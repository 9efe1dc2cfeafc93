//! The agent's state directory (default `/run/tssx`): the lock that keeps one agent per
//! directory, and the published list of watched paths (with the agent's settings for hooks)
//! that hooks read.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use crate::paths::WatchedPath;

/// Default state directory; the hook looks here too.
pub const DEFAULT_STATE_DIR: &str = "/run/tssx";
/// File in the state directory listing the watched patterns as given (see
/// [`tssx_common::pattern`]), one per line (`@name` for abstract),
/// after the settings for hooks (lines starting with `#`, e.g. `#claim-after-ns=1000000`).
pub const PATHS_FILE: &str = "paths";
/// Default `--claim-after`: a connection claims its segment once it lived this long.
pub const DEFAULT_CLAIM_AFTER: Duration = Duration::from_millis(1);
/// Default `--cool-after`: connections of one path that end plain in a row, after which a hook
/// tracks only one new connection of that path in 16 (the hook's `heat` module).
pub const DEFAULT_COOL_AFTER: u32 = 64;
/// Lock file held (flock) for as long as an agent uses the state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// An agent's claim on its state directory. Dropping it withdraws the published paths.
pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

/// Why the state directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another agent holds the lock.
    #[error(
        "another tssx-agent{} is already running with state directory {}; stop it or pass a different --state-dir",
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        dir.display()
    )]
    Busy {
        /// The directory.
        dir: PathBuf,
        /// Pid written in the lock file by the holder, if readable.
        holder: Option<u32>,
    },
    /// A filesystem operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Io { what, source }
}

impl StateDir {
    /// Creates `dir` (mode 0755) if needed and takes its lock.
    pub fn take(dir: &Path) -> Result<Self, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io_err(format!("creating state directory {}", dir.display())))?;
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        // SAFETY: flock on an fd we own; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = fs::read_to_string(&lock_path).ok().and_then(|s| s.trim().parse().ok());
                return Err(StateError::Busy { dir: dir.to_owned(), holder });
            }
            return Err(io_err(format!("locking {}", lock_path.display()))(err));
        }
        lock.set_len(0).map_err(io_err("truncating the lock file"))?;
        writeln!(lock, "{}", std::process::id()).map_err(io_err("writing the lock file"))?;
        Ok(Self { dir: dir.to_owned(), _lock: lock })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Publishes the watched patterns (mode 0644, replaced atomically), after the hooks' settings:
    /// `#claim-after-ns=N`, how long a connection lives before it claims a segment, and
    /// `#cool-after=N`, how many connections of a path end plain in a row before a hook tracks
    /// only probes of it (0: never).
    pub fn publish_paths(&self, paths: &[WatchedPath], claim_after: Duration, cool_after: u32) -> Result<(), StateError> {
        let mut text = format!("#claim-after-ns={}\n#cool-after={cool_after}\n", claim_after.as_nanos());
        text.extend(paths.iter().map(|p| format!("{p}\n")));
        let tmp = self.dir.join(format!(".{PATHS_FILE}.tmp"));
        let target = self.dir.join(PATHS_FILE);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err(format!("creating {}", tmp.display())))?;
        file.write_all(text.as_bytes()).map_err(io_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &target).map_err(io_err(format!("publishing {}", target.display())))?;
        Ok(())
    }
}

/// Why a duration given on the command line was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No number, a number with no unit (other than 0), or an unknown unit.
    #[error("`{0}` is not a duration: give a number and a unit (ns, us, ms, s), e.g. 500us, 1ms, 2s; or 0")]
    Malformed(String),
    /// Beyond what a hook can take (u64 nanoseconds).
    #[error("`{0}` is too long")]
    TooLong(String),
}

/// Parses a duration as `--claim-after` takes it: `0`, or a whole number with a unit `ns`, `us`
/// (or `µs`), `ms` or `s`, e.g. `500us`, `1ms`, `2s` (spaces between number and unit allowed).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let malformed = || DurationError::Malformed(text.to_owned());
    let n: u64 = number.parse().map_err(|_| malformed())?;
    let ns_per = match unit.trim() {
        "" if n == 0 => 0,
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        _ => return Err(malformed()),
    };
    n.checked_mul(ns_per).map(Duration::from_nanos).ok_or_else(|| DurationError::TooLong(text.to_owned()))
}

impl Drop for StateDir {
    fn drop(&mut self) {
        // Hooks treat a missing paths file as "no agent": withdraw it before the lock goes, and
        // the control socket with it (live connections never need the agent again).
        let _ = fs::remove_file(self.dir.join(PATHS_FILE));
        let _ = fs::remove_file(self.dir.join(tssx_common::control::CONTROL_SOCKET));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tssx-state-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn publishes_and_withdraws_paths() {
        let dir = temp_dir("publish");
        let paths: Vec<WatchedPath> = vec!["/run/a.sock".parse().unwrap(), "@b".parse().unwrap()];
        {
            let state = StateDir::take(&dir).unwrap();
            state.publish_paths(&paths, Duration::from_micros(500), 7).unwrap();
            assert_eq!(fs::read_to_string(dir.join(PATHS_FILE)).unwrap(), "#claim-after-ns=500000\n#cool-after=7\n/run/a.sock\n@b\n");
        }
        assert!(!dir.join(PATHS_FILE).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations_as_the_command_line_gives_them() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("500µs"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration(" 2 s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ns"), Ok(Duration::from_nanos(250)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in ["", "5", "ms", "1.5ms", "1 h", "-1ms", "1msx"] {
            assert_eq!(parse_duration(bad), Err(DurationError::Malformed(bad.to_owned())), "{bad}");
        }
        assert_eq!(parse_duration("99999999999999999999"), Err(DurationError::Malformed("99999999999999999999".into())));
        assert_eq!(parse_duration("18446744073709551615s"), Err(DurationError::TooLong("18446744073709551615s".into())));
        assert!(DurationError::Malformed("5".into()).to_string().contains("e.g. 500us, 1ms, 2s"));
    }

    #[test]
    fn busy_messages_name_the_holder_when_known() {
        let dir = PathBuf::from("/run/tssx");
        assert_eq!(
            StateError::Busy { dir: dir.clone(), holder: Some(812) }.to_string(),
            "another tssx-agent (pid 812) is already running with state directory /run/tssx; stop it or pass a different --state-dir"
        );
        assert_eq!(
            StateError::Busy { dir, holder: None }.to_string(),
            "another tssx-agent is already running with state directory /run/tssx; stop it or pass a different --state-dir"
        );
        let io = StateError::Io { what: "opening x".into(), source: io::Error::from_raw_os_error(libc::EACCES) };
        assert!(io.to_string().starts_with("opening x: "), "{io}");
        assert!(std::error::Error::source(&io).is_some());
    }

    #[test]
    fn second_taker_is_refused_with_the_holder_pid() {
        let dir = temp_dir("lock");
        let _first = StateDir::take(&dir).unwrap();
        match StateDir::take(&dir) {
            Err(StateError::Busy { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected Busy, got {:?}", other.map(|_| ())),
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
