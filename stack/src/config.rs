//! What one stack instance needs to know: its address, its limits and its ring sizes.

use std::net::Ipv4Addr;

/// Configuration of a per-lcore [`Stack`](crate::Stack). `StackConfig::new(ip, prefix_len)`
/// gives the defaults listed on each field.
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// Our IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length of our subnet (24 for a /24).
    pub prefix_len: u8,
    /// Default gateway, if peers outside the subnet are to be reached. Default: none.
    pub gateway: Option<Ipv4Addr>,
    /// Most passive connections between SYN and their hand-over to the application (SYN
    /// received but not yet established, or established but not yet reported). A SYN that
    /// finds it full evicts the oldest half-open connection instead of being refused, so a SYN
    /// flood shortens half-open lifetimes but never locks clients out (see the `stack` module).
    /// Default 1024.
    pub backlog: usize,
    /// Most connections (passive and active) at once; sizes the ring slab, the connection
    /// slots and the flow table, all allocated at start. Default 8192.
    pub max_connections: usize,
    /// Receive ring bytes per connection. Default 16 KiB.
    pub rx_ring: usize,
    /// Send ring bytes per connection. Default 16 KiB.
    pub tx_ring: usize,
    /// Nagle's algorithm on new connections. Default off (request/response traffic).
    pub nagle: bool,
    /// Delay ACKs of received data by this long (`None`: ACK at once). Default `None`: the
    /// application answers in the same loop turn, so the ACK rides on the answer anyway.
    pub ack_delay_ms: Option<u64>,
    /// First and last local port for outgoing connections. Default 10000..=65535.
    pub ephemeral_ports: (u16, u16),
    /// A handshake that hears nothing from the peer for this long is dropped, so unanswered
    /// SYN-ACKs (a SYN flood, a vanished client) cannot hold the backlog. Default 20 s.
    pub handshake_timeout_ms: u64,
    /// The handshake timeout of passive connections while more than half the backlog is
    /// half-open (under a SYN flood): the oldest half-open connections older than this are
    /// dropped first. At most `handshake_timeout_ms`. Default 1 s.
    pub handshake_timeout_under_pressure_ms: u64,
}

impl StackConfig {
    /// Defaults for the stack at `ip`/`prefix_len`.
    pub fn new(ip: Ipv4Addr, prefix_len: u8) -> StackConfig {
        StackConfig {
            ip,
            prefix_len,
            gateway: None,
            backlog: 1024,
            max_connections: 8192,
            rx_ring: 16 * 1024,
            tx_ring: 16 * 1024,
            nagle: false,
            ack_delay_ms: None,
            ephemeral_ports: (10_000, 65_535),
            handshake_timeout_ms: 20_000,
            handshake_timeout_under_pressure_ms: 1_000,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(1..=32).contains(&self.prefix_len) {
            return Err(format!(
                "prefix length {} is not in 1..=32",
                self.prefix_len
            ));
        }
        if self.max_connections == 0 || self.max_connections > u32::MAX as usize / 2 {
            return Err(format!(
                "max_connections ({}) out of range",
                self.max_connections
            ));
        }
        if self.rx_ring < 64 || self.tx_ring < 64 {
            return Err("rings must hold at least 64 bytes".into());
        }
        if self.handshake_timeout_ms == 0 || self.handshake_timeout_under_pressure_ms == 0 {
            return Err("handshake timeouts must be positive".into());
        }
        if self.ephemeral_ports.0 == 0 || self.ephemeral_ports.0 > self.ephemeral_ports.1 {
            return Err(format!(
                "bad ephemeral port range {:?}",
                self.ephemeral_ports
            ));
        }
        Ok(())
    }
}
