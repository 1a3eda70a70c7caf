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
# server RSS per idle connection at $BENCH_IDLE connections. Then the compressed echo
# (permessage-deflate): JSON-like text of 1 KiB and 16 KiB (10 connections, one in flight) sent by
# hioload-bench --deflate (it offers the extension as browsers do, compresses what it sends,
# inflates and verifies every echo) to hioload-echo with --deflate off, shared, dedicated:10 and
# dedicated, to Python websockets and (where node is installed) Node ws with their deflate on and
# off (apps/bench-peers/python, apps/bench-peers/node): server CPU per echo and frame bytes on the
# wire per message. The markdown report also goes to
# target/bench/bench-<date>.md.
#
# Usage: scripts/bench.sh [--quick] [--warmup S] [--duration S] [--rounds N] [--servers "hioload hioload-poll tungstenite fastws raw"]
#                         [--scenarios "100x20 10x1K 200x16K 500x16K 100x20p16 10x64Kp4 4x1Mp2 2x16M"]
#                         [--idle N] [--syscalls] [--no-build]
#                         [--deflate-scenarios "10x1K 10x16K"]
#                         [--deflate-servers "off shared dedicated:10 dedicated websockets websockets-off node-ws node-ws-off"]
#                         [--deflate-only] [--no-deflate]
#        --syscalls adds the servers' syscalls per echo (perf stat on syscall tracepoints; needs linux-perf),
#                   counted in one extra round of their own (tracing costs the traced server CPU).
#        --rounds N repeats every (scenario, server) run N times, interleaved, and reports medians.
#        --servers may add raw-uring: the raw TCP echo on io_uring (kernel >= 6.1), the floor without epoll,
#                  and hioload-base: another build of hioload-echo (--baseline BIN), for a before/after in one run.
#        --deflate-servers: hioload-echo --deflate MODE (off, shared, dedicated, dedicated:N), MODE/T adds
#                  --deflate-threshold T (shared/0: compress every message); websockets, websockets-off: Python
#                  websockets with its permessage-deflate on / off; node-ws, node-ws-off: the same with Node ws
#                  (in the default list only where `node` is installed). The first one is the baseline of the ratios.
#        --deflate-only runs only the compressed echo (no plain scenarios, no idle test); --no-deflate skips it.
#        --baseline BIN adds hioload-base (BIN: e.g. target/release/hioload-echo of an earlier commit, built
#                  in a git worktree) to the servers.
# Env:   BENCH_WARMUP (2), BENCH_DURATION (5), BENCH_ROUNDS (1), BENCH_IDLE (10000), BENCH_SERVER_CPU (0), BENCH_CLIENT_CPU (1),
#        BENCH_PORT_BASE (19100), CARGO_BUILD_JOBS.
# Needs: cargo (builds everything: the peers are a separate cargo workspace, fetched from crates.io),
#        taskset (util-linux, in every Debian/Ubuntu base system), /usr/bin/python3 with websockets for
#        the websockets peers (python3-websockets, installed by scripts/setup.sh), node and npm for the Node ws
#        peers (ws is installed into apps/bench-peers/node by `npm ci`). Traffic stays on 127.0.0.1.
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
deflate_scenarios="10x1K 10x16K"
deflate_servers="off shared dedicated:10 dedicated websockets websockets-off"
command -v node >/dev/null && command -v npm >/dev/null && deflate_servers+=" node-ws node-ws-off"
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
        --deflate-scenarios) deflate_scenarios=$2; shift ;;
        --deflate-servers) deflate_servers=$2; shift ;;
        --deflate-only) scenarios=""; idle=0; deflate_only=1 ;;
        --no-deflate) deflate_scenarios="" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

[ -n "$baseline" ] && [[ " $servers " != *" hioload-base "* ]] && servers="$servers hioload-base"
# --deflate-only: the plain scenarios' servers are not started at all.
[ "${deflate_only:-0}" = 1 ] && servers=""
[ -z "$deflate_scenarios" ] && deflate_servers=""
# Every server process: the plain ones, then the compressed-echo ones as z:SPEC.
all_servers="$servers"
for z in $deflate_servers; do all_servers+=" z:$z"; done
python=/usr/bin/python3
if [[ " $deflate_servers " == *" websockets"* ]] && ! "$python" -c "import websockets" 2>/dev/null; then
    echo "bench.sh: the websockets peers need $python with websockets (apt-get install python3-websockets," \
        "or scripts/setup.sh); or leave them out of --deflate-servers" >&2
    exit 1
fi
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
if [[ " $deflate_servers " == *" node-ws"* ]] && [ ! -d apps/bench-peers/node/node_modules/ws ]; then
    echo "installing Node ws into apps/bench-peers/node (npm ci)..." >&2
    (cd apps/bench-peers/node && npm ci --no-audit --no-fund --silent) ||
        { echo "bench.sh: npm ci failed in apps/bench-peers/node; leave node-ws out of --deflate-servers" >&2; exit 1; }
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
        z:websockets) echo "websockets (deflate)" ;;
        z:websockets-off) echo "websockets (no deflate)" ;;
        z:node-ws) echo "Node ws (deflate)" ;;
        z:node-ws-off) echo "Node ws (no deflate)" ;;
        z:*/*) local z=${1#z:}; echo "hioload-echo ${z%%/*}, threshold ${z#*/}" ;;
        z:*) echo "hioload-echo ${1#z:}" ;;
    esac
}

declare -A port pid_of
i=0
for s in $all_servers; do
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
        z:websockets) cmd=("$python" "$root/apps/bench-peers/python/websockets-echo.py" --addr "127.0.0.1:$p") ;;
        z:websockets-off) cmd=("$python" "$root/apps/bench-peers/python/websockets-echo.py" --addr "127.0.0.1:$p" --no-deflate) ;;
        z:node-ws) cmd=(node "$root/apps/bench-peers/node/ws-echo.js" --addr "127.0.0.1:$p") ;;
        z:node-ws-off) cmd=(node "$root/apps/bench-peers/node/ws-echo.js" --addr "127.0.0.1:$p" --no-deflate) ;;
        z:*) z=${s#z:}
             cmd=("$bin/hioload-echo" --addr "127.0.0.1:$p" --workers 1 --admin-addr off --deflate "${z%%/*}")
             [[ "$z" == */* ]] && cmd+=(--deflate-threshold "${z#*/}") ;;
        *) echo "bench.sh: unknown server $s (hioload hioload-poll hioload-base tungstenite fastws raw raw-uring)" >&2; exit 2 ;;
    esac
    taskset -c "$server_cpu" "${cmd[@]}" >"$logdir/${s//[:\/]/_}.log" 2>&1 &
    pids+=($!)
    port[$s]=$p
    pid_of[$s]=$!
done
for s in $all_servers; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/${port[$s]}") 2>/dev/null && break
        kill -0 "${pid_of[$s]}" 2>/dev/null || { echo "bench.sh: $(label "$s") exited; log:" >&2; cat "$logdir/${s//[:\/]/_}.log" >&2; exit 1; }
        sleep 0.1
    done
done

# field JSON KEY: a number (or null) from hioload-bench's one-line JSON.
field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }

# Per (scenario, server): space-separated values, one per round; medians below.
declare -A rate_l cpu_l user_l sys_l rate cpu user sys wout_l win_l wout win agreed
errors_seen=()

# measure SC S [ARGS...]: one run of scenario SC (100x20, 100x20p16, …) against server S, its
# figures appended to the per-round lists; ARGS go to hioload-bench (--raw, --deflate).
measure() {
    local sc=$1 s=$2; shift 2
    # 100x20 → 100 connections, 20 B; 100x20p16 → pipeline 16.
    local conns=${sc%%x*} rest=${sc#*x} size pipe=1 out e
    size=${rest%%p*}
    [[ "$rest" == *p* ]] && pipe=${rest#*p}
    if [ "${#counting[@]}" -gt 0 ]; then
        echo "  syscall count: $sc → $(label "$s")" >&2
    else
        echo "  round $round/$rounds: $sc → $(label "$s")" >&2
    fi
    out=$(taskset -c "$client_cpu" "$bin/hioload-bench" --addr "127.0.0.1:${port[$s]}" "$@" \
        -c "$conns" -s "$size" -p "$pipe" -w "$warmup" -d "$duration" --server-pid "${pid_of[$s]}" \
        "${counting[@]}" --json) || true
    if [ -z "$out" ]; then
        errors_seen+=("$sc $(label "$s"): hioload-bench failed (see above)")
        return
    fi
    echo "$out" >>"$logdir/bench-$stamp.jsonl"
    e=$(field "$out" errors)
    if [ "$e" != 0 ]; then
        errors_seen+=("$sc $(label "$s"): $e failed connections: $(sed -n 's/.*"error_texts":\[\([^]]*\)\].*/\1/p' <<<"$out")")
        return
    fi
    if [ "${#counting[@]}" -gt 0 ]; then
        sys_l[$sc,$s]+=" $(field "$out" server_syscalls_per_msg)"
    else
        rate_l[$sc,$s]+=" $(field "$out" msgs_per_s)"
        cpu_l[$sc,$s]+=" $(field "$out" server_cpu_us_per_msg)"
        user_l[$sc,$s]+=" $(field "$out" server_user_us_per_msg)"
        if [[ " $* " == *" --deflate "* ]]; then
            wout_l[$sc,$s]+=" $(field "$out" wire_out_bytes_per_msg)"
            win_l[$sc,$s]+=" $(field "$out" wire_in_bytes_per_msg)"
            agreed[$s]=$(sed -n 's/.*"extension":"\([^"]*\)".*/\1/p' <<<"$out")
        fi
    fi
    kill -0 "${pid_of[$s]}" 2>/dev/null || errors_seen+=("$(label "$s") died during $sc")
}
# Rounds 1..N measure CPU and rates; with --syscalls, one more round counts system calls only:
# tracing every system call costs the traced server CPU, more for the ones that make more calls,
# so those figures never mix with the CPU ones.
last_round=$rounds
[ "${#syscalls[@]}" -gt 0 ] && last_round=$((rounds + 1))
for round in $(seq "$last_round"); do
    counting=(); [ "$round" -gt "$rounds" ] && counting=("${syscalls[@]}")
    for sc in $scenarios; do
        for s in $servers; do
            mode=(); [[ "$s" == raw* ]] && mode=(--raw)
            measure "$sc" "$s" "${mode[@]}"
        done
    done
    for sc in $deflate_scenarios; do
        for z in $deflate_servers; do
            measure "$sc" "z:$z" --deflate
        done
    done
done

# median "v1 v2 ...": the middle value (mean of the two middle ones), ignoring nulls; empty if none.
median() {
    tr ' ' '\n' <<<"$1" | { grep -E '^[0-9.]+$' || true; } | sort -g |
        awk '{ a[NR] = $1 } END { if (NR == 0) exit; if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
for sc in $scenarios $deflate_scenarios; do
    for s in $all_servers; do
        rate[$sc,$s]=$(median "${rate_l[$sc,$s]:-}")
        cpu[$sc,$s]=$(median "${cpu_l[$sc,$s]:-}")
        user[$sc,$s]=$(median "${user_l[$sc,$s]:-}")
        sys[$sc,$s]=$(median "${sys_l[$sc,$s]:-}")
        wout[$sc,$s]=$(median "${wout_l[$sc,$s]:-}")
        win[$sc,$s]=$(median "${win_l[$sc,$s]:-}")
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
has_z() { [[ " $deflate_servers " == *" $1 "* ]]; }

report_plain() {
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
}

# The compressed echo, one row per server: CPU per echo, bytes on the wire per message, echoes per
# second. Ratios: to the same server family without compression (hioload-echo: the first of
# --deflate-servers, default off; a peer: its -off twin), and to hioload-echo shared (the default).
report_deflate() {
    local s z sc row head line off ref=""
    has_z shared && ref=z:shared
    # plain_of S: the uncompressed twin of server S (empty if not measured).
    plain_of() {
        case "$1" in
            z:websockets|z:node-ws) has_z "${1#z:}-off" && echo "$1-off" ;;
            z:websockets-off|z:node-ws-off) echo "$1" ;;
            *) echo "z:${deflate_servers%% *}" ;;
        esac
    }
    echo "#### Compressed echo (permessage-deflate), JSON-like text"
    echo
    echo "Server CPU µs per echo (lower is better); ÷ uncompressed = this server's µs / its own µs without" \
        "compression (hioload-echo: $(label "$(plain_of z:shared)")), for the same messages;" \
        "${ref:+÷ shared = this server's µs / hioload-echo shared's (the default mode)}:"
    echo
    head="| server |"; line="| --- |"
    for sc in $deflate_scenarios; do
        head+=" $sc µs | ÷ uncompressed |"; line+=" ---: | ---: |"
        [ -n "$ref" ] && { head+=" ÷ shared |"; line+=" ---: |"; }
    done
    echo "$head"; echo "$line"
    for z in $deflate_servers; do
        s=z:$z; off=$(plain_of "$s"); row="| $(label "$s") |"
        for sc in $deflate_scenarios; do
            row+=" $(cell "${cpu[$sc,$s]}") | $([ -n "$off" ] && ratio "${cpu[$sc,$s]}" "${cpu[$sc,$off]}" || echo –) |"
            [ -n "$ref" ] && row+=" $(ratio "${cpu[$sc,$s]}" "${cpu[$sc,$ref]}") |"
        done
        echo "$row"
    done
    echo
    echo "Bytes on the wire per message, client → server / server → client (WebSocket frames, headers" \
        "included), ÷ uncompressed = the echo's bytes / the uncompressed echo's; and what was agreed" \
        "(the \`Sec-WebSocket-Extensions\` answer to \`permessage-deflate; client_max_window_bits\`):"
    echo
    head="| server |"; line="| --- |"
    for sc in $deflate_scenarios; do head+=" $sc bytes | ÷ uncompressed |"; line+=" ---: | ---: |"; done
    echo "$head agreed |"; echo "$line --- |"
    for z in $deflate_servers; do
        s=z:$z; off=$(plain_of "$s"); row="| $(label "$s") |"
        for sc in $deflate_scenarios; do
            row+=" $(fmt_rate "${wout[$sc,$s]}") / $(fmt_rate "${win[$sc,$s]}") |"
            row+=" $([ -n "$off" ] && ratio "${win[$sc,$s]}" "${win[$sc,$off]}" || echo –) |"
        done
        echo "$row \`${agreed[$s]:-–}\` |"
    done
    echo
    echo "Echoes per second (one load-generator thread; it compresses each message it sends when context" \
        "takeover is agreed, and such runs are bound by it: server CPU per echo is the figure):"
    echo
    head="| server |"; line="| --- |"
    for sc in $deflate_scenarios; do head+=" $sc |"; line+=" ---: |"; done
    echo "$head"; echo "$line"
    for z in $deflate_servers; do
        row="| $(label "z:$z") |"
        for sc in $deflate_scenarios; do row+=" $(fmt_rate "${rate[$sc,z:$z]}") |"; done
        echo "$row"
    done
    echo
    echo "Scenarios: CxS = C connections × S-byte text messages, one in flight: a stream of JSON event objects" \
        "cut at S bytes (keys, a small vocabulary, random numbers); every echo inflated and verified."
}

report() {
    local med=""; [ "$rounds" -gt 1 ] && med="; medians of $rounds interleaved rounds"
    echo "### End-to-end echo, $(date -u +%Y-%m-%d) ($warmup s warm-up + $duration s per run$med)"
    echo
    echo "Machine: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(nproc) cores," \
        "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r);" \
        "servers on core $server_cpu, hioload-bench on core $client_cpu; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    if [ -n "$scenarios" ]; then report_plain; fi
    if [ -n "$deflate_scenarios" ]; then
        [ -n "$scenarios" ] && echo
        report_deflate
    fi
    if [ "${#errors_seen[@]}" -gt 0 ]; then
        echo
        echo "Errors:"
        for e in "${errors_seen[@]}"; do echo "- $e"; done
    fi
}

report | tee "$logdir/bench-$stamp.md"
echo >&2
echo "(report saved to target/bench/bench-$stamp.md, raw figures in target/bench/bench-$stamp.jsonl)" >&2
