//! The DPDK data path's life: everything DPDK, from `rte_eal_init` to `rte_eal_cleanup`, on one
//! thread (the EAL thread), and one worker loop per polling lcore.
//!
//! The EAL belongs to the thread that initialised it (that thread becomes the main lcore), while
//! `Server::start` must return once the server runs. So [`DpdkPath::start`] spawns the EAL thread
//! and waits for its report: either the port is up and the stacks listen, or a clear error (bad
//! EAL arguments, no usable port, no hugepage memory). Each lcore gets one queue pair of the
//! port, one `Stack` on it (a `SteeredQueue`: flows the port did not spread by RSS are handed to
//! the lcore that owns them) and one [`Worker`]; `Eal::run_on` then runs the lcore loop on each,
//! top to bottom:
//! 1. the worker's turn begins (reloaded settings apply here, as on the kernel path);
//! 2. one stack poll: rx burst, TCP, the worker's callbacks (WebSocket), tx burst;
//! 3. the shard's end of turn: inbox, deadlines (every 100 ms), idle sweep, stop;
//! 4. after a turn that received nothing, sleep `idle_sleep` (if set).
//!
//! Each turn is timed with the TSC (`busy`): the cycles of turns that received or sent packets
//! are the lcore's busy time, exported in `/metrics`.
//!
//! When every session of an lcore has finished (or the grace period ends), the remaining ones are
//! reset and the FINs and RSTs leave; once every lcore has returned, the pools' slabs, stacks,
//! port, mempool and EAL are released in that order.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hioload_dpdk::{Eal, NumaAllocator};
use hioload_stack::{PacketQueue, PortProfile, Stack, StackConfig, SteeredQueue, Steering};
use hioload_wsproto::shard::Wake;
use hioload_wsproto::ShardSet;
use tracing::{error, info, warn};

use super::busy::{self, TurnMeter};
use super::link::LinkWatch;
use super::setup::{lcore_pools, log_lcores, log_placement, open_port};
use super::worker::Worker;
use super::DpdkConfig;
use crate::app::HandlerApp;
use crate::config::{Config, ConfigError, IoBackend};
use crate::data_path::DataPath;
use crate::handler::Handler;
use crate::pool::{DpdkBacking, PoolManager, PoolStats};
use crate::server::Error;

/// A running DPDK data path.
pub(crate) struct DpdkPath {
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    set: Arc<ShardSet>,
    pools: PoolManager,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// What the EAL thread takes with it.
struct Setup {
    cfg: Config,
    dpdk: DpdkConfig,
    ip: Ipv4Addr,
    app: Arc<HandlerApp>,
    handler: Arc<dyn Handler>,
    /// The certificates TLS listeners serve.
    tls: Option<hioload_wsproto::tls::TlsAcceptor>,
}

/// What the EAL thread reports once the stacks listen.
type Ready = Result<(PoolManager, Arc<ShardSet>), String>;

impl DpdkPath {
    /// Starts the EAL thread and returns once the stacks listen (or with why they could not).
    pub fn start(
        cfg: &Config,
        dpdk: &DpdkConfig,
        app: Arc<HandlerApp>,
        handler: Arc<dyn Handler>,
        tls: Option<hioload_wsproto::tls::TlsAcceptor>,
    ) -> Result<DpdkPath, Error> {
        dpdk.validate()?;
        if let Some(addr) = cfg.tls.as_ref().and_then(|t| t.listen) {
            if addr.ip() != cfg.listen.ip() || addr.port() == 0 {
                return Err(Error::Config(ConfigError {
                    field: "tls.listen",
                    problem: format!(
                        "on the DPDK data path, the TLS listener is another port of the stack's \
                         address {} (e.g. {}:8443), got {addr}",
                        cfg.listen.ip(),
                        cfg.listen.ip()
                    ),
                }));
            }
        }
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
        let setup = Setup {
            tls,
            cfg: cfg.clone(),
            dpdk: dpdk.clone(),
            ip,
            app,
            handler,
        };
        let (ready_tx, ready_rx) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("hioload-eal".into())
            .spawn(move || serve(setup, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok((pools, set))) => Ok(DpdkPath {
                local_addr: cfg.listen,
                tls_local_addr: cfg.tls.as_ref().and_then(|t| t.listen),
                set,
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
}

impl DataPath for DpdkPath {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.tls_local_addr
    }
    fn io_backend(&self) -> Option<IoBackend> {
        None
    }
    fn shards(&self) -> &Arc<ShardSet> {
        &self.set
    }
    fn pool_stats(&self) -> PoolStats {
        self.pools.stats()
    }
    fn stop(&self) {
        self.set.stop();
    }
    fn wait(&self) -> Result<(), Error> {
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        match handle.map(JoinHandle::join) {
            Some(Err(_)) => Err(Error::Io(io::Error::other(
                "the DPDK lcore thread panicked",
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for DpdkPath {
    fn drop(&mut self) {
        self.stop();
        let _ = self.wait();
    }
}

/// The EAL thread's body: EAL up, serve, EAL down.
fn serve(setup: Setup, ready: SyncSender<Ready>) {
    let mut argv = vec!["hioload-ws".to_string()];
    argv.extend(setup.dpdk.eal_args.iter().cloned());
    let (eal, rest) = match Eal::init(&argv) {
        Ok(v) => v,
        Err(e) => {
            let hint =
                super::hint::eal_hint(&setup.dpdk.eal_args, &super::hint::HugepageState::read())
                    .map(|h| format!("; likely cause: {h}"))
                    .unwrap_or_default();
            let _ = ready.send(Err(format!(
                "DPDK EAL initialisation failed: {e} (EAL arguments: {}){hint}",
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

/// Sets up port and stacks, reports ready, runs the lcore loops until stopped.
fn run(eal: &Eal, setup: Setup, ready: &SyncSender<Ready>) -> Result<(), String> {
    let Setup {
        cfg,
        dpdk,
        ip,
        app,
        handler,
        tls,
    } = setup;
    let mut open = open_port(eal, dpdk.port.as_deref(), cfg.ring_capacity)?;
    let (queues, socket) = (open.queues, open.socket);
    let lcores = eal.lcores();
    let polling = &lcores[..queues];
    log_lcores(eal, polling, lcores.len(), &open.port_name);
    log_placement(polling, socket, &open.port_name);
    let backing = Arc::new(DpdkBacking::new(NumaAllocator::new(eal)));
    let pools = lcore_pools(polling, socket, &cfg.pool, backing.clone())?;

    let profile = PortProfile::of(&open.port).map_err(|e| e.to_string())?;
    let mut stack_config = StackConfig::new(ip, dpdk.prefix_len);
    stack_config.gateway = dpdk.gateway;
    stack_config.max_connections = dpdk.max_connections;
    stack_config.backlog = stack_config.backlog.min(dpdk.max_connections);
    stack_config.rx_ring = dpdk.ring_bytes;
    stack_config.tx_ring = dpdk.ring_bytes;
    let listen_port = cfg.listen.port();
    let (listen_kind, tls_listen) = cfg.tls_listeners();
    let mut listeners = vec![(listen_port, listen_kind)];
    listeners.extend(tls_listen.map(|a| (a.port(), hioload_wsproto::Listener::Tls)));
    // Lcores poll: no wake-up needed.
    let wakers: Vec<Option<Box<dyn Wake>>> = (0..queues).map(|_| None).collect();
    let set = Arc::new(ShardSet::new(
        cfg.settings_with(tls),
        wakers,
        cfg.ring_capacity,
    ));
    handler.on_start(queues);
    {
        let steering = Steering::new(queues, 1024, open.rss);
        let (port_id, port_name) = (open.port.id(), open.port_name.clone());
        let mut jobs = Vec::with_capacity(queues);
        for (index, queue) in open.port.queues().into_iter().enumerate().take(queues) {
            let lcore = lcores[index];
            let steered = SteeredQueue::new(queue, index, steering.clone(), open.pool.clone());
            let mut stack = Stack::new(
                eal,
                steered,
                open.pool.clone(),
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
            for (port, _) in &listeners {
                stack.listen(*port);
            }
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
            jobs.push((lcore, (index, stack)));
        }
        busy::start(queues);
        let _ = ready.send(Ok((pools.clone(), set.clone())));

        let reports = eal.run_on(jobs, |lcore, (index, mut stack)| {
            let mut worker = Worker::new(
                index,
                app.clone(),
                set.clone(),
                &cfg.limits,
                &dpdk,
                listeners.clone(),
            );
            // The first lcore also watches the port's link.
            let mut watch = (index == 0).then(|| {
                let up = port_id.link().ok().map(|l| l.up);
                LinkWatch::new(port_id, port_name.clone(), up, Instant::now())
            });
            let mut meter = TurnMeter::new(index, lcore.id());
            lcore_loop(&mut stack, &mut worker, &dpdk, watch.as_mut(), &mut meter);
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
    // Every worker (and cache) is gone: the slabs go back to DPDK before the EAL does.
    if !pools.release_memory() {
        warn!("buffer pool memory still in use at exit; the EAL is left up");
    }
    backing.close();
    if let Err(e) = open.port.stop() {
        warn!("stopping port {}: {e}", open.port_name);
    }
    drop(open);
    Ok(())
}

/// The lcore loop, until the shard is done (stopped and every session finished, or the grace
/// period ended); see the module documentation.
fn lcore_loop<Q: PacketQueue, A: hioload_wsproto::App>(
    stack: &mut Stack<Q>,
    worker: &mut Worker<A>,
    dpdk: &DpdkConfig,
    mut link: Option<&mut LinkWatch>,
    meter: &mut TurnMeter,
) {
    loop {
        meter.begin();
        let sent_before = stack.stats().io.tx_packets;
        worker.begin_turn(Instant::now());
        let received = stack.poll(worker);
        let end = worker.end_turn(stack, Instant::now());
        meter.end(received > 0 || stack.stats().io.tx_packets != sent_before);
        if end.ticked {
            meter.sample_cpu();
            worker.publish_stack_stats(&stack.stats());
            if let Some(link) = link.as_deref_mut() {
                link.check(Instant::now());
            }
        }
        if end.done {
            break;
        }
        if received == 0 && stack.tx_pending() == 0 {
            if !dpdk.idle_sleep.is_zero() {
                std::thread::sleep(dpdk.idle_sleep);
            } else if worker.is_stopping() {
                std::thread::yield_now(); // lcores may share a CPU; the stop must not starve
            }
        }
    }
    // Reset what did not finish, then let the last FINs and RSTs leave and the peers' FINs in.
    worker.close_all(stack);
    let settle = Instant::now() + Duration::from_secs(1);
    let mut turns = 0;
    while Instant::now() < settle
        && (turns < 100 || stack.stats().open > 0 || stack.tx_pending() > 0)
    {
        stack.poll(worker);
        turns += 1;
        if turns >= 100 && !dpdk.idle_sleep.is_zero() {
            std::thread::sleep(dpdk.idle_sleep);
        }
    }
    if worker.connections() > 0 {
        info!(
            connections = worker.connections(),
            "connections left in their FIN exchange at exit"
        );
    }
}
