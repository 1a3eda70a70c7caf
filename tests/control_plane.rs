//! The control plane over real loopback HTTP: probes as JSON, metrics as Prometheus text that
//! counts what a test sent, on the admin listener (and on the main listener only when
//! `control_on_main` asks for it); the admin listener serves several connections at once, so
//! idle ones and slow probes delay neither a scrape nor a worker.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hioload_ws::{Config, HandlerExt, HttpRequest, Metrics, Server};
use tungstenite::Message as WsMessage;

/// The test config with an admin listener on a free loopback port.
fn admin_config() -> Config {
    let mut cfg = test_config();
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

#[test]
fn a_registered_probe_answers_over_http_with_the_built_in_ones() {
    let server = Server::new(admin_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    server.register_probe("hits_probe", move || h.fetch_add(1, Ordering::Relaxed) + 41);
    server.register_probe("build", || "test");
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let _ws = client(addr, "/ws");
    wait_until(T, "session registered", || server.session_count() == 1);

    let (status, head, body) = http_get(admin, "/debug/probes");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    assert_eq!(json["hits_probe"], 41, "{body}");
    assert_eq!(json["build"], "test");
    assert_eq!(json["active_sessions"], 1);
    let per_worker = json["worker_sessions"].as_array().unwrap();
    assert_eq!(per_worker.len(), 2);
    assert_eq!(
        per_worker.iter().map(|v| v.as_u64().unwrap()).sum::<u64>(),
        1
    );
    assert!(json["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(json["config"]["num_workers"], 2);
    assert_eq!(json["config"]["path"], "/ws");
    assert!(!json["pool"]["nodes"].as_array().unwrap().is_empty());
    // Called again for the next request: a live value, not a cached one.
    let (_, _, body) = http_get(admin, "/debug/probes");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["hits_probe"], 42);
    // Other methods on control paths are refused.
    let (_, head) = raw_request(
        admin,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_the_messages_sent() {
    let server = Server::new(admin_config())
        .unwrap()
        .with_handler(RecordingEcho::default().with(Metrics::new().time_every(1)));
    server.start().unwrap();
    let addr = server.local_addr().unwrap();

    let sizes = [1usize, 10, 125, 126, 1000, 65_536, 70_000];
    let mut ws = client(addr, "/ws");
    for &n in &sizes {
        ws.send(WsMessage::binary(vec![7u8; n])).unwrap();
        assert_eq!(ws.read().unwrap().len(), n);
    }
    ws.send(WsMessage::text("close-me 4000")).unwrap();
    while ws.read().is_ok() {}
    wait_until(T, "session closed", || server.session_count() == 0);

    let (status, head, body) = http_get(server.admin_addr().unwrap(), "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let samples = parse_prometheus(&body);
    let total: usize = sizes.iter().sum();
    let n = sizes.len() as f64;
    assert_eq!(
        sample(&samples, "hioload_messages_in_total"),
        Some(n + 1.0),
        "{body}"
    );
    assert_eq!(
        sample(&samples, "hioload_bytes_in_total"),
        Some((total + "close-me 4000".len()) as f64)
    );
    assert_eq!(sample(&samples, "hioload_messages_out_total"), Some(n));
    assert_eq!(
        sample(&samples, "hioload_bytes_out_total"),
        Some(total as f64)
    );
    assert_eq!(sample(&samples, "hioload_sessions_opened_total"), Some(1.0));
    assert_eq!(sample(&samples, "hioload_sessions_closed_total"), Some(1.0));
    assert_eq!(
        sample(
            &samples,
            "hioload_session_close_codes_total{code=\"other\"}"
        ),
        Some(1.0),
        "4000 is outside 1000-1015"
    );
    assert_eq!(
        sample(
            &samples,
            "hioload_handler_latency_seconds_bucket{le=\"+Inf\"}"
        ),
        Some(n + 1.0)
    );
    assert_eq!(
        sample(&samples, "hioload_handler_latency_seconds_count"),
        Some(n + 1.0)
    );
    assert_eq!(sample(&samples, "hioload_sessions_active"), Some(0.0));
    assert_eq!(sample(&samples, "hioload_handler_panics_total"), Some(0.0));
    // Pool stats are there, and every receive buffer is back.
    let in_use: f64 = samples
        .iter()
        .filter(|(s, _)| s.starts_with("hioload_pool_buffers_in_use{"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        samples
            .iter()
            .any(|(s, _)| s.starts_with("hioload_pool_hits_total{")),
        "{body}"
    );
    // Those lent to the io_uring ring wait for data: not held by anyone.
    let lent: f64 = samples
        .iter()
        .filter(|(s, _)| s.starts_with("hioload_ring_buffers{"))
        .map(|(_, v)| v)
        .sum();
    // The scrape's own connection holds one while it is answered.
    assert!(in_use - lent <= 1.0, "{body}");
}

#[test]
fn probes_and_metrics_are_served_on_the_admin_address_and_not_on_the_main_one() {
    let mut cfg = test_config();
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = Server::new(cfg)
        .unwrap()
        .with_handler(RecordingEcho::default().with(Metrics::new()));
    server.register_probe("active_sessions_again", || 7u64);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let admin = server.admin_addr().expect("admin listener bound");
    assert_ne!(admin, addr);

    let mut ws = client(addr, "/ws");
    ws.send(WsMessage::text("x")).unwrap();
    ws.read().unwrap();

    let (status, _, body) = http_get(admin, "/debug/probes");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["active_sessions"], 1);
    assert_eq!(json["active_sessions_again"], 7);
    let (status, _, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    let samples = parse_prometheus(&body);
    assert_eq!(sample(&samples, "hioload_messages_in_total"), Some(1.0));
    assert_eq!(http_get(admin, "/other").0, 404);
    // The main listener leaves these paths to the application's HTTP handler (404 here).
    assert_eq!(http_get(addr, "/metrics").0, 404);
    assert_eq!(http_get(addr, "/debug/probes").0, 404);
    drop(ws);
    server.shutdown().unwrap();
}

/// Sum over workers of `family{worker="…",cache="cache"}`.
fn cache_total(samples: &[(String, f64)], family: &str, cache: &str) -> f64 {
    let prefix = format!("{family}{{worker=");
    let label = format!(",cache=\"{cache}\"}}");
    samples
        .iter()
        .filter(|(s, _)| s.starts_with(&prefix) && s.ends_with(&label))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn buffer_cache_counters_are_published_and_move_after_large_echoes() {
    let server = Server::new(admin_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let families = [
        "hioload_buffer_cache_borrowed_total",
        "hioload_buffer_cache_hits_total",
        "hioload_buffer_cache_misses_total",
        "hioload_buffer_cache_returned_total",
        "hioload_buffer_cache_freed_total",
        "hioload_buffer_cache_free_buffers",
        "hioload_buffer_cache_free_bytes",
    ];
    let scrape = || parse_prometheus(&http_get(admin, "/metrics").2);

    // Every worker has both caches' series from the start, and nothing was borrowed yet.
    let before = scrape();
    for family in families {
        for worker in 0..2 {
            for cache in ["assembly", "output"] {
                let series = format!("{family}{{worker=\"{worker}\",cache=\"{cache}\"}}");
                assert!(sample(&before, &series).is_some(), "{series} missing");
            }
        }
    }
    for family in [
        "hioload_assembly_buffers_grown_total",
        "hioload_output_small_buffers_borrowed_total",
        "hioload_output_small_buffers_misses_total",
        "hioload_output_small_buffers_free",
    ] {
        assert!(
            sample(&before, &format!("{family}{{worker=\"0\"}}")).is_some(),
            "{family} missing"
        );
    }
    for cache in ["assembly", "output"] {
        assert_eq!(
            cache_total(&before, "hioload_buffer_cache_borrowed_total", cache),
            0.0
        );
    }

    // 2 MiB messages arrive over many reads (assembled in a buffer borrowed from the worker's
    // assembly cache; their echoes go out from that buffer); a "flood" answers with 4 MiB in
    // one turn, more than the turn's own staging (staged in a buffer borrowed from the worker's
    // output cache).
    let echoes = 4;
    let mut ws = client(addr, "/ws");
    for i in 0..echoes {
        let payload: Vec<u8> = (0..2u32 << 20).map(|b| (b % 251) as u8 ^ i).collect();
        ws.send(WsMessage::binary(payload.clone())).unwrap();
        assert!(ws.read().unwrap().into_data() == payload, "echo {i}");
        ws.send(WsMessage::text("flood")).unwrap();
        for _ in 0..64 {
            assert_eq!(ws.read().unwrap().into_data().len(), 64 << 10, "flood {i}");
        }
    }
    ws.close(None).unwrap();
    while ws.read().is_ok() {}

    // Workers publish at their tick; the session's worker ticks after the close.
    let n = f64::from(echoes);
    let mut after = Vec::new();
    wait_until(T, "the caches' counters to be published", || {
        after = scrape();
        ["assembly", "output"].iter().all(|cache| {
            cache_total(&after, "hioload_buffer_cache_borrowed_total", cache) >= n
                && cache_total(&after, "hioload_buffer_cache_free_buffers", cache) >= 1.0
        })
    });
    for cache in ["assembly", "output"] {
        let total = |family| cache_total(&after, family, cache);
        let (borrowed, hits, misses) = (
            total("hioload_buffer_cache_borrowed_total"),
            total("hioload_buffer_cache_hits_total"),
            total("hioload_buffer_cache_misses_total"),
        );
        assert_eq!(hits + misses, borrowed, "{cache}");
        // The first message allocates; the later ones reuse what it gave back.
        assert!(hits >= n - 1.0, "{cache}: {hits} hits of {borrowed}");
        assert!(total("hioload_buffer_cache_returned_total") >= n, "{cache}");
        assert!(
            total("hioload_buffer_cache_free_bytes") >= f64::from(2u32 << 20),
            "{cache}"
        );
    }

    // The same figures in the JSON probes.
    let (status, _, body) = http_get(admin, "/debug/probes");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    let caches = json["buffer_caches"]
        .as_array()
        .expect("buffer_caches is an array");
    assert_eq!(caches.len(), 2, "{body}");
    for cache in ["assembly", "output"] {
        let sum = |field: &str| {
            caches
                .iter()
                .map(|w| w[cache][field].as_u64().unwrap())
                .sum::<u64>()
        };
        assert!(sum("borrowed") >= u64::from(echoes), "{cache}: {body}");
        assert!(sum("hits") >= u64::from(echoes) - 1, "{cache}: {body}");
        assert!(sum("cached_bytes") >= 2 << 20, "{cache}: {body}");
    }
    assert!(
        caches[0]["assembly"]["grown"].is_u64() && caches[0]["output"]["small_cached"].is_u64()
    );
    server.shutdown().unwrap();
}

#[test]
fn buffers_lent_to_the_io_uring_rings_are_published_from_the_start() {
    let server = Server::new(test_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    server.start().unwrap();
    // No connection at all: the workers are in their first wait.
    let lent = || -> Vec<usize> {
        let stats = server.worker_stats().unwrap();
        stats.iter().map(|w| w.ring_buffers).collect()
    };
    if server.io_backend() == Some(hioload_ws::IoBackend::IoUring) {
        wait_until(T, "every worker's ring buffers published", || {
            lent().iter().all(|&n| n > 0)
        });
        let in_use = server.pool_stats().unwrap().in_use();
        assert_eq!(in_use, lent().iter().sum::<usize>() as u64, "{:?}", lent());
    } else {
        assert!(lent().iter().all(|&n| n == 0), "{:?}", lent());
    }
}

// ---- where the control plane is served -------------------------------------------------------

/// An application `HttpHandler` that answers every path with 418 and the path: shows which
/// requests reach it.
fn teapot(request: &HttpRequest<'_>, _peer: SocketAddr, response: &mut Vec<u8>) {
    let body = format!("the app's own {}\n", request.path);
    write!(
        response,
        "HTTP/1.1 418 I'm a teapot\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
}

#[test]
fn by_default_the_websocket_port_leaves_metrics_and_probes_to_the_application() {
    let defaults = Config::default();
    assert_eq!(
        defaults.admin_listen, None,
        "the library binds no admin port unasked"
    );
    assert!(!defaults.control_on_main);

    let server = Server::new(test_config())
        .unwrap()
        .with_handler(RecordingEcho::default().with(Metrics::new()))
        .with_http_handler(teapot);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    assert_eq!(server.admin_addr(), None);
    for path in ["/metrics", "/debug/probes"] {
        let (status, _, body) = http_get(addr, path);
        assert_eq!(status, 418, "{path} goes to the application's handler");
        assert_eq!(body, format!("the app's own {path}\n"));
        assert!(!body.contains("hioload_"), "{body}");
    }
    // With the default handler: 404, and nothing of the control plane in it.
    let server = Server::new(test_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    for path in ["/metrics", "/debug/probes"] {
        let (status, _, body) = http_get(addr, path);
        assert_eq!(status, 404, "{path}");
        assert!(!body.contains("hioload_") && !body.contains("active_sessions"));
    }
    // Still readable in process.
    assert!(server.metrics_text().contains("hioload_sessions_active 0"));
}

#[test]
fn control_on_main_serves_them_before_the_application_without_registered_probes() {
    let mut cfg = admin_config();
    cfg.control_on_main = true;
    let server = Server::new(cfg)
        .unwrap()
        .with_handler(RecordingEcho::default().with(Metrics::new()))
        .with_http_handler(teapot);
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    server.register_probe("app_probe", move || c.fetch_add(1, Ordering::Relaxed));
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let mut ws = client(addr, "/ws");
    ws.send(WsMessage::text("x")).unwrap();
    ws.read().unwrap();

    let (status, head, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    let samples = parse_prometheus(&body);
    assert_eq!(sample(&samples, "hioload_messages_in_total"), Some(1.0));
    let (status, _, body) = http_get(addr, "/debug/probes");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["active_sessions"], 1);
    assert_eq!(json["config"]["control_on_main"], true);
    // A worker answered: the application's probe was not called, nor listed.
    assert!(json.get("app_probe").is_none(), "{body}");
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    // Other paths still reach the application.
    assert_eq!(http_get(addr, "/other").0, 418);
    // The admin listener serves everything, the application's probe included.
    let (_, _, body) = http_get(admin, "/debug/probes");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["app_probe"], 0);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(http_get(admin, "/metrics").0, 200);
}

#[test]
fn the_admin_listener_is_on_the_loopback_address_it_was_given() {
    let server = Server::new(admin_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    server.start().unwrap();
    let admin = server.admin_addr().unwrap();
    assert!(admin.ip().is_loopback(), "{admin}");
    assert_ne!(admin.port(), 0);
    let (_, _, body) = http_get(admin, "/debug/probes");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["config"]["admin_listen"], "127.0.0.1:0");
    assert_eq!(json["config"]["control_on_main"], false);
}

// ---- the admin listener under idle and slow connections -------------------------------------

/// `GET /metrics` on `admin`, timed; the status.
fn timed_scrape(admin: SocketAddr) -> (u16, Duration) {
    let start = Instant::now();
    let (status, _, body) = http_get(admin, "/metrics");
    assert!(body.contains("hioload_uptime_seconds"), "{body}");
    (status, start.elapsed())
}

/// Whether the server still holds `s` open: nothing to read, and no EOF.
fn still_open(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        // EOF, or bytes the server should not have sent.
        Ok(0..) => false,
    }
}

#[test]
fn idle_connections_do_not_delay_a_scrape() {
    let server = Server::new(admin_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    server.start().unwrap();
    let admin = server.admin_addr().unwrap();

    // Two connections that send nothing, one that sends half a request head.
    let mut idle = vec![
        TcpStream::connect(admin).unwrap(),
        TcpStream::connect(admin).unwrap(),
    ];
    let mut partial = TcpStream::connect(admin).unwrap();
    partial.write_all(b"GET /metrics HTTP/1.1\r\nHo").unwrap();
    idle.push(partial);
    // Let the listener accept them all before the scrape comes.
    std::thread::sleep(Duration::from_millis(200));

    for _ in 0..3 {
        let (status, took) = timed_scrape(admin);
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(1), "scrape took {took:?}");
    }
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(still_open(s), "idle connection {i} was closed");
    }
}

#[test]
fn idle_connections_are_closed_at_their_deadline_and_over_the_cap_refused() {
    let server = Server::new(admin_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    server.start().unwrap();
    let admin = server.admin_addr().unwrap();

    // 16 idle connections fill the listener; let it accept them.
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // One more is refused at once (a 503 or a bare close), not left waiting.
    let mut extra = TcpStream::connect(admin).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let start = Instant::now();
    match extra.read_to_end(&mut answer) {
        Ok(_) => {
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.is_empty() || text.starts_with("HTTP/1.1 503"),
                "{text}"
            );
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1));

    // Each idle connection is closed by the server at its 5 s deadline.
    for (i, s) in idle.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        let n = s.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "connection {i}: EOF");
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_millis(4500) && waited < Duration::from_secs(9),
        "closed after {waited:?}"
    );
    // And the listener serves again.
    let (status, took) = timed_scrape(admin);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_slow_probe_delays_its_own_answer_only_not_a_worker_nor_another_scrape() {
    let server = Server::new(admin_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    server.register_probe("slow", || {
        std::thread::sleep(Duration::from_millis(1500));
        1u64
    });
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let admin = server.admin_addr().unwrap();
    let mut ws = client(addr, "/ws");

    let slow = std::thread::spawn(move || {
        let start = Instant::now();
        let (status, _, body) = http_get(admin, "/debug/probes");
        (status, body, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    // While the probe sleeps: the workers echo, and /metrics answers.
    let start = Instant::now();
    for i in 0..20 {
        ws.send(WsMessage::text(format!("m{i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), WsMessage::text(format!("m{i}")));
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let (status, took) = timed_scrape(admin);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "scrape took {took:?}");

    let (status, body, took) = slow.join().unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"slow\":1"), "{body}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}
