//! End-to-end: the system-wide mode (`tssx-agent install` / `uninstall` and
//! `/etc/ld.so.preload`), always inside a private mount namespace.
//!
//! Each test runs one shell script under `unshare --mount --propagation private` after mounting
//! an overlay (upper layer on a tmpfs) on `/etc`: the script sees the machine's `/etc`, but what
//! it writes there, `ld.so.preload` included, vanishes with the namespace. So a broken hook can
//! only break the script's own processes, never this machine. The installed copy of the hook
//! goes to the test's temporary directory (`--lib-dir`). The programs in the scripts run without
//! `LD_PRELOAD`: the loader maps the hook only because `/etc/ld.so.preload` names it.

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use tssx_tests::{agent_bin, hook, require_root, HookedAgent, MachineLock, TempDir, DEFAULT_STATE_DIR};

const STREAM: &str = env!("CARGO_BIN_EXE_tssx-test-stream");
const PRELOAD_FILE: &str = "/etc/ld.so.preload";

/// A real library that loads cleanly: the "other line" that must survive install/uninstall.
fn other_library() -> &'static str {
    ["/lib/x86_64-linux-gnu/libdl.so.2", "/usr/lib/x86_64-linux-gnu/libdl.so.2"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libdl.so.2 (glibc)")
}

/// Runs `script` with `sh -e` in a private mount namespace with an overlay on `/etc`, without
/// `LD_PRELOAD`, with `$AGENT`, `$HOOK`, `$STREAM`, `$T` (the test's directory) and `vars` set.
/// Checks that the machine's own `/etc/ld.so.preload` is untouched.
fn in_namespace(dir: &Path, script: &str, vars: &[(&str, &str)]) -> Output {
    let before = std::fs::read(PRELOAD_FILE).ok();
    let setup = r#"
        mkdir -p "$T/ovl"
        mount -t tmpfs tssx-test "$T/ovl"
        mkdir "$T/ovl/upper" "$T/ovl/work"
        mount -t overlay tssx-test -o "lowerdir=/etc,upperdir=$T/ovl/upper,workdir=$T/ovl/work" /etc
    "#;
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!("{setup}\n{script}"))
        .env_remove("LD_PRELOAD")
        .env("AGENT", agent_bin())
        .env("HOOK", hook())
        .env("STREAM", STREAM)
        .env("T", dir)
        .envs(vars.iter().copied())
        .output()
        .expect("run unshare (util-linux)");
    assert_eq!(std::fs::read(PRELOAD_FILE).ok(), before, "the machine's {PRELOAD_FILE} changed");
    out
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The part of `stdout` between the marker line `--- name` and the next marker.
fn section<'a>(stdout: &'a str, name: &str) -> &'a str {
    let start = stdout.find(&format!("--- {name}\n")).unwrap_or_else(|| panic!("no section {name}: {stdout}"));
    let rest = &stdout[start + name.len() + 5..];
    &rest[..rest.find("--- ").unwrap_or(rest.len())]
}

#[test]
fn install_twice_then_uninstall_edits_exactly_one_line() {
    require_root();
    let dir = TempDir::new("sysw-install");
    let lib = dir.join("lib").join("libtssx_preload.so");
    let script = r#"
        printf '%s\n' "$OTHER" > /etc/ld.so.preload
        "$AGENT" install --from "$HOOK" --lib-dir "$T/lib"
        "$AGENT" install --from "$HOOK" --lib-dir "$T/lib"
        echo "--- installed"; cat /etc/ld.so.preload
        echo "--- mode"; stat -c %a /etc/ld.so.preload "$T/lib/libtssx_preload.so"
        echo "--- mapped"; grep -c libtssx_preload /proc/self/maps || true
        echo "--- source elf"; readelf -SW "$HOOK" | grep -c -e ' \.symtab ' -e ' \.debug_' || true
        echo "--- copy elf"; readelf -SW "$T/lib/libtssx_preload.so" | grep -c -e ' \.symtab ' -e ' \.debug_' || true
        "$AGENT" uninstall --lib-dir "$T/lib"
        "$AGENT" uninstall --lib-dir "$T/lib"
        echo "--- uninstalled"; cat /etc/ld.so.preload
        echo "--- mapped after"; grep -c libtssx_preload /proc/self/maps || true
        echo "--- copy"; ls "$T/lib" 2>&1 || true
        echo "--- end"
    "#;
    let out = in_namespace(&dir, script, &[("OTHER", other_library())]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    let lib = lib.to_str().unwrap();
    assert_eq!(section(&stdout, "installed"), format!("{}\n{lib}\n", other_library()));
    assert_eq!(section(&stdout, "mode"), "644\n644\n");
    // A new process (grep) really has the hook mapped, from the preload file alone.
    assert_ne!(section(&stdout, "mapped").trim(), "0", "{stdout}");
    // The installed copy has no symbol table and no debug info, whichever build it came from;
    // install says when it stripped them (the debug build's hook has both).
    assert_eq!(section(&stdout, "copy elf").lines().next(), Some("0"), "{stdout}");
    let source_unstripped = section(&stdout, "source elf") != "0\n";
    assert_eq!(stdout.matches("stripped the symbol table and debug info of").count(), if source_unstripped { 2 } else { 0 }, "{stdout}");
    assert_eq!(section(&stdout, "uninstalled"), format!("{}\n", other_library()));
    assert_eq!(section(&stdout, "mapped after").trim(), "0");
    assert!(!section(&stdout, "copy").contains("libtssx_preload.so"), "{stdout}");
    // What the commands say.
    assert_eq!(stdout.matches("installed ").count(), 4, "{stdout}");
    assert!(stdout.contains(&format!("installed {lib} (added to /etc/ld.so.preload)")), "{stdout}");
    assert!(stdout.contains(&format!("installed {lib} (already in /etc/ld.so.preload)")), "{stdout}");
    assert!(stdout.contains(&format!("uninstalled {lib} (removed from /etc/ld.so.preload)")), "{stdout}");
    assert!(stdout.contains(&format!("uninstalled {lib} (was not in /etc/ld.so.preload)")), "{stdout}");
    assert!(!stderr.contains("ld.so"), "the loader complained: {stderr}");
}

#[test]
fn install_refuses_a_file_that_is_not_a_shared_object() {
    require_root();
    let dir = TempDir::new("sysw-refuse");
    let script = r#"
        echo "not a library" > "$T/broken.so"
        if "$AGENT" install --from "$T/broken.so" --lib-dir "$T/lib" 2>"$T/err"; then echo "--- accepted"; fi
        echo "--- error"; cat "$T/err"
        echo "--- preload"; cat /etc/ld.so.preload 2>/dev/null || echo absent
        echo "--- end"
    "#;
    let out = in_namespace(&dir, script, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("--- accepted"), "{stdout}");
    assert!(section(&stdout, "error").contains("not a 64-bit ELF shared object"), "{stdout}");
    let before = std::fs::read_to_string(PRELOAD_FILE).unwrap_or_else(|_| "absent\n".into());
    assert_eq!(section(&stdout, "preload"), before, "the preload file must not change");
}

/// The stream pair on `sock` (64 MiB each way), both started without LD_PRELOAD after the hook
/// was installed system-wide in the namespace; returns the script's stdout.
fn stream_pair_system_wide(dir: &Path, sock: &str) -> String {
    let script = r#"
        "$AGENT" install --from "$HOOK" --lib-dir "$T/lib" >/dev/null
        "$STREAM" server "$SOCK" 67108864 42 &
        server=$!
        while [ ! -S "$SOCK" ]; do sleep 0.01; done
        "$STREAM" client "$SOCK" 67108864 42
        wait $server
        echo "--- mapped"; grep -c libtssx_preload /proc/self/maps || true
        echo "--- tools"; ls / >/dev/null && sh -c 'echo sh ok'
        echo "--- end"
    "#;
    let out = in_namespace(dir, script, &[("SOCK", sock)]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert_eq!(stdout.matches("ok sent=67108864 received=67108864").count(), 2, "{stdout}\n{stderr}");
    assert_ne!(section(&stdout, "mapped").trim(), "0", "hook not mapped system-wide: {stdout}");
    assert_eq!(section(&stdout, "tools"), "sh ok\n");
    stdout
}

#[test]
fn installed_hook_swaps_programs_started_without_ld_preload() {
    require_root();
    let dir = TempDir::new("sysw-swap");
    let sock = dir.socket("app.sock");
    let agent = HookedAgent::start(&[&sock]);
    stream_pair_system_wide(&dir, &sock);
    let swapped = agent.wait_for("swapped", &sock, 1, Duration::from_secs(5));
    assert_eq!(swapped.len(), 1, "swapped: {swapped:?}\nnot swapped: {:?}", agent.events("not"));
    let closed = agent.wait_for("closed", &sock, 1, Duration::from_secs(10));
    assert_eq!(closed.len(), 1, "{closed:?}");
    // Each direction: the socket until it switched, the rings after; every byte, once.
    for (direction, switched) in [("client_to_server", "switched_client_to_server"), ("server_to_client", "switched_server_to_client")] {
        let shm = closed[0][format!("bytes_{direction}")].as_u64().unwrap();
        let before = swapped[0][switched].as_u64().unwrap();
        assert_eq!(shm + before, 64 << 20, "{direction}: {shm} through shared memory after {before} on the socket");
        assert!(shm > before, "{direction}: most bytes went through shared memory");
    }
    assert!(agent.stop().success());
}

#[test]
fn installed_hook_without_an_agent_passes_through() {
    require_root();
    let _serial = MachineLock::acquire();
    assert!(!Path::new(DEFAULT_STATE_DIR).join("paths").exists(), "another tssx-agent is running");
    let dir = TempDir::new("sysw-noagent");
    stream_pair_system_wide(&dir, &dir.socket("app.sock"));
}
