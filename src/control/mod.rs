//! The control plane: metrics and debug probes, served over HTTP.
//!
//! `GET /metrics` answers in the Prometheus text format: the transport's counters (sessions per
//! worker, connections, idle pings and drops, undelivered sends; with the kernel transport also
//! each worker's large-buffer caches, `hioload_buffer_cache_*{worker,cache="assembly"|"output"}`,
//! as published at the worker's last tick), the buffer pools' stats per node, uptime and reloads,
//! and whatever the handler chain writes ([`crate::Handler::write_metrics`]: the `Metrics` and
//! `Recovery` middleware). `GET /debug/probes` answers a JSON object with one member per probe:
//! the built-in `active_sessions`, `worker_sessions`, `buffer_caches`, `pool`, `uptime_seconds`,
//! `config`, and every probe registered with [`crate::Server::register_probe`].
//!
//! Both are plain functions of the server's state, rendered when asked (never on the message
//! path). Where they are served is the transport's business: on the main listener for requests
//! that are not upgrades (through the data path's HTTP hook), or on a separate admin listener
//! (`admin_listen`, `control/admin.rs`), which any data path can share as it is.

pub(crate) mod admin;
pub mod json;
pub mod prometheus;

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use hioload_fallback::Remote;
use hioload_wsproto::HttpRequest;

use crate::config::Config;
use crate::handler::Handler;
use crate::http::write_response;
use crate::pool::PoolManager;
use crate::registry::Registry;

/// What a probe reports.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeValue {
    /// An integer.
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Text(String),
    /// Raw JSON, inserted as is (must be valid JSON).
    Json(String),
}

macro_rules! probe_from {
    ($($t:ty => $v:ident as $as:ty),*) => {$(
        impl From<$t> for ProbeValue {
            fn from(v: $t) -> ProbeValue {
                ProbeValue::$v(v as $as)
            }
        }
    )*};
}
probe_from!(i32 => Int as i64, i64 => Int as i64, u32 => UInt as u64, u64 => UInt as u64,
    usize => UInt as u64, f32 => Float as f64, f64 => Float as f64);

impl From<bool> for ProbeValue {
    fn from(v: bool) -> ProbeValue {
        ProbeValue::Bool(v)
    }
}
impl From<String> for ProbeValue {
    fn from(v: String) -> ProbeValue {
        ProbeValue::Text(v)
    }
}
impl From<&str> for ProbeValue {
    fn from(v: &str) -> ProbeValue {
        ProbeValue::Text(v.to_string())
    }
}

impl ProbeValue {
    fn write_json(&self, out: &mut String) {
        match self {
            ProbeValue::Int(v) => {
                let _ = write!(out, "{v}");
            }
            ProbeValue::UInt(v) => {
                let _ = write!(out, "{v}");
            }
            ProbeValue::Float(v) => json::number(out, *v),
            ProbeValue::Bool(v) => {
                let _ = write!(out, "{v}");
            }
            ProbeValue::Text(s) => json::string(out, s),
            ProbeValue::Json(raw) => out.push_str(raw),
        }
    }
}

type ProbeFn = dyn Fn() -> ProbeValue + Send + Sync;

/// Where the per-worker counters come from: the kernel transport's workers or the DPDK lcores.
pub(crate) enum StatsSource {
    Kernel(Remote),
    #[cfg(feature = "dpdk")]
    Dpdk(Arc<crate::dpdk::LcoreStats>),
}

impl StatsSource {
    pub fn worker_stats(&self) -> Vec<hioload_fallback::WorkerStats> {
        match self {
            StatsSource::Kernel(remote) => remote.worker_stats(),
            #[cfg(feature = "dpdk")]
            StatsSource::Dpdk(lcores) => lcores.worker_stats(),
        }
    }

    /// Whether the workers publish their buffer-cache counters (the kernel transport's do; the
    /// DPDK lcores' would read as zeros).
    pub fn has_buffer_caches(&self) -> bool {
        matches!(self, StatsSource::Kernel(_))
    }
}

/// What exists once the server runs.
pub(crate) struct Runtime {
    pub stats: StatsSource,
    pub pools: PoolManager,
    pub handler: Arc<dyn Handler>,
}

/// The server's observable state, shared by the server, the data path's HTTP hook and the admin
/// listener.
pub(crate) struct Control {
    started: Instant,
    probes: RwLock<Vec<(String, Arc<ProbeFn>)>>,
    /// The configuration in force (reloadable parts updated by reloads).
    pub current: Mutex<Config>,
    pub reloads: AtomicU64,
    pub registry: Registry,
    pub runtime: OnceLock<Runtime>,
}

impl Control {
    pub fn new(cfg: &Config) -> Control {
        Control {
            started: Instant::now(),
            probes: RwLock::new(Vec::new()),
            current: Mutex::new(cfg.clone()),
            reloads: AtomicU64::new(0),
            registry: Registry::new(cfg.session_shards),
            runtime: OnceLock::new(),
        }
    }

    pub fn register_probe(&self, name: &str, probe: Arc<ProbeFn>) {
        let mut probes = self.probes.write().unwrap_or_else(|e| e.into_inner());
        match probes.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = probe,
            None => probes.push((name.to_string(), probe)),
        }
    }

    pub fn config(&self) -> Config {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Answers `/metrics` and `/debug/probes`; `false` for other paths (the caller answers them).
    pub fn answer(&self, request: &HttpRequest<'_>, response: &mut Vec<u8>) -> bool {
        let path = request.path.split('?').next().unwrap_or("");
        let body = match path {
            "/metrics" | "/debug/probes" if request.method != "GET" && request.method != "HEAD" => {
                write_response(
                    response,
                    405,
                    "Method Not Allowed",
                    "text/plain; charset=utf-8",
                    b"only GET\n",
                );
                return true;
            }
            "/metrics" => (
                self.metrics_text(),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            "/debug/probes" => (self.probes_json(), "application/json"),
            _ => return false,
        };
        write_response(response, 200, "OK", body.1, body.0.as_bytes());
        true
    }

    /// Every metric, in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        prometheus::gauge(
            &mut out,
            "hioload_uptime_seconds",
            "Seconds since the server was created.",
            self.started.elapsed().as_secs_f64(),
        );
        prometheus::counter(
            &mut out,
            "hioload_config_reloads_total",
            "Configuration reloads applied.",
            self.reloads.load(Ordering::Relaxed),
        );
        let Some(rt) = self.runtime.get() else {
            return out;
        };
        let workers = rt.stats.worker_stats();
        prometheus::gauge(
            &mut out,
            "hioload_sessions_active",
            "Open WebSocket sessions.",
            workers.iter().map(|w| w.sessions).sum::<usize>() as f64,
        );
        type Field = fn(&hioload_fallback::WorkerStats) -> usize;
        let per_worker: [(&str, &str, &str, Field); 7] = [
            (
                "hioload_worker_sessions",
                "gauge",
                "Open sessions per worker.",
                |w| w.sessions,
            ),
            (
                "hioload_worker_connections",
                "gauge",
                "TCP connections per worker (any phase).",
                |w| w.connections,
            ),
            (
                "hioload_undelivered_total",
                "counter",
                "Sends by id whose session had ended.",
                |w| w.undelivered,
            ),
            (
                "hioload_idle_pings_total",
                "counter",
                "Pings sent to idle sessions.",
                |w| w.idle_pings,
            ),
            (
                "hioload_idle_drops_total",
                "counter",
                "Idle sessions dropped for not answering a ping.",
                |w| w.idle_drops,
            ),
            (
                "hioload_buffer_waits_total",
                "counter",
                "Reads deferred for want of a receive buffer.",
                |w| w.buffer_waits,
            ),
            (
                "hioload_ring_buffers",
                "gauge",
                "Receive buffers lent to the kernel's io_uring ring (0 with the poll backend).",
                |w| w.ring_buffers,
            ),
        ];
        for (name, kind, help, field) in per_worker {
            prometheus::header(&mut out, name, kind, help);
            for (i, w) in workers.iter().enumerate() {
                prometheus::sample(
                    &mut out,
                    name,
                    &[("worker", &i.to_string())],
                    field(w) as f64,
                );
            }
        }
        if rt.stats.has_buffer_caches() {
            buffer_cache_metrics(&mut out, &workers);
        }
        let pools = rt.pools.stats();
        let node_metrics: [(&str, &str, &str); 6] = [
            (
                "hioload_pool_buffers_in_use",
                "gauge",
                "Pool buffers handed out and not returned.",
            ),
            (
                "hioload_pool_buffers_allocated",
                "gauge",
                "Pool buffers carved from system memory.",
            ),
            (
                "hioload_pool_hits_total",
                "counter",
                "Pool gets served from free buffers.",
            ),
            (
                "hioload_pool_misses_total",
                "counter",
                "Pool gets that needed fresh memory.",
            ),
            (
                "hioload_pool_exhausted_total",
                "counter",
                "Pool gets that found the class at its limit.",
            ),
            (
                "hioload_pool_reserved_bytes",
                "gauge",
                "Bytes the pool took from the system.",
            ),
        ];
        for (name, kind, help) in node_metrics {
            prometheus::header(&mut out, name, kind, help);
            for node in &pools.nodes {
                let node_label = node.node.to_string();
                if name == "hioload_pool_reserved_bytes" {
                    prometheus::sample(
                        &mut out,
                        name,
                        &[("node", &node_label)],
                        node.reserved_bytes as f64,
                    );
                    continue;
                }
                for class in node.classes.iter().filter(|c| c.allocated > 0) {
                    let v = match name {
                        "hioload_pool_buffers_in_use" => class.in_use,
                        "hioload_pool_buffers_allocated" => class.allocated,
                        "hioload_pool_hits_total" => class.hits,
                        "hioload_pool_misses_total" => class.misses,
                        _ => class.exhausted,
                    };
                    let size = class.size.to_string();
                    prometheus::sample(
                        &mut out,
                        name,
                        &[("node", &node_label), ("size", &size)],
                        v as f64,
                    );
                }
            }
        }
        rt.handler.write_metrics(&mut out);
        out
    }

    /// Every probe, as one JSON object.
    pub fn probes_json(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push('{');
        let mut first = true;
        let mut member = |out: &mut String, name: &str, value: &dyn Fn(&mut String)| {
            if !first {
                out.push(',');
            }
            first = false;
            json::string(out, name);
            out.push(':');
            value(out);
        };
        let rt = self.runtime.get();
        let workers = rt.map(|rt| rt.stats.worker_stats()).unwrap_or_default();
        member(&mut out, "active_sessions", &|out| {
            let _ = write!(out, "{}", workers.iter().map(|w| w.sessions).sum::<usize>());
        });
        member(&mut out, "worker_sessions", &|out| {
            out.push('[');
            for (i, w) in workers.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}", w.sessions);
            }
            out.push(']');
        });
        member(&mut out, "buffer_caches", &|out| match rt {
            Some(rt) if rt.stats.has_buffer_caches() => buffer_caches_json(out, &workers),
            _ => out.push_str("null"),
        });
        member(&mut out, "pool", &|out| match rt {
            Some(rt) => {
                let s = rt.pools.stats();
                let _ = write!(
                    out,
                    "{{\"in_use\":{},\"hits\":{},\"misses\":{},\"exhausted\":{},\"nodes\":[",
                    s.in_use(),
                    s.hits(),
                    s.misses(),
                    s.exhausted()
                );
                for (i, n) in s.nodes.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(
                        out,
                        "{{\"node\":{},\"in_use\":{},\"reserved_bytes\":{},\"bound_bytes\":{},\"budget_bytes\":{}}}",
                        n.node,
                        n.in_use(),
                        n.reserved_bytes,
                        n.bound_bytes,
                        n.budget_bytes
                    );
                }
                out.push_str("]}");
            }
            None => out.push_str("null"),
        });
        member(&mut out, "uptime_seconds", &|out| {
            json::number(out, self.started.elapsed().as_secs_f64())
        });
        let cfg = self.config();
        member(&mut out, "config", &|out| config_json(out, &cfg));
        let probes: Vec<(String, Arc<ProbeFn>)> = self
            .probes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (name, probe) in probes {
            let value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe()))
                .unwrap_or_else(|_| ProbeValue::Text("probe panicked".into()));
            member(&mut out, &name, &|out| value.write_json(out));
        }
        out.push('}');
        out
    }
}

/// Both large-buffer caches of every worker (as of its last tick): common families labelled
/// `worker` and `cache` (`assembly`: message assembly; `output`: staging and pending output),
/// plus what only one of them has.
fn buffer_cache_metrics(out: &mut String, workers: &[hioload_fallback::WorkerStats]) {
    type Field = fn(&CacheFigures) -> u64;
    let families: [(&str, &str, &str, Field); 7] = [
        (
            "hioload_buffer_cache_borrowed_total",
            "counter",
            "Large buffers a worker's cache handed out.",
            |c| c.borrowed,
        ),
        (
            "hioload_buffer_cache_hits_total",
            "counter",
            "Large buffers handed out from the cache with enough capacity (no allocation).",
            |c| c.hits,
        ),
        (
            "hioload_buffer_cache_misses_total",
            "counter",
            "Large buffers that had to be allocated or grown.",
            |c| c.misses,
        ),
        (
            "hioload_buffer_cache_returned_total",
            "counter",
            "Buffers given back and kept.",
            |c| c.returned,
        ),
        (
            "hioload_buffer_cache_freed_total",
            "counter",
            "Buffers freed: beyond the cache's bounds, evicted for a larger one, or trimmed.",
            |c| c.freed,
        ),
        (
            "hioload_buffer_cache_free_buffers",
            "gauge",
            "Free large buffers the cache holds.",
            |c| c.free_buffers,
        ),
        (
            "hioload_buffer_cache_free_bytes",
            "gauge",
            "Free large capacity the cache holds, in bytes.",
            |c| c.free_bytes,
        ),
    ];
    for (name, kind, help, field) in families {
        prometheus::header(out, name, kind, help);
        for (i, w) in workers.iter().enumerate() {
            let worker = i.to_string();
            for (cache, figures) in CacheFigures::of(w) {
                let labels = [("worker", worker.as_str()), ("cache", cache)];
                prometheus::sample(out, name, &labels, field(&figures) as f64);
            }
        }
    }
    type Only = fn(&hioload_fallback::WorkerStats) -> u64;
    let only: [(&str, &str, &str, Only); 4] = [
        (
            "hioload_assembly_buffers_grown_total",
            "counter",
            "Borrowed assembly buffers that had to grow (a fragmented message outgrew it).",
            |w| w.assembly_cache.grown,
        ),
        (
            "hioload_output_small_buffers_borrowed_total",
            "counter",
            "Small (64 KiB) pending-output buffers handed out.",
            |w| w.output_cache.small_borrowed,
        ),
        (
            "hioload_output_small_buffers_misses_total",
            "counter",
            "Small pending-output buffers that had to be allocated.",
            |w| w.output_cache.small_misses,
        ),
        (
            "hioload_output_small_buffers_free",
            "gauge",
            "Free small pending-output buffers held.",
            |w| w.output_cache.small_cached as u64,
        ),
    ];
    for (name, kind, help, field) in only {
        prometheus::header(out, name, kind, help);
        for (i, w) in workers.iter().enumerate() {
            prometheus::sample(out, name, &[("worker", &i.to_string())], field(w) as f64);
        }
    }
}

/// `buffer_caches`: per worker, `{"assembly":{...},"output":{...}}` (as of its last tick).
fn buffer_caches_json(out: &mut String, workers: &[hioload_fallback::WorkerStats]) {
    out.push('[');
    for (i, w) in workers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let (a, o) = (&w.assembly_cache, &w.output_cache);
        out.push_str("{\"assembly\":");
        json_counts(
            out,
            &[
                ("borrowed", a.borrowed),
                ("hits", a.hits),
                ("misses", a.misses),
                ("grown", a.grown),
                ("returned", a.returned),
                ("freed", a.freed),
                ("cached_buffers", a.cached_buffers as u64),
                ("cached_bytes", a.cached_bytes as u64),
            ],
        );
        out.push_str(",\"output\":");
        json_counts(
            out,
            &[
                ("borrowed", o.borrowed),
                ("hits", o.hits),
                ("misses", o.misses),
                ("returned", o.returned),
                ("freed", o.freed),
                ("cached_buffers", o.cached_buffers as u64),
                ("cached_bytes", o.cached_bytes as u64),
                ("small_borrowed", o.small_borrowed),
                ("small_misses", o.small_misses),
                ("small_cached", o.small_cached as u64),
            ],
        );
        out.push('}');
    }
    out.push(']');
}

/// A JSON object of named counts (names are plain identifiers: no escaping needed).
fn json_counts(out: &mut String, counts: &[(&str, u64)]) {
    out.push('{');
    for (i, (name, value)) in counts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{name}\":{value}");
    }
    out.push('}');
}

/// What the two caches of a worker have in common.
struct CacheFigures {
    borrowed: u64,
    hits: u64,
    misses: u64,
    returned: u64,
    freed: u64,
    free_buffers: u64,
    free_bytes: u64,
}

impl CacheFigures {
    /// A worker's two caches, by their `cache` label.
    fn of(w: &hioload_fallback::WorkerStats) -> [(&'static str, CacheFigures); 2] {
        let (a, o) = (&w.assembly_cache, &w.output_cache);
        [
            (
                "assembly",
                CacheFigures {
                    borrowed: a.borrowed,
                    hits: a.hits,
                    misses: a.misses,
                    returned: a.returned,
                    freed: a.freed,
                    free_buffers: a.cached_buffers as u64,
                    free_bytes: a.cached_bytes as u64,
                },
            ),
            (
                "output",
                CacheFigures {
                    borrowed: o.borrowed,
                    hits: o.hits,
                    misses: o.misses,
                    returned: o.returned,
                    freed: o.freed,
                    free_buffers: o.cached_buffers as u64,
                    free_bytes: o.cached_bytes as u64,
                },
            ),
        ]
    }
}

/// The configuration in force, as JSON (durations in seconds).
fn config_json(out: &mut String, c: &Config) {
    out.push('{');
    out.push_str("\"listen\":");
    json::string(out, &c.listen.to_string());
    out.push_str(",\"admin_listen\":");
    match c.admin_listen {
        Some(a) => json::string(out, &a.to_string()),
        None => out.push_str("null"),
    }
    out.push_str(",\"path\":");
    json::string(out, &c.path);
    let _ = write!(
        out,
        ",\"num_workers\":{},\"ring_capacity\":{},\"batch_size\":{},\"cpu_affinity\":{},\"session_shards\":{}",
        c.num_workers, c.ring_capacity, c.batch_size, c.cpu_affinity, c.session_shards
    );
    let l = &c.limits;
    let _ = write!(
        out,
        ",\"limits\":{{\"max_frame_size\":{},\"max_message_size\":{},\"max_head_bytes\":{},\"max_headers\":{},\"inplace_frame_max\":{}}}",
        l.max_frame_size, l.max_message_size, l.max_head_bytes, l.max_headers, l.inplace_frame_max
    );
    let b = &c.backpressure;
    let _ = write!(
        out,
        ",\"backpressure\":{{\"soft_bytes\":{},\"hard_bytes\":{},\"timeout\":{}}}",
        b.soft_bytes,
        b.hard_bytes,
        b.timeout.as_secs_f64()
    );
    let _ = write!(
        out,
        ",\"handshake_timeout\":{},\"close_timeout\":{},\"shutdown_grace\":{},\"pong_timeout\":{},\"idle_timeout\":",
        c.handshake_timeout.as_secs_f64(),
        c.close_timeout.as_secs_f64(),
        c.shutdown_grace.as_secs_f64(),
        c.pong_timeout.as_secs_f64()
    );
    match c.idle_timeout {
        Some(d) => json::number(out, d.as_secs_f64()),
        None => out.push_str("null"),
    }
    out.push('}');
}
