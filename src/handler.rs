//! The application's side: a [`Handler`] reacts to session events through a [`Ctx`].
//!
//! One handler value serves every worker and every session (it is shared as `Arc<dyn Handler>`,
//! hence `Send + Sync`), so per-session state lives in the application's own maps keyed by
//! [`Ctx::session_id`]. Callbacks run on the worker thread that owns the session, in the middle of
//! its loop turn: they must not block. Sends made in a callback leave with that turn's single
//! vectored write. Being a trait object, a handler can be wrapped by another (middleware).

use std::net::SocketAddr;

pub use hioload_wsproto::{CloseCode, SendError, State};

/// A whole message, borrowed from the receive buffer (no copy); copy it to keep it.
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
}

/// Reacts to the events of every session.
pub trait Handler: Send + Sync + 'static {
    /// The handshake completed; the session is open.
    fn on_open(&self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }
    /// A whole message arrived (fragments are already joined).
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>);
    /// The session ended; called exactly once per opened session. `code` is the peer's close code
    /// (1005 if it sent none), the code we closed with (protocol error 1002/1007/1009, 1008 for a
    /// peer that does not read, 1011 after a handler panic), or 1006 if the connection ended
    /// without a close handshake. Sends are refused from here on.
    fn on_close(&self, ctx: &mut Ctx<'_>, code: CloseCode, reason: &str) {
        let _ = (ctx, code, reason);
    }
}

/// What a transport's session offers to a [`Ctx`]; one implementation per data path.
pub(crate) trait SessionOps {
    fn session_id(&self) -> u64;
    fn peer_addr(&self) -> SocketAddr;
    fn state(&self) -> State;
    fn send_text(&mut self, text: &str) -> Result<(), SendError>;
    fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError>;
    fn ping(&mut self, payload: &[u8]) -> Result<(), SendError>;
    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError>;
}

impl SessionOps for hioload_fallback::Conn<'_> {
    fn session_id(&self) -> u64 {
        self.id()
    }
    fn peer_addr(&self) -> SocketAddr {
        hioload_fallback::Conn::peer_addr(self)
    }
    fn state(&self) -> State {
        hioload_fallback::Conn::state(self)
    }
    fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        hioload_fallback::Conn::send_text(self, text)
    }
    fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        hioload_fallback::Conn::send_binary(self, data)
    }
    fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        hioload_fallback::Conn::ping(self, payload)
    }
    fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        hioload_fallback::Conn::close(self, code, reason)
    }
}

/// One session, lent to a [`Handler`] callback.
pub struct Ctx<'a> {
    ops: &'a mut (dyn SessionOps + 'a),
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(ops: &'a mut (dyn SessionOps + 'a)) -> Self {
        Ctx { ops }
    }
    /// Server-unique id of this session.
    pub fn session_id(&self) -> u64 {
        self.ops.session_id()
    }
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.ops.peer_addr()
    }
    /// Protocol state: `Open`, `Closing` (we sent a Close) or `Closed`.
    pub fn state(&self) -> State {
        self.ops.state()
    }
    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.ops.send_text(text)
    }
    /// Sends a binary message.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.ops.send_binary(data)
    }
    /// Sends `msg` as it came: text as text, binary as binary.
    pub fn send(&mut self, msg: Message<'_>) -> Result<(), SendError> {
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
}
