//! PHP-FPM behind nginx over FastCGI Unix sockets.

use super::*;

/// Debian 12's PHP-FPM (php8.2-fpm).
const PHP_FPM: &str = "/usr/sbin/php-fpm8.2";
/// The test's PHP scripts (see their headers), written into each run's document root.
const PHP_SCRIPTS: &[(&str, &str)] = &[
    ("echo.php", include_str!("../../php/echo.php")),
    ("big.php", include_str!("../../php/big.php")),
    ("post.php", include_str!("../../php/post.php")),
    ("stream.php", include_str!("../../php/stream.php")),
    ("finish.php", include_str!("../../php/finish.php")),
    ("slow.php", include_str!("../../php/slow.php")),
];
/// PHP-FPM's pools, one FastCGI socket each (see [`PhpSite`]).
const PHP_POOLS: [&str; 3] = ["fresh", "keep", "term"];
/// The children of the `fresh` and `keep` pools (`pm = static`), and the most requests the
/// test has in flight. A child serves one FastCGI connection at a time, with
/// `fastcgi_keep_conn` until nginx closes it: more upstream connections than children would
/// wait in the listen backlog for a child that an idle kept connection holds (plain too).
const PHP_CHILDREN: u32 = 4;
/// A child of the `keep` pool that served this many requests served a kept connection for far
/// longer than the claim rule's millisecond (as [`BUSY_UPSTREAM_REQUESTS`]).
const BUSY_PHP_REQUESTS: usize = 100;

/// PHP-FPM (a master and [`PHP_CHILDREN`] children per pool, as `nobody`) behind nginx (a
/// master and a worker, as `nobody`, `sendfile on` as Debian has it), both in `dir` with
/// files named after `name`, on a free loopback port. Two pools, one FastCGI socket each:
/// - `/fresh/SCRIPT`: `fastcgi_pass unix:PATH`, a new connection per request, which PHP-FPM
///   ends with `shutdown(SHUT_WR)`, a read to EOF and `close`;
/// - `/keep/SCRIPT`: an `upstream` block with `keepalive`, `fastcgi_keep_conn on`: the
///   connections are kept and reused, each by the child that accepted it;
/// - `/term/SCRIPT`: as `keep`, to a pool of one child with `request_terminate_timeout = 1s`.
struct PhpSite {
    fpm: Daemon,
    nginx: Daemon,
    port: u16,
    dir: PathBuf,
    name: String,
}

impl PhpSite {
    /// The FastCGI socket of `pool`, for a site started in `dir` with `name`.
    fn socket(dir: &Path, name: &str, pool: &str) -> String {
        path_str(&dir.join(format!("{name}-{pool}.sock")))
    }

    fn file(dir: &Path, name: &str, suffix: &str) -> PathBuf {
        dir.join(format!("{name}-{suffix}"))
    }

    /// Writes the document root and both configurations, starts PHP-FPM and then nginx (under
    /// the hook if `hooked`), and waits until nginx answers.
    fn start(dir: &Path, name: &str, hooked: bool) -> Self {
        let file = |suffix: &str| Self::file(dir, name, suffix);
        let www = file("www");
        std::fs::create_dir_all(&www).unwrap();
        for (script, text) in PHP_SCRIPTS {
            std::fs::write(www.join(script), text).unwrap();
        }
        let socks = PHP_POOLS.map(|pool| Self::socket(dir, name, pool));
        let mut fpm = format!("[global]\npid = {}\nerror_log = {}\n", file("fpm.pid").display(), file("fpm.log").display());
        for (pool, sock) in PHP_POOLS.iter().zip(&socks) {
            // `term`: one child, killed by the master when a request (or the wait for the
            // next one on a kept connection) lasts over a second.
            let children = if *pool == "term" { "1\nrequest_terminate_timeout = 1s" } else { "4" };
            fpm += &format!(
                "[{pool}]\nlisten = {sock}\nlisten.mode = 0666\nuser = nobody\ngroup = nogroup\npm = static\n\
                 pm.max_children = {children}\naccess.log = {}\naccess.format = \"%p %s %r\"\n",
                file(&format!("{pool}-access.log")).display()
            );
        }
        let fpm_conf = file("fpm.conf");
        std::fs::write(&fpm_conf, fpm).unwrap();
        let mut cmd = command(PHP_FPM, hooked);
        // In the foreground, with no php.ini (PHP's defaults: no output buffering).
        cmd.args(["-F", "-n", "-y"]).arg(&fpm_conf);
        let mut fpm = Daemon::spawn("php-fpm (php8.2-fpm)", cmd);
        fpm.wait_ready(|| socks.iter().all(|s| Path::new(s).exists()));

        let port = tssx_tests::nginx::free_port().expect("a free loopback port");
        let params: String = [
            ("QUERY_STRING", "$query_string"),
            ("REQUEST_METHOD", "$request_method"),
            ("CONTENT_TYPE", "$content_type"),
            ("CONTENT_LENGTH", "$content_length"),
            ("SCRIPT_NAME", "$fastcgi_script_name"),
            ("REQUEST_URI", "$request_uri"),
            ("SERVER_PROTOCOL", "$server_protocol"),
            ("GATEWAY_INTERFACE", "CGI/1.1"),
        ]
        .iter()
        .map(|(param, value)| format!("      fastcgi_param {param} {value};\n"))
        .chain([format!("      fastcgi_param SCRIPT_FILENAME {}/$script;\n", www.display())])
        .collect();
        let temp = file("temp");
        let mut nginx = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser nobody nogroup;\npid {};\nerror_log {} warn;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_max_body_size 16m;\n  sendfile on;\n",
            file("nginx.pid").display(),
            file("nginx-error.log").display()
        );
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            nginx += &format!("  {t}_temp_path {};\n", temp.join(t).display());
        }
        nginx += &format!("  upstream php_keep {{\n    server unix:{};\n    keepalive {PHP_CHILDREN};\n  }}\n", socks[1]);
        nginx += &format!("  upstream php_term {{\n    server unix:{};\n    keepalive 1;\n  }}\n", socks[2]);
        nginx += &format!("  server {{\n    listen 127.0.0.1:{port};\n    location = /ready {{ return 204; }}\n");
        nginx += &format!("    location ~ ^/fresh/(?<script>[a-z]+\\.php)$ {{\n      fastcgi_pass unix:{};\n{params}    }}\n", socks[0]);
        for pool in ["keep", "term"] {
            nginx += &format!(
                "    location ~ ^/{pool}/(?<script>[a-z]+\\.php)$ {{\n      fastcgi_pass php_{pool};\n      fastcgi_keep_conn on;\n{params}    }}\n"
            );
        }
        nginx += "  }\n}\n";
        let nginx_conf = file("nginx.conf");
        std::fs::write(&nginx_conf, nginx).unwrap();
        std::fs::create_dir_all(&temp).unwrap();
        let mut cmd = command(tssx_tests::nginx::NGINX, hooked);
        cmd.arg("-p").arg(dir).arg("-e").arg(file("nginx-error.log")).arg("-c").arg(&nginx_conf);
        let mut nginx = Daemon::spawn("nginx (nginx-light)", cmd);
        let body = file("curl.out");
        nginx.wait_ready(|| php_curl(port, &body, "/ready", &[]).is_ok_and(|(status, ..)| status == 204));
        Self { fpm, nginx, port, dir: dir.to_owned(), name: name.to_owned() }
    }

    /// `curl`s `path` (with `args`) from nginx: (status, body, seconds it took).
    fn curl(&self, path: &str, args: &[&str]) -> (u16, Vec<u8>, f64) {
        php_curl(self.port, &Self::file(&self.dir, &self.name, "curl.out"), path, args)
            .unwrap_or_else(|e| panic!("PHP-FPM {}: {path}: {e:#}", self.name))
    }

    /// The `keep` pool's children that served at least `min_requests` requests (its access
    /// log names each request's child). A child serves kept connections one after another,
    /// each to its close, and nginx closes one only when its client left mid-request (wrk's
    /// when it stops: a few per session): a child that served a hundred served dozens on one
    /// connection, for far longer than the claim rule's millisecond. So this many kept
    /// connections at least must be swapped.
    fn busy_keep_children(&self, min_requests: usize) -> usize {
        let log = std::fs::read_to_string(Self::file(&self.dir, &self.name, "keep-access.log")).unwrap_or_default();
        let mut served = BTreeMap::<&str, usize>::new();
        for child in log.lines().filter_map(|l| l.split_whitespace().next()) {
            *served.entry(child).or_default() += 1;
        }
        served.values().filter(|&&n| n >= min_requests).count()
    }

    /// Stops nginx and then PHP-FPM gracefully (SIGQUIT), asserting that both exit with 0 and
    /// logged no error but slow.php's: PHP-FPM nothing above `NOTICE` but the child it killed,
    /// nginx nothing above `[warn]` (a request body buffered to a file) but what it read from
    /// that child's connection, which it returns (e.g. `readv() failed (104: Connection reset
    /// by peer) while reading upstream: GET /term/slow.php?s=5`).
    fn stop(self) -> Vec<String> {
        self.nginx.stop(libc::SIGQUIT);
        self.fpm.stop(libc::SIGQUIT);
        let log = |name: &str| std::fs::read_to_string(Self::file(&self.dir, &self.name, name)).unwrap_or_default();
        let fpm = log("fpm.log");
        let killed =
            |l: &&str| l.contains("[pool term]") && (l.contains("execution timed out") || l.contains("exited on signal 15 (SIGTERM)"));
        let errors: Vec<&str> = fpm.lines().filter(|l| ["WARNING", "ERROR", "ALERT"].iter().any(|w| l.contains(w)) && !killed(l)).collect();
        assert!(errors.is_empty(), "PHP-FPM {}: PHP-FPM logged errors: {errors:#?}", self.name);
        let nginx = log("nginx-error.log");
        let (mut slow, mut errors) = (Vec::new(), Vec::new());
        for line in nginx.lines().filter(|l| ["[error]", "[crit]", "[alert]", "[emerg]"].iter().any(|w| l.contains(w))) {
            // `DATE TIME [error] PID#TID: *CONNECTION MESSAGE, client: ..., request: "GET URI HTTP/1.1", ...`
            let message = line.split_once(": *").and_then(|(_, m)| m.split_once(' ')).and_then(|(_, m)| m.split_once(", client: "));
            let request = line.split_once("request: \"").and_then(|(_, r)| r.split_once(" HTTP/")).map(|(r, _)| r);
            match (message, request) {
                (Some((message, _)), Some(request)) if line.contains("[error]") && request.contains("/slow.php") => {
                    slow.push(format!("{message}: {request}"))
                }
                _ => errors.push(line),
            }
        }
        assert!(errors.is_empty(), "PHP-FPM {}: nginx logged errors: {errors:#?}", self.name);
        slow
    }
}

/// `curl -s` of `http://127.0.0.1:PORT/PATH` with `args`, the body into `body`: (status, body,
/// seconds it took).
fn php_curl(port: u16, body: &Path, path: &str, args: &[&str]) -> anyhow::Result<(u16, Vec<u8>, f64)> {
    use anyhow::Context as _;
    let out = command("curl", false)
        .args(["-s", "--max-time", "20", "-o"])
        .arg(body)
        .args(["-w", "%{http_code} %{time_total}"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("running curl")?;
    anyhow::ensure!(out.status.success(), "curl: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, seconds) = text.split_once(' ').with_context(|| format!("curl printed {text:?}"))?;
    Ok((status.parse()?, std::fs::read(body).unwrap_or_default(), seconds.parse()?))
}

/// What `big.php?n=N` answers.
fn php_big(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i % 251) * 31 + n) as u8).collect()
}

/// What `stream.php?chunks=C&size=S` answers.
fn php_stream(chunks: usize, size: usize) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..chunks {
        let line = format!("chunk {i} ");
        let pad = char::from(b'a' + (i % 26) as u8);
        out += &format!("{line}{}\n", pad.to_string().repeat(size.saturating_sub(line.len())));
    }
    (out + "end\n").into_bytes()
}

/// One session on a site: twice through each pool, echoes of a GET and a form POST, bodies of 0
/// B to 300 KB, request bodies of 1 KB to 300 KB echoed back, a response streamed with
/// `flush()`, one ended by `fastcgi_finish_request`, each body checked against what the
/// script must answer; then wrk for a second on each pool (and one on 100 KB bodies through
/// kept connections), which must see no error and no non-2xx answer. Returns the transcript,
/// the slowest curl request's time, and how many children of the `keep` pool served
/// [`BUSY_PHP_REQUESTS`] requests or more ([`PhpSite::busy_keep_children`]).
fn php_session(dir: &Path, name: &str, hooked: bool) -> (String, f64, usize) {
    let site = PhpSite::start(dir, name, hooked);
    let mut rng = Rng::new(13);
    let posted: Vec<(usize, Vec<u8>)> = [1000, 65536, 300_000].into_iter().map(|n| (n, rng.bytes(n))).collect();
    let (mut transcript, mut slowest) = (String::new(), 0f64);
    for round in 0..2 {
        for upstream in [Upstream::Fresh, Upstream::Keep] {
            let pool = upstream.name();
            let mut check = |what: &str, path: &str, args: &[&str], want: Option<&[u8]>| {
                let (status, body, seconds) = site.curl(&format!("/{pool}/{path}"), args);
                slowest = slowest.max(seconds);
                let verdict = match want {
                    Some(want) if want == body => "as expected".to_owned(),
                    Some(_) => format!("NOT as expected ({} bytes, fnv {:016x})", body.len(), fnv(&body)),
                    None => format!("{:?}", String::from_utf8_lossy(&body)),
                };
                transcript += &format!("round {round}: {pool} {what} -> {status}, {verdict}\n");
            };
            check("GET echo", "echo.php?a=1&b=two", &["-H", "X-Test: hello"], None);
            check("POST form echo", "echo.php?q=3", &["--data", "x=1&y=hello"], None);
            for n in [0, 1, 100, 4096, 8192, 65536, 100_000, 300_000] {
                check(&format!("GET {n} B"), &format!("big.php?n={n}"), &[], Some(&php_big(n)));
            }
            for (n, body) in &posted {
                let file = dir.join(format!("{name}-post-{n}"));
                std::fs::write(&file, body).unwrap();
                let data = format!("@{}", file.display());
                let want = [format!("{n}\n").as_bytes(), body].concat();
                check(
                    &format!("POST {n} B"),
                    "post.php",
                    &["--data-binary", &data, "-H", "Content-Type: application/octet-stream"],
                    Some(&want),
                );
            }
            check("GET streamed", "stream.php?chunks=40&size=3000", &[], Some(&php_stream(40, 3000)));
            check("GET finished early", "finish.php?n=70000", &[], Some(&[vec![b'f'; 70000], b"\n".to_vec()].concat()));
        }
    }
    for (pool, path) in [("fresh", "echo.php?x=1"), ("keep", "echo.php?x=1"), ("keep", "big.php?n=100000")] {
        let url = format!("http://127.0.0.1:{}/{pool}/{path}", site.port);
        let load = wrk(&url, PHP_CHILDREN, 1).unwrap_or_else(|e| panic!("PHP-FPM {name}: {e:#}"));
        eprintln!("PHP-FPM {name}: wrk on /{pool}/{path}: {load:?}");
        assert!(load.requests > 0 && load.non_2xx == 0 && load.socket_errors.is_none(), "PHP-FPM {name}: wrk on /{pool}/{path}: {load:?}");
    }
    let busy = site.busy_keep_children(BUSY_PHP_REQUESTS);
    // A child killed mid-request (request_terminate_timeout) on a kept connection, swapped
    // after 300 KB: its request's last record unread, nginx must read ECONNRESET as from the
    // kernel, then EOF (it had read the child's first line). (curl fails: the answer ends
    // short.)
    for _ in 0..3 {
        let (status, body, _) = site.curl("/term/big.php?n=100000", &[]);
        transcript +=
            &format!("term GET 100000 B -> {status}, {}\n", if body == php_big(100_000) { "as expected" } else { "NOT as expected" });
    }
    let out = PhpSite::file(dir, name, "slow.out");
    let answer = php_curl(site.port, &out, "/term/slow.php?s=5", &[]).map(|(status, ..)| status).map_err(|e| e.to_string());
    let body = std::fs::read(&out).unwrap_or_default();
    transcript += &format!("term GET slow.php, killed -> {answer:?}, {:?}\n", String::from_utf8_lossy(&body));
    for line in site.stop() {
        transcript += &format!("nginx: {line}\n");
    }
    (transcript, slowest, busy)
}

/// PHP-FPM behind nginx over FastCGI Unix sockets, as a web host runs it, plain and then with
/// both under the hook on watched sockets: PHP-FPM's children accept on the listener their
/// master made, read requests with `read` and answer with `write`; nginx registers each
/// connection with epoll before it connects. The responses (request echoes, bodies up to 300
/// KB, request bodies read by PHP, a streamed response, one ended early) must be the plain
/// ones, wrk must see no error, neither may log an error, and no request may stall; a child
/// killed mid-request (`request_terminate_timeout`) must reset nginx's connection as the kernel
/// does (the hook once gave EOF: the child died without the close that marks a reset). With a new
/// connection per request (a) connections may stay plain (they are short); with
/// `fastcgi_keep_conn` (b) the kept connections that served many requests (at least one per
/// child that served [`BUSY_PHP_REQUESTS`]) must be traced `swapped` and carry PHP's answers on
/// the rings.
#[test]
fn php_fpm_behind_nginx_gives_the_same_responses_with_tssx() {
    require_root();
    let dir = TempDir::new("app-php-fpm");
    let [fresh, keep, term] = PHP_POOLS.map(|pool| PhpSite::socket(&dir, "tssx", pool));
    let agent = HookedAgent::start(&[&fresh, &keep, &term]);
    let (plain, plain_slowest, _) = php_session(&dir, "plain", false);
    for expected in [
        "round 1: keep GET 300000 B -> 200, as expected",
        "round 1: fresh POST 300000 B -> 200, as expected",
        "x-test hello",
        "nginx: readv() failed (104: Connection reset by peer) while reading upstream: GET /term/slow.php?s=5",
    ] {
        assert!(plain.contains(expected), "{expected:?} missing from the plain session: {plain}");
    }
    assert!(!plain.contains("NOT"), "unexpected plain session: {plain}");
    let (tssx, slowest, busy) = php_session(&dir, "tssx", true);
    assert_same("PHP-FPM session", &plain, &tssx);
    eprintln!("PHP-FPM: slowest request {plain_slowest:.3} s plain, {slowest:.3} s with tssx");
    assert!(slowest < 2.0, "a request took {slowest:.3} s with tssx ({plain_slowest:.3} s plain)");
    // (b) A swapped kept connection per busy child at least, and no more than nginx opened.
    assert!(busy > 0, "no child of the keep pool served {BUSY_PHP_REQUESTS} requests");
    let swapped = agent.wait_for("swapped", &keep, busy, TRACE_TIMEOUT);
    let connects = agent.events_on("connect", &keep).len();
    eprintln!(
        "PHP-FPM (b): {connects} kept connections ({busy} children served {BUSY_PHP_REQUESTS}+ requests), {} swapped; (a): {} connections, {} swapped",
        swapped.len(),
        agent.events_on("connect", &fresh).len(),
        agent.events_on("swapped", &fresh).len()
    );
    assert!(
        (busy..=connects).contains(&swapped.len()),
        "{connects} kept connections, {busy} busy children, swapped: {swapped:?}; not swapped: {:?}",
        not_swapped_reasons(&agent, &keep)
    );
    // nginx closed them when it stopped: their bytes crossed shared memory.
    poll_until(TRACE_TIMEOUT, || agent.events_on("closed", &keep).len() >= swapped.len());
    let bytes: u64 = agent.events_on("closed", &keep).iter().map(|c| c["bytes_server_to_client"].as_u64().unwrap_or(0)).sum();
    assert!(bytes >= 10_000_000, "only {bytes} bytes of PHP-FPM's answers on kept connections crossed shared memory");
    // The `term` pool's one connection, whose child was killed, was on the rings then.
    let killed = agent.wait_for("swapped", &term, 1, TRACE_TIMEOUT);
    assert_eq!(killed.len(), 1, "the term pool's connection: swapped {killed:?}; not swapped: {:?}", not_swapped_reasons(&agent, &term));
    assert!(agent.stop().success());
}
