"""The IpfsNode contract, run against every implementation.

``embedded`` and ``memory`` always run; ``rpc`` runs when LEARNAE_KUBO_API names a
Kubo daemon. Each test gets a pair of nodes (A, B) that can reach each other.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from conftest import eventually

from learnae.content import content_id, parse_cid
from learnae.errors import InvalidCID, InvalidMultiaddr, IpfsTimeout, NodeClosed

BACKENDS = [
    pytest.param("embedded_pair", marks=pytest.mark.slow),
    "memory_pair",
    "rpc_pair",
]


@pytest.fixture(params=BACKENDS)
def pair(request):
    return request.getfixturevalue(request.param)


# A CID that no node has: the CID of bytes nobody added.
NOBODY_HAS = content_id(b"learnae: nobody ever adds exactly these bytes " + os.urandom(16))


async def test_add_returns_the_kubo_cid_of_the_bytes(pair):
    a, _ = pair
    data = os.urandom(300_000)  # two chunks
    assert await a.add(data) == content_id(data)
    assert (await a.add(b"hello world")).startswith("bafybei")


async def test_b_fetches_what_a_added(pair):
    a, b = pair
    for data in (b"", b"hello world", os.urandom(1_000_000)):
        cid = await a.add(data)
        assert await b.cat(cid, timeout=20) == data


async def test_cat_accepts_cid_v0_and_v1(pair):
    a, b = pair
    cid = await a.add(b"hello world")
    assert await b.cat("Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD", timeout=20) == b"hello world"
    assert await b.cat(cid, timeout=20) == b"hello world"


async def test_cat_of_a_cid_nobody_has_times_out_and_nodes_keep_working(pair):
    a, b = pair
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(IpfsTimeout, match="within 1.5 s"):
        await b.cat(NOBODY_HAS, timeout=1.5)
    elapsed = loop.time() - start
    assert 1.5 <= elapsed < 6.5, f"timeout error came after {elapsed:.1f} s"
    # A second attempt joins or repeats the fetch and times out again, without harm.
    with pytest.raises(IpfsTimeout):
        await b.cat(NOBODY_HAS, timeout=0.5)
    data = os.urandom(10_000)
    assert await b.cat(await a.add(data), timeout=20) == data
    assert await a.cat(await b.add(data[::-1]), timeout=20) == data[::-1]


async def test_cat_refuses_content_over_max_size(pair):
    from learnae.errors import OversizeError

    a, b = pair
    cid = await a.add(os.urandom(5000))
    with pytest.raises(OversizeError, match="5000 bytes"):
        await b.cat(cid, timeout=20, max_size=4999)


async def test_pubsub_reaches_the_other_node_with_its_sender(pair):
    a, b = pair
    topic = "learnae/test/" + os.urandom(4).hex()
    sub = b.subscribe(topic)
    received = []

    async def reader():
        async for msg in sub:
            received.append(msg)

    task = asyncio.create_task(reader())
    try:
        # gossipsub needs a moment to learn that B joined the topic: publish until it arrives.
        payload = b"\x00binary\xffpayload"
        await eventually(lambda: _publish_and_check(a, topic, payload, received), timeout=30, interval=0.3)
        sender, data = received[0]
        assert (sender, data) == (a.id, payload)
    finally:
        await sub.aclose()
        await asyncio.wait_for(task, 5)


async def _publish_and_check(a, topic, payload, received) -> bool:
    if not received:
        await a.publish(topic, payload)
    return bool(received)


async def test_a_node_receives_its_own_messages(pair):
    a, _ = pair
    topic = "learnae/self/" + os.urandom(4).hex()
    sub = a.subscribe(topic)
    try:
        await a.publish(topic, b"me")
        msg = await asyncio.wait_for(anext(sub), 10)
        assert msg == (a.id, b"me")
    finally:
        await sub.aclose()


async def test_peers_and_addrs(pair):
    a, b = pair
    if a.id == b.id:
        pytest.skip("both views are one daemon")
    assert b.id in await a.peers()
    addrs = await a.addrs()
    assert addrs and all(addr.endswith("/p2p/" + a.id) for addr in addrs)


async def test_pin_and_unpin(pair):
    a, b = pair
    cid = await a.add(b"pin me " + os.urandom(8))
    assert cid in await a.pins()  # add pins
    await a.unpin(cid)  # Kubo pinned the CIDv0: unpinning by the CIDv1 removes it
    assert cid not in await a.pins()
    await a.unpin(cid)  # unpinning what is not pinned is not an error
    await a.pin(cid)
    await a.pin(str(parse_cid(cid).set(version=0, base="base58btc")))  # a second pin in Kubo
    assert cid in await a.pins()
    await a.unpin(cid)  # removes both
    assert cid not in await a.pins()
    if a.id != b.id:  # pin fetches what the node lacks (A still holds it, unpinned)
        await b.pin(cid, timeout=20)
        assert cid in await b.pins()


@pytest.mark.parametrize("bad", ["not-a-cid", "Qm123", ""])
async def test_bad_cid_is_a_typed_error(pair, bad):
    a, _ = pair
    with pytest.raises(InvalidCID):
        await a.cat(bad, timeout=1)


@pytest.mark.parametrize("bad", ["not a multiaddr", "/ip4/999.1.1.1/tcp/1/p2p/QmZ", "/ip4/127.0.0.1/tcp/4001"])
async def test_malformed_multiaddr_is_a_typed_error(pair, bad):
    a, _ = pair
    with pytest.raises(InvalidMultiaddr):
        await a.connect(bad)


async def test_closed_node_refuses_calls(pair):
    a, _ = pair
    await a.close()
    with pytest.raises(NodeClosed):
        await a.add(b"x")
    await a.close()  # idempotent
