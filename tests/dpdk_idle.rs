//! Idle sessions on the DPDK data path, in process: a session that sends nothing for
//! `idle_timeout` gets a ping; one that answers stays, one that does not is dropped after
//! `pong_timeout` and reported closed with 1006. Counted in `/debug/probes`' workers.
//!
//! One EAL per process: this file holds exactly one test. Needs root (hugepages, tap, netns).

#![cfg(feature = "dpdk")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dpdk::{ws_client, TapNet, STACK, UPGRADE};
use hioload_ws::{CloseCode, Config, Ctx, Handler, Message, Server};
use tungstenite::Message as WsMessage;

/// Echoes; records close codes.
struct Echo {
    closes: Arc<Mutex<Vec<u16>>>,
}

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = ctx.send(msg);
    }
    fn on_close(&self, _ctx: &mut Ctx<'_>, code: CloseCode, _reason: &str) {
        self.closes.lock().unwrap().push(code.0);
    }
}

#[test]
fn an_idle_session_is_pinged_and_one_that_never_answers_is_dropped_with_1006() {
    let net = TapNet::create('i');
    let cfg = Config {
        idle_timeout: Some(Duration::from_millis(800)),
        pong_timeout: Duration::from_millis(800),
        ..net.config("0@0", 256)
    };
    let closes = Arc::new(Mutex::new(Vec::new()));
    let server = Arc::new(Server::new(cfg).unwrap().with_handler(Echo {
        closes: closes.clone(),
    }));
    server.start().expect("the DPDK path starts");
    net.attach_tap();

    let outside = server.clone();
    let (pinged, still_served, silent_dropped_after) = net.in_ns(move || {
        // A responsive client (tungstenite answers pings when it reads).
        let mut ws = ws_client(Duration::from_secs(5));
        // A silent one: upgrades, then never sends anything (not even the pong).
        let mut silent = TcpStream::connect(STACK).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        silent.write_all(UPGRADE).unwrap();
        let start = Instant::now();
        // The responsive one sees the ping (and answers it), twice over the silent one's life.
        let mut pinged = 0;
        while start.elapsed() < Duration::from_millis(2500) {
            match ws.read() {
                Ok(WsMessage::Ping(p)) if &p[..] == b"idle" => pinged += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => panic!("responsive client: {e}"),
            }
        }
        ws.send(WsMessage::text("still here")).unwrap();
        let still_served = ws.read().unwrap();
        // The silent one: its 101, the ping, then the connection ends (reset).
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match silent.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let dropped_after = start.elapsed();
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            got.ends_with(b"\x89\x04idle"),
            "the silent client got the ping last"
        );
        drop(outside);
        (pinged, still_served, dropped_after)
    });
    assert!(pinged >= 1, "the responsive client was pinged");
    assert_eq!(still_served, WsMessage::text("still here"));
    assert!(
        silent_dropped_after >= Duration::from_millis(1400)
            && silent_dropped_after < Duration::from_secs(5),
        "dropped after {silent_dropped_after:?} (idle 0.8 s + pong 0.8 s)"
    );
    assert!(
        closes.lock().unwrap().contains(&1006),
        "{:?}",
        closes.lock().unwrap()
    );
    let probes = server.probes_json();
    let workers = server.worker_stats().unwrap();
    assert!(
        workers[0].idle_pings >= 2 && workers[0].idle_drops == 1,
        "{workers:?}\n{probes}"
    );
    server.shutdown().unwrap();
}
