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
    /// Decodes a header from the start of `buf`. `Ok(None)` means more bytes are needed;
    /// `Ok(Some((header, header_len)))` gives the header and how many bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
        let _ = buf;
        todo!("ws: FrameHeader::decode")
    }

    /// Encodes this header into `out` and returns its length (2..=14).
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        let _ = out;
        todo!("ws: FrameHeader::encode")
    }
}
