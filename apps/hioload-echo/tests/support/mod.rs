//! Test support for the `hioload-echo` binary: a server child process whose log is read line by
//! line in the background, killed (by its pid) on drop; and the raw client request that the
//! tests send by hand where a client library would not do what they need.

#![allow(dead_code)] // each test binary uses a part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Namespaces, commands and host facts, shared with the DPDK crates' tests.
#[cfg(feature = "dpdk")]
#[path = "../../../../dpdk/tests/support/host.rs"]
pub mod host;

pub const BIN: &str = env!("CARGO_BIN_EXE_hioload-echo");

/// An upgrade request for `/ws` with the RFC 6455 sample key.
pub const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A running hioload-echo; its stderr is drained into a channel by a background thread.
pub struct EchoProcess {
    pub child: Child,
    log: mpsc::Receiver<String>,
    /// The lines read from the channel so far.
    seen: Vec<String>,
}

impl EchoProcess {
    /// Spawns `cmd`, whose stderr must be piped.
    pub fn spawn(mut cmd: Command) -> EchoProcess {
        let mut child = cmd.spawn().unwrap();
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        EchoProcess {
            child,
            log,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`, among the lines seen so far or those to come;
    /// returns it.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        self.next_line_with(needle, limit)
    }

    /// Waits for a new log line (one not seen before) containing `needle`; returns it.
    pub fn next_line_with(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "no log line {needle:?} within {limit:?}; log:\n{}",
                        self.seen.join("\n")
                    )
                });
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line {needle:?} (server {}); log:\n{}",
                    match self.child.try_wait() {
                        Ok(Some(s)) => format!("exited: {s}"),
                        _ => "running".into(),
                    },
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The whole log so far.
    pub fn log_text(&mut self) -> String {
        self.seen.extend(self.log.try_iter());
        self.seen.join("\n")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our own child, still running.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the process to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "hioload-echo did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process (by its pid) if it still runs, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
