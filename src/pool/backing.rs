//! Where pool memory comes from: the seam between the pools and an allocator.
//!
//! Pools take memory in slabs, one slab per refill of a size class, and keep it until the pool
//! manager is dropped. [`SystemBacking`] maps anonymous memory, binds it to the node through hwloc
//! and touches every page at once, so the hot path never page-faults and the pages sit on the
//! node. In DPDK mode a backing over `rte_zmalloc_socket` / `rte_free` drops in here unchanged.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::topology::Topology;

/// A slab of memory handed to a pool.
#[derive(Debug)]
pub struct Region {
    /// Start of the memory; aligned to at least 4 KiB.
    pub ptr: NonNull<u8>,
    /// Length in bytes.
    pub len: usize,
    /// Whether the memory is bound to the node it was asked for.
    pub bound: bool,
}

// SAFETY: a Region is an owned allocation; nothing ties it to the thread that made it.
unsafe impl Send for Region {}

/// A source of node-local memory for the pools.
///
/// Implementations must return zero-filled (initialised) memory, aligned to 4 KiB, that stays
/// valid until passed to [`Backing::release`]: pools hand it out as `&mut [u8]`.
pub trait Backing: Send + Sync + 'static {
    /// Allocates `len` bytes on NUMA node `node` (OS index).
    fn allocate(&self, node: u32, len: usize) -> io::Result<Region>;

    /// Returns a region to the system.
    ///
    /// # Safety
    /// `region` came from this backing's `allocate` and no reference into it remains.
    unsafe fn release(&self, region: Region);
}

/// Anonymous memory bound to its node with hwloc (`hwloc_set_area_membind`, non-strict BIND; on
/// Linux `mbind(MPOL_PREFERRED[_MANY])`), then touched page by page so that it is resident there.
///
/// When binding is impossible (synthetic topology, or a kernel/sandbox without `mbind`) the
/// region is reported unbound; its pages then land where the allocating thread runs (first
/// touch), which for a worker cache is the pinned worker's own node.
pub struct SystemBacking {
    topology: Topology,
    warned: AtomicBool,
}

impl SystemBacking {
    /// A backing that binds through `topology` when it is the running machine.
    pub fn new(topology: &Topology) -> SystemBacking {
        SystemBacking {
            topology: topology.clone(),
            warned: AtomicBool::new(false),
        }
    }
}

impl Backing for SystemBacking {
    fn allocate(&self, node: u32, len: usize) -> io::Result<Region> {
        let ptr = map_zeroed(len)?;
        let bound = if self.topology.is_this_system() {
            match self.topology.bind_memory(ptr.as_ptr(), len, node) {
                Ok(()) => true,
                Err(e) => {
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!("buffer pool memory cannot be bound to NUMA node {node}: {e}; using first-touch placement");
                    }
                    false
                }
            }
        } else {
            false
        };
        prefault(ptr, len);
        Ok(Region { ptr, len, bound })
    }

    unsafe fn release(&self, region: Region) {
        // SAFETY: per this function's contract, `region` is ours and unused.
        unsafe { unmap(region.ptr, region.len) }
    }
}

/// Writes one zero byte per page, so the pages are allocated now (on the bound node) instead of
/// on the hot path.
fn prefault(ptr: NonNull<u8>, len: usize) {
    for offset in (0..len).step_by(4096) {
        // SAFETY: offset < len, inside the fresh mapping; writing zero keeps it zero-filled.
        unsafe { ptr.as_ptr().add(offset).write_volatile(0) };
    }
}

#[cfg(unix)]
fn map_zeroed(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: anonymous private mapping, no file, no fixed address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

#[cfg(unix)]
unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller guarantees [ptr, ptr+len) is one of our mappings and unused.
    unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
}

#[cfg(not(unix))]
fn map_zeroed(len: usize) -> io::Result<NonNull<u8>> {
    let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(io::Error::other)?;
    // SAFETY: len > 0 (pools never ask for empty slabs).
    NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
        .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
}

#[cfg(not(unix))]
unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    let layout =
        std::alloc::Layout::from_size_align(len, 4096).expect("layout was valid at allocation");
    // SAFETY: allocated by map_zeroed with this layout; the caller guarantees it is unused.
    unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
}
