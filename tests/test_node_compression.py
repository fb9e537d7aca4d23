"""A node's compressed checkpoints on the memory network: keyframes and deltas published, the
keyframes a kept delta names kept pinned, a receiver decoding a delta (fetching its base when
it does not hold it), and a delta of a delta refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from procs.nodes import Nodes

from learnae.content import content_id, to_v1
from learnae.errors import FormatError
from learnae.formats import Checkpoint, checkpoint_encoding, encode_checkpoint
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.sync import TangleSync
from learnae.ledger.tx import checkpoint_payload
from learnae.manifest import Compression, Manifest
from learnae.models import model_config
from learnae.node import NetworkSide, fetch_peer_checkpoint
from learnae.node.network import Keyframes
from learnae.state import init_swarm, open_tangle
from learnae.training.bridge import Offer

RNG = np.random.default_rng(3)
SHAPES = {"dense/kernel": (64, 64), "dense/bias": (64,), "out/kernel": (64, 10)}
EXPECT = {k: (shape, "float32") for k, shape in SHAPES.items()}
MANIFEST = Manifest(name="squeeze", model=model_config("iris-mlp"), pow_bits=2, checkpoint_interval=0,
                    compression=Compression(codec="int8", delta_codec="int4", keyframe_every=3))


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


def weights(step: int) -> dict[str, np.ndarray]:
    """Weights that drift a little with each step, as training's do."""
    rng = np.random.default_rng(step)
    return {k: (np.linspace(-1, 1, int(np.prod(s))).reshape(s) + 0.01 * step * rng.normal(size=s)).astype(np.float32)
            for k, s in SHAPES.items()}


@pytest.fixture
async def pair(tmp_path):
    swarm = init_swarm(tmp_path / "swarm", MANIFEST, founder=identity(1))
    tangle, _ = open_tangle(swarm.directory)
    net = MemoryNetwork(seed=0)
    a, b = net.node("a"), net.node("b")
    await b.connect((await a.addrs())[0])
    sync = TangleSync(tangle, a)
    side = NetworkSide(ipfs=a, sync=sync, identity=identity(1), manifest=MANIFEST, expect=EXPECT, keep=1)
    await sync.start()
    try:
        yield side, a, b
    finally:
        await sync.stop()
        tangle.close()


async def test_keyframes_and_deltas_are_published_and_decoded_by_a_peer(pair):
    side, a, b = pair
    txs = []
    for step in range(1, 5):
        tx, raw = await side.publish(Offer(weights=weights(step), step=step, samples=10, total_samples=10 * step))
        txs.append((tx, raw))
    cids = [tx.payload["cid"] for tx, _ in txs]
    deltas = [checkpoint_encoding(raw, max_bytes=1 << 20)[1] for _, raw in txs]
    assert deltas == [None, cids[0], cids[0], None]  # a keyframe every 3
    assert all(len(raw) < len(txs[0][1]) for _, raw in txs[1:3])  # int4 deltas beside an int8 keyframe

    keyframes = Keyframes(max_bytes=1 << 20)
    got = await fetch_peer_checkpoint(b, txs[2][0], MANIFEST, EXPECT, genesis=side.tangle.swarm,
                                      keyframes=keyframes, timeout=5)
    assert keyframes.get(cids[0]) is not None  # the base was fetched and is held now
    err = max(float(np.abs(got.weights[k] - w).max()) for k, w in weights(3).items())
    # weights up to 1 sent as int4 would be off by up to 1/14; the delta is off by half its own step
    assert err < 0.01
    full = await fetch_peer_checkpoint(b, txs[3][0], MANIFEST, EXPECT, genesis=side.tangle.swarm, timeout=5)
    for k, w in weights(4).items():  # int8: half a step of 1/127 of the largest magnitude
        assert float(np.abs(full.weights[k] - w).max()) <= float(np.abs(w).max()) / 254 * (1 + 1e-5)


def test_keyframes_hold_the_recently_used_within_their_bytes():
    kb = {"w": np.zeros(256, np.float32)}  # 1 KiB each
    frames = Keyframes(max_bytes=3 * 1024)
    for cid in "abc":
        frames.put(cid, dict(kb))
    assert frames.get("a") is not None  # used again: "b" is now the least recent
    frames.put("d", dict(kb))
    assert frames.get("b") is None and all(frames.get(c) is not None for c in "acd")
    frames.put("d", dict(kb))  # held again under the same CID: counted once, nothing leaves
    assert all(frames.get(c) is not None for c in "acd")
    frames.put("e", {"w": np.zeros(1024, np.float32)})  # 4 KiB alone: everything else leaves
    assert [c for c in "acde" if frames.get(c) is not None] == ["e"]


async def test_a_kept_delta_keeps_its_keyframe_pinned(pair):
    side, a, _b = pair
    cids = []
    for step in range(1, 5):
        tx, _raw = await side.publish(Offer(weights=weights(step), step=step, samples=10, total_samples=10 * step))
        cids.append(tx.payload["cid"])
        pins = {to_v1(c) for c in await a.pins()}
        if step == 2:  # keep=1: the delta is kept, so is its keyframe
            assert {to_v1(cids[0]), to_v1(cids[1])} <= pins
            assert side.own_pins() == [cids[0], cids[1]]
        if step == 4:  # a new keyframe: the old one and its deltas are gone
            assert to_v1(cids[0]) not in pins and side.own_pins() == [cids[3]]


async def test_a_delta_of_a_delta_is_refused(pair):
    side, a, b = pair
    for step in (1, 2):
        tx, _raw = await side.publish(Offer(weights=weights(step), step=step, samples=10, total_samples=10 * step))
    delta_cid = tx.payload["cid"]
    chained = encode_checkpoint(Checkpoint(weights(3), side.tangle.swarm, 3, 10), codec="int4",
                                base=(delta_cid, weights(2)))
    cid = await a.add(chained)
    forged = await side.sync.append(identity(1), "checkpoint", checkpoint_payload(
        cid=cid, size=len(chained), step=3, samples=10, base=[], data=[], metrics={}))
    with pytest.raises(FormatError) as err:
        await fetch_peer_checkpoint(b, forged, MANIFEST, EXPECT, genesis=side.tangle.swarm, timeout=5)
    assert err.value.code == "delta-base"
    assert content_id(chained)  # the forged file is a real, addressable object


async def test_a_file_not_encoded_as_the_manifest_says_is_refused_before_decoding(pair):
    side, a, b = pair
    plain = dataclasses.replace(MANIFEST, compression=Compression())
    # a float32 file where the manifest says int8; a delta where it says none (its base is not
    # even fetched: nobody holds it)
    for manifest, name, base in ((MANIFEST, "float32", None), (plain, "int4", (content_id(b"x"), weights(1)))):
        raw = encode_checkpoint(Checkpoint(weights(2), side.tangle.swarm, 2, 10), codec=name, base=base)
        tx = await side.sync.append(identity(1), "checkpoint", checkpoint_payload(
            cid=await a.add(raw), size=len(raw), step=2, samples=10, base=[], data=[], metrics={}))
        with pytest.raises(FormatError) as err:
            await fetch_peer_checkpoint(b, tx, manifest, EXPECT, genesis=side.tangle.swarm, timeout=5)
        assert err.value.code == "codec", err.value.reason


# ------------------------------------------------------------------- node processes, digits
EPOCHS, PLATEAU = 30, 8


def plateau_accuracy(tmp_path, launch, codec: str) -> tuple[float, list]:
    """Two nodes in a swarm of ``codec`` checkpoints: their mean test accuracy over PLATEAU
    evaluations each once both are past EPOCHS (and the samples it is from). In the int8 swarm a
    hostile member then joins, and both nodes refuse its int8 file with a negative scale."""
    manifest = Manifest(name="node-test", model=model_config("digits-mlp"), pow_bits=4, merge="mean",
                        learning_rate=0.003, sync_every=5, checkpoint_interval=0,
                        compression=Compression(codec=codec))
    nodes = Nodes(tmp_path / codec, launch, 2, bad_peer=codec == "int8", manifest=manifest,
                  shards="digits:shard={i}/{n},partition=iid,seed=3")
    for i in range(2):
        nodes.start(i)
    nodes.wait(lambda: all((s := nodes.status(i)) and s["epoch"] >= EPOCHS and s["merges"] > 0 for i in range(2)),
               240, f"both nodes past {EPOCHS} epochs and merging")
    # one evaluation's test accuracy moves by a row or two: average PLATEAU of each node's,
    # at distinct epochs past EPOCHS (a node evaluates every couple of seconds)
    seen: list[dict[int, float]] = [{}, {}]

    def evaluations() -> bool:
        for i, node in enumerate(seen):
            s = nodes.status(i) or {}
            if s.get("epoch", 0) >= EPOCHS and s.get("test"):
                node[s["epoch"]] = s["test"]["accuracy"]
        return all(len(node) >= PLATEAU for node in seen)

    nodes.wait(evaluations, 240, f"{PLATEAU} evaluations of each node past epoch {EPOCHS}")
    samples = [(epoch, acc) for node in seen for epoch, acc in sorted(node.items())[:PLATEAU]]
    if codec == "int8":
        nodes.start_bad()
        nodes.wait(lambda: all((s := nodes.status(i)) and s["rejections"].get("quantized-scale") for i in range(2)),
                   120, "both nodes refusing the int8 file with a negative scale")
        assert nodes.terminate(2) == 0
    assert [nodes.terminate(i) for i in (0, 1)] == [0, 0], [nodes.procs[i].tail() for i in range(2)]
    return sum(acc for _epoch, acc in samples) / len(samples), samples


@pytest.mark.slow
@pytest.mark.swarm
def test_two_nodes_with_int8_checkpoints_train_digits_as_well_as_float32(tmp_path, launch):
    """Two ``learnae node run`` processes train digits (alike shards) past 30 epochs, merging
    each other's checkpoints, once in a swarm of float32 checkpoints and once of int8 ones; the
    int8 swarm's test accuracy (8 evaluations of each node after that) is within 0.01 of the
    float32 one's.
    Then a hostile member publishes bad checkpoints in the int8 swarm, among them an int8 one
    with a negative scale: both nodes refuse it ``quantized-scale`` and go on."""
    runs = {codec: plateau_accuracy(tmp_path, launch, codec) for codec in ("float32", "int8")}
    assert abs(runs["int8"][0] - runs["float32"][0]) <= 0.01, runs
