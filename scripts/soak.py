#!/usr/bin/env python3
"""Hostile-network soak load for a running hioload-echo (scripts/soak.sh starts the server and runs
this). Python 3 standard library only; the WebSocket framing is written by hand (client frames
masked, as RFC 6455 requires).

Phases, one after the other (each bounded in count and time):
  partial-frames  N connections upgrade, then each sends one byte of a frame header and holds it
  partial-heads   N connections send only "GET /ws HTTP/1.1\\r\\n" and hold it
  announce-16mib  N connections send a 14-byte header announcing 16 MiB - 1 and a few bytes
  mixed           N connections for --seconds: echo traffic, idle sessions (answering pings),
                  and tricklers (one byte of a 1 MiB frame per second; closed by the server at
                  its message timeout with 1008, then they reconnect)

Meanwhile a monitor process (this file, `monitor` mode) gets a fresh client's echo every 0.5 s
(connect + upgrade + message + echo, which must take < 1 s) and prints, every --interval seconds,
the server's RSS (/proc/PID/status VmRSS) and its /metrics gauges: hioload_worker_memory_bytes,
hioload_worker_connections, hioload_connections_refused_total, hioload_message_timeouts_total,
hioload_budget_closes_total, hioload_memory_closes_total.

Exit status: 0 if every fresh echo took < 1 s, the server lived throughout and the mixed load saw
no error (echo mismatch, idle session dropped, trickler closed with a code other than 1008).

Usage: soak.py load --addr IP:PORT --admin IP:PORT --pid PID [--seconds 60] [--interval 3]
                    [--partial-frames 16384] [--partial-heads 3000] [--announce 50]
                    [--mixed 10000] [--hold 5]
"""

import argparse
import asyncio
import base64
import os
import random
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ECHO_LIMIT = 1.0
SOURCES = [f"127.0.0.{i}" for i in range(2, 18)]  # spread client ports over 16 source addresses
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# ---- framing ---------------------------------------------------------------------------------


def upgrade_request(host):
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def mask_bytes(data, key):
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def header(opcode, length, key, fin=True):
    b0 = (0x80 if fin else 0) | opcode
    if length < 126:
        h = struct.pack("!BB", b0, 0x80 | length)
    elif length < 65536:
        h = struct.pack("!BBH", b0, 0x80 | 126, length)
    else:
        h = struct.pack("!BBQ", b0, 0x80 | 127, length)
    return h + key


def frame(opcode, payload, fin=True):
    key = os.urandom(4)
    return header(opcode, len(payload), key, fin) + mask_bytes(payload, key)


# ---- blocking helpers (phases 1-3, the monitor) ------------------------------------------------


def new_socket(i):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((SOURCES[i % len(SOURCES)], 0))
    return s


def abort(s):
    """Closes with a reset (no TIME_WAIT left on the client side)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def read_head(s):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"response head cut short: {head!r}")
        head += chunk
        if len(head) > 8192:
            raise ConnectionError("response head too long")
    return head


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-frame")
        buf += chunk
    return buf


def read_frame(s):
    b0, b1 = recv_exact(s, 2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", recv_exact(s, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", recv_exact(s, 8))
    return b0 & 0x0F, recv_exact(s, n)


def fresh_echo(addr, i):
    """Connect, upgrade, echo one message; returns the seconds it took (raises on failure)."""
    start = time.monotonic()
    s = new_socket(i)
    s.settimeout(ECHO_LIMIT * 2)
    try:
        s.connect(addr)
        s.sendall(upgrade_request(addr[0]))
        head = read_head(s)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:40]!r}")
        text = f"fresh {i}".encode()
        s.sendall(frame(0x1, text))
        while True:
            op, payload = read_frame(s)
            if op == 0x9:
                s.sendall(frame(0xA, payload))
                continue
            break
        took = time.monotonic() - start
        if (op, payload) != (0x1, text):
            raise ConnectionError(f"wrong echo: opcode {op} {payload[:40]!r}")
        s.sendall(frame(0x8, struct.pack("!H", 1000)))
        return took
    finally:
        abort(s)


def connect_many(addr, n, first_bytes, expect_101, deadline, batch=256):
    """n connections, `batch` at a time: connect, send first_bytes, and (if expect_101) read the
    101. Returns the sockets (blocking, 10 s timeout)."""
    socks = []
    while len(socks) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(socks)} of {n} connections in time")
        group = []
        for _ in range(min(batch, n - len(socks))):
            s = new_socket(len(socks) + len(group))
            s.settimeout(10)
            s.connect(addr)
            s.sendall(first_bytes)
            group.append(s)
        if expect_101:
            for s in group:
                head = read_head(s)
                if not head.startswith(b"HTTP/1.1 101"):
                    raise ConnectionError(f"upgrade refused: {head[:40]!r}")
        socks.extend(group)
    return socks


# ---- the monitor -------------------------------------------------------------------------------


def metrics(admin):
    s = socket.create_connection(admin, timeout=5)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    sums = {}
    for line in data.decode(errors="replace").split("\r\n\r\n", 1)[-1].splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return sums


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def monitor(args):
    addr = parse_addr(args.addr)
    admin = parse_addr(args.admin)
    stop = False

    def on_term(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    start = time.monotonic()
    echoes, failures, slow = [], [], []
    window = []
    next_print = start
    next_echo = start
    i = 0
    print(
        "    t  phase           rss_MiB  mem_gauge_B  conns  refused  msg_timeouts  budget_closes"
        "  mem_closes  echo_ms(max in window)",
        flush=True,
    )
    while not stop:
        now = time.monotonic()
        if not os.path.exists(f"/proc/{args.pid}"):
            print(f"MONITOR: the server (pid {args.pid}) is gone", flush=True)
            failures.append("server gone")
            break
        if now >= next_echo:
            next_echo = now + 0.5
            i += 1
            try:
                took = fresh_echo(addr, i)
                echoes.append(took)
                window.append(took)
                if took >= ECHO_LIMIT:
                    slow.append(took)
                    print(f"MONITOR: fresh echo took {took * 1000:.0f} ms (>= 1 s)", flush=True)
            except Exception as e:  # noqa: BLE001 - any failure of a fresh client counts
                failures.append(repr(e))
                print(f"MONITOR: fresh client failed: {e!r}", flush=True)
        if now >= next_print:
            next_print = now + args.interval
            try:
                with open(args.phase_file) as f:
                    phase = f.read().strip()
            except OSError:
                phase = "?"
            try:
                m = metrics(admin)
                rss = rss_mib(args.pid)
            except Exception as e:  # noqa: BLE001
                print(f"MONITOR: scrape failed: {e!r}", flush=True)
                continue
            worst = max(window) * 1000 if window else float("nan")
            window = []
            print(
                f"{now - start:5.1f}  {phase:<14}  {rss:7.1f}  {m.get('hioload_worker_memory_bytes', 0):11.0f}"
                f"  {m.get('hioload_worker_connections', 0):5.0f}"
                f"  {m.get('hioload_connections_refused_total', 0):7.0f}"
                f"  {m.get('hioload_message_timeouts_total', 0):12.0f}"
                f"  {m.get('hioload_budget_closes_total', 0):13.0f}"
                f"  {m.get('hioload_memory_closes_total', 0):10.0f}  {worst:8.1f}",
                flush=True,
            )
        time.sleep(0.05)
    ok = not failures and not slow and echoes
    echoes.sort()
    p50 = echoes[len(echoes) // 2] * 1000 if echoes else float("nan")
    worst = echoes[-1] * 1000 if echoes else float("nan")
    print(
        f"MONITOR SUMMARY: {len(echoes)} fresh echoes, median {p50:.1f} ms, max {worst:.1f} ms, "
        f"{len(slow)} >= 1 s, {len(failures)} failed -> {'OK' if ok else 'FAIL'}",
        flush=True,
    )
    sys.exit(0 if ok else 1)


# ---- the load ----------------------------------------------------------------------------------


class Phase:
    def __init__(self, path):
        self.path = path

    def set(self, name):
        with open(self.path, "w") as f:
            f.write(name)
        print(f"== phase {name}", flush=True)


def hold(seconds, server_pid):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not os.path.exists(f"/proc/{server_pid}"):
            raise RuntimeError("the server died")
        time.sleep(0.2)


def phase_partial_frames(args, addr, phase):
    phase.set("partial-frames")
    t = time.monotonic()
    socks = connect_many(addr, args.partial_frames, upgrade_request(addr[0]), True, t + 120)
    print(f"   {len(socks)} sessions open in {time.monotonic() - t:.1f} s; each sends 1 byte", flush=True)
    for s in socks:
        s.sendall(b"\x82")
    hold(args.hold, args.pid)
    for s in socks:
        abort(s)
    hold(1.5, args.pid)  # let the gauges show the release


def phase_partial_heads(args, addr, phase):
    phase.set("partial-heads")
    t = time.monotonic()
    socks = connect_many(addr, args.partial_heads, b"GET /ws HTTP/1.1\r\n", False, t + 60)
    print(f"   {len(socks)} partial heads sent in {time.monotonic() - t:.1f} s", flush=True)
    hold(min(args.hold, 8), args.pid)  # below the server's 10 s handshake timeout
    for s in socks:
        abort(s)
    hold(1.5, args.pid)


def phase_announce(args, addr, phase):
    phase.set("announce-16mib")
    socks = connect_many(addr, args.announce, upgrade_request(addr[0]), True, time.monotonic() + 30)
    key = os.urandom(4)
    for s in socks:
        s.sendall(header(0x2, (16 << 20) - 1, key) + mask_bytes(os.urandom(100), key))
    print(f"   {len(socks)} sessions announced 16 MiB - 1 and sent 100 bytes", flush=True)
    hold(args.hold, args.pid)
    closed = 0
    for s in socks:
        r, _, _ = select.select([s], [], [], 0)
        closed += bool(r)
        abort(s)
    if closed:
        print(f"   {closed} of them had been closed by the server", flush=True)
    hold(1.5, args.pid)


class Mixed:
    """The mixed workload's tallies."""

    def __init__(self):
        self.echoes = 0
        self.echo_errors = []
        self.idle_dropped = 0
        self.trickle_closes = {}
        self.trickle_errors = []
        self.opened = 0
        self.stop = False


async def open_session(addr, i, sem):
    async with sem:
        s = new_socket(i)
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(s, addr), 10)
        reader, writer = await asyncio.open_connection(sock=s, limit=1 << 20)
        writer.write(upgrade_request(addr[0]))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:40]!r}")
        return reader, writer


async def aread_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


def close_writer(writer):
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.close()


async def idle_session(reader, writer, st):
    try:
        while not st.stop:
            op, payload = await aread_frame(reader)
            if op == 0x9:
                writer.write(frame(0xA, payload))
            elif op == 0x8:
                st.idle_dropped += 1
                return
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        if not st.stop:
            st.idle_dropped += 1
    except asyncio.CancelledError:
        pass
    finally:
        close_writer(writer)


async def echo_session(reader, writer, st, rng):
    try:
        while not st.stop:
            payload = rng.randbytes(rng.randint(16, 2048))
            binary = rng.random() < 0.5
            if not binary:
                payload = base64.b64encode(payload)[: len(payload)]
            opcode = 0x2 if binary else 0x1
            writer.write(frame(opcode, payload))
            while True:
                op, got = await asyncio.wait_for(aread_frame(reader), 10)
                if op == 0x9:
                    writer.write(frame(0xA, got))
                    continue
                break
            if (op, got) != (opcode, payload):
                st.echo_errors.append(f"mismatch: opcode {op}, {len(got)} bytes")
                return
            st.echoes += 1
            await asyncio.sleep(rng.random() * 0.2)
    except asyncio.CancelledError:
        pass
    except Exception as e:  # noqa: BLE001
        if not st.stop:
            st.echo_errors.append(repr(e))
    finally:
        close_writer(writer)


async def trickle_session(addr, i, sem, st, first):
    """One byte of a 1 MiB frame every second; when the server closes it (1008 at its message
    timeout), reconnect and start again."""
    reader, writer = first
    while not st.stop:
        key = os.urandom(4)
        writer.write(header(0x2, 1 << 20, key))
        payload = mask_bytes(b"\x5a" * 64, key)
        sent = 0

        async def read_close():
            while True:
                op, p = await aread_frame(reader)
                if op == 0x8:
                    return struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
                if op == 0x9:
                    writer.write(frame(0xA, p))

        closer = asyncio.ensure_future(read_close())
        try:
            while not st.stop and not closer.done():
                writer.write(payload[sent % 64 : sent % 64 + 1])
                sent += 1
                await asyncio.wait([closer], timeout=1.0)
            if closer.done():
                try:
                    code = closer.result()
                except Exception as e:  # noqa: BLE001
                    code = repr(e)
                st.trickle_closes[code] = st.trickle_closes.get(code, 0) + 1
        finally:
            closer.cancel()
            close_writer(writer)
        if st.stop:
            return
        try:
            reader, writer = await open_session(addr, i, sem)
        except Exception as e:  # noqa: BLE001
            st.trickle_errors.append(repr(e))
            return


async def mixed(args, addr, phase):
    phase.set("mixed")
    st = Mixed()
    sem = asyncio.Semaphore(256)
    n = args.mixed
    n_echo = max(1, n // 50)  # 2 %: echo traffic
    n_trickle = max(1, n * 3 // 100)  # 3 %: tricklers
    t = time.monotonic()
    sessions = await asyncio.wait_for(
        asyncio.gather(*(open_session(addr, i, sem) for i in range(n))), 120
    )
    print(
        f"   {n} sessions open in {time.monotonic() - t:.1f} s: {n_echo} echo, {n_trickle} "
        f"trickle, {n - n_echo - n_trickle} idle; running {args.seconds} s",
        flush=True,
    )
    tasks = []
    for i, (r, w) in enumerate(sessions):
        if i < n_echo:
            tasks.append(asyncio.ensure_future(echo_session(r, w, st, random.Random(i))))
        elif i < n_echo + n_trickle:
            tasks.append(asyncio.ensure_future(trickle_session(addr, i, sem, st, (r, w))))
        else:
            tasks.append(asyncio.ensure_future(idle_session(r, w, st)))
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        if not os.path.exists(f"/proc/{args.pid}"):
            raise RuntimeError("the server died")
        await asyncio.sleep(0.5)
    st.stop = True
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=10)
    print(
        f"   mixed: {st.echoes} echoes ({st.echoes / args.seconds:.0f}/s), echo errors "
        f"{len(st.echo_errors)} {st.echo_errors[:3]}, idle sessions dropped {st.idle_dropped}, "
        f"trickler closes by code {st.trickle_closes}, trickler reconnect errors "
        f"{len(st.trickle_errors)} {st.trickle_errors[:3]}",
        flush=True,
    )
    bad_closes = {c: k for c, k in st.trickle_closes.items() if c != 1008}
    return not st.echo_errors and not st.idle_dropped and not bad_closes and not st.trickle_errors


def load(args):
    addr = parse_addr(args.addr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = max(args.partial_frames, args.partial_heads, args.mixed) + 256
    if hard < need:
        sys.exit(f"soak.py: needs {need} open files, the hard limit is {hard}")
    fd, phase_file = tempfile.mkstemp(prefix="soak-phase-")
    os.close(fd)
    phase = Phase(phase_file)
    phase.set("baseline")
    mon = subprocess.Popen(
        [sys.executable, __file__, "monitor", "--addr", args.addr, "--admin", args.admin,
         "--pid", str(args.pid), "--interval", str(args.interval), "--phase-file", phase_file]
    )
    ok = True
    try:
        hold(2, args.pid)
        phase_partial_frames(args, addr, phase)
        phase_partial_heads(args, addr, phase)
        phase_announce(args, addr, phase)
        ok = asyncio.run(mixed(args, addr, phase))
        phase.set("after")
        hold(3, args.pid)
    except Exception as e:  # noqa: BLE001
        print(f"LOAD FAILED: {e!r}", flush=True)
        ok = False
    finally:
        mon.send_signal(signal.SIGTERM)
        try:
            mon_status = mon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            mon.kill()
            mon_status = -1
        os.unlink(phase_file)
    ok = ok and mon_status == 0
    print(f"SOAK {'PASSED' if ok else 'FAILED'}", flush=True)
    sys.exit(0 if ok else 1)


def parse_addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["load", "monitor"])
    p.add_argument("--addr", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--interval", type=float, default=3)
    p.add_argument("--hold", type=float, default=5)
    p.add_argument("--partial-frames", type=int, default=16384)
    p.add_argument("--partial-heads", type=int, default=3000)
    p.add_argument("--announce", type=int, default=50)
    p.add_argument("--mixed", type=int, default=10000)
    p.add_argument("--phase-file")
    args = p.parse_args()
    if args.mode == "monitor":
        monitor(args)
    else:
        load(args)


if __name__ == "__main__":
    main()
