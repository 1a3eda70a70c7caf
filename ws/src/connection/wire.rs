//! The wire: the one thing a transport gives the session layer, per connection.
//!
//! A transport moves bytes; everything above (handshake, frames, close codes, deadlines,
//! backpressure verdicts) is the session layer's. So the seam is small: queue a frame or raw
//! bytes after everything queued before, hand the network what it takes now, shut the write side
//! down, reset. Where the bytes go is the transport's business: the kernel transport records a
//! frame's payload as a range of its receive buffer and sends the turn with one vectored write;
//! the DPDK worker copies it straight into the connection's send ring. Whatever the network
//! cannot take yet waits in the connection's [`PendingOutput`], in order, and its size is what
//! backpressure watches.

use std::io;

use crate::pending::PendingOutput;
use crate::session::FrameSink;

/// One connection's output, as the session layer sees it.
pub trait Wire {
    /// Queues one frame, `header` then `payload`, after everything queued before (in `pending`
    /// or in the transport's current turn).
    fn queue_frame(&mut self, pending: &mut PendingOutput, header: &[u8], payload: &[u8]);
    /// Queues one frame whose payload lies inside `message`, the session's retained message
    /// ([`crate::Session::retained_message`]). A wire that answers `true` to
    /// [`Wire::keeps_message_ranges`] may record the payload as a range of it; by default, the
    /// same as [`Wire::queue_frame`].
    fn queue_message_frame(
        &mut self,
        pending: &mut PendingOutput,
        header: &[u8],
        payload: &[u8],
        message: &[u8],
    ) {
        let _ = message;
        self.queue_frame(pending, header, payload);
    }
    /// Whether this wire records payloads as ranges of the retained message, and so needs it kept
    /// until the transport has sent the turn (which then releases it). `false` by default:
    /// nothing is retained.
    fn keeps_message_ranges(&self) -> bool {
        false
    }
    /// Queues raw bytes (an HTTP answer) the same way.
    fn queue_bytes(&mut self, pending: &mut PendingOutput, bytes: &[u8]);
    /// Hands the network what is queued, as much as it takes now; the rest stays in `pending`.
    /// An error means the connection is broken (reset by the peer).
    fn flush(&mut self, pending: &mut PendingOutput) -> io::Result<()>;
    /// Shuts the write side down (FIN after what is queued). `false`: not possible yet (bytes
    /// still in flight inside the transport, or last bytes a layer below the session queued in
    /// `pending`, such as TLS's close_notify); the session layer asks again after the next
    /// output.
    fn shutdown_write(&mut self, pending: &mut PendingOutput) -> bool;
    /// Bytes this wire holds for the connection beyond `pending` (a transport's turn output
    /// not yet written); 0 by default.
    fn queued(&self) -> usize {
        0
    }
}

/// A [`Wire`] and a connection's pending output, as the [`FrameSink`] a `Session` writes to.
pub struct WireSink<'a, W: Wire + ?Sized> {
    /// The transport's side.
    pub wire: &'a mut W,
    /// The connection's pending output.
    pub pending: &'a mut PendingOutput,
}

impl<W: Wire + ?Sized> FrameSink for WireSink<'_, W> {
    fn send_frame(&mut self, header: &[u8], payload: &[u8]) {
        self.wire.queue_frame(self.pending, header, payload);
    }
    fn send_message_frame(&mut self, header: &[u8], payload: &[u8], message: &[u8]) {
        self.wire
            .queue_message_frame(self.pending, header, payload, message);
    }
    fn keeps_message_ranges(&self) -> bool {
        self.wire.keeps_message_ranges()
    }
    fn buffered(&self) -> usize {
        self.pending.len() + self.wire.queued()
    }
}

/// A wire that keeps everything in the pending output (tests, and a connection whose transport
/// handle is gone: nothing can be sent, and nothing is lost by the layer above).
#[derive(Debug, Default)]
pub struct PendingWire;

impl Wire for PendingWire {
    fn queue_frame(&mut self, pending: &mut PendingOutput, header: &[u8], payload: &[u8]) {
        pending.push(header);
        pending.push(payload);
    }
    fn queue_bytes(&mut self, pending: &mut PendingOutput, bytes: &[u8]) {
        pending.push(bytes);
    }
    fn flush(&mut self, _pending: &mut PendingOutput) -> io::Result<()> {
        Ok(())
    }
    fn shutdown_write(&mut self, _pending: &mut PendingOutput) -> bool {
        true
    }
}
