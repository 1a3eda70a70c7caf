//! The load loop against real loopback servers: a tungstenite echo (an independent WebSocket
//! implementation), a raw TCP echo, and a raw echo that corrupts one byte, which must be caught.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hioload_bench::connect::Target;
use hioload_bench::load::{self, ThreadStats};
use hioload_bench::pattern::{Framing, Pattern};
use hioload_bench::wire::DataKind;

/// Accepts connections forever, one thread each, serving them with `serve`.
fn spawn_server(serve: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            std::thread::spawn(move || serve(stream));
        }
    });
    addr
}

fn websocket_echo(stream: TcpStream) {
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    while let Ok(msg) = ws.read() {
        if (msg.is_binary() || msg.is_text()) && ws.send(msg).is_err() {
            return;
        }
    }
}

fn raw_echo(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Echoes faithfully except byte 1000 of the stream, which it flips.
fn corrupting_echo(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    while let Ok(n @ 1..) = stream.read(&mut buf) {
        if (total..total + n).contains(&1000) {
            buf[1000 - total] ^= 0x01;
        }
        total += n;
        if stream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Runs `connections` connections for a short warm-up and window, as the binary does.
fn run(
    addr: SocketAddr,
    framing: Framing,
    connections: usize,
    size: usize,
    pipeline: usize,
) -> ThreadStats {
    let target = Target {
        addr,
        path: "/ws".into(),
        framing,
        sources: 1,
    };
    let pattern = Arc::new(Pattern::new(
        framing,
        size,
        Pattern::ring_messages(pipeline, size),
    ));
    let streams = (0..connections)
        .map(|i| (i, target.open(i).unwrap()))
        .collect();
    let phase = Arc::new(AtomicU8::new(load::WARMUP));
    let thread = {
        let (pattern, phase) = (pattern.clone(), phase.clone());
        std::thread::spawn(move || load::run_thread(streams, pattern, pipeline, phase))
    };
    std::thread::sleep(Duration::from_millis(100));
    phase.store(load::MEASURE, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    phase.store(load::DONE, Ordering::Relaxed);
    thread.join().unwrap().unwrap()
}

#[test]
fn websocket_echoes_are_counted_and_timed() {
    let addr = spawn_server(websocket_echo);
    for (size, pipeline) in [(20, 1), (20, 16), (70_000, 2)] {
        let stats = run(
            addr,
            Framing::WebSocket(DataKind::Binary),
            4,
            size,
            pipeline,
        );
        assert_eq!(
            stats.errors, 0,
            "{size} B × {pipeline}: {:?}",
            stats.error_texts
        );
        assert!(
            stats.messages > 10,
            "{size} B × {pipeline}: only {} echoes",
            stats.messages
        );
        assert_eq!(stats.latency.len(), stats.messages);
    }
    let stats = run(addr, Framing::WebSocket(DataKind::Text), 2, 300, 1);
    assert_eq!(stats.errors, 0, "{:?}", stats.error_texts);
    assert!(stats.messages > 10);
}

#[test]
fn raw_echo_is_accepted_as_is() {
    let addr = spawn_server(raw_echo);
    let stats = run(addr, Framing::Raw, 3, 1024, 4);
    assert_eq!(stats.errors, 0, "{:?}", stats.error_texts);
    assert!(stats.messages > 10);
}

#[test]
fn a_corrupted_byte_fails_its_connection_only() {
    let addr = spawn_server(corrupting_echo);
    // 1000 = 38 × 26 + 12: payload byte 6 of message 38 (26-byte frames: 6 header bytes + 20).
    let stats = run(addr, Framing::Raw, 2, 20, 1);
    assert_eq!(stats.errors, 2, "{:?}", stats.error_texts);
    for text in &stats.error_texts {
        assert!(
            text.contains("echo of message 38 wrong at byte 12"),
            "{text}"
        );
    }
}

#[test]
fn a_non_websocket_server_fails_the_upgrade() {
    let addr = spawn_server(raw_echo);
    let target = Target {
        addr,
        path: "/ws".into(),
        framing: Framing::WebSocket(DataKind::Binary),
        sources: 1,
    };
    let err = target.open(0).unwrap_err().to_string();
    assert!(err.contains("malformed upgrade response"), "{err}");
}
