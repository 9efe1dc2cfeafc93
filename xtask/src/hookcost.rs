//! What the hook adds to one short connection, in instructions (`cargo xtask report --only
//! hookcost`, and a section of the full report).
//!
//! A connection opened for one request and its answer never claims, so all the hook does for it
//! is keep its record: the path match at `connect`/`accept`, the byte counts on every data call,
//! the close. That is a few percent of a request that costs some 60 us of CPU (nginx with a new
//! upstream connection per request), below what timed runs on a shared 2-core machine can
//! resolve: their pairs' ratios spread by 10% and more. Instructions do not spread: callgrind
//! counts the same total for the same binary and inputs whatever else the machine is doing.
//!
//! `tssx-bench-setup` (connect, accept, one 64 B round trip, close) runs under
//! `valgrind --tool=callgrind`, client and server, three ways: no hook, the hook on a path the
//! agent does not watch (pass-through), and the hook on a watched path (every connection
//! tracked). Each way runs twice, with [`FEW`] and [`MANY`] connections, and the difference
//! divided by `MANY - FEW` is the cost of one connection, start-up and exit left out. Only user
//! space is counted (callgrind does not see the kernel, nor the eBPF program).
//!
//! On the watched path, connections that end plain cool the path after the agent's
//! `--cool-after` (64 by default, see the hook's `heat`): from then on only the connections
//! made in a probe window are tracked. So the watched path is measured twice: warm, with
//! [`WARM_FEW`] and [`WARM_MANY`] connections (fewer than 64: every one tracked), and cool,
//! with [`FEW`] and [`MANY`] (all but the first 64 of each run after the cooling).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{ensure, Context as _};
use tssx_tests::Process;

/// The socket paths, fixed and of one length: the hook's work at `connect` grows with the
/// path's length (it copies and matches it), and so would a count on a temporary directory's
/// name. The agent the caller runs must watch [`WATCHED`] (and not [`UNWATCHED`]).
pub const WATCHED: &str = "/tmp/tssx-hookcost/watched.sock";
const UNWATCHED: &str = "/tmp/tssx-hookcost/ignored.sock";

/// Connections of the short and the long run of each way (see the module documentation).
const FEW: u32 = 200;
const MANY: u32 = 1200;
/// Connections of the two runs on the watched path before it cools (below `--cool-after`).
const WARM_FEW: u32 = 8;
const WARM_MANY: u32 = 60;

/// Instructions per connection of the client and of the server, one way.
#[derive(Clone, Copy, Debug)]
pub struct PerConnection {
    pub client: f64,
    pub server: f64,
}

/// Instructions per connection: no hook, the hook on an unwatched path, the hook on a watched
/// path.
pub struct HookCost {
    pub plain: PerConnection,
    pub unwatched: PerConnection,
    pub tracked: PerConnection,
    /// The watched path once cooled (see the module documentation).
    pub cooled: PerConnection,
}

/// Measures the three ways (a running agent must watch [`WATCHED`]); `work` holds callgrind's
/// files.
pub fn measure(bin: &Path, hook: &Path, work: &Path) -> anyhow::Result<HookCost> {
    std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let sockets = Path::new(WATCHED).parent().context("WATCHED has a directory")?;
    std::fs::create_dir_all(sockets).with_context(|| format!("creating {}", sockets.display()))?;
    let way = |name: &str, path: &str, preload: Option<&Path>, (few_n, many_n): (u32, u32)| -> anyhow::Result<PerConnection> {
        let few = counted_pair(bin, preload, path, few_n, &work.join(format!("{name}-few")))?;
        let many = counted_pair(bin, preload, path, many_n, &work.join(format!("{name}-many")))?;
        let per = |a: u64, b: u64| (b as f64 - a as f64) / f64::from(many_n - few_n);
        Ok(PerConnection { client: per(few.0, many.0), server: per(few.1, many.1) })
    };
    let cost = (|| {
        Ok(HookCost {
            plain: way("plain", UNWATCHED, None, (FEW, MANY))?,
            unwatched: way("unwatched", UNWATCHED, Some(hook), (FEW, MANY))?,
            tracked: way("tracked", WATCHED, Some(hook), (WARM_FEW, WARM_MANY))?,
            cooled: way("cooled", WATCHED, Some(hook), (FEW, MANY))?,
        })
    })();
    let _ = std::fs::remove_dir_all(sockets);
    cost
}

/// One `tssx-bench-setup` pair of `count` connections on `path`, both under callgrind: the
/// instructions of the client and of the server (`out`: the prefix of callgrind's files).
fn counted_pair(bin: &Path, preload: Option<&Path>, path: &str, count: u32, out: &Path) -> anyhow::Result<(u64, u64)> {
    let _ = std::fs::remove_file(path);
    let file = |role: &str, ext: &str| PathBuf::from(format!("{}-{role}.{ext}", out.display()));
    // (valgrind hands LD_PRELOAD to the program it runs.)
    let callgrind = |role: &str| {
        let mut cmd = crate::report::preloaded("valgrind", preload);
        cmd.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", file(role, "out").display()))
            .arg(format!("--log-file={}", file(role, "log").display()))
            .arg(bin.join("tssx-bench-setup"))
            .args([role, path, &count.to_string(), "1"]);
        cmd
    };
    let mut server = Process::try_spawn(callgrind("serve")).context("starting valgrind (is it installed? `cargo xtask setup`)")?;
    let ready = server.next_line(Duration::from_secs(60));
    ensure!(ready.as_deref() == Some("ready"), "tssx-bench-setup serve under callgrind said {ready:?}; stderr: {}", server.stderr_text());
    let client = callgrind("drive").stdout(Stdio::null()).stderr(Stdio::inherit()).status()?;
    let server_status = server.wait(Duration::from_secs(300)).context("the callgrind server did not exit within 300 s")?;
    ensure!(client.success() && server_status.success(), "tssx-bench-setup under callgrind: client {client}, server {server_status}");
    Ok((instructions(&file("drive", "out"))?, instructions(&file("serve", "out"))?))
}

/// The total instruction count of a callgrind output file (its `summary:` or `totals:` line).
fn instructions(file: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    total_of(&text).with_context(|| format!("{} has no summary line", file.display()))
}

fn total_of(callgrind_out: &str) -> Option<u64> {
    callgrind_out
        .lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
}

impl HookCost {
    /// The report's section: a Markdown table and what it means.
    pub fn section(&self) -> String {
        let mut rows = String::from(
            "| instructions per connection | no hook | hook, unwatched path | hook, watched path (tracked) | tracked - no hook | watched path, cooled | cooled - no hook |\n|---|---|---|---|---|---|---|\n",
        );
        for (name, pick) in [("client (connect, write, read, close)", 0), ("server (accept, read, write, close)", 1)] {
            let get = |p: PerConnection| if pick == 0 { p.client } else { p.server };
            rows += &format!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:+.0} | {:.0} | {:+.0} |\n",
                get(self.plain),
                get(self.unwatched),
                get(self.tracked),
                get(self.tracked) - get(self.plain),
                get(self.cooled),
                get(self.cooled) - get(self.plain)
            );
        }
        format!(
            "## What the hook adds to a short connection\n\n`tssx-bench-setup` (connect, accept, one 64 B round trip, close) under `valgrind --tool=callgrind`: user-space instructions per connection, the difference between a run of {MANY} and one of {FEW} connections. Instructions are repeatable where timed runs of a few percent are not. The kernel's share (the system calls, the connect hook's eBPF program) is not counted; the system calls are the same in all three. On the watched path every connection ends plain, so the path cools after 64 of them (the hook's `heat`, `tssx-agent --cool-after`): *tracked* is the path while warm (runs of {WARM_MANY} and {WARM_FEW} connections, every one tracked), *cooled* after (runs of {MANY} and {FEW}: only the connections made in a probe window, about one slot of the clock in 16, are tracked; under callgrind's slowdown that share is the same).\n\n{rows}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrinds_total() {
        assert_eq!(total_of("version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 4770816\n\n"), Some(4_770_816));
        assert_eq!(total_of("events: Ir\nfl=(1)\n0 3\ntotals: 12\n"), Some(12));
        assert_eq!(total_of("events: Ir\n"), None);
    }
}
