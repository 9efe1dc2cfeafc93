//! [`Server`]: the `tssx-test-server` echo server of the tracing tests.

use std::{process::Command, time::Duration};

use super::{process::Process, text::field};

/// How long the server may take to print `ready`, and to finish once its clients are done.
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);

/// A started `tssx-test-server` whose `ready` line has been read.
pub struct Server {
    /// The process (its own process group: a prefork server's children go with it).
    pub process: Process,
    /// Its pid, as it printed it.
    pub pid: u32,
}

impl Server {
    /// Starts `bin PATH ACCEPTS [PREFORK]` and waits for its `ready pid=P fd=L` line.
    pub fn start(bin: &str, path: &str, accepts: usize, prefork: usize) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args([path.to_owned(), accepts.to_string(), prefork.to_string()]);
        let process = Process::spawn_group(cmd);
        let ready = process.expect_line("ready", SERVER_TIMEOUT);
        let pid = field(&ready, "pid").expect("pid in the ready line") as u32;
        Self { process, pid }
    }

    /// Waits for the server to exit successfully (60 s at most) and returns its `accept` lines.
    pub fn finish(self) -> Vec<String> {
        self.process.finish(SERVER_TIMEOUT).into_iter().filter(|l| l.starts_with("accept ")).collect()
    }
}
