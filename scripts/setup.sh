#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine to build, run and test hioload-ws. Idempotent.
#
#   scripts/setup.sh            system packages (build + DPDK + test tools), as root or via sudo
#   scripts/setup.sh --hugepages N   also reserve N 2 MiB hugepages (tests use 1024)
#
# The kernel-fallback build needs only a Rust toolchain and a C compiler; the packages below add
# the DPDK path (libdpdk-dev, libclang-dev for bindgen, pkg-config), hwloc for NUMA topology, and the
# tools the tests drive (iproute2 for network namespaces, iputils-ping, procps, util-linux, and
# Python websockets, a permessage-deflate client).
set -euo pipefail

hugepages=""
while [ $# -gt 0 ]; do
  case "$1" in
    --hugepages) hugepages="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(build-essential pkg-config libclang-dev clang libdpdk-dev dpdk libhwloc-dev
          iproute2 iputils-ping kmod procps util-linux psmisc ca-certificates
          python3 python3-websockets openssl redis-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: no Rust toolchain found; install one with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi

if [ -n "$hugepages" ]; then
  cur=$(cat /proc/sys/vm/nr_hugepages)
  if [ "$cur" -lt "$hugepages" ]; then
    echo "$hugepages" | as_root tee /proc/sys/vm/nr_hugepages >/dev/null
    echo "setup.sh: hugepages $cur -> $(cat /proc/sys/vm/nr_hugepages)"
  fi
fi
echo "setup.sh: ready"
