"""Benchmark of the content layer: CID throughput and memory.

Usage: python bench/content.py [--size-mb 256] [--transfer-mb 100]

Writes a random file to a temporary directory and times ``file_cid`` over it
against plain ``hashlib.sha256`` reading the same file the same way (readinto a
256 KiB buffer). The file is read once first so both run from the page cache;
each figure is the best of five interleaved runs. Memory: the tracemalloc peak of one
``file_cid`` run over the file and over one a sixteenth its size (equal peaks
mean constant memory), and the process's peak resident set (ru_maxrss).

Then add-then-fetch: two embedded Kubo nodes in a private swarm on 127.0.0.1;
node A adds a random checkpoint-sized object, node B fetches it by CID. Prints
the add rate, the fetch rate and the end-to-end rate (size over add + fetch).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from learnae.content import CHUNK_SIZE, file_cid
from learnae.ipfs import privnet
from learnae.ipfs.embedded import EmbeddedNode

MB = 1_000_000


def write_random_file(path: Path, size: int) -> None:
    """Write ``size`` random bytes to ``path``, 1 MiB at a time."""
    with open(path, "wb") as out:
        for start in range(0, size, 1 << 20):
            out.write(os.urandom(min(1 << 20, size - start)))


def sha256_file(path: Path) -> str:
    """Plain sha256 of the file, read as file_cid reads it: the baseline."""
    digest = hashlib.sha256()
    view = memoryview(bytearray(CHUNK_SIZE))
    with open(path, "rb", buffering=0) as stream:
        while n := stream.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


def best_seconds(cases: dict[str, Callable[[], object]], runs: int = 5) -> dict[str, float]:
    """Best wall time of each case; runs are interleaved so that a busy spell hits all alike."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(runs):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def traced_peak(fn, *args) -> int:
    """Peak bytes allocated by Python while ``fn(*args)`` runs."""
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_cid(path: Path) -> None:
    """Print CID throughput against plain sha256, and memory."""
    size = path.stat().st_size
    sha256_file(path)  # warm the page cache
    best = best_seconds({"sha256": lambda: sha256_file(path), "v0": lambda: file_cid(path),
                         "v1": lambda: file_cid(path, cid_version=1)})
    base, v0, v1 = best["sha256"], best["v0"], best["v1"]
    print(f"file                    {size / MB:.0f} MB, {-(-size // CHUNK_SIZE)} chunks")
    print(f"hashlib.sha256          {size / MB / base:8.0f} MB/s")
    print(f"file_cid (CIDv0)        {size / MB / v0:8.0f} MB/s   ratio {base / v0:.2f}")
    print(f"file_cid (CIDv1 raw)    {size / MB / v1:8.0f} MB/s   ratio {base / v1:.2f}")

    small = path.with_name("small.bin")
    write_random_file(small, size // 16)
    peak_small = traced_peak(file_cid, small)
    peak_full = traced_peak(file_cid, path)
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"tracemalloc peak        {peak_full / 1024:8.0f} KiB over the whole file "
          f"({peak_small / 1024:.0f} KiB over a file 1/16 its size)")
    print(f"ru_maxrss               {maxrss_kib / 1024:8.0f} MiB (whole process)")


async def bench_transfer(tmp: Path, size: int) -> None:
    """Print add, fetch and end-to-end throughput of ``size`` bytes between two embedded nodes."""
    key = privnet.new_swarm_key()
    a = await EmbeddedNode.start(tmp / "kubo-a", key)
    b = await EmbeddedNode.start(tmp / "kubo-b", key)
    try:
        await b.connect((await a.addrs())[0])
        data = os.urandom(size)
        start = time.perf_counter()
        cid = await a.add(data)
        added = time.perf_counter()
        fetched = await b.cat(cid, timeout=600)
        done = time.perf_counter()
        assert fetched == data, "fetched bytes differ"
    finally:
        await a.close()
        await b.close()
    add_s, fetch_s = added - start, done - added
    print(f"object                  {size / MB:.0f} MB, {cid}")
    print(f"add (A)                 {size / MB / add_s:8.0f} MB/s  ({add_s:.2f} s)")
    print(f"fetch (B from A)        {size / MB / fetch_s:8.0f} MB/s  ({fetch_s:.2f} s)")
    print(f"add then fetch          {size / MB / (add_s + fetch_s):8.0f} MB/s  ({add_s + fetch_s:.2f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256, help="size of the random file (MB)")
    parser.add_argument("--transfer-mb", type=int, default=100,
                        help="size of the object sent between two embedded nodes (MB; 0 skips)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="learnae-bench-") as tmp:
        path = Path(tmp) / "random.bin"
        write_random_file(path, args.size_mb * MB)
        print("== CID throughput (learnae.content.file_cid)")
        bench_cid(path)
        path.unlink()
        if args.transfer_mb:
            print("== add then fetch between two embedded Kubo nodes on 127.0.0.1")
            asyncio.run(bench_transfer(Path(tmp), args.transfer_mb * MB))
    return 0


if __name__ == "__main__":
    sys.exit(main())
