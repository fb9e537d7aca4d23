"""The Kubo RPC backend: its pure parts always; a live daemon only when LEARNAE_KUBO_API names one.

(The IpfsNode contract runs against the daemon in test_ipfs.py.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import threading

import aiohttp
import pytest
from aiohttp import web
from multiformats import multibase

from learnae.content import content_id, file_cid, to_v1
from learnae.errors import (
    ConfigError,
    InvalidCID,
    InvalidMultiaddr,
    IpfsError,
    NodeClosed,
    OversizeError,
)
from learnae.ipfs.base import GcStats, PubsubMessage
from learnae.ipfs.rpc import RpcNode, decode_message, encode_topic, gc_removed

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
    node = await RpcNode.open(KUBO_API, allow_shared=True)  # the API contract, private or not
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


# -- is the daemon private? (a fake Kubo RPC API on 127.0.0.1) --------------------------------
PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
# addresses of Kubo's shape only: a name and a global address that no learnae node dials
PUBLIC_BOOTSTRAP = [
    f"/dns4/bootstrap.example.net/tcp/4001/p2p/{PEER}",
    f"/ip4/5.6.7.8/tcp/4001/p2p/{PEER}",
]
DEFAULT_LISTEN = ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1",
                  "/ip4/127.0.0.1/udp/4001/quic-v1/webtransport/certhash/uEiDD/certhash/uEiAA",
                  "/ip4/127.0.0.1/udp/4001/webrtc-direct/certhash/uEiBB"]
PRIVATE_LISTEN = ["/ip4/127.0.0.1/tcp/4001", "/ip4/192.168.1.5/tcp/4001"]
PUBLIC_PEERS = ["/ip4/5.6.7.9/tcp/4001", "/ip6/2a00:1::3/tcp/4001",
                "/ip4/192.168.1.20/tcp/4001"]
PRIVATE_PEERS = ["/ip4/127.0.0.1/tcp/4002", "/ip4/10.1.2.3/tcp/4001", "/ip6/fd00::7/tcp/4001"]


def kubo_defaults() -> dict:
    """What `ipfs init` (Kubo 0.38) writes, for the settings the check reads."""
    return {"Identity": {"PeerID": PEER}, "Bootstrap": ["auto"],
            "Discovery": {"MDNS": {"Enabled": True}}, "Routing": {"Type": None}, "AutoConf": {},
            "Addresses": {"Swarm": ["/ip4/0.0.0.0/tcp/4001"]},
            "Swarm": {"DisableNatPortMap": False, "Transports": {"Network": {}}}}


def private_config() -> dict:
    """A daemon set up as the refusal tells the user to set it up."""
    network = {"QUIC": False, "WebTransport": False, "WebRTCDirect": False}
    return {"Identity": {"PeerID": PEER}, "Bootstrap": [],
            "Discovery": {"MDNS": {"Enabled": False}}, "Routing": {"Type": "none"},
            "AutoConf": {"Enabled": False},
            "Swarm": {"DisableNatPortMap": True, "Transports": {"Network": network}}}


class FakeKubo:
    """A Kubo RPC API on 127.0.0.1 answering what learnae's privacy check asks (``id``,
    ``version``, ``config/show``, ``swarm/addrs/listen``, ``swarm/peers``), served from a
    thread of its own so that synchronous callers (the CLI, a trainer node) can use it too."""

    def __init__(self, config: dict, listen: list[str], peers: list[str], version: str = "0.38.1",
                 denied: frozenset[str] = frozenset()):
        self.config, self.listen, self.peers, self.version = config, listen, peers, version
        self.denied = denied  # commands answered 403, as API.Authorizations would
        self.calls: list[str] = []
        self.pinned: set[str] = set()  # CID strings, one pin each (Kubo keys pins by CID)
        self.pin_ls_types: list[str] = []
        self.gc_lines: list[str] = []  # what repo/gc streams, one JSON object a line
        self.gc_queries: list[dict[str, str]] = []
        self.repo_stats: list[dict] = [{"RepoSize": 0, "StorageMax": 10 << 30, "NumObjects": 0}]
        self.stat_queries: list[dict[str, str]] = []  # repo/stat answers repo_stats in turn
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="fake-kubo", daemon=True)
        self.url = ""

    def answer(self, command: str):
        return {
            "id": {"ID": PEER, "Addresses": [f"{a}/p2p/{PEER}" for a in self.listen],
                   "AgentVersion": f"kubo/{self.version}/", "Protocols": []},
            "version": {"Version": self.version, "Commit": "", "Repo": "16"},
            "config/show": self.config,
            "swarm/addrs/listen": {"Strings": self.listen},
            "swarm/peers": {"Peers": [{"Addr": a, "Peer": f"12D3KooWPeer{i}", "Latency": "",
                                       "Muxer": "", "Direction": 0, "Streams": None}
                                      for i, a in enumerate(self.peers)] or None},
        }.get(command)

    async def _handle(self, request: web.Request) -> web.Response:
        command = request.match_info["command"]
        self.calls.append(command)
        if command in self.denied:
            return web.json_response(
                {"Message": f"403 - Forbidden: {command}", "Code": 0, "Type": "error"}, status=403)
        if command.startswith("pin/"):
            return self._pin(command, request.query)
        if command == "repo/gc":
            self.gc_queries.append(dict(request.query))
            return web.Response(text="".join(f"{line}\n" for line in self.gc_lines),
                                content_type="application/json", headers={"X-Chunked-Output": "1"})
        if command == "repo/stat":
            self.stat_queries.append(dict(request.query))
            stat = self.repo_stats.pop(0) if len(self.repo_stats) > 1 else self.repo_stats[0]
            if request.query.get("size-only") == "true":
                stat = {"RepoSize": stat.get("RepoSize"), "StorageMax": stat.get("StorageMax")}
            return web.json_response(stat)
        body = self.answer(command)
        if body is None:
            return web.Response(status=404, text="404 page not found")
        return web.json_response(body)

    def _pin(self, command: str, query) -> web.Response:
        """``pin/ls`` and ``pin/rm`` as Kubo answers them, over :attr:`pinned`."""
        if command == "pin/ls":
            self.pin_ls_types.append(query.get("type", "all"))
            return web.json_response({"Keys": {cid: {"Type": "recursive"} for cid in self.pinned}})
        if command == "pin/rm" and query.get("arg") in self.pinned:
            self.pinned.remove(query["arg"])
            return web.json_response({"Pins": [query["arg"]]})
        return web.json_response({"Message": "not pinned or pinned indirectly", "Code": 0,
                                  "Type": "error"}, status=500)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/api/v0/{command:.+}", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(runner.cleanup())
            self._loop.close()

    def __enter__(self) -> FakeKubo:
        self._thread.start()
        assert self._ready.wait(10), "the fake Kubo did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def public_kubo(**kw) -> FakeKubo:
    return FakeKubo(kubo_defaults(), DEFAULT_LISTEN, PUBLIC_PEERS, **kw)


def private_kubo(change: dict | None = None, listen=PRIVATE_LISTEN, peers=PRIVATE_PEERS,
                 **kw) -> FakeKubo:
    config = private_config()
    for path, value in (change or {}).items():
        *parents, last = path.split(".")
        target = config
        for key in parents:
            target = target.setdefault(key, {})
        if value is _DELETE:
            target.pop(last, None)
        else:
            target[last] = value
    return FakeKubo(config, listen, peers, **kw)


_DELETE = object()


async def test_a_daemon_with_kubos_defaults_is_refused_with_each_fix():
    with public_kubo() as kubo, pytest.raises(ConfigError) as refused:
        await RpcNode.open(kubo.url)
    reason = refused.value.reason
    for expected in (
        kubo.url, "not set up for a private swarm",
        "Bootstrap", "'auto'", "ipfs bootstrap rm --all",
        "Discovery.MDNS.Enabled", "ipfs config --json Discovery.MDNS.Enabled false",
        "Routing.Type", "ipfs config Routing.Type none",
        "AutoConf.Enabled", "ipfs config profile apply autoconf-off",
        "Swarm.DisableNatPortMap", "ipfs config --json Swarm.DisableNatPortMap true",
        "quic-v1", "webtransport", "webrtc-direct",
        "ipfs config --json Swarm.Transports.Network.QUIC false",
        "2 peers at public addresses", "/ip4/5.6.7.9/tcp/4001",
        "swarm.key", "LIBP2P_FORCE_PNET=1", "--allow-shared-daemon",
    ):
        assert expected in reason, expected
    assert "192.168.1.20" not in reason  # a LAN peer is not public
    assert reason.count("\n  - ") == 7  # one line per failing check


async def test_a_private_daemon_is_used_and_the_unverifiable_key_is_said(caplog):
    with private_kubo() as kubo:
        caplog.set_level(logging.WARNING, logger="learnae.ipfs.rpc")
        node = await RpcNode.open(kubo.url)
        try:
            assert node.id == PEER
            assert await node.exposures() == []
            assert {"config/show", "swarm/addrs/listen", "swarm/peers"} <= set(kubo.calls)
        finally:
            await node.close()
    assert "does not tell whether the daemon has the swarm's key" in caplog.text


LISTEN, PEERS = PRIVATE_LISTEN, PRIVATE_PEERS
QUIC = "/ip4/127.0.0.1/udp/4001/quic-v1"
RELAYED = "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWRelay/p2p-circuit"


@pytest.mark.parametrize(("change", "listen", "peers", "setting"), [
    ({"Bootstrap": PUBLIC_BOOTSTRAP}, LISTEN, PEERS, "Bootstrap"),
    ({"Discovery.MDNS": _DELETE}, LISTEN, PEERS, "Discovery.MDNS.Enabled"),  # default true
    ({"Routing.Type": "dht"}, LISTEN, PEERS, "Routing.Type"),
    ({"AutoConf": _DELETE}, LISTEN, PEERS, "AutoConf.Enabled"),  # default true
    ({"Swarm.DisableNatPortMap": _DELETE}, LISTEN, PEERS, "Swarm.DisableNatPortMap"),
    ({}, [*LISTEN, QUIC], PEERS, "Swarm.Transports.Network"),
    ({}, LISTEN, [*PEERS, "/ip4/8.8.4.4/tcp/4001"], "connected peers"),
    ({}, LISTEN, ["/dns4/node.example.org/tcp/4001"], "connected peers"),
    ({}, LISTEN, [RELAYED], "connected peers"),
], ids=["bootstrap", "mdns", "routing", "autoconf", "nat-port-map", "quic", "public-peer",
        "dns-peer", "relayed-peer"])
async def test_each_setting_alone_is_refused(change, listen, peers, setting):
    with private_kubo(change, listen, peers) as kubo, pytest.raises(ConfigError) as refused:
        await RpcNode.open(kubo.url)
    lines = [line for line in refused.value.reason.splitlines() if line.startswith("  - ")]
    assert len(lines) == 1 and lines[0].startswith(f"  - {setting}: "), lines


async def test_what_a_private_swarm_may_have_passes():
    lan_bootstrap = {"Bootstrap": [f"/ip4/10.0.0.2/tcp/4001/p2p/{PEER}"]}
    old_kubo = {"AutoConf": _DELETE}  # Kubo before 0.37 has no AutoConf
    for change, version in ((lan_bootstrap, "0.38.1"), (old_kubo, "0.22.0")):
        with private_kubo(change, version=version) as kubo:
            node = await RpcNode.open(kubo.url)
            await node.close()


async def test_allow_shared_uses_the_daemon_and_logs_what_is_shared(caplog):
    caplog.set_level(logging.WARNING, logger="learnae.ipfs.rpc")
    with public_kubo() as kubo:
        node = await RpcNode.open(kubo.url, allow_shared=True)
        await node.close()
    assert "shared" in caplog.text and "can be fetched by any IPFS peer" in caplog.text
    assert "Routing.Type" in caplog.text and "Bootstrap" in caplog.text


async def test_a_daemon_that_hides_its_config_is_refused_unless_allowed():
    with private_kubo(denied=frozenset({"config/show"})) as kubo:
        refused = r"cannot read the config .*config/show.*403.*--allow-shared-daemon"
        with pytest.raises(ConfigError, match=refused):
            await RpcNode.open(kubo.url)
        node = await RpcNode.open(kubo.url, allow_shared=True)
        await node.close()


async def test_pins_lists_recursive_pins_and_unpin_removes_the_cidv0_pin():
    v0, other = file_cid(b"pin me"), to_v1(file_cid(b"keep me", cid_version=1))
    with private_kubo() as kubo:
        node = await RpcNode.open(kubo.url)
        try:
            kubo.pinned = {v0, other}  # `ipfs add` pinned the CIDv0
            assert await node.pins() == {to_v1(v0), other}
            assert kubo.pin_ls_types == ["recursive"]
            await node.unpin(to_v1(v0))
            assert kubo.pinned == {other}
            await node.unpin(v0)  # not pinned any more: not an error
            kubo.pinned = {"not-a-cid"}
            with pytest.raises(IpfsError, match="not a list of CIDs"):
                await node.pins()
        finally:
            await node.close()


# Lines of `/api/v0/repo/gc?stream-errors=true` as Kubo 0.22 writes them.
GC_KEYS = [file_cid(b"one"), to_v1(file_cid(b"two", cid_version=1)), file_cid(b"three")]
GC_LINES = [json.dumps({"Key": {"/": cid}}) for cid in GC_KEYS]
GC_ERROR = json.dumps({"Key": None, "Error": "could not remove QmFoo: permission denied"})


def test_gc_removed_reads_the_keys_of_kubos_answer():
    assert gc_removed(GC_LINES) == [to_v1(cid) for cid in GC_KEYS]
    assert gc_removed([line.encode() for line in GC_LINES] + [b"", b"  "]) == gc_removed(GC_LINES)
    assert gc_removed([]) == []
    with pytest.raises(IpfsError, match=r"failed 1 times \(it removed 2 blocks\): could not remove"):
        gc_removed([GC_LINES[0], GC_ERROR, GC_LINES[1]])
    for junk in ("not json", "[1]", '{"Key": "Qm"}', '{"Key": {"/": "not-a-cid"}}', "{}"):
        with pytest.raises(IpfsError, match="not a line of Kubo's repo/gc answer"):
            gc_removed([GC_LINES[0], junk])


async def test_collect_garbage_runs_the_daemons_and_measures_with_repo_stat():
    with private_kubo() as kubo:
        node = await RpcNode.open(kubo.url)
        try:
            kubo.gc_lines = GC_LINES
            kubo.repo_stats = [{"RepoSize": 9000, "StorageMax": 1 << 30, "NumObjects": 12},
                               {"RepoSize": 4000, "StorageMax": 1 << 30, "NumObjects": 9}]
            stats = await node.collect_garbage(grace=30)  # grace is not Kubo's: accepted, unused
            assert stats == GcStats(3, 5000, 9, 4000, stats.seconds) and stats.seconds >= 0
            assert kubo.gc_queries == [{"stream-errors": "true"}]
            assert [q["size-only"] for q in kubo.stat_queries] == ["true", "false"]
            assert await node.repo_bytes() == 4000
            with pytest.raises(ValueError, match="grace"):
                await node.collect_garbage(grace=-1)
            kubo.gc_lines = [GC_LINES[0], GC_ERROR]
            with pytest.raises(IpfsError, match="permission denied"):
                await node.collect_garbage()
            kubo.repo_stats = [{"RepoSize": "big"}]
            with pytest.raises(IpfsError, match="repo/stat without a RepoSize"):
                await node.repo_bytes()
        finally:
            await node.close()
    with pytest.raises(NodeClosed):
        await node.collect_garbage()
    with pytest.raises(NodeClosed):
        await node.repo_bytes()


@pytest.fixture
def invite(tmp_path):
    from learnae.manifest import Manifest
    from learnae.models import model_config
    from learnae.state import init_swarm

    manifest = Manifest(checkpoint_interval=0, name="rpc", model=model_config("digits-mlp"), pow_bits=4)
    made = init_swarm(tmp_path / "founder", manifest)
    made.invite.save(tmp_path / "invite.json")
    return made.invite, tmp_path / "invite.json"


def test_a_trainer_node_refuses_a_shared_daemon_before_training(invite, tmp_path):
    from learnae.node import NodeConfig, TrainerNode
    from learnae.training.data import DataSpec

    with public_kubo() as kubo:
        # no data: were the daemon used, the node would stop when it loads it (after TensorFlow)
        missing = DataSpec.parse(str(tmp_path / "missing.csv"))
        node = TrainerNode(NodeConfig(invite=invite[0], state=tmp_path / "s", data=missing,
                                      ipfs=f"rpc:{kubo.url}", api=None))
        with pytest.raises(ConfigError, match="not set up for a private swarm"):
            node.run()
    assert node.step == 0


def test_the_cli_refuses_a_shared_daemon_and_passes_the_opt_out(invite, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from learnae.cli import main

    args = ["node", "run", "--invite", str(invite[1]), "--state", str(tmp_path / "s"),
            "--data", str(tmp_path / "missing.csv"), "--api", "off"]  # no data: see above
    assert "--allow-shared-daemon" in CliRunner().invoke(main, ["node", "run", "--help"]).output
    with public_kubo() as kubo:
        result = CliRunner().invoke(main, [*args, "--ipfs", f"rpc:{kubo.url}"])
        assert result.exit_code != 0
        assert "not set up for a private swarm" in result.output
        assert "ipfs bootstrap rm --all" in result.output
    seen = []

    async def opened(url, **kwargs):  # stands in for the daemon once the option reached it
        seen.append(kwargs.get("allow_shared"))
        raise ConfigError("stop here")

    monkeypatch.setattr(RpcNode, "open", opened)
    result = CliRunner().invoke(main, [*args, "--state", str(tmp_path / "t"), "--ipfs",
                                       "rpc:http://127.0.0.1:9", "--allow-shared-daemon"])
    assert "stop here" in result.output and seen == [True]
