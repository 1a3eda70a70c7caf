//! The placement plan: which processing unit and NUMA node each worker gets.
//!
//! Workers are spread over NUMA nodes round-robin (worker 0 on the first node, worker 1 on the
//! second, ...), the preferred node first (in DPDK mode the NIC's socket), and within a node over
//! distinct cores before SMT siblings. The plan is plain data, computed once at start, logged, and
//! applied by each worker thread to itself.

use std::fmt;
use std::io;

use super::cpu_list::{format_sorted, CpuList};
use crate::topology::Topology;

/// How workers are placed on processing units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuAffinity {
    /// No pinning: the OS schedules the workers. Each still gets a home NUMA node (round-robin,
    /// as with `Spread`) for its buffer pool.
    Off,
    /// Pin each worker to its own PU, spreading workers over NUMA nodes round-robin,
    /// `preferred_node` (an OS index) first. The default, with no preferred node.
    Spread {
        /// Node to fill first, e.g. the socket of the DPDK port.
        preferred_node: Option<u32>,
    },
    /// Pin worker *i* to the *i*-th CPU of the list (`--cpus`).
    Cpus(CpuList),
}

impl Default for CpuAffinity {
    fn default() -> CpuAffinity {
        CpuAffinity::Spread {
            preferred_node: None,
        }
    }
}

/// Where one worker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerPlacement {
    /// Worker number, from 0.
    pub worker: usize,
    /// The PU (OS index) the worker is pinned to; `None` when pinning is off.
    pub cpu: Option<u32>,
    /// The worker's NUMA node (OS index): where its buffers come from.
    pub node: u32,
}

impl WorkerPlacement {
    /// Pins the calling thread to this placement's PU (no-op when pinning is off, or on platforms
    /// without thread affinity). Call it first thing in the worker thread.
    pub fn apply(&self) -> io::Result<()> {
        match self.cpu {
            Some(cpu) => super::pin_current_thread(cpu),
            None => Ok(()),
        }
    }
}

/// The placement of every worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementPlan {
    workers: Vec<WorkerPlacement>,
}

impl PlacementPlan {
    /// Places `workers` workers on `topology` according to `affinity`.
    ///
    /// More workers than PUs (or than listed CPUs) wrap around, so some PUs get two workers;
    /// [`is_oversubscribed`](Self::is_oversubscribed) says so, and the caller should warn.
    pub fn new(
        topology: &Topology,
        workers: usize,
        affinity: &CpuAffinity,
    ) -> Result<PlacementPlan, PlacementError> {
        if workers == 0 {
            return Err(PlacementError::NoWorkers);
        }
        let placements = match affinity {
            CpuAffinity::Off => {
                let order = node_order(topology, None)?;
                (0..workers)
                    .map(|w| WorkerPlacement {
                        worker: w,
                        cpu: None,
                        node: order[w % order.len()],
                    })
                    .collect()
            }
            CpuAffinity::Spread { preferred_node } => {
                let order = node_order(topology, *preferred_node)?;
                let slots = interleave(topology, &order);
                (0..workers)
                    .map(|w| {
                        let (cpu, node) = slots[w % slots.len()];
                        WorkerPlacement {
                            worker: w,
                            cpu: Some(cpu),
                            node,
                        }
                    })
                    .collect()
            }
            CpuAffinity::Cpus(list) => {
                let mut slots = Vec::with_capacity(list.cpus().len());
                for &cpu in list.cpus() {
                    let node =
                        topology
                            .node_of_pu(cpu)
                            .ok_or_else(|| PlacementError::UnknownCpu {
                                cpu,
                                available: format_sorted(&all_pus(topology)),
                            })?;
                    slots.push((cpu, node));
                }
                (0..workers)
                    .map(|w| {
                        let (cpu, node) = slots[w % slots.len()];
                        WorkerPlacement {
                            worker: w,
                            cpu: Some(cpu),
                            node,
                        }
                    })
                    .collect()
            }
        };
        Ok(PlacementPlan {
            workers: placements,
        })
    }

    /// One entry per worker, in worker order.
    pub fn workers(&self) -> &[WorkerPlacement] {
        &self.workers
    }

    /// Whether pinning is on.
    pub fn is_pinned(&self) -> bool {
        self.workers.iter().any(|w| w.cpu.is_some())
    }

    /// Whether some PU is given to more than one worker.
    pub fn is_oversubscribed(&self) -> bool {
        let mut cpus: Vec<u32> = self.workers.iter().filter_map(|w| w.cpu).collect();
        let pinned = cpus.len();
        cpus.sort_unstable();
        cpus.dedup();
        cpus.len() < pinned
    }

    /// Number of workers whose home is `node`.
    pub fn workers_on_node(&self, node: u32) -> usize {
        self.workers.iter().filter(|w| w.node == node).count()
    }

    /// Logs the plan at info level (a warning if oversubscribed).
    pub fn log(&self) {
        if self.is_oversubscribed() {
            tracing::warn!("{self} (more workers than CPUs: some CPUs run two workers)");
        } else {
            tracing::info!("{self}");
        }
    }
}

impl fmt::Display for PlacementPlan {
    /// `placement (pinned): worker 0 cpu 0 node 0, worker 1 cpu 2 node 1`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = if self.is_pinned() {
            "pinned"
        } else {
            "not pinned"
        };
        write!(f, "placement ({mode}):")?;
        for (i, w) in self.workers.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            match w.cpu {
                Some(cpu) => write!(f, "{sep}worker {} cpu {cpu} node {}", w.worker, w.node)?,
                None => write!(f, "{sep}worker {} node {}", w.worker, w.node)?,
            }
        }
        Ok(())
    }
}

/// Node OS indexes in filling order: the preferred node, then the others ascending.
fn node_order(topology: &Topology, preferred: Option<u32>) -> Result<Vec<u32>, PlacementError> {
    let mut order: Vec<u32> = topology.nodes().iter().map(|n| n.os_index()).collect();
    if let Some(node) = preferred {
        let at =
            order
                .iter()
                .position(|&n| n == node)
                .ok_or_else(|| PlacementError::UnknownNode {
                    node,
                    available: format_sorted(&order),
                })?;
        order.remove(at);
        order.insert(0, node);
    }
    Ok(order)
}

/// Every PU once, as (pu, node): round r takes the r-th PU of each node in `order`.
fn interleave(topology: &Topology, order: &[u32]) -> Vec<(u32, u32)> {
    let nodes: Vec<_> = order.iter().filter_map(|&n| topology.node(n)).collect();
    let deepest = nodes.iter().map(|n| n.pus().len()).max().unwrap_or(0);
    (0..deepest)
        .flat_map(|round| {
            nodes
                .iter()
                .filter_map(move |n| n.pus().get(round).map(|&pu| (pu, n.os_index())))
        })
        .collect()
}

fn all_pus(topology: &Topology) -> Vec<u32> {
    topology
        .nodes()
        .iter()
        .flat_map(|n| n.pus().iter().copied())
        .collect()
}

/// Why no placement could be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlacementError {
    /// Zero workers requested.
    NoWorkers,
    /// The preferred node does not exist.
    UnknownNode {
        /// The node asked for.
        node: u32,
        /// The nodes that exist, as a list like `0-1`.
        available: String,
    },
    /// A `--cpus` entry is not a PU this process may use.
    UnknownCpu {
        /// The CPU asked for.
        cpu: u32,
        /// The usable PUs, as a list like `0-3`.
        available: String,
    },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::NoWorkers => write!(f, "at least one worker is needed"),
            PlacementError::UnknownNode { node, available } => {
                write!(f, "NUMA node {node} does not exist (nodes: {available})")
            }
            PlacementError::UnknownCpu { cpu, available } => {
                write!(
                    f,
                    "CPU {cpu} is not available to this process (available: {available})"
                )
            }
        }
    }
}

impl std::error::Error for PlacementError {}
