//! Compiles the C shim for `execl`/`execlp`/`execle` (C varargs) into the hook.
fn main() {
    println!("cargo:rerun-if-changed=src/execl.c");
    cc::Build::new().file("src/execl.c").flag("-fvisibility=default").warnings(true).extra_warnings(true).compile("tssx_execl");
}
