//! [`TempDir`]: a fresh directory for one test (or one xtask run), removed when dropped.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

/// A fresh, empty directory `$TMPDIR/tssx-<name>-<pid>-<n>`, removed with everything in it
/// when dropped — unless the thread is panicking: a failed test keeps its directory (sockets,
/// server logs) for inspection and says where it is.
///
/// Bind it to a variable that lives as long as the test needs the directory (`let dir =
/// TempDir::new(...)`): `TempDir::new("x").socket("a.sock")` removes the directory at the end
/// of that statement. Dereferences to [`Path`].
#[derive(Debug)]
#[must_use = "the directory is removed when this is dropped"]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates the directory (an old one of the same name is removed first). Panics if it
    /// cannot.
    pub fn new(name: &str) -> Self {
        Self::create(name).unwrap_or_else(|e| panic!("creating a temporary directory for {name}: {e}"))
    }

    /// As [`TempDir::new`], or the error.
    pub fn create(name: &str) -> std::io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // Relaxed: only uniqueness matters.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tssx-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory as a UTF-8 string: a socket path for the test programs'
    /// command lines and the agent's `--paths`.
    pub fn socket(&self, name: &str) -> String {
        let path = self.path.join(name);
        path.to_str().unwrap_or_else(|| panic!("non-UTF-8 temporary path {}", path.display())).to_owned()
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<OsStr> for TempDir {
    fn as_ref(&self) -> &OsStr {
        self.path.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection (the test failed)", self.path.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TempDir;

    #[test]
    fn removed_when_dropped_and_unique() {
        let a = TempDir::new("unit");
        let b = TempDir::new("unit");
        assert_ne!(a.path(), b.path());
        std::fs::create_dir(a.join("sub")).unwrap();
        std::fs::write(a.join("sub").join("f"), b"x").unwrap();
        assert!(a.socket("s.sock").ends_with("/s.sock"));
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
    }
}
