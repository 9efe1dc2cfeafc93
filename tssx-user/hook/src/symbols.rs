//! Finding libc's definition of an interposed name without `dlsym`, so that the real
//! functions can be resolved at their first use, even in a signal handler.
//!
//! `dlsym(RTLD_NEXT)` takes the dynamic loader's lock (it is not async-signal-safe) and costs
//! about 0.3 us per name: resolving every real function in the library constructor made every
//! process on the host pay ~11 us at start (`cargo xtask start-cost`). Instead, the constructor
//! notes the objects loaded after this one ([`snapshot`]: one `dladdr1`, no lookup), and
//! [`find`] looks a name up in their dynamic symbol tables (the GNU hash table, as the loader
//! does), in load order: memory reads only, no lock, no allocation. Objects loaded at start are
//! never unloaded, so the snapshot stays valid. What `find` does not find (an object without a
//! GNU hash table, a name none of them defines) falls back to `dlsym(RTLD_NEXT)`.
//!
//! As `dlsym`: the default version of a versioned name (a hidden, older version is skipped),
//! and an `STT_GNU_IFUNC` definition's resolver is called for the address.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use libc::{c_char, c_void};

/// The public head of glibc's `struct link_map` (`<link.h>`).
#[repr(C)]
struct LinkMap {
    l_addr: usize,
    l_name: *const c_char,
    l_ld: *const Dyn,
    l_next: *const LinkMap,
    l_prev: *const LinkMap,
}

/// `Elf64_Dyn`.
#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

/// `Elf64_Sym`.
#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

const DT_NULL: i64 = 0;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_GNU_HASH: i64 = 0x6fff_fef5;
const DT_VERSYM: i64 = 0x6fff_fff0;
const STT_FUNC: u8 = 2;
const STT_GNU_IFUNC: u8 = 10;
const STB_GLOBAL: u8 = 1;
const STB_WEAK: u8 = 2;
/// `dladdr1`'s request for the object's `link_map` (`<dlfcn.h>`).
const RTLD_DL_LINKMAP: libc::c_int = 2;

/// How many objects after this one are searched (libc and the loader, plus any loaded later
/// at start).
const MAX_OBJECTS: usize = 16;

/// The `link_map`s of the objects loaded after this one, in load order (0: none). Relaxed:
/// written by the constructor before `main` (and before any thread), read after.
static OBJECTS: [AtomicUsize; MAX_OBJECTS] = [const { AtomicUsize::new(0) }; MAX_OBJECTS];

/// Notes the objects loaded after this library (the library constructor: `dladdr1` takes the
/// loader's lock, which is free then).
pub fn snapshot() {
    let mut info: libc::Dl_info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let mut map: *mut c_void = std::ptr::null_mut();
    // SAFETY: the address of a function of this library; `map` receives its link_map.
    let ok = unsafe { libc::dladdr1(snapshot as *const c_void, &mut info, (&raw mut map).cast(), RTLD_DL_LINKMAP) };
    if ok == 0 || map.is_null() {
        return;
    }
    // SAFETY: the loader's list of objects loaded at start, which are never unloaded; walked
    // in the constructor, before any other thread exists.
    unsafe {
        let mut next = (*map.cast::<LinkMap>()).l_next;
        for slot in &OBJECTS {
            if next.is_null() {
                break;
            }
            slot.store(next as usize, Relaxed);
            next = (*next).l_next;
        }
    }
}

/// The address of the definition of `name` (NUL-terminated) in the first object after this one
/// that defines it, without a lock (see the module documentation); `None` if none was found.
pub fn find(name: &[u8]) -> Option<usize> {
    let name = name.strip_suffix(b"\0").unwrap_or(name);
    let hash = name.iter().fold(5381u32, |h, &c| h.wrapping_mul(33).wrapping_add(c as u32));
    OBJECTS.iter().map(|s| s.load(Relaxed)).take_while(|&m| m != 0).find_map(|m| {
        // SAFETY: a link_map of an object loaded at start (see `snapshot`), never unloaded.
        unsafe { find_in(&*(m as *const LinkMap), name, hash) }
    })
}

/// `name` in one object's GNU hash table.
///
/// # Safety
/// `map` is the link_map of a loaded object.
unsafe fn find_in(map: &LinkMap, name: &[u8], hash: u32) -> Option<usize> {
    let (mut strtab, mut symtab, mut gnu_hash, mut versym) = (0usize, 0usize, 0usize, 0usize);
    let mut d = map.l_ld;
    if d.is_null() {
        return None;
    }
    // SAFETY: (the whole function) the object's dynamic section and the tables it names, as
    // mapped by the loader; every index is bounded by the hash table's own counts.
    unsafe {
        while (*d).tag != DT_NULL {
            // The loader rewrites these to absolute addresses, except in objects whose dynamic
            // section is read-only (the vDSO): a value below the base is relative.
            let v = (*d).val as usize;
            let v = if v < map.l_addr { v + map.l_addr } else { v };
            match (*d).tag {
                DT_STRTAB => strtab = v,
                DT_SYMTAB => symtab = v,
                DT_GNU_HASH => gnu_hash = v,
                DT_VERSYM => versym = v,
                _ => {}
            }
            d = d.add(1);
        }
        if strtab == 0 || symtab == 0 || gnu_hash == 0 {
            return None;
        }
        let h = gnu_hash as *const u32;
        let (nbuckets, symoffset, bloom_size) = (*h, *h.add(1), *h.add(2));
        if nbuckets == 0 {
            return None;
        }
        let buckets = h.add(4).cast::<u64>().add(bloom_size as usize).cast::<u32>();
        let chain = buckets.add(nbuckets as usize);
        let mut idx = *buckets.add((hash % nbuckets) as usize);
        if idx < symoffset {
            return None;
        }
        loop {
            let ch = *chain.add((idx - symoffset) as usize);
            if ch | 1 == hash | 1 {
                let sym = &*(symtab as *const Sym).add(idx as usize);
                let hidden = versym != 0 && *(versym as *const u16).add(idx as usize) & 0x8000 != 0;
                let (kind, bind) = (sym.info & 0xf, sym.info >> 4);
                if !hidden
                    && sym.shndx != 0
                    && sym.value != 0
                    && (kind == STT_FUNC || kind == STT_GNU_IFUNC)
                    && (bind == STB_GLOBAL || bind == STB_WEAK)
                    && std::ffi::CStr::from_ptr((strtab + sym.name as usize) as *const c_char).to_bytes() == name
                {
                    let addr = map.l_addr + sym.value as usize;
                    if kind == STT_GNU_IFUNC {
                        // The resolver returns the implementation for this CPU (as the loader
                        // and dlsym call it).
                        let resolver: extern "C" fn() -> usize = std::mem::transmute(addr);
                        return Some(resolver());
                    }
                    return Some(addr);
                }
            }
            if ch & 1 != 0 {
                return None;
            }
            idx += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_dlsym_finds() {
        snapshot();
        // (The test binary is the "library" here: what follows it is libc and the loader.)
        for name in ["read\0", "write\0", "recvmmsg\0", "posix_spawn\0", "epoll_pwait2\0", "syscall\0", "close_range\0", "memcpy\0"] {
            // SAFETY: NUL-terminated names.
            let expected = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
            let found = find(name.as_bytes());
            if expected != 0 {
                assert_eq!(found, Some(expected), "{name}");
            }
        }
        assert_eq!(find(b"tssx_no_such_function\0"), None);
    }
}
