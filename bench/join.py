"""Benchmark of a late join: importing a pruned ledger's snapshot against replaying the history.

Usage: python bench/join.py [--txs 1000000] [--authors 50] [--keep 16] [--data-every 50]

1. Makes (once; cached under ``~/.cache/learnae-bench/``, not timed) a ledger of ``--txs``
   signed transactions, pow_bits 0: ``--authors`` trainers publishing checkpoints (each
   merging a recent checkpoint of another author, as ``base``) and, every ``--data-every``-th
   transaction, a sensor's data chunk; each approves two of the 20 latest, 10 ms apart.
2. Slow join: replays all of them into a fresh store with ``insert_many`` in batches of 1,000
   (decode, full validation, signature, store; one fsync per batch).
3. Prune: that store pruned to each author's newest ``--keep`` checkpoints (window: the
   whole history, so the count decides), in one call, and a copy in steps of 5,000 (the node's
   step) for the longest step.
4. Snapshot: exported from the pruned store; its size.
5. Fast join: imports the snapshot into a fresh store (every transaction validated), then
   ``verify()`` of the joined store.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from learnae.content import content_id
from learnae.identity import Identity
from learnae.ledger.tangle import Tangle
from learnae.ledger.tx import checkpoint_payload, data_payload, make_tx

T0 = 1_700_000_000_000
STEP_MS = 10
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "learnae-bench"
VERSION = 3  # of the cached ledger's recipe: change it when make_ledger changes


def _identity(n: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(n.to_bytes(32, "big")))


def make_ledger(n: int, authors: int, data_every: int, seed: int = 0) -> list[bytes]:
    """The genesis and ``n`` transactions' bytes, parents first (deterministic for the arguments)."""
    rng = random.Random(seed)
    trainers = [_identity(1 + k) for k in range(authors)]
    sensors = [_identity(10_000 + k) for k in range(max(1, authors // 10))]
    genesis = make_tx(trainers[0], kind="genesis", payload={"name": "bench-join"}, parents=[], swarm=None,
                      pow_bits=0, time_ms=T0)
    cids = [content_id(b"file %d" % k) for k in range(1000)]
    raws, ids = [genesis.raw], [genesis.id]
    recent_checkpoints: list[str] = []
    seqs = [0] * len(sensors)
    checkpoints = 0
    started = time.perf_counter()
    for i in range(n):
        parents = sorted(set(rng.sample(ids[-20:], min(2, len(ids)))))
        t = T0 + (i + 1) * STEP_MS
        if data_every and i % data_every == data_every - 1:
            k = rng.randrange(len(sensors))
            payload = data_payload(cid=cids[i % 1000], size=4096, rows=64, schema={"features": [64]},
                                   source="probe", seq=seqs[k])
            seqs[k] += 1
            tx = make_tx(sensors[k], kind="data", payload=payload, parents=parents, swarm=genesis.id,
                         pow_bits=0, time_ms=t)
        else:
            base = [rng.choice(recent_checkpoints[-authors:])] if recent_checkpoints else []
            payload = checkpoint_payload(cid=cids[i % 1000], size=4_000_000, step=i, samples=3200, base=base,
                                         data=[], metrics={"loss": 0.5, "accuracy": 0.9})
            tx = make_tx(trainers[checkpoints % authors], kind="checkpoint", payload=payload, parents=parents,
                         swarm=genesis.id, pow_bits=0, time_ms=t)
            recent_checkpoints.append(tx.id)
            checkpoints += 1
            del recent_checkpoints[:-4 * authors]
        raws.append(tx.raw)
        ids.append(tx.id)
        if (i + 1) % 100_000 == 0:
            print(f"  made {i + 1} txs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return raws


def cached_ledger(n: int, authors: int, data_every: int) -> list[bytes]:
    """``make_ledger``'s result, from the cache file if there is one (written atomically)."""
    path = CACHE / f"join-v{VERSION}-{n}-{authors}-{data_every}.bin"
    if path.exists():
        data = path.read_bytes()
        raws, at = [], 0
        while at < len(data):
            (size,) = struct.unpack_from(">I", data, at)
            raws.append(data[at + 4 : at + 4 + size])
            at += 4 + size
        return raws
    raws = make_ledger(n, authors, data_every)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for raw in raws:
            f.write(struct.pack(">I", len(raw)) + raw)
    tmp.replace(path)
    return raws


def _store(path: Path, genesis: bytes, last_ms: int) -> Tangle:
    return Tangle(path, genesis_raw=genesis, pow_bits=0, max_tx_bytes=4096, clock=lambda: last_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--txs", type=int, default=1_000_000, help="transactions in the history")
    parser.add_argument("--authors", type=int, default=50, help="trainers publishing checkpoints")
    parser.add_argument("--keep", type=int, default=16, help="checkpoints kept per author")
    parser.add_argument("--data-every", type=int, default=50, help="one data transaction in this many")
    parser.add_argument("--batch", type=int, default=1000, help="insert_many batch of the replay")
    args = parser.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"== join ({args.txs} txs, {args.authors} authors, 1 data tx in {args.data_every}, "
          f"keep {args.keep} checkpoints per author, pow_bits 0)")
    started = time.perf_counter()
    raws = cached_ledger(args.txs, args.authors, args.data_every)
    print(f"history                 {len(raws)} txs, {sum(map(len, raws)) / 1e6:.0f} MB"
          f" (made or read in {time.perf_counter() - started:.0f} s; not timed below)")
    last_ms = T0 + len(raws) * STEP_MS
    with tempfile.TemporaryDirectory(prefix="learnae-bench-join-") as tmp:
        d = Path(tmp)
        full = _store(d / "full.sqlite", raws[0], last_ms)
        start = time.perf_counter()
        for i in range(1, len(raws), args.batch):
            results = full.insert_many(raws[i : i + args.batch])
            assert all(r.status == "inserted" for r in results), results[0]
        replay = time.perf_counter() - start
        print(f"slow join (replay)      {replay:8.1f} s   ({full.count()} txs, {full.count() / replay:.0f} tx/s,"
              f" file {(d / 'full.sqlite').stat().st_size / 1e6:.0f} MB)")
        full.close()
        shutil.copy(d / "full.sqlite", d / "steps.sqlite")

        pruned = _store(d / "full.sqlite", raws[0], last_ms)
        window = len(raws) * STEP_MS
        stats = pruned.prune(last_ms, window_ms=window, keep_per_author=args.keep)
        print(f"prune (one call)        {stats.seconds:8.1f} s   ({stats.pruned} pruned, {stats.kept} kept:"
              f" {pruned.counts()}; {stats.frontier} entry points)")
        steps = _store(d / "steps.sqlite", raws[0], last_ms)
        longest, calls, start = 0.0, 0, time.perf_counter()
        while True:
            step = steps.prune(last_ms, window_ms=window, keep_per_author=args.keep, limit=5000)
            longest, calls = max(longest, step.seconds), calls + 1
            if not step.more:
                break
        took = time.perf_counter() - start
        print(f"prune (steps of 5,000)  {took:8.1f} s   ({calls} calls, mean {took / calls * 1000:.0f} ms,"
              f" the longest {longest * 1000:.0f} ms)")
        assert steps.order() == pruned.order()
        steps.close()

        start = time.perf_counter()
        snapshot = pruned.export_snapshot()
        print(f"snapshot                {time.perf_counter() - start:8.2f} s   ({len(snapshot) / 1e6:.1f} MB,"
              f" {pruned.count()} txs)")
        joined = _store(d / "joined.sqlite", raws[0], last_ms)
        imported = joined.import_snapshot(snapshot)
        assert imported.rejected == 0 and imported.pending == 0, imported
        print(f"fast join (import)      {imported.seconds:8.1f} s   ({imported.inserted} txs validated and stored,"
              f" {imported.frontier} entry points; {replay / imported.seconds:.0f}x faster than the replay)")
        start = time.perf_counter()
        problems = joined.verify()
        assert not problems and joined.order() == pruned.order() and joined.tips() == pruned.tips(), problems[:3]
        print(f"verify (joined store)   {time.perf_counter() - start:8.1f} s   (no problems; same order and tips"
              " as the pruned store)")
        joined.close()
        pruned.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
