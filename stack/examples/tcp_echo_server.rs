//! A TCP echo server on a DPDK port, one stack per lcore: the wiring an application repeats.
//!
//! Every enabled lcore (main included) polls its own rx/tx queue pair of the first port with its
//! own `Stack`. If the port does RSS on the TCP 4-tuple the NIC keeps each flow on one queue;
//! otherwise (net_tap, net_af_packet) `SteeredQueue` hands each packet to the lcore owning its
//! flow. ARP and ICMP are answered by lcore 0.
//!
//!   tcp_echo_server [EAL args] -- --ip 198.18.0.2/24 [--port 7] [--seconds N]
//!
//! e.g. with a tap device whose kernel side is 198.18.0.1/24 (root):
//!   cargo run --release -p hioload-stack --example tcp_echo_server -- \
//!     -l 0,1 --no-pci --in-memory --vdev=net_tap0,iface=dtap0 -- --ip 198.18.0.2/24
//!   ip addr add 198.18.0.1/24 dev dtap0; ip link set dtap0 up; nc 198.18.0.2 7
//! It stops after `--seconds` or on SIGINT/SIGTERM and prints each lcore's counters.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hioload_dpdk::{Eal, Lcore, Mempool, MempoolConfig, Port, PortConfig};
use hioload_stack::{Conn, ConnEvents, PortProfile, Stack, StackConfig, SteeredQueue, Steering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Echo: the receive ring straight into the send ring.
struct Echo;

impl ConnEvents for Echo {
    fn on_ready(&mut self, conn: &mut Conn<'_>) {
        while conn.recv_and_send(|rx, tx| {
            let n = rx.len().min(tx.free());
            tx.send_all(&[&rx[..n]]);
            n
        }) > 0
        {}
        if conn.is_eof() {
            conn.close();
        }
    }
}

struct Args {
    ip: Ipv4Addr,
    prefix: u8,
    port: u16,
    seconds: Option<f64>,
}

fn parse(app: &[String]) -> Result<Args, String> {
    let mut args = Args {
        ip: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
        port: 7,
        seconds: None,
    };
    let mut it = app.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--ip" => {
                let v = value()?;
                let (ip, prefix) = v
                    .split_once('/')
                    .ok_or("--ip takes ADDR/PREFIX, e.g. 198.18.0.2/24")?;
                args.ip = ip.parse().map_err(|e| format!("--ip {ip}: {e}"))?;
                args.prefix = prefix
                    .parse()
                    .map_err(|e| format!("--ip prefix {prefix}: {e}"))?;
            }
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--seconds" => {
                args.seconds = Some(value()?.parse().map_err(|e| format!("--seconds: {e}"))?)
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.ip.is_unspecified() {
        return Err("--ip ADDR/PREFIX is required".into());
    }
    Ok(args)
}

fn main() {
    let (eal, app) = Eal::init(std::env::args()).unwrap_or_else(|e| panic!("EAL: {e}"));
    let args = parse(&app).unwrap_or_else(|e| {
        eprintln!("tcp_echo_server: {e}\nusage: tcp_echo_server [EAL args] -- --ip ADDR/PREFIX [--port P] [--seconds N]");
        std::process::exit(2)
    });
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let lcores: Vec<Lcore> = eal.lcores();
    let socket = eal.main_lcore().socket();
    let pool_config = MempoolConfig {
        mbufs: 16383,
        cache_size: 256,
        socket,
        ..MempoolConfig::default()
    };
    let pool = Mempool::new(&eal, "echo", &pool_config).expect("mempool");
    {
        let port_id = *eal
            .ports()
            .first()
            .expect("no DPDK port (give --vdev=... or a PCI device)");
        let mut port = Port::open(&eal, port_id).expect("open port");
        let n = lcores.len() as u16;
        let configured = port
            .configure(
                &PortConfig {
                    rx_queues: n,
                    tx_queues: n,
                    ..PortConfig::default()
                },
                &[&pool],
            )
            .expect("configure port");
        port.start().expect("start port");
        let profile = PortProfile::of(&port).expect("port profile");
        println!(
            "{} on {} ({}), {} lcores, RSS {}, listening on {}:{}",
            eal.version(),
            port_id.name().unwrap_or_default(),
            port_id.info().map(|i| i.driver).unwrap_or_default(),
            n,
            if configured.rss_hash != 0 {
                "on"
            } else {
                "off: software steering"
            },
            args.ip,
            args.port
        );
        let steering = Steering::new(lcores.len(), 4096, configured.rss_hash != 0);
        let mut jobs = Vec::new();
        for (index, queue) in port.queues().into_iter().enumerate() {
            let config = StackConfig::new(args.ip, args.prefix);
            let queue = SteeredQueue::new(queue, index, steering.clone(), pool.clone());
            let mut stack = Stack::new(
                &eal,
                queue,
                pool.clone(),
                profile,
                lcores[index].socket(),
                config,
            )
            .unwrap_or_else(|e| panic!("stack on lcore {}: {e}", lcores[index].id()));
            stack.listen(args.port);
            jobs.push((lcores[index], stack));
        }
        let deadline = args
            .seconds
            .map(|s| Instant::now() + Duration::from_secs_f64(s));
        let reports = eal
            .run_on(jobs, |lcore, mut stack| {
                let mut echo = Echo;
                let mut turns = 0u32;
                loop {
                    stack.poll(&mut echo);
                    turns = turns.wrapping_add(1);
                    if turns % 1024 == 0
                        && (STOP.load(Ordering::Relaxed)
                            || deadline.is_some_and(|d| Instant::now() >= d))
                    {
                        STOP.store(true, Ordering::Relaxed);
                        break;
                    }
                }
                format!(
                    "lcore {}: {:?} {:?}",
                    lcore.id(),
                    stack.stats(),
                    stack.queue().stats()
                )
            })
            .expect("run lcores");
        for r in reports {
            println!("{r}");
        }
    }
}
