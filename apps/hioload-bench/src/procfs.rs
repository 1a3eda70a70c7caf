//! What the load generator reads about processes: a server's CPU time and resident memory from
//! /proc, and its own CPU time from `getrusage`.

use std::io;
use std::time::Duration;

/// CPU time split into user space and kernel.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    /// User + system.
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The time used since `earlier`.
    pub fn since(&self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// CPU time the process `pid` has used, all threads, from /proc/PID/stat (utime, stime).
/// The kernel counts it in clock ticks (usually 10 ms).
pub fn process_cpu(pid: u32) -> io::Result<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: fields after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| bad(&stat))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| bad(&stat))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    let time = |t: u64| Duration::from_nanos(t * 1_000_000_000 / hz);
    Ok(CpuTime {
        user: time(ticks(11)?),
        system: time(ticks(12)?),
    })
}

/// Resident set size (VmRSS) of `pid` in bytes, from /proc/PID/status.
pub fn process_rss(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| bad(&status))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad(line))?;
    Ok(kib * 1024)
}

/// CPU time this process has used so far.
pub fn own_cpu() -> CpuTime {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    CpuTime {
        user: tv(usage.ru_utime),
        system: tv(usage.ru_stime),
    }
}

fn bad(text: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected /proc contents: {:.80}", text),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        // Burn a little CPU so the tick counter has something to show.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(process_cpu(pid).unwrap().total() > Duration::ZERO);
        assert!(own_cpu().total() >= Duration::from_millis(10));
        let rss = process_rss(pid).unwrap();
        assert!(rss > 100 * 1024 && rss < 1 << 40, "rss {rss}");
    }

    #[test]
    fn missing_process_is_an_error() {
        assert!(process_cpu(u32::MAX - 1).is_err());
        assert!(process_rss(u32::MAX - 1).is_err());
    }
}
