"""keep_connected redials peers that dropped away (memory network)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import eventually

from learnae.errors import InvalidMultiaddr
from learnae.ipfs.memory import MemoryNetwork
from learnae.ipfs.peering import keep_connected


async def test_keeps_dialing_until_the_peer_comes_up(caplog):
    caplog.set_level(logging.DEBUG, logger="learnae.ipfs.peering")
    net = MemoryNetwork(seed=1)
    a, b = net.node("a"), net.node("b")
    net.down("a")
    task = asyncio.create_task(keep_connected(b, await a.addrs(), interval=0.05))
    try:
        # several failed dials: logged, not raised
        await eventually(lambda: sum(r.getMessage().startswith("redial /memory/a")
                                     for r in caplog.records) >= 3)
        assert not task.done() and b.id not in await a.peers()
        net.up("a")
        await eventually(lambda: _connected(a, b))
    finally:
        task.cancel()


async def _connected(a, b) -> bool:
    return b.id in await a.peers()


async def test_an_address_without_peer_id_is_refused():
    net = MemoryNetwork()
    with pytest.raises(InvalidMultiaddr, match="/p2p/"):
        await keep_connected(net.node("a"), ["/ip4/127.0.0.1/tcp/1"])
