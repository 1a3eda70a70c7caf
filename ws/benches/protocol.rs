//! ws/ micro-benchmarks: a plain bench binary (no timed assertions) printing throughput and
//! latency of the hot paths:
//!
//! * unmask (`mask::apply_mask`) on 16 B, 1 KiB, 64 KiB;
//! * decode + unmask of one whole masked frame through `Session::receive` (the real server path);
//! * whole decode of a 20-byte frame, in ns (target ≤ 25 ns);
//! * UTF-8 validation (`Utf8Validator::feed`) on ASCII and on mixed-script text;
//! * handshake parse + 101 answer, per request.
//!
//! Run: `cargo bench -p hioload-wsproto --bench protocol`. Each figure is the best of 7 runs of
//! ~100 ms, which filters out the noise of a shared machine.

use std::hint::black_box;
use std::time::{Duration, Instant};

use hioload_wsproto::frame::encode_client_frame;
use hioload_wsproto::handshake::{parse_request, respond, Parsed, UpgradePolicy};
use hioload_wsproto::mask::apply_mask;
use hioload_wsproto::utf8::Utf8Validator;
use hioload_wsproto::{Event, FrameSink, Limits, OpCode, Session};

/// Discards frames (nothing is sent on these paths anyway).
struct NullSink;
impl FrameSink for NullSink {
    fn send_frame(&mut self, header: &[u8], payload: &[u8]) {
        black_box((header, payload));
    }
}

/// Best seconds per call of `f`, over 7 runs of about 100 ms each.
fn time_per_call(mut f: impl FnMut()) -> f64 {
    // Calibrate: how many calls take ~100 ms.
    let mut calls = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        if t.elapsed() > Duration::from_millis(20) {
            calls *= 5;
            break;
        }
        calls *= 2;
    }
    (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            t.elapsed().as_secs_f64() / calls as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent; keep that quick.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("ws/ micro-benchmarks (best of 7 runs)");
    println!("{:<44} {:>12} {:>12}", "benchmark", "GB/s", "ns/op");
    let row = |name: &str, bytes: usize, secs: f64| {
        if bytes > 0 {
            println!(
                "{name:<44} {:>12.2} {:>12.1}",
                gbps(bytes, secs),
                secs * 1e9
            );
        } else {
            println!("{name:<44} {:>12} {:>12.1}", "-", secs * 1e9);
        }
    };

    let key = [0x37, 0xfa, 0x21, 0x3d];
    for size in [16usize, 1024, 64 << 10] {
        let mut buf = vec![0xA5u8; size + 1];
        let aligned = time_per_call(|| {
            black_box(apply_mask(black_box(&mut buf[..size]), key, 0));
        });
        row(&format!("unmask {size} B"), size, aligned);
        let unaligned = time_per_call(|| {
            black_box(apply_mask(black_box(&mut buf[1..size + 1]), key, 1));
        });
        row(
            &format!("unmask {size} B (unaligned, phase 1)"),
            size,
            unaligned,
        );
    }

    let mut session = Session::new(Limits::default());
    for size in [16usize, 1024, 64 << 10] {
        let mut frame = Vec::new();
        encode_client_frame(OpCode::Binary, true, &vec![7u8; size], key, &mut frame);
        // Each call unmasks in place, so the payload alternates; for binary that is fine.
        let secs = time_per_call(|| {
            let consumed = session
                .receive(black_box(&mut frame), &mut NullSink, |ev, _| {
                    if let Event::Binary(b) = ev {
                        black_box(b.len());
                    }
                })
                .unwrap();
            black_box(consumed);
        });
        row(
            &format!("decode+unmask {size} B frame (Session)"),
            size,
            secs,
        );
    }

    let mut frame = Vec::new();
    encode_client_frame(OpCode::Binary, true, &[1u8; 14], key, &mut frame);
    assert_eq!(frame.len(), 20);
    let secs = time_per_call(|| {
        let consumed = session
            .receive(black_box(&mut frame), &mut NullSink, |ev, _| {
                black_box(&ev);
            })
            .unwrap();
        black_box(consumed);
    });
    row("whole decode of a 20-byte frame (Session)", 0, secs);

    let ascii: Vec<u8> = (0..64 << 10).map(|i| b' ' + (i % 90) as u8).collect();
    let mixed: Vec<u8> = "hello κόσμε – 世界 🚀 ".repeat(3000).into_bytes()[..60_000].to_vec();
    let mixed_len = match std::str::from_utf8(&mixed) {
        Ok(_) => mixed.len(),
        Err(e) => e.valid_up_to(),
    };
    let mixed = &mixed[..mixed_len];
    for (name, text) in [
        ("utf8 validate 64 KiB ascii", &ascii[..]),
        ("utf8 validate 60 KB mixed scripts", mixed),
    ] {
        let mut v = Utf8Validator::new();
        let secs = time_per_call(|| {
            v.feed(black_box(text)).unwrap();
            v.finish().unwrap();
        });
        row(name, text.len(), secs);
    }
    // Incremental: the same ASCII text in 1 KiB fragments.
    let mut v = Utf8Validator::new();
    let secs = time_per_call(|| {
        for piece in ascii.chunks(1024) {
            v.feed(black_box(piece)).unwrap();
        }
        v.finish().unwrap();
    });
    row(
        "utf8 validate 64 KiB ascii in 1 KiB pieces",
        ascii.len(),
        secs,
    );

    struct Open;
    impl UpgradePolicy for Open {}
    let request = b"GET /ws HTTP/1.1\r\nHost: localhost:9001\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nUser-Agent: bench\r\n\r\n";
    let limits = Limits::default();
    let mut out = [0u8; 512];
    let secs = time_per_call(|| {
        let Parsed::Upgrade(req) = parse_request(black_box(request), &limits) else {
            unreachable!()
        };
        let (n, accepted) = respond(&req, &Open, &mut out);
        black_box((n, accepted.is_ok()));
    });
    row("handshake parse + 101 answer", 0, secs);
}
