"""What only the embedded Kubo backend must show: private swarm, big transfers, clean close."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading

import pytest
from conftest import eventually

from learnae.content import content_id
from learnae.errors import ConfigError, IpfsError, IpfsTimeout, NodeClosed
from learnae.ipfs import privnet
from learnae.ipfs.base import SUBSCRIPTION_BUFFER_BYTES
from learnae.ipfs.embedded import EmbeddedNode

pytestmark = pytest.mark.slow


def _port(addr: str) -> int:
    return int(addr.split("/tcp/")[1].split("/")[0])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_repo_config_is_private(tmp_path, swarm_key):
    node = await EmbeddedNode.start(tmp_path / "n", swarm_key)
    try:
        cfg = json.loads((tmp_path / "n" / "config").read_text())
        assert cfg["Bootstrap"] == []
        assert cfg["Routing"]["Type"] == "none"
        assert cfg["Discovery"]["MDNS"]["Enabled"] is False
        assert cfg["Experimental"]["StrategicProviding"] is True  # no provider system at all
        assert cfg["Addresses"]["Swarm"] == ["/ip4/127.0.0.1/tcp/0"]
        net = cfg["Swarm"]["Transports"]["Network"]
        assert net["TCP"] and not any(net[k] for k in ("QUIC", "WebTransport", "Websocket"))
        # NAT traversal among members: relays, AutoNAT and hole punching, no UPnP
        swarm = cfg["Swarm"]
        assert net["Relay"] and swarm["RelayService"]["Enabled"] and swarm["RelayClient"]["Enabled"]
        assert swarm["RelayClient"]["StaticRelays"] == [] and swarm["EnableHolePunching"] is True
        assert swarm["DisableNatPortMap"] is True and cfg["AutoNAT"]["ServiceMode"] == "enabled"
        assert "Libp2pForceReachability" not in cfg["Internal"]
        assert (tmp_path / "n" / "swarm.key").read_text() == swarm_key
        assert oct((tmp_path / "n" / "swarm.key").stat().st_mode & 0o777) == "0o600"
        assert all(a.startswith("/ip4/127.0.0.1/tcp/") for a in await node.addrs())
        assert os.environ["LIBP2P_FORCE_PNET"] == "1"
    finally:
        await node.close()


async def test_a_node_with_another_swarm_key_cannot_connect(tmp_path, swarm_key):
    a = await EmbeddedNode.start(tmp_path / "a", swarm_key)
    stranger = await EmbeddedNode.start(tmp_path / "s", privnet.new_swarm_key())
    try:
        with pytest.raises(IpfsError, match="same swarm key"):
            await stranger.connect((await a.addrs())[0], timeout=20)
        assert await a.peers() == []
    finally:
        await a.close()
        await stranger.close()


def test_a_bad_swarm_key_is_refused():
    with pytest.raises(ConfigError, match="64 hex digits"):
        privnet.check_swarm_key("/key/swarm/psk/1.0.0/\n/base16/\nnothex\n")


async def test_relays_and_a_known_reachability_reach_the_config(tmp_path, swarm_key):
    relay = f"/ip4/127.0.0.1/tcp/4001/p2p/{'12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA'}"
    node = await EmbeddedNode.start(tmp_path / "n", swarm_key, relays=[relay, relay],
                                    reachability="private")
    try:
        cfg = json.loads((tmp_path / "n" / "config").read_text())
        assert cfg["Swarm"]["RelayClient"]["StaticRelays"] == [relay]
        assert cfg["Internal"]["Libp2pForceReachability"] == "private"
    finally:
        await node.close()
    with pytest.raises(ConfigError, match="reachability 'outside'"):
        privnet.private_config({}, reachability="outside")


def test_the_config_keeps_the_transfer_settings_and_both_security_transports():
    """bench/content.py measured these (docs/benchmarks.md, "Content layer"); see privnet.py."""
    cfg = privnet.private_config({"Internal": {"Bitswap": {"MaxOutstandingBytesPerPeer": 1 << 20}},
                                  "Swarm": {"Transports": {"Security": {"Noise": False}}}})
    # bitswap: 32 MiB in flight per peer (Kubo 0.22: 1 MiB) and more workers, whatever was there
    assert cfg["Internal"]["Bitswap"] == {"MaxOutstandingBytesPerPeer": 32 << 20, "TaskWorkerCount": 16,
                                          "EngineTaskWorkerCount": 16,
                                          "EngineBlockstoreWorkerCount": 128}
    # Kubo's own choice of security transports and multiplexers, none disabled: any member connects
    assert cfg["Swarm"]["Transports"]["Security"] == {}
    assert cfg["Swarm"]["Transports"]["Multiplexers"] == {}
    # blocks stay durable: the datastore (flatfs with sync on, as Kubo writes it) is left alone
    datastore = {"Spec": {"type": "mount", "mounts": [
        {"mountpoint": "/blocks", "prefix": "flatfs.datastore", "type": "measure",
         "child": {"type": "flatfs", "path": "blocks", "sync": True,
                   "shardFunc": "/repo/flatfs/shard/v1/next-to-last/2"}}]}}
    assert privnet.private_config({"Datastore": datastore})["Datastore"] == datastore


async def test_connections_are_direct_on_one_host(embedded_pair):
    a, b = embedded_pair
    (conn,) = await a.connections()
    assert conn.peer == b.id and not conn.relayed and conn.addr.startswith("/ip4/127.0.0.1/tcp/")


async def test_b_fetches_a_50_mb_checkpoint_with_identical_bytes(embedded_pair):
    a, b = embedded_pair
    data = os.urandom(50 * 2**20)
    cid = await a.add(data)
    assert await b.cat(cid, timeout=120) == data


async def test_close_leaves_no_thread_port_or_lock_and_the_repo_restarts(tmp_path, swarm_key):
    before = set(threading.enumerate())
    a = await EmbeddedNode.start(tmp_path / "a", swarm_key)
    b = await EmbeddedNode.start(tmp_path / "b", swarm_key)
    await b.connect((await a.addrs())[0])
    port = _port((await a.addrs())[0])
    first_id = a.id
    cid = await a.add(b"kept across restarts")
    sub = a.subscribe("learnae/close-test")
    # leave a fetch blocked on a CID nobody has: close() must end it too
    with pytest.raises(IpfsTimeout):
        await a.cat(content_id(b"nobody has this " + os.urandom(8)), timeout=0.5)
    assert _listening(port)
    await a.close()
    await b.close()
    assert set(threading.enumerate()) <= before, "threads left behind"
    assert not _listening(port)
    assert not (tmp_path / "a" / "repo.lock").exists()
    with pytest.raises(StopAsyncIteration):
        await anext(sub)
    with pytest.raises(NodeClosed):
        await a.publish("t", b"x")

    again = await EmbeddedNode.start(tmp_path / "a", swarm_key)
    try:
        assert again.id == first_id
        assert await again.cat(cid, timeout=10) == b"kept across restarts"
    finally:
        await again.close()


async def test_many_messages_each_arrive_exactly_once(embedded_pair):
    """gossipsub does not promise order; it must not lose or repeat messages between two live peers."""
    a, b = embedded_pair
    topic = "learnae/many"
    sub = b.subscribe(topic)
    got = []
    try:
        async def arrived_first():
            if not got:
                await a.publish(topic, b"warmup")
                try:
                    got.append(await asyncio.wait_for(anext(sub), 0.3))
                except TimeoutError:
                    pass
            return bool(got)

        await eventually(arrived_first, timeout=30, interval=0)
        for i in range(200):
            await a.publish(topic, i.to_bytes(2, "big"))
        await a.publish(topic, b"end")  # sent last on the one connection: repeats come before it
        msgs, ended = [], False
        while len(msgs) < 200 or not ended:
            sender, data = await asyncio.wait_for(anext(sub), 10)
            if data == b"end":
                ended = True
            elif data != b"warmup":
                msgs.append(int.from_bytes(data, "big"))
        assert sorted(msgs) == list(range(200)), msgs  # none lost, none repeated
    finally:
        await sub.aclose()


async def test_a_reader_that_falls_behind_holds_a_bounded_number_of_bytes(embedded_pair):
    """B subscribes and does not read while A publishes 44 messages of 1,000,000 bytes (near
    gossipsub's 1 MiB limit): B keeps the newest that fit in SUBSCRIPTION_BUFFER_BYTES and
    counts the rest as dropped, instead of holding all 44 MB."""
    a, b = embedded_pair
    topic = "learnae/slow-reader"
    # Warm up on the subscription under test: closing another one first would leave the topic,
    # and A could publish the first large message before it hears that B joined again.
    sub = b.subscribe(topic)
    sent = []
    try:
        async def ready():  # B's subscription is known to A
            sent.append(b"warmup %d" % len(sent))
            await a.publish(topic, sent[-1])
            return len(sub.buffer) > 0

        await eventually(ready, timeout=30, interval=0.2)
        async for msg in sub:  # until the last warm-up: no more are on their way
            if msg.data == sent[-1]:
                break
        assert len(sub.buffer) == 0 and sub.dropped == 0
        count, size = 44, 1_000_000
        for k in range(count):
            await a.publish(topic, k.to_bytes(4, "big") + bytes(size - 4))
            # One at a time, so that gossipsub's own queues (32 messages) never overflow.
            await eventually(lambda k=k: len(sub.buffer) + sub.dropped == k + 1, timeout=30,
                             interval=0.01)
        assert sub.dropped >= count - SUBSCRIPTION_BUFFER_BYTES // size
        assert sub.buffer.size <= SUBSCRIPTION_BUFFER_BYTES
        await sub.aclose()
        got = [int.from_bytes(msg.data[:4], "big") async for msg in sub]
        assert got == list(range(count - len(got), count))  # the newest are kept
        assert len(got) * size <= SUBSCRIPTION_BUFFER_BYTES and len(got) + sub.dropped == count
    finally:
        await sub.aclose()


async def test_a_fetch_whose_caller_was_cancelled_leaves_no_unretrieved_exception(tmp_path, swarm_key):
    """A node stopping cancels its merge mid-fetch, then closes: the fetch then fails with
    NodeClosed, and nobody may be left to log "Future exception was never retrieved"."""
    import gc

    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    saved = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    node = await EmbeddedNode.start(tmp_path / "a", swarm_key)
    try:
        task = asyncio.create_task(node.cat(content_id(b"nobody has this " + os.urandom(8)), timeout=30))
        await eventually(lambda: bool(node._inflight), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await node.close()
    await eventually(lambda: not node._inflight, timeout=10)  # the fetch ended (NodeClosed)
    del task
    for _ in range(3):
        await asyncio.sleep(0)
        gc.collect()
    loop.set_exception_handler(saved)
    assert [c.get("message") for c in reported] == []


async def test_a_call_given_up_on_leaves_no_thread_exception(tmp_path):
    """A Kubo call that outlives its timeout: the caller gets IpfsTimeout, and the worker
    thread that finishes later must not die on the cancelled future (InvalidStateError)."""
    from learnae.ipfs.embedded import EmbeddedNode

    node = EmbeddedNode(tmp_path / "repo")  # not started: only its worker threads are used
    release = threading.Event()
    errors: list[threading.ExceptHookArgs] = []
    saved, threading.excepthook = threading.excepthook, errors.append
    try:
        for outcome in ("value", "error"):
            def blocked(outcome=outcome):
                release.wait(10)
                if outcome == "error":
                    raise OSError("late failure")
                return outcome

            release.clear()
            with pytest.raises(IpfsTimeout):
                await node._call(blocked, timeout=0.05)
            (thread,) = node._threads
            release.set()
            await asyncio.to_thread(thread.join, 10)
            assert not thread.is_alive()
        assert errors == []
    finally:
        threading.excepthook = saved
