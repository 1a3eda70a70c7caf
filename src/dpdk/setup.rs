//! What the EAL thread sets up before the lcores run: the port (chosen, configured, started,
//! logged), the lcores' placement (logged, with a warning for cross-socket polling) and their
//! buffer pools over DPDK memory.

use std::sync::Arc;

use hioload_dpdk::{Eal, Lcore, Mempool, MempoolConfig, Port, PortConfig, PortId, SocketId};
use tracing::{info, warn};

use crate::pool::{DpdkBacking, PoolConfig, PoolManager};

/// Picks the port: the one named, else the first DPDK knows.
pub(super) fn choose_port(eal: &Eal, name: Option<&str>) -> Result<PortId, String> {
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

/// The pool node of an lcore: its socket, or the port's when DPDK does not know it.
pub(super) fn pool_node(lcore: Lcore, port_socket: SocketId) -> u32 {
    u32::try_from(lcore.socket().0).unwrap_or(pool_node_of(port_socket))
}

/// Logs which CPU and socket each polling lcore runs on (the EAL pinned them per `-l`), and warns
/// about lcores that poll the port from another socket.
pub(super) fn log_placement(polling: &[Lcore], port_socket: SocketId, port_name: &str) {
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
pub(super) fn lcore_pools(
    polling: &[Lcore],
    port_socket: SocketId,
    config: &PoolConfig,
    backing: Arc<DpdkBacking>,
) -> Result<PoolManager, String> {
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
        "buffer pools on NUMA socket(s) {:?} (DPDK memory)",
        pools.nodes()
    );
    Ok(pools)
}

fn pool_node_of(socket: SocketId) -> u32 {
    socket.0.max(0) as u32
}

/// The port and its mbuf pool, configured (one queue pair per polling lcore, as many as the
/// device has; RSS where it can) and started.
pub(super) struct OpenPort {
    pub port: Port,
    pub pool: Mempool,
    pub port_name: String,
    /// The port's NUMA socket (the main lcore's when DPDK does not know it).
    pub socket: SocketId,
    /// Queue pairs, one per polling lcore.
    pub queues: usize,
    /// The port spreads flows over the queues itself.
    pub rss: bool,
}

/// Opens the port (`port` by name, else the first DPDK knows) and logs what it is.
pub(super) fn open_port(
    eal: &Eal,
    port: Option<&str>,
    ring_capacity: usize,
) -> Result<OpenPort, String> {
    let main = eal.main_lcore();
    let lcores = eal.lcores();
    let port_id = choose_port(eal, port)?;
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
    let descriptors = ring_capacity.min(u16::MAX as usize) as u16;
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
    Ok(OpenPort {
        port,
        pool,
        port_name,
        socket,
        queues,
        rss,
    })
}

/// Logs the DPDK version and the polling lcores, and warns about lcores left idle.
pub(super) fn log_lcores(eal: &Eal, polling: &[Lcore], lcores: usize, port_name: &str) {
    let ids: Vec<String> = polling
        .iter()
        .map(|l| format!("{}(socket {})", l.id(), l.socket().0))
        .collect();
    info!(
        "{}; polling lcores {} (main {}), one queue pair each",
        eal.version(),
        ids.join(", "),
        eal.main_lcore().id()
    );
    if lcores > polling.len() {
        warn!(
            "{} lcore(s) stay idle: port {port_name} has only {} queue pair(s)",
            lcores - polling.len(),
            polling.len()
        );
    }
}
