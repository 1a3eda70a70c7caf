//! A connection's part in topics (`shard/topics.rs`): queueing a publication's shared frame.

use super::{Connection, Phase, Wire};

impl Connection {
    /// Queues an already framed whole message (a topic publication's header and payload, shared
    /// by every subscriber) if the session is open and not in the middle of a fragmented message
    /// of its own; `false` otherwise. The frame goes as it is: uncompressed, whatever
    /// permessage-deflate agreed (RFC 7692 lets any message go uncompressed).
    pub fn deliver_frame<W: Wire + ?Sized>(
        &mut self,
        header: &[u8],
        payload: &[u8],
        wire: &mut W,
    ) -> bool {
        let Phase::Open(session) = &self.phase else {
            return false;
        };
        if !session.can_send_whole() {
            return false;
        }
        wire.queue_frame(&mut self.pending, header, payload);
        true
    }
}
