//! The running data path, as the server and the control plane see it: the kernel path
//! (`kernel/`) and the DPDK path (`dpdk/`) look alike from here.
//!
//! Both run the session layer's shards, so what the server asks of them (sends by id,
//! broadcasts, reloads, counters) goes through their [`ShardSet`]; what differs is how they
//! start, where their buffer pools live, and how they stop.

use std::net::SocketAddr;
use std::sync::Arc;

use hioload_wsproto::{DeliverError, OutMessage, Settings, ShardSet, WorkerStats};

use crate::config::IoBackend;
use crate::pool::PoolStats;
use crate::server::Error;

/// What the control plane renders: one snapshot of the data path's counters.
#[derive(Clone, Debug)]
pub(crate) struct PathStats {
    /// One entry per worker (kernel thread or DPDK lcore).
    pub workers: Vec<WorkerStats>,
    /// The buffer pools the workers take from.
    pub pools: PoolStats,
}

/// A running data path.
pub(crate) trait DataPath: Send + Sync {
    /// The address it serves (with the real port when 0 was asked).
    fn local_addr(&self) -> SocketAddr;
    /// The address of the second, TLS listener, if any.
    fn tls_local_addr(&self) -> Option<SocketAddr> {
        None
    }
    /// The kernel path's I/O backend (`None` on the DPDK path).
    fn io_backend(&self) -> Option<IoBackend>;
    /// What its shards share.
    fn shards(&self) -> &Arc<ShardSet>;
    /// Its buffer pools' statistics.
    fn pool_stats(&self) -> PoolStats;
    /// Begins the graceful stop and returns at once.
    fn stop(&self);
    /// Blocks until every worker has exited.
    fn wait(&self) -> Result<(), Error>;

    /// Open sessions across all workers.
    fn session_count(&self) -> usize {
        self.shards().session_count()
    }
    /// Queues `msg` for session `id`, on whichever worker owns it.
    fn send_to(&self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        self.shards().send_to(id, msg, None)
    }
    /// Queues `msg` for every open session; returns the workers reached.
    fn broadcast(&self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        self.shards().broadcast(msg, None)
    }
    /// Publishes reloaded settings; every worker applies them at the start of its next turn.
    fn reload(&self, settings: Settings) {
        self.shards().publish(settings)
    }
    /// A snapshot of the counters.
    fn stats(&self) -> PathStats {
        PathStats {
            workers: self.shards().worker_stats(),
            pools: self.pool_stats(),
        }
    }
}
