#!/usr/bin/env bash
# Hostile-network soak (issue 20): the long versions of tests/hostile.rs against a release
# hioload-echo on 127.0.0.1. It builds the binary, starts it on a free port with its admin
# listener on another, then scripts/soak.py (Python 3, standard library) runs, one after the other:
#   16,384 connections each holding one byte of a frame header after the upgrade,
#   3,000 connections each holding a partial request head ("GET /ws HTTP/1.1\r\n"),
#   50 connections announcing 16 MiB frames and sending 100 bytes,
#   10,000 connections for --seconds: echo traffic (2 %), tricklers (3 %: one byte of a frame per
#   second, closed by the server at --message-timeout with 1008, then reconnecting), idle sessions
#   (the rest, answering the server's pings).
# Throughout, a monitor gets a fresh client's echo every 0.5 s (must take < 1 s) and prints every
# --interval seconds the server's RSS (/proc/PID/status VmRSS) and its /metrics gauges
# (hioload_worker_memory_bytes, connections, hioload_connections_refused_total, message timeouts,
# budget and memory closes). Exit status 0 when every fresh echo took < 1 s, the server lived and
# the mixed load saw no error. The server is killed (by its PID) on exit.
#
# Usage: scripts/soak.sh [--seconds N (60)] [--interval S (3)] [--hold S (5)] [--workers N (2)]
#                        [--io auto|poll|io-uring] [--message-timeout S (10)] [--no-build]
#                        [--partial-frames N] [--partial-heads N] [--announce N] [--mixed N]
# Needs: cargo, python3 (>= 3.9), an open-files hard limit above the largest phase (+ 256).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
interval=3
hold=5
workers=2
io=auto
message_timeout=10
build=1
counts=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=$2; shift ;;
        --interval) interval=$2; shift ;;
        --hold) hold=$2; shift ;;
        --workers) workers=$2; shift ;;
        --io) io=$2; shift ;;
        --message-timeout) message_timeout=$2; shift ;;
        --no-build) build=0 ;;
        --partial-frames|--partial-heads|--announce|--mixed) counts+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$build" = 1 ]; then
    cargo build --release -p hioload-echo
fi
bin=target/release/hioload-echo
[ -x "$bin" ] || { echo "soak.sh: $bin not built" >&2; exit 1; }

# Room for the connections: the server and the load both inherit this.
ulimit -n "$(ulimit -Hn)"
echo "open files limit: $(ulimit -n)"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
admin=$(free_port)
while [ "$admin" = "$port" ]; do admin=$(free_port); done

log=$(mktemp /tmp/soak-echo-XXXXXX.log)
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    echo "server log: $log"
}
trap cleanup EXIT

RUST_LOG=${RUST_LOG:-info} "$bin" --addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$admin" \
    --workers "$workers" --no-affinity --io "$io" --message-timeout "$message_timeout" \
    >"$log" 2>&1 &
server_pid=$!

for _ in $(seq 100); do
    grep -q "listening on ws://" "$log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log"; echo "soak.sh: the server did not start" >&2; exit 1; }
    sleep 0.1
done
grep -q "listening on ws://" "$log" || { cat "$log"; echo "soak.sh: no start line in 10 s" >&2; exit 1; }
grep -m1 "listening on ws://" "$log"
echo "server pid $server_pid, ws 127.0.0.1:$port, admin 127.0.0.1:$admin, $seconds s of mixed load"

status=0
timeout --signal=TERM $(( ${seconds%.*} + 600 )) \
    python3 scripts/soak.py load --addr "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
    --pid "$server_pid" --seconds "$seconds" --interval "$interval" --hold "$hold" \
    ${counts[@]+"${counts[@]}"} || status=$?

if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "soak.sh: the server died; last log lines:" >&2
    tail -20 "$log" >&2
    status=1
fi
echo "server log lines by level: $(grep -o ' \(INFO\|WARN\|ERROR\) ' "$log" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
exit "$status"
