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
//! Both are plain functions of the server's state (`state`), rendered when asked (never on the
//! message path) from one snapshot the data path gives (`metrics`, `probes`). Where they are served is the transport's business: on the main listener for requests
//! that are not upgrades (through the data path's HTTP hook), or on a separate admin listener
//! (`admin_listen`, `control/admin.rs`), which any data path can share as it is.

pub(crate) mod admin;
pub mod json;
mod metrics;
mod probes;
pub mod prometheus;

pub use probes::ProbeValue;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use hioload_wsproto::HttpRequest;

use crate::config::Config;
use crate::data_path::DataPath;
use crate::handler::Handler;
use crate::http::write_response;
use crate::registry::Registry;

type ProbeFn = dyn Fn() -> ProbeValue + Send + Sync;

/// What exists once the server runs.
pub(crate) struct Runtime {
    pub path: Arc<dyn DataPath>,
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
}
