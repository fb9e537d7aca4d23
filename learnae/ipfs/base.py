"""The ``IpfsNode`` interface that every learnae role talks to.

Three implementations stand behind it (DESIGN.md, "The IPFS layer"):
``embedded`` (Kubo inside the process), ``rpc`` (a Kubo daemon's RPC API) and
``memory`` (a simulated network for unit tests and large simulations).

Conventions shared by all of them:

- CIDs are strings. :meth:`IpfsNode.add` returns CIDv1 base32 (``bafy...``) of the
  DAG that Kubo's default ``ipfs add`` builds (dag-pb, 256 KiB chunks, balanced
  layout), so the same bytes get the same CID on every implementation.
- ``cat`` accepts CIDv0 or CIDv1 and always has a timeout; a CID nobody serves
  raises :class:`~learnae.errors.IpfsTimeout` within it.
- Pubsub messages arrive as :class:`PubsubMessage` ``(sender, data)`` where ``sender``
  is the publishing peer's id. A node also receives its own messages
  (Kubo's behaviour); callers that do not want them compare ``sender`` to ``id``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import NamedTuple


class PubsubMessage(NamedTuple):
    """One pubsub message: ``sender`` is a peer id string, ``data`` the payload bytes."""

    sender: str
    data: bytes


class IpfsNode(abc.ABC):
    """An IPFS node as learnae uses it. All methods are coroutines unless noted.

    Errors: every method raises :class:`~learnae.errors.NodeClosed` after :meth:`close`,
    :class:`~learnae.errors.IpfsTimeout` when a timeout expires and
    :class:`~learnae.errors.IpfsError` for other failures.
    """

    #: the node's peer id (``Qm...`` or ``12D3...``), set once the node runs
    id: str

    @abc.abstractmethod
    async def add(self, data: bytes) -> str:
        """Add ``data`` as a file, pin it, and return its CIDv1 base32 string."""

    @abc.abstractmethod
    async def cat(self, cid: str, timeout: float = 30.0, max_size: int | None = None) -> bytes:
        """Return the bytes of file ``cid``, fetching from peers when needed.

        Args:
            cid: CIDv0 or CIDv1 string (:class:`~learnae.errors.InvalidCID` if it does not parse).
            timeout: seconds; :class:`~learnae.errors.IpfsTimeout` when exceeded.
            max_size: refuse (:class:`~learnae.errors.OversizeError`) content larger than this
                many bytes, where the implementation can tell.
        """

    @abc.abstractmethod
    async def pin(self, cid: str, timeout: float = 60.0) -> None:
        """Pin ``cid`` recursively so garbage collection keeps it, fetching it first if needed."""

    @abc.abstractmethod
    async def unpin(self, cid: str) -> None:
        """Remove the pin on ``cid``; unpinning what is not pinned is not an error."""

    @abc.abstractmethod
    async def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on pubsub ``topic`` to the peers subscribed to it."""

    @abc.abstractmethod
    def subscribe(self, topic: str) -> AsyncIterator[PubsubMessage]:
        """Subscribe to ``topic``; iterate the returned object for messages.

        Not a coroutine: the subscription exists when this returns, so a message
        published afterwards is delivered. Close it with ``aclose()`` (or by
        leaving an ``async for`` loop over it and letting it be collected).
        """

    @abc.abstractmethod
    async def connect(self, multiaddr: str, timeout: float = 30.0) -> None:
        """Connect to the peer at ``multiaddr`` (it must end in ``/p2p/<peer id>``).

        Raises InvalidMultiaddr for text that does not parse, IpfsTimeout after ``timeout`` s.
        """

    @abc.abstractmethod
    async def peers(self) -> list[str]:
        """Return the peer ids this node is connected to."""

    @abc.abstractmethod
    async def addrs(self) -> list[str]:
        """Return this node's listen multiaddrs, each ending in ``/p2p/<id>``."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop the node and release its threads, ports and repo lock. Idempotent."""

    async def __aenter__(self) -> IpfsNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
