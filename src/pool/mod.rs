//! NUMA-aware buffer pools.
//!
//! One pool per NUMA node, each split into power-of-two size classes (2 KiB to 16 MiB by
//! default). Memory is taken from the system in slabs bound to the node ([`SystemBacking`]);
//! slabs stay while the [`PoolManager`] lives, so steady state allocates nothing, but the pages
//! of buffers that stayed free for a whole [`TRIM_PERIOD`] go back to the system
//! ([`PoolManager::trim`], with hysteresis and a reserve), so a burst's memory does not stay
//! resident after it.
//!
//! The hot path is a worker's [`WorkerCache`]: a per-thread free list per class, refilled from
//! and spilled to the node's lock-free shared queue in batches. [`PoolManager::get`] serves
//! threads without a cache straight from the shared queues. Either way the [`PooledBuf`] goes
//! back where it came from when dropped, and [`PoolManager::stats`] counts buffers in use, hits,
//! misses and exhaustion per node and class.
//!
//! Limits are per node and class (`max_buffers_per_class`) and per node (`node_budget`). A get
//! that finds its preferred node at the limit with every buffer in use falls back to the other
//! nodes, then fails with [`PoolError::Exhausted`]: the caller applies backpressure.

mod backing;
mod buf;
mod cache;
mod config;
#[cfg(feature = "dpdk")]
mod dpdk_backing;
mod node;
mod stats;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

pub use backing::{Backing, Region, SystemBacking};
pub use buf::{BufferFull, PooledBuf};
pub use cache::WorkerCache;
pub use config::{PoolConfig, PoolConfigError, PoolError};
#[cfg(feature = "dpdk")]
pub use dpdk_backing::DpdkBacking;
pub use stats::{ClassStats, NodeStats, PoolStats};

use self::buf::Home;
use self::cache::PoolCacheCounters;
use self::config::SizeClasses;
use self::node::NodePool;

use crate::topology::Topology;

/// The pools of every NUMA node. Cheap to clone (shared); `Send + Sync`.
#[derive(Clone)]
pub struct PoolManager {
    shared: Arc<Pools>,
}

pub(crate) struct Pools {
    config: PoolConfig,
    classes: SizeClasses,
    nodes: Vec<NodePool>,
    backing: Arc<dyn Backing>,
    /// (PU OS index, node index), to find the calling thread's node.
    pu_nodes: Vec<(u32, usize)>,
    /// Counters of the live worker caches.
    caches: Mutex<Vec<Arc<PoolCacheCounters>>>,
    /// The clock [`PoolManager::trim_if_due`] measures from, and its last trim on it.
    trim_epoch: std::sync::OnceLock<std::time::Instant>,
    last_trim_ms: std::sync::atomic::AtomicU64,
}

/// How often memory that stayed free is given back ([`PoolManager::trim_if_due`]): a buffer's
/// pages return after 10 to 20 s free.
pub const TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

impl PoolManager {
    /// Pools for every node of `topology`, with memory from a [`SystemBacking`] (bound to its
    /// node when `topology` is the running machine).
    pub fn new(topology: &Topology, config: PoolConfig) -> Result<PoolManager, PoolConfigError> {
        Self::with_backing(topology, config, Arc::new(SystemBacking::new(topology)))
    }

    /// Pools for every node of `topology`, with memory from `backing` (e.g. DPDK's allocator).
    pub fn with_backing(
        topology: &Topology,
        config: PoolConfig,
        backing: Arc<dyn Backing>,
    ) -> Result<PoolManager, PoolConfigError> {
        let nodes: Vec<(u32, Vec<u32>)> = topology
            .nodes()
            .iter()
            .map(|n| (n.os_index(), n.pus().to_vec()))
            .collect();
        Self::with_nodes(&nodes, config, backing)
    }

    /// Pools for the given nodes, each `(node, its CPUs)`, with memory from `backing`. The first
    /// node serves callers whose CPU is in no list. For the DPDK path, whose nodes are the
    /// sockets of the lcores in use (the port's first) rather than the machine's.
    pub fn with_nodes(
        nodes: &[(u32, Vec<u32>)],
        config: PoolConfig,
        backing: Arc<dyn Backing>,
    ) -> Result<PoolManager, PoolConfigError> {
        let classes = config.size_classes()?;
        if nodes.is_empty() {
            return Err(PoolConfigError("no NUMA node to pool memory on".into()));
        }
        let pu_nodes = nodes
            .iter()
            .enumerate()
            .flat_map(|(idx, (_, pus))| pus.iter().map(move |&pu| (pu, idx)))
            .collect();
        let nodes: Vec<NodePool> = nodes
            .iter()
            .map(|(node, _)| NodePool::new(*node, &config, &classes))
            .collect();
        let shared = Pools {
            config,
            classes,
            nodes,
            backing,
            pu_nodes,
            caches: Mutex::new(Vec::new()),
            trim_epoch: std::sync::OnceLock::new(),
            last_trim_ms: std::sync::atomic::AtomicU64::new(0),
        };
        Ok(PoolManager {
            shared: Arc::new(shared),
        })
    }

    /// A buffer of at least `size` bytes (empty; `capacity()` is its size class) from node
    /// `numa_preferred`, or when `None` from the node of the CPU the caller runs on. Falls back to
    /// the other nodes when that node is exhausted. Uses the shared queues (lock-free); workers
    /// should use their [`WorkerCache`] instead.
    pub fn get(&self, size: usize, numa_preferred: Option<u32>) -> Result<PooledBuf, PoolError> {
        let class = self.shared.class_for(size)?;
        let node_idx = match numa_preferred {
            Some(node) => self.shared.node_index(node)?,
            None => self.shared.current_node_index(),
        };
        self.shared.get(node_idx, class, true)
    }

    /// A cache for a worker thread whose home is NUMA node `node` (OS index). Create it on the
    /// thread that uses it (it is `!Send`).
    pub fn worker_cache(&self, node: u32) -> Result<WorkerCache, PoolError> {
        let node_idx = self.shared.node_index(node)?;
        Ok(WorkerCache::new(self.shared.clone(), node_idx))
    }

    /// The nodes (OS indexes) that have a pool, in topology order.
    pub fn nodes(&self) -> Vec<u32> {
        self.shared.nodes.iter().map(|n| n.node).collect()
    }

    /// The configuration in force.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Buffers in use, hits, misses, per node and size class.
    pub fn stats(&self) -> PoolStats {
        stats::snapshot(&self.shared)
    }

    /// Gives the pages of buffers that stayed free since the last call back to the system
    /// (all but a reserve per class; see `NodePool::trim`), on every node; returns the bytes
    /// given back. Call it periodically (the kernel path's workers do, every
    /// [`TRIM_PERIOD`]), so that memory a burst took returns after the burst, while a steady
    /// load keeps its buffers. No-op on DPDK memory (hugepages are pinned).
    pub fn trim(&self) -> usize {
        let keep_min = 16;
        self.shared
            .nodes
            .iter()
            .map(|node| node.trim(&*self.shared.backing, keep_min))
            .sum()
    }

    /// [`PoolManager::trim`], if [`TRIM_PERIOD`] has passed since the last trim by any caller
    /// (two relaxed loads otherwise): for every worker's tick to call.
    pub fn trim_if_due(&self, now: std::time::Instant) -> usize {
        let epoch = *self.shared.trim_epoch.get_or_init(|| now);
        let at = now.saturating_duration_since(epoch).as_millis() as u64;
        let last = self.shared.last_trim_ms.load(Relaxed);
        if at < last + TRIM_PERIOD.as_millis() as u64 {
            return 0;
        }
        if self
            .shared
            .last_trim_ms
            .compare_exchange(last, at, Relaxed, Relaxed)
            .is_err()
        {
            return 0; // another worker trims now
        }
        self.trim()
    }

    /// Gives every slab back to the backing, when every buffer is back in the pools (worker
    /// caches dropped); otherwise changes nothing and returns false. The pools stay usable (a
    /// later get takes fresh memory); counters are kept. For a data path that stops before its
    /// allocator does (DPDK: slabs must be freed before `rte_eal_cleanup`).
    pub fn release_memory(&self) -> bool {
        self.shared.nodes.iter().all(|node| node.release_slabs())
    }
}

impl std::fmt::Debug for PoolManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolManager")
            .field("nodes", &self.nodes())
            .field("config", self.config())
            .finish()
    }
}

impl Pools {
    fn class_for(&self, size: usize) -> Result<usize, PoolError> {
        self.classes.class_for(size).ok_or(PoolError::TooLarge {
            requested: size,
            max: self.classes.max_size(),
        })
    }

    fn node_index(&self, node: u32) -> Result<usize, PoolError> {
        self.nodes
            .iter()
            .position(|n| n.node == node)
            .ok_or(PoolError::UnknownNode(node))
    }

    fn current_node_index(&self) -> usize {
        current_cpu()
            .and_then(|cpu| self.pu_nodes.iter().find(|(pu, _)| *pu == cpu))
            .map_or(0, |&(_, idx)| idx)
    }

    /// Takes a buffer of `class` from the shared queues: node `first` (unless `try_first` is
    /// false, when the caller already found it exhausted), then the others.
    fn get(
        self: &Arc<Self>,
        first: usize,
        class: usize,
        try_first: bool,
    ) -> Result<PooledBuf, PoolError> {
        let others = (0..self.nodes.len()).filter(|&idx| idx != first);
        let first = std::iter::once(first).filter(|_| try_first);
        for node_idx in first.chain(others) {
            let node = &self.nodes[node_idx];
            let pool = &node.classes[class];
            let block = if let Some(block) = pool.free.pop() {
                pool.counters.hits.fetch_add(1, Relaxed);
                block
            } else {
                match node.grow(class, &self.config, &*self.backing) {
                    Ok(mut carved) => {
                        let block = carved.next().expect("a slab holds at least one buffer");
                        for extra in carved {
                            node.put(class, extra);
                        }
                        pool.counters.misses.fetch_add(1, Relaxed);
                        block
                    }
                    Err(PoolError::Exhausted { .. }) => {
                        pool.counters.exhausted.fetch_add(1, Relaxed);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            return Ok(PooledBuf::new(
                block,
                pool.size,
                class,
                node_idx,
                Home::Pools(self.clone()),
            ));
        }
        Err(PoolError::Exhausted {
            size: self.classes.size(class),
        })
    }

    /// Takes back a buffer handed out by [`Pools::get`].
    fn put(&self, node_idx: usize, class: usize, block: node::Block) {
        let node = &self.nodes[node_idx];
        node.put(class, block);
        node.classes[class].counters.puts.fetch_add(1, Relaxed);
    }

    fn lock_caches(&self) -> MutexGuard<'_, Vec<Arc<PoolCacheCounters>>> {
        self.caches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The CPU the calling thread runs on (Linux), for `numa_preferred: None`.
#[cfg(target_os = "linux")]
fn current_cpu() -> Option<u32> {
    // SAFETY: no arguments; returns -1 on failure.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

#[cfg(not(target_os = "linux"))]
fn current_cpu() -> Option<u32> {
    None
}

/// Checks a pool configuration without building pools.
pub(crate) fn check_config(config: &PoolConfig) -> Result<(), PoolConfigError> {
    config.size_classes().map(|_| ())
}
