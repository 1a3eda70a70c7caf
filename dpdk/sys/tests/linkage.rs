//! The generated bindings link against the installed DPDK and agree with it (no EAL needed).
//! Struct layouts are checked at compile time by bindgen's layout assertions.

use std::ffi::CStr;

use hioload_dpdk_sys as sys;

#[test]
fn library_version_matches_the_headers_and_pkg_config() {
    // SAFETY: rte_version returns a static string and needs no EAL.
    let lib = unsafe { CStr::from_ptr(sys::rte_version()) }
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        lib,
        format!("DPDK {}", sys::DPDK_VERSION),
        "linked library vs pkg-config"
    );
    // SAFETY: plain shim call.
    let headers = unsafe { sys::hioload_rte_version_num() };
    // SAFETY: plain library calls.
    let (year, month) = unsafe { (sys::rte_version_year(), sys::rte_version_month()) };
    assert_eq!(headers >> 24, year, "header RTE_VERSION year vs library");
    assert_eq!(
        (headers >> 16) & 0xff,
        month,
        "header RTE_VERSION month vs library"
    );
    assert!((year, month) >= (22, 11));
}

#[test]
fn static_inline_wrappers_and_shim_are_linked() {
    // SAFETY: rte_rdtsc reads the TSC; rte_lcore_id reads a thread-local; neither needs the EAL.
    let (a, b) = unsafe { (sys::rte_rdtsc(), sys::rte_rdtsc()) };
    assert!(b >= a, "TSC is monotonic on one thread");
    // SAFETY: as above.
    assert_eq!(
        unsafe { sys::rte_lcore_id() },
        sys::LCORE_ID_ANY,
        "a non-EAL thread has no lcore id"
    );
    // SAFETY: the shim reads this thread's rte_errno.
    unsafe {
        sys::hioload_rte_errno_clear();
        assert_eq!(sys::rte_errno(), 0);
    }
    assert_eq!(
        std::mem::size_of::<sys::rte_mbuf>(),
        128,
        "two cache lines, as in C"
    );
    assert_ne!(
        sys::RTE_ETH_TX_OFFLOAD_TCP_CKSUM,
        0,
        "offload bit macros evaluated"
    );
}
