//! The server: validated config + handler in, running workers out.
//!
//! `Server` owns the configuration, the application's handlers and the control plane; `start`
//! builds the NUMA buffer pools and the worker placement from the machine's topology and hands
//! everything to the data path (today the kernel transport of `hioload-fallback`) through a small
//! adapter, `KernelService`, that gives each worker its pool cache, turns transport events into
//! [`Handler`] calls, keeps the session registry, routes only the configured path to the upgrade
//! and answers the control plane's paths. Handler panics are caught by the chain's
//! [`Recovery`] (added when the chain has none).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use hioload_fallback::{Conn, DeliverError, RecvBuffer, RecvBuffers, Service, Transport};
use hioload_wsproto::{CloseCode, Event, HttpRequest, UpgradePolicy};
use tracing::{debug, error, warn};

#[cfg(feature = "dpdk")]
use crate::config::DataPath;
use crate::config::{Config, ConfigError};
use crate::control::admin::AdminServer;
use crate::control::{Control, ProbeValue, Runtime, StatsSource};
use crate::handler::{owned, Ctx, Handler, Message, OutMessage};
use crate::http::{write_response, HttpHandler, NotFound};
use crate::middleware::{HandlerExt, Recovery};
use crate::pinning::{CpuAffinity, PlacementPlan};
use crate::pool::{PoolManager, PoolStats, PooledBuf, WorkerCache};
use crate::registry::SessionInfo;
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
    control: Arc<Control>,
    start_lock: Mutex<()>,
    running: OnceLock<Running>,
}

struct Running {
    path: RunningPath,
    admin: Option<AdminServer>,
}

/// The data path that serves.
enum RunningPath {
    Kernel(Transport),
    #[cfg(feature = "dpdk")]
    Dpdk(crate::dpdk::DpdkRuntime),
}

impl RunningPath {
    fn io_backend(&self) -> Option<crate::IoBackend> {
        match self {
            RunningPath::Kernel(t) => Some(t.io_backend()),
            #[cfg(feature = "dpdk")]
            RunningPath::Dpdk(_) => None,
        }
    }
    fn local_addr(&self) -> SocketAddr {
        match self {
            RunningPath::Kernel(t) => t.local_addr(),
            #[cfg(feature = "dpdk")]
            RunningPath::Dpdk(d) => d.local_addr(),
        }
    }
    fn session_count(&self) -> usize {
        match self {
            RunningPath::Kernel(t) => t.session_count(),
            #[cfg(feature = "dpdk")]
            RunningPath::Dpdk(d) => d.session_count(),
        }
    }
    fn send_to(&self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        match self {
            RunningPath::Kernel(t) => t.remote().send_to(id, msg),
            #[cfg(feature = "dpdk")]
            RunningPath::Dpdk(d) => d.send_to(id, msg),
        }
    }
    fn broadcast(&self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        match self {
            RunningPath::Kernel(t) => t.remote().broadcast(msg),
            #[cfg(feature = "dpdk")]
            RunningPath::Dpdk(d) => d.broadcast(msg),
        }
    }
    fn reload(&self, settings: hioload_fallback::Settings) {
        match self {
            RunningPath::Kernel(t) => t.reload(settings),
            #[cfg(feature = "dpdk")]
            RunningPath::Dpdk(d) => d.reload(settings),
        }
    }
    fn stop(&self) {
        match self {
            RunningPath::Kernel(t) => t.stop(),
            #[cfg(feature = "dpdk")]
            RunningPath::Dpdk(d) => d.stop(),
        }
    }
    fn wait(&self) -> Result<(), Error> {
        match self {
            RunningPath::Kernel(t) => t.wait().map_err(Error::Io),
            #[cfg(feature = "dpdk")]
            RunningPath::Dpdk(d) => d.wait(),
        }
    }
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

    /// Sets the handler of plain HTTP requests (default: [`NotFound`]). The control plane's
    /// paths (`/metrics`, `/debug/probes`) are answered before it when they are served on the
    /// main listener (no `admin_listen`).
    pub fn with_http_handler(mut self, http: impl HttpHandler) -> Server {
        self.http = Arc::new(http);
        self
    }

    /// The configuration in force (the start configuration with the reloadable settings of the
    /// last [`reload`](Server::reload)).
    pub fn config(&self) -> Config {
        self.control.config()
    }

    /// Adds (or replaces) a debug probe: `probe()` is called for each `GET /debug/probes` and
    /// its value becomes the member `name` of the JSON answer. It runs on the thread serving
    /// the request (a worker, or the admin listener): keep it quick.
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
        #[cfg(feature = "dpdk")]
        if let DataPath::Dpdk(dpdk) = &self.cfg.data_path {
            return self.start_dpdk(dpdk, handler);
        }
        handler.on_start(self.cfg.num_workers);

        let topology = discover_topology()?;
        let (worker_cpus, worker_nodes) = self.placement(&topology);
        let pools = PoolManager::new(&topology, self.cfg.pool.clone()).map_err(|e| {
            Error::Config(ConfigError {
                field: "pool",
                problem: e.to_string(),
            })
        })?;
        let admin = match self.cfg.admin_listen {
            Some(addr) => Some(AdminServer::start(addr, self.control.clone())?),
            None => None,
        };
        let service = KernelService {
            handler: handler.clone(),
            http: self.http.clone(),
            route: PathRoute {
                path: self.cfg.path.clone(),
            },
            control: self.control.clone(),
            serve_control: self.cfg.admin_listen.is_none(),
            pools: pools.clone(),
            worker_nodes,
        };
        let mut transport_cfg = self.cfg.transport();
        transport_cfg.worker_cpus = worker_cpus;
        let transport = Transport::start(transport_cfg, Arc::new(service))?;
        let _ = self.control.runtime.set(Runtime {
            stats: StatsSource::Kernel(transport.remote()),
            pools,
            handler,
        });
        debug!(addr = %transport.local_addr(), workers = self.cfg.num_workers, path = %self.cfg.path, "server started");
        let _ = self.running.set(Running {
            path: RunningPath::Kernel(transport),
            admin,
        });
        Ok(())
    }

    /// `start` for the DPDK data path: the EAL thread calls `on_start` with the number of polling
    /// lcores, serves `/metrics` and `/debug/probes` through the same control plane, and keeps
    /// the session registry.
    #[cfg(feature = "dpdk")]
    fn start_dpdk(
        &self,
        dpdk: &crate::dpdk::DpdkConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<(), Error> {
        let admin = match self.cfg.admin_listen {
            Some(addr) => Some(AdminServer::start(addr, self.control.clone())?),
            None => None,
        };
        let route = PathRoute {
            path: self.cfg.path.clone(),
        };
        let runtime = crate::dpdk::DpdkRuntime::start(
            &self.cfg,
            dpdk,
            handler.clone(),
            self.http.clone(),
            route,
            self.control.clone(),
        )?;
        let _ = self.control.runtime.set(Runtime {
            stats: StatsSource::Dpdk(runtime.stats()),
            // The lcores' pools, over DPDK memory of their sockets.
            pools: runtime.pools(),
            handler,
        });
        let _ = self.running.set(Running {
            path: RunningPath::Dpdk(runtime),
            admin,
        });
        Ok(())
    }

    /// Each worker's CPU (empty: pinning off or no plan, the transport picks) and NUMA node, from
    /// the topology-aware placement plan (spread over NUMA nodes, distinct cores before SMT
    /// siblings).
    fn placement(&self, topology: &Topology) -> (Vec<Option<usize>>, Vec<u32>) {
        let affinity = if self.cfg.cpu_affinity {
            CpuAffinity::default()
        } else {
            CpuAffinity::Off
        };
        match PlacementPlan::new(topology, self.cfg.num_workers, &affinity) {
            Ok(plan) => {
                if self.cfg.cpu_affinity {
                    plan.log();
                }
                let cpus = if self.cfg.cpu_affinity {
                    plan.workers()
                        .iter()
                        .map(|w| w.cpu.map(|c| c as usize))
                        .collect()
                } else {
                    Vec::new()
                };
                (cpus, plan.workers().iter().map(|w| w.node).collect())
            }
            Err(e) => {
                warn!("no placement plan ({e}); pinning worker i to the i-th allowed CPU");
                (Vec::new(), Vec::new())
            }
        }
    }

    /// The bound address (with the real port when port 0 was configured); `None` before `start`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.get().map(|r| r.path.local_addr())
    }

    /// The I/O backend the kernel data path runs (`Auto` resolved); `None` before `start` and on
    /// the DPDK data path.
    pub fn io_backend(&self) -> Option<crate::IoBackend> {
        self.running.get().and_then(|r| r.path.io_backend())
    }

    /// The bound admin address, when `admin_listen` is set and the server runs.
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

    /// The buffer pools' statistics (`None` before start).
    pub fn pool_stats(&self) -> Option<PoolStats> {
        self.control.runtime.get().map(|rt| rt.pools.stats())
    }

    /// Per-worker counters of the data path (`None` before start).
    pub fn worker_stats(&self) -> Option<Vec<hioload_fallback::WorkerStats>> {
        self.control.runtime.get().map(|rt| rt.stats.worker_stats())
    }

    /// Everything `/metrics` serves, in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.control.metrics_text()
    }

    /// Everything `/debug/probes` serves, as JSON.
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
        if let Some(running) = self.running.get() {
            running.path.reload(merged.settings());
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

/// The running machine's topology; a one-node stand-in when hwloc cannot read it.
fn discover_topology() -> Result<Topology, Error> {
    match Topology::discover() {
        Ok(t) => Ok(t),
        Err(e) => {
            warn!("cannot read the CPU topology ({e}); assuming one NUMA node");
            let pus = std::thread::available_parallelism().map_or(1, |n| n.get());
            Topology::synthetic(&format!("numa:1 pu:{pus}"))
                .map_err(|e| Error::Io(io::Error::other(format!("no topology: {e}"))))
        }
    }
}

/// Upgrades only the configured path (the query string is ignored).
pub(crate) struct PathRoute {
    pub(crate) path: String,
}

impl UpgradePolicy for PathRoute {
    fn route(&self, target: &str) -> bool {
        target.split('?').next() == Some(self.path.as_str())
    }
}

/// A worker's receive buffers: its pool cache (created on the worker thread, NUMA-local).
pub(crate) struct PoolBuffers {
    cache: WorkerCache,
    size: usize,
}

/// A pool buffer lent as a receive buffer: its whole capacity is readable.
pub(crate) struct PoolRecvBuf(PooledBuf);

impl RecvBuffer for PoolRecvBuf {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl RecvBuffers for PoolBuffers {
    type Buf = PoolRecvBuf;
    fn take(&mut self) -> Option<PoolRecvBuf> {
        match self.cache.get(self.size, None) {
            Ok(mut buf) => {
                let capacity = buf.capacity();
                buf.set_len(capacity);
                Some(PoolRecvBuf(buf))
            }
            Err(e) => {
                debug!("no receive buffer: {e}");
                None
            }
        }
    }
    fn give(&mut self, buf: PoolRecvBuf) {
        drop(buf); // back to the cache it came from
    }
}

/// Adapts the application's handlers to the kernel transport.
struct KernelService {
    handler: Arc<dyn Handler>,
    http: Arc<dyn HttpHandler>,
    route: PathRoute,
    control: Arc<Control>,
    /// Answer `/metrics` and `/debug/probes` here (no admin listener).
    serve_control: bool,
    pools: PoolManager,
    worker_nodes: Vec<u32>,
}

impl Service for KernelService {
    type Buffers = PoolBuffers;

    fn worker_buffers(&self, worker: usize, buf_size: usize) -> PoolBuffers {
        let nodes = self.pools.nodes();
        let node = self
            .worker_nodes
            .get(worker)
            .copied()
            .filter(|n| nodes.contains(n))
            .unwrap_or(nodes[0]);
        let cache = self
            .pools
            .worker_cache(node)
            .expect("the node has a pool: it was taken from the pool's own list");
        PoolBuffers {
            cache,
            size: buf_size,
        }
    }

    fn upgrade_policy(&self) -> &dyn UpgradePolicy {
        &self.route
    }

    fn on_http(&self, request: &HttpRequest<'_>, peer: SocketAddr, response: &mut Vec<u8>) {
        if self.serve_control && self.control.answer(request, response) {
            return;
        }
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
        self.control.registry.insert(SessionInfo {
            id: conn.id(),
            peer: conn.peer_addr(),
            worker: conn.worker(),
        });
        self.handler.on_open(&mut Ctx::new(conn));
    }

    fn on_event(&self, conn: &mut Conn<'_>, event: Event<'_>) {
        let msg = match event {
            Event::Text(t) => Message::Text(t),
            Event::Binary(b) => Message::Binary(b),
            Event::Ping(_) | Event::Pong(_) | Event::Close(..) => return,
        };
        self.handler.on_message(&mut Ctx::new(conn), msg);
    }

    fn on_close(&self, conn: &mut Conn<'_>, code: CloseCode, reason: &str) {
        self.control.registry.remove(conn.id());
        self.handler.on_close(&mut Ctx::new(conn), code, reason);
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
