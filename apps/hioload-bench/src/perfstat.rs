//! Counting the server's system calls over the measured window with `perf stat` (Linux perf,
//! package `linux-perf`): syscall tracepoints cost the server little, unlike `strace`, so the
//! load stays what it is while the counters run.
//!
//! The count is turned into a rate with perf's own `duration_time`, which makes it independent of
//! how long perf took to attach.

use std::process::{Child, Command, Stdio};

/// The syscalls broken out in reports (their sum is not the total: `raw_syscalls:sys_enter`
/// counts every syscall).
const SYSCALLS: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "io_uring_enter",
    "futex",
];

/// A running `perf stat` attached to the server.
pub struct SyscallCounter {
    child: Child,
}

/// Syscalls per second, in total and by name (only those that occurred).
pub struct SyscallRates {
    pub total: f64,
    pub by_name: Vec<(&'static str, f64)>,
}

impl SyscallCounter {
    /// Starts counting the syscalls of `pid` (all its threads).
    pub fn start(pid: u32) -> Result<SyscallCounter, String> {
        let mut events = String::from("duration_time,raw_syscalls:sys_enter");
        for name in SYSCALLS {
            events.push_str(",syscalls:sys_enter_");
            events.push_str(name);
        }
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", &events, "-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("--syscalls needs `perf` (apt-get install linux-perf): {e}"))?;
        Ok(SyscallCounter { child })
    }

    /// Stops counting and returns the rates.
    pub fn stop(self) -> Result<SyscallRates, String> {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let out = self.child.wait_with_output().map_err(|e| format!("perf stat: {e}"))?;
        let text = String::from_utf8_lossy(&out.stderr);
        parse(&text).ok_or_else(|| format!("unexpected `perf stat` output: {:.300}", text))
    }
}

/// Parses `perf stat -x,` lines: `count,unit,event,...`.
fn parse(text: &str) -> Option<SyscallRates> {
    let mut seconds = None;
    let mut total = None;
    let mut by_name = Vec::new();
    for line in text.lines() {
        let mut fields = line.split(',');
        let count = fields.next()?;
        let _unit = fields.next();
        let Some(event) = fields.next() else { continue };
        // "<not counted>" / "<not supported>": treat as zero.
        let count: f64 = count.trim().parse().unwrap_or(0.0);
        match event {
            "duration_time" => seconds = Some(count / 1e9),
            "raw_syscalls:sys_enter" => total = Some(count),
            _ => {
                if let Some(name) = event.strip_prefix("syscalls:sys_enter_") {
                    if let Some(known) = SYSCALLS.iter().find(|n| **n == name) {
                        if count > 0.0 {
                            by_name.push((*known, count));
                        }
                    }
                }
            }
        }
    }
    let seconds = seconds.filter(|s| *s > 0.0)?;
    let total = total? / seconds;
    for (_, count) in by_name.iter_mut() {
        *count /= seconds;
    }
    Some(SyscallRates { total, by_name })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_csv() {
        let text = "\n2000000000,ns,duration_time,2000000000,100.00,,\n\
                    600,,raw_syscalls:sys_enter,2000000000,100.00,,\n\
                    200,,syscalls:sys_enter_read,2000000000,100.00,,\n\
                    <not counted>,,syscalls:sys_enter_writev,0,100.00,,\n";
        let r = parse(text).unwrap();
        assert_eq!(r.total, 300.0);
        assert_eq!(r.by_name, vec![("read", 100.0)]);
        assert!(parse("garbage").is_none());
    }

    #[test]
    #[ignore = "needs linux-perf and access to syscall tracepoints (root)"]
    fn counts_a_real_process() {
        // A child that makes a known kind of syscall in a loop.
        let mut child = Command::new("sh").args(["-c", "while :; do read x < /dev/null; done"]).spawn().unwrap();
        let counter = SyscallCounter::start(child.id()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let rates = counter.stop();
        child.kill().unwrap();
        child.wait().unwrap();
        let rates = rates.unwrap();
        assert!(rates.total > 100.0, "total {}", rates.total);
    }
}
