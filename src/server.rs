//! The server: validated config + handlers in, a running data path out.
//!
//! `Server` owns the configuration, the application's handlers and the control plane; `start`
//! wraps the handler chain in a `Recovery` (when it has none), builds the one application
//! adapter both data paths serve (`HandlerApp`, in `app.rs`), and starts the configured data path
//! (`kernel/` or `dpdk/`), which it then sees only through the `DataPath` trait (`data_path.rs`).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use crate::app::{HandlerApp, PathRoute};
use crate::cluster::Cluster;
use crate::config::{Config, ConfigError, DataPathConfig};
use crate::control::admin::AdminServer;
use crate::control::{Control, ProbeValue, Runtime};
use crate::data_path::DataPath;
use crate::handler::{owned, Handler, Message};
use crate::http::{HttpHandler, NotFound};
use crate::kernel::KernelPath;
use crate::middleware::{HandlerExt, Recovery};
use crate::pool::PoolStats;
use crate::registry::SessionInfo;
use crate::{DeliverError, TopicOrDeliverError, TopicsSnapshot, WorkerStats};

/// Why a server could not be built or started.
#[derive(Debug)]
pub enum Error {
    /// A configuration value is invalid.
    Config(ConfigError),
    /// `start` was called without a handler (`Server::with_handler`).
    NoHandler,
    /// `start` was called twice.
    AlreadyStarted,
    /// Binding the address or creating the workers failed.
    Io(io::Error),
    /// The configured data path is not available in this build.
    Unsupported(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::NoHandler => f.write_str("no handler: call Server::with_handler before start"),
            Error::AlreadyStarted => f.write_str("the server is already started"),
            Error::Io(e) => write!(f, "cannot start the server: {e}"),
            Error::Unsupported(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// A WebSocket server. Build with [`Server::new`] and [`Server::with_handler`], then
/// [`start`](Server::start); every other method takes `&self`, so the server can be shared (e.g.
/// `Arc<Server>`) between the thread that waits and one that stops it.
pub struct Server {
    cfg: Config,
    handler: Option<Arc<dyn Handler>>,
    http: Arc<dyn HttpHandler>,
    control: Arc<Control>,
    start_lock: Mutex<()>,
    running: OnceLock<Running>,
}

struct Running {
    path: Arc<dyn DataPath>,
    admin: Option<AdminServer>,
    cluster: Option<Arc<Cluster>>,
}

/// What a [`Server::reload`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Fields that changed but only take effect after a restart (they keep their running value).
    pub restart_needed: Vec<&'static str>,
}

impl Server {
    /// A server for `cfg`, which is validated here.
    pub fn new(cfg: Config) -> Result<Server, Error> {
        cfg.validate()?;
        Ok(Server {
            control: Arc::new(Control::new(&cfg)),
            cfg,
            handler: None,
            http: Arc::new(NotFound),
            start_lock: Mutex::new(()),
            running: OnceLock::new(),
        })
    }

    /// Sets the WebSocket handler (possibly a middleware chain, see [`crate::middleware`]).
    pub fn with_handler(self, handler: impl Handler) -> Server {
        self.with_shared_handler(Arc::new(handler))
    }

    /// Sets the WebSocket handler from a shared (possibly wrapped) one.
    pub fn with_shared_handler(mut self, handler: Arc<dyn Handler>) -> Server {
        self.handler = Some(handler);
        self
    }

    /// Sets the handler of plain HTTP requests on the WebSocket listener (default: [`NotFound`]).
    /// It gets every path but the upgrade path, `/metrics` and `/debug/probes` included, unless
    /// [`Config::control_on_main`] is set: then the control plane answers those two first.
    pub fn with_http_handler(mut self, http: impl HttpHandler) -> Server {
        self.http = Arc::new(http);
        self
    }

    /// The configuration in force (the start configuration with the reloadable settings of the
    /// last [`reload`](Server::reload)).
    pub fn config(&self) -> Config {
        self.control.config()
    }

    /// Adds (or replaces) a debug probe: `probe()` is called for each `GET /debug/probes` on the
    /// admin listener ([`Config::admin_listen`]) and for each [`probes_json`](Server::probes_json),
    /// and its value becomes the member `name` of the JSON answer. It runs on the admin
    /// connection's own thread (or the caller's), never on a worker: a slow probe delays that
    /// answer only. `/debug/probes` on the WebSocket listener ([`Config::control_on_main`]) is
    /// answered by a worker and leaves registered probes out.
    pub fn register_probe<V, F>(&self, name: &str, probe: F)
    where
        V: Into<ProbeValue>,
        F: Fn() -> V + Send + Sync + 'static,
    {
        self.control
            .register_probe(name, Arc::new(move || probe().into()));
    }

    /// Binds the address (and the admin address) and starts the workers; returns once they run
    /// (it does not block).
    pub fn start(&self) -> Result<(), Error> {
        let _guard = self.start_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.running.get().is_some() {
            return Err(Error::AlreadyStarted);
        }
        let mut handler = self.handler.clone().ok_or(Error::NoHandler)?;
        if !handler.recovers_panics() {
            handler = Arc::new(handler.with(Recovery::new()));
        }
        let admin = match self.cfg.admin_listen {
            Some(addr) => Some(AdminServer::start(addr, self.control.clone())?),
            None => None,
        };
        let app = Arc::new(HandlerApp {
            handler: handler.clone(),
            http: self.http.clone(),
            route: PathRoute {
                path: self.cfg.path.clone(),
            },
            control: self.control.clone(),
            serve_control: self.cfg.control_on_main,
        });
        let tls = self.cfg.load_tls()?;
        let path: Arc<dyn DataPath> = match &self.cfg.data_path {
            DataPathConfig::Kernel => {
                handler.on_start(self.cfg.num_workers);
                Arc::new(KernelPath::start(&self.cfg, app, tls)?)
            }
            // The EAL thread calls `on_start` with the number of polling lcores.
            #[cfg(feature = "dpdk")]
            DataPathConfig::Dpdk(dpdk) => Arc::new(crate::dpdk::DpdkPath::start(
                &self.cfg,
                dpdk,
                app,
                handler.clone(),
                tls,
            )?),
        };
        // The link to the other nodes: Redis need not be up (it connects when it is).
        let cluster = match &self.cfg.cluster {
            Some(c) => Some(
                Cluster::start(
                    path.shards().clone(),
                    c.clone(),
                    self.cfg.limits.max_message_size,
                )
                .map_err(|problem| {
                    Error::Config(ConfigError {
                        field: "cluster",
                        problem,
                    })
                })?,
            ),
            None => None,
        };
        let _ = self.control.runtime.set(Runtime {
            path: path.clone(),
            handler,
            cluster: cluster.clone(),
        });
        let _ = self.running.set(Running {
            path,
            admin,
            cluster,
        });
        Ok(())
    }

    /// The bound address (with the real port when port 0 was configured); `None` before `start`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.get().map(|r| r.path.local_addr())
    }

    /// The bound address of the second, TLS listener ([`TlsConfig::listen`](crate::TlsConfig)),
    /// with the real port when port 0 was configured; `None` without one or before `start`.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.running.get().and_then(|r| r.path.tls_local_addr())
    }

    /// The I/O backend the kernel data path runs (`Auto` resolved); `None` before `start` and on
    /// the DPDK data path.
    pub fn io_backend(&self) -> Option<crate::IoBackend> {
        self.running.get().and_then(|r| r.path.io_backend())
    }

    /// The bound admin address (with the real port when port 0 was configured), when
    /// [`Config::admin_listen`] is set and the server runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.running
            .get()
            .and_then(|r| r.admin.as_ref().map(AdminServer::local_addr))
    }

    /// Open WebSocket sessions across all workers.
    pub fn session_count(&self) -> usize {
        self.running.get().map_or(0, |r| r.path.session_count())
    }

    /// Every open session (from the registry), by id.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.control.registry.snapshot()
    }

    /// Sends `msg` to session `id` from any thread: queued on the owning worker's inbox, sent at
    /// its next loop turn. `NoSuchSession` if the registry does not know the id.
    pub fn send_to(&self, id: u64, msg: Message<'_>) -> Result<(), DeliverError> {
        let running = self.running.get().ok_or(DeliverError::Stopped)?;
        if !self.control.registry.contains(id) {
            return Err(DeliverError::NoSuchSession);
        }
        running.path.send_to(id, Arc::new(owned(msg)))
    }

    /// Sends `msg` to every open session; returns the number of workers that queued it.
    pub fn broadcast(&self, msg: Message<'_>) -> Result<usize, DeliverError> {
        let running = self.running.get().ok_or(DeliverError::Stopped)?;
        running.path.broadcast(Arc::new(owned(msg)))
    }

    /// Publishes `msg` to `topic` from any thread: framed once, shared by every subscriber on
    /// every worker (and sent to the other nodes through the cluster link, when configured).
    /// Returns the workers reached; `Deliver(Stopped)` before start or while stopping.
    pub fn publish(&self, topic: &str, msg: Message<'_>) -> Result<usize, TopicOrDeliverError> {
        let running = self
            .running
            .get()
            .ok_or(TopicOrDeliverError::Deliver(DeliverError::Stopped))?;
        running.path.shards().publish_topic(topic, msg, None, None)
    }

    /// Topics: counts, subscribers, and the topics with the most subscribers (as of the
    /// workers' last report, every half second). Empty before start.
    pub fn topics(&self) -> TopicsSnapshot {
        self.running
            .get()
            .map(|r| r.path.shards().topics().snapshot())
            .unwrap_or_default()
    }

    /// The buffer pools' statistics (`None` before start).
    pub fn pool_stats(&self) -> Option<PoolStats> {
        self.running.get().map(|r| r.path.pool_stats())
    }

    /// Per-worker counters of the data path (`None` before start).
    pub fn worker_stats(&self) -> Option<Vec<WorkerStats>> {
        self.running.get().map(|r| r.path.shards().worker_stats())
    }

    /// Everything `/metrics` serves, in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.control.metrics_text()
    }

    /// Everything `/debug/probes` serves on the admin listener (registered probes included), as
    /// JSON.
    pub fn probes_json(&self) -> String {
        self.control.probes_json()
    }

    /// Applies the reloadable settings of `new` — limits (but `inplace_frame_max` and
    /// `max_head_bytes`, which size the receive buffers), timeouts, idle timeout, backpressure
    /// bounds — to the running workers, without dropping a connection: each worker picks the new
    /// snapshot up at its next loop turn, and open sessions get the new limits from their next
    /// frame. Fields that need a restart are listed in the result and keep their running value.
    /// An invalid `new` is refused and nothing changes.
    pub fn reload(&self, new: Config) -> Result<Reloaded, Error> {
        new.validate()?;
        let mut current = self
            .control
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let restart_needed = current.restart_only_changes(&new);
        let merged = current.with_reloadable_from(&new);
        merged.validate()?;
        // Certificates are re-read from their files: a renewed certificate at the same path is
        // picked up; files that do not load refuse the whole reload.
        let tls = merged.load_tls()?;
        if let Some(running) = self.running.get() {
            running.path.reload(merged.settings_with(tls));
        }
        *current = merged;
        self.control.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(Reloaded { restart_needed })
    }

    /// Begins a graceful stop and returns at once: stop accepting, send Close 1001 to every
    /// session, give them `shutdown_grace` to complete the close handshake, then drop the rest.
    pub fn stop(&self) {
        if let Some(r) = self.running.get() {
            r.path.stop();
        }
    }

    /// Blocks until the workers have exited (that is, after `stop`, within the grace period).
    pub fn wait(&self) -> Result<(), Error> {
        match self.running.get() {
            Some(r) => {
                let result = r.path.wait();
                if let Some(cluster) = &r.cluster {
                    cluster.stop();
                }
                if let Some(admin) = &r.admin {
                    admin.stop();
                }
                result
            }
            None => Ok(()),
        }
    }

    /// `stop` then `wait`.
    pub fn shutdown(&self) -> Result<(), Error> {
        self.stop();
        self.wait()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_without_handler_is_an_error() {
        let cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        let server = Server::new(cfg).unwrap();
        assert!(matches!(server.start(), Err(Error::NoHandler)));
        assert_eq!(server.local_addr(), None);
    }

    #[test]
    fn an_invalid_config_is_refused_by_new() {
        let cfg = Config {
            batch_size: 0,
            ..Config::default()
        };
        let err = Server::new(cfg).err().unwrap();
        assert!(err.to_string().contains("batch_size"), "{err}");
    }
}
