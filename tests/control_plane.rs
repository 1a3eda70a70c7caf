//! The control plane over real loopback HTTP: probes as JSON, metrics as Prometheus text that
//! counts what a test sent, on the main listener and on a separate admin address.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use hioload_ws::{HandlerExt, Metrics, Server};
use tungstenite::Message as WsMessage;

#[test]
fn a_registered_probe_answers_over_http_with_the_built_in_ones() {
    let server = Server::new(test_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    server.register_probe("hits_probe", move || h.fetch_add(1, Ordering::Relaxed) + 41);
    server.register_probe("build", || "test");
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let _ws = client(addr, "/ws");
    wait_until(T, "session registered", || server.session_count() == 1);

    let (status, head, body) = http_get(addr, "/debug/probes");
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
    let (_, _, body) = http_get(addr, "/debug/probes");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["hits_probe"], 42);
    // Other methods on control paths are refused.
    let (_, head) = raw_request(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_the_messages_sent() {
    let server = Server::new(test_config())
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

    let (status, head, body) = http_get(addr, "/metrics");
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
    let server = Server::new(test_config())
        .unwrap()
        .with_handler(RecordingEcho::default());
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let families = [
        "hioload_buffer_cache_borrowed_total",
        "hioload_buffer_cache_hits_total",
        "hioload_buffer_cache_misses_total",
        "hioload_buffer_cache_returned_total",
        "hioload_buffer_cache_freed_total",
        "hioload_buffer_cache_free_buffers",
        "hioload_buffer_cache_free_bytes",
    ];
    let scrape = || parse_prometheus(&http_get(addr, "/metrics").2);

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
    // assembly cache) and their echoes exceed the turn's own staging (staged in a buffer
    // borrowed from the worker's output cache).
    let echoes = 4;
    let mut ws = client(addr, "/ws");
    for i in 0..echoes {
        let payload: Vec<u8> = (0..2u32 << 20).map(|b| (b % 251) as u8 ^ i).collect();
        ws.send(WsMessage::binary(payload.clone())).unwrap();
        assert!(ws.read().unwrap().into_data() == payload, "echo {i}");
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
    let (status, _, body) = http_get(addr, "/debug/probes");
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
