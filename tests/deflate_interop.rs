//! permessage-deflate with a real client that negotiates it: Python `websockets` (Debian's
//! python3-websockets, which offers `permessage-deflate; client_max_window_bits` on every
//! connection), against the kernel path in both modes. Text (JSON) and binary messages from
//! 30 bytes to 1 MiB, three rounds on one connection: in dedicated mode the contexts carry over
//! from message to message both ways, so a context that went wrong on either side would
//! corrupt a later message. The DPDK path runs the raw-frame scenario of `tests/conformance.rs`.

mod common;

use std::process::Command;

use hioload_ws::DeflateMode;

const CLIENT: &str = r#"
import asyncio, json, sys, websockets

async def main(uri):
    async with websockets.connect(uri, max_size=32 * 2**20) as ws:
        names = [e.name for e in ws.extensions]
        assert names == ["permessage-deflate"], names
        header = ws.response_headers.get("Sec-WebSocket-Extensions")
        msgs = [json.dumps([{"id": i, "name": "user%d" % (i % 7), "ok": True} for i in range(n)])
                for n in (1, 50, 5000)]
        msgs.append(bytes(range(256)) * 4096)
        for round in range(3):
            for m in msgs:
                await ws.send(m)
                got = await ws.recv()
                assert got == m, (round, len(m), len(got))
        print("OK", header)

asyncio.run(main(sys.argv[1]))
"#;

/// The system Python, which the distribution's python3-websockets belongs to.
const PYTHON: &str = "/usr/bin/python3";

fn run_client(mode: DeflateMode) -> String {
    let mut cfg = common::test_config();
    cfg.deflate.mode = mode;
    let (server, _rec) = common::start_echo(cfg);
    let uri = format!("ws://{}/ws", server.local_addr().unwrap());
    let out = Command::new(PYTHON)
        .args(["-c", CLIENT, &uri])
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e} (apt-get install python3 python3-websockets)"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python websockets client failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The counters (published at each worker's tick): 12 messages each way, 9 of them (three
    // rounds of the 3 long ones) compressed by the server; what came in inflated to more.
    let mut d = hioload_ws::DeflateStats::default();
    common::wait_until(common::T, "deflate counters", || {
        d = server
            .worker_stats()
            .unwrap()
            .iter()
            .fold(Default::default(), |mut a, w| {
                a.sessions += w.deflate.sessions;
                a.messages_in += w.deflate.messages_in;
                a.bytes_in += w.deflate.bytes_in;
                a.bytes_inflated += w.deflate.bytes_inflated;
                a.messages_out += w.deflate.messages_out;
                a.bytes_raw_out += w.deflate.bytes_raw_out;
                a.bytes_out += w.deflate.bytes_out;
                a.messages_plain_out += w.deflate.messages_plain_out;
                a
            });
        d.messages_out + d.messages_plain_out >= 12
    });
    assert_eq!(d.sessions, 1, "{d:?}");
    assert_eq!(d.messages_out, 9, "{d:?}");
    assert_eq!(d.messages_plain_out, 3, "{d:?}");
    assert!(
        d.messages_in >= 9 && d.bytes_inflated > 2 * d.bytes_in,
        "{d:?}"
    );
    assert!(d.bytes_out * 2 < d.bytes_raw_out, "{d:?}");
    server.stop();
    stdout
}

#[test]
fn python_websockets_in_shared_mode() {
    let out = run_client(DeflateMode::Shared);
    assert_eq!(
        out.trim(),
        "OK permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
}

#[test]
fn python_websockets_in_dedicated_mode_keeps_contexts() {
    let out = run_client(DeflateMode::Dedicated { window_bits: 15 });
    assert_eq!(
        out.trim(),
        "OK permessage-deflate; client_max_window_bits=15"
    );
}

#[test]
fn python_websockets_with_a_small_window() {
    let out = run_client(DeflateMode::Dedicated { window_bits: 10 });
    assert_eq!(
        out.trim(),
        "OK permessage-deflate; server_max_window_bits=10; client_max_window_bits=10"
    );
}

/// A broadcast to sessions that negotiated permessage-deflate (shared mode) is compressed once
/// per worker: every session gets the same compressed frame, which inflates to the message.
#[test]
fn a_broadcast_is_compressed_once_per_worker() {
    use std::io::Write;
    let mut cfg = common::test_config();
    cfg.num_workers = 1;
    let (server, _rec) = common::start_echo(cfg);
    let addr = server.local_addr().unwrap();
    let offer = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        common::KEY
    );
    let mut clients: Vec<_> = (0..5)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(common::T)).unwrap();
            s.write_all(offer.as_bytes()).unwrap();
            let head = common::read_head(&mut s);
            assert!(head.contains("permessage-deflate"), "{head}");
            s
        })
        .collect();
    common::wait_until(common::T, "5 sessions", || server.sessions().len() == 5);
    let text: String = (0..3000)
        .map(|i| format!("{{\"tick\":{i},\"px\":{}}},", i % 17))
        .collect();
    assert!(server.broadcast(hioload_ws::Message::Text(&text)).unwrap() >= 1);
    let mut frames = Vec::new();
    for s in &mut clients {
        let (fin, opcode, payload) = common::read_frame_rsv(s);
        assert_eq!((fin, opcode), (true, 0x41), "a compressed text frame");
        frames.push(payload);
    }
    assert!(
        frames.windows(2).all(|w| w[0] == w[1]),
        "the same bytes for everyone"
    );
    let mut d = flate2::Decompress::new(false);
    let mut input = frames[0].clone();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(text.len() + 1);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .unwrap();
    assert_eq!(out, text.as_bytes());
    let mut reuses = 0;
    common::wait_until(common::T, "the deflate counters", || {
        let w = &server.worker_stats().unwrap()[0];
        reuses = w.deflate.broadcast_reuses;
        w.deflate.messages_out == 5
    });
    assert_eq!(
        reuses, 4,
        "compressed once, reused for the 4 other sessions"
    );
    server.stop();
}
