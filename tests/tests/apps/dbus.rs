//! dbus-daemon on a private bus: libdbus and GDBus clients, fds passed both ways.

use super::*;

/// The test's D-Bus programs (dbus-python over libdbus, which passes fds with SCM_RIGHTS).
const DBUS_SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dbus");

/// A private bus's configuration: one Unix socket at `sock`, EXTERNAL authentication (the
/// daemon checks the peer's credentials from the kernel), everything allowed.
fn dbus_config(dir: &Path, sock: &str, hooked: bool) -> PathBuf {
    let conf = dir.join(if hooked { "bus-tssx.conf" } else { "bus-plain.conf" });
    std::fs::write(
        &conf,
        format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig>\n  <type>session</type>\n  \
             <listen>unix:path={sock}</listen>\n  <auth>EXTERNAL</auth>\n  <policy context=\"default\">\n    \
             <allow send_destination=\"*\" eavesdrop=\"true\"/>\n    <allow eavesdrop=\"true\"/>\n    <allow own=\"*\"/>\n    \
             <allow user=\"*\"/>\n  </policy>\n</busconfig>\n"
        ),
    )
    .expect("write the bus configuration");
    conf
}

/// One D-Bus session on a private bus at `sock`: dbus-daemon, a service and a client (method
/// calls, a 200 KB string, fds both ways, several fds in flight, signals), then `gdbus` calls
/// (GDBus's own implementation). Returns the outputs and the pids of the bus's clients.
fn dbus_run(dir: &Path, sock: &str, hooked: bool) -> (String, Vec<(u32, &'static str)>) {
    let address = format!("unix:path={sock}");
    let mut daemon = command("dbus-daemon", hooked);
    daemon.arg(format!("--config-file={}", dbus_config(dir, sock, hooked).display())).args(["--nofork", "--nopidfile"]);
    let mut daemon = Daemon::spawn("dbus-daemon", daemon);
    daemon.wait_ready(|| Path::new(sock).exists());
    let mut service = command("/usr/bin/python3", hooked);
    service.arg(format!("{DBUS_SCRIPTS}/service.py")).arg(&address);
    let service = Daemon::spawn("the D-Bus service (python3-dbus)", service);
    service.process.expect_line("ready", DAEMON_TIMEOUT);
    let mut pids = vec![(service.process.pid(), "service.py")];
    let mut client = command("/usr/bin/python3", hooked);
    client.arg(format!("{DBUS_SCRIPTS}/client.py")).args([&address, "300"]);
    let (mut out, pid) = run_pid(client, None);
    pids.push((pid, "client.py"));
    let gdbus = |method: &str, args: &[&str]| {
        let mut cmd = command("gdbus", hooked);
        cmd.args(["call", "--address", &address, "--dest", "org.tssx.Test", "--object-path", "/org/tssx/Test", "--method"])
            .arg(format!("org.tssx.Test.{method}"))
            .args(args);
        run_pid(cmd, None)
    };
    let (echo, pid) = gdbus("Echo", &["from gdbus"]);
    out += &echo;
    pids.push((pid, "gdbus call"));
    let (quit, pid) = gdbus("Quit", &[]);
    out += &quit;
    pids.push((pid, "gdbus call"));
    let mut service = service;
    let status = service.process.wait(DAEMON_TIMEOUT).expect("the service exits after Quit");
    assert!(status.success(), "the service exited with {status}: {}", service.process.stderr_text());
    out += &service.process.stdout_lines().join("\n");
    daemon.stop(libc::SIGTERM);
    (out, pids)
}

#[test]
fn dbus_daemon_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-dbus");
    let (plain_sock, tssx_sock) = (path_str(&dir.join("plain.sock")), path_str(&dir.join("bus.sock")));
    // Every connection claims on its first call: each one migrates early, authentication
    // (EXTERNAL, the daemon asks the kernel for the peer's credentials) before or after.
    let agent = HookedAgent::start_with(&[&tssx_sock], &["--claim-after", "0"]);
    let (plain, _) = dbus_run(&dir, &plain_sock, false);
    for expected in [
        "sum of 300 calls: 117600",
        "echo big: True",
        "echo big after the fds: True",
        "ReadFd: 70000 bytes",
        "MakeFd: second",
        "signals: ['a', 'b', 'c']",
    ] {
        assert!(plain.contains(expected), "{expected:?} missing: {plain}");
    }
    let (tssx, clients) = dbus_run(&dir, &tssx_sock, true);
    assert_same("D-Bus session", &plain, &tssx);
    for &(pid, what) in &clients {
        assert_client_swapped(&agent, &tssx_sock, pid, 1, what);
    }
    // The client's connection stayed on the rings through the fd passing: both 200 KB echoes
    // (one after the fds), each way, crossed shared memory.
    let closed = closed_of(&agent, &tssx_sock, clients[1].0);
    let bytes = closed["bytes_client_to_server"].as_u64().unwrap_or(0) + closed["bytes_server_to_client"].as_u64().unwrap_or(0);
    assert!(bytes >= 800_000, "only {bytes} bytes of the client's connection crossed shared memory: {closed}");
    assert!(agent.stop().success());
}
