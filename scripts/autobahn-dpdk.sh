#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient (../shared/tools/autobahn) against hioload-echo in DPDK
# mode: a release build with `--features dpdk` serving on a net_tap vdev through the userspace TCP
# stack (198.18.0.2), with the tap's kernel side moved into a network namespace this script creates
# (198.18.0.1/24), where the suite runs. Fails on any case that is not OK (FAILED, NON-STRICT,
# UNIMPLEMENTED; INFORMATIONAL cases are by design), then stops the server with SIGTERM and
# expects exit 0. Cleans up by PID and namespace name, also on failure.
#
# Usage: scripts/autobahn-dpdk.sh [CASES]   (default: every case; the permessage-deflate ones,
#        12.* and 13.*, only with AUTOBAHN_DEFLATE=1: all 517 cases, ~7 minutes more)
# Needs root and hugepages (echo 1024 > /proc/sys/vm/nr_hugepages); without free hugepages it
# falls back to --no-huge. AUTOBAHN_LCORES sets the polling lcores (default 1).
# AUTOBAHN_IDLE_SLEEP_US (default 20) lets the polling lcore back off
# when idle, so that the suite (Python) gets the CPU on small machines; 0 = pure busy poll.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools=$(cd "${AUTOBAHN_TOOLS:-../shared/tools/autobahn}" && pwd)
cases="${1:-*}"
port="${AUTOBAHN_PORT:-9302}"
idle="${AUTOBAHN_IDLE_SLEEP_US:-20}"
outdir="$root/target/autobahn-dpdk-report"
log="$root/target/autobahn-dpdk-server.log"
ns="hioload-ab$$"
tap="hlab$$"

[ "$(id -u)" -eq 0 ] || { echo "autobahn-dpdk.sh: needs root (hugepages, tap device, namespace)" >&2; exit 2; }
"$tools/install.sh" >/dev/null
cargo build --release -p hioload-echo --features dpdk

mem_args=(--in-memory)
free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages 2>/dev/null || echo 0)
if [ "$free" -lt 256 ]; then
  echo "autobahn-dpdk.sh: only $free free 2 MiB hugepages; running with --no-huge" >&2
  mem_args=(--no-huge --no-shconf -m 1024)
fi
# AUTOBAHN_LCORES (default 1) polling lcores, all on the first CPU this script may use.
cpu=$(taskset -pc $$ 2>/dev/null | sed 's/.*: *//; s/[,-].*//' || echo 0)
lcores=""
for ((l = 0; l < ${AUTOBAHN_LCORES:-1}; l++)); do lcores="${lcores:+$lcores,}$l@$cpu"; done

server=""
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "/var/run/dpdk/hioload-ab$$" # the EAL's runtime directory (--file-prefix)
}
trap cleanup EXIT

ip netns add "$ns"
mkdir -p "$root/target"
target/release/hioload-echo --no-pci --no-telemetry "${mem_args[@]}" --file-prefix="hioload-ab$$" \
  --lcores="$lcores" --vdev="net_tap0,iface=$tap" \
  -- --addr "198.18.0.2:$port" --netmask 24 --idle-sleep-us "$idle" >"$log" 2>&1 &
server=$!
for _ in $(seq 600); do
  grep -q "listening on ws://" "$log" && break
  kill -0 "$server" 2>/dev/null || { echo "autobahn-dpdk.sh: hioload-echo exited at start:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
grep -q "listening on ws://" "$log" || { echo "autobahn-dpdk.sh: no start line within 60 s" >&2; cat "$log" >&2; exit 1; }
ip link set "$tap" netns "$ns"
ip -n "$ns" addr add 198.18.0.1/24 dev "$tap"
ip -n "$ns" link set "$tap" up
ip -n "$ns" link set lo up

status=0
deflate=(--no-deflate)
[ "${AUTOBAHN_DEFLATE:-0}" = 1 ] && deflate=()
ip netns exec "$ns" "$tools/run.sh" "ws://198.18.0.2:$port/ws" "$cases" "${deflate[@]}" --outdir "$outdir" \
  --timeout 1200 --agent hioload-echo-dpdk || status=$?
kill -0 "$server" 2>/dev/null || { echo "autobahn-dpdk.sh: hioload-echo died during the run" >&2; tail -20 "$log" >&2; exit 1; }
[ "$status" -eq 0 ] || { tail -20 "$log" >&2; exit "$status"; }

# Strict: every case must be OK (run.sh fails only on FAILED).
python3 - "$outdir/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
c = s["counts"]
print("autobahn (dpdk): %d cases, counts %s" % (s["reported"], json.dumps(c, sort_keys=True)))
bad = {k: v for k, v in s.get("non_ok", {}).items() if k != "INFORMATIONAL" and v}
if bad or s["reported"] != s["selected"]:
    print("autobahn (dpdk): not strict:", json.dumps(bad, sort_keys=True))
    sys.exit(1)
print("autobahn (dpdk): every case OK (INFORMATIONAL cases are by design)")
PY

# Graceful stop: SIGTERM, exit 0.
kill -TERM "$server"
rc=0
wait "$server" || rc=$?
server=""
[ "$rc" -eq 0 ] || { echo "autobahn-dpdk.sh: hioload-echo exited $rc after SIGTERM" >&2; tail -20 "$log" >&2; exit 1; }
echo "autobahn-dpdk.sh: hioload-echo stopped cleanly"
