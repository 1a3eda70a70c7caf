//! Several lcores on one port: each owns a queue pair, and each flow lives on exactly one lcore.
//!
//! With RSS on the TCP 4-tuple the port already delivers a flow to one rx queue, always the
//! same. Without it (net_tap, net_af_packet, or RSS off) a queue may receive any flow, so every
//! lcore sorts what its queue received: a TCP segment whose flow hash ([`flow_hash`]) picks
//! another lcore goes into that lcore's inbox, a bounded lock-free queue it drains at the start
//! of its next rx burst. Inboxes that are full drop the packet, as a full rx ring would.
//!
//! ARP and ICMP are handled once, by lcore 0. But every lcore transmits, so every lcore needs
//! the neighbour table, while ARP replies (and requests) arrive on one queue only. So lcore 0
//! gets the original ARP frame (and answers requests), and every other lcore gets a copy turned
//! into a reply: smoltcp learns the sender's address from it and answers nothing.

use std::net::SocketAddrV4;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use hioload_dpdk::{Burst, Mbuf, Mempool, Queue};

use crate::device::PacketQueue;
use crate::flow::{flow_hash, TcpFlow};

/// Per-lcore inboxes shared by the lcores of one port.
pub struct Steering {
    inboxes: Vec<ArrayQueue<Mbuf>>,
    rss: bool,
}

/// Counters of one steered queue.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SteerStats {
    /// Packets this lcore handed to another lcore.
    pub handed_over: u64,
    /// Packets it took from its inbox.
    pub taken_over: u64,
    /// Packets dropped because the owner's inbox was full.
    pub inbox_full: u64,
    /// ARP copies sent to the other lcores.
    pub arp_copies: u64,
}

impl Steering {
    /// Inboxes of `capacity` packets for `lcores` lcores. `rss`: the port spreads TCP flows by
    /// their 4-tuple itself (`Configured::rss_hash != 0`), so only ARP/ICMP are moved.
    pub fn new(lcores: usize, capacity: usize, rss: bool) -> Arc<Steering> {
        assert!(lcores > 0, "at least one lcore");
        Arc::new(Steering {
            inboxes: (0..lcores).map(|_| ArrayQueue::new(capacity)).collect(),
            rss,
        })
    }

    /// The lcore (index) that owns the flow of `remote` → our `local_port` under software steering.
    pub fn owner(&self, remote: SocketAddrV4, local_port: u16) -> usize {
        flow_hash(remote, local_port) as usize % self.inboxes.len()
    }

    /// Packets waiting in every inbox (0 when all lcores have drained theirs).
    pub fn queued(&self) -> usize {
        self.inboxes.iter().map(ArrayQueue::len).sum()
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        for inbox in &self.inboxes {
            while inbox.pop().is_some() {}
        }
    }
}

/// Lcore `index`'s queue pair on a port shared with other lcores.
pub struct SteeredQueue<'p> {
    queue: Queue<'p>,
    index: usize,
    steering: Arc<Steering>,
    /// Where ARP copies are allocated from.
    pool: Mempool,
    stats: SteerStats,
}

impl<'p> SteeredQueue<'p> {
    /// Lcore number `index` (0 handles ARP and ICMP) polling `queue`.
    pub fn new(
        queue: Queue<'p>,
        index: usize,
        steering: Arc<Steering>,
        pool: Mempool,
    ) -> SteeredQueue<'p> {
        assert!(index < steering.inboxes.len(), "lcore index out of range");
        SteeredQueue {
            queue,
            index,
            steering,
            pool,
            stats: SteerStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> SteerStats {
        self.stats
    }

    fn hand_to(&mut self, owner: usize, m: Mbuf) {
        match self.steering.inboxes[owner].push(m) {
            Ok(()) => self.stats.handed_over += 1,
            Err(m) => {
                drop(m);
                self.stats.inbox_full += 1;
            }
        }
    }

    /// Copies of an ARP frame, as replies, to every lcore but 0; `keep` collects our own copy.
    fn spread_arp<const N: usize>(&mut self, frame: &[u8], keep: &mut Burst<N>) {
        for lcore in 1..self.steering.inboxes.len() {
            let Some(mut copy) = self.pool.alloc() else {
                return;
            };
            if !copy.extend_from_slice(frame) {
                return;
            }
            copy.data_mut()[20..22].copy_from_slice(&[0, 2]); // opcode: reply
            self.stats.arp_copies += 1;
            if lcore == self.index {
                let _ = keep.push(copy);
            } else {
                self.hand_to(lcore, copy);
            }
        }
    }
}

fn is_arp(frame: &[u8]) -> bool {
    frame.len() >= 42 && frame[12..14] == [0x08, 0x06]
}

impl PacketQueue for SteeredQueue<'_> {
    fn rx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        const HW: usize = 16;
        assert!(
            N > HW + 1,
            "steered bursts hold more than {} packets",
            HW + 1
        );
        let start = burst.len();
        // What other lcores received for us first (it arrived earlier), leaving room for a
        // hardware burst and one ARP copy.
        while burst.spare() > HW + 1 {
            match self.steering.inboxes[self.index].pop() {
                Some(m) => {
                    self.stats.taken_over += 1;
                    let _ = burst.push(m);
                }
                None => break,
            }
        }
        // Then our own queue, at most HW packets (an ARP frame may add one copy for us).
        let mut hw = Burst::<HW>::new();
        if burst.spare() > HW {
            self.queue.rx_burst(&mut hw);
        }
        for m in hw.drain() {
            let owner = match TcpFlow::parse(m.data()) {
                Some(_) if self.steering.rss => self.index,
                Some(flow) => self.steering.owner(flow.remote, flow.local_port),
                None => {
                    if is_arp(m.data()) {
                        self.spread_arp(m.data(), burst);
                    }
                    0
                }
            };
            if owner == self.index {
                if let Err(m) = burst.push(m) {
                    drop(m); // only when an ARP copy took the last slot
                }
            } else {
                self.hand_to(owner, m);
            }
        }
        burst.len() - start
    }

    #[inline]
    fn tx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        self.queue.tx_burst(burst)
    }

    /// Under software steering, exactly the flows whose hash picks this lcore. Under RSS the
    /// device's (Toeplitz) hash decides and is not predicted here: outgoing connections on a
    /// multi-queue RSS port may see their replies arrive on another lcore's queue, where they
    /// are not handed over. Servers (passive connections) are unaffected.
    fn owns(&self, remote: SocketAddrV4, local_port: u16) -> bool {
        self.steering.rss || self.steering.owner(remote, local_port) == self.index
    }
}
