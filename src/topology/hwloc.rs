//! The few hwloc 2.x calls the facade needs, declared by hand.
//!
//! Why not the `hwloc2` crate: its latest release (2.2.0) panics when asked for NUMA nodes
//! (`objects_with_type(NUMANode)`; hwloc 2 keeps memory objects at the virtual depth -3), its mirror
//! of `struct hwloc_obj` lacks `symmetric_subtree`, and it exposes neither
//! `hwloc_topology_set_synthetic` (only the process-wide `HWLOC_SYNTHETIC` variable, which parallel
//! tests cannot share) nor memory binding. Those are exactly the calls we need, so this module
//! declares a dozen functions of the stable hwloc 2 ABI (`libhwloc.so.15`, hwloc >= 2.0) plus the
//! leading fields of `struct hwloc_obj`, and wraps them in [`Hwloc`], a loaded, read-only topology.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::io;
use std::ptr::NonNull;

#[repr(C)]
struct RawTopology {
    _opaque: [u8; 0],
}

#[repr(C)]
struct RawBitmap {
    _opaque: [u8; 0],
}

/// The leading fields of `struct hwloc_obj` (hwloc.h, 2.x), up to `nodeset`. We only ever read
/// objects through pointers hwloc hands out, so the trailing fields need not be declared.
#[repr(C)]
#[allow(dead_code)] // declared for the layout; only some fields are read
struct RawObj {
    obj_type: c_int,
    subtype: *mut c_char,
    os_index: c_uint,
    name: *mut c_char,
    total_memory: u64,
    attr: *mut c_void,
    depth: c_int,
    logical_index: c_uint,
    next_cousin: *mut RawObj,
    prev_cousin: *mut RawObj,
    parent: *mut RawObj,
    sibling_rank: c_uint,
    next_sibling: *mut RawObj,
    prev_sibling: *mut RawObj,
    arity: c_uint,
    children: *mut *mut RawObj,
    first_child: *mut RawObj,
    last_child: *mut RawObj,
    symmetric_subtree: c_int,
    memory_arity: c_uint,
    memory_first_child: *mut RawObj,
    io_arity: c_uint,
    io_first_child: *mut RawObj,
    misc_arity: c_uint,
    misc_first_child: *mut RawObj,
    cpuset: *mut RawBitmap,
    complete_cpuset: *mut RawBitmap,
    nodeset: *mut RawBitmap,
}

// hwloc_obj_type_t values (hwloc.h, 2.x).
const OBJ_CORE: c_int = 2;
const OBJ_PU: c_int = 3;
const OBJ_NUMANODE: c_int = 13;
// hwloc_membind_policy_t / hwloc_membind_flags_t values.
const MEMBIND_BIND: c_int = 2;
const MEMBIND_BYNODESET: c_int = 1 << 5;

#[link(name = "hwloc")]
extern "C" {
    fn hwloc_topology_init(topology: *mut *mut RawTopology) -> c_int;
    fn hwloc_topology_set_synthetic(
        topology: *mut RawTopology,
        description: *const c_char,
    ) -> c_int;
    fn hwloc_topology_load(topology: *mut RawTopology) -> c_int;
    fn hwloc_topology_destroy(topology: *mut RawTopology);
    fn hwloc_topology_is_thissystem(topology: *mut RawTopology) -> c_int;
    fn hwloc_get_type_depth(topology: *mut RawTopology, obj_type: c_int) -> c_int;
    fn hwloc_get_nbobjs_by_depth(topology: *mut RawTopology, depth: c_int) -> c_uint;
    fn hwloc_get_obj_by_depth(topology: *mut RawTopology, depth: c_int, idx: c_uint)
        -> *mut RawObj;
    fn hwloc_bitmap_alloc() -> *mut RawBitmap;
    fn hwloc_bitmap_free(bitmap: *mut RawBitmap);
    fn hwloc_bitmap_only(bitmap: *mut RawBitmap, id: c_uint) -> c_int;
    fn hwloc_bitmap_next(bitmap: *const RawBitmap, prev: c_int) -> c_int;
    fn hwloc_set_area_membind(
        topology: *mut RawTopology,
        addr: *const c_void,
        len: usize,
        set: *const RawBitmap,
        policy: c_int,
        flags: c_int,
    ) -> c_int;
    fn hwloc_get_area_memlocation(
        topology: *mut RawTopology,
        addr: *const c_void,
        len: usize,
        set: *mut RawBitmap,
        flags: c_int,
    ) -> c_int;
}

/// One processing unit as hwloc reports it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawPu {
    /// OS index (the number `sched_setaffinity` and `/proc/cpuinfo` use).
    pub os_index: u32,
    /// Logical index of the enclosing core, if hwloc knows it.
    pub core: Option<u32>,
    /// OS index of the first NUMA node local to this PU.
    pub node: Option<u32>,
}

/// A loaded hwloc topology. Read-only after loading, which hwloc documents as safe to share
/// between threads (binding calls only read it).
pub(crate) struct Hwloc {
    raw: NonNull<RawTopology>,
}

// SAFETY: the topology is never modified after `load`; hwloc's read-only and binding functions may
// be called concurrently on a loaded topology.
unsafe impl Send for Hwloc {}
// SAFETY: as above.
unsafe impl Sync for Hwloc {}

impl Hwloc {
    /// Discovers the machine this process runs on.
    pub fn load_system() -> io::Result<Hwloc> {
        Self::load(None)
    }

    /// Builds a synthetic topology from an hwloc description such as
    /// `"package:2 numa:1 core:2 pu:1"`.
    pub fn load_synthetic(description: &str) -> io::Result<Hwloc> {
        let c = CString::new(description)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in description"))?;
        Self::load(Some(&c))
    }

    fn load(synthetic: Option<&CString>) -> io::Result<Hwloc> {
        let mut raw: *mut RawTopology = std::ptr::null_mut();
        // SAFETY: hwloc_topology_init writes a fresh topology pointer into `raw`.
        if unsafe { hwloc_topology_init(&mut raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = NonNull::new(raw).ok_or_else(|| io::Error::other("hwloc_topology_init: null"))?;
        // From here on `topology` owns `raw` and destroys it on every error path.
        let topology = Hwloc { raw };
        if let Some(description) = synthetic {
            // SAFETY: valid, not yet loaded topology; NUL-terminated description.
            if unsafe { hwloc_topology_set_synthetic(raw.as_ptr(), description.as_ptr()) } != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "hwloc rejected the synthetic topology description",
                ));
            }
        }
        // SAFETY: valid, configured, not yet loaded topology.
        if unsafe { hwloc_topology_load(raw.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(topology)
    }

    /// Whether the topology describes the running machine (false for synthetic ones), i.e.
    /// whether binding memory or threads through it means anything.
    pub fn is_this_system(&self) -> bool {
        // SAFETY: loaded topology.
        unsafe { hwloc_topology_is_thissystem(self.raw.as_ptr()) == 1 }
    }

    /// OS indexes of the NUMA nodes, in logical order.
    pub fn numa_nodes(&self) -> Vec<u32> {
        self.objects(OBJ_NUMANODE).map(|obj| obj.os_index).collect()
    }

    /// Every processing unit, in logical order.
    pub fn processing_units(&self) -> Vec<RawPu> {
        self.objects(OBJ_PU)
            .map(|pu| RawPu {
                os_index: pu.os_index,
                core: core_of(pu),
                node: first_bit(pu.nodeset),
            })
            .collect()
    }

    /// Binds the pages of `[addr, addr + len)` to NUMA node `node` (policy BIND, not strict: on
    /// Linux hwloc turns this into `mbind(MPOL_PREFERRED)`, or `MPOL_PREFERRED_MANY` on Linux
    /// 5.15 and later, so a full node falls back rather than failing). Pages already touched are
    /// not moved, so bind before first touch.
    pub fn bind_area(&self, addr: *const u8, len: usize, node: u32) -> io::Result<()> {
        let set = OwnedBitmap::only(node)?;
        // SAFETY: loaded topology, valid bitmap; hwloc only changes the kernel's policy for the
        // range and does not dereference it.
        let rc = unsafe {
            hwloc_set_area_membind(
                self.raw.as_ptr(),
                addr.cast(),
                len,
                set.0.as_ptr(),
                MEMBIND_BIND,
                MEMBIND_BYNODESET,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// NUMA nodes holding the (touched) pages of `bytes`.
    pub fn area_location(&self, bytes: &[u8]) -> io::Result<Vec<u32>> {
        let set = OwnedBitmap::new()?;
        // SAFETY: loaded topology, valid bitmap, `bytes` is a live allocation.
        let rc = unsafe {
            hwloc_get_area_memlocation(
                self.raw.as_ptr(),
                bytes.as_ptr().cast(),
                bytes.len(),
                set.0.as_ptr(),
                MEMBIND_BYNODESET,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(bits(set.0.as_ptr()).collect())
    }

    fn objects(&self, obj_type: c_int) -> impl Iterator<Item = &RawObj> + '_ {
        let topo = self.raw.as_ptr();
        // SAFETY: loaded topology; depth lookups are plain reads.
        let depth = unsafe { hwloc_get_type_depth(topo, obj_type) };
        // SAFETY: as above (an unknown depth yields 0 objects).
        let count = unsafe { hwloc_get_nbobjs_by_depth(topo, depth) };
        (0..count).filter_map(move |idx| {
            // SAFETY: idx < count; objects live as long as the topology, which `self` borrows.
            unsafe { hwloc_get_obj_by_depth(topo, depth, idx).as_ref() }
        })
    }
}

impl Drop for Hwloc {
    fn drop(&mut self) {
        // SAFETY: we own the topology and nothing borrows it any more.
        unsafe { hwloc_topology_destroy(self.raw.as_ptr()) }
    }
}

fn core_of(pu: &RawObj) -> Option<u32> {
    let mut obj = pu.parent;
    // SAFETY: parent pointers are null or point at objects of the same live topology.
    while let Some(o) = unsafe { obj.as_ref() } {
        if o.obj_type == OBJ_CORE {
            return Some(o.logical_index);
        }
        obj = o.parent;
    }
    None
}

fn first_bit(set: *const RawBitmap) -> Option<u32> {
    if set.is_null() {
        return None;
    }
    bits(set).next()
}

/// The set bits of a (finite) hwloc bitmap.
fn bits(set: *const RawBitmap) -> impl Iterator<Item = u32> {
    let mut prev: c_int = -1;
    std::iter::from_fn(move || {
        // SAFETY: `set` is a valid bitmap for the iterator's (local) lifetime at every call site.
        let next = unsafe { hwloc_bitmap_next(set, prev) };
        if next < 0 {
            return None;
        }
        prev = next;
        Some(next as u32)
    })
}

struct OwnedBitmap(NonNull<RawBitmap>);

impl OwnedBitmap {
    fn new() -> io::Result<OwnedBitmap> {
        // SAFETY: plain allocation; null on failure.
        NonNull::new(unsafe { hwloc_bitmap_alloc() })
            .map(OwnedBitmap)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))
    }

    fn only(id: u32) -> io::Result<OwnedBitmap> {
        let set = Self::new()?;
        // SAFETY: valid bitmap we own.
        if unsafe { hwloc_bitmap_only(set.0.as_ptr(), id) } != 0 {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(set)
    }
}

impl Drop for OwnedBitmap {
    fn drop(&mut self) {
        // SAFETY: allocated by hwloc_bitmap_alloc, freed once.
        unsafe { hwloc_bitmap_free(self.0.as_ptr()) }
    }
}
