//! Safe DPDK layer.
