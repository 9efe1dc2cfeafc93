//! No panic leaves the hook, and catching one costs no extra library at process start.
//!
//! Every export runs inside `guarded` (catch_unwind). The unwinder that makes catching work is
//! linked into the `.so` (gcc's `libgcc_eh.a`, see `build.rs`) instead of loading
//! `libgcc_s.so.1` into every process: that library was most of what the hook added to a
//! process's start. These tests read the `.so` that `cargo build -p tssx-preload` left in the
//! target directory (as `no_self_binding.rs` does).

use object::{
    read::elf::{Dyn as _, SectionHeader as _},
    Object, ObjectSymbol,
};

fn hook_path() -> std::path::PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/libtssx_preload.so
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe.parent().and_then(std::path::Path::parent).expect("target/<profile>");
    profile.join("libtssx_preload.so")
}

#[test]
fn the_hook_needs_libc_only() {
    let path = hook_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (build it: cargo build -p tssx-preload)", path.display()));
    let file = object::File::parse(&*bytes).expect("an ELF shared object");
    let needed: Vec<String> = match file {
        object::File::Elf64(ref elf) => {
            let endian = elf.endian();
            let data = elf.data();
            let mut needed = Vec::new();
            for section in elf.elf_section_table().iter() {
                if let Ok(Some((entries, link))) = section.dynamic(endian, data) {
                    let strings = elf.elf_section_table().strings(endian, data, link).expect("dynamic strings");
                    for entry in entries {
                        if entry.tag32(endian).is_some_and(|t| i64::from(t) == object::elf::DT_NEEDED) {
                            let name = entry.string(endian, strings).expect("DT_NEEDED name");
                            needed.push(String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
            }
            needed
        }
        _ => panic!("{}: not a 64-bit ELF object", path.display()),
    };
    assert!(needed.iter().any(|n| n.starts_with("libc.so")), "NEEDED: {needed:?}");
    assert!(!needed.iter().any(|n| n.starts_with("libgcc_s")), "the hook loads libgcc_s at every process start: {needed:?}");
    // The unwinder is inside (a local symbol), never exported.
    let has_unwinder = file.symbols().any(|s| s.is_definition() && s.name() == Ok("_Unwind_RaiseException"));
    assert!(has_unwinder, "no unwinder linked into {}", path.display());
    assert!(
        !file.dynamic_symbols().any(|s| s.is_definition() && s.name().is_ok_and(|n| n.starts_with("_Unwind"))),
        "the hook exports the unwinder"
    );
}

#[cfg(debug_assertions)]
#[test]
fn a_panic_inside_an_export_becomes_eio() {
    let path = std::ffi::CString::new(hook_path().into_os_string().into_encoded_bytes()).expect("path without NUL");
    // SAFETY: a valid C string; RTLD_LOCAL keeps the hook's exports out of this process's
    // global scope (its own read/write stay libc's).
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {path:?} failed");
    // SAFETY: a valid handle and a NUL-terminated name.
    let f = unsafe { libc::dlsym(handle, c"tssx_debug_selftest_panic_guard".as_ptr()) };
    assert!(!f.is_null(), "the debug .so has no self-test export");
    // SAFETY: the export's signature is `extern "C" fn() -> c_int`.
    let f: extern "C" fn() -> libc::c_int = unsafe { std::mem::transmute(f) };
    // SAFETY: errno is this thread's.
    unsafe { *libc::__errno_location() = 0 };
    assert_eq!(f(), -1, "the self-test did not fail with -1");
    // SAFETY: as above.
    assert_eq!(unsafe { *libc::__errno_location() }, libc::EIO, "errno after a caught panic");
}
