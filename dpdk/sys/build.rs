//! Generates the DPDK bindings at build time from the installed headers.
//!
//! Why at build time: DPDK's ABI (struct layouts, inline fast-path functions) belongs to the exact
//! installed release, so bindings generated here always match the library we link. Steps:
//! 1. find `libdpdk` (>= 22.11) with pkg-config, or stop with one error that says what to install;
//! 2. run bindgen over `csrc/wrapper.h` with the full `pkg-config --cflags libdpdk` (it carries
//!    `-include rte_config.h -march=...`), restricted to an allowlist (without it bindgen emits ~44k
//!    lines and the generated wrappers trip over AVX-512 intrinsics);
//! 3. compile the C wrappers bindgen writes for `static inline` functions (`wrap_static_fns`) and the
//!    hand shim `csrc/shim.c` (thread-locals such as `rte_errno`) with `cc` and the same flags.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const MIN_DPDK: &str = "22.11";

const INSTALL_HINT: &str = "\
hioload-dpdk-sys needs DPDK >= 22.11 development files, libclang and pkg-config.
  On Debian/Ubuntu:  apt-get install -y libdpdk-dev libclang-dev pkg-config
Or build without DPDK: drop `--features dpdk` (the default build needs no DPDK).";

/// Functions bound: EAL, lcores, launch, cycles, devices, malloc, ring, mempool, mbuf, ethdev.
const FUNCTIONS: &[&str] = &[
    // eal, errno, version
    "rte_eal_init",
    "rte_eal_cleanup",
    "rte_eal_process_type",
    "rte_eal_has_hugepages",
    "rte_strerror",
    "rte_version",
    "rte_version_year",
    "rte_version_month",
    "hioload_.*",
    // lcore, launch
    "rte_lcore_id",
    "rte_get_main_lcore",
    "rte_lcore_count",
    "rte_lcore_index",
    "rte_lcore_is_enabled",
    "rte_get_next_lcore",
    "rte_lcore_to_socket_id",
    "rte_lcore_to_cpu_id",
    "rte_socket_id",
    "rte_socket_count",
    "rte_socket_id_by_idx",
    "rte_eal_remote_launch",
    "rte_eal_wait_lcore",
    "rte_eal_get_lcore_state",
    // cycles
    "rte_get_tsc_hz",
    "rte_get_tsc_cycles",
    "rte_rdtsc",
    "rte_rdtsc_precise",
    "rte_delay_us_block",
    // devices (hotplug of vdevs: "net_tap0,iface=x")
    "rte_dev_probe",
    "rte_dev_remove",
    // malloc
    "rte_malloc_socket",
    "rte_zmalloc_socket",
    "rte_free",
    "rte_mem_virt2memseg",
    // ring
    "rte_ring_create",
    "rte_ring_free",
    "rte_ring_lookup",
    "rte_ring_count",
    "rte_ring_free_count",
    "rte_ring_enqueue_burst",
    "rte_ring_dequeue_burst",
    // mempool
    "rte_mempool_avail_count",
    "rte_mempool_in_use_count",
    "rte_mempool_free",
    "rte_mempool_lookup",
    // mbuf
    "rte_pktmbuf_pool_create",
    "rte_pktmbuf_alloc",
    "rte_pktmbuf_alloc_bulk",
    "rte_pktmbuf_free",
    "rte_pktmbuf_free_bulk",
    "rte_pktmbuf_append",
    "rte_pktmbuf_prepend",
    "rte_pktmbuf_adj",
    "rte_pktmbuf_trim",
    "rte_pktmbuf_headroom",
    "rte_pktmbuf_tailroom",
    "rte_pktmbuf_reset",
    "rte_pktmbuf_is_contiguous",
    "rte_pktmbuf_linearize",
    "rte_pktmbuf_chain",
    "rte_pktmbuf_data_room_size",
    "rte_mbuf_refcnt_read",
    // ethdev
    "rte_eth_rx_burst",
    "rte_eth_tx_burst",
    "rte_eth_dev_configure",
    "rte_eth_dev_adjust_nb_rx_tx_desc",
    "rte_eth_rx_queue_setup",
    "rte_eth_tx_queue_setup",
    "rte_eth_dev_start",
    "rte_eth_dev_stop",
    "rte_eth_dev_close",
    "rte_eth_dev_info_get",
    "rte_eth_dev_socket_id",
    "rte_eth_dev_count_avail",
    "rte_eth_find_next",
    "rte_eth_dev_is_valid_port",
    "rte_eth_dev_get_port_by_name",
    "rte_eth_dev_get_name_by_port",
    "rte_eth_macaddr_get",
    "rte_eth_link_get_nowait",
    "rte_eth_stats_get",
    "rte_eth_stats_reset",
    "rte_eth_dev_set_mtu",
    "rte_eth_dev_get_mtu",
    "rte_eth_promiscuous_enable",
    "rte_eth_promiscuous_disable",
    "rte_eth_promiscuous_get",
];

/// Constants bound. The offload and RSS bits are `RTE_BIT64(n)` macros: bindgen evaluates them
/// through clang (`clang_macro_fallback`).
const VARS: &[&str] = &[
    "RTE_MAX_LCORE",
    "RTE_MAX_ETHPORTS",
    "RTE_MAX_NUMA_NODES",
    "RTE_PKTMBUF_HEADROOM",
    "RTE_MBUF_DEFAULT_BUF_SIZE",
    "RTE_MBUF_DEFAULT_DATAROOM",
    "RTE_MEMPOOL_CACHE_MAX_SIZE",
    "RTE_ETHER_ADDR_LEN",
    "RTE_ETHER_MTU",
    "RTE_ETH_NAME_MAX_LEN",
    "RTE_ETH_LINK_.*",
    "RTE_ETH_RSS_.*",
    "RTE_ETH_RX_OFFLOAD_.*",
    "RTE_ETH_TX_OFFLOAD_.*",
    "RTE_MBUF_F_.*",
    "RTE_ETH_MQ_.*",
    "RTE_RING_.*",
    "SOCKET_ID_ANY",
    "LCORE_ID_ANY",
    "RTE_MEMZONE_.*",
];

fn fail(what: &str) -> ! {
    eprintln!("\nerror: {what}\n\n{INSTALL_HINT}\n");
    std::process::exit(1);
}

/// One line saying why pkg-config did not give us libdpdk >= MIN_DPDK.
fn why_no_dpdk() -> String {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    match Command::new(&pkg_config)
        .args(["--modversion", "libdpdk"])
        .output()
    {
        Err(_) => format!("`{pkg_config}` is not installed, so libdpdk cannot be located"),
        Ok(out) if out.status.success() => format!(
            "libdpdk {} is installed but hioload-dpdk-sys needs >= {MIN_DPDK}",
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        Ok(_) => format!(
            "libdpdk >= {MIN_DPDK} not found by pkg-config (no libdpdk.pc in its search path)"
        ),
    }
}

/// The exact compiler flags DPDK wants (`-I...`, `-include rte_config.h`, `-march=...`).
fn dpdk_cflags() -> Vec<String> {
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(&pkg_config)
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run `{pkg_config}`: {e}")));
    if !out.status.success() {
        fail(&format!(
            "`{pkg_config} --cflags libdpdk` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // `-include rte_config.h` is two words; whitespace splitting keeps them as two arguments,
    // which is what both clang and gcc expect.
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let csrc = manifest.join("csrc");
    for f in ["wrapper.h", "shim.h", "shim.c"] {
        println!("cargo:rerun-if-changed={}", csrc.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");

    // 1. libdpdk: version check and link flags (shared libraries; EAL loads its PMD plugins).
    let lib = pkg_config::Config::new()
        .atleast_version(MIN_DPDK)
        .probe("libdpdk")
        .unwrap_or_else(|_| fail(&why_no_dpdk()));
    println!("cargo:rustc-env=HIOLOAD_DPDK_VERSION={}", lib.version);
    let cflags = dpdk_cflags();

    // 2. bindgen.
    let wrapper = csrc.join("wrapper.h");
    let static_fns = out_dir.join("static_fns");
    let mut builder = bindgen::Builder::default()
        .header(wrapper.to_str().unwrap())
        .clang_args(&cflags)
        .clang_arg(format!("-I{}", csrc.display()))
        .use_core()
        .allowlist_recursively(true)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&static_fns)
        .clang_macro_fallback()
        .clang_macro_fallback_build_dir(&out_dir)
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        // Types whose layout bindgen cannot express faithfully (packed + aligned) stay opaque.
        .opaque_type("rte_arp_ipv4")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }
    // bindgen panics when libclang cannot be loaded: turn that into the same single error.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let generated =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()));
    std::panic::set_hook(default_hook);
    let bindings = match generated {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!("bindgen could not parse the DPDK headers: {e}")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            fail(&format!("bindgen failed (libclang missing?): {msg}"))
        }
    };
    bindings
        .write_to_file(out_dir.join("bindings.rs"))
        .unwrap_or_else(|e| panic!("writing bindings.rs: {e}"));

    // 3. The generated static-inline wrappers plus the hand shim, same flags as bindgen used.
    let mut cc = cc::Build::new();
    for flag in &cflags {
        cc.flag(flag);
    }
    cc.include(&csrc)
        .file(static_fns.with_extension("c"))
        .file(csrc.join("shim.c"))
        .opt_level(3)
        .warnings(false)
        .compile("hioload_dpdk_shim");
}
