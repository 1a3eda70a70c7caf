//! The server: validated config + handler in, running workers out.
//!
//! `Server` owns the configuration and the application's handlers; `start` hands them to the data
//! path (today the kernel transport of `hioload-fallback`) through a small adapter that turns
//! transport events into [`Handler`] calls, catches handler panics (the session is closed with
//! 1011, the worker lives on) and routes only the configured path to the upgrade.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use hioload_fallback::{Conn, Service, Transport};
use hioload_wsproto::{CloseCode, Event, HttpRequest, UpgradePolicy};
use tracing::{debug, error, warn};

use crate::config::{Config, ConfigError, DataPath};
use crate::handler::{Ctx, Handler, Message};
use crate::http::{write_response, HttpHandler, NotFound};
use crate::pinning::{CpuAffinity, PlacementPlan};
use crate::topology::Topology;

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
    start_lock: Mutex<()>,
    running: OnceLock<Transport>,
}

impl Server {
    /// A server for `cfg`, which is validated here.
    pub fn new(cfg: Config) -> Result<Server, Error> {
        cfg.validate()?;
        Ok(Server {
            cfg,
            handler: None,
            http: Arc::new(NotFound),
            start_lock: Mutex::new(()),
            running: OnceLock::new(),
        })
    }

    /// Sets the WebSocket handler.
    pub fn with_handler(self, handler: impl Handler) -> Server {
        self.with_shared_handler(Arc::new(handler))
    }

    /// Sets the WebSocket handler from a shared (possibly wrapped) one.
    pub fn with_shared_handler(mut self, handler: Arc<dyn Handler>) -> Server {
        self.handler = Some(handler);
        self
    }

    /// Sets the handler of plain HTTP requests (default: [`NotFound`]).
    pub fn with_http_handler(mut self, http: impl HttpHandler) -> Server {
        self.http = Arc::new(http);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Binds the address and starts the workers; returns once they run (it does not block).
    pub fn start(&self) -> Result<(), Error> {
        let _guard = self.start_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.running.get().is_some() {
            return Err(Error::AlreadyStarted);
        }
        let handler = self.handler.clone().ok_or(Error::NoHandler)?;
        match &self.cfg.data_path {
            DataPath::Kernel => {}
            #[cfg(feature = "dpdk")]
            DataPath::Dpdk { .. } => {
                return Err(Error::Unsupported(
                    "the DPDK data path is not wired into the server yet; use DataPath::Kernel",
                ))
            }
        }
        let service = KernelService {
            handler,
            http: self.http.clone(),
            route: PathRoute {
                path: self.cfg.path.clone(),
            },
        };
        let mut transport_cfg = self.cfg.transport();
        transport_cfg.worker_cpus = self.placement();
        let transport = Transport::start(transport_cfg, Arc::new(service))?;
        debug!(addr = %transport.local_addr(), workers = self.cfg.num_workers, path = %self.cfg.path, "server started");
        let _ = self.running.set(transport);
        Ok(())
    }

    /// The CPU of each worker from the topology-aware placement plan (spread over NUMA nodes,
    /// distinct cores before SMT siblings); empty when pinning is off or the topology is unknown,
    /// in which case the transport pins worker `i` to the `i`-th allowed CPU.
    fn placement(&self) -> Vec<Option<usize>> {
        if !self.cfg.cpu_affinity {
            return Vec::new();
        }
        let topology = match Topology::discover() {
            Ok(t) => t,
            Err(e) => {
                warn!(
                    "cannot read the CPU topology ({e}); pinning worker i to the i-th allowed CPU"
                );
                return Vec::new();
            }
        };
        match PlacementPlan::new(&topology, self.cfg.num_workers, &CpuAffinity::default()) {
            Ok(plan) => {
                plan.log();
                plan.workers()
                    .iter()
                    .map(|w| w.cpu.map(|c| c as usize))
                    .collect()
            }
            Err(e) => {
                warn!("no placement plan ({e}); pinning worker i to the i-th allowed CPU");
                Vec::new()
            }
        }
    }

    /// The bound address (with the real port when port 0 was configured); `None` before `start`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.get().map(Transport::local_addr)
    }

    /// Open WebSocket sessions across all workers.
    pub fn session_count(&self) -> usize {
        self.running.get().map_or(0, Transport::session_count)
    }

    /// Begins a graceful stop and returns at once: stop accepting, send Close 1001 to every
    /// session, give them `shutdown_grace` to complete the close handshake, then drop the rest.
    pub fn stop(&self) {
        if let Some(t) = self.running.get() {
            t.stop();
        }
    }

    /// Blocks until the workers have exited (that is, after `stop`, within the grace period).
    pub fn wait(&self) -> Result<(), Error> {
        match self.running.get() {
            Some(t) => t.wait().map_err(Error::Io),
            None => Ok(()),
        }
    }

    /// `stop` then `wait`.
    pub fn shutdown(&self) -> Result<(), Error> {
        self.stop();
        self.wait()
    }
}

/// Upgrades only the configured path (the query string is ignored).
struct PathRoute {
    path: String,
}

impl UpgradePolicy for PathRoute {
    fn route(&self, target: &str) -> bool {
        target.split('?').next() == Some(self.path.as_str())
    }
}

/// Adapts the application's handlers to the kernel transport.
struct KernelService {
    handler: Arc<dyn Handler>,
    http: Arc<dyn HttpHandler>,
    route: PathRoute,
}

impl KernelService {
    /// Runs a handler callback; a panic closes the session with 1011 instead of killing the worker.
    fn call(&self, conn: &mut Conn<'_>, what: &str, f: impl FnOnce(&dyn Handler, &mut Ctx<'_>)) {
        let (id, peer) = (conn.id(), conn.peer_addr());
        let mut ctx = Ctx::new(conn);
        let handler = &*self.handler;
        if catch_unwind(AssertUnwindSafe(|| f(handler, &mut ctx))).is_err() {
            error!(session = id, %peer, "handler panicked in {what}; closing the session with 1011");
            let _ = ctx.close(CloseCode::INTERNAL_ERROR, "internal error");
        }
    }
}

impl Service for KernelService {
    fn upgrade_policy(&self) -> &dyn UpgradePolicy {
        &self.route
    }

    fn on_http(&self, request: &HttpRequest<'_>, peer: SocketAddr, response: &mut Vec<u8>) {
        if catch_unwind(AssertUnwindSafe(|| {
            self.http.handle(request, peer, response)
        }))
        .is_err()
        {
            error!(%peer, path = request.path, "HTTP handler panicked; answering 500");
            response.clear();
            write_response(
                response,
                500,
                "Internal Server Error",
                "text/plain; charset=utf-8",
                b"internal error\n",
            );
        }
    }

    fn on_open(&self, conn: &mut Conn<'_>) {
        self.call(conn, "on_open", |h, ctx| h.on_open(ctx));
    }

    fn on_event(&self, conn: &mut Conn<'_>, event: Event<'_>) {
        let msg = match event {
            Event::Text(t) => Message::Text(t),
            Event::Binary(b) => Message::Binary(b),
            Event::Ping(_) | Event::Pong(_) | Event::Close(..) => return,
        };
        self.call(conn, "on_message", |h, ctx| h.on_message(ctx, msg));
    }

    fn on_close(&self, conn: &mut Conn<'_>, code: CloseCode, reason: &str) {
        self.call(conn, "on_close", |h, ctx| h.on_close(ctx, code, reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_path_is_upgraded() {
        let r = PathRoute { path: "/ws".into() };
        assert!(r.route("/ws"));
        assert!(r.route("/ws?token=1"));
        assert!(!r.route("/ws/"));
        assert!(!r.route("/"));
        assert!(!r.route("/wsx"));
    }

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
