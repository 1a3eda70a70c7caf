//! The TSC clock DPDK polling loops time themselves with.

use hioload_dpdk_sys as sys;

/// Current TSC cycle count.
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: reads the time-stamp counter.
    unsafe { sys::rte_rdtsc() }
}

/// TSC cycles per second (measured by the EAL at init).
pub fn tsc_hz() -> u64 {
    // SAFETY: reads a value the EAL computed at init (0 before init).
    unsafe { sys::rte_get_tsc_hz() }
}
