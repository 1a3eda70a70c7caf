//! Large message-assembly buffers, cached per worker thread.
//!
//! A message that does not arrive whole in one frame and one read (a fragmented message, or a
//! frame larger than `Limits::inplace_frame_max` split across reads) is assembled by its
//! [`Session`](crate::Session). Each session keeps its own small buffer of at most
//! [`ASSEMBLY_RETAIN`] (4 KiB) bytes, so that an idle connection never pins more than that. A
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
use std::collections::TryReserveError;

use crate::buffer_cache::BufferCache;
pub use crate::buffer_cache::{CACHE_MAX_BUFFERS, CACHE_MAX_BYTES};
use crate::session::ASSEMBLY_RETAIN;

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

/// One thread's free buffers, and how often borrowed ones had to grow.
struct Cache {
    buffers: BufferCache,
    grown: u64,
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache { buffers: BufferCache::new(), grown: 0 })
    };
}

impl Cache {
    fn stats(&self) -> AssemblyStats {
        let s = self.buffers.stats();
        AssemblyStats {
            borrowed: s.borrowed,
            hits: s.hits,
            misses: s.misses,
            grown: self.grown,
            returned: s.returned,
            freed: s.freed,
            cached_buffers: s.cached_buffers,
            cached_bytes: s.cached_bytes,
        }
    }
}

/// An empty buffer of at least `capacity` bytes: from the calling thread's cache if one is large
/// enough (no allocation), else newly allocated (or a cached one grown). `final_len_known`: the
/// message will need exactly `capacity` (best fit); otherwise it may grow (largest first).
fn take(capacity: usize, final_len_known: bool) -> Result<Vec<u8>, TryReserveError> {
    CACHE
        .try_with(|c| c.borrow_mut().buffers.try_take(capacity, final_len_known))
        .unwrap_or_else(|_| {
            let mut buf = Vec::new();
            buf.try_reserve_exact(capacity).map(|()| buf)
        })
}

/// Counts the growth of a borrowed buffer.
fn note_growth() {
    let _ = CACHE.try_with(|c| c.borrow_mut().grown += 1);
}

/// Gives a buffer back to the calling thread's cache (or frees it, beyond the bounds).
fn give(buf: Vec<u8>) {
    // During thread teardown the cache may be gone: the buffer is then simply freed.
    let _ = CACHE.try_with(|c| c.borrow_mut().buffers.give(buf));
}

/// An empty buffer of at least `capacity` bytes from the calling thread's cache (or a new one;
/// empty on allocation failure: it then grows as it can), for output that lives one message
/// (inflated messages); give it back with [`give_back`].
pub(crate) fn take_buffer(capacity: usize) -> Vec<u8> {
    take(capacity, false).unwrap_or_default()
}

/// Gives a message buffer that left its session (an echo's unsent end adopted by the pending
/// output) back to the calling thread's cache.
pub(crate) fn give_back(buf: Vec<u8>) {
    give(buf);
}

/// The calling thread's cache counters.
pub fn stats() -> AssemblyStats {
    CACHE.try_with(|c| c.borrow().stats()).unwrap_or_default()
}

/// Frees every free buffer of the calling thread's cache (e.g. after a burst of large messages).
pub fn trim() {
    let _ = CACHE.try_with(|c| c.borrow_mut().buffers.trim());
}

/// Most bytes reserved ahead of the bytes that have arrived, whatever length a frame header
/// declares (64 KiB).
pub const RESERVE_STEP: usize = 64 << 10;

/// A session's assembly storage: its own small buffer (at most `ASSEMBLY_RETAIN` bytes, kept
/// between messages) and, while a larger message is in progress, a buffer borrowed from the cache.
///
/// A large message just delivered may be *retained*: its buffer is kept, unchanged, until the
/// transport has sent the turn's output (so that a reply that is the message itself, an echo, is
/// written from it instead of being copied), while the next message assembles in other storage.
#[derive(Debug, Default)]
pub(crate) struct Assembly {
    small: Vec<u8>,
    large: Option<Vec<u8>>,
    retained: Option<Vec<u8>>,
}

impl Assembly {
    /// The message bytes assembled so far.
    pub(crate) fn as_slice(&self) -> &[u8] {
        self.large.as_deref().unwrap_or(&self.small)
    }

    /// Capacity held (small buffer plus the borrowed and retained ones).
    pub(crate) fn capacity(&self) -> usize {
        self.small.capacity()
            + self.large.as_ref().map_or(0, Vec::capacity)
            + self.retained.as_ref().map_or(0, Vec::capacity)
    }

    /// Whether the message assembled now can be retained once delivered (it is in a borrowed
    /// buffer and no earlier message is retained).
    pub(crate) fn can_retain(&self) -> bool {
        self.large.is_some() && self.retained.is_none()
    }

    /// The retained message (empty if none).
    pub(crate) fn retained(&self) -> &[u8] {
        self.retained.as_deref().unwrap_or(&[])
    }

    /// Takes the retained message's buffer out (see [`crate::PendingOutput::adopt`]).
    pub(crate) fn take_retained(&mut self) -> Option<Vec<u8>> {
        self.retained.take()
    }

    /// Gives the retained message's buffer back to the cache.
    pub(crate) fn release_retained(&mut self) {
        if let Some(buf) = self.retained.take() {
            give(buf);
        }
    }

    /// Empties the storage for the next message after a delivery, retaining the delivered
    /// message's buffer if asked (and [`Assembly::can_retain`] allowed it; see the type's
    /// documentation).
    pub(crate) fn finish_delivered(&mut self, retain: bool) {
        if retain && self.can_retain() {
            self.small.clear();
            self.retained = self.large.take();
        } else {
            self.clear();
        }
    }

    /// Room to read up to `want` more bytes of the message straight into its borrowed buffer
    /// (reserved as [`Assembly::reserve`] does, so at most a step ahead of the bytes arrived);
    /// `None` if it cannot be had. `final_len`: the message's whole length is known and is
    /// what has arrived plus `want`.
    pub(crate) fn room(
        &mut self,
        want: usize,
        final_len: bool,
    ) -> Option<&mut [std::mem::MaybeUninit<u8>]> {
        let len = self.as_slice().len();
        self.reserve(len + want, final_len).ok()?;
        let large = self.large.as_mut()?;
        let spare = large.spare_capacity_mut();
        let n = spare.len().min(want);
        Some(&mut spare[..n])
    }

    /// Marks `n` bytes of the room last given by [`Assembly::room`] as part of the message,
    /// and returns them.
    ///
    /// # Safety
    /// Those `n` bytes must have been written (initialized), and `n` must not exceed the room.
    pub(crate) unsafe fn filled(&mut self, n: usize) -> &mut [u8] {
        let large = self
            .large
            .as_mut()
            .expect("room() moved the message to a borrowed buffer");
        let len = large.len();
        assert!(n <= large.capacity() - len, "filled beyond the room");
        // SAFETY: the caller wrote the first `n` bytes of the spare capacity (checked in bounds).
        unsafe { large.set_len(len + n) };
        &mut large[len..]
    }

    /// Makes room for a message of `total` bytes (those already assembled included), moving to a
    /// borrowed buffer when the small one would exceed `ASSEMBLY_RETAIN`. `final_len_known`:
    /// `total` is the whole message's length (its last frame's header has been read).
    ///
    /// A declared length is a promise, not bytes: at most [`RESERVE_STEP`] (or an eighth of
    /// what has arrived, if more: growth stays geometric) beyond what has arrived is reserved,
    /// so a header that announces 16 MiB and sends one byte holds one step, not 16 MiB. Every allocation is fallible: an error leaves the storage as it was, and the
    /// session closes (1011) instead of the process aborting.
    pub(crate) fn reserve(
        &mut self,
        total: usize,
        final_len_known: bool,
    ) -> Result<(), TryReserveError> {
        let len = self.as_slice().len();
        let (total, final_len_known) = if total > len + RESERVE_STEP {
            (len + RESERVE_STEP, false)
        } else {
            (total, final_len_known)
        };
        if let Some(large) = &mut self.large {
            if total > large.capacity() {
                note_growth();
                // Geometric growth (by an eighth, at least a step), so that a message that
                // grows piece by piece is copied a bounded number of times, while the room
                // ahead of the bytes stays within an eighth of them plus a step.
                let len = large.len();
                let want = (total - len).max(RESERVE_STEP.max(len / 8));
                large.try_reserve_exact(want)?;
            }
            return Ok(());
        }
        if total <= self.small.capacity() {
            return Ok(());
        }
        if total <= ASSEMBLY_RETAIN {
            // Grow by doubling, but never past the retained size.
            let target = total.max(2 * self.small.capacity()).min(ASSEMBLY_RETAIN);
            return self.small.try_reserve_exact(target - self.small.len());
        }
        let mut large = take(total, final_len_known)?;
        large.extend_from_slice(&self.small);
        self.small.clear();
        self.large = Some(large);
        Ok(())
    }

    /// Appends a piece of the message (fallible, as [`Assembly::reserve`]).
    pub(crate) fn extend(&mut self, piece: &[u8]) -> Result<(), TryReserveError> {
        self.reserve(self.as_slice().len() + piece.len(), false)?;
        // `reserve` stops a step ahead; a piece larger than that still needs its room, and
        // `extend_from_slice` must never be the one to allocate (it cannot fail gracefully).
        let buf = match &mut self.large {
            Some(large) => large,
            None => &mut self.small,
        };
        buf.try_reserve_exact(piece.len())?;
        buf.extend_from_slice(piece);
        Ok(())
    }

    /// Empties the storage for the next message, giving a borrowed buffer back (a retained one
    /// stays until released).
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
        self.release_retained();
    }
}
