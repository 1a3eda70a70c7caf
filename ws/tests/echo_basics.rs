//! The basic echo path a transport relies on: text, binary, ping, close; and the handshake.

mod common;

use common::*;
use hioload_wsproto::handshake::{parse_request, respond, Parsed, UpgradePolicy};
use hioload_wsproto::{Limits, OpCode, State};

struct AllowAll;
impl UpgradePolicy for AllowAll {}

#[test]
fn handshake_then_echo_text_binary_ping_close() {
    let request =
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let mut stream = request.to_vec();
    stream.extend(client(OpCode::Text, true, b"Hello"));
    let Parsed::Upgrade(req) = parse_request(&stream, &Limits::default()) else {
        panic!("not an upgrade")
    };
    assert_eq!(req.head_len, request.len());
    let mut answer = [0u8; 512];
    let (n, accepted) = respond(&req, &AllowAll, &mut answer);
    assert_eq!(accepted, Ok(()));
    let answer = std::str::from_utf8(&answer[..n]).unwrap();
    assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(answer.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(answer.ends_with("\r\n\r\n"));

    let mut d = Driver::server();
    let rest = stream[req.head_len..].to_vec();
    d.feed(&rest).unwrap();
    d.feed(&client(OpCode::Binary, true, &[1, 2, 3])).unwrap();
    d.feed(&client(OpCode::Ping, true, b"hb")).unwrap();
    d.feed(&client(OpCode::Close, true, &close_payload(1000, b"bye")))
        .unwrap();
    assert_eq!(
        d.events,
        vec![
            Ev::Text("Hello".into()),
            Ev::Binary(vec![1, 2, 3]),
            Ev::Ping(b"hb".to_vec()),
            Ev::Close(Some(1000), "bye".into())
        ]
    );
    let sent = d.sent();
    assert_eq!(sent.len(), 4);
    assert_eq!(
        (sent[0].opcode, sent[0].payload.as_slice()),
        (OpCode::Text, &b"Hello"[..])
    );
    assert_eq!(
        (sent[1].opcode, sent[1].payload.as_slice()),
        (OpCode::Binary, &[1u8, 2, 3][..])
    );
    assert_eq!(
        (sent[2].opcode, sent[2].payload.as_slice()),
        (OpCode::Pong, &b"hb"[..])
    );
    assert_eq!(
        (sent[3].opcode, sent[3].payload.as_slice()),
        (OpCode::Close, &1000u16.to_be_bytes()[..])
    );
    assert_eq!(d.session.state(), State::Closed);
    assert!(d.buf.is_empty());
}
