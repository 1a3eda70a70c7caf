//! Built-in seed inputs: valid streams the mutation loop starts from (a corpus directory passed on
//! the command line adds to them).

use hioload_wsproto::frame::encode_client_frame;
use hioload_wsproto::OpCode;

fn frame(out: &mut Vec<u8>, op: OpCode, fin: bool, payload: &[u8]) {
    encode_client_frame(op, fin, payload, [0x37, 0xfa, 0x21, 0x3d], out);
}

/// Client frame streams, each prefixed with the control byte the session target reads.
pub fn session() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for ctl in [0x00u8, 0x01, 0x13, 0x2e] {
        let mut s = vec![ctl];
        frame(&mut s, OpCode::Text, true, "Hello κόσμε".as_bytes());
        frame(&mut s, OpCode::Binary, false, &[1, 2, 3]);
        frame(&mut s, OpCode::Ping, true, b"ping");
        frame(&mut s, OpCode::Continuation, true, &[4; 300]);
        frame(&mut s, OpCode::Text, false, "€".as_bytes()[..2].as_ref());
        frame(&mut s, OpCode::Continuation, true, "€".as_bytes()[2..].as_ref());
        frame(&mut s, OpCode::Pong, true, b"");
        frame(&mut s, OpCode::Close, true, &[0x03, 0xe8, b'o', b'k']);
        seeds.push(s);
    }
    let mut big = vec![0x02];
    frame(&mut big, OpCode::Text, true, &[b'a'; 3000]);
    seeds.push(big);
    // permessage-deflate messages (RSV1 on the first frame), for the deflate sessions.
    let mut zipped = vec![0x03];
    for (i, msg) in [&b"{\"id\":1,\"name\":\"a\"}"[..], &[b'x'; 2000][..]].into_iter().enumerate() {
        let mut z = Vec::new();
        assert!(hioload_wsproto::deflate::Deflater::new(6, 15).compress(msg, &mut z, false));
        let at = zipped.len();
        if i == 0 {
            frame(&mut zipped, OpCode::Text, true, &z);
        } else {
            let (a, b) = z.split_at(z.len() / 2);
            frame(&mut zipped, OpCode::Binary, false, a);
            frame(&mut zipped, OpCode::Continuation, true, b);
        }
        zipped[at] |= 0x40;
    }
    seeds.push(zipped);
    // Unmasked (server) frames, for the client role.
    seeds.push(vec![0x00, 0x81, 0x05, b'H', b'e', b'l', b'l', b'o', 0x89, 0x00, 0x88, 0x02, 0x03, 0xe8]);
    seeds
}

/// Upgrade and plain HTTP requests.
pub fn handshake() -> Vec<Vec<u8>> {
    vec![
        b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .to_vec(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=\"10\"; server_max_window_bits=12, \
permessage-deflate; server_no_context_takeover, x-foo; a=\"b,c\"\r\n\r\n"
            .to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, upgrade\r\n\
Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n"
            .to_vec(),
    ]
}

/// Frame headers of every length form.
pub fn frame_header() -> Vec<Vec<u8>> {
    vec![
        vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58],
        vec![0x82, 0x7E, 0x01, 0x00, 1, 2, 3],
        vec![0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9, 9, 9, 5, 6, 7],
        vec![0x09, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0],
    ]
}
