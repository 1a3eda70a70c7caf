//! Raw bindings to the system DPDK (>= 22.11), generated at build time by `build.rs`.
//!
//! Everything here is `unsafe` C API exactly as DPDK declares it, restricted to an allowlist
//! (EAL, lcores, launch, cycles, device hotplug, malloc, ring, mempool, mbuf, ethdev). `static
//! inline` functions such as `rte_eth_rx_burst` or `rte_pktmbuf_alloc` are callable like any other:
//! bindgen generated C wrappers for them that `build.rs` compiled in. The safe layer is the
//! `hioload-dpdk` crate; use that unless you need something it does not offer.
//!
//! What bindgen cannot produce is added by hand: the thread-local `rte_errno` (C shim, see
//! [`rte_errno`]) and the `rte_pktmbuf_mtod` macro (pure field arithmetic, see
//! [`rte_pktmbuf_mtod`]).

#![no_std]
#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case)]
#![allow(clippy::all, rustdoc::all, missing_docs)]
#![allow(unsafe_op_in_unsafe_fn)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// The DPDK version pkg-config reported when these bindings were generated.
pub const DPDK_VERSION: &str = env!("HIOLOAD_DPDK_VERSION");

/// The calling thread's `rte_errno` (DPDK's per-lcore error number).
///
/// # Safety
/// Always safe to call; `unsafe` only because it is an FFI call.
#[inline]
pub unsafe fn rte_errno() -> i32 {
    hioload_rte_errno()
}

/// `rte_pktmbuf_mtod(m, void *)`: address of the first data byte of the mbuf's first segment.
///
/// # Safety
/// `m` must point to a valid, initialised `rte_mbuf`.
#[inline(always)]
pub unsafe fn rte_pktmbuf_mtod(m: *const rte_mbuf) -> *mut u8 {
    ((*m).buf_addr as *mut u8).add((*m).data_off as usize)
}
