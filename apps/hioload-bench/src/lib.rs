//! The parts of hioload-bench, as a library so that benchmarks (benches/) open connections, build
//! message patterns and read /proc the same way the load generator does, and tests drive the
//! DPDK mode's client (`dpdk`, feature `dpdk`) over stacks of their own.

pub mod admin;
pub mod connect;
pub mod deflate;
pub mod deflate_load;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod idle;
pub mod load;
pub mod pattern;
pub mod perfstat;
pub mod procfs;
pub mod report;
pub mod window;
pub mod wire;
