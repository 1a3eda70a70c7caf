//! The per-connection protocol state machine, after the handshake.
//!
//! A transport feeds received bytes to [`Session::receive`]; the session unmasks them in place,
//! enforces every RFC 6455 rule and the [`Limits`], and calls back with [`Event`]s. Frames to send
//! (echoes, pongs, close replies) go to a transport-provided [`FrameSink`] as header + payload slices,
//! so that a transport can write both with one vectored write or copy them straight into a socket
//! ring. Automatic replies: a Ping is answered with a Pong carrying its payload; a Close is answered
//! with a Close echoing its code; a protocol violation sends the Close the RFC names (1002, 1007,
//! 1009) and ends the session.

use crate::assembly::Assembly;
use crate::close::CloseCode;
use crate::config::Limits;
use crate::deflate::{self, Agreed, DeflateConfig, Deflater, InflateError, Inflater};
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::mask::apply_mask;
use crate::utf8::Utf8Validator;

/// Largest control frame on the wire: 2-byte header, 4-byte mask, 125 bytes of payload. Frames up
/// to this size are always waited for whole, whatever `Limits::inplace_frame_max` says.
pub const MAX_CONTROL_FRAME: usize = 2 + 4 + 125;

/// Largest capacity of a session's own assembly buffer, kept between messages. A message that needs
/// more is assembled in a buffer borrowed from the worker thread's cache ([`crate::assembly`]) and
/// given back once delivered, so that one 16 MiB message does not pin 16 MiB for the connection's
/// lifetime, and steady large messages do not allocate.
pub const ASSEMBLY_RETAIN: usize = 4 << 10;

/// Close reason when memory for a message cannot be had (close code 1011).
const NO_MEMORY: &str = "out of memory for the message";

/// Where encoded frames go; implemented by each transport.
pub trait FrameSink {
    /// Queues one whole frame: `header` then `payload`, in order after every earlier frame.
    fn send_frame(&mut self, header: &[u8], payload: &[u8]);
    /// Queues one whole frame whose `payload` lies inside `message`, a message the session has
    /// just delivered and *retains* (see [`Session::retained_message`]): its bytes stay valid and
    /// unchanged until the transport releases them, so a transport that sends its output before
    /// feeding more input may record the payload as a range of `message` instead of copying it.
    /// By default, the same as [`FrameSink::send_frame`].
    fn send_message_frame(&mut self, header: &[u8], payload: &[u8], message: &[u8]) {
        let _ = message;
        self.send_frame(header, payload);
    }
    /// Whether this sink records payloads passed to [`FrameSink::send_message_frame`] as ranges
    /// of the message, which the session must then retain until the transport releases it
    /// ([`Session::release_retained`]). `false` by default: nothing is retained.
    fn keeps_message_ranges(&self) -> bool {
        false
    }
    /// Bytes queued and not yet handed to the network (0 if the sink does not know).
    fn buffered(&self) -> usize {
        0
    }
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
/// (unless it had sent its own Close before) and is now [`State::Closed`].
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
    /// The session's buffered output went over the hard bound (with an earlier send): the
    /// message was not queued (the connection is closed with 1008 at the next tick).
    OverHardBound,
}

/// Which end of the connection a session plays.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receives masked frames, sends unmasked ones (the hioload-ws server).
    Server,
    /// Receives unmasked frames, sends masked ones (tests, load generators).
    Client,
}

/// One WebSocket connection's protocol state (server role by default).
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    tx: Tx,
    rx: Rx,
}

/// The sending half: state, role and, for clients, the masking key source.
#[derive(Debug)]
struct Tx {
    state: State,
    role: Role,
    /// xorshift64* state for client masking keys.
    mask_rng: u64,
    /// Client role only: masked copy of the payload being sent.
    scratch: Vec<u8>,
    /// permessage-deflate, when negotiated: how messages are compressed.
    deflate: Option<Box<TxDeflate>>,
    /// An outgoing fragmented message is in progress (its frames go uncompressed).
    fragmenting: bool,
}

/// The sending side of permessage-deflate for one session.
struct TxDeflate {
    agreed: Agreed,
    threshold: usize,
    level: u32,
    /// Dedicated mode: this session's compressor (else the thread's shared ones).
    deflater: Option<Deflater>,
}

impl Drop for TxDeflate {
    fn drop(&mut self) {
        deflate::give_codecs(self.deflater.take(), None);
    }
}

/// The receiving side of permessage-deflate for one session.
struct RxInflate {
    /// The client keeps its context: so does our inflater.
    keep_context: bool,
    /// Dedicated mode: this session's inflater (else the thread's shared one).
    inflater: Option<Inflater>,
}

impl Drop for RxInflate {
    fn drop(&mut self) {
        deflate::give_codecs(None, self.inflater.take());
    }
}

impl std::fmt::Debug for TxDeflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxDeflate")
            .field("agreed", &self.agreed)
            .finish()
    }
}

impl std::fmt::Debug for RxInflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxInflate")
            .field("keep_context", &self.keep_context)
            .finish()
    }
}

/// Kind of a data message.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum MsgKind {
    Text,
    Binary,
}

/// A frame too large to wait for whole, consumed piece by piece into the assembly buffer.
#[derive(Copy, Clone, Debug)]
struct Streaming {
    fin: bool,
    remaining: u64,
    mask: Option<[u8; 4]>,
    phase: usize,
}

/// The receiving half.
#[derive(Debug, Default)]
struct Rx {
    /// The data message in progress (fragmented, or one frame being streamed).
    msg: Option<MsgKind>,
    /// Payload bytes of the message in progress, including the current frame.
    msg_len: u64,
    /// Reused across messages; holds fragmented and streamed messages.
    assembly: Assembly,
    /// UTF-8 state of the text message in progress.
    utf8: Utf8Validator,
    /// A large frame being streamed.
    stream: Option<Streaming>,
    /// permessage-deflate, when negotiated: how compressed messages are inflated.
    inflate: Option<Box<RxInflate>>,
    /// The message in progress is compressed (RSV1 on its first frame).
    compressed: bool,
    /// The last data message delivered was at least [`LARGE_MESSAGE`] bytes.
    last_large: bool,
    /// Payload bytes of the partial frame left at the start of the next input that were already
    /// unmasked in place and UTF-8 checked (text fails fast, before the frame is whole).
    inplace_done: usize,
}

type Step = Result<(), ProtocolError>;

/// RSV1 in a frame header's `rsv` bits: a permessage-deflate message.
const RSV1: u8 = 0b100;

/// Where a compressed message's bytes are.
enum Compressed<'a> {
    /// A whole frame in the input.
    Input(&'a [u8]),
    /// In the assembly buffer.
    Assembled,
}

/// Whether `inner` lies entirely inside `outer` (the same memory, not equal bytes).
fn within(inner: &[u8], outer: &[u8]) -> bool {
    let (start, end) = (
        outer.as_ptr() as usize,
        outer.as_ptr() as usize + outer.len(),
    );
    let at = inner.as_ptr() as usize;
    at >= start && at + inner.len() <= end
}

/// Frames with at least this much payload still to come may be read straight into the message
/// buffer ([`Session::bulk_room`]): below, one copy from a receive buffer costs less than the
/// extra read it would take.
pub const BULK_MIN: usize = 16 << 10;

/// A message at least this long marks its peer as one that sends large messages: the rest of such
/// a message is read straight into its buffer however little is left, and the peer's next header
/// is read alone ([`Session::expects_large`]). Below it, the copy of a message from a receive
/// buffer costs less than the extra read.
pub const LARGE_MESSAGE: usize = 64 << 10;

/// Sends frames on behalf of a session; borrowed from [`Session::outgoing`] or handed to the
/// `receive` callback.
pub struct Outgoing<'s, S: FrameSink + ?Sized> {
    tx: &'s mut Tx,
    sink: &'s mut S,
    /// The retained message just delivered (empty if none): payloads inside it are handed to
    /// the sink as such ([`FrameSink::send_message_frame`]).
    message: &'s [u8],
}

impl<S: FrameSink + ?Sized> Outgoing<'_, S> {
    /// Bytes queued on this session's connection and not yet handed to the network.
    pub fn buffered(&self) -> usize {
        self.sink.buffered()
    }
}

impl Tx {
    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.mask_rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32).to_le_bytes()[..4]
            .try_into()
            .expect("4 bytes")
    }

    /// Encodes and queues one frame; no state checks.
    fn send<S: FrameSink + ?Sized>(
        &mut self,
        sink: &mut S,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
    ) {
        self.send_in(sink, opcode, fin, payload, &[]);
    }

    /// [`Tx::send`], telling the sink when `payload` lies inside the retained `message`.
    fn send_in<S: FrameSink + ?Sized>(
        &mut self,
        sink: &mut S,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
        message: &[u8],
    ) {
        let data = matches!(opcode, OpCode::Text | OpCode::Binary | OpCode::Continuation);
        let whole = matches!(opcode, OpCode::Text | OpCode::Binary) && fin && !self.fragmenting;
        if data {
            self.fragmenting = !fin;
        }
        if whole && self.role == Role::Server && self.send_compressed(sink, opcode, payload) {
            return;
        }
        let mut head = [0u8; MAX_HEADER_LEN];
        let mut header = FrameHeader::server(opcode, fin, payload.len());
        match self.role {
            Role::Server => {
                let n = header.encode(&mut head);
                if !payload.is_empty() && within(payload, message) {
                    sink.send_message_frame(&head[..n], payload, message);
                } else {
                    sink.send_frame(&head[..n], payload);
                }
            }
            Role::Client => {
                let key = self.next_mask();
                header.mask = Some(key);
                let n = header.encode(&mut head);
                self.scratch.clear();
                self.scratch.extend_from_slice(payload);
                apply_mask(&mut self.scratch, key, 0);
                sink.send_frame(&head[..n], &self.scratch);
                if self.scratch.capacity() > ASSEMBLY_RETAIN {
                    self.scratch = Vec::new();
                }
            }
        }
    }

    /// Sends a whole message compressed if permessage-deflate is on, the message is long enough
    /// and the window allows; `false`: send it as is.
    fn send_compressed<S: FrameSink + ?Sized>(
        &mut self,
        sink: &mut S,
        opcode: OpCode,
        payload: &[u8],
    ) -> bool {
        let Some(d) = self.deflate.as_mut() else {
            return false;
        };
        // zlib cannot compress within an 8-bit window: such a session gets it uncompressed.
        if payload.len() < d.threshold || d.agreed.server_window_bits < 9 {
            deflate::count(|s| s.messages_plain_out += 1);
            return false;
        }
        deflate::with_out(|out| {
            let keep = !d.agreed.server_no_context_takeover;
            let ok = match &mut d.deflater {
                Some(deflater) => deflater.compress(payload, out, keep),
                None => {
                    deflate::shared_compress(d.level, d.agreed.server_window_bits, payload, out)
                }
            };
            // Without context takeover nothing ties the next message to this one: send it as
            // is when compressing did not pay. With it, the peer must see what we compressed.
            if !ok || (!keep && out.len() >= payload.len()) {
                deflate::count(|s| s.messages_plain_out += 1);
                return false;
            }
            let (raw, zipped) = (payload.len() as u64, out.len() as u64);
            deflate::count(|s| {
                s.messages_out += 1;
                s.bytes_raw_out += raw;
                s.bytes_out += zipped;
            });
            let mut head = [0u8; MAX_HEADER_LEN];
            let mut header = FrameHeader::server(opcode, true, out.len());
            header.rsv = RSV1;
            let n = header.encode(&mut head);
            sink.send_frame(&head[..n], out);
            true
        })
    }

    /// Queues a Close frame with `code` (none: empty payload) and `reason` (≤ 123 bytes).
    fn send_close<S: FrameSink + ?Sized>(
        &mut self,
        sink: &mut S,
        code: Option<CloseCode>,
        reason: &str,
    ) {
        let mut payload = [0u8; 125];
        let len = match code {
            None => 0,
            Some(code) => {
                let reason = &reason.as_bytes()[..reason.len().min(123)];
                payload[..2].copy_from_slice(&code.0.to_be_bytes());
                payload[2..2 + reason.len()].copy_from_slice(reason);
                2 + reason.len()
            }
        };
        self.send(sink, OpCode::Close, true, &payload[..len]);
    }

    /// Fails the connection: queues a Close with `code` (unless one was already sent) and ends the
    /// session.
    fn fail<S: FrameSink + ?Sized>(
        &mut self,
        sink: &mut S,
        code: CloseCode,
        reason: &'static str,
    ) -> ProtocolError {
        if self.state == State::Open {
            self.send_close(sink, Some(code), reason);
        }
        self.state = State::Closed;
        ProtocolError { code, reason }
    }
}

impl<'s, S: FrameSink + ?Sized> Outgoing<'s, S> {
    /// Sends a text message in one frame.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.send_frame(OpCode::Text, true, text.as_bytes())
    }
    /// Sends a binary message in one frame.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_frame(OpCode::Binary, true, data)
    }
    /// Sends one raw frame, e.g. a fragment (`Text`/`Binary` with `fin = false`, then
    /// `Continuation`s). The caller keeps the fragmentation rules; control frames must be final
    /// and at most 125 bytes (`ControlTooLong` otherwise).
    pub fn send_frame(
        &mut self,
        opcode: OpCode,
        fin: bool,
        payload: &[u8],
    ) -> Result<(), SendError> {
        if self.tx.state != State::Open {
            return Err(SendError::Closed);
        }
        if opcode.is_control() && (payload.len() > 125 || !fin) {
            return Err(SendError::ControlTooLong);
        }
        self.tx
            .send_in(self.sink, opcode, fin, payload, self.message);
        Ok(())
    }
    /// Sends a ping (payload ≤ 125 bytes).
    pub fn ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_frame(OpCode::Ping, true, payload)
    }
    /// Sends an unsolicited pong (payload ≤ 125 bytes), e.g. as a heartbeat.
    pub fn pong(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.send_frame(OpCode::Pong, true, payload)
    }
    /// Starts the close handshake (reason ≤ 123 bytes). The session becomes `Closing`.
    pub fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SendError> {
        if self.tx.state != State::Open {
            return Err(SendError::Closed);
        }
        if !code.is_sendable() {
            return Err(SendError::InvalidCloseCode);
        }
        if reason.len() > 123 {
            return Err(SendError::ControlTooLong);
        }
        self.tx.send_close(self.sink, Some(code), reason);
        self.tx.state = State::Closing;
        Ok(())
    }
    /// The session's state.
    pub fn state(&self) -> State {
        self.tx.state
    }
}

impl Session {
    /// A server session that has just completed its handshake.
    pub fn new(limits: Limits) -> Self {
        Self::with_role(limits, Role::Server, 0)
    }

    /// A client session (for tests and load generators): expects unmasked frames and masks what it
    /// sends with keys from a xorshift generator seeded with `mask_seed` (not a CSPRNG: RFC 6455
    /// wants unpredictable keys from browsers, which a load generator does not need).
    pub fn new_client(limits: Limits, mask_seed: u64) -> Self {
        Self::with_role(limits, Role::Client, mask_seed)
    }

    fn with_role(limits: Limits, role: Role, mask_seed: u64) -> Self {
        let mask_rng = if mask_seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            mask_seed
        };
        Session {
            limits,
            tx: Tx {
                state: State::Open,
                role,
                mask_rng,
                scratch: Vec::new(),
                deflate: None,
                fragmenting: false,
            },
            rx: Rx::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.tx.state
    }

    /// Whether a data message is in progress: a frame streaming into the assembly buffer, or a
    /// fragmented message waiting for its last fragment (for the message deadline).
    pub fn in_message(&self) -> bool {
        self.rx.stream.is_some() || self.rx.msg.is_some()
    }

    /// Whether a whole data message may be sent now: open, and not between the fragments of
    /// one of our own.
    pub fn can_send_whole(&self) -> bool {
        self.tx.state == State::Open && !self.tx.fragmenting
    }

    /// The role this session plays.
    pub fn role(&self) -> Role {
        self.tx.role
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the limits (hot reload); applies from the next frame.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Capacity currently held for message assembly: the session's own buffer (≤ `ASSEMBLY_RETAIN`)
    /// plus, while a larger message is in progress, the buffer it borrowed (for memory accounting).
    pub fn assembly_capacity(&self) -> usize {
        self.rx.assembly.capacity()
    }

    /// Feeds received bytes, unmasking them in place, and calls `on_event` for each event; the
    /// callback may send through the `Outgoing` it is given. Returns how many bytes of `input` were
    /// consumed: the caller keeps `input[consumed..]` (a partial frame of at most
    /// `limits.inplace_frame_max` bytes, or a partial header) and passes it again, unchanged,
    /// followed by newly received bytes. On `Err`, the Close has been queued and the session is
    /// `Closed`. Once `Closed`, all input is consumed and ignored.
    ///
    /// Zero copy: a frame whole in `input` is unmasked in place and its message, if unfragmented,
    /// is handed out as a sub-slice of `input`. Fragmented messages and frames larger than
    /// `inplace_frame_max` that arrive in pieces are assembled in the session's reusable buffer, or,
    /// beyond `ASSEMBLY_RETAIN`, in one borrowed from the thread's cache ([`crate::assembly`]).
    pub fn receive<S, F>(
        &mut self,
        input: &mut [u8],
        sink: &mut S,
        mut on_event: F,
    ) -> Result<usize, ProtocolError>
    where
        S: FrameSink + ?Sized,
        F: FnMut(Event<'_>, &mut Outgoing<'_, S>),
    {
        // An earlier turn's retained message: its output has been sent.
        self.rx.assembly.release_retained();
        let mut pos = 0;
        let inplace_max = self.limits.inplace_frame_max.max(MAX_CONTROL_FRAME);
        while self.tx.state != State::Closed {
            if let Some(mut stream) = self.rx.stream {
                let avail = input.len() - pos;
                if avail == 0 {
                    break;
                }
                let n = stream.remaining.min(avail as u64) as usize;
                let piece = &mut input[pos..pos + n];
                if let Some(key) = stream.mask {
                    stream.phase = apply_mask(piece, key, stream.phase);
                }
                stream.remaining -= n as u64;
                pos += n;
                let frame_done = stream.remaining == 0;
                self.rx.stream = if frame_done { None } else { Some(stream) };
                self.data_piece(piece, frame_done && stream.fin, sink, &mut on_event)?;
                continue;
            }

            let (header, header_len) = match FrameHeader::decode(&input[pos..]) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(_) => {
                    return Err(self.tx.fail(
                        sink,
                        CloseCode::PROTOCOL_ERROR,
                        "64-bit frame length with the top bit set",
                    ))
                }
            };
            self.check_header(&header, sink)?;
            // check_header bounded payload_len by max_frame_size, a usize.
            let len = header.payload_len as usize;
            let total = header_len + len;
            let avail = input.len() - pos;
            let done = if pos == 0 { self.rx.inplace_done } else { 0 };
            self.rx.inplace_done = 0;

            if total <= avail {
                let payload = &mut input[pos + header_len..pos + total];
                if let Some(key) = header.mask {
                    apply_mask(&mut payload[done..], key, done);
                }
                pos += total;
                self.account(&header);
                self.whole_frame(&header, payload, done, sink, &mut on_event)?;
            } else if total <= inplace_max || done > 0 {
                // Wait for the rest; but check the text seen so far, to fail fast on bad UTF-8.
                self.rx.inplace_done = done;
                // (A compressed message is checked once inflated.)
                let compressed = header.rsv == RSV1
                    || (header.opcode == OpCode::Continuation && self.rx.compressed);
                if self.tx.state == State::Open && self.is_text(header.opcode) && !compressed {
                    let payload = &mut input[pos + header_len..];
                    if let Some(key) = header.mask {
                        apply_mask(&mut payload[done..], key, done);
                    }
                    if done == 0 && header.opcode == OpCode::Text {
                        self.rx.utf8.reset();
                    }
                    if self.rx.utf8.feed(&payload[done..]).is_err() {
                        return Err(self.tx.fail(
                            sink,
                            CloseCode::INVALID_PAYLOAD,
                            "text is not valid UTF-8",
                        ));
                    }
                    self.rx.inplace_done = payload.len();
                }
                break;
            } else {
                pos += header_len;
                self.account(&header);
                if header.opcode != OpCode::Continuation {
                    self.start_message(header.opcode, header.rsv);
                }
                if self.tx.state == State::Open {
                    // The frame's length is known: make room for it (check_header bounded msg_len
                    // by max_message_size; the assembly reserves at most a step ahead of what
                    // has arrived) instead of growing byte by byte while it arrives.
                    let last = header.fin;
                    if self
                        .rx
                        .assembly
                        .reserve(self.rx.msg_len as usize, last)
                        .is_err()
                    {
                        return Err(self.tx.fail(sink, CloseCode::INTERNAL_ERROR, NO_MEMORY));
                    }
                }
                self.rx.stream = Some(Streaming {
                    fin: header.fin,
                    remaining: len as u64,
                    mask: header.mask,
                    phase: 0,
                });
            }
        }
        if self.tx.state == State::Closed {
            return Ok(input.len());
        }
        Ok(pos)
    }

    /// Outgoing frames outside of `receive` (server-initiated sends, shutdown's close 1001).
    pub fn outgoing<'s, S: FrameSink + ?Sized>(&'s mut self, sink: &'s mut S) -> Outgoing<'s, S> {
        Outgoing {
            tx: &mut self.tx,
            sink,
            message: &[],
        }
    }

    /// Whether a data frame with `opcode` carries text.
    fn is_text(&self, opcode: OpCode) -> bool {
        match opcode {
            OpCode::Text => true,
            OpCode::Continuation => self.rx.msg == Some(MsgKind::Text),
            _ => false,
        }
    }

    /// Enforces every per-frame rule before any payload byte is looked at.
    fn check_header<S: FrameSink + ?Sized>(&mut self, h: &FrameHeader, sink: &mut S) -> Step {
        let violation = |code, reason| Some((code, reason));
        let in_message = self.rx.msg.is_some();
        // RSV1 marks a compressed message: only on its first frame, only once negotiated.
        let compressed_start = h.rsv == RSV1
            && self.rx.inflate.is_some()
            && matches!(h.opcode, OpCode::Text | OpCode::Binary);
        let broken = if h.rsv != 0 && !compressed_start {
            violation(
                CloseCode::PROTOCOL_ERROR,
                "RSV bits set without a negotiated extension",
            )
        } else if let OpCode::Reserved(_) = h.opcode {
            violation(CloseCode::PROTOCOL_ERROR, "reserved opcode")
        } else if self.tx.role == Role::Server && h.mask.is_none() {
            violation(CloseCode::PROTOCOL_ERROR, "unmasked client frame")
        } else if self.tx.role == Role::Client && h.mask.is_some() {
            violation(CloseCode::PROTOCOL_ERROR, "masked server frame")
        } else if h.opcode.is_control() && !h.fin {
            violation(CloseCode::PROTOCOL_ERROR, "fragmented control frame")
        } else if h.opcode.is_control() && h.payload_len > 125 {
            violation(
                CloseCode::PROTOCOL_ERROR,
                "control frame payload over 125 bytes",
            )
        } else if h.opcode == OpCode::Continuation && !in_message {
            violation(
                CloseCode::PROTOCOL_ERROR,
                "continuation frame without a message to continue",
            )
        } else if matches!(h.opcode, OpCode::Text | OpCode::Binary) && in_message {
            violation(
                CloseCode::PROTOCOL_ERROR,
                "new data frame inside a fragmented message",
            )
        } else if h.payload_len > self.limits.max_frame_size as u64 {
            violation(
                CloseCode::MESSAGE_TOO_BIG,
                "frame larger than max_frame_size",
            )
        } else if !h.opcode.is_control()
            && self.message_len_with(h) > self.limits.max_message_size as u64
        {
            violation(
                CloseCode::MESSAGE_TOO_BIG,
                "message larger than max_message_size",
            )
        } else {
            None
        };
        match broken {
            Some((code, reason)) => Err(self.tx.fail(sink, code, reason)),
            None => Ok(()),
        }
    }

    /// Size of the message in progress once the data frame `h` is added.
    fn message_len_with(&self, h: &FrameHeader) -> u64 {
        let before = if h.opcode == OpCode::Continuation {
            self.rx.msg_len
        } else {
            0
        };
        before.saturating_add(h.payload_len)
    }

    /// Counts a consumed data frame into the message in progress.
    fn account(&mut self, h: &FrameHeader) {
        if !h.opcode.is_control() {
            self.rx.msg_len = self.message_len_with(h);
        }
    }

    /// Begins a message that goes through the assembly buffer (`rsv`: its first frame's).
    fn start_message(&mut self, opcode: OpCode, rsv: u8) {
        self.rx.compressed = rsv == RSV1;
        self.rx.msg = Some(if opcode == OpCode::Text {
            MsgKind::Text
        } else {
            MsgKind::Binary
        });
        self.rx.assembly.clear();
        self.rx.utf8.reset();
    }

    /// Handles a frame whose payload is whole and unmasked in the input buffer. `done` payload bytes
    /// were already UTF-8 checked while the frame was partial.
    fn whole_frame<S, F>(
        &mut self,
        h: &FrameHeader,
        payload: &[u8],
        done: usize,
        sink: &mut S,
        on_event: &mut F,
    ) -> Step
    where
        S: FrameSink + ?Sized,
        F: FnMut(Event<'_>, &mut Outgoing<'_, S>),
    {
        match h.opcode {
            OpCode::Ping => {
                if self.tx.state == State::Open {
                    self.tx.send(sink, OpCode::Pong, true, payload);
                }
                on_event(
                    Event::Ping(payload),
                    &mut Outgoing {
                        tx: &mut self.tx,
                        sink,
                        message: &[],
                    },
                );
                Ok(())
            }
            OpCode::Pong => {
                on_event(
                    Event::Pong(payload),
                    &mut Outgoing {
                        tx: &mut self.tx,
                        sink,
                        message: &[],
                    },
                );
                Ok(())
            }
            OpCode::Close => self.peer_close(payload, sink, on_event),
            OpCode::Text | OpCode::Binary if h.fin => {
                if self.tx.state != State::Open {
                    return Ok(());
                }
                if h.rsv == RSV1 {
                    let kind = if h.opcode == OpCode::Text {
                        MsgKind::Text
                    } else {
                        MsgKind::Binary
                    };
                    return self.inflate_and_deliver(
                        kind,
                        Compressed::Input(payload),
                        sink,
                        on_event,
                    );
                }
                let event = if h.opcode == OpCode::Text {
                    match std::str::from_utf8(payload) {
                        Ok(text) => Event::Text(text),
                        Err(_) => {
                            return Err(self.tx.fail(
                                sink,
                                CloseCode::INVALID_PAYLOAD,
                                "text is not valid UTF-8",
                            ))
                        }
                    }
                } else {
                    Event::Binary(payload)
                };
                self.rx.last_large = payload.len() >= LARGE_MESSAGE;
                on_event(
                    event,
                    &mut Outgoing {
                        tx: &mut self.tx,
                        sink,
                        message: &[],
                    },
                );
                Ok(())
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if h.opcode != OpCode::Continuation {
                    // First fragment: keep the UTF-8 state of the bytes checked while partial.
                    let checked = std::mem::take(&mut self.rx.utf8);
                    self.start_message(h.opcode, h.rsv);
                    self.rx.utf8 = if done > 0 {
                        checked
                    } else {
                        Utf8Validator::new()
                    };
                }
                if done > 0 && self.tx.state == State::Open {
                    // Already UTF-8 checked while the frame was partial: append without re-feeding.
                    if self.rx.assembly.extend(&payload[..done]).is_err() {
                        return Err(self.tx.fail(sink, CloseCode::INTERNAL_ERROR, NO_MEMORY));
                    }
                }
                self.data_piece(&payload[done..], h.fin, sink, on_event)
            }
            OpCode::Reserved(_) => unreachable!("rejected by check_header"),
        }
    }

    /// Adds a piece of the data message in progress; `last` ends the message and delivers it.
    fn data_piece<S, F>(&mut self, piece: &[u8], last: bool, sink: &mut S, on_event: &mut F) -> Step
    where
        S: FrameSink + ?Sized,
        F: FnMut(Event<'_>, &mut Outgoing<'_, S>),
    {
        if self.tx.state != State::Open {
            // Closing: data is dropped, only the fragmentation bookkeeping goes on.
            if last {
                self.rx.msg = None;
            }
            return Ok(());
        }
        let kind = self.rx.msg.expect("a data piece belongs to a message");
        if kind == MsgKind::Text && !self.rx.compressed && self.rx.utf8.feed(piece).is_err() {
            return Err(self
                .tx
                .fail(sink, CloseCode::INVALID_PAYLOAD, "text is not valid UTF-8"));
        }
        if self.rx.assembly.extend(piece).is_err() {
            return Err(self.tx.fail(sink, CloseCode::INTERNAL_ERROR, NO_MEMORY));
        }
        if !last {
            return Ok(());
        }
        self.deliver(sink, on_event)
    }

    /// Inflates a compressed message (from the input, or assembled) and delivers it: its
    /// inflated size counts against `max_message_size` while inflating (1009 past it), bad
    /// DEFLATE data is 1007, text is checked once inflated.
    fn inflate_and_deliver<S, F>(
        &mut self,
        kind: MsgKind,
        from: Compressed<'_>,
        sink: &mut S,
        on_event: &mut F,
    ) -> Step
    where
        S: FrameSink + ?Sized,
        F: FnMut(Event<'_>, &mut Outgoing<'_, S>),
    {
        let Session { limits, tx, rx } = self;
        let compressed = match from {
            Compressed::Input(bytes) => bytes,
            Compressed::Assembled => rx.assembly.as_slice(),
        };
        let max = limits.max_message_size;
        let state = rx
            .inflate
            .as_mut()
            .expect("RSV1 is accepted only once negotiated");
        let mut out =
            crate::assembly::take_buffer((compressed.len() * 4).clamp(4096, max.max(4096)));
        let inflated = match &mut state.inflater {
            Some(inflater) => inflater.inflate(compressed, &mut out, max, state.keep_context),
            None => deflate::shared_inflate(compressed, &mut out, max),
        };
        let failure = match inflated {
            Ok(()) => None,
            Err(InflateError::TooBig) => Some((
                CloseCode::MESSAGE_TOO_BIG,
                "message larger than max_message_size once inflated",
            )),
            Err(InflateError::Corrupt) => Some((
                CloseCode::INVALID_PAYLOAD,
                "compressed message is not valid DEFLATE data",
            )),
            Err(InflateError::NoMemory) => Some((CloseCode::INTERNAL_ERROR, NO_MEMORY)),
        };
        let result = match failure {
            Some((code, reason)) => Err(tx.fail(sink, code, reason)),
            None => {
                let event = match kind {
                    MsgKind::Binary => Some(Event::Binary(&out)),
                    MsgKind::Text => std::str::from_utf8(&out).ok().map(Event::Text),
                };
                let (zipped, inflated) = (compressed.len() as u64, out.len() as u64);
                deflate::count(|s| {
                    s.messages_in += 1;
                    s.bytes_in += zipped;
                    s.bytes_inflated += inflated;
                });
                match event {
                    Some(event) => {
                        rx.last_large = out.len() >= LARGE_MESSAGE;
                        on_event(
                            event,
                            &mut Outgoing {
                                tx,
                                sink,
                                message: &[],
                            },
                        );
                        Ok(())
                    }
                    None => {
                        Err(tx.fail(sink, CloseCode::INVALID_PAYLOAD, "text is not valid UTF-8"))
                    }
                }
            }
        };
        crate::assembly::give_back(out);
        result
    }

    /// Turns permessage-deflate on for this session, as `agreed` at the upgrade.
    pub fn enable_deflate(&mut self, agreed: Agreed, cfg: &DeflateConfig) {
        let dedicated = matches!(cfg.mode, deflate::DeflateMode::Dedicated { .. });
        let (deflater, inflater) = if dedicated {
            deflate::take_codecs(
                cfg.level,
                agreed.server_window_bits.max(9),
                !agreed.server_no_context_takeover,
                !agreed.client_no_context_takeover,
            )
        } else {
            (None, None)
        };
        self.tx.deflate = Some(Box::new(TxDeflate {
            agreed,
            threshold: cfg.threshold,
            level: cfg.level,
            deflater,
        }));
        self.rx.inflate = Some(Box::new(RxInflate {
            keep_context: !agreed.client_no_context_takeover,
            inflater,
        }));
        deflate::count(|s| s.sessions += 1);
    }

    /// Memory this session's own codec states hold (dedicated mode): zlib's formula for a
    /// compressor, `2^(window+2) + 2^(memLevel+9)` bytes (memLevel 8), plus 30 KiB, and 40 KiB
    /// for an inflater (a 32 KiB window and its state), which matches the server's RSS growth
    /// per connection measured by `scripts/deflate-memory.sh` (333 KiB at 15 window bits, 209
    /// KiB at 10). Shared-mode sessions hold none.
    pub fn codec_memory(&self) -> usize {
        let tx = self.tx.deflate.as_ref().and_then(|d| d.deflater.as_ref());
        let rx = self.rx.inflate.as_ref().and_then(|i| i.inflater.as_ref());
        tx.map_or(0, |d| (1 << (d.window_bits() + 2)) + (1 << 17) + (30 << 10))
            + rx.map_or(0, |_| 40 << 10)
    }

    /// The permessage-deflate parameters in force, if negotiated.
    pub fn deflate(&self) -> Option<Agreed> {
        self.tx.deflate.as_ref().map(|d| d.agreed)
    }

    /// Delivers the message assembled, then readies the storage for the next one; a message in
    /// a borrowed buffer is retained if the sink keeps ranges of it (see
    /// [`Session::retained_message`]).
    fn deliver<S, F>(&mut self, sink: &mut S, on_event: &mut F) -> Step
    where
        S: FrameSink + ?Sized,
        F: FnMut(Event<'_>, &mut Outgoing<'_, S>),
    {
        let kind = self.rx.msg.take().expect("a delivery ends a message");
        if std::mem::take(&mut self.rx.compressed) {
            let result = self.inflate_and_deliver(kind, Compressed::Assembled, sink, on_event);
            self.rx.assembly.clear();
            return result;
        }
        let bytes = self.rx.assembly.as_slice();
        let event = match kind {
            MsgKind::Binary => Event::Binary(bytes),
            MsgKind::Text => match (self.rx.utf8.finish(), std::str::from_utf8(bytes)) {
                (Ok(()), Ok(text)) => Event::Text(text),
                _ => {
                    return Err(self.tx.fail(
                        sink,
                        CloseCode::INVALID_PAYLOAD,
                        "text is not valid UTF-8",
                    ))
                }
            },
        };
        self.rx.last_large = self.rx.msg_len >= LARGE_MESSAGE as u64;
        let retain = sink.keeps_message_ranges() && self.rx.assembly.can_retain();
        let message = if retain { bytes } else { &[] };
        on_event(
            event,
            &mut Outgoing {
                tx: &mut self.tx,
                sink,
                message,
            },
        );
        self.rx.assembly.finish_delivered(retain);
        Ok(())
    }

    /// Whether a large frame is streaming: [`Session::bulk_room`] would give room. Large: at
    /// least [`BULK_MIN`] bytes still to come, or part of a message of at least
    /// [`LARGE_MESSAGE`] bytes (its tail is read straight in too).
    pub fn streams_large_frame(&self) -> bool {
        self.tx.state == State::Open
            && self.rx.stream.is_some_and(|s| {
                s.remaining >= BULK_MIN as u64 || self.rx.msg_len >= LARGE_MESSAGE as u64
            })
    }

    /// Whether large messages are coming: one streams now, or the last one delivered was at
    /// least [`LARGE_MESSAGE`] bytes (a peer that sends one usually sends more).
    pub fn expects_large(&self) -> bool {
        self.streams_large_frame() || (self.tx.state == State::Open && self.rx.last_large)
    }

    /// Room to read the payload of the frame being streamed straight into the message buffer,
    /// when it is large ([`Session::streams_large_frame`]): a transport that reads into it
    /// (at most the room's length, which never goes past the frame) then calls
    /// [`Session::receive_bulk`]. `None`: read into a receive buffer and call
    /// [`Session::receive`] as usual. Reserving follows the same bounds as assembly does (at most
    /// a step ahead of the bytes arrived; no memory, no room).
    pub fn bulk_room(&mut self) -> Option<&mut [std::mem::MaybeUninit<u8>]> {
        if !self.streams_large_frame() {
            return None;
        }
        let stream = self.rx.stream?;
        // An earlier turn's retained message: its output has been sent.
        self.rx.assembly.release_retained();
        let want = usize::try_from(stream.remaining).unwrap_or(usize::MAX);
        self.rx.assembly.room(want, stream.fin)
    }

    /// Takes `n` payload bytes a transport read into the room [`Session::bulk_room`] gave:
    /// unmasks them in place, checks text, and delivers the message if they end it, as
    /// [`Session::receive`] would have.
    ///
    /// # Safety
    /// The first `n` bytes of that room must have been written, and no other call on this
    /// session came between `bulk_room` and this one.
    pub unsafe fn receive_bulk<S, F>(
        &mut self,
        n: usize,
        sink: &mut S,
        mut on_event: F,
    ) -> Result<(), ProtocolError>
    where
        S: FrameSink + ?Sized,
        F: FnMut(Event<'_>, &mut Outgoing<'_, S>),
    {
        let mut stream = self
            .rx
            .stream
            .expect("bulk bytes belong to a streamed frame");
        assert!(n as u64 <= stream.remaining, "bulk bytes beyond the frame");
        // SAFETY: the caller wrote `n` bytes of the room, which `filled` bounds-checks.
        let piece = unsafe { self.rx.assembly.filled(n) };
        if let Some(key) = stream.mask {
            stream.phase = apply_mask(piece, key, stream.phase);
        }
        stream.remaining -= n as u64;
        let frame_done = stream.remaining == 0;
        self.rx.stream = if frame_done { None } else { Some(stream) };
        if self.rx.msg == Some(MsgKind::Text)
            && !self.rx.compressed
            && self.rx.utf8.feed(piece).is_err()
        {
            return Err(self
                .tx
                .fail(sink, CloseCode::INVALID_PAYLOAD, "text is not valid UTF-8"));
        }
        if frame_done && stream.fin {
            self.deliver(sink, &mut on_event)?;
        }
        Ok(())
    }

    /// The large message delivered last, kept unchanged until [`Session::release_retained`]
    /// (empty if none): the turn's output may name ranges of it
    /// ([`FrameSink::send_message_frame`]).
    pub fn retained_message(&self) -> &[u8] {
        self.rx.assembly.retained()
    }

    /// Takes the retained message's buffer out, for the pending output to adopt the unsent end
    /// of an echo ([`crate::PendingOutput::adopt`]).
    pub fn take_retained(&mut self) -> Option<Vec<u8>> {
        self.rx.assembly.take_retained()
    }

    /// Gives the retained message's buffer back (once the turn's output has been sent).
    pub fn release_retained(&mut self) {
        self.rx.assembly.release_retained();
    }

    /// The peer's Close: validate it, answer it (unless we started the close), report it.
    fn peer_close<S, F>(&mut self, payload: &[u8], sink: &mut S, on_event: &mut F) -> Step
    where
        S: FrameSink + ?Sized,
        F: FnMut(Event<'_>, &mut Outgoing<'_, S>),
    {
        let (code, reason) = match payload {
            [] => (None, ""),
            [_] => {
                return Err(self.tx.fail(
                    sink,
                    CloseCode::PROTOCOL_ERROR,
                    "close frame with a 1-byte payload",
                ))
            }
            [hi, lo, reason @ ..] => {
                let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
                if !code.is_sendable() {
                    return Err(self.tx.fail(
                        sink,
                        CloseCode::PROTOCOL_ERROR,
                        "invalid close code",
                    ));
                }
                match std::str::from_utf8(reason) {
                    Ok(reason) => (Some(code), reason),
                    Err(_) => {
                        return Err(self.tx.fail(
                            sink,
                            CloseCode::INVALID_PAYLOAD,
                            "close reason is not valid UTF-8",
                        ))
                    }
                }
            }
        };
        if self.tx.state == State::Open {
            self.tx.send_close(sink, code, "");
        }
        self.tx.state = State::Closed;
        on_event(
            Event::Close(code, reason),
            &mut Outgoing {
                tx: &mut self.tx,
                sink,
                message: &[],
            },
        );
        Ok(())
    }
}
