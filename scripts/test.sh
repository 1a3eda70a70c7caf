#!/usr/bin/env bash
# Runs every test of hioload-ws: unit and integration tests on real loopback sockets, the DPDK
# tests on a real EAL with virtual devices (root: hugepages, network namespaces, tap devices),
# the fuzz-target build, the Autobahn|Testsuite against hioload-echo on both data paths, and the
# Docker image (built with podman, run in kernel and DPDK mode).
#
# Usage: scripts/test.sh [--quick]   (--quick: cargo tests only: no fuzz, Autobahn or Docker stages)
# Needs root (or sudo) for packages, hugepages and namespaces; CI runs exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=0
[ "${1:-}" = "--quick" ] && quick=1

stage() { printf '\n=== %s (%ss)\n' "$*" "$SECONDS"; }

stage "setup"
scripts/setup.sh --hugepages 1024

stage "cargo test (workspace)"
cargo test --workspace --features dpdk --no-fail-fast 2>&1 | tee target-test.log

# The kernel-path tests again on the other I/O backend: the run above uses `auto` (io_uring where
# this kernel allows it), this one epoll.
stage "cargo test (kernel path on the epoll backend: HIOLOAD_TEST_IO=poll)"
HIOLOAD_TEST_IO=poll cargo test --features dpdk --no-fail-fast -p hioload-ws -p hioload-echo \
    --test echo --test load --test backpressure --test slow_reader --test sessions --test reload \
    --test http --test middleware --test control_plane --test pool_limits --test pool_release --test conformance \
    --test chat_example --test late_reader --test binary --test hostile --test tls --test topics 2>&1 | tee -a target-test.log

[ "$quick" -eq 1 ] && { stage "done (quick)"; exit 0; }

stage "fuzz targets (build both flavours, short run of each)"
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" ws/fuzz/run.sh check

# permessage-deflate (12.*, 13.*: 216 cases, ~6 minutes) runs in full on one backend; the other
# paths run every other case and, on DPDK, the first group of each deflate section. The session
# layer that implements it is the same on every path (tests/conformance.rs covers all three).
stage "autobahn (kernel fallback, io_uring where the kernel allows it; all cases, permessage-deflate included)"
AUTOBAHN_IO=auto AUTOBAHN_DEFLATE=1 scripts/autobahn.sh

stage "autobahn (kernel fallback, epoll)"
AUTOBAHN_IO=poll scripts/autobahn.sh

stage "autobahn over wss:// (kernel fallback, TLS in the session layer; cases 1-10)"
AUTOBAHN_TLS=1 AUTOBAHN_PORT=9302 scripts/autobahn.sh "1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*"

stage "autobahn (DPDK userspace path: net_tap, suite in a network namespace)"
AUTOBAHN_DEFLATE=1 scripts/autobahn-dpdk.sh "1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.1.*,13.1.*"

stage "DPDK load generator smoke (hioload-bench on our stack, net_memif, hioload-echo in DPDK mode)"
scripts/bench-dpdk.sh --smoke

stage "docker image (podman build; echo from the entrypoint in kernel and DPDK mode)"
DOCKER_CHECK_DPDK=require docker/check.sh

stage "done"
