//! Which connection a frame belongs to, without smoltcp: the TCP 4-tuple and its hash.
//!
//! The stack gives every connection its own one-socket smoltcp `SocketSet` and finds it by the
//! frame's 4-tuple, so the cost of a packet does not grow with the number of connections. The
//! key is the remote address, remote port and local port (the local address is the same for
//! every connection of a stack instance); its hash also picks the lcore under software steering.

use std::net::{Ipv4Addr, SocketAddrV4};

/// TCP flags of interest.
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_ACK: u8 = 0x10;

/// The parts of an IPv4/TCP frame the dispatcher needs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TcpFlow {
    /// The peer's address and port (the frame's source).
    pub remote: SocketAddrV4,
    /// Our address (the frame's destination).
    pub local_ip: Ipv4Addr,
    /// Our port.
    pub local_port: u16,
    /// TCP flag bits (FIN=1, SYN=2, RST=4, PSH=8, ACK=16).
    pub flags: u8,
}

impl TcpFlow {
    /// Parse an Ethernet frame carrying an unfragmented IPv4/TCP segment; `None` otherwise.
    pub fn parse(frame: &[u8]) -> Option<TcpFlow> {
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            return None;
        }
        let ip = &frame[14..];
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let more_fragments_or_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
        if ip[0] >> 4 != 4
            || ihl < 20
            || ip[9] != 6
            || more_fragments_or_offset != 0
            || ip.len() < ihl + 20
        {
            return None;
        }
        let tcp = &ip[ihl..];
        let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Some(TcpFlow {
            remote: SocketAddrV4::new(addr(&ip[12..16]), u16::from_be_bytes([tcp[0], tcp[1]])),
            local_ip: addr(&ip[16..20]),
            local_port: u16::from_be_bytes([tcp[2], tcp[3]]),
            flags: tcp[13],
        })
    }

    /// A connection request: SYN without ACK.
    pub fn is_syn(&self) -> bool {
        self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// The flow's hash (see [`flow_hash`]).
    pub fn hash(&self) -> u32 {
        flow_hash(self.remote, self.local_port)
    }

    pub(crate) fn key(&self) -> u64 {
        flow_key(self.remote, self.local_port)
    }
}

/// The flow as one integer: remote address, remote port, local port (the local address is
/// the stack's own).
#[inline]
pub(crate) fn flow_key(remote: SocketAddrV4, local_port: u16) -> u64 {
    (u32::from(*remote.ip()) as u64) << 32 | (remote.port() as u64) << 16 | local_port as u64
}

/// splitmix64's finaliser: every input bit reaches every output bit.
#[inline]
pub(crate) fn mix(key: u64) -> u64 {
    let mut x = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A well-mixed 32-bit hash of (remote address, remote port, local port): the same on every
/// lcore, so software steering and the flow table agree on a flow.
#[inline]
pub fn flow_hash(remote: SocketAddrV4, local_port: u16) -> u32 {
    mix(flow_key(remote, local_port)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn_frame() -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 12..14 + 16].copy_from_slice(&[198, 18, 0, 1]);
        f[14 + 16..14 + 20].copy_from_slice(&[198, 18, 0, 2]);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&7u16.to_be_bytes());
        f[34 + 13] = TCP_SYN;
        f
    }

    #[test]
    fn parses_a_syn() {
        let flow = TcpFlow::parse(&syn_frame()).unwrap();
        assert_eq!(flow.remote, "198.18.0.1:40000".parse().unwrap());
        assert_eq!(flow.local_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(flow.local_port, 7);
        assert!(flow.is_syn());
    }

    #[test]
    fn rejects_fragments_arp_and_udp() {
        let mut f = syn_frame();
        f[14 + 6] = 0x20; // more fragments
        assert!(TcpFlow::parse(&f).is_none());
        let mut f = syn_frame();
        f[14 + 9] = 17;
        assert!(TcpFlow::parse(&f).is_none());
        let mut f = syn_frame();
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(TcpFlow::parse(&f).is_none());
        assert!(TcpFlow::parse(&f[..30]).is_none());
    }

    #[test]
    fn hash_spreads_consecutive_ports() {
        let mut buckets = [0u32; 64];
        for port in 10_000..20_000u16 {
            let h = flow_hash(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), port), 80);
            buckets[(h % 64) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*min > 100 && *max < 220, "uneven spread {min}..{max}");
    }
}
