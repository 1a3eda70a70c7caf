//! The auth example (examples/auth.rs) as a real server: 401 without a token, the user's name
//! in the session's user data with one (query string or Authorization header), 409 for a user
//! already connected, and the user free again once its session closed.

#[allow(dead_code)]
#[path = "../examples/auth.rs"]
mod auth;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message as WsMessage;

/// The raw answer to an upgrade request for `target` with `extra` header lines.
fn answer(addr: SocketAddr, target: &str, extra: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = upgrade_request(target, "13", KEY).replace("\r\n\r\n", &format!("\r\n{extra}\r\n"));
    s.write_all(req.as_bytes()).unwrap();
    let mut all = String::new();
    let _ = s.read_to_string(&mut all);
    all
}

fn read_text(ws: &mut tungstenite::WebSocket<TcpStream>) -> String {
    ws.read().unwrap().into_text().unwrap().to_string()
}

#[test]
fn tokens_name_the_user_and_a_second_connection_of_a_user_is_refused() {
    let server = auth::auth_server(test_config()).unwrap();
    server.start().unwrap();
    let addr = server.local_addr().unwrap();

    let no_token = answer(addr, "/ws", "");
    assert!(
        no_token.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{no_token}"
    );
    assert!(
        no_token.contains("\r\nWWW-Authenticate: Bearer\r\n"),
        "{no_token}"
    );
    assert!(
        no_token.ends_with("a valid token is required\n"),
        "{no_token}"
    );
    let bad = answer(addr, "/ws?token=nope", "");
    assert!(bad.starts_with("HTTP/1.1 401"), "{bad}");

    // A token in the query string.
    let mut alice = client(addr, "/ws?token=alice-secret");
    assert_eq!(read_text(&mut alice), "hello alice");
    alice.send(WsMessage::text("hi")).unwrap();
    assert_eq!(read_text(&mut alice), "alice: hi");

    // The same user again: 409.
    let again = answer(addr, "/ws?token=alice-secret", "");
    assert!(again.starts_with("HTTP/1.1 409 Conflict\r\n"), "{again}");
    assert!(again.ends_with("alice is already connected\n"), "{again}");

    // A token in the Authorization header.
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", "Bearer bob-secret".parse().unwrap());
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (mut bob, _) = tungstenite::client::client(req, stream).unwrap();
    assert_eq!(read_text(&mut bob), "hello bob");
    bob.send(WsMessage::text("yo")).unwrap();
    assert_eq!(read_text(&mut bob), "bob: yo");

    // Alice leaves; she may come back.
    alice.close(None).unwrap();
    while alice.read().is_ok() {}
    wait_until(Duration::from_secs(5), "alice's session closed", || {
        server.session_count() == 1
    });
    let mut alice = client(addr, "/ws?token=alice-secret");
    assert_eq!(read_text(&mut alice), "hello alice");
}
