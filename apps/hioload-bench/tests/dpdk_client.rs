//! The DPDK mode's client against a WebSocket echo on another of our stacks: a real EAL, two
//! net_ring ports crossed (what one transmits the other receives), the server stack polled by a
//! thread of its own, the client on this one. The client spreads its connections over two
//! source addresses (two stacks behind the demultiplexer), so both are checked to reach the
//! server; every echo must verify. Then an echo that corrupts one byte on each connection must
//! be caught and named.
//!
//! One EAL per process: everything runs in this one test. Needs root and, for speed, hugepages
//! (without 256 free it runs with --no-huge).

#![cfg(feature = "dpdk")]

use std::collections::HashSet;
use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hioload_bench::dpdk::client::{self, ClientConfig, Control, Outcome};
use hioload_bench::dpdk::sources::Sources;
use hioload_bench::load;
use hioload_bench::pattern::{Framing, Pattern};
use hioload_bench::wire::{self, DataKind};
use hioload_dpdk::{sys, Eal, Mempool, MempoolConfig, Port, PortConfig, PortId};
use hioload_stack::{Conn, ConnEvents, PortProfile, Stack, StackConfig};
use hioload_wsproto::frame::FrameHeader;
use hioload_wsproto::mask::apply_mask;
use hioload_wsproto::OpCode;

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The faithful echo's port; the corrupting one's is the next.
const PORT: u16 = 8080;
const CORRUPT_PORT: u16 = 8081;

#[link(name = "rte_net_ring")]
extern "C" {
    /// `rte_eth_from_rings` (rte_eth_ring.h): an ethdev port over existing rings.
    fn rte_eth_from_rings(
        name: *const std::os::raw::c_char,
        rx_queues: *const *mut sys::rte_ring,
        nb_rx_queues: u32,
        tx_queues: *const *mut sys::rte_ring,
        nb_tx_queues: u32,
        numa_node: u32,
    ) -> i32;
}

/// Crossed net_ring ports: A transmits into the ring B receives from, and back.
fn crossed_ring_ports(_eal: &Eal) -> (PortId, PortId) {
    let ring = |name: &str| {
        let c = CString::new(name).unwrap();
        // SAFETY: valid name; flags 0x3 = RING_F_SP_ENQ | RING_F_SC_DEQ (one thread per end).
        let r = unsafe { sys::rte_ring_create(c.as_ptr(), 4096, sys::SOCKET_ID_ANY, 0x3) };
        assert!(!r.is_null(), "rte_ring_create {name}");
        r
    };
    let (a2b, b2a) = (ring("hbt_a2b"), ring("hbt_b2a"));
    let port = |name: &str, rx: *mut sys::rte_ring, tx: *mut sys::rte_ring| {
        let c = CString::new(name).unwrap();
        // SAFETY: valid name and one-element ring arrays that outlive the call; DPDK keeps the
        // ring pointers, and the rings are never freed in this process.
        let id = unsafe { rte_eth_from_rings(c.as_ptr(), &rx, 1, &tx, 1, 0) };
        assert!(id >= 0, "rte_eth_from_rings {name}");
        PortId::new(id as u16)
    };
    (port("hbt_ring_a", b2a, a2b), port("hbt_ring_b", a2b, b2a))
}

/// One connection of the test server: input not yet used, whether it is upgraded, bytes echoed.
#[derive(Default)]
struct ServerConn {
    input: Vec<u8>,
    upgraded: bool,
    echoed: u64,
}

/// A small WebSocket echo (upgrade, unmask, echo unmasked; close answered), written for this
/// test on hioload-wsproto's frame codec. On CORRUPT_PORT it flips echoed byte 1000.
#[derive(Default)]
struct EchoServer {
    conns: Vec<ServerConn>,
    remotes: HashSet<Ipv4Addr>,
    scratch: Vec<u8>,
}

impl EchoServer {
    fn serve(&mut self, conn: &mut Conn<'_>) {
        let corrupt = conn.local_port() == CORRUPT_PORT;
        let c = &mut self.conns[conn.id().index()];
        loop {
            let at = c.input.len();
            c.input.resize(at + 4096, 0);
            let n = conn.recv_slice(&mut c.input[at..]);
            c.input.truncate(at + n);
            if n == 0 {
                break;
            }
        }
        if !c.upgraded {
            let Some(end) = c.input.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            req.parse(&c.input[..end + 4])
                .expect("a valid upgrade request");
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Key"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .expect("a key");
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                wire::accept_key(&key)
            );
            assert!(conn.send_all(&[answer.as_bytes()]));
            c.input.drain(..end + 4);
            c.upgraded = true;
        }
        let mut used = 0;
        while let Ok(Some((h, head))) = FrameHeader::decode(&c.input[used..]) {
            let len = h.payload_len as usize;
            if c.input.len() - used < head + len {
                break;
            }
            let payload = &mut c.input[used + head..used + head + len];
            if let Some(key) = h.mask {
                apply_mask(payload, key, 0);
            }
            self.scratch.clear();
            match h.opcode {
                OpCode::Close => {
                    self.scratch.extend_from_slice(&[0x88, 0x02, 0x03, 0xe8]);
                    let _ = conn.send_all(&[&self.scratch]);
                    conn.close();
                    c.input.clear();
                    return;
                }
                OpCode::Binary => {
                    wire::push_frame(&mut self.scratch, DataKind::Binary, payload, None)
                }
                other => panic!("unexpected {other:?} frame"),
            }
            if conn.send_free() < self.scratch.len() {
                break; // the rest waits for room
            }
            let flip = 1000u64.wrapping_sub(c.echoed);
            if corrupt && flip < self.scratch.len() as u64 {
                self.scratch[flip as usize] ^= 0x01;
            }
            assert!(conn.send_all(&[&self.scratch]));
            c.echoed += self.scratch.len() as u64;
            used += head + len;
        }
        c.input.drain(..used);
        if conn.is_eof() {
            conn.close();
        }
    }
}

impl ConnEvents for EchoServer {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        self.conns[conn.id().index()] = ServerConn::default();
        self.remotes.insert(*conn.remote().ip());
    }
    fn on_ready(&mut self, conn: &mut Conn<'_>) {
        self.serve(conn);
    }
}

/// Runs the client over `ips` (one stack each) against `port`, with a short window; returns
/// what it measured and the window as this test timed it.
fn run_client(
    eal: &Eal,
    client_port: &mut Port,
    pool: &Mempool,
    ips: &[Ipv4Addr],
    port: u16,
) -> (Result<Outcome, String>, Duration) {
    let profile = PortProfile::of(client_port).unwrap();
    let queue = client_port.queues().remove(0);
    let mut stacks: Vec<_> = Sources::split(queue, ips)
        .into_iter()
        .zip(ips)
        .map(|(q, &ip)| {
            let mut c = StackConfig::new(ip, 24);
            c.max_connections = 64;
            c.rx_ring = 4096;
            c.tx_ring = 4096;
            Stack::new(eal, q, pool.clone(), profile, eal.main_lcore().socket(), c).unwrap()
        })
        .collect();
    let pattern = Pattern::new(Framing::WebSocket(DataKind::Binary), 20, 64);
    let cfg = ClientConfig {
        server: SocketAddrV4::new(SERVER, port),
        path: "/ws".into(),
        connections: 40,
        pipeline: 4,
        connect_rate: 10_000.0,
        setup_timeout: Duration::from_secs(20),
    };
    let control = Control::default();
    std::thread::scope(|s| {
        let timer = s.spawn(|| {
            let limit = Instant::now() + Duration::from_secs(30);
            while control.setup.load(Ordering::Acquire) == client::SETUP_PENDING
                && Instant::now() < limit
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(200));
            let start = Instant::now();
            control.phase.store(load::MEASURE, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(700));
            control.phase.store(load::DONE, Ordering::Relaxed);
            start.elapsed()
        });
        let outcome = client::run(&mut stacks, &pattern, &cfg, &control, &|| Some(true));
        (outcome, timer.join().unwrap())
    })
}

#[test]
fn client_on_our_stack_verifies_every_echo_and_catches_a_wrong_byte() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "DPDK tests need root");
    let free = std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let mut args: Vec<String> = [
        "dpdk_client",
        "--no-pci",
        "--no-telemetry",
        "--log-level=warning",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--file-prefix=hbt-{}", std::process::id()));
    if free >= 256 {
        args.push("--in-memory".into());
    } else {
        args.extend(["--no-huge", "--no-shconf", "-m", "512"].map(String::from));
    }
    let (eal, _) = Eal::init(&args).expect("EAL init");
    let (a, b) = crossed_ring_ports(&eal);
    let pool = |name: &str| {
        let c = MempoolConfig {
            mbufs: 8191,
            cache_size: 256,
            socket: eal.main_lcore().socket(),
            ..MempoolConfig::default()
        };
        Mempool::new(&eal, name, &c).expect("mempool")
    };
    let (client_pool, server_pool) = (pool("hbt_client"), pool("hbt_server"));
    let mut client_port = Port::open(&eal, a).unwrap();
    let mut server_port = Port::open(&eal, b).unwrap();
    for (port, pool) in [
        (&mut client_port, &client_pool),
        (&mut server_port, &server_pool),
    ] {
        port.configure(&PortConfig::default(), &[pool]).unwrap();
        port.start().unwrap();
    }
    let server_profile = PortProfile::of(&server_port).unwrap();
    let mut server_config = StackConfig::new(SERVER, 24);
    server_config.max_connections = 256;
    let mut server_stack = Stack::new(
        &eal,
        server_port.queues().remove(0),
        server_pool.clone(),
        server_profile,
        eal.main_lcore().socket(),
        server_config,
    )
    .unwrap();
    server_stack.listen(PORT);
    server_stack.listen(CORRUPT_PORT);

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let mut echo = EchoServer {
                conns: (0..256).map(|_| ServerConn::default()).collect(),
                ..EchoServer::default()
            };
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                server_stack.poll(&mut echo);
            }
            echo.remotes
        });

        let ips = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 3)];
        let good = run_client(&eal, &mut client_port, &client_pool, &ips, PORT);
        let bad = run_client(
            &eal,
            &mut client_port,
            &client_pool,
            &ips[..1],
            CORRUPT_PORT,
        );
        stop.store(true, Ordering::Relaxed);
        let remotes = server.join().unwrap();

        let (good, window) = good;
        let good = good.expect("the faithful echo runs");
        assert_eq!(good.stats.errors, 0, "{:?}", good.stats.error_texts);
        assert!(
            good.stats.messages > 1000,
            "{} echoes in 0.7 s",
            good.stats.messages
        );
        assert_eq!(good.stats.latency.len(), good.stats.messages);
        // The client counts its busy time within the window it saw (a turn or so late).
        assert!(
            good.busy > Duration::ZERO && good.busy <= window + Duration::from_millis(20),
            "busy {:?} in a window of {window:?}",
            good.busy
        );
        assert!(
            remotes.contains(&ips[0]) && remotes.contains(&ips[1]),
            "connections came from {remotes:?}"
        );

        let bad = bad.0.expect("the corrupting echo runs");
        assert_eq!(
            bad.stats.errors, 40,
            "every connection sees its byte 1000 flipped"
        );
        let text = &bad.stats.error_texts[0];
        assert!(text.contains("wrong at byte"), "{text}");
    });
    // Everything DPDK goes before the EAL, which then cleans up.
    drop(server_stack);
    drop((client_port, server_port, client_pool, server_pool));
    drop(eal);
    let _ = std::fs::remove_dir(format!("/var/run/dpdk/hbt-{}", std::process::id()));
}
