/* See shim.h. Compiled by build.rs with the `pkg-config --cflags libdpdk` flags. */
#include <rte_config.h>
#include <rte_errno.h>
#include <rte_version.h>

#include "shim.h"

int hioload_rte_errno(void)
{
	return rte_errno;
}

void hioload_rte_errno_clear(void)
{
	rte_errno = 0;
}

uint32_t hioload_rte_version_num(void)
{
	return RTE_VERSION;
}
