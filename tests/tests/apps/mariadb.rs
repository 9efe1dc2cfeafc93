//! MariaDB on its Unix socket: the CLI, dump and restore, mariadb-slap, `KILL`.

use super::*;

/// Debian's MariaDB server (off PATH).
const MARIADBD: &str = "/usr/sbin/mariadbd";
/// Sizes of the BLOBs the session inserts as hex literals (up to a 2 MB statement).
const MARIADB_BLOBS: [usize; 7] = [0, 1, 100, 4_000, 70_000, 300_000, 1_000_000];
/// mariadb-slap's clients and rounds: each round opens `CLIENTS` connections that live for it,
/// besides the one connection that creates and drops the schema around the rounds.
const MARIADB_SLAP_CLIENTS: usize = 8;
const MARIADB_SLAP_ROUNDS: usize = 3;

/// The CLI session: DDL, 2000 single-row INSERTs (2000 round trips), BLOBs up to 1 MB as
/// literals, then everything read back (the BLOBs in hex: about 4.6 MB of output), an UPDATE,
/// a rolled-back DELETE, and checksums.
fn mariadb_script() -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "DROP DATABASE IF EXISTS t; CREATE DATABASE t; USE t;\n\
         CREATE TABLE kv (id INT PRIMARY KEY, name VARCHAR(64), v DECIMAL(12,2), note TEXT) ENGINE=InnoDB;\n\
         CREATE TABLE blobs (id INT PRIMARY KEY, b LONGBLOB) ENGINE=InnoDB;\n",
    );
    for i in 1..=2000 {
        writeln!(s, "INSERT INTO kv VALUES ({i}, 'name{i}', {i}.5, '{}');", "x".repeat(i % 50)).unwrap();
    }
    let mut rng = Rng::new(42);
    for (i, size) in MARIADB_BLOBS.iter().enumerate() {
        let hex: String = rng.bytes(*size).iter().map(|b| format!("{b:02X}")).collect();
        writeln!(s, "INSERT INTO blobs VALUES ({}, X'{hex}');", i + 1).unwrap();
    }
    s += "INSERT INTO blobs SELECT id + 100, REPEAT(CONCAT('ab', id), 100000) FROM blobs WHERE id <= 3;\n\
          SELECT COUNT(*), SUM(v), MIN(name), MAX(name) FROM kv;\n\
          UPDATE kv SET v = v * 2 WHERE id <= 100;\n\
          SELECT id, name, v FROM kv WHERE id % 100 = 0 ORDER BY id;\n\
          SELECT id, LENGTH(b), MD5(b) FROM blobs ORDER BY id;\n\
          SELECT id, HEX(b) FROM blobs ORDER BY id;\n\
          SELECT * FROM kv ORDER BY id;\n\
          BEGIN; DELETE FROM kv WHERE id > 1000; SELECT COUNT(*) FROM kv; ROLLBACK;\n\
          SELECT COUNT(*) FROM kv;\n\
          SELECT MD5(GROUP_CONCAT(name, v ORDER BY id SEPARATOR ',')) FROM kv;\n";
    s
}

/// A MariaDB client, as root on `sock`, with packets up to 64 MB.
fn mariadb_client(program: &str, sock: &str, hooked: bool) -> Command {
    let mut cmd = command(program, hooked);
    cmd.args(["--no-defaults", "-S", sock, "-uroot"]);
    if program != "mariadb-slap" && program != "mariadb-admin" {
        cmd.arg("--max-allowed-packet=64M");
    }
    cmd
}

/// One `mariadb -e` statement list; returns its output.
fn mariadb_exec(sock: &str, hooked: bool, sql: &str) -> String {
    let mut cmd = mariadb_client("mariadb", sock, hooked);
    cmd.args(["--batch", "-e", sql]);
    run(cmd, None)
}

/// A session that lives while another one KILLs it: MariaDB's KILL shuts the victim's socket
/// down (`shutdown(SHUT_RDWR)`) from the killer's thread while the victim's thread sleeps in
/// `poll` on it, and counts on that to wake it. The victim (one `mariadb` reading statements
/// from a pipe) runs 30 statements, sits idle, is KILLed; its session must be gone from the
/// server within 5 s (at once, plain), and its next statement must find the server gone.
/// Returns what it saw and its pid.
fn mariadb_kill_a_session(sock: &str, hooked: bool) -> (String, u32) {
    use std::io::{BufRead as _, Write as _};
    let mut victim = mariadb_client("mariadb", sock, hooked);
    victim.args(["--batch", "-N", "-n"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut victim = victim.spawn().expect("run mariadb");
    let pid = victim.id();
    let mut stdin = victim.stdin.take().unwrap();
    let mut sql = String::from("SELECT CONNECTION_ID();\n");
    for i in 0..30 {
        sql += &format!("SELECT {i}, LENGTH(REPEAT('x', 3000));\n");
    }
    stdin.write_all(sql.as_bytes()).expect("write to mariadb");
    // Its 31 answers, read on a thread (a session that hangs fails the test, not the run).
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = victim.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let lines: Vec<String> = (0..31).map(|_| rx.recv_timeout(DAEMON_TIMEOUT).expect("the victim's answers")).collect();
    let id: u32 = lines[0].trim().parse().unwrap_or_else(|_| panic!("CONNECTION_ID: {:?}", lines[0]));
    std::thread::sleep(Duration::from_millis(200));
    mariadb_exec(sock, hooked, &format!("KILL {id}"));
    let started = Instant::now();
    let alive =
        || mariadb_exec(sock, hooked, &format!("SELECT COUNT(*) FROM information_schema.processlist WHERE id = {id}")) != "COUNT(*)\n0\n";
    let gone = poll_until(Duration::from_secs(5), || !alive());
    let took = started.elapsed();
    stdin.write_all(b"SELECT 'after the kill';\n").expect("write to mariadb");
    drop(stdin);
    let out = victim.wait_with_output().expect("wait for mariadb");
    reader.join().expect("the victim's reader");
    let rest: String = rx.try_iter().collect::<Vec<_>>().join("\n");
    assert!(gone, "the KILLed session (id {id}) still runs {took:?} after the KILL");
    eprintln!("mariadb: the KILLed session ended {took:?} after the KILL");
    let saw = format!(
        "victim: {} answers, then {:?} and exit {}; stderr: {}\n",
        lines.len(),
        rest,
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    (saw, pid)
}

/// What one MariaDB run leaves for the comparison, and the pids of its long-lived clients.
struct MariadbRun {
    /// Every client's output (the session, LOAD DATA, the dump, checksums, the KILL).
    out: String,
    /// The client processes with one connection that lives and moves data: (pid, what).
    sessions: Vec<(u32, &'static str)>,
    /// mariadb-slap's pid (if it ran).
    slap: Option<u32>,
    /// The server's pid and its log (stderr).
    server: u32,
    log: Vec<String>,
}

/// Initialises a data directory under `dir`, starts mariadbd on `sock` (no TCP) with `extra`
/// options, runs the session (and, if `full`, LOAD DATA LOCAL INFILE, mariadb-dump, a restore
/// of the dump, checksums, mariadb-slap and a KILL), stops it with SIGTERM.
fn mariadb_run(dir: &Path, name: &str, sock: &str, hooked: bool, extra: &[&str], full: bool) -> MariadbRun {
    let data = dir.join(format!("data-{name}"));
    let mut init = command("mariadb-install-db", hooked);
    init.arg("--no-defaults").arg(format!("--datadir={}", data.display()));
    init.args(["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"]);
    run(init, None);
    let mut server = command(MARIADBD, hooked);
    server.arg("--no-defaults").arg(format!("--datadir={}", data.display())).arg(format!("--socket={sock}"));
    server.arg(format!("--pid-file={}", dir.join(format!("{name}.pid")).display()));
    server.args(["--skip-networking", "--user=root", "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0"]);
    server.args(["--max-allowed-packet=64M", "--local-infile=1"]).args(extra);
    let mut server = Daemon::spawn("mariadbd (mariadb-server)", server);
    server.wait_ready(|| {
        Path::new(sock).exists() && mariadb_client("mariadb-admin", sock, hooked).arg("ping").output().is_ok_and(|o| o.status.success())
    });
    let mut session = mariadb_client("mariadb", sock, hooked);
    session.arg("--batch");
    let (mut out, pid) = run_pid(session, Some(mariadb_script().as_bytes()));
    let mut sessions = vec![(pid, "mariadb (the session)")];
    let mut slap = None;
    if full {
        let tsv = dir.join("load.tsv");
        if !tsv.exists() {
            let rows: String = (1..=20_000).map(|i| format!("{i}\tload{i}\t{}\n", i * 3)).collect();
            std::fs::write(&tsv, rows).expect("write load.tsv");
        }
        let mut load = mariadb_client("mariadb", sock, hooked);
        load.args(["--batch", "--local-infile=1", "t", "-e"]).arg(format!(
            "CREATE TABLE ld (id INT PRIMARY KEY, name VARCHAR(32), n INT); LOAD DATA LOCAL INFILE '{}' INTO TABLE ld; \
             SHOW WARNINGS; SELECT COUNT(*), SUM(n), MD5(GROUP_CONCAT(name ORDER BY id)) FROM ld;",
            tsv.display()
        ));
        let (loaded, pid) = run_pid(load, None);
        out += &loaded;
        sessions.push((pid, "mariadb (LOAD DATA LOCAL INFILE)"));
        let mut dump = mariadb_client("mariadb-dump", sock, hooked);
        dump.args(["--hex-blob", "--skip-dump-date", "--databases", "t"]);
        let (dumped, pid) = run_pid(dump, None);
        sessions.push((pid, "mariadb-dump"));
        out += &dumped.lines().filter(|l| !l.starts_with("-- Dump completed")).map(|l| format!("{l}\n")).collect::<String>();
        let mut restore = mariadb_client("mariadb", sock, hooked);
        restore.arg("--batch");
        let (restored, pid) = run_pid(restore, Some(dumped.replace("`t`", "`t2`").as_bytes()));
        out += &restored;
        sessions.push((pid, "mariadb (the dump restored)"));
        let sums = mariadb_exec(sock, hooked, "CHECKSUM TABLE t.kv, t.blobs, t.ld, t2.kv, t2.blobs, t2.ld");
        let sum = |table: &str| sums.lines().find_map(|l| l.strip_prefix(table)?.strip_prefix('\t')).map(str::to_owned);
        for table in ["kv", "blobs", "ld"] {
            let (a, b) = (sum(&format!("t.{table}")), sum(&format!("t2.{table}")));
            assert!(a.is_some() && a == b, "the restored {table} differs: {sums}");
        }
        out += &sums;
        let mut bench = mariadb_client("mariadb-slap", sock, hooked);
        bench.arg(format!("--concurrency={MARIADB_SLAP_CLIENTS}")).arg(format!("--iterations={MARIADB_SLAP_ROUNDS}"));
        bench.args(["--number-of-queries=2000", "--auto-generate-sql", "--auto-generate-sql-load-type=mixed"]);
        bench.arg("--auto-generate-sql-add-autoincrement");
        let started = Instant::now();
        let (report, pid) = run_pid(bench, None);
        eprintln!("mariadb-slap ({}): {:?}", if hooked { "tssx" } else { "plain" }, started.elapsed());
        assert!(
            report.contains("Average number of seconds to run all queries")
                && report.contains(&format!("Number of clients running queries: {MARIADB_SLAP_CLIENTS}")),
            "mariadb-slap: {report}"
        );
        slap = Some(pid);
        let (killed, pid) = mariadb_kill_a_session(sock, hooked);
        out += &killed;
        sessions.push((pid, "mariadb (the KILLed session)"));
    }
    let pid = server.process.pid();
    let log = server.stop(libc::SIGTERM);
    let errors: Vec<&String> = log.iter().filter(|l| l.contains("[ERROR]")).collect();
    assert!(errors.is_empty(), "mariadbd ({name}) logged errors: {errors:?}");
    MariadbRun { out, sessions, slap, server: pid, log }
}

/// MariaDB (10.11, one thread per connection, clients through libmariadb: non-blocking
/// `recv`/`send` with `MSG_DONTWAIT`, `poll` with and without a timeout) on its Unix socket:
/// a CLI session (thousands of statements, BLOBs up to 1 MB both ways), LOAD DATA LOCAL INFILE
/// (the client sends a file the server asks for), mariadb-dump, the dump restored, mariadb-slap
/// with 8 concurrent clients in 3 rounds, and a session KILLed by another one (the server shuts
/// its socket down while its thread sleeps on it). Outputs (the dump too) must be identical to
/// plain, the server must log no error, and every one of those clients' connections must be
/// swapped.
///
/// InnoDB's default asynchronous I/O is io_uring where the kernel offers it, and tssx keeps
/// every connection of a process with an io_uring plain (README, "io_uring"): the swapped runs
/// turn it off (`--innodb-use-native-aio=0`, the setting for a kernel without io_uring), and a
/// last run with MariaDB's defaults checks that such a server stays plain for that reason and
/// still gives the same results.
#[test]
fn mariadb_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-mariadb");
    let (plain_sock, tssx_sock, uring_sock) =
        (path_str(&dir.join("plain.sock")), path_str(&dir.join("mariadb.sock")), path_str(&dir.join("uring.sock")));
    let agent = HookedAgent::start(&[&tssx_sock, &uring_sock]);
    let no_uring = ["--innodb-use-native-aio=0"];
    let plain = mariadb_run(&dir, "plain", &plain_sock, false, &no_uring, true);
    for expected in ["2000\t2002000.00\tname1\tname999", "20000\t600030000\t", "CREATE TABLE `blobs`", "victim: 31 answers"] {
        assert!(plain.out.contains(expected), "{expected:?} missing from the plain run's output");
    }
    assert!(plain.out.contains("Server has gone away"), "the KILLed session did not see it: {}", plain.out.lines().last().unwrap_or(""));
    let tssx = mariadb_run(&dir, "tssx", &tssx_sock, true, &no_uring, true);
    assert_same("mariadb session, LOAD DATA, dump, restore, checksums and KILL", &plain.out, &tssx.out);
    let aborted = |run: &MariadbRun| run.log.iter().filter(|l| l.contains("Aborted connection")).count();
    assert_eq!(aborted(&plain), aborted(&tssx), "mariadbd's aborted connections, plain vs tssx: {:?}", tssx.log);
    for &(pid, what) in &tssx.sessions {
        assert_client_swapped(&agent, &tssx_sock, pid, 1, what);
    }
    let slap = tssx.slap.expect("mariadb-slap ran");
    assert_client_swapped(&agent, &tssx_sock, slap, 1 + MARIADB_SLAP_CLIENTS * MARIADB_SLAP_ROUNDS, "mariadb-slap");
    // MariaDB's defaults: InnoDB on io_uring (if this kernel has it) keeps the server plain.
    let uring = mariadb_run(&dir, "uring", &uring_sock, true, &[], false);
    let plain_session = &plain.out[..uring.out.len().min(plain.out.len())];
    assert_same("mariadb session (InnoDB on io_uring)", plain_session, &uring.out);
    if uring.log.iter().any(|l| l.contains("InnoDB: Using io_uring")) {
        let reasons = || -> Vec<String> {
            agent
                .events("not")
                .iter()
                .filter(|e| e["pid"] == uring.server)
                .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                .collect()
        };
        poll_until(TRACE_TIMEOUT, || reasons().iter().any(|r| r.contains("io_uring")));
        assert!(reasons().iter().any(|r| r.contains("io_uring")), "no `not swapped` for io_uring: {:?}", reasons());
        assert!(swapped_pairs(&agent, &uring_sock).is_empty(), "a connection of a server with an io_uring was swapped");
    } else {
        assert_client_swapped(&agent, &uring_sock, uring.sessions[0].0, 1, "mariadb (InnoDB without io_uring)");
    }
    assert!(agent.stop().success());
}
