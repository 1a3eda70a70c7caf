//! [`PooledBuf`]: a pooled byte buffer shaped for receiving.
//!
//! A buffer has a fixed capacity (its size class) and a length: the bytes filled so far. It
//! derefs to the filled bytes; a read goes into [`PooledBuf::spare_mut`] followed by
//! [`PooledBuf::commit`]. All of its memory is initialised (pools zero it once, when it is first
//! taken from the system), so handing out the spare part as `&mut [u8]` is sound; it may hold
//! bytes from a previous user. Dropping the buffer returns it to the pool it came from.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;

use super::cache::CacheInner;
use super::node::Block;
use super::Pools;

/// Where a buffer goes back to.
pub(crate) enum Home {
    /// The worker cache that handed it out (same thread).
    Cache(Rc<CacheInner>),
    /// The node's shared queue.
    Pools(Arc<Pools>),
}

/// A buffer from a [`super::PoolManager`] or [`super::WorkerCache`]; returns to it when dropped.
///
/// `!Send`: it goes back to the cache of the thread that took it, without synchronisation.
pub struct PooledBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
    class: usize,
    node_idx: usize,
    home: Home,
}

/// The buffer cannot take that many more bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFull;

impl fmt::Display for BufferFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pooled buffer is full")
    }
}

impl std::error::Error for BufferFull {}

impl PooledBuf {
    pub(crate) fn new(
        block: Block,
        capacity: usize,
        class: usize,
        node_idx: usize,
        home: Home,
    ) -> PooledBuf {
        PooledBuf {
            ptr: block.0,
            len: 0,
            capacity,
            class,
            node_idx,
            home,
        }
    }

    /// Bytes filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no byte is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total bytes the buffer holds: its size class, at least the size asked for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The NUMA node (OS index) of the buffer's memory.
    pub fn node(&self) -> u32 {
        self.shared().nodes[self.node_idx].node
    }

    /// The unfilled part, `[len, capacity)`, to read into. Follow with [`commit`](Self::commit).
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: [len, capacity) is inside our block, initialised, and borrowed mutably via self.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().add(self.len),
                self.capacity - self.len,
            )
        }
    }

    /// Marks `n` more bytes of the spare part as filled.
    ///
    /// # Panics
    /// If `n` exceeds the spare capacity.
    pub fn commit(&mut self, n: usize) {
        assert!(
            n <= self.capacity - self.len,
            "commit({n}) beyond spare capacity {}",
            self.capacity - self.len
        );
        self.len += n;
    }

    /// Sets the filled length (the bytes in between are whatever the buffer held).
    ///
    /// # Panics
    /// If `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "set_len({len}) beyond capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// Empties the buffer (keeps its capacity).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `data`, or leaves the buffer untouched and fails if it does not fit.
    pub fn extend_from_slice(&mut self, data: &[u8]) -> Result<(), BufferFull> {
        let spare = self.spare_mut();
        if data.len() > spare.len() {
            return Err(BufferFull);
        }
        spare[..data.len()].copy_from_slice(data);
        self.len += data.len();
        Ok(())
    }

    /// Drops the first `n` filled bytes, moving the rest to the front (for parsers that consume
    /// a prefix of what was received).
    ///
    /// # Panics
    /// If `n` exceeds the length.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len, "consume({n}) beyond length {}", self.len);
        let len = self.len;
        self.full_mut().copy_within(n..len, 0);
        self.len -= n;
    }

    /// Returns the buffer to its pool now (the same as dropping it).
    pub fn release(self) {}

    fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: the whole block is ours, initialised, and borrowed mutably via self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    fn shared(&self) -> &Pools {
        match &self.home {
            Home::Cache(cache) => cache.shared(),
            Home::Pools(shared) => shared,
        }
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let block = Block(self.ptr);
        match &self.home {
            Home::Cache(cache) => cache.put(self.class, block),
            Home::Pools(shared) => shared.put(self.node_idx, self.class, block),
        }
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: [0, len) is inside our block and initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: [0, len) is inside our block, initialised, and borrowed mutably via self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for PooledBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("node", &self.node())
            .finish()
    }
}
