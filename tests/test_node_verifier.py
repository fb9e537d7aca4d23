"""A trainer's spot checks (:class:`~learnae.node.verifier.CheckpointVerifier`) inside its network
side, on the memory network and a real SQLite ledger: a lazy peer's checkpoints are disputed in
attestations, its standing falls, the merge refuses it as ``low-standing``; an honest peer is
agreed with; claimed samples are capped in the merge."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.formats import Checkpoint, encode_checkpoint
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.sync import TangleSync
from learnae.ledger.tx import checkpoint_payload
from learnae.manifest import Manifest, Verification
from learnae.models import model_config
from learnae.node.network import NetworkSide
from learnae.state import init_swarm, open_tangle
from learnae.training.bridge import Offer
from learnae.verify import HoldoutLoss


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


ME, HONEST, LAZY = identity(2), identity(3), identity(4)
SHAPES = {"dense/kernel": (4, 3), "dense/bias": (3,)}
TARGET = {k: np.full(s, 1.0, np.float32) for k, s in SHAPES.items()}


def weights(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}


def validation_loss(w) -> HoldoutLoss:
    """A stand-in validation loss: squared distance to the weights every node wants, one
    "class" per tensor."""
    per_tensor = tuple(float(np.sum((w[k].astype(np.float64) - TARGET[k]) ** 2)) for k in sorted(TARGET))
    return HoldoutLoss(sum(per_tensor), per_tensor)


async def ledger_and_peer(tmp_path, manifest: Manifest):
    """A swarm's tangle synced through a memory IPFS node, and a connected peer node that
    serves what the test adds: ``(tangle, ipfs, peer, sync)``."""
    swarm = init_swarm(tmp_path / "swarm", manifest, founder=identity(1))
    tangle, _ = open_tangle(swarm.directory)
    net = MemoryNetwork(seed=0)
    ipfs, peer = net.node("node"), net.node("peer")
    await peer.connect((await ipfs.addrs())[0])
    sync = TangleSync(tangle, ipfs)
    await sync.start()
    return tangle, ipfs, peer, sync


async def close(tangle, ipfs, peer, sync) -> None:
    await sync.stop()
    await ipfs.close()
    await peer.close()
    tangle.close()


async def test_a_lazy_peer_is_disputed_flagged_and_refused_and_claims_are_capped(tmp_path):
    manifest = Manifest(checkpoint_interval=0, name="verify", model=model_config("iris-mlp"), pow_bits=2,
                        merge="mean", verification=Verification(rate=1.0))
    tangle, ipfs, peer, sync = await ledger_and_peer(tmp_path, manifest)
    node = NetworkSide(ipfs=ipfs, sync=sync, identity=ME, manifest=manifest,
                       expect={k: (s, "float32") for k, s in SHAPES.items()}, k=4, fetch_timeout=1.0,
                       evaluate=validation_loss)

    async def publish(author: Identity, value: float, step: int, samples: int, base=()) -> str:
        data = encode_checkpoint(Checkpoint(weights(value), tangle.swarm, step, samples))
        cid = await peer.add(data)
        return tangle.append(author, "checkpoint", checkpoint_payload(
            cid=cid, size=len(data), step=step, samples=samples, base=list(base), data=[], metrics={})).id

    offer = Offer(weights=weights(0.0), step=5, samples=50, total_samples=50, k=4)
    try:
        # the honest peer improves on its base (0.2 -> 0.5: closer to the target of 1.0)
        h = await publish(HONEST, 0.2, 10, 320)
        lazy = await publish(LAZY, 0.2, 10, 320)
        for n in range(3):
            h = await publish(HONEST, 0.5 + 0.1 * n, 20 + 10 * n, 320, [h])
            # the lazy peer republishes its base slightly worse: no gain, not much worse
            lazy = await publish(LAZY, 0.2 - 0.001 * (n + 1), 20 + 10 * n, 320, [lazy])
        node._collect()
        queued = {tx.author for tx in node.verifier.queue}
        assert queued == {HONEST.public_key, LAZY.public_key}  # rate 1: every checkpoint (bar firsts)
        verdicts = []
        while (verdict := await node.verifier.check()) is not None:
            verdicts.append(verdict)
        assert sorted(v.code for v in verdicts) == ["holdout-no-gain"] * 3 + ["ok"] * 3
        judged = tangle.attestations()
        assert {a.subject for a in judged if a.verdict == "dispute"} == {LAZY.public_key}
        assert {a.verifier for a in judged} == {ME.public_key} and len(judged) == 6
        node.verifier.refresh()
        assert node.verifier.flagged(LAZY.public_key) and not node.verifier.flagged(HONEST.public_key)
        assert node.verifier.status()["flagged"] == [LAZY.public_key.hex()]

        merged = await node.merge(offer)
        assert node.rejections["low-standing"] == 1
        assert merged is not None and merged.tag == (h,)
        # the honest claim of 320 samples counts at most 4 x the lower median (50): 200; and its
        # author, new in this open swarm and merged by nobody yet, a quarter of that (Newcomers)
        expected = (50 * 0.0 + 50 * 0.7) / 100
        np.testing.assert_allclose(merged.weights["dense/bias"], expected, rtol=1e-6)
    finally:
        await close(tangle, ipfs, peer, sync)


SENSOR, LIAR = identity(5), identity(6)


def replay_by_rows(start, x, y, rows):
    """A stand-in for training: each batch moves every weight by 0.01 x (its mean feature + label)."""
    out = {k: v.astype(np.float64) for k, v in start.items()}
    for batch in rows:
        step = 0.01 * (float(x[batch].mean()) + float(y[batch].mean()))
        out = {k: v + step for k, v in out.items()}
    return {k: v.astype(np.float32) for k, v in out.items()}


async def test_segments_are_replayed_and_data_named_without_one_is_disputed(tmp_path):
    from learnae.formats import Chunk, encode_chunk
    from learnae.ledger.tx import data_payload
    from learnae.verify import segment_rows

    manifest = Manifest(checkpoint_interval=0, name="replay", model=model_config("iris-mlp"), pow_bits=2,
                        merge="mean", batch_size=4,
                        verification=Verification(rate=1.0, verifiers=3, data_claims="replay"))  # 3 candidates: ME judges all
    tangle, ipfs, peer, sync = await ledger_and_peer(tmp_path, manifest)
    expect = {k: (s, "float32") for k, s in SHAPES.items()}
    sides = [NetworkSide(ipfs=ipfs, sync=sync, identity=ME, manifest=manifest, expect=expect, fetch_timeout=1.0,
                         evaluate=validation_loss, replay=replay) for replay in (replay_by_rows, None)]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 4)).astype(np.float32), rng.integers(0, 3, 10).astype(np.int64)
    raw = encode_chunk(Chunk(x, y, manifest.schema, "sensor", 0, (0, 1)))
    chunk = tangle.append(SENSOR, "data", data_payload(cid=await peer.add(raw), size=len(raw), rows=10,
                                                       schema=manifest.schema.to_dict(), source="sensor", seq=0)).id

    async def publish(author: Identity, w, step: int, base=(), data=(), segment=None) -> str:
        raw = encode_checkpoint(Checkpoint(w, tangle.swarm, step, 12))
        return tangle.append(author, "checkpoint", checkpoint_payload(
            cid=await peer.add(raw), size=len(raw), step=step, samples=12, base=list(base), data=list(data),
            metrics={}, segment=segment)).id

    try:
        rows = segment_rows(7, 10, 3, manifest.batch_size)
        honest_start = await publish(HONEST, weights(0.2), 10)
        await publish(HONEST, replay_by_rows(weights(0.2), x, y, rows), 13, [honest_start], [chunk],
                      {"seed": 7, "steps": 3})
        liar_start = await publish(LIAR, weights(0.2), 10)
        await publish(LIAR, weights(0.3), 13, [liar_start], [chunk], {"seed": 7, "steps": 3})  # never trained
        unreplayable = await publish(LAZY, weights(0.4), 10, data=[chunk])
        verdicts = {}
        for side in sides:
            side._collect()
            while (verdict := await side.verifier.check()) is not None:
                verdicts.setdefault(side.verifier.replay is not None, []).append(verdict)
        replaying = sorted((v.method, v.code) for v in verdicts[True])
        assert replaying == [("replay", "data-unreplayable"), ("replay", "ok"), ("replay", "replay-mismatch")]
        ok = next(v for v in verdicts[True] if v.code == "ok")
        assert ok.figures["replay_distance"] == 0.0 and ok.figures["steps"] == 3
        # a node that cannot replay leaves segments unjudged; a data claim without one it still disputes
        assert [v.code for v in verdicts[False]] == ["data-unreplayable"]
        assert sides[1].verifier.skipped["no-replay"] == 2
        disputed = {a.checkpoint for a in tangle.attestations() if a.verdict == "dispute"}
        assert unreplayable in disputed and len(disputed) == 2
        # a node's own segment starts from its previous checkpoint, with nothing merged since
        offer = Offer(weights=weights(0.0), step=5, samples=12, total_samples=12)
        with pytest.raises(ValueError, match="previous checkpoint"):
            await sides[0].publish(offer, data=[chunk], segment={"seed": 1, "steps": 3})
    finally:
        await close(tangle, ipfs, peer, sync)


async def test_a_holdout_check_loads_at_most_max_bases_bases(tmp_path):
    from learnae.node.verifier import MAX_BASES

    manifest = Manifest(checkpoint_interval=0, name="bases", model=model_config("iris-mlp"), pow_bits=2,
                        merge="mean", verification=Verification(rate=1.0, verifiers=1))  # ME judges all
    tangle, ipfs, peer, sync = await ledger_and_peer(tmp_path, manifest)
    side = NetworkSide(ipfs=ipfs, sync=sync, identity=ME, manifest=manifest,
                       expect={k: (s, "float32") for k, s in SHAPES.items()}, fetch_timeout=1.0,
                       evaluate=validation_loss)
    try:
        bases = []
        for n in range(MAX_BASES + 4):
            raw = encode_checkpoint(Checkpoint(weights(0.01 * n), tangle.swarm, 10, 320))
            bases.append(tangle.append(HONEST, "checkpoint", checkpoint_payload(
                cid=await peer.add(raw), size=len(raw), step=10, samples=320, base=[], data=[], metrics={})).id)
        raw = encode_checkpoint(Checkpoint(weights(0.8), tangle.swarm, 20, 320))
        tangle.append(HONEST, "checkpoint", checkpoint_payload(
            cid=await peer.add(raw), size=len(raw), step=20, samples=320, base=bases, data=[], metrics={}))
        side._collect()
        verdict = await side.verifier.check()
        assert verdict is not None and verdict.figures["bases"] == MAX_BASES
        assert side.verifier.skipped == {}  # judged the newest first; the firsts wait in the queue
    finally:
        await close(tangle, ipfs, peer, sync)
