//! `PoolManager::trim`: the pages of buffers that stayed free for a whole period go back to the
//! system (resident memory falls), with hysteresis (a buffer freed just before a trim is kept),
//! and the buffers stay usable.

use hioload_ws::pool::{PoolConfig, PoolManager};
use hioload_ws::topology::Topology;

/// This process's resident memory, in bytes (Linux).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb << 10
}

#[test]
#[cfg(target_os = "linux")]
fn buffers_that_stay_free_give_their_memory_back_and_stay_usable() {
    let topo = Topology::discover().unwrap();
    let size = 256 << 10;
    let count = 512; // 128 MiB
    let manager = PoolManager::new(
        &topo,
        PoolConfig {
            max_buffer: size,
            node_budget: 256 << 20,
            ..PoolConfig::default()
        },
    )
    .unwrap();
    // A burst: 512 buffers in use at once, written (resident), then all returned.
    let mut burst: Vec<_> = (0..count)
        .map(|_| {
            let mut buf = manager.get(size, None).unwrap();
            let cap = buf.capacity();
            buf.set_len(cap);
            buf.fill(7);
            buf
        })
        .collect();
    burst.clear();
    let after_burst = rss();

    // First trim: nothing has stayed free for a whole period yet (hysteresis).
    assert_eq!(manager.trim(), 0, "nothing given back at the first look");
    // Second trim: all but the reserve (a quarter of the class) goes back.
    let given = manager.trim();
    assert!(
        given >= (count * 3 / 4 - 1) * size,
        "gave back {given} bytes"
    );
    let after_trim = rss();
    assert!(
        after_burst - after_trim >= given / 2,
        "resident memory fell: {after_burst} -> {after_trim} (given back {given})"
    );
    let trimmed: u64 = manager
        .stats()
        .nodes
        .iter()
        .flat_map(|n| n.classes.iter())
        .map(|c| c.trimmed_bytes)
        .sum();
    assert_eq!(trimmed as usize, given, "counted in the stats");

    // The buffers are still the pool's: taking them again needs no new memory from the system,
    // and they read back as written.
    let reserved_before: usize = manager.stats().nodes.iter().map(|n| n.reserved_bytes).sum();
    let again: Vec<_> = (0..count)
        .map(|_| {
            let mut buf = manager.get(size, None).unwrap();
            let cap = buf.capacity();
            buf.set_len(cap);
            buf.fill(9);
            assert!(buf.iter().all(|&b| b == 9));
            buf
        })
        .collect();
    let reserved_after: usize = manager.stats().nodes.iter().map(|n| n.reserved_bytes).sum();
    assert_eq!(reserved_before, reserved_after, "no new slab");
    drop(again);
}
