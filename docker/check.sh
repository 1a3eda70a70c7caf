#!/usr/bin/env bash
# CI check of the container image: builds docker/Dockerfile with podman, then starts the built
# image's entrypoint in both modes and gets a WebSocket echo back from each (docker/ws-probe.py):
#   kernel  in a network namespace of its own, on the entrypoint's default address 0.0.0.0:8080,
#           probed at 127.0.0.1:8080 there: started as root, the server must run as uid 10001
#           without capabilities; then once more started as that user (`docker run --user`);
#           the entrypoint's refusals (EAL arguments in kernel mode, and so on) are checked too;
#   dpdk    on a net_tap vdev inside a network namespace: the tap's kernel side is 198.18.0.1/15,
#           hioload-echo's userspace stack is 198.18.0.2, probed from the namespace.
# Both get SIGTERM at the end and must stop gracefully (exit 0).
#
# Usage: docker/check.sh [--rebuild-bases]
#   --rebuild-bases   remake the local base images even if they exist
#   The image stays in podman's storage as localhost/hioload-echo:check; with the layer and cargo
#   caches, a second run takes about a minute.
#   DOCKER_CHECK_DPDK=auto|require|skip  (default auto: the DPDK mode is run, and counted as
#                     skipped, with a notice, only while the binary in the image says that its
#                     DPDK data path is not wired into the server yet; require: that is a failure)
#   DOCKER_CHECK_EAL, DOCKER_CHECK_APP_ARGS  override the DPDK-mode arguments (defaults:
#                     "-l 0-1 --no-pci --file-prefix hlckPID --vdev=net_tap0,iface=hlckPID" and
#                     "--addr 198.18.0.2:8080"; the address must stay 198.18.0.2:8080)
#
# Why this way: CI has no Docker engine and no registry, and containers cannot be started in its
# sandbox (setrlimit is refused). So:
#  1. the base images the Dockerfile names are made here, once, and cached in podman's storage:
#     docker.io/library/debian:bookworm-slim from debootstrap, docker.io/library/rust:1-bookworm =
#     that + gcc + the host's Rust toolchain. The host's CA bundle goes into both: on a machine
#     whose egress re-signs TLS (this sandbox does), cargo in the build stage needs it;
#  2. podman builds the real Dockerfile (chroot isolation), with network for apt and crates.io;
#  3. a container is created (not started) from the image and its root file system mounted; the
#     image's ENTRYPOINT runs there under chroot with the image's ENV, in private mount and PID
#     namespaces, with what `docker run --device /dev/net/tun -v /dev/hugepages:/dev/hugepages
#     --ulimit memlock=-1` would give it (a minimal /dev, proc, read-only sysfs).
# Needs root, podman, debootstrap, python3, iproute2; DPDK mode needs hugepages (reserved here
# with scripts/bind-nic.sh if fewer than 1024). Network: only namespaces this script creates.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

rebuild_bases=0
for arg in "$@"; do
    case "$arg" in
    --rebuild-bases) rebuild_bases=1 ;;
    -h | --help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
    esac
done
dpdk_policy=${DOCKER_CHECK_DPDK:-auto}
case "$dpdk_policy" in auto | require | skip) ;; *) echo "check.sh: DOCKER_CHECK_DPDK must be auto, require or skip" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "check.sh: must run as root (podman storage, chroot, namespaces)" >&2; exit 1; }

SLIM=docker.io/library/debian:bookworm-slim
RUST=docker.io/library/rust:1-bookworm
IMAGE=localhost/hioload-echo:check
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the facade's Server::start answers while DPDK mode is not wired in (src/server.rs).
DPDK_NOT_WIRED='DPDK data path is not wired into the server yet'

start=$SECONDS
stage() { printf '\n=== docker check: %s (%ss)\n' "$*" "$((SECONDS - start))"; }
fail() { printf 'docker check: FAILED: %s\n' "$*" >&2; exit 1; }

# ---- cleanup: everything this script starts or creates, by name or PID it recorded ----
work=$(mktemp -d /tmp/hioload-docker-check.XXXXXX)
netns=()
pids=()
ctr=""
huge_dir=""
huge_prefix=hlck$$
huge_mounted_by_us=""
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for p in "${netns[@]}"; do ip netns del "$p" 2>/dev/null || true; done
    if [ -n "$ctr" ]; then
        podman umount "$ctr" >/dev/null 2>&1 || true
        podman rm -f "$ctr" >/dev/null 2>&1 || true
    fi
    # Hugepage files of our EAL (--file-prefix): the EAL keeps them after exit for secondaries.
    if [ -n "$huge_dir" ]; then rm -f "$huge_dir/$huge_prefix"map_*; fi
    # A hugetlbfs that bind-nic.sh mounted for this check goes again (hugepage counts stay).
    if [ -n "$huge_mounted_by_us" ]; then umount "$huge_mounted_by_us" 2>/dev/null || true; fi
    rm -rf "$work"
}
# running PID: whether PID exists and is not a zombie.
running() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stage "tools"
need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v ip >/dev/null || need+=(iproute2)
[ -x /usr/bin/python3 ] || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
python=/usr/bin/python3
podman --version

# ---- 1. base images ----
stage "base image $SLIM"
if [ "$rebuild_bases" -eq 0 ] && podman image exists "$SLIM" &&
    [ "$(podman image inspect --format '{{index .Labels "hioload.check"}}' "$SLIM" 2>/dev/null)" = local-base ]; then
    echo "cached (local debootstrap build)"
elif [ "$rebuild_bases" -eq 0 ] && podman image exists "$SLIM"; then
    echo "present (not made by this script; used as is)"
else
    rootfs=$work/rootfs
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log"; fail "debootstrap bookworm from $MIRROR"; }
    # Same apt sources as the official image (updates and security too).
    rm -f "$rootfs/etc/apt/sources.list"
    cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # Local-only: the host's trusted CAs, picked up when an image installs ca-certificates.
    # (update-ca-certificates wants one certificate per file.)
    mkdir -p "$rootfs/usr/local/share/ca-certificates/host"
    awk -v dir="$rootfs/usr/local/share/ca-certificates/host" '
        /-----BEGIN CERTIFICATE-----/ { n++; f = sprintf("%s/host-%03d.crt", dir, n) }
        f { print > f }
        /-----END CERTIFICATE-----/ { close(f); f = "" }' /etc/ssl/certs/ca-certificates.crt
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' --change 'LABEL hioload.check=local-base' - "$SLIM" >/dev/null
    rm -rf "$rootfs"
fi

stage "base image $RUST (host toolchain)"
sysroot=$(rustc --print sysroot)
host_rustc=$(rustc -V)
if [ "$rebuild_bases" -eq 0 ] && podman image exists "$RUST" &&
    [ "$(podman image inspect --format '{{index .Labels "hioload.check.rustc"}}' "$RUST" 2>/dev/null)" = "$host_rustc" ]; then
    echo "cached ($host_rustc)"
else
    mkdir -p "$work/rust-base"
    # Like the official image: gcc and libc headers, CARGO_HOME and RUSTUP_HOME under /usr/local,
    # cargo and rustc on PATH. The toolchain is copied without its docs.
    cat >"$work/rust-base/Containerfile" <<EOF
FROM $SLIM
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev make ca-certificates && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/rust /usr/local/cargo/bin /usr/local/rustup \
 && cp -a /host-rust/bin /host-rust/lib /usr/local/rust/ \
 && if [ -d /host-rust/libexec ]; then cp -a /host-rust/libexec /usr/local/rust/; fi \
 && ln -s /usr/local/rust/bin/* /usr/local/cargo/bin/ && cargo --version && rustc --version
LABEL hioload.check.rustc="$host_rustc"
EOF
    podman build --isolation=chroot --pull=never -v "$sysroot:/host-rust:ro" \
        -t "$RUST" "$work/rust-base" >"$work/rust-base.log" 2>&1 ||
        { tail -30 "$work/rust-base.log"; fail "building the local $RUST"; }
    tail -2 "$work/rust-base.log"
fi

# ---- 2. the image ----
stage "podman build -f docker/Dockerfile (hioload-echo --features dpdk)"
build_start=$SECONDS
podman build --isolation=chroot --pull=never -f docker/Dockerfile -t "$IMAGE" "$repo" >"$work/build.log" 2>&1 ||
    { tail -60 "$work/build.log"; fail "podman build of docker/Dockerfile"; }
echo "  $(grep -c 'Using cache' "$work/build.log" || true) steps from the layer cache"
grep -E 'Finished|^hioload-echo ' "$work/build.log" | sed 's/^/  /' || true
echo "image built in $((SECONDS - build_start))s: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# ---- 3. a container's root file system, and a way to run the entrypoint in it ----
stage "container root file system"
ctr=$(podman create --pull=never --name "hioload-check-$$" "$IMAGE")
root=$(podman mount "$ctr")
mapfile -t entrypoint < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
image_user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[ ${#entrypoint[@]} -gt 0 ] || fail "the image has no ENTRYPOINT"
[ -z "$image_user" ] || [ "$image_user" = root ] || [ "$image_user" = 0 ] ||
    fail "image USER is '$image_user'; this check runs the entrypoint as root like docker run does without --user"
echo "root: $root"
echo "entrypoint: ${entrypoint[*]}   env: ${image_env[*]}"

# The mounts `docker run --device /dev/net/tun -v /dev/hugepages:/dev/hugepages` sets up, made
# inside a private mount namespace (they vanish with it), then chroot and the image's entrypoint.
cat >"$work/enter.sh" <<'EOF'
#!/bin/bash
# enter.sh ROOT ENV... -- ENTRYPOINT... ARGS...   (runs as PID 1 of fresh mount + PID namespaces)
set -eu
root=$1; shift
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o nosuid,mode=755,size=64k dev "$root/dev"
for n in null zero full random urandom tty; do touch "$root/dev/$n"; mount --bind "/dev/$n" "$root/dev/$n"; done
mkdir -p "$root/dev/net" "$root/dev/shm" "$root/dev/pts" "$root/dev/hugepages"
touch "$root/dev/net/tun"; mount --bind /dev/net/tun "$root/dev/net/tun"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
if [ -n "${HUGE_DIR:-}" ]; then mount --bind "$HUGE_DIR" "$root/dev/hugepages"; fi
ln -s /proc/self/fd "$root/dev/fd"; ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"; ln -s /proc/self/fd/2 "$root/dev/stderr"
# --ulimit memlock=-1 (this sandbox refuses it; net_tap does not need it, VFIO would)
[ "$(ulimit -l)" = unlimited ] || ulimit -l unlimited 2>/dev/null ||
    echo "enter.sh: note: cannot lift the locked-memory limit here ($(ulimit -l) KiB)" >&2
# --read-only: the image's file system read-only (the mounts above stay writable, as in Docker)
if [ -n "${READONLY:-}" ]; then mount --rbind "$root" "$root"; mount -o remount,bind,ro "$root"; fi
env=""
while [ "$1" != "--" ]; do env="$env $1"; shift; done
shift
# shellcheck disable=SC2086 # the image's ENV entries have no spaces in this image (checked by the caller)
exec chroot ${USERSPEC:+--userspec="$USERSPEC"} "$root" /usr/bin/env -i $env "$@"
EOF
chmod +x "$work/enter.sh"
for e in "${image_env[@]}"; do case "$e" in *' '*) fail "image ENV entry with a space is not supported here: $e" ;; esac; done

# start_entrypoint NETNS LOG [VAR=VALUE...] -- ARGS...: starts the entrypoint in the background
# in NETNS (as root, or as $run_as, a uid:gid, like `docker run --user`); sets $runner (the
# unshare process) and $server (PID 1 inside: after the entrypoint's exec, hioload-echo itself).
start_entrypoint() {
    local ns=$1 log=$2
    shift 2
    local extra=()
    while [ "$1" != "--" ]; do extra+=("$1"); shift; done
    shift
    HUGE_DIR=${huge_dir:-} USERSPEC=${run_as:-} READONLY=${read_only:-} nsenter --net="/run/netns/$ns" \
        unshare --mount --propagation private --pid --fork \
        "$work/enter.sh" "$root" HOME=/root "${image_env[@]}" "${extra[@]}" -- "${entrypoint[@]}" "$@" \
        >"$log" 2>&1 &
    runner=$!
    pids+=("$runner")
    server=""
    for _ in $(seq 50); do
        server=$(cat "/proc/$runner/task/$runner/children" 2>/dev/null | awk '{print $1}') || true
        [ -n "$server" ] && break
        running "$runner" || break
        sleep 0.1
    done
}

# stop_gracefully LOG WHAT: SIGTERM to the server, then it must exit 0 within 15 s.
stop_gracefully() {
    local log=$1 what=$2 rc
    [ -n "$server" ] || fail "$what: no server process"
    kill -TERM "$server"
    for _ in $(seq 150); do running "$runner" || break; sleep 0.1; done
    running "$runner" && { cat "$log"; fail "$what: still running 15 s after SIGTERM"; }
    rc=0
    wait "$runner" || rc=$?
    [ "$rc" -eq 0 ] || { cat "$log"; fail "$what: exit status $rc after SIGTERM (want 0: graceful stop)"; }
    echo "$what: SIGTERM -> graceful stop, exit 0"
}

new_netns() { # new_netns NAME: a network namespace with loopback up, deleted on exit
    ip netns add "$1"
    netns+=("$1")
    ip -n "$1" link set lo up
}

# run_refusal WHAT WANT_TEXT [VAR=VALUE...] -- ARGS...: the entrypoint must exit 2 saying WANT_TEXT.
run_refusal() {
    local what=$1 want=$2 rc=0
    shift 2
    start_entrypoint "$ns_k" "$work/refusal.log" "$@"
    wait "$runner" || rc=$?
    if [ "$rc" -ne 2 ] || ! grep -q -- "$want" "$work/refusal.log"; then
        cat "$work/refusal.log"
        fail "$what: want exit 2 and '$want', got exit $rc"
    fi
    echo "$what: refused (exit 2): $(grep -m1 '^hioload-entrypoint:' "$work/refusal.log")"
}

version=$(chroot "$root" /usr/local/bin/hioload-echo --version)
echo "binary: $version"
case "$version" in *"data paths: kernel)"*) fail "the image's hioload-echo was built without DPDK ($version)" ;; esac

# ---- 4. kernel mode ----
stage "kernel mode: entrypoint as in 'docker run -e HIOLOAD_MODE=kernel IMAGE --workers 2'"
ns_k=hlck-kern-$$
new_netns "$ns_k"
run_as=""
read_only=""
run_refusal "kernel mode with EAL arguments" "takes hioload-echo arguments only" HIOLOAD_MODE=kernel -- -l 0 -- --addr 127.0.0.1:1
run_refusal "dpdk mode without '--'" "expects EAL arguments" -- --addr 127.0.0.1:1
run_refusal "unknown mode" "must be dpdk or kernel" HIOLOAD_MODE=xdp --
start_entrypoint "$ns_k" "$work/kernel.log" HIOLOAD_MODE=kernel -- --workers 2
[ -n "$server" ] || { cat "$work/kernel.log"; fail "kernel mode: the entrypoint did not start"; }
ip netns exec "$ns_k" "$python" docker/ws-probe.py 127.0.0.1 8080 --wait 20 ||
    { cat "$work/kernel.log"; fail "kernel mode: no echo"; }
uid=$(awk '/^Uid:/ {print $2}' "/proc/$server/status")
exe=$(readlink "/proc/$server/exe")
[ "$uid" = 10001 ] || fail "kernel mode: server runs as uid $uid, want 10001 (hioload)"
grep -q 'CapEff:[[:space:]]*0000000000000000' "/proc/$server/status" || fail "kernel mode: the server kept capabilities"
echo "kernel mode: served by $exe as uid $uid with no capabilities"
grep -q 'listening on ws://0.0.0.0:8080/ws' "$work/kernel.log" || { cat "$work/kernel.log"; fail "kernel mode: no 'listening on ws://0.0.0.0:8080/ws' line"; }
stop_gracefully "$work/kernel.log" "kernel mode"
sed 's/^/  | /' "$work/kernel.log"

stage "kernel mode as in 'docker run --user hioload --read-only -e HIOLOAD_MODE=kernel IMAGE' (compose.kernel.yaml)"
hioload_ids=$(chroot "$root" id -u hioload):$(chroot "$root" id -g hioload)
run_as=$hioload_ids
read_only=1
start_entrypoint "$ns_k" "$work/kernel-user.log" HIOLOAD_MODE=kernel -- --addr 0.0.0.0:8081 --workers 1
[ -n "$server" ] || { cat "$work/kernel-user.log"; fail "kernel mode as hioload: the entrypoint did not start"; }
ip netns exec "$ns_k" "$python" docker/ws-probe.py 127.0.0.1 8081 --wait 20 ||
    { cat "$work/kernel-user.log"; fail "kernel mode as hioload: no echo"; }
stop_gracefully "$work/kernel-user.log" "kernel mode as hioload ($hioload_ids), read-only root"
run_as=""
read_only=""

# ---- 5. DPDK mode ----
stage "dpdk mode: net_tap in a namespace, 198.18.0.2 (userspace stack) <- 198.18.0.1 (kernel)"
dpdk_result=skipped
if [ "$dpdk_policy" = skip ]; then
    echo "DOCKER_CHECK_DPDK=skip: not run"
else
    mounted_before=$(awk '$3 == "hugetlbfs" && $2 == "/dev/hugepages"' /proc/mounts)
    scripts/bind-nic.sh --hugepages 1024 | sed 's/^/  /'
    [ -n "$mounted_before" ] || huge_mounted_by_us=/dev/hugepages
    huge_dir=$(awk '$3 == "hugetlbfs" {print $2; exit}' /proc/mounts)
    [ -n "$huge_dir" ] || fail "dpdk mode: no hugetlbfs mounted after scripts/bind-nic.sh"
    ns_d=hlck-dpdk-$$
    tap=hlck$$
    tap=${tap:0:15}
    new_netns "$ns_d"
    # shellcheck disable=SC2206 # word splitting of the override is intended
    eal=(${DOCKER_CHECK_EAL:--l 0-1 --no-pci --file-prefix $huge_prefix --vdev=net_tap0,iface=$tap})
    # shellcheck disable=SC2206
    app=(${DOCKER_CHECK_APP_ARGS:---addr 198.18.0.2:8080})
    echo "args: ${eal[*]} -- ${app[*]}"
    start_entrypoint "$ns_d" "$work/dpdk.log" -- "${eal[@]}" -- "${app[@]}"
    up=0
    for _ in $(seq 300); do # 30 s for EAL init and the tap to appear
        running "$runner" || break
        if ip -n "$ns_d" link show "$tap" >/dev/null 2>&1; then up=1; break; fi
        sleep 0.1
    done
    if [ "$up" -eq 0 ]; then
        rc=0
        if running "$runner"; then rc=timeout; else wait "$runner" || rc=$?; fi
        if [ "$rc" != timeout ] && grep -q "$DPDK_NOT_WIRED" "$work/dpdk.log"; then
            sed 's/^/  | /' "$work/dpdk.log"
            [ "$dpdk_policy" = require ] && fail "dpdk mode: the image's hioload-echo has no DPDK data path yet (DOCKER_CHECK_DPDK=require)"
            echo "NOTICE: dpdk mode SKIPPED: the hioload-echo in this image does not serve DPDK yet ('$DPDK_NOT_WIRED')."
            echo "        This stage runs for real as soon as it does; DOCKER_CHECK_DPDK=require makes the skip a failure."
        else
            cat "$work/dpdk.log"
            fail "dpdk mode: no tap interface $tap in $ns_d (server: $rc)"
        fi
    else
        ip -n "$ns_d" addr add 198.18.0.1/15 dev "$tap"
        ip -n "$ns_d" link set "$tap" up
        ip netns exec "$ns_d" "$python" docker/ws-probe.py 198.18.0.2 8080 --wait 30 ||
            { cat "$work/dpdk.log"; fail "dpdk mode: no echo from 198.18.0.2:8080"; }
        ip netns exec "$ns_d" ping -c 1 -W 2 198.18.0.2 >/dev/null 2>&1 && echo "dpdk mode: 198.18.0.2 answers ping" ||
            echo "dpdk mode: 198.18.0.2 does not answer ping (not required)"
        stop_gracefully "$work/dpdk.log" "dpdk mode"
        sed 's/^/  | /' "$work/dpdk.log"
        dpdk_result=passed
    fi
fi

stage "done: image builds; kernel mode passed; dpdk mode $dpdk_result"
