/*
 * Hand-written shim for what bindgen cannot reach: thread-local variables (rte_errno is a
 * per-lcore __thread variable) and version numbers that only exist as macros.
 * Static inline functions are NOT here: bindgen's wrap_static_fns generates those wrappers.
 */
#ifndef HIOLOAD_DPDK_SHIM_H
#define HIOLOAD_DPDK_SHIM_H

#include <stdint.h>

/* The calling thread's rte_errno (a thread-local the macro `rte_errno` expands to). */
int hioload_rte_errno(void);

/* Reset the calling thread's rte_errno to 0 (used before calls that report only through it). */
void hioload_rte_errno_clear(void);

/* RTE_VERSION of the headers this crate was compiled against (RTE_VERSION_NUM(y, m, minor, rel)). */
uint32_t hioload_rte_version_num(void);

#endif
