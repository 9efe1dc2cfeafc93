//! [`MachineLock`]: exclusive use of the default state directory, machine-wide.

use std::{fs::File, io, path::Path};

/// The lock file (an `flock` on it, never its contents).
pub const LOCK_FILE: &str = "/run/tssx-tests.lock";

/// Exclusive use of the default state directory ([`super::DEFAULT_STATE_DIR`]), held until
/// dropped: the hook only finds an agent there, so every test that runs hooked programs, `cargo
/// xtask soak` and `cargo xtask report` take this lock (an `flock` on [`LOCK_FILE`], shared by
/// every process on the machine) for their whole run. [`super::HookedAgent`] takes it for you.
#[derive(Debug)]
pub struct MachineLock {
    _file: File,
}

/// The former name of [`MachineLock`].
pub type DefaultAgentLock = MachineLock;

impl MachineLock {
    /// Blocks until no other process holds the lock, then holds it. Panics on an I/O error.
    pub fn acquire() -> Self {
        Self::acquire_reporting(|| ()).unwrap_or_else(|e| panic!("locking {LOCK_FILE}: {e}"))
    }

    /// Takes the lock if it is free; otherwise calls `on_busy` (to say why we wait) and blocks
    /// until it is free.
    pub fn acquire_reporting(on_busy: impl FnOnce()) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(Path::new(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => return Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => on_busy(),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        loop {
            match file.lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
