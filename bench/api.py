"""Benchmark: the node's HTTP API while a stranger holds half-open connections to it.

Usage: python bench/api.py [--half-open 300] [--bodies 40] [--requests 40]
       [--header-timeout S] [--body-timeout S] [--max-connections N]

Serves :func:`learnae.api.start_api` (the defaults, unless the flags say otherwise) for a
stand-in node with the default swarm limits (8 MiB chunks: a body limit of about 11 MB) in
this process, then:

1. ``/status`` latency (median, p99 over ``--requests`` GETs, a new connection each) with
   no other connection open.
2. Opens ``--half-open`` raw connections from 127.0.0.1: ``--bodies`` of them send a whole
   ``POST /ingest`` head with a Content-Length just under the limit and then all of the
   body but its last 64 KiB; the rest send part of a request head and stop. Counts the
   connections the server closed at once (beyond the connection cap, the oldest give way).
3. ``/status`` latency again while they are open.
4. Waits (at most the header and body timeouts plus 30 s) until the server has closed every
   one of them, and says when the last one was closed.

RSS (VmRSS of this process, which is the server; the attacking sockets hold no data on
this side) before, while they are open, and 1.5 s after the server closed them. The raw
clients share the server's event loop: the second latency figures are taken 0.5 s after
they opened, once their sending has settled.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from types import SimpleNamespace

import aiohttp

from learnae import api
from learnae.manifest import Limits


class StandInNode:
    """Enough of a :class:`learnae.node.TrainerNode` for the API: /ingest reads bodies."""

    def __init__(self) -> None:
        self.manifest = SimpleNamespace(limits=Limits())
        self.tangle = object()  # never reached: no body is ever completed
        self.ipfs = object()

    def status(self) -> dict:
        return {"id": "QmBench", "step": 1, "peer_count": 0}


def rss_mb() -> float:
    """This process's resident set size, in MB (VmRSS from /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


async def latency(url: str, n: int) -> tuple[float, float, dict[int, int]]:
    """(median, p99) in ms of ``n`` GET /status, each on a new connection, and the count
    of each status code (0: no answer)."""
    times, codes = [], {}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=timeout) as session:
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                async with session.get(url + "/status") as resp:
                    await resp.read()
                    code = resp.status
            except (aiohttp.ClientError, TimeoutError):
                code = 0
            times.append((time.perf_counter() - t0) * 1000)
            codes[code] = codes.get(code, 0) + 1
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))], codes


async def half_open(port: int, head: bytes, body: bytes) -> socket.socket:
    """A connection that sent ``head`` and (as far as the server takes it) ``body``."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    try:
        await loop.sock_sendall(sock, head)
        if body:  # the server may stop reading (or refuse): give up after 2 s
            await asyncio.wait_for(loop.sock_sendall(sock, body), 2)
    except (OSError, TimeoutError):
        pass
    return sock


async def closed_by_server(sock: socket.socket) -> float:
    """Wait until the server closes ``sock`` (EOF or reset); the loop time it saw that."""
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(sock, 65536):
            pass
    except OSError:
        pass
    return loop.time()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--half-open", type=int, default=300)
    parser.add_argument("--bodies", type=int, default=40)
    parser.add_argument("--requests", type=int, default=40)
    for name in ("header-timeout", "body-timeout"):
        parser.add_argument(f"--{name}", type=float, help="seconds (default: the API's)")
    parser.add_argument("--max-connections", type=int, help="(default: the API's)")
    args = parser.parse_args()
    kwargs = {k: v for k, v in vars(args).items()
              if k in ("header_timeout", "body_timeout", "max_connections") and v is not None}

    node = StandInNode()
    limit = api.body_limit(node.manifest)
    body = b"A" * (limit - (64 << 10))
    body_head = (b"POST /ingest HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % (limit - 1))
    slow_head = b"GET /status HTTP/1.1\r\nHost: node\r\nX-Slow: "
    loop = asyncio.get_running_loop()

    runner, url = await api.start_api(node, "127.0.0.1", 0, **kwargs)
    port = int(url.rsplit(":", 1)[1])
    socks: list[socket.socket] = []
    try:
        print(f"aiohttp server {url}; settings {kwargs or 'defaults'}; body limit {limit} B")
        med, p99, codes = await latency(url, args.requests)
        rss0 = rss_mb()
        print(f"idle:      /status median {med:6.1f} ms  p99 {p99:6.1f} ms  codes {codes}"
              f"  RSS {rss0:.0f} MB")

        t_open = loop.time()
        socks = list(await asyncio.gather(
            *(half_open(port, body_head, body) for _ in range(args.bodies)),
            *(half_open(port, slow_head, b"") for _ in range(args.half_open - args.bodies))))
        waits = {asyncio.ensure_future(closed_by_server(s)): s for s in socks}
        done, _ = await asyncio.wait(waits, timeout=0.5)  # evicted ones close at once
        rss1 = rss_mb()
        med, p99, codes = await latency(url, args.requests)
        print(f"{len(socks)} open: /status median {med:6.1f} ms  p99 {p99:6.1f} ms  codes {codes}"
              f"  RSS {rss1:.0f} MB ({rss1 - rss0:+.0f}); closed at once: {len(done)}")

        budget = (kwargs.get("header_timeout", api.HEADER_TIMEOUT)
                  + kwargs.get("body_timeout", api.BODY_TIMEOUT) + 30)
        done, pending = await asyncio.wait(waits, timeout=budget)
        last = max((t.result() for t in done), default=t_open) - t_open
        await asyncio.sleep(1.5)  # the API gives freed memory back 1 s after the last close
        rss2 = rss_mb()
        print(f"after:     {len(done)} closed by the server, the last after {last:.1f} s;"
              f" {len(pending)} still open after {budget:.0f} s;"
              f"  RSS {rss2:.0f} MB ({rss2 - rss0:+.0f})")
        for task in pending:
            task.cancel()
    finally:
        for sock in socks:
            sock.close()
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
