//! A connection as its worker sees it: socket, protocol phase, held input, pending output, and the
//! flags and deadlines the loop acts on.

use std::net::SocketAddr;
use std::time::Instant;

use hioload_wsproto::Session;
use mio::net::TcpStream;

use crate::outbuf::OutBuf;

/// Where a connection is in its life.
pub(crate) enum Phase {
    /// Waiting for a complete upgrade request (deadline: the handshake timeout).
    Handshake,
    /// A WebSocket session (deadline while `Closing`: the close timeout).
    Open(Session),
    /// Nothing more will be produced: send what is pending, shut down our side, then read and
    /// discard until the peer closes, so that our last bytes are not destroyed by a reset
    /// (deadline: the close timeout).
    Finishing {
        /// Our write side is shut down.
        shut: bool,
    },
}

/// One accepted TCP connection; `B` is the receive buffer type.
pub(crate) struct Connection<B> {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Server-unique id, also used to tell a slot's current occupant from an earlier one.
    pub id: u64,
    pub phase: Phase,
    /// Receive buffer, held only while `held > 0`.
    pub rbuf: Option<B>,
    /// Unconsumed bytes at the start of `rbuf`.
    pub held: usize,
    /// Bytes the kernel has not taken yet.
    pub out: OutBuf,
    /// `Service::on_close` has been called (the session is over for the application).
    pub reported: bool,
    /// The poller reported the peer's FIN or an error: read until the read says so.
    pub hangup: bool,
    /// Backpressure: not read until `out` drains below the soft bound.
    pub read_paused: bool,
    /// In the worker's ready list (has input we have not read yet).
    pub queued_ready: bool,
    /// In the worker's watch list (has a deadline or is above the hard bound).
    pub watched: bool,
    /// Handshake, close or finishing deadline.
    pub deadline: Option<Instant>,
    /// Since when `out` has been above the hard bound.
    pub over_hard_since: Option<Instant>,
    /// Loop-turn clock of the last read that brought bytes (idle timeout).
    pub last_input: Instant,
    /// When we pinged this idle session, until it sends anything.
    pub ping_sent: Option<Instant>,
    /// io_uring: a receive is in flight for this connection.
    pub recv_armed: bool,
    /// io_uring: a ring send of earlier output is queued or in flight; later output waits in `out`
    /// until its completion.
    pub send_queued: bool,
}

impl<B> Connection<B> {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
        handshake_deadline: Instant,
        now: Instant,
    ) -> Self {
        Connection {
            stream,
            peer,
            id,
            phase: Phase::Handshake,
            rbuf: None,
            held: 0,
            out: OutBuf::new(),
            reported: false,
            hangup: false,
            read_paused: false,
            queued_ready: false,
            watched: false,
            deadline: Some(handshake_deadline),
            over_hard_since: None,
            last_input: now,
            ping_sent: None,
            recv_armed: false,
            send_queued: false,
        }
    }

    /// Whether the timer tick must look at this connection.
    pub fn needs_watch(&self) -> bool {
        self.deadline.is_some() || self.over_hard_since.is_some()
    }

    /// Whether this connection carries a session the application has not seen end yet.
    pub fn has_live_session(&self) -> bool {
        matches!(self.phase, Phase::Open(_)) && !self.reported
    }
}
