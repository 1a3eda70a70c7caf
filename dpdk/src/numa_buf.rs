//! NUMA-local byte buffers from DPDK's heap (`rte_zmalloc_socket`).
//!
//! Per-lcore state (socket rx/tx rings of the TCP stack, connection tables) should live on the
//! lcore's own socket. [`NumaBuf`] is an owned, zeroed, aligned byte buffer from the hugepage
//! heap of a chosen socket; it derefs to `[u8]`, so it can back e.g. smoltcp socket buffers.

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
        const OP: &str = "rte_zmalloc_socket";
        if len == 0 {
            return Err(Error::invalid(OP, "length must be positive"));
        }
        if align != 0 && !align.is_power_of_two() {
            return Err(Error::invalid(OP, "alignment must be a power of two"));
        }
        // SAFETY: valid arguments; a NULL type name is allowed. The EAL is up (&Eal).
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
