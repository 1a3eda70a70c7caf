//! The seam between the session layer and the application: what the layer calls ([`App`]) and
//! what a callback may do with its session ([`SessionRef`]).
//!
//! The layer owns every connection and lends a session to the application for the length of one
//! callback. Sends made in a callback go through the session's `Outgoing` to the connection's
//! [`Wire`](super::Wire) and leave with the transport's current turn, so a reply costs no system
//! call (or ring operation) of its own. The same calls, in the same order, happen on every data
//! path: that is the point of having one layer.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::close::CloseCode;
use crate::handshake::{HttpRequest, UpgradePolicy};
use crate::session::{FrameSink, Outgoing, SendError, State};
use crate::shard::{DeliverError, OutMessage, ShardSet};

/// A whole message, borrowed from the receive buffer or the assembly buffer (no copy).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Text, validated UTF-8.
    Text(&'a str),
    /// Binary data.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => b,
        }
    }
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }
    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// An owned copy, to cross threads.
    pub fn to_owned_message(&self) -> OutMessage {
        match *self {
            Message::Text(t) => OutMessage::Text(t.into()),
            Message::Binary(b) => OutMessage::Binary(b.into()),
        }
    }
}

/// What the session layer calls. Callbacks run on the shard's thread in the middle of its loop
/// turn: they must not block. A panic in a callback is the application's to catch (the facade
/// wraps every handler in its recovery layer); the session layer does not catch it.
pub trait App {
    /// Routing, Origin check and negotiation for upgrade requests.
    fn upgrade_policy(&self) -> &dyn UpgradePolicy;
    /// Answers a well-formed HTTP request that is not an upgrade: writes a complete HTTP/1.1
    /// response (with `Connection: close`) into `response`. The connection is closed after it.
    fn on_http(&self, request: &HttpRequest<'_>, peer: SocketAddr, response: &mut Vec<u8>);
    /// A session has completed its handshake.
    fn on_open(&self, session: &mut SessionRef<'_>);
    /// A whole data message (pings and pongs are answered by the layer and not reported).
    fn on_message(&self, session: &mut SessionRef<'_>, msg: Message<'_>);
    /// The session ended; called exactly once per opened session. `code` is the peer's close code
    /// (1005 when its Close had none), the code we sent (a protocol error, 1008 for a peer that
    /// does not read), or 1006 when the connection ended without a close handshake. Sends are
    /// refused from here on.
    fn on_close(&self, session: &mut SessionRef<'_>, code: CloseCode, reason: &str);
}

impl<A: App + ?Sized> App for Arc<A> {
    fn upgrade_policy(&self) -> &dyn UpgradePolicy {
        (**self).upgrade_policy()
    }
    fn on_http(&self, request: &HttpRequest<'_>, peer: SocketAddr, response: &mut Vec<u8>) {
        (**self).on_http(request, peer, response)
    }
    fn on_open(&self, session: &mut SessionRef<'_>) {
        (**self).on_open(session)
    }
    fn on_message(&self, session: &mut SessionRef<'_>, msg: Message<'_>) {
        (**self).on_message(session, msg)
    }
    fn on_close(&self, session: &mut SessionRef<'_>, code: CloseCode, reason: &str) {
        (**self).on_close(session, code, reason)
    }
}

/// One session, lent to the application for one callback.
pub struct SessionRef<'a> {
    id: u64,
    peer: SocketAddr,
    shard: usize,
    set: &'a ShardSet,
    /// `None` once the session has ended: every send is refused.
    out: Option<&'a mut (dyn Sender + 'a)>,
}

impl<'a> SessionRef<'a> {
    pub(crate) fn new(
        id: u64,
        peer: SocketAddr,
        shard: usize,
        set: &'a ShardSet,
        out: Option<&'a mut (dyn Sender + 'a)>,
    ) -> Self {
        SessionRef {
            id,
            peer,
            shard,
            set,
            out,
        }
    }
    /// Server-unique session id (the shard index is in the top 16 bits).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
    /// Index of the shard (worker) that owns this session.
    pub fn shard(&self) -> usize {
        self.shard
    }
    /// The session's protocol state (`Closed` once it has ended).
    pub fn state(&self) -> State {
        self.out.as_ref().map_or(State::Closed, |o| o.state())
    }
    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.sender()?.send_text(text)
    }
    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.sender()?.send_binary(data)
    }
    /// Sends a ping (payload at most 125 bytes).
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.sender()?.ping(payload)
    }
    /// Starts the close handshake; `App::on_close` follows when the peer answers (or 1006 after
    /// the close timeout).
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.sender()?.close(code, reason)
    }
    /// Queues `msg` for session `id` (of any shard); it leaves with that shard's next turn.
    /// A send to this very session goes through the inbox too (after this turn's output).
    pub fn send_to(&mut self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        self.set.send_to(id, msg, Some(self.shard))
    }
    /// Queues `msg` for every open session, this one included; returns the shards reached.
    pub fn broadcast(&mut self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        self.set.broadcast(msg, Some(self.shard))
    }

    fn sender(&mut self) -> Result<&mut (dyn Sender + 'a), SendError> {
        self.out.as_deref_mut().ok_or(SendError::Closed)
    }
}

/// Object-safe view of a session's `Outgoing`, so that [`SessionRef`] has one lifetime and no
/// sink type.
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
