//! A connection's held input: the bytes the protocol left unconsumed at the end of a read (a
//! partial request head, a partial frame), kept until more bytes arrive.
//!
//! **Why per connection, and sized to what is held.** A transport reads into a buffer of its own
//! (a worker's scratch buffer, a provided buffer of the io_uring ring, the stack's receive ring)
//! and gives that buffer back at the end of the read. If a connection kept the whole buffer to
//! hold three bytes of a frame header, a few thousand connections that each send one byte could
//! drain a pool that every connection shares, and stop everyone's reads. Here a connection keeps
//! only what it holds, in storage of its own: a partial header costs a few bytes, a partial
//! in-place frame at most `inplace_frame_max` (the protocol streams larger frames), and a failed
//! allocation affects that connection alone (it is closed, see [`crate::connection`]).
//!
//! Storage up to [`HELD_RETAIN`] bytes is kept once emptied (so the common small remainder does
//! not allocate per read); larger storage is freed as soon as its bytes have been consumed.

use std::collections::TryReserveError;

/// Capacity kept by an emptied held buffer (256 bytes: a partial frame header, a short control
/// frame); larger storage is freed once emptied.
pub const HELD_RETAIN: usize = 256;

/// One connection's unconsumed input; see the module documentation.
#[derive(Debug, Default)]
pub struct HeldInput {
    bytes: Vec<u8>,
}

impl HeldInput {
    /// Nothing held (allocates nothing).
    pub const fn new() -> Self {
        HeldInput { bytes: Vec::new() }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Memory held, in bytes (for accounting).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// The held bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// The held bytes, writable (TLS decrypts a held record in place).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// Lets the first `n` held bytes go (consumed in place).
    pub fn discard_front(&mut self, n: usize) {
        if n >= self.bytes.len() {
            self.clear();
        } else if n > 0 {
            self.bytes.drain(..n);
        }
    }

    /// Holds `rest` (after what is held already). On an allocation failure nothing changes.
    pub fn keep(&mut self, rest: &[u8]) -> Result<(), TryReserveError> {
        self.bytes.try_reserve(rest.len())?;
        self.bytes.extend_from_slice(rest);
        Ok(())
    }

    /// Copies the held bytes to the start of `dst` and lets them go (they are the caller's now);
    /// returns how many. `dst` must be at least [`HeldInput::len`] long.
    pub fn move_to(&mut self, dst: &mut [u8]) -> usize {
        let n = self.bytes.len();
        dst[..n].copy_from_slice(&self.bytes);
        self.clear();
        n
    }

    /// Drops the held bytes; storage beyond [`HELD_RETAIN`] is freed.
    pub fn clear(&mut self) {
        if self.bytes.capacity() > HELD_RETAIN {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_only_what_is_left_and_frees_large_storage() {
        let mut held = HeldInput::new();
        assert_eq!(held.capacity(), 0);
        held.keep(b"\x82").unwrap();
        assert!(held.capacity() < 64, "a one-byte remainder holds little");
        held.keep(&[7u8; 3]).unwrap();
        let mut dst = [0u8; 8];
        assert_eq!(held.move_to(&mut dst), 4);
        assert_eq!(&dst[..4], b"\x82\x07\x07\x07");
        assert!(held.is_empty() && held.capacity() <= HELD_RETAIN);
        held.keep(&[1u8; 10_000]).unwrap();
        assert!(held.capacity() >= 10_000);
        held.clear();
        assert_eq!(held.capacity(), 0, "large storage is freed once emptied");
    }
}
