#!/usr/bin/env python3
"""WebSocket echo probe for docker/check.sh: an RFC 6455 client on the standard library only.

Why its own client: the check runs on a bare CI machine, inside network namespaces, against a
server in a chroot; python3 is the one client runtime there without extra packages.

Connects to ws://HOST:PORT/PATH (retrying the TCP connect for --wait seconds while the server
starts), checks the 101 and Sec-WebSocket-Accept, sends a text and a 64 KiB binary message
(masked with random keys, the binary one in three fragments), checks that each comes back
unchanged with its opcode, then closes with 1000 and expects the server's Close 1000 and EOF.
Exit status 0 on success, 1 with the reason on stderr. Every socket operation is bounded by
--timeout.
"""

import argparse
import base64
import hashlib
import os
import socket
import struct
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode, payload, fin=True):
    """A client frame: masked, with a fresh random key."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def read_frame(sock):
    """One server frame: (fin, opcode, payload). Servers must not mask."""
    b0, b1 = read_exact(sock, 2)
    if b1 & 0x80:
        raise ValueError("server sent a masked frame")
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", read_exact(sock, 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", read_exact(sock, 8))
    return bool(b0 & 0x80), b0 & 0x0F, read_exact(sock, n)


def read_message(sock):
    """A whole data message: (opcode, payload), fragments joined."""
    fin, opcode, payload = read_frame(sock)
    if opcode not in (1, 2):
        raise ValueError(f"expected a data frame, got opcode {opcode}: {payload[:64]!r}")
    while not fin:
        fin, cont, more = read_frame(sock)
        if cont != 0:
            raise ValueError(f"expected a continuation frame, got opcode {cont}")
        payload += more
    return opcode, payload


def connect(host, port, wait, timeout):
    deadline = time.monotonic() + wait
    while True:
        try:
            return socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"cannot connect to {host}:{port} within {wait}s: {e}")
            time.sleep(0.2)


def probe(host, port, path, wait, timeout):
    sock = connect(host, port, wait, timeout)
    sock.settimeout(timeout)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
        + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError(f"connection closed during the handshake: {head!r}")
        head += chunk
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise ValueError(f"upgrade refused: {lines[0]!r}")
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
    want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != want:
        raise ValueError(f"bad Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}, want {want!r}")

    text = "Hello from the namespace \u2014 hioload-echo image check".encode()
    sock.sendall(frame(1, text))
    got = read_message(sock)
    if got != (1, text):
        raise ValueError(f"text echo differs: {got!r}")

    blob = os.urandom(64 * 1024)
    thirds = [blob[:20000], blob[20000:40000], blob[40000:]]
    sock.sendall(frame(2, thirds[0], fin=False) + frame(0, thirds[1], fin=False) + frame(0, thirds[2]))
    opcode, payload = read_message(sock)
    if opcode != 2 or payload != blob:
        raise ValueError(f"binary echo differs (opcode {opcode}, {len(payload)} bytes)")

    sock.sendall(frame(8, struct.pack("!H", 1000)))
    fin, opcode, payload = read_frame(sock)
    if opcode != 8 or payload[:2] != struct.pack("!H", 1000):
        raise ValueError(f"expected Close 1000, got opcode {opcode} {payload!r}")
    if sock.recv(1) != b"":
        raise ValueError("data after the close handshake")
    sock.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--path", default="/ws")
    p.add_argument("--wait", type=float, default=30, help="seconds to retry the connect (default 30)")
    p.add_argument("--timeout", type=float, default=10, help="seconds per socket operation (default 10)")
    a = p.parse_args()
    try:
        probe(a.host, a.port, a.path, a.wait, a.timeout)
    except Exception as e:  # every failure is one line for the CI log
        print(f"ws-probe: ws://{a.host}:{a.port}{a.path}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"ws-probe: ws://{a.host}:{a.port}{a.path}: text, 64 KiB binary (fragmented) and close 1000 echoed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
