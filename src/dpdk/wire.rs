//! A connection's wire on the DPDK path: frames go straight into the connection's send ring,
//! and what does not fit waits in its pending output, in order.
//!
//! Pending output means the send ring is full; the worker then stops reading that connection,
//! its receive ring fills, smoltcp's window closes and the peer is held back by TCP itself. That
//! is this path's backpressure: memory per connection stays at its two rings plus at most one
//! turn's worth of output (or one large message a handler sent), whose storage is borrowed from
//! the worker's output cache while it is pending.

use std::io;

use hioload_stack::{Conn, SendRing};
use hioload_wsproto::output_cache::OutputCache;
use hioload_wsproto::{PendingOutput, Wire};

/// A connection's send ring, reached through the connection ([`Conn`]) or lent next to its
/// receive ring while a session parses in place ([`SendRing`]).
pub(super) trait SendTarget {
    /// Queues all of `parts` or nothing.
    fn send_all(&mut self, parts: &[&[u8]]) -> bool;
    /// Queues as much of `bytes` as fits; returns how much.
    fn send_slice(&mut self, bytes: &[u8]) -> usize;
    /// FIN after what the ring holds; `false` where that cannot be done from here.
    fn close(&mut self) -> bool;
}

impl SendTarget for Conn<'_> {
    fn send_all(&mut self, parts: &[&[u8]]) -> bool {
        Conn::send_all(self, parts)
    }
    fn send_slice(&mut self, bytes: &[u8]) -> usize {
        Conn::send_slice(self, bytes)
    }
    fn close(&mut self) -> bool {
        Conn::close(self);
        true
    }
}

impl SendTarget for SendRing<'_> {
    fn send_all(&mut self, parts: &[&[u8]]) -> bool {
        SendRing::send_all(self, parts)
    }
    fn send_slice(&mut self, bytes: &[u8]) -> usize {
        let mut done = 0;
        // Two rounds cover the ring's wrap.
        for _ in 0..2 {
            let rest = &bytes[done..];
            let n = self.send_with(|room| {
                let n = room.len().min(rest.len());
                room[..n].copy_from_slice(&rest[..n]);
                n
            });
            done += n;
            if n == 0 || done == bytes.len() {
                break;
            }
        }
        done
    }
    fn close(&mut self) -> bool {
        false // not in the middle of a read: asked again after it
    }
}

impl<T: SendTarget + ?Sized> SendTarget for &mut T {
    fn send_all(&mut self, parts: &[&[u8]]) -> bool {
        (**self).send_all(parts)
    }
    fn send_slice(&mut self, bytes: &[u8]) -> usize {
        (**self).send_slice(bytes)
    }
    fn close(&mut self) -> bool {
        (**self).close()
    }
}

/// A connection the stack no longer has: nothing can be sent (the layer above keeps it pending
/// until the connection is forgotten).
impl<T: SendTarget> SendTarget for Option<T> {
    fn send_all(&mut self, parts: &[&[u8]]) -> bool {
        self.as_mut().is_some_and(|t| t.send_all(parts))
    }
    fn send_slice(&mut self, bytes: &[u8]) -> usize {
        self.as_mut().map_or(0, |t| t.send_slice(bytes))
    }
    fn close(&mut self) -> bool {
        self.as_mut().map_or(true, |t| t.close())
    }
}

/// The [`Wire`] of one connection over its send ring.
pub(super) struct RingWire<'a, T: SendTarget> {
    pub target: T,
    pub cache: &'a mut OutputCache,
}

impl<T: SendTarget> RingWire<'_, T> {
    /// Queues `bytes` after everything pending: into the ring while nothing waits and it has
    /// room, the rest into the pending output.
    fn write(&mut self, pending: &mut PendingOutput, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let n = if pending.is_empty() {
            self.target.send_slice(bytes)
        } else {
            0
        };
        if n < bytes.len() {
            pending.push_cached(&bytes[n..], self.cache);
        }
    }
}

impl<T: SendTarget> Wire for RingWire<'_, T> {
    fn queue_frame(&mut self, pending: &mut PendingOutput, header: &[u8], payload: &[u8]) {
        if pending.is_empty() && self.target.send_all(&[header, payload]) {
            return;
        }
        self.write(pending, header);
        self.write(pending, payload);
    }
    fn queue_bytes(&mut self, pending: &mut PendingOutput, bytes: &[u8]) {
        self.write(pending, bytes);
    }
    /// Moves pending output into the send ring as far as it has room (smoltcp sends it at the
    /// end of the loop turn).
    fn flush(&mut self, pending: &mut PendingOutput) -> io::Result<()> {
        while !pending.is_empty() {
            let n = self.target.send_slice(pending.unsent());
            if n == 0 {
                break;
            }
            pending.consume_cached(n, self.cache);
        }
        Ok(())
    }
    fn shutdown_write(&mut self, _pending: &mut PendingOutput) -> bool {
        self.target.close()
    }
}
