//! One conformance suite for both data paths: every scenario below is one function, run against
//! the kernel path (on the I/O backend `HIOLOAD_TEST_IO` names; `scripts/test.sh` runs this file
//! on both) and against the DPDK path over net_tap, its clients in a network namespace. The
//! session layer is shared, so the behaviour must be the same; these tests keep it so.
//!
//! Each scenario sets what it needs with a live reload (itself part of what is checked: a limit
//! lowered by a reload governs the next message) and restores the start configuration. The DPDK
//! path runs one EAL per process, so its test runs every scenario in turn on one server; the
//! kernel tests get a server each. (The same stop through SIGTERM in `hioload-echo` is tested on
//! both paths by its own tests: `apps/hioload-echo/tests/binary.rs` and `dpdk_echo.rs`.)

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{frame, read_frame, upgrade_request, RecordingEcho, KEY};
use hioload_ws::{Config, Message, Server};
use tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tungstenite::{Error as WsError, Message as WsMessage, WebSocket};

/// A running server of either data path and how its clients reach it.
struct Target {
    server: Arc<Server>,
    rec: Arc<RecordingEcho>,
    base: Config,
    #[cfg(feature = "dpdk")]
    net: Option<common::dpdk::TapNet>,
}

impl Target {
    /// The kernel path on loopback.
    fn kernel() -> Target {
        let base = common::test_config();
        let (server, rec) = common::start_echo(base.clone());
        Target {
            server: Arc::new(server),
            rec,
            base,
            #[cfg(feature = "dpdk")]
            net: None,
        }
    }

    /// The DPDK path over net_tap, one lcore.
    #[cfg(feature = "dpdk")]
    fn dpdk() -> Target {
        let net = common::dpdk::TapNet::create('c');
        let base = net.config("0@0", 256);
        let (server, rec) = common::start_echo(base.clone());
        net.attach_tap();
        Target {
            server: Arc::new(server),
            rec,
            base,
            net: Some(net),
        }
    }

    /// Runs `f` as a client of the server (inside the namespace on the DPDK path).
    fn client<R: Send + 'static>(&self, f: impl FnOnce(SocketAddr) -> R + Send + 'static) -> R {
        let addr = self.server.local_addr().unwrap();
        #[cfg(feature = "dpdk")]
        if let Some(net) = &self.net {
            return net.in_ns(move || f(addr));
        }
        std::thread::spawn(move || f(addr)).join().unwrap()
    }

    /// Reloads the running configuration changed by `change`, and gives every worker time to
    /// start a loop turn with it.
    fn reload(&self, change: impl FnOnce(&mut Config)) {
        let mut cfg = self.server.config();
        change(&mut cfg);
        self.server.reload(cfg).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Back to the start configuration.
    fn restore(&self) {
        self.server.reload(self.base.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Close codes the handler saw from the `from`-th close on, waiting until `pred` holds.
    fn closes_since(&self, from: usize, what: &str, pred: impl Fn(&[u16]) -> bool) -> Vec<u16> {
        self.rec.wait_for(Duration::from_secs(10), what, |r| {
            pred(&codes(&r.closes[from.min(r.closes.len())..]))
        });
        let r = self.rec.record.lock().unwrap();
        codes(&r.closes[from..])
    }

    fn closes_so_far(&self) -> usize {
        self.rec.record.lock().unwrap().closes.len()
    }
}

fn codes(closes: &[(u64, u16, String)]) -> Vec<u16> {
    closes.iter().map(|c| c.1).collect()
}

// ---- client side helpers (run inside `Target::client`) --------------------------------------

/// Retries a call interrupted by the tap PMD's signal (the EAL runs in this process).
fn retry<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = retry(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn ws(addr: SocketAddr) -> WebSocket<TcpStream> {
    ws_at(addr, "/ws")
}

fn ws_at(addr: SocketAddr, target: &str) -> WebSocket<TcpStream> {
    tungstenite::client::client(format!("ws://{addr}{target}"), connect(addr))
        .expect("handshake")
        .0
}

fn read(ws: &mut WebSocket<TcpStream>) -> Result<WsMessage, WsError> {
    loop {
        match ws.read() {
            Err(WsError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A raw connection past a successful handshake.
fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(upgrade_request("/ws", "13", KEY).as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        retry(|| s.read_exact(&mut byte)).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads frames until a Close; returns its code.
fn close_code_of(s: &mut TcpStream) -> u16 {
    loop {
        let (_, opcode, payload) = read_frame(s);
        if opcode == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

// ---- the scenarios ---------------------------------------------------------------------------

/// Large messages (64 KiB to 16 MiB, the default `max_message_size`) come back whole and in
/// order: single frames read straight into the message buffer, text checked across reads,
/// fragments with a ping between them, small messages pipelined around a large one; a large text
/// whose last bytes are not UTF-8 is closed with 1007.
fn large_messages_come_back_whole(t: &Target) {
    t.client(|addr| {
        let pattern = |n: usize, seed: u8| -> Vec<u8> {
            (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
        };
        let mut c = ws(addr);
        c.get_mut()
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        for (n, seed) in [(64 << 10, 1u8), ((1 << 20) + 3, 2), (16 << 20, 3)] {
            let data = pattern(n, seed);
            c.send(WsMessage::binary(data.clone())).unwrap();
            assert_eq!(read(&mut c).unwrap(), WsMessage::binary(data), "{n} bytes");
        }
        // Multibyte characters cut by every read boundary.
        let text = "é€𝄞a".repeat(100_000);
        c.send(WsMessage::text(text.clone())).unwrap();
        assert_eq!(read(&mut c).unwrap(), WsMessage::text(text));
        // Pipelined: small, large, small; back in that order.
        let big = pattern(3 << 20, 4);
        c.write(WsMessage::text("before")).unwrap();
        c.write(WsMessage::binary(big.clone())).unwrap();
        c.write(WsMessage::text("after")).unwrap();
        c.flush().unwrap();
        assert_eq!(read(&mut c).unwrap(), WsMessage::text("before"));
        assert_eq!(read(&mut c).unwrap(), WsMessage::binary(big));
        assert_eq!(read(&mut c).unwrap(), WsMessage::text("after"));
        c.close(None).unwrap();
        while read(&mut c).is_ok() {}

        // Fragments of a large message, a ping between them.
        let mut s = raw_ws(addr);
        let whole = pattern((400 << 10) + 1, 5);
        let (a, rest) = whole.split_at(100 << 10);
        let (b, last) = rest.split_at(300 << 10);
        let mut out = common::frame(false, 0x2, a);
        out.extend(common::frame(true, 0x9, b"between"));
        out.extend(common::frame(false, 0x0, b));
        out.extend(common::frame(true, 0x0, last));
        s.write_all(&out).unwrap();
        assert_eq!(common::read_frame(&mut s), (true, 0xA, b"between".to_vec()));
        assert_eq!(common::read_frame(&mut s), (true, 0x2, whole));
        // A large text that ends in bytes that are not UTF-8.
        let mut bad = "é".repeat(300_000).into_bytes();
        bad.extend_from_slice(&[0xff, 0xfe]);
        s.write_all(&common::frame(true, 0x1, &bad)).unwrap();
        assert_eq!(close_code_of(&mut s), 1007);
    });
}

/// Raw DEFLATE of a whole message, as a permessage-deflate client sends it (sync flush, tail
/// removed).
fn deflate_message(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Inflates a server's compressed message.
fn inflate_message(data: &[u8]) -> Vec<u8> {
    let mut d = flate2::Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(64 << 20);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
        .unwrap();
    out
}

/// A client frame with RSV1 set (a compressed message's first frame).
fn compressed_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(fin, opcode, payload);
    f[0] |= 0x40;
    f
}

/// permessage-deflate (shared mode, the default): the offer is answered without context
/// takeover either way; compressed messages (whole, fragmented, large) are inflated and echoed
/// compressed (short ones uncompressed); RSV1 on a continuation is 1002; a small frame that
/// inflates past `max_message_size` is 1009; bad DEFLATE data is 1007; without the extension
/// RSV1 stays 1002.
fn compressed_messages_both_ways(t: &Target) {
    t.client(|addr| {
        let offer = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
                     Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
        let open = || {
            let mut s = connect(addr);
            s.write_all(offer.as_bytes()).unwrap();
            let head = common::read_head(&mut s);
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert!(
                head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
                "{head}"
            );
            s
        };
        let mut s = open();
        let json: Vec<u8> = (0..2000)
            .flat_map(|i| format!("{{\"id\":{i},\"name\":\"user{}\"}},", i % 13).into_bytes())
            .collect();
        // A compressed text message comes back compressed, smaller than it is.
        s.write_all(&compressed_frame(true, 0x1, &deflate_message(&json))).unwrap();
        let (fin, opcode, payload) = common::read_frame_rsv(&mut s);
        assert_eq!((fin, opcode & 0x0f), (true, 0x1));
        assert_eq!(opcode & 0x40, 0x40, "the echo is compressed");
        assert!(payload.len() < json.len() / 3);
        assert_eq!(inflate_message(&payload), json);
        // A short message goes out uncompressed (below the threshold), whatever came in.
        s.write_all(&compressed_frame(true, 0x2, &deflate_message(b"short"))).unwrap();
        assert_eq!(common::read_frame_rsv(&mut s), (true, 0x2, b"short".to_vec()));
        // A fragmented compressed message (RSV1 on the first frame only), 3 MiB inflated.
        let big: Vec<u8> = json.iter().cycle().take(3 << 20).copied().collect();
        let z = deflate_message(&big);
        let (a, b) = z.split_at(z.len() / 2);
        s.write_all(&compressed_frame(false, 0x2, a)).unwrap();
        s.write_all(&common::frame(true, 0x0, b)).unwrap();
        let (_, opcode, payload) = common::read_frame_rsv(&mut s);
        assert_eq!(opcode, 0x42);
        assert_eq!(inflate_message(&payload), big);
        // RSV1 on a continuation frame.
        s.write_all(&compressed_frame(false, 0x2, a)).unwrap();
        s.write_all(&compressed_frame(true, 0x0, b)).unwrap();
        assert_eq!(close_code_of(&mut s), 1002);

        // A bomb: 20 MiB of zeros in ~200 KiB, against the 16 MiB limit (sync-flushed
        // segments, each inflating to 1 MiB on its own, concatenate into one stream).
        let mut s = open();
        let mut segment = deflate_message(&vec![0u8; 1 << 20]);
        segment.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut bomb = segment.repeat(20);
        bomb.truncate(bomb.len() - 4);
        assert!(bomb.len() < 512 << 10, "{}", bomb.len());
        s.write_all(&compressed_frame(true, 0x2, &bomb)).unwrap();
        assert_eq!(close_code_of(&mut s), 1009);
        // Not DEFLATE at all.
        let mut s = open();
        s.write_all(&compressed_frame(true, 0x2, &[0xff; 32])).unwrap();
        assert_eq!(close_code_of(&mut s), 1007);
        // Text that is not UTF-8 once inflated.
        let mut s = open();
        s.write_all(&compressed_frame(true, 0x1, &deflate_message(&[b'a', 0xff, 0xfe])))
            .unwrap();
        assert_eq!(close_code_of(&mut s), 1007);
        // No offer, no extension: RSV1 is a protocol error.
        let mut s = raw_ws(addr);
        s.write_all(&compressed_frame(true, 0x2, &deflate_message(b"x"))).unwrap();
        assert_eq!(close_code_of(&mut s), 1002);
    });
}

/// A message limit lowered by a reload governs the next message (closed with 1009).
fn reload_governs_the_next_message(t: &Target) {
    let from = t.closes_so_far();
    let server = t.server.clone();
    let code = t.client(move |addr| {
        let mut s = raw_ws(addr);
        s.write_all(&frame(true, 0x2, &[7u8; 2000])).unwrap();
        assert_eq!(
            read_frame(&mut s).2.len(),
            2000,
            "echoed under the start limits"
        );
        let mut cfg = server.config();
        cfg.limits.max_message_size = 1000;
        server.reload(cfg).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(&frame(true, 0x2, &[7u8; 2000])).unwrap();
        close_code_of(&mut s)
    });
    assert_eq!(code, 1009);
    assert_eq!(
        t.closes_since(from, "on_close 1009", |c| !c.is_empty()),
        vec![1009]
    );
    t.restore();
}

/// Sends by id reach an open session; an ended session's id is refused; a broadcast reaches
/// every open session and nothing reaches a connection still in its handshake.
fn delivery_follows_the_session_rules(t: &Target) {
    let server = t.server.clone();
    t.client(move |addr| {
        let mut a = ws(addr);
        let mut b = ws(addr);
        let mut handshaking = connect(addr);
        handshaking.write_all(b"GET /ws HTTP/1.1\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.sessions().len() < 2 {
            assert!(Instant::now() < deadline, "two sessions registered");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut ids: Vec<u64> = server.sessions().iter().map(|s| s.id).collect();
        ids.sort();
        // Find which id is A's: send to the first and see who gets it.
        server.send_to(ids[0], Message::Text("to-first")).unwrap();
        a.get_mut().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let (first, second) = match read(&mut a) {
            Ok(m) => {
                assert_eq!(m, WsMessage::text("to-first"));
                (ids[0], ids[1])
            }
            Err(_) => {
                assert_eq!(read(&mut b).unwrap(), WsMessage::text("to-first"));
                (ids[1], ids[0])
            }
        };
        a.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        server.send_to(second, Message::Text("to-b")).unwrap();
        assert_eq!(read(&mut b).unwrap(), WsMessage::text("to-b"));
        assert!(server.broadcast(Message::Text("all")).unwrap() >= 1);
        assert_eq!(read(&mut a).unwrap(), WsMessage::text("all"));
        assert_eq!(read(&mut b).unwrap(), WsMessage::text("all"));
        // B ends; its id is refused from then on.
        b.close(None).unwrap();
        while read(&mut b).is_ok() {}
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.sessions().iter().any(|s| s.id == second) {
            assert!(Instant::now() < deadline, "B left the registry");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.send_to(second, Message::Text("late")), Err(hioload_ws::DeliverError::NoSuchSession));
        // Nothing went to the connection in its handshake.
        handshaking.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 64];
        // (On a loaded machine this test may outlast the handshake deadline: the connection
        // is then closed, still without a byte.)
        let got = handshaking.read(&mut buf);
        assert!(
            matches!(got, Ok(0)) || matches!(got, Err(ref e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "the handshaking connection got nothing: {got:?}"
        );
        let _ = first;
        a.close(None).unwrap();
    });
}

/// A quiet session is pinged after `idle_timeout`; one that never answers is dropped after
/// `pong_timeout` (1006); a responsive one stays.
fn idle_sessions_are_pinged_and_silent_ones_dropped(t: &Target) {
    let from = t.closes_so_far();
    let before: usize = t
        .server
        .worker_stats()
        .unwrap()
        .iter()
        .map(|w| w.idle_drops)
        .sum();
    t.reload(|c| {
        c.idle_timeout = Some(Duration::from_millis(600));
        c.pong_timeout = Duration::from_millis(600);
    });
    let (pinged, answered, silent_got) = t.client(|addr| {
        let mut lively = ws(addr);
        let mut silent = raw_ws(addr);
        lively
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let start = Instant::now();
        let mut pinged = 0;
        while start.elapsed() < Duration::from_millis(2500) {
            match read(&mut lively) {
                Ok(WsMessage::Ping(p)) if &p[..] == b"idle" => pinged += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {} // a read timeout: tungstenite answered the ping when it read it
            }
        }
        lively
            .get_mut()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        lively.send(WsMessage::text("still here")).unwrap();
        let answered = loop {
            match read(&mut lively).unwrap() {
                WsMessage::Ping(_) => continue,
                other => break other,
            }
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match retry(|| silent.read(&mut buf)) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        (pinged, answered, got)
    });
    assert!(pinged >= 1, "the responsive client was pinged");
    assert_eq!(answered, WsMessage::text("still here"));
    assert!(
        silent_got.ends_with(b"\x89\x04idle"),
        "the silent client got the ping last: {silent_got:?}"
    );
    assert!(t
        .closes_since(from, "on_close 1006", |c| c.contains(&1006))
        .contains(&1006));
    let after: usize = t
        .server
        .worker_stats()
        .unwrap()
        .iter()
        .map(|w| w.idle_drops)
        .sum();
    assert_eq!(after - before, 1, "one idle drop counted");
    t.restore();
}

/// A peer that does not read what it asked for stays above the soft bound and is closed with
/// 1008 after the backpressure timeout; others are served meanwhile.
fn a_peer_that_does_not_read_is_closed_with_1008(t: &Target) {
    let from = t.closes_so_far();
    t.reload(|c| {
        c.backpressure.soft_bytes = 64 << 10;
        c.backpressure.hard_bytes = 64 << 20;
        c.backpressure.timeout = Duration::from_secs(1);
    });
    let started = Instant::now();
    let echoed = t.client(|addr| {
        let mut slow = raw_ws(addr);
        socket2::SockRef::from(&slow)
            .set_recv_buffer_size(16 << 10)
            .unwrap();
        slow.write_all(&frame(true, 0x1, b"flood")).unwrap();
        let mut other = ws(addr);
        other.send(WsMessage::text("hi")).unwrap();
        let echoed = read(&mut other).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        drop(slow);
        echoed
    });
    assert_eq!(
        echoed,
        WsMessage::text("hi"),
        "the other session was served"
    );
    assert!(t
        .closes_since(from, "on_close 1008", |c| c.contains(&1008))
        .contains(&1008));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the backpressure timeout"
    );
    t.restore();
}

/// A panic in the handler closes that session with 1011; the server goes on.
fn a_handler_panic_closes_with_1011_and_the_server_lives(t: &Target) {
    let from = t.closes_so_far();
    let (code, echo) = t.client(|addr| {
        let mut s = raw_ws(addr);
        s.write_all(&frame(true, 0x1, b"panic")).unwrap();
        let code = close_code_of(&mut s);
        let mut fresh = ws(addr);
        fresh.send(WsMessage::text("after")).unwrap();
        (code, read(&mut fresh).unwrap())
    });
    assert_eq!(code, 1011);
    assert_eq!(echo, WsMessage::text("after"));
    // Both clients left without a close handshake (the first did not answer our Close): each
    // session ends as 1006, once.
    assert_eq!(
        t.closes_since(from, "two on_close", |c| c.len() >= 2),
        vec![1006, 1006]
    );
}

/// A client that does not complete its upgrade request within `handshake_timeout` is dropped.
fn an_unfinished_handshake_is_dropped_at_its_deadline(t: &Target) {
    t.reload(|c| c.handshake_timeout = Duration::from_millis(500));
    let took = t.client(|addr| {
        let mut s = connect(addr);
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let got = retry(|| s.read(&mut buf));
        assert!(
            matches!(got, Ok(0) | Err(_)),
            "no answer, just the end: {got:?}"
        );
        start.elapsed()
    });
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "dropped after {took:?}"
    );
    t.restore();
}

/// Stop: every session gets Close 1001, then the server's FIN; the workers exit.
fn stop_closes_every_session_with_1001(t: &Target) {
    let server = t.server.clone();
    let (code, fin) = t.client(move |addr| {
        let mut a = ws(addr);
        a.send(WsMessage::text("x")).unwrap();
        read(&mut a).unwrap();
        server.stop();
        let code = loop {
            match read(&mut a) {
                Ok(WsMessage::Close(Some(frame))) => break frame.code,
                Ok(WsMessage::Close(None)) => break WsCode::Status,
                Ok(_) => continue,
                Err(e) => panic!("no close: {e}"),
            }
        };
        // tungstenite answered the Close; the server's FIN follows.
        let mut rest = [0u8; 16];
        let fin = loop {
            match read(&mut a) {
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => break true,
                Err(WsError::Io(_)) => break matches!(a.get_mut().read(&mut rest), Ok(0)),
                Err(_) => break false,
                Ok(_) => continue,
            }
        };
        (code, fin)
    });
    assert_eq!(code, WsCode::Away);
    assert!(fin, "the server closed the connection");
    t.server.wait().unwrap();
}

/// Sum of a worker counter over the workers.
fn worker_sum(t: &Target, field: fn(&hioload_ws::WorkerStats) -> usize) -> usize {
    t.server.worker_stats().unwrap().iter().map(field).sum()
}

/// Over `max_connections`, a new connection is closed at once (and counted); the sessions
/// under the cap are served as before.
fn connections_over_the_cap_are_refused(t: &Target) {
    let open = worker_sum(t, |w| w.connections);
    let refused = worker_sum(t, |w| w.connections_refused);
    t.reload(|c| c.max_connections = open + 2);
    let (echo, over) = t.client(|addr| {
        let mut a = ws(addr);
        let mut b = ws(addr);
        // Over the cap: reset at accept (on the DPDK stack the reset may even beat the end of
        // the client's connect), or closed before any answer.
        let over = retry(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10))).and_then(
            |mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                let _ = c.write_all(upgrade_request("/ws", "13", KEY).as_bytes());
                let mut buf = [0u8; 64];
                retry(|| c.read(&mut buf))
            },
        );
        a.send(WsMessage::text("a")).unwrap();
        b.send(WsMessage::text("b")).unwrap();
        let echo = (read(&mut a).unwrap(), read(&mut b).unwrap());
        (echo, over.map_err(|e| e.kind()))
    });
    assert_eq!(echo, (WsMessage::text("a"), WsMessage::text("b")));
    assert!(
        matches!(over, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "the connection over the cap is closed, not answered: {over:?}"
    );
    assert!(worker_sum(t, |w| w.connections_refused) > refused);
    t.restore();
}

/// A message that trickles in is closed with 1008 at `message_timeout` from its first byte,
/// however often bytes arrive (the idle timer never fires for it).
fn a_message_that_trickles_is_closed_with_1008(t: &Target) {
    let before = worker_sum(t, |w| w.message_timeouts);
    t.reload(|c| c.message_timeout = Duration::from_secs(1));
    let (code, took) = t.client(|addr| {
        let mut s = raw_ws(addr);
        let frame = frame(true, 0x2, &[7u8; 1000]);
        let start = Instant::now();
        let mut sent = 0;
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut byte = [0u8; 1];
        // One byte every 200 ms until the server answers (its Close), at most 5 s.
        while start.elapsed() < Duration::from_secs(5) {
            if s.write_all(&frame[sent..sent + 1]).is_err() {
                break;
            }
            sent += 1;
            match s.peek(&mut byte) {
                Ok(n) if n > 0 => break,
                _ => {}
            }
        }
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (close_code_of(&mut s), start.elapsed())
    });
    assert_eq!(code, 1008);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert_eq!(worker_sum(t, |w| w.message_timeouts), before + 1);
    t.restore();
}

/// Connections that each hold a partial frame or announce a 16 MiB frame hold only the bytes
/// they sent (plus at most one reserve step), not a receive buffer or the announced length;
/// a fresh client is served meanwhile, and the memory is back once they leave.
fn partial_frames_hold_only_what_arrived(t: &Target) {
    let server = t.server.clone();
    let (during, echo_took) = t.client(move |addr| {
        let mut held = Vec::new();
        for i in 0..60 {
            let mut s = raw_ws(addr);
            if i % 3 == 0 {
                // A 14-byte header announcing 16 MiB - 1, and 100 bytes of it.
                let mut head = vec![0x82, 0xff];
                head.extend_from_slice(&((16u64 << 20) - 1).to_be_bytes());
                head.extend_from_slice(&[1, 2, 3, 4]);
                head.extend_from_slice(&[0u8; 100]);
                s.write_all(&head).unwrap();
            } else {
                // Three bytes of a frame header.
                s.write_all(&[0x82, 0xfe, 0x10]).unwrap();
            }
            held.push(s);
        }
        std::thread::sleep(Duration::from_millis(300)); // two ticks: the gauges are published
        let during: usize = server
            .worker_stats()
            .unwrap()
            .iter()
            .map(|w| w.memory)
            .sum();
        let start = Instant::now();
        let mut fresh = ws(addr);
        fresh.send(WsMessage::text("served")).unwrap();
        assert_eq!(read(&mut fresh).unwrap(), WsMessage::text("served"));
        (during, start.elapsed())
    });
    assert!(
        echo_took < Duration::from_secs(1),
        "echo took {echo_took:?}"
    );
    // 20 announcements: at most a 64 KiB reserve step each (and the session's 4 KiB); 40
    // three-byte remainders: a few hundred bytes each.
    let bound = 20 * (hioload_wsproto::assembly::RESERVE_STEP + (8 << 10)) + 40 * 1024;
    assert!(during <= bound, "{during} bytes held (bound {bound})");
    let server = t.server.clone();
    common::wait_until(Duration::from_secs(5), "memory back", move || {
        server
            .worker_stats()
            .unwrap()
            .iter()
            .map(|w| w.memory)
            .sum::<usize>()
            < 16 << 10
    });
}

// ---- the application's API (issue 18) ---------------------------------------------------------

/// Sends an upgrade request for `target` (with extra header lines) and reads the whole answer
/// head (and, for a refusal, its body: the server closes after it).
fn upgrade_answer(addr: SocketAddr, target: &str, extra: &str) -> (TcpStream, String) {
    let mut s = connect(addr);
    let req = upgrade_request(target, "13", KEY).replace("\r\n\r\n", &format!("\r\n{extra}\r\n"));
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        retry(|| s.read_exact(&mut byte)).unwrap();
        head.push(byte[0]);
    }
    let mut text = String::from_utf8(head).unwrap();
    if !text.starts_with("HTTP/1.1 101") {
        let mut body = String::new();
        let _ = retry(|| s.read_to_string(&mut body));
        text.push_str(&body);
    }
    (s, text)
}

/// An upgrade the hook refuses gets exactly the status, headers and body it wrote.
fn a_refused_upgrade_gets_the_hooks_status_headers_and_body(t: &Target) {
    let opened = t.rec.record.lock().unwrap().opened;
    let (_, answer) = t.client(|addr| upgrade_answer(addr, "/ws?reject", ""));
    assert!(
        answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{answer}"
    );
    assert!(
        answer.contains("\r\nWWW-Authenticate: Token\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nContent-Length: 15\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\ntoken required\n"), "{answer}");
    assert_eq!(
        t.rec.record.lock().unwrap().opened,
        opened,
        "no session opened"
    );
}

/// User data attached by the hook is seen by every callback of that session, and only of that
/// session; the hook's subprotocol is answered.
fn user_data_from_the_upgrade_belongs_to_its_session(t: &Target) {
    let from = t.closes_so_far();
    let (alice, bob, protocol) = t.client(|addr| {
        let (s, answer) = upgrade_answer(
            addr,
            "/ws?user=alice",
            "Sec-WebSocket-Protocol: x, chat\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
        let protocol = answer.contains("\r\nSec-WebSocket-Protocol: chat\r\n");
        let mut alice =
            tungstenite::WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None);
        let mut bob = ws_at(addr, "/ws?user=bob");
        alice.send(WsMessage::text("whoami")).unwrap();
        bob.send(WsMessage::text("whoami")).unwrap();
        let names = (read(&mut alice).unwrap(), read(&mut bob).unwrap());
        alice.close(None).unwrap();
        bob.close(None).unwrap();
        while read(&mut alice).is_ok() {}
        while read(&mut bob).is_ok() {}
        (names.0, names.1, protocol)
    });
    assert_eq!(
        (alice, bob),
        (WsMessage::text("alice"), WsMessage::text("bob"))
    );
    assert!(protocol, "the subprotocol the hook chose is answered");
    t.closes_since(from, "two closes", |c| c.len() >= 2);
    let opened: Vec<Option<String>> = t.rec.record.lock().unwrap().opened_users.clone();
    assert!(
        opened.contains(&Some("alice".into())) && opened.contains(&Some("bob".into())),
        "on_open sees each session's own data: {opened:?}"
    );
    let users: Vec<Option<String>> = t.rec.record.lock().unwrap().close_users[from..].to_vec();
    assert!(
        users.contains(&Some("alice".into())) && users.contains(&Some("bob".into())),
        "on_close sees each session's own data: {users:?}"
    );
}

/// A deferred upgrade completed from another thread: the 101 comes then, with the user data
/// the decision carried; a deferred refusal gets its status.
fn a_deferred_upgrade_is_completed_from_another_thread(t: &Target) {
    let (took, name, refused) = t.client(|addr| {
        let start = Instant::now();
        let mut carol = ws_at(addr, "/ws?defer=200&user=carol");
        let took = start.elapsed();
        carol.send(WsMessage::text("whoami")).unwrap();
        let name = read(&mut carol).unwrap();
        let (_, refused) = upgrade_answer(addr, "/ws?defer=50&deny", "");
        (took, name, refused)
    });
    assert!(
        took >= Duration::from_millis(190),
        "the 101 waited for the decision: {took:?}"
    );
    assert_eq!(name, WsMessage::text("carol"));
    assert!(
        refused.starts_with("HTTP/1.1 403 Forbidden\r\n") && refused.ends_with("not today\n"),
        "{refused}"
    );
}

/// A deferred upgrade whose client left before the decision: the decision is refused
/// (`UpgradeError::Gone`), nothing opens, the server goes on.
fn a_deferred_upgrade_whose_client_left_is_refused(t: &Target) {
    let before = t.rec.record.lock().unwrap().deferred.len();
    let opened = t.rec.record.lock().unwrap().opened;
    t.client(|addr| {
        let mut s = connect(addr);
        s.write_all(upgrade_request("/ws?defer=500", "13", KEY).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(s); // gone before the decision
    });
    t.rec
        .wait_for(Duration::from_secs(5), "the deferred decision", |r| {
            r.deferred.len() > before
        });
    let r = t.rec.record.lock().unwrap();
    assert_eq!(r.deferred[before], Err(hioload_ws::UpgradeError::Gone));
    assert_eq!(r.opened, opened, "nothing opened");
}

/// Backpressure the handler sees: sends report `Backpressure` past the soft bound, the
/// buffered amount is there, and `on_drain` comes once the client has read.
fn backpressure_is_visible_to_the_handler(t: &Target) {
    t.reload(|c| c.backpressure.soft_bytes = 64 << 10);
    let drains = t.rec.record.lock().unwrap().drains;
    let got_drained = t.client(|addr| {
        let mut s = raw_ws(addr);
        socket2::SockRef::from(&s)
            .set_recv_buffer_size(16 << 10)
            .unwrap();
        s.write_all(&frame(true, 0x1, b"flood-until-backpressure"))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300)); // the server fills its buffers
                                                        // Now read everything: the output drains, and the handler's "drained" follows.
        loop {
            let (_, opcode, payload) = read_frame(&mut s);
            if opcode == 0x1 {
                return payload == b"drained";
            }
        }
    });
    let r = t.rec.record.lock().unwrap();
    let (queued, backpressure) = r.flood.expect("the flood ran");
    assert!(
        backpressure,
        "a send reported backpressure after {queued} queued"
    );
    assert!(
        queued >= 3,
        "the first sends were queued under the bound: {queued}"
    );
    assert!(r.drains > drains, "on_drain came");
    drop(r);
    assert!(
        got_drained,
        "the handler's send from on_drain reached the client"
    );
    t.restore();
}

// ---- the kernel path: a server per scenario ---------------------------------------------------

macro_rules! kernel_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let t = Target::kernel();
            super::$name(&t);
        }
    )*};
}

mod kernel {
    kernel_tests!(
        reload_governs_the_next_message,
        delivery_follows_the_session_rules,
        idle_sessions_are_pinged_and_silent_ones_dropped,
        a_peer_that_does_not_read_is_closed_with_1008,
        a_handler_panic_closes_with_1011_and_the_server_lives,
        an_unfinished_handshake_is_dropped_at_its_deadline,
        connections_over_the_cap_are_refused,
        a_message_that_trickles_is_closed_with_1008,
        partial_frames_hold_only_what_arrived,
        a_refused_upgrade_gets_the_hooks_status_headers_and_body,
        user_data_from_the_upgrade_belongs_to_its_session,
        a_deferred_upgrade_is_completed_from_another_thread,
        a_deferred_upgrade_whose_client_left_is_refused,
        backpressure_is_visible_to_the_handler,
        large_messages_come_back_whole,
        compressed_messages_both_ways,
        stop_closes_every_session_with_1001,
    );
    use super::Target;
}

// ---- the DPDK path: every scenario on one server (one EAL per process) -------------------------

#[cfg(feature = "dpdk")]
#[test]
fn dpdk_path_passes_every_scenario() {
    let t = Target::dpdk();
    reload_governs_the_next_message(&t);
    delivery_follows_the_session_rules(&t);
    idle_sessions_are_pinged_and_silent_ones_dropped(&t);
    a_peer_that_does_not_read_is_closed_with_1008(&t);
    a_handler_panic_closes_with_1011_and_the_server_lives(&t);
    an_unfinished_handshake_is_dropped_at_its_deadline(&t);
    connections_over_the_cap_are_refused(&t);
    a_message_that_trickles_is_closed_with_1008(&t);
    partial_frames_hold_only_what_arrived(&t);
    a_refused_upgrade_gets_the_hooks_status_headers_and_body(&t);
    user_data_from_the_upgrade_belongs_to_its_session(&t);
    a_deferred_upgrade_is_completed_from_another_thread(&t);
    a_deferred_upgrade_whose_client_left_is_refused(&t);
    backpressure_is_visible_to_the_handler(&t);
    large_messages_come_back_whole(&t);
    compressed_messages_both_ways(&t);
    stop_closes_every_session_with_1001(&t);
}
