//! Many connections at once: 1,000 concurrent sessions each echoing 100 messages (text and
//! binary, sizes from 1 byte to 3 KiB), every byte checked. A handful of client threads drive
//! them in rounds (send one message on every connection, then read every echo), so all 1,000 are
//! open and active together. Bounded in time by socket read timeouts and a deadline.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hioload_ws::IoBackend;
use tungstenite::Message;

const CONNS: usize = 1000;
const MESSAGES: usize = 100;
const THREADS: usize = 8;

fn payload(conn: usize, round: usize) -> Message {
    let len = 1 + (conn * 31 + round * 17) % 3000;
    let seed = (conn * 7919 + round * 104_729) as u32;
    if (conn + round) % 2 == 0 {
        let text: String = (0..len)
            .map(|i| (b'a' + ((seed as usize + i) % 26) as u8) as char)
            .collect();
        Message::text(text)
    } else {
        let bin: Vec<u8> = (0..len)
            .map(|i| (seed.wrapping_mul(2_654_435_761).wrapping_add(i as u32) >> 7) as u8)
            .collect();
        Message::binary(bin)
    }
}

#[test]
fn a_thousand_connections_each_echo_a_hundred_messages() {
    hioload_ws::raise_fd_limit().unwrap();
    let (server, rec) = start_echo(test_config());
    let addr = server.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);

    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let ids: Vec<usize> = (t..CONNS).step_by(THREADS).collect();
                let mut conns: Vec<_> = ids.iter().map(|_| client(addr, "/ws")).collect();
                barrier.wait(); // every connection of every thread is open
                barrier.wait(); // the main thread has checked the session count
                for round in 0..MESSAGES {
                    for (ws, &id) in conns.iter_mut().zip(&ids) {
                        ws.send(payload(id, round)).unwrap();
                    }
                    for (ws, &id) in conns.iter_mut().zip(&ids) {
                        let got = ws
                            .read()
                            .unwrap_or_else(|e| panic!("conn {id} round {round}: {e}"));
                        assert!(
                            got == payload(id, round),
                            "conn {id} round {round}: echo differs"
                        );
                    }
                    assert!(Instant::now() < deadline, "load test over its time bound");
                }
                for ws in &mut conns {
                    ws.close(None).unwrap();
                }
                for ws in &mut conns {
                    while ws.read().is_ok() {}
                }
                ids.len() * MESSAGES
            })
        })
        .collect();
    let t0 = Instant::now();
    barrier.wait();
    eprintln!("{CONNS} connections open in {:?}", t0.elapsed());
    assert_eq!(
        server.session_count(),
        CONNS,
        "all connections open at once"
    );
    let t1 = Instant::now();
    barrier.wait();
    let echoed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("{echoed} echoes checked in {:?}", t1.elapsed());
    assert_eq!(echoed, CONNS * MESSAGES);
    rec.wait_for(Duration::from_secs(30), "every close", |r| {
        r.closes.len() == CONNS
    });
    assert!(
        rec.close_codes().iter().all(|&c| c == 1005),
        "clients closed without a code"
    );
    wait_until(Duration::from_secs(10), "session count 0", || {
        server.session_count() == 0
    });

    let pools = server.pool_stats().unwrap();
    if server.io_backend() == Some(IoBackend::Poll) {
        // The poll backend reads into each worker's own input buffer: no pool buffer per read,
        // and none held between reads.
        assert_eq!(pools.in_use(), 0, "{pools:?}");
        assert_eq!(
            pools.hits() + pools.misses(),
            0,
            "no pool buffer per read: {pools:?}"
        );
    } else {
        // io_uring: the reads were served by the buffers lent to the kernel's rings, and every
        // other buffer came back to the pool.
        let lent = || -> usize {
            let stats = server.worker_stats().unwrap();
            stats.iter().map(|w| w.ring_buffers).sum()
        };
        assert!(lent() > 0, "the rings hold buffers: {pools:?}");
        wait_until(
            Duration::from_secs(10),
            "every pool buffer returned but those lent to the rings",
            || server.pool_stats().unwrap().in_use() == lent() as u64,
        );
    }
}
