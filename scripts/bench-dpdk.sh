#!/usr/bin/env bash
# The DPDK data path measured as a WebSocket server, beside the kernel path, in one run.
#
# DPDK: hioload-echo in DPDK mode on one lcore (CPU $BENCH_SERVER_CPU, default 1) and hioload-bench
# in DPDK mode on CPU $BENCH_CLIENT_CPU (default 0), the two processes joined by net_memif (the
# server has the memif server role and creates the socket, in a temporary directory this script
# makes; the load generator is the memif client, and sizes the rings: 4096 slots, so that 200
# connections × 16 KiB in flight are not dropped): no kernel anywhere between them. The server's
# cost per echo is its lcore's busy time (TSC time of its loop turns that received or sent
# packets, from its /metrics): a polling lcore is at 100 % CPU whatever the load.
# Kernel: hioload-echo on the kernel path (1 worker, io_uring where the kernel allows it; the same
# binary; --no-affinity, so that taskset places it) on the same CPU, hioload-bench in kernel mode
# on loopback; its cost per echo is its CPU time from /proc over the window. Every echo is
# verified byte for byte on both paths.
#
# Scenarios (connections × payload, P in flight): 100×20 B P=1, 100×20 B P=16, 10×1 KiB P=1,
# 200×16 KiB P=1. Each round runs every scenario on the DPDK path (its server is started for the
# round and stopped after it, so that its polling lcore never shares the CPU with the kernel
# server), then on the kernel path; with --rounds N the rounds interleave and medians are
# reported. The markdown report also goes to target/bench/bench-dpdk-<date>.md.
#
# Usage: scripts/bench-dpdk.sh [--quick] [--warmup S] [--duration S] [--rounds N]
#                              [--scenarios "100x20 100x20p16 10x1K 200x16K"] [--paths "dpdk kernel"]
#                              [--validate] [--no-build] [--stack-ring-bytes N]
#        scripts/bench-dpdk.sh --smoke     (CI: a few seconds of verified echoes over memif, no table;
#                                           fails if any echo is wrong or none completes)
#        --validate  adds a check of the busy-time accounting: the DPDK server again, with
#                    --idle-sleep-us 20 (it sleeps after idle turns, so /proc sees its real CPU time),
#                    its /proc CPU time per echo beside its TSC time in loop turns and its busy time.
# Env:   BENCH_WARMUP (2), BENCH_DURATION (5), BENCH_ROUNDS (1), BENCH_SERVER_CPU (1), BENCH_CLIENT_CPU (0),
#        BENCH_KERNEL_PORT (19150), BENCH_ADMIN_PORT (19464), BENCH_TARGET_DIR (target/dpdk; target with
#        --smoke), CARGO_BUILD_JOBS.
# Needs: root, 2 cores, libdpdk-dev >= 22.11 with the memif PMD (librte-net-memif), 512 free 2 MiB
#        hugepages (echo 1024 > /proc/sys/vm/nr_hugepages), taskset. Traffic: memif and 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

warmup=${BENCH_WARMUP:-2}
duration=${BENCH_DURATION:-5}
rounds=${BENCH_ROUNDS:-1}
server_cpu=${BENCH_SERVER_CPU:-1}
client_cpu=${BENCH_CLIENT_CPU:-0}
kport=${BENCH_KERNEL_PORT:-19150}
admin_port=${BENCH_ADMIN_PORT:-19464}
scenarios="100x20 100x20p16 10x1K 200x16K"
stack_ring=16KiB   # the DPDK server's per-connection ring bytes (hioload-echo --stack-ring-bytes)
paths="dpdk kernel"
build=1
smoke=0
validate=0

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) warmup=0.5; duration=1.5 ;;
        --warmup) warmup=$2; shift ;;
        --duration) duration=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --scenarios) scenarios=$2; shift ;;
        --stack-ring-bytes) stack_ring=$2; shift ;;
        --paths) paths=$2; shift ;;
        --validate) validate=1 ;;
        --smoke) smoke=1 ;;
        --no-build) build=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-dpdk.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$smoke" -eq 1 ]; then
    # A few thousand echoes (in practice many more), verified, in a few seconds; no kernel path.
    warmup=0.5; duration=1.5; rounds=1; scenarios="20x20p4 4x16K"; paths="dpdk"; validate=0
fi

# ---- what this needs, checked before anything starts ----
fail() { echo "bench-dpdk.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (hugepages, DPDK devices)"
command -v taskset >/dev/null || fail "taskset not found (apt-get install util-linux)"
[ "$(nproc)" -ge 2 ] || fail "needs 2 cores (server on one, load generator on the other); found $(nproc)"
for cpu in "$server_cpu" "$client_cpu"; do
    taskset -c "$cpu" true 2>/dev/null || fail "CPU $cpu is not usable here (BENCH_SERVER_CPU / BENCH_CLIENT_CPU)"
done
ls /usr/lib/*/dpdk/pmds-*/librte_net_memif.so* >/dev/null 2>&1 || ls /usr/lib/*/librte_net_memif.so* >/dev/null 2>&1 ||
    fail "the DPDK memif PMD (librte_net_memif) is not installed: apt-get install librte-net-memif23 (or dpdk)"
need_pages=512
free_pages=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages 2>/dev/null || echo 0)
if [ "$free_pages" -lt "$need_pages" ]; then
    fail "needs $need_pages free 2 MiB hugepages (1 GiB: the server's stack and mbufs, the load generator's),
  found $free_pages free of $(cat /proc/sys/vm/nr_hugepages) reserved: echo 1024 > /proc/sys/vm/nr_hugepages"
fi

# Timed runs build in a target directory of their own: the DPDK build of the binaries would
# otherwise replace (and be replaced by) scripts/bench.sh's default build at every switch between
# the two. The smoke shares target/release with scripts/autobahn-dpdk.sh (also a DPDK build).
target_dir=$root/target/dpdk
[ "$smoke" -eq 1 ] && target_dir=$root/target
target_dir=${BENCH_TARGET_DIR:-$target_dir}
bin=$target_dir/release
if [ "$build" -eq 1 ]; then
    echo "building release binaries (hioload-echo, hioload-bench; --features dpdk) in $target_dir..." >&2
    cargo build --release -q -p hioload-echo -p hioload-bench --features dpdk --target-dir "$target_dir"
fi
for b in hioload-echo hioload-bench; do
    [ -x "$bin/$b" ] || fail "$bin/$b is missing (run without --no-build)"
done
"$bin/hioload-echo" --version | grep -q dpdk || fail "$bin/hioload-echo has no DPDK data path (run without --no-build)"

tmp=$(mktemp -d /tmp/hioload-bench-dpdk.XXXXXX)
sock=$tmp/memif.sock
logdir=$root/target/bench
mkdir -p "$logdir"
stamp=$(date -u +%Y%m%d-%H%M%S)

# Every process started here is killed by PID on exit; the temp dir and EAL runtime dirs go too.
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp" /var/run/dpdk/hbd-srv-$$-* /var/run/dpdk/hbd-cli-$$-*
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_free "$admin_port" || fail "port $admin_port is in use (set BENCH_ADMIN_PORT)"

nserver=0
dpdk_pid=""
# start_dpdk [extra args]: hioload-echo in DPDK mode, memif server, pinned; waits for its start line.
start_dpdk() {
    nserver=$((nserver + 1))
    rm -f "$sock"
    # A fresh log: its start line must be this server's (its admin listener answers before its
    # EAL is up, without the busy counters).
    local log=$logdir/bench-dpdk-server.log
    rm -f "$log"
    taskset -c "$server_cpu" "$bin/hioload-echo" -l "$server_cpu" --no-pci --no-telemetry --in-memory \
        --file-prefix="hbd-srv-$$-$nserver" \
        --vdev="net_memif0,role=server,socket=$sock,socket-abstract=no,mac=02:00:00:00:00:02" \
        -- --addr 198.18.0.2:8080 --netmask 24 --admin-addr "127.0.0.1:$admin_port" \
        --stack-connections 2048 --stack-ring-bytes "$stack_ring" "$@" >"$log" 2>&1 &
    dpdk_pid=$!
    pids+=("$dpdk_pid")
    for _ in $(seq 600); do
        grep -q "listening on ws://" "$log" 2>/dev/null && return 0
        kill -0 "$dpdk_pid" 2>/dev/null || { echo "bench-dpdk.sh: hioload-echo (DPDK) exited at start:" >&2; cat "$log" >&2; exit 1; }
        sleep 0.1
    done
    fail "hioload-echo (DPDK) printed no start line within 60 s; log: $log"
}
stop_dpdk() {
    [ -n "$dpdk_pid" ] || return 0
    kill -TERM "$dpdk_pid" 2>/dev/null || true
    local rc=0
    wait "$dpdk_pid" || rc=$?
    [ "$rc" -eq 0 ] || errors_seen+=("hioload-echo (DPDK) exited $rc after SIGTERM (log: target/bench/bench-dpdk-server.log)")
    dpdk_pid=""
}

kernel_pid=""
if [[ " $paths " == *" kernel "* ]]; then
    port_free "$kport" || fail "port $kport is in use (set BENCH_KERNEL_PORT)"
    # --no-affinity: hioload-echo would pin its worker to CPU 0 whatever taskset says.
    taskset -c "$server_cpu" "$bin/hioload-echo" --addr "127.0.0.1:$kport" --workers 1 --no-affinity --admin-addr off \
        >"$logdir/bench-dpdk-kernel-server.log" 2>&1 &
    kernel_pid=$!
    pids+=("$kernel_pid")
    for _ in $(seq 100); do
        port_free "$kport" || break
        kill -0 "$kernel_pid" 2>/dev/null || { cat "$logdir/bench-dpdk-kernel-server.log" >&2; fail "hioload-echo (kernel) exited at start"; }
        sleep 0.1
    done
fi

nclient=0
# bench PATH SCENARIO [extra]: one hioload-bench run, its JSON line on stdout (empty on failure).
bench() {
    local path=$1 sc=$2; shift 2
    local conns=${sc%%x*} rest=${sc#*x}; local size=${rest%%p*} pipe=1
    [[ "$rest" == *p* ]] && pipe=${rest#*p}
    local load=(-c "$conns" -s "$size" -p "$pipe" -w "$warmup" -d "$duration" --json)
    nclient=$((nclient + 1))
    case "$path" in
        dpdk*) taskset -c "$client_cpu" "$bin/hioload-bench" -l "$client_cpu" --no-pci --no-telemetry --in-memory \
                   --file-prefix="hbd-cli-$$-$nclient" \
                   --vdev="net_memif0,role=client,socket=$sock,socket-abstract=no,mac=02:00:00:00:00:01,rsize=12" \
                   -- --addr 198.18.0.2:8080 --local-ip 198.18.0.1 --netmask 24 \
                   --admin-addr "127.0.0.1:$admin_port" "${load[@]}" "$@" ;;
        kernel) taskset -c "$client_cpu" "$bin/hioload-bench" --addr "127.0.0.1:$kport" \
                   --server-pid "$kernel_pid" "${load[@]}" "$@" ;;
    esac
}

# field JSON KEY: a number (or null) from hioload-bench's one-line JSON.
field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }

declare -A rate_l cost_l p50_l p99_l sbusy_l cbusy_l ccpu_l scpu_l turn_l hadcpu_l
errors_seen=()
label() { case "$1" in dpdk) echo "DPDK (memif)" ;; dpdk-sleep) echo "DPDK, idle sleep" ;; kernel) echo "kernel (io_uring)" ;; esac; }

# run_path PATH SCENARIO...: every scenario on one path, figures appended to the lists.
run_path() {
    local path=$1 round=$2; shift 2
    local extra=()
    [ "$path" = dpdk-sleep ] && extra=(--server-pid "$dpdk_pid")
    for sc in "$@"; do
        echo "  round $round/$rounds: $sc → $(label "$path")" >&2
        local out
        out=$(bench "$path" "$sc" "${extra[@]}") || true
        if [ -z "$out" ]; then
            errors_seen+=("$sc $(label "$path"): hioload-bench failed (see above)")
            continue
        fi
        echo "$out" >>"$logdir/bench-dpdk-$stamp.jsonl"
        local e; e=$(field "$out" errors)
        if [ "$e" != 0 ] || [ "$(field "$out" messages)" = 0 ]; then
            errors_seen+=("$sc $(label "$path"): $e failed connections, $(field "$out" messages) echoes: $(sed -n 's/.*"error_texts":\[\([^]]*\)\].*/\1/p' <<<"$out")")
            continue
        fi
        rate_l[$sc,$path]+=" $(field "$out" msgs_per_s)"
        p50_l[$sc,$path]+=" $(field "$out" p50)"
        p99_l[$sc,$path]+=" $(field "$out" p99)"
        ccpu_l[$sc,$path]+=" $(field "$out" client_cpu_percent)"
        case "$path" in
            dpdk)
                cost_l[$sc,$path]+=" $(field "$out" server_busy_us_per_msg)"
                sbusy_l[$sc,$path]+=" $(field "$out" server_busy_percent)"
                hadcpu_l[$sc,$path]+=" $(field "$out" server_lcore_cpu_percent)"
                cbusy_l[$sc,$path]+=" $(field "$out" client_busy_percent)" ;;
            dpdk-sleep)
                cost_l[$sc,$path]+=" $(field "$out" server_busy_us_per_msg)"
                turn_l[$sc,$path]+=" $(field "$out" server_turn_us_per_msg)"
                scpu_l[$sc,$path]+=" $(field "$out" server_cpu_us_per_msg)" ;;
            kernel)
                cost_l[$sc,$path]+=" $(field "$out" server_cpu_us_per_msg)"
                sbusy_l[$sc,$path]+=" $(field "$out" server_cpu_percent)" ;;
        esac
    done
}

for round in $(seq "$rounds"); do
    for path in $paths; do
        case "$path" in
            dpdk) start_dpdk; run_path dpdk "$round" $scenarios; stop_dpdk ;;
            kernel) run_path kernel "$round" $scenarios ;;
            *) fail "unknown path $path (dpdk kernel)" ;;
        esac
    done
done
if [ "$validate" -eq 1 ]; then
    start_dpdk --idle-sleep-us 20
    run_path dpdk-sleep 1 $scenarios
    stop_dpdk
fi

if [ "$smoke" -eq 1 ]; then
    for sc in $scenarios; do
        [ -n "${rate_l[$sc,dpdk]:-}" ] || continue # failed: in errors_seen
        echo "smoke $sc: ${rate_l[$sc,dpdk]} echoes/s, every one verified; server busy ${cost_l[$sc,dpdk]:-?} µs per echo"
        # Busy time must be there and plausible: > 0, at most the whole window (plus rounding).
        awk -v c="${cost_l[$sc,dpdk]:-}" -v b="${sbusy_l[$sc,dpdk]:-}" 'BEGIN { exit !(c + 0 > 0 && b + 0 > 0 && b + 0 <= 101) }' ||
            errors_seen+=("$sc: implausible server busy time (${cost_l[$sc,dpdk]:-none} µs per echo, ${sbusy_l[$sc,dpdk]:-none} % busy)")
    done
    if [ "${#errors_seen[@]}" -gt 0 ]; then
        printf 'bench-dpdk.sh --smoke: %s\n' "${errors_seen[@]}" >&2
        tail -20 "$logdir/bench-dpdk-server.log" >&2
        exit 1
    fi
    echo "bench-dpdk.sh --smoke: every echo verified, none wrong"
    exit 0
fi

# median "v1 v2 ...": the middle value (mean of the two middle ones), ignoring nulls; empty if none.
median() {
    tr ' ' '\n' <<<"$1" | { grep -E '^[0-9.]+$' || true; } | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
cell() { [ -n "$1" ] && [ "$1" != null ] && printf "%s" "$1" || printf "–"; }
fmt_rate() { [ -n "$1" ] && awk -v r="$1" 'BEGIN { printf "%.0f", r }' || printf "–"; }
ratio() { # ratio A B: A/B with 2 decimals, or –
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "–"; else printf "%.2f×", a / b }'
}
target() { case "$1" in 100x20) echo "≤ 0.33×" ;; 100x20p16|200x16K) echo "≤ 0.50×" ;; *) echo "–" ;; esac; }
m() { median "${1:-}"; }

report() {
    local med=""; [ "$rounds" -gt 1 ] && med="; medians of $rounds interleaved rounds"
    echo "### DPDK path vs kernel path, end-to-end echo, $(date -u +%Y-%m-%d) ($warmup s warm-up + $duration s per run$med)"
    echo
    echo "Machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores," \
        "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r);" \
        "servers on CPU $server_cpu (DPDK: one lcore), hioload-bench on CPU $client_cpu;" \
        "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "Server time per echo, µs (lower is better): DPDK = busy lcore time (TSC time of loop turns that received or sent packets), kernel = CPU time from /proc:"
    echo
    echo "| scenario | DPDK (memif) | kernel (io_uring) | DPDK / kernel | target |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for sc in $scenarios; do
        local d k; d=$(m "${cost_l[$sc,dpdk]:-}"); k=$(m "${cost_l[$sc,kernel]:-}")
        echo "| $sc | $(cell "$d") | $(cell "$k") | $(ratio "$d" "$k") | $(target "$sc") |"
    done
    echo
    echo "Echoes per second (one load-generator core; higher is better) and round-trip latency p50 / p99, µs:"
    echo
    echo "| scenario | DPDK (memif) | kernel (io_uring) | DPDK / kernel | DPDK p50 / p99 | kernel p50 / p99 |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for sc in $scenarios; do
        local d k; d=$(m "${rate_l[$sc,dpdk]:-}"); k=$(m "${rate_l[$sc,kernel]:-}")
        echo "| $sc | $(fmt_rate "$d") | $(fmt_rate "$k") | $(ratio "$d" "$k") |" \
            "$(cell "$(m "${p50_l[$sc,dpdk]:-}")") / $(cell "$(m "${p99_l[$sc,dpdk]:-}")") |" \
            "$(cell "$(m "${p50_l[$sc,kernel]:-}")") / $(cell "$(m "${p99_l[$sc,kernel]:-}")") |"
    done
    echo
    echo "What limits the rate (% of one core over the window): a side near 100 % is the bottleneck; the DPDK load generator polls, so its CPU is always ~100 % and its busy time is the figure. \"DPDK server had its CPU\": below ~99 % other threads took the server's CPU and its busy time reads high:"
    echo
    echo "| scenario | DPDK server busy | DPDK server had its CPU | DPDK client busy | kernel server CPU | kernel client CPU |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for sc in $scenarios; do
        echo "| $sc | $(cell "$(m "${sbusy_l[$sc,dpdk]:-}")") | $(cell "$(m "${hadcpu_l[$sc,dpdk]:-}")") | $(cell "$(m "${cbusy_l[$sc,dpdk]:-}")") |" \
            "$(cell "$(m "${sbusy_l[$sc,kernel]:-}")") | $(cell "$(m "${ccpu_l[$sc,kernel]:-}")") |"
    done
    if [ "$validate" -eq 1 ]; then
        echo
        echo "Accounting check: the DPDK server with --idle-sleep-us 20 (idle turns sleep, so /proc sees its real CPU time), µs per echo:"
        echo
        echo "| scenario | /proc CPU | TSC time in loop turns | turns / CPU | busy (turns that worked) | busy, busy-polling server |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: |"
        for sc in $scenarios; do
            local c t; c=$(m "${scpu_l[$sc,dpdk-sleep]:-}"); t=$(m "${turn_l[$sc,dpdk-sleep]:-}")
            echo "| $sc | $(cell "$c") | $(cell "$t") | $(ratio "$t" "$c") | $(cell "$(m "${cost_l[$sc,dpdk-sleep]:-}")") | $(cell "$(m "${cost_l[$sc,dpdk]:-}")") |"
        done
    fi
    echo
    echo "Scenarios: CxS = C connections × S-byte binary messages, one in flight (pP: P in flight); every echo verified."
    if [ "${#errors_seen[@]}" -gt 0 ]; then
        echo
        echo "Errors:"
        for e in "${errors_seen[@]}"; do echo "- $e"; done
    fi
}

report | tee "$logdir/bench-dpdk-$stamp.md"
echo >&2
echo "(report saved to target/bench/bench-dpdk-$stamp.md, raw figures in target/bench/bench-dpdk-$stamp.jsonl)" >&2
