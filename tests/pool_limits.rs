//! Receive buffers come from the NUMA pool, within its limits: with room for a single receive
//! buffer, a connection holding a partial frame keeps it, another connection's read waits (it is
//! not dropped, and nothing is allocated outside the pool), and is served once the buffer is back.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use hioload_ws::pool::PoolConfig;

#[test]
fn an_exhausted_pool_defers_reads_instead_of_failing_them() {
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

    // A 10 KB frame, of which only the first 1,000 bytes arrive: the holder keeps the buffer.
    let big = frame(true, 0x2, &[9u8; 10_000]);
    holder.write_all(&big[..1000]).unwrap();
    wait_until(T, "the buffer held", || {
        server.pool_stats().unwrap().in_use() == 1
    });

    waiter.write_all(&frame(true, 0x1, b"wait for me")).unwrap();
    wait_until(T, "a deferred read", || {
        server.worker_stats().unwrap()[0].buffer_waits >= 1
    });
    waiter
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        waiter.read(&mut byte).is_err(),
        "no answer while the only buffer is held"
    );
    assert!(
        server.pool_stats().unwrap().exhausted() >= 1,
        "counted as exhaustion"
    );

    // The rest of the frame: the holder's echo, the buffer goes back, the waiter is served.
    holder.write_all(&big[1000..]).unwrap();
    let (_, opcode, payload) = read_frame(&mut holder);
    assert_eq!((opcode, payload.len()), (0x2, 10_000));
    waiter
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (_, opcode, payload) = read_frame(&mut waiter);
    assert_eq!((opcode, payload.as_slice()), (0x1, &b"wait for me"[..]));
    assert_eq!(server.session_count(), 2, "nobody was dropped");
    // Back, but for the one lent to the worker's io_uring ring (none with the poll backend).
    wait_until(T, "every buffer back", || {
        let lent: usize = server
            .worker_stats()
            .unwrap()
            .iter()
            .map(|w| w.ring_buffers)
            .sum();
        server.pool_stats().unwrap().in_use() == lent as u64
    });
}
