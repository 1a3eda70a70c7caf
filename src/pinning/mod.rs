//! Pinning workers to processing units.
//!
//! A shard-per-core server wants each worker alone on its PU, near its memory: the
//! [`PlacementPlan`] says where each worker goes (data, logged at start), and each worker thread
//! pins itself with [`WorkerPlacement::apply`]. On Linux that is `sched_setaffinity`; elsewhere
//! pinning is a no-op (the plan still gives each worker a home node for its buffers).

pub(crate) mod cpu_list;
mod plan;

use std::io;

pub use cpu_list::{CpuList, CpuListError, MAX_CPU};
pub use plan::{CpuAffinity, PlacementError, PlacementPlan, WorkerPlacement};

/// Pins the calling thread to processing unit `cpu` (OS index). No-op off Linux.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpu: u32) -> io::Result<()> {
    if cpu > MAX_CPU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is above {MAX_CPU}"),
        ));
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: cpu <= MAX_CPU < CPU_SETSIZE, so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("sched_setaffinity(CPU {cpu}): {e}"),
        ));
    }
    Ok(())
}

/// Pins the calling thread to processing unit `cpu` (OS index). No-op off Linux.
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: u32) -> io::Result<()> {
    Ok(())
}

/// The PUs (OS indexes) the calling thread may run on, ascending (`sched_getaffinity`).
#[cfg(target_os = "linux")]
pub fn current_thread_cpus() -> io::Result<Vec<u32>> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; `set` is a writable cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: every index is < CPU_SETSIZE, inside `set`.
    Ok((0..=MAX_CPU)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu as usize, &set) })
        .collect())
}

/// The PUs the calling thread may run on: unsupported off Linux.
#[cfg(not(target_os = "linux"))]
pub fn current_thread_cpus() -> io::Result<Vec<u32>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "thread affinity is only read on Linux",
    ))
}
