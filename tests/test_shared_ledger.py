"""The shared ledger of large simulations (learnae.local.shared): a view answers as a node's own
tangle holding the same transactions would; gossip follows the memory network's links, gap repair
brings ancestors, sweeps heal partitions and closed views catch up; a flood is checked once;
simulations on it agree with simulations on tangles of their own."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

import pytest
from conftest import virtual_clock
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.errors import ConfigError, LedgerError
from learnae.identity import Identity
from learnae.ipfs.memory import MemoryNetwork
from learnae.ledger.reader import LedgerReader
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import attestation_payload, checkpoint_payload, data_payload, make_tx
from learnae.local.procdriver import check_supported
from learnae.local.scenario import parse_scenario
from learnae.local.shared import LedgerView, SharedLedger, ViewSync
from learnae.local.simulation import simulate
from learnae.node.upkeep import Upkeep

POW = 2
CID = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


FOUNDER = identity(1)
GENESIS = make_tx(FOUNDER, kind="genesis", payload={"name": "shared"}, parents=[], swarm=None, pow_bits=POW)
NAMES = ["a", "b", "c", "d"]
LEDGER_CODES = ("undecodable", "bad-signature", "low-pow")  # what a flood's transactions are refused as
AUTHORS = {name: identity(10 + i) for i, name in enumerate(NAMES)}


def checkpoint(step: int, base: list[str] = ()) -> dict:
    return checkpoint_payload(cid=CID, size=100, step=step, samples=10, base=list(base), data=[],
                              metrics={"accuracy": 0.5})


def data(seq: int) -> dict:
    return data_payload(cid=CID, size=1, rows=1, schema={"x": [2]}, source="probe", seq=seq)


@contextlib.asynccontextmanager
async def swarm(tmp_path, *, delay_ms: float = 0.0, interval: float = 1.0) -> AsyncIterator[tuple[MemoryNetwork, SharedLedger]]:
    """Four nodes on a line a - b - c - d, each with a view; the sweeps running; closed after."""
    net = MemoryNetwork(seed=1)
    nodes = [net.node(n) for n in NAMES]
    for left, right in zip(nodes, nodes[1:], strict=False):
        await left.connect(f"/memory/{right.id}/p2p/{right.id}")
    if delay_ms:
        net.set_delay(delay_ms)
    loop = asyncio.get_running_loop()
    ledger = SharedLedger(tmp_path / "ledger.db", genesis_raw=GENESIS.raw, pow_bits=POW, max_tx_bytes=8192,
                          net=net, announce_interval=interval, clock_ms=lambda: int(loop.time() * 1000) + 1)
    for name in NAMES:
        ledger.view(name)
    ledger.start()
    try:
        yield net, ledger
    finally:
        await ledger.close()


async def publish(ledger: SharedLedger, name: str, kind: str, payload: dict, **kw):
    return await ViewSync(ledger, ledger.views[name]).append(AUTHORS[name], kind, payload,
                                                              rng=random.Random(len(ledger.txs)), **kw)


@virtual_clock
async def test_a_view_answers_as_a_tangle_holding_the_same_transactions(tmp_path):
    """Each reader method of a view against a node's own SQLite tangle given the same
    transactions in the same order: the protocol's promise, method by method."""
    async with swarm(tmp_path) as (net, ledger):
        first = [await publish(ledger, name, "checkpoint", checkpoint(1)) for name in NAMES]
        await publish(ledger, "a", "data", data(0))
        await publish(ledger, "b", "checkpoint", checkpoint(2, base=[first[0].id, first[2].id]))
        await publish(ledger, "c", "attestation", attestation_payload(
            checkpoint=first[1].id, method="holdout", verdict="agree", code="ok", figures={"loss": 0.25}),
            approve=first[1].id)
        await publish(ledger, "d", "checkpoint", checkpoint(2))
        view: LedgerReader = ledger.views["c"]
        assert isinstance(view, LedgerView)
        own = Tangle(tmp_path / "own.db", genesis_raw=GENESIS.raw, pow_bits=POW, max_tx_bytes=8192)
        try:
            for i in view._arrivals[1:]:  # the genesis is there already
                assert own.insert(ledger.txs[i]).status == "inserted"
            assert view.count() == own.count() == 9
            assert view.tips() == own.tips() and view.pending == own.pending == 0
            for since in ("checkpoints_since", "data_since"):
                for cursor in (0, 3):
                    mine, _ = getattr(view, since)(cursor)
                    theirs, _ = getattr(own, since)(cursor)
                    assert [t.id for t in mine] == [t.id for t in theirs], (since, cursor)
            assert {a: t.id for a, t in view.latest_checkpoint_per_author().items()} == \
                   {a: t.id for a, t in own.latest_checkpoint_per_author().items()}
            assert [a._replace(seq=0) for a in view.attestations()] == \
                   [a._replace(seq=0) for a in own.attestations()]
            assert [a.tx for a in view.attestations_since(0)[0]] == [a.tx for a in own.attestations_since(0)[0]]
            assert view.attestations(subject=AUTHORS["a"].public_key) == []
            assert all(view.get(t.id) == own.get(t.id) for t in ledger.txs)
            assert view.swarm == own.swarm == GENESIS.id and view.roll().revoked(AUTHORS["a"].public_key) is False
        finally:
            own.close()


@virtual_clock
async def test_gossip_follows_links_partitions_and_delays(tmp_path):
    async with swarm(tmp_path, delay_ms=100, interval=60) as (net, ledger):
        tx = await publish(ledger, "a", "data", data(0))
        assert tx.id in ledger.views["a"] and tx.id not in ledger.views["d"]  # d is three hops away
        await asyncio.sleep(0.25)
        assert tx.id in ledger.views["b"] and tx.id in ledger.views["c"] and tx.id not in ledger.views["d"]
        await asyncio.sleep(0.1)
        assert tx.id in ledger.views["d"]
        net.partition(["a", "b"], ["c", "d"])
        apart = await publish(ledger, "a", "data", data(1))
        await asyncio.sleep(1)
        assert apart.id in ledger.views["b"] and apart.id not in ledger.views["c"]
        net.heal()
        assert ledger.sweep() == 1  # one hop a sweep: c takes it from b ...
        assert apart.id in ledger.views["c"] and apart.id not in ledger.views["d"]
        assert ledger.sweep() == 1 and apart.id in ledger.views["d"]  # ... and d from c
        assert ledger.sweep() == 0  # in step
        assert len({tuple(v.tips()) for v in ledger.views.values()}) == 1


@virtual_clock
async def test_a_transaction_arrives_with_the_ancestors_a_node_lacks(tmp_path):
    async with swarm(tmp_path, interval=600) as (net, ledger):
        net.partition(["a", "b"], ["c", "d"])
        left = await publish(ledger, "b", "data", data(0))
        assert left.id not in ledger.views["c"]
        net.heal()
        child = await publish(ledger, "b", "data", data(1))
        assert left.id in child.parents or any(left.id in ledger.txs[ledger.index[p]].parents for p in child.parents)
        view = ledger.views["d"]
        assert child.id in view and left.id in view  # gap repair: with its parent
        order = [ledger.txs[i].id for i in view._arrivals]
        assert order.index(left.id) < order.index(child.id)


@virtual_clock
async def test_a_closed_view_misses_gossip_and_catches_up_when_reopened(tmp_path):
    async with swarm(tmp_path, interval=1.0) as (net, ledger):
        ledger.views["d"].close()
        tx = await publish(ledger, "a", "data", data(0))
        await asyncio.sleep(3)
        assert tx.id not in ledger.views["d"]
        net.down("c")  # the only way to d
        reopened = ledger.view("d")
        await asyncio.sleep(3)
        assert tx.id not in reopened
        net.up("c")
        await asyncio.sleep(1.5)
        assert tx.id in reopened


@virtual_clock
async def test_a_flood_is_checked_once_and_reaches_nobody(tmp_path):
    async with swarm(tmp_path) as (net, ledger):
        good = await publish(ledger, "a", "data", data(0))
        forged = bytearray(good.raw)
        forged[-1] ^= 0xFF
        results = ledger.offer([bytes(forged), b"\x00" * 50])
        assert [r.status for r in results] == ["rejected", "rejected"]
        assert sum(ledger.store.rejections.values()) == 2
        assert all(v.count() == 2 for v in ledger.views.values())


@virtual_clock
async def test_tips_are_the_views_and_approve_must_be_held(tmp_path):
    async with swarm(tmp_path) as (net, ledger):
        net.partition(["a"], ["b", "c", "d"])
        lone = await publish(ledger, "a", "data", data(0))
        with pytest.raises(LedgerError, match="not in this ledger"):
            await publish(ledger, "b", "attestation", attestation_payload(
                checkpoint=lone.id, method="holdout", verdict="agree", code="ok", figures={}), approve=lone.id)
        mine = await publish(ledger, "b", "data", data(1))
        assert mine.parents == (GENESIS.id,)  # b's only tip: a's transaction is not in its view
        assert ledger.views["b"].tips() == [mine.id]


def test_ledger_upkeep_needs_a_nodes_own_tangle():
    class Side:  # what Upkeep reads of a network side on a shared ledger
        sync = ViewSync.__new__(ViewSync)

    upkeep = Upkeep.__new__(Upkeep)
    upkeep.net = Side()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="own tangle"):
        upkeep.prune()


def test_the_ledger_key_is_checked_and_the_processes_driver_refuses_shared():
    with pytest.raises(ConfigError, match="ledger must be one of own, shared"):
        parse_scenario({"ledger": "global"})
    with pytest.raises(ConfigError, match="memory driver"):
        check_supported(parse_scenario({"ledger": "shared"}))


@pytest.mark.parametrize("faults", [
    [{"kind": "partition", "at": 2, "halves": True}, {"kind": "heal", "at": 5}],
    [{"kind": "crash", "node": "n3", "at": 2}, {"kind": "restart", "node": "n3", "at": 4},
     {"kind": "loss", "p": 0.3, "at": 1, "until": 5}],
    [{"kind": "byzantine", "nodes": ["n11"], "behaviour": "flood", "count": 10}],
], ids=["partition-heal", "crash-restart-loss", "flood"])
def test_a_simulation_on_the_shared_ledger_agrees_with_one_on_own_tangles(faults):
    """The same 12-node scenario on both ledgers: the invariants' figures hold on both, and the
    final mean accuracies differ by little (the runs differ in tip choice and gossip timing)."""
    base = {"name": "t", "seed": 5, "nodes": 12, "rounds": 8, "round_seconds": 2.0, "merge": "median",
            "faults": faults}
    own = simulate(parse_scenario(base))
    shared = simulate(parse_scenario({**base, "ledger": "shared"}))
    for run in (own, shared):
        assert run.final_in_step and not run.acked_missing and not run.restart_missing
        assert not run.verify_problems and not run.fetch_missing
    def final(run):
        last = [h[max(h)] for n, h in run.accuracy.items() if n in run.honest and h]
        return sum(last) / len(last)
    assert abs(final(own) - final(shared)) < 0.03, (final(own), final(shared))
    if faults[0]["kind"] == "byzantine":  # 10 invalid transactions a round, each refused once
        assert sum(shared.rejections.get(code, 0) for code in LEDGER_CODES) == 10 * 8
        assert sum(own.rejections.get(code, 0) for code in LEDGER_CODES) == 10 * 8 * 11  # by each other node
