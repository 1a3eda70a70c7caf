//! Sessions across workers: broadcast to 1,000 sessions spread over several workers, send by id
//! from one worker's session to another's (and from outside), and idle sessions pinged then
//! dropped when they do not answer.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use hioload_ws::{DeliverError, Message, Server};
use tungstenite::Message as WsMessage;

fn id_of(ws: &mut tungstenite::WebSocket<TcpStream>) -> (u64, usize) {
    ws.send(WsMessage::text("id?")).unwrap();
    let reply = ws.read().unwrap().into_text().unwrap();
    let (id, worker) = reply.split_once(' ').unwrap();
    (id.parse().unwrap(), worker.parse().unwrap())
}

#[test]
fn broadcast_reaches_1000_sessions_on_several_workers() {
    hioload_ws::raise_fd_limit().unwrap();
    let mut cfg = test_config();
    cfg.num_workers = 4;
    let server = Server::new(cfg).unwrap().with_handler(Router);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let mut clients: Vec<_> = (0..1000).map(|_| client(addr, "/ws")).collect();
    wait_until(T, "1000 sessions", || server.session_count() == 1000);
    let per_worker: Vec<usize> = server
        .worker_stats()
        .unwrap()
        .iter()
        .map(|w| w.sessions)
        .collect();
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() >= 2,
        "sessions on several workers: {per_worker:?}"
    );
    assert_eq!(server.sessions().len(), 1000, "the registry knows them all");

    // From outside the workers.
    assert_eq!(server.broadcast(Message::Text("to everyone")).unwrap(), 4);
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(
            ws.read().unwrap(),
            WsMessage::text("to everyone"),
            "client {i}"
        );
    }
    // From a session's handler, on one worker, to every worker.
    clients[0]
        .send(WsMessage::text("all:from client 0"))
        .unwrap();
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(
            ws.read().unwrap(),
            WsMessage::text("from client 0"),
            "client {i}"
        );
    }
    // Binary broadcasts stay binary.
    server.broadcast(Message::Binary(&[1, 2, 3])).unwrap();
    for ws in &mut clients {
        assert_eq!(ws.read().unwrap(), WsMessage::binary(vec![1u8, 2, 3]));
    }
    let undelivered: usize = server
        .worker_stats()
        .unwrap()
        .iter()
        .map(|w| w.undelivered)
        .sum();
    assert_eq!(undelivered, 0);
    drop(clients);
    wait_until(T, "all closed", || server.session_count() == 0);
}

#[test]
fn send_by_id_crosses_workers() {
    let mut cfg = test_config();
    cfg.num_workers = 4;
    let server = Server::new(cfg).unwrap().with_handler(Router);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();

    // Open sessions until two live on different workers.
    let mut a = client(addr, "/ws");
    let (id_a, worker_a) = id_of(&mut a);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut b, id_b, worker_b) = loop {
        let mut b = client(addr, "/ws");
        let (id, worker) = id_of(&mut b);
        if worker != worker_a {
            break (b, id, worker);
        }
        assert!(
            Instant::now() < deadline,
            "every connection landed on one worker"
        );
    };
    assert_ne!(worker_a, worker_b);

    a.send(WsMessage::text(format!("to:{id_b}:hello from {id_a}")))
        .unwrap();
    assert_eq!(
        b.read().unwrap(),
        WsMessage::text(format!("hello from {id_a}"))
    );
    b.send(WsMessage::text(format!("to:{id_a}:and back")))
        .unwrap();
    assert_eq!(a.read().unwrap(), WsMessage::text("and back"));

    // From outside the workers, and to ids that do not exist.
    server.send_to(id_a, Message::Binary(b"direct")).unwrap();
    assert_eq!(a.read().unwrap(), WsMessage::binary(b"direct".to_vec()));
    assert_eq!(
        server.send_to(id_a + 1_000_000, Message::Text("x")),
        Err(DeliverError::NoSuchSession)
    );
    assert_eq!(
        server.send_to(u64::MAX, Message::Text("x")),
        Err(DeliverError::NoSuchSession)
    );
    // A session that is gone: its worker drops the message and counts it.
    b.close(None).unwrap();
    while b.read().is_ok() {}
    wait_until(T, "b closed", || {
        !server.sessions().iter().any(|s| s.id == id_b)
    });
    a.send(WsMessage::text(format!("to:{id_b}:too late")))
        .unwrap();
    wait_until(T, "undelivered counted", || {
        server.worker_stats().unwrap()[worker_b].undelivered == 1
    });
    a.send(WsMessage::text("still fine")).unwrap();
    assert_eq!(a.read().unwrap(), WsMessage::text("still fine"));
}

#[test]
fn an_idle_session_is_pinged_and_dropped_when_it_does_not_answer() {
    let mut cfg = test_config();
    cfg.num_workers = 1;
    cfg.idle_timeout = Some(Duration::from_millis(300));
    cfg.pong_timeout = Duration::from_millis(400);
    let (server, rec) = start_echo(cfg);
    let addr = server.local_addr().unwrap();

    let mut silent = raw_ws(addr);
    let mut alive = raw_ws(addr);
    let opened = Instant::now();
    let (fin, opcode, payload) = read_frame(&mut silent);
    assert!(fin);
    assert_eq!(opcode, 0x9, "a ping");
    assert!(
        opened.elapsed() >= Duration::from_millis(250),
        "not before idle_timeout"
    );
    assert_eq!(payload, b"idle");

    // The other answers its pings (with a pong, as any client does) for a while.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    alive
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while Instant::now() < until {
        let mut h = [0u8; 1];
        if alive.peek(&mut h).is_err() {
            continue;
        }
        let (_, opcode, payload) = read_frame(&mut alive);
        assert_eq!(opcode, 0x9);
        alive.write_all(&frame(true, 0xA, &payload)).unwrap();
        pings += 1;
    }
    assert!(pings >= 2, "pinged again after answering ({pings})");

    // The silent one was dropped: no close handshake, reported as 1006.
    expect_eof(&mut silent);
    rec.wait_for(T, "the silent session's close", |r| r.closes.len() == 1);
    assert_eq!(rec.close_codes(), vec![1006]);
    let stats = &server.worker_stats().unwrap()[0];
    assert_eq!(stats.idle_drops, 1);
    assert!(stats.idle_pings >= 3);

    // The answering one is still served.
    alive
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    alive.write_all(&frame(true, 0x1, b"still here")).unwrap();
    loop {
        let (_, opcode, payload) = read_frame(&mut alive);
        if opcode == 0x9 {
            continue;
        }
        assert_eq!((opcode, payload.as_slice()), (0x1, &b"still here"[..]));
        break;
    }
    assert_eq!(server.session_count(), 1);
}
