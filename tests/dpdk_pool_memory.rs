//! The DPDK pool backing on a real EAL: slabs are DPDK memory of the socket asked for (hugepages,
//! as this EAL runs on them), a socket DPDK has no memory on is refused rather than served from
//! another, and `release_memory` gives every slab back once every buffer is home.
//!
//! One EAL per process: this file holds exactly one test. Needs root and reserved hugepages
//! (`echo 1024 > /proc/sys/vm/nr_hugepages`). With `--no-huge` the same memory would be DPDK's
//! (the segment lookup still finds it, on socket 0) but on 4 KiB pages and not bound to a node:
//! the backing then reports its slabs unbound (`bound_bytes` 0).

#![cfg(feature = "dpdk")]

use std::sync::Arc;

use hioload_ws::dpdk::hioload_dpdk::{Eal, NumaAllocator, SocketId};
use hioload_ws::pool::{Backing, DpdkBacking, PoolConfig, PoolManager};

#[test]
fn dpdk_backed_pools_hand_out_hugepage_memory_of_the_requested_socket() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (hugepages)");
    let prefix = format!("hlpm-{}", std::process::id());
    let (eal, _) = Eal::init([
        "test",
        "--no-pci",
        "--no-telemetry",
        "--in-memory",
        "--lcores=0@0",
        &format!("--file-prefix={prefix}"),
    ])
    .expect("EAL up (are hugepages reserved?)");
    assert!(eal.has_hugepages(), "this test expects hugepage memory");
    let socket = eal.main_lcore().socket();
    let node = u32::try_from(socket.0).expect("the main lcore has a socket");
    let probe = NumaAllocator::new(&eal);

    // The backing itself: a slab is DPDK memory on that socket, on hugepages, reported bound.
    let backing = Arc::new(DpdkBacking::new(NumaAllocator::new(&eal)));
    let region = backing.allocate(node, 256 << 10).expect("a slab");
    let seg = probe
        .segment_of(region.ptr().as_ptr())
        .expect("the slab is DPDK memory");
    assert_eq!(seg.socket, socket);
    assert!(
        seg.page_size >= 2 << 20,
        "hugepage, got {} B pages",
        seg.page_size
    );
    assert!(region.is_bound());
    assert_eq!(region.ptr().as_ptr() as usize % 4096, 0, "4 KiB aligned");
    // SAFETY: the region's 256 KiB are ours and initialised (zeroed).
    let bytes = unsafe { std::slice::from_raw_parts(region.ptr().as_ptr(), region.len()) };
    assert!(bytes.iter().all(|&b| b == 0), "zeroed");
    drop(region);
    // Ordinary heap memory is not DPDK's.
    let heap = vec![0u8; 4096];
    assert!(probe.segment_of(heap.as_ptr()).is_none());
    // A socket without DPDK memory is an error, not memory from elsewhere.
    let sockets = eal.sockets();
    let missing = (0..8)
        .find(|&s| !sockets.contains(&SocketId(s)))
        .expect("a socket id DPDK does not know") as u32;
    assert!(backing.allocate(missing, 64 << 10).is_err());

    // Pools over it: buffers come from that memory, stats count them, release gives it back.
    let pools = PoolManager::with_nodes(
        &[(node, Vec::new())],
        PoolConfig::default(),
        backing.clone(),
    )
    .unwrap();
    let cache = pools.worker_cache(node).unwrap();
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut buf = cache.get(20_000, None).unwrap();
        buf.extend_from_slice(&[0xab; 20_000]).unwrap();
        let seg = probe
            .segment_of(buf.as_ptr())
            .expect("pool buffer is DPDK memory");
        assert_eq!(seg.socket, socket);
        assert!(seg.page_size >= 2 << 20);
        held.push(buf);
    }
    let stats = pools.stats();
    assert_eq!(stats.in_use(), 20);
    let n = stats.node(node).unwrap();
    assert!(n.reserved_bytes >= 20 * 32768);
    assert_eq!(
        n.bound_bytes, n.reserved_bytes,
        "hugepage slabs count as bound"
    );
    assert!(!pools.release_memory(), "buffers are out: nothing is freed");
    assert_eq!(
        pools.stats().node(node).unwrap().reserved_bytes,
        n.reserved_bytes
    );
    held.clear();
    drop(cache);
    assert_eq!(pools.stats().in_use(), 0);
    assert!(pools.release_memory(), "every buffer is home");
    assert_eq!(pools.stats().node(node).unwrap().reserved_bytes, 0);
    // Still usable afterwards (fresh memory), until the backing is closed.
    drop(pools.get(100, Some(node)).expect("the pool grows again"));
    assert!(pools.release_memory());
    backing.close();
    assert!(
        pools.get(100, Some(node)).is_err(),
        "closed: no more DPDK memory"
    );

    drop(pools);
    drop(backing);
    drop(probe);
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/{prefix}"));
}
