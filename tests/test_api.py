"""The node's HTTP API (learnae.api) against a stand-in node: routes, JSON, Prometheus text,
and what a client that never finishes its request can hold (connections, time, memory)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import aiohttp
import pytest
from conftest import eventually

from learnae.api import LINGER_TIME, MAX_CONNECTIONS, prometheus_text, start_api
from learnae.identity import Identity
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import make_tx

STATUS = {
    "id": "QmPeer", "author": "author-id", "peer_count": 2, "peer_ids": ["QmA", "QmB"], "step": 120, "samples": 3840, "published": 4,
    "last_checkpoint": {"tx": "bafy...", "cid": "bafy...", "step": 120},
    "metrics": {"loss": 0.25, "accuracy": 0.9}, "test": {"loss": 0.3, "accuracy": 0.88},
    "merges": 3, "merges_applied": 2, "rejections": {"norm": 2, "timeout": 1},
    "errors": {"publish:internal": 1, "adopt:store": 2}, "uptime_s": 12.5,
    "ledger": {"transactions": 9, "by_kind": {"genesis": 1, "checkpoint": 8}, "tips": 2},
}


class FakeNode:
    manifest = None

    def __init__(self, tangle, ipfs=None):
        self.tangle = tangle
        self.ipfs = ipfs  # POST /ingest reads bodies only once the node has an IPFS node

    def status(self):
        return STATUS


@pytest.fixture
def tangle(tmp_path):
    genesis = make_tx(Identity.generate(), kind="genesis", payload={"name": "api"}, parents=[], swarm=None,
                      pow_bits=0)
    with Tangle(tmp_path / "tangle.sqlite", genesis_raw=genesis.raw, pow_bits=0, max_tx_bytes=4096) as t:
        yield t


def test_prometheus_text_has_typed_counters_and_labels():
    text = prometheus_text(STATUS)
    assert "# TYPE learnae_step counter\nlearnae_step 120.0\n" in text
    assert 'learnae_rejections{reason="norm"} 2.0' in text
    assert 'learnae_rejections{reason="timeout"} 1.0' in text
    assert "learnae_test_accuracy 0.88" in text
    assert 'learnae_ledger_transactions{kind="checkpoint"} 8.0' in text
    assert "# TYPE learnae_peers_passed_over gauge\nlearnae_peers_passed_over 0.0\n" in text
    assert "# TYPE learnae_peers gauge\nlearnae_peers 2.0\n" in text
    assert "learnae_merges_applied 2.0" in text and "learnae_uptime_seconds 12.5" in text
    assert text.endswith("\n")
    for line in text.splitlines():  # every sample line is NAME[{labels}] VALUE
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value)
            assert name.startswith("learnae_")


def test_prometheus_text_exports_reason_codes_as_labels():
    text = prometheus_text(STATUS)
    assert "# TYPE learnae_errors counter" in text
    assert 'learnae_errors{reason="adopt:store"} 2.0' in text
    assert 'learnae_errors{reason="publish:internal"} 1.0' in text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    assert all(":" not in n and "-" not in n for n in names), names  # codes only in labels


async def test_routes_serve_status_metrics_and_tips(tangle):
    runner, url = await start_api(FakeNode(tangle), "127.0.0.1", 0)
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/status") as resp:
                assert resp.status == 200 and await resp.json() == STATUS
            async with session.get(url + "/metrics") as resp:
                assert resp.status == 200 and resp.content_type == "text/plain"
                assert "learnae_merges 3.0" in await resp.text()
            async with session.get(url + "/ledger/tips") as resp:
                body = await resp.json()
                assert body == {"tips": [tangle.swarm], "count": 1}
            async with session.get(url + "/nothing") as resp:
                assert resp.status == 404
            async with session.post(url + "/status") as resp:
                assert resp.status == 405
    finally:
        await runner.cleanup()


async def test_get_ingest_tells_a_sensor_its_next_seq(tangle):
    """A sensor that lost its state asks where its sequence stands before its first post."""
    from learnae.ledger.tx import data_payload

    sensor = Identity.generate()
    payload = data_payload(cid="bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", size=1,
                           rows=1, schema={"x": [2]}, source="probe", seq=6)
    tangle.insert(make_tx(sensor, kind="data", payload=payload, parents=[tangle.swarm], swarm=tangle.swarm,
                          pow_bits=0))
    runner, url = await start_api(FakeNode(tangle, ipfs=object()))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/ingest", params={"author": sensor.author_id}) as resp:
                body = await resp.json()
                assert resp.status == 200 and body["next_seq"] == 7 and len(body["tips"]) == 1
            async with session.get(url + "/ingest", params={"author": Identity.generate().author_id}) as resp:
                assert (await resp.json())["next_seq"] == 0
            async with session.get(url + "/ingest") as resp:
                assert "next_seq" not in await resp.json()
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- clients that never finish


def rss_bytes() -> int:
    """This process's resident set size (VmRSS), in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


async def connect(url: str, data: bytes = b"") -> socket.socket:
    """A raw connection to the API at ``url`` that sent ``data`` (and nothing more)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", int(url.rsplit(":", 1)[1])))
    if data:
        await loop.sock_sendall(sock, data)
    return sock


async def until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Read ``sock`` until the server closes it (EOF or reset): (what came, loop time)."""
    loop = asyncio.get_running_loop()
    got = b""
    try:
        while data := await loop.sock_recv(sock, 65536):
            got += data
    except ConnectionResetError:
        pass
    return got, loop.time()


async def status_ms(session: aiohttp.ClientSession, url: str) -> float:
    t0 = time.perf_counter()
    async with session.get(url + "/status") as resp:
        assert resp.status == 200 and await resp.json() == STATUS
    return (time.perf_counter() - t0) * 1000


def ingest_head(length: int, extra: bytes = b"") -> bytes:
    return (b"POST /ingest HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%s\r\n" % (length, extra))


class Attacker:
    """Raw clients that never finish their requests, on an event loop of their own in a
    thread, so that their sending does not slow the server's loop that the test measures."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.socks: list[socket.socket] = []
        self.tasks: list[asyncio.Task] = []

    def run(self, coro) -> asyncio.Future:
        """Run ``coro`` on the attacker's loop; await the result on the caller's."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def open(self, url: str, n: int, head: bytes, body: bytes = b"") -> list[socket.socket]:
        """``n`` connections that sent ``head`` and go on sending ``body`` in the background
        (as far as the server reads it)."""
        socks = [await connect(url, head) for _ in range(n)]
        self.socks += socks
        for sock in socks if body else ():
            self.tasks.append(asyncio.create_task(self._send(sock, body)))
        return socks

    async def _send(self, sock: socket.socket, body: bytes) -> None:
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_sendall(sock, body)

    async def watch(self, socks: list[socket.socket]) -> list[tuple[bytes, float]]:
        """What each of ``socks`` received and when the server closed it (EOF or reset)."""
        return await asyncio.gather(*(until_closed(s) for s in socks))

    def close(self) -> None:
        async def stop():
            for task in self.tasks:
                task.cancel()
            for sock in self.socks:
                sock.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def attacker():
    attacker = Attacker()
    try:
        yield attacker
    finally:
        attacker.close()


@pytest.mark.slow
async def test_half_open_connections_are_closed_capped_and_give_memory_back(tangle, attacker):
    """300 connections that never finish their request, at the default connection cap: the
    server holds at most the cap (closing the oldest), /status still answers within 100 ms
    on a fresh connection, the rest are closed by the timeouts, and memory comes back."""
    header_timeout, body_timeout, max_body, max_bodies = 3.0, 4.0, 4 << 20, 4
    loop = asyncio.get_running_loop()
    runner, url = await start_api(FakeNode(tangle, ipfs=object()), header_timeout=header_timeout,
                                  body_timeout=body_timeout, max_bodies=max_bodies, max_body=max_body)
    probe = aiohttp.TCPConnector(force_close=True)  # a new connection for every probe, as curl
    try:
        async with aiohttp.ClientSession(connector=probe) as session:
            await status_ms(session, url)
            rss0 = rss_bytes()
            t0 = loop.time()
            heads = await attacker.run(attacker.open(
                url, 260, b"GET /status HTTP/1.1\r\nHost: node\r\nX-Slow: "))
            bodies = await attacker.run(attacker.open(  # 3 MiB of a 4 MiB body each
                url, 40, ingest_head(max_body - 1), b"A" * (3 << 20)))
            closed = attacker.run(attacker.watch(heads + bodies))
            socks = heads + bodies
            # the server takes all of them in, holding the newest MAX_CONNECTIONS
            await eventually(lambda: len(runner.server.connections) == MAX_CONNECTIONS, timeout=10)
            accepted = loop.time()

            latencies = [await status_ms(session, url) for _ in range(20)]
            assert max(latencies) < 100, latencies
            assert len(runner.server.connections) <= MAX_CONNECTIONS
            rss1 = rss_bytes()
            assert loop.time() - t0 < header_timeout, "too slow to see them all open in time"

            async with asyncio.timeout(body_timeout + LINGER_TIME + 5):
                results = await closed
        evicted = [(sock, data, when) for sock, (data, when) in zip(socks, results, strict=True)
                   if when < t0 + header_timeout]
        # the oldest gave way at once, without an answer: all but the cap, and one per probe
        assert len(evicted) >= len(socks) - MAX_CONNECTIONS
        assert all(data == b"" for _, data, _ in evicted)
        assert {s for s, _, _ in evicted} >= set(socks[:len(socks) - MAX_CONNECTIONS])
        for sock, (data, when) in zip(socks, results, strict=True):
            if any(sock is s for s, _, _ in evicted):
                continue
            if sock in heads:  # no whole head: closed by the header timeout, no answer
                assert data == b"" and when < accepted + header_timeout + 1
            else:  # body too slow: 408 (or 503: no turn to read came)
                assert data.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")), data[:80]
                assert t0 + body_timeout < when < accepted + body_timeout + LINGER_TIME + 1
        assert sum(d.startswith(b"HTTP/1.1 408") for d, _ in results) >= max_bodies

        # While open, memory stayed within the bodies allowed; after, it comes back.
        assert rss1 - rss0 < max_bodies * max_body + (64 << 20), (rss0, rss1)
        await eventually(lambda: rss_bytes() - rss0 < 16 << 20, timeout=10)
    finally:
        await runner.cleanup()


async def test_body_over_the_limit_gets_413_before_it_is_read(tangle):
    runner, url = await start_api(FakeNode(tangle, ipfs=object()), max_body=64 << 10)
    socks = []
    try:
        # Content-Length over the limit: refused from the head alone.
        socks.append(await connect(url, ingest_head(1 << 30)))
        async with asyncio.timeout(5):
            data, _ = await until_closed(socks[-1])
        assert data.startswith(b"HTTP/1.1 413"), data[:80]
        assert b'"error": "request-entity-too-large"' in data and b"65536 bytes" in data

        # No length (chunked): refused once more than the limit came, the body unfinished.
        head = b"POST /ingest HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\r\n"
        socks.append(await connect(url, head + (b"4000\r\n" + b"A" * 0x4000 + b"\r\n") * 5))
        async with asyncio.timeout(5):
            data, _ = await until_closed(socks[-1])
        assert data.startswith(b"HTTP/1.1 413"), data[:80]

        # A body within the limit reaches the ingest check (here: not the JSON it wants).
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/ingest", data=b"x" * (64 << 10)) as resp:
                assert resp.status == 400 and (await resp.json())["error"] == "bad-request"
    finally:
        for sock in socks:
            sock.close()
        await runner.cleanup()
