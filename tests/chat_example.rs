//! The chat example (examples/chat.rs) as a real server: room broadcasts reach members on
//! several workers, whispers go by session id, the example's own middleware closes binary
//! senders with 1003, and its probe and metrics answer over HTTP.

#[allow(dead_code)]
#[path = "../examples/chat.rs"]
mod chat;
mod common;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode as TCode;
use tungstenite::Message as WsMessage;

fn read_text(ws: &mut tungstenite::WebSocket<std::net::TcpStream>) -> String {
    ws.read().unwrap().into_text().unwrap().to_string()
}

#[test]
fn the_chat_room_broadcasts_whispers_and_refuses_binary() {
    let mut cfg = test_config();
    cfg.num_workers = 3;
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = chat::chat_server(cfg).unwrap();
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let admin = server.admin_addr().unwrap();

    // At least six members, and more until they sit on two workers or more (the kernel spreads
    // connections over the workers' listeners by a hash: six may all land on one).
    let mut members = Vec::new();
    let mut ids: Vec<u64> = Vec::new();
    let spread = |ids: &[u64]| {
        let workers: std::collections::HashSet<u64> = ids.iter().map(|id| id >> 48).collect();
        workers.len() >= 2
    };
    while ids.len() < 6 || (!spread(&ids) && ids.len() < 40) {
        let mut ws = client(addr, "/chat");
        let welcome = read_text(&mut ws);
        let id: u64 = welcome
            .split("your id is ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap()
            .parse()
            .unwrap();
        ids.push(id);
        members.push(ws);
        // Everyone present sees the join, the newcomer included.
        let joined = format!("* guest-{id:x} joined");
        for ws in &mut members {
            assert_eq!(read_text(ws), joined);
        }
    }
    assert!(spread(&ids), "members on several workers: {ids:?}");
    let n = ids.len();

    members[0].send(WsMessage::text("/nick alice")).unwrap();
    for ws in &mut members {
        assert_eq!(read_text(ws), format!("* guest-{:x} is now alice", ids[0]));
    }
    members[2].send(WsMessage::text("hello room")).unwrap();
    for ws in &mut members {
        assert_eq!(read_text(ws), format!("guest-{:x}: hello room", ids[2]));
    }
    members[0]
        .send(WsMessage::text(format!("/msg {} psst", ids[5])))
        .unwrap();
    assert_eq!(read_text(&mut members[5]), "(private) alice: psst");

    let (_, _, body) = http_get(admin, "/debug/probes");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["members"], n);

    // Binary: TextOnly closes that member with 1003; the others are told it left.
    members[4].send(WsMessage::binary(vec![1u8, 2])).unwrap();
    match members[4].read().unwrap() {
        WsMessage::Close(Some(f)) => assert_eq!(f.code, TCode::Unsupported),
        other => panic!("expected close 1003, got {other:?}"),
    }
    while members[4].read().is_ok() {} // answers the close
    let left = format!("* guest-{:x} left", ids[4]);
    for (i, ws) in members.iter_mut().enumerate() {
        if i != 4 {
            assert_eq!(read_text(ws), left);
        }
    }
    let (_, _, body) = http_get(admin, "/metrics");
    let samples = parse_prometheus(&body);
    assert_eq!(
        sample(&samples, "hioload_session_close_codes_total{code=\"1003\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&samples, "hioload_sessions_opened_total"),
        Some(n as f64)
    );
}
