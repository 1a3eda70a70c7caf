//! `PoolManager::with_nodes` and `release_memory`: pools over given nodes, and slabs handed back
//! to the backing (their owners dropped) only once every buffer is home. The backing here hands
//! out real heap memory and counts the slabs still alive.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hioload_ws::pool::{Backing, PoolConfig, PoolError, PoolManager, Region};

/// Heap slabs; `live` counts those not yet dropped.
#[derive(Default)]
struct CountingBacking {
    live: Arc<AtomicUsize>,
}

/// A slab's owner: a 4 KiB-aligned boxed block, counted.
struct Slab {
    _mem: Vec<Page>,
    live: Arc<AtomicUsize>,
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

impl Drop for Slab {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backing for CountingBacking {
    fn allocate(&self, _node: u32, len: usize) -> io::Result<Region> {
        let mut mem: Vec<Page> = (0..len.div_ceil(4096)).map(|_| Page([0; 4096])).collect();
        let ptr = NonNull::new(mem.as_mut_ptr().cast::<u8>()).unwrap();
        self.live.fetch_add(1, Ordering::SeqCst);
        let owner = Slab {
            _mem: mem,
            live: self.live.clone(),
        };
        // SAFETY: `len` zeroed, 4 KiB-aligned bytes of a Vec that `owner` keeps (moving a Vec
        // does not move its heap buffer) and nothing else uses.
        Ok(unsafe { Region::new(ptr, len, false, owner) })
    }
}

#[test]
fn slabs_go_back_only_when_every_buffer_is_home() {
    let backing = Arc::new(CountingBacking::default());
    let live = backing.live.clone();
    let pools =
        PoolManager::with_nodes(&[(3, vec![]), (5, vec![])], PoolConfig::default(), backing)
            .unwrap();
    assert_eq!(pools.nodes(), vec![3, 5], "the given nodes, in order");
    assert!(matches!(
        pools.worker_cache(4),
        Err(PoolError::UnknownNode(4))
    ));

    let cache = pools.worker_cache(5).unwrap();
    let a = cache.get(3000, None).unwrap();
    let b = pools.get(100_000, Some(3)).unwrap();
    assert_eq!((a.node(), b.node()), (5, 3));
    assert_eq!(live.load(Ordering::SeqCst), 2);

    assert!(!pools.release_memory(), "two buffers are out");
    assert_eq!(live.load(Ordering::SeqCst), 2, "nothing freed");
    drop(b);
    assert!(!pools.release_memory(), "one is out (node 5)");
    drop(a);
    assert!(
        !pools.release_memory(),
        "a's block sits in the live worker cache, not the pool"
    );
    drop(cache);
    assert!(pools.release_memory());
    assert_eq!(live.load(Ordering::SeqCst), 0, "every slab dropped");
    let stats = pools.stats();
    assert_eq!(stats.in_use(), 0);
    assert!(stats.nodes.iter().all(|n| n.reserved_bytes == 0));
    assert_eq!(stats.misses(), 2, "counters kept");

    // Still usable: a get takes a fresh slab.
    let c = pools.get(3000, None).unwrap();
    assert_eq!(c.node(), 3, "no CPU listed: the first node");
    assert_eq!(live.load(Ordering::SeqCst), 1);
    drop(c);
    drop(pools);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
fn no_node_is_a_configuration_error() {
    let err = PoolManager::with_nodes(
        &[],
        PoolConfig::default(),
        Arc::new(CountingBacking::default()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no NUMA node"), "{err}");
}
