//! A worker's bounded cache of output buffers.
//!
//! Output normally needs little memory: the turn's staging area holds headers and small payloads,
//! and a connection's pending output is empty unless its peer reads slower than we write. A large
//! reply that is not in the receive buffer (say a 16 MiB message echoed from its assembly buffer)
//! needs a large staging area for one turn, and a large pending-output buffer until the peer has
//! read it. Keeping those large buffers attached to the turn or the connection would pin memory
//! per idle connection; freeing them after each use would allocate per message. Instead the small
//! storage stays where it is (the staging area keeps [`STAGING_SMALL`]), and a user that outgrows
//! it borrows a large buffer from this cache and gives it back once drained. A connection's pending
//! output holds no storage of its own at all: while it is not empty it borrows a buffer of
//! [`SMALL_BUFFER`] (64 KiB) bytes, or a large one when that is outgrown, and gives it back once
//! drained. In steady state a worker sending large replies therefore allocates nothing per
//! message, while idle connections hold no output memory.
//!
//! The cache is a plain object owned by one worker (the kernel transport keeps it with its
//! per-turn output, the DPDK worker beside its connections): no lock, no atomic. Its large
//! buffers are kept by the protocol layer's [`BufferCache`] (the same bounded cache that serves
//! message assembly); this module adds the uniform small buffers.
//!
//! **Bounds.** At most [`CACHE_MAX_BUFFERS`] (4) free large buffers and [`CACHE_MAX_BYTES`]
//! (64 MiB) of free large capacity per worker, plus at most [`SMALL_MAX_BUFFERS`] (64) free small
//! buffers (4 MiB): 68 MiB of free memory per worker at most. A large buffer given back beyond
//! these bounds replaces a smaller cached one or is freed; a small one is freed. Buffers in use
//! are not counted: the staging area holds one turn's output, and a connection's pending output
//! is bounded by the backpressure settings (a peer above the hard bound for the backpressure
//! timeout is closed, which gives its buffer back). [`OutputCache::trim`] frees the free buffers.

/// Staging capacity a worker keeps without borrowing from the cache.
pub const STAGING_SMALL: usize = 1 << 20;
/// Size of a small buffer: requests up to this size get one.
pub const SMALL_BUFFER: usize = 64 << 10;
/// Most free small buffers one worker keeps.
pub const SMALL_MAX_BUFFERS: usize = 64;
use crate::buffer_cache::BufferCache;
pub use crate::buffer_cache::{CACHE_MAX_BUFFERS, CACHE_MAX_BYTES};

/// Counters of one worker's cache (since the worker started).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputCacheStats {
    /// Large buffers handed out.
    pub borrowed: u64,
    /// Of those, how many came from the cache with enough capacity (no allocation).
    pub hits: u64,
    /// Of those, how many had to be allocated or grown.
    pub misses: u64,
    /// Buffers given back and kept.
    pub returned: u64,
    /// Buffers freed: given back beyond the bounds, evicted for a larger one, or trimmed.
    pub freed: u64,
    /// Free large buffers held now.
    pub cached_buffers: usize,
    /// Free large capacity held now, in bytes.
    pub cached_bytes: usize,
    /// Small buffers handed out.
    pub small_borrowed: u64,
    /// Of those, how many had to be allocated (none free).
    pub small_misses: u64,
    /// Free small buffers held now.
    pub small_cached: usize,
}

/// One worker's free buffers; see the module documentation.
#[derive(Debug, Default)]
pub struct OutputCache {
    /// Free large buffers.
    large: BufferCache,
    /// Free small buffers (its own storage is reserved once, for `SMALL_MAX_BUFFERS`).
    small: Vec<Vec<u8>>,
    small_borrowed: u64,
    small_misses: u64,
    small_freed: u64,
}

/// `capacity` rounded up to the next of eight steps per power of two (at most 12.5 % more), so
/// that outputs of nearly the same size (a large reply whose first part the kernel took, turn
/// after turn) ask for the same buffer, and find it in the cache.
fn size_class(capacity: usize) -> usize {
    let step = (capacity.next_power_of_two() / 8).max(1);
    capacity.div_ceil(step) * step
}

impl OutputCache {
    /// An empty cache (allocates only its list of small buffers).
    pub fn new() -> Self {
        OutputCache {
            small: Vec::with_capacity(SMALL_MAX_BUFFERS),
            ..Self::default()
        }
    }

    /// An empty buffer of at least `capacity` bytes. Up to [`SMALL_BUFFER`]: a free small buffer,
    /// else a new one. Larger: the smallest cached large buffer that is large enough (no
    /// allocation), else the largest cached one grown, else a new one.
    pub fn take(&mut self, capacity: usize) -> Vec<u8> {
        if capacity > SMALL_BUFFER {
            return self.large.take(size_class(capacity), true);
        }
        self.small_borrowed += 1;
        self.small.pop().unwrap_or_else(|| {
            self.small_misses += 1;
            Vec::with_capacity(SMALL_BUFFER)
        })
    }

    /// Takes a buffer back (emptied), or frees it beyond the bounds. Of large buffers the cache
    /// keeps the largest.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap > SMALL_BUFFER {
            return self.large.give(buf);
        }
        if cap == 0 {
            return;
        }
        if cap == SMALL_BUFFER && self.small.len() < SMALL_MAX_BUFFERS {
            buf.clear();
            self.small.push(buf);
        } else {
            self.small_freed += 1;
        }
    }

    /// Frees every free buffer.
    pub fn trim(&mut self) {
        self.small_freed += self.small.len() as u64;
        self.small.clear();
        self.large.trim();
    }

    /// The counters.
    pub fn stats(&self) -> OutputCacheStats {
        let l = self.large.stats();
        OutputCacheStats {
            borrowed: l.borrowed,
            hits: l.hits,
            misses: l.misses,
            returned: l.returned,
            freed: l.freed + self.small_freed,
            cached_buffers: l.cached_buffers,
            cached_bytes: l.cached_bytes,
            small_borrowed: self.small_borrowed,
            small_misses: self.small_misses,
            small_cached: self.small.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrow_return_and_bounds() {
        let mut c = OutputCache::new();
        // Empty cache: a miss allocates; giving it back keeps it; the next borrow reuses it.
        let b = c.take(3 << 20);
        let (ptr, cap) = (b.as_ptr(), b.capacity());
        c.give(b);
        assert_eq!((c.stats().cached_buffers, c.stats().cached_bytes), (1, cap));
        let b = c.take(2 << 20);
        assert_eq!(b.as_ptr(), ptr, "the cached buffer is handed out again");
        assert_eq!((c.stats().hits, c.stats().misses), (1, 1));
        c.give(b);
        c.trim();
        assert_eq!(c.stats().cached_bytes, 0);

        for cap in [1 << 20, 2 << 20, 4 << 20, 8 << 20] {
            c.give(Vec::with_capacity(cap));
        }
        assert_eq!(
            (c.stats().cached_buffers, c.stats().cached_bytes),
            (4, 15 << 20)
        );
        // A fifth, larger buffer evicts the smallest; a smaller one is freed.
        let freed = c.stats().freed;
        c.give(Vec::with_capacity(16 << 20));
        c.give(Vec::with_capacity(1 << 10));
        assert_eq!(
            (
                c.stats().cached_buffers,
                c.stats().cached_bytes,
                c.stats().freed - freed
            ),
            (4, 30 << 20, 2)
        );
        // Best fit: 3 MiB gets the 4 MiB buffer.
        let b = c.take(3 << 20);
        assert!(b.capacity() >= 4 << 20 && b.capacity() < 8 << 20);
        // Byte bound: a 60 MiB buffer evicts what it must; one beyond the bound is freed.
        c.give(Vec::with_capacity(60 << 20));
        assert!(
            c.stats().cached_bytes <= CACHE_MAX_BYTES
                && c.stats().cached_buffers <= CACHE_MAX_BUFFERS
        );
        c.give(Vec::with_capacity(CACHE_MAX_BYTES + 1));
        assert!(c.stats().cached_bytes <= CACHE_MAX_BYTES);

        c.trim();
        assert_eq!((c.stats().cached_buffers, c.stats().cached_bytes), (0, 0));
        drop(b);
    }

    #[test]
    fn small_buffers_are_uniform_and_bounded() {
        let mut c = OutputCache::new();
        let bufs: Vec<Vec<u8>> = (0..SMALL_MAX_BUFFERS + 3).map(|i| c.take(1 + i)).collect();
        assert!(bufs.iter().all(|b| b.capacity() == SMALL_BUFFER));
        assert_eq!(c.stats().small_misses, SMALL_MAX_BUFFERS as u64 + 3);
        for b in bufs {
            c.give(b);
        }
        // Only SMALL_MAX_BUFFERS are kept; they do not count against the large bounds.
        assert_eq!(
            (c.stats().small_cached, c.stats().cached_bytes),
            (SMALL_MAX_BUFFERS, 0)
        );
        let b = c.take(SMALL_BUFFER);
        assert_eq!(
            c.stats().small_misses,
            SMALL_MAX_BUFFERS as u64 + 3,
            "reused"
        );
        c.give(b);
        // A buffer of another small size is not kept (a later borrower could not rely on it).
        c.give(Vec::with_capacity(100));
        assert_eq!(c.stats().small_cached, SMALL_MAX_BUFFERS);
        c.trim();
        assert_eq!(c.stats().small_cached, 0);
    }
}
