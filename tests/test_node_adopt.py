"""Data adoption in the trainer node (DESIGN.md "Node loop" step 4), in process: the
``--adopt`` policy, the network side's checks and counted refusals, the training side's
scaled pool and the ids the next checkpoint names. Processes: tests/test_sensor_node.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.errors import ConfigError
from learnae.formats import Chunk, encode_chunk
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.tx import data_payload
from learnae.manifest import Manifest, init_swarm, open_tangle
from learnae.models import model_config
from learnae.node import NodeConfig, TrainerNode, parse_adopt
from learnae.training.data import DataSpec


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
    with pytest.raises(ConfigError, match="cannot read"):
        parse_adopt(str(tmp_path / "missing.txt"))


def _node(tmp_path, adopt="all") -> TrainerNode:
    manifest = Manifest(name="iris", model=model_config("iris-mlp"), pow_bits=2)
    swarm = init_swarm(tmp_path / "swarm", manifest, founder=identity(1))
    node = TrainerNode(NodeConfig(invite=swarm.invite, state=tmp_path / "node", data=DataSpec.parse("iris"),
                                  adopt=adopt, fetch_timeout=0.2))
    node.tangle, _ = open_tangle(swarm.directory)
    node.ipfs = MemoryNetwork(seed=0).node("node")
    node.identity = identity(2)
    return node


async def _announce(node, who, data: bytes, rows: int, seq: int) -> str:
    cid = await node.ipfs.add(data)
    payload = data_payload(cid=cid, size=len(data), rows=rows, schema=node.manifest.schema.to_dict(), source={"kind": "t"}, seq=seq)
    return node.tangle.append(who, "data", payload).id


def _chunk(rows: int, seq: int, schema, **kw) -> bytes:
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    y = np.arange(rows, dtype=np.int64) % 3
    return encode_chunk(Chunk(x=kw.get("x", x), y=y, schema=schema, sensor="p", seq=seq,
                              time_range=(0, 1)))


async def _adopt_once(node) -> None:
    task = asyncio.create_task(node._adopt_loop())
    await asyncio.sleep(1.5)
    node._stopping.set()
    await asyncio.wait_for(task, 5)


async def test_the_network_side_checks_chunks_and_counts_refusals(tmp_path):
    from learnae.formats import Schema

    node = _node(tmp_path)
    schema = node.manifest.schema
    try:
        good = await _announce(node, SENSOR, _chunk(5, 0, schema), 5, 0)
        await _announce(node, SENSOR, b"not a chunk at all", 5, 1)
        await _announce(node, SENSOR, _chunk(5, 2, schema), 6, 2)  # announces more rows than it holds
        wrong = Schema(features=(3,), dtype="float32", label_dtype="int64", classes=3)
        await _announce(node, SENSOR, _chunk(5, 3, wrong, x=np.zeros((5, 3), np.float32)), 5, 3)
        await _adopt_once(node)
        assert node.data_accepted == 1
        tx_id, x, y = node._adopt_queue.get_nowait()
        assert tx_id == good and x.shape == (5, 4) and y.tolist() == [0, 1, 2, 0, 1]
        assert node._adopt_queue.empty()
        refused = {k: v for k, v in node.rejections.items() if k.startswith("data:")}
        assert sum(refused.values()) == 3, refused
        assert refused.get("data:schema") == 1, refused
    finally:
        node.tangle.close()


async def test_the_policy_admits_listed_authors_only(tmp_path):
    path = tmp_path / "authors.txt"
    path.write_text(SENSOR.author_id + "\n")
    node = _node(tmp_path, adopt=str(path))
    schema = node.manifest.schema
    try:
        mine = await _announce(node, SENSOR, _chunk(4, 0, schema), 4, 0)
        await _announce(node, OTHER, _chunk(4, 0, schema), 4, 0)
        await _adopt_once(node)
        assert node._adopt_queue.get_nowait()[0] == mine and node._adopt_queue.empty()
        assert node.rejections["data:not-admitted"] == 1
    finally:
        node.tangle.close()


async def test_the_training_side_scales_rows_and_names_them_once(tmp_path):
    node = _node(tmp_path)
    node.splits = node.config.data.load()
    scaler = node.splits.train.scaler
    assert scaler is not None  # iris is standardized: sensor rows must be too
    x0, y0 = node.splits.train.x, node.splits.train.y
    rows = np.array([[5.0, 3.0, 1.5, 0.2], [6.5, 3.0, 5.5, 2.0]], dtype=np.float32)
    node._adopt_queue.put(("tx-a", rows, np.array([0, 2])))
    node._adopt_queue.put(("tx-b", np.zeros((3, 2), np.float32), np.zeros(3, np.int64)))  # does not fit
    x, y = node._take_adopted(x0, y0)
    assert len(x) == len(x0) + 2 and x.dtype == x0.dtype
    np.testing.assert_allclose(x[-2:], scaler.transform(rows), rtol=1e-6)
    assert y[-2:].tolist() == [0, 2]
    assert node.rejections["data:shape"] == 1
    assert node._unnamed == ["tx-a"] and node.adopted_chunks == 1 and node.adopted_rows == 2
    node._named.add("tx-c")
    node._adopt_queue.put(("tx-c", rows, np.array([1, 1])))  # adopted again after a restart
    node._take_adopted(x, y)
    assert node._unnamed == ["tx-a"]  # already named by a published checkpoint
    node.tangle.close()
