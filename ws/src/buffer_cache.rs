//! A bounded cache of large byte buffers, owned by one worker.
//!
//! Large buffers (a 16 MiB message being assembled, a large reply waiting for a slow reader) are
//! needed now and then, never by every connection at once. Keeping them attached to a connection
//! pins memory per idle connection; freeing them after each use allocates per message. A worker
//! keeps the few largest free ones here instead: at most [`CACHE_MAX_BUFFERS`] (4) buffers and
//! [`CACHE_MAX_BYTES`] (64 MiB). A buffer given back beyond these bounds replaces a smaller cached
//! one or is freed. Buffers in use are not counted: their users bound them.
//!
//! The cache is a plain object with no lock and no atomic: the protocol layer keeps one per
//! worker thread for message assembly ([`crate::assembly`]), the kernel transport one per worker
//! for output ([`crate::output_cache`]).

/// Most free buffers one cache keeps.
pub const CACHE_MAX_BUFFERS: usize = 4;
/// Most free capacity, in bytes, one cache keeps.
pub const CACHE_MAX_BYTES: usize = 64 << 20;

/// Counters of one cache (since it was made).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct BufferCacheStats {
    /// Buffers handed out.
    pub borrowed: u64,
    /// Of those, how many came from the cache with enough capacity (no allocation).
    pub hits: u64,
    /// Of those, how many had to be allocated or grown (a cached buffer too small, or none).
    pub misses: u64,
    /// Buffers given back and kept.
    pub returned: u64,
    /// Buffers freed: given back beyond the bounds, evicted for a larger one, or trimmed.
    pub freed: u64,
    /// Free buffers held now.
    pub cached_buffers: usize,
    /// Free capacity held now, in bytes.
    pub cached_bytes: usize,
}

/// One worker's free large buffers; see the module documentation.
#[derive(Debug, Default)]
pub struct BufferCache {
    /// `free[..len]` are the free buffers; the rest are empty `Vec`s (no allocation).
    free: [Vec<u8>; CACHE_MAX_BUFFERS],
    len: usize,
    bytes: usize,
    stats: BufferCacheStats,
}

impl BufferCache {
    /// An empty cache (allocates nothing).
    pub const fn new() -> Self {
        BufferCache {
            free: [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
            len: 0,
            bytes: 0,
            stats: BufferCacheStats {
                borrowed: 0,
                hits: 0,
                misses: 0,
                returned: 0,
                freed: 0,
                cached_buffers: 0,
                cached_bytes: 0,
            },
        }
    }

    /// An empty buffer of at least `capacity` bytes: a cached one if one is large enough (no
    /// allocation), else the largest cached one grown, else a new one. `best_fit`: the user needs
    /// exactly `capacity`, so the smallest large-enough buffer is taken; otherwise the user may
    /// grow further, so the largest is taken (if it is large enough to start). Aborts the process
    /// if memory runs out; see [`BufferCache::try_take`].
    pub fn take(&mut self, capacity: usize, best_fit: bool) -> Vec<u8> {
        match self.try_take(capacity, best_fit) {
            Ok(buf) => buf,
            Err(_) => std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<u8>(capacity).expect("capacity fits a layout"),
            ),
        }
    }

    /// [`BufferCache::take`] that reports a failed allocation instead of aborting (the
    /// cache is left as it was, minus nothing).
    pub fn try_take(
        &mut self,
        capacity: usize,
        best_fit: bool,
    ) -> Result<Vec<u8>, std::collections::TryReserveError> {
        self.stats.borrowed += 1;
        let largest = (0..self.len).max_by_key(|&i| self.free[i].capacity());
        let fit = if best_fit {
            (0..self.len)
                .filter(|&i| self.free[i].capacity() >= capacity)
                .min_by_key(|&i| self.free[i].capacity())
        } else {
            largest.filter(|&i| self.free[i].capacity() >= capacity)
        };
        let buf = match fit {
            Some(i) => {
                self.stats.hits += 1;
                self.remove(i)
            }
            None => {
                self.stats.misses += 1;
                let mut buf = match largest {
                    Some(i) => self.remove(i),
                    None => Vec::new(),
                };
                if let Err(e) = buf.try_reserve_exact(capacity) {
                    self.give(buf);
                    return Err(e);
                }
                buf
            }
        };
        self.sync();
        Ok(buf)
    }

    /// Takes a buffer back (emptied), or frees it beyond the bounds; the cache keeps the largest.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == 0 {
            return;
        }
        buf.clear();
        // Make room by evicting smaller buffers.
        while self.len == CACHE_MAX_BUFFERS || self.bytes + cap > CACHE_MAX_BYTES {
            match self.smallest() {
                Some(i) if self.free[i].capacity() < cap => {
                    drop(self.remove(i));
                    self.stats.freed += 1;
                }
                _ => break,
            }
        }
        if self.len < CACHE_MAX_BUFFERS && self.bytes + cap <= CACHE_MAX_BYTES {
            self.free[self.len] = buf;
            self.len += 1;
            self.bytes += cap;
            self.stats.returned += 1;
        } else {
            self.stats.freed += 1;
        }
        self.sync();
    }

    /// Frees every free buffer.
    pub fn trim(&mut self) {
        while self.len > 0 {
            drop(self.remove(self.len - 1));
            self.stats.freed += 1;
        }
        self.sync();
    }

    /// The counters.
    pub fn stats(&self) -> BufferCacheStats {
        self.stats
    }

    fn remove(&mut self, i: usize) -> Vec<u8> {
        let buf = std::mem::take(&mut self.free[i]);
        self.len -= 1;
        self.free.swap(i, self.len);
        self.bytes -= buf.capacity();
        buf
    }

    fn smallest(&self) -> Option<usize> {
        (0..self.len).min_by_key(|&i| self.free[i].capacity())
    }

    fn sync(&mut self) {
        self.stats.cached_buffers = self.len;
        self.stats.cached_bytes = self.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_and_bounds() {
        let mut c = BufferCache::new();
        for cap in [1 << 20, 2 << 20, 4 << 20, 8 << 20] {
            c.give(Vec::with_capacity(cap));
        }
        assert_eq!((c.len, c.bytes), (4, 15 << 20));
        // A fifth, larger buffer evicts the smallest; a smaller one is freed.
        c.give(Vec::with_capacity(16 << 20));
        c.give(Vec::with_capacity(1 << 10));
        assert_eq!((c.len, c.bytes, c.stats.freed), (4, 30 << 20, 2));
        // Best fit: 3 MiB gets the 4 MiB buffer.
        let b = c.take(3 << 20, true);
        assert!(b.capacity() >= 4 << 20 && b.capacity() < 8 << 20);
        assert_eq!((c.stats.hits, c.stats.misses), (1, 0));
        // Beyond the byte bound: a 60 MiB buffer evicts what it must, or is freed.
        c.give(Vec::with_capacity(60 << 20));
        assert!(c.bytes <= CACHE_MAX_BYTES && c.len <= CACHE_MAX_BUFFERS);
        c.give(Vec::with_capacity(CACHE_MAX_BYTES + 1));
        assert!(c.bytes <= CACHE_MAX_BYTES);
        c.trim();
        assert_eq!((c.len, c.bytes, c.stats.cached_bytes), (0, 0, 0));
    }

    /// The cache keeps as many buffers as were ever in use at once: a new peak allocates (once),
    /// and every later pattern of at most that many borrowers, in any order, allocates nothing.
    /// (A benchmark's warm-up must therefore reach the peak; see `alloc_per_message`.)
    #[test]
    fn holds_the_peak_number_of_borrowers() {
        let mut c = BufferCache::new();
        let size = 256 << 10;
        // Peak of three borrowers at once: three misses.
        let held: Vec<Vec<u8>> = (0..3).map(|_| c.take(size, true)).collect();
        held.into_iter().for_each(|b| c.give(b));
        assert_eq!((c.stats.misses, c.len), (3, 3));
        // Any interleaving of up to three borrowers hits.
        for round in 0..50 {
            let a = c.take(size, round % 2 == 0);
            let b = c.take(size, true);
            c.give(a);
            let d = c.take(size, false);
            c.give(d);
            let e = c.take(size, true);
            c.give(b);
            c.give(e);
        }
        assert_eq!(c.stats.misses, 3, "{:?}", c.stats);
        // A fourth borrower at once is a new peak: one more allocation, kept for next time.
        let held: Vec<Vec<u8>> = (0..4).map(|_| c.take(size, true)).collect();
        held.into_iter().for_each(|b| c.give(b));
        let held: Vec<Vec<u8>> = (0..4).map(|_| c.take(size, true)).collect();
        held.into_iter().for_each(|b| c.give(b));
        assert_eq!((c.stats.misses, c.len, c.bytes), (4, 4, 4 * size));
    }
}
