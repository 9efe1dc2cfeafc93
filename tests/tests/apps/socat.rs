//! socat: a forking echo, and an upload into a shell that keeps the socket it never uses.

use super::*;

/// Runs `client` with its stdin from `input` and its stdout into `output` (files: a stream of
/// tens of MB each way must not wait on a pipe the test reads only at the end); asserts
/// success, returns its pid and how long it ran.
fn run_files(mut client: Command, input: &Path, output: &Path) -> (u32, Duration) {
    let started = Instant::now();
    let child = client
        .stdin(std::fs::File::open(input).expect("open the input"))
        .stdout(std::fs::File::create(output).expect("create the output"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {client:?}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{client:?} failed: {}; stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    (pid, started.elapsed())
}

/// How long the socat test's upload lasts (its bytes are fed in slices).
const UPLOAD_FOR: Duration = Duration::from_millis(1500);

/// Runs `client`, feeding `data` to its stdin in 64 slices over about `over`; asserts success.
fn slow_feed(mut client: Command, data: &[u8], over: Duration) {
    use std::io::Write as _;
    let mut child = client.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run socat");
    let mut stdin = child.stdin.take().expect("stdin");
    for slice in data.chunks(data.len().div_ceil(64)) {
        stdin.write_all(slice).expect("feed the upload");
        std::thread::sleep(over / 64);
    }
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{client:?} failed: {}; stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
}

/// One socat session in `dir`, on sockets named `NAME-echo.sock` and `NAME-up.sock`:
/// - an echo: `socat UNIX-LISTEN:...,fork EXEC:cat` (a child per connection, `cat` on a
///   socketpair) and `socat - UNIX-CONNECT:...` sending `data` both ways at once (select, read,
///   write; half-close at the end);
/// - an upload: `socat -u UNIX-LISTEN:... SYSTEM:'cat > FILE'` (the shell it spawns inherits the
///   connection) and `socat -u - UNIX-CONNECT:...`, fed over [`UPLOAD_FOR`].
///
/// Returns what came back and what arrived, the echo client's pid and the echo's duration.
fn socat_run(dir: &Path, name: &str, hooked: bool, data: &Path) -> (Vec<u8>, Vec<u8>, u32, Duration) {
    let (echo_sock, up_sock) = (path_str(&dir.join(format!("{name}-echo.sock"))), path_str(&dir.join(format!("{name}-up.sock"))));
    let mut echo = command("socat", hooked);
    echo.args([&format!("UNIX-LISTEN:{echo_sock},fork"), "EXEC:cat"]);
    let mut echo = Daemon::spawn("socat", echo);
    echo.wait_ready(|| Path::new(&echo_sock).exists());
    let back = dir.join(format!("{name}-back.bin"));
    let mut client = command("socat", hooked);
    client.args(["-", &format!("UNIX-CONNECT:{echo_sock}")]);
    let (pid, took) = run_files(client, data, &back);
    // socat exits with 128 + the signal's number.
    let status = echo.process.stop(libc::SIGTERM, DAEMON_TIMEOUT).expect("the echo's socat exits on SIGTERM");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "the echo's socat: {}", echo.process.stderr_text());

    let arrived = dir.join(format!("{name}-arrived.bin"));
    let mut up = command("socat", hooked);
    up.args(["-u", &format!("UNIX-LISTEN:{up_sock}"), &format!("SYSTEM:cat > {}", path_str(&arrived))]);
    let mut up = Daemon::spawn("socat", up);
    up.wait_ready(|| Path::new(&up_sock).exists());
    let mut client = command("socat", hooked);
    client.args(["-u", "-", &format!("UNIX-CONNECT:{up_sock}")]);
    slow_feed(client, &std::fs::read(data).expect("read the data"), UPLOAD_FOR);
    let status = up.process.wait(DAEMON_TIMEOUT).expect("the upload's socat exits after its connection");
    assert!(status.success(), "the upload's socat exited with {status}: {}", up.process.stderr_text());
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    (read(&back), read(&arrived), pid, took)
}

/// socat (select, `read`/`write` of 8 KiB, a forking listener, children on socketpairs): 32 MB
/// echoed both ways at once and uploaded one way, plain and under the hook on watched sockets.
/// Every byte must come back and arrive; the echo's connection must be swapped. The upload's
/// connection is held by the shell socat spawns as well as by socat: a plain connection that
/// two processes hold stays plain (the agent answers its claims "retry" while the other holds
/// it), and loses nothing; its claims back off (each "retry" doubles the wait, up to 1 s: they
/// came every 5 ms, about 300 in this upload's 1.5 s). The echo's throughput, plain and
/// swapped, is printed (not asserted).
#[test]
fn socat_streams_the_same_bytes_with_tssx() {
    require_root();
    let dir = TempDir::new("app-socat");
    let data = dir.join("data.bin");
    std::fs::write(&data, Rng::new(11).bytes(32 << 20)).expect("write the data");
    let expected = std::fs::read(&data).expect("read the data");
    let (echo_sock, up_sock) = (path_str(&dir.join("tssx-echo.sock")), path_str(&dir.join("tssx-up.sock")));
    let agent = HookedAgent::start(&[&echo_sock, &up_sock]);
    let (back, arrived, _, plain_took) = socat_run(&dir, "plain", false, &data);
    assert!(back == expected && arrived == expected, "plain: {} bytes back, {} arrived, of {}", back.len(), arrived.len(), expected.len());
    let (back, arrived, client, tssx_took) = socat_run(&dir, "tssx", true, &data);
    assert!(back == expected, "the echo gave back {} bytes, not the {} sent (or other bytes)", back.len(), expected.len());
    assert!(arrived == expected, "the upload delivered {} bytes, not the {} sent (or other bytes)", arrived.len(), expected.len());
    let mb = |took: Duration| expected.len() as f64 / 1e6 / took.as_secs_f64();
    eprintln!("socat echo: {:.0} MB/s each way plain, {:.0} MB/s with tssx", mb(plain_took), mb(tssx_took));
    assert_client_swapped(&agent, &echo_sock, client, 1, "socat echo client");
    assert!(agent.events_on("swapped", &up_sock).is_empty(), "the upload's connection, held by two processes, was swapped");
    // 5, 10, 20, ... 640 ms, then every second: 9 in 1.5 s (and one or two for the echo's
    // connection, whose listener closes its copy right after its fork).
    let retried = agent.stats()["retried"].as_u64().expect("the agent's retried count");
    eprintln!("claims answered retry: {retried}");
    assert!((1..=20).contains(&retried), "{retried} claims answered \"retry\" in the socat test");
    assert!(agent.stop().success());
}
