//! The allocator seam: a pool built on another `Backing` asks it for memory per node and frees
//! every region once the manager and all its buffers are gone.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use hioload_ws::pool::{Backing, PoolConfig, PoolManager, Region};
use hioload_ws::topology::Topology;

/// Heap memory from the global allocator; records requests and counts frees.
#[derive(Default)]
struct HeapBacking {
    requests: Mutex<Vec<(u32, usize)>>,
    freed: Arc<AtomicUsize>,
}

struct HeapBlock {
    ptr: NonNull<u8>,
    layout: Layout,
    freed: Arc<AtomicUsize>,
}

// SAFETY: owned heap memory.
unsafe impl Send for HeapBlock {}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `allocate`, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
        self.freed.fetch_add(1, SeqCst);
    }
}

impl Backing for HeapBacking {
    fn allocate(&self, node: u32, len: usize) -> std::io::Result<Region> {
        self.requests.lock().unwrap().push((node, len));
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: len > 0.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap();
        let owner = HeapBlock {
            ptr,
            layout,
            freed: self.freed.clone(),
        };
        // SAFETY: fresh zeroed heap memory of `len` bytes, 4 KiB aligned, owned by `owner`.
        Ok(unsafe { Region::new(ptr, len, true, owner) })
    }
}

#[test]
fn custom_backing_supplies_and_gets_back_every_slab() {
    let topo = Topology::synthetic("package:2 numa:1 core:1 pu:1").unwrap();
    let backing = Arc::new(HeapBacking::default());
    let freed = backing.freed.clone();
    let config = PoolConfig {
        max_buffer: 64 << 10,
        node_budget: 1 << 20,
        slab_bytes: 64 << 10,
        ..PoolConfig::default()
    };
    let manager = PoolManager::with_backing(&topo, config, backing.clone()).unwrap();

    let a = manager.get(2048, Some(1)).unwrap();
    let b = manager.get(64 << 10, Some(0)).unwrap();
    assert_eq!(
        *backing.requests.lock().unwrap(),
        vec![(1, 64 << 10), (0, 64 << 10)]
    );
    let stats = manager.stats();
    assert_eq!(
        stats.node(1).unwrap().bound_bytes,
        64 << 10,
        "the backing said bound"
    );

    // Buffers keep the pool (and its memory) alive after the manager handle is gone.
    drop(manager);
    assert_eq!(freed.load(SeqCst), 0);
    drop(a);
    assert_eq!(freed.load(SeqCst), 0);
    drop(b);
    assert_eq!(freed.load(SeqCst), 2);
}
