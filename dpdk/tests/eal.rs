//! EAL, mempool, mbuf and port tests on a real DPDK EAL with virtual devices (run as root).
//!
//! Each test runs in its own process (see `support::isolated`): one EAL per process.

mod support;

use std::time::{Duration, Instant};

use hioload_dpdk::{
    Burst, Eal, Error, Lcore, Mbuf, Mempool, MempoolConfig, NumaBuf, Port, PortConfig, PortId,
    SocketId,
};
use support::{assert_pool_full, init_eal, isolated, Netns};

fn small_pool(eal: &Eal, name: &str, mbufs: u32) -> Mempool {
    let config = MempoolConfig {
        mbufs,
        cache_size: 32,
        ..MempoolConfig::default()
    };
    Mempool::new(eal, name, &config).unwrap_or_else(|e| panic!("pool {name}: {e}"))
}

/// Payload of test packet `seq`: its number, then a pattern derived from it.
fn fill_packet(m: &mut Mbuf, seq: u32) {
    let len = 60 + (seq as usize % 200);
    let data = m.append(len).expect("tailroom");
    data[..4].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in data[4..].iter_mut().enumerate() {
        *b = (seq as usize * 7 + i) as u8;
    }
}

fn check_packet(m: &Mbuf, seq: u32) {
    let data = m.data();
    assert_eq!(m.len(), 60 + (seq as usize % 200), "length of packet {seq}");
    assert_eq!(data.len(), m.len(), "single segment");
    assert_eq!(
        u32::from_be_bytes(data[..4].try_into().unwrap()),
        seq,
        "packets arrive in order"
    );
    for (i, &b) in data[4..].iter().enumerate() {
        assert_eq!(b, (seq as usize * 7 + i) as u8, "byte {i} of packet {seq}");
    }
}

/// Send `count` numbered packets through `queue` of a looped-back port and check each comes back.
fn round_trip(port: &mut Port, queue: u16, pool: &Mempool, count: u32) {
    let mut tx = Burst::<32>::new();
    let mut rx = Burst::<32>::new();
    let mut sent = 0u32;
    let mut received = 0u32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received < count {
        assert!(
            Instant::now() < deadline,
            "only {received}/{count} packets came back"
        );
        while sent < count && !tx.is_full() {
            let mut m = pool.alloc().expect("pool has room for a burst");
            fill_packet(&mut m, sent);
            tx.push(m).unwrap();
            sent += 1;
        }
        port.tx_burst(queue, &mut tx);
        port.rx_burst(queue, &mut rx);
        for m in rx.drain() {
            check_packet(&m, received);
            received += 1;
        }
    }
    assert!(tx.is_empty(), "all packets were sent");
}

#[test]
fn ring_port_round_trips_mbufs() {
    isolated("ring_port_round_trips_mbufs", || {
        let eal = init_eal(&["--vdev=net_ring0"]);
        let pool = small_pool(&eal, "ring_rt", 1023);
        {
            let mut port = Port::open_by_name(&eal, "net_ring0").unwrap();
            let info = port.id().info().unwrap();
            assert_eq!(info.driver, "net_ring");
            assert!(info.max_rx_queues >= 1 && info.max_tx_queues >= 1);
            let configured = port.configure(&PortConfig::default(), &[&pool]).unwrap();
            assert_eq!(configured.rss_hash, 0, "net_ring has no RSS");
            port.start().unwrap();
            assert!(port.id().link().unwrap().up);

            round_trip(&mut port, 0, &pool, 2000);

            let stats = port.id().stats().unwrap();
            assert_eq!(stats.opackets, 2000);
            assert_eq!(stats.ipackets, 2000);
            assert_eq!(stats.rx_nombuf, 0);
            assert_pool_full(&pool);
        }
        assert_pool_full(&pool);
    });
}

#[test]
fn tx_burst_keeps_unsent_mbufs() {
    isolated("tx_burst_keeps_unsent_mbufs", || {
        let eal = init_eal(&["--vdev=net_ring0"]);
        let pool = small_pool(&eal, "tx_keep", 2047);
        {
            let mut port = Port::open_by_name(&eal, "net_ring0").unwrap();
            port.configure(&PortConfig::default(), &[&pool]).unwrap();
            port.start().unwrap();
            // net_ring's ring holds 1023 packets; the rest of a full burst must stay with us.
            let mut tx = Burst::<32>::new();
            let mut sent = 0usize;
            let mut refused = false;
            while sent < 1100 {
                while !tx.is_full() {
                    tx.push(pool.alloc().unwrap()).unwrap();
                }
                let n = port.tx_burst(0, &mut tx);
                sent += n;
                if n < 32 {
                    assert_eq!(tx.len(), 32 - n, "unsent mbufs stay in the burst");
                    refused = true;
                    break;
                }
            }
            assert!(refused, "a full ring refuses packets");
            assert_eq!(pool.in_use() as usize, sent + tx.len());
            tx.clear();
            let mut rx = Burst::<32>::new();
            let mut drained = 0;
            while port.rx_burst(0, &mut rx) > 0 {
                drained += rx.len();
                rx.clear();
            }
            assert_eq!(drained, sent);
        }
        assert_pool_full(&pool);
    });
}

#[test]
fn pool_exhaustion_yields_none() {
    isolated("pool_exhaustion_yields_none", || {
        let eal = init_eal(&[]);
        let pool = small_pool(&eal, "exhaust", 63);
        assert_eq!(pool.capacity(), 63);
        let mut held = Vec::new();
        while let Some(m) = pool.alloc() {
            held.push(m);
            assert!(held.len() <= 63, "pool hands out more than its capacity");
        }
        assert_eq!(held.len(), 63);
        assert!(pool.alloc().is_none(), "still exhausted");
        let mut burst = Burst::<8>::new();
        assert!(
            !pool.alloc_into(&mut burst, 8),
            "bulk alloc fails as a whole"
        );
        assert!(burst.is_empty());
        assert_eq!(pool.available(), 0);
        held.truncate(50);
        assert!(pool.alloc_into(&mut burst, 8), "13 are free again");
        drop(held);
        drop(burst);
        assert_pool_full(&pool);
    });
}

#[test]
fn mbuf_append_prepend_trim() {
    isolated("mbuf_append_prepend_trim", || {
        let eal = init_eal(&[]);
        let pool = small_pool(&eal, "edit", 63);
        {
            let mut m = pool.alloc().unwrap();
            assert!(m.is_empty());
            let room = m.headroom() + m.tailroom();
            assert!(m.extend_from_slice(b"payload"));
            m.prepend(4).unwrap().copy_from_slice(b"hdr:");
            assert_eq!(m.data(), b"hdr:payload");
            assert!(m.trim_front(4));
            assert!(m.trim(3));
            assert_eq!(m.data(), b"payl");
            m.data_mut()[0] = b'P';
            assert_eq!(m.data(), b"Payl");
            assert!(
                m.append(m.tailroom() + 1).is_none(),
                "append beyond tailroom fails"
            );
            assert!(
                m.prepend(m.headroom() + 1).is_none(),
                "prepend beyond headroom fails"
            );
            assert!(!m.trim(5), "cannot trim more than the data");
            assert_eq!(m.headroom() + m.tailroom() + m.len(), room);
            let raw = m.into_raw();
            // SAFETY: raw came from into_raw just above and nothing else owns it.
            let m = unsafe { Mbuf::from_raw(raw) };
            assert_eq!(m.data(), b"Payl");
        }
        assert_pool_full(&pool);
    });
}

#[test]
fn second_eal_init_is_typed_error() {
    isolated("second_eal_init_is_typed_error", || {
        let eal = init_eal(&[]);
        let again = Eal::init(support::eal_args(&[]));
        assert!(
            matches!(again, Err(Error::AlreadyInitialized)),
            "got {:?}",
            again.as_ref().err()
        );
        assert_eq!(again.err().unwrap().errno(), Some(libc::EALREADY));
        drop(eal);
        let after_cleanup = Eal::init(support::eal_args(&[]));
        assert!(matches!(after_cleanup, Err(Error::AlreadyInitialized)));
    });
}

#[test]
fn eal_returns_application_arguments() {
    isolated("eal_returns_application_arguments", || {
        let mut args = support::eal_args(&[]);
        args.extend(["--".into(), "--port".into(), "8080".into()]);
        let (_eal, rest) = Eal::init(&args).unwrap();
        assert_eq!(rest, ["--port", "8080"]);
    });
}

#[test]
fn lcores_enumerate_and_run_closures() {
    isolated("lcores_enumerate_and_run_closures", || {
        let eal = init_eal(&[]);
        let main = eal.main_lcore();
        assert_eq!(Lcore::current(), Some(main));
        let workers = eal.worker_lcores();
        assert_eq!(workers.len(), 2, "three lcores were requested");
        assert_eq!(eal.lcores().len(), 3);
        let sockets = eal.sockets();
        assert!(!sockets.is_empty());
        for l in eal.lcores() {
            assert!(
                sockets.contains(&l.socket()),
                "lcore {} on an unknown socket",
                l.id()
            );
        }

        let seen = eal
            .run_on_workers(|_| (Lcore::current(), SocketId::current()))
            .unwrap();
        assert_eq!(seen.len(), 2);
        for (l, (current, socket)) in &seen {
            assert_eq!(*current, Some(*l), "closure runs on its own lcore");
            assert_eq!(*socket, l.socket());
        }

        // Per-lcore inputs, main lcore included, borrowing from this stack frame.
        let pool = small_pool(&eal, "lcores", 255);
        let jobs: Vec<(Lcore, u32)> = eal.lcores().into_iter().zip([10, 20, 30]).collect();
        let sums = eal
            .run_on(jobs, |l, base| {
                let m = pool.alloc().expect("alloc on an lcore");
                drop(m);
                base + l.id()
            })
            .unwrap();
        let expected: Vec<u32> = eal
            .lcores()
            .iter()
            .zip([10, 20, 30])
            .map(|(l, b)| b + l.id())
            .collect();
        assert_eq!(sums, expected);

        // A panic on a worker reaches the caller, after which lcores are usable again.
        let first = workers[0];
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            eal.run_on_workers(|l| {
                if l == first {
                    panic!("worker boom");
                }
            })
        }));
        let payload = caught.expect_err("the panic propagates");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"worker boom"));
        assert_eq!(eal.run_on_workers(|l| l.id()).unwrap().len(), 2);

        let dup = eal.run_on(vec![(first, ()), (first, ())], |_, ()| ());
        assert!(matches!(dup, Err(Error::Invalid { .. })));
        assert_pool_full(&pool);
    });
}

#[test]
fn queues_polled_from_worker_lcores() {
    isolated("queues_polled_from_worker_lcores", || {
        let eal = init_eal(&["--vdev=net_ring0"]);
        let pool = small_pool(&eal, "mq", 2047);
        {
            let mut port = Port::open_by_name(&eal, "net_ring0").unwrap();
            let config = PortConfig {
                rx_queues: 2,
                tx_queues: 2,
                ..PortConfig::default()
            };
            port.configure(&config, &[&pool]).unwrap();
            port.start().unwrap();
            let workers = eal.worker_lcores();
            let jobs: Vec<_> = workers.iter().copied().zip(port.queues()).collect();
            assert_eq!(jobs.len(), 2);
            let counts = eal
                .run_on(jobs, |_lcore, mut queue| {
                    // Each lcore tags packets with its queue index; net_ring loops queue i to
                    // rx queue i, so only its own packets may come back.
                    let tag = queue.index() as u8;
                    let mut tx = Burst::<32>::new();
                    let mut rx = Burst::<32>::new();
                    let mut back = 0;
                    for _ in 0..10 {
                        while !tx.is_full() {
                            let mut m = pool.alloc().unwrap();
                            m.extend_from_slice(&[tag; 64]);
                            tx.push(m).unwrap();
                        }
                        queue.tx_burst(&mut tx);
                        queue.rx_burst(&mut rx);
                        for m in rx.drain() {
                            assert_eq!(m.data(), &[tag; 64][..], "packet from another queue");
                            back += 1;
                        }
                    }
                    back
                })
                .unwrap();
            assert_eq!(counts, [320, 320]);
        }
        assert_pool_full(&pool);
    });
}

#[test]
fn port_lookup_attach_and_errors() {
    isolated("port_lookup_attach_and_errors", || {
        let eal = init_eal(&["--vdev=net_ring0"]);
        assert_eq!(eal.ports().len(), 1);
        let p1 = PortId::attach(&eal, "net_ring1").expect("hotplug a second ring port");
        assert_eq!(p1.name().unwrap(), "net_ring1");
        assert_eq!(eal.ports().len(), 2);
        assert_eq!(PortId::by_name(&eal, "net_ring1").unwrap(), p1);
        assert!(PortId::by_name(&eal, "net_nosuch0").is_err());

        let pool = small_pool(&eal, "lookup", 255);
        {
            let mut port = Port::open(&eal, p1).unwrap();
            assert!(Port::open(&eal, p1).is_err(), "one owner per port");
            port.id().mac_addr().unwrap();
            let too_many = PortConfig {
                rx_queues: 1000,
                ..PortConfig::default()
            };
            let err = port.configure(&too_many, &[&pool]).unwrap_err();
            assert!(err.to_string().contains("1000 rx"), "{err}");
            assert!(port.start().is_err(), "start before configure is refused");
            port.configure(&PortConfig::default(), &[&pool]).unwrap();
            port.start().unwrap();
            port.stop().unwrap();
        }
        // A DPDK-reported failure carries rte_strerror's text.
        let dup = Mempool::new(
            &eal,
            "lookup",
            &MempoolConfig {
                mbufs: 63,
                cache_size: 0,
                ..MempoolConfig::default()
            },
        );
        let err = dup.err().expect("duplicate pool name is refused");
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(err.to_string().contains("File exists"), "{err}");
        assert_pool_full(&pool);
    });
}

#[test]
fn numa_buf_is_zeroed_and_writable() {
    isolated("numa_buf_is_zeroed_and_writable", || {
        let eal = init_eal(&[]);
        let socket = eal.main_lcore().socket();
        let mut buf = NumaBuf::zeroed(&eal, 1 << 20, 4096, socket).unwrap();
        assert_eq!(buf.len(), 1 << 20);
        assert_eq!(buf.as_ptr() as usize % 4096, 0, "aligned as asked");
        assert!(buf.iter().all(|&b| b == 0));
        buf[12345] = 7;
        assert_eq!(buf[12345], 7);
        assert_eq!(buf.socket(), socket);
        assert!(NumaBuf::zeroed(&eal, 0, 0, socket).is_err());
        assert!(NumaBuf::zeroed(&eal, 64, 3, socket).is_err());
    });
}

// ---- net_tap: a real kernel on the other side ----

const NS_ADDR: [u8; 4] = [198, 18, 0, 1];
const DPDK_ADDR: [u8; 4] = [198, 18, 0, 2];

/// An ARP reply to `request` (an ARP request for DPDK_ADDR), from `mac`.
fn arp_reply(request: &[u8], mac: [u8; 6], out: &mut Mbuf) {
    let asker_mac = &request[22..28];
    let asker_ip = &request[28..32];
    let f = out.append(60).unwrap();
    f.fill(0);
    f[0..6].copy_from_slice(asker_mac);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&DPDK_ADDR);
    f[32..38].copy_from_slice(asker_mac);
    f[38..42].copy_from_slice(asker_ip);
}

fn is_arp_request_for_us(f: &[u8]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1] && f[38..42] == DPDK_ADDR
}

const UDP_PORT: u16 = 7777;

fn is_udp_for_us(f: &[u8]) -> bool {
    let ihl = (f.get(14).copied().unwrap_or(0) & 15) as usize * 4;
    f.len() >= 14 + ihl + 8
        && f[12..14] == [0x08, 0x00]
        && f[23] == 17
        && f[30..34] == DPDK_ADDR
        && f[14 + ihl + 2..14 + ihl + 4] == UDP_PORT.to_be_bytes()
}

/// Turn a UDP datagram frame into its echo, in place (swap MACs, addresses, ports).
fn make_udp_echo(f: &mut [u8]) {
    let ihl = (f[14] & 15) as usize * 4;
    for (a, b) in [(0, 6), (26, 30)] {
        let len = if a == 0 { 6 } else { 4 };
        for i in 0..len {
            f.swap(a + i, b + i);
        }
    }
    let udp = 14 + ihl;
    for i in 0..2 {
        f.swap(udp + i, udp + 2 + i);
    }
    // IPv4 header checksum is unchanged by swapping addresses; 0 = no UDP checksum.
    f[udp + 6..udp + 8].copy_from_slice(&[0, 0]);
}

/// From a thread inside namespace `ns`: send `payload` to 198.18.0.2 and wait for the echo.
fn udp_exchange_in_netns(
    ns: String,
    payload: Vec<u8>,
) -> std::thread::JoinHandle<Result<(Vec<u8>, std::net::SocketAddr), String>> {
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/var/run/netns/{ns}")).map_err(|e| e.to_string())?;
        // SAFETY: setns on a valid netns fd only moves this thread into that namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let sock = std::net::UdpSocket::bind("198.18.0.1:0").map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(4)))
            .map_err(|e| e.to_string())?;
        sock.send_to(&payload, ("198.18.0.2", UDP_PORT))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2048];
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("no echo: {e}"))?;
        Ok((buf[..n].to_vec(), from))
    })
}

#[test]
fn tap_port_talks_to_kernel_in_namespace() {
    isolated("tap_port_talks_to_kernel_in_namespace", || {
        let tap = format!("hlt{}", std::process::id());
        let ns = Netns::create();
        let eal = init_eal(&[]);
        let pool = small_pool(&eal, "tap", 1023);
        {
            let mut port =
                Port::attach(&eal, &format!("net_tap0,iface={tap}")).expect("net_tap vdev");
            assert_eq!(port.id().info().unwrap().driver, "net_tap");
            let config = PortConfig {
                rx_descriptors: 256,
                tx_descriptors: 256,
                ..PortConfig::default()
            };
            port.configure(&config, &[&pool]).unwrap();
            port.start().unwrap();
            let mac = port.id().mac_addr().unwrap();

            // The kernel side goes into our namespace, with 198.18.0.1/24.
            support::run("ip", &["link", "set", &tap, "netns", &ns.name]);
            ns.exec(&["ip", "addr", "add", "198.18.0.1/24", "dev", &tap]);
            ns.exec(&["ip", "link", "set", &tap, "up"]);

            // A socket in the namespace sends to 198.18.0.2: the kernel first asks for our MAC.
            let payload = b"hello from the namespace".to_vec();
            let peer = udp_exchange_in_netns(ns.name.clone(), payload.clone());
            let (mut arp_seen, mut udp_seen) = (false, false);
            let mut rx = Burst::<32>::new();
            let mut tx = Burst::<32>::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !(arp_seen && udp_seen) && Instant::now() < deadline {
                port.rx_burst(0, &mut rx);
                for mut m in rx.drain() {
                    if is_arp_request_for_us(m.data()) {
                        assert_eq!(m.data()[28..32], NS_ADDR, "asked by the namespace side");
                        let mut reply = pool.alloc().unwrap();
                        arp_reply(m.data(), mac.0, &mut reply);
                        tx.push(reply).unwrap();
                        arp_seen = true;
                    } else if is_udp_for_us(m.data()) {
                        assert!(arp_seen, "the datagram comes after our ARP reply");
                        assert_eq!(m.data()[0..6], mac.0, "sent to the MAC we announced");
                        assert!(m.data().ends_with(&payload));
                        make_udp_echo(m.data_mut());
                        tx.push(m).unwrap(); // zero copy: the request buffer goes back out
                        udp_seen = true;
                    }
                }
                while !tx.is_empty() {
                    port.tx_burst(0, &mut tx);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let echoed = peer.join().expect("namespace thread");
            assert!(arp_seen, "the kernel's ARP request reached the DPDK port");
            assert!(
                udp_seen,
                "the kernel sent the datagram to our MAC after our ARP reply"
            );
            let (data, from) = echoed.expect("the namespace socket got our echo");
            assert_eq!(data, payload);
            assert_eq!(from, "198.18.0.2:7777".parse().unwrap());
            let neigh = ns.exec(&["ip", "neigh", "show", "198.18.0.2", "dev", &tap]);
            assert!(
                neigh.contains(&mac.to_string()),
                "namespace learnt our MAC {mac}: {neigh:?}"
            );
            let stats = port.id().stats().unwrap();
            assert!(stats.ipackets >= 2 && stats.opackets >= 2, "{stats:?}");
        }
        assert_pool_full(&pool);
        drop(ns);
    });
}

#[test]
fn tap_port_configures_rss_offloads_and_mtu_from_capabilities() {
    isolated(
        "tap_port_configures_rss_offloads_and_mtu_from_capabilities",
        || {
            let tap = format!("hlq{}", std::process::id());
            let eal = init_eal(&[]);
            let pool = small_pool(&eal, "tapq", 2047);
            {
                let mut port = Port::attach(&eal, &format!("net_tap0,iface={tap}")).unwrap();
                let info = port.id().info().unwrap();
                println!("{info:?}");
                let config = PortConfig {
                    rx_queues: 2,
                    tx_queues: 2,
                    rx_descriptors: 128,
                    tx_descriptors: 128,
                    mtu: Some(1400),
                    ..PortConfig::default()
                };
                let configured = port.configure(&config, &[&pool]).unwrap();
                // What was enabled follows what the device reports, bit for bit.
                assert_eq!(
                    configured.rss_hash,
                    info.rss_offloads & hioload_dpdk::RSS_TCP_4TUPLE
                );
                assert_eq!(configured.rss_hash != 0, info.supports_rss_tcp());
                assert_eq!(configured.rx_checksums, info.rx_checksums());
                assert_eq!(configured.tx_checksums, info.tx_checksums());
                assert_eq!((configured.rx_queues, configured.tx_queues), (2, 2));
                port.start().unwrap();
                assert_eq!(port.id().mtu().unwrap(), 1400);
                let link = support::run("ip", &["-o", "link", "show", &tap]);
                assert!(
                    link.contains(" mtu 1400 "),
                    "kernel side has the MTU: {link}"
                );
                port.set_mtu(1300).unwrap();
                assert_eq!(port.id().mtu().unwrap(), 1300);
                assert_eq!(port.queues().len(), 2);
                let too_big = PortConfig {
                    mtu: Some(u16::MAX),
                    ..config.clone()
                };
                port.stop().unwrap();
                if info.max_mtu < u16::MAX {
                    assert!(port.configure(&too_big, &[&pool]).is_err());
                }
            }
            assert_pool_full(&pool);
        },
    );
}
