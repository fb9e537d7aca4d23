"""Data adoption in the trainer node, in process: the ``--adopt`` policy, the network side's
checks and counted refusals, the adopted chunks kept on disk (``STATE/adopted.sqlite``, never
fetched again after a restart), the training side's scaled pool bounded by
``adopt_max_rows`` (in rows and in the process's memory) and the ids the next checkpoint
names. A real node process restarted on its state directory: the last test. Sensors feeding
node processes: tests/test_sensor_node.py."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import eventually
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from procs.launch import Launcher, get_json, read_json

from learnae.content import content_id
from learnae.errors import ConfigError
from learnae.formats import Chunk, encode_chunk
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.sync import TangleSync
from learnae.ledger.tx import checkpoint_payload, data_payload, decode_tx, make_tx, revoke_payload
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.node import NodeConfig, TrainerNode, parse_adopt
from learnae.state import init_swarm, open_tangle
from learnae.training.data import DataSpec

ROOT = Path(__file__).resolve().parents[1]


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


SENSOR, OTHER = identity(7), identity(8)


def test_parse_adopt(tmp_path):
    assert parse_adopt("all") is None and parse_adopt("none") == frozenset()
    path = tmp_path / "authors.txt"
    path.write_text(f"# sensors\n{SENSOR.public_key.hex()}\n\n{OTHER.author_id}  # the other one\n")
    assert parse_adopt(str(path)) == {SENSOR.public_key, OTHER.public_key}
    path.write_text("nobody\n")
    with pytest.raises(ConfigError, match="authors.txt:1"):
        parse_adopt(str(path))
    with pytest.raises(ConfigError, match="no --adopt file at"):
        parse_adopt(str(tmp_path / "missing.txt"))


def test_the_pool_bound_must_be_a_positive_integer(tmp_path):
    swarm = init_swarm(tmp_path / "swarm", Manifest(checkpoint_interval=0, name="iris", model=model_config("iris-mlp"), pow_bits=2),
                       founder=identity(1))
    for bad in (0, -5, 1.5):
        with pytest.raises(ConfigError, match="--adopt-max-rows"):
            TrainerNode(NodeConfig(invite=swarm.invite, state=tmp_path / "node", adopt_max_rows=bad))


class Swarm:
    """A swarm's founder directory and a memory IPFS network: nodes made on it share the
    founder's tangle file and the network (a restart is a new node on the same state)."""

    def __init__(self, tmp_path: Path, model: str = "iris-mlp", data: str = "iris"):
        self.tmp = tmp_path
        manifest = Manifest(checkpoint_interval=0, name="adopt", model=model_config(model), pow_bits=2)
        self.swarm = init_swarm(tmp_path / "swarm", manifest, founder=identity(1))
        self.net = MemoryNetwork(seed=0)
        self.pi = self.net.node("pi")  # the sensor's IPFS node, holding the chunks
        self.data = data
        self.fetched: list[str] = []  # CIDs fetched by the nodes' ipfs.cat
        self.runs = 0

    async def node(self, adopt: str = "all", max_rows: int = 50_000) -> TrainerNode:
        """A node on ``STATE = tmp/node``, with an IPFS node of its own connected to the sensor's."""
        self.runs += 1
        node = TrainerNode(NodeConfig(invite=self.swarm.invite, state=self.tmp / "node",
                                      data=DataSpec.parse(self.data), adopt=adopt, fetch_timeout=0.2,
                                      adopt_max_rows=max_rows))
        node.tangle, _ = open_tangle(self.swarm.directory)
        node.ipfs = self.net.node(f"node-{self.runs}")
        await node.ipfs.connect((await self.pi.addrs())[0])
        cat = node.ipfs.cat

        async def counted(cid, **kw):
            self.fetched.append(cid)
            return await cat(cid, **kw)

        node.ipfs.cat = counted
        node.identity = identity(2)
        node.sync = TangleSync(node.tangle, node.ipfs)
        node.net = node._network_side()
        return node


async def _node(tmp_path, adopt="all") -> TrainerNode:
    return await Swarm(tmp_path).node(adopt)


async def _announce(node, who, data: bytes, rows: int, seq: int) -> str:
    """Announce ``data`` as a chunk by ``who`` in the node's tangle; the sensor's IPFS node holds it."""
    cid = await node.ipfs.net.nodes["pi"].add(data)
    payload = data_payload(cid=cid, size=len(data), rows=rows, schema=node.manifest.schema.to_dict(),
                           source={"kind": "t"}, seq=seq)
    return node.tangle.append(who, "data", payload).id


def _chunk(rows: int, seq: int, schema, start: int = 0, **kw) -> bytes:
    """``rows`` rows whose features count on from ``start`` (row i's first one is ``start + i``
    times the number of features), made by ``SENSOR`` (or ``kw["sensor"]``, an author id)."""
    features = int(np.prod(schema.features))
    x = np.arange(start * features, (start + rows) * features, dtype=np.float32).reshape(rows, *schema.features)
    y = np.arange(start, start + rows, dtype=np.int64) % 3
    return encode_chunk(Chunk(x=kw.get("x", x), y=y, schema=schema, sensor=kw.get("sensor", SENSOR.author_id),
                              seq=seq, time_range=(0, 1)))


async def _adopt_until(node, done) -> None:
    """Run the node's adopt loop until ``done()``, then stop it."""
    task = asyncio.create_task(node._adopt_loop())
    try:
        await eventually(lambda: done() or task.done(), timeout=30)
        if task.done():
            task.result()  # raises what ended the loop
    finally:
        node._stopping.set()
        await asyncio.wait_for(task, 10)
        node._stopping.clear()


def _stored(node) -> list:
    return list(node._adopted_store().after())


def _refused(node) -> dict[str, int]:
    return {k: v for k, v in node.rejections.items() if k.startswith("data:")}


async def test_the_network_side_checks_chunks_and_counts_refusals(tmp_path):
    from learnae.formats import Schema

    node = await _node(tmp_path)
    schema = node.manifest.schema
    try:
        good = await _announce(node, SENSOR, _chunk(5, 0, schema), 5, 0)
        await _announce(node, SENSOR, b"not a chunk at all", 5, 1)
        await _announce(node, SENSOR, _chunk(5, 2, schema), 6, 2)  # announces more rows than it holds
        wrong = Schema(features=(3,), dtype="float32", label_dtype="int64", classes=3)
        await _announce(node, SENSOR, _chunk(5, 3, wrong, x=np.zeros((5, 3), np.float32)), 5, 3)
        await _adopt_until(node, lambda: node.net.data_accepted + sum(_refused(node).values()) == 4)
        assert node.net.data_accepted == 1
        [chunk] = _stored(node)  # on disk, for the training side
        assert chunk.tx == good and chunk.x.shape == (5, 4) and chunk.y.tolist() == [0, 1, 2, 0, 1]
        assert chunk.author == SENSOR.public_key
        refused = _refused(node)
        assert sum(refused.values()) == 3, refused
        assert refused.get("data:schema") == 1, refused
    finally:
        node.tangle.close()


async def test_a_copy_of_another_sensors_chunk_is_refused_and_its_owner_keeps_it(tmp_path):
    from learnae.ledger.credits import credits

    node = await _node(tmp_path)
    schema = node.manifest.schema
    try:
        data = _chunk(5, 0, schema)  # SENSOR's bytes
        await _announce(node, OTHER, data, 5, 0)  # a copy, announced first, by a third author
        own = await _announce(node, SENSOR, data, 5, 0)
        await _announce(node, SENSOR, data, 5, 1)  # the owner's same CID once more: a duplicate
        # bytes that name SENSOR but that SENSOR never announced: OTHER's, refused likewise
        await _announce(node, OTHER, _chunk(5, 1, schema, start=5), 5, 1)
        await _adopt_until(node, lambda: node.net.data_accepted + sum(_refused(node).values()) == 4)
        assert [c.tx for c in _stored(node)] == [own]
        assert _refused(node) == {"data:not-owner": 2, "data:duplicate": 1}
        # named in a checkpoint, the chunk's rows are credited to its owner, not to the copier
        node.tangle.append(identity(2), "checkpoint", checkpoint_payload(
            cid=content_id(b"a checkpoint"), size=1, step=1, samples=1, base=[], data=[own], metrics={}))
        table = credits(node.tangle)
        assert table[SENSOR.public_key].rows_adopted == 5 and table[OTHER.public_key].rows_adopted == 0
    finally:
        node.tangle.close()


async def test_a_revoked_sensors_chunks_are_not_adopted(tmp_path):
    node = await _node(tmp_path)
    schema = node.manifest.schema
    try:
        await _announce(node, SENSOR, _chunk(5, 0, schema), 5, 0)  # announced before the revoke
        node.tangle.append(identity(1), "revoke", revoke_payload(SENSOR.author_id, "copied readings"))
        other = await _announce(node, OTHER, _chunk(5, 0, schema, sensor=OTHER.author_id), 5, 0)
        await _adopt_until(node, lambda: node.net.data_accepted + sum(_refused(node).values()) == 2)
        assert [c.tx for c in _stored(node)] == [other]
        assert _refused(node) == {"data:revoked": 1}
    finally:
        node.tangle.close()


async def test_the_policy_admits_listed_authors_only(tmp_path):
    path = tmp_path / "authors.txt"
    path.write_text(SENSOR.author_id + "\n")
    node = await _node(tmp_path, adopt=str(path))
    schema = node.manifest.schema
    try:
        mine = await _announce(node, SENSOR, _chunk(4, 0, schema), 4, 0)
        await _announce(node, OTHER, _chunk(4, 0, schema), 4, 0)
        await _adopt_until(node, lambda: node.net.data_accepted == 1 and node.rejections["data:not-admitted"] == 1)
        assert [c.tx for c in _stored(node)] == [mine]
    finally:
        node.tangle.close()


async def test_the_training_side_scales_rows_and_names_them_once(tmp_path):
    node = await _node(tmp_path)
    node.splits = node.config.data.load()
    scaler = node.splits.train.scaler
    assert scaler is not None  # iris is standardized: sensor rows must be too
    x0, y0 = node.splits.train.x, node.splits.train.y
    rows = np.array([[5.0, 3.0, 1.5, 0.2], [6.5, 3.0, 5.5, 2.0]], dtype=np.float32)
    store = node._adopted_store()
    store.add("tx-a", SENSOR.public_key, rows, np.array([0, 2]))
    store.add("tx-b", SENSOR.public_key, np.zeros((3, 2), np.float32), np.zeros(3, np.int64))  # does not fit
    assert node._adopt_waiting()
    x, y = node._take_adopted(x0, y0)
    assert not node._adopt_waiting()
    assert len(x) == len(x0) + 2 and x.dtype == x0.dtype
    np.testing.assert_array_equal(x[:len(x0)], x0)
    np.testing.assert_allclose(x[-2:], scaler.transform(rows), rtol=1e-6)
    assert y[-2:].tolist() == [0, 2]
    assert node.rejections["data:shape"] == 1
    assert node._unnamed == ["tx-a"] and node.adopted_chunks == 1 and node.adopted_rows == 2
    node._named.add("tx-c")
    store.add("tx-c", SENSOR.public_key, rows, np.array([1, 1]))  # named before a restart
    x, y = node._take_adopted(x0, y0)
    assert len(x) == len(x0) + 4
    assert node._unnamed == ["tx-a"]  # already named by a published checkpoint
    node.tangle.close()


async def test_the_pool_stays_within_its_bound_while_adopting_many_chunks(tmp_path):
    s = Swarm(tmp_path)
    node = await s.node(max_rows=50)
    node.splits = node.config.data.load()
    schema = node.manifest.schema
    try:
        for seq in range(30):
            await _announce(node, SENSOR, _chunk(10, seq, schema, start=10 * seq), 10, seq)
        own = len(node.splits.train)
        x, y = node.splits.train.x, node.splits.train.y
        sizes = []

        def take() -> bool:  # the training loop: the pool between two fit() calls
            nonlocal x, y
            x, y = node._take_adopted(x, y)
            sizes.append(len(x) - own)
            return node.adopted_chunks == 30

        await _adopt_until(node, take)
        assert max(sizes) <= 50 and sizes[-1] == 50, sizes
        assert len(x) == len(y) == own + 50
        assert node.adopted_rows == 300 and node.net.data_accepted == 30
        assert len(np.unique(x[own:], axis=0)) == 50  # 50 distinct rows of the 300
        status = node._adopt_status()
        assert status["pool_rows"] == 50 and status["max_rows"] == 50
        assert status["disk_chunks"] == 30 and status["disk_rows"] == 300 and status["queued"] == 0
        assert status["chunks"] == 30 and status["rows"] == 300
    finally:
        node.tangle.close()


async def test_a_restarted_node_takes_its_chunks_from_disk_not_from_ipfs(tmp_path):
    s = Swarm(tmp_path)
    first = await s.node(max_rows=40)
    first.splits = first.config.data.load()
    schema = first.manifest.schema
    own_x, own_y = first.splits.train.x, first.splits.train.y
    for seq in range(12):
        await _announce(first, SENSOR, _chunk(10, seq, schema, start=10 * seq), 10, seq)
    try:
        await _adopt_until(first, lambda: first.net.data_accepted == 12)
        x1, y1 = (a.copy() for a in first._take_adopted(own_x, own_y))
    finally:
        first.tangle.close()
    assert len(s.fetched) == 12 and len(x1) == len(own_x) + 40

    s.fetched.clear()
    again = await s.node(max_rows=40)  # the same state directory, after a restart
    again.splits = again.config.data.load()
    try:
        assert again._adopt_status()["pool_rows"] == 0
        await _adopt_until(again, lambda: again.net.data_held == 12)
        assert s.fetched == [] and again.net.data_accepted == 0  # nothing fetched again
        x2, y2 = again._take_adopted(own_x, own_y)
        # the same chunks in the same order and the same seed: the pool the node had
        np.testing.assert_array_equal(x2, x1)
        np.testing.assert_array_equal(y2, y1)
        assert again.adopted_chunks == 12 and again.adopted_rows == 120
        status = again._adopt_status()
        assert (status["pool_rows"], status["disk_chunks"], status["disk_rows"]) == (40, 12, 120)
        # a chunk announced after the restart is fetched, once
        new = await _announce(again, SENSOR, _chunk(10, 12, schema, start=120), 10, 12)
        await _adopt_until(again, lambda: again.net.data_accepted == 1)
        assert len(s.fetched) == 1 and [c.tx for c in _stored(again)][-1] == new
        assert again._adopt_waiting()
        again._take_adopted(own_x, own_y)
        assert again.adopted_rows == 130 and again._adopt_status()["pool_rows"] == 40
    finally:
        again.tangle.close()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no VmRSS in /proc/self/status")


async def test_adopting_300000_rows_keeps_memory_bounded(tmp_path):
    """300,000 rows of 64 float32 features (77 MB) adopted with the default bound of 50,000
    rows: the process grows by the pool (12.8 MB), not by the data. Before the bound, it grew
    by the rows and their copies (more than 80 MB)."""
    s = Swarm(tmp_path, model="digits-mlp", data="digits")
    node = await s.node(max_rows=50_000)
    node.splits = node.config.data.load()
    schema = node.manifest.schema
    n_chunks, rows = 150, 2000
    try:
        for seq in range(n_chunks):
            await _announce(node, SENSOR, _chunk(rows, seq, schema, start=rows * seq), rows, seq)
        x, y = node.splits.train.x, node.splits.train.y
        gc.collect()
        before = _rss_mb()

        def take() -> bool:
            nonlocal x, y
            x, y = node._take_adopted(x, y)
            return node.adopted_chunks == n_chunks

        await _adopt_until(node, take)
        gc.collect()
        grown = _rss_mb() - before
        assert node.adopted_rows == n_chunks * rows == 300_000
        assert grown < 45, f"RSS grew by {grown:.1f} MB"
        assert len(x) - len(node.splits.train) == 50_000
        print(f"RSS grew by {grown:.1f} MB adopting 300,000 rows (pool of 50,000)")
    finally:
        node.tangle.close()


# ----------------------------------------------------------------------- a node process
NODE = ("import faulthandler, signal; faulthandler.register(signal.SIGUSR1, all_threads=True);"
        " from learnae.cli import main; main()")


class NodeProcess:
    """``learnae node run`` on a state directory, with its API, started with the test's
    launcher; stopped with SIGTERM."""

    def __init__(self, launch: Launcher, tmp: Path, invite: Path, *extra: str):
        self.launch, self.state, self.invite, self.extra = launch, tmp / "node", invite, extra
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        argv = [sys.executable, "-c", NODE, "node", "run", "--invite", str(self.invite),
                "--state", str(self.state), "--data", "iris", "--seed", "0", "--quiet", *self.extra]
        self.proc = self.launch.start(f"node.{self.runs}", argv, cwd=ROOT, stacks=signal.SIGUSR1)
        self.url = self.wait(self._url, 90, "the API")

    def _url(self) -> str | None:
        url = (read_json(self.state / "api.json") or {}).get("url")
        return url if url and get_json(url + "/status") is not None else None

    def status(self) -> dict:
        return get_json(self.url + "/status") or {}

    def post(self, path: str, body: bytes | None = None) -> dict:
        req = urllib.request.Request(self.url + path, data=body, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def wait(self, predicate, timeout: float, what: str):
        """:meth:`Launcher.wait` watching this run of the node."""
        return self.launch.wait(predicate, timeout, what, watch=[self.proc], interval=0.2)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.launch.wait_exit(self.proc, 90) == 0, self.proc.tail()


@pytest.mark.slow  # one node process: not a swarm
def test_a_node_process_bounds_its_pool_and_restarts_without_fetching(tmp_path, launch):
    from learnae.content import content_id
    from learnae.ingest import encode_ingest_request

    manifest = Manifest(checkpoint_interval=0, name="adopt-proc", model=model_config("iris-mlp"), pow_bits=2, sync_every=5)
    swarm = init_swarm(tmp_path / "founder", manifest)
    invite = tmp_path / "invite.json"
    swarm.invite.save(invite)
    genesis, schema = decode_tx(swarm.invite.genesis_tx), manifest.schema
    node = NodeProcess(launch, tmp_path, invite, "--adopt-max-rows", "25")
    n, rows = 8, 10
    node.start()
    for seq in range(n):  # a sensor posting through the node's API (--via)
        data = _chunk(rows, seq, schema, start=rows * seq)
        payload = data_payload(cid=content_id(data), size=len(data), rows=rows, schema=schema.to_dict(),
                               source={"kind": "t"}, seq=seq)
        tx = make_tx(SENSOR, kind="data", payload=payload, parents=[genesis.id], swarm=genesis.id,
                     pow_bits=manifest.pow_bits, time_ms=max(int(time.time() * 1000), genesis.time))
        node.post("/ingest", encode_ingest_request(data, tx.raw))
    adopt = node.wait(lambda: (a := node.status().get("adopt")) and a["chunks"] == n and a, 90,
                      "every chunk adopted")
    assert adopt["accepted"] == n and adopt["rows"] == n * rows
    assert adopt["pool_rows"] == 25 and adopt["max_rows"] == 25
    assert (adopt["disk_chunks"], adopt["disk_rows"]) == (n, n * rows)
    node.stop()

    node.start()  # the same state directory
    adopt = node.wait(lambda: (a := node.status().get("adopt")) and a["chunks"] == n and a["held"] == n
                      and a, 90, "the pool refilled from disk")
    assert adopt["accepted"] == 0 and adopt["held"] == n  # none fetched again
    assert adopt["pool_rows"] == 25 and adopt["rows"] == n * rows and adopt["disk_chunks"] == n
    node.stop()
