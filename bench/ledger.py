"""Benchmark of the ledger: ingest, tip selection, verify, convergence after a partition.

Usage: python bench/ledger.py [--txs 100000] [--pow-bits 8] [--partition-txs 5000]

1. Makes ``--txs`` signed, mined transactions from 8 authors, each approving two
   recent ones (made in advance; not timed).
2. Ingest: inserts them into a fresh SQLite tangle in batches of 1,000 on one
   core: decode, full validation, signature, proof-of-work, store (WAL, fsync).
3. Tip selection: median and 95th percentile of ``select_tips`` (MCMC walks) on
   that tangle.
4. Verify: ``Tangle.verify()`` over every stored transaction.
5. Convergence: two nodes on the ``memory`` network, partitioned, each issue
   ``--partition-txs`` transactions; after the heal, the time until both hold
   the same set and the same tips.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from learnae.identity import Identity
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import make_tx

AUTHORS = 8
PAYLOAD = {"cid": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "size": 0, "rows": 1,
           "schema": {"features": [1]}, "source": "bench", "seq": 0}


def make_ledger(n: int, pow_bits: int, seed: int = 0):
    """Return (genesis, [txs]) — ``n`` txs, each approving two of the 20 latest."""
    rng = random.Random(seed)
    authors = [Identity.generate() for _ in range(AUTHORS)]
    genesis = make_tx(authors[0], kind="genesis", payload={"name": "bench"}, parents=[], swarm=None,
                      pow_bits=pow_bits)
    txs, ids, t = [], [genesis.id], genesis.time
    for i in range(n):
        recent = ids[-20:]
        parents = sorted(set(rng.sample(recent, min(2, len(recent)))))
        t += 1
        payload = dict(PAYLOAD, seq=i)
        tx = make_tx(authors[i % AUTHORS], kind="data", payload=payload, parents=parents,
                     swarm=genesis.id, pow_bits=pow_bits, time_ms=t)
        txs.append(tx)
        ids.append(tx.id)
        if (i + 1) % 20000 == 0:
            print(f"  made {i + 1} txs", file=sys.stderr)
    return genesis, txs


def bench_ingest(path: Path, genesis, txs, pow_bits: int) -> Tangle:
    tangle = Tangle(path, genesis_raw=genesis.raw, pow_bits=pow_bits, max_tx_bytes=4096,
                    clock=lambda: txs[-1].time)
    raws = [tx.raw for tx in txs]
    start = time.perf_counter()
    for i in range(0, len(raws), 1000):
        results = tangle.insert_many(raws[i:i + 1000])
        assert all(r.status == "inserted" for r in results), results[0]
    seconds = time.perf_counter() - start
    print(f"ingest                  {len(raws) / seconds:8.0f} tx/s   ({len(raws)} txs in {seconds:.1f} s; "
          "target >= 5,000)")
    return tangle


def bench_tips(tangle: Tangle, runs: int = 200) -> None:
    rng = random.Random(1)
    tangle.select_tips(rng=rng)  # first use builds the walk region
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        tangle.select_tips(rng=rng)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(f"tip selection           median {statistics.median(times):.2f} ms, p95 "
          f"{times[int(0.95 * len(times))]:.2f} ms on {tangle.count()} txs (target: median <= 20 ms)")


def bench_verify(tangle: Tangle) -> None:
    start = time.perf_counter()
    problems = tangle.verify()
    seconds = time.perf_counter() - start
    assert not problems, problems[:3]
    print(f"verify                  {seconds:8.1f} s      ({tangle.count()} txs, no problems; target <= 30 s)")


def bench_convergence(n: int, pow_bits: int) -> None:
    from learnae.local.converge import partition_benchmark

    seconds = asyncio.run(partition_benchmark(n_each=n, pow_bits=pow_bits))["convergence_s"]
    print(f"convergence after heal  {seconds:8.2f} s      ({n} + {n} txs issued while partitioned, "
          "memory network; target <= 10 s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txs", type=int, default=100_000, help="size of the ledger")
    parser.add_argument("--pow-bits", type=int, default=8, help="proof-of-work difficulty")
    parser.add_argument("--partition-txs", type=int, default=5000, help="txs per side while partitioned")
    args = parser.parse_args(argv)
    print(f"== ledger ({args.txs} txs, pow_bits={args.pow_bits})")
    start = time.perf_counter()
    genesis, txs = make_ledger(args.txs, args.pow_bits)
    print(f"made                    {len(txs)} txs in {time.perf_counter() - start:.1f} s (not timed below)")
    with tempfile.TemporaryDirectory(prefix="learnae-bench-") as tmp:
        tangle = bench_ingest(Path(tmp) / "tangle.sqlite", genesis, txs, args.pow_bits)
        bench_tips(tangle)
        bench_verify(tangle)
        tangle.close()
    if args.partition_txs:
        bench_convergence(args.partition_txs, args.pow_bits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
