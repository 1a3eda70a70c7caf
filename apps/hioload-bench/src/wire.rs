//! The few pieces of RFC 6455 a client needs: a masked client frame, the server frame an echo
//! of it must be, and the `Sec-WebSocket-Accept` value to check the upgrade against.
//!
//! All of this runs once, when the message rings are built or a connection is upgraded; the
//! measured loop only compares bytes.

/// Binary or text data frames.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DataKind {
    Binary,
    Text,
}

impl DataKind {
    fn opcode(self) -> u8 {
        match self {
            DataKind::Binary => 0x2,
            DataKind::Text => 0x1,
        }
    }
}

/// Appends one unfragmented frame carrying `payload` to `out`: masked with `mask` (client frame)
/// or unmasked (server frame) when `mask` is `None`.
pub fn push_frame(out: &mut Vec<u8>, kind: DataKind, payload: &[u8], mask: Option<[u8; 4]>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | kind.opcode());
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// Length of the header `push_frame` writes for a payload of `len` bytes.
pub fn header_len(len: usize, masked: bool) -> usize {
    let base = match len {
        n if n < 126 => 2,
        n if n <= 0xFFFF => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 }
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key ++ GUID)).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A readable description of the frame header at the start of `bytes`, for error messages.
pub fn describe_header(bytes: &[u8]) -> String {
    if bytes.len() < 2 {
        return format!("{} header byte(s) {:02x?}", bytes.len(), bytes);
    }
    let (b0, b1) = (bytes[0], bytes[1]);
    format!("frame fin={} rsv={} opcode=0x{:x} masked={} len7={}", b0 >> 7, (b0 >> 4) & 7, b0 & 0xF, b1 >> 7, b1 & 0x7F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_examples() {
        // RFC 6455 §5.7: a masked "Hello" and the unmasked one.
        let mut out = Vec::new();
        push_frame(&mut out, DataKind::Text, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(out, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        out.clear();
        push_frame(&mut out, DataKind::Text, b"Hello", None);
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // 256 bytes: 16-bit length; 65536 bytes: 64-bit length.
        out.clear();
        push_frame(&mut out, DataKind::Binary, &[0u8; 256], None);
        assert_eq!(&out[..4], &[0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(out.len(), header_len(256, false) + 256);
        out.clear();
        push_frame(&mut out, DataKind::Binary, &vec![0u8; 65536], Some([1, 2, 3, 4]));
        assert_eq!(&out[..10], &[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(out.len(), header_len(65536, true) + 65536);
    }

    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
