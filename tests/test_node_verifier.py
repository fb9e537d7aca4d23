"""A trainer's spot checks (:class:`~learnae.node.verifier.CheckpointVerifier`) inside its network
side, on the memory network and a real SQLite ledger: a lazy peer's checkpoints are disputed in
attestations, its standing falls, the merge refuses it as ``low-standing``; an honest peer is
agreed with; claimed samples are capped in the merge."""

from __future__ import annotations

import numpy as np
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


async def test_a_lazy_peer_is_disputed_flagged_and_refused_and_claims_are_capped(tmp_path):
    manifest = Manifest(checkpoint_interval=0, name="verify", model=model_config("iris-mlp"), pow_bits=2,
                        merge="mean", verification=Verification(rate=1.0))
    swarm = init_swarm(tmp_path / "swarm", manifest, founder=identity(1))
    tangle, _ = open_tangle(swarm.directory)
    net = MemoryNetwork(seed=0)
    ipfs, peer = net.node("node"), net.node("peer")
    await peer.connect((await ipfs.addrs())[0])
    sync = TangleSync(tangle, ipfs)
    await sync.start()
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
        # the honest claim of 320 samples counts at most 4 x the lower median (50): 200
        expected = (50 * 0.0 + 200 * 0.7) / 250
        np.testing.assert_allclose(merged.weights["dense/bias"], expected, rtol=1e-6)
    finally:
        await sync.stop()
        await ipfs.close()
        await peer.close()
        tangle.close()
