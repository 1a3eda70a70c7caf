//! Packet-buffer pools (`rte_pktmbuf_pool_create`), one per NUMA socket.
//!
//! A [`Mempool`] is a cheap `Clone` handle (shared by the ports whose rx queues fill from it and
//! by the lcores that allocate from it). The pool is freed when the last handle drops and no mbuf
//! is outstanding; if mbufs are still out, the pool is leaked instead of freed, so an [`Mbuf`]
//! can never point into released memory.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use hioload_dpdk_sys as sys;

use crate::burst::Burst;
use crate::eal::{live_object_created, live_object_released, Eal};
use crate::error::{Error, Result};
use crate::lcore::SocketId;
use crate::mbuf::Mbuf;

/// How to size a pool.
#[derive(Clone, Debug)]
pub struct MempoolConfig {
    /// Number of mbufs (DPDK is most memory-efficient at 2^k - 1).
    pub mbufs: u32,
    /// Per-lcore cache (0 disables; at most 512 and at most `mbufs / 1.5`).
    pub cache_size: u32,
    /// Data room of each mbuf, headroom included.
    pub data_room: u16,
    /// Application private area after each `rte_mbuf` header.
    pub priv_size: u16,
    /// NUMA socket the memory comes from.
    pub socket: SocketId,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            mbufs: 8191,
            cache_size: 256,
            data_room: sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            priv_size: 0,
            socket: SocketId::ANY,
        }
    }
}

/// A pool of packet buffers on one NUMA socket.
#[derive(Clone)]
pub struct Mempool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    ptr: NonNull<sys::rte_mempool>,
    capacity: u32,
    socket: SocketId,
    name: String,
}

// SAFETY: an rte_mempool is built for concurrent use from any thread (its default ring ops are
// multi-producer/multi-consumer; per-lcore caches are only touched by their own lcore).
unsafe impl Send for PoolInner {}
// SAFETY: as above.
unsafe impl Sync for PoolInner {}

impl Mempool {
    /// Create a pool named `name` (unique in the process, at most 25 bytes).
    pub fn new(_eal: &Eal, name: &str, config: &MempoolConfig) -> Result<Mempool> {
        const OP: &str = "rte_pktmbuf_pool_create";
        let cname =
            CString::new(name).map_err(|_| Error::invalid(OP, "name contains a NUL byte"))?;
        if config.mbufs == 0 {
            return Err(Error::invalid(OP, "a pool needs at least one mbuf"));
        }
        // SAFETY: cname is a valid C string; DPDK copies it. The EAL is up (&Eal).
        let ptr = unsafe {
            sys::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                config.mbufs,
                config.cache_size,
                config.priv_size,
                config.data_room,
                config.socket.0,
            )
        };
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::from_rte_errno(OP))?;
        live_object_created();
        Ok(Mempool {
            inner: Arc::new(PoolInner {
                ptr,
                capacity: config.mbufs,
                socket: config.socket,
                name: name.to_owned(),
            }),
        })
    }

    /// Take one mbuf (reset, empty, default headroom); `None` when the pool is exhausted.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool pointer is valid while `self` exists.
        let m = unsafe { sys::rte_pktmbuf_alloc(self.inner.ptr.as_ptr()) };
        // SAFETY: a non-null result is a fresh mbuf we now own.
        NonNull::new(m).map(|m| unsafe { Mbuf::from_raw(m.as_ptr()) })
    }

    /// Fill the burst's free space with `n` fresh mbufs, all or none; false if not enough.
    pub fn alloc_into<const N: usize>(&self, burst: &mut Burst<N>, n: usize) -> bool {
        if n > burst.spare() {
            return false;
        }
        // SAFETY: the spare slots are null (None); rte_pktmbuf_alloc_bulk writes n valid
        // pointers or nothing, and we only extend the length on success.
        unsafe {
            let ret =
                sys::rte_pktmbuf_alloc_bulk(self.inner.ptr.as_ptr(), burst.spare_ptr(), n as u32);
            if ret != 0 {
                return false;
            }
            burst.set_len(burst.len() + n);
        }
        true
    }

    /// Mbufs available right now (in the pool and in lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool pointer is valid; the count is a read.
        unsafe { sys::rte_mempool_avail_count(self.inner.ptr.as_ptr()) }
    }

    /// Mbufs currently handed out (held by the application or by device queues).
    pub fn in_use(&self) -> u32 {
        // SAFETY: as for `available`.
        unsafe { sys::rte_mempool_in_use_count(self.inner.ptr.as_ptr()) }
    }

    /// Total number of mbufs the pool was created with.
    pub fn capacity(&self) -> u32 {
        self.inner.capacity
    }

    /// The socket the pool's memory was requested on.
    pub fn socket(&self) -> SocketId {
        self.inner.socket
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Data room of each mbuf (headroom included).
    pub fn data_room(&self) -> u16 {
        // SAFETY: the pool is a pktmbuf pool, so its private data holds the room size.
        unsafe { sys::rte_pktmbuf_data_room_size(self.inner.ptr.as_ptr()) }
    }

    /// The raw pool, for DPDK calls this crate does not wrap. Valid while a handle exists.
    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.inner.ptr.as_ptr()
    }
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // SAFETY: last handle; the pointer is valid.
        let in_use = unsafe { sys::rte_mempool_in_use_count(self.ptr.as_ptr()) };
        if in_use != 0 {
            tracing::warn!(pool = %self.name, in_use, "mempool dropped with mbufs outstanding; leaking it");
            return;
        }
        // SAFETY: no handle and no mbuf refers to the pool any more.
        unsafe { sys::rte_mempool_free(self.ptr.as_ptr()) };
        live_object_released();
    }
}
