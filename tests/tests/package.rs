//! End-to-end: the Debian package that `cargo xtask package` builds with cargo-deb.
//!
//! The package is the file named by `TSSX_DEB`: `cargo xtask test` builds it (the release
//! profile, then `cargo deb --no-build`) and sets it. Run alone:
//! `cargo xtask test --test package` (an argument naming `package` makes xtask build it).
//!
//! One test reads the package (its files, their modes, its control fields, its conffiles, and
//! that what it ships is stripped and is what the repository has). The other installs it with
//! the real `dpkg -i`, against the machine's real dpkg database and maintainer-script
//! environment, but inside a private mount namespace in which `/usr`, `/etc` and `/var` (and
//! `/lib`, `/bin`, `/sbin` where they are not links into `/usr`) are overlays whose upper layers
//! live on a tmpfs: every file dpkg and the maintainer scripts write (the package's files, the
//! dpkg database under /var/lib/dpkg, its log, deb-systemd-helper's state) lands on that tmpfs
//! and vanishes with the namespace. The test checks afterwards that the machine's dpkg status
//! file and the package's paths are as they were. systemd is not PID 1 here, so the agent is
//! started by hand from the installed `/usr/bin/tssx-agent` (its private `/run/tssx` a tmpfs of
//! the namespace, where the installed hook looks); what this proves is that the installed files
//! make a working tssx: the agent starts and loads its eBPF programs (its `ready` line), the
//! installed systemd unit parses and finds the installed binary (`systemd-analyze verify`),
//! `tssx-agent install` finds the packaged hook by itself, and
//! a client and a server started with `LD_PRELOAD=/usr/lib/tssx/libtssx_preload.so` on a watched
//! path are traced and swapped, every byte crossing once. Then `dpkg --purge` removes it cleanly.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tssx_tests::{require_root, run_ok, Agent, MachineLock, MountNamespace, Process, TempDir};

const STREAM: &str = env!("CARGO_BIN_EXE_tssx-test-stream");
/// Where the package puts the agent and the hook.
const AGENT: &str = "/usr/bin/tssx-agent";
const HOOK: &str = "/usr/lib/tssx/libtssx_preload.so";
const UNIT: &str = "/usr/lib/systemd/system/tssx-agent.service";
const DEFAULTS: &str = "/etc/default/tssx-agent";

/// The package under test (`TSSX_DEB`, set by `cargo xtask test`).
fn deb() -> PathBuf {
    let deb = std::env::var_os("TSSX_DEB").map(PathBuf::from).expect(
        "TSSX_DEB is not set: run these tests through `cargo xtask test` (or `cargo xtask test --test package`), which builds the package first",
    );
    assert!(deb.is_file(), "{} (TSSX_DEB) is missing", deb.display());
    deb
}

fn repo_file(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn stdout_of(cmd: Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd).stdout).into_owned()
}

/// The names of `elf`'s symbol-table and debug sections (none in a stripped file).
fn unstripped_sections(elf: &Path) -> Vec<String> {
    let mut cmd = Command::new("readelf");
    cmd.arg("-SW").arg(elf);
    stdout_of(cmd).split_whitespace().filter(|w| *w == ".symtab" || w.starts_with(".debug_")).map(str::to_owned).collect()
}

#[test]
fn package_holds_the_agent_the_hook_the_unit_the_defaults_and_the_readme() {
    let deb = deb();
    // `dpkg-deb -c`: "mode owner/group size date time ./path".
    let mut list = Command::new("dpkg-deb");
    list.arg("-c").arg(&deb);
    let listing = stdout_of(list);
    let files: Vec<(String, String, String)> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[5].trim_start_matches('.').to_owned(), f[0].to_owned(), f[1].to_owned())
        })
        .collect();
    let file = |path: &str| files.iter().find(|(p, ..)| p == path).unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"));
    for (path, mode) in [
        (AGENT, "-rwxr-xr-x"),
        (HOOK, "-rw-r--r--"),
        (UNIT, "-rw-r--r--"),
        (DEFAULTS, "-rw-r--r--"),
        ("/usr/share/doc/tssx/README.md", "-rw-r--r--"),
        ("/usr/share/doc/tssx/README.Debian", "-rw-r--r--"),
        ("/usr/share/doc/tssx/copyright", "-rw-r--r--"),
    ] {
        let (_, got, owner) = file(path);
        assert_eq!((got.as_str(), owner.as_str()), (mode, "0/0"), "{path}");
    }
    // Nothing under /usr/local (Debian policy), nothing else.
    assert_eq!(files.len(), 7, "{listing}");
    // Control fields.
    let mut fields = Command::new("dpkg-deb");
    fields.arg("-f").arg(&deb).args(["Package", "Architecture", "Depends"]);
    let fields = stdout_of(fields);
    assert!(fields.starts_with("Package: tssx\nArchitecture: amd64\nDepends: libc6"), "{fields}");
    // The defaults file is a conffile (an upgrade keeps the admin's TSSX_PATHS).
    let ctrl = TempDir::new("deb-ctrl");
    let mut control = Command::new("dpkg-deb");
    control.arg("-e").arg(&deb).arg(ctrl.join("DEBIAN"));
    run_ok(control);
    assert_eq!(std::fs::read_to_string(ctrl.join("DEBIAN/conffiles")).unwrap(), format!("{DEFAULTS}\n"));
    // The unit is neither enabled nor started by the package (TSSX_PATHS needs editing first);
    // removing it stops a running service.
    let postinst = std::fs::read_to_string(ctrl.join("DEBIAN/postinst")).unwrap();
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    let lines: Vec<&str> = postinst.lines().map(str::trim).collect();
    for (i, _) in lines.iter().enumerate().filter(|(_, l)| l.starts_with("deb-systemd-helper enable")) {
        // Only re-enabled if the admin had enabled it (an upgrade).
        assert!(lines[..i].iter().rev().find(|l| l.starts_with("if ")).is_some_and(|l| l.contains("was-enabled")), "{postinst}");
    }
    let prerm = std::fs::read_to_string(ctrl.join("DEBIAN/prerm")).unwrap();
    assert!(prerm.contains("deb-systemd-invoke stop tssx-agent.service"), "{prerm}");
    // The files are the repository's and the release build's, the binaries stripped.
    let root = TempDir::new("deb-files");
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-x").arg(&deb).arg(root.path());
    run_ok(extract);
    let at = |path: &str| root.join(path.trim_start_matches('/'));
    assert_eq!(std::fs::read(at(DEFAULTS)).unwrap(), repo_file("dist/tssx-agent.env"));
    assert_eq!(std::fs::read(at(UNIT)).unwrap(), repo_file("dist/tssx-agent.service"));
    assert_eq!(std::fs::read(at("/usr/share/doc/tssx/README.md")).unwrap(), repo_file("README.md"));
    for binary in [AGENT, HOOK] {
        assert_eq!(unstripped_sections(&at(binary)), Vec::<String>::new(), "{binary} is not stripped");
    }
    // The hook exports the libc functions it stands in for (its dynamic symbols survive).
    let mut nm = Command::new("nm");
    nm.arg("-D").arg("--defined-only").arg(at(HOOK));
    let symbols = stdout_of(nm);
    for function in ["connect", "accept4", "read", "write", "epoll_wait"] {
        assert!(symbols.lines().any(|l| l.ends_with(&format!(" T {function}"))), "the packaged hook does not export {function}");
    }
    // The unit starts the agent by its bare name: the package's /usr/bin copy (or one installed
    // by hand in /usr/local/bin) is found on systemd's search path.
    let unit = std::fs::read_to_string(at(UNIT)).unwrap();
    assert!(unit.lines().any(|l| l.starts_with("ExecStart=tssx-agent --paths ${TSSX_PATHS}")), "{unit}");
}

/// Directories the overlays cover: everything dpkg and the maintainer scripts may write.
const OVERLAID: &[&str] = &["/usr", "/etc", "/var", "/lib", "/lib64", "/bin", "/sbin"];

/// What the machine has at the paths the package installs, and its dpkg status file.
fn machine_state() -> Vec<(String, Option<Vec<u8>>)> {
    [AGENT, HOOK, UNIT, DEFAULTS, "/usr/share/doc/tssx/README.Debian", "/var/lib/dpkg/status"]
        .iter()
        .map(|p| (p.to_string(), std::fs::read(p).ok()))
        .collect()
}

#[test]
fn package_installs_with_dpkg_in_a_private_namespace_as_a_working_agent() {
    require_root();
    let deb = deb();
    let _lock = MachineLock::acquire();
    let before = machine_state();
    let dir = TempDir::new("deb-install");
    let sock = dir.socket("app.sock");
    {
        let ns = MountNamespace::new(&["/run/tssx"]);
        let sh = |script: &str| {
            let mut cmd = ns.command("sh");
            cmd.args(["-ec", script, "sh"]).env_remove("LD_PRELOAD").env("T", dir.path()).env("DEB", &deb);
            stdout_of(cmd)
        };
        // The overlays (see the module comment). /run/tssx is the namespace's own tmpfs already.
        sh(&format!(
            r#"
            mkdir -p "$T/ovl"
            mount -t tmpfs tssx-deb "$T/ovl"
            for d in {}; do
                if [ -L "$d" ] || [ ! -d "$d" ]; then continue; fi
                n=$(echo "$d" | tr / _)
                mkdir "$T/ovl/upper$n" "$T/ovl/work$n"
                mount -t overlay tssx-deb -o "lowerdir=$d,upperdir=$T/ovl/upper$n,workdir=$T/ovl/work$n" "$d"
            done
            "#,
            OVERLAID.join(" ")
        ));
        // dpkg -i exactly as a user would, with its maintainer scripts (no service starts:
        // systemd is not running, and the package enables and starts none).
        let installed = sh(r#"DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" 2>&1"#);
        assert!(installed.contains("Setting up tssx (0.1.0-1)"), "{installed}");
        let status = sh("dpkg-query -W -f '${Status} ${Version}' tssx");
        assert_eq!(status, "install ok installed 0.1.0-1");
        let enabled = sh("ls /etc/systemd/system/*.wants/ 2>/dev/null | grep -c tssx || true");
        assert_eq!(enabled.trim(), "0", "the package enabled the service");
        let owned = sh("dpkg -L tssx");
        for path in [AGENT, HOOK, UNIT, DEFAULTS] {
            assert!(owned.lines().any(|l| l == path), "dpkg -L tssx lacks {path}: {owned}");
        }
        // `tssx-agent install` without --from takes the packaged hook (../lib/tssx from
        // /usr/bin), already stripped: copied byte for byte (into the test's directory here,
        // with a preload file of its own).
        let installed = sh(&format!(
            r#"{AGENT} install --lib-dir "$T/syswide" --preload-file "$T/ld.so.preload"; cmp {HOOK} "$T/syswide/libtssx_preload.so" && echo same; cat "$T/ld.so.preload""#
        ));
        let copy = dir.join("syswide/libtssx_preload.so");
        assert_eq!(
            installed,
            format!("installed {} (added to {})\nsame\n{}\n", copy.display(), dir.join("ld.so.preload").display(), copy.display())
        );
        // The installed unit parses and its ExecStart finds the installed agent.
        let verify = sh(&format!("systemd-analyze verify {UNIT} 2>&1 || echo \"verify failed: $?\""));
        assert!(!verify.contains("verify failed") && !verify.contains("tssx-agent"), "systemd-analyze verify: {verify}");
        // The installed agent, started by hand, loads its eBPF programs (ready) ...
        let agent = Agent::spawn_wrapped(&ns.wrapper(), Path::new(AGENT), &[&sock], None, &["-v"]).unwrap_or_else(|e| panic!("{e:#}"));
        // ... and a hooked pair on the watched path is traced and swapped.
        let stream = |role: &str| {
            let mut cmd = ns.command(STREAM);
            cmd.args([role, &sock, "67108864", "42"]).env("LD_PRELOAD", HOOK);
            Process::spawn(cmd)
        };
        let mut server = stream("server");
        assert!(tssx_tests::poll_until(Duration::from_secs(10), || Path::new(&sock).exists()), "the server did not bind {sock}");
        let mut client = stream("client");
        for (name, p) in [("client", &mut client), ("server", &mut server)] {
            let status = p.wait(Duration::from_secs(60)).unwrap_or_else(|| panic!("the {name} hangs"));
            assert!(status.success(), "{name}: {status}; {}", p.stderr_text());
            assert!(p.stdout_lines().iter().any(|l| l == "ok sent=67108864 received=67108864"), "{name}: {:?}", p.stdout_lines());
        }
        // Per-connection events wake nobody: the agent traces them on its next tick (100 ms) or
        // when a claim drains them, so they may come after both ends have exited.
        // (The default watcher sees connects only: accept lines come with the syscall
        // tracepoints.)
        let seen = agent.wait_for("connect", &sock, 1, Duration::from_secs(5));
        assert_eq!(seen.len(), 1, "connect: {:?}", agent.trace());
        assert!(seen[0]["cookie"].as_u64().is_some(), "seen by the connect hook: {seen:?}");
        let swapped = agent.wait_for("swapped", &sock, 1, Duration::from_secs(5));
        assert_eq!(swapped.len(), 1, "not swapped: {:?}", agent.events("not"));
        let closed = agent.wait_for("closed", &sock, 1, Duration::from_secs(10));
        assert_eq!(closed.len(), 1, "{closed:?}");
        for (direction, switched) in [("client_to_server", "switched_client_to_server"), ("server_to_client", "switched_server_to_client")]
        {
            let shm = closed[0][format!("bytes_{direction}")].as_u64().unwrap();
            let before = swapped[0][switched].as_u64().unwrap();
            assert_eq!(shm + before, 64 << 20, "{direction}: {shm} through shared memory after {before} on the socket");
            assert!(shm > 0, "{direction}: nothing went through shared memory");
        }
        assert!(agent.stop().success());
        // And it goes away cleanly, conffile included.
        let purged = sh(
            r#"dpkg --purge tssx 2>&1; for f in /usr/bin/tssx-agent /usr/lib/tssx /etc/default/tssx-agent; do [ ! -e "$f" ] || echo "left: $f"; done"#,
        );
        assert!(purged.contains("Purging configuration files for tssx") && !purged.contains("left:"), "{purged}");
    }
    // The namespace is gone (its holder killed when dropped): the machine never saw any of it.
    assert_eq!(machine_state(), before, "the machine's dpkg database or the package's paths changed");
}
