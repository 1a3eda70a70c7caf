//! Where pool memory comes from: the seam between the pools and an allocator.
//!
//! Pools take memory in slabs, one slab per refill of a size class, and keep it until the pool
//! manager is dropped. A slab is a [`Region`]: a pointer and length plus the object that owns the
//! memory, so dropping the region frees it through whatever allocator made it.
//! [`SystemBacking`] maps anonymous memory, binds it to the node through hwloc and touches every
//! page at once, so the hot path never page-faults and the pages sit on the node. In DPDK mode a
//! backing that wraps `hioload_dpdk::NumaBuf` (`rte_zmalloc_socket` / `rte_free`) drops in here.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::topology::Topology;

/// A slab of memory handed to a pool. Dropping it releases the memory (by dropping its owner).
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    bound: bool,
    _owner: Box<dyn Send>,
}

// SAFETY: a Region is exclusive ownership of its memory (and a `Send` owner); nothing ties it to
// the thread that made it.
unsafe impl Send for Region {}

impl Region {
    /// Wraps memory that `owner` keeps alive and frees when dropped.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must be zero-filled (or otherwise initialised), aligned to 4 KiB,
    /// used by nothing else, and stay valid and in place until `owner` is dropped (moving the
    /// owner must not move the memory, as with a heap allocation).
    pub unsafe fn new(
        ptr: NonNull<u8>,
        len: usize,
        bound: bool,
        owner: impl Send + 'static,
    ) -> Region {
        Region {
            ptr,
            len,
            bound,
            _owner: Box::new(owner),
        }
    }

    /// Start of the memory.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the memory is bound to the node it was asked for.
    pub fn is_bound(&self) -> bool {
        self.bound
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("bound", &self.bound)
            .finish()
    }
}

/// A source of node-local memory for the pools.
pub trait Backing: Send + Sync + 'static {
    /// Allocates `len` bytes (a multiple of 2 KiB) on NUMA node `node` (OS index).
    fn allocate(&self, node: u32, len: usize) -> io::Result<Region>;

    /// Gives the physical pages of a free block (`len` bytes at `ptr`, inside a region this
    /// backing allocated) back to the system, keeping the addresses: a later write faults
    /// fresh zeroed pages in (on the same node). Returns the bytes given back; 0 when the
    /// backing cannot (DPDK hugepages are pinned) or the block holds no whole page.
    fn discard(&self, ptr: NonNull<u8>, len: usize) -> usize {
        let _ = (ptr, len);
        0
    }
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
        let mapping = Mapping {
            ptr: map_zeroed(len)?,
            len,
        };
        let bound = if self.topology.is_this_system() {
            match self.topology.bind_memory(mapping.ptr.as_ptr(), len, node) {
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
        prefault(mapping.ptr, len);
        let ptr = mapping.ptr;
        // SAFETY: a fresh zero-filled, page-aligned mapping of `len` bytes, owned by `mapping`
        // (unmapped when it drops).
        Ok(unsafe { Region::new(ptr, len, bound, mapping) })
    }

    #[cfg(unix)]
    fn discard(&self, ptr: NonNull<u8>, len: usize) -> usize {
        const PAGE: usize = 4096;
        let start = (ptr.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (ptr.as_ptr() as usize + len) & !(PAGE - 1);
        if end <= start {
            return 0;
        }
        // SAFETY: [start, end) lies inside a free block of a mapping this backing made (the
        // caller owns the block); MADV_DONTNEED on private anonymous memory only drops its
        // pages, the mapping (and its NUMA policy) stays.
        let ret =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if ret == 0 {
            end - start
        } else {
            0
        }
    }
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: owned memory, freed by whichever thread drops it.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the Region that owns us is being dropped, so nothing uses it.
        unsafe { unmap(self.ptr, self.len) }
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
