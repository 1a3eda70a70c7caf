//! One NUMA node's pool: a lock-free free queue per size class, and the slabs behind them.
//!
//! A buffer is a fixed-size block carved from a slab. Free blocks of a class wait in a
//! crossbeam `ArrayQueue` sized for every block the class may ever have, so returning one can
//! never fail. Taking fresh memory from the [`Backing`] (a miss) is the only step that locks, and
//! only this node's growth lock.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use crossbeam_queue::ArrayQueue;

use super::backing::{Backing, Region};
use super::config::{PoolConfig, PoolError, SizeClasses};

/// A free buffer: the start of a block of its class's size.
#[derive(Debug)]
pub(crate) struct Block(pub NonNull<u8>);

// SAFETY: a Block is exclusive ownership of a block of pool memory; any thread may hold it.
unsafe impl Send for Block {}

/// Counters of a (node, class) kept by the shared pool: gets and puts that bypassed a worker
/// cache, plus what retired caches left behind.
#[derive(Default)]
pub(crate) struct SharedCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub puts: AtomicU64,
    pub exhausted: AtomicU64,
}

pub(crate) struct ClassPool {
    pub size: usize,
    pub free: ArrayQueue<Block>,
    /// Blocks carved so far (only grows, under the node's growth lock).
    pub allocated: AtomicUsize,
    pub counters: SharedCounters,
    /// Free blocks in the queue at the last trim (see [`NodePool::trim`]).
    free_at_last_trim: AtomicUsize,
    /// Bytes given back to the system by trims (their blocks stay usable).
    pub trimmed_bytes: AtomicU64,
}

struct Growth {
    /// Every slab of the node; dropped (freed) with the pool, when no buffer or cache is left.
    slabs: Vec<Region>,
    reserved: usize,
    bound: usize,
}

pub(crate) struct NodePool {
    /// OS index of the node.
    pub node: u32,
    pub classes: Vec<ClassPool>,
    budget: usize,
    growth: Mutex<Growth>,
}

/// Fresh blocks from a new slab: `count` blocks of `size` bytes from `base`.
pub(crate) struct Carved {
    base: NonNull<u8>,
    size: usize,
    count: usize,
}

impl Iterator for Carved {
    type Item = Block;
    fn next(&mut self) -> Option<Block> {
        if self.count == 0 {
            return None;
        }
        let block = Block(self.base);
        self.count -= 1;
        // SAFETY: while count > 0 the next block start is inside the slab (or one past its end
        // after the last block, which is never dereferenced).
        self.base = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(self.size)) };
        Some(block)
    }
}

impl NodePool {
    pub fn new(node: u32, config: &PoolConfig, classes: &SizeClasses) -> NodePool {
        let classes = (0..classes.len())
            .map(|class| {
                let size = classes.size(class);
                ClassPool {
                    size,
                    free: ArrayQueue::new(config.class_limit(size)),
                    allocated: AtomicUsize::new(0),
                    counters: SharedCounters::default(),
                    free_at_last_trim: AtomicUsize::new(0),
                    trimmed_bytes: AtomicU64::new(0),
                }
            })
            .collect();
        NodePool {
            node,
            classes,
            budget: config.node_budget,
            growth: Mutex::new(Growth {
                slabs: Vec::new(),
                reserved: 0,
                bound: 0,
            }),
        }
    }

    /// Returns a free block to the shared queue.
    pub fn put(&self, class: usize, block: Block) {
        if self.classes[class].free.push(block).is_err() {
            // The queue has room for every block the class may ever allocate.
            unreachable!("buffer pool free queue overflow");
        }
    }

    /// Takes a new slab for `class` from the backing: up to `config.slab_buffers` blocks, fewer
    /// if the class limit or the node budget is close. `Exhausted` when not even one fits.
    pub fn grow(
        &self,
        class: usize,
        config: &PoolConfig,
        backing: &dyn Backing,
    ) -> Result<Carved, PoolError> {
        let pool = &self.classes[class];
        let size = pool.size;
        let mut growth = self
            .growth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let allocated = pool.allocated.load(Relaxed);
        let room_in_class = pool.free.capacity() - allocated;
        let room_in_budget = (self.budget - growth.reserved) / size;
        let count = config
            .slab_buffers(size)
            .min(room_in_class)
            .min(room_in_budget);
        if count == 0 {
            return Err(PoolError::Exhausted { size });
        }
        let len = count * size;
        let region = backing
            .allocate(self.node, len)
            .map_err(|e| PoolError::Backing(e.to_string()))?;
        let carved = Carved {
            base: region.ptr(),
            size,
            count,
        };
        growth.reserved += len;
        if region.is_bound() {
            growth.bound += len;
        }
        growth.slabs.push(region);
        pool.allocated.store(allocated + count, Relaxed);
        Ok(carved)
    }

    /// Frees every slab of this node when all its blocks are back in the shared queues; else
    /// puts back what it took and returns false.
    pub fn release_slabs(&self) -> bool {
        let mut growth = self
            .growth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Growth is locked, so `allocated` cannot change; a block is either in its queue or
        // held by someone. Not the hot path: the Vecs are fine here.
        let mut taken: Vec<Vec<Block>> = Vec::with_capacity(self.classes.len());
        let mut all_back = true;
        for pool in &self.classes {
            let mut blocks = Vec::with_capacity(pool.free.len());
            while let Some(block) = pool.free.pop() {
                blocks.push(block);
            }
            all_back &= blocks.len() == pool.allocated.load(Relaxed);
            taken.push(blocks);
        }
        if !all_back {
            for (class, blocks) in taken.into_iter().enumerate() {
                for block in blocks {
                    self.put(class, block);
                }
            }
            return false;
        }
        // No block of any slab is reachable any more: the slabs can go.
        drop(taken);
        for pool in &self.classes {
            pool.allocated.store(0, Relaxed);
        }
        growth.slabs.clear();
        growth.reserved = 0;
        growth.bound = 0;
        true
    }

    /// Gives the memory of idle free blocks back to the system, with hysteresis: of the blocks
    /// free now that were free at the last trim too (at least that many stayed free for a
    /// whole period), all but a reserve of a quarter of the class (at least `keep_min` blocks)
    /// have their pages discarded ([`Backing::discard`]). The blocks stay in the pool; using
    /// one again faults fresh pages in. Returns the bytes given back.
    pub fn trim(&self, backing: &dyn Backing, keep_min: usize) -> usize {
        let mut given = 0;
        for pool in &self.classes {
            let free = pool.free.len();
            let stayed_free = free.min(pool.free_at_last_trim.swap(free, Relaxed));
            let keep = (pool.allocated.load(Relaxed) / 4).max(keep_min);
            let mut bytes = 0;
            for _ in 0..stayed_free.saturating_sub(keep) {
                let Some(block) = pool.free.pop() else {
                    break;
                };
                bytes += backing.discard(block.0, pool.size);
                if pool.free.push(block).is_err() {
                    unreachable!("buffer pool free queue overflow");
                }
            }
            pool.trimmed_bytes.fetch_add(bytes as u64, Relaxed);
            given += bytes;
        }
        given
    }

    /// (reserved bytes, bytes bound to the node).
    pub fn reserved(&self) -> (usize, usize) {
        let growth = self
            .growth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (growth.reserved, growth.bound)
    }

    pub fn budget(&self) -> usize {
        self.budget
    }
}
