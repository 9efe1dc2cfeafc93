//! System-wide mode: `tssx-agent install` / `uninstall`.
//!
//! `install` copies the hook to a stable path (default [`DEFAULT_LIB_DIR`]`/libtssx_preload.so`)
//! and adds that path, as a line of its own, to `/etc/ld.so.preload`, so that the dynamic
//! loader maps the hook into every dynamically linked process started afterwards (setuid
//! programs included: `/etc/ld.so.preload` is not subject to the `LD_PRELOAD` restrictions).
//! `uninstall` removes exactly that line, then the copy.
//!
//! Both are idempotent and never leave a half-written file behind: the library and
//! `ld.so.preload` are each written to a temporary file in the same directory, synced, given
//! mode 0644 and renamed over the old one, so a process starting at any moment sees either the
//! old or the new content. Replacing the library by rename (never in place) also keeps running
//! processes, which have the old copy mapped, from crashing. Before `ld.so.preload` names a new
//! copy, `install` checks that the copy loads: it runs `/bin/true` with `LD_PRELOAD` set to it.
//!
//! Other lines of `ld.so.preload` are kept byte for byte. A file left empty by `uninstall` is
//! removed (Debian ships none).
//!
//! The installed copy carries no symbol table and no debug info: the release build
//! (`cargo xtask build --release`) is stripped already; a hook that is not (a debug build, ten
//! times the size, mapped into every process) is installed as `strip --strip-unneeded` (binutils)
//! leaves it, its exported functions (the dynamic symbols) untouched. Without `strip` it is
//! installed as it is, with a warning.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

/// Where `install` puts the hook unless told otherwise.
pub const DEFAULT_LIB_DIR: &str = "/usr/local/lib/tssx";
/// The file the dynamic loader reads for system-wide preloads.
pub const DEFAULT_PRELOAD_FILE: &str = "/etc/ld.so.preload";
/// File name of the hook, in the build directory and in the library directory.
pub const HOOK_FILE_NAME: &str = "libtssx_preload.so";

/// What `install` or `uninstall` did, for the command's output.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The installed (or removed) library path, as written in the preload file.
    pub library: PathBuf,
    /// Whether the preload file changed (false: the line was already there / already gone).
    pub preload_changed: bool,
    /// What `install` did about the source's symbols and debug info (`uninstall`: [`Strip::AlreadyStripped`]).
    pub strip: Strip,
}

/// Whether the installed copy was stripped on the way.
#[derive(Debug, PartialEq, Eq)]
pub enum Strip {
    /// The source had no symbol table and no debug info (the release build): copied as it is.
    AlreadyStripped,
    /// The source had them: the copy is the stripped source (sizes in bytes, before and after).
    Stripped {
        /// Size of the source.
        from: u64,
        /// Size of the installed copy.
        to: u64,
    },
    /// The source had them but `strip` could not run (why): copied as it is.
    Unstripped(String),
}

/// Copies `source` to `lib_dir/libtssx_preload.so` and makes sure `preload_file` lists it once.
pub fn install(source: &Path, lib_dir: &Path, preload_file: &Path) -> anyhow::Result<Outcome> {
    check_shared_object(source)?;
    if !lib_dir.is_absolute() {
        bail!("--lib-dir must be an absolute path (the loader reads it from {}): {}", preload_file.display(), lib_dir.display());
    }
    fs::create_dir_all(lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let library = lib_dir.join(HOOK_FILE_NAME);
    let mut bytes = fs::read(source).with_context(|| format!("reading the hook {}", source.display()))?;
    let strip = if unstripped_sections(&bytes).is_empty() {
        Strip::AlreadyStripped
    } else {
        match stripped(source, lib_dir) {
            Ok(small) => {
                let from = bytes.len() as u64;
                bytes = small;
                Strip::Stripped { from, to: bytes.len() as u64 }
            }
            Err(e) => Strip::Unstripped(format!("{e:#}")),
        }
    };
    atomic_write(&library, &bytes).with_context(|| format!("installing the hook as {}", library.display()))?;
    check_loads(&library)?;
    let text = library.to_str().context("the library path is not UTF-8")?;
    if text.chars().any(|c| c.is_whitespace() || c == ':') {
        bail!("the library path {text:?} contains a blank or ':', which {} cannot express", preload_file.display());
    }
    let old = read_if_exists(preload_file)?;
    let preload_changed = match add_line(&old, text) {
        Some(new) => {
            atomic_write(preload_file, new.as_bytes()).with_context(|| format!("updating {}", preload_file.display()))?;
            true
        }
        None => false,
    };
    Ok(Outcome { library, preload_changed, strip })
}

/// Removes the line naming `lib_dir/libtssx_preload.so` from `preload_file`, then the library.
pub fn uninstall(lib_dir: &Path, preload_file: &Path) -> anyhow::Result<Outcome> {
    let library = lib_dir.join(HOOK_FILE_NAME);
    let text = library.to_str().context("the library path is not UTF-8")?;
    let old = read_if_exists(preload_file)?;
    let preload_changed = match remove_line(&old, text) {
        Some(new) if new.trim().is_empty() => {
            fs::remove_file(preload_file).with_context(|| format!("removing {} (left empty)", preload_file.display()))?;
            true
        }
        Some(new) => {
            atomic_write(preload_file, new.as_bytes()).with_context(|| format!("updating {}", preload_file.display()))?;
            true
        }
        None => false,
    };
    // Only once no new process will load it. Running processes keep their mapping.
    match fs::remove_file(&library) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", library.display())),
    }
    let _ = fs::remove_dir(lib_dir); // only if empty; keeps anything else there
    Ok(Outcome { library, preload_changed, strip: Strip::AlreadyStripped })
}

/// The default hook to install: `libtssx_preload.so` next to the running executable (a build
/// directory, `target/release/`), else `../lib/tssx/libtssx_preload.so` from it (the Debian
/// package: `/usr/bin/tssx-agent` and `/usr/lib/tssx/`; or a copy in `/usr/local/bin` with its
/// hook in `/usr/local/lib/tssx`). Neither present: the first, whose absence the caller reports.
pub fn default_source() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the tssx-agent executable")?;
    let dir = exe.parent().context("the executable has no directory")?;
    let beside = dir.join(HOOK_FILE_NAME);
    let packaged = dir.join("../lib/tssx").join(HOOK_FILE_NAME);
    Ok(if !beside.exists() && packaged.exists() { packaged } else { beside })
}

/// Names of the sections of the 64-bit little-endian ELF file `elf` that stripping removes:
/// `.symtab` (with its `.strtab`, the full symbol table) and `.debug_*` (debug info). Empty for
/// a stripped file, and for anything this cannot parse (the loader check judges that).
pub fn unstripped_sections(elf: &[u8]) -> Vec<String> {
    let u16_at = |at: usize| elf.get(at..at.checked_add(2)?).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| elf.get(at..at.checked_add(4)?).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
    let u64_at =
        |at: usize| elf.get(at..at.checked_add(8)?).and_then(|b| usize::try_from(u64::from_le_bytes(b.try_into().expect("8 bytes"))).ok());
    let names = || -> Option<Vec<String>> {
        if elf.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        // e_shoff, e_shentsize, e_shnum, e_shstrndx; in each header sh_name, sh_offset, sh_size.
        let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
        let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
        let strtab = header(shstrndx)?;
        let (str_off, str_size) = (u64_at(strtab.checked_add(0x18)?)?, u64_at(strtab.checked_add(0x20)?)?);
        let strings = elf.get(str_off..str_off.checked_add(str_size)?)?;
        let mut out = Vec::new();
        for i in 0..shnum {
            let name = strings.get(u32_at(header(i)?)?..)?;
            let name = &name[..name.iter().position(|&b| b == 0)?];
            let name = String::from_utf8_lossy(name);
            if name == ".symtab" || name.starts_with(".debug_") {
                out.push(name.into_owned());
            }
        }
        Some(out)
    };
    names().unwrap_or_default()
}

/// `source` as `strip --strip-unneeded` leaves it (symbol table and debug info removed, the
/// dynamic symbols the loader binds kept), by way of a temporary file in `dir` (root's, unlike
/// a shared temporary directory).
fn stripped(source: &Path, dir: &Path) -> anyhow::Result<Vec<u8>> {
    let tmp = dir.join(format!(".{HOOK_FILE_NAME}.tssx-{}.strip", std::process::id()));
    let result = (|| {
        let out = Command::new("strip")
            .arg("--strip-unneeded")
            .arg("-o")
            .arg(&tmp)
            .arg(source)
            .output()
            .context("cannot run strip (binutils)")?;
        if !out.status.success() {
            bail!("strip failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        let bytes = fs::read(&tmp).with_context(|| format!("reading {}", tmp.display()))?;
        if !unstripped_sections(&bytes).is_empty() {
            bail!("strip left {:?} in place", unstripped_sections(&bytes));
        }
        Ok(bytes)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// `old` plus a line `entry`, or `None` if some line already is exactly `entry`.
///
/// Entries are compared per line after trimming blanks. An entry sharing a line with other
/// names (the loader also splits on blanks and ':') is not ours to edit: it counts as absent,
/// so install adds our own line, which the loader then reads twice (harmless).
pub fn add_line(old: &str, entry: &str) -> Option<String> {
    if old.lines().any(|l| l.trim() == entry) {
        return None;
    }
    let mut new = old.to_owned();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(entry);
    new.push('\n');
    Some(new)
}

/// `old` without the lines that are exactly `entry` (after trimming), or `None` if there are none.
pub fn remove_line(old: &str, entry: &str) -> Option<String> {
    if !old.lines().any(|l| l.trim() == entry) {
        return None;
    }
    Some(old.split_inclusive('\n').filter(|l| l.trim() != entry).collect())
}

fn read_if_exists(path: &Path) -> anyhow::Result<String> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, sets mode 0644 and renames it
/// over `path`, then syncs the directory.
fn atomic_write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tssx-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(0o644)).with_context(|| format!("chmod 0644 {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Refuses anything that is not a readable 64-bit ELF shared object.
fn check_shared_object(source: &Path) -> anyhow::Result<()> {
    let bytes = fs::read(source)
        .with_context(|| format!("reading the hook {} (build it with `cargo xtask build`, or pass --from)", source.display()))?;
    // e_ident: magic, class 2 (64-bit); e_type at offset 16: 3 (ET_DYN).
    let is_so = bytes.len() > 18 && bytes[..4] == *b"\x7fELF" && bytes[4] == 2 && u16::from_le_bytes([bytes[16], bytes[17]]) == 3;
    if !is_so {
        bail!("{} is not a 64-bit ELF shared object", source.display());
    }
    Ok(())
}

/// Runs `/bin/true` with the library preloaded: a library that does not load (wrong
/// architecture, missing dependency, crash in its constructor) must never reach the preload file.
fn check_loads(library: &Path) -> anyhow::Result<()> {
    let out = Command::new("/bin/true")
        .env("LD_PRELOAD", library)
        .output()
        .with_context(|| format!("running /bin/true with LD_PRELOAD={}", library.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Another broken entry already in the preload file makes ld.so complain too: only
    // complaints about this library count.
    let named = stderr.contains(&*library.to_string_lossy());
    if !out.status.success() || named {
        bail!(
            "the hook {} does not load cleanly (/bin/true with it: {}, {}); not adding it to the preload file",
            library.display(),
            out.status,
            stderr.trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOK: &str = "/usr/local/lib/tssx/libtssx_preload.so";

    #[test]
    fn add_is_idempotent_and_keeps_other_lines() {
        let other = "/lib/x86_64-linux-gnu/libfoo.so\n";
        let once = add_line(other, HOOK).unwrap();
        assert_eq!(once, format!("{other}{HOOK}\n"));
        assert_eq!(add_line(&once, HOOK), None);
        // A last line without a newline is completed, not merged with ours.
        assert_eq!(add_line("/a.so", HOOK).unwrap(), format!("/a.so\n{HOOK}\n"));
        assert_eq!(add_line("", HOOK).unwrap(), format!("{HOOK}\n"));
    }

    #[test]
    fn remove_takes_exactly_our_line() {
        let file = format!("/a.so\n{HOOK}\n  {HOOK}  \n/b.so {HOOK}\n/c.so");
        assert_eq!(remove_line(&file, HOOK).unwrap(), format!("/a.so\n/b.so {HOOK}\n/c.so"));
        assert_eq!(remove_line("/a.so\n", HOOK), None);
        // Another library whose path merely starts with ours stays.
        assert_eq!(remove_line(&format!("{HOOK}.old\n"), HOOK), None);
    }

    #[test]
    fn unstripped_sections_ignores_what_it_cannot_parse() {
        assert_eq!(unstripped_sections(b""), Vec::<String>::new());
        assert_eq!(unstripped_sections(b"\x7fELF\x02\x01"), Vec::<String>::new());
        // A header whose section table points far outside the file.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(unstripped_sections(&elf), Vec::<String>::new());
    }

    #[test]
    fn install_and_uninstall_on_regular_files() {
        let dir = std::env::temp_dir().join(format!("tssx-install-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // Any real shared object that loads cleanly stands in for the hook here.
        let source = ["/lib/x86_64-linux-gnu/libdl.so.2", "/usr/lib/x86_64-linux-gnu/libdl.so.2"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("libdl.so.2");
        let lib_dir = dir.join("lib");
        let preload = dir.join("ld.so.preload");
        fs::write(&preload, "/keep/me.so\n").unwrap();
        let first = install(source, &lib_dir, &preload).unwrap();
        assert!(first.preload_changed);
        let second = install(source, &lib_dir, &preload).unwrap();
        assert!(!second.preload_changed);
        let lib = lib_dir.join(HOOK_FILE_NAME);
        assert_eq!(fs::read_to_string(&preload).unwrap(), format!("/keep/me.so\n{}\n", lib.display()));
        assert_eq!(fs::metadata(&preload).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::metadata(&lib).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read(&lib).unwrap(), fs::read(source).unwrap());
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        assert!(uninstall(&lib_dir, &preload).unwrap().preload_changed);
        assert_eq!(fs::read_to_string(&preload).unwrap(), "/keep/me.so\n");
        assert!(!lib.exists());
        assert!(!uninstall(&lib_dir, &preload).unwrap().preload_changed);
        // A file that only held our line is removed.
        install(source, &lib_dir, &preload).unwrap();
        fs::write(&preload, format!("{}\n", lib.display())).unwrap();
        uninstall(&lib_dir, &preload).unwrap();
        assert!(!preload.exists());
        // A hook with a symbol table and debug info (as the debug build has) is installed
        // stripped, and still loads (install checked it); one without is copied byte for byte.
        assert_eq!(first.strip, Strip::AlreadyStripped, "libdl.so.2 as Debian ships it is stripped");
        let unstripped = dir.join("unstripped.so");
        let cc = Command::new("cc")
            .args(["-g", "-shared", "-fPIC", "-x", "c", "-", "-o"])
            .arg(&unstripped)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().expect("piped").write_all(b"int tssx_unit_exported(void) { return 42; }\n")?;
                c.wait()
            })
            .expect("cc (gcc; cargo xtask setup installs it)");
        assert!(cc.success());
        let sections = unstripped_sections(&fs::read(&unstripped).unwrap());
        assert!(sections.contains(&".symtab".to_owned()) && sections.contains(&".debug_info".to_owned()), "{sections:?}");
        let done = install(&unstripped, &lib_dir, &preload).unwrap();
        let copy = fs::read(&lib).unwrap();
        assert!(
            matches!(done.strip, Strip::Stripped { from, to } if from == fs::metadata(&unstripped).unwrap().len() && to == copy.len() as u64 && to < from),
            "{:?}",
            done.strip
        );
        assert_eq!(unstripped_sections(&copy), Vec::<String>::new());
        // The exported function survives (it is in the dynamic symbol table).
        let dynsym = Command::new("nm").arg("-D").arg(&lib).output().expect("nm (binutils)");
        assert!(String::from_utf8_lossy(&dynsym.stdout).contains("T tssx_unit_exported"), "{dynsym:?}");
        fs::remove_file(&unstripped).unwrap();
        uninstall(&lib_dir, &preload).unwrap();
        // Not a shared object: refused before anything changes.
        let err = install(&preload.with_file_name("nope.so"), &lib_dir, &preload).unwrap_err();
        assert!(format!("{err:#}").contains("nope.so"), "{err:#}");
        fs::write(dir.join("text.so"), "not elf").unwrap();
        let err = install(&dir.join("text.so"), &lib_dir, &preload).unwrap_err();
        assert!(format!("{err:#}").contains("not a 64-bit ELF shared object"), "{err:#}");
        assert!(!preload.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
