"""Shared fixtures. Integration fixtures start real embedded Kubo nodes in a private swarm."""

from __future__ import annotations

import asyncio
import functools
import os

import hypothesis  # noqa: F401  (see below)
import pytest

from learnae.ipfs import privnet

# hypothesis is imported above, before any test loads Kubo: CPython 3.11.7 can raise a
# spurious "AST constructor recursion depth mismatch" (gh-106905) when pytest rewrites a
# module late, with the Go runtime's threads running; importing early leaves less to rewrite.


async def eventually(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Await until ``predicate()`` (sync or async) is truthy; fail the test after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)


def virtual_clock(test):
    """Run the async test function ``test`` on a virtual clock instead of pytest-asyncio's loop.

    ``loop.time()`` starts at 0 and jumps to the next timer whenever nothing is ready, so
    ``asyncio.sleep(0.3)`` takes no real time and returns only after every callback due within
    those 0.3 s has run: "nothing arrived within 0.3 s" is then exact, never a slow machine's
    accident. Only for code that waits on the loop alone (the memory network, the syncer, the
    fault layer): no threads, sockets or processes. The test may use sync fixtures only.
    """
    @functools.wraps(test)
    def run(*args, **kwargs):
        from learnae.local.clock import VirtualClockLoop

        loop = VirtualClockLoop()
        try:
            return loop.run_until_complete(test(*args, **kwargs))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return run


@pytest.fixture
def launch(tmp_path):
    """A :class:`procs.launch.Launcher` with its logs in ``tmp_path``: start processes, wait for
    what they do; every one it started is stopped at teardown, whatever the test did."""
    from procs.launch import Launcher

    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def swarm_key() -> str:
    return privnet.new_swarm_key()


@pytest.fixture
async def embedded_pair(tmp_path, swarm_key):
    """Two embedded Kubo nodes in one private swarm on 127.0.0.1, B connected to A."""
    from learnae.ipfs.embedded import EmbeddedNode

    nodes = []
    try:
        for name in "ab":
            nodes.append(await EmbeddedNode.start(tmp_path / name, swarm_key))
        a, b = nodes
        await b.connect((await a.addrs())[0])
        await eventually(lambda: _sees(a, b))
        yield a, b
    finally:
        for node in nodes:
            await node.close()


async def _sees(a, b) -> bool:
    return b.id in await a.peers() and a.id in await b.peers()


@pytest.fixture
async def memory_pair():
    from learnae.ipfs.memory import MemoryNetwork

    net = MemoryNetwork(seed=1)
    a, b = net.node("a"), net.node("b")
    await b.connect((await a.addrs())[0])
    yield a, b
    await a.close()
    await b.close()


@pytest.fixture
async def rpc_pair():
    """Two views of a Kubo daemon named by LEARNAE_KUBO_API (one daemon: A and B are the same node)."""
    url = os.environ.get("LEARNAE_KUBO_API")
    if not url:
        pytest.skip("set LEARNAE_KUBO_API=http://127.0.0.1:5001 to run the contract suite against a Kubo daemon")
    from learnae.ipfs.rpc import RpcNode

    a = await RpcNode.open(url, allow_shared=True)  # the contract suite takes the daemon as it is
    b = await RpcNode.open(url, allow_shared=True)
    yield a, b
    await a.close()
    await b.close()
