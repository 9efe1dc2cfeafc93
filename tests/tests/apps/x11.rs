//! X11: Xvfb and its clients (Xlib, xcb, MIT-SHM fd passing).

use super::*;

/// The X11 test's displays, plain and under tssx: private numbers. A display's sockets are
/// `/tmp/.X11-unix/X<N>` and the abstract `@/tmp/.X11-unix/X<N>`, which Xlib and xcb try first.
const X_PLAIN: u32 = 7371;
const X_TSSX: u32 = 7373;
/// The test's X client that passes fds both ways over its connection (see its header).
const SHM_FDS_C: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/x11/shm_fds.c");

/// Both sockets of display `display`.
fn x_sockets(display: u32) -> [String; 2] {
    [format!("/tmp/.X11-unix/X{display}"), format!("@/tmp/.X11-unix/X{display}")]
}

/// Builds [`SHM_FDS_C`] into `dir` (with xcb's headers, `cargo xtask setup` installs them).
fn build_shm_fds(dir: &Path) -> PathBuf {
    let bin = dir.join("shm_fds");
    let out = Command::new("cc")
        .args(["-Wall", "-Werror", "-O2", "-o"])
        .arg(&bin)
        .arg(SHM_FDS_C)
        .arg("-lxcb")
        .output()
        .expect("run cc (cargo xtask setup installs gcc)");
    assert!(
        out.status.success(),
        "cc {SHM_FDS_C} failed (cargo xtask setup installs libxcb1-dev):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// `program` as a client of display `display`.
fn x_client(program: &str, display: u32, hooked: bool) -> Command {
    let mut cmd = command(program, hooked);
    cmd.env("DISPLAY", format!(":{display}")).env_remove("XAUTHORITY");
    cmd
}

/// One X session on `display`: Xvfb (1024x768, depth 24, the classic weave on its root so that
/// a dump has something to show), then each client to its end: xdpyinfo, `xwininfo -root
/// -tree`, `xprop -root`, `xwd -root` (a 3 MB dump), the fd-passing client `shm_fds` (200 rounds)
/// and, under the hook, a short x11perf (one-way `PutImage`s, `GetImage` round trips). Returns
/// the clients' outputs (xdpyinfo's line naming the display left out, x11perf's test names
/// only), the dump, and the clients' pids.
fn x11_run(dir: &Path, display: u32, hooked: bool, shm_fds: &Path) -> (String, Vec<u8>, Vec<(u32, &'static str)>) {
    let mut server = command("Xvfb", hooked);
    // -displayfd: one line with the display number once it accepts connections.
    server.arg(format!(":{display}")).args(["-nolisten", "tcp", "-screen", "0", "1024x768x24", "-retro", "-displayfd", "1"]);
    let server = Daemon::spawn("Xvfb (xvfb)", server);
    server.process.expect_line(&display.to_string(), DAEMON_TIMEOUT);
    let mut pids = Vec::new();
    let mut run_client = |program: &str, args: &[&str], what: &'static str| {
        let mut cmd = x_client(program, display, hooked);
        cmd.args(args);
        let (out, pid) = run_pid(cmd, None);
        pids.push((pid, what));
        out
    };
    let info = run_client("xdpyinfo", &[], "xdpyinfo");
    assert!(info.contains("name of display:"), "xdpyinfo: {info}");
    let mut out: String = info.lines().filter(|l| !l.starts_with("name of display:")).map(|l| format!("{l}\n")).collect();
    out += &run_client("xwininfo", &["-root", "-tree"], "xwininfo");
    out += &run_client("xprop", &["-root"], "xprop");
    let dump = dir.join(format!("root-{display}.xwd"));
    run_client("xwd", &["-root", "-silent", "-out", &path_str(&dump)], "xwd");
    out += &run_client(&path_str(shm_fds), &["200"], "shm_fds");
    if hooked {
        let perf = run_client("x11perf", &["-repeat", "1", "-time", "1", "-putimage10", "-getimage10"], "x11perf");
        let tests: Vec<&str> = perf.lines().filter(|l| l.contains(" reps @ ")).filter_map(|l| l.split("): ").nth(1)).collect();
        assert_eq!(tests, ["PutImage 10x10 square", "GetImage 10x10 square"], "x11perf did not complete: {perf}");
    }
    server.stop(libc::SIGTERM);
    (out, std::fs::read(&dump).expect("read the xwd dump"), pids)
}

/// An xwd dump with the pad byte of each colormap entry zeroed: xwd writes its `XWDColor`s
/// (pixel, red, green, blue, flags, pad: 12 bytes each, after the `header_size` bytes of header
/// and window name, `ncolors` of them) from memory it never cleared, so that byte is whatever
/// the heap held (0x80 in one plain run, 0 under the hook in another), with or without tssx.
fn xwd_without_padding(dump: &[u8]) -> Vec<u8> {
    let field = |k: usize| dump.get(4 * k..4 * k + 4).map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()) as usize);
    let (header_size, ncolors) = (field(0), field(19));
    let mut out = dump.to_vec();
    for entry in 0..ncolors {
        if let Some(pad) = out.get_mut(header_size + 12 * entry + 11) {
            *pad = 0;
        }
    }
    out
}

/// Xvfb and X clients (Xlib and xcb: `writev`, `recvmsg`, `poll`), all under the hook on the
/// display's watched sockets: xdpyinfo, xwininfo and xprop must print what they print plain,
/// `xwd -root` must dump the same 3 MB, and a client that passes fds both ways over its swapped
/// connection (MIT-SHM 1.2: `ShmAttachFd` sends a memfd, `ShmCreateSegment` receives one, as
/// cairo, GTK and Mesa do) must read back its patterns through both, as plain. The dump's, the
/// fd client's and x11perf's connections must be swapped, and the fd client's must have
/// stayed on the rings through most of its rounds.
#[test]
fn x11_clients_get_the_same_answers_with_tssx() {
    require_root();
    let dir = TempDir::new("app-x11");
    let shm_fds = build_shm_fds(&dir);
    let tssx_socks = x_sockets(X_TSSX);
    let agent = HookedAgent::start(&[&tssx_socks[0], &tssx_socks[1]]);
    let (plain, plain_dump, _) = x11_run(&dir, X_PLAIN, false, &shm_fds);
    assert!(
        plain.contains("X.Org Foundation")
            && plain
                .contains("200 rounds: ShmAttachFd+ShmPutImage 200, core GetImage matched 200, ShmCreateSegment+ShmGetImage matched 200"),
        "unexpected plain session: {plain}"
    );
    assert!(plain_dump.len() > 1024 * 768 * 4, "a {}-byte dump", plain_dump.len());
    let (tssx, tssx_dump, clients) = x11_run(&dir, X_TSSX, true, &shm_fds);
    assert_same("X11 session", &plain, &tssx);
    assert!(
        xwd_without_padding(&plain_dump) == xwd_without_padding(&tssx_dump),
        "xwd -root dumped {} bytes plain, {} with tssx, not the same",
        plain_dump.len(),
        tssx_dump.len()
    );
    // Xlib and xcb connect to the abstract socket.
    for &(pid, what) in clients.iter().filter(|(_, what)| ["xwd", "shm_fds", "x11perf"].contains(what)) {
        assert_client_swapped(&agent, &tssx_socks[1], pid, 1, what);
    }
    assert!(agent.events_on("connect", &x_sockets(X_PLAIN)[1]).is_empty(), "the plain run's display is not watched");
    // The fd client's GetImage replies (16 KiB in each of its 200 rounds, each round passing an
    // fd both ways) crossed shared memory in most rounds.
    let client = clients.iter().find(|(_, what)| *what == "shm_fds").expect("shm_fds").0;
    let closed = closed_of(&agent, &tssx_socks[1], client);
    let bytes = closed["bytes_server_to_client"].as_u64().unwrap_or(0);
    assert!(bytes >= 100 * 16 * 1024, "only {bytes} bytes of the fd client's replies crossed shared memory: {closed}");
    assert!(agent.stop().success());
}
