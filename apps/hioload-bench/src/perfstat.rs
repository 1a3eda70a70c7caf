//! Counting the server's system calls over the measured window with `perf stat` (Linux perf,
//! package `linux-perf`): syscall tracepoints cost the server little, unlike `strace`, so the
//! load stays what it is while the counters run.
//!
//! The count is turned into a rate with perf's own `duration_time`, which makes it independent of
//! how long perf took to attach. Counting is per thread (`--per-thread`): without it perf sums
//! `duration_time` over the threads as well, which would divide the rate by the thread count.

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
            .args([
                "stat",
                "--per-thread",
                "-x,",
                "-e",
                &events,
                "-p",
                &pid.to_string(),
            ])
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
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| format!("perf stat: {e}"))?;
        let text = String::from_utf8_lossy(&out.stderr);
        parse(&text).ok_or_else(|| format!("unexpected `perf stat` output: {:.300}", text))
    }
}

/// Parses `perf stat --per-thread -x,` lines: `comm-tid,count,unit,event,...`. Counts are summed
/// over threads; the duration is the longest thread's.
fn parse(text: &str) -> Option<SyscallRates> {
    let mut seconds: Option<f64> = None;
    let mut total = None;
    let mut by_name: Vec<(&'static str, f64)> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        let [_thread, count, _unit, event, ..] = fields[..] else {
            continue;
        };
        // "<not counted>" / "<not supported>": treat as zero.
        let count: f64 = count.trim().parse().unwrap_or(0.0);
        match event {
            "duration_time" => seconds = Some(seconds.unwrap_or(0.0).max(count / 1e9)),
            "raw_syscalls:sys_enter" => *total.get_or_insert(0.0) += count,
            _ => {
                let Some(name) = event.strip_prefix("syscalls:sys_enter_") else {
                    continue;
                };
                let Some(known) = SYSCALLS.iter().find(|n| **n == name) else {
                    continue;
                };
                if count <= 0.0 {
                    continue;
                }
                match by_name.iter_mut().find(|(n, _)| n == known) {
                    Some((_, c)) => *c += count,
                    None => by_name.push((known, count)),
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
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn parses_perf_csv() {
        let text = "\nsrv-1,2000000000,ns,duration_time,2000000000,100.00,,\n\
                    srv-2,2000000000,ns,duration_time,2000000000,100.00,,\n\
                    srv-1,<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n\
                    srv-2,600,,raw_syscalls:sys_enter,2000000000,100.00,,\n\
                    srv-1,20,,syscalls:sys_enter_read,2000000000,100.00,,\n\
                    srv-2,180,,syscalls:sys_enter_read,2000000000,100.00,,\n\
                    srv-2,<not counted>,,syscalls:sys_enter_writev,0,100.00,,\n";
        let r = parse(text).unwrap();
        assert_eq!(r.total, 300.0);
        assert_eq!(r.by_name, vec![("read", 100.0)]);
        assert!(parse("garbage").is_none());
    }

    #[test]
    #[ignore = "needs linux-perf and access to syscall tracepoints (root)"]
    fn counts_a_real_process() {
        // This process: a second thread makes one `read` of /dev/zero per millisecond at most
        // (sleeping makes it fewer) while this thread waits, so the rate must be per second of
        // wall clock, not per thread-second.
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut zero = std::fs::File::open("/dev/zero").unwrap();
                let mut byte = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    zero.read_exact(&mut byte).unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let counter = SyscallCounter::start(std::process::id()).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        let rates = counter.stop().unwrap();
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        let reads = rates
            .by_name
            .iter()
            .find(|(n, _)| *n == "read")
            .map_or(0.0, |(_, r)| *r);
        assert!(
            (300.0..=1000.0).contains(&reads),
            "read rate {reads}/s, all: {:?}",
            rates.by_name
        );
        assert!(rates.total >= reads);
    }
}
