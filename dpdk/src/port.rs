//! Ethernet ports: device info, configuration, start/stop, stats, and the rx/tx burst calls.
//!
//! [`PortId`] is a plain id for read-only questions (info, MAC, link, stats) that are safe from
//! any thread. [`Port`] is the one owner of a device: it configures queues, starts and stops it,
//! and closes it on drop. The datapath is `rx_burst` / `tx_burst` on a queue; to spread queues
//! over lcores, [`Port::queues`] lends one [`Queue`] handle per queue index, each usable from
//! its own lcore.

use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};

use hioload_dpdk_sys as sys;

use crate::burst::Burst;
use crate::eal::{live_object_created, live_object_released, Eal};
use crate::error::{Error, Result};
use crate::lcore::SocketId;
use crate::mempool::Mempool;

const MAX_PORTS: usize = sys::RTE_MAX_ETHPORTS as usize;

/// Ports currently owned by a [`Port`] value (one owner per device).
static CLAIMED: [AtomicBool; MAX_PORTS] = [const { AtomicBool::new(false) }; MAX_PORTS];

/// TCP over IPv4 and IPv6: the 4-tuple hash the server's per-lcore flows rely on.
pub const RSS_TCP_4TUPLE: u64 =
    (sys::RTE_ETH_RSS_NONFRAG_IPV4_TCP | sys::RTE_ETH_RSS_NONFRAG_IPV6_TCP) as u64;

/// An ethdev port id.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(u16);

/// A MAC address.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Link state (`rte_eth_link_get_nowait`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Carrier up.
    pub up: bool,
    /// Speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Basic counters (`rte_eth_stats_get`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Packets dropped by the device because no rx descriptor was free.
    pub imissed: u64,
    /// Receive errors.
    pub ierrors: u64,
    /// Transmit errors.
    pub oerrors: u64,
    /// Receive failures because the mempool was empty.
    pub rx_nombuf: u64,
}

/// Which checksum offloads a device (or a configuration) has.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Checksums {
    /// IPv4 header checksum.
    pub ipv4: bool,
    /// TCP checksum.
    pub tcp: bool,
    /// UDP checksum.
    pub udp: bool,
}

/// What a device can do (`rte_eth_dev_info_get`).
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Driver name, e.g. `net_ring`, `net_tap`, `net_ixgbe`.
    pub driver: String,
    /// Most rx queues the device supports.
    pub max_rx_queues: u16,
    /// Most tx queues the device supports.
    pub max_tx_queues: u16,
    /// Most descriptors per rx queue.
    pub max_rx_descriptors: u16,
    /// Most descriptors per tx queue.
    pub max_tx_descriptors: u16,
    /// `RTE_ETH_RX_OFFLOAD_*` bits supported.
    pub rx_offload_capa: u64,
    /// `RTE_ETH_TX_OFFLOAD_*` bits supported.
    pub tx_offload_capa: u64,
    /// `RTE_ETH_RSS_*` hash types supported.
    pub rss_offloads: u64,
    /// Smallest MTU.
    pub min_mtu: u16,
    /// Largest MTU.
    pub max_mtu: u16,
    /// NUMA socket the device is attached to (ANY for virtual devices).
    pub socket: SocketId,
}

impl DeviceInfo {
    /// True if the device can spread TCP flows over queues by their 4-tuple.
    pub fn supports_rss_tcp(&self) -> bool {
        self.rss_offloads & RSS_TCP_4TUPLE != 0
    }

    /// Checksums the device can compute on transmit.
    pub fn tx_checksums(&self) -> Checksums {
        Checksums {
            ipv4: self.tx_offload_capa & sys::RTE_ETH_TX_OFFLOAD_IPV4_CKSUM as u64 != 0,
            tcp: self.tx_offload_capa & sys::RTE_ETH_TX_OFFLOAD_TCP_CKSUM as u64 != 0,
            udp: self.tx_offload_capa & sys::RTE_ETH_TX_OFFLOAD_UDP_CKSUM as u64 != 0,
        }
    }

    /// Checksums the device can verify on receive.
    pub fn rx_checksums(&self) -> Checksums {
        Checksums {
            ipv4: self.rx_offload_capa & sys::RTE_ETH_RX_OFFLOAD_IPV4_CKSUM as u64 != 0,
            tcp: self.rx_offload_capa & sys::RTE_ETH_RX_OFFLOAD_TCP_CKSUM as u64 != 0,
            udp: self.rx_offload_capa & sys::RTE_ETH_RX_OFFLOAD_UDP_CKSUM as u64 != 0,
        }
    }
}

fn check(op: &'static str, ret: i32) -> Result<()> {
    if ret < 0 {
        Err(Error::dpdk(op, ret))
    } else {
        Ok(())
    }
}

impl PortId {
    /// The port with this numeric id (e.g. `Mbuf::port()`); every query checks it exists.
    pub fn new(id: u16) -> PortId {
        PortId(id)
    }

    /// The numeric port id.
    pub fn id(self) -> u16 {
        self.0
    }

    /// The port with this ethdev name (e.g. `net_ring0`, `net_tap0`, `0000:3b:00.0`).
    pub fn by_name(_eal: &Eal, name: &str) -> Result<PortId> {
        const OP: &str = "rte_eth_dev_get_port_by_name";
        let c = CString::new(name).map_err(|_| Error::invalid(OP, "name contains a NUL byte"))?;
        let mut id = 0u16;
        // SAFETY: c is a valid C string, id a valid out-pointer.
        check(OP, unsafe {
            sys::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id)
        })
        .map_err(|_| Error::invalid(OP, format!("no ethdev port named {name:?}")))?;
        Ok(PortId(id))
    }

    /// Probe a device at run time (`rte_dev_probe`), e.g. `net_tap0,iface=dtap0` or
    /// `net_ring1`, and return its port.
    pub fn attach(eal: &Eal, devargs: &str) -> Result<PortId> {
        const OP: &str = "rte_dev_probe";
        let c =
            CString::new(devargs).map_err(|_| Error::invalid(OP, "devargs contain a NUL byte"))?;
        // SAFETY: c is a valid C string; DPDK copies what it keeps.
        check(OP, unsafe { sys::rte_dev_probe(c.as_ptr()) })?;
        let name = devargs.split(',').next().unwrap_or(devargs);
        PortId::by_name(eal, name)
    }

    /// The ethdev name.
    pub fn name(self) -> Result<String> {
        let mut buf = [0 as std::os::raw::c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: buf is RTE_ETH_NAME_MAX_LEN bytes as the API requires.
        check("rte_eth_dev_get_name_by_port", unsafe {
            sys::rte_eth_dev_get_name_by_port(self.0, buf.as_mut_ptr())
        })?;
        // SAFETY: DPDK wrote a NUL-terminated name into buf.
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    fn raw_info(self) -> Result<sys::rte_eth_dev_info> {
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: info is a valid out-pointer of the right type.
        check("rte_eth_dev_info_get", unsafe {
            sys::rte_eth_dev_info_get(self.0, &mut info)
        })?;
        Ok(info)
    }

    /// Device capabilities.
    pub fn info(self) -> Result<DeviceInfo> {
        let info = self.raw_info()?;
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: the driver name is a static string owned by the driver.
            unsafe { CStr::from_ptr(info.driver_name) }
                .to_string_lossy()
                .into_owned()
        };
        Ok(DeviceInfo {
            driver,
            max_rx_queues: info.max_rx_queues,
            max_tx_queues: info.max_tx_queues,
            max_rx_descriptors: info.rx_desc_lim.nb_max,
            max_tx_descriptors: info.tx_desc_lim.nb_max,
            rx_offload_capa: info.rx_offload_capa,
            tx_offload_capa: info.tx_offload_capa,
            rss_offloads: info.flow_type_rss_offloads,
            min_mtu: info.min_mtu,
            max_mtu: info.max_mtu,
            socket: self.socket(),
        })
    }

    /// NUMA socket of the device (ANY when unknown, e.g. virtual devices).
    pub fn socket(self) -> SocketId {
        // SAFETY: reads the ethdev table.
        SocketId(unsafe { sys::rte_eth_dev_socket_id(self.0) })
    }

    /// The port's MAC address.
    pub fn mac_addr(self) -> Result<MacAddr> {
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: mac is a valid out-pointer.
        check("rte_eth_macaddr_get", unsafe {
            sys::rte_eth_macaddr_get(self.0, &mut mac)
        })?;
        Ok(MacAddr(mac.addr_bytes))
    }

    /// Current link state, without waiting.
    pub fn link(self) -> Result<Link> {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: link is a valid out-pointer.
        check("rte_eth_link_get_nowait", unsafe {
            sys::rte_eth_link_get_nowait(self.0, &mut link)
        })?;
        Ok(Link {
            up: link.link_status() != 0,
            speed_mbps: link.link_speed,
            full_duplex: link.link_duplex() != 0,
        })
    }

    /// Device counters.
    pub fn stats(self) -> Result<Stats> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: s is a valid out-pointer.
        check("rte_eth_stats_get", unsafe {
            sys::rte_eth_stats_get(self.0, &mut s)
        })?;
        Ok(Stats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Zero the device counters.
    pub fn reset_stats(self) -> Result<()> {
        // SAFETY: plain call on a port id.
        check("rte_eth_stats_reset", unsafe {
            sys::rte_eth_stats_reset(self.0)
        })
    }

    /// Current MTU.
    pub fn mtu(self) -> Result<u16> {
        let mut mtu = 0u16;
        // SAFETY: mtu is a valid out-pointer.
        check("rte_eth_dev_get_mtu", unsafe {
            sys::rte_eth_dev_get_mtu(self.0, &mut mtu)
        })?;
        Ok(mtu)
    }
}

/// How to set a port up. `Default` gives one rx and one tx queue of 1024 descriptors.
#[derive(Clone, Debug)]
pub struct PortConfig {
    /// Receive queues (one per lcore that polls this port).
    pub rx_queues: u16,
    /// Transmit queues.
    pub tx_queues: u16,
    /// Descriptors per rx queue (adjusted to the device's limits).
    pub rx_descriptors: u16,
    /// Descriptors per tx queue (adjusted to the device's limits).
    pub tx_descriptors: u16,
    /// MTU to set; `None` keeps the device default.
    pub mtu: Option<u16>,
    /// Spread flows over the rx queues by TCP 4-tuple when the device supports it and there is
    /// more than one rx queue.
    pub rss: bool,
    /// Enable the IPv4/TCP/UDP checksum offloads the device supports (rx verify, tx compute).
    pub checksum_offload: bool,
    /// Receive frames for any MAC address.
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mtu: None,
            rss: true,
            checksum_offload: true,
            promiscuous: false,
        }
    }
}

/// What `configure` actually enabled, given the device's capabilities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Configured {
    /// Rx queues set up.
    pub rx_queues: u16,
    /// Tx queues set up.
    pub tx_queues: u16,
    /// Rx descriptors per queue after adjustment.
    pub rx_descriptors: u16,
    /// Tx descriptors per queue after adjustment.
    pub tx_descriptors: u16,
    /// RSS hash types enabled (0: no RSS).
    pub rss_hash: u64,
    /// Checksums verified by the device on receive.
    pub rx_checksums: Checksums,
    /// Checksums the device computes on transmit (set the mbuf's tx offload flags to use them).
    pub tx_checksums: Checksums,
}

/// The owner of one ethdev port.
pub struct Port {
    id: PortId,
    rx_pools: Vec<Mempool>,
    configured: Option<Configured>,
    started: bool,
}

impl Port {
    /// Take ownership of a port (fails if another `Port` owns it).
    pub fn open(_eal: &Eal, id: PortId) -> Result<Port> {
        const OP: &str = "Port::open";
        // SAFETY: plain validity query.
        if (id.0 as usize) >= MAX_PORTS || unsafe { sys::rte_eth_dev_is_valid_port(id.0) } == 0 {
            return Err(Error::invalid(OP, format!("port {} does not exist", id.0)));
        }
        if CLAIMED[id.0 as usize].swap(true, Ordering::AcqRel) {
            return Err(Error::invalid(OP, format!("port {} is already open", id.0)));
        }
        live_object_created();
        Ok(Port {
            id,
            rx_pools: Vec::new(),
            configured: None,
            started: false,
        })
    }

    /// Open the port with this ethdev name (`net_ring0`, a PCI address, ...).
    pub fn open_by_name(eal: &Eal, name: &str) -> Result<Port> {
        Port::open(eal, PortId::by_name(eal, name)?)
    }

    /// Probe a virtual device (`net_tap0,iface=x`) and open its port.
    pub fn attach(eal: &Eal, devargs: &str) -> Result<Port> {
        Port::open(eal, PortId::attach(eal, devargs)?)
    }

    /// This port's id (for info, MAC, link and stats).
    pub fn id(&self) -> PortId {
        self.id
    }

    /// What the last successful `configure` enabled.
    pub fn configured(&self) -> Option<&Configured> {
        self.configured.as_ref()
    }

    /// Configure queues, descriptors, MTU, RSS and offloads. The port must be stopped.
    ///
    /// `rx_pools` holds either one pool for every rx queue or one per rx queue (queue `i` fills
    /// from `rx_pools[i]`; put each on the socket of the lcore that polls that queue).
    pub fn configure(&mut self, config: &PortConfig, rx_pools: &[&Mempool]) -> Result<Configured> {
        const OP: &str = "rte_eth_dev_configure";
        if self.started {
            return Err(Error::invalid(OP, "stop the port before configuring it"));
        }
        if config.rx_queues == 0 || config.tx_queues == 0 {
            return Err(Error::invalid(
                OP,
                "a port needs at least one rx and one tx queue",
            ));
        }
        if rx_pools.len() != 1 && rx_pools.len() != config.rx_queues as usize {
            return Err(Error::invalid(OP, "give one rx pool, or one per rx queue"));
        }
        let info = self.id.raw_info()?;
        if config.rx_queues > info.max_rx_queues || config.tx_queues > info.max_tx_queues {
            return Err(Error::invalid(
                OP,
                format!(
                    "{} rx / {} tx queues requested, device supports {} / {}",
                    config.rx_queues, config.tx_queues, info.max_rx_queues, info.max_tx_queues
                ),
            ));
        }

        let mut conf = sys::rte_eth_conf::default();
        let rss_hash = if config.rss && config.rx_queues > 1 {
            info.flow_type_rss_offloads & RSS_TCP_4TUPLE
        } else {
            0
        };
        if rss_hash != 0 {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hash;
        }
        let (rx_cksum, tx_cksum) = if config.checksum_offload {
            let rx = sys::RTE_ETH_RX_OFFLOAD_IPV4_CKSUM
                | sys::RTE_ETH_RX_OFFLOAD_TCP_CKSUM
                | sys::RTE_ETH_RX_OFFLOAD_UDP_CKSUM;
            let tx = sys::RTE_ETH_TX_OFFLOAD_IPV4_CKSUM
                | sys::RTE_ETH_TX_OFFLOAD_TCP_CKSUM
                | sys::RTE_ETH_TX_OFFLOAD_UDP_CKSUM;
            (
                rx as u64 & info.rx_offload_capa,
                tx as u64 & info.tx_offload_capa,
            )
        } else {
            (0, 0)
        };
        conf.rxmode.offloads = rx_cksum;
        conf.txmode.offloads = tx_cksum;
        if let Some(mtu) = config.mtu {
            if mtu < info.min_mtu || mtu > info.max_mtu {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "MTU {mtu} outside the device's {}..={}",
                        info.min_mtu, info.max_mtu
                    ),
                ));
            }
            conf.rxmode.mtu = mtu as u32;
        }

        // SAFETY: conf is a fully initialised rte_eth_conf; the port exists and is stopped.
        check(OP, unsafe {
            sys::rte_eth_dev_configure(self.id.0, config.rx_queues, config.tx_queues, &conf)
        })?;
        if let Some(mtu) = config.mtu {
            // ethdev records rxmode.mtu, but some PMDs (net_tap) apply the MTU only through
            // their mtu_set op; drivers without one read rxmode.mtu instead.
            // SAFETY: plain call on a configured, stopped port.
            let ret = unsafe { sys::rte_eth_dev_set_mtu(self.id.0, mtu) };
            if ret < 0 && ret != -libc::ENOTSUP {
                return Err(Error::dpdk("rte_eth_dev_set_mtu", ret));
            }
        }
        let (mut nb_rxd, mut nb_txd) = (config.rx_descriptors, config.tx_descriptors);
        // SAFETY: valid out-pointers.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(self.id.0, &mut nb_rxd, &mut nb_txd)
        })?;

        let mut rxconf = info.default_rxconf;
        rxconf.offloads = rx_cksum;
        for q in 0..config.rx_queues {
            let pool = rx_pools[if rx_pools.len() == 1 { 0 } else { q as usize }];
            let socket = if pool.socket() == SocketId::ANY {
                self.id.socket()
            } else {
                pool.socket()
            };
            // SAFETY: rxconf is valid; the pool outlives the queue (the Port keeps a handle).
            check("rte_eth_rx_queue_setup", unsafe {
                sys::rte_eth_rx_queue_setup(
                    self.id.0,
                    q,
                    nb_rxd,
                    socket.0 as u32,
                    &rxconf,
                    pool.as_ptr(),
                )
            })?;
        }
        let mut txconf = info.default_txconf;
        txconf.offloads = tx_cksum;
        for q in 0..config.tx_queues {
            // SAFETY: txconf is valid.
            check("rte_eth_tx_queue_setup", unsafe {
                sys::rte_eth_tx_queue_setup(
                    self.id.0,
                    q,
                    nb_txd,
                    self.id.socket().0 as u32,
                    &txconf,
                )
            })?;
        }
        self.rx_pools = rx_pools.iter().map(|&p| p.clone()).collect();

        if config.promiscuous {
            // SAFETY: plain call on a configured port.
            check("rte_eth_promiscuous_enable", unsafe {
                sys::rte_eth_promiscuous_enable(self.id.0)
            })?;
        }
        let checksums = |bits: u64, ip, tcp, udp| Checksums {
            ipv4: bits & ip != 0,
            tcp: bits & tcp != 0,
            udp: bits & udp != 0,
        };
        let configured = Configured {
            rx_queues: config.rx_queues,
            tx_queues: config.tx_queues,
            rx_descriptors: nb_rxd,
            tx_descriptors: nb_txd,
            rss_hash,
            rx_checksums: checksums(
                rx_cksum,
                sys::RTE_ETH_RX_OFFLOAD_IPV4_CKSUM as u64,
                sys::RTE_ETH_RX_OFFLOAD_TCP_CKSUM as u64,
                sys::RTE_ETH_RX_OFFLOAD_UDP_CKSUM as u64,
            ),
            tx_checksums: checksums(
                tx_cksum,
                sys::RTE_ETH_TX_OFFLOAD_IPV4_CKSUM as u64,
                sys::RTE_ETH_TX_OFFLOAD_TCP_CKSUM as u64,
                sys::RTE_ETH_TX_OFFLOAD_UDP_CKSUM as u64,
            ),
        };
        self.configured = Some(configured.clone());
        Ok(configured)
    }

    /// Start the device (after `configure`).
    pub fn start(&mut self) -> Result<()> {
        if self.configured.is_none() {
            return Err(Error::invalid(
                "rte_eth_dev_start",
                "configure the port first",
            ));
        }
        // SAFETY: the port is configured with all its queues set up.
        check("rte_eth_dev_start", unsafe {
            sys::rte_eth_dev_start(self.id.0)
        })?;
        self.started = true;
        Ok(())
    }

    /// Stop the device (queues keep their configuration).
    pub fn stop(&mut self) -> Result<()> {
        if !self.started {
            return Ok(());
        }
        // SAFETY: no Queue handle is alive (they borrow the Port), so no lcore is polling.
        check("rte_eth_dev_stop", unsafe {
            sys::rte_eth_dev_stop(self.id.0)
        })?;
        self.started = false;
        Ok(())
    }

    /// Set the MTU of a stopped or running port.
    pub fn set_mtu(&mut self, mtu: u16) -> Result<()> {
        // SAFETY: plain call on an owned port.
        check("rte_eth_dev_set_mtu", unsafe {
            sys::rte_eth_dev_set_mtu(self.id.0, mtu)
        })
    }

    /// Receive up to `burst.spare()` packets from rx `queue` into the burst; returns how many
    /// (0 for a queue index that was not configured).
    #[inline]
    pub fn rx_burst<const N: usize>(&mut self, queue: u16, burst: &mut Burst<N>) -> usize {
        if !self
            .configured
            .as_ref()
            .is_some_and(|c| queue < c.rx_queues)
        {
            return 0;
        }
        rx_burst(self.id.0, queue, burst)
    }

    /// Send the burst's mbufs on tx `queue`; returns how many the device took. Those leave the
    /// burst; the ones not sent stay in it (front first) to retry, or free them with `clear()`.
    #[inline]
    pub fn tx_burst<const N: usize>(&mut self, queue: u16, burst: &mut Burst<N>) -> usize {
        if !self
            .configured
            .as_ref()
            .is_some_and(|c| queue < c.tx_queues)
        {
            return 0;
        }
        tx_burst(self.id.0, queue, burst)
    }

    /// One [`Queue`] per queue index `0..max(rx_queues, tx_queues)`, to hand to lcores.
    /// While they live the port cannot be stopped or reconfigured.
    pub fn queues(&mut self) -> Vec<Queue<'_>> {
        let n = self
            .configured
            .as_ref()
            .map_or(0, |c| c.rx_queues.max(c.tx_queues));
        let (rx, tx) = self
            .configured
            .as_ref()
            .map_or((0, 0), |c| (c.rx_queues, c.tx_queues));
        (0..n)
            .map(|q| Queue {
                port: self.id.0,
                queue: q,
                has_rx: q < rx,
                has_tx: q < tx,
                _port: PhantomData,
            })
            .collect()
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        if self.started {
            // SAFETY: no Queue handle can be alive while the Port is dropped.
            unsafe { sys::rte_eth_dev_stop(self.id.0) };
        }
        // SAFETY: we own the port; closing releases its queues (and their mbufs).
        unsafe { sys::rte_eth_dev_close(self.id.0) };
        CLAIMED[self.id.0 as usize].store(false, Ordering::Release);
        live_object_released();
    }
}

/// The rx and tx queue with one index, for the single lcore that polls it.
pub struct Queue<'p> {
    port: u16,
    queue: u16,
    has_rx: bool,
    has_tx: bool,
    _port: PhantomData<&'p ()>,
}

impl Queue<'_> {
    /// The queue index.
    pub fn index(&self) -> u16 {
        self.queue
    }

    /// The port id.
    pub fn port(&self) -> PortId {
        PortId(self.port)
    }

    /// As [`Port::rx_burst`]; 0 if this index has no rx queue.
    #[inline]
    pub fn rx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        if !self.has_rx {
            return 0;
        }
        rx_burst(self.port, self.queue, burst)
    }

    /// As [`Port::tx_burst`]; 0 (everything kept) if this index has no tx queue.
    #[inline]
    pub fn tx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        if !self.has_tx {
            return 0;
        }
        tx_burst(self.port, self.queue, burst)
    }
}

#[inline]
fn rx_burst<const N: usize>(port: u16, queue: u16, burst: &mut Burst<N>) -> usize {
    let spare = burst.spare();
    if spare == 0 {
        return 0;
    }
    // SAFETY: spare_ptr points at `spare` null slots; the PMD writes at most `spare` owned mbuf
    // pointers there. Callers checked that the queue index is configured, and hold either the
    // port (&mut Port) or the queue's unique handle, so no other thread polls this queue.
    unsafe {
        let n = sys::rte_eth_rx_burst(port, queue, burst.spare_ptr(), spare as u16) as usize;
        burst.set_len(burst.len() + n);
        n
    }
}

#[inline]
fn tx_burst<const N: usize>(port: u16, queue: u16, burst: &mut Burst<N>) -> usize {
    if burst.is_empty() {
        return 0;
    }
    // SAFETY: the first len slots are owned mbufs; the PMD takes ownership of the first n it
    // returns, which consumed_front forgets without freeing.
    unsafe {
        let n = sys::rte_eth_tx_burst(port, queue, burst.as_mut_ptr(), burst.len() as u16) as usize;
        burst.consumed_front(n);
        n
    }
}
