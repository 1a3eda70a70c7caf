//! The kernel data path: the facade's handlers over the kernel transport (`hioload-fallback`).
//!
//! What the facade adds to the transport: the workers' placement (a topology-aware plan: one
//! CPU per worker, spread over NUMA nodes), their receive buffers (each worker's cache of the
//! NUMA pool of its node, made on the pinned worker thread), and the application
//! ([`HandlerApp`], the same on both data paths).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hioload_fallback::{KernelTransport, RecvBuffer, RecvBuffers};
use hioload_wsproto::ShardSet;
use tracing::{debug, warn};

use crate::app::HandlerApp;
use crate::config::{Config, ConfigError, IoBackend};
use crate::data_path::DataPath;
use crate::pinning::{CpuAffinity, PlacementPlan};
use crate::pool::{PoolManager, PoolStats, PooledBuf, WorkerCache};
use crate::server::Error;
use crate::topology::Topology;

/// A running kernel data path.
pub(crate) struct KernelPath {
    transport: KernelTransport,
    pools: PoolManager,
}

impl KernelPath {
    /// Places the workers, makes the pools and starts the transport.
    pub fn start(
        cfg: &Config,
        app: Arc<HandlerApp>,
        tls: Option<hioload_wsproto::tls::TlsAcceptor>,
    ) -> Result<KernelPath, Error> {
        let topology = discover_topology()?;
        let (worker_cpus, worker_nodes) = placement(cfg, &topology);
        let pools = PoolManager::new(&topology, cfg.pool.clone()).map_err(|e| {
            Error::Config(ConfigError {
                field: "pool",
                problem: e.to_string(),
            })
        })?;
        let mut transport_cfg = cfg.transport(tls);
        transport_cfg.worker_cpus = worker_cpus;
        let worker_pools = pools.clone();
        let buffers = move |worker: usize, size: usize| {
            let nodes = worker_pools.nodes();
            let node = worker_nodes
                .get(worker)
                .copied()
                .filter(|n| nodes.contains(n))
                .unwrap_or(nodes[0]);
            let cache = worker_pools
                .worker_cache(node)
                .expect("the node has a pool: it was taken from the pool's own list");
            PoolBuffers {
                cache,
                size,
                pools: worker_pools.clone(),
            }
        };
        let transport = KernelTransport::start(transport_cfg, app, buffers)?;
        debug!(addr = %transport.local_addr(), workers = cfg.num_workers, path = %cfg.path, "server started");
        Ok(KernelPath { transport, pools })
    }
}

impl DataPath for KernelPath {
    fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }
    fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.transport.tls_local_addr()
    }
    fn io_backend(&self) -> Option<IoBackend> {
        Some(self.transport.io_backend())
    }
    fn shards(&self) -> &Arc<ShardSet> {
        self.transport.shards()
    }
    fn pool_stats(&self) -> PoolStats {
        self.pools.stats()
    }
    fn stop(&self) {
        self.transport.stop()
    }
    fn wait(&self) -> Result<(), Error> {
        self.transport.wait().map_err(Error::Io)
    }
}

/// The running machine's topology; a one-node stand-in when hwloc cannot read it.
fn discover_topology() -> Result<Topology, Error> {
    match Topology::discover() {
        Ok(t) => Ok(t),
        Err(e) => {
            warn!("cannot read the CPU topology ({e}); assuming one NUMA node");
            let pus = std::thread::available_parallelism().map_or(1, |n| n.get());
            Topology::synthetic(&format!("numa:1 pu:{pus}"))
                .map_err(|e| Error::Io(io::Error::other(format!("no topology: {e}"))))
        }
    }
}

/// Each worker's CPU (empty: pinning off or no plan, the transport picks) and NUMA node, from
/// the topology-aware placement plan (spread over NUMA nodes, distinct cores before SMT
/// siblings).
fn placement(cfg: &Config, topology: &Topology) -> (Vec<Option<usize>>, Vec<u32>) {
    let affinity = if cfg.cpu_affinity {
        CpuAffinity::default()
    } else {
        CpuAffinity::Off
    };
    match PlacementPlan::new(topology, cfg.num_workers, &affinity) {
        Ok(plan) => {
            if cfg.cpu_affinity {
                plan.log();
            }
            let cpus = if cfg.cpu_affinity {
                plan.workers()
                    .iter()
                    .map(|w| w.cpu.map(|c| c as usize))
                    .collect()
            } else {
                Vec::new()
            };
            (cpus, plan.workers().iter().map(|w| w.node).collect())
        }
        Err(e) => {
            warn!("no placement plan ({e}); pinning worker i to the i-th allowed CPU");
            (Vec::new(), Vec::new())
        }
    }
}

/// A worker's receive buffers: its pool cache (created on the worker thread, NUMA-local).
pub(crate) struct PoolBuffers {
    cache: WorkerCache,
    size: usize,
    /// To give memory that stayed free back to the system (whichever worker's tick comes
    /// first after each trim period does it).
    pools: PoolManager,
}

/// A pool buffer lent as a receive buffer: its whole capacity is readable.
pub(crate) struct PoolRecvBuf(PooledBuf);

impl RecvBuffer for PoolRecvBuf {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl RecvBuffers for PoolBuffers {
    type Buf = PoolRecvBuf;
    fn take(&mut self) -> Option<PoolRecvBuf> {
        match self.cache.get(self.size, None) {
            Ok(mut buf) => {
                let capacity = buf.capacity();
                buf.set_len(capacity);
                Some(PoolRecvBuf(buf))
            }
            Err(e) => {
                debug!("no receive buffer: {e}");
                None
            }
        }
    }
    fn give(&mut self, buf: PoolRecvBuf) {
        drop(buf); // back to the cache it came from
    }
    fn maintain(&mut self, now: std::time::Instant) {
        let given = self.pools.trim_if_due(now);
        if given > 0 {
            debug!(
                bytes = given,
                "buffer pool memory that stayed free given back"
            );
        }
    }
}
