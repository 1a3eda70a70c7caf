//! Held input on the DPDK data path comes from the lcores' pools, over DPDK memory: a frame split
//! across two segments is echoed intact; while its first part waits, a pool buffer is in use (in
//! `Server::pool_stats` and in `/debug/probes`); once the connection is gone, none is.
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

/// The `"in_use"` of the `"pool"` member of `/debug/probes`.
fn probe_in_use(server: &Server) -> u64 {
    let probes: serde_json::Value = serde_json::from_str(&server.probes_json()).unwrap();
    probes["pool"]["in_use"]
        .as_u64()
        .expect("pool.in_use in /debug/probes")
}

#[test]
fn a_frame_split_across_segments_is_held_in_a_pool_buffer_and_echoed_intact() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let net = TapNet::create('h');
    let server = Arc::new(
        Server::new(net.config("0@0", 256))
            .unwrap()
            .with_handler(Echo),
    );
    server.start().expect("the DPDK path starts");
    net.attach_tap();

    // The lcore's pool: DPDK memory of its socket, warmed at start, nothing in use.
    let stats = server.pool_stats().expect("running");
    assert_eq!(stats.nodes.len(), 1, "{stats:?}");
    let node = &stats.nodes[0];
    assert!(
        node.reserved_bytes > 0,
        "one slab taken at start: {stats:?}"
    );
    assert_eq!(node.bound_bytes, node.reserved_bytes, "hugepage memory");
    assert_eq!(stats.in_use(), 0);
    // /metrics reports the same pool.
    let metrics = server.metrics_text();
    let label = format!("hioload_pool_reserved_bytes{{node=\"{}\"}}", node.node);
    let reserved: f64 = metrics
        .lines()
        .find(|l| l.starts_with(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{label} in /metrics:\n{metrics}"));
    assert_eq!(reserved as usize, node.reserved_bytes);

    let outside = server.clone();
    let (held_in_stats, held_in_probe, echoed, after_close) = net.in_ns(move || {
        let mut ws = ws_client(Duration::from_secs(5));
        ws.get_ref().set_nodelay(true).unwrap();
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let frame = frame(true, 2, &payload);
        // First the header and part of the payload: the session cannot finish the frame, so
        // the driver holds it.
        ws.get_mut().write_all(&frame[..1200]).unwrap();
        let held_in_stats = eventually(|| outside.pool_stats().unwrap().in_use() == 1);
        let held_in_probe = probe_in_use(&outside);
        std::thread::sleep(Duration::from_millis(50));
        ws.get_mut().write_all(&frame[1200..]).unwrap();
        let echoed = ws.read().unwrap();
        // The frame is done: its buffer went back.
        let back = eventually(|| outside.pool_stats().unwrap().in_use() == 0);
        assert!(back, "held buffer given back once the frame completed");
        // Hold another partial frame, then close the connection under it.
        ws.get_mut().write_all(&frame[..500]).unwrap();
        assert!(eventually(|| outside.pool_stats().unwrap().in_use() == 1));
        drop(ws);
        let after_close = eventually(|| outside.pool_stats().unwrap().in_use() == 0);
        (
            held_in_stats,
            held_in_probe,
            echoed.into_data(),
            after_close,
        )
    });
    assert!(
        held_in_stats,
        "a pool buffer in use while the partial frame waits"
    );
    assert_eq!(held_in_probe, 1, "and /debug/probes says so");
    let expected: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    assert_eq!(&echoed[..], &expected[..], "echoed intact");
    assert!(
        after_close,
        "no buffer in use after the connection closed: {:?}",
        server.pool_stats()
    );
    let stats = server.pool_stats().unwrap();
    assert!(stats.hits() + stats.misses() >= 3, "{stats:?}");
    server.shutdown().unwrap();
    // After the stop the slabs went back to DPDK (before the EAL was cleaned up).
    let stats = server.pool_stats().unwrap();
    assert_eq!(stats.in_use(), 0);
    assert_eq!(stats.nodes[0].reserved_bytes, 0, "{stats:?}");
}
