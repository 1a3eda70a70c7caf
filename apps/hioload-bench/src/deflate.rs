//! permessage-deflate (RFC 7692) on the client's side, for the compressed-echo scenario
//! (`--deflate`): JSON-like text messages with the redundancy of real traffic, the offer a
//! browser makes, the server's answer, compression of what is sent (RSV1) and inflation and
//! verification of what comes back.
//!
//! Written on flate2 directly, not on the server's codec (`hioload_wsproto::deflate`), so that a
//! mistake in one is not mirrored by the other. Whatever the server agrees is honoured: without
//! client context takeover every message compresses the same way, so its masked frame is made
//! once per ring message and window size ([`TextRing`]); with it, each connection compresses
//! what it sends in turn, keeping its window. Echoes are inflated (keeping the window unless
//! `server_no_context_takeover` was agreed) and compared with what was sent, byte for byte.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use hioload_wsproto::frame::FrameHeader;
use hioload_wsproto::OpCode;

use crate::pattern::MASK_KEY;
use crate::wire::{self, DataKind};

/// What the client offers: what browsers send (context takeover both ways, and the server may
/// bound our window).
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The client's compression level (zlib's default, as browsers use).
pub const LEVEL: u32 = 6;

/// RSV1: the message is compressed.
const RSV1: u8 = 0b100;

/// The tail a sync flush ends with, removed on the wire (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The parameters a server agreed to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// We reset ours after each message.
    pub client_no_context_takeover: bool,
    /// The server's window (bits).
    pub server_max_window_bits: u8,
    /// Our window (bits); 8 cannot be had from zlib, so we then send uncompressed.
    pub client_max_window_bits: u8,
}

impl Agreed {
    /// The answer as one line, for reports.
    pub fn describe(&self) -> String {
        let mut s = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits != 15 {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits
            ));
        }
        if self.client_max_window_bits != 15 {
            s.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits
            ));
        }
        s
    }
}

/// Reads the server's `Sec-WebSocket-Extensions` answer to [`OFFER`]: `Ok(None)` when it
/// declined (no header), the agreed parameters, or why the answer is not one RFC 7692 allows.
pub fn parse_answer(value: Option<&str>) -> Result<Option<Agreed>, String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if value.contains(',') {
        return Err(format!("more than one extension in the answer {value:?}"));
    }
    let mut parts = value.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        return Err(format!("unrequested extension in the answer {value:?}"));
    }
    let mut agreed = Agreed {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, v) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return Err(format!("parameter {name} twice in the answer {value:?}"));
        }
        let bits = |v: &str| match v.parse::<u8>() {
            Ok(b @ 8..=15) => Ok(b),
            _ => Err(format!(
                "window bits {v:?} out of 8..=15 in the answer {value:?}"
            )),
        };
        match (name.as_str(), v) {
            ("server_no_context_takeover", None) => agreed.server_no_context_takeover = true,
            ("client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
            ("server_max_window_bits", Some(v)) => agreed.server_max_window_bits = bits(v)?,
            ("client_max_window_bits", Some(v)) => agreed.client_max_window_bits = bits(v)?,
            _ => {
                return Err(format!(
                    "invalid parameter {param:?} in the answer {value:?}"
                ))
            }
        }
        seen.push(name);
    }
    Ok(Some(agreed))
}

/// `count` distinct JSON-like text messages of exactly `size` bytes: a stream of event objects
/// (`[{"id":…,"user":"user_042","event":"order.updated",…},…`) cut at `size`, with the keys, a
/// small vocabulary and random numbers of real API traffic; zlib at level 6 without context
/// takeover shrinks 16 KiB of it about 6×, 1 KiB about 3× (with context takeover, 7× and 6×).
/// ASCII only (valid UTF-8 text frames).
pub fn json_messages(size: usize, count: usize) -> Vec<Vec<u8>> {
    const EVENTS: [&str; 8] = [
        "order.created",
        "order.updated",
        "order.shipped",
        "cart.item_added",
        "cart.item_removed",
        "user.login",
        "user.logout",
        "price.changed",
    ];
    const TAGS: [&str; 10] = [
        "new", "sale", "vip", "mobile", "web", "eu", "us", "retry", "beta", "gift",
    ];
    const CURRENCIES: [&str; 4] = ["EUR", "USD", "GBP", "JPY"];
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut ts = 1_733_472_000_000u64;
    let mut id = 100_000u64;
    (0..count)
        .map(|_| {
            let mut m = String::with_capacity(size + 256);
            m.push('[');
            while m.len() < size {
                if m.len() > 1 {
                    m.push(',');
                }
                id += 1 + next() % 3;
                ts += next() % 5_000;
                let r = next();
                let tags: Vec<&str> = (0..(r % 3) as usize)
                    .map(|i| TAGS[((r >> (8 + 4 * i)) % TAGS.len() as u64) as usize])
                    .collect();
                m.push_str(&format!(
                    "{{\"id\":{id},\"user\":\"user_{:03}\",\"event\":\"{}\",\"ts\":{ts},\
                     \"amount\":{}.{:02},\"currency\":\"{}\",\"qty\":{},\"tags\":[{}],\"ok\":{}}}",
                    (r >> 20) % 500,
                    EVENTS[((r >> 32) % EVENTS.len() as u64) as usize],
                    (r >> 36) % 1000,
                    (r >> 46) % 100,
                    CURRENCIES[((r >> 53) % CURRENCIES.len() as u64) as usize],
                    1 + (r >> 56) % 9,
                    tags.iter()
                        .map(|t| format!("\"{t}\""))
                        .collect::<Vec<_>>()
                        .join(","),
                    (r >> 60) % 8 != 0,
                ));
            }
            m.truncate(size);
            m.into_bytes()
        })
        .collect()
}

/// Bytes of distinct messages a ring holds at least: four of the largest DEFLATE window (32 KiB),
/// so that with context takeover no message finds an exact copy of itself in the window (a ring
/// of 64 × 256 B did: every echo then compressed to 8 bytes).
pub const RING_BYTES: usize = 128 << 10;

/// Ring size for `pipeline` messages of `size` bytes in flight: what [`Pattern::ring_messages`]
/// gives, and enough for [`RING_BYTES`].
///
/// [`Pattern::ring_messages`]: crate::pattern::Pattern::ring_messages
pub fn ring_messages(pipeline: usize, size: usize) -> usize {
    crate::pattern::Pattern::ring_messages(pipeline, size).max(RING_BYTES.div_ceil(size.max(1)))
}

/// The messages of a run, and their masked client frames: uncompressed, and compressed without
/// context (made on first use, per window size).
pub struct TextRing {
    /// The payloads, in ring order.
    pub payloads: Vec<Vec<u8>>,
    /// Uncompressed masked text frames.
    plain: Vec<Vec<u8>>,
    /// Compressed (RSV1) masked frames, each message on a fresh compressor; index `bits - 9`.
    compressed: [OnceLock<Vec<Vec<u8>>>; 7],
}

impl TextRing {
    /// A ring of `messages` JSON-like messages of `size` bytes.
    pub fn new(size: usize, messages: usize) -> TextRing {
        let payloads = json_messages(size, messages);
        let plain = payloads
            .iter()
            .map(|p| {
                let mut f = Vec::new();
                wire::push_frame(&mut f, DataKind::Text, p, Some(MASK_KEY));
                f
            })
            .collect();
        TextRing {
            payloads,
            plain,
            compressed: Default::default(),
        }
    }

    /// Messages in the ring.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Whether the ring is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// Payload bytes per message.
    pub fn size(&self) -> usize {
        self.payloads.first().map_or(0, Vec::len)
    }

    fn compressed_frames(&self, bits: u8) -> &[Vec<u8>] {
        self.compressed[usize::from(bits - 9)].get_or_init(|| {
            let mut c = Compress::new_with_window_bits(Compression::new(LEVEL), false, bits);
            self.payloads
                .iter()
                .map(|p| {
                    let mut body = Vec::new();
                    compress(&mut c, p, &mut body);
                    c.reset();
                    let mut f = Vec::new();
                    wire::push_frame_rsv(&mut f, DataKind::Text, RSV1, &body, Some(MASK_KEY));
                    f
                })
                .collect()
        })
    }
}

/// Appends `input` compressed with a sync flush, without the flush's tail (RFC 7692 §7.2.1).
pub fn compress(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    let in0 = c.total_in();
    out.reserve(input.len() + input.len() / 64 + 128);
    loop {
        let used = (c.total_in() - in0) as usize;
        let status = c
            .compress_vec(&input[used..], out, FlushCompress::Sync)
            .expect("deflate with a valid stream state");
        let used = (c.total_in() - in0) as usize;
        // Done once all input is in and the flush stopped with room to spare (or had nothing
        // more to write).
        if used == input.len() && (out.len() < out.capacity() || status == Status::BufError) {
            break;
        }
        out.reserve(out.capacity().max(1024));
    }
    assert!(
        out[start..].ends_with(&TAIL),
        "a sync flush ends with 00 00 ff ff"
    );
    out.truncate(out.len() - TAIL.len());
}

/// Inflates one message (`input`, without its tail) into `out` (emptied first), failing as soon
/// as it passes `max` bytes.
pub fn inflate(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), String> {
    out.clear();
    feed(d, input, out, max)?;
    feed(d, &TAIL, out, max)
}

fn feed(d: &mut Decompress, input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), String> {
    let in0 = d.total_in();
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(4096));
        }
        let before = (d.total_in(), d.total_out());
        let used = (d.total_in() - in0) as usize;
        let status = d
            .decompress_vec(&input[used..], out, FlushDecompress::Sync)
            .map_err(|e| format!("invalid compressed data ({e})"))?;
        if out.len() > max {
            return Err(format!("inflates to more than the {max} bytes sent"));
        }
        let used = (d.total_in() - in0) as usize;
        if status == Status::StreamEnd || (used == input.len() && out.len() < out.capacity()) {
            return Ok(());
        }
        if (d.total_in(), d.total_out()) == before && out.len() < out.capacity() {
            return Err("truncated compressed data".into());
        }
    }
}

/// One connection's side of the extension: what it agreed, its codecs, and the echoes it has
/// received but not yet verified.
pub struct Codec {
    agreed: Option<Agreed>,
    /// Our compressor, kept between messages (client context takeover).
    deflater: Option<Compress>,
    inflater: Decompress,
    /// Received bytes not yet making a whole frame.
    input: Vec<u8>,
    /// A fragmented message being assembled: compressed?, payload so far.
    fragments: Option<(bool, Vec<u8>)>,
    /// Frame bytes of the message being assembled.
    fragment_wire: usize,
    /// Inflated payload of the last compressed echo.
    inflated: Vec<u8>,
    /// Scratch for compressing what is sent.
    body: Vec<u8>,
}

impl Codec {
    /// A connection that agreed `agreed` (`None`: the server declined; plain text frames).
    pub fn new(agreed: Option<Agreed>) -> Codec {
        let deflater = agreed
            .filter(|a| !a.client_no_context_takeover && a.client_max_window_bits >= 9)
            .map(|a| {
                Compress::new_with_window_bits(
                    Compression::new(LEVEL),
                    false,
                    a.client_max_window_bits,
                )
            });
        Codec {
            agreed,
            deflater,
            inflater: Decompress::new_with_window_bits(false, 15),
            input: Vec::new(),
            fragments: None,
            fragment_wire: 0,
            inflated: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Appends the masked frame of ring message `k` to `out`: compressed unless the server
    /// declined or limited our window to 8 bits (zlib cannot make those; RFC 7692 lets any
    /// message go uncompressed).
    pub fn push_message(&mut self, ring: &TextRing, k: usize, out: &mut Vec<u8>) {
        let Some(a) = self.agreed.filter(|a| a.client_max_window_bits >= 9) else {
            out.extend_from_slice(&ring.plain[k]);
            return;
        };
        match &mut self.deflater {
            None => out.extend_from_slice(&ring.compressed_frames(a.client_max_window_bits)[k]),
            Some(c) => {
                self.body.clear();
                compress(c, &ring.payloads[k], &mut self.body);
                wire::push_frame_rsv(out, DataKind::Text, RSV1, &self.body, Some(MASK_KEY));
            }
        }
    }

    /// Takes `data`, the next bytes received, and verifies every echo it completes against the
    /// ring message it must be: the connection starts at ring message `start`, has issued
    /// `issued` messages and verified `*verified` (advanced here). Returns the frame bytes of the
    /// echoes completed; the error says what was wrong.
    pub fn receive(
        &mut self,
        ring: &TextRing,
        start: usize,
        issued: u64,
        verified: &mut u64,
        data: &[u8],
    ) -> Result<u64, String> {
        self.input.extend_from_slice(data);
        let mut pos = 0;
        let mut wire_bytes = 0u64;
        let result = loop {
            let (h, head) = match FrameHeader::decode(&self.input[pos..]) {
                Ok(Some(h)) => h,
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("invalid frame header ({e:?})")),
            };
            let Some(end) = usize::try_from(h.payload_len)
                .ok()
                .and_then(|n| (pos + head).checked_add(n))
            else {
                break Err(format!("frame of {} bytes", h.payload_len));
            };
            if end > self.input.len() {
                if h.payload_len > (64 << 20) {
                    break Err(format!("frame of {} bytes", h.payload_len));
                }
                break Ok(());
            }
            let payload = &self.input[pos + head..end];
            let frame_len = end - pos;
            pos = end;
            if h.mask.is_some() {
                break Err("masked server frame".into());
            }
            let step = match h.opcode {
                OpCode::Ping | OpCode::Pong => continue,
                OpCode::Close => Err(format!(
                    "server sent close {}",
                    payload
                        .get(..2)
                        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]))
                )),
                OpCode::Text | OpCode::Binary if self.fragments.is_some() => {
                    Err("new message inside a fragmented one".into())
                }
                OpCode::Text | OpCode::Binary => {
                    let compressed = h.rsv == RSV1;
                    if h.rsv != 0 && !(compressed && self.agreed.is_some()) {
                        Err(format!(
                            "RSV bits {:03b} on a frame of a session that {}",
                            h.rsv,
                            if self.agreed.is_some() {
                                "agreed permessage-deflate (only RSV1 is allowed)"
                            } else {
                                "agreed no extension"
                            }
                        ))
                    } else if h.opcode != OpCode::Text {
                        Err(format!("{:?} echo of a text message", h.opcode))
                    } else if h.fin {
                        self.fragment_wire = frame_len;
                        Ok(Some(compressed))
                    } else {
                        self.fragments = Some((compressed, payload.to_vec()));
                        self.fragment_wire = frame_len;
                        Ok(None)
                    }
                }
                OpCode::Continuation => match &mut self.fragments {
                    None => Err("continuation frame outside a message".into()),
                    Some(_) if h.rsv != 0 => Err("RSV bits on a continuation frame".into()),
                    Some((_, buf)) => {
                        buf.extend_from_slice(payload);
                        self.fragment_wire += frame_len;
                        Ok(h.fin.then_some(false))
                    }
                },
                other => Err(format!("unexpected opcode {other:?}")),
            };
            // Some(compressed): a whole message, in `payload` (unfragmented) or in `fragments`.
            let compressed = match step {
                Err(e) => break Err(e),
                Ok(None) => continue,
                Ok(Some(c)) => c,
            };
            let (compressed, body) = match self.fragments.take() {
                Some((c, buf)) => (c, std::borrow::Cow::Owned(buf)),
                None => (compressed, std::borrow::Cow::Borrowed(payload)),
            };
            if *verified >= issued {
                break Err(format!("an echo more than the {issued} messages sent"));
            }
            let k = *verified;
            let expected = &ring.payloads[((start as u64 + k) % ring.len() as u64) as usize];
            let got: &[u8] = if compressed {
                let a = self.agreed.expect("RSV1 checked above");
                let r = inflate(
                    &mut self.inflater,
                    &body,
                    &mut self.inflated,
                    expected.len(),
                );
                if a.server_no_context_takeover || r.is_err() {
                    self.inflater.reset(false);
                }
                if let Err(e) = r {
                    break Err(format!("echo of message {k} (compressed): {e}"));
                }
                &self.inflated
            } else {
                &body
            };
            if let Err(e) = compare(got, expected) {
                let how = if compressed { " (inflated)" } else { "" };
                break Err(format!("echo of message {k}{how} {e}"));
            }
            *verified += 1;
            wire_bytes += self.fragment_wire as u64;
            self.fragment_wire = 0;
        };
        self.input.drain(..pos);
        result.map(|()| wire_bytes)
    }
}

/// `Ok` if `got` is `expected`; else where they differ.
fn compare(got: &[u8], expected: &[u8]) -> Result<(), String> {
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        return Err(format!(
            "wrong at payload byte {i}: 0x{:02x}, expected 0x{:02x}",
            got[i], expected[i]
        ));
    }
    if got.len() != expected.len() {
        return Err(format!(
            "has {} bytes, {} were sent",
            got.len(),
            expected.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Agreed {
        parse_answer(Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ))
        .unwrap()
        .unwrap()
    }

    fn dedicated() -> Agreed {
        parse_answer(Some("permessage-deflate; client_max_window_bits=15"))
            .unwrap()
            .unwrap()
    }

    /// The server's echo of `payload`: an unmasked text frame, compressed with `c` (reset after
    /// unless `keep`) or plain.
    fn server_frame(c: Option<(&mut Compress, bool)>, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        match c {
            Some((c, keep)) => {
                let mut body = Vec::new();
                compress(c, payload, &mut body);
                if !keep {
                    c.reset();
                }
                wire::push_frame_rsv(&mut f, DataKind::Text, RSV1, &body, None);
            }
            None => wire::push_frame(&mut f, DataKind::Text, payload, None),
        }
        f
    }

    fn fresh(bits: u8) -> Compress {
        Compress::new_with_window_bits(Compression::new(6), false, bits)
    }

    #[test]
    fn rings_outlast_the_window() {
        for size in [1, 64, 256, 1024, 16384, 1 << 20] {
            assert!(ring_messages(1, size) * size >= 4 * 32768, "{size}");
        }
        assert_eq!(ring_messages(1, 16384), 8);
        assert_eq!(ring_messages(100, 16384), 100);
    }

    #[test]
    fn answers_are_read_or_refused() {
        assert_eq!(parse_answer(None), Ok(None));
        let a = shared();
        assert!(a.server_no_context_takeover && a.client_no_context_takeover);
        let a = parse_answer(Some(
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=\"10\"",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.server_max_window_bits, a.client_max_window_bits),
            (12, 10)
        );
        assert!(!a.server_no_context_takeover && !a.client_no_context_takeover);
        assert_eq!(
            a.describe(),
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10"
        );
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; foo",
        ] {
            assert!(parse_answer(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_messages_are_sized_distinct_and_compressible() {
        for size in [64, 1024, 16384] {
            let m = json_messages(size, 8);
            assert!(m.iter().all(|p| p.len() == size && p.is_ascii()));
            assert_ne!(m[0], m[1]);
            let mut body = Vec::new();
            compress(&mut fresh(15), &m[3], &mut body);
            let ratio = size as f64 / body.len() as f64;
            if size >= 1024 {
                assert!((2.0..8.0).contains(&ratio), "{size} B: ratio {ratio:.2}");
            }
        }
        assert!(json_messages(200, 1)[0].starts_with(b"[{\"id\":"));
    }

    #[test]
    fn sent_frames_inflate_to_the_message_with_and_without_context() {
        let ring = TextRing::new(1024, 4);
        for agreed in [shared(), dedicated()] {
            let mut codec = Codec::new(Some(agreed));
            let mut d = Decompress::new_with_window_bits(false, 15);
            let mut out = Vec::new();
            for k in [0, 1, 2, 1] {
                let mut frame = Vec::new();
                codec.push_message(&ring, k, &mut frame);
                let (h, head) = FrameHeader::decode(&frame).unwrap().unwrap();
                assert_eq!((h.rsv, h.opcode, h.fin), (RSV1, OpCode::Text, true));
                let mut body = frame[head..].to_vec();
                hioload_wsproto::mask::apply_mask(&mut body, h.mask.unwrap(), 0);
                inflate(&mut d, &body, &mut out, 1 << 20).unwrap();
                assert_eq!(out, ring.payloads[k], "{agreed:?}, message {k}");
                if agreed.client_no_context_takeover {
                    d.reset(false);
                }
            }
        }
        // Declined: plain text frames.
        let mut frame = Vec::new();
        Codec::new(None).push_message(&ring, 2, &mut frame);
        let (h, head) = FrameHeader::decode(&frame).unwrap().unwrap();
        assert_eq!(h.rsv, 0);
        assert_eq!(frame.len() - head, 1024);
    }

    #[test]
    fn echoes_are_inflated_and_verified_in_pieces() {
        let ring = TextRing::new(1024, 4);
        // Dedicated: the server keeps its context; a connection starting at message 2.
        let mut server = fresh(15);
        let mut stream = Vec::new();
        for k in [2, 3, 0] {
            stream.extend(server_frame(Some((&mut server, true)), &ring.payloads[k]));
        }
        let mut codec = Codec::new(Some(dedicated()));
        let mut verified = 0;
        let mut wire_bytes = 0;
        for piece in stream.chunks(7) {
            wire_bytes += codec.receive(&ring, 2, 3, &mut verified, piece).unwrap();
        }
        assert_eq!((verified, wire_bytes), (3, stream.len() as u64));
        // The third echo leans on the window of the first two: a client that reset its
        // inflater after each message (as if no context takeover) fails on it.
        let mut codec = Codec::new(Some(shared()));
        let mut verified = 0;
        let e = codec
            .receive(&ring, 2, 3, &mut verified, &stream)
            .unwrap_err();
        assert!(verified < 3, "{e}");
        assert!(
            e.contains("(compressed)") || e.contains("(inflated)"),
            "{e}"
        );
    }

    #[test]
    fn a_corrupted_inflated_echo_is_an_error() {
        let ring = TextRing::new(1024, 4);
        let mut wrong = ring.payloads[1].clone();
        wrong[700] = b'#';
        let frame = server_frame(Some((&mut fresh(15), false)), &wrong);
        let mut verified = 0;
        let e = Codec::new(Some(shared()))
            .receive(&ring, 1, 1, &mut verified, &frame)
            .unwrap_err();
        assert_eq!(
            e,
            format!(
                "echo of message 0 (inflated) wrong at payload byte 700: 0x23, expected 0x{:02x}",
                ring.payloads[1][700]
            )
        );
        assert_eq!(verified, 0);
        // One more byte than was sent.
        wrong = ring.payloads[1].clone();
        wrong.push(b' ');
        let frame = server_frame(Some((&mut fresh(15), false)), &wrong);
        let e = Codec::new(Some(shared()))
            .receive(&ring, 1, 1, &mut 0, &frame)
            .unwrap_err();
        assert!(
            e.contains("inflates to more than the 1024 bytes sent"),
            "{e}"
        );
        // Damaged compressed bytes.
        let mut frame = server_frame(Some((&mut fresh(15), false)), &ring.payloads[1]);
        let n = frame.len();
        frame[n / 2] ^= 0x55;
        frame[n / 2 + 1] ^= 0xff;
        let e = Codec::new(Some(shared()))
            .receive(&ring, 1, 1, &mut 0, &frame)
            .unwrap_err();
        assert!(e.starts_with("echo of message 0"), "{e}");
        // A plain echo with a wrong byte, and an uncompressed echo in a deflate session (allowed).
        let ok = server_frame(None, &ring.payloads[1]);
        assert_eq!(
            Codec::new(Some(shared())).receive(&ring, 1, 1, &mut 0, &ok),
            Ok(ok.len() as u64)
        );
        let mut bad = ok.clone();
        bad[4 + 10] ^= 1;
        let e = Codec::new(None)
            .receive(&ring, 1, 1, &mut 0, &bad)
            .unwrap_err();
        assert!(e.contains("message 0 wrong at payload byte 10"), "{e}");
    }

    #[test]
    fn protocol_violations_are_errors() {
        let ring = TextRing::new(100, 2);
        let compressed = server_frame(Some((&mut fresh(15), false)), &ring.payloads[0]);
        // RSV1 without the extension.
        let e = Codec::new(None)
            .receive(&ring, 0, 1, &mut 0, &compressed)
            .unwrap_err();
        assert!(e.contains("agreed no extension"), "{e}");
        // An echo of a message that was not sent.
        let e = Codec::new(Some(shared()))
            .receive(&ring, 0, 0, &mut 0, &compressed)
            .unwrap_err();
        assert!(e.contains("more than the 0 messages sent"), "{e}");
        // Fragmented compressed echo: RSV1 on the first frame only, then reassembled.
        let mut body = Vec::new();
        compress(&mut fresh(15), &ring.payloads[0], &mut body);
        let mut frag = Vec::new();
        let (a, b) = body.split_at(body.len() / 2);
        let mut first = Vec::new();
        wire::push_frame_rsv(&mut first, DataKind::Text, RSV1, a, None);
        first[0] &= 0x7f; // not FIN
        frag.extend(first);
        let mut cont = Vec::new();
        wire::push_frame(&mut cont, DataKind::Text, b, None);
        cont[0] = 0x80; // FIN, continuation
        frag.extend(&cont);
        let mut verified = 0;
        assert_eq!(
            Codec::new(Some(shared())).receive(&ring, 0, 1, &mut verified, &frag),
            Ok(frag.len() as u64)
        );
        assert_eq!(verified, 1);
    }
}
