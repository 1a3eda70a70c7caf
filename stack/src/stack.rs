//! One TCP/IP stack per lcore, run to completion: rx burst → TCP → application → tx burst.
//!
//! Three properties of stock smoltcp are wrapped away here:
//! - `Interface::poll` scans the whole `SocketSet` for every packet. We keep one `Interface`
//!   (addresses, ARP cache, ICMP) but give every connection its own one-socket `SocketSet`,
//!   found by an exact 4-tuple lookup ([`FlowTable`]); smoltcp only ever sees that set
//!   (`poll_ingress_single`, then `poll_egress` for the connections touched in the turn).
//!   Connections with a timer due come out of a heap. Nothing per packet depends on how many
//!   connections exist. (Many small sets of a few sockets each, by hash, were measured first:
//!   with 20,000 connections the idle neighbours in a set cost half the throughput.)
//! - There is no listen backlog: one listening socket takes one connection. We create the
//!   listening socket when a SYN for a listening port arrives for a flow without a connection,
//!   so any number of clients may connect at once, bounded by `backlog`.
//! - `Interface::poll` receives until the device is empty. Our device view yields exactly the
//!   one packet the dispatcher picked ([`PacketIo::view`]), and one rx burst happens per turn.
//!
//! Connections are removed (their slot and rings reused) when they reach CLOSED or TIME-WAIT,
//! after the last segment they owed (ACK of the peer's FIN, or our RST) went out. Segments of
//! no connection reach smoltcp with an empty socket set, which answers them with RST.
//!
//! # SYN floods
//!
//! Every SYN to a listening port costs a socket that holds a backlog place until the handshake
//! completes or times out. With a fixed backlog (1,024) and timeout (20 s) and SYNs refused on a
//! full backlog, ~52 spoofed SYNs a second would lock every client out. The defence here is
//! bounded-cost eviction, not SYN cookies:
//! - **A full backlog evicts, it never refuses.** Half-open connections sit in a list in order
//!   of arrival (intrusive, through the slots: no allocation, O(1) insert and removal). A SYN
//!   that finds `backlog` connections pending (or no free slot) silently drops the oldest
//!   half-open one and takes its place; a SYN is dropped only when nothing is evictable
//!   (every slot holds an established connection). A flood therefore only shortens how long a
//!   half-open connection may wait for its peer's ACK: `backlog / flood rate` (0.4 s at 2,500
//!   SYNs/s, still 1 ms at a million a second, more than one lcore can take in), while a real
//!   client answers the SYN-ACK within one round trip. (FreeBSD's syncache, too, drops a full
//!   bucket's oldest entry for a new SYN.)
//! - **The handshake timeout adapts.** While more than half the backlog is half-open, entries
//!   older than `handshake_timeout_under_pressure_ms` (1 s) are dropped, oldest first, at the
//!   start of each turn (the list is in arrival order, so this is a look at its head); otherwise
//!   the normal `handshake_timeout_ms` (20 s) applies. Without a flood a slow client keeps its
//!   20 s; after one, the half-open leftovers go within a second instead of holding slots.
//! - Dropped half-open connections send nothing (no RST to spoofed sources: no backscatter).
//!   Counted in [`StackStats::half_open_evicted`] and [`StackStats::handshake_timeouts`].
//!
//! Why not SYN cookies: a cookie is the server's initial sequence number, and a connection is
//! rebuilt from the ACK that carries it. smoltcp chooses the ISN itself (random, no hook) and
//! has no way to create a socket in ESTABLISHED with given sequence numbers, so cookies would
//! mean answering SYNs with hand-made SYN-ACKs and forking smoltcp's TCP to adopt them — and
//! they lose window scaling and SACK unless timestamps carry them. Eviction keeps smoltcp as
//! it is, costs O(1) per SYN, and holds as long as the flood rate stays below `backlog` per
//! round trip of the legitimate clients. What it does not do is spare the memory and CPU of
//! the half-open sockets themselves (one slot and one SYN-ACK per SYN, as without a defence).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddrV4;

use hioload_dpdk::{tsc, tsc_hz, Burst, Checksums, Eal, Mbuf, Mempool, SocketId};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::config::StackConfig;
use crate::conn::{CloseReason, Conn, ConnEvents, ConnId};
use crate::device::{IoStats, PacketIo, PacketQueue};
use crate::flow::{flow_key, TcpFlow};
use crate::flow_table::FlowTable;
use crate::ring_slab::RingSlab;

/// Packets taken per rx burst (one burst per loop turn).
pub const RX_BURST: usize = 32;

/// Errors of stack setup and of outgoing connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackError {
    /// The configuration was refused.
    Config(String),
    /// A DPDK call failed (e.g. no hugepage memory for the ring slab).
    Dpdk(hioload_dpdk::Error),
    /// Every connection slot is in use.
    NoFreeSlot,
    /// smoltcp refused the connect (e.g. unspecified address).
    Connect(String),
}

impl std::fmt::Display for StackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StackError::Config(s) => write!(f, "stack configuration: {s}"),
            StackError::Dpdk(e) => write!(f, "stack setup: {e}"),
            StackError::NoFreeSlot => {
                f.write_str("no free connection slot (max_connections reached)")
            }
            StackError::Connect(s) => write!(f, "connect: {s}"),
        }
    }
}

impl std::error::Error for StackError {}

/// What the port gives the stack: its MAC, IP MTU and the checksum offloads it was configured with.
#[derive(Copy, Clone, Debug)]
pub struct PortProfile {
    /// The port's MAC address.
    pub mac: [u8; 6],
    /// IP MTU (1500 on Ethernet); frames are MTU + 14 bytes.
    pub mtu: u16,
    /// Checksums the port verifies on receive.
    pub rx_checksums: Checksums,
    /// Checksums the port computes on transmit.
    pub tx_checksums: Checksums,
}

impl PortProfile {
    /// The profile of a configured port.
    pub fn of(port: &hioload_dpdk::Port) -> Result<PortProfile, StackError> {
        let configured = port
            .configured()
            .ok_or_else(|| StackError::Config("the port is not configured".into()))?;
        Ok(PortProfile {
            mac: port.id().mac_addr().map_err(StackError::Dpdk)?.0,
            mtu: port.id().mtu().map_err(StackError::Dpdk)?,
            rx_checksums: configured.rx_checksums,
            tx_checksums: configured.tx_checksums,
        })
    }
}

/// Counters and gauges of one stack.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Connections handed to the application and not yet closed.
    pub open: usize,
    /// Passive connections between SYN and hand-over (counted against the backlog).
    pub pending: usize,
    /// Active connections still in their handshake.
    pub connecting: usize,
    /// smoltcp sockets alive (all of the above plus those being torn down).
    pub sockets: usize,
    /// Connections opened since start (accepted or connected; reported with `on_open`).
    pub accepted: u64,
    /// Open connections closed since start (any reason).
    pub closed: u64,
    /// Handshakes that never completed (reset, refused, or timed out), since start.
    pub handshakes_failed: u64,
    /// SYNs dropped because no slot could be had: the backlog or the slots were full and no
    /// half-open connection could be evicted for them.
    pub syn_dropped: u64,
    /// Half-open connections evicted to make room for a new SYN (backlog or slots full), since
    /// start. Rising fast: a SYN flood. Also counted in `handshakes_failed`.
    pub half_open_evicted: u64,
    /// Handshakes given up after their timeout (the normal one, or the short one while the
    /// backlog is over half full), passive or active, since start. Also counted in
    /// `handshakes_failed`.
    pub handshake_timeouts: u64,
    /// Connection visits (application callbacks and egress), since start.
    pub visits: u64,
    /// Visits because a timer was due, since start.
    pub timer_wakeups: u64,
    /// Device-level counters.
    pub io: IoStats,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Passive: created for a SYN, not yet reported (counts against the backlog).
    Pending,
    /// Active: connect() issued, handshake not finished.
    Connecting,
    /// Reported to the application with `on_open`.
    Open,
}

struct ConnState {
    handle: SocketHandle,
    key: u64,
    phase: Phase,
    /// Until open: when the handshake is given up (µs).
    handshake_deadline: i64,
    /// When the socket was created (µs): the age the half-open list is ordered by.
    created_at: i64,
    /// The TCP state at the previous visit, to tell a graceful end from a reset.
    last_state: tcp::State,
    eof_reported: bool,
    last_send_queue: usize,
}

/// One connection slot: its own one-socket set, its state, its place in the turn and the timer heap.
struct Slot {
    gen: u32,
    sockets: SocketSet<'static>,
    conn: Option<ConnState>,
    touched: bool,
    /// Listed in `Stack::neighbor_waiters`.
    waiting_neighbor: bool,
    /// Earliest time (µs) this slot has an entry in the timer heap for; `i64::MAX`: none.
    armed_at: i64,
    /// When smoltcp last asked to be polled for this connection (µs); `i64::MAX`: only on
    /// ingress. Heap entries older than this are re-armed, not visited.
    due_at: i64,
    /// Neighbours in the half-open list (`NIL` at its ends) while the slot holds a `Pending`
    /// connection.
    older: u32,
    newer: u32,
}

/// No slot: the end of the half-open list.
const NIL: u32 = u32::MAX;

/// Most half-open connections expired by age in one turn (the rest go in the next turns).
const MAX_EXPIRED_PER_TURN: usize = 4 * RX_BURST;

/// `Pending` connections in order of arrival: a doubly-linked list through the slots.
struct HalfOpen {
    oldest: u32,
    newest: u32,
}

/// TSC to smoltcp time, without a division per reading.
struct Clock {
    start: u64,
    /// Microseconds per cycle, as a 32.32 fixed-point number.
    micros_per_cycle: u128,
}

impl Clock {
    fn new() -> Clock {
        let hz = tsc_hz().max(1) as u128;
        Clock {
            start: tsc(),
            micros_per_cycle: (1_000_000u128 << 32) / hz,
        }
    }
    #[inline]
    fn now(&self) -> Instant {
        let cycles = tsc().wrapping_sub(self.start) as u128;
        Instant::from_micros(((cycles * self.micros_per_cycle) >> 32) as i64)
    }
}

/// One lcore's TCP/IP stack over one queue pair.
pub struct Stack<Q> {
    // Field order is drop order: every socket (in the slots) goes before the ring slab their
    // buffers point into.
    slots: Box<[Slot]>,
    /// Always empty: what smoltcp sees for ARP, ICMP and segments of no connection.
    no_sockets: SocketSet<'static>,
    flows: FlowTable,
    free_slots: Vec<u32>,
    timers: BinaryHeap<Reverse<(i64, u32)>>,
    iface: Interface,
    io: PacketIo<Q>,
    /// The rx burst; boxed so the loop can take it out of `self` by moving a pointer.
    rx: Option<Box<Burst<RX_BURST>>>,
    touched: Vec<u32>,
    /// Connections that had output to send and a deadline a second or so away: the mark smoltcp
    /// leaves on a socket whose next hop's MAC is unknown (it stays silent for a second after
    /// asking). Touched again as soon as an ARP frame arrives, so the answer is used at once.
    neighbor_waiters: Vec<u32>,
    listen_ports: Vec<u16>,
    /// Every `Pending` connection, oldest first (its length is `stats.pending`).
    half_open: HalfOpen,
    config: StackConfig,
    clock: Clock,
    next_port: u16,
    stats: StackStats,
    slab: RingSlab,
}

impl<Q: PacketQueue> Stack<Q> {
    /// A stack on `queue`, allocating tx frames from `pool` and its socket rings on `socket`
    /// (the NUMA socket of the lcore that will poll it). Everything is allocated here, for
    /// `max_connections`; the loop itself allocates nothing.
    pub fn new(
        eal: &Eal,
        queue: Q,
        pool: Mempool,
        port: PortProfile,
        socket: SocketId,
        config: StackConfig,
    ) -> Result<Self, StackError> {
        config.validate().map_err(StackError::Config)?;
        let slab = RingSlab::new(
            eal,
            config.max_connections,
            config.rx_ring,
            config.tx_ring,
            socket,
        )
        .map_err(StackError::Dpdk)?;
        let mut io = PacketIo::new(
            queue,
            pool,
            port.mtu as usize,
            port.rx_checksums,
            port.tx_checksums,
        );
        let clock = Clock::new();
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(port.mac)));
        iface_config.random_seed = tsc() ^ (u64::from(config.ip.to_bits()) << 16);
        let mut iface = Interface::new(iface_config, &mut io.view(None), clock.now());
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(config.ip), config.prefix_len))
                .expect("one address fits");
        });
        if let Some(gw) = config.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .map_err(|_| StackError::Config("route table full".into()))?;
        }
        let slots = (0..config.max_connections)
            .map(|_| Slot {
                gen: 0,
                sockets: SocketSet::new(Vec::<SocketStorage<'static>>::with_capacity(1)),
                conn: None,
                touched: false,
                waiting_neighbor: false,
                armed_at: i64::MAX,
                due_at: i64::MAX,
                older: NIL,
                newer: NIL,
            })
            .collect();
        Ok(Stack {
            slots,
            no_sockets: SocketSet::new(Vec::new()),
            flows: FlowTable::new(config.max_connections),
            free_slots: (0..config.max_connections as u32).rev().collect(),
            timers: BinaryHeap::with_capacity(config.max_connections * 2),
            iface,
            io,
            rx: Some(Box::new(Burst::new())),
            touched: Vec::with_capacity(config.max_connections),
            neighbor_waiters: Vec::with_capacity(config.max_connections),
            listen_ports: Vec::new(),
            half_open: HalfOpen {
                oldest: NIL,
                newest: NIL,
            },
            next_port: config.ephemeral_ports.0,
            stats: StackStats::default(),
            clock,
            config,
            slab,
        })
    }

    /// Accept connections on `port` (not 0) from now on.
    pub fn listen(&mut self, port: u16) {
        assert_ne!(port, 0, "cannot listen on port 0");
        if !self.listen_ports.contains(&port) {
            self.listen_ports.push(port);
        }
    }

    /// Stop accepting on `port` (established connections stay).
    pub fn unlisten(&mut self, port: u16) {
        self.listen_ports.retain(|&p| p != port);
    }

    /// The configuration.
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// Counters and gauges.
    pub fn stats(&self) -> StackStats {
        let mut s = self.stats;
        s.io = self.io.stats;
        s
    }

    /// Bytes one connection slot costs: its two rings (hugepage slab) plus its smoltcp socket
    /// set and bookkeeping (ordinary heap) and its share of the flow table. Allocated up front
    /// for `max_connections`, so this is also the cost of an idle connection.
    pub fn memory_per_connection(&self) -> usize {
        self.config.rx_ring
            + self.config.tx_ring
            + std::mem::size_of::<Slot>()
            + std::mem::size_of::<SocketStorage<'static>>()
            + std::mem::size_of::<u32>() // free list
            + 4 * (std::mem::size_of::<u64>() + std::mem::size_of::<u32>()) // flow table, 2-4 entries
    }

    /// The mempool tx frames come from.
    pub fn pool(&self) -> &Mempool {
        self.io.pool()
    }

    /// The queue pair (e.g. to inspect a software-steered queue).
    pub fn queue(&mut self) -> &mut Q {
        &mut self.io.queue
    }

    /// Open a connection to `remote` from an ephemeral port. `on_open` (or `on_close` with
    /// `Reset` if it fails) reports the outcome.
    pub fn connect(&mut self, remote: SocketAddrV4) -> Result<ConnId, StackError> {
        let (lo, hi) = self.config.ephemeral_ports;
        let range = (hi - lo) as usize + 1;
        for _ in 0..range.min(4096) {
            let port = self.next_port;
            self.next_port = if port >= hi { lo } else { port + 1 };
            let key = flow_key(remote, port);
            if self.flows.get(key).is_some() || !self.io.queue.owns(remote, port) {
                continue;
            }
            let index = self.new_socket(key, Phase::Connecting)?;
            let slot = &mut self.slots[index as usize];
            let handle = slot.conn.as_ref().unwrap().handle;
            let socket = slot.sockets.get_mut::<tcp::Socket>(handle);
            let endpoint = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
            if let Err(e) = socket.connect(self.iface.context(), endpoint, port) {
                self.release(index);
                return Err(StackError::Connect(e.to_string()));
            }
            self.stats.connecting += 1;
            self.touch(index);
            return Ok(ConnId {
                index,
                gen: self.slots[index as usize].gen,
            });
        }
        Err(StackError::Connect(format!(
            "no free local port towards {remote}"
        )))
    }

    /// Borrow an open connection outside the poll loop (e.g. to start sending). Whatever is
    /// written goes out on the next [`poll`](Self::poll).
    pub fn conn(&mut self, id: ConnId) -> Option<Conn<'_>> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        let handle = slot.conn.as_ref()?.handle;
        self.touch(id.index);
        Some(Conn {
            id,
            socket: self.slots[id.index as usize]
                .sockets
                .get_mut::<tcp::Socket>(handle),
        })
    }

    /// One loop turn: one rx burst dispatched packet by packet, due timers, application
    /// callbacks and egress of every touched connection, one tx burst. Returns the number of
    /// packets received (0: the caller may pause).
    pub fn poll(&mut self, handler: &mut impl ConnEvents) -> usize {
        let now = self.clock.now();
        self.expire_half_open(now.total_micros());
        let mut rx = self.rx.take().expect("rx burst is home between turns");
        let received = self.io.rx_burst(&mut rx);
        if received > 0 {
            for m in rx.drain() {
                self.ingress(now, m);
            }
        }
        self.rx = Some(rx);
        self.collect_due(now);
        while let Some(index) = self.touched.pop() {
            self.visit(index, now, handler);
        }
        self.io.flush();
        received
    }

    /// Frames waiting to be sent (left over when the tx queue was full).
    pub fn tx_pending(&self) -> usize {
        self.io.tx_pending()
    }

    #[inline]
    fn touch(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if !slot.touched {
            slot.touched = true;
            self.touched.push(index);
        }
    }

    /// Feed one received frame to smoltcp with only its connection's socket set.
    fn ingress(&mut self, now: Instant, m: Mbuf) {
        if !self.io.rx_checksum_ok(&m) {
            return;
        }
        let mut target = None;
        if let Some(flow) = TcpFlow::parse(m.data()) {
            if flow.local_ip == self.config.ip {
                let key = flow.key();
                target = self.flows.get(key);
                if target.is_none() && flow.is_syn() && self.listen_ports.contains(&flow.local_port)
                {
                    if (self.stats.pending >= self.config.backlog || self.free_slots.is_empty())
                        && !self.evict_half_open()
                    {
                        self.stats.syn_dropped += 1;
                        return; // nothing to evict (e.g. every slot established): the client retries
                    }
                    match self.new_socket(key, Phase::Pending) {
                        Ok(index) => {
                            self.listen_on(index, flow.local_port);
                            target = Some(index);
                        }
                        Err(_) => {
                            self.stats.syn_dropped += 1;
                            return;
                        }
                    }
                }
            }
        }
        let is_arp = m.data().get(12..14) == Some(&[0x08, 0x06]);
        let sockets = match target {
            Some(index) => {
                self.touch(index);
                &mut self.slots[index as usize].sockets
            }
            // ARP, ICMP, and segments of no connection (smoltcp answers those with RST).
            None => &mut self.no_sockets,
        };
        self.iface
            .poll_ingress_single(now, &mut self.io.view(Some(m)), sockets);
        if is_arp {
            // The neighbour table may have learnt what waiting connections need.
            while let Some(index) = self.neighbor_waiters.pop() {
                self.slots[index as usize].waiting_neighbor = false;
                if self.slots[index as usize].conn.is_some() {
                    self.touch(index);
                }
            }
        }
    }

    fn listen_on(&mut self, index: u32, port: u16) {
        let slot = &mut self.slots[index as usize];
        let handle = slot.conn.as_ref().unwrap().handle;
        let socket = slot.sockets.get_mut::<tcp::Socket>(handle);
        socket
            .listen(port)
            .expect("a fresh socket listens on a non-zero port");
    }

    /// Whether `Pending` connection `index` is still in its handshake (not yet seen established
    /// by smoltcp, e.g. its ACK arrived earlier in this rx burst).
    fn is_half_open(&self, index: u32) -> bool {
        let slot = &self.slots[index as usize];
        let st = slot.conn.as_ref().expect("listed slots are live");
        matches!(
            slot.sockets.get::<tcp::Socket>(st.handle).state(),
            tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed
        )
    }

    /// Append `Pending` connection `index` to the half-open list (the newest).
    fn link_half_open(&mut self, index: u32) {
        let newest = self.half_open.newest;
        let slot = &mut self.slots[index as usize];
        slot.older = newest;
        slot.newer = NIL;
        match newest {
            NIL => self.half_open.oldest = index,
            _ => self.slots[newest as usize].newer = index,
        }
        self.half_open.newest = index;
        self.stats.pending += 1;
    }

    /// Take `index` out of the half-open list (established, or dropped).
    fn unlink_half_open(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        let (older, newer) = (slot.older, slot.newer);
        slot.older = NIL;
        slot.newer = NIL;
        match older {
            NIL => self.half_open.oldest = newer,
            _ => self.slots[older as usize].newer = newer,
        }
        match newer {
            NIL => self.half_open.newest = older,
            _ => self.slots[newer as usize].older = older,
        }
        self.stats.pending -= 1;
    }

    /// Drop `Pending` connection `index` without a word: it was never reported, and its peer
    /// may be a spoofed address (no RST: no backscatter).
    fn drop_half_open(&mut self, index: u32) {
        self.release(index); // unlinks it
        self.stats.handshakes_failed += 1;
    }

    /// Make room for a new SYN: drop the oldest half-open connection. False if there is none
    /// (every `Pending` connection among the oldest `RX_BURST + 1` completed its handshake in
    /// this burst, or the list is empty).
    fn evict_half_open(&mut self) -> bool {
        let mut index = self.half_open.oldest;
        for _ in 0..=RX_BURST {
            if index == NIL {
                return false;
            }
            if self.is_half_open(index) {
                self.drop_half_open(index);
                self.stats.half_open_evicted += 1;
                return true;
            }
            index = self.slots[index as usize].newer;
        }
        false
    }

    /// Drop half-open connections past their handshake timeout, oldest first: the short one
    /// while more than half the backlog is half-open, else the normal one. The list is in
    /// arrival order, so this stops at the first young enough (a look at its head when none).
    fn expire_half_open(&mut self, now: i64) {
        let normal = self.config.handshake_timeout_ms as i64 * 1000;
        let pressed = normal.min(self.config.handshake_timeout_under_pressure_ms as i64 * 1000);
        for _ in 0..MAX_EXPIRED_PER_TURN {
            let oldest = self.half_open.oldest;
            if oldest == NIL {
                return;
            }
            let timeout = if self.stats.pending * 2 > self.config.backlog {
                pressed
            } else {
                normal
            };
            let created_at = self.slots[oldest as usize]
                .conn
                .as_ref()
                .unwrap()
                .created_at;
            if now - created_at < timeout || !self.is_half_open(oldest) {
                return;
            }
            self.drop_half_open(oldest);
            self.stats.handshake_timeouts += 1;
        }
    }

    /// A socket with its slot's rings, for flow `key`.
    fn new_socket(&mut self, key: u64, phase: Phase) -> Result<u32, StackError> {
        let index = self.free_slots.pop().ok_or(StackError::NoFreeSlot)?;
        // SAFETY: slot `index` was free, so no live socket holds its rings; the socket built on
        // them lives in `self.slots`, which is dropped before `self.slab` (field order), and
        // the slot returns to the free list only after the socket was removed (`release`).
        let (rx, tx) = unsafe { self.slab.rings(index as usize) };
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        socket.set_nagle_enabled(self.config.nagle);
        socket.set_ack_delay(self.config.ack_delay_ms.map(Duration::from_millis));
        let slot = &mut self.slots[index as usize];
        let handle = slot.sockets.add(socket); // capacity 1, empty: no allocation
        let created_at = self.clock.now().total_micros();
        let handshake_deadline = created_at + self.config.handshake_timeout_ms as i64 * 1000;
        slot.conn = Some(ConnState {
            handshake_deadline,
            created_at,
            handle,
            key,
            phase,
            last_state: tcp::State::Closed,
            eof_reported: false,
            last_send_queue: 0,
        });
        self.flows.insert(key, index);
        self.stats.sockets += 1;
        if phase == Phase::Pending {
            self.link_half_open(index);
        }
        Ok(index)
    }

    /// Remove slot `index`'s socket and free the slot (and take it out of the half-open list).
    fn release(&mut self, index: u32) {
        if self.slots[index as usize].conn.as_ref().map(|st| st.phase) == Some(Phase::Pending) {
            self.unlink_half_open(index);
        }
        let slot = &mut self.slots[index as usize];
        let st = slot.conn.take().expect("released slot is live");
        slot.gen = slot.gen.wrapping_add(1);
        slot.due_at = i64::MAX;
        drop(slot.sockets.remove(st.handle)); // its rings are unused from here on
        self.flows.remove(st.key);
        self.free_slots.push(index);
        self.stats.sockets -= 1;
    }

    /// Touch every connection whose timer is due.
    fn collect_due(&mut self, now: Instant) {
        let now = now.total_micros();
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let slot = &mut self.slots[index as usize];
            if slot.armed_at != at {
                continue; // superseded by an earlier entry
            }
            slot.armed_at = i64::MAX;
            if slot.conn.is_none() {
                continue; // the connection is gone
            }
            if slot.due_at <= now {
                self.stats.timer_wakeups += 1;
                self.touch(index);
            } else if slot.due_at != i64::MAX {
                // smoltcp moved its deadline later since this entry was pushed.
                slot.armed_at = slot.due_at;
                self.timers.push(Reverse((slot.due_at, index)));
            }
        }
    }

    /// Application callbacks, egress, reaping and timer for one touched connection.
    fn visit(&mut self, index: u32, now: Instant, handler: &mut impl ConnEvents) {
        self.stats.visits += 1;
        let slot = &mut self.slots[index as usize];
        slot.touched = false;
        let id = ConnId {
            index,
            gen: slot.gen,
        };
        let Some(st) = slot.conn.as_ref() else { return };
        let established = !matches!(
            slot.sockets.get::<tcp::Socket>(st.handle).state(),
            tcp::State::Closed
                | tcp::State::TimeWait
                | tcp::State::Listen
                | tcp::State::SynReceived
                | tcp::State::SynSent
        );
        if established && st.phase == Phase::Pending {
            self.unlink_half_open(index);
        }
        let slot = &mut self.slots[index as usize];
        let st = slot.conn.as_mut().expect("still live");
        let socket = slot.sockets.get_mut::<tcp::Socket>(st.handle);
        let mut conn = Conn { id, socket };
        if established {
            if st.phase != Phase::Open {
                if st.phase == Phase::Connecting {
                    self.stats.connecting -= 1;
                }
                st.phase = Phase::Open;
                self.stats.open += 1;
                self.stats.accepted += 1;
                st.last_send_queue = conn.send_queue();
                handler.on_open(&mut conn);
            }
            let eof = !conn.socket.may_recv();
            if conn.recv_queue() > 0
                || (eof && !st.eof_reported)
                || conn.send_queue() < st.last_send_queue
            {
                st.eof_reported |= eof;
                handler.on_ready(&mut conn);
            }
            st.last_send_queue = conn.send_queue();
            st.last_state = conn.socket.state();
        }

        self.iface
            .poll_egress(now, &mut self.io.view(None), &mut slot.sockets);
        let st = slot.conn.as_ref().unwrap();
        let socket = slot.sockets.get::<tcp::Socket>(st.handle);
        // Over, and owing the peer nothing (a CLOSED socket that still knows its peer has an RST to send).
        let handshake_over = st.phase != Phase::Open && now.total_micros() >= st.handshake_deadline;
        let done = match socket.state() {
            // A handshake that did not finish in time (no answer, no neighbour): dropped
            // without a word, as a kernel drops a half-open connection.
            _ if handshake_over => true,
            tcp::State::TimeWait => true,
            // Created for a SYN that smoltcp then refused (e.g. addressed to another MAC).
            tcp::State::Listen => st.phase == Phase::Pending,
            tcp::State::Closed => socket.remote_endpoint().is_none(),
            _ => false,
        };
        if done {
            let graceful = socket.state() == tcp::State::TimeWait
                || matches!(
                    st.last_state,
                    tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait
                );
            let phase = st.phase;
            self.release(index);
            if phase == Phase::Open {
                self.stats.closed += 1;
            } else {
                self.stats.handshakes_failed += 1;
                self.stats.handshake_timeouts += u64::from(handshake_over);
            }
            match phase {
                Phase::Pending => {} // `release` took it out of the half-open list and count
                Phase::Connecting => self.stats.connecting -= 1,
                Phase::Open => self.stats.open -= 1,
            }
            if phase != Phase::Pending {
                handler.on_close(
                    id,
                    if graceful {
                        CloseReason::Graceful
                    } else {
                        CloseReason::Reset
                    },
                );
            }
            return;
        }
        let mut at = self
            .iface
            .poll_at(now, &slot.sockets)
            .map_or(i64::MAX, |t| t.total_micros());
        if st.phase != Phase::Open {
            at = at.min(st.handshake_deadline);
        }
        slot.due_at = at;
        let socket = slot.sockets.get::<tcp::Socket>(st.handle);
        let owes_output = socket.send_queue() > 0
            || matches!(
                socket.state(),
                tcp::State::SynSent
                    | tcp::State::SynReceived
                    | tcp::State::FinWait1
                    | tcp::State::Closing
                    | tcp::State::LastAck
            );
        if owes_output && at >= now.total_micros() + 500_000 && !slot.waiting_neighbor {
            slot.waiting_neighbor = true;
            self.neighbor_waiters.push(index);
        }
        if at < slot.armed_at {
            slot.armed_at = at;
            self.timers.push(Reverse((at, index)));
        }
    }
}
