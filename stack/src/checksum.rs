//! Internet checksums for the offload path.
//!
//! When the port computes checksums on transmit, DPDK's contract is that the TCP/UDP checksum
//! field holds the pseudo-header sum (`rte_ipv4_phdr_cksum`) and the mbuf carries the header
//! lengths. When the port verifies on receive, it reports GOOD/BAD per packet, or UNKNOWN, in
//! which case we verify here in software: smoltcp was told not to.

/// One's-complement sum of `data` (big-endian 16-bit words), not folded.
fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 pseudo-header sum for `ip_header` (folded, not inverted), as DPDK's tx offload
/// expects in the L4 checksum field.
pub(crate) fn ipv4_pseudo_header(ip_header: &[u8], l4_len: usize) -> u16 {
    let mut acc = sum(&ip_header[12..20], 0);
    acc += ip_header[9] as u32;
    acc += l4_len as u32;
    fold(acc)
}

/// True if the IPv4 header's checksum is right.
pub(crate) fn ipv4_header_valid(ip_header: &[u8]) -> bool {
    fold(sum(ip_header, 0)) == 0xffff
}

/// True if the TCP/UDP segment `l4` (checksum field included) sums right under its pseudo-header.
pub(crate) fn l4_valid(ip_header: &[u8], l4: &[u8]) -> bool {
    let acc = sum(l4, ipv4_pseudo_header(ip_header, l4.len()) as u32);
    fold(acc) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real IPv4 header (from RFC 1071 style examples) with a correct checksum.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn header_checksum_verifies_and_detects_a_flip() {
        assert!(ipv4_header_valid(&HEADER));
        let mut bad = HEADER;
        bad[15] ^= 1;
        assert!(!ipv4_header_valid(&bad));
    }

    #[test]
    fn l4_checksum_round_trip() {
        let mut ip = HEADER;
        ip[9] = 6;
        let mut seg = vec![0u8; 33];
        for (i, b) in seg.iter_mut().enumerate() {
            *b = (i * 37) as u8;
        }
        seg[16] = 0;
        seg[17] = 0;
        let c = !fold(sum(&seg, ipv4_pseudo_header(&ip, seg.len()) as u32));
        seg[16..18].copy_from_slice(&c.to_be_bytes());
        assert!(l4_valid(&ip, &seg));
        seg[20] ^= 0x80;
        assert!(!l4_valid(&ip, &seg));
    }
}
