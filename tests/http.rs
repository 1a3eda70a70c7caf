//! HTTP answers on the WebSocket listener: handshake errors with the RFC's status, other paths
//! 404, plain requests through the HTTP hook; every answer ends with a clean TCP close.

mod common;

use std::net::SocketAddr;

use common::*;
use hioload_ws::http::write_response;
use hioload_ws::{HttpRequest, Server};

fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"))
}

#[test]
fn handshake_errors_get_their_status_and_the_connection_closes() {
    let (server, rec) = start_echo(test_config());
    let addr = server.local_addr().unwrap();

    let (mut s, head) = raw_request(addr, &upgrade_request("/other", "13", KEY));
    assert_eq!(status_of(&head), 404, "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    read_body_then_eof(&mut s, &head);

    let (mut s, head) = raw_request(addr, &upgrade_request("/ws", "8", KEY));
    assert_eq!(status_of(&head), 426, "{head}");
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
    read_body_then_eof(&mut s, &head);

    let (mut s, head) = raw_request(addr, &upgrade_request("/ws", "13", "not-a-valid-key"));
    assert_eq!(status_of(&head), 400, "{head}");
    read_body_then_eof(&mut s, &head);

    let (mut s, head) = raw_request(addr, "POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert!(status_of(&head) >= 400, "{head}");
    read_body_then_eof(&mut s, &head);

    let (mut s, head) = raw_request(addr, "this is not HTTP\r\n\r\n");
    assert_eq!(status_of(&head), 400, "{head}");
    read_body_then_eof(&mut s, &head);

    // A request head over the limit: 431.
    let big = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (mut s, head) = raw_request(addr, &big);
    assert_eq!(status_of(&head), 431, "{head}");
    read_body_then_eof(&mut s, &head);

    assert_eq!(
        rec.record.lock().unwrap().opened,
        0,
        "no session was opened"
    );
    assert_eq!(server.session_count(), 0);
}

fn read_body_then_eof(s: &mut std::net::TcpStream, head: &str) {
    use std::io::Read;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    expect_eof(s);
}

#[test]
fn plain_http_requests_get_404_by_default() {
    let (server, _rec) = start_echo(test_config());
    let (mut s, head) = raw_request(
        server.local_addr().unwrap(),
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status_of(&head), 404, "{head}");
    read_body_then_eof(&mut s, &head);
}

#[test]
fn the_http_hook_serves_other_paths_on_the_same_listener() {
    let server = Server::new(test_config())
        .unwrap()
        .with_handler(common::RecordingEcho::default())
        .with_http_handler(
            |req: &HttpRequest<'_>, peer: SocketAddr, out: &mut Vec<u8>| {
                if req.path == "/health" {
                    let body = format!(
                        "hioload_up 1\npeer_is_loopback {}\n",
                        peer.ip().is_loopback() as u8
                    );
                    write_response(out, 200, "OK", "text/plain", body.as_bytes());
                } else {
                    hioload_ws::http::HttpHandler::handle(&hioload_ws::NotFound, req, peer, out);
                }
            },
        );
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let (mut s, head) = raw_request(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&head), 200, "{head}");
    use std::io::Read;
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert_eq!(body, "hioload_up 1\npeer_is_loopback 1\n");
    let (_, head) = raw_request(addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&head), 404);
    // The WebSocket path still upgrades.
    let mut ws = client(addr, "/ws");
    ws.send(tungstenite::Message::text("x")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("x"));
}
