#!/bin/sh
# Entrypoint of the hioload-echo image: picks the data path from HIOLOAD_MODE and execs the
# server (it becomes PID 1 and turns SIGTERM from `docker stop` into a graceful stop).
#
#   HIOLOAD_MODE=dpdk (default)  arguments: EAL arguments, `--`, hioload-echo arguments, e.g.
#                                  -l 2-3 -a 0000:3b:00.0 -- --addr 10.0.0.1:8080
#                                runs as the container's user (root: hugepages, VFIO, tap devices).
#   HIOLOAD_MODE=kernel          arguments: hioload-echo arguments only; --addr defaults to
#                                0.0.0.0:8080 (the binary's own default, 127.0.0.1, cannot be
#                                reached from outside a container); started as root, it drops to
#                                user hioload (uid 10001) first.
#
# `--help` and `--version` go straight to the binary in both modes.
set -eu

bin=/usr/local/bin/hioload-echo
mode=${HIOLOAD_MODE:-dpdk}

fail() {
    printf 'hioload-entrypoint: %s\n' "$*" >&2
    exit 2
}

has_arg() { # has_arg WORD ARGS...: whether an argument is WORD or WORD=...
    word=$1
    shift
    for a in "$@"; do
        case "$a" in "$word" | "$word"=*) return 0 ;; esac
    done
    return 1
}

case "${1:-}" in
-h | --help | -V | --version) exec "$bin" "$@" ;;
esac

case "$mode" in
kernel)
    if has_arg -- "$@"; then
        fail "HIOLOAD_MODE=kernel takes hioload-echo arguments only, but got a \`--\` (EAL arguments
go with HIOLOAD_MODE=dpdk). Example: docker run -p 8080:8080 -e HIOLOAD_MODE=kernel IMAGE --workers 2"
    fi
    has_arg --addr "$@" || set -- --addr 0.0.0.0:8080 "$@"
    if [ "$(id -u)" -eq 0 ]; then
        # setuid clears every capability; no-new-privs keeps it that way.
        exec setpriv --reuid=hioload --regid=hioload --init-groups --no-new-privs -- "$bin" "$@"
    fi
    exec "$bin" "$@"
    ;;
dpdk)
    has_arg -- "$@" || fail "HIOLOAD_MODE=dpdk expects EAL arguments, then \`--\`, then hioload-echo
arguments, e.g.
    -l 2-3 -a 0000:3b:00.0 -- --addr 10.0.0.1:8080
(got: ${*:-no arguments}). Without a DPDK NIC, run the kernel data path: -e HIOLOAD_MODE=kernel.
See docker/README.md."
    # Hints only: the EAL reports these too, but in its own words and without the docker flag.
    if ! has_arg --no-huge "$@" && ! grep -qs ' hugetlbfs ' /proc/mounts; then
        echo "hioload-entrypoint: warning: no hugetlbfs mounted in the container; run with -v /dev/hugepages:/dev/hugepages after reserving hugepages on the host (scripts/bind-nic.sh)" >&2
    fi
    # shellcheck disable=SC3045 # dash, Debian's sh, has ulimit -l
    if [ "$(ulimit -l)" != unlimited ]; then
        # shellcheck disable=SC3045
        echo "hioload-entrypoint: warning: locked-memory limit is $(ulimit -l) KiB; VFIO needs --ulimit memlock=-1" >&2
    fi
    exec "$bin" "$@"
    ;;
*)
    fail "HIOLOAD_MODE must be dpdk or kernel, not '$mode'"
    ;;
esac
