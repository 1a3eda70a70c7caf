//! The facade end to end on real loopback sockets: echo semantics, big and fragmented messages,
//! ping/pong, both close handshakes, peer failures, handler panics.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode as TCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message as WsMessage};

#[test]
fn text_comes_back_as_text_and_binary_as_binary() {
    let (server, _rec, mut ws) = start_echo_with_client(test_config());
    ws.send(WsMessage::text("Hello")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("Hello"));
    let bin: Vec<u8> = (0..=255u8).collect();
    ws.send(WsMessage::binary(bin.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::binary(bin));
    ws.send(WsMessage::text("")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text(""));
    // Several messages in one write come back in order.
    for i in 0..50 {
        ws.write(WsMessage::text(format!("m{i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..50 {
        assert_eq!(ws.read().unwrap(), WsMessage::text(format!("m{i}")));
    }
    assert_eq!(server.session_count(), 1);
}

#[test]
fn a_16_mib_message_is_echoed_intact() {
    let (_server, _rec, mut ws) = start_echo_with_client(test_config());
    let big: Vec<u8> = (0..16usize << 20)
        .map(|i| (i * 7 + i / 4099) as u8)
        .collect();
    ws.send(WsMessage::binary(big.clone())).unwrap();
    match ws.read().unwrap() {
        WsMessage::Binary(b) => assert!(b[..] == big[..], "16 MiB echo differs"),
        other => panic!("expected binary, got {:?}", other.len()),
    }
    // And a text one just under the limit, after it, on the same connection.
    let text = "x".repeat((16 << 20) - 1);
    ws.send(WsMessage::text(text.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text(text));
}

#[test]
fn a_message_over_the_limit_is_closed_with_1009() {
    let mut cfg = test_config();
    cfg.limits.max_message_size = 1 << 20;
    let (_server, rec, mut ws) = start_echo_with_client(cfg);
    ws.send(WsMessage::binary(vec![1u8; (1 << 20) + 1]))
        .unwrap();
    match ws.read() {
        Ok(WsMessage::Close(Some(f))) => assert_eq!(f.code, TCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    rec.wait_for(T, "on_close 1009", |r| r.closes.iter().any(|c| c.1 == 1009));
}

#[test]
fn a_fragmented_message_is_reassembled_with_a_ping_in_between() {
    let (server, _rec) = start_echo(test_config());
    let mut s = raw_ws(server.local_addr().unwrap());
    s.write_all(&frame(false, 0x1, b"Hello")).unwrap();
    s.write_all(&frame(false, 0x0, b", ")).unwrap();
    s.write_all(&frame(true, 0x9, b"in-between")).unwrap();
    // A fragment split across writes, down to single bytes.
    let last = frame(true, 0x0, "wörld".as_bytes());
    for b in &last {
        s.write_all(std::slice::from_ref(b)).unwrap();
        s.flush().unwrap();
    }
    assert_eq!(
        read_frame(&mut s),
        (true, 0xA, b"in-between".to_vec()),
        "pong first"
    );
    assert_eq!(
        read_frame(&mut s),
        (true, 0x1, "Hello, wörld".as_bytes().to_vec())
    );
    // Large fragments (streamed through the session's assembly buffer) work too.
    let a = vec![b'a'; 100_000];
    let b = vec![b'b'; 70_000];
    s.write_all(&frame(false, 0x2, &a)).unwrap();
    s.write_all(&frame(true, 0x0, &b)).unwrap();
    let (fin, op, payload) = read_frame(&mut s);
    assert!(fin && op == 0x2);
    assert_eq!(payload, [a, b].concat());
}

#[test]
fn ping_is_answered_with_pong() {
    let (_server, _rec, mut ws) = start_echo_with_client(test_config());
    ws.send(WsMessage::Ping(b"are you there?".to_vec().into()))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        WsMessage::Pong(b"are you there?".to_vec().into())
    );
    ws.send(WsMessage::Ping(vec![0xAB; 125].into())).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::Pong(vec![0xAB; 125].into()));
}

#[test]
fn client_initiated_close_handshake() {
    let (server, rec, mut ws) = start_echo_with_client(test_config());
    ws.send(WsMessage::text("hi")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("hi"));
    ws.close(Some(CloseFrame {
        code: TCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    loop {
        match ws.read() {
            Ok(WsMessage::Close(Some(f))) => assert_eq!(f.code, TCode::Normal, "close code echoed"),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(WsError::ConnectionClosed) => break,
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
    rec.wait_for(T, "on_close", |r| r.closes.len() == 1);
    let closes = &rec.record.lock().unwrap().closes;
    assert_eq!((closes[0].1, closes[0].2.as_str()), (1000, "bye"));
    wait_until(T, "session count 0", || server.session_count() == 0);
}

#[test]
fn server_initiated_close_handshake() {
    let (server, rec) = start_echo(test_config());
    let addr = server.local_addr().unwrap();
    let mut ws = client(addr, "/ws");
    ws.send(WsMessage::text("close-me 4000")).unwrap();
    match ws.read().unwrap() {
        WsMessage::Close(Some(f)) => assert_eq!(u16::from(f.code), 4000),
        other => panic!("expected close, got {other:?}"),
    }
    // tungstenite queued its answering Close; flush it and see the server close the TCP connection.
    match ws.read() {
        Err(WsError::ConnectionClosed) => {}
        Err(e) => panic!("{e}"),
        Ok(m) => panic!("unexpected {m:?}"),
    }
    rec.wait_for(T, "on_close 4000", |r| r.closes.iter().any(|c| c.1 == 4000));
    wait_until(T, "session count 0", || server.session_count() == 0);

    // The raw view: the server closes TCP (FIN) right after our answering Close.
    let mut s = raw_ws(addr);
    s.write_all(&frame(true, 0x1, b"close-me 1000")).unwrap();
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (0x8, &1000u16.to_be_bytes()[..]));
    s.write_all(&frame(true, 0x8, &1000u16.to_be_bytes()))
        .unwrap();
    expect_eof(&mut s);
}

#[test]
fn a_peer_that_never_answers_our_close_is_dropped_after_the_close_timeout() {
    let mut cfg = test_config();
    cfg.close_timeout = Duration::from_millis(300);
    let (server, rec) = start_echo(cfg);
    let mut s = raw_ws(server.local_addr().unwrap());
    s.write_all(&frame(true, 0x1, b"close-me 1000")).unwrap();
    assert_eq!(read_frame(&mut s).1, 0x8);
    rec.wait_for(T, "on_close 1006", |r| r.closes.iter().any(|c| c.1 == 1006));
    wait_until(T, "session count 0", || server.session_count() == 0);
}

#[test]
fn a_protocol_error_gets_its_close_code_then_the_connection_is_closed() {
    let (server, rec) = start_echo(test_config());
    let mut s = raw_ws(server.local_addr().unwrap());
    // An unmasked client frame is a protocol error (1002).
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!(op, 0x8);
    assert_eq!(&payload[..2], &1002u16.to_be_bytes());
    expect_eof(&mut s);
    rec.wait_for(T, "on_close 1002", |r| r.closes.iter().any(|c| c.1 == 1002));

    // Invalid UTF-8 in a text message: 1007.
    let mut s = raw_ws(server.local_addr().unwrap());
    s.write_all(&frame(true, 0x1, &[0xce, 0xba, 0xff])).unwrap();
    let (_, op, payload) = read_frame(&mut s);
    assert_eq!((op, &payload[..2]), (0x8, &1007u16.to_be_bytes()[..]));
    expect_eof(&mut s);
}

#[test]
fn tcp_close_without_close_frame_reports_1006() {
    let (server, rec, mut ws) = start_echo_with_client(test_config());
    ws.send(WsMessage::text("x")).unwrap();
    ws.read().unwrap();
    drop(ws);
    rec.wait_for(T, "on_close 1006", |r| r.closes.len() == 1);
    assert_eq!(rec.close_codes(), vec![1006]);
    wait_until(T, "session count 0", || server.session_count() == 0);
}

#[test]
fn abrupt_resets_mid_frame_leave_the_server_serving() {
    let (server, rec) = start_echo(test_config());
    let addr = server.local_addr().unwrap();
    const N: usize = 40;
    for i in 0..N {
        let mut s = raw_ws(addr);
        if i % 5 == 0 {
            // Also leave output pending: a whole 1 MiB message whose echo the peer never reads.
            s.write_all(&frame(true, 0x2, &vec![7u8; 1 << 20])[..])
                .unwrap();
        }
        // Half a frame (or just part of its header), then RST.
        let f = frame(true, 0x2, &vec![i as u8; 5000]);
        s.write_all(&f[..[1, 3, 100, 2500][i % 4]]).unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    // A reset during the handshake, too.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);

    rec.wait_for(T, "every reset reported", |r| r.closes.len() == N);
    assert!(
        rec.close_codes().iter().all(|&c| c == 1006),
        "{:?}",
        rec.close_codes()
    );
    wait_until(T, "session count 0", || server.session_count() == 0);
    let mut ws = client(addr, "/ws");
    ws.send(WsMessage::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), WsMessage::text("still here"));
}

#[test]
fn a_panicking_handler_closes_its_session_with_1011_and_the_worker_lives_on() {
    let mut cfg = test_config();
    cfg.num_workers = 1;
    let (server, rec) = start_echo(cfg);
    let addr = server.local_addr().unwrap();
    let mut ws = client(addr, "/ws");
    ws.send(WsMessage::text("panic")).unwrap();
    match ws.read().unwrap() {
        WsMessage::Close(Some(f)) => assert_eq!(f.code, TCode::Error),
        other => panic!("expected close 1011, got {other:?}"),
    }
    let mut other = client(addr, "/ws");
    other.send(WsMessage::text("ok?")).unwrap();
    assert_eq!(other.read().unwrap(), WsMessage::text("ok?"));
    drop(ws);
    rec.wait_for(T, "on_close after the panic", |r| !r.closes.is_empty());
}

#[test]
fn stop_sends_1001_to_every_session_and_wait_returns() {
    let (server, rec) = start_echo(test_config());
    let addr = server.local_addr().unwrap();
    let mut clients: Vec<_> = (0..10).map(|_| client(addr, "/ws")).collect();
    for ws in &mut clients {
        ws.send(WsMessage::text("a")).unwrap();
        ws.read().unwrap();
    }
    assert_eq!(server.session_count(), 10);
    let started = std::time::Instant::now();
    server.stop();
    for ws in &mut clients {
        match ws.read().unwrap() {
            WsMessage::Close(Some(f)) => assert_eq!(f.code, TCode::Away),
            other => panic!("expected close 1001, got {other:?}"),
        }
        loop {
            match ws.read() {
                Err(WsError::ConnectionClosed) => break,
                other => assert!(other.is_ok(), "{other:?}"),
            }
        }
    }
    server.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "every client answered: no need for the grace period"
    );
    assert_eq!(rec.close_codes(), vec![1001; 10]);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer accepting"
    );
}
