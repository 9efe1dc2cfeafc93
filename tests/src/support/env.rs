//! Where the built binaries are, and the one precondition of the end-to-end tests (root).

use std::path::{Path, PathBuf};

/// Panics with a clear message unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the end-to-end tests load eBPF programs: run them as root (cargo xtask test)");
}

/// `target/<profile>/` of the running test binary (`target/<profile>/deps/<test binary>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("target dir").to_owned()
}

/// Path of the `tssx-agent` binary built next to the tests (panics if it is missing).
pub fn agent_bin() -> PathBuf {
    let bin = target_dir().join("tssx-agent");
    assert!(bin.exists(), "{} is missing: build it first (`cargo build -p tssx-agent`; `cargo xtask test` does)", bin.display());
    bin
}

/// Path of `libtssx_preload.so` built next to the tests (panics if it is missing).
pub fn hook() -> PathBuf {
    let so = target_dir().join("libtssx_preload.so");
    assert!(so.exists(), "{} is missing: `cargo build -p tssx-preload` (cargo xtask test does)", so.display());
    so
}
