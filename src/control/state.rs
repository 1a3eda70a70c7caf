//! The control plane's state: when the server started, the configuration in force, reloads,
//! the session registry, registered probes, and (once it runs) the data path and handler chain
//! whose counters are rendered.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use hioload_wsproto::HttpRequest;

use super::ProbeFn;
use crate::config::Config;
use crate::data_path::DataPath;
use crate::handler::Handler;
use crate::http::write_response;
use crate::registry::Registry;

/// The listener a control-plane request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The WebSocket listener (`control_on_main`): a worker answers, so no application code
    /// (registered probes) runs.
    Main,
    /// The admin listener (`admin_listen`): a thread of its own answers, with every probe.
    Admin,
}

/// What exists once the server runs.
pub(crate) struct Runtime {
    pub path: Arc<dyn DataPath>,
    pub handler: Arc<dyn Handler>,
    /// The link to the other nodes, when `cluster` is configured.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// The server's observable state, shared by the server, the data path's HTTP hook and the admin
/// listener.
pub(crate) struct Control {
    pub(super) started: Instant,
    pub(super) probes: RwLock<Vec<(String, Arc<ProbeFn>)>>,
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

    /// Answers `/metrics` and `/debug/probes` on the listener `on`; `false` for other paths (the
    /// caller answers them).
    pub fn answer(&self, request: &HttpRequest<'_>, response: &mut Vec<u8>, on: Listener) -> bool {
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
            "/debug/probes" => (
                self.render_probes(on == Listener::Admin),
                "application/json",
            ),
            _ => return false,
        };
        write_response(response, 200, "OK", body.1, body.0.as_bytes());
        true
    }
}
