"""The fault layer: blocked peers, loss and delay on what a node receives (memory network)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from conftest import eventually, virtual_clock

from learnae.errors import IpfsError
from learnae.ipfs.faults import FaultyNode
from learnae.ipfs.memory import MemoryNetwork


@contextlib.asynccontextmanager
async def three_nodes():
    """Faulty nodes a, b, c on a memory network; b and c connected to a."""
    net = MemoryNetwork(seed=3)
    a, b, c = (FaultyNode(net.node(n), seed=7) for n in "abc")
    try:
        for x in (b, c):
            await x.connect((await a.addrs())[0])
        yield a, b, c
    finally:
        for x in (a, b, c):
            await x.close()


@pytest.fixture
async def trio():
    async with three_nodes() as nodes:
        yield nodes


async def _received(node, topic, senders, payload):
    """What ``node`` gets of one message from each of ``senders``: waits until each message was
    either delivered or dropped by the fault layer (counted in ``node.dropped``)."""
    sub = node.subscribe(topic)
    got = []

    async def read():
        async for msg in sub:
            got.append(msg)

    reader = asyncio.create_task(read())
    dropped = node.dropped
    try:
        for s in senders:
            await s.publish(topic, payload)
        await eventually(lambda: len(got) + node.dropped - dropped == len(senders))
    finally:
        await sub.aclose()
        await reader
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
    assert a.dropped == 1


async def test_dialing_a_blocked_peer_is_refused(trio):
    a, b, _ = trio
    a.block([b.id])
    with pytest.raises(IpfsError, match="other side of a partition"):
        await a.connect((await b.addrs())[0])


async def test_total_loss_drops_everything_and_delay_holds_messages(trio):
    a, b, _ = trio
    a.loss = 1.0
    assert await _received(a, "t3", [b], b"z") == []
    assert a.dropped == 1
    a.loss, a.delay_ms = 0.0, 150
    loop = asyncio.get_running_loop()
    sub = a.subscribe("t4")
    await asyncio.sleep(0)
    start = loop.time()
    await b.publish("t4", b"late")
    msg = await asyncio.wait_for(anext(sub), 5)
    assert msg.data == b"late" and loop.time() - start >= 0.15
    await sub.aclose()


@virtual_clock  # the follower polls every 0.02 s: a 0.1 s wait is five polls, exactly
async def test_control_file_steers_the_rules_as_it_changes(tmp_path):
    from learnae.ipfs.faults import follow_control, write_control

    async with three_nodes() as (a, b, _):
        path = tmp_path / "faults.json"
        follower = asyncio.create_task(follow_control(a, path, interval=0.02))
        try:
            await asyncio.sleep(0.1)  # no file yet: rules unchanged
            assert a.blocked == set() and a.loss == 0
            write_control(path, blocked=[b.id], loss=0.25, delay_ms=5)
            await eventually(lambda: a.blocked)
            assert (a.blocked, a.loss, a.delay_ms) == ({b.id}, 0.25, 5.0)
            assert [m.sender for m in await _received(a, "t", [b], b"x")] == []
            path.write_text("{half-writ")  # a torn file is ignored, the rules stay
            await asyncio.sleep(0.1)
            assert a.blocked == {b.id}
            write_control(path)  # heal
            await eventually(lambda: not a.blocked)
            assert (a.blocked, a.loss, a.delay_ms) == (set(), 0.0, 0.0)
        finally:
            follower.cancel()


@virtual_clock
@pytest.mark.parametrize("bad", ['{"blocked": 5}', '["a"]', '{"blocked": ["x", 7]}',
                                 '{"loss": 1.5}', '{"delay_ms": -1}', '{"loss": true}'])
async def test_a_control_file_of_the_wrong_shape_is_ignored_and_following_goes_on(tmp_path, bad,
                                                                                  caplog):
    from learnae.ipfs.faults import follow_control, write_control

    async with three_nodes() as (a, b, _):
        path = tmp_path / "faults.json"
        follower = asyncio.create_task(follow_control(a, path, interval=0.02))
        try:
            write_control(path, loss=0.5)
            await eventually(lambda: a.loss == 0.5)
            path.write_text(bad)  # valid JSON, wrong shape: the rules stay as they were
            await asyncio.sleep(0.1)
            assert (a.blocked, a.loss, a.delay_ms) == (set(), 0.5, 0.0)
            assert not follower.done()
            assert [r.message.count("ignored") for r in caplog.records] == [1]  # logged once
            write_control(path, blocked=[b.id])  # the follower still follows
            await eventually(lambda: a.blocked == {b.id})
            assert a.loss == 0.0
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)


def test_write_control_replaces_the_file_whole_and_leaves_nothing_on_failure(tmp_path):
    from learnae.ipfs.faults import write_control

    path = tmp_path / "faults.json"
    write_control(path, blocked=["b", "a"], loss=0.25, delay_ms=5)
    write_control(path, blocked=["c"])
    assert json.loads(path.read_text()) == {"blocked": ["c"], "loss": 0.0, "delay_ms": 0.0}
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the node processes that follow it
    with pytest.raises(TypeError):
        write_control(path, blocked=["a", 1])  # ids that do not sort: nothing is written
    assert json.loads(path.read_text())["blocked"] == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["faults.json"]  # no temporary file left


def test_the_forwarding_base_forwards_every_call_of_the_interface():
    """A call added to IpfsNode must be forwarded too, or FaultyNode would not be instantiable
    and the simulator's node would lack it."""
    from learnae.ipfs.base import ForwardingNode, IpfsNode

    assert not ForwardingNode.__abstractmethods__
    assert IpfsNode.__abstractmethods__ <= set(vars(ForwardingNode))
    for name in IpfsNode.__abstractmethods__ - {"subscribe", "connect", "peers"}:
        assert name not in vars(FaultyNode), f"FaultyNode forwards {name} itself: use the base"


async def test_content_pins_and_garbage_collection_pass_through(trio):
    a, b, _ = trio
    kept, dropped = await a.add(b"kept"), await a.add(b"dropped")
    await a.unpin(dropped)
    assert await a.pins() == {kept}
    assert await b.cat(kept, timeout=1) == b"kept"
    assert await a.repo_bytes() == len(b"kept") + len(b"dropped")
    stats = await a.collect_garbage(grace=0)
    assert (stats.blocks_removed, stats.bytes_freed) == (1, len(b"dropped"))
    assert await a.repo_bytes() == len(b"kept") and not a.inner.has(dropped)
    await b.pin(kept)
    assert (await b.collect_garbage()).blocks_kept == 1
