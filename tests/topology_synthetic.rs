//! Topology from hwloc: synthetic machines (so multi-node logic runs on a one-node machine) and
//! the real one.

use hioload_ws::pinning::{current_thread_cpus, CpuList};
use hioload_ws::topology::{Topology, TopologyError, TopologySource};

#[test]
fn two_packages_with_one_numa_node_each() {
    let topo = Topology::synthetic("package:2 numa:1 core:2 pu:1").unwrap();
    let nodes: Vec<(u32, Vec<u32>)> = topo
        .nodes()
        .iter()
        .map(|n| (n.os_index(), n.pus().to_vec()))
        .collect();
    assert_eq!(nodes, vec![(0, vec![0, 1]), (1, vec![2, 3])]);
    assert_eq!(topo.pu_count(), 4);
    assert_eq!(topo.node_of_pu(3), Some(1));
    assert_eq!(topo.node_of_pu(4), None);
    assert!(!topo.is_this_system());
    assert_eq!(
        topo.source(),
        &TopologySource::Synthetic("package:2 numa:1 core:2 pu:1".into())
    );
    assert_eq!(
        topo.to_string(),
        "2 NUMA nodes: node 0 cpus 0-1, node 1 cpus 2-3 (synthetic \"package:2 numa:1 core:2 pu:1\")"
    );
    // Nothing can be bound through a synthetic machine.
    assert!(topo.memory_nodes_of(&[0u8; 16]).is_err());
}

#[test]
fn smt_siblings_come_after_one_pu_of_every_core() {
    // One node, two cores of two PUs each: PUs 0,1 on core 0 and 2,3 on core 1.
    let topo = Topology::synthetic("numa:1 core:2 pu:2").unwrap();
    assert_eq!(topo.nodes().len(), 1);
    assert_eq!(topo.nodes()[0].pus(), &[0, 2, 1, 3]);
}

#[test]
fn four_nodes_under_two_packages() {
    let topo = Topology::synthetic("package:2 numa:2 core:1 pu:2").unwrap();
    let ids: Vec<u32> = topo.nodes().iter().map(|n| n.os_index()).collect();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    assert_eq!(topo.nodes()[3].pus(), &[6, 7]);
}

#[test]
fn invalid_description_is_a_clear_error() {
    let err = Topology::synthetic("package:two").unwrap_err();
    assert!(matches!(err, TopologyError::Synthetic { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("package:two") && message.contains("expected e.g."),
        "{message}"
    );
}

#[test]
fn discovers_the_running_machine() {
    let topo = Topology::discover().unwrap();
    assert!(topo.is_this_system());
    assert_eq!(topo.source(), &TopologySource::System);
    assert!(!topo.nodes().is_empty());
    // hwloc reports exactly the CPUs this process may run on.
    let allowed = current_thread_cpus().unwrap();
    let mut pus: Vec<u32> = topo
        .nodes()
        .iter()
        .flat_map(|n| n.pus().iter().copied())
        .collect();
    pus.sort_unstable();
    assert_eq!(pus, allowed);
    // ... and exactly the NUMA nodes it may allocate from, as the kernel lists them.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mems = status
        .lines()
        .find_map(|l| l.strip_prefix("Mems_allowed_list:"))
        .unwrap();
    let mut allowed: Vec<u32> = mems.trim().parse::<CpuList>().unwrap().cpus().to_vec();
    allowed.sort_unstable();
    let nodes: Vec<u32> = topo.nodes().iter().map(|n| n.os_index()).collect();
    assert_eq!(nodes, allowed);
}
