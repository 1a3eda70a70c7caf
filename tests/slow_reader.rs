//! A client that sends without ever reading: the server must stop reading it once its pending
//! output passes the soft bound, so that its memory stays bounded, and must keep serving the other
//! clients of the same worker at full speed. (Alone in this file so that the process RSS measured
//! is this test's.)

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[test]
fn a_client_that_never_reads_neither_grows_memory_nor_stalls_others() {
    let mut cfg = test_config();
    cfg.num_workers = 1; // the slow client shares the worker with everyone else
    cfg.backpressure.soft_bytes = 256 << 10;
    cfg.backpressure.hard_bytes = 1 << 20;
    let (server, _rec) = start_echo(cfg);
    let addr = server.local_addr().unwrap();

    // Warm up: the others do a first echo, so buffers and threads exist before the baseline.
    let mut others: Vec<_> = (0..10).map(|_| client(addr, "/ws")).collect();
    for ws in &mut others {
        ws.send(Message::binary(vec![1u8; 4096])).unwrap();
        ws.read().unwrap();
    }
    let baseline = rss_bytes();

    // The slow client: 64 KiB messages, as fast as the kernel lets it, for 3 s or 1 GiB.
    let slow = std::thread::spawn(move || {
        let mut s = raw_ws(addr);
        s.set_nonblocking(true).unwrap();
        let msg = frame(true, 0x2, &vec![0x5a; 64 << 10]);
        let mut pushed = 0usize;
        let mut off = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) && pushed < 1 << 30 {
            match s.write(&msg[off..]) {
                Ok(n) => {
                    pushed += n;
                    off = (off + n) % msg.len();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("slow client write failed: {e}"),
            }
        }
        (s, pushed)
    });

    // Meanwhile the others keep echoing on the same worker.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for round in 0..200 {
        for (i, ws) in others.iter_mut().enumerate() {
            let m = Message::binary(vec![(i + round) as u8; 1024 + round]);
            ws.send(m.clone()).unwrap();
            assert_eq!(ws.read().unwrap(), m);
        }
    }
    let others_took = started.elapsed();
    let (slow_sock, pushed) = slow.join().unwrap();
    let grown = rss_bytes().saturating_sub(baseline);
    eprintln!(
        "slow client pushed {} KiB; others' 2000 echoes took {others_took:?}; RSS grew {} KiB",
        pushed >> 10,
        grown >> 10
    );

    assert!(
        others_took < Duration::from_secs(20),
        "others were stalled: {others_took:?}"
    );
    assert!(
        pushed < 128 << 20,
        "the server kept reading a client that does not read ({} MiB)",
        pushed >> 20
    );
    assert!(
        grown < 48 << 20,
        "server memory grew by {} MiB",
        grown >> 20
    );
    assert_eq!(
        server.session_count(),
        11,
        "the slow client is held back, not dropped"
    );
    drop(slow_sock);
}
