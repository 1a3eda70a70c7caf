//! Receive buffers come from the NUMA pool, and no connection keeps one between reads: with a
//! pool of a single receive buffer, a connection holding a partial frame holds only those bytes
//! (in its own storage), and another connection is served at once.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use hioload_ws::pool::PoolConfig;

#[test]
fn a_partial_frame_holds_no_pool_buffer_and_others_are_served() {
    let mut cfg = test_config();
    cfg.num_workers = 1;
    cfg.pool = PoolConfig {
        min_buffer: 2 << 10,
        max_buffer: 64 << 10,
        node_budget: 64 << 10, // one 64 KiB receive buffer per node
        slab_bytes: 64 << 10,
        ..PoolConfig::default()
    };
    let (server, _rec) = start_echo(cfg);
    let addr = server.local_addr().unwrap();
    let nodes = server.pool_stats().unwrap().nodes.len();
    assert_eq!(nodes, 1, "this test assumes a one-node machine");

    let mut holder = raw_ws(addr);
    let mut waiter = raw_ws(addr);
    wait_until(T, "both open", || server.session_count() == 2);

    // A 10 KB frame, of which only the first 1,000 bytes arrive: the holder keeps those bytes.
    let big = frame(true, 0x2, &[9u8; 10_000]);
    holder.write_all(&big[..1000]).unwrap();
    wait_until(T, "the partial frame held", || {
        server.worker_stats().unwrap()[0].memory >= 1000
    });
    let lent = || -> u64 {
        server
            .worker_stats()
            .unwrap()
            .iter()
            .map(|w| w.ring_buffers as u64)
            .sum()
    };
    assert_eq!(
        server.pool_stats().unwrap().in_use(),
        lent(),
        "no pool buffer is held for the partial frame (only the io_uring ring's, if any)"
    );

    // The other connection is served while the partial frame waits.
    waiter
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    waiter.write_all(&frame(true, 0x1, b"not blocked")).unwrap();
    let (_, opcode, payload) = read_frame(&mut waiter);
    assert_eq!((opcode, payload.as_slice()), (0x1, &b"not blocked"[..]));

    // The rest of the frame: the holder's echo.
    holder.write_all(&big[1000..]).unwrap();
    let (_, opcode, payload) = read_frame(&mut holder);
    assert_eq!((opcode, payload.len()), (0x2, 10_000));
    assert_eq!(server.session_count(), 2, "nobody was dropped");
    wait_until(T, "nothing held", || {
        server.worker_stats().unwrap()[0].memory < 1000
    });
}
