//! Compiles the C shim for `execl`/`execlp`/`execle` (C varargs) into the hook, and routes the
//! `.so`'s internal references to interposed names to libc (`--wrap`, see `wrap_to_real!` in
//! lib.rs).

/// The interposed names that something inside the `.so` (the standard library's panic and
/// backtrace code) refers to: each internal reference calls `__wrap_<name>`, which jumps to
/// libc's function. `tests/no_self_binding.rs` fails if a name is missing here.
const WRAPPED: &[&str] = &["read", "write", "readv", "writev", "close", "syscall"];

fn main() {
    for name in WRAPPED {
        println!("cargo:rustc-cdylib-link-arg=-Wl,--wrap={name}");
    }
    println!("cargo:rerun-if-changed=src/execl.c");
    // Hidden: the shim's functions are the trampolines' targets, never exports.
    cc::Build::new().file("src/execl.c").flag("-fvisibility=hidden").warnings(true).extra_warnings(true).compile("tssx_execl");
}
