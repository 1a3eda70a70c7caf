#!/usr/bin/env bash
# Server memory per idle connection for each permessage-deflate mode: hioload-echo (release,
# 1 worker) is started once per mode (off, shared, dedicated:10, dedicated), N clients of Python
# `websockets` (Debian's python3-websockets; it offers permessage-deflate on every connection)
# connect, each sends one 2 KiB JSON text message and reads its echo, and stay open; the
# server's VmRSS growth over the N connections, divided by N, is printed per mode. The memory
# budget is raised to 16 GiB for the run: at the default 1 GiB, dedicated sessions beyond ~3,000
# are closed (1008, "compression state over the memory budget"), as they should be.
#
# A mode `tls:MODE` runs MODE over wss:// (a test certificate from scripts/test-cert.sh): the
# memory of an idle TLS session on top.
#
# Usage: scripts/deflate-memory.sh [N] [MODE...]   (default 10000, modes off shared dedicated:10
#        dedicated; needs N + 100 open files)
# Traffic stays on 127.0.0.1; every server started here is killed by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
shift || true
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(off shared dedicated:10 dedicated)
pki=target/deflate-memory-pki
scripts/test-cert.sh "$pki"
port="${DEFLATE_MEMORY_PORT:-19450}"
python=/usr/bin/python3
"$python" -c "import websockets" 2>/dev/null || {
    echo "deflate-memory.sh: needs $python with websockets (apt-get install python3-websockets)" >&2
    exit 1
}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((n + 100)) ] || {
    echo "deflate-memory.sh: RLIMIT_NOFILE $(ulimit -n) < $((n + 100))" >&2
    exit 1
}
cargo build --release -q -p hioload-echo

pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; }
trap cleanup EXIT

rss() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$1/status"; }

echo "| mode | connections | RSS growth per connection (bytes) | negotiated |"
echo "| --- | ---: | ---: | --- |"
for mode in "${modes[@]}"; do
    tls=() scheme=ws
    if [ "${mode#tls:}" != "$mode" ]; then
        tls=(--tls-cert "$pki/server.pem" --tls-key "$pki/server.key") scheme=wss
    fi
    target/release/hioload-echo --addr "127.0.0.1:$port" --workers 1 --admin-addr off \
        --deflate "${mode#tls:}" --memory-budget 16GiB "${tls[@]}" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    out=$("$python" - "$port" "$n" "$pid" "$scheme" "$pki/ca.pem" <<'PY'
import asyncio, json, ssl, sys, websockets
port, n, pid, scheme, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
tls = ssl.create_default_context(cafile=ca) if scheme == "wss" else None
def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
msg = json.dumps([{"id": i, "name": "user%d" % (i % 7), "ok": True} for i in range(60)])[:2048]
async def one(conns, sem):
    async with sem:
        ws = await websockets.connect(f"{scheme}://127.0.0.1:{port}/ws", max_size=None,
                                      ping_interval=None, ssl=tls)
        await ws.send(msg)
        assert await ws.recv() == msg
        conns.append(ws)
async def main():
    # Warm up the server's pools and caches with one connection first.
    first = []
    await one(first, asyncio.Semaphore(1))
    before = rss()
    conns, sem = [], asyncio.Semaphore(200)
    await asyncio.gather(*(one(conns, sem) for _ in range(n)))
    await asyncio.sleep(0.5)
    after = rss()
    ext = conns[0].response_headers.get("Sec-WebSocket-Extensions") or "none"
    print((after - before) // n, ext)
    for ws in conns + first:
        await ws.close()
asyncio.run(main())
PY
)
    echo "| $mode | $n | ${out%% *} | ${out#* } |"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done
