//! Where a worker's receive buffers come from: the [`RecvBuffers`] seam, and [`BufPool`], a
//! plain heap-backed implementation of it.
//!
//! A connection holds a buffer only while it has bytes the protocol left unconsumed (a partial
//! frame or request head); otherwise its buffer goes back after each read. So a worker with 10,000
//! idle connections holds a handful of buffers, and a busy one reuses the same few hot buffers
//! instead of allocating per read.
//!
//! The transport does not own the memory policy: the caller of [`crate::KernelTransport::start`] hands each worker its
//! source of buffers, created on the worker thread after it is pinned (so a source may be
//! thread-bound, `!Send`, and NUMA-local: the facade plugs its per-worker pool cache in here).
//! Sources are owned by one worker thread: no lock.

/// A fixed-size receive buffer; all of it may be read into.
pub trait RecvBuffer {
    /// The whole buffer.
    fn as_slice(&self) -> &[u8];
    /// The whole buffer, writable.
    fn as_mut_slice(&mut self) -> &mut [u8];
}

/// One worker's source of receive buffers.
pub trait RecvBuffers {
    /// The buffer type.
    type Buf: RecvBuffer;
    /// A buffer of at least the size the source was made for; `None` when none can be had now
    /// (the worker stops reading that connection and retries a tick later).
    fn take(&mut self) -> Option<Self::Buf>;
    /// Takes a buffer back.
    fn give(&mut self, buf: Self::Buf);
    /// Periodic housekeeping, at the worker's tick (every 100 ms): e.g. giving memory that
    /// stayed free back to the system.
    fn maintain(&mut self, now: std::time::Instant) {
        let _ = now;
    }
}

/// A fixed-size receive buffer taken from a [`BufPool`].
pub struct RecvBuf {
    data: Box<[u8]>,
}

impl RecvBuf {
    /// The whole buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }
    /// The whole buffer, read-only.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }
    /// Its size.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether it has no room at all (never, for pooled buffers).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl RecvBuffer for RecvBuf {
    fn as_slice(&self) -> &[u8] {
        &self.data
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

/// Free heap buffers of one size, reused last-in first-out (the most recently used is warmest in
/// cache).
pub struct BufPool {
    buf_size: usize,
    max_free: usize,
    free: Vec<RecvBuf>,
    allocated: usize,
}

impl BufPool {
    /// A pool of `buf_size`-byte buffers that keeps at most `max_free` of them when idle.
    pub fn new(buf_size: usize, max_free: usize) -> Self {
        assert!(buf_size > 0);
        BufPool {
            buf_size,
            max_free,
            free: Vec::with_capacity(max_free.min(1024)),
            allocated: 0,
        }
    }

    /// Size of every buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// A buffer: a pooled one when available, else a new one.
    pub fn take(&mut self) -> RecvBuf {
        match self.free.pop() {
            Some(buf) => buf,
            None => {
                self.allocated += 1;
                RecvBuf {
                    data: vec![0u8; self.buf_size].into_boxed_slice(),
                }
            }
        }
    }

    /// Returns a buffer to the pool (or frees it when the pool is full).
    pub fn give(&mut self, buf: RecvBuf) {
        debug_assert_eq!(buf.len(), self.buf_size);
        if self.free.len() < self.max_free {
            self.free.push(buf);
        } else {
            self.allocated -= 1;
        }
    }

    /// Buffers currently pooled.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Buffers alive (pooled or lent out).
    pub fn allocated(&self) -> usize {
        self.allocated
    }
}

impl RecvBuffers for BufPool {
    type Buf = RecvBuf;
    fn take(&mut self) -> Option<RecvBuf> {
        Some(BufPool::take(self))
    }
    fn give(&mut self, buf: RecvBuf) {
        BufPool::give(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_not_reallocated() {
        let mut pool = BufPool::new(4096, 8);
        let a = pool.take();
        let pa = a.as_slice().as_ptr();
        pool.give(a);
        for _ in 0..100 {
            let b = pool.take();
            assert_eq!(b.as_slice().as_ptr(), pa);
            pool.give(b);
        }
        assert_eq!(pool.allocated(), 1);
    }

    #[test]
    fn the_pool_keeps_at_most_max_free() {
        let mut pool = BufPool::new(1024, 2);
        let bufs: Vec<_> = (0..5).map(|_| pool.take()).collect();
        assert_eq!(pool.allocated(), 5);
        for b in bufs {
            pool.give(b);
        }
        assert_eq!(pool.free_count(), 2);
        assert_eq!(pool.allocated(), 2);
    }
}
