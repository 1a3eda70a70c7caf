//! A connection's pending output: the bytes the kernel did not take yet, in order.
//!
//! Most turns write everything straight from the receive buffer and the turn's staging area, and
//! this stays empty (no allocation). Only a peer that reads slower than we write makes it grow,
//! and its size is what backpressure watches. Sent bytes are dropped by advancing a head index;
//! the storage is compacted only when it is appended to.
//!
//! Storage up to [`KEEP_CAPACITY`] is the connection's own and kept once drained. Beyond that the
//! bytes move to a large buffer, which is given back once drained: to the worker's [`BufCache`]
//! with [`OutBuf::push_cached`] / [`OutBuf::consume_cached`] (no allocation per large reply in
//! steady state), or freed with [`OutBuf::push`] / [`OutBuf::consume`]. Either way a drained
//! connection holds at most `KEEP_CAPACITY` bytes of output memory.

use crate::bufcache::BufCache;

/// Capacity a connection keeps after draining; larger storage is borrowed and given back, so that
/// a burst to one slow peer does not pin memory for the rest of the connection's life.
pub const KEEP_CAPACITY: usize = 64 << 10;

/// Pending output of one connection.
#[derive(Default)]
pub struct OutBuf {
    /// The connection's own storage (capacity at most `KEEP_CAPACITY`), used while `large` is
    /// `None`.
    small: Vec<u8>,
    /// Storage for more than `KEEP_CAPACITY` bytes, until drained.
    large: Option<Vec<u8>>,
    head: usize,
}

impl OutBuf {
    /// An empty buffer (allocates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> &Vec<u8> {
        self.large.as_ref().unwrap_or(&self.small)
    }

    fn data_mut(&mut self) -> &mut Vec<u8> {
        self.large.as_mut().unwrap_or(&mut self.small)
    }

    /// Bytes not yet sent.
    pub fn len(&self) -> usize {
        self.data().len() - self.head
    }

    /// Whether everything has been sent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes not yet sent.
    pub fn unsent(&self) -> &[u8] {
        &self.data()[self.head..]
    }

    /// Capacity held (own storage plus a large buffer).
    pub fn capacity(&self) -> usize {
        self.small.capacity() + self.large.as_ref().map_or(0, Vec::capacity)
    }

    /// Appends bytes after everything pending; large storage is allocated.
    pub fn push(&mut self, bytes: &[u8]) {
        self.push_with(bytes, None)
    }

    /// Appends bytes after everything pending; large storage comes from `cache`.
    pub fn push_cached(&mut self, bytes: &[u8], cache: &mut BufCache) {
        self.push_with(bytes, Some(cache))
    }

    /// Marks `n` bytes from the front as sent; once drained, large storage is freed.
    pub fn consume(&mut self, n: usize) {
        self.consume_with(n, None)
    }

    /// Marks `n` bytes from the front as sent; once drained, large storage goes back to `cache`.
    pub fn consume_cached(&mut self, n: usize, cache: &mut BufCache) {
        self.consume_with(n, Some(cache))
    }

    /// Drops everything pending (the connection is gone), giving large storage back to `cache`.
    pub fn release(&mut self, cache: &mut BufCache) {
        let n = self.len();
        self.consume_cached(n, cache);
    }

    fn push_with(&mut self, bytes: &[u8], mut cache: Option<&mut BufCache>) {
        let head = self.head;
        let data = self.data_mut();
        if head > 0 && head >= data.len() / 2 {
            data.drain(..head);
            self.head = 0;
        }
        let need = self.data().len() + bytes.len();
        let cap = self.data().capacity();
        if need > cap {
            if need <= KEEP_CAPACITY {
                // Only the own storage can be this small: grow it by doubling, within the bound.
                let target = need.max(2 * cap).min(KEEP_CAPACITY);
                self.small.reserve_exact(target - self.small.len());
            } else {
                let want = need.max(2 * cap);
                let mut grown = match cache.as_deref_mut() {
                    Some(c) => c.take(want),
                    None => Vec::with_capacity(want),
                };
                grown.extend_from_slice(self.unsent());
                self.head = 0;
                self.small.clear();
                if let Some(old) = self.large.replace(grown) {
                    give(old, cache);
                }
            }
        }
        self.data_mut().extend_from_slice(bytes);
    }

    fn consume_with(&mut self, n: usize, cache: Option<&mut BufCache>) {
        assert!(n <= self.len(), "consumed more than pending");
        self.head += n;
        if self.head == self.data().len() {
            self.head = 0;
            self.small.clear();
            if let Some(large) = self.large.take() {
                give(large, cache);
            }
        }
    }
}

/// Gives large storage back to `cache`, or frees it.
fn give(buf: Vec<u8>, cache: Option<&mut BufCache>) {
    if let Some(c) = cache {
        c.give(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_partial_sends() {
        let mut out = OutBuf::new();
        out.push(b"hello ");
        out.consume(2);
        out.push(b"world");
        assert_eq!(out.unsent(), b"llo world");
        out.consume(4);
        out.push(b"!");
        assert_eq!(out.unsent(), b"world!");
        out.consume(6);
        assert!(out.is_empty());
    }

    #[test]
    fn large_storage_is_freed_once_drained() {
        let mut out = OutBuf::new();
        out.push(&vec![7u8; 1 << 20]);
        out.consume(1 << 20);
        assert_eq!(out.capacity(), 0);
    }

    #[test]
    fn large_storage_is_borrowed_and_given_back() {
        let mut cache = BufCache::new();
        let mut out = OutBuf::new();
        let bytes: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        // Small output stays in the connection's own storage, within KEEP_CAPACITY.
        out.push_cached(&bytes[..1000], &mut cache);
        assert!(out.capacity() <= KEEP_CAPACITY);
        out.consume_cached(10, &mut cache);
        // Outgrowing it moves the unsent bytes to a borrowed buffer, in order.
        out.push_cached(&bytes[1000..], &mut cache);
        assert_eq!(out.unsent(), &bytes[10..]);
        assert_eq!(cache.stats().borrowed, 1);
        out.consume_cached(1 << 20, &mut cache);
        out.push_cached(b"tail", &mut cache);
        assert_eq!(&out.unsent()[..16], &bytes[10 + (1 << 20)..][..16]);
        let n = out.len();
        out.consume_cached(n, &mut cache);
        // Drained: the large buffer is back in the cache, the connection keeps no more than its own.
        assert!(out.is_empty() && out.capacity() <= KEEP_CAPACITY);
        assert_eq!(
            (cache.stats().returned, cache.stats().cached_buffers),
            (1, 1)
        );
        // The next large burst reuses it.
        out.push_cached(&bytes[..2 << 20], &mut cache);
        assert_eq!(cache.stats().hits, 1);
        out.release(&mut cache);
        assert!(out.is_empty() && cache.stats().cached_buffers == 1);
    }
}
