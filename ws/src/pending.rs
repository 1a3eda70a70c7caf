//! A connection's pending output: the bytes the kernel did not take yet, in order.
//!
//! Most turns write everything straight from the receive buffer and the turn's staging area, and
//! this stays empty (no allocation). Only a peer that reads slower than we write makes it grow,
//! and its size is what backpressure watches. Sent bytes are dropped by advancing a head index;
//! the storage is compacted only when it is appended to.
//!
//! In a worker, storage is borrowed from the worker's [`OutputCache`] ([`PendingOutput::push_cached`]): a
//! small buffer first, a large one when that is outgrown, and all of it is given back once drained
//! ([`PendingOutput::consume_cached`]). A drained connection therefore holds no output memory, and large
//! replies cost no allocation in steady state. Without a cache ([`PendingOutput::push`] /
//! [`PendingOutput::consume`]) the storage is the buffer's own: it is kept once drained up to
//! [`KEEP_CAPACITY`] and freed beyond.

use crate::output_cache::OutputCache;

/// Without a cache, the capacity kept after draining; larger storage is freed so that a burst to
/// one slow peer does not pin memory for the rest of the connection's life.
pub const KEEP_CAPACITY: usize = 64 << 10;

/// Pending output of one connection.
#[derive(Default)]
pub struct PendingOutput {
    data: Vec<u8>,
    head: usize,
    /// `data` is an adopted message buffer ([`PendingOutput::adopt`]): it goes back to the
    /// message-assembly cache, not the output cache.
    adopted: bool,
}

impl std::fmt::Debug for PendingOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingOutput")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl PendingOutput {
    /// An empty buffer (allocates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes not yet sent.
    pub fn len(&self) -> usize {
        self.data.len() - self.head
    }

    /// Whether everything has been sent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes not yet sent.
    pub fn unsent(&self) -> &[u8] {
        &self.data[self.head..]
    }

    /// Capacity held.
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// Appends bytes after everything pending; storage is the buffer's own.
    pub fn push(&mut self, bytes: &[u8]) {
        self.push_with(bytes, None)
    }

    /// Appends bytes after everything pending; storage is borrowed from `cache`.
    pub fn push_cached(&mut self, bytes: &[u8], cache: &mut OutputCache) {
        self.push_with(bytes, Some(cache))
    }

    /// Marks `n` bytes from the front as sent; once drained, storage beyond [`KEEP_CAPACITY`] is
    /// freed.
    pub fn consume(&mut self, n: usize) {
        self.consume_with(n, None)
    }

    /// Marks `n` bytes from the front as sent; once drained, the storage goes back to `cache`.
    pub fn consume_cached(&mut self, n: usize, cache: &mut OutputCache) {
        self.consume_with(n, Some(cache))
    }

    /// Drops everything pending (the connection is gone), giving the storage back to `cache`.
    pub fn release(&mut self, cache: &mut OutputCache) {
        self.head = 0;
        let data = std::mem::take(&mut self.data);
        self.give_storage(data, Some(cache));
    }

    /// Takes `buf` as the pending output, from byte `head` on: the unsent end of a message the
    /// session delivered and the application sent back (an echo), kept without a copy. Nothing
    /// may be pending; the storage held until now goes back to `cache`. Once drained, `buf` goes
    /// back to the message-assembly cache it came from.
    pub fn adopt(&mut self, buf: Vec<u8>, head: usize, cache: &mut OutputCache) {
        assert!(self.is_empty(), "adopted behind pending output");
        assert!(head <= buf.len(), "adopted from beyond the message");
        let old = std::mem::replace(&mut self.data, buf);
        self.give_storage(old, Some(cache));
        self.head = head;
        self.adopted = true;
    }

    /// Gives storage that is no longer `self.data` back where it came from (freed or kept
    /// without a cache, as [`PendingOutput::consume`] says).
    fn give_storage(&mut self, storage: Vec<u8>, cache: Option<&mut OutputCache>) {
        if std::mem::take(&mut self.adopted) {
            crate::assembly::give_back(storage);
        } else if let Some(cache) = cache {
            cache.give(storage);
        }
    }

    fn push_with(&mut self, bytes: &[u8], cache: Option<&mut OutputCache>) {
        if bytes.is_empty() {
            return;
        }
        if self.head > 0 && self.head >= self.data.len() / 2 {
            self.data.drain(..self.head);
            self.head = 0;
        }
        if self.data.len() + bytes.len() > self.data.capacity() {
            if self.len() + bytes.len() <= self.data.capacity() {
                self.data.drain(..self.head);
                self.head = 0;
            } else if let Some(cache) = cache {
                self.grow(self.len() + bytes.len(), cache);
            }
        }
        self.data.extend_from_slice(bytes);
    }

    /// Makes room for `total` bytes pending (those pending now included) in storage borrowed from
    /// `cache`, so that appending up to that does not grow it again. Asking for a size that does
    /// not depend on how much the kernel took (a whole turn's output) lets the same buffer serve
    /// every reply of that size.
    pub fn reserve_cached(&mut self, total: usize, cache: &mut OutputCache) {
        if self.head + total > self.data.capacity() {
            self.grow(total, cache);
        }
    }

    /// Moves the unsent bytes to a borrowed buffer of at least `total` bytes (and at least twice
    /// the current one); gives the current one back.
    fn grow(&mut self, total: usize, cache: &mut OutputCache) {
        let mut grown = cache.take(total.max(2 * self.data.capacity()));
        grown.extend_from_slice(self.unsent());
        self.head = 0;
        let old = std::mem::replace(&mut self.data, grown);
        self.give_storage(old, Some(cache));
    }

    fn consume_with(&mut self, n: usize, cache: Option<&mut OutputCache>) {
        assert!(n <= self.len(), "consumed more than pending");
        self.head += n;
        if self.head == self.data.len() {
            self.head = 0;
            if self.adopted {
                let data = std::mem::take(&mut self.data);
                self.give_storage(data, None);
                return;
            }
            match cache {
                Some(cache) => cache.give(std::mem::take(&mut self.data)),
                None if self.data.capacity() > KEEP_CAPACITY => self.data = Vec::new(),
                None => self.data.clear(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_partial_sends() {
        let mut out = PendingOutput::new();
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
        let mut out = PendingOutput::new();
        out.push(&vec![7u8; 1 << 20]);
        out.consume(1 << 20);
        assert_eq!(out.capacity(), 0);
    }

    #[test]
    fn storage_is_borrowed_and_given_back() {
        let mut cache = OutputCache::new();
        let mut out = PendingOutput::new();
        let bytes: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        // Small output borrows a small buffer.
        out.push_cached(&bytes[..1000], &mut cache);
        assert_eq!(out.capacity(), crate::output_cache::SMALL_BUFFER);
        out.consume_cached(10, &mut cache);
        // Outgrowing it moves the unsent bytes to a large buffer, in order; the small one goes back.
        out.push_cached(&bytes[1000..], &mut cache);
        assert_eq!(out.unsent(), &bytes[10..]);
        let stats = cache.stats();
        assert_eq!((stats.borrowed, stats.small_cached), (1, 1));
        out.consume_cached(1 << 20, &mut cache);
        out.push_cached(b"tail", &mut cache);
        assert_eq!(&out.unsent()[..16], &bytes[10 + (1 << 20)..][..16]);
        let n = out.len();
        out.consume_cached(n, &mut cache);
        // Drained: all storage is back in the cache.
        assert!(out.is_empty());
        assert_eq!(out.capacity(), 0);
        assert_eq!(
            (cache.stats().returned, cache.stats().cached_buffers),
            (1, 1)
        );
        // The next large burst reuses it.
        out.push_cached(&bytes[..2 << 20], &mut cache);
        assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
        out.release(&mut cache);
        assert_eq!(out.capacity(), 0);
        assert_eq!(cache.stats().cached_buffers, 1);
    }
}
