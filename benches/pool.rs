//! Buffer pool throughput: get + drop of one buffer through a worker cache, through the shared
//! queues, and, for scale, a heap `Vec` of the same size. Prints ns per get+drop.
//!
//! `cargo bench -p hioload-ws --bench pool` (a plain binary: `harness = false`).

use std::hint::black_box;
use std::time::Instant;

use hioload_ws::pool::{PoolConfig, PoolManager};
use hioload_ws::topology::Topology;

const ROUNDS: u32 = 2_000_000;

fn per_op(label: &str, size: usize, mut op: impl FnMut()) {
    for _ in 0..ROUNDS / 10 {
        op(); // warm up: slabs taken, caches filled
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        op();
    }
    let ns = start.elapsed().as_nanos() as f64 / ROUNDS as f64;
    println!("{label:<28} {size:>8} B  {ns:>7.1} ns/get+drop");
}

fn main() {
    let topology = Topology::discover().expect("hwloc topology");
    println!("{topology}");
    let manager = PoolManager::new(&topology, PoolConfig::default()).expect("pool");
    let cache = manager
        .worker_cache(topology.nodes()[0].os_index())
        .expect("cache");
    for size in [2048, 16 << 10, 64 << 10] {
        per_op("worker cache", size, || {
            drop(black_box(cache.get(size, None).unwrap()))
        });
        per_op("shared queue (manager.get)", size, || {
            drop(black_box(manager.get(size, Some(0)).unwrap()))
        });
        per_op("Vec::with_capacity", size, || {
            drop(black_box(Vec::<u8>::with_capacity(size)))
        });
    }
    let stats = manager.stats();
    println!(
        "hits {} misses {} in use {}",
        stats.hits(),
        stats.misses(),
        stats.in_use()
    );
}
