//! An owned packet buffer (`rte_mbuf`), freed back to its pool on drop.
//!
//! [`Mbuf`] is one pointer wide and `Option<Mbuf>` has the same layout as `*mut rte_mbuf`, which
//! is what lets a [`Burst`](crate::Burst) hand its slots straight to `rte_eth_rx_burst`. Data is
//! reached in place (`data()` / `data_mut()` are views into the mbuf, no copy). Only the first
//! segment is exposed as a slice: pools sized for the MTU produce single-segment packets.

use std::ptr::NonNull;

use hioload_dpdk_sys as sys;

/// An owned packet buffer.
#[repr(transparent)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an Mbuf is the only owner of its rte_mbuf; freeing from any thread is supported by
// the mempool (a non-EAL thread bypasses the per-lcore cache).
unsafe impl Send for Mbuf {}
// SAFETY: shared references only read the buffer.
unsafe impl Sync for Mbuf {}

impl Mbuf {
    /// Take ownership of a raw mbuf (from a burst array or another DPDK call).
    ///
    /// # Safety
    /// `m` must be a valid mbuf not owned by anything else (not in a device queue, not referenced
    /// by another `Mbuf`), with a reference count of one.
    #[inline]
    pub unsafe fn from_raw(m: *mut sys::rte_mbuf) -> Mbuf {
        debug_assert!(!m.is_null());
        // SAFETY: caller guarantees non-null ownership.
        Mbuf(unsafe { NonNull::new_unchecked(m) })
    }

    /// Give up ownership; the caller must free it or pass it to DPDK (e.g. a tx array).
    #[inline]
    pub fn into_raw(self) -> *mut sys::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }

    /// The raw mbuf, still owned by `self`.
    #[inline]
    pub fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.0.as_ptr()
    }

    #[inline]
    fn raw(&self) -> &sys::rte_mbuf {
        // SAFETY: we own a valid mbuf.
        unsafe { self.0.as_ref() }
    }

    /// Packet length over all segments.
    #[inline]
    pub fn len(&self) -> usize {
        self.raw().pkt_len as usize
    }

    /// True for a zero-length packet.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.raw().pkt_len == 0
    }

    /// Data length of the first segment (what `data()` covers).
    #[inline]
    pub fn data_len(&self) -> usize {
        self.raw().data_len as usize
    }

    /// Number of segments (1 unless the device scattered a large frame).
    #[inline]
    pub fn segments(&self) -> u16 {
        self.raw().nb_segs
    }

    /// The first segment's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: mtod points at data_len initialised bytes inside the mbuf's buffer, which we
        // own for the lifetime of &self.
        unsafe {
            std::slice::from_raw_parts(sys::rte_pktmbuf_mtod(self.0.as_ptr()), self.data_len())
        }
    }

    /// The first segment's bytes, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as `data`, and &mut self means no other view exists (refcount is one).
        unsafe {
            std::slice::from_raw_parts_mut(sys::rte_pktmbuf_mtod(self.0.as_ptr()), self.data_len())
        }
    }

    /// Free bytes before the data.
    #[inline]
    pub fn headroom(&self) -> usize {
        // SAFETY: valid mbuf.
        unsafe { sys::rte_pktmbuf_headroom(self.0.as_ptr()) as usize }
    }

    /// Free bytes after the data (last segment).
    #[inline]
    pub fn tailroom(&self) -> usize {
        // SAFETY: valid mbuf.
        unsafe { sys::rte_pktmbuf_tailroom(self.0.as_ptr()) as usize }
    }

    /// Grow the packet by `n` bytes at the end; returns the new bytes (uninitialised content
    /// from earlier use, not secret-free) or `None` if the tailroom is too small.
    #[inline]
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        let n16 = u16::try_from(n).ok()?;
        // SAFETY: valid mbuf we own; DPDK checks the tailroom and returns NULL if short.
        let p = unsafe { sys::rte_pktmbuf_append(self.0.as_ptr(), n16) };
        // SAFETY: on success p points at n bytes inside our buffer.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) })
    }

    /// Grow the packet by `n` bytes at the front (into the headroom), e.g. for a header.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let n16 = u16::try_from(n).ok()?;
        // SAFETY: valid mbuf we own; DPDK checks the headroom and returns NULL if short.
        let p = unsafe { sys::rte_pktmbuf_prepend(self.0.as_ptr(), n16) };
        // SAFETY: on success p points at n bytes inside our buffer.
        (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) })
    }

    /// Append a copy of `bytes`; false (nothing written) if it does not fit.
    #[inline]
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> bool {
        match self.append(bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// Drop `n` bytes from the front (`rte_pktmbuf_adj`); false if the first segment is shorter.
    #[inline]
    pub fn trim_front(&mut self, n: usize) -> bool {
        let Ok(n16) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: valid mbuf we own; DPDK checks the length.
        !unsafe { sys::rte_pktmbuf_adj(self.0.as_ptr(), n16) }.is_null()
    }

    /// Drop `n` bytes from the end (`rte_pktmbuf_trim`); false if the last segment is shorter.
    #[inline]
    pub fn trim(&mut self, n: usize) -> bool {
        let Ok(n16) = u16::try_from(n) else {
            return false;
        };
        // SAFETY: valid mbuf we own; DPDK checks the length.
        unsafe { sys::rte_pktmbuf_trim(self.0.as_ptr(), n16) == 0 }
    }

    /// Back to an empty packet with default headroom (keeps the buffer).
    #[inline]
    pub fn reset(&mut self) {
        // SAFETY: valid single-owner mbuf.
        unsafe { sys::rte_pktmbuf_reset(self.0.as_ptr()) }
    }

    /// The port it was received on.
    #[inline]
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// The RSS hash the device computed (meaningful when `ol_flags` has `RTE_MBUF_F_RX_RSS_HASH`).
    #[inline]
    pub fn rss_hash(&self) -> u32 {
        // SAFETY: a plain u32 read of the hash union.
        unsafe { self.raw().__bindgen_anon_2.hash.rss }
    }

    /// Offload flags (`RTE_MBUF_F_*`): rx checksum results, tx offload requests.
    #[inline]
    pub fn ol_flags(&self) -> u64 {
        self.raw().ol_flags
    }

    /// Request tx offloads (`RTE_MBUF_F_TX_IPV4 | RTE_MBUF_F_TX_IP_CKSUM | RTE_MBUF_F_TX_TCP_CKSUM`
    /// ...) with the header lengths the device needs to find the checksums.
    #[inline]
    pub fn set_tx_offload(&mut self, flags: u64, l2_len: u8, l3_len: u16, l4_len: u8) {
        // SAFETY: we own the mbuf exclusively (&mut self).
        let m = unsafe { self.0.as_mut() };
        m.ol_flags |= flags;
        // SAFETY: the bitfield view of the tx_offload union; every bit pattern is valid.
        let lens = unsafe { &mut m.__bindgen_anon_3.__bindgen_anon_1 };
        lens.set_l2_len(l2_len as u64);
        lens.set_l3_len(l3_len as u64);
        lens.set_l4_len(l4_len as u64);
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own the mbuf (and its chained segments); it goes back to its pool.
        unsafe { sys::rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("segments", &self.segments())
            .finish()
    }
}
