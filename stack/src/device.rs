//! smoltcp's `phy::Device` over one DPDK queue pair, one packet at a time.
//!
//! smoltcp pulls packets from a device until it says "no more"; on a busy port that never
//! happens. So the lcore loop does the rx burst itself ([`PacketIo::rx_burst`], at most one per
//! turn) and hands smoltcp a [`PacketView`] that yields exactly the one packet the dispatcher
//! chose for a bucket, or none at all (egress only). Received frames are read in place from the
//! mbuf, which is freed when smoltcp is done with it. Transmit tokens carry a fresh mbuf that
//! smoltcp writes the frame into; the mbufs of a loop turn collect in one tx [`Burst`] that
//! leaves in a single `tx_burst` at the end of the turn (or earlier, when it is full).
//!
//! Checksums follow the port: what the port verifies on receive smoltcp does not (bad frames
//! are dropped here first), and what the port computes on transmit smoltcp leaves to it.

use hioload_dpdk::sys;
use hioload_dpdk::{Burst, Checksums, Mbuf, Mempool, Queue};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::checksum;

/// Frames smoltcp may queue for transmit in one loop turn before an early `tx_burst`.
pub const TX_BURST: usize = 64;

/// A source and sink of packet bursts: a DPDK queue pair, or a software-steered queue.
pub trait PacketQueue {
    /// Receive up to `burst.spare()` packets into `burst`; returns how many.
    fn rx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize;
    /// Send from the front of `burst`; what was not taken stays in it.
    fn tx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize;
    /// Whether replies for a connection from `local_port` to `remote` come back to this queue
    /// (outgoing connections pick their local port with it). Default: yes.
    fn owns(&self, remote: std::net::SocketAddrV4, local_port: u16) -> bool {
        let _ = (remote, local_port);
        true
    }
}

impl PacketQueue for Queue<'_> {
    #[inline]
    fn rx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        Queue::rx_burst(self, burst)
    }
    #[inline]
    fn tx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        Queue::tx_burst(self, burst)
    }
}

/// Counters of the device layer.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Frames received from the queue.
    pub rx_packets: u64,
    /// Frames handed to the queue.
    pub tx_packets: u64,
    /// Received frames dropped because the port flagged (or we found) a bad checksum.
    pub rx_bad_checksum: u64,
    /// Frames smoltcp produced that were dropped: no mbuf free, or the tx queue stayed full.
    pub tx_dropped: u64,
}

/// The queue pair, the pool tx frames come from, and the pending tx burst.
pub struct PacketIo<Q> {
    pub(crate) queue: Q,
    pool: Mempool,
    tx: Burst<TX_BURST>,
    rx_offload: Checksums,
    tx_offload: Checksums,
    caps: DeviceCapabilities,
    /// Where a reply goes when no mbuf is free: smoltcp must write somewhere; the frame is lost.
    scratch: Box<[u8]>,
    pub(crate) stats: IoStats,
}

impl<Q: PacketQueue> PacketIo<Q> {
    /// `mtu` is the IP MTU of the port (1500 → 1514-byte frames). The offloads are those the
    /// port was configured with (`Configured::rx_checksums` / `tx_checksums`).
    pub(crate) fn new(
        queue: Q,
        pool: Mempool,
        mtu: usize,
        rx_offload: Checksums,
        tx_offload: Checksums,
    ) -> Self {
        let frame = mtu + 14;
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = frame;
        caps.max_burst_size = Some(TX_BURST);
        caps.checksum = checksum_caps(rx_offload, tx_offload);
        PacketIo {
            queue,
            pool,
            tx: Burst::new(),
            rx_offload,
            tx_offload,
            caps,
            scratch: vec![0; frame].into_boxed_slice(),
            stats: IoStats::default(),
        }
    }

    /// One rx burst from the queue into `burst`.
    pub(crate) fn rx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        let n = self.queue.rx_burst(burst);
        self.stats.rx_packets += n as u64;
        n
    }

    /// False if the frame must be dropped because an offloaded checksum is wrong.
    pub(crate) fn rx_checksum_ok(&mut self, m: &Mbuf) -> bool {
        if !(self.rx_offload.ipv4 || self.rx_offload.tcp) {
            return true;
        }
        let ok = rx_checksum_ok(m.data(), m.ol_flags(), self.rx_offload);
        if !ok {
            self.stats.rx_bad_checksum += 1;
        }
        ok
    }

    /// Send what is pending (the end of a loop turn); unsent frames stay for the next turn.
    pub(crate) fn flush(&mut self) {
        if !self.tx.is_empty() {
            let n = self.queue.tx_burst(&mut self.tx);
            self.stats.tx_packets += n as u64;
        }
    }

    /// Queue a finished frame for the next burst.
    fn push(&mut self, m: Mbuf) {
        if self.tx.is_full() {
            self.flush();
        }
        if self.tx.push(m).is_err() {
            self.stats.tx_dropped += 1; // the queue is backed up; TCP will retransmit
        }
    }

    /// Mbufs waiting in the tx burst.
    pub(crate) fn tx_pending(&self) -> usize {
        self.tx.len()
    }

    /// The mempool frames are allocated from.
    pub(crate) fn pool(&self) -> &Mempool {
        &self.pool
    }

    /// A device view that yields `rx` (if any) once.
    pub(crate) fn view(&mut self, rx: Option<Mbuf>) -> PacketView<'_, Q> {
        PacketView { io: self, rx }
    }

    /// Set the tx checksum offload flags on a finished frame and seed the pseudo-header sum.
    fn prepare_offload(&self, m: &mut Mbuf) {
        if !(self.tx_offload.ipv4 || self.tx_offload.tcp) {
            return;
        }
        let frame = m.data_mut();
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            return;
        }
        let ihl = (frame[14] & 0x0f) as usize * 4;
        let total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
        let (mut flags, mut l4_len) = (sys::RTE_MBUF_F_TX_IPV4, 0u8);
        if self.tx_offload.ipv4 {
            flags |= sys::RTE_MBUF_F_TX_IP_CKSUM;
        }
        if self.tx_offload.tcp && frame[23] == 6 && frame.len() >= 14 + ihl + 20 && total >= ihl {
            let l4 = 14 + ihl;
            l4_len = (frame[l4 + 12] >> 4) * 4;
            let phdr = checksum::ipv4_pseudo_header(&frame[14..14 + ihl], total - ihl);
            frame[l4 + 16..l4 + 18].copy_from_slice(&phdr.to_be_bytes());
            flags |= sys::RTE_MBUF_F_TX_TCP_CKSUM;
        }
        m.set_tx_offload(flags, 14, ihl as u16, l4_len);
    }
}

/// What smoltcp must still check and compute itself, given the port's offloads.
fn checksum_caps(rx: Checksums, tx: Checksums) -> ChecksumCapabilities {
    let pick = |rx_done: bool, tx_done: bool| match (rx_done, tx_done) {
        (false, false) => Checksum::Both,
        (true, false) => Checksum::Tx,
        (false, true) => Checksum::Rx,
        (true, true) => Checksum::None,
    };
    let mut caps = ChecksumCapabilities::default();
    caps.ipv4 = pick(rx.ipv4, tx.ipv4);
    caps.tcp = pick(rx.tcp, tx.tcp);
    caps.udp = Checksum::Both;
    caps.icmpv4 = Checksum::Both;
    caps
}

/// Per-packet rx verdict under offload: GOOD/NONE pass, BAD drops, UNKNOWN is checked here.
fn rx_checksum_ok(frame: &[u8], ol_flags: u64, offload: Checksums) -> bool {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return true; // not IPv4: nothing was offloaded
    }
    let ihl = (frame[14] & 0x0f) as usize * 4;
    if ihl < 20 || frame.len() < 14 + ihl {
        return false;
    }
    let ip = &frame[14..14 + ihl];
    if offload.ipv4 {
        match ol_flags as u32 & sys::RTE_MBUF_F_RX_IP_CKSUM_MASK {
            sys::RTE_MBUF_F_RX_IP_CKSUM_BAD => return false,
            sys::RTE_MBUF_F_RX_IP_CKSUM_UNKNOWN if !checksum::ipv4_header_valid(ip) => {
                return false
            }
            _ => {}
        }
    }
    if offload.tcp && ip[9] == 6 {
        match ol_flags as u32 & sys::RTE_MBUF_F_RX_L4_CKSUM_MASK {
            sys::RTE_MBUF_F_RX_L4_CKSUM_BAD => return false,
            sys::RTE_MBUF_F_RX_L4_CKSUM_UNKNOWN => {
                let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
                if total < ihl || frame.len() < 14 + total {
                    return false;
                }
                return checksum::l4_valid(ip, &frame[14 + ihl..14 + total]);
            }
            _ => {}
        }
    }
    true
}

/// The device smoltcp sees for one ingress packet or one egress pass.
pub(crate) struct PacketView<'a, Q> {
    io: &'a mut PacketIo<Q>,
    rx: Option<Mbuf>,
}

impl<Q: PacketQueue> phy::Device for PacketView<'_, Q> {
    type RxToken<'b>
        = MbufRx
    where
        Self: 'b;
    type TxToken<'b>
        = MbufTx<'b, Q>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(MbufRx, MbufTx<'_, Q>)> {
        let m = self.rx.take()?;
        // The reply token allocates lazily: most received segments produce no immediate reply.
        Some((
            MbufRx(m),
            MbufTx {
                io: self.io,
                mbuf: None,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<MbufTx<'_, Q>> {
        let m = self.io.pool.alloc()?; // no mbuf, no token: smoltcp retries on a later poll
        Some(MbufTx {
            io: self.io,
            mbuf: Some(m),
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.io.caps.clone()
    }
}

/// A received frame; the mbuf returns to its pool when the token is consumed or dropped.
pub(crate) struct MbufRx(Mbuf);

impl phy::RxToken for MbufRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0.data())
    }
}

/// Room for one outgoing frame.
pub(crate) struct MbufTx<'a, Q> {
    io: &'a mut PacketIo<Q>,
    mbuf: Option<Mbuf>,
}

impl<Q: PacketQueue> phy::TxToken for MbufTx<'_, Q> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, len: usize, f: F) -> R {
        let Some(mut m) = self.mbuf.take().or_else(|| self.io.pool.alloc()) else {
            self.io.stats.tx_dropped += 1;
            let len = len.min(self.io.scratch.len());
            return f(&mut self.io.scratch[..len]);
        };
        let Some(buf) = m.append(len) else {
            self.io.stats.tx_dropped += 1;
            let len = len.min(self.io.scratch.len());
            return f(&mut self.io.scratch[..len]);
        };
        let r = f(buf);
        self.io.prepare_offload(&mut m);
        self.io.push(m);
        r
    }
}
