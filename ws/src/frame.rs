//! Frame headers (RFC 6455 §5.2): decoded in place from the receive buffer, encoded for servers
//! (unmasked) and clients (masked) into a 14-byte stack buffer, so that a transport can send header
//! and payload together with one vectored write and no copy of the payload.

/// Frame opcode (4 bits).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: continuation of a fragmented message.
    Continuation,
    /// 0x1: text (UTF-8) data.
    Text,
    /// 0x2: binary data.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
    /// Any other value: reserved, a protocol error (1002) when received.
    Reserved(u8),
}

impl OpCode {
    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
            OpCode::Reserved(b) => b & 0x0F,
        }
    }
    /// Opcode from its 4-bit wire value.
    pub fn from_bits(bits: u8) -> OpCode {
        match bits & 0x0F {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            b => OpCode::Reserved(b),
        }
    }
    /// Control opcodes are 0x8–0xF.
    pub fn is_control(self) -> bool {
        self.bits() & 0x08 != 0
    }
}

/// Largest encoded header: 2 + 8 (64-bit length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// A decoded frame header.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN bit: last frame of a message.
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100).
    pub rsv: u8,
    /// Opcode.
    pub opcode: OpCode,
    /// Masking key, present on every client frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// Why a header could not be decoded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// A 64-bit length with its most significant bit set (RFC 6455 §5.2).
    LengthTopBitSet,
}

impl FrameHeader {
    /// A header for a final, unmasked (server) frame of `payload_len` bytes.
    pub fn server(opcode: OpCode, fin: bool, payload_len: usize) -> Self {
        FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: payload_len as u64,
        }
    }

    /// Decodes a header from the start of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((header, header_len)))` gives the header and how many bytes it took.
    #[inline]
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7F;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        if buf.len() < header_len {
            return Ok(None);
        }
        let payload_len = match len7 {
            126 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(HeaderError::LengthTopBitSet);
                }
                len
            }
            n => n as u64,
        };
        let mask = if masked {
            let at = 2 + ext;
            Some([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
        } else {
            None
        };
        let header = FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x07,
            opcode: OpCode::from_bits(b0),
            mask,
            payload_len,
        };
        Ok(Some((header, header_len)))
    }

    /// Encodes this header into `out` and returns its length (2..=14). Lengths use the shortest
    /// form, as RFC 6455 §5.2 requires.
    #[inline]
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7) | ((self.rsv & 0x07) << 4) | self.opcode.bits();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload_len;
        let mut at = if len < 126 {
            out[1] = mask_bit | len as u8;
            2
        } else if len <= u16::MAX as u64 {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&len.to_be_bytes());
            10
        };
        if let Some(key) = self.mask {
            out[at..at + 4].copy_from_slice(&key);
            at += 4;
        }
        at
    }
}

/// Appends one masked (client) frame to `out`: header, then `payload` masked with `mask_key`.
/// For tests and load generators; servers never mask.
pub fn encode_client_frame(
    opcode: OpCode,
    fin: bool,
    payload: &[u8],
    mask_key: [u8; 4],
    out: &mut Vec<u8>,
) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask: Some(mask_key),
        payload_len: payload.len() as u64,
    };
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    crate::mask::apply_mask(&mut out[start..], mask_key, 0);
}

/// Appends one unmasked (server) frame to `out`.
pub fn encode_server_frame(opcode: OpCode, fin: bool, payload: &[u8], out: &mut Vec<u8>) {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader::server(opcode, fin, payload.len()).encode(&mut head);
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_examples_decode() {
        // RFC 6455 §5.7: single-frame masked text "Hello".
        let masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = FrameHeader::decode(&masked).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Text,
                mask: Some([0x37, 0xfa, 0x21, 0x3d]),
                payload_len: 5
            }
        );
        for cut in 0..6 {
            assert_eq!(FrameHeader::decode(&masked[..cut]), Ok(None), "cut {cut}");
        }
        // 256 bytes binary: 16-bit length; 64 KiB: 64-bit length.
        let (h, n) = FrameHeader::decode(&[0x82, 0x7E, 0x01, 0x00])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n, h.mask), (256, 4, None));
        let (h, n) = FrameHeader::decode(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn length_top_bit_is_rejected() {
        let buf = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(FrameHeader::decode(&buf), Err(HeaderError::LengthTopBitSet));
    }

    #[test]
    fn encode_uses_shortest_length_form() {
        let mut out = [0u8; MAX_HEADER_LEN];
        for (len, expect) in [
            (0u64, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 40, 10),
        ] {
            let h = FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Binary,
                mask: None,
                payload_len: len,
            };
            let n = h.encode(&mut out);
            assert_eq!(n, expect, "len {len}");
            assert_eq!(FrameHeader::decode(&out[..n]), Ok(Some((h, n))));
        }
    }
}
