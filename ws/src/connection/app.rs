//! The seam between the session layer and the application: what the layer calls ([`App`]) and
//! what a callback may do with its session ([`SessionRef`]).
//!
//! The layer owns every connection and lends a session to the application for the length of one
//! callback. Sends made in a callback go through the session's `Outgoing` to the connection's
//! [`Wire`](super::Wire) and leave with the transport's current turn, so a reply costs no system
//! call (or ring operation) of its own. The same calls, in the same order, happen on every data
//! path: that is the point of having one layer.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use super::upgrade::{SessionState, Upgrade, UpgradeCtx};
use crate::close::CloseCode;
use crate::handshake::{HttpRequest, UpgradePolicy, UpgradeRequest};
use crate::session::{FrameSink, Outgoing, SendError, State};
use crate::settings::Settings;
use crate::shard::topics::{self, check_topic, Subscription, TopicError, TopicOrDeliverError};
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
///
/// Order per connection: `on_upgrade` (once, for a valid request the policy accepted), then, if
/// accepted, `on_open`, any number of `on_message` and `on_drain`, and `on_close` exactly once.
pub trait App {
    /// Routing, Origin check and negotiation for upgrade requests.
    fn upgrade_policy(&self) -> &dyn UpgradePolicy;
    /// The application's decision on an upgrade the policy accepted: accept (with a
    /// subprotocol the client offered and the session's initial state), refuse with an HTTP
    /// response, or defer ([`UpgradeCtx::defer`], then return [`Upgrade::Deferred`]). Default:
    /// accept.
    fn on_upgrade(&self, request: &UpgradeRequest<'_>, ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        let _ = (request, ctx);
        Upgrade::accept()
    }
    /// A session whose buffered output went over the soft bound is back under it: it may send
    /// again. Called once per such episode.
    fn on_drain(&self, session: &mut SessionRef<'_>) {
        let _ = session;
    }
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
    fn on_upgrade(&self, request: &UpgradeRequest<'_>, ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        (**self).on_upgrade(request, ctx)
    }
    fn on_drain(&self, session: &mut SessionRef<'_>) {
        (**self).on_drain(session)
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

/// What a connection keeps for the application: its user data, and whether a send reported
/// backpressure (then `on_drain` is due when the output is back under the soft bound).
#[derive(Default)]
pub(crate) struct SessionData {
    pub user: Option<SessionState>,
    pub drain_wanted: bool,
    /// The buffered output went over the hard bound: data messages are refused until the
    /// output is back under it.
    pub over_hard: bool,
}

impl std::fmt::Debug for SessionData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionData")
            .field("user", &self.user.is_some())
            .field("drain_wanted", &self.drain_wanted)
            .field("over_hard", &self.over_hard)
            .finish()
    }
}

/// The backpressure bounds a session's sends are judged by.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Bounds {
    soft: usize,
    hard: usize,
}

impl Bounds {
    pub(crate) fn of(settings: &Settings) -> Bounds {
        Bounds {
            soft: settings.backpressure.soft_bytes,
            hard: settings.backpressure.hard_bytes,
        }
    }
}

/// What became of a message sent from a callback.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SendStatus {
    /// Queued; the session's buffered output is under the soft bound.
    Queued,
    /// Queued, but the buffered output is now over the soft bound: stop producing for this
    /// session until [`App::on_drain`].
    Backpressure,
}

/// One session, lent to the application for one callback.
pub struct SessionRef<'a> {
    id: u64,
    peer: SocketAddr,
    shard: usize,
    set: &'a Arc<ShardSet>,
    /// `None` once the session has ended: every send is refused.
    out: Option<&'a mut (dyn Sender + 'a)>,
    /// The application's state of this session, and whether it was told of backpressure.
    data: &'a mut SessionData,
    bounds: Bounds,
}

impl<'a> SessionRef<'a> {
    pub(crate) fn new(
        id: u64,
        peer: SocketAddr,
        shard: usize,
        set: &'a Arc<ShardSet>,
        out: Option<&'a mut (dyn Sender + 'a)>,
        data: &'a mut SessionData,
        bounds: Bounds,
    ) -> Self {
        SessionRef {
            id,
            peer,
            shard,
            set,
            out,
            data,
            bounds,
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
    /// The session's user data, if it is a `T` (set at upgrade or with
    /// [`SessionRef::set_user_data`]). Owned by the worker: no lock.
    pub fn user_data<T: Any>(&mut self) -> Option<&mut T> {
        self.data.user.as_mut()?.downcast_mut::<T>()
    }
    /// Replaces the session's user data (dropped after `on_close`).
    pub fn set_user_data<T: Any + Send>(&mut self, data: T) {
        self.data.user = Some(Box::new(data));
    }
    /// The session's application state slot itself (for code that cannot be generic, such as
    /// an object-safe wrapper).
    pub fn state_slot(&mut self) -> &mut Option<SessionState> {
        &mut self.data.user
    }
    /// Takes the session's user data out, if it is a `T`.
    pub fn take_user_data<T: Any>(&mut self) -> Option<T> {
        match self.data.user.take()?.downcast::<T>() {
            Ok(t) => Some(*t),
            Err(other) => {
                self.data.user = Some(other);
                None
            }
        }
    }
    /// Output queued for this session and not yet taken by the network, in bytes.
    pub fn buffered_amount(&self) -> usize {
        self.out.as_ref().map_or(0, |o| o.buffered())
    }
    /// Sends a text message; see [`SendStatus`] and [`SendError`].
    pub fn send_text(&mut self, text: &str) -> Result<SendStatus, SendError> {
        let bounds = self.bounds;
        let out = self.out.as_deref_mut().ok_or(SendError::Closed)?;
        if self.data.over_hard {
            return Err(SendError::OverHardBound);
        }
        out.send_text(text)?;
        Ok(status(out, bounds, self.data))
    }
    /// Sends a binary message; see [`SendStatus`] and [`SendError`].
    pub fn send_binary(&mut self, data: &[u8]) -> Result<SendStatus, SendError> {
        let bounds = self.bounds;
        let out = self.out.as_deref_mut().ok_or(SendError::Closed)?;
        if self.data.over_hard {
            return Err(SendError::OverHardBound);
        }
        out.send_binary(data)?;
        Ok(status(out, bounds, self.data))
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
    /// Subscribes this session to `topic` (see `shard::topics`): in force for every publication
    /// that reaches this shard after this callback. Subscribing again replaces the options.
    pub fn subscribe(&mut self, topic: &str, sub: Subscription) -> Result<(), TopicError> {
        check_topic(topic)?;
        if self.out.as_ref().is_none_or(|o| o.state() != State::Open) {
            return Err(TopicError::Closed);
        }
        topics::queue_subscribe(self.id, topic, sub);
        Ok(())
    }
    /// Ends this session's subscription to `topic` (if any), as [`SessionRef::subscribe`] starts
    /// one. Costs one removal, not a scan of every topic.
    pub fn unsubscribe(&mut self, topic: &str) {
        if check_topic(topic).is_ok() {
            topics::queue_unsubscribe(self.id, topic);
        }
    }
    /// Ends every subscription of this session (they end anyway when it closes).
    pub fn unsubscribe_all(&mut self) {
        topics::queue_unsubscribe_all(self.id);
    }
    /// Publishes `msg` to `topic` (framed once, shared by every subscriber on every shard; this
    /// session does not get it if `exclude_self`). Returns the shards reached.
    pub fn publish(
        &mut self,
        topic: &str,
        msg: Message<'_>,
        exclude_self: bool,
    ) -> Result<usize, TopicOrDeliverError> {
        let exclude = exclude_self.then_some(self.id);
        self.set
            .publish_topic(topic, msg, exclude, Some(self.shard))
    }

    fn sender(&mut self) -> Result<&mut (dyn Sender + 'a), SendError> {
        self.out.as_deref_mut().ok_or(SendError::Closed)
    }
}

/// The status of a queued send (the buffered output is read once per send): backpressure
/// reported makes `on_drain` due once the output is back under the soft bound; over the hard
/// bound, the next sends are refused (until the output drains: see `Connection::after_output`).
fn status(out: &mut dyn Sender, bounds: Bounds, data: &mut SessionData) -> SendStatus {
    let buffered = out.buffered();
    if buffered <= bounds.soft {
        return SendStatus::Queued;
    }
    data.drain_wanted = true;
    data.over_hard = buffered > bounds.hard;
    SendStatus::Backpressure
}

/// Object-safe view of a session's `Outgoing`, so that [`SessionRef`] has one lifetime and no
/// sink type.
pub(crate) trait Sender {
    fn send_text(&mut self, text: &str) -> Result<(), SendError>;
    fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError>;
    fn ping(&mut self, payload: &[u8]) -> Result<(), SendError>;
    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError>;
    fn state(&self) -> State;
    fn buffered(&self) -> usize;
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
    fn buffered(&self) -> usize {
        Outgoing::buffered(self)
    }
}
