"""The fault layer: blocked peers, loss and delay on what a node receives (memory network)."""

from __future__ import annotations

import asyncio

import pytest

from learnae.errors import IpfsError
from learnae.ipfs.faults import FaultyNode
from learnae.ipfs.memory import MemoryNetwork


@pytest.fixture
async def trio():
    net = MemoryNetwork(seed=3)
    a, b, c = (FaultyNode(net.node(n), seed=7) for n in "abc")
    for x in (b, c):
        await x.connect((await a.addrs())[0])
    yield a, b, c
    for x in (a, b, c):
        await x.close()


async def _received(node, topic, senders, payload):
    sub = node.subscribe(topic)
    await asyncio.sleep(0)
    for s in senders:
        await s.publish(topic, payload)
    got = []
    try:
        while True:
            got.append(await asyncio.wait_for(anext(sub), 0.2))
    except TimeoutError:
        pass
    await sub.aclose()
    return got


async def test_blocked_senders_are_dropped_and_heal_restores(trio):
    a, b, c = trio
    a.block([b.id])
    got = await _received(a, "t1", [b, c], b"x")
    assert [m.sender for m in got] == [c.id]
    assert a.dropped == 1
    assert b.id not in await a.peers()
    a.unblock()
    got = await _received(a, "t2", [b, c], b"y")
    assert sorted(m.sender for m in got) == sorted([b.id, c.id])


async def test_dialing_a_blocked_peer_is_refused(trio):
    a, b, _ = trio
    a.block([b.id])
    with pytest.raises(IpfsError, match="other side of a partition"):
        await a.connect((await b.addrs())[0])


async def test_total_loss_drops_everything_and_delay_holds_messages(trio):
    a, b, _ = trio
    a.loss = 1.0
    assert await _received(a, "t3", [b], b"z") == []
    a.loss, a.delay_ms = 0.0, 150
    loop = asyncio.get_running_loop()
    sub = a.subscribe("t4")
    await asyncio.sleep(0)
    start = loop.time()
    await b.publish("t4", b"late")
    msg = await asyncio.wait_for(anext(sub), 5)
    assert msg.data == b"late" and loop.time() - start >= 0.15
    await sub.aclose()


async def test_control_file_steers_the_rules_as_it_changes(trio, tmp_path):
    from learnae.ipfs.faults import follow_control, write_control

    a, b, c = trio
    path = tmp_path / "faults.json"
    follower = asyncio.create_task(follow_control(a, path, interval=0.02))
    try:
        await asyncio.sleep(0.05)  # no file yet: rules unchanged
        assert a.blocked == set() and a.loss == 0
        write_control(path, blocked=[b.id], loss=0.25, delay_ms=5)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if a.blocked:
                break
        assert (a.blocked, a.loss, a.delay_ms) == ({b.id}, 0.25, 5.0)
        assert [m.sender for m in await _received(a, "t", [b], b"x")] == []
        path.write_text("{half-writ")  # a torn file is ignored, the rules stay
        await asyncio.sleep(0.1)
        assert a.blocked == {b.id}
        write_control(path)  # heal
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not a.blocked:
                break
        assert (a.blocked, a.loss, a.delay_ms) == (set(), 0.0, 0.0)
    finally:
        follower.cancel()
