//! Builds the eBPF programs (tssx-ebpf) for bpfel-unknown-none with aya-build and leaves the
//! object in OUT_DIR, where `src/loader.rs` embeds it.
//!
//! Needs the nightly toolchain with `rust-src` and `bpf-linker` on PATH: `cargo xtask setup`
//! installs both. Set `TSSX_SKIP_EBPF=1` to build user space alone (the agent then refuses to
//! start, saying so); handy for working on code that never loads the programs.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TSSX_SKIP_EBPF");
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if std::env::var_os("TSSX_SKIP_EBPF").is_some_and(|v| v == "1") {
        std::fs::write(out_dir.join("tssx"), b"").context("writing placeholder eBPF object")?;
        println!("cargo:warning=TSSX_SKIP_EBPF=1: eBPF programs not built");
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../../tssx-ebpf");
    let root_dir = root_dir.canonicalize().with_context(|| format!("tssx-ebpf not found at {}", root_dir.display()))?;
    let root_dir = root_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path to tssx-ebpf"))?;
    aya_build::build_ebpf([aya_build::Package { name: "tssx-ebpf", root_dir, ..Default::default() }], aya_build::Toolchain::default())
}
