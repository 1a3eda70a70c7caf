//! Pool memory on the running machine: bound to its NUMA node through hwloc, and resident there.

use hioload_ws::pinning::{CpuAffinity, PlacementPlan};
use hioload_ws::pool::{PoolConfig, PoolManager};
use hioload_ws::topology::Topology;

#[test]
fn worker_buffers_live_on_the_workers_node() {
    let topo = Topology::discover().unwrap();
    let config = PoolConfig {
        max_buffer: 1 << 20,
        node_budget: 64 << 20,
        ..PoolConfig::default()
    };
    let manager = PoolManager::new(&topo, config).unwrap();
    let plan = PlacementPlan::new(&topo, topo.nodes().len(), &CpuAffinity::default()).unwrap();
    std::thread::scope(|scope| {
        for placement in plan.workers().iter().copied() {
            let (manager, topo) = (manager.clone(), topo.clone());
            scope.spawn(move || {
                placement.apply().unwrap();
                let cache = manager.worker_cache(placement.node).unwrap();
                for size in [2048, 64 << 10, 1 << 20] {
                    let mut buf = cache.get(size, None).unwrap();
                    assert_eq!(buf.node(), placement.node);
                    let capacity = buf.capacity();
                    buf.set_len(capacity);
                    assert_eq!(
                        topo.memory_nodes_of(&buf).unwrap(),
                        vec![placement.node],
                        "size {size}"
                    );
                    #[cfg(target_os = "linux")]
                    {
                        // hwloc's non-strict BIND: MPOL_PREFERRED, or MPOL_PREFERRED_MANY (5) on
                        // Linux >= 5.15 with hwloc >= 2.8. Not MPOL_DEFAULT (0): the pages are bound.
                        let (mode, mask) = linux_policy(&buf);
                        assert!(
                            mode == libc::MPOL_PREFERRED || mode == 5,
                            "size {size}: policy {mode}"
                        );
                        assert_eq!(mask, 1 << placement.node, "size {size}");
                    }
                }
            });
        }
    });
    let stats = manager.stats();
    for node in &stats.nodes {
        assert!(node.reserved_bytes > 0);
        assert_eq!(
            node.bound_bytes, node.reserved_bytes,
            "node {} memory not bound: {node:#?}",
            node.node
        );
    }
    assert_eq!(stats.in_use(), 0);
}

#[test]
fn manager_get_without_preference_uses_the_callers_node() {
    let topo = Topology::discover().unwrap();
    let manager = PoolManager::new(
        &topo,
        PoolConfig {
            max_buffer: 1 << 20,
            node_budget: 16 << 20,
            ..PoolConfig::default()
        },
    )
    .unwrap();
    let last = topo.nodes().last().unwrap().clone();
    let cpu = last.pus()[0];
    let node = std::thread::spawn(move || {
        hioload_ws::pinning::pin_current_thread(cpu).unwrap();
        manager.get(100, None).unwrap().node()
    })
    .join()
    .unwrap();
    assert_eq!(node, last.os_index());
}

/// The kernel's NUMA policy for the page holding `bytes[0]`: (mode, node mask).
#[cfg(target_os = "linux")]
fn linux_policy(bytes: &[u8]) -> (i32, u64) {
    const MPOL_F_ADDR: libc::c_ulong = 1 << 1; // linux/mempolicy.h
    let mut mode: i32 = -1;
    let mut mask: [u64; 16] = [0; 16];
    // SAFETY: get_mempolicy(MPOL_F_ADDR) writes the mode and a 1024-bit node mask for the page of a
    // live address.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut i32,
            mask.as_mut_ptr(),
            1024usize,
            bytes.as_ptr(),
            MPOL_F_ADDR,
        )
    };
    assert_eq!(rc, 0, "get_mempolicy: {}", std::io::Error::last_os_error());
    (mode, mask[0])
}
