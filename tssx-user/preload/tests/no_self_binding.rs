//! The built `libtssx_preload.so` never calls one of its own exports.
//!
//! Inside the hook, a call to `read`, `close`, `sendmsg`, ... by name would bind (at load time,
//! through the PLT or GOT) to the hook's own export of that name, not to libc: the hook would
//! recurse into itself. So every internal call goes through the table of real functions
//! (`tssx_hook::sys`) or a raw system call, and the standard library's own references are
//! routed to libc by `--wrap` (see `build.rs` and `wrap_to_real!`). This test reads the `.so`'s
//! dynamic relocations and fails if any of them names a symbol the `.so` itself exports. It
//! reads the `.so` that `cargo build -p tssx-preload` left in the target directory (`cargo xtask
//! test` builds it before running the tests): cargo does not rebuild a cdylib for a test.

use object::{Object, ObjectSymbol, ObjectSymbolTable};

fn hook_path() -> std::path::PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/libtssx_preload.so
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe.parent().and_then(std::path::Path::parent).expect("target/<profile>");
    profile.join("libtssx_preload.so")
}

#[test]
fn no_relocation_binds_to_an_own_export() {
    let path = hook_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (build it: cargo build -p tssx-preload)", path.display()));
    let file = object::File::parse(&*bytes).expect("an ELF shared object");
    let exports: std::collections::BTreeSet<String> =
        file.dynamic_symbols().filter(|s| s.is_definition() && s.is_global()).filter_map(|s| s.name().ok().map(str::to_owned)).collect();
    assert!(exports.contains("read") && exports.contains("epoll_wait") && exports.contains("execl"), "exports: {exports:?}");
    // Debug builds export one self-test (see `tests/panic_guard.rs`).
    let internal = |e: &String| {
        (e.starts_with("tssx_") && !(cfg!(debug_assertions) && e == "tssx_debug_selftest_panic_guard")) || e.starts_with("__wrap_")
    };
    assert!(!exports.iter().any(internal), "internal symbols are exported: {exports:?}");
    let dynsym = file.dynamic_symbol_table().expect("a dynamic symbol table");
    let mut self_bound = std::collections::BTreeSet::new();
    let mut relocations = 0;
    for (_, relocation) in file.dynamic_relocations().expect("dynamic relocations") {
        // Dynamic relocations index the dynamic symbol table.
        if let object::RelocationTarget::Symbol(index) = relocation.target() {
            relocations += 1;
            let name = dynsym.symbol_by_index(index).ok().and_then(|s| s.name().ok().map(str::to_owned));
            if let Some(name) = name.filter(|n| exports.contains(n)) {
                self_bound.insert(name);
            }
        }
    }
    assert!(relocations > 10, "only {relocations} symbol relocations: not the hook's .so?");
    assert!(self_bound.is_empty(), "calls inside {} bind to its own exports: {self_bound:?}", path.display());
}
