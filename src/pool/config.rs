//! Pool limits and the size classes they imply.

use std::fmt;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Sizes and limits of the buffer pools. Every limit is per NUMA node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Smallest buffer (the first size class); a power of two. Default 2 KiB.
    pub min_buffer: usize,
    /// Largest buffer (the last size class); a power of two. Default 16 MiB. Larger requests fail
    /// with [`PoolError::TooLarge`].
    pub max_buffer: usize,
    /// Memory each node's pool may take from the system, all classes together. Default 1 GiB.
    pub node_budget: usize,
    /// Most buffers of one size class on one node. Default 65,536. Each class's free queue is
    /// allocated up front with room for `min(max_buffers_per_class, node_budget / size)` entries
    /// (16 bytes each).
    pub max_buffers_per_class: usize,
    /// Bytes of each size class a worker cache keeps for itself before spilling half to its node's
    /// shared pool; a class larger than this is not cached per worker. Default 1 MiB.
    pub worker_cache_bytes: usize,
    /// Memory taken from the system at a time for one size class (rounded to whole buffers, at
    /// least one). Default 256 KiB.
    pub slab_bytes: usize,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            min_buffer: 2 * KIB,
            max_buffer: 16 * MIB,
            node_budget: 1024 * MIB,
            max_buffers_per_class: 65_536,
            worker_cache_bytes: MIB,
            slab_bytes: 256 * KIB,
        }
    }
}

/// Largest `max_buffer` accepted.
const MAX_CLASS_SIZE: usize = 1024 * MIB;

impl PoolConfig {
    /// Checks the configuration and derives its size classes.
    pub(crate) fn size_classes(&self) -> Result<SizeClasses, PoolConfigError> {
        let power_of_two = |name: &'static str, value: usize| {
            if value.is_power_of_two() && value <= MAX_CLASS_SIZE {
                Ok(())
            } else {
                Err(PoolConfigError(format!(
                    "{name} must be a power of two up to 1 GiB, not {value}"
                )))
            }
        };
        power_of_two("min_buffer", self.min_buffer)?;
        power_of_two("max_buffer", self.max_buffer)?;
        if self.max_buffer < self.min_buffer {
            return Err(PoolConfigError(format!(
                "max_buffer ({}) is below min_buffer ({})",
                self.max_buffer, self.min_buffer
            )));
        }
        if self.node_budget < self.max_buffer {
            return Err(PoolConfigError(format!(
                "node_budget ({}) cannot hold even one max_buffer ({})",
                self.node_budget, self.max_buffer
            )));
        }
        if self.max_buffers_per_class == 0 {
            return Err(PoolConfigError(
                "max_buffers_per_class must be at least 1".into(),
            ));
        }
        Ok(SizeClasses {
            min_shift: self.min_buffer.trailing_zeros(),
            max_shift: self.max_buffer.trailing_zeros(),
        })
    }

    /// Capacity of a class's free queue: the most buffers of that class a node can ever have.
    pub(crate) fn class_limit(&self, size: usize) -> usize {
        self.max_buffers_per_class
            .min(self.node_budget / size)
            .max(1)
    }

    /// How many buffers of `size` a worker cache keeps.
    pub(crate) fn cache_capacity(&self, size: usize) -> usize {
        self.worker_cache_bytes / size
    }

    /// How many buffers of `size` one slab holds.
    pub(crate) fn slab_buffers(&self, size: usize) -> usize {
        (self.slab_bytes / size).max(1)
    }
}

/// The power-of-two size classes between `min_buffer` and `max_buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SizeClasses {
    min_shift: u32,
    max_shift: u32,
}

impl SizeClasses {
    /// Number of classes.
    pub fn len(&self) -> usize {
        (self.max_shift - self.min_shift + 1) as usize
    }

    /// Buffer size of class `class`.
    pub fn size(&self, class: usize) -> usize {
        1 << (self.min_shift as usize + class)
    }

    /// The smallest class holding `size` bytes, if any.
    pub fn class_for(&self, size: usize) -> Option<usize> {
        if size > 1 << self.max_shift {
            return None;
        }
        let shift = size
            .max(1)
            .next_power_of_two()
            .trailing_zeros()
            .max(self.min_shift);
        Some((shift - self.min_shift) as usize)
    }

    /// The largest buffer size.
    pub fn max_size(&self) -> usize {
        1 << self.max_shift
    }
}

/// An invalid [`PoolConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfigError(pub(crate) String);

impl fmt::Display for PoolConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid buffer pool configuration: {}", self.0)
    }
}

impl std::error::Error for PoolConfigError {}

/// Why a buffer could not be had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The request is larger than the largest size class.
    TooLarge {
        /// Bytes requested.
        requested: usize,
        /// The largest size class (`max_buffer`).
        max: usize,
    },
    /// Every node's pool for this size class is at its limit (`max_buffers_per_class` or
    /// `node_budget`) and all its buffers are in use.
    Exhausted {
        /// The size class.
        size: usize,
    },
    /// The requested NUMA node is not in the pool's topology.
    UnknownNode(u32),
    /// The system refused memory for a new slab.
    Backing(String),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::TooLarge { requested, max } => {
                write!(f, "buffer of {requested} bytes requested, the largest pooled buffer is {max} bytes")
            }
            PoolError::Exhausted { size } => {
                write!(f, "buffer pool exhausted: every {size}-byte buffer is in use and the pool is at its limit")
            }
            PoolError::UnknownNode(node) => write!(f, "NUMA node {node} has no buffer pool"),
            PoolError::Backing(e) => write!(f, "buffer pool could not get memory: {e}"),
        }
    }
}

impl std::error::Error for PoolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_powers_of_two_from_min_to_max() {
        let classes = PoolConfig::default().size_classes().unwrap();
        assert_eq!(classes.len(), 14); // 2 KiB ..= 16 MiB
        assert_eq!(classes.size(0), 2048);
        assert_eq!(classes.size(13), 16 * MIB);
        assert_eq!(classes.class_for(0), Some(0));
        assert_eq!(classes.class_for(2048), Some(0));
        assert_eq!(classes.class_for(2049), Some(1));
        assert_eq!(classes.class_for(16 * MIB), Some(13));
        assert_eq!(classes.class_for(16 * MIB + 1), None);
    }

    #[test]
    fn rejects_inconsistent_configs() {
        let bad = |c: PoolConfig| c.size_classes().unwrap_err().to_string();
        assert!(bad(PoolConfig {
            min_buffer: 3000,
            ..Default::default()
        })
        .contains("min_buffer"));
        assert!(bad(PoolConfig {
            min_buffer: 4096,
            max_buffer: 2048,
            ..Default::default()
        })
        .contains("below"));
        assert!(bad(PoolConfig {
            node_budget: MIB,
            ..Default::default()
        })
        .contains("node_budget"));
        assert!(bad(PoolConfig {
            max_buffers_per_class: 0,
            ..Default::default()
        })
        .contains("at least 1"));
    }
}
