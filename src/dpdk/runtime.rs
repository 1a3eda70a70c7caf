//! The EAL thread: everything DPDK, from `rte_eal_init` to `rte_eal_cleanup`, on one thread.
//!
//! The EAL belongs to the thread that initialised it (that thread becomes the main lcore), while
//! `Server::start` must return once the server runs. So `start` spawns this thread and waits for
//! its report: either the port is up and the stacks listen, or a clear error (bad EAL arguments,
//! no usable port, no hugepage memory). Each lcore gets one queue pair of the port, one `Stack`
//! on it (a `SteeredQueue`: flows the port did not spread by RSS are handed to the lcore that
//! owns them) and one `Driver`; `Eal::run_on` then runs the lcore loop on each, top to bottom:
//! 1. one stack poll: rx burst, TCP, the driver's callbacks (WebSocket), tx burst;
//! 2. on stop: stop listening, Close 1001 to every session, start the grace period;
//! 3. every 100 ms, the deadlines of the few connections that have one;
//! 4. after a turn that received nothing, sleep `idle_sleep` (if set).
//!
//! Buffers a connection holds between reads come from a [`PoolManager`] over DPDK memory
//! ([`DpdkBacking`]: `rte_zmalloc_socket`), one pool per socket of the polling lcores, the port's
//! socket first; each lcore has its own cache, made on that lcore. The lcore → CPU → socket map is
//! logged at start, with a warning for lcores that poll the port from another socket.
//!
//! When every session of an lcore has finished (or the grace period ends), the remaining ones are
//! reset and the FINs and RSTs leave; once every lcore has returned, stacks, port, mempool and EAL
//! are released in that order.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hioload_dpdk::{
    Eal, Lcore, Mempool, MempoolConfig, NumaAllocator, Port, PortConfig, PortId, SocketId,
};
use hioload_stack::{PortProfile, Stack, StackConfig, SteeredQueue, Steering};
use tracing::{error, info, warn};

use super::driver::{held_max, Driver, DriverConfig, Services, TICK};
use super::shared::Shared;
use super::DpdkConfig;
use crate::config::{Config, ConfigError};
use crate::control::Control;
use crate::handler::Handler;
use crate::handler::{DeliverError, OutMessage};
use crate::http::HttpHandler;
use crate::pool::{DpdkBacking, PoolConfig, PoolManager};
use crate::server::{Error, PathRoute};

/// A running DPDK data path.
pub(crate) struct DpdkRuntime {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    pools: PoolManager,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the EAL thread takes with it.
struct Setup {
    cfg: Config,
    dpdk: DpdkConfig,
    ip: Ipv4Addr,
    handler: Arc<dyn Handler>,
    http: Arc<dyn HttpHandler>,
    route: PathRoute,
    control: Arc<Control>,
    shared: Arc<Shared>,
}

impl DpdkRuntime {
    /// Starts the EAL thread and returns once the stack listens (or with why it could not).
    pub fn start(
        cfg: &Config,
        dpdk: &DpdkConfig,
        handler: Arc<dyn Handler>,
        http: Arc<dyn HttpHandler>,
        route: PathRoute,
        control: Arc<Control>,
    ) -> Result<DpdkRuntime, Error> {
        dpdk.validate()?;
        let ip = match cfg.listen {
            SocketAddr::V4(a) if !a.ip().is_unspecified() && a.port() != 0 => *a.ip(),
            other => {
                return Err(Error::Config(ConfigError {
                    field: "listen",
                    problem: format!(
                        "the DPDK data path needs the stack's own IPv4 address and a port \
                         (e.g. 198.18.0.2:8080), got {other}"
                    ),
                }))
            }
        };
        if dpdk.ring_bytes <= cfg.limits.max_head_bytes {
            return Err(Error::Config(ConfigError {
                field: "dpdk.ring_bytes",
                problem: format!(
                    "must exceed limits.max_head_bytes ({}) so that a request head fits the receive ring, got {}",
                    cfg.limits.max_head_bytes, dpdk.ring_bytes
                ),
            }));
        }
        let shared = Arc::new(Shared::new());
        let setup = Setup {
            cfg: cfg.clone(),
            dpdk: dpdk.clone(),
            ip,
            handler,
            http,
            route,
            control,
            shared: shared.clone(),
        };
        let (ready_tx, ready_rx) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("hioload-eal".into())
            .spawn(move || serve(setup, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok(pools)) => Ok(DpdkRuntime {
                local_addr: cfg.listen,
                shared,
                pools,
                thread: Mutex::new(Some(thread)),
            }),
            Ok(Err(message)) => {
                let _ = thread.join();
                Err(Error::Io(io::Error::other(message)))
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Io(io::Error::other(
                    "the DPDK thread died while starting (see the log)",
                )))
            }
        }
    }

    /// The stack's address and port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Open WebSocket sessions.
    pub fn session_count(&self) -> usize {
        self.shared.session_count()
    }

    /// The buffer pools of the lcores (DPDK memory).
    pub fn pools(&self) -> PoolManager {
        self.pools.clone()
    }

    /// The per-lcore counters (for the control plane).
    pub fn stats(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Queues a message for session `id` (on the lcore that owns it).
    pub fn send_to(&self, id: u64, msg: Arc<OutMessage>) -> Result<(), DeliverError> {
        self.shared.send_to(id, msg)
    }

    /// Publishes reloaded settings; each lcore applies them at its next deadline tick.
    pub fn reload(&self, settings: hioload_fallback::Settings) {
        self.shared.publish(settings);
    }

    /// Queues a message for every open session.
    pub fn broadcast(&self, msg: Arc<OutMessage>) -> Result<usize, DeliverError> {
        self.shared.broadcast(msg)
    }

    /// Begins the graceful stop (see `Server::stop`).
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
    }

    /// Blocks until the EAL thread has cleaned up and exited.
    pub fn wait(&self) -> Result<(), Error> {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        match handle.map(JoinHandle::join) {
            Some(Err(_)) => Err(Error::Io(io::Error::other(
                "the DPDK lcore thread panicked",
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for DpdkRuntime {
    fn drop(&mut self) {
        self.stop();
        let _ = self.wait();
    }
}

/// The EAL thread's body: EAL up, serve, EAL down.
fn serve(setup: Setup, ready: SyncSender<Result<PoolManager, String>>) {
    let mut argv = vec!["hioload-ws".to_string()];
    argv.extend(setup.dpdk.eal_args.iter().cloned());
    let (eal, rest) = match Eal::init(&argv) {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "DPDK EAL initialisation failed: {e} (EAL arguments: {})",
                setup.dpdk.eal_args.join(" ")
            )));
            return;
        }
    };
    if !rest.is_empty() {
        let _ = ready.send(Err(format!(
            "unexpected arguments after the EAL's: {}",
            rest.join(" ")
        )));
        return;
    }
    if let Err(message) = run(&eal, setup, &ready) {
        let _ = ready.send(Err(message));
    }
    // `eal` drops here: rte_eal_cleanup, every port, pool and ring being gone.
}

/// Picks the port: the one named, else the first DPDK knows.
fn choose_port(eal: &Eal, name: Option<&str>) -> Result<PortId, String> {
    if let Some(name) = name {
        return PortId::by_name(eal, name)
            .map_err(|e| format!("no usable port: port {name:?}: {e}"));
    }
    eal.ports().first().copied().ok_or_else(|| {
        "no usable port: DPDK found no Ethernet port. It sees NICs bound to a DPDK driver \
         (scripts/bind-nic.sh binds one to vfio-pci) that the EAL may use (-a PCI_ADDRESS; \
         --no-pci hides every NIC), and virtual devices given with --vdev (e.g. \
         --vdev=net_tap0,iface=hl0)"
            .to_string()
    })
}

/// Sets up port and stacks, reports ready, runs the lcore loops until stopped.
fn run(
    eal: &Eal,
    setup: Setup,
    ready: &SyncSender<Result<PoolManager, String>>,
) -> Result<(), String> {
    let Setup {
        cfg,
        dpdk,
        ip,
        handler,
        http,
        route,
        control,
        shared,
    } = setup;
    let main = eal.main_lcore();
    let lcores = eal.lcores();
    let port_id = choose_port(eal, dpdk.port.as_deref())?;
    let port_name = port_id
        .name()
        .unwrap_or_else(|_| format!("port {}", port_id.id()));
    let info = port_id
        .info()
        .map_err(|e| format!("no usable port: {port_name}: {e}"))?;
    let mut socket = port_id.socket();
    if socket == SocketId::ANY || socket.0 < 0 {
        socket = main.socket();
    }
    // One queue pair per lcore, as many as the device has.
    let queues = lcores
        .len()
        .min(info.max_rx_queues.max(1) as usize)
        .min(info.max_tx_queues.max(1) as usize);

    let mbufs = (16384usize).max((queues * 4096).next_power_of_two()) - 1;
    let pool_config = MempoolConfig {
        mbufs: mbufs as u32,
        cache_size: 256,
        socket,
        ..MempoolConfig::default()
    };
    let pool = Mempool::new(eal, "hioload_rx0", &pool_config).map_err(|e| {
        format!(
            "cannot create the mbuf pool on NUMA socket {}: {e} (are hugepages reserved?)",
            socket.0
        )
    })?;
    let mut port =
        Port::open(eal, port_id).map_err(|e| format!("no usable port: {port_name}: {e}"))?;
    let descriptors = cfg.ring_capacity.min(u16::MAX as usize) as u16;
    let port_config = PortConfig {
        rx_queues: queues as u16,
        tx_queues: queues as u16,
        rx_descriptors: descriptors,
        tx_descriptors: descriptors,
        rss: true,
        ..PortConfig::default()
    };
    let configured = port.configure(&port_config, &[&pool]).map_err(|e| {
        format!(
            "no usable port: {port_name} ({}) refused its configuration: {e}",
            info.driver
        )
    })?;
    port.start().map_err(|e| {
        format!(
            "no usable port: {port_name} ({}) did not start: {e}",
            info.driver
        )
    })?;
    let mac = port_id
        .mac_addr()
        .map(|m| m.to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let link = match port_id.link() {
        Ok(l) if l.up => format!(
            "up, {} Mbit/s{}",
            l.speed_mbps,
            if l.full_duplex { " full duplex" } else { "" }
        ),
        Ok(_) => "down".to_string(),
        Err(e) => format!("unknown ({e})"),
    };
    let rss = configured.rss_hash != 0;
    info!(
        "DPDK port {} {port_name} (driver {}): MAC {mac}, link {link}, {} rx / {} tx queue(s) of {} / {} descriptors, \
         RSS {}, checksum offload rx {:?} tx {:?}, NUMA socket {}",
        port_id.id(),
        info.driver,
        configured.rx_queues,
        configured.tx_queues,
        configured.rx_descriptors,
        configured.tx_descriptors,
        if rss { "on" } else { "off (flows are steered between lcores in software)" },
        configured.rx_checksums,
        configured.tx_checksums,
        socket.0
    );
    let polling = &lcores[..queues];
    let ids: Vec<String> = polling
        .iter()
        .map(|l| format!("{}(socket {})", l.id(), l.socket().0))
        .collect();
    info!(
        "{}; polling lcores {} (main {}), one queue pair each",
        eal.version(),
        ids.join(", "),
        main.id()
    );
    if lcores.len() > queues {
        warn!(
            "{} lcore(s) stay idle: port {port_name} has only {queues} queue pair(s)",
            lcores.len() - queues
        );
    }
    log_placement(polling, socket, &port_name);
    let backing = Arc::new(DpdkBacking::new(NumaAllocator::new(eal)));
    let pools = lcore_pools(polling, socket, &cfg.pool, &cfg.limits, backing.clone())?;

    let profile = PortProfile::of(&port).map_err(|e| e.to_string())?;
    let mut stack_config = StackConfig::new(ip, dpdk.prefix_len);
    stack_config.gateway = dpdk.gateway;
    stack_config.max_connections = dpdk.max_connections;
    stack_config.backlog = stack_config.backlog.min(dpdk.max_connections);
    stack_config.rx_ring = dpdk.ring_bytes;
    stack_config.tx_ring = dpdk.ring_bytes;
    let listen_port = cfg.listen.port();
    let route = Arc::new(route);
    let serve_control = cfg.admin_listen.is_none();
    shared.set_lcores(queues, cfg.ring_capacity);
    handler.on_start(queues);
    {
        let steering = Steering::new(queues, 1024, rss);
        let mut jobs = Vec::with_capacity(queues);
        for (index, queue) in port.queues().into_iter().enumerate().take(queues) {
            let lcore = lcores[index];
            let steered = SteeredQueue::new(queue, index, steering.clone(), pool.clone());
            let mut stack = Stack::new(
                eal,
                steered,
                pool.clone(),
                profile,
                lcore.socket(),
                stack_config.clone(),
            )
            .map_err(|e| {
                format!(
                    "cannot set up the TCP stack of lcore {}: {e} (are enough hugepages reserved?)",
                    lcore.id()
                )
            })?;
            stack.listen(listen_port);
            if index == 0 {
                info!(
                    "stack {ip}/{}{}, port {listen_port}, MTU {}; up to {} connections per lcore, {} bytes each while idle, {} KiB rings",
                    dpdk.prefix_len,
                    dpdk.gateway.map(|g| format!(" via {g}")).unwrap_or_default(),
                    profile.mtu,
                    dpdk.max_connections,
                    stack.memory_per_connection(),
                    dpdk.ring_bytes >> 10
                );
            }
            let driver_config = DriverConfig {
                lcore_index: index,
                limits: cfg.limits.clone(),
                backpressure: cfg.backpressure.clone(),
                handshake_timeout: cfg.handshake_timeout,
                close_timeout: cfg.close_timeout,
                shutdown_grace: cfg.shutdown_grace,
                idle_timeout: cfg.idle_timeout,
                pong_timeout: cfg.pong_timeout,
                max_connections: dpdk.max_connections,
                ring_bytes: dpdk.ring_bytes,
            };
            jobs.push((lcore, (stack, driver_config)));
        }
        let _ = ready.send(Ok(pools.clone()));
        let services = Services {
            handler: handler.clone(),
            http: http.clone(),
            route: route.clone(),
            control_http: Some(control.clone()).filter(|_| serve_control),
            control: control.clone(),
            shared: shared.clone(),
        };

        let reports = eal.run_on(jobs, |lcore, (mut stack, driver_config)| {
            // The cache is made here, on its lcore, and stays there with the driver.
            let held_pool = pools
                .worker_cache(pool_node(lcore, socket))
                .expect("every polling lcore's socket has a pool");
            let held_size = held_max(&driver_config.limits);
            // One slab now, so the first partial frame takes no memory from DPDK's heap.
            if let Err(e) = held_pool.get(held_size, None) {
                warn!("lcore {}: no buffer pool memory at start: {e}", lcore.id());
            }
            let mut driver = Driver::new(driver_config, services.clone(), held_pool);
            lcore_loop(&mut stack, &mut driver, &shared, &dpdk, listen_port);
            let stats = stack.stats();
            info!(
                accepted = stats.accepted,
                closed = stats.closed,
                rx_packets = stats.io.rx_packets,
                tx_packets = stats.io.tx_packets,
                tx_dropped = stats.io.tx_dropped,
                handed_over = stack.queue().stats().handed_over,
                "lcore {} stopped",
                lcore.id()
            );
        });
        if let Err(e) = reports {
            error!("the lcore loops could not run: {e}");
        }
    }
    // Every driver (and cache) is gone: the slabs go back to DPDK before the EAL does.
    if !pools.release_memory() {
        warn!("buffer pool memory still in use at exit; the EAL is left up");
    }
    backing.close();
    if let Err(e) = port.stop() {
        warn!("stopping port {port_name}: {e}");
    }
    drop(port);
    drop(pool);
    Ok(())
}

/// The pool node of an lcore: its socket, or the port's when DPDK does not know it.
fn pool_node(lcore: Lcore, port_socket: SocketId) -> u32 {
    u32::try_from(lcore.socket().0).unwrap_or(pool_node_of(port_socket))
}

/// Logs which CPU and socket each polling lcore runs on (the EAL pinned them per `-l`), and warns
/// about lcores that poll the port from another socket.
fn log_placement(polling: &[Lcore], port_socket: SocketId, port_name: &str) {
    for lcore in polling {
        let cpu = lcore
            .cpu()
            .map_or_else(|| "unknown".to_string(), |c| c.to_string());
        let lcore_socket = lcore.socket();
        info!(
            "lcore {} -> CPU {cpu} -> NUMA socket {}",
            lcore.id(),
            lcore_socket.0
        );
        if lcore_socket != port_socket {
            warn!(
                "lcore {} runs on NUMA socket {} but port {port_name} is on socket {}: it polls \
                 across sockets (slower); prefer lcores of socket {} in -l",
                lcore.id(),
                lcore_socket.0,
                port_socket.0,
                port_socket.0
            );
        }
    }
}

/// The buffer pools of the polling lcores: one per socket they run on, the port's socket first
/// (callers on no listed CPU get it), memory from DPDK's heap of that socket.
fn lcore_pools(
    polling: &[Lcore],
    port_socket: SocketId,
    config: &PoolConfig,
    limits: &hioload_wsproto::Limits,
    backing: Arc<DpdkBacking>,
) -> Result<PoolManager, String> {
    let held = held_max(limits);
    if held > config.max_buffer {
        return Err(format!(
            "invalid configuration: pool.max_buffer ({}) must hold what a connection keeps of a \
             partial frame or request head ({held} bytes: limits.inplace_frame_max + 14 or \
             limits.max_head_bytes)",
            config.max_buffer
        ));
    }
    let port_node = pool_node_of(port_socket);
    let mut nodes: Vec<(u32, Vec<u32>)> = vec![(port_node, Vec::new())];
    for &lcore in polling {
        let node = pool_node(lcore, port_socket);
        let idx = match nodes.iter().position(|(n, _)| *n == node) {
            Some(idx) => idx,
            None => {
                nodes.push((node, Vec::new()));
                nodes.len() - 1
            }
        };
        nodes[idx].1.extend(lcore.cpu());
    }
    let pools =
        PoolManager::with_nodes(&nodes, config.clone(), backing).map_err(|e| e.to_string())?;
    info!(
        "buffer pools on NUMA socket(s) {:?} (DPDK memory), {} bytes per held partial frame",
        pools.nodes(),
        held
    );
    Ok(pools)
}

fn pool_node_of(socket: SocketId) -> u32 {
    socket.0.max(0) as u32
}

/// The lcore loop, until stopped and every session finished (or the grace period ended).
fn lcore_loop<Q: hioload_stack::PacketQueue>(
    stack: &mut Stack<Q>,
    driver: &mut Driver,
    shared: &Shared,
    dpdk: &DpdkConfig,
    listen_port: u16,
) {
    let mut next_tick = Instant::now() + TICK;
    let mut stop_deadline = None;
    loop {
        let received = stack.poll(driver);
        driver.deliver(stack);
        let now = Instant::now();
        if stop_deadline.is_none() && shared.stopping.load(Ordering::Acquire) {
            stack.unlisten(listen_port);
            let closing = driver.begin_shutdown(stack);
            info!(
                sessions = closing,
                "stopping: listener closed, close 1001 sent"
            );
            stop_deadline = Some(now + driver.shutdown_grace());
        }
        if now >= next_tick {
            driver.tick(stack, now);
            next_tick = now + TICK;
        }
        if let Some(deadline) = stop_deadline {
            if now >= deadline || driver.all_finished() {
                break;
            }
        }
        if received == 0 && stack.tx_pending() == 0 {
            if !dpdk.idle_sleep.is_zero() {
                std::thread::sleep(dpdk.idle_sleep);
            } else if stop_deadline.is_some() {
                std::thread::yield_now(); // lcores may share a CPU; the stop must not starve
            }
        }
    }
    // Reset what did not finish, then let the last FINs and RSTs leave and the peers' FINs in.
    driver.close_all(stack);
    let settle = Instant::now() + Duration::from_secs(1);
    let mut turns = 0;
    while Instant::now() < settle
        && (turns < 100 || stack.stats().open > 0 || stack.tx_pending() > 0)
    {
        stack.poll(driver);
        turns += 1;
        if turns >= 100 && !dpdk.idle_sleep.is_zero() {
            std::thread::sleep(dpdk.idle_sleep);
        }
    }
    if driver.connections() > 0 {
        info!(
            connections = driver.connections(),
            "connections left in their FIN exchange at exit"
        );
    }
}
