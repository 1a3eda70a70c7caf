//! The DPDK data path: WebSocket sessions over the userspace TCP stack (`hioload-stack`).
//!
//! The kernel path hands the protocol layer bytes it read from a socket; this path lets it parse
//! them where they are, in a smoltcp socket's receive ring, on the lcore that owns the connection,
//! and writes the replies straight into that socket's send ring. Everything above the byte level
//! is the session layer's shard, exactly as on the kernel path: the same lifecycle, `Handler` /
//! `HttpHandler` callbacks, limits, timeouts, close codes and graceful stop. The pieces:
//! - [`DpdkConfig`]: what this path needs besides [`Config`](crate::Config) (EAL arguments,
//!   netmask, gateway, idle back-off, connection slots);
//! - `runtime`: the EAL thread (EAL, port, mempool, stacks, the stop) and the lcore loop;
//! - `setup`: opening and logging the port, the lcores' placement and buffer pools;
//! - `worker`: one lcore's shard of connections over its stack, as a stack `Handler`;
//! - `wire`: a connection's output into its send ring, and what does not fit (backpressure);
//! - `busy`: the lcores' busy time (TSC cycles of loop turns that did work), for `/metrics`.

mod busy;
mod hint;
mod link;
mod runtime;
mod setup;
mod wire;
mod worker;

use std::net::Ipv4Addr;
use std::time::Duration;

pub(crate) use busy::write_metrics as write_busy_metrics;
pub(crate) use runtime::DpdkPath;

/// Why `rte_eal_init` with these EAL arguments (without the program name) likely failed, and
/// the fix, read from this machine's state (not root, no hugepages reserved, no hugetlbfs
/// mounted); `None` when nothing looks missing. What hioload-echo adds to an EAL error, for
/// other DPDK programs of this workspace (hioload-bench) to say the same.
pub fn eal_failure_hint(eal_args: &[String]) -> Option<String> {
    hint::eal_hint(eal_args, &hint::HugepageState::read())
}

/// The DPDK layer this path runs on (EAL, NUMA memory), for tools and tests that need it with
/// the facade (e.g. to check where [`DpdkBacking`](crate::pool::DpdkBacking) memory lies).
pub use hioload_dpdk;

/// Settings of the DPDK data path; `DpdkConfig::new(eal_args)` gives the defaults listed on each
/// field. The address and port come from [`Config::listen`](crate::Config::listen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpdkConfig {
    /// EAL arguments, without the program name (e.g. `-l 0-1 --vdev=net_tap0,iface=hl0`).
    pub eal_args: Vec<String>,
    /// Prefix length of our subnet (default 24).
    pub prefix_len: u8,
    /// Default gateway, to reach peers outside the subnet (default none).
    pub gateway: Option<Ipv4Addr>,
    /// How long an lcore sleeps after a loop turn that received nothing (default 0: busy poll).
    pub idle_sleep: Duration,
    /// Most TCP connections at once per lcore; sizes each lcore's ring slab (default 8192).
    pub max_connections: usize,
    /// Receive and send ring bytes per connection (default 16 KiB each).
    pub ring_bytes: usize,
    /// The ethdev to serve on, by name (`net_tap0`, `0000:01:00.0`); default: the first port.
    pub port: Option<String>,
}

impl DpdkConfig {
    /// Defaults, with these EAL arguments.
    pub fn new(eal_args: Vec<String>) -> DpdkConfig {
        DpdkConfig {
            eal_args,
            prefix_len: 24,
            gateway: None,
            idle_sleep: Duration::ZERO,
            max_connections: 8192,
            ring_bytes: 16 << 10,
            port: None,
        }
    }

    /// Checks the values; the error names the field.
    pub(crate) fn validate(&self) -> Result<(), crate::ConfigError> {
        let bad = |field: &'static str, problem: String| Err(crate::ConfigError { field, problem });
        if !(1..=32).contains(&self.prefix_len) {
            return bad(
                "dpdk.prefix_len",
                format!("must be between 1 and 32, got {}", self.prefix_len),
            );
        }
        if !(1..=1 << 20).contains(&self.max_connections) {
            return bad(
                "dpdk.max_connections",
                format!(
                    "must be between 1 and 1048576, got {}",
                    self.max_connections
                ),
            );
        }
        if !(4096..=16 << 20).contains(&self.ring_bytes) {
            return bad(
                "dpdk.ring_bytes",
                format!("must be between 4 KiB and 16 MiB, got {}", self.ring_bytes),
            );
        }
        if self.idle_sleep > Duration::from_secs(1) {
            return bad(
                "dpdk.idle_sleep",
                format!("must be at most 1 s, got {:?}", self.idle_sleep),
            );
        }
        Ok(())
    }
}
