//! Socket ring storage: one NUMA-local hugepage slab, one rx+tx ring pair per connection slot.
//!
//! smoltcp's TCP socket takes its receive and send rings as borrowed byte slices. We hand it
//! `&'static mut [u8]` slices cut from a [`NumaBuf`] allocated once, at stack creation, on the
//! lcore's NUMA socket: the protocol layer later reads frames straight out of these rings and
//! writes frames straight into them, so they are the memory the application touches most.
//! Slot `i` belongs to connection slot `i`; the stack gives a slot's rings to exactly one socket
//! at a time and takes them back only after that socket was removed from its set.

use hioload_dpdk::{Eal, NumaBuf, SocketId};

/// The slab and its geometry.
pub(crate) struct RingSlab {
    buf: NumaBuf,
    rx_len: usize,
    tx_len: usize,
    slots: usize,
}

impl RingSlab {
    /// Room for `slots` ring pairs of `rx_len` + `tx_len` bytes on `socket`.
    pub(crate) fn new(
        eal: &Eal,
        slots: usize,
        rx_len: usize,
        tx_len: usize,
        socket: SocketId,
    ) -> hioload_dpdk::Result<RingSlab> {
        let bytes = slots
            .checked_mul(rx_len + tx_len)
            .expect("ring slab size overflows usize");
        let buf = NumaBuf::zeroed(eal, bytes, 4096, socket)?;
        Ok(RingSlab {
            buf,
            rx_len,
            tx_len,
            slots,
        })
    }

    /// The rx and tx rings of `slot`, detached from the slab's lifetime.
    ///
    /// # Safety
    /// The caller must not call this again for `slot` while the returned slices (or anything
    /// built on them) are alive, and must drop them before the slab.
    pub(crate) unsafe fn rings(&mut self, slot: usize) -> (&'static mut [u8], &'static mut [u8]) {
        assert!(slot < self.slots, "ring slot {slot} out of {}", self.slots);
        let pair = self.rx_len + self.tx_len;
        // SAFETY: slot < slots, so [slot*pair, (slot+1)*pair) lies inside the buffer; the caller
        // guarantees no other live slice covers this slot and that the slab (whose memory does
        // not move: it is a DPDK heap allocation, not a Vec) outlives the slices.
        unsafe {
            let base = self.buf.as_mut_ptr().add(slot * pair);
            (
                std::slice::from_raw_parts_mut(base, self.rx_len),
                std::slice::from_raw_parts_mut(base.add(self.rx_len), self.tx_len),
            )
        }
    }
}
