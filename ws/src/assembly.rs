//! Large message-assembly buffers, cached per worker thread.
//!
//! A message that does not arrive whole in one frame and one read (a fragmented message, or a
//! frame larger than `Limits::inplace_frame_max` split across reads) is assembled by its
//! [`Session`](crate::Session). Each session keeps its own small buffer of at most
//! [`ASSEMBLY_RETAIN`] (64 KiB) bytes, so that an idle connection never pins more than that. A
//! message that outgrows it borrows a large buffer from this cache, pre-sized from the frame's
//! declared length when that is known, and gives it back when the message has been delivered (or
//! when the session is dropped mid-message). In steady state a server
//! receiving large messages therefore allocates nothing per message, while idle connections hold
//! no large buffer at all.
//!
//! **Why a thread-local.** Both transports (the kernel fallback and the DPDK stack) run one worker
//! per thread, shard-per-core, and each worker creates, drives and drops its sessions on its own
//! thread; a cache per thread is therefore a cache per worker. It needs no lock and no atomic
//! read-modify-write (a `RefCell` on the thread's own data), and it keeps the sans-IO API unchanged:
//! no worker object has to be threaded through `Session::receive`. A session dropped on another
//! thread gives its buffer to that thread's cache, which is bounded just the same.
//!
//! **Bounds.** A thread keeps at most [`CACHE_MAX_BUFFERS`] (4) free buffers and
//! [`CACHE_MAX_BYTES`] (64 MiB, four 16 MiB messages at the default `max_message_size`) of free
//! capacity. A buffer given back beyond these bounds replaces a smaller cached one or is freed. More
//! messages than that in assembly at once on one worker still work; the extra buffers are allocated
//! and freed as before. Buffers in use by sessions are not counted: they are bounded by the
//! sessions' `max_message_size`. [`trim`] frees the calling thread's free buffers; [`stats`] reports
//! the calling thread's counters, for a worker to publish as metrics.

use std::cell::RefCell;

use crate::session::ASSEMBLY_RETAIN;

/// Most free buffers one thread keeps.
pub const CACHE_MAX_BUFFERS: usize = 4;
/// Most free capacity, in bytes, one thread keeps.
pub const CACHE_MAX_BYTES: usize = 64 << 20;

/// Counters of the calling thread's cache (since the thread started).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct AssemblyStats {
    /// Large buffers handed to sessions.
    pub borrowed: u64,
    /// Of those, how many came from the cache with enough capacity (no allocation).
    pub hits: u64,
    /// Of those, how many had to be allocated or grown (a cached buffer too small, or none).
    pub misses: u64,
    /// Times a borrowed buffer had to grow because a message of unannounced length (fragments)
    /// outgrew it (a reallocation).
    pub grown: u64,
    /// Buffers given back and kept.
    pub returned: u64,
    /// Buffers freed: given back beyond the bounds, evicted for a larger one, or trimmed.
    pub freed: u64,
    /// Free buffers held now.
    pub cached_buffers: usize,
    /// Free capacity held now, in bytes.
    pub cached_bytes: usize,
}

/// One thread's free buffers.
struct Cache {
    /// `free[..len]` are the free buffers; the rest are empty `Vec`s (no allocation).
    free: [Vec<u8>; CACHE_MAX_BUFFERS],
    len: usize,
    bytes: usize,
    stats: AssemblyStats,
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache {
            free: [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
            len: 0,
            bytes: 0,
            stats: AssemblyStats {
                borrowed: 0,
                hits: 0,
                misses: 0,
                grown: 0,
                returned: 0,
                freed: 0,
                cached_buffers: 0,
                cached_bytes: 0,
            },
        })
    };
}

impl Cache {
    /// Takes `free[i]` out of the cache.
    fn remove(&mut self, i: usize) -> Vec<u8> {
        let buf = std::mem::take(&mut self.free[i]);
        self.len -= 1;
        self.free.swap(i, self.len);
        self.bytes -= buf.capacity();
        buf
    }

    /// Index of the smallest free buffer.
    fn smallest(&self) -> Option<usize> {
        (0..self.len).min_by_key(|&i| self.free[i].capacity())
    }

    fn take(&mut self, capacity: usize, final_len_known: bool) -> Vec<u8> {
        self.stats.borrowed += 1;
        let largest = (0..self.len).max_by_key(|&i| self.free[i].capacity());
        let fit = if final_len_known {
            // Best fit: the smallest buffer that is large enough.
            (0..self.len).filter(|&i| self.free[i].capacity() >= capacity).min_by_key(|&i| self.free[i].capacity())
        } else {
            // The message may grow further: the largest buffer, if it is large enough to start.
            largest.filter(|&i| self.free[i].capacity() >= capacity)
        };
        let buf = match fit {
            Some(i) => {
                self.stats.hits += 1;
                self.remove(i)
            }
            None => {
                self.stats.misses += 1;
                match largest {
                    Some(i) => {
                        let mut buf = self.remove(i);
                        buf.reserve_exact(capacity);
                        buf
                    }
                    None => Vec::with_capacity(capacity),
                }
            }
        };
        self.sync();
        buf
    }

    fn give(&mut self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == 0 {
            return;
        }
        buf.clear();
        // Make room by evicting smaller buffers: the cache keeps the largest ones.
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

    fn trim(&mut self) {
        while self.len > 0 {
            drop(self.remove(self.len - 1));
            self.stats.freed += 1;
        }
        self.sync();
    }

    fn sync(&mut self) {
        self.stats.cached_buffers = self.len;
        self.stats.cached_bytes = self.bytes;
    }
}

/// An empty buffer of at least `capacity` bytes: from the calling thread's cache if one is large
/// enough (no allocation), else newly allocated (or a cached one grown). `final_len_known`: the
/// message will need exactly `capacity` (best fit); otherwise it may grow (largest first).
fn take(capacity: usize, final_len_known: bool) -> Vec<u8> {
    CACHE
        .try_with(|c| c.borrow_mut().take(capacity, final_len_known))
        .unwrap_or_else(|_| Vec::with_capacity(capacity))
}

/// Counts the growth of a borrowed buffer.
fn note_growth() {
    let _ = CACHE.try_with(|c| c.borrow_mut().stats.grown += 1);
}

/// Gives a buffer back to the calling thread's cache (or frees it, beyond the bounds).
fn give(buf: Vec<u8>) {
    // During thread teardown the cache may be gone: the buffer is then simply freed.
    let _ = CACHE.try_with(|c| c.borrow_mut().give(buf));
}

/// The calling thread's cache counters.
pub fn stats() -> AssemblyStats {
    CACHE.try_with(|c| c.borrow().stats).unwrap_or_default()
}

/// Frees every free buffer of the calling thread's cache (e.g. after a burst of large messages).
pub fn trim() {
    let _ = CACHE.try_with(|c| c.borrow_mut().trim());
}

/// A session's assembly storage: its own small buffer (at most `ASSEMBLY_RETAIN` bytes, kept
/// between messages) and, while a larger message is in progress, a buffer borrowed from the cache.
#[derive(Debug, Default)]
pub(crate) struct Assembly {
    small: Vec<u8>,
    large: Option<Vec<u8>>,
}

impl Assembly {
    /// The message bytes assembled so far.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.large.as_deref().unwrap_or(&self.small)
    }

    /// Capacity held (small buffer plus a borrowed one).
    pub(crate) fn capacity(&self) -> usize {
        self.small.capacity() + self.large.as_ref().map_or(0, Vec::capacity)
    }

    /// Makes room for a message of `total` bytes (those already assembled included), moving to a
    /// borrowed buffer when the small one would exceed `ASSEMBLY_RETAIN`. `final_len_known`:
    /// `total` is the whole message's length (its last frame's header has been read).
    pub(crate) fn reserve(&mut self, total: usize, final_len_known: bool) {
        if let Some(large) = &mut self.large {
            if total > large.capacity() {
                note_growth();
                large.reserve(total - large.len());
            }
            return;
        }
        if total <= self.small.capacity() {
            return;
        }
        if total <= ASSEMBLY_RETAIN {
            // Grow by doubling, but never past the retained size.
            let target = total.max(2 * self.small.capacity()).min(ASSEMBLY_RETAIN);
            self.small.reserve_exact(target - self.small.len());
            return;
        }
        let mut large = take(total, final_len_known);
        large.extend_from_slice(&self.small);
        self.small.clear();
        self.large = Some(large);
    }

    /// Appends a piece of the message.
    pub(crate) fn extend(&mut self, piece: &[u8]) {
        self.reserve(self.as_slice().len() + piece.len(), false);
        match &mut self.large {
            Some(large) => large.extend_from_slice(piece),
            None => self.small.extend_from_slice(piece),
        }
    }

    /// Empties the storage for the next message, giving a borrowed buffer back.
    pub(crate) fn clear(&mut self) {
        self.small.clear();
        if let Some(large) = self.large.take() {
            give(large);
        }
    }
}

impl Drop for Assembly {
    fn drop(&mut self) {
        if let Some(large) = self.large.take() {
            give(large);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_and_bounds() {
        let mut c = Cache {
            free: Default::default(),
            len: 0,
            bytes: 0,
            stats: AssemblyStats::default(),
        };
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
}
