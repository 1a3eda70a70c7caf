//! Bad input never crashes the stack: 300,000 random and half-valid frames
//! (valid checksums, random TCP fields, broken headers, stray ARP) go through the real dispatch,
//! smoltcp and the real mbuf pool; nothing panics, nothing leaks, half-open state expires.
//!
//! The frames come from a `PacketQueue` that generates them into mbufs (no device needed); what
//! the stack transmits is counted and freed.

#[path = "../../dpdk/tests/support/mod.rs"]
mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hioload_dpdk::{Burst, Checksums, Mempool, MempoolConfig};
use hioload_stack::{
    CloseReason, Conn, ConnEvents, ConnId, PacketQueue, PortProfile, Stack, StackConfig,
};
use support::{init_eal, isolated};

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const OUR_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const LISTEN: u16 = 7;

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

fn checksum(data: &[u8], mut acc: u32) -> u16 {
    for w in data.chunks(2) {
        acc += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// One frame: mostly IPv4/TCP towards us with valid checksums and random everything else.
fn garbage_frame(rng: &mut Rng, out: &mut Vec<u8>) {
    out.clear();
    let kind = rng.below(100);
    if kind < 5 {
        // Pure noise of any length.
        out.resize(rng.below(1600) as usize, 0);
        rng.fill(out);
        return;
    }
    let dst = if rng.chance(90) { OUR_MAC } else { [0xff; 6] };
    out.extend_from_slice(&dst);
    let mut src = [0u8; 6];
    rng.fill(&mut src);
    src[0] &= 0xfe; // unicast
    out.extend_from_slice(&src);
    if kind < 12 {
        // ARP with random fields, often about us.
        out.extend_from_slice(&[
            0x08,
            0x06,
            0,
            1,
            0x08,
            0x00,
            6,
            4,
            0,
            1 + rng.below(3) as u8,
        ]);
        out.extend_from_slice(&src);
        out.extend_from_slice(&[198, 18, 0, rng.below(256) as u8]);
        let mut tha = [0u8; 6];
        rng.fill(&mut tha);
        out.extend_from_slice(&tha);
        let tpa = if rng.chance(70) {
            OUR_IP.octets()
        } else {
            [198, 18, 0, rng.below(256) as u8]
        };
        out.extend_from_slice(&tpa);
        out.resize(out.len() + rng.below(20) as usize, 0);
        return;
    }
    out.extend_from_slice(&[0x08, 0x00]);
    let options = if rng.chance(10) {
        4 * rng.below(10) as usize
    } else {
        0
    };
    let ihl = 20 + options;
    let proto = match rng.below(10) {
        0 => 1,
        1 => 17,
        2 => rng.below(256) as u8,
        _ => 6,
    };
    let tcp_options = if rng.chance(30) {
        4 * rng.below(11) as usize
    } else {
        0
    };
    let payload = if rng.chance(50) {
        rng.below(1400) as usize
    } else {
        0
    };
    let l4_len = match proto {
        6 => 20 + tcp_options + payload,
        _ => 8 + payload,
    };
    let total = ihl + l4_len;
    let ip_start = out.len();
    out.resize(ip_start + total, 0);
    {
        let ip = &mut out[ip_start..ip_start + ihl];
        ip[0] = if rng.chance(97) {
            0x40 | (ihl / 4) as u8
        } else {
            rng.next() as u8
        };
        let total_field = if rng.chance(95) {
            total as u16
        } else {
            rng.next() as u16
        };
        ip[2..4].copy_from_slice(&total_field.to_be_bytes());
        ip[4..6].copy_from_slice(&(rng.next() as u16).to_be_bytes());
        if rng.chance(5) {
            ip[6..8].copy_from_slice(&(rng.next() as u16).to_be_bytes()); // fragments
        }
        ip[8] = 64;
        ip[9] = proto;
        let src_ip = [198, 18, 0, 1 + rng.below(8) as u8];
        ip[12..16].copy_from_slice(&src_ip);
        let dst_ip = if rng.chance(90) {
            OUR_IP.octets()
        } else {
            [198, 18, 0, rng.below(256) as u8]
        };
        ip[16..20].copy_from_slice(&dst_ip);
        rng.fill(&mut ip[20..]);
        if rng.chance(95) {
            let c = checksum(ip, 0);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
    }
    let (src_ip, dst_ip) = {
        let ip = &out[ip_start..];
        (
            [ip[12], ip[13], ip[14], ip[15]],
            [ip[16], ip[17], ip[18], ip[19]],
        )
    };
    let l4 = &mut out[ip_start + ihl..];
    rng.fill(l4);
    if proto == 6 {
        let dport = if rng.chance(70) {
            LISTEN
        } else {
            rng.next() as u16
        };
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        l4[12] = (((20 + tcp_options) / 4) as u8) << 4;
        l4[13] = match rng.below(4) {
            0 => 0x02,             // SYN
            1 => 0x10,             // ACK
            2 => 0x18,             // PSH|ACK
            _ => rng.next() as u8, // anything
        };
        l4[16..18].fill(0);
        if rng.chance(95) {
            let mut acc = 0u32;
            for w in [&src_ip[..], &dst_ip[..]] {
                acc += u16::from_be_bytes([w[0], w[1]]) as u32
                    + u16::from_be_bytes([w[2], w[3]]) as u32;
            }
            acc += 6 + l4.len() as u32;
            let c = checksum(l4, acc);
            l4[16..18].copy_from_slice(&c.to_be_bytes());
        }
    }
    if rng.chance(3) {
        out.truncate(rng.below(out.len() as u64 + 1) as usize); // cut short
    }
}

/// Frames from the generator in, transmitted frames counted and freed.
struct GarbageQueue {
    pool: Mempool,
    rng: Rng,
    left: u64,
    frame: Vec<u8>,
    transmitted: u64,
}

impl PacketQueue for GarbageQueue {
    fn rx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        let mut n = 0;
        while self.left > 0 && burst.spare() > 0 {
            garbage_frame(&mut self.rng, &mut self.frame);
            let mut m = self.pool.alloc().expect("the pool has room for a burst");
            assert!(m.extend_from_slice(&self.frame));
            burst.push(m).unwrap();
            self.left -= 1;
            n += 1;
        }
        n
    }

    fn tx_burst<const N: usize>(&mut self, burst: &mut Burst<N>) -> usize {
        let n = burst.len();
        self.transmitted += n as u64;
        burst.clear();
        n
    }
}

#[derive(Default)]
struct Recorder {
    open: Vec<ConnId>,
    closes: usize,
}

impl ConnEvents for Recorder {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        self.open.push(conn.id());
    }
    fn on_ready(&mut self, conn: &mut Conn<'_>) {
        let mut buf = [0u8; 2048];
        while conn.recv_slice(&mut buf) > 0 {}
        conn.send_slice(b"x");
    }
    fn on_close(&mut self, id: ConnId, _reason: CloseReason) {
        self.open.retain(|&c| c != id);
        self.closes += 1;
    }
}

#[test]
fn random_frames_neither_crash_nor_leak() {
    isolated("random_frames_neither_crash_nor_leak", || {
        let eal = init_eal(&[]);
        let socket = eal.main_lcore().socket();
        let pool = Mempool::new(
            &eal,
            "garbage",
            &MempoolConfig {
                mbufs: 4095,
                cache_size: 128,
                socket,
                ..MempoolConfig::default()
            },
        )
        .unwrap();
        for (offload, seed) in [
            (false, 0x9e37_79b9_7f4a_7c15u64),
            (true, 0x1234_5678_9abc_def1),
        ] {
            // Once with software checksums (smoltcp verifies), once as if the port verified
            // (our per-packet check, with no flags set: UNKNOWN, so verified in software too).
            let all = Checksums {
                ipv4: offload,
                tcp: offload,
                udp: false,
            };
            let profile = PortProfile {
                mac: OUR_MAC,
                mtu: 1500,
                rx_checksums: all,
                tx_checksums: all,
            };
            let mut config = StackConfig::new(OUR_IP, 24);
            config.max_connections = 512;
            config.backlog = 256;
            config.rx_ring = 4096;
            config.tx_ring = 4096;
            config.handshake_timeout_ms = 50;
            let frames = 150_000;
            let queue = GarbageQueue {
                pool: pool.clone(),
                rng: Rng(seed),
                left: frames,
                frame: Vec::new(),
                transmitted: 0,
            };
            let mut stack = Stack::new(&eal, queue, pool.clone(), profile, socket, config).unwrap();
            stack.listen(LISTEN);
            let mut app = Recorder::default();
            let deadline = Instant::now() + Duration::from_secs(60);
            while stack.poll(&mut app) > 0 {
                assert!(Instant::now() < deadline, "{frames} frames take too long");
            }
            let during = stack.stats();
            // Whatever the garbage opened is closed by us; half-open state expires.
            for id in app.open.clone() {
                if let Some(mut c) = stack.conn(id) {
                    c.abort();
                }
            }
            let settle = Instant::now() + Duration::from_secs(5);
            while stack.stats().sockets > 0 && Instant::now() < settle {
                stack.poll(&mut app);
            }
            let end = stack.stats();
            println!(
                "offload {offload}: after {frames} frames {during:?}\nend {end:?}, transmitted {}",
                stack.queue().transmitted
            );
            assert_eq!(end.io.rx_packets, frames);
            assert!(
                during.accepted + during.handshakes_failed + during.pending as u64 > 100,
                "random SYNs reached the listener"
            );
            assert!(
                stack.queue().transmitted > 1000,
                "the stack answered (SYN-ACK, RST, ARP)"
            );
            assert_eq!(
                (end.sockets, end.open, end.pending, end.connecting),
                (0, 0, 0, 0)
            );
            drop(stack);
            support::assert_pool_full(&pool);
        }
    });
}
