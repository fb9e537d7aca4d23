"""Benchmark: members behind home routers (network namespaces; root, iproute2 and nftables).

Usage: python bench/nat.py [--mb 64] [--skip-swarm] [--skip-fetch]

1. **Checkpoint fetch throughput**, direct against through a relay member. Embedded Kubo nodes
   in a :class:`~learnae.local.netns.HomeNat`: five public relays; C behind a router adds a
   random ``--mb`` MB file; B behind another router fetches it.
   - *hole-punched*: the routers keep ports; B dials C through a relay, waits until the hole
     punch gave it a direct connection, then fetches from C;
   - *via relay member*: symmetric NATs, no hole punch; relay A fetches the file from C
     while B fetches it from A (bitswap sends B each block as A gets it).
2. **Time to the first merge across routers**: a :class:`~learnae.local.natlab.NatLab` swarm
   of two trainer processes behind routers; seconds from start until B first merged a
   checkpoint authored by C, and until both had merged one of the other's; for ports kept
   (five relay members, none serving checkpoints) and symmetric NATs (one relay member that
   serves them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from learnae.errors import IpfsError
from learnae.ipfs import privnet
from learnae.local import netns
from learnae.local.natlab import NatLab

MB = 1_000_000
RELAYS = 5


# ------------------------------------------------------------------ worker (in a namespace)
async def worker(args: argparse.Namespace) -> None:
    """One embedded node in its namespace: ``relay``, ``holder`` (C) or ``fetcher`` (B)."""
    from learnae.ipfs.embedded import EmbeddedNode

    out = Path(args.out)
    relays = json.loads(args.relays)
    node = await EmbeddedNode.start(out / args.name, (out / "swarm.key").read_text(), host=args.host,
                                    port=4001, relays=relays,
                                    reachability="public" if args.role == "relay" else "auto")
    me = out / f"{args.name}.json"
    try:
        for addr in relays:
            for _attempt in range(60):  # the others start at the same time
                if addr.endswith(node.id):
                    break
                try:
                    await node.connect(addr, timeout=5)
                    break
                except IpfsError:
                    await asyncio.sleep(0.5)
        if args.role == "holder":
            cid = await node.add(os.urandom(args.mb * MB))
        while not (out / "stop").exists():
            report = {"id": node.id, "addrs": await node.addrs()}
            if args.role == "holder":
                report["cid"] = cid
            if args.name == "r0" and (out / "serve").exists() and "served_s" not in _read(me):
                holder = _read(out / "c.json")
                t0 = time.monotonic()
                await node.cat(holder["cid"], timeout=300, max_size=(args.mb + 1) * MB)
                report["served_s"] = time.monotonic() - t0
            if args.role == "fetcher" and "fetch_s" not in _read(me):
                report.update(await fetch(node, out, args))
            me.write_text(json.dumps({**_read(me), **report}))
            await asyncio.sleep(0.5)
    finally:
        await node.close()


async def fetch(node, out: Path, args: argparse.Namespace) -> dict:
    """B: reach C (through a relay, then hole punched where the routers allow), fetch its file."""
    holder = _read(out / "c.json")
    relayed = [a for a in holder.get("addrs", []) if "/p2p-circuit" in a]
    if "cid" not in holder or not relayed:
        return {}
    if args.via_relay_member:
        (out / "serve").touch()  # relay A fetches from C meanwhile; B gets it from A
    else:
        await node.connect(relayed[0], timeout=30)
        t0 = time.monotonic()
        while not any(c.peer == holder["id"] and not c.relayed for c in await node.connections()):
            if time.monotonic() - t0 > 90:
                return {"fetch_s": None, "why": "no direct connection to C within 90 s"}
            await asyncio.sleep(0.2)
    t0 = time.monotonic()
    data = await node.cat(holder["cid"], timeout=300, max_size=(args.mb + 1) * MB)
    return {"fetch_s": time.monotonic() - t0, "bytes": len(data),
            "via": [("relayed" if c.relayed else "direct") for c in await node.connections()
                    if c.peer == holder["id"]]}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------ driver
def fetch_run(mb: int, punch: bool) -> dict:
    """Five relays, C and B behind routers: B's fetch of C's file; the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-nat-") as tmp, \
            netns.HomeNat(RELAYS, 2, hole_punching=punch) as net:
        out = Path(tmp)
        (out / "swarm.key").write_text(privnet.new_swarm_key())
        from learnae.ipfs import libkubo

        ids = [libkubo.create_repo(out / name) for name in [*(f"r{i}" for i in range(RELAYS)), "c", "b"]]
        relays = [f"/ip4/{net.addresses[i]}/tcp/4001/p2p/{ids[i]}" for i in range(RELAYS)]
        procs = []
        try:
            for i, (name, role) in enumerate([*((f"r{i}", "relay") for i in range(RELAYS)),
                                              ("c", "holder"), ("b", "fetcher")]):
                argv = [sys.executable, __file__, "--worker", "--role", role, "--name", name, "--out", tmp,
                        "--host", net.addresses[i], "--relays", json.dumps(relays), "--mb", str(mb)]
                argv += [] if punch else ["--via-relay-member"]
                procs.append(subprocess.Popen(net.command(i, argv)))
            deadline = time.monotonic() + 400
            while "fetch_s" not in _read(out / "b.json"):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit(f"fetch run failed: {_read(out / 'b.json')}")
                time.sleep(0.5)
            return _read(out / "b.json")
        finally:
            (out / "stop").touch()
            _end(procs)


def swarm_run(punch: bool, timeout: float = 300) -> dict:
    """Two trainers behind routers; seconds until the first merges across routers."""
    with tempfile.TemporaryDirectory(prefix="bench-natlab-") as tmp, \
            NatLab(Path(tmp), relays=RELAYS if punch else 1, trainers=2, hole_punching=punch,
                   serve_checkpoints=not punch) as lab:
        b, c = lab.relays, lab.relays + 1
        procs = []
        logs = []
        try:
            t0 = time.monotonic()
            for i in range(lab.size):
                logs.append(open(Path(tmp) / f"{lab.name(i)}.log", "wb"))
                procs.append(subprocess.Popen(lab.argv(i), stdout=logs[-1], stderr=subprocess.STDOUT))
            first = None
            while time.monotonic() - t0 < timeout:
                if first is None and lab.merged_from(b, c):
                    first = time.monotonic() - t0
                if lab.merged_from(b, c) and lab.merged_from(c, b):
                    return {"first_s": first, "mutual_s": time.monotonic() - t0, "via": lab.via(b, c)}
                time.sleep(0.2)
            return {"first_s": first, "mutual_s": None, "via": lab.via(b, c)}
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            _end(procs)
            for f in logs:
                f.close()


def _end(procs: list[subprocess.Popen]) -> None:
    """Wait up to 60 s for each process to exit; kill the ones that do not."""
    for p in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=64, help="size of the fetched file, MB (default 64)")
    parser.add_argument("--skip-swarm", action="store_true", help="only the fetch throughput")
    parser.add_argument("--skip-fetch", action="store_true", help="only the time to the first merge")
    for flag in ("--worker", "--via-relay-member"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in ("--role", "--name", "--out", "--host", "--relays"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return
    ok, why = netns.nat_available()
    if not ok:  # `make bench` goes on with the others
        print(f"skipped: bench/nat.py needs network namespaces with NAT ({why})")
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if not args.skip_fetch:
        for punch, label in ((True, "hole-punched, direct from C"), (False, "symmetric NATs, via relay member")):
            r = fetch_run(args.mb, punch)
            rate = r["bytes"] / MB / r["fetch_s"] if r.get("fetch_s") else float("nan")
            print(f"fetch {args.mb} MB, {label}: {r.get('fetch_s') or float('nan'):.2f} s, {rate:.1f} MB/s"
                  f" (B-C connection: {r.get('via')})", flush=True)
    if not args.skip_swarm:
        for punch, label in ((True, f"ports kept, {RELAYS} relay members"), (False, "symmetric NATs, 1 relay member")):
            r = swarm_run(punch)
            print(f"first merge across routers, {label}: B took C's at {r['first_s']:.1f} s, both each"
                  f" other's at {r['mutual_s']:.1f} s (B-C connection: {r['via']})", flush=True)


if __name__ == "__main__":
    main()
