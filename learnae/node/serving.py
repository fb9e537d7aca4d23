"""A relay member's content service: each author's newest checkpoint and recent data chunks.

Kubo 0.22's circuit relay carries the hole-punching handshake only: its connections are
limited and transient, and bitswap does not use them (docs/design.md, "Members behind NAT").
Two members behind routers that defeat hole punching (symmetric NAT) can therefore never
exchange a checkpoint themselves, nor can a trainer fetch a data chunk from a sensor behind
such a router. Both reach a member with a public address directly, so a relay member that
holds the content serves it to all: bitswap answers a want from the blocks it holds, also
blocks that arrive after the want.

:class:`ContentServer` fetches

- the checkpoint of every author's newest ``checkpoint`` transaction that is not stale, pinned
  while it is the newest (the one it replaces is unpinned): at most one per author;
- the chunk of every ``data`` transaction that arrives while it is not stale, pinned for the
  stale window (``stale`` seconds): long enough for the trainers that adopt it, which then pin
  and serve their own copies;

each within the manifest's size limit; the node's garbage collection frees what is unpinned.
It serves the bytes as published: every receiver checks what it fetches, as from any peer.
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


class ContentServer:
    """Hold checkpoints and data chunks on a relay member (see the module docstring).

    Attributes:
        held: author key -> CID of the checkpoint held for that author.
        chunks: CID of each data chunk held -> when it is let go (seconds since the epoch).
        fetched: files fetched; ``failed``: fetches that failed (timeout, size, IPFS).
    """

    def __init__(self, ipfs: IpfsNode, tangle: Tangle, manifest: Manifest, *, stale: float,
                 fetch_timeout: float):
        self.ipfs, self.tangle, self.manifest = ipfs, tangle, manifest
        self.stale, self.fetch_timeout = stale, fetch_timeout
        self.held: dict[bytes, str] = {}
        self.chunks: dict[str, float] = {}
        self._busy: set[str] = set()
        self._cursor = 0  # the tangle's data transactions seen
        self.fetched = self.failed = 0

    async def step(self) -> None:
        """Fetch what is not held yet, in parallel; let go of chunks past their time."""
        now = time.time()
        limits = self.manifest.limits
        checkpoints = {author: tx.payload["cid"] for author, tx in self.tangle.latest_checkpoint_per_author().items()
                       if now * 1000 - tx.time <= self.stale * 1000 and self.held.get(author) != tx.payload["cid"]
                       and tx.payload["cid"] not in self._busy}
        data, self._cursor = self.tangle.data_since(self._cursor)
        chunks = {tx.payload["cid"] for tx in data if now * 1000 - tx.time <= self.stale * 1000} - set(self.chunks)
        await asyncio.gather(*(self._hold(cid, limits.checkpoint_bytes, author) for author, cid in checkpoints.items()),
                             *(self._hold(cid, limits.chunk_bytes, None) for cid in chunks - self._busy))
        for cid in [c for c, until in self.chunks.items() if until < now]:
            del self.chunks[cid]
            await self._unpin(cid)

    async def _hold(self, cid: str, max_size: int, author: bytes | None) -> None:
        """Fetch and pin ``cid``: ``author``'s newest checkpoint, or a data chunk (None)."""
        self._busy.add(cid)
        try:
            await self.ipfs.cat(cid, timeout=self.fetch_timeout, max_size=max_size)
            await self.ipfs.pin(cid)
        except LearnaeError as exc:
            self.failed += 1
            log.debug("%s not held: %s", cid, exc.reason)
            return
        finally:
            self._busy.discard(cid)
        self.fetched += 1
        if author is None:
            self.chunks[cid] = time.time() + self.stale
            return
        old = self.held.get(author)
        self.held[author] = cid
        if old is not None and old not in self.held.values():
            await self._unpin(old)

    async def _unpin(self, cid: str) -> None:
        try:
            await self.ipfs.unpin(cid)
        except LearnaeError as exc:
            log.debug("%s not unpinned: %s", cid, exc.reason)

    def status(self) -> dict[str, int]:
        """``/status``'s figures: checkpoints and chunks held, files fetched and failed."""
        return {"checkpoints_held": len(self.held), "chunks_held": len(self.chunks),
                "fetched": self.fetched, "failed": self.failed}

    async def run(self, interval: float = 1.0) -> None:
        """Call :meth:`step` every ``interval`` seconds until cancelled."""
        while True:
            await self.step()
            await asyncio.sleep(interval)
