//! Watching the port's link from the first lcore's loop: a link that comes up after the start,
//! goes down or never comes up (a memif peer that is not there, a cable) is logged, instead of
//! leaving only the "link down" of the start line.

use std::time::{Duration, Instant};

use hioload_dpdk::PortId;
use tracing::{info, warn};

/// How often the link is read (one `rte_eth_link_get_nowait`).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A link still down this long after the start gets a warning (once).
const DOWN_WARNING: Duration = Duration::from_secs(10);

/// The link state last seen, and when to look again.
pub(super) struct LinkWatch {
    port: PortId,
    name: String,
    up: Option<bool>,
    started: Instant,
    next: Instant,
    warned: bool,
}

impl LinkWatch {
    /// Watches `port`, whose state at the start was `up` (already logged).
    pub fn new(port: PortId, name: String, up: Option<bool>, now: Instant) -> Self {
        LinkWatch {
            port,
            name,
            up,
            started: now,
            next: now + CHECK_EVERY,
            warned: false,
        }
    }

    /// Reads the link if it is time, and logs what changed.
    pub fn check(&mut self, now: Instant) {
        if now < self.next {
            return;
        }
        self.next = now + CHECK_EVERY;
        let Ok(link) = self.port.link() else {
            return;
        };
        let before = self.up.replace(link.up);
        match (before, link.up) {
            (Some(false) | None, true) => info!(
                "DPDK port {}: link up, {} Mbit/s{}",
                self.name,
                link.speed_mbps,
                if link.full_duplex { " full duplex" } else { "" }
            ),
            (Some(true), false) => warn!("DPDK port {}: link down", self.name),
            _ => {}
        }
        if !link.up && !self.warned && now.duration_since(self.started) >= DOWN_WARNING {
            self.warned = true;
            warn!(
                "DPDK port {}: link still down {} s after the start; nothing can be received: \
                 check the cable or switch port, or, for net_memif / net_tap, that the peer \
                 (the other memif process, the tap's network namespace) is up",
                self.name,
                DOWN_WARNING.as_secs()
            );
        }
    }
}
