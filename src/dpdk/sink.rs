//! A session's output on the DPDK path: frames go straight into the connection's send ring, and
//! what does not fit waits in the connection's [`OutBuf`], in order.
//!
//! A non-empty `OutBuf` means the send ring is full; the driver then stops reading that
//! connection, its receive ring fills, smoltcp's window closes and the peer is held back by TCP
//! itself. That is the backpressure of this path: memory per connection stays at its two rings
//! plus at most one turn's worth of output (or one large message a handler sent).

use hioload_fallback::outbuf::OutBuf;
use hioload_stack::Conn;
use hioload_wsproto::FrameSink;

/// The [`FrameSink`] of one connection for one callback.
pub(super) struct RingSink<'c, 'a> {
    pub conn: &'c mut Conn<'a>,
    pub out: &'c mut OutBuf,
}

impl RingSink<'_, '_> {
    /// Queues `bytes` after everything pending: into the ring while nothing waits and it has
    /// room, the rest into the pending output.
    pub fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let n = if self.out.is_empty() {
            self.conn.send_slice(bytes)
        } else {
            0
        };
        if n < bytes.len() {
            self.out.push(&bytes[n..]);
        }
    }
}

impl FrameSink for RingSink<'_, '_> {
    fn send_frame(&mut self, header: &[u8], payload: &[u8]) {
        if self.out.is_empty() && self.conn.send_all(&[header, payload]) {
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
