//! hioload-ws facade.

pub mod pinning;
pub mod pool;
pub mod topology;
