//! Pool memory from DPDK's hugepage heap, for the DPDK data path.
//!
//! On that path the buffers a connection holds (partial frames, request heads) should sit in
//! the same hugepage memory as the packets, on the socket of the lcores using them. Each slab is
//! a `NumaBuf` (`rte_zmalloc_socket` on the requested socket only; `rte_free` when the slab
//! drops). The node numbers the pools use are DPDK socket ids, which are Linux NUMA node ids.
//!
//! The allocator is a live DPDK object: while it (or any slab) exists the EAL is not cleaned up.
//! The runtime therefore returns the slabs (`PoolManager::release_memory`) and [`closes`]
//! the backing before it drops the EAL.
//!
//! [`closes`]: DpdkBacking::close

use std::io;
use std::ptr::NonNull;
use std::sync::Mutex;

use hioload_dpdk::{NumaAllocator, SocketId};

use super::backing::{Backing, Region};

/// Slabs from `rte_zmalloc_socket` on the requested socket.
pub struct DpdkBacking {
    /// `None` once closed. Locked only when a pool grows (a miss), never on the hot path.
    allocator: Mutex<Option<NumaAllocator>>,
}

impl DpdkBacking {
    /// A backing over this EAL's heap.
    pub fn new(allocator: NumaAllocator) -> DpdkBacking {
        DpdkBacking {
            allocator: Mutex::new(Some(allocator)),
        }
    }

    /// Lets the EAL go: later allocations fail. Slabs already taken stay valid until freed.
    pub fn close(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<NumaAllocator>> {
        self.allocator
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Backing for DpdkBacking {
    fn allocate(&self, node: u32, len: usize) -> io::Result<Region> {
        let guard = self.lock();
        let allocator = guard
            .as_ref()
            .ok_or_else(|| io::Error::other("the DPDK data path has stopped"))?;
        let socket = i32::try_from(node).map_err(io::Error::other)?;
        let mut buf = allocator
            .zeroed(len, 4096, SocketId(socket))
            .map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e.to_string()))?;
        // On hugepages the memory is the socket's own; with --no-huge DPDK takes ordinary pages
        // wherever the kernel puts them and only labels them socket 0.
        let bound = allocator.has_hugepages();
        let ptr = NonNull::from(&mut buf[..]).cast::<u8>();
        // SAFETY: `len` zeroed bytes aligned to 4 KiB, owned by `buf` alone (a heap allocation
        // that does not move with `buf`) and freed when it drops.
        Ok(unsafe { Region::new(ptr, len, bound, buf) })
    }
}
