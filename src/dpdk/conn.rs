//! A stack connection as the WebSocket driver sees it: protocol phase, the input the protocol has
//! not consumed yet, output the send ring could not take yet, and the deadlines the lcore's tick
//! acts on.

use std::net::SocketAddr;
use std::time::Instant;

use hioload_fallback::outbuf::OutBuf;
use hioload_stack::ConnId;
use hioload_wsproto::Session;

use crate::pool::PooledBuf;

/// Where a connection is in its life.
pub(super) enum Phase {
    /// Waiting for a complete upgrade request (deadline: the handshake timeout).
    Handshake,
    /// A WebSocket session (deadline while `Closing`: the close timeout).
    Open(Session),
    /// Nothing more will be produced: send what is pending, then FIN, and discard what the peer
    /// still sends until it closes too (deadline: the close timeout).
    Finishing {
        /// Our FIN is queued.
        fin: bool,
    },
}

/// One accepted stack connection.
pub(super) struct WsConn {
    /// The stack's id (slot index + generation).
    pub id: ConnId,
    /// Server-unique session id (lcore index in the top 16 bits).
    pub session_id: u64,
    pub peer: SocketAddr,
    pub phase: Phase,
    /// Unconsumed input (an incomplete frame or request head), as the protocol left it: a buffer
    /// from the lcore's pool cache, taken when there is something to hold and given back as soon
    /// as it is consumed, so an idle connection holds none. Bounded by the limits.
    pub held: Option<PooledBuf>,
    /// Output the send ring had no room for, in order, ahead of anything sent later.
    pub out: OutBuf,
    /// `Handler::on_close` has been called.
    pub reported: bool,
    /// In the lcore's watch list.
    pub watched: bool,
    /// Handshake, close or finishing deadline.
    pub deadline: Option<Instant>,
    /// Since when `out` has been above the hard backpressure bound.
    pub over_hard_since: Option<Instant>,
    /// When input last arrived (idle pings).
    pub last_input: Instant,
    /// When we sent an idle ping that has not been answered yet.
    pub ping_sent: Option<Instant>,
}

impl WsConn {
    pub fn new(
        id: ConnId,
        session_id: u64,
        peer: SocketAddr,
        handshake_deadline: Instant,
    ) -> WsConn {
        WsConn {
            id,
            session_id,
            peer,
            phase: Phase::Handshake,
            held: None,
            out: OutBuf::new(),
            reported: false,
            watched: false,
            deadline: Some(handshake_deadline),
            over_hard_since: None,
            last_input: Instant::now(),
            ping_sent: None,
        }
    }

    /// Whether the tick must look at this connection.
    pub fn needs_watch(&self) -> bool {
        self.deadline.is_some() || self.over_hard_since.is_some()
    }

    /// Whether this connection carries a session the application has not seen end yet.
    pub fn has_live_session(&self) -> bool {
        matches!(self.phase, Phase::Open(_)) && !self.reported
    }
}
