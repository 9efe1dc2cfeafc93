//! `cargo xtask test`'s run of `cargo test`: its standard output passes through line by line
//! and is kept, and after a failed run each failed test's output (its panic message, a
//! conformance scenario's transcript diff and the ends' stderr) is printed again at the very
//! end. `cargo test` prints a test binary's failures when that binary ends, many binaries
//! before the run's end; a log viewer that keeps only the end of a CI run (ours does) would
//! show the names of the failed tests without why they failed.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use anyhow::{bail, Context};

/// Lines of one failed test's output printed again at most (its first ones: the panic
/// message, then the diff).
const LINES_PER_FAILURE: usize = 80;
/// Lines printed again at most for all failures together.
const LINES_IN_ALL: usize = 240;

/// Runs `cmd` (a `cargo test`), its standard output passed through; if it fails, prints the
/// failed tests' output again ([`failures`]) and fails.
pub fn run_tests(cmd: &mut Command) -> anyhow::Result<()> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot run {cmd:?}"))?;
    let mut reader = BufReader::new(child.stdout.take().context("the test command's standard output")?);
    let mut kept = Vec::new();
    let mut line = Vec::new();
    let stdout = std::io::stdout();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).context("reading the test command's output")? == 0 {
            break;
        }
        // Passed through as it comes (a CI log shows progress), kept as text.
        let mut out = stdout.lock();
        let _ = out.write_all(&line);
        let _ = out.flush();
        kept.push(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_owned());
    }
    let status = child.wait().with_context(|| format!("waiting for {cmd:?}"))?;
    if !status.success() {
        print!("{}", recap(&failures(&kept)));
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// One failed test's captured output, as `cargo test` printed it under `failures:`.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// The test's name (`module::test`).
    pub name: String,
    /// Its output, the `---- NAME stdout ----` line left out.
    pub lines: Vec<String>,
}

/// The failed tests' outputs in `cargo test`'s standard output: each block from a
/// `---- NAME stdout ----` line up to the next such line or the `failures:` line that lists the
/// names.
pub fn failures(lines: &[String]) -> Vec<Failure> {
    let mut found: Vec<Failure> = Vec::new();
    let mut open = false;
    let mut in_backtrace = false;
    for line in lines {
        if let Some(name) = line.strip_prefix("---- ").and_then(|rest| rest.strip_suffix(" stdout ----")) {
            found.push(Failure { name: name.to_owned(), lines: Vec::new() });
            (open, in_backtrace) = (true, false);
        } else if line == "failures:" || line.starts_with("test result: ") {
            open = false;
        } else if open {
            let Some(failure) = found.last_mut() else { continue };
            // A panic's backtrace (RUST_BACKTRACE=1) is left out: its frames are the harness's
            // and the assertion's, and it would take the place of the message and the diff.
            if line == "stack backtrace:" {
                in_backtrace = true;
                failure.lines.push("[stack backtrace left out]".to_owned());
            } else if in_backtrace {
                in_backtrace = !line.starts_with("note: Some details are omitted");
            } else {
                failure.lines.push(line.clone());
            }
        }
    }
    for failure in &mut found {
        while failure.lines.last().is_some_and(|l| l.trim().is_empty()) {
            failure.lines.pop();
        }
    }
    found
}

/// The text printed after a failed run: each failure's first lines, within the caps.
pub fn recap(failures: &[Failure]) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "\nxtask: {} failed test(s); their output again, at the end of the log ({LINES_PER_FAILURE} lines each at most):\n",
        failures.len()
    );
    let mut budget = LINES_IN_ALL;
    for failure in failures {
        text.push_str(&format!("\n---- {} ----\n", failure.name));
        let shown = failure.lines.len().min(LINES_PER_FAILURE).min(budget);
        for line in &failure.lines[..shown] {
            text.push_str(line);
            text.push('\n');
        }
        if shown < failure.lines.len() {
            text.push_str(&format!("[... {} more lines: see the test binary's output above]\n", failure.lines.len() - shown));
        }
        budget -= shown;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn the_failures_of_each_binary_are_found_and_printed_again() {
        let out = lines(
            "running 3 tests\ntest a::one ... ok\ntest a::two ... FAILED\ntest a::three ... FAILED\n\nfailures:\n\n\
             ---- a::two stdout ----\n\nthread 'a::two' panicked at x.rs:1:1:\ntranscripts differ\n- plain\n+ swapped\n\n\
             ---- a::three stdout ----\nboom\nstack backtrace:\n   0: rust_begin_unwind\n             at x.rs:2:2\n\
             note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\nafter\n\nfailures:\n    a::two\n    a::three\n\ntest result: FAILED. 1 passed; 2 failed\n\n\
             running 1 test\ntest b::four ... ok\n\ntest result: ok. 1 passed; 0 failed\n",
        );
        let found = failures(&out);
        assert_eq!(
            found,
            vec![
                Failure {
                    name: "a::two".into(),
                    lines: lines("\nthread 'a::two' panicked at x.rs:1:1:\ntranscripts differ\n- plain\n+ swapped")
                },
                Failure { name: "a::three".into(), lines: lines("boom\n[stack backtrace left out]\nafter") },
            ]
        );
        let text = recap(&found);
        assert!(text.contains("2 failed test(s)"), "{text}");
        assert!(
            text.contains("---- a::two ----\n\nthread 'a::two' panicked at x.rs:1:1:\ntranscripts differ\n- plain\n+ swapped\n"),
            "{text}"
        );
        assert!(text.ends_with("---- a::three ----\nboom\n[stack backtrace left out]\nafter\n"), "{text}");
        assert_eq!(recap(&failures(&lines("test result: ok. 1 passed; 0 failed"))), "");
    }

    #[test]
    fn long_outputs_are_cut_to_their_first_lines() {
        let long: Vec<String> = std::iter::once("---- c::long stdout ----".to_owned())
            .chain((0..LINES_PER_FAILURE + 5).map(|i| format!("line {i}")))
            .chain(std::iter::once("failures:".to_owned()))
            .collect();
        let text = recap(&failures(&long));
        assert!(text.contains(&format!("line {}\n", LINES_PER_FAILURE - 1)), "{text}");
        assert!(!text.contains(&format!("line {}\n", LINES_PER_FAILURE)), "{text}");
        assert!(text.contains("[... 5 more lines: see"), "{text}");
    }
}
