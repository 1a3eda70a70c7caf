//! The machine as the facade sees it: NUMA nodes and the processing units local to each.
//!
//! Placement ([`crate::pinning`]) and buffer pools ([`crate::pool`]) only need this small piece of
//! data, so [`Topology`] is plain data taken once from hwloc: the real machine
//! ([`Topology::discover`]) or a synthetic one ([`Topology::synthetic`]) that lets tests exercise
//! multi-node logic on a one-node machine. A topology of the running machine also keeps its hwloc
//! handle, through which pools bind their memory to a node.

mod hwloc;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;

use self::hwloc::Hwloc;
use crate::pinning::cpu_list::format_sorted;

/// A NUMA node and its processing units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaNode {
    os_index: u32,
    pus: Vec<u32>,
}

impl NumaNode {
    /// The node's OS index (`/sys/devices/system/node/nodeN`; DPDK's socket id).
    pub fn os_index(&self) -> u32 {
        self.os_index
    }

    /// OS indexes of the node's processing units in spreading order: first one PU of every core,
    /// then the second PU (SMT sibling) of every core, and so on.
    pub fn pus(&self) -> &[u32] {
        &self.pus
    }
}

/// Where a [`Topology`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologySource {
    /// hwloc discovery of the running machine.
    System,
    /// An hwloc synthetic description, e.g. `"package:2 numa:1 core:2 pu:1"`.
    Synthetic(String),
}

/// NUMA nodes and processing units of a machine, from hwloc.
#[derive(Clone)]
pub struct Topology {
    nodes: Vec<NumaNode>,
    source: TopologySource,
    /// Kept only when the topology is the running machine: binding memory through a synthetic
    /// topology would name nodes that do not exist.
    system: Option<Arc<Hwloc>>,
}

impl Topology {
    /// Discovers the running machine: the PUs this process may use, which is what its CPU
    /// affinity mask allows (`taskset`, a parent's `sched_setaffinity`) within what hwloc sees
    /// (hwloc itself only removes what cgroups forbid).
    pub fn discover() -> Result<Topology, TopologyError> {
        let hwloc = Hwloc::load_system().map_err(TopologyError::Load)?;
        let this_system = hwloc.is_this_system();
        Self::from_hwloc(hwloc, TopologySource::System, this_system)
    }

    /// Builds a synthetic topology from an hwloc description, e.g. two packages with one NUMA node
    /// and two single-PU cores each: `"package:2 numa:1 core:2 pu:1"`. PU and node OS indexes are
    /// numbered from 0 in order. Nothing is bound through it.
    pub fn synthetic(description: &str) -> Result<Topology, TopologyError> {
        let hwloc = Hwloc::load_synthetic(description).map_err(|e| TopologyError::Synthetic {
            description: description.to_string(),
            reason: e,
        })?;
        Self::from_hwloc(
            hwloc,
            TopologySource::Synthetic(description.to_string()),
            false,
        )
    }

    fn from_hwloc(
        hwloc: Hwloc,
        source: TopologySource,
        this_system: bool,
    ) -> Result<Topology, TopologyError> {
        let node_ids = hwloc.numa_nodes();
        let first_node = *node_ids.first().ok_or(TopologyError::NoNumaNode)?;
        // node -> core -> PUs of that core, cores in logical order; a PU whose core hwloc does
        // not know counts as a core of its own, after the known ones.
        let mut by_node: BTreeMap<u32, BTreeMap<(bool, u32), Vec<u32>>> =
            node_ids.iter().map(|&n| (n, BTreeMap::new())).collect();
        let mut pu_count = 0;
        let mut pus = hwloc.processing_units();
        if this_system {
            let allowed = hioload_fallback::affinity::allowed_cpus();
            let usable: Vec<_> = pus
                .iter()
                .filter(|pu| allowed.contains(&(pu.os_index as usize)))
                .cloned()
                .collect();
            // A mask that names none of hwloc's PUs (never seen) leaves the topology whole.
            if !usable.is_empty() {
                pus = usable;
            }
        }
        for pu in pus {
            let node = pu
                .node
                .filter(|n| by_node.contains_key(n))
                .unwrap_or(first_node);
            let core = match pu.core {
                Some(core) => (false, core),
                None => (true, pu.os_index),
            };
            by_node
                .entry(node)
                .or_default()
                .entry(core)
                .or_default()
                .push(pu.os_index);
            pu_count += 1;
        }
        if pu_count == 0 {
            return Err(TopologyError::NoProcessingUnit);
        }
        let nodes = by_node
            .into_iter()
            .map(|(os_index, cores)| NumaNode {
                os_index,
                pus: spread(cores.into_values().collect()),
            })
            .collect();
        let system = this_system.then(|| Arc::new(hwloc));
        Ok(Topology {
            nodes,
            source,
            system,
        })
    }

    /// The NUMA nodes, by ascending OS index. Never empty.
    pub fn nodes(&self) -> &[NumaNode] {
        &self.nodes
    }

    /// The node with this OS index.
    pub fn node(&self, os_index: u32) -> Option<&NumaNode> {
        self.nodes.iter().find(|n| n.os_index == os_index)
    }

    /// The NUMA node of processing unit `pu` (OS index), if the topology has that PU.
    pub fn node_of_pu(&self, pu: u32) -> Option<u32> {
        self.nodes
            .iter()
            .find(|n| n.pus.contains(&pu))
            .map(|n| n.os_index)
    }

    /// Number of processing units on all nodes.
    pub fn pu_count(&self) -> usize {
        self.nodes.iter().map(|n| n.pus.len()).sum()
    }

    /// Where this topology came from.
    pub fn source(&self) -> &TopologySource {
        &self.source
    }

    /// Whether this is the running machine, so that binding threads and memory through it is
    /// meaningful (false for synthetic topologies).
    pub fn is_this_system(&self) -> bool {
        self.system.is_some()
    }

    /// The NUMA nodes that hold the pages of `bytes` (touched pages only); for checking where
    /// memory landed. Fails on a synthetic topology.
    pub fn memory_nodes_of(&self, bytes: &[u8]) -> io::Result<Vec<u32>> {
        self.system_hwloc()?.area_location(bytes)
    }

    /// Binds `[addr, addr + len)` to `node` before it is first touched (see `Hwloc::bind_area`).
    pub(crate) fn bind_memory(&self, addr: *const u8, len: usize, node: u32) -> io::Result<()> {
        self.system_hwloc()?.bind_area(addr, len, node)
    }

    fn system_hwloc(&self) -> io::Result<&Hwloc> {
        self.system.as_deref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "synthetic topology: not the running machine",
            )
        })
    }
}

/// Interleaves the PUs of the cores: first PU of each core, then the second of each, ...
fn spread(cores: Vec<Vec<u32>>) -> Vec<u32> {
    let deepest = cores.iter().map(Vec::len).max().unwrap_or(0);
    (0..deepest)
        .flat_map(|round| cores.iter().filter_map(move |pus| pus.get(round).copied()))
        .collect()
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("nodes", &self.nodes)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Topology {
    /// `2 NUMA nodes: node 0 cpus 0-1, node 1 cpus 2-3 (synthetic "…")`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.nodes.len() == 1 { "" } else { "s" };
        write!(f, "{} NUMA node{plural}:", self.nodes.len())?;
        for (i, node) in self.nodes.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(
                f,
                "{sep}node {} cpus {}",
                node.os_index,
                format_sorted(&node.pus)
            )?;
        }
        if let TopologySource::Synthetic(description) = &self.source {
            write!(f, " (synthetic \"{description}\")")?;
        }
        Ok(())
    }
}

/// Why a topology could not be built.
#[derive(Debug)]
pub enum TopologyError {
    /// hwloc could not discover the machine.
    Load(io::Error),
    /// hwloc rejected a synthetic description.
    Synthetic {
        /// The description given.
        description: String,
        /// hwloc's error.
        reason: io::Error,
    },
    /// hwloc reported no NUMA node (hwloc 2 always reports at least one).
    NoNumaNode,
    /// hwloc reported no processing unit this process may use.
    NoProcessingUnit,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyError::Load(e) => write!(f, "hwloc could not discover the machine topology: {e}"),
            TopologyError::Synthetic { description, reason } => write!(
                f,
                "invalid synthetic topology \"{description}\": {reason} (expected e.g. \"package:2 numa:1 core:2 pu:1\")"
            ),
            TopologyError::NoNumaNode => write!(f, "hwloc reported no NUMA node"),
            TopologyError::NoProcessingUnit => write!(f, "hwloc reported no usable processing unit"),
        }
    }
}

impl std::error::Error for TopologyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TopologyError::Load(e) | TopologyError::Synthetic { reason: e, .. } => Some(e),
            _ => None,
        }
    }
}
