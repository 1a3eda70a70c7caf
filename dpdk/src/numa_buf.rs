//! NUMA-local byte buffers from DPDK's heap (`rte_zmalloc_socket`).
//!
//! Per-lcore state (socket rx/tx rings of the TCP stack, connection tables) should live on the
//! lcore's own socket. [`NumaBuf`] is an owned, zeroed, aligned byte buffer from the hugepage
//! heap of a chosen socket; it derefs to `[u8]`, so it can back e.g. smoltcp socket buffers.
//!
//! Constructors take `&Eal`, which stays on the main lcore. A [`NumaAllocator`] carries that
//! proof to other threads (lcores growing a buffer pool): it counts as a live DPDK object, so
//! the EAL is not cleaned up while it exists.

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use hioload_dpdk_sys as sys;

use crate::eal::{live_object_created, live_object_released, Eal};
use crate::error::{Error, Result};
use crate::lcore::SocketId;

/// An owned, zero-initialised byte buffer on one NUMA socket.
pub struct NumaBuf {
    ptr: NonNull<u8>,
    len: usize,
    socket: SocketId,
}

// SAFETY: the buffer is plain memory owned by this value; rte_free may run on any thread.
unsafe impl Send for NumaBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for NumaBuf {}

impl NumaBuf {
    /// `len` zeroed bytes aligned to `align` (a power of two, 0 = cache line) on `socket`.
    pub fn zeroed(_eal: &Eal, len: usize, align: usize, socket: SocketId) -> Result<NumaBuf> {
        // SAFETY: `&Eal` proves the EAL is up; it is not cleaned up while the buffer lives.
        unsafe { NumaBuf::zeroed_in_live_eal(len, align, socket) }
    }

    /// # Safety
    /// The EAL must be initialised (and not cleaned up) when called.
    unsafe fn zeroed_in_live_eal(len: usize, align: usize, socket: SocketId) -> Result<NumaBuf> {
        const OP: &str = "rte_zmalloc_socket";
        if len == 0 {
            return Err(Error::invalid(OP, "length must be positive"));
        }
        if align != 0 && !align.is_power_of_two() {
            return Err(Error::invalid(OP, "alignment must be a power of two"));
        }
        // SAFETY: valid arguments; a NULL type name is allowed. The EAL is up (caller).
        let p = unsafe { sys::rte_zmalloc_socket(std::ptr::null(), len, align as u32, socket.0) };
        let ptr = NonNull::new(p as *mut u8).ok_or_else(|| {
            Error::invalid(OP, format!("no {len} bytes free on socket {}", socket.0))
        })?;
        live_object_created();
        Ok(NumaBuf { ptr, len, socket })
    }

    /// The socket requested at allocation.
    pub fn socket(&self) -> SocketId {
        self.socket
    }
}

impl Deref for NumaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: len initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for NumaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as deref, with exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for NumaBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by rte_zmalloc_socket and not freed before.
        unsafe { sys::rte_free(self.ptr.as_ptr().cast()) };
        live_object_released();
    }
}

/// Allocates [`NumaBuf`]s from any thread, without `&Eal`. `Send + Sync`; while it lives the EAL
/// is not cleaned up (it counts as a live DPDK object).
pub struct NumaAllocator {
    _counted: (),
}

/// Where a piece of DPDK memory lies: [`NumaAllocator::segment_of`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MemorySegment {
    /// The socket DPDK placed the segment on.
    pub socket: SocketId,
    /// The page size backing it (2 MiB or 1 GiB for hugepages; 4 KiB with `--no-huge`).
    pub page_size: u64,
}

impl NumaAllocator {
    /// An allocator for this EAL.
    pub fn new(_eal: &Eal) -> NumaAllocator {
        live_object_created();
        NumaAllocator { _counted: () }
    }

    /// `len` zeroed bytes aligned to `align` (a power of two, 0 = cache line) on `socket`
    /// (only that socket: DPDK does not fall back to another one for a given socket).
    pub fn zeroed(&self, len: usize, align: usize, socket: SocketId) -> Result<NumaBuf> {
        // SAFETY: `self` exists, so the EAL was initialised and is not cleaned up.
        unsafe { NumaBuf::zeroed_in_live_eal(len, align, socket) }
    }

    /// Whether the EAL runs on hugepages (false with `--no-huge`).
    pub fn has_hugepages(&self) -> bool {
        // SAFETY: reads EAL configuration; the EAL is up (self).
        unsafe { sys::rte_eal_has_hugepages() != 0 }
    }

    /// The DPDK memory segment holding `addr`, or `None` when `addr` is not DPDK memory.
    /// `addr` should point into a live DPDK allocation (segments of freed memory may go away).
    pub fn segment_of(&self, addr: *const u8) -> Option<MemorySegment> {
        // SAFETY: a lookup in the EAL's memseg lists (the EAL is up: self); NULL list = search
        // all. It only reads addresses, never dereferences `addr`.
        let ms = unsafe { sys::rte_mem_virt2memseg(addr.cast(), std::ptr::null()) };
        if ms.is_null() {
            return None;
        }
        // SAFETY: a non-null memseg from the EAL's tables, which live as long as the EAL.
        let ms = unsafe { &*ms };
        Some(MemorySegment {
            socket: SocketId(ms.socket_id),
            page_size: ms.hugepage_sz,
        })
    }
}

impl Drop for NumaAllocator {
    fn drop(&mut self) {
        live_object_released();
    }
}
