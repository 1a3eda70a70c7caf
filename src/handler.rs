//! The application's side: a [`Handler`] reacts to session events through a [`Ctx`].
//!
//! One handler value serves every worker and every session (it is shared as `Arc<dyn Handler>`,
//! hence `Send + Sync`). State of one session lives in the session ([`Ctx::user_data`], set at the
//! upgrade or any time after; the worker owns it: no lock, no map), state of one worker in a
//! [`crate::PerWorker`] handler. Callbacks run on the worker thread that owns the session, in the
//! middle of its loop turn: they must not block. Sends made in a callback leave with that turn's
//! single vectored write. Being a trait object, a handler can be wrapped by another (middleware).
//!
//! Order, per connection, on one thread: [`Handler::on_upgrade`] (once; a deferred decision is
//! completed from any thread), then if accepted [`Handler::on_open`], any number of
//! [`Handler::on_message`] and [`Handler::on_drain`], and [`Handler::on_close`] exactly once.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

pub use hioload_wsproto::handshake::UpgradeRequest;
pub use hioload_wsproto::{
    Accept, CloseCode, DeliverError, Message, OutMessage, PendingUpgrade, Rejection, SendError,
    SendStatus, SessionState, State, Subscription, TopicError, TopicOrDeliverError, Upgrade,
    UpgradeCtx, UpgradeError,
};

/// Reacts to the events of every session.
pub trait Handler: Send + Sync + 'static {
    /// Decides on an upgrade request that passed the server's checks (valid, on the configured
    /// path, allowed Origin), before the 101: see the request (path, [`UpgradeRequest::query`],
    /// [`UpgradeRequest::headers`], offered subprotocols) and the peer ([`UpgradeCtx::peer_addr`]),
    /// then accept (`Upgrade::Accept(Accept::new().protocol("chat").user_data(user))`), refuse
    /// (`Upgrade::Reject(Rejection::new(401, "token required"))`), or defer: keep
    /// `ctx.defer()`, return [`Upgrade::Deferred`], and complete it from any thread within the
    /// handshake deadline. Runs on the worker thread: do not block. Default: accept.
    fn on_upgrade(&self, request: &UpgradeRequest<'_>, ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        let _ = (request, ctx);
        Upgrade::accept()
    }
    /// The handshake completed; the session is open.
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }
    /// A whole message arrived (fragments are already joined).
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>);
    /// The session ended; called exactly once per opened session. `code` is the peer's close code
    /// (1005 if it sent none), the code we closed with (protocol error 1002/1007/1009, 1008 for a
    /// peer that does not read, 1011 after a handler panic), or 1006 if the connection ended
    /// without a close handshake (also: an idle peer that did not answer our ping). Sends are
    /// refused from here on.
    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        let _ = (ctx, code, reason);
    }
    /// The session's buffered output went over the soft bound (a send returned
    /// [`SendStatus::Backpressure`]) and is back under it: produce again. Once per episode.
    fn on_drain(&self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }
    /// Called once by [`crate::Server::start`], before any session, with the number of workers
    /// (middleware size their per-worker counters here).
    fn on_start(&self, workers: usize) {
        let _ = workers;
    }
    /// Appends this handler's metrics in the Prometheus text format (served at `/metrics`).
    /// Called on the thread that renders the answer: an admin connection's, or a worker when
    /// `/metrics` is served on the WebSocket listener (`Config::control_on_main`): read
    /// counters, do not wait on anything.
    fn write_metrics(&self, out: &mut String) {
        let _ = out;
    }
    /// Whether this handler (chain) catches panics itself, i.e. contains
    /// [`crate::middleware::Recovery`]. If not, the server wraps it in one.
    fn recovers_panics(&self) -> bool {
        false
    }
}

impl<H: Handler + ?Sized> Handler for std::sync::Arc<H> {
    fn on_upgrade(&self, request: &UpgradeRequest<'_>, ctx: &mut UpgradeCtx<'_>) -> Upgrade {
        (**self).on_upgrade(request, ctx)
    }
    fn on_drain(&self, ctx: &mut Ctx<'_>) {
        (**self).on_drain(ctx)
    }
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        (**self).on_open(ctx)
    }
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        (**self).on_message(ctx, msg)
    }
    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        (**self).on_close(ctx, code, reason)
    }
    fn on_start(&self, workers: usize) {
        (**self).on_start(workers)
    }
    fn write_metrics(&self, out: &mut String) {
        (**self).write_metrics(out)
    }
    fn recovers_panics(&self) -> bool {
        (**self).recovers_panics()
    }
}

/// What a data path's session offers to a [`Ctx`]; one implementation per data path. Public so
/// that middleware can interpose on sends (wrap the ops of a `Ctx` and hand a new `Ctx` on).
pub trait SessionOps {
    /// Server-unique session id.
    fn session_id(&self) -> u64;
    /// The peer's address.
    fn peer_addr(&self) -> SocketAddr;
    /// Index of the worker that owns the session.
    fn worker(&self) -> usize;
    /// Protocol state.
    fn state(&self) -> State;
    /// Sends a text message.
    fn send_text(&mut self, text: &str) -> Result<SendStatus, SendError>;
    /// Sends a binary message.
    fn send_binary(&mut self, data: &[u8]) -> Result<SendStatus, SendError>;
    /// Output queued for the session and not yet taken by the network, in bytes.
    fn buffered_amount(&self) -> usize;
    /// The session's application state slot.
    fn state_slot(&mut self) -> &mut Option<SessionState>;
    /// Sends a ping.
    fn ping(&mut self, payload: &[u8]) -> Result<(), SendError>;
    /// Starts the close handshake.
    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError>;
    /// Queues a message for another session (any worker).
    fn send_to(&mut self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError>;
    /// Queues a message for every open session.
    fn broadcast(&mut self, msg: Arc<OutMessage>) -> Result<usize, DeliverError>;
    /// Subscribes the session to a topic.
    fn subscribe(&mut self, topic: &str, sub: Subscription) -> Result<(), TopicError>;
    /// Ends the session's subscription to a topic.
    fn unsubscribe(&mut self, topic: &str);
    /// Publishes to a topic (the session itself excluded if `exclude_self`).
    fn publish(
        &mut self,
        topic: &str,
        msg: Message<'_>,
        exclude_self: bool,
    ) -> Result<usize, TopicOrDeliverError>;
}

/// The session layer's session, as the facade's handlers see it (both data paths).
impl SessionOps for hioload_wsproto::SessionRef<'_> {
    fn session_id(&self) -> u64 {
        self.id()
    }
    fn peer_addr(&self) -> SocketAddr {
        hioload_wsproto::SessionRef::peer_addr(self)
    }
    fn worker(&self) -> usize {
        self.shard()
    }
    fn state(&self) -> State {
        hioload_wsproto::SessionRef::state(self)
    }
    fn send_text(&mut self, text: &str) -> Result<SendStatus, SendError> {
        hioload_wsproto::SessionRef::send_text(self, text)
    }
    fn send_binary(&mut self, data: &[u8]) -> Result<SendStatus, SendError> {
        hioload_wsproto::SessionRef::send_binary(self, data)
    }
    fn buffered_amount(&self) -> usize {
        hioload_wsproto::SessionRef::buffered_amount(self)
    }
    fn state_slot(&mut self) -> &mut Option<SessionState> {
        hioload_wsproto::SessionRef::state_slot(self)
    }
    fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        hioload_wsproto::SessionRef::ping(self, payload)
    }
    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        hioload_wsproto::SessionRef::close(self, code, reason)
    }
    fn send_to(&mut self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        hioload_wsproto::SessionRef::send_to(self, id, msg)
    }
    fn broadcast(&mut self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        hioload_wsproto::SessionRef::broadcast(self, msg)
    }
    fn subscribe(&mut self, topic: &str, sub: Subscription) -> Result<(), TopicError> {
        hioload_wsproto::SessionRef::subscribe(self, topic, sub)
    }
    fn unsubscribe(&mut self, topic: &str) {
        hioload_wsproto::SessionRef::unsubscribe(self, topic)
    }
    fn publish(
        &mut self,
        topic: &str,
        msg: Message<'_>,
        exclude_self: bool,
    ) -> Result<usize, TopicOrDeliverError> {
        hioload_wsproto::SessionRef::publish(self, topic, msg, exclude_self)
    }
}

/// One session, lent to a [`Handler`] callback.
pub struct Ctx<'a> {
    ops: &'a mut (dyn SessionOps + 'a),
}

impl<'a> Ctx<'a> {
    /// A context over `ops` (for middleware that interpose on sends).
    pub fn new(ops: &'a mut (dyn SessionOps + 'a)) -> Self {
        Ctx { ops }
    }
    /// The session operations under this context (to wrap them).
    pub fn ops(&mut self) -> &mut (dyn SessionOps + 'a) {
        &mut *self.ops
    }
    /// Server-unique id of this session.
    pub fn session_id(&self) -> u64 {
        self.ops.session_id()
    }
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.ops.peer_addr()
    }
    /// Index of the worker thread that owns this session.
    pub fn worker(&self) -> usize {
        self.ops.worker()
    }
    /// Protocol state: `Open`, `Closing` (we sent a Close) or `Closed`.
    pub fn state(&self) -> State {
        self.ops.state()
    }
    /// Sends a text message. `Ok(SendStatus::Queued)`: queued; `Ok(SendStatus::Backpressure)`:
    /// queued, but the session's buffered output is over the soft bound (the peer is slow):
    /// stop producing for it until [`Handler::on_drain`]. `Err(SendError::OverHardBound)`:
    /// refused, not queued: an earlier send took the output over the hard bound (the session
    /// is closed with 1008 at the next tick unless it drains first);
    /// `Err(SendError::Closed)`: the session is closing.
    pub fn send_text(&mut self, text: &str) -> Result<SendStatus, SendError> {
        self.ops.send_text(text)
    }
    /// Sends a binary message (results as [`Ctx::send_text`]).
    pub fn send_binary(&mut self, data: &[u8]) -> Result<SendStatus, SendError> {
        self.ops.send_binary(data)
    }
    /// Output queued for this session and not yet taken by the network, in bytes (the
    /// backpressure bounds apply to it).
    pub fn buffered_amount(&self) -> usize {
        self.ops.buffered_amount()
    }
    /// The session's user data, if it is a `T` (set by [`Accept::user_data`] at the upgrade or
    /// by [`Ctx::set_user_data`]). Owned by the session's worker: no lock, no map; dropped after
    /// `on_close` (which still sees it).
    pub fn user_data<T: Any>(&mut self) -> Option<&mut T> {
        self.ops.state_slot().as_mut()?.downcast_mut::<T>()
    }
    /// Sets (replaces) the session's user data.
    pub fn set_user_data<T: Any + Send>(&mut self, data: T) {
        *self.ops.state_slot() = Some(Box::new(data));
    }
    /// Takes the session's user data out, if it is a `T`.
    pub fn take_user_data<T: Any>(&mut self) -> Option<T> {
        let slot = self.ops.state_slot();
        match slot.take()?.downcast::<T>() {
            Ok(t) => Some(*t),
            Err(other) => {
                *slot = Some(other);
                None
            }
        }
    }
    /// Sends `msg` as it came: text as text, binary as binary.
    pub fn send(&mut self, msg: Message<'_>) -> Result<SendStatus, SendError> {
        match msg {
            Message::Text(t) => self.send_text(t),
            Message::Binary(b) => self.send_binary(b),
        }
    }
    /// Sends a ping (payload at most 125 bytes); the peer's pong is not reported.
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.ops.ping(payload)
    }
    /// Starts the close handshake (reason at most 123 bytes); `on_close` follows.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        self.ops.close(code, reason)
    }
    /// Queues `msg` for session `id`, whichever worker owns it (through that worker's bounded
    /// inbox; it leaves with the owner's next loop turn). Copies the payload once.
    /// An id whose session has ended is dropped by its worker (counted as undelivered).
    pub fn send_to(&mut self, id: u64, msg: Message<'_>) -> Result<(), DeliverError> {
        self.ops.send_to(id, Arc::new(owned(msg)))
    }
    /// Queues `msg` for every open session, this one included; returns the workers reached.
    /// Copies the payload once, shared by all workers.
    pub fn broadcast(&mut self, msg: Message<'_>) -> Result<usize, DeliverError> {
        self.ops.broadcast(Arc::new(owned(msg)))
    }
    /// Subscribes this session to `topic` (1 to 200 bytes): it gets every message published
    /// to the topic (on any worker, and on other nodes through the cluster link) from the end of
    /// this callback on. A slow subscriber (buffered output over the soft bound) is skipped and
    /// counted; see [`Ctx::subscribe_with`] for the other policy. Ended by
    /// [`Ctx::unsubscribe`] or when the session closes.
    pub fn subscribe(&mut self, topic: &str) -> Result<(), TopicError> {
        self.ops.subscribe(topic, Subscription::default())
    }
    /// [`Ctx::subscribe`] with a policy for when this subscriber is slow: skip and count
    /// ([`Subscription::skip`]) or close with 1008 ([`Subscription::close`]), past the soft bound
    /// or a bound of its own ([`Subscription::max_buffered`]).
    pub fn subscribe_with(&mut self, topic: &str, sub: Subscription) -> Result<(), TopicError> {
        self.ops.subscribe(topic, sub)
    }
    /// Ends this session's subscription to `topic` (one removal: no scan of every topic).
    pub fn unsubscribe(&mut self, topic: &str) {
        self.ops.unsubscribe(topic)
    }
    /// Publishes `msg` to `topic`: framed once, the frame shared by every subscriber on every
    /// worker (no copy per subscriber of ours); each subscriber gets one publisher's messages to
    /// a topic in order. This session gets it too if it is subscribed. Returns the workers
    /// reached (a worker whose inbox is full misses it, counted in `/metrics`).
    pub fn publish(&mut self, topic: &str, msg: Message<'_>) -> Result<usize, TopicOrDeliverError> {
        self.ops.publish(topic, msg, false)
    }
    /// [`Ctx::publish`] to every subscriber but this session.
    pub fn publish_others(
        &mut self,
        topic: &str,
        msg: Message<'_>,
    ) -> Result<usize, TopicOrDeliverError> {
        self.ops.publish(topic, msg, true)
    }
}

/// An owned copy of `msg`, to cross threads.
pub(crate) fn owned(msg: Message<'_>) -> OutMessage {
    msg.to_owned_message()
}
