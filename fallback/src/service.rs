//! The seam between the transport and the application: what the transport calls ([`Service`]) and
//! what the application may do with a connection during a call ([`Conn`]).
//!
//! A `Service` is shared by all workers (it is `Sync`), so it holds no per-connection state; the
//! transport owns every connection and only lends it for the duration of a callback. Sends go
//! through the session's `Outgoing` into the current loop turn's write, so a reply costs no system
//! call of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use hioload_wsproto::session::{FrameSink, Outgoing, SendError, State};
use hioload_wsproto::{CloseCode, Event, HttpRequest, UpgradePolicy};

use crate::pool::RecvBuffers;
use crate::shared::{DeliverError, OutMessage, Shared};

/// The application side of the kernel transport. One value serves every worker.
pub trait Service: Send + Sync + 'static {
    /// Each worker's source of receive buffers.
    type Buffers: RecvBuffers;

    /// The receive-buffer source of worker `worker`, for buffers of at least `buf_size` bytes.
    /// Called on the worker's thread, after it is pinned, before its loop starts.
    fn worker_buffers(&self, worker: usize, buf_size: usize) -> Self::Buffers;

    /// Routing, Origin check and negotiation for upgrade requests.
    fn upgrade_policy(&self) -> &dyn UpgradePolicy;

    /// Answers a well-formed HTTP request that is not an upgrade: writes a complete HTTP/1.1
    /// response (with `Connection: close`) into `response`. The connection is closed after it.
    fn on_http(&self, request: &HttpRequest<'_>, peer: SocketAddr, response: &mut Vec<u8>);

    /// A session has completed its handshake.
    fn on_open(&self, conn: &mut Conn<'_>);

    /// A data or control message (`Text`, `Binary`, `Ping`, `Pong`; never `Close`, which ends in
    /// [`Service::on_close`]). Replies to pings have already been queued.
    fn on_event(&self, conn: &mut Conn<'_>, event: Event<'_>);

    /// The session ended; called exactly once per opened session. `code` is the peer's close code
    /// (1005 when its Close had none), the code we sent on a protocol error or backpressure (1008),
    /// or 1006 when the connection ended without a close handshake.
    fn on_close(&self, conn: &mut Conn<'_>, code: CloseCode, reason: &str);
}

/// One session, lent to the application for one callback.
pub struct Conn<'a> {
    id: u64,
    peer: SocketAddr,
    worker: usize,
    shared: &'a Shared,
    out: &'a mut (dyn Sender + 'a),
}

impl<'a> Conn<'a> {
    pub(crate) fn new(
        id: u64,
        peer: SocketAddr,
        worker: usize,
        shared: &'a Shared,
        out: &'a mut (dyn Sender + 'a),
    ) -> Self {
        Conn {
            id,
            peer,
            worker,
            shared,
            out,
        }
    }

    /// Server-unique session id (the worker index is in the top 16 bits).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
    /// Index of the worker that owns this session.
    pub fn worker(&self) -> usize {
        self.worker
    }
    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.out.send_text(text)
    }
    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.out.send_binary(data)
    }
    /// Sends a ping (payload at most 125 bytes).
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.out.ping(payload)
    }
    /// Starts the close handshake; [`Service::on_close`] follows when the peer answers (or 1006
    /// after the close timeout).
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.out.close(code, reason)
    }
    /// The session's protocol state.
    pub fn state(&self) -> State {
        self.out.state()
    }
    /// Queues `msg` for session `id` (of any worker); it leaves with that worker's next turn.
    /// A send to this very session goes through the inbox too (after this turn's output).
    pub fn send_to(&mut self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        self.shared.send_to(id, msg, Some(self.worker))
    }
    /// Queues `msg` for every open session, this one included; returns the workers reached.
    pub fn broadcast(&mut self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        self.shared.broadcast(msg, Some(self.worker))
    }
}

/// Object-safe view of a session's `Outgoing`, so that [`Conn`] has one lifetime and no sink type.
pub(crate) trait Sender {
    fn send_text(&mut self, text: &str) -> Result<(), SendError>;
    fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError>;
    fn ping(&mut self, payload: &[u8]) -> Result<(), SendError>;
    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError>;
    fn state(&self) -> State;
}

impl<S: FrameSink + ?Sized> Sender for Outgoing<'_, S> {
    fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        Outgoing::send_text(self, text)
    }
    fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        Outgoing::send_binary(self, data)
    }
    fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        Outgoing::ping(self, payload)
    }
    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        Outgoing::close(self, code, reason)
    }
    fn state(&self) -> State {
        Outgoing::state(self)
    }
}

/// The sender of a session that has ended: every send is refused.
pub(crate) struct Ended;

impl Sender for Ended {
    fn send_text(&mut self, _: &str) -> Result<(), SendError> {
        Err(SendError::Closed)
    }
    fn send_binary(&mut self, _: &[u8]) -> Result<(), SendError> {
        Err(SendError::Closed)
    }
    fn ping(&mut self, _: &[u8]) -> Result<(), SendError> {
        Err(SendError::Closed)
    }
    fn close(&mut self, _: CloseCode, _: &str) -> Result<(), SendError> {
        Err(SendError::Closed)
    }
    fn state(&self) -> State {
        State::Closed
    }
}
