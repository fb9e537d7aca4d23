"""Benchmark: what the node's network loop pays per call as the ledger's history grows.

Usage: python bench/ingest.py [--sizes 0,1000,10000,50000] [--repeat 200]

For each size N (transactions made in advance and stored, not timed):

1. ``check_ingest``: a sensor that already published N data chunks posts chunk N+1; the
   node's whole check of the chunk and its signed transaction (size, form, signature,
   proof-of-work, CID, schema, and that the sensor's ``seq`` is new). Median and 95th
   percentile of ``--repeat`` calls.
2. ``status()``: the trainer node's ``/status`` answer (which the node also writes to
   ``status.json`` every second) on a ledger of N checkpoints from 8 authors: counts by
   kind, tips and each author's latest checkpoint, plus the rest of the status.

Both should be flat in N: the seq check is one index lookup and the ledger's counts and
latest checkpoints are kept up to date by inserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from learnae.content import content_id
from learnae.formats import Chunk, encode_chunk
from learnae.identity import Identity
from learnae.ingest import check_ingest
from learnae.ledger.tx import checkpoint_payload, data_payload, make_tx
from learnae.manifest import Manifest
from learnae.models import model_config
from learnae.node import NodeConfig, TrainerNode
from learnae.state import init_swarm, open_tangle

AUTHORS = 8
CKPT_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def timed(fn, repeat: int) -> tuple[float, float]:
    """(median, p95) of ``repeat`` calls of ``fn``, in milliseconds."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0) * 1000)
    runs.sort()
    return statistics.median(runs), runs[int(0.95 * (len(runs) - 1))]


def chunk_bytes(manifest: Manifest, seq: int, sensor: Identity) -> bytes:
    schema = manifest.schema
    x = np.zeros((4, *schema.features), dtype=schema.dtype)
    y = np.zeros(4, dtype="int64")
    return encode_chunk(Chunk(x, y, schema, sensor.author_id, seq, (0, 1)))


def data_tx(sensor: Identity, genesis, manifest: Manifest, seq: int, parent, data: bytes, now: int):
    payload = data_payload(cid=content_id(data), size=len(data), rows=4, schema=manifest.schema.to_dict(),
                           source="bench", seq=seq)
    return make_tx(sensor, kind="data", payload=payload, parents=[parent.id], swarm=genesis.id,
                   pow_bits=manifest.pow_bits, time_ms=now)


def history(n: int, make) -> list:
    """``n`` transactions, each approving the one before (``make(i, parent)``)."""
    txs, parent = [], None
    for i in range(n):
        parent = make(i, parent)
        txs.append(parent)
        if (i + 1) % 10000 == 0:
            print(f"  made {i + 1} of {n}", file=sys.stderr)
    return txs


def bench_size(root: Path, n: int, repeat: int) -> dict[str, tuple[float, float]]:
    manifest = Manifest(name="bench", model=model_config("digits-mlp"), pow_bits=2)
    swarm = init_swarm(root / f"swarm-{n}", manifest)
    genesis, now = swarm.genesis, swarm.genesis.time + 1
    sensor = Identity.generate()
    small = chunk_bytes(manifest, 0, sensor)  # the stored history's chunks need not exist anywhere
    data = history(n, lambda i, p: data_tx(sensor, genesis, manifest, i, p or genesis, small, now))
    authors = [Identity.generate() for _ in range(AUTHORS)]
    ckpts = history(n, lambda i, p: make_tx(
        authors[i % AUTHORS], kind="checkpoint", parents=[(p or genesis).id], swarm=genesis.id,
        pow_bits=manifest.pow_bits, time_ms=now + i,
        payload=checkpoint_payload(cid=CKPT_CID, size=9, step=i, samples=32, base=[], data=[],
                                   metrics={"loss": 0.1})))

    ingest_dir, status_dir = root / f"ingest-{n}", root / f"status-{n}"
    tangle, _ = open_tangle(ingest_dir, invite=swarm.invite)
    for i in range(0, n, 5000):
        tangle.insert_many(data[i:i + 5000])
    new = chunk_bytes(manifest, n, sensor)
    last = data[-1] if data else genesis
    tx = data_tx(sensor, genesis, manifest, n, last, new, now + 1)
    figures = {"check_ingest": timed(lambda: check_ingest(manifest, tangle, new, tx.raw), repeat)}
    tangle.close()

    node = TrainerNode(NodeConfig(invite=swarm.invite, state=status_dir))
    node.tangle, _ = open_tangle(status_dir, invite=swarm.invite)
    for i in range(0, n, 5000):
        node.tangle.insert_many(ckpts[i:i + 5000])
    assert len(node.status()["ledger"]["checkpoints_by_author"]) == (AUTHORS if n >= AUTHORS else n)
    figures["status"] = timed(node.status, repeat)
    node.tangle.close()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,1000,10000,50000",
                    help="earlier transactions in the ledger, comma-separated (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=200, help="timed calls per figure (default: %(default)s)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'earlier txs':>12}  {'check_ingest ms (median / p95)':>31}  {'status() ms (median / p95)':>27}")
    with tempfile.TemporaryDirectory(prefix="learnae-bench-ingest-") as tmp:
        for n in sizes:
            f = bench_size(Path(tmp), n, args.repeat)
            (ci, ci95), (st, st95) = f["check_ingest"], f["status"]
            print(f"{n:>12,}  {ci:>14.2f} / {ci95:<14.2f}  {st:>12.2f} / {st95:<12.2f}", flush=True)


if __name__ == "__main__":
    main()
