#!/usr/bin/env bash
# bind-nic.sh: prepare this machine for DPDK (hugepages, hugetlbfs, vfio-pci) and bind a NIC to
# vfio-pci with dpdk-devbind.py, or give it back to its kernel driver.
#
# It refuses, with the reason, whatever would cut the machine off or cannot work: not root, an
# interface carrying the default route or up with addresses (--force overrides), no IOMMU
# (--noiommu opts into vfio's unsafe no-IOMMU mode). --dry-run performs the same checks and
# prints the plan without changing anything.
set -euo pipefail

PROG=${0##*/}

usage() {
	cat <<EOF
Usage: $PROG [OPTIONS] [DEVICE]
       $PROG --status
       $PROG --unbind [--driver NAME] DEVICE

Reserve hugepages, mount hugetlbfs, load vfio-pci and bind DEVICE (a PCI address such as
0000:3b:00.0 or 3b:00.0, or an interface name such as eth1) to vfio-pci for DPDK. Without
DEVICE only hugepages and hugetlbfs are prepared.

Options:
  --hugepages N       hugepages to reserve (default 1024; 0 leaves the count alone)
  --hugepage-size S   2M (default) or 1G
  --node N            reserve on NUMA node N only (default: system-wide, spread by the kernel)
  --mount DIR         hugetlbfs mount point (default /dev/hugepages)
  --status            show hugepages, hugetlbfs mounts, IOMMU, vfio and network devices
  --unbind            give DEVICE back to a kernel driver (see --driver)
  --driver NAME       kernel driver for --unbind (default: let the kernel pick the matching one)
  --dry-run           check everything and print what would be done; change nothing
  --force             bind even if the interface carries the default route or is up with addresses
  --noiommu           without an IOMMU, enable vfio's unsafe no-IOMMU mode (no DMA isolation)
  -h, --help          this text

Needs root, iproute2, and for binding dpdk-devbind.py (Debian: apt-get install dpdk) and
modprobe (kmod). Exit status: 0 done (or planned), 1 refused or failed, 2 usage error.
EOF
}

die_usage() {
	echo "$PROG: $*" >&2
	echo "Try '$PROG --help'." >&2
	exit 2
}

refuse() {
	echo "$PROG: refused: $*" >&2
	exit 1
}

note() { echo "$PROG: $*"; }

HUGEPAGES=1024
HUGEPAGE_SIZE=2M
NODE=""
MOUNT=/dev/hugepages
MODE=bind
DRIVER=""
DRY_RUN=0
FORCE=0
NOIOMMU=0
DEVICE=""

while [ $# -gt 0 ]; do
	case "$1" in
	--hugepages) [ $# -ge 2 ] || die_usage "--hugepages needs a number"; HUGEPAGES=$2; shift 2 ;;
	--hugepage-size) [ $# -ge 2 ] || die_usage "--hugepage-size needs 2M or 1G"; HUGEPAGE_SIZE=$2; shift 2 ;;
	--node) [ $# -ge 2 ] || die_usage "--node needs a number"; NODE=$2; shift 2 ;;
	--mount) [ $# -ge 2 ] || die_usage "--mount needs a directory"; MOUNT=$2; shift 2 ;;
	--driver) [ $# -ge 2 ] || die_usage "--driver needs a name"; DRIVER=$2; shift 2 ;;
	--status) MODE=status; shift ;;
	--unbind) MODE=unbind; shift ;;
	--dry-run) DRY_RUN=1; shift ;;
	--force) FORCE=1; shift ;;
	--noiommu) NOIOMMU=1; shift ;;
	-h | --help) usage; exit 0 ;;
	-*) die_usage "unknown option '$1'" ;;
	*)
		[ -z "$DEVICE" ] || die_usage "only one DEVICE may be given"
		DEVICE=$1
		shift
		;;
	esac
done

[[ $HUGEPAGES =~ ^[0-9]+$ ]] || die_usage "--hugepages must be a number, not '$HUGEPAGES'"
[ -z "$NODE" ] || [[ $NODE =~ ^[0-9]+$ ]] || die_usage "--node must be a number, not '$NODE'"
case "$HUGEPAGE_SIZE" in
2M | 2m) HUGEPAGE_KB=2048; HUGEPAGE_SIZE=2M ;;
1G | 1g) HUGEPAGE_KB=1048576; HUGEPAGE_SIZE=1G ;;
*) die_usage "--hugepage-size must be 2M or 1G, not '$HUGEPAGE_SIZE'" ;;
esac
[ "$MODE" != unbind ] || [ -n "$DEVICE" ] || die_usage "--unbind needs a DEVICE"
[ -z "$DRIVER" ] || [ "$MODE" = unbind ] || die_usage "--driver only goes with --unbind"

# ---- actions: executed, or only printed with --dry-run ----

run() {
	if [ "$DRY_RUN" = 1 ]; then
		echo "would run: $*"
	else
		echo "+ $*"
		"$@"
	fi
}

write_sysfs() { # VALUE PATH
	if [ "$DRY_RUN" = 1 ]; then
		echo "would write '$1' to $2"
	else
		echo "+ echo '$1' > $2"
		echo "$1" >"$2"
	fi
}

# ---- facts about the machine (read-only) ----

hugepages_path() {
	if [ -n "$NODE" ]; then
		echo "/sys/devices/system/node/node$NODE/hugepages/hugepages-${HUGEPAGE_KB}kB/nr_hugepages"
	else
		echo "/sys/kernel/mm/hugepages/hugepages-${HUGEPAGE_KB}kB/nr_hugepages"
	fi
}

hugetlbfs_mounted_at() { # DIR -> prints its options if a hugetlbfs is mounted there
	awk -v dir="$1" '$3 == "hugetlbfs" && $2 == dir { print $4 }' /proc/mounts
}

has_iommu() {
	[ -d /sys/kernel/iommu_groups ] && [ -n "$(ls -A /sys/kernel/iommu_groups 2>/dev/null)" ]
}

find_devbind() {
	local candidate
	for candidate in "$(command -v dpdk-devbind.py 2>/dev/null || true)" \
		/usr/bin/dpdk-devbind.py /usr/sbin/dpdk-devbind.py /usr/share/dpdk/usertools/dpdk-devbind.py; do
		if [ -n "$candidate" ] && [ -x "$candidate" ]; then
			echo "$candidate"
			return 0
		fi
	done
	return 1
}

pci_driver() { # PCI -> current driver name or empty
	local link=/sys/bus/pci/devices/$1/driver
	[ -e "$link" ] && basename "$(readlink -f "$link")" || true
}

PCI_RE='^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$'

iface_pci() { # IFACE -> PCI address of the device behind it (virtio nests one level), or empty
	local path
	path=$(readlink -f "/sys/class/net/$1/device" 2>/dev/null) || return 0
	while [ -n "$path" ] && [ "$path" != / ] && [ "$path" != . ]; do
		if [[ ${path##*/} =~ $PCI_RE ]]; then
			echo "${path##*/}"
			return 0
		fi
		path=${path%/*}
	done
}

pci_ifaces() { # PCI -> interface names on it, space separated
	local n
	for n in /sys/class/net/*; do
		if [ "$(iface_pci "${n##*/}")" = "$1" ]; then printf '%s ' "${n##*/}"; fi
	done | sed 's/ $//'
}

default_route_ifaces() {
	{ ip -4 -o route show default 2>/dev/null; ip -6 -o route show default 2>/dev/null; } |
		sed -n 's/.* dev \([^ ]*\).*/\1/p' | sort -u
}

iface_is_up() {
	ip -o link show dev "$1" 2>/dev/null | grep -q '<[^>]*\bUP\b[^>]*>'
}

iface_addresses() {
	ip -o addr show dev "$1" scope global 2>/dev/null | awk '{ print $4 }' | paste -sd ' ' -
}

# ---- --status ----

show_status() {
	local dir size node total free
	echo "Hugepages:"
	for dir in /sys/kernel/mm/hugepages/hugepages-*; do
		[ -d "$dir" ] || continue
		size=${dir##*hugepages-}
		total=$(cat "$dir/nr_hugepages")
		free=$(cat "$dir/free_hugepages")
		echo "  $size: $total total, $free free"
		for node in /sys/devices/system/node/node[0-9]*; do
			[ -r "$node/hugepages/hugepages-$size/nr_hugepages" ] || continue
			echo "    ${node##*/}: $(cat "$node/hugepages/hugepages-$size/nr_hugepages")"
		done
	done
	echo "hugetlbfs mounts:"
	awk '$3 == "hugetlbfs" { print "  " $2 " (" $4 ")"; found = 1 } END { if (!found) print "  none" }' /proc/mounts
	if has_iommu; then echo "IOMMU: present"; else echo "IOMMU: none (vfio-pci needs --noiommu)"; fi
	if [ -d /sys/bus/pci/drivers/vfio-pci ]; then echo "vfio-pci: loaded"; else echo "vfio-pci: not loaded"; fi
	echo "Network devices (PCI class 02):"
	local dev pci class drv ifaces found=0 routes
	routes=$(default_route_ifaces)
	for dev in /sys/bus/pci/devices/*; do
		[ -r "$dev/class" ] || continue
		class=$(cat "$dev/class")
		[ "${class:0:4}" = "0x02" ] || continue
		found=1
		pci=${dev##*/}
		drv=$(pci_driver "$pci")
		ifaces=$(pci_ifaces "$pci")
		local extra=""
		for i in $ifaces; do
			if grep -qx "$i" <<<"$routes"; then extra="$extra [$i: default route]"; fi
		done
		echo "  $pci driver=${drv:-none} if=${ifaces:-none}$extra"
	done
	[ "$found" = 1 ] || echo "  none"
	local devbind
	if devbind=$(find_devbind); then
		echo
		"$devbind" --status-dev net 2>/dev/null || true
	else
		echo "(dpdk-devbind.py not found: apt-get install dpdk for its view)"
	fi
}

if [ "$MODE" = status ]; then
	show_status
	exit 0
fi

# ---- checks: every refusal happens before anything is changed ----

[ "$(id -u)" = 0 ] || refuse "must run as root (writes /sys, mounts hugetlbfs, binds drivers)"
[ "$DRY_RUN" = 0 ] || note "dry run: nothing will be changed"

PCI=""
IFACE=""
if [ -n "$DEVICE" ]; then
	if [[ $DEVICE =~ ^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$ ]]; then
		PCI=$DEVICE
		[[ $PCI =~ ^[0-9a-fA-F]{4}: ]] || PCI="0000:$PCI"
		PCI=${PCI,,}
		[ -d "/sys/bus/pci/devices/$PCI" ] || refuse "no PCI device $PCI"
		IFACE=$(pci_ifaces "$PCI")
		IFACE=${IFACE%% *}
	else
		IFACE=$DEVICE
		[ -e "/sys/class/net/$IFACE" ] || refuse "no network interface '$IFACE' (and not a PCI address)"
	fi

	# Interface safety: binding takes the interface away from the kernel.
	if [ -n "$IFACE" ] && [ "$MODE" = bind ]; then
		if grep -qx "$IFACE" <<<"$(default_route_ifaces)"; then
			if [ "$FORCE" = 1 ]; then
				note "warning: $IFACE carries the default route; binding anyway (--force)"
			else
				refuse "$IFACE carries the default route: binding it would cut this machine off the network (--force to bind anyway)"
			fi
		fi
		addrs=$(iface_addresses "$IFACE")
		if iface_is_up "$IFACE" && [ -n "$addrs" ]; then
			if [ "$FORCE" = 1 ]; then
				note "warning: $IFACE is up with addresses $addrs; binding anyway (--force)"
			else
				refuse "$IFACE is up with addresses $addrs: binding would drop them and their traffic (--force to bind anyway)"
			fi
		fi
	fi

	if [ -z "$PCI" ]; then
		PCI=$(iface_pci "$IFACE")
		if [ -z "$PCI" ]; then
			kind=$(ethtool -i "$IFACE" 2>/dev/null | sed -n 's/^driver: //p' || true)
			[ -n "$kind" ] || kind=$(ip -d -o link show dev "$IFACE" 2>/dev/null | grep -o -E '\b(dummy|veth|bridge|vlan|macvlan|tun|vxlan|bond)\b' | head -n1 || true)
			refuse "$IFACE is not backed by a PCI device${kind:+ ($kind)}: only PCI NICs can be bound to vfio-pci"
		fi
	fi
	CURRENT_DRIVER=$(pci_driver "$PCI")

	if [ "$MODE" = bind ] && [ "$CURRENT_DRIVER" != vfio-pci ]; then
		if ! has_iommu; then
			if [ "$NOIOMMU" = 1 ]; then
				note "warning: no IOMMU; using vfio's unsafe no-IOMMU mode (no DMA isolation) (--noiommu)"
			else
				refuse "no IOMMU (/sys/kernel/iommu_groups is empty): enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on or amd_iommu=on (iommu=pt), or accept no DMA isolation with --noiommu, which sets /sys/module/vfio/parameters/enable_unsafe_noiommu_mode=1"
			fi
		fi
		if [ ! -d /sys/bus/pci/drivers/vfio-pci ] && ! command -v modprobe >/dev/null; then
			refuse "vfio-pci is not loaded and modprobe is missing (apt-get install kmod)"
		fi
	fi
	if [ "$MODE" = unbind ] && [ "$CURRENT_DRIVER" != vfio-pci ]; then
		note "$PCI is bound to ${CURRENT_DRIVER:-no driver}, not vfio-pci: nothing to give back"
		exit 0
	fi
	if [ "$MODE" = bind ] && [ "$CURRENT_DRIVER" = vfio-pci ]; then
		note "$PCI is already bound to vfio-pci"
	fi
	if [ "$CURRENT_DRIVER" != vfio-pci ] || [ "$MODE" = unbind ]; then
		DEVBIND=$(find_devbind) || refuse "dpdk-devbind.py not found (Debian: apt-get install dpdk)"
	fi
fi

# ---- plan / actions ----

if [ "$MODE" = unbind ]; then
	if [ -n "$DRIVER" ]; then
		run "$DEVBIND" --bind="$DRIVER" "$PCI"
	else
		run "$DEVBIND" --unbind "$PCI"
		[ ! -e "/sys/bus/pci/devices/$PCI/driver_override" ] || write_sysfs "" "/sys/bus/pci/devices/$PCI/driver_override"
		write_sysfs "$PCI" /sys/bus/pci/drivers_probe
	fi
	[ "$DRY_RUN" = 1 ] || note "$PCI is now bound to $(pci_driver "$PCI" | sed 's/^$/no driver/')"
	exit 0
fi

# 1. hugepages
if [ "$HUGEPAGES" -gt 0 ]; then
	path=$(hugepages_path)
	[ -e "$path" ] || refuse "$path does not exist (no ${HUGEPAGE_SIZE} hugepages${NODE:+ on node $NODE} on this machine)"
	current=$(cat "$path")
	if [ "$current" -ge "$HUGEPAGES" ]; then
		note "hugepages: $current x $HUGEPAGE_SIZE already reserved${NODE:+ on node $NODE} (>= $HUGEPAGES)"
	else
		write_sysfs "$HUGEPAGES" "$path"
		if [ "$DRY_RUN" = 0 ]; then
			got=$(cat "$path")
			[ "$got" -ge "$HUGEPAGES" ] || note "warning: asked for $HUGEPAGES hugepages, the kernel gave $got (memory fragmented?)"
		fi
	fi
fi

# 2. hugetlbfs
if [ -n "$(hugetlbfs_mounted_at "$MOUNT")" ]; then
	note "hugetlbfs: already mounted at $MOUNT"
else
	[ -d "$MOUNT" ] || run mkdir -p "$MOUNT"
	run mount -t hugetlbfs -o pagesize="$HUGEPAGE_SIZE" nodev "$MOUNT"
fi

# 3. vfio-pci and 4. bind
if [ -n "$DEVICE" ] && [ "$CURRENT_DRIVER" != vfio-pci ]; then
	if [ "$NOIOMMU" = 1 ] && ! has_iommu; then
		if [ -e /sys/module/vfio/parameters/enable_unsafe_noiommu_mode ]; then
			write_sysfs 1 /sys/module/vfio/parameters/enable_unsafe_noiommu_mode
		else
			run modprobe vfio enable_unsafe_noiommu_mode=1
		fi
	fi
	[ -d /sys/bus/pci/drivers/vfio-pci ] || run modprobe vfio-pci
	if [ -n "$IFACE" ] && iface_is_up "$IFACE"; then
		run ip link set dev "$IFACE" down
	fi
	run "$DEVBIND" --bind=vfio-pci "$PCI"
	[ "$DRY_RUN" = 1 ] || note "$PCI${IFACE:+ ($IFACE)} is now bound to $(pci_driver "$PCI")"
fi
[ "$DRY_RUN" = 0 ] || note "dry run complete: nothing was changed"
