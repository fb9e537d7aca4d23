"""Which peer checkpoints a trainer node merges (:class:`learnae.node.PeerChoice`): freshness
that an author cannot date into the future, backoff from authors whose checkpoints cannot
be used, bounded memory; and, with the memory IPFS network, an honest checkpoint merged
while throw-away keys announce future-dated checkpoints nobody can fetch."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.content import content_id
from learnae.errors import ConfigError
from learnae.formats import Checkpoint, encode_checkpoint
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.sync import TangleSync
from learnae.ledger.tx import MAX_FUTURE_MS, checkpoint_payload, revoke_payload
from learnae.manifest import Manifest, Newcomers
from learnae.models import model_config
from learnae.node import NetworkSide, PeerChoice
from learnae.state import init_swarm, open_tangle
from learnae.training.bridge import Offer

S = 1000.0  # ms


@dataclass
class T:
    """What the peer choice reads of a checkpoint tx."""

    author: bytes
    time: float
    payload: dict = field(default_factory=lambda: {"step": 1})


def test_a_future_date_does_not_outrank_later_checkpoints():
    choice = PeerChoice(stale=600)
    liar = T(b"liar", 9 * 60 * S)  # seen at 0, dated 9 minutes ahead
    choice.add(liar, now_ms=0)
    honest = T(b"honest", 5 * S)
    choice.add(honest, now_ms=5 * S)
    assert choice.choose(1, now_ms=6 * S) == [honest]
    assert choice.choose(1, now_ms=6 * S) == [liar] and len(choice) == 0


def test_the_freshest_are_chosen_and_chance_decides_among_those_that_tie():
    """k of many: every one fresher than the k-th is taken; among those as fresh as it, each
    has its chance (a swarm's nodes often publish in the same instant)."""
    picked: dict[bytes, int] = {}
    for seed in range(200):
        choice = PeerChoice(stale=600, rng=random.Random(seed))
        for i in range(30):  # two fresher ones, then 28 that tie
            choice.add(T(bytes([i]), (10 if i < 2 else 5) * S), now_ms=20 * S)
        chosen = choice.choose(4, now_ms=20 * S)
        assert len(chosen) == 4 and {c.author for c in chosen[:2]} == {b"\x00", b"\x01"}
        assert len(choice) == 26
        for c in chosen[2:]:
            picked[c.author] = picked.get(c.author, 0) + 1
    assert len(picked) == 28  # every tied author was drawn in some run
    assert max(picked.values()) < 40  # about 200 * 2 / 28 = 14 each


def test_staleness_counts_from_arrival_for_future_dates():
    choice = PeerChoice(stale=60)
    choice.add(T(b"liar", 9 * 60 * S), now_ms=0)
    assert choice.drop_stale(now_ms=60 * S) == 0
    assert choice.drop_stale(now_ms=61 * S) == 1 and len(choice) == 0


def test_an_author_keeps_its_freshest_checkpoint():
    choice = PeerChoice(stale=600)
    new, old = T(b"a", 10 * S, {"step": 20}), T(b"a", 5 * S, {"step": 10})
    choice.add(new, now_ms=10 * S)
    choice.add(old, now_ms=11 * S)
    later = T(b"a", 10 * S, {"step": 21})  # same time, more steps
    choice.add(later, now_ms=12 * S)
    assert len(choice) == 1 and choice.choose(4, now_ms=12 * S) == [later]


def test_backoff_doubles_is_bounded_and_clears():
    choice = PeerChoice(stale=10_000, backoff=30, max_backoff=100)
    a = b"a"
    assert choice.failed(a, now_ms=0) == 30
    choice.add(T(a, 1 * S), now_ms=1 * S)
    assert choice.choose(4, now_ms=29 * S) == [] and len(choice) == 1  # passed over, still pending
    assert choice.backing_off_count(29 * S) == 1
    assert choice.choose(4, now_ms=30 * S) == [T(a, 1 * S)]
    assert choice.failed(a, now_ms=40 * S) == 60  # doubles
    assert choice.failed(a, now_ms=100 * S) == 100  # at most max_backoff
    assert choice.failed(a, now_ms=200 * S) == 100
    choice.succeeded(a)
    assert not choice.backing_off(a, 201 * S) and choice.failed(a, now_ms=201 * S) == 30
    # a failure long (> max_backoff) after the last pass-over ended starts over
    choice.failed(a, now_ms=240 * S)  # 60 s, until 300 s
    assert choice.failed(a, now_ms=401 * S) == 30


def test_backed_off_authors_do_not_count_towards_at_least():
    choice = PeerChoice(stale=600)
    for name in (b"a", b"b"):
        choice.add(T(name, 0), now_ms=0)
    choice.failed(b"a", now_ms=0)
    assert choice.choose(4, now_ms=1 * S, at_least=2) == [] and len(choice) == 2
    assert choice.choose(4, now_ms=1 * S, at_least=1) == [T(b"b", 0)]


def test_memory_is_bounded():
    choice = PeerChoice(stale=600, max_authors=3)
    for i in range(10):
        choice.add(T(bytes([i]), i * S), now_ms=i * S)
        choice.failed(bytes([i]), now_ms=i * S)
    assert len(choice) == 3 and len(choice._backoff) == 3
    assert {tx.author for tx in choice.choose(10, now_ms=10 * 60 * S)} == {b"\x07", b"\x08", b"\x09"}
    assert choice.backing_off_count(10 * S) == 3
    with pytest.raises(ConfigError):
        PeerChoice(stale=600, backoff=0)


# ---------------------------------------------------------------------- a node's merge rounds
def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


WEIGHTS = {"dense/kernel": np.full((4, 3), 0.5, np.float32), "dense/bias": np.full((3,), 0.1, np.float32)}


async def _side_with_server(tmp_path, manifest: Manifest, *, fetch_timeout: float):
    """A swarm founded by identity(1); the network side of identity(2) on a memory network,
    and a second IPFS node connected to it that serves the peers' checkpoint files."""
    swarm = init_swarm(tmp_path / "swarm", manifest, founder=identity(1))
    tangle, _ = open_tangle(swarm.directory)
    net = MemoryNetwork(seed=0)
    ipfs, server = net.node("node"), net.node("server")
    await server.connect((await ipfs.addrs())[0])
    node = NetworkSide(ipfs=ipfs, sync=TangleSync(tangle, ipfs), identity=identity(2), manifest=manifest,
                       expect={k: (v.shape, v.dtype.name) for k, v in WEIGHTS.items()}, k=4,
                       fetch_timeout=fetch_timeout)
    return tangle, ipfs, server, node


async def test_future_dated_unfetchable_checkpoints_do_not_starve_an_honest_one(tmp_path):
    """Four throw-away keys announce, every round, checkpoints dated 9 minutes ahead whose
    CIDs nobody serves; one honest peer announces a checkpoint it serves. The honest one is
    merged by the second round; each liar costs one fetch timeout, then is passed over."""
    manifest = Manifest(checkpoint_interval=0, name="peers", model=model_config("iris-mlp"), pow_bits=2, merge="mean")
    tangle, ipfs, server, node = await _side_with_server(tmp_path, manifest, fetch_timeout=0.2)
    liars, honest = [identity(10 + i) for i in range(4)], identity(9)
    offer = Offer(weights={k: v + 0.01 for k, v in WEIGHTS.items()}, step=5, samples=50, total_samples=50, k=4)
    assert 9 * 60 * S < MAX_FUTURE_MS  # the ledger accepts such dates

    def lie() -> None:
        for liar in liars:
            cid = content_id(os.urandom(64))  # nobody has it
            node.tangle.append(liar, "checkpoint", checkpoint_payload(
                cid=cid, size=64, step=10**6, samples=10**6, base=[], data=[], metrics={}),
                time_ms=int(time.time() * 1000 + 9 * 60 * S))

    async def publish_honest(step: int) -> str:
        data = encode_checkpoint(Checkpoint(dict(WEIGHTS), node.tangle.swarm, step, 100))
        cid = await server.add(data)
        return node.tangle.append(honest, "checkpoint", checkpoint_payload(
            cid=cid, size=len(data), step=step, samples=100, base=[], data=[], metrics={})).id

    honest_tx = await publish_honest(10)
    merged, rounds = None, 0
    try:
        while merged is None and rounds < 6:
            rounds += 1
            lie()
            merged = await node.merge(offer)
        assert merged is not None, f"the honest checkpoint was never merged: {dict(node.rejections)}"
        assert rounds <= 2 and merged.tag == (honest_tx,)
        assert node.rejections["timeout"] == 4  # each liar fetched once
        # the liars keep lying; they are passed over while the honest peer keeps being merged
        for step in (20, 30, 40):
            lie()
            tx_id = await publish_honest(step)
            again = await node.merge(offer)
            assert again is not None and again.tag == (tx_id,)
        assert node.rejections["timeout"] == 4
        assert node.choice.backing_off_count(time.time() * 1000) == 4
    finally:
        await ipfs.close()
        await server.close()
        tangle.close()


async def test_the_final_merge_waits_a_short_time_for_a_peer_that_is_gone(tmp_path, monkeypatch):
    """A stopping node merges with every peer's freshest checkpoint; a peer that stopped first
    serves nothing, and the final merge gives it FINAL_FETCH_TIMEOUT, not the fetch timeout."""
    import learnae.node.network as network

    monkeypatch.setattr(network, "FINAL_FETCH_TIMEOUT", 0.2)
    manifest = Manifest(checkpoint_interval=0, name="peers", model=model_config("iris-mlp"), pow_bits=2, merge="mean")
    swarm = init_swarm(tmp_path / "swarm", manifest, founder=identity(1))
    tangle, _ = open_tangle(swarm.directory)
    ipfs = MemoryNetwork(seed=0).node("node")
    node = NetworkSide(ipfs=ipfs, sync=TangleSync(tangle, ipfs), identity=identity(2), manifest=manifest,
                       expect={k: (v.shape, v.dtype.name) for k, v in WEIGHTS.items()}, k=4,
                       fetch_timeout=30.0)
    gone = content_id(os.urandom(64))  # its author stopped: nobody serves it
    tangle.append(identity(3), "checkpoint", checkpoint_payload(
        cid=gone, size=64, step=10, samples=100, base=[], data=[], metrics={}))
    offer = Offer(weights=dict(WEIGHTS), step=5, samples=50, total_samples=50, k=4)
    try:
        started = time.monotonic()
        assert await node.merge_all(offer) is None
        assert time.monotonic() - started < 10  # the fetch timeout would have been 30 s
        assert node.rejections["timeout"] == 1
    finally:
        await ipfs.close()
        tangle.close()


async def test_a_revoked_authors_checkpoints_are_refused_those_from_before_the_revoke_too(tmp_path):
    manifest = Manifest(checkpoint_interval=0, name="peers", model=model_config("iris-mlp"), pow_bits=2, merge="mean")
    tangle, ipfs, server, node = await _side_with_server(tmp_path, manifest, fetch_timeout=1.0)
    offer = Offer(weights=dict(WEIGHTS), step=5, samples=50, total_samples=50, k=4)

    async def publish(author: Identity, step: int) -> str:
        data = encode_checkpoint(Checkpoint(dict(WEIGHTS), tangle.swarm, step, 100))
        return tangle.append(author, "checkpoint", checkpoint_payload(
            cid=await server.add(data), size=len(data), step=step, samples=100, base=[], data=[], metrics={})).id

    try:
        before = await publish(identity(9), 10)  # published while it was a member in good standing
        tangle.append(identity(1), "revoke", revoke_payload(identity(9).author_id, "poisoned checkpoints"))
        honest = await publish(identity(8), 10)
        merged = await node.merge(offer)
        assert merged is not None and merged.tag == (honest,)
        assert node.rejections["revoked"] == 1 and before not in merged.tag
        assert tangle.verify() == []  # the ledger keeps the earlier checkpoint: it verifies
    finally:
        await ipfs.close()
        await server.close()
        tangle.close()


async def test_a_newcomer_weighs_less_until_others_merged_its_checkpoints(tmp_path):
    manifest = Manifest(checkpoint_interval=0, name="peers", model=model_config("iris-mlp"), pow_bits=2, merge="mean",
                        newcomers=Newcomers(record=2, weight=0.25))
    tangle, ipfs, server, node = await _side_with_server(tmp_path, manifest, fetch_timeout=1.0)
    newcomer, founder = identity(9), identity(1)
    ones = {k: np.ones_like(v) for k, v in WEIGHTS.items()}
    offer = Offer(weights={k: np.zeros_like(v) for k, v in WEIGHTS.items()}, step=5, samples=100, total_samples=100, k=4)

    async def publish(author: Identity, step: int, base=()) -> str:
        data = encode_checkpoint(Checkpoint(dict(ones), tangle.swarm, step, 100))
        return tangle.append(author, "checkpoint", checkpoint_payload(
            cid=await server.add(data), size=len(data), step=step, samples=100, base=list(base), data=[],
            metrics={})).id

    try:
        first = await publish(newcomer, 10)
        merged = await node.merge(offer)  # 100 own samples at 0, the newcomer's 100 count 25
        np.testing.assert_allclose(merged.weights["dense/bias"], 25 / 125, rtol=1e-6)
        assert node.newcomer(newcomer.public_key) and not node.newcomer(founder.public_key)
        # the founder merges two of its checkpoints: it has a record now, and counts in full
        second = await publish(newcomer, 20)
        await publish(founder, 5, base=[first])
        await publish(founder, 6, base=[second])
        third = await publish(newcomer, 30)
        merged = await node.merge(offer)
        assert third in merged.tag and not node.newcomer(newcomer.public_key)
        assert node.record[newcomer.public_key] == 2
        # the founder's own checkpoints (never on probation) and the newcomer's, both in full
        np.testing.assert_allclose(merged.weights["dense/bias"], 200 / 300, rtol=1e-6)
    finally:
        await ipfs.close()
        await server.close()
        tangle.close()
