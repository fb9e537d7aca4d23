"""A one-shot content check: join the swarm, fetch a list of CIDs, report which came.

The fault harness's ``processes`` driver runs this as a process of its own (in a network
namespace of its own when the nodes are in namespaces), so the fetch goes over the same
network the nodes use, from a peer that held none of the content::

    python -m learnae.local.fetcher --repo DIR --invite FILE --listen HOST:PORT \\
        --peer MULTIADDR ... --cids CIDS.txt --timeout 10 --out RESULT.json

``CIDS.txt`` holds one CID per line. ``RESULT.json``: ``{"fetched": N, "missing": [CID, ...],
"peer_count": N, "elapsed_s": S}``. Fetches run 30 at a time (the embedded node takes 32), each with ``--timeout`` seconds.
Exit status 0 when every CID came, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

from learnae.errors import LearnaeError
from learnae.invite import Invite
from learnae.ipfs.embedded import MAX_FETCHES, EmbeddedNode
from learnae.state import parse_listen

CONCURRENCY = MAX_FETCHES - 2  # the embedded node refuses more fetches at once


async def fetch_all(args: argparse.Namespace) -> dict:
    """Join the swarm, fetch every CID of ``args.cids``; the ``RESULT.json`` content."""
    started = time.monotonic()
    host, port = parse_listen(args.listen)
    swarm_key = Invite.load(args.invite).swarm_key
    node = await EmbeddedNode.start(args.repo, swarm_key, host=host, port=port)
    try:
        for addr in args.peer:
            with contextlib.suppress(LearnaeError):
                await node.connect(addr, timeout=5)
        cids = [c for c in Path(args.cids).read_text().split() if c]
        gate = asyncio.Semaphore(CONCURRENCY)
        missing: list[str] = []

        async def one(cid: str) -> None:
            async with gate:
                try:
                    await node.cat(cid, timeout=args.timeout)
                except LearnaeError:
                    missing.append(cid)

        await asyncio.gather(*(one(c) for c in cids))
        return {"fetched": len(cids) - len(missing), "missing": sorted(missing),
                "peer_count": len(await node.peers()), "elapsed_s": round(time.monotonic() - started, 2)}
    finally:
        await node.close()


def main() -> None:
    """The command line (see the module docstring); exits 0 when every CID came."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="Kubo repo directory (created if new).")
    parser.add_argument("--invite", required=True, help="The swarm's invite.json (its swarm key).")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on.")
    parser.add_argument("--peer", action="append", default=[], help="A peer's multiaddr (repeat).")
    parser.add_argument("--cids", required=True, help="File of CIDs, one per line.")
    parser.add_argument("--timeout", type=float, default=10.0, help="Seconds per fetch.")
    parser.add_argument("--out", required=True, help="Where to write the JSON result.")
    args = parser.parse_args()
    result = asyncio.run(fetch_all(args))
    Path(args.out).write_text(json.dumps(result))
    sys.exit(0 if not result["missing"] else 1)


if __name__ == "__main__":
    main()
