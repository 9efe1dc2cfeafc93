//! Redis: redis-cli sessions and redis-benchmark.

use super::*;

/// The functional part of a Redis session: outputs of several redis-cli runs (one connection
/// each), including a 256 KiB value sent from stdin and read back.
fn redis_session(sock: &str, hooked: bool, big: &[u8]) -> String {
    let cli = |args: &[&str], stdin: Option<&[u8]>| {
        let mut cmd = command("redis-cli", hooked);
        cmd.args(["-s", sock]).args(args);
        run(cmd, stdin)
    };
    let script = "FLUSHALL\nSET greeting hello\nGET greeting\nAPPEND greeting \" world\"\nSTRLEN greeting\n\
                  INCR n\nINCRBY n 41\nDECR n\nRPUSH l a b c d\nLPUSH l z\nLRANGE l 0 -1\nLLEN l\n\
                  HSET h f1 v1 f2 v2\nHGETALL h\nMSET a 1 b 2 c 3\nMGET a b c missing\nDEL a b\nEXISTS a b c\n\
                  ZADD z 3 three 1 one 2 two\nZRANGE z 0 -1 WITHSCORES\nGET missing\nTYPE l\n";
    let mut out = cli(&[], Some(script.as_bytes()));
    for _ in 0..3 {
        out += &cli(&["INCR", "n"], None);
    }
    out += &cli(&["-x", "SET", "big"], Some(big));
    out += &cli(&["STRLEN", "big"], None);
    let got = cli(&["--raw", "GET", "big"], None);
    // --raw prints the value and a newline.
    assert!(got.as_bytes() == [big, b"\n"].concat(), "GET big returned {} bytes, not the {} sent", got.len(), big.len() + 1);
    out += &cli(&["DBSIZE"], None);
    out
}

/// redis-benchmark's tests (`-t ping,set,get`) and its clients per test (`-c`): each test opens
/// its own clients, which live for the whole test.
const REDIS_BENCH_TESTS: [&str; 4] = ["PING_INLINE", "PING_MBULK", "SET", "GET"];
const REDIS_BENCH_CLIENTS: usize = 50;

/// redis-benchmark on `sock` (50 clients, 20 000 requests per test, so that each client
/// connection carries 400 requests); asserts every test completed and returns its pid.
/// Besides its clients, redis-benchmark opens one connection first for two `CONFIG GET`s and
/// closes it at once: it may stay plain.
fn redis_benchmark(sock: &str, hooked: bool) -> u32 {
    let mut cmd = command("redis-benchmark", hooked);
    cmd.args(["-s", sock, "-c", &REDIS_BENCH_CLIENTS.to_string(), "-n", "20000", "-t", "ping,set,get", "-q"]);
    let (out, pid) = run_pid(cmd, None);
    for test in REDIS_BENCH_TESTS {
        let line = out.lines().find(|l| l.trim_start().starts_with(&format!("{test}:")) && l.contains("requests per second"));
        assert!(line.is_some(), "redis-benchmark did not finish {test}: {out:?}");
    }
    pid
}

/// Starts redis-server on `sock` (no TCP, no persistence), waits for PONG, runs the session
/// and the benchmark, stops it; returns the session's output and redis-benchmark's pid.
fn redis_run(dir: &Path, sock: &str, hooked: bool, big: &[u8]) -> (String, u32) {
    let mut server = command("redis-server", hooked);
    server.args(["--port", "0", "--unixsocket", sock, "--unixsocketperm", "700", "--save", "", "--appendonly", "no"]);
    server.args(["--daemonize", "no", "--dir"]).arg(dir).arg("--logfile").arg(dir.join(format!("redis-{hooked}.log")));
    let mut server = Daemon::spawn("redis-server", server);
    server.wait_ready(|| {
        Path::new(sock).exists() && command("redis-cli", hooked).args(["-s", sock, "PING"]).output().is_ok_and(|o| o.stdout == b"PONG\n")
    });
    let session = redis_session(sock, hooked, big);
    let bench = redis_benchmark(sock, hooked);
    // The data survived the benchmark's own keys.
    let check = run(
        {
            let mut c = command("redis-cli", hooked);
            c.args(["-s", sock, "GET", "greeting"]);
            c
        },
        None,
    );
    assert_eq!(check, "hello world\n");
    server.stop(libc::SIGTERM);
    (session, bench)
}

#[test]
fn redis_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-redis");
    let (plain_sock, tssx_sock) = (path_str(&dir.join("plain.sock")), path_str(&dir.join("redis.sock")));
    let big: Vec<u8> = (0..256 * 1024).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    let agent = HookedAgent::start(&[&tssx_sock]);
    let (plain, _) = redis_run(&dir, &plain_sock, false, &big);
    assert!(plain.starts_with("OK\nOK\nhello\n11\n") && plain.contains("\n262144\n"), "unexpected plain session: {plain}");
    let (tssx, bench) = redis_run(&dir, &tssx_sock, true, &big);
    assert_same("redis-cli session", &plain, &tssx);
    assert!(agent.events_on("connect", &plain_sock).is_empty(), "the plain run's socket is not watched");
    // Each benchmark client lived for a whole test and carried 400 requests: all migrated. The
    // one-shot redis-cli connections may have stayed plain (their results are compared above).
    assert_client_swapped(&agent, &tssx_sock, bench, REDIS_BENCH_TESTS.len() * REDIS_BENCH_CLIENTS, "redis-benchmark");
    assert!(agent.stop().success());
}
