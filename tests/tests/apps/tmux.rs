//! tmux: a server and its clients, which pass their terminal's fds with `SCM_RIGHTS`.

use super::*;

/// `tmux` on the server socket `sock` (no configuration file), under the hook if `hooked`.
fn tmux(sock: &str, hooked: bool) -> Command {
    let mut cmd = command("tmux", hooked);
    cmd.args(["-S", sock, "-f", "/dev/null"]).env("TERM", "xterm");
    cmd
}

/// A tmux control-mode client (`tmux -C attach`) fed `script` (one command a line, the last
/// one printing `cm end`): its output once `cm end` came, without the lines that start with `%`
/// (`%begin`/`%end` carry times, and a notification such as `%session-changed` may come before
/// or after a command's output). Its stdin stays open until then (at EOF the client leaves).
fn tmux_control(sock: &str, hooked: bool, script: &str) -> String {
    use std::io::{BufRead as _, Write as _};
    let mut cmd = tmux(sock, hooked);
    let mut child = cmd
        .args(["-C", "attach", "-t", "main"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tmux -C");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(script.as_bytes()).expect("write the control script");
    let mut out = String::new();
    for line in std::io::BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read tmux -C");
        if !line.starts_with('%') {
            out += &line;
            out.push('\n');
        }
        if line == "cm end" {
            break;
        }
    }
    drop(stdin);
    let status = child.wait().expect("wait tmux -C");
    assert!(status.success(), "tmux -C exited with {status}; output: {out}");
    out
}

/// One tmux session on `sock`: a server in the foreground (`tmux -D`), a session of two windows
/// running `sh`, keys sent to both and their panes captured, listings, 20 `display-message`s,
/// a 4 MB buffer loaded from `big` and saved to stdout and to a file, a control-mode client of
/// 401 commands, then `kill-server`. Each command is a client connection that passes its
/// terminal's fds to the server with SCM_RIGHTS. Returns the outputs and the pids of the
/// clients that move data over their connection for long enough to be swapped (the buffer's
/// three: tmux 3.3's clients read and write files for the server).
fn tmux_run(dir: &Path, sock: &str, hooked: bool, big: &Path) -> (String, Vec<(u32, &'static str)>) {
    let mut server = tmux(sock, hooked);
    server.arg("-D");
    let mut server = Daemon::spawn("tmux", server);
    server.wait_ready(|| Path::new(sock).exists());
    let client = |args: &[&str]| {
        let mut cmd = tmux(sock, hooked);
        cmd.args(args);
        run_pid(cmd, None)
    };
    // (Named windows: an automatic name follows the command running in the pane.)
    client(&["new-session", "-d", "-s", "main", "-n", "one", "-x", "120", "-y", "40", "sh"]);
    client(&["new-window", "-t", "main", "-n", "two", "sh"]);
    // (What the shells print is not in the command lines: $((6*7)) and $((1+1)).)
    client(&["send-keys", "-t", "main:0", "for i in $(seq 1 50); do echo line-$i; done; echo done-$((6*7))", "Enter"]);
    client(&["send-keys", "-t", "main:1", "seq 1 20000 | md5sum; echo done-$((1+1))", "Enter"]);
    let capture = |window: &str, marker: &str| {
        let mut screen = String::new();
        wait_until(DAEMON_TIMEOUT, &format!("tmux window {window} to show {marker}"), || {
            screen = client(&["capture-pane", "-p", "-S", "-", "-t", window]).0;
            screen.lines().any(|l| l == marker)
        });
        screen
    };
    let mut out = capture("main:0", "done-42") + &capture("main:1", "done-2");
    out += &client(&["list-sessions", "-F", "#{session_name} #{session_windows}"]).0;
    out += &client(&[
        "list-windows",
        "-t",
        "main",
        "-F",
        "#{window_index} #{window_name} #{window_width}x#{window_height} #{pane_current_command}",
    ])
    .0;
    for i in 0..20 {
        out += &client(&["display-message", "-p", &format!("dm {i} #{{session_name}} #{{window_index}}")]).0;
    }
    let mut pids = Vec::new();
    let (_, pid) = client(&["load-buffer", "-b", "big", &path_str(big)]);
    pids.push((pid, "tmux load-buffer"));
    let (saved, pid) = client(&["save-buffer", "-b", "big", "-"]);
    pids.push((pid, "tmux save-buffer -"));
    let expected = std::fs::read_to_string(big).expect("read the buffer's file");
    assert!(saved == expected, "save-buffer - gave {} bytes, not the {} loaded", saved.len(), expected.len());
    let copy = dir.join(format!("saved-{hooked}.txt"));
    let (_, pid) = client(&["save-buffer", "-b", "big", &path_str(&copy)]);
    pids.push((pid, "tmux save-buffer FILE"));
    assert!(std::fs::read_to_string(&copy).is_ok_and(|c| c == expected), "save-buffer to a file differs");
    let mut script: String = (0..200).map(|i| format!("display-message -p 'cm {i} #{{session_name}}'\nlist-windows -t main\n")).collect();
    script += "capture-pane -p -t main:1\ndisplay-message -p 'cm end'\n";
    let control = tmux_control(sock, hooked, &script);
    assert_eq!(control.lines().filter(|l| l.starts_with("cm ")).count(), 201, "tmux -C: {control}");
    // (The server reads a control client's commands from the stdin it passed and writes the
    // answers to its stdout: its connection carries next to nothing, and stays plain.)
    out += &control;
    client(&["kill-server"]);
    let status = server.process.wait(DAEMON_TIMEOUT).expect("the tmux server exits after kill-server");
    assert!(status.success(), "the tmux server exited with {status}: {}", server.process.stderr_text());
    (out, pids)
}

/// tmux (libevent, imsg): a server and its clients under the hook on a watched socket. Every
/// client connection passes the client's fds to the server with SCM_RIGHTS first (a
/// control-mode client's commands and answers then go through those fds, not its connection);
/// one that moves a 4 MB buffer migrates after that. The panes, listings, buffers and
/// control-mode output must be the plain ones, and the three buffer clients' connections
/// swapped.
#[test]
fn tmux_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-tmux");
    let (plain_sock, tssx_sock) = (path_str(&dir.join("plain.sock")), path_str(&dir.join("tmux.sock")));
    let big = dir.join("big.txt");
    // 4 MB of text lines (a buffer is text; tmux keeps every byte).
    let mut rng = Rng::new(7);
    let text: String = (0..64 * 1024).map(|i| format!("{i:08} {:016x} {:016x} {:016x}\n", rng.next(), rng.next(), rng.next())).collect();
    std::fs::write(&big, text).expect("write the buffer's file");
    let agent = HookedAgent::start(&[&tssx_sock]);
    let (plain, _) = tmux_run(&dir, &plain_sock, false, &big);
    assert!(
        plain.contains("line-50\ndone-42\n")
            && plain.contains("main 2\n0 one 120x40 sh\n1 two 120x40 sh\n")
            && plain.contains("dm 19 main 1\n"),
        "unexpected plain session: {plain}"
    );
    let (tssx, clients) = tmux_run(&dir, &tssx_sock, true, &big);
    assert_same("tmux session", &plain, &tssx);
    for &(pid, what) in &clients {
        assert_client_swapped(&agent, &tssx_sock, pid, 1, what);
    }
    assert!(agent.stop().success());
}
