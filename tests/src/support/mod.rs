//! The test-support layer: everything an end-to-end test, `cargo xtask soak` and
//! `cargo xtask report` need besides the code under test, written once.
//!
//! | module | what it gives |
//! |---|---|
//! | [`process`] | [`Process`]: a child whose stdout/stderr lines are captured, `expect_line`, `wait`/`finish` with timeouts; [`run_ok`] |
//! | [`agent`] | [`Agent`] (a real `tssx-agent` and its JSON trace), [`HookedAgent`] (one in the default state directory, under the machine lock) |
//! | [`bpf`] | [`bpf::programs_of`]: the eBPF programs a process holds (type, name), asked of the kernel |
//! | [`mod@churn`] | [`fn@churn`]: sequential short connections, timed; [`assert_connections_do_not_wait`] ("plain at once") |
//! | [`server`] | [`Server`]: the `tssx-test-server` echo server, started and finished |
//! | [`wait`] | [`wait_until`] / [`poll_until`]: poll a condition with a deadline |
//! | [`rng`] | [`Rng`]: one seeded xorshift64* generator |
//! | [`lock`] | [`MachineLock`]: the machine-wide lock on the default state directory |
//! | [`nginx`] | [`NginxProxy`]: nginx as a reverse proxy to a second nginx on Unix sockets (upstream per request and keepalive), [`wrk`] |
//! | [`nscd`] | [`Nscd`]: Debian's nscd in the foreground in a [`MountNamespace`], its configuration (`shared yes`/`no`) and cache statistics |
//! | [`namespace`] | [`MountNamespace`]: a private mount namespace with fresh tmpfs directories (a service's `/run/...`, the agent's own `/run/tssx`), entered with `nsenter` |
//! | [`resources`] | [`Resources`]: descriptors, memfds and RSS of a process, from `/proc` |
//! | [`scale`] | [`scale::run`]: many swapped connections held at once and a storm on top (`cargo xtask scale`, the `scale` test) |
//! | [`tempdir`] | [`TempDir`]: a fresh directory, removed when dropped |
//! | [`control`] | [`ask`], [`ask_and_keep`], [`claim`], [`send_claim`], [`await_answer`]: requests on an agent's control socket |
//! | [`mod@env`] | where the built binaries are ([`agent_bin`], [`hook`]), [`require_root`] |
//! | [`text`] | reading the test programs' `key=value` output lines ([`field`], [`lines_of`]) |
//!
//! Everything is re-exported at the crate root: `use tssx_tests::{Process, TempDir, ...}`.
//! Functions named after an expectation (`expect_line`, `finish`, `wait_until`, ...) panic with
//! a message that says what was expected. The ones returning `Option` or `Result`
//! ([`Process::try_spawn`], [`Process::wait`], [`Agent::spawn`], [`TempDir::create`],
//! [`Resources::read`], [`MachineLock::acquire_reporting`], [`poll_until`]) are for callers
//! that report errors themselves (xtask).
//!
//! A new end-to-end test usually looks like this (in `tests/tests/*.rs`, where Cargo provides
//! `CARGO_BIN_EXE_<program>`):
//!
//! ```no_run
//! use std::{process::Command, time::Duration};
//! use tssx_tests::{hook, require_root, HookedAgent, Process, TempDir};
//!
//! require_root();
//! let dir = TempDir::new("my-test"); // removed at the end (kept if the test fails)
//! let path = dir.socket("app.sock");
//! let agent = HookedAgent::start(&[&path]); // machine lock + agent in /run/tssx
//! let stream = tssx_tests::target_dir().join("tssx-test-stream"); // env!("CARGO_BIN_EXE_tssx-test-stream")
//! let mut server = Command::new(&stream);
//! server.args(["server", &path, "1048576", "1"]).env("LD_PRELOAD", hook());
//! let server = Process::spawn(server);
//! server.expect_line("ready", Duration::from_secs(10));
//! let mut client = Command::new(&stream);
//! client.args(["client", &path, "1048576", "1"]).env("LD_PRELOAD", hook());
//! let lines = Process::spawn(client).finish(Duration::from_secs(30));
//! assert!(lines.contains(&"ok sent=1048576 received=1048576".to_owned()), "{lines:?}");
//! server.finish(Duration::from_secs(10));
//! agent.await_events("swapped", &path, 1, Duration::from_secs(5));
//! assert!(agent.stop().success());
//! ```

pub mod agent;
pub mod bpf;
pub mod churn;
pub mod control;
pub mod env;
pub mod lock;
pub mod namespace;
pub mod nginx;
pub mod nscd;
pub mod process;
pub mod resources;
pub mod rng;
pub mod scale;
pub mod server;
pub mod tempdir;
pub mod text;
pub mod wait;

pub use agent::{Agent, HookedAgent, DEFAULT_STATE_DIR};
pub use churn::{assert_connections_do_not_wait, churn, Churn};
pub use control::{ask, ask_and_keep, await_answer, claim, send_claim, Answer};
pub use env::{agent_bin, hook, require_root, target_dir};
pub use lock::{DefaultAgentLock, MachineLock};
pub use namespace::MountNamespace;
pub use nginx::{wrk, wrk_on, NginxConfig, NginxProxy, Upstream, Wrk};
pub use nscd::{Nscd, NSCD_SOCKET};
pub use process::{run_ok, Process};
pub use resources::{cpu_time, cpu_times, CpuTimes, Resources};
pub use rng::Rng;
pub use server::Server;
pub use tempdir::TempDir;
pub use text::{field, lines_of, socket_address};
pub use wait::{monotonic_ns, poll_until, wait_until};
