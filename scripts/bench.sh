#!/usr/bin/env bash
# Side-by-side WebSocket echo benchmark: hioload-echo (1 worker; its default I/O backend, io_uring
# where the kernel allows it, and again with --io poll: epoll) against a tokio-tungstenite echo, a
# fastwebsockets echo and a raw TCP echo (apps/bench-peers), same load, same run.
#
# Each server is pinned to one core (taskset -c $BENCH_SERVER_CPU, default 0) and the load generator,
# hioload-bench, to another ($BENCH_CLIENT_CPU, default 1). Scenarios (connections × payload, P in
# flight): 100×20 B, 10×1 KiB, 200×16 KiB, 500×16 KiB with P=1, 100×20 B with P=16, and large
# messages: 10×64 KiB with P=4, 4×1 MiB with P=2, 2×16 MiB with P=1. For each it
# prints echoes per second and the server's CPU time per echo (from /proc/PID/stat over the measured
# window: the figure to trust on a noisy machine), with hioload-echo's ratios to each peer; then the
# server RSS per idle connection at $BENCH_IDLE connections. The markdown report also goes to
# target/bench/bench-<date>.md.
#
# Usage: scripts/bench.sh [--quick] [--warmup S] [--duration S] [--rounds N] [--servers "hioload hioload-poll tungstenite fastws raw"]
#                         [--scenarios "100x20 10x1K 200x16K 500x16K 100x20p16 10x64Kp4 4x1Mp2 2x16M"]
#                         [--idle N] [--syscalls] [--no-build]
#        --syscalls adds the servers' syscalls per echo (perf stat on syscall tracepoints; needs linux-perf),
#                   counted in one extra round of their own (tracing costs the traced server CPU).
#        --rounds N repeats every (scenario, server) run N times, interleaved, and reports medians.
#        --servers may add raw-uring: the raw TCP echo on io_uring (kernel >= 6.1), the floor without epoll,
#                  and hioload-base: another build of hioload-echo (--baseline BIN), for a before/after in one run.
#        --baseline BIN adds hioload-base (BIN: e.g. target/release/hioload-echo of an earlier commit, built
#                  in a git worktree) to the servers.
# Env:   BENCH_WARMUP (2), BENCH_DURATION (5), BENCH_ROUNDS (1), BENCH_IDLE (10000), BENCH_SERVER_CPU (0), BENCH_CLIENT_CPU (1),
#        BENCH_PORT_BASE (19100), CARGO_BUILD_JOBS.
# Needs: cargo (builds everything: the peers are a separate cargo workspace, fetched from crates.io),
#        taskset (util-linux, in every Debian/Ubuntu base system). Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

warmup=${BENCH_WARMUP:-2}
duration=${BENCH_DURATION:-5}
idle=${BENCH_IDLE:-10000}
server_cpu=${BENCH_SERVER_CPU:-0}
client_cpu=${BENCH_CLIENT_CPU:-1}
port_base=${BENCH_PORT_BASE:-19100}
servers="hioload hioload-poll tungstenite fastws raw"
scenarios="100x20 10x1K 200x16K 500x16K 100x20p16 10x64Kp4 4x1Mp2 2x16M"
rounds=${BENCH_ROUNDS:-1}
build=1
syscalls=()
baseline=

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) warmup=0.5; duration=1.5; idle=2000 ;;
        --warmup) warmup=$2; shift ;;
        --duration) duration=$2; shift ;;
        --servers) servers=$2; shift ;;
        --scenarios) scenarios=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --idle) idle=$2; shift ;;
        --no-build) build=0 ;;
        --syscalls) syscalls=(--syscalls) ;;
        --baseline) baseline=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

[ -n "$baseline" ] && [[ " $servers " != *" hioload-base "* ]] && servers="$servers hioload-base"
command -v taskset >/dev/null || { echo "bench.sh: taskset not found (apt-get install util-linux)" >&2; exit 1; }
if [ "$(nproc)" -lt 2 ]; then
    echo "bench.sh: needs 2 cores (server on one, load generator on another); found $(nproc)" >&2
    exit 1
fi

peers=$root/apps/bench-peers/target/release
bin=$root/target/release
if [ "$build" -eq 1 ]; then
    echo "building release binaries..." >&2
    cargo build --release -q -p hioload-echo -p hioload-bench
    cargo build --release -q --manifest-path apps/bench-peers/Cargo.toml
fi

# Every server started here is killed by PID on exit.
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Idle connections need descriptors in the servers (inherited) and in the load generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((idle + 100)) ]; then
    echo "bench.sh: RLIMIT_NOFILE $(ulimit -n) < $((idle + 100)); idle test reduced" >&2
    idle=$(($(ulimit -n) - 100))
fi

logdir=$root/target/bench
mkdir -p "$logdir"
stamp=$(date -u +%Y%m%d-%H%M%S)

label() {
    case "$1" in
        hioload) echo "hioload-echo" ;;
        hioload-poll) echo "hioload-echo (epoll)" ;;
        hioload-base) echo "hioload-echo (baseline)" ;;
        tungstenite) echo "tokio-tungstenite" ;;
        fastws) echo "fastwebsockets" ;;
        raw) echo "raw TCP echo" ;;
        raw-uring) echo "raw TCP echo (io_uring)" ;;
    esac
}

declare -A port pid_of
i=0
for s in $servers; do
    p=$((port_base + i)); i=$((i + 1))
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "bench.sh: port $p is already in use (set BENCH_PORT_BASE)" >&2
        exit 1
    fi
    case "$s" in
        hioload) cmd=("$bin/hioload-echo" --addr "127.0.0.1:$p" --workers 1) ;;
        hioload-poll) cmd=("$bin/hioload-echo" --addr "127.0.0.1:$p" --workers 1 --io poll) ;;
        hioload-base) [ -x "$baseline" ] || { echo "bench.sh: hioload-base needs --baseline BIN" >&2; exit 2; }
                      cmd=("$baseline" --addr "127.0.0.1:$p" --workers 1) ;;
        tungstenite) cmd=("$peers/tokio-tungstenite-echo" --addr "127.0.0.1:$p") ;;
        fastws) cmd=("$peers/fastwebsockets-echo" --addr "127.0.0.1:$p") ;;
        raw) cmd=("$peers/raw-tcp-echo" --addr "127.0.0.1:$p") ;;
        raw-uring) cmd=("$peers/raw-tcp-echo-uring" --addr "127.0.0.1:$p") ;;
        *) echo "bench.sh: unknown server $s (hioload hioload-poll hioload-base tungstenite fastws raw raw-uring)" >&2; exit 2 ;;
    esac
    taskset -c "$server_cpu" "${cmd[@]}" >"$logdir/$s.log" 2>&1 &
    pids+=($!)
    port[$s]=$p
    pid_of[$s]=$!
done
for s in $servers; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/${port[$s]}") 2>/dev/null && break
        kill -0 "${pid_of[$s]}" 2>/dev/null || { echo "bench.sh: $(label "$s") exited; log:" >&2; cat "$logdir/$s.log" >&2; exit 1; }
        sleep 0.1
    done
done

# field JSON KEY: a number (or null) from hioload-bench's one-line JSON.
field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }

# Per (scenario, server): space-separated values, one per round; medians below.
declare -A rate_l cpu_l user_l sys_l rate cpu user sys
errors_seen=()
# Rounds 1..N measure CPU and rates; with --syscalls, one more round counts system calls only:
# tracing every system call costs the traced server CPU, more for the ones that make more calls,
# so those figures never mix with the CPU ones.
last_round=$rounds
[ "${#syscalls[@]}" -gt 0 ] && last_round=$((rounds + 1))
for round in $(seq "$last_round"); do
    counting=(); [ "$round" -gt "$rounds" ] && counting=("${syscalls[@]}")
    for sc in $scenarios; do
        # 100x20 → 100 connections, 20 B; 100x20p16 → pipeline 16.
        conns=${sc%%x*}; rest=${sc#*x}; size=${rest%%p*}; pipe=1
        [[ "$rest" == *p* ]] && pipe=${rest#*p}
        for s in $servers; do
            mode=(); [[ "$s" == raw* ]] && mode=(--raw)
            if [ "${#counting[@]}" -gt 0 ]; then
                echo "  syscall count: $sc → $(label "$s")" >&2
            else
                echo "  round $round/$rounds: $sc → $(label "$s")" >&2
            fi
            out=$(taskset -c "$client_cpu" "$bin/hioload-bench" --addr "127.0.0.1:${port[$s]}" "${mode[@]}" \
                -c "$conns" -s "$size" -p "$pipe" -w "$warmup" -d "$duration" --server-pid "${pid_of[$s]}" \
                "${counting[@]}" --json) || true
            if [ -z "$out" ]; then
                errors_seen+=("$sc $(label "$s"): hioload-bench failed (see above)")
                continue
            fi
            echo "$out" >>"$logdir/bench-$stamp.jsonl"
            e=$(field "$out" errors)
            if [ "$e" != 0 ]; then
                errors_seen+=("$sc $(label "$s"): $e failed connections: $(sed -n 's/.*"error_texts":\[\([^]]*\)\].*/\1/p' <<<"$out")")
                continue
            fi
            if [ "${#counting[@]}" -gt 0 ]; then
                sys_l[$sc,$s]+=" $(field "$out" server_syscalls_per_msg)"
            else
                rate_l[$sc,$s]+=" $(field "$out" msgs_per_s)"
                cpu_l[$sc,$s]+=" $(field "$out" server_cpu_us_per_msg)"
                user_l[$sc,$s]+=" $(field "$out" server_user_us_per_msg)"
            fi
            kill -0 "${pid_of[$s]}" 2>/dev/null || errors_seen+=("$(label "$s") died during $sc")
        done
    done
done

# median "v1 v2 ...": the middle value (mean of the two middle ones), ignoring nulls; empty if none.
median() {
    tr ' ' '\n' <<<"$1" | { grep -E '^[0-9.]+$' || true; } | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
for sc in $scenarios; do
    for s in $servers; do
        rate[$sc,$s]=$(median "${rate_l[$sc,$s]:-}")
        cpu[$sc,$s]=$(median "${cpu_l[$sc,$s]:-}")
        user[$sc,$s]=$(median "${user_l[$sc,$s]:-}")
        sys[$sc,$s]=$(median "${sys_l[$sc,$s]:-}")
    done
done

idle_rss=()
if [ "$idle" -gt 0 ]; then
    for s in $servers; do
        [[ "$s" == raw* ]] && continue
        kill -0 "${pid_of[$s]}" 2>/dev/null || continue
        echo "  idle $idle → $(label "$s")" >&2
        out=$(taskset -c "$client_cpu" "$bin/hioload-bench" --addr "127.0.0.1:${port[$s]}" \
            --idle-connections "$idle" --server-pid "${pid_of[$s]}" --json) || true
        idle_rss+=("$s $(field "$out" rss_bytes_per_connection)")
    done
fi

# ---- report ----
cell() { [ -n "$1" ] && [ "$1" != null ] && printf "%s" "$1" || printf "–"; }
ratio() { # ratio A B: A/B with 2 decimals, or –
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "null" || b == "null" || b + 0 == 0) print "–"; else printf "%.2f×", a / b }'
}
fmt_rate() { [ -n "$1" ] && awk -v r="$1" 'BEGIN { printf "%.0f", r }' || printf "–"; }
has() { [[ " $servers " == *" $1 "* ]]; }

report() {
    local med=""; [ "$rounds" -gt 1 ] && med="; medians of $rounds interleaved rounds"
    echo "### End-to-end echo, $(date -u +%Y-%m-%d) ($warmup s warm-up + $duration s per run$med)"
    echo
    echo "Machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores," \
        "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r);" \
        "servers on core $server_cpu, hioload-bench on core $client_cpu; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "Server CPU µs per echo (lower is better); ratio = peer's µs / hioload-echo's µs (higher is better for hioload):"
    echo
    local head="| scenario |" line="| --- |"
    for s in $servers; do head+=" $(label "$s") |"; line+=" ---: |"; done
    has hioload && for s in hioload-poll hioload-base tungstenite fastws raw raw-uring; do has "$s" && { head+=" vs $(label "$s") |"; line+=" ---: |"; }; done
    echo "$head"; echo "$line"
    for sc in $scenarios; do
        local row="| $sc |"
        for s in $servers; do row+=" $(cell "${cpu[$sc,$s]}") |"; done
        has hioload && for s in hioload-poll hioload-base tungstenite fastws raw raw-uring; do has "$s" && row+=" $(ratio "${cpu[$sc,$s]}" "${cpu[$sc,hioload]}") |"; done
        echo "$row"
    done
    echo
    echo "Echoes per second (one load-generator thread; higher is better); ratio = hioload-echo / peer:"
    echo
    echo "$head"; echo "$line"
    for sc in $scenarios; do
        local row="| $sc |"
        for s in $servers; do row+=" $(fmt_rate "${rate[$sc,$s]}") |"; done
        has hioload && for s in hioload-poll hioload-base tungstenite fastws raw raw-uring; do has "$s" && row+=" $(ratio "${rate[$sc,hioload]}" "${rate[$sc,$s]}") |"; done
        echo "$row"
    done
    echo
    echo "Of which user space (the server's own code; the rest is the kernel's TCP path), µs per echo:"
    echo
    echo "$head"; echo "$line"
    for sc in $scenarios; do
        local row="| $sc |"
        for s in $servers; do row+=" $(cell "${user[$sc,$s]}") |"; done
        has hioload && for s in hioload-poll hioload-base tungstenite fastws raw raw-uring; do has "$s" && row+=" $(ratio "${user[$sc,$s]}" "${user[$sc,hioload]}") |"; done
        echo "$row"
    done
    if [ "${#syscalls[@]}" -gt 0 ]; then
        echo
        echo "Server syscalls per echo (perf stat, all syscalls; a round of its own, not in the CPU figures):"
        echo
        local h3="| scenario |" l3="| --- |"
        for s in $servers; do h3+=" $(label "$s") |"; l3+=" ---: |"; done
        echo "$h3"; echo "$l3"
        for sc in $scenarios; do
            local row="| $sc |"
            for s in $servers; do row+=" $(cell "${sys[$sc,$s]}") |"; done
            echo "$row"
        done
    fi
    if [ "${#idle_rss[@]}" -gt 0 ]; then
        echo
        echo "Server RSS growth per idle connection at $idle connections (upgraded, one 20 B echo each), bytes:"
        echo
        local h2="|" l2="|" r2="|"
        for e in "${idle_rss[@]}"; do h2+=" $(label "${e%% *}") |"; l2+=" ---: |"; r2+=" $(cell "${e#* }") |"; done
        echo "$h2"; echo "$l2"; echo "$r2"
    fi
    echo
    echo "Scenarios: CxS = C connections × S-byte binary messages, one in flight (pP: P in flight); every echo verified."
    if [ "${#errors_seen[@]}" -gt 0 ]; then
        echo
        echo "Errors:"
        for e in "${errors_seen[@]}"; do echo "- $e"; done
    fi
}

report | tee "$logdir/bench-$stamp.md"
echo >&2
echo "(report saved to target/bench/bench-$stamp.md, raw figures in target/bench/bench-$stamp.jsonl)" >&2
