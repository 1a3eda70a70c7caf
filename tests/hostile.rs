//! A hostile network (issue 20), on the kernel path and on the I/O backend `HIOLOAD_TEST_IO`
//! names (`scripts/test.sh` runs this file on io_uring and on epoll): thousands of connections
//! that each hold a partial frame or a partial request head, connections that announce 16 MiB
//! frames and send a few bytes, more connections than `max_connections`, a message that trickles.
//! Each test asserts that a fresh client still gets its echo within 1 s while the attack runs,
//! and bounds what the server holds (its `memory` gauge, the buffer pool's buffers in use)
//! during the attack and after it. Figures are printed (`--nocapture` shows them).
//!
//! The same attacks against the real binary under an address-space limit:
//! `apps/hioload-echo/tests/hostile.rs`; the long versions: `scripts/soak.sh`.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use hioload_ws::{Server, WorkerStats};

/// What a fresh client's echo may take (connect, upgrade, message, echo) while an attack runs.
const ECHO_LIMIT: Duration = Duration::from_secs(1);

/// Raises the open-files limit; `need` descriptors must fit (client and server ends both count:
/// the server runs in this process).
fn raise_fds(need: u64) {
    let limit = hioload_ws::raise_fd_limit().unwrap();
    assert!(
        limit >= need,
        "this test needs {need} file descriptors; the hard limit is {limit} (ulimit -Hn)"
    );
}

/// Sum of a worker counter over the workers.
fn sum(server: &Server, f: impl Fn(&WorkerStats) -> usize) -> usize {
    server.worker_stats().unwrap().iter().map(f).sum()
}

/// Bytes the server's connections hold (held input, assembly, pending output), as of the
/// workers' last tick (every 100 ms).
fn memory(server: &Server) -> usize {
    sum(server, |w| w.memory)
}

/// Once every connection is gone, the `memory` gauge must be back to 0 within 2 s (it is
/// published at the workers' ticks, every 100 ms).
fn memory_back_to_zero(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let stats = server.worker_stats().unwrap();
        if stats.iter().all(|w| w.memory == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the memory gauge is not back to 0 2 s after the connections left: per worker {:?} \
             bytes, {:?} connections",
            stats.iter().map(|w| w.memory).collect::<Vec<_>>(),
            stats.iter().map(|w| w.connections).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The largest `memory` seen over `span` (sampled every 20 ms: the gauge moves every 100 ms).
fn peak_memory(server: &Server, span: Duration) -> usize {
    let end = Instant::now() + span;
    let mut peak = memory(server);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        peak = peak.max(memory(server));
    }
    peak
}

/// This process's resident set (client and server together), from /proc/self/status.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The buffer pool's buffers in use must be those lent to the io_uring rings (0 on epoll): no
/// connection keeps a receive buffer between reads. Waits for the workers' next publication
/// (ring counts are published every 100 ms); returns (in use, lent).
fn pool_matches_ring(server: &Server, what: &str) -> (u64, u64) {
    let lent = || sum(server, |w| w.ring_buffers) as u64;
    let in_use = || server.pool_stats().unwrap().in_use();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (u, l) = (in_use(), lent());
        if u == l {
            return (u, l);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {u} pool buffers in use, {l} lent to the io_uring rings: a connection keeps \
             a receive buffer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connect, upgrade, send a text message, read its echo: the whole must take under 1 s. Returns
/// the time it took.
fn fresh_echo(addr: SocketAddr, what: &str) -> Duration {
    let start = Instant::now();
    let stream = TcpStream::connect_timeout(&addr, ECHO_LIMIT)
        .unwrap_or_else(|e| panic!("{what}: a fresh client cannot connect: {e}"));
    stream.set_read_timeout(Some(ECHO_LIMIT)).unwrap();
    stream.set_write_timeout(Some(ECHO_LIMIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = tungstenite::client::client(format!("ws://{addr}/ws"), stream)
        .unwrap_or_else(|e| panic!("{what}: a fresh client's upgrade failed: {e}"));
    ws.send(tungstenite::Message::text("fresh")).unwrap();
    let reply = ws
        .read()
        .unwrap_or_else(|e| panic!("{what}: no echo for a fresh client ({e})"));
    let took = start.elapsed();
    assert_eq!(reply, tungstenite::Message::text("fresh"), "{what}");
    assert!(
        took < ECHO_LIMIT,
        "{what}: a fresh client's echo took {took:?}"
    );
    let _ = ws.close(None);
    took
}

/// The slowest of `n` fresh clients' echoes (each under 1 s).
fn fresh_echoes(addr: SocketAddr, n: usize, what: &str) -> Duration {
    (0..n).map(|_| fresh_echo(addr, what)).max().unwrap()
}

/// Reads a response head that the server sends on its own (nothing follows it until the client
/// speaks), in a few reads rather than one byte at a time.
fn read_lone_head(s: &mut TcpStream) -> String {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk).expect("a response head");
        assert!(
            n > 0 && head.len() < 4096,
            "response head cut short: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(head).unwrap()
}

/// Connects `n` clients, 100 at a time, each sending `request` first.
fn connect_many(addr: SocketAddr, n: usize, request: &[u8]) -> Vec<TcpStream> {
    let start = Instant::now();
    (0..n)
        .map(|i| {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "only {i} of {n} connections in 30 s"
            );
            let mut s = TcpStream::connect_timeout(&addr, T).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            s.set_write_timeout(Some(T)).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(request).unwrap();
            s
        })
        .collect()
}

/// `n` raw WebSocket sessions: upgrade requests 100 at a time, then their 101s.
fn open_sessions(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let request = upgrade_request("/ws", "13", KEY);
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch = connect_many(addr, (n - all.len()).min(100), request.as_bytes());
        for mut s in batch {
            let head = read_lone_head(&mut s);
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            all.push(s);
        }
    }
    all
}

/// The header of a masked binary frame announcing `len` payload bytes (14 bytes), and its mask.
fn big_header(len: u64) -> (Vec<u8>, [u8; 4]) {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut h = vec![0x82, 0xff];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&mask);
    (h, mask)
}

/// Connections that each sent one byte of a frame header after their upgrade hold that byte
/// (a few bytes of storage), not a receive buffer: 2,000 of them cost the server a few KiB, the
/// buffer pool lends no buffer but the io_uring rings', a fresh client is echoed within 1 s, and
/// every held byte is still there when the frames are completed.
#[test]
fn two_thousand_partial_frames_hold_a_few_bytes_each_and_a_fresh_client_is_served() {
    const N: usize = 2000;
    raise_fds(2 * N as u64 + 256);
    let (server, _rec) = start_echo(test_config());
    let addr = server.local_addr().unwrap();
    let rss_before = rss();

    let mut attackers = open_sessions(addr, N);
    wait_until(T, "every attacker open", || server.session_count() == N);
    for s in &mut attackers {
        s.write_all(&[0x82]).unwrap(); // FIN + binary: one byte of a two-byte header
    }
    // Each holds at least its byte (the gauge is published at the workers' tick).
    wait_until(T, "every partial frame held", || memory(&server) >= N);
    std::thread::sleep(Duration::from_millis(200));

    let echo = fresh_echoes(addr, 3, "2,000 partial frames");
    let during = peak_memory(&server, Duration::from_millis(300));
    let (in_use, lent) = pool_matches_ring(&server, "2,000 partial frames");
    let rss_during = rss();
    eprintln!(
        "partial frames: {N} attackers; server memory gauge {during} B ({:.1} B each); pool in \
         use {in_use} = ring {lent}; fresh echo (slowest of 3) {echo:?}; process RSS +{:.1} MiB",
        during as f64 / N as f64,
        mib(rss_during.saturating_sub(rss_before))
    );
    assert!(
        during < N * 1024,
        "{N} one-byte partial frames hold {during} bytes of server memory"
    );
    assert_eq!(server.session_count(), N, "no attacker was dropped");

    // The held bytes are intact: completing each frame gets its echo.
    let rest = &frame(true, 0x2, b"x")[1..];
    for s in &mut attackers {
        s.write_all(rest).unwrap();
    }
    for s in &mut attackers {
        assert_eq!(read_frame(s), (true, 0x2, b"x".to_vec()));
    }

    // They idle a moment (no timer armed: nothing in progress), then leave.
    std::thread::sleep(Duration::from_millis(300));
    drop(attackers);
    wait_until(T, "every attacker gone", || {
        server.session_count() == 0 && sum(&server, |w| w.connections) == 0
    });
    memory_back_to_zero(&server);
    let (in_use, lent) = pool_matches_ring(&server, "after the attack");
    eprintln!(
        "partial frames, after: memory gauge 0 B; pool in use {in_use} = ring {lent}; process \
         RSS +{:.1} MiB over the start",
        mib(rss().saturating_sub(rss_before))
    );
}

/// Connections that send only the first line of an upgrade request hold that line, not a
/// buffer: 1,000 of them cost the server a few KiB, a fresh client is echoed within 1 s, and
/// every head completes into a 101 afterwards.
#[test]
fn a_thousand_partial_heads_hold_their_bytes_only_and_a_fresh_client_is_served() {
    const N: usize = 1000;
    const LINE: &str = "GET /ws HTTP/1.1\r\n";
    raise_fds(2 * N as u64 + 256);
    let (server, _rec) = start_echo(test_config());
    let addr = server.local_addr().unwrap();

    let mut attackers = connect_many(addr, N, LINE.as_bytes());
    wait_until(T, "every partial head held", || {
        sum(&server, |w| w.connections) == N && memory(&server) >= N * LINE.len()
    });
    std::thread::sleep(Duration::from_millis(200));

    let echo = fresh_echoes(addr, 3, "1,000 partial heads");
    let during = peak_memory(&server, Duration::from_millis(300));
    let (in_use, lent) = pool_matches_ring(&server, "1,000 partial heads");
    eprintln!(
        "partial heads: {N} attackers; server memory gauge {during} B ({:.1} B each); pool in use \
         {in_use} = ring {lent}; fresh echo (slowest of 3) {echo:?}",
        during as f64 / N as f64
    );
    assert!(
        during < N * 1024 + (64 << 10),
        "{N} partial heads of {} bytes hold {during} bytes of server memory",
        LINE.len()
    );
    assert_eq!(server.session_count(), 0, "no head is complete yet");

    // The held lines are intact: the rest of each request gets a 101.
    let full = upgrade_request("/ws", "13", KEY);
    let rest = full.strip_prefix(LINE).unwrap();
    for s in &mut attackers {
        s.write_all(rest.as_bytes()).unwrap();
    }
    for s in &mut attackers {
        let head = read_lone_head(s);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }
    wait_until(T, "every session open", || server.session_count() == N);

    // They idle a moment (no timer armed: nothing in progress), then leave.
    std::thread::sleep(Duration::from_millis(300));
    drop(attackers);
    wait_until(T, "every attacker gone", || {
        sum(&server, |w| w.connections) == 0
    });
    memory_back_to_zero(&server);
    pool_matches_ring(&server, "after the attack");
}

/// Connections that announce 16 MiB − 1 byte frames and send a few bytes of them hold those
/// bytes plus at most one 64 KiB reserve step each, not the announced length: 50 of them stay far
/// below 50 × 16 MiB; as their bytes arrive, the memory follows what arrived (not what was
/// announced); a fresh client is echoed within 1 s throughout, and the memory is back after.
#[test]
fn fifty_16_mib_announcements_hold_what_arrived_not_what_was_announced() {
    const N: usize = 50;
    const FEW: usize = 100;
    const MORE: usize = 1 << 20;
    raise_fds(2 * N as u64 + 256);
    let (server, rec) = start_echo(test_config());
    let addr = server.local_addr().unwrap();
    let rss_before = rss();

    let mut attackers = open_sessions(addr, N);
    let (header, mask) = big_header((16 << 20) - 1);
    let masked = |from: usize, len: usize| -> Vec<u8> {
        (from..from + len).map(|i| 0xA5 ^ mask[i % 4]).collect()
    };
    for s in &mut attackers {
        let mut bytes = header.clone();
        bytes.extend_from_slice(&masked(0, FEW));
        s.write_all(&bytes).unwrap();
    }
    wait_until(T, "every announcement under way", || {
        memory(&server) >= N * FEW
    });
    std::thread::sleep(Duration::from_millis(200));
    let echo = fresh_echoes(addr, 3, "50 announced 16 MiB frames");
    let during = peak_memory(&server, Duration::from_millis(300));
    let rss_during = rss();
    eprintln!(
        "16 MiB announcements: {N} attackers with {FEW} bytes each; server memory gauge {:.2} MiB \
         ({:.1} KiB each); fresh echo (slowest of 3) {echo:?}; process RSS +{:.1} MiB",
        mib(during as u64),
        during as f64 / N as f64 / 1024.0,
        mib(rss_during.saturating_sub(rss_before))
    );
    assert!(
        during < N * (200 << 10),
        "{N} announced 16 MiB frames with {FEW} bytes each hold {during} bytes"
    );
    assert!(
        rss_during.saturating_sub(rss_before) < 200 << 20,
        "the process grew by {:.1} MiB",
        mib(rss_during - rss_before)
    );

    // One more MiB from each: the memory follows the bytes that arrived.
    let more = masked(FEW, MORE);
    for s in &mut attackers {
        s.write_all(&more).unwrap();
    }
    let arrived = N * (FEW + MORE);
    wait_until(T, "the second MiB assembled", || memory(&server) >= arrived);
    std::thread::sleep(Duration::from_millis(200));
    let echo = fresh_echoes(addr, 3, "50 announced 16 MiB frames, 1 MiB in");
    let during = peak_memory(&server, Duration::from_millis(300));
    eprintln!(
        "16 MiB announcements, 1 MiB in: server memory gauge {:.2} MiB for {:.2} MiB arrived; \
         fresh echo (slowest of 3) {echo:?}; process RSS +{:.1} MiB",
        mib(during as u64),
        mib(arrived as u64),
        mib(rss().saturating_sub(rss_before))
    );
    assert!(
        // One reserve step (or an eighth of the bytes, if more) ahead, plus the session's small
        // assembly buffer and held header.
        during <= arrived + N * ((64 << 10).max((FEW + MORE) / 8) + (4 << 10) + 512),
        "{:.2} MiB held for {:.2} MiB arrived: more than one reserve step ahead",
        mib(during as u64),
        mib(arrived as u64)
    );
    assert_eq!(server.session_count(), N, "no attacker was closed");
    let codes = rec.close_codes();
    assert!(
        codes.iter().all(|&c| c == 1005),
        "only the fresh clients closed (1005, no code): {codes:?}"
    );

    drop(attackers);
    wait_until(T, "every attacker gone", || {
        sum(&server, |w| w.connections) == 0
    });
    memory_back_to_zero(&server);
    assert_eq!(sum(&server, |w| w.memory_closes), 0);
    eprintln!(
        "16 MiB announcements, after: memory gauge 0 B; process RSS +{:.1} MiB over the start",
        mib(rss().saturating_sub(rss_before))
    );
}

/// At `max_connections` (50), more connections are closed as soon as they are accepted and
/// counted; the 50 sessions still echo; once 20 leave, a fresh client is served within 1 s.
#[test]
fn connections_over_the_cap_are_closed_at_once_and_the_rest_are_served() {
    const CAP: usize = 50;
    const EXTRA: usize = 10;
    raise_fds(4 * (CAP + EXTRA) as u64 + 256);
    let mut cfg = test_config();
    cfg.max_connections = CAP;
    let (server, _rec) = start_echo(cfg);
    let addr = server.local_addr().unwrap();

    let mut sessions = open_sessions(addr, CAP);
    wait_until(T, "the cap reached", || server.session_count() == CAP);

    // The extra connections: accepted by the kernel, closed by the server within 1 s (FIN, or a
    // reset if the request was unread), never answered.
    let request = upgrade_request("/ws", "13", KEY);
    let mut extra = connect_many(addr, EXTRA, request.as_bytes());
    let start = Instant::now();
    for s in &mut extra {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
            Ok(n) => panic!(
                "a connection over the cap was answered: {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) => panic!(
                "a connection over the cap was not closed within 1 s ({e}; {:?} since connect)",
                start.elapsed()
            ),
        }
    }
    let closed_in = start.elapsed();
    let refused = sum(&server, |w| w.connections_refused);
    assert!(refused >= EXTRA, "{refused} connections refused");
    assert_eq!(server.session_count(), CAP);

    // The 50 sessions are served.
    for (i, s) in sessions.iter_mut().enumerate() {
        s.write_all(&frame(true, 0x1, format!("s{i}").as_bytes()))
            .unwrap();
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(read_frame(s), (true, 0x1, format!("s{i}").into_bytes()));
    }
    let during = memory(&server);

    // Twenty leave; a fresh client gets in and is echoed.
    sessions.truncate(CAP - 20);
    wait_until(T, "twenty sessions gone", || {
        sum(&server, |w| w.connections) == CAP - 20
    });
    let echo = fresh_echoes(addr, 3, "under the cap again");
    eprintln!(
        "connection cap {CAP}: {EXTRA} extra closed within {closed_in:?}; refused {refused}; \
         memory gauge at the cap {during} B; fresh echo after 20 left (slowest of 3) {echo:?}"
    );
    for s in &mut sessions {
        s.write_all(&frame(true, 0x1, b"still")).unwrap();
        assert_eq!(read_frame(s), (true, 0x1, b"still".to_vec()));
    }

    drop(sessions);
    wait_until(T, "every session gone", || {
        sum(&server, |w| w.connections) == 0
    });
    memory_back_to_zero(&server);
}

/// A message that trickles in, one byte every 200 ms, is closed with 1008 at `message_timeout`
/// (1 s here) from its first byte, although the peer is never silent (the idle timer would not
/// fire); a fresh client is echoed within 1 s meanwhile.
#[test]
fn a_trickling_message_is_closed_with_1008_at_the_message_timeout() {
    let mut cfg = test_config();
    cfg.message_timeout = Duration::from_secs(1);
    cfg.idle_timeout = Some(Duration::from_secs(5));
    let (server, rec) = start_echo(cfg);
    let addr = server.local_addr().unwrap();

    let mut s = raw_ws(addr);
    let (header, mask) = big_header(1 << 20);
    let mut bytes = header;
    bytes.extend((0..32).map(|i| 0x5A ^ mask[i % 4]));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut echo = Duration::ZERO;
    let mut during = 0;
    // One byte every 200 ms (the read timeout) until the server's Close arrives; at most 3 s.
    while got.len() < 4 && start.elapsed() < Duration::from_secs(3) && sent < bytes.len() {
        if s.write_all(&bytes[sent..sent + 1]).is_err() {
            break; // the server has closed: read what it sent
        }
        sent += 1;
        if sent == 3 {
            echo = fresh_echo(addr, "a message trickling");
            during = memory(&server);
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e} after {:?}", start.elapsed()),
        }
    }
    let took = start.elapsed();
    if got.len() < 4 {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 64];
        if let Ok(n) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(got.len() >= 4, "no Close within {took:?}: {got:?}");
    assert!(got[0] == 0x88 && got[1] < 126, "a Close frame: {got:?}");
    let code = u16::from_be_bytes([got[2], got[3]]);
    eprintln!(
        "trickle: {sent} bytes sent at 200 ms intervals; Close {code} after {took:?}; memory \
         gauge meanwhile {during} B; fresh echo {echo:?}"
    );
    assert_eq!(code, 1008);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1500),
        "closed after {took:?}, not at the 1 s message timeout"
    );
    rec.wait_for(T, "on_close 1008", |r| r.closes.iter().any(|c| c.1 == 1008));
    assert_eq!(sum(&server, |w| w.message_timeouts), 1);
    assert_eq!(sum(&server, |w| w.idle_pings), 0, "the idle timer fired");

    drop(s);
    wait_until(T, "the trickler gone", || {
        sum(&server, |w| w.connections) == 0
    });
    memory_back_to_zero(&server);
}
