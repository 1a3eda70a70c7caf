//! Many small echoes to a client that reads only later: the server's sends hit a full socket
//! (partial writes, `EAGAIN`; with io_uring, short ring sends whose rest must go back in front of
//! the output queued behind them), it stops reading the client at the soft bound, and once the
//! client reads, every echo arrives complete and in order.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn small_echoes_to_a_late_reader_arrive_complete_and_in_order() {
    let mut cfg = test_config();
    cfg.num_workers = 1;
    cfg.backpressure.soft_bytes = 64 << 10;
    let (server, _rec) = start_echo(cfg);
    let addr = server.local_addr().unwrap();

    const MESSAGES: usize = 40_000;
    let payload = |i: usize| -> Vec<u8> {
        let len = 1 + (i * 7919) % 300;
        let mut p = (i as u32).to_be_bytes().to_vec();
        p.extend((0..len).map(|k| (i + k) as u8));
        p
    };
    let mut reader = raw_ws(addr);
    reader.set_read_timeout(Some(T)).unwrap();
    let mut writer = reader.try_clone().unwrap();
    // ~6 MiB of frames in 2 KiB writes: far more than the socket buffers on both sides hold, so
    // the writer blocks until the reader drains.
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(4 << 10);
        for i in 0..MESSAGES {
            batch.extend_from_slice(&frame(true, 0x2, &payload(i)));
            if batch.len() > 2 << 10 || i + 1 == MESSAGES {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
    });
    // Let the server fill the client's socket and run into backpressure first.
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..MESSAGES {
        let (fin, opcode, got) = read_frame(&mut reader);
        assert!(
            fin && opcode == 0x2,
            "message {i}: fin {fin}, opcode {opcode}"
        );
        assert!(got == payload(i), "message {i} is wrong or out of order");
    }
    sender.join().unwrap();
    assert_eq!(
        server.session_count(),
        1,
        "the late reader was held back, not dropped"
    );
}
