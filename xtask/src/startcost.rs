//! What the hook adds to every process start (issue 13: within 5% of an empty preloaded
//! library). With `tssx-agent install` the hook is in every process on the host, so this is the
//! cost everyone pays, swapped or not.
//!
//! Runs `/bin/true` many times with `LD_PRELOAD` set to an empty shared object (built here with
//! `cc`), then to `libtssx_preload.so`, alternating batches; compares the medians of the batches.
//! The verdict uses the CPU time the children used (user + system, as the kernel accounts it,
//! from `getrusage(RUSAGE_CHILDREN)`): on a shared 2-core machine, wall time mostly measures who
//! else was running. Wall time is shown too.
//! The empty library is the baseline, not "no preload": loading any preloaded object costs an
//! open and a few mappings, which is not the hook's doing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{ensure, Context as _};

/// Batches per library (alternating), and `/bin/true` runs per batch.
const BATCHES: usize = 15;
const RUNS_PER_BATCH: usize = 200;
/// The goal: the hook within this factor of the empty library.
pub const GOAL: f64 = 1.05;

/// Microseconds per `/bin/true` over one batch.
#[derive(Clone, Copy)]
struct Batch {
    /// CPU time of the child (user + system).
    cpu_us: f64,
    /// Wall time from spawn to reaped.
    wall_us: f64,
}

/// One measurement: medians of the batches, microseconds per `/bin/true`, with each library.
pub struct StartCost {
    pub empty_cpu_us: f64,
    pub hook_cpu_us: f64,
    pub empty_wall_us: f64,
    pub hook_wall_us: f64,
    pub runs: usize,
}

impl StartCost {
    /// Hook over empty library, CPU time: the verdict.
    pub fn ratio(&self) -> f64 {
        self.hook_cpu_us / self.empty_cpu_us
    }

    /// One Markdown table row per metric: name, both medians, the ratio and the verdict (on CPU
    /// time only).
    pub fn rows(&self) -> [[String; 5]; 2] {
        let what = format!("{} runs each, alternating batches of {RUNS_PER_BATCH}, median of batches", self.runs);
        [
            [
                format!("`/bin/true`, CPU time (user + system), {what}"),
                format!("{:.0} us", self.empty_cpu_us),
                format!("{:.0} us", self.hook_cpu_us),
                format!("{:.3}x", self.ratio()),
                if self.ratio() <= GOAL { "yes" } else { "**no**" }.into(),
            ],
            [
                format!("`/bin/true`, wall time, {what}"),
                format!("{:.0} us", self.empty_wall_us),
                format!("{:.0} us", self.hook_wall_us),
                format!("{:.3}x", self.hook_wall_us / self.empty_wall_us),
                "(noisy: not the verdict)".into(),
            ],
        ]
    }
}

/// CPU time (user + system) of every reaped child so far, in microseconds.
fn children_cpu_us() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage this function owns.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Builds the empty preload library into `dir`.
fn empty_library(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = dir.join("empty.c");
    let library = dir.join("libempty.so");
    std::fs::write(&source, "/* An empty preloaded library: the baseline of the start cost. */\nvoid tssx_empty(void) {}\n")?;
    let status = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .context("running cc (cargo xtask setup installs it)")?;
    ensure!(status.success(), "cc failed to build {}", library.display());
    Ok(library)
}

/// Microseconds per `/bin/true` over one batch with `preload`.
fn batch(preload: &Path) -> anyhow::Result<Batch> {
    let cpu_before = children_cpu_us();
    let started = Instant::now();
    for _ in 0..RUNS_PER_BATCH {
        let status = Command::new("/bin/true")
            .env_clear()
            .env("LD_PRELOAD", preload)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running /bin/true")?;
        ensure!(status.success(), "/bin/true failed with LD_PRELOAD={}", preload.display());
    }
    let runs = RUNS_PER_BATCH as f64;
    Ok(Batch { cpu_us: (children_cpu_us() - cpu_before) / runs, wall_us: started.elapsed().as_secs_f64() * 1e6 / runs })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures the hook's start cost against the empty library (built in `work_dir`).
pub fn measure(hook: &Path, work_dir: &Path) -> anyhow::Result<StartCost> {
    let empty = empty_library(work_dir)?;
    // One warm-up batch each: page cache and dynamic loader cache.
    batch(&empty)?;
    batch(hook)?;
    let (mut empty_runs, mut hook_runs) = (Vec::new(), Vec::new());
    for _ in 0..BATCHES {
        empty_runs.push(batch(&empty)?);
        hook_runs.push(batch(hook)?);
    }
    let cpu = |v: &[Batch]| median(v.iter().map(|b| b.cpu_us).collect());
    let wall = |v: &[Batch]| median(v.iter().map(|b| b.wall_us).collect());
    Ok(StartCost {
        empty_cpu_us: cpu(&empty_runs),
        hook_cpu_us: cpu(&hook_runs),
        empty_wall_us: wall(&empty_runs),
        hook_wall_us: wall(&hook_runs),
        runs: BATCHES * RUNS_PER_BATCH,
    })
}
