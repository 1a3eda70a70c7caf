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
//! message path) from one snapshot the data path gives (`metrics`, `probes`). Where they are
//! served is configuration: on the admin listener (`admin_listen`, `control/admin.rs`: its own
//! threads, which any data path can share as it is), and, only with `control_on_main`, on the
//! WebSocket listener for requests that are not upgrades (through the data path's HTTP hook,
//! answered by a worker: registered probes are left out there, see `probes`). By default the
//! WebSocket port serves neither path: they go to the application's `HttpHandler`.

pub(crate) mod admin;
pub mod json;
mod metrics;
mod probes;
pub mod prometheus;
mod state;
mod topics;

pub use probes::ProbeValue;
pub(crate) use state::{Control, Listener, Runtime};

/// A registered probe.
type ProbeFn = dyn Fn() -> ProbeValue + Send + Sync;
