//! The measured window, for either load loop (kernel threads or the DPDK lcore): warm up, read
//! the server's and our own counters, switch the loop to MEASURE, wait, switch it to DONE, read
//! them again. It runs on a thread of its own (the main thread in kernel mode, a control thread
//! in DPDK mode, where the main thread is the lcore), so the loop never waits on a read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use crate::admin::{self, BusyTime};
use crate::load;
use crate::perfstat::{SyscallCounter, SyscallRates};
use crate::procfs::{self, CpuTime};

/// What to read around the window.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    pub warmup: Duration,
    pub duration: Duration,
    /// The server's pid: its CPU time from /proc.
    pub server_pid: Option<u32>,
    /// Also count the server's syscalls (needs `server_pid`).
    pub syscalls: bool,
    /// The server's admin listener: its DPDK lcores' busy time from /metrics.
    pub admin: Option<SocketAddr>,
}

/// What was read.
pub struct Measured {
    /// The window, wall clock.
    pub window: Duration,
    /// This process's CPU time over the window.
    pub client_cpu: CpuTime,
    pub server_cpu: Option<CpuTime>,
    pub syscalls: Option<SyscallRates>,
    pub server_busy: Option<BusyTime>,
}

/// Sets the phase to DONE when dropped: the load stops whatever happens here.
struct StopOnDrop<'a>(&'a AtomicU8);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(load::DONE, Ordering::Relaxed);
    }
}

/// Warms up, measures, and leaves `phase` at DONE (also on error).
pub fn measure(spec: &WindowSpec, phase: &AtomicU8) -> Result<Measured, String> {
    let _stop = StopOnDrop(phase);
    let server_cpu = |pid: u32| {
        procfs::process_cpu(pid)
            .map_err(|e| format!("reading the CPU time of server pid {pid}: {e}"))
    };
    std::thread::sleep(spec.warmup);
    let counter = match (spec.syscalls, spec.server_pid) {
        (true, Some(pid)) => Some(SyscallCounter::start(pid)?),
        _ => None,
    };
    // The reads closest to the switches are the quick ones.
    let server_start = spec.server_pid.map(server_cpu).transpose()?;
    let busy_start = spec.admin.map(admin::read_busy).transpose()?;
    let client_start = procfs::own_cpu();
    let start = Instant::now();
    phase.store(load::MEASURE, Ordering::Relaxed);
    std::thread::sleep(spec.duration);
    phase.store(load::DONE, Ordering::Relaxed);
    let window = start.elapsed();
    let client_cpu = procfs::own_cpu().since(client_start);
    let busy_end = spec.admin.map(admin::read_busy).transpose()?;
    let server_end = spec.server_pid.map(server_cpu).transpose()?;
    let syscalls = counter.map(|c| c.stop()).transpose()?;
    Ok(Measured {
        window,
        client_cpu,
        server_cpu: server_start.zip(server_end).map(|(a, b)| b.since(a)),
        syscalls,
        server_busy: busy_start.zip(busy_end).map(|(a, b)| b.since(&a)),
    })
}
