"""The Kubo RPC backend: its pure parts always; a live daemon only when LEARNAE_KUBO_API names one.

(The IpfsNode contract runs against the daemon in test_ipfs.py.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket

import aiohttp
import pytest
from multiformats import multibase

from learnae.content import content_id, file_cid, to_v1
from learnae.errors import InvalidCID, InvalidMultiaddr, IpfsError, NodeClosed, OversizeError
from learnae.ipfs.base import PubsubMessage
from learnae.ipfs.rpc import RpcNode, decode_message, encode_topic

KUBO_API = os.environ.get("LEARNAE_KUBO_API")
needs_daemon = pytest.mark.skipif(
    not KUBO_API,
    reason="set LEARNAE_KUBO_API=http://127.0.0.1:5001 (a Kubo >= 0.11 daemon run with "
           "--enable-pubsub-experiment) to run the tests that need one",
)

# A line `ipfs pubsub sub --enc=json` printed (Kubo >= 0.11): topic "hellodawngrp".
KUBO_LINE = ('{"from":"12D3KooWFKQ8jcYyyDo245tFUnSZmMi2yZWmMaHdcUWWGqEYXqSZ","data":"ubmFtZSBwdWJzdWIgdGVzdCAyCg",'
             '"seqno":"uFxhdm2UVf2Y","topicIDs":["uaGVsbG9kYXduZ3Jw"]}')


def _urlsafe_no_padding(raw: bytes) -> str:
    return "u" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_topics_are_multibase_base64url_without_padding():
    assert encode_topic("learnae/x") == "ubGVhcm5hZS94" == _urlsafe_no_padding(b"learnae/x")
    assert encode_topic("hellodawngrp") == "uaGVsbG9kYXduZ3Jw"  # as in KUBO_LINE's topicIDs
    odd = "learnae/bafy?>~é"
    encoded = encode_topic(odd)
    assert encoded == _urlsafe_no_padding(odd.encode())
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded
    assert multibase.decode(encoded).decode() == odd


def test_decode_message_from_a_line_kubo_printed():
    expected = PubsubMessage("12D3KooWFKQ8jcYyyDo245tFUnSZmMi2yZWmMaHdcUWWGqEYXqSZ", b"name pubsub test 2\n")
    assert decode_message(KUBO_LINE) == expected
    assert decode_message(KUBO_LINE.encode()) == expected
    # Kubo leaves "data" out of an empty message (omitempty)
    assert decode_message('{"from":"QmSender","seqno":"uAQ"}') == ("QmSender", b"")
    binary = bytes(range(256))
    line = json.dumps({"from": "QmSender", "data": multibase.encode(binary, "base64url")})
    assert decode_message(line).data == binary


@pytest.mark.parametrize("line", ["not json", "[1]", '{"data":"uAA"}', '{"from":"x","data":"u!!"}',
                                  '{"from":7,"data":"uAA"}'])
def test_decode_message_rejects_what_kubo_does_not_print(line):
    with pytest.raises(IpfsError, match="not a Kubo pubsub message"):
        decode_message(line)


def _dead_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_open_names_the_url_when_no_daemon_answers():
    url = _dead_url()
    with pytest.raises(IpfsError, match=f"no Kubo RPC API answers at {url}"):
        await RpcNode.open(url)


async def test_open_leaves_a_callers_session_open():
    async with aiohttp.ClientSession() as session:
        with pytest.raises(IpfsError):
            await RpcNode.open(_dead_url(), session=session)
        assert not session.closed


async def test_arguments_are_checked_before_any_request_and_closed_means_closed():
    node = RpcNode(_dead_url(), aiohttp.ClientSession(), owns_session=True)
    with pytest.raises(InvalidCID):
        await node.cat("not-a-cid")
    with pytest.raises(InvalidCID):
        await node.unpin("Qm123")
    with pytest.raises(InvalidMultiaddr):
        await node.connect("/ip4/127.0.0.1/tcp/4001")
    with pytest.raises(IpfsError, match="no Kubo RPC API answers"):
        await node.peers()
    await node.close()
    await node.close()
    assert node._session.closed
    for call in (node.add(b"x"), node.cat(content_id(b"x")), node.publish("t", b"x"), node.peers(),
                 node.addrs(), node.connect("/ip4/127.0.0.1/tcp/1/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")):
        with pytest.raises(NodeClosed, match="is closed"):
            await call
    with pytest.raises(NodeClosed):
        node.subscribe("t")


async def test_a_subscription_that_cannot_open_raises_once_then_ends():
    node = RpcNode(_dead_url(), aiohttp.ClientSession(), owns_session=True)
    try:
        sub = node.subscribe("learnae/t")
        with pytest.raises(IpfsError, match="no Kubo RPC API answers"):
            await asyncio.wait_for(anext(sub), 10)
        assert sub.ready.done()
        assert [m async for m in sub] == []
    finally:
        await node.close()


# -- with a daemon -----------------------------------------------------------
@pytest.fixture
async def kubo():
    node = await RpcNode.open(KUBO_API)
    yield node
    await node.close()


@needs_daemon
async def test_daemon_identity_and_version(kubo):
    assert kubo.id.startswith(("12D3", "Qm"))
    assert (await kubo.version())[0].isdigit()
    assert all(addr.endswith("/p2p/" + kubo.id) for addr in await kubo.addrs())
    assert all(isinstance(peer, str) for peer in await kubo.peers())


@needs_daemon
async def test_daemon_add_and_cat(kubo):
    data = os.urandom(600_000)
    cid = await kubo.add(data)
    assert cid == content_id(data)
    assert await kubo.cat(cid, timeout=20) == data
    with pytest.raises(OversizeError, match="600000 bytes"):
        await kubo.cat(cid, timeout=20, max_size=599_999)
    v1 = await kubo.add(data, cid_version=1, pin=False)
    assert v1 == to_v1(file_cid(data, cid_version=1))
    await kubo.unpin(v1)  # was never pinned: not an error
    await kubo.pin(v1)
    await kubo.unpin(v1)


@needs_daemon
async def test_daemon_pubsub_delivers_binary_payloads_on_odd_topics(kubo):
    topic = f"learnae/rpc-test/{os.urandom(4).hex()}/?é"
    sub = kubo.subscribe(topic)
    try:
        payload = b"\x00\xff" + os.urandom(100)
        await kubo.publish(topic, payload)  # waits until the subscription is open
        assert await asyncio.wait_for(anext(sub), 10) == (kubo.id, payload)
    finally:
        await sub.aclose()
    assert [m async for m in sub] == []
