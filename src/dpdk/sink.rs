//! A session's output on the DPDK path: frames go straight into the connection's send ring, and
//! what does not fit waits in the connection's [`OutBuf`], in order.
//!
//! A non-empty `OutBuf` means the send ring is full; the driver then stops reading that
//! connection, its receive ring fills, smoltcp's window closes and the peer is held back by TCP
//! itself. That is the backpressure of this path: memory per connection stays at its two rings
//! plus at most one turn's worth of output (or one large message a handler sent).

use hioload_fallback::outbuf::OutBuf;
use hioload_stack::{Conn, SendRing};
use hioload_wsproto::FrameSink;

/// A connection's send ring, reached through the connection ([`Conn`]) or lent next to its
/// receive ring while a session parses in place ([`SendRing`]).
pub(super) trait SendTarget {
    /// Queues all of `parts` or nothing.
    fn send_all(&mut self, parts: &[&[u8]]) -> bool;
    /// Queues as much of `bytes` as fits; returns how much.
    fn send_slice(&mut self, bytes: &[u8]) -> usize;
}

impl SendTarget for Conn<'_> {
    fn send_all(&mut self, parts: &[&[u8]]) -> bool {
        Conn::send_all(self, parts)
    }
    fn send_slice(&mut self, bytes: &[u8]) -> usize {
        Conn::send_slice(self, bytes)
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
}

/// The [`FrameSink`] of one connection for one callback.
pub(super) struct RingSink<'c, T: SendTarget + ?Sized> {
    pub ring: &'c mut T,
    pub out: &'c mut OutBuf,
}

impl<T: SendTarget + ?Sized> RingSink<'_, T> {
    /// Queues `bytes` after everything pending: into the ring while nothing waits and it has
    /// room, the rest into the pending output.
    pub fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let n = if self.out.is_empty() {
            self.ring.send_slice(bytes)
        } else {
            0
        };
        if n < bytes.len() {
            self.out.push(&bytes[n..]);
        }
    }
}

impl<T: SendTarget + ?Sized> FrameSink for RingSink<'_, T> {
    fn send_frame(&mut self, header: &[u8], payload: &[u8]) {
        if self.out.is_empty() && self.ring.send_all(&[header, payload]) {
            return;
        }
        self.write(header);
        self.write(payload);
    }
}

/// Moves pending output into the send ring as far as it has room; true when all of it went.
pub(super) fn drain(conn: &mut Conn<'_>, out: &mut OutBuf) -> bool {
    while !out.is_empty() {
        let n = conn.send_slice(out.unsent());
        if n == 0 {
            return false;
        }
        out.consume(n);
    }
    true
}
