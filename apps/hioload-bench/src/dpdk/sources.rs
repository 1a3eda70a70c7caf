//! Several source addresses on one queue pair: one stack per address, and a demultiplexer.
//!
//! A server port admits one flow per (client address, client port): our stack picks its local
//! ports in 10000..=65535, so one client address carries at most ~55,000 connections to one
//! server address and port. Beyond that the load generator uses more addresses. Our stack has one
//! address per instance, so there is one [`Stack`](hioload_stack::Stack) per source address, all
//! polled by the same lcore over the same queue pair: each sees a [`SourceQueue`], which takes
//! the frames addressed to it (IPv4 by destination, ARP by target address) from the hardware
//! queue and leaves the others in their stack's backlog for its next poll. All of them transmit
//! straight into the queue. With one source address nothing is parsed: frames go straight
//! through.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::rc::Rc;

use hioload_dpdk::{Burst, Mbuf, Queue};
use hioload_stack::PacketQueue;

/// Frames taken from the hardware per rx burst.
const HW_BURST: usize = 32;
/// Frames a stack's backlog holds before more are dropped (as a full rx ring would).
const BACKLOG: usize = 4096;

/// The queue pair and the frames waiting for each stack.
pub struct Sources<'p> {
    queue: Queue<'p>,
    ips: Vec<Ipv4Addr>,
    backlog: Vec<VecDeque<Mbuf>>,
    /// Frames for none of our addresses, or over a full backlog.
    pub dropped: u64,
}

impl<'p> Sources<'p> {
    /// One [`SourceQueue`] per address of `ips`, in that order, over `queue`.
    pub fn split(queue: Queue<'p>, ips: &[Ipv4Addr]) -> Vec<SourceQueue<'p>> {
        assert!(!ips.is_empty(), "at least one source address");
        let shared = Rc::new(RefCell::new(Sources {
            queue,
            ips: ips.to_vec(),
            backlog: ips.iter().map(|_| VecDeque::new()).collect(),
            dropped: 0,
        }));
        (0..ips.len())
            .map(|index| SourceQueue {
                shared: shared.clone(),
                index,
            })
            .collect()
    }

    /// The stack a frame is for: by IPv4 destination, or ARP target address.
    fn owner(&self, frame: &[u8]) -> Option<usize> {
        if self.ips.len() == 1 {
            return Some(0);
        }
        let at = match frame.get(12..14)? {
            [0x08, 0x00] => 30, // IPv4 destination
            [0x08, 0x06] => 38, // ARP target protocol address
            _ => return None,
        };
        let ip = Ipv4Addr::from(<[u8; 4]>::try_from(frame.get(at..at + 4)?).ok()?);
        self.ips.iter().position(|&a| a == ip)
    }
}

/// One stack's view of the shared queue pair.
pub struct SourceQueue<'p> {
    shared: Rc<RefCell<Sources<'p>>>,
    index: usize,
}

impl SourceQueue<'_> {
    /// Frames dropped by the demultiplexer so far (all stacks).
    pub fn dropped(&self) -> u64 {
        self.shared.borrow().dropped
    }
}

impl PacketQueue for SourceQueue<'_> {
    fn rx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        let mut s = self.shared.borrow_mut();
        let start = burst.len();
        // What an earlier poll of another stack left for this one arrived first.
        while burst.spare() > 0 {
            match s.backlog[self.index].pop_front() {
                Some(m) => {
                    let _ = burst.push(m);
                }
                None => break,
            }
        }
        if burst.spare() == 0 {
            return burst.len() - start;
        }
        let mut hw = Burst::<HW_BURST>::new();
        s.queue.rx_burst(&mut hw);
        for m in hw.drain() {
            let owner = s.owner(m.data());
            let m = match owner {
                Some(o) if o == self.index => match burst.push(m) {
                    Ok(()) => continue,
                    Err(m) => m,
                },
                _ => m,
            };
            match owner {
                Some(o) if s.backlog[o].len() < BACKLOG => s.backlog[o].push_back(m),
                _ => {
                    s.dropped += 1;
                    drop(m);
                }
            }
        }
        burst.len() - start
    }

    #[inline]
    fn tx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        self.shared.borrow_mut().queue.tx_burst(burst)
    }
}
