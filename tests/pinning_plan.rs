//! Worker placement on synthetic topologies, and a real pin on this machine.

use hioload_ws::pinning::{
    current_thread_cpus, CpuAffinity, CpuList, PlacementError, PlacementPlan,
};
use hioload_ws::topology::Topology;

fn two_nodes() -> Topology {
    // Two packages, one NUMA node each, two single-PU cores each: node 0 = PUs 0-1, node 1 = 2-3.
    Topology::synthetic("package:2 numa:1 core:2 pu:1").unwrap()
}

fn cpus_and_nodes(plan: &PlacementPlan) -> (Vec<Option<u32>>, Vec<u32>) {
    (
        plan.workers().iter().map(|w| w.cpu).collect(),
        plan.workers().iter().map(|w| w.node).collect(),
    )
}

#[test]
fn four_workers_alternate_over_two_nodes() {
    let plan = PlacementPlan::new(&two_nodes(), 4, &CpuAffinity::default()).unwrap();
    let (cpus, nodes) = cpus_and_nodes(&plan);
    assert_eq!(cpus, vec![Some(0), Some(2), Some(1), Some(3)]);
    assert_eq!(nodes, vec![0, 1, 0, 1]);
    assert_eq!((plan.workers_on_node(0), plan.workers_on_node(1)), (2, 2));
    assert!(plan.is_pinned() && !plan.is_oversubscribed());
    assert_eq!(plan.workers()[3].worker, 3);
    assert_eq!(
        plan.to_string(),
        "placement (pinned): worker 0 cpu 0 node 0, worker 1 cpu 2 node 1, worker 2 cpu 1 node 0, worker 3 cpu 3 node 1"
    );
}

#[test]
fn preferred_node_is_filled_first() {
    let plan = PlacementPlan::new(
        &two_nodes(),
        3,
        &CpuAffinity::Spread {
            preferred_node: Some(1),
        },
    )
    .unwrap();
    let (cpus, nodes) = cpus_and_nodes(&plan);
    assert_eq!(cpus, vec![Some(2), Some(0), Some(3)]);
    assert_eq!(nodes, vec![1, 0, 1]);
}

#[test]
fn single_worker_goes_to_the_preferred_node() {
    let plan = PlacementPlan::new(
        &two_nodes(),
        1,
        &CpuAffinity::Spread {
            preferred_node: Some(1),
        },
    )
    .unwrap();
    assert_eq!(cpus_and_nodes(&plan), (vec![Some(2)], vec![1]));
}

#[test]
fn unknown_preferred_node_is_rejected() {
    let err = PlacementPlan::new(
        &two_nodes(),
        2,
        &CpuAffinity::Spread {
            preferred_node: Some(5),
        },
    )
    .unwrap_err();
    assert_eq!(
        err,
        PlacementError::UnknownNode {
            node: 5,
            available: "0-1".into()
        }
    );
    assert_eq!(err.to_string(), "NUMA node 5 does not exist (nodes: 0-1)");
}

#[test]
fn smt_siblings_are_used_last() {
    // Per node: 2 cores x 2 PUs; node 0 = PUs 0-3 (cores {0,1}, {2,3}), node 1 = PUs 4-7.
    let topo = Topology::synthetic("package:2 numa:1 core:2 pu:2").unwrap();
    let plan = PlacementPlan::new(&topo, 4, &CpuAffinity::default()).unwrap();
    // One PU of each core on each node before any sibling.
    assert_eq!(
        cpus_and_nodes(&plan).0,
        vec![Some(0), Some(4), Some(2), Some(6)]
    );
}

#[test]
fn more_workers_than_pus_wrap_and_say_so() {
    let plan = PlacementPlan::new(&two_nodes(), 6, &CpuAffinity::default()).unwrap();
    let (cpus, nodes) = cpus_and_nodes(&plan);
    assert_eq!(
        cpus,
        vec![Some(0), Some(2), Some(1), Some(3), Some(0), Some(2)]
    );
    assert_eq!(nodes, vec![0, 1, 0, 1, 0, 1]);
    assert!(plan.is_oversubscribed());
}

#[test]
fn off_pins_nothing_but_still_spreads_home_nodes() {
    let plan = PlacementPlan::new(&two_nodes(), 3, &CpuAffinity::Off).unwrap();
    let (cpus, nodes) = cpus_and_nodes(&plan);
    assert_eq!(cpus, vec![None, None, None]);
    assert_eq!(nodes, vec![0, 1, 0]);
    assert!(!plan.is_pinned() && !plan.is_oversubscribed());
    assert_eq!(
        plan.to_string(),
        "placement (not pinned): worker 0 node 0, worker 1 node 1, worker 2 node 0"
    );
    // Applying an unpinned placement leaves the thread alone.
    let before = current_thread_cpus().unwrap();
    plan.workers()[0].apply().unwrap();
    assert_eq!(current_thread_cpus().unwrap(), before);
}

#[test]
fn cpu_list_override_is_taken_in_order() {
    let list: CpuList = "3,0".parse().unwrap();
    let plan = PlacementPlan::new(&two_nodes(), 3, &CpuAffinity::Cpus(list)).unwrap();
    let (cpus, nodes) = cpus_and_nodes(&plan);
    assert_eq!(cpus, vec![Some(3), Some(0), Some(3)]);
    assert_eq!(nodes, vec![1, 0, 1]);
    assert!(plan.is_oversubscribed());
}

#[test]
fn cpu_list_naming_a_missing_cpu_is_rejected() {
    let list: CpuList = "1,7".parse().unwrap();
    let err = PlacementPlan::new(&two_nodes(), 2, &CpuAffinity::Cpus(list)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "CPU 7 is not available to this process (available: 0-3)"
    );
}

#[test]
fn zero_workers_is_an_error() {
    assert_eq!(
        PlacementPlan::new(&two_nodes(), 0, &CpuAffinity::default()),
        Err(PlacementError::NoWorkers)
    );
}

#[test]
fn applying_a_pin_restricts_the_thread_to_exactly_that_cpu() {
    let topo = Topology::discover().unwrap();
    // The last CPU this process may use (in a restricted cpuset that is not necessarily 0..n).
    let target = *current_thread_cpus().unwrap().last().unwrap();
    let list = CpuList::from_cpus([target]).unwrap();
    let plan = PlacementPlan::new(&topo, 1, &CpuAffinity::Cpus(list)).unwrap();
    let placement = plan.workers()[0];
    assert_eq!(placement.node, topo.node_of_pu(target).unwrap());
    let seen = std::thread::spawn(move || {
        placement.apply().unwrap();
        current_thread_cpus().unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(seen, vec![target]);
}

#[test]
fn spread_plan_on_this_machine_pins_each_worker_to_its_own_cpu() {
    let topo = Topology::discover().unwrap();
    let workers = topo.pu_count();
    let plan = PlacementPlan::new(&topo, workers, &CpuAffinity::default()).unwrap();
    assert!(!plan.is_oversubscribed());
    let handles: Vec<_> = plan
        .workers()
        .iter()
        .copied()
        .map(|placement| {
            std::thread::spawn(move || {
                placement.apply().unwrap();
                (placement.cpu.unwrap(), current_thread_cpus().unwrap())
            })
        })
        .collect();
    for handle in handles {
        let (cpu, seen) = handle.join().unwrap();
        assert_eq!(seen, vec![cpu]);
    }
}

/// Under a narrower affinity mask (what `taskset -c N hioload-echo` gives the process), the
/// machine as discovered holds only the allowed PUs, and the default plan pins worker 0 there,
/// not on CPU 0.
#[test]
fn discovery_follows_the_affinity_mask() {
    let all = current_thread_cpus().unwrap();
    let target = *all.last().unwrap();
    let (pus, worker0) = std::thread::spawn(move || {
        let only = CpuList::from_cpus([target]).unwrap();
        let placement =
            PlacementPlan::new(&Topology::discover().unwrap(), 1, &CpuAffinity::Cpus(only))
                .unwrap()
                .workers()[0];
        placement.apply().unwrap();
        // This thread's mask is now {target}: discover as a process started under taskset.
        let topo = Topology::discover().unwrap();
        let plan = PlacementPlan::new(&topo, 2, &CpuAffinity::default()).unwrap();
        (topo.pu_count(), plan.workers()[0].cpu)
    })
    .join()
    .unwrap();
    assert_eq!(pus, 1, "only the allowed PU (of {all:?})");
    assert_eq!(worker0, Some(target));
}
