//! rx/tx burst ceiling: 32-mbuf bursts round-tripping through a net_ring port on one lcore.
//!
//! net_ring loops each tx queue back to the rx queue of the same index, so `tx_burst` then
//! `rx_burst` moves a burst through the ethdev fast path and back without a wire. Two loops:
//! - `recycle`: the same 32 mbufs go around forever (rx/tx path only);
//! - `alloc+free`: every burst is allocated from the mempool and freed after rx (adds the pool).
//!
//! These are the ceiling the TCP stack is later measured against. Run as root:
//!   cargo run --release -p hioload-dpdk --example ring_burst_bench -- [--seconds N] [EAL args]
//! Without EAL args it uses `--no-pci --in-memory --vdev=net_ring0` (or `--no-huge` when no
//! hugepages are free) on the first allowed CPU; given EAL args must include `--vdev=net_ring0`.

use std::time::{Duration, Instant};

use hioload_dpdk::{Burst, Eal, Mempool, MempoolConfig, Port, PortConfig};

const BURST: usize = 32;

fn default_eal_args() -> Vec<String> {
    let prefix = format!("hioload-bench-{}", std::process::id());
    let mem = if hugepages_free() >= 64 {
        vec!["--in-memory"]
    } else {
        vec!["--no-huge", "--no-shconf", "-m", "512"]
    };
    let mut args = vec![
        "ring_burst_bench".to_string(),
        format!("--file-prefix={prefix}"),
        "--no-pci".into(),
    ];
    args.extend(["--no-telemetry", "--vdev=net_ring0", "--log-level=warning"].map(String::from));
    args.push(format!("-l{}", first_allowed_cpu()));
    args.extend(mem.into_iter().map(String::from));
    args
}

fn hugepages_free() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn first_allowed_cpu() -> usize {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return (0..libc::CPU_SETSIZE as usize)
                .find(|&c| libc::CPU_ISSET(c, &set))
                .unwrap_or(0);
        }
    }
    0
}

/// Round trips of full bursts for `duration`; returns packets per second.
fn run(port: &mut Port, duration: Duration, mut step: impl FnMut(&mut Port) -> usize) -> f64 {
    // Warm-up, then timed run; the clock is read once per 1024 bursts.
    for _ in 0..10_000 {
        step(port);
    }
    let start = Instant::now();
    let mut packets = 0u64;
    loop {
        for _ in 0..1024 {
            packets += step(port) as u64;
        }
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return packets as f64 / elapsed.as_secs_f64();
        }
    }
}

fn main() {
    let mut cli: Vec<String> = std::env::args().collect();
    let mut seconds = 3.0f64;
    if let Some(pos) = cli.iter().position(|a| a == "--seconds") {
        seconds = cli
            .get(pos + 1)
            .and_then(|s| s.parse().ok())
            .expect("--seconds takes a number");
        cli.drain(pos..pos + 2);
    }
    let eal_args = if cli.len() > 1 {
        cli
    } else {
        default_eal_args()
    };
    let prefix = eal_args
        .iter()
        .find_map(|a| a.strip_prefix("--file-prefix=").map(String::from));
    let (eal, _) = Eal::init(&eal_args).unwrap_or_else(|e| panic!("EAL init: {e}"));
    let duration = Duration::from_secs_f64(seconds);

    let pool_config = MempoolConfig {
        mbufs: 4095,
        cache_size: 256,
        socket: eal.main_lcore().socket(),
        ..Default::default()
    };
    let pool = Mempool::new(&eal, "bench", &pool_config).expect("mempool");
    {
        let mut port =
            Port::open_by_name(&eal, "net_ring0").expect("net_ring0 (pass --vdev=net_ring0)");
        port.configure(&PortConfig::default(), &[&pool])
            .expect("configure");
        port.start().expect("start");

        // recycle: one burst of 64-byte frames goes round and round.
        let mut burst = Burst::<BURST>::new();
        assert!(pool.alloc_into(&mut burst, BURST));
        for m in burst.as_mut_slice() {
            m.append(64).expect("room").fill(0xab);
        }
        let recycle = run(&mut port, duration, |port| {
            let sent = port.tx_burst(0, &mut burst);
            port.rx_burst(0, &mut burst);
            sent
        });
        burst.clear();

        // alloc+free: fresh mbufs each burst, freed after they come back.
        let alloc_free = run(&mut port, duration, |port| {
            if !pool.alloc_into(&mut burst, BURST) {
                return 0;
            }
            for m in burst.as_mut_slice() {
                m.append(64);
            }
            let sent = port.tx_burst(0, &mut burst);
            burst.clear();
            port.rx_burst(0, &mut burst);
            burst.clear();
            sent
        });
        let stats = port.id().stats().expect("stats");

        println!(
            "{} on lcore {} ({:.0} s per loop, burst {BURST}, 64-byte frames)",
            eal.version(),
            eal.main_lcore().id(),
            seconds
        );
        println!("{:<12} {:>12} {:>10}", "loop", "Mpps/core", "ns/packet");
        for (name, pps) in [("recycle", recycle), ("alloc+free", alloc_free)] {
            println!("{name:<12} {:>12.2} {:>10.2}", pps / 1e6, 1e9 / pps);
        }
        println!(
            "port stats: {} rx, {} tx, {} rx_nombuf",
            stats.ipackets, stats.opackets, stats.rx_nombuf
        );
        assert_eq!(pool.in_use(), 0, "every mbuf came back");
    }
    drop(pool);
    drop(eal);
    if let Some(prefix) = prefix {
        let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
    }
}
