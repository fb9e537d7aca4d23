"""A ledger-only peer, run as a separate process by the partition tests.

It runs an embedded Kubo node, a tangle and its syncer, appends a `data`
transaction every ``--issue-every`` seconds, and rewrites ``--status`` (JSON:
peer id, tx count, tips, a digest of the id set, every id it holds, the ids it
issued itself, the peer ids its fault layer blocks) every 0.2 s. When ``--faults``
names a file, it wraps its node in the fault layer and applies the peer ids
listed there as blocked (a partition without root). SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
from pathlib import Path

from learnae.identity import Identity
from learnae.ipfs.embedded import EmbeddedNode
from learnae.ipfs.faults import FaultyNode, follow_control
from learnae.ipfs.peering import keep_connected
from learnae.ledger.sync import TangleSync
from learnae.ledger.tangle import Tangle

PAYLOAD = {"cid": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku", "size": 0, "rows": 1,
           "schema": {"features": [1]}, "source": "partition-test"}


def write_status(path: Path, node_id: str, tangle: Tangle, mine: list[str], blocked) -> None:
    ids = sorted(tangle.order())
    status = {"id": node_id, "count": len(ids), "tips": sorted(tangle.tips()), "issued": len(mine),
              "digest": hashlib.sha256("\n".join(ids).encode()).hexdigest(), "ids": ids,
              "mine": mine, "blocked": sorted(blocked)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


async def run(args: argparse.Namespace) -> None:
    state = Path(args.state)
    identity = Identity.generate()
    genesis_raw = Path(args.genesis).read_bytes()
    tangle = Tangle(state / "tangle.sqlite", genesis_raw=genesis_raw, pow_bits=args.pow_bits,
                    max_tx_bytes=4096)
    ipfs = await EmbeddedNode.start(state / "ipfs", Path(args.swarm_key).read_text(),
                                    host=args.host, port=args.port)
    node = FaultyNode(ipfs) if args.faults else ipfs
    syncer = TangleSync(tangle, node, announce_interval=0.5)
    await syncer.start()
    dialer = asyncio.create_task(keep_connected(node, args.peer, interval=0.5, dial_timeout=2))
    control = asyncio.create_task(follow_control(node, args.faults, interval=0.1)) if args.faults else None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    mine: list[str] = []

    def blocked() -> set[str]:  # the peers the fault layer blocks now (none without one)
        return getattr(node, "blocked", set())

    try:
        while not stop.is_set():
            if args.issue_every and not Path(state / "quiet").exists():
                mine.append((await syncer.append(identity, "data", dict(PAYLOAD, seq=len(mine)))).id)
            write_status(Path(args.status), ipfs.id, tangle, mine, blocked())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.issue_every or 0.2)
    finally:
        dialer.cancel()
        if control is not None:
            control.cancel()
        await syncer.stop()
        await node.close()
        write_status(Path(args.status), ipfs.id, tangle, mine, blocked())
        tangle.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True)
    parser.add_argument("--genesis", required=True)
    parser.add_argument("--swarm-key", required=True)
    parser.add_argument("--pow-bits", type=int, default=4)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--issue-every", type=float, default=0.2)
    parser.add_argument("--status", required=True)
    parser.add_argument("--faults")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
