#!/usr/bin/python3
"""Echo server on Python `websockets` (Debian's python3-websockets), the deflate-capable peer
of scripts/bench.sh's compressed-echo scenario.

`--deflate` (the library's default) answers permessage-deflate offers with its own defaults:
context takeover, 12-bit windows both ways, memLevel 5, every message compressed; `--no-deflate`
declines them. One asyncio event loop, one thread, as the library's own echo example runs.
"""
import argparse
import asyncio

import websockets


async def echo(ws, _path=None):
    async for message in ws:
        await ws.send(message)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--addr", default="127.0.0.1:9005", help="IP:PORT to listen on")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--deflate", dest="deflate", action="store_true", default=True)
    g.add_argument("--no-deflate", dest="deflate", action="store_false")
    args = p.parse_args()
    host, port = args.addr.rsplit(":", 1)
    async with websockets.serve(
        echo,
        host,
        int(port),
        compression="deflate" if args.deflate else None,
        max_size=None,
        ping_interval=None,
    ):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
