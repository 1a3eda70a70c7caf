//! RFC 6455 §5.7 example frames, byte for byte, in both directions.

mod common;

use common::*;
use hioload_wsproto::frame::{encode_client_frame, FrameHeader, MAX_HEADER_LEN};
use hioload_wsproto::{Limits, OpCode, Session};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const MASKED_HELLO: [u8; 11] = [
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];
const UNMASKED_HELLO: [u8; 7] = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];

#[test]
fn single_frame_masked_text_hello() {
    let mut encoded = Vec::new();
    encode_client_frame(OpCode::Text, true, b"Hello", KEY, &mut encoded);
    assert_eq!(encoded, MASKED_HELLO);

    let mut d = Driver::server();
    d.feed(&MASKED_HELLO).unwrap();
    assert_eq!(d.events, vec![Ev::Text("Hello".into())]);
    // The echo is the RFC's single-frame unmasked text.
    assert_eq!(d.out, UNMASKED_HELLO);
}

#[test]
fn single_frame_unmasked_text_hello_is_read_by_a_client_and_refused_by_a_server() {
    let mut cli = Session::new_client(Limits::default(), 1);
    let mut input = UNMASKED_HELLO;
    let mut got = Vec::new();
    let mut out = Vec::new();
    let consumed = cli
        .receive(&mut input, &mut out, |ev, _| got.push(Ev::from(&ev)))
        .unwrap();
    assert_eq!((consumed, got), (7, vec![Ev::Text("Hello".into())]));

    let mut d = Driver::server();
    let err = d.feed(&UNMASKED_HELLO).unwrap_err();
    assert_eq!(err.code.0, 1002);
}

#[test]
fn fragmented_unmasked_text_hel_lo() {
    let frames = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let mut cli = Session::new_client(Limits::default(), 1);
    let mut input = frames;
    let mut got = Vec::new();
    let consumed = cli
        .receive(&mut input, &mut Vec::new(), |ev, _| got.push(Ev::from(&ev)))
        .unwrap();
    assert_eq!((consumed, got), (9, vec![Ev::Text("Hello".into())]));

    // The same message masked, to a server, one frame per read.
    let mut d = Driver::server();
    d.feed(&client(OpCode::Text, false, b"Hel")).unwrap();
    assert!(d.events.is_empty());
    d.feed(&client(OpCode::Continuation, true, b"lo")).unwrap();
    assert_eq!(d.events, vec![Ev::Text("Hello".into())]);
}

#[test]
fn ping_hello_and_its_masked_pong() {
    // Unmasked ping (server to client) and the masked pong the RFC shows in answer.
    let mut ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let rfc_pong = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let mut encoded = Vec::new();
    encode_client_frame(OpCode::Pong, true, b"Hello", KEY, &mut encoded);
    assert_eq!(encoded, rfc_pong);

    // A client session answers the ping with a masked pong carrying "Hello".
    let mut cli = Session::new_client(Limits::default(), 7);
    let mut out = Vec::new();
    let mut got = Vec::new();
    cli.receive(&mut ping, &mut out, |ev, _| got.push(Ev::from(&ev)))
        .unwrap();
    assert_eq!(got, vec![Ev::Ping(b"Hello".to_vec())]);
    let (h, n) = FrameHeader::decode(&out).unwrap().unwrap();
    assert_eq!(
        (h.opcode, h.fin, h.payload_len, n, out.len()),
        (OpCode::Pong, true, 5, 6, 11)
    );
    let mut payload = out[n..].to_vec();
    hioload_wsproto::mask::apply_mask(&mut payload, h.mask.expect("client frames are masked"), 0);
    assert_eq!(payload, b"Hello");

    // A server answers a masked ping with the unmasked pong.
    let mut d = Driver::server();
    d.feed(&client(OpCode::Ping, true, b"Hello")).unwrap();
    assert_eq!(d.out, [0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(d.events, vec![Ev::Ping(b"Hello".to_vec())]);
}

#[test]
fn binary_256_bytes_and_64_kib_length_encodings() {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = FrameHeader::server(OpCode::Binary, true, 256).encode(&mut head);
    assert_eq!(&head[..n], [0x82, 0x7E, 0x01, 0x00]);
    let n = FrameHeader::server(OpCode::Binary, true, 65536).encode(&mut head);
    assert_eq!(
        &head[..n],
        [0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]
    );

    for len in [256usize, 65536] {
        let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut d = Driver::server();
        d.feed(&client(OpCode::Binary, true, &data)).unwrap();
        assert_eq!(d.events, vec![Ev::Binary(data.clone())]);
        let n = FrameHeader::server(OpCode::Binary, true, len).encode(&mut head);
        let mut expected = head[..n].to_vec();
        expected.extend_from_slice(&data);
        assert_eq!(d.out, expected, "echo of {len} bytes");
    }
}
