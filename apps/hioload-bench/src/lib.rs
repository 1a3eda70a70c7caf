//! The parts of hioload-bench, as a library so that benchmarks (benches/) open connections, build
//! message patterns and read /proc the same way the load generator does.

pub mod connect;
pub mod idle;
pub mod load;
pub mod pattern;
pub mod perfstat;
pub mod procfs;
pub mod report;
pub mod wire;
