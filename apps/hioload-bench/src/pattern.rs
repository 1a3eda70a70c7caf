//! The bytes every connection sends and the bytes it must get back, built once before the run.
//!
//! A ring of `R` distinct messages (pseudo-random payloads, or ASCII for text frames) is encoded
//! twice: as the masked client frames to send and as the exact echo the server must return. Each
//! connection walks the ring from its own starting message, so neighbouring connections carry
//! different bytes and a reordered, duplicated, dropped or corrupted echo is caught by a plain
//! byte comparison. The send ring is stored twice over, so any window of up to `R` frames starting
//! anywhere in it is one contiguous slice: `P` pipelined frames leave in one `write`, and masking
//! costs nothing per message.

use crate::wire::{self, DataKind};

/// What goes on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// WebSocket frames after an HTTP upgrade; the echo is an unmasked server frame.
    WebSocket(DataKind),
    /// The same client bytes over plain TCP, echoed as they are (the raw TCP echo peer).
    Raw,
}

/// The fixed client mask key. RFC 6455 wants masks unpredictable to defeat proxy-cache poisoning;
/// a load generator talking to its own server needs only that frames are masked.
pub const MASK_KEY: [u8; 4] = [0x5a, 0xc3, 0x1e, 0x97];

/// The client's close frame (masked, code 1000): 0x88 FIN + close, 0x82 masked with 2 bytes of
/// payload, the key, then 1000 = 0x03e8 masked.
pub const CLOSE_FRAME: [u8; 8] = [
    0x88,
    0x82,
    MASK_KEY[0],
    MASK_KEY[1],
    MASK_KEY[2],
    MASK_KEY[3],
    0x03 ^ MASK_KEY[0],
    0xe8 ^ MASK_KEY[1],
];

/// Send and expected-echo rings.
pub struct Pattern {
    pub framing: Framing,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages in the ring.
    pub messages: usize,
    /// Bytes of one sent frame.
    pub send_len: usize,
    /// Bytes of one expected echo.
    pub echo_len: usize,
    /// `2 * messages` sent frames back to back.
    pub send: Vec<u8>,
    /// `messages` expected echoes back to back.
    pub echo: Vec<u8>,
}

impl Pattern {
    /// Builds rings of `messages` messages of `size` payload bytes.
    pub fn new(framing: Framing, size: usize, messages: usize) -> Pattern {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut send = Vec::new();
        let mut echo = Vec::new();
        let mut payload = vec![0u8; size];
        for _ in 0..messages {
            let text = framing == Framing::WebSocket(DataKind::Text);
            for b in payload.iter_mut() {
                let r = rng.next() as u8;
                *b = if text { b'a' + r % 26 } else { r };
            }
            let kind = match framing {
                Framing::WebSocket(kind) => kind,
                Framing::Raw => DataKind::Binary,
            };
            wire::push_frame(&mut send, kind, &payload, Some(MASK_KEY));
            match framing {
                Framing::WebSocket(_) => wire::push_frame(&mut echo, kind, &payload, None),
                Framing::Raw => wire::push_frame(&mut echo, kind, &payload, Some(MASK_KEY)),
            }
        }
        let send_len = send.len() / messages;
        let echo_len = echo.len() / messages;
        send.extend_from_within(..);
        Pattern {
            framing,
            size,
            messages,
            send_len,
            echo_len,
            send,
            echo,
        }
    }

    /// Checks `data`, the next bytes a connection received, against the echoes it still awaits:
    /// the connection starts at ring message `start`, has issued `issued` messages and had
    /// `*received` bytes verified so far (advanced here by the bytes that matched). The error
    /// says which message and byte was wrong, or that more came back than was sent.
    pub fn verify(
        &self,
        start: usize,
        issued: u64,
        received: &mut u64,
        data: &[u8],
    ) -> Result<(), String> {
        let expected_total = issued * self.echo_len as u64;
        let excess = (*received + data.len() as u64).saturating_sub(expected_total);
        self.verify_expected(start, received, &data[..data.len() - excess as usize])?;
        if excess > 0 {
            return Err(format!(
                "{excess} bytes more than the echoes of the {issued} messages sent"
            ));
        }
        Ok(())
    }

    /// Compares bytes that are all within the echoes still expected.
    fn verify_expected(
        &self,
        start: usize,
        received: &mut u64,
        mut data: &[u8],
    ) -> Result<(), String> {
        let echo_len = self.echo_len as u64;
        let ring = self.echo.len() as u64;
        while !data.is_empty() {
            let pos = ((start as u64 * echo_len) + *received) % ring;
            let take = data.len().min((ring - pos) as usize);
            let expected = &self.echo[pos as usize..pos as usize + take];
            if expected != &data[..take] {
                let at = expected
                    .iter()
                    .zip(data)
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                let stream_offset = *received + at as u64;
                let message = stream_offset / echo_len;
                let offset = (stream_offset % echo_len) as usize;
                let header = match self.framing {
                    Framing::WebSocket(_) => wire::header_len(self.size, false),
                    Framing::Raw => 0,
                };
                let what = if offset < header {
                    let got_start = at - offset.min(at);
                    format!(
                        "header mismatch, got {}",
                        wire::describe_header(&data[got_start..take.min(got_start + 14)])
                    )
                } else {
                    format!(
                        "payload byte {} is 0x{:02x}, expected 0x{:02x}",
                        offset - header,
                        data[at],
                        expected[at]
                    )
                };
                return Err(format!(
                    "echo of message {message} wrong at byte {offset}: {what}"
                ));
            }
            *received += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    /// Ring size for `pipeline` messages in flight: at least that many, and enough distinct
    /// messages to catch a reordered echo, without making large rings for large messages.
    pub fn ring_messages(pipeline: usize, size: usize) -> usize {
        let wanted = if size <= 4096 { 64 } else { 8 };
        wanted.max(pipeline)
    }
}

/// xorshift64: deterministic payload bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_have_distinct_messages_and_doubled_send() {
        let p = Pattern::new(Framing::WebSocket(DataKind::Binary), 20, 8);
        assert_eq!(p.send_len, 2 + 4 + 20);
        assert_eq!(p.echo_len, 2 + 20);
        assert_eq!(p.send.len(), 2 * 8 * p.send_len);
        assert_eq!(&p.send[..8 * p.send_len], &p.send[8 * p.send_len..]);
        assert_ne!(&p.echo[..22], &p.echo[22..44]);
        // Unmasking a sent frame gives the expected echo's payload.
        let unmasked: Vec<u8> = p.send[6..26]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK_KEY[i % 4])
            .collect();
        assert_eq!(unmasked, &p.echo[2..22]);
    }

    #[test]
    fn verify_catches_a_wrong_byte_and_excess() {
        let p = Pattern::new(Framing::WebSocket(DataKind::Binary), 20, 8);
        // Connection starting at message 3, two messages issued: their echoes pass in pieces.
        let echoes = &p.echo[3 * p.echo_len..5 * p.echo_len];
        let mut received = 0;
        p.verify(3, 2, &mut received, &echoes[..7]).unwrap();
        p.verify(3, 2, &mut received, &echoes[7..]).unwrap();
        assert_eq!(received, 2 * p.echo_len as u64);
        // One flipped payload byte of the second message.
        let mut bad = echoes.to_vec();
        bad[p.echo_len + 2 + 5] ^= 1;
        let mut received = 0;
        let e = p.verify(3, 2, &mut received, &bad).unwrap_err();
        assert!(
            e.contains("message 1 wrong at byte 7") && e.contains("payload byte 5"),
            "{e}"
        );
        // More than was sent.
        let mut received = 0;
        let e = p.verify(3, 1, &mut received, echoes).unwrap_err();
        assert!(
            e.contains("22 bytes more than the echoes of the 1 messages"),
            "{e}"
        );
        // The close frame is a masked close with code 1000.
        let unmasked = [CLOSE_FRAME[6] ^ MASK_KEY[0], CLOSE_FRAME[7] ^ MASK_KEY[1]];
        assert_eq!(u16::from_be_bytes(unmasked), 1000);
    }

    #[test]
    fn raw_echo_is_the_sent_bytes() {
        let p = Pattern::new(Framing::Raw, 1024, 4);
        assert_eq!(p.send_len, p.echo_len);
        assert_eq!(&p.send[..4 * p.send_len], &p.echo[..]);
    }

    #[test]
    fn text_payload_is_ascii() {
        let p = Pattern::new(Framing::WebSocket(DataKind::Text), 100, 2);
        assert!(p.echo[2..102].iter().all(|b| b.is_ascii_lowercase()));
        assert_eq!(p.echo[0], 0x81);
    }
}
