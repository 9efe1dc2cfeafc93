//! PostgreSQL: psql, pgbench, a socket directory watched by prefix.

use super::*;

/// Debian 12's PostgreSQL server binaries (off PATH).
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

const PG_PORT: &str = "54329";

/// Queries whose complete output is compared: DDL/DML tags, aggregates, a 20 000-row result
/// (about 900 KB through the socket), a 100 KB value and COPY.
const PG_SCRIPT: &str = "
DROP TABLE IF EXISTS t;
CREATE TABLE t (id int PRIMARY KEY, name text, v numeric);
INSERT INTO t SELECT g, 'name' || g, g * 1.5 FROM generate_series(1, 10000) g;
SELECT count(*), sum(v), min(name), max(name) FROM t;
SELECT id, name, v FROM t WHERE id % 1000 = 0 ORDER BY id;
UPDATE t SET v = v * 2 WHERE id <= 100;
SELECT md5(string_agg(name || v, ',' ORDER BY id)) FROM t;
SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
SELECT length(repeat('ab', 50000)), md5(repeat('ab', 50000));
BEGIN; DELETE FROM t WHERE id > 5000; SELECT count(*) FROM t; ROLLBACK;
SELECT count(*) FROM t;
COPY (SELECT * FROM t WHERE id <= 5 ORDER BY id) TO STDOUT;
";

/// As the unprivileged `postgres` user (PostgreSQL refuses root), keeping the environment.
fn as_postgres(program: &str, hooked: bool) -> Command {
    let mut cmd = command("setpriv", hooked);
    cmd.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]).arg(program);
    cmd
}

fn chown_postgres(path: &Path) {
    run(
        {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(path);
            c
        },
        None,
    );
}

fn pg_client(program: &str, sock_dir: &str, hooked: bool) -> Command {
    let mut cmd = command(program, hooked);
    cmd.args(["-h", sock_dir, "-p", PG_PORT, "-U", "postgres"]);
    cmd
}

/// A session that lasted this long must have migrated (it lived far longer than
/// `--claim-after` plus a migration, and every session moves data).
const LONG_SESSION: Duration = Duration::from_millis(500);

/// The sessions in postgres's log (`log_disconnections`, `log_line_prefix='%p '`): each
/// backend's pid (one backend per connection) and how long its session lasted.
fn pg_sessions(log: &[String]) -> Vec<(u32, Duration)> {
    log.iter()
        .filter_map(|line| {
            let (pid, rest) = line.split_once(' ')?;
            let time = rest.split_once("disconnection: session time: ")?.1.split_whitespace().next()?;
            let mut hms = time.split(':').map(|f| f.parse::<f64>().ok());
            let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
            Some((pid.parse().ok()?, Duration::from_secs_f64(h * 3600.0 + m * 60.0 + s)))
        })
        .collect()
}

/// Starts postgres on `data` with its socket in `sock_dir` only, runs the psql script and
/// pgbench, stops it; returns psql's output and the sessions postgres logged.
fn postgres_run(data: &Path, sock_dir: &Path, hooked: bool) -> (String, Vec<(u32, Duration)>) {
    std::fs::create_dir_all(sock_dir).unwrap();
    chown_postgres(sock_dir);
    let sock_dir = path_str(sock_dir);
    let mut server = as_postgres(&format!("{PG_BIN}/postgres"), hooked);
    server.arg("-D").arg(data).args(["-k", &sock_dir, "-p", PG_PORT, "-c", "listen_addresses=", "-c", "fsync=off"]);
    server.args(["-c", "shared_buffers=16MB", "-c", "max_connections=20"]);
    server.args(["-c", "log_connections=on", "-c", "log_disconnections=on", "-c", "log_line_prefix=%p "]);
    let mut server = Daemon::spawn("postgres", server);
    server.wait_ready(|| pg_client(&format!("{PG_BIN}/pg_isready"), &sock_dir, hooked).arg("-q").status().is_ok_and(|s| s.success()));
    let mut psql = pg_client("psql", &sock_dir, hooked);
    psql.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"]);
    let out = run(psql, Some(PG_SCRIPT.as_bytes()));
    let mut init = pg_client(&format!("{PG_BIN}/pgbench"), &sock_dir, hooked);
    init.args(["-i", "-s", "1", "-q", "postgres"]);
    run(init, None);
    let mut bench = pg_client(&format!("{PG_BIN}/pgbench"), &sock_dir, hooked);
    bench.args(["-S", "-T", "2", "-c", "1", "postgres"]);
    let report = run(bench, None);
    let processed = report.lines().find_map(|l| l.strip_prefix("number of transactions actually processed: "));
    assert!(processed.and_then(|n| n.trim().parse::<u64>().ok()).is_some_and(|n| n > 0), "pgbench -S: {report}");
    assert!(report.contains("number of failed transactions: 0"), "pgbench -S: {report}");
    // Fast shutdown (SIGINT): postgres exits 0 once every backend is gone.
    let log = server.stop(libc::SIGINT);
    (out, pg_sessions(&log))
}

#[test]
fn postgres_gives_the_same_results_with_tssx() {
    require_root();
    let dir = TempDir::new("app-pg");
    chown_postgres(&dir);
    let data = dir.join("data");
    let mut initdb = as_postgres(&format!("{PG_BIN}/initdb"), false);
    initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]);
    run(initdb, None);
    let tssx_dir: PathBuf = dir.join("tssx");
    let tssx_sock = path_str(&tssx_dir.join(format!(".s.PGSQL.{PG_PORT}")));
    let agent = HookedAgent::start(&[&tssx_sock]);
    let (plain, _) = postgres_run(&data, &dir.join("plain"), false);
    assert!(plain.contains("10000|75007500.0|name1|name9999"), "unexpected plain output: {}", &plain[..plain.len().min(500)]);
    assert!(plain.lines().count() > 20_000, "the 20 000-row result is missing");
    let (tssx, sessions) = postgres_run(&data, &tssx_dir, true);
    assert_same("psql session", &plain, &tssx);
    // Every session that lasted (pgbench -S's 2 s one at least, likely psql's and pgbench -i's)
    // migrated: its backend is the server end of a `swapped` line. pg_isready and pgbench's
    // short set-up connections may have stayed plain.
    let long: Vec<(u32, Duration)> = sessions.iter().copied().filter(|(_, t)| *t >= LONG_SESSION).collect();
    assert!(!long.is_empty(), "no session of {LONG_SESSION:?} or more in postgres's log: {sessions:?}");
    let swapped_backends = || swapped_pairs(&agent, &tssx_sock).into_iter().map(|(_, server)| server).collect::<Vec<_>>();
    poll_until(TRACE_TIMEOUT, || long.iter().all(|(pid, _)| swapped_backends().contains(pid)));
    let missing: Vec<_> = long.iter().filter(|(pid, _)| !swapped_backends().contains(pid)).collect();
    eprintln!("postgres sessions (backend pid, duration): {sessions:?}; swapped backends: {:?}", swapped_backends());
    assert!(
        missing.is_empty(),
        "sessions (backend pid, duration) that lasted but were not swapped: {missing:?}; all sessions: {sessions:?}; \
         swapped (client, server): {:?}; not swapped: {:?}",
        swapped_pairs(&agent, &tssx_sock),
        not_swapped_reasons(&agent, &tssx_sock)
    );
    assert!(agent.stop().success());
}

/// PostgreSQL as deployed: the agent watches its socket *directory* by prefix (`--paths
/// /var/run/postgresql/`-style), not one socket path; every session that lasted is swapped, and
/// traced with the socket's own path and the pattern that matched it.
#[test]
fn postgres_with_its_socket_directory_watched_by_prefix() {
    require_root();
    let dir = TempDir::new("app-pg-prefix");
    chown_postgres(&dir);
    let data = dir.join("data");
    let mut initdb = as_postgres(&format!("{PG_BIN}/initdb"), false);
    initdb.arg("-D").arg(&data).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"]);
    run(initdb, None);
    let sock_dir: PathBuf = dir.join("run-postgresql");
    let prefix = format!("{}/", path_str(&sock_dir));
    let sock = path_str(&sock_dir.join(format!(".s.PGSQL.{PG_PORT}")));
    let agent = HookedAgent::start(&[&prefix]);
    let (out, sessions) = postgres_run(&data, &sock_dir, true);
    assert!(out.contains("10000|75007500.0|name1|name9999"), "unexpected output: {}", &out[..out.len().min(500)]);
    assert!(out.lines().count() > 20_000, "the 20 000-row result is missing");
    let long: Vec<(u32, Duration)> = sessions.iter().copied().filter(|(_, t)| *t >= LONG_SESSION).collect();
    assert!(!long.is_empty(), "no session of {LONG_SESSION:?} or more in postgres's log: {sessions:?}");
    let swapped_backends = || swapped_pairs(&agent, &sock).into_iter().map(|(_, server)| server).collect::<Vec<_>>();
    poll_until(TRACE_TIMEOUT, || long.iter().all(|(pid, _)| swapped_backends().contains(pid)));
    let missing: Vec<_> = long.iter().filter(|(pid, _)| !swapped_backends().contains(pid)).collect();
    assert!(
        missing.is_empty(),
        "sessions (backend pid, duration) that lasted but were not swapped: {missing:?}; all: {sessions:?}; not swapped: {:?}",
        not_swapped_reasons(&agent, &sock)
    );
    let swapped = agent.events_on("swapped", &sock);
    assert!(swapped.iter().all(|s| s["pattern"] == prefix.as_str()), "{swapped:?}");
    assert!(agent.stop().success());
}
