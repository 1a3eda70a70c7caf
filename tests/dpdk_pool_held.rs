//! Held input on the DPDK data path lives in the connection's own storage, sized to what it
//! holds (the session layer's `HeldInput`), not in a pool buffer that trickling peers could
//! drain: a frame split across two segments is echoed intact; while its first part waits, the
//! worker's memory gauge counts those bytes and no pool buffer is in use; once the connection is
//! gone, nothing is held.
//!
//! One EAL per process: this file holds exactly one test. Needs root (hugepages, tap, netns).

#![cfg(feature = "dpdk")]

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dpdk::{ws_client, TapNet};
use common::frame;
use hioload_ws::{Ctx, Handler, Message, Server};

struct Echo;

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = ctx.send(msg);
    }
}

/// Waits (at most 5 s) until `cond` holds; returns whether it did.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Bytes the workers' connections hold (published at each worker's tick).
fn held(server: &Server) -> usize {
    server
        .worker_stats()
        .unwrap()
        .iter()
        .map(|w| w.memory)
        .sum()
}

#[test]
fn a_frame_split_across_segments_is_held_by_its_connection_and_echoed_intact() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let net = TapNet::create('h');
    let server = Arc::new(
        Server::new(net.config("0@0", 256))
            .unwrap()
            .with_handler(Echo),
    );
    server.start().expect("the DPDK path starts");
    net.attach_tap();
    assert_eq!(server.pool_stats().expect("running").in_use(), 0);

    let outside = server.clone();
    let (held_while_partial, pool_while_partial, echoed, after_close) = net.in_ns(move || {
        let mut ws = ws_client(Duration::from_secs(5));
        ws.get_ref().set_nodelay(true).unwrap();
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let frame = frame(true, 2, &payload);
        // First the header and part of the payload: the session cannot finish the frame, so
        // the connection holds it.
        ws.get_mut().write_all(&frame[..1200]).unwrap();
        let held_while_partial = eventually(|| held(&outside) >= 1200);
        let pool_while_partial = outside.pool_stats().unwrap().in_use();
        std::thread::sleep(Duration::from_millis(50));
        ws.get_mut().write_all(&frame[1200..]).unwrap();
        let echoed = ws.read().unwrap();
        // Hold another partial frame, then close the connection under it.
        ws.get_mut().write_all(&frame[..500]).unwrap();
        assert!(eventually(|| held(&outside) >= 500));
        drop(ws);
        let after_close = eventually(|| held(&outside) == 0);
        (
            held_while_partial,
            pool_while_partial,
            echoed.into_data(),
            after_close,
        )
    });
    assert!(
        held_while_partial,
        "the partial frame's bytes are counted while it waits"
    );
    assert_eq!(pool_while_partial, 0, "no pool buffer is held for it");
    let expected: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    assert_eq!(&echoed[..], &expected[..], "echoed intact");
    assert!(after_close, "nothing held after the connection closed");
    server.shutdown().unwrap();
    assert_eq!(server.pool_stats().unwrap().in_use(), 0);
}
