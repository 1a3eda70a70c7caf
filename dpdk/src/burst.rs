//! A fixed-capacity array of owned mbufs: the unit rx and tx work in.
//!
//! Poll-mode drivers move packets in bursts (`rte_eth_rx_burst(.., mbufs, 32)`). [`Burst`] is
//! that C array with ownership: slots `[0, len)` hold mbufs, the rest are empty, and the whole
//! thing lives on the stack or inside a per-lcore struct, so receiving and sending never
//! allocate. Mbufs still inside a burst when it drops are freed.

use hioload_dpdk_sys as sys;

use crate::mbuf::Mbuf;

/// The burst size DPDK's examples use.
pub const DEFAULT_BURST: usize = 32;

/// Up to `N` owned mbufs. Invariant: `slots[..len]` are `Some`, `slots[len..]` are `None`.
pub struct Burst<const N: usize = DEFAULT_BURST> {
    slots: [Option<Mbuf>; N],
    len: usize,
}

impl<const N: usize> Default for Burst<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Burst<N> {
    /// An empty burst.
    pub const fn new() -> Self {
        Burst {
            slots: [const { None }; N],
            len: 0,
        }
    }

    /// Number of mbufs held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no mbuf is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no slot is free.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Free slots.
    #[inline]
    pub fn spare(&self) -> usize {
        N - self.len
    }

    /// Add an mbuf at the end; gives it back when full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == N {
            return Err(m);
        }
        self.slots[self.len] = Some(m);
        self.len += 1;
        Ok(())
    }

    /// Remove the last mbuf.
    #[inline]
    pub fn pop(&mut self) -> Option<Mbuf> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        self.slots[self.len].take()
    }

    /// The held mbufs.
    #[inline]
    pub fn as_slice(&self) -> &[Mbuf] {
        // SAFETY: slots[..len] are all Some; Option<Mbuf> with Some has Mbuf's exact layout
        // (Mbuf is a transparent NonNull, the None niche is null).
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr() as *const Mbuf, self.len) }
    }

    /// The held mbufs, mutable (to edit packets in place).
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        // SAFETY: as `as_slice`; writing an Mbuf through the slice keeps the slot Some.
        unsafe { std::slice::from_raw_parts_mut(self.slots.as_mut_ptr() as *mut Mbuf, self.len) }
    }

    /// Take every mbuf out, front to back; the burst is empty afterwards.
    #[inline]
    pub fn drain(&mut self) -> Drain<'_, N> {
        let len = self.len;
        self.len = 0; // if the Drain is leaked, remaining mbufs leak but the invariant holds
        Drain {
            slots: &mut self.slots[..len],
            next: 0,
        }
    }

    /// Free every mbuf held (one `rte_pktmbuf_free_bulk` call).
    pub fn clear(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: slots[..len] are owned mbufs; free_bulk frees them all, then the slots are
        // overwritten with None without running Mbuf's drop.
        unsafe { sys::rte_pktmbuf_free_bulk(self.as_mut_ptr(), self.len as u32) };
        for slot in &mut self.slots[..self.len] {
            std::mem::forget(slot.take());
        }
        self.len = 0;
    }

    /// Pointer to the first free slot, as `struct rte_mbuf **` for DPDK burst calls.
    #[inline]
    pub fn spare_ptr(&mut self) -> *mut *mut sys::rte_mbuf {
        // SAFETY: len <= N, so the offset stays inside (or one past) the array.
        unsafe { self.slots.as_mut_ptr().add(self.len) as *mut *mut sys::rte_mbuf }
    }

    /// Pointer to the first held mbuf, as `struct rte_mbuf **`.
    #[inline]
    pub fn as_mut_ptr(&mut self) -> *mut *mut sys::rte_mbuf {
        self.slots.as_mut_ptr() as *mut *mut sys::rte_mbuf
    }

    /// Set the number of held mbufs after DPDK filled spare slots.
    ///
    /// # Safety
    /// Slots `[0, len)` must hold owned, valid mbufs and slots `[len, N)` must be null.
    #[inline]
    pub unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= N);
        self.len = len;
    }

    /// Forget the first `n` mbufs (DPDK took them, e.g. tx) and move the rest to the front.
    ///
    /// # Safety
    /// The first `n` mbufs must now be owned by someone else.
    #[inline]
    pub(crate) unsafe fn consumed_front(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        for slot in &mut self.slots[..n] {
            // SAFETY (caller): ownership moved to DPDK; writing None must not free them.
            std::mem::forget(slot.take());
        }
        self.slots[..self.len].rotate_left(n);
        self.len -= n;
    }
}

impl<const N: usize> Drop for Burst<N> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Iterator returned by [`Burst::drain`].
pub struct Drain<'a, const N: usize> {
    slots: &'a mut [Option<Mbuf>],
    next: usize,
}

impl<const N: usize> Iterator for Drain<'_, N> {
    type Item = Mbuf;

    #[inline]
    fn next(&mut self) -> Option<Mbuf> {
        let m = self.slots.get_mut(self.next)?.take();
        self.next += 1;
        m
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.slots.len() - self.next;
        (n, Some(n))
    }
}

impl<const N: usize> Drop for Drain<'_, N> {
    fn drop(&mut self) {
        for slot in &mut self.slots[self.next..] {
            *slot = None;
        }
    }
}

const _: () =
    assert!(std::mem::size_of::<Option<Mbuf>>() == std::mem::size_of::<*mut sys::rte_mbuf>());
