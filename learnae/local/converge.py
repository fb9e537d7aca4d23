"""Whether tangles converged, and the partition experiment that measures it.

:func:`in_step` and :func:`wait_in_step` tell when a set of tangles holds the same
transactions (the fault harness and the demo wait for it); :func:`reconcile` brings stopped
nodes' ledgers together (the process demo); :func:`partition_benchmark`
partitions two memory-network nodes, lets each append, heals and times the convergence
(``bench/ledger.py``).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from learnae.identity import Identity
from learnae.ledger.sync import TangleSync
from learnae.ledger.tangle import Tangle
from learnae.local.shared import LedgerView

__all__ = ["in_step", "partition_benchmark", "reconcile", "wait_in_step"]


def in_step(tangles: Sequence[Tangle | LedgerView]) -> bool:
    """Whether the tangles hold the same transactions: same tips, same count, nothing pending.

    Same tips imply the same set: every stored transaction is a tip or an ancestor of one.
    """
    first = tangles[0]
    tips, count = first.tips(), first.count()
    return all(t.pending == 0 and t.count() == count and t.tips() == tips for t in tangles)


async def wait_in_step(tangles: Sequence[Tangle], timeout: float, interval: float = 0.02) -> float:
    """Wait until :func:`in_step`; return the seconds waited (loop clock).

    Raises:
        TimeoutError: not in step within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not in_step(tangles):
        if loop.time() - start > timeout:
            raise TimeoutError(f"tangles not in step within {timeout} s: counts "
                               f"{[t.count() for t in tangles]}, pending {[t.pending for t in tangles]}")
        await asyncio.sleep(interval)
    return loop.time() - start


def reconcile(tangles: Sequence[Tangle]) -> list[int]:
    """Give each of the (writable) tangles the transactions the others hold, as anti-entropy would.

    For stopped nodes whose last transactions did not reach every peer before the stop: each
    transaction is inserted with full validation (:meth:`Tangle.insert_many`), so nothing a
    tangle would refuse from gossip gets in. Returns how many each tangle stored.
    """
    raws = [raw for t in tangles for _, raw in t.iter_raw()]
    return [sum((r.status == "inserted") + len(r.released) for r in t.insert_many(raws)) for t in tangles]


async def partition_benchmark(
    n_each: int = 5000, *, pow_bits: int = 4, timeout: float = 120.0, directory: str | Path | None = None,
    seed: int = 0, **sync_options: Any,
) -> dict:
    """Time two partitioned tangles take to converge once healed.

    Two nodes on a memory network, partitioned while each appends ``n_each`` transactions
    (and publishes them, reaching nobody); then healed. Returns ``{"n_each", "total",
    "convergence_s", "stats": [per node]}``: the loop seconds from ``heal()`` until both
    tangles are :func:`in_step`.

    Each side's transactions form a chain (a single node's tangle has one tip), the deepest
    case for gap repair. ``directory`` holds the SQLite files (default: a temporary one).

    Raises:
        TimeoutError: not converged within ``timeout`` seconds.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from learnae.ipfs.memory import MemoryNetwork
    from learnae.ledger.tx import data_payload, make_tx

    ids = [Identity(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)) for n in (1, 2)]
    genesis = make_tx(ids[0], kind="genesis", payload={"name": "bench"}, parents=[], swarm=None,
                      pow_bits=pow_bits)
    cid = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        tangles = [Tangle(Path(tmp) / f"{name}.db", genesis_raw=genesis.raw, pow_bits=pow_bits,
                          max_tx_bytes=4096) for name in "ab"]
        net = MemoryNetwork(seed=seed)
        nodes = [net.node(name) for name in "ab"]
        await nodes[1].connect((await nodes[0].addrs())[0])
        syncers = [TangleSync(t, n, rng=random.Random(seed + k), **sync_options)
                   for k, (t, n) in enumerate(zip(tangles, nodes, strict=True))]
        try:
            for s in syncers:
                await s.start()
            net.partition(["a"], ["b"])
            for identity, s in zip(ids, syncers, strict=True):
                for seq in range(n_each):
                    payload = data_payload(cid=cid, size=1, rows=1, schema={"x": [2]}, source="bench", seq=seq)
                    await s.append(identity, "data", payload)
            net.heal()
            elapsed = await wait_in_step(tangles, timeout)
            return {"n_each": n_each, "total": tangles[0].count(), "convergence_s": elapsed,
                    "stats": [dict(s.stats) for s in syncers]}
        finally:
            for s in syncers:
                await s.stop()
            for node in nodes:
                await node.close()
            for t in tangles:
                t.close()
