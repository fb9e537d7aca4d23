"""keep_connected redials peers that dropped away (memory network); peer exchange introduces
members that know only a common peer (the address book's checks; real embedded nodes)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from conftest import eventually

from learnae.errors import InvalidMultiaddr, IpfsError
from learnae.ipfs.base import PubsubMessage
from learnae.ipfs.memory import MemoryNetwork
from learnae.ipfs.peering import AddressBook, _dial_members, exchange_addresses, keep_connected

ME = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
B = "12D3KooWRFRxoCLR8sHL3S7ijdUtQjQxk3FvWpA7VNS9VKRKR1mq"
R = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


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


def _announce(sender: str, addrs: object) -> PubsubMessage:
    return PubsubMessage(sender, json.dumps({"addrs": addrs}).encode())


def test_the_address_book_keeps_a_members_own_tcp_addresses_only():
    book = AddressBook(ME)
    direct, relayed = f"/ip4/11.77.0.3/tcp/4001/p2p/{B}", f"/ip4/11.77.0.2/tcp/4001/p2p/{R}/p2p-circuit/p2p/{B}"
    assert book.hear(_announce(B, [
        direct, relayed,
        f"/ip4/11.77.0.9/tcp/4001/p2p/{R}",  # someone else's: a member speaks for itself only
        f"/ip4/11.77.0.3/udp/4001/quic-v1/p2p/{B}",  # not TCP
        f"/dns4/example.org/tcp/4001/p2p/{B}",  # a name: not dialled
        "/ip4/999.0.0.1/tcp/1", 7, None,
    ]))
    assert book.members == {B: [direct, relayed]}
    # own announcements, junk, and addresses for others only: ignored, the book unchanged
    for msg in (_announce(ME, [f"/ip4/1.1.1.1/tcp/1/p2p/{ME}"]), PubsubMessage(B, b"\xff"),
                PubsubMessage(B, b"[]"), _announce(B, "no list"), _announce(B, [f"/ip4/1.1.1.1/tcp/1/p2p/{R}"]),
                PubsubMessage(B, json.dumps({"addrs": [direct] + ["x" * 5000]}).encode())):
        assert not book.hear(msg)
    assert book.members == {B: [direct, relayed]}


def test_the_address_book_forgets_the_least_recently_heard_first():
    book = AddressBook(ME, max_members=2)
    ids = [B, R, "12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf"]
    for peer in (*ids, B):
        assert book.hear(_announce(peer, [f"/ip4/11.77.0.3/tcp/4001/p2p/{peer}"]))
    assert list(book.members) == [ids[2], B]


@pytest.mark.slow
async def test_members_that_know_only_a_common_peer_learn_each_others_addresses(tmp_path, swarm_key):
    from learnae.ipfs.embedded import EmbeddedNode

    nodes, tasks = [], []
    try:
        for name in "abc":
            nodes.append(await EmbeddedNode.start(tmp_path / name, swarm_key))
        a, b, c = nodes
        for other in (b, c):
            await other.connect((await a.addrs())[0])
        assert c.id not in await b.peers()
        c_addrs = await c.addrs()
        books = [AddressBook(n.id) for n in nodes]
        tasks = [asyncio.create_task(exchange_addresses(n, "learnae/test/peers", interval=0.5, book=bk))
                 for n, bk in zip(nodes, books, strict=True)]
        await eventually(lambda: books[1].members.get(c.id) == c_addrs, timeout=30)
        await eventually(lambda: books[2].members.get(b.id) is not None, timeout=30)
        await eventually(lambda: _connected(b, c), timeout=30)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for node in nodes:
            await node.close()


async def test_a_member_that_dials_no_relays_tries_direct_addresses_only():
    net = MemoryNetwork(seed=1)
    node, other = net.node("a"), net.node("b")
    dialled: list[str] = []
    connect = node.connect

    async def recording(addr: str, timeout: float = 30.0) -> None:
        dialled.append(addr)
        await connect(addr, timeout=timeout)

    node.connect = recording
    relayed = f"/ip4/11.77.0.2/tcp/4001/p2p/{R}/p2p-circuit/p2p/b"
    book = AddressBook("a")
    book.members["b"] = [relayed]  # only a relayed address: not dialled at all
    await _dial_members(node, book, want=4, dial_timeout=0.1, dial_relayed=False)
    assert dialled == [] and "b" not in await node.peers()
    book.members["b"] = [relayed, (await other.addrs())[0]]
    await _dial_members(node, book, want=4, dial_timeout=0.1, dial_relayed=False)
    assert dialled == ["/memory/b/p2p/b"] and "b" in await node.peers()


async def test_a_member_behind_nat_is_dialled_through_its_relay_only():
    """A member announcing a relayed address is dialled there, not at its direct addresses
    (the pending direct dial would hold up the hole punch's own dial)."""
    net = MemoryNetwork(seed=1)
    node = net.node("a")
    dialled: list[str] = []

    async def recording(addr: str, timeout: float = 30.0) -> None:
        dialled.append(addr)
        raise IpfsError("unreachable")

    node.connect = recording
    relayed = f"/ip4/11.77.0.2/tcp/4001/p2p/{R}/p2p-circuit/p2p/b"
    direct = "/ip4/192.168.1.2/tcp/4001/p2p/b"
    book = AddressBook("a")
    book.members["b"] = [direct, relayed]
    await _dial_members(node, book, want=4, dial_timeout=0.1, dial_relayed=True)
    assert dialled == [relayed]
    dialled.clear()
    book.members["b"] = [direct]  # no reservation: its direct address
    await _dial_members(node, book, want=4, dial_timeout=0.1, dial_relayed=True)
    assert dialled == [direct]
