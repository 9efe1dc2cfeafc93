//! Compiles the C shim for `execl`/`execlp`/`execle` (C varargs) into the hook, and routes the
//! `.so`'s internal references to interposed names to libc (`--wrap`, see `wrap_to_real!` in
//! lib.rs).

/// The interposed names that something inside the `.so` (the standard library's panic and
/// backtrace code) refers to: each internal reference calls `__wrap_<name>`, which jumps to
/// libc's function. `tests/no_self_binding.rs` fails if a name is missing here.
const WRAPPED: &[&str] = &["read", "write", "readv", "writev", "close", "syscall", "sigaction"];

fn main() {
    link_unwinder_statically();
    for name in WRAPPED {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--wrap={name}");
    }
    println!("cargo:rerun-if-changed=src/execl.c");
    // Hidden: the shim's functions are the trampolines' targets, never exports.
    cc::Build::new().file("src/execl.c").flag("-fvisibility=hidden").warnings(true).extra_warnings(true).compile("tssx_execl");
}

/// Links the unwinder the standard library needs (for `catch_unwind` in every export) into the
/// `.so` instead of loading `libgcc_s.so.1` at run time: opening and relocating that extra
/// library was the largest part of what the hook added to every process start. The standard
/// library asks for `-lgcc_s`; a `libgcc_s.a` in a directory searched before the system's,
/// pointing at gcc's `libgcc_eh.a` (position-independent, what `gcc -static-libgcc` links),
/// answers it. The `.so` exports only its `#[no_mangle]` functions (rustc's version script), so
/// this copy of the unwinder never interposes on the application's.
fn link_unwinder_statically() {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = std::process::Command::new(&cc).arg("-print-file-name=libgcc_eh.a").output() else { return };
    let eh = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !eh.is_absolute() || !eh.exists() {
        // No static unwinder: libgcc_s.so.1 is loaded at run time as before.
        println!("cargo:warning=libgcc_eh.a not found; the hook loads libgcc_s.so.1 at run time");
        return;
    }
    let dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("static-unwind");
    std::fs::create_dir_all(&dir).expect("creating OUT_DIR/static-unwind");
    let link = dir.join("libgcc_s.a");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&eh, &link).expect("linking libgcc_s.a to libgcc_eh.a");
    println!("cargo:rustc-link-search=native={}", dir.display());
}
