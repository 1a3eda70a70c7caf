//! A worker's own stock of buffers: the lock-free, atomic-free hot path.
//!
//! Each worker thread owns one [`WorkerCache`] for its NUMA node: a free list per size class that
//! only that thread touches. A get pops from it; a dropped buffer pushes back onto it. Only when
//! the list is empty does the cache refill (half its capacity) from the node's shared queue, and
//! only when it is full does it spill half back, so the shared, contended queues are touched once
//! per many buffers. A cache and its buffers stay on their thread (`!Send`): that is what makes
//! plain `Vec` pushes and pops safe here.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::buf::{Home, PooledBuf};
use super::config::PoolError;
use super::node::Block;
use super::Pools;

/// Counters of one cache, per size class. Written only by the owning thread (plain load + store,
/// no atomic read-modify-write); read by [`super::PoolManager::stats`].
pub(crate) struct PoolCacheCounters {
    pub node_idx: usize,
    pub classes: Vec<ClassCounters>,
}

#[derive(Default)]
pub(crate) struct ClassCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub puts: AtomicU64,
}

/// Increments a counter that only the calling thread writes.
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

pub(crate) struct CacheInner {
    shared: Arc<Pools>,
    node_idx: usize,
    /// Free blocks per class; each Vec is allocated once with room for its capacity.
    free: RefCell<Vec<Vec<Block>>>,
    capacity: Vec<usize>,
    counters: Arc<PoolCacheCounters>,
}

/// One worker's cache of buffers from its NUMA node's pool. Create it on the worker thread
/// ([`super::PoolManager::worker_cache`]); buffers it hands out return to it when dropped.
pub struct WorkerCache {
    inner: Rc<CacheInner>,
}

impl WorkerCache {
    pub(crate) fn new(shared: Arc<Pools>, node_idx: usize) -> WorkerCache {
        let classes = shared.classes.len();
        let capacity: Vec<usize> = (0..classes)
            .map(|class| shared.config.cache_capacity(shared.classes.size(class)))
            .collect();
        let free = capacity
            .iter()
            .map(|&cap| Vec::with_capacity(cap))
            .collect();
        let counters = Arc::new(PoolCacheCounters {
            node_idx,
            classes: (0..classes).map(|_| ClassCounters::default()).collect(),
        });
        shared.lock_caches().push(counters.clone());
        WorkerCache {
            inner: Rc::new(CacheInner {
                shared,
                node_idx,
                free: RefCell::new(free),
                capacity,
                counters,
            }),
        }
    }

    /// A buffer of at least `size` bytes (empty, `capacity()` = its size class), from
    /// `numa_preferred` or, when `None`, from this cache's node. Falls back to other nodes when
    /// the preferred one is exhausted. No lock and no atomic read-modify-write when this cache
    /// has a free buffer of the class.
    pub fn get(&self, size: usize, numa_preferred: Option<u32>) -> Result<PooledBuf, PoolError> {
        let shared = &self.inner.shared;
        let class = shared.class_for(size)?;
        let node_idx = match numa_preferred {
            Some(node) => shared.node_index(node)?,
            None => self.inner.node_idx,
        };
        if node_idx != self.inner.node_idx {
            return shared.get(node_idx, class, true);
        }
        match self.inner.take(class) {
            Ok(block) => Ok(PooledBuf::new(
                block,
                shared.classes.size(class),
                class,
                node_idx,
                Home::Cache(self.inner.clone()),
            )),
            // This node is at its limit: try the others.
            Err(PoolError::Exhausted { .. }) => shared.get(node_idx, class, false),
            Err(e) => Err(e),
        }
    }

    /// The NUMA node (OS index) this cache serves.
    pub fn node(&self) -> u32 {
        self.inner.shared.nodes[self.inner.node_idx].node
    }

    /// Free buffers of the size class for `size` that this cache holds right now.
    pub fn cached(&self, size: usize) -> usize {
        match self.inner.shared.class_for(size) {
            Ok(class) => self.inner.free.borrow()[class].len(),
            Err(_) => 0,
        }
    }

    /// Most free buffers of the size class for `size` this cache keeps before spilling.
    pub fn capacity(&self, size: usize) -> usize {
        self.inner
            .shared
            .class_for(size)
            .map_or(0, |class| self.inner.capacity[class])
    }
}

impl std::fmt::Debug for WorkerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCache")
            .field("node", &self.node())
            .finish_non_exhaustive()
    }
}

impl CacheInner {
    /// A free block of `class` from this node: the local list, else a refill from the shared
    /// queue, else a new slab. `Exhausted` when the node is at its limit.
    fn take(&self, class: usize) -> Result<Block, PoolError> {
        let counters = &self.counters.classes[class];
        let mut free = self.free.borrow_mut();
        let local = &mut free[class];
        if let Some(block) = local.pop() {
            bump(&counters.hits);
            return Ok(block);
        }
        let node = &self.shared.nodes[self.node_idx];
        let queue = &node.classes[class].free;
        if let Some(block) = queue.pop() {
            // Refill up to half the capacity, so the next gets are local again.
            let refill = self.capacity[class] / 2;
            while local.len() < refill {
                match queue.pop() {
                    Some(extra) => local.push(extra),
                    None => break,
                }
            }
            bump(&counters.hits);
            return Ok(block);
        }
        let mut carved = match node.grow(class, &self.shared.config, &*self.shared.backing) {
            Ok(carved) => carved,
            Err(e) => {
                if let PoolError::Exhausted { .. } = e {
                    node.classes[class].counters.exhausted.fetch_add(1, Relaxed);
                }
                return Err(e);
            }
        };
        let block = carved.next().expect("a slab holds at least one buffer");
        for extra in carved {
            if local.len() < self.capacity[class] {
                local.push(extra);
            } else {
                node.put(class, extra);
            }
        }
        bump(&counters.misses);
        Ok(block)
    }

    /// Takes back a block this cache handed out; spills half the list to the shared queue when
    /// full.
    pub(crate) fn put(&self, class: usize, block: Block) {
        bump(&self.counters.classes[class].puts);
        let capacity = self.capacity[class];
        let node = &self.shared.nodes[self.node_idx];
        let mut free = self.free.borrow_mut();
        let local = &mut free[class];
        if capacity == 0 {
            node.put(class, block);
            return;
        }
        if local.len() >= capacity {
            for _ in 0..(capacity / 2).max(1) {
                if let Some(spilled) = local.pop() {
                    node.put(class, spilled);
                }
            }
        }
        local.push(block);
    }

    pub(crate) fn shared(&self) -> &Pools {
        &self.shared
    }
}

impl Drop for CacheInner {
    /// The last buffer of a dropped cache is gone: its free blocks go back to the shared queues,
    /// and its counters are folded into the node's, so that stats stay whole.
    fn drop(&mut self) {
        let node = &self.shared.nodes[self.node_idx];
        for (class, local) in self.free.get_mut().iter_mut().enumerate() {
            for block in local.drain(..) {
                node.put(class, block);
            }
        }
        let mut caches = self.shared.lock_caches();
        for (class, counters) in self.counters.classes.iter().enumerate() {
            let shared = &node.classes[class].counters;
            shared.hits.fetch_add(counters.hits.load(Relaxed), Relaxed);
            shared
                .misses
                .fetch_add(counters.misses.load(Relaxed), Relaxed);
            shared.puts.fetch_add(counters.puts.load(Relaxed), Relaxed);
        }
        caches.retain(|c| !Arc::ptr_eq(c, &self.counters));
    }
}
