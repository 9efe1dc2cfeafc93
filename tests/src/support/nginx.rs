//! [`NginxProxy`]: nginx as a reverse proxy in front of a second nginx on Unix sockets, in a
//! private prefix (configuration, logs, pid files and temp files in one directory), and
//! [`wrk`], the load generator that drives it over loopback TCP.
//!
//! The front nginx listens on a free loopback port and proxies
//! - `/fresh/...` to the backend's `fresh` socket with `proxy_pass http://unix:PATH:/`: a new
//!   upstream connection per request (HTTP/1.0, `Connection: close`);
//! - `/keep/...` to the backend's `keep` socket through an `upstream` block with `keepalive 16`,
//!   `proxy_http_version 1.1` and an empty `Connection` header: upstream connections are kept
//!   and reused.
//!
//! The backend serves the files of a directory (with `sendfile on`, as Debian's configuration
//! has it, or off: [`NginxConfig`]) and logs, per socket, each request's connection serial number, so that the number
//! of upstream connections is known exactly ([`NginxProxy::upstream_connections`]).

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _};

use super::{process::Process, wait::poll_until};

/// Debian's nginx.
pub const NGINX: &str = "/usr/sbin/nginx";
/// How long nginx may take to get ready, and to exit once told.
const NGINX_TIMEOUT: Duration = Duration::from_secs(30);

/// The two upstream sockets of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// A new upstream connection per request.
    Fresh,
    /// Upstream keepalive: connections kept and reused.
    Keep,
}

impl Upstream {
    /// The name used in locations, sockets and logs.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Fresh => "fresh",
            Upstream::Keep => "keep",
        }
    }
}

/// How both nginx instances run.
#[derive(Clone, Copy, Debug)]
pub struct NginxConfig {
    /// `master_process on` (a master and one worker process, as `nobody`) or `off` (one
    /// process, root).
    pub master_process: bool,
    /// The backend sends files with `sendfile(2)` (Debian's configuration) or with
    /// `read`+`write`/`writev`.
    pub sendfile: bool,
    /// Every worker of both instances pinned to this CPU (`worker_cpu_affinity`), or none: a
    /// benchmark pins the workers to one core and the load generator to another (see
    /// [`wrk_on`]), so that a request's cost shows as the one busy core's time instead of
    /// three processes' contest for two cores.
    pub workers_cpu: Option<usize>,
}

/// A front nginx proxying to a backend nginx over Unix sockets (see the module docs). Dropped
/// without [`NginxProxy::stop`], both are killed.
pub struct NginxProxy {
    backend: Process,
    front: Process,
    /// The front's loopback port.
    pub port: u16,
    dir: PathBuf,
    name: String,
}

impl NginxProxy {
    /// The backend's socket for `upstream`, for a proxy started in `dir` with `name`: the path
    /// the agent must watch.
    pub fn socket(dir: &Path, name: &str, upstream: Upstream) -> String {
        let path = dir.join(format!("{name}-{}.sock", upstream.name()));
        path.to_str().expect("UTF-8 directory").to_owned()
    }

    /// Writes both configurations into `dir` (files named after `name`), starts the backend
    /// serving `www` and the front on a free loopback port, both with `LD_PRELOAD=preload` if
    /// given and as `config` says, and waits until a request through each upstream is answered.
    pub fn start(dir: &Path, name: &str, www: &Path, preload: Option<&Path>, config: NginxConfig) -> anyhow::Result<Self> {
        let file = |suffix: &str| dir.join(format!("{name}-{suffix}"));
        let (fresh, keep) = (Self::socket(dir, name, Upstream::Fresh), Self::socket(dir, name, Upstream::Keep));
        for sock in [&fresh, &keep] {
            let _ = std::fs::remove_file(sock);
        }
        let temp = file("temp");
        std::fs::create_dir_all(&temp)?;
        // `worker_cpu_affinity` takes a mask, CPU 0 rightmost.
        let affinity = config.workers_cpu.map(|cpu| format!("worker_cpu_affinity 1{};\n", "0".repeat(cpu))).unwrap_or_default();
        let main = |role: &str| {
            format!(
                "daemon off;\nmaster_process {};\nworker_processes 1;\n{affinity}user nobody nogroup;\npid {};\nerror_log {} warn;\n\
                 events {{ worker_connections 1024; }}\n",
                if config.master_process { "on" } else { "off" },
                file(&format!("{role}.pid")).display(),
                file(&format!("{role}-error.log")).display()
            )
        };
        let temp_paths = |role: &str| {
            ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
                .iter()
                .map(|t| format!("  {t}_temp_path {};\n", temp.join(format!("{role}-{t}")).display()))
                .collect::<String>()
        };
        let mut backend = main("backend");
        backend += "http {\n  default_type application/octet-stream;\n  keepalive_requests 1000000;\n  client_max_body_size 16m;\n";
        backend += if config.sendfile { "  sendfile on;\n" } else { "  sendfile off;\n" };
        backend += "  log_format conn '$connection $connection_requests $status $request_uri';\n";
        backend += &temp_paths("backend");
        for (upstream, sock) in [(Upstream::Fresh, &fresh), (Upstream::Keep, &keep)] {
            backend += &format!(
                "  server {{\n    listen unix:{sock};\n    root {};\n    access_log {} conn;\n  }}\n",
                www.display(),
                file(&format!("{}-access.log", upstream.name())).display()
            );
        }
        backend += "}\n";
        let port = free_port()?;
        let mut front = main("front");
        front += "http {\n  access_log off;\n  client_max_body_size 16m;\n";
        front += &temp_paths("front");
        front += &format!("  upstream keep {{\n    server unix:{keep};\n    keepalive 16;\n    keepalive_requests 1000000;\n  }}\n");
        front += &format!(
            "  server {{\n    listen 127.0.0.1:{port};\n    location /fresh/ {{ proxy_pass http://unix:{fresh}:/; }}\n    \
             location /keep/ {{\n      proxy_pass http://keep/;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
        );
        let start = |role: &str, conf: &str| -> anyhow::Result<Process> {
            let path = file(&format!("{role}.conf"));
            std::fs::write(&path, conf)?;
            let mut cmd = Command::new(NGINX);
            cmd.arg("-p").arg(dir).arg("-e").arg(file(&format!("{role}-error.log"))).arg("-c").arg(&path);
            match preload {
                Some(so) => cmd.env("LD_PRELOAD", so),
                None => cmd.env_remove("LD_PRELOAD"),
            };
            Process::try_spawn_group(cmd).with_context(|| format!("starting nginx ({role}; cargo xtask setup installs nginx-light)"))
        };
        let mut backend = start("backend", &backend)?;
        // The front only once the backend listens: a request proxied before that fails, and
        // nginx logs it at `crit`, which the tests read as a failure.
        let listening = poll_until(NGINX_TIMEOUT, || {
            backend.try_wait().is_some() || [&fresh, &keep].iter().all(|sock| std::os::unix::net::UnixStream::connect(sock).is_ok())
        });
        ensure!(listening, "the backend nginx does not listen on {fresh} and {keep} after {NGINX_TIMEOUT:?}");
        let front = start("front", &front)?;
        let mut proxy = Self { backend, front, port, dir: dir.to_owned(), name: name.to_owned() };
        let mut died = None;
        let ready = poll_until(NGINX_TIMEOUT, || {
            died = proxy.backend.try_wait().or(proxy.front.try_wait());
            // Any answer from the backend (a directory listing is forbidden: 403) means both run;
            // 502 is the front's answer while the backend does not listen yet.
            died.is_some()
                || [Upstream::Fresh, Upstream::Keep].iter().all(|&u| proxy.get(u, "").is_ok_and(|(status, _)| (200..500).contains(&status)))
        });
        if let Some(status) = died {
            bail!("nginx exited early: {status}; errors: {}", proxy.errors());
        }
        ensure!(ready, "nginx not ready after {NGINX_TIMEOUT:?}; errors: {}", proxy.errors());
        Ok(proxy)
    }

    /// The front's URL of `file` through `upstream`.
    pub fn url(&self, upstream: Upstream, file: &str) -> String {
        format!("http://127.0.0.1:{}/{}/{file}", self.port, upstream.name())
    }

    /// GETs `file` through `upstream` with curl: (status, body).
    pub fn get(&self, upstream: Upstream, file: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        self.curl(&self.url(upstream, file), &[])
    }

    /// POSTs `body` to `file` through `upstream` (the request body travels to the backend,
    /// which answers 405 for a static file): (status, body).
    pub fn post(&self, upstream: Upstream, file: &str, body: &Path) -> anyhow::Result<(u16, Vec<u8>)> {
        let data = format!("@{}", body.display());
        self.curl(&self.url(upstream, file), &["--data-binary", &data])
    }

    fn curl(&self, url: &str, args: &[&str]) -> anyhow::Result<(u16, Vec<u8>)> {
        let body = self.dir.join(format!("{}-curl.out", self.name));
        let out = Command::new("curl")
            .args(["-s", "--max-time", "20", "-o"])
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(url)
            .env_remove("LD_PRELOAD")
            .stderr(Stdio::null())
            .output()
            .context("running curl")?;
        ensure!(out.status.success(), "curl {url}: {}", out.status);
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().context("curl's status code")?;
        Ok((status, std::fs::read(&body).unwrap_or_default()))
    }

    /// The upstream connections the backend accepted on `upstream`'s socket so far and served
    /// at least one request on (distinct connection numbers in its access log).
    pub fn upstream_connections(&self, upstream: Upstream) -> usize {
        self.busy_upstream_connections(upstream, 1)
    }

    /// The upstream connections on `upstream`'s socket that served at least `min_requests`
    /// requests (the highest `$connection_requests` of each connection in the access log).
    pub fn busy_upstream_connections(&self, upstream: Upstream, min_requests: u64) -> usize {
        self.upstream_connections_since(upstream, 0, min_requests)
    }

    /// How long `upstream`'s access log is now: a mark for [`Self::upstream_connections_since`].
    pub fn access_log_mark(&self, upstream: Upstream) -> usize {
        std::fs::metadata(self.access_log(upstream)).map_or(0, |m| m.len() as usize)
    }

    /// The upstream connections on `upstream`'s socket that served at least `min_requests`
    /// requests in all (the highest `$connection_requests` of each connection), one of them at
    /// least after the access log's `mark` (a connection opened before the mark and used after
    /// it counts too).
    pub fn upstream_connections_since(&self, upstream: Upstream, mark: usize, min_requests: u64) -> usize {
        let log = std::fs::read_to_string(self.access_log(upstream)).unwrap_or_default();
        let mut served = BTreeMap::<&str, u64>::new();
        for line in log.get(mark..).unwrap_or_default().lines() {
            let mut fields = line.split_whitespace();
            let (Some(conn), Some(requests)) = (fields.next(), fields.next().and_then(|r| r.parse::<u64>().ok())) else { continue };
            let most = served.entry(conn).or_default();
            *most = (*most).max(requests);
        }
        served.values().filter(|&&n| n >= min_requests).count()
    }

    fn access_log(&self, upstream: Upstream) -> std::path::PathBuf {
        self.dir.join(format!("{}-{}-access.log", self.name, upstream.name()))
    }

    /// The CPU time the two nginx's workers (the masters' children) used so far, user and
    /// system.
    pub fn workers_cpu(&self) -> crate::CpuTimes {
        let workers = |master: &Process| -> Vec<u32> {
            let pid = master.pid();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            children.split_whitespace().filter_map(|c| c.parse().ok()).collect()
        };
        [&self.backend, &self.front].into_iter().flat_map(workers).map(crate::cpu_times).sum()
    }

    /// The `[alert]`, `[crit]` and `[emerg]` lines of both error logs (a crashed worker shows
    /// there), joined.
    pub fn errors(&self) -> String {
        let mut out = String::new();
        for role in ["backend", "front"] {
            let log = std::fs::read_to_string(self.dir.join(format!("{}-{role}-error.log", self.name))).unwrap_or_default();
            for line in log.lines().filter(|l| ["[alert]", "[crit]", "[emerg]"].iter().any(|w| l.contains(w))) {
                out += &format!("{role}: {line}\n");
            }
        }
        out
    }

    /// Stops both gracefully (SIGQUIT) and checks that they exit with 0 and logged no alert.
    pub fn stop(mut self) -> anyhow::Result<()> {
        for (role, process) in [("front", &mut self.front), ("backend", &mut self.backend)] {
            let status = process.stop(libc::SIGQUIT, NGINX_TIMEOUT);
            let status = status.with_context(|| format!("nginx ({role}) did not exit within {NGINX_TIMEOUT:?} of SIGQUIT"))?;
            ensure!(status.success(), "nginx ({role}) exited with {status}; stderr: {}", process.stderr_text());
        }
        let errors = self.errors();
        ensure!(errors.is_empty(), "nginx logged errors:\n{errors}");
        Ok(())
    }
}

/// A free loopback TCP port (bound once and released: another program could take it in
/// between, which makes nginx fail to start, loudly).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What one `wrk` run reported.
#[derive(Clone, Debug)]
pub struct Wrk {
    /// Requests completed.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Responses with a status other than 2xx/3xx.
    pub non_2xx: u64,
    /// wrk's `Socket errors:` line, if it printed one.
    pub socket_errors: Option<String>,
}

/// Runs `wrk -t1 -cCONNECTIONS -dSECONDSs URL` (no hook) and parses its summary.
pub fn wrk(url: &str, connections: u32, seconds: u32) -> anyhow::Result<Wrk> {
    wrk_on(url, connections, seconds, None)
}

/// [`wrk`], on CPU `cpu` only if given (`taskset -c`).
pub fn wrk_on(url: &str, connections: u32, seconds: u32, cpu: Option<usize>) -> anyhow::Result<Wrk> {
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &cpu.to_string(), "wrk"]);
            taskset
        }
        None => Command::new("wrk"),
    };
    let out = cmd
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), url])
        .env_remove("LD_PRELOAD")
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "wrk failed: {}: {text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    let number = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(str::trim);
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse::<u64>()))
        .with_context(|| format!("no request count in wrk's output: {text}"))??;
    let rps = number("Requests/sec:").with_context(|| format!("no Requests/sec in wrk's output: {text}"))?.parse()?;
    let non_2xx = number("Non-2xx or 3xx responses:").map(str::parse).transpose()?.unwrap_or(0);
    let socket_errors = number("Socket errors:").map(str::to_owned);
    Ok(Wrk { requests, rps, non_2xx, socket_errors })
}
