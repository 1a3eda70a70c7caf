//! One connection's WebSocket lifecycle, sans-IO: from the first byte of the upgrade request to
//! the moment the transport may forget the connection.
//!
//! ```text
//!  Handshake ──101──▶ Open(Session) ──close handshake / protocol error──▶ Finishing ──▶ Ended
//!      │                  │                                                  ▲
//!      └── HTTP answer, refusal ──────────────────────────────────────────────┘
//!  (any phase ── peer gone, deadline passed, server stopped ──▶ Ended)
//! ```
//!
//! * **Handshake**: the request head accumulates (the transport keeps what is unconsumed);
//!   deadline `handshake_timeout`. An upgrade is answered with 101 and opens the session; any
//!   other request gets the application's HTTP answer or an error status, then Finishing.
//! * **Open**: a [`Session`] parses frames in place; whole messages go to [`App::on_message`].
//!   While we wait for the answer to our Close (`Closing`), deadline `close_timeout`.
//! * **Finishing**: nothing more is produced; the transport sends what is pending, then our
//!   write side is shut down ([`Wire::shutdown_write`]) and input is discarded until the peer
//!   closes too, so that our last bytes are not destroyed by a reset; deadline `close_timeout`.
//! * **Ended**: the transport releases the connection (gracefully after the peer's FIN, else with
//!   a reset) and forgets it.
//!
//! [`App::on_close`] is called exactly once per opened session, when it leaves Open: with the
//! peer's code, the code we sent, or 1006 (no close handshake: the peer vanished, a deadline
//! passed, the server stopped).
//!
//! A connection accepted on a TLS listener carries a [`TlsLayer`] below all of this (see
//! [`crate::tls`]): its input is decrypted before the phases above see it, and every operation
//! that writes goes through a [`TlsWire`] that encrypts before the transport's wire.
//!
//! Time is never read here: every call takes `now`. The timers are a small table per connection
//! (one phase deadline, the time output went over the hard bound, the last input, the idle ping);
//! [`Connection::poll_timeout`] says when the next one is due and
//! [`Connection::handle_timeout`] acts on it, in the style of quinn-proto and smoltcp.

mod app;
mod ending;
mod opening;
mod timers;
mod tls_input;
mod topics;
mod upgrade;
mod wire;

pub use app::{App, Message, SendStatus, SessionRef};
pub use upgrade::{
    Accept, PendingUpgrade, Rejection, SessionState, Upgrade, UpgradeCtx, UpgradeError,
};
pub use wire::{PendingWire, Wire, WireSink};

use app::{Bounds, SessionData};
use upgrade::Awaiting;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::log_limit::{LogCause, LogLimit};

use crate::close::CloseCode;
use crate::held::HeldInput;
use crate::pending::PendingOutput;
use crate::session::{Event, Outgoing, Session, State};
use crate::settings::Settings;
use crate::shard::{OutMessage, ShardCounters, ShardSet};
use crate::tls::{TlsAcceptor, TlsFailure, TlsLayer};

/// Runs `$body` with `$w` bound to the wire the session layer writes to: `$wire` itself, or, for
/// a TLS connection, a [`TlsWire`] over it, whose plaintext is encrypted and queued on `$wire`
/// before this returns. A macro rather than a function with a closure, because the body is
/// generic over the wire's type. While the body runs, the layer is out of `$conn.tls`.
macro_rules! through_tls {
    ($conn:ident, $wire:ident, |$w:ident| $body:expr) => {{
        match $conn.tls.take() {
            None => {
                let $w = $wire;
                $body
            }
            Some(mut tls) => {
                let mut tls_wire = $crate::tls::TlsWire::new(&mut tls, $wire);
                let result = {
                    let $w = &mut tls_wire;
                    $body
                };
                let sealed = tls_wire.finish(&mut $conn.pending);
                $conn.tls = Some(tls);
                if let Err(e) = sealed {
                    $conn.tls_broken(&e);
                }
                result
            }
        }
    }};
}
pub(crate) use through_tls;

/// What a connection needs from its shard during one operation.
pub struct ShardContext<'a, A: ?Sized> {
    /// The application.
    pub app: &'a A,
    /// The shard's settings in force.
    pub settings: &'a Settings,
    /// What the shards share (sends by id from callbacks, counters).
    pub set: &'a Arc<ShardSet>,
    /// The shard's index.
    pub shard: usize,
    /// Scratch space for HTTP answers (reused, so answering allocates nothing in steady state).
    pub http: &'a mut Vec<u8>,
    /// The shard's rate limits for lines a client can cause.
    pub log: &'a mut LogLimit,
}

impl<A: ?Sized> ShardContext<'_, A> {
    fn counters(&self) -> &ShardCounters {
        self.set.counters(self.shard)
    }
}

/// Where the bytes of one input step are: a buffer the transport read into, or `n` bytes it
/// read straight into the session's message buffer ([`Connection::bulk_room`]).
pub(crate) enum Source<'a> {
    Bytes(&'a mut [u8]),
    Bulk(usize),
}

/// Where a connection is in its life (see the module documentation). The session is inline:
/// open is the phase a connection spends its life in, and boxing it would cost an allocation
/// per connection.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Phase {
    Handshake,
    Open(Session),
    Finishing {
        /// Our write side is shut down.
        shut: bool,
    },
    Ended(Release),
}

/// How the transport lets a connection go.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Gracefully: the peer closed, or our FIN is out; what is queued may still leave.
    Close,
    /// Now, with a reset: a deadline passed, the peer does not read, the server stopped.
    Reset,
}

/// What an idle check found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Idle {
    /// Nothing to do.
    No,
    /// The session has been quiet for `idle_timeout`: ping it ([`Connection::ping_idle`]).
    Ping,
    /// It did not answer our ping within `pong_timeout`: it has been ended (1006).
    Dropped,
}

/// The connection's timer table.
#[derive(Debug)]
struct Timers {
    /// The phase's deadline: handshake, close handshake, or finishing.
    deadline: Option<Instant>,
    /// Since when pending output has been above the soft bound (set in the past when above the
    /// hard bound: due at once).
    over_soft_since: Option<Instant>,
    /// When input last arrived (idle pings).
    last_input: Instant,
    /// When we pinged this idle session, until it sends anything.
    ping_sent: Option<Instant>,
    /// Since when a message (or a frame) has been in progress: the peer has `message_timeout`
    /// from its first byte to complete it, however slowly the rest trickles in.
    message_since: Option<Instant>,
}

/// One connection's WebSocket lifecycle; see the module documentation.
#[derive(Debug)]
pub struct Connection {
    id: u64,
    peer: SocketAddr,
    phase: Phase,
    pending: PendingOutput,
    /// Backpressure: pending output went over the soft bound; not read until it drains.
    read_paused: bool,
    /// Unconsumed input (a partial head or frame), until more arrives.
    held: HeldInput,
    /// The application deferred its decision on the upgrade: what the 101 needs meanwhile.
    awaiting: Option<Box<Awaiting>>,
    /// The application's state of this session (`None` unless it set one).
    data: SessionData,
    /// How far the request head has been searched for its end (incremental head parsing; a
    /// head is at most `max_head_bytes`, so 32 bits, beside `read_paused`).
    head_scanned: u32,
    timers: Timers,
    /// TLS below the session (accepted on a TLS listener); boxed: plain connections pay a
    /// pointer.
    tls: Option<Box<TlsLayer>>,
}

impl Connection {
    /// A connection that was just accepted: in its handshake, with its deadline running.
    pub fn new(id: u64, peer: SocketAddr, now: Instant, settings: &Settings) -> Connection {
        Connection {
            id,
            peer,
            phase: Phase::Handshake,
            pending: PendingOutput::new(),
            read_paused: false,
            held: HeldInput::new(),
            awaiting: None,
            data: SessionData::default(),
            head_scanned: 0,
            tls: None,
            timers: Timers {
                deadline: Some(now + settings.handshake_timeout),
                over_soft_since: None,
                last_input: now,
                ping_sent: None,
                message_since: None,
            },
        }
    }

    /// Puts TLS below the connection (before any byte arrived): it was accepted on a TLS
    /// listener.
    pub fn start_tls(&mut self, acceptor: &TlsAcceptor) -> Result<(), TlsFailure> {
        self.tls = Some(Box::new(TlsLayer::new(acceptor)?));
        Ok(())
    }
    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Server-unique id (of its session, once open).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
    /// Output the network has not taken yet.
    pub fn pending(&self) -> &PendingOutput {
        &self.pending
    }
    /// Output the network has not taken yet, for the transport to send from.
    pub fn pending_mut(&mut self) -> &mut PendingOutput {
        &mut self.pending
    }
    /// The input held from earlier reads: the transport moves it in front of newly received
    /// bytes ([`HeldInput::move_to`]) before the next [`Connection::receive`]. (Over TLS, the
    /// ciphertext of a partial record; the plaintext a partial frame left stays inside.)
    pub fn held_mut(&mut self) -> &mut HeldInput {
        match &mut self.tls {
            Some(tls) => tls.held_mut(),
            None => &mut self.held,
        }
    }
    /// Bytes held from earlier reads, for the transport to put in front of the next ones.
    pub fn held_len(&self) -> usize {
        match &self.tls {
            Some(tls) => tls.held_len(),
            None => self.held.len(),
        }
    }
    /// Memory this connection holds on the server's side (held input, message assembly and
    /// dedicated permessage-deflate codecs, pending output), in bytes: what the server's memory
    /// budget counts.
    pub fn memory(&self) -> usize {
        let assembly = match &self.phase {
            Phase::Open(session) => session.assembly_capacity() + session.codec_memory(),
            _ => 0,
        };
        let tls = self
            .tls
            .as_ref()
            .map_or(0, |tls| std::mem::size_of::<TlsLayer>() + tls.memory());
        self.held.capacity() + assembly + self.pending.len() + tls
    }
    /// Whether most of [`Connection::memory`] is pending output (a slow reader) rather than
    /// input (a message in assembly).
    pub fn memory_is_output(&self) -> bool {
        2 * self.pending.len() > self.memory()
    }
    /// Whether most of [`Connection::memory`] is dedicated permessage-deflate codec state.
    pub fn memory_is_codec(&self) -> bool {
        match &self.phase {
            Phase::Open(session) => 2 * session.codec_memory() > self.memory(),
            _ => false,
        }
    }
    /// Whether backpressure holds reads back (pending output above the soft bound).
    pub fn read_paused(&self) -> bool {
        self.read_paused
    }
    /// Whether the connection carries an open session (not yet reported closed).
    pub fn has_session(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }
    /// The session, while open.
    pub fn session_mut(&mut self) -> Option<&mut Session> {
        match &mut self.phase {
            Phase::Open(session) => Some(session),
            _ => None,
        }
    }
    /// Room to read the frame being streamed straight into the message buffer (see
    /// [`Session::bulk_room`]); `None` while input is held or no large frame is streaming.
    pub fn bulk_room(&mut self) -> Option<&mut [std::mem::MaybeUninit<u8>]> {
        if !self.held.is_empty() || self.tls.is_some() {
            return None;
        }
        match &mut self.phase {
            Phase::Open(session) => session.bulk_room(),
            _ => None,
        }
    }
    /// Whether the connection streams a large frame that the transport may read straight into
    /// the message buffer ([`Connection::bulk_room`]).
    pub fn streams_large_frame(&self) -> bool {
        self.held.is_empty()
            && self.tls.is_none()
            && matches!(&self.phase, Phase::Open(s) if s.streams_large_frame())
    }
    /// Whether the connection's input is large messages: one streams now, or the last one
    /// delivered was large ([`Session::expects_large`]); a transport may then read it straight
    /// into the message buffer rather than through receive buffers.
    pub fn expects_large(&self) -> bool {
        self.held.is_empty()
            && self.tls.is_none()
            && matches!(&self.phase, Phase::Open(s) if s.expects_large())
    }
    /// The pending output and the session's retained message (empty if none), for a transport
    /// whose turn output names ranges of that message ([`Wire::keeps_message_ranges`]).
    pub fn output_parts(&mut self) -> (&mut PendingOutput, &[u8]) {
        let message = match &self.phase {
            Phase::Open(session) => session.retained_message(),
            _ => &[],
        };
        (&mut self.pending, message)
    }
    /// Gives the retained message back once the turn's output has been sent.
    pub fn release_retained(&mut self) {
        if let Phase::Open(session) = &mut self.phase {
            session.release_retained();
        }
    }
    /// The pending output adopts the retained message's buffer from byte `head` on (the
    /// unsent end of an echo; see [`PendingOutput::adopt`]). `false`: nothing retained.
    pub fn adopt_retained(
        &mut self,
        head: usize,
        cache: &mut crate::output_cache::OutputCache,
    ) -> bool {
        let Phase::Open(session) = &mut self.phase else {
            return false;
        };
        let Some(buf) = session.take_retained() else {
            return false;
        };
        self.pending.adopt(buf, head, cache);
        true
    }
    /// Whether the session still parses input (open and not closed by a protocol error).
    pub fn parses_frames(&self) -> bool {
        matches!(&self.phase, Phase::Open(s) if s.state() != State::Closed)
    }
    /// `Some` once the connection is over: release it this way.
    pub fn ended(&self) -> Option<Release> {
        match self.phase {
            Phase::Ended(how) => Some(how),
            _ => None,
        }
    }
    /// Whether nothing is left to do but the peer's FIN (our FIN is out, or it ended).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.phase,
            Phase::Finishing { shut: true } | Phase::Ended(_)
        )
    }

    // ---- input -------------------------------------------------------------------------------

    /// Runs the connection over received bytes: the request head, frames, or (finishing)
    /// nothing. `input` must start with the bytes held from earlier reads (the transport moved
    /// them there with [`HeldInput::move_to`]); what the protocol leaves unconsumed this time
    /// (a partial head or frame, see [`Session::receive`]) is held again, in the connection's
    /// own storage, and the transport may reuse `input`'s buffer at once. A remainder that
    /// cannot be held (no memory, or larger than a partial in-place frame can be) ends the
    /// connection (1011, logged). Output goes to `wire`.
    pub fn receive<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        input: &mut [u8],
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        if self.tls.is_some() {
            self.receive_tls(input, wire, cx, now);
        } else {
            self.receive_plain(input, wire, cx, now);
        }
    }

    /// [`Connection::receive`] of plaintext (on a plain connection, or decrypted).
    fn receive_plain<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        input: &mut [u8],
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        debug_assert!(
            self.held.is_empty(),
            "held input goes in front of new input"
        );
        if !input.is_empty() {
            self.timers.last_input = now;
        }
        let mut delivered = false;
        let consumed = match self.phase {
            Phase::Handshake => self.handshake(input, wire, cx, now, &mut delivered),
            Phase::Open(_) => self.feed(Source::Bytes(input), wire, cx, now, &mut delivered),
            Phase::Finishing { .. } | Phase::Ended(_) => input.len(),
        };
        let rest = &input[consumed..];
        if !rest.is_empty() && !matches!(self.phase, Phase::Finishing { .. } | Phase::Ended(_)) {
            self.hold(rest, cx, now);
        }
        self.track_message(delivered, now);
    }

    /// Takes `n` bytes a transport read into the room [`Connection::bulk_room`] gave, as
    /// [`Connection::receive`] takes received bytes.
    ///
    /// # Safety
    /// The first `n` bytes of that room must have been written, and nothing else may have been
    /// done with this connection since `bulk_room`.
    pub unsafe fn receive_bulk<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        n: usize,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
    ) {
        self.timers.last_input = now;
        let mut delivered = false;
        self.feed(Source::Bulk(n), wire, cx, now, &mut delivered);
        self.track_message(delivered, now);
    }

    /// Keeps an unconsumed remainder, or ends the connection if it cannot be kept.
    fn hold<A: App + ?Sized>(&mut self, rest: &[u8], cx: &mut ShardContext<'_, A>, now: Instant) {
        let limits = &cx.settings.limits;
        let most =
            (limits.inplace_frame_max + crate::frame::MAX_HEADER_LEN).max(limits.max_head_bytes);
        let problem = if rest.len() > most {
            // The protocol consumes frames larger than `inplace_frame_max` as they arrive.
            "receive buffer overflow"
        } else if self.held.keep(rest).is_err() {
            "out of memory for held input"
        } else {
            return;
        };
        cx.counters().memory_closes.add(1);
        if cx.log.allow(LogCause::Memory, now) {
            warn!(peer = %self.peer, session = self.id, held = rest.len(),
                "cannot hold a partial frame or head ({problem}); closing with 1011");
        }
        self.end(CloseCode::INTERNAL_ERROR, problem, cx, now);
    }

    /// Starts or stops the message deadline: armed while a frame or message is in progress,
    /// restarted when a data message was delivered (the one in progress is a new one).
    fn track_message(&mut self, delivered: bool, now: Instant) {
        let in_progress = match &self.phase {
            Phase::Open(session) => !self.held.is_empty() || session.in_message(),
            _ => false,
        };
        if !in_progress {
            self.timers.message_since = None;
        } else if delivered || self.timers.message_since.is_none() {
            self.timers.message_since = Some(now);
        }
    }

    /// Runs the session over `input`; returns how much it consumed (all of it once closed).
    fn feed<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        input: Source<'_>,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        now: Instant,
        delivered: &mut bool,
    ) -> usize {
        let all = match &input {
            Source::Bytes(bytes) => bytes.len(),
            Source::Bulk(n) => *n,
        };
        let Phase::Open(session) = &mut self.phase else {
            return all;
        };
        let (id, peer, shard, set, app) = (self.id, self.peer, cx.shard, cx.set, cx.app);
        let bounds = Bounds::of(cx.settings);
        let data = &mut self.data;
        // Set once the application has seen the peer's Close.
        let mut close_reported = false;
        let result = {
            let mut sink = WireSink {
                wire,
                pending: &mut self.pending,
            };
            let on_event = |event: Event<'_>, out: &mut Outgoing<'_, WireSink<'_, W>>| {
                let msg = match event {
                    Event::Text(t) => Message::Text(t),
                    Event::Binary(b) => Message::Binary(b),
                    Event::Close(code, reason) => {
                        let code = code.unwrap_or(CloseCode::NO_STATUS);
                        app.on_close(
                            &mut SessionRef::new(id, peer, shard, set, Some(out), data, bounds),
                            code,
                            reason,
                        );
                        close_reported = true;
                        return;
                    }
                    Event::Ping(_) | Event::Pong(_) => return,
                };
                *delivered = true;
                app.on_message(
                    &mut SessionRef::new(id, peer, shard, set, Some(out), data, bounds),
                    msg,
                );
            };
            match input {
                Source::Bytes(bytes) => session.receive(bytes, &mut sink, on_event),
                // SAFETY: the caller of `receive_bulk` wrote `n` bytes of the room, and nothing
                // touched the session since it was given.
                Source::Bulk(n) => {
                    unsafe { session.receive_bulk(n, &mut sink, on_event) }.map(|()| n)
                }
            }
        };

        let consumed = match result {
            Ok(consumed) => consumed,
            Err(err) => {
                cx.counters().protocol_errors.add(1);
                if cx.log.allow(LogCause::Protocol, now) {
                    info!(%peer, session = id, code = err.code.0, "protocol error: {}; closing", err.reason);
                }
                self.leave_open(cx, now, Some((err.code, err.reason)));
                all
            }
        };
        if close_reported {
            self.leave_open(cx, now, None);
        }
        self.settle(cx, now);
        consumed
    }

    // ---- output, verdicts --------------------------------------------------------------------

    /// After the transport handed output to the network: the backpressure verdicts (above the
    /// soft bound: pause reads and start the clock; above the hard bound: due at the next tick)
    /// and, when finishing with nothing left to send, our FIN. Returns whether a paused
    /// connection may be read again.
    pub fn after_output<W: Wire + ?Sized>(
        &mut self,
        wire: &mut W,
        settings: &Settings,
        now: Instant,
    ) -> bool {
        through_tls!(self, wire, |wire| self.verdicts(wire, settings, now))
    }

    fn verdicts<W: Wire + ?Sized>(
        &mut self,
        wire: &mut W,
        settings: &Settings,
        now: Instant,
    ) -> bool {
        let pending = self.pending.len();
        let bp = &settings.backpressure;
        let mut resume = false;
        if pending > bp.soft_bytes {
            self.read_paused = true;
        } else if self.read_paused {
            self.read_paused = false;
            resume = true;
        }
        self.data.over_hard = pending > bp.hard_bytes;
        if pending > bp.hard_bytes {
            let due = now.checked_sub(bp.timeout).unwrap_or(now);
            self.timers.over_soft_since = Some(due);
        } else if pending > bp.soft_bytes {
            self.timers.over_soft_since.get_or_insert(now);
        } else {
            self.timers.over_soft_since = None;
        }
        if let Phase::Finishing { shut } = &mut self.phase {
            if !*shut && pending == 0 && wire.shutdown_write(&mut self.pending) {
                *shut = true;
            }
        }
        resume
    }

    /// Whether `on_drain` is due: a send reported backpressure, and the pending output is back
    /// under the soft bound (then the flag is cleared: once per episode).
    pub fn drain_due(&mut self, settings: &Settings) -> bool {
        let due = self.data.drain_wanted
            && self.pending.len() <= settings.backpressure.soft_bytes
            && self.has_session();
        if due {
            self.data.drain_wanted = false;
        }
        due
    }

    /// Backpressure lifted (output back under the soft bound after a send reported
    /// backpressure): tells the application ([`App::on_drain`]), which may send again.
    pub fn drained<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
    ) {
        let Phase::Open(session) = &mut self.phase else {
            return;
        };
        if session.state() != State::Open {
            return;
        }
        through_tls!(self, wire, |wire| self
            .lend(wire, cx, |app, session| app.on_drain(session)));
    }

    /// Lends the open session to one application callback (`f`), its sends going to `wire`.
    fn lend<W: Wire + ?Sized, A: App + ?Sized>(
        &mut self,
        wire: &mut W,
        cx: &mut ShardContext<'_, A>,
        f: impl FnOnce(&A, &mut SessionRef<'_>),
    ) {
        let Phase::Open(session) = &mut self.phase else {
            return;
        };
        let mut sink = WireSink {
            wire,
            pending: &mut self.pending,
        };
        let mut out = session.outgoing(&mut sink);
        f(
            cx.app,
            &mut SessionRef::new(
                self.id,
                self.peer,
                cx.shard,
                cx.set,
                Some(&mut out),
                &mut self.data,
                Bounds::of(cx.settings),
            ),
        );
    }

    /// Queues `msg` (sent by id or broadcast from elsewhere) if the session is open.
    pub fn deliver<W: Wire + ?Sized>(&mut self, msg: &OutMessage, wire: &mut W) -> bool {
        through_tls!(self, wire, |wire| self.deliver_on(msg, wire))
    }

    fn deliver_on<W: Wire + ?Sized>(&mut self, msg: &OutMessage, wire: &mut W) -> bool {
        let Phase::Open(session) = &mut self.phase else {
            return false;
        };
        if session.state() != State::Open {
            return false;
        }
        let mut sink = WireSink {
            wire,
            pending: &mut self.pending,
        };
        let mut out = session.outgoing(&mut sink);
        match msg {
            OutMessage::Text(t) => out.send_text(t),
            OutMessage::Binary(b) => out.send_binary(b),
        }
        .is_ok()
    }

    /// The server stops: an open session gets Close 1001 (returns true); a connection still in
    /// its handshake ends.
    pub fn begin_shutdown<W: Wire + ?Sized>(&mut self, wire: &mut W) -> bool {
        through_tls!(self, wire, |wire| self.shutdown_on(wire))
    }

    fn shutdown_on<W: Wire + ?Sized>(&mut self, wire: &mut W) -> bool {
        match &mut self.phase {
            Phase::Handshake => {
                self.phase = Phase::Ended(Release::Reset);
                false
            }
            Phase::Open(session) if session.state() == State::Open => {
                let mut sink = WireSink {
                    wire,
                    pending: &mut self.pending,
                };
                let _ = session
                    .outgoing(&mut sink)
                    .close(CloseCode::GOING_AWAY, "server shutting down");
                true
            }
            _ => false,
        }
    }
}
