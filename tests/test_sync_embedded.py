"""Tangle sync between three real (embedded Kubo) nodes in one private swarm on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from conftest import eventually
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.identity import Identity
from learnae.ledger.sync import TangleSync
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import data_payload, make_tx
from learnae.local.converge import wait_in_step

pytestmark = pytest.mark.slow

POW = 4


def identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


GENESIS = make_tx(identity(1), kind="genesis", payload={"name": "sync"}, parents=[], swarm=None, pow_bits=POW)


def payload(seq: int) -> dict:
    return data_payload(cid="bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e", size=1, rows=1,
                        schema={"x": [2]}, source="probe", seq=seq)


async def _mesh(nodes) -> bool:
    for a, b in itertools.combinations(nodes, 2):
        if b.id not in await a.peers():
            return False
    return True


async def test_three_embedded_nodes_converge(tmp_path, swarm_key):
    from learnae.ipfs.embedded import EmbeddedNode

    nodes, tangles, syncers = [], [], []
    try:
        for name in "abc":
            nodes.append(await EmbeddedNode.start(tmp_path / name, swarm_key))
            tangles.append(Tangle(tmp_path / f"{name}.db", genesis_raw=GENESIS.raw, pow_bits=POW,
                                  max_tx_bytes=4096))
        for a, b in itertools.combinations(nodes, 2):
            await b.connect((await a.addrs())[0])
        await eventually(lambda: _mesh(nodes), timeout=30)
        for tangle, node in zip(tangles, nodes, strict=True):
            syncers.append(TangleSync(tangle, node, announce_interval=1.0))
        authors = [identity(20 + k) for k in range(3)]
        issued = []

        async def issue(count: int, active) -> None:
            for seq in range(count):
                for k in active:
                    issued.append(await syncers[k].append(authors[k], "data", payload(seq)))
                await asyncio.sleep(0.05)

        # A and B issue while C's syncer is not running yet (C must catch up by anti-entropy
        # and gap repair), then all three issue at once.
        await syncers[0].start()
        await syncers[1].start()
        await issue(10, [0, 1])
        await syncers[2].start()
        await issue(8, [0, 1, 2])
        loop = asyncio.get_running_loop()
        start = loop.time()
        await wait_in_step(tangles, timeout=60)
        print(f"\n3 embedded nodes: {len(issued)} transactions in step {loop.time() - start:.2f} s "
              "after the last was issued")
        assert set(tangles[0].order()) == {GENESIS.id} | {tx.id for tx in issued}
        for syncer, tangle in zip(syncers, tangles, strict=True):
            assert not tangle.rejections and tangle.verify() == []
            assert syncer.stats["own"] > 0 and syncer.stats["stored"] > 0
        assert syncers[2].stats["wants_sent"] > 0  # C asked for what it missed
    finally:
        for syncer in syncers:
            await syncer.stop()
        for node in nodes:
            await node.close()
        for tangle in tangles:
            tangle.close()
