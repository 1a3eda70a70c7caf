//! The stack against the Linux kernel: a net_tap port whose kernel side lives in a network
//! namespace, kernel TCP clients (threads that entered the namespace) and a stack-level TCP echo.
//!
//! Each test runs in its own process with its own EAL and namespace (the dpdk/ crate's test
//! support, shared by path). Ports on the stack side (198.18.0.2):
//! - 7: echo; closes its side once the client closed its side (client-initiated FIN);
//! - 8: sends a greeting and closes at once (server-initiated FIN);
//! - 9: resets the connection when data arrives (server-initiated RST).

#[path = "../../dpdk/tests/support/mod.rs"]
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hioload_dpdk::{Mempool, MempoolConfig, Port, PortConfig, Queue};
use hioload_stack::{CloseReason, Conn, ConnEvents, ConnId, PortProfile, Stack, StackConfig};
use support::{init_eal, isolated, Netns};

const STACK_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const ECHO: u16 = 7;
const GREET_AND_CLOSE: u16 = 8;
const RESET_ON_DATA: u16 = 9;
const GREETING: &[u8] = b"bye\n";

/// The stack-side application.
#[derive(Default)]
struct EchoServer {
    opened: usize,
    graceful: usize,
    reset: usize,
    echoed: u64,
    /// For connections the stack opened itself: what to send, and what came back.
    outgoing: Vec<u8>,
    came_back: Vec<u8>,
}

const OUTGOING_LOCAL_PORTS: std::ops::RangeInclusive<u16> = 10_000..=65_535;

impl ConnEvents for EchoServer {
    fn on_open(&mut self, conn: &mut Conn<'_>) {
        self.opened += 1;
        if OUTGOING_LOCAL_PORTS.contains(&conn.local_port()) {
            assert!(
                conn.send_all(&[&self.outgoing]),
                "the send ring takes the whole request"
            );
        }
        if conn.local_port() == GREET_AND_CLOSE {
            assert!(conn.send_all(&[GREETING]));
            conn.close();
        }
    }

    fn on_ready(&mut self, conn: &mut Conn<'_>) {
        match conn.local_port() {
            RESET_ON_DATA if conn.recv_queue() > 0 => conn.abort(),
            ECHO => {
                // Straight from the receive ring into the send ring, as the WebSocket path does;
                // what does not fit stays unread (backpressure).
                loop {
                    let n = conn.recv_and_send(|rx, tx| {
                        let n = rx.len().min(tx.free());
                        assert!(tx.send_all(&[&rx[..n]]));
                        n
                    });
                    if n == 0 {
                        break;
                    }
                    self.echoed += n as u64;
                }
                if conn.is_eof() {
                    conn.close();
                }
            }
            port if OUTGOING_LOCAL_PORTS.contains(&port) => {
                let mut buf = [0u8; 4096];
                loop {
                    let n = conn.recv_slice(&mut buf);
                    if n == 0 {
                        break;
                    }
                    self.came_back.extend_from_slice(&buf[..n]);
                }
                if self.came_back.len() >= self.outgoing.len() {
                    conn.close();
                }
            }
            _ => {}
        }
    }

    fn on_close(&mut self, _id: ConnId, reason: CloseReason) {
        match reason {
            CloseReason::Graceful => self.graceful += 1,
            CloseReason::Reset => self.reset += 1,
        }
    }
}

/// A net_tap port with its kernel side (198.18.0.1/24) in a fresh namespace, and a stack on it.
fn run_against_kernel<R: Send + 'static>(
    config: impl FnOnce(&mut StackConfig),
    client: impl FnOnce() -> R + Send + 'static,
    check: impl FnOnce(R, &EchoServer, &mut Stack<Queue<'_>>),
) {
    run_against_kernel_with(config, |_, _| {}, client, check)
}

/// As `run_against_kernel`, with `start` run on the stack once the namespace thread runs.
fn run_against_kernel_with<R: Send + 'static>(
    config: impl FnOnce(&mut StackConfig),
    start: impl FnOnce(&mut Stack<Queue<'_>>, &mut EchoServer),
    client: impl FnOnce() -> R + Send + 'static,
    check: impl FnOnce(R, &EchoServer, &mut Stack<Queue<'_>>),
) {
    let tap = format!("hls{}", std::process::id());
    let ns = Netns::create();
    let eal = init_eal(&[]);
    let socket = eal.main_lcore().socket();
    let pool_config = MempoolConfig {
        mbufs: 8191,
        cache_size: 256,
        socket,
        ..MempoolConfig::default()
    };
    let pool = Mempool::new(&eal, "stack_tap", &pool_config).unwrap();
    {
        let mut port = Port::attach(&eal, &format!("net_tap0,iface={tap}")).expect("net_tap vdev");
        let port_config = PortConfig {
            rx_descriptors: 512,
            tx_descriptors: 512,
            ..PortConfig::default()
        };
        port.configure(&port_config, &[&pool]).unwrap();
        port.start().unwrap();
        support::run("ip", &["link", "set", &tap, "netns", &ns.name]);
        ns.exec(&["ip", "addr", "add", "198.18.0.1/24", "dev", &tap]);
        ns.exec(&["ip", "link", "set", &tap, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);

        let profile = PortProfile::of(&port).unwrap();
        println!("port profile: {profile:?}");
        let mut stack_config = StackConfig::new(STACK_IP, 24);
        stack_config.max_connections = 2048;
        config(&mut stack_config);
        let queue = port.queues().remove(0);
        let mut stack =
            Stack::new(&eal, queue, pool.clone(), profile, socket, stack_config).unwrap();
        stack.listen(ECHO);
        stack.listen(GREET_AND_CLOSE);
        stack.listen(RESET_ON_DATA);
        let idle_in_use = pool.in_use();
        let idle_stats = stack.stats();

        let mut server = EchoServer::default();
        let client = in_netns(&ns.name, client);
        start(&mut stack, &mut server);
        let deadline = Instant::now() + Duration::from_secs(90);
        while !client.is_finished() {
            assert!(
                Instant::now() < deadline,
                "client did not finish in time; stack {:?}",
                stack.stats()
            );
            stack.poll(&mut server);
        }
        let result = client.join().expect("client thread panicked");
        // Let the last FIN/ACK exchanges finish.
        let settle = Instant::now() + Duration::from_secs(5);
        while (stack.stats().sockets > 0 || stack.tx_pending() > 0) && Instant::now() < settle {
            stack.poll(&mut server);
        }
        for _ in 0..100 {
            stack.poll(&mut server);
        }
        let stats = stack.stats();
        println!(
            "server: {} opened, {} graceful, {} reset, {} bytes echoed; {stats:?}",
            server.opened, server.graceful, server.reset, server.echoed
        );
        println!(
            "memory per idle connection: {} bytes",
            stack.memory_per_connection()
        );
        check(result, &server, &mut stack);

        assert_eq!(
            stats.sockets, idle_stats.sockets,
            "every socket is gone after the connections closed"
        );
        assert_eq!((stats.open, stats.pending, stats.connecting), (0, 0, 0));
        assert_eq!(
            stats.accepted, stats.closed,
            "each accepted connection was closed"
        );
        assert_eq!(
            pool.in_use(),
            idle_in_use,
            "mbufs in use are back to the idle count"
        );
        assert_eq!(stats.io.rx_bad_checksum, 0);
    }
    support::assert_pool_full(&pool);
    drop(ns);
}

/// Run `f` on a thread inside namespace `ns`.
fn in_netns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> JoinHandle<R> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns with a valid namespace fd moves only this thread into the namespace.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns: {}",
            std::io::Error::last_os_error()
        );
        f()
    })
}

/// `read`, retried on EINTR (the tap PMD's SIGIO interrupts blocking calls of other threads).
fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn stack_addr(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(STACK_IP, port)
}

fn connect(port: u16) -> TcpStream {
    let s = loop {
        match TcpStream::connect_timeout(&stack_addr(port).into(), Duration::from_secs(10)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => break other.expect("connect to the stack"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Byte `i` of the test stream with seed `seed`.
fn pattern(seed: u64, i: u64) -> u8 {
    let x = (i ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (x >> 56) as u8
}

/// Write `len` pattern bytes from one thread, read the echo on this one, then half-close and
/// expect EOF. Returns the bytes that came back intact.
fn echo_stream(len: u64, seed: u64) -> u64 {
    let stream = connect(ECHO);
    let mut writer = stream.try_clone().unwrap();
    let w = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < len {
            let n = (len - sent).min(buf.len() as u64) as usize;
            for (k, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(seed, sent + k as u64);
            }
            writer.write_all(&buf[..n]).expect("write to the stack");
            sent += n as u64;
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap(); // our FIN
    });
    let mut reader = stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = read_some(&mut reader, &mut buf).expect("read the echo");
        if n == 0 {
            break; // the stack's FIN after the echo
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            assert_eq!(
                b,
                pattern(seed, got + k as u64),
                "echo byte {} of {len}",
                got + k as u64
            );
        }
        got += n as u64;
    }
    w.join().unwrap();
    got
}

#[test]
fn streams_of_1k_1m_64m_echo_intact() {
    isolated("streams_of_1k_1m_64m_echo_intact", || {
        let sizes = [1u64 << 10, 1 << 20, 64 << 20];
        run_against_kernel(
            |c| {
                c.rx_ring = 64 * 1024;
                c.tx_ring = 64 * 1024;
                c.max_connections = 64;
            },
            move || {
                sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &len)| (len, echo_stream(len, i as u64 + 1)))
                    .collect::<Vec<_>>()
            },
            |results, server, _| {
                for (len, got) in results {
                    assert_eq!(got, len, "the whole {len}-byte stream came back");
                }
                assert_eq!(server.opened, 3);
                assert_eq!(server.graceful, 3, "client FIN, then ours: graceful closes");
                assert_eq!(server.echoed, (1 << 10) + (1 << 20) + (64 << 20));
            },
        );
    });
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// `n` nonblocking connects issued back to back, then every connection echoes one message.
fn thousand_clients(n: usize) -> usize {
    raise_fd_limit();
    let mut fds = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: ECHO.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(STACK_IP).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sa is a valid sockaddr_in of the given size.
        let r = unsafe {
            libc::connect(
                fd,
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&sa) as u32,
            )
        };
        assert!(
            r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS)
        );
        fds.push(fd);
    }
    // Wait until every connect completed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        })
        .collect();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} of {n} connects still pending",
            pending.len()
        );
        // SAFETY: pending is a valid pollfd array.
        unsafe { libc::poll(pending.as_mut_ptr(), pending.len() as u64, 100) };
        pending.retain(|p| {
            if p.revents == 0 {
                return true;
            }
            assert_eq!(
                p.revents & (libc::POLLERR | libc::POLLHUP),
                0,
                "connect failed on fd {}",
                p.fd
            );
            false
        });
        for p in &mut pending {
            p.revents = 0;
        }
    }
    let streams: Vec<TcpStream> = fds
        .into_iter()
        .map(|fd| {
            // SAFETY: fd is an open, connected socket we own; TcpStream takes it over.
            let s = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s
        })
        .collect();
    for (i, mut s) in streams.iter().enumerate() {
        s.write_all(format!("client {i:04}").as_bytes()).unwrap();
    }
    let mut served = 0;
    for (i, mut s) in streams.iter().enumerate() {
        let mut buf = [0u8; 11];
        s.read_exact(&mut buf).expect("echo of one client");
        assert_eq!(&buf, format!("client {i:04}").as_bytes());
        served += 1;
    }
    for s in &streams {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    for mut s in streams {
        let mut rest = [0u8; 1];
        assert_eq!(
            read_some(&mut s, &mut rest).unwrap(),
            0,
            "the stack closes after our FIN"
        );
    }
    served
}

#[test]
fn thousand_clients_connect_at_once_and_are_served() {
    isolated("thousand_clients_connect_at_once_and_are_served", || {
        run_against_kernel(
            |c| {
                c.rx_ring = 4096;
                c.tx_ring = 4096;
            },
            || thousand_clients(1000),
            |served, server, stack| {
                assert_eq!(served, 1000);
                assert_eq!(server.opened, 1000);
                assert_eq!(server.graceful, 1000);
                assert_eq!(
                    stack.stats().syn_dropped,
                    0,
                    "the default backlog (1024) takes 1000 SYNs"
                );
            },
        );
    });
}

/// ICMP echo request/reply over a raw socket (no `ping` binary needed); returns replies seen.
fn ping(count: u16) -> u16 {
    // SAFETY: plain socket(2) call (root).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: valid option pointer and size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const _,
            std::mem::size_of_val(&tv) as u32,
        )
    };
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(STACK_IP).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut replies = 0;
    for seq in 0..count {
        let mut pkt = [0u8; 64];
        pkt[0] = 8; // echo request
        pkt[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in pkt[8..].iter_mut().enumerate() {
            *b = i as u8 ^ seq as u8;
        }
        let sum = internet_checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        // SAFETY: valid buffer and address.
        let r = unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                &dst as *const _ as *const libc::sockaddr,
                std::mem::size_of_val(&dst) as u32,
            )
        };
        assert_eq!(r, 64, "sendto: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let mut buf = [0u8; 1500];
            // SAFETY: valid buffer.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                break;
            }
            let ihl = (buf[0] & 15) as usize * 4;
            let icmp = &buf[ihl..n as usize];
            if buf[12..16] == STACK_IP.octets()
                && icmp[0] == 0
                && icmp[4..6] == 0x4242u16.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                assert_eq!(icmp[8..], pkt[8..], "the reply carries our payload");
                assert_eq!(internet_checksum(icmp), 0, "the reply's checksum is right");
                replies += 1;
                break;
            }
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    replies
}

fn internet_checksum(data: &[u8]) -> u16 {
    let mut acc = 0u32;
    for w in data.chunks(2) {
        acc += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// FIN and RST, each initiated by either side.
/// The MSS the kernel uses towards the stack (from the stack's SYN-ACK), on a fresh connection.
fn mss_towards_stack() -> i32 {
    let s = connect(ECHO);
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size on our socket.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            &mut mss as *mut _ as *mut _,
            &mut len,
        )
    };
    assert_eq!(r, 0);
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut s = s;
    assert_eq!(
        read_some(&mut s, &mut [0u8; 8]).unwrap(),
        0,
        "the stack closes after our FIN"
    );
    mss
}

fn fin_and_rst_both_ways() -> (u16, i32, [bool; 4]) {
    let replies = ping(3);
    let mss = mss_towards_stack();
    // 1. Client FIN first: the stack echoes, sees EOF, closes.
    let client_fin = echo_stream(100, 9) == 100;
    // 2. Stack FIN first: greeting, then EOF; then we close.
    let mut s = connect(GREET_AND_CLOSE);
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read until the stack's FIN");
    let server_fin = got == GREETING;
    drop(s);
    // 3. Client RST: SO_LINGER 0 then close.
    let mut s = connect(ECHO);
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid option pointer and size on our socket.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const _,
            std::mem::size_of_val(&linger) as u32,
        )
    };
    assert_eq!(r, 0);
    drop(s); // RST
    let client_rst = buf == *b"ping";
    // 4. Stack RST: data makes it abort.
    let mut s = connect(RESET_ON_DATA);
    s.write_all(b"x").unwrap();
    let mut buf = [0u8; 8];
    let server_rst = match read_some(&mut s, &mut buf) {
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    };
    (
        replies,
        mss,
        [client_fin, server_fin, client_rst, server_rst],
    )
}

#[test]
fn ping_fin_and_rst_in_both_directions() {
    isolated("ping_fin_and_rst_in_both_directions", || {
        run_against_kernel(
            |_| {},
            fin_and_rst_both_ways,
            |(replies, mss, [client_fin, server_fin, client_rst, server_rst]), server, _| {
                assert_eq!(replies, 3, "every ping answered");
                // 1514-byte frames (MTU 1500 + 14): the stack announces MSS 1460.
                assert_eq!(mss, 1460, "MSS the kernel uses towards the stack");
                assert!(client_fin, "client FIN: echo then EOF");
                assert!(server_fin, "server FIN: greeting then EOF");
                assert!(client_rst, "client RST after an echo");
                assert!(server_rst, "server RST seen as ECONNRESET by the kernel");
                assert_eq!(server.opened, 5);
                assert_eq!(
                    server.graceful, 3,
                    "the FIN cases end gracefully on the stack side"
                );
                assert_eq!(
                    server.reset, 2,
                    "the two RST cases end in a reset on the stack side"
                );
            },
        );
    });
}

/// What one lcore's stack did in the two-lcore test.
struct LcoreReport {
    opened: usize,
    graceful: usize,
    stats: hioload_stack::StackStats,
    steer: hioload_stack::SteerStats,
}

#[test]
fn two_lcores_share_a_port_each_flow_on_one_lcore() {
    isolated("two_lcores_share_a_port_each_flow_on_one_lcore", || {
        use hioload_stack::{SteeredQueue, Steering};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        let tap = format!("hlm{}", std::process::id());
        let ns = Netns::create();
        let eal = init_eal(&[]);
        let socket = eal.main_lcore().socket();
        let pool_config = MempoolConfig {
            mbufs: 8191,
            cache_size: 256,
            socket,
            ..MempoolConfig::default()
        };
        let pool = Mempool::new(&eal, "stack_mq", &pool_config).unwrap();
        {
            let mut port =
                Port::attach(&eal, &format!("net_tap0,iface={tap}")).expect("net_tap vdev");
            // Two queue pairs and no RSS: the kernel spreads flows over the queues by a hash of
            // its own, so lcores must hand packets to each other.
            let port_config = PortConfig {
                rx_queues: 2,
                tx_queues: 2,
                rx_descriptors: 512,
                tx_descriptors: 512,
                rss: false,
                ..PortConfig::default()
            };
            let configured = port.configure(&port_config, &[&pool]).unwrap();
            assert_eq!(configured.rss_hash, 0);
            port.start().unwrap();
            support::run("ip", &["link", "set", &tap, "netns", &ns.name]);
            ns.exec(&["ip", "addr", "add", "198.18.0.1/24", "dev", &tap]);
            ns.exec(&["ip", "link", "set", &tap, "up"]);

            let profile = PortProfile::of(&port).unwrap();
            let steering = Steering::new(2, 1024, false);
            let lcores = [eal.main_lcore(), eal.worker_lcores()[0]];
            let mut jobs = Vec::new();
            for (index, queue) in port.queues().into_iter().enumerate() {
                let mut config = StackConfig::new(STACK_IP, 24);
                config.max_connections = 1024;
                config.rx_ring = 4096;
                config.tx_ring = 4096;
                let steered = SteeredQueue::new(queue, index, steering.clone(), pool.clone());
                let mut stack =
                    Stack::new(&eal, steered, pool.clone(), profile, socket, config).unwrap();
                stack.listen(ECHO);
                jobs.push((lcores[index], stack));
            }
            let idle_in_use = pool.in_use();

            let done = Arc::new(AtomicBool::new(false));
            let client_done = done.clone();
            let client = in_netns(&ns.name, move || {
                let replies = ping(2);
                let served = thousand_clients(200);
                client_done.store(true, Ordering::Release);
                (replies, served)
            });
            let reports = eal
                .run_on(jobs, |_lcore, mut stack| {
                    let mut server = EchoServer::default();
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                        if stack.poll(&mut server) == 0 {
                            std::thread::yield_now(); // the lcores share one CPU in tests
                        }
                    }
                    let settle = Instant::now() + Duration::from_secs(5);
                    while (stack.stats().sockets > 0 || stack.tx_pending() > 0)
                        && Instant::now() < settle
                    {
                        if stack.poll(&mut server) == 0 {
                            std::thread::yield_now();
                        }
                    }
                    for _ in 0..100 {
                        stack.poll(&mut server);
                    }
                    LcoreReport {
                        opened: server.opened,
                        graceful: server.graceful,
                        stats: stack.stats(),
                        steer: stack.queue().stats(),
                    }
                })
                .unwrap();
            let (replies, served) = client.join().expect("client thread");
            for (i, r) in reports.iter().enumerate() {
                println!(
                    "lcore {i}: {} opened, {} graceful; {:?}; {:?}",
                    r.opened, r.graceful, r.stats, r.steer
                );
            }
            assert_eq!(replies, 2, "ping answered (by lcore 0)");
            assert_eq!(served, 200);
            assert_eq!(
                reports.iter().map(|r| r.opened).sum::<usize>(),
                200,
                "each connection opened on exactly one lcore"
            );
            assert_eq!(reports.iter().map(|r| r.graceful).sum::<usize>(), 200);
            assert!(
                reports.iter().all(|r| r.opened > 0),
                "both lcores own flows"
            );
            assert!(
                reports.iter().map(|r| r.steer.handed_over).sum::<u64>() > 0,
                "packets were handed to their flow's lcore"
            );
            assert_eq!(reports.iter().map(|r| r.steer.inbox_full).sum::<u64>(), 0);
            assert!(
                reports[1].steer.arp_copies + reports[0].steer.arp_copies > 0,
                "lcore 1 got ARP copies"
            );
            for r in &reports {
                assert_eq!((r.stats.sockets, r.stats.open, r.stats.pending), (0, 0, 0));
                assert_eq!(r.stats.syn_dropped, 0);
            }
            assert_eq!(steering.queued(), 0, "every inbox was drained");
            assert_eq!(
                pool.in_use(),
                idle_in_use,
                "mbufs in use are back to the idle count"
            );
        }
        support::assert_pool_full(&pool);
        drop(ns);
    });
}

/// A raw socket (root; `IPPROTO_RAW` implies `IP_HDRINCL`) for hand-made IPv4 packets.
fn raw_ip_socket() -> libc::c_int {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    fd
}

/// Send one TCP SYN from `src`:`src_port` to the echo port over raw socket `fd`; false if the
/// kernel refused it (e.g. ENOBUFS under a flood).
fn send_syn(fd: libc::c_int, src: Ipv4Addr, src_port: u16, seq: u32) -> bool {
    let src = src.octets();
    let mut pkt = [0u8; 40];
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&40u16.to_be_bytes());
    pkt[8] = 64;
    pkt[9] = 6;
    pkt[12..16].copy_from_slice(&src);
    pkt[16..20].copy_from_slice(&STACK_IP.octets());
    let tcp = &mut pkt[20..];
    tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&ECHO.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let mut pseudo = [0u8; 32];
    pseudo[0..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&STACK_IP.octets());
    pseudo[8..12].copy_from_slice(&[0, 6, 0, 20]);
    pseudo[12..].copy_from_slice(tcp);
    let sum = internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(STACK_IP).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: valid buffer and address.
    let r = unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            &dst as *const _ as *const libc::sockaddr,
            std::mem::size_of_val(&dst) as u32,
        )
    };
    r == 40
}

/// Raw SYNs to the echo port from addresses of the subnet that nobody answers for.
fn spoofed_syns(count: u8) {
    let fd = raw_ip_socket();
    for i in 0..count {
        assert!(
            send_syn(fd, Ipv4Addr::new(198, 18, 0, 50 + i), 40_000, 0x1234_5678),
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

#[test]
fn a_full_backlog_evicts_its_oldest_half_open_connection() {
    isolated(
        "a_full_backlog_evicts_its_oldest_half_open_connection",
        || {
            run_against_kernel(
                |c| {
                    c.backlog = 4;
                    c.handshake_timeout_ms = 500;
                },
                || {
                    // Fill the backlog with half-open connections whose peers never answer.
                    spoofed_syns(4);
                    std::thread::sleep(Duration::from_millis(100));
                    // A new client is not refused: its SYN takes the oldest half-open place.
                    let started = Instant::now();
                    let echoed = echo_stream(1000, 5);
                    let took = started.elapsed();
                    // The other three expire after the handshake timeout.
                    std::thread::sleep(Duration::from_millis(800));
                    (echoed, took)
                },
                |(echoed, took), server, stack| {
                    assert_eq!(echoed, 1000, "the new client is served");
                    assert!(
                        took < Duration::from_millis(500),
                        "served at once, not after a SYN retransmission: {took:?}"
                    );
                    assert_eq!(server.opened, 1);
                    let stats = stack.stats();
                    assert_eq!(stats.syn_dropped, 0, "no SYN is refused");
                    assert_eq!(stats.half_open_evicted, 1, "the oldest made room");
                    assert_eq!(stats.handshake_timeouts, 3, "the other three expired");
                    assert_eq!(stats.handshakes_failed, 4);
                },
            );
        },
    );
}

/// What the SYN-flood client saw.
struct FloodReport {
    syns_sent: usize,
    flood_took: Duration,
    /// Connect + one echo, for each legitimate client during the flood.
    latencies: Vec<Duration>,
}

/// `count` SYNs to the echo port from random addresses of 198.18.0.0/15 (never the namespace's
/// or the stack's) and random ports, paced evenly over `over` in batches. Returns SYNs sent.
fn syn_flood(count: usize, over: Duration, seed: u64) -> usize {
    const BATCH: usize = 25;
    let fd = raw_ip_socket();
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let batches = count.div_ceil(BATCH);
    let start = Instant::now();
    let deadline = start + over + Duration::from_secs(5);
    let mut sent = 0;
    for b in 0..batches {
        let due = start + over.mul_f64(b as f64 / batches as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if Instant::now() > deadline {
            break;
        }
        for _ in 0..BATCH.min(count - b * BATCH) {
            let r = next();
            let host = (r >> 40) as u32 & 0x1_ffff; // 17 bits: 198.18.0.0/15
            if host < 256 && matches!(host, 0 | 1 | 2 | 255) {
                continue; // the subnet's network, the namespace, the stack, broadcast
            }
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host);
            let port = 1024 + (r >> 8) as u16 % 64_000;
            sent += usize::from(send_syn(fd, src, port, r as u32));
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    sent
}

/// One legitimate client: connect, one message echoed, close. Returns how long it took.
fn one_echo(i: usize) -> Duration {
    let started = Instant::now();
    let mut s = connect(ECHO);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let msg = format!("legit {i:02}");
    s.write_all(msg.as_bytes()).unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).expect("echo under the flood");
    let took = started.elapsed();
    assert_eq!(&buf, msg.as_bytes());
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_some(&mut s, &mut [0u8; 1]).unwrap(), 0);
    took
}

#[test]
fn syn_flood_does_not_lock_out_legitimate_clients() {
    isolated("syn_flood_does_not_lock_out_legitimate_clients", || {
        const FLOOD: usize = 5000;
        const FLOOD_TIME: Duration = Duration::from_secs(2);
        const CLIENTS: usize = 6;
        run_against_kernel(
            |c| {
                // Default backlog (1024) and short timeout under pressure (1 s); a normal
                // timeout shorter than the default 20 s so the leftovers expire within the test.
                c.handshake_timeout_ms = 3000;
                // As behind a router: the SYN-ACKs to spoofed sources outside the /24 go out
                // (to the namespace, which does not forward them), each one costing a frame.
                c.gateway = Some(Ipv4Addr::new(198, 18, 0, 1));
            },
            || {
                let flood = std::thread::spawn(|| {
                    let started = Instant::now();
                    (
                        syn_flood(FLOOD, FLOOD_TIME, 0x5eed_f100d),
                        started.elapsed(),
                    )
                });
                // The backlog is full after ~0.4 s (2,500 SYNs/s); clients come while it is.
                std::thread::sleep(Duration::from_millis(500));
                let latencies = (0..CLIENTS)
                    .map(|i| {
                        let took = one_echo(i);
                        std::thread::sleep(Duration::from_millis(200));
                        took
                    })
                    .collect();
                let (syns_sent, flood_took) = flood.join().expect("flood thread");
                // Let the pressure timeout clear the backlog down to half.
                std::thread::sleep(Duration::from_millis(1500));
                FloodReport {
                    syns_sent,
                    flood_took,
                    latencies,
                }
            },
            |report, server, stack| {
                let stats = stack.stats();
                let worst = report.latencies.iter().max().copied().unwrap_or_default();
                println!(
                    "flood: {} SYNs sent in {:?}; legitimate connect+echo latencies {:?} \
                     (worst {worst:?}); evicted {}, handshake timeouts {}, SYNs dropped {}",
                    report.syns_sent,
                    report.flood_took,
                    report.latencies,
                    stats.half_open_evicted,
                    stats.handshake_timeouts,
                    stats.syn_dropped
                );
                assert!(report.syns_sent > FLOOD * 9 / 10, "the flood went out");
                assert!(
                    report.flood_took < FLOOD_TIME + Duration::from_millis(500),
                    "the flood ran at the intended rate: {:?}",
                    report.flood_took
                );
                assert_eq!(server.opened, CLIENTS, "every legitimate client was served");
                assert!(
                    worst < Duration::from_secs(1),
                    "legitimate clients are served within 1 s under the flood: {:?}",
                    report.latencies
                );
                assert_eq!(stats.syn_dropped, 0, "no SYN is refused");
                assert!(
                    stats.half_open_evicted > 1000,
                    "the flood overflowed the backlog and evicted: {stats:?}"
                );
                assert!(
                    stats.handshake_timeouts > 0,
                    "the leftovers expired: {stats:?}"
                );
                assert_eq!(
                    stats.handshakes_failed,
                    stats.half_open_evicted + stats.handshake_timeouts,
                    "every failed handshake was a flood SYN, evicted or expired"
                );
            },
        );
    });
}

#[test]
fn stack_connects_to_a_kernel_server() {
    isolated("stack_connects_to_a_kernel_server", || {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        run_against_kernel_with(
            |_| {},
            move |stack, app| {
                app.outgoing = (0..10_000u32).map(|i| pattern(7, i as u64)).collect();
                ready_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the kernel server listens");
                let started = Instant::now();
                stack
                    .connect("198.18.0.1:9000".parse().unwrap())
                    .expect("connect");
                println!("connect issued after {:?}", started.elapsed());
            },
            move || {
                // A kernel echo server in the namespace, for one connection.
                let listener = std::net::TcpListener::bind("198.18.0.1:9000").unwrap();
                let started = Instant::now();
                ready_tx.send(()).unwrap();
                let (mut s, peer) = listener.accept().expect("the stack connects");
                let mut buf = [0u8; 4096];
                let mut echoed = 0;
                loop {
                    match read_some(&mut s, &mut buf).expect("read from the stack") {
                        0 => break, // the stack's FIN
                        n => {
                            s.write_all(&buf[..n]).unwrap();
                            echoed += n;
                        }
                    }
                }
                let took = started.elapsed();
                println!("connected, echoed and closed in {took:?}");
                (peer, echoed, took)
            },
            |(peer, echoed, took), app, _| {
                assert_eq!(peer.ip(), std::net::IpAddr::V4(STACK_IP));
                assert!(
                    OUTGOING_LOCAL_PORTS.contains(&peer.port()),
                    "an ephemeral port: {peer}"
                );
                assert_eq!(echoed, 10_000);
                assert_eq!(
                    app.came_back, app.outgoing,
                    "the kernel echoed our bytes intact"
                );
                assert_eq!((app.opened, app.graceful), (1, 1));
                // ARP for the server is resolved by the stack; the answer is used at once, not
                // after smoltcp's one-second silence.
                assert!(took < Duration::from_millis(900), "exchange took {took:?}");
            },
        );
    });
}
