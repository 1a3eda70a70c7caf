//! The compressed-echo loop (`--deflate`) against the hioload-ws server in-process, in each of
//! its permessage-deflate modes: every echo inflated and verified, and the bytes on the wire
//! counted (compressed modes must put fewer bytes on the wire than the JSON-like text itself).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hioload_bench::connect::Target;
use hioload_bench::deflate::{self, TextRing};
use hioload_bench::deflate_load;
use hioload_bench::load::{self, ThreadStats};
use hioload_bench::pattern::Framing;
use hioload_bench::wire::DataKind;
use hioload_ws::{Config, Ctx, DeflateConfig, DeflateMode, Handler, Message, Server};

struct Echo;

impl Handler for Echo {
    fn on_message(&self, ctx: &mut Ctx<'_>, msg: Message<'_>) {
        let _ = ctx.send(msg);
    }
}

/// Starts an echo server in `mode` (threshold 0: everything compressed) and runs `connections`
/// compressed-echo connections briefly; returns what the server agreed and what was measured.
fn run(
    mode: DeflateMode,
    connections: usize,
    size: usize,
    pipeline: usize,
) -> (String, ThreadStats) {
    let server = Server::new(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        num_workers: 1,
        cpu_affinity: false,
        deflate: DeflateConfig {
            mode,
            threshold: 0,
            ..DeflateConfig::default()
        },
        ..Config::default()
    })
    .unwrap()
    .with_handler(Echo);
    server.start().unwrap();
    let target = Target {
        addr: server.local_addr().unwrap(),
        path: "/ws".into(),
        framing: Framing::WebSocket(DataKind::Text),
        sources: 1,
    };
    let mut answers = Vec::new();
    let streams = (0..connections)
        .map(|i| {
            let (stream, answer) = target.open_offering(i, Some(deflate::OFFER)).unwrap();
            let agreed = deflate::parse_answer(answer.as_deref()).unwrap();
            answers.push(agreed.map_or("none".into(), |a| a.describe()));
            (i, stream, agreed)
        })
        .collect();
    let ring = Arc::new(TextRing::new(size, deflate::ring_messages(pipeline, size)));
    let phase = Arc::new(AtomicU8::new(load::WARMUP));
    let thread = {
        let phase = phase.clone();
        std::thread::spawn(move || deflate_load::run_thread(streams, ring, pipeline, phase))
    };
    std::thread::sleep(Duration::from_millis(100));
    phase.store(load::MEASURE, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(400));
    phase.store(load::DONE, Ordering::Relaxed);
    let stats = thread.join().unwrap().unwrap();
    server.stop();
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    (answers[0].clone(), stats)
}

#[test]
fn every_mode_echoes_verified_compressed_text() {
    for (mode, agreed) in [
        (
            DeflateMode::Shared,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            DeflateMode::Dedicated { window_bits: 10 },
            "permessage-deflate; server_max_window_bits=10; client_max_window_bits=10",
        ),
        (
            DeflateMode::Dedicated { window_bits: 15 },
            "permessage-deflate",
        ),
        (DeflateMode::Off, "none"),
    ] {
        for (size, pipeline) in [(1024, 1), (16384, 4)] {
            let (answer, stats) = run(mode, 3, size, pipeline);
            let what = format!("{mode} {size} B × {pipeline}");
            assert_eq!(answer, agreed, "{what}");
            assert_eq!(stats.errors, 0, "{what}: {:?}", stats.error_texts);
            assert!(stats.messages > 10, "{what}: {} echoes", stats.messages);
            let out = stats.wire_out as f64 / stats.wire_out_messages as f64;
            let echoed = stats.wire_in as f64 / stats.messages as f64;
            let header = if size < 126 {
                6
            } else if size < 65536 {
                8
            } else {
                14
            };
            if mode == DeflateMode::Off {
                assert_eq!(out, (size + header) as f64, "{what}");
                assert_eq!(echoed, (size + header - 4) as f64, "{what}");
            } else {
                // JSON-like text shrinks at least 2× at 1 KiB, more at 16 KiB.
                assert!(out < size as f64 / 2.0, "{what}: {out} B sent");
                assert!(echoed < size as f64 / 2.0, "{what}: {echoed} B echoed");
            }
        }
    }
}
