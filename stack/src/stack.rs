//! One TCP/IP stack per lcore, run to completion: rx burst → TCP → application → tx burst.
//!
//! Three properties of stock smoltcp are wrapped away here:
//! - `Interface::poll` scans the whole `SocketSet` for every packet. We keep one `Interface`
//!   (addresses, ARP cache, ICMP) but split the sockets into many small sets, "buckets"; a
//!   TCP segment goes to the bucket of its flow hash and smoltcp only sees that bucket
//!   (`poll_ingress_single`), then only touched buckets are serviced and sent from
//!   (`poll_egress`). Buckets with a timer due are found by their cached `poll_at`.
//! - There is no listen backlog: one listening socket takes one connection. We create the
//!   listening socket when a SYN for a listening port arrives in a bucket that has no socket for
//!   that flow, so any number of clients may connect at once, bounded by `backlog`.
//! - `Interface::poll` receives until the device is empty. Our device view yields exactly the
//!   one packet the dispatcher picked ([`PacketIo::view`]), and one rx burst happens per turn.
//!
//! Connections are removed (their rings reused) when they reach CLOSED or TIME-WAIT, after the
//! last segment they owed (ACK of the peer's FIN, or our RST) went out.

use std::net::SocketAddrV4;

use hioload_dpdk::{tsc, tsc_hz, Burst, Checksums, Eal, Mbuf, Mempool, SocketId};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::config::StackConfig;
use crate::conn::{CloseReason, Conn, ConnId, Handler};
use crate::device::{IoStats, PacketIo, PacketQueue};
use crate::flow::{flow_hash, TcpFlow};
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
            StackError::NoFreeSlot => f.write_str("no free connection slot (max_connections reached)"),
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
        let configured = port.configured().ok_or_else(|| StackError::Config("the port is not configured".into()))?;
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
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections closed since start (any reason).
    pub closed: u64,
    /// SYNs dropped because the backlog or the connection slots were full.
    pub syn_dropped: u64,
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
    bucket: u32,
    handle: SocketHandle,
    phase: Phase,
    /// The TCP state at the previous visit, to tell a graceful end from a reset.
    last_state: tcp::State,
    eof_reported: bool,
    last_send_queue: usize,
}

struct Slot {
    gen: u32,
    conn: Option<ConnState>,
}

struct Bucket {
    sockets: SocketSet<'static>,
    /// Slot indices of the connections in this bucket.
    conns: Vec<u32>,
    /// smoltcp's next poll time for this bucket, in µs (`i64::MAX`: none).
    poll_at: i64,
    touched: bool,
    /// A connection reached CLOSED/TIME-WAIT: reap after the next egress.
    reap: bool,
}

/// TSC to smoltcp time.
struct Clock {
    start: u64,
    hz: u64,
}

impl Clock {
    fn new() -> Clock {
        Clock { start: tsc(), hz: tsc_hz().max(1) }
    }
    fn now(&self) -> Instant {
        let cycles = tsc().wrapping_sub(self.start) as u128;
        Instant::from_micros((cycles * 1_000_000 / self.hz as u128) as i64)
    }
}

/// One lcore's TCP/IP stack over one queue pair.
pub struct Stack<Q> {
    // Field order is drop order: every socket (in the buckets) goes before the ring slab their
    // buffers point into.
    buckets: Box<[Bucket]>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    iface: Interface,
    io: PacketIo<Q>,
    rx: Burst<RX_BURST>,
    touched: Vec<u32>,
    listen_ports: Vec<u16>,
    config: StackConfig,
    clock: Clock,
    /// Earliest `poll_at` of any bucket, in µs (may be stale-early, never late).
    next_timer: i64,
    next_port: u16,
    stats: StackStats,
    slab: RingSlab,
}

impl<Q: PacketQueue> Stack<Q> {
    /// A stack on `queue`, allocating tx frames from `pool` and its socket rings on `socket`
    /// (the NUMA socket of the lcore that will poll it).
    pub fn new(eal: &Eal, queue: Q, pool: Mempool, port: PortProfile, socket: SocketId, config: StackConfig) -> Result<Self, StackError> {
        config.validate().map_err(StackError::Config)?;
        let slab = RingSlab::new(eal, config.max_connections, config.rx_ring, config.tx_ring, socket).map_err(StackError::Dpdk)?;
        let mut io = PacketIo::new(queue, pool, port.mtu as usize, port.rx_checksums, port.tx_checksums);
        let clock = Clock::new();
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(port.mac)));
        iface_config.random_seed = tsc() ^ (u64::from(config.ip.to_bits()) << 16);
        let mut iface = Interface::new(iface_config, &mut io.view(None), clock.now());
        iface.update_ip_addrs(|addrs| {
            addrs.push(IpCidr::new(IpAddress::Ipv4(config.ip), config.prefix_len)).expect("one address fits");
        });
        if let Some(gw) = config.gateway {
            iface.routes_mut().add_default_ipv4_route(gw).map_err(|_| StackError::Config("route table full".into()))?;
        }
        let per_bucket = (config.max_connections / config.buckets).clamp(1, 64) * 2;
        let buckets = (0..config.buckets)
            .map(|_| Bucket {
                sockets: SocketSet::new(Vec::<SocketStorage<'static>>::with_capacity(per_bucket)),
                conns: Vec::with_capacity(per_bucket),
                poll_at: i64::MAX,
                touched: false,
                reap: false,
            })
            .collect();
        let slots = (0..config.max_connections).map(|_| Slot { gen: 0, conn: None }).collect();
        let free_slots = (0..config.max_connections as u32).rev().collect();
        Ok(Stack {
            buckets,
            slots,
            free_slots,
            iface,
            io,
            rx: Burst::new(),
            touched: Vec::with_capacity(config.buckets),
            listen_ports: Vec::new(),
            next_port: config.ephemeral_ports.0,
            next_timer: i64::MAX,
            stats: StackStats::default(),
            clock,
            config,
            slab,
        })
    }

    /// Accept connections on `port` from now on.
    pub fn listen(&mut self, port: u16) {
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

    /// Bytes one connection costs while idle: its two rings (hugepage slab) plus its smoltcp
    /// socket and bookkeeping (ordinary heap).
    pub fn memory_per_connection(&self) -> usize {
        self.config.rx_ring
            + self.config.tx_ring
            + std::mem::size_of::<SocketStorage<'static>>()
            + std::mem::size_of::<Slot>()
            + std::mem::size_of::<u32>()
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
        for _ in 0..range.min(64) {
            let port = self.next_port;
            self.next_port = if port >= hi { lo } else { port + 1 };
            let bucket = self.bucket_of(flow_hash(remote, port));
            if self.find_flow(bucket, remote, port) {
                continue;
            }
            let index = self.new_socket(bucket, Phase::Connecting)?;
            let handle = self.slots[index as usize].conn.as_ref().unwrap().handle;
            let b = &mut self.buckets[bucket];
            let socket = b.sockets.get_mut::<tcp::Socket>(handle);
            let endpoint = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
            if let Err(e) = socket.connect(self.iface.context(), endpoint, port) {
                self.release(bucket, index);
                return Err(StackError::Connect(e.to_string()));
            }
            self.stats.connecting += 1;
            self.touch(bucket);
            return Ok(ConnId { index, gen: self.slots[index as usize].gen });
        }
        Err(StackError::Connect(format!("no free local port towards {remote}")))
    }

    /// Borrow an open connection outside the poll loop (e.g. to start sending). Whatever is
    /// written goes out on the next [`poll`](Self::poll).
    pub fn conn(&mut self, id: ConnId) -> Option<Conn<'_>> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.gen != id.gen {
            return None;
        }
        let st = slot.conn.as_ref()?;
        let (bucket, handle) = (st.bucket as usize, st.handle);
        self.touch(bucket);
        Some(Conn { id, socket: self.buckets[bucket].sockets.get_mut::<tcp::Socket>(handle) })
    }

    /// One loop turn: one rx burst dispatched packet by packet, due timers, application
    /// callbacks and egress of every touched bucket, one tx burst. Returns the number of
    /// packets received (0: the caller may pause).
    pub fn poll(&mut self, handler: &mut impl Handler) -> usize {
        let now = self.clock.now();
        let mut rx = std::mem::take(&mut self.rx);
        let received = self.io.rx_burst(&mut rx);
        for m in rx.drain() {
            self.ingress(now, m);
        }
        self.rx = rx;
        if now.total_micros() >= self.next_timer {
            self.collect_due(now);
        }
        while let Some(b) = self.touched.pop() {
            self.service(b as usize, now, handler);
        }
        self.io.flush();
        received
    }

    /// Frames waiting to be sent (left over when the tx queue was full).
    pub fn tx_pending(&self) -> usize {
        self.io.tx_pending()
    }

    #[inline]
    fn bucket_of(&self, hash: u32) -> usize {
        hash as usize & (self.config.buckets - 1)
    }

    #[inline]
    fn touch(&mut self, b: usize) {
        let bucket = &mut self.buckets[b];
        if !bucket.touched {
            bucket.touched = true;
            self.touched.push(b as u32);
        }
    }

    /// Feed one received frame to smoltcp with only its bucket's sockets.
    fn ingress(&mut self, now: Instant, m: Mbuf) {
        if !self.io.rx_checksum_ok(&m) {
            return;
        }
        let b = match TcpFlow::parse(m.data()) {
            Some(flow) if flow.local_ip == self.config.ip => {
                let b = self.bucket_of(flow.hash());
                if flow.is_syn() && self.listen_ports.contains(&flow.local_port) && !self.find_flow(b, flow.remote, flow.local_port) {
                    if self.stats.pending >= self.config.backlog || self.new_socket(b, Phase::Pending).map(|i| self.listen_on(b, i, flow.local_port)).is_err() {
                        self.stats.syn_dropped += 1;
                        return; // like a full kernel queue: drop, the client retries
                    }
                }
                b
            }
            // ARP, ICMP and anything else: bucket 0 (smoltcp answers without sockets).
            _ => 0,
        };
        let bucket = &mut self.buckets[b];
        self.iface.poll_ingress_single(now, &mut self.io.view(Some(m)), &mut bucket.sockets);
        self.touch(b);
    }

    /// True if bucket `b` already has a socket for this flow (a retransmitted SYN goes to it).
    fn find_flow(&mut self, b: usize, remote: SocketAddrV4, local_port: u16) -> bool {
        let bucket = &mut self.buckets[b];
        let want = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        bucket.conns.iter().any(|&i| {
            let handle = self.slots[i as usize].conn.as_ref().unwrap().handle;
            let s = bucket.sockets.get::<tcp::Socket>(handle);
            s.remote_endpoint() == Some(want) && s.local_endpoint().map(|e| e.port) == Some(local_port)
        })
    }

    fn listen_on(&mut self, b: usize, index: u32, port: u16) {
        let handle = self.slots[index as usize].conn.as_ref().unwrap().handle;
        let socket = self.buckets[b].sockets.get_mut::<tcp::Socket>(handle);
        socket.listen(port).expect("a fresh socket listens on a non-zero port");
        self.stats.pending += 1;
    }

    /// A socket with its slot's rings, in bucket `b`.
    fn new_socket(&mut self, b: usize, phase: Phase) -> Result<u32, StackError> {
        let index = self.free_slots.pop().ok_or(StackError::NoFreeSlot)?;
        // SAFETY: slot `index` was free, so no live socket holds its rings; the socket built on
        // them lives in `self.buckets`, which is dropped before `self.slab` (field order), and
        // the slot returns to the free list only after the socket was removed (`release`).
        let (rx, tx) = unsafe { self.slab.rings(index as usize) };
        let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        socket.set_nagle_enabled(self.config.nagle);
        socket.set_ack_delay(self.config.ack_delay_ms.map(Duration::from_millis));
        let bucket = &mut self.buckets[b];
        let handle = bucket.sockets.add(socket);
        bucket.conns.push(index);
        let slot = &mut self.slots[index as usize];
        slot.conn = Some(ConnState { bucket: b as u32, handle, phase, last_state: tcp::State::Closed, eof_reported: false, last_send_queue: 0 });
        self.stats.sockets += 1;
        Ok(index)
    }

    /// Remove slot `index`'s socket from bucket `b` and free the slot.
    fn release(&mut self, b: usize, index: u32) {
        let slot = &mut self.slots[index as usize];
        let st = slot.conn.take().expect("released slot is live");
        slot.gen = slot.gen.wrapping_add(1);
        let bucket = &mut self.buckets[b];
        drop(bucket.sockets.remove(st.handle)); // its rings are unused from here on
        let pos = bucket.conns.iter().position(|&i| i == index).expect("slot listed in its bucket");
        bucket.conns.swap_remove(pos);
        self.free_slots.push(index);
        self.stats.sockets -= 1;
    }

    /// Mark every bucket whose timer is due; recompute the earliest timer.
    fn collect_due(&mut self, now: Instant) {
        let now = now.total_micros();
        let mut next = i64::MAX;
        for b in 0..self.buckets.len() {
            let at = self.buckets[b].poll_at;
            if at <= now {
                self.buckets[b].poll_at = i64::MAX;
                self.touch(b);
            } else {
                next = next.min(at);
            }
        }
        self.next_timer = next;
    }

    /// Application callbacks, egress, and reaping for one touched bucket.
    fn service(&mut self, b: usize, now: Instant, handler: &mut impl Handler) {
        self.buckets[b].touched = false;
        let mut i = 0;
        while i < self.buckets[b].conns.len() {
            let index = self.buckets[b].conns[i];
            i += 1;
            let slot = &mut self.slots[index as usize];
            let id = ConnId { index, gen: slot.gen };
            let st = slot.conn.as_mut().expect("bucket lists live slots");
            let bucket = &mut self.buckets[b];
            let socket = bucket.sockets.get_mut::<tcp::Socket>(st.handle);
            let state = socket.state();
            match state {
                tcp::State::Closed | tcp::State::TimeWait => {
                    bucket.reap = true;
                    continue;
                }
                tcp::State::Listen | tcp::State::SynReceived | tcp::State::SynSent => {
                    st.last_state = state;
                    continue;
                }
                _ => {}
            }
            let mut conn = Conn { id, socket };
            if st.phase != Phase::Open {
                match st.phase {
                    Phase::Pending => self.stats.pending -= 1,
                    _ => self.stats.connecting -= 1,
                }
                st.phase = Phase::Open;
                self.stats.open += 1;
                self.stats.accepted += 1;
                st.last_send_queue = conn.send_queue();
                handler.on_open(&mut conn);
            }
            let eof = !conn.socket.may_recv();
            let send_queue = conn.send_queue();
            if conn.recv_queue() > 0 || (eof && !st.eof_reported) || send_queue < st.last_send_queue {
                st.eof_reported |= eof;
                handler.on_ready(&mut conn);
            }
            st.last_send_queue = conn.send_queue();
            st.last_state = conn.socket.state();
            if matches!(st.last_state, tcp::State::Closed | tcp::State::TimeWait) {
                self.buckets[b].reap = true;
            }
        }

        let bucket = &mut self.buckets[b];
        self.iface.poll_egress(now, &mut self.io.view(None), &mut bucket.sockets);
        if bucket.reap {
            bucket.reap = false;
            self.reap(b, handler);
        }
        let bucket = &mut self.buckets[b];
        let at = self.iface.poll_at(now, &bucket.sockets).map_or(i64::MAX, |t| t.total_micros());
        bucket.poll_at = at;
        self.next_timer = self.next_timer.min(at);
    }

    /// Remove the bucket's connections that are over, once they owe the peer nothing.
    fn reap(&mut self, b: usize, handler: &mut impl Handler) {
        let mut i = 0;
        while i < self.buckets[b].conns.len() {
            let index = self.buckets[b].conns[i];
            let st = self.slots[index as usize].conn.as_ref().unwrap();
            let socket = self.buckets[b].sockets.get::<tcp::Socket>(st.handle);
            let state = socket.state();
            // A CLOSED socket that still knows its peer has an RST to send.
            let done = match state {
                tcp::State::TimeWait => true,
                tcp::State::Closed => socket.remote_endpoint().is_none(),
                _ => false,
            };
            if !done {
                if state == tcp::State::Closed {
                    self.buckets[b].reap = true; // try again after the next egress
                }
                i += 1;
                continue;
            }
            let graceful = state == tcp::State::TimeWait
                || matches!(st.last_state, tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait);
            let (phase, gen) = (st.phase, self.slots[index as usize].gen);
            self.release(b, index); // swap_remove: position i now holds the next one
            self.stats.closed += 1;
            match phase {
                Phase::Pending => self.stats.pending -= 1,
                Phase::Connecting => self.stats.connecting -= 1,
                Phase::Open => self.stats.open -= 1,
            }
            if phase != Phase::Pending {
                let reason = if graceful { CloseReason::Graceful } else { CloseReason::Reset };
                handler.on_close(ConnId { index, gen }, reason);
            }
        }
    }
}
