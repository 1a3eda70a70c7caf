//! The facade's session services over the DPDK data path, in process: a `Server` with
//! `DataPathConfig::Dpdk` on a net_tap port (its kernel side in a namespace this test creates, clients
//! on threads that entered it), two lcores sharing the port. Checks the registry, messages sent by
//! session id and broadcasts across lcores (from a handler and from outside), the control plane's
//! counters, a settings reload, and the graceful stop.
//!
//! One EAL per process: this file holds exactly one test. Needs root (hugepages, tap, netns).

#![cfg(feature = "dpdk")]

mod common;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::dpdk::{ws_client, TapNet};
use common::Router;
use hioload_ws::{Message, Server};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message as WsMessage, WebSocket};

/// `read`, retried when the tap PMD's signal interrupts it (the EAL runs in this process).
fn read(ws: &mut WebSocket<TcpStream>) -> Result<WsMessage, WsError> {
    loop {
        match ws.read() {
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn text(ws: &mut WebSocket<TcpStream>) -> String {
    match read(ws).unwrap() {
        WsMessage::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn sessions_send_by_id_and_broadcast_across_lcores_over_the_userspace_stack() {
    let net = TapNet::create('s');
    let server = Server::new(net.config("0@0,1@0", 1024))
        .unwrap()
        .with_handler(Router);
    server.start().expect("the DPDK path starts");
    net.attach_tap();

    let server = Arc::new(server);
    let outside = server.clone();
    let (ids, workers) = net.in_ns(move || {
        let mut clients: Vec<_> = (0..40)
            .map(|_| ws_client(Duration::from_secs(20)))
            .collect();
        let mut ids = Vec::new();
        let mut workers = Vec::new();
        for ws in &mut clients {
            ws.send(WsMessage::text("id?")).unwrap();
            let answer = text(ws);
            let (id, worker) = answer.split_once(' ').unwrap();
            ids.push(id.parse::<u64>().unwrap());
            workers.push(worker.parse::<usize>().unwrap());
        }
        // The registry knows every session; the control plane counts them per lcore.
        assert_eq!(outside.sessions().len(), 40);
        assert_eq!(outside.session_count(), 40);
        let probes = outside.probes_json();
        assert!(probes.contains("\"active_sessions\":40"), "{probes}");
        // By id, from a session to one on (possibly) another lcore.
        let target = workers
            .iter()
            .position(|&w| w != workers[0])
            .expect("sessions on both lcores");
        clients[0]
            .send(WsMessage::text(format!("to:{}:psst", ids[target])))
            .unwrap();
        assert_eq!(text(&mut clients[target]), "psst");
        // From outside, by id.
        outside
            .send_to(ids[5], Message::Text("from outside"))
            .unwrap();
        assert_eq!(text(&mut clients[5]), "from outside");
        // Broadcast from a session reaches every session, on both lcores.
        clients[3]
            .send(WsMessage::text("all:hello everyone"))
            .unwrap();
        for ws in &mut clients {
            assert_eq!(text(ws), "hello everyone");
        }
        // Broadcast from outside.
        assert_eq!(
            outside.broadcast(Message::Text("news")).unwrap(),
            2,
            "both lcores queued it"
        );
        for ws in &mut clients {
            assert_eq!(text(ws), "news");
        }
        // A reload lowers the message limit of open sessions, on both lcores (applied at the
        // next deadline tick, every 100 ms).
        let mut lower = outside.config();
        lower.limits.max_message_size = 1000;
        outside.reload(lower).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        clients[0].send(WsMessage::text("x".repeat(2000))).unwrap();
        match read(&mut clients[0]).unwrap() {
            WsMessage::Close(Some(f)) => assert_eq!(f.code, CloseCode::Size),
            other => panic!("expected close 1009 after the reload, got {other:?}"),
        }
        let small = clients.len() - 1;
        clients[small]
            .send(WsMessage::text("x".repeat(900)))
            .unwrap();
        assert_eq!(text(&mut clients[small]), "x".repeat(900));
        let mut clients = clients.split_off(1);
        // The graceful stop: 1001 to everyone.
        outside.stop();
        for ws in &mut clients {
            match read(ws).unwrap() {
                WsMessage::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
                other => panic!("expected close 1001, got {other:?}"),
            }
        }
        (ids, workers)
    });
    server.wait().unwrap();
    assert_eq!(ids.len(), 40);
    assert!(
        workers.contains(&0) && workers.contains(&1),
        "sessions on both lcores: {workers:?}"
    );
    assert_eq!(server.session_count(), 0);
}
