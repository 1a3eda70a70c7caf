//! A connection's pending output: the bytes the kernel did not take yet, in order.
//!
//! Most turns write everything straight from the receive buffer and the turn's staging area, and
//! this stays empty (no allocation). Only a peer that reads slower than we write makes it grow,
//! and its size is what backpressure watches. Sent bytes are dropped by advancing a head index;
//! the storage is compacted only when it is appended to, and freed once drained if it grew large.

/// Capacity kept after draining; larger storage is freed so that a burst to one slow peer does not
/// pin memory for the rest of the connection's life.
const KEEP_CAPACITY: usize = 64 << 10;

/// Pending output of one connection.
#[derive(Default)]
pub struct OutBuf {
    data: Vec<u8>,
    head: usize,
}

impl OutBuf {
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

    /// Appends bytes after everything pending.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.head > 0 && self.head >= self.data.len() / 2 {
            self.data.drain(..self.head);
            self.head = 0;
        }
        self.data.extend_from_slice(bytes);
    }

    /// Marks `n` bytes from the front as sent.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "consumed more than pending");
        self.head += n;
        if self.head == self.data.len() {
            self.head = 0;
            if self.data.capacity() > KEEP_CAPACITY {
                self.data = Vec::new();
            } else {
                self.data.clear();
            }
        }
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
        assert_eq!(out.data.capacity(), 0);
    }
}
