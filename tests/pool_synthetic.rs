//! Buffer pools on synthetic two-node machines: placement per node, return on drop, worker
//! cache spill and refill, limits, and concurrent use.

use hioload_ws::pool::{PoolConfig, PoolError, PoolManager, PooledBuf};
use hioload_ws::topology::Topology;

const KIB: usize = 1024;

fn two_nodes() -> Topology {
    Topology::synthetic("package:2 numa:1 core:2 pu:1").unwrap()
}

fn one_node() -> Topology {
    Topology::synthetic("numa:1 core:2 pu:1").unwrap()
}

/// Small classes (2, 4, 8 KiB) and small limits, so that tests reach them.
fn small_config() -> PoolConfig {
    PoolConfig {
        min_buffer: 2 * KIB,
        max_buffer: 8 * KIB,
        node_budget: 1024 * KIB,
        max_buffers_per_class: 64,
        worker_cache_bytes: 8 * KIB, // 4 buffers of 2 KiB, 2 of 4 KiB, 1 of 8 KiB
        slab_bytes: 16 * KIB,        // 8 buffers of 2 KiB per slab
    }
}

/// Every buffer ever carved is back in its node's shared queue.
fn assert_all_returned(manager: &PoolManager) {
    let stats = manager.stats();
    assert_eq!(stats.in_use(), 0, "{stats:#?}");
    for node in &stats.nodes {
        for class in &node.classes {
            assert_eq!(
                class.free_shared, class.allocated,
                "node {} class {}: {stats:#?}",
                node.node, class.size
            );
        }
    }
}

#[test]
fn one_pool_per_node_and_get_honours_the_preferred_node() {
    let manager = PoolManager::new(&two_nodes(), small_config()).unwrap();
    assert_eq!(manager.nodes(), vec![0, 1]);
    let buf = manager.get(3000, Some(1)).unwrap();
    assert_eq!(buf.node(), 1);
    assert_eq!((buf.len(), buf.capacity()), (0, 4 * KIB));
    let stats = manager.stats();
    assert_eq!(stats.node(1).unwrap().in_use(), 1);
    assert_eq!(stats.node(0).unwrap().in_use(), 0);
    let class = stats.node(1).unwrap().class(4 * KIB).unwrap();
    assert_eq!((class.misses, class.hits, class.allocated), (1, 0, 4)); // one 16 KiB slab of 4 KiB buffers
    drop(buf);
    assert_eq!(manager.stats().in_use(), 0);

    // The freed buffer is reused: a hit, no new memory.
    let again = manager.get(4 * KIB, Some(1)).unwrap();
    let class = manager
        .stats()
        .node(1)
        .unwrap()
        .class(4 * KIB)
        .unwrap()
        .clone();
    assert_eq!((class.hits, class.misses, class.in_use), (1, 1, 1));
    again.release();
    assert_all_returned(&manager);
}

#[test]
fn errors_name_the_problem() {
    let manager = PoolManager::new(&two_nodes(), small_config()).unwrap();
    assert_eq!(
        manager.get(8 * KIB + 1, None).unwrap_err(),
        PoolError::TooLarge {
            requested: 8 * KIB + 1,
            max: 8 * KIB
        }
    );
    assert_eq!(
        manager.get(10, Some(2)).unwrap_err(),
        PoolError::UnknownNode(2)
    );
    assert_eq!(
        manager.worker_cache(9).unwrap_err(),
        PoolError::UnknownNode(9)
    );
    assert!(PoolManager::new(
        &two_nodes(),
        PoolConfig {
            min_buffer: 1000,
            ..small_config()
        }
    )
    .is_err());
}

#[test]
fn worker_cache_serves_its_node_and_returns_buffers_on_drop() {
    let manager = PoolManager::new(&two_nodes(), small_config()).unwrap();
    let cache = manager.worker_cache(1).unwrap();
    assert_eq!(cache.node(), 1);
    let local = cache.get(100, None).unwrap();
    let remote = cache.get(100, Some(0)).unwrap();
    assert_eq!((local.node(), remote.node()), (1, 0));
    assert_eq!(manager.stats().in_use(), 2);
    drop((local, remote));
    assert_eq!(manager.stats().in_use(), 0);
    drop(cache);
    assert_all_returned(&manager);
}

#[test]
fn worker_cache_spills_and_refills_in_half_batches() {
    // Slabs of 16 buffers of 2 KiB; the cache keeps 4 of them.
    let manager = PoolManager::new(
        &one_node(),
        PoolConfig {
            slab_bytes: 32 * KIB,
            ..small_config()
        },
    )
    .unwrap();
    let cache = manager.worker_cache(0).unwrap();
    assert_eq!(cache.capacity(2 * KIB), 4);
    let shared_free = |m: &PoolManager| m.stats().nodes[0].class(2 * KIB).unwrap().free_shared;

    // First get: a miss carves a slab of 16; 1 handed out, 4 kept by the cache (its capacity),
    // 11 to the shared queue.
    let first = cache.get(2 * KIB, None).unwrap();
    assert_eq!((cache.cached(2 * KIB), shared_free(&manager)), (4, 11));
    // Four more come from the cache without touching the shared queue.
    let mut held: Vec<PooledBuf> = (0..4).map(|_| cache.get(2 * KIB, None).unwrap()).collect();
    assert_eq!((cache.cached(2 * KIB), shared_free(&manager)), (0, 11));
    // Cache empty: the next get takes one from the shared queue and refills half the capacity (2).
    held.push(cache.get(2 * KIB, None).unwrap());
    assert_eq!((cache.cached(2 * KIB), shared_free(&manager)), (2, 8));
    let stats = manager.stats().nodes[0].class(2 * KIB).unwrap().clone();
    assert_eq!(
        (stats.misses, stats.hits, stats.in_use, stats.allocated),
        (1, 5, 6, 16)
    );

    // Returning: the cache fills to 4, then each overflow spills half (2) to the shared queue.
    held.push(first);
    let mut seen = Vec::new();
    for buf in held.drain(..) {
        drop(buf);
        seen.push((cache.cached(2 * KIB), shared_free(&manager)));
    }
    assert_eq!(
        seen,
        vec![(3, 8), (4, 8), (3, 10), (4, 10), (3, 12), (4, 12)]
    );
    assert_eq!(manager.stats().in_use(), 0);

    // A dropped cache hands its stock back; its counters survive in the node's stats.
    drop(cache);
    let stats = manager.stats().nodes[0].class(2 * KIB).unwrap().clone();
    assert_eq!((stats.misses, stats.hits, stats.in_use), (1, 5, 0));
    assert_all_returned(&manager);
}

#[test]
fn exhausted_node_falls_back_to_the_other_node_then_fails() {
    let config = PoolConfig {
        max_buffers_per_class: 4,
        ..small_config()
    };
    let manager = PoolManager::new(&two_nodes(), config).unwrap();
    let cache = manager.worker_cache(0).unwrap();
    let mut held: Vec<PooledBuf> = (0..4).map(|_| cache.get(8 * KIB, None).unwrap()).collect();
    assert!(held.iter().all(|b| b.node() == 0));
    // Node 0 is at its limit: the next ones come from node 1.
    for _ in 0..4 {
        let buf = cache.get(8 * KIB, None).unwrap();
        assert_eq!(buf.node(), 1);
        held.push(buf);
    }
    // Both nodes at their limit with every buffer in use.
    assert_eq!(
        cache.get(8 * KIB, None).unwrap_err(),
        PoolError::Exhausted { size: 8 * KIB }
    );
    assert_eq!(
        manager.get(8 * KIB, Some(1)).unwrap_err(),
        PoolError::Exhausted { size: 8 * KIB }
    );
    let stats = manager.stats();
    assert_eq!(stats.in_use(), 8);
    assert_eq!(stats.node(0).unwrap().class(8 * KIB).unwrap().allocated, 4);
    // Node 0 was found full by gets 5-8, the failed cache get and the failed manager get (its
    // fallback); node 1 by those last two.
    assert_eq!(stats.node(0).unwrap().class(8 * KIB).unwrap().exhausted, 6);
    assert_eq!(stats.node(1).unwrap().class(8 * KIB).unwrap().exhausted, 2);
    // Other classes are unaffected.
    assert!(cache.get(2 * KIB, None).is_ok());
    // One returned buffer makes a get succeed again, from that buffer's node.
    let returned = held.pop().unwrap();
    assert_eq!(returned.node(), 1);
    drop(returned);
    assert_eq!(cache.get(8 * KIB, None).unwrap().node(), 1);
    drop(held);
    drop(cache);
    assert_all_returned(&manager);
}

#[test]
fn node_budget_bounds_all_classes_together() {
    // 16 KiB per node: one slab of two 8 KiB buffers uses it all.
    let config = PoolConfig {
        node_budget: 16 * KIB,
        ..small_config()
    };
    let manager = PoolManager::new(&one_node(), config).unwrap();
    let big = manager.get(8 * KIB, None).unwrap();
    assert_eq!(
        manager.get(2 * KIB, None).unwrap_err(),
        PoolError::Exhausted { size: 2 * KIB }
    );
    let node = manager.stats().nodes[0].clone();
    assert_eq!(
        (node.reserved_bytes, node.budget_bytes),
        (16 * KIB, 16 * KIB)
    );
    // Synthetic machine: nothing is bound.
    assert_eq!(node.bound_bytes, 0);
    let second = manager.get(8 * KIB, None).unwrap(); // the slab's second buffer
    drop((big, second));
    assert_all_returned(&manager);
}

#[test]
fn buffer_fills_like_a_receive_buffer() {
    let manager = PoolManager::new(&one_node(), small_config()).unwrap();
    let mut buf = manager.get(10, None).unwrap();
    assert!(buf.is_empty());
    assert_eq!(buf.spare_mut().len(), 2 * KIB);
    buf.spare_mut()[..5].copy_from_slice(b"hello");
    buf.commit(5);
    assert_eq!(&buf[..], b"hello");
    buf.extend_from_slice(b" world").unwrap();
    assert_eq!(&*buf, b"hello world");
    buf.consume(6);
    assert_eq!(&*buf, b"world");
    buf[0] = b'W';
    assert_eq!(buf.as_ref(), b"World");
    assert!(buf.extend_from_slice(&vec![0u8; 2 * KIB]).is_err());
    assert_eq!(buf.len(), 5, "a failed extend leaves the buffer untouched");
    buf.set_len(2 * KIB);
    assert_eq!(buf.spare_mut().len(), 0);
    buf.clear();
    assert_eq!(buf.len(), 0);
    assert_eq!(
        format!("{buf:?}"),
        "PooledBuf { len: 0, capacity: 2048, node: 0 }"
    );
}

#[test]
#[should_panic(expected = "beyond spare capacity")]
fn commit_past_capacity_panics() {
    let manager = PoolManager::new(&one_node(), small_config()).unwrap();
    let mut buf = manager.get(2 * KIB, None).unwrap();
    buf.commit(2 * KIB + 1);
}

#[test]
fn concurrent_workers_balance_their_counts() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 2_000;
    let manager = PoolManager::new(&two_nodes(), small_config()).unwrap();
    let gets: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let manager = manager.clone();
                scope.spawn(move || {
                    let cache = manager.worker_cache((t % 2) as u32).unwrap();
                    let mut held: Vec<PooledBuf> = Vec::new();
                    let mut gets = 0;
                    let mut seed = t as u64 + 1;
                    for round in 0..ROUNDS {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let size = [100, 3 * KIB, 8 * KIB][(seed >> 33) as usize % 3];
                        // Mostly the own cache; sometimes the other node through the shared path.
                        let buf = if round % 7 == 0 {
                            manager.get(size, Some(((t + 1) % 2) as u32))
                        } else {
                            cache.get(size, None)
                        };
                        if let Ok(mut buf) = buf {
                            gets += 1;
                            buf.extend_from_slice(&[t as u8; 64]).unwrap();
                            held.push(buf);
                        }
                        // Hold up to 16 buffers, release in varying order.
                        if held.len() > 16 || (seed >> 40) % 4 == 0 {
                            let at = (seed >> 20) as usize % held.len().max(1);
                            if at < held.len() {
                                let buf = held.swap_remove(at);
                                assert!(
                                    buf.iter().all(|&b| b == t as u8),
                                    "buffer shared between owners"
                                );
                            }
                        }
                    }
                    gets
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let stats = manager.stats();
    assert_eq!(stats.hits() + stats.misses(), gets as u64);
    assert!(
        gets > THREADS * ROUNDS * 9 / 10,
        "most gets succeed: {gets}"
    );
    assert_all_returned(&manager);
}
