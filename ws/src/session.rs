//! The per-connection protocol state machine, after the handshake.
//!
//! A transport feeds received bytes to [`Session::receive`]; the session unmasks them in place,
//! enforces every RFC 6455 rule and the [`Limits`], and calls back with [`Event`]s. Frames to send
//! (echoes, pongs, close replies) go to a transport-provided [`FrameSink`] as header + payload slices,
//! so that a transport can write both with one vectored write or copy them straight into a socket
//! ring. Automatic replies: a Ping is answered with a Pong carrying its payload; a Close is answered
//! with a Close echoing its code; a protocol violation sends the Close the RFC names (1002, 1007,
//! 1009) and ends the session.

use crate::close::CloseCode;
use crate::config::Limits;

/// Where encoded frames go; implemented by each transport.
pub trait FrameSink {
    /// Queues one whole frame: `header` then `payload`, in order after every earlier frame.
    fn send_frame(&mut self, header: &[u8], payload: &[u8]);
}

impl FrameSink for Vec<u8> {
    fn send_frame(&mut self, header: &[u8], payload: &[u8]) {
        self.extend_from_slice(header);
        self.extend_from_slice(payload);
    }
}

/// Session state as seen from the server.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a Close and wait for the peer's; received data frames are dropped.
    Closing,
    /// Close handshake done or the session failed: no frame goes out any more; the transport
    /// flushes what the sink holds and closes the connection.
    Closed,
}

/// What the peer sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message (validated UTF-8).
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping (the pong has already been queued).
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The peer's close: its code (`None` when the frame had no payload) and reason.
    /// The answering close has already been queued.
    Close(Option<CloseCode>, &'a str),
}

/// The peer broke the protocol or a limit; the session already queued the Close with `code`
/// and is now [`State::Closed`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    /// Close code sent to the peer (1002, 1007, 1009, …).
    pub code: CloseCode,
    /// What rule was broken, for the log line.
    pub reason: &'static str,
}

/// Why an outgoing frame was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// A Close was already sent (or the session failed): no data frames go out after it.
    Closed,
    /// Control frame payloads are at most 125 bytes (a close reason at most 123).
    ControlTooLong,
    /// This close code may not be sent on the wire.
    InvalidCloseCode,
}

/// One WebSocket connection's protocol state (server role).
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    state: State,
}

/// Sends frames on behalf of a session; borrowed from [`Session::outgoing`] or handed to the
/// `receive` callback.
pub struct Outgoing<'s, S: FrameSink + ?Sized> {
    state: &'s mut State,
    sink: &'s mut S,
}

impl<'s, S: FrameSink + ?Sized> Outgoing<'s, S> {
    /// Sends a text message in one frame.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        let _ = (text, &mut self.sink);
        todo!("ws: send_text")
    }
    /// Sends a binary message in one frame.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        let _ = data;
        todo!("ws: send_binary")
    }
    /// Sends a ping (payload ≤ 125 bytes).
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        let _ = payload;
        todo!("ws: ping")
    }
    /// Starts the close handshake (reason ≤ 123 bytes). The session becomes `Closing`.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        let _ = (code, reason);
        todo!("ws: close")
    }
    /// The session's state.
    pub fn state(&self) -> State {
        *self.state
    }
}

impl Session {
    /// A session that has just completed its handshake.
    pub fn new(limits: Limits) -> Self {
        Session { limits, state: State::Open }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Replaces the limits (hot reload); applies from the next frame.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Feeds received bytes, unmasking them in place, and calls `on_event` for each event; the
    /// callback may send through the `Outgoing` it is given. Returns how many bytes of `input` were
    /// consumed: the caller keeps `input[consumed..]` (a partial frame of at most
    /// `limits.inplace_frame_max` bytes) and passes it again, followed by newly received bytes.
    /// On `Err`, the Close has been queued and the session is `Closed`.
    pub fn receive<S, F>(&mut self, input: &mut [u8], sink: &mut S, on_event: F) -> Result<usize, ProtocolError>
    where
        S: FrameSink + ?Sized,
        F: FnMut(Event<'_>, &mut Outgoing<'_, S>),
    {
        let _ = (input, sink, on_event);
        todo!("ws: Session::receive")
    }

    /// Outgoing frames outside of `receive` (server-initiated sends, shutdown's close 1001).
    pub fn outgoing<'s, S: FrameSink + ?Sized>(&'s mut self, sink: &'s mut S) -> Outgoing<'s, S> {
        Outgoing { state: &mut self.state, sink }
    }
}
