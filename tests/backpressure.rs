//! Output that a peer does not drain: above the soft bound for longer than the timeout, or above
//! the hard bound at all, the session is closed with 1008 and its memory released.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hioload_ws::{Ctx, Handler, Message, Server};

/// On "flood", sends 64 messages of 256 KiB in one turn (16 MiB).
struct Flood(std::sync::Arc<RecordingEcho>);

impl Handler for Flood {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        if msg == Message::Text("huge") {
            // One message larger than the hard bound: admitted (nothing was buffered), and
            // then over the bound.
            let _ = ctx.send_binary(&vec![0xEEu8; 8 << 20]);
        } else if msg == Message::Text("flood") {
            let chunk = vec![0xEEu8; 256 << 10];
            for _ in 0..64 {
                // Over the hard bound a send is refused (OverHardBound): the flood stops there.
                if ctx.send_binary(&chunk).is_err() {
                    break;
                }
            }
        } else {
            self.0.on_message(ctx, msg);
        }
    }
    fn on_close(&self, ctx: &mut Ctx<'_>, code: hioload_ws::CloseCode, reason: &str) {
        self.0.on_close(ctx, code, reason);
    }
}

#[test]
fn a_peer_stuck_above_the_soft_bound_is_closed_with_1008_after_the_timeout() {
    let mut cfg = test_config();
    cfg.backpressure.soft_bytes = 256 << 10;
    cfg.backpressure.hard_bytes = 64 << 20;
    cfg.backpressure.timeout = Duration::from_millis(500);
    let rec = std::sync::Arc::new(RecordingEcho::default());
    let server = Server::new(cfg).unwrap().with_handler(Flood(rec.clone()));
    server.start().unwrap();
    let addr = server.local_addr().unwrap();

    let mut s = raw_ws(addr);
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4096)
        .unwrap();
    use std::io::Write;
    s.write_all(&frame(true, 0x1, b"flood")).unwrap();
    let started = Instant::now();
    rec.wait_for(Duration::from_secs(10), "on_close 1008", |r| {
        r.closes.iter().any(|c| c.1 == 1008)
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450), // the clock started a moment before `started`
        "closed before the timeout: {took:?}"
    );
    wait_until(Duration::from_secs(5), "session count 0", || {
        server.session_count() == 0
    });

    // Others are unaffected.
    let mut ws = client(addr, "/ws");
    ws.send(tungstenite::Message::text("fine")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("fine"));
}

#[test]
fn output_over_the_hard_bound_is_closed_with_1008_without_waiting_for_the_timeout() {
    let mut cfg = test_config();
    cfg.backpressure.soft_bytes = 256 << 10;
    cfg.backpressure.hard_bytes = 1 << 20;
    cfg.backpressure.timeout = Duration::from_secs(60);
    let rec = std::sync::Arc::new(RecordingEcho::default());
    let server = Server::new(cfg).unwrap().with_handler(Flood(rec.clone()));
    server.start().unwrap();
    let addr = server.local_addr().unwrap();

    let mut s = raw_ws(addr);
    socket2::SockRef::from(&s)
        .set_recv_buffer_size(4096)
        .unwrap();
    use std::io::Write;
    s.write_all(&frame(true, 0x1, b"huge")).unwrap();
    // 8 MiB queued against a 1 MiB hard bound: closed at the next tick, not after 60 s.
    rec.wait_for(Duration::from_secs(5), "on_close 1008", |r| {
        r.closes.iter().any(|c| c.1 == 1008)
    });
    wait_until(Duration::from_secs(5), "session count 0", || {
        server.session_count() == 0
    });
}
