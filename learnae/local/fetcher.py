"""A one-shot content check: join the swarm, fetch a list of CIDs, report which came.

The fault harness's ``processes`` driver runs this as a process of its own (in a network
namespace of its own when the nodes are in namespaces), so the fetch goes over the same
network the nodes use, from a peer that held none of the content::

    python -m learnae.local.fetcher --repo DIR --invite FILE --listen HOST:PORT \\
        --peer MULTIADDR ... (--cids CIDS.txt | --kept-by STATE) --timeout 10 --out RESULT.json

``CIDS.txt`` holds one CID per line. ``--kept-by`` names a live node's state directory
instead: the CIDs are what its ledger keeps (:func:`~learnae.local.procdriver.content_cids`),
read once the peer is connected, and a fetch is given up as soon as that ledger no longer
keeps its CID (read every :data:`KEPT_POLL` s): authors rotate their old checkpoints out
while the check runs, and waiting out the timeout for each of those would prove nothing.
``RESULT.json``: ``{"checked": [CID, ...], "fetched": N, "missing": [CID, ...], "rotated":
[CID, ...], "peer_count": N, "elapsed_s": S}``; given-up CIDs are in ``rotated``, not
``missing``. Fetches run 30 at a time (the embedded node takes 32), each with ``--timeout``
seconds. Exit status 0 when every CID came or was rotated out, 1 otherwise.
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
from learnae.local.procdriver import content_cids
from learnae.state import parse_listen

CONCURRENCY = MAX_FETCHES - 2  # the embedded node refuses more fetches at once
KEPT_POLL = 0.5
"""Seconds between two reads of what ``--kept-by``'s ledger keeps."""


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
        if args.cids is not None:
            cids = [c for c in Path(args.cids).read_text().split() if c]
        else:  # as late as can be: what is still kept when the peer can fetch
            cids = await asyncio.to_thread(content_cids, Path(args.kept_by), relayed=args.relayed)
        gate = asyncio.Semaphore(CONCURRENCY)
        missing: list[str] = []
        rotated: list[str] = []

        async def one(cid: str) -> None:
            async with gate:
                try:
                    await node.cat(cid, timeout=args.timeout)
                except LearnaeError:
                    missing.append(cid)

        tasks = {cid: asyncio.create_task(one(cid)) for cid in cids}
        # A given-up fetch goes on inside Kubo until the node closes: give up only while every
        # fetch can have its own slot, or later ones would be refused for want of one.
        watch = args.kept_by is not None and len(cids) <= CONCURRENCY
        while watch and not all(t.done() for t in tasks.values()):
            await asyncio.wait(tasks.values(), timeout=KEPT_POLL)
            kept = set(await asyncio.to_thread(content_cids, Path(args.kept_by), relayed=args.relayed))
            for cid, task in tasks.items():
                if not task.done() and cid not in kept:
                    task.cancel()
                    rotated.append(cid)
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        return {"checked": cids, "fetched": len(cids) - len(missing) - len(rotated), "missing": sorted(missing),
                "rotated": sorted(rotated), "peer_count": len(await node.peers()),
                "elapsed_s": round(time.monotonic() - started, 2)}
    finally:
        await node.close()


def main() -> None:
    """The command line (see the module docstring); exits 0 when every CID came."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="Kubo repo directory (created if new).")
    parser.add_argument("--invite", required=True, help="The swarm's invite.json (its swarm key).")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on.")
    parser.add_argument("--peer", action="append", default=[], help="A peer's multiaddr (repeat).")
    parser.add_argument("--cids", help="File of CIDs, one per line (or --kept-by).")
    parser.add_argument("--timeout", type=float, default=10.0, help="Seconds per fetch.")
    parser.add_argument("--out", required=True, help="Where to write the JSON result.")
    parser.add_argument("--kept-by", help="A live node's state directory: fetch what its ledger keeps"
                                          " (unless --cids), and give up a fetch once the ledger no"
                                          " longer keeps the CID (rotated out).")
    parser.add_argument("--relayed", action="store_true",
                        help="With --kept-by: only what its relay members hold counts as kept.")
    args = parser.parse_args()
    if args.cids is None and args.kept_by is None:
        parser.error("give --cids or --kept-by")
    result = asyncio.run(fetch_all(args))
    Path(args.out).write_text(json.dumps(result))
    sys.exit(0 if not result["missing"] else 1)


if __name__ == "__main__":
    main()
