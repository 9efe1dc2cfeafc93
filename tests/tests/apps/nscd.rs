//! nscd, the design's example: glibc's own client inside libc never claims, and must never stall.

use super::*;

const NSS: &str = env!("CARGO_BIN_EXE_tssx-test-nss");
/// No single lookup may take this long: far above a loaded machine's worst lookup (a few ms),
/// far below the 0.5 s and 1 s stalls of a server that waits for a claim that never comes.
const LOOKUP_BOUND: Duration = Duration::from_millis(300);
/// The same for one `getent` run (a process start, the hook's constructor and one lookup).
const GETENT_BOUND: Duration = Duration::from_millis(450);

/// What to look up: the machine's first users and groups, one that does not exist of each,
/// and the host names of /etc/hosts (never a name that would go to DNS).
struct Lookups {
    users: Vec<String>,
    gids: Vec<String>,
    hosts: Vec<String>,
}

impl Lookups {
    fn of_this_machine() -> Self {
        let first_fields = |file: &str, field: usize| -> Vec<String> {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
            text.lines().filter_map(|l| l.split(':').nth(field)).take(10).map(str::to_owned).collect()
        };
        let mut users = first_fields("/etc/passwd", 0);
        users.push("tssx-no-such-user".into());
        let mut gids = first_fields("/etc/group", 2);
        gids.push("4242424".into());
        let hosts_file = std::fs::read_to_string("/etc/hosts").expect("/etc/hosts");
        let mut hosts: Vec<String> = hosts_file
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect::<Vec<_>>())
            .collect();
        hosts.dedup();
        hosts.truncate(4);
        assert!(!hosts.is_empty() && users.len() > 1 && gids.len() > 1, "nothing to look up: {users:?} {gids:?} {hosts:?}");
        Self { users, gids, hosts }
    }
}

/// Runs `cmd` (at most 30 s: a hang fails), returning its exit code, stdout lines and run time.
fn run_timed(cmd: Command) -> (i32, Vec<String>, Duration) {
    let started = Instant::now();
    let mut process = Process::spawn(cmd);
    let status = process.wait(Duration::from_secs(30));
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| panic!("{} hung (killed after 30 s); stderr: {}", process.name(), process.stderr_text()));
    process.wait_closed(Duration::from_secs(5));
    (status.code().unwrap_or(-1), process.stdout_lines(), took)
}

/// Starts nscd with `config` in the namespace (under the hook if `hooked`), runs the lookups
/// (getent and `tssx-test-nss`, under the hook too if `hooked`), checks that each database was
/// served by nscd and that no lookup stalled, stops nscd; returns the transcript of answers.
fn nscd_session(ns: &MountNamespace, config: &Path, hooked: bool, lookups: &Lookups) -> String {
    let in_ns = |program: &str| {
        let mut cmd = ns.command(program);
        if hooked {
            cmd.env("LD_PRELOAD", hook());
        } else {
            cmd.env_remove("LD_PRELOAD");
        }
        cmd
    };
    let so = hook();
    let nscd = Nscd::start(ns, config, hooked.then_some(so.as_path())).unwrap_or_else(|e| panic!("{e:#}"));
    let what = format!("{} nscd ({})", if hooked { "hooked" } else { "plain" }, config.file_name().unwrap_or_default().to_string_lossy());

    let mut transcript = String::new();
    let user = &lookups.users[0];
    let queries: Vec<Vec<&str>> = vec![
        vec!["passwd", user],
        vec!["passwd", "0"],
        vec!["passwd", "tssx-no-such-user"],
        vec!["group", "root"],
        vec!["group", "0"],
        vec!["group", "4242424"],
        vec!["hosts", &lookups.hosts[0]],
        vec!["ahostsv4", &lookups.hosts[0]],
        vec!["initgroups", user],
    ];
    // Twice: a miss (nscd asks the files), then a hit (from its cache or the shared mapping).
    for pass in 0..2 {
        for query in &queries {
            let mut getent = in_ns("getent");
            getent.args(query);
            let (code, lines, took) = run_timed(getent);
            assert!(took < GETENT_BOUND, "{what}: getent {query:?} (pass {pass}) took {took:?}: a stall");
            transcript += &format!("getent {} -> exit {code}\n{}\n", query.join(" "), lines.join("\n"));
        }
    }
    let mut check = in_ns(NSS);
    check.args(["check", "40", &lookups.users.join(","), &lookups.gids.join(","), &lookups.hosts.join(",")]);
    let (code, lines, _) = run_timed(check);
    assert_eq!(code, 0, "{what}: tssx-test-nss check failed: {lines:?}");
    let time = lines.iter().find(|l| l.starts_with("time ")).cloned().unwrap_or_default();
    let slowest = time.split_whitespace().find_map(|w| w.strip_prefix("slowest_us=")).and_then(|v| v.parse::<u64>().ok());
    let slowest = Duration::from_micros(slowest.unwrap_or_else(|| panic!("{what}: no timing line: {lines:?}")));
    assert!(slowest < LOOKUP_BOUND, "{what}: a lookup took {slowest:?} ({time}): a stall");
    eprintln!("{what}: {time}");
    transcript += &lines.iter().filter(|l| !l.starts_with("time ")).map(|l| format!("{l}\n")).collect::<String>();

    let misses = nscd.misses(ns).unwrap_or_else(|| panic!("{what}: nscd -g failed"));
    for db in ["passwd", "group", "hosts"] {
        assert!(misses.get(db).is_some_and(|&n| n > 0), "{what}: nscd served no {db} lookup (misses per cache: {misses:?})");
    }
    nscd.stop().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    transcript
}

/// nscd, the design's own example: glibc's nscd client uses the socket from inside libc, so
/// the client never claims. With nscd and every client under the hook, for `shared no` (every
/// lookup a connection) and `shared yes` (clients map the cache, fetched with SCM_RIGHTS over
/// the socket), every answer must be the plain one, no lookup may stall, and no connection may
/// be swapped (only one end ever has the hook's view of it).
#[test]
fn nscd_answers_the_same_with_tssx_and_never_stalls() {
    require_root();
    let _lock = MachineLock::acquire();
    let dir = TempDir::new("app-nscd");
    let dirs = tssx_tests::nscd::private_dirs();
    let ns = MountNamespace::new(&dirs.iter().map(String::as_str).collect::<Vec<_>>());
    let agent = Agent::spawn_wrapped(&ns.wrapper(), &agent_bin(), &[NSCD_SOCKET], None, &["-v"]).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(std::fs::metadata(ns.path("/run/tssx")).map(|m| m.permissions().mode() & 0o7777).ok(), Some(0o755), "the private /run/tssx");
    let lookups = Lookups::of_this_machine();
    for shared in [false, true] {
        let config = tssx_tests::nscd::config(&dir, shared).unwrap();
        let plain = nscd_session(&ns, &config, false, &lookups);
        assert!(plain.contains("ok rounds=40") && plain.contains("getent passwd 0 -> exit 0\nroot:"), "unexpected plain session: {plain}");
        let tssx = nscd_session(&ns, &config, true, &lookups);
        assert_same(&format!("nscd lookups, shared {shared}"), &plain, &tssx);
    }
    assert!(!agent.events_on("connect", NSCD_SOCKET).is_empty(), "the agent saw no connection to {NSCD_SOCKET}");
    let swapped = agent.events_on("swapped", NSCD_SOCKET);
    assert!(swapped.is_empty(), "glibc's client never claims, yet connections were swapped: {swapped:?}");
    assert!(agent.stop().success());
}
