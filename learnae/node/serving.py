"""A relay member's checkpoint service: each author's newest checkpoint, held and served.

Kubo 0.22's circuit relay carries the hole-punching handshake only: its connections are
limited and transient, and bitswap does not use them (docs/design.md, "Members behind NAT").
Two members behind routers that defeat hole punching (symmetric NAT) can therefore never
exchange a checkpoint themselves. Both reach a member with a public address directly, so a
relay member that holds each author's newest checkpoint serves it to all: bitswap answers a
want from the blocks it holds, also blocks that arrive after the want.

:class:`CheckpointServer` fetches the checkpoint of every author's newest ``checkpoint``
transaction that is not stale, pins it while it is the newest and unpins the one it replaces
(the node's garbage collection frees those). It holds at most one checkpoint per author, each
within the manifest's size limit. It serves the bytes as published: every receiver checks what
it fetches, as from any peer.
"""

from __future__ import annotations

import asyncio
import logging
import time

from learnae.errors import LearnaeError
from learnae.ipfs.base import IpfsNode
from learnae.ledger.tangle import Tangle
from learnae.manifest import Manifest

log = logging.getLogger(__name__)


class CheckpointServer:
    """Hold each author's newest checkpoint on a relay member (see the module docstring).

    Attributes:
        held: author key -> CID of the checkpoint held for that author.
        fetched: checkpoints fetched; ``failed``: fetches that failed (timeout, size, IPFS).
    """

    def __init__(self, ipfs: IpfsNode, tangle: Tangle, manifest: Manifest, *, stale: float,
                 fetch_timeout: float):
        self.ipfs, self.tangle, self.manifest = ipfs, tangle, manifest
        self.stale, self.fetch_timeout = stale, fetch_timeout
        self.held: dict[bytes, str] = {}
        self._busy: set[str] = set()
        self.fetched = self.failed = 0

    async def step(self) -> None:
        """Fetch every author's newest checkpoint not held yet, in parallel; return when done."""
        now_ms = time.time() * 1000
        wanted = {author: tx.payload["cid"] for author, tx in self.tangle.latest_checkpoint_per_author().items()
                  if now_ms - tx.time <= self.stale * 1000 and self.held.get(author) != tx.payload["cid"]
                  and tx.payload["cid"] not in self._busy}
        await asyncio.gather(*(self._hold(author, cid) for author, cid in wanted.items()))

    async def _hold(self, author: bytes, cid: str) -> None:
        self._busy.add(cid)
        try:
            await self.ipfs.cat(cid, timeout=self.fetch_timeout, max_size=self.manifest.limits.checkpoint_bytes)
            await self.ipfs.pin(cid)
        except LearnaeError as exc:
            self.failed += 1
            log.debug("checkpoint %s not held: %s", cid, exc.reason)
            return
        finally:
            self._busy.discard(cid)
        self.fetched += 1
        old = self.held.get(author)
        self.held[author] = cid
        if old is not None and old not in self.held.values():
            try:
                await self.ipfs.unpin(old)
            except LearnaeError as exc:
                log.debug("checkpoint %s not unpinned: %s", old, exc.reason)

    def status(self) -> dict[str, int]:
        """``/status``'s figures: checkpoints held, fetched and failed."""
        return {"held": len(self.held), "fetched": self.fetched, "failed": self.failed}

    async def run(self, interval: float = 1.0) -> None:
        """Call :meth:`step` every ``interval`` seconds until cancelled."""
        while True:
            await self.step()
            await asyncio.sleep(interval)
