"""The simulated network: topology, flooding, fault rules. (The IpfsNode contract is in test_ipfs.py.)"""

from __future__ import annotations

import asyncio
import gc
import random

import pytest
from conftest import virtual_clock

from learnae.errors import InvalidMultiaddr, IpfsError, IpfsTimeout, NodeClosed, OversizeError
from learnae.ipfs.base import MESSAGE_OVERHEAD, SUBSCRIPTION_BUFFER_BYTES, GcStats
from learnae.ipfs.memory import MemoryNetwork

TOPIC = "learnae/test"


async def link(x, y):
    await x.connect((await y.addrs())[0])


async def line(*names, seed=0):
    """A network whose nodes are connected in a line: names[0] - names[1] - ..."""
    net = MemoryNetwork(seed)
    nodes = [net.node(name) for name in names]
    for x, y in zip(nodes, nodes[1:], strict=False):
        await link(x, y)
    return net, nodes


async def drain(sub) -> list:
    """Every message delivered to ``sub`` so far, without waiting: a delivery without delay is
    queued by ``publish`` (or ``receive``) itself, before it returns."""
    out = []
    while len(sub.buffer):
        out.append(await anext(sub))
    return out


async def test_ids_addrs_and_connections():
    net = MemoryNetwork()
    a, b, n0 = net.node("a"), net.node("b"), net.node()
    assert (a.id, b.id, n0.id) == ("a", "b", "n0")
    assert net.node().id == "n1"
    with pytest.raises(ValueError, match="already named"):
        net.node("a")
    assert await a.addrs() == ["/memory/a/p2p/a"]
    await link(b, a)
    assert await a.peers() == ["b"] and await b.peers() == ["a"]


async def test_connect_errors():
    net, (a, b) = await line("a", "b")
    with pytest.raises(InvalidMultiaddr, match="memory address"):
        await a.connect("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA")
    with pytest.raises(InvalidMultiaddr):
        await a.connect("/memory/b")
    with pytest.raises(IpfsError, match="no running memory node 'zed'"):
        await a.connect("/memory/zed/p2p/zed")
    with pytest.raises(IpfsError, match="itself"):
        await a.connect("/memory/a/p2p/a")
    c = net.node("c")
    net.partition(["a"], ["c"])
    with pytest.raises(IpfsError, match="partitioned"):
        await a.connect("/memory/c/p2p/c")
    net.heal()
    await link(a, c)
    assert await a.peers() == ["b", "c"]


async def test_multi_hop_delivery_a_b_c():
    net, (a, b, c) = await line("a", "b", "c")
    subs = [node.subscribe(TOPIC) for node in (a, b, c)]
    await a.publish(TOPIC, b"hello")
    for sub in subs:
        assert await drain(sub) == [("a", b"hello")]
    assert net.counters["delivered"] == 3
    # cat goes over both hops too
    cid = await c.add(b"from c")
    assert await a.cat(cid, timeout=1) == b"from c"


async def test_a_node_that_does_not_subscribe_does_not_relay():
    net, (a, b, c) = await line("a", "b", "c")
    sub_c = c.subscribe(TOPIC)
    await a.publish(TOPIC, b"1")
    assert await drain(sub_c) == []
    sub_b = b.subscribe(TOPIC)
    await a.publish(TOPIC, b"2")
    assert await drain(sub_c) == [("a", b"2")]
    # a subscription nobody holds any more is collected and stops b relaying
    del sub_b
    gc.collect()
    await a.publish(TOPIC, b"3")
    assert await drain(sub_c) == []


async def test_each_node_delivers_a_message_once():
    net = MemoryNetwork()
    a, b, c, d = (net.node(x) for x in "abcd")
    for x, y in ((a, b), (a, c), (b, d), (c, d), (b, c)):
        await link(x, y)
    sub = d.subscribe(TOPIC)
    for node in (a, b, c):
        node.subscribe(TOPIC)  # collected at once: a, b, c relay only while subscribed
    keep = [node.subscribe(TOPIC) for node in (a, b, c)]
    await a.publish(TOPIC, b"once")
    assert await drain(sub) == [("a", b"once")]
    assert [len(await drain(s)) for s in keep] == [1, 1, 1]


async def test_two_subscriptions_on_one_node_both_get_the_message():
    _, (a, b) = await line("a", "b")
    one, two = b.subscribe(TOPIC), b.subscribe(TOPIC)
    await a.publish(TOPIC, b"x")
    assert await drain(one) == await drain(two) == [("a", b"x")]
    await one.aclose()
    await a.publish(TOPIC, b"y")
    assert [m async for m in one] == []
    assert await drain(two) == [("a", b"y")]


async def test_partition_blocks_pubsub_and_cat_both_ways_and_heal_restores_them():
    net, (a, b) = await line("a", "b")
    sub_a, sub_b = a.subscribe(TOPIC), b.subscribe(TOPIC)
    cid_a, cid_b = await a.add(b"on a"), await b.add(b"on b")
    net.partition(["a"], ["b"])
    assert await a.peers() == [] and await b.peers() == []
    await a.publish(TOPIC, b"a1")
    await b.publish(TOPIC, b"b1")
    assert await drain(sub_a) == [("a", b"a1")]  # only its own
    assert await drain(sub_b) == [("b", b"b1")]
    with pytest.raises(IpfsTimeout, match="within 0.2 s"):
        await b.cat(cid_a, timeout=0.2)
    with pytest.raises(IpfsTimeout):
        await a.cat(cid_b, timeout=0.2)

    net.heal()
    assert await a.peers() == ["b"]
    await a.publish(TOPIC, b"a2")
    await b.publish(TOPIC, b"b2")
    assert await drain(sub_a) == await drain(sub_b) == [("a", b"a2"), ("b", b"b2")]
    assert await b.cat(cid_a, timeout=1) == b"on a"
    assert await a.cat(cid_b, timeout=1) == b"on b"


async def test_nodes_not_listed_in_a_partition_form_one_group():
    net, (a, b, c) = await line("a", "b", "c")
    subs = [node.subscribe(TOPIC) for node in (a, b, c)]
    net.partition(["a"])  # b and c stay together
    await b.publish(TOPIC, b"x")
    assert [len(await drain(s)) for s in subs] == [0, 1, 1]
    with pytest.raises(TypeError):
        net.partition("ab")
    with pytest.raises(ValueError, match="two partition groups"):
        net.partition(["a"], ["a", "b"])


@virtual_clock
async def test_cat_waits_and_succeeds_once_the_partition_heals():
    net, (a, b) = await line("a", "b")
    cid = await a.add(b"later")
    net.partition(["a"], ["b"])
    fetch = asyncio.create_task(b.cat(cid, timeout=30))
    await asyncio.sleep(10)  # on the virtual clock: 10 s of waiting, taking no time
    assert not fetch.done()
    net.heal()
    assert await asyncio.wait_for(fetch, 5) == b"later"
    assert b.has(cid)  # kept (unpinned) after the fetch


async def test_cat_finds_content_added_after_it_started():
    _, (a, b) = await line("a", "b")
    data = b"not yet"
    fetch = asyncio.create_task(b.cat(await _cid_of(data), timeout=30))
    await asyncio.sleep(0)
    await a.add(data)
    assert await asyncio.wait_for(fetch, 5) == data


async def _cid_of(data: bytes) -> str:
    from learnae.content import content_id

    return content_id(data)


async def test_loss_one_drops_every_message():
    net, (a, b) = await line("a", "b")
    sub_a, sub_b = a.subscribe(TOPIC), b.subscribe(TOPIC)
    net.set_loss(1.0)
    for k in range(20):
        await a.publish(TOPIC, b"%d" % k)
    assert await drain(sub_b) == []
    assert len(await drain(sub_a)) == 20  # its own messages never cross a link
    assert net.counters["lost"] == 20


async def _lossy_run(seed: int) -> list[bytes]:
    net, (a, b, c) = await line("a", "b", "c", seed=seed)
    for node in (a, b):
        node.subscribe(TOPIC)
    keep = [node.subscribe(TOPIC) for node in (a, b, c)]
    net.set_loss(0.5, "a", "b")
    for k in range(200):
        await a.publish(TOPIC, b"%d" % k)
    got_b, got_c = await drain(keep[1]), await drain(keep[2])
    assert [m.data for m in got_c] == [m.data for m in got_b]  # the b-c link loses nothing
    return [m.data for m in got_b]


async def test_loss_half_is_reproducible_under_a_seed_and_about_half():
    first, second = await _lossy_run(seed=7), await _lossy_run(seed=7)
    assert first == second
    assert 70 <= len(first) <= 130
    assert await _lossy_run(seed=8) != first


async def test_loss_rules_by_link_and_by_node():
    net = MemoryNetwork()
    a, b, c = (net.node(x) for x in "abc")
    await link(a, b)
    await link(a, c)
    sub_b, sub_c = b.subscribe(TOPIC), c.subscribe(TOPIC)
    net.set_loss(1.0, "a", "b")
    await a.publish(TOPIC, b"1")
    assert (len(await drain(sub_b)), len(await drain(sub_c))) == (0, 1)
    net.set_loss(0.0, "a", "b")
    net.set_loss(1.0, "c")  # every link of c
    await a.publish(TOPIC, b"2")
    assert (len(await drain(sub_b)), len(await drain(sub_c))) == (1, 0)
    net.set_loss(1.0)
    net.set_loss(0.0, "a", "b")  # a link's own rule beats the global one
    await a.publish(TOPIC, b"3")
    assert (len(await drain(sub_b)), len(await drain(sub_c))) == (1, 0)
    with pytest.raises(ValueError):
        net.set_loss(1.5)


async def test_delay_adds_up_per_hop_on_the_loop_clock():
    net, (a, b, c) = await line("a", "b", "c")
    net.set_delay(100, "a", "b")
    net.set_delay(50, "b", "c")
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[str, float]] = []

    async def listen(node, sub):
        msg = await anext(sub)
        arrivals.append((node.id, loop.time()))
        return msg

    listeners = [asyncio.create_task(listen(node, node.subscribe(TOPIC))) for node in (c, b, a)]
    await asyncio.sleep(0)
    start = loop.time()
    await a.publish(TOPIC, b"slow")
    assert [m.sender for m in await asyncio.gather(*listeners)] == ["a", "a", "a"]
    assert [name for name, _ in arrivals] == ["a", "b", "c"]
    when = {name: t - start for name, t in arrivals}
    eps = 1e-6  # the loop may run a timer up to its clock resolution early
    assert when["b"] >= 0.100 - eps and when["c"] >= 0.150 - eps
    assert when["a"] < 0.100  # its own copy does not wait for any link


async def test_delay_slows_cat_by_the_round_trip():
    net, (a, b) = await line("a", "b")
    cid = await a.add(b"far away")
    net.set_delay(100)
    loop = asyncio.get_running_loop()
    with pytest.raises(IpfsTimeout, match="did not finish within 0.1 s"):
        await b.cat(cid, timeout=0.1)
    start = loop.time()
    assert await b.cat(cid, timeout=5) == b"far away"
    assert loop.time() - start >= 0.200 - 1e-6
    start = loop.time()
    assert await b.cat(cid, timeout=5) == b"far away"  # now held by b itself
    assert loop.time() - start < 0.200


async def test_down_node_is_cut_off_keeps_its_content_and_comes_back():
    net, (a, b) = await line("a", "b")
    sub_a, sub_b = a.subscribe(TOPIC), b.subscribe(TOPIC)
    cid = await b.add(b"on b")
    net.down("b")
    assert net.rules["down"] == ["b"]
    assert await a.peers() == [] and await b.peers() == []
    await a.publish(TOPIC, b"to b?")
    await b.publish(TOPIC, b"from b?")
    assert await drain(sub_a) == [("a", b"to b?")]
    assert await drain(sub_b) == [("b", b"from b?")]  # its own copy still arrives
    with pytest.raises(IpfsTimeout):
        await a.cat(cid, timeout=0.2)
    assert await b.cat(cid, timeout=0.2) == b"on b"

    net.up("b")
    assert await a.peers() == ["b"]
    assert await a.cat(cid, timeout=1) == b"on b"
    await a.publish(TOPIC, b"back")
    assert await drain(sub_b) == [("a", b"back")]
    with pytest.raises(KeyError):
        net.down("nobody")


async def test_message_in_flight_is_lost_when_its_receiver_goes_down():
    net, (b, a, c) = await line("b", "a", "c")
    sub_b, sub_c = b.subscribe(TOPIC), c.subscribe(TOPIC)
    net.set_delay(50)
    await a.publish(TOPIC, b"late")
    net.down("b")
    # c's copy lands when b's would have (the same 50 ms hop, delivered together)
    assert await asyncio.wait_for(anext(sub_c), 5) == ("a", b"late")
    assert await drain(sub_b) == []


async def test_closed_node_refuses_calls_and_leaves_the_network():
    net, (a, b) = await line("a", "b")
    sub = b.subscribe(TOPIC)
    cid = await b.add(b"gone with b")
    waiting = asyncio.create_task(b.cat(await _cid_of(b"never"), timeout=30))
    await asyncio.sleep(0)
    await b.close()
    assert [m async for m in sub] == []  # open subscriptions end
    with pytest.raises(NodeClosed):
        await waiting
    for call in (b.add(b"x"), b.cat(cid), b.publish(TOPIC, b"x"), b.pin(cid), b.unpin(cid), b.pins(),
                 b.connect("/memory/a/p2p/a"), b.peers(), b.addrs()):
        with pytest.raises(NodeClosed, match="memory node b is closed"):
            await call
    with pytest.raises(NodeClosed):
        b.subscribe(TOPIC)
    await b.close()
    assert await a.peers() == [] and "b" not in net.nodes
    with pytest.raises(IpfsTimeout):
        await a.cat(cid, timeout=0.1)
    assert net.node("b").id == "b"  # the name is free again


async def test_pin_unpin_and_collect_garbage():
    _, (a, b) = await line("a", "b")
    kept, dropped = await a.add(b"kept"), await a.add(b"dropped")
    await a.unpin(dropped)
    await a.unpin(dropped)
    assert await a.pins() == {kept}
    assert await a.repo_bytes() == len(b"kept") + len(b"dropped")
    assert await a.collect_garbage() == GcStats(1, len(b"dropped"), 1, len(b"kept"), 0.0)
    assert a.has(kept) and not a.has(dropped)
    assert await a.repo_bytes() == len(b"kept")
    # a fetched copy is unpinned, however new (no grace: objects are stored whole at once)
    await b.cat(kept, timeout=1)
    assert (await b.collect_garbage(grace=60)).blocks_removed == 1 and not b.has(kept)
    await b.pin(kept)  # pin() fetches and pins
    assert await b.collect_garbage() == GcStats(0, 0, 1, len(b"kept"), 0.0) and b.has(kept)
    assert await b.repo_bytes() == len(b"kept")
    with pytest.raises(ValueError, match="grace"):
        await b.collect_garbage(grace=-1)
    await b.close()
    with pytest.raises(NodeClosed):
        await b.collect_garbage()
    with pytest.raises(NodeClosed):
        await b.repo_bytes()


async def test_max_size_is_refused_before_any_transfer():
    net, (a, b) = await line("a", "b")
    cid = await a.add(bytes(5000))
    net.set_delay(1000)
    with pytest.raises(OversizeError, match="5000 bytes"):
        await b.cat(cid, timeout=0.5, max_size=4999)


async def test_rules_are_reported():
    net = MemoryNetwork(seed=3)
    for name in "abc":
        net.node(name)
    net.partition(["b", "a"], ["c"])
    net.set_loss(0.1)
    net.set_loss(0.5, "b", "a")
    net.set_delay(20, "c")
    net.down("c")
    assert net.rules == {
        "seed": 3,
        "partition": [["a", "b"], ["c"]],
        "loss": {"*": 0.1, "a-b": 0.5},
        "delay_ms": {"c-*": 20.0},
        "down": ["c"],
    }
    net.heal()
    net.set_loss(0)
    net.up("c")
    assert net.rules["partition"] == [] and net.rules["loss"] == {"a-b": 0.5} and net.rules["down"] == []


async def test_a_hundred_nodes_flood_every_message_to_everyone():
    net = MemoryNetwork(seed=5)
    nodes = [net.node() for _ in range(100)]
    rng = random.Random(5)
    for k, node in enumerate(nodes):  # a ring plus random chords
        await link(node, nodes[k - 1])
        await link(node, rng.choice(nodes[:k] or nodes[1:]))
    subs = [node.subscribe(TOPIC) for node in nodes]
    for k in range(300):
        await nodes[k % 100].publish(TOPIC, b"%d" % k)
    assert net.counters["delivered"] == 300 * 100
    assert all(len(sub.buffer) == 300 and sub.dropped == 0 for sub in subs)


async def test_a_reader_that_falls_behind_holds_a_bounded_number_of_bytes():
    """48 messages of 1 MiB for a subscriber that does not read: it keeps the newest that fit in
    SUBSCRIPTION_BUFFER_BYTES (32 MiB) and counts the others as dropped (the old bound was
    10,000 messages, i.e. up to 10 GiB)."""
    net, (a, b) = await line("a", "b")
    sub = b.subscribe(TOPIC)
    for k in range(48):
        await a.publish(TOPIC, k.to_bytes(4, "big") + bytes((1 << 20) - 4))
    assert sub.dropped > 0
    assert sub.buffer.size <= SUBSCRIPTION_BUFFER_BYTES
    await sub.aclose()
    got = [msg async for msg in sub]
    assert sum(len(msg.data) for msg in got) <= SUBSCRIPTION_BUFFER_BYTES
    assert [int.from_bytes(msg.data[:4], "big") for msg in got] == list(range(48 - len(got), 48))
    assert sub.dropped == 48 - len(got) >= 48 - SUBSCRIPTION_BUFFER_BYTES // (1 << 20)
    # Empty messages count their overhead: a flood of them is bounded too.
    sub = b.subscribe(TOPIC)
    limit = SUBSCRIPTION_BUFFER_BYTES // MESSAGE_OVERHEAD
    for _ in range(limit + 1000):
        b.receive(TOPIC, "x", b"")
    assert len(sub.buffer) < limit and sub.dropped > 1000
    await sub.aclose()
    await a.close()
    await b.close()


async def test_receive_delivers_a_message_from_any_origin():
    net, (a, b) = await line("a", "b")
    sub_a, sub_b = a.subscribe(TOPIC), b.subscribe(TOPIC)
    b.receive(TOPIC, "12D3KooWminted", b"relayed")
    assert await drain(sub_b) == [("12D3KooWminted", b"relayed")]
    assert await drain(sub_a) == []  # not relayed further
    await a.close()
    with pytest.raises(NodeClosed):
        a.receive(TOPIC, "x", b"")
    await b.close()


# -- walks: breadth first when every link is alike, remembered until the links change ----------
def _random_network(seed: int, n: int, degree: int) -> MemoryNetwork:
    rng = random.Random(seed)
    net = MemoryNetwork(seed=seed)
    nodes = [net.node(f"p{i}") for i in range(n)]

    async def link() -> None:
        for i, node in enumerate(nodes[1:], 1):
            for other in rng.sample(nodes[:i], min(degree, i)):
                await node.connect(f"/memory/{other.id}/p2p/{other.id}")

    asyncio.run(link())
    return net


@pytest.mark.parametrize("seed", range(12))
def test_the_breadth_first_walk_yields_what_dijkstras_walk_does(seed):
    """With one delay for every link and no loss, :meth:`MemoryNetwork._walk` goes breadth first;
    a per-link rule that changes nothing (a link between absent ids) makes it take the heap:
    the two give the same nodes, times and order, also across a partition and a down node."""
    rng = random.Random(seed)
    net = _random_network(seed, n=rng.randint(2, 40), degree=rng.randint(1, 3))
    names = sorted(net.nodes)
    if seed % 3:
        net.set_delay(rng.choice([0, 5, 40]))
    if seed % 4 == 1:
        net.partition(rng.sample(names, len(names) // 2))
    if seed % 5 == 2:
        net.down(rng.choice(names))
    topic = "t" if seed % 2 else None
    for name in names if topic is None else names[: len(names) // 2]:
        if topic is not None:
            net.nodes[name].subscribe(topic)
    fast = {src: [(n.id, t) for n, t in net._walk(net.nodes[src], topic)] for src in names}
    net.set_delay(net._delay.get(None, 0.0) * 1000, "absent-x", "absent-y")  # the heap's path now
    heap = {src: [(n.id, t) for n, t in net._walk(net.nodes[src], topic)] for src in names}
    assert fast == heap


def test_reach_is_remembered_until_the_links_change():
    net = _random_network(1, n=10, degree=2)
    first = net.reach("p9")
    assert net.reach("p9") is first and [p for p, _ in first][0] == "p9" and len(first) == 10
    net.partition(["p9"])
    assert net.reach("p9") == [("p9", 0.0)]
    net.heal()
    assert net.reach("p9") == first
    net.down("p0")
    assert "p0" not in dict(net.reach("p9"))
    net.up("p0")
    net.set_delay(10)
    assert sorted(t for _, t in net.reach("p9"))[-1] > 0
    assert net.spread("p9") == net.reach("p9")  # no loss: the same
    net.set_loss(1.0)
    assert net.spread("p9") == [("p9", 0.0)]  # every hop lost
    assert net.neighbours("p9") and net.is_up("p9") and not net.is_up("nobody")
