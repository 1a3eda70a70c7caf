//! The client's side of RFC 6455 framing, on top of `hioload-wsproto`: a masked client frame, the
//! server frame an echo of it must be, and the `Sec-WebSocket-Accept` value an upgrade must carry.
//!
//! All of this runs once, when the message rings are built or a connection is upgraded; the
//! measured loop only compares bytes.

use hioload_wsproto::frame::{FrameHeader, MAX_HEADER_LEN};
use hioload_wsproto::mask::apply_mask;
use hioload_wsproto::OpCode;

/// Binary or text data frames.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DataKind {
    Binary,
    Text,
}

impl DataKind {
    fn opcode(self) -> OpCode {
        match self {
            DataKind::Binary => OpCode::Binary,
            DataKind::Text => OpCode::Text,
        }
    }
}

/// Appends one unfragmented frame carrying `payload` to `out`: masked with `mask` (client frame)
/// or unmasked (server frame) when `mask` is `None`.
pub fn push_frame(out: &mut Vec<u8>, kind: DataKind, payload: &[u8], mask: Option<[u8; 4]>) {
    push_frame_rsv(out, kind, 0, payload, mask);
}

/// [`push_frame`] with the RSV bits `rsv` (RSV1 = 0b100: a compressed message, RFC 7692).
pub fn push_frame_rsv(
    out: &mut Vec<u8>,
    kind: DataKind,
    rsv: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let header = FrameHeader {
        fin: true,
        rsv,
        opcode: kind.opcode(),
        mask,
        payload_len: payload.len() as u64,
    };
    let mut encoded = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut encoded);
    out.extend_from_slice(&encoded[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
}

/// Length of the header `push_frame` writes for a payload of `len` bytes.
pub fn header_len(len: usize, masked: bool) -> usize {
    let header = FrameHeader {
        fin: true,
        rsv: 0,
        opcode: OpCode::Binary,
        mask: masked.then_some([0; 4]),
        payload_len: len as u64,
    };
    header.encode(&mut [0u8; MAX_HEADER_LEN])
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key ++ GUID)).
pub fn accept_key(key: &str) -> String {
    let accept = hioload_wsproto::handshake::accept_key(key);
    String::from_utf8_lossy(&accept).into_owned()
}

/// A readable description of the frame header at the start of `bytes`, for error messages.
pub fn describe_header(bytes: &[u8]) -> String {
    match FrameHeader::decode(bytes) {
        Ok(Some((h, _))) => format!(
            "frame fin={} rsv={} opcode={:?} masked={} length={}",
            h.fin,
            h.rsv,
            h.opcode,
            h.mask.is_some(),
            h.payload_len
        ),
        Ok(None) => format!("incomplete frame header {:02x?}", bytes),
        Err(e) => format!("invalid frame header ({e:?}) {:02x?}", bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6455_examples() {
        // RFC 6455 §5.7: a masked "Hello" and the unmasked one.
        let mut out = Vec::new();
        push_frame(
            &mut out,
            DataKind::Text,
            b"Hello",
            Some([0x37, 0xfa, 0x21, 0x3d]),
        );
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        out.clear();
        push_frame(&mut out, DataKind::Text, b"Hello", None);
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // 256 bytes: 16-bit length; 65536 bytes: 64-bit length.
        out.clear();
        push_frame(&mut out, DataKind::Binary, &[0u8; 256], None);
        assert_eq!(&out[..4], &[0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(out.len(), header_len(256, false) + 256);
        out.clear();
        push_frame(
            &mut out,
            DataKind::Binary,
            &vec![0u8; 65536],
            Some([1, 2, 3, 4]),
        );
        assert_eq!(&out[..10], &[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(out.len(), header_len(65536, true) + 65536);
    }

    #[test]
    fn accept_key_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn headers_are_described() {
        assert_eq!(
            describe_header(&[0x81, 0x05]),
            "frame fin=true rsv=0 opcode=Text masked=false length=5"
        );
        assert!(describe_header(&[0x81]).starts_with("incomplete"));
    }
}
