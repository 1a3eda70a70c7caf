/*
 * The DPDK API surface hioload-dpdk-sys binds. bindgen reads this header (with the exact
 * `pkg-config --cflags libdpdk` flags) and only emits what build.rs allowlists.
 */
#ifndef HIOLOAD_DPDK_WRAPPER_H
#define HIOLOAD_DPDK_WRAPPER_H

#include <rte_config.h>
#include <rte_version.h>
#include <rte_errno.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_cycles.h>
#include <rte_dev.h>
#include <rte_malloc.h>
#include <rte_ring.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ether.h>
#include <rte_ethdev.h>

#include "shim.h"

#endif
