//! nginx as a reverse proxy to a backend nginx on watched Unix sockets.

use super::*;

/// The backend's files: name and size (random bytes from a fixed seed).
const NGINX_FILES: &[(&str, usize)] = &[("small.txt", 100), ("4k.bin", 4096), ("64k.bin", 65536), ("1m.bin", 1 << 20), ("3m.bin", 3 << 20)];

/// Writes the backend's document root.
fn nginx_www(dir: &Path) -> PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut rng = Rng::new(12);
    for &(name, size) in NGINX_FILES {
        std::fs::write(www.join(name), rng.bytes(size)).unwrap();
    }
    www
}

/// One proxy session: every file (and a missing one) twice through each upstream, bodies
/// checked against the files; a 3 MiB request body through each; then wrk for a second on
/// each upstream, which must see no error and no non-2xx answer. Returns the transcript and
/// how many keepalive upstream connections the backend accepted.
fn nginx_session(dir: &Path, www: &Path, name: &str, preload: Option<&Path>, config: NginxConfig) -> (String, usize, usize) {
    let what = format!("nginx {name}");
    let proxy = NginxProxy::start(dir, name, www, preload, config).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let mut transcript = String::new();
    for round in 0..2 {
        for upstream in [Upstream::Fresh, Upstream::Keep] {
            for file in NGINX_FILES.iter().map(|f| f.0).chain(["missing.bin"]) {
                let (status, body) = proxy.get(upstream, file).unwrap_or_else(|e| panic!("{what}: {e:#}"));
                let verdict = match std::fs::read(www.join(file)) {
                    Ok(want) if want == body => "the file".to_owned(),
                    Ok(_) => format!("NOT the file ({} bytes, fnv {:016x})", body.len(), fnv(&body)),
                    Err(_) => format!("{} bytes, fnv {:016x}", body.len(), fnv(&body)),
                };
                transcript += &format!("round {round}: GET /{}/{file} -> {status}, body: {verdict}\n", upstream.name());
            }
            let (status, body) = proxy.post(upstream, "small.txt", &www.join("3m.bin")).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            transcript += &format!("round {round}: POST 3 MiB /{}/small.txt -> {status}, body fnv {:016x}\n", upstream.name(), fnv(&body));
        }
    }
    for upstream in [Upstream::Fresh, Upstream::Keep] {
        let load = wrk(&proxy.url(upstream, "4k.bin"), 8, 1).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        eprintln!("{what}: wrk on /{}/4k.bin: {load:?}", upstream.name());
        assert!(
            load.requests > 0 && load.non_2xx == 0 && load.socket_errors.is_none(),
            "{what}: wrk through the {} upstream: {load:?}",
            upstream.name()
        );
    }
    let keep = proxy.upstream_connections(Upstream::Keep);
    let busy = proxy.busy_upstream_connections(Upstream::Keep, BUSY_UPSTREAM_REQUESTS);
    proxy.stop().unwrap_or_else(|e| panic!("{what}: {e:#}"));
    (transcript, keep, busy)
}

/// A keepalive upstream connection that served this many requests lived far longer than the
/// claim rule's millisecond while in use: it must have been swapped. (One that served a few
/// requests within its first millisecond and then sat idle in nginx's pool never claims: an
/// idle connection makes no call, and it is not worth a segment.)
const BUSY_UPSTREAM_REQUESTS: u64 = 100;

/// Runs each of `configs` plain and then with both nginx under the hook on watched sockets:
/// the transcripts must be identical, and every keepalive upstream connection of the hooked
/// run (each carries thousands of wrk requests) must be traced `swapped`.
fn nginx_plain_vs_tssx(test: &str, configs: &[NginxConfig]) {
    require_root();
    let dir = TempDir::new(test);
    let www = nginx_www(&dir);
    let name = |c: &NginxConfig| format!("master-{}-sendfile-{}", c.master_process, c.sendfile);
    let watched: Vec<String> = configs
        .iter()
        .flat_map(|c| [Upstream::Fresh, Upstream::Keep].map(|u| NginxProxy::socket(&dir, &format!("tssx-{}", name(c)), u)))
        .collect();
    let agent = HookedAgent::start(&watched.iter().map(String::as_str).collect::<Vec<_>>());
    for config in configs {
        let (plain, plain_keep, _) = nginx_session(&dir, &www, &format!("plain-{}", name(config)), None, *config);
        assert!(
            !plain.contains("NOT the file") && plain.contains("GET /keep/3m.bin -> 200, body: the file"),
            "unexpected plain session: {plain}"
        );
        assert!(plain_keep > 0, "no keepalive upstream connection in the plain run");
        let tssx_name = format!("tssx-{}", name(config));
        let (tssx, keep, busy) = nginx_session(&dir, &www, &tssx_name, Some(&hook()), *config);
        assert_same(&format!("nginx {tssx_name}"), &plain, &tssx);
        let keep_sock = NginxProxy::socket(&dir, &tssx_name, Upstream::Keep);
        agent.wait_for("swapped", &keep_sock, busy, TRACE_TIMEOUT);
        // (The idle ones never swap: a moment for any other line still on its way.)
        std::thread::sleep(Duration::from_millis(300));
        let swapped = agent.events_on("swapped", &keep_sock);
        eprintln!(
            "nginx {tssx_name}: {keep} keepalive upstream connections ({busy} served {BUSY_UPSTREAM_REQUESTS}+ requests), {} swapped",
            swapped.len()
        );
        assert!(busy > 0, "{tssx_name}: no keepalive upstream connection served {BUSY_UPSTREAM_REQUESTS} requests");
        assert!(
            (busy..=keep).contains(&swapped.len()),
            "{tssx_name}: {keep} keepalive upstream connections, {busy} of them busy, swapped: {swapped:?}; not swapped: {:?}; \
             paired: {}, claims refused: {}; agent stats: {}",
            not_swapped_reasons(&agent, &keep_sock),
            agent.events_on("paired", &keep_sock).len(),
            agent.events("claim refused").len(),
            agent.try_stats().map(|s| s.to_string()).unwrap_or_else(|e| format!("{e:#}"))
        );
    }
    assert!(agent.stop().success());
}

/// nginx as a reverse proxy to a second nginx on watched Unix sockets, both under the hook,
/// with `master_process off` and `on`: (a) a new upstream connection per request, (b) upstream
/// keepalive. nginx registers each upstream socket with epoll (edge-triggered) before it
/// connects, so a keepalive connection migrates under an existing registration: responses must
/// be the plain ones, wrk must see no error, and in (b) every upstream connection must be traced
/// `swapped`. The backend writes with `write`/`writev` here (`sendfile off`).
#[test]
fn nginx_reverse_proxy_gives_the_same_responses_with_tssx() {
    let configs = [false, true].map(|master_process| NginxConfig { master_process, sendfile: false, workers_cpu: None });
    nginx_plain_vs_tssx("app-nginx", &configs);
}

/// As [`nginx_reverse_proxy_gives_the_same_responses_with_tssx`], with the backend sending its
/// files with `sendfile(2)`, as Debian's nginx configuration does: a swapped connection must
/// get sendfile's bytes on its ring (or be handed back first).
#[test]
fn nginx_backend_with_sendfile_gives_the_same_responses_with_tssx() {
    nginx_plain_vs_tssx("app-nginx-sendfile", &[NginxConfig { master_process: true, sendfile: true, workers_cpu: None }]);
}
