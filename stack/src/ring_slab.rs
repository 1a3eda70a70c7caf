//! Socket ring storage: one NUMA-local hugepage slab, one rx+tx ring pair per connection slot.
//!
//! smoltcp's TCP socket takes its receive and send rings as borrowed byte slices. We hand it
//! `&'static mut [u8]` slices cut from a [`NumaBuf`] allocated once, at stack creation, on the
//! lcore's NUMA socket: the protocol layer later reads frames straight out of these rings and
//! writes frames straight into them, so they are the memory the application touches most.
//! Slot `i` belongs to connection slot `i`; the stack gives a slot's rings to exactly one socket
//! at a time and takes them back only after that socket was removed from its set.
//!
//! Aliasing: while sockets hold rings of some slots, no reference may cover the whole slab — a
//! `&mut [u8]` over it (what `NumaBuf`'s `DerefMut` gives) would claim exclusive access to the
//! bytes those sockets own, which is undefined behaviour under Stacked and Tree Borrows even if
//! nothing is read through it. So the slab takes its base pointer once, in [`RingSlab::new`],
//! before any ring exists, and never dereferences the buffer again; each slot's rings are made
//! from that raw pointer with `slice::from_raw_parts_mut` over that slot's bytes only.

use std::ptr::NonNull;

use hioload_dpdk::{Eal, NumaBuf, SocketId};

/// What owns the slab's memory. Held only to free it on drop: never dereferenced after `new`.
enum Memory {
    /// DPDK heap memory on the lcore's socket (holds a raw pointer: moving it retags nothing).
    Numa(#[allow(dead_code)] NumaBuf),
    /// Ordinary heap memory, for unit tests without an EAL: the raw pointer of a leaked
    /// `Box<[u8]>` (not the box itself, which would be retagged as unique whenever it moves),
    /// given back to `Box::from_raw` on drop.
    #[cfg(test)]
    Heap(*mut [u8]),
}

impl Drop for Memory {
    fn drop(&mut self) {
        #[cfg(test)]
        if let Memory::Heap(ptr) = *self {
            // SAFETY: `ptr` came from `Box::into_raw` in `RingSlab::on_heap` and is freed only
            // here; the slab is dropped after every socket built on its rings (the stack's field
            // order; the tests drop their rings first), so nothing points into it any more.
            drop(unsafe { Box::from_raw(ptr) });
        }
    }
}

/// The slab and its geometry.
pub(crate) struct RingSlab {
    /// First byte of the slab, taken before any ring was lent; every ring is derived from it.
    base: NonNull<u8>,
    rx_len: usize,
    tx_len: usize,
    slots: usize,
    /// Frees the memory when the slab goes (after `base`'s last use).
    _memory: Memory,
}

// SAFETY: the slab owns plain memory (as `NumaBuf`, which is `Send`); `base` points into it and
// is used only through `&mut self`, so moving the slab to another thread (with the stack that
// holds it and every socket on its rings) moves all access with it.
unsafe impl Send for RingSlab {}

impl RingSlab {
    /// Room for `slots` ring pairs of `rx_len` + `tx_len` bytes on `socket`.
    pub(crate) fn new(
        eal: &Eal,
        slots: usize,
        rx_len: usize,
        tx_len: usize,
        socket: SocketId,
    ) -> hioload_dpdk::Result<RingSlab> {
        let bytes = Self::bytes(slots, rx_len, tx_len);
        let mut buf = NumaBuf::zeroed(eal, bytes, 4096, socket)?;
        // The one time the whole buffer is borrowed (`DerefMut`): no ring exists yet.
        let base = NonNull::new(buf.as_mut_ptr()).expect("a NumaBuf is never null");
        Ok(RingSlab {
            base,
            rx_len,
            tx_len,
            slots,
            _memory: Memory::Numa(buf),
        })
    }

    /// The same slab on the ordinary heap (unit tests have no EAL).
    #[cfg(test)]
    pub(crate) fn on_heap(slots: usize, rx_len: usize, tx_len: usize) -> RingSlab {
        let bytes = Self::bytes(slots, rx_len, tx_len);
        let ptr = Box::into_raw(vec![0u8; bytes].into_boxed_slice());
        RingSlab {
            base: NonNull::new(ptr.cast::<u8>()).expect("Box::into_raw is never null"),
            rx_len,
            tx_len,
            slots,
            _memory: Memory::Heap(ptr),
        }
    }

    fn bytes(slots: usize, rx_len: usize, tx_len: usize) -> usize {
        let bytes = rx_len
            .checked_add(tx_len)
            .and_then(|pair| pair.checked_mul(slots))
            .expect("ring slab size overflows usize");
        assert!(bytes > 0, "an empty ring slab");
        bytes
    }

    /// The rx and tx rings of `slot`, detached from the slab's lifetime.
    ///
    /// # Safety
    /// The caller must not call this again for `slot` while the returned slices (or anything
    /// built on them) are alive, and must drop them before the slab.
    pub(crate) unsafe fn rings(&mut self, slot: usize) -> (&'static mut [u8], &'static mut [u8]) {
        assert!(slot < self.slots, "ring slot {slot} out of {}", self.slots);
        let pair = self.rx_len + self.tx_len;
        // SAFETY: slot < slots, so [slot*pair, (slot+1)*pair) lies inside the allocation `base`
        // points to (`bytes` checked that slots*pair does not overflow), and `base` is a raw
        // pointer taken before any ring existed, so deriving from it asserts nothing about other
        // slots' bytes.
        let rx = unsafe { self.base.as_ptr().add(slot * pair) };
        // SAFETY: rx_len < pair: the tx ring starts inside the same slot.
        let tx = unsafe { rx.add(self.rx_len) };
        // SAFETY: each slice covers only its own ring of this slot: rx_len bytes at `rx`,
        // tx_len bytes at `tx`, disjoint from each other and from every other slot. The bytes
        // are initialised (zeroed at allocation) and do not move (DPDK heap or a leaked box).
        // The caller guarantees no other live slice covers this slot and that the slab outlives
        // the slices, which makes the `'static` lifetime sound in practice.
        unsafe {
            (
                std::slice::from_raw_parts_mut(rx, self.rx_len),
                std::slice::from_raw_parts_mut(tx, self.tx_len),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RingSlab;
    use smoltcp::socket::tcp::SocketBuffer;

    /// Rings of several slots live at once, written and read interleaved through smoltcp's ring
    /// buffer (as sockets use them), a slot given back and taken again while its neighbours stay
    /// live: no ring sees another's bytes. Under Miri this checks the aliasing rules too.
    #[test]
    fn rings_of_live_slots_are_disjoint_and_interleave() {
        const SLOTS: usize = 3;
        const RX: usize = 64;
        const TX: usize = 96;
        let mut slab = RingSlab::on_heap(SLOTS, RX, TX);
        let mut rings: Vec<Option<(SocketBuffer<'static>, SocketBuffer<'static>)>> =
            (0..SLOTS).map(|_| None).collect();
        // SAFETY (each `rings` call below): slot `i` is taken only while `rings[i]` is None, its
        // buffers are dropped (set to None, or at the end) before it is taken again, and all of
        // them before the slab.
        for (i, r) in rings.iter_mut().enumerate().take(2) {
            let (rx, tx) = unsafe { slab.rings(i) };
            assert_eq!((rx.len(), tx.len()), (RX, TX));
            *r = Some((SocketBuffer::new(rx), SocketBuffer::new(tx)));
        }
        let tag = |slot: usize, side: usize, k: usize| (slot * 64 + side * 32 + k) as u8;
        for round in 0..40usize {
            // Alternate slots byte by byte through both rings, wrapping around several times.
            for k in 0..7 {
                for (slot, r) in rings.iter_mut().enumerate() {
                    let Some((rx, tx)) = r else { continue };
                    assert_eq!(rx.enqueue_slice(&[tag(slot, 0, round + k)]), 1);
                    assert_eq!(tx.enqueue_slice(&[tag(slot, 1, round + k)]), 1);
                }
            }
            for k in 0..7 {
                for (slot, r) in rings.iter_mut().enumerate() {
                    let Some((rx, tx)) = r else { continue };
                    let mut b = [0u8; 1];
                    assert_eq!(rx.dequeue_slice(&mut b), 1);
                    assert_eq!(
                        b[0],
                        tag(slot, 0, round + k),
                        "slot {slot} rx, round {round}"
                    );
                    assert_eq!(tx.dequeue_slice(&mut b), 1);
                    assert_eq!(
                        b[0],
                        tag(slot, 1, round + k),
                        "slot {slot} tx, round {round}"
                    );
                }
            }
            match round {
                // A third slot joins while 0 and 1 are live.
                10 => {
                    let (rx, tx) = unsafe { slab.rings(2) };
                    rings[2] = Some((SocketBuffer::new(rx), SocketBuffer::new(tx)));
                }
                // Slot 1 is given back, its neighbours keep going...
                20 => rings[1] = None,
                // ...and taken again (as the stack reuses a freed connection slot).
                25 => {
                    let (rx, tx) = unsafe { slab.rings(1) };
                    rings[1] = Some((SocketBuffer::new(rx), SocketBuffer::new(tx)));
                }
                _ => {}
            }
        }
        // Fill every live ring to the brim at once: each holds exactly its own capacity.
        for (slot, r) in rings.iter_mut().enumerate() {
            let (rx, tx) = r.as_mut().unwrap();
            assert_eq!(rx.enqueue_slice(&[slot as u8 + 1; RX + 10]), RX);
            assert_eq!(tx.enqueue_slice(&[slot as u8 + 101; TX + 10]), TX);
        }
        for (slot, r) in rings.iter_mut().enumerate() {
            let (rx, tx) = r.as_mut().unwrap();
            let mut b = [0u8; TX];
            assert_eq!(rx.dequeue_slice(&mut b), RX);
            assert!(b[..RX].iter().all(|&x| x == slot as u8 + 1));
            assert_eq!(tx.dequeue_slice(&mut b), TX);
            assert!(b.iter().all(|&x| x == slot as u8 + 101));
        }
        drop(rings);
        drop(slab);
    }
}
