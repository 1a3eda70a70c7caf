//! Pool statistics: a snapshot per node and size class.
//!
//! Counters live where they are written (shared atomics for the shared path, owner-written
//! counters in each worker cache) and are only summed here, when someone asks. A snapshot taken
//! while workers run is approximate; once they are quiet it is exact.

use std::sync::atomic::Ordering::Relaxed;

use super::Pools;

/// One size class on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Buffer size of the class.
    pub size: usize,
    /// Buffers carved from system memory so far (never shrinks).
    pub allocated: u64,
    /// Buffers handed out and not yet returned.
    pub in_use: u64,
    /// Free buffers in the node's shared queue (free buffers held by worker caches not
    /// included). Once every cache is dropped, `free_shared == allocated` means every buffer
    /// came back.
    pub free_shared: u64,
    /// Gets served from free buffers.
    pub hits: u64,
    /// Gets that needed fresh memory from the system.
    pub misses: u64,
    /// Gets that found this node's class at its limit (they may then have been served by
    /// another node).
    pub exhausted: u64,
    /// Bytes of free buffers given back to the system by trims ([`super::PoolManager::trim`]);
    /// the buffers stay in the pool.
    pub trimmed_bytes: u64,
}

/// One NUMA node's pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// The node (OS index).
    pub node: u32,
    /// Bytes taken from the system.
    pub reserved_bytes: usize,
    /// Of those, bytes bound to this node (see [`super::SystemBacking`]).
    pub bound_bytes: usize,
    /// The node's limit (`node_budget`).
    pub budget_bytes: usize,
    /// Per size class, smallest first.
    pub classes: Vec<ClassStats>,
}

impl NodeStats {
    /// Buffers in use on this node.
    pub fn in_use(&self) -> u64 {
        self.classes.iter().map(|c| c.in_use).sum()
    }
    /// Hits on this node.
    pub fn hits(&self) -> u64 {
        self.classes.iter().map(|c| c.hits).sum()
    }
    /// Misses on this node.
    pub fn misses(&self) -> u64 {
        self.classes.iter().map(|c| c.misses).sum()
    }
    /// The class of buffer size `size`, if the pool has it.
    pub fn class(&self, size: usize) -> Option<&ClassStats> {
        self.classes.iter().find(|c| c.size == size)
    }
}

/// Every node's pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Per node, in the topology's order.
    pub nodes: Vec<NodeStats>,
}

impl PoolStats {
    /// Buffers in use on all nodes.
    pub fn in_use(&self) -> u64 {
        self.nodes.iter().map(NodeStats::in_use).sum()
    }
    /// Hits on all nodes.
    pub fn hits(&self) -> u64 {
        self.nodes.iter().map(NodeStats::hits).sum()
    }
    /// Misses on all nodes.
    pub fn misses(&self) -> u64 {
        self.nodes.iter().map(NodeStats::misses).sum()
    }
    /// Exhausted gets on all nodes.
    pub fn exhausted(&self) -> u64 {
        self.nodes
            .iter()
            .flat_map(|n| &n.classes)
            .map(|c| c.exhausted)
            .sum()
    }
    /// The stats of node `node` (OS index).
    pub fn node(&self, node: u32) -> Option<&NodeStats> {
        self.nodes.iter().find(|n| n.node == node)
    }
}

pub(crate) fn snapshot(shared: &Pools) -> PoolStats {
    // Holding the registry keeps a retiring cache from being counted twice (or not at all).
    let caches = shared.lock_caches();
    let nodes = shared
        .nodes
        .iter()
        .enumerate()
        .map(|(idx, node)| {
            let classes = node
                .classes
                .iter()
                .enumerate()
                .map(|(class, pool)| {
                    let c = &pool.counters;
                    let (mut hits, mut misses, mut puts) = (
                        c.hits.load(Relaxed),
                        c.misses.load(Relaxed),
                        c.puts.load(Relaxed),
                    );
                    for cache in caches.iter().filter(|cache| cache.node_idx == idx) {
                        let cc = &cache.classes[class];
                        hits += cc.hits.load(Relaxed);
                        misses += cc.misses.load(Relaxed);
                        puts += cc.puts.load(Relaxed);
                    }
                    ClassStats {
                        size: pool.size,
                        allocated: pool.allocated.load(Relaxed) as u64,
                        in_use: (hits + misses).saturating_sub(puts),
                        free_shared: pool.free.len() as u64,
                        hits,
                        misses,
                        exhausted: c.exhausted.load(Relaxed),
                        trimmed_bytes: pool.trimmed_bytes.load(Relaxed),
                    }
                })
                .collect();
            let (reserved_bytes, bound_bytes) = node.reserved();
            NodeStats {
                node: node.node,
                reserved_bytes,
                bound_bytes,
                budget_bytes: node.budget(),
                classes,
            }
        })
        .collect();
    PoolStats { nodes }
}
