//! Fuzz targets for hioload-wsproto, each with an oracle stronger than "does not panic":
//!
//! * [`session`]: the same bytes fed whole and in small pieces must give the same events, the
//!   same bytes out and the same error, in both roles; every frame sent is well formed; the
//!   retained tail never exceeds `inplace_frame_max`.
//! * [`handshake`]: any outcome is consistent (an upgrade has a valid key and answers a 101 that
//!   parses as HTTP; a rejection answers an error that parses as HTTP), and re-parsing exactly the
//!   head gives the same outcome.
//! * [`frame_header`]: decode → encode → decode is stable, and unmasking in pieces equals
//!   unmasking whole.
//!
//! The targets build as libFuzzer targets (feature `libfuzzer`) or as plain binaries driven by
//! [`standalone`], which needs nothing but a stable toolchain.

use hioload_wsproto::deflate::{negotiate, DeflateConfig, DeflateMode};
use hioload_wsproto::frame::{encode_client_frame, FrameHeader, MAX_HEADER_LEN};
use hioload_wsproto::handshake::{parse_request, respond, write_error_response, Parsed, UpgradePolicy};
use hioload_wsproto::mask::apply_mask;
use hioload_wsproto::{Event, Limits, OpCode, ProtocolError, Session, State};

pub mod seeds;
pub mod standalone;

/// An owned event, comparable across runs.
#[derive(Debug, PartialEq, Eq)]
enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Ev>,
    out: Vec<u8>,
    error: Option<ProtocolError>,
    state: State,
}

/// Feeds `data` in pieces (sizes cycled) through a session, the way a transport does.
fn drive(client_role: bool, deflate: Option<&DeflateConfig>, limits: &Limits, data: &[u8], pieces: &[usize]) -> Outcome {
    let mut session =
        if client_role { Session::new_client(limits.clone(), 1) } else { Session::new(limits.clone()) };
    if let Some(cfg) = deflate {
        let agreed = negotiate(Some("permessage-deflate"), cfg, |_| {}).expect("accepted");
        session.enable_deflate(agreed, cfg);
    }
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut error = None;
    let retain_max = limits.inplace_frame_max.max(hioload_wsproto::session::MAX_CONTROL_FRAME);
    let (mut at, mut i) = (0, 0);
    while at < data.len() {
        let n = pieces[i % pieces.len()].max(1).min(data.len() - at);
        buf.extend_from_slice(&data[at..at + n]);
        at += n;
        i += 1;
        let result = session.receive(&mut buf, &mut out, |ev, tx| {
            let _ = match ev {
                Event::Text(t) => tx.send_text(t),
                Event::Binary(b) => tx.send_binary(b),
                _ => Ok(()),
            };
            events.push(match ev {
                Event::Text(t) => Ev::Text(t.into()),
                Event::Binary(b) => Ev::Binary(b.into()),
                Event::Ping(b) => Ev::Ping(b.into()),
                Event::Pong(b) => Ev::Pong(b.into()),
                Event::Close(c, r) => Ev::Close(c.map(|c| c.0), r.into()),
            });
        });
        match result {
            Ok(consumed) => {
                assert!(consumed <= buf.len());
                buf.drain(..consumed);
                assert!(buf.len() <= retain_max, "retained {} > {retain_max}", buf.len());
            }
            Err(e) => {
                assert_eq!(session.state(), State::Closed);
                error = Some(e);
                break;
            }
        }
    }
    check_sent_frames(&out, client_role, deflate.is_some());
    Outcome { events, out, error, state: session.state() }
}

/// Everything a session sends is a sequence of whole, valid frames of its role; RSV1 only with
/// permessage-deflate, only on whole data messages.
fn check_sent_frames(mut out: &[u8], client_role: bool, deflate: bool) {
    let mut closed = false;
    while !out.is_empty() {
        let (h, n) = FrameHeader::decode(out).expect("valid length").expect("whole header");
        assert_eq!(h.mask.is_some(), client_role);
        if deflate && h.rsv != 0 {
            assert_eq!(h.rsv, 0b100);
            assert!(h.fin && matches!(h.opcode, OpCode::Text | OpCode::Binary));
        } else {
            assert_eq!(h.rsv, 0);
        }
        assert!(!closed, "nothing is sent after a Close");
        if h.opcode.is_control() {
            assert!(h.fin && h.payload_len <= 125);
        }
        if h.opcode == OpCode::Close {
            assert!(h.payload_len != 1);
            closed = true;
        }
        out = &out[n + h.payload_len as usize..];
    }
}

/// Session target. Byte 0 picks limits and piece sizes; the rest is the received stream.
pub fn session(data: &[u8]) {
    let Some((&ctl, stream)) = data.split_first() else { return };
    let limits = Limits {
        inplace_frame_max: [0, 256, 1024, 16 << 10][usize::from(ctl & 3)],
        max_frame_size: if ctl & 4 != 0 { 300 } else { 1 << 20 },
        max_message_size: if ctl & 8 != 0 { 500 } else { 1 << 20 },
        ..Limits::default()
    };
    let pieces = [1 + usize::from(ctl >> 4), 1, 13, 700];
    for client_role in [false, true] {
        let whole = drive(client_role, None, &limits, stream, &[stream.len().max(1)]);
        let split = drive(client_role, None, &limits, stream, &pieces);
        assert_eq!(whole, split, "whole vs split (role client={client_role})");
    }
    // A server session with permessage-deflate, shared and dedicated (context kept both ways):
    // RSV1 messages are inflated within the limit, whole or split alike.
    for cfg in [
        DeflateConfig { mode: DeflateMode::Shared, threshold: 16, ..DeflateConfig::default() },
        DeflateConfig { mode: DeflateMode::Dedicated { window_bits: 9 }, threshold: 16, ..DeflateConfig::default() },
    ] {
        let whole = drive(false, Some(&cfg), &limits, stream, &[stream.len().max(1)]);
        let split = drive(false, Some(&cfg), &limits, stream, &pieces);
        assert_eq!(whole, split, "whole vs split (deflate {})", cfg.mode);
    }
}

struct Policy;
impl UpgradePolicy for Policy {
    fn select_protocol<'r>(&self, offered: &mut dyn Iterator<Item = &'r str>) -> Option<&'r str> {
        offered.last()
    }
    fn check_origin(&self, origin: Option<&str>) -> bool {
        origin != Some("null")
    }
}

fn parses_as_response(bytes: &[u8], status: u16) {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => assert_eq!(resp.code, Some(status)),
        other => panic!("response does not parse: {other:?}: {:?}", String::from_utf8_lossy(bytes)),
    }
}

/// Handshake target: `data` is the received request bytes.
pub fn handshake(data: &[u8]) {
    let limits = Limits { max_head_bytes: 2048, max_headers: 16, ..Limits::default() };
    let outcome = parse_request(data, &limits);
    match &outcome {
        Parsed::Partial => assert!(data.len() <= limits.max_head_bytes),
        Parsed::Upgrade(req) => {
            assert!(req.head_len <= data.len() && req.head_len <= limits.max_head_bytes);
            assert_eq!(req.key.len(), 24);
            // Any offer is answered or declined, never more: an answer names the extension.
            for mode in [DeflateMode::Shared, DeflateMode::Dedicated { window_bits: 11 }] {
                let cfg = DeflateConfig { mode, ..DeflateConfig::default() };
                if let Some(agreed) = negotiate(req.extensions, &cfg, |_| {}) {
                    let mut buf = [0u8; 128];
                    let answer = hioload_wsproto::deflate::answer(&agreed, &mut buf);
                    assert!(answer.starts_with("permessage-deflate"), "{answer}");
                    assert!((8..=15).contains(&agreed.server_window_bits));
                }
            }
            let mut out = [0u8; 4096];
            let (n, accepted) = respond(req, &Policy, &mut out);
            match accepted {
                Ok(()) => parses_as_response(&out[..n], 101),
                Err(e) => parses_as_response(&out[..n], e.status),
            }
            assert!(matches!(parse_request(&data[..req.head_len], &limits), Parsed::Upgrade(_)));
        }
        Parsed::Http(req) => {
            assert!(req.head_len <= data.len());
            assert!(matches!(parse_request(&data[..req.head_len], &limits), Parsed::Http(_)));
        }
        Parsed::Reject(err) => {
            let mut out = [0u8; 256];
            let n = write_error_response(err, &mut out);
            parses_as_response(&out[..n], err.status);
        }
    }
}

/// Frame header target: decode, re-encode, decode again; unmask the rest whole and in pieces.
pub fn frame_header(data: &[u8]) {
    let Ok(Some((h, n))) = FrameHeader::decode(data) else { return };
    let mut buf = [0u8; MAX_HEADER_LEN];
    let m = h.encode(&mut buf);
    assert!(m <= n, "shortest form is never longer than what was read");
    assert_eq!(FrameHeader::decode(&buf[..m]), Ok(Some((h, m))));
    let key = h.mask.unwrap_or([0xA5, 0x5A, 0x0F, 0xF0]);
    let payload = &data[n..];
    let mut whole = payload.to_vec();
    apply_mask(&mut whole, key, 0);
    let mut pieces = payload.to_vec();
    let mut phase = 0;
    let mut at = 0;
    let mut step = usize::from(data[0] & 0x1F) + 1;
    while at < pieces.len() {
        let end = (at + step).min(pieces.len());
        phase = apply_mask(&mut pieces[at..end], key, phase);
        at = end;
        step = step * 3 % 67 + 1;
    }
    assert_eq!(whole, pieces);
    // Round trip through a client frame.
    let mut frame = Vec::new();
    encode_client_frame(OpCode::Binary, true, payload, key, &mut frame);
    let (h2, n2) = FrameHeader::decode(&frame).unwrap().unwrap();
    assert_eq!(h2.payload_len as usize, payload.len());
    apply_mask(&mut frame[n2..], key, 0);
    assert_eq!(&frame[n2..], payload);
}
